//! One manifest file to typed objects, with a warning for everything skipped.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_yaml::Value;
use sluice_model::EndpointSlice;
use sluice_model::{ObjectKey, SnapshotKind};

use crate::direct::{self, Typed};
use crate::documents::{self, Document};
use crate::kinds::{self, Foreign};
use crate::names::NameRule;
use crate::nesting::{self, Refused};
use crate::value::{self, ValueError};
use crate::warning::{LoadWarning, ObjectRef, Problem};

/// Default for [`Limits::max_file_size`]: 8 MiB, far above any hand-written manifest.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 8 << 20;
/// Default for [`Limits::max_depth`]: Kubernetes objects nest about 20 levels deep.
pub const DEFAULT_MAX_DEPTH: usize = 64;
/// Default for [`Limits::max_nodes`]: a Service with 1000 ports has about 3000 nodes, an
/// EndpointSlice with its maximum of 1000 endpoints about 10,000.
pub const DEFAULT_MAX_NODES: usize = 500_000;

/// Bounds on what one manifest may cost to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Files larger than this many bytes are skipped (with a warning) without being read.
    pub max_file_size: u64,
    /// Documents nesting deeper than this (block indentation levels plus `[`/`{` levels) are
    /// skipped (with a warning) before the YAML parser sees them.
    pub max_depth: usize,
    /// Documents with more YAML nodes than this (counting what aliases repeat) are skipped
    /// (with a warning): parsing costs about 200 bytes of memory per node.
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            max_depth: DEFAULT_MAX_DEPTH,
            max_nodes: DEFAULT_MAX_NODES,
        }
    }
}

/// The objects one file contributes. Each key appears once per kind: when a file defines an
/// object twice, the later document wins and the earlier one gets a warning.
#[derive(Debug, Clone, Default)]
pub struct ParsedFile {
    pub services: Vec<(ObjectKey, Arc<Service>)>,
    pub endpoint_slices: Vec<(ObjectKey, Arc<EndpointSlice>)>,
    pub nodes: Vec<(ObjectKey, Arc<Node>)>,
    pub ingresses: Vec<(ObjectKey, Arc<Ingress>)>,
    pub ingress_classes: Vec<(ObjectKey, Arc<IngressClass>)>,
    pub secrets: Vec<(ObjectKey, Arc<Secret>)>,
    pub warnings: Vec<LoadWarning>,
    /// Where in the file each object was defined, to name both copies of a duplicate.
    pub(crate) origins: BTreeMap<(SnapshotKind, ObjectKey), Origin>,
}

/// A place in a file: document and, inside a `kind: List`, item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Origin {
    pub document: usize,
    pub item: Option<usize>,
}

impl Origin {
    pub(crate) fn describe(self, file: &str) -> String {
        match self.item {
            Some(item) => format!("{file} document {} (List item {item})", self.document),
            None => format!("{file} document {}", self.document),
        }
    }
}

impl ParsedFile {
    pub(crate) fn warn(
        &mut self,
        file: &str,
        origin: Origin,
        object: Option<ObjectRef>,
        problem: Problem,
    ) {
        self.warnings.push(LoadWarning {
            file: file.to_owned(),
            document: origin.document,
            item: origin.item,
            object,
            problem,
        });
    }

    /// A file that contributes nothing but one whole-file warning.
    pub(crate) fn failed(file: &str, problem: Problem) -> Self {
        let mut out = Self::default();
        out.warn(
            file,
            Origin {
                document: 0,
                item: None,
            },
            None,
            problem,
        );
        out
    }
}

/// Parses the text of one manifest file with the default [`Limits`]. `file` is only used in
/// warnings. Kinds sluice does not use (Deployment, ConfigMap, custom resources, ...) are
/// skipped silently; `kind: List` (and `ServiceList` etc.) is unpacked.
pub fn parse_manifests(file: &str, text: &str) -> ParsedFile {
    parse_manifests_with(file, text, &Limits::default())
}

/// [`parse_manifests`] with explicit limits.
pub fn parse_manifests_with(file: &str, text: &str, limits: &Limits) -> ParsedFile {
    let mut out = ParsedFile::default();
    for document in documents::split(text) {
        parse_document(&mut out, file, document, limits);
    }
    out
}

/// A file's bytes (already bounded by `limits.max_file_size`) to objects.
pub(crate) fn parse_file(file: &str, bytes: &[u8], limits: &Limits) -> ParsedFile {
    match documents::decode(bytes) {
        Ok(text) => parse_manifests_with(file, &text, limits),
        Err(reason) => ParsedFile::failed(file, Problem::NotText { reason }),
    }
}

fn parse_document(out: &mut ParsedFile, file: &str, document: Document<'_>, limits: &Limits) {
    let origin = Origin {
        document: document.number,
        item: None,
    };
    let file_line = |line: usize| document.first_line + line - 1;
    let prescan = nesting::prescan(document.text, limits.max_depth, limits.max_nodes);
    if let Err(refused) = prescan {
        let problem = match refused {
            Refused::TooDeep(too_deep) => Problem::TooDeep {
                limit: limits.max_depth,
                line: file_line(too_deep.line),
            },
            Refused::TooManyNodes => Problem::TooManyNodes {
                limit: limits.max_nodes,
            },
        };
        return out.warn(file, origin, None, problem);
    }
    // The common case in one pass; anything unusual (or wrong) goes the general way below,
    // which also words the warnings.
    if let Some(typed) = direct::decode(document.text, limits.max_nodes)
        && add_typed(out, file, origin, typed)
    {
        return;
    }
    match value::parse(document.text, limits.max_nodes) {
        // `<<: *defaults` merge keys, which kubectl applies too.
        Ok(mut value) => match value.apply_merge() {
            Ok(()) => add_value(out, file, origin, value),
            Err(err) => {
                let reason = format!("bad `<<` merge key: {err}");
                out.warn(file, origin, None, Problem::InvalidYaml { reason })
            }
        },
        Err(ValueError::TooManyNodes { limit }) => {
            out.warn(file, origin, None, Problem::TooManyNodes { limit })
        }
        Err(ValueError::Yaml(err)) => {
            let reason = shift_line_numbers(&err.to_string(), document.first_line - 1);
            out.warn(file, origin, None, Problem::InvalidYaml { reason })
        }
    }
}

fn add_value(out: &mut ParsedFile, file: &str, origin: Origin, value: Value) {
    let found = match &value {
        Value::Null => return, // an empty document, e.g. after a trailing `---`
        Value::Mapping(_) => None,
        Value::Sequence(_) => Some("list"),
        Value::Tagged(_) => Some("tagged value"),
        _ => Some("plain value"),
    };
    if let Some(found) = found {
        return out.warn(file, origin, None, Problem::NotAMapping { found });
    }
    let Some(kind) = value.get("kind").and_then(Value::as_str).map(str::to_owned) else {
        let object = object_ref("object", None, &value);
        return out.warn(file, origin, Some(object), Problem::NoKind);
    };
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if kind == "List" {
        return unpack_list(out, file, origin, value, None);
    }
    if let Some(ours) = kind.strip_suffix("List").and_then(kinds::ours) {
        return unpack_list(out, file, origin, value, Some(ours));
    }
    if let Some(ours) = kinds::ours(&kind) {
        return add_object(out, file, origin, ours, value);
    }
    let problem = match kinds::judge_foreign(&kind, api_version.as_deref()) {
        Foreign::NotOurs => return,
        Foreign::Misspelled(suggestion) => Problem::MisspelledKind {
            kind: kind.clone(),
            suggestion,
        },
        Foreign::UnknownInGroup => Problem::UnknownKind {
            kind: kind.clone(),
            api_version: api_version.unwrap_or_default(),
            ours: kinds::OURS_TEXT,
        },
    };
    let object = object_ref(&kind, None, &value);
    out.warn(file, origin, Some(object), problem);
}

/// `kind: List` (any kinds inside) or `ServiceList` etc. (items may leave out their kind, as
/// the API server's list responses do).
fn unpack_list(
    out: &mut ParsedFile,
    file: &str,
    origin: Origin,
    value: Value,
    typed: Option<SnapshotKind>,
) {
    let api_version = value.get("apiVersion").cloned();
    let items = match value.get("items") {
        None | Some(Value::Null) => return,
        Some(Value::Sequence(items)) => items.clone(),
        Some(_) => {
            let kind = value.get("kind").and_then(Value::as_str).unwrap_or("List");
            let object = object_ref(kind, None, &value);
            let reason = "`items` is not a list".to_owned();
            return out.warn(file, origin, Some(object), Problem::Invalid { reason });
        }
    };
    for (index, mut item) in items.into_iter().enumerate() {
        if let (Some(kind), Value::Mapping(fields)) = (typed, &mut item) {
            fields
                .entry("kind".into())
                .or_insert_with(|| kinds::name(kind).into());
            if let Some(api_version) = &api_version {
                fields
                    .entry("apiVersion".into())
                    .or_insert_with(|| api_version.clone());
            }
        }
        let origin = Origin {
            item: Some(index + 1),
            ..origin
        };
        add_value(out, file, origin, item);
    }
}

fn add_object(out: &mut ParsedFile, file: &str, origin: Origin, kind: SnapshotKind, value: Value) {
    let place = Place { file, origin, kind };
    match kind {
        SnapshotKind::Service => decode(out, place, value, |o| &mut o.services),
        SnapshotKind::EndpointSlice => decode(out, place, value, |o| &mut o.endpoint_slices),
        SnapshotKind::Node => decode(out, place, value, |o| &mut o.nodes),
        SnapshotKind::Ingress => decode(out, place, value, |o| &mut o.ingresses),
        SnapshotKind::IngressClass => decode(out, place, value, |o| &mut o.ingress_classes),
        SnapshotKind::Secret => decode(out, place, value, |o| &mut o.secrets),
    }
}

#[derive(Clone, Copy)]
struct Place<'a> {
    file: &'a str,
    origin: Origin,
    kind: SnapshotKind,
}

type List<T> = fn(&mut ParsedFile) -> &mut Vec<(ObjectKey, Arc<T>)>;

/// A kind of ours, with what the API server changes on write.
trait Object: DeserializeOwned + k8s_openapi::Metadata<Ty = ObjectMeta> {
    fn normalize(&mut self) {}
}

impl Object for Service {}
impl Object for EndpointSlice {}
impl Object for Node {}
impl Object for Ingress {}
impl Object for IngressClass {}

impl Object for Secret {
    /// The API server merges `stringData` into `data` (`stringData` wins); consumers only
    /// read `data`.
    fn normalize(&mut self) {
        let Some(string_data) = self.string_data.take() else {
            return;
        };
        let data = self.data.get_or_insert_with(Default::default);
        for (key, text) in string_data {
            data.insert(key, k8s_openapi::ByteString(text.into_bytes()));
        }
    }
}

/// Typed decoding of one object of ours, then the checks the API server would have made.
fn decode<T: Object>(out: &mut ParsedFile, place: Place<'_>, value: Value, list: List<T>) {
    let object = object_ref(kinds::name(place.kind), Some(place.kind), &value);
    let warn = |out: &mut ParsedFile, problem| {
        out.warn(place.file, place.origin, Some(object.clone()), problem)
    };
    if let Err(problem) = check_api_version(place.kind, &value) {
        return warn(out, problem);
    }
    let decoded: T = match serde_yaml::from_value(value) {
        Ok(decoded) => decoded,
        Err(err) => {
            let reason = err.to_string();
            return warn(out, Problem::Invalid { reason });
        }
    };
    if let Err(problem) = accept(out, place, decoded, list) {
        warn(out, problem);
    }
}

/// An object decoded directly ([`direct`]); false when it needs a warning (the general path
/// then decodes it again and words it).
fn add_typed(out: &mut ParsedFile, file: &str, origin: Origin, typed: Typed) -> bool {
    let place = |kind| Place { file, origin, kind };
    let accepted = match typed {
        Typed::Service(o) => accept(out, place(SnapshotKind::Service), o, |o| &mut o.services),
        Typed::EndpointSlice(o) => accept(out, place(SnapshotKind::EndpointSlice), o, |o| {
            &mut o.endpoint_slices
        }),
        Typed::Node(o) => accept(out, place(SnapshotKind::Node), o, |o| &mut o.nodes),
        Typed::Ingress(o) => accept(out, place(SnapshotKind::Ingress), o, |o| &mut o.ingresses),
        Typed::IngressClass(o) => accept(out, place(SnapshotKind::IngressClass), o, |o| {
            &mut o.ingress_classes
        }),
        Typed::Secret(o) => accept(out, place(SnapshotKind::Secret), o, |o| &mut o.secrets),
    };
    accepted.is_ok()
}

/// The checks the API server would have made on a decoded object, then adds it.
fn accept<T: Object>(
    out: &mut ParsedFile,
    place: Place<'_>,
    mut object: T,
    list: List<T>,
) -> Result<(), Problem> {
    let key = checked_key(place.kind, object.metadata_mut())?;
    object.normalize();
    insert(out, place, key, Arc::new(object), list);
    Ok(())
}

fn check_api_version(kind: SnapshotKind, value: &Value) -> Result<(), Problem> {
    let expected = kinds::api_version(kind);
    match value.get("apiVersion").and_then(Value::as_str) {
        Some(found) if found == expected => Ok(()),
        found => Err(Problem::UnsupportedApiVersion {
            kind: kinds::name(kind).to_owned(),
            api_version: found.unwrap_or("(missing)").to_owned(),
            advice: kinds::api_version_advice(kind, found.unwrap_or_default()),
        }),
    }
}

/// Name and namespace as the API server would accept them; defaults the namespace of
/// namespaced kinds and clears it on cluster-scoped ones (the API server ignores it there).
fn checked_key(kind: SnapshotKind, meta: &mut ObjectMeta) -> Result<ObjectKey, Problem> {
    let Some(name) = meta.name.clone().filter(|n| !n.is_empty()) else {
        let generated = meta.generate_name.as_deref().is_some_and(|g| !g.is_empty());
        return Err(if generated {
            Problem::OnlyGenerateName
        } else {
            Problem::MissingName
        });
    };
    let name_rule = match kind {
        SnapshotKind::Service => NameRule::Dns1035Label,
        _ => NameRule::Dns1123Subdomain,
    };
    check_name("metadata.name", &name, name_rule)?;
    if !kinds::namespaced(kind) {
        meta.namespace = None;
        return Ok(ObjectKey::cluster(name));
    }
    let namespace = meta.namespace.get_or_insert_with(String::new);
    if namespace.is_empty() {
        *namespace = "default".to_owned();
    }
    check_name("metadata.namespace", namespace, NameRule::Dns1123Label)?;
    Ok(ObjectKey::new(namespace.clone(), name))
}

fn check_name(field: &'static str, value: &str, rule: NameRule) -> Result<(), Problem> {
    if rule.accepts(value) {
        return Ok(());
    }
    Err(Problem::InvalidName {
        field,
        value: value.to_owned(),
        rule: rule.describe(),
    })
}

/// Adds an object; a second definition in the same file replaces the first, which gets the
/// warning (the later document wins, as it would with `kubectl apply`).
fn insert<T>(
    out: &mut ParsedFile,
    place: Place<'_>,
    key: ObjectKey,
    object: Arc<T>,
    list: List<T>,
) {
    let Some(earlier) = out.origins.insert((place.kind, key.clone()), place.origin) else {
        list(out).push((key, object));
        return;
    };
    if let Some(slot) = list(out).iter_mut().find(|(k, _)| *k == key) {
        slot.1 = object;
    }
    let object = ObjectRef::of(place.kind, &key);
    let winner = place.origin.describe(place.file);
    out.warn(
        place.file,
        earlier,
        Some(object),
        Problem::Duplicate { winner },
    );
}

impl ObjectRef {
    pub(crate) fn of(kind: SnapshotKind, key: &ObjectKey) -> Self {
        Self {
            kind: kinds::name(kind).to_owned(),
            namespace: (!key.namespace.is_empty()).then(|| key.namespace.clone()),
            name: Some(key.name.clone()),
        }
    }
}

/// `Service shop/web` from the raw value, for objects that fail before or during decoding.
fn object_ref(kind: &str, ours: Option<SnapshotKind>, value: &Value) -> ObjectRef {
    let field = |f: &str| {
        value
            .get("metadata")
            .and_then(|m| m.get(f))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let namespace = match ours {
        Some(kind) if !kinds::namespaced(kind) => None,
        Some(_) => Some(field("namespace").unwrap_or_else(|| "default".to_owned())),
        None => field("namespace"),
    };
    ObjectRef {
        kind: kind.to_owned(),
        namespace,
        name: field("name"),
    }
}

/// The YAML parser counts lines from the start of the document it was given; warnings count
/// from the start of the file.
fn shift_line_numbers(message: &str, offset: usize) -> String {
    if offset == 0 {
        return message.to_owned();
    }
    let mut out = String::with_capacity(message.len() + 8);
    let mut rest = message;
    while let Some(at) = rest.find("line ") {
        let (before, after) = rest.split_at(at + "line ".len());
        out.push_str(before);
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits].parse::<usize>() {
            Ok(line) if after[digits..].starts_with(" column ") => {
                out.push_str(&(line + offset).to_string());
                rest = &after[digits..];
            }
            _ => rest = after,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints: [{addresses: [10.244.1.2]}]
ports: [{port: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
---
"#;

    fn service(name: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{ports: [{{port: 80}}]}}\n"
        )
    }

    fn names<T>(list: &[(ObjectKey, Arc<T>)]) -> Vec<String> {
        list.iter().map(|(key, _)| key.to_string()).collect()
    }

    fn messages(parsed: &ParsedFile) -> Vec<String> {
        parsed.warnings.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn parses_every_supported_kind_and_defaults_the_namespace() {
        let parsed = parse_manifests("web.yaml", GOOD);
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
        assert_eq!(parsed.services[0].0, ObjectKey::new("shop", "web"));
        assert_eq!(
            parsed.endpoint_slices[0].0,
            ObjectKey::new("default", "web-abc")
        );
    }

    #[test]
    fn a_malformed_document_is_reported_with_file_index_and_object_and_others_still_apply() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: broken, namespace: shop}
spec:
  ports: [{port: "eighty"}]
---
apiVersion: v1
kind: Service
metadata: {name: fine, namespace: shop}
spec: {clusterIP: 10.96.0.11, ports: [{port: 80}]}
"#;
        let parsed = parse_manifests("svc.yaml", text);
        assert_eq!(names(&parsed.services), ["shop/fine"]);
        let w = messages(&parsed);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with(
                "svc.yaml document 1: Service shop/broken: invalid type: string \"eighty\""
            ),
            "{w:?}"
        );
    }

    #[test]
    fn a_yaml_syntax_error_skips_only_its_document_and_names_the_file_line() {
        let text = format!(
            "{}---\nkind: [unclosed\n---\n{}",
            service("a"),
            service("b")
        );
        let parsed = parse_manifests("a.yaml", &text);
        assert_eq!(names(&parsed.services), ["default/a", "default/b"]);
        let w = messages(&parsed);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("a.yaml document 2: not valid YAML: "),
            "{w:?}"
        );
        assert!(w[0].contains("line 7 column"), "{w:?}");
    }

    #[test]
    fn a_too_deep_document_is_skipped_before_parsing_and_the_next_one_loads() {
        let deep = format!(
            "kind: Service\nspec: {}{}\n",
            "[".repeat(50_000),
            "]".repeat(50_000)
        );
        let text = format!("{}---\n{deep}---\n{}", service("a"), service("b"));
        let parsed = parse_manifests("deep.yaml", &text);
        assert_eq!(names(&parsed.services), ["default/a", "default/b"]);
        assert_eq!(parsed.warnings.len(), 1);
        assert_eq!(parsed.warnings[0].document, 2);
        assert_eq!(
            parsed.warnings[0].problem,
            Problem::TooDeep {
                limit: DEFAULT_MAX_DEPTH,
                line: 7
            }
        );
        // mapping, `spec: {`, `ports: [`, `{port: 80}`
        let limits = Limits {
            max_depth: 4,
            ..Limits::default()
        };
        let parsed = parse_manifests_with("a.yaml", &service("a"), &limits);
        assert_eq!(parsed.services.len(), 1, "a Service nests 4 levels");
        let limits = Limits {
            max_depth: 3,
            ..Limits::default()
        };
        let parsed = parse_manifests_with("a.yaml", &service("a"), &limits);
        assert!(parsed.services.is_empty());
    }

    #[test]
    fn removed_api_versions_say_how_to_convert() {
        let text = "apiVersion: extensions/v1beta1\nkind: Ingress\nmetadata: {name: old, namespace: shop}\nspec: {backend: {serviceName: web, servicePort: 80}}\n";
        let w = messages(&parse_manifests("old.yaml", text));
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with("old.yaml document 1: Ingress shop/old: Ingress `apiVersion: extensions/v1beta1` is not read by sluice; this API was removed"),
            "{w:?}"
        );
        for hint in [
            "backend.service.name",
            "backend.service.port.number",
            "pathType",
            "networking.k8s.io/v1",
        ] {
            assert!(w[0].contains(hint), "{hint} missing: {w:?}");
        }
        let w = messages(&parse_manifests(
            "a.yaml",
            "apiVersion: v2\nkind: Service\nmetadata: {name: x}\n",
        ));
        assert!(w[0].contains("Service default/x: Service `apiVersion: v2` is not read by sluice; write `apiVersion: v1`"), "{w:?}");
        let w = messages(&parse_manifests(
            "a.yaml",
            "kind: Node\nmetadata: {name: n1}\n",
        ));
        assert!(
            w[0].contains("Node n1: Node `apiVersion: (missing)`"),
            "{w:?}"
        );
    }

    #[test]
    fn misspelled_kinds_warn_and_kinds_that_are_not_ours_do_not() {
        let text = "apiVersion: v1\nkind: Servcie\nmetadata: {name: a}\n---\n\
                    apiVersion: v1\nkind: service\nmetadata: {name: b, namespace: shop}\n---\n\
                    apiVersion: networking.k8s.io/v1\nkind: Ingres\nmetadata: {name: c}\n---\n\
                    apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n\
                    apiVersion: v1\nkind: ConfigMap\nmetadata: {name: e}\n---\n\
                    apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: f}\n";
        let w = messages(&parse_manifests("kinds.yaml", text));
        assert_eq!(
            w,
            [
                "kinds.yaml document 1: Servcie a: unknown kind \"Servcie\": did you mean `Service`? (kinds are case-sensitive)",
                "kinds.yaml document 2: service shop/b: unknown kind \"service\": did you mean `Service`? (kinds are case-sensitive)",
                "kinds.yaml document 3: Ingres c: unknown kind \"Ingres\": did you mean `Ingress`? (kinds are case-sensitive)",
            ]
        );
    }

    #[test]
    fn missing_kind_missing_name_and_non_objects_are_warnings() {
        let text = "apiVersion: v1\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Service\nmetadata: {}\n---\n\
                    apiVersion: v1\nkind: Secret\nmetadata: {generateName: tls-}\n---\njust some text\n";
        let w = messages(&parse_manifests("a.yaml", text));
        assert_eq!(
            w,
            [
                "a.yaml document 1: object x: no `kind` field: not a Kubernetes object",
                "a.yaml document 2: Service default/(unnamed): no metadata.name",
                "a.yaml document 3: Secret default/(unnamed): no metadata.name (metadata.generateName needs an API server to pick the name)",
                "a.yaml document 4: not a Kubernetes object: the document is a plain value, not a mapping",
            ]
        );
    }

    #[test]
    fn names_the_api_server_would_reject_are_warnings() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: \"web; drop\"}\n---\n\
                    apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: Shop}\n---\n\
                    apiVersion: v1\nkind: Node\nmetadata: {name: \"nœud\"}\n";
        let parsed = parse_manifests("names.yaml", text);
        assert!(parsed.services.is_empty() && parsed.nodes.is_empty());
        let w = messages(&parsed);
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].starts_with("names.yaml document 1: Service default/\"web; drop\": metadata.name \"web; drop\" is not a valid DNS-1035 label"), "{w:?}");
        assert!(w[1].starts_with("names.yaml document 2: Service Shop/web: metadata.namespace \"Shop\" is not a valid DNS-1123 label"), "{w:?}");
        assert!(w[2].starts_with("names.yaml document 3: Node \"nœud\": metadata.name \"nœud\" is not a valid DNS-1123 subdomain"), "{w:?}");
    }

    #[test]
    fn a_second_definition_in_a_file_wins_and_the_first_is_reported() {
        let text = format!(
            "{}---\n{}",
            service("a").replace("port: 80", "port: 81"),
            service("a")
        );
        let parsed = parse_manifests("dup.yaml", &text);
        assert_eq!(names(&parsed.services), ["default/a"]);
        let port = parsed.services[0]
            .1
            .spec
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()[0]
            .port;
        assert_eq!(port, 80);
        assert_eq!(
            messages(&parsed),
            [
                "dup.yaml document 1: Service default/a: ignored: also defined in dup.yaml document 2, which wins (the last definition in file-name and document order is used)"
            ]
        );
    }

    #[test]
    fn cluster_scoped_objects_lose_a_namespace_they_should_not_have() {
        let text = "apiVersion: v1\nkind: Node\nmetadata: {name: n1, namespace: kube-system}\n";
        let parsed = parse_manifests("n.yaml", text);
        assert_eq!(parsed.nodes[0].0, ObjectKey::cluster("n1"));
        assert_eq!(parsed.nodes[0].1.metadata.namespace, None);
    }

    #[test]
    fn lists_are_unpacked_and_their_items_named_in_warnings() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: a}}\n- {apiVersion: v1, kind: Service, metadata: {}}\n---\n\
                    apiVersion: v1\nkind: ServiceList\nitems:\n- {metadata: {name: b}}\n";
        let parsed = parse_manifests("list.yaml", text);
        assert_eq!(names(&parsed.services), ["default/a", "default/b"]);
        assert_eq!(
            messages(&parsed),
            ["list.yaml document 1 (List item 2): Service default/(unnamed): no metadata.name"]
        );
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = format!("a: &a [{}]\nb: [", vec!["1"; 20_000].join(","));
        text.push_str(&vec!["*a"; 20].join(","));
        text.push_str("]\n");
        let parsed = parse_manifests("bomb.yaml", &text);
        assert!(
            matches!(parsed.warnings[0].problem, Problem::TooManyNodes { .. }),
            "{:?}",
            parsed.warnings
        );
    }

    #[test]
    fn line_numbers_in_parser_messages_are_shifted_to_the_file() {
        assert_eq!(
            shift_line_numbers(
                "did not find expected key at line 2 column 3, while parsing a block mapping at line 1 column 1",
                10
            ),
            "did not find expected key at line 12 column 3, while parsing a block mapping at line 11 column 1"
        );
        assert_eq!(
            shift_line_numbers("key \"line 5\" at line 1 column 2", 1),
            "key \"line 5\" at line 2 column 2"
        );
    }

    #[test]
    fn merge_keys_and_secret_string_data_are_applied_like_the_api_server_does() {
        let text = "x: &common {apiVersion: v1, kind: Service}\n<<: *common\nmetadata: {name: merged}\n---\n\
                    apiVersion: v1\nkind: Secret\nmetadata: {name: tls}\ntype: kubernetes.io/tls\n\
                    data: {tls.crt: b2xk, tls.key: a2V5}\nstringData: {tls.crt: new}\n";
        let parsed = parse_manifests("a.yaml", text);
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
        assert_eq!(names(&parsed.services), ["default/merged"]);
        let data = parsed.secrets[0].1.data.clone().unwrap();
        assert_eq!(data["tls.crt"].0, b"new");
        assert_eq!(data["tls.key"].0, b"key");
    }
}

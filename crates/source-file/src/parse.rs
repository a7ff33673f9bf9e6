use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sluice_model::ObjectKey;

/// A problem with one document of one file. The document is skipped; the rest applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadWarning {
    pub file: String,
    /// 1-based index of the YAML document in the file (0 when the whole file is affected).
    pub document: usize,
    pub message: String,
}

impl fmt::Display for LoadWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.document == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{} document {}: {}",
                self.file, self.document, self.message
            )
        }
    }
}

/// The objects one file contributes, in document order.
#[derive(Debug, Clone, Default)]
pub struct ParsedFile {
    pub services: Vec<(ObjectKey, Arc<Service>)>,
    pub endpoint_slices: Vec<(ObjectKey, Arc<EndpointSlice>)>,
    pub nodes: Vec<(ObjectKey, Arc<Node>)>,
    pub ingresses: Vec<(ObjectKey, Arc<Ingress>)>,
    pub ingress_classes: Vec<(ObjectKey, Arc<IngressClass>)>,
    pub secrets: Vec<(ObjectKey, Arc<Secret>)>,
    pub warnings: Vec<LoadWarning>,
}

/// Parses the text of one manifest file. `file` is only used in warnings.
/// Kinds sluice does not use (Deployment, ConfigMap, ...) are skipped silently; `kind: List`
/// is unpacked.
pub fn parse_manifests(file: &str, text: &str) -> ParsedFile {
    let mut out = ParsedFile::default();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document_no = index + 1;
        let value = match serde_yaml::Value::deserialize(document) {
            Ok(value) => value,
            Err(err) => {
                out.warnings.push(LoadWarning {
                    file: file.to_owned(),
                    document: document_no,
                    message: format!("not valid YAML: {err}"),
                });
                // A syntax error leaves the YAML stream in an unknown state: stop here, as
                // kubectl does, but keep what was parsed before.
                break;
            }
        };
        add_value(&mut out, file, document_no, value);
    }
    out
}

fn add_value(out: &mut ParsedFile, file: &str, document: usize, value: serde_yaml::Value) {
    if value.is_null() {
        return; // empty document (e.g. a trailing `---`)
    }
    let warn = |out: &mut ParsedFile, message: String| {
        out.warnings.push(LoadWarning {
            file: file.to_owned(),
            document,
            message,
        })
    };
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .map(str::to_owned);
    let Some(kind) = kind else {
        warn(out, "no `kind` field: not a Kubernetes object".to_owned());
        return;
    };
    match kind.as_str() {
        "List" => {
            let items = value.get("items").and_then(|i| i.as_sequence()).cloned();
            for item in items.unwrap_or_default() {
                add_value(out, file, document, item);
            }
        }
        "Service" => push(out, file, document, &kind, value, |o| &mut o.services),
        "EndpointSlice" => push(out, file, document, &kind, value, |o| {
            &mut o.endpoint_slices
        }),
        "Node" => push(out, file, document, &kind, value, |o| &mut o.nodes),
        "Ingress" => push(out, file, document, &kind, value, |o| &mut o.ingresses),
        "IngressClass" => push(out, file, document, &kind, value, |o| {
            &mut o.ingress_classes
        }),
        "Secret" => push(out, file, document, &kind, value, |o| &mut o.secrets),
        _ => {}
    }
}

/// Typed decoding of one object; k8s-openapi also checks `apiVersion` and `kind`.
fn push<T>(
    out: &mut ParsedFile,
    file: &str,
    document: usize,
    kind: &str,
    value: serde_yaml::Value,
    list: impl FnOnce(&mut ParsedFile) -> &mut Vec<(ObjectKey, Arc<T>)>,
) where
    T: DeserializeOwned
        + k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
{
    let name = describe(kind, &value);
    let mut object: T = match serde_yaml::from_value(value) {
        Ok(object) => object,
        Err(err) => {
            out.warnings.push(LoadWarning {
                file: file.to_owned(),
                document,
                message: format!("{name}: {err}"),
            });
            return;
        }
    };
    let meta = object.metadata_mut();
    if meta.name.as_deref().is_none_or(str::is_empty) {
        out.warnings.push(LoadWarning {
            file: file.to_owned(),
            document,
            message: format!("{kind} without metadata.name"),
        });
        return;
    }
    if namespaced(kind) && meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace = Some("default".to_owned());
    }
    let Some(key) = ObjectKey::of(object.metadata()) else {
        return;
    };
    list(out).push((key, Arc::new(object)));
}

fn namespaced(kind: &str) -> bool {
    !matches!(kind, "Node" | "IngressClass")
}

/// `Service default/web` from the raw value, for messages about objects that fail to decode.
fn describe(kind: &str, value: &serde_yaml::Value) -> String {
    let meta = value.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(|v| v.as_str());
    match (field("namespace"), field("name")) {
        (Some(ns), Some(name)) if namespaced(kind) => format!("{kind} {ns}/{name}"),
        (None, Some(name)) if namespaced(kind) => format!("{kind} default/{name}"),
        (_, Some(name)) => format!("{kind} {name}"),
        (_, None) => format!("{kind} (unnamed)"),
    }
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
        assert_eq!(parsed.services.len(), 1);
        assert_eq!(parsed.services[0].0.name, "fine");
        assert_eq!(parsed.warnings.len(), 1);
        let w = parsed.warnings[0].to_string();
        assert!(
            w.starts_with("svc.yaml document 1: Service shop/broken:"),
            "{w}"
        );
    }

    #[test]
    fn wrong_api_version_is_rejected_by_name() {
        let text = "apiVersion: v2\nkind: Service\nmetadata: {name: x}\n";
        let parsed = parse_manifests("a.yaml", text);
        assert!(parsed.services.is_empty());
        assert!(
            parsed.warnings[0].message.contains("Service default/x"),
            "{:?}",
            parsed.warnings
        );
    }

    #[test]
    fn missing_kind_and_missing_name_are_warnings() {
        let text = "apiVersion: v1\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Service\nmetadata: {}\n";
        let parsed = parse_manifests("a.yaml", text);
        assert_eq!(parsed.warnings.len(), 2, "{:?}", parsed.warnings);
        assert_eq!(parsed.warnings[0].document, 1);
        assert_eq!(parsed.warnings[1].document, 2);
        assert!(parsed.warnings[1].message.contains("without metadata.name"));
    }

    #[test]
    fn yaml_syntax_error_keeps_earlier_documents() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.1}\n---\nkind: [unclosed\n";
        let parsed = parse_manifests("a.yaml", text);
        assert_eq!(parsed.services.len(), 1);
        assert_eq!(parsed.warnings.len(), 1);
        assert_eq!(parsed.warnings[0].document, 2);
    }

    #[test]
    fn list_kind_is_unpacked() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: a}}\n- {apiVersion: v1, kind: Service, metadata: {name: b}}\n";
        let parsed = parse_manifests("a.yaml", text);
        assert_eq!(parsed.services.len(), 2);
    }
}

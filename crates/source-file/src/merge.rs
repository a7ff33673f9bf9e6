//! Which file's definition of each object wins, kept up to date file by file, so that a
//! changed file costs work proportional to its own objects, never to the directory.
//!
//! When an object is defined in more than one file, the last file in file-name order wins
//! (within a file, the parser already kept the last document). Only Secrets referenced by a
//! winning Ingress (`tls`, `auth-secret`, `proxy-ssl-secret`) and of type `kubernetes.io/tls`
//! or `Opaque` are published, like the API source.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use sluice_model::ingress::{OPAQUE_SECRET_TYPE, TLS_SECRET_TYPE, referenced_secrets};
use sluice_model::{Compact, Object, ObjectKey, SnapshotKind, SourceEvent};

use crate::parse::{Origin, ParsedFile};
use crate::warning::{LoadWarning, ObjectRef, Problem};

pub(crate) type Key = (SnapshotKind, ObjectKey);

/// The objects of one file, compacted, with where in the file each is defined.
#[derive(Debug, Default)]
pub(crate) struct FileObjects {
    pub name: String,
    pub objects: BTreeMap<Key, (Object, Origin)>,
}

impl FileObjects {
    /// Takes the objects of a parsed file (and compacts them: nothing else holds them yet).
    pub(crate) fn new(name: String, parsed: ParsedFile) -> Self {
        fn take<T: Compact + Clone>(
            out: &mut BTreeMap<Key, (Object, Origin)>,
            origins: &BTreeMap<Key, Origin>,
            kind: SnapshotKind,
            objects: Vec<(ObjectKey, Arc<T>)>,
            wrap: fn(Arc<T>) -> Object,
        ) {
            for (key, mut object) in objects {
                Arc::make_mut(&mut object).compact();
                let key = (kind, key);
                let origin = origins.get(&key).copied().unwrap_or(Origin {
                    document: 0,
                    item: None,
                });
                out.insert(key, (wrap(object), origin));
            }
        }
        let mut objects = BTreeMap::new();
        let o = &parsed.origins;
        let out = &mut objects;
        take(
            out,
            o,
            SnapshotKind::Service,
            parsed.services,
            Object::Service,
        );
        take(
            out,
            o,
            SnapshotKind::EndpointSlice,
            parsed.endpoint_slices,
            Object::EndpointSlice,
        );
        take(out, o, SnapshotKind::Node, parsed.nodes, Object::Node);
        take(
            out,
            o,
            SnapshotKind::Ingress,
            parsed.ingresses,
            Object::Ingress,
        );
        take(
            out,
            o,
            SnapshotKind::IngressClass,
            parsed.ingress_classes,
            Object::IngressClass,
        );
        take(out, o, SnapshotKind::Secret, parsed.secrets, Object::Secret);
        Self { name, objects }
    }

    /// Where this version defines the same object as `old` did, shares `old`'s copy: the
    /// consumer keeps the copy it has for an unchanged object, and memory must not hold two.
    fn share_unchanged(&mut self, old: &FileObjects) {
        for (key, (object, _)) in &mut self.objects {
            if let Some((previous, _)) = old.objects.get(key)
                && same(previous, object)
            {
                *object = previous.clone();
            }
        }
    }
}

/// Same content (the same allocation, or equal).
fn same(a: &Object, b: &Object) -> bool {
    let same_allocation = match (a, b) {
        (Object::Service(a), Object::Service(b)) => Arc::ptr_eq(a, b),
        (Object::EndpointSlice(a), Object::EndpointSlice(b)) => Arc::ptr_eq(a, b),
        (Object::Node(a), Object::Node(b)) => Arc::ptr_eq(a, b),
        (Object::Ingress(a), Object::Ingress(b)) => Arc::ptr_eq(a, b),
        (Object::IngressClass(a), Object::IngressClass(b)) => Arc::ptr_eq(a, b),
        (Object::Secret(a), Object::Secret(b)) => Arc::ptr_eq(a, b),
        _ => false,
    };
    same_allocation || a == b
}

/// A file of the directory, by its exact name.
type File = Arc<OsStr>;

/// The merged view of all files: which file defines what, and what was published.
#[derive(Debug, Default)]
pub(crate) struct Merge {
    files: BTreeMap<File, FileObjects>,
    /// Files defining each object, in file-name order: the last one wins.
    definers: HashMap<Key, Vec<File>>,
    /// Secret references of the winning Ingresses.
    ingress_refs: BTreeMap<ObjectKey, Vec<ObjectKey>>,
    /// The Secrets the consumer has.
    published_secrets: BTreeMap<ObjectKey, Arc<Secret>>,
}

/// One file's new contents (`None`: the file is gone or unreadable).
pub(crate) type FileUpdate = (OsString, Option<FileObjects>);

impl Merge {
    pub(crate) fn contains(&self, file: &OsStr) -> bool {
        self.files.contains_key(file)
    }

    /// Files currently merged.
    pub(crate) fn files(&self) -> impl Iterator<Item = &OsStr> {
        self.files.keys().map(|file| file.as_ref())
    }

    /// Replaces the given files; returns the events for the objects whose winning definition
    /// changed, and a warning for every losing copy of an object these files define.
    pub(crate) fn update(
        &mut self,
        updates: Vec<FileUpdate>,
    ) -> (Vec<SourceEvent>, Vec<LoadWarning>) {
        let mut affected: BTreeSet<Key> = BTreeSet::new();
        for (file, new) in &updates {
            affected.extend(
                self.files
                    .get(file.as_os_str())
                    .into_iter()
                    .flat_map(|f| f.objects.keys().cloned()),
            );
            affected.extend(new.iter().flat_map(|f| f.objects.keys().cloned()));
        }
        let before: BTreeMap<&Key, Option<Object>> = affected
            .iter()
            .map(|key| (key, self.winner(key).map(|(object, _)| object.clone())))
            .collect();
        for (file, new) in updates {
            self.replace_file(file, new);
        }
        let mut events = Vec::new();
        let mut secrets_to_check = BTreeSet::new();
        for (key, old) in before {
            let new = self.winner(key).map(|(object, _)| object.clone());
            if key.0 == SnapshotKind::Secret {
                secrets_to_check.insert(key.1.clone());
                continue;
            }
            if key.0 == SnapshotKind::Ingress {
                self.update_refs(&key.1, new.as_ref(), &mut secrets_to_check);
            }
            match (old, new) {
                (Some(_), None) => events.push(SourceEvent::Delete(key.0, key.1.clone())),
                (old, Some(new)) if !old.as_ref().is_some_and(|old| same(old, &new)) => {
                    events.push(SourceEvent::Apply(key.1.clone(), new));
                }
                _ => {}
            }
        }
        self.publish_secrets(secrets_to_check, &mut events);
        let warnings = self.duplicates(&affected);
        (events, warnings)
    }

    fn replace_file(&mut self, file: OsString, mut new: Option<FileObjects>) {
        let file: File = file.into();
        if let Some(old) = self.files.remove(&file) {
            for key in old.objects.keys() {
                if let Some(files) = self.definers.get_mut(key) {
                    files.retain(|f| *f != file);
                    if files.is_empty() {
                        self.definers.remove(key);
                    }
                }
            }
            if let Some(new) = &mut new {
                new.share_unchanged(&old);
            }
        }
        let Some(new) = new else { return };
        for key in new.objects.keys() {
            let files = self.definers.entry(key.clone()).or_default();
            let at = files.partition_point(|f| **f < *file);
            files.reserve_exact(1); // nearly always the only one
            files.insert(at, Arc::clone(&file));
        }
        self.files.insert(file, new);
    }

    /// The winning definition of an object and its file.
    fn winner(&self, key: &Key) -> Option<(&Object, &FileObjects)> {
        let path = self.definers.get(key)?.last()?;
        let file = self.files.get(path)?;
        Some((&file.objects.get(key)?.0, file))
    }

    fn update_refs(
        &mut self,
        key: &ObjectKey,
        new: Option<&Object>,
        check: &mut BTreeSet<ObjectKey>,
    ) {
        if let Some(old) = self.ingress_refs.remove(key) {
            check.extend(old);
        }
        if let Some(Object::Ingress(ingress)) = new {
            let refs = referenced_secrets(key, ingress);
            check.extend(refs.iter().cloned());
            self.ingress_refs.insert(key.clone(), refs);
        }
    }

    /// Publishes or withdraws the Secrets in `keys`: a Secret of a read type is published while
    /// some winning Ingress references it.
    fn publish_secrets(&mut self, keys: BTreeSet<ObjectKey>, events: &mut Vec<SourceEvent>) {
        if keys.is_empty() {
            return;
        }
        let referenced: BTreeSet<&ObjectKey> = self.ingress_refs.values().flatten().collect();
        for key in keys {
            let wanted = match self.winner(&(SnapshotKind::Secret, key.clone())) {
                Some((Object::Secret(secret), _))
                    if referenced.contains(&key) && is_read_type(secret) =>
                {
                    Some(Arc::clone(secret))
                }
                _ => None,
            };
            let published = self.published_secrets.get(&key);
            match wanted {
                Some(secret) if published != Some(&secret) => {
                    events.push(SourceEvent::Apply(
                        key.clone(),
                        Object::Secret(Arc::clone(&secret)),
                    ));
                    self.published_secrets.insert(key, secret);
                }
                None if published.is_some() => {
                    events.push(SourceEvent::Delete(SnapshotKind::Secret, key.clone()));
                    self.published_secrets.remove(&key);
                }
                _ => {}
            }
        }
    }

    /// A warning for each losing copy of the given objects, naming the winning one.
    fn duplicates(&self, keys: &BTreeSet<Key>) -> Vec<LoadWarning> {
        let mut warnings = Vec::new();
        for key in keys {
            let Some(files) = self.definers.get(key).filter(|f| f.len() > 1) else {
                continue;
            };
            let Some((_, winner_file)) = self.winner(key) else {
                continue;
            };
            let winner = winner_file.objects[key].1.describe(&winner_file.name);
            for file in &files[..files.len() - 1] {
                let loser = &self.files[file];
                let origin = loser.objects[key].1;
                warnings.push(LoadWarning {
                    file: loser.name.clone(),
                    document: origin.document,
                    item: origin.item,
                    object: Some(ObjectRef::of(key.0, &key.1)),
                    problem: Problem::Duplicate {
                        winner: winner.clone(),
                    },
                });
            }
        }
        warnings
    }
}

/// `kubernetes.io/tls` or `Opaque` (a manifest without `type` is Opaque, as the API server
/// defaults it), the types the API source watches.
fn is_read_type(secret: &Secret) -> bool {
    let type_ = secret.type_.as_deref().unwrap_or(OPAQUE_SECRET_TYPE);
    type_ == TLS_SECRET_TYPE || type_ == OPAQUE_SECRET_TYPE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_manifests;

    fn file(text: &str) -> FileObjects {
        FileObjects::new("a.yaml".to_owned(), parse_manifests("a.yaml", text))
    }

    fn service(name: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{clusterIP: {ip}}}\n"
        )
    }

    fn winner(merge: &Merge, name: &str) -> Object {
        let key = (SnapshotKind::Service, ObjectKey::new("default", name));
        merge.winner(&key).unwrap().0.clone()
    }

    #[test]
    fn a_rewritten_file_keeps_the_copies_of_its_unchanged_objects() {
        let mut merge = Merge::default();
        let first = format!(
            "{}---\n{}",
            service("a", "10.96.0.1"),
            service("b", "10.96.0.2")
        );
        let (events, _) = merge.update(vec![("a.yaml".into(), Some(file(&first)))]);
        let published_a = match &events[0] {
            SourceEvent::Apply(key, Object::Service(a)) if key.name == "a" => Arc::clone(a),
            other => panic!("{other:?}"),
        };

        let second = format!(
            "{}---\n{}",
            service("a", "10.96.0.1"),
            service("b", "10.96.0.9")
        );
        let (events, _) = merge.update(vec![("a.yaml".into(), Some(file(&second)))]);
        assert!(
            matches!(events.as_slice(), [SourceEvent::Apply(key, _)] if key.name == "b"),
            "{events:?}"
        );
        // The consumer still holds its copy of `a`: the source holds the same one, not a
        // second.
        let Object::Service(kept_a) = winner(&merge, "a") else {
            panic!("not a Service")
        };
        assert!(Arc::ptr_eq(&kept_a, &published_a));
    }
}

//! Which file's definition of each object wins, kept up to date file by file, so that a
//! changed file costs work proportional to its own objects, never to the directory.
//!
//! When an object is defined in more than one file, the last file in file-name order wins
//! (within a file, the parser already kept the last document). Only TLS Secrets referenced by
//! a winning Ingress are published, like the API source.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use sluice_model::{Compact, Object, ObjectKey, SnapshotKind, SourceEvent};

use crate::parse::{Origin, ParsedFile};
use crate::warning::{LoadWarning, ObjectRef, Problem};

pub(crate) type Key = (SnapshotKind, ObjectKey);

const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

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
}

/// The merged view of all files: which file defines what, and what was published.
#[derive(Debug, Default)]
pub(crate) struct Merge {
    files: BTreeMap<Arc<PathBuf>, FileObjects>,
    /// Files defining each object, in file-name order: the last one wins.
    definers: HashMap<Key, Vec<Arc<PathBuf>>>,
    /// Secret references of the winning Ingresses.
    ingress_refs: BTreeMap<ObjectKey, Vec<ObjectKey>>,
    /// The Secrets the consumer has.
    published_secrets: BTreeMap<ObjectKey, Arc<Secret>>,
}

/// One file's new contents (`None`: the file is gone or unreadable).
pub(crate) type FileUpdate = (PathBuf, Option<FileObjects>);

impl Merge {
    pub(crate) fn contains(&self, path: &PathBuf) -> bool {
        self.files.contains_key(path)
    }

    /// Files currently merged.
    pub(crate) fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.files.keys().map(|path| path.as_ref())
    }

    /// Replaces the given files; returns the events for the objects whose winning definition
    /// changed, and a warning for every losing copy of an object these files define.
    pub(crate) fn update(
        &mut self,
        updates: Vec<FileUpdate>,
    ) -> (Vec<SourceEvent>, Vec<LoadWarning>) {
        let mut affected: BTreeSet<Key> = BTreeSet::new();
        for (path, new) in &updates {
            affected.extend(
                self.files
                    .get(path)
                    .into_iter()
                    .flat_map(|f| f.objects.keys().cloned()),
            );
            affected.extend(new.iter().flat_map(|f| f.objects.keys().cloned()));
        }
        let before: BTreeMap<&Key, Option<Object>> = affected
            .iter()
            .map(|key| (key, self.winner(key).map(|(object, _)| object.clone())))
            .collect();
        for (path, new) in updates {
            self.replace_file(path, new);
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
                (old, Some(new)) if old.as_ref() != Some(&new) => {
                    events.push(SourceEvent::Apply(key.1.clone(), new));
                }
                _ => {}
            }
        }
        self.publish_secrets(secrets_to_check, &mut events);
        let warnings = self.duplicates(&affected);
        (events, warnings)
    }

    fn replace_file(&mut self, path: PathBuf, new: Option<FileObjects>) {
        let path = Arc::new(path);
        if let Some(old) = self.files.remove(&path) {
            for key in old.objects.keys() {
                if let Some(files) = self.definers.get_mut(key) {
                    files.retain(|p| *p != path);
                    if files.is_empty() {
                        self.definers.remove(key);
                    }
                }
            }
        }
        let Some(new) = new else { return };
        for key in new.objects.keys() {
            let files = self.definers.entry(key.clone()).or_default();
            let at = files.partition_point(|p| **p < *path);
            files.insert(at, Arc::clone(&path));
        }
        self.files.insert(path, new);
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
            let refs = secret_refs(key, ingress);
            check.extend(refs.iter().cloned());
            self.ingress_refs.insert(key.clone(), refs);
        }
    }

    /// Publishes or withdraws the Secrets in `keys`: a TLS Secret is published while some
    /// winning Ingress references it.
    fn publish_secrets(&mut self, keys: BTreeSet<ObjectKey>, events: &mut Vec<SourceEvent>) {
        if keys.is_empty() {
            return;
        }
        let referenced: BTreeSet<&ObjectKey> = self.ingress_refs.values().flatten().collect();
        for key in keys {
            let wanted = match self.winner(&(SnapshotKind::Secret, key.clone())) {
                Some((Object::Secret(secret), _))
                    if referenced.contains(&key)
                        && secret.type_.as_deref() == Some(TLS_SECRET_TYPE) =>
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
            for path in &files[..files.len() - 1] {
                let loser = &self.files[path];
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

fn secret_refs(key: &ObjectKey, ingress: &Ingress) -> Vec<ObjectKey> {
    let tls = ingress.spec.as_ref().and_then(|s| s.tls.as_ref());
    tls.into_iter()
        .flatten()
        .filter_map(|t| t.secret_name.as_ref())
        .map(|name| ObjectKey::new(key.namespace.clone(), name.clone()))
        .collect()
}

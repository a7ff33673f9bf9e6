//! The contract between sources and their consumer: sources report *which objects changed*
//! as [`SourceEvent`]s, and one [`Store`], owned by the consumer, applies them in place and
//! accumulates a [`ChangeSet`]. Publishing or consuming one changed object costs O(log N):
//! nothing ever clones or diffs a whole [`Snapshot`].
//!
//! A relist of one kind (`RelistStart`, its objects, `RelistDone`) is buffered and swapped in
//! at `RelistDone`, so readers never see a half-listed kind; it names only the objects that
//! differ from what was there (added, removed, or a new version), not the whole kind.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use crate::EndpointSlice;
use k8s_openapi::Metadata;
use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::{ChangeSet, ObjectKey, Snapshot, SnapshotKind};

/// One object of a kind a [`Snapshot`] holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Node(Arc<Node>),
    Ingress(Arc<Ingress>),
    IngressClass(Arc<IngressClass>),
    Secret(Arc<Secret>),
}

impl Object {
    pub fn kind(&self) -> SnapshotKind {
        match self {
            Object::Service(_) => SnapshotKind::Service,
            Object::EndpointSlice(_) => SnapshotKind::EndpointSlice,
            Object::Node(_) => SnapshotKind::Node,
            Object::Ingress(_) => SnapshotKind::Ingress,
            Object::IngressClass(_) => SnapshotKind::IngressClass,
            Object::Secret(_) => SnapshotKind::Secret,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Service(o) => o.metadata(),
            Object::EndpointSlice(o) => o.metadata(),
            Object::Node(o) => o.metadata(),
            Object::Ingress(o) => o.metadata(),
            Object::IngressClass(o) => o.metadata(),
            Object::Secret(o) => o.metadata(),
        }
    }
}

/// What a source reports. Events of one source are applied in order.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceEvent {
    /// An object was added or changed; this is its current version. An object equal to the
    /// stored one (same `resourceVersion`, or equal when it has none) is no change.
    Apply(ObjectKey, Object),
    /// An object is gone.
    Delete(SnapshotKind, ObjectKey),
    /// A complete listing of one kind starts (the first list, or a relist after 410 Gone or a
    /// reconnect): the `Apply`s of this kind up to `RelistDone` are the whole kind. Objects
    /// not among them are gone. A `RelistStart` while one is in progress starts over.
    RelistStart(SnapshotKind),
    /// The listing of this kind is complete: it replaces the kind atomically.
    RelistDone(SnapshotKind),
    /// Every kind the source serves has been listed: the store may be read.
    Synced,
}

/// Events a source publishes together (applied before the consumer looks again).
#[derive(Debug, Clone)]
pub struct SourceBatch {
    pub events: Vec<SourceEvent>,
    /// When the source noticed the earliest change in this batch (for latency accounting).
    pub observed: Instant,
}

impl SourceBatch {
    pub fn new(events: Vec<SourceEvent>, observed: Instant) -> Self {
        Self { events, observed }
    }
}

/// The objects of all kinds, kept up to date from [`SourceEvent`]s, and what changed since
/// the consumer last asked ([`take_changes`](Self::take_changes)).
#[derive(Debug, Default)]
pub struct Store {
    snapshot: Snapshot,
    /// Kinds being relisted, with the objects listed so far (only that kind's map is used).
    relists: BTreeMap<SnapshotKind, Snapshot>,
    changes: ChangeSet,
    synced: bool,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current objects. Relists in progress are not visible until complete.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The current objects, owned (one-shot readers).
    pub fn into_snapshot(self) -> Snapshot {
        self.snapshot
    }

    /// Whether the source said every kind has been listed.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Whether anything changed since the last [`take_changes`](Self::take_changes).
    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty()
    }

    /// What changed since the last call. The first call after [`SourceEvent::Synced`] says
    /// "everything" (changes are not tracked object by object before that).
    pub fn take_changes(&mut self) -> ChangeSet {
        std::mem::take(&mut self.changes)
    }

    pub fn apply_all(&mut self, events: impl IntoIterator<Item = SourceEvent>) {
        for event in events {
            self.apply(event);
        }
    }

    pub fn apply(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::Apply(key, object) => self.apply_object(key, object),
            SourceEvent::Delete(kind, key) => self.delete(kind, key),
            SourceEvent::RelistStart(kind) => {
                self.relists.insert(kind, Snapshot::default());
            }
            SourceEvent::RelistDone(kind) => self.finish_relist(kind),
            SourceEvent::Synced => {
                if !self.synced {
                    self.synced = true;
                    self.changes = ChangeSet::everything();
                }
            }
        }
    }

    fn apply_object(&mut self, key: ObjectKey, object: Object) {
        match object {
            Object::Service(o) => self.upsert(key, o),
            Object::EndpointSlice(o) => self.upsert(key, o),
            Object::Node(o) => self.upsert(key, o),
            Object::Ingress(o) => self.upsert(key, o),
            Object::IngressClass(o) => self.upsert(key, o),
            Object::Secret(o) => self.upsert(key, o),
        }
    }

    fn upsert<T: Kind>(&mut self, key: ObjectKey, object: Arc<T>) {
        let live = T::map(&mut self.snapshot);
        if let Some(buffer) = self.relists.get_mut(&T::SNAPSHOT_KIND) {
            // Unchanged objects keep their Arc, so the swap can tell them apart cheaply.
            let object = match live.get(&key) {
                Some(old) if unchanged(old, &object) => Arc::clone(old),
                _ => object,
            };
            T::map(buffer).insert(key, object);
            return;
        }
        if live.get(&key).is_some_and(|old| unchanged(old, &object)) {
            return;
        }
        live.insert(key.clone(), object);
        self.record(T::SNAPSHOT_KIND, key);
    }

    fn delete(&mut self, kind: SnapshotKind, key: ObjectKey) {
        let removed = match self.relists.get_mut(&kind) {
            Some(buffer) => {
                remove(buffer, kind, &key);
                false
            }
            None => remove(&mut self.snapshot, kind, &key),
        };
        if removed {
            self.record(kind, key);
        }
    }

    fn finish_relist(&mut self, kind: SnapshotKind) {
        // A `RelistDone` without its start lists nothing new: ignore it.
        let Some(mut listed) = self.relists.remove(&kind) else {
            return;
        };
        let track = self.synced.then_some(&mut self.changes);
        match kind {
            SnapshotKind::Service => swap::<Service>(&mut self.snapshot, &mut listed, track),
            SnapshotKind::EndpointSlice => {
                swap::<EndpointSlice>(&mut self.snapshot, &mut listed, track)
            }
            SnapshotKind::Node => swap::<Node>(&mut self.snapshot, &mut listed, track),
            SnapshotKind::Ingress => swap::<Ingress>(&mut self.snapshot, &mut listed, track),
            SnapshotKind::IngressClass => {
                swap::<IngressClass>(&mut self.snapshot, &mut listed, track)
            }
            SnapshotKind::Secret => swap::<Secret>(&mut self.snapshot, &mut listed, track),
        }
    }

    fn record(&mut self, kind: SnapshotKind, key: ObjectKey) {
        // Before the first sync the consumer recomputes everything anyway.
        if self.synced && !self.changes.everything {
            self.changes.insert(kind, key);
        }
    }
}

/// A kind a [`Snapshot`] holds, and where.
trait Kind: Metadata<Ty = ObjectMeta> + PartialEq {
    const SNAPSHOT_KIND: SnapshotKind;
    fn map(snapshot: &mut Snapshot) -> &mut BTreeMap<ObjectKey, Arc<Self>>;
}

macro_rules! kind {
    ($type:ty, $kind:ident, $field:ident) => {
        impl Kind for $type {
            const SNAPSHOT_KIND: SnapshotKind = SnapshotKind::$kind;
            fn map(snapshot: &mut Snapshot) -> &mut BTreeMap<ObjectKey, Arc<Self>> {
                &mut snapshot.$field
            }
        }
    };
}

kind!(Service, Service, services);
kind!(EndpointSlice, EndpointSlice, endpoint_slices);
kind!(Node, Node, nodes);
kind!(Ingress, Ingress, ingresses);
kind!(IngressClass, IngressClass, ingress_classes);
kind!(Secret, Secret, secrets);

/// Same object version: the same `Arc`, or the same `resourceVersion` (API server objects),
/// or equal content (objects without a resourceVersion, e.g. from manifests).
fn unchanged<T: Kind>(old: &Arc<T>, new: &Arc<T>) -> bool {
    if Arc::ptr_eq(old, new) {
        return true;
    }
    match (
        &old.metadata().resource_version,
        &new.metadata().resource_version,
    ) {
        (Some(a), Some(b)) => a == b,
        (None, None) => old == new,
        _ => false,
    }
}

fn remove(snapshot: &mut Snapshot, kind: SnapshotKind, key: &ObjectKey) -> bool {
    match kind {
        SnapshotKind::Service => snapshot.services.remove(key).is_some(),
        SnapshotKind::EndpointSlice => snapshot.endpoint_slices.remove(key).is_some(),
        SnapshotKind::Node => snapshot.nodes.remove(key).is_some(),
        SnapshotKind::Ingress => snapshot.ingresses.remove(key).is_some(),
        SnapshotKind::IngressClass => snapshot.ingress_classes.remove(key).is_some(),
        SnapshotKind::Secret => snapshot.secrets.remove(key).is_some(),
    }
}

/// Replaces the live map of `T` with the listed one, recording (when `changes` is given) the
/// keys added, removed or given a new object. O(N) for the kind: a relist lists N objects.
fn swap<T: Kind>(live: &mut Snapshot, listed: &mut Snapshot, changes: Option<&mut ChangeSet>) {
    let live = T::map(live);
    let listed = std::mem::take(T::map(listed));
    if let Some(changes) = changes.filter(|c| !c.everything) {
        let mut changed: BTreeSet<&ObjectKey> = BTreeSet::new();
        for (key, object) in &listed {
            if !live.get(key).is_some_and(|old| Arc::ptr_eq(old, object)) {
                changed.insert(key);
            }
        }
        changed.extend(live.keys().filter(|key| !listed.contains_key(*key)));
        for key in changed {
            changes.insert(T::SNAPSHOT_KIND, key.clone());
        }
    }
    *live = listed;
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ServiceSpec;

    use super::*;

    fn service(name: &str, rv: Option<&str>, ip: &str) -> SourceEvent {
        let mut svc = Service::default();
        svc.metadata.namespace = Some("default".into());
        svc.metadata.name = Some(name.into());
        svc.metadata.resource_version = rv.map(Into::into);
        svc.spec = Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            ..Default::default()
        });
        SourceEvent::Apply(key(name), Object::Service(Arc::new(svc)))
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("default", name)
    }

    fn names(store: &Store) -> Vec<String> {
        let services = &store.snapshot().services;
        services.keys().map(|k| k.name.clone()).collect()
    }

    fn changed(store: &mut Store) -> Vec<String> {
        let changes = store.take_changes();
        assert!(!changes.everything);
        changes.services.iter().map(|k| k.name.clone()).collect()
    }

    fn synced_with(objects: Vec<SourceEvent>) -> Store {
        let mut store = Store::new();
        store.apply(SourceEvent::RelistStart(SnapshotKind::Service));
        store.apply_all(objects);
        store.apply(SourceEvent::RelistDone(SnapshotKind::Service));
        store.apply(SourceEvent::Synced);
        assert!(
            store.take_changes().everything,
            "the first sync is everything"
        );
        store
    }

    #[test]
    fn nothing_is_tracked_before_sync_and_the_first_sync_is_everything() {
        let mut store = Store::new();
        store.apply(service("a", Some("1"), "10.96.0.1"));
        assert!(!store.is_synced());
        assert!(!store.has_changes());
        store.apply(SourceEvent::Synced);
        assert!(store.is_synced());
        assert_eq!(store.take_changes(), ChangeSet::everything());
        assert!(!store.has_changes());
        assert_eq!(names(&store), ["a"]);
    }

    #[test]
    fn each_change_names_only_its_object_and_repeats_are_no_change() {
        let mut store = synced_with(vec![
            service("a", Some("1"), "10.96.0.1"),
            service("b", Some("2"), "10.96.0.2"),
        ]);
        store.apply(service("a", Some("1"), "10.96.0.1"));
        assert!(!store.has_changes(), "same resourceVersion");
        store.apply(service("a", Some("3"), "10.96.0.9"));
        store.apply(service("c", Some("4"), "10.96.0.3"));
        store.apply(SourceEvent::Delete(SnapshotKind::Service, key("b")));
        store.apply(SourceEvent::Delete(SnapshotKind::Service, key("gone")));
        assert_eq!(changed(&mut store), ["a", "b", "c"]);
        assert_eq!(names(&store), ["a", "c"]);
        assert!(!store.has_changes());
    }

    #[test]
    fn objects_without_resource_version_compare_by_content() {
        let mut store = synced_with(vec![service("a", None, "10.96.0.1")]);
        store.apply(service("a", None, "10.96.0.1"));
        assert!(!store.has_changes());
        store.apply(service("a", None, "10.96.0.2"));
        assert_eq!(changed(&mut store), ["a"]);
    }

    #[test]
    fn a_relist_is_invisible_until_done_and_names_only_what_differs() {
        let mut store = synced_with(vec![
            service("a", Some("1"), "10.96.0.1"),
            service("b", Some("2"), "10.96.0.2"),
            service("c", Some("3"), "10.96.0.3"),
        ]);
        let a_before = Arc::clone(&store.snapshot().services[&key("a")]);
        store.apply(SourceEvent::RelistStart(SnapshotKind::Service));
        store.apply(service("a", Some("1"), "10.96.0.1"));
        store.apply(service("b", Some("5"), "10.96.0.7"));
        store.apply(service("d", Some("6"), "10.96.0.4"));
        assert_eq!(names(&store), ["a", "b", "c"], "half a list is not visible");
        assert!(!store.has_changes());
        store.apply(SourceEvent::RelistDone(SnapshotKind::Service));
        assert_eq!(names(&store), ["a", "b", "d"]);
        // a: same version (its Arc is kept); b: new version; c: gone; d: new.
        assert_eq!(changed(&mut store), ["b", "c", "d"]);
        assert!(Arc::ptr_eq(
            &a_before,
            &store.snapshot().services[&key("a")]
        ));
    }

    #[test]
    fn a_restarted_relist_drops_what_the_abandoned_one_listed() {
        let mut store = synced_with(vec![service("a", Some("1"), "10.96.0.1")]);
        store.apply(SourceEvent::RelistStart(SnapshotKind::Service));
        store.apply(service("x", Some("2"), "10.96.0.2"));
        store.apply(SourceEvent::RelistStart(SnapshotKind::Service));
        store.apply(service("a", Some("1"), "10.96.0.1"));
        store.apply(SourceEvent::RelistDone(SnapshotKind::Service));
        assert_eq!(names(&store), ["a"]);
        assert!(!store.has_changes(), "identical relist");
    }

    #[test]
    fn a_relist_of_one_kind_leaves_the_others_alone() {
        let mut store = synced_with(vec![service("a", Some("1"), "10.96.0.1")]);
        store.apply(SourceEvent::RelistStart(SnapshotKind::EndpointSlice));
        store.apply(service("b", Some("2"), "10.96.0.2"));
        assert_eq!(
            changed(&mut store),
            ["b"],
            "Services are not being relisted"
        );
        store.apply(SourceEvent::RelistDone(SnapshotKind::EndpointSlice));
        assert!(!store.has_changes());
        assert_eq!(names(&store), ["a", "b"]);
    }
}

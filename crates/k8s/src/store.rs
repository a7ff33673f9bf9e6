//! Decoding watched objects, and the in-memory store of the one kind the source keeps itself
//! (Secrets, one store per watch, see `secrets`), fed by `kube::runtime::watcher` events.
//!
//! Objects arrive as [`DynamicObject`]s and are decoded into their typed form one by one, so a
//! single malformed object is logged (naming it) and skipped instead of failing a whole list.
//! A relist (`Init` .. `InitApply`* .. `InitDone`) is buffered and swapped in at `InitDone`:
//! objects deleted while the watch was down disappear, and readers never see a half-listed or
//! empty store in between.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::Resource;
use kube::api::DynamicObject;
use kube::runtime::watcher::Event;
use serde::de::DeserializeOwned;
use sluice_model::compact::LAST_APPLIED_ANNOTATION;
use sluice_model::{Compact, ObjectKey, SnapshotKind};
use tracing::{debug, warn};

#[derive(Debug)]
pub(crate) struct Store<K> {
    kind: SnapshotKind,
    live: BTreeMap<ObjectKey, Arc<K>>,
    /// `Some` while a (re)list is in progress.
    buffer: Option<BTreeMap<ObjectKey, Arc<K>>>,
    synced: bool,
}

impl<K> Store<K>
where
    K: Resource + DeserializeOwned + Compact,
{
    pub(crate) fn new(kind: SnapshotKind) -> Self {
        Self {
            kind,
            live: BTreeMap::new(),
            buffer: None,
            synced: false,
        }
    }

    /// Whether the first complete list has been applied.
    pub(crate) fn synced(&self) -> bool {
        self.synced
    }

    pub(crate) fn live(&self) -> &BTreeMap<ObjectKey, Arc<K>> {
        &self.live
    }

    pub(crate) fn live_mut(&mut self) -> &mut BTreeMap<ObjectKey, Arc<K>> {
        &mut self.live
    }

    /// Applies one watcher event. `prepare` may trim a decoded object before it is stored.
    /// Returns whether the live contents changed.
    pub(crate) fn apply(
        &mut self,
        event: Event<DynamicObject>,
        mut prepare: impl FnMut(&ObjectKey, &mut K),
    ) -> bool {
        match event {
            Event::Init => {
                debug!(kind = self.kind.kind_name(), "relist started");
                self.buffer = Some(BTreeMap::new());
                false
            }
            Event::InitApply(obj) => {
                let Some((key, mut obj)) = decode::<K>(self.kind, obj) else {
                    return false;
                };
                prepare(&key, &mut obj);
                // InitApply without Init does not happen with kube's watcher; be lenient anyway.
                self.buffer
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key, Arc::new(obj));
                false
            }
            Event::InitDone => {
                let mut listed = self.buffer.take().unwrap_or_default();
                let mut changed = !self.synced || listed.len() != self.live.len();
                // Unchanged objects keep their Arc, so consumers can skip them by pointer.
                for (key, obj) in &mut listed {
                    match self.live.get(key) {
                        Some(old) if same_version(old.as_ref(), obj.as_ref()) => {
                            *obj = Arc::clone(old);
                        }
                        _ => changed = true,
                    }
                }
                debug!(
                    kind = self.kind.kind_name(),
                    objects = listed.len(),
                    changed,
                    "list complete"
                );
                self.live = listed;
                self.synced = true;
                changed
            }
            Event::Apply(obj) => {
                let Some((key, mut obj)) = decode::<K>(self.kind, obj) else {
                    return false;
                };
                prepare(&key, &mut obj);
                if self
                    .live
                    .get(&key)
                    .is_some_and(|old| same_version(old.as_ref(), &obj))
                {
                    return false;
                }
                self.live.insert(key, Arc::new(obj));
                true
            }
            Event::Delete(obj) => match ObjectKey::of(&obj.metadata) {
                Some(key) => self.live.remove(&key).is_some(),
                None => false,
            },
        }
    }
}

/// Decodes one object into its typed form, without what sluice never reads ([`Compact`]);
/// logs and returns `None` for a malformed one. A malformed update therefore keeps the last
/// good version of that object.
pub(crate) fn decode<K: DeserializeOwned + Compact>(
    kind: SnapshotKind,
    mut obj: DynamicObject,
) -> Option<(ObjectKey, K)> {
    let Some(key) = ObjectKey::of(&obj.metadata) else {
        warn!(
            kind = kind.kind_name(),
            "object without metadata.name skipped"
        );
        return None;
    };
    obj.metadata.managed_fields = None;
    if let Some(annotations) = obj.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
    let decoded = serde_json::to_value(obj).and_then(serde_json::from_value::<K>);
    match decoded {
        Ok(mut typed) => {
            typed.compact();
            Some((key, typed))
        }
        Err(error) => {
            warn!(
                kind = kind.kind_name(),
                object = %key,
                %error,
                "malformed object skipped (a previous version, if any, is kept)"
            );
            None
        }
    }
}

/// Same object version: equal `resourceVersion` (and equal sluice-internal markers, which
/// live in annotations). Objects without a resourceVersion are never considered equal.
fn same_version<K: Resource>(a: &K, b: &K) -> bool {
    let (a, b) = (a.meta(), b.meta());
    a.resource_version.is_some()
        && a.resource_version == b.resource_version
        && a.annotations == b.annotations
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use serde_json::json;

    fn svc(name: &str, rv: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"namespace": "default", "name": name, "resourceVersion": rv,
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}
        }))
        .expect("valid test object")
    }

    fn names(store: &Store<Service>) -> Vec<String> {
        store.live().keys().map(ToString::to_string).collect()
    }

    fn list(store: &mut Store<Service>, objs: Vec<DynamicObject>) -> bool {
        let mut changed = store.apply(Event::Init, |_, _| {});
        for obj in objs {
            changed |= store.apply(Event::InitApply(obj), |_, _| {});
        }
        changed | store.apply(Event::InitDone, |_, _| {})
    }

    #[test]
    fn relist_replaces_atomically_and_drops_objects_deleted_meanwhile() {
        let mut store = Store::<Service>::new(SnapshotKind::Service);
        assert!(!store.synced());
        assert!(list(&mut store, vec![svc("a", "1"), svc("b", "2")]));
        assert!(store.synced());
        assert_eq!(names(&store), ["default/a", "default/b"]);

        // During a relist the old contents stay visible until InitDone.
        assert!(!store.apply(Event::Init, |_, _| {}));
        assert!(!store.apply(Event::InitApply(svc("a", "1")), |_, _| {}));
        assert_eq!(names(&store), ["default/a", "default/b"]);
        assert!(store.apply(Event::InitDone, |_, _| {}));
        assert_eq!(names(&store), ["default/a"]);
    }

    #[test]
    fn identical_relist_and_repeated_versions_are_not_changes() {
        let mut store = Store::<Service>::new(SnapshotKind::Service);
        assert!(list(&mut store, vec![svc("a", "1")]));
        let before = Arc::clone(&store.live()[&ObjectKey::new("default", "a")]);
        assert!(!list(&mut store, vec![svc("a", "1")]));
        assert!(Arc::ptr_eq(
            &before,
            &store.live()[&ObjectKey::new("default", "a")]
        ));
        assert!(!store.apply(Event::Apply(svc("a", "1")), |_, _| {}));
        assert!(store.apply(Event::Apply(svc("a", "2")), |_, _| {}));
        assert!(list(&mut store, vec![svc("a", "3")]));
        assert!(store.apply(Event::Delete(svc("a", "4")), |_, _| {}));
        assert!(!store.apply(Event::Delete(svc("a", "4")), |_, _| {}));
        assert!(names(&store).is_empty());
    }

    #[test]
    fn empty_first_list_counts_as_synced_and_changed() {
        let mut store = Store::<Service>::new(SnapshotKind::Service);
        assert!(list(&mut store, vec![]));
        assert!(store.synced());
    }

    #[test]
    fn malformed_object_is_skipped_and_previous_version_kept() {
        let mut store = Store::<Service>::new(SnapshotKind::Service);
        assert!(list(&mut store, vec![svc("a", "1")]));
        let mut bad = svc("a", "2");
        bad.data["spec"]["ports"] = json!("not-a-list");
        assert!(!store.apply(Event::Apply(bad.clone()), |_, _| {}));
        let kept = &store.live()[&ObjectKey::new("default", "a")];
        assert_eq!(kept.metadata.resource_version.as_deref(), Some("1"));

        bad.metadata.name = Some("b".into());
        assert!(!list(&mut store, vec![svc("a", "1"), bad]));
        assert_eq!(names(&store), ["default/a"]);
    }

    #[test]
    fn managed_fields_are_dropped() {
        let mut store = Store::<Service>::new(SnapshotKind::Service);
        list(&mut store, vec![svc("a", "1")]);
        let a = &store.live()[&ObjectKey::new("default", "a")];
        assert!(a.metadata.managed_fields.is_none());
        assert_eq!(
            a.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
            Some("10.96.0.10")
        );
    }
}

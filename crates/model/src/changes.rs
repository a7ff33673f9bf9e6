//! Which objects changed between two snapshots: what lets every later stage do work
//! proportional to the change instead of to the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::{ObjectKey, Snapshot, SnapshotKind};

/// Keys of added, changed or removed objects, per kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    pub services: BTreeSet<ObjectKey>,
    pub endpoint_slices: BTreeSet<ObjectKey>,
    pub nodes: BTreeSet<ObjectKey>,
    pub ingresses: BTreeSet<ObjectKey>,
    pub ingress_classes: BTreeSet<ObjectKey>,
    pub secrets: BTreeSet<ObjectKey>,
    /// Everything may have changed (first snapshot, relist): recompute all.
    pub everything: bool,
}

impl ChangeSet {
    /// "Everything changed".
    pub fn everything() -> Self {
        ChangeSet {
            everything: true,
            ..ChangeSet::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.everything && SnapshotKind::ALL.iter().all(|k| self.keys(*k).is_empty())
    }

    /// How many objects it names (0 for "everything" alone).
    pub fn len(&self) -> usize {
        SnapshotKind::ALL.iter().map(|k| self.keys(*k).len()).sum()
    }

    /// The keys of one kind.
    pub fn keys(&self, kind: SnapshotKind) -> &BTreeSet<ObjectKey> {
        match kind {
            SnapshotKind::Service => &self.services,
            SnapshotKind::EndpointSlice => &self.endpoint_slices,
            SnapshotKind::Node => &self.nodes,
            SnapshotKind::Ingress => &self.ingresses,
            SnapshotKind::IngressClass => &self.ingress_classes,
            SnapshotKind::Secret => &self.secrets,
        }
    }

    fn keys_mut(&mut self, kind: SnapshotKind) -> &mut BTreeSet<ObjectKey> {
        match kind {
            SnapshotKind::Service => &mut self.services,
            SnapshotKind::EndpointSlice => &mut self.endpoint_slices,
            SnapshotKind::Node => &mut self.nodes,
            SnapshotKind::Ingress => &mut self.ingresses,
            SnapshotKind::IngressClass => &mut self.ingress_classes,
            SnapshotKind::Secret => &mut self.secrets,
        }
    }

    /// Records one changed object.
    pub fn insert(&mut self, kind: SnapshotKind, key: ObjectKey) {
        self.keys_mut(kind).insert(key);
    }

    /// Adds everything `other` names (batching several changes into one sync).
    pub fn merge(&mut self, other: ChangeSet) {
        self.everything |= other.everything;
        for kind in SnapshotKind::ALL {
            self.keys_mut(kind).extend(other.keys(kind).iter().cloned());
        }
    }

    /// The objects that differ between two snapshots. Objects are compared by pointer first
    /// (sources keep the `Arc` of an unchanged object), then by value.
    pub fn between(before: &Snapshot, after: &Snapshot) -> ChangeSet {
        let mut changes = ChangeSet::default();
        changed_keys(&before.services, &after.services, &mut changes.services);
        changed_keys(
            &before.endpoint_slices,
            &after.endpoint_slices,
            &mut changes.endpoint_slices,
        );
        changed_keys(&before.nodes, &after.nodes, &mut changes.nodes);
        changed_keys(&before.ingresses, &after.ingresses, &mut changes.ingresses);
        changed_keys(
            &before.ingress_classes,
            &after.ingress_classes,
            &mut changes.ingress_classes,
        );
        changed_keys(&before.secrets, &after.secrets, &mut changes.secrets);
        changes
    }
}

fn changed_keys<T: PartialEq>(
    before: &BTreeMap<ObjectKey, Arc<T>>,
    after: &BTreeMap<ObjectKey, Arc<T>>,
    out: &mut BTreeSet<ObjectKey>,
) {
    for (key, new) in after {
        match before.get(key) {
            Some(old) if Arc::ptr_eq(old, new) || old == new => {}
            _ => {
                out.insert(key.clone());
            }
        }
    }
    out.extend(
        before
            .keys()
            .filter(|key| !after.contains_key(*key))
            .cloned(),
    );
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Service;

    use super::*;

    fn service(name: &str, cluster_ip: &str) -> (ObjectKey, Arc<Service>) {
        let mut svc = Service::default();
        svc.metadata.name = Some(name.into());
        svc.spec = Some(k8s_openapi::api::core::v1::ServiceSpec {
            cluster_ip: Some(cluster_ip.into()),
            ..Default::default()
        });
        (ObjectKey::new("default", name), Arc::new(svc))
    }

    #[test]
    fn between_names_added_changed_and_removed_objects_only() {
        let (ka, a) = service("a", "10.96.0.1");
        let (kb, b) = service("b", "10.96.0.2");
        let (kc, c) = service("c", "10.96.0.3");
        let mut before = Snapshot::default();
        before.services.insert(ka.clone(), Arc::clone(&a));
        before.services.insert(kb.clone(), b);
        let mut after = Snapshot::default();
        // An equal copy of `a` is no change; `b` changed, `c` added.
        after.services.insert(ka, Arc::new((*a).clone()));
        after
            .services
            .insert(kb.clone(), service("b", "10.96.0.9").1);
        after.services.insert(kc.clone(), c);
        let changes = ChangeSet::between(&before, &after);
        assert_eq!(changes.services, [kb.clone(), kc.clone()].into());
        let back = ChangeSet::between(&after, &before);
        assert_eq!(back.services, [kb, kc].into(), "c removed");
        assert!(ChangeSet::between(&after, &after).is_empty());
    }
}

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::EndpointSlice;
use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

use crate::ObjectKey;

/// Every object a source has seen, keyed by `namespace/name` (cluster-scoped objects have an
/// empty namespace). Both sources (API server and manifest directory) produce this same type.
///
/// BTreeMaps keep iteration order deterministic, which keeps computed state deterministic.
/// Objects are behind `Arc` so a new snapshot (one per sync) shares them with the source's
/// stores instead of deep-copying the cluster.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    pub endpoint_slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
    pub nodes: BTreeMap<ObjectKey, Arc<Node>>,
    pub ingresses: BTreeMap<ObjectKey, Arc<Ingress>>,
    pub ingress_classes: BTreeMap<ObjectKey, Arc<IngressClass>>,
    /// Only Secrets of type `kubernetes.io/tls` or `Opaque` that Ingresses reference
    /// ([`crate::ingress::referenced_secrets`]: `tls`, `auth-secret`, `proxy-ssl-secret`), and
    /// with the API source the pinned default certificate.
    pub secrets: BTreeMap<ObjectKey, Arc<Secret>>,
}

/// The object kinds a [`Snapshot`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SnapshotKind {
    Service,
    EndpointSlice,
    Node,
    Ingress,
    IngressClass,
    Secret,
}

impl SnapshotKind {
    pub const ALL: [SnapshotKind; 6] = [
        SnapshotKind::Service,
        SnapshotKind::EndpointSlice,
        SnapshotKind::Node,
        SnapshotKind::Ingress,
        SnapshotKind::IngressClass,
        SnapshotKind::Secret,
    ];

    /// The `kind` field of the object's manifest.
    pub fn kind_name(self) -> &'static str {
        match self {
            SnapshotKind::Service => "Service",
            SnapshotKind::EndpointSlice => "EndpointSlice",
            SnapshotKind::Node => "Node",
            SnapshotKind::Ingress => "Ingress",
            SnapshotKind::IngressClass => "IngressClass",
            SnapshotKind::Secret => "Secret",
        }
    }
}

impl Snapshot {
    /// EndpointSlices grouped by the Service they belong to (label `kubernetes.io/service-name`,
    /// same namespace), each group in key order. One pass over all slices.
    pub fn slices_by_service(&self) -> BTreeMap<ObjectKey, Vec<&Arc<EndpointSlice>>> {
        let mut by_service: BTreeMap<ObjectKey, Vec<&Arc<EndpointSlice>>> = BTreeMap::new();
        for (key, slice) in &self.endpoint_slices {
            if let Some(service) = slice_service(key, slice) {
                by_service.entry(service).or_default().push(slice);
            }
        }
        by_service
    }

    /// Whether the changed EndpointSlice `slice` may belong to one of `services`: its Service
    /// is among them, or the slice is gone (whose it was is unknown then).
    pub fn slice_may_belong_to(&self, slice: &ObjectKey, services: &BTreeSet<ObjectKey>) -> bool {
        match self.endpoint_slices.get(slice) {
            Some(object) => slice_service(slice, object).is_some_and(|s| services.contains(&s)),
            None => true,
        }
    }
}

/// The Service an EndpointSlice belongs to (label `kubernetes.io/service-name`, same
/// namespace).
pub fn slice_service(key: &ObjectKey, slice: &EndpointSlice) -> Option<ObjectKey> {
    let labels = slice.metadata.labels.as_ref()?;
    let service = labels.get(SERVICE_NAME_LABEL)?;
    Some(ObjectKey::new(key.namespace.clone(), service.clone()))
}

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

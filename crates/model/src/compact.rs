//! Compact state: what sluice never reads is dropped from objects before they are stored, so
//! memory follows what the planner, the Ingress proxy and the agent use. Both sources call
//! [`Compact::compact`] on every object they decode.
//!
//! Kept: names, namespaces, `resourceVersion`, `creationTimestamp` (conflict order), the
//! labels and annotations some reader looks at, Service spec and `status.loadBalancer`, the
//! EndpointSlice fields kube-proxy uses, Node addresses, Ingress spec and status (the status
//! writer compares it), IngressClass, Secret `type` and `data`.
//!
//! Lists are shrunk to their length: decoders grow them by doubling (a slice of 10 endpoints
//! held 16, an endpoint's one address 4), which at 100,000 endpoints is tens of MiB.
//!
//! Dropped everywhere: `managedFields`, the kubectl last-applied annotation, owner
//! references, finalizers, `generateName`, `selfLink`. Per kind: Service conditions and
//! selector (endpoints come from EndpointSlices); EndpointSlice labels other than
//! `kubernetes.io/service-name` and annotations other than the trigger time (the slice's type,
//! [`crate::EndpointSlice`], has no room for the endpoint fields nothing reads); Node spec but taints (`/healthz` reads the
//! autoscaler's), images, capacity, conditions other than `Ready` (the LoadBalancer
//! announcer's choice) and the rest of its status but addresses, labels other than the zone
//! and the exclusion from external load balancers.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::{EndpointSlice, SERVICE_NAME_LABEL};

/// Annotation kubectl writes with the whole applied object: never read, often large.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// EndpointSlice annotation with the time of the change (network programming latency).
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// Node label with the node's zone (topology-aware routing).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Node label that keeps a node from announcing LoadBalancer addresses.
pub const EXCLUDE_FROM_LB_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// Drops the fields nothing in sluice reads.
pub trait Compact {
    fn compact(&mut self);
}

fn compact_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.generate_name = None;
    meta.self_link = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
    drop_if_empty(&mut meta.annotations);
    drop_if_empty(&mut meta.labels);
}

/// Keeps only `keep` of a label or annotation map.
fn keep_only(map: &mut Option<BTreeMap<String, String>>, keep: &str) {
    if let Some(entries) = map.as_mut() {
        entries.retain(|key, _| key == keep);
    }
    drop_if_empty(map);
}

fn drop_if_empty(map: &mut Option<BTreeMap<String, String>>) {
    if map.as_ref().is_some_and(BTreeMap::is_empty) {
        *map = None;
    }
}

/// Gives back what a list holds beyond its length.
fn shrink<T>(list: &mut Option<Vec<T>>) {
    if let Some(list) = list {
        list.shrink_to_fit();
    }
}

impl Compact for Service {
    fn compact(&mut self) {
        compact_meta(&mut self.metadata);
        if let Some(spec) = self.spec.as_mut() {
            spec.selector = None;
            shrink(&mut spec.ports);
            shrink(&mut spec.cluster_ips);
            shrink(&mut spec.ip_families);
            shrink(&mut spec.external_ips);
            shrink(&mut spec.load_balancer_source_ranges);
        }
        if let Some(status) = self.status.as_mut() {
            status.conditions = None;
            if let Some(load_balancer) = status.load_balancer.as_mut() {
                shrink(&mut load_balancer.ingress);
            }
        }
    }
}

impl Compact for EndpointSlice {
    fn compact(&mut self) {
        compact_meta(&mut self.metadata);
        keep_only(&mut self.metadata.labels, SERVICE_NAME_LABEL);
        keep_only(&mut self.metadata.annotations, TRIGGER_TIME_ANNOTATION);
        shrink(&mut self.endpoints);
        for endpoint in self.endpoints.iter_mut().flatten() {
            endpoint.addresses.shrink_to_fit();
            if let Some(hints) = endpoint.hints.as_mut() {
                shrink(&mut hints.for_nodes);
                shrink(&mut hints.for_zones);
            }
        }
        shrink(&mut self.ports);
    }
}

impl Compact for Node {
    fn compact(&mut self) {
        compact_meta(&mut self.metadata);
        if let Some(labels) = self.metadata.labels.as_mut() {
            labels.retain(|key, _| key == ZONE_LABEL || key == EXCLUDE_FROM_LB_LABEL);
        }
        drop_if_empty(&mut self.metadata.labels);
        self.metadata.annotations = None;
        self.spec = self
            .spec
            .take()
            .and_then(|spec| spec.taints)
            .map(|taints| NodeSpec {
                taints: Some(taints),
                ..NodeSpec::default()
            });
        self.status = self.status.take().map(|mut status| NodeStatus {
            addresses: {
                shrink(&mut status.addresses);
                status.addresses
            },
            conditions: status
                .conditions
                .map(|c| c.into_iter().filter(|c| c.type_ == "Ready").collect()),
            ..NodeStatus::default()
        });
    }
}

impl Compact for Ingress {
    fn compact(&mut self) {
        compact_meta(&mut self.metadata);
    }
}

impl Compact for IngressClass {
    fn compact(&mut self) {
        compact_meta(&mut self.metadata);
    }
}

impl Compact for Secret {
    fn compact(&mut self) {
        compact_meta(&mut self.metadata);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_keep_what_kube_proxy_reads_and_lose_the_rest() {
        let mut slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "ns", "name": "web-abc", "resourceVersion": "7",
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {SERVICE_NAME_LABEL: "web", "endpointslice.kubernetes.io/managed-by": "x",
                           "app": "web"},
                "annotations": {TRIGGER_TIME_ANNOTATION: "2026-01-01T00:00:00Z", LAST_APPLIED_ANNOTATION: "{}"},
                "managedFields": [{"manager": "kube-controller-manager"}],
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "u"}]},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.1.2"], "conditions": {"ready": true},
                "nodeName": "node-a", "zone": "z1", "hints": {"forZones": [{"name": "z1"}]},
                "hostname": "web-1",
                "targetRef": {"kind": "Pod", "namespace": "ns", "name": "web-1", "uid": "u1"}}]
        }))
        .unwrap();
        slice.compact();
        let kept: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "ns", "name": "web-abc", "resourceVersion": "7",
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {SERVICE_NAME_LABEL: "web"},
                "annotations": {TRIGGER_TIME_ANNOTATION: "2026-01-01T00:00:00Z"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.1.2"], "conditions": {"ready": true},
                "nodeName": "node-a", "zone": "z1", "hints": {"forZones": [{"name": "z1"}]}}]
        }))
        .unwrap();
        assert_eq!(slice, kept);
    }

    #[test]
    fn lists_hold_no_spare_room() {
        let endpoint = serde_json::json!({"addresses": ["10.244.1.2"]});
        let mut slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-abc"}, "addressType": "IPv4",
            "endpoints": vec![endpoint; 10], "ports": [{"port": 8080}]
        }))
        .unwrap();
        let endpoints = slice.endpoints.as_mut().unwrap();
        endpoints.reserve(6);
        endpoints[0].addresses.reserve(3);
        slice.compact();
        let endpoints = slice.endpoints.as_ref().unwrap();
        assert_eq!(endpoints.capacity(), 10);
        assert!(endpoints.iter().all(|e| e.addresses.capacity() == 1));
    }

    #[test]
    fn services_keep_labels_annotations_and_load_balancer_status() {
        let json = |conditions: bool| {
            let mut value = serde_json::json!({
                "metadata": {"namespace": "ns", "name": "web",
                    "labels": {"service.kubernetes.io/service-proxy-name": "other"},
                    "annotations": {"service.kubernetes.io/topology-mode": "Auto"}},
                "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]},
                "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}
            });
            if conditions {
                value["metadata"]["managedFields"] = serde_json::json!([{"manager": "kubectl"}]);
                value["metadata"]["annotations"][LAST_APPLIED_ANNOTATION] = "{}".into();
                value["spec"]["selector"] = serde_json::json!({"app": "web"});
                value["status"]["conditions"] = serde_json::json!([{"type": "x", "status": "True",
                    "lastTransitionTime": "2026-01-01T00:00:00Z", "reason": "r", "message": "m"}]);
            }
            serde_json::from_value::<Service>(value).unwrap()
        };
        let mut full = json(true);
        full.compact();
        assert_eq!(full, json(false));
    }

    #[test]
    fn nodes_keep_addresses_zone_taints_and_readiness_only() {
        let taint =
            serde_json::json!({"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"});
        let ready = serde_json::json!({"type": "Ready", "status": "False"});
        let mut node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node-a", "deletionTimestamp": "2026-01-01T00:00:00Z",
                         "labels": {ZONE_LABEL: "z1", "kubernetes.io/os": "linux",
                                    EXCLUDE_FROM_LB_LABEL: ""},
                         "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
            "spec": {"podCIDR": "10.244.1.0/24", "taints": [taint]},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.11"}],
                       "conditions": [ready, {"type": "MemoryPressure", "status": "False"}],
                       "images": [{"names": ["registry/image:1"], "sizeBytes": 1}]}
        }))
        .unwrap();
        node.compact();
        let kept: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node-a", "deletionTimestamp": "2026-01-01T00:00:00Z",
                         "labels": {ZONE_LABEL: "z1", EXCLUDE_FROM_LB_LABEL: ""}},
            "spec": {"taints": [taint]},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.11"}],
                       "conditions": [ready]}
        }))
        .unwrap();
        assert_eq!(node, kept);
    }
}

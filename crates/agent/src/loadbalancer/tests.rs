//! Shared builders for the loadbalancer module's unit tests.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use serde_json::{Value, json};
use sluice_lbipam::{
    Allocation, AllocatorConfig, IpBlock, LbService, LoadBalancerIPPool, LoadBalancerIPPoolSpec,
    allocate,
};
use sluice_model::EndpointSlice;
use sluice_model::{ObjectKey, Snapshot};

pub fn pool(name: &str, cidr: &str, l2: bool) -> LoadBalancerIPPool {
    let mut pool = LoadBalancerIPPool::new(
        name,
        LoadBalancerIPPoolSpec {
            blocks: vec![IpBlock::cidr(cidr)],
            l2_announce: l2,
            ..LoadBalancerIPPoolSpec::default()
        },
    );
    pool.metadata.uid = Some(format!("uid-{name}"));
    pool.metadata.resource_version = Some("1".into());
    pool
}

/// A LoadBalancer Service `default/NAME` (IPv4, TCP 80) with these status IPs.
pub fn lb_service(name: &str, status: &[&str], local: bool) -> Service {
    let ingress: Vec<Value> = status.iter().map(|ip| json!({"ip": ip})).collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": name, "uid": format!("uid-{name}"),
                     "resourceVersion": "7"},
        "spec": {"type": "LoadBalancer", "ipFamilies": ["IPv4"],
                 "externalTrafficPolicy": if local { "Local" } else { "Cluster" },
                 "ports": [{"port": 80, "protocol": "TCP"}]},
        "status": {"loadBalancer": {"ingress": ingress}},
    }))
    .expect("valid service")
}

/// An EndpointSlice of `default/SERVICE` with one endpoint per `(node, ready)`.
pub fn slice(service: &str, endpoints: &[(&str, bool)]) -> EndpointSlice {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .enumerate()
        .map(|(i, (node, ready))| {
            json!({"addresses": [format!("10.244.0.{}", i + 2)], "nodeName": node,
                   "conditions": {"ready": ready}})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": format!("{service}-abc"),
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "endpoints": endpoints,
    }))
    .expect("valid slice")
}

/// A Node; `ready`: `None` = no Ready condition at all.
pub fn node(name: &str, ready: Option<bool>, address: &str) -> Node {
    let conditions: Vec<Value> = ready
        .map(|r| json!({"type": "Ready", "status": if r { "True" } else { "False" }}))
        .into_iter()
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "status": {"conditions": conditions,
                   "addresses": [{"type": "InternalIP", "address": address},
                                 {"type": "Hostname", "address": name}]},
    }))
    .expect("valid node")
}

pub fn snapshot(services: Vec<Service>, slices: Vec<EndpointSlice>, nodes: Vec<Node>) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for s in services {
        let key = ObjectKey::of(&s.metadata).expect("named");
        snapshot.services.insert(key, Arc::new(s));
    }
    for s in slices {
        let key = ObjectKey::of(&s.metadata).expect("named");
        snapshot.endpoint_slices.insert(key, Arc::new(s));
    }
    for n in nodes {
        let key = ObjectKey::of(&n.metadata).expect("named");
        snapshot.nodes.insert(key, Arc::new(n));
    }
    snapshot
}

pub fn allocation(pools: &[LoadBalancerIPPool], snapshot: &Snapshot) -> Allocation {
    let services: Vec<LbService> = snapshot
        .services
        .values()
        .filter_map(|s| LbService::from_service(s))
        .collect();
    allocate(pools, &services, &AllocatorConfig::default())
}

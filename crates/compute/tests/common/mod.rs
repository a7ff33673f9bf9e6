//! Small builders for the table and property tests: Kubernetes objects from `json!`.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};
use sluice_compute::{ComputeConfig, Computed, compute};
use sluice_model::{NodeInfo, ObjectKey, Protocol, ServicePortName, ServicePortState, Snapshot};

pub const NODE: &str = "node-a";
pub const ZONE: &str = "zone-a";

/// Our node: `node-a` in `zone-a` with one address.
pub fn node() -> NodeInfo {
    NodeInfo {
        name: NODE.into(),
        zone: Some(ZONE.into()),
        addresses: vec![ip("192.168.0.10")],
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

pub fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| ip(s)).collect()
}

/// Service `default/<name>` with the given spec (`clusterIP` 10.96.0.1 and one TCP port 80
/// unless the spec says otherwise).
pub fn service(name: &str, spec: Value) -> Service {
    service_full(json!({ "metadata": { "namespace": "default", "name": name }, "spec": spec }))
}

/// Service from a complete object, with the default clusterIP/ports filled in when absent.
pub fn service_full(mut object: Value) -> Service {
    let spec = object
        .as_object_mut()
        .expect("object")
        .entry("spec")
        .or_insert(json!({}));
    let spec = spec.as_object_mut().expect("spec object");
    if !spec.contains_key("clusterIP") && !spec.contains_key("clusterIPs") {
        spec.insert("clusterIP".into(), json!("10.96.0.1"));
    }
    spec.entry("ports").or_insert(json!([{ "port": 80 }]));
    serde_json::from_value(object).expect("valid Service JSON")
}

/// EndpointSlice `default/<name>` of service `default/<service>`.
pub fn slice(
    name: &str,
    service: &str,
    address_type: &str,
    ports: Value,
    endpoints: Value,
) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {
            "namespace": "default",
            "name": name,
            "labels": { "kubernetes.io/service-name": service },
        },
        "addressType": address_type,
        "ports": ports,
        "endpoints": endpoints,
    }))
    .expect("valid EndpointSlice JSON")
}

/// IPv4 slice with one unnamed TCP port.
pub fn slice4(name: &str, service: &str, port: u16, endpoints: Value) -> EndpointSlice {
    slice(name, service, "IPv4", json!([{ "port": port }]), endpoints)
}

/// A ready endpoint on `node` (all conditions unset).
pub fn ep(ip: &str, node: &str) -> Value {
    json!({ "addresses": [ip], "nodeName": node })
}

/// An endpoint with explicit conditions (`None` = unset).
pub fn ep_cond(
    ip: &str,
    node: &str,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
) -> Value {
    let mut conditions = serde_json::Map::new();
    for (key, value) in [
        ("ready", ready),
        ("serving", serving),
        ("terminating", terminating),
    ] {
        if let Some(v) = value {
            conditions.insert(key.into(), json!(v));
        }
    }
    json!({ "addresses": [ip], "nodeName": node, "conditions": conditions })
}

pub fn snapshot(services: Vec<Service>, slices: Vec<EndpointSlice>) -> Snapshot {
    let mut snap = Snapshot::default();
    for s in services {
        let key = ObjectKey::of(&s.metadata).expect("named");
        snap.services.insert(key, Arc::new(s));
    }
    for s in slices {
        let key = ObjectKey::of(&s.metadata).expect("named");
        snap.endpoint_slices.insert(key, Arc::new(s));
    }
    snap
}

pub fn run(services: Vec<Service>, slices: Vec<EndpointSlice>) -> Computed {
    compute(
        &snapshot(services, slices),
        &node(),
        &ComputeConfig::default(),
    )
}

pub fn port_name(name: &str, port_name: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName {
        namespace: "default".into(),
        name: name.into(),
        port_name: port_name.into(),
        protocol,
    }
}

/// The state of `default/<name>` unnamed TCP port; panics naming the case if absent.
pub fn tcp_port<'a>(computed: &'a Computed, name: &str, case: &str) -> &'a ServicePortState {
    computed
        .state
        .services
        .get(&port_name(name, "", Protocol::Tcp))
        .unwrap_or_else(|| {
            panic!(
                "{case}: no state for default/{name}/tcp in {:#?}",
                computed.state
            )
        })
}

/// Endpoint addresses as `ip:port` strings, for compact assertions.
pub fn addrs(endpoints: &[sluice_model::Endpoint]) -> Vec<String> {
    endpoints
        .iter()
        .map(|e| std::net::SocketAddr::new(e.ip, e.port).to_string())
        .collect()
}

/// Whether some warning names `object` and its message contains `needle`.
pub fn has_warning(computed: &Computed, object: &str, needle: &str) -> bool {
    computed
        .warnings
        .iter()
        .any(|w| w.object == object && w.message.contains(needle))
}

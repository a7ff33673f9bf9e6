//! Small builders for the table and property tests: Kubernetes objects from `json!`, and
//! accessors that read the plan the way a user thinks of it ("what happens to a connection from
//! a pod to 10.96.0.1:80/tcp").
#![allow(dead_code)] // each test binary uses a different subset

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use serde_json::{Value, json};
use sluice_compute::{ComputeConfig, Computed, compute};
use sluice_model::EndpointSlice;
use sluice_model::{NodeInfo, ObjectKey, Snapshot};
use sluice_plan::{
    Backend, FrontendKind, FrontendPlan, Protocol, Route, ServicePlan, ServicePortName, SetName,
    SourceClass,
};

pub const NODE: &str = "node-a";
pub const ZONE: &str = "zone-a";

/// Forward to the Cluster set, source kept.
pub const FWD_C: Route = Route::Forward {
    set: SetName::Cluster,
    masquerade: false,
};
/// Forward to the Cluster set, source masqueraded.
pub const MASQ_C: Route = Route::Forward {
    set: SetName::Cluster,
    masquerade: true,
};
/// Forward to the Local set, source kept.
pub const FWD_L: Route = Route::Forward {
    set: SetName::Local,
    masquerade: false,
};
/// Forward to the Local set, source masqueraded.
pub const MASQ_L: Route = Route::Forward {
    set: SetName::Local,
    masquerade: true,
};
pub const REJECT: Route = Route::Reject;
pub const DROP: Route = Route::Drop;

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

pub fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().expect("test CIDR")).collect()
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

/// A LoadBalancer `default/<name>` with `spec` (type filled in) and these status IPs.
pub fn load_balancer(name: &str, mut spec: Value, ingress_ips: &[&str]) -> Service {
    spec["type"] = json!("LoadBalancer");
    let ingress: Vec<Value> = ingress_ips.iter().map(|ip| json!({ "ip": ip })).collect();
    service_full(json!({
        "metadata": { "namespace": "default", "name": name },
        "spec": spec,
        "status": { "loadBalancer": { "ingress": ingress } },
    }))
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

/// IPv6 slice with one unnamed TCP port.
pub fn slice6(name: &str, service: &str, port: u16, endpoints: Value) -> EndpointSlice {
    slice(name, service, "IPv6", json!([{ "port": port }]), endpoints)
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

/// A terminating endpoint that still serves (used only as a fallback).
pub fn terminating(ip: &str, node: &str) -> Value {
    ep_cond(ip, node, Some(false), Some(true), Some(true))
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
    run_with(&ComputeConfig::default(), services, slices)
}

pub fn run_with(
    config: &ComputeConfig,
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
) -> Computed {
    compute(&snapshot(services, slices), &node(), config)
}

/// A config that knows the pod CIDRs (`--cluster-cidr`), so pods are told apart.
pub fn pods_known() -> ComputeConfig {
    ComputeConfig {
        cluster_cidrs: nets(&["10.244.0.0/16", "fd00:10:244::/56"]),
        ..ComputeConfig::default()
    }
}

pub fn port_name(name: &str, port_name: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName::new("default", name, port_name, protocol)
}

/// The plan of port `port` (name, protocol) of `default/<name>`; panics naming the case.
pub fn port_plan<'a>(
    computed: &'a Computed,
    name: &str,
    port: &str,
    protocol: Protocol,
    case: &str,
) -> &'a ServicePlan {
    computed
        .plan
        .services
        .get(&port_name(name, port, protocol))
        .unwrap_or_else(|| {
            panic!(
                "{case}: no plan for default/{name}:{port}/{protocol} in\n{}",
                computed.plan
            )
        })
}

/// The plan of the unnamed TCP port of `default/<name>`; panics naming the case if absent.
pub fn tcp_port<'a>(computed: &'a Computed, name: &str, case: &str) -> &'a ServicePlan {
    port_plan(computed, name, "", Protocol::Tcp, case)
}

/// The frontend written as in the plan text (`10.96.0.1:80/tcp`, `nodeports-v4:30080/tcp`,
/// `[fd00::1]:80/tcp`) of a service port plan.
pub fn frontend<'a>(plan: &'a ServicePlan, key: &str, case: &str) -> &'a FrontendPlan {
    plan.frontends
        .iter()
        .find(|f| f.key.to_string() == key)
        .unwrap_or_else(|| panic!("{case}: no frontend {key} in\n{plan}"))
}

/// The route of one source class to one frontend of the unnamed TCP port of `default/<name>`.
pub fn route(computed: &Computed, name: &str, key: &str, class: SourceClass) -> Route {
    frontend(tcp_port(computed, name, key), key, key).route(class)
}

/// The routes `[pods, node, outside]` of a frontend.
pub fn routes(frontend: &FrontendPlan) -> [Route; 3] {
    SourceClass::ALL.map(|class| frontend.route(class))
}

/// Every frontend of a service port as `key kind` strings, in plan order.
pub fn frontend_list(plan: &ServicePlan) -> Vec<String> {
    plan.frontends
        .iter()
        .map(|f| format!("{} {}", f.key, f.kind.as_str()))
        .collect()
}

/// The frontends of one kind as keys (`10.96.0.1:80/tcp`).
pub fn frontends_of(plan: &ServicePlan, kind: FrontendKind) -> Vec<String> {
    plan.frontends
        .iter()
        .filter(|f| f.kind == kind)
        .map(|f| f.key.to_string())
        .collect()
}

/// Backends as `ip:port` strings, for compact assertions.
pub fn addrs(backends: &[Backend]) -> Vec<String> {
    backends.iter().map(ToString::to_string).collect()
}

/// Whether some warning names `object` and its message contains `needle`.
pub fn has_warning(computed: &Computed, object: &str, needle: &str) -> bool {
    computed
        .warnings
        .iter()
        .any(|w| w.object == object && w.message.contains(needle))
}

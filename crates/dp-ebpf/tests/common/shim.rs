//! A test-side description of a cluster in the shape the backend tests were written in
//! (service ports with their endpoints), turned into Kubernetes objects and planned by
//! `sluice-compute` — the backend only ever sees the plan, as in the agent.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use serde_json::{Value, json};
use sluice_compute::ComputeConfig;
use sluice_model::EndpointSlice;
use sluice_model::{NodeInfo, ObjectKey, Snapshot};
use sluice_plan::{Plan, Protocol, ServicePortName};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// An endpoint; `is_local` puts it on this node (`node-a`), else on `node-b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub is_local: bool,
}

/// One single-port Service.
#[derive(Debug, Clone, Default)]
pub struct ServicePortState {
    pub port: u16,
    pub cluster_ips: Vec<IpAddr>,
    pub node_port: Option<u16>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    pub load_balancer_source_ranges: Vec<IpNet>,
    pub external_traffic_policy: TrafficPolicy,
    pub internal_traffic_policy: TrafficPolicy,
    pub session_affinity_timeout: Option<u32>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, Default)]
pub struct DesiredState {
    pub services: BTreeMap<ServicePortName, ServicePortState>,
    /// This node's addresses (all of them serve NodePorts).
    pub node_port_addresses: Vec<IpAddr>,
    pub cluster_cidrs: Vec<IpNet>,
}

fn policy(p: TrafficPolicy) -> &'static str {
    match p {
        TrafficPolicy::Cluster => "Cluster",
        TrafficPolicy::Local => "Local",
    }
}

fn k8s_protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

fn service_object(name: &ServicePortName, s: &ServicePortState) -> Service {
    let is_lb = !s.load_balancer_ips.is_empty() || !s.load_balancer_source_ranges.is_empty();
    let kind = if is_lb {
        "LoadBalancer"
    } else if s.node_port.is_some() {
        "NodePort"
    } else {
        "ClusterIP"
    };
    let mut port = json!({ "port": s.port, "protocol": k8s_protocol(name.protocol) });
    if let Some(np) = s.node_port {
        port["nodePort"] = json!(np);
    }
    let mut spec = json!({
        "type": kind,
        "clusterIPs": s.cluster_ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "ports": [port],
        "externalIPs": s.external_ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "internalTrafficPolicy": policy(s.internal_traffic_policy),
    });
    if kind != "ClusterIP" || !s.external_ips.is_empty() {
        spec["externalTrafficPolicy"] = json!(policy(s.external_traffic_policy));
    }
    if is_lb {
        spec["loadBalancerSourceRanges"] = json!(
            s.load_balancer_source_ranges
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        );
        if s.external_traffic_policy == TrafficPolicy::Local {
            spec["healthCheckNodePort"] = json!(32000);
        }
    }
    if let Some(timeout) = s.session_affinity_timeout {
        spec["sessionAffinity"] = json!("ClientIP");
        spec["sessionAffinityConfig"] = json!({ "clientIP": { "timeoutSeconds": timeout } });
    }
    let ingress: Vec<Value> = s
        .load_balancer_ips
        .iter()
        .map(|ip| json!({ "ip": ip.to_string() }))
        .collect();
    serde_json::from_value(json!({
        "metadata": { "namespace": name.namespace(), "name": name.name(),
                      "creationTimestamp": "2026-01-01T00:00:00Z" },
        "spec": spec,
        "status": { "loadBalancer": { "ingress": ingress } },
    }))
    .expect("valid Service")
}

/// One slice per (family, target port).
fn slice_objects(name: &ServicePortName, s: &ServicePortState) -> Vec<(ObjectKey, EndpointSlice)> {
    let mut groups: BTreeMap<(bool, u16), Vec<&Endpoint>> = BTreeMap::new();
    for ep in &s.endpoints {
        groups
            .entry((ep.ip.is_ipv4(), ep.port))
            .or_default()
            .push(ep);
    }
    groups
        .into_iter()
        .map(|((v4, port), eps)| {
            let slice_name = format!("{}-{}-{port}", name.name(), if v4 { 4 } else { 6 });
            let endpoints: Vec<Value> = eps
                .iter()
                .map(|e| {
                    json!({
                        "addresses": [e.ip.to_string()],
                        "nodeName": if e.is_local { "node-a" } else { "node-b" },
                    })
                })
                .collect();
            let slice: EndpointSlice = serde_json::from_value(json!({
                "metadata": { "namespace": name.namespace(), "name": slice_name,
                              "labels": { "kubernetes.io/service-name": name.name() } },
                "addressType": if v4 { "IPv4" } else { "IPv6" },
                "ports": [{ "port": port, "protocol": k8s_protocol(name.protocol) }],
                "endpoints": endpoints,
            }))
            .expect("valid EndpointSlice");
            (ObjectKey::new(name.namespace(), slice_name), slice)
        })
        .collect()
}

impl DesiredState {
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot::default();
        for (name, s) in &self.services {
            snap.services.insert(
                ObjectKey::new(name.namespace(), name.name()),
                Arc::new(service_object(name, s)),
            );
            for (key, slice) in slice_objects(name, s) {
                snap.endpoint_slices.insert(key, Arc::new(slice));
            }
        }
        snap
    }

    pub fn node(&self) -> NodeInfo {
        NodeInfo {
            name: "node-a".into(),
            zone: None,
            addresses: self.node_port_addresses.clone(),
        }
    }

    pub fn config(&self) -> ComputeConfig {
        ComputeConfig {
            cluster_cidrs: self.cluster_cidrs.clone(),
            ..ComputeConfig::default()
        }
    }

    pub fn plan(&self) -> Plan {
        sluice_compute::compute(&self.snapshot(), &self.node(), &self.config()).plan
    }
}

//! One Service → its service ports (kube-proxy's `serviceport.go` / service change tracker).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use sluice_model::{
    Endpoint, NodeInfo, ObjectKey, Protocol, ServicePortName, ServicePortState, TrafficPolicy,
};

use crate::endpoints::{self, port_number};
use crate::topology::{self, Categorized};
use crate::{Problem, Warning, sorted_unique};

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours), as the API server's.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
/// Largest valid affinity timeout (one day).
const MAX_AFFINITY_TIMEOUT: i32 = 86_400;
/// Annotation form of `spec.loadBalancerSourceRanges` (comma-separated CIDRs).
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// `spec.type`, as far as forwarding cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

/// The endpoints of one port of a Service that kube-proxy would use under the Cluster policy:
/// the ready ones (topology hints applied), else the serving+terminating ones. Unlike
/// [`compute_service`] it also serves headless Services, for consumers that send to endpoints
/// directly (the Ingress proxy). `port_name` is the Service port's name ("" when unnamed).
/// Problems with the slices are appended to `warnings`.
pub fn port_endpoints(
    service: &Service,
    port_name: &str,
    protocol: Protocol,
    slices: &[&Arc<EndpointSlice>],
    node: &NodeInfo,
    warnings: &mut Vec<Warning>,
) -> Vec<Endpoint> {
    let candidates = endpoints::collect(slices, &node.name, warnings);
    candidates
        .get(&(port_name.to_owned(), protocol))
        .map(|list| topology::categorize(list, topology::topology_requested(service), node).cluster)
        .unwrap_or_default()
}

/// One Service's ports (lets a caller recompute only changed services).
///
/// `slices` are the EndpointSlices labelled with this service's name in its namespace.
/// Returns nothing for ExternalName and headless services and services without a cluster
/// IP. Problems are appended to `warnings`; only the bad part is skipped.
pub fn compute_service(
    key: &ObjectKey,
    service: &Service,
    slices: &[&Arc<EndpointSlice>],
    node: &NodeInfo,
    warnings: &mut Vec<Warning>,
) -> Vec<(ServicePortName, ServicePortState)> {
    let object = format!("Service {key}");
    let mut warn = |problem: Problem| warnings.push(Warning::new(&object, &problem));
    let Some(spec) = service.spec.as_ref() else {
        warn(Problem::MissingSpec);
        return Vec::new();
    };
    let kind = match spec.type_.as_deref() {
        None | Some("ClusterIP") => Kind::ClusterIp,
        Some("NodePort") => Kind::NodePort,
        Some("LoadBalancer") => Kind::LoadBalancer,
        // DNS-only: nothing to forward.
        Some("ExternalName") => return Vec::new(),
        Some(other) => {
            warn(Problem::UnknownValue {
                field: "spec.type",
                value: other.to_owned(),
                fallback: "ClusterIP",
            });
            Kind::ClusterIp
        }
    };
    let Some(cluster_ips) = cluster_ips(spec, &mut warn) else {
        return Vec::new();
    };

    let external_ips = parse_ips(
        spec.external_ips.iter().flatten().map(String::as_str),
        "spec.externalIPs[]",
        &mut warn,
    );
    let (load_balancer_ips, load_balancer_source_ranges) = if kind == Kind::LoadBalancer {
        (
            load_balancer_ips(service, &mut warn),
            source_ranges(service, spec, &mut warn),
        )
    } else {
        (Vec::new(), Vec::new())
    };

    let externally_reachable = kind != Kind::ClusterIp || !external_ips.is_empty();
    let external_traffic_policy = match policy(
        spec.external_traffic_policy.as_deref(),
        "spec.externalTrafficPolicy",
        &mut warn,
    ) {
        TrafficPolicy::Local if externally_reachable => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    };
    let internal_traffic_policy = policy(
        spec.internal_traffic_policy.as_deref(),
        "spec.internalTrafficPolicy",
        &mut warn,
    );
    let health_check_node_port =
        if kind == Kind::LoadBalancer && external_traffic_policy == TrafficPolicy::Local {
            health_check_node_port(spec, &mut warn)
        } else {
            None
        };
    let session_affinity_timeout = session_affinity(spec, &mut warn);
    let topology = topology::topology_requested(service);

    // (The closure's borrow of `warnings` ends here; the slices report their own objects.)
    let candidates = endpoints::collect(slices, &node.name, warnings);
    let mut warn = |problem: Problem| warnings.push(Warning::new(&object, &problem));

    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for port in spec.ports.iter().flatten() {
        let port_name = port.name.clone().unwrap_or_default();
        let Some(protocol) = Protocol::from_k8s(port.protocol.as_deref()) else {
            warn(Problem::UnknownProtocol {
                port_name,
                protocol: port.protocol.clone().unwrap_or_default(),
            });
            continue;
        };
        let Some(number) = port_number(port.port) else {
            warn(Problem::PortOutOfRange {
                field: "port",
                port_name,
                value: port.port,
            });
            continue;
        };
        if !seen.insert((port_name.clone(), protocol)) {
            warn(Problem::DuplicatePort {
                port_name,
                protocol: protocol.to_string(),
            });
            continue;
        }
        let node_port = match (kind, port.node_port) {
            (Kind::ClusterIp, _) | (_, None | Some(0)) => None,
            (_, Some(value)) => {
                let checked = port_number(value);
                if checked.is_none() {
                    warn(Problem::PortOutOfRange {
                        field: "nodePort",
                        port_name: port_name.clone(),
                        value,
                    });
                }
                checked
            }
        };
        let categorized = candidates
            .get(&(port_name.clone(), protocol))
            .map(|list| topology::categorize(list, topology, node))
            .unwrap_or_default();
        let Categorized {
            cluster,
            local,
            has_any,
        } = categorized;
        let name = ServicePortName {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            port_name,
            protocol,
        };
        let state = ServicePortState {
            port: number,
            cluster_ips: cluster_ips.clone(),
            node_port,
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            load_balancer_source_ranges: load_balancer_source_ranges.clone(),
            external_traffic_policy,
            internal_traffic_policy,
            session_affinity_timeout,
            health_check_node_port,
            cluster_endpoints: cluster,
            local_endpoints: local,
            has_any_endpoints: has_any,
        };
        out.push((name, state));
    }
    out
}

/// `spec.clusterIPs` (falling back to `spec.clusterIP`) in spec order (primary family
/// first); `None` when the service has no usable cluster IP (headless, unset, all invalid).
fn cluster_ips(spec: &ServiceSpec, warn: &mut impl FnMut(Problem)) -> Option<Vec<IpAddr>> {
    let raw: Vec<&str> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    match raw.first() {
        // Headless or not (yet) allocated: nothing to forward, not an error.
        None | Some(&"" | &"None") => return None,
        Some(_) => {}
    }
    let mut ips: Vec<IpAddr> = Vec::with_capacity(raw.len());
    for value in raw {
        match value.trim().parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(source) => warn(Problem::InvalidIp {
                field: "spec.clusterIPs[]",
                value: value.to_owned(),
                source,
            }),
        }
    }
    if ips.is_empty() {
        warn(Problem::NoClusterIp);
        return None;
    }
    Some(ips)
}

/// Parses `values`, warning about and skipping bad ones. Unordered input: sorted and unique.
fn parse_ips<'a>(
    values: impl Iterator<Item = &'a str>,
    field: &'static str,
    warn: &mut impl FnMut(Problem),
) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for value in values {
        match value.trim().parse::<IpAddr>() {
            Ok(ip) => out.push(ip),
            Err(source) => warn(Problem::InvalidIp {
                field,
                value: value.to_owned(),
                source,
            }),
        }
    }
    sorted_unique(out)
}

/// `status.loadBalancer.ingress[].ip`, except `ipMode: Proxy` entries (the load balancer
/// proxies those itself, so the node must not capture the address).
fn load_balancer_ips(service: &Service, warn: &mut impl FnMut(Problem)) -> Vec<IpAddr> {
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    let ips = ingress
        .iter()
        .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|i| i.ip.as_deref())
        .filter(|ip| !ip.is_empty());
    parse_ips(ips, "status.loadBalancer.ingress[].ip", warn)
}

/// `spec.loadBalancerSourceRanges`, or else the annotation; normalised to network
/// addresses (as Go's `ParseCIDR`), sorted, unique.
fn source_ranges(
    service: &Service,
    spec: &ServiceSpec,
    warn: &mut impl FnMut(Problem),
) -> Vec<IpNet> {
    let (field, raw): (&'static str, Vec<&str>) = match spec.load_balancer_source_ranges.as_deref()
    {
        Some(ranges) if !ranges.is_empty() => (
            "spec.loadBalancerSourceRanges[]",
            ranges.iter().map(String::as_str).collect(),
        ),
        _ => (
            SOURCE_RANGES_ANNOTATION,
            service
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(SOURCE_RANGES_ANNOTATION))
                .map(|v| v.split(',').collect())
                .unwrap_or_default(),
        ),
    };
    let mut out = Vec::new();
    for value in raw {
        let trimmed = value.trim();
        if trimmed.is_empty() {
            continue;
        }
        match trimmed.parse::<IpNet>() {
            Ok(net) => out.push(net.trunc()),
            Err(source) => warn(Problem::InvalidCidr {
                field,
                value: value.to_owned(),
                source,
            }),
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn policy(
    value: Option<&str>,
    field: &'static str,
    warn: &mut impl FnMut(Problem),
) -> TrafficPolicy {
    match value {
        None | Some("Cluster") => TrafficPolicy::Cluster,
        Some("Local") => TrafficPolicy::Local,
        Some(other) => {
            warn(Problem::UnknownValue {
                field,
                value: other.to_owned(),
                fallback: "Cluster",
            });
            TrafficPolicy::Cluster
        }
    }
}

fn health_check_node_port(spec: &ServiceSpec, warn: &mut impl FnMut(Problem)) -> Option<u16> {
    match spec.health_check_node_port {
        None | Some(0) => {
            warn(Problem::MissingHealthCheckNodePort);
            None
        }
        Some(value) => {
            let port = port_number(value);
            if port.is_none() {
                warn(Problem::PortOutOfRange {
                    field: "healthCheckNodePort",
                    port_name: String::new(),
                    value,
                });
            }
            port
        }
    }
}

/// `sessionAffinity: ClientIP` → its timeout in seconds.
fn session_affinity(spec: &ServiceSpec, warn: &mut impl FnMut(Problem)) -> Option<u32> {
    match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let configured = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match configured {
                None => Some(DEFAULT_AFFINITY_TIMEOUT),
                Some(value @ 1..=MAX_AFFINITY_TIMEOUT) => u32::try_from(value).ok(),
                Some(value) => {
                    warn(Problem::AffinityTimeoutOutOfRange {
                        value,
                        fallback: DEFAULT_AFFINITY_TIMEOUT,
                    });
                    Some(DEFAULT_AFFINITY_TIMEOUT)
                }
            }
        }
        Some(other) => {
            warn(Problem::UnknownValue {
                field: "spec.sessionAffinity",
                value: other.to_owned(),
                fallback: "None",
            });
            None
        }
    }
}

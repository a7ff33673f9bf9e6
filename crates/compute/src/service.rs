//! One Service (and its EndpointSlices) → what each of its ports wants: frontends, policies,
//! categorised endpoints. Conflicts with other Services are resolved later (`conflicts`),
//! routes decided last (`decide`).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sluice_model::EndpointSlice;
use sluice_model::{NodeInfo, ObjectKey};
use sluice_plan::{
    Backend, Family, FrontendAddr, FrontendKey, FrontendKind, Protocol, ServicePortName,
};

use crate::endpoints::{self, port_number};
use crate::fields::{self, TrafficPolicy};
use crate::topology::{self, Categorized};
use crate::{ComputeConfig, Problem, Warning};

/// Label naming the proxy responsible for a Service (kube-proxy skips labelled Services).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// Conflict order of a Service: older first; Services without a creation time after all that
/// have one (a manifest without it must not win every conflict); then namespace/name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Rank {
    no_timestamp: bool,
    created: Option<Time>,
    pub key: ObjectKey,
}

impl Rank {
    pub fn of(key: &ObjectKey, service: &Service) -> Rank {
        let created = service.metadata.creation_timestamp.clone();
        Rank {
            no_timestamp: created.is_none(),
            created,
            key: key.clone(),
        }
    }
}

/// What one Service wants, before conflicts with other Services are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceIntent {
    pub rank: Rank,
    pub ports: Vec<PortIntent>,
    /// `healthCheckNodePort` of a LoadBalancer with eTP=Local, and the ready local endpoints
    /// it reports ([`health_check_count`]).
    pub health_check: Option<(u16, usize)>,
}

/// What one service port wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PortIntent {
    pub name: ServicePortName,
    /// Wanted frontends, sorted by key, unique.
    pub frontends: Vec<(FrontendKey, FrontendKind)>,
    pub external_local: bool,
    pub internal_local: bool,
    pub affinity_timeout: Option<u32>,
    /// `loadBalancerSourceRanges` (LoadBalancer only), sorted, unique.
    pub source_ranges: Vec<IpNet>,
    pub endpoints: Categorized,
}

/// Service-level facts shared by all ports.
struct Common {
    kind: Kind,
    cluster_ips: Vec<IpAddr>,
    external_ips: Vec<IpAddr>,
    load_balancer_ips: Vec<IpAddr>,
    source_ranges: Vec<IpNet>,
    external_local: bool,
    internal_local: bool,
    affinity_timeout: Option<u32>,
    topology: bool,
}

/// `spec.type`, as far as forwarding cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

/// Whether this proxy handles the Service at all (`service.kubernetes.io/service-proxy-name`:
/// only Services naming us, or none, are ours).
pub(crate) fn is_ours(service: &Service, config: &ComputeConfig) -> bool {
    let label = service
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL));
    match label {
        None => true,
        Some(value) => config.service_proxy_name.as_deref() == Some(value.as_str()),
    }
}

/// Parses one Service with its slices. `None` for Services that are not forwarded at all
/// (ExternalName, headless, no cluster IP, another proxy's), with their warnings.
pub(crate) fn intent(
    key: &ObjectKey,
    service: &Service,
    slices: &[&Arc<EndpointSlice>],
    node: &NodeInfo,
    config: &ComputeConfig,
) -> (Option<ServiceIntent>, Vec<Warning>) {
    let object = format!("Service {key}");
    let mut warnings = Vec::new();
    if !is_ours(service, config) {
        return (None, warnings);
    }
    let Some(common) = common(service, &mut |p| warnings.push(Warning::new(&object, &p))) else {
        return (None, warnings);
    };
    let candidates = endpoints::collect(slices, &node.name, &mut warnings);
    let spec = service.spec.as_ref().expect("common() checked the spec");
    let health_port = health_check_port(&common, spec, &object, &mut warnings);
    let mut local_ready = BTreeSet::new();
    let mut seen = BTreeSet::new();
    // Kept for the Service's life: exactly as long as the ports (a Vec grown by `push` holds
    // room for four, 800 bytes per Service with one port).
    let mut ports = Vec::with_capacity(spec.ports.as_ref().map_or(0, Vec::len));
    for port in spec.ports.iter().flatten() {
        let mut warn = |p: Problem| warnings.push(Warning::new(&object, &p));
        let Some((name, number)) = port_identity(key, port, &mut warn) else {
            continue;
        };
        if !seen.insert((name.port_name.clone(), name.protocol)) {
            warn(Problem::DuplicatePort {
                port_name: name.port_name.to_string(),
                protocol: name.protocol.to_string(),
            });
            continue;
        }
        let node_port = node_port(&common, port, &name, config, &mut warn);
        let endpoints = candidates
            .get(&(name.port_name.to_string(), name.protocol))
            .map(|list| topology::categorize(list, common.topology, node))
            .unwrap_or_default();
        local_ready.extend(endpoints.local_ready.iter().copied());
        let frontends = frontends(&common, &name, number, node_port, node, config, &mut warn);
        ports.push(PortIntent {
            name,
            frontends,
            external_local: common.external_local,
            internal_local: common.internal_local,
            affinity_timeout: common.affinity_timeout,
            source_ranges: common.source_ranges.clone(),
            endpoints,
        });
    }
    let intent = ServiceIntent {
        rank: Rank::of(key, service),
        ports,
        health_check: health_port.map(|port| (port, health_check_count(&local_ready))),
    };
    (Some(intent), warnings)
}

/// The service-level fields; `None` when nothing of the Service is forwarded.
fn common(service: &Service, warn: &mut impl FnMut(Problem)) -> Option<Common> {
    let Some(spec) = service.spec.as_ref() else {
        warn(Problem::MissingSpec);
        return None;
    };
    let kind = match spec.type_.as_deref() {
        None | Some("ClusterIP") => Kind::ClusterIp,
        Some("NodePort") => Kind::NodePort,
        Some("LoadBalancer") => Kind::LoadBalancer,
        // DNS-only: nothing to forward.
        Some("ExternalName") => return None,
        Some(other) => {
            warn(Problem::UnknownValue {
                field: "spec.type",
                value: other.to_owned(),
                fallback: "ClusterIP",
            });
            Kind::ClusterIp
        }
    };
    let cluster_ips = fields::cluster_ips(spec, warn)?;
    let external_ips = fields::parse_ips(
        spec.external_ips.iter().flatten().map(String::as_str),
        "spec.externalIPs[]",
        warn,
    );
    let (load_balancer_ips, source_ranges) = if kind == Kind::LoadBalancer {
        (
            fields::load_balancer_ips(service, warn),
            fields::source_ranges(service, spec, warn),
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let externally_reachable = kind != Kind::ClusterIp || !external_ips.is_empty();
    let etp = fields::policy(
        spec.external_traffic_policy.as_deref(),
        "spec.externalTrafficPolicy",
        warn,
    );
    let itp = fields::policy(
        spec.internal_traffic_policy.as_deref(),
        "spec.internalTrafficPolicy",
        warn,
    );
    Some(Common {
        kind,
        cluster_ips,
        external_ips,
        load_balancer_ips,
        source_ranges,
        external_local: etp == TrafficPolicy::Local && externally_reachable,
        internal_local: itp == TrafficPolicy::Local,
        affinity_timeout: fields::session_affinity(spec, warn),
        topology: topology::topology_requested(service),
    })
}

/// What kube-proxy's health check reports: distinct addresses of ready local endpoints over
/// all ports of the service (`LocalReadyEndpoints`), per family as each family's proxier
/// counts them; the larger family, so a dual-stack pod counts once.
fn health_check_count(local_ready: &BTreeSet<IpAddr>) -> usize {
    let v4 = local_ready.iter().filter(|ip| ip.is_ipv4()).count();
    v4.max(local_ready.len() - v4)
}

fn health_check_port(
    common: &Common,
    spec: &ServiceSpec,
    object: &str,
    warnings: &mut Vec<Warning>,
) -> Option<u16> {
    if common.kind != Kind::LoadBalancer || !common.external_local {
        return None;
    }
    fields::health_check_node_port(spec, &mut |p| warnings.push(Warning::new(object, &p)))
}

/// The port's identity and number; `None` (with a warning) when unusable.
fn port_identity(
    key: &ObjectKey,
    port: &ServicePort,
    warn: &mut impl FnMut(Problem),
) -> Option<(ServicePortName, u16)> {
    let port_name = port.name.clone().unwrap_or_default();
    if !port_name.is_empty() && !is_dns_label(&port_name) {
        warn(Problem::InvalidPortName {
            port_name: port_name.escape_debug().to_string(),
        });
        return None;
    }
    let Some(protocol) = Protocol::from_k8s(port.protocol.as_deref()) else {
        warn(Problem::UnknownProtocol {
            port_name,
            protocol: port.protocol.clone().unwrap_or_default(),
        });
        return None;
    };
    let Some(number) = port_number(port.port) else {
        warn(Problem::PortOutOfRange {
            field: "port",
            port_name,
            value: port.port,
        });
        return None;
    };
    let name = ServicePortName::new(
        key.namespace.as_str(),
        key.name.as_str(),
        port_name,
        protocol,
    );
    Some((name, number))
}

/// A DNS label (RFC 1123), what the API server requires of Service and EndpointSlice port
/// names: 1–63 lower-case letters, digits and `-`, starting and ending alphanumeric.
pub(crate) fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=63).contains(&bytes.len())
        && bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
        && bytes.iter().all(|b| edge(b) || *b == b'-')
}

/// `nodePort` of a NodePort/LoadBalancer port, unless invalid or reserved for our listeners.
fn node_port(
    common: &Common,
    port: &ServicePort,
    name: &ServicePortName,
    config: &ComputeConfig,
    warn: &mut impl FnMut(Problem),
) -> Option<u16> {
    let value = match (common.kind, port.node_port) {
        (Kind::ClusterIp, _) | (_, None | Some(0)) => return None,
        (_, Some(value)) => value,
    };
    let port_name = name.port_name.to_string();
    let Some(number) = port_number(value) else {
        warn(Problem::PortOutOfRange {
            field: "nodePort",
            port_name,
            value,
        });
        return None;
    };
    if config.reserved_node_ports.contains(&number) {
        warn(Problem::NodePortReserved {
            port_name,
            port: number,
        });
        return None;
    }
    if let Some((low, high)) = config.node_port_range
        && !(low..=high).contains(&number)
    {
        warn(Problem::NodePortOutsideRange {
            port_name,
            port: number,
            low,
            high,
        });
    }
    Some(number)
}

/// Every frontend the port wants, sorted and unique (the first kind wins a duplicate, in the
/// order cluster IP, node port, external IP, LB IP).
fn frontends(
    common: &Common,
    name: &ServicePortName,
    port: u16,
    node_port: Option<u16>,
    node: &NodeInfo,
    config: &ComputeConfig,
    warn: &mut impl FnMut(Problem),
) -> Vec<(FrontendKey, FrontendKind)> {
    let protocol = name.protocol;
    let key = |addr, port| FrontendKey {
        addr,
        protocol,
        port,
    };
    let families: BTreeSet<Family> = common.cluster_ips.iter().map(Family::of).collect();
    let mut out: Vec<(FrontendKey, FrontendKind)> = Vec::new();
    for ip in &common.cluster_ips {
        out.push((key(FrontendAddr::Ip(*ip), port), FrontendKind::ClusterIp));
    }
    if let Some(node_port) = node_port {
        for family in &families {
            let addr = FrontendAddr::NodePorts(*family);
            out.push((key(addr, node_port), FrontendKind::NodePort));
        }
    }
    let extra = [
        (
            &common.external_ips,
            FrontendKind::ExternalIp,
            "spec.externalIPs[]",
        ),
        (
            &common.load_balancer_ips,
            FrontendKind::LoadBalancerIp,
            "status.loadBalancer.ingress[].ip",
        ),
    ];
    for (ips, kind, field) in extra {
        for ip in ips {
            if let Some(what) = fields::special_address(*ip) {
                warn(Problem::SpecialAddress {
                    field,
                    ip: *ip,
                    what,
                });
                continue;
            }
            if !families.contains(&Family::of(ip)) {
                warn(Problem::FamilyWithoutClusterIp { field, ip: *ip });
                continue;
            }
            if kind == FrontendKind::ExternalIp
                && !config.allow_external_ips_on_node_addresses
                && node.addresses.contains(ip)
            {
                warn(Problem::ExternalIpIsNodeAddress { ip: *ip, port });
                continue;
            }
            out.push((key(FrontendAddr::Ip(*ip), port), kind));
        }
    }
    // Stable sort keeps the first kind of a duplicated key first; dedup keeps it.
    out.sort_by_key(|(key, _)| *key);
    out.dedup_by(|later, first| later.0 == first.0);
    out
}

/// The endpoints of one port of a Service that kube-proxy would use under the Cluster policy:
/// the ready ones (topology hints applied), else the serving+terminating ones. Unlike the
/// L4 plan it also serves headless Services, for consumers that send to endpoints directly
/// (the Ingress proxy). `port_name` is the Service port's name ("" when unnamed). Problems
/// with the slices are appended to `warnings`.
pub fn port_endpoints(
    service: &Service,
    port_name: &str,
    protocol: Protocol,
    slices: &[&Arc<EndpointSlice>],
    node: &NodeInfo,
    warnings: &mut Vec<Warning>,
) -> Vec<Backend> {
    let candidates = endpoints::collect(slices, &node.name, warnings);
    candidates
        .get(&(port_name.to_owned(), protocol))
        .map(|list| topology::categorize(list, topology::topology_requested(service), node).cluster)
        .unwrap_or_default()
}

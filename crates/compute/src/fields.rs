//! Field-level parsing of a Service spec: each helper reads one field, reports problems as
//! warnings and returns what forwarding can use.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Service, ServiceSpec};

use crate::endpoints::port_number;
use crate::{Problem, sorted_unique};

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours), as the API server's.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
/// Largest valid affinity timeout (one day).
const MAX_AFFINITY_TIMEOUT: i32 = 86_400;
/// Annotation form of `spec.loadBalancerSourceRanges` (comma-separated CIDRs).
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// `Cluster` or `Local`, for both `externalTrafficPolicy` and `internalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// `spec.clusterIPs` (falling back to `spec.clusterIP`) in spec order (primary family
/// first), at most one per family as kube-proxy reads them; `None` when the service has no
/// usable cluster IP (headless, unset, all invalid). The API server refuses a `clusterIP`
/// other than `clusterIPs[0]` and two addresses of one family; manifests can hold them, so
/// both are named (and `clusterIPs` used, the first address of each family).
pub(crate) fn cluster_ips(
    spec: &ServiceSpec,
    warn: &mut impl FnMut(Problem),
) -> Option<Vec<IpAddr>> {
    let raw: Vec<&str> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    match raw.first() {
        // Headless or not (yet) allocated: nothing to forward, not an error.
        None | Some(&"" | &"None") => return None,
        Some(first) => {
            if let Some(single) = spec.cluster_ip.as_deref()
                && !single.is_empty()
                && single.trim() != first.trim()
            {
                warn(Problem::ClusterIpMismatch {
                    cluster_ip: single.to_owned(),
                    first: (*first).to_owned(),
                });
            }
        }
    }
    let mut ips: Vec<IpAddr> = Vec::with_capacity(raw.len());
    for value in raw {
        match value.trim().parse::<IpAddr>() {
            Ok(ip) if ips.contains(&ip) => {}
            Ok(ip) if ips.iter().any(|seen| seen.is_ipv4() == ip.is_ipv4()) => {
                warn(Problem::SecondClusterIpOfFamily { ip });
            }
            Ok(ip) => ips.push(ip),
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

/// What makes `ip` an address no externalIP or LoadBalancer IP may be, as the API server's
/// `ValidateNonSpecialIP` says for externalIPs (a `dir:` source has no API server, and
/// status is not held to it): captured on a node, it would take the node's own traffic
/// (loopback, `0.0.0.0`, which `connect()` takes for the local host) or traffic of its link.
/// An IPv4-mapped IPv6 address is judged as the IPv4 address.
pub(crate) fn special_address(ip: IpAddr) -> Option<&'static str> {
    let ip = ip.to_canonical();
    if ip.is_unspecified() {
        return Some("the unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address (127.0.0.0/8, ::1)");
    }
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    if link_local {
        return Some("a link-local address (169.254.0.0/16, fe80::/10)");
    }
    let link_local_multicast = match ip {
        IpAddr::V4(v4) => v4.octets()[..3] == [224, 0, 0],
        IpAddr::V6(v6) => v6.octets()[0] == 0xff && v6.octets()[1] & 0x0f == 0x02,
    };
    if link_local_multicast {
        return Some("a link-local multicast address (224.0.0.0/24, ffx2::/16)");
    }
    None
}

/// Parses `values`, warning about and skipping bad ones. Unordered input: sorted and unique.
pub(crate) fn parse_ips<'a>(
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
pub(crate) fn load_balancer_ips(service: &Service, warn: &mut impl FnMut(Problem)) -> Vec<IpAddr> {
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
pub(crate) fn source_ranges(
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

pub(crate) fn policy(
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

pub(crate) fn health_check_node_port(
    spec: &ServiceSpec,
    warn: &mut impl FnMut(Problem),
) -> Option<u16> {
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
pub(crate) fn session_affinity(spec: &ServiceSpec, warn: &mut impl FnMut(Problem)) -> Option<u32> {
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

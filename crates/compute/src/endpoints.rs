//! EndpointSlices of one service → candidate endpoints per (port name, protocol).
//!
//! Mirrors kube-proxy's endpoint slice cache: a service port gets the endpoints of every
//! slice port with the same name and protocol (this is how a named `targetPort` resolves),
//! merged across slices and de-duplicated by (ip, port).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use sluice_model::{Endpoint, EndpointSlice, Name};
use sluice_model::{ObjectKey, Protocol};

use crate::{Problem, Warning};

/// Which slice ports feed a service port: the port name (`""` when unnamed) and protocol.
pub(crate) type PortKey = (String, Protocol);

/// One endpoint of one port before categorisation, with everything categorisation needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Candidate {
    pub ip: IpAddr,
    pub port: u16,
    pub node_name: Option<Name>,
    pub is_local: bool,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// `hints.forZones[].name`, sorted.
    pub zone_hints: Vec<String>,
    /// `hints.forNodes[].name`, sorted.
    pub node_hints: Vec<String>,
}

impl Candidate {
    pub fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }

    /// Preference when the same (ip, port) appears more than once (e.g. while an endpoint
    /// moves between slices): ready beats serving-terminating beats the rest.
    fn rank(&self) -> u8 {
        if self.ready {
            0
        } else if self.serving_terminating() {
            1
        } else {
            2
        }
    }
}

/// An endpoint of a slice, before it is combined with the slice's ports.
struct SliceEndpoint {
    ip: IpAddr,
    node_name: Option<Name>,
    ready: bool,
    serving: bool,
    terminating: bool,
    zone_hints: Vec<String>,
    node_hints: Vec<String>,
}

/// Candidates of all `slices` by port key, each list sorted by (ip, port) and unique.
pub(crate) fn collect(
    slices: &[&Arc<EndpointSlice>],
    node_name: &str,
    warnings: &mut Vec<Warning>,
) -> BTreeMap<PortKey, Vec<Candidate>> {
    let mut by_port: BTreeMap<PortKey, Vec<Candidate>> = BTreeMap::new();
    for slice in slices {
        let object = match ObjectKey::of(&slice.metadata) {
            Some(key) => format!("EndpointSlice {key}"),
            None => "EndpointSlice <unnamed>".to_owned(),
        };
        let Some(endpoints) = slice_endpoints(slice, &object, warnings) else {
            continue;
        };
        for (key, port) in slice_ports(slice, &object, warnings) {
            let list = by_port.entry(key).or_default();
            list.extend(endpoints.iter().map(|ep| Candidate {
                ip: ep.ip,
                port,
                is_local: !node_name.is_empty() && ep.node_name.as_deref() == Some(node_name),
                node_name: ep.node_name.clone(),
                ready: ep.ready,
                serving: ep.serving,
                terminating: ep.terminating,
                zone_hints: ep.zone_hints.clone(),
                node_hints: ep.node_hints.clone(),
            }));
        }
    }
    for list in by_port.values_mut() {
        // Sorting on the full value first makes the survivor of a duplicate independent of
        // the input order.
        list.sort_unstable_by(|a, b| {
            (a.ip, a.port, a.rank())
                .cmp(&(b.ip, b.port, b.rank()))
                .then_with(|| a.cmp(b))
        });
        list.dedup_by(|later, first| (later.ip, later.port) == (first.ip, first.port));
    }
    by_port
}

/// The slice's usable endpoints, or `None` when the slice is to be ignored as a whole.
fn slice_endpoints(
    slice: &EndpointSlice,
    object: &str,
    warnings: &mut Vec<Warning>,
) -> Option<Vec<SliceEndpoint>> {
    let want_v4 = match slice.address_type.as_str() {
        "IPv4" => true,
        "IPv6" => false,
        // FQDN slices are for DNS-based consumers; kube-proxy ignores them too.
        "FQDN" => return None,
        other => {
            warnings.push(Warning::new(
                object,
                &Problem::UnknownAddressType {
                    value: other.to_owned(),
                },
            ));
            return None;
        }
    };
    let mut out = Vec::new();
    for (index, endpoint) in slice.endpoints.iter().flatten().enumerate() {
        let Some(ip) = endpoint_ip(slice, endpoint, index, want_v4, object, warnings) else {
            continue;
        };
        let conditions = endpoint.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
        let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
        let hints = endpoint.hints.as_ref();
        out.push(SliceEndpoint {
            ip,
            node_name: endpoint.node_name.clone(),
            ready,
            serving,
            terminating,
            zone_hints: sorted_names(
                hints
                    .and_then(|h| h.for_zones.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|z| &z.name),
            ),
            node_hints: sorted_names(
                hints
                    .and_then(|h| h.for_nodes.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|n| &n.name),
            ),
        });
    }
    Some(out)
}

/// The endpoint's address if it is usable in this slice (a warning names it otherwise). Only
/// the first address is used (kube-proxy does the same; the others are unused).
fn endpoint_ip(
    slice: &EndpointSlice,
    endpoint: &Endpoint,
    index: usize,
    want_v4: bool,
    object: &str,
    warnings: &mut Vec<Warning>,
) -> Option<IpAddr> {
    let Some(address) = endpoint.addresses.first() else {
        warnings.push(Warning::new(object, &Problem::NoAddresses { index }));
        return None;
    };
    let ip = match address.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(source) => {
            warnings.push(Warning::new(
                object,
                &Problem::InvalidIp {
                    field: "endpoints[].addresses[0]",
                    value: address.clone(),
                    source,
                },
            ));
            return None;
        }
    };
    if ip.is_ipv4() != want_v4 {
        warnings.push(Warning::new(
            object,
            &Problem::WrongFamily {
                address: ip,
                address_type: slice.address_type.clone(),
            },
        ));
        return None;
    }
    Some(ip)
}

/// Hint names, sorted and without duplicates.
fn sorted_names<'a>(names: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut names: Vec<String> = names.cloned().collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The slice's valid ports as (key, port number).
fn slice_ports(
    slice: &EndpointSlice,
    object: &str,
    warnings: &mut Vec<Warning>,
) -> Vec<(PortKey, u16)> {
    let mut out = Vec::new();
    for port in slice.ports.iter().flatten() {
        let name = port.name.clone().unwrap_or_default();
        let Some(protocol) = Protocol::from_k8s(port.protocol.as_deref()) else {
            warnings.push(Warning::new(
                object,
                &Problem::UnknownProtocol {
                    port_name: name,
                    protocol: port.protocol.clone().unwrap_or_default(),
                },
            ));
            continue;
        };
        // A nil port means "all ports" for some consumers; kube-proxy cannot use it.
        let Some(value) = port.port else { continue };
        let Some(number) = port_number(value) else {
            warnings.push(Warning::new(
                object,
                &Problem::PortOutOfRange {
                    field: "port",
                    port_name: name,
                    value,
                },
            ));
            continue;
        };
        if out.iter().any(|((n, p), _)| *n == name && *p == protocol) {
            warnings.push(Warning::new(
                object,
                &Problem::DuplicatePort {
                    port_name: name,
                    protocol: protocol.to_string(),
                },
            ));
            continue;
        }
        out.push(((name, protocol), number));
    }
    out
}

/// A valid (non-zero) port number.
pub(crate) fn port_number(value: i32) -> Option<u16> {
    u16::try_from(value).ok().filter(|p| *p != 0)
}

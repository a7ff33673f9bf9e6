//! Which UDP conntrack entries become stale when the desired state changes.
//!
//! UDP has no connection end: a client that keeps sending to a service keeps its conntrack
//! entry (and so its NAT to a dead endpoint) forever. As kube-proxy does, entries toward
//! removed endpoints are deleted, and so are entries toward frontends that had no endpoint
//! (those were created before a backend existed and would never be NATed).

use std::collections::BTreeSet;
use std::net::IpAddr;

use sluice_model::{DesiredState, Protocol, ServicePortState};

use crate::exec::ConntrackFlush;

fn endpoints(state: &ServicePortState) -> BTreeSet<(IpAddr, u16)> {
    state
        .cluster_endpoints
        .iter()
        .chain(&state.local_endpoints)
        .map(|e| (e.ip, e.port))
        .collect()
}

pub(crate) fn stale_udp_flows(
    old: Option<&DesiredState>,
    new: &DesiredState,
) -> BTreeSet<ConntrackFlush> {
    let mut flushes = BTreeSet::new();
    let Some(old) = old else { return flushes };
    for (name, before) in old
        .services
        .iter()
        .filter(|(n, _)| n.protocol == Protocol::Udp)
    {
        let after_eps = new.services.get(name).map(endpoints).unwrap_or_default();
        for (ip, port) in endpoints(before).difference(&after_eps) {
            flushes.insert(ConntrackFlush::ToEndpoint {
                ip: *ip,
                port: *port,
            });
        }
    }
    for (name, after) in new
        .services
        .iter()
        .filter(|(n, _)| n.protocol == Protocol::Udp)
    {
        let had_none = old
            .services
            .get(name)
            .is_none_or(|b| endpoints(b).is_empty());
        if had_none && !endpoints(after).is_empty() {
            let frontends = after
                .cluster_ips
                .iter()
                .chain(&after.external_ips)
                .chain(&after.load_balancer_ips);
            for ip in frontends {
                flushes.insert(ConntrackFlush::ToFrontend {
                    ip: Some(*ip),
                    port: after.port,
                });
            }
            if let Some(port) = after.node_port {
                flushes.insert(ConntrackFlush::ToFrontend { ip: None, port });
            }
        }
    }
    flushes
}

/// At the first sync after a restart there is no previous state: entries toward the UDP
/// endpoints the found ruleset still DNATed to (`restored`) but that are no longer wanted
/// went away while the agent was down, and are stale.
pub(crate) fn stale_restored_udp_flows(
    restored: &BTreeSet<(IpAddr, u16)>,
    new: &DesiredState,
) -> BTreeSet<ConntrackFlush> {
    let wanted: BTreeSet<(IpAddr, u16)> = new
        .services
        .iter()
        .filter(|(n, _)| n.protocol == Protocol::Udp)
        .flat_map(|(_, s)| endpoints(s))
        .collect();
    restored
        .difference(&wanted)
        .map(|(ip, port)| ConntrackFlush::ToEndpoint {
            ip: *ip,
            port: *port,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_model::{Endpoint, ServicePortName};

    #[test]
    fn restored_udp_endpoints_that_are_gone_are_flushed() {
        let ep = |ip: &str| Endpoint {
            ip: ip.parse().unwrap(),
            port: 8080,
            node_name: None,
            is_local: false,
            ready: true,
        };
        let mut new = DesiredState::default();
        new.services.insert(
            ServicePortName {
                namespace: "default".into(),
                name: "dns".into(),
                port_name: String::new(),
                protocol: Protocol::Udp,
            },
            ServicePortState {
                cluster_endpoints: vec![ep("10.244.1.3")],
                ..ServicePortState::default()
            },
        );
        let restored: BTreeSet<(IpAddr, u16)> = [
            ("10.244.1.2".parse().unwrap(), 8080),
            ("10.244.1.3".parse().unwrap(), 8080),
        ]
        .into();
        let flushes: Vec<_> = stale_restored_udp_flows(&restored, &new)
            .into_iter()
            .collect();
        assert_eq!(
            flushes,
            vec![ConntrackFlush::ToEndpoint {
                ip: "10.244.1.2".parse().unwrap(),
                port: 8080
            }]
        );
    }
}

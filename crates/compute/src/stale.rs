//! Which connection-tracking entries a plan change makes stale (kube-proxy's conntrack
//! cleanup, decided once for every dataplane).
//!
//! Only connectionless protocols need it (UDP): a TCP flow to a gone backend fails and the
//! client reconnects, but a UDP client that keeps sending keeps its entry forever.

use std::collections::BTreeSet;
use std::net::IpAddr;

use sluice_plan::{Backend, Plan, Protocol, ServiceChange, ServicePlan, StaleFlow};

/// Protocols whose flows outlive their backend.
fn needs_cleanup(protocol: Protocol) -> bool {
    protocol == Protocol::Udp
}

/// Stale flows of a set of service changes:
/// * a backend that left a service port: flows translated to it;
/// * a frontend that forwards now but did not before (had no backend, or did not exist):
///   flows that began untranslated while nothing answered.
pub(crate) fn flows(changes: &[ServiceChange]) -> Vec<StaleFlow> {
    let mut out = BTreeSet::new();
    for change in changes {
        if !needs_cleanup(change.name.protocol) {
            continue;
        }
        let protocol = change.name.protocol;
        let before = change.before.as_deref();
        let after = change.after.as_deref();
        let kept: BTreeSet<Backend> = after
            .map(ServicePlan::all_backends)
            .unwrap_or_default()
            .into_iter()
            .collect();
        for gone in before.map(ServicePlan::all_backends).unwrap_or_default() {
            if !kept.contains(&gone) {
                out.insert(StaleFlow::Backend {
                    protocol,
                    ip: gone.ip,
                    port: gone.port,
                });
            }
        }
        for frontend in after.map(|p| p.frontends.as_slice()).unwrap_or_default() {
            let forwarded_before = before
                .and_then(|p| p.frontends.iter().find(|f| f.key == frontend.key))
                .is_some_and(|f| f.forwards());
            if frontend.forwards() && !forwarded_before {
                out.insert(StaleFlow::Frontend { key: frontend.key });
            }
        }
    }
    out.into_iter().collect()
}

/// After a restart there is no previous plan: flows toward backends an earlier run programmed
/// (`restored`, as read back from the kernel) that no service port of their protocol uses now
/// went stale while the agent was down.
pub fn stale_after_restore(
    restored: &BTreeSet<(Protocol, IpAddr, u16)>,
    plan: &Plan,
) -> Vec<StaleFlow> {
    let wanted: BTreeSet<(Protocol, IpAddr, u16)> = plan
        .services
        .values()
        .filter(|s| needs_cleanup(s.name.protocol))
        .flat_map(|s| {
            s.all_backends()
                .into_iter()
                .map(|b| (s.name.protocol, b.ip, b.port))
        })
        .collect();
    restored
        .iter()
        .filter(|flow| needs_cleanup(flow.0) && !wanted.contains(flow))
        .map(|(protocol, ip, port)| StaleFlow::Backend {
            protocol: *protocol,
            ip: *ip,
            port: *port,
        })
        .collect()
}

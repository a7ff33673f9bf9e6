//! Rendering: which entries, flags and rows a plan becomes.

use sluice_plan::Protocol;

use super::helpers::*;
use crate::abi::*;
use crate::render::{Counts, render_plan};

#[test]
fn renders_every_frontend_with_its_flags() {
    let c = render_plan(&desired_with(nodeport_service()).plan());
    let s = semantics(&c);
    // ClusterIP: sock, ext (masqueraded from outside) and ext-pods (pods keep their address).
    let cip_ext = &s[&svc_key("10.96.0.10", 80, SCOPE_EXT)];
    assert_eq!(cip_ext.flags, SVC_MASQ | SVC_PODS);
    let cip_pods = &s[&svc_key("10.96.0.10", 80, SCOPE_EXT_PODS)];
    assert_eq!((cip_pods.flags, cip_pods.count), (0, 2));
    let cip = &s[&svc_key("10.96.0.10", 80, SCOPE_SOCK)];
    assert_eq!((cip.count, cip.flags), (2, 0));
    // NodePort: one address-less entry per scope; eTP=Cluster is the same for pods.
    let np_ext = &s[&nodeport_key(30080, SCOPE_EXT)];
    assert_eq!(np_ext.flags, SVC_MAGLEV | SVC_MASQ);
    assert!(!s.contains_key(&nodeport_key(30080, SCOPE_EXT_PODS)));
    assert!(
        !s.contains_key(&svc_key(NODE, 30080, SCOPE_EXT)),
        "no per-address key"
    );
    let lb_ext = &s[&svc_key("192.0.2.10", 80, SCOPE_EXT)];
    assert_eq!(lb_ext.flags, SVC_MAGLEV | SVC_MASQ | SVC_SRC_RANGES);
    assert_eq!(lb_ext.ranges.len(), 1);
    assert_eq!(lb_ext.backends, np_ext.backends);
    // The node's own address is outside the source ranges: node-local clients are dropped
    // (socket-LB answers EPERM).
    let lb_sock = &s[&svc_key("192.0.2.10", 80, SCOPE_SOCK)];
    assert_eq!((lb_sock.count, lb_sock.flags), (0, SVC_DROP));
    // One Maglev table for the external group, one slot group shared by the random entries.
    assert_eq!(c.maglev.len(), MAGLEV_M as usize);
    assert_eq!(c.slot.len(), 2);
    assert_eq!(c.nodeip.len(), 1);
    assert_eq!(c.cidr.len(), 1);
}

#[test]
fn local_policy_uses_local_endpoints_outside_and_every_endpoint_for_pods() {
    let mut svc = nodeport_service();
    svc.external_traffic_policy = TrafficPolicy::Local;
    let s = semantics(&render_plan(&desired_with(svc).plan()));
    let local = crate::render::backend_of(&sluice_plan::Backend::new(ip("10.244.1.2"), 8080));
    let np_ext = &s[&nodeport_key(30080, SCOPE_EXT)];
    assert_eq!(np_ext.flags, SVC_MAGLEV | SVC_PODS, "client address kept");
    assert_eq!(np_ext.backends, [local].into());
    // Pods on other nodes reaching this NodePort use every endpoint, unmasqueraded.
    let np_pods = &s[&nodeport_key(30080, SCOPE_EXT_PODS)];
    assert_eq!((np_pods.flags, np_pods.backends.len()), (SVC_MAGLEV, 2));
    // Node-local sockets to the NodePort are short-circuited to all endpoints.
    assert_eq!(s[&nodeport_key(30080, SCOPE_SOCK)].count, 2);
}

#[test]
fn no_endpoints_rejects_and_remote_only_drops() {
    let mut svc = nodeport_service();
    svc.endpoints.clear();
    let s = semantics(&render_plan(&desired_with(svc).plan()));
    for key in [
        svc_key("10.96.0.10", 80, SCOPE_SOCK),
        svc_key("10.96.0.10", 80, SCOPE_EXT),
        nodeport_key(30080, SCOPE_EXT),
    ] {
        assert_eq!((s[&key].count, s[&key].flags), (0, SVC_REJECT), "{key:?}");
    }
    // Source ranges are checked before the refusal: they keep a group of their own.
    let lb = &s[&svc_key("192.0.2.10", 80, SCOPE_EXT)];
    assert_eq!(lb.flags, SVC_REJECT | SVC_SRC_RANGES);
    assert_eq!(lb.ranges.len(), 1);

    let mut svc = nodeport_service();
    svc.internal_traffic_policy = TrafficPolicy::Local;
    svc.endpoints = vec![ep("10.244.2.2", 8080, false)];
    let s = semantics(&render_plan(&desired_with(svc).plan()));
    let v = &s[&svc_key("10.96.0.10", 80, SCOPE_SOCK)];
    assert_eq!((v.count, v.flags), (0, SVC_DROP));
}

#[test]
fn families_get_their_own_groups() {
    let mut svc = nodeport_service();
    svc.cluster_ips.push(ip("fd00::10"));
    svc.endpoints.push(ep("fd00:244::2", 8080, false));
    let mut d = desired_with(svc);
    d.node_port_addresses.push(ip("fd77::1"));
    let c = render_plan(&d.plan());
    let v4 = c.svc[&svc_key("10.96.0.10", 80, SCOPE_SOCK)];
    let v6 = c.svc[&svc_key("fd00::10", 80, SCOPE_SOCK)];
    assert_ne!(v4.group, v6.group);
    assert_eq!((v4.count, v6.count), (2, 1));
    let np6 = SvcKey {
        scope: SCOPE_EXT | SCOPE_NODEPORT6,
        ..nodeport_key(30080, 0)
    };
    assert_eq!(c.svc[&np6].count, 1);
    assert_eq!(c.nodeip.len(), 2);
}

#[test]
fn estimate_matches_what_is_rendered() {
    for d in [desired_with(nodeport_service()), many(20, 3)] {
        let plan = d.plan();
        let mut estimated = Counts::default();
        for svc in plan.services.values() {
            estimated = estimated.plus(crate::estimate(svc));
        }
        let rendered = render_plan(&plan).counts();
        for map in MapKind::AGENT.into_iter().take(4) {
            assert_eq!(estimated.get(map), rendered.get(map), "{map}");
        }
    }
    let _ = Protocol::Tcp;
}

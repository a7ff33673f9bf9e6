//! Reading the maps back in plan terms: every frontend's entries say what the plan's routes
//! say, drift shows as what the datapath would do, flows keep their original direction.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_plan::{Family, FrontendAddr, FrontendKey, Plan, Protocol, Route, ServicePlan};

use super::helpers::*;
use crate::abi::*;
use crate::readback::{EntryAction, EntryState, PinnedState, decode_flows};
use crate::render::{ip_words, render_plan};

/// What an entry executing `route` does (`masq_ok`: the entry can masquerade, i.e. is not
/// socket-LB's).
fn action_of(svc: &ServicePlan, family: Family, route: Route, masq_ok: bool) -> EntryAction {
    match route {
        Route::Forward { set, masquerade } => {
            let mut backends: Vec<SocketAddr> = svc
                .backends(set, family)
                .map(|b| SocketAddr::new(b.ip, b.port))
                .collect();
            backends.sort();
            EntryAction::Forward {
                backends,
                masquerade: masquerade && masq_ok,
            }
        }
        Route::Reject => EntryAction::Reject,
        Route::Drop => EntryAction::Drop,
    }
}

fn action(entry: Option<&EntryState>) -> Option<&EntryAction> {
    entry.map(|e| &e.action)
}

/// Every frontend of `plan` reads back with the plan's route for each source class.
fn assert_reads_back(plan: &Plan) {
    let state = PinnedState::of_plan(plan);
    let mut planned = 0;
    for svc in plan.services.values() {
        for fe in &svc.frontends {
            planned += 1;
            let family = fe.key.family();
            let got = state
                .frontends
                .iter()
                .find(|s| s.key == fe.key)
                .unwrap_or_else(|| panic!("{} not read back", fe.key));
            let want = |route, masq_ok| action_of(svc, family, route, masq_ok);
            assert_eq!(
                action(got.sock.as_ref()),
                Some(&want(fe.node, false)),
                "{} node",
                fe.key
            );
            assert_eq!(
                action(got.ext.as_ref()),
                Some(&want(fe.outside, true)),
                "{} outside",
                fe.key
            );
            assert_eq!(
                action(got.pods()),
                Some(&want(fe.pods, true)),
                "{} pods",
                fe.key
            );
            let ext = got.ext.as_ref().expect("ext");
            let ranges: Vec<_> = fe
                .allowed_sources
                .iter()
                .filter(|n| Family::of(&n.addr()) == family)
                .copied()
                .collect();
            assert_eq!(ext.allowed_sources, ranges, "{} sources", fe.key);
            assert_eq!(
                ext.affinity_timeout, svc.affinity_timeout,
                "{} affinity",
                fe.key
            );
        }
    }
    assert_eq!(state.frontends.len(), planned, "no other frontends");
}

#[test]
fn every_frontend_reads_back_with_the_plans_routes() {
    assert_reads_back(&desired_with(nodeport_service()).plan());
    let mut local = nodeport_service();
    local.external_traffic_policy = TrafficPolicy::Local;
    local.session_affinity_timeout = Some(300);
    assert_reads_back(&desired_with(local).plan());
    let mut empty = nodeport_service();
    empty.endpoints.clear();
    assert_reads_back(&desired_with(empty).plan());
    let mut remote_only = nodeport_service();
    remote_only.external_traffic_policy = TrafficPolicy::Local;
    remote_only.endpoints.retain(|e| !e.is_local);
    assert_reads_back(&desired_with(remote_only).plan());
    assert_reads_back(&many(30, 3).plan());
}

/// An IPv4 address and the IPv6 address that starts with the same 32 bits and ends in zeros
/// (32.1.13.184 is 0x20010db8, 2001:db8::) are two frontends with entries of their own.
#[test]
fn an_ipv4_and_an_ipv6_address_with_the_same_first_word_are_two_frontends() {
    let mut svc = nodeport_service();
    svc.cluster_ips = vec![ip("32.1.13.184"), ip("2001:db8::")];
    svc.endpoints.push(ep("fd00:244::2", 8080, false));
    let plan = desired_with(svc).plan();
    assert_reads_back(&plan);
    let c = render_plan(&plan);
    let v4 = c.svc[&svc_key("32.1.13.184", 80, SCOPE_SOCK)];
    let v6 = c.svc[&svc_key("2001:db8::", 80, SCOPE_SOCK)];
    assert_eq!((v4.count, v6.count), (2, 1));
    assert_ne!(v4.group, v6.group);
}

#[test]
fn node_rows_and_nodeport_frontends_read_back() {
    let state = PinnedState::of_plan(&desired_with(nodeport_service()).plan());
    assert_eq!(state.nodeport_addresses, vec![ip(NODE)]);
    assert_eq!(state.pod_cidrs, vec!["10.244.0.0/16".parse().unwrap()]);
    let np = state
        .frontends
        .iter()
        .find(|f| f.key.addr == FrontendAddr::NodePorts(Family::V4))
        .expect("address-less NodePort entry");
    assert_eq!(np.key.port, 30080);
    let ext = np.ext.as_ref().expect("ext");
    assert!(ext.maglev);
    assert_eq!(
        ext.action,
        EntryAction::Forward {
            backends: vec![
                "10.244.1.2:8080".parse().unwrap(),
                "10.244.2.2:8080".parse().unwrap()
            ],
            masquerade: true,
        }
    );
    assert!(np.ext_pods.is_none(), "eTP=Cluster: pods as outside");
}

#[test]
fn drift_reads_as_what_the_datapath_would_do() {
    let mut content = render_plan(&desired_with(nodeport_service()).plan());
    let cip = FrontendKey {
        addr: FrontendAddr::Ip(ip("10.96.0.10")),
        protocol: Protocol::Tcp,
        port: 80,
    };
    // The sock entry's slots vanish: socket-LB finds no backend to pick.
    let sock = content.svc[&svc_key("10.96.0.10", 80, SCOPE_SOCK)];
    content.slot.retain(|k, _| k.group != sock.group);
    // An entry of a protocol the plan does not know is skipped.
    let mut icmp = svc_key("10.96.0.99", 0, SCOPE_SOCK);
    icmp.proto = 1;
    content.svc.insert(icmp, sock);
    let state = PinnedState::from_content(&content);
    let fe = state
        .frontends
        .iter()
        .find(|f| f.key == cip)
        .expect("cluster IP");
    assert_eq!(action(fe.sock.as_ref()), Some(&EntryAction::Drop));
    assert!(
        !state
            .frontends
            .iter()
            .any(|f| f.key.addr == FrontendAddr::Ip(ip("10.96.0.99")))
    );
}

fn ct(
    client: &str,
    frontend: &str,
    backend: &str,
    dir: u8,
    flags: u8,
    last_ns: u64,
) -> (CtKey, CtVal) {
    let (c, f, b): (SocketAddr, SocketAddr, SocketAddr) = (
        client.parse().unwrap(),
        frontend.parse().unwrap(),
        backend.parse().unwrap(),
    );
    (
        CtKey {
            saddr: ip_words(c.ip()).0,
            daddr: ip_words(f.ip()).0,
            sport: c.port().to_be(),
            dport: f.port().to_be(),
            proto: 6,
            dir,
            pad: 0,
        },
        CtVal {
            nat_addr: ip_words(b.ip()).0,
            nat_port: b.port().to_be(),
            flags,
            pad: 0,
            group: 1,
            last_ns,
        },
    )
}

#[test]
fn flows_are_read_in_their_original_direction() {
    let now = 100_000_000_000;
    let entries = [
        ct(
            "192.0.2.100:40000",
            "172.18.0.2:30080",
            "10.244.1.2:8080",
            CT_DIR_ORIG,
            SVC_MASQ as u8,
            now - 3_000_000_000,
        ),
        // The reply direction of the same flow: not a second flow.
        ct(
            "10.244.1.2:8080",
            "172.18.0.2:40000",
            "192.0.2.100:30080",
            CT_DIR_REPLY,
            0,
            now,
        ),
        ct(
            "[2001:db8::100]:5000",
            "[fd00::10]:80",
            "[fd00:10:244:1::2]:8080",
            CT_DIR_ORIG,
            CT_F_CLOSED,
            now,
        ),
    ];
    let flows = decode_flows(&entries, Some(now));
    assert_eq!(flows.len(), 2, "{flows:?}");
    let v4 = &flows[0];
    assert_eq!(v4.client, "192.0.2.100:40000".parse().unwrap());
    assert_eq!(v4.frontend, "172.18.0.2:30080".parse().unwrap());
    assert_eq!(v4.backend, "10.244.1.2:8080".parse().unwrap());
    assert_eq!(v4.protocol, Protocol::Tcp);
    assert!(v4.masquerade && !v4.closed);
    assert_eq!(v4.idle, Some(Duration::from_secs(3)));
    let v6 = &flows[1];
    assert_eq!(v6.backend, "[fd00:10:244:1::2]:8080".parse().unwrap());
    assert!(v6.closed && !v6.masquerade);
    assert_eq!(decode_flows(&entries, None)[0].idle, None);
}

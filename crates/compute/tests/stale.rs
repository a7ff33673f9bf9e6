//! Stale connection-tracking entries: which flows compute tells the dataplanes to remove when
//! the plan changes, and after a restart.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::*;
use k8s_openapi::api::core::v1::Service;
use serde_json::{Value, json};
use sluice_compute::{ChangeSet, ComputeConfig, Planner, compute, stale_after_restore};
use sluice_model::EndpointSlice;
use sluice_model::{ObjectKey, Snapshot};
use sluice_plan::{FrontendAddr, FrontendKey, PlanDelta, Protocol, StaleFlow};

/// `default/dns` with one unnamed port 53 of `protocol` and a NodePort.
fn dns(protocol: &str) -> Service {
    service(
        "dns",
        json!({ "type": "NodePort", "clusterIP": "10.96.0.10", "ports": [{ "port": 53, "protocol": protocol, "nodePort": 30053 }] }),
    )
}

fn dns_slice(name: &str, protocol: &str, endpoints: Value) -> EndpointSlice {
    slice(
        name,
        "dns",
        "IPv4",
        json!([{ "port": 5353, "protocol": protocol }]),
        endpoints,
    )
}

fn key_of_slice(slice: &EndpointSlice) -> ObjectKey {
    ObjectKey::of(&slice.metadata).expect("named")
}

/// A planner that has planned `snap`.
fn planned(snap: &Snapshot) -> Planner {
    let mut planner = Planner::new(ComputeConfig::default());
    planner.update(snap, &ChangeSet::everything(), &node());
    planner
}

/// Replaces (or adds) one slice and updates the planner with exactly that change.
fn update_slice(planner: &mut Planner, snap: &mut Snapshot, slice: EndpointSlice) -> PlanDelta {
    let key = key_of_slice(&slice);
    snap.endpoint_slices.insert(key.clone(), Arc::new(slice));
    let changes = ChangeSet {
        endpoint_slices: [key].into(),
        ..ChangeSet::default()
    };
    planner.update(snap, &changes, &node())
}

fn udp_backend(ip_port: &str) -> StaleFlow {
    let addr: std::net::SocketAddr = ip_port.parse().expect("ip:port");
    StaleFlow::Backend {
        protocol: Protocol::Udp,
        ip: addr.ip(),
        port: addr.port(),
    }
}

fn udp_frontend(addr: FrontendAddr, port: u16) -> StaleFlow {
    StaleFlow::Frontend {
        key: FrontendKey {
            addr,
            protocol: Protocol::Udp,
            port,
        },
    }
}

#[test]
fn udp_backend_removed_makes_its_flows_stale_tcp_never() {
    let cases = [
        ("UDP", vec![udp_backend("10.244.0.2:5353")]),
        ("TCP", vec![]),
    ];
    for (protocol, expected) in cases {
        let two = dns_slice(
            "dns-1",
            protocol,
            json!([ep("10.244.0.1", "n1"), ep("10.244.0.2", "n2")]),
        );
        let mut snap = snapshot(vec![dns(protocol)], vec![two]);
        let mut planner = planned(&snap);
        let one = dns_slice("dns-1", protocol, json!([ep("10.244.0.1", "n1")]));
        let delta = update_slice(&mut planner, &mut snap, one);
        assert_eq!(
            delta.services.len(),
            1,
            "{protocol}: the backend change is planned"
        );
        assert_eq!(delta.stale_flows, expected, "{protocol}");
    }
}

#[test]
fn udp_backend_that_stops_being_ready_makes_its_flows_stale() {
    let mut snap = snapshot(
        vec![dns("UDP")],
        vec![dns_slice(
            "dns-1",
            "UDP",
            json!([ep("10.244.0.1", "n1"), ep("10.244.0.2", "n2")]),
        )],
    );
    let mut planner = planned(&snap);
    let terminating_now = dns_slice(
        "dns-1",
        "UDP",
        json!([ep("10.244.0.1", "n1"), terminating("10.244.0.2", "n2")]),
    );
    let delta = update_slice(&mut planner, &mut snap, terminating_now);
    assert_eq!(delta.stale_flows, [udp_backend("10.244.0.2:5353")]);
}

#[test]
fn udp_backend_moved_to_another_service_is_stale_for_the_one_it_left() {
    // Flows of dns's clients still go to 10.244.0.2 through dns's frontends: they must be
    // removed although the backend now serves another Service.
    let other = service(
        "other",
        json!({ "clusterIP": "10.96.0.20", "ports": [{ "port": 53, "protocol": "UDP" }] }),
    );
    let pod = || json!([ep("10.244.0.2", "n2")]);
    let mut snap = snapshot(
        vec![dns("UDP"), other],
        vec![
            dns_slice("dns-1", "UDP", json!([ep("10.244.0.1", "n1")])),
            dns_slice("moving", "UDP", pod()),
        ],
    );
    let mut planner = planned(&snap);
    let mut moved = dns_slice("moving", "UDP", pod());
    moved
        .metadata
        .labels
        .as_mut()
        .expect("labels")
        .insert("kubernetes.io/service-name".into(), "other".into());
    let delta = update_slice(&mut planner, &mut snap, moved);
    let changed: Vec<String> = delta.services.iter().map(|c| c.name.to_string()).collect();
    assert_eq!(changed, ["default/dns/udp", "default/other/udp"]);
    assert_eq!(
        addrs(&udp_port(&planner, "other").cluster),
        ["10.244.0.2:5353"]
    );
    // `other` had no endpoint before: its frontend starts forwarding.
    assert_eq!(
        delta.stale_flows,
        [
            udp_backend("10.244.0.2:5353"),
            udp_frontend(FrontendAddr::Ip(ip("10.96.0.20")), 53),
        ]
    );
}

fn udp_port<'a>(planner: &'a Planner, name: &str) -> &'a sluice_plan::ServicePlan {
    &planner.plan().services[&port_name(name, "", Protocol::Udp)]
}

#[test]
fn udp_frontends_that_start_forwarding_make_untranslated_flows_stale() {
    // No endpoint: every frontend rejects. The first endpoint arrives: flows that began while
    // nothing answered (on every frontend of the service port) must go. TCP never.
    let cases = [
        (
            "UDP",
            vec![
                udp_frontend(FrontendAddr::Ip(ip("10.96.0.10")), 53),
                udp_frontend(FrontendAddr::NodePorts(sluice_plan::Family::V4), 30053),
            ],
        ),
        ("TCP", vec![]),
    ];
    for (protocol, expected) in cases {
        let mut snap = snapshot(
            vec![dns(protocol)],
            vec![dns_slice("dns-1", protocol, json!([]))],
        );
        let mut planner = planned(&snap);
        let plan = &planner.plan().services[&port_name(
            "dns",
            "",
            if protocol == "UDP" {
                Protocol::Udp
            } else {
                Protocol::Tcp
            },
        )];
        assert!(
            plan.frontends.iter().all(|f| f.outside == REJECT),
            "{protocol}: {plan}"
        );
        let delta = update_slice(
            &mut planner,
            &mut snap,
            dns_slice("dns-1", protocol, json!([ep("10.244.0.1", "n1")])),
        );
        assert_eq!(delta.stale_flows, expected, "{protocol}");
    }
}

#[test]
fn udp_frontend_that_keeps_forwarding_makes_nothing_stale() {
    let mut snap = snapshot(
        vec![dns("UDP")],
        vec![dns_slice("dns-1", "UDP", json!([ep("10.244.0.1", "n1")]))],
    );
    let mut planner = planned(&snap);
    // A backend is added: no flow is wrong.
    let delta = update_slice(
        &mut planner,
        &mut snap,
        dns_slice(
            "dns-1",
            "UDP",
            json!([ep("10.244.0.1", "n1"), ep("10.244.0.2", "n2")]),
        ),
    );
    assert_eq!(delta.services.len(), 1);
    assert_eq!(delta.stale_flows, []);
}

#[test]
fn a_new_udp_service_with_endpoints_makes_its_frontends_stale() {
    // A frontend that did not exist before never translated anything: flows to it (from
    // clients that sent before the Service existed) are untranslated and must go.
    let mut snap = snapshot(
        vec![],
        vec![dns_slice("dns-1", "UDP", json!([ep("10.244.0.1", "n1")]))],
    );
    let mut planner = planned(&snap);
    let key = ObjectKey::new("default", "dns");
    snap.services.insert(key.clone(), Arc::new(dns("UDP")));
    let delta = planner.update(
        &snap,
        &ChangeSet {
            services: [key].into(),
            ..ChangeSet::default()
        },
        &node(),
    );
    assert_eq!(
        delta.stale_flows,
        [
            udp_frontend(FrontendAddr::Ip(ip("10.96.0.10")), 53),
            udp_frontend(FrontendAddr::NodePorts(sluice_plan::Family::V4), 30053),
        ]
    );
}

#[test]
fn stale_after_restore_finds_restored_udp_backends_no_longer_planned() {
    // Unnamed UDP port (kube-dns style) plus a named one, and a TCP port on the same backend.
    let svc = service(
        "dns",
        json!({ "clusterIP": "10.96.0.10", "ports": [
            { "port": 53, "protocol": "UDP" },
            { "name": "dns-tcp", "port": 53, "protocol": "TCP" },
        ] }),
    );
    let other = service(
        "syslog",
        json!({ "clusterIP": "10.96.0.11", "ports": [{ "name": "syslog", "port": 514, "protocol": "UDP" }] }),
    );
    let slices = vec![
        slice(
            "dns-1",
            "dns",
            "IPv4",
            json!([{ "port": 5353, "protocol": "UDP" }, { "name": "dns-tcp", "port": 5300, "protocol": "TCP" }]),
            json!([ep("10.244.0.1", "n1")]),
        ),
        slice(
            "syslog-1",
            "syslog",
            "IPv4",
            json!([{ "name": "syslog", "port": 514, "protocol": "UDP" }]),
            json!([ep("10.244.0.7", NODE)]),
        ),
    ];
    let plan = compute(
        &snapshot(vec![svc, other], slices),
        &node(),
        &ComputeConfig::default(),
    )
    .plan;
    let restored: BTreeSet<(Protocol, std::net::IpAddr, u16)> = [
        // Still planned (unnamed UDP port, named UDP port): kept.
        (Protocol::Udp, ip("10.244.0.1"), 5353),
        (Protocol::Udp, ip("10.244.0.7"), 514),
        // Gone while the agent was down.
        (Protocol::Udp, ip("10.244.0.2"), 5353),
        // Same address, other target port: gone too.
        (Protocol::Udp, ip("10.244.0.1"), 5354),
        // Planned for TCP only: the UDP flows are stale.
        (Protocol::Udp, ip("10.244.0.1"), 5300),
        // TCP needs no cleanup, planned or not.
        (Protocol::Tcp, ip("10.244.0.9"), 5353),
    ]
    .into();
    assert_eq!(
        stale_after_restore(&restored, &plan),
        [
            udp_backend("10.244.0.1:5300"),
            udp_backend("10.244.0.1:5354"),
            udp_backend("10.244.0.2:5353"),
        ]
    );
    // Nothing restored, or everything still planned: nothing stale.
    assert_eq!(stale_after_restore(&BTreeSet::new(), &plan), []);
    let all_planned: BTreeSet<_> = [(Protocol::Udp, ip("10.244.0.1"), 5353)].into();
    assert_eq!(stale_after_restore(&all_planned, &plan), []);
}

#[test]
fn stale_after_restore_counts_backends_of_the_local_set_as_planned() {
    // eTP=Local: the local set is what outside clients reach; its backends are planned.
    let svc = service(
        "dns",
        json!({ "type": "NodePort", "externalTrafficPolicy": "Local", "ports": [{ "port": 53, "protocol": "UDP", "nodePort": 30053 }] }),
    );
    let slices = vec![dns_slice(
        "dns-1",
        "UDP",
        json!([ep("10.244.1.1", NODE), ep("10.244.2.1", "node-b")]),
    )];
    let plan = compute(
        &snapshot(vec![svc], slices),
        &node(),
        &ComputeConfig::default(),
    )
    .plan;
    let restored: BTreeSet<_> = [
        (Protocol::Udp, ip("10.244.1.1"), 5353),
        (Protocol::Udp, ip("10.244.2.1"), 5353),
    ]
    .into();
    assert_eq!(stale_after_restore(&restored, &plan), []);
}

//! Shared by the unit tests: clusters described as service ports with endpoints (planned by
//! `sluice-compute`, as in the agent), and a group-id-free view of map content.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use sluice_plan::{Plan, Protocol, ServicePortName};

use crate::abi::{self, Backend, SlotKey, SvcKey};
use crate::render::{MapContent, address_key};

#[path = "../../tests/common/shim.rs"]
#[allow(dead_code)]
mod shim;
pub use shim::{DesiredState, Endpoint, ServicePortState, TrafficPolicy};

pub fn name(n: &str, proto: Protocol) -> ServicePortName {
    ServicePortName::new("default", n, "", proto)
}

pub fn ep(ip: &str, port: u16, local: bool) -> Endpoint {
    Endpoint {
        ip: ip.parse().expect("ip"),
        port,
        is_local: local,
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

pub const NODE: &str = "172.18.0.2";

/// ClusterIP 10.96.0.10:80, NodePort 30080, LB IP 192.0.2.10 limited to 198.51.100.0/24;
/// one endpoint here, one on another node.
pub fn nodeport_service() -> ServicePortState {
    ServicePortState {
        port: 80,
        cluster_ips: vec![ip("10.96.0.10")],
        node_port: Some(30080),
        load_balancer_ips: vec![ip("192.0.2.10")],
        load_balancer_source_ranges: vec!["198.51.100.0/24".parse().expect("cidr")],
        endpoints: vec![ep("10.244.1.2", 8080, true), ep("10.244.2.2", 8080, false)],
        ..Default::default()
    }
}

/// A node with pod CIDRs (so the `pods` class is known) running `svc` as `web`.
pub fn desired_with(svc: ServicePortState) -> DesiredState {
    let mut d = DesiredState {
        node_port_addresses: vec![ip(NODE)],
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
        ..Default::default()
    };
    d.services.insert(name("web", Protocol::Tcp), svc);
    d
}

/// `n` ClusterIP services with `eps` endpoints each (every fifth also a NodePort).
pub fn many(n: usize, eps: usize) -> DesiredState {
    let mut d = DesiredState {
        node_port_addresses: vec![ip(NODE)],
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
        ..Default::default()
    };
    for i in 0..n {
        let svc = ServicePortState {
            port: 80,
            cluster_ips: vec![ip(&format!("10.96.{}.{}", i / 250, i % 250 + 1))],
            node_port: (i % 5 == 0).then(|| 30000 + i as u16),
            endpoints: (0..eps)
                .map(|e| {
                    ep(
                        &format!("10.{}.{}.{}", 100 + i / 250, i % 250, e + 1),
                        8080,
                        e % 2 == 0,
                    )
                })
                .collect(),
            ..Default::default()
        };
        d.services
            .insert(name(&format!("svc-{i:04}"), Protocol::Tcp), svc);
    }
    d
}

pub fn svc_key(addr: &str, port: u16, scope: u8) -> SvcKey {
    address_key(ip(addr), port, 6, scope)
}

pub fn nodeport_key(port: u16, scope: u8) -> SvcKey {
    SvcKey {
        addr: [0; 4],
        port: port.to_be(),
        proto: 6,
        scope: scope | abi::SCOPE_NODEPORT4,
    }
}

/// What one frontend entry does, without group ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serving {
    pub flags: u16,
    pub count: u16,
    pub backends: BTreeSet<Backend>,
    pub ranges: BTreeSet<(u32, [u32; 4])>,
}

fn group_rows(map: &BTreeMap<SlotKey, Backend>, group: u32) -> BTreeMap<u32, Backend> {
    map.range(
        SlotKey { group, slot: 0 }..=SlotKey {
            group,
            slot: u32::MAX,
        },
    )
    .map(|(k, b)| (k.slot, *b))
    .collect()
}

/// What every frontend serves, panicking on a frontend that points at a missing slot.
pub fn semantics(c: &MapContent) -> BTreeMap<SvcKey, Serving> {
    c.svc
        .iter()
        .map(|(key, v)| {
            let backends = if v.flags & abi::SVC_MAGLEV != 0 {
                let rows = group_rows(&c.maglev, v.group);
                assert_eq!(
                    rows.len(),
                    abi::MAGLEV_M as usize,
                    "Maglev table of {key:?}"
                );
                rows.into_values().collect()
            } else {
                let rows = group_rows(&c.slot, v.group);
                for slot in 0..u32::from(v.count) {
                    assert!(
                        rows.contains_key(&slot),
                        "{key:?} points at missing slot {slot}"
                    );
                }
                rows.into_values().take(usize::from(v.count)).collect()
            };
            let ranges = c
                .src
                .iter()
                .filter(|s| s.group == v.group && v.flags & abi::SVC_SRC_RANGES != 0)
                .map(|s| (s.prefixlen, s.addr))
                .collect();
            let serving = Serving {
                flags: v.flags,
                count: v.count,
                backends,
                ranges,
            };
            (*key, serving)
        })
        .collect()
}

/// The map content a plan renders to (for comparisons through [`semantics`]).
pub fn rendered(plan: &Plan) -> MapContent {
    crate::render::render_plan(plan)
}

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use sluice_l2announce::{Eligibility, score};

use super::*;
use crate::loadbalancer::tests::{allocation, lb_service, node, pool, slice, snapshot};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|i| ip(i)).collect()
}

fn nodes(set: &[&str]) -> BTreeSet<String> {
    set.iter().map(|s| s.to_string()).collect()
}

#[test]
fn targets_are_assigned_l2_addresses_already_in_status() {
    let pools = [
        pool("a-lan", "192.0.2.200/30", true),
        pool("b-routed", "198.51.100.0/30", false),
    ];
    let routed = lb_service("routed", &["198.51.100.0"], false);
    let mut snap = snapshot(
        vec![
            lb_service("web", &["192.0.2.200"], false),
            // Assigned by this run but not in its status yet: not announced yet.
            lb_service("fresh", &[], false),
            routed,
        ],
        vec![],
        vec![],
    );
    let alloc = allocation(&pools, &snap);
    let targets = l2_targets(&alloc, &snap);
    assert_eq!(
        targets,
        BTreeMap::from([(ip("192.0.2.200"), Eligibility::AnyNode)]),
        "only the written address of the l2Announce pool"
    );
    // Once `fresh` carries its address in the status, it is announced too.
    let fresh_ip = alloc.services[&ObjectKey::new("default", "fresh")].ips()[0].to_string();
    snap.services.insert(
        ObjectKey::new("default", "fresh"),
        Arc::new(lb_service("fresh", &[&fresh_ip], false)),
    );
    let targets = l2_targets(&allocation(&pools, &snap), &snap);
    assert_eq!(targets.len(), 2, "{targets:?}");
}

#[test]
fn local_services_are_announced_only_from_nodes_with_a_ready_endpoint() {
    let pools = [pool("lan", "192.0.2.200/30", true)];
    let snap = snapshot(
        vec![lb_service("local", &["192.0.2.200"], true)],
        vec![slice(
            "local",
            &[("node-a", false), ("node-b", true), ("node-c", true)],
        )],
        vec![],
    );
    let targets = l2_targets(&allocation(&pools, &snap), &snap);
    assert_eq!(
        targets[&ip("192.0.2.200")],
        Eligibility::Only(nodes(&["node-b", "node-c"]))
    );
    // No ready endpoint anywhere: nobody may announce (traffic would be dropped anyway).
    let snap = snapshot(
        vec![lb_service("local", &["192.0.2.200"], true)],
        vec![slice("local", &[("node-a", false)])],
        vec![],
    );
    let targets = l2_targets(&allocation(&pools, &snap), &snap);
    assert_eq!(targets[&ip("192.0.2.200")], Eligibility::Only(nodes(&[])));
    let membership = directory_membership(
        [node("node-a", Some(true), "192.0.2.11")]
            .iter()
            .collect::<Vec<_>>(),
    );
    assert!(decide(&targets, &membership, "node-a", &BTreeSet::new()).is_empty());
}

/// The node that wins `ip` among `names` by rendezvous hashing.
fn winner(ip: IpAddr, names: &[&str]) -> String {
    names
        .iter()
        .max_by_key(|n| score(ip, n))
        .expect("names")
        .to_string()
}

#[test]
fn the_address_moves_when_its_node_is_not_ready_its_agent_dies_or_its_endpoint_goes() {
    let lb = ip("192.0.2.200");
    let targets = BTreeMap::from([(lb, Eligibility::AnyNode)]);
    let first = winner(lb, &["node-a", "node-b"]);
    let other = if first == "node-a" {
        "node-b"
    } else {
        "node-a"
    };
    let all_live = nodes(&["node-a", "node-b"]);
    let ready_nodes = [
        node("node-a", Some(true), "192.0.2.11"),
        node("node-b", Some(true), "192.0.2.12"),
    ];
    let membership = cluster_membership(Some(&ready_nodes), Some(&all_live), true);
    for (me, expected) in [(first.as_str(), ips(&["192.0.2.200"])), (other, ips(&[]))] {
        assert_eq!(
            decide(&targets, &membership, me, &BTreeSet::new()),
            expected,
            "{me}"
        );
    }

    // The winner's Node goes NotReady: the other node takes the address.
    let not_ready: Vec<Node> = ready_nodes
        .iter()
        .map(|n| {
            let name = n.metadata.name.as_deref().unwrap();
            node(name, Some(name != first), "192.0.2.1")
        })
        .collect();
    let membership = cluster_membership(Some(&not_ready), Some(&all_live), true);
    assert_eq!(
        decide(&targets, &membership, other, &BTreeSet::new()),
        ips(&["192.0.2.200"])
    );

    // The winner's agent stops renewing its heartbeat: same.
    let membership = cluster_membership(Some(&ready_nodes), Some(&nodes(&[other])), true);
    assert_eq!(
        decide(&targets, &membership, other, &BTreeSet::new()),
        ips(&["192.0.2.200"])
    );
    assert!(decide(&targets, &membership, &first, &ips(&["192.0.2.200"])).is_empty());

    // eTP=Local and the winner's endpoint goes: only the other node may announce.
    let local = BTreeMap::from([(lb, Eligibility::Only(nodes(&[other])))]);
    let membership = cluster_membership(Some(&ready_nodes), Some(&all_live), true);
    assert_eq!(
        decide(&local, &membership, other, &BTreeSet::new()),
        ips(&["192.0.2.200"])
    );
}

#[test]
fn without_judgement_the_last_decision_stays_minus_withdrawn_addresses() {
    let targets = BTreeMap::from([(ip("192.0.2.200"), Eligibility::AnyNode)]);
    let before = ips(&["192.0.2.200", "192.0.2.201"]);
    let ready = [node("node-a", Some(true), "192.0.2.11")];
    for membership in [
        cluster_membership(None::<&[Node]>, Some(&nodes(&["node-a"])), true),
        cluster_membership(Some(&ready), None, true),
        // Our own heartbeat is not held: the API server may be down for everyone.
        cluster_membership(Some(&ready), Some(&nodes(&[])), false),
    ] {
        assert_eq!(membership, Membership::Unknown);
        assert_eq!(
            decide(&targets, &membership, "node-b", &before),
            ips(&["192.0.2.200"]),
            "kept, but the address that is no longer assigned goes"
        );
    }
}

#[test]
fn directory_nodes_are_alive_and_ready_unless_they_say_otherwise() {
    let list = [
        node("plain", None, "192.0.2.11"),
        node("ready", Some(true), "192.0.2.12"),
        node("down", Some(false), "192.0.2.13"),
    ];
    let Membership::Known(candidates) = directory_membership(&list) else {
        panic!("the directory always knows");
    };
    let eligible: Vec<&str> = candidates
        .iter()
        .filter(|c| c.agent_alive && c.ready)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(eligible, ["plain", "ready"]);
}

#[test]
fn node_addresses_are_the_internal_and_external_ips_of_our_node() {
    let snap = snapshot(
        vec![],
        vec![],
        vec![
            node("node-a", Some(true), "192.0.2.11"),
            node("node-b", Some(true), "192.0.2.12"),
        ],
    );
    assert_eq!(node_addresses(&snap, "node-b"), vec![ip("192.0.2.12")]);
    assert!(node_addresses(&snap, "node-z").is_empty());
}

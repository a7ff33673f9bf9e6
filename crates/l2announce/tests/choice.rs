//! Announcer choice: one eligible node per address, the same on every agent, and stable
//! when unrelated nodes come and go.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;
use serde_json::json;
use sluice_l2announce::{Eligibility, NodeCandidate, announced_by, choose_announcers, score};

fn node(name: &str) -> NodeCandidate {
    NodeCandidate {
        name: name.into(),
        agent_alive: true,
        ready: true,
        excluded: false,
    }
}

fn nodes(names: &[&str]) -> Vec<NodeCandidate> {
    names.iter().map(|n| node(n)).collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn any(ips: &[IpAddr]) -> BTreeMap<IpAddr, Eligibility> {
    ips.iter().map(|ip| (*ip, Eligibility::AnyNode)).collect()
}

/// Many addresses, v4 and v6.
fn addresses(n: usize) -> Vec<IpAddr> {
    (0..n)
        .map(|i| {
            if i % 3 == 0 {
                ip(&format!("2001:db8::{i:x}"))
            } else {
                ip(&format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256))
            }
        })
        .collect()
}

#[test]
fn scores_are_pinned_because_agents_of_different_versions_must_agree() {
    // Values from an independent implementation of the documented algorithm (Python).
    // Changing these values breaks the agreement between old and new agents during an
    // upgrade: two nodes would answer for one address.
    assert_eq!(score(ip("192.0.2.1"), "node-a"), 0xcd87_39d0_ffd9_2ebf);
    assert_eq!(score(ip("2001:db8::1"), "node-a"), 0xee33_1f80_6853_c14b);
    assert_ne!(
        score(ip("192.0.2.1"), "node-b"),
        score(ip("192.0.2.1"), "node-a")
    );
}

#[test]
fn the_choice_does_not_depend_on_node_order() {
    let ips = addresses(200);
    let mut list = nodes(&["a", "b", "c", "d", "e"]);
    let first = choose_announcers(&any(&ips), &list);
    list.reverse();
    list.swap(0, 2);
    assert_eq!(choose_announcers(&any(&ips), &list), first);
    assert!(first.values().all(Option::is_some));
}

#[test]
fn only_alive_ready_included_nodes_announce() {
    let mut list = nodes(&["ok", "dead", "not-ready", "excluded"]);
    list[1].agent_alive = false;
    list[2].ready = false;
    list[3].excluded = true;
    let ips = addresses(50);
    let choice = choose_announcers(&any(&ips), &list);
    assert!(choice.values().all(|w| w.as_deref() == Some("ok")));
    list[0].ready = false;
    let none = choose_announcers(&any(&ips), &list);
    assert!(
        none.values().all(Option::is_none),
        "nobody eligible: nobody announces"
    );
}

#[test]
fn local_policy_addresses_go_to_nodes_with_local_endpoints() {
    let list = nodes(&["a", "b", "c", "d"]);
    let with_endpoints: BTreeSet<String> = ["b".into(), "d".into()].into();
    let mut wanted = BTreeMap::new();
    for ip in addresses(100) {
        wanted.insert(ip, Eligibility::Only(with_endpoints.clone()));
    }
    wanted.insert(ip("192.0.2.99"), Eligibility::Only(BTreeSet::new()));
    let choice = choose_announcers(&wanted, &list);
    assert_eq!(choice[&ip("192.0.2.99")], None);
    let winners: BTreeSet<_> = choice.values().flatten().cloned().collect();
    assert_eq!(winners, with_endpoints);

    let both = Eligibility::Only(["a".into(), "b".into()].into())
        .and(Eligibility::AnyNode)
        .and(Eligibility::Only(["b".into(), "c".into()].into()));
    assert_eq!(both, Eligibility::Only(["b".into()].into()));
}

#[test]
fn nodes_coming_and_going_move_only_their_own_addresses() {
    let ips = addresses(500);
    let all = nodes(&["n1", "n2", "n3", "n4", "n5", "n6"]);
    let before = choose_announcers(&any(&ips), &all);
    for gone in 0..all.len() {
        let mut fewer = all.clone();
        let removed = fewer.remove(gone);
        let after = choose_announcers(&any(&ips), &fewer);
        for ip in &ips {
            if before[ip].as_deref() != Some(removed.name.as_str()) {
                assert_eq!(
                    after[ip], before[ip],
                    "{ip} moved when {} left",
                    removed.name
                );
            }
        }
        // And coming back restores exactly the old choice.
        assert_eq!(choose_announcers(&any(&ips), &all), before);
    }
    let mut more = all.clone();
    more.push(node("n7"));
    let after = choose_announcers(&any(&ips), &more);
    let moved: Vec<_> = ips.iter().filter(|ip| after[*ip] != before[*ip]).collect();
    assert!(moved.iter().all(|ip| after[*ip].as_deref() == Some("n7")));
    // Roughly its share (1/7 of 500 ≈ 71) moves to the new node.
    assert!((40..110).contains(&moved.len()), "{} moved", moved.len());
}

#[test]
fn addresses_spread_over_the_nodes() {
    let ips = addresses(3000);
    let list = nodes(&["a", "b", "c", "d", "e"]);
    let choice = choose_announcers(&any(&ips), &list);
    for n in &list {
        let count = announced_by(&choice, &n.name).len();
        assert!(
            (450..750).contains(&count),
            "{} announces {count} of 3000",
            n.name
        );
    }
}

#[test]
fn candidates_come_from_node_objects() {
    let node: Node = serde_json::from_value(json!({
        "metadata": { "name": "w1", "labels": { "node.kubernetes.io/exclude-from-external-load-balancers": "" } },
        "status": { "conditions": [
            { "type": "MemoryPressure", "status": "False" },
            { "type": "Ready", "status": "True" }
        ] }
    }))
    .unwrap();
    let c = NodeCandidate::from_node(&node, true).unwrap();
    assert_eq!(
        c,
        NodeCandidate {
            name: "w1".into(),
            agent_alive: true,
            ready: true,
            excluded: true
        }
    );
    let not_ready: Node = serde_json::from_value(json!({
        "metadata": { "name": "w2" },
        "status": { "conditions": [{ "type": "Ready", "status": "Unknown" }] }
    }))
    .unwrap();
    let c = NodeCandidate::from_node(&not_ready, false).unwrap();
    assert!(!c.ready && !c.excluded && !c.agent_alive);
}

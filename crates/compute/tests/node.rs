//! Table tests for node facts and where NodePorts are served.

mod common;

use common::*;
use k8s_openapi::api::core::v1::Node;
use serde_json::json;
use sluice_compute::{ComputeConfig, compute, node_info, node_info_checked, node_port_addresses};

fn node_object() -> Node {
    serde_json::from_value(json!({
        "metadata": { "name": "node-a", "labels": { "topology.kubernetes.io/zone": "eu-1a" } },
        "status": { "addresses": [
            { "type": "Hostname", "address": "node-a" },
            { "type": "InternalIP", "address": "192.168.0.10" },
            { "type": "InternalIP", "address": "fd00::10" },
            { "type": "ExternalIP", "address": "203.0.113.10" },
            { "type": "InternalDNS", "address": "node-a.internal" },
        ] },
    }))
    .expect("node JSON")
}

#[test]
fn node_info_from_node_object_and_local_addresses() {
    let object = node_object();
    let cases = [
        (
            "node object only",
            Some(&object),
            vec![],
            Some("eu-1a"),
            vec!["192.168.0.10", "203.0.113.10", "fd00::10"],
        ),
        (
            "plus local addresses, deduplicated",
            Some(&object),
            vec!["10.1.0.1", "192.168.0.10"],
            Some("eu-1a"),
            vec!["10.1.0.1", "192.168.0.10", "203.0.113.10", "fd00::10"],
        ),
        (
            "no node object yet",
            None,
            vec!["10.1.0.1"],
            None,
            vec!["10.1.0.1"],
        ),
    ];
    for (case, object, local, zone, expected) in cases {
        let info = node_info("node-a", object, &ips(&local));
        assert_eq!(info.name, "node-a", "{case}");
        assert_eq!(info.zone.as_deref(), zone, "{case}");
        assert_eq!(info.addresses, ips(&expected), "{case}");
    }
}

#[test]
fn unparsable_node_address_is_reported_and_skipped() {
    let object: Node = serde_json::from_value(json!({
        "metadata": { "name": "node-a" },
        "status": { "addresses": [{ "type": "InternalIP", "address": "10.0.0.256" }, { "type": "InternalIP", "address": "10.0.0.1" }] },
    }))
    .expect("node JSON");
    let (info, warnings) = node_info_checked("node-a", Some(&object), &[]);
    assert_eq!(info.addresses, ips(&["10.0.0.1"]));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].object, "Node node-a");
    assert!(warnings[0].message.contains("10.0.0.256"), "{warnings:?}");
    // The parse error (the source) is part of the message too.
    assert!(
        warnings[0].message.contains("invalid IP address syntax"),
        "{warnings:?}"
    );
    assert_eq!(
        warnings[0].to_string(),
        format!("Node node-a: {}", warnings[0].message)
    );
}

#[test]
fn node_port_addresses_filtered_by_cidrs() {
    let addresses = ips(&["203.0.113.10", "192.168.0.10", "fd00::10", "192.168.0.10"]);
    let cases = [
        (
            "empty list: all, sorted, unique",
            vec![],
            vec!["192.168.0.10", "203.0.113.10", "fd00::10"],
        ),
        // Per family, as kube-proxy: a family without a CIDR keeps all its addresses.
        (
            "one IPv4 CIDR",
            vec!["192.168.0.0/16"],
            vec!["192.168.0.10", "fd00::10"],
        ),
        (
            "IPv6 CIDR",
            vec!["fd00::/8"],
            vec!["192.168.0.10", "203.0.113.10", "fd00::10"],
        ),
        (
            "both families",
            vec!["192.168.0.0/16", "fd00::/8"],
            vec!["192.168.0.10", "fd00::10"],
        ),
        (
            "host routes",
            vec!["203.0.113.10/32", "fd00::10/128"],
            vec!["203.0.113.10", "fd00::10"],
        ),
        ("no match", vec!["10.0.0.0/8", "2001:db8::/32"], vec![]),
    ];
    for (case, cidrs, expected) in cases {
        let cidrs: Vec<ipnet::IpNet> = cidrs.iter().map(|c| c.parse().expect("cidr")).collect();
        assert_eq!(
            node_port_addresses(&addresses, &cidrs),
            ips(&expected),
            "{case}"
        );
        let mut node = node();
        node.addresses = addresses.clone();
        let config = ComputeConfig {
            nodeport_addresses: cidrs,
            ..ComputeConfig::default()
        };
        let computed = compute(&snapshot(vec![], vec![]), &node, &config);
        assert_eq!(
            computed.plan.node.nodeport_addresses,
            ips(&expected),
            "{case}: compute"
        );
    }
}

#[test]
fn compute_copies_cluster_cidrs_and_the_node_name() {
    let cidrs: Vec<ipnet::IpNet> = vec![
        "10.244.0.0/16".parse().expect("cidr"),
        "fd10::/56".parse().expect("cidr"),
    ];
    let config = ComputeConfig {
        cluster_cidrs: cidrs.clone(),
        ..ComputeConfig::default()
    };
    let computed = compute(&snapshot(vec![], vec![]), &node(), &config);
    assert_eq!(computed.plan.node.pod_cidrs, cidrs);
    assert_eq!(computed.plan.node.name, NODE);
}

#[test]
fn node_port_frontends_do_not_depend_on_node_addresses() {
    // A NodePort frontend stands for "every NodePort address of the family": a node address
    // change touches the node plan only, never a service.
    let svc = || {
        service(
            "web",
            json!({ "type": "NodePort", "ports": [{ "port": 80, "nodePort": 30080 }] }),
        )
    };
    let before = compute(&snapshot(vec![svc()], vec![]), &node(), &Default::default());
    let mut moved = node();
    moved.addresses = ips(&["192.168.0.99", "fd00::99"]);
    let after = compute(&snapshot(vec![svc()], vec![]), &moved, &Default::default());
    assert_eq!(before.plan.services, after.plan.services);
    assert_eq!(
        after.plan.node.nodeport_addresses,
        ips(&["192.168.0.99", "fd00::99"])
    );
}

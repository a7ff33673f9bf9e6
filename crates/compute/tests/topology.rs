//! Table tests for endpoint categorisation (kube-proxy's `CategorizeEndpoints`): terminating
//! fallback, local sets, topology hints.

mod common;

use common::*;
use serde_json::{Value, json};
use sluice_plan::SourceClass;

/// Endpoint with zone hints (and optional node hints), ready unless `ready` is false.
fn hinted(ip: &str, node: &str, zones: &[&str], nodes: &[&str]) -> Value {
    let mut hints = serde_json::Map::new();
    if !zones.is_empty() {
        hints.insert(
            "forZones".into(),
            json!(
                zones
                    .iter()
                    .map(|z| json!({ "name": z }))
                    .collect::<Vec<_>>()
            ),
        );
    }
    if !nodes.is_empty() {
        hints.insert(
            "forNodes".into(),
            json!(
                nodes
                    .iter()
                    .map(|n| json!({ "name": n }))
                    .collect::<Vec<_>>()
            ),
        );
    }
    json!({ "addresses": [ip], "nodeName": node, "hints": hints })
}

#[test]
fn ready_endpoints_win_else_serving_terminating_fallback() {
    let cases = [
        (
            "ready only",
            json!([ep("10.0.0.1", "n1"), terminating("10.0.0.2", "n2")]),
            vec!["10.0.0.1:80"],
            FWD_C,
        ),
        (
            "fallback when nothing ready",
            json!([
                terminating("10.0.0.2", "n2"),
                ep_cond("10.0.0.3", "n2", Some(false), None, None)
            ]),
            vec!["10.0.0.2:80"],
            FWD_C,
        ),
        (
            "terminating but not serving is never used",
            json!([ep_cond(
                "10.0.0.4",
                "n2",
                Some(false),
                Some(false),
                Some(true)
            )]),
            vec![],
            REJECT,
        ),
        ("no endpoints", json!([]), vec![], REJECT),
    ];
    for (case, endpoints, expected, route) in cases {
        let computed = run(
            vec![service("web", json!({}))],
            vec![slice4("web-a", "web", 80, endpoints)],
        );
        let plan = tcp_port(&computed, "web", case);
        assert_eq!(addrs(&plan.cluster), expected, "{case}");
        assert_eq!(
            routes(frontend(plan, "10.96.0.1:80/tcp", case)),
            [route; 3],
            "{case}"
        );
    }
}

#[test]
fn local_endpoints_have_their_own_fallback() {
    // (endpoints, expected cluster, expected local); no case is without endpoints, so every
    // route forwards or drops, never rejects.
    let cases = [
        (
            "local ready",
            json!([ep("10.0.0.1", NODE), ep("10.0.0.2", "node-b")]),
            vec!["10.0.0.1:80", "10.0.0.2:80"],
            vec!["10.0.0.1:80"],
        ),
        (
            "remote ready, local terminating",
            json!([ep("10.0.0.2", "node-b"), terminating("10.0.0.1", NODE)]),
            vec!["10.0.0.2:80"],
            vec!["10.0.0.1:80"],
        ),
        (
            "only remote",
            json!([ep("10.0.0.2", "node-b")]),
            vec!["10.0.0.2:80"],
            vec![],
        ),
        (
            "local ready hides local terminating",
            json!([ep("10.0.0.1", NODE), terminating("10.0.0.3", NODE)]),
            vec!["10.0.0.1:80"],
            vec!["10.0.0.1:80"],
        ),
    ];
    for (case, endpoints, cluster, local) in cases {
        let spec = json!({
            "type": "NodePort", "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local",
            "ports": [{ "port": 80, "nodePort": 30080 }],
        });
        let computed = run(
            vec![service("web", spec)],
            vec![slice4("web-a", "web", 80, endpoints)],
        );
        let plan = tcp_port(&computed, "web", case);
        assert_eq!(addrs(&plan.cluster), cluster, "{case}");
        assert_eq!(addrs(&plan.local), local, "{case}");
        let (internal, external) = if local.is_empty() {
            (DROP, DROP)
        } else {
            (FWD_L, FWD_L)
        };
        assert_eq!(
            route(&computed, "web", "10.96.0.1:80/tcp", SourceClass::Pods),
            internal,
            "{case}: internal policy Local"
        );
        assert_eq!(
            route(
                &computed,
                "web",
                "nodeports-v4:30080/tcp",
                SourceClass::Outside
            ),
            external,
            "{case}: external policy Local"
        );
    }
}

#[test]
fn zone_hints_apply_only_when_requested_complete_and_matching() {
    let complete = || {
        json!([
            hinted("10.0.0.1", "n1", &[ZONE], &[]),
            hinted("10.0.0.2", "n2", &["zone-b"], &[]),
            hinted("10.0.0.3", "n3", &["zone-b", ZONE], &[]),
        ])
    };
    let all = vec!["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];
    let ours = vec!["10.0.0.1:80", "10.0.0.3:80"];
    let with_dist = |d: &str| json!({ "metadata": { "namespace": "default", "name": "web" }, "spec": { "trafficDistribution": d } });
    let with_annotation = |k: &str, v: &str| json!({ "metadata": { "namespace": "default", "name": "web", "annotations": { k: v } } });
    let mode = "service.kubernetes.io/topology-mode";
    let legacy = "service.kubernetes.io/topology-aware-hints";
    let cases = [
        (
            "PreferClose",
            with_dist("PreferClose"),
            complete(),
            ours.clone(),
        ),
        (
            "PreferSameZone",
            with_dist("PreferSameZone"),
            complete(),
            ours.clone(),
        ),
        (
            "topology-mode Auto",
            with_annotation(mode, "Auto"),
            complete(),
            ours.clone(),
        ),
        (
            "legacy hints auto",
            with_annotation(legacy, "auto"),
            complete(),
            ours.clone(),
        ),
        (
            "not requested",
            json!({ "metadata": { "namespace": "default", "name": "web" } }),
            complete(),
            all.clone(),
        ),
        (
            "topology-mode Disabled",
            with_annotation(mode, "Disabled"),
            complete(),
            all.clone(),
        ),
        (
            "a ready endpoint lacks hints",
            with_dist("PreferClose"),
            json!([hinted("10.0.0.1", "n1", &[ZONE], &[]), ep("10.0.0.2", "n2")]),
            vec!["10.0.0.1:80", "10.0.0.2:80"],
        ),
        (
            "unready endpoint without hints does not matter",
            with_dist("PreferClose"),
            json!([
                hinted("10.0.0.1", "n1", &[ZONE], &[]),
                hinted("10.0.0.2", "n2", &["zone-b"], &[]),
                ep_cond("10.0.0.9", "n9", Some(false), None, None)
            ]),
            vec!["10.0.0.1:80"],
        ),
        (
            "no hint for our zone",
            with_dist("PreferClose"),
            json!([
                hinted("10.0.0.1", "n1", &["zone-c"], &[]),
                hinted("10.0.0.2", "n2", &["zone-b"], &[])
            ]),
            vec!["10.0.0.1:80", "10.0.0.2:80"],
        ),
    ];
    for (case, object, endpoints, expected) in cases {
        let computed = run(
            vec![service_full(object)],
            vec![slice4("web-a", "web", 80, endpoints)],
        );
        assert_eq!(
            addrs(&tcp_port(&computed, "web", case).cluster),
            expected,
            "{case}"
        );
    }
}

#[test]
fn zone_hints_ignored_when_node_has_no_zone() {
    let svc = service("web", json!({ "trafficDistribution": "PreferClose" }));
    let slices = vec![slice4(
        "web-a",
        "web",
        80,
        json!([
            hinted("10.0.0.1", "n1", &[ZONE], &[]),
            hinted("10.0.0.2", "n2", &["zone-b"], &[])
        ]),
    )];
    let mut node = node();
    node.zone = None;
    let computed =
        sluice_compute::compute(&snapshot(vec![svc], slices), &node, &Default::default());
    assert_eq!(
        addrs(&tcp_port(&computed, "web", "no zone").cluster),
        ["10.0.0.1:80", "10.0.0.2:80"]
    );
}

#[test]
fn prefer_same_node_uses_node_hints_then_zone_hints() {
    let cases = [
        (
            "node hint for us",
            json!([
                hinted("10.0.0.1", NODE, &[ZONE], &[NODE]),
                hinted("10.0.0.2", "n2", &[ZONE], &["n2"]),
                hinted("10.0.0.3", "n3", &["zone-b"], &["n3"]),
            ]),
            vec!["10.0.0.1:80"],
        ),
        (
            "no node hint for us: zone hints",
            json!([
                hinted("10.0.0.2", "n2", &[ZONE], &["n2"]),
                hinted("10.0.0.3", "n3", &["zone-b"], &["n3"]),
            ]),
            vec!["10.0.0.2:80"],
        ),
        (
            "node hints incomplete: zone hints",
            json!([
                hinted("10.0.0.1", NODE, &["zone-b"], &[NODE]),
                hinted("10.0.0.2", "n2", &[ZONE], &[]),
            ]),
            vec!["10.0.0.2:80"],
        ),
    ];
    for (case, endpoints, expected) in cases {
        let svc = service("web", json!({ "trafficDistribution": "PreferSameNode" }));
        let computed = run(vec![svc], vec![slice4("web-a", "web", 80, endpoints)]);
        assert_eq!(
            addrs(&tcp_port(&computed, "web", case).cluster),
            expected,
            "{case}"
        );
    }
}

#[test]
fn topology_does_not_narrow_local_sets_or_terminating_fallback() {
    let svc = service(
        "web",
        json!({ "type": "NodePort", "externalTrafficPolicy": "Local", "trafficDistribution": "PreferClose" }),
    );
    let endpoints = json!([
        hinted("10.0.0.1", NODE, &["zone-b"], &[]),
        hinted("10.0.0.2", "n2", &[ZONE], &[]),
    ]);
    let computed = run(
        vec![svc.clone()],
        vec![slice4("web-a", "web", 80, endpoints)],
    );
    let plan = tcp_port(&computed, "web", "local");
    assert_eq!(addrs(&plan.cluster), ["10.0.0.2:80"]);
    assert_eq!(
        addrs(&plan.local),
        ["10.0.0.1:80"],
        "local endpoint hinted elsewhere stays local"
    );

    // Nothing ready: fallback uses every serving-terminating endpoint, whatever the hints.
    let mut t1 = terminating("10.0.0.1", "n1");
    t1["hints"] = json!({ "forZones": [{ "name": "zone-b" }] });
    let computed = run(
        vec![svc],
        vec![slice4(
            "web-a",
            "web",
            80,
            json!([t1, terminating("10.0.0.2", "n2")]),
        )],
    );
    assert_eq!(
        addrs(&tcp_port(&computed, "web", "fallback").cluster),
        ["10.0.0.1:80", "10.0.0.2:80"]
    );
}

//! Table tests for endpoint collection: slices → endpoints of each service port.

mod common;

use common::*;
use serde_json::json;
use sluice_model::Protocol;

#[test]
fn endpoints_merge_across_slices_deduplicated_and_sorted() {
    let cases = [
        (
            "one slice",
            vec![slice4(
                "web-a",
                "web",
                8080,
                json!([ep("10.244.0.3", "n2"), ep("10.244.0.1", "n1")]),
            )],
            vec!["10.244.0.1:8080", "10.244.0.3:8080"],
        ),
        (
            "two slices, one overlap",
            vec![
                slice4(
                    "web-a",
                    "web",
                    8080,
                    json!([ep("10.244.0.3", "n2"), ep("10.244.0.1", "n1")]),
                ),
                slice4(
                    "web-b",
                    "web",
                    8080,
                    json!([ep("10.244.0.2", "n1"), ep("10.244.0.1", "n1")]),
                ),
            ],
            vec!["10.244.0.1:8080", "10.244.0.2:8080", "10.244.0.3:8080"],
        ),
        (
            "same IP, different target ports stay apart",
            vec![
                slice4("web-a", "web", 8080, json!([ep("10.244.0.1", "n1")])),
                slice4("web-b", "web", 8081, json!([ep("10.244.0.1", "n1")])),
            ],
            vec!["10.244.0.1:8080", "10.244.0.1:8081"],
        ),
        (
            "other service's slice ignored",
            vec![slice4(
                "api-a",
                "api",
                8080,
                json!([ep("10.244.0.9", "n1")]),
            )],
            vec![],
        ),
        (
            "dual-stack slices",
            vec![
                slice4("web-v4", "web", 8080, json!([ep("10.244.0.1", "n1")])),
                slice(
                    "web-v6",
                    "web",
                    "IPv6",
                    json!([{ "port": 8080 }]),
                    json!([ep("fd00::1", "n1")]),
                ),
            ],
            vec!["10.244.0.1:8080", "[fd00::1]:8080"],
        ),
    ];
    for (case, slices, expected) in cases {
        let computed = run(vec![service("web", json!({}))], slices);
        assert_eq!(
            addrs(&tcp_port(&computed, "web", case).cluster_endpoints),
            expected,
            "{case}"
        );
        assert!(
            computed.warnings.is_empty(),
            "{case}: {:?}",
            computed.warnings
        );
    }
}

#[test]
fn fqdn_slices_are_ignored() {
    let slices = vec![
        slice(
            "web-fqdn",
            "web",
            "FQDN",
            json!([{ "port": 80 }]),
            json!([{ "addresses": ["db.example.org"] }]),
        ),
        slice4("web-a", "web", 8080, json!([ep("10.244.0.1", "n1")])),
    ];
    let computed = run(vec![service("web", json!({}))], slices);
    assert_eq!(
        addrs(&tcp_port(&computed, "web", "fqdn").cluster_endpoints),
        ["10.244.0.1:8080"]
    );
    assert!(computed.warnings.is_empty(), "{:?}", computed.warnings);
}

#[test]
fn named_target_port_resolves_through_slice_port_name_and_protocol() {
    let svc = service(
        "web",
        json!({ "ports": [
        { "name": "http", "port": 80, "targetPort": "web" },
        { "name": "metrics", "port": 9090, "targetPort": "prom" },
        { "name": "dns", "port": 53, "protocol": "UDP" },
    ] }),
    );
    // During a rollout the named port maps to different numbers in different slices.
    let slices = vec![
        slice(
            "web-old",
            "web",
            "IPv4",
            json!([{ "name": "http", "port": 8080 }, { "name": "metrics", "port": 9100 }, { "name": "dns", "port": 5353, "protocol": "TCP" }]),
            json!([ep("10.244.0.1", "n1")]),
        ),
        slice(
            "web-new",
            "web",
            "IPv4",
            json!([{ "name": "http", "port": 8888 }, { "name": "dns", "port": 5353, "protocol": "UDP" }]),
            json!([ep("10.244.0.2", "n1")]),
        ),
    ];
    let computed = run(vec![svc], slices);
    let get = |name: &str, proto| {
        addrs(&computed.state.services[&port_name("web", name, proto)].cluster_endpoints)
    };
    assert_eq!(
        get("http", Protocol::Tcp),
        ["10.244.0.1:8080", "10.244.0.2:8888"]
    );
    assert_eq!(get("metrics", Protocol::Tcp), ["10.244.0.1:9100"]);
    // The TCP slice port named "dns" must not feed the UDP service port.
    assert_eq!(get("dns", Protocol::Udp), ["10.244.0.2:5353"]);
}

#[test]
fn endpoint_conditions_defaults() {
    // (ready, serving, terminating) → (used as cluster endpoint?, reported ready flag)
    let cases = [
        ("all unset = ready", None, None, None, Some(true)),
        ("ready", Some(true), None, Some(false), Some(true)),
        (
            "not ready, serving unset follows ready",
            Some(false),
            None,
            Some(true),
            None,
        ),
        (
            "serving+terminating fallback",
            Some(false),
            Some(true),
            Some(true),
            Some(false),
        ),
        (
            "serving but not terminating",
            Some(false),
            Some(true),
            None,
            None,
        ),
        (
            "terminating, not serving",
            Some(false),
            Some(false),
            Some(true),
            None,
        ),
    ];
    for (case, ready, serving, terminating, expected) in cases {
        let slices = vec![slice4(
            "web-a",
            "web",
            8080,
            json!([ep_cond("10.244.0.1", "n1", ready, serving, terminating)]),
        )];
        let computed = run(vec![service("web", json!({}))], slices);
        let state = tcp_port(&computed, "web", case);
        let got = state.cluster_endpoints.first().map(|e| e.ready);
        assert_eq!(got, expected, "{case}");
        assert_eq!(state.has_any_endpoints, expected.is_some(), "{case}");
    }
}

#[test]
fn endpoint_is_local_when_node_name_is_ours() {
    let cases = [
        ("our node", Some(NODE), true),
        ("other node", Some("node-b"), false),
        ("no nodeName", None, false),
    ];
    for (case, node_name, expected) in cases {
        let endpoint = match node_name {
            Some(n) => ep("10.244.0.1", n),
            None => json!({ "addresses": ["10.244.0.1"] }),
        };
        let computed = run(
            vec![service("web", json!({}))],
            vec![slice4("web-a", "web", 8080, json!([endpoint]))],
        );
        let state = tcp_port(&computed, "web", case);
        assert_eq!(state.cluster_endpoints[0].is_local, expected, "{case}");
        assert_eq!(
            state.cluster_endpoints[0].node_name.as_deref(),
            node_name,
            "{case}"
        );
        assert_eq!(state.local_endpoints.len(), usize::from(expected), "{case}");
    }
}

#[test]
fn only_the_first_address_is_used() {
    let slices = vec![slice4(
        "web-a",
        "web",
        8080,
        json!([{ "addresses": ["10.244.0.1", "10.244.0.99"] }]),
    )];
    let computed = run(vec![service("web", json!({}))], slices);
    assert_eq!(
        addrs(&tcp_port(&computed, "web", "first").cluster_endpoints),
        ["10.244.0.1:8080"]
    );
}

#[test]
fn malformed_slice_data_is_skipped_with_a_warning_naming_the_slice() {
    let good = ep("10.244.0.1", "n1");
    let cases = [
        (
            "bad IP",
            "IPv4",
            json!([{ "port": 8080 }]),
            json!([good, { "addresses": ["10.244.0.300"] }]),
            "addresses[0]",
        ),
        (
            "no addresses",
            "IPv4",
            json!([{ "port": 8080 }]),
            json!([good, { "addresses": [] }]),
            "no addresses",
        ),
        (
            "family mismatch",
            "IPv4",
            json!([{ "port": 8080 }]),
            json!([good, { "addresses": ["fd00::1"] }]),
            "addressType IPv4",
        ),
        (
            "port out of range",
            "IPv4",
            json!([{ "name": "x", "port": 65536 }, { "port": 8080 }]),
            json!([good]),
            "port 65536",
        ),
        (
            "unknown slice port protocol",
            "IPv4",
            json!([{ "name": "x", "port": 1, "protocol": "GRE" }, { "port": 8080 }]),
            json!([good]),
            "GRE",
        ),
    ];
    for (case, address_type, ports, endpoints, needle) in cases {
        let computed = run(
            vec![service("web", json!({}))],
            vec![slice("web-a", "web", address_type, ports, endpoints)],
        );
        assert_eq!(
            addrs(&tcp_port(&computed, "web", case).cluster_endpoints),
            ["10.244.0.1:8080"],
            "{case}"
        );
        assert!(
            has_warning(&computed, "EndpointSlice default/web-a", needle),
            "{case}: {:?}",
            computed.warnings
        );
    }
    let unknown = slice(
        "web-a",
        "web",
        "IPX",
        json!([{ "port": 8080 }]),
        json!([ep("10.244.0.1", "n1")]),
    );
    let computed = run(vec![service("web", json!({}))], vec![unknown]);
    assert!(
        tcp_port(&computed, "web", "unknown addressType")
            .cluster_endpoints
            .is_empty()
    );
    assert!(
        has_warning(
            &computed,
            "EndpointSlice default/web-a",
            "addressType \"IPX\""
        ),
        "{:?}",
        computed.warnings
    );
}

#[test]
fn duplicate_endpoint_keeps_the_best_condition_whatever_the_order() {
    let ready = ep_cond("10.244.0.1", "n1", Some(true), Some(true), Some(false));
    let stale = ep_cond("10.244.0.1", "n1", Some(false), Some(false), Some(true));
    for (case, a, b) in [
        ("ready first", &ready, &stale),
        ("stale first", &stale, &ready),
    ] {
        let slices = vec![
            slice4("web-a", "web", 8080, json!([a])),
            slice4("web-b", "web", 8080, json!([b])),
        ];
        let computed = run(vec![service("web", json!({}))], slices);
        let state = tcp_port(&computed, "web", case);
        assert_eq!(
            addrs(&state.cluster_endpoints),
            ["10.244.0.1:8080"],
            "{case}"
        );
        assert!(state.cluster_endpoints[0].ready, "{case}");
    }
}

#[test]
fn port_endpoints_serve_headless_services_with_the_same_rules() {
    let headless = service(
        "web",
        json!({"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}),
    );
    let ready = slice(
        "web-a",
        "web",
        "IPv4",
        json!([{"name": "http", "port": 8080}, {"name": "metrics", "port": 9100}]),
        json!([ep("10.244.0.2", "n1"), ep_cond("10.244.0.1", "n1", Some(false), Some(true), Some(true)), {"addresses": ["bad"]}]),
    );
    let slices = [std::sync::Arc::new(ready)];
    let refs: Vec<_> = slices.iter().collect();
    let mut warnings = Vec::new();
    let eps = sluice_compute::port_endpoints(
        &headless,
        "http",
        Protocol::Tcp,
        &refs,
        &node(),
        &mut warnings,
    );
    assert_eq!(
        addrs(&eps),
        ["10.244.0.2:8080"],
        "ready only, the named port's target"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.object == "EndpointSlice default/web-a" && w.message.contains("\"bad\"")),
        "{warnings:?}"
    );
    // No ready endpoint left: the serving+terminating one is the fallback.
    let terminating_only = slice(
        "web-a",
        "web",
        "IPv4",
        json!([{"name": "http", "port": 8080}]),
        json!([ep_cond(
            "10.244.0.1",
            "n1",
            Some(false),
            Some(true),
            Some(true)
        )]),
    );
    let slices = [std::sync::Arc::new(terminating_only)];
    let refs: Vec<_> = slices.iter().collect();
    let eps = sluice_compute::port_endpoints(
        &headless,
        "http",
        Protocol::Tcp,
        &refs,
        &node(),
        &mut Vec::new(),
    );
    assert_eq!(addrs(&eps), ["10.244.0.1:8080"]);
    assert!(!eps[0].ready);
    let eps = sluice_compute::port_endpoints(
        &headless,
        "other",
        Protocol::Tcp,
        &refs,
        &node(),
        &mut Vec::new(),
    );
    assert!(eps.is_empty(), "unknown port name");
}

//! Table tests for endpoint collection: slices → endpoints of each service port.

mod common;

use common::*;
use serde_json::json;
use sluice_plan::{Protocol, SourceClass};

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
            addrs(&tcp_port(&computed, "web", case).cluster),
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
        addrs(&tcp_port(&computed, "web", "fqdn").cluster),
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
    let get = |name: &str, proto| addrs(&port_plan(&computed, "web", name, proto, name).cluster);
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
    // (ready, serving, terminating) → is the endpoint used when it is alone, and next to a
    // ready endpoint? (A serving+terminating endpoint is only a fallback: a ready one hides it.)
    let cases = [
        ("all unset = ready", None, None, None, true, true),
        ("ready", Some(true), None, Some(false), true, true),
        (
            "not ready, serving unset follows ready",
            Some(false),
            None,
            Some(true),
            false,
            false,
        ),
        (
            "serving+terminating fallback",
            Some(false),
            Some(true),
            Some(true),
            true,
            false,
        ),
        (
            "serving but not terminating",
            Some(false),
            Some(true),
            None,
            false,
            false,
        ),
        (
            "terminating, not serving",
            Some(false),
            Some(false),
            Some(true),
            false,
            false,
        ),
    ];
    for (case, ready, serving, terminating, alone, beside_ready) in cases {
        let tested = ep_cond("10.244.0.1", "n1", ready, serving, terminating);
        let computed = run(
            vec![service("web", json!({}))],
            vec![slice4("web-a", "web", 8080, json!([tested]))],
        );
        let plan = tcp_port(&computed, "web", case);
        let expected: Vec<&str> = if alone {
            vec!["10.244.0.1:8080"]
        } else {
            vec![]
        };
        assert_eq!(addrs(&plan.cluster), expected, "{case}: alone");
        // Nothing usable at all: the cluster IP refuses instead of forwarding.
        let fe = frontend(plan, "10.96.0.1:80/tcp", case);
        assert_eq!(
            routes(fe),
            [if alone { FWD_C } else { REJECT }; 3],
            "{case}"
        );

        let computed = run(
            vec![service("web", json!({}))],
            vec![slice4(
                "web-a",
                "web",
                8080,
                json!([tested, ep("10.244.0.2", "n2")]),
            )],
        );
        let mut expected = vec!["10.244.0.2:8080"];
        if beside_ready {
            expected.insert(0, "10.244.0.1:8080");
        }
        assert_eq!(
            addrs(&tcp_port(&computed, "web", case).cluster),
            expected,
            "{case}: next to a ready endpoint"
        );
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
            vec![service("web", json!({ "internalTrafficPolicy": "Local" }))],
            vec![slice4("web-a", "web", 8080, json!([endpoint]))],
        );
        let plan = tcp_port(&computed, "web", case);
        assert_eq!(addrs(&plan.cluster), ["10.244.0.1:8080"], "{case}");
        let local: Vec<&str> = if expected {
            vec!["10.244.0.1:8080"]
        } else {
            vec![]
        };
        assert_eq!(addrs(&plan.local), local, "{case}");
        // iTP=Local: the cluster IP forwards to it only when it is ours.
        assert_eq!(
            route(&computed, "web", "10.96.0.1:80/tcp", SourceClass::Pods),
            if expected { FWD_L } else { DROP },
            "{case}"
        );
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
        addrs(&tcp_port(&computed, "web", "first").cluster),
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
            addrs(&tcp_port(&computed, "web", case).cluster),
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
            .cluster
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
        // The stale copy (neither ready nor serving) would leave nothing to forward to.
        let plan = tcp_port(&computed, "web", case);
        assert_eq!(addrs(&plan.cluster), ["10.244.0.1:8080"], "{case}");
        assert_eq!(
            routes(frontend(plan, "10.96.0.1:80/tcp", case)),
            [FWD_C; 3],
            "{case}"
        );
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

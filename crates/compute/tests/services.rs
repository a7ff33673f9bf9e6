//! Table tests for the Service-level rules (which services and ports exist, their frontends,
//! policies and affinity).

mod common;

use common::*;
use serde_json::json;
use sluice_model::{Protocol, TrafficPolicy};

#[test]
fn skips_external_name_headless_and_services_without_cluster_ip() {
    let cases = [
        ("plain ClusterIP", json!({ "clusterIP": "10.96.0.5" }), true),
        (
            "ExternalName",
            json!({ "type": "ExternalName", "externalName": "example.org", "clusterIP": "10.96.0.5" }),
            false,
        ),
        ("headless", json!({ "clusterIP": "None" }), false),
        (
            "headless via clusterIPs",
            json!({ "clusterIPs": ["None"] }),
            false,
        ),
        ("no cluster IP yet", json!({ "clusterIP": "" }), false),
        (
            "selectorless ClusterIP",
            json!({ "clusterIP": "10.96.0.6", "selector": null }),
            true,
        ),
    ];
    for (case, spec, expected) in cases {
        let computed = run(vec![service("web", spec)], vec![]);
        assert_eq!(!computed.state.services.is_empty(), expected, "{case}");
        assert!(
            computed.warnings.is_empty(),
            "{case}: {:?}",
            computed.warnings
        );
    }
}

#[test]
fn cluster_ips_come_from_cluster_ips_then_cluster_ip() {
    let cases: [(&str, serde_json::Value, Option<Vec<&str>>, bool); 5] = [
        (
            "dual-stack",
            json!({ "clusterIPs": ["10.96.0.7", "fd00::7"] }),
            Some(vec!["10.96.0.7", "fd00::7"]),
            false,
        ),
        (
            "IPv6 primary keeps spec order",
            json!({ "clusterIPs": ["fd00::7", "10.96.0.7"] }),
            Some(vec!["fd00::7", "10.96.0.7"]),
            false,
        ),
        (
            "only clusterIP",
            json!({ "clusterIP": "10.96.0.8" }),
            Some(vec!["10.96.0.8"]),
            false,
        ),
        (
            "one unparsable",
            json!({ "clusterIPs": ["10.96.0.999", "fd00::9"] }),
            Some(vec!["fd00::9"]),
            true,
        ),
        (
            "all unparsable",
            json!({ "clusterIP": "banana" }),
            None,
            true,
        ),
    ];
    for (case, spec, expected, warns) in cases {
        let computed = run(vec![service("web", spec)], vec![]);
        let got = computed
            .state
            .services
            .get(&port_name("web", "", Protocol::Tcp))
            .map(|s| s.cluster_ips.clone());
        assert_eq!(got, expected.map(|e| ips(&e)), "{case}");
        assert_eq!(
            has_warning(&computed, "Service default/web", "clusterIPs"),
            warns,
            "{case}: {:?}",
            computed.warnings
        );
    }
}

#[test]
fn one_service_port_name_per_valid_port() {
    let p = |name: &str, proto| port_name("web", name, proto);
    let cases = [
        (
            "unnamed defaults to TCP",
            json!([{ "port": 80 }]),
            vec![(p("", Protocol::Tcp), 80)],
            None,
        ),
        (
            "named UDP and SCTP",
            json!([{ "name": "dns", "port": 53, "protocol": "UDP" }, { "name": "sig", "port": 3868, "protocol": "SCTP" }]),
            vec![
                (p("dns", Protocol::Udp), 53),
                (p("sig", Protocol::Sctp), 3868),
            ],
            None,
        ),
        (
            "same number, two protocols",
            json!([{ "name": "dns-udp", "port": 53, "protocol": "UDP" }, { "name": "dns-tcp", "port": 53, "protocol": "TCP" }]),
            vec![
                (p("dns-tcp", Protocol::Tcp), 53),
                (p("dns-udp", Protocol::Udp), 53),
            ],
            None,
        ),
        (
            "unknown protocol skipped",
            json!([{ "name": "a", "port": 1, "protocol": "ICMP" }, { "name": "b", "port": 2 }]),
            vec![(p("b", Protocol::Tcp), 2)],
            Some("unknown protocol \"ICMP\""),
        ),
        (
            "port out of range skipped",
            json!([{ "name": "a", "port": 70000 }, { "name": "b", "port": 2 }]),
            vec![(p("b", Protocol::Tcp), 2)],
            Some("port 70000"),
        ),
        (
            "port zero skipped",
            json!([{ "name": "a", "port": 0 }]),
            vec![],
            Some("port 0"),
        ),
        (
            "duplicate name skipped",
            json!([{ "name": "a", "port": 1 }, { "name": "a", "port": 2 }]),
            vec![(p("a", Protocol::Tcp), 1)],
            Some("duplicate port"),
        ),
    ];
    for (case, ports, expected, warning) in cases {
        let computed = run(vec![service("web", json!({ "ports": ports }))], vec![]);
        let got: Vec<_> = computed
            .state
            .services
            .iter()
            .map(|(k, v)| (k.clone(), v.port))
            .collect();
        assert_eq!(got, expected, "{case}");
        match warning {
            Some(needle) => assert!(
                has_warning(&computed, "Service default/web", needle),
                "{case}: {:?}",
                computed.warnings
            ),
            None => assert!(
                computed.warnings.is_empty(),
                "{case}: {:?}",
                computed.warnings
            ),
        }
    }
}

#[test]
fn node_port_only_for_node_port_and_load_balancer() {
    let cases = [
        (
            "ClusterIP ignores a stray nodePort",
            "ClusterIP",
            json!(30080),
            None,
            false,
        ),
        ("NodePort", "NodePort", json!(30080), Some(30080), false),
        (
            "LoadBalancer",
            "LoadBalancer",
            json!(30080),
            Some(30080),
            false,
        ),
        (
            "LoadBalancer without node ports",
            "LoadBalancer",
            json!(null),
            None,
            false,
        ),
        ("nodePort out of range", "NodePort", json!(-1), None, true),
    ];
    for (case, kind, node_port, expected, warns) in cases {
        let spec = json!({ "type": kind, "ports": [{ "port": 80, "nodePort": node_port }] });
        let computed = run(vec![service("web", spec)], vec![]);
        let state = tcp_port(&computed, "web", case);
        assert_eq!(state.node_port, expected, "{case}");
        assert_eq!(
            has_warning(&computed, "Service default/web", "nodePort"),
            warns,
            "{case}: {:?}",
            computed.warnings
        );
    }
}

#[test]
fn external_ips_apply_to_any_type_sorted_and_unique() {
    let cases = [
        (
            "ClusterIP",
            "ClusterIP",
            json!(["203.0.113.9", "203.0.113.2", "203.0.113.9"]),
            vec!["203.0.113.2", "203.0.113.9"],
            false,
        ),
        (
            "NodePort, dual-stack",
            "NodePort",
            json!(["2001:db8::1", "203.0.113.2"]),
            vec!["203.0.113.2", "2001:db8::1"],
            false,
        ),
        (
            "bad one skipped",
            "ClusterIP",
            json!(["203.0.113.300", "203.0.113.2"]),
            vec!["203.0.113.2"],
            true,
        ),
        ("none", "ClusterIP", json!(null), vec![], false),
    ];
    for (case, kind, external, expected, warns) in cases {
        let computed = run(
            vec![service(
                "web",
                json!({ "type": kind, "externalIPs": external }),
            )],
            vec![],
        );
        assert_eq!(
            tcp_port(&computed, "web", case).external_ips,
            ips(&expected),
            "{case}"
        );
        assert_eq!(
            has_warning(&computed, "Service default/web", "externalIPs"),
            warns,
            "{case}: {:?}",
            computed.warnings
        );
    }
}

#[test]
fn load_balancer_ips_from_status_of_load_balancers_only() {
    let ingress = json!([
        { "ip": "198.51.100.7" },
        { "ip": "198.51.100.3", "ipMode": "VIP" },
        { "ip": "198.51.100.9", "ipMode": "Proxy" },
        { "hostname": "lb.example.org" },
    ]);
    let cases = [
        (
            "LoadBalancer",
            "LoadBalancer",
            ingress.clone(),
            vec!["198.51.100.3", "198.51.100.7"],
            false,
        ),
        (
            "stale status on a NodePort",
            "NodePort",
            ingress,
            vec![],
            false,
        ),
        (
            "bad IP skipped",
            "LoadBalancer",
            json!([{ "ip": "not-an-ip" }, { "ip": "198.51.100.1" }]),
            vec!["198.51.100.1"],
            true,
        ),
    ];
    for (case, kind, ingress, expected, warns) in cases {
        let svc = service_full(json!({
            "metadata": { "namespace": "default", "name": "web" },
            "spec": { "type": kind, "ports": [{ "port": 80, "nodePort": 30080 }] },
            "status": { "loadBalancer": { "ingress": ingress } },
        }));
        let computed = run(vec![svc], vec![]);
        assert_eq!(
            tcp_port(&computed, "web", case).load_balancer_ips,
            ips(&expected),
            "{case}"
        );
        assert_eq!(
            has_warning(&computed, "Service default/web", "loadBalancer.ingress"),
            warns,
            "{case}: {:?}",
            computed.warnings
        );
    }
}

#[test]
fn load_balancer_source_ranges_from_spec_or_annotation() {
    const ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";
    let cases = [
        (
            "spec",
            json!(["10.1.2.3/8", "192.0.2.0/24"]),
            None,
            vec!["10.0.0.0/8", "192.0.2.0/24"],
            false,
        ),
        (
            "annotation",
            json!(null),
            Some(" 192.0.2.0/24, 2001:db8::/32 ,"),
            vec!["192.0.2.0/24", "2001:db8::/32"],
            false,
        ),
        (
            "spec wins",
            json!(["198.51.100.0/24"]),
            Some("192.0.2.0/24"),
            vec!["198.51.100.0/24"],
            false,
        ),
        (
            "invalid skipped",
            json!(["192.0.2.0/33", "198.51.100.0/24"]),
            None,
            vec!["198.51.100.0/24"],
            true,
        ),
        (
            "invalid in annotation",
            json!(null),
            Some("nope"),
            vec![],
            true,
        ),
    ];
    for (case, ranges, annotation, expected, warns) in cases {
        let annotations = annotation
            .map(|a| json!({ ANNOTATION: a }))
            .unwrap_or(json!({}));
        let svc = service_full(json!({
            "metadata": { "namespace": "default", "name": "web", "annotations": annotations },
            "spec": { "type": "LoadBalancer", "loadBalancerSourceRanges": ranges },
        }));
        let computed = run(vec![svc], vec![]);
        let expected: Vec<ipnet::IpNet> =
            expected.iter().map(|s| s.parse().expect("cidr")).collect();
        assert_eq!(
            tcp_port(&computed, "web", case).load_balancer_source_ranges,
            expected,
            "{case}"
        );
        assert_eq!(
            computed.warnings.len(),
            usize::from(warns),
            "{case}: {:?}",
            computed.warnings
        );
    }
}

#[test]
fn health_check_node_port_only_for_local_load_balancers() {
    let cases = [
        (
            "LB + Local",
            "LoadBalancer",
            "Local",
            json!(32000),
            Some(32000),
            false,
        ),
        (
            "LB + Cluster",
            "LoadBalancer",
            "Cluster",
            json!(32000),
            None,
            false,
        ),
        (
            "NodePort + Local",
            "NodePort",
            "Local",
            json!(32000),
            None,
            false,
        ),
        (
            "LB + Local without port",
            "LoadBalancer",
            "Local",
            json!(null),
            None,
            true,
        ),
    ];
    for (case, kind, policy, hc, expected, warns) in cases {
        let spec =
            json!({ "type": kind, "externalTrafficPolicy": policy, "healthCheckNodePort": hc });
        let computed = run(vec![service("web", spec)], vec![]);
        assert_eq!(
            tcp_port(&computed, "web", case).health_check_node_port,
            expected,
            "{case}"
        );
        assert_eq!(
            has_warning(&computed, "Service default/web", "healthCheckNodePort"),
            warns,
            "{case}: {:?}",
            computed.warnings
        );
    }
}

#[test]
fn session_affinity_client_ip_timeout() {
    let cases = [
        ("no affinity", json!(null), json!(null), None, false),
        ("explicit None", json!("None"), json!(null), None, false),
        (
            "ClientIP default timeout",
            json!("ClientIP"),
            json!(null),
            Some(10_800),
            false,
        ),
        (
            "ClientIP 60s",
            json!("ClientIP"),
            json!({ "clientIP": { "timeoutSeconds": 60 } }),
            Some(60),
            false,
        ),
        (
            "ClientIP invalid timeout",
            json!("ClientIP"),
            json!({ "clientIP": { "timeoutSeconds": 0 } }),
            Some(10_800),
            true,
        ),
        ("unknown value", json!("Cookie"), json!(null), None, true),
    ];
    for (case, affinity, config, expected, warns) in cases {
        let spec = json!({ "sessionAffinity": affinity, "sessionAffinityConfig": config });
        let computed = run(vec![service("web", spec)], vec![]);
        assert_eq!(
            tcp_port(&computed, "web", case).session_affinity_timeout,
            expected,
            "{case}"
        );
        assert_eq!(
            !computed.warnings.is_empty(),
            warns,
            "{case}: {:?}",
            computed.warnings
        );
    }
}

#[test]
fn external_traffic_policy_local_only_when_externally_reachable() {
    use TrafficPolicy::{Cluster, Local};
    let cases = [
        (
            "ClusterIP + Local is meaningless",
            json!({ "externalTrafficPolicy": "Local" }),
            Cluster,
        ),
        (
            "ClusterIP + externalIPs + Local",
            json!({ "externalTrafficPolicy": "Local", "externalIPs": ["203.0.113.1"] }),
            Local,
        ),
        (
            "NodePort + Local",
            json!({ "type": "NodePort", "externalTrafficPolicy": "Local" }),
            Local,
        ),
        (
            "LoadBalancer + Cluster",
            json!({ "type": "LoadBalancer", "externalTrafficPolicy": "Cluster" }),
            Cluster,
        ),
        ("NodePort default", json!({ "type": "NodePort" }), Cluster),
    ];
    for (case, spec, expected) in cases {
        let computed = run(vec![service("web", spec)], vec![]);
        assert_eq!(
            tcp_port(&computed, "web", case).external_traffic_policy,
            expected,
            "{case}"
        );
    }
}

#[test]
fn internal_traffic_policy_from_spec() {
    use TrafficPolicy::{Cluster, Local};
    let cases = [
        ("absent", json!(null), Cluster, false),
        ("Cluster", json!("Cluster"), Cluster, false),
        ("Local", json!("Local"), Local, false),
        ("unknown", json!("Nearby"), Cluster, true),
    ];
    for (case, policy, expected, warns) in cases {
        let computed = run(
            vec![service("web", json!({ "internalTrafficPolicy": policy }))],
            vec![],
        );
        assert_eq!(
            tcp_port(&computed, "web", case).internal_traffic_policy,
            expected,
            "{case}"
        );
        assert_eq!(
            has_warning(&computed, "Service default/web", "internalTrafficPolicy"),
            warns,
            "{case}"
        );
    }
}

#[test]
fn selectorless_service_uses_manual_endpoint_slices() {
    let svc = service(
        "ext-db",
        json!({ "clusterIP": "10.96.1.1", "ports": [{ "port": 5432 }] }),
    );
    let manual = slice4(
        "ext-db-1",
        "ext-db",
        5432,
        json!([{ "addresses": ["172.16.0.9"] }]),
    );
    let computed = run(vec![svc], vec![manual]);
    let state = tcp_port(&computed, "ext-db", "selectorless");
    assert_eq!(addrs(&state.cluster_endpoints), ["172.16.0.9:5432"]);
    assert!(state.has_any_endpoints);
}

#[test]
fn malformed_service_does_not_disturb_others() {
    let good = || {
        service(
            "good",
            json!({ "clusterIP": "10.96.0.2", "externalIPs": ["203.0.113.1"] }),
        )
    };
    let good_slice = || slice4("good-1", "good", 8080, json!([ep("10.244.0.2", NODE)]));
    let alone = run(vec![good()], vec![good_slice()]);
    let bad_spec = service(
        "bad",
        json!({
            "clusterIP": "nonsense", "externalIPs": ["x"], "ports": [{ "port": 99999, "protocol": "FOO" }],
        }),
    );
    let no_spec: k8s_openapi::api::core::v1::Service =
        serde_json::from_value(json!({ "metadata": { "namespace": "default", "name": "empty" } }))
            .expect("json");
    let bad_slice = slice4("bad-1", "bad", 8080, json!([{ "addresses": ["zzz"] }]));
    let mixed = run(
        vec![good(), bad_spec, no_spec],
        vec![good_slice(), bad_slice],
    );
    assert_eq!(mixed.state, alone.state);
    assert!(
        has_warning(&mixed, "Service default/bad", "clusterIPs"),
        "{:?}",
        mixed.warnings
    );
    assert!(
        has_warning(&mixed, "Service default/empty", "no spec"),
        "{:?}",
        mixed.warnings
    );
    assert!(
        mixed
            .warnings
            .iter()
            .all(|w| w.object != "Service default/good"),
        "{:?}",
        mixed.warnings
    );
}

//! Table tests for the Service-level rules (which services and ports exist, their frontends,
//! policies and affinity).

mod common;

use common::*;
use serde_json::json;
use sluice_plan::{FrontendKind, Protocol, SourceClass};

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
        assert_eq!(!computed.plan.services.is_empty(), expected, "{case}");
        assert!(
            computed.warnings.is_empty(),
            "{case}: {:?}",
            computed.warnings
        );
    }
}

#[test]
fn cluster_ips_come_from_cluster_ips_then_cluster_ip() {
    // The plan lists frontends sorted by key, so the primary family (spec order) is no longer
    // visible; what is observable is which cluster IPs get a frontend.
    let cases: [(&str, serde_json::Value, Option<Vec<&str>>, bool); 7] = [
        (
            "dual-stack",
            json!({ "clusterIPs": ["10.96.0.7", "fd00::7"] }),
            Some(vec!["10.96.0.7:80/tcp", "[fd00::7]:80/tcp"]),
            false,
        ),
        (
            "IPv6 primary: both families, sorted",
            json!({ "clusterIPs": ["fd00::7", "10.96.0.7"] }),
            Some(vec!["10.96.0.7:80/tcp", "[fd00::7]:80/tcp"]),
            false,
        ),
        (
            "only clusterIP",
            json!({ "clusterIP": "10.96.0.8" }),
            Some(vec!["10.96.0.8:80/tcp"]),
            false,
        ),
        (
            "one unparsable",
            json!({ "clusterIPs": ["10.96.0.999", "fd00::9"] }),
            Some(vec!["[fd00::9]:80/tcp"]),
            true,
        ),
        (
            "all unparsable",
            json!({ "clusterIP": "banana" }),
            None,
            true,
        ),
        (
            "clusterIP other than clusterIPs[0]: named, clusterIPs used",
            json!({ "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.11", "fd00::11"] }),
            Some(vec!["10.96.0.11:80/tcp", "[fd00::11]:80/tcp"]),
            true,
        ),
        (
            "two of one family: the first kept, the second named",
            json!({ "clusterIPs": ["10.96.0.12", "10.96.0.13"] }),
            Some(vec!["10.96.0.12:80/tcp"]),
            true,
        ),
    ];
    for (case, spec, expected, warns) in cases {
        let computed = run(vec![service("web", spec)], vec![]);
        let got = computed
            .plan
            .services
            .get(&port_name("web", "", Protocol::Tcp))
            .map(|s| frontends_of(s, FrontendKind::ClusterIp));
        let expected = expected.map(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>());
        assert_eq!(got, expected, "{case}");
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
            vec![(p("", Protocol::Tcp), "10.96.0.1:80/tcp")],
            None,
        ),
        (
            "named UDP and SCTP",
            json!([{ "name": "dns", "port": 53, "protocol": "UDP" }, { "name": "sig", "port": 3868, "protocol": "SCTP" }]),
            vec![
                (p("dns", Protocol::Udp), "10.96.0.1:53/udp"),
                (p("sig", Protocol::Sctp), "10.96.0.1:3868/sctp"),
            ],
            None,
        ),
        (
            "same number, two protocols",
            json!([{ "name": "dns-udp", "port": 53, "protocol": "UDP" }, { "name": "dns-tcp", "port": 53, "protocol": "TCP" }]),
            vec![
                (p("dns-tcp", Protocol::Tcp), "10.96.0.1:53/tcp"),
                (p("dns-udp", Protocol::Udp), "10.96.0.1:53/udp"),
            ],
            None,
        ),
        (
            "unknown protocol skipped",
            json!([{ "name": "a", "port": 1, "protocol": "ICMP" }, { "name": "b", "port": 2 }]),
            vec![(p("b", Protocol::Tcp), "10.96.0.1:2/tcp")],
            Some("unknown protocol \"ICMP\""),
        ),
        (
            "port out of range skipped",
            json!([{ "name": "a", "port": 70000 }, { "name": "b", "port": 2 }]),
            vec![(p("b", Protocol::Tcp), "10.96.0.1:2/tcp")],
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
            vec![(p("a", Protocol::Tcp), "10.96.0.1:1/tcp")],
            Some("duplicate port"),
        ),
    ];
    for (case, ports, expected, warning) in cases {
        let computed = run(vec![service("web", json!({ "ports": ports }))], vec![]);
        let got: Vec<_> = computed
            .plan
            .services
            .iter()
            .map(|(k, v)| (k.clone(), frontend_list(v)))
            .collect();
        let expected: Vec<_> = expected
            .into_iter()
            .map(|(name, key)| (name, vec![format!("{key} cluster-ip")]))
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
            vec![],
            false,
        ),
        (
            "NodePort",
            "NodePort",
            json!(30080),
            vec!["nodeports-v4:30080/tcp"],
            false,
        ),
        (
            "LoadBalancer",
            "LoadBalancer",
            json!(30080),
            vec!["nodeports-v4:30080/tcp"],
            false,
        ),
        (
            "LoadBalancer without node ports",
            "LoadBalancer",
            json!(null),
            vec![],
            false,
        ),
        ("nodePort out of range", "NodePort", json!(-1), vec![], true),
    ];
    for (case, kind, node_port, expected, warns) in cases {
        let spec = json!({ "type": kind, "ports": [{ "port": 80, "nodePort": node_port }] });
        let computed = run(vec![service("web", spec)], vec![]);
        let plan = tcp_port(&computed, "web", case);
        assert_eq!(
            frontends_of(plan, FrontendKind::NodePort),
            expected,
            "{case}"
        );
        // The cluster IP frontend is there whatever happens to the node port.
        assert_eq!(
            frontends_of(plan, FrontendKind::ClusterIp),
            ["10.96.0.1:80/tcp"],
            "{case}"
        );
        assert_eq!(
            has_warning(&computed, "Service default/web", "nodePort"),
            warns,
            "{case}: {:?}",
            computed.warnings
        );
    }
}

#[test]
fn node_ports_exist_per_cluster_ip_family() {
    let cases = [
        ("IPv4", json!(["10.96.0.1"]), vec!["nodeports-v4:30080/tcp"]),
        ("IPv6", json!(["fd00::1"]), vec!["nodeports-v6:30080/tcp"]),
        (
            "dual-stack",
            json!(["fd00::1", "10.96.0.1"]),
            vec!["nodeports-v4:30080/tcp", "nodeports-v6:30080/tcp"],
        ),
    ];
    for (case, cluster_ips, expected) in cases {
        let spec = json!({ "type": "NodePort", "clusterIPs": cluster_ips, "ports": [{ "port": 80, "nodePort": 30080 }] });
        let computed = run(vec![service("web", spec)], vec![]);
        assert_eq!(
            frontends_of(tcp_port(&computed, "web", case), FrontendKind::NodePort),
            expected,
            "{case}"
        );
    }
}

#[test]
fn external_ips_apply_to_any_type_sorted_and_unique() {
    let cases = [
        (
            "ClusterIP",
            "ClusterIP",
            json!(["10.96.0.1"]),
            json!(["203.0.113.9", "203.0.113.2", "203.0.113.9"]),
            vec!["203.0.113.2:80/tcp", "203.0.113.9:80/tcp"],
            false,
        ),
        (
            "NodePort, dual-stack",
            "NodePort",
            json!(["10.96.0.1", "fd00::1"]),
            json!(["2001:db8::1", "203.0.113.2"]),
            vec!["203.0.113.2:80/tcp", "[2001:db8::1]:80/tcp"],
            false,
        ),
        (
            "IPv6 externalIP on an IPv4-only service skipped",
            "ClusterIP",
            json!(["10.96.0.1"]),
            json!(["2001:db8::1", "203.0.113.2"]),
            vec!["203.0.113.2:80/tcp"],
            true,
        ),
        (
            "bad one skipped",
            "ClusterIP",
            json!(["10.96.0.1"]),
            json!(["203.0.113.300", "203.0.113.2"]),
            vec!["203.0.113.2:80/tcp"],
            true,
        ),
        (
            "none",
            "ClusterIP",
            json!(["10.96.0.1"]),
            json!(null),
            vec![],
            false,
        ),
    ];
    for (case, kind, cluster_ips, external, expected, warns) in cases {
        let computed = run(
            vec![service(
                "web",
                json!({ "type": kind, "clusterIPs": cluster_ips, "externalIPs": external }),
            )],
            vec![],
        );
        assert_eq!(
            frontends_of(tcp_port(&computed, "web", case), FrontendKind::ExternalIp),
            expected,
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
            vec!["198.51.100.3:80/tcp", "198.51.100.7:80/tcp"],
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
            vec!["198.51.100.1:80/tcp"],
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
            frontends_of(
                tcp_port(&computed, "web", case),
                FrontendKind::LoadBalancerIp
            ),
            expected,
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
        // Dual-stack with an LB IP per family: the ranges become each LB IP's allowed sources,
        // per family.
        let svc = service_full(json!({
            "metadata": { "namespace": "default", "name": "web", "annotations": annotations },
            "spec": {
                "type": "LoadBalancer",
                "clusterIPs": ["10.96.0.1", "fd00::1"],
                "loadBalancerSourceRanges": ranges,
            },
            "status": { "loadBalancer": { "ingress": [{ "ip": "198.51.100.7" }, { "ip": "2001:db8:1::7" }] } },
        }));
        let computed = run(vec![svc], vec![]);
        let plan = tcp_port(&computed, "web", case);
        let mut allowed = Vec::new();
        for fe in &plan.frontends {
            if fe.kind != FrontendKind::LoadBalancerIp {
                assert!(fe.allowed_sources.is_empty(), "{case}: {fe}");
                continue;
            }
            let family = fe.key.family();
            assert!(
                fe.allowed_sources
                    .iter()
                    .all(|net| family.contains(&net.addr())),
                "{case}: ranges of the other family on {fe}"
            );
            allowed.extend(fe.allowed_sources.iter().copied());
        }
        allowed.sort();
        assert_eq!(allowed, nets(&expected), "{case}");
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
            vec![32000],
            false,
        ),
        (
            "LB + Cluster",
            "LoadBalancer",
            "Cluster",
            json!(32000),
            vec![],
            false,
        ),
        (
            "NodePort + Local",
            "NodePort",
            "Local",
            json!(32000),
            vec![],
            false,
        ),
        (
            "LB + Local without port",
            "LoadBalancer",
            "Local",
            json!(null),
            vec![],
            true,
        ),
    ];
    for (case, kind, policy, hc, expected, warns) in cases {
        let spec =
            json!({ "type": kind, "externalTrafficPolicy": policy, "healthCheckNodePort": hc });
        let computed = run(vec![service("web", spec)], vec![]);
        let ports: Vec<u16> = computed.plan.health_checks.keys().copied().collect();
        assert_eq!(ports, expected, "{case}");
        for check in computed.plan.health_checks.values() {
            assert_eq!(check.service.to_string(), "default/web", "{case}");
        }
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
            tcp_port(&computed, "web", case).affinity_timeout,
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
    // The only endpoint runs on another node: with eTP=Local, outside clients of an external
    // frontend are dropped here; with Cluster they are forwarded (masqueraded).
    let remote = || slice4("web-a", "web", 8080, json!([ep("10.244.2.1", "node-b")]));
    let cases = [
        (
            "NodePort + Local",
            json!({ "type": "NodePort", "externalTrafficPolicy": "Local", "ports": [{ "port": 80, "nodePort": 30080 }] }),
            "nodeports-v4:30080/tcp",
            DROP,
        ),
        (
            "ClusterIP + externalIPs + Local",
            json!({ "externalTrafficPolicy": "Local", "externalIPs": ["203.0.113.1"] }),
            "203.0.113.1:80/tcp",
            DROP,
        ),
        (
            "LoadBalancer + Cluster",
            json!({ "type": "LoadBalancer", "externalTrafficPolicy": "Cluster", "ports": [{ "port": 80, "nodePort": 30080 }] }),
            "nodeports-v4:30080/tcp",
            MASQ_C,
        ),
        (
            "NodePort default",
            json!({ "type": "NodePort", "ports": [{ "port": 80, "nodePort": 30080 }] }),
            "nodeports-v4:30080/tcp",
            MASQ_C,
        ),
    ];
    for (case, spec, key, expected) in cases {
        let computed = run(vec![service("web", spec)], vec![remote()]);
        assert_eq!(
            route(&computed, "web", key, SourceClass::Outside),
            expected,
            "{case}"
        );
        // The cluster IP is never subject to the external policy.
        assert_eq!(
            route(&computed, "web", "10.96.0.1:80/tcp", SourceClass::Outside),
            FWD_C,
            "{case}"
        );
    }
    // A ClusterIP service without external frontends: eTP=Local changes nothing at all.
    let plain = run(vec![service("web", json!({}))], vec![remote()]);
    let local = run(
        vec![service("web", json!({ "externalTrafficPolicy": "Local" }))],
        vec![remote()],
    );
    assert_eq!(local, plain, "ClusterIP + Local is meaningless");
}

#[test]
fn internal_traffic_policy_from_spec() {
    // The only endpoint runs on another node: iTP=Local leaves the cluster IP without a usable
    // endpoint (dropped); Cluster forwards to it.
    let cases = [
        ("absent", json!(null), FWD_C, false),
        ("Cluster", json!("Cluster"), FWD_C, false),
        ("Local", json!("Local"), DROP, false),
        ("unknown", json!("Nearby"), FWD_C, true),
    ];
    for (case, policy, expected, warns) in cases {
        let computed = run(
            vec![service("web", json!({ "internalTrafficPolicy": policy }))],
            vec![slice4(
                "web-a",
                "web",
                8080,
                json!([ep("10.244.2.1", "node-b")]),
            )],
        );
        let fe = frontend(tcp_port(&computed, "web", case), "10.96.0.1:80/tcp", case);
        assert_eq!(routes(fe), [expected; 3], "{case}");
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
    let plan = tcp_port(&computed, "ext-db", "selectorless");
    assert_eq!(addrs(&plan.cluster), ["172.16.0.9:5432"]);
    assert_eq!(
        routes(frontend(plan, "10.96.1.1:5432/tcp", "selectorless")),
        [FWD_C; 3]
    );
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
    assert_eq!(mixed.plan, alone.plan);
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

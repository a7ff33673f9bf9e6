//! Services contending for one frontend or health check port (the older Service wins), and
//! the rules that keep a Service from capturing the node's own traffic.

mod common;

use std::net::IpAddr;

use common::*;
use k8s_openapi::api::core::v1::Service;
use serde_json::{Value, json};
use sluice_compute::{ChangeSet, ComputeConfig, Computed, Planner, compute};
use sluice_model::ObjectKey;
use sluice_plan::{Protocol, SourceClass};

const OLD: &str = "2024-01-01T00:00:00Z";
const NEW: &str = "2024-06-01T00:00:00Z";

/// `default/<name>` created at `created` (none: no `creationTimestamp`), with its own cluster
/// IP (10.96.0.1x) and `spec`; `lbIPs` in the spec become status IPs.
fn svc(name: &str, created: Option<&str>, mut spec: Value) -> Service {
    let ingress: Vec<Value> = spec
        .as_object_mut()
        .and_then(|s| s.remove("lbIPs"))
        .map(|ips| {
            ips.as_array()
                .expect("list")
                .iter()
                .map(|ip| json!({ "ip": ip }))
                .collect()
        })
        .unwrap_or_default();
    if spec.get("clusterIP").is_none() {
        let host = 10 + name.as_bytes()[0] - b'a';
        spec["clusterIP"] = json!(format!("10.96.0.{host}"));
    }
    service_full(json!({
        "metadata": { "namespace": "default", "name": name, "creationTimestamp": created },
        "spec": spec,
        "status": { "loadBalancer": { "ingress": ingress } },
    }))
}

/// A ready endpoint of `default/<name>` (so that routes forward and backends tell Services
/// apart).
fn endpoints_of(name: &str, ip: &str) -> sluice_model::EndpointSlice {
    slice4(&format!("{name}-1"), name, 8080, json!([ep(ip, "node-b")]))
}

/// One kind of contended frontend: what it is, the spec of each contender (by name), the
/// contended frontend.
type Contended = (&'static str, fn(&str) -> Value, &'static str);

fn contended() -> Vec<Contended> {
    vec![
        (
            "externalIP",
            |_| json!({ "externalIPs": ["203.0.113.5"] }),
            "203.0.113.5:80/tcp",
        ),
        (
            "LoadBalancer IP",
            |name| {
                let node_port = if name == "a" { 30001 } else { 30002 };
                json!({ "type": "LoadBalancer", "lbIPs": ["198.51.100.5"], "ports": [{ "port": 80, "nodePort": node_port }] })
            },
            "198.51.100.5:80/tcp",
        ),
        (
            "nodePort",
            |_| json!({ "type": "NodePort", "ports": [{ "port": 80, "nodePort": 30080 }] }),
            "nodeports-v4:30080/tcp",
        ),
    ]
}

/// Whether `default/<name>`'s unnamed TCP port owns `key`.
fn owns(computed: &Computed, name: &str, key: &str) -> bool {
    computed
        .plan
        .services
        .get(&port_name(name, "", Protocol::Tcp))
        .is_some_and(|plan| plan.frontends.iter().any(|f| f.key.to_string() == key))
}

/// Plans `services` through one Planner, adding them one by one in this order.
fn plan_in_order(services: &[Service]) -> Computed {
    let mut planner = Planner::new(ComputeConfig::default());
    let mut snap = snapshot(
        vec![],
        vec![
            endpoints_of("a", "10.244.0.1"),
            endpoints_of("b", "10.244.0.2"),
        ],
    );
    planner.update(&snap, &ChangeSet::everything(), &node());
    for service in services {
        let key = ObjectKey::of(&service.metadata).expect("named");
        snap.services
            .insert(key.clone(), std::sync::Arc::new(service.clone()));
        let changes = ChangeSet {
            services: [key].into(),
            ..ChangeSet::default()
        };
        planner.update(&snap, &changes, &node());
    }
    Computed {
        plan: planner.plan().clone(),
        warnings: planner.warnings(),
    }
}

#[test]
fn the_older_service_wins_a_contended_frontend_whatever_the_names_and_order() {
    let ages = [
        ("a older", Some(OLD), Some(NEW), "a"),
        (
            "b older: name order does not matter",
            Some(NEW),
            Some(OLD),
            "b",
        ),
        ("same age: smaller name", Some(OLD), Some(OLD), "a"),
        ("a has no creationTimestamp: loses", None, Some(NEW), "b"),
        ("b has no creationTimestamp: loses", Some(NEW), None, "a"),
        ("neither has one: smaller name", None, None, "a"),
    ];
    for (what, spec, key) in contended() {
        for (age_case, a_created, b_created, winner) in ages {
            let case = format!("{what}, {age_case}");
            let loser = if winner == "a" { "b" } else { "a" };
            let a = svc("a", a_created, spec("a"));
            let b = svc("b", b_created, spec("b"));
            let scratch = run(
                vec![a.clone(), b.clone()],
                vec![
                    endpoints_of("a", "10.244.0.1"),
                    endpoints_of("b", "10.244.0.2"),
                ],
            );
            for (order, computed) in [
                ("from scratch", scratch.clone()),
                ("a added first", plan_in_order(&[a.clone(), b.clone()])),
                ("b added first", plan_in_order(&[b.clone(), a.clone()])),
            ] {
                assert_eq!(computed, scratch, "{case}: {order}");
                assert!(
                    owns(&computed, winner, key),
                    "{case}: {order}\n{}",
                    computed.plan
                );
                assert!(
                    !owns(&computed, loser, key),
                    "{case}: {order}\n{}",
                    computed.plan
                );
            }
            // The loser is told, naming the frontend and the winner; the winner is not.
            assert!(
                has_warning(
                    &scratch,
                    &format!("Service default/{loser}"),
                    &format!("{key} is already used by Service default/{winner}")
                ),
                "{case}: {:?}",
                scratch.warnings
            );
            assert_eq!(scratch.warnings.len(), 1, "{case}: {:?}", scratch.warnings);
            // The loser keeps everything else: its own cluster IP still forwards.
            let loser_plan = tcp_port(&scratch, loser, &case);
            let own_ip = if loser == "a" {
                "10.96.0.10:80/tcp"
            } else {
                "10.96.0.11:80/tcp"
            };
            assert_eq!(
                routes(frontend(loser_plan, own_ip, &case)),
                [FWD_C; 3],
                "{case}"
            );
        }
    }
}

#[test]
fn an_external_ip_equal_to_an_older_cluster_ip_is_refused() {
    let a = svc("a", Some(OLD), json!({ "clusterIP": "10.96.0.50" }));
    let b = svc("b", Some(NEW), json!({ "externalIPs": ["10.96.0.50"] }));
    let computed = run(vec![a, b], vec![endpoints_of("a", "10.244.0.1")]);
    let a_plan = tcp_port(&computed, "a", "older cluster IP");
    assert_eq!(frontend_list(a_plan), ["10.96.0.50:80/tcp cluster-ip"]);
    assert!(!owns(&computed, "b", "10.96.0.50:80/tcp"));
    assert!(
        has_warning(
            &computed,
            "Service default/b",
            "external-ip frontend 10.96.0.50:80/tcp is already used by Service default/a"
        ),
        "{:?}",
        computed.warnings
    );
}

#[test]
fn ports_that_do_not_conflict_are_unaffected() {
    // Both Services claim 203.0.113.5:80; only b also serves 443 there.
    let a = svc(
        "a",
        Some(OLD),
        json!({ "externalIPs": ["203.0.113.5"], "ports": [{ "name": "http", "port": 80 }] }),
    );
    let b = svc(
        "b",
        Some(NEW),
        json!({ "externalIPs": ["203.0.113.5"], "ports": [{ "name": "http", "port": 80 }, { "name": "https", "port": 443 }] }),
    );
    let slices = vec![
        slice(
            "a-1",
            "a",
            "IPv4",
            json!([{ "name": "http", "port": 8080 }]),
            json!([ep("10.244.0.1", "node-b")]),
        ),
        slice(
            "b-1",
            "b",
            "IPv4",
            json!([{ "name": "http", "port": 8080 }, { "name": "https", "port": 8443 }]),
            json!([ep("10.244.0.2", "node-b")]),
        ),
    ];
    let computed = run(vec![a, b], slices);
    let b_http = port_plan(&computed, "b", "http", Protocol::Tcp, "b http");
    assert_eq!(frontend_list(b_http), ["10.96.0.11:80/tcp cluster-ip"]);
    let b_https = port_plan(&computed, "b", "https", Protocol::Tcp, "b https");
    assert_eq!(
        frontend_list(b_https),
        [
            "10.96.0.11:443/tcp cluster-ip",
            "203.0.113.5:443/tcp external-ip"
        ]
    );
    assert_eq!(
        routes(frontend(b_https, "203.0.113.5:443/tcp", "b https")),
        [MASQ_C; 3]
    );
    let a_http = port_plan(&computed, "a", "http", Protocol::Tcp, "a http");
    assert_eq!(addrs(&a_http.cluster), ["10.244.0.1:8080"]);
    assert_eq!(
        computed.warnings.len(),
        1,
        "only b's http port lost: {:?}",
        computed.warnings
    );
}

#[test]
fn when_the_winner_is_deleted_the_loser_takes_over_incrementally() {
    for (what, spec, key) in contended() {
        let a = svc("a", Some(OLD), spec("a"));
        let b = svc("b", Some(NEW), spec("b"));
        let mut snap = snapshot(
            vec![a, b],
            vec![
                endpoints_of("a", "10.244.0.1"),
                endpoints_of("b", "10.244.0.2"),
            ],
        );
        let mut planner = Planner::new(ComputeConfig::default());
        planner.update(&snap, &ChangeSet::everything(), &node());
        assert_eq!(
            planner.warnings().len(),
            1,
            "{what}: {:?}",
            planner.warnings()
        );

        let a_key = ObjectKey::new("default", "a");
        snap.services.remove(&a_key);
        let changes = ChangeSet {
            services: [a_key].into(),
            ..ChangeSet::default()
        };
        let delta = planner.update(&snap, &changes, &node());
        let changed: Vec<String> = delta.services.iter().map(|c| c.name.to_string()).collect();
        assert_eq!(changed, ["default/a/tcp", "default/b/tcp"], "{what}");
        let b_after = delta.services[1].after.as_ref().expect("b still planned");
        let taken = frontend(b_after, key, what);
        assert!(taken.forwards(), "{what}: {taken}");
        assert_eq!(b_after.cluster[0].to_string(), "10.244.0.2:8080", "{what}");
        assert!(
            planner.warnings().is_empty(),
            "{what}: {:?}",
            planner.warnings()
        );
        assert_eq!(
            planner.fresh_warnings(),
            [],
            "{what}: nothing new to report"
        );
        assert_eq!(
            *planner.plan(),
            compute(&snap, &node(), &ComputeConfig::default()).plan,
            "{what}"
        );
    }
}

/// As the API server's `ValidateNonSpecialIP`: 0.0.0.0, loopback and link-local addresses
/// would capture the node's own or its link's traffic. Both fields, both families, an
/// IPv4-mapped IPv6 address judged as its IPv4 address; ordinary addresses kept.
#[test]
fn special_external_and_load_balancer_ips_are_refused() {
    let dual = json!({
        "clusterIPs": ["10.96.0.1", "fd00:10:96::1"],
        "ipFamilies": ["IPv4", "IPv6"],
    });
    let refused = [
        ("0.0.0.0", "the unspecified address"),
        ("::", "the unspecified address"),
        ("127.0.0.5", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("169.254.10.1", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("224.0.0.251", "a link-local multicast address"),
        ("ff02::fb", "a link-local multicast address"),
    ];
    let kept = ["203.0.113.5", "2001:db8::"];
    for (field, kind) in [
        ("spec.externalIPs[]", sluice_plan::FrontendKind::ExternalIp),
        (
            "status.loadBalancer.ingress[].ip",
            sluice_plan::FrontendKind::LoadBalancerIp,
        ),
    ] {
        let mut listed: Vec<&str> = refused.iter().map(|(ip, _)| *ip).collect();
        listed.extend(kept);
        let svc = if kind == sluice_plan::FrontendKind::ExternalIp {
            let mut spec = dual.clone();
            spec["externalIPs"] = json!(listed);
            service("web", spec)
        } else {
            load_balancer("web", dual.clone(), &listed)
        };
        let computed = run(vec![svc], vec![]);
        assert_eq!(
            frontends_of(tcp_port(&computed, "web", field), kind),
            vec!["203.0.113.5:80/tcp", "[2001:db8::]:80/tcp"],
            "{field}"
        );
        for (ip, what) in refused {
            let needle = format!("{field} {} is {what}", ip.parse::<IpAddr>().unwrap());
            assert!(
                has_warning(&computed, "Service default/web", &needle),
                "{field} {ip}: no warning {needle:?} in {:?}",
                computed.warnings
            );
        }
    }
}

#[test]
fn an_external_ip_that_is_a_node_address_is_refused_unless_allowed() {
    // 192.168.0.10 is our node's address: capturing it would hijack the node's own port 80.
    let spec = json!({ "externalIPs": ["192.168.0.10", "203.0.113.5"] });
    let cases = [
        (
            "refused by default",
            false,
            vec!["203.0.113.5:80/tcp"],
            true,
        ),
        (
            "allowed by flag",
            true,
            vec!["192.168.0.10:80/tcp", "203.0.113.5:80/tcp"],
            false,
        ),
    ];
    for (case, allow, expected, warns) in cases {
        let config = ComputeConfig {
            allow_external_ips_on_node_addresses: allow,
            ..ComputeConfig::default()
        };
        let computed = run_with(&config, vec![service("web", spec.clone())], vec![]);
        assert_eq!(
            frontends_of(
                tcp_port(&computed, "web", case),
                sluice_plan::FrontendKind::ExternalIp
            ),
            expected,
            "{case}"
        );
        assert_eq!(
            has_warning(
                &computed,
                "Service default/web",
                "externalIP 192.168.0.10 is an address of this node"
            ),
            warns,
            "{case}: {:?}",
            computed.warnings
        );
    }
}

#[test]
fn node_ports_on_reserved_ports_are_skipped_and_outside_the_range_reported() {
    let cases = [
        ("in range", 30080, vec!["nodeports-v4:30080/tcp"], None),
        (
            "reserved for the Ingress listener",
            30443,
            vec![],
            Some(
                "nodePort 30443 of port \"\" is the port of this agent's Ingress listener; NodePort skipped",
            ),
        ),
        (
            "outside the range: kept",
            8080,
            vec!["nodeports-v4:8080/tcp"],
            Some("nodePort 8080 of port \"\" is outside the node port range 30000-32767"),
        ),
    ];
    let config = ComputeConfig {
        reserved_node_ports: vec![30443],
        ..ComputeConfig::default()
    };
    for (case, node_port, expected, warning) in cases {
        let spec = json!({ "type": "NodePort", "ports": [{ "port": 80, "nodePort": node_port }] });
        let computed = run_with(&config, vec![service("web", spec)], vec![]);
        let plan = tcp_port(&computed, "web", case);
        assert_eq!(
            frontends_of(plan, sluice_plan::FrontendKind::NodePort),
            expected,
            "{case}"
        );
        assert_eq!(
            frontends_of(plan, sluice_plan::FrontendKind::ClusterIp),
            ["10.96.0.1:80/tcp"],
            "{case}: the rest of the Service is kept"
        );
        let messages: Vec<&str> = computed
            .warnings
            .iter()
            .map(|w| w.message.as_str())
            .collect();
        assert_eq!(messages, warning.into_iter().collect::<Vec<_>>(), "{case}");
    }
}

#[test]
fn service_proxy_name_label_selects_the_services_we_handle() {
    const LABEL: &str = "service.kubernetes.io/service-proxy-name";
    let cases = [
        ("no label, no name", None, None, true),
        ("no label, named proxy", None, Some("sluice"), true),
        ("label names us", Some("sluice"), Some("sluice"), true),
        (
            "label names another proxy",
            Some("other"),
            Some("sluice"),
            false,
        ),
        ("labelled, we have no name", Some("sluice"), None, false),
    ];
    for (case, label, proxy_name, handled) in cases {
        let labels = label.map(|l| json!({ LABEL: l })).unwrap_or(json!({}));
        let svc = service_full(json!({
            "metadata": { "namespace": "default", "name": "web", "labels": labels },
            "spec": { "type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000 },
        }));
        let config = ComputeConfig {
            service_proxy_name: proxy_name.map(str::to_owned),
            ..ComputeConfig::default()
        };
        let computed = run_with(&config, vec![svc], vec![]);
        assert_eq!(!computed.plan.services.is_empty(), handled, "{case}");
        assert_eq!(!computed.plan.health_checks.is_empty(), handled, "{case}");
        assert!(
            computed.warnings.is_empty(),
            "{case}: {:?}",
            computed.warnings
        );
    }
}

fn local_lb(name: &str, created: Option<&str>, health_port: u16) -> Service {
    svc(
        name,
        created,
        json!({ "type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": health_port }),
    )
}

#[test]
fn two_services_with_one_health_check_port_the_older_serves_it() {
    let cases = [
        ("a older", Some(OLD), Some(NEW), "a", "b"),
        ("b older", Some(NEW), Some(OLD), "b", "a"),
    ];
    for (case, a_created, b_created, winner, loser) in cases {
        let mut snap = snapshot(
            vec![
                local_lb("a", a_created, 32000),
                local_lb("b", b_created, 32000),
                local_lb("c", None, 32001),
            ],
            vec![slice4("b-1", "b", 8080, json!([ep("10.244.1.1", NODE)]))],
        );
        let mut planner = Planner::new(ComputeConfig::default());
        planner.update(&snap, &ChangeSet::everything(), &node());
        let checks: Vec<(u16, String)> = planner
            .plan()
            .health_checks
            .iter()
            .map(|(port, check)| (*port, check.service.to_string()))
            .collect();
        assert_eq!(
            checks,
            [
                (32000, format!("default/{winner}")),
                (32001, "default/c".to_owned())
            ],
            "{case}"
        );
        assert_eq!(
            planner
                .warnings()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            [format!(
                "Service default/{loser}: healthCheckNodePort 32000 is already served for Service default/{winner}; skipped here"
            )],
            "{case}"
        );

        // The winner goes away: the other Service serves the port, with its own count.
        let key = ObjectKey::new("default", winner);
        snap.services.remove(&key);
        let delta = planner.update(
            &snap,
            &ChangeSet {
                services: [key].into(),
                ..ChangeSet::default()
            },
            &node(),
        );
        let checks = delta.health_checks.expect("health checks changed");
        assert_eq!(
            checks[&32000].service.to_string(),
            format!("default/{loser}"),
            "{case}"
        );
        assert_eq!(
            checks[&32000].local_endpoints,
            usize::from(loser == "b"),
            "{case}"
        );
        assert!(
            planner.warnings().is_empty(),
            "{case}: {:?}",
            planner.warnings()
        );
    }
}

#[test]
fn health_check_counts_ready_local_endpoints_only() {
    let dual = json!({ "clusterIPs": ["10.96.0.1", "fd00::1"] });
    let two_ports =
        json!({ "ports": [{ "name": "http", "port": 80 }, { "name": "https", "port": 443 }] });
    let cases = [
        (
            "two ready local pods",
            json!({}),
            vec![slice4(
                "s4",
                "web",
                8080,
                json!([ep("10.244.1.1", NODE), ep("10.244.1.2", NODE)]),
            )],
            2,
        ),
        (
            "terminating local pod not counted",
            json!({}),
            vec![slice4(
                "s4",
                "web",
                8080,
                json!([terminating("10.244.1.1", NODE), ep("10.244.2.1", "node-b")]),
            )],
            0,
        ),
        (
            "not-ready local pod not counted",
            json!({}),
            vec![slice4(
                "s4",
                "web",
                8080,
                json!([ep_cond("10.244.1.1", NODE, Some(false), None, None)]),
            )],
            0,
        ),
        (
            "remote pods not counted",
            json!({}),
            vec![slice4(
                "s4",
                "web",
                8080,
                json!([ep("10.244.2.1", "node-b")]),
            )],
            0,
        ),
        (
            "a dual-stack pod counts once",
            dual,
            vec![
                slice4("s4", "web", 8080, json!([ep("10.244.1.1", NODE)])),
                slice6("s6", "web", 8080, json!([ep("fd00:10:244:1::1", NODE)])),
            ],
            1,
        ),
        (
            // kube-proxy counts distinct ready local addresses over all ports of the Service.
            "pods serving different ports each count",
            two_ports.clone(),
            vec![
                slice(
                    "s-http",
                    "web",
                    "IPv4",
                    json!([{ "name": "http", "port": 8080 }]),
                    json!([ep("10.244.1.1", NODE)]),
                ),
                slice(
                    "s-https",
                    "web",
                    "IPv4",
                    json!([{ "name": "https", "port": 8443 }]),
                    json!([ep("10.244.1.2", NODE)]),
                ),
            ],
            2,
        ),
        (
            "a pod serving two ports counts once",
            two_ports,
            vec![slice(
                "s4",
                "web",
                "IPv4",
                json!([{ "name": "http", "port": 8080 }, { "name": "https", "port": 8443 }]),
                json!([ep("10.244.1.1", NODE)]),
            )],
            1,
        ),
    ];
    for (case, extra, slices, expected) in cases {
        let mut spec = json!({ "type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000 });
        for (k, v) in extra.as_object().expect("object") {
            spec[k] = v.clone();
        }
        let computed = run(vec![service("web", spec)], slices);
        let check = &computed.plan.health_checks[&32000];
        assert_eq!(check.service.to_string(), "default/web", "{case}");
        assert_eq!(check.local_endpoints, expected, "{case}");
    }
    // The terminating local pod still receives traffic (fallback) while the health check
    // already reports 0, so load balancers drain the node.
    let computed = run(
        vec![service(
            "web",
            json!({ "type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000, "ports": [{ "port": 80, "nodePort": 30080 }] }),
        )],
        vec![slice4(
            "s4",
            "web",
            8080,
            json!([terminating("10.244.1.1", NODE)]),
        )],
    );
    assert_eq!(
        route(
            &computed,
            "web",
            "nodeports-v4:30080/tcp",
            SourceClass::Outside
        ),
        FWD_L
    );
    assert_eq!(computed.plan.health_checks[&32000].local_endpoints, 0);
}

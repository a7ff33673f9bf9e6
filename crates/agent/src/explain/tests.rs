//! Walks through the plan and through the kernel, one per verdict, on the fixture of
//! `inspect/testdata/ebpf-objects.yaml` (node-a, 192.0.2.11).

use sluice_plan::Plan;

use super::*;
use crate::inspect::kernel::KernelView;
use crate::inspect::tests::plan_of;

fn fixture() -> Plan {
    plan_of(
        include_str!("../inspect/testdata/ebpf-objects.yaml"),
        "node-a",
        &["10.244.0.0/16"],
    )
}

fn node_addresses() -> Vec<IpAddr> {
    vec!["192.0.2.11".parse().unwrap()]
}

fn walk(plan: &Plan, dst: &str, from: Option<&str>) -> L4Walk {
    let dst: Destination = dst.parse().unwrap();
    let from = from.map(|f| f.parse().unwrap());
    let mut walks = walk_plan(plan, &node_addresses(), &[], &dst, from);
    assert_eq!(walks.len(), 1);
    walks.remove(0)
}

/// The eBPF maps the dataplane would program for `plan`, read back.
fn kernel_of(plan: &Plan) -> KernelView {
    crate::inspect::ebpf::view(&sluice_dp_ebpf::PinnedState::of_plan(plan))
}

/// (destination, --from, expected code) for every verdict an L4 walk can reach.
const CASES: &[(&str, Option<&str>, &str)] = &[
    ("10.96.0.10:80", Some("10.244.1.5"), "forwarded"),
    ("10.96.0.11:80/tcp", Some("10.244.1.5"), "no-endpoints"),
    (
        "192.0.2.11:30080",
        Some("198.51.100.7"),
        "no-local-endpoint",
    ),
    ("203.0.113.10:80", Some("192.0.2.100"), "source-range"),
    ("203.0.113.10:80", Some("198.51.100.7"), "forwarded"),
    (
        "192.0.2.12:30080",
        Some("198.51.100.7"),
        "not-a-nodeport-address",
    ),
    ("10.96.0.99:80", Some("10.244.1.5"), "no-route"),
];

#[test]
fn plan_walks_reach_each_verdict_with_its_reason() {
    let plan = fixture();
    for (dst, from, code) in CASES {
        let w = walk(&plan, dst, *from);
        assert_eq!(w.verdict.code, *code, "{dst} from {from:?}: {w:#?}");
    }
    let forwarded = walk(&plan, "10.96.0.10:80", Some("10.244.1.5"));
    assert_eq!(forwarded.class, "pods");
    assert_eq!(
        forwarded.verdict.backends,
        ["10.244.1.2:8080", "10.244.2.2:8080"]
    );
    assert!(forwarded.steps.iter().any(|s| s.what == "frontend"
        && s.detail == "10.96.0.10:80/tcp (cluster-ip) of service port default/web/tcp"));
    let local = walk(&plan, "192.0.2.11:30080", Some("198.51.100.7"));
    assert!(
        local
            .verdict
            .reason
            .starts_with("externalTrafficPolicy: Local"),
        "{}",
        local.verdict.reason
    );
    assert!(
        local
            .verdict
            .reason
            .contains("1 endpoint(s) on other nodes")
    );
    let range = walk(&plan, "203.0.113.10:80", Some("192.0.2.100"));
    assert!(range.verdict.reason.contains("198.51.100.0/24"));
    let not_np = walk(
        &plan,
        "192.0.2.12:30080",
        None::<&str>.or(Some("198.51.100.7")),
    );
    assert!(
        not_np
            .verdict
            .reason
            .contains("NodePorts listen on: 192.0.2.11")
    );
    let other_port = walk(&plan, "10.96.0.10:81", Some("10.244.1.5"));
    assert_eq!(other_port.verdict.code, "no-route");
    assert!(
        other_port
            .verdict
            .reason
            .contains("only for 10.96.0.10:80/tcp")
    );
}

#[test]
fn without_from_every_source_class_is_walked() {
    let plan = fixture();
    let dst: Destination = "192.0.2.11:30080".parse().unwrap();
    let walks = walk_plan(&plan, &node_addresses(), &[], &dst, None);
    let got: Vec<(&str, &str)> = walks
        .iter()
        .map(|w| (w.class.as_str(), w.verdict.code.as_str()))
        .collect();
    // Pods and node-local clients of an eTP=Local NodePort short-circuit to every endpoint
    // (kube-proxy's rule); only clients outside need a local one.
    assert_eq!(
        got,
        [
            ("pods", "forwarded"),
            ("node", "forwarded"),
            ("outside", "no-local-endpoint")
        ]
    );
    let node = walk(&plan, "192.0.2.11:30080", Some("192.0.2.11"));
    assert_eq!(node.class, "node");
}

#[test]
fn kernel_walks_reach_the_same_verdicts_as_the_plan() {
    let plan = fixture();
    let kernel = kernel_of(&plan);
    for (dst, from, code) in CASES {
        let parsed: Destination = dst.parse().unwrap();
        let from = from.map(|f| f.parse().unwrap());
        let walks = walk_kernel(&kernel, &node_addresses(), &parsed, from);
        assert_eq!(
            walks[0].verdict.code, *code,
            "{dst} from {from:?}: {:#?}",
            walks[0]
        );
        assert_eq!(walks[0].from_state, "kernel");
    }
}

/// The plan's walks checked against the maps the plan programs: they agree for every source
/// class (pods included: the eBPF maps keep the `pods` route where it differs).
#[test]
fn the_kernel_check_agrees_with_the_plan_for_every_class() {
    let plan = fixture();
    let kernel = kernel_of(&plan);
    let mut checked = 0;
    for (dst, _, _) in CASES {
        let parsed: Destination = dst.parse().unwrap();
        let mut walks = walk_plan(&plan, &node_addresses(), &[], &parsed, None);
        cross_check(&mut walks, &kernel);
        for w in walks.iter().filter(|w| w.expect.is_some()) {
            let check = w.kernel.as_ref().expect("checked");
            assert!(check.agrees, "{dst} {}: {}", w.class, check.detail);
            checked += 1;
        }
    }
    assert!(checked >= 9, "{checked} walks checked");
}

#[test]
fn the_kernel_check_finds_a_missing_backend() {
    let plan = fixture();
    let mut kernel = kernel_of(&plan);
    let dst: Destination = "10.96.0.10:80".parse().unwrap();
    let from = Some("192.0.2.11".parse().unwrap());
    let mut walks = walk_plan(&plan, &node_addresses(), &[], &dst, from);
    cross_check(&mut walks, &kernel);
    let check = walks[0].kernel.clone().unwrap();
    assert!(check.agrees, "{}", check.detail);

    let fe = kernel
        .frontends
        .iter_mut()
        .find(|fe| fe.key.to_string() == "10.96.0.10:80/tcp")
        .unwrap();
    fe.node = KernelRoute::Forward {
        backends: vec!["10.244.1.2:8080".parse().unwrap()],
        masquerade: false,
    };
    cross_check(&mut walks, &kernel);
    let check = walks[0].kernel.clone().unwrap();
    assert!(!check.agrees);
    assert!(
        check.detail.contains("the kernel differs"),
        "{}",
        check.detail
    );

    kernel
        .frontends
        .retain(|fe| fe.key.to_string() != "10.96.0.10:80/tcp");
    cross_check(&mut walks, &kernel);
    assert!(
        walks[0]
            .kernel
            .as_ref()
            .unwrap()
            .detail
            .contains("has no entry for 10.96.0.10:80/tcp")
    );
}

#[test]
fn destinations_parse_with_protocol_and_ipv6() {
    let d: Destination = "[fd00::10]:53/UDP".parse().unwrap();
    assert_eq!(
        (d.ip, d.port, d.protocol),
        ("fd00::10".parse().unwrap(), 53, Protocol::Udp)
    );
    assert_eq!(d.to_string(), "[fd00::10]:53/udp");
    assert!(
        "10.0.0.1"
            .parse::<Destination>()
            .unwrap_err()
            .contains("IP:PORT")
    );
    assert!(
        "10.0.0.1:80/icmp"
            .parse::<Destination>()
            .unwrap_err()
            .contains("unknown protocol")
    );
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                char::from(T[((n >> (18 - 6 * i)) & 63) as usize])
            } else {
                '='
            });
        }
    }
    out
}

/// An Ingress for cafe.example.com (TLS) routing /tea to Service tea (one endpoint) and
/// /coffee to Service coffee (none).
fn route_table() -> (
    std::sync::Arc<sluice_ingress::RouteTable>,
    sluice_ingress::IngressConfig,
) {
    let cert = rcgen::generate_simple_self_signed(vec!["cafe.example.com".to_owned()]).unwrap();
    let objects = serde_json::json!([
        {"kind": "IngressClass", "metadata": {"name": "sluice"}, "spec": {"controller": "sluice.dev/ingress"}},
        {"kind": "Secret", "metadata": {"namespace": "default", "name": "cafe-tls"}, "type": "kubernetes.io/tls",
         "data": {"tls.crt": b64(cert.cert.pem().as_bytes()), "tls.key": b64(cert.signing_key.serialize_pem().as_bytes())}},
        {"kind": "Ingress", "metadata": {"namespace": "default", "name": "cafe"}, "spec": {
            "ingressClassName": "sluice",
            "tls": [{"hosts": ["cafe.example.com"], "secretName": "cafe-tls"}],
            "rules": [{"host": "cafe.example.com", "http": {"paths": [
                {"path": "/tea", "pathType": "Prefix", "backend": {"service": {"name": "tea", "port": {"number": 80}}}},
                {"path": "/coffee", "pathType": "Prefix", "backend": {"service": {"name": "coffee", "port": {"number": 80}}}}]}}]}},
        {"kind": "Service", "metadata": {"namespace": "default", "name": "tea"}, "spec": {"clusterIP": "10.96.0.30", "ports": [{"port": 80, "targetPort": 8080}]}},
        {"kind": "Service", "metadata": {"namespace": "default", "name": "coffee"}, "spec": {"clusterIP": "10.96.0.31", "ports": [{"port": 80, "targetPort": 8080}]}},
        {"kind": "EndpointSlice", "metadata": {"namespace": "default", "name": "tea-1", "labels": {"kubernetes.io/service-name": "tea"}},
         "addressType": "IPv4", "ports": [{"port": 8080, "protocol": "TCP"}], "endpoints": [{"addresses": ["10.244.1.7"]}]},
    ]);
    let yaml: String = objects
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let mut o = o.clone();
            let (api, _) = match o["kind"].as_str().unwrap() {
                "IngressClass" | "Ingress" => ("networking.k8s.io/v1", ()),
                "EndpointSlice" => ("discovery.k8s.io/v1", ()),
                _ => ("v1", ()),
            };
            o["apiVersion"] = api.into();
            format!("---\n{}\n", serde_json::to_string(&o).unwrap())
        })
        .collect();
    let snapshot = crate::inspect::tests::snapshot_of(&yaml);
    let config = sluice_ingress::IngressConfig {
        http_bind: Some("0.0.0.0:80".parse().unwrap()),
        https_bind: Some("0.0.0.0:443".parse().unwrap()),
        ..Default::default()
    };
    let node = sluice_model::NodeInfo {
        name: "node-a".into(),
        ..Default::default()
    };
    let (plan, mut warnings) = sluice_routes::plan(
        &snapshot,
        &node,
        &sluice_routes::RouteConfig::default(),
        std::time::SystemTime::now(),
    );
    let proxy = sluice_ingress::IngressProxy::new(config.clone());
    warnings.extend(proxy.update(&plan));
    assert!(warnings.is_empty(), "{warnings:?}");
    let table = proxy.route_table();
    (table, config)
}

#[test]
fn http_walks_name_the_route_the_certificate_and_the_endpoints() {
    let (table, config) = route_table();
    let routed = walk_http(&table, &config, "https://cafe.example.com/tea/green?x=1").unwrap();
    assert_eq!(routed.verdict.code, "routed", "{routed:#?}");
    assert_eq!(routed.verdict.backends, ["10.244.1.7:8080"]);
    assert!(
        routed.steps.iter().any(|s| s.what == "tls"
            && s.detail == "certificate for SNI cafe.example.com (Secret default/cafe-tls)"),
        "{routed:#?}"
    );
    assert!(
        routed.steps.iter().any(|s| s.what == "route"
            && s.detail == "host cafe.example.com, prefix /tea (Ingress default/cafe)"),
        "{routed:#?}"
    );

    // The default certificate: the handshake succeeds with a certificate that does not name
    // the host.
    let no_cert = walk_http(&table, &config, "https://tea.example.org/tea").unwrap();
    assert_eq!(no_cert.verdict.code, "no-certificate", "{no_cert:#?}");
    assert!(
        no_cert
            .verdict
            .reason
            .contains("does not name tea.example.org"),
        "{}",
        no_cert.verdict.reason
    );
    assert!(
        no_cert.verdict.reason.contains("404"),
        "{}",
        no_cert.verdict.reason
    );
    assert_eq!(
        walk_http(&table, &config, "http://tea.example.org/tea")
            .unwrap()
            .verdict
            .code,
        "no-route"
    );
    // A TLS host: plain HTTP is redirected (ssl-redirect is on by default), before any
    // backend is looked at.
    let redirected = walk_http(&table, &config, "http://cafe.example.com/coffee").unwrap();
    assert_eq!(
        (
            redirected.verdict.code.as_str(),
            redirected.verdict.reason.as_str()
        ),
        ("redirect", "308 to https://cafe.example.com/coffee"),
        "{redirected:#?}"
    );
    let empty = walk_http(&table, &config, "https://cafe.example.com/coffee").unwrap();
    assert_eq!(empty.verdict.code, "no-endpoints");
    assert!(empty.verdict.reason.starts_with("503"));
    assert!(walk_http(&table, &config, "ftp://x/").is_err());
}

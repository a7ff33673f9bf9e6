//! The decision table (`decide.rs`): for every kind of frontend, traffic policy and endpoint
//! situation, what happens to a new connection from a pod, from the node itself and from
//! outside. Each row asserts all three routes, plus the allowed sources of the frontend.
//!
//! kube-proxy references (iptables/nftables proxiers, `pkg/proxy/topology.go`):
//! * no endpoint at all → REJECT; endpoints exist but none usable here → DROP;
//! * cluster IP: masquerade sources that are not pods when `--cluster-cidr` is known
//!   (`localDetector.IfNotLocal`), nobody otherwise;
//! * external destinations with eTP=Cluster: always masquerade; with eTP=Local: pods are
//!   short-circuited to the Cluster endpoints, the node is masqueraded to the Cluster
//!   endpoints, everyone else only reaches this node's endpoints, source kept;
//! * `loadBalancerSourceRanges`: LoadBalancer IPs only, per family.

mod common;

use common::*;
use k8s_openapi::api::core::v1::Service;
use serde_json::{Value, json};
use sluice_compute::ComputeConfig;
use sluice_plan::{FrontendKind, Route, Selection};

use FrontendKind::{ClusterIp, ExternalIp, LoadBalancerIp, NodePort};

/// Endpoints of the table: ready here, ready elsewhere, serving-terminating here and
/// elsewhere, terminating and no longer serving (never usable).
fn local() -> Value {
    ep("10.244.1.1", NODE)
}
fn remote() -> Value {
    ep("10.244.2.1", "node-b")
}
fn local_terminating() -> Value {
    terminating("10.244.1.2", NODE)
}
fn remote_terminating() -> Value {
    terminating("10.244.2.2", "node-b")
}
fn unusable() -> Value {
    ep_cond("10.244.2.3", "node-b", Some(false), Some(false), Some(true))
}
fn local6() -> Value {
    ep("fd00:10:244:1::1", NODE)
}
fn remote6() -> Value {
    ep("fd00:10:244:2::1", "node-b")
}

/// Service `default/web` from `spec` (port 80, nodePort 30080 unless given; a `lbIPs` list
/// becomes `status.loadBalancer.ingress`).
fn web(mut spec: Value) -> Service {
    let lb_ips = spec
        .as_object_mut()
        .and_then(|s| s.remove("lbIPs"))
        .unwrap_or(json!([]));
    let ingress: Vec<Value> = lb_ips
        .as_array()
        .expect("lbIPs list")
        .iter()
        .map(|ip| json!({ "ip": ip }))
        .collect();
    if spec.get("ports").is_none() {
        spec["ports"] = json!([{ "port": 80, "nodePort": 30080 }]);
    }
    service_full(json!({
        "metadata": { "namespace": "default", "name": "web" },
        "spec": spec,
        "status": { "loadBalancer": { "ingress": ingress } },
    }))
}

struct Row {
    case: &'static str,
    /// `--cluster-cidr` given (pods can be told apart from other sources).
    pods_known: bool,
    spec: Value,
    endpoints: Vec<Value>,
    frontend: &'static str,
    kind: FrontendKind,
    /// `[pods, node, outside]`.
    routes: [Route; 3],
    allowed: &'static [&'static str],
}

const KNOWN: bool = true;
const UNKNOWN: bool = false;

fn row(
    case: &'static str,
    pods_known: bool,
    spec: Value,
    endpoints: Vec<Value>,
    (frontend, kind): (&'static str, FrontendKind),
    routes: [Route; 3],
) -> Row {
    Row {
        case,
        pods_known,
        spec,
        endpoints,
        frontend,
        kind,
        routes,
        allowed: &[],
    }
}

impl Row {
    fn allowing(mut self, allowed: &'static [&'static str]) -> Row {
        self.allowed = allowed;
        self
    }

    fn compute(&self) -> sluice_compute::Computed {
        let config = if self.pods_known {
            pods_known()
        } else {
            ComputeConfig::default()
        };
        let (v4, v6): (Vec<Value>, Vec<Value>) = self
            .endpoints
            .iter()
            .cloned()
            .partition(|e| !e["addresses"][0].as_str().expect("address").contains(':'));
        let mut slices = vec![slice4("web-v4", "web", 8080, json!(v4))];
        if !v6.is_empty() {
            slices.push(slice6("web-v6", "web", 8080, json!(v6)));
        }
        run_with(&config, vec![web(self.spec.clone())], slices)
    }
}

const CIP: (&str, FrontendKind) = ("10.96.0.1:80/tcp", ClusterIp);
const CIP6: (&str, FrontendKind) = ("[fd00::1]:80/tcp", ClusterIp);
const NP: (&str, FrontendKind) = ("nodeports-v4:30080/tcp", NodePort);
const NP6: (&str, FrontendKind) = ("nodeports-v6:30080/tcp", NodePort);
const EIP: (&str, FrontendKind) = ("203.0.113.5:80/tcp", ExternalIp);
const LB: (&str, FrontendKind) = ("198.51.100.5:80/tcp", LoadBalancerIp);
const LB6: (&str, FrontendKind) = ("[2001:db8:1::5]:80/tcp", LoadBalancerIp);

#[rustfmt::skip]
fn cluster_ip_rows() -> Vec<Row> {
    let itp_local = || json!({ "internalTrafficPolicy": "Local" });
    vec![
        row("iTP=Cluster", KNOWN, json!({}), vec![remote()], CIP, [FWD_C, MASQ_C, MASQ_C]),
        row("iTP=Cluster, pods unknown: nobody masqueraded", UNKNOWN, json!({}), vec![remote()], CIP, [FWD_C; 3]),
        row("iTP=Local with a local endpoint", KNOWN, itp_local(), vec![local(), remote()], CIP, [FWD_L, MASQ_L, MASQ_L]),
        row("iTP=Local with a local endpoint, pods unknown", UNKNOWN, itp_local(), vec![local(), remote()], CIP, [FWD_L; 3]),
        row("iTP=Local, endpoints only elsewhere", KNOWN, itp_local(), vec![remote()], CIP, [DROP; 3]),
        row("iTP=Local, endpoints only elsewhere, pods unknown", UNKNOWN, itp_local(), vec![remote()], CIP, [DROP; 3]),
        row("no endpoints", KNOWN, json!({}), vec![], CIP, [REJECT; 3]),
        row("iTP=Local, no endpoints: reject, not drop", KNOWN, itp_local(), vec![], CIP, [REJECT; 3]),
        row("only endpoints that no longer serve", KNOWN, json!({}), vec![unusable()], CIP, [REJECT; 3]),
        row("terminating-only fallback", KNOWN, json!({}), vec![remote_terminating(), unusable()], CIP, [FWD_C, MASQ_C, MASQ_C]),
        row("iTP=Local, local terminating fallback beside remote ready", KNOWN, itp_local(), vec![local_terminating(), remote()], CIP, [FWD_L, MASQ_L, MASQ_L]),
        row("iTP=Local, local endpoint no longer serving", KNOWN, itp_local(), vec![ep_cond("10.244.1.3", NODE, Some(false), Some(false), Some(true)), remote()], CIP, [DROP; 3]),
        row("eTP=Local does not apply to the cluster IP", KNOWN, json!({ "type": "NodePort", "externalTrafficPolicy": "Local" }), vec![remote()], CIP, [FWD_C, MASQ_C, MASQ_C]),
    ]
}

#[rustfmt::skip]
fn node_port_rows() -> Vec<Row> {
    let etp = |policy: &str| json!({ "type": "NodePort", "externalTrafficPolicy": policy });
    vec![
        row("eTP=Cluster: always masqueraded", KNOWN, etp("Cluster"), vec![remote()], NP, [MASQ_C; 3]),
        row("eTP=Cluster, pods unknown", UNKNOWN, etp("Cluster"), vec![remote()], NP, [MASQ_C; 3]),
        row("eTP=Cluster with a local endpoint: still any endpoint", KNOWN, etp("Cluster"), vec![local()], NP, [MASQ_C; 3]),
        row("eTP=Local with a local endpoint", KNOWN, etp("Local"), vec![local(), remote()], NP, [FWD_C, MASQ_C, FWD_L]),
        row("eTP=Local with a local endpoint, pods unknown: pods are outside", UNKNOWN, etp("Local"), vec![local(), remote()], NP, [FWD_L, MASQ_C, FWD_L]),
        row("eTP=Local, endpoints only elsewhere", KNOWN, etp("Local"), vec![remote()], NP, [FWD_C, MASQ_C, DROP]),
        row("eTP=Local, endpoints only elsewhere, pods unknown", UNKNOWN, etp("Local"), vec![remote()], NP, [DROP, MASQ_C, DROP]),
        row("eTP=Local + iTP=Local, endpoints only elsewhere: short-circuit uses the Cluster set", KNOWN, json!({ "type": "NodePort", "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local" }), vec![remote()], NP, [FWD_C, MASQ_C, DROP]),
        row("eTP=Local, local terminating fallback beside remote ready", KNOWN, etp("Local"), vec![local_terminating(), remote()], NP, [FWD_C, MASQ_C, FWD_L]),
        row("eTP=Local, terminating-only everywhere", KNOWN, etp("Local"), vec![remote_terminating()], NP, [FWD_C, MASQ_C, DROP]),
        row("eTP=Cluster, no endpoints", KNOWN, etp("Cluster"), vec![], NP, [REJECT; 3]),
        row("eTP=Local, no endpoints", KNOWN, etp("Local"), vec![], NP, [REJECT; 3]),
        row("eTP=Local, only endpoints that no longer serve", UNKNOWN, etp("Local"), vec![unusable()], NP, [REJECT; 3]),
    ]
}

#[rustfmt::skip]
fn external_ip_rows() -> Vec<Row> {
    let etp =
        |policy: &str| json!({ "externalIPs": ["203.0.113.5"], "externalTrafficPolicy": policy });
    vec![
        row("externalIP on a ClusterIP service, eTP=Cluster", KNOWN, etp("Cluster"), vec![remote()], EIP, [MASQ_C; 3]),
        row("externalIP, eTP=Local with a local endpoint", KNOWN, etp("Local"), vec![local()], EIP, [FWD_C, MASQ_C, FWD_L]),
        row("externalIP, eTP=Local, endpoints only elsewhere", KNOWN, etp("Local"), vec![remote()], EIP, [FWD_C, MASQ_C, DROP]),
        row("externalIP, eTP=Local, endpoints only elsewhere, pods unknown", UNKNOWN, etp("Local"), vec![remote()], EIP, [DROP, MASQ_C, DROP]),
        row("externalIP, no endpoints", KNOWN, etp("Local"), vec![], EIP, [REJECT; 3]),
    ]
}

#[rustfmt::skip]
fn load_balancer_rows() -> Vec<Row> {
    let etp = |policy: &str| json!({ "type": "LoadBalancer", "externalTrafficPolicy": policy, "healthCheckNodePort": 32000, "lbIPs": ["198.51.100.5"] });
    vec![
        row("LB IP, eTP=Cluster", KNOWN, etp("Cluster"), vec![remote()], LB, [MASQ_C; 3]),
        row("LB IP, eTP=Local with a local endpoint", KNOWN, etp("Local"), vec![local()], LB, [FWD_C, MASQ_C, FWD_L]),
        row("LB IP, eTP=Local with a local endpoint, pods unknown", UNKNOWN, etp("Local"), vec![local()], LB, [FWD_L, MASQ_C, FWD_L]),
        row("LB IP, eTP=Local, endpoints only elsewhere", KNOWN, etp("Local"), vec![remote()], LB, [FWD_C, MASQ_C, DROP]),
        row("LB IP, no endpoints", KNOWN, etp("Cluster"), vec![], LB, [REJECT; 3]),
    ]
}

/// `loadBalancerSourceRanges` with our node at 192.168.0.10.
#[rustfmt::skip]
fn source_range_rows() -> Vec<Row> {
    let lb = |policy: &str, ranges: &[&str]| {
        json!({
            "type": "LoadBalancer", "externalTrafficPolicy": policy, "healthCheckNodePort": 32000,
            "externalIPs": ["203.0.113.5"], "lbIPs": ["198.51.100.5"], "loadBalancerSourceRanges": ranges,
        })
    };
    let outside_only = ["203.0.113.0/24"];
    vec![
        row("ranges exclude the node: node dropped", KNOWN, lb("Cluster", &outside_only), vec![remote()], LB, [MASQ_C, DROP, MASQ_C])
            .allowing(&["203.0.113.0/24"]),
        row("ranges include a node address: node allowed", KNOWN, lb("Cluster", &["203.0.113.0/24", "192.168.0.0/24"]), vec![remote()], LB, [MASQ_C; 3])
            .allowing(&["192.168.0.0/24", "203.0.113.0/24"]),
        row("ranges of the other family only: unrestricted", KNOWN, lb("Cluster", &["2001:db8::/32"]), vec![remote()], LB, [MASQ_C; 3]),
        row("ranges of both families: this family's only", KNOWN, lb("Cluster", &["2001:db8::/32", "203.0.113.0/24"]), vec![remote()], LB, [MASQ_C, DROP, MASQ_C])
            .allowing(&["203.0.113.0/24"]),
        row("ranges, eTP=Local with a local endpoint", KNOWN, lb("Local", &outside_only), vec![local()], LB, [FWD_C, DROP, FWD_L])
            .allowing(&["203.0.113.0/24"]),
        row("ranges, eTP=Local, endpoints only elsewhere", KNOWN, lb("Local", &outside_only), vec![remote()], LB, [FWD_C, DROP, DROP])
            .allowing(&["203.0.113.0/24"]),
        row("ranges, no endpoints: reject stays (nobody is served)", KNOWN, lb("Cluster", &outside_only), vec![], LB, [REJECT; 3])
            .allowing(&["203.0.113.0/24"]),
        row("ranges do not restrict the NodePort", KNOWN, lb("Cluster", &outside_only), vec![remote()], NP, [MASQ_C; 3]),
        row("ranges do not restrict externalIPs", KNOWN, lb("Cluster", &outside_only), vec![remote()], EIP, [MASQ_C; 3]),
        row("ranges do not restrict the cluster IP", KNOWN, lb("Cluster", &outside_only), vec![remote()], CIP, [FWD_C, MASQ_C, MASQ_C]),
    ]
}

#[rustfmt::skip]
fn dual_stack_rows() -> Vec<Row> {
    let dual = |extra: Value| {
        let mut spec = json!({
            "type": "LoadBalancer", "clusterIPs": ["10.96.0.1", "fd00::1"],
            "lbIPs": ["198.51.100.5", "2001:db8:1::5"], "healthCheckNodePort": 32000,
        });
        for (k, v) in extra.as_object().expect("object") {
            spec[k] = v.clone();
        }
        spec
    };
    let itp_local = || dual(json!({ "internalTrafficPolicy": "Local" }));
    vec![
        row("IPv4 endpoints only: IPv4 cluster IP forwards", KNOWN, dual(json!({})), vec![remote()], CIP, [FWD_C, MASQ_C, MASQ_C]),
        row("IPv4 endpoints only: IPv6 cluster IP rejects", KNOWN, dual(json!({})), vec![remote()], CIP6, [REJECT; 3]),
        row("IPv4 endpoints only: IPv6 NodePorts reject", KNOWN, dual(json!({})), vec![remote()], NP6, [REJECT; 3]),
        row("IPv4 endpoints only: IPv6 LB IP rejects", KNOWN, dual(json!({})), vec![remote()], LB6, [REJECT; 3]),
        row("IPv6 endpoints only: IPv4 cluster IP rejects", KNOWN, dual(json!({})), vec![remote6()], CIP, [REJECT; 3]),
        row("IPv6 endpoints only: IPv6 cluster IP forwards", KNOWN, dual(json!({})), vec![remote6()], CIP6, [FWD_C, MASQ_C, MASQ_C]),
        row("iTP=Local, IPv4 local, IPv6 only elsewhere: IPv4 forwards", KNOWN, itp_local(), vec![local(), remote6()], CIP, [FWD_L, MASQ_L, MASQ_L]),
        row("iTP=Local, IPv4 local, IPv6 only elsewhere: IPv6 drops", KNOWN, itp_local(), vec![local(), remote6()], CIP6, [DROP; 3]),
        row("eTP=Local, IPv6 local: IPv6 NodePorts keep the source", KNOWN, dual(json!({ "externalTrafficPolicy": "Local" })), vec![remote(), local6()], NP6, [FWD_C, MASQ_C, FWD_L]),
        row("eTP=Local, IPv6 local only: IPv4 NodePorts drop outside", KNOWN, dual(json!({ "externalTrafficPolicy": "Local" })), vec![remote(), local6()], NP, [FWD_C, MASQ_C, DROP]),
        row("IPv6 LB IP with ranges: the node has no IPv6 address inside", KNOWN, dual(json!({ "loadBalancerSourceRanges": ["2001:db8::/32", "192.168.0.0/16"] })), vec![remote6()], LB6, [MASQ_C, DROP, MASQ_C])
            .allowing(&["2001:db8::/32"]),
        row("IPv4 LB IP with the same ranges: the node is inside", KNOWN, dual(json!({ "loadBalancerSourceRanges": ["2001:db8::/32", "192.168.0.0/16"] })), vec![remote()], LB, [MASQ_C; 3])
            .allowing(&["192.168.0.0/16"]),
    ]
}

#[test]
fn decision_table() {
    let tables = [
        ("cluster IP", cluster_ip_rows()),
        ("node port", node_port_rows()),
        ("external IP", external_ip_rows()),
        ("load-balancer IP", load_balancer_rows()),
        ("source ranges", source_range_rows()),
        ("dual-stack", dual_stack_rows()),
    ];
    let mut rows = 0;
    for (table, cases) in tables {
        for row in cases {
            let case = format!("{table}: {}", row.case);
            let computed = row.compute();
            assert!(
                computed.warnings.is_empty(),
                "{case}: {:?}",
                computed.warnings
            );
            let plan = tcp_port(&computed, "web", &case);
            assert_eq!(plan.validate(), Ok(()), "{case}");
            let fe = frontend(plan, row.frontend, &case);
            assert_eq!(fe.kind, row.kind, "{case}");
            assert_eq!(routes(fe), row.routes, "{case}\n{plan}");
            assert_eq!(fe.allowed_sources, nets(row.allowed), "{case}");
            rows += 1;
        }
    }
    assert_eq!(rows, 58, "every row ran");
}

/// Every frontend of a Service with all four kinds, for a given set of endpoints.
fn all_kinds(endpoints: Vec<Value>, etp: &str) -> sluice_compute::Computed {
    let spec = json!({
        "type": "LoadBalancer", "externalTrafficPolicy": etp, "healthCheckNodePort": 32000,
        "externalIPs": ["203.0.113.5"], "lbIPs": ["198.51.100.5"],
    });
    run_with(
        &pods_known(),
        vec![web(spec)],
        vec![slice4("web-v4", "web", 8080, json!(endpoints))],
    )
}

#[test]
fn selection_is_consistent_hash_for_external_kinds_only() {
    let computed = all_kinds(vec![remote()], "Cluster");
    let plan = tcp_port(&computed, "web", "all kinds");
    let got: Vec<(FrontendKind, Selection)> = plan
        .frontends
        .iter()
        .map(|f| (f.kind, f.selection))
        .collect();
    // In key order: 10.96.0.1, 198.51.100.5, 203.0.113.5, node ports.
    assert_eq!(
        got,
        [
            (ClusterIp, Selection::Random),
            (LoadBalancerIp, Selection::ConsistentHash),
            (ExternalIp, Selection::ConsistentHash),
            (NodePort, Selection::ConsistentHash),
        ]
    );
}

#[test]
fn no_endpoint_at_all_rejects_on_every_frontend_for_everyone() {
    for etp in ["Cluster", "Local"] {
        let computed = all_kinds(vec![], etp);
        let plan = tcp_port(&computed, "web", etp);
        assert_eq!(plan.frontends.len(), 4, "{etp}: {plan}");
        for fe in &plan.frontends {
            assert_eq!(routes(fe), [REJECT; 3], "{etp}: {fe}");
        }
    }
}

#[test]
fn endpoints_only_elsewhere_never_reject() {
    // With eTP=Local and iTP=Local nothing here can be used by outside clients or the cluster
    // IP, but the Service has endpoints: drop (load balancers move on), never reject.
    let spec = json!({
        "type": "LoadBalancer", "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local",
        "healthCheckNodePort": 32000, "externalIPs": ["203.0.113.5"], "lbIPs": ["198.51.100.5"],
    });
    for config in [pods_known(), ComputeConfig::default()] {
        let computed = run_with(
            &config,
            vec![web(spec.clone())],
            vec![slice4("web-v4", "web", 8080, json!([remote()]))],
        );
        let plan = tcp_port(&computed, "web", "elsewhere");
        for fe in &plan.frontends {
            assert_eq!(fe.refusal(), Some(DROP), "{fe}");
            assert_eq!(fe.outside, DROP, "{fe}");
        }
    }
}

#[test]
fn terminating_fallback_forwards_to_the_terminating_endpoints_only() {
    let computed = all_kinds(vec![remote_terminating(), unusable()], "Cluster");
    let plan = tcp_port(&computed, "web", "fallback");
    assert_eq!(addrs(&plan.cluster), ["10.244.2.2:8080"]);
    for fe in &plan.frontends {
        assert!(fe.forwards(), "{fe}");
    }
}

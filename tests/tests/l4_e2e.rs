//! End to end with the real agent: what a user of the cluster observes. One suite, run
//! against every dataplane: each scenario is a function of the [`Mode`], and
//! `backend_tests!` makes a `scenario::nftables` and a `scenario::ebpf` test of it
//! (`cargo test -p sluice-tests --test l4_e2e ebpf` runs one backend).
//! Needs root and the binaries (`cargo build -p sluice-agent -p sluice-echo`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use sluice_tests::manifests::{Endpoint, EndpointSlice, Family, Port, Service, yaml_docs};
use sluice_tests::{
    At, CLIENT_V4, CLIENT_V6, Cluster, Mode, Pod, ProbeError, ProbeOpts, ProbeResults, Proto,
    tally, wait_until,
};

use sluice_tests::backend_tests;

backend_tests!(
    cluster_ip_reaches_pods_on_both_nodes_v4_v6_tcp_udp,
    service_without_endpoints_rejects_instead_of_hanging,
    node_port_local_policy_keeps_client_ip_and_local_endpoints,
    node_port_cluster_policy_masquerades_to_remote_pods,
    endpoint_changes_apply_and_established_connections_survive_agent_restart,
    cleanup_removes_everything,
    load_balancer_ip_honours_source_ranges,
    external_ip_from_outside,
    session_affinity_keeps_a_client_on_one_pod,
    health_check_node_port_reports_local_endpoints,
    udp_flows_move_when_their_endpoint_goes,
    internal_traffic_policy_local_uses_only_this_nodes_pods,
    terminating_endpoints_are_a_fallback_only,
    hairpin_pod_reaches_itself_through_its_service,
    sctp_cluster_ip_answers,
    topology_hints_keep_traffic_in_the_zone_unless_incomplete,
    udp_service_scaled_to_zero_and_back_answers_at_once,
    agent_restart_reconciles_without_flushing,
    load_balancer_ip_local_policy_served_only_where_endpoints_are,
    dual_stack_node_port_and_load_balancer_from_outside,
    udp_flows_move_when_their_endpoint_went_while_the_agent_was_down,
    session_affinity_expires_after_its_timeout,
);

const SVC_V4: &str = "10.96.0.10";
const SVC_V6: &str = "fd00:10:96::10";

/// Two nodes; `web-1` on node-a, `web-2` on node-b, and a `probe` pod on node-a.
fn cluster() -> Result<(Cluster, Pod, Pod)> {
    let mut c = Cluster::new(&["node-a", "node-b"])?;
    let w1 = c.add_pod("node-a", "web-1")?;
    let w2 = c.add_pod("node-b", "web-2")?;
    c.add_pod("node-a", "probe")?;
    Ok((c, w1, w2))
}

fn web_service() -> Service {
    Service::new("default", "web")
        .cluster_ips(&[SVC_V4, SVC_V6])
        .port(Port::tcp(80, 8080).named("http"))
        .port(Port::udp(53, 8080).named("dns"))
}

const WEB_PORTS: &[(&str, &str, u16)] = &[("http", "TCP", 8080), ("dns", "UDP", 8080)];

fn pods_seen(r: &ProbeResults) -> BTreeSet<String> {
    tally(r).into_keys().collect()
}

fn both() -> BTreeSet<String> {
    ["web-1".to_string(), "web-2".to_string()].into()
}

fn cluster_ip_reaches_pods_on_both_nodes_v4_v6_tcp_udp(mode: Mode) -> Result<()> {
    let (mut c, w1, w2) = cluster()?;
    c.write_service(&web_service(), WEB_PORTS, &[&w1, &w2])?;
    c.start_agent("node-a", mode, &[])?;
    let probe = c.pod("probe")?.clone();

    for (tcp, udp, source) in [
        (
            format!("{SVC_V4}:80"),
            format!("{SVC_V4}:53"),
            probe.ipv4.to_string(),
        ),
        (
            format!("[{SVC_V6}]:80"),
            format!("[{SVC_V6}]:53"),
            probe.ipv6.to_string(),
        ),
    ] {
        for r in [
            c.tcp(At::Pod("probe"), &tcp, 30)?,
            c.udp(At::Pod("probe"), &udp, 30)?,
        ] {
            assert_eq!(pods_seen(&r), both(), "{tcp}/{udp}: {:?}", tally(&r));
            // Pod to service: no SNAT, the backend sees the calling pod.
            for reply in r.iter().flatten() {
                assert_eq!(reply.client.ip().to_string(), source);
            }
        }
    }
    // From the node itself (host network).
    let r = c.tcp(At::Node("node-a"), format!("{SVC_V4}:80"), 30)?;
    assert_eq!(pods_seen(&r), both(), "{:?}", tally(&r));
    Ok(())
}

fn service_without_endpoints_rejects_instead_of_hanging(mode: Mode) -> Result<()> {
    let (mut c, _, _) = cluster()?;
    c.write_service(&web_service(), WEB_PORTS, &[])?;
    c.start_agent("node-a", mode, &[])?;
    assert_eq!(
        c.tcp1(At::Pod("probe"), format!("{SVC_V4}:80"))?,
        Err(ProbeError::Refused)
    );
    assert_eq!(
        c.tcp1(At::Pod("probe"), format!("[{SVC_V6}]:80"))?,
        Err(ProbeError::Refused)
    );
    assert_eq!(
        c.udp1(At::Pod("probe"), format!("{SVC_V4}:53"))?,
        Err(ProbeError::Refused)
    );
    Ok(())
}

fn node_port_local_policy_keeps_client_ip_and_local_endpoints(mode: Mode) -> Result<()> {
    let (mut c, w1, w2) = cluster()?;
    let svc = Service::new("default", "web")
        .cluster_ips(&[SVC_V4, SVC_V6])
        .kind("NodePort")
        .port(Port::tcp(80, 8080).named("http").node_port(30080))
        .external_traffic_policy("Local");
    c.write_service(&svc, &[("http", "TCP", 8080)], &[&w1, &w2])?;
    c.start_agent("node-a", mode, &[])?;
    c.start_agent("node-b", mode, &[])?;
    for (node, pod) in [("node-a", "web-1"), ("node-b", "web-2")] {
        let n = c.node(node)?.clone();
        for (addr, client) in [
            (n.v4(30080), CLIENT_V4.to_string()),
            (n.v6(30080), CLIENT_V6.to_string()),
        ] {
            let r = c.tcp(At::Client, addr, 10)?;
            assert_eq!(tally(&r), [(pod.to_string(), 10)].into(), "{addr}");
            for reply in r.iter().flatten() {
                assert_eq!(reply.client.ip().to_string(), client, "source preserved");
            }
        }
    }
    Ok(())
}

fn node_port_cluster_policy_masquerades_to_remote_pods(mode: Mode) -> Result<()> {
    let (mut c, w1, w2) = cluster()?;
    let svc = Service::new("default", "web")
        .cluster_ips(&[SVC_V4, SVC_V6])
        .kind("NodePort")
        .port(Port::tcp(80, 8080).named("http").node_port(30080));
    c.write_service(&svc, &[("http", "TCP", 8080)], &[&w1, &w2])?;
    c.start_agent("node-a", mode, &[])?;
    let node_a = c.node("node-a")?.clone();
    let r = c.tcp(At::Client, node_a.v4(30080), 30)?;
    assert_eq!(pods_seen(&r), both(), "{:?}", tally(&r));
    for reply in r.iter().flatten().filter(|r| r.pod == "web-2") {
        assert_eq!(
            reply.client.ip(),
            node_a.ipv4,
            "masqueraded to node-a's address"
        );
    }
    Ok(())
}

fn endpoint_changes_apply_and_established_connections_survive_agent_restart(
    mode: Mode,
) -> Result<()> {
    let (mut c, w1, w2) = cluster()?;
    c.write_service(&web_service(), WEB_PORTS, &[&w1])?;
    c.start_agent("node-a", mode, &[])?;
    let target = format!("{SVC_V4}:80");
    let mut held = c.hold_tcp(At::Pod("probe"), &target)?;
    assert_eq!(held.greeting().pod, "web-1");

    // Move the service to web-2: new connections follow, the held one stays on web-1.
    c.write_service(&web_service(), WEB_PORTS, &[&w2])?;
    wait_until(Duration::from_secs(10), "new connections on web-2", || {
        let r = c.tcp(At::Pod("probe"), &target, 5)?;
        Ok(tally(&r) == [("web-2".to_string(), 5)].into())
    })?;
    assert_eq!(held.send("after-update")?, Ok("web-1: after-update".into()));

    // The agent dies: forwarding goes on, for the held and for new connections.
    c.kill_agent("node-a")?;
    assert_eq!(held.send("agent-down")?, Ok("web-1: agent-down".into()));
    let r = c.tcp(At::Pod("probe"), &target, 5)?;
    assert_eq!(tally(&r), [("web-2".to_string(), 5)].into());

    // A new agent takes over without disturbing anything.
    c.start_agent("node-a", mode, &[])?;
    assert_eq!(held.send("agent-back")?, Ok("web-1: agent-back".into()));
    let r = c.tcp(At::Pod("probe"), &target, 5)?;
    assert_eq!(tally(&r), [("web-2".to_string(), 5)].into());
    held.close()
}

fn cleanup_removes_everything(mode: Mode) -> Result<()> {
    let (mut c, w1, w2) = cluster()?;
    c.write_service(&web_service(), WEB_PORTS, &[&w1, &w2])?;
    c.start_agent("node-a", mode, &[])?;
    assert!(c.tcp1(At::Pod("probe"), format!("{SVC_V4}:80"))?.is_ok());
    c.stop_agent("node-a")?;
    let out = c.agent_cleanup("node-a", mode)?;
    assert!(
        out.status.success(),
        "cleanup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tables = c.exec(At::Node("node-a"), &["nft", "list", "tables"])?;
    let tables = String::from_utf8_lossy(&tables.stdout);
    assert!(!tables.contains("sluice"), "{tables}");
    // No pinned maps or links left in the node's bpffs directory.
    let bpffs = c.node("node-a")?.bpffs.clone();
    let pins: Vec<_> = match std::fs::read_dir(&bpffs) {
        Ok(dir) => dir.filter_map(|e| e.ok()).map(|e| e.file_name()).collect(),
        Err(_) => Vec::new(),
    };
    assert!(pins.is_empty(), "left in {}: {pins:?}", bpffs.display());
    // Without rules the ClusterIP is just an unknown address again.
    let r = c.tcp1(At::Pod("probe"), format!("{SVC_V4}:80"))?;
    assert!(r.is_err(), "{r:?}");
    Ok(())
}

fn load_balancer_ip_honours_source_ranges(mode: Mode) -> Result<()> {
    let (mut c, w1, w2) = cluster()?;
    c.client_route("203.0.113.0/24", "node-a")?;
    let svc = |ranges: &[&str]| {
        Service::new("default", "web")
            .cluster_ips(&[SVC_V4])
            .port(Port::tcp(80, 8080).named("http").node_port(30080))
            .load_balancer_ips(&["203.0.113.10"])
            .source_ranges(ranges)
    };
    c.write_service(
        &svc(&["192.0.2.0/24"]),
        &[("http", "TCP", 8080)],
        &[&w1, &w2],
    )?;
    c.start_agent("node-a", mode, &[])?;
    let r = c.tcp(At::Client, "203.0.113.10:80", 20)?;
    assert_eq!(pods_seen(&r), both(), "{:?}", tally(&r));

    // The client is no longer allowed: its connections are dropped, not served.
    c.write_service(
        &svc(&["198.51.100.0/24"]),
        &[("http", "TCP", 8080)],
        &[&w1, &w2],
    )?;
    wait_until(
        Duration::from_secs(10),
        "LB IP closed to the client",
        || Ok(c.tcp1(At::Client, "203.0.113.10:80")?.is_err()),
    )?;
    let r = c.tcp(At::Client, "203.0.113.10:80", 3)?;
    assert!(r.iter().all(|r| r.is_err()), "{r:?}");
    Ok(())
}

fn external_ip_from_outside(mode: Mode) -> Result<()> {
    let (mut c, w1, w2) = cluster()?;
    c.client_route("198.51.100.0/24", "node-b")?;
    let svc = Service::new("default", "web")
        .cluster_ips(&[SVC_V4])
        .port(Port::tcp(80, 8080).named("http"))
        .external_ips(&["198.51.100.7"]);
    c.write_service(&svc, &[("http", "TCP", 8080)], &[&w1, &w2])?;
    c.start_agent("node-b", mode, &[])?;
    let r = c.tcp(At::Client, "198.51.100.7:80", 20)?;
    assert_eq!(pods_seen(&r), both(), "{:?}", tally(&r));
    Ok(())
}

fn session_affinity_keeps_a_client_on_one_pod(mode: Mode) -> Result<()> {
    let (mut c, w1, w2) = cluster()?;
    c.write_service(&web_service().session_affinity(60), WEB_PORTS, &[&w1, &w2])?;
    c.start_agent("node-a", mode, &[])?;
    let r = c.tcp(At::Pod("probe"), format!("{SVC_V4}:80"), 20)?;
    let seen = tally(&r);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen.values().sum::<usize>(), 20);
    assert!(seen.keys().all(|k| k.starts_with("web-")), "{seen:?}");
    Ok(())
}

fn health_check_node_port_reports_local_endpoints(mode: Mode) -> Result<()> {
    let (mut c, w1, _) = cluster()?;
    let svc = Service::new("default", "web")
        .cluster_ips(&[SVC_V4])
        .port(Port::tcp(80, 8080).named("http").node_port(30080))
        .load_balancer_ips(&["203.0.113.10"])
        .external_traffic_policy("Local")
        .health_check_node_port(32000);
    // Only web-1 (on node-a) backs the service.
    c.write_service(&svc, &[("http", "TCP", 8080)], &[&w1])?;
    c.start_agent("node-a", mode, &[])?;
    c.start_agent("node-b", mode, &[])?;
    let a = c.node("node-a")?.clone();
    let b = c.node("node-b")?.clone();
    let on_a = c.http(At::Client, &format!("http://{}/", a.v4(32000)), &[])?;
    assert_eq!(on_a.status, 200, "{}", on_a.body);
    // kube-proxy's JSON body; dual-stack slices may count the pod once per family.
    let body: serde_json::Value = serde_json::from_str(&on_a.body)?;
    assert!(body["localEndpoints"].as_u64() >= Some(1), "{}", on_a.body);
    assert_eq!(body["service"]["name"], "web");
    let on_b = c.http(At::Client, &format!("http://{}/", b.v4(32000)), &[])?;
    assert_eq!(on_b.status, 503, "{}", on_b.body);
    let body: serde_json::Value = serde_json::from_str(&on_b.body)?;
    assert_eq!(body["localEndpoints"], 0, "{}", on_b.body);
    Ok(())
}

fn udp_flows_move_when_their_endpoint_goes(mode: Mode) -> Result<()> {
    let (mut c, w1, w2) = cluster()?;
    c.write_service(&web_service(), WEB_PORTS, &[&w1])?;
    c.start_agent("node-a", mode, &[])?;
    // A fixed source port makes every datagram the same flow, like a DNS client's socket.
    let opts = sluice_tests::ProbeOpts {
        count: 3,
        source_port: Some(40053),
        timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let target = format!("{SVC_V4}:53");
    let r = c.probe(At::Pod("probe"), sluice_tests::Proto::Udp, &target, &opts)?;
    assert_eq!(tally(&r), [("web-1".to_string(), 3)].into());
    // web-1 stays up but is no longer an endpoint: the flow must move to web-2 promptly.
    c.write_service(&web_service(), WEB_PORTS, &[&w2])?;
    wait_until(Duration::from_secs(5), "UDP flow on web-2", || {
        let r = c.probe(At::Pod("probe"), sluice_tests::Proto::Udp, &target, &opts)?;
        Ok(tally(&r) == [("web-2".to_string(), 3)].into())
    })?;
    Ok(())
}

fn internal_traffic_policy_local_uses_only_this_nodes_pods(mode: Mode) -> Result<()> {
    let (mut c, w1, w2) = cluster()?;
    c.write_service(
        &web_service().internal_traffic_policy("Local"),
        WEB_PORTS,
        &[&w1, &w2],
    )?;
    c.start_agent("node-a", mode, &[])?;
    let r = c.tcp(At::Pod("probe"), format!("{SVC_V4}:80"), 10)?;
    assert_eq!(tally(&r), [("web-1".to_string(), 10)].into());
    Ok(())
}

fn terminating_endpoints_are_a_fallback_only(mode: Mode) -> Result<()> {
    use sluice_tests::manifests::{Endpoint, EndpointSlice, Family, yaml_docs};
    let (mut c, w1, w2) = cluster()?;
    let write = |c: &Cluster, ready: &[&Pod], terminating: &[&Pod]| -> Result<()> {
        let mut slice = EndpointSlice::new("default", "web-v4", "web", Family::V4)
            .port("http", "TCP", 8080)
            .port("dns", "UDP", 8080)
            .pods(ready.iter().copied());
        for p in terminating {
            slice = slice.endpoint(Endpoint::of(p, Family::V4).terminating());
        }
        c.write_manifest(
            "default-web.yaml",
            &yaml_docs(&[web_service().to_json(), slice.to_json()]),
        )
    };
    write(&c, &[&w2], &[&w1])?;
    c.start_agent("node-a", mode, &[])?;
    let target = format!("{SVC_V4}:80");
    let r = c.tcp(At::Pod("probe"), &target, 10)?;
    assert_eq!(
        tally(&r),
        [("web-2".to_string(), 10)].into(),
        "ready endpoints win"
    );
    // Only terminating endpoints left: they still serve.
    write(&c, &[], &[&w1])?;
    wait_until(
        Duration::from_secs(10),
        "fallback to terminating web-1",
        || {
            let r = c.tcp(At::Pod("probe"), &target, 3)?;
            Ok(tally(&r) == [("web-1".to_string(), 3)].into())
        },
    )?;
    Ok(())
}

/// The service's only endpoint is the pod that calls it: the connection comes back to the
/// pod itself (nftables needs the hairpin masquerade for this, or the pod would see a packet
/// from its own address arrive on eth0 and drop it).
fn hairpin_pod_reaches_itself_through_its_service(mode: Mode) -> Result<()> {
    let (mut c, w1, _) = cluster()?;
    c.write_service(&web_service(), WEB_PORTS, &[&w1])?;
    c.start_agent("node-a", mode, &[])?;
    for (tcp, udp) in [
        (format!("{SVC_V4}:80"), format!("{SVC_V4}:53")),
        (format!("[{SVC_V6}]:80"), format!("[{SVC_V6}]:53")),
    ] {
        for (what, r) in [
            (&tcp, c.tcp(At::Pod("web-1"), &tcp, 5)?),
            (&udp, c.udp(At::Pod("web-1"), &udp, 5)?),
        ] {
            assert_eq!(tally(&r), [("web-1".to_string(), 5)].into(), "{what}");
            if let Some(Ok(reply)) = r.first() {
                eprintln!("hairpin {what}: web-1 saw client {}", reply.client);
            }
        }
    }
    Ok(())
}

fn sctp_cluster_ip_answers(mode: Mode) -> Result<()> {
    if !sluice_tests::sctp_supported() {
        eprintln!(
            "skipping sctp_cluster_ip_answers::{}: this kernel cannot create SCTP sockets \
             (socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP) fails: no sctp module)",
            mode.as_str()
        );
        return Ok(());
    }
    let (mut c, w1, w2) = cluster()?;
    let svc = Service::new("default", "web")
        .cluster_ips(&[SVC_V4, SVC_V6])
        .port(Port::sctp(80, 8080).named("sctp"))
        .port(Port::tcp(80, 8080).named("http"));
    c.write_service(
        &svc,
        &[("sctp", "SCTP", 8080), ("http", "TCP", 8080)],
        &[&w1, &w2],
    )?;
    c.start_agent("node-a", mode, &[])?;
    for addr in [format!("{SVC_V4}:80"), format!("[{SVC_V6}]:80")] {
        let r = c.sctp(At::Pod("probe"), &addr, 20)?;
        assert_eq!(pods_seen(&r), both(), "sctp {addr}: {:?}", tally(&r));
        // Same port number, other protocol: still its own frontend.
        let r = c.tcp(At::Pod("probe"), &addr, 10)?;
        assert_eq!(pods_seen(&r), both(), "tcp {addr}: {:?}", tally(&r));
    }
    let r = c.sctp(At::Node("node-a"), format!("{SVC_V4}:80"), 10)?;
    assert_eq!(pods_seen(&r), both(), "sctp from the node: {:?}", tally(&r));
    Ok(())
}

/// `(pod, zone, hints.forZones)` → the web Service (trafficDistribution: PreferClose) and
/// its v4/v6 slices.
fn write_zoned_web(c: &Cluster, svc: &Service, endpoints: &[(&Pod, &str, &[&str])]) -> Result<()> {
    let mut docs = vec![svc.to_json()];
    for (family, suffix) in [(Family::V4, "v4"), (Family::V6, "v6")] {
        let mut slice = EndpointSlice::new("default", &format!("web-{suffix}"), "web", family)
            .port("http", "TCP", 8080)
            .port("dns", "UDP", 8080);
        for (pod, zone, hints) in endpoints {
            slice = slice.endpoint(Endpoint::of(pod, family).in_zone(zone).for_zones(hints));
        }
        docs.push(slice.to_json());
    }
    c.write_manifest("default-web.yaml", &yaml_docs(&docs))
}

fn topology_hints_keep_traffic_in_the_zone_unless_incomplete(mode: Mode) -> Result<()> {
    let (mut c, w1, w2) = cluster()?;
    // web-3 runs in zone-b but is hinted to zone-a, as the EndpointSlice controller does to
    // balance zones: hints decide, not where the pod runs.
    let w3 = c.add_pod("node-b", "web-3")?;
    c.add_pod("node-b", "probe-b")?;
    c.set_node_zones(&[("node-a", "zone-a"), ("node-b", "zone-b")])?;
    let svc = web_service().spec_field("trafficDistribution", json!("PreferClose"));
    write_zoned_web(
        &c,
        &svc,
        &[
            (&w1, "zone-a", &["zone-a"]),
            (&w2, "zone-b", &["zone-b"]),
            (&w3, "zone-b", &["zone-a"]),
        ],
    )?;
    c.start_agent("node-a", mode, &[])?;
    c.start_agent("node-b", mode, &[])?;
    let set = |pods: &[&str]| -> BTreeSet<String> { pods.iter().map(|p| p.to_string()).collect() };
    for addr in [format!("{SVC_V4}:80"), format!("[{SVC_V6}]:80")] {
        let r = c.tcp(At::Pod("probe"), &addr, 30)?;
        assert_eq!(pods_seen(&r), set(&["web-1", "web-3"]), "zone-a {addr}");
        let r = c.tcp(At::Pod("probe-b"), &addr, 10)?;
        assert_eq!(pods_seen(&r), set(&["web-2"]), "zone-b {addr}");
    }
    let r = c.udp(At::Pod("probe"), format!("{SVC_V4}:53"), 30)?;
    assert_eq!(pods_seen(&r), set(&["web-1", "web-3"]), "zone-a udp");

    // One ready endpoint without hints: hints are ignored, every endpoint is used.
    write_zoned_web(
        &c,
        &svc,
        &[
            (&w1, "zone-a", &["zone-a"]),
            (&w2, "zone-b", &[]),
            (&w3, "zone-b", &["zone-a"]),
        ],
    )?;
    let all = set(&["web-1", "web-2", "web-3"]);
    for (at, node) in [("probe", "node-a"), ("probe-b", "node-b")] {
        wait_until(
            Duration::from_secs(10),
            &format!("all endpoints from {node}"),
            || {
                let r = c.tcp(At::Pod(at), format!("{SVC_V4}:80"), 30)?;
                Ok(pods_seen(&r) == all)
            },
        )?;
    }
    let r = c.tcp(At::Pod("probe"), format!("[{SVC_V6}]:80"), 30)?;
    assert_eq!(pods_seen(&r), all, "incomplete hints, v6");
    Ok(())
}

/// UDP entries toward `ip` in `node`'s conntrack table from source port `sport`.
fn udp_conntrack_to(c: &Cluster, node: &str, ip: IpAddr, sport: u16) -> Result<Vec<String>> {
    let family = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
    let out = c.exec(
        At::Node(node),
        &[
            "conntrack",
            "-L",
            "-f",
            family,
            "-p",
            "udp",
            "--reply-src",
            &ip.to_string(),
        ],
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("sport={sport} ")))
        .map(str::to_owned)
        .collect())
}

/// A UDP client that never changes its source port (a resolver's socket) while its
/// service appears, scales to zero and back: unanswered meanwhile, answered again as soon
/// as an endpoint is there, from inside (ClusterIP) and from outside (NodePort).
fn udp_service_scaled_to_zero_and_back_answers_at_once(mode: Mode) -> Result<()> {
    let (mut c, w1, w2) = cluster()?;
    let svc = web_service()
        .kind("NodePort")
        .port(Port::udp(5353, 8080).named("mdns").node_port(30053));
    let ports: &[(&str, &str, u16)] = &[
        ("http", "TCP", 8080),
        ("dns", "UDP", 8080),
        ("mdns", "UDP", 8080),
    ];
    c.start_agent("node-a", mode, &[])?;
    let node_a = c.node("node-a")?.clone();
    let opts = |source_port| ProbeOpts {
        count: 2,
        source_port: Some(source_port),
        timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let inside = (At::Pod("probe"), format!("{SVC_V4}:53"), opts(40053));
    let outside = (At::Client, node_a.v4(30053).to_string(), opts(40054));
    // The clients start before the service exists: their datagrams go unanswered and leave
    // conntrack entries without NAT on node-a (routed away, or to no local socket).
    for (at, target, o) in [&inside, &outside] {
        let r = c.probe(*at, Proto::Udp, target, o)?;
        assert!(r.iter().all(|r| r.is_err()), "{target}: {r:?}");
    }
    // The service appears: the same flows are answered at once.
    c.write_service(&svc, ports, &[&w1])?;
    for (at, target, o) in [&inside, &outside] {
        wait_until(
            Duration::from_secs(5),
            &format!("{target} answered by web-1"),
            || {
                let r = c.probe(*at, Proto::Udp, target, o)?;
                Ok(tally(&r) == [("web-1".to_string(), 2)].into())
            },
        )?;
    }

    // Scale to zero: the clients keep sending from the same ports and get no answer.
    c.write_service(&svc, ports, &[])?;
    for (at, target, o) in [&inside, &outside] {
        wait_until(
            Duration::from_secs(10),
            &format!("{target} unanswered"),
            || {
                let r = c.probe(*at, Proto::Udp, target, o)?;
                Ok(r.iter().all(|r| r.is_err()))
            },
        )?;
    }
    if mode == Mode::Nftables {
        // The NAT toward the gone endpoint was removed from conntrack.
        for port in [40053, 40054] {
            let left = udp_conntrack_to(&c, "node-a", w1.ipv4.into(), port)?;
            assert!(left.is_empty(), "stale entries toward web-1: {left:?}");
        }
    }
    // Keep sending while there is no endpoint, as a resolver would.
    for (at, target, o) in [&inside, &outside] {
        let r = c.probe(*at, Proto::Udp, target, o)?;
        assert!(r.iter().all(|r| r.is_err()), "{target}: {r:?}");
    }

    // And back, on another pod: the same flows are answered at once, not after the
    // conntrack timeout of whatever was recorded while there was no endpoint.
    c.write_service(&svc, ports, &[&w2])?;
    for (at, target, o) in [&inside, &outside] {
        wait_until(
            Duration::from_secs(5),
            &format!("{target} answered by web-2"),
            || {
                let r = c.probe(*at, Proto::Udp, target, o)?;
                Ok(tally(&r) == [("web-2".to_string(), 2)].into())
            },
        )?;
    }
    Ok(())
}

/// What must not change when the agent restarts: for nftables the tables' and affinity
/// sets' handles and the clients in the affinity sets; for eBPF the ids of the pinned maps.
fn dataplane_identity(c: &Cluster, mode: Mode, clients: &[IpAddr]) -> Result<Vec<String>> {
    match mode {
        Mode::Nftables => {
            let mut id = Vec::new();
            for family in ["ip", "ip6"] {
                let out = c.exec(
                    At::Node("node-a"),
                    &["nft", "-a", "list", "table", family, "sluice"],
                )?;
                anyhow::ensure!(
                    out.status.success(),
                    "nft list table {family} sluice: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let text = String::from_utf8_lossy(&out.stdout);
                id.extend(
                    text.lines()
                        .filter(|l| l.starts_with("table ") || l.contains("set aff-"))
                        .map(|l| l.trim().to_owned()),
                );
                if family == "ip" {
                    for ip in clients {
                        anyhow::ensure!(
                            text.contains(&format!("{ip} expires")),
                            "client {ip} not in an affinity set:\n{text}"
                        );
                    }
                }
            }
            Ok(id)
        }
        Mode::Ebpf => {
            let dir = c.node("node-a")?.bpffs.clone();
            let mut id = Vec::new();
            for entry in std::fs::read_dir(&dir).with_context(|| dir.display().to_string())? {
                let path = entry?.path();
                let name = path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                if name.starts_with("sl_") && name.ends_with("_v1") {
                    id.push(format!(
                        "{name} id {}",
                        sluice_tests::pinned_object_id(&path)?
                    ));
                }
            }
            id.sort();
            anyhow::ensure!(!id.is_empty(), "no pinned maps in {}", dir.display());
            Ok(id)
        }
    }
}

fn agent_restart_reconciles_without_flushing(mode: Mode) -> Result<()> {
    let (mut c, w1, w2) = cluster()?;
    let w3 = c.add_pod("node-b", "web-3")?;
    let mut client_ips = vec![c.pod("probe")?.ipv4.into()];
    for name in ["probe-2", "probe-3"] {
        client_ips.push(c.add_pod("node-a", name)?.ipv4.into());
    }
    let clients = ["probe", "probe-2", "probe-3"];
    let web = web_service().session_affinity(600);
    c.write_service(&web, WEB_PORTS, &[&w1, &w2, &w3])?;
    let http = &[("http", "TCP", 8080)];
    let one = |name: &str, ip: &str| {
        Service::new("default", name)
            .cluster_ips(&[ip])
            .port(Port::tcp(80, 8080).named("http"))
    };
    c.write_service(&one("old", "10.96.0.30"), http, &[&w1])?;
    c.start_agent("node-a", mode, &[])?;
    let target = format!("{SVC_V4}:80");
    let mut chosen = BTreeMap::new();
    for cl in clients {
        let r = c.tcp(At::Pod(cl), &target, 5)?;
        let seen = tally(&r);
        assert_eq!(seen.len(), 1, "{cl}: {seen:?}");
        chosen.insert(cl, seen.into_keys().next().unwrap_or_default());
    }
    eprintln!("affinity before restart: {chosen:?}");
    assert_eq!(
        c.tcp1(At::Pod("probe"), "10.96.0.30:80")?.map(|g| g.pod),
        Ok("web-1".into())
    );
    let mut held = c.hold_tcp(At::Pod("probe"), &target)?;
    assert_eq!(&held.greeting().pod, &chosen["probe"]);
    let before = dataplane_identity(&c, mode, &client_ips)?;

    // A rolling restart: SIGTERM. While the agent is down, one service goes and one comes.
    let status = c.stop_agent("node-a")?;
    assert!(status.success(), "agent exit: {status}");
    c.remove_manifest("default-old.yaml")?;
    c.write_service(&one("new", "10.96.0.20"), http, &[&w2])?;
    let expect = format!("{}: agent-down", chosen["probe"]);
    assert_eq!(held.send("agent-down")?, Ok(expect));

    c.start_agent("node-a", mode, &[])?;
    let after = dataplane_identity(&c, mode, &client_ips)?;
    assert_eq!(before, after, "re-created instead of reconciled");
    let expect = format!("{}: agent-back", chosen["probe"]);
    assert_eq!(held.send("agent-back")?, Ok(expect));
    for cl in clients {
        let r = c.tcp(At::Pod(cl), &target, 5)?;
        assert_eq!(
            tally(&r),
            [(chosen[cl].clone(), 5)].into(),
            "{cl} kept its pod"
        );
    }
    // The change made while the agent was down is applied.
    wait_until(Duration::from_secs(10), "new service answers", || {
        Ok(c.tcp1(At::Pod("probe"), "10.96.0.20:80")?.map(|g| g.pod) == Ok("web-2".into()))
    })?;
    wait_until(Duration::from_secs(10), "old service gone", || {
        Ok(c.tcp1(At::Pod("probe"), "10.96.0.30:80")?.is_err())
    })?;
    if mode == Mode::Nftables {
        let out = c.exec(
            At::Node("node-a"),
            &["nft", "list", "table", "ip", "sluice"],
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("default/old"), "stale chains left:\n{text}");
    }
    held.close()
}

/// A LoadBalancer IP with externalTrafficPolicy: Local, from outside: the node with the
/// endpoint serves it and the pod sees the real client; a node without one drops it.
fn load_balancer_ip_local_policy_served_only_where_endpoints_are(mode: Mode) -> Result<()> {
    let (mut c, w1, _) = cluster()?;
    let svc = Service::new("default", "web")
        .cluster_ips(&[SVC_V4, SVC_V6])
        .port(Port::tcp(80, 8080).named("http").node_port(30080))
        .load_balancer_ips(&["203.0.113.10", "2001:db8:ff::10"])
        .external_traffic_policy("Local")
        .health_check_node_port(32000);
    // Only web-1, on node-a, backs the service.
    c.write_service(&svc, &[("http", "TCP", 8080)], &[&w1])?;
    c.start_agent("node-a", mode, &[])?;
    c.start_agent("node-b", mode, &[])?;
    let targets = [
        ("203.0.113.10:80", CLIENT_V4.to_string()),
        ("[2001:db8:ff::10]:80", CLIENT_V6.to_string()),
    ];
    // The "cloud load balancer" sends to node-a.
    c.client_route("203.0.113.0/24", "node-a")?;
    c.client_route("2001:db8:ff::/64", "node-a")?;
    for (addr, client) in &targets {
        let r = c.tcp(At::Client, addr, 10)?;
        assert_eq!(
            tally(&r),
            [("web-1".to_string(), 10)].into(),
            "via node-a {addr}"
        );
        for reply in r.iter().flatten() {
            assert_eq!(&reply.client.ip().to_string(), client, "source preserved");
        }
    }
    // ... and now to node-b, which has no local endpoint: dropped, not forwarded to web-1.
    c.client_route("203.0.113.0/24", "node-b")?;
    c.client_route("2001:db8:ff::/64", "node-b")?;
    let opts = ProbeOpts {
        count: 2,
        timeout: Duration::from_secs(1),
        ..Default::default()
    };
    for (addr, _) in &targets {
        let r = c.probe(At::Client, Proto::Tcp, addr, &opts)?;
        assert!(
            r.iter().all(|r| *r == Err(ProbeError::Timeout)),
            "via node-b {addr}: {r:?}"
        );
    }
    Ok(())
}

/// A dual-stack NodePort / LoadBalancer service with the default Cluster policy answers from
/// outside on both families, TCP and UDP, from both pods; the remote pod sees node-a's
/// address of the same family (masquerade), so its replies find their way back.
fn dual_stack_node_port_and_load_balancer_from_outside(mode: Mode) -> Result<()> {
    let (mut c, w1, w2) = cluster()?;
    let svc = Service::new("default", "web")
        .cluster_ips(&[SVC_V4, SVC_V6])
        .port(Port::tcp(80, 8080).named("http").node_port(30080))
        .port(Port::udp(53, 8080).named("dns").node_port(30053))
        .load_balancer_ips(&["203.0.113.10", "2001:db8:ff::10"]);
    c.write_service(&svc, WEB_PORTS, &[&w1, &w2])?;
    c.client_route("203.0.113.0/24", "node-a")?;
    c.client_route("2001:db8:ff::/64", "node-a")?;
    c.start_agent("node-a", mode, &[])?;
    let a = c.node("node-a")?.clone();
    let cases: [(String, String, IpAddr); 4] = [
        (
            a.v4(30080).to_string(),
            a.v4(30053).to_string(),
            a.ipv4.into(),
        ),
        (
            a.v6(30080).to_string(),
            a.v6(30053).to_string(),
            a.ipv6.into(),
        ),
        (
            "203.0.113.10:80".into(),
            "203.0.113.10:53".into(),
            a.ipv4.into(),
        ),
        (
            "[2001:db8:ff::10]:80".into(),
            "[2001:db8:ff::10]:53".into(),
            a.ipv6.into(),
        ),
    ];
    for (tcp, udp, node_ip) in &cases {
        for (what, r) in [
            (tcp, c.tcp(At::Client, tcp, 30)?),
            (udp, c.udp(At::Client, udp, 30)?),
        ] {
            assert_eq!(pods_seen(&r), both(), "{what}: {:?}", tally(&r));
            for reply in r.iter().flatten().filter(|r| r.pod == "web-2") {
                assert_eq!(&reply.client.ip(), node_ip, "{what}: masqueraded to node-a");
            }
        }
    }
    Ok(())
}

/// A UDP endpoint is removed while the agent is down (its pod keeps running): once the agent
/// is back, clients that kept their source port move to the remaining endpoint at once, from
/// inside (ClusterIP) and from outside (NodePort).
fn udp_flows_move_when_their_endpoint_went_while_the_agent_was_down(mode: Mode) -> Result<()> {
    let (mut c, w1, w2) = cluster()?;
    let svc = web_service()
        .kind("NodePort")
        .port(Port::udp(5353, 8080).named("mdns").node_port(30053));
    let ports: &[(&str, &str, u16)] = &[
        ("http", "TCP", 8080),
        ("dns", "UDP", 8080),
        ("mdns", "UDP", 8080),
    ];
    c.write_service(&svc, ports, &[&w1])?;
    c.start_agent("node-a", mode, &[])?;
    let node_a = c.node("node-a")?.clone();
    let opts = |source_port| ProbeOpts {
        count: 2,
        source_port: Some(source_port),
        timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let inside = (At::Pod("probe"), format!("{SVC_V4}:53"), opts(40053));
    let outside = (At::Client, node_a.v4(30053).to_string(), opts(40054));
    for (at, target, o) in [&inside, &outside] {
        let r = c.probe(*at, Proto::Udp, target, o)?;
        assert_eq!(tally(&r), [("web-1".to_string(), 2)].into(), "{target}");
    }
    c.stop_agent("node-a")?;
    c.write_service(&svc, ports, &[&w2])?;
    c.start_agent("node-a", mode, &[])?;
    for (at, target, o) in [&inside, &outside] {
        wait_until(
            Duration::from_secs(5),
            &format!("{target} answered by web-2"),
            || {
                let r = c.probe(*at, Proto::Udp, target, o)?;
                Ok(tally(&r) == [("web-2".to_string(), 2)].into())
            },
        )?;
    }
    Ok(())
}

/// `sessionAffinity: ClientIP` with a 1 s timeout: back-to-back connections stay on one pod;
/// once the client has been quiet for longer than the timeout it is free to land elsewhere
/// (each round after a pause is a fresh random choice, so the other pod shows up).
fn session_affinity_expires_after_its_timeout(mode: Mode) -> Result<()> {
    let (mut c, w1, w2) = cluster()?;
    c.write_service(&web_service().session_affinity(1), WEB_PORTS, &[&w1, &w2])?;
    c.start_agent("node-a", mode, &[])?;
    let target = format!("{SVC_V4}:80");
    let r = c.tcp(At::Pod("probe"), &target, 10)?;
    let first = tally(&r);
    assert_eq!(first.len(), 1, "within the timeout: {first:?}");
    let first = first.into_keys().next().unwrap_or_default();
    assert!(first.starts_with("web-"), "{first}");
    // The chance of never leaving `first` in 12 fresh choices is 1 in 4096.
    let mut seen = vec![first.clone()];
    for _ in 0..12 {
        std::thread::sleep(Duration::from_millis(1500));
        let r = c.tcp(At::Pod("probe"), &target, 1)?;
        let pod = r
            .first()
            .and_then(|r| r.as_ref().ok())
            .map(|g| g.pod.clone())
            .with_context(|| format!("{r:?}"))?;
        seen.push(pod.clone());
        if pod != first {
            return Ok(());
        }
    }
    anyhow::bail!("affinity never expired: {seen:?}")
}

//! End to end with the real agent: what a user of the cluster observes. One suite, run
//! against every dataplane: each scenario is a function of the [`Mode`], and
//! `backend_tests!` makes a `scenario::nftables` and a `scenario::ebpf` test of it
//! (`cargo test -p sluice-tests --test l4_e2e ebpf` runs one backend).
//! Needs root and the binaries (`cargo build -p sluice-agent -p sluice-echo`).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use sluice_tests::manifests::{Port, Service};
use sluice_tests::{
    At, CLIENT_V4, CLIENT_V6, Cluster, Mode, Pod, ProbeError, ProbeResults, tally, wait_until,
};

/// `backend_tests!(scenario)` → `mod scenario { fn nftables(), fn ebpf() }`.
macro_rules! backend_tests {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[test]
            fn nftables() -> anyhow::Result<()> {
                if !sluice_tests::require_root(concat!(stringify!($scenario), "::nftables")) {
                    return Ok(());
                }
                super::$scenario(sluice_tests::Mode::Nftables)
            }
            #[test]
            fn ebpf() -> anyhow::Result<()> {
                if !sluice_tests::require_root(concat!(stringify!($scenario), "::ebpf")) {
                    return Ok(());
                }
                super::$scenario(sluice_tests::Mode::Ebpf)
            }
        }
    )*};
}

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

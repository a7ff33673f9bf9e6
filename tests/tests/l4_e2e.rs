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

//! Restart under load, both dataplanes: continuous TCP and UDP through a ClusterIP (from a pod)
//! and a NodePort (from outside), established connections, and HTTP through the Ingress, while
//! the agent is SIGKILLed and restarted five times. The L4 datapath lives in the kernel (nft
//! table, pinned maps and links), so no connection or datagram may fail; the Ingress proxy
//! lives in the agent process, so requests fail while it is down (connection refused): counted,
//! none outside the kill → healthz window and none with a wrong status (a restarted proxy
//! accepts only once its routes are loaded). Needs root and the binaries.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use anyhow::{Result, ensure};
use sluice_tests::manifests::{IngressPath, Port, Service, ingress, ingress_class, yaml_docs};
use sluice_tests::{At, Cluster, Mode, Proto, Tally, Traffic, backend_tests, tally, wait_until};

backend_tests!(agent_sigkilled_five_times_under_load);

const RESTARTS: usize = 5;
/// Traffic before, between and after the restarts.
const STEADY: Duration = Duration::from_millis(1500);

fn web() -> Service {
    Service::new("default", "web")
        .kind("NodePort")
        .cluster_ips(&["10.96.0.10"])
        .port(Port::tcp(80, 8080).named("tcp").node_port(30080))
        .port(Port::udp(53, 8080).named("udp").node_port(30053))
        .port(Port::tcp(81, 8081).named("http"))
}

const PORTS: &[(&str, &str, u16)] = &[
    ("tcp", "TCP", 8080),
    ("udp", "UDP", 8080),
    ("http", "TCP", 8081),
];

fn setup(mode: Mode) -> Result<Cluster> {
    let mut c = Cluster::new(&["node-a", "node-b"])?;
    let w1 = c.add_pod("node-a", "web-1")?;
    let w2 = c.add_pod("node-b", "web-2")?;
    c.add_pod("node-a", "probe")?;
    c.write_service(&web(), PORTS, &[&w1, &w2])?;
    let route = IngressPath {
        host: Some("web.example.com".into()),
        path: "/".into(),
        path_type: "Prefix".into(),
        service: "web".into(),
        port: 81,
    };
    c.write_manifest(
        "ingress.yaml",
        &yaml_docs(&[
            ingress_class("sluice", "sluice.dev/ingress", true),
            ingress("default", "web", Some("sluice"), &[route], &[], None),
        ]),
    )?;
    c.start_agent("node-a", mode, &[])?;
    // Everything answers before the load starts.
    let r = c.tcp(At::Pod("probe"), "10.96.0.10:80", 10)?;
    ensure!(tally(&r).len() == 2, "ClusterIP before: {:?}", tally(&r));
    Ok(c)
}

fn agent_sigkilled_five_times_under_load(mode: Mode) -> Result<()> {
    let mut c = setup(mode)?;
    let node_a = c.node("node-a")?.clone();
    let resolve = format!("web.example.com:80:{}", node_a.ipv4);
    wait_until(Duration::from_secs(5), "the Ingress answers", || {
        Ok(c.http(
            At::Client,
            "http://web.example.com/",
            &["--resolve", &resolve],
        )?
        .status
            == 200)
    })?;

    let mut held_cluster_ip = Vec::new();
    let mut held_node_port = Vec::new();
    for _ in 0..2 {
        held_cluster_ip.push(c.hold_tcp(At::Pod("probe"), "10.96.0.10:80")?);
        held_node_port.push(c.hold_tcp(At::Client, node_a.v4(30080))?);
    }
    let mut traffic = Traffic::default();
    let every = Duration::from_millis(100);
    traffic.held_connections("established clusterip", held_cluster_ip, every);
    traffic.held_connections("established nodeport", held_node_port, every);
    let probe = At::Pod("probe");
    traffic.new_connections(&c, "new tcp clusterip", probe, Proto::Tcp, "10.96.0.10:80")?;
    traffic.new_connections(&c, "new udp clusterip", probe, Proto::Udp, "10.96.0.10:53")?;
    let (tcp_np, udp_np) = (node_a.v4(30080), node_a.v4(30053));
    traffic.new_connections(&c, "new tcp nodeport", At::Client, Proto::Tcp, tcp_np)?;
    traffic.new_connections(&c, "new udp nodeport", At::Client, Proto::Udp, udp_np)?;
    let url = "http://web.example.com/";
    traffic.http(
        &c,
        "http ingress",
        At::Client,
        url,
        &["--resolve", &resolve],
    );

    // Each restart as (killed, healthz 200 again) on the traffic's clock.
    let mut downs = Vec::new();
    for _ in 0..RESTARTS {
        std::thread::sleep(STEADY);
        let killed = traffic.elapsed();
        c.kill_agent("node-a")?;
        c.start_agent("node-a", mode, &[])?;
        downs.push(killed..traffic.elapsed());
    }
    std::thread::sleep(STEADY);
    let tallies = traffic.stop()?;
    report(mode, &tallies, &downs);
    check(&c, &tallies, &downs)
}

fn report(mode: Mode, tallies: &BTreeMap<String, Tally>, downs: &[Range<Duration>]) {
    let downtimes: Vec<Duration> = downs.iter().map(|d| d.end - d.start).collect();
    eprintln!(
        "restart under load ({}): {RESTARTS} SIGKILLs, kill -> healthz 200: {downtimes:?}",
        mode.as_str()
    );
    for (name, t) in tallies {
        eprintln!("  {name}: {t}");
    }
}

/// A failure is counted when its curl run ends (up to 10 refused requests), so it may be
/// seen a little after the agent is back.
const SEEN_LATE: Duration = Duration::from_millis(500);

fn check(c: &Cluster, tallies: &BTreeMap<String, Tally>, downs: &[Range<Duration>]) -> Result<()> {
    for (name, t) in tallies {
        if name.starts_with("http") {
            continue;
        }
        ensure!(
            t.failed == 0 && t.ok > 0,
            "{name}: the kernel datapath must not notice the agent restarts: {t}"
        );
    }
    let held: u64 = ["established clusterip", "established nodeport"]
        .iter()
        .map(|n| tallies[*n].ok)
        .sum();
    ensure!(held == 4, "all four established connections alive: {held}");
    // The proxy lives in the agent: requests fail only while it is down (no response, never a
    // wrong status such as a 404 from a route table not loaded yet).
    let http = &tallies["http ingress"];
    ensure!(http.ok > 0, "http: {http}");
    let wrong: Vec<&String> = http
        .errors
        .keys()
        .filter(|e| !matches!(e.as_str(), "000" | "curl stopped"))
        .collect();
    ensure!(
        wrong.is_empty(),
        "http failures other than no response: {http}"
    );
    let outside: Vec<&Duration> = http
        .failure_times
        .iter()
        .filter(|t| {
            !downs
                .iter()
                .any(|d| d.start <= **t && **t <= d.end + SEEN_LATE)
        })
        .collect();
    ensure!(
        outside.is_empty(),
        "http requests failed while the agent was up: at {outside:?} (down {downs:?})"
    );
    let last = c.http(
        At::Client,
        "http://web.example.com/",
        &[
            "--resolve",
            &format!("web.example.com:80:{}", c.node("node-a")?.ipv4),
        ],
    )?;
    ensure!(
        last.status == 200,
        "Ingress after the restarts: {}",
        last.status
    );
    Ok(())
}

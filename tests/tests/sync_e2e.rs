//! End to end, both dataplanes: how fast manifest changes reach the datapath, and NodePorts
//! on every node with an agent on each. Needs root and the binaries.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use sluice_tests::manifests::{Port, Service};
use sluice_tests::{At, Cluster, Mode, tally};

use sluice_tests::backend_tests;

backend_tests!(
    endpoint_added_and_removed_is_honoured_within_a_second,
    node_port_answers_on_every_node,
    bad_manifests_are_named_in_the_log_and_disturb_nothing,
);

/// Dual-stack: NodePorts are served in the families a Service has (as kube-proxy's proxiers).
fn web() -> Service {
    Service::new("default", "web")
        .kind("NodePort")
        .cluster_ips(&["10.96.0.10", "fd00:10:96::10"])
        .port(Port::tcp(80, 8080).named("http").node_port(30080))
}

const PORTS: &[(&str, &str, u16)] = &[("http", "TCP", 8080)];

/// Polls (no sleep beyond the probe itself) until `seen` holds for one batch of connections;
/// returns how long it took.
fn time_until(
    c: &Cluster,
    what: &str,
    seen: impl Fn(&BTreeSet<String>) -> bool,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let replies = c.tcp(At::Pod("probe"), "10.96.0.10:80", 8)?;
        let pods: BTreeSet<String> = tally(&replies).into_keys().collect();
        if seen(&pods) {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: still {pods:?} after 10 s"
        );
    }
}

fn endpoint_added_and_removed_is_honoured_within_a_second(mode: Mode) -> Result<()> {
    let mut c = Cluster::new(&["node-a", "node-b"])?;
    let w1 = c.add_pod("node-a", "web-1")?;
    let w2 = c.add_pod("node-b", "web-2")?;
    c.add_pod("node-a", "probe")?;
    c.write_service(&web(), PORTS, &[&w1])?;
    c.start_agent("node-a", mode, &[])?;
    time_until(&c, "initial endpoint", |p| {
        p.len() == 1 && p.contains("web-1")
    })?;

    c.write_service(&web(), PORTS, &[&w1, &w2])?;
    let added = time_until(&c, "added endpoint", |p| p.contains("web-2"))?;
    c.write_service(&web(), PORTS, &[&w2])?;
    let removed = time_until(&c, "removed endpoint", |p| {
        p.len() == 1 && p.contains("web-2")
    })?;
    eprintln!(
        "{}: endpoint added in {added:?}, removed in {removed:?}",
        mode.as_str()
    );
    ensure!(
        added < Duration::from_secs(1),
        "added endpoint honoured after {added:?}"
    );
    ensure!(
        removed < Duration::from_secs(1),
        "removed endpoint honoured after {removed:?}"
    );
    Ok(())
}

fn node_port_answers_on_every_node(mode: Mode) -> Result<()> {
    let mut c = Cluster::new(&["node-a", "node-b"])?;
    let w1 = c.add_pod("node-a", "web-1")?;
    let w2 = c.add_pod("node-b", "web-2")?;
    c.write_service(&web(), PORTS, &[&w1, &w2])?;
    c.start_agent("node-a", mode, &[])?;
    c.start_agent("node-b", mode, &[])?;
    for node in ["node-a", "node-b"] {
        let n = c.node(node)?.clone();
        for addr in [n.v4(30080), n.v6(30080)] {
            let replies = c.tcp(At::Client, addr, 24)?;
            let pods: BTreeSet<String> = tally(&replies).into_keys().collect();
            let expected: BTreeSet<String> = ["web-1".into(), "web-2".into()].into();
            ensure!(
                pods == expected,
                "NodePort {addr} via {node}: {:?}",
                tally(&replies)
            );
        }
    }
    Ok(())
}

fn bad_manifests_are_named_in_the_log_and_disturb_nothing(mode: Mode) -> Result<()> {
    let mut c = Cluster::new(&["node-a"])?;
    let w1 = c.add_pod("node-a", "web-1")?;
    c.add_pod("node-a", "probe")?;
    c.write_service(&web(), PORTS, &[&w1])?;
    c.start_agent("node-a", mode, &[])?;
    time_until(&c, "web served", |p| p.contains("web-1"))?;

    // A file that is not YAML, and a Service whose clusterIP is not an address.
    c.write_manifest("broken.yaml", "kind: [unclosed\n")?;
    let bad = Service::new("default", "bad-ip")
        .cluster_ips(&["10.96.0.300"])
        .port(Port::tcp(80, 8080).named("http"));
    c.write_service(&bad, PORTS, &[&w1])?;
    // A new good service applied in the same sync must still work.
    let other = Service::new("default", "other")
        .cluster_ips(&["10.96.0.11"])
        .port(Port::tcp(80, 8080).named("http"));
    c.write_service(&other, PORTS, &[&w1])?;
    sluice_tests::wait_until(Duration::from_secs(5), "the new service answers", || {
        Ok(c.tcp1(At::Pod("probe"), "10.96.0.11:80")?
            .is_ok_and(|r| r.pod == "web-1"))
    })?;
    let replies = c.tcp(At::Pod("probe"), "10.96.0.10:80", 5)?;
    ensure!(
        tally(&replies) == [("web-1".to_string(), 5)].into(),
        "web disturbed: {:?}",
        tally(&replies)
    );
    let log = c.agent_log("node-a");
    ensure!(
        log.contains("broken.yaml document 1"),
        "log names the bad file:\n{log}"
    );
    ensure!(
        log.contains("Service default/bad-ip"),
        "log names the bad Service:\n{log}"
    );
    ensure!(c.agent_healthz("node-a")? == 200, "agent healthy");
    Ok(())
}

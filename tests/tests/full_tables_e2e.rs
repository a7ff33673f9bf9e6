//! When the kernel refuses part of what the agent programs. nftables: a rule outside sluice's
//! control (a verdict map element added by hand to the `sluice` table) holds a Service's
//! route chain, so the transaction that replaces that chain (the Service turns to
//! `internalTrafficPolicy: Local`) is refused with EBUSY — a real kernel refusal, for one
//! Service only. eBPF: a Service with more source ranges than
//! `sl_src_v1` holds when its size is fixed (`--bpf-map-sizes src=16384`; automatically sized
//! maps grow instead, see `dp-ebpf/src/sizing.rs`). In both, every other Service keeps being served and
//! programmed (without waiting for the refused one's retries), established connections keep
//! flowing, the refused one keeps its previous state, the log names it and a metric counts
//! it. Needs root and the binaries.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use sluice_tests::manifests::{Port, Service};
use sluice_tests::{At, Cluster, HeldConn, Mode, Pod, require_root, tally, wait_for, wait_until};

const PORTS: &[(&str, &str, u16)] = &[("tcp", "TCP", 8080)];

fn svc(name: &str, ip: &str) -> Service {
    Service::new("default", name)
        .cluster_ips(&[ip])
        .port(Port::tcp(80, 8080).named("tcp"))
}

/// Which single pod answers 4 connections to `addr`, if exactly one does.
fn answering(c: &Cluster, addr: &str) -> Result<Option<String>> {
    let t = tally(&c.tcp(At::Pod("probe"), addr, 4)?);
    Ok((t.len() == 1 && t.values().sum::<usize>() == 4)
        .then(|| t.into_keys().next().unwrap_or_default()))
}

fn served_by(c: &Cluster, addr: &str, pod: &Pod) -> Result<bool> {
    Ok(answering(c, addr)?.as_deref() == Some(pod.name.as_str()))
}

/// An established connection still answers, from the pod that greeted it.
fn still_answers(conn: &mut HeldConn, line: &str) -> Result<()> {
    let pod = conn.greeting().pod.clone();
    let reply = conn.send(line)?;
    ensure!(
        matches!(&reply, Ok(r) if *r == format!("{pod}: {line}")),
        "the established connection: {reply:?}"
    );
    Ok(())
}

/// A metric's value (first sample of that name).
fn metric(c: &Cluster, name: &str) -> Result<f64> {
    let text = c.agent_metrics("node-a")?;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .with_context(|| format!("no metric {name} in:\n{text}"))
}

/// The name of the victim's route chain in `ip sluice`.
fn route_chain(c: &Cluster, service: &str) -> Result<String> {
    let out = c.exec(
        At::Node("node-a"),
        &["nft", "list", "table", "ip", "sluice"],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find(|w| w.starts_with("svc-") && w.contains(&format!("default/{service}/")))
        .map(str::to_owned)
        .with_context(|| format!("no route chain of {service} in:\n{text}"))
}

#[test]
fn nft_refusal_of_one_service_spares_the_others() -> Result<()> {
    if !require_root("nft_refusal_of_one_service_spares_the_others") {
        return Ok(());
    }
    let mut c = Cluster::new(&["node-a"])?;
    let w1 = c.add_pod("node-a", "web-1")?;
    let w2 = c.add_pod("node-a", "web-2")?;
    c.add_pod("node-a", "probe")?;
    c.write_service(&svc("web", "10.96.0.10"), PORTS, &[&w1])?;
    c.write_service(&svc("victim", "10.96.0.20"), PORTS, &[&w1])?;
    c.start_agent("node-a", Mode::Nftables, &[])?;
    wait_until(Duration::from_secs(5), "victim served", || {
        served_by(&c, "10.96.0.20:80", &w1)
    })?;

    let mut held = c.hold_tcp(At::Pod("probe"), "10.96.0.20:80")?;
    // Someone else's map in our table now jumps to the victim's route chain.
    let chain = route_chain(&c, "victim")?;
    let hold = format!(
        "add map ip sluice zz-hold {{ type inet_service : verdict ; }}\n\
         add element ip sluice zz-hold {{ 1 : goto {chain} }}\n"
    );
    let out = c.exec_input(At::Node("node-a"), &["nft", "-f", "-"], hold.as_bytes())?;
    ensure!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failures_before = metric(&c, "sluice_service_program_failures_total")?;

    // One sync: the victim turns to node-local endpoints (its old route chain must go:
    // refused) on another endpoint, web's endpoint moves, and a new Service appears.
    let local_victim = svc("victim", "10.96.0.20").internal_traffic_policy("Local");
    c.write_service(&local_victim, PORTS, &[&w2])?;
    c.write_service(&svc("web", "10.96.0.10"), PORTS, &[&w2])?;
    c.write_service(&svc("fresh", "10.96.0.30"), PORTS, &[&w1])?;
    wait_until(Duration::from_secs(5), "web moved to web-2", || {
        served_by(&c, "10.96.0.10:80", &w2)
    })?;
    wait_until(Duration::from_secs(5), "fresh served", || {
        served_by(&c, "10.96.0.30:80", &w1)
    })?;
    wait_until(Duration::from_secs(5), "the refusal logged", || {
        Ok(c.agent_log("node-a")
            .contains("nftables refused this service port"))
    })?;
    let log = c.agent_log("node-a");
    let line = log
        .lines()
        .find(|l| l.contains("nftables refused this service port"))
        .unwrap_or_default();
    ensure!(
        line.contains("default/victim"),
        "the log line names the Service: {line}"
    );
    ensure!(
        served_by(&c, "10.96.0.20:80", &w1)?,
        "the refused Service keeps its previous endpoint"
    );
    let failures = metric(&c, "sluice_service_program_failures_total")?;
    ensure!(
        failures > failures_before,
        "failures counted: {failures_before} -> {failures}"
    );
    still_answers(&mut held, "during the refusals")?;

    // While the victim keeps failing (retried with backoff), how long does a change of
    // another Service take?
    std::thread::sleep(Duration::from_secs(4));
    let changed = Instant::now();
    c.write_service(&svc("web", "10.96.0.10"), PORTS, &[&w1])?;
    let delay = wait_for(Duration::from_secs(40), "web back to web-1", || {
        Ok(served_by(&c, "10.96.0.10:80", &w1)?.then(|| changed.elapsed()))
    })?;
    ensure!(
        served_by(&c, "10.96.0.20:80", &w1)?,
        "victim still on its old endpoint"
    );

    // The foreign reference goes: the victim converges on the next retry.
    let out = c.exec(
        At::Node("node-a"),
        &["nft", "delete", "map", "ip", "sluice", "zz-hold"],
    )?;
    ensure!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let healed = Instant::now();
    let converged = wait_for(Duration::from_secs(40), "victim on web-2", || {
        Ok(served_by(&c, "10.96.0.20:80", &w2)?.then(|| healed.elapsed()))
    })?;
    eprintln!(
        "nft refusal: {} failures counted; another Service's change during the refusals took \
         {delay:?}; the victim converged {converged:?} after the reference went",
        failures - failures_before
    );
    ensure!(
        delay < Duration::from_secs(2),
        "a change of another Service waited {delay:?} behind the refused one"
    );
    Ok(())
}

/// `web` as a NodePort (30010): reached from outside through tc and the BPF conntrack.
fn node_port_web() -> Service {
    Service::new("default", "web")
        .kind("NodePort")
        .cluster_ips(&["10.96.0.10"])
        .port(Port::tcp(80, 8080).named("tcp").node_port(30010))
}

/// 17,000 source ranges on one LoadBalancer address need more `sl_src_v1` entries than the
/// 16,384 it holds with a fixed size.
fn greedy() -> Service {
    let ranges: Vec<String> = (0..17_000u32)
        .map(|i| format!("10.{}.{}.0/24", 100 + i / 256, i % 256))
        .collect();
    let ranges: Vec<&str> = ranges.iter().map(String::as_str).collect();
    Service::new("default", "greedy")
        .cluster_ips(&["10.96.0.40"])
        .port(Port::tcp(80, 8080).named("tcp").node_port(30040))
        .load_balancer_ips(&["203.0.113.40"])
        .source_ranges(&ranges)
}

#[test]
fn ebpf_map_full_spares_the_others() -> Result<()> {
    if !require_root("ebpf_map_full_spares_the_others") {
        return Ok(());
    }
    let mut c = Cluster::new(&["node-a"])?;
    let w1 = c.add_pod("node-a", "web-1")?;
    let w2 = c.add_pod("node-a", "web-2")?;
    c.add_pod("node-a", "probe")?;
    c.write_service(&node_port_web(), PORTS, &[&w1])?;
    c.start_agent("node-a", Mode::Ebpf, &["--bpf-map-sizes", "src=16384"])?;
    wait_until(Duration::from_secs(5), "web served", || {
        served_by(&c, "10.96.0.10:80", &w1)
    })?;
    // Through tc and the BPF conntrack: a flow that must outlive what follows.
    let mut held = c.hold_tcp(At::Client, c.node("node-a")?.v4(30010))?;
    let failures_before = metric(&c, "sluice_service_program_failures_total")?;

    c.write_service(&greedy(), PORTS, &[&w1])?;
    wait_until(Duration::from_secs(30), "the full map reported", || {
        Ok(c.agent_log("node-a").contains("sl_src_v1"))
    })?;
    let log = c.agent_log("node-a");
    let line = log
        .lines()
        .find(|l| l.contains("sl_src_v1"))
        .unwrap_or_default()
        .to_owned();
    ensure!(
        served_by(&c, "10.96.0.10:80", &w1)?,
        "web keeps being served"
    );
    let failures = metric(&c, "sluice_service_program_failures_total")?;
    ensure!(
        failures > failures_before,
        "failures counted: {failures_before} -> {failures}"
    );
    still_answers(&mut held, "after the refusal")?;
    // Later changes of other Services still reach the kernel.
    c.write_service(&node_port_web(), PORTS, &[&w2])?;
    c.write_service(&svc("fresh", "10.96.0.30"), PORTS, &[&w1])?;
    let changed = Instant::now();
    let web_moved = wait_until(Duration::from_secs(10), "web moved to web-2", || {
        served_by(&c, "10.96.0.10:80", &w2)
    });
    let fresh = wait_until(Duration::from_secs(10), "fresh served", || {
        served_by(&c, "10.96.0.30:80", &w1)
    });
    eprintln!(
        "eBPF map full: logged {line:?}; after {:?}: web moved {web_moved:?}, fresh served {fresh:?}",
        changed.elapsed()
    );
    ensure!(
        line.contains("default/greedy"),
        "the log names the Service: {line}"
    );
    web_moved?;
    fresh?;
    still_answers(&mut held, "after the other changes")?;
    let greedy_answers = c.tcp1(At::Pod("probe"), "10.96.0.40:80")?;
    ensure!(
        greedy_answers.is_err(),
        "the refused Service was never programmed: {greedy_answers:?}"
    );
    ensure!(c.agent_running("node-a"), "agent alive");
    Ok(())
}

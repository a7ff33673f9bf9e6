//! `cargo xtask bench`: side-by-side measurements in one run (absolute numbers vary between
//! machines; the comparison is what matters). Release build. Prints a table and writes
//! `target/bench.json`.
//!
//! * nftables sync at scale: full sync of N services vs. a one-endpoint change vs. a no-op.
//! * connection rate to one pod: direct pod IP vs. ClusterIP (nftables) vs. ClusterIP (eBPF).
//! * NodePort connection rate from outside: nftables vs. eBPF.
//! * Ingress proxy (HTTP, HTTPS) vs. direct to the backend vs. nginx (when installed), from the
//!   crates/ingress `bench` example.

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::json;
use sluice_dataplane::Dataplane;
use sluice_dp_nft::{NftCommand, NftDataplane};
use sluice_plan::{
    Backend, Family, FrontendAddr, FrontendKey, FrontendKind, FrontendPlan, NodePlan, Plan,
    PlanDelta, Protocol, Route, Selection, ServicePlan, ServicePortName, SetName,
};
use sluice_tests::manifests::{Port, Service};
use sluice_tests::{At, Cluster, Mode, ProbeOpts, Proto};

use crate::system;

struct Row {
    group: &'static str,
    name: String,
    value: f64,
    unit: &'static str,
}

pub fn run(args: &[String]) -> Result<()> {
    let services: usize = flag(args, "--services").unwrap_or(10_000);
    let connections: u32 = flag(args, "--connections").unwrap_or(2_000);
    system::ensure_packages()?;
    if !system::is_root() {
        bail!("benchmarks program the kernel in network namespaces: run as root");
    }
    // `--debug` skips the (slow) release build: the forwarding work is the kernel's either
    // way, only the agent's own sync time is affected.
    let release = !args.iter().any(|a| a == "--debug");
    crate::build_binaries(release)?;
    let bin_dir = crate::workspace_root().join(if release {
        "target/release"
    } else {
        "target/debug"
    });
    // The harness looks binaries up through this variable.
    unsafe_set_env("SLUICE_BIN_DIR", &bin_dir.display().to_string());

    let mut rows = Vec::new();
    if !args.iter().any(|a| a == "--skip-nft-sync") {
        nft_sync(services, &mut rows)?;
    }
    connection_rates(connections, &mut rows)?;
    ingress_vs_nginx(release, &mut rows)?;

    println!("\n{:<14} {:<58} {:>14}", "group", "measurement", "value");
    for r in &rows {
        println!(
            "{:<14} {:<58} {:>10.1} {}",
            r.group, r.name, r.value, r.unit
        );
    }
    let json: Vec<_> = rows
        .iter()
        .map(|r| json!({"group": r.group, "name": r.name, "value": r.value, "unit": r.unit}))
        .collect();
    let path = crate::workspace_root().join("target/bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("\nwritten to {}", path.display());
    Ok(())
}

fn flag<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn unsafe_set_env(key: &str, value: &str) {
    // SAFETY: called before any other thread of this process exists.
    unsafe { std::env::set_var(key, value) };
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("bench IP")
}

/// A ClusterIP + NodePort service port forwarding to `backends`, as compute plans it.
fn bench_service(i: usize, backends: Vec<Backend>) -> ServicePlan {
    let name = ServicePortName::new("bench", format!("svc-{i}"), "http", Protocol::Tcp);
    let frontend = |addr, port, kind, selection| FrontendPlan {
        key: FrontendKey {
            addr,
            protocol: Protocol::Tcp,
            port,
        },
        kind,
        allowed_sources: Vec::new(),
        pods: Route::forward(SetName::Cluster),
        node: Route::masqueraded(SetName::Cluster),
        outside: Route::masqueraded(SetName::Cluster),
        selection,
    };
    ServicePlan {
        name,
        frontends: vec![
            frontend(
                FrontendAddr::Ip(ip(&format!("10.96.{}.{}", i / 250, i % 250 + 1))),
                80,
                FrontendKind::ClusterIp,
                Selection::Random,
            ),
            frontend(
                FrontendAddr::NodePorts(Family::V4),
                30000 + (i % 2000) as u16,
                FrontendKind::NodePort,
                Selection::ConsistentHash,
            ),
        ],
        cluster: backends,
        local: Vec::new(),
        affinity_timeout: None,
    }
}

fn many_services(n: usize) -> Plan {
    let mut plan = Plan {
        node: std::sync::Arc::new(NodePlan {
            name: "bench".into(),
            nodeport_addresses: Vec::new(),
            pod_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
        }),
        ..Plan::default()
    };
    for i in 0..n {
        let backends = (0..3)
            .map(|j| {
                Backend::new(
                    ip(&format!("10.{}.{}.{}", 100 + j, i / 250, i % 250 + 1)),
                    8080,
                )
            })
            .collect();
        let svc = bench_service(i, backends);
        plan.services
            .insert(svc.name.clone(), std::sync::Arc::new(svc));
    }
    plan
}

/// Full sync vs. incremental one-endpoint change vs. no-op, in a scratch network namespace.
fn nft_sync(n: usize, rows: &mut Vec<Row>) -> Result<()> {
    println!("== nftables: {n} services × 3 endpoints");
    let ns = format!("sluice-bench-{}", std::process::id());
    crate::run(Command::new("ip").args(["netns", "add", &ns]))?;
    let result = (|| -> Result<()> {
        let mut dp = NftDataplane::with_executor(NftCommand::in_netns(&ns));
        dp.restore()?;
        let state = many_services(n);
        let t = Instant::now();
        let full = dp.resync(&state)?;
        let full_ms = ms(t.elapsed());
        let mut changed = state.clone();
        if let Some(svc) = changed.services.values_mut().nth(n / 2) {
            std::sync::Arc::make_mut(svc).cluster[1].port = 9090;
        }
        let t = Instant::now();
        let one = dp.apply(&PlanDelta::between(&state, &changed))?;
        let one_ms = ms(t.elapsed());
        let t = Instant::now();
        dp.apply(&PlanDelta::between(&changed, &changed))?;
        let noop_ms = ms(t.elapsed());
        let t = Instant::now();
        let resync = dp.resync(&changed)?;
        let resync_ms = ms(t.elapsed());
        rows.push(Row {
            group: "nft-sync",
            name: format!("first full sync ({} lines)", full.operations),
            value: full_ms,
            unit: "ms",
        });
        rows.push(Row {
            group: "nft-sync",
            name: format!("periodic full resync ({} lines)", resync.operations),
            value: resync_ms,
            unit: "ms",
        });
        rows.push(Row {
            group: "nft-sync",
            name: format!("one endpoint changed ({} lines)", one.operations),
            value: one_ms,
            unit: "ms",
        });
        rows.push(Row {
            group: "nft-sync",
            name: "nothing changed".into(),
            value: noop_ms,
            unit: "ms",
        });
        Ok(())
    })();
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    result
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `count` sequential connections with the probe; connections per second.
fn rate(c: &Cluster, at: At<'_>, addr: String, count: u32) -> Result<f64> {
    let opts = ProbeOpts {
        count,
        timeout: Duration::from_secs(2),
        ..ProbeOpts::default()
    };
    let t = Instant::now();
    let results = c.probe(at, Proto::Tcp, &addr, &opts)?;
    let elapsed = t.elapsed().as_secs_f64();
    let failed = results.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        bail!("{failed} of {count} connections to {addr} failed");
    }
    Ok(f64::from(count) / elapsed)
}

fn connection_rates(count: u32, rows: &mut Vec<Row>) -> Result<()> {
    for mode in [Mode::Nftables, Mode::Ebpf] {
        println!(
            "== connection rates, {} dataplane ({count} connections each)",
            mode.as_str()
        );
        let mut c = Cluster::new(&["node-a", "node-b"])?;
        let web = c.add_pod("node-a", "web-1")?;
        c.add_pod("node-a", "client-1")?;
        let svc = Service::new("bench", "web")
            .kind("NodePort")
            .cluster_ips(&["10.96.0.10"])
            .port(Port::tcp(80, 8080).named("tcp").node_port(30080));
        c.write_service(&svc, &[("tcp", "TCP", 8080)], &[&web])?;
        let local = Service::new("bench", "web-local")
            .kind("NodePort")
            .cluster_ips(&["10.96.0.11"])
            .external_traffic_policy("Local")
            .port(Port::tcp(80, 8080).named("tcp").node_port(30081));
        c.write_service(&local, &[("tcp", "TCP", 8080)], &[&web])?;
        if let Err(err) = c.start_agent("node-a", mode, &[]) {
            eprintln!(
                "   skipped: the {} agent did not start: {err:#}",
                mode.as_str()
            );
            continue;
        }
        let m = mode.as_str();
        if mode == Mode::Nftables {
            let direct =
                rate(&c, At::Pod("client-1"), web.v4(8080).to_string(), count).context("direct")?;
            rows.push(Row {
                group: "conn-rate",
                name: "pod → pod IP directly (baseline)".into(),
                value: direct,
                unit: "conn/s",
            });
        }
        let cluster_ip =
            rate(&c, At::Pod("client-1"), "10.96.0.10:80".into(), count).context("clusterIP")?;
        rows.push(Row {
            group: "conn-rate",
            name: format!("pod → ClusterIP ({m})"),
            value: cluster_ip,
            unit: "conn/s",
        });
        let node_port = rate(
            &c,
            At::Client,
            c.node("node-a")?.v4(30080).to_string(),
            count,
        )
        .context("nodeport")?;
        rows.push(Row {
            group: "conn-rate",
            name: format!("client → NodePort ({m})"),
            value: node_port,
            unit: "conn/s",
        });
        let node_a = c.node("node-a")?.v4(30081).to_string();
        let local = rate(&c, At::Client, node_a, count).context("NodePort eTP=Local")?;
        rows.push(Row {
            group: "conn-rate",
            name: format!("client → NodePort eTP=Local ({m})"),
            value: local,
            unit: "conn/s",
        });
    }
    Ok(())
}

/// Runs the ingress proxy benchmark example (its own loopback backend and load generator, and
/// nginx on the same backend when installed) and adds its rows.
fn ingress_vs_nginx(release: bool, rows: &mut Vec<Row>) -> Result<()> {
    println!("== ingress proxy vs. direct vs. nginx (16 clients, 5 s each)");
    let out = crate::workspace_root().join("target/ingress-bench.json");
    let mut cmd = crate::cargo();
    cmd.args([
        "run",
        "--quiet",
        "-p",
        "sluice-ingress",
        "--example",
        "bench",
    ]);
    if release {
        cmd.arg("--release");
    }
    cmd.args(["--", "--seconds", "5", "--clients", "16", "--json"])
        .arg(&out);
    crate::run(&mut cmd)?;
    let measured: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    for row in measured {
        let target = row["target"].as_str().unwrap_or("?").to_owned();
        let number = |key: &str| row[key].as_f64().unwrap_or(f64::NAN);
        rows.push(Row {
            group: "ingress",
            name: format!("{target}: requests/s"),
            value: number("rps"),
            unit: "req/s",
        });
        rows.push(Row {
            group: "ingress",
            name: format!("{target}: p99 latency"),
            value: number("p99_ms"),
            unit: "ms",
        });
    }
    Ok(())
}

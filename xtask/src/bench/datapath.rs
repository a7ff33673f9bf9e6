//! The datapath group: one echo pod behind a ClusterIP, a NodePort and an eTP=Local NodePort
//! Service, with 10 and with 10,000 Services installed, measured from a pod (ClusterIP) and
//! from the outside client (NodePorts) for every dataplane, next to the same pod reached by
//! its IP with no proxy at all (the limit).
//!
//! Per path: new TCP connections/s and the connect() time (the first packet's round trip)
//! from this binary's multi-threaded probe; requests/s with one request per connection and
//! with keep-alive from `wrk`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde_json::Value;
use sluice_tests::manifests::{self, Port, Service};
use sluice_tests::{At, Cluster, ECHO_HTTP_PORT, ECHO_TCP_PORT, Mode, Pod};

use super::load::{self, Load, Measured};
use super::report::{Better, Figure, Row};

const GROUP: &str = "datapath";
const NAMESPACE: &str = "bench";
const CLUSTER_IP: &str = "10.96.0.10";
/// NodePorts of the eTP=Cluster Service (TCP echo, HTTP echo) and of the eTP=Local one.
const NODE_PORTS: (u16, u16) = (30080, 30081);
const LOCAL_NODE_PORTS: (u16, u16) = (30082, 30083);
/// Filler Services per manifest file.
const PER_FILE: usize = 100;

/// Who sends the traffic, through which frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PathKind {
    /// A pod on the same node, to the ClusterIP.
    ClusterIp,
    /// The outside client, to the node's NodePort (eTP=Cluster: masqueraded).
    NodePort,
    /// The outside client, to the eTP=Local NodePort (client address kept).
    LocalNodePort,
}

impl PathKind {
    const ALL: [PathKind; 3] = [
        PathKind::ClusterIp,
        PathKind::NodePort,
        PathKind::LocalNodePort,
    ];

    fn label(self) -> &'static str {
        match self {
            PathKind::ClusterIp => "pod → ClusterIP",
            PathKind::NodePort => "client → NodePort",
            PathKind::LocalNodePort => "client → NodePort eTP=Local",
        }
    }
}

/// What forwards the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum System {
    /// No Service at all: straight to the pod IP (the limit).
    PodIp,
    Ebpf,
    EbpfXdp,
    Nftables,
}

impl System {
    fn label(self, path: PathKind) -> &'static str {
        match (self, path) {
            (System::PodIp, _) => "pod IP, no proxy",
            (System::Ebpf, PathKind::ClusterIp) => "eBPF socket-LB",
            (System::Ebpf, _) => "eBPF tc",
            (System::EbpfXdp, _) => "eBPF XDP generic",
            (System::Nftables, _) => "nftables",
        }
    }

    /// The dataplanes compared on `path` (XDP only sees traffic arriving on the node's
    /// interface: a pod's connection to a ClusterIP is the socket-LB's either way).
    fn on(path: PathKind) -> &'static [System] {
        match path {
            PathKind::ClusterIp => &[System::Ebpf, System::Nftables],
            _ => &[System::Ebpf, System::EbpfXdp, System::Nftables],
        }
    }
}

/// One path's three load runs.
#[derive(Debug)]
struct PathRuns {
    connections: Result<Measured, String>,
    short: Result<Measured, String>,
    keep_alive: Result<Measured, String>,
}

type Results = BTreeMap<(usize, PathKind, System), PathRuns>;

pub struct Options {
    pub sizes: Vec<usize>,
    pub duration: Duration,
    /// Runs per measurement; the best is kept (other work on shared cores only ever slows a
    /// run down, so the best run is the closest to what the path itself allows).
    pub repeats: usize,
}

/// Runs every size; a size whose cluster cannot be built is reported and skipped.
pub fn run(options: &Options) -> Result<Vec<Row>> {
    let mut results = Results::new();
    let mut failures = Vec::new();
    for &size in &options.sizes {
        println!("== datapath: {size} Services installed");
        if let Err(err) = one_size(size, options, &mut results) {
            eprintln!("   failed: {err:#}");
            failures.push(format!("{size} Services: {err:#}"));
        }
    }
    if results.is_empty() {
        anyhow::bail!("no datapath measurement ran: {}", failures.join("; "));
    }
    Ok(rows(&results, &options.sizes))
}

fn one_size(size: usize, options: &Options, results: &mut Results) -> Result<()> {
    let mut c = Cluster::new(&["node-a"])?;
    let web = c.add_pod("node-a", "web-1")?;
    c.add_pod("node-a", "client-1")?;
    // The limit from outside: the client routes pod addresses via the node.
    c.client_route(&c.node("node-a")?.pod_cidr_v4.clone(), "node-a")?;
    let written = Instant::now();
    write_services(&c, &web, size)?;
    println!("   {size} Services written in {:.1?}", written.elapsed());
    let node = c.node("node-a")?.clone();
    let load = Load {
        threads: 2,
        connections: 16,
        duration: options.duration,
    };
    let repeats = options.repeats;
    for path in [PathKind::ClusterIp, PathKind::NodePort] {
        let at = if path == PathKind::ClusterIp {
            At::Pod("client-1")
        } else {
            At::Client
        };
        let runs = measure_path(
            &c,
            at,
            (web.v4(ECHO_TCP_PORT), web.v4(ECHO_HTTP_PORT)),
            load,
            repeats,
        );
        report(size, path, System::PodIp, &runs);
        results.insert((size, path, System::PodIp), runs);
    }
    for system in [System::Nftables, System::Ebpf, System::EbpfXdp] {
        let (mode, extra): (Mode, &[&str]) = match system {
            System::Nftables => (Mode::Nftables, &[]),
            System::EbpfXdp => (Mode::Ebpf, &["--xdp", "generic"]),
            _ => (Mode::Ebpf, &[]),
        };
        let started = Instant::now();
        if let Err(err) = start_programmed(&mut c, mode, extra, size) {
            eprintln!(
                "   {}: agent did not program {size} Services: {err:#}",
                system.label(PathKind::NodePort)
            );
            continue;
        }
        println!(
            "   {}: agent up and {size} Services programmed in {:.1?}",
            system.label(PathKind::NodePort),
            started.elapsed()
        );
        for path in PathKind::ALL
            .into_iter()
            .filter(|p| System::on(*p).contains(&system))
        {
            let (at, tcp, http) = frontend(path, &node);
            let runs = measure_path(&c, at, (tcp, http), load, repeats);
            report(size, path, system, &runs);
            results.insert((size, path, system), runs);
        }
        stop_agent(&mut c, mode);
    }
    Ok(())
}

fn frontend(path: PathKind, node: &sluice_tests::Node) -> (At<'static>, SocketAddr, SocketAddr) {
    let vip = |port| SocketAddr::new(CLUSTER_IP.parse().expect("ClusterIP"), port);
    match path {
        PathKind::ClusterIp => (At::Pod("client-1"), vip(80), vip(81)),
        PathKind::NodePort => (At::Client, node.v4(NODE_PORTS.0), node.v4(NODE_PORTS.1)),
        PathKind::LocalNodePort => (
            At::Client,
            node.v4(LOCAL_NODE_PORTS.0),
            node.v4(LOCAL_NODE_PORTS.1),
        ),
    }
}

/// The three load runs of one path, each the best of `repeats`. The repeats take turns
/// (connections, short, keep-alive, connections, ...), so a burst of other work on the
/// shared cores does not spoil every run of one figure.
fn measure_path(
    c: &Cluster,
    at: At<'_>,
    (tcp, http): (SocketAddr, SocketAddr),
    load: Load,
    repeats: usize,
) -> PathRuns {
    let probe = Load {
        // Connection setup is mostly waiting on the kernel: more threads than cores.
        connections: 2 * std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .max(2),
        ..load
    };
    let url = format!("http://{http}/");
    let not_run = || Err("not run".to_owned());
    let mut runs = PathRuns {
        connections: not_run(),
        short: not_run(),
        keep_alive: not_run(),
    };
    for _ in 0..repeats.max(1) {
        keep_best(
            &mut runs.connections,
            load::connection_rate(c, at, tcp, probe, false),
        );
        keep_best(
            &mut runs.short,
            load::connection_rate(c, at, http, probe, true),
        );
        keep_best(
            &mut runs.keep_alive,
            load::wrk(c, at, None, &url, load, false),
        );
    }
    runs
}

/// Keeps the run with the highest rate; an error only while no run succeeded.
fn keep_best(best: &mut Result<Measured, String>, run: Result<Measured>) {
    match (&*best, run) {
        (Ok(b), Ok(m)) if m.rate <= b.rate => {}
        (_, Ok(m)) => *best = Ok(m),
        (Ok(_), Err(_)) => {}
        (Err(_), Err(e)) => *best = Err(format!("{e:#}")),
    }
}

fn report(size: usize, path: PathKind, system: System, runs: &PathRuns) {
    let show = |r: &Result<Measured, String>| match r {
        Ok(m) if m.failed > 0 => format!("{:.0}/s ({} failed)", m.rate, m.failed),
        Ok(m) => format!("{:.0}/s", m.rate),
        Err(e) => format!("failed: {}", e.lines().next().unwrap_or("")),
    };
    let latency = match &runs.connections {
        Ok(m) => format!(
            " first packet p50 {:.0} µs p99 {:.0} µs",
            m.p50_ms * 1e3,
            m.p99_ms * 1e3
        ),
        Err(_) => String::new(),
    };
    let slowest = match &runs.short {
        Ok(m) => format!(" (p99 {:.1} ms, slowest {:.0} ms)", m.p99_ms, m.max_ms),
        Err(_) => String::new(),
    };
    println!(
        "   {size:>6} Services {:<28} {:<17} connections {}{latency}; requests short {}{slowest}, keep-alive {}",
        path.label(),
        system.label(path),
        show(&runs.connections),
        show(&runs.short),
        show(&runs.keep_alive),
    );
}

/// Starts the agent and waits until it programmed every Service port (its
/// `sluice_service_ports` metric).
fn start_programmed(c: &mut Cluster, mode: Mode, extra: &[&str], size: usize) -> Result<()> {
    let mut args = vec!["--sync-period", "10m"];
    args.extend_from_slice(extra);
    c.start_agent("node-a", mode, &args)?;
    // The two benchmark Services have two ports each, the fillers one.
    let expected = size + 2;
    sluice_tests::wait_until(
        Duration::from_secs(600),
        "every Service port programmed",
        || {
            let metrics = c.agent_metrics("node-a")?;
            Ok(metrics
                .lines()
                .find_map(|l| l.strip_prefix("sluice_service_ports "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .is_some_and(|n| n as usize >= expected))
        },
    )
    .with_context(|| format!("agent log:\n{}", tail(&c.agent_log("node-a"), 20)))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Stops the agent and removes what it programmed, so the next dataplane starts clean.
fn stop_agent(c: &mut Cluster, mode: Mode) {
    if let Err(err) = c.stop_agent("node-a") {
        eprintln!("   stopping the agent: {err:#}");
    }
    match c.agent_cleanup("node-a", mode) {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "   agent --cleanup: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => eprintln!("   agent --cleanup: {err:#}"),
    }
}

/// The two benchmark Services (ClusterIP + NodePort, and eTP=Local NodePort) on the echo pod,
/// and `size - 2` ClusterIP fillers with three endpoints each that no traffic reaches.
fn write_services(c: &Cluster, web: &Pod, size: usize) -> Result<()> {
    let ports = [
        ("tcp", "TCP", ECHO_TCP_PORT),
        ("http", "TCP", ECHO_HTTP_PORT),
    ];
    let cluster = Service::new(NAMESPACE, "web")
        .kind("NodePort")
        .cluster_ips(&[CLUSTER_IP])
        .port(
            Port::tcp(80, ECHO_TCP_PORT)
                .named("tcp")
                .node_port(NODE_PORTS.0),
        )
        .port(
            Port::tcp(81, ECHO_HTTP_PORT)
                .named("http")
                .node_port(NODE_PORTS.1),
        );
    c.write_service(&cluster, &ports, &[web])?;
    let local = Service::new(NAMESPACE, "web-local")
        .kind("NodePort")
        .cluster_ips(&["10.96.0.11"])
        .external_traffic_policy("Local")
        .port(
            Port::tcp(80, ECHO_TCP_PORT)
                .named("tcp")
                .node_port(LOCAL_NODE_PORTS.0),
        )
        .port(
            Port::tcp(81, ECHO_HTTP_PORT)
                .named("http")
                .node_port(LOCAL_NODE_PORTS.1),
        );
    c.write_service(&local, &ports, &[web])?;
    let fillers = size.saturating_sub(2);
    for file in 0..fillers.div_ceil(PER_FILE) {
        let docs: Vec<Value> = (file * PER_FILE..((file + 1) * PER_FILE).min(fillers))
            .flat_map(filler)
            .collect();
        c.write_manifest(
            &format!("fillers-{file:04}.yaml"),
            &manifests::yaml_docs(&docs),
        )?;
    }
    Ok(())
}

/// Filler Service `i`: ClusterIP 10.100.x.y:80 → three endpoints in 10.200.0.0/16 (never
/// contacted), as a Service and its EndpointSlice.
fn filler(i: usize) -> Vec<Value> {
    let name = format!("filler-{i}");
    let ip =
        |base: usize, n: usize| format!("10.{}.{}.{}", base + n / 65_536, n / 256 % 256, n % 256);
    let svc = Service::new(NAMESPACE, &name)
        .cluster_ips(&[&ip(100, i + 1)])
        .port(Port::tcp(80, 8080).named("http"));
    let fake = |j: usize| Pod {
        name: format!("{name}-{j}"),
        node: "node-a".into(),
        ipv4: ip(200, i * 3 + j).parse().expect("filler endpoint"),
        ipv6: "fd00:dead::1".parse().expect("v6"),
        netns: String::new(),
    };
    let pods = [fake(0), fake(1), fake(2)];
    let slice = manifests::endpoint_slices(
        NAMESPACE,
        &name,
        &[("http", "TCP", 8080)],
        &pods.iter().collect::<Vec<_>>(),
    );
    // The v4 slice only: the fillers are single-stack.
    vec![svc.to_json(), slice[0].clone()]
}

/// (what, unit, better, figure) for each metric of a path.
type Metric = (
    &'static str,
    &'static str,
    Better,
    fn(&PathRuns) -> Result<f64, String>,
);

const METRICS: [Metric; 7] = [
    ("new TCP connections/s", "conn/s", Better::Higher, |r| {
        r.connections.as_ref().map(|m| m.rate).map_err(Clone::clone)
    }),
    ("first packet p50", "µs", Better::Lower, |r| {
        r.connections
            .as_ref()
            .map(|m| m.p50_ms * 1e3)
            .map_err(Clone::clone)
    }),
    ("first packet p99", "µs", Better::Lower, |r| {
        r.connections
            .as_ref()
            .map(|m| m.p99_ms * 1e3)
            .map_err(Clone::clone)
    }),
    (
        "requests/s, new connection each",
        "req/s",
        Better::Higher,
        |r| r.short.as_ref().map(|m| m.rate).map_err(Clone::clone),
    ),
    ("requests/s, keep-alive", "req/s", Better::Higher, |r| {
        r.keep_alive.as_ref().map(|m| m.rate).map_err(Clone::clone)
    }),
    // Not in the README: where a rate collapsed, these say whether SYNs were retransmitted.
    (
        "request with a new connection, p99",
        "ms",
        Better::Lower,
        |r| r.short.as_ref().map(|m| m.p99_ms).map_err(Clone::clone),
    ),
    (
        "request with a new connection, slowest",
        "ms",
        Better::Lower,
        |r| r.short.as_ref().map(|m| m.max_ms).map_err(Clone::clone),
    ),
];

fn figure(
    system: &str,
    results: &Results,
    key: (usize, PathKind, System),
    metric: &Metric,
) -> Figure {
    match results.get(&key).map(metric.3) {
        Some(Ok(v)) => Figure::new(system, Some(v)),
        Some(Err(e)) => Figure::failed(system, e),
        None => Figure::failed(system, "not measured"),
    }
}

/// Per size, path and metric: each dataplane next to the pod IP; then per path, dataplane
/// and metric: the largest size ÷ the smallest.
fn rows(results: &Results, sizes: &[usize]) -> Vec<Row> {
    let mut rows = Vec::new();
    for &size in sizes {
        for path in PathKind::ALL {
            // eTP=Local and eTP=Cluster NodePorts share the client → pod IP limit.
            let limit_path = if path == PathKind::ClusterIp {
                path
            } else {
                PathKind::NodePort
            };
            for (i, metric) in METRICS.iter().enumerate() {
                let mut row = Row::new(
                    GROUP,
                    format!("{} · {size} Services: {}", path.label(), metric.0),
                    metric.1,
                );
                if metric.2 == Better::Lower {
                    row = row.lower_is_better();
                }
                // The README shows the largest size (the 10-Services figures are in the
                // "÷" rows), without the p50.
                if Some(&size) == sizes.iter().max() && matches!(i, 0 | 2 | 3 | 4) {
                    row = row.headline();
                }
                for &system in System::on(path) {
                    row = row.ours(figure(
                        system.label(path),
                        results,
                        (size, path, system),
                        metric,
                    ));
                }
                rows.push(row.reference(figure(
                    System::PodIp.label(path),
                    results,
                    (size, limit_path, System::PodIp),
                    metric,
                )));
            }
        }
    }
    if let (Some(&small), Some(&large)) = (sizes.iter().min(), sizes.iter().max())
        && small != large
    {
        rows.extend(scaling_rows(results, small, large));
    }
    rows
}

/// "10,000 Services ÷ 10 Services" for each path, dataplane and metric; also for the pod
/// IP, whose work is the same at both sizes: its ratio is this run's noise.
fn scaling_rows(results: &Results, small: usize, large: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    for path in PathKind::ALL {
        let limit = (path != PathKind::LocalNodePort).then_some(System::PodIp);
        for system in limit.into_iter().chain(System::on(path).iter().copied()) {
            for (i, metric) in METRICS.iter().enumerate() {
                let mut row = Row::new(
                    GROUP,
                    format!(
                        "{} {}: {}, {large} ÷ {small} Services",
                        path.label(),
                        system.label(path),
                        metric.0
                    ),
                    metric.1,
                );
                if metric.2 == Better::Lower {
                    row = row.lower_is_better();
                }
                if i == 0 {
                    row = row.headline();
                }
                rows.push(
                    row.ours(figure(
                        &format!("{large} Services"),
                        results,
                        (large, path, system),
                        metric,
                    ))
                    .reference(figure(
                        &format!("{small} Services"),
                        results,
                        (small, path, system),
                        metric,
                    )),
                );
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(rate: f64) -> PathRuns {
        let m = Measured {
            rate,
            p50_ms: 0.05,
            p99_ms: 0.2,
            max_ms: 1.0,
            completed: 1,
            failed: 0,
        };
        PathRuns {
            connections: Ok(m.clone()),
            short: Ok(m.clone()),
            keep_alive: Err("wrk failed".into()),
        }
    }

    #[test]
    fn rows_compare_each_dataplane_with_the_pod_ip_and_the_sizes() {
        let mut results = Results::new();
        for size in [10, 10_000] {
            results.insert((size, PathKind::ClusterIp, System::PodIp), runs(1000.0));
            results.insert((size, PathKind::NodePort, System::PodIp), runs(800.0));
            results.insert(
                (size, PathKind::LocalNodePort, System::Nftables),
                runs(size as f64 / 20.0),
            );
        }
        let rows = rows(&results, &[10, 10_000]);
        let local = rows
            .iter()
            .find(|r| {
                r.name == "client → NodePort eTP=Local · 10000 Services: new TCP connections/s"
            })
            .expect("eTP=Local row");
        let nft = local
            .ours
            .iter()
            .find(|f| f.system == "nftables")
            .expect("nft");
        assert_eq!(nft.value, Some(500.0));
        assert_eq!(local.references[0].system, "pod IP, no proxy");
        assert_eq!(local.main_ratio(nft), Some(500.0 / 800.0));
        let xdp = local
            .ours
            .iter()
            .find(|f| f.system == "eBPF XDP generic")
            .expect("xdp");
        assert_eq!(xdp.note.as_deref(), Some("not measured"));
        let scaled = rows
            .iter()
            .find(|r| r.name == "client → NodePort eTP=Local nftables: new TCP connections/s, 10000 ÷ 10 Services")
            .expect("scaling row");
        assert_eq!(scaled.main_ratio(&scaled.ours[0]), Some(1000.0));
        let noise = rows
            .iter()
            .find(|r| {
                r.name
                    == "pod → ClusterIP pod IP, no proxy: new TCP connections/s, 10000 ÷ 10 Services"
            })
            .expect("the limit's own scaling row");
        assert_eq!(noise.main_ratio(&noise.ours[0]), Some(1.0));
        let keep_alive = rows
            .iter()
            .find(|r| r.name == "pod → ClusterIP · 10 Services: requests/s, keep-alive")
            .expect("keep-alive row");
        assert_eq!(keep_alive.references[0].note.as_deref(), Some("wrk failed"));
    }

    #[test]
    fn the_best_run_is_kept_and_an_error_only_when_all_failed() {
        let rate = |rate| {
            Ok(Measured {
                rate,
                ..Measured::default()
            })
        };
        let mut best = Err("not run".to_owned());
        keep_best(&mut best, Err(anyhow::anyhow!("refused")));
        assert_eq!(best.as_ref().err().map(String::as_str), Some("refused"));
        for run in [
            rate(5.0),
            Err(anyhow::anyhow!("down")),
            rate(9.0),
            rate(7.0),
        ] {
            keep_best(&mut best, run);
        }
        assert_eq!(best.map(|m| m.rate), Ok(9.0));
    }

    #[test]
    fn fillers_are_valid_distinct_services() {
        let a = filler(0);
        let b = filler(70_000);
        assert_eq!(a[0]["spec"]["clusterIP"], "10.100.0.1");
        assert_eq!(b[0]["spec"]["clusterIP"], "10.101.17.113");
        assert_eq!(a[1]["kind"], "EndpointSlice");
        assert_eq!(a[1]["endpoints"].as_array().map(Vec::len), Some(3));
    }
}

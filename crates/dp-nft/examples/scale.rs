//! Control-plane cost of the nftables dataplane at scale, in a scratch network namespace:
//! the first full programming and one changed service port, each split into the agent's own
//! time (render, diff, encode) and the executor's time (`nft -f`, or the netlink batch).
//!
//! ```sh
//! cargo run --release -p sluice-dp-nft --example scale -- --services 10000 --endpoints 10
//! ```
//!
//! Options: `--services N` (1000), `--endpoints E` (10), `--changes K` (21 single-port
//! changes), `--executor text|netlink` (netlink). Needs root; it creates and deletes a network
//! namespace and re-runs itself inside it. A measurement, not a test.
//!
//! With the netlink executor it also probes the kernel's own cost of a commit on this
//! ruleset: an element of a data map (a slot of the changed services' slot map) replaced (the
//! floor of any commit: what an endpoint change sends), a chain with one `goto` rule added,
//! and a verdict map element with a `goto` added (both make the kernel validate the whole
//! table before committing).

use std::net::IpAddr;
use std::process::Command as Process;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_dataplane::Dataplane;
use sluice_dp_nft::ir::{Element, Key, Rule, SetRef, Value, Verdict};
use sluice_dp_nft::render::{MARK_FOR_MASQUERADE, SERVICE_NODEPORTS};
use sluice_dp_nft::slots::{Keyed, Picker};
use sluice_dp_nft::transaction::{Command, Existing};
use sluice_dp_nft::{
    Drift, NftCommand, NftDataplane, NftError, NftExecutor, Readback, Transaction,
};
use sluice_plan::{
    Backend, Family, FrontendAddr, FrontendKey, FrontendKind, FrontendPlan, NodePlan, Plan,
    PlanDelta, Protocol, Route, Selection, ServiceChange, ServicePlan, ServicePortName, SetName,
    StaleFlow,
};

const INSIDE: &str = "SLUICE_SCALE_INSIDE";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if std::env::var_os(INSIDE).is_none() {
        std::process::exit(outside(&args));
    }
    let services = flag(&args, "--services").unwrap_or(1000);
    let endpoints = flag(&args, "--endpoints").unwrap_or(10);
    let changes = flag(&args, "--changes").unwrap_or(21);
    let executor = flag::<String>(&args, "--executor").unwrap_or_else(|| "netlink".into());
    match executor.as_str() {
        "text" => measure(
            Timed::new(NftCommand::default()),
            services,
            endpoints,
            changes,
        ),
        "netlink" => measure(
            Timed::new(sluice_dp_nft::NetlinkNft::new().expect("netlink socket")),
            services,
            endpoints,
            changes,
        ),
        other => panic!("unknown executor {other}"),
    }
}

/// Creates a scratch namespace and runs this program again inside it.
fn outside(args: &[String]) -> i32 {
    let ns = format!("sluice-scale-{}", std::process::id());
    let ok = |c: &mut Process| c.status().is_ok_and(|s| s.success());
    assert!(
        ok(Process::new("ip").args(["netns", "add", &ns])),
        "ip netns add (root?)"
    );
    let exe = std::env::current_exe().expect("own path");
    let status = Process::new("ip")
        .args(["netns", "exec", &ns])
        .arg(exe)
        .args(args)
        .env(INSIDE, "1")
        .status();
    let _ = Process::new("ip").args(["netns", "del", &ns]).status();
    status.ok().and_then(|s| s.code()).unwrap_or(1)
}

fn flag<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

/// An executor that adds up the time spent in the kernel seam.
struct Timed<E> {
    inner: E,
    spent: Duration,
}

impl<E> Timed<E> {
    fn new(inner: E) -> Self {
        Self {
            inner,
            spent: Duration::ZERO,
        }
    }
}

impl<E: NftExecutor> NftExecutor for Timed<E> {
    fn apply(&mut self, tx: &Transaction<'_>) -> Result<(), NftError> {
        let t = Instant::now();
        let r = self.inner.apply(tx);
        self.spent += t.elapsed();
        r
    }
    fn read_back(&mut self, family: Family) -> Result<Readback, NftError> {
        self.inner.read_back(family)
    }
    fn flush_conntrack(&mut self, flow: &StaleFlow) -> Result<(), NftError> {
        self.inner.flush_conntrack(flow)
    }
    fn drift(&mut self) -> Result<Drift, NftError> {
        let t = Instant::now();
        let r = self.inner.drift();
        self.spent += t.elapsed();
        r
    }
    fn read_names(&mut self, family: Family) -> Result<Existing, NftError> {
        let t = Instant::now();
        let r = self.inner.read_names(family);
        self.spent += t.elapsed();
        r
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("IP")
}

fn backends(i: usize, endpoints: usize, port: u16) -> Vec<Backend> {
    let mut out: Vec<Backend> = (0..endpoints)
        .map(|j| {
            let ip = ip(&format!(
                "10.{}.{}.{}",
                64 + j / 4,
                (i >> 6) & 255,
                ((i & 63) << 2) | (j & 3)
            ));
            Backend::new(ip, port)
        })
        .collect();
    out.sort();
    out
}

/// Services past this number get no NodePort (the port range is exhausted).
const NODE_PORTS: usize = 30_000;

/// A ClusterIP + NodePort service port, as compute plans `type: NodePort`.
fn service(i: usize, endpoints: usize, port: u16) -> ServicePlan {
    let frontend = |addr, port, kind| FrontendPlan {
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
        selection: Selection::Random,
    };
    // Unique ClusterIPs in 10.96.0.0/12; NodePorts while the port range lasts.
    let cluster_ip = ip(&format!(
        "10.{}.{}.{}",
        96 + (i >> 16),
        (i >> 8) & 255,
        i & 255
    ));
    let mut frontends = vec![frontend(
        FrontendAddr::Ip(cluster_ip),
        80,
        FrontendKind::ClusterIp,
    )];
    if i < NODE_PORTS {
        frontends.push(frontend(
            FrontendAddr::NodePorts(Family::V4),
            30000 + i as u16,
            FrontendKind::NodePort,
        ));
    }
    ServicePlan {
        name: ServicePortName::new("scale", format!("svc-{i}"), "http", Protocol::Tcp),
        frontends,
        cluster: backends(i, endpoints, port),
        local: Vec::new(),
        affinity_timeout: None,
    }
}

fn plan(services: usize, endpoints: usize) -> Plan {
    let mut plan = Plan {
        node: Arc::new(NodePlan {
            name: "scale".into(),
            nodeport_addresses: Vec::new(),
            pod_cidrs: vec!["10.64.0.0/10".parse().expect("cidr")],
        }),
        ..Plan::default()
    };
    for i in 0..services {
        let svc = service(i, endpoints, 8080);
        plan.services.insert(svc.name.clone(), Arc::new(svc));
    }
    plan
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// (agent's own time, executor time) of one call.
fn timed<E: NftExecutor, T>(
    dp: &mut NftDataplane<Timed<E>>,
    f: impl FnOnce(&mut NftDataplane<Timed<E>>) -> T,
) -> (T, f64, f64) {
    let before = dp.executor().spent;
    let t = Instant::now();
    let out = f(dp);
    let total = t.elapsed();
    let exec = dp.executor().spent - before;
    (out, ms(total - exec), ms(exec))
}

fn measure<E: NftExecutor>(exec: Timed<E>, services: usize, endpoints: usize, changes: usize) {
    let mut dp = NftDataplane::with_executor(exec);
    dp.restore().expect("restore");
    let mut current = plan(services, endpoints);
    println!("{services} services x {endpoints} endpoints");
    let (report, agent, kernel) = timed(&mut dp, |dp| dp.resync(&current));
    let report = report.expect("first programming");
    println!(
        "first full programming: {} operations, agent {agent:.1} ms, executor {kernel:.1} ms",
        report.operations
    );
    let mut samples: Vec<(f64, f64)> = Vec::new();
    for k in 0..changes {
        let i = (k * 7919) % services;
        let name = ServicePortName::new("scale", format!("svc-{i}"), "http", Protocol::Tcp);
        let before = current.services[&name].clone();
        let port = if before.cluster[0].port == 8080 {
            9090
        } else {
            8080
        };
        let after = Arc::new(service(i, endpoints, port));
        current.services.insert(name.clone(), after.clone());
        let delta = PlanDelta {
            node: current.node.clone(),
            services: vec![ServiceChange {
                name,
                before: Some(before),
                after: Some(after),
            }],
            ..PlanDelta::default()
        };
        let (report, agent, kernel) = timed(&mut dp, |dp| dp.apply(&delta));
        let report = report.expect("one change");
        assert!(report.failed.is_empty(), "{report:?}");
        samples.push((agent, kernel));
    }
    print_samples("one changed service port", &samples);
    let mut idle = Vec::new();
    for _ in 0..5 {
        let (report, agent, kernel) = timed(&mut dp, |dp| dp.resync(&current));
        report.expect("resync");
        idle.push((agent, kernel));
    }
    print_samples("periodic resync, nothing drifted", &idle);
    // Someone else commits (another table): the resync lists our names and finds them intact.
    let mut foreign = Vec::new();
    for k in 0..3 {
        let ok = Process::new("nft")
            .args(["add", "table", "inet", &format!("someone-else-{k}")])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "nft add table");
        let (report, agent, kernel) = timed(&mut dp, |dp| dp.resync(&current));
        assert_eq!(report.expect("resync").operations, 0, "nothing rewritten");
        foreign.push((agent, kernel));
    }
    print_samples(
        "periodic resync after a foreign commit (names checked)",
        &foreign,
    );
    println!("peak RSS {} MiB", rss_mib());
    if let Ok(mut probe) = sluice_dp_nft::NetlinkNft::new() {
        kernel_floor(&mut probe, changes, endpoints);
    }
}

/// Times transactions that change (almost) nothing, straight through a netlink executor.
fn kernel_floor(exec: &mut impl NftExecutor, samples: usize, endpoints: usize) {
    // A slot of service 0's map, its endpoint replaced and back: data only.
    let picker = Picker {
        set: SetName::Cluster,
        keyed: Keyed::Address,
        protocol: Protocol::Tcp,
        capacity: sluice_dp_nft::slots::capacity_for(endpoints),
    };
    let slot = |port| Element {
        set: SetRef::Slots(picker),
        key: Key::AddrSlot {
            addr: ip("10.96.0.0"),
            port: 80,
            slot: picker.capacity,
        },
        value: Some(Value::Endpoint(std::net::SocketAddr::new(
            ip("10.64.0.0"),
            port,
        ))),
    };
    let (to_9999, to_8080) = (slot(9999), slot(8080));
    let goto = Rule::verdict(Verdict::goto(MARK_FOR_MASQUERADE));
    let vmap = Element {
        set: SetRef::Named(SERVICE_NODEPORTS),
        key: Key::Port {
            protocol: Protocol::Udp,
            port: 9,
        },
        value: Some(Value::Verdict(Verdict::goto(MARK_FOR_MASQUERADE))),
    };
    let mut times: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    fn one(command: Command<'_>) -> Transaction<'_> {
        let mut tx = Transaction::default();
        tx.push(Family::V4, command);
        tx
    }
    for _ in 0..samples {
        for (from, to) in [(&to_8080, &to_9999), (&to_9999, &to_8080)] {
            let mut tx = one(Command::DeleteElements {
                set: from.set,
                elements: vec![from],
            });
            tx.push(
                Family::V4,
                Command::AddElements {
                    set: to.set,
                    elements: vec![to],
                },
            );
            let t = Instant::now();
            exec.apply(&tx).expect("replace a slot");
            times[0].push(ms(t.elapsed()));
        }
        let name = "probe";
        let mut chain = one(Command::AddChain { name, base: None });
        chain.push(
            Family::V4,
            Command::AddRule {
                chain: name,
                rule: &goto,
            },
        );
        let t = Instant::now();
        exec.apply(&chain).expect("add chain");
        times[1].push(ms(t.elapsed()));
        let mut gone = one(Command::FlushChain(name));
        gone.push(Family::V4, Command::DeleteChain(name));
        exec.apply(&gone).expect("delete chain");
        let add = one(Command::AddElements {
            set: vmap.set,
            elements: vec![&vmap],
        });
        let t = Instant::now();
        exec.apply(&add).expect("add vmap element");
        times[2].push(ms(t.elapsed()));
        let delete = one(Command::DeleteElements {
            set: vmap.set,
            elements: vec![&vmap],
        });
        exec.apply(&delete).expect("delete vmap element");
    }
    for (what, mut v) in [
        "kernel: commit replacing one data map element (an endpoint slot)",
        "kernel: commit of one rule with a goto",
        "kernel: commit of one verdict map element with a goto",
    ]
    .into_iter()
    .zip(times)
    {
        v.sort_by(f64::total_cmp);
        println!("{what}: p50 {:.1} ms", v[v.len() / 2]);
    }
}

fn print_samples(what: &str, samples: &[(f64, f64)]) {
    let mut totals: Vec<f64> = samples.iter().map(|(a, k)| a + k).collect();
    let mut agents: Vec<f64> = samples.iter().map(|(a, _)| *a).collect();
    let mut kernels: Vec<f64> = samples.iter().map(|(_, k)| *k).collect();
    let p = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    };
    println!(
        "{what} ({} samples): total p50 {:.1} ms p90 {:.1} ms; agent p50 {:.2} ms; executor p50 {:.1} ms",
        samples.len(),
        p(&mut totals, 0.5),
        p(&mut totals, 0.9),
        p(&mut agents, 0.5),
        p(&mut kernels, 0.5),
    );
}

//! What one change costs the eBPF backend's control plane: a cluster of N service ports
//! with E endpoints each (every K-th also a NodePort, i.e. a Maglev table) is programmed,
//! then one service port at a time loses an endpoint, and the CPU time of each `apply` is
//! measured (this thread's CPU clock), as is a resync with nothing changed.
//!
//! ```text
//! cargo run --release -p sluice-dp-ebpf --example apply_cost [N] [E] [K]          # fake store
//! sudo cargo run --release -p sluice-dp-ebpf --example apply_cost -- --kernel ... # real maps
//! ```
//! `--kernel` programs real pinned maps in a private network namespace, cgroup and bpffs
//! directory (root only; everything is removed at the end). This is a measurement, not a test.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use sluice_dataplane::Dataplane;
use sluice_dp_ebpf::store::{FakeMapStore, MapStore};
use sluice_dp_ebpf::{EbpfConfig, EbpfDataplane, MapProgrammer, MapSizes};
use sluice_plan::{
    Backend, Family, FrontendAddr, FrontendKey, FrontendKind, FrontendPlan, NodePlan, Plan,
    PlanDelta, Protocol, Route, Selection, ServiceChange, ServicePlan, ServicePortName, SetName,
};

fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn frontend(addr: FrontendAddr, port: u16, kind: FrontendKind) -> FrontendPlan {
    let masq = Route::masqueraded(SetName::Cluster);
    FrontendPlan {
        key: FrontendKey {
            addr,
            protocol: Protocol::Tcp,
            port,
        },
        kind,
        allowed_sources: Vec::new(),
        pods: if kind == FrontendKind::ClusterIp {
            Route::forward(SetName::Cluster)
        } else {
            masq
        },
        node: masq,
        outside: masq,
        selection: if kind == FrontendKind::ClusterIp {
            Selection::Random
        } else {
            Selection::ConsistentHash
        },
    }
}

fn service(i: usize, endpoints: usize, node_port: bool) -> ServicePlan {
    let cluster_ip = IpAddr::V4(Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250 + 1) as u8));
    let mut frontends = vec![frontend(
        FrontendAddr::Ip(cluster_ip),
        80,
        FrontendKind::ClusterIp,
    )];
    if node_port {
        frontends.push(frontend(
            FrontendAddr::NodePorts(Family::V4),
            30000 + i as u16,
            FrontendKind::NodePort,
        ));
    }
    let cluster = (0..endpoints)
        .map(|e| {
            let ip = Ipv4Addr::new(10, 100 + (i / 250) as u8, (i % 250) as u8, e as u8 + 1);
            Backend::new(IpAddr::V4(ip), 8080)
        })
        .collect();
    ServicePlan {
        name: ServicePortName::new("default", format!("svc-{i:05}"), "", Protocol::Tcp),
        frontends,
        cluster,
        local: Vec::new(),
        affinity_timeout: None,
    }
}

fn plan(n: usize, endpoints: usize, every: usize) -> Plan {
    let node = NodePlan {
        name: "node-a".into(),
        nodeport_addresses: vec!["172.18.0.2".parse().expect("ip")],
        pod_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
    };
    let services: BTreeMap<_, _> = (0..n)
        .map(|i| {
            let svc = service(i, endpoints, every > 0 && i % every == 0);
            (svc.name.clone(), Arc::new(svc))
        })
        .collect();
    Plan {
        node: Arc::new(node),
        services,
        health_checks: BTreeMap::new(),
    }
}

/// The delta that removes the last endpoint of service `i`.
fn one_endpoint_less(plan: &Plan, i: usize) -> (PlanDelta, Plan) {
    let name = plan.services.keys().nth(i).expect("service").clone();
    let before = Arc::clone(&plan.services[&name]);
    let mut changed = (*before).clone();
    changed.cluster.pop();
    let after = Arc::new(changed);
    let mut next = plan.clone();
    next.services.insert(name.clone(), Arc::clone(&after));
    let delta = PlanDelta {
        node: Arc::clone(&plan.node),
        services: vec![ServiceChange {
            name,
            before: Some(before),
            after: Some(after),
        }],
        ..PlanDelta::default()
    };
    (delta, next)
}

/// Something that programs plans: the programmer over the fake, or the real dataplane.
trait Target {
    fn resync(&mut self, plan: &Plan) -> usize;
    fn apply(&mut self, delta: &PlanDelta) -> usize;
}

struct Fake(MapProgrammer, FakeMapStore);

impl Target for Fake {
    fn resync(&mut self, plan: &Plan) -> usize {
        self.0.resync(&mut self.1, plan).expect("resync").operations
    }
    fn apply(&mut self, delta: &PlanDelta) -> usize {
        self.0.apply(&mut self.1, delta).expect("apply").operations
    }
}

impl Target for EbpfDataplane {
    fn resync(&mut self, plan: &Plan) -> usize {
        Dataplane::resync(self, plan).expect("resync").operations
    }
    fn apply(&mut self, delta: &PlanDelta) -> usize {
        Dataplane::apply(self, delta).expect("apply").operations
    }
}

fn measure(target: &mut dyn Target, mut plan: Plan, every: usize) {
    let t = cpu_time();
    let ops = target.resync(&plan);
    println!("first resync: {ops} writes, {:?} CPU", cpu_time() - t);
    for (label, pick) in [("ClusterIP", 1usize), ("ClusterIP + NodePort (Maglev)", 0)] {
        if pick == 0 && every == 0 {
            continue;
        }
        let rounds = 200;
        let (mut total, mut worst, mut writes) = (Duration::ZERO, Duration::ZERO, 0);
        for r in 0..rounds {
            // Services 0, K, 2K... are NodePorts; 1, K+1, ... are not.
            let i = (r * every.max(1) + pick) % plan.services.len();
            let (delta, next) = one_endpoint_less(&plan, i);
            let t = cpu_time();
            writes += target.apply(&delta);
            let took = cpu_time() - t;
            total += took;
            worst = worst.max(took);
            plan = next;
        }
        println!(
            "apply, one {label} service port loses an endpoint: mean {:?}, worst {:?} CPU, {} writes each",
            total / rounds as u32,
            worst,
            writes / rounds
        );
    }
    let t = cpu_time();
    let ops = target.resync(&plan);
    println!(
        "resync, nothing changed: {ops} writes, {:?} CPU",
        cpu_time() - t
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kernel = args.iter().any(|a| a == "--kernel");
    let nums: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let (n, endpoints, every) = (
        nums.first().copied().unwrap_or(10_000),
        nums.get(1).copied().unwrap_or(10),
        nums.get(2).copied().unwrap_or(10),
    );
    println!(
        "{n} service ports x {endpoints} endpoints, every {every}th a NodePort, {} build, {}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        if kernel { "kernel maps" } else { "fake store" }
    );
    let p = plan(n, endpoints, every);
    if kernel {
        run_kernel(p, every);
    } else {
        let mut fake = Fake(MapProgrammer::new(MapSizes::default()), FakeMapStore::new());
        measure(&mut fake, p, every);
        let _ = fake.1.capacity(sluice_dp_ebpf::abi::MapKind::Svc);
    }
}

/// Real maps, in a network namespace and cgroup of our own.
fn run_kernel(plan: Plan, every: usize) {
    // SAFETY: unshare only changes this process's (single-threaded so far) network namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!("--kernel needs root: {}", std::io::Error::last_os_error());
        std::process::exit(2);
    }
    let root = sluice_dp_ebpf::find_cgroup2_root().expect("a cgroup2 mount");
    let id = std::process::id();
    let cgroup = root.join(format!("sluice-apply-cost-{id}"));
    std::fs::create_dir(&cgroup).expect("test cgroup");
    let config = EbpfConfig {
        bpffs_path: format!("/sys/fs/bpf/sluice-apply-cost-{id}").into(),
        cgroup_path: cgroup.clone(),
        ..EbpfConfig::default()
    };
    let mut dp = EbpfDataplane::new(config).expect("loading the dataplane");
    measure(&mut dp, plan, every);
    dp.cleanup().expect("cleanup");
    drop(dp);
    let _ = std::fs::remove_dir(cgroup);
}

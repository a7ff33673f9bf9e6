//! `cargo xtask bench scale [--quick] [--mode nftables|ebpf] [--sizes 1000,10000]
//! [--changes 1000] [--e2e 30] [--budget 180]`: how each stage's cost grows with the cluster.
//! `--budget` bounds the seconds spent on the changes (and half of it on the end-to-end
//! samples) per run: fewer are made where one change takes seconds, and the report says how
//! many.
//!
//! For 1k, 10k and (without `--quick`) 100k Services × 10 endpoints, through the `dir:`
//! source (100 Services per manifest file, but the Services the changes touch each in a file
//! of their own: the `dir:` source's unit of work is the file, and the change measured is one
//! EndpointSlice), with the release agent on one node of the namespaced test cluster, per
//! dataplane:
//! first programming, one EndpointSlice change inside the agent (from its per-sync log line:
//! source, planner, dataplane, total) and end to end (a rewritten manifest until traffic
//! reaches the new endpoint), agent RSS after the first programming and after the changes,
//! agent CPU seconds. Prints a table, writes `target/bench/scale.json` and a log-log chart
//! `target/bench/scale.svg` (SVG written by hand: no plotting crate to build). Never fails
//! on a timing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use sluice_tests::{At, Cluster, Mode, Pod};

use crate::system;

pub(crate) mod chart;

const NAMESPACE: &str = "scale";
const ENDPOINTS: usize = 10;
/// Services per manifest file, except those the changes touch: each of those has a file of its
/// own, so a change re-reads one Service and its slice.
const PER_FILE: usize = 100;
/// Spreads the changed Services over the cluster (prime: visits every Service of small sizes).
const CHANGE_STRIDE: usize = 7919;
const PROBE_VIP: &str = "10.96.0.10";

pub(crate) struct Options {
    sizes: Vec<usize>,
    modes: Vec<Mode>,
    changes: usize,
    e2e: usize,
    /// Time for the changes of one run (half of it for the end-to-end samples).
    budget: Duration,
}

impl Options {
    /// What `cargo xtask bench` measures as its control-plane group: both dataplanes at 1k
    /// and 10k Services (and 100k without `--quick`); `--quick` makes fewer changes so the
    /// whole benchmark stays within minutes.
    pub(crate) fn for_bench(quick: bool) -> Options {
        Options {
            sizes: if quick {
                vec![1_000, 10_000]
            } else {
                vec![1_000, 10_000, 100_000]
            },
            modes: vec![Mode::Nftables, Mode::Ebpf],
            changes: if quick { 100 } else { 1_000 },
            e2e: if quick { 10 } else { 30 },
            budget: Duration::from_secs(if quick { 20 } else { 180 }),
        }
    }
}

pub fn run(args: &[String]) -> Result<()> {
    let options = options(args)?;
    system::ensure_packages()?;
    if !system::is_root() {
        bail!("the scale benchmark programs the kernel in network namespaces: run as root");
    }
    crate::build_binaries(true)?;
    let bin_dir = crate::workspace_root().join("target/release");
    // SAFETY: called before any other thread of this process exists.
    unsafe { std::env::set_var("SLUICE_BIN_DIR", &bin_dir) };
    let runs = measure_all(&options);
    print_table(&runs);
    let out = crate::workspace_root().join("target/bench");
    write_outputs(&runs, &options, &out)?;
    println!(
        "\nwritten to {} and {}",
        out.join("scale.json").display(),
        out.join("scale.svg").display()
    );
    Ok(())
}

/// Every size and mode of `options`, one after the other; a run that fails is kept as
/// `{"mode", "services", "error"}`. Needs `SLUICE_BIN_DIR` set to the release binaries.
pub(crate) fn measure_all(options: &Options) -> Vec<Value> {
    let mut runs = Vec::new();
    for &services in &options.sizes {
        for &mode in &options.modes {
            println!(
                "== {} Services × {ENDPOINTS} endpoints, {}",
                services,
                mode.as_str()
            );
            match measure(mode, services, options) {
                Ok(run) => runs.push(run),
                Err(err) => {
                    eprintln!("   failed: {err:#}");
                    runs.push(json!({"mode": mode.as_str(), "services": services,
                                     "error": format!("{err:#}")}));
                }
            }
        }
    }
    runs
}

/// `scale.json` (the options and every run) and the log-log chart `scale.svg` in `out`.
pub(crate) fn write_outputs(runs: &[Value], options: &Options, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let report = json!({"endpoints_per_service": ENDPOINTS, "services_per_file": PER_FILE,
                        "changed_services_in_own_files": true,
                        "changes": options.changes, "runs": runs});
    std::fs::write(
        out.join("scale.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(out.join("scale.svg"), chart::svg(runs))?;
    Ok(())
}

fn options(args: &[String]) -> Result<Options> {
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let sizes = match value("--sizes") {
        Some(list) => list
            .split(',')
            .map(|n| n.parse().with_context(|| format!("--sizes {list}")))
            .collect::<Result<_>>()?,
        None if args.iter().any(|a| a == "--quick") => vec![1_000, 10_000],
        None => vec![1_000, 10_000, 100_000],
    };
    let modes = match value("--mode").map(String::as_str) {
        None => vec![Mode::Nftables, Mode::Ebpf],
        Some("nftables") => vec![Mode::Nftables],
        Some("ebpf") => vec![Mode::Ebpf],
        Some(other) => bail!("--mode {other}: expected nftables or ebpf"),
    };
    let number = |name: &str, default: usize| -> Result<usize> {
        value(name).map_or(Ok(default), |v| {
            v.parse().with_context(|| format!("{name} {v}"))
        })
    };
    Ok(Options {
        sizes,
        modes,
        changes: number("--changes", 1_000)?,
        e2e: number("--e2e", 30)?,
        budget: Duration::from_secs(number("--budget", 180)? as u64),
    })
}

/// One mode at one size: a fresh cluster, the agent, the measurements.
fn measure(mode: Mode, services: usize, options: &Options) -> Result<Value> {
    let mut c = Cluster::new(&["node-a"])?;
    let web = [c.add_pod("node-a", "web-1")?, c.add_pod("node-a", "web-2")?];
    c.add_pod("node-a", "probe")?;
    let generated = Instant::now();
    let mut cluster = Manifests::new(services, options.changes);
    let files = cluster.write_all(&c)?;
    c.write_manifest("probe.yaml", &probe_yaml(&web[0]))?;
    println!(
        "   {files} manifest files ({} of one Service, those the changes rewrite) written in {:.1?}",
        cluster.own.len(),
        generated.elapsed()
    );

    let spawned = Instant::now();
    c.spawn_agent(
        "node-a",
        mode,
        &["--log-format", "json", "--sync-period", "10m"],
    )?;
    let pid = c.agent_pid("node-a").context("agent pid")?;
    let mut log = LogTail::new(c.workdir().join("logs/agent-node-a.log"));
    let first = log
        .next_sync(Duration::from_secs(900))
        .with_context(|| format!("first programming; agent log:\n{}", c.agent_log("node-a")))?;
    let first_wall = spawned.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let rss_first = rss_mib(pid)?;
    let cpu_first = cpu_seconds(pid)?;
    println!(
        "   first programming: {:.0} ms in the agent ({:.0} ms from spawn), RSS {rss_first:.0} MiB",
        us_to_ms(&first, "total_us"),
        first_wall.as_secs_f64() * 1e3
    );

    let e2e = end_to_end(&c, &web, &mut log, options.e2e, options.budget / 2)?;
    println!(
        "   end to end: p50 {:.1} ms p99 {:.1} ms ({} samples)",
        percentile(&e2e, 50.0),
        percentile(&e2e, 99.0),
        e2e.len()
    );
    let cpu_before_changes = cpu_seconds(pid)?;
    let changes_started = Instant::now();
    let (syncs, rss_curve) =
        cluster.change_many(&c, &mut log, options.changes, options.budget, pid)?;
    let changes_wall = changes_started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = rss_mib(pid)?;
    let cpu_total = cpu_seconds(pid)?;
    let stage = |field: &str| -> Vec<f64> { syncs.iter().map(|s| us_to_ms(s, field)).collect() };
    let (total, plan, dataplane, source) = (
        stage("total_us"),
        stage("plan_us"),
        stage("dataplane_us"),
        stage("source_us"),
    );
    println!("   RSS every 100 changes (MiB): {rss_curve:.0?}");
    println!(
        "   {} changes: in the agent p50 {:.2} ms p99 {:.2} ms (source {:.2}, planner {:.3}, dataplane {:.2} p50); RSS {rss_after:.0} MiB",
        syncs.len(),
        percentile(&total, 50.0),
        percentile(&total, 99.0),
        percentile(&source, 50.0),
        percentile(&plan, 50.0),
        percentile(&dataplane, 50.0),
    );
    c.kill_agent("node-a")?;
    Ok(json!({
        "mode": mode.as_str(),
        "services": services,
        "endpoints": services * ENDPOINTS,
        "first_programming_ms": us_to_ms(&first, "total_us"),
        "first_programming_from_spawn_ms": first_wall.as_secs_f64() * 1e3,
        "first_programming_stages_ms": {
            "source": us_to_ms(&first, "source_us"),
            "planner": us_to_ms(&first, "plan_us"),
            "dataplane": us_to_ms(&first, "dataplane_us"),
        },
        "change_in_agent_ms": summary(&total),
        "change_stages_ms": {"source": summary(&source), "planner": summary(&plan),
                             "dataplane": summary(&dataplane)},
        "change_end_to_end_ms": summary(&e2e),
        "changes_applied": syncs.len(),
        "changes_requested": options.changes,
        "changes_wall_s": changes_wall.as_secs_f64(),
        "rss_after_first_programming_mib": rss_first,
        "rss_after_changes_mib": rss_after,
        "rss_growth_percent": (rss_after / rss_first - 1.0) * 100.0,
        "rss_every_100_changes_mib": rss_curve,
        "cpu_seconds_first_programming": cpu_first,
        "cpu_seconds_changes": cpu_total - cpu_before_changes,
        "cpu_seconds_total": cpu_total,
    }))
}

/// Rewrites the probe Service's manifest to the other pod until traffic follows, `samples`
/// times; milliseconds each.
fn end_to_end(
    c: &Cluster,
    web: &[Pod; 2],
    log: &mut LogTail,
    samples: usize,
    budget: Duration,
) -> Result<Vec<f64>> {
    let vip = format!("{PROBE_VIP}:80");
    wait_for_pod(c, &vip, &web[0].name, Duration::from_secs(30)).context("probe Service")?;
    let mut times = Vec::new();
    let started = Instant::now();
    for n in 0..samples {
        if started.elapsed() > budget {
            break;
        }
        let target = &web[(n + 1) % 2];
        let started = Instant::now();
        c.write_manifest("probe.yaml", &probe_yaml(target))?;
        match wait_for_pod(c, &vip, &target.name, Duration::from_secs(10)) {
            Ok(()) => times.push(started.elapsed().as_secs_f64() * 1e3),
            Err(err) => eprintln!("   end-to-end sample {n} lost: {err:#}"),
        }
        log.skip();
    }
    Ok(times)
}

fn wait_for_pod(c: &Cluster, addr: &str, pod: &str, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        if let Ok(reply) = c.tcp1(At::Pod("probe"), addr)?
            && reply.pod == pod
        {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("{addr} did not reach {pod} within {timeout:?}");
        }
    }
}

/// The probe Service (the only one with real pods behind it) and its slice.
fn probe_yaml(pod: &Pod) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{namespace: {NAMESPACE}, name: probe}}\n\
         spec: {{clusterIP: {PROBE_VIP}, ports: [{{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{namespace: {NAMESPACE}, name: probe-1, labels: {{kubernetes.io/service-name: probe}}}}\n\
         addressType: IPv4\nports: [{{name: tcp, port: 8080, protocol: TCP}}]\n\
         endpoints: [{{addresses: [{}], conditions: {{ready: true}}, nodeName: {}}}]\n",
        pod.ipv4, pod.node
    )
}

/// The generated Services, each with one slice of `ENDPOINTS` endpoints (addresses nobody
/// answers on: only the probe Service carries traffic): `PER_FILE` per file, but those the
/// changes will touch in a file each.
struct Manifests {
    services: usize,
    /// The Services the changes touch.
    own: BTreeSet<usize>,
    /// How often each changed Service's first endpoint moved.
    moved: BTreeMap<usize, u32>,
}

impl Manifests {
    fn new(services: usize, changes: usize) -> Self {
        Self {
            services,
            own: (0..changes).map(|k| changed_service(k, services)).collect(),
            moved: BTreeMap::new(),
        }
    }

    /// Writes every file; returns how many.
    fn write_all(&self, c: &Cluster) -> Result<usize> {
        let mut files = 0;
        for file in 0..self.services.div_ceil(PER_FILE) {
            let mut yaml = String::new();
            let last = ((file + 1) * PER_FILE).min(self.services);
            for i in (file * PER_FILE..last).filter(|i| !self.own.contains(i)) {
                self.service_yaml(i, &mut yaml);
            }
            if !yaml.is_empty() {
                c.write_manifest(&format!("scale-{file:05}.yaml"), &yaml)?;
                files += 1;
            }
        }
        for &i in &self.own {
            self.write_own(c, i)?;
        }
        Ok(files + self.own.len())
    }

    /// The file of a Service the changes touch.
    fn write_own(&self, c: &Cluster, i: usize) -> Result<()> {
        let mut yaml = String::new();
        self.service_yaml(i, &mut yaml);
        c.write_manifest(&format!("scale-svc-{i:06}.yaml"), &yaml)
    }

    fn service_yaml(&self, i: usize, out: &mut String) {
        let ip =
            std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 96, 1, 0)) + i as u32);
        let moved = self.moved.get(&i).copied();
        let endpoints: Vec<String> = (0..ENDPOINTS)
            .map(|j| {
                let first = match (j, moved) {
                    (0, Some(n)) => 160 + n % 40,
                    _ => 200 + j as u32,
                };
                format!(
                    "{{addresses: [10.{first}.{}.{}], conditions: {{ready: true}}, nodeName: node-b}}",
                    (i >> 8) & 255,
                    i & 255
                )
            })
            .collect();
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{namespace: {NAMESPACE}, name: svc-{i:06}}}\n\
             spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{namespace: {NAMESPACE}, name: svc-{i:06}-1, labels: {{kubernetes.io/service-name: svc-{i:06}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints: [{}]\n",
            endpoints.join(", ")
        );
    }

    /// `count` changes, one at a time: one Service's first endpoint moves (its own file is
    /// rewritten); waits for the agent's sync of each. Returns the sync log lines and the
    /// agent's RSS every 100 changes (MiB).
    fn change_many(
        &mut self,
        c: &Cluster,
        log: &mut LogTail,
        count: usize,
        budget: Duration,
        pid: u32,
    ) -> Result<(Vec<Value>, Vec<f64>)> {
        log.skip();
        let mut syncs = Vec::new();
        let mut rss = Vec::new();
        let mut lost = 0;
        let started = Instant::now();
        for k in 0..count {
            if started.elapsed() > budget {
                eprintln!("   time budget spent after {k} changes");
                break;
            }
            if k % 100 == 0 {
                rss.push(rss_mib(pid)?);
            }
            let i = changed_service(k, self.services);
            *self.moved.entry(i).or_default() += 1;
            self.write_own(c, i)?;
            match log.next_sync(Duration::from_secs(30)) {
                Ok(sync) => syncs.push(sync),
                Err(_) => lost += 1,
            }
        }
        if lost > 0 {
            eprintln!("   {lost} changes without a sync line within 30 s");
        }
        Ok((syncs, rss))
    }
}

/// The Service the `k`-th change touches.
fn changed_service(k: usize, services: usize) -> usize {
    (k * CHANGE_STRIDE) % services
}

/// Follows the agent's JSON log from where it was last read.
struct LogTail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl LogTail {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            partial: String::new(),
        }
    }

    /// New complete lines since the last call.
    fn lines(&mut self) -> Vec<String> {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let mut text = String::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err()
            || file.read_to_string(&mut text).is_err()
        {
            return Vec::new();
        }
        self.offset += text.len() as u64;
        self.partial.push_str(&text);
        let Some(end) = self.partial.rfind('\n') else {
            return Vec::new();
        };
        let complete: String = self.partial.drain(..=end).collect();
        complete.lines().map(str::to_owned).collect()
    }

    /// Forgets everything logged so far.
    fn skip(&mut self) {
        self.lines();
    }

    /// The fields of the next "synced" line (a sync that programmed the dataplane).
    fn next_sync(&mut self, timeout: Duration) -> Result<Value> {
        let started = Instant::now();
        loop {
            for line in self.lines() {
                let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if entry["fields"]["message"] == "synced" {
                    return Ok(entry["fields"].clone());
                }
            }
            if started.elapsed() > timeout {
                bail!("no sync logged within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn us_to_ms(fields: &Value, field: &str) -> f64 {
    fields[field].as_f64().unwrap_or(f64::NAN) / 1e3
}

fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS in /proc/PID/status")?;
    Ok(kib / 1024.0)
}

/// User + system CPU time of the process so far.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at the state, field 3.
    let after = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .context("/proc/PID/stat field")?
            .parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state.
    Ok((ticks(11)? + ticks(12)?) / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(values: &[f64]) -> Value {
    json!({"p50": percentile(values, 50.0), "p99": percentile(values, 99.0),
           "max": values.iter().copied().fold(f64::NAN, f64::max), "samples": values.len()})
}

pub(crate) fn print_table(runs: &[Value]) {
    println!(
        "\n{:<9} {:>8} {:>10} {:>12} {:>12} {:>12} {:>12} {:>9} {:>9} {:>7}",
        "mode",
        "services",
        "first ms",
        "chg p50 ms",
        "chg p99 ms",
        "e2e p50 ms",
        "e2e p99 ms",
        "RSS MiB",
        "RSS+chg",
        "CPU s"
    );
    for run in runs {
        if let Some(error) = run["error"].as_str() {
            println!(
                "{:<9} {:>8} failed: {error}",
                run["mode"].as_str().unwrap_or("?"),
                run["services"]
            );
            continue;
        }
        let n = |path: &[&str]| {
            path.iter()
                .fold(run, |v, k| &v[*k])
                .as_f64()
                .unwrap_or(f64::NAN)
        };
        println!(
            "{:<9} {:>8} {:>10.0} {:>12.2} {:>12.2} {:>12.1} {:>12.1} {:>9.0} {:>9.0} {:>7.1}",
            run["mode"].as_str().unwrap_or("?"),
            run["services"],
            n(&["first_programming_ms"]),
            n(&["change_in_agent_ms", "p50"]),
            n(&["change_in_agent_ms", "p99"]),
            n(&["change_end_to_end_ms", "p50"]),
            n(&["change_end_to_end_ms", "p99"]),
            n(&["rss_after_first_programming_mib"]),
            n(&["rss_after_changes_mib"]),
            n(&["cpu_seconds_total"]),
        );
    }
    println!("\nstages of one change, p50 ms (source = file re-read + parse + queue):");
    for run in runs.iter().filter(|r| r["error"].is_null()) {
        let stage = |s: &str| {
            run["change_stages_ms"][s]["p50"]
                .as_f64()
                .unwrap_or(f64::NAN)
        };
        println!(
            "{:<9} {:>8}  source {:>8.2}  planner {:>8.3}  dataplane {:>8.2}",
            run["mode"].as_str().unwrap_or("?"),
            run["services"],
            stage("source"),
            stage("planner"),
            stage("dataplane")
        );
    }
}

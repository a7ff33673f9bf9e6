//! The ingress group: sluice's Ingress proxy, nginx (configured as ingress-nginx configures
//! it) and HAProxy in the same node namespace, in front of the same three echo pods, loaded
//! from the outside client with the same tools: HTTP/1.1 keep-alive and new-connection
//! HTTPS (`wrk`, 2 threads, 16 connections), HTTP/2 over TLS (`h2load`), and failed requests
//! while the routes change 100 times a second under load (sluice: the Ingress rewritten in
//! its `dir:` source; nginx: configuration rewritten and `nginx -s reload`). Each load run
//! also states the CPU the proxy spent per request (`cpu`); `SLUICE_BENCH_PERF=DIR` profiles
//! the proxies meanwhile.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use sluice_tests::manifests::{self, IngressPath, Port, Service};
use sluice_tests::{At, Cluster, ECHO_HTTP_PORT, Mode, Pod};

use super::load::{self, Load, Measured};
use super::report::{Figure, Row};

const GROUP: &str = "ingress";
const HOST: &str = "cafe.example.com";
const NAMESPACE: &str = "bench";
/// Route changes per second during the churn run.
const CHANGES_PER_SECOND: u32 = 100;
/// Concurrent HTTP/2 streams per h2load connection.
const H2_STREAMS: usize = 4;

/// One proxy under test, listening on its own ports in the node's namespace.
trait Proxy {
    fn name(&self) -> &'static str;
    /// (HTTP, HTTPS) ports.
    fn ports(&self) -> (u16, u16);
    /// One route change: a new path on the benchmarked host, applied as this proxy applies
    /// configuration changes.
    fn change_routes(&mut self, generation: usize) -> Result<()>;
    /// How many changes the proxy reports having applied so far, when it says.
    fn applied(&self) -> Option<usize> {
        None
    }
    /// The proxy's main process (its workers are counted with it).
    fn pid(&self) -> u32;
}

pub struct Options {
    pub duration: Duration,
    pub churn: Duration,
}

/// What was measured per proxy (errors kept as text for the report).
struct ProxyRuns {
    name: &'static str,
    keep_alive: Result<Measured, String>,
    https_new: Result<Measured, String>,
    h2: Result<Measured, String>,
    /// Only for proxies whose route changes we compare.
    churn: Option<Result<Churn, String>>,
    /// CPU the proxy used per completed request (µs) in each of the three load runs.
    cpu_us: [Option<f64>; 3],
}

struct Churn {
    load: Measured,
    /// Changes made (configuration written and signalled, or manifest rewritten).
    changes: usize,
    /// Changes the proxy reports having applied, when it says (nginx: reloads logged).
    applied: Option<usize>,
    seconds: f64,
}

pub fn run(options: &Options) -> Result<Vec<Row>> {
    let mut c = Cluster::new(&["node-a"])?;
    let pods = [
        c.add_pod("node-a", "web-1")?,
        c.add_pod("node-a", "web-2")?,
        c.add_pod("node-a", "web-3")?,
    ];
    let tls = Tls::new(c.workdir())?;
    write_objects(&c, &pods, &tls, 0)?;
    // nginx runs with `access_log off`: the same for sluice.
    c.start_agent(
        "node-a",
        Mode::Nftables,
        &["--sync-period", "10m", "--ingress-access-log=false"],
    )?;
    let node = c.node("node-a")?.ipv4;
    let hosts = load::hosts_file(&c, HOST, IpAddr::V4(node))?;
    let load = Load {
        threads: 2,
        connections: 16,
        duration: options.duration,
    };
    let mut runs = Vec::new();
    let agent_pid = c.agent_pid("node-a").context("the agent's pid")?;
    let mut sluice = Sluice {
        pid: agent_pid,
        c: &c,
        pods: &pods,
        tls: &tls,
    };
    wait_serving(&c, &hosts, sluice.ports().0)?;
    runs.push(measure(&c, &hosts, &mut sluice, load, Some(options.churn)));

    let dir = c.workdir().to_path_buf();
    let node_ns = c.netns_name(At::Node("node-a"))?;
    match Nginx::start(&dir, &node_ns, &pods, &tls) {
        Ok(mut nginx) => {
            wait_serving(&c, &hosts, nginx.ports().0)?;
            runs.push(measure(&c, &hosts, &mut nginx, load, Some(options.churn)));
        }
        Err(err) => eprintln!("   nginx skipped: {err:#}"),
    }
    match Haproxy::start(&dir, &node_ns, &pods, &tls) {
        Ok(mut haproxy) => {
            wait_serving(&c, &hosts, haproxy.ports().0)?;
            runs.push(measure(&c, &hosts, &mut haproxy, load, None));
        }
        Err(err) => eprintln!("   HAProxy skipped: {err:#}"),
    }
    Ok(rows(&runs))
}

fn text<T>(r: Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{e:#}"))
}

fn measure(
    c: &Cluster,
    hosts: &Path,
    proxy: &mut dyn Proxy,
    load: Load,
    churn: Option<Duration>,
) -> ProxyRuns {
    let (http, https) = proxy.ports();
    let name = proxy.name();
    let pid = proxy.pid();
    let wrk = |run: &str, url: String, close: bool| {
        with_cpu((name, run, pid), || {
            load::wrk(c, At::Client, Some(hosts), &url, load, close)
        })
    };
    let (keep_alive, keep_alive_cpu) = wrk("keep-alive", format!("http://{HOST}:{http}/"), false);
    let (https_new, https_new_cpu) = wrk("https-new", format!("https://{HOST}:{https}/"), true);
    let (h2, h2_cpu) = with_cpu((name, "h2", pid), || {
        load::h2load(
            c,
            At::Client,
            hosts,
            &format!("https://{HOST}:{https}/"),
            load,
            H2_STREAMS,
        )
    });
    let runs = ProxyRuns {
        name,
        keep_alive,
        https_new,
        h2,
        churn: churn.map(|d| {
            text(churn_run(
                c,
                hosts,
                proxy,
                Load {
                    duration: d,
                    ..load
                },
            ))
        }),
        cpu_us: [keep_alive_cpu, https_new_cpu, h2_cpu],
    };
    print_runs(&runs);
    runs
}

/// Runs `load`, and says how much CPU the proxy (`pid` and its children) spent per
/// completed request, in µs. With `SLUICE_BENCH_PERF=DIR` set, the proxy is profiled
/// meanwhile (`perf record --call-graph dwarf`) into `DIR/PROXY-RUN.data`.
fn with_cpu(
    (proxy, run, pid): (&str, &str, u32),
    load: impl FnOnce() -> Result<Measured>,
) -> (Result<Measured, String>, Option<f64>) {
    let profile = std::env::var_os("SLUICE_BENCH_PERF")
        .map(|dir| Path::new(&dir).join(format!("{proxy}-{run}.data")))
        .and_then(|out| {
            profile(pid, &out)
                .map_err(|e| eprintln!("   perf: {e:#}"))
                .ok()
        });
    let before = super::cpu::tree_seconds(pid);
    let measured = text(load());
    let after = super::cpu::tree_seconds(pid);
    if let Some(mut perf) = profile {
        // SAFETY: kill(2) takes plain integers; perf is our own child, not yet reaped.
        unsafe { libc::kill(perf.id() as libc::pid_t, libc::SIGINT) };
        let _ = perf.wait();
    }
    let per_request = match (&measured, before, after) {
        (Ok(m), Some(before), Some(after)) if m.completed > 0 => {
            Some((after - before) * 1e6 / m.completed as f64)
        }
        _ => None,
    };
    (measured, per_request)
}

/// `perf record` of `pid`'s process tree into `out`, until SIGINT.
fn profile(pid: u32, out: &Path) -> Result<Child> {
    let pids: Vec<String> = super::cpu::tree_pids(pid)
        .iter()
        .map(u32::to_string)
        .collect();
    Command::new("perf")
        // DWARF call graphs: the release build keeps debug info but no frame pointers.
        .args([
            "record",
            "-q",
            "--call-graph",
            "dwarf,16384",
            "-F",
            "499",
            "-o",
        ])
        .arg(out)
        .args(["-p", &pids.join(",")])
        .stdout(Stdio::null())
        .spawn()
        .context("starting perf record")
}

/// One proxy's figures as they come in.
fn print_runs(runs: &ProxyRuns) {
    let name = runs.name;
    let show = |r: &Result<Measured, String>| match r {
        Ok(m) => format!(
            "{:.0} req/s p50 {:.2} ms p99 {:.2} ms{}",
            m.rate,
            m.p50_ms,
            m.p99_ms,
            if m.failed > 0 {
                format!(" ({} failed)", m.failed)
            } else {
                String::new()
            }
        ),
        Err(e) => format!("failed: {}", e.lines().next().unwrap_or("")),
    };
    let cpu = |i: usize| {
        runs.cpu_us[i].map_or_else(String::new, |us| format!(", proxy CPU {us:.1} µs/req"))
    };
    println!(
        "   {name:<8} HTTP/1.1 keep-alive {}{}",
        show(&runs.keep_alive),
        cpu(0)
    );
    println!(
        "   {name:<8} HTTPS new conn.     {}{}",
        show(&runs.https_new),
        cpu(1)
    );
    println!(
        "   {name:<8} HTTP/2              {}{}",
        show(&runs.h2),
        cpu(2)
    );
    match &runs.churn {
        Some(Ok(ch)) => println!(
            "   {name:<8} {} route changes in {:.1} s under load{}: {} of {} requests failed",
            ch.changes,
            ch.seconds,
            ch.applied
                .map_or_else(String::new, |n| format!(" ({n} applied)")),
            ch.load.failed,
            ch.load.completed
        ),
        Some(Err(e)) => println!(
            "   {name:<8} route changes: failed: {}",
            e.lines().next().unwrap_or("")
        ),
        None => {}
    }
}

/// Keep-alive load while the routes change `CHANGES_PER_SECOND` times a second.
fn churn_run(c: &Cluster, hosts: &Path, proxy: &mut dyn Proxy, load: Load) -> Result<Churn> {
    let url = format!("http://{HOST}:{}/", proxy.ports().0);
    let done = AtomicBool::new(false);
    let applied_before = proxy.applied();
    let started = Instant::now();
    let (measured, changes) = std::thread::scope(|s| {
        let wrk = s.spawn(|| {
            let r = load::wrk(c, At::Client, Some(hosts), &url, load, false);
            done.store(true, Ordering::SeqCst);
            r
        });
        let period = Duration::from_secs(1) / CHANGES_PER_SECOND;
        let mut changes = 0;
        let mut error = None;
        while !done.load(Ordering::SeqCst) {
            let next = started + period * (changes as u32 + 1);
            if let Err(err) = proxy.change_routes(changes + 1) {
                error.get_or_insert(err);
            }
            changes += 1;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        let measured = wrk
            .join()
            .map_err(|_| anyhow::anyhow!("wrk thread panicked"))?;
        match error {
            Some(err) => Err(err.context("changing routes")),
            None => Ok((measured?, changes)),
        }
    })?;
    let seconds = started.elapsed().as_secs_f64();
    // Reloads still under way finish (and are logged) shortly after the last signal.
    std::thread::sleep(Duration::from_millis(500));
    Ok(Churn {
        load: measured,
        changes,
        applied: proxy
            .applied()
            .zip(applied_before)
            .map(|(after, before)| after - before),
        seconds,
    })
}

/// Waits until the proxy on `port` answers 200 for the benchmarked host from the client.
fn wait_serving(c: &Cluster, hosts: &Path, port: u16) -> Result<()> {
    let resolve = std::fs::read_to_string(hosts)?
        .lines()
        .find_map(|l| l.strip_suffix(&format!(" {HOST}")).map(str::to_owned))
        .context("host in hosts file")?;
    let resolve = format!("{HOST}:{port}:{resolve}");
    let url = format!("http://{HOST}:{port}/");
    sluice_tests::wait_until(
        Duration::from_secs(30),
        &format!("{url} answering 200"),
        || {
            Ok(c.http(At::Client, &url, &["--resolve", &resolve])
                .is_ok_and(|r| r.status == 200))
        },
    )
}

/// The rows: sluice ÷ nginx per figure, HAProxy beside.
fn rows(runs: &[ProxyRuns]) -> Vec<Row> {
    fn m(r: &Result<Measured, String>, f: fn(&Measured) -> f64) -> Option<Result<f64, String>> {
        Some(r.as_ref().map(f).map_err(Clone::clone))
    }
    let metrics: Vec<(String, &'static str, bool, Pick)> = vec![
        (
            "HTTP/1.1 keep-alive: requests/s".into(),
            "req/s",
            false,
            |r| m(&r.keep_alive, |m| m.rate),
        ),
        ("HTTP/1.1 keep-alive: p50".into(), "ms", true, |r| {
            m(&r.keep_alive, |m| m.p50_ms)
        }),
        ("HTTP/1.1 keep-alive: p99".into(), "ms", true, |r| {
            m(&r.keep_alive, |m| m.p99_ms)
        }),
        (
            "HTTPS, new connection per request: requests/s".into(),
            "req/s",
            false,
            |r| m(&r.https_new, |m| m.rate),
        ),
        (
            "HTTPS, new connection per request: p50".into(),
            "ms",
            true,
            |r| m(&r.https_new, |m| m.p50_ms),
        ),
        (
            "HTTPS, new connection per request: p99".into(),
            "ms",
            true,
            |r| m(&r.https_new, |m| m.p99_ms),
        ),
        (
            format!("HTTP/2 over TLS, {H2_STREAMS} streams per connection: requests/s"),
            "req/s",
            false,
            |r| m(&r.h2, |m| m.rate),
        ),
        ("HTTP/2 over TLS: p50".into(), "ms", true, |r| {
            m(&r.h2, |m| m.p50_ms)
        }),
        ("HTTP/2 over TLS: p99".into(), "ms", true, |r| {
            m(&r.h2, |m| m.p99_ms)
        }),
        (
            format!(
                "routes changed {CHANGES_PER_SECOND}×/s under keep-alive load: failed requests"
            ),
            "requests",
            true,
            |r| {
                r.churn.as_ref().map(|c| {
                    c.as_ref()
                        .map(|c| c.load.failed as f64)
                        .map_err(Clone::clone)
                })
            },
        ),
        (
            "routes changed under load: requests/s".into(),
            "req/s",
            false,
            |r| {
                r.churn
                    .as_ref()
                    .map(|c| c.as_ref().map(|c| c.load.rate).map_err(Clone::clone))
            },
        ),
        (
            "routes changed under load: changes made per second".into(),
            "changes/s",
            false,
            |r| {
                r.churn.as_ref().map(|c| {
                    c.as_ref()
                        .map(|c| c.changes as f64 / c.seconds)
                        .map_err(Clone::clone)
                })
            },
        ),
        (
            "routes changed under load: changes applied per second".into(),
            "applied/s",
            false,
            |r| {
                let churn = r.churn.as_ref()?;
                Some(match churn {
                    Ok(c) => Ok(c.applied? as f64 / c.seconds),
                    Err(e) => Err(e.clone()),
                })
            },
        ),
    ];
    let mut rows = metric_rows(runs, metrics);
    rows.extend(cpu_rows(runs));
    rows
}

/// The proxies' CPU per request in each load run: what each spent of the shared cores.
fn cpu_rows(runs: &[ProxyRuns]) -> Vec<Row> {
    [
        "HTTP/1.1 keep-alive",
        "HTTPS, new connection per request",
        "HTTP/2 over TLS",
    ]
    .iter()
    .enumerate()
    .map(|(i, load)| {
        let mut row =
            Row::new(GROUP, format!("{load}: proxy CPU per request"), "µs").lower_is_better();
        for runs in runs {
            if let Some(us) = runs.cpu_us[i] {
                row = placed(row, Figure::new(runs.name, Some(us)));
            }
        }
        row
    })
    .collect()
}

type Pick = fn(&ProxyRuns) -> Option<Result<f64, String>>;

fn metric_rows(runs: &[ProxyRuns], metrics: Vec<(String, &'static str, bool, Pick)>) -> Vec<Row> {
    let figure = |runs: &ProxyRuns, pick: Pick| {
        pick(runs).map(|v| match v {
            Ok(v) => Figure::new(runs.name, Some(v)),
            Err(e) => Figure::failed(runs.name, e),
        })
    };
    metrics
        .into_iter()
        .map(|(name, unit, lower, pick)| {
            let mut row = Row::new(GROUP, name, unit);
            if lower {
                row = row.lower_is_better();
            }
            // Rates, p99s and the churn's failures and pace (not its request rate).
            if (unit != "ms" && !name_is_churn_rate(&row.name)) || row.name.ends_with("p99") {
                row = row.headline();
            }
            for runs in runs {
                if let Some(f) = figure(runs, pick) {
                    row = placed(row, f);
                }
            }
            row
        })
        .collect()
}

/// `row` with sluice's figure as ours, any other proxy's as a reference.
fn placed(row: Row, figure: Figure) -> Row {
    if figure.system == "sluice" {
        row.ours(figure)
    } else {
        row.reference(figure)
    }
}

fn name_is_churn_rate(name: &str) -> bool {
    name == "routes changed under load: requests/s"
}

/// A self-signed ECDSA certificate for the host, as PEM files (cert, key, and both in one
/// for HAProxy).
struct Tls {
    cert: PathBuf,
    key: PathBuf,
    combined: PathBuf,
}

impl Tls {
    fn new(dir: &Path) -> Result<Tls> {
        let (cert, key) = crate::demo::self_signed(HOST)?;
        let tls = Tls {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            combined: dir.join("tls.pem"),
        };
        std::fs::write(&tls.cert, &cert)?;
        std::fs::write(&tls.key, &key)?;
        std::fs::write(&tls.combined, format!("{cert}{key}"))?;
        Ok(tls)
    }
}

/// The Service over the three pods, the IngressClass, the TLS Secret and the Ingress (with
/// `generation` extra paths' worth of churn: generation 0 has none).
fn write_objects(c: &Cluster, pods: &[Pod; 3], tls: &Tls, generation: usize) -> Result<()> {
    if generation == 0 {
        let svc = Service::new(NAMESPACE, "web")
            .cluster_ips(&["10.96.0.10"])
            .port(Port::tcp(80, ECHO_HTTP_PORT).named("http"));
        c.write_service(
            &svc,
            &[("http", "TCP", ECHO_HTTP_PORT)],
            &pods.iter().collect::<Vec<_>>(),
        )?;
        let docs = [
            manifests::ingress_class("sluice", "sluice.dev/ingress", true),
            manifests::tls_secret(
                NAMESPACE,
                "cafe-tls",
                &std::fs::read_to_string(&tls.cert)?,
                &std::fs::read_to_string(&tls.key)?,
            ),
        ];
        c.write_manifest("ingress-class.yaml", &manifests::yaml_docs(&docs))?;
    }
    c.write_manifest(
        "cafe-ingress.yaml",
        &manifests::yaml_docs(&[cafe_ingress(generation)]),
    )
}

fn cafe_ingress(generation: usize) -> Value {
    let path = |p: String| IngressPath {
        host: Some(HOST.into()),
        path: p,
        path_type: "Prefix".into(),
        service: "web".into(),
        port: 80,
    };
    let mut paths = vec![path("/".into())];
    if generation > 0 {
        paths.push(path(format!("/churn-{generation}")));
    }
    let mut ingress = manifests::ingress(
        NAMESPACE,
        "cafe",
        Some("sluice"),
        &paths,
        &[(&[HOST], "cafe-tls")],
        None,
    );
    // Plain HTTP is benchmarked too (nginx's configuration serves it): no redirect to HTTPS,
    // which a TLS host gets by default as with ingress-nginx.
    ingress["metadata"]["annotations"] =
        serde_json::json!({"nginx.ingress.kubernetes.io/ssl-redirect": "false"});
    ingress
}

struct Sluice<'a> {
    pid: u32,
    c: &'a Cluster,
    pods: &'a [Pod; 3],
    tls: &'a Tls,
}

impl Proxy for Sluice<'_> {
    fn name(&self) -> &'static str {
        "sluice"
    }
    fn pid(&self) -> u32 {
        self.pid
    }
    fn ports(&self) -> (u16, u16) {
        (80, 443)
    }
    fn change_routes(&mut self, generation: usize) -> Result<()> {
        write_objects(self.c, self.pods, self.tls, generation)
    }
    fn applied(&self) -> Option<usize> {
        // Route tables swapped in (a burst of manifest writes may make one).
        let metrics = self.c.agent_metrics("node-a").ok()?;
        metric_value(&metrics, "sluice_ingress_route_table_swaps_total")
    }
}

/// The value of an unlabelled counter in Prometheus text.
fn metric_value(text: &str, name: &str) -> Option<usize> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as usize)
}

/// A proxy process started in the node's namespace, stopped (with its workers) on drop.
struct Spawned {
    child: Child,
    name: &'static str,
    dir: PathBuf,
}

impl Spawned {
    fn start(name: &'static str, netns: &str, dir: &Path, argv: &[String]) -> Result<Spawned> {
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        // nsenter setns()es and execs: the child's pid is the proxy's master process.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg("--")
            .args(argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Spawned {
            child,
            name,
            dir: dir.to_path_buf(),
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.name))).unwrap_or_default()
    }

    fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = libc::pid_t::try_from(self.child.id()).context("pid")?;
        // SAFETY: kill(2) takes plain integers; `pid` is our own child, not yet reaped.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!(
                "signalling {}: {}",
                self.name,
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}): {}", self.name, self.log());
        }
        Ok(())
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // SIGTERM to the master stops its workers too, for nginx and HAProxy alike (SIGKILL
        // would leave the workers behind until the namespace goes).
        let _ = self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx as ingress-nginx configures it: 2 workers, reuseport, keep-alive upstream (320
/// connections), the ingress-nginx proxy headers and timeouts; access log off (sluice's is
/// off too).
struct Nginx {
    process: Spawned,
    dir: PathBuf,
    conf: PathBuf,
    upstreams: Vec<SocketAddr>,
    cert: PathBuf,
    key: PathBuf,
}

const NGINX_PORTS: (u16, u16) = (10080, 10443);

impl Nginx {
    fn start(work: &Path, netns: &str, pods: &[Pod; 3], tls: &Tls) -> Result<Nginx> {
        let bin = find_binary("nginx").context("nginx not installed")?;
        let dir = work.join("nginx");
        std::fs::create_dir_all(&dir)?;
        let upstreams: Vec<SocketAddr> = pods.iter().map(|p| p.v4(ECHO_HTTP_PORT)).collect();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            nginx_config(&dir, &upstreams, (&tls.cert, &tls.key), 0),
        )?;
        let argv = [
            bin.display().to_string(),
            "-p".into(),
            dir.display().to_string(),
            "-e".into(),
            dir.join("error.log").display().to_string(),
            "-c".into(),
            conf.display().to_string(),
        ];
        let mut process = Spawned::start("nginx", netns, work, &argv)?;
        std::thread::sleep(Duration::from_millis(300));
        process.check_running()?;
        Ok(Nginx {
            process,
            dir,
            conf,
            upstreams,
            cert: tls.cert.clone(),
            key: tls.key.clone(),
        })
    }
}

impl Proxy for Nginx {
    fn name(&self) -> &'static str {
        "nginx"
    }
    fn pid(&self) -> u32 {
        self.process.child.id()
    }
    fn ports(&self) -> (u16, u16) {
        NGINX_PORTS
    }
    /// As ingress-nginx does on a change it cannot apply through Lua: write the configuration,
    /// then reload (`nginx -s reload` is SIGHUP to the master once the pid file is read; the
    /// signal is sent directly, so the 100 changes a second are not limited by that helper
    /// process parsing the configuration on 2 cores).
    fn change_routes(&mut self, generation: usize) -> Result<()> {
        let config = nginx_config(
            &self.dir,
            &self.upstreams,
            (&self.cert, &self.key),
            generation,
        );
        // Whole files only: the master reads the configuration whenever the signal arrives.
        let tmp = self.dir.join("nginx.conf.tmp");
        std::fs::write(&tmp, config)?;
        std::fs::rename(&tmp, &self.conf)?;
        self.process.signal(libc::SIGHUP)?;
        self.process.check_running()
    }

    fn applied(&self) -> Option<usize> {
        // ingress-nginx's default error-log-level is notice, which logs each reload.
        let log = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
        Some(log.matches("reconfiguring").count())
    }
}

fn nginx_config(
    dir: &Path,
    upstreams: &[SocketAddr],
    (cert, key): (&Path, &Path),
    generation: usize,
) -> String {
    let d = dir.display();
    let servers: String = upstreams
        .iter()
        .map(|u| format!("        server {u} max_fails=0;\n"))
        .collect();
    let location = |path: &str| {
        format!(
            r#"        location {path} {{
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Request-ID $request_id;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-Port $server_port;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Scheme $scheme;
            proxy_connect_timeout 5s;
            proxy_send_timeout 60s;
            proxy_read_timeout 60s;
            proxy_buffering off;
            proxy_pass http://web;
        }}
"#
        )
    };
    let mut locations = location("/");
    if generation > 0 {
        locations.push_str(&location(&format!("/churn-{generation}")));
    }
    format!(
        r#"daemon off;
master_process on;
worker_processes 2;
worker_rlimit_nofile 65536;
# ingress-nginx waits 240 s for old workers; 10 s keeps 100 reloads/s from piling them up.
worker_shutdown_timeout 10s;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ worker_connections 16384; multi_accept on; use epoll; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    # ingress-nginx's default is 1000; h2load does not reconnect after the GOAWAY that ends
    # such a connection, so the limit is lifted (which can only help nginx).
    keepalive_requests 1000000;
    http2_max_concurrent_streams 128;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_timeout 10m;
    ssl_session_tickets off;
    ssl_buffer_size 4k;
    upstream web {{
{servers}        keepalive 320;
        keepalive_timeout 60s;
        keepalive_requests 10000;
    }}
    server {{
        listen {http} reuseport backlog=4096;
        listen {https} ssl http2 reuseport backlog=4096;
        server_name {HOST};
        ssl_certificate {cert};
        ssl_certificate_key {key};
{locations}    }}
}}
"#,
        http = NGINX_PORTS.0,
        https = NGINX_PORTS.1,
        cert = cert.display(),
        key = key.display(),
    )
}

/// HAProxy with 2 threads, HTTP keep-alive both sides, ALPN h2 and http/1.1.
struct Haproxy {
    process: Spawned,
}

const HAPROXY_PORTS: (u16, u16) = (20080, 20443);

impl Haproxy {
    fn start(work: &Path, netns: &str, pods: &[Pod; 3], tls: &Tls) -> Result<Haproxy> {
        let bin = find_binary("haproxy").context("haproxy not installed")?;
        let dir = work.join("haproxy");
        std::fs::create_dir_all(&dir)?;
        let servers: String = pods
            .iter()
            .enumerate()
            .map(|(i, p)| format!("    server p{i} {}\n", p.v4(ECHO_HTTP_PORT)))
            .collect();
        let conf = dir.join("haproxy.cfg");
        std::fs::write(
            &conf,
            format!(
                "global\n    nbthread 2\n    maxconn 8000\n    ssl-default-bind-options ssl-min-ver TLSv1.2\n\
                 defaults\n    mode http\n    option forwardfor\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n    timeout http-keep-alive 75s\n\
                 frontend cafe\n    bind :{http}\n    bind :{https} ssl crt {pem} alpn h2,http/1.1\n    default_backend web\n\
                 backend web\n    balance roundrobin\n{servers}",
                http = HAPROXY_PORTS.0,
                https = HAPROXY_PORTS.1,
                pem = tls.combined.display(),
            ),
        )?;
        let argv = [
            bin.display().to_string(),
            "-W".into(),
            "-f".into(),
            conf.display().to_string(),
        ];
        let mut process = Spawned::start("haproxy", netns, work, &argv)?;
        std::thread::sleep(Duration::from_millis(300));
        process.check_running()?;
        Ok(Haproxy { process })
    }
}

impl Proxy for Haproxy {
    fn name(&self) -> &'static str {
        "HAProxy"
    }
    fn pid(&self) -> u32 {
        self.process.child.id()
    }
    fn ports(&self) -> (u16, u16) {
        HAPROXY_PORTS
    }
    fn change_routes(&mut self, _generation: usize) -> Result<()> {
        bail!("HAProxy's route changes are not benchmarked")
    }
}

/// A program from `PATH` or the sbin directories (where Debian puts nginx and haproxy).
fn find_binary(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(rate: f64, failed: u64) -> Result<Measured, String> {
        Ok(Measured {
            rate,
            p50_ms: 1.0,
            p99_ms: 4.0,
            max_ms: 9.0,
            completed: 100,
            failed,
        })
    }

    #[test]
    fn rows_put_sluice_against_nginx_with_haproxy_beside() {
        let runs = [
            ProxyRuns {
                name: "sluice",
                keep_alive: measured(30_000.0, 0),
                https_new: measured(2_000.0, 0),
                h2: Err("h2load failed".into()),
                churn: Some(Ok(Churn {
                    load: measured(25_000.0, 0).expect("m"),
                    changes: 500,
                    applied: None,
                    seconds: 5.0,
                })),
                cpu_us: [Some(20.0), None, None],
            },
            ProxyRuns {
                name: "nginx",
                keep_alive: measured(20_000.0, 0),
                https_new: measured(2_500.0, 0),
                h2: measured(40_000.0, 0),
                churn: Some(Ok(Churn {
                    load: measured(10_000.0, 37).expect("m"),
                    changes: 480,
                    applied: Some(200),
                    seconds: 5.0,
                })),
                cpu_us: [Some(25.0), None, None],
            },
            ProxyRuns {
                name: "HAProxy",
                keep_alive: measured(25_000.0, 0),
                https_new: measured(3_000.0, 0),
                h2: measured(45_000.0, 0),
                churn: None,
                cpu_us: [None; 3],
            },
        ];
        let rows = rows(&runs);
        let ka = &rows[0];
        assert_eq!(ka.ours[0].system, "sluice");
        assert_eq!(
            ka.references
                .iter()
                .map(|f| f.system.as_str())
                .collect::<Vec<_>>(),
            ["nginx", "HAProxy"]
        );
        assert_eq!(ka.main_ratio(&ka.ours[0]), Some(1.5));
        let failed = rows
            .iter()
            .find(|r| r.name.contains("failed requests"))
            .expect("churn row");
        assert_eq!(failed.ours[0].value, Some(0.0));
        assert_eq!(
            failed.references.len(),
            1,
            "HAProxy's routes are not churned"
        );
        assert_eq!(failed.references[0].value, Some(37.0));
        let h2 = rows
            .iter()
            .find(|r| r.name.starts_with("HTTP/2") && r.unit == "req/s")
            .expect("h2 row");
        assert_eq!(h2.ours[0].note.as_deref(), Some("h2load failed"));
        let per_second = rows
            .iter()
            .find(|r| r.unit == "changes/s")
            .expect("rate row");
        assert_eq!(per_second.ours[0].value, Some(100.0));
        let cpu = rows
            .iter()
            .find(|r| r.name == "HTTP/1.1 keep-alive: proxy CPU per request")
            .expect("cpu row");
        assert_eq!(cpu.ours[0].value, Some(20.0));
        assert_eq!(cpu.main_ratio(&cpu.ours[0]), Some(0.8));
        assert_eq!(cpu.references.len(), 1, "HAProxy's CPU was not measured");
    }

    #[test]
    fn the_swap_counter_is_read_from_the_metrics_text() {
        let text = "# TYPE sluice_ingress_route_table_swaps counter\n\
                    sluice_ingress_route_table_swaps_total 42\n\
                    sluice_ingress_route_table_swaps_totally_else 7\n";
        assert_eq!(
            metric_value(text, "sluice_ingress_route_table_swaps_total"),
            Some(42)
        );
        assert_eq!(metric_value(text, "sluice_ingress_requests_total"), None);
    }

    #[test]
    fn nginx_config_adds_the_churned_location() {
        let tls = (Path::new("/c"), Path::new("/k"));
        let ups = ["10.244.1.2:8081".parse().expect("addr")];
        let base = nginx_config(Path::new("/d"), &ups, tls, 0);
        assert!(base.contains("worker_processes 2;"), "{base}");
        assert!(
            base.contains("server 10.244.1.2:8081 max_fails=0;"),
            "{base}"
        );
        assert!(base.contains("keepalive 320;"), "{base}");
        assert!(!base.contains("/churn-"), "{base}");
        let next = nginx_config(Path::new("/d"), &ups, tls, 7);
        assert!(next.contains("location /churn-7 {"), "{next}");
    }

    #[test]
    fn churned_ingress_keeps_the_root_route() {
        let v = cafe_ingress(3);
        let paths = &v["spec"]["rules"][0]["http"]["paths"];
        assert_eq!(paths[0]["path"], "/");
        assert_eq!(paths[1]["path"], "/churn-3");
        assert_eq!(v["spec"]["tls"][0]["secretName"], "cafe-tls");
        assert_eq!(
            v["metadata"]["annotations"]["nginx.ingress.kubernetes.io/ssl-redirect"], "false",
            "plain HTTP is measured, not a redirect"
        );
    }
}

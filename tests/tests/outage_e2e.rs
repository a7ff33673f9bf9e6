//! The agent with `--source k8s` against the fake API server of crates/k8s (served in node-a's
//! namespace) when the API server misbehaves: down for longer than two sync periods, history
//! compacted meanwhile (410 Gone, both styles), a watch stream cut in the middle of an event,
//! and a server that answers every read 3 s late. Through all of it the datapath and the
//! Ingress keep serving, `/healthz` stays 200 (as kube-proxy's: nothing is pending, the
//! periodic syncs succeed), watches resume from their resourceVersion without relisting (or
//! relist exactly once per kind after 410), and changes are programmed promptly once the
//! watch is back. Needs root and the binaries.

#[path = "../../crates/k8s/tests/fake_apiserver/mod.rs"]
mod fake_apiserver;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use fake_apiserver::{FakeApiServer, GoneStyle, Recorded};
use serde_json::json;
use sluice_tests::apiserver::{tcp_listener_in, write_kubeconfig};
use sluice_tests::manifests::{
    EndpointSlice, Family, IngressPath, Port, Service, ingress, ingress_class,
};
use sluice_tests::{
    At, Cluster, Mode, Pod, backend_tests, require_root, tally, wait_for, wait_until,
};

backend_tests!(datapath_and_healthz_survive_an_outage_and_watches_resume);

/// Two sync periods are 4 s; the outage lasts longer.
const SYNC_PERIOD: &str = "2s";
const OUTAGE: Duration = Duration::from_secs(6);
/// The collections the agent's API source watches (the six snapshot kinds).
const SOURCE_KINDS: &[&str] = &[
    "/api/v1/services",
    "/apis/discovery.k8s.io/v1/endpointslices",
    "/api/v1/nodes",
    "/apis/networking.k8s.io/v1/ingresses",
    "/apis/networking.k8s.io/v1/ingressclasses",
    "/api/v1/secrets",
];

/// A cluster with web-1/web-2/probe on node-a, the fake API server in node-a's namespace
/// holding Service `web` (→ web-1), the Node, an IngressClass and an Ingress.
struct Setup {
    c: Cluster,
    fake: FakeApiServer,
    /// Runs the fake; dropped last.
    _runtime: tokio::runtime::Runtime,
    w1: Pod,
    w2: Pod,
    kubeconfig: String,
}

impl Setup {
    fn new() -> Result<Setup> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let mut c = Cluster::new(&["node-a"])?;
        let w1 = c.add_pod("node-a", "web-1")?;
        let w2 = c.add_pod("node-a", "web-2")?;
        c.add_pod("node-a", "probe")?;
        let node = c.node("node-a")?.clone();
        let listener = tcp_listener_in(&node.netns, SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let fake = {
            let _guard = runtime.enter();
            FakeApiServer::start_on(tokio::net::TcpListener::from_std(listener)?)
        };
        fake.apply(web().to_json());
        fake.apply(slice(&w1));
        fake.apply(json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
            "status": {"addresses": [{"type": "InternalIP", "address": node.ipv4.to_string()}]},
        }));
        fake.apply(ingress_class("sluice", "sluice.dev/ingress", true));
        let route = IngressPath {
            host: Some("web.example.com".into()),
            path: "/".into(),
            path_type: "Prefix".into(),
            service: "web".into(),
            port: 81,
        };
        fake.apply(ingress(
            "default",
            "web",
            Some("sluice"),
            &[route],
            &[],
            None,
        ));
        let kubeconfig = write_kubeconfig(c.workdir(), &fake.url())?
            .display()
            .to_string();
        Ok(Setup {
            c,
            fake,
            _runtime: runtime,
            w1,
            w2,
            kubeconfig,
        })
    }

    fn agent_args(&self) -> Vec<&str> {
        vec![
            "--source",
            "k8s",
            "--kubeconfig",
            &self.kubeconfig,
            "--sync-period",
            SYNC_PERIOD,
        ]
    }

    fn start(&mut self, mode: Mode) -> Result<()> {
        let args: Vec<String> = self.agent_args().iter().map(|s| s.to_string()).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.c.start_agent("node-a", mode, &args)
    }

    /// Which pods answered 4 connections to the ClusterIP.
    fn cluster_ip_pods(&self) -> Result<BTreeMap<String, usize>> {
        Ok(tally(&self.c.tcp(At::Pod("probe"), "10.96.0.10:80", 4)?))
    }

    fn only(&self, pod: &Pod) -> Result<bool> {
        Ok(self.cluster_ip_pods()? == [(pod.name.clone(), 4)].into())
    }

    fn ingress_status(&self) -> Result<u16> {
        let resolve = format!("web.example.com:80:{}", self.c.node("node-a")?.ipv4);
        Ok(self
            .c
            .http(
                At::Client,
                "http://web.example.com/",
                &["--resolve", &resolve],
            )?
            .status)
    }

    /// `/healthz` from the node: (status, `lastUpdated`).
    fn healthz(&self) -> Result<(u16, String)> {
        let url = format!("http://{}/healthz", sluice_tests::AGENT_HEALTHZ);
        let out = self
            .c
            .curl(At::Node("node-a"), &["-w", "\n%{http_code}", &url])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').context("healthz output")?;
        let last = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["lastUpdated"].as_str().map(str::to_owned))
            .unwrap_or_default();
        Ok((code.parse().unwrap_or(0), last))
    }

    /// The requests the fake received after `since`.
    fn requests_since(&self, since: Instant) -> Vec<Recorded> {
        self.fake
            .requests()
            .into_iter()
            .filter(|r| r.at >= since)
            .collect()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // The agent first (it talks to the fake), then the fake, then its runtime.
        let _ = self.c.kill_agent("node-a");
    }
}

fn web() -> Service {
    Service::new("default", "web")
        .cluster_ips(&["10.96.0.10"])
        .port(Port::tcp(80, 8080).named("tcp"))
        .port(Port::tcp(81, 8081).named("http"))
}

fn slice(pod: &Pod) -> serde_json::Value {
    EndpointSlice::new("default", "web-v4", "web", Family::V4)
        .port("tcp", "TCP", 8080)
        .port("http", "TCP", 8081)
        .pods([pod])
        .to_json()
}

fn is_watch(r: &Recorded) -> bool {
    r.query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1")
}

/// GETs of whole collections that are not watches: lists.
fn lists_by_path(requests: &[Recorded]) -> BTreeMap<String, usize> {
    let plurals = [
        "services",
        "endpointslices",
        "nodes",
        "ingresses",
        "ingressclasses",
        "secrets",
        "leases",
        "loadbalancerippools",
        "events",
    ];
    let mut out = BTreeMap::new();
    for r in requests {
        let last = r.path.rsplit('/').next().unwrap_or_default();
        if r.method == "GET" && !is_watch(r) && plurals.contains(&last) {
            *out.entry(r.path.clone()).or_insert(0) += 1;
        }
    }
    out
}

fn count(lists: &BTreeMap<String, usize>, path: &str) -> usize {
    lists.get(path).copied().unwrap_or(0)
}

/// When the first watch of `path` arrived after `since`.
fn first_watch(requests: &[Recorded], path: &str) -> Option<Instant> {
    requests
        .iter()
        .filter(|r| r.path == path && is_watch(r))
        .map(|r| r.at)
        .min()
}

fn datapath_and_healthz_survive_an_outage_and_watches_resume(mode: Mode) -> Result<()> {
    let mut s = Setup::new()?;
    s.start(mode)?;
    wait_until(Duration::from_secs(5), "web-1 served", || s.only(&s.w1))?;
    ensure!(s.ingress_status()? == 200, "Ingress before the outage");
    let (_, updated_before) = s.healthz()?;

    let down_at = Instant::now();
    s.fake.set_down(true);
    let mut checks = 0;
    while down_at.elapsed() < OUTAGE {
        ensure!(
            s.only(&s.w1)?,
            "ClusterIP during the outage: {:?}",
            s.cluster_ip_pods()?
        );
        ensure!(s.ingress_status()? == 200, "Ingress during the outage");
        let (code, _) = s.healthz()?;
        ensure!(code == 200, "healthz during the outage: {code}");
        checks += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    let (code, updated_during) = s.healthz()?;
    ensure!(code == 200, "healthz at the end of the outage: {code}");
    ensure!(
        updated_during != updated_before,
        "periodic syncs go on during the outage (lastUpdated {updated_before} -> {updated_during})"
    );

    // Back up; a change made now reaches the agent when its watch resumes.
    let up_at = Instant::now();
    s.fake.set_down(false);
    s.fake.apply(slice(&s.w2));
    let seen_at = wait_for(Duration::from_secs(40), "web-2 after the outage", || {
        Ok(s.only(&s.w2)?.then(Instant::now))
    })?;
    // Every watch is back (some may still be backing off when web-2 is seen).
    let resumed = wait_for(Duration::from_secs(40), "every watch resumed", || {
        let requests = s.requests_since(up_at);
        let firsts: Option<Vec<Instant>> = SOURCE_KINDS
            .iter()
            .map(|path| first_watch(&requests, path))
            .collect();
        Ok(firsts.map(|f| (requests, f)))
    })?;
    let (requests, _) = resumed;
    let slices_resumed = first_watch(&requests, SOURCE_KINDS[1]).context("slice watch")?;
    let lists = lists_by_path(&requests);
    let programmed = seen_at.saturating_duration_since(slices_resumed);
    eprintln!(
        "{}: {OUTAGE:?} outage ({checks} rounds of checks all good); EndpointSlice watch resumed \
         {:?} after the server returned; change programmed {programmed:?} after that; \
         lists after the return: {lists:?}; {} requests after the return",
        mode.as_str(),
        slices_resumed.duration_since(up_at),
        requests.len(),
    );
    ensure!(
        lists.is_empty(),
        "watches must resume, not relist: {lists:?}"
    );
    ensure!(
        programmed < Duration::from_secs(1),
        "the change was programmed {programmed:?} after the watch resumed"
    );
    ensure!(s.ingress_status()? == 200, "Ingress after the outage");
    Ok(())
}

/// While the server is down its history is compacted: every watch resumes into 410 Gone and
/// relists once per watcher; what changed meanwhile (an endpoint moved, a Service deleted) is applied.
#[test]
fn gone_after_an_outage_relists_each_kind_once() -> Result<()> {
    if !require_root("gone_after_an_outage_relists_each_kind_once") {
        return Ok(());
    }
    let mut s = Setup::new()?;
    let doomed = Service::new("default", "doomed")
        .cluster_ips(&["10.96.0.11"])
        .port(Port::tcp(80, 8080).named("tcp"));
    s.fake.apply(doomed.to_json());
    let mut doomed_slice = slice(&s.w1);
    doomed_slice["metadata"]["name"] = json!("doomed-v4");
    doomed_slice["metadata"]["labels"]["kubernetes.io/service-name"] = json!("doomed");
    s.fake.apply(doomed_slice);
    s.start(Mode::Nftables)?;
    wait_until(Duration::from_secs(5), "web-1 served", || s.only(&s.w1))?;
    ensure!(
        s.c.tcp1(At::Pod("probe"), "10.96.0.11:80")?.is_ok(),
        "doomed served"
    );
    let at_start = lists_by_path(&s.fake.requests());

    for (style, to) in [(GoneStyle::ErrorEvent, &s.w2), (GoneStyle::Http410, &s.w1)] {
        s.fake.set_gone_style(style);
        s.fake.set_down(true);
        std::thread::sleep(Duration::from_secs(2));
        s.fake.apply(slice(to));
        if style == GoneStyle::ErrorEvent {
            s.fake.delete("Service", "default", "doomed");
        }
        s.fake.compact_and_drop_watches();
        let up_at = Instant::now();
        s.fake.set_down(false);
        // Each kind relists on its own watcher's backoff: the Service may go after the
        // endpoint moved.
        let seen = wait_for(
            Duration::from_secs(40),
            "the changes made while down (an endpoint moved, a Service deleted)",
            || {
                let gone = s.c.tcp1(At::Pod("probe"), "10.96.0.11:80")?.is_err();
                Ok((s.only(to)? && gone).then(Instant::now))
            },
        )?;
        // A relist costs what the start cost: one list per watcher (nodes have two: the
        // source's and the LoadBalancer membership's), never a storm. Watchers back off
        // (kube's 0.8 s doubling to 30 s, as client-go), so the last may relist late.
        let relisted = wait_for(Duration::from_secs(40), "every watcher relisted", || {
            let lists = lists_by_path(&s.requests_since(up_at));
            let all = SOURCE_KINDS
                .iter()
                .all(|p| count(&lists, p) >= count(&at_start, p));
            Ok(all.then(Instant::now))
        })?;
        std::thread::sleep(Duration::from_secs(1));
        let lists = lists_by_path(&s.requests_since(up_at));
        eprintln!(
            "410 ({style:?}): change programmed {:?}, every watcher relisted {:?} after the \
             return; lists: {lists:?}",
            seen.duration_since(up_at),
            relisted.duration_since(up_at)
        );
        for (path, n) in &lists {
            let want = count(&at_start, path);
            ensure!(*n <= want, "{path}: {n} lists after 410, {want} at start");
        }
    }
    Ok(())
}

/// A watch stream that ends in the middle of an event: the agent resumes from the last event
/// it read whole, so the cut event arrives again, with no relist.
#[test]
fn truncated_watch_stream_loses_no_event() -> Result<()> {
    if !require_root("truncated_watch_stream_loses_no_event") {
        return Ok(());
    }
    let mut s = Setup::new()?;
    s.start(Mode::Nftables)?;
    wait_until(Duration::from_secs(5), "web-1 served", || s.only(&s.w1))?;
    let cut_at = Instant::now();
    s.fake.truncate_watch_frames(1);
    s.fake.apply(slice(&s.w2));
    let seen = wait_for(Duration::from_secs(30), "the event that was cut", || {
        Ok(s.only(&s.w2)?.then(Instant::now))
    })?;
    let requests = s.requests_since(cut_at);
    let rewatch = requests
        .iter()
        .filter(|r| r.path == SOURCE_KINDS[1] && is_watch(r))
        .count();
    let lists = lists_by_path(&requests);
    eprintln!(
        "truncated watch: event programmed {:?} after the cut; {rewatch} new slice watch(es); \
         lists: {lists:?}",
        seen.duration_since(cut_at)
    );
    ensure!(rewatch >= 1, "the slice watch was restarted");
    ensure!(lists.is_empty(), "resumed, not relisted: {lists:?}");
    Ok(())
}

/// Every read answered 3 s late: the agent reports unhealthy until its first sync (as
/// kube-proxy), then serves; once the (equally slow) watch is open a change reaches the
/// datapath through it at once, and
/// through a re-established (slow) watch after the delay.
#[test]
fn slow_api_server_delays_but_breaks_nothing() -> Result<()> {
    if !require_root("slow_api_server_delays_but_breaks_nothing") {
        return Ok(());
    }
    let delay = Duration::from_secs(3);
    let mut s = Setup::new()?;
    s.fake.delay_requests("GET", "/", delay);
    let started = Instant::now();
    let args: Vec<String> = s.agent_args().iter().map(|a| a.to_string()).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    s.c.spawn_agent("node-a", Mode::Nftables, &args)?;
    std::thread::sleep(Duration::from_millis(1500));
    let (early, _) = s.healthz()?;
    ensure!(early == 503, "healthz before the first sync: {early}");
    wait_until(Duration::from_secs(30), "healthz 200", || {
        Ok(s.healthz()?.0 == 200)
    })?;
    let ready = started.elapsed();
    ensure!(s.only(&s.w1)?, "web-1 served");
    // The watches are opened after the lists, and each is answered `delay` late too.
    let slice_watch = wait_for(Duration::from_secs(10), "the slice watch", || {
        Ok(first_watch(&s.fake.requests(), SOURCE_KINDS[1]))
    })?;
    std::thread::sleep(
        (slice_watch + delay + Duration::from_millis(300))
            .saturating_duration_since(Instant::now()),
    );

    let applied = Instant::now();
    s.fake.apply(slice(&s.w2));
    let live = wait_for(
        Duration::from_secs(10),
        "a change through the open watch",
        || Ok(s.only(&s.w2)?.then(|| applied.elapsed())),
    )?;
    s.fake.drop_watches();
    s.fake.apply(slice(&s.w1));
    let applied = Instant::now();
    let mut served_meanwhile = 0;
    let rewatched = wait_for(
        Duration::from_secs(30),
        "a change through a slow new watch",
        || {
            let pods = s.cluster_ip_pods()?;
            ensure!(
                pods.values().sum::<usize>() == 4,
                "ClusterIP kept serving: {pods:?}"
            );
            served_meanwhile += 1;
            Ok((pods == [(s.w1.name.clone(), 4)].into()).then(|| applied.elapsed()))
        },
    )?;
    eprintln!(
        "slow API server ({delay:?} per read): healthy after {ready:?}; change via the open \
         watch in {live:?}, via a new watch in {rewatched:?} ({served_meanwhile} probes served \
         meanwhile)"
    );
    ensure!(live < Duration::from_secs(1), "open watch: {live:?}");
    ensure!(
        rewatched >= delay,
        "the new watch was delayed: {rewatched:?}"
    );
    Ok(())
}

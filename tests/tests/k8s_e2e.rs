//! The agent with `--source k8s` against a fake API server (the one crates/k8s tests use),
//! served inside node-a's network namespace: objects arriving over list/watch become real
//! forwarding; the elected agent writes the Ingress status (within a second, retried, cleared
//! when an Ingress leaves our class, handed over when it stops) and reports Events. Needs
//! root and the binaries.

#[path = "../../crates/k8s/tests/fake_apiserver/mod.rs"]
mod fake_apiserver;

use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use fake_apiserver::FakeApiServer;
use serde_json::json;
use sluice_tests::manifests::{
    EndpointSlice, Family, IngressPath, Port, Service, ingress, ingress_class,
};
use sluice_tests::{At, Cluster, Mode, Pod, require_root, tally, wait_until};

/// A listener on 127.0.0.1 inside the given network namespace (bound from a thread that
/// entered it; the socket stays in that namespace).
fn listener_in(netns: &str) -> Result<std::net::TcpListener> {
    listener_on(netns, "127.0.0.1:0")
}

/// A listener on `addr` inside the given network namespace.
fn listener_on(netns: &str, addr: &str) -> Result<std::net::TcpListener> {
    let addr = addr.to_owned();
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || -> Result<std::net::TcpListener> {
        let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns on this thread only, with a valid namespace fd.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns");
        }
        let listener = std::net::TcpListener::bind(&addr)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("listener thread panicked"))?
}

fn slice(pods: &[&Pod]) -> serde_json::Value {
    EndpointSlice::new("default", "web-v4", "web", Family::V4)
        .port("tcp", "TCP", 8080)
        .port("http", "TCP", 8081)
        .pods(pods.iter().copied())
        .to_json()
}

#[test]
fn api_server_objects_become_forwarding_and_ingress_status() -> Result<()> {
    if !require_root("api_server_objects_become_forwarding_and_ingress_status") {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut c = Cluster::new(&["node-a"])?;
    let w1 = c.add_pod("node-a", "web-1")?;
    let w2 = c.add_pod("node-a", "web-2")?;
    c.add_pod("node-a", "probe")?;
    let node_a = c.node("node-a")?.clone();

    let listener = listener_in(&node_a.netns)?;
    let fake = {
        let _guard = runtime.enter();
        FakeApiServer::start_on(tokio::net::TcpListener::from_std(listener)?)
    };
    let svc = Service::new("default", "web")
        .cluster_ips(&["10.96.0.10"])
        .port(Port::tcp(80, 8080).named("tcp"))
        .port(Port::tcp(81, 8081).named("http"));
    fake.apply(svc.to_json());
    fake.apply(slice(&[&w1]));
    fake.apply(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-a"},
        "status": {"addresses": [{"type": "InternalIP", "address": node_a.ipv4.to_string()}]},
    }));
    fake.apply(ingress_class("sluice", "sluice.dev/ingress", true));
    let path = IngressPath {
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
        &[path],
        &[],
        None,
    ));
    fake.apply(ingress(
        "default",
        "other-class",
        Some("nginx"),
        &[],
        &[],
        Some(("web", 81)),
    ));

    let kubeconfig = c.workdir().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\ncurrent-context: fake\n\
             users: [{{name: fake, user: {{}}}}]\n",
            fake.url()
        ),
    )?;
    let kubeconfig = kubeconfig.display().to_string();
    c.start_agent(
        "node-a",
        Mode::Nftables,
        &["--source", "k8s", "--kubeconfig", &kubeconfig],
    )?;

    // Listed objects are programmed...
    let r = c.tcp(At::Pod("probe"), "10.96.0.10:80", 5)?;
    ensure!(
        tally(&r) == [("web-1".to_string(), 5)].into(),
        "{:?}",
        tally(&r)
    );
    // ...and so is a watched change.
    fake.apply(slice(&[&w2]));
    wait_until(
        Duration::from_secs(5),
        "the watched EndpointSlice change",
        || {
            Ok(tally(&c.tcp(At::Pod("probe"), "10.96.0.10:80", 3)?)
                == [("web-2".to_string(), 3)].into())
        },
    )?;
    // The Ingress of our class is served and gets the node's address as its status; the other
    // class is left alone.
    let reply = c.http(
        At::Client,
        "http://web.example.com/",
        &["--resolve", &format!("web.example.com:80:{}", node_a.ipv4)],
    )?;
    ensure!(
        reply.status == 200 && reply.field("pod") == Some("web-2"),
        "ingress: {} {:?}",
        reply.status,
        reply.field("pod")
    );
    wait_until(Duration::from_secs(5), "Ingress status written", || {
        let status = fake
            .object("Ingress", "default", "web")
            .and_then(|o| o.pointer("/status/loadBalancer/ingress").cloned());
        Ok(status == Some(json!([{"ip": node_a.ipv4.to_string()}])))
    })?;
    let other = fake
        .object("Ingress", "default", "other-class")
        .context("other ingress")?;
    ensure!(
        other.pointer("/status/loadBalancer/ingress").is_none(),
        "other class untouched: {other}"
    );
    drop(c);
    drop(fake);
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Lease timings short enough for tests (2 s lease, renewed every 300 ms).
const FAST_LEASE: &[&str] = &[
    "--leader-elect-lease-duration",
    "2s",
    "--leader-elect-renew-deadline",
    "1500ms",
    "--leader-elect-retry-period",
    "300ms",
];

/// The fake API server on node-a's underlay address (reachable from every node), with
/// the Node objects, the IngressClass and Service `web` (one endpoint, web-1).
struct ApiCluster {
    runtime: tokio::runtime::Runtime,
    c: Cluster,
    fake: FakeApiServer,
    kubeconfig: String,
}

impl ApiCluster {
    fn new(nodes: &[&str]) -> Result<ApiCluster> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let mut c = Cluster::new(nodes)?;
        let w1 = c.add_pod(nodes[0], "web-1")?;
        let node_a = c.node(nodes[0])?.clone();
        let listener = listener_on(&node_a.netns, &format!("{}:0", node_a.ipv4))?;
        let fake = {
            let _guard = runtime.enter();
            FakeApiServer::start_on(tokio::net::TcpListener::from_std(listener)?)
        };
        for n in c.nodes() {
            fake.apply(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": n.name},
                "status": {"addresses": [{"type": "InternalIP", "address": n.ipv4.to_string()}]},
            }));
        }
        fake.apply(ingress_class("sluice", "sluice.dev/ingress", true));
        let svc = Service::new("default", "web")
            .cluster_ips(&["10.96.0.10"])
            .port(Port::tcp(80, 8081).named("http"));
        fake.apply(svc.to_json());
        fake.apply(
            EndpointSlice::new("default", "web-v4", "web", Family::V4)
                .port("http", "TCP", 8081)
                .pods([&w1])
                .to_json(),
        );
        let kubeconfig = c.workdir().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\n\
                 contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\ncurrent-context: fake\n\
                 users: [{{name: fake, user: {{}}}}]\n",
                fake.url()
            ),
        )?;
        let kubeconfig = kubeconfig.display().to_string();
        Ok(ApiCluster {
            runtime,
            c,
            fake,
            kubeconfig,
        })
    }

    fn start_agent(&mut self, node: &str) -> Result<()> {
        let mut args = vec!["--source", "k8s", "--kubeconfig", &self.kubeconfig];
        args.extend_from_slice(FAST_LEASE);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.c.start_agent(node, Mode::Nftables, &args)
    }

    fn holder(&self) -> Option<String> {
        let lease = self.fake.object("Lease", "kube-system", "sluice-leader")?;
        lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
    }

    fn wait_holder(&self, node: &str, within: Duration) -> Result<()> {
        wait_until(within, &format!("{node} elected"), || {
            Ok(self.holder().as_deref() == Some(node))
        })
    }

    fn status_ips(&self, name: &str) -> Option<Vec<String>> {
        let ingress = self.fake.object("Ingress", "default", name)?;
        let entries = ingress
            .pointer("/status/loadBalancer/ingress")?
            .as_array()?
            .clone();
        Some(
            entries
                .iter()
                .filter_map(|e| e["ip"].as_str().map(str::to_owned))
                .collect(),
        )
    }

    fn ip(&self, node: &str) -> Result<String> {
        Ok(self.c.node(node)?.ipv4.to_string())
    }

    /// Status PATCHes of one Ingress so far.
    fn status_patches(&self, name: &str) -> Vec<std::time::Instant> {
        let path = format!("/apis/networking.k8s.io/v1/namespaces/default/ingresses/{name}/status");
        self.fake
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH" && r.path == path)
            .map(|r| r.at)
            .collect()
    }

    fn shutdown(self) {
        drop(self.c);
        drop(self.fake);
        self.runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

fn web_ingress(name: &str, class: &str) -> serde_json::Value {
    let path = IngressPath {
        host: Some(format!("{name}.example.com")),
        path: "/".into(),
        path_type: "Prefix".into(),
        service: "web".into(),
        port: 80,
    };
    ingress("default", name, Some(class), &[path], &[], None)
}

#[test]
fn elected_agent_writes_ingress_status_within_a_second_retries_and_clears() -> Result<()> {
    if !require_root("elected_agent_writes_ingress_status_within_a_second_retries_and_clears") {
        return Ok(());
    }
    let mut api = ApiCluster::new(&["node-a"])?;
    api.start_agent("node-a")?;
    api.wait_holder("node-a", Duration::from_secs(5))?;
    let ip = api.ip("node-a")?;

    // A new Ingress of our class: status within a second of its creation.
    let created = std::time::Instant::now();
    api.fake.apply(web_ingress("shop", "sluice"));
    wait_until(Duration::from_secs(5), "status of shop", || {
        Ok(api.status_ips("shop") == Some(vec![ip.clone()]))
    })?;
    let first = *api.status_patches("shop").first().context("a PATCH")?;
    let took = first.duration_since(created);
    eprintln!("Ingress status PATCHed {took:?} after the Ingress was created");
    ensure!(took < Duration::from_secs(1), "status took {took:?}");

    // The API server fails the first two writes: retried (0.5 s, then 1 s) until written.
    api.fake
        .fail_requests("PATCH", "/ingresses/retried/status", 2, 500);
    api.fake.apply(web_ingress("retried", "sluice"));
    wait_until(Duration::from_secs(8), "status of retried", || {
        Ok(api.status_ips("retried") == Some(vec![ip.clone()]))
    })?;
    let patches = api.status_patches("retried");
    ensure!(
        patches.len() == 3,
        "two failed writes and one accepted: {}",
        patches.len()
    );
    let gap = patches[2].duration_since(patches[1]);
    ensure!(
        gap >= Duration::from_millis(800),
        "backoff doubled: {gap:?}"
    );

    // shop moves to another class: our address is removed from its status within a second.
    let mut moved = api
        .fake
        .object("Ingress", "default", "shop")
        .context("shop")?;
    moved["spec"]["ingressClassName"] = json!("nginx");
    let changed = std::time::Instant::now();
    api.fake.apply(moved);
    wait_until(Duration::from_secs(1), "shop's status cleared", || {
        Ok(api.status_ips("shop").is_none_or(|ips| ips.is_empty()))
    })?;
    eprintln!(
        "status cleared {:?} after the class change",
        changed.elapsed()
    );
    ensure!(
        api.status_ips("retried") == Some(vec![ip]),
        "the other Ingress keeps its status"
    );
    api.shutdown();
    Ok(())
}

/// Events created so far with this reason.
fn events(fake: &FakeApiServer, reason: &str) -> Vec<serde_json::Value> {
    fake.objects("Event", None)
        .into_iter()
        .filter(|e| e["reason"] == reason)
        .collect()
}

#[test]
fn leadership_moves_between_agents_and_only_the_elected_one_writes() -> Result<()> {
    if !require_root("leadership_moves_between_agents_and_only_the_elected_one_writes") {
        return Ok(());
    }
    let mut api = ApiCluster::new(&["node-a", "node-b"])?;
    let (ip_a, ip_b) = (api.ip("node-a")?, api.ip("node-b")?);
    api.start_agent("node-a")?;
    api.wait_holder("node-a", Duration::from_secs(5))?;
    api.start_agent("node-b")?;
    api.fake.apply(web_ingress("shop", "sluice"));
    wait_until(Duration::from_secs(5), "status by node-a", || {
        Ok(api.status_ips("shop") == Some(vec![ip_a.clone()]))
    })?;

    // A cluster-wide problem (two Services claiming one externalIP and port) is reported once,
    // by the elected agent, on the Service that loses.
    for name in ["aaa-first", "zzz-second"] {
        let svc = Service::new("default", name)
            .cluster_ips(&[if name == "aaa-first" {
                "10.96.0.20"
            } else {
                "10.96.0.21"
            }])
            .port(Port::tcp(80, 8081).named("http"))
            .external_ips(&["203.0.113.9"]);
        api.fake.apply(svc.to_json());
    }
    wait_until(Duration::from_secs(5), "a FrontendConflict Event", || {
        Ok(!events(&api.fake, "FrontendConflict").is_empty())
    })?;
    std::thread::sleep(Duration::from_millis(1500));
    let conflicts = events(&api.fake, "FrontendConflict");
    ensure!(
        conflicts.len() == 1,
        "one Event, not one per agent: {conflicts:#?}"
    );
    ensure!(
        conflicts[0]["regarding"]["name"] == "zzz-second",
        "{:#}",
        conflicts[0]
    );
    ensure!(
        conflicts[0]["reportingInstance"] == "node-a",
        "{:#}",
        conflicts[0]
    );
    ensure!(conflicts[0]["type"] == "Warning", "{:#}", conflicts[0]);

    // An ingress-nginx snippet is never executed: one Event on the Ingress names it.
    let mut snippet = web_ingress("snippet", "sluice");
    snippet["metadata"]["annotations"] = serde_json::json!({
        "nginx.ingress.kubernetes.io/server-snippet": "location /admin { return 200; }"
    });
    api.fake.apply(snippet);
    wait_until(
        Duration::from_secs(5),
        "an UnsupportedAnnotation Event",
        || Ok(!events(&api.fake, "UnsupportedAnnotation").is_empty()),
    )?;
    std::thread::sleep(Duration::from_millis(1500));
    let unsupported = events(&api.fake, "UnsupportedAnnotation");
    ensure!(unsupported.len() == 1, "{unsupported:#?}");
    let event = &unsupported[0];
    ensure!(
        event["regarding"]["kind"] == "Ingress" && event["regarding"]["name"] == "snippet",
        "{event:#}"
    );
    ensure!(
        event["note"]
            .as_str()
            .is_some_and(|n| n.contains("nginx.ingress.kubernetes.io/server-snippet")),
        "{event:#}"
    );

    // node-a stops cleanly: it releases the Lease, node-b takes over at its next attempt
    // (not after the 2 s lease) and writes its own address.
    let stopped = std::time::Instant::now();
    api.c.stop_agent("node-a")?;
    wait_until(Duration::from_secs(5), "status by node-b", || {
        Ok(api.status_ips("shop") == Some(vec![ip_b.clone()]))
    })?;
    let handover = stopped.elapsed();
    eprintln!("node-b wrote the status {handover:?} after node-a was stopped");
    ensure!(
        api.holder().as_deref() == Some("node-b"),
        "holder {:?}",
        api.holder()
    );
    ensure!(
        handover < Duration::from_millis(1800),
        "released, not expired: {handover:?}"
    );
    ensure!(
        api.c.agent_log("node-a").contains("lease released"),
        "node-a logs the release"
    );

    // node-a comes back as a follower: a new Ingress gets node-b's address, never node-a's.
    api.start_agent("node-a")?;
    api.fake.apply(web_ingress("second", "sluice"));
    wait_until(Duration::from_secs(5), "status of second", || {
        Ok(api.status_ips("second").is_some_and(|ips| !ips.is_empty()))
    })?;
    std::thread::sleep(Duration::from_millis(1000));
    ensure!(
        api.status_ips("second") == Some(vec![ip_b.clone()]),
        "{:?}",
        api.status_ips("second")
    );
    ensure!(
        api.status_ips("shop") == Some(vec![ip_b]),
        "{:?}",
        api.status_ips("shop")
    );

    // node-b dies without releasing: node-a takes over once the 2 s lease expired.
    let killed = std::time::Instant::now();
    api.c.kill_agent("node-b")?;
    wait_until(Duration::from_secs(8), "status by node-a again", || {
        Ok(api.status_ips("shop") == Some(vec![ip_a.clone()]))
    })?;
    let takeover = killed.elapsed();
    eprintln!("node-a took over {takeover:?} after node-b was killed (2 s lease)");
    ensure!(
        takeover >= Duration::from_millis(1500),
        "waited for the lease: {takeover:?}"
    );
    api.shutdown();
    Ok(())
}

//! The agent with `--source k8s` against a fake API server (the one crates/k8s tests use),
//! served inside node-a's network namespace: objects arriving over list/watch become real
//! forwarding, and the agent writes the Ingress status. Needs root and the binaries.

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
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || -> Result<std::net::TcpListener> {
        let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns on this thread only, with a valid namespace fd.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns");
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
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

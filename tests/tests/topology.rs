//! The test cluster itself: addressing, routing and teardown, without any agent.
//! Needs root; skipped (with a message) otherwise. Build the echo binary first:
//! `cargo build -p sluice-echo`.

use std::net::SocketAddr;

use sluice_tests::{
    At, CLIENT_V4, CLIENT_V6, Cluster, Mode, ProbeError, cgroup2_root, require_root, tally,
};

#[test]
fn pod_to_pod_across_nodes_sees_real_pod_ip_v4_and_v6() -> anyhow::Result<()> {
    if !require_root("pod_to_pod_across_nodes_sees_real_pod_ip_v4_and_v6") {
        return Ok(());
    }
    let mut c = Cluster::new(&["node-a", "node-b"])?;
    let a = c.add_pod("node-a", "client-pod")?;
    let b = c.add_pod("node-b", "web-1")?;
    assert_eq!(a.ipv4.to_string(), "10.244.1.2");
    assert_eq!(b.ipv6.to_string(), "fd00:10:244:2::2");

    for (target, source) in [
        (b.v4(8080), SocketAddr::from((a.ipv4, 0))),
        (b.v6(8080), SocketAddr::from((a.ipv6, 0))),
    ] {
        for results in [
            c.tcp(At::Pod("client-pod"), target, 3)?,
            c.udp(At::Pod("client-pod"), target, 3)?,
        ] {
            assert_eq!(tally(&results), [("web-1".to_string(), 3)].into());
            for r in &results {
                let reply = r.as_ref().expect("checked by tally");
                assert_eq!(reply.client.ip(), source.ip(), "no NAT between pods");
            }
        }
    }
    // HTTP on the echo pod, v6 literal.
    let resp = c.http(
        At::Pod("client-pod"),
        &format!("http://{}/hello", b.v6(8081)),
        &[],
    )?;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-pod"), Some("web-1"));
    assert_eq!(resp.field("path"), Some("/hello"));
    assert!(
        resp.field("client")
            .is_some_and(|c| c.starts_with("[fd00:10:244:1::2]:"))
    );
    Ok(())
}

#[test]
fn client_reaches_nodes_but_not_pods() -> anyhow::Result<()> {
    if !require_root("client_reaches_nodes_but_not_pods") {
        return Ok(());
    }
    let mut c = Cluster::new(&["node-a", "node-b"])?;
    let web = c.add_pod("node-a", "web-1")?;
    let node_b = c.node("node-b")?.clone();

    // Node ports with nothing listening: refused, which proves the underlay path works.
    assert_eq!(c.tcp1(At::Client, node_b.v4(9))?, Err(ProbeError::Refused));
    assert_eq!(c.tcp1(At::Client, node_b.v6(9))?, Err(ProbeError::Refused));
    // A listener on the node (host network) sees the real client address.
    let out = c.exec(
        At::Node("node-b"),
        &["ip", "-o", "addr", "show", "dev", "eth0"],
    )?;
    let addrs = String::from_utf8_lossy(&out.stdout);
    assert!(
        addrs.contains("192.0.2.12/24") && addrs.contains("2001:db8::12/64"),
        "{addrs}"
    );

    // Nodes default-route to the client, which does not forward: unknown addresses time out.
    let opts = sluice_tests::ProbeOpts {
        timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    };
    for addr in ["198.51.100.1:80", "[2001:db8:ffff::1]:80"] {
        let r = c.probe(At::Node("node-a"), sluice_tests::Proto::Tcp, addr, &opts)?;
        assert_eq!(r, vec![Err(ProbeError::Timeout)], "{addr}");
    }
    // The client has no route to pod CIDRs.
    assert_eq!(
        c.tcp1(At::Client, web.v4(8080))?,
        Err(ProbeError::Unreachable)
    );
    // Until it is given one via a node: then the pod sees the client's real address.
    c.client_route("10.244.0.0/16", "node-a")?;
    c.client_route("fd00:10:244::/48", "node-a")?;
    let r4 = c
        .tcp1(At::Client, web.v4(8080))?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(
        (r4.pod.as_str(), r4.client.ip()),
        ("web-1", CLIENT_V4.into())
    );
    let r6 = c
        .udp1(At::Client, web.v6(8080))?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(
        (r6.pod.as_str(), r6.client.ip()),
        ("web-1", CLIENT_V6.into())
    );
    Ok(())
}

#[test]
fn node_side_probe_uses_node_address_and_held_connection_survives() -> anyhow::Result<()> {
    if !require_root("node_side_probe_uses_node_address_and_held_connection_survives") {
        return Ok(());
    }
    let mut c = Cluster::new(&["node-a", "node-b"])?;
    let web = c.add_pod("node-b", "web-1")?;
    // From node-a to a pod on node-b: routed over the underlay, source is node-a's eth0.
    let r = c
        .tcp1(At::Node("node-a"), web.v4(8080))?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(r.client.ip().to_string(), "192.0.2.11");

    let mut held = c.hold_tcp(At::Node("node-a"), web.v6(8080))?;
    assert_eq!(held.greeting().pod, "web-1");
    assert_eq!(held.send("one")?, Ok("web-1: one".to_string()));
    // Another pod appears meanwhile; the held connection is unaffected.
    c.add_pod("node-b", "web-2")?;
    assert_eq!(held.send("two")?, Ok("web-1: two".to_string()));
    // The pod goes away: the next line fails instead of hanging.
    c.remove_pod("web-1")?;
    assert!(held.send("three")?.is_err());
    Ok(())
}

#[test]
fn stopped_pod_refuses_and_restarts() -> anyhow::Result<()> {
    if !require_root("stopped_pod_refuses_and_restarts") {
        return Ok(());
    }
    let mut c = Cluster::new(&["node-a"])?;
    let web = c.add_pod("node-a", "web-1")?;
    c.add_pod("node-a", "other")?;
    c.stop_pod("web-1")?;
    assert_eq!(
        c.tcp1(At::Pod("other"), web.v4(8080))?,
        Err(ProbeError::Refused)
    );
    assert_eq!(
        c.udp1(At::Pod("other"), web.v4(8080))?,
        Err(ProbeError::Refused)
    );
    c.start_pod("web-1")?;
    assert!(c.tcp1(At::Pod("other"), web.v4(8080))?.is_ok());
    Ok(())
}

#[test]
fn processes_join_their_node_cgroup() -> anyhow::Result<()> {
    if !require_root("processes_join_their_node_cgroup") {
        return Ok(());
    }
    let mut c = Cluster::new(&["node-a", "node-b"])?;
    c.add_pod("node-b", "web-1")?;
    let node_b = c.node("node-b")?.clone();
    let rel = node_b
        .cgroup
        .strip_prefix(cgroup2_root()?)?
        .display()
        .to_string();
    for at in [At::Pod("web-1"), At::Node("node-b")] {
        let out = c.exec(at, &["cat", "/proc/self/cgroup"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines().any(|l| l == format!("0::/{rel}")),
            "{at:?}: {text}"
        );
    }
    let out = c.exec(At::Client, &["cat", "/proc/self/cgroup"])?;
    assert!(!String::from_utf8_lossy(&out.stdout).contains(c.prefix()));
    // The echo pod process itself is in the cgroup.
    let procs = std::fs::read_to_string(node_b.cgroup.join("cgroup.procs"))?;
    assert!(!procs.trim().is_empty());
    assert!(node_b.bpffs.is_dir());
    Ok(())
}

#[test]
fn teardown_leaves_nothing_behind_also_on_panic() -> anyhow::Result<()> {
    if !require_root("teardown_leaves_nothing_behind_also_on_panic") {
        return Ok(());
    }
    let leftovers = |prefix: &str| -> anyhow::Result<Vec<String>> {
        let mut found = Vec::new();
        for dir in [
            std::path::PathBuf::from("/run/netns"),
            cgroup2_root()?,
            "/sys/fs/bpf".into(),
        ] {
            for e in std::fs::read_dir(&dir)? {
                let name = e?.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{prefix}-")) || name == prefix {
                    found.push(format!("{}/{name}", dir.display()));
                }
            }
        }
        Ok(found)
    };

    let prefix = {
        let mut c = Cluster::new(&["node-a", "node-b"])?;
        c.add_pod("node-a", "web-1")?;
        c.add_pod("node-b", "web-2")?;
        let p = c.prefix().to_owned();
        // lan, client, 2 nodes, 2 pods; 2 cgroups; 2 bpffs dirs.
        assert_eq!(leftovers(&p)?.len(), 10, "{:?}", leftovers(&p)?);
        assert!(c.workdir().is_dir());
        p
    };
    assert_eq!(leftovers(&prefix)?, Vec::<String>::new());
    assert!(!std::env::temp_dir().join(&prefix).exists());

    // Same when the test owning the cluster panics.
    let (tx, rx) = std::sync::mpsc::channel();
    let joined = std::thread::spawn(move || {
        let mut c = Cluster::new(&["node-a"]).expect("cluster");
        c.add_pod("node-a", "web-1").expect("pod");
        tx.send(c.prefix().to_owned()).expect("send");
        panic!("deliberate panic to test teardown");
    })
    .join();
    assert!(joined.is_err());
    let prefix = rx.recv()?;
    assert_eq!(leftovers(&prefix)?, Vec::<String>::new());
    // Logs are kept for the failed test to look at (the next run's sweep removes them).
    let workdir = std::env::temp_dir().join(&prefix);
    assert!(workdir.join("logs/pod-web-1.log").is_file());
    std::fs::remove_dir_all(workdir)?;
    Ok(())
}

/// Writes an executable stand-in for the agent: logs its arguments, then runs `body`.
fn fake_agent(dir: &std::path::Path, body: &str) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-sluice");
    std::fs::write(&path, format!("#!/bin/sh\necho \"args: $*\"\n{body}\n"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

#[test]
fn agent_lifecycle_with_a_stand_in_agent() -> anyhow::Result<()> {
    if !require_root("agent_lifecycle_with_a_stand_in_agent") {
        return Ok(());
    }
    let mut c = Cluster::new(&["node-a", "node-b"])?;
    // The echo server answers 200 on every path, so it passes for a healthy agent.
    let echo = sluice_tests::bins::echo()?;
    let fake = fake_agent(
        c.workdir(),
        &format!(
            "exec {} serve --name fake-agent --http {} --http {}",
            echo.display(),
            sluice_tests::AGENT_HEALTHZ,
            sluice_tests::AGENT_METRICS,
        ),
    )?;
    c.set_agent_binary(&fake);
    c.start_agent("node-b", Mode::Nftables, &["--min-sync-period", "1s"])?;
    assert!(c.agent_running("node-b"));
    let log = c.agent_log("node-b");
    let args = log
        .lines()
        .find(|l| l.starts_with("args: "))
        .unwrap_or_default();
    let node_b = c.node("node-b")?.clone();
    for expected in [
        format!("agent --source dir:{}", c.manifest_dir().display()),
        "--proxy-mode nftables".into(),
        "--hostname-override node-b".into(),
        format!("--cluster-cidr {}", sluice_tests::CLUSTER_CIDRS),
        format!("--bpffs-path {}", node_b.bpffs.display()),
        format!("--cgroup-path {}", node_b.cgroup.display()),
        "--min-sync-period 1s".into(),
    ] {
        assert!(args.contains(&expected), "{expected:?} not in {args:?}");
    }
    assert!(
        !args.contains("0s"),
        "the default must give way to the extra flag: {args}"
    );
    assert_eq!(c.agent_healthz("node-b")?, 200);
    assert!(c.agent_metrics("node-b")?.contains("pod=fake-agent"));
    // The agent's healthz lives on node-b's loopback only.
    let on_a = c.curl(At::Node("node-a"), &["http://127.0.0.1:10256/healthz"])?;
    assert!(!on_a.status.success());

    let status = c.stop_agent("node-b")?;
    assert!(!status.success(), "killed by SIGTERM: {status}");
    assert!(!c.agent_running("node-b"));

    c.start_agent("node-b", Mode::Ebpf, &[])?;
    c.kill_agent("node-b")?;
    assert!(!c.agent_running("node-b"));
    assert_eq!(c.agent_log("node-b").matches("args: ").count(), 2);
    Ok(())
}

#[test]
fn failing_agent_start_reports_its_log() -> anyhow::Result<()> {
    if !require_root("failing_agent_start_reports_its_log") {
        return Ok(());
    }
    let mut c = Cluster::new(&["node-a"])?;
    let fake = fake_agent(c.workdir(), "echo 'boom: bad flag' >&2; exit 3")?;
    c.set_agent_binary(&fake);
    let err = c
        .start_agent("node-a", Mode::Nftables, &[])
        .expect_err("agent exits at once");
    let text = format!("{err:#}");
    assert!(text.contains("boom: bad flag"), "{text}");
    Ok(())
}

#[test]
fn sweep_removes_leftovers_of_dead_runs_only() -> anyhow::Result<()> {
    if !require_root("sweep_removes_leftovers_of_dead_runs_only") {
        return Ok(());
    }
    let live = Cluster::new(&["node-a"])?;
    // A pid that existed and is gone now.
    let mut child = std::process::Command::new("true").spawn()?;
    let dead = child.id();
    child.wait()?;
    let stale = format!("sl{dead}x0");
    let ns = format!("{stale}-lan");
    let status = std::process::Command::new("ip")
        .args(["netns", "add", &ns])
        .status()?;
    assert!(status.success());
    let cgroup = cgroup2_root()?.join(format!("{stale}-node-a"));
    std::fs::create_dir(&cgroup)?;
    let bpffs = std::path::Path::new("/sys/fs/bpf").join(format!("{stale}-node-a"));
    std::fs::create_dir(&bpffs)?;

    sluice_tests::sweep()?;

    assert!(!std::path::Path::new("/run/netns").join(&ns).exists());
    assert!(!cgroup.exists());
    assert!(!bpffs.exists());
    // The live cluster of this process is untouched.
    for n in live.namespaces() {
        assert!(std::path::Path::new("/run/netns").join(n).exists(), "{n}");
    }
    assert!(live.node("node-a")?.cgroup.exists());
    Ok(())
}

#[test]
fn write_service_puts_service_and_slices_in_the_manifest_dir() -> anyhow::Result<()> {
    if !require_root("write_service_puts_service_and_slices_in_the_manifest_dir") {
        return Ok(());
    }
    use sluice_tests::manifests::{Port, Service};
    let mut c = Cluster::new(&["node-a"])?;
    let web = c.add_pod("node-a", "web-1")?;
    let svc = Service::new("default", "web")
        .cluster_ips(&["10.96.0.10", "fd00:10:96::10"])
        .port(Port::tcp(80, 8080));
    c.write_service(&svc, &[("", "TCP", 8080)], &[&web])?;
    let c2 = c.add_pod("node-a", "web-2")?;
    c.write_service(&svc, &[("", "TCP", 8080)], &[&web, &c2])?;

    let names: Vec<String> = std::fs::read_dir(c.manifest_dir())?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<anyhow::Result<_>>()?;
    let mut names = names;
    names.sort();
    assert_eq!(
        names,
        ["default-web.yaml", "nodes.yaml"],
        "no temp files left"
    );
    let text = std::fs::read_to_string(c.manifest_dir().join("default-web.yaml"))?;
    let parsed = sluice_source_file::parse_manifests("default-web.yaml", &text);
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    assert_eq!(parsed.services.len(), 1);
    let endpoints: usize = parsed
        .endpoint_slices
        .iter()
        .map(|(_, s)| s.endpoints.as_ref().map_or(0, Vec::len))
        .sum();
    assert_eq!(endpoints, 4, "two pods, two families");
    let nodes = std::fs::read_to_string(c.manifest_dir().join("nodes.yaml"))?;
    assert_eq!(
        sluice_source_file::parse_manifests("nodes.yaml", &nodes)
            .nodes
            .len(),
        1
    );
    Ok(())
}

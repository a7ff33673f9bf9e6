//! `cargo xtask demo`: a two-node namespaced cluster, the agent on each node, and real traffic
//! through every kind of frontend, printing which pod answered and which client IP it saw.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use sluice_tests::manifests::{self, IngressPath, Port, Service};
use sluice_tests::{At, Cluster, Mode, ProbeResults};

use crate::system;

pub fn run(args: &[String]) -> Result<()> {
    let mode = match args
        .iter()
        .position(|a| a == "--mode")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
    {
        // `auto` is the agent's default: eBPF where the kernel supports it, else nftables.
        None | Some("auto") => None,
        Some("nftables") => Some(Mode::Nftables),
        Some("ebpf") => Some(Mode::Ebpf),
        Some(other) => bail!("--mode {other}: expected auto, ebpf or nftables"),
    };
    system::ensure_packages()?;
    if !system::is_root() {
        bail!(
            "the demo builds network namespaces and programs the kernel: run it as root (sudo -E cargo xtask demo)"
        );
    }
    crate::build_binaries(false)?;
    let started = Instant::now();
    println!("\n== building a two-node cluster in network namespaces");
    let mut c = Cluster::new(&["node-a", "node-b"])?;
    let web = [
        c.add_pod("node-a", "web-1")?,
        c.add_pod("node-b", "web-2")?,
        c.add_pod("node-b", "web-3")?,
    ];
    let local = c.add_pod("node-b", "local-1")?;
    let coffee = c.add_pod("node-a", "coffee-1")?;
    let tea = c.add_pod("node-b", "tea-1")?;
    for n in c.nodes() {
        println!(
            "   {:<7} underlay {:<12} pods {}",
            n.name, n.ipv4, n.pod_cidr_v4
        );
    }
    for p in c.pods() {
        println!("   pod {:<9} on {:<7} {}", p.name, p.node, p.ipv4);
    }

    write_manifests(&c, &web, &local, &coffee, &tea)?;
    let mode_flag = mode.map_or("auto", Mode::as_str);
    println!("\n== starting `sluice agent` on each node (--proxy-mode {mode_flag})");
    for node in ["node-a", "node-b"] {
        // The harness passes --proxy-mode from its Mode; the same flag in `extra` overrides it.
        c.start_agent(
            node,
            mode.unwrap_or(Mode::Ebpf),
            &["--proxy-mode", mode_flag],
        )?;
        let log = c.agent_log(node);
        let chosen = log
            .lines()
            .find(|l| l.contains("proxy mode auto"))
            .map(|l| l.split("proxy mode").nth(1).unwrap_or("").trim().to_owned());
        println!(
            "   {node}: healthy{}",
            chosen
                .map(|c| format!(" — proxy mode {c}"))
                .unwrap_or_default()
        );
    }

    let node_a = c.node("node-a")?.clone();
    let node_b = c.node("node-b")?.clone();
    println!(
        "\n== ClusterIP (socket or nftables DNAT; masquerade only when the source is outside the pod CIDRs)"
    );
    show(
        "TCP  10.96.0.10:80 from pod web-1",
        &c.tcp(At::Pod("web-1"), "10.96.0.10:80", 9)?,
    );
    show(
        "TCP  [fd00:96::10]:80 from pod web-1",
        &c.tcp(At::Pod("web-1"), "[fd00:96::10]:80", 6)?,
    );
    show(
        "UDP  10.96.0.10:53 from pod coffee-1",
        &c.udp(At::Pod("coffee-1"), "10.96.0.10:53", 6)?,
    );
    show(
        "TCP  10.96.0.10:80 from node-a itself",
        &c.tcp(At::Node("node-a"), "10.96.0.10:80", 6)?,
    );
    show(
        "TCP  10.96.0.99:80 (no endpoints) from pod web-1",
        &c.tcp(At::Pod("web-1"), "10.96.0.99:80", 1)?,
    );

    println!("\n== NodePort 30080 (externalTrafficPolicy: Cluster) from the outside client");
    show(
        format!("TCP  {}:30080 via node-a", node_a.ipv4),
        &c.tcp(At::Client, node_a.v4(30080), 6)?,
    );
    show(
        format!("TCP  {}:30080 via node-b", node_b.ipv4),
        &c.tcp(At::Client, node_b.v4(30080), 6)?,
    );

    println!("\n== NodePort 30081 (externalTrafficPolicy: Local, endpoint only on node-b)");
    show(
        format!("TCP  {}:30081 via node-b", node_b.ipv4),
        &c.tcp(At::Client, node_b.v4(30081), 3)?,
    );
    show(
        format!("TCP  {}:30081 via node-a", node_a.ipv4),
        &c.probe(
            At::Client,
            sluice_tests::Proto::Tcp,
            node_a.v4(30081),
            &sluice_tests::ProbeOpts {
                count: 1,
                timeout: std::time::Duration::from_millis(700),
                ..Default::default()
            },
        )?,
    );

    println!(
        "\n== Ingress cafe.example.com over HTTPS (TLS with SNI, terminated in the agent on node-a)"
    );
    for path in ["/coffee", "/tea/green", "/elsewhere"] {
        let url = format!("https://cafe.example.com{path}");
        let resolve = format!("cafe.example.com:443:{}", node_a.ipv4);
        let reply = c.http(At::Client, &url, &["-k", "--resolve", &resolve])?;
        println!(
            "   GET {url:<38} → {} from pod {} (x-forwarded-for {})",
            reply.status,
            reply.field("pod").unwrap_or("?"),
            reply.field("x-forwarded-for").unwrap_or("-")
        );
    }

    show_load_balancer(&c, &node_a, &node_b)?;

    println!("\n== what node-a programmed");
    let out = c.exec(
        At::Node("node-a"),
        &["nft", "list", "map", "ip", "sluice", "service-ips"],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        // eBPF: maps and links pinned on bpffs, so forwarding survives agent restarts.
        let dir = &node_a.bpffs;
        println!("   eBPF maps and links pinned under {}:", dir.display());
        let mut names: Vec<String> = walk(dir)
            .into_iter()
            .map(|p| p.strip_prefix(dir).unwrap_or(&p).display().to_string())
            .collect();
        names.sort();
        println!("   {}", names.join("  "));
    } else {
        println!("   nftables map service-ips:");
    }
    for line in text.lines().filter(|l| l.contains(':')) {
        println!(
            "   {}",
            line.trim().trim_start_matches("elements = {").trim()
        );
    }
    println!(
        "\n== done in {:.1?}; tearing the cluster down",
        started.elapsed()
    );
    drop(c);
    Ok(())
}

fn write_manifests(
    c: &Cluster,
    web: &[sluice_tests::Pod; 3],
    local: &sluice_tests::Pod,
    coffee: &sluice_tests::Pod,
    tea: &sluice_tests::Pod,
) -> Result<()> {
    c.write_manifest("nodes.yaml", &manifests::nodes_yaml(c.nodes()))?;
    let web_svc = Service::new("demo", "web")
        .kind("NodePort")
        .cluster_ips(&["10.96.0.10", "fd00:96::10"])
        .port(Port::tcp(80, 8080).named("tcp").node_port(30080))
        .port(Port::udp(53, 8080).named("udp"));
    c.write_service(
        &web_svc,
        &[("tcp", "TCP", 8080), ("udp", "UDP", 8080)],
        &web.iter().collect::<Vec<_>>(),
    )?;
    let local_svc = Service::new("demo", "local")
        .kind("NodePort")
        .cluster_ips(&["10.96.0.11"])
        .external_traffic_policy("Local")
        .port(Port::tcp(80, 8080).named("tcp").node_port(30081));
    c.write_service(&local_svc, &[("tcp", "TCP", 8080)], &[local])?;
    let empty = Service::new("demo", "empty")
        .cluster_ips(&["10.96.0.99"])
        .port(Port::tcp(80, 8080).named("tcp"));
    c.write_service(&empty, &[("tcp", "TCP", 8080)], &[])?;
    for (name, ip, pods) in [
        ("coffee-svc", "10.96.0.20", vec![coffee]),
        ("tea-svc", "10.96.0.21", vec![tea]),
        ("web-http", "10.96.0.22", web.iter().collect()),
    ] {
        let svc = Service::new("demo", name)
            .cluster_ips(&[ip])
            .port(Port::tcp(80, 8081).named("http"));
        c.write_service(&svc, &[("http", "TCP", 8081)], &pods)?;
    }
    let (cert, key) = self_signed("cafe.example.com")?;
    let path = |p: &str, svc: &str| IngressPath {
        host: Some("cafe.example.com".into()),
        path: p.into(),
        path_type: "Prefix".into(),
        service: svc.into(),
        port: 80,
    };
    let docs = [
        manifests::ingress_class("sluice", "sluice.dev/ingress", true),
        manifests::tls_secret("demo", "cafe-secret", &cert, &key),
        manifests::ingress(
            "demo",
            "cafe",
            Some("sluice"),
            &[path("/coffee", "coffee-svc"), path("/tea", "tea-svc")],
            &[(&["cafe.example.com"], "cafe-secret")],
            Some(("web-http", 80)),
        ),
    ];
    c.write_manifest("cafe.yaml", &manifests::yaml_docs(&docs))?;
    write_load_balancer(c, web)
}

/// The LoadBalancer part: a pool of addresses on the LAN and a LoadBalancer Service without
/// an address; the agents assign one (in memory: a directory cannot be written back) and the
/// chosen node answers ARP for it.
fn write_load_balancer(c: &Cluster, web: &[sluice_tests::Pod; 3]) -> Result<()> {
    let pool = serde_json::json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "LoadBalancerIPPool",
        "metadata": {"name": "lan"},
        "spec": {"blocks": [{"cidr": LB_POOL}], "l2Announce": true},
    });
    c.write_manifest("lb-pool.yaml", &manifests::yaml_docs(&[pool]))?;
    let lb = Service::new("demo", "lb")
        .kind("LoadBalancer")
        .cluster_ips(&["10.96.0.30"])
        .port(Port::tcp(80, 8080).named("tcp"));
    c.write_service(
        &lb,
        &[("tcp", "TCP", 8080)],
        &web.iter().collect::<Vec<_>>(),
    )
}

/// The LAN addresses sluice may hand out (the client is 192.0.2.100 on the same bridge and
/// has no route for them: only ARP answers make them reachable).
const LB_POOL: &str = "192.0.2.240/29";

fn show_load_balancer(
    c: &Cluster,
    node_a: &sluice_tests::Node,
    node_b: &sluice_tests::Node,
) -> Result<()> {
    println!(
        "\n== LoadBalancer Service demo/lb: an address from pool lan ({LB_POOL}), announced by ARP"
    );
    let log = c.agent_log("node-a");
    let assigned = log
        .lines()
        .find(|l| l.contains("IPAllocated") && l.contains("demo/lb"))
        .and_then(|l| l.split("IPAllocated: ").nth(1))
        .unwrap_or("(no assignment logged)");
    println!("   agent log: Service demo/lb {assigned}");
    let ip = assigned
        .split_whitespace()
        .nth(1)
        .context("the assigned address in the agent log")?
        .to_owned();
    let series = format!("sluice_l2_announced{{ip=\"{ip}\"}} 1");
    let start = Instant::now();
    let announcer = loop {
        let mut found = None;
        for node in [node_a, node_b] {
            if c.agent_metrics(&node.name)?.lines().any(|l| l == series) {
                found = Some(node);
            }
        }
        match found {
            Some(node) => break node,
            None if start.elapsed() > std::time::Duration::from_secs(10) => {
                bail!("no node announces {ip}")
            }
            None => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    };
    println!(
        "   {} answers ARP for {ip} (metric {series})",
        announcer.name
    );
    show(
        format!("TCP  {ip}:80 from the client"),
        &c.tcp(At::Client, format!("{ip}:80"), 6)?,
    );
    let out = c.exec(At::Client, &["ip", "neigh", "show", "to", &ip])?;
    let mac = c.exec(
        At::Node(&announcer.name),
        &["ip", "-br", "link", "show", "dev", "eth0"],
    )?;
    println!(
        "   client neighbour table: {} ({}'s eth0 is {})",
        String::from_utf8_lossy(&out.stdout).trim(),
        announcer.name,
        String::from_utf8_lossy(&mac.stdout)
            .split_whitespace()
            .nth(2)
            .unwrap_or("?")
    );
    Ok(())
}

/// A throwaway self-signed certificate (openssl CLI) for the demo's HTTPS Ingress.
fn self_signed(host: &str) -> Result<(String, String)> {
    let dir = std::env::temp_dir().join(format!("sluice-demo-cert-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    crate::run(
        std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                &format!("/CN={host}"),
                "-addext",
                &format!("subjectAltName=DNS:{host}"),
                "-keyout",
                &key.display().to_string(),
                "-out",
                &cert.display().to_string(),
            ])
            .stderr(std::process::Stdio::null()),
    )
    .context("generating the demo certificate with openssl")?;
    let pair = (
        std::fs::read_to_string(&cert)?,
        std::fs::read_to_string(&key)?,
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(pair)
}

/// One line: what was asked, which pods answered how often, which client IPs they saw, and
/// how the attempts that got no answer failed.
fn show(what: impl Display, results: &ProbeResults) {
    let mut answered = std::collections::BTreeMap::<&str, usize>::new();
    let mut failed = std::collections::BTreeMap::<String, usize>::new();
    let mut clients = BTreeSet::new();
    for result in results {
        match result {
            Ok(reply) => {
                *answered.entry(reply.pod.as_str()).or_default() += 1;
                clients.insert(reply.client.ip().to_string());
            }
            Err(err) => *failed.entry(err.to_string()).or_default() += 1,
        }
    }
    let mut parts = Vec::new();
    if !answered.is_empty() {
        let pods: Vec<String> = answered
            .iter()
            .map(|(pod, n)| format!("{pod}×{n}"))
            .collect();
        let clients: Vec<String> = clients.into_iter().collect();
        parts.push(format!(
            "{} (pod saw client {})",
            pods.join(" "),
            clients.join(", ")
        ));
    }
    for (err, n) in failed {
        parts.push(format!("{err} ×{n}"));
    }
    println!("   {what:<48} → {}", parts.join("; "));
}

/// Files below `dir` (pinned maps and links), recursively.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

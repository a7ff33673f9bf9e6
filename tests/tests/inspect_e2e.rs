//! `sluice inspect` and `sluice explain` on a namespaced cluster, with the agent running (the
//! walk follows its plan and is checked against the kernel) and stopped (the walk follows the
//! pinned maps / nftables table), for both dataplanes; the health endpoints following the
//! Node; `--cleanup-kube-proxy`. Needs root and the binaries.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use sluice_tests::manifests::{
    IngressPath, Port, Service, ingress, ingress_class, tls_secret, yaml_docs,
};
use sluice_tests::{
    At, CLIENT_V4, Cluster, ECHO_HTTP_PORT, Mode, ProbeError, ProbeOpts, Proto, backend_tests,
    require_root, wait_until,
};

backend_tests!(
    explain_and_inspect_tell_each_verdict_running_and_stopped,
    healthz_follows_the_node_and_health_check_ports_follow_healthz,
    agent_works_with_only_the_daemonsets_capabilities,
);

/// A self-signed certificate for `host` (PEM certificate and key).
fn certificate(dir: &Path, host: &str) -> Result<(String, String)> {
    let (cert, key) = (
        dir.join(format!("{host}.crt")),
        dir.join(format!("{host}.key")),
    );
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
        ])
        .arg(format!("/CN={host}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{host}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl")?;
    ensure!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((
        std::fs::read_to_string(&cert)?,
        std::fs::read_to_string(&key)?,
    ))
}

/// Two nodes: `web-1` and `probe` on node-a, `web-2` on node-b; one Service per verdict, an
/// HTTPS Ingress for cafe.example.test.
fn cluster() -> Result<Cluster> {
    let mut c = Cluster::new(&["node-a", "node-b"])?;
    let w1 = c.add_pod("node-a", "web-1")?;
    let w2 = c.add_pod("node-b", "web-2")?;
    c.add_pod("node-a", "probe")?;
    let http = [("http", "TCP", 8080)];
    let web = Service::new("default", "web")
        .cluster_ips(&["10.96.0.10"])
        .port(Port::tcp(80, 8080).named("http").node_port(30081))
        .kind("NodePort");
    c.write_service(&web, &http, &[&w1, &w2])?;
    let empty = Service::new("default", "empty")
        .cluster_ips(&["10.96.0.11"])
        .port(Port::tcp(80, 8080).named("http"));
    c.write_service(&empty, &http, &[])?;
    let local = Service::new("default", "local")
        .cluster_ips(&["10.96.0.12"])
        .port(Port::tcp(80, 8080).named("http").node_port(30080))
        .kind("NodePort")
        .external_traffic_policy("Local");
    c.write_service(&local, &http, &[&w2])?;
    let lb = Service::new("default", "lb")
        .cluster_ips(&["10.96.0.13"])
        .port(Port::tcp(80, 8080).named("http").node_port(30082))
        .load_balancer_ips(&["203.0.113.10"])
        .source_ranges(&["198.51.100.0/24"]);
    c.write_service(&lb, &http, &[&w1])?;
    let site = Service::new("default", "site")
        .cluster_ips(&["10.96.0.14"])
        .port(Port::tcp(80, ECHO_HTTP_PORT).named("http"));
    c.write_service(&site, &[("http", "TCP", ECHO_HTTP_PORT)], &[&w1])?;
    let (cert, key) = certificate(c.workdir(), "cafe.example.test")?;
    let path = IngressPath {
        host: Some("cafe.example.test".into()),
        path: "/".into(),
        path_type: "Prefix".into(),
        service: "site".into(),
        port: 80,
    };
    let docs = [
        ingress_class("sluice", "sluice.dev/ingress", true),
        tls_secret("default", "cafe-tls", &cert, &key),
        ingress(
            "default",
            "cafe",
            Some("sluice"),
            &[path],
            &[(&["cafe.example.test"], "cafe-tls")],
            None,
        ),
    ];
    c.write_manifest("ingress.yaml", &yaml_docs(&docs))?;
    c.client_route("203.0.113.0/24", "node-a")?;
    Ok(c)
}

/// `sluice ARGS` on node-a; stdout, failing with stderr when it fails.
fn sluice(c: &Cluster, mode: Mode, args: &[&str]) -> Result<String> {
    let out = c.sluice_cli("node-a", mode, args)?;
    ensure!(
        out.status.success(),
        "sluice {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `sluice explain TARGET [--from SRC] -o json`: the single walk.
fn explain(c: &Cluster, mode: Mode, target: &str, from: Option<&str>) -> Result<Value> {
    let mut args = vec!["explain", target, "-o", "json"];
    if let Some(from) = from {
        args.extend(["--from", from]);
    }
    let text = sluice(c, mode, &args)?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("explain output: {text}"))?;
    Ok(match value {
        Value::Array(mut walks) if walks.len() == 1 => walks.remove(0),
        Value::Array(walks) => bail!("{target}: expected one walk, got {}", walks.len()),
        other => other,
    })
}

/// (destination, --from, verdict code) for every reason a packet is not forwarded, and one
/// that is.
fn l4_cases(probe_ip: &str) -> Vec<(&'static str, String, &'static str)> {
    let client = CLIENT_V4.to_string();
    vec![
        ("10.96.0.10:80", probe_ip.to_owned(), "forwarded"),
        ("10.96.0.11:80", probe_ip.to_owned(), "no-endpoints"),
        ("192.0.2.11:30080/tcp", client.clone(), "no-local-endpoint"),
        ("203.0.113.10:80", client.clone(), "source-range"),
        ("192.0.2.12:30081", client.clone(), "not-a-nodeport-address"),
        ("10.96.0.99:80", probe_ip.to_owned(), "no-route"),
    ]
}

fn code(walk: &Value) -> &str {
    walk.pointer("/verdict/code")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn check_l4_walks(c: &Cluster, mode: Mode, probe_ip: &str, running: bool) -> Result<()> {
    for (dst, from, want) in l4_cases(probe_ip) {
        let walk = explain(c, mode, dst, Some(&from))?;
        ensure!(
            code(&walk) == want,
            "{dst} from {from}: want {want}, got {walk:#}"
        );
        let state = if running { "plan" } else { "kernel" };
        ensure!(
            walk["from_state"] == state,
            "{dst}: walked the {}",
            walk["from_state"]
        );
        if running && walk.get("expect").is_some_and(|e| !e.is_null()) {
            ensure!(
                walk.pointer("/kernel/agrees") == Some(&Value::Bool(true)),
                "{dst}: the kernel should hold what the plan says: {walk:#}"
            );
        }
    }
    let forwarded = explain(c, mode, "10.96.0.10:80", Some(probe_ip))?;
    let mut backends: Vec<&str> = forwarded["verdict"]["backends"]
        .as_array()
        .context("backends")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    backends.sort();
    let want = [
        format!("{}:8080", c.pod("web-1")?.ipv4),
        format!("{}:8080", c.pod("web-2")?.ipv4),
    ];
    ensure!(backends == want, "candidates {backends:?}, want {want:?}");
    Ok(())
}

/// What the explained verdicts mean for real traffic.
fn verdicts_match_traffic(c: &Cluster) -> Result<()> {
    assert_eq!(
        c.tcp1(At::Pod("probe"), "10.96.0.11:80")?,
        Err(ProbeError::Refused)
    );
    let quick = ProbeOpts {
        count: 1,
        timeout: Duration::from_millis(700),
        ..Default::default()
    };
    for dst in ["192.0.2.11:30080", "203.0.113.10:80"] {
        let r = c.probe(At::Client, Proto::Tcp, dst, &quick)?;
        ensure!(
            r.iter().all(|x| matches!(x, Err(ProbeError::Timeout))),
            "{dst} from the client should be dropped: {r:?}"
        );
    }
    Ok(())
}

fn explain_and_inspect_tell_each_verdict_running_and_stopped(mode: Mode) -> Result<()> {
    let mut c = cluster()?;
    c.start_agent("node-a", mode, &[])?;
    let probe_ip = c.pod("probe")?.ipv4.to_string();
    check_l4_walks(&c, mode, &probe_ip, true)?;
    verdicts_match_traffic(&c)?;

    // The Ingress: routed with its certificate, refused by name-checking clients without.
    let routed = explain(&c, mode, "https://cafe.example.test/menu", None)?;
    ensure!(code(&routed) == "routed", "{routed:#}");
    let no_cert = explain(&c, mode, "https://tea.example.test/", None)?;
    ensure!(code(&no_cert) == "no-certificate", "{no_cert:#}");

    // inspect: the plan's service ports match the kernel; the routes; a translated flow.
    let services = sluice(&c, mode, &["inspect", "services"])?;
    let web_line = services
        .lines()
        .find(|l| l.starts_with("default/web:http/tcp"))
        .with_context(|| format!("web in\n{services}"))?;
    ensure!(
        web_line.ends_with(" ok"),
        "kernel column of web: {web_line}\n{services}"
    );
    ensure!(
        services
            .lines()
            .next()
            .is_some_and(|h| h.starts_with("SERVICE ")),
        "{services}"
    );
    let routes = sluice(&c, mode, &["inspect", "routes"])?;
    ensure!(
        routes
            .lines()
            .any(|l| l.starts_with("cafe.example.test") && l.contains("default/site:80")),
        "{routes}"
    );
    let r = c.tcp(At::Client, "192.0.2.11:30081", 1)?;
    ensure!(r.iter().all(Result::is_ok), "{r:?}");
    let flows: Value =
        serde_json::from_str(&sluice(&c, mode, &["inspect", "conntrack", "-o", "json"])?)?;
    let flow = flows
        .as_array()
        .context("flows")?
        .iter()
        .find(|f| f["frontend"] == "192.0.2.11:30081")
        .with_context(|| format!("the client's NodePort flow in {flows:#}"))?;
    ensure!(
        flow["client"]
            .as_str()
            .is_some_and(|s| s.starts_with("192.0.2.100:")),
        "{flow:#}"
    );
    ensure!(
        flow["backend"]
            .as_str()
            .is_some_and(|s| s.ends_with(":8080")),
        "{flow:#}"
    );

    // Stopped: the same verdicts from the kernel alone; the routes need the agent.
    c.stop_agent("node-a")?;
    check_l4_walks(&c, mode, &probe_ip, false)?;
    let frontends: Value =
        serde_json::from_str(&sluice(&c, mode, &["inspect", "frontends", "-o", "json"])?)?;
    let web = frontends
        .as_array()
        .context("frontends")?
        .iter()
        .find(|f| f["key"]["addr"]["ip"] == "10.96.0.10")
        .with_context(|| format!("10.96.0.10 in {frontends:#}"))?;
    ensure!(web["node"]["action"] == "forward", "{web:#}");
    ensure!(
        web["node"]["backends"]
            .as_array()
            .is_some_and(|b| b.len() == 2),
        "{web:#}"
    );
    let out = c.sluice_cli("node-a", mode, &["inspect", "routes"])?;
    ensure!(!out.status.success(), "routes without the agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains("the agent is not running here"), "{stderr}");
    Ok(())
}

/// The Node objects, node-a with `metadata` and `spec` fields added.
fn nodes_with(c: &Cluster, metadata: Value, spec: Value) -> String {
    let docs: Vec<Value> = c
        .nodes()
        .map(|n| {
            let mut node = serde_json::json!({
                "apiVersion": "v1", "kind": "Node", "metadata": {"name": n.name},
                "spec": {"podCIDRs": [n.pod_cidr_v4, n.pod_cidr_v6]},
                "status": {"addresses": [
                    {"type": "InternalIP", "address": n.ipv4.to_string()},
                    {"type": "InternalIP", "address": n.ipv6.to_string()}]},
            });
            if n.name == "node-a" {
                for (part, extra) in [("metadata", &metadata), ("spec", &spec)] {
                    if let (Some(into), Some(extra)) =
                        (node[part].as_object_mut(), extra.as_object())
                    {
                        into.extend(extra.clone());
                    }
                }
            }
            node
        })
        .collect();
    yaml_docs(&docs)
}

fn get(c: &Cluster, url: &str) -> Result<(u16, String)> {
    let out = c.curl(At::Node("node-a"), &["-s", "-w", "\n%{http_code}", url])?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((status.trim().parse().unwrap_or(0), body.to_owned()))
}

fn healthz_follows_the_node_and_health_check_ports_follow_healthz(mode: Mode) -> Result<()> {
    let mut c = Cluster::new(&["node-a"])?;
    let w1 = c.add_pod("node-a", "web-1")?;
    let lb = Service::new("default", "lb")
        .cluster_ips(&["10.96.0.20"])
        .port(Port::tcp(80, 8080).named("http").node_port(30090))
        .load_balancer_ips(&["203.0.113.20"])
        .external_traffic_policy("Local")
        .health_check_node_port(32100);
    c.write_service(&lb, &[("http", "TCP", 8080)], &[&w1])?;
    c.start_agent("node-a", mode, &[])?;
    let check = "http://127.0.0.1:32100/";
    wait_until(Duration::from_secs(5), "health check port 200", || {
        Ok(get(&c, check)?.0 == 200)
    })?;

    // The cluster autoscaler is about to remove node-a: drained, but alive.
    let taint = serde_json::json!({"taints": [
        {"key": "ToBeDeletedByClusterAutoscaler", "value": "1700000000", "effect": "NoSchedule"}]});
    c.write_manifest("nodes.yaml", &nodes_with(&c, serde_json::json!({}), taint))?;
    wait_until(Duration::from_secs(5), "/healthz 503", || {
        Ok(c.agent_healthz("node-a")? == 503)
    })?;
    let (status, body) = get(&c, "http://127.0.0.1:10256/livez")?;
    ensure!(status == 200, "/livez {status} {body}");
    let (status, body) = get(&c, "http://127.0.0.1:10256/healthz")?;
    ensure!(
        status == 503 && body.contains("\"nodeEligible\":false"),
        "{status} {body}"
    );
    let (status, body) = get(&c, check)?;
    ensure!(
        status == 503
            && body.contains("\"serviceProxyHealthy\":false")
            && body.contains("\"localEndpoints\":1"),
        "health check port: {status} {body}"
    );

    // Back to normal, then being deleted: the same; back to normal: healthy again.
    let plain = nodes_with(&c, serde_json::json!({}), serde_json::json!({}));
    c.write_manifest("nodes.yaml", &plain)?;
    wait_until(
        Duration::from_secs(5),
        "/healthz 200 without the taint",
        || Ok(c.agent_healthz("node-a")? == 200),
    )?;
    let deleting = nodes_with(
        &c,
        serde_json::json!({"deletionTimestamp": "2026-01-01T00:00:00Z"}),
        serde_json::json!({}),
    );
    c.write_manifest("nodes.yaml", &deleting)?;
    wait_until(Duration::from_secs(5), "/healthz 503 while deleted", || {
        Ok(c.agent_healthz("node-a")? == 503)
    })?;
    ensure!(get(&c, check)?.0 == 503, "health check port while deleted");
    c.write_manifest("nodes.yaml", &plain)?;
    wait_until(Duration::from_secs(5), "/healthz 200", || {
        Ok(c.agent_healthz("node-a")? == 200)
    })?;
    ensure!(get(&c, check)?.0 == 200, "health check port healthy again");
    Ok(())
}

fn run_in_node(c: &Cluster, argv: &[&str]) -> Result<std::process::Output> {
    c.exec(At::Node("node-a"), argv)
}

#[test]
fn cleanup_kube_proxy_removes_its_rules_and_keeps_others() -> Result<()> {
    if !require_root("cleanup_kube_proxy_removes_its_rules_and_keeps_others") {
        return Ok(());
    }
    let mut c = Cluster::new(&["node-a"])?;
    for argv in [
        &["nft", "add", "table", "ip", "kube-proxy"][..],
        &["nft", "add", "chain", "ip", "kube-proxy", "services"],
        &["nft", "add", "table", "ip", "keep-me"],
    ] {
        let out = run_in_node(&c, argv)?;
        ensure!(
            out.status.success(),
            "{argv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let iptables = std::process::Command::new("iptables-nft-save")
        .output()
        .is_ok();
    if iptables {
        for rule in [
            "-N KUBE-SERVICES",
            "-N KUBE-SVC-ABC",
            "-N KUBE-KUBELET-CANARY",
            "-A KUBE-SERVICES -d 10.96.0.10/32 -j KUBE-SVC-ABC",
            "-A PREROUTING -m comment --comment kubernetes-service-portals -j KUBE-SERVICES",
            "-A OUTPUT -j KUBE-SERVICES",
        ] {
            let mut argv = vec!["iptables-nft", "-t", "nat"];
            argv.extend(rule.split(' '));
            let out = run_in_node(&c, &argv)?;
            ensure!(
                out.status.success(),
                "{argv:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    } else {
        eprintln!("iptables (package `iptables`) not installed: checking the nftables part only");
    }
    c.start_agent("node-a", Mode::Nftables, &["--cleanup-kube-proxy"])?;
    let tables =
        String::from_utf8_lossy(&run_in_node(&c, &["nft", "list", "tables"])?.stdout).into_owned();
    ensure!(!tables.contains("kube-proxy"), "{tables}");
    ensure!(tables.contains("keep-me"), "{tables}");
    let log = c.agent_log("node-a");
    ensure!(
        log.contains("--cleanup-kube-proxy: removed nftables table ip kube-proxy"),
        "{log}"
    );
    if iptables {
        let saved =
            String::from_utf8_lossy(&run_in_node(&c, &["iptables-nft-save", "-t", "nat"])?.stdout)
                .into_owned();
        ensure!(
            !saved.contains("KUBE-SERVICES") && !saved.contains("KUBE-SVC-ABC"),
            "{saved}"
        );
        ensure!(
            saved.contains("KUBE-KUBELET-CANARY"),
            "the kubelet's chain stays: {saved}"
        );
        ensure!(
            log.contains(
                "removed iptables-nft-save: table nat: 2 chains (KUBE-SERVICES, KUBE-SVC-ABC)"
            ),
            "{log}"
        );
    }
    Ok(())
}

/// Capabilities granted to the agent's container in manifests/daemonset.yaml.
fn daemonset_capabilities() -> Result<Vec<String>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/daemonset.yaml");
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(serde::Deserialize::deserialize)
        .collect::<Result<_, _>>()?;
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .context("a DaemonSet")?;
    let security = &ds["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    ensure!(
        security["privileged"] != serde_yaml::Value::Bool(true),
        "the agent must not need privileged"
    );
    let add = security["capabilities"]["add"]
        .as_sequence()
        .context("capabilities.add")?;
    Ok(add
        .iter()
        .filter_map(|c| c.as_str().map(str::to_lowercase))
        .collect())
}

/// The agent with only the DaemonSet's capabilities (its bounding set cut down by `setpriv`
/// before exec; as root, that is then exactly its permitted set): forwarding from pods, the
/// node and outside, the Ingress on port 80, the admin socket, and kube-proxy's iptables
/// rules (legacy backend) removed.
fn agent_works_with_only_the_daemonsets_capabilities(mode: Mode) -> Result<()> {
    let caps = match std::env::var("SLUICE_TEST_CAPS") {
        Ok(list) => list.split(',').map(str::to_owned).collect(),
        Err(_) => daemonset_capabilities()?,
    };
    let mut c = cluster()?;
    let wrapper = c.workdir().join("sluice-with-caps");
    let bounding: Vec<String> = caps.iter().map(|cap| format!("+{cap}")).collect();
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec setpriv --bounding-set=-all,{} {} \"$@\"\n",
            bounding.join(","),
            sluice_tests::bins::agent()?.display()
        ),
    )?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    let legacy = std::process::Command::new("iptables-legacy-save")
        .output()
        .is_ok();
    if legacy {
        for argv in [
            &["iptables-legacy", "-t", "nat", "-N", "KUBE-SERVICES"][..],
            &[
                "iptables-legacy",
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-j",
                "KUBE-SERVICES",
            ],
        ] {
            let out = run_in_node(&c, argv)?;
            ensure!(
                out.status.success(),
                "{argv:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    c.set_agent_binary(&wrapper);
    c.start_agent("node-a", mode, &["--cleanup-kube-proxy"])
        .with_context(|| format!("agent with capabilities {caps:?}"))?;
    let log = c.agent_log("node-a");
    ensure!(
        !log.contains("Operation not permitted") && !log.contains("EPERM"),
        "{log}"
    );
    let status = std::fs::read_to_string("/proc/self/status")?;
    ensure!(status.contains("CapBnd"), "proc status readable");
    let r = c.tcp(At::Pod("probe"), "10.96.0.10:80", 4)?;
    ensure!(r.iter().all(Result::is_ok), "pod to ClusterIP: {r:?}");
    let r = c.tcp(At::Node("node-a"), "10.96.0.10:80", 4)?;
    ensure!(r.iter().all(Result::is_ok), "node to ClusterIP: {r:?}");
    let r = c.tcp(At::Client, "192.0.2.11:30081", 4)?;
    ensure!(r.iter().all(Result::is_ok), "client to NodePort: {r:?}");
    // The cafe has TLS: plain HTTP is redirected (ssl-redirect), HTTPS is served.
    let reply = c.http(
        At::Client,
        "http://cafe.example.test/",
        &["--resolve", "cafe.example.test:80:192.0.2.11"],
    )?;
    ensure!(
        reply.status == 308 && reply.header("location") == Some("https://cafe.example.test/"),
        "ingress over HTTP: {}",
        reply.status
    );
    let reply = c.http(
        At::Client,
        "https://cafe.example.test/",
        &["-k", "--resolve", "cafe.example.test:443:192.0.2.11"],
    )?;
    ensure!(
        reply.status == 200 && reply.field("pod") == Some("web-1"),
        "ingress over HTTPS: {}",
        reply.status
    );
    sluice(&c, mode, &["inspect", "services"])?;
    if legacy {
        let saved = run_in_node(&c, &["iptables-legacy-save", "-t", "nat"])?;
        let saved = String::from_utf8_lossy(&saved.stdout);
        ensure!(
            !saved.contains("KUBE-SERVICES"),
            "kube-proxy's chain removed: {saved}\n{log}"
        );
    }
    Ok(())
}

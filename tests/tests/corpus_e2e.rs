//! The bad-input corpus (`tests/corpus/`, see its README) through the whole agent, both
//! dataplanes, next to known-good Services and an Ingress (plain HTTP and HTTPS), plus inputs
//! generated here: TLS Secrets with a key that does not match, an expired certificate and a
//! 3,000-certificate chain; absurd and stolen ports; overlapping addresses; objects of 7.5 and
//! 10 MB. For each: the agent does not panic, names the object (or file) in its log, and
//! every good Service and route keeps answering. Needs root, the binaries, curl and openssl.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use sluice_tests::certs::{self, KeyPair};
use sluice_tests::manifests::{
    IngressPath, Port, Service, endpoint_slices, ingress, ingress_class, tls_secret, yaml_docs,
};
use sluice_tests::{At, Cluster, Mode, Pod, backend_tests, tally, wait_until};

backend_tests!(corpus_and_generated_bad_inputs_disturb_nothing);

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus");
const HTTP_PORTS: &[(&str, &str, u16)] = &[
    ("tcp", "TCP", 8080),
    ("udp", "UDP", 8080),
    ("http", "TCP", 8081),
];

/// What one corpus file promises (its header).
struct Expectation {
    file: String,
    /// `# expect: warn TEXT`: the log contains TEXT.
    warnings: Vec<String>,
    /// `KIND KEY` of `# expect: load` lines of files whose `# compute:` line asks for the
    /// object to be rejected, reported or named.
    named: Vec<String>,
}

fn expectations() -> Result<Vec<Expectation>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(CORPUS)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = String::from_utf8_lossy(&std::fs::read(&path)?).into_owned();
        let header = |prefix: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| l.trim_start_matches('\u{feff}').strip_prefix(prefix))
                .map(|s| s.trim().to_owned())
                .collect()
        };
        let compute = header("# compute:").join(" ");
        let must_name = ["must reject", "must report", "must skip", "name "]
            .iter()
            .any(|w| compute.contains(w));
        let named = if must_name {
            header("# expect: load ")
        } else {
            Vec::new()
        };
        out.push(Expectation {
            file: path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into(),
            warnings: header("# expect: warn "),
            named,
        });
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(out)
}

/// Writes a manifest of any bytes atomically (hidden temp name, then rename).
fn write_bytes(dir: &Path, file: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(file)).with_context(|| format!("renaming to {file}"))
}

/// The Services and Ingress that must keep working, in namespace `corpus-good` (the corpus'
/// `duplicate-of-good-service.yaml` tries to replace `corpus-good/web` from another file).
/// They are older than anything else, so conflicts are decided in their favour.
fn good(web: &Pod, tls: &KeyPair) -> String {
    let old = json!({"creationTimestamp": "2020-01-01T00:00:00Z"});
    let mut docs = Vec::new();
    let mut svc = Service::new("corpus-good", "web")
        .kind("NodePort")
        .cluster_ips(&["10.96.200.1"])
        .port(Port::tcp(80, 8080).named("tcp").node_port(30080))
        .port(Port::udp(53, 8080).named("udp").node_port(30053))
        .port(Port::tcp(81, 8081).named("http"))
        .to_json();
    svc["metadata"]["creationTimestamp"] = old["creationTimestamp"].clone();
    docs.push(svc);
    docs.extend(endpoint_slices("corpus-good", "web", HTTP_PORTS, &[web]));
    // The Service the corpus' EndpointSlices and Ingresses point at: only slices of an
    // existing Service are read, so this is what makes their bad endpoints visible.
    docs.push(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "corpus", "name": "corpus-svc"},
        "spec": {"clusterIP": "10.96.200.9", "ports": [{"port": 80, "targetPort": 8080}]},
    }));
    docs.push(ingress_class("sluice", "sluice.dev/ingress", true));
    docs.push(tls_secret(
        "corpus-good",
        "cafe-tls",
        &tls.cert_pem,
        &tls.key_pem,
    ));
    let route = |host: &str| IngressPath {
        host: Some(host.into()),
        path: "/".into(),
        path_type: "Prefix".into(),
        service: "web".into(),
        port: 81,
    };
    let hosts: &[&str] = &["cafe.example.com"];
    let mut ing = ingress(
        "corpus-good",
        "cafe",
        Some("sluice"),
        &[route("cafe.example.com"), route("plain.example.com")],
        &[(hosts, "cafe-tls")],
        None,
    );
    ing["metadata"]["creationTimestamp"] = old["creationTimestamp"].clone();
    docs.push(ing);
    yaml_docs(&docs)
}

/// A Service of the `extra` namespace with endpoints on `web`.
fn extra_service(name: &str, spec: Value, web: &Pod) -> Vec<Value> {
    let mut docs = vec![json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "extra", "name": name},
        "spec": spec,
    })];
    docs.extend(endpoint_slices("extra", name, HTTP_PORTS, &[web]));
    docs
}

/// An Ingress of `extra` for `host` over TLS with `secret`, routed to `extra/web`.
fn extra_tls_ingress(name: &str, host: &str, secret: &str) -> Value {
    let route = IngressPath {
        host: Some(host.into()),
        path: "/".into(),
        path_type: "Prefix".into(),
        service: "web".into(),
        port: 81,
    };
    let hosts: &[&str] = &[host];
    ingress(
        "extra",
        name,
        Some("sluice"),
        &[route],
        &[(hosts, secret)],
        None,
    )
}

/// Generated bad inputs: `(file, bytes, what the log must name)`.
fn generated(c: &Cluster, web: &Pod, cafe: &KeyPair) -> Result<Vec<(String, Vec<u8>, String)>> {
    let dir = c.workdir();
    let mut files = Vec::new();
    let mut add = |file: &str, docs: Vec<Value>, named: &str| {
        files.push((
            file.to_owned(),
            yaml_docs(&docs).into_bytes(),
            named.to_owned(),
        ));
    };
    let http = |port: u16| json!({"name": "http", "port": port, "targetPort": 8081});
    // The `extra` namespace's own good backend for the TLS cases.
    add(
        "extra-web.yaml",
        extra_service(
            "web",
            json!({"clusterIP": "10.96.201.1", "ports": [http(81)]}),
            web,
        ),
        "",
    );
    // TLS: a key of another certificate, an expired certificate, a chain of 3,000.
    let mismatch = certs::self_signed(dir, "mismatch.example.com")?;
    let expired = certs::expired(dir, "expired.example.com")?;
    let chain_link = certs::self_signed(dir, "link.example.com")?;
    let huge = certs::self_signed(dir, "huge.example.com")?;
    let huge_chain = format!("{}{}", huge.cert_pem, chain_link.cert_pem.repeat(3000));
    let tls_cases = [
        (
            "key-mismatch",
            "mismatch.example.com",
            &mismatch.cert_pem,
            &cafe.key_pem,
        ),
        (
            "expired",
            "expired.example.com",
            &expired.cert_pem,
            &expired.key_pem,
        ),
        ("huge-chain", "huge.example.com", &huge_chain, &huge.key_pem),
    ];
    for (name, host, cert, key) in tls_cases {
        let docs = vec![
            tls_secret("extra", name, cert, key),
            extra_tls_ingress(name, host, name),
        ];
        add(
            &format!("extra-tls-{name}.yaml"),
            docs,
            &format!("Secret extra/{name}"),
        );
    }
    // Ports: the extremes, and the good Service's nodePort claimed again.
    let edge = json!({"type": "NodePort", "clusterIP": "10.96.201.2", "ports": [
        {"name": "max", "port": 65535, "targetPort": 65535, "nodePort": 32767},
        {"name": "min", "port": 1, "targetPort": 1, "protocol": "UDP", "nodePort": 30000},
        {"name": "missing", "port": 2, "targetPort": "no-such-port"}]});
    add(
        "extra-ports-edge.yaml",
        extra_service("edge-ports", edge, web),
        "",
    );
    let steal = json!({"type": "NodePort", "clusterIP": "10.96.201.3",
        "ports": [{"name": "http", "port": 80, "targetPort": 8081, "nodePort": 30080}]});
    add(
        "extra-ports-steal.yaml",
        extra_service("steal-node-port", steal, web),
        "Service extra/steal-node-port",
    );
    // Addresses: the good Service's cluster IP, a node address as externalIP, a LoadBalancer
    // address equal to the good cluster IP.
    let same_ip = json!({"clusterIP": "10.96.200.1", "ports": [http(80)]});
    add(
        "extra-ip-same-cluster-ip.yaml",
        extra_service("same-cluster-ip", same_ip, web),
        "Service extra/same-cluster-ip",
    );
    let node_ip = c.node("node-a")?.ipv4.to_string();
    let on_node =
        json!({"clusterIP": "10.96.201.4", "externalIPs": [node_ip], "ports": [http(80)]});
    add(
        "extra-ip-external-on-node.yaml",
        extra_service("external-on-node", on_node, web),
        "Service extra/external-on-node",
    );
    let mut lb = extra_service(
        "lb-on-cluster-ip",
        json!({"type": "LoadBalancer", "clusterIP": "10.96.201.5", "ports": [http(80)]}),
        web,
    );
    lb[0]["status"] = json!({"loadBalancer": {"ingress": [{"ip": "10.96.200.1"}]}});
    add(
        "extra-ip-lb-on-cluster-ip.yaml",
        lb,
        "Service extra/lb-on-cluster-ip",
    );
    // Size: 7.5 MB (under the 8 MiB file limit: loaded and served) and 10 MB (skipped).
    for (file, name, mb, ip) in [
        ("extra-big-7mb.yaml", "big", 7.5, "10.96.201.6"),
        ("extra-huge-10mb.yaml", "huge", 10.0, "10.96.201.7"),
    ] {
        // TCP to the echo port: the probe reads the pod's greeting.
        let tcp = json!({"name": "tcp", "port": 80, "targetPort": 8080});
        let mut docs = extra_service(name, json!({"clusterIP": ip, "ports": [tcp]}), web);
        docs[0]["metadata"]["annotations"] = json!({"filler": "x".repeat((mb * 1e6) as usize)});
        let named = if mb > 8.0 { file } else { "" };
        add(file, docs, named);
    }
    Ok(files)
}

fn corpus_and_generated_bad_inputs_disturb_nothing(mode: Mode) -> Result<()> {
    let mut c = Cluster::new(&["node-a"])?;
    let web = c.add_pod("node-a", "web-1")?;
    c.add_pod("node-a", "probe")?;
    let cafe = certs::self_signed(c.workdir(), "cafe.example.com")?;
    c.write_manifest("good.yaml", &good(&web, &cafe))?;
    c.start_agent("node-a", mode, &[])?;
    check_good(&c, &cafe, "before the corpus")?;

    let dir = c.manifest_dir();
    let mut corpus_files = Vec::new();
    for entry in std::fs::read_dir(CORPUS)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            write_bytes(&dir, &name, &std::fs::read(&path)?)?;
            corpus_files.push(name);
        }
    }
    let generated = generated(&c, &web, &cafe)?;
    for (file, bytes, _) in &generated {
        write_bytes(&dir, file, bytes)?;
    }
    // Written last: a good Service whose answer proves the agent applied all of the above.
    let late = Service::new("corpus-good", "late")
        .cluster_ips(&["10.96.200.3"])
        .port(Port::tcp(80, 8080).named("tcp"));
    c.write_service(&late, &[("tcp", "TCP", 8080)], &[&web])?;
    // Files are read in no fixed order and the 7.5 MB one takes longest: wait for both.
    wait_until(
        Duration::from_secs(60),
        "the late good Service and the 7.5 MB one answer",
        || {
            Ok(c.tcp1(At::Pod("probe"), "10.96.200.3:80")?.is_ok()
                && c.tcp1(At::Pod("probe"), "10.96.201.6:80")?.is_ok())
        },
    )?;
    eprintln!(
        "{}: {} corpus files and {} generated ones loaded",
        mode.as_str(),
        corpus_files.len(),
        generated.len()
    );

    ensure!(
        c.agent_running("node-a"),
        "the agent exited:\n{}",
        c.agent_log("node-a")
    );
    check_good(&c, &cafe, "after the corpus")?;
    check_generated_behaviour(&c)?;
    check_log(&c, &generated)
}

/// Every good Service and route answers: ClusterIP TCP and UDP from a pod, NodePort from
/// outside, the Ingress over HTTP and HTTPS (verified against the good certificate).
fn check_good(c: &Cluster, cafe: &KeyPair, when: &str) -> Result<()> {
    let node = c.node("node-a")?.clone();
    let only_web =
        |r: &sluice_tests::ProbeResults| tally(r) == [("web-1".to_string(), r.len())].into();
    let tcp = c.tcp(At::Pod("probe"), "10.96.200.1:80", 5)?;
    ensure!(only_web(&tcp), "{when}: ClusterIP TCP {:?}", tally(&tcp));
    let udp = c.udp(At::Pod("probe"), "10.96.200.1:53", 5)?;
    ensure!(only_web(&udp), "{when}: ClusterIP UDP {:?}", tally(&udp));
    let np = c.tcp(At::Client, node.v4(30080), 5)?;
    ensure!(only_web(&np), "{when}: NodePort {:?}", tally(&np));
    for (url, host, port, extra) in [
        ("http://plain.example.com/", "plain.example.com", 80, vec![]),
        (
            "https://cafe.example.com/",
            "cafe.example.com",
            443,
            vec!["--cacert", cafe.cert_path.to_str().unwrap_or_default()],
        ),
    ] {
        let resolve = format!("{host}:{port}:{}", node.ipv4);
        let mut args = vec!["--resolve", resolve.as_str()];
        args.extend(extra);
        let reply = c.http(At::Client, url, &args)?;
        ensure!(
            reply.status == 200 && reply.field("pod") == Some("web-1"),
            "{when}: {url} {} {:?}",
            reply.status,
            reply.body
        );
    }
    ensure!(c.agent_healthz("node-a")? == 200, "{when}: healthz");
    Ok(())
}

/// What the generated inputs must do besides being named.
fn check_generated_behaviour(c: &Cluster) -> Result<()> {
    // The edge ports are programmed.
    let max = c.tcp1(At::Pod("probe"), "10.96.201.2:65535")?;
    ensure!(
        matches!(max, Err(sluice_tests::ProbeError::Refused)),
        "port 65535 to targetPort 65535 (nothing listens): {max:?}"
    );
    // The corpus Service with 1000 ports (no endpoints) rejects on its last port.
    let last = c.tcp1(At::Pod("probe"), "10.96.100.17:1999")?;
    ensure!(
        matches!(last, Err(sluice_tests::ProbeError::Refused)),
        "huge-port-list port 1999: {last:?}"
    );
    Ok(())
}

fn check_log(c: &Cluster, generated: &[(String, Vec<u8>, String)]) -> Result<()> {
    let log = c.agent_log("node-a");
    ensure!(!log.contains("panicked"), "the agent panicked:\n{log}");
    // Kinds are named `Secret ns/name` by the source and `secret ns/name` by the ingress.
    let lower = log.to_lowercase();
    let mut missing = BTreeSet::new();
    for e in expectations()? {
        for text in e.warnings.iter().chain(&e.named) {
            if !lower.contains(&text.to_lowercase()) {
                missing.insert(format!("{}: {text}", e.file));
            }
        }
    }
    for (file, _, named) in generated {
        if !named.is_empty() && !lower.contains(&named.to_lowercase()) {
            missing.insert(format!("{file}: {named}"));
        }
    }
    ensure!(
        missing.is_empty(),
        "not named in the agent log:\n  {}\nlog:\n{log}",
        missing.into_iter().collect::<Vec<_>>().join("\n  ")
    );
    Ok(())
}

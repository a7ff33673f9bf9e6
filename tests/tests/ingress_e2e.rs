//! The agent's Ingress proxy end to end: a client outside the cluster talks HTTP(S) to a
//! node and reaches the echo pods. Needs root, the binaries and `openssl` (test certificate).

use std::path::Path;

use anyhow::{Context, Result};
use sluice_tests::manifests::{
    IngressPath, Port, Service, endpoint_slices, ingress, ingress_class, tls_secret, yaml_docs,
};
use sluice_tests::{At, CLIENT_V4, Cluster, ECHO_HTTP_PORT, Mode, require_root};

fn path(host: &str, path: &str, path_type: &str, service: &str) -> IngressPath {
    IngressPath {
        host: Some(host.into()),
        path: path.into(),
        path_type: path_type.into(),
        service: service.into(),
        port: 80,
    }
}

/// Self-signed certificate for `host`: (cert PEM path, cert PEM, key PEM).
fn certificate(dir: &Path, host: &str) -> Result<(String, String, String)> {
    let cert = dir.join(format!("{host}.crt"));
    let key = dir.join(format!("{host}.key"));
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
    anyhow::ensure!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((
        cert.display().to_string(),
        std::fs::read_to_string(&cert)?,
        std::fs::read_to_string(&key)?,
    ))
}

/// web-1 behind service `web-a` (a.example.test), web-2 behind `web-b` (b.example.test/api),
/// TLS for a.example.test; the agent runs on node-a.
fn cluster() -> Result<(Cluster, String)> {
    let mut c = Cluster::new(&["node-a", "node-b"])?;
    let w1 = c.add_pod("node-a", "web-1")?;
    let w2 = c.add_pod("node-b", "web-2")?;
    let (cert_path, cert, key) = certificate(c.workdir(), "a.example.test")?;
    let mut docs = vec![ingress_class("sluice", "sluice.dev/ingress", true)];
    for (name, ip, pod) in [("web-a", "10.96.0.20", &w1), ("web-b", "10.96.0.21", &w2)] {
        docs.push(
            Service::new("default", name)
                .cluster_ips(&[ip])
                .port(Port::tcp(80, ECHO_HTTP_PORT).named("http"))
                .to_json(),
        );
        docs.extend(endpoint_slices(
            "default",
            name,
            &[("http", "TCP", ECHO_HTTP_PORT)],
            &[pod],
        ));
    }
    docs.push(tls_secret("default", "a-tls", &cert, &key));
    docs.push(ingress(
        "default",
        "web",
        Some("sluice"),
        &[
            path("a.example.test", "/", "Prefix", "web-a"),
            path("b.example.test", "/api", "Prefix", "web-b"),
        ],
        &[(&["a.example.test"], "a-tls")],
        None,
    ));
    c.write_manifest("ingress.yaml", &yaml_docs(&docs))?;
    c.start_agent("node-a", Mode::Nftables, &[])?;
    Ok((c, cert_path))
}

#[test]
fn routes_by_host_and_path_with_forwarded_headers() -> Result<()> {
    if !require_root("routes_by_host_and_path_with_forwarded_headers") {
        return Ok(());
    }
    let (c, _) = cluster()?;
    let node = c.node("node-a")?.ipv4;
    let get = |host: &str, path: &str| {
        c.http(
            At::Client,
            &format!("http://{node}{path}"),
            &["-H", &format!("Host: {host}")],
        )
    };
    let a = get("a.example.test", "/hello?x=1")?;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-pod"), Some("web-1"));
    assert_eq!(a.field("path"), Some("/hello?x=1"));
    assert_eq!(a.field("host"), Some("a.example.test"));
    assert_eq!(
        a.field("x-forwarded-for"),
        Some(CLIENT_V4.to_string().as_str())
    );
    assert_eq!(a.field("x-forwarded-proto"), Some("http"));

    let b = get("b.example.test", "/api/items")?;
    assert_eq!(
        (b.status, b.header("x-pod")),
        (200, Some("web-2")),
        "{}",
        b.body
    );
    // Prefix matches whole path elements only.
    assert_eq!(get("b.example.test", "/apix")?.status, 404);
    assert_eq!(get("nobody.example.test", "/")?.status, 404);
    Ok(())
}

#[test]
fn terminates_tls_with_the_secrets_certificate() -> Result<()> {
    if !require_root("terminates_tls_with_the_secrets_certificate") {
        return Ok(());
    }
    let (c, cert) = cluster()?;
    let node = c.node("node-a")?.ipv4;
    let resolve = format!("a.example.test:443:{node}");
    let r = c.http(
        At::Client,
        "https://a.example.test/secure",
        &["--resolve", &resolve, "--cacert", &cert],
    )?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-pod"), Some("web-1"));
    assert_eq!(r.field("x-forwarded-proto"), Some("https"));
    Ok(())
}

#[test]
fn passes_websocket_upgrades_through() -> Result<()> {
    if !require_root("passes_websocket_upgrades_through") {
        return Ok(());
    }
    let (c, _) = cluster()?;
    let node = c.node("node-a")?.ipv4;
    // curl cannot speak WebSocket here; the 101 with the pod's accept key shows the upgrade
    // reached the pod and came back. curl then waits on the open connection until --max-time.
    let out = c.curl(
        At::Client,
        &[
            "-i",
            "-N",
            "--max-time",
            "2",
            "-H",
            "Host: a.example.test",
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Sec-WebSocket-Version: 13",
            "-H",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            &format!("http://{node}/ws"),
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 101"), "{text}");
    assert!(
        text.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{text}"
    );
    assert!(text.contains("x-pod: web-1"), "{text}");
    Ok(())
}

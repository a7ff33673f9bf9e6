//! Loopback benchmark of the ingress proxy (not a test): keep-alive clients against an echo
//! backend directly, through the proxy over HTTP, and over HTTPS. Prints one table row per
//! target and, with `--json FILE`, writes the rows as JSON. Absolute numbers depend on the
//! machine (client, proxy and backend share its cores); compare the rows of one run.
//!
//! `cargo run --release -p sluice-ingress --example bench -- [--seconds N] [--clients N] [--json FILE]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::json;
use sluice_ingress::IngressConfig;

#[derive(Clone, Copy)]
enum Target {
    Http(SocketAddr),
    Https(SocketAddr),
}

/// One keep-alive connection issuing requests back to back until `until`; returns latencies.
async fn client(target: Target, until: Instant) -> anyhow::Result<Vec<Duration>> {
    let mut lat = Vec::new();
    macro_rules! run {
        ($sender:expr) => {{
            while Instant::now() < until {
                let req = Request::builder()
                    .uri("/bench")
                    .header("host", "cafe.example.com")
                    .body(Full::new(Bytes::new()))?;
                let t = Instant::now();
                let resp = $sender.send_request(req).await?;
                anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
                resp.into_body().collect().await?;
                lat.push(t.elapsed());
            }
        }};
    }
    match target {
        Target::Http(addr) => {
            let s = tokio::net::TcpStream::connect(addr).await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
            tokio::spawn(conn);
            run!(sender);
        }
        Target::Https(addr) => {
            let (tls, _) = tls_connect(addr, "cafe.example.com", &[b"http/1.1"]).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(conn);
            run!(sender);
        }
    }
    Ok(lat)
}

async fn measure(
    name: &str,
    target: Target,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<serde_json::Value> {
    // Warm-up, then the measured run.
    let warm = Instant::now() + Duration::from_millis(300);
    for h in (0..clients)
        .map(|_| tokio::spawn(client(target, warm)))
        .collect::<Vec<_>>()
    {
        h.await??;
    }
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let mut all = Vec::new();
    for h in (0..clients)
        .map(|_| tokio::spawn(client(target, until)))
        .collect::<Vec<_>>()
    {
        all.extend(h.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let rps = all.len() as f64 / elapsed;
    let (p50, p99) = (pct(0.50), pct(0.99));
    println!(
        "{name:<22} {rps:>10.0} {:>10.3} {:>10.3}",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    Ok(json!({"target": name, "requests": all.len(), "rps": rps,
        "p50_ms": p50.as_secs_f64() * 1e3, "p99_ms": p99.as_secs_f64() * 1e3}))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut seconds, mut clients, mut json_out) = (5u64, 16usize, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => seconds = args.next().unwrap_or_default().parse()?,
            "--clients" => clients = args.next().unwrap_or_default().parse()?,
            "--json" => json_out = args.next(),
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let backend = echo("bench").await;
    let (secret, _) = tls_secret("cafe-secret", &["cafe.example.com"]);
    let mut cafe = ingress(
        "cafe",
        vec![rule("cafe.example.com", vec![path("/", "Prefix", "bench")])],
    );
    cafe["spec"]["tls"] = json!([{"hosts": ["cafe.example.com"], "secretName": "cafe-secret"}]);
    let mut objects = vec![ingress_class(), cafe, secret];
    objects.extend(service("bench", &[backend.addr.port()]));
    let proxy = start(IngressConfig::default(), &objects).await;

    println!("{clients} keep-alive clients, {seconds}s each");
    println!(
        "{:<22} {:>10} {:>10} {:>10}",
        "target", "req/s", "p50 ms", "p99 ms"
    );
    let rows = vec![
        measure(
            "direct-to-backend",
            Target::Http(backend.addr),
            clients,
            seconds,
        )
        .await?,
        measure(
            "sluice-ingress http",
            Target::Http(proxy.http),
            clients,
            seconds,
        )
        .await?,
        measure(
            "sluice-ingress https",
            Target::Https(proxy.https),
            clients,
            seconds,
        )
        .await?,
    ];
    if let Some(path) = json_out {
        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
        println!("wrote {path}");
    }
    Ok(())
}

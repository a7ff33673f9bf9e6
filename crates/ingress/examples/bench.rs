//! Loopback benchmark of the ingress proxy (not a test): keep-alive clients against an echo
//! backend directly, through the proxy over HTTP, and over HTTPS, and through a plain nginx
//! reverse proxy to the same backend (HTTP and HTTPS with the same certificate) when `nginx`
//! is installed. Prints one table row per target and, with `--json FILE`, writes the rows as
//! JSON. Absolute numbers depend on the machine (client, proxies and backend share its
//! cores); compare the rows of one run.
//!
//! nginx runs as a child process (`daemon off`, `worker_processes auto`) with a generated
//! configuration in a temporary directory: loopback listeners only, `proxy_pass` to a
//! keep-alive `upstream`, access log off, stopped (SIGQUIT) when its rows are done.
//!
//! `cargo run --release -p sluice-ingress --example bench -- [--seconds N] [--clients N] [--json FILE]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
    let (secret, _, (cert_pem, key_pem)) = tls_secret_pem("cafe-secret", &["cafe.example.com"]);
    let mut cafe = ingress(
        "cafe",
        vec![rule("cafe.example.com", vec![path("/", "Prefix", "bench")])],
    );
    cafe["spec"]["tls"] = json!([{"hosts": ["cafe.example.com"], "secretName": "cafe-secret"}]);
    let mut objects = vec![ingress_class(), cafe, secret];
    objects.extend(service("bench", &[backend.addr.port()]));
    // The proxy gets its own 2-worker runtime, as in the agent (the load generator and the
    // backend share the main runtime, as they do for the nginx rows).
    let proxy_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let handle = proxy_rt.handle().clone();
    let proxy =
        std::thread::spawn(move || handle.block_on(start(IngressConfig::default(), &objects)))
            .join()
            .map_err(|_| anyhow::anyhow!("starting the proxy panicked"))?;

    println!("{clients} keep-alive clients, {seconds}s each");
    println!(
        "{:<22} {:>10} {:>10} {:>10}",
        "target", "req/s", "p50 ms", "p99 ms"
    );
    let mut rows = vec![
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
    match find_nginx() {
        None => println!("nginx not installed: apt-get install nginx (nginx rows skipped)"),
        Some(bin) => {
            let nginx = Nginx::start(&bin, backend.addr, &cert_pem, &key_pem)?;
            let http = measure("nginx http", Target::Http(nginx.http), clients, seconds).await;
            let https = measure("nginx https", Target::Https(nginx.https), clients, seconds).await;
            nginx.stop()?;
            rows.push(http?);
            rows.push(https?);
        }
    }
    drop(proxy);
    proxy_rt.shutdown_background();
    if let Some(path) = json_out {
        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
        println!("wrote {path}");
    }
    Ok(())
}

/// `nginx` from `PATH` or `/usr/sbin` (where Debian puts it, often not in a user's `PATH`).
fn find_nginx() -> Option<PathBuf> {
    let dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    dirs.into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// A plain nginx reverse proxy on loopback in front of `backend`; stopped on drop.
struct Nginx {
    child: Option<Child>,
    dir: PathBuf,
    http: SocketAddr,
    https: SocketAddr,
}

/// A free loopback port (bound and released; nginx binds it right after).
fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn nginx_config(dir: &Path, backend: SocketAddr, http: SocketAddr, https: SocketAddr) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process on;
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    upstream backend {{
        server {backend};
        keepalive 64;
        keepalive_requests 100000000;
    }}
    server {{
        listen {http};
        listen {https} ssl;
        server_name cafe.example.com;
        ssl_certificate {d}/tls.crt;
        ssl_certificate_key {d}/tls.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"#
    )
}

impl Nginx {
    fn start(bin: &Path, backend: SocketAddr, cert: &str, key: &str) -> anyhow::Result<Nginx> {
        let dir = std::env::temp_dir().join(format!("sluice-bench-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("tls.crt"), cert)?;
        std::fs::write(dir.join("tls.key"), key)?;
        let (http, https) = (free_port()?, free_port()?);
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_config(&dir, backend, http, https))?;
        let child = Command::new(bin)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .spawn()?;
        let mut nginx = Nginx {
            child: Some(child),
            dir,
            http,
            https,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(https).is_err() {
            if let Some(status) = nginx
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                anyhow::bail!(
                    "nginx exited ({status}): {}",
                    std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default()
                );
            }
            anyhow::ensure!(Instant::now() < deadline, "nginx did not listen within 5 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(nginx)
    }

    /// Graceful stop of master and workers (SIGQUIT; killing only the master would leave
    /// its workers behind), then removes the directory.
    fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        Command::new("kill")
            .args(["-QUIT", &child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status()?;
                child.wait()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("stopping nginx: {e}");
        }
    }
}

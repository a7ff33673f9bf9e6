//! Hostile HTTP against the Ingress proxy: the real `IngressProxy` on loopback (no root
//! needed), default settings except where a test shortens a timeout to keep it fast. Each case
//! says what the client must see (status, close, GOAWAY) and what the backend must (not) see.
//! Completes `crates/ingress/tests/http_strictness.rs` (431/414, duplicate/conflicting Host,
//! slow body 408) and `proxy.rs` (basic normalisation, unknown SNI with one certificate):
//! slowloris, smuggling, path tricks, Host spellings, HTTP/2 rapid reset, CONTINUATION floods,
//! stream limits, TLS without SNI and with unknown SNI among several certificates.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sluice_ingress::{IngressConfig, IngressProxy};
use sluice_model::{NodeInfo, Snapshot};
use sluice_routes::RouteConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

// ---------------------------------------------------------------------------------------------
// A recording backend, the proxy, raw clients.

/// What a backend received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: Vec<(String, String)>,
    body_len: usize,
}

/// An HTTP/1.1 backend answering `NAME PATH` (header `x-backend: NAME`) and recording every
/// request; `/slow` answers after 2 s.
struct Backend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Backend {
    async fn start(name: &'static str) -> Result<Backend> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = Arc::clone(&record);
                let svc = hyper::service::service_fn(move |req| answer(name, req, record.clone()));
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        Ok(Backend { addr, seen })
    }

    fn paths(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.path).collect()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

async fn answer(
    name: &'static str,
    req: Request<Incoming>,
    record: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let body_len = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    if let Ok(mut r) = record.lock() {
        r.push(Seen {
            path: path.clone(),
            headers,
            body_len,
        });
    }
    if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let resp = Response::builder()
        .header("x-backend", name)
        .body(Full::new(Bytes::from(format!("{name} {path}\n"))))
        .expect("valid response");
    Ok(resp)
}

fn snapshot(objects: &[Value]) -> Result<Snapshot> {
    Ok(Snapshot::from_json_objects(objects.iter().cloned())?)
}

/// Service `name` with its backend as only endpoint.
fn service(name: &str, backend: &Backend) -> Vec<Value> {
    vec![
        json!({"kind": "Service", "metadata": {"namespace": "default", "name": name},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
        json!({"kind": "EndpointSlice",
            "metadata": {"namespace": "default", "name": name,
                "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": backend.addr.port(), "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]}),
    ]
}

fn path(p: &str, kind: &str, svc: &str) -> Value {
    json!({"path": p, "pathType": kind,
        "backend": {"service": {"name": svc, "port": {"number": 80}}}})
}

/// Ingress `name` (created at `created`, which orders conflicts) for `host`.
fn ingress(name: &str, created: &str, host: &str, paths: Vec<Value>, tls: Option<&str>) -> Value {
    let mut spec = json!({"ingressClassName": "sluice",
        "rules": [{"host": host, "http": {"paths": paths}}]});
    if let Some(secret) = tls {
        spec["tls"] = json!([{"hosts": [host], "secretName": secret}]);
    }
    json!({"kind": "Ingress",
        "metadata": {"namespace": "default", "name": name, "creationTimestamp": created},
        "spec": spec})
}

fn ingress_class() -> Value {
    json!({"kind": "IngressClass", "metadata": {"name": "sluice"},
        "spec": {"controller": "sluice.dev/ingress"}})
}

/// A proxy serving on loopback; stops when dropped.
struct Proxy {
    http: SocketAddr,
    https: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn start(config: IngressConfig, objects: &[Value]) -> Result<Proxy> {
    let proxy = Arc::new(IngressProxy::new(config));
    // Planned as the agent plans it, then executed.
    let now = std::time::SystemTime::now();
    let (plan, mut warnings) = sluice_routes::plan(
        &snapshot(objects)?,
        &NodeInfo::default(),
        &RouteConfig::default(),
        now,
    );
    warnings.extend(proxy.update(&plan));
    ensure!(warnings.is_empty(), "unexpected warnings: {warnings:?}");
    let http = TcpListener::bind("127.0.0.1:0").await?;
    let https = TcpListener::bind("127.0.0.1:0").await?;
    let (http_addr, https_addr) = (http.local_addr()?, https.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = proxy
            .serve_listeners(Some(http), Some(https), async {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(Proxy {
        http: http_addr,
        https: https_addr,
        _stop: stop,
    })
}

/// `cafe.example.com`: prefix `/public` → `public`, exact `/admin` → `admin`; nothing else.
async fn cafe(config: IngressConfig) -> Result<(Proxy, Backend, Backend)> {
    let public = Backend::start("public").await?;
    let admin = Backend::start("admin").await?;
    let mut objects = vec![ingress_class()];
    objects.extend(service("public", &public));
    objects.extend(service("admin", &admin));
    objects.push(ingress(
        "cafe",
        "2020-01-01T00:00:00Z",
        "cafe.example.com",
        vec![
            path("/public", "Prefix", "public"),
            path("/admin", "Exact", "admin"),
        ],
        None,
    ));
    Ok((start(config, &objects).await?, public, admin))
}

/// What a raw HTTP/1 exchange gave: every status code in the byte stream, and whether (and
/// when) the proxy closed the connection.
#[derive(Debug)]
struct RawReply {
    statuses: Vec<u16>,
    closed_after: Option<Duration>,
    text: String,
}

/// Writes `request`, then reads until the proxy closes or `wait` passes.
async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> Result<RawReply> {
    let mut stream = TcpStream::connect(addr).await?;
    let started = Instant::now();
    stream.write_all(request).await?;
    let mut buf = Vec::new();
    let closed_after = loop {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at((started + wait).into(), stream.read(&mut chunk)).await {
            Err(_) => break None,
            Ok(Ok(0)) | Ok(Err(_)) => break Some(started.elapsed()),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let text = String::from_utf8_lossy(&buf).into_owned();
    let statuses = text
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect();
    Ok(RawReply {
        statuses,
        closed_after,
        text,
    })
}

// ---------------------------------------------------------------------------------------------
// Slowloris.

/// Request headers dribbled a byte at a time (each gap well under the timeout) are cut at the
/// header timeout counted from the first byte: dribbling does not extend it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_are_cut_at_the_header_timeout() -> Result<()> {
    let config = IngressConfig {
        client_idle_timeout: Duration::from_secs(1),
        ..IngressConfig::default()
    };
    let (p, public, _) = cafe(config).await?;
    let mut stream = TcpStream::connect(p.http).await?;
    let started = Instant::now();
    stream
        .write_all(b"GET /public HTTP/1.1\r\nHost: cafe.example.com\r\n")
        .await?;
    let mut closed = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if stream.write_all(b"X").await.is_err() {
            closed = Some(started.elapsed());
            break;
        }
        let mut probe = [0u8; 256];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await
        {
            closed = Some(started.elapsed());
            break;
        }
    }
    let closed = closed.context("the dribbling connection was never closed")?;
    eprintln!("slowloris: headers dribbled every 100 ms cut after {closed:?} (timeout 1 s)");
    ensure!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(2),
        "closed after {closed:?}"
    );
    ensure!(public.paths().is_empty(), "nothing reached the backend");
    Ok(())
}

/// 500 connections sending half a header each do not stop others from being served (default
/// settings: they hold client slots only, never a backend connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_crowd_does_not_starve_other_clients() -> Result<()> {
    let (p, public, _) = cafe(IngressConfig::default()).await?;
    let mut crowd = Vec::new();
    for _ in 0..500 {
        let mut s = TcpStream::connect(p.http).await?;
        s.write_all(b"GET /public HTTP/1.1\r\nHost: cafe.exa")
            .await?;
        crowd.push(s);
    }
    let started = Instant::now();
    let reply = raw(
        p.http,
        b"GET /public/ok HTTP/1.1\r\nHost: cafe.example.com\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await?;
    let took = started.elapsed();
    eprintln!("slowloris: with 500 half-sent requests open, a request took {took:?}");
    ensure!(reply.statuses == [200], "{reply:?}");
    ensure!(public.paths() == ["/public/ok"], "{:?}", public.paths());
    ensure!(took < Duration::from_secs(1), "served in {took:?}");
    drop(crowd);
    Ok(())
}

/// A body dribbled with gaps shorter than `client_body_timeout` is accepted (per-gap timeout,
/// as nginx's `client_body_timeout`), and while it arrives the backend sees nothing: small
/// bodies are buffered before an endpoint is dialled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_body_holds_no_backend_connection() -> Result<()> {
    let config = IngressConfig {
        client_body_timeout: Duration::from_secs(1),
        ..IngressConfig::default()
    };
    let (p, public, _) = cafe(config).await?;
    let mut s = TcpStream::connect(p.http).await?;
    s.write_all(
        b"POST /public/upload HTTP/1.1\r\nHost: cafe.example.com\r\nContent-Length: 10\r\n\
          Connection: close\r\n\r\n",
    )
    .await?;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        ensure!(
            public.seen().is_empty(),
            "backend dialled before the body was complete"
        );
        s.write_all(b"x").await?;
    }
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut reply)).await??;
    ensure!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let seen = public.seen();
    ensure!(seen.len() == 1 && seen[0].body_len == 10, "{seen:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Request smuggling.

/// Every ambiguous framing is refused with 400 and the connection closed, or (CL+TE, which
/// RFC 9112 lets a server process by Transfer-Encoding) answered once and closed: the request
/// hidden in the body never reaches a backend as a request of its own, and what reaches the
/// backend never carries both framings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_variants_are_refused_or_closed() -> Result<()> {
    let (p, public, admin) = cafe(IngressConfig::default()).await?;
    let smuggled = "GET /admin HTTP/1.1\r\nHost: cafe.example.com\r\n\r\n";
    let head = "POST /public/form HTTP/1.1\r\nHost: cafe.example.com\r\n";
    let cases: Vec<(&str, String, &[u16])> = vec![
        (
            "CL + TE",
            format!(
                "{head}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            &[400, 200],
        ),
        (
            "TE + CL, CL covering the smuggled request",
            format!(
                "{head}Transfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n0\r\n\r\n{smuggled}",
                5 + smuggled.len()
            ),
            &[400, 200],
        ),
        (
            "two different Content-Lengths",
            format!("{head}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!{smuggled}"),
            &[400],
        ),
        (
            "Content-Length list",
            format!("{head}Content-Length: 5, 6\r\n\r\nhello!{smuggled}"),
            &[400],
        ),
        (
            "obs-fold",
            format!("{head}X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n{smuggled}"),
            &[400],
        ),
        (
            "space before the colon",
            format!("{head}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"),
            &[400],
        ),
        (
            "chunked not the final coding",
            format!("{head}Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n{smuggled}"),
            &[400, 501],
        ),
        (
            "unknown transfer coding",
            format!("{head}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"),
            &[400, 501],
        ),
        (
            "chunk size overflow",
            format!(
                "{head}Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nx\r\n0\r\n\r\n{smuggled}"
            ),
            &[400],
        ),
        (
            "NUL in a header value",
            format!("{head}X-Nul: a\0b\r\nContent-Length: 0\r\n\r\n{smuggled}"),
            &[400],
        ),
    ];
    for (name, request, allowed) in cases {
        let before = public.seen().len();
        let reply = raw(p.http, request.as_bytes(), Duration::from_secs(3)).await?;
        let status = reply.statuses.first().copied().unwrap_or(0);
        eprintln!(
            "smuggling: {name}: {:?}, closed after {:?}",
            reply.statuses, reply.closed_after
        );
        ensure!(
            allowed.contains(&status),
            "{name}: status {status}: {}",
            reply.text
        );
        ensure!(
            reply.statuses.len() == 1,
            "{name}: one response only: {}",
            reply.text
        );
        ensure!(
            reply.closed_after.is_some(),
            "{name}: the connection must be closed"
        );
        ensure!(
            admin.paths().is_empty(),
            "{name}: the hidden request reached admin"
        );
        let new: Vec<Seen> = public.seen().into_iter().skip(before).collect();
        if status == 400 {
            ensure!(
                new.is_empty(),
                "{name}: refused, yet the backend saw {new:?}"
            );
        }
        for seen in &new {
            let framing = |h: &str| seen.headers.iter().any(|(k, _)| k == h);
            ensure!(
                !(framing("content-length") && framing("transfer-encoding")),
                "{name}: backend got both framings: {seen:?}"
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Paths and hosts.

/// Paths spelled to escape `/public` (or reach `/admin` through it) are routed by their
/// normalised form, and the backend receives exactly that form: it can never be told a path
/// other than the one the route matched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_never_escape_a_route() -> Result<()> {
    let (p, public, admin) = cafe(IngressConfig::default()).await?;
    // (request target, status, backend, path the backend must see)
    let cases: &[(&str, u16, &str, &str)] = &[
        ("/public/../admin", 200, "admin", "/admin"),
        ("/public/%2e%2e/admin", 200, "admin", "/admin"),
        ("/public/%2E%2E%2Fadmin", 200, "admin", "/admin"),
        ("/public/..%2fsecret", 404, "", ""),
        ("/public%2F..%2F..%2Fsecret", 404, "", ""),
        ("/public/./x/../y", 200, "public", "/public/y"),
        ("//public//x", 200, "public", "/public/x"),
        (
            "/public/%252e%252e/secret",
            200,
            "public",
            "/public/%252e%252e/secret",
        ),
        (
            "/public/%c0%ae%c0%ae/secret",
            200,
            "public",
            "/public/%C0%AE%C0%AE/secret",
        ),
        ("/public;/../secret", 404, "", ""),
        ("/Public", 404, "", ""),
        ("/publicity", 404, "", ""),
        ("/admin/", 404, "", ""),
        ("/admin/../admin", 200, "admin", "/admin"),
        (
            "/public?next=/../admin",
            200,
            "public",
            "/public?next=/../admin",
        ),
        ("/public/%00", 200, "public", "/public/%00"),
        ("/public/%zz", 400, "", ""),
        // A backslash is an ordinary character (as in nginx on Linux): one segment, no route.
        ("/public\\..\\admin", 404, "", ""),
        ("/../../../../admin", 200, "admin", "/admin"),
        ("*", 400, "", ""),
    ];
    for (target, status, backend, seen_path) in cases {
        let (before_public, before_admin) = (public.paths().len(), admin.paths().len());
        let request =
            format!("GET {target} HTTP/1.1\r\nHost: cafe.example.com\r\nConnection: close\r\n\r\n");
        let reply = raw(p.http, request.as_bytes(), Duration::from_secs(3)).await?;
        let got = reply.statuses.first().copied().unwrap_or(0);
        ensure!(
            got == *status,
            "{target}: {got} (want {status}): {}",
            reply.text
        );
        let new_public: Vec<String> = public.paths().into_iter().skip(before_public).collect();
        let new_admin: Vec<String> = admin.paths().into_iter().skip(before_admin).collect();
        let (hit, other) = match *backend {
            "public" => (new_public, new_admin),
            "admin" => (new_admin, new_public),
            _ => {
                ensure!(
                    new_public.is_empty() && new_admin.is_empty(),
                    "{target}: a backend was reached"
                );
                continue;
            }
        };
        ensure!(
            hit == [seen_path.to_string()],
            "{target}: {backend} saw {hit:?}"
        );
        ensure!(
            other.is_empty(),
            "{target}: the other backend saw {other:?}"
        );
    }
    Ok(())
}

/// Upper case, a port and a trailing dot are the same host (HTTP/1 `Host` and HTTP/2
/// `:authority`); a different host is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_spellings_route_to_the_same_host() -> Result<()> {
    let (p, public, _) = cafe(IngressConfig::default()).await?;
    for (host, status) in [
        ("CAFE.EXAMPLE.COM", 200),
        ("Cafe.Example.Com:80", 200),
        ("cafe.example.com.", 200),
        ("CAFE.example.com.:8080", 200),
        ("cafe.example.com.evil.test", 404),
        ("evil.test.cafe.example.com", 404),
        ("cafe.example.co", 404),
    ] {
        let request = format!("GET /public HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let reply = raw(p.http, request.as_bytes(), Duration::from_secs(3)).await?;
        ensure!(reply.statuses == [status], "Host {host:?}: {}", reply.text);
    }
    for authority in ["CAFE.EXAMPLE.COM", "cafe.example.com.:80"] {
        let mut h2 = H2::connect(p.http).await?;
        h2.send(&frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1,
            &request_block(authority, "/public"),
        ))
        .await?;
        let frames = h2.read_for(Duration::from_secs(2)).await;
        ensure!(
            frames
                .iter()
                .any(|f| f.kind == HEADERS && f.stream == 1 && f.payload.first() == Some(&0x88)),
            ":authority {authority}: no 200 in {frames:?}"
        );
    }
    ensure!(public.paths().len() == 6, "{:?}", public.paths());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 floods (h2c prior knowledge on the plain port).

const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;

#[derive(Debug)]
struct Frame {
    kind: u8,
    #[allow(dead_code)]
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame payload fits");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK integer with an `n`-bit prefix and the given high bits.
fn hpack_int(out: &mut Vec<u8>, high: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A literal header without indexing, new name, no Huffman coding.
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    hpack_int(out, 0, 7, name.len());
    out.extend(name.as_bytes());
    hpack_int(out, 0, 7, value.len());
    out.extend(value.as_bytes());
}

/// `GET http://AUTHORITY/PATH` as an HPACK block: `:method GET` and `:scheme http` from the
/// static table, `:path` and `:authority` as literals with indexed names.
fn request_block(authority: &str, path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86];
    b.push(0x04);
    hpack_int(&mut b, 0, 7, path.len());
    b.extend(path.as_bytes());
    b.push(0x01);
    hpack_int(&mut b, 0, 7, authority.len());
    b.extend(authority.as_bytes());
    b
}

/// A raw HTTP/2 client connection: preface and SETTINGS exchanged (ours empty, theirs acked).
struct H2 {
    write: tokio::net::tcp::OwnedWriteHalf,
    frames: tokio::sync::mpsc::UnboundedReceiver<Frame>,
    /// The server's SETTINGS (id, value).
    settings: Vec<(u16, u32)>,
}

async fn read_frame(r: &mut tokio::net::tcp::OwnedReadHalf) -> Option<Frame> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

impl H2 {
    async fn connect(addr: SocketAddr) -> Result<H2> {
        let (mut read, mut write) = TcpStream::connect(addr).await?.into_split();
        write.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        write.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
        let settings = loop {
            let f = tokio::time::timeout(Duration::from_secs(2), read_frame(&mut read))
                .await?
                .context("no SETTINGS from the server")?;
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                break f
                    .payload
                    .chunks_exact(6)
                    .map(|c| {
                        (
                            u16::from_be_bytes([c[0], c[1]]),
                            u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                        )
                    })
                    .collect();
            }
        };
        write.write_all(&frame(SETTINGS, ACK, 0, &[])).await?;
        let (tx, frames) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(f) = read_frame(&mut read).await {
                if tx.send(f).is_err() {
                    return;
                }
            }
        });
        Ok(H2 {
            write,
            frames,
            settings,
        })
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write.write_all(bytes).await
    }

    /// Frames received within `wait`, or until the server closes.
    async fn read_for(&mut self, wait: Duration) -> Vec<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        while let Ok(Some(f)) = tokio::time::timeout_at(deadline, self.frames.recv()).await {
            out.push(f);
        }
        out
    }
}

/// CVE-2023-44487: requests opened and cancelled at once, 10,000 of them on one connection.
/// The server must stop the connection (GOAWAY) long before, and few of them may reach a
/// backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_is_cut_off() -> Result<()> {
    let (p, public, _) = cafe(IngressConfig::default()).await?;
    let mut h2 = H2::connect(p.http).await?;
    let block = request_block("cafe.example.com", "/public/reset");
    let mut sent = 0;
    for batch in 0..100u32 {
        let mut bytes = Vec::new();
        for i in 0..100u32 {
            let stream = 2 * (batch * 100 + i) + 1;
            bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, stream, &block));
            bytes.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
        }
        if h2.send(&bytes).await.is_err() {
            break;
        }
        sent += 100;
    }
    let frames = h2.read_for(Duration::from_secs(3)).await;
    let goaway = frames.iter().find(|f| f.kind == GOAWAY);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reached = public.paths().len();
    eprintln!(
        "rapid reset: {sent} HEADERS+RST_STREAM written before the server stopped reading; \
         GOAWAY {:?}; {reached} requests reached the backend",
        goaway.and_then(Frame::error_code)
    );
    ensure!(goaway.is_some(), "no GOAWAY after {sent} rapid resets");
    ensure!(
        reached <= 1000,
        "{reached} of the cancelled requests reached the backend"
    );
    // The proxy itself is fine.
    let reply = raw(
        p.http,
        b"GET /public/after HTTP/1.1\r\nHost: cafe.example.com\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await?;
    ensure!(reply.statuses == [200], "{reply:?}");
    Ok(())
}

/// CVE-2024-27316 and kin: a header block that never ends, sent as CONTINUATION frames —
/// first 16 KiB frames of headers, then empty frames. The server must give up after about its
/// header list limit (32 KiB) or a bounded number of frames, not buffer without end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_continuation_flood_is_cut_off() -> Result<()> {
    let (p, public, _) = cafe(IngressConfig::default()).await?;
    for (name, payload) in [
        ("16 KiB frames of headers", continuation_headers()),
        ("empty frames", Vec::new()),
    ] {
        let mut h2 = H2::connect(p.http).await?;
        let block = request_block("cafe.example.com", "/public/flood");
        h2.send(&frame(HEADERS, 0, 1, &block)).await?;
        let mut sent_bytes = block.len();
        let mut frames_sent = 0;
        while frames_sent < 100_000 && sent_bytes < 64 << 20 {
            let mut batch = Vec::new();
            for _ in 0..64 {
                batch.extend(frame(CONTINUATION, 0, 1, &payload));
            }
            if h2.send(&batch).await.is_err() {
                break;
            }
            frames_sent += 64;
            sent_bytes += 64 * payload.len();
        }
        let frames = h2.read_for(Duration::from_secs(3)).await;
        let goaway = frames
            .iter()
            .find(|f| f.kind == GOAWAY)
            .and_then(Frame::error_code);
        eprintln!(
            "CONTINUATION flood ({name}): {frames_sent} frames / {sent_bytes} bytes written \
             before the server stopped reading; GOAWAY {goaway:?}; frames back {:?}",
            frames.iter().map(|f| f.kind).collect::<Vec<_>>()
        );
        ensure!(goaway.is_some(), "{name}: no GOAWAY");
        ensure!(
            frames_sent < 100_000 && sent_bytes < 64 << 20,
            "{name}: the server kept reading"
        );
    }
    ensure!(public.paths().is_empty(), "{:?}", public.paths());
    Ok(())
}

/// One CONTINUATION payload: literal headers filling 16 KiB (the default max frame size).
fn continuation_headers() -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < 16_000 {
        hpack_literal(&mut out, &format!("x-flood-{i}"), &"v".repeat(1000));
        i += 1;
    }
    out.truncate(16_384);
    out
}

/// More streams at once than the server allows (it advertises 200): the surplus is refused
/// with RST_STREAM(REFUSED_STREAM), at most the limit reaches the backend at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_too_many_concurrent_streams_are_refused() -> Result<()> {
    let (p, public, _) = cafe(IngressConfig::default()).await?;
    let mut h2 = H2::connect(p.http).await?;
    let limit = h2
        .settings
        .iter()
        .find(|(id, _)| *id == 0x3)
        .map(|(_, v)| *v)
        .context("no SETTINGS_MAX_CONCURRENT_STREAMS")?;
    let slow = request_block("cafe.example.com", "/slow");
    let mut bytes = Vec::new();
    let opened = limit + 50;
    for i in 0..opened {
        bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1, &slow));
    }
    h2.send(&bytes).await?;
    let frames = h2.read_for(Duration::from_secs(1)).await;
    let refused = frames
        .iter()
        .filter(|f| f.kind == RST_STREAM && f.error_code() == Some(REFUSED_STREAM))
        .count();
    let goaway = frames
        .iter()
        .find(|f| f.kind == GOAWAY)
        .and_then(Frame::error_code);
    let at_backend = public.paths().len();
    eprintln!(
        "concurrent streams: limit {limit}, opened {opened}: {refused} refused, GOAWAY \
         {goaway:?}, {at_backend} at the backend within 1 s"
    );
    ensure!(limit <= 1000, "SETTINGS_MAX_CONCURRENT_STREAMS {limit}");
    ensure!(
        at_backend <= limit as usize,
        "{at_backend} requests at the backend at once"
    );
    ensure!(
        refused >= 50 || goaway.is_some(),
        "the surplus streams were neither refused nor the connection stopped: {refused}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// TLS without SNI and with unknown SNI.

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS connection offering `server_name` (an IP address: no SNI extension at all) and the
/// `Host` of the one request sent over it: (CN of the certificate presented, status).
async fn tls_request(addr: SocketAddr, server_name: &str, host: &str) -> Result<(String, u16)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())?;
    let mut tls = connector
        .connect(name, TcpStream::connect(addr).await?)
        .await?;
    let der = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no certificate")?
        .to_vec();
    let request = format!("GET /public HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut reply)).await;
    let text = String::from_utf8_lossy(&reply);
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((common_name(&der), status))
}

/// The CN of a certificate, found by its printable text (the test certificates hold one).
fn common_name(der: &[u8]) -> String {
    let text = String::from_utf8_lossy(der);
    if text.contains("Kubernetes Ingress Controller Fake Certificate") {
        return "generated default".into();
    }
    ["a.example.com", "b.example.com"]
        .iter()
        .find(|cn| text.contains(*cn))
        .map_or_else(|| "?".into(), |cn| cn.to_string())
}

/// Two hosts with their own certificates: without SNI, or with a name no certificate has,
/// the handshake completes with the default certificate (without `--default-ssl-certificate`
/// the generated one, as ingress-nginx's: never another host's), and the request is routed by
/// its `Host`; SNI of one host with `Host` of the
/// other is routed by `Host` too (as nginx does), each host serving only its own paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_sni_and_unknown_sni_get_the_default_certificate() -> Result<()> {
    let dir = tempdir()?;
    let public = Backend::start("public").await?;
    let mut objects = vec![ingress_class()];
    objects.extend(service("public", &public));
    for (name, host, created) in [
        ("a", "a.example.com", "2020-01-01T00:00:00Z"),
        ("b", "b.example.com", "2021-01-01T00:00:00Z"),
    ] {
        let pair = sluice_tests::certs::self_signed(&dir, host)?;
        objects.push(
            json!({"kind": "Secret", "metadata": {"namespace": "default", "name": name},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem}}),
        );
        objects.push(ingress(
            name,
            created,
            host,
            vec![path("/public", "Prefix", "public")],
            Some(name),
        ));
    }
    let p = start(IngressConfig::default(), &objects).await?;
    for (server_name, host, cert, status) in [
        ("a.example.com", "a.example.com", "a.example.com", 200),
        ("b.example.com", "b.example.com", "b.example.com", 200),
        ("127.0.0.1", "b.example.com", "generated default", 200),
        (
            "unknown.example.org",
            "b.example.com",
            "generated default",
            200,
        ),
        (
            "unknown.example.org",
            "unknown.example.org",
            "generated default",
            404,
        ),
        ("a.example.com", "b.example.com", "a.example.com", 200),
    ] {
        let got = tls_request(p.https, server_name, host).await?;
        ensure!(
            got == (cert.to_string(), status),
            "SNI {server_name} Host {host}: {got:?}, want ({cert}, {status})"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("sluice-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

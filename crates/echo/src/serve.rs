//! The echo servers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HOST, HeaderValue, UPGRADE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

use crate::wire::Greeting;
use crate::{EchoError, sock};

/// What to listen on. IPv6 addresses are bound IPv6-only, so `0.0.0.0:P` and `[::]:P` can be
/// given together.
#[derive(Debug, Clone, Default)]
pub struct ServeConfig {
    pub name: String,
    pub tcp: Vec<SocketAddr>,
    pub udp: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
    pub sctp: Vec<SocketAddr>,
}

/// All sockets bound; [`Bound::run`] serves them.
pub struct Bound {
    name: Arc<str>,
    tcp: Vec<(SocketAddr, TcpListener)>,
    udp: Vec<(SocketAddr, UdpSocket)>,
    http: Vec<(SocketAddr, TcpListener)>,
    sctp: Vec<(SocketAddr, TcpListener)>,
}

fn bind_each<T>(
    addrs: &[SocketAddr],
    proto: &'static str,
    f: impl Fn(SocketAddr) -> std::io::Result<T>,
) -> Result<Vec<(SocketAddr, T)>, EchoError> {
    addrs
        .iter()
        .map(|&addr| {
            f(addr)
                .map(|s| (addr, s))
                .map_err(|source| EchoError::Bind {
                    proto,
                    addr,
                    source,
                })
        })
        .collect()
}

/// Binds every socket of `cfg` (must run inside a tokio runtime). Fails on the first address
/// that cannot be bound, so "ready" means everything listens.
pub fn bind(cfg: &ServeConfig) -> Result<Bound, EchoError> {
    if cfg.tcp.is_empty() && cfg.udp.is_empty() && cfg.http.is_empty() && cfg.sctp.is_empty() {
        return Err(EchoError::NothingToServe);
    }
    Ok(Bound {
        name: Arc::from(cfg.name.as_str()),
        tcp: bind_each(&cfg.tcp, "tcp", |a| sock::listener(a, false))?,
        udp: bind_each(&cfg.udp, "udp", sock::udp)?,
        http: bind_each(&cfg.http, "http", |a| sock::listener(a, false))?,
        sctp: bind_each(&cfg.sctp, "sctp", |a| sock::listener(a, true))?,
    })
}

impl Bound {
    /// Serves until one server fails (an accept error that is not per-connection).
    pub async fn run(self) -> Result<(), EchoError> {
        let mut set = JoinSet::new();
        for (addr, l) in self.tcp {
            set.spawn(stream_server("tcp", addr, l, self.name.clone()));
        }
        for (addr, l) in self.sctp {
            set.spawn(stream_server("sctp", addr, l, self.name.clone()));
        }
        for (addr, s) in self.udp {
            set.spawn(udp_server(addr, s, self.name.clone()));
        }
        for (addr, l) in self.http {
            set.spawn(http_server(addr, l, self.name.clone()));
        }
        while let Some(res) = set.join_next().await {
            match res {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(join) => {
                    tracing::error!(error = %join, "server task died");
                }
            }
        }
        Ok(())
    }
}

async fn accept(
    proto: &'static str,
    addr: SocketAddr,
    l: &TcpListener,
) -> Result<Option<(TcpStream, SocketAddr)>, EchoError> {
    match l.accept().await {
        Ok(pair) => Ok(Some(pair)),
        // Per-connection failures (peer reset before accept, fd pressure) must not stop the pod.
        Err(e) if is_transient(&e) => {
            tracing::warn!(proto, %addr, error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(None)
        }
        Err(source) => Err(EchoError::Serve {
            proto,
            addr,
            source,
        }),
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionAborted | K::ConnectionReset | K::Interrupted | K::WouldBlock
    ) || matches!(e.raw_os_error(), Some(23 | 24)) // ENFILE, EMFILE
}

async fn stream_server(
    proto: &'static str,
    addr: SocketAddr,
    l: TcpListener,
    name: Arc<str>,
) -> Result<(), EchoError> {
    loop {
        let Some((stream, peer)) = accept(proto, addr, &l).await? else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            if let Err(e) = stream_conn(stream, peer, &name).await {
                tracing::debug!(proto, %peer, error = %e, "connection ended with error");
            }
        });
    }
}

/// Greets, then answers every line with `NAME: LINE` until EOF.
async fn stream_conn(stream: TcpStream, peer: SocketAddr, name: &str) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let greeting = Greeting {
        pod: name.to_owned(),
        client: peer,
    };
    w.write_all(format!("{greeting}\n").as_bytes()).await?;
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        w.write_all(format!("{name}: {line}\n").as_bytes()).await?;
    }
    Ok(())
}

async fn udp_server(addr: SocketAddr, s: UdpSocket, name: Arc<str>) -> Result<(), EchoError> {
    let mut buf = vec![0u8; 65536];
    loop {
        let peer = match s.recv_from(&mut buf).await {
            Ok((_, peer)) => peer,
            // ICMP errors from earlier replies surface here; they concern one peer only.
            Err(e) => {
                tracing::debug!(%addr, error = %e, "udp receive failed");
                continue;
            }
        };
        let greeting = Greeting {
            pod: name.to_string(),
            client: peer,
        };
        if let Err(e) = s.send_to(format!("{greeting}\n").as_bytes(), peer).await {
            tracing::debug!(%addr, %peer, error = %e, "udp reply failed");
        }
    }
}

async fn http_server(addr: SocketAddr, l: TcpListener, name: Arc<str>) -> Result<(), EchoError> {
    loop {
        let Some((stream, peer)) = accept("http", addr, &l).await? else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, name.clone(), peer));
            // `auto` speaks HTTP/1.1 and h2c (prior knowledge) on the same port.
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "http connection ended with error");
            }
        });
    }
}

type Body = Full<Bytes>;

fn text(status: StatusCode, name: &str, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(name) {
        resp.headers_mut().insert("x-pod", v);
    }
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    resp
}

fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn is_websocket_upgrade(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

async fn handle(
    req: Request<Incoming>,
    name: Arc<str>,
    peer: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();

    if path == "/ws" && is_websocket_upgrade(&req) {
        return Ok(websocket(req, name));
    }

    let mut status = StatusCode::OK;
    if let Some(code) = path.strip_prefix("/status/") {
        match code.parse::<u16>().ok().filter(|c| (200..=599).contains(c)) {
            Some(c) => status = StatusCode::from_u16(c).unwrap_or(StatusCode::OK),
            None => {
                return Ok(text(
                    StatusCode::BAD_REQUEST,
                    &name,
                    format!("bad status code {code:?}\n"),
                ));
            }
        }
    }
    if path == "/slow" {
        let ms = query_param(req.uri().query(), "ms")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    let host = req
        .headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let mut body = format!(
        "pod={name}\nclient={peer}\nmethod={}\nhost={host}\npath={}\nversion={:?}\n",
        req.method(),
        req.uri().path_and_query().map_or("/", |p| p.as_str()),
        req.version(),
    );
    for (k, v) in req.headers() {
        let k = k.as_str();
        if k.starts_with("x-forwarded-") || k == "x-request-id" || k == "forwarded" {
            body.push_str(&format!("{k}={}\n", String::from_utf8_lossy(v.as_bytes())));
        }
    }
    // Read the request body so clients can test uploads; report only its size.
    let received = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "request body failed");
            0
        }
    };
    body.push_str(&format!("body_bytes={received}\n"));
    Ok(text(status, &name, body))
}

/// Answers 101 and echoes raw bytes on the upgraded connection (no WebSocket framing: enough
/// to test that a proxy passes upgrades through).
fn websocket(req: Request<Incoming>, name: Arc<str>) -> Response<Body> {
    let accept = req
        .headers()
        .get("sec-websocket-key")
        .and_then(|k| k.to_str().ok())
        .map(crate::ws::accept_key);
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let mut io = TokioIo::new(upgraded);
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        Err(_) => break,
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    let mut resp = text(StatusCode::SWITCHING_PROTOCOLS, &name, String::new());
    resp.headers_mut().remove("content-type");
    resp.headers_mut()
        .insert(UPGRADE, HeaderValue::from_static("websocket"));
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Some(v) = accept.and_then(|a| HeaderValue::from_str(&a).ok()) {
        resp.headers_mut().insert("sec-websocket-accept", v);
    }
    resp
}

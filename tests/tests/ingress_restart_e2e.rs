//! Ingress restarts without failures. Continuous HTTP/1.1 keep-alive, HTTP/2 (h2c) and
//! WebSocket load runs from the client through node-a's Ingress while its agent is replaced
//! five times the way a DaemonSet rolling update with `maxSurge: 1, maxUnavailable: 0`
//! replaces it: the new agent starts next to the old one (and takes its listening sockets
//! over), and once the new one is available (ready for `minReadySeconds`) the old one gets
//! SIGTERM; it has been draining since the new one synced. No request may
//! fail: the clients never retry a request they sent (only one hyper proves it never sent,
//! on a connection the server had already closed).
//!
//! Needs root and the binaries (`cargo build -p sluice-agent -p sluice-echo`).

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_tests::manifests::{
    IngressPath, Port, Service, endpoint_slices, ingress, ingress_class, yaml_docs,
};
use sluice_tests::{At, Cluster, ECHO_HTTP_PORT, Mode};

const HOST: &str = "shop.example.test";
const RESTARTS: usize = 5;
/// `--ingress-drain-timeout` of the agents under test.
const DRAIN: Duration = Duration::from_secs(5);
/// The DaemonSet's `minReadySeconds` (5 s in manifests/daemonset.yaml, shorter here): the
/// old pod is deleted once the new one has been ready this long. A readiness probe sent
/// before the new agent took the sockets over is answered by the old one; this is what keeps
/// such an early 200 from retiring the old agent before the new one is there.
const MIN_READY: Duration = Duration::from_secs(2);
/// The service's `healthCheckNodePort` (eTP=Local): a listener handed over too.
const HEALTH_CHECK_PORT: u16 = 32000;

/// What one kind of load saw.
#[derive(Debug, Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    /// New connections opened (after the server closed one: `Connection: close`, GOAWAY).
    connections: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn ok(&self) {
        self.ok.fetch_add(1, Ordering::Relaxed);
    }

    fn failed(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 20 {
            errors.push(what);
        }
    }

    fn oks(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    fn fails(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// The client's network namespace.
fn client_ns(c: &Cluster) -> String {
    format!("/run/netns/{}-client", c.prefix())
}

/// Moves the calling thread into the network namespace `ns` (setns affects only it).
fn enter_client(ns: &str) -> Result<()> {
    let file = File::open(ns).with_context(|| format!("opening {ns}"))?;
    // SAFETY: setns on a descriptor we own; it changes only this thread's network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn connect(node: SocketAddr) -> Result<TokioIo<tokio::net::TcpStream>> {
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(node))
        .await
        .context("connect timed out")?
        .context("connect")?;
    stream.set_nodelay(true)?;
    Ok(TokioIo::new(stream))
}

fn request(n: u64, kind: &str) -> Result<Request<Empty<Bytes>>> {
    Ok(Request::get(format!("/{kind}/{n}"))
        .header("host", HOST)
        .body(Empty::new())?)
}

/// A response is right when it is a 200 from an echo pod that saw this very path.
async fn check(resp: hyper::Response<hyper::body::Incoming>, path: &str) -> Result<bool> {
    let status = resp.status();
    let close = resp
        .headers()
        .get("connection")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .context("body timed out")??
        .to_bytes();
    let body = String::from_utf8_lossy(&body);
    if status != 200 || !body.lines().any(|l| l == format!("path={path}")) {
        bail!("{status}: {body}");
    }
    Ok(close)
}

/// HTTP/1.1 keep-alive: requests back to back on one connection; a new connection only
/// after the server said `Connection: close` (or closed an idle connection).
async fn http1_load(node: SocketAddr, tally: &Tally, stop: &AtomicBool) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let sender = match http1_connection(node).await {
            Ok(s) => s,
            Err(e) => {
                tally.failed(format!("http1 connect: {e:#}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tally.connections.fetch_add(1, Ordering::Relaxed);
        let mut sender = sender;
        while !stop.load(Ordering::Relaxed) {
            if sender.ready().await.is_err() {
                break; // closed by the server while idle: nothing was sent
            }
            n += 1;
            let path = format!("/h1/{n}");
            let Ok(req) = request(n, "h1") else { return };
            let sent = tokio::time::timeout(Duration::from_secs(10), sender.try_send_request(req));
            match sent.await {
                Ok(Ok(resp)) => match check(resp, &path).await {
                    Ok(close) => {
                        tally.ok();
                        if close {
                            break;
                        }
                    }
                    Err(e) => {
                        tally.failed(format!("http1 {path}: {e:#}"));
                        break;
                    }
                },
                // Not sent: the connection was gone before the request left.
                Ok(Err(e)) if e.message().is_some() => break,
                Ok(Err(e)) => {
                    tally.failed(format!("http1 {path}: {}", e.into_error()));
                    break;
                }
                Err(_) => {
                    tally.failed(format!("http1 {path}: no response in 10 s"));
                    break;
                }
            }
        }
    }
}

async fn http1_connection(
    node: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(connect(node).await?).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// HTTP/2 with prior knowledge: two request loops share one connection; after GOAWAY a new
/// connection.
async fn http2_load(node: SocketAddr, tally: &Tally, stop: &AtomicBool) {
    let next = AtomicU64::new(0);
    while !stop.load(Ordering::Relaxed) {
        let sender = match http2_connection(node).await {
            Ok(s) => s,
            Err(e) => {
                tally.failed(format!("http2 connect: {e:#}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tally.connections.fetch_add(1, Ordering::Relaxed);
        let stream = |mut sender: hyper::client::conn::http2::SendRequest<Empty<Bytes>>| {
            let next = &next;
            async move {
                while !stop.load(Ordering::Relaxed) {
                    if sender.ready().await.is_err() {
                        return; // GOAWAY seen or closed: nothing was sent
                    }
                    let n = next.fetch_add(1, Ordering::Relaxed) + 1;
                    let path = format!("/h2/{n}");
                    let Ok(req) = request(n, "h2") else { return };
                    let sent =
                        tokio::time::timeout(Duration::from_secs(10), sender.try_send_request(req));
                    match sent.await {
                        Ok(Ok(resp)) => match check(resp, &path).await {
                            Ok(_) => tally.ok(),
                            Err(e) => return tally.failed(format!("http2 {path}: {e:#}")),
                        },
                        Ok(Err(e)) if e.message().is_some() => return,
                        Ok(Err(e)) => {
                            return tally.failed(format!("http2 {path}: {}", e.into_error()));
                        }
                        Err(_) => {
                            return tally.failed(format!("http2 {path}: no response in 10 s"));
                        }
                    }
                }
            }
        };
        tokio::join!(stream(sender.clone()), stream(sender));
    }
}

async fn http2_connection(
    node: SocketAddr,
) -> Result<hyper::client::conn::http2::SendRequest<Empty<Bytes>>> {
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), connect(node).await?).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// A WebSocket to the echo pod's `/ws` (raw echo after the 101).
struct WebSocket(TcpStream);

impl WebSocket {
    fn open(node: SocketAddr) -> Result<WebSocket> {
        let mut stream = TcpStream::connect_timeout(&node, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET /ws HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            anyhow::ensure!(head.len() < 8192, "response head too long");
            stream
                .read_exact(&mut byte)
                .with_context(|| format!("reading the 101 (so far {head:?})"))?;
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        anyhow::ensure!(head.starts_with("HTTP/1.1 101"), "no upgrade: {head}");
        Ok(WebSocket(stream))
    }

    fn echo(&mut self, msg: &str) -> Result<()> {
        self.0.write_all(msg.as_bytes())?;
        let mut buf = vec![0u8; msg.len()];
        self.0
            .read_exact(&mut buf)
            .with_context(|| format!("reading the echo of {msg:?}"))?;
        anyhow::ensure!(
            buf == msg.as_bytes(),
            "echo {:?}",
            String::from_utf8_lossy(&buf)
        );
        Ok(())
    }
}

/// WebSockets that live about a second each (five echoes 200 ms apart), one after another:
/// every open and every echo counts.
fn websocket_load(node: SocketAddr, tally: &Tally, stop: &AtomicBool) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut ws = match WebSocket::open(node) {
            Ok(ws) => ws,
            Err(e) => {
                tally.failed(format!("ws open: {e:#}"));
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        tally.connections.fetch_add(1, Ordering::Relaxed);
        for _ in 0..5 {
            n += 1;
            match ws.echo(&format!("message {n}\n")) {
                Ok(()) => tally.ok(),
                Err(e) => {
                    tally.failed(format!("ws echo {n}: {e:#}"));
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The WebSocket held open through the old agent of the last restart.
struct LongWebSocket {
    /// When the new agent was started: the old one drains from some moment after that (when
    /// the new one has synced), before `available`.
    new_agent: Instant,
    /// When the new agent had been ready for [`MIN_READY`].
    available: Instant,
    last_echo: Instant,
    ended: Instant,
}

/// Echoes on `ws` every 100 ms until the connection ends: (last echo, end).
fn hold_websocket(mut ws: WebSocket) -> (Instant, Instant) {
    let mut last_ok = Instant::now();
    for n in 0.. {
        if ws.echo(&format!("long {n}\n")).is_err() {
            break;
        }
        last_ok = Instant::now();
        std::thread::sleep(Duration::from_millis(100));
    }
    (last_ok, Instant::now())
}

fn cluster() -> Result<Cluster> {
    let mut c = Cluster::new(&["node-a", "node-b"])?;
    let web1 = c.add_pod("node-a", "web-1")?;
    let web2 = c.add_pod("node-b", "web-2")?;
    let mut docs = vec![
        ingress_class("sluice", "sluice.dev/ingress", true),
        Service::new("default", "web")
            .cluster_ips(&["10.96.0.40"])
            .port(Port::tcp(80, ECHO_HTTP_PORT).named("http").node_port(30080))
            .load_balancer_ips(&["203.0.113.40"])
            .external_traffic_policy("Local")
            .health_check_node_port(HEALTH_CHECK_PORT)
            .to_json(),
    ];
    docs.extend(endpoint_slices(
        "default",
        "web",
        &[("http", "TCP", ECHO_HTTP_PORT)],
        &[&web1, &web2],
    ));
    docs.push(ingress(
        "default",
        "shop",
        Some("sluice"),
        &[IngressPath {
            host: Some(HOST.into()),
            path: "/".into(),
            path_type: "Prefix".into(),
            service: "web".into(),
            port: 80,
        }],
        &[],
        None,
    ));
    c.write_manifest("shop.yaml", &yaml_docs(&docs))?;
    Ok(c)
}

// Both dataplanes: the old and the new agent program the same kernel state while they overlap.
sluice_tests::backend_tests!(five_agent_restarts_fail_no_request);

fn five_agent_restarts_fail_no_request(mode: Mode) -> Result<()> {
    let mut c = cluster()?;
    let drain = format!("{}s", DRAIN.as_secs());
    let args = ["--ingress-drain-timeout", drain.as_str()];
    c.start_agent("node-a", mode, &args)?;
    let node = c.node("node-a")?.v4(80);
    let (h1, h2, ws) = (Tally::default(), Tally::default(), Tally::default());
    let stop = AtomicBool::new(false);
    let started = Instant::now();

    let ns = client_ns(&c);
    let ns = ns.as_str();
    let (restarts, long_ws) = std::thread::scope(|s| -> Result<_> {
        let workers = [
            s.spawn(|| -> Result<()> {
                enter_client(ns)?;
                runtime()?.block_on(async {
                    tokio::join!(http1_load(node, &h1, &stop), http1_load(node, &h1, &stop));
                });
                Ok(())
            }),
            s.spawn(|| -> Result<()> {
                enter_client(ns)?;
                runtime()?.block_on(http2_load(node, &h2, &stop));
                Ok(())
            }),
            s.spawn(|| -> Result<()> {
                enter_client(ns)?;
                websocket_load(node, &ws, &stop);
                Ok(())
            }),
        ];
        let outcome = restart_five_times(&mut c, mode, node, [&h1, &h2, &ws]);
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a load worker panicked"))??;
        }
        outcome
    })?;

    let total = |t: &Tally| t.oks() + t.fails();
    eprintln!(
        "ingress restarts ({}): {RESTARTS} agent restarts in {:.1?}; requests made / failed: \
         HTTP/1.1 {} / {} ({} connections), HTTP/2 {} / {} ({} connections), \
         WebSocket echoes {} / {} ({} WebSockets)",
        mode.as_str(),
        started.elapsed(),
        total(&h1),
        h1.fails(),
        h1.connections.load(Ordering::Relaxed),
        total(&h2),
        h2.fails(),
        h2.connections.load(Ordering::Relaxed),
        total(&ws),
        ws.fails(),
        ws.connections.load(Ordering::Relaxed),
    );
    for r in &restarts {
        eprintln!("  {r}");
    }
    let errors: Vec<String> = [&h1, &h2, &ws]
        .iter()
        .flat_map(|t| t.errors.lock().unwrap().clone())
        .collect();
    assert!(errors.is_empty(), "failed requests: {errors:#?}");
    for (name, t) in [("HTTP/1.1", &h1), ("HTTP/2", &h2), ("WebSocket", &ws)] {
        assert!(
            t.oks() >= 50,
            "too little {name} load to mean anything: {}",
            t.oks()
        );
    }
    // Each restart made the clients move: HTTP/1.1 told to close, HTTP/2 sent GOAWAY.
    assert!(
        h1.connections.load(Ordering::Relaxed) > RESTARTS as u64,
        "{h1:?}"
    );
    assert!(
        h2.connections.load(Ordering::Relaxed) > RESTARTS as u64,
        "{h2:?}"
    );

    let log = c.agent_log("node-a");
    let count = |needle: &str| log.matches(needle).count();
    assert_eq!(
        count("took its listening sockets over"),
        RESTARTS,
        "every new agent took the sockets over"
    );
    // Each old agent drained (told by its successor, or by the SIGTERM when that came first).
    assert_eq!(count("ingress: stopped accepting; draining"), RESTARTS);
    let hc_taken = format!("taken over from the previous agent local=0.0.0.0:{HEALTH_CHECK_PORT}");
    assert_eq!(
        count(&hc_taken),
        RESTARTS,
        "the health check port was handed over"
    );
    assert_eq!(count("cannot open the health check node port"), 0);

    // The WebSocket open across the last restart was kept until the drain timeout: it
    // echoed until at least DRAIN after the new agent started (the drain starts later), and
    // it was closed at the latest DRAIN after the new agent was available (the drain started
    // before), plus slack.
    let LongWebSocket {
        new_agent,
        available,
        last_echo,
        ended,
    } = long_ws;
    let since = |t: Instant| t.saturating_duration_since(new_agent);
    eprintln!(
        "  a WebSocket open through the retiring agent: new agent available after {:.1?}, last \
         echo after {:.1?}, closed after {:.1?}",
        since(available),
        since(last_echo),
        since(ended)
    );
    assert!(
        since(last_echo) >= DRAIN - Duration::from_millis(500),
        "cut before the drain timeout"
    );
    assert!(
        ended <= available + DRAIN + Duration::from_secs(2),
        "still open well after the drain timeout"
    );
    Ok(())
}

/// One rolling update step after another; the last one with a WebSocket held open through
/// the old agent. Returns a line per restart and the long WebSocket's times.
fn restart_five_times(
    c: &mut Cluster,
    mode: Mode,
    node: SocketAddr,
    tallies: [&Tally; 3],
) -> Result<(Vec<String>, LongWebSocket)> {
    let drain = format!("{}s", DRAIN.as_secs());
    let args = ["--ingress-drain-timeout", drain.as_str()];
    let oks = || tallies.map(Tally::oks);
    wait_for_load(&oks, [20, 20, 5])?;
    let mut lines = Vec::new();
    let mut long = None;
    let ns = client_ns(c);
    std::thread::scope(|s| -> Result<()> {
        for i in 1..=RESTARTS {
            let held = if i == RESTARTS {
                let ns = ns.as_str();
                let ws = s.spawn(move || -> Result<WebSocket> {
                    enter_client(ns)?;
                    WebSocket::open(node)
                });
                let ws = ws.join().map_err(|_| anyhow::anyhow!("panicked"))??;
                // Its thread stays in the test's namespace: the socket is the client's already.
                Some(s.spawn(move || hold_websocket(ws)))
            } else {
                None
            };
            let before = oks();
            let old = c.detach_agent("node-a")?;
            let t = Instant::now();
            // The new pod starts next to the old one; it is ready once healthz says 200, and
            // available once it stayed ready for MIN_READY.
            c.start_agent("node-a", mode, &args)?;
            wait_available(c)?;
            let ready = t.elapsed();
            let available = Instant::now();
            // The DaemonSet controller then deletes the old pod: SIGTERM.
            let status = old.stop(DRAIN + Duration::from_secs(10))?;
            anyhow::ensure!(status.success(), "restart {i}: old agent exited {status}");
            let exited = available.elapsed();
            if let Some(held) = held {
                let (last_echo, ended) = held.join().map_err(|_| anyhow::anyhow!("panicked"))?;
                long = Some(LongWebSocket {
                    new_agent: t,
                    available,
                    last_echo,
                    ended,
                });
            }
            wait_for_load(&oks, [10, 10, 3])?;
            // The health check node port, taken over too, answers for the local endpoint.
            let url = format!("http://{}/", SocketAddr::new(node.ip(), HEALTH_CHECK_PORT));
            let hc = c.http(At::Client, &url, &[])?;
            anyhow::ensure!(hc.status == 200, "restart {i}: health check {}", hc.body);
            let after = oks();
            lines.push(format!(
                "restart {i}: new agent available after {ready:.1?}, old agent exited {exited:.1?} \
                 after SIGTERM; requests served meanwhile: HTTP/1.1 {}, HTTP/2 {}, WebSocket {}",
                after[0] - before[0],
                after[1] - before[1],
                after[2] - before[2],
            ));
        }
        Ok(())
    })?;
    Ok((lines, long.context("no long WebSocket")?))
}

/// Waits until node-a's healthz has answered 200 for [`MIN_READY`] in a row.
fn wait_available(c: &Cluster) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ready_since = None;
    loop {
        if c.agent_healthz("node-a")? == 200 {
            let since = *ready_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= MIN_READY {
                return Ok(());
            }
        } else {
            ready_since = None;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the new agent never became available"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until each load made `more` successful requests than now.
fn wait_for_load(oks: &dyn Fn() -> [u64; 3], more: [u64; 3]) -> Result<()> {
    let start = oks();
    let deadline = Instant::now() + Duration::from_secs(20);
    while (0..3).any(|k| oks()[k] < start[k] + more[k]) {
        if Instant::now() > deadline {
            bail!("the load stalled: {:?} → {:?}", start, oks());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

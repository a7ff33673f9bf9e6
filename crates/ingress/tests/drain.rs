//! Draining and taking listeners over: what clients see when the proxy stops (a restart or a
//! shutdown). See `src/drain.rs`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_ingress::{IngressConfig, IngressProxy, ListenerSource};
use tokio::net::TcpStream;

async fn h1(addr: std::net::SocketAddr) -> http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

fn says_close(resp: &hyper::Response<hyper::body::Incoming>) -> bool {
    resp.headers()
        .get("connection")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
}

/// Starts the shutdown of `p` in the background; returns when it finished and how long it
/// took.
fn shut_down(p: Running) -> tokio::task::JoinHandle<Duration> {
    tokio::spawn(async move {
        let t = Instant::now();
        p.shutdown().await;
        t.elapsed()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_in_flight_response_says_connection_close() {
    let (_b, objects) = one_route_cafe().await;
    let p = start(IngressConfig::default(), &objects).await;
    let mut conn = h1(p.http).await;
    let first = conn.send_request(get_cafe("/one")).await.unwrap();
    assert!(!says_close(&first), "keep-alive before draining");
    first.into_body().collect().await.unwrap();
    let slow = conn.send_request(get_cafe("/sleep"));
    let slow = tokio::spawn(slow);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let done = shut_down(p);
    let resp = slow.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(says_close(&resp), "{:?}", resp.headers());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(body.starts_with(b"coffee GET /sleep"), "{body:?}");
    let took = done.await.unwrap();
    assert!(took < Duration::from_secs(4), "drained in {took:?}");
}

/// A keep-alive connection idle when draining starts is not closed under a client that is
/// about to send: a request within the first second is answered (with `Connection: close`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_idle_connection_still_gets_its_next_request_answered() {
    let (_b, objects) = one_route_cafe().await;
    let p = start(IngressConfig::default(), &objects).await;
    let mut conn = h1(p.http).await;
    let first = conn.send_request(get_cafe("/one")).await.unwrap();
    first.into_body().collect().await.unwrap();
    let done = shut_down(p);
    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.ready()
        .await
        .expect("still open 300 ms into the drain");
    let resp = conn.send_request(get_cafe("/two")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(says_close(&resp));
    resp.into_body().collect().await.unwrap();
    done.await.unwrap();
}

/// An idle keep-alive connection nobody uses is closed after a second of idleness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_idle_connection_is_closed_after_a_second() {
    let (_b, objects) = one_route_cafe().await;
    let p = start(IngressConfig::default(), &objects).await;
    let mut conn = h1(p.http).await;
    let first = conn.send_request(get_cafe("/one")).await.unwrap();
    first.into_body().collect().await.unwrap();
    let took = shut_down(p).await.unwrap();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    assert!(
        eventually(Duration::from_secs(2), || conn.is_closed()).await,
        "the server closed it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_gets_goaway_and_the_stream_in_flight_finishes() {
    let (_b, objects) = one_route_cafe().await;
    let p = start(IngressConfig::default(), &objects).await;
    let stream = TcpStream::connect(p.http).await.unwrap();
    let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let first = sender.send_request(get_cafe("/one")).await.unwrap();
    first.into_body().collect().await.unwrap();
    let slow = tokio::spawn(sender.send_request(get_cafe("/sleep")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let took = shut_down(p);
    let resp = slow.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(body.starts_with(b"coffee GET /sleep"), "{body:?}");
    // GOAWAY: the connection ends once the stream is done.
    tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("the connection ended")
        .unwrap()
        .unwrap();
    assert!(sender.ready().await.is_err());
    assert!(took.await.unwrap() < Duration::from_secs(4));
}

/// A WebSocket keeps working while the proxy drains, which waits for it until the drain
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_is_kept_until_the_drain_timeout() {
    let (_b, objects) = one_route_cafe().await;
    let config = IngressConfig {
        shutdown_grace: Duration::from_secs(2),
        ..IngressConfig::default()
    };
    let p = start(config, &objects).await;
    let mut ws = websocket(p.http, "cafe", "/ws").await.unwrap();
    let done = shut_down(p);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ws_roundtrip(&mut ws, "late").await.unwrap(), "coffee:late");
    assert!(!done.is_finished(), "the drain waits for the WebSocket");
    let took = done.await.unwrap();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_ends_as_soon_as_the_websocket_closes() {
    let (_b, objects) = one_route_cafe().await;
    let p = start(IngressConfig::default(), &objects).await;
    let ws = websocket(p.http, "cafe", "/ws").await.unwrap();
    let done = shut_down(p);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(ws);
    let took = tokio::time::timeout(Duration::from_secs(5), done)
        .await
        .expect("drained once the WebSocket closed")
        .unwrap();
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// The listener a second proxy takes over (a duplicate of the same socket, as the agent's
/// handover passes it).
struct Shared(std::net::TcpListener);

impl ListenerSource for Shared {
    fn listener(&mut self, addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
        assert_eq!(addr, self.0.local_addr()?);
        self.0.try_clone()
    }
}

/// Serves `proxy` on `listener` until the returned sender fires (or is dropped).
fn serve_on(
    proxy: &Arc<IngressProxy>,
    listener: std::net::TcpListener,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), sluice_ingress::IngressError>>,
) {
    let listeners = proxy.listen(&mut Shared(listener)).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task =
        tokio::spawn(
            Arc::clone(proxy).serve_listeners(listeners.http, listeners.https, async {
                let _ = stopped.await;
            }),
        );
    (stop, task)
}

/// Keep-alive HTTP/1.1 clients looping until `stop`: (requests answered, requests failed).
/// A request hyper proves it never sent (the connection was closed first) is not a failure.
async fn keep_alive_clients(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> (u64, u64) {
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let mut conn = h1(addr).await;
                    while !stop.load(Ordering::Relaxed) && conn.ready().await.is_ok() {
                        match conn.try_send_request(get_cafe("/loop")).await {
                            Ok(resp) => {
                                let close = says_close(&resp);
                                let counter = match resp.into_body().collect().await {
                                    Ok(_) => &ok,
                                    Err(_) => &failed,
                                };
                                counter.fetch_add(1, Ordering::Relaxed);
                                if close {
                                    break;
                                }
                            }
                            Err(e) if e.message().is_some() => break,
                            Err(_) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

/// Two proxies on one listening socket (the agent's handover passes a duplicate of it), the
/// old one draining while the new one accepts: keep-alive clients looping all along see no
/// failed request, and after the switch the new proxy answers everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_taking_the_listener_over_fails_no_request() {
    let (_b, objects) = one_route_cafe().await;
    let listener = sluice_ingress::bind_listener(([127, 0, 0, 1], 0).into()).unwrap();
    let addr = listener.local_addr().unwrap();
    let config = IngressConfig {
        http_bind: Some(addr),
        https_bind: None,
        ..IngressConfig::default()
    };
    let old = Arc::new(IngressProxy::new(config.clone()));
    let new = Arc::new(IngressProxy::new(config));
    assert!(old.apply(&snapshot(&objects)).is_empty());
    assert!(new.apply(&snapshot(&objects)).is_empty());
    let (stop_old, old_task) = serve_on(&old, listener.try_clone().unwrap());

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(keep_alive_clients(addr, stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (stop_new, new_task) = serve_on(&new, listener);
    let _ = stop_old.send(());
    old_task.await.unwrap().unwrap();
    let served_by_old = old.stats().requests_total;
    let new_before = new.stats().requests_total;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    let _ = stop_new.send(());
    new_task.await.unwrap().unwrap();
    eprintln!(
        "handover between two proxies: {ok} requests ({served_by_old} by the old one), {failed} failed"
    );
    assert_eq!(failed, 0);
    assert!(served_by_old > 0);
    assert!(
        new.stats().requests_total > new_before,
        "the new proxy served"
    );
    assert_eq!(
        old.stats().requests_total,
        served_by_old,
        "the old one no more"
    );
}

//! Proxy workers (`IngressConfig::workers`): connections are shared out over the workers,
//! and a drain with several workers answers every request in flight and closes every
//! worker's copy of the listeners.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use sluice_ingress::IngressConfig;
use tokio::net::TcpStream;

fn workers(n: usize) -> IngressConfig {
    IngressConfig {
        workers: n,
        ..IngressConfig::default()
    }
}

async fn h1(addr: std::net::SocketAddr) -> http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// Opens `n` keep-alive connections at once, each answered once, and keeps them open.
async fn open_connections(
    addr: std::net::SocketAddr,
    n: usize,
) -> Vec<http1::SendRequest<Full<Bytes>>> {
    let opening = (0..n).map(|_| {
        tokio::spawn(async move {
            let mut conn = h1(addr).await;
            let resp = conn.send_request(get_cafe("/")).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(body.starts_with(b"coffee GET /"), "{body:?}");
            conn
        })
    });
    let mut open = Vec::new();
    for conn in opening.collect::<Vec<_>>() {
        open.push(conn.await.unwrap());
    }
    open
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_shared_out_over_the_workers() {
    let (_b, objects) = one_route_cafe().await;
    let p = start(workers(2), &objects).await;
    let open = open_connections(p.http, 24).await;
    let per_worker = p.proxy.worker_connections();
    assert_eq!(per_worker.len(), 2);
    assert_eq!(per_worker.iter().sum::<u64>(), 24, "{per_worker:?}");
    // Each worker within a few connections of the other (see `workers::Load`), not all on
    // whichever thread happened to be idle.
    assert!(
        per_worker.iter().all(|n| *n >= 6),
        "connections per worker: {per_worker:?}"
    );
    drop(open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_serves_everything() {
    let (_b, objects) = one_route_cafe().await;
    let p = start(workers(1), &objects).await;
    let open = open_connections(p.http, 8).await;
    assert_eq!(p.proxy.worker_connections(), [8]);
    drop(open);
    p.shutdown().await;
}

/// Every worker has a request in flight when draining starts: each is answered (with
/// `Connection: close`), and once every worker stopped accepting the port refuses
/// connections while those requests are still running (no copy of the listener is left
/// open by any worker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_with_several_workers_answers_in_flight_requests_and_closes_every_listener() {
    let (_b, objects) = one_route_cafe().await;
    let p = start(workers(4), &objects).await;
    let (http, https) = (p.http, p.https);
    let open = open_connections(http, 16).await;
    let per_worker = p.proxy.worker_connections();
    assert!(
        per_worker.iter().all(|n| *n > 0),
        "every worker has connections: {per_worker:?}"
    );
    // `/sleep` answers after 2 s.
    let in_flight: Vec<_> = open
        .into_iter()
        .map(|mut conn| tokio::spawn(async move { conn.send_request(get_cafe("/sleep")).await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let done = tokio::spawn(p.shutdown());
    let mut refused = false;
    while started.elapsed() < Duration::from_millis(1500) {
        let h = TcpStream::connect(http).await;
        let s = TcpStream::connect(https).await;
        if h.is_err() && s.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refused,
        "both ports refuse connections while the requests are in flight"
    );
    for req in in_flight {
        let resp = req.await.unwrap().expect("answered while draining");
        assert_eq!(resp.status(), StatusCode::OK);
        let close = resp.headers().get("connection").map(|v| v.as_bytes());
        assert_eq!(close, Some(&b"close"[..]));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"coffee GET /sleep"), "{body:?}");
    }
    tokio::time::timeout(Duration::from_secs(5), done)
        .await
        .expect("serve_listeners returned after the drain")
        .unwrap();
}

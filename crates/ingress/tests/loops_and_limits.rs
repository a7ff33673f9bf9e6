//! A request must never take the node down: request loops back into the proxy are cut at
//! once, and connections are capped both ways so descriptors cannot run out.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use hyper::StatusCode;
use serde_json::Value;
use sluice_ingress::{IngressConfig, IngressProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A healthy Ingress (`good.example` → echo backend "good").
async fn healthy() -> (Vec<Value>, EchoBackend) {
    let good = echo("good").await;
    let mut objects = vec![
        ingress_class(),
        ingress(
            "good",
            vec![rule("good.example", vec![path("/", "Prefix", "good")])],
        ),
    ];
    objects.extend(service("good", &[good.addr.port()]));
    (objects, good)
}

/// `objects` plus an Ingress for `loop.example` whose service `svc` has one endpoint on
/// 127.0.0.1:`port`.
fn with_loop(objects: &[Value], svc: &str, port: u16) -> Vec<Value> {
    let mut all = objects.to_vec();
    all.push(ingress(
        "loop",
        vec![rule("loop.example", vec![path("/", "Prefix", svc)])],
    ));
    all.extend(service(svc, &[port]));
    all
}

async fn get_within(addr: std::net::SocketAddr, host: &str, path: &str) -> Reply {
    tokio::time::timeout(Duration::from_secs(5), http_get(addr, host, path))
        .await
        .unwrap_or_else(|_| panic!("no answer for {host}{path} within 5 s"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_on_own_listener_gets_508_without_dialling() {
    let (objects, _good) = healthy().await;
    let p = start(IngressConfig::default(), &objects).await;
    // Serving (listener addresses recorded) before the looping Ingress arrives.
    let r = get_within(p.http, "good.example", "/").await;
    assert_eq!((r.status, r.backend()), (StatusCode::OK, "good"));
    let warnings = p
        .proxy
        .apply(&snapshot(&with_loop(&objects, "self", p.http.port())));
    let text: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 1, "{text:?}");
    assert!(
        text[0].starts_with("Service default/self: endpoint 127.0.0.1:")
            && text[0].contains("is this proxy's own listener"),
        "{text:?}"
    );

    let before = p.proxy.stats();
    let r = get_within(p.http, "loop.example", "/").await;
    assert_eq!(r.status, StatusCode::LOOP_DETECTED, "{}", r.body);
    assert!(
        r.body.starts_with("508 Loop Detected: ") && r.body.contains("default/self:80"),
        "{}",
        r.body
    );
    let stats = p.proxy.stats();
    // One more downstream connection (the client's), no upstream one.
    assert_eq!(
        stats.connections_total,
        before.connections_total + 1,
        "the proxy dialled itself: {stats:?}"
    );
    assert_eq!(
        stats.upstream_connections_active,
        before.upstream_connections_active
    );
    assert_eq!(stats.loops_detected, 1);
    let r = get_within(p.http, "good.example", "/").await;
    assert_eq!((r.status, r.backend()), (StatusCode::OK, "good"));
}

/// The same listener bound to 0.0.0.0: any local address on its port is ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_listener_is_recognised_on_loopback() {
    let (objects, _good) = healthy().await;
    let proxy = Arc::new(IngressProxy::new(IngressConfig::default()));
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let served = Arc::clone(&proxy);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = served
            .serve_listeners(Some(listener), None, async {
                let _ = stopped.await;
            })
            .await;
    });
    // The listener's addresses are recorded when serving starts.
    assert!(
        eventually(Duration::from_secs(2), || {
            !proxy
                .apply(&snapshot(&with_loop(&objects, "self", port)))
                .is_empty()
        })
        .await
    );
    let r = get_within(addr, "loop.example", "/").await;
    assert_eq!(r.status, StatusCode::LOOP_DETECTED, "{}", r.body);
    assert_eq!(proxy.stats().connections_total, 1);
    drop(stop);
}

/// A loop the address check cannot see (through a relay the proxy does not know): the hop
/// header carries this proxy's id, and the second pass is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_coming_back_through_a_relay_gets_508() {
    let (objects, _good) = healthy().await;
    let p = start(IngressConfig::default(), &objects).await;
    let (relay_addr, relayed) = relay(p.http, 20).await;
    let warnings = p
        .proxy
        .apply(&snapshot(&with_loop(&objects, "relay", relay_addr.port())));
    assert!(warnings.is_empty(), "{warnings:?}");
    let r = get_within(p.http, "loop.example", "/").await;
    assert_eq!(r.status, StatusCode::LOOP_DETECTED, "{}", r.body);
    assert!(
        r.body.contains("already passed through this proxy"),
        "{}",
        r.body
    );
    assert_eq!(relayed.load(Ordering::SeqCst), 1);
    assert_eq!(p.proxy.stats().loops_detected, 1);
}

/// Hundreds of concurrent looping requests: every one is answered 508 at once, the healthy
/// Ingress keeps answering during the storm, and afterwards connections and memory are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_storm_leaves_the_proxy_serving_and_memory_flat() {
    let (objects, _good) = healthy().await;
    let config = IngressConfig {
        upstream_idle_timeout: Duration::from_millis(300),
        client_idle_timeout: Duration::from_millis(300),
        ..IngressConfig::default()
    };
    let p = start(config, &objects).await;
    let (relay_addr, _) = relay(p.http, 2000).await;
    let mut all = with_loop(&objects, "self", p.http.port());
    all.push(ingress(
        "loop2",
        vec![rule("relay.example", vec![path("/", "Prefix", "relay")])],
    ));
    all.extend(service("relay", &[relay_addr.port()]));
    p.proxy.apply(&snapshot(&all));
    // Warm up allocator arenas and pools before measuring.
    for host in ["loop.example", "relay.example", "good.example"] {
        get_within(p.http, host, "/").await;
    }
    let rss_before = rss_kib();
    let started = Instant::now();
    let mut storm = Vec::new();
    for i in 0..400 {
        let addr = p.http;
        let host = if i % 2 == 0 {
            "loop.example"
        } else {
            "relay.example"
        };
        storm.push(tokio::spawn(
            async move { get_within(addr, host, "/").await },
        ));
    }
    for _ in 0..20 {
        let r = get_within(p.http, "good.example", "/").await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "healthy Ingress failed during the storm"
        );
    }
    for s in storm {
        let r = s.await.unwrap();
        assert_eq!(r.status, StatusCode::LOOP_DETECTED, "{}", r.body);
    }
    eprintln!("400 looping requests answered in {:?}", started.elapsed());
    let settled = eventually(Duration::from_secs(5), || {
        let s = p.proxy.stats();
        s.connections_active == 0 && s.upstream_connections_active == 0
    })
    .await;
    assert!(settled, "connections left open: {:?}", p.proxy.stats());
    let growth_mib = rss_kib().saturating_sub(rss_before) / 1024;
    eprintln!("RSS growth over the storm: {growth_mib} MiB");
    assert!(growth_mib < 48, "RSS grew by {growth_mib} MiB");
}

/// Upstream connections are capped per endpoint and in total: past a cap the request gets
/// 503 naming the limit, without a connection attempt and without blaming the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connection_caps_give_503() {
    let a = echo("a").await;
    let b = echo("b").await;
    let mut objects = vec![
        ingress_class(),
        ingress(
            "ab",
            vec![
                rule("a.example", vec![path("/", "Prefix", "a")]),
                rule("b.example", vec![path("/", "Prefix", "b")]),
            ],
        ),
    ];
    objects.extend(service("a", &[a.addr.port()]));
    objects.extend(service("b", &[b.addr.port()]));
    // One worker: idle pooled connections belong to the worker that opened them (see
    // docs/ingress.md, Workers), and the last request below must find one.
    let config = IngressConfig {
        max_upstream_connections_per_endpoint: 2,
        max_upstream_connections: 3,
        workers: 1,
        ..IngressConfig::default()
    };
    let p = start(config, &objects).await;
    let slow = |host: &'static str| {
        let addr = p.http;
        tokio::spawn(async move { http_get(addr, host, "/sleep").await.unwrap() })
    };
    let open = |n: u64| {
        let proxy = Arc::clone(&p.proxy);
        async move {
            assert!(
                eventually(Duration::from_secs(1), || proxy
                    .stats()
                    .upstream_connections_active
                    == n)
                .await,
                "{:?}",
                proxy.stats()
            )
        }
    };
    let slow_requests = vec![slow("a.example"), slow("a.example")];
    open(2).await;
    let r = get_within(p.http, "a.example", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(
        r.body.contains("connection limit") && r.body.contains("default/a:80"),
        "{}",
        r.body
    );
    let slow_b = slow("b.example");
    open(3).await;
    let r = get_within(p.http, "b.example", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(r.body.contains("connection limit"), "{}", r.body);
    for s in slow_requests.into_iter().chain([slow_b]) {
        assert_eq!(s.await.unwrap().status, StatusCode::OK);
    }
    // Finished requests leave their connections in the pool: reused, no new connection.
    let r = get_within(p.http, "a.example", "/").await;
    assert_eq!((r.status, r.backend()), (StatusCode::OK, "a"));
    let stats = p.proxy.stats();
    assert_eq!(stats.upstream_connect_failures, 0, "{stats:?}");
    assert_eq!(stats.upstream_connection_limit_hits, 2, "{stats:?}");
    assert!(stats.upstream_connections_active <= 3, "{stats:?}");
}

/// At `max_client_connections` the proxy stops accepting; the next client is served as soon
/// as a connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connection_cap_pauses_accepting() {
    let (objects, _good) = healthy().await;
    let config = IngressConfig {
        max_client_connections: 2,
        ..IngressConfig::default()
    };
    let p = start(config, &objects).await;
    let request = b"GET / HTTP/1.1\r\nHost: good.example\r\n\r\n";
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(p.http).await.unwrap();
        s.write_all(request).await.unwrap();
        let head = read_head(&mut s).await.unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        open.push(s);
    }
    let mut third = TcpStream::connect(p.http).await.unwrap();
    third.write_all(request).await.unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut byte)).await;
    assert!(early.is_err(), "third connection served past the cap");
    assert_eq!(p.proxy.stats().connections_active, 2);
    drop(open.remove(0));
    let head = tokio::time::timeout(Duration::from_secs(2), read_head(&mut third))
        .await
        .expect("third connection not served after one closed")
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(p.proxy.stats().accept_pauses >= 1);
}

/// An upgrade dials its own upstream connection under the same caps as any request: with one
/// connection per endpoint, a second WebSocket while the first is open gets 503 naming the
/// limit; an endpoint nobody listens on gets 502 and counts as a connect failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_capped_and_their_connect_failures_counted() {
    let backend = recording_backend().await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut objects = vec![
        ingress_class(),
        ingress(
            "ws",
            vec![
                rule("ws.example", vec![path("/", "Prefix", "ws")]),
                rule("down.example", vec![path("/", "Prefix", "down")]),
            ],
        ),
    ];
    objects.extend(service("ws", &[backend.addr.port()]));
    objects.extend(service("down", &[closed_port]));
    let config = IngressConfig {
        max_upstream_connections_per_endpoint: 1,
        ..IngressConfig::default()
    };
    let p = start(config, &objects).await;

    let mut first = websocket(p.http, "ws.example", "/chat").await.unwrap();
    assert_eq!(ws_roundtrip(&mut first, "hi").await.unwrap(), "rec:hi");
    let refused = websocket(p.http, "ws.example", "/chat").await.unwrap_err();
    assert!(
        refused.to_string().contains("HTTP/1.1 503"),
        "second upgrade: {refused}"
    );
    assert_eq!(p.proxy.stats().upstream_connection_limit_hits, 1);

    let failed = websocket(p.http, "down.example", "/chat")
        .await
        .unwrap_err();
    assert!(failed.to_string().contains("HTTP/1.1 502"), "{failed}");
    let stats = p.proxy.stats();
    assert_eq!(stats.upstream_connect_failures, 1, "{stats:?}");
    // The open tunnel still works.
    assert_eq!(
        ws_roundtrip(&mut first, "again").await.unwrap(),
        "rec:again"
    );
}

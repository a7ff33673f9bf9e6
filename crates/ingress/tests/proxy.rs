//! The proxy end to end on loopback: real listeners, real echo backends, real clients.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::{Request, StatusCode, Version};
use serde_json::{Value, json};
use sluice_ingress::IngressConfig;

/// The cafe example: coffee and tea services, a default backend, TLS for cafe.example.com.
async fn cafe() -> (Vec<Value>, Vec<EchoBackend>, Vec<u8>) {
    let coffee = echo("coffee").await;
    let tea = echo("tea").await;
    let default = echo("default").await;
    let (secret, cert) = tls_secret("cafe-secret", &["cafe.example.com"]);
    let mut cafe = ingress(
        "cafe",
        vec![rule(
            "cafe.example.com",
            vec![
                path("/coffee", "Prefix", "coffee-svc"),
                path("/tea", "Prefix", "tea-svc"),
            ],
        )],
    );
    cafe["spec"]["tls"] = json!([{"hosts": ["cafe.example.com"], "secretName": "cafe-secret"}]);
    // These tests also speak plain HTTP to the cafe: no redirect to HTTPS (tests/annotations.rs
    // covers it).
    cafe["metadata"]["annotations"] = json!({"nginx.ingress.kubernetes.io/ssl-redirect": "false"});
    cafe["spec"]["defaultBackend"] =
        json!({"service": {"name": "default-svc", "port": {"number": 80}}});
    let mut objects = vec![ingress_class(), cafe, secret];
    objects.extend(service("coffee-svc", &[coffee.addr.port()]));
    objects.extend(service("tea-svc", &[tea.addr.port()]));
    objects.extend(service("default-svc", &[default.addr.port()]));
    (objects, vec![coffee, tea, default], cert)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cafe_over_https_with_sni() {
    let (objects, _backends, cert) = cafe().await;
    let p = start(IngressConfig::default(), &objects).await;
    for (path, want) in [
        ("/coffee", "coffee"),
        ("/tea/green", "tea"),
        ("/", "default"),
        ("/water", "default"),
    ] {
        let r = https_get(p.https, "cafe.example.com", path, false)
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
        assert_eq!(r.backend(), want, "{path}: {}", r.body);
        assert_eq!(
            r.peer_cert.as_deref(),
            Some(cert.as_slice()),
            "{path}: wrong certificate"
        );
        assert!(r.body.contains("x-forwarded-proto: https\n"), "{}", r.body);
        assert!(r.body.contains("host: cafe.example.com\n"), "{}", r.body);
    }
    // An unknown SNI name gets the generated default certificate (never another Ingress's),
    // as with ingress-nginx, and the request is still routed.
    let r = https_get(p.https, "other.example.com", "/", false)
        .await
        .unwrap();
    let served = r.peer_cert.clone().unwrap();
    assert_ne!(served, cert);
    let subject = b"Kubernetes Ingress Controller Fake Certificate";
    assert!(served.windows(subject.len()).any(|w| w == subject));
    assert_eq!(r.backend(), "default");
}

/// AES-128-GCM unless the client puts ChaCha20 ahead of AES (BoringSSL's and Go's choice),
/// whatever order the client lists the AES suites in; a client's only suite is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_suites_aes_128_first_unless_the_client_prefers_chacha() {
    use rustls::CipherSuite::{
        TLS13_AES_128_GCM_SHA256 as AES_128, TLS13_AES_256_GCM_SHA384 as AES_256,
        TLS13_CHACHA20_POLY1305_SHA256 as CHACHA,
    };
    let (objects, _backends, _) = cafe().await;
    let p = start(IngressConfig::default(), &objects).await;
    for (offered, want) in [
        (&[AES_256, CHACHA, AES_128][..], AES_128), // OpenSSL's order
        (&[CHACHA, AES_128, AES_256][..], CHACHA),
        (&[AES_256][..], AES_256),
    ] {
        let got = negotiated_suite(p.https, "cafe.example.com", offered)
            .await
            .unwrap();
        assert_eq!(got, want, "client offered {offered:?}");
    }
    // Either way the connection serves.
    let r = https_get(p.https, "cafe.example.com", "/coffee", true)
        .await
        .unwrap();
    assert_eq!(r.backend(), "coffee");
}

/// A client resumes its TLS session (no certificate sent, no signature made) after 300 other
/// clients have connected, which rustls' default cache of 256 sessions forgets; with the
/// cache off no handshake resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sessions_resume_after_hundreds_of_other_clients() {
    let (objects, _backends, _) = cafe().await;
    let host = "cafe.example.com";
    let p = start(IngressConfig::default(), &objects).await;
    let first = resuming_client().unwrap();
    assert!(!https_resumed(p.https, host, &first).await.unwrap());
    for _ in 0..300 {
        let other = resuming_client().unwrap();
        https_resumed(p.https, host, &other).await.unwrap();
    }
    assert!(
        https_resumed(p.https, host, &first).await.unwrap(),
        "the first client's session was forgotten"
    );

    let no_cache = IngressConfig {
        tls_session_cache: 0,
        ..IngressConfig::default()
    };
    let p = start(no_cache, &objects).await;
    let client = resuming_client().unwrap();
    for _ in 0..2 {
        assert!(!https_resumed(p.https, host, &client).await.unwrap());
    }
}

/// Every handshake, full or resumed, gives the client one session ticket: a client resuming
/// connection after connection has a new one each time, and a second ticket, which such a
/// client never uses, would take a second place in the session cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_handshake_sends_one_session_ticket() {
    let (objects, _backends, _) = cafe().await;
    let host = "cafe.example.com";
    let p = start(IngressConfig::default(), &objects).await;
    let (client, tickets) = ticket_counting_client().unwrap();
    assert!(!https_resumed(p.https, host, &client).await.unwrap());
    assert_eq!(
        tickets.load(Ordering::SeqCst),
        1,
        "tickets after a full handshake"
    );
    for handshakes in 2..=3 {
        assert!(https_resumed(p.https, host, &client).await.unwrap());
        assert_eq!(
            tickets.load(Ordering::SeqCst),
            handshakes,
            "tickets after {handshakes} handshakes, the later ones resumed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_request_over_tls() {
    let (objects, _backends, _) = cafe().await;
    let p = start(IngressConfig::default(), &objects).await;
    let r = https_get(p.https, "cafe.example.com", "/coffee", true)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.backend(), "coffee");
    // The backend speaks HTTP/1.1 and still saw the client's host.
    assert!(r.body.contains("host: cafe.example.com\n"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_host_and_wildcard_over_http() {
    let a = echo("a").await;
    let b = echo("b").await;
    let mut objects = vec![
        ingress_class(),
        ingress(
            "hosts",
            vec![
                rule("a.example.com", vec![path("/", "Prefix", "a")]),
                rule("*.wild.example.com", vec![path("/", "Prefix", "b")]),
            ],
        ),
    ];
    objects.extend(service("a", &[a.addr.port()]));
    objects.extend(service("b", &[b.addr.port()]));
    let p = start(IngressConfig::default(), &objects).await;
    assert_eq!(
        http_get(p.http, "a.example.com", "/")
            .await
            .unwrap()
            .backend(),
        "a"
    );
    assert_eq!(
        http_get(p.http, "x.wild.example.com:80", "/")
            .await
            .unwrap()
            .backend(),
        "b"
    );
    let r = http_get(p.http, "wild.example.com", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body.contains("no Ingress rule matches"), "{}", r.body);
    assert_eq!(
        http_get(p.http, "y.x.wild.example.com", "/")
            .await
            .unwrap()
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(p.proxy.stats().not_found, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_and_request_id() {
    let (objects, _backends, _) = cafe().await;
    let p = start(IngressConfig::default(), &objects).await;
    let req = Request::builder()
        .uri("/coffee?x=1")
        .header("host", "cafe.example.com")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-request-id", "req-42")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = http_send(p.http, req).await.unwrap();
    assert!(r.body.starts_with("coffee GET /coffee?x=1\n"), "{}", r.body);
    assert!(
        r.body.contains("x-forwarded-for: 127.0.0.1\n"),
        "{}",
        r.body
    );
    assert!(r.body.contains("x-forwarded-proto: http\n"), "{}", r.body);
    assert!(
        r.body.contains("x-forwarded-host: cafe.example.com\n"),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains(&format!("x-forwarded-port: {}\n", p.http.port())),
        "{}",
        r.body
    );
    assert!(r.body.contains("x-request-id: req-42\n"), "{}", r.body);
    assert_eq!(r.headers["x-request-id"], "req-42");
    // Without one, an id is generated and returned to the client too.
    let r = http_get(p.http, "cafe.example.com", "/coffee")
        .await
        .unwrap();
    let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert!(
        r.body.contains(&format!("x-request-id: {id}\n")),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normalised_path_is_routed_and_forwarded() {
    let (objects, _backends, _) = cafe().await;
    let p = start(IngressConfig::default(), &objects).await;
    for raw in [
        "/tea/../coffee",
        "/tea/%2e%2e/coffee",
        "/tea%2F..%2Fcoffee",
        "//coffee",
    ] {
        let r = http_get(p.http, "cafe.example.com", raw).await.unwrap();
        assert!(
            r.body.starts_with("coffee GET /coffee\n"),
            "{raw}: {}",
            r.body
        );
    }
    let r = http_get(p.http, "cafe.example.com", "/bad%zz")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_give_clear_502_503_504() {
    let slow = echo("slow").await;
    // A port with nothing listening: bind, note, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut objects = vec![
        ingress_class(),
        ingress(
            "errors",
            vec![rule(
                "h",
                vec![
                    path("/empty", "Prefix", "empty"),
                    path("/dead", "Prefix", "dead"),
                    path("/sleep", "Prefix", "slow"),
                ],
            )],
        ),
    ];
    objects.extend(service("empty", &[]));
    objects.extend(service("dead", &[dead]));
    objects.extend(service("slow", &[slow.addr.port()]));
    let config = IngressConfig {
        response_timeout: Duration::from_millis(300),
        ..IngressConfig::default()
    };
    let p = start(config, &objects).await;

    let r = http_get(p.http, "h", "/empty").await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.body
            .contains("no ready endpoints for service default/empty:80"),
        "{}",
        r.body
    );

    let r = http_get(p.http, "h", "/dead").await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(
        r.body.contains("cannot connect to service default/dead:80"),
        "{}",
        r.body
    );

    let started = Instant::now();
    let r = http_get(p.http, "h", "/sleep").await.unwrap();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        r.body.contains("default/slow:80 did not answer"),
        "{}",
        r.body
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    let stats = p.proxy.stats();
    assert_eq!(stats.requests_total, 3);
    assert_eq!(stats.responses_by_class[4], 3, "{stats:?}");
    assert_eq!(stats.upstream_timeouts, 1);
    assert_eq!(stats.upstream_connect_failures, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limit_gives_413() {
    let (objects, _backends, _) = cafe().await;
    let config = IngressConfig {
        max_request_body_bytes: 1000,
        ..IngressConfig::default()
    };
    let p = start(config, &objects).await;
    let post = |n: usize| {
        Request::builder()
            .method("POST")
            .uri("/coffee")
            .header("host", "cafe.example.com")
            .body(Full::new(Bytes::from(vec![b'x'; n])))
            .unwrap()
    };
    let r = http_send(p.http, post(1000)).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("body-bytes: 1000\n"), "{}", r.body);
    let r = http_send(p.http, post(1001)).await.unwrap();
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_retry_another_endpoint_on_connect_failure() {
    let live = echo("live").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut objects = vec![
        ingress_class(),
        ingress("r", vec![rule("h", vec![path("/", "Prefix", "mixed")])]),
    ];
    objects.extend(service("mixed", &[live.addr.port(), dead]));
    let p = start(IngressConfig::default(), &objects).await;
    for i in 0..40 {
        let r = http_get(p.http, "h", "/").await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.body);
        assert_eq!(r.backend(), "live");
    }
    let stats = p.proxy.stats();
    assert!(stats.retries > 0, "{stats:?}");
    assert_eq!(stats.retries, stats.upstream_connect_failures);
    assert_eq!(stats.responses_by_class[1], 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_over_endpoints() {
    let a = echo("a").await;
    let b = echo("b").await;
    let mut objects = vec![
        ingress_class(),
        ingress("r", vec![rule("h", vec![path("/", "Prefix", "ab")])]),
    ];
    objects.extend(service("ab", &[a.addr.port(), b.addr.port()]));
    let p = start(IngressConfig::default(), &objects).await;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let r = http_get(p.http, "h", "/").await.unwrap();
        *seen.entry(r.backend().to_owned()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

/// Continuous requests from several keep-alive clients while the route flips between two
/// services every 20 ms: every request must succeed, and both services must have answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_change_under_load_has_zero_failed_requests() {
    let a = echo("a").await;
    let b = echo("b").await;
    let mut base = vec![ingress_class()];
    base.extend(service("a", &[a.addr.port()]));
    base.extend(service("b", &[b.addr.port()]));
    let with = |svc: &str| {
        let mut o = base.clone();
        o.push(ingress(
            "flip",
            vec![rule("h", vec![path("/", "Prefix", svc)])],
        ));
        snapshot(&o)
    };
    let (snap_a, snap_b) = (with("a"), with("b"));
    let mut initial = base.clone();
    initial.push(ingress(
        "flip",
        vec![rule("h", vec![path("/", "Prefix", "a")])],
    ));
    let p = start(IngressConfig::default(), &initial).await;

    let ok = Arc::new(AtomicUsize::new(0));
    let seen_a = Arc::new(AtomicUsize::new(0));
    let seen_b = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (ok, seen_a, seen_b) = (ok.clone(), seen_a.clone(), seen_b.clone());
        let addr = p.http;
        clients.push(tokio::spawn(async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<Full<Bytes>>();
            while Instant::now() < deadline {
                let req = Request::builder()
                    .uri(format!("http://{addr}/"))
                    .header("host", "h")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let resp = client
                    .request(req)
                    .await
                    .expect("request failed during reload");
                assert_eq!(resp.status(), StatusCode::OK);
                let body = http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                match body.first() {
                    Some(b'a') => seen_a.fetch_add(1, Ordering::Relaxed),
                    Some(b'b') => seen_b.fetch_add(1, Ordering::Relaxed),
                    _ => panic!("unexpected body {body:?}"),
                };
                ok.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut flips = 0;
    while Instant::now() < deadline {
        let snap = if flips % 2 == 0 { &snap_b } else { &snap_a };
        assert!(p.proxy.apply(snap).is_empty());
        flips += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for c in clients {
        c.await.unwrap();
    }
    let ok = ok.load(Ordering::Relaxed);
    assert!(ok > 100, "only {ok} requests");
    assert!(seen_a.load(Ordering::Relaxed) > 0 && seen_b.load(Ordering::Relaxed) > 0);
    eprintln!("{ok} requests over {flips} reloads, none failed");
}

/// New HTTPS connections during repeated Secret rotation: no handshake or request fails, and
/// the new certificate is served once the update is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_without_failed_requests() {
    let (objects, _backends, first_cert) = cafe().await;
    let p = start(IngressConfig::default(), &objects).await;
    let addr = p.https;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (stop, count) = (stop.clone(), count.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = https_get(addr, "cafe.example.com", "/coffee", false)
                    .await
                    .expect("request failed during rotation");
                assert_eq!(r.status, StatusCode::OK);
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut last = first_cert.clone();
    for _ in 0..5 {
        let (secret, der) = tls_secret("cafe-secret", &["cafe.example.com"]);
        let mut o: Vec<Value> = objects
            .iter()
            .filter(|v| v["kind"] != "Secret")
            .cloned()
            .collect();
        o.push(secret);
        assert!(p.proxy.apply(&snapshot(&o)).is_empty());
        last = der;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert!(count.load(Ordering::Relaxed) > 10);
    let r = https_get(addr, "cafe.example.com", "/coffee", false)
        .await
        .unwrap();
    assert_eq!(r.peer_cert.as_deref(), Some(last.as_slice()));
    assert_ne!(last, first_cert);
}

/// An upgraded (WebSocket-style) connection keeps working across reloads, including one
/// that removes its route: the tunnel no longer depends on the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_connection_survives_reload() {
    let (objects, _backends, _) = cafe().await;
    let p = start(IngressConfig::default(), &objects).await;
    let mut ws = websocket(p.http, "cafe.example.com", "/tea/ws")
        .await
        .unwrap();
    assert_eq!(ws_roundtrip(&mut ws, "hello").await.unwrap(), "tea:hello");
    // Reload: /tea now goes to coffee, then the Ingress disappears entirely.
    let mut changed: Vec<Value> = objects
        .iter()
        .filter(|v| v["kind"] != "Ingress")
        .cloned()
        .collect();
    changed.push(ingress(
        "cafe",
        vec![rule(
            "cafe.example.com",
            vec![path("/", "Prefix", "coffee-svc")],
        )],
    ));
    assert!(p.proxy.apply(&snapshot(&changed)).is_empty());
    assert_eq!(ws_roundtrip(&mut ws, "again").await.unwrap(), "tea:again");
    let gone: Vec<Value> = objects
        .iter()
        .filter(|v| v["kind"] != "Ingress")
        .cloned()
        .collect();
    p.proxy.apply(&snapshot(&gone));
    assert_eq!(ws_roundtrip(&mut ws, "still").await.unwrap(), "tea:still");
    // New upgrades follow the new table.
    assert!(
        websocket(p.http, "cafe.example.com", "/tea/ws")
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_request() {
    let slow = echo("slow").await;
    let mut objects = vec![
        ingress_class(),
        ingress("s", vec![rule("h", vec![path("/", "Prefix", "slow")])]),
    ];
    objects.extend(service("slow", &[slow.addr.port()]));
    let p = start(IngressConfig::default(), &objects).await;
    let addr = p.http;
    let pending = tokio::spawn(async move { http_get(addr, "h", "/sleep").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.shutdown().await;
    let r = pending.await.unwrap().unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.backend(), "slow");
    // After shutdown nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_ingresses_follow_updates() {
    let (objects, _backends, _) = cafe().await;
    let p = start(IngressConfig::default(), &objects).await;
    let served = p.proxy.served_ingresses();
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].to_string(), "default/cafe");
    let mut other = objects.clone();
    other.retain(|v| v["kind"] != "IngressClass");
    p.proxy.apply(&snapshot(&other));
    assert!(p.proxy.served_ingresses().is_empty());
    assert_eq!(
        http_get(p.http, "cafe.example.com", "/coffee")
            .await
            .unwrap()
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_limit_gives_413() {
    let (objects, _backends, _) = cafe().await;
    let config = IngressConfig {
        max_request_body_bytes: 1000,
        ..IngressConfig::default()
    };
    let p = start(config, &objects).await;
    let chunk = "x".repeat(600);
    let req = format!(
        "POST /coffee HTTP/1.1\r\nHost: cafe.example.com\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let reply = raw_exchange(p.http, req.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    // Under the limit the same framing goes through.
    let req = format!(
        "POST /coffee HTTP/1.1\r\nHost: cafe.example.com\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let reply = raw_exchange(p.http, req.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("body-bytes: 600\n"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connection_is_closed() {
    let (objects, _backends, _) = cafe().await;
    let config = IngressConfig {
        client_idle_timeout: Duration::from_millis(300),
        ..IngressConfig::default()
    };
    let p = start(config, &objects).await;
    let started = Instant::now();
    // Half a request line, then silence: the proxy must give up on it.
    let reply = raw_exchange(p.http, b"GET /coffee HTTP/1.1\r\n").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "connection kept open: {reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_post_with_body_reaches_http1_backend() {
    let (objects, _backends, _) = cafe().await;
    let p = start(IngressConfig::default(), &objects).await;
    let (tls, _) = tls_connect(p.https, "cafe.example.com", &[b"h2"])
        .await
        .unwrap();
    let io = hyper_util::rt::TokioIo::new(tls);
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    // Several concurrent streams on one connection.
    let mut replies = Vec::new();
    for i in 0..5 {
        let req = Request::builder()
            .method("POST")
            .uri(format!("https://cafe.example.com/tea/{i}"))
            .body(Full::new(Bytes::from(vec![b'x'; 100 + i])))
            .unwrap();
        replies.push(sender.send_request(req));
    }
    for (i, fut) in replies.into_iter().enumerate() {
        let resp = fut.await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_2);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.starts_with(&format!("tea POST /tea/{i}\n")), "{body}");
        assert!(
            body.contains(&format!("body-bytes: {}\n", 100 + i)),
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_over_tls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (objects, _backends, _) = cafe().await;
    let p = start(IngressConfig::default(), &objects).await;
    let (mut tls, _) = tls_connect(p.https, "cafe.example.com", &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(b"GET /coffee/ws HTTP/1.1\r\nHost: cafe.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            tls.read(&mut byte).await.unwrap(),
            1,
            "closed: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    tls.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tls.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"coffee:ping");
}

/// A backend that sends headers and 5 of `length` promised body bytes, then stalls; the
/// proxy's read timeout is 300 ms. Returns the proxy (kept running) and the response.
async fn stalled_body(length: usize) -> (Running, hyper::Response<hyper::body::Incoming>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\nstart");
        s.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let mut objects = vec![
        ingress_class(),
        ingress("s", vec![rule("h", vec![path("/", "Prefix", "stall")])]),
    ];
    objects.extend(service("stall", &[port]));
    let config = IngressConfig {
        response_timeout: Duration::from_millis(300),
        ..IngressConfig::default()
    };
    let p = start(config, &objects).await;
    let stream = tokio::net::TcpStream::connect(p.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("/")
        .header("host", "h")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    (p, resp)
}

/// A large body (streamed as it comes) that stalls is cut after the read timeout: the
/// client sees the head, then a truncated body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upstream_body_is_cut_after_read_timeout() {
    let started = Instant::now();
    let (_p, resp) = stalled_body(100_000).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(resp.into_body()).await;
    assert!(
        body.is_err(),
        "truncated body must be an error for the client"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

/// A small body (read completely before the head is passed on, as nginx buffers it) that
/// stalls gets 504 after the read timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_small_upstream_body_gets_504() {
    let started = Instant::now();
    let (_p, resp) = stalled_body(100).await;
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("default/stall"),
        "{body:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

/// A backend whose first connection is closed right after the request arrives (as a stale
/// keep-alive connection would be), later connections answer. GET is retried and succeeds;
/// POST is not retried and gets a clear 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_connection_retries_idempotent_requests_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let n = counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                // Connections 0 and 2 are closed without an answer.
                if n % 2 == 1 {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                }
            });
        }
    });
    let mut objects = vec![
        ingress_class(),
        ingress("c", vec![rule("h", vec![path("/", "Prefix", "flaky")])]),
    ];
    objects.extend(service("flaky", &[port]));
    let p = start(IngressConfig::default(), &objects).await;
    let r = http_get(p.http, "h", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, "ok");
    assert_eq!(p.proxy.stats().retries, 1);
    let post = Request::builder()
        .method("POST")
        .uri("/")
        .header("host", "h")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = http_send(p.http, post).await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(
        r.body.contains("closed the connection without a response"),
        "{}",
        r.body
    );
    assert_eq!(p.proxy.stats().retries, 1);
}

/// Least requests: while one endpoint is busy with a slow request, the next request goes to
/// the idle one (with two endpoints, power of two choices always compares both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_endpoint_is_avoided() {
    let a = echo("a").await;
    let b = echo("b").await;
    let mut objects = vec![
        ingress_class(),
        ingress("r", vec![rule("h", vec![path("/", "Prefix", "ab")])]),
    ];
    objects.extend(service("ab", &[a.addr.port(), b.addr.port()]));
    let p = start(IngressConfig::default(), &objects).await;
    let busy_endpoint = || {
        let table = p.proxy.route_table();
        let backend = table.lookup("h", "/").unwrap().backend().unwrap();
        backend
            .in_flight()
            .into_iter()
            .find(|(_, n)| *n > 0)
            .map(|(addr, _)| addr)
    };
    for _ in 0..2 {
        let addr = p.http;
        let slow = tokio::spawn(async move { http_get(addr, "h", "/sleep").await.unwrap() });
        let deadline = Instant::now() + Duration::from_secs(1);
        let busy = loop {
            if let Some(busy) = busy_endpoint() {
                break busy;
            }
            assert!(
                Instant::now() < deadline,
                "slow request never became in-flight"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let busy_name = if busy == a.addr { "a" } else { "b" };
        // Every request while the slow one runs must avoid its endpoint.
        for _ in 0..5 {
            let r = http_get(p.http, "h", "/").await.unwrap();
            assert_ne!(r.backend(), busy_name, "request sent to the busy endpoint");
        }
        assert_eq!(
            busy_endpoint(),
            Some(busy),
            "slow request ended too early for the check"
        );
        assert_eq!(slow.await.unwrap().backend(), busy_name);
        // The count drops once the proxy has finished the response body.
        let deadline = Instant::now() + Duration::from_secs(1);
        while busy_endpoint().is_some() {
            assert!(
                Instant::now() < deadline,
                "in-flight count must drop when the response ends"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_failure_names_the_address() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let config = IngressConfig {
        http_bind: Some(addr),
        https_bind: None,
        ..IngressConfig::default()
    };
    let proxy = Arc::new(sluice_ingress::IngressProxy::new(config));
    let err = proxy.serve(std::future::pending()).await.unwrap_err();
    assert_eq!(err.to_string(), format!("ingress: cannot listen on {addr}"));
    let cause = std::error::Error::source(&err).map(ToString::to_string);
    assert!(
        cause.as_deref().is_some_and(|c| c.contains("in use")),
        "the cause is in the chain: {cause:?}"
    );
}

/// A proxy that is serving before its first route table (an agent just restarted) must not
/// answer 404 for routes it has not loaded: the request waits and is routed once it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_before_the_first_route_table_wait_for_it() {
    let (objects, _backends, _) = cafe().await;
    let proxy = Arc::new(sluice_ingress::IngressProxy::new(IngressConfig::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::clone(&proxy);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = served
            .serve_listeners(Some(listener), None, async {
                let _ = stopped.await;
            })
            .await;
    });
    let early = tokio::spawn(async move { http_get(addr, "cafe.example.com", "/coffee").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!early.is_finished(), "answered before any route was loaded");
    proxy.apply(&snapshot(&objects));
    let r = tokio::time::timeout(Duration::from_secs(5), early)
        .await
        .expect("served once the routes are loaded")
        .unwrap()
        .unwrap();
    assert_eq!((r.status, r.backend()), (StatusCode::OK, "coffee"));
    drop(stop);
}

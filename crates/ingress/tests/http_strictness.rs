//! HTTP details the proxy must get right: upgrades in origin form and only for allowed
//! protocols, client body faults answered as client faults, Host and header-size checks.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::{Request, StatusCode};
use serde_json::Value;
use sluice_ingress::IngressConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Host `cafe.example.com` routed to service `svc` with one endpoint on `port`.
fn cafe_to(port: u16) -> Vec<Value> {
    let mut objects = vec![
        ingress_class(),
        ingress(
            "cafe",
            vec![rule("cafe.example.com", vec![path("/", "Prefix", "svc")])],
        ),
    ];
    objects.extend(service("svc", &[port]));
    objects
}

fn status_line(reply: &str) -> &str {
    reply.lines().next().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_reaches_the_backend_in_origin_form_with_the_client_host() {
    let backend = recording_backend().await;
    let p = start(IngressConfig::default(), &cafe_to(backend.addr.port())).await;
    let mut ws = websocket(p.http, "cafe.example.com", "/ws/chat?room=1")
        .await
        .unwrap();
    assert_eq!(ws_roundtrip(&mut ws, "hi").await.unwrap(), "rec:hi");
    let head = backend.heads.lock().unwrap()[0].clone();
    assert!(
        head.starts_with("GET /ws/chat?room=1 HTTP/1.1\r\n"),
        "backend saw: {head}"
    );
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nhost: cafe.example.com\r\n"), "{head}");
    assert!(lower.contains("\r\nupgrade: websocket\r\n"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrade_is_stripped_and_served_as_plain_http() {
    let backend = recording_backend().await;
    let p = start(IngressConfig::default(), &cafe_to(backend.addr.port())).await;
    let reply = raw_exchange(
        p.http,
        b"GET /app HTTP/1.1\r\nHost: cafe.example.com\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("\r\n\r\nok"), "{reply}");
    let head = backend.heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(head.starts_with("get /app http/1.1\r\n"), "{head}");
    assert!(
        !head.contains("upgrade") && !head.contains("http2-settings"),
        "{head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_upgrades_decides_which_protocols_are_tunnelled() {
    let backend = recording_backend().await;
    let config = IngressConfig {
        allowed_upgrades: vec!["websocket".to_owned(), "Foo".to_owned()],
        ..IngressConfig::default()
    };
    let p = start(config, &cafe_to(backend.addr.port())).await;
    let mut s = TcpStream::connect(p.http).await.unwrap();
    s.write_all(
        b"GET /x HTTP/1.1\r\nHost: cafe.example.com\r\nConnection: upgrade\r\nUpgrade: h2c, foo/2\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let seen = backend.heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(seen.contains("\r\nupgrade: foo/2\r\n"), "{seen}");
    // The default list has only websocket: `foo` is served as plain HTTP.
    let p = start(IngressConfig::default(), &cafe_to(backend.addr.port())).await;
    let reply = raw_exchange(
        p.http,
        b"GET /y HTTP/1.1\r\nHost: cafe.example.com\r\nConnection: upgrade, close\r\nUpgrade: foo\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

/// Bad chunked framing is the client's fault: 400, no backend connection, no 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_body_gets_400_and_no_backend_is_blamed() {
    let backend = recording_backend().await;
    let p = start(IngressConfig::default(), &cafe_to(backend.addr.port())).await;
    let reply = raw_exchange(
        p.http,
        b"POST /up HTTP/1.1\r\nHost: cafe.example.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("request body"), "{reply}");
    assert_eq!(backend.connections.load(Ordering::SeqCst), 0);

    // Past the buffered part the body is streamed; a framing error there is still a 400.
    let big = "x".repeat(20 * 1024);
    let req = format!(
        "POST /up HTTP/1.1\r\nHost: cafe.example.com\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\nzz\r\n",
        big.len()
    );
    let reply = raw_exchange(p.http, req.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    let stats = p.proxy.stats();
    assert_eq!(stats.responses_by_class[4], 0, "{stats:?}");
    assert_eq!(stats.upstream_connect_failures, 0, "{stats:?}");
    assert_eq!(stats.client_body_errors, 2, "{stats:?}");
}

/// A client that stops sending its body gets 408 after `client_body_timeout`, and a small
/// body is read before any backend is dialled, so no backend connection is held meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_body_gets_408_without_holding_a_backend_connection() {
    let backend = recording_backend().await;
    let config = IngressConfig {
        client_body_timeout: Duration::from_millis(300),
        response_timeout: Duration::from_secs(3),
        ..IngressConfig::default()
    };
    let p = start(config, &cafe_to(backend.addr.port())).await;
    let started = Instant::now();
    let reply = raw_exchange(
        p.http,
        b"POST /up HTTP/1.1\r\nHost: cafe.example.com\r\nContent-Length: 100\r\n\r\nonly ten b",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(backend.connections.load(Ordering::SeqCst), 0);
    let stats = p.proxy.stats();
    assert_eq!(stats.client_body_timeouts, 1, "{stats:?}");
    assert_eq!(stats.upstream_timeouts, 0, "{stats:?}");
    assert_eq!(stats.responses_by_class[4], 0, "{stats:?}");
}

/// A large upload that keeps arriving is not cut by `response_timeout`: that clock starts
/// when the body has been sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_upload_longer_than_the_response_timeout_succeeds() {
    let backend = echo("svc").await;
    let config = IngressConfig {
        response_timeout: Duration::from_millis(400),
        client_body_timeout: Duration::from_secs(2),
        request_buffer_bytes: 1024,
        ..IngressConfig::default()
    };
    let p = start(config, &cafe_to(backend.addr.port())).await;
    let mut s = TcpStream::connect(p.http).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: cafe.example.com\r\nContent-Length: 12288\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let piece = vec![b'x'; 1024];
    for _ in 0..12 {
        s.write_all(&piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut out),
    )
    .await;
    let reply = String::from_utf8_lossy(&out);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("body-bytes: 12288\n"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_invalid_or_conflicting_host_gets_400() {
    let backend = echo("svc").await;
    let p = start(IngressConfig::default(), &cafe_to(backend.addr.port())).await;
    for (request, want) in [
        (
            "GET / HTTP/1.1\r\nHost: cafe.example.com\r\nHost: other.example.com\r\n",
            "400",
        ),
        ("GET / HTTP/1.1\r\nHost: cafe.example.com/../x\r\n", "400"),
        ("GET / HTTP/1.1\r\nHost: user@cafe.example.com\r\n", "400"),
        ("GET / HTTP/1.1\r\nHost: cafe..example.com\r\n", "400"),
        ("GET / HTTP/1.1\r\nHost: cafe.example.com:80x\r\n", "400"),
        (
            "GET http://other.example.com/ HTTP/1.1\r\nHost: cafe.example.com\r\n",
            "400",
        ),
        (
            "GET http://cafe.example.com/ HTTP/1.1\r\nHost: CAFE.example.com\r\n",
            "200",
        ),
        ("GET / HTTP/1.1\r\nHost: cafe.example.com:8080\r\n", "200"),
        ("GET / HTTP/1.1\r\nHost: [::1]:80\r\n", "404"),
    ] {
        let reply = raw_exchange(
            p.http,
            format!("{request}Connection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(
            status_line(&reply).starts_with(&format!("HTTP/1.1 {want}")),
            "{request:?} → {reply}"
        );
        if want == "400" {
            assert!(reply.contains("Host"), "{request:?} → {reply}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431_and_long_uris_414() {
    let backend = echo("svc").await;
    let p = start(IngressConfig::default(), &cafe_to(backend.addr.port())).await;
    let request = |uri: &str, headers: &[(usize, usize)]| {
        let mut r =
            format!("GET {uri} HTTP/1.1\r\nHost: cafe.example.com\r\nConnection: close\r\n");
        for (i, len) in headers {
            r.push_str(&format!("x-big-{i}: {}\r\n", "v".repeat(*len)));
        }
        r.push_str("\r\n");
        r
    };
    let long_uri = format!("/{}", "u".repeat(9 * 1024));
    for (name, req, want) in [
        ("7 KiB header", request("/", &[(0, 7 * 1024)]), "200"),
        ("9 KiB header line", request("/", &[(0, 9 * 1024)]), "431"),
        ("64 KiB header line", request("/", &[(0, 64 * 1024)]), "431"),
        (
            "5 × 7 KiB headers",
            request(
                "/",
                &[(0, 7168), (1, 7168), (2, 7168), (3, 7168), (4, 7168)],
            ),
            "431",
        ),
        ("9 KiB URI", request(&long_uri, &[]), "414"),
    ] {
        let reply = raw_exchange(p.http, req.as_bytes()).await;
        assert!(
            status_line(&reply).starts_with(&format!("HTTP/1.1 {want}")),
            "{name} → {}",
            status_line(&reply)
        );
    }
    // The limits are settings.
    let config = IngressConfig {
        max_header_line_bytes: 16 * 1024,
        max_header_bytes: 64 * 1024,
        ..IngressConfig::default()
    };
    let p = start(config, &cafe_to(backend.addr.port())).await;
    let big = request(
        "/",
        &[(0, 9 * 1024), (1, 7168), (2, 7168), (3, 7168), (4, 7168)],
    );
    let reply = raw_exchange(p.http, big.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{}", status_line(&reply));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_over_http2_get_431() {
    let backend = echo("svc").await;
    let (secret, _) = tls_secret("cafe-secret", &["cafe.example.com"]);
    let mut objects = cafe_to(backend.addr.port());
    objects[1]["spec"]["tls"] =
        serde_json::json!([{"hosts": ["cafe.example.com"], "secretName": "cafe-secret"}]);
    objects.push(secret);
    let p = start(IngressConfig::default(), &objects).await;
    let (tls, _) = tls_connect(p.https, "cafe.example.com", &[b"h2"])
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for (len, want) in [
        (4 * 1024, StatusCode::OK),
        (9 * 1024, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        (40 * 1024, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
    ] {
        let req = Request::builder()
            .uri("https://cafe.example.com/")
            .header("x-big", "v".repeat(len))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), want, "{len} byte header");
    }
}

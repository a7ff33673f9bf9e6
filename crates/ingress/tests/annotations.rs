//! ingress-nginx annotations executed by the proxy, on loopback: Kubernetes objects →
//! `sluice_routes::plan` → the running proxy → what a client (and the backend) sees.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::{Request, StatusCode};
use serde_json::{Value, json};
use sluice_ingress::IngressConfig;

/// An Ingress `name` for `host` with `paths`, annotated `nginx.ingress.kubernetes.io/<k>: v`.
fn annotated(name: &str, host: &str, paths: Vec<Value>, pairs: &[(&str, &str)]) -> Value {
    let mut i = ingress(name, vec![rule(host, paths)]);
    for (k, v) in pairs {
        i["metadata"]["annotations"][format!("nginx.ingress.kubernetes.io/{k}")] = json!(v);
    }
    i
}

/// Our class, the given Ingresses and one echo backend per service name.
async fn serve(ingresses: Vec<Value>, services: &[&str]) -> (Running, Vec<EchoBackend>) {
    let (running, backends, warnings) = serve_any(ingresses, services).await;
    assert!(warnings.is_empty(), "unexpected warnings: {warnings:?}");
    (running, backends)
}

/// Like [`serve`], returning the warnings instead of failing on them.
async fn serve_any(
    ingresses: Vec<Value>,
    services: &[&str],
) -> (Running, Vec<EchoBackend>, Vec<String>) {
    let mut objects = vec![ingress_class()];
    objects.extend(ingresses);
    let mut backends = Vec::new();
    for name in services {
        let b = echo(name).await;
        objects.extend(service(name, &[b.addr.port()]));
        backends.push(b);
    }
    let (running, warnings) = start_any(IngressConfig::default(), &objects).await;
    (
        running,
        backends,
        warnings.iter().map(ToString::to_string).collect(),
    )
}

fn request(method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_target_replaces_the_path_with_capture_groups_and_keeps_the_query() {
    let (p, _b) = serve(
        vec![
            annotated(
                "groups",
                "api.test",
                vec![path("/something(/|$)(.*)", "ImplementationSpecific", "a")],
                &[("use-regex", "true"), ("rewrite-target", "/$2")],
            ),
            // The classic fan-out: every path under /coffee reaches the backend as `/`.
            annotated(
                "fanout",
                "cafe.test",
                vec![path("/coffee", "Prefix", "b")],
                &[("rewrite-target", "/")],
            ),
        ],
        &["a", "b"],
    )
    .await;
    for (path, seen) in [
        ("/something/new?x=1", "/new?x=1"),
        ("/something", "/"),
        ("/SOMETHING/a/b", "/a/b"),
    ] {
        let r = http_get(p.http, "api.test", path).await.unwrap();
        assert_eq!(
            (r.status, r.backend()),
            (StatusCode::OK, "a"),
            "{path}: {}",
            r.body
        );
        assert!(
            r.body.starts_with(&format!("a GET {seen}\n")),
            "{path}: {}",
            r.body
        );
    }
    let r = http_get(p.http, "cafe.test", "/coffee/latte?size=l")
        .await
        .unwrap();
    assert!(r.body.starts_with("b GET /?size=l\n"), "{}", r.body);
    assert_eq!(
        http_get(p.http, "api.test", "/other").await.unwrap().status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_hosts_redirect_plain_http_with_308_unless_disabled_and_force_redirects_any_host() {
    let (secret, _) = tls_secret("s", &["tls.test", "off.test"]);
    let mut tls = annotated("tls", "tls.test", vec![path("/", "Prefix", "a")], &[]);
    tls["spec"]["tls"] = json!([{"hosts": ["tls.test"], "secretName": "s"}]);
    let mut off = annotated(
        "off",
        "off.test",
        vec![path("/", "Prefix", "a")],
        &[("ssl-redirect", "false")],
    );
    off["spec"]["tls"] = json!([{"hosts": ["off.test"], "secretName": "s"}]);
    let forced = annotated(
        "forced",
        "forced.test",
        vec![path("/", "Prefix", "a")],
        &[("force-ssl-redirect", "true")],
    );
    let plain = annotated("plain", "plain.test", vec![path("/", "Prefix", "a")], &[]);
    let (p, _b) = serve(vec![secret, tls, off, forced, plain], &["a"]).await;
    let https_port = p.https.port();
    for host in ["tls.test", "forced.test"] {
        let r = http_get(p.http, host, "/x/../y?q=1").await.unwrap();
        assert_eq!(
            r.status,
            StatusCode::PERMANENT_REDIRECT,
            "{host}: {}",
            r.body
        );
        // The URL as the client sent it, on the HTTPS listener's port.
        assert_eq!(
            header(&r, "location"),
            Some(format!("https://{host}:{https_port}/x/../y?q=1").as_str())
        );
    }
    for host in ["off.test", "plain.test"] {
        assert_eq!(
            http_get(p.http, host, "/").await.unwrap().status,
            StatusCode::OK,
            "{host}"
        );
    }
    // Over HTTPS the TLS host is served; a plain host too, with the default certificate.
    for host in ["tls.test", "plain.test"] {
        let r = https_get(p.https, host, "/", false).await.unwrap();
        assert_eq!((r.status, r.backend()), (StatusCode::OK, "a"), "{host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_protocol_h2c_and_grpc_speak_http2_and_https_to_a_plain_backend_is_a_clear_502() {
    let (p, _b) = serve(
        vec![
            annotated(
                "h2c",
                "h2c.test",
                vec![path("/", "Prefix", "a")],
                &[("backend-protocol", "H2C")],
            ),
            annotated(
                "grpc",
                "grpc.test",
                vec![path("/", "Prefix", "a")],
                &[("backend-protocol", "GRPC")],
            ),
            annotated(
                "tls",
                "tls.test",
                vec![path("/", "Prefix", "a")],
                &[("backend-protocol", "HTTPS")],
            ),
            annotated("http", "http.test", vec![path("/", "Prefix", "a")], &[]),
        ],
        &["a"],
    )
    .await;
    for host in ["h2c.test", "grpc.test"] {
        let r = http_get(p.http, host, "/svc/Method").await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{host}: {}", r.body);
        assert!(r.body.contains("version: HTTP/2.0\n"), "{host}: {}", r.body);
        assert!(r.body.contains("te: trailers\n"), "{host}: {}", r.body);
    }
    let r = http_get(p.http, "http.test", "/").await.unwrap();
    assert!(r.body.contains("version: HTTP/1.1\n"), "{}", r.body);
    let r = http_get(p.http, "tls.test", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    // HTTPS to an endpoint that speaks plain HTTP (tests/upstreams.rs has real TLS ones).
    assert!(
        r.body.starts_with(
            "502 Bad Gateway: service default/a:80: TLS handshake with the endpoint failed: "
        ),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_body_size_limits_each_route() {
    let (p, _b) = serve(
        vec![
            annotated(
                "small",
                "small.test",
                vec![path("/", "Prefix", "a")],
                &[("proxy-body-size", "1k")],
            ),
            annotated(
                "unlimited",
                "big.test",
                vec![path("/", "Prefix", "a")],
                &[("proxy-body-size", "0")],
            ),
        ],
        &["a"],
    )
    .await;
    let post = |host: &str, size: usize| {
        Request::builder()
            .method("POST")
            .uri("/upload")
            .header("host", host)
            .body(Full::new(Bytes::from(vec![b'x'; size])))
            .unwrap()
    };
    assert_eq!(
        http_send(p.http, post("small.test", 1024))
            .await
            .unwrap()
            .status,
        StatusCode::OK
    );
    let r = http_send(p.http, post("small.test", 1025)).await.unwrap();
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    assert!(r.body.contains("limited to 1024 bytes"), "{}", r.body);
    // Beyond the proxy's default of 1 MiB.
    let r = http_send(p.http, post("big.test", 3 << 20)).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains(&format!("body-bytes: {}\n", 3 << 20)),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_read_and_connect_timeouts_apply_per_route() {
    // An endpoint whose accept queue is full: connection attempts hang (SYNs are dropped).
    let full = tokio::net::TcpSocket::new_v4().unwrap();
    full.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = full.listen(0).unwrap();
    let full_port = full.local_addr().unwrap().port();
    let mut queued = Vec::new();
    for _ in 0..4 {
        let c = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(("127.0.0.1", full_port)),
        )
        .await;
        if let Ok(Ok(c)) = c {
            queued.push(c);
        }
    }
    let mut objects = vec![
        annotated(
            "slow",
            "slow.test",
            vec![path("/", "Prefix", "a")],
            &[("proxy-read-timeout", "1")],
        ),
        annotated(
            "hang",
            "hang.test",
            vec![path("/", "Prefix", "full")],
            &[("proxy-connect-timeout", "1")],
        ),
    ];
    objects.extend(service("full", &[full_port]));
    let (p, _b) = serve(objects, &["a"]).await;
    let started = Instant::now();
    let r = http_get(p.http, "slow.test", "/sleep").await.unwrap();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.body);
    assert_eq!(
        r.body,
        "504 Gateway Timeout: service default/a:80 did not answer within 1s\n"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let r = http_get(p.http, "hang.test", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    // After 1 s instead of the proxy's default 5 s (no other endpoint to retry on).
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2900),
        "{waited:?}"
    );
    drop((queued, full));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_send_timeout_ends_an_upload_the_backend_stopped_reading() {
    // A backend that reads the request head and then never reads again nor answers.
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stuck_port = stuck.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = stuck.accept().await {
            let mut head = [0u8; 512];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut head).await;
            held.push(s);
        }
    });
    let mut objects = vec![
        ingress_class(),
        annotated(
            "upload",
            "up.test",
            vec![path("/", "Prefix", "stuck")],
            &[("proxy-send-timeout", "1"), ("proxy-body-size", "0")],
        ),
    ];
    objects.extend(service("stuck", &[stuck_port]));
    let (p, _) = start_any(IngressConfig::default(), &objects).await;
    // 256 MiB announced, written as fast as the proxy takes it: far more than the socket
    // buffers hold, so the upload stalls on the backend, not on us.
    let mut client = tokio::net::TcpStream::connect(p.http).await.unwrap();
    let total: usize = 256 << 20;
    let head = format!("POST /upload HTTP/1.1\r\nHost: up.test\r\nContent-Length: {total}\r\n\r\n");
    let started = Instant::now();
    let (mut rd, mut wr) = client.split();
    let upload = async {
        tokio::io::AsyncWriteExt::write_all(&mut wr, head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..total / chunk.len() {
            tokio::io::AsyncWriteExt::write_all(&mut wr, &chunk).await?;
        }
        std::io::Result::Ok(())
    };
    let answer = async {
        let mut buf = vec![0u8; 4096];
        let n = tokio::io::AsyncReadExt::read(&mut rd, &mut buf)
            .await
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let reply = tokio::select! {
        reply = answer => reply,
        _ = async { let _ = upload.await; std::future::pending::<()>().await } => unreachable!(),
        _ = tokio::time::sleep(Duration::from_secs(20)) => panic!("no answer"),
    };
    assert!(reply.starts_with("HTTP/1.1 504"), "{reply}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_by_header_cookie_and_weight() {
    let canary = |name: &str, host: &str, pairs: &[(&str, &str)]| {
        let mut all = vec![("canary", "true")];
        all.extend_from_slice(pairs);
        annotated(name, host, vec![path("/", "Prefix", "canary")], &all)
    };
    let (p, _b) = serve(
        vec![
            annotated("main-h", "h.test", vec![path("/", "Prefix", "main")], &[]),
            canary(
                "canary-h",
                "h.test",
                &[
                    ("canary-by-header", "X-Canary"),
                    ("canary-by-cookie", "beta"),
                ],
            ),
            annotated("main-v", "v.test", vec![path("/", "Prefix", "main")], &[]),
            canary(
                "canary-v",
                "v.test",
                &[
                    ("canary-by-header", "X-Canary"),
                    ("canary-by-header-value", "yes-please"),
                ],
            ),
            annotated("main-w", "w.test", vec![path("/", "Prefix", "main")], &[]),
            canary(
                "canary-w",
                "w.test",
                &[("canary-weight", "100"), ("canary-by-header", "X-Canary")],
            ),
        ],
        &["main", "canary"],
    )
    .await;
    let who = |host: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let addr = p.http;
        async move {
            http_send(addr, request("GET", host, "/", headers))
                .await
                .unwrap()
                .backend()
                .to_owned()
        }
    };
    assert_eq!(who("h.test", &[]).await, "main");
    assert_eq!(who("h.test", &[("x-canary", "always")]).await, "canary");
    assert_eq!(
        who(
            "h.test",
            &[("x-canary", "never"), ("cookie", "beta=always")]
        )
        .await,
        "main"
    );
    assert_eq!(
        who(
            "h.test",
            &[("x-canary", "other"), ("cookie", "beta=always")]
        )
        .await,
        "canary"
    );
    assert_eq!(
        who("h.test", &[("cookie", "a=1; beta=never")]).await,
        "main"
    );
    assert_eq!(who("v.test", &[("x-canary", "yes-please")]).await, "canary");
    assert_eq!(who("v.test", &[("x-canary", "always")]).await, "main");
    // Weight 100: every request, unless the header says never.
    for _ in 0..5 {
        assert_eq!(who("w.test", &[]).await, "canary");
    }
    assert_eq!(who("w.test", &[("x-canary", "never")]).await, "main");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_affinity_keeps_a_client_on_its_endpoint() {
    let a = echo("a").await;
    let b = echo("b").await;
    let mut objects = vec![
        ingress_class(),
        annotated(
            "sticky",
            "s.test",
            vec![path("/app", "Prefix", "ab")],
            &[
                ("affinity", "cookie"),
                ("session-cookie-name", "route"),
                ("session-cookie-max-age", "60"),
            ],
        ),
    ];
    objects.extend(service("ab", &[a.addr.port(), b.addr.port()]));
    let p = start(IngressConfig::default(), &objects).await;
    let first = http_get(p.http, "s.test", "/app").await.unwrap();
    let cookie = header(&first, "set-cookie")
        .expect("a cookie is set")
        .to_owned();
    assert!(cookie.starts_with("route="), "{cookie}");
    assert!(
        cookie.ends_with("; Path=/app; Max-Age=60; HttpOnly"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    for _ in 0..20 {
        let r = http_send(
            p.http,
            request("GET", "s.test", "/app/x", &[("cookie", &pair)]),
        )
        .await
        .unwrap();
        assert_eq!(r.backend(), first.backend(), "sticky");
        assert!(
            header(&r, "set-cookie").is_none(),
            "no new cookie while the endpoint is ready"
        );
    }
    // A cookie for an endpoint that is gone gets a new endpoint and a new cookie.
    let r = http_send(
        p.http,
        request(
            "GET",
            "s.test",
            "/app",
            &[("cookie", "route=0123456789abcdef")],
        ),
    )
    .await
    .unwrap();
    assert!(header(&r, "set-cookie").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_admits_listed_clients_only() {
    let (p, _b, warnings) = serve_any(
        vec![
            annotated(
                "lan",
                "lan.test",
                vec![path("/", "Prefix", "a")],
                &[("whitelist-source-range", "10.0.0.0/8")],
            ),
            annotated(
                "local",
                "local.test",
                vec![path("/", "Prefix", "a")],
                &[("allowlist-source-range", "192.0.2.0/24,127.0.0.1")],
            ),
            annotated(
                "broken",
                "broken.test",
                vec![path("/", "Prefix", "a")],
                &[("allowlist-source-range", "127.0.0.1,nonsense")],
            ),
        ],
        &["a"],
    )
    .await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("Ingress default/broken: annotation nginx.ingress.kubernetes.io/allowlist-source-range entry \"nonsense\""), "{warnings:?}");
    let r = http_get(p.http, "lan.test", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(
        http_get(p.http, "local.test", "/").await.unwrap().status,
        StatusCode::OK
    );
    // An invalid list fails closed.
    assert_eq!(
        http_get(p.http, "broken.test", "/").await.unwrap().status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_and_app_root_are_answered_by_the_proxy() {
    let (p, _b) = serve(
        vec![
            annotated(
                "moved",
                "moved.test",
                vec![path("/", "Prefix", "a")],
                &[("permanent-redirect", "https://new.test/")],
            ),
            annotated(
                "coded",
                "coded.test",
                vec![path("/", "Prefix", "a")],
                &[
                    ("permanent-redirect", "https://new.test/"),
                    ("permanent-redirect-code", "308"),
                ],
            ),
            annotated(
                "away",
                "away.test",
                vec![path("/", "Prefix", "a")],
                &[("temporal-redirect", "https://tmp.test/")],
            ),
            annotated(
                "app",
                "app.test",
                vec![path("/", "Prefix", "a")],
                &[("app-root", "/app1")],
            ),
        ],
        &["a"],
    )
    .await;
    for (host, code, location) in [
        (
            "moved.test",
            StatusCode::MOVED_PERMANENTLY,
            "https://new.test/",
        ),
        (
            "coded.test",
            StatusCode::PERMANENT_REDIRECT,
            "https://new.test/",
        ),
        ("away.test", StatusCode::FOUND, "https://tmp.test/"),
        ("app.test", StatusCode::FOUND, "http://app.test/app1"),
    ] {
        let r = http_get(p.http, host, "/").await.unwrap();
        assert_eq!(
            (r.status, header(&r, "location")),
            (code, Some(location)),
            "{host}"
        );
    }
    let r = http_get(p.http, "app.test", "/app1/page").await.unwrap();
    assert_eq!((r.status, r.backend()), (StatusCode::OK, "a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_is_answered_and_responses_carry_the_headers() {
    let (p, _b) = serve(
        vec![
            annotated(
                "any",
                "any.test",
                vec![path("/", "Prefix", "a")],
                &[("enable-cors", "true")],
            ),
            annotated(
                "listed",
                "listed.test",
                vec![path("/", "Prefix", "a")],
                &[
                    ("enable-cors", "true"),
                    (
                        "cors-allow-origin",
                        "https://app.test, https://*.example.test",
                    ),
                    ("cors-allow-methods", "GET, POST"),
                    ("cors-max-age", "60"),
                ],
            ),
        ],
        &["a"],
    )
    .await;
    let r = http_send(
        p.http,
        request(
            "OPTIONS",
            "any.test",
            "/api",
            &[("origin", "https://x.test")],
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
    assert_eq!(
        header(&r, "access-control-allow-methods"),
        Some("GET, PUT, POST, DELETE, PATCH, OPTIONS")
    );
    assert_eq!(header(&r, "access-control-allow-credentials"), Some("true"));
    assert_eq!(header(&r, "access-control-max-age"), Some("1728000"));
    let r = http_send(
        p.http,
        request(
            "GET",
            "listed.test",
            "/",
            &[("origin", "https://a.example.test")],
        ),
    )
    .await
    .unwrap();
    assert_eq!((r.status, r.backend()), (StatusCode::OK, "a"));
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        Some("https://a.example.test")
    );
    assert_eq!(
        header(&r, "access-control-allow-methods"),
        Some("GET, POST")
    );
    assert_eq!(header(&r, "access-control-max-age"), Some("60"));
    // An origin not listed: no CORS headers, and its preflight goes to the backend.
    let r = http_send(
        p.http,
        request(
            "OPTIONS",
            "listed.test",
            "/",
            &[("origin", "https://evil.test")],
        ),
    )
    .await
    .unwrap();
    assert_eq!((r.status, r.backend()), (StatusCode::OK, "a"));
    assert!(header(&r, "access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_vhost_and_x_forwarded_prefix_reach_the_backend() {
    let (p, _b) = serve(
        vec![annotated(
            "v",
            "public.test",
            vec![path("/", "Prefix", "a")],
            &[
                ("upstream-vhost", "internal.svc"),
                ("x-forwarded-prefix", "/shop"),
            ],
        )],
        &["a"],
    )
    .await;
    let r = http_get(p.http, "public.test", "/").await.unwrap();
    assert!(r.body.contains("host: internal.svc\n"), "{}", r.body);
    assert!(r.body.contains("x-forwarded-prefix: /shop\n"), "{}", r.body);
    assert!(
        r.body.contains("x-forwarded-host: public.test\n"),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_rps_and_limit_connections_answer_503() {
    let (p, _b) = serve(
        vec![
            annotated(
                "rps",
                "rps.test",
                vec![path("/", "Prefix", "a")],
                &[("limit-rps", "1"), ("limit-burst-multiplier", "1")],
            ),
            annotated(
                "conn",
                "conn.test",
                vec![path("/", "Prefix", "a")],
                &[("limit-connections", "1")],
            ),
        ],
        &["a"],
    )
    .await;
    // One per second plus a burst of one.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            http_get(p.http, "rps.test", "/")
                .await
                .unwrap()
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 503]);
    let r = http_get(p.http, "rps.test", "/").await.unwrap();
    assert!(r.body.contains("limit-rps"), "{}", r.body);
    // One request at a time per client: a second one while /sleep runs is refused.
    let addr = p.http;
    let slow =
        tokio::spawn(async move { http_get(addr, "conn.test", "/sleep").await.unwrap().status });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = http_get(p.http, "conn.test", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(r.body.contains("limit-connections"), "{}", r.body);
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    assert_eq!(
        http_get(p.http, "conn.test", "/").await.unwrap().status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_with_apr1_and_sha_htpasswd_entries() {
    // openssl passwd -apr1 -salt r31..... myPassword; {SHA} of "secret".
    let users = json!({"kind": "Secret", "metadata": {"namespace": "default", "name": "users"},
        "type": "Opaque", "stringData": {"auth": "alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/\nbob:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n"}});
    let (p, _b) = serve(
        vec![
            users,
            annotated(
                "private",
                "private.test",
                vec![path("/", "Prefix", "a")],
                &[
                    ("auth-type", "basic"),
                    ("auth-secret", "users"),
                    ("auth-realm", "Authentication Required"),
                ],
            ),
        ],
        &["a"],
    )
    .await;
    let get = |auth: Option<&'static str>| {
        let addr = p.http;
        async move {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| ("authorization", a)).into_iter().collect();
            http_send(addr, request("GET", "private.test", "/", &headers))
                .await
                .unwrap()
        }
    };
    let r = get(None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(&r, "www-authenticate"),
        Some("Basic realm=\"Authentication Required\"")
    );
    // alice:myPassword, bob:secret, alice:wrong
    assert_eq!(
        get(Some("Basic YWxpY2U6bXlQYXNzd29yZA==")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(Some("Basic Ym9iOnNlY3JldA==")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(Some("Basic YWxpY2U6d3Jvbmc=")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(get(Some("Bearer x")).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snippets_are_not_executed_and_are_named_in_the_warnings() {
    let a = echo("a").await;
    let mut objects = vec![
        ingress_class(),
        annotated(
            "snippet",
            "s.test",
            vec![path("/", "Prefix", "a")],
            &[
                ("configuration-snippet", "return 418;"),
                ("server-snippet", "location /x { return 418; }"),
            ],
        ),
    ];
    objects.extend(service("a", &[a.addr.port()]));
    let proxy = sluice_ingress::IngressProxy::new(IngressConfig::default());
    let warnings: Vec<String> = proxy
        .apply(&snapshot(&objects))
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        warnings,
        [
            "Ingress default/snippet: annotation nginx.ingress.kubernetes.io/configuration-snippet is a configuration snippet, which sluice never executes; ignored",
            "Ingress default/snippet: annotation nginx.ingress.kubernetes.io/server-snippet is a configuration snippet, which sluice never executes; ignored",
        ]
    );
    let table = proxy.route_table();
    let route = table.lookup("s.test", "/").unwrap();
    assert_eq!(route.backend().unwrap().service().name.as_ref(), "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificates_serve_only_without_a_valid_one_and_bad_keys_are_named() {
    let (valid, valid_der) = tls_secret_dated("valid", &["shop.test"], 2020, 2090, true);
    let (expired, expired_der) =
        tls_secret_dated("expired", &["shop.test", "old.test"], 2020, 2021, true);
    let (fallback, fallback_der) = tls_secret_dated("fallback", &["bad.test"], 2020, 2090, true);
    let (wrong_key, _) = tls_secret_dated("wrong-key", &["bad.test"], 2020, 2090, false);
    let with_tls = |name: &str, host: &str, secret: &str| {
        let mut i = annotated(name, host, vec![path("/", "Prefix", "a")], &[]);
        i["spec"]["tls"] = json!([{"hosts": [host], "secretName": secret}]);
        i
    };
    let (p, _b, warnings) = serve_any(
        vec![
            valid,
            expired,
            fallback,
            wrong_key,
            // The expired certificate comes first in conflict order (name) for shop.test.
            with_tls("a-expired-shop", "shop.test", "expired"),
            with_tls("b-valid-shop", "shop.test", "valid"),
            with_tls("c-old", "old.test", "expired"),
            with_tls("d-bad", "bad.test", "wrong-key"),
            with_tls("e-bad", "bad.test", "fallback"),
        ],
        &["a"],
    )
    .await;
    let cert = |sni: &'static str| {
        let addr = p.https;
        async move {
            https_get(addr, sni, "/", false)
                .await
                .unwrap()
                .peer_cert
                .unwrap()
        }
    };
    assert_eq!(
        cert("shop.test").await,
        valid_der,
        "a valid certificate beats an expired one"
    );
    assert_eq!(
        cert("old.test").await,
        expired_der,
        "nothing better: the expired one is served"
    );
    assert_eq!(
        cert("bad.test").await,
        fallback_der,
        "a key that does not load is skipped"
    );
    assert!(
        warnings.iter().any(|w| w.starts_with("Ingress default/a-expired-shop: secret default/expired: the certificate expired at 2021-01-01T00:00:00Z")),
        "{warnings:#?}"
    );
    assert!(
        warnings.iter().any(|w| w.starts_with("Ingress default/d-bad: secret default/wrong-key is not a valid kubernetes.io/tls secret: tls.key does not fit tls.crt")),
        "{warnings:#?}"
    );
}

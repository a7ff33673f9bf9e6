//! What the listeners do with who is calling: the PROXY protocol (v1, v2, before TLS),
//! trusted proxies' `X-Forwarded-For`, and the JSON access log line of every request.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::{Request, StatusCode};
use serde_json::{Value, json};
use sluice_ingress::{AccessLogSink, IngressConfig, IngressProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Access log lines kept in memory.
#[derive(Debug, Default)]
struct Lines(Mutex<Vec<String>>);

impl AccessLogSink for Lines {
    fn write(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }
}

impl Lines {
    /// The lines written so far, parsed, once there are `n` (lines are written when a
    /// response body is done, which may be just after the client read it).
    async fn wait_for(&self, n: usize) -> Vec<Value> {
        for _ in 0..100 {
            let lines = self.0.lock().unwrap().clone();
            if lines.len() >= n {
                return lines
                    .iter()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fewer than {n} lines: {:?}", self.0.lock().unwrap());
    }
}

/// Serves `objects` with `config`, logging to `log`.
async fn serve(config: IngressConfig, objects: &[Value], log: Option<Arc<Lines>>) -> Running {
    let sink = log.map(|l| l as Arc<dyn AccessLogSink>);
    let proxy = Arc::new(IngressProxy::with_access_log(config, sink));
    let warnings = proxy.apply(&snapshot(objects));
    assert!(warnings.is_empty(), "{warnings:?}");
    run(proxy).await
}

/// Host `h` → Service `svc` (one echo backend), with an allow list for 203.0.113.0/24 on
/// host `allow`.
async fn objects() -> (Vec<Value>, EchoBackend) {
    let b = echo("svc").await;
    let mut allow = ingress(
        "allow",
        vec![rule("allow", vec![path("/", "Prefix", "svc")])],
    );
    allow["metadata"]["annotations"] =
        json!({"nginx.ingress.kubernetes.io/allowlist-source-range": "203.0.113.0/24"});
    let mut objects = vec![
        ingress_class(),
        ingress("i", vec![rule("h", vec![path("/", "Prefix", "svc")])]),
        allow,
    ];
    objects.extend(service("svc", &[b.addr.port()]));
    (objects, b)
}

/// Writes `prefix`, then one HTTP/1.1 request for `host`, and returns the raw reply.
async fn raw_request(addr: SocketAddr, prefix: &[u8], host: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(&[prefix, req.as_bytes()].concat())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn v2_header(client: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x21, 0x11, 0, 12]);
    h.extend(client);
    h.extend([127, 0, 0, 1]);
    h.extend(port.to_be_bytes());
    h.extend(80u16.to_be_bytes());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v1_and_v2_name_the_client_over_http_and_https() {
    let (mut objects, _b) = objects().await;
    let (secret, _) = tls_secret("h-tls", &["h"]);
    objects.push(secret);
    objects[1]["spec"]["tls"] = json!([{"hosts": ["h"], "secretName": "h-tls"}]);
    objects[1]["metadata"]["annotations"] =
        json!({"nginx.ingress.kubernetes.io/ssl-redirect": "false"});
    let config = IngressConfig {
        proxy_protocol: true,
        trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
        ..IngressConfig::default()
    };
    let log = Arc::new(Lines::default());
    let p = serve(config, &objects, Some(Arc::clone(&log))).await;

    let v1 = b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 80\r\n";
    let reply = raw_request(p.http, v1, "h").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("x-forwarded-for: 203.0.113.9\n"), "{reply}");
    // The allow list sees the client the header names.
    assert!(
        raw_request(p.http, v1, "allow")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let v2 = v2_header([198, 51, 100, 4], 5000);
    let reply = raw_request(p.http, &v2, "allow").await;
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    let reply = raw_request(p.http, &v2, "h").await;
    assert!(reply.contains("x-forwarded-for: 198.51.100.4\n"), "{reply}");
    // The balancer's own connections (health checks) keep their address.
    let reply = raw_request(p.http, b"PROXY UNKNOWN\r\n", "h").await;
    assert!(reply.contains("x-forwarded-for: 127.0.0.1\n"), "{reply}");

    // Before TLS: the header, then the handshake on the same connection.
    let mut tcp = TcpStream::connect(p.https).await.unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.113.77 127.0.0.1 40001 443\r\n")
        .await
        .unwrap();
    let r = https_over(tcp, "h", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains("x-forwarded-for: 203.0.113.77\n"),
        "{}",
        r.body
    );

    // Without a header the connection is closed unanswered.
    assert_eq!(raw_request(p.http, b"", "h").await, "");
    assert_eq!(p.proxy.stats().proxy_protocol_errors, 1);
    let clients: Vec<Value> = log
        .wait_for(6)
        .await
        .iter()
        .map(|l| l["client"].clone())
        .collect();
    assert!(clients.contains(&json!("203.0.113.77")), "{clients:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_from_an_untrusted_address_is_refused() {
    let (objects, _b) = objects().await;
    let config = IngressConfig {
        proxy_protocol: true,
        trusted_proxies: vec!["192.0.2.0/24".parse().unwrap()],
        ..IngressConfig::default()
    };
    let p = serve(config, &objects, None).await;
    let v1 = b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 80\r\n";
    assert_eq!(raw_request(p.http, v1, "h").await, "");
    assert_eq!(p.proxy.stats().proxy_protocol_errors, 1);
}

fn with_forwarded_for(host: &str, xff: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri("/")
        .header("host", host)
        .header("x-forwarded-for", xff)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_forwarded_for_names_the_client_and_others_cannot_spoof_it() {
    let (objects, _b) = objects().await;
    let trusting = IngressConfig {
        trusted_proxies: vec![
            "127.0.0.0/8".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ],
        ..IngressConfig::default()
    };
    let log = Arc::new(Lines::default());
    let p = serve(trusting, &objects, Some(Arc::clone(&log))).await;
    // The last address that is not a trusted proxy is the client.
    let r = http_send(p.http, with_forwarded_for("allow", "203.0.113.5, 10.1.2.3"))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body
            .contains("x-forwarded-for: 203.0.113.5, 10.1.2.3, 127.0.0.1\n"),
        "{}",
        r.body
    );
    let r = http_send(
        p.http,
        with_forwarded_for("allow", "203.0.113.5, 198.51.100.1"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let lines = log.wait_for(2).await;
    assert_eq!(lines[0]["client"], "203.0.113.5");
    assert_eq!(lines[1]["client"], "198.51.100.1");

    // Nobody trusted: the header is replaced, the peer is the client.
    let p = serve(IngressConfig::default(), &objects, None).await;
    let r = http_send(p.http, with_forwarded_for("allow", "203.0.113.5"))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = http_send(p.http, with_forwarded_for("h", "203.0.113.5"))
        .await
        .unwrap();
    assert!(
        r.body.contains("x-forwarded-for: 127.0.0.1\n"),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_one_json_access_log_line() {
    let live = echo("live").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut objects = vec![
        ingress_class(),
        ingress("i", vec![rule("h", vec![path("/", "Prefix", "svc")])]),
        ingress("retry", vec![rule("r", vec![path("/", "Prefix", "mixed")])]),
    ];
    objects.extend(service("svc", &[live.addr.port()]));
    objects.extend(service("mixed", &[dead.port(), live.addr.port()]));
    let log = Arc::new(Lines::default());
    let p = serve(IngressConfig::default(), &objects, Some(Arc::clone(&log))).await;

    let r = http_get(p.http, "h", "/tea?cup=2").await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let line = &log.wait_for(1).await[0];
    assert_eq!(line["method"], "GET");
    assert_eq!(line["host"], "h");
    assert_eq!(line["path"], "/tea?cup=2");
    assert_eq!(line["protocol"], "HTTP/1.1");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes_sent"], r.body.len());
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(line["ingress"], "default/i");
    assert_eq!(line["service"], "default/svc:80");
    assert_eq!(line["upstream"], json!([live.addr.to_string()]));
    assert_eq!(line["upstream_status"], json!([200]));
    assert!(line["upstream_latency_ms"].as_f64().unwrap() >= 0.0);
    assert!(line["duration_ms"].as_f64().unwrap() >= line["upstream_latency_ms"].as_f64().unwrap());
    assert_eq!(
        line["request_id"],
        r.headers["x-request-id"].to_str().unwrap()
    );
    assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");

    // No route: the built-in 404, no Ingress, no upstream.
    http_get(p.http, "nowhere", "/").await.unwrap();
    let line = &log.wait_for(2).await[1];
    assert_eq!(
        (&line["status"], &line["ingress"], &line["upstream"]),
        (&json!(404), &Value::Null, &json!([]))
    );
    // A retried request names both tries, until one answers.
    loop {
        let before = log.0.lock().unwrap().len();
        let r = http_get(p.http, "r", "/").await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        let line = log.wait_for(before + 1).await.pop().unwrap();
        if line["upstream"].as_array().unwrap().len() == 2 {
            assert_eq!(
                line["upstream"],
                json!([dead.to_string(), live.addr.to_string()])
            );
            assert_eq!(line["upstream_status"], json!([null, 200]));
            break;
        }
    }
}

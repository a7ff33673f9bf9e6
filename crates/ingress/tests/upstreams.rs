//! How the proxy speaks to the endpoints, on loopback: HTTPS and GRPCS backends (with and
//! without verification, server name, client certificate), gRPC trailers and bidirectional
//! streaming over h2c, WebSocket to an HTTPS backend, passive health.

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use sluice_ingress::IngressConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// An Ingress `name` routing `host` to Service `svc`, annotated `nginx.ingress.kubernetes.io/`.
fn annotated(name: &str, host: &str, svc: &str, pairs: &[(&str, &str)]) -> Value {
    let mut i = ingress(name, vec![rule(host, vec![path("/", "Prefix", svc)])]);
    for (k, v) in pairs {
        i["metadata"]["annotations"][format!("nginx.ingress.kubernetes.io/{k}")] = json!(v);
    }
    i
}

/// An Opaque Secret with string data.
fn secret(name: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({"kind": "Secret", "type": "Opaque",
           "metadata": {"namespace": "default", "name": name}, "stringData": data})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_backends_with_and_without_verification_name_and_client_certificate() {
    let ca = TestCa::new("backend CA");
    let other_ca = TestCa::new("someone else");
    let clients_ca = TestCa::new("client CA");
    let web = echo_tls("web", &ca.leaf(&["web.default.svc"]), None).await;
    let mtls = echo_tls(
        "mtls",
        &ca.leaf(&["mtls.default.svc"]),
        Some(&clients_ca.pem),
    )
    .await;
    let (client_crt, client_key) = clients_ca.leaf(&["sluice"]);
    let mut objects = vec![
        ingress_class(),
        secret("ca", &[("ca.crt", &ca.pem)]),
        secret("other-ca", &[("ca.crt", &other_ca.pem)]),
        secret(
            "client",
            &[
                ("ca.crt", &ca.pem),
                ("tls.crt", &client_crt),
                ("tls.key", &client_key),
            ],
        ),
        annotated("any", "any.test", "web", &[("backend-protocol", "HTTPS")]),
        annotated(
            "verified",
            "verified.test",
            "web",
            &[
                ("backend-protocol", "HTTPS"),
                ("proxy-ssl-verify", "on"),
                ("proxy-ssl-secret", "default/ca"),
            ],
        ),
        annotated(
            "wrong-ca",
            "wrong-ca.test",
            "web",
            &[
                ("backend-protocol", "HTTPS"),
                ("proxy-ssl-verify", "on"),
                ("proxy-ssl-secret", "default/other-ca"),
            ],
        ),
        annotated(
            "wrong-name",
            "wrong-name.test",
            "web",
            &[
                ("backend-protocol", "HTTPS"),
                ("proxy-ssl-verify", "on"),
                ("proxy-ssl-secret", "default/ca"),
                ("proxy-ssl-name", "db.default.svc"),
            ],
        ),
        annotated(
            "mtls",
            "mtls.test",
            "mtls",
            &[
                ("backend-protocol", "HTTPS"),
                ("proxy-ssl-verify", "on"),
                ("proxy-ssl-secret", "default/client"),
            ],
        ),
        annotated(
            "mtls-anon",
            "mtls-anon.test",
            "mtls",
            &[("backend-protocol", "HTTPS")],
        ),
    ];
    objects.extend(service("web", &[web.addr.port()]));
    objects.extend(service("mtls", &[mtls.addr.port()]));
    let p = start(IngressConfig::default(), &objects).await;

    for host in ["any.test", "verified.test"] {
        let r = http_get(p.http, host, "/x").await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{host}: {}", r.body);
        assert!(r.body.starts_with("web GET /x\n"), "{host}: {}", r.body);
        assert!(r.body.contains("tls: http/1.1\n"), "{host}: {}", r.body);
        assert!(
            r.body.contains("host: ") && r.body.contains(host),
            "{}",
            r.body
        );
    }
    for (host, why) in [
        ("wrong-ca.test", "UnknownIssuer"),
        (
            "wrong-name.test",
            "certificate not valid for name \"db.default.svc\"",
        ),
    ] {
        let r = http_get(p.http, host, "/").await.unwrap();
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{host}: {}", r.body);
        assert!(
            r.body.starts_with(
                "502 Bad Gateway: service default/web:80: TLS handshake with the endpoint failed"
            ) && r.body.contains(why),
            "{host}: {}",
            r.body
        );
    }
    let r = http_get(p.http, "mtls.test", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("client-cert: yes\n"), "{}", r.body);
    // Without a client certificate the backend refuses the connection.
    let r = http_get(p.http, "mtls-anon.test", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    assert!(!r.body.contains("client-cert"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcs_speaks_http2_over_tls_and_websocket_reaches_an_https_backend() {
    let ca = TestCa::new("backend CA");
    let b = echo_tls("b", &ca.leaf(&["b.default.svc"]), None).await;
    let mut objects = vec![
        ingress_class(),
        annotated("grpcs", "grpcs.test", "b", &[("backend-protocol", "GRPCS")]),
        annotated("https", "https.test", "b", &[("backend-protocol", "HTTPS")]),
    ];
    objects.extend(service("b", &[b.addr.port()]));
    let p = start(IngressConfig::default(), &objects).await;
    let r = http_get(p.http, "grpcs.test", "/pkg.Svc/Call")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains("version: HTTP/2.0\ntls: h2\n"),
        "{}",
        r.body
    );
    assert!(r.body.contains("te: trailers\n"), "{}", r.body);

    let mut ws = websocket(p.http, "https.test", "/chat").await.unwrap();
    assert_eq!(ws_roundtrip(&mut ws, "hello").await.unwrap(), "b:hello");
}

/// A gRPC-like h2c backend: each request data frame is answered at once with `echo:DATA`,
/// then trailers `grpc-status: 0` and `grpc-message: done N` (N frames) end the response.
async fn grpc_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(grpc_answer);
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn grpc_answer(req: Request<Incoming>) -> Result<Response<ChannelBody>, Infallible> {
    let (tx, rx) = mpsc::channel(8);
    let te = req.headers().get("te").cloned();
    tokio::spawn(async move {
        let mut body = req.into_body();
        let mut n = 0;
        while let Some(Ok(frame)) = body.frame().await {
            // An empty frame (the end of the stream) is no message.
            if let Ok(data) = frame
                .into_data()
                .map_err(drop)
                .and_then(|d| if d.is_empty() { Err(()) } else { Ok(d) })
            {
                n += 1;
                let mut echoed = b"echo:".to_vec();
                echoed.extend_from_slice(&data);
                if tx.send(Frame::data(Bytes::from(echoed))).await.is_err() {
                    return;
                }
            }
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", format!("done {n}").parse().unwrap());
        let _ = tx.send(Frame::trailers(trailers)).await;
    });
    let mut resp = Response::new(ChannelBody(rx));
    resp.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    if let Some(te) = te {
        resp.headers_mut().insert("x-seen-te", te);
    }
    Ok(resp)
}

/// A body whose frames come from a channel (ends when the sender is dropped).
struct ChannelBody(mpsc::Receiver<Frame<Bytes>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_streams_both_ways_and_trailers_reach_the_client() {
    let backend = grpc_backend().await;
    let mut objects = vec![
        ingress_class(),
        annotated("grpc", "grpc.test", "g", &[("backend-protocol", "GRPC")]),
    ];
    objects.extend(service("g", &[backend.port()]));
    let p = start(IngressConfig::default(), &objects).await;

    // h2c prior knowledge to the plain listener, as gRPC clients do without TLS.
    let stream = TcpStream::connect(p.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel(8);
    let req = Request::builder()
        .method("POST")
        .uri("http://grpc.test/pkg.Chat/Talk")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "5S")
        .body(ChannelBody(rx))
        .unwrap();
    tx.send(Frame::data(Bytes::from_static(b"one")))
        .await
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .expect("response headers while the request is still open")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-seen-te"], "trailers");
    let mut body = resp.into_body();
    // Each message is answered before the next is sent: nothing waits for the whole body.
    for msg in ["one", "two", "three"] {
        if msg != "one" {
            tx.send(Frame::data(Bytes::from(msg))).await.unwrap();
        }
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .unwrap_or_else(|_| panic!("no answer to {msg} while the stream is open"))
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), format!("echo:{msg}"));
    }
    drop(tx);
    let trailers = loop {
        let frame = body.frame().await.unwrap().unwrap();
        if let Ok(trailers) = frame.into_trailers() {
            break trailers;
        }
    };
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "done 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_refusing_connections_is_ejected_and_idempotent_requests_go_elsewhere() {
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
    let config = IngressConfig {
        eject_after_connect_failures: 2,
        eject_duration: Duration::from_secs(60),
        ..IngressConfig::default()
    };
    let p = start(config, &objects).await;
    for i in 0..100 {
        let r = http_get(p.http, "h", "/").await.unwrap();
        assert_eq!(
            (r.status, r.backend()),
            (StatusCode::OK, "live"),
            "request {i}"
        );
    }
    // The dead endpoint was tried until it was ejected (2 failures), never after.
    let stats = p.proxy.stats();
    assert_eq!(stats.endpoint_ejections, 1, "{stats:?}");
    assert_eq!(stats.upstream_connect_failures, 2, "{stats:?}");
    assert_eq!(stats.retries, 2, "{stats:?}");

    // A POST is not retried: with only the dead endpoint left it gets the 502 itself.
    let mut objects = vec![
        ingress_class(),
        ingress("r", vec![rule("h", vec![path("/", "Prefix", "dead")])]),
    ];
    objects.extend(service("dead", &[dead]));
    p.proxy.apply(&snapshot(&objects));
    let r = http_send(
        p.http,
        Request::builder()
            .method("POST")
            .uri("/")
            .header("host", "h")
            .body(http_body_util::Full::new(Bytes::from_static(b"x")))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    assert_eq!(p.proxy.stats().retries, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_upstream_tls_settings_are_named_and_answered_502() {
    let mut objects = vec![
        ingress_class(),
        secret("bad-ca", &[("ca.crt", "not a certificate")]),
        annotated(
            "bad",
            "bad.test",
            "web",
            &[
                ("backend-protocol", "HTTPS"),
                ("proxy-ssl-verify", "on"),
                ("proxy-ssl-secret", "default/bad-ca"),
            ],
        ),
    ];
    objects.extend(service("web", &[9]));
    let (p, warnings) = start_any(IngressConfig::default(), &objects).await;
    let warnings: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "Ingress default/bad: upstream TLS settings (backend-protocol HTTPS, proxy-ssl-*) cannot be used: ca.crt holds no certificate; requests on host \"bad.test\" get 502"
        ]
    );
    let r = http_get(p.http, "bad.test", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        r.body,
        "502 Bad Gateway: service default/web:80: the upstream TLS settings (backend-protocol HTTPS) cannot be used: ca.crt holds no certificate\n"
    );
}

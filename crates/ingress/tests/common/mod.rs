//! Loopback test harness: echo backends, snapshots built from JSON, a running proxy, clients.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::{Value, json};
use sluice_ingress::{IngressConfig, IngressProxy, Warning};
use sluice_model::{NodeInfo, Snapshot};
use sluice_routes::RouteConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// An echo backend on 127.0.0.1 (HTTP/1.1, and HTTP/2 with prior knowledge): answers
/// `NAME METHOD PATH` plus the HTTP version and the forwarding headers it saw, one per line;
/// `/sleep` waits 2 s first; upgrades echo bytes as `NAME:...`.
pub struct EchoBackend {
    pub name: String,
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

pub async fn echo(name: &str) -> EchoBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, mut stopped) = oneshot::channel::<()>();
    let name_owned = name.to_owned();
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = &mut stopped => return,
                r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
            };
            let name = name_owned.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| answer(name.clone(), req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    EchoBackend {
        name: name.to_owned(),
        addr,
        _stop: stop,
    }
}

/// A private CA for test certificates.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf certificate for `names`, signed by this CA: (certificate PEM, key PEM).
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// An echo backend speaking TLS (ALPN h2 and http/1.1) with `cert`; with `client_ca`, it
/// demands a client certificate signed by it. Its answers add `tls: ALPN` and
/// `client-cert: yes|no` lines.
pub async fn echo_tls(name: &str, cert: &(String, String), client_ca: Option<&str>) -> EchoBackend {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert.0.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut cert.1.as_bytes())
        .unwrap()
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut ca.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, mut stopped) = oneshot::channel::<()>();
    let name_owned = name.to_owned();
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = &mut stopped => return,
                r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
            };
            let (name, acceptor) = (name_owned.clone(), acceptor.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let session = tls.get_ref().1;
                let extra = format!(
                    "tls: {}\nclient-cert: {}\n",
                    String::from_utf8_lossy(session.alpn_protocol().unwrap_or(b"-")),
                    if session.peer_certificates().is_some() {
                        "yes"
                    } else {
                        "no"
                    }
                );
                let svc = hyper::service::service_fn(move |req| {
                    answer_with(name.clone(), extra.clone(), req)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    EchoBackend {
        name: name.to_owned(),
        addr,
        _stop: stop,
    }
}

async fn answer(name: String, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    answer_with(name, String::new(), req).await
}

async fn answer_with(
    name: String,
    extra: String,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.headers().contains_key(hyper::header::UPGRADE) {
        let on_upgrade = hyper::upgrade::on(&mut req);
        let name = name.clone();
        tokio::spawn(async move {
            let Ok(up) = on_upgrade.await else { return };
            let mut io = TokioIo::new(up);
            let mut buf = [0u8; 1024];
            loop {
                let n = match io.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut out = format!("{name}:").into_bytes();
                out.extend_from_slice(&buf[..n]);
                if io.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()))
            .unwrap();
        return Ok(resp);
    }
    if req.uri().path() == "/sleep" {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let mut text = format!("{name} {} {target}\n", req.method());
    text.push_str(&format!("version: {:?}\n", req.version()));
    text.push_str(&extra);
    for n in [
        "host",
        "te",
        "x-forwarded-prefix",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-request-id",
    ] {
        text.push_str(&format!("{n}: {}\n", h(n)));
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    text.push_str(&format!("body-bytes: {body}\n"));
    Ok(Response::new(Full::new(Bytes::from(text))))
}

/// Feeds the proxy a snapshot as the agent does: planned by `sluice-routes`, then executed.
pub trait ApplySnapshot {
    /// The planner's warnings and the proxy's.
    fn apply(&self, snapshot: &Snapshot) -> Vec<Warning>;
}

impl ApplySnapshot for IngressProxy {
    fn apply(&self, snapshot: &Snapshot) -> Vec<Warning> {
        apply_with(self, snapshot, &RouteConfig::default())
    }
}

pub fn apply_with(proxy: &IngressProxy, snapshot: &Snapshot, config: &RouteConfig) -> Vec<Warning> {
    let now = std::time::SystemTime::now();
    let (plan, mut warnings) = sluice_routes::plan(snapshot, &NodeInfo::default(), config, now);
    warnings.extend(proxy.update(&plan));
    warnings
}

/// Builds a snapshot from JSON objects (`kind` picks the map).
pub fn snapshot(objects: &[Value]) -> Snapshot {
    Snapshot::from_json_objects(objects.iter().cloned()).unwrap()
}

pub fn ingress_class() -> Value {
    json!({"kind": "IngressClass", "metadata": {"name": "sluice"}, "spec": {"controller": "sluice.dev/ingress"}})
}

/// Service `name` (port 80 "http") whose endpoints are the given loopback ports (one slice
/// each, since every echo backend has its own port).
pub fn service(name: &str, ports: &[u16]) -> Vec<Value> {
    let mut v = vec![
        json!({"kind": "Service", "metadata": {"namespace": "default", "name": name},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
    ];
    for (i, port) in ports.iter().enumerate() {
        v.push(json!({"kind": "EndpointSlice",
            "metadata": {"namespace": "default", "name": format!("{name}-{i}"),
                "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]}));
    }
    v
}

pub fn path(p: &str, kind: &str, svc: &str) -> Value {
    json!({"path": p, "pathType": kind, "backend": {"service": {"name": svc, "port": {"number": 80}}}})
}

pub fn rule(host: &str, paths: Vec<Value>) -> Value {
    json!({"host": host, "http": {"paths": paths}})
}

pub fn ingress(name: &str, rules: Vec<Value>) -> Value {
    json!({"kind": "Ingress", "metadata": {"namespace": "default", "name": name},
        "spec": {"ingressClassName": "sluice", "rules": rules}})
}

/// A self-signed certificate for `hosts`: (Secret JSON, certificate DER).
pub fn tls_secret(name: &str, hosts: &[&str]) -> (Value, Vec<u8>) {
    let (secret, der, _) = tls_secret_pem(name, hosts);
    (secret, der)
}

/// Like [`tls_secret`], also returning the PEM texts `(certificate, key)` (e.g. for nginx).
pub fn tls_secret_pem(name: &str, hosts: &[&str]) -> (Value, Vec<u8>, (String, String)) {
    let cert =
        rcgen::generate_simple_self_signed(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
            .unwrap();
    let der = cert.cert.der().to_vec();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let secret = json!({"kind": "Secret", "metadata": {"namespace": "default", "name": name},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64(cert_pem.as_bytes()), "tls.key": b64(key_pem.as_bytes())}});
    (secret, der, (cert_pem, key_pem))
}

/// A TLS Secret whose certificate is valid from `from` to `to` (years, January 1st), with
/// its key, or (`matching_key: false`) with the key of another certificate: (Secret, DER).
pub fn tls_secret_dated(
    name: &str,
    hosts: &[&str],
    from: i32,
    to: i32,
    matching_key: bool,
) -> (Value, Vec<u8>) {
    let mut params =
        rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.not_before = rcgen::date_time_ymd(from, 1, 1);
    params.not_after = rcgen::date_time_ymd(to, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let key_pem = if matching_key {
        key.serialize_pem()
    } else {
        rcgen::KeyPair::generate().unwrap().serialize_pem()
    };
    let secret = json!({"kind": "Secret", "metadata": {"namespace": "default", "name": name},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64(cert.pem().as_bytes()), "tls.key": b64(key_pem.as_bytes())}});
    (secret, cert.der().to_vec())
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A proxy serving on loopback; stops when dropped.
pub struct Running {
    pub proxy: Arc<IngressProxy>,
    pub http: SocketAddr,
    pub https: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting and waits for the proxy to finish (graceful shutdown).
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub async fn start(config: IngressConfig, objects: &[Value]) -> Running {
    let (running, warnings) = start_any(config, objects).await;
    assert!(warnings.is_empty(), "unexpected warnings: {warnings:?}");
    running
}

/// Like [`start`], also for objects that give warnings (returned).
pub async fn start_any(config: IngressConfig, objects: &[Value]) -> (Running, Vec<Warning>) {
    let proxy = Arc::new(IngressProxy::new(config));
    let warnings = proxy.apply(&snapshot(objects));
    (run(proxy).await, warnings)
}

/// Serves `proxy` on two loopback listeners (plain, TLS) until the result is dropped.
pub async fn run(proxy: Arc<IngressProxy>) -> Running {
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http_addr, https_addr) = (http.local_addr().unwrap(), https.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let p = Arc::clone(&proxy);
    let task = tokio::spawn(async move {
        p.serve_listeners(Some(http), Some(https), async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Running {
        proxy,
        http: http_addr,
        https: https_addr,
        stop: Some(stop),
        task: Some(task),
    }
}

/// A reply as the client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: hyper::HeaderMap,
    pub body: String,
    /// DER of the certificate the server presented (HTTPS only).
    pub peer_cert: Option<Vec<u8>>,
}

impl Reply {
    /// The echo backend that answered (first word of the body).
    pub fn backend(&self) -> &str {
        self.body.split(' ').next().unwrap_or("")
    }
}

async fn read(resp: Response<Incoming>, peer_cert: Option<Vec<u8>>) -> Result<Reply> {
    let status = resp.status();
    let version = resp.version();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        version,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        peer_cert,
    })
}

fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// One request on a new plain HTTP/1.1 connection.
pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> Result<Reply> {
    http_send(addr, get(host, path)).await
}

pub async fn http_send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Result<Reply> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    read(resp, None).await
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client with `provider`'s suites and these ALPN protocols that accepts any certificate.
fn any_certificate(
    provider: rustls::crypto::CryptoProvider,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::TlsConnector> {
    Ok(tokio_rustls::TlsConnector::from(Arc::new(
        any_certificate_config(provider, alpn)?,
    )))
}

fn any_certificate_config(
    provider: rustls::crypto::CryptoProvider,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(provider);
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// TLS connection with SNI `sni` (the test checks which certificate came back, so any
/// certificate is accepted) and the given ALPN protocols.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>)> {
    let connector = any_certificate(rustls::crypto::ring::default_provider(), alpn)?;
    let tcp = TcpStream::connect(addr).await?;
    tls_on(tcp, sni, connector).await
}

/// TLS 1.3 offering only `suites`, in this order (any certificate accepted, ALPN
/// http/1.1); the suite the server chose.
pub async fn negotiated_suite(
    addr: SocketAddr,
    sni: &str,
    suites: &[rustls::CipherSuite],
) -> Result<rustls::CipherSuite> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = suites
        .iter()
        .map(|want| {
            provider
                .cipher_suites
                .iter()
                .find(|s| s.suite() == *want)
                .copied()
                .with_context(|| format!("ring has no {want:?}"))
        })
        .collect::<Result<_>>()?;
    let connector = any_certificate(provider, &[b"http/1.1"])?;
    let (tls, _) = tls_on(TcpStream::connect(addr).await?, sni, connector).await?;
    let suite = tls.get_ref().1.negotiated_cipher_suite();
    Ok(suite.context("no cipher suite negotiated")?.suite())
}

/// A TLS client that accepts any certificate and keeps the sessions the server gives it, as
/// a browser does (ALPN http/1.1).
pub fn resuming_client() -> Result<tokio_rustls::TlsConnector> {
    any_certificate(rustls::crypto::ring::default_provider(), &[b"http/1.1"])
}

/// A [`resuming_client`] and how many TLS 1.3 session tickets it has received so far.
pub fn ticket_counting_client() -> Result<(tokio_rustls::TlsConnector, Arc<AtomicUsize>)> {
    let mut config =
        any_certificate_config(rustls::crypto::ring::default_provider(), &[b"http/1.1"])?;
    let store = Arc::new(CountingTickets::default());
    let received = Arc::clone(&store.received);
    config.resumption = rustls::client::Resumption::store(store);
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), received))
}

/// rustls' own in-memory session store, counting the TLS 1.3 tickets put into it.
#[derive(Debug)]
struct CountingTickets {
    sessions: rustls::client::ClientSessionMemoryCache,
    received: Arc<AtomicUsize>,
}

impl Default for CountingTickets {
    fn default() -> Self {
        Self {
            sessions: rustls::client::ClientSessionMemoryCache::new(64),
            received: Arc::default(),
        }
    }
}

impl rustls::client::ClientSessionStore for CountingTickets {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: rustls::NamedGroup) {
        self.sessions.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.sessions.kx_hint(server_name)
    }

    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.sessions.set_tls12_session(server_name, value);
    }

    fn tls12_session(
        &self,
        server_name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.sessions.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.sessions.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.received.fetch_add(1, Ordering::SeqCst);
        self.sessions.insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.sessions.take_tls13_ticket(server_name)
    }
}

/// One GET to `/` over a new TLS connection of `client`: whether its handshake resumed an
/// earlier session. The response is read, and with it the session tickets sent before it.
pub async fn https_resumed(
    addr: SocketAddr,
    sni: &str,
    client: &tokio_rustls::TlsConnector,
) -> Result<bool> {
    let (tls, _) = tls_on(TcpStream::connect(addr).await?, sni, client.clone()).await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let reply = read(sender.send_request(get(sni, "/")).await?, None).await?;
    anyhow::ensure!(reply.status == StatusCode::OK, "status {}", reply.status);
    Ok(resumed)
}

/// TLS (any certificate accepted, ALPN http/1.1) on a connection already open.
pub async fn https_over(tcp: TcpStream, sni: &str, path: &str) -> Result<Reply> {
    let connector = any_certificate(rustls::crypto::ring::default_provider(), &[b"http/1.1"])?;
    let (tls, cert) = tls_on(tcp, sni, connector).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let resp = sender.send_request(get(sni, path)).await?;
    read(resp, Some(cert)).await
}

async fn tls_on(
    tcp: TcpStream,
    sni: &str,
    connector: tokio_rustls::TlsConnector,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>)> {
    let tls = connector
        .connect(ServerName::try_from(sni.to_owned())?, tcp)
        .await?;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no peer certificate")?
        .to_vec();
    Ok((tls, cert))
}

/// One HTTPS request (HTTP/1.1, or HTTP/2 when `h2`) on a new connection.
pub async fn https_get(addr: SocketAddr, sni: &str, path: &str, h2: bool) -> Result<Reply> {
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let (tls, cert) = tls_connect(addr, sni, alpn).await?;
    let negotiated_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    if h2 != negotiated_h2 {
        bail!("ALPN negotiated {:?}", tls.get_ref().1.alpn_protocol());
    }
    let io = TokioIo::new(tls);
    let resp = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        let uri = format!("https://{sni}{path}");
        let req = Request::builder().uri(uri).body(Full::new(Bytes::new()))?;
        sender.send_request(req).await?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        sender.send_request(get(sni, path)).await?
    };
    read(resp, Some(cert)).await
}

/// Sends an upgrade request on a raw connection and returns it after the `101`.
pub async fn websocket(addr: SocketAddr, host: &str, path: &str) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await? == 0 {
            bail!("closed during upgrade: {}", String::from_utf8_lossy(&head));
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    if !head.starts_with("HTTP/1.1 101") {
        bail!("no upgrade: {head}");
    }
    Ok(s)
}

/// Writes `msg` on an upgraded connection and reads the echo.
pub async fn ws_roundtrip(s: &mut TcpStream, msg: &str) -> Result<String> {
    s.write_all(msg.as_bytes()).await?;
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await??;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Raw HTTP/1.1 exchange: writes `request`, returns everything read until the server closes
/// or 3 s pass.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A raw HTTP/1.1 backend that records each request head exactly as it arrived. Upgrade
/// requests get `101` and then every chunk is echoed back as `rec:...`; other requests get
/// `200 ok` and the connection is closed.
pub struct RecordingBackend {
    pub addr: SocketAddr,
    pub heads: Arc<std::sync::Mutex<Vec<String>>>,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

pub async fn recording_backend() -> RecordingBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (stop, mut stopped) = oneshot::channel::<()>();
    let (h, c) = (heads.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let mut s = tokio::select! {
                _ = &mut stopped => return,
                r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
            };
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let h = h.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut s).await else {
                    return;
                };
                let upgrade = head.to_ascii_lowercase().contains("\r\nupgrade:");
                h.lock().unwrap().push(head);
                if !upgrade {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
                    .await;
                let mut buf = [0u8; 1024];
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let mut out = b"rec:".to_vec();
                    out.extend_from_slice(&buf[..n]);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    RecordingBackend {
        addr,
        heads,
        connections,
        _stop: stop,
    }
}

/// Reads a request or response head (up to the blank line) byte by byte.
pub async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// A TCP relay on 127.0.0.1 to `target` that accepts at most `max` connections (later ones
/// are closed at once), so that a test of a request loop stays bounded even when the proxy
/// under test would loop. Returns its address and the number of connections it relayed.
pub async fn relay(
    target: SocketAddr,
    max: usize,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            if counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= max {
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut up) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    });
    (addr, count)
}

/// Resident memory of this process in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Waits up to `within` for `cond`, polling every 10 ms.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// Log lines written while the guard lives on this thread (use a current-thread runtime so
/// the proxy's tasks log on this thread too).
pub struct CapturedLogs {
    buf: Arc<std::sync::Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl CapturedLogs {
    pub fn start() -> Self {
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        Self { buf, _guard: guard }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }

    /// Lines at WARN or ERROR level.
    pub fn warnings(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .map(str::to_owned)
            .collect()
    }
}

struct LogWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One backend (`coffee`) behind one Ingress: host `cafe`, every path.
pub async fn one_route_cafe() -> (EchoBackend, Vec<Value>) {
    let backend = echo("coffee").await;
    let mut objects = vec![
        ingress_class(),
        ingress(
            "cafe",
            vec![rule("cafe", vec![path("/", "Prefix", "coffee")])],
        ),
    ];
    objects.extend(service("coffee", &[backend.addr.port()]));
    (backend, objects)
}

/// `GET path` for host `cafe`, without a body.
pub fn get_cafe(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "cafe")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

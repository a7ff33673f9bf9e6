//! TLS to the endpoints (`backend-protocol` HTTPS and GRPCS): one pooled client per distinct
//! [`UpstreamTls`] setting (and HTTP version), made when a route table needs it and kept while
//! some route uses it, so its connections survive reloads.
//!
//! Each connection is dialled by the [`CountingConnector`] (connection caps, connect timeout)
//! and then wrapped in TLS within the same timeout. Without `proxy-ssl-verify` any
//! certificate is accepted (nginx's default; the handshake signature is still checked); with
//! it, the chain must lead to the secret's `ca.crt` and name [`UpstreamTls::name`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sluice_plan::UpstreamTls;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{CONNECT_TIMEOUT, Counted, CountingConnector};
use crate::proxy::ReqBody;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The pooled client of one upstream TLS setting, or why the setting cannot be used (every
/// request of its routes then gets 502 naming the reason).
pub(crate) type TlsClient = Result<TlsUpstream, String>;

/// A pooled client speaking TLS to the endpoints, and its connector (upgrades dial their own
/// connection with it).
pub(crate) struct TlsUpstream {
    /// One pooled client per proxy worker (index = worker).
    pub(crate) clients: Box<[Client<TlsConnecting, ReqBody>]>,
    pub(crate) connector: TlsConnecting,
}

impl TlsUpstream {
    /// The pooled client of the worker running this task.
    pub(crate) fn client(&self) -> &Client<TlsConnecting, ReqBody> {
        &self.clients[crate::workers::current() % self.clients.len()]
    }
}

impl std::fmt::Debug for TlsUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsUpstream")
            .field("name", &self.connector.name)
            .finish_non_exhaustive()
    }
}

/// The rustls client settings for `tls`; `h2` offers only HTTP/2 by ALPN (gRPC), else only
/// HTTP/1.1.
pub(crate) fn client_config(
    tls: &UpstreamTls,
    h2: bool,
) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if tls.verify {
        let ca = tls.ca_pem.as_deref().ok_or(
            "proxy-ssl-verify is on but no proxy-ssl-secret with ca.crt is usable".to_owned(),
        )?;
        builder.with_root_certificates(roots(ca)?)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
    };
    let mut config = match &tls.client_cert {
        Some((crt, key)) => {
            let (chain, key) = client_certificate(crt, key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the client certificate does not fit its key: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    config.enable_sni = tls.send_sni;
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let name = ServerName::try_from(tls.name.clone())
        .map_err(|_| format!("{:?} is not a valid TLS server name", tls.name))?;
    Ok((Arc::new(config), name))
}

fn roots(ca_pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        let cert = cert.map_err(|e| format!("ca.crt is not valid PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("ca.crt holds an unusable certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("ca.crt holds no certificate".to_owned());
    }
    Ok(roots)
}

fn client_certificate(
    crt: &[u8],
    key: &[u8],
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ),
    String,
> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &crt[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt is not valid PEM: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".to_owned());
    }
    let key = rustls_pemfile::private_key(&mut &key[..])
        .map_err(|e| format!("tls.key is not valid PEM: {e}"))?
        .ok_or("tls.key holds no private key")?;
    Ok((chain, key))
}

/// Accepts any endpoint certificate (`proxy-ssl-verify` off), still checking that the
/// endpoint holds its key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Dials like [`CountingConnector`], then speaks TLS, both within the connect timeout.
#[derive(Clone)]
pub(crate) struct TlsConnecting {
    tcp: CountingConnector,
    tls: TlsConnector,
    name: ServerName<'static>,
    default_timeout: Duration,
}

impl TlsConnecting {
    pub(crate) fn new(
        tcp: CountingConnector,
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
        default_timeout: Duration,
    ) -> Self {
        Self {
            tcp,
            tls: TlsConnector::from(config),
            name,
            default_timeout,
        }
    }
}

impl tower_service::Service<Uri> for TlsConnecting {
    type Response = Counted<TlsIo>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let timeout = CONNECT_TIMEOUT
            .try_with(|t| *t)
            .unwrap_or(self.default_timeout);
        let dialing = self.tcp.call(uri);
        let (tls, name) = (self.tls.clone(), self.name.clone());
        Box::pin(async move {
            let started = tokio::time::Instant::now();
            let tcp = dialing.await?;
            let (io, permit) = tcp.into_parts();
            let handshake = tls.connect(name, io.into_inner());
            let left = timeout.saturating_sub(started.elapsed());
            let stream = match tokio::time::timeout(left, handshake).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(TlsHandshakeError { source: e }.into()),
                Err(_) => {
                    let why = format!("TLS handshake timed out after {}s", timeout.as_secs_f32());
                    return Err(io::Error::new(io::ErrorKind::TimedOut, why).into());
                }
            };
            Ok(Counted::new(TlsIo(TokioIo::new(stream)), permit))
        })
    }
}

/// The endpoint refused our TLS handshake or we refused its certificate.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake with the endpoint failed")]
pub(crate) struct TlsHandshakeError {
    #[source]
    source: io::Error,
}

/// A TLS connection to an endpoint, for the pooled client.
#[derive(Debug)]
pub(crate) struct TlsIo(TokioIo<TlsStream<TcpStream>>);

impl Connection for TlsIo {
    fn connected(&self) -> Connected {
        let (_, session) = self.0.inner().get_ref();
        if session.alpn_protocol() == Some(b"h2") {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

impl Read for TlsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl Write for TlsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

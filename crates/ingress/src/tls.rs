//! TLS: certificates from `kubernetes.io/tls` Secrets, chosen by SNI at each handshake from
//! the current route table (so a rotated Secret applies to the next handshake, while
//! established connections keep theirs).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::Secret;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::RouteTable;
use k8s_openapi::jiff::Timestamp;
use sluice_model::ObjectKey;
use validity::not_after;

mod validity;

static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));

/// Certificates by host name, from the Ingresses' `tls` sections.
#[derive(Debug, Default)]
pub(crate) struct CertStore {
    exact: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<Box<str>, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Adds a certificate for `host` (already lower-case) unless one is there (first wins).
    pub(crate) fn insert(&mut self, host: &str, cert: &Arc<CertifiedKey>) {
        let (map, key) = match host.strip_prefix("*.") {
            Some(parent) => (&mut self.wildcard, parent),
            None => (&mut self.exact, host),
        };
        map.entry(key.into()).or_insert_with(|| Arc::clone(cert));
    }

    /// Host names with a certificate (sorted; wildcards as `*.parent`), then `default`.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.exact.keys().map(|h| h.to_string()).collect();
        names.extend(self.wildcard.keys().map(|p| format!("*.{p}")));
        names.sort();
        if self.default.is_some() {
            names.push("default".to_owned());
        }
        names
    }

    pub(crate) fn set_default_if_unset(&mut self, cert: &Arc<CertifiedKey>) {
        self.default.get_or_insert_with(|| Arc::clone(cert));
    }

    pub(crate) fn resolve(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        server_name
            .and_then(|name| {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                self.exact.get(name.as_str()).or_else(|| {
                    let (_, parent) = name.split_once('.')?;
                    self.wildcard.get(parent)
                })
            })
            .or(self.default.as_ref())
            .cloned()
    }
}

/// Parsed certificates by Secret, kept in the route table so that the next build does not
/// parse unchanged Secrets again.
#[derive(Debug, Default)]
pub(crate) struct CertCache(HashMap<ObjectKey, (Arc<Secret>, Parsed)>);

type Parsed = Result<Arc<CertifiedKey>, String>;

impl CertCache {
    /// The parsed Secret: from this build, else from `previous` if the Secret is unchanged,
    /// else parsed now.
    pub(crate) fn get(
        &mut self,
        previous: Option<&CertCache>,
        key: &ObjectKey,
        secret: &Arc<Secret>,
    ) -> Result<Arc<CertifiedKey>, String> {
        if let Some((_, result)) = self.0.get(key) {
            return result.clone();
        }
        let cached = previous
            .and_then(|p| p.0.get(key))
            .filter(|(old, _)| Arc::ptr_eq(old, secret) || **old == **secret);
        let result = match cached {
            Some((_, result)) => result.clone(),
            None => parse_tls_secret(secret),
        };
        self.0
            .insert(key.clone(), (Arc::clone(secret), result.clone()));
        result
    }
}

/// Most certificates a `tls.crt` may hold (real chains have 2–4).
pub(crate) const MAX_CHAIN_CERTIFICATES: usize = 16;

/// When the leaf certificate expired, if it has (`None`: valid, or its date unreadable).
/// An expired certificate is still served (as nginx does) but named in a warning.
pub(crate) fn expired_at(cert: &CertifiedKey) -> Option<Timestamp> {
    let not_after = cert.cert.first().and_then(|leaf| not_after(leaf))?;
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    let now = Timestamp::from_second(i64::try_from(since_epoch.as_secs()).ok()?).ok()?;
    (not_after < now).then_some(not_after)
}

/// Parses a `kubernetes.io/tls` Secret into a signing key and chain. The error says what is
/// wrong, for a warning that names the Secret.
pub(crate) fn parse_tls_secret(secret: &Secret) -> Result<Arc<CertifiedKey>, String> {
    if secret.type_.as_deref() != Some("kubernetes.io/tls") {
        return Err(format!(
            "has type {:?}, want kubernetes.io/tls",
            secret.type_.as_deref().unwrap_or("")
        ));
    }
    let field = |name: &str| -> Option<Vec<u8>> {
        let from_string = secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(name))
            .map(|s| s.as_bytes().to_vec());
        from_string.or_else(|| secret.data.as_ref()?.get(name).map(|b| b.0.clone()))
    };
    let crt = field("tls.crt").ok_or("has no tls.crt")?;
    let key = field("tls.key").ok_or("has no tls.key")?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut crt.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt is not valid PEM: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".to_owned());
    }
    if chain.len() > MAX_CHAIN_CERTIFICATES {
        // Sent whole in every handshake: a huge chain is an amplifier, and no client needs it.
        return Err(format!(
            "tls.crt holds {} certificates, more than {MAX_CHAIN_CERTIFICATES} (a leaf and its intermediates)",
            chain.len()
        ));
    }
    let key = rustls_pemfile::private_key(&mut key.as_slice())
        .map_err(|e| format!("tls.key is not valid PEM: {e}"))?
        .ok_or("tls.key holds no private key")?;
    let certified = CertifiedKey::from_der(chain, key, &PROVIDER)
        .map_err(|e| format!("tls.key does not fit tls.crt: {e}"))?;
    Ok(Arc::new(certified))
}

/// Picks the certificate at each handshake from whatever table is current.
#[derive(Debug)]
pub(crate) struct SniResolver {
    pub(crate) table: Arc<ArcSwap<RouteTable>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let cert = self.table.load().certs.resolve(hello.server_name());
        if cert.is_none() {
            tracing::debug!(sni = ?hello.server_name(), "ingress: no certificate for TLS handshake");
        }
        cert
    }
}

/// Server TLS settings: TLS 1.2/1.3 with ring, ALPN h2 and http/1.1, certificates by SNI.
pub(crate) fn server_config(
    table: Arc<ArcSwap<RouteTable>>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&PROVIDER))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { table }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

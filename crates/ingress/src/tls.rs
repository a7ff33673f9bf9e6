//! TLS: certificates from `kubernetes.io/tls` Secrets, chosen by SNI at each handshake from
//! the current route table (so a rotated Secret applies to the next handshake, while
//! established connections keep theirs).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::RouteTable;
use sluice_plan::{CertificatePlan, HostMatch, ObjectName, RouteWarning, TlsPlan};

static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));

/// Which certificate answers a handshake (for explaining it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateChoice {
    /// A certificate of a `tls` section naming the host (or a covering wildcard).
    Host { secret: ObjectName },
    /// The default certificate: `--default-ssl-certificate`'s Secret, or the generated
    /// self-signed one (`None`), which names no host.
    Default { secret: Option<ObjectName> },
}

/// A loaded certificate and the Secret it comes from (`None`: generated).
#[derive(Debug, Clone)]
pub(crate) struct ServedCert {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) secret: Option<ObjectName>,
}

/// Certificates by host name, from the Ingresses' `tls` sections.
#[derive(Debug, Default)]
pub(crate) struct CertStore {
    exact: HashMap<Box<str>, ServedCert>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<Box<str>, ServedCert>,
    default: Option<ServedCert>,
}

impl CertStore {
    pub(crate) fn resolve(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.lookup(server_name).map(|(c, _)| Arc::clone(&c.key))
    }

    /// The certificate for `server_name`, and whether it is the default one.
    fn lookup(&self, server_name: Option<&str>) -> Option<(&ServedCert, bool)> {
        server_name
            .and_then(|name| {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                self.exact.get(name.as_str()).or_else(|| {
                    let (_, parent) = name.split_once('.')?;
                    self.wildcard.get(parent)
                })
            })
            .map(|c| (c, false))
            .or(self.default.as_ref().map(|c| (c, true)))
    }

    pub(crate) fn choice(&self, server_name: Option<&str>) -> Option<CertificateChoice> {
        let (cert, default) = self.lookup(server_name)?;
        Some(match (default, &cert.secret) {
            (false, Some(secret)) => CertificateChoice::Host {
                secret: secret.clone(),
            },
            (_, secret) => CertificateChoice::Default {
                secret: secret.clone(),
            },
        })
    }
}

/// Parsed certificates by Secret, kept in the route table so that the next build does not
/// parse unchanged certificates again.
#[derive(Debug, Default)]
pub(crate) struct CertCache(HashMap<ObjectName, Cached>);

#[derive(Debug)]
struct Cached {
    cert_pem: Arc<[u8]>,
    key_pem: Arc<[u8]>,
    parsed: Result<Arc<CertifiedKey>, String>,
}

impl CertCache {
    /// The parsed certificate: from this build, else from `previous` if the PEM is
    /// unchanged, else parsed now.
    fn get(
        &mut self,
        previous: Option<&CertCache>,
        plan: &CertificatePlan,
    ) -> Result<Arc<CertifiedKey>, String> {
        let same = |c: &Cached| c.cert_pem == plan.cert_pem && c.key_pem == plan.key_pem;
        if let Some(c) = self.0.get(&plan.secret).filter(|c| same(c)) {
            return c.parsed.clone();
        }
        let parsed = match previous
            .and_then(|p| p.0.get(&plan.secret))
            .filter(|c| same(c))
        {
            Some(c) => c.parsed.clone(),
            None => parse_pem(&plan.cert_pem, &plan.key_pem),
        };
        let cached = Cached {
            cert_pem: Arc::clone(&plan.cert_pem),
            key_pem: Arc::clone(&plan.key_pem),
            parsed: parsed.clone(),
        };
        self.0.insert(plan.secret.clone(), cached);
        parsed
    }
}

/// Most certificates a `tls.crt` may hold (real chains have 2–4).
pub(crate) const MAX_CHAIN_CERTIFICATES: usize = 16;

/// The certificate store of a TLS plan: for every name (and the default) the first candidate
/// whose key loads. A candidate that does not load is reported once, naming its Ingress and
/// Secret (expiry is decided by `sluice-routes`, which orders the candidates).
pub(crate) fn build(
    plan: &TlsPlan,
    previous: Option<&CertCache>,
) -> (CertStore, CertCache, Vec<RouteWarning>) {
    let mut cache = CertCache::default();
    let mut store = CertStore::default();
    let mut warned = HashSet::new();
    let mut warnings = Vec::new();
    let mut first_loading = |candidates: &[Arc<CertificatePlan>], cache: &mut CertCache| {
        candidates
            .iter()
            .find_map(|c| match cache.get(previous, c) {
                Ok(key) => Some(ServedCert {
                    key,
                    secret: Some(c.secret.clone()),
                }),
                Err(why) => {
                    if warned.insert(c.secret.clone()) {
                        warnings.push(load_warning(c, &why));
                    }
                    None
                }
            })
    };
    for host in &plan.hosts {
        if let Some(key) = first_loading(&host.certificates, &mut cache) {
            let map = match &host.name {
                HostMatch::Wildcard(_) => &mut store.wildcard,
                _ => &mut store.exact,
            };
            map.insert(host_key(&host.name).into(), key);
        }
    }
    store.default = first_loading(&plan.default, &mut cache).or_else(generated_default);
    (store, cache, warnings)
}

/// Subject of the generated default certificate: ingress-nginx's, so that tools and people
/// recognise it.
pub(crate) const GENERATED_SUBJECT: &str = "Kubernetes Ingress Controller Fake Certificate";

/// A self-signed certificate made once per process, presented when no default certificate
/// is configured (or it does not load), as ingress-nginx does: a handshake for an unknown
/// name succeeds, and a client that checks names refuses it.
fn generated_default() -> Option<ServedCert> {
    static GENERATED: LazyLock<Result<Arc<CertifiedKey>, String>> = LazyLock::new(|| {
        let made = generate_self_signed();
        if let Err(why) = &made {
            tracing::error!("ingress: cannot generate the default certificate: {why}");
        }
        made
    });
    let key = GENERATED.as_ref().ok()?;
    Some(ServedCert {
        key: Arc::clone(key),
        secret: None,
    })
}

fn generate_self_signed() -> Result<Arc<CertifiedKey>, String> {
    let mut params = rcgen::CertificateParams::new(vec!["ingress.local".to_owned()])
        .map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Acme Co");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, GENERATED_SUBJECT);
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    parse_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
}

fn host_key(name: &HostMatch) -> &str {
    match name {
        HostMatch::Exact(h) | HostMatch::Wildcard(h) => h,
        HostMatch::Any => "",
    }
}

fn load_warning(c: &CertificatePlan, why: &str) -> RouteWarning {
    match &c.ingress {
        Some(ingress) => RouteWarning {
            kind: "Ingress",
            object: ingress.clone(),
            message: format!(
                "secret {} is not a valid kubernetes.io/tls secret: {why}",
                c.secret
            ),
        },
        None => RouteWarning {
            kind: "Secret",
            object: c.secret.clone(),
            message: format!("default certificate is not a valid kubernetes.io/tls secret: {why}"),
        },
    }
}

/// Parses a certificate chain and its key (PKCS#8, PKCS#1 or SEC1 PEM). The error says what
/// is wrong, for a warning that names the Secret.
pub(crate) fn parse_pem(crt: &[u8], key: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &crt[..])
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
    let key = rustls_pemfile::private_key(&mut &key[..])
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

//! TLS: certificates from `kubernetes.io/tls` Secrets, chosen by SNI at each handshake from
//! the current route table (so a rotated Secret applies to the next handshake, while
//! established connections keep theirs).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwap;
use rustls::CipherSuite;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::RouteTable;
use crate::session_cache::SessionCache;
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

/// The server side of TLS: the same certificates and session cache under two cipher suite
/// orders, one of which is picked for each client as BoringSSL and Go pick (so as Envoy,
/// Caddy and Traefik do): AES-128-GCM first, unless the client lists ChaCha20-Poly1305 ahead
/// of every AES-GCM suite, which a client without AES instructions does; it then gets its
/// own order. AES-128-GCM (with SHA-256, which has CPU instructions here, where SHA-384 has
/// none) costs less per handshake and per record than AES-256-GCM, the suite an
/// OpenSSL client lists first and an OpenSSL server (nginx) therefore takes.
#[derive(Debug, Clone)]
pub(crate) struct TlsServer {
    aes_128_first: Arc<rustls::ServerConfig>,
    client_order: Arc<rustls::ServerConfig>,
}

impl TlsServer {
    /// TLS 1.2/1.3 with ring, ALPN h2 and http/1.1, certificates by SNI from `table`, and
    /// `sessions` sessions kept for resumption (0: none).
    pub(crate) fn new(
        table: Arc<ArcSwap<RouteTable>>,
        sessions: usize,
    ) -> Result<Self, rustls::Error> {
        let resolver: Arc<dyn ResolvesServerCert> = Arc::new(SniResolver { table });
        let mut aes_128_first = server_config(Arc::new(aes_128_first()), Arc::clone(&resolver))?;
        aes_128_first.ignore_client_order = true;
        // Stateful resumption, as ingress-nginx's default (`ssl-session-tickets: false`): a
        // TLS 1.3 ticket is only the key of a session kept here. rustls' own default keeps 256,
        // and its cache scans every session to take one out (see `session_cache`).
        if sessions == 0 {
            aes_128_first.session_storage = Arc::new(NoServerSessionStorage {});
            aes_128_first.send_tls13_tickets = 0;
        } else {
            aes_128_first.session_storage = Arc::new(SessionCache::new(sessions));
            // One ticket per handshake, full or resumed, as Go's TLS server sends (Caddy,
            // Traefik) and OpenSSL after a resumption; rustls' default is two. A session is
            // single-use, so a client resuming connection after connection gets a new one
            // each time; the second ticket it never uses would take a place in the cache
            // and cost both ends a message per handshake.
            aes_128_first.send_tls13_tickets = 1;
        }
        let mut client_order = server_config(Arc::clone(&PROVIDER), resolver)?;
        // One session cache: a client resumes whichever order it got last time.
        client_order.session_storage = Arc::clone(&aes_128_first.session_storage);
        client_order.send_tls13_tickets = aes_128_first.send_tls13_tickets;
        Ok(Self {
            aes_128_first: Arc::new(aes_128_first),
            client_order: Arc::new(client_order),
        })
    }

    /// Reads the ClientHello and completes the handshake with the settings for this client.
    pub(crate) async fn accept<IO>(&self, io: IO) -> std::io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
        let config = if prefers_chacha(start.client_hello().cipher_suites()) {
            &self.client_order
        } else {
            &self.aes_128_first
        };
        start.into_stream(Arc::clone(config)).await
    }
}

fn server_config(
    provider: Arc<CryptoProvider>,
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// ring's suites in the server's order (see [`suite_rank`]).
fn aes_128_first() -> CryptoProvider {
    let mut provider = CryptoProvider::clone(&PROVIDER);
    provider
        .cipher_suites
        .sort_by_key(|s| suite_rank(s.suite()));
    provider
}

/// The server's order: AES-128-GCM, then AES-256-GCM, then the rest (ChaCha20-Poly1305).
fn suite_rank(suite: CipherSuite) -> u8 {
    match suite {
        CipherSuite::TLS13_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
        CipherSuite::TLS13_AES_256_GCM_SHA384
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
        _ => 2,
    }
}

/// Whether the client lists a ChaCha20-Poly1305 suite before any AES-GCM one.
fn prefers_chacha(offered: &[CipherSuite]) -> bool {
    offered
        .iter()
        .find_map(|&suite| match suite {
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Some(true),
            other if suite_rank(other) < 2 => Some(false),
            _ => None,
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use CipherSuite::*;

    #[test]
    fn chacha_is_kept_for_clients_that_list_it_before_aes() {
        let cases: &[(&[CipherSuite], bool)] = &[
            // OpenSSL's default order: AES-256 first.
            (
                &[
                    TLS13_AES_256_GCM_SHA384,
                    TLS13_CHACHA20_POLY1305_SHA256,
                    TLS13_AES_128_GCM_SHA256,
                ],
                false,
            ),
            // A phone without AES instructions.
            (
                &[TLS13_CHACHA20_POLY1305_SHA256, TLS13_AES_128_GCM_SHA256],
                true,
            ),
            // Suites the server does not have are skipped (GREASE, CCM).
            (
                &[
                    CipherSuite::Unknown(0x0a0a),
                    TLS13_AES_128_CCM_SHA256,
                    TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
                    TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                ],
                true,
            ),
            (&[TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256], false),
            (&[], false),
        ];
        for (offered, want) in cases {
            assert_eq!(prefers_chacha(offered), *want, "{offered:?}");
        }
    }

    #[test]
    fn the_server_order_puts_aes_128_first_in_each_version() {
        let provider = aes_128_first();
        let order: Vec<CipherSuite> = provider.cipher_suites.iter().map(|s| s.suite()).collect();
        let position = |s| order.iter().position(|&o| o == s).unwrap();
        assert_eq!(
            order.len(),
            PROVIDER.cipher_suites.len(),
            "no suite dropped"
        );
        assert!(position(TLS13_AES_128_GCM_SHA256) < position(TLS13_AES_256_GCM_SHA384));
        assert!(position(TLS13_AES_256_GCM_SHA384) < position(TLS13_CHACHA20_POLY1305_SHA256));
        assert!(
            position(TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
                < position(TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384)
        );
    }
}

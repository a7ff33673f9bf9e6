//! The Ingress route plan: every routing decision for the L7 proxy, made once by
//! `sluice-routes` from the Ingresses, IngressClasses, Services, EndpointSlices and Secrets.
//! The proxy (`sluice-ingress`) only builds its lookup structures from it and executes it;
//! it holds no Kubernetes types and decides no precedence.
//!
//! Matching, as the proxy executes it:
//!
//! 1. **Host**: [`HostMatch::Exact`] (case-insensitive, port and trailing dot ignored), else
//!    [`HostMatch::Wildcard`] (exactly one more label), else [`HostMatch::Any`] (rules without
//!    host), else [`RoutePlan::default_backend`], else the built-in 404.
//! 2. **Path**, only inside the chosen host: [`HostPlan::paths`] in the order listed. For a
//!    host whose paths are [`PathKind::Regex`], the first regex that matches wins. Otherwise an
//!    exact match wins (an [`PathKind::Exact`] path, or the path of a [`PathKind::Prefix`] rule
//!    itself; the first listed wins), then the longest matching prefix ([`PathRule::prefix`]).
//! 3. No path matches: [`HostPlan::default`].

use std::fmt::{self, Display, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

use crate::names::ServiceName;

/// `namespace/name` of a namespaced object (Ingress, Secret).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectName {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ObjectName {
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A problem with one object, which was skipped or partly skipped. Displayed as
/// `Ingress default/cafe: secret default/cafe-secret not found`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct RouteWarning {
    /// Kind of the object at fault (`Ingress`, `Secret`, `EndpointSlice`, `Service`).
    pub kind: &'static str,
    pub object: ObjectName,
    pub message: String,
}

impl Display for RouteWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.kind, self.object, self.message)
    }
}

/// The whole route plan of this node's Ingress proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RoutePlan {
    /// Exact hosts (sorted), then wildcard hosts (sorted), then [`HostMatch::Any`].
    pub hosts: Vec<HostPlan>,
    /// Requests for hosts that no rule names: the `defaultBackend` of the oldest Ingress
    /// without rules (else of the oldest Ingress with one). `None`: built-in 404.
    pub default_backend: Option<RouteAction>,
    pub tls: TlsPlan,
    /// Ingresses of our classes (their status is ours to write), sorted.
    pub served: Vec<ObjectName>,
}

/// Which request hosts a [`HostPlan`] answers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostMatch {
    /// One host name, lower case.
    Exact(Arc<str>),
    /// `*.parent`: exactly one label before `parent` (stored without `*.`), lower case.
    Wildcard(Arc<str>),
    /// Rules without `host`.
    Any,
}

impl Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMatch::Exact(h) => f.write_str(h),
            HostMatch::Wildcard(parent) => write!(f, "*.{parent}"),
            HostMatch::Any => f.write_str("*"),
        }
    }
}

/// The rules of one host, merged over every Ingress that names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostPlan {
    pub host: HostMatch,
    /// In the order they are tried (see the module documentation).
    pub paths: Vec<PathRule>,
    /// No path matches: the `defaultBackend` of the first Ingress (conflict order) naming
    /// this host, with that Ingress's options; its backend is `None` (built-in 404) when that
    /// Ingress has none.
    pub default: RouteAction,
}

impl HostPlan {
    /// Whether the paths are regular expressions (first match wins).
    pub fn is_regex(&self) -> bool {
        self.paths.iter().any(|p| p.kind == PathKind::Regex)
    }
}

/// How a request path is compared with [`PathRule::path`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    /// Byte-for-byte equal (`pathType: Exact`).
    Exact,
    /// Element-wise prefix (`pathType: Prefix`): `/aaa` matches `/aaa`, `/aaa/` and
    /// `/aaa/b`, not `/aaab`. `path` is stored without trailing slash (`/` for the root).
    Prefix,
    /// Plain string prefix, as nginx's `location /path` (`pathType: ImplementationSpecific`
    /// without regex): `/aaa` also matches `/aaab`.
    StringPrefix,
    /// A regular expression (Rust `regex` syntax, written out in full: `(?i)^/foo/.*`),
    /// matched against the normalised path; the first match in list order wins.
    Regex,
}

impl PathKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Exact => "exact",
            PathKind::Prefix => "prefix",
            PathKind::StringPrefix => "string-prefix",
            PathKind::Regex => "regex",
        }
    }
}

/// One path of a host and what answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathRule {
    pub kind: PathKind,
    pub path: Arc<str>,
    pub action: RouteAction,
}

impl PathRule {
    /// The string a request path must start with for this rule to match as a prefix (longest
    /// wins): `/aaa/` for `Prefix /aaa` (whose exact path matches separately), `/` for
    /// `Prefix /`, the path itself for `StringPrefix`. `None` for `Exact` and `Regex`.
    pub fn prefix(&self) -> Option<String> {
        match self.kind {
            PathKind::Prefix if &*self.path == "/" => Some("/".to_owned()),
            PathKind::Prefix => Some(format!("{}/", self.path)),
            PathKind::StringPrefix => Some(self.path.to_string()),
            PathKind::Exact | PathKind::Regex => None,
        }
    }

    /// The path this rule matches exactly (`Exact`, and `Prefix` for its own path).
    pub fn exact(&self) -> Option<&str> {
        match self.kind {
            PathKind::Exact => Some(&self.path),
            PathKind::Prefix if &*self.path != "/" => Some(&self.path),
            _ => None,
        }
    }
}

/// What answers a matched request: a backend (or the built-in 404) with per-route options,
/// decided from the annotations of the Ingress the route comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteAction {
    pub ingress: ObjectName,
    /// `None`: the built-in 404 (the controller's default backend).
    pub backend: Option<Arc<BackendPlan>>,
    pub options: Arc<RouteOptions>,
}

/// A Service port and its ready endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendPlan {
    pub service: ServiceName,
    /// The service port as the Ingress names it (a number or a port name).
    pub port: Arc<str>,
    /// Ready endpoints (IP and target port), sorted; empty: 503.
    pub endpoints: Vec<SocketAddr>,
}

impl Display for BackendPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.service, self.port)
    }
}

/// How the proxy speaks to the endpoints (`backend-protocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum BackendProtocol {
    /// HTTP/1.1.
    #[default]
    Http,
    /// HTTP/1.1 over TLS (the endpoint's certificate is not verified, as nginx's default).
    Https,
    /// HTTP/2 without TLS (prior knowledge).
    H2c,
    /// gRPC: HTTP/2 without TLS.
    Grpc,
    /// gRPC over TLS.
    Grpcs,
}

impl BackendProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendProtocol::Http => "HTTP",
            BackendProtocol::Https => "HTTPS",
            BackendProtocol::H2c => "H2C",
            BackendProtocol::Grpc => "GRPC",
            BackendProtocol::Grpcs => "GRPCS",
        }
    }
}

/// Per-route behaviour decided from `nginx.ingress.kubernetes.io/*` annotations. The default
/// is a plain proxied route with the proxy's own limits and timeouts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RouteOptions {
    pub protocol: BackendProtocol,
    /// Plain-HTTP requests get `308` to the same URL over HTTPS (`ssl-redirect` on a host with
    /// TLS, or `force-ssl-redirect`).
    pub https_redirect: bool,
    /// `permanent-redirect` / `temporal-redirect`: answered without any backend.
    pub redirect: Option<Redirect>,
    /// `app-root`: a request for exactly `/` gets `302` to this path.
    pub app_root: Option<String>,
    /// `rewrite-target`: the path sent upstream, `$1`..`$9` replaced by the groups of the
    /// route's regex; the query is kept (appended after `&` when the target has its own).
    pub rewrite_target: Option<String>,
    /// `proxy-body-size` in bytes (`Some(0)`: unlimited); `None`: the proxy's default.
    pub max_body_bytes: Option<u64>,
    /// `proxy-connect-timeout`.
    pub connect_timeout: Option<Duration>,
    /// `proxy-read-timeout`: until the response headers, and between two reads of the body.
    pub read_timeout: Option<Duration>,
    /// `proxy-send-timeout`: longest the upstream may stop reading a streamed request body.
    pub send_timeout: Option<Duration>,
    /// `allowlist-source-range` / `whitelist-source-range`: other clients get 403. `None`:
    /// everyone; an empty list: nobody (an invalid list fails closed).
    pub allow_sources: Option<Vec<IpNet>>,
    pub cors: Option<Cors>,
    /// `upstream-vhost`: the `Host` sent upstream.
    pub upstream_vhost: Option<String>,
    /// `x-forwarded-prefix`: sent upstream as `X-Forwarded-Prefix`.
    pub forwarded_prefix: Option<String>,
    pub rate_limit: Option<RateLimit>,
    /// `limit-connections`: requests in progress at once per client address (503 beyond).
    pub connection_limit: Option<u32>,
    pub basic_auth: Option<BasicAuth>,
    pub affinity: Option<CookieAffinity>,
    pub canary: Option<Canary>,
    /// TLS to the endpoints (`backend-protocol` HTTPS or GRPCS; `proxy-ssl-*`).
    pub upstream_tls: Option<UpstreamTls>,
}

/// How the proxy speaks TLS to the endpoints (`proxy-ssl-verify`, `proxy-ssl-secret`,
/// `proxy-ssl-name`, `proxy-ssl-server-name`).
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
pub struct UpstreamTls {
    /// Verify the endpoint's certificate against [`ca_pem`](Self::ca_pem) and
    /// [`name`](Self::name). Off (nginx's default): any certificate is accepted.
    pub verify: bool,
    /// `proxy-ssl-secret`: where `ca_pem` and the client certificate come from.
    pub secret: Option<ObjectName>,
    /// Trusted CA certificates (`ca.crt` of the secret), PEM.
    #[serde(skip)]
    pub ca_pem: Option<Arc<[u8]>>,
    /// Client certificate chain and key presented to the endpoint (`tls.crt`, `tls.key` of
    /// the secret), PEM.
    #[serde(skip)]
    pub client_cert: Option<PemPair>,
    /// The name verified in the endpoint's certificate (`proxy-ssl-name`, else
    /// `SERVICE.NAMESPACE.svc`).
    pub name: String,
    /// Send [`name`](Self::name) as SNI (`proxy-ssl-server-name: "on"`).
    pub send_sni: bool,
}

/// A certificate chain and its private key, PEM.
pub type PemPair = (Arc<[u8]>, Arc<[u8]>);

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("verify", &self.verify)
            .field("secret", &self.secret)
            .field("has_ca", &self.ca_pem.is_some())
            .field("has_client_cert", &self.client_cert.is_some())
            .field("name", &self.name)
            .field("send_sni", &self.send_sni)
            .finish()
    }
}

impl Display for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = |b: bool| if b { "on" } else { "off" };
        write!(f, "verify={} name={}", on(self.verify), self.name)?;
        if let Some(secret) = &self.secret {
            write!(
                f,
                " secret={secret} ca={} client-cert={}",
                on(self.ca_pem.is_some()),
                on(self.client_cert.is_some())
            )?;
        }
        write!(f, " sni={}", on(self.send_sni))
    }
}

/// A redirect answered by the proxy itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Redirect {
    /// 301, 302, 307 or 308.
    pub code: u16,
    pub location: String,
}

/// `enable-cors` and its `cors-allow-*` settings: preflight `OPTIONS` requests are answered
/// `204` with these headers; other responses get them added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cors {
    /// `["*"]`: any origin (answered `*`); otherwise exact origins or `scheme://*.domain`
    /// patterns, and a matching `Origin` is echoed back.
    pub allow_origins: Vec<String>,
    pub allow_methods: String,
    pub allow_headers: String,
    pub allow_credentials: bool,
    pub expose_headers: Option<String>,
    pub max_age: u64,
}

/// `limit-rps` with the burst ingress-nginx derives (`limit-burst-multiplier`, default 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// `auth-type: basic`: users and password hashes from the `auth-secret` htpasswd file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BasicAuth {
    pub realm: String,
    pub secret: ObjectName,
    pub users: Vec<Credential>,
}

/// One htpasswd line. The hash is never printed.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct Credential {
    pub user: String,
    #[serde(skip)]
    pub hash: PasswordHash,
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordHash::Md5Crypt { magic, .. } => write!(f, "Md5Crypt({magic}…)"),
            PasswordHash::Sha1 { .. } => f.write_str("Sha1(…)"),
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The htpasswd hash schemes the proxy verifies.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// MD5 crypt: `$apr1$salt$checksum` (`htpasswd -m`, Apache's variant) or `$1$salt$checksum`
    /// (`openssl passwd -1`). `magic` is `$apr1$` or `$1$`.
    Md5Crypt {
        magic: String,
        salt: String,
        checksum: String,
    },
    /// `{SHA}base64` (`htpasswd -s`, unsalted SHA-1).
    Sha1 { digest: [u8; 20] },
}

/// `affinity: cookie`: a request carrying the cookie goes to the endpoint it names while that
/// endpoint is ready; others get the cookie with the endpoint chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CookieAffinity {
    pub name: String,
    /// `Max-Age` (and `Expires`) of the cookie; `None`: a session cookie.
    pub max_age: Option<u64>,
    pub path: String,
}

/// An alternative backend from a `canary: "true"` Ingress for the same host and path.
/// Tried in order: header, cookie, weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Canary {
    pub ingress: ObjectName,
    pub backend: Arc<BackendPlan>,
    /// `canary-by-header`: `always` → canary, `never` → primary; with
    /// `canary-by-header-value`, that value → canary; anything else falls through.
    pub header: Option<String>,
    pub header_value: Option<String>,
    /// `canary-by-cookie`: `always` → canary, `never` → primary.
    pub cookie: Option<String>,
    /// `canary-weight` out of `weight_total` requests go to the canary.
    pub weight: u32,
    pub weight_total: u32,
}

/// Certificates by SNI name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TlsPlan {
    /// Names from the Ingresses' `tls.hosts` (exact, then wildcard), sorted.
    pub hosts: Vec<TlsHost>,
    /// When no name matches (or none of its certificates loads): the first of these that
    /// loads. Empty: the handshake fails.
    pub default: Vec<Arc<CertificatePlan>>,
}

/// The certificates that may answer one SNI name, best first: currently valid ones before
/// expired or not yet valid ones, exact names before covering wildcards, then conflict order.
/// The proxy serves the first one whose key loads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsHost {
    pub name: HostMatch,
    pub certificates: Vec<Arc<CertificatePlan>>,
}

/// A `kubernetes.io/tls` Secret's certificate chain and key, as PEM.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct CertificatePlan {
    pub secret: ObjectName,
    /// The Ingress whose `tls` section names it (the oldest); `None` for the default
    /// certificate given by flag.
    pub ingress: Option<ObjectName>,
    #[serde(skip)]
    pub cert_pem: Arc<[u8]>,
    #[serde(skip)]
    pub key_pem: Arc<[u8]>,
    pub validity: Validity,
}

impl fmt::Debug for CertificatePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificatePlan")
            .field("secret", &self.secret)
            .field("ingress", &self.ingress)
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

/// The leaf certificate's validity period at planning time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Validity {
    Valid,
    Expired,
    NotYetValid,
    /// The dates could not be read (the proxy reports why the certificate does not load).
    Unknown,
}

impl Validity {
    pub fn as_str(self) -> &'static str {
        match self {
            Validity::Valid => "valid",
            Validity::Expired => "expired",
            Validity::NotYetValid => "not-yet-valid",
            Validity::Unknown => "unknown",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Text form (`sluice plan --ingress`, golden files).

/// `default/tea-svc:80 [10.244.1.2:8080 10.244.2.2:8080]`, or `404` for the built-in one.
fn backend_text(backend: Option<&Arc<BackendPlan>>) -> String {
    let Some(b) = backend else {
        return "404".to_owned();
    };
    let endpoints: Vec<String> = b.endpoints.iter().map(ToString::to_string).collect();
    format!("{b} [{}]", endpoints.join(" "))
}

impl RouteOptions {
    /// One line per option that differs from the default (`key value`).
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut add = |key: &str, value: &dyn Display| {
            let line = format!("{key} {value}");
            out.push(line.trim_end().to_owned());
        };
        if self.protocol != BackendProtocol::Http {
            add("backend-protocol", &self.protocol.as_str());
        }
        if self.https_redirect {
            add("https-redirect", &308);
        }
        if let Some(r) = &self.redirect {
            add("redirect", &format_args!("{} {}", r.code, r.location));
        }
        if let Some(root) = &self.app_root {
            add("app-root", root);
        }
        if let Some(target) = &self.rewrite_target {
            add("rewrite-target", target);
        }
        if let Some(n) = self.max_body_bytes {
            add("body-size", &n);
        }
        for (key, t) in [
            ("connect-timeout", self.connect_timeout),
            ("read-timeout", self.read_timeout),
            ("send-timeout", self.send_timeout),
        ] {
            if let Some(t) = t {
                add(key, &format_args!("{}s", t.as_secs_f64()));
            }
        }
        self.more_lines(&mut add);
        out
    }

    fn more_lines(&self, add: &mut dyn FnMut(&str, &dyn Display)) {
        if let Some(nets) = &self.allow_sources {
            let nets: Vec<String> = nets.iter().map(ToString::to_string).collect();
            add(
                "allow",
                &if nets.is_empty() {
                    "nobody".to_owned()
                } else {
                    nets.join(" ")
                },
            );
        }
        if let Some(c) = &self.cors {
            add(
                "cors",
                &format_args!(
                    "origins={} methods={:?} headers={:?} credentials={} max-age={}{}",
                    c.allow_origins.join(","),
                    c.allow_methods,
                    c.allow_headers,
                    c.allow_credentials,
                    c.max_age,
                    c.expose_headers
                        .as_ref()
                        .map(|e| format!(" expose={e:?}"))
                        .unwrap_or_default()
                ),
            );
        }
        if let Some(v) = &self.upstream_vhost {
            add("upstream-vhost", v);
        }
        if let Some(p) = &self.forwarded_prefix {
            add("x-forwarded-prefix", p);
        }
        if let Some(r) = &self.rate_limit {
            add(
                "limit-rps",
                &format_args!("{} burst {}", r.per_second, r.burst),
            );
        }
        if let Some(n) = self.connection_limit {
            add("limit-connections", &n);
        }
        if let Some(a) = &self.basic_auth {
            let users: Vec<&str> = a.users.iter().map(|u| u.user.as_str()).collect();
            let text = format!(
                "realm={:?} secret {} users {}",
                a.realm,
                a.secret,
                users.join(",")
            );
            add("basic-auth", &text);
        }
        if let Some(a) = &self.affinity {
            let age = a
                .max_age
                .map(|s| format!(" max-age={s}"))
                .unwrap_or_default();
            add(
                "affinity",
                &format_args!("cookie {} path={}{age}", a.name, a.path),
            );
        }
        if let Some(c) = &self.canary {
            add("canary", &c.to_string());
        }
        if let Some(t) = &self.upstream_tls {
            add("proxy-ssl", t);
        }
    }
}

impl Display for Canary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} from {}",
            backend_text(Some(&self.backend)),
            self.ingress
        )?;
        if let Some(h) = &self.header {
            write!(f, " header={h}")?;
            if let Some(v) = &self.header_value {
                write!(f, "={v}")?;
            }
        }
        if let Some(c) = &self.cookie {
            write!(f, " cookie={c}")?;
        }
        write!(f, " weight={}/{}", self.weight, self.weight_total)
    }
}

/// `{head} -> backend`, then one indented line per option.
fn write_action(f: &mut String, head: &str, action: &RouteAction) {
    let _ = writeln!(f, "{head} -> {}", backend_text(action.backend.as_ref()));
    for line in action.options.lines() {
        let _ = writeln!(f, "    {line}");
    }
}

impl Display for HostPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        let _ = writeln!(out, "host {}", self.host);
        for rule in &self.paths {
            let head = format!("  {} {}", rule.kind.as_str(), rule.path);
            write_action(&mut out, &head, &rule.action);
        }
        let default = &self.default;
        if default.backend.is_some() || *default.options != RouteOptions::default() {
            write_action(&mut out, "  default", default);
        }
        f.write_str(&out)
    }
}

impl Display for TlsPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<String> = self.hosts.iter().map(|h| h.name.to_string()).collect();
        if !self.default.is_empty() {
            names.push("default".to_owned());
        }
        if names.is_empty() {
            return Ok(());
        }
        writeln!(f, "tls {}", names.join(", "))?;
        let entries = self
            .hosts
            .iter()
            .map(|h| (h.name.to_string(), &h.certificates));
        let default = std::iter::once(("default".to_owned(), &self.default));
        for (name, certs) in entries.chain(default) {
            for cert in certs.iter() {
                write!(
                    f,
                    "  {name} <- secret {} {}",
                    cert.secret,
                    cert.validity.as_str()
                )?;
                match &cert.ingress {
                    Some(ingress) => writeln!(f, " (Ingress {ingress})")?,
                    None => writeln!(f)?,
                }
            }
        }
        Ok(())
    }
}

/// ```text
/// host cafe.example.com
///   exact /tea -> default/tea-svc:80 [10.244.1.2:8080]
///   prefix /coffee -> default/coffee-svc:http [10.244.2.3:8080]
///     https-redirect 308
///   default -> default/fallback:80 []
/// host *.example.com
/// host *
/// default-backend -> default/fallback:80 []
/// tls cafe.example.com, default
///   cafe.example.com <- secret default/cafe-secret valid (Ingress default/cafe)
///   default <- secret default/cafe-secret valid (Ingress default/cafe)
/// ```
impl Display for RoutePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for host in &self.hosts {
            write!(f, "{host}")?;
        }
        if let Some(action) = &self.default_backend {
            let mut out = String::new();
            write_action(&mut out, "default-backend", action);
            f.write_str(&out)?;
        }
        write!(f, "{}", self.tls)
    }
}

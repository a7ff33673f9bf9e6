use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

/// Settings of the ingress proxy. `Default` gives the documented defaults (docs/ingress.md).
/// Which Ingresses are served and how they route is the plan's business (`sluice-routes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressConfig {
    /// `--ingress-http-bind`; `None` disables plain HTTP.
    pub http_bind: Option<SocketAddr>,
    /// `--ingress-https-bind`; `None` disables HTTPS.
    pub https_bind: Option<SocketAddr>,
    /// Time to establish a TCP connection to an endpoint.
    pub connect_timeout: Duration,
    /// Time from the end of the request (its body fully sent) until the response headers
    /// arrive; also the longest the upstream may stop reading a streamed request body, and the
    /// longest pause allowed between two reads of the response body.
    pub response_timeout: Duration,
    /// Downstream HTTP/1 keep-alive idle time, which is also the time allowed to send the
    /// request headers.
    pub client_idle_timeout: Duration,
    /// Longest pause between two reads of a request body (nginx's `client_body_timeout`);
    /// after it the client gets 408 and no backend is blamed.
    pub client_body_timeout: Duration,
    /// Time a downstream TLS handshake may take.
    pub tls_handshake_timeout: Duration,
    /// TLS sessions remembered for resumption, over all workers (0: none, and no session
    /// tickets sent). A resumed handshake skips the certificate and its signature.
    /// ingress-nginx's `ssl-session-cache-size` of 10 MiB holds about 40,000.
    pub tls_session_cache: usize,
    /// Idle upstream keep-alive connections are closed after this long.
    pub upstream_idle_timeout: Duration,
    /// Largest request body accepted (413 beyond), unless a route's `proxy-body-size` says
    /// otherwise.
    pub max_request_body_bytes: u64,
    /// Request bodies up to this size are read completely before an endpoint is chosen and
    /// dialled (like nginx's `client_body_buffer_size`), so a slow client holds no backend
    /// connection; larger bodies are streamed after their first `request_buffer_bytes`.
    pub request_buffer_bytes: usize,
    /// Longest request line (URI) and longest single header line (414 / 431 beyond), like
    /// nginx's `large_client_header_buffers` buffer size.
    pub max_header_line_bytes: usize,
    /// Largest request head (request line plus all headers; 431 beyond). HTTP/1 values below
    /// 8 KiB are raised to 8 KiB (hyper's smallest read buffer); HTTP/2 uses the value as
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`.
    pub max_header_bytes: usize,
    /// Downstream connections open at once; at the cap the listeners stop accepting until one
    /// closes (the kernel's backlog holds the rest).
    pub max_client_connections: usize,
    /// Upstream connections open at once (in use, pooled idle and upgraded tunnels) over all
    /// endpoints; a request that would need another one gets 503.
    pub max_upstream_connections: usize,
    /// Upstream connections open at once to any one endpoint (503 beyond, after trying
    /// another endpoint for requests that may be retried).
    pub max_upstream_connections_per_endpoint: usize,
    /// `Upgrade` protocols tunnelled to backends (case-insensitive, version suffix ignored).
    /// Other upgrade offers are removed and the request is served as plain HTTP.
    pub allowed_upgrades: Vec<String>,
    /// On shutdown or restart (`--ingress-drain-timeout`), how long open connections get to
    /// finish after the listeners stop accepting: requests in flight, HTTP/1.1 keep-alive
    /// connections until their next response (`Connection: close`), HTTP/2 streams after
    /// GOAWAY, upgraded connections (WebSocket) until they close.
    pub shutdown_grace: Duration,
    /// Addresses of proxies in front of this one (a load balancer): a request from one of
    /// them keeps its `X-Forwarded-*` headers (ours is appended), and its client is the last
    /// `X-Forwarded-For` address that is not a trusted proxy (nginx's `real_ip_recursive`).
    /// From anyone else those headers are replaced. Empty: nobody is trusted.
    pub trusted_proxies: Vec<IpNet>,
    /// Every connection starts with a PROXY protocol header (v1 or v2, as HAProxy and cloud
    /// load balancers send it) naming the client; a connection without one is closed. With
    /// `trusted_proxies`, only those addresses may connect.
    pub proxy_protocol: bool,
    /// Connect failures in a row after which an endpoint is left out of balancing for
    /// `eject_duration` (passive health; 0: never).
    pub eject_after_connect_failures: u32,
    pub eject_duration: Duration,
    /// One JSON line per request on stdout (see `access_log.rs`; tests give their own sink to
    /// `IngressProxy::with_access_log`). Off by default in the library, on in the agent.
    pub access_log: bool,
    /// Proxy worker threads (`--ingress-workers`): each runs its own single-threaded runtime
    /// with its own accept loop on its own copy of every listener and its own upstream
    /// connection pools, so a request and its upstream connection stay on one thread
    /// (nginx's worker layout). Values below 1 count as 1.
    pub workers: usize,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            http_bind: Some(SocketAddr::from(([0, 0, 0, 0], 80))),
            https_bind: Some(SocketAddr::from(([0, 0, 0, 0], 443))),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            client_idle_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            tls_session_cache: 40_000,
            upstream_idle_timeout: Duration::from_secs(60),
            max_request_body_bytes: 1024 * 1024,
            request_buffer_bytes: 16 * 1024,
            max_header_line_bytes: 8 * 1024,
            max_header_bytes: 32 * 1024,
            max_client_connections: 8192,
            max_upstream_connections: 8192,
            max_upstream_connections_per_endpoint: 1024,
            allowed_upgrades: vec!["websocket".to_owned()],
            shutdown_grace: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            eject_after_connect_failures: 3,
            eject_duration: Duration::from_secs(10),
            access_log: false,
            workers: available_cores(),
        }
    }
}

/// The cores this process may run on (1 when unknown): the default worker count.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl IngressConfig {
    /// Whether `addr` is one of [`trusted_proxies`](Self::trusted_proxies).
    pub fn is_trusted_proxy(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&addr))
    }
}

/// Descriptors a proxy needs besides its connections: listeners, the runtime, TLS files.
const PROXY_OWN_DESCRIPTORS: usize = 16;

impl IngressConfig {
    /// The most file descriptors this configuration lets the proxy hold: every downstream and
    /// upstream connection it may open, plus its own few.
    pub fn descriptor_budget(&self) -> usize {
        self.max_client_connections
            .saturating_add(self.max_upstream_connections)
            .saturating_add(PROXY_OWN_DESCRIPTORS)
    }

    /// Shrinks the connection caps, keeping their ratio, so that
    /// [`descriptor_budget`](Self::descriptor_budget) stays within `fd_limit` minus `reserve`
    /// (descriptors the rest of the process needs: health, metrics, API watches, the
    /// dataplane). Caps that already fit are kept. Returns whether anything changed.
    ///
    /// The agent calls this with `RLIMIT_NOFILE` (after raising the soft limit to the hard
    /// one), so that running out of descriptors can never stop health checks or the sync loop.
    pub fn fit_descriptor_limit(&mut self, fd_limit: u64, reserve: u64) -> bool {
        let available = usize::try_from(fd_limit.saturating_sub(reserve))
            .unwrap_or(usize::MAX)
            .saturating_sub(PROXY_OWN_DESCRIPTORS);
        let wanted = self
            .max_client_connections
            .saturating_add(self.max_upstream_connections);
        if wanted <= available {
            return false;
        }
        // At least one connection each way, so the proxy still answers something.
        let scale = |n: usize| {
            let scaled = (n as u128 * available as u128 / wanted.max(1) as u128) as usize;
            scaled.max(1)
        };
        self.max_client_connections = scale(self.max_client_connections);
        self.max_upstream_connections = scale(self.max_upstream_connections);
        self.max_upstream_connections_per_endpoint = self
            .max_upstream_connections_per_endpoint
            .min(self.max_upstream_connections);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fit_a_20000_descriptor_limit_with_reserve() {
        let mut c = IngressConfig::default();
        assert!(c.descriptor_budget() <= 20_000 - 1024);
        assert!(!c.fit_descriptor_limit(20_000, 1024));
        assert_eq!(c, IngressConfig::default());
    }

    #[test]
    fn small_descriptor_limit_shrinks_caps_keeping_the_reserve() {
        let mut c = IngressConfig::default();
        assert!(c.fit_descriptor_limit(1024, 256));
        assert!(c.descriptor_budget() <= 1024 - 256, "{c:?}");
        assert_eq!(c.max_client_connections, c.max_upstream_connections);
        assert!(c.max_upstream_connections_per_endpoint <= c.max_upstream_connections);
    }

    #[test]
    fn tiny_limit_still_leaves_one_connection_each_way() {
        let mut c = IngressConfig::default();
        c.fit_descriptor_limit(10, 100);
        assert_eq!(c.max_client_connections, 1);
        assert_eq!(c.max_upstream_connections, 1);
        assert_eq!(c.max_upstream_connections_per_endpoint, 1);
    }
}

use std::net::SocketAddr;
use std::time::Duration;

use sluice_model::ObjectKey;

/// Settings of the ingress proxy. `Default` gives the documented defaults (docs/ingress.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressConfig {
    /// `--ingress-http-bind`; `None` disables plain HTTP.
    pub http_bind: Option<SocketAddr>,
    /// `--ingress-https-bind`; `None` disables HTTPS.
    pub https_bind: Option<SocketAddr>,
    /// `IngressClass.spec.controller` value this proxy owns.
    pub controller_name: String,
    /// Secret holding the certificate served when no Ingress `tls` section matches the SNI name
    /// (the agent must include it in the Secrets it caches). When unset, the first `tls` section
    /// without `hosts` is used, else the first valid certificate in conflict order.
    pub default_certificate: Option<ObjectKey>,
    /// Time to establish a TCP connection to an endpoint.
    pub connect_timeout: Duration,
    /// Time from sending a request upstream until its response headers arrive; also the
    /// longest pause allowed between two reads of the response body.
    pub response_timeout: Duration,
    /// Downstream HTTP/1 keep-alive idle time, which is also the time allowed to send the
    /// request headers.
    pub client_idle_timeout: Duration,
    /// Time a downstream TLS handshake may take.
    pub tls_handshake_timeout: Duration,
    /// Idle upstream keep-alive connections are closed after this long.
    pub upstream_idle_timeout: Duration,
    /// Largest request body accepted (413 beyond).
    pub max_request_body_bytes: u64,
    /// On shutdown, how long open connections get to finish.
    pub shutdown_grace: Duration,
    /// Keep and append to `X-Forwarded-*` headers sent by the client (only behind a trusted
    /// load balancer). Default: replace them with what this proxy sees.
    pub trust_forwarded_headers: bool,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            http_bind: Some(SocketAddr::from(([0, 0, 0, 0], 80))),
            https_bind: Some(SocketAddr::from(([0, 0, 0, 0], 443))),
            controller_name: "sluice.dev/ingress".to_owned(),
            default_certificate: None,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            client_idle_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            upstream_idle_timeout: Duration::from_secs(60),
            max_request_body_bytes: 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
            trust_forwarded_headers: false,
        }
    }
}

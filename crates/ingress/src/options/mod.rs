//! Per-route options from the plan, compiled for the request path (header values built once,
//! limiter state shared across reloads), and the checks a request passes before it is
//! proxied, in nginx's phase order:
//!
//! 1. answers made in the rewrite phase: `permanent-redirect` / `temporal-redirect`,
//!    `app-root` (for `/`), CORS preflight (`OPTIONS` → 204), then the HTTPS redirect (308);
//! 2. limits (preaccess): `limit-rps`, `limit-connections` → 503;
//! 3. access: the allow list → 403, basic auth → 401.
//!
//! A route without options skips all of it.

mod affinity;
mod auth;
mod cors;
mod limits;
mod rewrite;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Response, StatusCode};
use ipnet::IpNet;
use sluice_plan::{BackendProtocol, RouteOptions};

pub(crate) use affinity::Affinity;
pub(crate) use limits::ConnGuard;
pub(crate) use rewrite::Rewrite;

use crate::proxy::{ProxyBody, error};
use crate::routes::Backend;

/// Limiter state by route identity, so a reload does not reset rate limits.
#[derive(Debug, Default)]
pub(crate) struct Limiters {
    rate: HashMap<String, Arc<limits::RateLimiter>>,
    connections: HashMap<String, Arc<limits::ConnectionLimiter>>,
}

/// A route's options, ready for the request path.
#[derive(Debug, Default)]
pub(crate) struct RouteRuntime {
    pub(crate) protocol: BackendProtocol,
    https_redirect: bool,
    redirect: Option<(StatusCode, HeaderValue)>,
    app_root: Option<Box<str>>,
    pub(crate) rewrite: Option<Rewrite>,
    /// `Some(u64::MAX)`: unlimited.
    pub(crate) max_body_bytes: Option<u64>,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) read_timeout: Option<Duration>,
    pub(crate) send_timeout: Option<Duration>,
    allow: Option<Vec<IpNet>>,
    cors: Option<cors::CorsHeaders>,
    pub(crate) upstream_vhost: Option<HeaderValue>,
    pub(crate) forwarded_prefix: Option<HeaderValue>,
    rate_limit: Option<Arc<limits::RateLimiter>>,
    connection_limit: Option<Arc<limits::ConnectionLimiter>>,
    auth: Option<auth::BasicAuthCheck>,
    pub(crate) affinity: Option<Affinity>,
    pub(crate) canary: Option<Canary>,
    /// The pooled TLS client of an HTTPS or GRPCS route (set by the table builder).
    pub(crate) tls: Option<Arc<crate::upstream::TlsClient>>,
    /// Nothing to check before proxying (the common case): skips [`RouteRuntime::admit`].
    plain: bool,
}

/// The alternative backend of a route and when to use it.
#[derive(Debug)]
pub(crate) struct Canary {
    pub(crate) backend: Arc<Backend>,
    header: Option<HeaderName>,
    header_value: Option<Box<str>>,
    cookie: Option<Box<str>>,
    weight: u32,
    weight_total: u32,
}

/// An answer made instead of proxying (boxed: rejections are the rare path).
pub(crate) type Answer = Box<Response<ProxyBody>>;

/// What a request looks like to the checks.
pub(crate) struct RequestView<'a> {
    pub(crate) method: &'a Method,
    pub(crate) headers: &'a HeaderMap,
    /// Normalised path (what was routed).
    pub(crate) path: &'a str,
    /// The request target as the client sent it (for redirects).
    pub(crate) target: &'a str,
    pub(crate) host: &'a str,
    pub(crate) client: IpAddr,
    pub(crate) tls: bool,
    /// Port of the HTTPS listener, for the HTTPS redirect (443 is left out of the URL).
    pub(crate) https_port: u16,
}

/// A request that may be proxied, and what it holds or adds while it is.
#[derive(Debug, Default)]
pub(crate) struct Admitted {
    /// Held until the response body ends (`limit-connections`).
    pub(crate) guard: Option<ConnGuard>,
    /// Added to the response (CORS).
    pub(crate) response_headers: Vec<(HeaderName, HeaderValue)>,
}

impl RouteRuntime {
    /// Compiles a route's options; `key` identifies the route for limiter state, which is
    /// taken from `previous` when the route and its limits are unchanged.
    pub(crate) fn compile(
        o: &RouteOptions,
        canary: Option<Arc<Backend>>,
        key: &str,
        previous: Option<&Limiters>,
        limiters: &mut Limiters,
    ) -> Self {
        let mut r = RouteRuntime {
            protocol: o.protocol,
            https_redirect: o.https_redirect,
            redirect: o.redirect.as_ref().and_then(|r| {
                let code = StatusCode::from_u16(r.code).ok()?;
                Some((code, HeaderValue::from_str(&r.location).ok()?))
            }),
            app_root: o.app_root.as_deref().map(Into::into),
            rewrite: o.rewrite_target.as_deref().map(Rewrite::parse),
            max_body_bytes: o.max_body_bytes.map(|n| if n == 0 { u64::MAX } else { n }),
            connect_timeout: o.connect_timeout,
            read_timeout: o.read_timeout,
            send_timeout: o.send_timeout,
            allow: o.allow_sources.clone(),
            cors: o.cors.as_ref().map(cors::CorsHeaders::new),
            upstream_vhost: o
                .upstream_vhost
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok()),
            forwarded_prefix: o
                .forwarded_prefix
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok()),
            rate_limit: None,
            connection_limit: None,
            auth: o.basic_auth.as_ref().map(auth::BasicAuthCheck::new),
            affinity: o.affinity.as_ref().map(Affinity::new),
            canary: canary.zip(o.canary.as_ref()).map(|(backend, c)| Canary {
                backend,
                header: c
                    .header
                    .as_deref()
                    .and_then(|h| HeaderName::try_from(h).ok()),
                header_value: c.header_value.as_deref().map(Into::into),
                cookie: c.cookie.as_deref().map(Into::into),
                weight: c.weight,
                weight_total: c.weight_total.max(1),
            }),
            tls: None,
            plain: false,
        };
        r.limiters(o, key, previous, limiters);
        r.plain = !r.https_redirect
            && r.redirect.is_none()
            && r.app_root.is_none()
            && r.allow.is_none()
            && r.cors.is_none()
            && r.rate_limit.is_none()
            && r.connection_limit.is_none()
            && r.auth.is_none();
        r
    }

    fn limiters(
        &mut self,
        o: &RouteOptions,
        key: &str,
        previous: Option<&Limiters>,
        limiters: &mut Limiters,
    ) {
        if let Some(limit) = &o.rate_limit {
            let id = format!("{key} {} {}", limit.per_second, limit.burst);
            let kept = previous.and_then(|p| p.rate.get(&id)).cloned();
            let limiter = kept.unwrap_or_else(|| {
                Arc::new(limits::RateLimiter::new(limit.per_second, limit.burst))
            });
            limiters.rate.insert(id, Arc::clone(&limiter));
            self.rate_limit = Some(limiter);
        }
        if let Some(max) = o.connection_limit {
            let id = format!("{key} {max}");
            let kept = previous.and_then(|p| p.connections.get(&id)).cloned();
            let limiter = kept.unwrap_or_else(|| Arc::new(limits::ConnectionLimiter::new(max)));
            limiters.connections.insert(id, Arc::clone(&limiter));
            self.connection_limit = Some(limiter);
        }
    }

    /// The checks before proxying: `Err` is the answer (redirect, preflight, 403, 401, 503).
    pub(crate) fn admit(&self, req: &RequestView<'_>) -> Result<Admitted, Answer> {
        if self.plain {
            return Ok(Admitted::default());
        }
        self.rewrite_phase(req)?;
        let guard = self.limits(req.client)?;
        if let Some(allow) = &self.allow
            && !allow
                .iter()
                .any(|net| net.contains(&req.client.to_canonical()))
        {
            return Err(Box::new(error(
                StatusCode::FORBIDDEN,
                "403 Forbidden: your address is not allowed here (allowlist-source-range)\n",
            )));
        }
        if let Some(auth) = &self.auth {
            auth.check(req.headers)?;
        }
        let response_headers = match &self.cors {
            Some(cors) => cors.for_response(req.headers),
            None => Vec::new(),
        };
        Ok(Admitted {
            guard,
            response_headers,
        })
    }

    /// Answers nginx gives in the rewrite phase, before limits and access checks.
    fn rewrite_phase(&self, req: &RequestView<'_>) -> Result<(), Answer> {
        if let Some((code, location)) = &self.redirect {
            return Err(Box::new(redirect(*code, location.clone())));
        }
        if let Some(root) = self.app_root.as_deref().filter(|_| req.path == "/") {
            let scheme = if req.tls { "https" } else { "http" };
            let location = format!("{scheme}://{}{root}", req.host);
            return Err(Box::new(redirect_to(StatusCode::FOUND, &location)));
        }
        if let Some(cors) = &self.cors
            && req.method == Method::OPTIONS
            && let Some(resp) = cors.preflight(req.headers)
        {
            return Err(Box::new(resp));
        }
        if self.https_redirect && !req.tls {
            let host = crate::routes::normalize_host(req.host);
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.into_owned()
            };
            let port = match req.https_port {
                443 => String::new(),
                port => format!(":{port}"),
            };
            let location = format!("https://{host}{port}{}", req.target);
            return Err(Box::new(redirect_to(
                StatusCode::PERMANENT_REDIRECT,
                &location,
            )));
        }
        Ok(())
    }

    fn limits(&self, client: IpAddr) -> Result<Option<ConnGuard>, Answer> {
        if let Some(rate) = &self.rate_limit
            && !rate.allow(client)
        {
            return Err(Box::new(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "503 Service Unavailable: request rate limit reached (limit-rps)\n",
            )));
        }
        match &self.connection_limit {
            Some(limit) => match limit.acquire(client) {
                Some(guard) => Ok(Some(guard)),
                None => Err(Box::new(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "503 Service Unavailable: too many requests in progress from your address (limit-connections)\n",
                ))),
            },
            None => Ok(None),
        }
    }
}

impl Canary {
    /// Whether this request goes to the canary: header, then cookie, then weight
    /// (ingress-nginx's order; `always` / `never` decide, other values fall through).
    pub(crate) fn chosen(&self, headers: &HeaderMap) -> bool {
        if let Some(name) = &self.header
            && let Some(value) = headers.get(name).and_then(|v| v.to_str().ok())
        {
            match &self.header_value {
                Some(wanted) if value == &**wanted => return true,
                Some(_) => {}
                None if value == "always" => return true,
                None if value == "never" => return false,
                None => {}
            }
        }
        if let Some(name) = &self.cookie {
            match affinity::cookie(headers, name) {
                Some("always") => return true,
                Some("never") => return false,
                _ => {}
            }
        }
        self.weight > 0
            && (crate::upstream::random_u64() % u64::from(self.weight_total))
                < u64::from(self.weight)
    }
}

fn redirect(code: StatusCode, location: HeaderValue) -> Response<ProxyBody> {
    let mut resp = error(code, format!("{code}\n"));
    resp.headers_mut().insert(header::LOCATION, location);
    resp
}

fn redirect_to(code: StatusCode, location: &str) -> Response<ProxyBody> {
    match HeaderValue::from_str(location) {
        Ok(v) => redirect(code, v),
        Err(_) => error(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: invalid Host header\n",
        ),
    }
}

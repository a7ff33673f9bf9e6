//! One request: check the head, route, then hand over to forwarding (or the upgrade tunnel).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{HeaderMap, Request, Response, StatusCode, Version};

use super::forward::{self, Upstream, Upstreaming};
use super::headers::{self, Forwarded, X_REQUEST_ID};
use super::{IngressProxy, ProxyBody, upgrade, upload};
use crate::access_log::{PendingLine, Record, RouteFacts, UpstreamFacts};
use crate::options::{RequestView, RouteRuntime};
use crate::routes::{Backend, Route, normalize_path};
use crate::stats;
use sluice_plan::BackendProtocol;

static X_FORWARDED_PREFIX: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("x-forwarded-prefix");

/// The downstream connection a request came in on.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    pub(crate) tls: bool,
    pub(crate) values: headers::ConnValues,
}

impl ConnInfo {
    pub(crate) fn new(peer: SocketAddr, local: SocketAddr, tls: bool) -> Self {
        Self {
            peer,
            tls,
            values: headers::ConnValues::new(peer, local.port()),
        }
    }
}

/// Serves one downstream request. Never fails: every problem becomes a response.
pub(crate) async fn handle(
    proxy: &IngressProxy,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let request_id = headers::request_id(req.headers());
    proxy.counters.request();
    let line = proxy
        .access_log
        .as_ref()
        .map(|sink| start_line(sink, &proxy.config, conn, &req, &request_id));
    let http1 = req.version() < Version::HTTP_2;
    // Boxed: the routing and forwarding state is several KiB, and hyper moves each
    // request's future into place (HTTP/2 spawns it as a task): one allocation costs less
    // than copying that state a few times per request.
    let mut resp = Box::pin(route(proxy, conn, req, &request_id)).await;
    let status = resp.status();
    proxy.counters.response(status.as_u16());
    if let Some(mut line) = line {
        finish_line(&mut line, &mut resp);
        resp.body_mut().log_when_done(line);
    }
    let headers = resp.headers_mut();
    headers.insert(&X_REQUEST_ID, request_id);
    // The request body may be unread or broken: the connection cannot carry another request
    // (as nginx does after these).
    if http1 && is_client_error_closing(status) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The access log fields known when the request arrives.
fn start_line(
    sink: &Arc<dyn crate::AccessLogSink>,
    config: &crate::IngressConfig,
    conn: &ConnInfo,
    req: &Request<Incoming>,
    request_id: &HeaderValue,
) -> PendingLine {
    let text = |v: Option<&HeaderValue>| v.map(|v| String::from_utf8_lossy(v.as_bytes()).into());
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| text(req.headers().get(header::HOST)))
        .unwrap_or_default();
    PendingLine {
        sink: Arc::clone(sink),
        started: std::time::Instant::now(),
        time: std::time::SystemTime::now(),
        bytes_sent: 0,
        record: Record {
            time: String::new(),
            request_id: String::from_utf8_lossy(request_id.as_bytes()).into_owned(),
            client: client_address(config, conn, req.headers()),
            method: req.method().to_string(),
            host,
            path: req
                .uri()
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_owned(),
            protocol: protocol_name(req.version()),
            status: 0,
            bytes_sent: 0,
            duration_ms: 0.0,
            ingress: None,
            service: None,
            upstream: Vec::new(),
            upstream_status: Vec::new(),
            upstream_latency_ms: None,
            user_agent: text(req.headers().get(header::USER_AGENT)),
        },
    }
}

/// The fields the response tells: status, route, upstream tries.
fn finish_line(line: &mut PendingLine, resp: &mut Response<ProxyBody>) {
    let r = &mut line.record;
    r.status = resp.status().as_u16();
    if let Some(route) = resp.extensions_mut().remove::<RouteFacts>() {
        r.ingress = Some(route.ingress);
        r.service = route.service;
    }
    if let Some(up) = resp.extensions_mut().remove::<UpstreamFacts>() {
        r.upstream = up.tries.iter().map(|(a, _)| a.to_string()).collect();
        r.upstream_status = up.tries.iter().map(|(_, s)| *s).collect();
        r.upstream_latency_ms = up.latency.map(crate::access_log::millis);
    }
}

fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// The client's address: the connection's peer (the PROXY protocol's client when used),
/// or, when that peer is a trusted proxy, the last `X-Forwarded-For` address that is not
/// one (nginx's `real_ip_recursive on`).
pub(crate) fn client_address(
    config: &crate::IngressConfig,
    conn: &ConnInfo,
    headers: &HeaderMap,
) -> std::net::IpAddr {
    let peer = conn.peer.ip().to_canonical();
    if config.trusted_proxies.is_empty() || !config.is_trusted_proxy(peer) {
        return peer;
    }
    let listed = headers
        .get_all(&headers::X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    let mut client = peer;
    for entry in listed.iter().rev() {
        let Ok(addr) = entry.parse::<std::net::IpAddr>() else {
            break;
        };
        client = addr.to_canonical();
        if !config.is_trusted_proxy(client) {
            break;
        }
    }
    client
}

fn is_client_error_closing(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE
    )
}

/// A short `text/plain` answer made by the proxy.
pub(crate) fn error(status: StatusCode, message: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(message));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

async fn route(
    proxy: &IngressProxy,
    conn: &ConnInfo,
    req: Request<Incoming>,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    let host = match headers::check_head(&req, proxy.head_limits) {
        Ok(host) => host,
        Err(e) => return error(e.status(), format!("{e}\n")),
    };
    if proxy.hop_id.seen_in(req.headers()) {
        stats::inc(&proxy.counters.loops_detected);
        tracing::debug!(client = %conn.peer, ?host, "ingress: request came back through this proxy (x-sluice-hop); refused");
        return error(
            StatusCode::LOOP_DETECTED,
            "508 Loop Detected: this request already passed through this proxy (x-sluice-hop): an Ingress backend leads back to the Ingress listener\n",
        );
    }
    let Ok(host_str) = host.to_str() else {
        return error(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: invalid Host header\n",
        );
    };
    let path = match normalize_path(req.uri().path()) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("400 Bad Request: {e}\n")),
    };
    // The table is only borrowed for the lookup: a reload during the request is fine.
    let route = proxy.table.load().lookup(host_str, &path).cloned();
    let Some(route) = route else {
        return not_found(proxy);
    };
    let view = RequestView {
        method: req.method(),
        headers: req.headers(),
        path: &path,
        target: req.uri().path_and_query().map_or("/", |pq| pq.as_str()),
        host: host_str,
        client: client_address(&proxy.config, conn, req.headers()),
        tls: conn.tls,
        https_port: proxy.https_port.load(Ordering::Relaxed),
    };
    let mut resp = match route.options.admit(&view) {
        Err(answer) => *answer,
        Ok(admitted) => match upstream_path(&route, path, req.uri()) {
            None => error(StatusCode::BAD_REQUEST, "400 Bad Request: invalid path\n"),
            Some(path_and_query) => {
                let x = Exchange {
                    proxy,
                    conn,
                    route: &route,
                    host: &host,
                    request_id,
                };
                let mut resp = proxy_to(&x, req, path_and_query).await;
                let headers = resp.headers_mut();
                for (name, value) in admitted.response_headers {
                    headers.insert(name, value);
                }
                resp.body_mut().hold(admitted.guard);
                resp
            }
        },
    };
    if proxy.access_log.is_some() && resp.extensions().get::<RouteFacts>().is_none() {
        resp.extensions_mut().insert(RouteFacts {
            ingress: route.ingress.to_string().into(),
            service: None,
        });
    }
    resp
}

fn not_found(proxy: &IngressProxy) -> Response<ProxyBody> {
    stats::inc(&proxy.counters.not_found);
    error(
        StatusCode::NOT_FOUND,
        "404 Not Found: no Ingress rule matches this host and path (sluice default backend)\n",
    )
}

/// The path sent upstream: the route's `rewrite-target` applied, else the normalised path.
fn upstream_path(route: &Route, path: Cow<'_, str>, uri: &hyper::Uri) -> Option<PathAndQuery> {
    match &route.options.rewrite {
        Some(rewrite) => {
            PathAndQuery::try_from(rewrite.apply(route.regex.as_ref(), &path, uri.query())).ok()
        }
        None => forwarded_path(path, uri),
    }
}

/// What a request carries from routing to its backend.
struct Exchange<'a> {
    proxy: &'a IngressProxy,
    conn: &'a ConnInfo,
    route: &'a Route,
    host: &'a HeaderValue,
    request_id: &'a HeaderValue,
}

/// Sends an admitted request to the route's backend (or its canary).
async fn proxy_to(
    x: &Exchange<'_>,
    req: Request<Incoming>,
    path_and_query: PathAndQuery,
) -> Response<ProxyBody> {
    let Some(primary) = &x.route.backend else {
        return not_found(x.proxy);
    };
    let backend = match &x.route.options.canary {
        Some(canary) if canary.chosen(req.headers()) => &canary.backend,
        _ => primary,
    };
    let mut resp = proxy_to_backend(x, backend, req, path_and_query).await;
    if x.proxy.access_log.is_some() {
        resp.extensions_mut().insert(RouteFacts {
            ingress: x.route.ingress.to_string().into(),
            service: Some(backend.to_string().into()),
        });
    }
    resp
}

/// Sends an admitted request to `backend`: an upgrade tunnel, or forwarded with its body.
async fn proxy_to_backend(
    x: &Exchange<'_>,
    backend: &Backend,
    mut req: Request<Incoming>,
    path_and_query: PathAndQuery,
) -> Response<ProxyBody> {
    let (proxy, o) = (x.proxy, &x.route.options);
    let limit = o
        .max_body_bytes
        .unwrap_or(proxy.config.max_request_body_bytes);
    if let Some(refused) = body_too_large(req.headers(), limit) {
        return refused;
    }
    let how = match upstreaming(x, backend, req.headers()) {
        Ok(how) => how,
        Err(refused) => return *refused,
    };
    let upgrade = match req.version() {
        Version::HTTP_11 => headers::upgrade_request(req.headers(), &proxy.config.allowed_upgrades),
        _ => None,
    };
    let on_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    // gRPC streams messages both ways: its body is forwarded as it comes.
    let streaming = matches!(o.protocol, BackendProtocol::Grpc | BackendProtocol::Grpcs)
        || req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let (parts, body) = req.into_parts();
    let client = client_address(&proxy.config, x.conn, &parts.headers);
    let mut upstream_headers = upstream_headers(x, client, parts.headers);
    route_headers(&mut upstream_headers, o);
    let request = Upstream {
        method: parts.method,
        path_and_query,
        headers: upstream_headers,
    };
    if let (Some(upgrade), Some(on_upgrade)) = (upgrade, on_upgrade) {
        // Boxed (and not bound first): upgrades are rare, and their state would weigh on
        // every request's future.
        return Box::pin(upgrade::forward(
            proxy, backend, request, upgrade, on_upgrade, &how,
        ))
        .await;
    }
    if backend.pool.endpoints.is_empty() {
        return forward::no_ready_endpoints(backend);
    }
    // Small bodies are read before any endpoint is chosen: a slow client holds no backend.
    let read = upload::read_request_body(body, &proxy.config, limit, streaming).await;
    let (body, upload) = match read {
        Ok(read) => read,
        Err(e) => return forward::client_body_error(proxy, backend, &e),
    };
    forward::forward(proxy, backend, request, body, upload, &how).await
}

/// 413 for a body announced larger than `limit`.
fn body_too_large(headers: &HeaderMap, limit: u64) -> Option<Response<ProxyBody>> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())?;
    (announced > limit).then(|| {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("413 Payload Too Large: request bodies are limited to {limit} bytes\n"),
        )
    })
}

/// How the route wants `backend` spoken to; 502 when its upstream TLS settings are unusable.
fn upstreaming<'a>(
    x: &Exchange<'a>,
    backend: &Backend,
    headers: &HeaderMap,
) -> Result<Upstreaming<'a>, crate::options::Answer> {
    let (config, o) = (&x.proxy.config, &x.route.options);
    let tls = match o.tls.as_deref() {
        None => None,
        Some(Ok(tls)) => Some(tls),
        Some(Err(why)) => {
            return Err(Box::new(error(
                StatusCode::BAD_GATEWAY,
                format!(
                    "502 Bad Gateway: service {backend}: the upstream TLS settings (backend-protocol {}) cannot be used: {why}\n",
                    o.protocol.as_str()
                ),
            )));
        }
    };
    Ok(Upstreaming {
        protocol: o.protocol,
        connect_timeout: o.connect_timeout.unwrap_or(config.connect_timeout),
        read_timeout: o.read_timeout.unwrap_or(config.response_timeout),
        send_timeout: o.send_timeout.unwrap_or(config.response_timeout),
        affinity: o.affinity.as_ref(),
        sticky: o
            .affinity
            .as_ref()
            .and_then(|a| a.sticky(headers, &backend.pool)),
        tls,
    })
}

/// What the route changes in the headers sent upstream: `upstream-vhost` (`Host`),
/// `x-forwarded-prefix`, and `te: trailers` kept for HTTP/2 backends (gRPC needs it).
fn route_headers(headers: &mut HeaderMap, o: &RouteRuntime) {
    if let Some(vhost) = &o.upstream_vhost {
        headers.insert(header::HOST, vhost.clone());
    }
    if let Some(prefix) = &o.forwarded_prefix {
        headers.insert(&X_FORWARDED_PREFIX, prefix.clone());
    }
    if matches!(
        o.protocol,
        BackendProtocol::Grpc | BackendProtocol::Grpcs | BackendProtocol::H2c
    ) {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The path sent upstream: the normalised one (what was routed), with the query unchanged.
fn forwarded_path(path: Cow<'_, str>, uri: &hyper::Uri) -> Option<PathAndQuery> {
    match (path, uri.path_and_query()) {
        // Unchanged by normalisation: the client's own bytes.
        (Cow::Borrowed(_), Some(pq)) => Some(pq.clone()),
        (path, _) => {
            let joined = match uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.into_owned(),
            };
            PathAndQuery::try_from(joined).ok()
        }
    }
}

/// The client's headers as sent upstream: hop-by-hop ones removed, `Host`, `X-Forwarded-*`,
/// `X-Request-Id` and our hop id set.
fn upstream_headers(
    x: &Exchange<'_>,
    client: std::net::IpAddr,
    mut headers: HeaderMap,
) -> HeaderMap {
    let (proxy, conn, host, request_id) = (x.proxy, x.conn, x.host, x.request_id);
    headers::remove_hop_by_hop(&mut headers);
    headers::set_forwarded(
        &mut headers,
        &Forwarded {
            peer: conn.peer,
            client,
            values: &conn.values,
            tls: conn.tls,
            host,
            trust_client: proxy.config.is_trusted_proxy(conn.peer.ip()),
        },
    );
    headers.insert(&X_REQUEST_ID, request_id.clone());
    proxy.hop_id.append_to(&mut headers);
    headers
}
#[cfg(test)]
mod future_size {
    use super::*;

    /// The size of the future `f` returns (which cannot be named).
    fn future_size<A, B, C, F: Future>(_: impl Fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// hyper moves each request's future into place (for HTTP/2 into a task of its own), so
    /// its size is copied per request: `handle` keeps the large routing state boxed. (It was
    /// 10 KiB, and copying it showed as ~9 % of the proxy's CPU under HTTP/2 load.)
    #[test]
    fn the_future_of_a_request_stays_small() {
        let size = future_size(
            |p: &'static IngressProxy, c: &'static ConnInfo, r: Request<Incoming>| handle(p, c, r),
        );
        assert!(size <= 1536, "handle's future is {size} bytes");
    }
}

//! One request: route, pick an endpoint, forward, map failures to clear status codes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Limited;
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::http::uri::{PathAndQuery, Scheme};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use super::headers::{self, Forwarded, X_REQUEST_ID};
use super::{IngressProxy, ProxyBody, ReqBody};
use crate::routes::{Backend, normalize_path};
use crate::stats;
use crate::upstream::{InFlight, UpstreamEndpoint};

/// The downstream connection a request came in on.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) tls: bool,
}

/// Serves one downstream request. Never fails: every problem becomes a response.
pub(crate) async fn handle(
    proxy: Arc<IngressProxy>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let request_id = headers::request_id(req.headers());
    stats::inc(&proxy.counters.requests_total);
    // Access log at debug level: off by default, costs nothing then.
    let access =
        tracing::enabled!(target: "sluice_ingress::access", tracing::Level::DEBUG).then(|| {
            (
                std::time::Instant::now(),
                req.method().clone(),
                req.uri().clone(),
            )
        });
    let mut resp = route(&proxy, &conn, req, &request_id).await;
    proxy.counters.response(resp.status().as_u16());
    if let Some((started, method, uri)) = access {
        tracing::debug!(
            target: "sluice_ingress::access",
            client = %conn.peer,
            %method,
            %uri,
            status = resp.status().as_u16(),
            micros = started.elapsed().as_micros() as u64,
            request_id = ?request_id,
            "request"
        );
    }
    resp.headers_mut().insert(&X_REQUEST_ID, request_id);
    resp
}

fn error(status: StatusCode, message: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(message));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

async fn route(
    proxy: &IngressProxy,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    // HTTP/2 and absolute-form requests carry the host in the URI, HTTP/1 in `Host`.
    let host = match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    };
    let Some(host) = host else {
        return error(StatusCode::BAD_REQUEST, "400 Bad Request: no Host header\n");
    };
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
    let backend = proxy.table.load().lookup(host_str, &path).cloned();
    let Some(backend) = backend else {
        stats::inc(&proxy.counters.not_found);
        return error(
            StatusCode::NOT_FOUND,
            "404 Not Found: no Ingress rule matches this host and path (sluice default backend)\n",
        );
    };
    let path_and_query = match (&path, req.uri().path_and_query()) {
        (std::borrow::Cow::Borrowed(_), Some(pq)) => pq.clone(),
        _ => {
            let joined = match req.uri().query() {
                Some(q) => format!("{path}?{q}"),
                None => path.into_owned(),
            };
            match PathAndQuery::try_from(joined) {
                Ok(pq) => pq,
                Err(_) => return error(StatusCode::BAD_REQUEST, "400 Bad Request: invalid path\n"),
            }
        }
    };
    let limit = proxy.config.max_request_body_bytes;
    let too_large = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|len| len > limit);
    if too_large {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("413 Payload Too Large: request bodies are limited to {limit} bytes\n"),
        );
    }
    let upgrade = if req.version() == Version::HTTP_11 {
        headers::upgrade_request(req.headers())
    } else {
        None
    };
    let on_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));

    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    headers::remove_hop_by_hop(&mut headers);
    headers::set_forwarded(
        &mut headers,
        &Forwarded {
            peer: conn.peer,
            local_port: conn.local.port(),
            tls: conn.tls,
            host: &host,
            trust_client: proxy.config.trust_forwarded_headers,
        },
    );
    headers.insert(&X_REQUEST_ID, request_id.clone());

    let Some(endpoint) = backend.pool.pick(None) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("503 Service Unavailable: no ready endpoints for service {backend}\n"),
        );
    };
    if let (Some(upgrade), Some(on_upgrade)) = (upgrade, on_upgrade) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
        let request = Upstream {
            method: parts.method,
            path_and_query,
            headers,
        };
        return forward_upgrade(proxy, &backend, endpoint, request, on_upgrade).await;
    }

    let no_body = body.is_end_stream();
    // An idempotent request without body can be sent again if nothing reached the endpoint
    // (connect failed) or the connection closed before any response (stale keep-alive).
    let retry =
        (no_body && is_idempotent(&parts.method)).then(|| (parts.method.clone(), headers.clone()));
    let body = if no_body {
        ReqBody::Empty
    } else {
        ReqBody::Client(Limited::new(
            body,
            usize::try_from(limit).unwrap_or(usize::MAX),
        ))
    };
    let request = Upstream {
        method: parts.method,
        path_and_query: path_and_query.clone(),
        headers,
    };
    let first = Arc::clone(&endpoint);
    let (failed, same_endpoint_ok) = match send(proxy, &backend, endpoint, request, body).await {
        Ok(resp) | Err(SendError::Other(resp)) => return resp,
        Err(SendError::Connect(resp)) => (resp, false),
        Err(SendError::Closed(resp)) => (resp, true),
    };
    // After a connect failure only another endpoint helps; after a keep-alive connection
    // closed under us the same endpoint (on a new connection) is fine too.
    let next = backend
        .pool
        .pick(Some(first.addr))
        .or_else(|| same_endpoint_ok.then_some(first));
    let (Some((method, headers)), Some(next)) = (retry, next) else {
        return failed;
    };
    tracing::debug!(backend = %backend, retry = %next.addr, "ingress: retrying idempotent request");
    stats::inc(&proxy.counters.retries);
    let request = Upstream {
        method,
        path_and_query,
        headers,
    };
    match send(proxy, &backend, next, request, ReqBody::Empty).await {
        Ok(resp) => resp,
        Err(SendError::Connect(resp) | SendError::Closed(resp) | SendError::Other(resp)) => resp,
    }
}

/// The parts of the upstream request that a retry needs again.
struct Upstream {
    method: Method,
    path_and_query: PathAndQuery,
    headers: HeaderMap,
}

impl Upstream {
    fn into_request<B>(self, endpoint: &UpstreamEndpoint, body: B) -> Option<Request<B>> {
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(endpoint.authority.clone())
            .path_and_query(self.path_and_query)
            .build()
            .ok()?;
        let mut req = Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = self.headers;
        Some(req)
    }
}

enum SendError {
    /// Connecting failed: nothing reached the endpoint, a retry is safe.
    Connect(Response<ProxyBody>),
    /// The connection closed before any response: safe to retry idempotent requests.
    Closed(Response<ProxyBody>),
    Other(Response<ProxyBody>),
}

/// The upstream closed the connection before sending a response (typically a keep-alive
/// connection it had just timed out).
fn closed_before_response(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            return h.is_incomplete_message() || h.is_canceled();
        }
        cur = e.source();
    }
    false
}

fn is_body_limit(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

async fn send(
    proxy: &IngressProxy,
    backend: &Backend,
    endpoint: Arc<UpstreamEndpoint>,
    request: Upstream,
    body: ReqBody,
) -> Result<Response<ProxyBody>, SendError> {
    let in_flight = endpoint.start();
    let Some(req) = request.into_request(&endpoint, body) else {
        return Err(SendError::Other(error(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: invalid request target\n",
        )));
    };
    let timeout = proxy.config.response_timeout;
    match tokio::time::timeout(timeout, proxy.client.request(req)).await {
        Ok(Ok(resp)) => Ok(downstream_response(resp, in_flight, timeout)),
        Ok(Err(e)) if e.is_connect() => {
            stats::inc(&proxy.counters.upstream_connect_failures);
            tracing::warn!(backend = %backend, endpoint = %endpoint.addr, error = %e, "ingress: cannot connect to endpoint");
            Err(SendError::Connect(error(
                StatusCode::BAD_GATEWAY,
                format!("502 Bad Gateway: cannot connect to service {backend}\n"),
            )))
        }
        Ok(Err(e)) if is_body_limit(&e) => Err(SendError::Other(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "413 Payload Too Large: request bodies are limited to {} bytes\n",
                proxy.config.max_request_body_bytes
            ),
        ))),
        Ok(Err(e)) if closed_before_response(&e) => {
            tracing::debug!(backend = %backend, endpoint = %endpoint.addr, error = %e, "ingress: upstream closed the connection before responding");
            Err(SendError::Closed(error(
                StatusCode::BAD_GATEWAY,
                format!(
                    "502 Bad Gateway: service {backend} closed the connection without a response\n"
                ),
            )))
        }
        Ok(Err(e)) => {
            tracing::warn!(backend = %backend, endpoint = %endpoint.addr, error = %e, "ingress: upstream request failed");
            Err(SendError::Other(error(
                StatusCode::BAD_GATEWAY,
                format!(
                    "502 Bad Gateway: service {backend} closed the connection or sent an invalid response\n"
                ),
            )))
        }
        Err(_) => Err(SendError::Other({
            stats::inc(&proxy.counters.upstream_timeouts);
            error(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "504 Gateway Timeout: service {backend} did not answer within {}s\n",
                    timeout.as_secs_f32()
                ),
            )
        })),
    }
}

fn downstream_response(
    resp: Response<Incoming>,
    in_flight: InFlight,
    read_timeout: Duration,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers);
    Response::from_parts(
        parts,
        ProxyBody::upstream(body, Some(in_flight), read_timeout),
    )
}

/// Upgrades (WebSocket, ...): a dedicated upstream connection; after `101` both sides are
/// joined byte for byte until either closes. The tunnel does not depend on the route table,
/// so reloads never cut it.
async fn forward_upgrade(
    proxy: &IngressProxy,
    backend: &Backend,
    endpoint: Arc<UpstreamEndpoint>,
    request: Upstream,
    on_upgrade: hyper::upgrade::OnUpgrade,
) -> Response<ProxyBody> {
    let bad_gateway = || {
        error(
            StatusCode::BAD_GATEWAY,
            format!("502 Bad Gateway: cannot connect to service {backend}\n"),
        )
    };
    let in_flight = endpoint.start();
    let connect = tokio::net::TcpStream::connect(endpoint.addr);
    let stream = match tokio::time::timeout(proxy.config.connect_timeout, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            stats::inc(&proxy.counters.upstream_connect_failures);
            tracing::warn!(backend = %backend, endpoint = %endpoint.addr, error = %e, "ingress: cannot connect to endpoint for upgrade");
            return bad_gateway();
        }
        Err(_) => return bad_gateway(),
    };
    let _ = stream.set_nodelay(true);
    let handshake = hyper::client::conn::http1::handshake::<_, ReqBody>(TokioIo::new(stream));
    let (mut sender, connection) = match handshake.await {
        Ok(pair) => pair,
        Err(_) => return bad_gateway(),
    };
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "ingress: upgraded upstream connection ended");
        }
    });
    let Some(req) = request.into_request(&endpoint, ReqBody::Empty) else {
        return error(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: invalid request target\n",
        );
    };
    let timeout = proxy.config.response_timeout;
    let mut resp = match tokio::time::timeout(timeout, sender.send_request(req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            tracing::warn!(backend = %backend, error = %e, "ingress: upgrade request failed");
            return bad_gateway();
        }
        Err(_) => {
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "504 Gateway Timeout: service {backend} did not answer within {}s\n",
                    timeout.as_secs_f32()
                ),
            );
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return downstream_response(resp, in_flight, timeout);
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let backend_name = backend.to_string();
    tokio::spawn(async move {
        // Counts as an outstanding request on the endpoint while the tunnel is open.
        let _in_flight = in_flight;
        match tokio::try_join!(on_upgrade, upstream_upgrade) {
            Ok((down, up)) => {
                let mut down = TokioIo::new(down);
                let mut up = TokioIo::new(up);
                if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                    tracing::debug!(backend = %backend_name, error = %e, "ingress: upgraded connection closed with error");
                }
            }
            Err(e) => {
                tracing::debug!(backend = %backend_name, error = %e, "ingress: upgrade failed")
            }
        }
    });
    // Keep `Connection: upgrade` and `Upgrade`: the client needs them on a 101.
    let (parts, _empty) = resp.into_parts();
    Response::from_parts(parts, ProxyBody::empty())
}

//! Forwarding to an endpoint through the pooled client: endpoint choice (never one of our
//! own listeners), one retry for idempotent requests, and failures mapped to clear status
//! codes that blame the right party (client, backend, or this proxy's own limits).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::http::uri::{PathAndQuery, Scheme};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};

use super::body::{ClientBodyError, UploadProgress};
use super::headers;
use super::service::error;
use super::{IngressProxy, ProxyBody, ReqBody};
use crate::access_log::UpstreamFacts;
use crate::options::Affinity;
use crate::routes::Backend;
use crate::stats;
use crate::upstream::{
    CONNECT_TIMEOUT, Http1Error, InFlight, LimitReached, Reuse, TlsHandshakeError, TlsUpstream,
    UpstreamEndpoint,
};
use sluice_plan::BackendProtocol;

/// Linux errno values: out of file descriptors for the process / the system.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// The parts of the upstream request that a retry needs again.
#[derive(Clone)]
pub(super) struct Upstream {
    pub(super) method: Method,
    pub(super) path_and_query: PathAndQuery,
    pub(super) headers: HeaderMap,
}

/// How the route wants its backend spoken to (from its options, else the proxy's defaults).
pub(super) struct Upstreaming<'a> {
    pub(super) protocol: BackendProtocol,
    pub(super) connect_timeout: Duration,
    pub(super) read_timeout: Duration,
    pub(super) send_timeout: Duration,
    /// `affinity: cookie`: the settings, and the endpoint the request's cookie names.
    pub(super) affinity: Option<&'a Affinity>,
    pub(super) sticky: Option<SocketAddr>,
    /// HTTPS and GRPCS: the route's TLS client.
    pub(super) tls: Option<&'a TlsUpstream>,
}

impl Upstreaming<'_> {
    fn http2(&self) -> bool {
        matches!(
            self.protocol,
            BackendProtocol::H2c | BackendProtocol::Grpc | BackendProtocol::Grpcs
        )
    }
}

impl Upstream {
    /// For the pooled client, which picks the connection by the URI's authority (and sends
    /// HTTP/1 requests in origin form).
    fn into_pooled_request<B>(
        self,
        endpoint: &UpstreamEndpoint,
        body: B,
        http2: bool,
        tls: bool,
    ) -> Request<B> {
        let mut parts = hyper::http::uri::Parts::default();
        parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
        parts.authority = Some(endpoint.authority.clone());
        parts.path_and_query = Some(self.path_and_query.clone());
        // Scheme, authority and path are all set: building cannot fail.
        let uri = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from(self.path_and_query.clone()));
        let version = if http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        self.build(uri, body, version)
    }

    /// In origin form (`GET /path`), for a connection of our own.
    pub(super) fn into_origin_request<B>(self, body: B) -> Request<B> {
        let uri = Uri::from(self.path_and_query.clone());
        self.build(uri, body, Version::HTTP_11)
    }

    fn build<B>(self, uri: Uri, body: B, version: Version) -> Request<B> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        *req.headers_mut() = self.headers;
        req
    }
}

/// Why no endpoint can be dialled.
pub(super) enum NoEndpoint {
    Empty,
    /// The only usable endpoints are this proxy's own listeners (a request loop).
    OwnListener(SocketAddr),
}

/// An endpoint to send to: `prefer` (the affinity cookie's) when it is usable, else power of
/// two choices; never `exclude`, never one of our own listeners.
pub(super) fn pick_endpoint(
    proxy: &IngressProxy,
    backend: &Backend,
    exclude: Option<SocketAddr>,
    prefer: Option<SocketAddr>,
) -> Result<Arc<UpstreamEndpoint>, NoEndpoint> {
    let own = proxy.own_addresses.load();
    let preferred = prefer
        .filter(|addr| Some(*addr) != exclude && !own.contains(*addr))
        .and_then(|addr| backend.pool.endpoints.iter().find(|e| e.addr == addr))
        .filter(|e| !e.is_ejected());
    if let Some(endpoint) = preferred {
        return Ok(Arc::clone(endpoint));
    }
    let first = backend.pool.pick(exclude).ok_or(NoEndpoint::Empty)?;
    if !own.contains(first.addr) {
        return Ok(first);
    }
    backend
        .pool
        .endpoints
        .iter()
        .find(|e| Some(e.addr) != exclude && !own.contains(e.addr))
        .cloned()
        .ok_or(NoEndpoint::OwnListener(first.addr))
}

pub(super) fn no_endpoint(
    proxy: &IngressProxy,
    backend: &Backend,
    why: NoEndpoint,
) -> Response<ProxyBody> {
    match why {
        NoEndpoint::Empty => no_ready_endpoints(backend),
        NoEndpoint::OwnListener(addr) => {
            stats::inc(&proxy.counters.loops_detected);
            tracing::debug!(backend = %backend, endpoint = %addr, "ingress: endpoint is this proxy's own listener; not forwarded");
            error(
                StatusCode::LOOP_DETECTED,
                format!(
                    "508 Loop Detected: endpoint {addr} of service {backend} is this proxy's own listener; the request was not forwarded\n"
                ),
            )
        }
    }
}

pub(super) fn no_ready_endpoints(backend: &Backend) -> Response<ProxyBody> {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("503 Service Unavailable: no ready endpoints for service {backend}\n"),
    )
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Sends the request to an endpoint; an idempotent request whose body is in memory is sent
/// again once if nothing reached the endpoint (connect failed, connection cap) or the
/// connection closed before any response (a stale keep-alive connection).
pub(super) async fn forward(
    proxy: &IngressProxy,
    backend: &Backend,
    request: Upstream,
    body: ReqBody,
    upload: Option<Arc<UploadProgress>>,
    how: &Upstreaming<'_>,
) -> Response<ProxyBody> {
    let endpoint = match pick_endpoint(proxy, backend, None, how.sticky) {
        Ok(endpoint) => endpoint,
        Err(why) => return no_endpoint(proxy, backend, why),
    };
    let retry = is_idempotent(&request.method)
        .then(|| body.try_clone().map(|b| (request.clone(), b)))
        .flatten();
    let first = Arc::clone(&endpoint);
    let mut facts = proxy.access_log.is_some().then(UpstreamFacts::default);
    let sent = send(
        proxy,
        (backend, endpoint),
        request,
        body,
        upload.as_deref(),
        how,
        facts.as_mut(),
    )
    .await;
    let (failed, same_endpoint_ok) = match sent {
        Ok(resp) | Err(SendError::Other(resp)) => return with_facts(resp, facts),
        Err(SendError::Connect(resp)) => (resp, false),
        Err(SendError::Closed(resp)) => (resp, true),
    };
    // After a connect failure only another endpoint helps; after a keep-alive connection
    // closed under us the same endpoint (on a new connection) is fine too.
    let next = pick_endpoint(proxy, backend, Some(first.addr), None)
        .ok()
        .or_else(|| same_endpoint_ok.then_some(first));
    let (Some((request, body)), Some(next)) = (retry, next) else {
        return with_facts(failed, facts);
    };
    tracing::debug!(backend = %backend, retry = %next.addr, "ingress: retrying idempotent request");
    stats::inc(&proxy.counters.retries);
    let resp = match send(
        proxy,
        (backend, next),
        request,
        body,
        None,
        how,
        facts.as_mut(),
    )
    .await
    {
        Ok(resp) => resp,
        Err(SendError::Connect(resp) | SendError::Closed(resp) | SendError::Other(resp)) => resp,
    };
    with_facts(resp, facts)
}

/// Puts what happened upstream on the response, for the access log.
fn with_facts(mut resp: Response<ProxyBody>, facts: Option<UpstreamFacts>) -> Response<ProxyBody> {
    if let Some(facts) = facts {
        resp.extensions_mut().insert(facts);
    }
    resp
}

enum SendError {
    /// Nothing reached the endpoint (connect failed, connection cap): a retry is safe.
    Connect(Response<ProxyBody>),
    /// The connection closed before any response: safe to retry idempotent requests.
    Closed(Response<ProxyBody>),
    Other(Response<ProxyBody>),
}

async fn send(
    proxy: &IngressProxy,
    (backend, endpoint): (&Backend, Arc<UpstreamEndpoint>),
    request: Upstream,
    body: ReqBody,
    upload: Option<&UploadProgress>,
    how: &Upstreaming<'_>,
    facts: Option<&mut UpstreamFacts>,
) -> Result<Response<ProxyBody>, SendError> {
    let started = std::time::Instant::now();
    let in_flight = endpoint.start();
    let requested = exchange(proxy, &endpoint, request, body, how);
    let read = how.read_timeout;
    let answer = within_response_timeout(requested, read, how.send_timeout, upload).await;
    if let Some(facts) = facts {
        let status = match &answer {
            Some(Ok((resp, _))) => Some(resp.status().as_u16()),
            _ => None,
        };
        facts.tries.push((endpoint.addr, status));
        facts.latency = Some(started.elapsed());
    }
    let mut resp = match answer {
        Some(Ok((resp, reuse))) => {
            endpoint.responded();
            downstream_response(resp, in_flight, read, reuse)
        }
        Some(Err(e)) => return Err(upstream_error(proxy, backend, &endpoint, &e)),
        None => return Err(SendError::Other(gateway_timeout(proxy, backend, read))),
    };
    // HTTP/2 upstreams (gRPC) stream: their bodies are never held.
    if !how.http2()
        && let Err(e) = resp.body_mut().buffer_small(BUFFERED_RESPONSE_BYTES).await
    {
        return Err(SendError::Other(body_failed(
            proxy, backend, &endpoint, read, &*e,
        )));
    }
    if let Some(affinity) = how.affinity
        && how.sticky != Some(endpoint.addr)
        && let Some(cookie) = affinity.set_cookie(&endpoint)
    {
        resp.headers_mut().append(hyper::header::SET_COOKIE, cookie);
    }
    Ok(resp)
}

/// One request/response exchange with `endpoint`: plain HTTP/1.1 over this worker's own
/// pool, HTTP/2 and TLS through the pooled clients. The response's HTTP/1.1 connection
/// comes with it, to be given back when the body ends.
async fn exchange(
    proxy: &IngressProxy,
    endpoint: &Arc<UpstreamEndpoint>,
    request: Upstream,
    body: ReqBody,
    how: &Upstreaming<'_>,
) -> Result<(Response<Incoming>, Option<Reuse>), Failed> {
    if how.tls.is_none() && !how.http2() {
        let req = request.into_origin_request(body);
        let pool = &proxy.upstreams().http1;
        let sent = pool.send(endpoint, req, how.connect_timeout).await;
        let (resp, reuse) = sent.map_err(Failed::Http1)?;
        return Ok((resp, Some(reuse)));
    }
    let req = request.into_pooled_request(endpoint, body, how.http2(), how.tls.is_some());
    let requested = match how.tls {
        Some(tls) => tls.client().request(req),
        None => proxy.upstreams().h2c.request(req),
    };
    // The pooled clients dial from within this task: their connector reads the timeout here.
    let requested = CONNECT_TIMEOUT.scope(how.connect_timeout, requested);
    let resp = requested.await.map_err(Failed::Pooled)?;
    Ok((resp, None))
}

/// A failed exchange, from either kind of client.
#[derive(Debug)]
enum Failed {
    Http1(Http1Error),
    Pooled(hyper_util::client::legacy::Error),
}

impl Failed {
    /// Nothing reached the endpoint: no connection could be made.
    fn is_connect(&self) -> bool {
        match self {
            Failed::Http1(e) => e.is_connect(),
            Failed::Pooled(e) => e.is_connect(),
        }
    }

    fn error(&self) -> &(dyn std::error::Error + 'static) {
        match self {
            Failed::Http1(e) => e,
            Failed::Pooled(e) => e,
        }
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&error_chain(self.error()))
    }
}

/// Upstream responses announced as at most this long are read completely before their head
/// is passed on (see `ProxyBody::buffer_small`); a stall meanwhile is a 504.
const BUFFERED_RESPONSE_BYTES: u64 = 16 * 1024;

/// The answer when a small response body could not be read: 504 when the upstream stalled,
/// else 502 naming the endpoint and why.
fn body_failed(
    proxy: &IngressProxy,
    backend: &Backend,
    endpoint: &UpstreamEndpoint,
    read: Duration,
    e: &(dyn std::error::Error + Send + Sync + 'static),
) -> Response<ProxyBody> {
    if e.is::<super::body::ReadTimeout>() {
        return gateway_timeout(proxy, backend, read);
    }
    let why = error_chain(e);
    tracing::debug!(backend = %backend, endpoint = %endpoint.addr, "ingress: response body failed: {why}");
    error(
        StatusCode::BAD_GATEWAY,
        format!(
            "502 Bad Gateway: service {backend}: endpoint {} broke off the response body: {why}\n",
            endpoint.addr
        ),
    )
}

pub(super) fn gateway_timeout(
    proxy: &IngressProxy,
    backend: &Backend,
    timeout: Duration,
) -> Response<ProxyBody> {
    stats::inc(&proxy.counters.upstream_timeouts);
    error(
        StatusCode::GATEWAY_TIMEOUT,
        format!(
            "504 Gateway Timeout: service {backend} did not answer within {}s\n",
            timeout.as_secs_f32()
        ),
    )
}

/// Awaits the response headers. Without a streamed upload that is `read` from now; with
/// one, `read` from the end of the upload, or `send` from its last progress while the
/// upstream does not read it (a stalled client is left to the client body timeout).
pub(super) async fn within_response_timeout<F: Future>(
    response: F,
    read: Duration,
    send: Duration,
    upload: Option<&UploadProgress>,
) -> Option<F::Output> {
    let Some(upload) = upload else {
        return tokio::time::timeout(read, response).await.ok();
    };
    tokio::pin!(response);
    loop {
        let deadline = upload.response_deadline(read, send);
        if deadline <= tokio::time::Instant::now() {
            return None;
        }
        if let Ok(out) = tokio::time::timeout_at(deadline, &mut response).await {
            return Some(out);
        }
    }
}

/// The first error of type `E` in `err`'s chain of causes.
fn find_cause<'a, E: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

/// `error: cause: cause`, for messages that must say why.
pub(super) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cur = e.source();
    }
    text
}

/// What a failed exchange with the pooled client means, and whose fault it is.
fn upstream_error(
    proxy: &IngressProxy,
    backend: &Backend,
    endpoint: &UpstreamEndpoint,
    failed: &Failed,
) -> SendError {
    let e = failed.error();
    if let Some(body_error) = find_cause::<ClientBodyError>(e) {
        return SendError::Other(client_body_error(proxy, backend, body_error));
    }
    if let Some(limit) = find_cause::<LimitReached>(e) {
        let resp = connection_limit(proxy, backend, limit);
        return match limit {
            LimitReached::Endpoint { .. } => SendError::Connect(resp),
            LimitReached::Total { .. } => SendError::Other(resp),
        };
    }
    let errno = find_cause::<std::io::Error>(e).and_then(std::io::Error::raw_os_error);
    if matches!(errno, Some(EMFILE | ENFILE)) {
        stats::inc(&proxy.counters.upstream_connection_limit_hits);
        tracing::debug!(backend = %backend, error = %failed, "ingress: no file descriptor left for an upstream connection");
        return SendError::Other(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "503 Service Unavailable: the proxy has no file descriptor left for a connection to service {backend}\n"
            ),
        ));
    }
    if let Some(tls) = find_cause::<TlsHandshakeError>(e) {
        connect_failure(proxy, backend, endpoint);
        let why = error_chain(tls);
        tracing::warn!(backend = %backend, endpoint = %endpoint.addr, "ingress: {why}");
        return SendError::Connect(error(
            StatusCode::BAD_GATEWAY,
            format!("502 Bad Gateway: service {backend}: {why}\n"),
        ));
    }
    if failed.is_connect() {
        connect_failure(proxy, backend, endpoint);
        tracing::warn!(backend = %backend, endpoint = %endpoint.addr, error = %failed, "ingress: cannot connect to endpoint");
        return SendError::Connect(error(
            StatusCode::BAD_GATEWAY,
            format!("502 Bad Gateway: cannot connect to service {backend}\n"),
        ));
    }
    if find_cause::<hyper::Error>(e).is_some_and(|h| h.is_incomplete_message() || h.is_canceled()) {
        // Typically a keep-alive connection the upstream had just timed out.
        tracing::debug!(backend = %backend, endpoint = %endpoint.addr, error = %failed, "ingress: upstream closed the connection before responding");
        return SendError::Closed(error(
            StatusCode::BAD_GATEWAY,
            format!(
                "502 Bad Gateway: service {backend} closed the connection without a response\n"
            ),
        ));
    }
    tracing::warn!(backend = %backend, endpoint = %endpoint.addr, error = %failed, "ingress: upstream request failed");
    SendError::Other(error(
        StatusCode::BAD_GATEWAY,
        format!(
            "502 Bad Gateway: service {backend} closed the connection or sent an invalid response\n"
        ),
    ))
}

/// Counts a failed connect to `endpoint` and ejects it after too many in a row.
pub(super) fn connect_failure(
    proxy: &IngressProxy,
    backend: &Backend,
    endpoint: &UpstreamEndpoint,
) {
    stats::inc(&proxy.counters.upstream_connect_failures);
    let c = &proxy.config;
    if endpoint.connect_failed(c.eject_after_connect_failures, c.eject_duration) {
        stats::inc(&proxy.counters.endpoint_ejections);
        tracing::warn!(
            backend = %backend,
            endpoint = %endpoint.addr,
            "ingress: endpoint left out of balancing for {}s after {} connect failures in a row",
            c.eject_duration.as_secs_f32(),
            c.eject_after_connect_failures
        );
    }
}

/// 503 for a connection cap: the proxy protecting itself, not the backend failing.
pub(super) fn connection_limit(
    proxy: &IngressProxy,
    backend: &Backend,
    limit: &LimitReached,
) -> Response<ProxyBody> {
    stats::inc(&proxy.counters.upstream_connection_limit_hits);
    tracing::debug!(backend = %backend, %limit, "ingress: upstream connection limit reached");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "503 Service Unavailable: upstream connection limit reached for service {backend}: {limit}\n"
        ),
    )
}

/// The client's body was at fault: 400 / 408 / 413, logged at debug and counted, never a
/// backend failure.
pub(super) fn client_body_error(
    proxy: &IngressProxy,
    backend: &Backend,
    e: &ClientBodyError,
) -> Response<ProxyBody> {
    tracing::debug!(backend = %backend, error = %e, "ingress: request body refused");
    match e {
        ClientBodyError::Invalid { .. } => {
            stats::inc(&proxy.counters.client_body_errors);
            error(
                StatusCode::BAD_REQUEST,
                "400 Bad Request: malformed or incomplete request body\n",
            )
        }
        ClientBodyError::Timeout { timeout } => {
            stats::inc(&proxy.counters.client_body_timeouts);
            error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "408 Request Timeout: no request body data for {}s\n",
                    timeout.as_secs_f32()
                ),
            )
        }
        ClientBodyError::TooLarge { limit } => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("413 Payload Too Large: request bodies are limited to {limit} bytes\n"),
        ),
    }
}

pub(super) fn downstream_response(
    resp: Response<Incoming>,
    in_flight: InFlight,
    read_timeout: Duration,
    reuse: Option<Reuse>,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers);
    Response::from_parts(
        parts,
        ProxyBody::upstream(body, Some(in_flight), read_timeout, reuse),
    )
}

//! Upgrades (WebSocket, or another protocol in `allowed_upgrades`): a dedicated upstream
//! connection under the connection caps, the request in origin form; after `101` both sides
//! are joined byte for byte until either closes. The tunnel does not depend on the route
//! table, so reloads never cut it.

use std::sync::Arc;

use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::forward::{
    Upstream, Upstreaming, connection_limit, downstream_response, gateway_timeout, no_endpoint,
    pick_endpoint,
};
use super::service::error;
use super::{IngressProxy, ProxyBody, ReqBody};
use crate::access_log::UpstreamFacts;
use crate::routes::Backend;
use crate::upstream::{CONNECT_TIMEOUT, LimitReached, UpstreamEndpoint};
use tower_service::Service as _;

pub(super) async fn forward(
    proxy: &IngressProxy,
    backend: &Backend,
    mut request: Upstream,
    upgrade: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
    how: &Upstreaming<'_>,
) -> Response<ProxyBody> {
    let endpoint = match pick_endpoint(proxy, backend, None, how.sticky) {
        Ok(endpoint) => endpoint,
        Err(why) => return no_endpoint(proxy, backend, why),
    };
    let in_flight = endpoint.start();
    let mut sender = match connect(proxy, backend, &endpoint, how).await {
        Ok(sender) => sender,
        Err(resp) => return resp,
    };
    request
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    request.headers.insert(header::UPGRADE, upgrade);
    let req = request.into_origin_request(ReqBody::Empty);
    let timeout = how.read_timeout;
    let mut resp = match tokio::time::timeout(timeout, sender.send_request(req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            tracing::warn!(backend = %backend, error = %e, "ingress: upgrade request failed");
            return bad_gateway(backend);
        }
        Err(_) => return gateway_timeout(proxy, backend, timeout),
    };
    endpoint.responded();
    let facts = proxy.access_log.is_some().then(|| UpstreamFacts {
        tries: vec![(endpoint.addr, Some(resp.status().as_u16()))],
        latency: None,
    });
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let mut resp = downstream_response(resp, in_flight, timeout, None);
        if let Some(facts) = facts {
            resp.extensions_mut().insert(facts);
        }
        return resp;
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let backend_name = backend.to_string();
    tokio::spawn(async move {
        // Counts as an outstanding request on the endpoint while the tunnel is open; the
        // upstream connection (with its place under the caps) lives in `up`.
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
    let mut resp = Response::from_parts(parts, ProxyBody::empty());
    if let Some(facts) = facts {
        resp.extensions_mut().insert(facts);
    }
    resp
}

fn bad_gateway(backend: &Backend) -> Response<ProxyBody> {
    error(
        StatusCode::BAD_GATEWAY,
        format!("502 Bad Gateway: cannot connect to service {backend}\n"),
    )
}

/// A new HTTP/1.1 connection to `endpoint`, counted under the connection caps (over TLS for
/// an HTTPS route).
async fn connect(
    proxy: &IngressProxy,
    backend: &Backend,
    endpoint: &Arc<UpstreamEndpoint>,
    how: &Upstreaming<'_>,
) -> Result<SendRequest<ReqBody>, Response<ProxyBody>> {
    let timeout = how.connect_timeout;
    if let Some(tls) = how.tls {
        let uri = hyper::Uri::builder()
            .scheme("https")
            .authority(endpoint.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|_| bad_gateway(backend))?;
        let mut connector = tls.connector.clone();
        let dialled = CONNECT_TIMEOUT.scope(timeout, connector.call(uri)).await;
        let io = dialled.map_err(|e| dial_failed(proxy, backend, endpoint, &*e))?;
        return handshake(io, backend).await;
    }
    let dialled = proxy
        .upstreams()
        .http1
        .connector()
        .dial(endpoint, timeout)
        .await;
    let io = dialled.map_err(|e| dial_failed(proxy, backend, endpoint, &*e))?;
    handshake(io, backend).await
}

/// 503 when a connection cap refused the dial; else a connect failure of the endpoint (counted
/// for passive health) and 502.
fn dial_failed(
    proxy: &IngressProxy,
    backend: &Backend,
    endpoint: &UpstreamEndpoint,
    e: &(dyn std::error::Error + Send + Sync + 'static),
) -> Response<ProxyBody> {
    if let Some(limit) = e.downcast_ref::<LimitReached>() {
        return connection_limit(proxy, backend, limit);
    }
    super::forward::connect_failure(proxy, backend, endpoint);
    let why = super::forward::error_chain(e);
    tracing::warn!(backend = %backend, endpoint = %endpoint.addr, "ingress: cannot connect to endpoint for upgrade: {why}");
    bad_gateway(backend)
}

/// HTTP/1.1 on a new connection, serving upgrades.
async fn handshake<T>(io: T, backend: &Backend) -> Result<SendRequest<ReqBody>, Response<ProxyBody>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake::<_, ReqBody>(io)
        .await
        .map_err(|_| bad_gateway(backend))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "ingress: upgraded upstream connection ended");
        }
    });
    Ok(sender)
}

//! Each worker's HTTP/1.1 connections to plain-HTTP endpoints: hyper's client connections
//! in a pool of our own, keyed by endpoint address.
//!
//! Why not hyper-util's pooled client: on the hot path it costs a clone of the client and its
//! connector, a boxed response future, a checkout keyed by scheme and authority strings and,
//! for every response with a body, a task spawned only to wait for the connection to become
//! idle again. Here a connection goes back to the pool when the response body ends (see
//! [`Reuse`]); the pool belongs to one worker, so its lock is never contended.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1;
use hyper::{Request, Response};
use tokio::time::Instant;

use super::connector::BoxError;
use super::{CountingConnector, UpstreamEndpoint};
use crate::proxy::ReqBody;

/// A failed exchange with an endpoint over HTTP/1.1.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Http1Error {
    /// Nothing reached the endpoint: the connection could not be made (or a cap refused it).
    #[error("cannot connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: BoxError,
    },
    /// The connection failed during the exchange (or before any response came back).
    #[error("request to {addr} failed")]
    Request {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

impl Http1Error {
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, Http1Error::Connect { .. })
    }
}

/// Settings of a worker's HTTP/1.1 pool.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolSettings {
    /// Idle connections kept per endpoint; the oldest beyond are closed.
    pub(crate) max_idle_per_endpoint: usize,
    /// Idle connections older than this are closed.
    pub(crate) idle_timeout: Duration,
    /// Largest read buffer of a connection (bounds the response head).
    pub(crate) max_buf_size: usize,
}

/// One worker's idle HTTP/1.1 connections by endpoint, and how to make new ones.
pub(crate) struct Http1Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    connector: CountingConnector,
    settings: PoolSettings,
    /// Whether the task closing expired idle connections runs (it stops when none are left).
    sweeping: AtomicBool,
}

struct Idle {
    sender: http1::SendRequest<ReqBody>,
    since: Instant,
}

/// A connection checked out for one exchange. Given back through [`Reuse`] when the response
/// body ends; dropped otherwise, which closes it.
pub(crate) struct Http1Conn {
    sender: http1::SendRequest<ReqBody>,
    /// Came from the pool (so it may have been closed by the endpoint meanwhile).
    reused: bool,
}

impl std::fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Pool")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Http1Pool {
    pub(crate) fn new(connector: CountingConnector, settings: PoolSettings) -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
            connector,
            settings,
            sweeping: AtomicBool::new(false),
        }
    }

    /// How this pool dials (upgrades dial their own connections with it too).
    pub(crate) fn connector(&self) -> &CountingConnector {
        &self.connector
    }

    /// Sends `req` to `endpoint` on an idle connection, or a new one made within
    /// `connect_timeout`. A reused connection that turns out closed before the request was
    /// written is replaced by a new one (the request was never sent, so this is safe for any
    /// method). The response comes with the connection, to give back with [`Reuse`] once its
    /// body has been read.
    pub(crate) async fn send(
        self: &Arc<Self>,
        endpoint: &Arc<UpstreamEndpoint>,
        mut req: Request<ReqBody>,
        connect_timeout: Duration,
    ) -> Result<(Response<Incoming>, Reuse), Http1Error> {
        let addr = endpoint.addr;
        loop {
            let mut conn = match self.take_idle(addr).await {
                Some(conn) => conn,
                // Boxed: dialling is rare and its state (the handshake) large.
                None => Box::pin(self.dial(endpoint, connect_timeout)).await?,
            };
            match conn.sender.try_send_request(req).await {
                Ok(resp) => {
                    let mut reuse = Reuse {
                        pool: Arc::clone(self),
                        addr,
                        conn: Some(conn),
                    };
                    // A body that is already complete (HEAD, 204, 304) may never be read.
                    if resp.body().is_end_stream() {
                        reuse.body_ended();
                    }
                    return Ok((resp, reuse));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if conn.reused => req = unsent,
                    _ => {
                        let source = e.into_error();
                        return Err(Http1Error::Request { addr, source });
                    }
                },
            }
        }
    }

    /// The most recently used idle connection to `addr` that is still open, ready for a
    /// request; closed and expired ones met on the way are dropped.
    async fn take_idle(&self, addr: SocketAddr) -> Option<Http1Conn> {
        loop {
            let idle = {
                let mut pool = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                let list = pool.get_mut(&addr)?;
                let idle = list.pop();
                if list.is_empty() {
                    pool.remove(&addr);
                }
                idle?
            };
            if idle.sender.is_closed() || idle.since.elapsed() >= self.settings.idle_timeout {
                continue;
            }
            let mut sender = idle.sender;
            // Given back when its body ended, a connection is normally ready at once; if
            // its task has not got there yet, this waits for it (or finds it closed).
            if sender.ready().await.is_ok() {
                return Some(Http1Conn {
                    sender,
                    reused: true,
                });
            }
        }
    }

    async fn dial(
        &self,
        endpoint: &Arc<UpstreamEndpoint>,
        timeout: Duration,
    ) -> Result<Http1Conn, Http1Error> {
        let addr = endpoint.addr;
        let connect = |source| Http1Error::Connect { addr, source };
        let io = self
            .connector
            .dial(endpoint, timeout)
            .await
            .map_err(connect)?;
        let (sender, connection) = http1::Builder::new()
            .max_buf_size(self.settings.max_buf_size)
            .handshake(io)
            .await
            .map_err(|e| connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(endpoint = %addr, error = %e, "ingress: upstream connection ended");
            }
        });
        Ok(Http1Conn {
            sender,
            reused: false,
        })
    }

    /// Keeps an open connection for the next request to `addr`.
    fn put_back(self: &Arc<Self>, addr: SocketAddr, conn: Http1Conn) {
        if conn.sender.is_closed() || self.settings.max_idle_per_endpoint == 0 {
            return;
        }
        let idle = Idle {
            sender: conn.sender,
            since: Instant::now(),
        };
        {
            let mut pool = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let list = pool.entry(addr).or_default();
            if list.len() >= self.settings.max_idle_per_endpoint {
                list.remove(0);
            }
            list.push(idle);
        }
        self.sweep_later();
    }

    /// Starts the task that closes idle connections past the idle timeout, unless it runs.
    fn sweep_later(self: &Arc<Self>) {
        // Outside a runtime (a body dropped at shutdown) there is nothing to sweep for.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool = Arc::downgrade(self);
        let period = (self.settings.idle_timeout / 2).max(Duration::from_millis(100));
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(pool) = pool.upgrade() else { return };
                if !pool.sweep() {
                    return;
                }
            }
        });
    }

    /// Drops closed and expired idle connections; returns whether any are left (if not, the
    /// sweeping task ends, and the next connection given back starts another).
    fn sweep(&self) -> bool {
        let timeout = self.settings.idle_timeout;
        let mut pool = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        pool.retain(|_, list| {
            list.retain(|idle| !idle.sender.is_closed() && idle.since.elapsed() < timeout);
            !list.is_empty()
        });
        let any_left = !pool.is_empty();
        if !any_left {
            self.sweeping.store(false, Ordering::Release);
        }
        any_left
    }

    /// Idle connections kept now (for tests).
    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        let pool = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        pool.values().map(Vec::len).sum()
    }
}

/// Gives a connection back to its pool when the response body it carried has ended; if the
/// body is dropped before its end, the connection is dropped (and closed) with it.
pub(crate) struct Reuse {
    pool: Arc<Http1Pool>,
    addr: SocketAddr,
    conn: Option<Http1Conn>,
}

impl Reuse {
    /// The response body has been read to its end: the connection can take another request.
    pub(crate) fn body_ended(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.put_back(self.addr, conn);
        }
    }
}

impl std::fmt::Debug for Reuse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reuse").field("addr", &self.addr).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use arc_swap::ArcSwap;
    use http_body_util::BodyExt as _;
    use hyper_util::client::legacy::connect::HttpConnector;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;
    use crate::RouteTable;
    use crate::proxy::ProxyBody;
    use crate::upstream::ConnectionLimits;

    /// An HTTP/1.1 endpoint answering every request with `200 ok` (without the body for
    /// HEAD); counts its connections and closes each after one response when
    /// `close_after_response`.
    struct Endpoint {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
    }

    async fn endpoint(close_after_response: bool) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let Ok(n) = conn.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = buf.starts_with(b"HEAD ");
                            buf.drain(..end + 4);
                            let answer: &[u8] = if head {
                                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
                            } else {
                                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                            };
                            if conn.write_all(answer).await.is_err() || close_after_response {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Endpoint { addr, accepted }
    }

    fn pool(idle_timeout: Duration) -> Arc<Http1Pool> {
        let limits = Arc::new(ConnectionLimits::new(100, 100));
        let table = Arc::new(ArcSwap::from_pointee(RouteTable::default()));
        let connector =
            CountingConnector::new(HttpConnector::new(), limits, table, Duration::from_secs(1));
        Arc::new(Http1Pool::new(
            connector,
            PoolSettings {
                max_idle_per_endpoint: 4,
                idle_timeout,
                max_buf_size: 64 * 1024,
            },
        ))
    }

    fn post() -> Request<ReqBody> {
        Request::builder()
            .method("POST")
            .uri("/")
            .header("host", "cafe.example.com")
            .body(ReqBody::Empty)
            .expect("request")
    }

    /// One exchange; the body read to its end (`read_body`) or dropped unread.
    async fn exchange(pool: &Arc<Http1Pool>, ep: &Arc<UpstreamEndpoint>, read_body: bool) {
        let (resp, reuse) = pool
            .send(ep, post(), Duration::from_secs(1))
            .await
            .expect("response");
        assert_eq!(resp.status(), 200);
        let body = ProxyBody::upstream(resp.into_body(), None, Duration::from_secs(1), Some(reuse));
        if read_body {
            let bytes = body.collect().await.expect("body").to_bytes();
            assert_eq!(&bytes[..], b"ok");
        }
    }

    fn upstream(addr: SocketAddr) -> Arc<UpstreamEndpoint> {
        Arc::new(UpstreamEndpoint::new(addr).expect("endpoint"))
    }

    #[tokio::test]
    async fn a_connection_whose_body_was_read_serves_the_next_requests() {
        let server = endpoint(false).await;
        let (pool, ep) = (pool(Duration::from_secs(60)), upstream(server.addr));
        for _ in 0..5 {
            exchange(&pool, &ep, true).await;
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_connection_whose_body_was_dropped_unread_is_not_reused() {
        let server = endpoint(false).await;
        let (pool, ep) = (pool(Duration::from_secs(60)), upstream(server.addr));
        exchange(&pool, &ep, false).await;
        exchange(&pool, &ep, true).await;
        assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_endpoint_closed_while_idle_is_replaced_even_for_post() {
        let server = endpoint(true).await;
        let (pool, ep) = (pool(Duration::from_secs(60)), upstream(server.addr));
        exchange(&pool, &ep, true).await;
        // The pooled connection's task sees the endpoint's close.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let open = {
                let idle = pool.idle.lock().expect("lock");
                idle.values().flatten().any(|i| !i.sender.is_closed())
            };
            if !open || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        exchange(&pool, &ep, true).await;
        assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_response_without_a_body_gives_its_connection_back_at_once() {
        let server = endpoint(false).await;
        let (pool, ep) = (pool(Duration::from_secs(60)), upstream(server.addr));
        for _ in 0..3 {
            let head = Request::builder()
                .method("HEAD")
                .uri("/")
                .header("host", "cafe.example.com")
                .body(ReqBody::Empty)
                .expect("request");
            // The response (and its body, never polled) is dropped at once.
            let (resp, _reuse) = pool
                .send(&ep, head, Duration::from_secs(1))
                .await
                .expect("response");
            assert_eq!(resp.status(), 200);
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let server = endpoint(false).await;
        let pool = self::pool(Duration::from_millis(200));
        let ep = upstream(server.addr);
        exchange(&pool, &ep, true).await;
        assert_eq!(pool.idle_count(), 1);
        assert_eq!(
            ep.connections.load(Ordering::SeqCst),
            1,
            "counted while idle"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(pool.idle_count(), 0);
        // Closing the connection gave its place under the caps back.
        let deadline = Instant::now() + Duration::from_secs(5);
        while ep.connections.load(Ordering::SeqCst) != 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(ep.connections.load(Ordering::SeqCst), 0);
        exchange(&pool, &ep, true).await;
        assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
    }
}

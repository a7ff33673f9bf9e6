//! The upstream connector: hyper-util's HTTP connector behind the connection caps. Each
//! connection carries its [`ConnectionPermit`], so the count drops when hyper closes it,
//! whether it was in use or idle in the pool.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{ConnectionLimits, ConnectionPermit};
use crate::RouteTable;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

tokio::task_local! {
    /// The connect timeout of the route being served (`proxy-connect-timeout`). The pooled
    /// client dials from within the request's task, so the connector sees the request's value.
    pub(crate) static CONNECT_TIMEOUT: Duration;
}

/// Dials endpoints for the pooled client, refusing (with [`super::LimitReached`] as the
/// error) when a connection cap is reached.
#[derive(Clone)]
pub(crate) struct CountingConnector {
    http: HttpConnector,
    limits: Arc<ConnectionLimits>,
    /// To find the endpoint (and its connection count) of the address being dialled.
    table: Arc<ArcSwap<RouteTable>>,
    /// When the request sets no [`CONNECT_TIMEOUT`].
    default_timeout: Duration,
}

impl CountingConnector {
    pub(crate) fn new(
        http: HttpConnector,
        limits: Arc<ConnectionLimits>,
        table: Arc<ArcSwap<RouteTable>>,
        default_timeout: Duration,
    ) -> Self {
        Self {
            http,
            limits,
            table,
            default_timeout,
        }
    }

    /// A new TCP connection to `endpoint` under the caps, within `timeout`.
    pub(crate) async fn dial(
        &self,
        endpoint: &Arc<super::UpstreamEndpoint>,
        timeout: Duration,
    ) -> Result<Counted<TokioIo<TcpStream>>, BoxError> {
        let permit = self.limits.acquire(Some(endpoint))?;
        let stream = within(timeout, TcpStream::connect(endpoint.addr)).await??;
        stream.set_nodelay(true)?;
        Ok(Counted::new(TokioIo::new(stream), permit))
    }

    /// The connect timeout of the request being served, else the default.
    fn timeout(&self) -> Duration {
        CONNECT_TIMEOUT
            .try_with(|t| *t)
            .unwrap_or(self.default_timeout)
    }
}

/// `connecting`, or a "connect timed out" error after `timeout`.
async fn within<F: Future>(timeout: Duration, connecting: F) -> Result<F::Output, io::Error> {
    tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| {
            let why = format!("connect timed out after {}s", timeout.as_secs_f32());
            io::Error::new(io::ErrorKind::TimedOut, why)
        })
}

impl tower_service::Service<Uri> for CountingConnector {
    type Response = Counted<TokioIo<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let addr: Option<SocketAddr> = uri.authority().and_then(|a| a.as_str().parse().ok());
        let permit = {
            let table = self.table.load();
            self.limits
                .acquire(addr.and_then(|addr| table.endpoint(addr)))
        };
        match permit {
            Err(limit) => Box::pin(std::future::ready(Err(limit.into()))),
            Ok(permit) => {
                let timeout = self.timeout();
                let connecting = self.http.call(uri);
                Box::pin(async move {
                    let io = within(timeout, connecting).await??;
                    Ok(Counted::new(io, permit))
                })
            }
        }
    }
}

/// A connection that holds its place under the caps until dropped.
#[derive(Debug)]
pub(crate) struct Counted<T> {
    io: T,
    _permit: ConnectionPermit,
}

impl<T> Counted<T> {
    pub(crate) fn new(io: T, permit: ConnectionPermit) -> Self {
        Self {
            io,
            _permit: permit,
        }
    }

    /// The connection and its place under the caps, to wrap the connection (TLS).
    pub(crate) fn into_parts(self) -> (T, ConnectionPermit) {
        (self.io, self._permit)
    }
}

impl<T: Read + Unpin> Read for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

impl<T: Connection> Connection for Counted<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

//! Listeners and connections: plain HTTP and TLS (ALPN h2 / http/1.1), HTTP/1.1 with
//! upgrades and HTTP/2 on the same port, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::proxy::{ConnInfo, handle};
use crate::proxy_protocol::{self, Header, Prefixed};
use crate::stats::{self, ActiveConnection, Counters};
use crate::{IngressError, IngressProxy, tls};

impl IngressProxy {
    /// Listens on the configured addresses and serves until `shutdown` completes; then stops
    /// accepting, lets open connections finish their requests (up to `shutdown_grace`) and
    /// returns.
    pub async fn serve(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), IngressError> {
        let http = match self.config.http_bind {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let https = match self.config.https_bind {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        self.serve_listeners(http, https, shutdown).await
    }

    /// Like [`serve`](Self::serve) on listeners the caller bound (tests bind port 0).
    pub async fn serve_listeners(
        self: Arc<Self>,
        http: Option<TcpListener>,
        https: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), IngressError> {
        let acceptor = match &https {
            Some(_) => Some(TlsAcceptor::from(
                tls::server_config(Arc::clone(&self.table))
                    .map_err(|source| IngressError::Tls { source })?,
            )),
            None => None,
        };
        let mut bound = Vec::new();
        for (name, listener) in [("http", &http), ("https", &https)] {
            if let Some(l) = listener {
                let addr = l
                    .local_addr()
                    .map_err(|source| IngressError::LocalAddr { source })?;
                tracing::info!(%addr, "ingress: serving {name}");
                if name == "https" {
                    self.set_https_port(addr.port());
                }
                bound.push(addr);
            }
        }
        // From now on an endpoint on one of these addresses is never dialled (a loop).
        self.set_listener_addresses(&bound);
        let (stop_tx, stop_rx) = watch::channel(false);
        // Every connection task holds a sender; `recv` returns None once all are gone.
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        let slots = Arc::new(Semaphore::new(
            self.config
                .max_client_connections
                .clamp(1, Semaphore::MAX_PERMITS),
        ));
        let mut accept_log = AcceptLog::default();
        tokio::pin!(shutdown);
        loop {
            let Some(slot) = self
                .connection_slot(&slots, &mut accept_log, &mut shutdown)
                .await
            else {
                break;
            };
            let (stream, peer, tls) = tokio::select! {
                () = &mut shutdown => break,
                res = accept(http.as_ref()) => match res {
                    Ok((s, p)) => (s, p, None),
                    Err(e) => { accept_log.failed(&self.counters, &e).await; continue; }
                },
                res = accept(https.as_ref()) => match res {
                    Ok((s, p)) => (s, p, acceptor.clone()),
                    Err(e) => { accept_log.failed(&self.counters, &e).await; continue; }
                },
            };
            accept_log.succeeded();
            let proxy = Arc::clone(&self);
            let stop = stop_rx.clone();
            let alive = alive_tx.clone();
            tokio::spawn(async move {
                connection(proxy, stream, peer, tls, stop).await;
                drop((slot, alive));
            });
        }
        drop((http, https));
        let _ = stop_tx.send(true);
        drop(alive_tx);
        if tokio::time::timeout(self.config.shutdown_grace, alive_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!("ingress: connections still open after the shutdown grace period");
        }
        tracing::info!("ingress: stopped");
        Ok(())
    }

    /// A place for one more downstream connection. At `max_client_connections` this waits
    /// (not accepting: new connections wait in the kernel's listen backlog) until a
    /// connection closes; `None` on shutdown.
    async fn connection_slot<F: Future<Output = ()>>(
        &self,
        slots: &Arc<Semaphore>,
        log: &mut AcceptLog,
        shutdown: &mut std::pin::Pin<&mut F>,
    ) -> Option<OwnedSemaphorePermit> {
        if let Ok(slot) = Arc::clone(slots).try_acquire_owned() {
            return Some(slot);
        }
        stats::inc(&self.counters.accept_pauses);
        log.paused(self.config.max_client_connections);
        tokio::select! {
            () = shutdown.as_mut() => None,
            slot = Arc::clone(slots).acquire_owned() => slot.ok(),
        }
    }
}

/// Backoff and quiet logging for the accept loop. A failed accept (EMFILE: no descriptor
/// left) leaves the connection in the backlog, so retrying at once would spin: the loop
/// sleeps, doubling the pause up to [`MAX_ACCEPT_BACKOFF`], and warns once per episode (at
/// most every [`WARN_INTERVAL`]), counting the failures.
#[derive(Debug, Default)]
struct AcceptLog {
    /// Consecutive failed accepts.
    failures: u64,
    last_failure_warning: Option<Instant>,
    last_pause_warning: Option<Instant>,
}

const FIRST_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_millis(500);
const WARN_INTERVAL: Duration = Duration::from_secs(60);

fn due(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    if last.is_some_and(|at| now.duration_since(at) < WARN_INTERVAL) {
        return false;
    }
    *last = Some(now);
    true
}

impl AcceptLog {
    async fn failed(&mut self, counters: &Counters, e: &std::io::Error) {
        stats::inc(&counters.accept_errors);
        self.failures += 1;
        if self.failures == 1 && due(&mut self.last_failure_warning) {
            tracing::warn!(error = %e, "ingress: accept failed; backing off until connections can be accepted again");
        } else {
            tracing::debug!(error = %e, failures = self.failures, "ingress: accept failed");
        }
        tokio::time::sleep(accept_backoff(self.failures)).await;
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                failed = self.failures,
                "ingress: accepting connections again"
            );
            self.failures = 0;
        }
    }

    fn paused(&mut self, max: usize) {
        if due(&mut self.last_pause_warning) {
            tracing::warn!(
                "ingress: {max} client connections open (max_client_connections); new connections wait until one closes"
            );
        }
    }
}

/// The pause after the `failures`-th consecutive failed accept.
fn accept_backoff(failures: u64) -> Duration {
    let doublings = u32::try_from(failures.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(16);
    (FIRST_ACCEPT_BACKOFF * 2u32.pow(doublings)).min(MAX_ACCEPT_BACKOFF)
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, IngressError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| IngressError::Bind { addr, source })
}

async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn connection(
    proxy: Arc<IngressProxy>,
    mut stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    stop: watch::Receiver<bool>,
) {
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(error = %e, "ingress: connection gone before serving");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let counted = Arc::clone(&proxy);
    let _active = ActiveConnection::new(&counted.counters);
    let (client, prefix) = if proxy.config.proxy_protocol {
        match proxy_header(&proxy, &mut stream, peer).await {
            Some(found) => found,
            None => return,
        }
    } else {
        (peer, Bytes::new())
    };
    let io = Prefixed::new(prefix, stream);
    let info = Arc::new(ConnInfo {
        peer: client,
        local,
        tls: tls.is_some(),
    });
    match tls {
        None => serve_io(proxy, TokioIo::new(io), info, stop).await,
        Some(acceptor) => {
            let timeout = proxy.config.tls_handshake_timeout;
            match tokio::time::timeout(timeout, acceptor.accept(io)).await {
                Ok(Ok(s)) => serve_io(proxy, TokioIo::new(s), info, stop).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "ingress: TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "ingress: TLS handshake timed out"),
            }
        }
    }
}

/// The client named by the connection's PROXY protocol header (the peer itself for the
/// balancer's own connections) and the bytes read past the header; `None` (counted, logged
/// at debug) when the peer is not a trusted proxy or sent no valid header in time.
async fn proxy_header(
    proxy: &IngressProxy,
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Option<(SocketAddr, Bytes)> {
    let config = &proxy.config;
    if !config.trusted_proxies.is_empty() && !config.is_trusted_proxy(peer.ip()) {
        stats::inc(&proxy.counters.proxy_protocol_errors);
        tracing::debug!(%peer, "ingress: connection from an address that is not a trusted proxy refused (PROXY protocol)");
        return None;
    }
    let timeout = config.tls_handshake_timeout;
    let why = match tokio::time::timeout(timeout, proxy_protocol::read_header(stream)).await {
        Ok(Ok((Header::Client(client), rest))) => return Some((client, rest)),
        Ok(Ok((Header::Local, rest))) => return Some((peer, rest)),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no PROXY protocol header in time".to_owned(),
    };
    stats::inc(&proxy.counters.proxy_protocol_errors);
    tracing::debug!(%peer, "ingress: connection closed: {why}");
    None
}

async fn serve_io<I>(
    proxy: Arc<IngressProxy>,
    io: I,
    info: Arc<ConnInfo>,
    mut stop: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service_proxy = Arc::clone(&proxy);
    let service = service_fn(move |req| {
        let proxy = Arc::clone(&service_proxy);
        let info = Arc::clone(&info);
        async move { Ok::<_, Infallible>(handle(proxy, info, req).await) }
    });
    let conn = proxy.server.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "ingress: connection ended with error");
            }
        }
        _ = async { stop.wait_for(|stopped| *stopped).await.map(|_| ()) } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_up_to_the_cap() {
        assert_eq!(accept_backoff(1), Duration::from_millis(5));
        assert_eq!(accept_backoff(2), Duration::from_millis(10));
        assert_eq!(accept_backoff(5), Duration::from_millis(80));
        assert_eq!(accept_backoff(8), MAX_ACCEPT_BACKOFF);
        assert_eq!(accept_backoff(u64::MAX), MAX_ACCEPT_BACKOFF);
    }
}

//! Listeners and connections: plain HTTP and TLS (ALPN h2 / http/1.1), HTTP/1.1 with
//! upgrades and HTTP/2 on the same port, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::proxy::{ConnInfo, handle};
use crate::stats::ActiveConnection;
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
        for (name, listener) in [("http", &http), ("https", &https)] {
            if let Some(l) = listener {
                let addr = l
                    .local_addr()
                    .map_err(|source| IngressError::LocalAddr { source })?;
                tracing::info!(%addr, "ingress: serving {name}");
            }
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        // Every connection task holds a sender; `recv` returns None once all are gone.
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        tokio::pin!(shutdown);
        loop {
            let (stream, peer, tls) = tokio::select! {
                () = &mut shutdown => break,
                res = accept(http.as_ref()) => match res {
                    Ok((s, p)) => (s, p, None),
                    Err(e) => { accept_error(e).await; continue; }
                },
                res = accept(https.as_ref()) => match res {
                    Ok((s, p)) => (s, p, acceptor.clone()),
                    Err(e) => { accept_error(e).await; continue; }
                },
            };
            let proxy = Arc::clone(&self);
            let stop = stop_rx.clone();
            let alive = alive_tx.clone();
            tokio::spawn(async move {
                connection(proxy, stream, peer, tls, stop).await;
                drop(alive);
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

async fn accept_error(e: std::io::Error) {
    // Typically EMFILE: back off instead of spinning.
    tracing::warn!(error = %e, "ingress: accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn connection(
    proxy: Arc<IngressProxy>,
    stream: TcpStream,
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
    let info = Arc::new(ConnInfo {
        peer,
        local,
        tls: tls.is_some(),
    });
    match tls {
        None => serve_io(proxy, TokioIo::new(stream), info, stop).await,
        Some(acceptor) => {
            let timeout = proxy.config.tls_handshake_timeout;
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => serve_io(proxy, TokioIo::new(s), info, stop).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "ingress: TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "ingress: TLS handshake timed out"),
            }
        }
    }
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

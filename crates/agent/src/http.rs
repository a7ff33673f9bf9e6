//! A tiny HTTP/1 server for the health and metrics endpoints (not the hot path).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::handover::{Listeners, Succession};

pub type Handler = Arc<dyn Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync>;

/// Serves `handler` on `addr` (the listener taken over from the previous agent, else bound
/// now) until `shutdown` turns true. While a successor has the listener (`succession` is not
/// `Alone`) this agent does not accept on it: the successor answers.
pub async fn serve(
    addr: SocketAddr,
    listeners: Arc<Listeners>,
    handler: Handler,
    shutdown: watch::Receiver<bool>,
    mut succession: watch::Receiver<Succession>,
) -> anyhow::Result<()> {
    let listener = listeners
        .tcp(addr, || sluice_ingress::bind_listener(addr))
        .and_then(|l| {
            l.set_nonblocking(true)?;
            TcpListener::from_std(l)
        })
        .with_context(|| format!("binding {addr}"))?;
    let mut stopping = shutdown.clone();
    loop {
        // Handed over: wait until the successor is gone (then serve again) or we stop.
        let alone = tokio::select! {
            alone = is(&mut succession, Succession::Alone) => alone,
            _ = stopping.wait_for(|s| *s) => return Ok(()),
        };
        if !alone {
            // Nobody can hand the listener over any more: serve until shutdown.
            serve_listener(listener, handler, shutdown).await;
            return Ok(());
        }
        let handed_over = async {
            if !is_not(&mut succession, Succession::Alone).await {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = accept_loop(&listener, &handler, shutdown.clone()) => return Ok(()),
            () = handed_over => {
                tracing::debug!(%addr, "a new agent answers on this listener now");
            }
        }
    }
}

/// Waits until `rx` holds `value`; false if its sender is gone first.
async fn is(rx: &mut watch::Receiver<Succession>, value: Succession) -> bool {
    rx.wait_for(|s| *s == value).await.is_ok()
}

/// Waits until `rx` holds another value than `value`; false if its sender is gone first.
async fn is_not(rx: &mut watch::Receiver<Succession>, value: Succession) -> bool {
    rx.wait_for(|s| *s != value).await.is_ok()
}

pub async fn serve_listener(
    listener: TcpListener,
    handler: Handler,
    shutdown: watch::Receiver<bool>,
) {
    accept_loop(&listener, &handler, shutdown).await;
}

/// Accepts until `shutdown`.
async fn accept_loop(
    listener: &TcpListener,
    handler: &Handler,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let handler = Arc::clone(handler);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = handler(&req);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

pub fn response(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("x-content-type-options", "nosniff")
        .body(Full::new(body.into()))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

//! Listeners and connections: plain HTTP and TLS (ALPN h2 / http/1.1), HTTP/1.1 with
//! upgrades and HTTP/2 on the same port, listeners bound here or taken over
//! ([`ListenerSource`]), draining on shutdown (`drain`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::time::Instant;

use crate::drain::{Activity, DRAIN_POLL, DrainFlag, Hold, Tracked, Tracker};
use crate::gather::GatheredWrites;
use crate::proxy::{ConnInfo, handle};
use crate::proxy_protocol::{self, Header, Prefixed};
use crate::stats::{self, ActiveConnection, Counters};
use crate::tls::TlsServer;
use crate::workers::{self, Worker};
use crate::{IngressError, IngressProxy};

/// Where the proxy's listening sockets come from: bound here ([`BindNew`]), or taken over
/// from the process that served before (the agent's restart handover).
pub trait ListenerSource {
    /// A listening TCP socket on `addr`.
    fn listener(&mut self, addr: SocketAddr) -> std::io::Result<std::net::TcpListener>;
}

/// Binds every listener anew with [`bind_listener`].
#[derive(Debug, Clone, Copy, Default)]
pub struct BindNew;

impl ListenerSource for BindNew {
    fn listener(&mut self, addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
        bind_listener(addr)
    }
}

/// Connections the kernel queues for a listener nobody accepts on yet: a restart's new
/// process starts accepting only after its first sync.
pub const LISTEN_BACKLOG: u32 = 1024;

/// A TCP listener on `addr` (`SO_REUSEADDR`, backlog [`LISTEN_BACKLOG`]). Must run inside a
/// tokio runtime.
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)?.into_std()
}

/// The proxy's listeners, bound (connections queue) but not accepting until
/// [`IngressProxy::serve_listeners`].
#[derive(Debug, Default)]
pub struct IngressListeners {
    pub http: Option<TcpListener>,
    pub https: Option<TcpListener>,
}

impl IngressProxy {
    /// Listens on the configured addresses (accepting once the first route table is loaded)
    /// and serves until `shutdown` completes; then drains (see
    /// [`serve_listeners`](Self::serve_listeners)) and returns.
    pub async fn serve(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), IngressError> {
        let listeners = self.listen(&mut BindNew)?;
        self.serve_listeners(listeners.http, listeners.https, shutdown)
            .await
    }

    /// The listeners of the configured addresses from `source`, and records their addresses
    /// (an endpoint on one of them is never dialled). Must run inside a tokio runtime.
    pub fn listen(
        &self,
        source: &mut dyn ListenerSource,
    ) -> Result<IngressListeners, IngressError> {
        let mut open = |addr: Option<SocketAddr>| -> Result<Option<TcpListener>, IngressError> {
            let Some(addr) = addr else { return Ok(None) };
            let listener = source
                .listener(addr)
                .and_then(|l| {
                    l.set_nonblocking(true)?;
                    TcpListener::from_std(l)
                })
                .map_err(|source| IngressError::Bind { addr, source })?;
            Ok(Some(listener))
        };
        let listeners = IngressListeners {
            http: open(self.config.http_bind)?,
            https: open(self.config.https_bind)?,
        };
        let bound = local_addresses(&listeners.http, &listeners.https)?;
        self.set_listener_addresses(&bound);
        Ok(listeners)
    }

    /// Serves on listeners the caller bound (tests bind port 0) until `shutdown` completes;
    /// then drains: stops accepting (closing its listeners: a process that took them over
    /// goes on accepting on the same sockets), lets every connection finish as described in
    /// `drain` (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY, upgraded connections kept) for
    /// up to `shutdown_grace`, and returns.
    ///
    /// The connections are served by `config.workers` worker threads (see `workers`), each
    /// accepting on its own copy of the listeners; this future only waits for `shutdown`
    /// and runs the drain.
    pub async fn serve_listeners(
        self: Arc<Self>,
        http: Option<TcpListener>,
        https: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), IngressError> {
        let acceptor = match &https {
            Some(_) => Some(
                TlsServer::new(Arc::clone(&self.table), self.config.tls_session_cache)
                    .map_err(|source| IngressError::Tls { source })?,
            ),
            None => None,
        };
        let bound = local_addresses(&http, &https)?;
        let https_port = https
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port());
        let copies = listener_copies(http, https, self.workers())?;
        for addr in &bound {
            tracing::info!(%addr, workers = copies.len(), "ingress: accepting connections");
        }
        if let Some(port) = https_port {
            self.set_https_port(port);
        }
        // From now on an endpoint on one of these addresses is never dialled (a loop).
        self.set_listener_addresses(&bound);
        let serving = Arc::new(Serving::new(
            acceptor,
            self.config.max_client_connections,
            copies.len(),
        ));
        let workers = self.start_workers(&serving, copies).await?;
        tokio::pin!(shutdown);
        tokio::select! {
            () = &mut shutdown => {}
            // Every worker ended on its own (it cannot, short of a panic): drain what is left.
            () = serving.accepting.all_closed() => {}
        }
        serving.stop.send_replace(true);
        // Every worker closed its copies of the listeners.
        serving.accepting.all_closed().await;
        self.drain(&serving.drain).await;
        finish(&serving, workers).await;
        Ok(())
    }

    /// Starts one worker per listener copy; once each has registered its listeners, returns
    /// them. If one cannot start, the others are stopped and the error returned.
    async fn start_workers(
        self: &Arc<Self>,
        serving: &Arc<Serving>,
        copies: Vec<ListenerCopy>,
    ) -> Result<Vec<Worker>, IngressError> {
        let mut workers = Vec::with_capacity(copies.len());
        let mut failed = None;
        for (index, copy) in copies.into_iter().enumerate() {
            let proxy = Arc::clone(self);
            let serving = Arc::clone(serving);
            let run = move |ready| proxy.worker(index, serving, copy, ready);
            match workers::spawn(index, run) {
                Ok(worker) => workers.push(worker),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        for worker in &mut workers {
            let started = match (&mut worker.ready).await {
                Ok(started) => started,
                Err(_) => Err(IngressError::WorkerGone {
                    index: worker.index,
                }),
            };
            if let Err(e) = started {
                failed.get_or_insert(e);
            }
        }
        match failed {
            None => Ok(workers),
            Some(e) => {
                serving.stop.send_replace(true);
                finish(serving, workers).await;
                Err(e)
            }
        }
    }

    /// One worker (on its own thread and runtime): registers its listener copies, accepts on
    /// them until told to stop, closes them, and keeps its connections running until the
    /// drain is over.
    async fn worker(
        self: Arc<Self>,
        index: usize,
        serving: Arc<Serving>,
        copy: ListenerCopy,
        ready: oneshot::Sender<Result<(), IngressError>>,
    ) {
        let accepting = serving.accepting.hold();
        // Before reporting ready: a stop sent once every worker is ready must reach this one.
        let mut stop = serving.stop.subscribe();
        let registered = register(copy.http).and_then(|http| Ok((http, register(copy.https)?)));
        let (http, https) = match registered {
            Ok(listeners) => {
                let _ = ready.send(Ok(()));
                listeners
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let stopped = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        self.accept_loop(index, &serving, (http, https), stopped)
            .await;
        drop(accepting);
        let mut finished = serving.finished.subscribe();
        let _ = finished.wait_for(|finished| *finished).await;
    }

    /// Accepts on one worker's listener copies until `shutdown` completes, spawning each
    /// connection on this worker's runtime; then closes the copies.
    async fn accept_loop(
        self: &Arc<Self>,
        index: usize,
        serving: &Arc<Serving>,
        (http, https): (Option<TcpListener>, Option<TcpListener>),
        shutdown: impl Future<Output = ()>,
    ) {
        let mut accept_log = AcceptLog::new(&serving.accept_warnings);
        tokio::pin!(shutdown);
        loop {
            let Some(slot) = self
                .connection_slot(&serving.slots, &mut accept_log, &mut shutdown)
                .await
            else {
                break;
            };
            if serving.load.ahead(index) {
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(workers::LET_OTHERS_ACCEPT) => {}
                }
            }
            let (stream, peer, tls) = tokio::select! {
                () = &mut shutdown => break,
                res = accept(http.as_ref()) => match res {
                    Ok((s, p)) => (s, p, None),
                    Err(e) => { accept_log.failed(&self.counters, &e).await; continue; }
                },
                res = accept(https.as_ref()) => match res {
                    Ok((s, p)) => (s, p, serving.acceptor.clone()),
                    Err(e) => { accept_log.failed(&self.counters, &e).await; continue; }
                },
            };
            accept_log.succeeded();
            let open = serving.load.open(index);
            let proxy = Arc::clone(self);
            let hold = serving.drain.connections.hold();
            let drain = Arc::clone(&serving.drain);
            tokio::spawn(async move {
                connection(proxy, stream, hold, peer, tls, drain).await;
                drop((slot, open));
            });
        }
        drop((http, https));
    }

    /// Tells every connection to finish and waits for them (and upgraded tunnels) up to
    /// `shutdown_grace`.
    async fn drain(&self, drain: &Draining) {
        let started = Instant::now();
        let timeout = self.config.shutdown_grace;
        tracing::info!(
            open = drain.connections.open(),
            ?timeout,
            "ingress: stopped accepting; draining connections (HTTP/1.1 closed after their \
             current response, HTTP/2 sent GOAWAY, upgraded connections kept)"
        );
        drain.flag.start();
        // Kept for connections that subscribe later (`send` drops it when none listens yet).
        drain.stop.send_replace(true);
        match tokio::time::timeout(timeout, drain.connections.all_closed()).await {
            Ok(()) => tracing::info!(
                took_ms = started.elapsed().as_millis() as u64,
                "ingress: drained, every connection closed"
            ),
            Err(_) => tracing::warn!(
                open = drain.connections.open(),
                "ingress: connections still open after the drain timeout ({timeout:?}); \
                 they end with this process"
            ),
        }
    }

    /// A place for one more downstream connection, once the routes are loaded. At
    /// `max_client_connections` this waits
    /// (not accepting: new connections wait in the kernel's listen backlog) until a
    /// connection closes; `None` on shutdown.
    async fn connection_slot<F: Future<Output = ()>>(
        &self,
        slots: &Arc<Semaphore>,
        log: &mut AcceptLog<'_>,
        shutdown: &mut std::pin::Pin<&mut F>,
    ) -> Option<OwnedSemaphorePermit> {
        // Nothing is accepted before the first route table: a restarted agent must not
        // answer 404 for routes it has not loaded yet (clients wait in the backlog instead).
        let mut loaded = self.routes_loaded.subscribe();
        tokio::select! {
            () = shutdown.as_mut() => return None,
            res = loaded.wait_for(|loaded| *loaded) => res.ok()?,
        };
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

/// Backoff and quiet logging for one worker's accept loop. A failed accept (EMFILE: no
/// descriptor left) leaves the connection in the backlog, so retrying at once would spin: the
/// loop sleeps, doubling the pause up to [`MAX_ACCEPT_BACKOFF`], and warns once per episode
/// (at most every [`WARN_INTERVAL`] over all workers), counting the failures.
#[derive(Debug)]
struct AcceptLog<'a> {
    /// Consecutive failed accepts.
    failures: u64,
    warned: &'a AcceptWarnings,
}

/// When the workers last warned (locked only on a failed accept or a pause).
#[derive(Debug, Default)]
struct AcceptWarnings {
    failure: Mutex<Option<Instant>>,
    pause: Mutex<Option<Instant>>,
}

const FIRST_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_millis(500);
const WARN_INTERVAL: Duration = Duration::from_secs(60);

fn due(last: &Mutex<Option<Instant>>) -> bool {
    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    if last.is_some_and(|at| now.duration_since(at) < WARN_INTERVAL) {
        return false;
    }
    *last = Some(now);
    true
}

impl<'a> AcceptLog<'a> {
    fn new(warned: &'a AcceptWarnings) -> Self {
        Self {
            failures: 0,
            warned,
        }
    }

    async fn failed(&mut self, counters: &Counters, e: &std::io::Error) {
        stats::inc(&counters.accept_errors);
        self.failures += 1;
        if self.failures == 1 && due(&self.warned.failure) {
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
        if due(&self.warned.pause) {
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

fn local_addresses(
    http: &Option<TcpListener>,
    https: &Option<TcpListener>,
) -> Result<Vec<SocketAddr>, IngressError> {
    [http, https]
        .into_iter()
        .flatten()
        .map(|l| {
            l.local_addr()
                .map_err(|source| IngressError::LocalAddr { source })
        })
        .collect()
}

async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// One worker's copies of the listeners (the same sockets, other descriptors).
struct ListenerCopy {
    http: Option<std::net::TcpListener>,
    https: Option<std::net::TcpListener>,
}

/// `workers` copies of the listeners (at least one): the originals and `try_clone`s.
fn listener_copies(
    http: Option<TcpListener>,
    https: Option<TcpListener>,
    workers: usize,
) -> Result<Vec<ListenerCopy>, IngressError> {
    let http = http.map(TcpListener::into_std).transpose();
    let https = https.map(TcpListener::into_std).transpose();
    let (http, https) = http
        .and_then(|http| Ok((http, https?)))
        .map_err(|source| IngressError::LocalAddr { source })?;
    let copy = |l: &Option<std::net::TcpListener>| -> Result<_, IngressError> {
        l.as_ref()
            .map(|l| {
                l.try_clone()
                    .map_err(|source| IngressError::Worker { index: 0, source })
            })
            .transpose()
    };
    let mut copies = Vec::with_capacity(workers.max(1));
    for _ in 1..workers.max(1) {
        copies.push(ListenerCopy {
            http: copy(&http)?,
            https: copy(&https)?,
        });
    }
    copies.insert(0, ListenerCopy { http, https });
    Ok(copies)
}

/// A listener copy on the current (worker's) runtime.
fn register(listener: Option<std::net::TcpListener>) -> Result<Option<TcpListener>, IngressError> {
    listener
        .map(|l| {
            let addr = l
                .local_addr()
                .map_err(|source| IngressError::LocalAddr { source })?;
            l.set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(l))
                .map_err(|source| IngressError::Bind { addr, source })
        })
        .transpose()
}

/// Shared by the workers while serving.
struct Serving {
    acceptor: Option<TlsServer>,
    /// `max_client_connections` over all workers.
    slots: Arc<Semaphore>,
    drain: Arc<Draining>,
    accept_warnings: AcceptWarnings,
    /// Open connections per worker, to share new ones out evenly.
    load: Arc<workers::Load>,
    /// One hold per worker still accepting (its listener copies open).
    accepting: Tracker,
    /// Tells the workers to stop accepting.
    stop: watch::Sender<bool>,
    /// The drain is over: the workers' runtimes (and what is left on them) may end.
    finished: watch::Sender<bool>,
}

impl Serving {
    fn new(acceptor: Option<TlsServer>, max_client_connections: usize, workers: usize) -> Self {
        Self {
            load: Arc::new(workers::Load::new(workers)),
            acceptor,
            slots: Arc::new(Semaphore::new(
                max_client_connections.clamp(1, Semaphore::MAX_PERMITS),
            )),
            drain: Arc::new(Draining::default()),
            accept_warnings: AcceptWarnings::default(),
            accepting: Tracker::default(),
            stop: watch::channel(false).0,
            finished: watch::channel(false).0,
        }
    }
}

/// Lets the workers end and waits until every worker thread has.
async fn finish(serving: &Serving, workers: Vec<Worker>) {
    serving.finished.send_replace(true);
    for worker in workers {
        let _ = worker.done.await;
    }
}

/// Shared by the accept loop and every connection it started.
#[derive(Debug)]
struct Draining {
    /// Open connections and upgraded tunnels.
    connections: Tracker,
    /// Read on every response (no lock on the request path).
    flag: DrainFlag,
    /// Wakes the connections when draining starts.
    stop: watch::Sender<bool>,
}

impl Default for Draining {
    fn default() -> Self {
        Self {
            connections: Tracker::default(),
            flag: DrainFlag::default(),
            stop: watch::channel(false).0,
        }
    }
}

async fn connection(
    proxy: Arc<IngressProxy>,
    mut stream: TcpStream,
    hold: Hold,
    peer: SocketAddr,
    tls: Option<TlsServer>,
    drain: Arc<Draining>,
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
    let io = Prefixed::new(prefix, Tracked::new(stream, hold));
    let info = ConnInfo::new(client, local, tls.is_some());
    match tls {
        None => serve_io(proxy, TokioIo::new(io), info, drain).await,
        Some(acceptor) => {
            let timeout = proxy.config.tls_handshake_timeout;
            match tokio::time::timeout(timeout, acceptor.accept(io)).await {
                Ok(Ok(s)) => {
                    serve_io(proxy, TokioIo::new(GatheredWrites::new(s)), info, drain).await;
                }
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

/// What the requests of one connection share: each request clones this connection's own
/// reference, not the proxy's or the drain's (which every worker's requests would contend
/// on, bouncing their reference counts between cores).
struct Shared {
    proxy: Arc<IngressProxy>,
    info: ConnInfo,
    drain: Arc<Draining>,
    activity: Arc<Activity>,
}

async fn serve_io<I>(proxy: Arc<IngressProxy>, io: I, info: ConnInfo, drain: Arc<Draining>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let shared = Arc::new(Shared {
        proxy: Arc::clone(&proxy),
        info,
        drain: Arc::clone(&drain),
        activity: Arc::clone(&activity),
    });
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = Arc::clone(&shared);
        let in_flight = shared.activity.request(req.version());
        async move {
            let http1 = req.version() < Version::HTTP_2;
            let mut resp = handle(&shared.proxy, &shared.info, req).await;
            // Draining: this is the connection's last response; the client's next request
            // goes to a new connection (accepted by the process that took over).
            if http1
                && shared.drain.flag.is_draining()
                && resp.status() != StatusCode::SWITCHING_PROTOCOLS
            {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            drop(in_flight);
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = proxy.server.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut stop = drain.stop.subscribe();
    tokio::select! {
        res = conn.as_mut() => return log_end(res),
        _ = stop.wait_for(|stopped| *stopped) => {}
    }
    // Draining: HTTP/1.1 closes by itself after a `Connection: close` response; shut down
    // (GOAWAY, or close an idle HTTP/1.1 connection) when that is safe.
    while !activity.may_close() {
        tokio::select! {
            res = conn.as_mut() => return log_end(res),
            () = tokio::time::sleep(DRAIN_POLL) => {}
        }
    }
    conn.as_mut().graceful_shutdown();
    log_end(conn.await);
}

fn log_end<E: std::fmt::Display>(res: Result<(), E>) {
    if let Err(e) = res {
        tracing::debug!(error = %e, "ingress: connection ended with error");
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

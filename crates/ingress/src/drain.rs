//! Draining: what the proxy does between "stop accepting" and "exit" (a restart or a
//! shutdown), so that no request in flight fails.
//!
//! * HTTP/1.1: a response produced while draining carries `Connection: close`, so the client
//!   sends its next request on a new connection (which the next agent accepts). A connection
//!   with no request in flight is closed once it has been idle for [`DRAIN_IDLE_CLOSE`]: a
//!   busy keep-alive connection is never closed between two requests (the client could
//!   already be sending the next one), only after a response that said so. This is
//!   HAProxy's `idle-close-on-response`.
//! * HTTP/2: GOAWAY as soon as the connection is known to be HTTP/2 (its first request);
//!   streams in flight finish.
//! * Upgraded connections (WebSocket) stay open until they close or the drain timeout ends.
//!
//! Every accepted connection holds a [`Hold`] inside its transport ([`Tracked`]), so that an
//! upgraded tunnel, which outlives hyper's connection future, is still counted.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::Version;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// While draining, a connection without a request in flight for this long is closed.
pub(crate) const DRAIN_IDLE_CLOSE: Duration = Duration::from_secs(1);
/// How often a draining connection checks whether it may close.
pub(crate) const DRAIN_POLL: Duration = Duration::from_millis(50);

/// Counts open connections (including upgraded tunnels) and wakes a waiter when none is left.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tracker(Arc<TrackerInner>);

#[derive(Debug, Default)]
struct TrackerInner {
    open: AtomicUsize,
    none_left: Notify,
}

impl Tracker {
    pub(crate) fn hold(&self) -> Hold {
        self.0.open.fetch_add(1, Ordering::AcqRel);
        Hold(Arc::clone(&self.0))
    }

    pub(crate) fn open(&self) -> usize {
        self.0.open.load(Ordering::Acquire)
    }

    /// Returns once no [`Hold`] is left.
    pub(crate) async fn all_closed(&self) {
        loop {
            let notified = self.0.none_left.notified();
            tokio::pin!(notified);
            // Registered before the check: a release between the check and the await is seen.
            notified.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One open connection; released on drop.
#[derive(Debug)]
pub(crate) struct Hold(Arc<TrackerInner>);

impl Drop for Hold {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_left.notify_waiters();
        }
    }
}

/// A connection's transport that holds its place in the [`Tracker`] for as long as the
/// socket lives: through hyper's connection and, after an upgrade, the tunnel.
#[derive(Debug)]
pub(crate) struct Tracked<S> {
    inner: S,
    _hold: Hold,
}

impl<S> Tracked<S> {
    pub(crate) fn new(inner: S, hold: Hold) -> Self {
        Self { inner, _hold: hold }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Set once when the proxy starts draining; read on every response (an atomic, no lock).
#[derive(Debug, Default)]
pub(crate) struct DrainFlag(AtomicBool);

impl DrainFlag {
    pub(crate) fn start(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What one downstream connection is doing, as its requests report it: whether it speaks
/// HTTP/2 and whether a request is in flight (and since when it is idle).
#[derive(Debug)]
pub(crate) struct Activity {
    since: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `since` when the last request ended (0: none yet: idle since the
    /// connection was accepted).
    idle_since_ms: AtomicU64,
    http2: AtomicBool,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            since: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            http2: AtomicBool::new(false),
        }
    }

    /// A request started; it counts as in flight until the guard is dropped.
    pub(crate) fn request(self: &Arc<Self>, version: Version) -> InFlight {
        if version == Version::HTTP_2 {
            self.http2.store(true, Ordering::Release);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }

    /// Whether a draining connection may be shut down now: HTTP/2 (GOAWAY lets streams in
    /// flight finish), or no request in flight for [`DRAIN_IDLE_CLOSE`].
    pub(crate) fn may_close(&self) -> bool {
        self.may_close_at(Instant::now())
    }

    fn may_close_at(&self, now: Instant) -> bool {
        if self.http2.load(Ordering::Acquire) {
            return true;
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return false;
        }
        let idle_since =
            self.since + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        now.saturating_duration_since(idle_since) >= DRAIN_IDLE_CLOSE
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = u64::try_from(a.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.idle_since_ms.store(ms, Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http1_connection_closes_only_after_being_idle() {
        let a = Arc::new(Activity::new());
        let start = a.since;
        assert!(
            !a.may_close_at(start),
            "just accepted: wait for its request"
        );
        let req = a.request(Version::HTTP_11);
        assert!(
            !a.may_close_at(start + DRAIN_IDLE_CLOSE * 5),
            "request in flight"
        );
        drop(req);
        let ended = Instant::now();
        assert!(!a.may_close_at(ended));
        assert!(a.may_close_at(ended + DRAIN_IDLE_CLOSE));
    }

    #[test]
    fn an_http2_connection_may_close_at_once() {
        let a = Arc::new(Activity::new());
        let _req = a.request(Version::HTTP_2);
        assert!(a.may_close_at(a.since), "GOAWAY lets the stream finish");
    }

    #[tokio::test]
    async fn tracker_wakes_when_the_last_hold_goes() {
        let t = Tracker::default();
        t.all_closed().await;
        let (a, b) = (t.hold(), t.hold());
        assert_eq!(t.open(), 2);
        let waiter = tokio::spawn({
            let t = t.clone();
            async move { t.all_closed().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}

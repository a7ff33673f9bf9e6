//! Body types without boxing: the request body sent upstream (read by the client-facing
//! rules: size limit, client body timeout, client faults told apart from backend faults) and
//! the response body sent downstream.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::HeaderMap;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep, sleep};

use crate::access_log::PendingLine;
use crate::options::ConnGuard;
use crate::upstream::{InFlight, Reuse};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A problem with the request body that is the client's doing, never the backend's.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientBodyError {
    #[error("malformed or aborted request body")]
    Invalid {
        #[source]
        source: hyper::Error,
    },
    #[error("the client sent no request body data for {timeout:?}")]
    Timeout { timeout: Duration },
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: u64 },
}

/// A timer that runs while a body has nothing to read and fires after `timeout` of that.
#[derive(Debug)]
struct StallTimer {
    timeout: Duration,
    /// Created on the first stall only: bodies that never wait allocate nothing.
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl StallTimer {
    fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            sleep: None,
            armed: false,
        }
    }

    /// The body has data (or ended): the next stall starts a fresh timeout.
    fn disarm(&mut self) {
        self.armed = false;
    }

    /// The body has nothing to read: `Ready` once that has lasted `timeout`.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if !self.armed {
                    sleep.as_mut().reset(Instant::now() + self.timeout);
                }
                sleep
            }
            None => self.sleep.insert(Box::pin(sleep(self.timeout))),
        };
        self.armed = true;
        sleep.as_mut().poll(cx)
    }
}

/// The client's request body under the size limit and the client body timeout; errors are
/// [`ClientBodyError`]s.
#[derive(Debug)]
pub(crate) struct ClientBody {
    body: Incoming,
    received: u64,
    limit: u64,
    stall: StallTimer,
    /// Set once the body is streamed upstream (see [`UploadProgress`]).
    progress: Option<Arc<UploadProgress>>,
}

impl ClientBody {
    pub(crate) fn new(body: Incoming, limit: u64, timeout: Duration) -> Self {
        Self {
            body,
            received: 0,
            limit,
            stall: StallTimer::new(timeout),
            progress: None,
        }
    }

    /// Tracks how the upload goes from now on and returns the tracker.
    pub(crate) fn track_progress(&mut self) -> Arc<UploadProgress> {
        let progress = Arc::new(UploadProgress::new());
        self.progress = Some(Arc::clone(&progress));
        progress
    }

    fn frame_read(&mut self, frame: Frame<Bytes>) -> Result<Frame<Bytes>, ClientBodyError> {
        if let Some(data) = frame.data_ref() {
            self.received += data.len() as u64;
            if self.received > self.limit {
                return Err(ClientBodyError::TooLarge { limit: self.limit });
            }
        }
        if let Some(p) = &self.progress {
            p.advanced(self.body.is_end_stream());
        }
        Ok(frame)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Some(p) = &this.progress {
            p.waiting_on_client
                .store(polled.is_pending(), Ordering::Relaxed);
        }
        match polled {
            Poll::Pending => match this.stall.poll_stalled(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(ClientBodyError::Timeout {
                    timeout: this.stall.timeout,
                }))),
                Poll::Pending => Poll::Pending,
            },
            Poll::Ready(None) => {
                this.stall.disarm();
                if let Some(p) = &this.progress {
                    p.advanced(true);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(source))) => {
                Poll::Ready(Some(Err(ClientBodyError::Invalid { source })))
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.stall.disarm();
                Poll::Ready(Some(this.frame_read(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// How a streamed upload is going, shared between the body (which the pooled client polls)
/// and the request's response timer: the response timeout counts from the end of the upload,
/// or from the last progress while the upstream is not reading it.
#[derive(Debug)]
pub(crate) struct UploadProgress {
    started: Instant,
    /// Milliseconds since `started` of the last frame (or of the end).
    last_ms: AtomicU64,
    done: AtomicBool,
    /// The body waits for the client (whose own timeout then applies), not for the upstream.
    waiting_on_client: AtomicBool,
}

impl UploadProgress {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            done: AtomicBool::new(false),
            waiting_on_client: AtomicBool::new(false),
        }
    }

    fn advanced(&self, done: bool) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
        if done {
            self.done.store(true, Ordering::Relaxed);
        }
    }

    /// When waiting for the response ends, given what the upload did so far: `send` after
    /// the last progress while the upstream does not read the body (`proxy-send-timeout`),
    /// `read` after its end (`proxy-read-timeout`).
    pub(crate) fn response_deadline(&self, read: Duration, send: Duration) -> Instant {
        let uploading = !self.done.load(Ordering::Relaxed);
        if uploading && self.waiting_on_client.load(Ordering::Relaxed) {
            // The client body timeout is running; the response timer has not started.
            return Instant::now() + read.max(send);
        }
        let timeout = if uploading { send } else { read };
        self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + timeout
    }
}

/// Request body forwarded upstream.
#[derive(Debug)]
pub(crate) enum ReqBody {
    Empty,
    /// Read completely before an endpoint was chosen.
    Buffered {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    /// The part read before dialling, then the rest of the client's body.
    Streamed {
        prefix: Option<Bytes>,
        rest: ClientBody,
    },
}

impl ReqBody {
    /// A copy to send again, when the whole body is in memory.
    pub(crate) fn try_clone(&self) -> Option<ReqBody> {
        match self {
            ReqBody::Empty => Some(ReqBody::Empty),
            ReqBody::Buffered { data, trailers } => Some(ReqBody::Buffered {
                data: data.clone(),
                trailers: trailers.clone(),
            }),
            ReqBody::Streamed { .. } => None,
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Buffered { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            ReqBody::Streamed { prefix, rest } => match prefix.take() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None => Pin::new(rest).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            ReqBody::Streamed { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ReqBody::Streamed { prefix, rest } => {
                let before = prefix.as_ref().map_or(0, |d| d.len() as u64);
                let hint = rest.size_hint();
                let mut sum = SizeHint::new();
                sum.set_lower(hint.lower() + before);
                if let Some(upper) = hint.upper() {
                    sum.set_upper(upper + before);
                }
                sum
            }
        }
    }
}

/// Response body: the upstream's (holding the endpoint's in-flight count until it ends, and
/// failing if the upstream stalls longer than the read timeout between two frames) or a
/// short body generated here; with the access log on, it carries the request's line, which is
/// written when the body is done (dropped).
#[derive(Debug)]
pub(crate) struct ProxyBody {
    kind: BodyKind,
    log: Option<Box<PendingLine>>,
}

#[derive(Debug)]
enum BodyKind {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

#[derive(Debug)]
pub(crate) struct UpstreamBody {
    body: Incoming,
    _in_flight: Option<InFlight>,
    /// A `limit-connections` place, held until the body ends.
    _held: Option<ConnGuard>,
    stall: StallTimer,
    /// The HTTP/1.1 connection the body comes over, given back to its pool at the end.
    reuse: Option<Reuse>,
}

impl UpstreamBody {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.stall.disarm();
                let ended = match &frame {
                    None => true,
                    Some(Ok(_)) => self.body.is_end_stream(),
                    Some(Err(_)) => false,
                };
                if ended && let Some(reuse) = &mut self.reuse {
                    reuse.body_ended();
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match self.stall.poll_stalled(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(ReadTimeout {
                    timeout: self.stall.timeout,
                }) as BoxError))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// The upstream sent nothing for longer than the read timeout.
#[derive(Debug, thiserror::Error)]
#[error("upstream response body stalled for more than {timeout:?}")]
pub(crate) struct ReadTimeout {
    timeout: Duration,
}

impl ProxyBody {
    /// An upstream's body; with `reuse`, the connection it comes over is given back to its
    /// pool when the body ends.
    pub(crate) fn upstream(
        body: Incoming,
        in_flight: Option<InFlight>,
        read_timeout: Duration,
        reuse: Option<Reuse>,
    ) -> Self {
        Self::of(BodyKind::Upstream(UpstreamBody {
            body,
            _in_flight: in_flight,
            _held: None,
            stall: StallTimer::new(read_timeout),
            reuse,
        }))
    }

    fn of(kind: BodyKind) -> Self {
        Self { kind, log: None }
    }

    /// Keeps `guard` until the body ends (a generated body ends at once).
    pub(crate) fn hold(&mut self, guard: Option<ConnGuard>) {
        if let BodyKind::Upstream(up) = &mut self.kind {
            up._held = guard;
        }
    }

    /// Writes `line` (with the bytes sent and the duration) when the body is done.
    pub(crate) fn log_when_done(&mut self, line: PendingLine) {
        self.log = Some(Box::new(line));
    }

    /// Reads an upstream body announced as at most `max` bytes completely, so that it leaves
    /// with the response head in one write (nginx, even with `proxy_buffering off`, sends
    /// what one read from the upstream brought: head and small body together). Without it
    /// the downstream connection writes the head alone, then waits for the upstream
    /// connection's task to hand the body over. The endpoint's in-flight
    /// count and a `limit-connections` place end with the read. Other bodies are left as
    /// they are. An error (the upstream broke off or stalled past the read timeout) is
    /// returned; the body is unusable then.
    pub(crate) async fn buffer_small(&mut self, max: u64) -> Result<(), BoxError> {
        let BodyKind::Upstream(up) = &self.kind else {
            return Ok(());
        };
        let Some(len) = up.body.size_hint().exact() else {
            return Ok(());
        };
        if len > max || up.body.is_end_stream() {
            return Ok(());
        }
        let mut data: Option<Bytes> = None;
        let mut joined = BytesMut::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut *self).poll_frame(cx)).await
        {
            let Ok(chunk) = frame?.into_data() else {
                return Err("trailers after a body of announced length".into());
            };
            // One chunk (the usual case) is kept as it is; more are joined.
            match data.take() {
                None if joined.is_empty() => data = Some(chunk),
                earlier => {
                    if let Some(earlier) = earlier {
                        joined.reserve(usize::try_from(len).unwrap_or(0));
                        joined.extend_from_slice(&earlier);
                    }
                    joined.extend_from_slice(&chunk);
                }
            }
        }
        let data = data.unwrap_or_else(|| joined.freeze());
        self.kind = BodyKind::Full((!data.is_empty()).then_some(data));
        Ok(())
    }

    pub(crate) fn full(data: impl Into<Bytes>) -> Self {
        Self::of(BodyKind::Full(Some(data.into())))
    }

    pub(crate) fn empty() -> Self {
        Self::of(BodyKind::Full(None))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            BodyKind::Upstream(up) => up.poll_frame(cx),
            BodyKind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        if let (Some(log), Poll::Ready(Some(Ok(frame)))) = (&mut this.log, &polled)
            && let Some(data) = frame.data_ref()
        {
            log.sent(data.len());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Upstream(up) => up.body.is_end_stream(),
            BodyKind::Full(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Upstream(up) => up.body.size_hint(),
            BodyKind::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

//! Body types without boxing: the request body sent upstream and the response body sent
//! downstream.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Limited;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep, sleep};

use crate::upstream::InFlight;

/// Request body forwarded upstream: the client's body under the size limit, or nothing.
#[derive(Debug)]
pub(crate) enum ReqBody {
    Client(Limited<Incoming>),
    Empty,
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ReqBody::Client(body) => Pin::new(body).poll_frame(cx),
            ReqBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Client(body) => body.is_end_stream(),
            ReqBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Client(body) => body.size_hint(),
            ReqBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// Response body: the upstream's (holding the endpoint's in-flight count until it ends, and
/// failing if the upstream stalls longer than the read timeout between two frames) or a
/// short body generated here.
#[derive(Debug)]
pub(crate) enum ProxyBody {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

#[derive(Debug)]
pub(crate) struct UpstreamBody {
    body: Incoming,
    _in_flight: Option<InFlight>,
    read_timeout: Duration,
    /// Armed when the upstream has no data ready; disarmed by the next frame.
    stall: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

/// The upstream sent nothing for longer than the read timeout.
#[derive(Debug, thiserror::Error)]
#[error("upstream response body stalled for more than {timeout:?}")]
pub(crate) struct ReadTimeout {
    timeout: Duration,
}

impl ProxyBody {
    pub(crate) fn upstream(
        body: Incoming,
        in_flight: Option<InFlight>,
        read_timeout: Duration,
    ) -> Self {
        ProxyBody::Upstream(UpstreamBody {
            body,
            _in_flight: in_flight,
            read_timeout,
            stall: None,
            armed: false,
        })
    }

    pub(crate) fn full(data: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(data.into()))
    }

    pub(crate) fn empty() -> Self {
        ProxyBody::Full(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream(up) => match Pin::new(&mut up.body).poll_frame(cx) {
                Poll::Ready(frame) => {
                    up.armed = false;
                    Poll::Ready(frame.map(|f| f.map_err(Into::into)))
                }
                Poll::Pending => {
                    let stall = match &mut up.stall {
                        Some(stall) => {
                            if !up.armed {
                                stall.as_mut().reset(Instant::now() + up.read_timeout);
                            }
                            stall
                        }
                        None => up.stall.insert(Box::pin(sleep(up.read_timeout))),
                    };
                    up.armed = true;
                    match stall.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(ReadTimeout {
                            timeout: up.read_timeout,
                        })))),
                        Poll::Pending => Poll::Pending,
                    }
                }
            },
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(up) => up.body.is_end_stream(),
            ProxyBody::Full(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(up) => up.body.size_hint(),
            ProxyBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

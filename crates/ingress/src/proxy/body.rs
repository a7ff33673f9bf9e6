//! Body types without boxing: the request body sent upstream and the response body sent
//! downstream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Limited;
use hyper::body::{Body, Frame, Incoming, SizeHint};

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

/// Response body: the upstream's (holding the endpoint's in-flight count until it ends) or a
/// short body generated here.
#[derive(Debug)]
pub(crate) enum ProxyBody {
    Upstream {
        body: Incoming,
        _in_flight: Option<InFlight>,
    },
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub(crate) fn upstream(body: Incoming, in_flight: Option<InFlight>) -> Self {
        ProxyBody::Upstream {
            body,
            _in_flight: in_flight,
        }
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
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream { body, .. } => Pin::new(body).poll_frame(cx),
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Full(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

//! Reading the request body before an endpoint is chosen (as nginx buffers it), so that a
//! slow or broken client is answered 408 / 400 without ever holding a backend connection.
//! Only the first `request_buffer_bytes` are held in memory; the rest of a larger body is
//! streamed behind them.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};

use super::ReqBody;
use super::body::{ClientBody, ClientBodyError, UploadProgress};
use crate::IngressConfig;

/// The body to send upstream, and the progress tracker of a streamed one. A `streaming`
/// request (gRPC) is never held: its messages may each wait for an answer.
pub(super) async fn read_request_body(
    body: Incoming,
    config: &IngressConfig,
    limit: u64,
    streaming: bool,
) -> Result<(ReqBody, Option<Arc<UploadProgress>>), ClientBodyError> {
    if body.is_end_stream() {
        return Ok((ReqBody::Empty, None));
    }
    let mut body = ClientBody::new(body, limit, config.client_body_timeout);
    let buffer = config.request_buffer_bytes;
    // A body announced larger than the buffer is streamed at once: holding its first part
    // would only add a copy.
    if streaming || body.size_hint().exact().is_some_and(|n| n > buffer as u64) {
        let progress = body.track_progress();
        let streamed = ReqBody::Streamed {
            prefix: None,
            rest: body,
        };
        return Ok((streamed, Some(progress)));
    }
    let mut held = Held::default();
    let mut trailers = None;
    let mut ended = false;
    while !ended && held.len() < buffer.max(1) {
        let Some(frame) = body.frame().await.transpose()? else {
            ended = true;
            break;
        };
        match frame.into_data() {
            Ok(data) => held.push(data),
            // Trailers come last.
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
        ended = trailers.is_some() || body.is_end_stream();
    }
    if ended {
        let data = held.into_bytes();
        return Ok((ReqBody::Buffered { data, trailers }, None));
    }
    let progress = body.track_progress();
    let streamed = ReqBody::Streamed {
        prefix: held.into_bytes(),
        rest: body,
    };
    Ok((streamed, Some(progress)))
}

/// The data read so far: the first frame as is (no copy for the usual single-frame body),
/// later frames joined.
#[derive(Default)]
struct Held {
    first: Option<Bytes>,
    joined: BytesMut,
}

impl Held {
    fn len(&self) -> usize {
        self.first.as_ref().map_or(0, Bytes::len) + self.joined.len()
    }

    fn push(&mut self, data: Bytes) {
        if self.first.is_none() && self.joined.is_empty() {
            self.first = Some(data);
            return;
        }
        if let Some(first) = self.first.take() {
            self.joined.extend_from_slice(&first);
        }
        self.joined.extend_from_slice(&data);
    }

    fn into_bytes(self) -> Option<Bytes> {
        let bytes = match self.first {
            Some(first) => first,
            None => self.joined.freeze(),
        };
        (!bytes.is_empty()).then_some(bytes)
    }
}

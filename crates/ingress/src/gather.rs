//! Small writes to a TLS stream held until the writer flushes: what hyper or h2 wrote since
//! its last flush is encrypted in one go (records of up to 16 KiB) and sent in one system call.
//!
//! tokio-rustls encrypts and sends on every `poll_write`, and says it takes vectored writes.
//! h2, given a vectored stream, keeps a DATA payload of 256 bytes or more out of its buffer and
//! flushes before it buffers the next frame: with four streams answering at once, each
//! response left in a write (and a TLS record) of its own, 1.64 writes per response where one
//! per flush would do. Told the stream is not vectored, h2 copies payloads under 1 KiB into
//! its buffer, and with this layer what a flush sends goes out together.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes are gathered up to this much (three of h2's largest DATA frames with their headers
/// fit); a larger write is passed on as it is, after what was gathered, so a large body is
/// not copied and a connection never holds more than this.
pub(crate) const GATHER_LIMIT: usize = 64 * 1024;
/// A gathering buffer grown past this is freed once sent: an idle connection keeps little.
const KEPT_CAPACITY: usize = 4 * 1024;

/// A stream whose writes are gathered until `poll_flush` (see the module docs).
#[derive(Debug)]
pub(crate) struct GatheredWrites<S> {
    inner: S,
    pending: Vec<u8>,
    /// How much of `pending` the inner stream has taken.
    sent: usize,
}

impl<S> GatheredWrites<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            sent: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> GatheredWrites<S> {
    /// Hands everything gathered to the inner stream.
    fn poll_send_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.sent = 0;
        if self.pending.capacity() > KEPT_CAPACITY {
            self.pending = Vec::new();
        } else {
            self.pending.clear();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GatheredWrites<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GatheredWrites<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending.len() + buf.len() > GATHER_LIMIT {
            ready!(this.poll_send_pending(cx))?;
            if buf.len() > GATHER_LIMIT {
                return Pin::new(&mut this.inner).poll_write(cx, buf);
            }
        }
        this.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    /// Not vectored: hyper and h2 then gather small pieces themselves (see the module docs).
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tokio::io::AsyncWriteExt;

    use super::*;

    /// An inner stream that records each write it takes and can refuse or shorten them.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        shut: bool,
        /// Per write call, in order: `None` answers Pending (and wakes), `Some(n)` takes at
        /// most n bytes. Empty: everything is taken.
        script: VecDeque<Option<usize>>,
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let take = match this.script.pop_front() {
                Some(None) => {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Some(Some(n)) => n.min(buf.len()),
                None => buf.len(),
            };
            this.writes.push(buf[..take].to_vec());
            Poll::Ready(Ok(take))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().shut = true;
            Poll::Ready(Ok(()))
        }
    }

    fn sent(w: &GatheredWrites<Recorder>) -> Vec<u8> {
        w.inner.writes.concat()
    }

    #[tokio::test]
    async fn writes_between_flushes_reach_the_stream_as_one() {
        let mut w = GatheredWrites::new(Recorder::default());
        w.write_all(b"HEADERS").await.unwrap();
        w.write_all(b"DATA").await.unwrap();
        assert!(
            w.inner.writes.is_empty(),
            "nothing is sent before the flush"
        );
        w.flush().await.unwrap();
        assert_eq!(w.inner.writes, vec![b"HEADERSDATA".to_vec()]);
        assert_eq!(w.inner.flushes, 1);
        w.write_all(b"next").await.unwrap();
        w.flush().await.unwrap();
        assert_eq!(w.inner.writes.len(), 2);
        assert_eq!(sent(&w), b"HEADERSDATAnext");
    }

    #[tokio::test]
    async fn a_large_write_is_passed_on_after_what_was_gathered() {
        let mut w = GatheredWrites::new(Recorder::default());
        let large = vec![7u8; GATHER_LIMIT + 1];
        w.write_all(b"head").await.unwrap();
        w.write_all(&large).await.unwrap();
        assert_eq!(
            w.inner.writes.len(),
            2,
            "the gathered bytes first, then the large write"
        );
        assert_eq!(w.inner.writes[0], b"head");
        assert_eq!(w.inner.writes[1].len(), large.len());
        assert!(w.pending.capacity() <= KEPT_CAPACITY);
        w.flush().await.unwrap();
        assert_eq!(w.inner.writes.len(), 2);
    }

    #[tokio::test]
    async fn short_and_refused_writes_are_retried_in_order() {
        let script = [Some(3), None, Some(2), None].into_iter().collect();
        let mut w = GatheredWrites::new(Recorder {
            script,
            ..Recorder::default()
        });
        w.write_all(b"abcdefghij").await.unwrap();
        w.flush().await.unwrap();
        assert_eq!(sent(&w), b"abcdefghij");
        assert_eq!(w.inner.writes.len(), 3, "3 bytes, 2 bytes, then the rest");
        assert_eq!(w.inner.flushes, 1);
    }

    #[tokio::test]
    async fn shutdown_sends_what_is_gathered_first() {
        let mut w = GatheredWrites::new(Recorder::default());
        w.write_all(b"close_notify follows").await.unwrap();
        w.shutdown().await.unwrap();
        assert_eq!(sent(&w), b"close_notify follows");
        assert!(w.inner.shut);
    }

    #[tokio::test]
    async fn a_stream_that_takes_nothing_is_an_error() {
        let script = [Some(0)].into_iter().collect();
        let mut w = GatheredWrites::new(Recorder {
            script,
            ..Recorder::default()
        });
        w.write_all(b"x").await.unwrap();
        let err = w.flush().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WriteZero);
    }

    #[test]
    fn hyper_and_h2_are_told_the_stream_is_not_vectored() {
        assert!(!GatheredWrites::new(Recorder::default()).is_write_vectored());
    }
}

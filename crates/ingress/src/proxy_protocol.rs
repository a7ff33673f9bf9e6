//! The PROXY protocol (v1 text and v2 binary, as HAProxy specifies it): a load balancer in
//! front of the listeners opens each connection with a header naming the client, which the
//! proxy then treats as the connection's peer.
//!
//! The header is read before anything else (before TLS); bytes the client sent after it are
//! kept and served first ([`Prefixed`]). A connection whose first bytes are no valid header
//! is closed: with `proxy_protocol` on, every connection must come through the balancer.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// `\r\n\r\n\0\r\nQUIT\n`: the start of every v2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, `\r\n` included.
const V1_MAX: usize = 107;
/// Longest v2 header accepted (addresses plus some TLVs).
const V2_MAX: usize = 16 + 536;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header: {why}")]
    Malformed { why: &'static str },
    #[error("the connection closed before its PROXY protocol header ended")]
    Truncated,
    #[error("reading the PROXY protocol header")]
    Read {
        #[source]
        source: io::Error,
    },
}

/// What a complete header says: the client's address, or `None` for a connection the
/// balancer made itself (v1 `UNKNOWN`, v2 `LOCAL`: its health checks), whose peer stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    Client(SocketAddr),
    Local,
}

/// Parses a header at the start of `data`: `Ok(None)` when more bytes are needed, else the
/// header and its length.
pub(crate) fn parse(data: &[u8]) -> Result<Option<(Header, usize)>, ProxyHeaderError> {
    if data.len() < V2_SIGNATURE.len() {
        let v1 = b"PROXY ".starts_with(&data[..data.len().min(6)]);
        let v2 = V2_SIGNATURE.starts_with(data);
        return if v1 || v2 {
            Ok(None)
        } else {
            Err(ProxyHeaderError::Missing)
        };
    }
    if data.starts_with(V2_SIGNATURE) {
        parse_v2(data)
    } else if data.starts_with(b"PROXY ") {
        parse_v1(data)
    } else {
        Err(ProxyHeaderError::Missing)
    }
}

fn malformed(why: &'static str) -> ProxyHeaderError {
    ProxyHeaderError::Malformed { why }
}

/// `PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n`, `PROXY UNKNOWN ...\r\n`.
fn parse_v1(data: &[u8]) -> Result<Option<(Header, usize)>, ProxyHeaderError> {
    let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
        return if data.len() >= V1_MAX {
            Err(malformed("v1 header longer than 107 bytes"))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&data[..end]).map_err(|_| malformed("v1 header not ASCII"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let header = match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Header::Local,
        [
            "PROXY",
            family @ ("TCP4" | "TCP6"),
            src,
            _dst,
            sport,
            _dport,
        ] => {
            let ip: IpAddr = src.parse().map_err(|_| malformed("v1 source address"))?;
            if ip.is_ipv4() != (*family == "TCP4") {
                return Err(malformed("v1 address does not match its family"));
            }
            let port: u16 = sport.parse().map_err(|_| malformed("v1 source port"))?;
            Header::Client(SocketAddr::new(ip, port))
        }
        _ => return Err(malformed("v1 header fields")),
    };
    Ok(Some((header, end + 2)))
}

/// Signature, version/command, family/protocol, length, addresses (and TLVs, skipped).
fn parse_v2(data: &[u8]) -> Result<Option<(Header, usize)>, ProxyHeaderError> {
    if data.len() < 16 {
        return Ok(None);
    }
    let (version_command, family) = (data[12], data[13]);
    if version_command >> 4 != 2 {
        return Err(malformed("v2 version"));
    }
    let len = 16 + usize::from(u16::from_be_bytes([data[14], data[15]]));
    if len > V2_MAX {
        return Err(malformed("v2 header too long"));
    }
    if data.len() < len {
        return Ok(None);
    }
    let body = &data[16..len];
    let header = match (version_command & 0x0f, family) {
        (0x0, _) => Header::Local,
        // TCP over IPv4: src(4) dst(4) sport(2) dport(2).
        (0x1, 0x11) if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            Header::Client(SocketAddr::new(ip.into(), port))
        }
        // TCP over IPv6: src(16) dst(16) sport(2) dport(2).
        (0x1, 0x21) if body.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Header::Client(SocketAddr::new(Ipv6Addr::from(octets).into(), port))
        }
        // UNSPEC or another transport: the balancer's own connection.
        (0x1, 0x00) => Header::Local,
        (0x1, _) => return Err(malformed("v2 address family or length")),
        _ => return Err(malformed("v2 command")),
    };
    Ok(Some((header, len)))
}

/// Reads the header from `io`; returns it and the bytes read past it.
pub(crate) async fn read_header<R: AsyncRead + Unpin>(
    io: &mut R,
) -> Result<(Header, Bytes), ProxyHeaderError> {
    let mut buf = BytesMut::with_capacity(V2_MAX);
    loop {
        if let Some((header, len)) = parse(&buf)? {
            buf.advance(len);
            return Ok((header, buf.freeze()));
        }
        if buf.len() >= V2_MAX {
            return Err(malformed("header too long"));
        }
        let n = io
            .read_buf(&mut buf)
            .await
            .map_err(|source| ProxyHeaderError::Read { source })?;
        if n == 0 {
            return Err(if buf.is_empty() {
                ProxyHeaderError::Missing
            } else {
                ProxyHeaderError::Truncated
            });
        }
    }
}

/// A stream that first yields `prefix` (bytes read past a PROXY header), then its own.
#[derive(Debug)]
pub(crate) struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub(crate) fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(text: &str) -> Header {
        Header::Client(text.parse().unwrap())
    }

    #[test]
    fn v1_headers() {
        let h = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\nGET /";
        assert_eq!(
            parse(h).unwrap(),
            Some((client("192.0.2.7:56324"), h.len() - 5))
        );
        let h = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 80\r\n";
        assert_eq!(parse(h).unwrap().unwrap().0, client("[2001:db8::7]:4000"));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap(),
            Some((Header::Local, 15))
        );
        assert!(
            parse(b"PROXY TCP4 192.0.2").unwrap().is_none(),
            "incomplete"
        );
        assert!(parse(b"PRO").unwrap().is_none(), "incomplete");
        for bad in [
            &b"PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n"[..],
            b"PROXY TCP4 192.0.2.1 192.0.2.2 99999 1\r\n",
            b"PROXY TCP4 x\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyHeaderError::Malformed { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n"),
            Err(ProxyHeaderError::Missing)
        ));
        let long = [b"PROXY ".as_slice(), &[b'1'; 120]].concat();
        assert!(parse(&long).is_err());
    }

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend([0x20 | command, family]);
        h.extend((addresses.len() as u16).to_be_bytes());
        h.extend(addresses);
        h
    }

    #[test]
    fn v2_headers() {
        let mut v4 = vec![192, 0, 2, 7, 198, 51, 100, 1];
        v4.extend(56324u16.to_be_bytes());
        v4.extend(443u16.to_be_bytes());
        let h = v2(1, 0x11, &v4);
        assert_eq!(parse(&h).unwrap(), Some((client("192.0.2.7:56324"), 28)));
        assert!(parse(&h[..20]).unwrap().is_none(), "incomplete");
        let mut v6 = [0u8; 36].to_vec();
        v6[0] = 0x20;
        v6[1] = 0x01;
        v6[15] = 7;
        v6[32..34].copy_from_slice(&4000u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &v6)).unwrap().unwrap().0,
            client("[2001::7]:4000")
        );
        assert_eq!(parse(&v2(0, 0, &[])).unwrap().unwrap().0, Header::Local);
        assert!(parse(&v2(1, 0x11, &[1, 2])).is_err(), "short addresses");
        let mut bad_version = v2(1, 0x11, &v4);
        bad_version[12] = 0x31;
        assert!(parse(&bad_version).is_err());
    }

    #[tokio::test]
    async fn bytes_after_the_header_are_kept() {
        let mut input: &[u8] = b"PROXY TCP4 192.0.2.7 192.0.2.1 1000 80\r\nGET / HTTP/1.1\r\n";
        let (header, rest) = read_header(&mut input).await.unwrap();
        assert_eq!(header, client("192.0.2.7:1000"));
        let mut io = Prefixed::new(rest, input);
        let mut text = String::new();
        io.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "GET / HTTP/1.1\r\n");
        let mut empty: &[u8] = b"";
        assert!(matches!(
            read_header(&mut empty).await,
            Err(ProxyHeaderError::Missing)
        ));
        let mut cut: &[u8] = b"PROXY TCP4 192.0.2.7";
        assert!(matches!(
            read_header(&mut cut).await,
            Err(ProxyHeaderError::Truncated)
        ));
    }
}

//! Header handling: hop-by-hop removal, X-Forwarded-*, X-Request-Id.

use std::net::SocketAddr;

use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{HeaderMap, Request, StatusCode};

use crate::routes::normalize_host;

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub(crate) static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The upgrade to tunnel, if the request asks for one (`Connection: upgrade` + `Upgrade`)
/// with at least one protocol in `allowed`: the `Upgrade` value to send upstream, holding
/// only the allowed protocols. Other offers (`h2c`, ...) are dropped with the other
/// hop-by-hop headers and the request is served as plain HTTP.
pub(crate) fn upgrade_request(headers: &HeaderMap, allowed: &[String]) -> Option<HeaderValue> {
    let upgrade = headers.get(header::UPGRADE)?;
    if !connection_has(headers, "upgrade") {
        return None;
    }
    let offered = upgrade.to_str().ok()?;
    let is_allowed = |token: &str| {
        let name = token.split('/').next().unwrap_or("").trim();
        allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
    };
    if offered.split(',').all(is_allowed) {
        return Some(upgrade.clone());
    }
    let kept: Vec<&str> = offered
        .split(',')
        .filter(|t| is_allowed(t))
        .map(str::trim)
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join(", ")).ok()
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers (RFC 9110 7.6.1), including those named in `Connection`.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Why a request head is refused before routing (the message is the response body).
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("414 URI Too Long: the request target is longer than {limit} bytes")]
    UriTooLong { limit: usize },
    #[error("431 Request Header Fields Too Large: header {name} is longer than {limit} bytes")]
    HeaderLineTooLong { name: HeaderName, limit: usize },
    #[error(
        "431 Request Header Fields Too Large: the request headers are larger than {limit} bytes"
    )]
    HeadersTooLarge { limit: usize },
    #[error("400 Bad Request: no Host header")]
    NoHost,
    #[error("400 Bad Request: more than one Host header")]
    DuplicateHost,
    #[error("400 Bad Request: invalid Host header")]
    InvalidHost,
    #[error("400 Bad Request: the Host header names another host than the request target")]
    HostMismatch,
}

impl HeadError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            HeadError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            HeadError::HeaderLineTooLong { .. } | HeadError::HeadersTooLarge { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Size limits of a request head (see `IngressConfig::max_header_line_bytes` and
/// `max_header_bytes`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadLimits {
    pub(crate) line: usize,
    pub(crate) total: usize,
}

/// Checks the sizes of the request target and headers, and returns the request's host: the
/// single `Host` header, or the authority of the URI (HTTP/2, absolute form), which must then
/// name the same host as a `Host` header sent with it.
pub(crate) fn check_head<B>(
    req: &Request<B>,
    limits: HeadLimits,
) -> Result<HeaderValue, HeadError> {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if target > limits.line {
        return Err(HeadError::UriTooLong { limit: limits.line });
    }
    let mut total = target;
    for (name, value) in req.headers() {
        // As on the wire: `name: value\r\n`.
        let line = name.as_str().len() + value.len() + 4;
        if line > limits.line {
            return Err(HeadError::HeaderLineTooLong {
                name: name.clone(),
                limit: limits.line,
            });
        }
        total += line;
    }
    if total > limits.total {
        return Err(HeadError::HeadersTooLarge {
            limit: limits.total,
        });
    }
    request_host(req)
}

fn request_host<B>(req: &Request<B>) -> Result<HeaderValue, HeadError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(HeadError::DuplicateHost);
    }
    let host = match (req.uri().authority(), header) {
        (Some(authority), Some(header)) => {
            let named = header.to_str().map_err(|_| HeadError::InvalidHost)?;
            if !valid_host(authority.as_str().as_bytes()) {
                return Err(HeadError::InvalidHost);
            }
            if normalize_host(authority.as_str()) != normalize_host(named) {
                return Err(HeadError::HostMismatch);
            }
            header.clone()
        }
        (Some(authority), None) => {
            HeaderValue::from_str(authority.as_str()).map_err(|_| HeadError::InvalidHost)?
        }
        (None, Some(header)) => header.clone(),
        (None, None) => return Err(HeadError::NoHost),
    };
    if valid_host(host.as_bytes()) {
        Ok(host)
    } else {
        Err(HeadError::InvalidHost)
    }
}

/// `host[:port]` as RFC 3986 allows in `Host` (reg-name or IP literal, no user info), and
/// as nginx checks it: no empty label at the start and no `..`.
fn valid_host(value: &[u8]) -> bool {
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|b| *b == b']') else {
            return false;
        };
        let literal = &value[1..end];
        let literal_ok = !literal.is_empty()
            && literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
        if !literal_ok {
            return false;
        }
        (&value[..0], &value[end + 1..])
    } else {
        match value.iter().rposition(|b| *b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &value[value.len()..]),
        }
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    let reg_name_ok = |h: &[u8]| {
        !h.is_empty()
            && h[0] != b'.'
            && !h.windows(2).any(|w| w == b"..")
            && h.iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(b))
    };
    let bracketed = value.first() == Some(&b'[');
    port_ok && (bracketed || reg_name_ok(host))
}

/// What the proxy knows about the downstream connection.
pub(crate) struct Forwarded<'a> {
    /// The connection's peer (a trusted proxy, or the client itself).
    pub(crate) peer: SocketAddr,
    /// The client: the peer, or what a trusted peer's `X-Forwarded-For` says.
    pub(crate) client: std::net::IpAddr,
    /// The connection's peer address and local port as header values.
    pub(crate) values: &'a ConnValues,
    pub(crate) tls: bool,
    pub(crate) host: &'a HeaderValue,
    pub(crate) trust_client: bool,
}

/// A connection's own values of the forwarded headers, formatted once when it is accepted
/// rather than on every request.
#[derive(Debug, Clone)]
pub(crate) struct ConnValues {
    /// The peer's address (`X-Forwarded-For`, `X-Real-IP`).
    pub(crate) peer_ip: HeaderValue,
    /// The port the connection came in on (`X-Forwarded-Port`).
    pub(crate) local_port: HeaderValue,
}

impl ConnValues {
    pub(crate) fn new(peer: SocketAddr, local_port: u16) -> Self {
        let ip = peer.ip().to_canonical().to_string();
        Self {
            // An address's text is always a valid header value.
            peer_ip: HeaderValue::try_from(ip).unwrap_or(HeaderValue::from_static("unknown")),
            local_port: HeaderValue::from(local_port),
        }
    }
}

/// Sets `Host` (the client's), `X-Forwarded-For/-Proto/-Host/-Port` and `X-Real-IP` (the
/// client). Unless the peer is a trusted proxy, client-sent values are replaced, so backends
/// can rely on them; from a trusted one they are kept and the peer is appended to
/// `X-Forwarded-For`.
pub(crate) fn set_forwarded(headers: &mut HeaderMap, f: &Forwarded<'_>) {
    let ip = f.peer.ip().to_canonical();
    let ip_value = Some(f.values.peer_ip.clone());
    let client = f.client.to_canonical();
    let client_value = if client == ip {
        ip_value.clone()
    } else {
        HeaderValue::try_from(client.to_string()).ok()
    };
    headers.insert(header::HOST, f.host.clone());
    let previous_for = headers
        .get(&X_FORWARDED_FOR)
        .filter(|_| f.trust_client)
        .and_then(|v| v.to_str().ok());
    let for_value = match previous_for {
        Some(prev) => HeaderValue::try_from(format!("{prev}, {ip}")).ok(),
        None => ip_value.clone(),
    };
    if let Some(v) = for_value {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    let keep =
        |headers: &HeaderMap, name: &HeaderName| f.trust_client && headers.contains_key(name);
    if !keep(headers, &X_FORWARDED_PROTO) {
        let proto = if f.tls { "https" } else { "http" };
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !keep(headers, &X_FORWARDED_HOST) {
        headers.insert(&X_FORWARDED_HOST, f.host.clone());
    }
    if !keep(headers, &X_FORWARDED_PORT) {
        headers.insert(&X_FORWARDED_PORT, f.values.local_port.clone());
    }
    if let Some(v) = client_value {
        headers.insert(&X_REAL_IP, v);
    }
}

/// The client's `X-Request-Id` if it is a sane token, else a new random 128-bit hex id.
pub(crate) fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let ok = (1..=128).contains(&v.len()) && v.as_bytes().iter().all(|b| b.is_ascii_graphic());
        if ok {
            return v.clone();
        }
    }
    let (a, b) = (crate::upstream::random_u64(), crate::upstream::random_u64());
    let mut buf = [0u8; 32];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in a
        .to_be_bytes()
        .iter()
        .chain(b.to_be_bytes().iter())
        .enumerate()
    {
        buf[2 * i] = HEX[usize::from(byte >> 4)];
        buf[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_connection_tokens_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn upgrade_needs_connection_token() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let websocket = ["websocket".to_owned()];
        assert!(upgrade_request(&h, &websocket).is_none());
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert_eq!(upgrade_request(&h, &websocket).unwrap(), "websocket");
    }

    #[test]
    fn only_allowed_upgrade_protocols_are_kept() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        let allowed = ["WebSocket".to_owned(), "foo".to_owned()];
        assert!(upgrade_request(&h, &allowed).is_none());
        h.insert(
            header::UPGRADE,
            HeaderValue::from_static("h2c, foo/2 ,websocket"),
        );
        assert_eq!(upgrade_request(&h, &allowed).unwrap(), "foo/2, websocket");
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(upgrade_request(&h, &allowed).unwrap(), "websocket");
        assert!(upgrade_request(&h, &[]).is_none());
    }

    #[test]
    fn host_values() {
        for ok in [
            "cafe.example.com",
            "cafe.example.com:8080",
            "cafe.example.com.",
            "10.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:443",
            "a_b-c.example",
            "localhost:",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            ":80",
            "cafe.example.com/x",
            "user@cafe.example.com",
            "cafe..example.com",
            ".cafe.example.com",
            "cafe example.com",
            "cafe.example.com:80x",
            "cafe.example.com:123456",
            "[::1",
            "[::1]x",
            "[zz]",
            "café.example.com",
            "a\\b",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    fn head(lines: &[(&str, &str)], uri: &str) -> Result<HeaderValue, HeadError> {
        let mut req = Request::builder().uri(uri);
        for (n, v) in lines {
            req = req.header(*n, *v);
        }
        check_head(
            &req.body(()).unwrap(),
            HeadLimits {
                line: 64,
                total: 128,
            },
        )
    }

    #[test]
    fn head_checks() {
        assert_eq!(head(&[("host", "a")], "/").unwrap(), "a");
        assert_eq!(head(&[], "http://a:81/").unwrap(), "a:81");
        assert_eq!(head(&[("host", "A:80")], "http://a/").unwrap(), "A:80");
        let err = |lines: &[(&str, &str)], uri: &str| head(lines, uri).unwrap_err().status();
        assert_eq!(err(&[], "/"), StatusCode::BAD_REQUEST);
        assert_eq!(
            err(&[("host", "a"), ("host", "b")], "/"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(err(&[("host", "a")], "http://b/"), StatusCode::BAD_REQUEST);
        assert_eq!(
            err(&[("host", "a")], "http://u@a/"),
            StatusCode::BAD_REQUEST
        );
        let long = "x".repeat(64);
        assert_eq!(
            err(&[("host", "a")], &format!("/{long}")),
            StatusCode::URI_TOO_LONG
        );
        assert_eq!(
            err(&[("host", "a"), ("x-long", &long)], "/"),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let half = "x".repeat(40);
        assert_eq!(
            err(
                &[
                    ("host", "a"),
                    ("x-1", &half),
                    ("x-2", &half),
                    ("x-3", &half)
                ],
                "/"
            ),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    fn forwarded(h: &mut HeaderMap, trust: bool) {
        let host = HeaderValue::from_static("cafe.example.com");
        set_forwarded(
            h,
            &Forwarded {
                client: "192.0.2.7".parse().unwrap(),
                peer: "192.0.2.7:5555".parse().unwrap(),
                values: &ConnValues::new("192.0.2.7:5555".parse().unwrap(), 443),
                tls: true,
                host: &host,
                trust_client: trust,
            },
        );
    }

    #[test]
    fn forwarded_headers_replace_client_values_by_default() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        forwarded(&mut h, false);
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.7");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "cafe.example.com");
        assert_eq!(h[&X_FORWARDED_PORT], "443");
        assert_eq!(h[&X_REAL_IP], "192.0.2.7");
        assert_eq!(h[header::HOST], "cafe.example.com");
    }

    #[test]
    fn forwarded_for_is_appended_when_trusted() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.1"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        forwarded(&mut h, true);
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.1, 192.0.2.7");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
    }

    #[test]
    fn request_id_kept_or_generated() {
        let mut h = HeaderMap::new();
        let a = request_id(&h);
        let b = request_id(&h);
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
    }
}

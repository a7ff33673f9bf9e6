//! Header handling: hop-by-hop removal, X-Forwarded-*, X-Request-Id.

use std::net::SocketAddr;

use hyper::HeaderMap;
use hyper::header::{self, HeaderName, HeaderValue};

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub(crate) static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether the request asks for a protocol upgrade (`Connection: upgrade` + `Upgrade`);
/// returns the `Upgrade` value to pass on.
pub(crate) fn upgrade_request(headers: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = headers.get(header::UPGRADE)?;
    connection_has(headers, "upgrade").then(|| upgrade.clone())
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

/// What the proxy knows about the downstream connection.
pub(crate) struct Forwarded<'a> {
    pub(crate) peer: SocketAddr,
    pub(crate) local_port: u16,
    pub(crate) tls: bool,
    pub(crate) host: &'a HeaderValue,
    pub(crate) trust_client: bool,
}

/// Sets `Host` (the client's), `X-Forwarded-For/-Proto/-Host/-Port` and `X-Real-IP`. Unless
/// the client is trusted, client-sent values are replaced, so backends can rely on them.
pub(crate) fn set_forwarded(headers: &mut HeaderMap, f: &Forwarded<'_>) {
    let ip = f.peer.ip().to_canonical();
    let ip_value = HeaderValue::try_from(ip.to_string()).ok();
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
        headers.insert(&X_FORWARDED_PORT, HeaderValue::from(f.local_port));
    }
    if let Some(v) = ip_value.filter(|_| !keep(headers, &X_REAL_IP)) {
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
        assert!(upgrade_request(&h).is_none());
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert_eq!(upgrade_request(&h).unwrap(), "websocket");
    }

    fn forwarded(h: &mut HeaderMap, trust: bool) {
        let host = HeaderValue::from_static("cafe.example.com");
        set_forwarded(
            h,
            &Forwarded {
                peer: "192.0.2.7:5555".parse().unwrap(),
                local_port: 443,
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

//! `affinity: cookie`: the cookie names an endpoint by a stable id (the same on every node and
//! after restarts), so a client keeps its endpoint while that endpoint is ready.

use std::net::SocketAddr;

use hyper::HeaderMap;
use hyper::header::{self, HeaderValue};
use sluice_plan::CookieAffinity;

use crate::upstream::{Pool, UpstreamEndpoint};

#[derive(Debug)]
pub(crate) struct Affinity {
    name: Box<str>,
    /// `; Path=/app; Max-Age=3600; HttpOnly`.
    attributes: Box<str>,
}

impl Affinity {
    pub(crate) fn new(a: &CookieAffinity) -> Self {
        let mut attributes = format!("; Path={}", a.path);
        if let Some(age) = a.max_age {
            attributes.push_str(&format!("; Max-Age={age}"));
        }
        attributes.push_str("; HttpOnly");
        Self {
            name: a.name.as_str().into(),
            attributes: attributes.into(),
        }
    }

    /// The endpoint the request's cookie names, if it is (still) in the pool.
    pub(crate) fn sticky(&self, headers: &HeaderMap, pool: &Pool) -> Option<SocketAddr> {
        let id = u64::from_str_radix(cookie(headers, &self.name)?, 16).ok()?;
        pool.endpoints
            .iter()
            .find(|e| e.affinity_id == id)
            .map(|e| e.addr)
    }

    /// `Set-Cookie` naming `endpoint`.
    pub(crate) fn set_cookie(&self, endpoint: &UpstreamEndpoint) -> Option<HeaderValue> {
        let text = format!(
            "{}={:016x}{}",
            self.name, endpoint.affinity_id, self.attributes
        );
        HeaderValue::from_str(&text).ok()
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; route=abc"));
        h.append(header::COOKIE, HeaderValue::from_static("b=\"2\""));
        assert_eq!(cookie(&h, "route"), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "rout"), None);
    }
}

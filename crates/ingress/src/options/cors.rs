//! `enable-cors`: the `Access-Control-*` headers ingress-nginx sends, built once per route.

use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{HeaderMap, Response, StatusCode};
use sluice_plan::Cors;

use crate::proxy::ProxyBody;

#[derive(Debug)]
pub(crate) struct CorsHeaders {
    /// `cors-allow-origin: *`: every origin, answered `*`.
    any: bool,
    /// Exact origins (lower case) and `scheme://*.domain` patterns as (`scheme://`, `.domain`).
    exact: Vec<String>,
    patterns: Vec<(String, String)>,
    /// Every header but `Access-Control-Allow-Origin`.
    fixed: Vec<(HeaderName, HeaderValue)>,
}

impl CorsHeaders {
    pub(crate) fn new(cors: &Cors) -> Self {
        let any = cors.allow_origins.iter().any(|o| o == "*");
        let mut exact = Vec::new();
        let mut patterns = Vec::new();
        for origin in cors.allow_origins.iter().map(|o| o.to_ascii_lowercase()) {
            match origin.split_once("://*.") {
                Some((scheme, domain)) => {
                    patterns.push((format!("{scheme}://"), format!(".{domain}")))
                }
                None => exact.push(origin),
            }
        }
        let value = |v: &str| HeaderValue::from_str(v).ok();
        let mut fixed = vec![
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                value(&cors.allow_methods),
            ),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                value(&cors.allow_headers),
            ),
            (
                header::ACCESS_CONTROL_MAX_AGE,
                value(&cors.max_age.to_string()),
            ),
        ];
        if cors.allow_credentials {
            fixed.push((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                Some(HeaderValue::from_static("true")),
            ));
        }
        if let Some(expose) = &cors.expose_headers {
            fixed.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, value(expose)));
        }
        Self {
            any,
            exact,
            patterns,
            fixed: fixed
                .into_iter()
                .filter_map(|(n, v)| Some((n, v?)))
                .collect(),
        }
    }

    /// The `Access-Control-Allow-Origin` value for this request, if its origin is allowed.
    fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        if self.any {
            return Some(HeaderValue::from_static("*"));
        }
        let origin = headers.get(header::ORIGIN)?;
        let text = origin.to_str().ok()?.to_ascii_lowercase();
        let allowed = self.exact.contains(&text)
            || self.patterns.iter().any(|(scheme, domain)| {
                text.strip_prefix(scheme.as_str())
                    .and_then(|host| host.strip_suffix(domain.as_str()))
                    .is_some_and(|label| !label.is_empty() && !label.contains(['.', '/']))
            });
        allowed.then(|| origin.clone())
    }

    /// Headers added to a proxied response (none for an origin not allowed).
    pub(crate) fn for_response(&self, headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
        let Some(origin) = self.allowed_origin(headers) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(self.fixed.len() + 1);
        out.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin));
        out.extend(self.fixed.iter().cloned());
        out
    }

    /// The answer to a preflight `OPTIONS` from an allowed origin: 204 with every header.
    pub(crate) fn preflight(&self, headers: &HeaderMap) -> Option<Response<ProxyBody>> {
        let cors = self.for_response(headers);
        if cors.is_empty() {
            return None;
        }
        let mut resp = Response::new(ProxyBody::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        for (name, value) in cors {
            h.insert(name, value);
        }
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        Some(resp)
    }
}

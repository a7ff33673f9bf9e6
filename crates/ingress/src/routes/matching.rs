//! Host and path matching (`networking.k8s.io/v1` semantics) and request-path normalisation.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use super::Route;

/// Why a request path cannot be routed (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request path must start with '/'")]
    NotAbsolute,
    #[error("the request path has an invalid percent-encoding")]
    BadPercentEncoding,
}

/// Normalises a request path (without query) before routing, so that a route cannot be
/// bypassed by spelling the path differently: percent-encoded unreserved characters and `/`
/// (`%2F`) are decoded, other escapes upper-cased, repeated slashes merged, and `.`/`..`
/// segments removed (never above the root). The proxy forwards the normalised path, so the
/// backend sees exactly the path that was routed.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let clean = !path.contains('%')
        && !path.contains("//")
        && !path.split('/').any(|s| s == "." || s == "..");
    if clean {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path)?;
    let mut out: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded[1..].split('/') {
        match seg {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                out.pop();
                trailing_slash = true;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = String::with_capacity(decoded.len());
    for seg in &out {
        result.push('/');
        result.push_str(seg);
    }
    if trailing_slash || out.is_empty() {
        result.push('/');
    }
    Ok(Cow::Owned(result))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            // Copy the run up to the next '%' as is (keeps UTF-8 intact).
            let end = path[i..].find('%').map_or(bytes.len(), |p| i + p);
            out.push_str(&path[i..end]);
            i = end;
            continue;
        }
        let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
            return Err(PathError::BadPercentEncoding);
        };
        let (Some(h), Some(l)) = (hex(h), hex(l)) else {
            return Err(PathError::BadPercentEncoding);
        };
        let c = h << 4 | l;
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(c));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(h)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(l)]));
        }
        i += 3;
    }
    Ok(out)
}

/// The request host for routing: port removed, lower-cased, trailing dot removed.
pub(crate) fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: `[::1]:80`.
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// The paths of one host, as the plan lists them.
#[derive(Debug)]
pub(crate) struct HostRoutes {
    /// `Exact` paths and the own path of each `Prefix` rule (the first listed wins).
    pub(crate) exact: HashMap<Box<str>, Arc<Route>>,
    /// String prefixes (`/aaa/` for `Prefix /aaa`), longest first.
    pub(crate) prefixes: Vec<(Box<str>, Arc<Route>)>,
    /// Regex routes in plan order (each carries its regex); first match wins.
    pub(crate) regexes: Vec<Arc<Route>>,
    pub(crate) default: Arc<Route>,
}

impl HostRoutes {
    pub(crate) fn new(default: Arc<Route>) -> Self {
        Self {
            exact: HashMap::new(),
            prefixes: Vec::new(),
            regexes: Vec::new(),
            default,
        }
    }

    /// Regexes in order; else exact, then the longest prefix; else the host's default.
    pub(crate) fn lookup(&self, path: &str) -> &Arc<Route> {
        if !self.regexes.is_empty() {
            let matched = self
                .regexes
                .iter()
                .find(|r| r.regex.as_ref().is_some_and(|re| re.is_match(path)));
            return matched.unwrap_or(&self.default);
        }
        if let Some(route) = self.exact.get(path) {
            return route;
        }
        self.prefixes
            .iter()
            .find(|(p, _)| path.starts_with(&**p))
            .map_or(&self.default, |(_, route)| route)
    }

    pub(crate) fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.exact
            .values()
            .chain(self.prefixes.iter().map(|(_, r)| r))
            .chain(self.regexes.iter())
            .chain(std::iter::once(&self.default))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_keeps_clean_paths_borrowed() {
        assert!(matches!(
            normalize_path("/a/b/c"),
            Ok(Cow::Borrowed("/a/b/c"))
        ));
        assert!(matches!(normalize_path("/"), Ok(Cow::Borrowed("/"))));
    }

    #[test]
    fn normalize_removes_dot_segments() {
        assert_eq!(normalize_path("/tea/../coffee").unwrap(), "/coffee");
        assert_eq!(normalize_path("/tea/./x").unwrap(), "/tea/x");
        assert_eq!(normalize_path("/../../etc").unwrap(), "/etc");
        assert_eq!(normalize_path("/a/b/..").unwrap(), "/a/");
        assert_eq!(normalize_path("/..").unwrap(), "/");
    }

    #[test]
    fn normalize_decodes_encoded_dots_and_slashes() {
        assert_eq!(normalize_path("/tea/%2e%2e/coffee").unwrap(), "/coffee");
        assert_eq!(normalize_path("/tea%2F..%2Fcoffee").unwrap(), "/coffee");
        assert_eq!(normalize_path("/%61dmin").unwrap(), "/admin");
    }

    #[test]
    fn normalize_merges_slashes() {
        assert_eq!(normalize_path("//admin//x").unwrap(), "/admin/x");
    }

    #[test]
    fn normalize_keeps_reserved_escapes_uppercased() {
        assert_eq!(normalize_path("/a%3fb%20c").unwrap(), "/a%3Fb%20c");
    }

    #[test]
    fn normalize_rejects_bad_input() {
        assert_eq!(normalize_path("/a%zz"), Err(PathError::BadPercentEncoding));
        assert_eq!(normalize_path("/a%2"), Err(PathError::BadPercentEncoding));
        assert_eq!(normalize_path("*"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn host_normalisation_strips_port_and_case() {
        assert_eq!(normalize_host("Cafe.Example.COM:8443"), "cafe.example.com");
        assert_eq!(normalize_host("cafe.example.com."), "cafe.example.com");
        assert_eq!(normalize_host("[::1]:80"), "::1");
        assert_eq!(normalize_host("10.0.0.1"), "10.0.0.1");
    }
}

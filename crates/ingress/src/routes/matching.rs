//! Host and path matching (`networking.k8s.io/v1` semantics) and request-path normalisation.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use super::Backend;

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

/// How an Ingress path matches, after `ImplementationSpecific` was mapped to `Prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum PathKind {
    Exact,
    Prefix,
}

/// The paths of one host, merged across Ingresses.
#[derive(Debug, Default)]
pub(crate) struct HostRoutes {
    pub(crate) exact: HashMap<Box<str>, Arc<Backend>>,
    /// Prefixes without trailing slash (`/` is stored as ""), longest first.
    pub(crate) prefixes: Vec<(Box<str>, Arc<Backend>)>,
    /// `spec.defaultBackend` of the first Ingress (in conflict order) defining this host.
    pub(crate) default_backend: Option<Arc<Backend>>,
}

impl HostRoutes {
    /// Adds a path unless the same path and kind is already taken (first one wins);
    /// returns false on such a conflict.
    pub(crate) fn insert(&mut self, kind: PathKind, path: &str, backend: Arc<Backend>) -> bool {
        match kind {
            PathKind::Exact => {
                if self.exact.contains_key(path) {
                    return false;
                }
                self.exact.insert(path.into(), backend);
            }
            PathKind::Prefix => {
                let key = prefix_key(path);
                if self.prefixes.iter().any(|(p, _)| **p == *key) {
                    return false;
                }
                self.prefixes.push((key.into(), backend));
            }
        }
        true
    }

    /// Sorts prefixes longest first (stable, so equal lengths keep insertion order).
    pub(crate) fn finish(&mut self) {
        self.prefixes
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    }

    /// Exact match first (it is always at least as long as any matching prefix), then the
    /// longest prefix matching whole path elements.
    pub(crate) fn lookup(&self, path: &str) -> Option<&Arc<Backend>> {
        if let Some(b) = self.exact.get(path) {
            return Some(b);
        }
        self.prefixes
            .iter()
            .find(|(p, _)| prefix_matches(p, path))
            .map(|(_, b)| b)
    }
}

/// `/aaa/` and `/aaa` are the same prefix; `/` is the empty key.
fn prefix_key(path: &str) -> &str {
    path.trim_end_matches('/')
}

/// Element-wise prefix match: `/aaa` matches `/aaa`, `/aaa/` and `/aaa/ccc`, not `/aaaccc`.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
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

    #[test]
    fn prefix_matches_whole_elements() {
        assert!(prefix_matches("/aaa", "/aaa"));
        assert!(prefix_matches("/aaa", "/aaa/"));
        assert!(prefix_matches("/aaa", "/aaa/ccc"));
        assert!(!prefix_matches("/aaa", "/aaaccc"));
        assert!(prefix_matches("", "/anything"));
    }
}

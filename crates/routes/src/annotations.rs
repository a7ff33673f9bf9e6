//! `nginx.ingress.kubernetes.io/*` annotations → typed route options, with ingress-nginx's
//! meaning and defaults. Snippets and unknown annotations are never executed: each gets a
//! warning naming the Ingress and the annotation. An invalid value is warned about and
//! ignored, except where ignoring would open a route: an invalid allow list denies everyone.

use std::collections::BTreeMap;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::Ingress;
use sluice_model::{ObjectKey, Snapshot};
use sluice_plan::{BackendProtocol, Cors, RateLimit, Redirect, RouteOptions};

use crate::Warnings;

pub use sluice_model::ingress::ANNOTATION_PREFIX;

/// Every annotation (after the prefix) this module reads.
const SUPPORTED: &[&str] = &[
    "rewrite-target",
    "use-regex",
    "ssl-redirect",
    "force-ssl-redirect",
    "backend-protocol",
    "proxy-body-size",
    "proxy-connect-timeout",
    "proxy-read-timeout",
    "proxy-send-timeout",
    "canary",
    "canary-by-header",
    "canary-by-header-value",
    "canary-by-cookie",
    "canary-weight",
    "canary-weight-total",
    "affinity",
    "session-cookie-name",
    "session-cookie-max-age",
    "session-cookie-expires",
    "session-cookie-path",
    "whitelist-source-range",
    "allowlist-source-range",
    "permanent-redirect",
    "permanent-redirect-code",
    "temporal-redirect",
    "temporal-redirect-code",
    "app-root",
    "enable-cors",
    "cors-allow-origin",
    "cors-allow-methods",
    "cors-allow-headers",
    "cors-allow-credentials",
    "cors-expose-headers",
    "cors-max-age",
    "upstream-vhost",
    "x-forwarded-prefix",
    "limit-rps",
    "limit-connections",
    "limit-burst-multiplier",
    "auth-type",
    "auth-secret",
    "auth-secret-type",
    "auth-realm",
    "proxy-ssl-verify",
    "proxy-ssl-secret",
    "proxy-ssl-name",
    "proxy-ssl-server-name",
];

/// ingress-nginx's CORS defaults.
const CORS_METHODS: &str = "GET, PUT, POST, DELETE, PATCH, OPTIONS";
const CORS_HEADERS: &str = "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization";
const CORS_MAX_AGE: u64 = 1_728_000;
const COOKIE_NAME: &str = "INGRESSCOOKIE";
const BURST_MULTIPLIER: u32 = 5;

/// What one Ingress's annotations decide.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    /// Options every route of the Ingress gets; the host-dependent ones (`https_redirect`,
    /// the affinity cookie path, `canary`) are filled in per route.
    pub(crate) options: RouteOptions,
    pub(crate) use_regex: bool,
    pub(crate) ssl_redirect: bool,
    pub(crate) force_ssl_redirect: bool,
    pub(crate) affinity: Option<Affinity>,
    pub(crate) canary: Option<CanarySpec>,
}

#[derive(Debug)]
pub(crate) struct Affinity {
    pub(crate) name: String,
    pub(crate) max_age: Option<u64>,
    /// `session-cookie-path`; unset: the route's path.
    pub(crate) path: Option<String>,
}

/// A `canary: "true"` Ingress's selection rules.
#[derive(Debug, Clone)]
pub(crate) struct CanarySpec {
    pub(crate) header: Option<String>,
    pub(crate) header_value: Option<String>,
    pub(crate) cookie: Option<String>,
    pub(crate) weight: u32,
    pub(crate) weight_total: u32,
}

impl Parsed {
    /// Whether this Ingress makes its hosts' paths regular expressions (ingress-nginx:
    /// `use-regex`, or a `rewrite-target` other than the path itself).
    pub(crate) fn wants_regex(&self, path: &str) -> bool {
        self.use_regex
            || self
                .options
                .rewrite_target
                .as_deref()
                .is_some_and(|t| t != path)
    }
}

/// Reads the annotations of one Ingress.
pub(crate) fn parse(
    key: &ObjectKey,
    ingress: &Ingress,
    snapshot: &Snapshot,
    warnings: &mut Warnings,
) -> Parsed {
    let empty = BTreeMap::new();
    let all = ingress.metadata.annotations.as_ref().unwrap_or(&empty);
    let mut r = Reader {
        key,
        values: BTreeMap::new(),
        warnings,
    };
    for (name, value) in all {
        let Some(short) = name.strip_prefix(ANNOTATION_PREFIX) else {
            continue;
        };
        if short.ends_with("-snippet") {
            r.warn(
                short,
                "is a configuration snippet, which sluice never executes; ignored",
            );
        } else if SUPPORTED.contains(&short) {
            r.values.insert(short, value.trim());
        } else {
            r.warn(
                short,
                "is not supported by sluice; ignored (see docs/ingress.md)",
            );
        }
    }
    let mut parsed = Parsed {
        use_regex: r.bool("use-regex", false),
        ssl_redirect: r.bool("ssl-redirect", true),
        force_ssl_redirect: r.bool("force-ssl-redirect", false),
        ..Parsed::default()
    };
    r.canary(&mut parsed);
    r.proxying(&mut parsed.options);
    parsed.options.upstream_tls =
        crate::upstream_tls::upstream_tls(&mut r, parsed.options.protocol, snapshot);
    r.access(&mut parsed.options);
    r.responses(&mut parsed.options);
    parsed.affinity = r.affinity();
    parsed.options.basic_auth = crate::auth::basic_auth(&mut r, snapshot);
    parsed
}

/// The annotation values of one Ingress (prefix removed), and where problems go.
pub(crate) struct Reader<'a, 'w> {
    pub(crate) key: &'a ObjectKey,
    values: BTreeMap<&'a str, &'a str>,
    warnings: &'w mut Warnings,
}

impl Reader<'_, '_> {
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).copied()
    }

    pub(crate) fn warn(&mut self, name: &str, problem: impl std::fmt::Display) {
        let message = format!("annotation {ANNOTATION_PREFIX}{name} {problem}");
        self.warnings.ingress(self.key, message);
    }

    fn invalid(&mut self, name: &str, value: &str, want: &str) {
        self.warn(name, format_args!("value {value:?} is not {want}; ignored"));
    }

    /// Go's `strconv.ParseBool` spellings, as ingress-nginx reads booleans.
    fn bool(&mut self, name: &str, default: bool) -> bool {
        let Some(value) = self.get(name) else {
            return default;
        };
        match value {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
            "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
            other => {
                let other = other.to_owned();
                self.invalid(name, &other, "true or false");
                default
            }
        }
    }

    /// nginx's `on` / `off` (booleans accepted too); unset: off.
    pub(crate) fn on_off(&mut self, name: &str) -> bool {
        match self.get(name) {
            None => false,
            Some("on" | "On" | "ON" | "true" | "True" | "TRUE") => true,
            Some("off" | "Off" | "OFF" | "false" | "False" | "FALSE") => false,
            Some(other) => {
                let other = other.to_owned();
                self.invalid(name, &other, "on or off");
                false
            }
        }
    }

    fn number<T: std::str::FromStr>(&mut self, name: &str, want: &str) -> Option<T> {
        let value = self.get(name)?.to_owned();
        let parsed = value.parse::<T>().ok();
        if parsed.is_none() {
            self.invalid(name, &value, want);
        }
        parsed
    }

    /// Seconds, as ingress-nginx's integer timeouts (a trailing `s` is accepted).
    fn seconds(&mut self, name: &str) -> Option<Duration> {
        let value = self.get(name)?.to_owned();
        match value.strip_suffix('s').unwrap_or(&value).parse::<u64>() {
            Ok(n) if n > 0 => Some(Duration::from_secs(n)),
            _ => {
                self.invalid(name, &value, "a positive number of seconds");
                None
            }
        }
    }

    fn string(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.is_empty()).map(str::to_owned)
    }

    fn canary(&mut self, parsed: &mut Parsed) {
        if !self.bool("canary", false) {
            for name in ["canary-by-header", "canary-by-cookie", "canary-weight"] {
                if self.get(name).is_some() {
                    self.warn(name, "has no effect without canary: \"true\"; ignored");
                }
            }
            return;
        }
        let weight_total = self
            .number::<u32>("canary-weight-total", "a whole number")
            .filter(|t| *t > 0)
            .unwrap_or(100);
        let mut weight = self
            .number::<u32>("canary-weight", "a whole number")
            .unwrap_or(0);
        if weight > weight_total {
            self.warn(
                "canary-weight",
                format_args!("{weight} is more than canary-weight-total {weight_total}; every request goes to the canary"),
            );
            weight = weight_total;
        }
        parsed.canary = Some(CanarySpec {
            header: self.string("canary-by-header"),
            header_value: self.string("canary-by-header-value"),
            cookie: self.string("canary-by-cookie"),
            weight,
            weight_total,
        });
    }

    /// How requests are sent upstream.
    fn proxying(&mut self, o: &mut RouteOptions) {
        if let Some(value) = self.get("backend-protocol") {
            let value = value.to_ascii_uppercase();
            o.protocol = match value.as_str() {
                "HTTP" => BackendProtocol::Http,
                "HTTPS" => BackendProtocol::Https,
                "GRPC" => BackendProtocol::Grpc,
                "GRPCS" => BackendProtocol::Grpcs,
                "H2C" => BackendProtocol::H2c,
                _ => {
                    self.invalid(
                        "backend-protocol",
                        &value,
                        "HTTP, HTTPS, GRPC, GRPCS or H2C",
                    );
                    BackendProtocol::Http
                }
            };
        }
        o.rewrite_target = self.string("rewrite-target");
        if let Some(value) = self.get("proxy-body-size").map(str::to_owned) {
            o.max_body_bytes = nginx_size(&value);
            if o.max_body_bytes.is_none() {
                self.invalid("proxy-body-size", &value, "a size such as 8m, 512k or 0");
            }
        }
        o.connect_timeout = self.seconds("proxy-connect-timeout");
        o.read_timeout = self.seconds("proxy-read-timeout");
        o.send_timeout = self.seconds("proxy-send-timeout");
        o.upstream_vhost = self.string("upstream-vhost");
        o.forwarded_prefix = self.string("x-forwarded-prefix");
    }

    /// Who may use the route, and how much.
    fn access(&mut self, o: &mut RouteOptions) {
        let list = self
            .get("allowlist-source-range")
            .or_else(|| self.get("whitelist-source-range"))
            .map(str::to_owned);
        if let Some(list) = list {
            o.allow_sources = Some(self.source_ranges(&list));
        }
        if let Some(rps) = self
            .number::<u32>("limit-rps", "a whole number")
            .filter(|n| *n > 0)
        {
            let multiplier = self
                .number::<u32>("limit-burst-multiplier", "a whole number")
                .filter(|n| *n > 0)
                .unwrap_or(BURST_MULTIPLIER);
            o.rate_limit = Some(RateLimit {
                per_second: rps,
                burst: rps.saturating_mul(multiplier),
            });
        }
        o.connection_limit = self
            .number::<u32>("limit-connections", "a whole number")
            .filter(|n| *n > 0);
    }

    /// CIDRs or addresses, comma-separated. Any bad entry denies everyone (fail closed).
    fn source_ranges(&mut self, list: &str) -> Vec<IpNet> {
        let mut nets = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let net = entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from));
            match net {
                Ok(net) => nets.push(net),
                Err(_) => {
                    self.warn(
                        "allowlist-source-range",
                        format_args!("entry {entry:?} is not a CIDR or address; the route denies every client (403) until it is fixed"),
                    );
                    return Vec::new();
                }
            }
        }
        nets
    }

    /// Answers made by the proxy itself: redirects and CORS.
    fn responses(&mut self, o: &mut RouteOptions) {
        let permanent = self.string("permanent-redirect").map(|location| {
            let code = self.redirect_code("permanent-redirect-code", 301);
            Redirect { code, location }
        });
        let temporal = self.string("temporal-redirect").map(|location| {
            let code = self.redirect_code("temporal-redirect-code", 302);
            Redirect { code, location }
        });
        o.redirect = permanent.or(temporal);
        o.app_root = self.string("app-root");
        if let Some(root) = o.app_root.as_deref().filter(|r| !r.starts_with('/')) {
            let root = root.to_owned();
            self.invalid("app-root", &root, "a path starting with '/'");
            o.app_root = None;
        }
        if self.bool("enable-cors", false) {
            o.cors = Some(self.cors());
        }
    }

    fn redirect_code(&mut self, name: &str, default: u16) -> u16 {
        match self.number::<u16>(name, "a redirect status code") {
            Some(code @ (301 | 302 | 303 | 307 | 308)) => code,
            Some(code) => {
                self.invalid(name, &code.to_string(), "301, 302, 303, 307 or 308");
                default
            }
            None => default,
        }
    }

    fn cors(&mut self) -> Cors {
        let origins = self.get("cors-allow-origin").unwrap_or("*");
        let allow_origins: Vec<String> = origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect();
        Cors {
            allow_origins: if allow_origins.is_empty() {
                vec!["*".to_owned()]
            } else {
                allow_origins
            },
            allow_methods: self
                .string("cors-allow-methods")
                .unwrap_or(CORS_METHODS.to_owned()),
            allow_headers: self
                .string("cors-allow-headers")
                .unwrap_or(CORS_HEADERS.to_owned()),
            allow_credentials: self.bool("cors-allow-credentials", true),
            expose_headers: self.string("cors-expose-headers"),
            max_age: self
                .number::<u64>("cors-max-age", "a number of seconds")
                .unwrap_or(CORS_MAX_AGE),
        }
    }

    fn affinity(&mut self) -> Option<Affinity> {
        let kind = self.get("affinity")?.to_owned();
        if kind != "cookie" {
            self.invalid("affinity", &kind, "cookie");
            return None;
        }
        let max_age = self
            .number::<u64>("session-cookie-max-age", "a number of seconds")
            .or_else(|| self.number::<u64>("session-cookie-expires", "a number of seconds"));
        Some(Affinity {
            name: self
                .string("session-cookie-name")
                .unwrap_or(COOKIE_NAME.to_owned()),
            max_age,
            path: self.string("session-cookie-path"),
        })
    }
}

/// nginx's size syntax: bytes, or `k`/`m`/`g` (either case). `0` means unlimited.
fn nginx_size(value: &str) -> Option<u64> {
    let (digits, unit) = match value.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&value[..i], c.to_ascii_lowercase()),
        _ => (value, 'b'),
    };
    let n: u64 = digits.parse().ok()?;
    let scale = match unit {
        'b' => 1,
        'k' => 1 << 10,
        'm' => 1 << 20,
        'g' => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_sizes() {
        assert_eq!(nginx_size("0"), Some(0));
        assert_eq!(nginx_size("1024"), Some(1024));
        assert_eq!(nginx_size("8m"), Some(8 << 20));
        assert_eq!(nginx_size("8M"), Some(8 << 20));
        assert_eq!(nginx_size("512k"), Some(512 << 10));
        assert_eq!(nginx_size("1g"), Some(1 << 30));
        assert_eq!(nginx_size("1t"), None);
        assert_eq!(nginx_size("m"), None);
        assert_eq!(nginx_size(""), None);
    }
}

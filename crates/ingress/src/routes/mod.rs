//! The route table: what the request path reads (through an `ArcSwap`) to pick a backend.

pub(crate) mod build;
mod matching;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use sluice_model::ObjectKey;

pub use build::build_route_table;
use matching::HostRoutes;
pub(crate) use matching::normalize_host;
pub use matching::{PathError, normalize_path};

use crate::tls::{CertCache, CertStore};
use crate::upstream::{Pool, UpstreamEndpoint};

/// A problem with one object, which was skipped (or partly skipped). Displayed as
/// `Ingress default/cafe: secret default/cafe-secret is not a valid kubernetes.io/tls secret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Kind of the object at fault (`Ingress`, `IngressClass`, `EndpointSlice`, ...).
    pub kind: &'static str,
    pub object: ObjectKey,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.kind, self.object, self.message)
    }
}

/// A service port that routes point at, with its ready endpoints.
#[derive(Debug)]
pub struct Backend {
    pub(crate) service: ObjectKey,
    /// The service port as written in the Ingress (number or name).
    pub(crate) port: String,
    pub(crate) pool: Pool,
    /// "default/coffee-svc:80", for logs and error bodies.
    pub(crate) display: Box<str>,
}

impl Backend {
    /// The Service this backend sends to.
    pub fn service(&self) -> &ObjectKey {
        &self.service
    }

    /// The service port as the Ingress names it (a number or a port name).
    pub fn port(&self) -> &str {
        &self.port
    }

    /// Ready endpoint addresses (IP and target port), sorted.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.pool.endpoints.iter().map(|e| e.addr).collect()
    }

    /// Requests currently outstanding per endpoint (what least-requests balancing sees).
    pub fn in_flight(&self) -> Vec<(SocketAddr, usize)> {
        self.pool
            .endpoints
            .iter()
            .map(|e| (e.addr, e.in_flight()))
            .collect()
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

/// Everything the proxy needs to answer requests: routes by host and path, default
/// backends, TLS certificates. Built by [`build_route_table`]; immutable once built.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact_hosts: HashMap<Box<str>, HostRoutes>,
    /// Keyed by the part after `*.`: `*.example.com` is stored as `example.com`.
    wildcard_hosts: HashMap<Box<str>, HostRoutes>,
    /// Rules without a host.
    any_host: Option<HostRoutes>,
    /// Cluster-wide default: `spec.defaultBackend` of the first Ingress (conflict order)
    /// that has one. Without it, unmatched requests get the built-in 404.
    default_backend: Option<Arc<Backend>>,
    pub(crate) certs: CertStore,
    pub(crate) cert_cache: CertCache,
    served: Vec<ObjectKey>,
    /// Every endpoint by address, for the upstream connector's per-endpoint connection
    /// count; filled by [`index_endpoints`](Self::index_endpoints) before the table is served.
    endpoint_index: HashMap<SocketAddr, Arc<UpstreamEndpoint>>,
}

impl RouteTable {
    /// The backend for a request, or `None` for the built-in 404. `host` may carry a port and
    /// any case; `path` must already be normalised ([`normalize_path`]).
    ///
    /// The most specific host entry is chosen (exact, then `*.` wildcard, then rules without
    /// host); a path that matches none of its rules goes to that host's Ingress
    /// `defaultBackend`, else the cluster-wide default backend.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<Backend>> {
        let host = normalize_host(host);
        let routes = self
            .exact_hosts
            .get(&*host)
            .or_else(|| {
                let (_, parent) = host.split_once('.')?;
                self.wildcard_hosts.get(parent)
            })
            .or(self.any_host.as_ref());
        routes
            .and_then(|r| r.lookup(path).or(r.default_backend.as_ref()))
            .or(self.default_backend.as_ref())
    }

    /// The table as sorted text, one route per line (`sluice plan --ingress`, goldens):
    ///
    /// ```text
    /// host cafe.example.com
    ///   exact /tea -> default/tea-svc:80 [10.244.1.2:8080]
    ///   prefix /coffee -> default/coffee-svc:http [10.244.2.3:8080]
    ///   default -> default/fallback:80 []
    /// host *.example.com
    /// any-host
    /// default-backend -> default/fallback:80 []
    /// tls cafe.example.com, *.example.com, default
    /// ```
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let backend = |b: &Backend| {
            let eps: Vec<String> = b.endpoints().iter().map(ToString::to_string).collect();
            format!("{b} [{}]", eps.join(" "))
        };
        let host = |out: &mut String, name: &str, routes: &HostRoutes| {
            let _ = writeln!(out, "host {name}");
            let mut exact: Vec<_> = routes.exact.iter().collect();
            exact.sort_by(|a, b| a.0.cmp(b.0));
            for (path, b) in exact {
                let _ = writeln!(out, "  exact {path} -> {}", backend(b));
            }
            for (prefix, b) in &routes.prefixes {
                let shown = if prefix.is_empty() { "/" } else { prefix };
                let _ = writeln!(out, "  prefix {shown} -> {}", backend(b));
            }
            if let Some(b) = &routes.default_backend {
                let _ = writeln!(out, "  default -> {}", backend(b));
            }
        };
        let mut out = String::new();
        let mut exact: Vec<_> = self.exact_hosts.iter().collect();
        exact.sort_by(|a, b| a.0.cmp(b.0));
        for (name, routes) in exact {
            host(&mut out, name, routes);
        }
        let mut wildcard: Vec<_> = self.wildcard_hosts.iter().collect();
        wildcard.sort_by(|a, b| a.0.cmp(b.0));
        for (parent, routes) in wildcard {
            host(&mut out, &format!("*.{parent}"), routes);
        }
        if let Some(routes) = &self.any_host {
            host(&mut out, "*", routes);
        }
        if let Some(b) = &self.default_backend {
            let _ = writeln!(out, "default-backend -> {}", backend(b));
        }
        let tls = self.certs.names();
        if !tls.is_empty() {
            let _ = writeln!(out, "tls {}", tls.join(", "));
        }
        out
    }

    /// Ingresses of our class that this table serves (for their status).
    pub fn served_ingresses(&self) -> &[ObjectKey] {
        &self.served
    }

    /// Whether some certificate is available for `server_name` (SNI), or a default one.
    pub fn has_certificate_for(&self, server_name: Option<&str>) -> bool {
        self.certs.resolve(server_name).is_some()
    }

    /// Every backend some route (or default) points at; a backend shared by several routes
    /// comes once per route.
    pub(crate) fn backends(&self) -> impl Iterator<Item = &Arc<Backend>> {
        let hosts = self
            .exact_hosts
            .values()
            .chain(self.wildcard_hosts.values())
            .chain(self.any_host.iter());
        hosts
            .flat_map(|h| {
                h.exact
                    .values()
                    .chain(h.prefixes.iter().map(|(_, b)| b))
                    .chain(h.default_backend.iter())
            })
            .chain(self.default_backend.iter())
    }

    /// Endpoint states by address, so a rebuilt table keeps the request counters.
    pub(crate) fn endpoint_states(&self) -> HashMap<SocketAddr, Arc<UpstreamEndpoint>> {
        self.backends()
            .flat_map(|b| b.pool.endpoints.iter())
            .map(|e| (e.addr, Arc::clone(e)))
            .collect()
    }

    /// Fills the endpoint index (done once per table, off the request path).
    pub(crate) fn index_endpoints(&mut self) {
        self.endpoint_index = self.endpoint_states();
    }

    /// The endpoint at `addr`, if the table has one.
    pub(crate) fn endpoint(&self, addr: SocketAddr) -> Option<&Arc<UpstreamEndpoint>> {
        self.endpoint_index.get(&addr)
    }
}

#[cfg(test)]
mod tests;

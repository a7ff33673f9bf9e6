//! The route table: what the request path reads (through an `ArcSwap`) to pick a route. Built
//! from a [`RoutePlan`] (every decision already made by `sluice-routes`); this module only
//! arranges it for fast lookups.

mod build;
mod matching;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use sluice_plan::{ObjectName, RouteAction, RoutePlan, ServiceName};

pub(crate) use build::build;
use matching::HostRoutes;
pub(crate) use matching::normalize_host;
pub use matching::{PathError, normalize_path};

use crate::options::RouteRuntime;
use crate::tls::{CertCache, CertStore, CertificateChoice};
use crate::upstream::{Pool, UpstreamEndpoint};

/// A service port that routes point at, with its ready endpoints.
#[derive(Debug)]
pub struct Backend {
    pub(crate) service: ServiceName,
    /// The service port as written in the Ingress (number or name).
    pub(crate) port: Arc<str>,
    pub(crate) pool: Pool,
    /// "default/coffee-svc:80", for logs and error bodies.
    pub(crate) display: Box<str>,
}

impl Backend {
    /// The Service this backend sends to.
    pub fn service(&self) -> &ServiceName {
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

/// One route: where a matched request goes (`None`: the built-in 404) and how.
#[derive(Debug)]
pub struct Route {
    pub(crate) ingress: ObjectName,
    /// What the plan decided for this route (backend and options), for explaining it.
    pub(crate) action: RouteAction,
    /// Which rule of the plan this is: `host cafe.example.com, prefix /coffee`.
    pub(crate) rule: Box<str>,
    pub(crate) backend: Option<Arc<Backend>>,
    pub(crate) options: RouteRuntime,
    /// The route's own regex (regex hosts), for `rewrite-target` capture groups.
    pub(crate) regex: Option<regex::Regex>,
}

impl Route {
    /// The backend, or `None` for the built-in 404.
    pub fn backend(&self) -> Option<&Arc<Backend>> {
        self.backend.as_ref()
    }

    /// The Ingress this route comes from.
    pub fn ingress(&self) -> &ObjectName {
        &self.ingress
    }

    /// The plan's decision this route executes.
    pub fn action(&self) -> &RouteAction {
        &self.action
    }

    /// Which rule of the plan matched: `host cafe.example.com, prefix /coffee`,
    /// `host cafe.example.com, default`, `default-backend`.
    pub fn rule(&self) -> &str {
        &self.rule
    }
}

/// Everything the proxy needs to answer requests: routes by host and path, default routes,
/// TLS certificates. Built from a plan; immutable once built.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact_hosts: HashMap<Box<str>, HostRoutes>,
    /// Keyed by the part after `*.`: `*.example.com` is stored as `example.com`.
    wildcard_hosts: HashMap<Box<str>, HostRoutes>,
    /// Rules without a host.
    any_host: Option<HostRoutes>,
    /// Hosts no rule names. `None`: the built-in 404.
    default_route: Option<Arc<Route>>,
    pub(crate) certs: CertStore,
    pub(crate) cert_cache: CertCache,
    served: Vec<ObjectName>,
    /// The plan this table executes.
    pub(crate) plan: Arc<RoutePlan>,
    /// Every endpoint by address, for the upstream connector's per-endpoint connection
    /// count; filled by [`index_endpoints`](Self::index_endpoints) before the table is served.
    endpoint_index: HashMap<SocketAddr, Arc<UpstreamEndpoint>>,
    /// Per-route limiter state by route identity, carried to the next table.
    pub(crate) limiters: crate::options::Limiters,
}

impl RouteTable {
    /// The route for a request, or `None` for the built-in 404. `host` may carry a port and
    /// any case; `path` must already be normalised ([`normalize_path`]).
    ///
    /// The most specific host entry (exact, then `*.` wildcard, then rules without host);
    /// paths only inside it, else its default route; hosts no rule names get the catch-all.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        let host = normalize_host(host);
        let routes = self
            .exact_hosts
            .get(&*host)
            .or_else(|| {
                let (_, parent) = host.split_once('.')?;
                self.wildcard_hosts.get(parent)
            })
            .or(self.any_host.as_ref());
        match routes {
            Some(routes) => Some(routes.lookup(path)),
            None => self.default_route.as_ref(),
        }
    }

    /// Ingresses of our classes that this table serves (for their status).
    pub fn served_ingresses(&self) -> &[ObjectName] {
        &self.served
    }

    /// The route plan this table was built from.
    pub fn plan(&self) -> &Arc<RoutePlan> {
        &self.plan
    }

    /// Whether some certificate is available for `server_name` (SNI), or a default one.
    pub fn has_certificate_for(&self, server_name: Option<&str>) -> bool {
        self.certs.resolve(server_name).is_some()
    }

    /// Which certificate a handshake for `server_name` (SNI) gets; `None`: it fails.
    pub fn certificate_for(&self, server_name: Option<&str>) -> Option<CertificateChoice> {
        self.certs.choice(server_name)
    }

    /// Every route of the table.
    fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        let hosts = self
            .exact_hosts
            .values()
            .chain(self.wildcard_hosts.values())
            .chain(self.any_host.iter());
        hosts
            .flat_map(HostRoutes::routes)
            .chain(self.default_route.iter())
    }

    /// Every backend some route points at (its canary included); a backend shared by several
    /// routes comes once per route.
    pub(crate) fn backends(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.routes().flat_map(|r| {
            let canary = r.options.canary.as_ref().map(|c| &c.backend);
            r.backend.iter().chain(canary)
        })
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

//! RoutePlan → RouteTable: lookup structures, shared backends with their endpoint state
//! (carried over from the previous table by address), per-route runtime options, TLS keys.
//! Nothing here decides routing: the plan already did.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use sluice_plan::{
    BackendPlan, BackendProtocol, HostMatch, HostPlan, PathKind, PathRule, RouteAction, RoutePlan,
    RouteWarning, ServiceName, UpstreamTls,
};

use super::matching::HostRoutes;
use super::{Backend, Route, RouteTable};
use crate::options::{Limiters, RouteRuntime};
use crate::upstream::{Pool, TlsClient, UpstreamEndpoint};

/// Largest compiled size of one path regex.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The pooled client for an upstream TLS setting (`true`: HTTP/2), from the proxy's cache.
pub(crate) type TlsClients<'a> = dyn FnMut(&UpstreamTls, bool) -> Arc<TlsClient> + 'a;

/// Builds the table for `plan`; `previous` lends endpoint counters, limiter state and
/// parsed certificates, `tls_clients` the clients of HTTPS and GRPCS routes. Returns the
/// problems found (certificates that do not load, regexes that do not compile, upstream TLS
/// settings that cannot be used), each naming its object.
pub(crate) fn build(
    plan: &RoutePlan,
    previous: Option<&RouteTable>,
    tls_clients: &mut TlsClients<'_>,
) -> (RouteTable, Vec<RouteWarning>) {
    let mut b = Builder {
        tls_clients,
        previous_endpoints: previous
            .map(RouteTable::endpoint_states)
            .unwrap_or_default(),
        previous_limiters: previous.map(|t| &t.limiters),
        limiters: Limiters::default(),
        backends: HashMap::new(),
        warnings: Vec::new(),
    };
    let mut table = RouteTable::default();
    for host in &plan.hosts {
        let routes = b.host(host);
        match &host.host {
            HostMatch::Exact(name) => drop(table.exact_hosts.insert(name.as_ref().into(), routes)),
            HostMatch::Wildcard(parent) => {
                drop(table.wildcard_hosts.insert(parent.as_ref().into(), routes))
            }
            HostMatch::Any => table.any_host = Some(routes),
        }
    }
    table.default_route = plan
        .default_backend
        .as_ref()
        .map(|action| b.route(action, "*", "default-backend", None));
    let (certs, cache, cert_warnings) =
        crate::tls::build(&plan.tls, previous.map(|t| &t.cert_cache));
    table.certs = certs;
    table.cert_cache = cache;
    table.served = plan.served.clone();
    table.plan = Arc::new(plan.clone());
    table.limiters = b.limiters;
    let mut warnings = b.warnings;
    warnings.extend(cert_warnings);
    (table, warnings)
}

struct Builder<'a> {
    tls_clients: &'a mut TlsClients<'a>,
    previous_endpoints: HashMap<SocketAddr, Arc<UpstreamEndpoint>>,
    previous_limiters: Option<&'a Limiters>,
    limiters: Limiters,
    /// One backend per (service, port), shared by every route naming it.
    backends: HashMap<(ServiceName, Arc<str>), Arc<Backend>>,
    warnings: Vec<RouteWarning>,
}

impl Builder<'_> {
    fn host(&mut self, host: &HostPlan) -> HostRoutes {
        let name = host.host.to_string();
        let mut routes = HostRoutes::new(self.route(&host.default, &name, "default", None));
        for rule in &host.paths {
            self.add_path(&mut routes, &name, rule);
        }
        // Stable: the plan's order among prefixes of equal length is kept.
        routes
            .prefixes
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        routes
    }

    fn add_path(&mut self, routes: &mut HostRoutes, host: &str, rule: &PathRule) {
        let id = format!("{} {}", rule.kind.as_str(), rule.path);
        if rule.kind == PathKind::Regex {
            match regex::RegexBuilder::new(&rule.path)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
            {
                Ok(re) => {
                    let route = self.route(&rule.action, host, &id, Some(re));
                    routes.regexes.push(route);
                }
                Err(e) => self.warnings.push(RouteWarning {
                    kind: "Ingress",
                    object: rule.action.ingress.clone(),
                    message: format!(
                        "path {:?} on host {host:?} does not compile: {e}; path skipped",
                        rule.path
                    ),
                }),
            }
            return;
        }
        let route = self.route(&rule.action, host, &id, None);
        if let Some(exact) = rule.exact() {
            routes
                .exact
                .entry(exact.into())
                .or_insert_with(|| Arc::clone(&route));
        }
        if let Some(prefix) = rule.prefix() {
            routes.prefixes.push((prefix.into(), route));
        }
    }

    /// A route; `id` (host, kind and path) names it for its limiter state.
    fn route(
        &mut self,
        action: &RouteAction,
        host: &str,
        id: &str,
        regex: Option<regex::Regex>,
    ) -> Arc<Route> {
        let backend = action.backend.as_ref().map(|b| self.backend(b));
        let canary = action
            .options
            .canary
            .as_ref()
            .map(|c| self.backend(&c.backend));
        let key = format!("{} {host} {id}", action.ingress);
        let mut options = RouteRuntime::compile(
            &action.options,
            canary,
            &key,
            self.previous_limiters,
            &mut self.limiters,
        );
        if let Some(tls) = &action.options.upstream_tls {
            let h2 = action.options.protocol == BackendProtocol::Grpcs;
            let client = (self.tls_clients)(tls, h2);
            if let Err(why) = client.as_ref() {
                self.warnings.push(RouteWarning {
                    kind: "Ingress",
                    object: action.ingress.clone(),
                    message: format!(
                        "upstream TLS settings (backend-protocol {}, proxy-ssl-*) cannot be used: {why}; requests on host {host:?} get 502",
                        action.options.protocol.as_str()
                    ),
                });
            }
            options.tls = Some(client);
        }
        let rule = if id == "default-backend" {
            id.into()
        } else {
            format!("host {host}, {id}").into()
        };
        Arc::new(Route {
            ingress: action.ingress.clone(),
            action: action.clone(),
            rule,
            backend,
            options,
            regex,
        })
    }

    fn backend(&mut self, plan: &BackendPlan) -> Arc<Backend> {
        let key = (plan.service.clone(), Arc::clone(&plan.port));
        if let Some(b) = self.backends.get(&key) {
            return Arc::clone(b);
        }
        let endpoints = plan
            .endpoints
            .iter()
            .filter_map(|addr| match self.previous_endpoints.get(addr) {
                Some(state) => Some(Arc::clone(state)),
                None => UpstreamEndpoint::new(*addr).map(Arc::new),
            })
            .collect();
        let backend = Arc::new(Backend {
            display: plan.to_string().into(),
            service: plan.service.clone(),
            port: Arc::clone(&plan.port),
            pool: Pool { endpoints },
        });
        self.backends.insert(key, Arc::clone(&backend));
        backend
    }
}

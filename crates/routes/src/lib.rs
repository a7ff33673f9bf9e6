//! Ingress semantics, once: the cluster [`Snapshot`] (Ingresses, IngressClasses, Services,
//! EndpointSlices, Secrets) becomes the proxy's [`RoutePlan`].
//!
//! Pure and deterministic: no I/O, no clock (the caller passes `now`, used only to tell
//! expired certificates apart). Every decision the proxy executes is made here, the way
//! ingress-nginx makes it:
//!
//! * which Ingresses are ours ([`RouteConfig`]: IngressClass controller, class names served,
//!   Ingresses without class);
//! * conflict order (oldest `creationTimestamp` first, an Ingress without one last, then
//!   namespace/name), host merging, path conflicts (the loser is warned, naming the winner),
//!   regex hosts (`use-regex` / `rewrite-target` make every path of the host a
//!   case-insensitive regex, ordered as ingress-nginx orders its locations);
//! * default backends (a host's own Ingress `defaultBackend`, else the built-in 404; the
//!   catch-all only for hosts no rule names);
//! * `nginx.ingress.kubernetes.io/*` annotations into typed [`RouteOptions`]; snippets and
//!   unknown annotations are never executed and always warned about;
//! * canaries merged into their primary's route; TLS certificates per SNI name, best first.
//!
//! Every skipped or partly skipped object gets a [`RouteWarning`] naming it.

#![forbid(unsafe_code)]

mod annotations;
mod auth;
mod backends;
mod classes;
mod hosts;
mod tls;
mod upstream_tls;

use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::networking::v1::Ingress;
use sluice_model::{NodeInfo, ObjectKey, Snapshot};
pub use sluice_plan::{ObjectName, RoutePlan, RouteWarning};

pub use annotations::ANNOTATION_PREFIX;
pub use classes::{CLASS_ANNOTATION, DEFAULT_CLASS_ANNOTATION};
pub use sluice_model::ingress::referenced_secrets;

/// Which Ingresses this proxy serves, and cluster-wide TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// IngressClasses whose `spec.controller` is this value are ours (`--ingress-controller`).
    pub controller: String,
    /// Class names served in addition, whatever controller their IngressClass names (or
    /// without an IngressClass object): `--ingress-class`, as ingress-nginx's flag. Lets
    /// sluice take over `ingressClassName: nginx` Ingresses.
    pub classes: Vec<String>,
    /// Also serve Ingresses that name no class at all (`--watch-ingress-without-class`).
    pub watch_without_class: bool,
    /// Secret whose certificate answers handshakes no `tls` section matches (it must be in
    /// the snapshot).
    pub default_certificate: Option<ObjectKey>,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            controller: "sluice.dev/ingress".to_owned(),
            classes: Vec::new(),
            watch_without_class: false,
            default_certificate: None,
        }
    }
}

/// Plans the routes of the Ingresses of our classes in `snapshot`. `node` shapes endpoint
/// choice as for any traffic leaving this node (topology hints); `now` decides which
/// certificates are expired.
pub fn plan(
    snapshot: &Snapshot,
    node: &NodeInfo,
    config: &RouteConfig,
    now: SystemTime,
) -> (RoutePlan, Vec<RouteWarning>) {
    let mut warnings = Warnings::default();
    let ingresses = classes::served_ingresses(snapshot, config);
    let parsed: Vec<annotations::Parsed> = ingresses
        .iter()
        .map(|(key, ingress)| annotations::parse(key, ingress, snapshot, &mut warnings))
        .collect();
    let mut backends = backends::Resolver::new(snapshot, node);
    let tls_hosts = tls::TlsHosts::collect(&ingresses, &parsed);
    let mut hosts = hosts::HostsBuilder::default();
    for ((key, ingress), parsed) in ingresses.iter().zip(&parsed) {
        if parsed.canary.is_none() {
            hosts.add_ingress(
                key,
                ingress,
                parsed,
                &tls_hosts,
                &mut backends,
                &mut warnings,
            );
        }
    }
    for ((key, ingress), parsed) in ingresses.iter().zip(&parsed) {
        if let Some(canary) = &parsed.canary {
            hosts.add_canary(key, ingress, canary, &mut backends, &mut warnings);
        }
    }
    let mut routes = hosts.finish(&mut warnings);
    warnings.extend(backends.take_warnings());
    routes.tls = tls::plan(snapshot, &ingresses, &parsed, config, now, &mut warnings);
    routes.served = ingresses.iter().map(|(k, _)| name(k)).collect();
    routes.served.sort();
    let mut warnings = warnings.0;
    warnings.sort();
    warnings.dedup();
    (routes, warnings)
}

/// `namespace/name` of an object key, as the plan spells it.
pub(crate) fn name(key: &ObjectKey) -> ObjectName {
    ObjectName::new(key.namespace.as_str(), key.name.as_str())
}

/// An Ingress with its key, in conflict order.
pub(crate) type Served<'a> = (&'a ObjectKey, &'a Arc<Ingress>);

/// Problems found while planning.
#[derive(Debug, Default)]
pub(crate) struct Warnings(Vec<RouteWarning>);

impl Warnings {
    pub(crate) fn ingress(&mut self, ingress: &ObjectKey, message: impl Into<String>) {
        self.add("Ingress", ingress, message);
    }

    pub(crate) fn add(&mut self, kind: &'static str, key: &ObjectKey, message: impl Into<String>) {
        self.0.push(RouteWarning {
            kind,
            object: name(key),
            message: message.into(),
        });
    }

    pub(crate) fn extend(&mut self, more: Vec<RouteWarning>) {
        self.0.extend(more);
    }
}

//! Feeding the Ingress proxy: the routes are planned by `sluice-routes` from the whole
//! snapshot, but only when something they use changed (an Ingress, IngressClass or Secret, a
//! Service an Ingress routes to or its EndpointSlices, this node's Node object), so that a
//! change elsewhere costs them nothing.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use sluice_ingress::IngressProxy;
use sluice_model::{ChangeSet, NodeInfo, ObjectKey, Snapshot};
use sluice_routes::{RouteConfig, RouteWarning};

/// What one [`IngressFeed::feed`] did.
pub(super) struct Fed<'a> {
    /// The routes were planned again and the proxy's table swapped.
    pub(super) swapped: bool,
    /// The warnings of the current routes.
    pub(super) warnings: &'a [RouteWarning],
}

#[derive(Default)]
pub(super) struct IngressFeed {
    /// Services some Ingress routes to (as of the last Ingress change).
    backends: BTreeSet<ObjectKey>,
    /// This node's addresses as last given to the proxy.
    local_addresses: Vec<IpAddr>,
    /// What the last planning and execution of the routes warned about.
    warnings: Vec<RouteWarning>,
    log: WarningLog,
}

impl IngressFeed {
    /// Tells the proxy this node's addresses when they changed (it never dials its own
    /// listeners: a request loop would eat every descriptor) and plans its routes again when
    /// `changes` touch anything they use. Returns what happened, with the warnings of the
    /// current routes (for the Ingress status and Events); `None` when nothing did.
    pub(super) fn feed(
        &mut self,
        proxy: &IngressProxy,
        config: &RouteConfig,
        snapshot: &Snapshot,
        changes: &ChangeSet,
        node: &NodeInfo,
    ) -> Option<Fed<'_>> {
        let local_addresses = node.addresses.as_slice();
        let moved = self.local_addresses != local_addresses;
        if moved {
            self.local_addresses = local_addresses.to_vec();
            proxy.set_local_addresses(local_addresses.iter().copied());
        }
        let relevant = self.relevant(snapshot, changes, &node.name);
        if relevant {
            let now = std::time::SystemTime::now();
            let (routes, mut warnings) = sluice_routes::plan(snapshot, node, config, now);
            warnings.extend(proxy.update(&routes));
            self.warnings = warnings;
            self.log
                .update("ingress", self.warnings.iter().map(ToString::to_string));
        }
        (relevant || moved || !changes.nodes.is_empty()).then_some(Fed {
            swapped: relevant,
            warnings: &self.warnings,
        })
    }

    fn relevant(&mut self, snapshot: &Snapshot, changes: &ChangeSet, node: &str) -> bool {
        if changes.everything
            || !changes.ingresses.is_empty()
            || !changes.ingress_classes.is_empty()
            || !changes.secrets.is_empty()
            // Its zone decides which endpoints topology hints give this node.
            || changes.nodes.contains(&ObjectKey::cluster(node))
        {
            self.backends = snapshot
                .ingresses
                .iter()
                .flat_map(|(key, ingress)| backend_services(key, ingress))
                .collect();
            return true;
        }
        changes
            .services
            .iter()
            .any(|key| self.backends.contains(key))
            || changes
                .endpoint_slices
                .iter()
                .any(|key| snapshot.slice_may_belong_to(key, &self.backends))
    }
}

/// The Services an Ingress routes to (default backend and every path), in its namespace.
fn backend_services(key: &ObjectKey, ingress: &Ingress) -> Vec<ObjectKey> {
    let Some(spec) = ingress.spec.as_ref() else {
        return Vec::new();
    };
    let paths = spec
        .rules
        .iter()
        .flatten()
        .filter_map(|rule| rule.http.as_ref())
        .flat_map(|http| http.paths.iter().map(|path| &path.backend));
    let service = |backend: &IngressBackend| {
        let name = &backend.service.as_ref()?.name;
        Some(ObjectKey::new(key.namespace.clone(), name.clone()))
    };
    spec.default_backend
        .iter()
        .chain(paths)
        .filter_map(service)
        .collect()
}

/// Logs each distinct warning once, and again only after it went away and came back.
#[derive(Default)]
struct WarningLog {
    seen: BTreeSet<String>,
}

impl WarningLog {
    fn update(&mut self, what: &str, warnings: impl IntoIterator<Item = String>) {
        let now: BTreeSet<String> = warnings.into_iter().collect();
        for warning in now.difference(&self.seen) {
            tracing::warn!("{what}: skipped {warning}");
        }
        self.seen = now;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sluice_model::SERVICE_NAME_LABEL;

    use super::*;

    fn snapshot() -> Snapshot {
        let ingress: Ingress = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "shop", "name": "web"},
            "spec": {"defaultBackend": {"service": {"name": "fallback", "port": {"number": 80}}},
                     "rules": [{"http": {"paths": [{"path": "/", "pathType": "Prefix",
                        "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}
        }))
        .unwrap();
        let slice = |service: &str| {
            Arc::new(
                serde_json::from_value(serde_json::json!({
                    "metadata": {"namespace": "shop", "name": format!("{service}-1"),
                                 "labels": {SERVICE_NAME_LABEL: service}},
                    "addressType": "IPv4", "endpoints": []
                }))
                .unwrap(),
            )
        };
        let mut s = Snapshot::default();
        s.ingresses
            .insert(ObjectKey::new("shop", "web"), Arc::new(ingress));
        for service in ["web", "other"] {
            s.endpoint_slices.insert(
                ObjectKey::new("shop", format!("{service}-1")),
                slice(service),
            );
        }
        s
    }

    fn changes(f: impl FnOnce(&mut ChangeSet)) -> ChangeSet {
        let mut c = ChangeSet::default();
        f(&mut c);
        c
    }

    #[test]
    fn only_changes_to_what_ingresses_use_rebuild_the_routes() {
        let s = snapshot();
        let mut feed = IngressFeed::default();
        let relevant = |feed: &mut IngressFeed, c: &ChangeSet| feed.relevant(&s, c, "node-a");
        assert!(relevant(&mut feed, &ChangeSet::everything()));
        let key = |name: &str| ObjectKey::new("shop", name);
        assert!(relevant(
            &mut feed,
            &changes(|c| c.services = [key("web")].into())
        ));
        assert!(relevant(
            &mut feed,
            &changes(|c| c.services = [key("fallback")].into())
        ));
        assert!(!relevant(
            &mut feed,
            &changes(|c| c.services = [key("other")].into())
        ));
        assert!(relevant(
            &mut feed,
            &changes(|c| c.endpoint_slices = [key("web-1")].into())
        ));
        assert!(!relevant(
            &mut feed,
            &changes(|c| c.endpoint_slices = [key("other-1")].into())
        ));
        assert!(relevant(
            &mut feed,
            &changes(|c| c.endpoint_slices = [key("gone-1")].into())
        ));
        assert!(relevant(
            &mut feed,
            &changes(|c| c.secrets = [key("cert")].into())
        ));
        assert!(!relevant(&mut feed, &ChangeSet::default()));
        // This node's Node object (its zone decides topology hints), not another's.
        let node = |name: &str| ObjectKey::cluster(name);
        assert!(relevant(
            &mut feed,
            &changes(|c| c.nodes = [node("node-a")].into())
        ));
        assert!(!relevant(
            &mut feed,
            &changes(|c| c.nodes = [node("node-b")].into())
        ));
    }
}

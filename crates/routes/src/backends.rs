//! Ingress backend references → Service ports with their ready endpoints.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::IngressBackend;
use sluice_model::EndpointSlice;
use sluice_model::{NodeInfo, ObjectKey, Protocol, Snapshot};
use sluice_plan::{BackendPlan, RouteWarning, ServiceName};

use crate::Warnings;

/// Resolves backends once per (service, port) and remembers what was wrong with each, so
/// every Ingress naming a broken one is warned.
pub(crate) struct Resolver<'a> {
    snapshot: &'a Snapshot,
    node: &'a NodeInfo,
    slices: BTreeMap<ObjectKey, Vec<&'a Arc<EndpointSlice>>>,
    cache: BTreeMap<(ObjectKey, String), Resolved>,
    /// Problems with other objects (EndpointSlices), reported once.
    other: Vec<RouteWarning>,
}

struct Resolved {
    backend: Arc<BackendPlan>,
    /// What each referencing Ingress is warned about (missing Service, port, ...).
    problems: Vec<String>,
}

impl<'a> Resolver<'a> {
    pub(crate) fn new(snapshot: &'a Snapshot, node: &'a NodeInfo) -> Self {
        Self {
            snapshot,
            node,
            slices: snapshot.slices_by_service(),
            cache: BTreeMap::new(),
            other: Vec::new(),
        }
    }

    pub(crate) fn take_warnings(&mut self) -> Vec<RouteWarning> {
        std::mem::take(&mut self.other)
    }

    /// The backend for an Ingress backend reference; `None` (with a warning) when the
    /// reference itself is unusable. A missing Service or port still gives a backend, with no
    /// endpoints, so requests get a clear 503.
    pub(crate) fn backend(
        &mut self,
        ingress: &ObjectKey,
        backend: &IngressBackend,
        warnings: &mut Warnings,
    ) -> Option<Arc<BackendPlan>> {
        let Some(service) = backend.service.as_ref() else {
            let message = if backend.resource.is_some() {
                "resource backends are not supported; skipped"
            } else {
                "backend names no service; skipped"
            };
            warnings.ingress(ingress, message);
            return None;
        };
        let port = service.port.as_ref();
        let port = match (
            port.and_then(|p| p.number),
            port.and_then(|p| p.name.as_deref()),
        ) {
            (Some(n), _) => n.to_string(),
            (None, Some(name)) if !name.is_empty() => name.to_owned(),
            _ => {
                let message = format!(
                    "backend service {} has no port number or name; skipped",
                    service.name
                );
                warnings.ingress(ingress, message);
                return None;
            }
        };
        let key = (
            ObjectKey::new(ingress.namespace.as_str(), service.name.as_str()),
            port,
        );
        if !self.cache.contains_key(&key) {
            let resolved = self.resolve(&key.0, &key.1);
            self.cache.insert(key.clone(), resolved);
        }
        let resolved = &self.cache[&key];
        for problem in &resolved.problems {
            warnings.ingress(ingress, problem.clone());
        }
        Some(Arc::clone(&resolved.backend))
    }

    fn resolve(&mut self, service_key: &ObjectKey, port: &str) -> Resolved {
        let mut problems = Vec::new();
        let endpoints = self.endpoints(service_key, port, &mut problems);
        Resolved {
            backend: Arc::new(BackendPlan {
                service: ServiceName::new(
                    service_key.namespace.as_str(),
                    service_key.name.as_str(),
                ),
                port: port.into(),
                endpoints,
            }),
            problems,
        }
    }

    /// Ready endpoints of a service port: the EndpointSlice port with the service port's name.
    fn endpoints(
        &mut self,
        service_key: &ObjectKey,
        port: &str,
        problems: &mut Vec<String>,
    ) -> Vec<SocketAddr> {
        let Some(service) = self.snapshot.services.get(service_key) else {
            problems.push(format!("service {service_key} not found"));
            return Vec::new();
        };
        let spec = service.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            problems.push(format!(
                "service {service_key} is an ExternalName service, which ingress does not support"
            ));
            return Vec::new();
        }
        let service_port = spec
            .into_iter()
            .flat_map(|s| s.ports.iter().flatten())
            .find(|p| {
                let tcp = p.protocol.as_deref().unwrap_or("TCP") == "TCP";
                tcp && match port.parse::<i32>() {
                    Ok(n) => p.port == n,
                    Err(_) => p.name.as_deref() == Some(port),
                }
            });
        let Some(service_port) = service_port else {
            problems.push(format!("service {service_key} has no TCP port {port}"));
            return Vec::new();
        };
        let port_name = service_port.name.as_deref().unwrap_or("");
        // Which endpoints serve (ready, else serving+terminating, first address, the slice
        // port of the same name, topology hints for this node) is kube-proxy's rule, kept
        // once in compute.
        let mut slice_warnings = Vec::new();
        let slices = self
            .slices
            .get(service_key)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let endpoints = sluice_compute::port_endpoints(
            service,
            port_name,
            Protocol::Tcp,
            slices,
            self.node,
            &mut slice_warnings,
        );
        for warning in slice_warnings {
            let slice = warning
                .object
                .strip_prefix("EndpointSlice ")
                .and_then(|key| key.split_once('/'))
                .map(|(namespace, name)| ObjectKey::new(namespace, name))
                .unwrap_or_else(|| service_key.clone());
            self.other.push(RouteWarning {
                kind: "EndpointSlice",
                object: crate::name(&slice),
                message: warning.message,
            });
        }
        let mut addrs: Vec<SocketAddr> = endpoints
            .iter()
            .map(|e| SocketAddr::new(e.ip, e.port))
            .collect();
        addrs.sort();
        addrs.dedup();
        addrs
    }
}

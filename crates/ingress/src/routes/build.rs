//! Snapshot → RouteTable: class selection, rule merging in conflict order, backend and
//! certificate resolution. Pure: no I/O, deterministic for a given snapshot.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use rustls::sign::CertifiedKey;
use sluice_model::{NodeInfo, ObjectKey, Protocol, Snapshot};

use super::matching::{HostRoutes, PathKind};
use super::{Backend, RouteTable, Warning};
use crate::IngressConfig;
use crate::upstream::{Pool, UpstreamEndpoint};

/// Legacy class annotation on an Ingress.
const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// Marks the IngressClass used by Ingresses that name no class.
const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// Builds the route table for the Ingresses of our class in `snapshot`.
///
/// Ingresses are taken in conflict order: oldest `creationTimestamp` first, then by
/// namespace/name. When two Ingresses define the same host, path and path type, the first one
/// wins and the other gets a warning. Bad parts of an Ingress (unknown path type, missing
/// Secret, resource backend, ...) are skipped with a warning naming the Ingress; the rest of
/// it is still served.
pub fn build_route_table(
    snapshot: &Snapshot,
    config: &IngressConfig,
) -> (RouteTable, Vec<Warning>) {
    build(snapshot, config, None)
}

pub(crate) fn build(
    snapshot: &Snapshot,
    config: &IngressConfig,
    previous: Option<&RouteTable>,
) -> (RouteTable, Vec<Warning>) {
    let mut b = Builder {
        snapshot,
        previous_endpoints: previous
            .map(RouteTable::endpoint_states)
            .unwrap_or_default(),
        previous_certs: previous.map(|t| &t.cert_cache),
        slices: snapshot.slices_by_service(),
        backends: BTreeMap::new(),
        warnings: Vec::new(),
        table: RouteTable::default(),
        hostless_cert: None,
        first_cert: None,
    };
    let classes = OurClasses::new(snapshot, config);
    let mut ingresses: Vec<(&ObjectKey, &Ingress)> = snapshot
        .ingresses
        .iter()
        .map(|(k, i)| (k, i.as_ref()))
        .filter(|(_, i)| classes.owns(i))
        .collect();
    ingresses.sort_by(|(ka, a), (kb, b)| {
        (&a.metadata.creation_timestamp, ka).cmp(&(&b.metadata.creation_timestamp, kb))
    });
    for (key, ingress) in ingresses {
        b.add_ingress(key, ingress);
        b.table.served.push(key.clone());
    }
    b.finish(config);
    (b.table, b.warnings)
}

struct OurClasses<'a> {
    names: HashSet<&'a str>,
    default: bool,
}

impl<'a> OurClasses<'a> {
    fn new(snapshot: &'a Snapshot, config: &IngressConfig) -> Self {
        let mut names = HashSet::new();
        let mut default = false;
        for class in snapshot.ingress_classes.values() {
            let ours = class.spec.as_ref().and_then(|s| s.controller.as_deref())
                == Some(config.controller_name.as_str());
            let Some(name) = class.metadata.name.as_deref() else {
                continue;
            };
            if ours {
                names.insert(name);
                default |= class
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                    .is_some_and(|v| v == "true");
            }
        }
        Self { names, default }
    }

    /// `spec.ingressClassName` first, then the legacy annotation, then the default class.
    fn owns(&self, ingress: &Ingress) -> bool {
        if let Some(name) = ingress
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref())
        {
            return self.names.contains(name);
        }
        let annotation = ingress
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CLASS_ANNOTATION));
        match annotation {
            Some(name) => self.names.contains(name.as_str()),
            None => self.default,
        }
    }
}

struct Builder<'a> {
    snapshot: &'a Snapshot,
    previous_endpoints: HashMap<SocketAddr, Arc<UpstreamEndpoint>>,
    previous_certs: Option<&'a crate::tls::CertCache>,
    slices: BTreeMap<ObjectKey, Vec<&'a Arc<EndpointSlice>>>,
    /// One backend per (service, port), shared by every route naming it.
    backends: BTreeMap<(ObjectKey, String), Arc<Backend>>,
    warnings: Vec<Warning>,
    table: RouteTable,
    hostless_cert: Option<Arc<CertifiedKey>>,
    first_cert: Option<Arc<CertifiedKey>>,
}

impl Builder<'_> {
    /// Records a problem; the caller of the build logs it (once, not on every rebuild).
    fn warn(&mut self, kind: &'static str, object: &ObjectKey, message: String) {
        self.warnings.push(Warning {
            kind,
            object: object.clone(),
            message,
        });
    }

    fn add_ingress(&mut self, key: &ObjectKey, ingress: &Ingress) {
        let Some(spec) = ingress.spec.as_ref() else {
            self.warn("Ingress", key, "has no spec".to_owned());
            return;
        };
        let default_backend = spec
            .default_backend
            .as_ref()
            .and_then(|backend| self.backend(key, backend));
        if self.table.default_backend.is_none() {
            self.table.default_backend.clone_from(&default_backend);
        }
        for rule in spec.rules.iter().flatten() {
            let host = rule.host.as_deref().unwrap_or("").to_ascii_lowercase();
            let valid_host = match host.strip_prefix("*.") {
                Some(rest) => !rest.is_empty() && !rest.contains('*'),
                None => !host.contains('*'),
            };
            if !valid_host {
                self.warn(
                    "Ingress",
                    key,
                    format!("host {host:?} is not a valid host or *. wildcard; rule skipped"),
                );
                continue;
            }
            let mut paths = Vec::new();
            for path in rule.http.iter().flat_map(|h| h.paths.iter()) {
                let kind = match path.path_type.as_str() {
                    "Exact" => PathKind::Exact,
                    // Documented choice: ImplementationSpecific behaves as Prefix.
                    "Prefix" | "ImplementationSpecific" => PathKind::Prefix,
                    other => {
                        self.warn("Ingress", key, format!("path type {other:?} is not Exact, Prefix or ImplementationSpecific; path skipped"));
                        continue;
                    }
                };
                let value = path.path.as_deref().unwrap_or("/");
                if !value.starts_with('/') {
                    self.warn(
                        "Ingress",
                        key,
                        format!("path {value:?} does not start with '/'; path skipped"),
                    );
                    continue;
                }
                let Some(backend) = self.backend(key, &path.backend) else {
                    continue;
                };
                paths.push((kind, value, backend));
            }
            let routes = self.host_routes(&host);
            if routes.default_backend.is_none() {
                routes.default_backend.clone_from(&default_backend);
            }
            let mut conflicts = Vec::new();
            for (kind, value, backend) in paths {
                if !routes.insert(kind, value, backend) {
                    conflicts.push(format!(
                        "{kind:?} path {value:?} on host {host:?} is already routed by an earlier Ingress (or rule); ignored"
                    ));
                }
            }
            for message in conflicts {
                self.warn("Ingress", key, message);
            }
        }
        for tls in spec.tls.iter().flatten() {
            let Some(secret_name) = tls.secret_name.as_deref() else {
                self.warn(
                    "Ingress",
                    key,
                    "tls entry has no secretName; skipped".to_owned(),
                );
                continue;
            };
            let secret_key = ObjectKey::new(key.namespace.clone(), secret_name);
            let Some(cert) = self.certificate(key, &secret_key) else {
                continue;
            };
            let hosts = tls.hosts.as_deref().unwrap_or_default();
            for host in hosts {
                self.table.certs.insert(&host.to_ascii_lowercase(), &cert);
            }
            if hosts.is_empty() && self.hostless_cert.is_none() {
                self.hostless_cert = Some(Arc::clone(&cert));
            }
            self.first_cert.get_or_insert(cert);
        }
    }

    fn host_routes(&mut self, host: &str) -> &mut HostRoutes {
        if host.is_empty() {
            self.table.any_host.get_or_insert_with(HostRoutes::default)
        } else if let Some(parent) = host.strip_prefix("*.") {
            self.table.wildcard_hosts.entry(parent.into()).or_default()
        } else {
            self.table.exact_hosts.entry(host.into()).or_default()
        }
    }

    fn certificate(
        &mut self,
        ingress: &ObjectKey,
        secret_key: &ObjectKey,
    ) -> Option<Arc<CertifiedKey>> {
        let Some(secret) = self.snapshot.secrets.get(secret_key) else {
            self.warn("Ingress", ingress, format!("secret {secret_key} not found"));
            return None;
        };
        match self
            .table
            .cert_cache
            .get(self.previous_certs, secret_key, secret)
        {
            Ok(cert) => {
                if let Some(at) = crate::tls::expired_at(&cert) {
                    self.warn(
                        "Ingress",
                        ingress,
                        format!(
                            "secret {secret_key}: the certificate expired at {at}; served anyway (clients will refuse it)"
                        ),
                    );
                }
                Some(cert)
            }
            Err(reason) => {
                self.warn(
                    "Ingress",
                    ingress,
                    format!(
                        "secret {secret_key} is not a valid kubernetes.io/tls secret: {reason}"
                    ),
                );
                None
            }
        }
    }

    /// The backend for an Ingress backend reference; `None` (with a warning) when the
    /// reference itself is unusable. A missing Service or port still gives a backend, with no
    /// endpoints, so requests get a clear 503.
    fn backend(&mut self, ingress: &ObjectKey, backend: &IngressBackend) -> Option<Arc<Backend>> {
        let Some(service) = backend.service.as_ref() else {
            let message = if backend.resource.is_some() {
                "resource backends are not supported; skipped"
            } else {
                "backend names no service; skipped"
            };
            self.warn("Ingress", ingress, message.to_owned());
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
                self.warn(
                    "Ingress",
                    ingress,
                    format!(
                        "backend service {} has no port number or name; skipped",
                        service.name
                    ),
                );
                return None;
            }
        };
        let service_key = ObjectKey::new(ingress.namespace.clone(), service.name.clone());
        let cache_key = (service_key, port);
        if let Some(b) = self.backends.get(&cache_key) {
            return Some(Arc::clone(b));
        }
        let endpoints = self.endpoints(ingress, &cache_key.0, &cache_key.1);
        let backend = Arc::new(Backend {
            display: format!("{}:{}", cache_key.0, cache_key.1).into(),
            service: cache_key.0.clone(),
            port: cache_key.1.clone(),
            pool: Pool { endpoints },
        });
        self.backends.insert(cache_key, Arc::clone(&backend));
        Some(backend)
    }

    /// Ready endpoints of a service port: the EndpointSlice port with the service port's name.
    fn endpoints(
        &mut self,
        ingress: &ObjectKey,
        service_key: &ObjectKey,
        port: &str,
    ) -> Vec<Arc<UpstreamEndpoint>> {
        let Some(service) = self.snapshot.services.get(service_key) else {
            self.warn(
                "Ingress",
                ingress,
                format!("service {service_key} not found"),
            );
            return Vec::new();
        };
        let spec = service.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            self.warn("Ingress", ingress, format!("service {service_key} is an ExternalName service, which ingress does not support"));
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
            self.warn(
                "Ingress",
                ingress,
                format!("service {service_key} has no TCP port {port}"),
            );
            return Vec::new();
        };
        let port_name = service_port.name.as_deref().unwrap_or("");
        // Which endpoints serve (ready, else serving+terminating, first address, the slice
        // port of the same name) is kube-proxy's rule, kept once in compute. No node: topology
        // hints and locality do not apply to the proxy.
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
            &NodeInfo::default(),
            &mut slice_warnings,
        );
        for warning in slice_warnings {
            let slice = warning
                .object
                .strip_prefix("EndpointSlice ")
                .and_then(|key| key.split_once('/'))
                .map(|(namespace, name)| ObjectKey::new(namespace, name))
                .unwrap_or_else(|| service_key.clone());
            self.warn("EndpointSlice", &slice, warning.message);
        }
        let mut addrs: Vec<SocketAddr> = endpoints
            .iter()
            .map(|e| SocketAddr::new(e.ip, e.port))
            .collect();
        addrs.sort();
        addrs.dedup();
        addrs
            .into_iter()
            .filter_map(|addr| match self.previous_endpoints.get(&addr) {
                Some(state) => Some(Arc::clone(state)),
                None => UpstreamEndpoint::new(addr).map(Arc::new),
            })
            .collect()
    }

    fn finish(&mut self, config: &IngressConfig) {
        for routes in self
            .table
            .exact_hosts
            .values_mut()
            .chain(self.table.wildcard_hosts.values_mut())
            .chain(self.table.any_host.iter_mut())
        {
            routes.finish();
        }
        if let Some(secret_key) = &config.default_certificate {
            let snapshot = self.snapshot;
            let parsed = snapshot.secrets.get(secret_key).map(|s| {
                self.table
                    .cert_cache
                    .get(self.previous_certs, secret_key, s)
            });
            match parsed {
                Some(Ok(cert)) => self.table.certs.set_default_if_unset(&cert),
                Some(Err(reason)) => {
                    let key = secret_key.clone();
                    self.warn(
                        "Secret",
                        &key,
                        format!(
                            "default certificate is not a valid kubernetes.io/tls secret: {reason}"
                        ),
                    );
                }
                None => {
                    let key = secret_key.clone();
                    self.warn(
                        "Secret",
                        &key,
                        "default certificate secret not found".to_owned(),
                    );
                }
            }
        }
        if let Some(cert) = self.hostless_cert.take().or_else(|| self.first_cert.take()) {
            self.table.certs.set_default_if_unset(&cert);
        }
    }
}

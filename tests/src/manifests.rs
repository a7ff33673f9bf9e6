//! Manifest builders for the agent's directory source. Objects are rendered as JSON, which is
//! valid YAML; join several with [`yaml_docs`].

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::topology::{Node, Pod};

/// Joins objects into one multi-document YAML file.
pub fn yaml_docs(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| {
            format!(
                "---\n{}\n",
                serde_json::to_string_pretty(d).unwrap_or_default()
            )
        })
        .collect()
}

/// Node objects (InternalIP v4+v6, podCIDRs) for every node of the cluster.
pub fn nodes_yaml<'a>(nodes: impl Iterator<Item = &'a Node>) -> String {
    nodes_yaml_with_zones(nodes, &[])
}

/// Like [`nodes_yaml`], with label `topology.kubernetes.io/zone` set on the nodes named in
/// `zones` (`(node, zone)`).
pub fn nodes_yaml_with_zones<'a>(
    nodes: impl Iterator<Item = &'a Node>,
    zones: &[(&str, &str)],
) -> String {
    let docs: Vec<Value> = nodes
        .map(|n| {
            let mut labels = json!({"kubernetes.io/hostname": n.name});
            if let Some((_, zone)) = zones.iter().find(|(node, _)| *node == n.name) {
                labels["topology.kubernetes.io/zone"] = json!(zone);
            }
            json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": n.name, "labels": labels},
                "spec": {"podCIDR": n.pod_cidr_v4, "podCIDRs": [n.pod_cidr_v4, n.pod_cidr_v6]},
                "status": {"addresses": [
                    {"type": "InternalIP", "address": n.ipv4.to_string()},
                    {"type": "InternalIP", "address": n.ipv6.to_string()},
                    {"type": "Hostname", "address": n.name},
                ]},
            })
        })
        .collect();
    yaml_docs(&docs)
}

/// A Service port. `target` is a number or a port name (resolved via EndpointSlice ports).
#[derive(Debug, Clone)]
pub struct Port {
    pub name: Option<String>,
    pub protocol: &'static str,
    pub port: u16,
    pub target: Value,
    pub node_port: Option<u16>,
}

impl Port {
    pub fn tcp(port: u16, target: u16) -> Port {
        Port::new("TCP", port, json!(target))
    }
    pub fn udp(port: u16, target: u16) -> Port {
        Port::new("UDP", port, json!(target))
    }
    pub fn sctp(port: u16, target: u16) -> Port {
        Port::new("SCTP", port, json!(target))
    }
    fn new(protocol: &'static str, port: u16, target: Value) -> Port {
        Port {
            name: None,
            protocol,
            port,
            target,
            node_port: None,
        }
    }
    pub fn named(mut self, name: &str) -> Port {
        self.name = Some(name.to_owned());
        self
    }
    /// `targetPort` by name instead of number.
    pub fn target_name(mut self, name: &str) -> Port {
        self.target = json!(name);
        self
    }
    pub fn node_port(mut self, node_port: u16) -> Port {
        self.node_port = Some(node_port);
        self
    }
}

/// A Service. Defaults: ClusterIP type, no selector (endpoints come from the slices you
/// write), both families.
#[derive(Debug, Clone)]
pub struct Service {
    namespace: String,
    name: String,
    spec: serde_json::Map<String, Value>,
    ports: Vec<Port>,
    lb_ips: Vec<String>,
}

impl Service {
    pub fn new(namespace: &str, name: &str) -> Service {
        let mut spec = serde_json::Map::new();
        spec.insert("type".into(), json!("ClusterIP"));
        Service {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            spec,
            ports: Vec::new(),
            lb_ips: Vec::new(),
        }
    }
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    fn set(mut self, key: &str, value: Value) -> Service {
        self.spec.insert(key.to_owned(), value);
        self
    }
    /// `spec.clusterIPs` (and `clusterIP`, the first), one per family.
    pub fn cluster_ips(self, ips: &[&str]) -> Service {
        let families: Vec<&str> = ips
            .iter()
            .map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" })
            .collect();
        let policy = if ips.len() > 1 {
            "RequireDualStack"
        } else {
            "SingleStack"
        };
        self.set("clusterIP", json!(ips.first()))
            .set("clusterIPs", json!(ips))
            .set("ipFamilies", json!(families))
            .set("ipFamilyPolicy", json!(policy))
    }
    pub fn port(mut self, port: Port) -> Service {
        self.ports.push(port);
        self
    }
    /// `ClusterIP`, `NodePort`, `LoadBalancer`, `ExternalName`.
    pub fn kind(self, service_type: &str) -> Service {
        self.set("type", json!(service_type))
    }
    pub fn headless(self) -> Service {
        self.set("clusterIP", json!("None"))
            .set("clusterIPs", json!(["None"]))
    }
    pub fn external_ips(self, ips: &[&str]) -> Service {
        self.set("externalIPs", json!(ips))
    }
    /// `status.loadBalancer.ingress[].ip` (also sets type LoadBalancer).
    pub fn load_balancer_ips(mut self, ips: &[&str]) -> Service {
        self.lb_ips = ips.iter().map(|s| s.to_string()).collect();
        self.kind("LoadBalancer")
    }
    pub fn source_ranges(self, cidrs: &[&str]) -> Service {
        self.set("loadBalancerSourceRanges", json!(cidrs))
    }
    /// `Cluster` or `Local`.
    pub fn external_traffic_policy(self, policy: &str) -> Service {
        self.set("externalTrafficPolicy", json!(policy))
    }
    pub fn internal_traffic_policy(self, policy: &str) -> Service {
        self.set("internalTrafficPolicy", json!(policy))
    }
    pub fn health_check_node_port(self, port: u16) -> Service {
        self.set("healthCheckNodePort", json!(port))
    }
    /// `sessionAffinity: ClientIP` with the given timeout.
    pub fn session_affinity(self, timeout_seconds: u32) -> Service {
        self.set("sessionAffinity", json!("ClientIP")).set(
            "sessionAffinityConfig",
            json!({"clientIP": {"timeoutSeconds": timeout_seconds}}),
        )
    }
    /// Any other `spec` field.
    pub fn spec_field(self, key: &str, value: Value) -> Service {
        self.set(key, value)
    }
    pub fn to_json(&self) -> Value {
        let mut spec = self.spec.clone();
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| {
                let mut v = json!({"protocol": p.protocol, "port": p.port, "targetPort": p.target});
                if let Some(n) = &p.name {
                    v["name"] = json!(n);
                }
                if let Some(np) = p.node_port {
                    v["nodePort"] = json!(np);
                }
                v
            })
            .collect();
        spec.insert("ports".into(), json!(ports));
        let mut svc = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"namespace": self.namespace, "name": self.name},
            "spec": spec,
        });
        if !self.lb_ips.is_empty() {
            let ingress: Vec<Value> = self.lb_ips.iter().map(|ip| json!({"ip": ip})).collect();
            svc["status"] = json!({"loadBalancer": {"ingress": ingress}});
        }
        svc
    }
    pub fn yaml(&self) -> String {
        yaml_docs(&[self.to_json()])
    }
}

/// Address family of an EndpointSlice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// One endpoint of a slice.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub address: IpAddr,
    pub node: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub zone: Option<String>,
    /// `hints.forZones`.
    pub for_zones: Vec<String>,
}

impl Endpoint {
    /// A ready endpoint for `pod` in the given family.
    pub fn of(pod: &Pod, family: Family) -> Endpoint {
        Endpoint {
            address: match family {
                Family::V4 => pod.ipv4.into(),
                Family::V6 => pod.ipv6.into(),
            },
            node: Some(pod.node.clone()),
            ready: true,
            serving: true,
            terminating: false,
            zone: None,
            for_zones: Vec::new(),
        }
    }
    /// Serving but terminating (not ready): used only as a fallback.
    pub fn terminating(mut self) -> Endpoint {
        self.ready = false;
        self.terminating = true;
        self
    }
    /// `zone` of the endpoint.
    pub fn in_zone(mut self, zone: &str) -> Endpoint {
        self.zone = Some(zone.to_owned());
        self
    }
    /// `hints.forZones`.
    pub fn for_zones(mut self, zones: &[&str]) -> Endpoint {
        self.for_zones = zones.iter().map(|z| z.to_string()).collect();
        self
    }
    /// Not ready and not serving.
    pub fn not_ready(mut self) -> Endpoint {
        self.ready = false;
        self.serving = false;
        self
    }
    fn to_json(&self) -> Value {
        let mut v = json!({
            "addresses": [self.address.to_string()],
            "conditions": {"ready": self.ready, "serving": self.serving, "terminating": self.terminating},
        });
        if let Some(n) = &self.node {
            v["nodeName"] = json!(n);
        }
        if let Some(z) = &self.zone {
            v["zone"] = json!(z);
        }
        if !self.for_zones.is_empty() {
            let zones: Vec<Value> = self.for_zones.iter().map(|z| json!({"name": z})).collect();
            v["hints"] = json!({"forZones": zones});
        }
        v
    }
}

/// An EndpointSlice for `service` (label `kubernetes.io/service-name`).
#[derive(Debug, Clone)]
pub struct EndpointSlice {
    namespace: String,
    name: String,
    service: String,
    family: Family,
    ports: Vec<Value>,
    endpoints: Vec<Endpoint>,
}

impl EndpointSlice {
    pub fn new(namespace: &str, name: &str, service: &str, family: Family) -> EndpointSlice {
        EndpointSlice {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            service: service.to_owned(),
            family,
            ports: Vec::new(),
            endpoints: Vec::new(),
        }
    }
    /// A port; `name` must match the Service port's name (empty for an unnamed port).
    pub fn port(mut self, name: &str, protocol: &str, port: u16) -> EndpointSlice {
        self.ports
            .push(json!({"name": name, "protocol": protocol, "port": port}));
        self
    }
    /// A ready endpoint for each pod, in this slice's family.
    pub fn pods<'a>(mut self, pods: impl IntoIterator<Item = &'a Pod>) -> EndpointSlice {
        let family = self.family;
        self.endpoints
            .extend(pods.into_iter().map(|p| Endpoint::of(p, family)));
        self
    }
    pub fn endpoint(mut self, endpoint: Endpoint) -> EndpointSlice {
        self.endpoints.push(endpoint);
        self
    }
    pub fn to_json(&self) -> Value {
        let endpoints: Vec<Value> = self.endpoints.iter().map(Endpoint::to_json).collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "namespace": self.namespace,
                "name": self.name,
                "labels": {"kubernetes.io/service-name": self.service},
            },
            "addressType": match self.family { Family::V4 => "IPv4", Family::V6 => "IPv6" },
            "ports": self.ports,
            "endpoints": endpoints,
        })
    }
}

/// The usual pair: `{service}-v4` and `{service}-v6` slices with the same ports and pods.
/// `ports` are `(name, protocol, port)`.
pub fn endpoint_slices(
    namespace: &str,
    service: &str,
    ports: &[(&str, &str, u16)],
    pods: &[&Pod],
) -> Vec<Value> {
    [(Family::V4, "v4"), (Family::V6, "v6")]
        .into_iter()
        .map(|(family, suffix)| {
            let mut s =
                EndpointSlice::new(namespace, &format!("{service}-{suffix}"), service, family);
            for (name, proto, port) in ports {
                s = s.port(name, proto, *port);
            }
            s.pods(pods.iter().copied()).to_json()
        })
        .collect()
}

/// One Ingress rule path.
#[derive(Debug, Clone)]
pub struct IngressPath {
    pub host: Option<String>,
    pub path: String,
    /// `Exact`, `Prefix` or `ImplementationSpecific`.
    pub path_type: String,
    pub service: String,
    pub port: u16,
}

/// An Ingress with one rule per path (same host paths are grouped), optional class, TLS
/// (`(hosts, secret)`) and default backend (`(service, port)`).
pub fn ingress(
    namespace: &str,
    name: &str,
    class: Option<&str>,
    paths: &[IngressPath],
    tls: &[(&[&str], &str)],
    default_backend: Option<(&str, u16)>,
) -> Value {
    let backend =
        |svc: &str, port: u16| json!({"service": {"name": svc, "port": {"number": port}}});
    let mut rules: Vec<(Option<String>, Vec<Value>)> = Vec::new();
    for p in paths {
        let v = json!({"path": p.path, "pathType": p.path_type, "backend": backend(&p.service, p.port)});
        match rules.iter_mut().find(|(h, _)| *h == p.host) {
            Some((_, list)) => list.push(v),
            None => rules.push((p.host.clone(), vec![v])),
        }
    }
    let rules: Vec<Value> = rules
        .into_iter()
        .map(|(host, paths)| {
            let mut r = json!({"http": {"paths": paths}});
            if let Some(h) = host {
                r["host"] = json!(h);
            }
            r
        })
        .collect();
    let mut spec = json!({"rules": rules});
    if let Some(c) = class {
        spec["ingressClassName"] = json!(c);
    }
    if !tls.is_empty() {
        spec["tls"] = json!(
            tls.iter()
                .map(|(hosts, secret)| json!({"hosts": hosts, "secretName": secret}))
                .collect::<Vec<_>>()
        );
    }
    if let Some((svc, port)) = default_backend {
        spec["defaultBackend"] = backend(svc, port);
    }
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"namespace": namespace, "name": name},
        "spec": spec,
    })
}

/// An IngressClass with the given controller; `default` sets the default-class annotation.
pub fn ingress_class(name: &str, controller: &str, default: bool) -> Value {
    let mut v = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": name},
        "spec": {"controller": controller},
    });
    if default {
        v["metadata"]["annotations"] =
            json!({"ingressclass.kubernetes.io/is-default-class": "true"});
    }
    v
}

/// A `kubernetes.io/tls` Secret from PEM text (base64 in `data`, as the API server stores it).
pub fn tls_secret(namespace: &str, name: &str, cert_pem: &str, key_pem: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"namespace": namespace, "name": name},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": sluice_echo::base64(cert_pem.as_bytes()), "tls.key": sluice_echo::base64(key_pem.as_bytes())},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(sluice_echo::base64(plain.as_bytes()), enc);
        }
    }

    #[test]
    fn service_renders_ports_and_status() {
        let svc = Service::new("default", "web")
            .cluster_ips(&["10.96.0.10", "fd00:10:96::10"])
            .port(Port::tcp(80, 8080).named("http").node_port(30080))
            .load_balancer_ips(&["203.0.113.10"])
            .to_json();
        assert_eq!(svc["spec"]["type"], "LoadBalancer");
        assert_eq!(svc["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
        assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30080);
        assert_eq!(svc["spec"]["ports"][0]["name"], "http");
        assert_eq!(
            svc["status"]["loadBalancer"]["ingress"][0]["ip"],
            "203.0.113.10"
        );
    }

    #[test]
    fn ingress_groups_paths_by_host() {
        let p = |host: &str, path: &str| IngressPath {
            host: Some(host.into()),
            path: path.into(),
            path_type: "Prefix".into(),
            service: "web".into(),
            port: 80,
        };
        let ing = ingress(
            "default",
            "web",
            Some("sluice"),
            &[
                p("a.example", "/"),
                p("b.example", "/"),
                p("a.example", "/x"),
            ],
            &[],
            None,
        );
        assert_eq!(ing["spec"]["rules"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            ing["spec"]["rules"][0]["http"]["paths"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
    }
}

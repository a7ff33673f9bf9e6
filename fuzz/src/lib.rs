//! Inputs shared by the fuzz targets: small clusters drawn from collision-prone pools (a few
//! namespaces, names, cluster IPs, pod addresses, ports), so that conflicts, duplicates,
//! family mismatches and odd values show up often, plus a list of edits that turns the first
//! snapshot into a second one (the incremental paths).
//!
//! Objects are built as JSON and decoded into the Kubernetes types, as the sources do: any
//! value the types accept (negative ports, addresses that are not addresses, unknown
//! protocols) can reach compute.

pub mod nft_sim;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use arbitrary::Arbitrary;
use serde_json::{Value, json};
use sluice_compute::ComputeConfig;
use sluice_model::{NodeInfo, ObjectKey, Snapshot};

const NAMESPACES: [&str; 3] = ["default", "shop", "kube-system"];
const NAMES: [&str; 5] = ["web", "db", "dns", "a", "b"];
const PORT_NAMES: [&str; 6] = [
    "",
    "http",
    "dns",
    "metrics",
    "Bad_Name",
    "a-very-long-port-name",
];
const NODES: [&str; 3] = ["node-a", "node-b", ""];
const ZONES: [&str; 3] = ["zone-a", "zone-b", ""];
const PROTOCOLS: [&str; 5] = ["TCP", "UDP", "SCTP", "tcp", "ICMP"];

fn pick<'a>(pool: &[&'a str], i: u8) -> &'a str {
    pool[usize::from(i) % pool.len()]
}

/// An address from a pool (cluster IPs, pod addresses of two nodes, node addresses, both
/// families) or an odd one.
#[derive(Arbitrary, Debug, Clone)]
pub struct Ip {
    kind: u8,
    bits: u32,
}

impl Ip {
    pub fn render(&self) -> String {
        let b = self.bits;
        match self.kind % 12 {
            0..=2 => format!("10.96.0.{}", b % 8),
            3 => format!("10.244.1.{}", b % 4 + 2),
            4 => format!("10.244.2.{}", b % 4 + 2),
            5 => format!("192.0.2.{}", 11 + b % 2),
            6 => format!("fd00:10:96::{:x}", b % 8),
            7 => format!("fd00:10:244:1::{:x}", b % 4 + 2),
            // 32.1.13.184 and 2001:db8:: share their first 32 bits (and the rest is zero):
            // the eBPF keys must still tell them apart.
            8 if b.is_multiple_of(5) => "32.1.13.184".to_owned(),
            8 => format!("203.0.113.{}", b % 4),
            9 if b.is_multiple_of(5) => "2001:db8::".to_owned(),
            9 => format!("2001:db8::{:x}", 0x11 + b % 2),
            10 => std::net::Ipv4Addr::from(b).to_string(),
            _ => [
                "0.0.0.0",
                "255.255.255.255",
                "::",
                "not-an-ip",
                "::ffff:10.96.0.1",
                "10.96.0.1 ",
            ][(b % 6) as usize]
                .to_owned(),
        }
    }
}

/// A port number, mostly ordinary, sometimes out of range.
fn port(sel: u16) -> i64 {
    match sel % 10 {
        0 | 1 => 80,
        2 => 53,
        3 => 8080,
        4 => 0,
        5 => 65535,
        6 => 65536,
        7 => -1,
        8 => 30000 + i64::from(sel % 8),
        _ => i64::from(sel),
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub struct PortSpec {
    name: u8,
    protocol: u8,
    port: u16,
    /// `None`: targetPort absent; `Ok(n)`: a number; `Err(i)`: a port name.
    target: Option<Result<u16, u8>>,
    node_port: Option<u16>,
}

impl PortSpec {
    fn render(&self) -> Value {
        let mut p = json!({"port": port(self.port), "protocol": pick(&PROTOCOLS, self.protocol)});
        let name = pick(&PORT_NAMES, self.name);
        if !name.is_empty() {
            p["name"] = json!(name);
        }
        match self.target {
            Some(Ok(n)) => p["targetPort"] = json!(port(n)),
            Some(Err(i)) => p["targetPort"] = json!(pick(&PORT_NAMES, i)),
            None => {}
        }
        if let Some(np) = self.node_port {
            p["nodePort"] = json!(port(np));
        }
        p
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Svc {
    ns: u8,
    name: u8,
    kind: u8,
    cluster_ips: Vec<Ip>,
    ports: Vec<PortSpec>,
    external_ips: Vec<Ip>,
    lb_ips: Vec<Ip>,
    source_ranges: Vec<(Ip, u8)>,
    etp_local: Option<bool>,
    itp_local: Option<bool>,
    affinity: Option<Option<i32>>,
    health_check_node_port: Option<u16>,
    created: Option<u8>,
    prefer_close: bool,
    proxy_name: Option<bool>,
    /// Endpoints of the Service's own EndpointSlice, which matches its ports (none: no such
    /// slice). Most real Services have one; a random slice rarely fits a random Service.
    endpoints: Vec<Ep>,
}

fn truncated<T: Clone>(v: &[T], max: usize) -> Vec<T> {
    v.iter().take(max).cloned().collect()
}

impl Svc {
    fn key(&self) -> ObjectKey {
        ObjectKey::new(pick(&NAMESPACES, self.ns), pick(&NAMES, self.name))
    }

    /// The Service's own EndpointSlice: one port per Service port (same name and protocol,
    /// the target port's number), the family of its first cluster IP.
    fn own_slice(&self) -> Option<(ObjectKey, Value)> {
        if self.endpoints.is_empty() {
            return None;
        }
        let key = self.key();
        let ports: Vec<Value> = truncated(&self.ports, 4)
            .iter()
            .map(|p| {
                let number = match p.target {
                    Some(Ok(n)) => port(n),
                    _ => port(p.port),
                };
                let mut v = json!({"port": number, "protocol": pick(&PROTOCOLS, p.protocol)});
                let name = pick(&PORT_NAMES, p.name);
                if !name.is_empty() {
                    v["name"] = json!(name);
                }
                v
            })
            .collect();
        let v6 = self
            .cluster_ips
            .first()
            .is_some_and(|ip| ip.render().contains(':'));
        let name = format!("{}-own", key.name);
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": key.namespace, "name": name,
                "labels": {"kubernetes.io/service-name": key.name}},
            "addressType": if v6 { "IPv6" } else { "IPv4" },
            "ports": ports,
            "endpoints": truncated(&self.endpoints, 6).iter().map(Ep::render).collect::<Vec<_>>(),
        });
        Some((ObjectKey::new(key.namespace, name), slice))
    }

    /// Puts the Service and its own slice (when it has one) into `s`.
    fn put(&self, s: &mut Snapshot) {
        if let Some(v) = decode(self.render()) {
            s.services.insert(self.key(), v);
        }
        if let Some((key, slice)) = self.own_slice()
            && let Some(v) = decode(slice)
        {
            s.endpoint_slices.insert(key, v);
        }
    }

    fn render(&self) -> Value {
        let kinds = [
            "ClusterIP",
            "NodePort",
            "LoadBalancer",
            "ExternalName",
            "ClusterIP",
        ];
        let mut spec = json!({
            "type": pick(&kinds, self.kind),
            "ports": truncated(&self.ports, 4).iter().map(PortSpec::render).collect::<Vec<_>>(),
        });
        let ips: Vec<String> = truncated(&self.cluster_ips, 2)
            .iter()
            .map(Ip::render)
            .collect();
        if self.kind % 5 == 4 {
            spec["clusterIP"] = json!("None");
        } else if let Some(first) = ips.first() {
            spec["clusterIP"] = json!(first);
            spec["clusterIPs"] = json!(ips);
        }
        let list = |v: &[Ip]| truncated(v, 3).iter().map(Ip::render).collect::<Vec<_>>();
        if !self.external_ips.is_empty() {
            spec["externalIPs"] = json!(list(&self.external_ips));
        }
        if !self.source_ranges.is_empty() {
            let ranges: Vec<String> = truncated(&self.source_ranges, 3)
                .iter()
                .map(|(ip, len)| format!("{}/{}", ip.render(), len % 130))
                .collect();
            spec["loadBalancerSourceRanges"] = json!(ranges);
        }
        let policy = |local: bool| if local { "Local" } else { "Cluster" };
        if let Some(l) = self.etp_local {
            spec["externalTrafficPolicy"] = json!(policy(l));
        }
        if let Some(l) = self.itp_local {
            spec["internalTrafficPolicy"] = json!(policy(l));
        }
        if let Some(timeout) = self.affinity {
            spec["sessionAffinity"] = json!("ClientIP");
            if let Some(t) = timeout {
                spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": t}});
            }
        }
        if let Some(p) = self.health_check_node_port {
            spec["healthCheckNodePort"] = json!(port(p));
        }
        if self.prefer_close {
            spec["trafficDistribution"] = json!("PreferClose");
        }
        let mut metadata = json!({"namespace": self.key().namespace, "name": self.key().name});
        if let Some(day) = self.created {
            metadata["creationTimestamp"] = json!(format!("2024-01-{:02}T00:00:00Z", day % 28 + 1));
        }
        if let Some(ours) = self.proxy_name {
            let value = if ours { "sluice" } else { "other" };
            metadata["labels"] = json!({"service.kubernetes.io/service-proxy-name": value});
        }
        let mut svc =
            json!({"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec});
        if !self.lb_ips.is_empty() {
            let ingress: Vec<Value> = list(&self.lb_ips)
                .into_iter()
                .map(|ip| json!({"ip": ip}))
                .collect();
            svc["status"] = json!({"loadBalancer": {"ingress": ingress}});
        }
        svc
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Ep {
    addresses: Vec<Ip>,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
    node: u8,
    zone: u8,
    hints: Vec<u8>,
}

impl Ep {
    fn render(&self) -> Value {
        let mut conditions = json!({});
        for (key, v) in [
            ("ready", self.ready),
            ("serving", self.serving),
            ("terminating", self.terminating),
        ] {
            if let Some(v) = v {
                conditions[key] = json!(v);
            }
        }
        let mut ep = json!({
            "addresses": truncated(&self.addresses, 2).iter().map(Ip::render).collect::<Vec<_>>(),
            "conditions": conditions,
        });
        let node = pick(&NODES, self.node);
        if !node.is_empty() {
            ep["nodeName"] = json!(node);
        }
        let zone = pick(&ZONES, self.zone);
        if !zone.is_empty() {
            ep["zone"] = json!(zone);
        }
        if !self.hints.is_empty() {
            let zones: Vec<Value> = self
                .hints
                .iter()
                .take(2)
                .map(|z| json!({"name": pick(&ZONES, *z)}))
                .collect();
            ep["hints"] = json!({"forZones": zones});
        }
        ep
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Slice {
    ns: u8,
    index: u8,
    service: u8,
    address_type: u8,
    ports: Vec<(u8, u16, u8)>,
    endpoints: Vec<Ep>,
}

impl Slice {
    fn key(&self) -> ObjectKey {
        let service = pick(&NAMES, self.service);
        ObjectKey::new(
            pick(&NAMESPACES, self.ns),
            format!("{service}-{}", self.index % 4),
        )
    }

    fn render(&self) -> Value {
        let key = self.key();
        let ports: Vec<Value> = truncated(&self.ports, 3)
            .iter()
            .map(|(name, p, proto)| {
                let mut v = json!({"port": port(*p), "protocol": pick(&PROTOCOLS, *proto)});
                let name = pick(&PORT_NAMES, *name);
                if !name.is_empty() {
                    v["name"] = json!(name);
                }
                v
            })
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": key.namespace, "name": key.name,
                "labels": {"kubernetes.io/service-name": pick(&NAMES, self.service)}},
            "addressType": pick(&["IPv4", "IPv6", "FQDN", "IPv4"], self.address_type),
            "ports": ports,
            "endpoints": truncated(&self.endpoints, 6).iter().map(Ep::render).collect::<Vec<_>>(),
        })
    }
}

/// This node: its zone and addresses (Node object and local interfaces).
#[derive(Arbitrary, Debug, Clone)]
pub struct NodeSpec {
    zone: u8,
    addresses: Vec<Ip>,
    local: Vec<Ip>,
}

impl NodeSpec {
    fn render(&self) -> Value {
        let addresses: Vec<Value> = truncated(&self.addresses, 3)
            .iter()
            .map(|ip| json!({"type": "InternalIP", "address": ip.render()}))
            .collect();
        let mut node = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node-a"}, "status": {"addresses": addresses}});
        let zone = pick(&ZONES, self.zone);
        if !zone.is_empty() {
            node["metadata"]["labels"] = json!({"topology.kubernetes.io/zone": zone});
        }
        node
    }

    fn local_addresses(&self) -> Vec<IpAddr> {
        truncated(&self.local, 3)
            .iter()
            .filter_map(|ip| ip.render().parse().ok())
            .collect()
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Edit {
    RemoveService(u8),
    RemoveSlice(u8),
    PutService(Svc),
    PutSlice(Slice),
    Node(NodeSpec),
    /// Drops one endpoint of a slice and keeps the others: the commonest change in a
    /// cluster, which the incremental paths must get right.
    DropEndpoint(u8, u8),
    /// Flips one endpoint's `ready` condition (a pod going unready, or ready again).
    FlipReady(u8, u8),
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Config {
    cluster_cidrs: bool,
    nodeport_v4_only: bool,
    reserve_80: bool,
    allow_external_ips_on_node_addresses: bool,
    proxy_name: bool,
}

impl Config {
    pub fn compute(&self) -> ComputeConfig {
        let net = |s: &str| s.parse().expect("valid CIDR");
        ComputeConfig {
            cluster_cidrs: if self.cluster_cidrs {
                vec![net("10.244.0.0/16"), net("fd00:10:244::/48")]
            } else {
                Vec::new()
            },
            nodeport_addresses: if self.nodeport_v4_only {
                vec![net("192.0.2.0/24")]
            } else {
                Vec::new()
            },
            reserved_node_ports: if self.reserve_80 {
                vec![80, 443]
            } else {
                Vec::new()
            },
            allow_external_ips_on_node_addresses: self.allow_external_ips_on_node_addresses,
            service_proxy_name: self.proxy_name.then(|| "sluice".to_owned()),
            ..ComputeConfig::default()
        }
    }
}

/// A fuzz input: a cluster, and edits that make a second version of it.
#[derive(Arbitrary, Debug, Clone)]
pub struct ClusterInput {
    pub services: Vec<Svc>,
    pub slices: Vec<Slice>,
    pub node: NodeSpec,
    pub edits: Vec<Edit>,
    pub config: Config,
}

/// Two snapshots of one node's world and the configuration to compute them with.
pub struct Generated {
    pub before: Snapshot,
    pub after: Snapshot,
    pub node_before: NodeInfo,
    pub node_after: NodeInfo,
    pub config: ComputeConfig,
}

fn decode<T: serde::de::DeserializeOwned>(v: Value) -> Option<Arc<T>> {
    serde_json::from_value(v).ok().map(Arc::new)
}

fn node_info(spec: &NodeSpec) -> (Option<Arc<k8s_openapi::api::core::v1::Node>>, NodeInfo) {
    let node = decode(spec.render());
    let info = sluice_compute::node_info("node-a", node.as_deref(), &spec.local_addresses());
    (node, info)
}

impl ClusterInput {
    pub fn generate(&self) -> Generated {
        let mut before = Snapshot::default();
        for svc in self.services.iter().take(8) {
            svc.put(&mut before);
        }
        for slice in self.slices.iter().take(8) {
            if let Some(s) = decode(slice.render()) {
                before.endpoint_slices.insert(slice.key(), s);
            }
        }
        let (node, node_before) = node_info(&self.node);
        if let Some(n) = node {
            before.nodes.insert(ObjectKey::cluster("node-a"), n);
        }
        let mut after = before.clone();
        let mut node_after = node_before.clone();
        for edit in self.edits.iter().take(6) {
            apply(edit, &mut after, &mut node_after);
        }
        Generated {
            before,
            after,
            node_before,
            node_after,
            config: self.config.compute(),
        }
    }
}

fn nth_key<V>(map: &BTreeMap<ObjectKey, V>, i: u8) -> Option<ObjectKey> {
    if map.is_empty() {
        return None;
    }
    map.keys().nth(usize::from(i) % map.len()).cloned()
}

/// Changes the `i`-th endpoint (modulo) of the `slice`-th slice (modulo) with `change`.
fn edit_endpoint(
    s: &mut Snapshot,
    slice: u8,
    i: u8,
    change: impl FnOnce(&mut Vec<sluice_model::Endpoint>, usize),
) {
    let Some(key) = nth_key(&s.endpoint_slices, slice) else {
        return;
    };
    let mut edited = (*s.endpoint_slices[&key]).clone();
    if let Some(endpoints) = edited.endpoints.as_mut().filter(|e| !e.is_empty()) {
        let i = usize::from(i) % endpoints.len();
        change(endpoints, i);
        s.endpoint_slices.insert(key, Arc::new(edited));
    }
}

fn apply(edit: &Edit, s: &mut Snapshot, node: &mut NodeInfo) {
    match edit {
        Edit::RemoveService(i) => {
            if let Some(k) = nth_key(&s.services, *i) {
                s.services.remove(&k);
            }
        }
        Edit::RemoveSlice(i) => {
            if let Some(k) = nth_key(&s.endpoint_slices, *i) {
                s.endpoint_slices.remove(&k);
            }
        }
        Edit::PutService(svc) => svc.put(s),
        Edit::PutSlice(slice) => {
            if let Some(v) = decode(slice.render()) {
                s.endpoint_slices.insert(slice.key(), v);
            }
        }
        Edit::DropEndpoint(slice, i) => edit_endpoint(s, *slice, *i, |eps, i| {
            eps.remove(i);
        }),
        Edit::FlipReady(slice, i) => edit_endpoint(s, *slice, *i, |eps, i| {
            let conditions = eps[i].conditions.get_or_insert_with(Default::default);
            conditions.ready = Some(!conditions.ready.unwrap_or(true));
        }),
        Edit::Node(spec) => {
            let (n, info) = node_info(spec);
            match n {
                Some(n) => drop(s.nodes.insert(ObjectKey::cluster("node-a"), n)),
                None => drop(s.nodes.remove(&ObjectKey::cluster("node-a"))),
            }
            *node = info;
        }
    }
}

/// Plans `g.before`, then updates to `g.after` incrementally; checks that every service plan
/// is valid and that the incremental plan equals a plan made from scratch. Returns both plans.
pub fn plan_both(g: &Generated) -> (sluice_plan::Plan, sluice_plan::Plan, sluice_plan::PlanDelta) {
    use sluice_compute::{ChangeSet, Planner, compute};
    let mut planner = Planner::new(g.config.clone());
    planner.update(&g.before, &ChangeSet::everything(), &g.node_before);
    let first = planner.plan().clone();
    let scratch_first = compute(&g.before, &g.node_before, &g.config).plan;
    assert_eq!(first, scratch_first, "a first update equals compute()");
    let delta = planner.update(
        &g.after,
        &ChangeSet::between(&g.before, &g.after),
        &g.node_after,
    );
    let second = planner.plan().clone();
    let scratch = compute(&g.after, &g.node_after, &g.config).plan;
    assert_eq!(
        second, scratch,
        "incremental plan equals the plan from scratch"
    );
    check_delta(&first, &second, &delta);
    for plan in [&first, &second] {
        for svc in plan.services.values() {
            if let Err(e) = svc.validate() {
                panic!("invalid service plan: {e}\n{svc:?}");
            }
        }
    }
    (first, second, delta)
}

/// The delta turns `first` into `second`: changed service ports carry their old and new plan,
/// every other service port is the same in both, and the node changed iff it says so.
fn check_delta(
    first: &sluice_plan::Plan,
    second: &sluice_plan::Plan,
    delta: &sluice_plan::PlanDelta,
) {
    let mut expect = first.services.clone();
    for change in &delta.services {
        assert_eq!(
            change.before.as_deref(),
            first.services.get(&change.name).map(|p| p.as_ref()),
            "delta `before` of {}",
            change.name
        );
        match &change.after {
            Some(after) => drop(expect.insert(change.name.clone(), after.clone())),
            None => drop(expect.remove(&change.name)),
        }
    }
    assert_eq!(expect, second.services, "first + delta = second");
    assert_eq!(
        delta.node_changed,
        first.node != second.node,
        "node_changed"
    );
    assert_eq!(*delta.node, *second.node, "delta node");
}

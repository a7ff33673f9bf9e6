//! Property tests (no extra crates: a tiny xorshift RNG).
//!
//! * Random but valid clusters are rendered into Kubernetes objects in different orders and
//!   partitions; the plan must not depend on that, and must satisfy the categorisation
//!   invariants.
//! * Random sequences of changes are fed to one incremental `Planner`; after every step its plan
//!   and warnings must equal a from-scratch `compute`, and its delta must turn the previous plan
//!   into the new one.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use common::*;
use k8s_openapi::api::core::v1::Service;
use serde_json::{Value, json};
use sluice_compute::{ChangeSet, ComputeConfig, Planner, compute};
use sluice_model::EndpointSlice;
use sluice_model::{NodeInfo, ObjectKey, Snapshot};
use sluice_plan::{Family, Plan, PlanDelta, Protocol, Route, StaleFlow};

/// xorshift64*: deterministic, good enough to explore orderings.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
    fn maybe_bool(&mut self) -> Option<bool> {
        match self.below(3) {
            0 => None,
            1 => Some(false),
            _ => Some(true),
        }
    }
}

/// One service of a random cluster, independent of how it is rendered.
struct World {
    services: Vec<WorldService>,
}

struct WorldService {
    name: String,
    created: Option<&'static str>,
    spec: Value,
    ingress: Vec<Value>,
    /// (name, protocol, target port) of each slice port.
    slice_ports: Vec<(String, &'static str, u16)>,
    endpoints: Vec<Value>,
}

fn generate(rng: &mut Rng) -> World {
    let nodes = [NODE, "node-b", "node-c"];
    let zones = [ZONE, "zone-b"];
    let services = (0..1 + rng.below(5))
        .map(|i| {
            let kind = *rng.pick(&["ClusterIP", "NodePort", "LoadBalancer"]);
            let ports: Vec<(String, &'static str, u16)> = (0..1 + rng.below(3))
                .map(|j| (format!("p{j}"), *rng.pick(&["TCP", "UDP"]), 8000 + rng.below(3) as u16))
                .collect();
            let spec_ports: Vec<Value> = ports
                .iter()
                .enumerate()
                .map(|(j, (name, proto, _))| json!({ "name": name, "protocol": proto, "port": 80 + j, "nodePort": 30000 + 10 * i + j }))
                .collect();
            let external: Vec<String> = (0..rng.below(4)).map(|_| format!("203.0.113.{}", rng.below(4))).collect();
            let ranges: Vec<String> = (0..rng.below(3)).map(|_| format!("192.0.{}.0/24", rng.below(3))).collect();
            let spec = json!({
                "type": kind,
                "clusterIPs": [format!("10.96.0.{i}")],
                "ports": spec_ports,
                "externalIPs": external,
                "loadBalancerSourceRanges": ranges,
                "externalTrafficPolicy": rng.pick(&["Cluster", "Local"]),
                "internalTrafficPolicy": rng.pick(&["Cluster", "Local"]),
                "healthCheckNodePort": 32000 + i,
                "trafficDistribution": rng.pick(&[None, Some("PreferClose"), Some("PreferSameNode")]),
                "sessionAffinity": rng.pick(&["None", "ClientIP"]),
            });
            let ingress: Vec<Value> = (0..rng.below(3))
                .map(|_| json!({ "ip": format!("198.51.100.{}", rng.below(3)), "ipMode": rng.pick(&[None, Some("VIP"), Some("Proxy")]) }))
                .collect();
            let endpoints: Vec<Value> = (0..rng.below(9))
                .map(|_| {
                    // Few distinct IPs, so duplicates (also with different conditions) happen.
                    let ip = format!("10.244.0.{}", rng.below(6));
                    let mut conditions = serde_json::Map::new();
                    for key in ["ready", "serving", "terminating"] {
                        if let Some(v) = rng.maybe_bool() {
                            conditions.insert(key.into(), json!(v));
                        }
                    }
                    let mut for_zones: Vec<Value> = zones.iter().filter(|_| rng.chance(60)).map(|z| json!({ "name": z })).collect();
                    let mut for_nodes: Vec<Value> = nodes.iter().filter(|_| rng.chance(40)).map(|n| json!({ "name": n })).collect();
                    rng.shuffle(&mut for_zones);
                    rng.shuffle(&mut for_nodes);
                    json!({
                        "addresses": [ip],
                        "nodeName": rng.pick(&nodes),
                        "conditions": conditions,
                        "hints": { "forZones": for_zones, "forNodes": for_nodes },
                    })
                })
                .collect();
            // Few distinct times (and none), so frontend conflicts are decided by age, by
            // name on ties, and against Services without a timestamp.
            let created = *rng.pick(&[None, Some("2024-01-01T00:00:00Z"), Some("2024-02-01T00:00:00Z")]);
            WorldService { name: format!("svc{i}"), created, spec, ingress, slice_ports: ports, endpoints }
        })
        .collect();
    World { services }
}

/// Renders `world` with orderings and slice partitions chosen by `rng`.
fn render(world: &World, rng: &mut Rng) -> Snapshot {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for ws in &world.services {
        let mut spec = ws.spec.clone();
        for field in ["externalIPs", "loadBalancerSourceRanges"] {
            if let Some(list) = spec[field].as_array_mut() {
                rng.shuffle(list);
            }
        }
        let mut ingress = ws.ingress.clone();
        rng.shuffle(&mut ingress);
        services.push(service_full(json!({
            "metadata": { "namespace": "default", "name": ws.name, "creationTimestamp": ws.created },
            "spec": spec,
            "status": { "loadBalancer": { "ingress": ingress } },
        })));

        let mut endpoints = ws.endpoints.clone();
        rng.shuffle(&mut endpoints);
        let parts = 1 + rng.below(3);
        let mut buckets: Vec<Vec<Value>> = vec![Vec::new(); parts];
        for endpoint in endpoints {
            buckets[rng.below(parts)].push(endpoint);
        }
        for (k, bucket) in buckets.into_iter().enumerate() {
            let mut ports: Vec<Value> = ws
                .slice_ports
                .iter()
                .map(|(name, proto, port)| json!({ "name": name, "protocol": proto, "port": port }))
                .collect();
            rng.shuffle(&mut ports);
            // Random names give the slices a random key order.
            let name = format!("{}-{:x}{k}", ws.name, rng.next() % 4096);
            slices.push(slice(&name, &ws.name, "IPv4", json!(ports), json!(bucket)));
        }
    }
    rng.shuffle(&mut services);
    rng.shuffle(&mut slices);
    snapshot(services, slices)
}

fn config() -> ComputeConfig {
    ComputeConfig::default()
}

/// The only warnings a generated cluster may produce: Services contending for an external
/// IP or LB IP (the generator draws them from small pools on purpose).
fn is_conflict(warning: &sluice_compute::Warning) -> bool {
    warning.message.contains("is already used by Service")
}

#[test]
fn rendering_order_and_slice_partition_do_not_change_the_plan() {
    let mut seen_conflict = false;
    for seed in 1..300 {
        let world = generate(&mut Rng::new(seed));
        let first = compute(
            &render(&world, &mut Rng::new(seed * 7919)),
            &node(),
            &config(),
        );
        assert!(
            first.warnings.iter().all(is_conflict),
            "seed {seed}: {:?}",
            first.warnings
        );
        seen_conflict |= !first.warnings.is_empty();
        for variant in 1..4 {
            let other = compute(
                &render(&world, &mut Rng::new(seed * 7919 + variant)),
                &node(),
                &config(),
            );
            assert_eq!(first.plan, other.plan, "seed {seed} variant {variant}");
            assert_eq!(
                first.warnings, other.warnings,
                "seed {seed} variant {variant}"
            );
        }
    }
    assert!(
        seen_conflict,
        "generator never produced a frontend conflict"
    );
}

#[test]
fn computing_twice_gives_the_same_result() {
    for seed in 1..100 {
        let snap = render(&generate(&mut Rng::new(seed)), &mut Rng::new(seed + 1));
        assert_eq!(
            compute(&snap, &node(), &config()),
            compute(&snap, &node(), &config()),
            "seed {seed}"
        );
    }
}

/// Per service of a world: addresses with some ready copy, and addresses with some copy on
/// our node (the generator reuses addresses, with different conditions and nodes).
fn readiness(world: &World) -> BTreeMap<String, (BTreeSet<IpAddr>, BTreeSet<IpAddr>)> {
    world
        .services
        .iter()
        .map(|ws| {
            let mut ready = BTreeSet::new();
            let mut ours = BTreeSet::new();
            for endpoint in &ws.endpoints {
                let address = ip(endpoint["addresses"][0].as_str().expect("address"));
                if endpoint["conditions"]["ready"].as_bool().unwrap_or(true) {
                    ready.insert(address);
                }
                if endpoint["nodeName"] == NODE {
                    ours.insert(address);
                }
            }
            (ws.name.clone(), (ready, ours))
        })
        .collect()
}

#[test]
fn categorisation_invariants_hold() {
    let mut seen_fallback = false;
    let mut seen_topology = false;
    for seed in 1..300 {
        let world = generate(&mut Rng::new(seed));
        let known = readiness(&world);
        let plan = compute(&render(&world, &mut Rng::new(seed)), &node(), &config()).plan;
        for (name, port) in &plan.services {
            assert_eq!(port.validate(), Ok(()), "seed {seed}");
            let (ready, ours) = &known[name.name()];
            for list in [&port.cluster, &port.local] {
                assert!(
                    list.windows(2).all(|w| w[0] < w[1]),
                    "{name}: sorted and unique: {list:?}"
                );
                // Either all ready, or the whole list is the terminating fallback.
                let readies = list.iter().filter(|b| ready.contains(&b.ip)).count();
                assert!(
                    readies == 0 || readies == list.len(),
                    "seed {seed} {name}: mixed list {list:?}"
                );
            }
            assert!(
                port.local.iter().all(|b| ours.contains(&b.ip)),
                "seed {seed} {name}: local set {:?} not on {NODE}",
                port.local
            );
            // A frontend rejects exactly when its family has no endpoint at all.
            for fe in &port.frontends {
                let family_empty = port
                    .cluster
                    .iter()
                    .all(|b| !fe.key.family().contains(&b.ip));
                assert_eq!(
                    fe.refusal() == Some(Route::Reject),
                    family_empty,
                    "seed {seed} {name}: {fe}"
                );
            }
            seen_fallback |= port.cluster.iter().any(|b| !ready.contains(&b.ip));
            seen_topology |= port
                .local
                .iter()
                .any(|b| ready.contains(&b.ip) && !port.cluster.contains(b));
        }
    }
    // The generator must actually reach the interesting cases, or the properties prove little.
    assert!(
        seen_fallback,
        "generator never produced a terminating fallback"
    );
    assert!(seen_topology, "generator never produced topology narrowing");
}

#[test]
fn many_services_each_get_exactly_their_own_slices() {
    // Large enough that an O(services × slices) pairing would be slow to run in CI; mainly
    // asserts that grouping pairs every slice with its own service only.
    let count = 2000;
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for i in 0..count {
        let name = format!("s{i}");
        services.push(service(
            &name,
            json!({ "clusterIP": format!("10.96.{}.{}", i / 250, i % 250) }),
        ));
        for k in 0..2 {
            let ip = format!("10.{}.{}.{}", 100 + k, i / 250, i % 250);
            slices.push(slice4(
                &format!("{name}-{k}"),
                &name,
                8080,
                json!([ep(&ip, NODE)]),
            ));
        }
    }
    let start = std::time::Instant::now();
    let computed = compute(&snapshot(services, slices), &node(), &config());
    eprintln!("compute over {count} services: {:?}", start.elapsed());
    assert_eq!(computed.plan.services.len(), count);
    for i in [0, 1, 777, count - 1] {
        let plan = tcp_port(&computed, &format!("s{i}"), "scale");
        let expected = [100, 101].map(|a| format!("10.{a}.{}.{}:8080", i / 250, i % 250));
        assert_eq!(addrs(&plan.cluster), expected, "s{i}");
    }
}

// ---------------------------------------------------------------------------------------------
// Incremental planning: one Planner fed random changes must always equal a from-scratch plan.

const NAMESPACES: [&str; 2] = ["default", "other"];
const SERVICE_NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];
const PORT_NAMES: [&str; 3] = ["", "http", "dns"];
/// The agent's own listener in these runs: NodePorts on it are refused.
const RESERVED_NODE_PORT: u16 = 30003;

fn pick_some<'a>(rng: &mut Rng, pool: &[&'a str], max: usize) -> Vec<&'a str> {
    (0..rng.below(max + 1)).map(|_| *rng.pick(pool)).collect()
}

/// A random Service at `key`, drawing addresses and ports from small pools so that Services
/// contend for frontends and health check ports, hit node addresses and reserved ports.
fn random_service(rng: &mut Rng, key: &ObjectKey) -> Service {
    let kind = *rng.pick(&[
        "ClusterIP",
        "NodePort",
        "NodePort",
        "LoadBalancer",
        "LoadBalancer",
        "ExternalName",
    ]);
    let host = rng.below(6);
    let mut cluster_ips = vec![format!("10.96.0.{host}")];
    if rng.chance(25) {
        cluster_ips.push(format!("fd00::{host}"));
        if rng.chance(30) {
            cluster_ips.reverse();
        }
    }
    if rng.chance(5) {
        cluster_ips = vec!["None".into()];
    }
    let node_ports = [
        json!(30000),
        json!(30001),
        json!(RESERVED_NODE_PORT),
        json!(8080),
        json!(null),
    ];
    let ports: Vec<Value> = (0..1 + rng.below(2))
        .map(|_| {
            json!({
                "name": rng.pick(&PORT_NAMES),
                "protocol": rng.pick(&["TCP", "UDP"]),
                "port": 80 + rng.below(2),
                "nodePort": rng.pick(&node_ports),
            })
        })
        .collect();
    let ingress: Vec<Value> = pick_some(rng, &["198.51.100.1", "198.51.100.2", "2001:db8:1::1"], 2)
        .into_iter()
        .map(|ip| json!({ "ip": ip, "ipMode": rng.pick(&[None, Some("VIP"), Some("Proxy")]) }))
        .collect();
    let mut labels = serde_json::Map::new();
    if rng.chance(15) {
        labels.insert(
            sluice_compute::SERVICE_PROXY_NAME_LABEL.into(),
            json!(rng.pick(&["sluice", "other"])),
        );
    }
    let created = rng.pick(&[
        None,
        Some("2024-01-01T00:00:00Z"),
        Some("2024-02-01T00:00:00Z"),
    ]);
    service_full(json!({
        "metadata": {
            "namespace": key.namespace, "name": key.name,
            "creationTimestamp": created, "labels": labels,
        },
        "spec": {
            "type": kind,
            "clusterIPs": cluster_ips,
            "ports": ports,
            "externalIPs": pick_some(rng, &["203.0.113.1", "203.0.113.2", "192.168.0.10", "10.96.0.1", "2001:db8::1"], 2),
            "loadBalancerSourceRanges": pick_some(rng, &["192.168.0.0/24", "203.0.113.0/24", "2001:db8::/32"], 2),
            "externalTrafficPolicy": rng.pick(&["Cluster", "Local"]),
            "internalTrafficPolicy": rng.pick(&["Cluster", "Local"]),
            "healthCheckNodePort": rng.pick(&[Some(32000), Some(32001), None]),
            "trafficDistribution": rng.pick(&[None, Some("PreferClose")]),
            "sessionAffinity": rng.pick(&["None", "ClientIP"]),
        },
        "status": { "loadBalancer": { "ingress": ingress } },
    }))
}

fn random_endpoint(rng: &mut Rng, v6: bool) -> Value {
    let host = rng.below(6);
    let address = if v6 {
        format!("fd00:10:244::{host}")
    } else {
        format!("10.244.0.{host}")
    };
    let mut conditions = serde_json::Map::new();
    for key in ["ready", "serving", "terminating"] {
        if let Some(v) = rng.maybe_bool() {
            conditions.insert(key.into(), json!(v));
        }
    }
    let zones: Vec<Value> = [ZONE, "zone-b"]
        .iter()
        .filter(|_| rng.chance(60))
        .map(|z| json!({ "name": z }))
        .collect();
    json!({
        "addresses": [address],
        "nodeName": rng.pick(&[Some(NODE), Some("node-b"), None]),
        "conditions": conditions,
        "hints": { "forZones": zones },
    })
}

/// A random EndpointSlice at `key` for a random Service of its namespace (maybe absent).
fn random_slice(rng: &mut Rng, key: &ObjectKey) -> EndpointSlice {
    let v6 = rng.chance(25);
    let ports: Vec<Value> = (0..1 + rng.below(2))
        .map(|_| {
            json!({
                "name": rng.pick(&PORT_NAMES),
                "protocol": rng.pick(&["TCP", "UDP"]),
                "port": 8000 + rng.below(3),
            })
        })
        .collect();
    let endpoints: Vec<Value> = (0..rng.below(5))
        .map(|_| random_endpoint(rng, v6))
        .collect();
    serde_json::from_value(json!({
        "metadata": {
            "namespace": key.namespace, "name": key.name,
            "labels": { "kubernetes.io/service-name": rng.pick(&SERVICE_NAMES) },
        },
        "addressType": if v6 { "IPv6" } else { "IPv4" },
        "ports": ports,
        "endpoints": endpoints,
    }))
    .expect("valid EndpointSlice JSON")
}

fn random_node(rng: &mut Rng) -> NodeInfo {
    let pool = ["192.168.0.10", "192.168.0.11", "203.0.113.1", "fd00::10"];
    let mut addresses: Vec<IpAddr> = pool
        .iter()
        .filter(|_| rng.chance(50))
        .map(|a| ip(a))
        .collect();
    addresses.sort();
    NodeInfo {
        name: NODE.into(),
        zone: rng
            .pick(&[Some(ZONE), Some("zone-b"), None])
            .map(str::to_owned),
        addresses,
    }
}

fn random_service_key(rng: &mut Rng) -> ObjectKey {
    ObjectKey::new(*rng.pick(&NAMESPACES), *rng.pick(&SERVICE_NAMES))
}

fn random_slice_key(rng: &mut Rng) -> ObjectKey {
    ObjectKey::new(*rng.pick(&NAMESPACES), format!("slice-{}", rng.below(8)))
}

fn existing_key<T>(rng: &mut Rng, map: &BTreeMap<ObjectKey, T>) -> Option<ObjectKey> {
    (!map.is_empty()).then(|| map.keys().nth(rng.below(map.len())).cloned())?
}

/// One random change to the cluster (or the node); records what it touched in `touched` and
/// returns a description for failure messages.
fn mutate(
    rng: &mut Rng,
    snapshot: &mut Snapshot,
    node: &mut NodeInfo,
    touched: &mut ChangeSet,
) -> String {
    match rng.below(10) {
        0 | 1 => {
            let key = random_service_key(rng);
            snapshot
                .services
                .insert(key.clone(), Arc::new(random_service(rng, &key)));
            touched.services.insert(key.clone());
            format!("set Service {key}")
        }
        2 => {
            let Some(key) = existing_key(rng, &snapshot.services) else {
                return "nothing to delete".into();
            };
            snapshot.services.remove(&key);
            touched.services.insert(key.clone());
            format!("delete Service {key}")
        }
        3 => {
            // An equal copy: no change at all, even when named in the change set.
            let Some(key) = existing_key(rng, &snapshot.services) else {
                return "nothing to touch".into();
            };
            let copy = Arc::new((*snapshot.services[&key]).clone());
            snapshot.services.insert(key.clone(), copy);
            touched.services.insert(key.clone());
            format!("touch Service {key}")
        }
        4 | 5 => {
            let key = random_slice_key(rng);
            snapshot
                .endpoint_slices
                .insert(key.clone(), Arc::new(random_slice(rng, &key)));
            touched.endpoint_slices.insert(key.clone());
            format!("set EndpointSlice {key}")
        }
        6 => {
            let Some(key) = existing_key(rng, &snapshot.endpoint_slices) else {
                return "nothing to delete".into();
            };
            snapshot.endpoint_slices.remove(&key);
            touched.endpoint_slices.insert(key.clone());
            format!("delete EndpointSlice {key}")
        }
        7 => {
            // Same endpoints, another Service: the slice moves.
            let Some(key) = existing_key(rng, &snapshot.endpoint_slices) else {
                return "nothing to relabel".into();
            };
            let mut moved = (*snapshot.endpoint_slices[&key]).clone();
            let owner = *rng.pick(&SERVICE_NAMES);
            moved
                .metadata
                .labels
                .get_or_insert_default()
                .insert(sluice_model::SERVICE_NAME_LABEL.into(), owner.into());
            snapshot
                .endpoint_slices
                .insert(key.clone(), Arc::new(moved));
            touched.endpoint_slices.insert(key.clone());
            format!("relabel EndpointSlice {key} to {owner}")
        }
        8 => {
            // One endpoint changes its conditions (readiness flips, termination starts).
            let Some(key) = existing_key(rng, &snapshot.endpoint_slices) else {
                return "nothing to flip".into();
            };
            let mut changed = (*snapshot.endpoint_slices[&key]).clone();
            let Some(endpoint) = changed.endpoints.as_mut().and_then(|e| e.first_mut()) else {
                return format!("EndpointSlice {key} has no endpoint to flip");
            };
            let conditions = endpoint.conditions.get_or_insert_default();
            conditions.ready = rng.maybe_bool();
            conditions.serving = rng.maybe_bool();
            conditions.terminating = rng.maybe_bool();
            snapshot
                .endpoint_slices
                .insert(key.clone(), Arc::new(changed));
            touched.endpoint_slices.insert(key.clone());
            format!("flip an endpoint of EndpointSlice {key}")
        }
        _ => {
            *node = random_node(rng);
            format!("node now {:?} in {:?}", node.addresses, node.zone)
        }
    }
}

/// Applies a delta the way a dataplane does; fails when the delta does not fit `plan`.
fn apply(plan: &mut Plan, delta: &PlanDelta) -> Result<(), String> {
    if delta.node_changed != (plan.node != delta.node) {
        return Err(format!("node_changed is {}", delta.node_changed));
    }
    plan.node = Arc::clone(&delta.node);
    for pair in delta.services.windows(2) {
        if pair[0].name >= pair[1].name {
            return Err(format!("changes not sorted at {}", pair[1].name));
        }
    }
    for change in &delta.services {
        let current = plan.services.get(&change.name).map(|p| p.as_ref());
        if current != change.before.as_deref() {
            return Err(format!("{}: `before` is not what was planned", change.name));
        }
        if change.before == change.after {
            return Err(format!("{}: change without a difference", change.name));
        }
        match &change.after {
            Some(after) => plan.services.insert(change.name.clone(), Arc::clone(after)),
            None => plan.services.remove(&change.name),
        };
    }
    if let Some(checks) = &delta.health_checks {
        plan.health_checks = checks.clone();
    }
    Ok(())
}

/// The stale UDP flows between two plans, by the rule (independent of how the planner
/// tracks changes): backends that left a UDP service port, and UDP frontends that forward now
/// but did not before.
fn expected_stale_flows(before: &Plan, after: &Plan) -> Vec<StaleFlow> {
    let mut out = BTreeSet::new();
    let names: BTreeSet<_> = before
        .services
        .keys()
        .chain(after.services.keys())
        .collect();
    for name in names.into_iter().filter(|n| n.protocol == Protocol::Udp) {
        let old = before.services.get(name).map(|p| p.as_ref());
        let new = after.services.get(name).map(|p| p.as_ref());
        let kept: BTreeSet<_> = new
            .map(|p| p.all_backends())
            .unwrap_or_default()
            .into_iter()
            .collect();
        for gone in old.map(|p| p.all_backends()).unwrap_or_default() {
            if !kept.contains(&gone) {
                out.insert(StaleFlow::Backend {
                    protocol: Protocol::Udp,
                    ip: gone.ip,
                    port: gone.port,
                });
            }
        }
        for fe in new.map(|p| p.frontends.as_slice()).unwrap_or_default() {
            let forwarded = old
                .and_then(|p| p.frontends.iter().find(|f| f.key == fe.key))
                .is_some_and(|f| f.forwards());
            if fe.forwards() && !forwarded {
                out.insert(StaleFlow::Frontend { key: fe.key });
            }
        }
    }
    out.into_iter().collect()
}

/// Everything that must hold after one planner update.
fn check_step(
    planner: &Planner,
    previous: &Plan,
    delta: &PlanDelta,
    snapshot: &Snapshot,
    node: &NodeInfo,
    config: &ComputeConfig,
) -> Result<(), String> {
    let expected = compute(snapshot, node, config);
    if *planner.plan() != expected.plan {
        return Err(format!(
            "incremental plan differs from compute:\n--- planner\n{}\n--- compute\n{}",
            planner.plan(),
            expected.plan
        ));
    }
    let mut applied = previous.clone();
    apply(&mut applied, delta)?;
    if applied != expected.plan {
        return Err(format!(
            "previous plan + delta differs from compute:\n--- applied\n{applied}\n--- compute\n{}",
            expected.plan
        ));
    }
    for service in expected.plan.services.values() {
        service.validate().map_err(|e| e.to_string())?;
    }
    // Service ports the delta does not name keep their very plan (dataplanes and
    // `PlanDelta::between` recognise unchanged services by pointer).
    let named: BTreeSet<_> = delta.services.iter().map(|c| &c.name).collect();
    for (name, plan) in &planner.plan().services {
        let same = previous
            .services
            .get(name)
            .is_some_and(|p| Arc::ptr_eq(p, plan));
        if !named.contains(name) && !same {
            return Err(format!("{name} changed without being in the delta"));
        }
    }
    if planner.warnings() != expected.warnings {
        return Err(format!(
            "warnings differ:\n--- planner {:#?}\n--- compute {:#?}",
            planner.warnings(),
            expected.warnings
        ));
    }
    let current = planner.warnings();
    if let Some(w) = planner
        .fresh_warnings()
        .iter()
        .find(|w| !current.contains(w))
    {
        return Err(format!("fresh warning {w} is not a current warning"));
    }
    let stale = expected_stale_flows(previous, &expected.plan);
    if delta.stale_flows != stale {
        return Err(format!(
            "stale flows {:?}, expected {stale:?}",
            delta.stale_flows
        ));
    }
    Ok(())
}

fn random_config(seed: u64) -> ComputeConfig {
    ComputeConfig {
        cluster_cidrs: if seed.is_multiple_of(2) {
            nets(&["10.244.0.0/16", "fd00:10:244::/56"])
        } else {
            Vec::new()
        },
        service_proxy_name: seed.is_multiple_of(3).then(|| "sluice".to_owned()),
        allow_external_ips_on_node_addresses: seed.is_multiple_of(5),
        reserved_node_ports: vec![RESERVED_NODE_PORT],
        ..ComputeConfig::default()
    }
}

/// Runs `steps` random steps from a random cluster, recording in `coverage` what they
/// reached.
fn run_incremental(seed: u64, steps: usize, coverage: &mut Coverage) {
    let mut rng = Rng::new(seed);
    let config = random_config(seed);
    let mut planner = Planner::new(config.clone());
    let mut snapshot = Snapshot::default();
    let mut node = random_node(&mut rng);
    for _ in 0..6 {
        mutate(
            &mut rng,
            &mut snapshot,
            &mut node,
            &mut ChangeSet::default(),
        );
    }
    let delta = planner.update(&snapshot, &ChangeSet::everything(), &node);
    check_step(
        &planner,
        &Plan::default(),
        &delta,
        &snapshot,
        &node,
        &config,
    )
    .unwrap_or_else(|e| panic!("seed {seed}, initial plan: {e}"));
    let mut log = Vec::new();
    for step in 0..steps {
        let before = snapshot.clone();
        let previous = planner.plan().clone();
        let mut touched = ChangeSet::default();
        for _ in 0..1 + rng.below(3) {
            log.push(format!(
                "step {step}: {}",
                mutate(&mut rng, &mut snapshot, &mut node, &mut touched)
            ));
        }
        // The exact change set, or the keys the step touched (a superset: equal copies), or
        // rarely a full resync.
        let changes = match rng.below(20) {
            0 => ChangeSet::everything(),
            1..=9 => touched,
            _ => ChangeSet::between(&before, &snapshot),
        };
        let delta = planner.update(&snapshot, &changes, &node);
        if let Err(e) = check_step(&planner, &previous, &delta, &snapshot, &node, &config) {
            panic!(
                "seed {seed}, step {step}: {e}\nchanges so far:\n{}",
                log.join("\n")
            );
        }
        coverage.record(&delta, &planner);
    }
}

/// What the random runs reached; a property that never meets a case proves nothing about it.
#[derive(Debug, Default)]
struct Coverage {
    steps: usize,
    empty_deltas: usize,
    conflicts: usize,
    health_conflicts: usize,
    stale_backends: usize,
    stale_frontends: usize,
    dropped: usize,
    v6_frontends: usize,
}

impl Coverage {
    fn record(&mut self, delta: &PlanDelta, planner: &Planner) {
        self.steps += 1;
        self.empty_deltas += usize::from(delta.is_empty());
        let warnings = planner.warnings();
        self.conflicts += usize::from(
            warnings
                .iter()
                .any(|w| w.message.contains("is already used by")),
        );
        self.health_conflicts += usize::from(warnings.iter().any(|w| {
            w.message.contains("healthCheckNodePort") && w.message.contains("already served")
        }));
        for flow in &delta.stale_flows {
            match flow {
                StaleFlow::Backend { .. } => self.stale_backends += 1,
                StaleFlow::Frontend { .. } => self.stale_frontends += 1,
            }
        }
        for service in planner.plan().services.values() {
            for fe in &service.frontends {
                self.dropped += usize::from(fe.refusal() == Some(Route::Drop));
                self.v6_frontends += usize::from(fe.key.family() == Family::V6);
            }
        }
    }
}

#[test]
fn incremental_planner_equals_compute_after_every_change() {
    let mut coverage = Coverage::default();
    let start = std::time::Instant::now();
    for seed in 1..=60 {
        run_incremental(seed, 30, &mut coverage);
    }
    eprintln!(
        "{} incremental steps in {:?}: {coverage:?}",
        coverage.steps,
        start.elapsed()
    );
    assert!(coverage.empty_deltas > 0, "{coverage:?}");
    assert!(coverage.conflicts > 0, "{coverage:?}");
    assert!(coverage.health_conflicts > 0, "{coverage:?}");
    assert!(coverage.stale_backends > 0, "{coverage:?}");
    assert!(coverage.stale_frontends > 0, "{coverage:?}");
    assert!(coverage.dropped > 0, "{coverage:?}");
    assert!(coverage.v6_frontends > 0, "{coverage:?}");
}

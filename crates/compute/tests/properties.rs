//! Property tests (no extra crates: a tiny xorshift RNG). Random but valid clusters are
//! rendered into Kubernetes objects in different orders and partitions; the computed state
//! must not depend on that, and must satisfy the categorisation invariants.

mod common;

use common::*;
use serde_json::{Value, json};
use sluice_compute::{ComputeConfig, compute};
use sluice_model::{DesiredState, Snapshot};

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
            WorldService { name: format!("svc{i}"), spec, ingress, slice_ports: ports, endpoints }
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
            "metadata": { "namespace": "default", "name": ws.name },
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

#[test]
fn rendering_order_and_slice_partition_do_not_change_the_state() {
    for seed in 1..300 {
        let world = generate(&mut Rng::new(seed));
        let first = compute(
            &render(&world, &mut Rng::new(seed * 7919)),
            &node(),
            &config(),
        );
        assert!(
            first.warnings.is_empty(),
            "seed {seed}: {:?}",
            first.warnings
        );
        for variant in 1..4 {
            let other = compute(
                &render(&world, &mut Rng::new(seed * 7919 + variant)),
                &node(),
                &config(),
            );
            assert_eq!(first.state, other.state, "seed {seed} variant {variant}");
        }
    }
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

#[test]
fn categorisation_invariants_hold() {
    let mut seen_fallback = false;
    let mut seen_topology = false;
    for seed in 1..300 {
        let world = generate(&mut Rng::new(seed));
        let state: DesiredState =
            compute(&render(&world, &mut Rng::new(seed)), &node(), &config()).state;
        for (name, port) in &state.services {
            for list in [&port.cluster_endpoints, &port.local_endpoints] {
                let keys: Vec<_> = list.iter().map(|e| (e.ip, e.port)).collect();
                assert!(
                    keys.windows(2).all(|w| w[0] < w[1]),
                    "{name}: sorted and unique: {keys:?}"
                );
            }
            assert!(
                port.local_endpoints
                    .iter()
                    .all(|e| e.is_local && e.node_name.as_deref() == Some(NODE)),
                "{name}"
            );
            // Either all ready, or the whole list is the terminating fallback.
            for list in [&port.cluster_endpoints, &port.local_endpoints] {
                assert!(
                    list.iter().all(|e| e.ready) || list.iter().all(|e| !e.ready),
                    "{name}: mixed list {list:?}"
                );
            }
            if port.has_any_endpoints {
                assert!(
                    !port.cluster_endpoints.is_empty(),
                    "{name}: has endpoints but none for Cluster"
                );
            } else {
                assert!(
                    port.cluster_endpoints.is_empty() && port.local_endpoints.is_empty(),
                    "{name}"
                );
            }
            seen_fallback |= port.cluster_endpoints.iter().any(|e| !e.ready);
            let ready_local = port
                .cluster_endpoints
                .iter()
                .filter(|e| e.is_local && e.ready)
                .count();
            seen_topology |= port.local_endpoints.iter().filter(|e| e.ready).count() > ready_local;
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
    assert_eq!(computed.state.services.len(), count);
    for i in [0, 1, 777, count - 1] {
        let state = tcp_port(&computed, &format!("s{i}"), "scale");
        let expected = [100, 101].map(|a| format!("10.{a}.{}.{}:8080", i / 250, i % 250));
        assert_eq!(addrs(&state.cluster_endpoints), expected, "s{i}");
    }
}

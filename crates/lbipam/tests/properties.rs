//! Property tests (no extra crates: a tiny xorshift RNG, as in sluice-compute). Random pools
//! (some overlapping, disabled, selective) and random Services (sharing keys, requests,
//! classes, stale or conflicting statuses) must always give an allocation that is
//! order-independent, never lets two Services hold an address by accident, only hands out
//! addresses of valid pools that select the Service, and is stable: re-running on the
//! written statuses changes nothing, and deleting or adding a Service moves no one else.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;

use common::*;
use sluice_lbipam::{
    Allocation, IpFamily, IpFamilyPolicy, LbService, LoadBalancerIPPool, condition,
};
use sluice_model::Protocol;

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
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// A small address space so pools overlap and run out often.
fn address(rng: &mut Rng, family: IpFamily) -> String {
    match family {
        IpFamily::V4 => format!("192.0.2.{}", rng.below(12)),
        IpFamily::V6 => format!("2001:db8::{:x}", rng.below(8)),
    }
}

fn random_family(rng: &mut Rng) -> IpFamily {
    if rng.chance(60) {
        IpFamily::V4
    } else {
        IpFamily::V6
    }
}

fn random_pool(rng: &mut Rng, name: &str) -> LoadBalancerIPPool {
    let blocks: Vec<String> = (0..1 + rng.below(2))
        .map(|_| {
            let family = random_family(rng);
            let (a, b) = (address(rng, family), address(rng, family));
            let (a_ip, b_ip): (IpAddr, IpAddr) = (a.parse().unwrap(), b.parse().unwrap());
            if a_ip <= b_ip {
                format!("{a}-{b}")
            } else {
                format!("{b}-{a}")
            }
        })
        .collect();
    let blocks: Vec<&str> = blocks.iter().map(String::as_str).collect();
    let mut p = if rng.chance(25) {
        pool_selecting(
            name,
            &blocks,
            "team",
            if rng.chance(50) { "a" } else { "b" },
        )
    } else {
        pool(name, &blocks)
    };
    p.spec.disabled = rng.chance(10);
    p.spec.l2_announce = rng.chance(80);
    p
}

fn random_service(rng: &mut Rng, index: usize) -> LbService {
    let mut s = svc(&format!("s{index}"), rng.below(4) as i64);
    let ports = [
        (Protocol::Tcp, 80),
        (Protocol::Udp, 53),
        (Protocol::Tcp, 443),
    ];
    s.ports = (0..1 + rng.below(2)).map(|_| ports[rng.below(3)]).collect();
    let families = [
        (vec![IpFamily::V4], IpFamilyPolicy::SingleStack),
        (vec![IpFamily::V6], IpFamilyPolicy::SingleStack),
        (
            vec![IpFamily::V4, IpFamily::V6],
            IpFamilyPolicy::PreferDualStack,
        ),
        (
            vec![IpFamily::V6, IpFamily::V4],
            IpFamilyPolicy::RequireDualStack,
        ),
    ];
    let (f, p) = families[rng.below(4)].clone();
    s = s.families(&f, p);
    if rng.chance(40) {
        let key = if rng.chance(50) { "k1" } else { "k2" };
        s = s.annotate("sluice.dev/sharing-key", key);
    }
    if rng.chance(30) {
        s = s.local(&[("app", if rng.chance(50) { "x" } else { "y" })]);
    }
    if rng.chance(30) {
        s = s.label("team", if rng.chance(50) { "a" } else { "b" });
    }
    if rng.chance(15) {
        let family = random_family(rng);
        let wanted = address(rng, family);
        s = s.annotate("sluice.dev/load-balancer-ips", &wanted);
    }
    match rng.below(10) {
        0 => s = s.class("example.com/other"),
        1 => s = s.not_load_balancer(),
        2 => s = s.class("sluice.dev/lb"),
        _ => {}
    }
    let status: Vec<String> = (0..rng.below(3))
        .map(|_| {
            let family = random_family(rng);
            address(rng, family)
        })
        .collect();
    s.ingress_ips = status.iter().map(|a| ip(a)).collect();
    s
}

struct World {
    pools: Vec<LoadBalancerIPPool>,
    services: Vec<LbService>,
}

fn generate(rng: &mut Rng) -> World {
    let pools = ["a", "b", "c"][..1 + rng.below(3)]
        .iter()
        .map(|name| random_pool(rng, name))
        .collect();
    let services = (0..1 + rng.below(10))
        .map(|i| random_service(rng, i))
        .collect();
    World { pools, services }
}

fn same_sharing_group(a: &LbService, b: &LbService) -> bool {
    let key = |s: &LbService| s.annotations.get("sluice.dev/sharing-key").cloned();
    let ports_disjoint = a.ports.iter().all(|p| !b.ports.contains(p));
    let same_pods = !a.selector.is_empty() && a.selector == b.selector;
    let policies_fit = (!a.external_traffic_local && !b.external_traffic_local) || same_pods;
    key(a).is_some() && key(a) == key(b) && ports_disjoint && policies_fit
}

/// Whether `ip` lies in a block of `pool` (parsed independently of the crate).
fn pool_contains(pool: &LoadBalancerIPPool, ip: IpAddr) -> bool {
    pool.spec
        .blocks
        .iter()
        .any(|b| match (&b.cidr, &b.start, &b.stop) {
            (Some(cidr), _, _) => cidr.parse::<ipnet::IpNet>().unwrap().contains(&ip),
            (_, Some(start), Some(stop)) => {
                let (start, stop): (IpAddr, IpAddr) =
                    (start.parse().unwrap(), stop.parse().unwrap());
                start <= ip && ip <= stop && (start.is_ipv4() == ip.is_ipv4())
            }
            _ => false,
        })
}

fn check_invariants(world: &World, a: &Allocation, seed: u64) {
    let by_key: BTreeMap<_, _> = world.services.iter().map(|s| (s.key.clone(), s)).collect();
    let mut holders: BTreeMap<IpAddr, Vec<&LbService>> = BTreeMap::new();
    for (key, out) in &a.services {
        let service = by_key[key];
        let mut families_seen = Vec::new();
        for address in &out.addresses {
            let pool = world
                .pools
                .iter()
                .find(|p| p.name() == address.pool)
                .unwrap();
            let report = &a.pools[&address.pool];
            assert_eq!(
                report.condition(condition::VALID).unwrap().status.as_str(),
                "True",
                "seed {seed}"
            );
            assert!(
                pool_contains(pool, address.ip),
                "seed {seed}: {} not in {}",
                address.ip,
                address.pool
            );
            let family = IpFamily::of(address.ip);
            assert!(
                !families_seen.contains(&family),
                "seed {seed}: two {family} for {key}"
            );
            families_seen.push(family);
            holders.entry(address.ip).or_default().push(service);
        }
        let order: Vec<usize> = families_seen
            .iter()
            .map(|f| {
                service
                    .ip_families
                    .iter()
                    .position(|g| g == f)
                    .expect("wanted family")
            })
            .collect();
        assert!(
            order.is_sorted(),
            "seed {seed}: {key} addresses out of ipFamilies order"
        );
    }
    for (ip, services) in &holders {
        for (i, a) in services.iter().enumerate() {
            for b in &services[i + 1..] {
                assert!(
                    same_sharing_group(a, b),
                    "seed {seed}: {} and {} share {ip}",
                    a.key,
                    b.key
                );
            }
        }
        let foreign = world
            .services
            .iter()
            .filter(|s| {
                s.is_load_balancer && s.load_balancer_class.as_deref() == Some("example.com/other")
            })
            .any(|s| s.ingress_ips.contains(ip));
        assert!(!foreign, "seed {seed}: {ip} is held by another class");
    }
}

fn settled(world: &World) -> (Vec<LbService>, Allocation) {
    let mut services = world.services.clone();
    let first = run(&world.pools, &services);
    apply_status(&mut services, &first);
    let second = run(&world.pools, &services);
    (services, second)
}

#[test]
fn allocation_does_not_depend_on_input_order() {
    for seed in 0..400 {
        let mut rng = Rng::new(seed);
        let mut world = generate(&mut rng);
        let a = run(&world.pools, &world.services);
        rng.shuffle(&mut world.pools);
        rng.shuffle(&mut world.services);
        assert_eq!(run(&world.pools, &world.services), a, "seed {seed}");
    }
}

#[test]
fn no_accidental_sharing_and_only_valid_selecting_pools() {
    for seed in 0..600 {
        let world = generate(&mut Rng::new(seed));
        let a = run(&world.pools, &world.services);
        check_invariants(&world, &a, seed);
    }
}

#[test]
fn writing_the_statuses_reaches_a_fixpoint_at_once() {
    for seed in 0..600 {
        let world = generate(&mut Rng::new(seed));
        let (services, second) = settled(&world);
        let pending: Vec<String> = second
            .status_updates()
            .map(|(k, _)| k.to_string())
            .collect();
        assert!(
            pending.is_empty(),
            "seed {seed}: still changing {pending:?}"
        );
        let settled_world = World {
            pools: world.pools.clone(),
            services,
        };
        check_invariants(&settled_world, &second, seed);
    }
}

#[test]
fn deleting_or_adding_a_service_moves_no_one_else() {
    for seed in 0..600 {
        let mut rng = Rng::new(seed);
        let world = generate(&mut rng);
        let (mut services, before) = settled(&world);
        let removed = services.remove(rng.below(services.len()));
        let mut newcomer = random_service(&mut rng, 99);
        newcomer.created = Some(time(100));
        newcomer.ingress_ips.clear();
        services.push(newcomer);
        let after = run(&world.pools, &services);
        for (key, old) in &before.services {
            if *key == removed.key || !after.services.contains_key(key) {
                continue;
            }
            let new = after.services[key].ips();
            assert!(
                old.ips().iter().all(|ip| new.contains(ip)),
                "seed {seed}: {key} had {:?}, now {new:?}",
                old.ips()
            );
        }
    }
}

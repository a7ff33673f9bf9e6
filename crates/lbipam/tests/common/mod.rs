//! Builders for the allocator's table and property tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use sluice_lbipam::{
    Allocation, AllocatorConfig, EventType, IpBlock, IpFamily, IpFamilyPolicy, LbService,
    LoadBalancerIPPool, LoadBalancerIPPoolSpec, ObjectKind, allocate,
};
use sluice_model::{ObjectKey, Protocol};

/// Pool `name` from blocks written as `CIDR` or `START-STOP`.
pub fn pool(name: &str, blocks: &[&str]) -> LoadBalancerIPPool {
    let blocks = blocks
        .iter()
        .map(|b| match b.split_once('-') {
            Some((start, stop)) if !b.contains('/') => IpBlock::range(start, stop),
            _ => IpBlock::cidr(*b),
        })
        .collect();
    let mut pool = LoadBalancerIPPool::new(
        name,
        LoadBalancerIPPoolSpec {
            blocks,
            ..LoadBalancerIPPoolSpec::default()
        },
    );
    pool.metadata.uid = Some(format!("uid-pool-{name}"));
    pool.metadata.generation = Some(1);
    pool
}

/// Pool that only selects Services with `label=value`.
pub fn pool_selecting(name: &str, blocks: &[&str], label: &str, value: &str) -> LoadBalancerIPPool {
    let mut p = pool(name, blocks);
    p.spec.service_selector = Some(LabelSelector {
        match_labels: Some([(label.to_string(), value.to_string())].into()),
        match_expressions: None,
    });
    p
}

/// `default/<name>`, type LoadBalancer, created at second `age_rank` (lower = older), one
/// TCP port 80, IPv4 single-stack.
pub fn svc(name: &str, age_rank: i64) -> LbService {
    let mut s = LbService::new("default", name);
    s.uid = format!("uid-{name}");
    s.created = Some(time(age_rank));
    s.ip_families = vec![IpFamily::V4];
    s.ports = vec![(Protocol::Tcp, 80)];
    s
}

pub fn time(second: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + second).unwrap())
}

/// Chainable setters for [`LbService`].
pub trait Svc: Sized {
    fn get(&mut self) -> &mut LbService;
    fn status(mut self, ips: &[&str]) -> Self {
        self.get().ingress_ips = ips.iter().map(|i| ip(i)).collect();
        self
    }
    fn annotate(mut self, key: &str, value: &str) -> Self {
        self.get().annotations.insert(key.into(), value.into());
        self
    }
    fn label(mut self, key: &str, value: &str) -> Self {
        self.get().labels.insert(key.into(), value.into());
        self
    }
    fn class(mut self, class: &str) -> Self {
        self.get().load_balancer_class = Some(class.into());
        self
    }
    fn ports(mut self, ports: &[(Protocol, u16)]) -> Self {
        self.get().ports = ports.to_vec();
        self
    }
    fn families(mut self, families: &[IpFamily], policy: IpFamilyPolicy) -> Self {
        self.get().ip_families = families.to_vec();
        self.get().ip_family_policy = policy;
        self
    }
    fn local(mut self, selector: &[(&str, &str)]) -> Self {
        self.get().external_traffic_local = true;
        self.get().selector = selector
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }
    fn not_load_balancer(mut self) -> Self {
        self.get().is_load_balancer = false;
        self
    }
}

impl Svc for LbService {
    fn get(&mut self) -> &mut LbService {
        self
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

pub fn run(pools: &[LoadBalancerIPPool], services: &[LbService]) -> Allocation {
    allocate(pools, services, &AllocatorConfig::default())
}

pub fn key(name: &str) -> ObjectKey {
    ObjectKey::new("default", name)
}

/// The desired IPs of `default/<name>`, as strings.
pub fn ips(allocation: &Allocation, name: &str) -> Vec<String> {
    allocation
        .services
        .get(&key(name))
        .unwrap_or_else(|| panic!("Service {name} not in the allocation"))
        .addresses
        .iter()
        .map(|a| a.ip.to_string())
        .collect()
}

/// `Warning|Normal Reason: message` of every event about Service `default/<name>`.
pub fn service_events(allocation: &Allocation, name: &str) -> Vec<String> {
    allocation
        .events
        .iter()
        .filter(|e| e.regarding.kind == ObjectKind::Service && e.regarding.key == key(name))
        .map(|e| format!("{:?} {}: {}", e.type_, e.reason, e.message))
        .collect()
}

/// `Reason: message` of every event about pool `name`.
pub fn pool_events(allocation: &Allocation, name: &str) -> Vec<String> {
    allocation
        .events
        .iter()
        .filter(|e| {
            e.regarding.kind == ObjectKind::LoadBalancerIPPool
                && e.regarding.key == ObjectKey::cluster(name)
        })
        .map(|e| format!("{}: {}", e.reason, e.message))
        .collect()
}

pub fn warnings(allocation: &Allocation) -> Vec<String> {
    allocation
        .events
        .iter()
        .filter(|e| e.type_ == EventType::Warning)
        .map(ToString::to_string)
        .collect()
}

/// `(status, reason, message)` of one condition of pool `name`.
pub fn pool_condition(
    allocation: &Allocation,
    name: &str,
    type_: &str,
) -> (String, String, String) {
    let c = allocation.pools[name]
        .condition(type_)
        .unwrap_or_else(|| panic!("pool {name} has no condition {type_}"));
    (
        c.status.as_str().to_string(),
        c.reason.to_string(),
        c.message.clone(),
    )
}

/// Writes the desired statuses back into the Services (what the agent's status writer does).
pub fn apply_status(services: &mut [LbService], allocation: &Allocation) {
    for service in services {
        if let Some(desired) = allocation.services.get(&service.key) {
            service.ingress_ips = desired.ips();
        }
    }
}

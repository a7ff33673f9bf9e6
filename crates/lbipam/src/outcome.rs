//! What one allocation run decides: the addresses of each Service, the pools' conditions, and
//! the Events that explain it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use sluice_model::ObjectKey;

/// Event reasons (the `reason` field of the Events the allocator asks for).
pub mod reason {
    /// Normal, Service: an address was assigned.
    pub const IP_ALLOCATED: &str = "IPAllocated";
    /// Normal, Service: an address in its status is given up (type changed, pool gone or no
    /// longer selecting it, request changed).
    pub const IP_RELEASED: &str = "IPReleased";
    /// Warning, Service: its status holds an address an older Service holds too.
    pub const IP_CONFLICT: &str = "IPConflict";
    /// Warning, Service and pool: no free address left in the matching pools.
    pub const POOL_EXHAUSTED: &str = "PoolExhausted";
    /// Warning, Service: no valid, enabled pool offers an address of a needed family.
    pub const NO_MATCHING_POOL: &str = "NoMatchingPool";
    /// Warning, Service: a requested address is in no valid pool.
    pub const REQUESTED_IP_OUTSIDE_POOLS: &str = "RequestedIPOutsidePools";
    /// Warning, Service: a requested address is held by a Service it cannot share with.
    pub const REQUESTED_IP_IN_USE: &str = "RequestedIPInUse";
    /// Warning, Service: a requested address is in a pool that is disabled or does not
    /// select the Service.
    pub const REQUESTED_IP_UNAVAILABLE: &str = "RequestedIPUnavailable";
    /// Warning, Service: an address-request annotation cannot be used.
    pub const INVALID_ANNOTATION: &str = "InvalidAnnotation";
    /// Warning, pool: the pool is invalid (see its `Valid` condition).
    pub const INVALID_POOL: &str = "InvalidPool";
}

/// Condition types of a pool's status.
pub mod condition {
    pub const VALID: &str = "Valid";
    pub const EXHAUSTED: &str = "Exhausted";
}

/// The kinds of objects Events are about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Service,
    LoadBalancerIPPool,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Service => "Service",
            ObjectKind::LoadBalancerIPPool => "LoadBalancerIPPool",
        })
    }
}

/// The object an Event is about (pools have an empty namespace).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: ObjectKind,
    pub key: ObjectKey,
    pub uid: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

/// One Event to emit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Event {
    pub regarding: ObjectRef,
    pub type_: EventType,
    /// One of [`reason`].
    pub reason: &'static str,
    pub message: String,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}: {}",
            self.regarding.kind, self.regarding.key, self.reason, self.message
        )
    }
}

/// One address assigned to a Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AssignedAddress {
    pub ip: IpAddr,
    /// Name of the pool the address belongs to.
    pub pool: String,
    /// The pool's `l2Announce`.
    pub l2_announce: bool,
}

/// The desired `status.loadBalancer` of one Service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceAddresses {
    pub uid: String,
    /// In `spec.ipFamilies` order; empty while nothing can be assigned.
    pub addresses: Vec<AssignedAddress>,
    /// The Service's status differs from `addresses`: the caller must write it.
    pub status_changed: bool,
    /// `externalTrafficPolicy: Local`: announce only from nodes with a ready local endpoint.
    pub external_traffic_local: bool,
}

impl ServiceAddresses {
    pub fn ips(&self) -> Vec<IpAddr> {
        self.addresses.iter().map(|a| a.ip).collect()
    }
}

/// `True`, `False` or `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

/// A condition without its transition time (the allocator has no clock); see
/// [`PoolReport::merged_conditions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredCondition {
    pub type_: &'static str,
    pub status: ConditionStatus,
    pub reason: &'static str,
    pub message: String,
}

/// The desired status of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolReport {
    pub uid: String,
    /// `metadata.generation`, written as the conditions' `observedGeneration`.
    pub generation: Option<i64>,
    /// `Valid` then `Exhausted`.
    pub conditions: Vec<DesiredCondition>,
}

impl PoolReport {
    pub fn condition(&self, type_: &str) -> Option<&DesiredCondition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// The `status.conditions` to write, given the ones the pool has now: a condition whose
    /// status did not change keeps its `lastTransitionTime`; others get `now`. Conditions of
    /// other types are kept as they are, after ours.
    pub fn merged_conditions(&self, existing: &[Condition], now: &Time) -> Vec<Condition> {
        let mut merged: Vec<Condition> = self
            .conditions
            .iter()
            .map(|desired| {
                let previous = existing.iter().find(|c| c.type_ == desired.type_);
                let last_transition_time = match previous {
                    Some(p) if p.status == desired.status.as_str() => {
                        p.last_transition_time.clone()
                    }
                    _ => now.clone(),
                };
                Condition {
                    type_: desired.type_.to_string(),
                    status: desired.status.as_str().to_string(),
                    reason: desired.reason.to_string(),
                    message: desired.message.clone(),
                    observed_generation: self.generation,
                    last_transition_time,
                }
            })
            .collect();
        merged.extend(
            existing
                .iter()
                .filter(|c| self.condition(&c.type_).is_none())
                .cloned(),
        );
        merged
    }
}

/// Everything one allocation run decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    /// Every Service whose `status.loadBalancer` sluice owns: the LoadBalancer Services of our
    /// class (assigned or waiting), and Services that are no longer LoadBalancers but still
    /// carry addresses (desired: none).
    pub services: BTreeMap<ObjectKey, ServiceAddresses>,
    /// Every pool by name.
    pub pools: BTreeMap<String, PoolReport>,
    /// In a deterministic order. Warnings repeat on every run while the cause lasts; see
    /// [`EventFilter`].
    pub events: Vec<Event>,
}

impl Allocation {
    /// The Services whose status must be written, with the IPs to write.
    pub fn status_updates(&self) -> impl Iterator<Item = (&ObjectKey, &ServiceAddresses)> {
        self.services.iter().filter(|(_, s)| s.status_changed)
    }

    /// Every assigned address of an `l2Announce` pool, with the Services using it (a shared
    /// address lists several) and whether each has `externalTrafficPolicy: Local`.
    pub fn l2_addresses(&self) -> BTreeMap<IpAddr, Vec<(ObjectKey, bool)>> {
        let mut by_ip: BTreeMap<IpAddr, Vec<(ObjectKey, bool)>> = BTreeMap::new();
        for (key, service) in &self.services {
            for address in service.addresses.iter().filter(|a| a.l2_announce) {
                by_ip
                    .entry(address.ip)
                    .or_default()
                    .push((key.clone(), service.external_traffic_local));
            }
        }
        by_ip
    }
}

/// `status.loadBalancer` holding these IPs (`ipMode: VIP`: sluice forwards the address on
/// every node, so traffic from inside the cluster may short-cut to it).
pub fn load_balancer_status(ips: &[IpAddr]) -> LoadBalancerStatus {
    LoadBalancerStatus {
        ingress: Some(
            ips.iter()
                .map(|ip| LoadBalancerIngress {
                    ip: Some(ip.to_string()),
                    ip_mode: Some("VIP".to_string()),
                    ..LoadBalancerIngress::default()
                })
                .collect(),
        ),
    }
}

/// Turns the level-triggered event list of each run into edges: an Event is passed on the
/// first run it appears in, and again only after a run without it.
#[derive(Debug, Default)]
pub struct EventFilter {
    previous: BTreeSet<Event>,
}

impl EventFilter {
    pub fn fresh(&mut self, events: &[Event]) -> Vec<Event> {
        let mut current: BTreeSet<Event> = BTreeSet::new();
        let mut fresh = Vec::new();
        for event in events {
            if current.insert(event.clone()) && !self.previous.contains(event) {
                fresh.push(event.clone());
            }
        }
        self.previous = current;
        fresh
    }
}

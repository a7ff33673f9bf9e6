//! What changed between two plans: the unit of work of every dataplane `apply`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::l4::{FrontendKey, HealthCheck, NodePlan, Plan, ServicePlan};
use crate::names::{Protocol, ServicePortName};

/// One service port added, changed or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceChange {
    pub name: ServicePortName,
    /// What was planned before (`None`: added).
    pub before: Option<Arc<ServicePlan>>,
    /// What is planned now (`None`: removed).
    pub after: Option<Arc<ServicePlan>>,
}

/// Connection-tracking entries that became wrong and must be removed, decided by compute.
///
/// UDP (and other connectionless) flows never end on their own: a client that keeps sending
/// keeps its NAT entry — toward a backend that is gone, or untranslated toward a frontend that
/// had no backend when the flow began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case", tag = "to")]
pub enum StaleFlow {
    /// Flows translated to this backend, which no service port of this protocol uses any more.
    Backend {
        protocol: Protocol,
        ip: IpAddr,
        port: u16,
    },
    /// Flows to this frontend that began while it had no backend.
    Frontend { key: FrontendKey },
}

/// The difference between the programmed plan and the new one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PlanDelta {
    /// The node-wide plan after the change (always present: backends need it for context).
    pub node: Arc<NodePlan>,
    /// Whether `node` differs from before.
    pub node_changed: bool,
    /// Changed service ports, sorted by name.
    pub services: Vec<ServiceChange>,
    /// The complete set of health check ports after the change, when it changed.
    pub health_checks: Option<BTreeMap<u16, HealthCheck>>,
    /// Connection-tracking entries to remove once the change is programmed.
    pub stale_flows: Vec<StaleFlow>,
}

impl PlanDelta {
    /// Nothing to program.
    pub fn is_empty(&self) -> bool {
        !self.node_changed
            && self.services.is_empty()
            && self.health_checks.is_none()
            && self.stale_flows.is_empty()
    }

    /// The delta that turns `before` into `after`, by comparing them service by service
    /// (unchanged services are recognised by pointer first). Stale flows are left empty: they
    /// are compute's decision, added by the caller.
    pub fn between(before: &Plan, after: &Plan) -> PlanDelta {
        let mut services = Vec::new();
        let mut old = before.services.iter().peekable();
        let mut new = after.services.iter().peekable();
        loop {
            let order = match (old.peek(), new.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((a, _)), Some((b, _))) => a.cmp(b),
            };
            let change = match order {
                std::cmp::Ordering::Less => old.next().map(|(name, plan)| ServiceChange {
                    name: name.clone(),
                    before: Some(Arc::clone(plan)),
                    after: None,
                }),
                std::cmp::Ordering::Greater => new.next().map(|(name, plan)| ServiceChange {
                    name: name.clone(),
                    before: None,
                    after: Some(Arc::clone(plan)),
                }),
                std::cmp::Ordering::Equal => {
                    let (name, a) = old.next().expect("peeked");
                    let (_, b) = new.next().expect("peeked");
                    (!Arc::ptr_eq(a, b) && a != b).then(|| ServiceChange {
                        name: name.clone(),
                        before: Some(Arc::clone(a)),
                        after: Some(Arc::clone(b)),
                    })
                }
            };
            services.extend(change);
        }
        PlanDelta {
            node: Arc::clone(&after.node),
            node_changed: before.node != after.node,
            services,
            health_checks: (before.health_checks != after.health_checks)
                .then(|| after.health_checks.clone()),
            stale_flows: Vec::new(),
        }
    }

    /// The delta that programs `plan` from nothing.
    pub fn full(plan: &Plan) -> PlanDelta {
        PlanDelta::between(
            &Plan {
                node: Arc::default(),
                ..Plan::default()
            },
            plan,
        )
    }
}

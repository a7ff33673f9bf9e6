//! The incremental planner: keeps the plan of a node and, given which objects changed,
//! recomputes only the Services they affect (plus the Services whose frontend claims they
//! contend with). Equal to a from-scratch computation after any sequence of changes (a
//! property test checks this); cost proportional to the change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use sluice_model::EndpointSlice;
use sluice_model::{ChangeSet, NodeInfo, ObjectKey, SERVICE_NAME_LABEL, Snapshot};
use sluice_plan::{
    FrontendKey, FrontendKind, HealthCheck, NodePlan, Plan, PlanDelta, ServiceChange, ServiceName,
    ServicePortName,
};

use crate::conflicts::{self, Claim, Claims};
use crate::decide::{self, Context};
use crate::service::{self, PortIntent, Rank, ServiceIntent};
use crate::{ComputeConfig, Problem, Warning, node_port_addresses, stale};

/// What the planner remembers of one Service.
#[derive(Debug, Default)]
struct Entry {
    intent: Option<ServiceIntent>,
    /// Problems of the Service and its slices.
    warnings: Vec<Warning>,
    /// Frontends lost to other Services, per port.
    conflicts: BTreeMap<ServicePortName, Vec<Warning>>,
    /// The health check node port is served for another Service.
    health_conflict: Option<Warning>,
}

impl Entry {
    fn port(&self, name: &ServicePortName) -> Option<&PortIntent> {
        self.intent.as_ref()?.ports.iter().find(|p| p.name == *name)
    }

    fn all_warnings(&self) -> impl Iterator<Item = &Warning> {
        self.warnings
            .iter()
            .chain(self.conflicts.values().flatten())
            .chain(self.health_conflict.iter())
    }
}

/// Keeps the plan of one node up to date. See the module docs.
pub struct Planner {
    config: ComputeConfig,
    node: Option<NodeInfo>,
    plan: Plan,
    services: HashMap<ObjectKey, Entry>,
    /// EndpointSlice → the Service it belongs to (label), and the reverse.
    slice_owner: HashMap<ObjectKey, ObjectKey>,
    /// Sorted lists rather than `BTreeSet`s: a set's first node holds room for 11 keys where a
    /// Service nearly always has one slice (5 MiB at 10,000 Services).
    service_slices: HashMap<ObjectKey, Vec<ObjectKey>>,
    claims: Claims,
    /// healthCheckNodePort → claiming Services in conflict order, with their local count.
    health_claims: BTreeMap<u16, BTreeMap<Rank, usize>>,
    /// Warnings that appeared in the last update (for logs and Events).
    fresh_warnings: Vec<Warning>,
}

impl Planner {
    pub fn new(config: ComputeConfig) -> Planner {
        Planner {
            config,
            node: None,
            plan: Plan::default(),
            services: HashMap::new(),
            slice_owner: HashMap::new(),
            service_slices: HashMap::new(),
            claims: Claims::default(),
            health_claims: BTreeMap::new(),
            fresh_warnings: Vec::new(),
        }
    }

    /// The current plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Every current warning, sorted.
    pub fn warnings(&self) -> Vec<Warning> {
        let mut all: Vec<Warning> = self
            .services
            .values()
            .flat_map(Entry::all_warnings)
            .cloned()
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Warnings that appeared in the last [`update`](Self::update) (each once).
    pub fn fresh_warnings(&self) -> &[Warning] {
        &self.fresh_warnings
    }

    /// Brings the plan up to date with `snapshot`, where `changes` names what changed since
    /// the previous call (the first call, or a change of `node`, recomputes everything).
    /// Returns what changed in the plan.
    pub fn update(
        &mut self,
        snapshot: &Snapshot,
        changes: &ChangeSet,
        node: &NodeInfo,
    ) -> PlanDelta {
        self.fresh_warnings.clear();
        let everything = changes.everything || self.node.as_ref() != Some(node);
        let node_changed = self.set_node(node);
        let affected = if everything {
            self.rebuild_slice_index(snapshot);
            let mut all: BTreeSet<ObjectKey> = snapshot.services.keys().cloned().collect();
            all.extend(self.services.keys().cloned());
            all
        } else {
            let mut affected = changes.services.clone();
            for slice in &changes.endpoint_slices {
                affected.extend(self.reindex_slice(slice, snapshot.endpoint_slices.get(slice)));
            }
            affected
        };
        let mut touched_ports = BTreeSet::new();
        let mut touched_health = BTreeSet::new();
        let mut warned_before = self.warnings_of(affected.iter());
        for key in &affected {
            self.reparse(key, snapshot, &mut touched_ports, &mut touched_health);
        }
        // Other Services whose warnings may change: those contending for the same frontends
        // or health check ports. Their current warnings are still the old ones.
        let mut others: BTreeSet<ObjectKey> = touched_ports
            .iter()
            .map(|name| ObjectKey::new(name.namespace(), name.name()))
            .collect();
        for port in &touched_health {
            others.extend(
                self.health_claims
                    .get(port)
                    .into_iter()
                    .flatten()
                    .map(|(r, _)| r.key.clone()),
            );
        }
        others.retain(|key| !affected.contains(key));
        warned_before.extend(self.warnings_of(others.iter()));
        let mut services = Vec::new();
        for name in touched_ports {
            services.extend(self.redecide(&name));
        }
        let health_checks = self.update_health_checks(touched_health);
        let stale_flows = stale::flows(&services);
        let warned_after = self.warnings_of(affected.iter().chain(&others));
        self.fresh_warnings = warned_after.difference(&warned_before).cloned().collect();
        PlanDelta {
            node: Arc::clone(&self.plan.node),
            node_changed,
            services,
            health_checks,
            stale_flows,
        }
    }

    /// Records the node; returns whether the node-wide plan changed.
    fn set_node(&mut self, node: &NodeInfo) -> bool {
        self.node = Some(node.clone());
        let node_plan = NodePlan {
            name: node.name.clone(),
            nodeport_addresses: node_port_addresses(
                &node.addresses,
                &self.config.nodeport_addresses,
            ),
            pod_cidrs: self.config.cluster_cidrs.clone(),
        };
        if *self.plan.node == node_plan {
            return false;
        }
        self.plan.node = Arc::new(node_plan);
        true
    }

    fn rebuild_slice_index(&mut self, snapshot: &Snapshot) {
        self.slice_owner.clear();
        self.service_slices.clear();
        for (key, slice) in &snapshot.endpoint_slices {
            if let Some(owner) = owner_of(key, slice) {
                insert_sorted(self.service_slices.entry(owner.clone()).or_default(), key);
                self.slice_owner.insert(key.clone(), owner);
            }
        }
    }

    /// Updates the index for one changed slice; returns the Services it belonged to before and
    /// belongs to now.
    fn reindex_slice(
        &mut self,
        key: &ObjectKey,
        slice: Option<&Arc<EndpointSlice>>,
    ) -> Vec<ObjectKey> {
        let mut owners = Vec::new();
        if let Some(old) = self.slice_owner.remove(key) {
            if let Some(set) = self.service_slices.get_mut(&old) {
                if let Ok(at) = set.binary_search(key) {
                    set.remove(at);
                }
                if set.is_empty() {
                    self.service_slices.remove(&old);
                }
            }
            owners.push(old);
        }
        if let Some(new) = slice.and_then(|s| owner_of(key, s)) {
            insert_sorted(self.service_slices.entry(new.clone()).or_default(), key);
            self.slice_owner.insert(key.clone(), new.clone());
            owners.push(new);
        }
        owners
    }

    /// Re-reads one Service and moves its frontend claims; collects the ports to re-decide.
    fn reparse(
        &mut self,
        key: &ObjectKey,
        snapshot: &Snapshot,
        touched_ports: &mut BTreeSet<ServicePortName>,
        touched_health: &mut BTreeSet<u16>,
    ) {
        let old = self.services.remove(key).unwrap_or_default();
        let mut touched_frontends = BTreeSet::new();
        if let Some(intent) = &old.intent {
            self.release(intent, &mut touched_frontends, touched_health);
            touched_ports.extend(intent.ports.iter().map(|p| p.name.clone()));
        }
        let Some(service) = snapshot.services.get(key) else {
            self.touch_claimants(&touched_frontends, touched_ports);
            return;
        };
        let slices: Vec<&Arc<EndpointSlice>> = self
            .service_slices
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|s| snapshot.endpoint_slices.get(s))
            .collect();
        let node = self.node.clone().unwrap_or_default();
        let (intent, warnings) = service::intent(key, service, &slices, &node, &self.config);
        if let Some(intent) = &intent {
            self.claim(intent, &mut touched_frontends, touched_health);
            touched_ports.extend(intent.ports.iter().map(|p| p.name.clone()));
        }
        self.touch_claimants(&touched_frontends, touched_ports);
        self.services.insert(
            key.clone(),
            Entry {
                intent,
                warnings,
                conflicts: old.conflicts,
                // Decided again by `update_health_checks` if the Service still claims a port
                // (`claim` touched it); a Service that no longer claims one has no conflict.
                health_conflict: None,
            },
        );
    }

    fn claim(
        &mut self,
        intent: &ServiceIntent,
        touched: &mut BTreeSet<FrontendKey>,
        health: &mut BTreeSet<u16>,
    ) {
        for port in &intent.ports {
            for (key, kind) in &port.frontends {
                self.claims.add(*key, claim_of(intent, port, *kind));
                touched.insert(*key);
            }
        }
        if let Some((port, count)) = intent.health_check {
            self.health_claims
                .entry(port)
                .or_default()
                .insert(intent.rank.clone(), count);
            health.insert(port);
        }
    }

    fn release(
        &mut self,
        intent: &ServiceIntent,
        touched: &mut BTreeSet<FrontendKey>,
        health: &mut BTreeSet<u16>,
    ) {
        for port in &intent.ports {
            for (key, kind) in &port.frontends {
                self.claims.remove(key, &claim_of(intent, port, *kind));
                touched.insert(*key);
            }
        }
        if let Some((port, _)) = intent.health_check {
            if let Some(claims) = self.health_claims.get_mut(&port) {
                claims.remove(&intent.rank);
                if claims.is_empty() {
                    self.health_claims.remove(&port);
                }
            }
            health.insert(port);
        }
    }

    /// Every port that claims one of `frontends` must be re-decided: its winner may differ.
    fn touch_claimants(
        &self,
        frontends: &BTreeSet<FrontendKey>,
        ports: &mut BTreeSet<ServicePortName>,
    ) {
        for key in frontends {
            ports.extend(self.claims.claimants(key).cloned());
        }
    }

    /// Decides one service port again; returns the change if its plan differs.
    fn redecide(&mut self, name: &ServicePortName) -> Option<ServiceChange> {
        let service_key = ObjectKey::new(name.namespace(), name.name());
        let node = self.node.clone().unwrap_or_default();
        let ctx = Context {
            pods_known: !self.config.cluster_cidrs.is_empty(),
            node_addresses: &node.addresses,
        };
        let (after, conflicts) = match self.services.get(&service_key).and_then(|e| e.port(name)) {
            Some(port) => {
                let (owned, conflicts) = self.owned_frontends(&service_key, port);
                let plan = decide::plan_port(port, &owned, ctx);
                (Some(plan), conflicts)
            }
            None => (None, Vec::new()),
        };
        if let Some(entry) = self.services.get_mut(&service_key) {
            if conflicts.is_empty() {
                entry.conflicts.remove(name);
            } else {
                entry.conflicts.insert(name.clone(), conflicts);
            }
        }
        let before = self.plan.services.get(name).cloned();
        if before.as_deref() == after.as_ref() {
            return None;
        }
        let after = after.map(Arc::new);
        match &after {
            Some(plan) => self.plan.services.insert(name.clone(), Arc::clone(plan)),
            None => self.plan.services.remove(name),
        };
        Some(ServiceChange {
            name: name.clone(),
            before,
            after,
        })
    }

    /// The frontends `port` wins, and a warning for each one it loses.
    fn owned_frontends(
        &self,
        service_key: &ObjectKey,
        port: &PortIntent,
    ) -> (Vec<(FrontendKey, FrontendKind)>, Vec<Warning>) {
        let mut owned = Vec::new();
        let mut lost = Vec::new();
        for (key, kind) in &port.frontends {
            match self.claims.winner(key) {
                Some(winner) if winner.port == port.name => owned.push((*key, *kind)),
                Some(winner) => lost.push(Warning::new(
                    format!("Service {service_key}"),
                    &Problem::FrontendTaken {
                        kind: kind.as_str(),
                        frontend: key.to_string(),
                        owner: winner.port.to_string(),
                        rule: conflicts::RULE,
                    },
                )),
                None => {}
            }
        }
        (owned, lost)
    }

    /// Re-evaluates the health check ports whose claims changed (reporting Services that lose
    /// a port to an older one); the complete map when any entry differs.
    fn update_health_checks(&mut self, ports: BTreeSet<u16>) -> Option<BTreeMap<u16, HealthCheck>> {
        let mut changed = false;
        for port in ports {
            let claims: Vec<(Rank, usize)> = self
                .health_claims
                .get(&port)
                .map(|c| c.iter().map(|(r, n)| (r.clone(), *n)).collect())
                .unwrap_or_default();
            for (i, (rank, _)) in claims.iter().enumerate() {
                let conflict = (i > 0).then(|| {
                    Warning::new(
                        format!("Service {}", rank.key),
                        &Problem::HealthCheckPortTaken {
                            port,
                            owner: claims[0].0.key.to_string(),
                        },
                    )
                });
                if let Some(entry) = self.services.get_mut(&rank.key) {
                    entry.health_conflict = conflict;
                }
            }
            let winner = claims.first().map(|(rank, count)| HealthCheck {
                service: ServiceName::new(rank.key.namespace.as_str(), rank.key.name.as_str()),
                local_endpoints: *count,
            });
            if self.plan.health_checks.get(&port) == winner.as_ref() {
                continue;
            }
            changed = true;
            match winner {
                Some(check) => self.plan.health_checks.insert(port, check),
                None => self.plan.health_checks.remove(&port),
            };
        }
        changed.then(|| self.plan.health_checks.clone())
    }

    fn warnings_of<'a>(&self, keys: impl Iterator<Item = &'a ObjectKey>) -> BTreeSet<Warning> {
        keys.filter_map(|key| self.services.get(key))
            .flat_map(Entry::all_warnings)
            .cloned()
            .collect()
    }
}

fn claim_of(intent: &ServiceIntent, port: &PortIntent, kind: FrontendKind) -> Claim {
    Claim {
        rank: intent.rank.clone(),
        port: port.name.clone(),
        kind,
    }
}

/// The Service a slice belongs to (label `kubernetes.io/service-name`, same namespace).
fn owner_of(key: &ObjectKey, slice: &EndpointSlice) -> Option<ObjectKey> {
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(ObjectKey::new(key.namespace.clone(), service.clone()))
}

/// Plans for a snapshot from scratch (every Service computed once).
pub(crate) fn plan_all(
    snapshot: &Snapshot,
    node: &NodeInfo,
    config: &ComputeConfig,
) -> (Plan, Vec<Warning>) {
    let mut planner = Planner::new(config.clone());
    planner.update(snapshot, &ChangeSet::everything(), node);
    let warnings = planner.warnings();
    (planner.plan, warnings)
}

impl std::fmt::Debug for Planner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planner")
            .field("services", &self.plan.services.len())
            .finish_non_exhaustive()
    }
}

/// Adds `key` to a sorted list without duplicates, growing it by exactly one.
fn insert_sorted(keys: &mut Vec<ObjectKey>, key: &ObjectKey) {
    if let Err(at) = keys.binary_search(key) {
        keys.reserve_exact(1);
        keys.insert(at, key.clone());
    }
}

//! The programming logic behind [`crate::EbpfDataplane`], written against [`MapStore`] so
//! it runs the same on the kernel and on [`crate::store::FakeMapStore`].
//!
//! Bookkeeping: for every service port, the plan it was last programmed with and its group
//! ids (its rows are re-rendered from those on demand, so memory holds no copy of the maps),
//! and which service port owns each frontend key. `apply` renders and writes only the changed
//! service ports (and of those only the rows that differ, e.g. the Maglev slots that moved);
//! `resync` compares plans by pointer and, when the bookkeeping is known to match the kernel,
//! verifies it cheaply with per-map entry counts, reading everything back (a *reconcile*)
//! only at start, after a failure, or when the counts disagree.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use sluice_dataplane::{ApplyReport, ServiceFailure, error_chain};
use sluice_plan::{NodePlan, Plan, PlanDelta, Protocol, ServicePlan, ServicePortName};

use crate::abi::{MapKind, SvcKey};
use crate::groups::{GroupIds, ServiceGroups};
use crate::render::{Counts, MapContent, NodeRows, ServiceRows, render_node, render_service};
use crate::sizing::{MapOccupancy, MapSizes, grown};
use crate::store::{MapStore, RowKey, StoreError};
use crate::transition::{Before, Ops, node_ops, row_keys, service_ops};

mod reconcile;

/// What the kernel holds for one service port, as far as the bookkeeping knows.
#[derive(Debug, Clone)]
enum Programmed {
    /// Exactly the rows of `plan` with `groups`.
    Clean {
        plan: Arc<ServicePlan>,
        groups: ServiceGroups,
        counts: Counts,
    },
    /// A write failed part-way: some of `keys` are present, with old or new values.
    Dirty {
        groups: ServiceGroups,
        keys: BTreeSet<RowKey>,
    },
}

/// One service port's change, ready to run.
struct Transition {
    name: ServicePortName,
    after: Option<Arc<ServicePlan>>,
    prev_groups: ServiceGroups,
    groups: ServiceGroups,
    /// Ids of `prev_groups` the change no longer uses (given back once it succeeded).
    released: Vec<u32>,
    before: Before,
    rows: ServiceRows,
    /// Other service ports owning frontends this one wants (left out of `rows`).
    held_by: Vec<ServicePortName>,
}

/// Says which frontends `t` leaves out because another service port has them.
fn warn_held(t: &Transition) {
    for owner in &t.held_by {
        tracing::warn!(service = %t.name, owner = %owner,
            "ebpf: frontend already programmed for another service port; skipped");
    }
}

/// Totals of one `apply` or `resync`.
#[derive(Debug, Default)]
struct Outcome {
    operations: usize,
    /// Service ports whose rows were written (a set: a port taking over a frontend may run
    /// twice in one change).
    changed: HashSet<ServicePortName>,
    failed: Vec<ServiceFailure>,
}

impl Outcome {
    fn report(self, full_sync: bool) -> ApplyReport {
        ApplyReport {
            services_changed: self.changed.len(),
            operations: self.operations,
            full_sync,
            failed: self.failed,
        }
    }
}

/// Per-service bookkeeping and the apply / resync logic (see the module docs).
#[derive(Debug, Default)]
pub struct MapProgrammer {
    services: HashMap<ServicePortName, Programmed>,
    /// Which service port owns each frontend key (a second claimant is refused).
    owners: HashMap<SvcKey, ServicePortName>,
    ids: GroupIds,
    node: Option<Arc<NodePlan>>,
    node_rows: NodeRows,
    /// Entries per agent map: node rows plus every clean service port's rows.
    expected: Counts,
    /// Whether the bookkeeping is known to match the kernel (else resync reconciles).
    verified: bool,
    sizes: MapSizes,
    /// What `restore` read, for the first reconcile.
    restored: Option<MapContent>,
    /// Entries of the datapath's maps when last counted.
    datapath_counts: BTreeMap<MapKind, usize>,
}

impl MapProgrammer {
    pub fn new(sizes: MapSizes) -> Self {
        MapProgrammer {
            sizes,
            ..MapProgrammer::default()
        }
    }

    /// Reads what an earlier run left; the first resync reconciles against it.
    pub fn restore(&mut self, store: &mut dyn MapStore) -> Result<&MapContent, StoreError> {
        let content = store.read()?;
        self.verified = false;
        Ok(self.restored.insert(content))
    }

    /// Makes the maps hold exactly `plan` (see the module docs for how cheaply).
    pub fn resync(
        &mut self,
        store: &mut dyn MapStore,
        plan: &Plan,
    ) -> Result<ApplyReport, StoreError> {
        if !self.verified {
            let content = match self.restored.take() {
                Some(content) => content,
                None => store.read()?,
            };
            return self.reconcile(store, plan, content);
        }
        let mut out = Outcome::default();
        let node_ops = self.node_change(&plan.node);
        let mut names: Vec<ServicePortName> = plan.services.keys().cloned().collect();
        names.extend(
            self.services
                .keys()
                .filter(|n| !plan.services.contains_key(*n))
                .cloned(),
        );
        let changes: Vec<(ServicePortName, Option<Arc<ServicePlan>>)> = names
            .into_iter()
            .filter_map(|name| {
                let after = plan.services.get(&name).cloned();
                self.differs(&name, after.as_ref()).then_some((name, after))
            })
            .collect();
        self.program(store, &plan.node, node_ops, &changes, &mut out)?;
        if out.failed.is_empty() && self.drifted(store)? {
            let content = store.read()?;
            let mut report = self.reconcile(store, plan, content)?;
            report.operations += out.operations;
            return Ok(report);
        }
        Ok(out.report(true))
    }

    /// Programs one delta on top of the bookkeeping, then prunes its stale flows.
    pub fn apply(
        &mut self,
        store: &mut dyn MapStore,
        delta: &PlanDelta,
    ) -> Result<ApplyReport, StoreError> {
        let mut out = Outcome::default();
        let node_ops = self.node_change(&delta.node);
        let changes: Vec<(ServicePortName, Option<Arc<ServicePlan>>)> = delta
            .services
            .iter()
            .filter(|c| self.differs(&c.name, c.after.as_ref()))
            .map(|c| (c.name.clone(), c.after.clone()))
            .collect();
        self.program(store, &delta.node, node_ops, &changes, &mut out)?;
        if !delta.stale_flows.is_empty() {
            match store.prune(&delta.stale_flows) {
                Ok(n) => tracing::debug!(pruned = n, "ebpf: stale flows removed"),
                Err(e) => tracing::warn!("ebpf: removing stale flows failed: {}", error_chain(&e)),
            }
        }
        Ok(out.report(false))
    }

    /// Entries / capacity per map: the agent's maps from the bookkeeping (free), the
    /// datapath's LRU maps as last counted — counted again when `count_datapath` (a walk of
    /// those maps: done on resync, not on every apply).
    pub fn occupancy(
        &mut self,
        store: &mut dyn MapStore,
        count_datapath: bool,
    ) -> Vec<MapOccupancy> {
        if count_datapath {
            for map in MapKind::ALL.into_iter().filter(|m| m.datapath_owned()) {
                match store.count(map) {
                    Ok(n) => {
                        self.datapath_counts.insert(map, n);
                    }
                    Err(e) => tracing::debug!("ebpf: counting {map}: {}", error_chain(&e)),
                }
            }
        }
        MapKind::ALL
            .into_iter()
            .map(|map| {
                let entries = if map.datapath_owned() {
                    self.datapath_counts.get(&map).copied().unwrap_or(0)
                } else {
                    self.expected.get(map)
                };
                MapOccupancy {
                    map,
                    entries,
                    capacity: store.capacity(map),
                }
            })
            .collect()
    }

    /// Forgets everything (after `cleanup`).
    pub fn reset(&mut self) {
        *self = MapProgrammer::new(std::mem::take(&mut self.sizes));
    }

    /// Whether `name` must be reprogrammed to hold `after`.
    fn differs(&self, name: &ServicePortName, after: Option<&Arc<ServicePlan>>) -> bool {
        match (self.services.get(name), after) {
            (None, None) => false,
            (Some(Programmed::Clean { plan, .. }), Some(after)) => {
                !Arc::ptr_eq(plan, after) && **plan != **after
            }
            _ => true,
        }
    }

    /// The node rows' change when the node plan differs from the programmed one.
    fn node_change(&self, node: &Arc<NodePlan>) -> Option<Ops> {
        if self
            .node
            .as_ref()
            .is_some_and(|n| Arc::ptr_eq(n, node) || n == node)
        {
            return None;
        }
        Some(node_ops(&self.node_rows, &render_node(node)))
    }

    /// Node additions, every service change, node removals.
    fn program(
        &mut self,
        store: &mut dyn MapStore,
        node: &Arc<NodePlan>,
        node_ops: Option<Ops>,
        changes: &[(ServicePortName, Option<Arc<ServicePlan>>)],
        out: &mut Outcome,
    ) -> Result<(), StoreError> {
        let projected = self.projected(changes, node_ops.as_ref());
        self.ensure_capacity(store, projected);
        if let Some(ops) = &node_ops {
            self.write_node_early(store, ops, out)?;
        }
        // A frontend can move between two service ports of one change (a NodePort or an
        // address given up by one Service and taken by another). When the taker comes first,
        // the other still holds the frontend: the taker runs again once everything else ran.
        let changing: HashSet<&ServicePortName> = changes.iter().map(|(name, _)| name).collect();
        let mut again = Vec::new();
        for (name, after) in changes {
            let t = self.transition(name, after.clone());
            if t.held_by.iter().any(|owner| changing.contains(owner)) {
                again.push((name, after));
            } else {
                warn_held(&t);
            }
            self.run(store, t, out);
        }
        for (name, after) in again {
            let t = self.transition(name, after.clone());
            warn_held(&t);
            self.run(store, t, out);
        }
        if let Some(ops) = node_ops {
            self.write_node_late(store, &ops, out)?;
            self.expected = self.expected.minus(self.node_rows.counts());
            self.node_rows = render_node(node);
            self.expected = self.expected.plus(self.node_rows.counts());
            self.node = Some(Arc::clone(node));
        }
        Ok(())
    }

    fn write_node_early(
        &mut self,
        store: &mut dyn MapStore,
        ops: &Ops,
        out: &mut Outcome,
    ) -> Result<(), StoreError> {
        for row in &ops.early {
            if let Err(e) = store.write(row) {
                self.verified = false;
                return Err(e);
            }
            out.operations += 1;
        }
        Ok(())
    }

    fn write_node_late(
        &mut self,
        store: &mut dyn MapStore,
        ops: &Ops,
        out: &mut Outcome,
    ) -> Result<(), StoreError> {
        for key in &ops.late_deletes {
            if let Err(e) = store.delete(key) {
                self.verified = false;
                return Err(e);
            }
            out.operations += 1;
        }
        Ok(())
    }

    /// Entries per map once `changes` are programmed (estimated without rendering).
    fn projected(
        &self,
        changes: &[(ServicePortName, Option<Arc<ServicePlan>>)],
        node_ops: Option<&Ops>,
    ) -> Counts {
        let mut projected = self.expected;
        if let Some(ops) = node_ops {
            projected = projected.plus(ops.added);
        }
        for (name, after) in changes {
            if let Some(Programmed::Clean { counts, .. }) = self.services.get(name) {
                projected = projected.minus(*counts);
            }
            if let Some(after) = after {
                projected = projected.plus(estimate(after));
            }
        }
        projected
    }

    /// Grows the automatically sized maps that `projected` would overflow. A failed resize
    /// is logged: the service ports that do not fit are then skipped and reported.
    fn ensure_capacity(&self, store: &mut dyn MapStore, projected: Counts) {
        let resize: BTreeMap<MapKind, u32> = MapKind::AGENT
            .into_iter()
            .filter(|map| !self.sizes.is_explicit(*map))
            .filter_map(|map| {
                let cap = store.capacity(map);
                let needed = projected.get(map);
                (needed > cap as usize).then(|| (map, grown(cap, needed)))
            })
            .collect();
        if resize.is_empty() {
            return;
        }
        tracing::info!(?resize, "ebpf: growing maps for the plan");
        if let Err(e) = store.resize(&resize) {
            tracing::warn!(
                "ebpf: cannot grow the maps, service ports that do not fit are skipped: {}",
                error_chain(&e)
            );
        }
    }

    /// Prepares `name`'s change to `after` (allocating the groups it newly needs).
    fn transition(
        &mut self,
        name: &ServicePortName,
        after: Option<Arc<ServicePlan>>,
    ) -> Transition {
        let (before, prev_groups) = match self.services.get(name) {
            Some(Programmed::Clean { plan, groups, .. }) => {
                let rows = self.owned(name, render_service(plan, groups), true);
                (Before::Exact(rows), groups.clone())
            }
            Some(Programmed::Dirty { groups, keys }) => {
                (Before::Unknown(keys.clone()), groups.clone())
            }
            None => (
                Before::Exact(ServiceRows::default()),
                ServiceGroups::default(),
            ),
        };
        let (groups, released) = match &after {
            Some(plan) => ServiceGroups::assign(plan, &prev_groups, &mut self.ids),
            None => (
                ServiceGroups::default(),
                prev_groups.id_set().into_iter().collect(),
            ),
        };
        let (rows, held_by) = match &after {
            Some(plan) => {
                let rows = render_service(plan, &groups);
                let held_by = self.held_by_others(name, &rows);
                (self.owned(name, rows, false), held_by)
            }
            None => (ServiceRows::default(), Vec::new()),
        };
        Transition {
            name: name.clone(),
            after,
            prev_groups,
            groups,
            released,
            before,
            rows,
            held_by,
        }
    }

    /// `rows` without the frontends another service port owns. `before`: the rows as
    /// programmed (only keys owned by `name`); else the rows wanted (keys nobody else owns).
    fn owned(&self, name: &ServicePortName, mut rows: ServiceRows, before: bool) -> ServiceRows {
        rows.svc.retain(|(key, _)| match self.owners.get(key) {
            Some(owner) => owner == name,
            None if before => false,
            None => true,
        });
        rows
    }

    /// The other service ports that own frontends of `rows` (which `owned` leaves out).
    fn held_by_others(&self, name: &ServicePortName, rows: &ServiceRows) -> Vec<ServicePortName> {
        let mut owners: Vec<ServicePortName> = rows
            .svc
            .iter()
            .filter_map(|(key, _)| self.owners.get(key).filter(|o| *o != name))
            .cloned()
            .collect();
        owners.dedup();
        owners
    }

    /// Writes one transition; on failure the service port is reported and marked dirty.
    fn run(&mut self, store: &mut dyn MapStore, t: Transition, out: &mut Outcome) {
        let ops = service_ops(&t.before, &t.rows);
        let in_use = self.expected;
        if let Some((map, needed, capacity)) = ops.overflow(in_use, |m| store.capacity(m)) {
            for id in t.groups.not_in(&t.prev_groups) {
                self.ids.release(id);
            }
            out.failed.push(ServiceFailure {
                service: t.name.clone(),
                reason: format!(
                    "does not fit: map {map} holds {} of {capacity} entries and needs {needed} more",
                    in_use.get(map)
                ),
            });
            return;
        }
        if !ops.is_empty() {
            out.changed.insert(t.name.clone());
        }
        match ops.execute(store) {
            Ok(done) => {
                out.operations += done;
                self.commit(t);
            }
            Err((e, done)) => {
                out.operations += done;
                out.failed.push(ServiceFailure {
                    service: t.name.clone(),
                    reason: error_chain(&e),
                });
                self.mark_dirty(t);
            }
        }
    }

    /// The transition is in the kernel: the bookkeeping follows.
    fn commit(&mut self, t: Transition) {
        let old = self.services.remove(&t.name);
        if let Some(Programmed::Clean { counts, .. }) = &old {
            self.expected = self.expected.minus(*counts);
        }
        for key in t.before.keys() {
            if let RowKey::Svc(k) = key
                && self.owners.get(&k) == Some(&t.name)
            {
                self.owners.remove(&k);
            }
        }
        for id in t.released {
            self.ids.release(id);
        }
        let Some(plan) = t.after else { return };
        for (key, _) in &t.rows.svc {
            self.owners.insert(*key, t.name.clone());
        }
        let counts = t.rows.counts();
        self.expected = self.expected.plus(counts);
        self.services.insert(
            t.name,
            Programmed::Clean {
                plan,
                groups: t.groups,
                counts,
            },
        );
    }

    /// A write failed part-way: remember every key that may be present and keep all ids.
    fn mark_dirty(&mut self, t: Transition) {
        self.verified = false;
        if let Some(Programmed::Clean { counts, .. }) = self.services.get(&t.name) {
            self.expected = self.expected.minus(*counts);
        }
        let mut keys = t.before.keys();
        keys.extend(row_keys(&t.rows));
        for key in &keys {
            if let RowKey::Svc(k) = key {
                self.owners.entry(*k).or_insert_with(|| t.name.clone());
            }
        }
        let mut groups = t.prev_groups;
        for (slot, id) in t.groups.ids {
            groups.ids.entry(slot).or_insert(id);
        }
        self.services
            .insert(t.name, Programmed::Dirty { groups, keys });
    }

    /// Whether the kernel's entry counts differ from the bookkeeping's.
    fn drifted(&self, store: &mut dyn MapStore) -> Result<bool, StoreError> {
        for map in MapKind::AGENT {
            let found = store.count(map)?;
            if found != self.expected.get(map) {
                tracing::warn!(map = %map, found, expected = self.expected.get(map),
                    "ebpf: map content drifted from what was programmed; reading it back");
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// How many rows a service plan renders to, without rendering its Maglev tables.
pub fn estimate(plan: &ServicePlan) -> Counts {
    use crate::groups::GroupKind;
    let mut c = Counts::default();
    let entries: Vec<_> = plan
        .frontends
        .iter()
        .flat_map(|fe| {
            crate::render::frontend_entries(fe)
                .into_iter()
                .map(move |e| (fe, e))
        })
        .collect();
    c.add(MapKind::Svc, entries.len());
    let mut groups = BTreeSet::new();
    let mut ranges = BTreeSet::new();
    for (fe, e) in &entries {
        let Some(slot) = e.group else { continue };
        if e.flags & crate::abi::SVC_SRC_RANGES != 0 {
            for net in &fe.allowed_sources {
                ranges.insert((slot, *net));
            }
        }
        if !groups.insert(slot) {
            continue;
        }
        match slot.0 {
            GroupKind::Random(set) => c.add(MapKind::Slot, plan.backends(set, e.family).count()),
            GroupKind::Maglev(_) => c.add(MapKind::Maglev, crate::abi::MAGLEV_M as usize),
            GroupKind::Ranges => {}
        }
    }
    c.add(MapKind::Src, ranges.len());
    c
}

/// Backends of connectionless (UDP) frontends found in the maps: after a restart, compute
/// decides which of them went stale while the agent was down.
pub fn connectionless_backends(content: &MapContent) -> BTreeSet<(Protocol, IpAddr, u16)> {
    let udp_groups: BTreeSet<u32> = content
        .svc
        .iter()
        .filter(|(k, v)| k.proto == Protocol::Udp.number() && v.count > 0)
        .map(|(_, v)| v.group)
        .collect();
    content
        .slot
        .iter()
        .chain(&content.maglev)
        .filter(|(k, _)| udp_groups.contains(&k.group))
        .map(|(_, b)| {
            let ip = crate::dump::backend_ip(b);
            (Protocol::Udp, ip, u16::from_be(b.port))
        })
        .collect()
}

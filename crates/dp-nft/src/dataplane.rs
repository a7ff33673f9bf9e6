//! [`NftDataplane`]: keeps, per family, what each service port rendered to, so a delta
//! re-renders and sends only the service ports it names; a transaction the kernel refuses is
//! split until the service ports at fault are found, and everything else still applies. A
//! periodic resync compares plans (pointers first) and asks the executor whether anyone else
//! changed the ruleset; only then does it read our table's names back.
//!
//! Per service port it keeps only what cannot be recomputed: the plan (shared with the
//! planner) and the slot layouts its rendering used, compactly; the rules it rendered to are
//! rendered again from those when a change needs them (microseconds a service port).
//!
//! It also owns what is shared between service ports: which pickers (a pick chain and its
//! slot map) are declared — a change needing a new one declares it in the same transaction;
//! unused ones stay until the next full rewrite — and how many service ports use each hairpin
//! address (an element of `hairpin-endpoints` is added with the first and deleted with the
//! last).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use sluice_dataplane::{
    ApplyReport, Dataplane, DataplaneError, Restored, ServiceFailure, error_chain,
};
use sluice_plan::{Family, NodePlan, Plan, PlanDelta, ServicePlan, ServicePortName, StaleFlow};

use crate::exec::{Drift, NftError, NftExecutor};
use crate::netlink::NetlinkNft;
use crate::render::{
    Element, KeptSlots, NO_RULES, Previous, ServiceRules, element_containers, hairpin_element,
    hairpin_elements, render_all, render_node, render_service,
};
use crate::slots::{FoundSlots, Picker};
use crate::transaction::{self, Existing, PickerChain, Transaction, static_chains};

const NAME: &str = "nftables";

/// What one family's table holds besides the service ports' own objects, as we programmed it.
#[derive(Debug, Clone, Default)]
struct FamilyState {
    node: Vec<Element>,
    /// Pickers whose map and chain exist.
    pickers: BTreeSet<Picker>,
    /// Service ports using each `hairpin-endpoints` address.
    hairpins: HairpinCounts,
}

/// How many service ports use each `hairpin-endpoints` address, keyed by the address of its
/// own family (8 bytes an IPv4 entry instead of the 24 of `(IpAddr, u32)`: one entry per
/// endpoint of the cluster).
#[derive(Debug, Clone, Default)]
struct HairpinCounts {
    v4: HashMap<Ipv4Addr, u32>,
    v6: HashMap<Ipv6Addr, u32>,
}

impl HairpinCounts {
    fn get(&self, ip: IpAddr) -> u32 {
        let count = match ip {
            IpAddr::V4(ip) => self.v4.get(&ip),
            IpAddr::V6(ip) => self.v6.get(&ip),
        };
        count.copied().unwrap_or(0)
    }

    fn add(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(ip) => *self.v4.entry(ip).or_default() += 1,
            IpAddr::V6(ip) => *self.v6.entry(ip).or_default() += 1,
        }
    }

    fn remove(&mut self, ip: IpAddr) {
        fn down<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, ip: K) {
            if let Some(count) = map.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    map.remove(&ip);
                }
            }
        }
        match ip {
            IpAddr::V4(ip) => down(&mut self.v4, ip),
            IpAddr::V6(ip) => down(&mut self.v6, ip),
        }
    }
}

/// A programmed service port: the plan it was rendered from and, per family, the slot layouts
/// that rendering used — together they render its rules again ([`Programmed::rules`]).
#[derive(Debug, Clone)]
struct Kept {
    plan: Arc<ServicePlan>,
    /// Indexed like [`Family::ALL`].
    slots: [KeptSlots; 2],
}

/// What the kernel holds, as we programmed it.
#[derive(Debug, Clone, Default)]
struct Programmed {
    families: BTreeMap<Family, FamilyState>,
    /// Every programmed service port.
    services: BTreeMap<ServicePortName, Kept>,
}

impl Programmed {
    /// What `name` is programmed as in `family` (nothing when it is not programmed).
    fn rules(&self, name: &ServicePortName, family: Family) -> ServiceRules {
        self.services
            .get(name)
            .map(|kept| render_kept(kept, family))
            .unwrap_or_default()
    }
}

/// The position of `family` in [`Family::ALL`].
fn family_index(family: Family) -> usize {
    Family::ALL
        .iter()
        .position(|f| *f == family)
        .expect("every family is in Family::ALL")
}

/// The rules a kept service port was programmed with in `family`.
fn render_kept(kept: &Kept, family: Family) -> ServiceRules {
    let slots = &kept.slots[family_index(family)];
    render_service(&kept.plan, family, Previous::Kept(slots))
}

/// One service port's change, rendered for both families: what it was programmed as, and
/// what it becomes.
struct Rendered {
    name: ServicePortName,
    plan: Option<Arc<ServicePlan>>,
    old: BTreeMap<Family, ServiceRules>,
    rules: BTreeMap<Family, ServiceRules>,
}

/// The nftables backend. See the module docs.
pub struct NftDataplane<E: NftExecutor = NetlinkNft> {
    exec: E,
    /// What the kernel holds; `None` when unknown (start, or after a failed resync), which
    /// makes the next `resync` rewrite everything.
    programmed: Option<Programmed>,
    /// Objects found by `restore`, reconciled (stale ones deleted) by the first resync.
    found: BTreeMap<Family, Existing>,
    /// Slots found by `restore`: the first full rewrite keeps each endpoint where it was.
    found_slots: BTreeMap<Family, FoundSlots>,
    /// Something was refused since the last full rewrite: the kernel may differ from what we
    /// believe, so the next `resync` rewrites everything.
    needs_full: bool,
}

impl NftDataplane<NetlinkNft> {
    /// The real backend, writing netlink batches; fails when the kernel lacks nf_tables.
    pub fn new() -> Result<Self, DataplaneError> {
        let exec = NetlinkNft::new().map_err(|e| DataplaneError::Unavailable {
            backend: NAME,
            reason: error_chain(&e),
        })?;
        Ok(Self::with_executor(exec))
    }
}

fn kernel_err(action: &str, err: &NftError) -> DataplaneError {
    DataplaneError::Kernel {
        backend: NAME,
        action: action.to_owned(),
        detail: error_chain(err),
    }
}

impl<E: NftExecutor> NftDataplane<E> {
    pub fn with_executor(exec: E) -> Self {
        Self {
            exec,
            programmed: None,
            found: BTreeMap::new(),
            found_slots: BTreeMap::new(),
            needs_full: false,
        }
    }

    pub fn executor(&self) -> &E {
        &self.exec
    }

    /// Removes our tables when a previous run (in nftables mode) left them; whether it did.
    pub fn remove_tables_if_present(&mut self) -> Result<bool, DataplaneError> {
        let mut present = false;
        for family in Family::ALL {
            let back = self
                .exec
                .read_back(family)
                .map_err(|e| kernel_err("reading back the ruleset", &e))?;
            present |= !back.existing.chains.is_empty();
        }
        if present {
            self.cleanup()?;
        }
        Ok(present)
    }

    /// The full ruleset `plan` translates to (what `sluice plan` shows): one `nft -f` script
    /// per family, from an empty kernel.
    pub fn render_plan(plan: &Plan) -> String {
        let existing = Existing::default();
        Family::ALL
            .iter()
            .map(|family| {
                let rules = render_all(plan.services.values().map(Arc::as_ref), *family);
                let pickers = pickers_of(&rules);
                let mut shared = render_node(&plan.node, *family);
                shared.extend(hairpin_elements(&rules));
                transaction::full(*family, &pickers, &rules, &shared, &existing).to_string()
            })
            .collect()
    }

    /// Runs a transaction (nothing to do when it is empty).
    fn run(&mut self, tx: &Transaction<'_>) -> Result<(), NftError> {
        if tx.is_empty() {
            return Ok(());
        }
        self.exec.apply(tx)
    }

    fn flush_flows(&mut self, flows: &[StaleFlow]) {
        for flow in flows {
            if let Err(err) = self.exec.flush_conntrack(flow) {
                tracing::warn!(
                    "removing stale conntrack entries failed: {}",
                    error_chain(&err)
                );
            }
        }
    }

    /// Applies `changes` (node elements first) and isolates the service ports the kernel
    /// refuses: a refused transaction is split in halves until single service ports remain.
    fn apply_changes(
        &mut self,
        state: &mut Programmed,
        node: Option<&NodePlan>,
        changes: Vec<Rendered>,
        report: &mut ApplyReport,
    ) -> Result<(), DataplaneError> {
        if let Some(node) = node {
            let new: BTreeMap<Family, Vec<Element>> = Family::ALL
                .iter()
                .map(|f| (*f, render_node(node, *f)))
                .collect();
            let tx = node_delta(state, &new);
            self.run(&tx)
                .map_err(|e| kernel_err("updating node addresses", &e))?;
            for (family, elements) in new {
                state.families.entry(family).or_default().node = elements;
            }
        }
        self.apply_isolated(state, changes, report);
        Ok(())
    }

    fn apply_isolated(
        &mut self,
        state: &mut Programmed,
        changes: Vec<Rendered>,
        report: &mut ApplyReport,
    ) {
        if changes.is_empty() {
            return;
        }
        let shared = shared_changes(state, &changes);
        let tx = service_delta(&changes, &shared);
        let operations = tx.len();
        let result = self.run(&tx);
        drop(tx);
        match result {
            Ok(()) => {
                report.operations += operations;
                report.services_changed += changes.len();
                for change in changes {
                    record(state, change);
                }
            }
            Err(err) if changes.len() == 1 => {
                let change = changes.into_iter().next().expect("one change");
                tracing::warn!(service = %change.name, "{}: nftables refused this service port: {}", change.name, error_chain(&err));
                report.failed.push(ServiceFailure {
                    service: change.name,
                    reason: error_chain(&err),
                });
            }
            Err(_) => {
                let mut first = changes;
                let second = first.split_off(first.len() / 2);
                self.apply_isolated(state, first, report);
                self.apply_isolated(state, second, report);
            }
        }
    }
}

impl Rendered {
    /// What the service port was programmed as in `family` (`None`: nothing).
    fn old_in(&self, family: Family) -> Option<&ServiceRules> {
        self.old.get(&family)
    }
}

/// Renders one service port change for both families against what `state` holds: a set
/// keeps its slots (those of the endpoints that stay) where its capacity still fits.
fn render_change(
    state: &Programmed,
    name: ServicePortName,
    plan: Option<Arc<ServicePlan>>,
) -> Rendered {
    let old: BTreeMap<Family, ServiceRules> = Family::ALL
        .iter()
        .map(|f| (*f, state.rules(&name, *f)))
        .collect();
    let rules = Family::ALL
        .iter()
        .map(|f| {
            let r = plan
                .as_deref()
                .map(|p| render_service(p, *f, Previous::Rules(&old[f])))
                .unwrap_or_default();
            (*f, r)
        })
        .collect();
    Rendered {
        name,
        plan,
        old,
        rules,
    }
}

/// Renders every service port of `plan` for a full rewrite, keeping the slots `found` (read
/// back at a restart).
fn render_fresh(plan: &Plan, found: &BTreeMap<Family, FoundSlots>) -> Vec<Rendered> {
    plan.services
        .iter()
        .map(|(name, p)| {
            let rules = Family::ALL
                .iter()
                .map(|f| {
                    let previous = found.get(f).map_or(Previous::Nothing, Previous::Found);
                    (*f, render_service(p, *f, previous))
                })
                .collect();
            Rendered {
                name: name.clone(),
                plan: Some(Arc::clone(p)),
                old: BTreeMap::new(),
                rules,
            }
        })
        .collect()
}

/// The pickers `rules` use, ready to declare.
fn pickers_of<'a>(rules: impl IntoIterator<Item = &'a ServiceRules>) -> Vec<PickerChain> {
    let pickers: BTreeSet<Picker> = rules.into_iter().flat_map(ServiceRules::pickers).collect();
    pickers.into_iter().map(PickerChain::new).collect()
}

/// What a delta writes per family besides the service ports' own chains and static-map
/// elements.
#[derive(Default)]
struct SharedChanges {
    /// Pickers not declared yet.
    pickers: Vec<PickerChain>,
    /// Slot and hairpin elements that go, and that come.
    gone: Vec<Element>,
    come: Vec<Element>,
}

/// Per family, what `changes` write besides their own objects: new pickers, their slots'
/// elements that changed, and the hairpin elements whose address loses its last service port
/// or gains its first.
fn shared_changes(state: &Programmed, changes: &[Rendered]) -> BTreeMap<Family, SharedChanges> {
    let mut out = BTreeMap::new();
    for family in Family::ALL {
        let current = state.families.get(&family);
        let mut shared = SharedChanges::default();
        let declared = current.map(|s| &s.pickers);
        let needed: BTreeSet<Picker> = changes
            .iter()
            .flat_map(|c| c.rules[&family].pickers())
            .filter(|p| !declared.is_some_and(|d| d.contains(p)))
            .collect();
        shared.pickers = needed.into_iter().map(PickerChain::new).collect();
        for change in changes {
            let old: BTreeSet<Element> = change
                .old_in(family)
                .map(|r| r.slot_elements().collect())
                .unwrap_or_default();
            let new: BTreeSet<Element> = change.rules[&family].slot_elements().collect();
            shared.gone.extend(old.difference(&new).cloned());
            shared.come.extend(new.difference(&old).cloned());
        }
        let (gone, come) = hairpin_changes(current, changes, family);
        shared.gone.extend(gone);
        shared.come.extend(come);
        out.insert(family, shared);
    }
    out
}

/// The hairpin elements `changes` make go and come in `family`.
fn hairpin_changes(
    current: Option<&FamilyState>,
    changes: &[Rendered],
    family: Family,
) -> (Vec<Element>, Vec<Element>) {
    let mut net: BTreeMap<IpAddr, isize> = BTreeMap::new();
    for change in changes {
        for ip in change
            .old_in(family)
            .map(|r| r.hairpins.as_slice())
            .unwrap_or_default()
        {
            *net.entry(*ip).or_default() -= 1;
        }
        for ip in &change.rules[&family].hairpins {
            *net.entry(*ip).or_default() += 1;
        }
    }
    let (mut gone, mut come) = (Vec::new(), Vec::new());
    for (ip, delta) in net.into_iter().filter(|(_, d)| *d != 0) {
        let before = current.map_or(0, |s| s.hairpins.get(ip) as isize);
        match (before > 0, before + delta > 0) {
            (true, false) => gone.push(hairpin_element(ip)),
            (false, true) => come.push(hairpin_element(ip)),
            _ => {}
        }
    }
    (gone, come)
}

/// The transaction bringing the changed service ports from what `state` holds to `changes`.
fn service_delta<'a>(
    changes: &'a [Rendered],
    shared: &'a BTreeMap<Family, SharedChanges>,
) -> Transaction<'a> {
    let mut tx = Transaction::default();
    for family in Family::ALL {
        let pairs = changes
            .iter()
            .map(|c| (c.old_in(family).unwrap_or(&NO_RULES), &c.rules[&family]));
        let s = &shared[&family];
        let elements = Some((s.gone.as_slice(), s.come.as_slice()));
        tx.extend(transaction::delta(family, &s.pickers, pairs, elements));
    }
    tx
}

fn node_delta<'a>(
    state: &'a Programmed,
    new: &'a BTreeMap<Family, Vec<Element>>,
) -> Transaction<'a> {
    let mut tx = Transaction::default();
    for (family, elements) in new {
        let old = state
            .families
            .get(family)
            .map(|s| s.node.as_slice())
            .unwrap_or_default();
        tx.extend(transaction::delta(
            *family,
            &[],
            std::iter::empty(),
            Some((old, elements)),
        ));
    }
    tx
}

/// Records a committed change: its plan and slot layouts, the pickers it declared, the hairpin
/// counts moved.
fn record(state: &mut Programmed, change: Rendered) {
    let mut slots: [KeptSlots; 2] = Default::default();
    for (family, rules) in &change.rules {
        let family_state = state.families.entry(*family).or_default();
        family_state.pickers.extend(rules.pickers());
        let old = change.old.get(family).map(|r| r.hairpins.as_slice());
        for ip in old.unwrap_or_default() {
            family_state.hairpins.remove(*ip);
        }
        for ip in &rules.hairpins {
            family_state.hairpins.add(*ip);
        }
        slots[family_index(*family)] = rules.kept_slots();
    }
    match change.plan {
        Some(plan) => state.services.insert(change.name, Kept { plan, slots }),
        None => state.services.remove(&change.name),
    };
}

impl<E: NftExecutor> Dataplane for NftDataplane<E> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn restore(&mut self) -> Result<Restored, DataplaneError> {
        let mut restored = Restored::default();
        for family in Family::ALL {
            let back = self
                .exec
                .read_back(family)
                .map_err(|e| kernel_err("reading back the ruleset", &e))?;
            if !back.existing.chains.is_empty() {
                tracing::info!(
                    family = family.as_str(),
                    chains = back.existing.chains.len(),
                    "found an existing sluice table; reconciling it without a flush"
                );
            }
            restored.backends.extend(back.backends);
            self.found.insert(family, back.existing);
            self.found_slots.insert(family, back.slots);
        }
        self.programmed = None;
        Ok(restored)
    }

    fn resync(&mut self, plan: &Plan) -> Result<ApplyReport, DataplaneError> {
        if !self.needs_full && self.changed_behind_our_back()? {
            self.needs_full = true;
        }
        if self.needs_full {
            let known = self.programmed.clone();
            self.reread_kernel()?;
            match self.full_resync(plan) {
                Ok(report) => return Ok(report),
                // A full rewrite also deletes every chain the plan no longer has; a chain the
                // kernel will not let go (a rule outside sluice jumps to it) refuses every
                // full rewrite. A refused transaction changed nothing, so what we knew still
                // holds: go on one service port at a time, so only the one at fault waits.
                Err(err) if known.is_some() => {
                    tracing::warn!(
                        "nftables refused the full rewrite ({}); applying the changes service port by service port",
                        error_chain(&err)
                    );
                    self.programmed = known;
                }
                Err(err) => return Err(err),
            }
        }
        if let Some(mut state) = self.programmed.take() {
            // We know what the kernel holds: bring it to `plan` like any delta.
            let delta = delta_from_state(&state, plan);
            let mut report = ApplyReport {
                full_sync: true,
                ..ApplyReport::default()
            };
            let node = delta.node_changed.then_some(delta.node.as_ref());
            let changes = delta
                .services
                .into_iter()
                .map(|c| render_change(&state, c.name, c.after))
                .collect();
            let result = self.apply_changes(&mut state, node, changes, &mut report);
            self.programmed = Some(state);
            self.needs_full = result.is_err() || !report.failed.is_empty();
            return result.map(|()| report);
        }
        self.full_resync(plan)
    }

    fn apply(&mut self, delta: &PlanDelta) -> Result<ApplyReport, DataplaneError> {
        let Some(mut state) = self.programmed.take() else {
            return Err(DataplaneError::Kernel {
                backend: NAME,
                action: "apply".to_owned(),
                detail: "nothing programmed yet: resync first".to_owned(),
            });
        };
        let mut report = ApplyReport::default();
        let node = delta.node_changed.then_some(delta.node.as_ref());
        let changes = delta
            .services
            .iter()
            .map(|c| render_change(&state, c.name.clone(), c.after.clone()))
            .collect();
        let result = self.apply_changes(&mut state, node, changes, &mut report);
        self.programmed = Some(state);
        self.needs_full |= result.is_err() || !report.failed.is_empty();
        result?;
        let failed: Vec<&ServicePortName> = report.failed.iter().map(|f| &f.service).collect();
        let flows: Vec<StaleFlow> = delta
            .stale_flows
            .iter()
            .filter(|_| failed.is_empty())
            .copied()
            .collect();
        self.flush_flows(&flows);
        Ok(report)
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        self.run(&transaction::cleanup())
            .map_err(|e| kernel_err("deleting the sluice tables", &e))?;
        self.programmed = None;
        Ok(())
    }
}

impl<E: NftExecutor> NftDataplane<E> {
    /// Rewrites everything in one transaction (first programming after start). If the kernel
    /// refuses it, the service ports at fault are found by splitting, each attempt again a
    /// complete rewrite of the ones known good.
    fn full_resync(&mut self, plan: &Plan) -> Result<ApplyReport, DataplaneError> {
        let all = render_fresh(plan, &self.found_slots);
        let mut report = ApplyReport {
            full_sync: true,
            ..ApplyReport::default()
        };
        let refs: Vec<&Rendered> = all.iter().collect();
        let shared = shared_elements(&plan.node, &refs);
        let existing = self.found.clone();
        let tx = full_transaction(&shared, &existing, &refs);
        let operations = tx.len();
        let applied = self.run(&tx);
        drop(tx);
        let result = match applied {
            Ok(()) => {
                report.operations = operations;
                report.services_changed = all.len();
                Ok(all)
            }
            Err(err) if all.is_empty() => Err(kernel_err("nft transaction", &err)),
            Err(err) => {
                tracing::warn!(
                    "nftables refused the full ruleset ({}); finding the service ports at fault",
                    error_chain(&err)
                );
                self.bisect_full(&plan.node, all, &mut report)
            }
        };
        let good = result?;
        let mut state = Programmed::default();
        for (family, elements) in node_elements(&plan.node) {
            state.families.entry(family).or_default().node = elements;
        }
        for change in good {
            record(&mut state, change);
        }
        self.found.clear();
        self.found_slots.clear();
        self.programmed = Some(state);
        self.needs_full = !report.failed.is_empty();
        Ok(report)
    }

    /// Whether someone else changed our table since we last wrote it: asks the executor
    /// (one generation request for netlink), and only when the ruleset changed at all compares
    /// our table's chain and set names with what we programmed. A rule edited inside one of
    /// our chains keeps its names and goes unnoticed until the next full rewrite.
    fn changed_behind_our_back(&mut self) -> Result<bool, DataplaneError> {
        let Some(state) = &self.programmed else {
            return Ok(false);
        };
        match self.exec.drift() {
            Ok(Drift::None | Drift::Unknown) => return Ok(false),
            Ok(Drift::Possible) => {}
            Err(err) => tracing::warn!(
                "cannot tell whether the ruleset changed ({}); checking our table",
                error_chain(&err)
            ),
        }
        let expected: Vec<(Family, Existing)> = Family::ALL
            .iter()
            .map(|f| (*f, expected_names(state, *f)))
            .collect();
        for (family, wanted) in expected {
            let found = self
                .exec
                .read_names(family)
                .map_err(|e| kernel_err("listing our chains and sets", &e))?;
            if found != wanted {
                tracing::warn!(
                    family = family.as_str(),
                    missing = wanted.chains.difference(&found.chains).count()
                        + wanted.sets.difference(&found.sets).count(),
                    unexpected = found.chains.difference(&wanted.chains).count()
                        + found.sets.difference(&wanted.sets).count(),
                    "our nftables table was changed by someone else; rewriting it"
                );
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Forgets what we believe is programmed and reads the kernel again, so the next full
    /// rewrite reconciles what is really there (someone may have changed it).
    fn reread_kernel(&mut self) -> Result<(), DataplaneError> {
        self.programmed = None;
        for family in Family::ALL {
            let names = self
                .exec
                .read_names(family)
                .map_err(|e| kernel_err("listing our chains and sets", &e))?;
            self.found.insert(family, names);
        }
        Ok(())
    }

    /// Greedy split: keeps every half that applies on top of the good ones so far.
    fn bisect_full(
        &mut self,
        node: &NodePlan,
        all: Vec<Rendered>,
        report: &mut ApplyReport,
    ) -> Result<Vec<Rendered>, DataplaneError> {
        let existing = self.found.clone();
        let shared = shared_elements(node, &[]);
        let base = full_transaction(&shared, &existing, &[]);
        let applied = self.run(&base);
        drop(base);
        applied.map_err(|e| kernel_err("nft transaction (base table)", &e))?;
        let mut good: Vec<Rendered> = Vec::new();
        let mut pending = vec![all];
        while let Some(mut group) = pending.pop() {
            let candidate: Vec<&Rendered> = good.iter().chain(&group).collect();
            let shared = shared_elements(node, &candidate);
            let tx = full_transaction(&shared, &existing, &candidate);
            let applied = self.run(&tx);
            drop(tx);
            match applied {
                Ok(()) => good.append(&mut group),
                Err(err) if group.len() == 1 => {
                    let change = group.pop().expect("one");
                    report.failed.push(ServiceFailure {
                        service: change.name,
                        reason: error_chain(&err),
                    });
                }
                Err(_) => {
                    let second = group.split_off(group.len() / 2);
                    pending.push(second);
                    pending.push(group);
                }
            }
        }
        report.services_changed = good.len();
        Ok(good)
    }
}

/// The node-wide elements of both families.
fn node_elements(node: &NodePlan) -> BTreeMap<Family, Vec<Element>> {
    Family::ALL
        .iter()
        .map(|f| (*f, render_node(node, *f)))
        .collect()
}

/// Per family, what a full rewrite with `services` holds besides their own objects: the
/// pickers they use, node addresses and hairpin addresses.
fn shared_elements(
    node: &NodePlan,
    services: &[&Rendered],
) -> BTreeMap<Family, (Vec<PickerChain>, Vec<Element>)> {
    node_elements(node)
        .into_iter()
        .map(|(family, mut elements)| {
            let rules = || services.iter().map(|r| &r.rules[&family]);
            elements.extend(hairpin_elements(rules()));
            (family, (pickers_of(rules()), elements))
        })
        .collect()
}

/// A full rewrite of both families with `services`, deleting what `existing` holds beyond.
fn full_transaction<'a>(
    shared: &'a BTreeMap<Family, (Vec<PickerChain>, Vec<Element>)>,
    existing: &'a BTreeMap<Family, Existing>,
    services: &[&'a Rendered],
) -> Transaction<'a> {
    static NOTHING: Existing = Existing {
        chains: BTreeSet::new(),
        sets: BTreeSet::new(),
    };
    let mut tx = Transaction::default();
    for family in Family::ALL {
        let rules = services.iter().map(|r| &r.rules[&family]);
        let found = existing.get(&family).unwrap_or(&NOTHING);
        let (pickers, elements) = &shared[&family];
        tx.extend(transaction::full(family, pickers, rules, elements, found));
    }
    tx
}

/// The names our table holds when it holds exactly what we programmed.
fn expected_names(state: &Programmed, family: Family) -> Existing {
    let mut names = Existing::default();
    names
        .chains
        .extend(static_chains(family).iter().map(|c| c.name.to_owned()));
    names
        .sets
        .extend(element_containers().iter().map(|c| c.name.to_owned()));
    for kept in state.services.values() {
        let rules = render_kept(kept, family);
        names.chains.extend(rules.chains.into_keys());
        names.sets.extend(rules.affinity_sets.into_keys());
    }
    if let Some(programmed) = state.families.get(&family) {
        names
            .chains
            .extend(programmed.pickers.iter().map(Picker::chain));
        names
            .sets
            .extend(programmed.pickers.iter().map(Picker::map));
    }
    names
}

/// The delta that turns what `state` holds into `plan`: service ports compared by plan
/// (pointer first), so a resync with nothing new renders nothing.
fn delta_from_state(state: &Programmed, plan: &Plan) -> PlanDelta {
    let mut delta = PlanDelta {
        node: Arc::clone(&plan.node),
        ..PlanDelta::default()
    };
    delta.node_changed = Family::ALL.iter().any(|f| {
        let old = state.families.get(f).map(|s| s.node.as_slice());
        old.unwrap_or_default() != render_node(&plan.node, *f)
    });
    // Both sides are sorted by name: one merge walk, no hashing.
    let mut old = state.services.iter().map(|(n, k)| (n, &k.plan)).peekable();
    let mut new = plan.services.iter().peekable();
    loop {
        let order = match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((a, _)), Some((b, _))) => a.cmp(b),
        };
        let (name, after) = match order {
            std::cmp::Ordering::Less => {
                let (name, _) = old.next().expect("peeked");
                (name, None)
            }
            std::cmp::Ordering::Greater => {
                let (name, service) = new.next().expect("peeked");
                (name, Some(service))
            }
            std::cmp::Ordering::Equal => {
                let (name, before) = old.next().expect("peeked");
                let (_, after) = new.next().expect("peeked");
                if Arc::ptr_eq(before, after) || before == after {
                    continue;
                }
                (name, Some(after))
            }
        };
        delta.services.push(sluice_plan::ServiceChange {
            name: name.clone(),
            before: None,
            after: after.map(Arc::clone),
        });
    }
    delta
}

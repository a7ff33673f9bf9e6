//! [`NftDataplane`]: keeps, per family, what each service port rendered to, so a delta
//! re-renders and sends only the service ports it names; a transaction the kernel refuses is
//! split until the service ports at fault are found, and everything else still applies.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sluice_dataplane::{
    ApplyReport, Dataplane, DataplaneError, Restored, ServiceFailure, error_chain,
};
use sluice_plan::{Family, NodePlan, Plan, PlanDelta, ServicePlan, ServicePortName, StaleFlow};

use crate::exec::{NftCommand, NftError, NftExecutor};
use crate::render::{Element, ServiceRules, render_node, render_service};
use crate::transaction::{self, Existing};

const NAME: &str = "nftables";

/// What one family's table holds, as we programmed it.
#[derive(Debug, Clone, Default)]
struct FamilyState {
    services: HashMap<ServicePortName, ServiceRules>,
    node: Vec<Element>,
}

/// One service port's change, rendered for both families.
struct Rendered {
    name: ServicePortName,
    plan: Option<Arc<ServicePlan>>,
    rules: BTreeMap<Family, ServiceRules>,
}

/// The nftables backend. See the module docs.
pub struct NftDataplane<E: NftExecutor = NftCommand> {
    exec: E,
    /// What the kernel holds; `None` when unknown (start, or after a failed resync), which
    /// makes the next `resync` rewrite everything.
    programmed: Option<BTreeMap<Family, FamilyState>>,
    /// Objects found by `restore`, reconciled (stale ones deleted) by the first resync.
    found: BTreeMap<Family, Existing>,
    /// Something was refused since the last full rewrite: the kernel may differ from what we
    /// believe, so the next `resync` rewrites everything.
    needs_full: bool,
}

impl NftDataplane<NftCommand> {
    /// The real backend; fails when nft is missing or the kernel lacks nf_tables.
    pub fn new() -> Result<Self, DataplaneError> {
        let exec = NftCommand::default();
        exec.check().map_err(|e| DataplaneError::Unavailable {
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
        Family::ALL
            .iter()
            .map(|family| {
                let rules: Vec<ServiceRules> = plan
                    .services
                    .values()
                    .map(|s| render_service(s, *family))
                    .collect();
                transaction::full(
                    *family,
                    &rules,
                    &render_node(&plan.node, *family),
                    &Existing::default(),
                )
            })
            .collect()
    }

    /// Runs a script; stale flows are removed only after it applied.
    fn run(&mut self, script: &str) -> Result<(), NftError> {
        if script.is_empty() {
            return Ok(());
        }
        self.exec.apply(script)
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
        state: &mut BTreeMap<Family, FamilyState>,
        node: Option<&NodePlan>,
        changes: Vec<Rendered>,
        report: &mut ApplyReport,
    ) -> Result<(), DataplaneError> {
        if let Some(node) = node {
            let script = node_script(state, node);
            self.run(&script)
                .map_err(|e| kernel_err("updating node addresses", &e))?;
            for family in Family::ALL {
                state.entry(family).or_default().node = render_node(node, family);
            }
        }
        self.apply_isolated(state, changes, report);
        Ok(())
    }

    fn apply_isolated(
        &mut self,
        state: &mut BTreeMap<Family, FamilyState>,
        changes: Vec<Rendered>,
        report: &mut ApplyReport,
    ) {
        if changes.is_empty() {
            return;
        }
        let script = delta_script(state, &changes);
        match self.run(&script) {
            Ok(()) => {
                report.operations += script.lines().count();
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

/// Renders one service port change for both families.
fn rendered(name: ServicePortName, plan: Option<Arc<ServicePlan>>) -> Rendered {
    let rules = Family::ALL
        .iter()
        .map(|f| {
            let r = plan
                .as_deref()
                .map(|p| render_service(p, *f))
                .unwrap_or_default();
            (*f, r)
        })
        .collect();
    Rendered { name, plan, rules }
}

fn delta_script(state: &BTreeMap<Family, FamilyState>, changes: &[Rendered]) -> String {
    let empty = ServiceRules::default();
    Family::ALL
        .iter()
        .map(|family| {
            let current = state.get(family);
            let pairs = changes.iter().map(|c| {
                let old = current
                    .and_then(|s| s.services.get(&c.name))
                    .unwrap_or(&empty);
                (old, &c.rules[family])
            });
            transaction::delta(*family, pairs, None)
        })
        .collect()
}

fn node_script(state: &BTreeMap<Family, FamilyState>, node: &NodePlan) -> String {
    Family::ALL
        .iter()
        .map(|family| {
            let old = state
                .get(family)
                .map(|s| s.node.clone())
                .unwrap_or_default();
            let new = render_node(node, *family);
            transaction::delta(*family, std::iter::empty(), Some((&old, &new)))
        })
        .collect()
}

fn record(state: &mut BTreeMap<Family, FamilyState>, change: Rendered) {
    for (family, rules) in change.rules {
        let family_state = state.entry(family).or_default();
        if change.plan.is_some() {
            family_state.services.insert(change.name.clone(), rules);
        } else {
            family_state.services.remove(&change.name);
        }
    }
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
        }
        self.programmed = None;
        Ok(restored)
    }

    fn resync(&mut self, plan: &Plan) -> Result<ApplyReport, DataplaneError> {
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
                .map(|c| rendered(c.name, c.after))
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
            .map(|c| rendered(c.name.clone(), c.after.clone()))
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
        let all: Vec<Rendered> = plan
            .services
            .iter()
            .map(|(name, p)| rendered(name.clone(), Some(Arc::clone(p))))
            .collect();
        let mut report = ApplyReport {
            full_sync: true,
            ..ApplyReport::default()
        };
        let refs: Vec<&Rendered> = all.iter().collect();
        let script = self.full_script(&plan.node, &refs);
        let result = match self.run(&script) {
            Ok(()) => {
                report.operations = script.lines().count();
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
        let mut state: BTreeMap<Family, FamilyState> = BTreeMap::new();
        for family in Family::ALL {
            state.entry(family).or_default().node = render_node(&plan.node, family);
        }
        for change in good {
            record(&mut state, change);
        }
        self.found.clear();
        self.programmed = Some(state);
        self.needs_full = !report.failed.is_empty();
        Ok(report)
    }

    /// Forgets what we believe is programmed and reads the kernel again, so the next full
    /// rewrite reconciles what is really there (someone may have changed it).
    fn reread_kernel(&mut self) -> Result<(), DataplaneError> {
        self.programmed = None;
        for family in Family::ALL {
            let back = self
                .exec
                .read_back(family)
                .map_err(|e| kernel_err("reading back the ruleset", &e))?;
            self.found.insert(family, back.existing);
        }
        Ok(())
    }

    fn full_script(&self, node: &NodePlan, services: &[&Rendered]) -> String {
        Family::ALL
            .iter()
            .map(|family| {
                let rules = services.iter().map(|r| &r.rules[family]);
                let existing = self.found.get(family).cloned().unwrap_or_default();
                transaction::full(*family, rules, &render_node(node, *family), &existing)
            })
            .collect()
    }

    /// Greedy split: keeps every half that applies on top of the good ones so far.
    fn bisect_full(
        &mut self,
        node: &NodePlan,
        all: Vec<Rendered>,
        report: &mut ApplyReport,
    ) -> Result<Vec<Rendered>, DataplaneError> {
        let base = self.full_script(node, &[]);
        self.run(&base)
            .map_err(|e| kernel_err("nft transaction (base table)", &e))?;
        let mut good: Vec<Rendered> = Vec::new();
        let mut pending = vec![all];
        while let Some(mut group) = pending.pop() {
            let candidate: Vec<&Rendered> = good.iter().chain(&group).collect();
            let script = self.full_script(node, &candidate);
            match self.run(&script) {
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

/// The delta that turns what `state` holds into `plan` (service ports compared by their
/// rendering, so it needs no previous plan).
fn delta_from_state(state: &BTreeMap<Family, FamilyState>, plan: &Plan) -> PlanDelta {
    let mut delta = PlanDelta {
        node: Arc::clone(&plan.node),
        ..PlanDelta::default()
    };
    delta.node_changed = Family::ALL.iter().any(|f| {
        state.get(f).map(|s| s.node.as_slice()).unwrap_or_default() != render_node(&plan.node, *f)
    });
    let empty = ServiceRules::default();
    for (name, service) in &plan.services {
        let differs = Family::ALL.iter().any(|f| {
            let old = state
                .get(f)
                .and_then(|s| s.services.get(name))
                .unwrap_or(&empty);
            *old != render_service(service, *f)
        });
        let known = state.values().any(|s| s.services.contains_key(name));
        if differs || !known {
            delta.services.push(sluice_plan::ServiceChange {
                name: name.clone(),
                before: None,
                after: Some(Arc::clone(service)),
            });
        }
    }
    let gone: std::collections::BTreeSet<&ServicePortName> = state
        .values()
        .flat_map(|s| s.services.keys())
        .filter(|name| !plan.services.contains_key(*name))
        .collect();
    for name in gone {
        delta.services.push(sluice_plan::ServiceChange {
            name: name.clone(),
            before: None,
            after: None,
        });
    }
    delta
}

use std::collections::BTreeMap;

use sluice_dataplane::{ApplyStats, Dataplane, DataplaneError};
use sluice_model::DesiredState;

use crate::conntrack::{stale_restored_udp_flows, stale_udp_flows};
use crate::exec::{NftCommand, NftRunner};
use crate::render::{Family, Rendered, render};
use crate::transaction::{self, Existing};

const NAME: &str = "nftables";

/// The nftables backend. Keeps what it last programmed so each sync sends only the difference.
pub struct NftDataplane<R: NftRunner = NftCommand> {
    runner: R,
    /// What is in the kernel, per family; `None` when unknown (start, or after a failed
    /// transaction), which makes the next apply a full resync.
    programmed: Option<BTreeMap<Family, Rendered>>,
    /// Objects found by `restore`, reconciled (stale ones deleted) by the first full resync.
    found: BTreeMap<Family, Existing>,
    last_state: Option<DesiredState>,
}

impl NftDataplane<NftCommand> {
    /// The real backend; fails when nft is missing or the kernel lacks nf_tables.
    pub fn new() -> Result<Self, DataplaneError> {
        let runner = NftCommand::default();
        runner
            .check()
            .map_err(|reason| DataplaneError::Unavailable {
                backend: NAME,
                reason,
            })?;
        Ok(Self::with_runner(runner))
    }
}

impl<R: NftRunner> NftDataplane<R> {
    pub fn with_runner(runner: R) -> Self {
        Self {
            runner,
            programmed: None,
            found: BTreeMap::new(),
            last_state: None,
        }
    }

    pub fn runner(&self) -> &R {
        &self.runner
    }

    fn kernel_err(action: &str, detail: String) -> DataplaneError {
        DataplaneError::Kernel {
            backend: NAME,
            action: action.to_owned(),
            detail,
        }
    }
}

impl<R: NftRunner> Dataplane for NftDataplane<R> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn restore(&mut self) -> Result<(), DataplaneError> {
        for family in Family::ALL {
            let existing = self
                .runner
                .existing(family)
                .map_err(|d| Self::kernel_err("reading back the ruleset", d))?;
            if !existing.chains.is_empty() {
                tracing::info!(
                    family = family.table_family(),
                    chains = existing.chains.len(),
                    "found an existing sluice table; reconciling it without a flush"
                );
            }
            self.found.insert(family, existing);
        }
        self.programmed = None;
        Ok(())
    }

    fn apply(
        &mut self,
        desired: &DesiredState,
        full_resync: bool,
    ) -> Result<ApplyStats, DataplaneError> {
        let rendered: BTreeMap<Family, Rendered> = Family::ALL
            .iter()
            .map(|f| (*f, render(desired, *f)))
            .collect();
        let full = full_resync || self.programmed.is_none();
        let mut script = String::new();
        for (family, new) in &rendered {
            match self.programmed.as_ref().and_then(|p| p.get(family)) {
                Some(old) if !full => script.push_str(&transaction::diff(*family, old, new)),
                _ => {
                    let found = self.found.get(family).cloned().unwrap_or_default();
                    // Stale objects are those found at restore plus those we programmed since.
                    let mut existing = found;
                    if let Some(old) = self.programmed.as_ref().and_then(|p| p.get(family)) {
                        existing.chains.extend(old.chains.keys().cloned());
                        existing.sets.extend(old.affinity_sets.keys().cloned());
                    }
                    script.push_str(&transaction::full(*family, new, &existing));
                }
            }
        }
        let services_changed =
            sluice_dataplane::count_changed_services(self.last_state.as_ref(), desired);
        if script.is_empty() {
            self.last_state = Some(desired.clone());
            return Ok(ApplyStats {
                services_changed,
                operations: 0,
                full_sync: false,
            });
        }
        if let Err(detail) = self.runner.apply(&script) {
            // Unknown kernel state now: the next attempt rewrites everything.
            self.programmed = None;
            return Err(Self::kernel_err("nft transaction", detail));
        }
        let mut flushes = stale_udp_flows(self.last_state.as_ref(), desired);
        if self.last_state.is_none() {
            // First sync after a restart: endpoints removed while the agent was down.
            let restored = self
                .found
                .values()
                .flat_map(|e| e.udp_endpoints.iter().copied())
                .collect();
            flushes.extend(stale_restored_udp_flows(&restored, desired));
        }
        if full {
            self.found.clear();
        }
        self.programmed = Some(rendered);
        for flush in flushes {
            if let Err(err) = self.runner.flush_conntrack(&flush) {
                tracing::warn!("removing stale UDP conntrack entries failed: {err}");
            }
        }
        self.last_state = Some(desired.clone());
        Ok(ApplyStats {
            services_changed,
            operations: script.lines().count(),
            full_sync: full,
        })
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        self.runner
            .apply(&transaction::cleanup())
            .map_err(|d| Self::kernel_err("deleting the sluice tables", d))?;
        self.programmed = None;
        self.last_state = None;
        Ok(())
    }
}

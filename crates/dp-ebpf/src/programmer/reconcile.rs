//! The full path: compare the whole plan with what the kernel holds (read back) and write the
//! difference, rebuilding the bookkeeping. Used at start (against the pinned maps an earlier
//! run left, so a restart rewrites nothing that is right), after a failure, and when the
//! cheap check of a resync finds drift.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use sluice_dataplane::ApplyReport;
use sluice_plan::{Plan, ServicePlan, ServicePortName};

use super::{MapProgrammer, Outcome, Transition, estimate};
use crate::abi::{SlotKey, SrcKey};
use crate::groups::ServiceGroups;
use crate::render::{
    Counts, MapContent, NodeRows, ServiceRows, frontend_entries, render_node, render_service,
};
use crate::store::{MapStore, RowKey, StoreError};
use crate::transition::{Before, node_ops};

/// Where the rows of each group are in the content read back.
struct ContentIndex {
    src: HashMap<u32, Vec<SrcKey>>,
    groups: BTreeSet<u32>,
}

impl ContentIndex {
    fn new(content: &MapContent) -> Self {
        let mut src: HashMap<u32, Vec<SrcKey>> = HashMap::new();
        for key in &content.src {
            src.entry(key.group).or_default().push(*key);
        }
        let mut groups: BTreeSet<u32> = content.svc.values().map(|v| v.group).collect();
        groups.extend(content.slot.keys().map(|k| k.group));
        groups.extend(content.maglev.keys().map(|k| k.group));
        groups.extend(src.keys());
        groups.remove(&0);
        ContentIndex { src, groups }
    }
}

fn group_range(group: u32) -> std::ops::RangeInclusive<SlotKey> {
    SlotKey { group, slot: 0 }..=SlotKey {
        group,
        slot: u32::MAX,
    }
}

impl MapProgrammer {
    pub(super) fn reconcile(
        &mut self,
        store: &mut dyn MapStore,
        plan: &Plan,
        content: MapContent,
    ) -> Result<ApplyReport, StoreError> {
        self.reset();
        let mut out = Outcome::default();
        let index = ContentIndex::new(&content);
        for id in &index.groups {
            self.ids.claim(*id);
        }
        self.claim_frontends(plan);
        let projected = plan
            .services
            .values()
            .fold(render_node(&plan.node).counts(), |c, s| c.plus(estimate(s)));
        self.ensure_capacity(store, projected.max(content.counts()));

        let node_rows = render_node(&plan.node);
        let old_node = NodeRows {
            cidr: content.cidr.iter().copied().collect(),
            nodeip: content.nodeip.iter().copied().collect(),
        };
        let node = node_ops(&old_node, &node_rows);
        self.write_node_early(store, &node, &mut out)?;
        // Frontends nobody plans any more go first: removing a frontend never strands one.
        let orphans: Vec<RowKey> = content
            .svc
            .keys()
            .filter(|k| !self.owners.contains_key(*k))
            .map(|k| RowKey::Svc(*k))
            .collect();
        for key in orphans {
            self.delete_orphan(store, key, &mut out)?;
        }
        let mut assigned = HashSet::new();
        for (name, svc) in &plan.services {
            let t = self.reconcile_transition(name, svc, &content, &index, &mut assigned);
            super::warn_held(&t);
            self.run(store, t, &mut out);
        }
        self.delete_orphan_groups(store, &content, &index, &assigned, &mut out)?;
        self.write_node_late(store, &node, &mut out)?;
        self.expected = self.expected.plus(node_rows.counts());
        self.node_rows = node_rows;
        self.node = Some(Arc::clone(&plan.node));
        self.verified = out.failed.is_empty();
        Ok(out.report(true))
    }

    /// Every service port claims its frontend keys, in name order (a later claimant of a key
    /// is refused, with a warning when it comes to be programmed).
    fn claim_frontends(&mut self, plan: &Plan) {
        for (name, svc) in &plan.services {
            for fe in &svc.frontends {
                for entry in frontend_entries(fe) {
                    self.owners.entry(entry.key).or_insert_with(|| name.clone());
                }
            }
        }
    }

    /// `name`'s change from what the kernel holds for it (its frontends and the rows of the
    /// groups it keeps) to `svc`.
    fn reconcile_transition(
        &mut self,
        name: &ServicePortName,
        svc: &Arc<ServicePlan>,
        content: &MapContent,
        index: &ContentIndex,
        assigned: &mut HashSet<u32>,
    ) -> Transition {
        let prev = self.recover_groups(name, svc, content, assigned);
        let (groups, _) = ServiceGroups::assign(svc, &prev, &mut self.ids);
        assigned.extend(groups.ids.values().copied());
        let rows = render_service(svc, &groups);
        let held_by = self.held_by_others(name, &rows);
        let rows = self.owned(name, rows, false);
        let mut before = ServiceRows::default();
        for (key, _) in &rows.svc {
            if let Some(v) = content.svc.get(key) {
                before.svc.push((*key, *v));
            }
        }
        for id in groups.id_set() {
            before
                .slot
                .extend(content.slot.range(group_range(id)).map(|(k, v)| (*k, *v)));
            before
                .maglev
                .extend(content.maglev.range(group_range(id)).map(|(k, v)| (*k, *v)));
            before
                .src
                .extend(index.src.get(&id).into_iter().flatten().copied());
        }
        before.src.sort_unstable();
        Transition {
            name: name.clone(),
            after: Some(Arc::clone(svc)),
            prev_groups: groups.clone(),
            groups,
            released: Vec::new(),
            before: Before::Exact(before),
            rows,
            held_by,
        }
    }

    /// The ids `name`'s frontends already point at in the kernel (the first service port to
    /// claim an id keeps it; a later one gets a fresh id).
    fn recover_groups(
        &self,
        name: &ServicePortName,
        svc: &ServicePlan,
        content: &MapContent,
        assigned: &mut HashSet<u32>,
    ) -> ServiceGroups {
        let mut prev = ServiceGroups::default();
        for fe in &svc.frontends {
            for entry in frontend_entries(fe) {
                let Some(slot) = entry.group else { continue };
                if prev.ids.contains_key(&slot) || self.owners.get(&entry.key) != Some(name) {
                    continue;
                }
                if let Some(v) = content.svc.get(&entry.key)
                    && v.group != 0
                    && assigned.insert(v.group)
                {
                    prev.ids.insert(slot, v.group);
                }
            }
        }
        prev
    }

    fn delete_orphan(
        &mut self,
        store: &mut dyn MapStore,
        key: RowKey,
        out: &mut Outcome,
    ) -> Result<(), StoreError> {
        if let Err(e) = store.delete(&key) {
            self.verified = false;
            return Err(e);
        }
        out.operations += 1;
        Ok(())
    }

    /// Rows of groups no service port kept, after every frontend moved off them; their ids
    /// become free.
    fn delete_orphan_groups(
        &mut self,
        store: &mut dyn MapStore,
        content: &MapContent,
        index: &ContentIndex,
        assigned: &HashSet<u32>,
        out: &mut Outcome,
    ) -> Result<(), StoreError> {
        let orphan = |group: u32| !assigned.contains(&group);
        let slots = content
            .slot
            .keys()
            .filter(|k| orphan(k.group))
            .map(|k| RowKey::Slot(*k));
        let maglev = content
            .maglev
            .keys()
            .filter(|k| orphan(k.group))
            .map(|k| RowKey::Maglev(*k));
        let src = content
            .src
            .iter()
            .filter(|k| orphan(k.group))
            .map(|k| RowKey::Src(*k));
        let keys: Vec<RowKey> = slots.chain(maglev).chain(src).collect();
        for key in keys {
            self.delete_orphan(store, key, out)?;
        }
        for id in index.groups.iter().filter(|id| orphan(**id)) {
            self.ids.release(*id);
        }
        Ok(())
    }
}

impl Counts {
    /// The larger of the two, per map.
    pub fn max(mut self, other: Counts) -> Counts {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = (*a).max(b);
        }
        self
    }
}

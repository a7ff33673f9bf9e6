//! Group ids: a *group* is one backend set of one service port for one family in one layout
//! (random slots or a Maglev table), or the id that keys a refusing frontend's source ranges.
//! Ids are handed out incrementally (lowest free first) and are stable: kept while the service
//! port needs the group, recovered from the frontends in the maps after a restart, and given
//! back only once their rows are gone from the kernel.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use sluice_plan::{ServicePlan, SetName};

/// What a group's slots are filled from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupKind {
    /// Slots 0..count-1 in `sl_slot_v1`, picked at random.
    Random(SetName),
    /// A Maglev table over the set in `sl_maglev_v1` (consistent hashing).
    Maglev(SetName),
    /// No backends: only keys the source ranges of a refusing frontend.
    Ranges,
}

/// A group of a service port: its kind and family (`SL_FAMILY_*`).
pub type GroupSlot = (GroupKind, u8);

/// The group ids one service port uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceGroups {
    pub ids: BTreeMap<GroupSlot, u32>,
}

impl ServiceGroups {
    /// The groups `plan` needs: the ids of `prev` where the group already existed, fresh ids
    /// for the others. Also returns the ids of `prev` no longer needed (to give back with
    /// [`GroupIds::release`] once their rows are deleted).
    pub fn assign(
        plan: &ServicePlan,
        prev: &ServiceGroups,
        ids: &mut GroupIds,
    ) -> (ServiceGroups, Vec<u32>) {
        let needed = crate::render::needed_groups(plan);
        let out = ServiceGroups {
            ids: needed
                .iter()
                .map(|slot| {
                    (
                        *slot,
                        prev.ids.get(slot).copied().unwrap_or_else(|| ids.take()),
                    )
                })
                .collect(),
        };
        let released = prev
            .ids
            .iter()
            .filter(|(slot, _)| !needed.contains(slot))
            .map(|(_, id)| *id)
            .collect();
        (out, released)
    }

    /// Ids in `self` that `other` does not use.
    pub fn not_in(&self, other: &ServiceGroups) -> Vec<u32> {
        let keep: BTreeSet<u32> = other.ids.values().copied().collect();
        self.ids
            .values()
            .filter(|id| !keep.contains(id))
            .copied()
            .collect()
    }

    pub fn id_set(&self) -> BTreeSet<u32> {
        self.ids.values().copied().collect()
    }
}

/// The allocator. Ids start at 1 (0 means "no group").
#[derive(Debug, Clone, Default)]
pub struct GroupIds {
    /// Highest id ever handed out or claimed.
    top: u32,
    /// Ids below `top` that are free again, lowest first.
    free: BTreeSet<u32>,
    used: HashSet<u32>,
}

impl GroupIds {
    /// A fresh id, never one in use.
    pub fn take(&mut self) -> u32 {
        if let Some(id) = self.free.pop_first() {
            self.used.insert(id);
            return id;
        }
        self.top += 1;
        self.used.insert(self.top);
        self.top
    }

    /// Marks `id` used (found in the kernel); false when it already was.
    pub fn claim(&mut self, id: u32) -> bool {
        if id == 0 || !self.used.insert(id) {
            return false;
        }
        self.free.remove(&id);
        while self.top < id {
            self.top += 1;
            if self.top != id {
                self.free.insert(self.top);
            }
        }
        true
    }

    /// Gives `id` back: its rows are gone from the kernel.
    pub fn release(&mut self, id: u32) {
        if self.used.remove(&id) {
            self.free.insert(id);
        }
    }

    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_reused_lowest_first_and_claims_are_respected() {
        let mut ids = GroupIds::default();
        assert!(ids.claim(3));
        assert!(!ids.claim(3), "claimed twice");
        assert_eq!([ids.take(), ids.take(), ids.take()], [1, 2, 4]);
        ids.release(2);
        ids.release(1);
        assert_eq!(ids.take(), 1);
        assert_eq!(ids.take(), 2);
        assert_eq!(ids.take(), 5);
        assert_eq!(ids.in_use(), 5);
    }
}

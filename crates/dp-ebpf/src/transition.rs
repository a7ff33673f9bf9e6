//! Turning one service port's rows from `before` into `after` with single-row writes in an
//! order that keeps every state in between serving: new and changed slots, Maglev slots and
//! source ranges first, then the frontends, then removed frontends, then removed slots. A
//! frontend therefore never points at a slot that is not there, and a failure part-way leaves
//! the service port answering from a mix of its old and new backends, never from nothing.

use std::collections::BTreeSet;

use crate::abi::MapKind;
use crate::render::{Counts, NodeRows, ServiceRows};
use crate::store::{MapStore, Row, RowKey, StoreError};

/// What the kernel holds for a service port before the change.
#[derive(Debug, Clone)]
pub enum Before {
    /// Exactly these rows (the bookkeeping is in step).
    Exact(ServiceRows),
    /// An earlier write failed part-way: any of these keys may be present, with any value.
    Unknown(BTreeSet<RowKey>),
}

impl Before {
    pub fn keys(&self) -> BTreeSet<RowKey> {
        match self {
            Before::Exact(rows) => row_keys(rows).collect(),
            Before::Unknown(keys) => keys.clone(),
        }
    }
}

/// Every key of `rows`.
pub fn row_keys(rows: &ServiceRows) -> impl Iterator<Item = RowKey> + '_ {
    rows.svc
        .iter()
        .map(|(k, _)| RowKey::Svc(*k))
        .chain(rows.slot.iter().map(|(k, _)| RowKey::Slot(*k)))
        .chain(rows.maglev.iter().map(|(k, _)| RowKey::Maglev(*k)))
        .chain(rows.src.iter().map(|k| RowKey::Src(*k)))
}

/// The writes of one change, in the order they must happen.
#[derive(Debug, Default)]
pub struct Ops {
    /// New or changed slots, Maglev slots, source ranges (and node rows).
    pub early: Vec<Row>,
    /// New or changed frontends.
    pub frontends: Vec<Row>,
    /// Removed frontends.
    pub frontend_deletes: Vec<RowKey>,
    /// Removed slots, Maglev slots, source ranges (and node rows).
    pub late_deletes: Vec<RowKey>,
    /// Keys that are new, per map (what must fit).
    pub added: Counts,
}

impl Ops {
    pub fn len(&self) -> usize {
        self.early.len()
            + self.frontends.len()
            + self.frontend_deletes.len()
            + self.late_deletes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes everything in order; returns how many writes succeeded (also on failure).
    pub fn execute(&self, store: &mut dyn MapStore) -> Result<usize, (StoreError, usize)> {
        let mut done = 0;
        for row in self.early.iter().chain(&self.frontends) {
            store.write(row).map_err(|e| (e, done))?;
            done += 1;
        }
        for key in self.frontend_deletes.iter().chain(&self.late_deletes) {
            store.delete(key).map_err(|e| (e, done))?;
            done += 1;
        }
        Ok(done)
    }

    /// The first map (if any) where the new keys would not fit next to `in_use` entries.
    pub fn overflow(
        &self,
        in_use: Counts,
        capacity: impl Fn(MapKind) -> u32,
    ) -> Option<(MapKind, usize, u32)> {
        MapKind::AGENT.into_iter().find_map(|map| {
            let needed = self.added.get(map);
            let cap = capacity(map);
            (needed > 0 && in_use.get(map) + needed > cap as usize).then_some((map, needed, cap))
        })
    }
}

/// Walks two sorted lists: `upsert(key, value, is_new)` for what `new` adds or changes,
/// `delete(key)` for what only `old` has.
fn merge<K: Ord + Copy, V: PartialEq + Copy>(
    old: &[(K, V)],
    new: &[(K, V)],
    mut upsert: impl FnMut(K, V, bool),
    mut delete: impl FnMut(K),
) {
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) if o.0 == n.0 => {
                if o.1 != n.1 {
                    upsert(n.0, n.1, false);
                }
                i += 1;
                j += 1;
            }
            (Some(o), Some(n)) if o.0 < n.0 => {
                delete(o.0);
                i += 1;
            }
            (Some(o), None) => {
                delete(o.0);
                i += 1;
            }
            (_, Some(n)) => {
                upsert(n.0, n.1, true);
                j += 1;
            }
            (None, None) => break,
        }
    }
}

fn unit<K: Copy>(keys: &[K]) -> Vec<(K, ())> {
    keys.iter().map(|k| (*k, ())).collect()
}

/// The ops that turn `before` into `after`.
pub fn service_ops(before: &Before, after: &ServiceRows) -> Ops {
    match before {
        Before::Exact(old) => exact_ops(old, after),
        Before::Unknown(keys) => blind_ops(keys, after),
    }
}

fn exact_ops(old: &ServiceRows, new: &ServiceRows) -> Ops {
    let mut ops = Ops::default();
    let mut added = Counts::default();
    let mut early = Vec::new();
    let mut late = Vec::new();
    merge(
        &old.slot,
        &new.slot,
        |k, v, fresh| {
            added.add(MapKind::Slot, usize::from(fresh));
            early.push(Row::Slot(k, v));
        },
        |k| late.push(RowKey::Slot(k)),
    );
    merge(
        &old.maglev,
        &new.maglev,
        |k, v, fresh| {
            added.add(MapKind::Maglev, usize::from(fresh));
            early.push(Row::Maglev(k, v));
        },
        |k| late.push(RowKey::Maglev(k)),
    );
    merge(
        &unit(&old.src),
        &unit(&new.src),
        |k, (), fresh| {
            added.add(MapKind::Src, usize::from(fresh));
            early.push(Row::Src(k));
        },
        |k| late.push(RowKey::Src(k)),
    );
    merge(
        &old.svc,
        &new.svc,
        |k, v, fresh| {
            added.add(MapKind::Svc, usize::from(fresh));
            ops.frontends.push(Row::Svc(k, v));
        },
        |k| ops.frontend_deletes.push(RowKey::Svc(k)),
    );
    ops.early = early;
    ops.late_deletes = late;
    ops.added = added;
    ops
}

/// Writes every row of `after` and deletes every other key that may be present.
fn blind_ops(keys: &BTreeSet<RowKey>, after: &ServiceRows) -> Ops {
    let mut ops = Ops::default();
    let add = |row: Row, ops: &mut Ops| {
        if !keys.contains(&row.key()) {
            ops.added.add(row.map(), 1);
        }
        match row {
            Row::Svc(..) => ops.frontends.push(row),
            _ => ops.early.push(row),
        }
    };
    for (k, v) in &after.slot {
        add(Row::Slot(*k, *v), &mut ops);
    }
    for (k, v) in &after.maglev {
        add(Row::Maglev(*k, *v), &mut ops);
    }
    for k in &after.src {
        add(Row::Src(*k), &mut ops);
    }
    for (k, v) in &after.svc {
        add(Row::Svc(*k, *v), &mut ops);
    }
    let wanted: BTreeSet<RowKey> = row_keys(after).collect();
    for key in keys.difference(&wanted) {
        match key {
            RowKey::Svc(_) => ops.frontend_deletes.push(*key),
            _ => ops.late_deletes.push(*key),
        }
    }
    ops
}

/// Node rows: additions go early (NodePort entries need their addresses), removals late.
pub fn node_ops(old: &NodeRows, new: &NodeRows) -> Ops {
    let mut ops = Ops::default();
    let mut added = Counts::default();
    let mut early = Vec::new();
    let mut late = Vec::new();
    merge(
        &unit(&old.cidr),
        &unit(&new.cidr),
        |k, (), _| {
            added.add(MapKind::Cidr, 1);
            early.push(Row::Cidr(k));
        },
        |k| late.push(RowKey::Cidr(k)),
    );
    merge(
        &unit(&old.nodeip),
        &unit(&new.nodeip),
        |k, (), _| {
            added.add(MapKind::NodeIp, 1);
            early.push(Row::NodeIp(k));
        },
        |k| late.push(RowKey::NodeIp(k)),
    );
    ops.early = early;
    ops.late_deletes = late;
    ops.added = added;
    ops
}

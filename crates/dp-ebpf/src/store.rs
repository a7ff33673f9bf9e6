//! The seam between the programming logic and the kernel: [`MapStore`] writes, deletes and
//! reads back the agent's map rows, counts entries, resizes maps and prunes the datapath's
//! flows. The kernel implements it with pinned BPF maps; [`FakeMapStore`] keeps rows in memory
//! and fails on demand (the n-th write, a full map, a read, a resize), so partial failure,
//! overflow and repair are unit tests.

use std::collections::{BTreeMap, BTreeSet};

use sluice_plan::StaleFlow;

use crate::abi::{
    self, Backend, CidrKey, CtKey, CtVal, MapKind, NodeIpKey, SlotKey, SrcKey, SvcKey, SvcVal,
};
use crate::render::MapContent;

/// The key of one agent-owned row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RowKey {
    Svc(SvcKey),
    Slot(SlotKey),
    Maglev(SlotKey),
    Src(SrcKey),
    Cidr(CidrKey),
    NodeIp(NodeIpKey),
}

/// One agent-owned row (the set-like maps hold the value 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    Svc(SvcKey, SvcVal),
    Slot(SlotKey, Backend),
    Maglev(SlotKey, Backend),
    Src(SrcKey),
    Cidr(CidrKey),
    NodeIp(NodeIpKey),
}

impl RowKey {
    pub fn map(&self) -> MapKind {
        match self {
            RowKey::Svc(_) => MapKind::Svc,
            RowKey::Slot(_) => MapKind::Slot,
            RowKey::Maglev(_) => MapKind::Maglev,
            RowKey::Src(_) => MapKind::Src,
            RowKey::Cidr(_) => MapKind::Cidr,
            RowKey::NodeIp(_) => MapKind::NodeIp,
        }
    }

    /// The key as the kernel stores it.
    pub fn bytes(&self) -> &[u8] {
        match self {
            RowKey::Svc(k) => abi::bytes_of(k),
            RowKey::Slot(k) | RowKey::Maglev(k) => abi::bytes_of(k),
            RowKey::Src(k) => abi::bytes_of(k),
            RowKey::Cidr(k) => abi::bytes_of(k),
            RowKey::NodeIp(k) => abi::bytes_of(k),
        }
    }
}

/// The value of the set-like maps.
pub const PRESENT: u32 = 1;

impl Row {
    pub fn key(&self) -> RowKey {
        match *self {
            Row::Svc(k, _) => RowKey::Svc(k),
            Row::Slot(k, _) => RowKey::Slot(k),
            Row::Maglev(k, _) => RowKey::Maglev(k),
            Row::Src(k) => RowKey::Src(k),
            Row::Cidr(k) => RowKey::Cidr(k),
            Row::NodeIp(k) => RowKey::NodeIp(k),
        }
    }

    pub fn map(&self) -> MapKind {
        self.key().map()
    }

    /// The value as the kernel stores it.
    pub fn value_bytes(&self) -> &[u8] {
        match self {
            Row::Svc(_, v) => abi::bytes_of(v),
            Row::Slot(_, b) | Row::Maglev(_, b) => abi::bytes_of(b),
            Row::Src(_) | Row::Cidr(_) | Row::NodeIp(_) => abi::bytes_of(&PRESENT),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("map {map} is full ({capacity} entries)")]
    Full { map: MapKind, capacity: u32 },
    #[error("{op} on map {map} failed")]
    Map {
        map: MapKind,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{action} failed")]
    Kernel {
        action: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Where the agent's rows live. Writes are single-row and immediately visible to the
/// datapath: the caller orders them so a frontend never points at missing slots.
pub trait MapStore: Send {
    /// Inserts or replaces a row. [`StoreError::Full`] when a new key does not fit.
    fn write(&mut self, row: &Row) -> Result<(), StoreError>;
    /// Removes a row; a missing row is not an error.
    fn delete(&mut self, key: &RowKey) -> Result<(), StoreError>;
    /// Everything the agent owns, as stored now.
    fn read(&mut self) -> Result<MapContent, StoreError>;
    /// Entries in one map (cheaper than [`MapStore::read`]: no values, no decoding).
    fn count(&mut self, map: MapKind) -> Result<usize, StoreError>;
    /// The map's `max_entries`.
    fn capacity(&self, map: MapKind) -> u32;
    /// Gives the listed maps these capacities, keeping every entry (and, in the kernel,
    /// every established flow). Maps not listed are untouched.
    fn resize(&mut self, capacities: &BTreeMap<MapKind, u32>) -> Result<(), StoreError>;
    /// Removes the datapath's conntrack and affinity entries of these stale flows; returns
    /// how many entries went.
    fn prune(&mut self, flows: &[StaleFlow]) -> Result<usize, StoreError>;
}

/// An in-memory [`MapStore`] that fails on demand.
#[derive(Debug, Default)]
pub struct FakeMapStore {
    rows: BTreeMap<RowKey, Row>,
    /// Rows per map (kept in step with `rows`).
    counts: BTreeMap<MapKind, usize>,
    capacities: BTreeMap<MapKind, u32>,
    /// Writes and deletes attempted so far (successful or not).
    attempts: usize,
    /// Attempt numbers (1-based, counted from the start) that fail.
    fail_at: BTreeSet<usize>,
    fail_reads: usize,
    reads: usize,
    fail_resizes: usize,
    resizes: Vec<BTreeMap<MapKind, u32>>,
    /// Datapath conntrack entries (for prune tests).
    pub ct: BTreeMap<CtKey, CtVal>,
}

impl FakeMapStore {
    /// Empty maps with the objects' default capacities.
    pub fn new() -> Self {
        FakeMapStore {
            capacities: MapKind::ALL
                .into_iter()
                .map(|m| (m, crate::sizing::default_capacity(m)))
                .collect(),
            ..FakeMapStore::default()
        }
    }

    pub fn with_capacity(mut self, map: MapKind, capacity: u32) -> Self {
        self.capacities.insert(map, capacity);
        self
    }

    /// The `n`-th write or delete from now (1 = the next one) fails.
    pub fn fail_nth_write(&mut self, n: usize) {
        self.fail_at.insert(self.attempts + n);
    }

    /// The next `n` reads (and counts) fail.
    pub fn fail_reads(&mut self, n: usize) {
        self.fail_reads = n;
    }

    /// The next `n` resizes fail.
    pub fn fail_resizes(&mut self, n: usize) {
        self.fail_resizes = n;
    }

    /// Writes and deletes attempted so far.
    pub fn attempts(&self) -> usize {
        self.attempts
    }

    /// Full read-backs so far.
    pub fn reads(&self) -> usize {
        self.reads
    }

    /// Every resize asked for, in order.
    pub fn resizes(&self) -> &[BTreeMap<MapKind, u32>] {
        &self.resizes
    }

    /// What is stored, as [`MapStore::read`] returns it (never fails).
    pub fn content(&self) -> MapContent {
        let mut c = MapContent::default();
        for row in self.rows.values() {
            match *row {
                Row::Svc(k, v) => {
                    c.svc.insert(k, v);
                }
                Row::Slot(k, b) => {
                    c.slot.insert(k, b);
                }
                Row::Maglev(k, b) => {
                    c.maglev.insert(k, b);
                }
                Row::Src(k) => {
                    c.src.insert(k);
                }
                Row::Cidr(k) => {
                    c.cidr.insert(k);
                }
                Row::NodeIp(k) => {
                    c.nodeip.insert(k);
                }
            }
        }
        c
    }

    /// Changes a row behind the programmer's back (drift), without counting an attempt.
    pub fn tamper(&mut self, row: Row) {
        self.insert(row);
    }

    /// Removes a row behind the programmer's back (drift).
    pub fn tamper_delete(&mut self, key: &RowKey) {
        self.remove(key);
    }

    fn entries(&self, map: MapKind) -> usize {
        self.counts.get(&map).copied().unwrap_or(0)
    }

    fn insert(&mut self, row: Row) {
        if self.rows.insert(row.key(), row).is_none() {
            *self.counts.entry(row.map()).or_default() += 1;
        }
    }

    fn remove(&mut self, key: &RowKey) {
        if self.rows.remove(key).is_some() {
            *self.counts.entry(key.map()).or_default() -= 1;
        }
    }

    fn attempt(&mut self, map: MapKind, op: &'static str) -> Result<(), StoreError> {
        self.attempts += 1;
        if self.fail_at.remove(&self.attempts) {
            return Err(StoreError::Map {
                map,
                op,
                source: std::io::Error::other("injected failure"),
            });
        }
        Ok(())
    }
}

impl MapStore for FakeMapStore {
    fn write(&mut self, row: &Row) -> Result<(), StoreError> {
        self.attempt(row.map(), "update")?;
        let capacity = self.capacity(row.map());
        if !self.rows.contains_key(&row.key()) && self.entries(row.map()) >= capacity as usize {
            return Err(StoreError::Full {
                map: row.map(),
                capacity,
            });
        }
        self.insert(*row);
        Ok(())
    }

    fn delete(&mut self, key: &RowKey) -> Result<(), StoreError> {
        self.attempt(key.map(), "delete")?;
        self.remove(key);
        Ok(())
    }

    fn read(&mut self) -> Result<MapContent, StoreError> {
        self.reads += 1;
        if self.fail_reads > 0 {
            self.fail_reads -= 1;
            return Err(StoreError::Map {
                map: MapKind::Svc,
                op: "read",
                source: std::io::Error::other("injected failure"),
            });
        }
        Ok(self.content())
    }

    fn count(&mut self, map: MapKind) -> Result<usize, StoreError> {
        if self.fail_reads > 0 {
            self.fail_reads -= 1;
            return Err(StoreError::Map {
                map,
                op: "count",
                source: std::io::Error::other("injected failure"),
            });
        }
        Ok(match map {
            MapKind::Ct => self.ct.len(),
            _ => self.entries(map),
        })
    }

    fn capacity(&self, map: MapKind) -> u32 {
        self.capacities.get(&map).copied().unwrap_or(0)
    }

    fn resize(&mut self, capacities: &BTreeMap<MapKind, u32>) -> Result<(), StoreError> {
        self.resizes.push(capacities.clone());
        if self.fail_resizes > 0 {
            self.fail_resizes -= 1;
            return Err(StoreError::Kernel {
                action: "resizing maps".into(),
                source: "injected failure".into(),
            });
        }
        for (map, capacity) in capacities {
            if self.entries(*map) > *capacity as usize {
                return Err(StoreError::Full {
                    map: *map,
                    capacity: *capacity,
                });
            }
        }
        self.capacities.extend(capacities);
        Ok(())
    }

    fn prune(&mut self, flows: &[StaleFlow]) -> Result<usize, StoreError> {
        let stale = crate::prune::StaleBackends::new(flows);
        let before = self.ct.len();
        self.ct.retain(|k, v| !stale.conntrack_hit(k, v));
        Ok(before - self.ct.len())
    }
}

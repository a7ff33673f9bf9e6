//! Handles on the pinned maps: byte-level writes with the kernel's errors ("map full" told
//! apart), batched reads, counts, pruning of stale flows and copying into a grown map.

use std::collections::BTreeMap;
use std::os::fd::{AsFd as _, BorrowedFd};
use std::path::Path;

use aya::maps::MapData;
use sluice_plan::StaleFlow;

use crate::abi::{self, AffKey, AffVal, CidrKey, CtKey, CtVal, MapKind, NodeIpKey, SrcKey};
use crate::kernel::bpffs::Pins;
use crate::kernel::sys;
use crate::prune::StaleBackends;
use crate::render::MapContent;
use crate::store::StoreError;

/// Entries per `BPF_MAP_LOOKUP_BATCH` call.
const BATCH: u32 = 4096;

/// One pinned map.
pub struct MapHandle {
    kind: MapKind,
    data: MapData,
    capacity: u32,
}

fn syscall(map: MapKind, op: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Map { map, op, source }
}

impl MapHandle {
    pub fn open(kind: MapKind, path: &Path) -> Result<Self, StoreError> {
        let data = MapData::from_pin(path).map_err(|e| StoreError::Kernel {
            action: format!("opening map {}", path.display()),
            source: Box::new(e),
        })?;
        let info = data.info().map_err(|e| StoreError::Kernel {
            action: format!("reading map info of {}", path.display()),
            source: Box::new(e),
        })?;
        let (key, value) = kind.sizes();
        if (info.key_size() as usize, info.value_size() as usize) != (key, value) {
            return Err(StoreError::Kernel {
                action: format!("opening map {}", path.display()),
                source: format!(
                    "layout mismatch: key/value sizes {}/{} pinned, {key}/{value} expected",
                    info.key_size(),
                    info.value_size()
                )
                .into(),
            });
        }
        Ok(MapHandle {
            kind,
            data,
            capacity: info.max_entries(),
        })
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.data.fd().as_fd()
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn update(&self, key: &[u8], value: &[u8], flags: u64) -> Result<(), StoreError> {
        sys::map_update(self.fd(), key, value, flags).map_err(|source| {
            // Hash maps say E2BIG when max_entries is reached, LPM tries ENOSPC.
            match source.raw_os_error() {
                Some(libc::E2BIG | libc::ENOSPC) => StoreError::Full {
                    map: self.kind,
                    capacity: self.capacity,
                },
                _ => StoreError::Map {
                    map: self.kind,
                    op: "update",
                    source,
                },
            }
        })
    }

    pub fn delete(&self, key: &[u8]) -> Result<bool, StoreError> {
        sys::map_delete(self.fd(), key).map_err(syscall(self.kind, "delete"))
    }

    /// Calls `visit(key, value)` for every entry (hash maps in batches; LPM tries, which
    /// have no batch operations, key by key).
    pub fn for_each(&self, mut visit: impl FnMut(&[u8], &[u8])) -> Result<(), StoreError> {
        let (ksize, vsize) = self.kind.sizes();
        if matches!(self.kind, MapKind::Src | MapKind::Cidr) {
            return self.for_each_key(ksize, vsize, visit);
        }
        let mut keys = vec![0u8; ksize * BATCH as usize];
        let mut values = vec![0u8; vsize * BATCH as usize];
        let mut cursor = None;
        loop {
            let (got, done) =
                sys::map_lookup_batch(self.fd(), &mut cursor, &mut keys, &mut values, BATCH)
                    .map_err(syscall(self.kind, "batch lookup"))?;
            for i in 0..got {
                visit(
                    &keys[i * ksize..(i + 1) * ksize],
                    &values[i * vsize..(i + 1) * vsize],
                );
            }
            if done {
                return Ok(());
            }
        }
    }

    fn for_each_key(
        &self,
        ksize: usize,
        vsize: usize,
        mut visit: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), StoreError> {
        let mut key = vec![0u8; ksize];
        let mut next = vec![0u8; ksize];
        let mut value = vec![0u8; vsize];
        let mut first = true;
        loop {
            let prev = (!first).then_some(key.as_slice());
            if !sys::map_next_key(self.fd(), prev, &mut next)
                .map_err(syscall(self.kind, "next key"))?
            {
                return Ok(());
            }
            first = false;
            std::mem::swap(&mut key, &mut next);
            if sys::map_lookup(self.fd(), &key, &mut value).map_err(syscall(self.kind, "lookup"))? {
                visit(&key, &value);
            }
        }
    }

    /// Adds the rows of this agent-owned map to `c` (rows of another size are skipped: the
    /// sizes were checked when the map was opened).
    pub fn read_into(&self, c: &mut MapContent) -> Result<(), StoreError> {
        match self.kind {
            MapKind::Svc => self.for_each(|k, v| {
                if let (Some(k), Some(v)) = (abi::from_bytes(k), abi::from_bytes(v)) {
                    c.svc.insert(k, v);
                }
            }),
            MapKind::Slot | MapKind::Maglev => {
                let rows = if self.kind == MapKind::Slot {
                    &mut c.slot
                } else {
                    &mut c.maglev
                };
                self.for_each(|k, v| {
                    if let (Some(k), Some(v)) = (abi::from_bytes(k), abi::from_bytes(v)) {
                        rows.insert(k, v);
                    }
                })
            }
            MapKind::Src => self.for_each(|k, _| c.src.extend(abi::from_bytes::<SrcKey>(k))),
            MapKind::Cidr => self.for_each(|k, _| c.cidr.extend(abi::from_bytes::<CidrKey>(k))),
            MapKind::NodeIp => {
                self.for_each(|k, _| c.nodeip.extend(abi::from_bytes::<NodeIpKey>(k)))
            }
            MapKind::Aff | MapKind::Rev | MapKind::Ct => Ok(()),
        }
    }

    /// The conntrack entries of the original direction (client → frontend), for a
    /// `sl_ct_v1` handle.
    pub fn conntrack_orig(&self) -> Result<Vec<(CtKey, CtVal)>, StoreError> {
        let mut out = Vec::new();
        self.for_each(|k, v| {
            if let (Some(k), Some(v)) = (abi::from_bytes::<CtKey>(k), abi::from_bytes(v))
                && k.dir == abi::CT_DIR_ORIG
            {
                out.push((k, v));
            }
        })?;
        Ok(out)
    }

    pub fn count(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        self.for_each(|_, _| n += 1)?;
        Ok(n)
    }

    /// Copies every entry of `self` into `to`; `missing_only`: only keys `to` lacks (a second
    /// pass picking up what the datapath added meanwhile). Returns how many were written.
    pub fn copy_into(&self, to: &MapHandle, missing_only: bool) -> Result<usize, StoreError> {
        let flags = if missing_only { sys::BPF_NOEXIST } else { 0 };
        let mut copied = 0;
        let mut failure = None;
        self.for_each(|k, v| {
            if failure.is_some() {
                return;
            }
            match to.update(k, v, flags) {
                Ok(()) => copied += 1,
                Err(StoreError::Map { ref source, .. })
                    if missing_only && source.raw_os_error() == Some(libc::EEXIST) => {}
                // A grown LRU map never refuses; a full agent map is a sizing bug: stop.
                Err(e) => failure = Some(e),
            }
        })?;
        failure.map_or(Ok(copied), Err)
    }
}

/// Every map, by kind.
pub struct KernelMaps {
    handles: BTreeMap<MapKind, MapHandle>,
}

impl KernelMaps {
    pub fn open(pins: &Pins) -> Result<Self, StoreError> {
        let mut handles = BTreeMap::new();
        for map in MapKind::ALL {
            handles.insert(map, MapHandle::open(map, &pins.path(map))?);
        }
        Ok(KernelMaps { handles })
    }

    pub fn get(&self, map: MapKind) -> &MapHandle {
        &self.handles[&map]
    }

    pub fn replace(&mut self, handle: MapHandle) {
        self.handles.insert(handle.kind, handle);
    }

    /// Everything the agent owns, as the kernel has it now.
    pub fn read(&self) -> Result<MapContent, StoreError> {
        let mut c = MapContent::default();
        for map in MapKind::AGENT {
            self.get(map).read_into(&mut c)?;
        }
        Ok(c)
    }

    /// Removes the conntrack and affinity entries of flows toward stale backends, so clients
    /// move to a live backend at once.
    pub fn prune(&self, flows: &[StaleFlow]) -> Result<usize, StoreError> {
        let stale = StaleBackends::new(flows);
        if stale.is_empty() {
            return Ok(0);
        }
        let mut gone: Vec<Vec<u8>> = Vec::new();
        self.get(MapKind::Ct).for_each(|k, v| {
            let hit = match (abi::from_bytes::<CtKey>(k), abi::from_bytes::<CtVal>(v)) {
                (Some(k), Some(v)) => stale.conntrack_hit(&k, &v),
                _ => false,
            };
            if hit {
                gone.push(k.to_vec());
            }
        })?;
        let ct = gone.len();
        for key in gone.drain(..) {
            self.get(MapKind::Ct).delete(&key)?;
        }
        self.get(MapKind::Aff).for_each(|k, v| {
            if abi::from_bytes::<AffVal>(v).is_some_and(|v| stale.affinity_hit(&v))
                && abi::from_bytes::<AffKey>(k).is_some()
            {
                gone.push(k.to_vec());
            }
        })?;
        let aff = gone.len();
        for key in gone {
            self.get(MapKind::Aff).delete(&key)?;
        }
        Ok(ct + aff)
    }
}

//! Handles on the pinned maps: read back everything the agent owns, apply a diff, prune
//! datapath-written entries (conntrack, affinity) of removed backends.

use std::path::Path;

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{HashMap, Map, MapData};
use sluice_dataplane::DataplaneError;

use crate::abi::{
    self, AffKey, AffVal, Backend, CidrKeyData, CtKey, CtVal, SlotKey, SrcKeyData, SvcKey, SvcVal,
};
use crate::kerr;
use crate::state::{MapContent, MapDiff, ip_words};
use sluice_plan::StaleFlow;

pub struct Maps {
    pub svc: HashMap<MapData, SvcKey, SvcVal>,
    pub slot: HashMap<MapData, SlotKey, Backend>,
    pub maglev: HashMap<MapData, SlotKey, Backend>,
    pub src: LpmTrie<MapData, SrcKeyData, u32>,
    pub cidr: LpmTrie<MapData, CidrKeyData, u32>,
    pub aff: HashMap<MapData, AffKey, AffVal>,
    pub ct: HashMap<MapData, CtKey, CtVal>,
}

fn open(dir: &Path, name: &str) -> Result<Map, DataplaneError> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|e| kerr(format!("open {}", path.display()), e))?;
    Map::from_map_data(data).map_err(|e| kerr(format!("open {}", path.display()), e))
}

macro_rules! typed {
    ($dir:expr, $name:expr, $ty:ty) => {
        <$ty>::try_from(open($dir, $name)?).map_err(|e| kerr(format!("open map {}", $name), e))?
    };
}

impl Maps {
    /// Opens the maps pinned under `dir` (created by loading the objects).
    pub fn open(dir: &Path) -> Result<Self, DataplaneError> {
        Ok(Maps {
            svc: typed!(dir, abi::MAP_SVC, HashMap<MapData, SvcKey, SvcVal>),
            slot: typed!(dir, abi::MAP_SLOT, HashMap<MapData, SlotKey, Backend>),
            maglev: typed!(dir, abi::MAP_MAGLEV, HashMap<MapData, SlotKey, Backend>),
            src: typed!(dir, abi::MAP_SRC, LpmTrie<MapData, SrcKeyData, u32>),
            cidr: typed!(dir, abi::MAP_CIDR, LpmTrie<MapData, CidrKeyData, u32>),
            aff: typed!(dir, abi::MAP_AFF, HashMap<MapData, AffKey, AffVal>),
            ct: typed!(dir, abi::MAP_CT, HashMap<MapData, CtKey, CtVal>),
        })
    }

    /// Everything the agent owns, as the kernel has it now.
    pub fn read(&self) -> Result<MapContent, DataplaneError> {
        let mut c = MapContent::default();
        for item in self.svc.iter() {
            let (k, v) = item.map_err(|e| kerr("read sl_svc_v1", e))?;
            c.svc.insert(k, v);
        }
        for item in self.slot.iter() {
            let (k, v) = item.map_err(|e| kerr("read sl_slot_v1", e))?;
            c.slot.insert(k, v);
        }
        for item in self.maglev.iter() {
            let (k, v) = item.map_err(|e| kerr("read sl_maglev_v1", e))?;
            c.maglev.insert(k, v);
        }
        for item in self.src.iter() {
            let (k, v) = item.map_err(|e| kerr("read sl_src_v1", e))?;
            c.src.insert((k.prefix_len(), k.data()), v);
        }
        for item in self.cidr.iter() {
            let (k, v) = item.map_err(|e| kerr("read sl_cidr_v1", e))?;
            c.cidr.insert((k.prefix_len(), k.data()), v);
        }
        Ok(c)
    }

    /// Writes the diff in an order that never lets a frontend point at missing slots:
    /// new slots first, then frontends, then removals of frontends, then of slots.
    pub fn write(
        &mut self,
        svc: &MapDiff<SvcKey, SvcVal>,
        slot: &MapDiff<SlotKey, Backend>,
        maglev: &MapDiff<SlotKey, Backend>,
        src: &MapDiff<(u32, SrcKeyData), u32>,
        cidr: &MapDiff<(u32, CidrKeyData), u32>,
    ) -> Result<(), DataplaneError> {
        for ((plen, data), v) in &cidr.upsert {
            self.cidr
                .insert(&LpmKey::new(*plen, *data), v, 0)
                .map_err(|e| kerr("update sl_cidr_v1", e))?;
        }
        for (k, v) in &slot.upsert {
            self.slot
                .insert(k, v, 0)
                .map_err(|e| kerr("update sl_slot_v1", e))?;
        }
        for (k, v) in &maglev.upsert {
            self.maglev
                .insert(k, v, 0)
                .map_err(|e| kerr("update sl_maglev_v1", e))?;
        }
        for ((plen, data), v) in &src.upsert {
            self.src
                .insert(&LpmKey::new(*plen, *data), v, 0)
                .map_err(|e| kerr("update sl_src_v1", e))?;
        }
        for (k, v) in &svc.upsert {
            self.svc
                .insert(k, v, 0)
                .map_err(|e| kerr("update sl_svc_v1", e))?;
        }
        for k in &svc.delete {
            ignore_missing(self.svc.remove(k)).map_err(|e| kerr("delete from sl_svc_v1", e))?;
        }
        for k in &slot.delete {
            ignore_missing(self.slot.remove(k)).map_err(|e| kerr("delete from sl_slot_v1", e))?;
        }
        for k in &maglev.delete {
            ignore_missing(self.maglev.remove(k))
                .map_err(|e| kerr("delete from sl_maglev_v1", e))?;
        }
        for (plen, data) in &src.delete {
            ignore_missing(self.src.remove(&LpmKey::new(*plen, *data)))
                .map_err(|e| kerr("delete from sl_src_v1", e))?;
        }
        for (plen, data) in &cidr.delete {
            ignore_missing(self.cidr.remove(&LpmKey::new(*plen, *data)))
                .map_err(|e| kerr("delete from sl_cidr_v1", e))?;
        }
        Ok(())
    }

    /// Removes the datapath's conntrack and affinity entries of the stale flows compute
    /// named (flows toward a backend that left), so clients move to a live backend at once.
    pub fn prune(&mut self, flows: &[StaleFlow]) -> usize {
        let gone: Vec<(u8, [u32; 4], u16)> = flows
            .iter()
            .filter_map(|flow| match flow {
                StaleFlow::Backend { protocol, ip, port } => {
                    Some((protocol.number(), ip_words(*ip).0, port.to_be()))
                }
                StaleFlow::Frontend { .. } => None,
            })
            .collect();
        if gone.is_empty() {
            return 0;
        }
        let is_gone = |proto: u8, addr: [u32; 4], port: u16| gone.contains(&(proto, addr, port));
        let mut stale_ct = Vec::new();
        for (k, v) in self.ct.iter().flatten() {
            let hit = if k.dir == abi::CT_DIR_ORIG {
                is_gone(k.proto, v.nat_addr, v.nat_port)
            } else {
                is_gone(k.proto, k.saddr, k.sport)
            };
            if hit {
                stale_ct.push(k);
            }
        }
        let mut stale_aff = Vec::new();
        for (k, v) in self.aff.iter().flatten() {
            if gone
                .iter()
                .any(|(_, addr, port)| v.backend.addr == *addr && v.backend.port == *port)
            {
                stale_aff.push(k);
            }
        }
        let n = stale_ct.len() + stale_aff.len();
        for k in stale_ct {
            let _ = self.ct.remove(&k);
        }
        for k in stale_aff {
            let _ = self.aff.remove(&k);
        }
        n
    }
}

fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(ref e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

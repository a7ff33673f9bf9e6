//! Map capacities: explicit (`--bpf-map-sizes svc=65536,ct=1048576`) or automatic, and the
//! occupancy the agent exports.
//!
//! Automatic maps are created at [`default_capacity`] and grown when a plan needs more
//! ([`grown`]: at least double, with half again as headroom, rounded up to a power of two),
//! so the first plan of a large cluster sizes them before any traffic flows. Explicitly sized
//! maps never grow: service ports that do not fit are skipped and reported by name.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::abi::MapKind;

/// The largest capacity automatic growth goes to (hash maps allocate one bucket per entry
/// slot up front: 16M entries are 256 MiB of buckets).
pub const MAX_AUTO_CAPACITY: u32 = 1 << 24;

/// The capacity a map is created with when none is configured.
pub fn default_capacity(map: MapKind) -> u32 {
    match map {
        MapKind::Svc => 16_384,
        MapKind::Slot => 65_536,
        // 256 Maglev tables of 1021 slots.
        MapKind::Maglev => 262_144,
        MapKind::Src => 16_384,
        MapKind::Cidr => 256,
        MapKind::NodeIp => 256,
        MapKind::Aff => 65_536,
        MapKind::Rev => 131_072,
        MapKind::Ct => 262_144,
    }
}

/// The capacity an automatic map grows to so that `needed` entries fit.
pub fn grown(current: u32, needed: usize) -> u32 {
    let with_headroom = needed.saturating_add(needed / 2);
    let target = with_headroom.max(current as usize * 2);
    let rounded = target.checked_next_power_of_two().unwrap_or(usize::MAX);
    u32::try_from(rounded)
        .unwrap_or(u32::MAX)
        .min(MAX_AUTO_CAPACITY)
        .max(current)
}

/// Explicit capacities by map; maps not listed are sized automatically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapSizes(pub BTreeMap<MapKind, u32>);

impl MapSizes {
    pub fn get(&self, map: MapKind) -> Option<u32> {
        self.0.get(&map).copied()
    }

    pub fn is_explicit(&self, map: MapKind) -> bool {
        self.0.contains_key(&map)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapSizesError {
    #[error("{item:?}: expected MAP=ENTRIES")]
    Syntax { item: String },
    #[error("{item:?}: unknown map (one of svc, slot, maglev, src, cidr, nodeip, aff, rev, ct)")]
    UnknownMap { item: String },
    #[error("{item:?}: entries must be a number from 1 to 2^31")]
    Entries { item: String },
}

impl FromStr for MapSizes {
    type Err = MapSizesError;

    /// `svc=65536,ct=1048576` (empty: all automatic).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut sizes = BTreeMap::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, entries) = item.split_once('=').ok_or_else(|| MapSizesError::Syntax {
                item: item.to_owned(),
            })?;
            let map =
                MapKind::from_short(name.trim()).ok_or_else(|| MapSizesError::UnknownMap {
                    item: item.to_owned(),
                })?;
            let entries: u32 = entries
                .trim()
                .parse()
                .ok()
                .filter(|n| (1..=1 << 31).contains(n))
                .ok_or_else(|| MapSizesError::Entries {
                    item: item.to_owned(),
                })?;
            sizes.insert(map, entries);
        }
        Ok(MapSizes(sizes))
    }
}

impl fmt::Display for MapSizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self
            .0
            .iter()
            .map(|(map, n)| format!("{}={n}", map.short()))
            .collect();
        f.write_str(&items.join(","))
    }
}

/// How full one map is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapOccupancy {
    pub map: MapKind,
    pub entries: usize,
    pub capacity: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_sizes() {
        let sizes: MapSizes = "svc=65536, ct=1048576".parse().expect("valid");
        assert_eq!(sizes.get(MapKind::Svc), Some(65536));
        assert_eq!(sizes.get(MapKind::Ct), Some(1_048_576));
        assert!(!sizes.is_explicit(MapKind::Maglev));
        assert_eq!(sizes.to_string(), "svc=65536,ct=1048576");
        assert_eq!("".parse::<MapSizes>(), Ok(MapSizes::default()));
        assert_eq!(
            "svc".parse::<MapSizes>().map_err(|e| e.to_string()),
            Err("\"svc\": expected MAP=ENTRIES".to_owned())
        );
        assert!(matches!(
            "conntrack=5".parse::<MapSizes>(),
            Err(MapSizesError::UnknownMap { .. })
        ));
        assert!(matches!(
            "ct=0".parse::<MapSizes>(),
            Err(MapSizesError::Entries { .. })
        ));
    }

    #[test]
    fn growth_doubles_at_least_and_keeps_headroom() {
        assert_eq!(grown(1024, 1500), 4096, "1500 + 50% rounded up");
        assert_eq!(grown(1024, 1025), 2048, "at least double");
        assert_eq!(grown(MAX_AUTO_CAPACITY, usize::MAX), MAX_AUTO_CAPACITY);
    }
}

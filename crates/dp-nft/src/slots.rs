//! Endpoint slots: how the endpoints of a backend set are laid out so that an endpoint change
//! writes map elements only — no rule, no verdict, and so no whole-table validation by the
//! kernel (docs/nftables.md).
//!
//! A frontend's backend set (cluster or local) draws from a slot map keyed by the frontend
//! and a slot number: `ip daddr . tcp dport . SLOT` (cluster, external and LoadBalancer IPs)
//! or `tcp dport . SLOT` (node ports) → `address . port`. Maps and the chains drawing from
//! them are shared by every service whose set has the same [`Picker`]: set, key, protocol and
//! capacity `C` (a power of two, at least the endpoint count `n`). Slots `[0, C)` are the
//! *exact* region (each endpoint once, the rest empty), `[C, 2C)` the *spread* region (every
//! slot filled, each endpoint ⌊C/n⌋ or ⌈C/n⌉ times).
//!
//! A pick chain draws [`EXACT_DRAWS`] times a uniform slot of the exact region (an empty slot
//! matches nothing, so the next rule draws again), then once from the spread region. A
//! connection thus lands on each endpoint with probability exactly 1/n, except for the share
//! `f = (1 - n/C)^12` that misses every exact draw and takes the spread region, where an
//! endpoint's weight differs from 1/n by less than n/C: the relative skew is below `f · n/C`,
//! at most 0.8% anywhere in the band [`fits`] allows and under 0.05% for a capacity just
//! chosen (the tests below check both).
//!
//! `C` changes only when `n` leaves `[C/4, C]` ([`fits`]); then the service's route rules
//! point at the pick chain of the new capacity — the rare case that writes rules. Within the
//! band a change keeps every endpoint that stays where it was ([`assign`]): adding or removing
//! one endpoint writes its exact slot and the ~C/n spread slots that move.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use sluice_plan::{Protocol, SetName};

/// Draws from the exact region before the spread region is used.
pub const EXACT_DRAWS: usize = 12;
/// Smallest capacity (so small sets do not change pick chains at every scale step).
pub const MIN_CAPACITY: u32 = 4;

/// The capacity a set of `endpoints` gets when it needs a new one: the power of two at least
/// 5/4 of the count (room for a rolling update's default 25% surge), at least
/// [`MIN_CAPACITY`].
pub fn capacity_for(endpoints: usize) -> u32 {
    let wanted = endpoints.saturating_add(endpoints.div_ceil(4));
    u32::try_from(wanted)
        .ok()
        .and_then(u32::checked_next_power_of_two)
        .unwrap_or(1 << 31)
        .max(MIN_CAPACITY)
}

/// Whether a capacity still serves `endpoints`: all fit in the exact region, and at least a
/// quarter of it is used (so an exact draw hits with probability ≥ 1/4).
pub fn fits(capacity: u32, endpoints: usize) -> bool {
    let (c, n) = (u64::from(capacity), endpoints as u64);
    n >= 1 && n <= c && 4 * n >= c
}

/// How a slot map is keyed: by the destination address and port (cluster, external and
/// LoadBalancer IPs) or by the port alone (node ports, whatever node address was used).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Keyed {
    Address,
    Port,
}

/// A shared pick chain and its slot map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Picker {
    pub set: SetName,
    pub keyed: Keyed,
    pub protocol: Protocol,
    pub capacity: u32,
}

impl Picker {
    fn suffix(&self) -> String {
        let keyed = match self.keyed {
            Keyed::Address => "ip",
            Keyed::Port => "port",
        };
        format!(
            "{}-{keyed}-{}-{}",
            self.set.as_str(),
            self.protocol,
            self.capacity
        )
    }

    /// `pick-cluster-ip-tcp-16`.
    pub fn chain(&self) -> String {
        format!("pick-{}", self.suffix())
    }

    /// `slots-cluster-ip-tcp-16`.
    pub fn map(&self) -> String {
        format!("slots-{}", self.suffix())
    }

    /// The picker whose map is called `name`, if it is one of ours.
    pub fn from_map(name: &str) -> Option<Picker> {
        let mut parts = name.strip_prefix("slots-")?.split('-');
        let set = match parts.next()? {
            "cluster" => SetName::Cluster,
            "local" => SetName::Local,
            _ => return None,
        };
        let keyed = match parts.next()? {
            "ip" => Keyed::Address,
            "port" => Keyed::Port,
            _ => return None,
        };
        let protocol = match parts.next()? {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => return None,
        };
        let capacity: u32 = parts.next()?.parse().ok()?;
        let picker = Picker {
            set,
            keyed,
            protocol,
            capacity,
        };
        (parts.next().is_none() && picker.map() == name).then_some(picker)
    }
}

impl fmt::Display for Picker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.suffix())
    }
}

/// The frontend part of a slot map key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DrawKey {
    Address(IpAddr, u16),
    Port(u16),
}

impl DrawKey {
    pub fn keyed(&self) -> Keyed {
        match self {
            DrawKey::Address(..) => Keyed::Address,
            DrawKey::Port(_) => Keyed::Port,
        }
    }
}

/// What a set's slots hold (`None`: empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slots {
    /// One slot per endpoint, `capacity` long.
    pub exact: Vec<Option<SocketAddr>>,
    /// Every slot filled, `capacity` long.
    pub spread: Vec<Option<SocketAddr>>,
}

impl Slots {
    /// Empty slots of `capacity`.
    pub fn empty(capacity: u32) -> Self {
        let c = capacity as usize;
        Self {
            exact: vec![None; c],
            spread: vec![None; c],
        }
    }

    pub fn capacity(&self) -> u32 {
        u32::try_from(self.exact.len()).unwrap_or(u32::MAX)
    }

    /// `(slot, endpoint)` of every filled slot, in slot order.
    pub fn entries(&self) -> impl Iterator<Item = (u32, SocketAddr)> + '_ {
        self.exact
            .iter()
            .chain(&self.spread)
            .enumerate()
            .filter_map(|(i, slot)| Some((u32::try_from(i).ok()?, (*slot)?)))
    }

    /// Puts `endpoint` in `slot` (ignored beyond both regions).
    pub fn put(&mut self, slot: u32, endpoint: SocketAddr) {
        let slot = slot as usize;
        let exact = self.exact.len();
        if let Some(s) = self.exact.get_mut(slot) {
            *s = Some(endpoint);
        } else if let Some(s) = self.spread.get_mut(slot - exact) {
            *s = Some(endpoint);
        }
    }
}

/// A set's slots kept between renderings, compactly: each slot holds the position of its
/// endpoint in the set's endpoint list (sorted and unique: what the exact region holds, each
/// endpoint once) or [`SlotIndexes::EMPTY`] — one byte a slot while the set has fewer than 255
/// endpoints, four beyond, instead of the 32 of an `Option<SocketAddr>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotIndexes {
    Narrow(Box<[u8]>),
    Wide(Box<[u32]>),
}

impl SlotIndexes {
    /// The index of an empty slot.
    pub const EMPTY: u32 = u32::MAX;

    /// `slots` as positions in their endpoint list (the exact region's endpoints, sorted).
    pub fn new(slots: &Slots) -> Self {
        let mut endpoints: Vec<SocketAddr> = slots.exact.iter().flatten().copied().collect();
        endpoints.sort_unstable();
        endpoints.dedup();
        let index = |slot: &Option<SocketAddr>| {
            slot.and_then(|e| endpoints.binary_search(&e).ok())
                .and_then(|i| u32::try_from(i).ok())
                .unwrap_or(Self::EMPTY)
        };
        let all = slots.exact.iter().chain(&slots.spread);
        if endpoints.len() < usize::from(u8::MAX) {
            let narrow = |i: u32| u8::try_from(i).unwrap_or(u8::MAX);
            SlotIndexes::Narrow(all.map(|s| narrow(index(s))).collect())
        } else {
            SlotIndexes::Wide(all.map(index).collect())
        }
    }

    /// The slots again, from the same endpoint list (sorted, unique); `None` when an index
    /// lies beyond it (the list is not the one the slots were laid out from).
    pub fn expand(&self, endpoints: &[SocketAddr]) -> Option<Slots> {
        let lookup = |i: u32| match i {
            Self::EMPTY => Some(None),
            i => endpoints.get(i as usize).map(|e| Some(*e)),
        };
        let all: Option<Vec<Option<SocketAddr>>> = match self {
            SlotIndexes::Narrow(v) => v
                .iter()
                .map(|i| {
                    lookup(if *i == u8::MAX {
                        Self::EMPTY
                    } else {
                        u32::from(*i)
                    })
                })
                .collect(),
            SlotIndexes::Wide(v) => v.iter().map(|i| lookup(*i)).collect(),
        };
        let mut exact = all?;
        let spread = exact.split_off(exact.len() / 2);
        Some(Slots { exact, spread })
    }
}

/// Lays `endpoints` (sorted, unique, 1 ≤ n ≤ `capacity`) out in slots of `capacity`,
/// keeping what `previous` (the same capacity's earlier content) placed where it still may
/// be: only the slots whose endpoint must change are written anew.
pub fn assign(previous: Option<&Slots>, endpoints: &[SocketAddr], capacity: u32) -> Slots {
    let empty = Slots::empty(capacity);
    let previous = previous
        .filter(|p| p.capacity() == capacity && p.spread.len() == p.exact.len())
        .unwrap_or(&empty);
    Slots {
        exact: place_once(&previous.exact, endpoints),
        spread: spread_evenly(&previous.spread, endpoints),
    }
}

/// Each endpoint in one slot: where it was, else in the lowest free slot.
fn place_once(
    previous: &[Option<SocketAddr>],
    endpoints: &[SocketAddr],
) -> Vec<Option<SocketAddr>> {
    let wanted: BTreeSet<&SocketAddr> = endpoints.iter().collect();
    let mut placed: BTreeSet<SocketAddr> = BTreeSet::new();
    let mut out: Vec<Option<SocketAddr>> = previous
        .iter()
        .map(|slot| slot.filter(|e| wanted.contains(e) && placed.insert(*e)))
        .collect();
    let mut newcomers = endpoints.iter().filter(|e| !placed.contains(e));
    for slot in out.iter_mut().filter(|s| s.is_none()) {
        match newcomers.next() {
            Some(e) => *slot = Some(*e),
            None => break,
        }
    }
    out
}

/// Every slot filled, each endpoint ⌊len/n⌋ or ⌈len/n⌉ times. The endpoints that hold the
/// most slots already keep the larger share, and kept slots stay put.
fn spread_evenly(
    previous: &[Option<SocketAddr>],
    endpoints: &[SocketAddr],
) -> Vec<Option<SocketAddr>> {
    let (len, n) = (previous.len(), endpoints.len());
    if n == 0 {
        return vec![None; len];
    }
    let mut held: BTreeMap<SocketAddr, usize> = endpoints.iter().map(|e| (*e, 0)).collect();
    for e in previous.iter().flatten() {
        if let Some(count) = held.get_mut(e) {
            *count += 1;
        }
    }
    let mut by_share: Vec<(SocketAddr, usize)> = held.into_iter().collect();
    by_share.sort_by_key(|(e, count)| (std::cmp::Reverse(*count), *e));
    let quota: BTreeMap<SocketAddr, usize> = by_share
        .iter()
        .enumerate()
        .map(|(rank, (e, _))| (*e, len / n + usize::from(rank < len % n)))
        .collect();
    let mut kept: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    let mut out: Vec<Option<SocketAddr>> = previous
        .iter()
        .map(|slot| {
            slot.filter(|e| {
                let count = kept.entry(*e).or_default();
                let keep = quota.get(e).is_some_and(|q| *count < *q);
                *count += usize::from(keep);
                keep
            })
        })
        .collect();
    let mut missing = endpoints.iter().flat_map(|e| {
        let have = kept.get(e).copied().unwrap_or(0);
        std::iter::repeat_n(*e, quota[e] - have)
    });
    for slot in out.iter_mut().filter(|s| s.is_none()) {
        *slot = missing.next();
    }
    out
}

/// A set's slots read back from the kernel, by (set, protocol, frontend key).
pub type FoundSlots = BTreeMap<(SetName, Protocol, DrawKey), Slots>;

/// Slot map elements read back: the picker of the map, the frontend, the slot, the endpoint.
pub type SlotElement = (Picker, DrawKey, u32, SocketAddr);

/// What slot map elements read back say: each frontend's slots, and the UDP endpoints they
/// translate to (whose conntrack entries may have gone stale while the agent was down).
pub fn from_elements(elements: &[SlotElement]) -> (FoundSlots, BTreeSet<(Protocol, IpAddr, u16)>) {
    let mut found = FoundSlots::new();
    let mut udp = BTreeSet::new();
    for (picker, key, slot, endpoint) in elements {
        found
            .entry((picker.set, picker.protocol, *key))
            .or_insert_with(|| Slots::empty(picker.capacity))
            .put(*slot, *endpoint);
        if picker.protocol == Protocol::Udp {
            udp.insert((Protocol::Udp, endpoint.ip(), endpoint.port()));
        }
    }
    (found, udp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| {
                let ip = IpAddr::from([10, 244, (i / 250) as u8, (i % 250) as u8 + 1]);
                SocketAddr::new(ip, 8080)
            })
            .collect()
    }

    fn counts(region: &[Option<SocketAddr>]) -> BTreeMap<SocketAddr, usize> {
        let mut out = BTreeMap::new();
        for e in region.iter().flatten() {
            *out.entry(*e).or_default() += 1;
        }
        out
    }

    /// Every endpoint once in the exact region; the spread region full and even.
    fn check_layout(slots: &Slots, wanted: &[SocketAddr]) {
        let exact = counts(&slots.exact);
        assert_eq!(exact.len(), wanted.len(), "{slots:?}");
        assert!(exact.values().all(|c| *c == 1), "{slots:?}");
        assert!(
            slots.spread.iter().all(Option::is_some),
            "spread full: {slots:?}"
        );
        let spread = counts(&slots.spread);
        let endpoints: Vec<&SocketAddr> = spread.keys().collect();
        assert_eq!(endpoints, wanted.iter().collect::<Vec<_>>());
        let (min, max) = (spread.values().min(), spread.values().max());
        assert!(
            max.zip(min).is_some_and(|(a, b)| a - b <= 1),
            "even: {spread:?}"
        );
    }

    fn changed(a: &Slots, b: &Slots) -> usize {
        let regions = [(&a.exact, &b.exact), (&a.spread, &b.spread)];
        regions
            .iter()
            .map(|(x, y)| x.iter().zip(y.iter()).filter(|(p, q)| p != q).count())
            .sum()
    }

    #[test]
    fn capacities_leave_room_for_a_surge_and_change_only_outside_the_band() {
        assert_eq!(capacity_for(1), 4);
        assert_eq!(capacity_for(3), 4);
        assert_eq!(capacity_for(4), 8);
        assert_eq!(capacity_for(10), 16);
        assert_eq!(capacity_for(13), 32);
        for n in 1..5000 {
            let c = capacity_for(n);
            assert!(fits(c, n), "{n} fits its own capacity {c}");
            assert!(fits(c, n + n / 4), "{n}: a 25% surge keeps capacity {c}");
        }
        assert!(fits(16, 4) && !fits(16, 3), "shrinks below a quarter");
        assert!(!fits(16, 17) && !fits(16, 0));
    }

    #[test]
    fn a_fresh_layout_places_each_endpoint_once_and_spreads_evenly() {
        for n in [1, 2, 3, 7, 10, 16, 33] {
            let eps = endpoints(n);
            check_layout(&assign(None, &eps, capacity_for(n)), &eps);
        }
    }

    #[test]
    fn replacing_one_endpoint_rewrites_only_its_slots() {
        let eps = endpoints(10);
        let before = assign(None, &eps, 16);
        let mut next = eps.clone();
        next[3] = "10.250.0.1:8080".parse().unwrap();
        next.sort();
        let after = assign(Some(&before), &next, 16);
        check_layout(&after, &next);
        let held = counts(&before.spread)[&eps[3]];
        assert_eq!(
            changed(&before, &after),
            1 + held,
            "its exact slot and its spread slots"
        );
    }

    #[test]
    fn adding_and_removing_endpoints_moves_few_slots() {
        let eps = endpoints(10);
        let before = assign(None, &eps, 16);
        let more = endpoints(11);
        let grown = assign(Some(&before), &more, 16);
        check_layout(&grown, &more);
        // One exact slot, and the newcomer's ⌊16/11⌋ = 1 spread slot.
        assert_eq!(changed(&before, &grown), 1 + 1);
        let fewer = endpoints(9);
        let shrunk = assign(Some(&before), &fewer, 16);
        check_layout(&shrunk, &fewer);
        // The leaver's exact slot, and its 1 or 2 spread slots handed to others.
        assert!(changed(&before, &shrunk) <= 1 + 2, "{:?}", shrunk);
    }

    #[test]
    fn a_layout_follows_any_sequence_of_changes() {
        let pool = endpoints(40);
        let mut current = pool[..5].to_vec();
        let mut capacity = capacity_for(current.len());
        let mut slots = assign(None, &current, capacity);
        for step in 0..300usize {
            // Deterministic churn: add, remove or replace by the step number.
            let pick = pool[(step * 7) % pool.len()];
            match step % 3 {
                0 if !current.contains(&pick) => current.push(pick),
                1 if current.len() > 1 => drop(current.remove(step % current.len())),
                _ => {
                    let i = step % current.len();
                    if !current.contains(&pick) {
                        current[i] = pick;
                    }
                }
            }
            current.sort();
            let previous = if fits(capacity, current.len()) {
                Some(&slots)
            } else {
                capacity = capacity_for(current.len());
                None
            };
            slots = assign(previous, &current, capacity);
            check_layout(&slots, &current);
        }
    }

    /// The relative skew of the least and most favoured endpoint for `n` endpoints in slots
    /// of capacity `c`: `(1 - n/c)^draws` times the spread region's own skew.
    fn skew(n: u64, c: u64) -> f64 {
        let miss = (1.0 - n as f64 / c as f64).powi(EXACT_DRAWS as i32);
        let (low, high) = (c / n, c.div_ceil(n));
        let below = 1.0 - (n * low) as f64 / c as f64;
        let above = (n * high) as f64 / c as f64 - 1.0;
        miss * below.max(above)
    }

    #[test]
    fn the_weight_skew_stays_within_the_documented_bound() {
        let mut worst_in_band: f64 = 0.0;
        for shift in 2..=17 {
            let c = 1u64 << shift;
            for n in 1..=c {
                if fits(c as u32, n as usize) {
                    worst_in_band = worst_in_band.max(skew(n, c));
                }
            }
        }
        assert!(worst_in_band < 0.008, "{worst_in_band}");
        let worst_fresh = (1..20_000u64)
            .map(|n| skew(n, u64::from(capacity_for(n as usize))))
            .fold(0.0, f64::max);
        assert!(worst_fresh < 0.0005, "{worst_fresh}");
        // Measured on a layout, not only computed: exact draws, then the spread region.
        let eps = endpoints(9);
        let slots = assign(None, &eps, 32);
        let (exact, spread) = (counts(&slots.exact), counts(&slots.spread));
        let miss = (1.0 - 9.0 / 32.0f64).powi(EXACT_DRAWS as i32);
        for e in &eps {
            let p = (1.0 - miss) * exact[e] as f64 / 9.0 + miss * spread[e] as f64 / 32.0;
            assert!((p * 9.0 - 1.0).abs() <= skew(9, 32) + 1e-12, "{e}: {p}");
        }
    }

    #[test]
    fn kept_slot_indexes_expand_to_the_same_slots_in_a_byte_or_four_a_slot() {
        for n in [1, 10, 254, 255, 600, 1100] {
            let eps = endpoints(n);
            let fresh = assign(None, &eps, capacity_for(n));
            // A changed layout (holes left by removals, slots moved) round-trips too.
            let fewer: Vec<SocketAddr> = eps.iter().copied().step_by(2).collect();
            let changed = assign(Some(&fresh), &fewer, fresh.capacity());
            for slots in [fresh, changed] {
                let listed: Vec<SocketAddr> = counts(&slots.exact).into_keys().collect();
                let kept = SlotIndexes::new(&slots);
                let bytes = match &kept {
                    SlotIndexes::Narrow(v) => v.len(),
                    SlotIndexes::Wide(v) => v.len() * 4,
                };
                let per_slot = if listed.len() < 255 { 1 } else { 4 };
                assert_eq!(bytes, 2 * slots.capacity() as usize * per_slot, "{n}");
                assert_eq!(kept.expand(&listed), Some(slots.clone()), "{n}");
                let shorter = &listed[..listed.len() - 1];
                assert_eq!(kept.expand(shorter), None, "{n}: not the list laid out");
            }
        }
    }

    #[test]
    fn picker_names_round_trip() {
        let picker = Picker {
            set: SetName::Local,
            keyed: Keyed::Port,
            protocol: Protocol::Udp,
            capacity: 16,
        };
        assert_eq!(picker.chain(), "pick-local-port-udp-16");
        assert_eq!(picker.map(), "slots-local-port-udp-16");
        assert_eq!(Picker::from_map(&picker.map()), Some(picker));
        for other in [
            "slots-cluster-ip-tcp",
            "slots-x-ip-tcp-4",
            "slots-cluster-ip-tcp-04",
        ] {
            assert_eq!(Picker::from_map(other), None, "{other}");
        }
    }

    #[test]
    fn slots_and_udp_endpoints_are_read_back_from_elements() {
        let eps = endpoints(3);
        let slots = assign(None, &eps, 4);
        let udp = Picker {
            set: SetName::Cluster,
            keyed: Keyed::Address,
            protocol: Protocol::Udp,
            capacity: 4,
        };
        let key = DrawKey::Address("10.96.0.53".parse().unwrap(), 53);
        let mut elements: Vec<SlotElement> =
            slots.entries().map(|(i, e)| (udp, key, i, e)).collect();
        let tcp = Picker {
            protocol: Protocol::Tcp,
            ..udp
        };
        elements.push((tcp, key, 0, "10.9.9.9:53".parse().unwrap()));
        let (found, targets) = from_elements(&elements);
        assert_eq!(found[&(SetName::Cluster, Protocol::Udp, key)], slots);
        let listed: Vec<String> = targets
            .iter()
            .map(|(_, ip, port)| format!("{ip}:{port}"))
            .collect();
        assert_eq!(
            listed,
            ["10.244.0.1:8080", "10.244.0.2:8080", "10.244.0.3:8080"],
            "TCP targets are not needed"
        );
    }
}

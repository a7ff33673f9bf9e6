//! Endpoint slots: how the endpoints of one backend set are laid out in the `endpoint-slots`
//! data map, so that an endpoint change writes map elements only — no rule, no verdict, and
//! so no whole-table validation by the kernel (docs/nftables.md).
//!
//! Each backend set on this path (a service port's cluster or local set, in one family) owns
//! a block of `3 × C` consecutive slot numbers; the capacity `C` is a power of two at least
//! its endpoint count `n`:
//! * the *exact* region `[base, base + C)` holds every endpoint once, the other slots empty;
//! * the *spread* region `[base + C, base + 3C)` has every slot filled, each endpoint
//!   ⌊2C/n⌋ or ⌈2C/n⌉ times.
//!
//! The set's dispatch chain draws [`EXACT_DRAWS`] times a uniform slot of the exact region
//! (an empty slot matches nothing and the next rule draws again), then once from the spread
//! region. A connection thus lands on each endpoint with probability exactly 1/n, except for
//! the share `f = (1 - n/C)^6` that misses every exact draw and takes the spread region,
//! where an endpoint's weight differs from 1/n by less than n/2C: the relative skew is below
//! `f · n/2C`: at most 2.3% anywhere in the band [`fits`] allows, under 1% for a capacity
//! just chosen (the tests below check both).
//!
//! `C` changes only when `n` leaves `[C/4, C]` ([`fits`]); then the set gets a new block and
//! its dispatch rules are rewritten — the rare case. Within the band, a change keeps every
//! endpoint that stays where it was ([`assign`]): adding or removing one endpoint writes its
//! exact slot and the ~2C/n spread slots that move.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use sluice_plan::Protocol;

/// Draws from the exact region before the spread region is used.
pub const EXACT_DRAWS: usize = 6;
/// Smallest capacity (so small sets do not change blocks at every scale step).
pub const MIN_CAPACITY: u32 = 4;
/// The spread region is this many times the capacity.
const SPREAD: u32 = 2;

/// The capacity a set of `endpoints` gets when it needs a new block: the power of two at
/// least 5/4 of the count (room for a rolling update's default 25% surge), at least
/// [`MIN_CAPACITY`].
pub fn capacity_for(endpoints: usize) -> u32 {
    let wanted = endpoints.saturating_add(endpoints.div_ceil(4));
    u32::try_from(wanted)
        .ok()
        .and_then(u32::checked_next_power_of_two)
        .unwrap_or(u32::MAX)
        .max(MIN_CAPACITY)
}

/// Whether a block of `capacity` still serves `endpoints`: all fit in the exact region, and
/// at least a quarter of it is used (so an exact draw hits with probability ≥ 1/4).
pub fn fits(capacity: u32, endpoints: usize) -> bool {
    let (c, n) = (u64::from(capacity), endpoints as u64);
    n >= 1 && n <= c && 4 * n >= c
}

/// Slot numbers a block of `capacity` spans; `None` beyond 32 bits.
pub fn block_len(capacity: u32) -> Option<u32> {
    capacity.checked_mul(1 + SPREAD)
}

/// Where a set's block starts, and its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Block {
    pub base: u32,
    pub capacity: u32,
}

impl Block {
    pub fn len(&self) -> u32 {
        block_len(self.capacity).unwrap_or(u32::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.capacity == 0
    }

    /// The first slot of the spread region.
    pub fn spread_base(&self) -> u32 {
        self.base.saturating_add(self.capacity)
    }

    pub fn spread_len(&self) -> u32 {
        self.capacity.saturating_mul(SPREAD)
    }
}

/// What a block's slots hold (`None`: empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slots {
    /// One slot per endpoint, `capacity` long.
    pub exact: Vec<Option<SocketAddr>>,
    /// Every slot filled, `2 × capacity` long.
    pub spread: Vec<Option<SocketAddr>>,
}

impl Slots {
    /// Empty slots for a block of `capacity`.
    pub fn empty(capacity: u32) -> Self {
        let c = capacity as usize;
        Self {
            exact: vec![None; c],
            spread: vec![None; c * SPREAD as usize],
        }
    }

    /// `(offset in the block, endpoint)` of every filled slot, in slot order.
    pub fn entries(&self) -> impl Iterator<Item = (u32, SocketAddr)> + '_ {
        self.exact
            .iter()
            .chain(&self.spread)
            .enumerate()
            .filter_map(|(i, slot)| Some((u32::try_from(i).ok()?, (*slot)?)))
    }

    /// Puts `endpoint` at `offset` in the block (ignored beyond it).
    pub fn put(&mut self, offset: u32, endpoint: SocketAddr) {
        let offset = offset as usize;
        let exact = self.exact.len();
        if let Some(slot) = self.exact.get_mut(offset) {
            *slot = Some(endpoint);
        } else if let Some(slot) = self.spread.get_mut(offset - exact) {
            *slot = Some(endpoint);
        }
    }
}

/// Lays `endpoints` (sorted, unique, 1 ≤ n ≤ `capacity`) out in a block of `capacity`,
/// keeping what `previous` (the same block's earlier content) placed where it still may be:
/// only the slots whose endpoint must change are written anew.
pub fn assign(previous: Option<&Slots>, endpoints: &[SocketAddr], capacity: u32) -> Slots {
    let empty = Slots::empty(capacity);
    let previous = previous
        .filter(|p| p.exact.len() == capacity as usize)
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
    let mut by_share: Vec<(&SocketAddr, usize)> = endpoints.iter().map(|e| (e, held[e])).collect();
    by_share.sort_by_key(|(e, count)| (std::cmp::Reverse(*count), **e));
    let quota: BTreeMap<SocketAddr, usize> = by_share
        .iter()
        .enumerate()
        .map(|(rank, (e, _))| (**e, len / n + usize::from(rank < len % n)))
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

/// A block as placed: its start and what its slots hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub base: u32,
    pub slots: Slots,
}

impl Placed {
    pub fn block(&self) -> Block {
        Block {
            base: self.base,
            capacity: u32::try_from(self.slots.exact.len()).unwrap_or(u32::MAX),
        }
    }
}

/// Blocks by dispatch chain name.
pub type Layout = BTreeMap<String, Placed>;

/// Which slot numbers are in use in one family's map. Blocks are taken best-fit from the
/// free ranges, else from the end; released ranges merge with their neighbours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotSpace {
    /// Free ranges below `end`: start → length.
    free: BTreeMap<u32, u32>,
    /// The same, by (length, start).
    by_len: BTreeSet<(u32, u32)>,
    /// Every slot from here on is free.
    end: u32,
}

impl SlotSpace {
    /// A free range of `len` slots (marked used); `None` when 32-bit slot numbers run out.
    pub fn allocate(&mut self, len: u32) -> Option<u32> {
        if let Some(&(free_len, start)) = self.by_len.range((len, 0)..).next() {
            self.take_free(start, free_len);
            if free_len > len {
                self.add_free(start + len, free_len - len);
            }
            return Some(start);
        }
        let start = self.end;
        self.end = start.checked_add(len)?;
        Some(start)
    }

    /// Gives `[start, start + len)` back.
    pub fn release(&mut self, start: u32, len: u32) {
        let (mut start, mut len) = (start, len);
        if let Some((&before, &before_len)) = self.free.range(..start).next_back()
            && before + before_len == start
        {
            self.take_free(before, before_len);
            start = before;
            len += before_len;
        }
        if let Some(&after_len) = self.free.get(&(start + len)) {
            self.take_free(start + len, after_len);
            len += after_len;
        }
        if start + len == self.end {
            self.end = start;
        } else {
            self.add_free(start, len);
        }
    }

    /// Marks `[start, start + len)` used if all of it is free (a block found in the kernel
    /// after a restart); `false` when some of it is taken.
    pub fn reserve(&mut self, start: u32, len: u32) -> bool {
        let Some(end) = start.checked_add(len) else {
            return false;
        };
        if start >= self.end {
            if start > self.end {
                self.add_free(self.end, start - self.end);
            }
            self.end = end;
            return true;
        }
        let Some((&free_start, &free_len)) = self.free.range(..=start).next_back() else {
            return false;
        };
        let free_end = free_start + free_len;
        if free_end < end {
            return false;
        }
        self.take_free(free_start, free_len);
        if start > free_start {
            self.add_free(free_start, start - free_start);
        }
        if free_end > end {
            self.add_free(end, free_end - end);
        }
        true
    }

    /// A space with exactly `blocks` in use (those that overlap an earlier one are left out
    /// and returned).
    pub fn with_blocks(blocks: impl IntoIterator<Item = Block>) -> (Self, Vec<Block>) {
        let mut space = SlotSpace::default();
        let mut refused = Vec::new();
        let mut sorted: Vec<Block> = blocks.into_iter().collect();
        sorted.sort();
        for block in sorted {
            if !space.reserve(block.base, block.len()) {
                refused.push(block);
            }
        }
        (space, refused)
    }

    fn take_free(&mut self, start: u32, len: u32) {
        self.free.remove(&start);
        self.by_len.remove(&(len, start));
    }

    fn add_free(&mut self, start: u32, len: u32) {
        self.free.insert(start, len);
        self.by_len.insert((len, start));
    }
}

/// A rule of ours drawing from `endpoint-slots`, as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRule {
    pub chain: String,
    /// The `meta l4proto` the rule matches.
    pub protocol: Option<Protocol>,
    pub offset: u32,
    pub modulus: u32,
}

/// The blocks the dispatch chains found in the kernel draw from, with their content: per
/// chain, exact draws `mod C offset B` and a spread draw `mod 2C offset B + C` (anything
/// else is not a block of ours and is left out).
pub fn layout_from(rules: &[SlotRule], elements: &BTreeMap<u32, SocketAddr>) -> Layout {
    let mut by_chain: BTreeMap<&str, Vec<&SlotRule>> = BTreeMap::new();
    for rule in rules {
        by_chain.entry(&rule.chain).or_default().push(rule);
    }
    let mut layout = Layout::new();
    for (chain, rules) in by_chain {
        let Some(first) = rules.first() else { continue };
        let block = Block {
            base: first.offset,
            capacity: first.modulus,
        };
        let shaped = |r: &&SlotRule| {
            (r.offset, r.modulus) == (block.base, block.capacity)
                || (r.offset, r.modulus) == (block.spread_base(), block.spread_len())
        };
        let spread = rules.iter().any(|r| r.modulus == block.spread_len());
        if !rules.iter().all(shaped) || !spread || block_len(block.capacity).is_none() {
            continue;
        }
        let mut slots = Slots::empty(block.capacity);
        let end = block.base.saturating_add(block.len() - 1);
        for (slot, endpoint) in elements.range(block.base..=end) {
            slots.put(slot - block.base, *endpoint);
        }
        layout.insert(
            chain.to_owned(),
            Placed {
                base: block.base,
                slots,
            },
        );
    }
    layout
}

/// The UDP endpoints the rules of `rules` may translate to (their conntrack entries may have
/// gone stale while the agent was down).
pub fn udp_targets(
    rules: &[SlotRule],
    elements: &BTreeMap<u32, SocketAddr>,
) -> BTreeSet<(Protocol, IpAddr, u16)> {
    let mut out = BTreeSet::new();
    for rule in rules.iter().filter(|r| r.protocol == Some(Protocol::Udp)) {
        if rule.modulus == 0 {
            continue;
        }
        let last = rule.offset.saturating_add(rule.modulus - 1);
        for endpoint in elements.range(rule.offset..=last).map(|(_, e)| e) {
            out.insert((Protocol::Udp, endpoint.ip(), endpoint.port()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| {
                SocketAddr::new(
                    IpAddr::from([10, 244, (i / 250) as u8, (i % 250) as u8 + 1]),
                    8080,
                )
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
        assert_eq!(
            spread.keys().collect::<Vec<_>>(),
            wanted.iter().collect::<Vec<_>>()
        );
        let (min, max) = (
            spread.values().min().unwrap(),
            spread.values().max().unwrap(),
        );
        assert!(max - min <= 1, "even spread: {spread:?}");
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
            let c = capacity_for(n);
            check_layout(&assign(None, &eps, c), &eps);
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
        // One exact slot, and the newcomer's ⌊32/11⌋ = 2 or 3 spread slots.
        assert!(
            changed(&before, &grown) <= 1 + 3,
            "{}",
            changed(&before, &grown)
        );
        let fewer = endpoints(9);
        let shrunk = assign(Some(&before), &fewer, 16);
        check_layout(&shrunk, &fewer);
        // The leaver's exact slot, and its 3 or 4 spread slots handed to others.
        assert!(
            changed(&before, &shrunk) <= 1 + 4,
            "{}",
            changed(&before, &shrunk)
        );
    }

    #[test]
    fn a_layout_follows_any_sequence_of_changes() {
        let pool = endpoints(40);
        let mut current = pool[..5].to_vec();
        let mut slots = assign(None, &current, 8);
        let mut capacity = 8;
        for step in 0..200usize {
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

    /// The skew bound the module docs state: `(1 - n/C)^draws · max relative deviation of the
    /// spread region`, for every count and capacity the band allows.
    #[test]
    fn the_weight_skew_stays_within_the_documented_bound() {
        let skew = |n: u64, c: u64| {
            let miss = (1.0 - n as f64 / c as f64).powi(EXACT_DRAWS as i32);
            let len = c * u64::from(SPREAD);
            let (low, high) = (len / n, len.div_ceil(n));
            let dev_low = 1.0 - (n * low) as f64 / len as f64;
            let dev_high = (n * high) as f64 / len as f64 - 1.0;
            miss * dev_low.max(dev_high)
        };
        let mut worst_in_band: f64 = 0.0;
        for shift in 2..=17 {
            let c = 1u64 << shift;
            for n in 1..=c {
                if fits(c as u32, n as usize) {
                    worst_in_band = worst_in_band.max(skew(n, c));
                }
            }
        }
        assert!(worst_in_band < 0.023, "{worst_in_band}");
        let worst_fresh = (1..20_000u64)
            .map(|n| skew(n, u64::from(capacity_for(n as usize))))
            .fold(0.0, f64::max);
        assert!(worst_fresh < 0.01, "{worst_fresh}");
        // Measured, not only computed: the exact draws, then the spread, simulated.
        let eps = endpoints(9);
        let slots = assign(None, &eps, 32);
        let (exact, spread) = (counts(&slots.exact), counts(&slots.spread));
        let miss = (1.0 - 9.0 / 32.0f64).powi(EXACT_DRAWS as i32);
        for e in &eps {
            let p = (1.0 - miss) * exact[e] as f64 / 9.0 + miss * spread[e] as f64 / 64.0;
            assert!((p * 9.0 - 1.0).abs() <= skew(9, 32) + 1e-12, "{e}: {p}");
        }
    }

    #[test]
    fn the_slot_space_reuses_released_ranges_and_honours_restored_blocks() {
        let mut space = SlotSpace::default();
        let a = space.allocate(12).unwrap();
        let b = space.allocate(48).unwrap();
        let c = space.allocate(12).unwrap();
        assert_eq!((a, b, c), (0, 12, 60));
        space.release(b, 48);
        assert_eq!(space.allocate(12), Some(12), "best fit inside the hole");
        assert_eq!(
            space.allocate(96),
            Some(72),
            "too big for the hole: from the end"
        );
        space.release(72, 96);
        assert_eq!(space.end, 72, "released at the end: the end moves back");
        space.release(12, 12);
        space.release(0, 12);
        space.release(60, 12);
        assert_eq!(space, SlotSpace::default(), "everything merged back");

        let restored = [
            Block {
                base: 24,
                capacity: 4,
            },
            Block {
                base: 0,
                capacity: 4,
            },
        ];
        let (mut space, refused) = SlotSpace::with_blocks(restored);
        assert!(refused.is_empty());
        assert_eq!(
            space.allocate(12),
            Some(12),
            "the gap between restored blocks"
        );
        assert_eq!(space.allocate(12), Some(36));
        let overlapping = [
            Block {
                base: 0,
                capacity: 4,
            },
            Block {
                base: 6,
                capacity: 4,
            },
        ];
        let (_, refused) = SlotSpace::with_blocks(overlapping);
        assert_eq!(
            refused,
            vec![Block {
                base: 6,
                capacity: 4
            }]
        );
        assert_eq!(
            SlotSpace::default().allocate(u32::MAX).map(|_| ()),
            Some(())
        );
        let mut full = SlotSpace::default();
        full.allocate(u32::MAX);
        assert_eq!(full.allocate(1), None, "32-bit slot numbers exhausted");
    }

    #[test]
    fn blocks_and_udp_targets_are_read_back_from_rules_and_elements() {
        let eps = endpoints(3);
        let slots = assign(None, &eps, 4);
        let mut elements: BTreeMap<u32, SocketAddr> =
            slots.entries().map(|(i, e)| (100 + i, e)).collect();
        elements.insert(500, "10.9.9.9:53".parse().unwrap());
        let rule = |chain: &str, protocol, offset, modulus| SlotRule {
            chain: chain.into(),
            protocol: Some(protocol),
            offset,
            modulus,
        };
        let mut rules: Vec<SlotRule> = (0..EXACT_DRAWS)
            .map(|_| rule("cl-A", Protocol::Udp, 100, 4))
            .collect();
        rules.push(rule("cl-A", Protocol::Udp, 104, 8));
        // Not of our shape: left out.
        rules.push(rule("odd", Protocol::Tcp, 500, 3));
        let layout = layout_from(&rules, &elements);
        assert_eq!(layout.keys().collect::<Vec<_>>(), ["cl-A"]);
        assert_eq!(layout["cl-A"], Placed { base: 100, slots });
        let udp: Vec<String> = udp_targets(&rules, &elements)
            .iter()
            .map(|(_, ip, port)| format!("{ip}:{port}"))
            .collect();
        assert_eq!(
            udp,
            ["10.244.0.1:8080", "10.244.0.2:8080", "10.244.0.3:8080"]
        );
    }
}

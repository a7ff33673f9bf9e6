//! Maglev consistent hashing (Eisenbud et al., NSDI '16): a lookup table of `M` slots per
//! service, filled from each backend's permutation. The table depends only on the backend set,
//! so every node and every restart computes the same one, and a backend change moves few slots.

/// FNV-1a, seeded: stable across processes and machines (unlike `std`'s `RandomState`).
fn fnv1a(seed: u64, data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche so nearby names spread over the table.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// Builds the table: entry `i` is the index (into `names`) of the backend owning slot `i`.
/// `names` identify backends (e.g. `ip:port`); empty input gives an empty table.
pub fn table(names: &[String], m: u32) -> Vec<u32> {
    let n = names.len();
    if n == 0 || m == 0 {
        return Vec::new();
    }
    let m64 = u64::from(m);
    let params: Vec<(u64, u64)> = names
        .iter()
        .map(|name| {
            let offset = fnv1a(0x5eed_0001, name.as_bytes()) % m64;
            let skip = fnv1a(0x5eed_0002, name.as_bytes()) % (m64 - 1).max(1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; n];
    let mut entry = vec![u32::MAX; m as usize];
    let mut filled = 0usize;
    'outer: loop {
        for (i, (offset, skip)) in params.iter().enumerate() {
            // Walk backend i's permutation to its next free slot.
            let mut c = (offset + next[i] * skip) % m64;
            while entry[c as usize] != u32::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m64;
            }
            entry[c as usize] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == m as usize {
                break 'outer;
            }
        }
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    #[test]
    fn every_slot_filled_and_balanced() {
        let t = table(&names(5), 1021);
        assert_eq!(t.len(), 1021);
        let mut counts = [0usize; 5];
        for e in &t {
            counts[*e as usize] += 1;
        }
        for c in counts {
            assert!((195..=215).contains(&c), "unbalanced: {counts:?}");
        }
    }

    #[test]
    fn deterministic() {
        assert_eq!(table(&names(7), 1021), table(&names(7), 1021));
    }

    #[test]
    fn removing_one_backend_moves_few_slots() {
        let before = names(10);
        let mut after = before.clone();
        after.remove(3);
        let t1 = table(&before, 1021);
        let t2 = table(&after, 1021);
        let moved = t1
            .iter()
            .zip(&t2)
            .filter(|(a, b)| before[**a as usize] != after[**b as usize])
            .count();
        // Slots of the removed backend (~102) must move; Maglev keeps the rest mostly stable.
        assert!(moved < 102 + 60, "too many slots moved: {moved}");
    }

    #[test]
    fn empty() {
        assert!(table(&[], 1021).is_empty());
    }
}

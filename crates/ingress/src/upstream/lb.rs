//! Power-of-two-choices least-requests, with a tiny per-thread PRNG (no lock, no syscall).

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;

use super::UpstreamEndpoint;

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // Mix in a per-thread address so threads started in the same nanosecond differ.
    let local = 0u8;
    let addr = &local as *const u8 as u64;
    (nanos ^ addr.rotate_left(32)) | 1
}

/// xorshift64*: statistically fine for picking endpoints, not for secrets.
pub(crate) fn next_u64() -> u64 {
    RNG.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

fn below(n: usize) -> usize {
    ((next_u64() >> 32) as usize * n) >> 32
}

/// `skip_ejected`: endpoints passive health took out are not usable.
pub(super) fn pick(
    endpoints: &[Arc<UpstreamEndpoint>],
    exclude: Option<SocketAddr>,
    skip_ejected: bool,
) -> Option<&Arc<UpstreamEndpoint>> {
    let usable = |ep: &&Arc<UpstreamEndpoint>| {
        Some(ep.addr) != exclude && !(skip_ejected && ep.is_ejected())
    };
    match endpoints.len() {
        0 => None,
        1 => endpoints.first().filter(usable),
        2 if exclude.is_some() => endpoints.iter().find(usable),
        n => {
            let a = below(n);
            // A second, different index: offset 1..n from the first.
            let b = (a + 1 + below(n - 1)) % n;
            let (ea, eb) = (&endpoints[a], &endpoints[b]);
            match (usable(&ea), usable(&eb)) {
                (true, true) => Some(if eb.in_flight() < ea.in_flight() {
                    eb
                } else {
                    ea
                }),
                (true, false) => Some(ea),
                (false, true) => Some(eb),
                (false, false) => endpoints.iter().find(usable),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: u16) -> Vec<Arc<UpstreamEndpoint>> {
        (0..n)
            .map(|i| {
                Arc::new(
                    UpstreamEndpoint::new(SocketAddr::from(([10, 0, 0, 1], 8000 + i))).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn empty_pool_gives_none() {
        assert!(pick(&[], None, true).is_none());
    }

    #[test]
    fn single_endpoint_excluded_gives_none() {
        let e = eps(1);
        assert!(pick(&e, Some(e[0].addr), true).is_none());
        assert_eq!(pick(&e, None, true).unwrap().addr, e[0].addr);
    }

    #[test]
    fn exclude_is_never_picked() {
        let e = eps(3);
        for _ in 0..1000 {
            assert_ne!(pick(&e, Some(e[1].addr), true).unwrap().addr, e[1].addr);
        }
    }

    #[test]
    fn busy_endpoint_is_avoided() {
        let e = eps(2);
        let _guards: Vec<_> = (0..5).map(|_| e[0].start()).collect();
        for _ in 0..100 {
            assert_eq!(pick(&e, None, true).unwrap().addr, e[1].addr);
        }
    }

    #[test]
    fn idle_endpoints_share_load() {
        let e = eps(4);
        let mut counts = [0usize; 4];
        for _ in 0..4000 {
            let p = pick(&e, None, true).unwrap();
            counts[usize::from(p.addr.port() - 8000)] += 1;
        }
        for c in counts {
            assert!(c > 600, "uneven spread: {counts:?}");
        }
    }

    #[test]
    fn ejected_endpoints_are_skipped_until_they_respond_or_the_time_is_up() {
        let e = eps(3);
        let long = std::time::Duration::from_secs(60);
        assert!(!e[0].connect_failed(2, long));
        assert!(
            e[0].connect_failed(2, long),
            "ejected at the 2nd failure in a row"
        );
        for _ in 0..1000 {
            assert_ne!(pick(&e, None, true).unwrap().addr, e[0].addr);
        }
        // Ignoring ejections (every endpoint ejected), it is a candidate again.
        assert!((0..1000).any(|_| pick(&e, None, false).unwrap().addr == e[0].addr));
        e[0].responded();
        assert!(!e[0].is_ejected());
        assert!(e[1].connect_failed(1, std::time::Duration::ZERO));
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(!e[1].is_ejected(), "the ejection has run out");
        assert!(!e[2].connect_failed(0, long), "threshold 0: never ejected");
    }

    #[test]
    fn guard_counts_in_flight() {
        let e = eps(1);
        let g = e[0].start();
        assert_eq!(e[0].in_flight(), 1);
        drop(g);
        assert_eq!(e[0].in_flight(), 0);
    }
}

//! `limit-rps` and `limit-connections` per client address, without a lock: each limiter is a
//! fixed table of atomic slots indexed by a hash of the address (nginx keeps a shared-memory
//! zone behind a mutex). Two addresses that hash to the same slot share one budget — with
//! [`SLOTS`] slots that is rare, and it can only make a limit stricter, never looser.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

/// Slots per limiter (64 KiB of state for a rate limiter, 16 KiB for a connection limiter).
const SLOTS: usize = 8192;

/// Which slot an address uses; keyed per process so clients cannot aim at a neighbour's slot.
#[derive(Debug)]
struct Slots {
    hasher: RandomState,
}

impl Slots {
    fn index(&self, client: IpAddr) -> usize {
        (self.hasher.hash_one(client.to_canonical()) as usize) % SLOTS
    }
}

/// Requests per second with a burst, as nginx's `limit_req ... burst=N nodelay`: the generic
/// cell rate algorithm, one atomic "theoretical arrival time" per slot.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    slots: Slots,
    start: Instant,
    /// Nanoseconds between two requests at the steady rate.
    interval: u64,
    /// How far ahead of now the arrival time may run (the burst).
    tolerance: u64,
    arrivals: Box<[AtomicU64]>,
}

impl RateLimiter {
    pub(crate) fn new(per_second: u32, burst: u32) -> Self {
        let interval = 1_000_000_000 / u64::from(per_second.max(1));
        Self {
            slots: Slots {
                hasher: RandomState::new(),
            },
            start: Instant::now(),
            interval,
            tolerance: interval.saturating_mul(u64::from(burst)),
            arrivals: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Counts a request from `client`; `false` when it is over the limit.
    pub(crate) fn allow(&self, client: IpAddr) -> bool {
        self.allow_at(client, self.start.elapsed().as_nanos() as u64)
    }

    fn allow_at(&self, client: IpAddr, now: u64) -> bool {
        let slot = &self.arrivals[self.slots.index(client)];
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let arrival = current.max(now);
            if arrival - now > self.tolerance {
                return false;
            }
            match slot.compare_exchange_weak(
                current,
                arrival + self.interval,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }
}

/// Requests in progress at once per client address.
#[derive(Debug)]
pub(crate) struct ConnectionLimiter {
    slots: Slots,
    max: u32,
    counts: Box<[AtomicU32]>,
}

/// One request in progress; the count drops when the response body ends.
#[derive(Debug)]
pub(crate) struct ConnGuard {
    limiter: Arc<ConnectionLimiter>,
    slot: usize,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.limiter.counts[self.slot].fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnectionLimiter {
    pub(crate) fn new(max: u32) -> Self {
        Self {
            slots: Slots {
                hasher: RandomState::new(),
            },
            max,
            counts: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// A place for one more request from `client`, or `None` at the limit.
    pub(crate) fn acquire(self: &Arc<Self>, client: IpAddr) -> Option<ConnGuard> {
        let slot = self.slots.index(client);
        let count = &self.counts[slot];
        let mut current = count.load(Ordering::Relaxed);
        loop {
            if current >= self.max {
                return None;
            }
            match count.compare_exchange_weak(
                current,
                current + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(ConnGuard {
                        limiter: Arc::clone(self),
                        slot,
                    });
                }
                Err(seen) => current = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rate_allows_the_burst_then_the_steady_rate() {
        let r = RateLimiter::new(10, 5);
        let a = ip("192.0.2.1");
        // At one instant: the request itself plus a burst of 5.
        let allowed = (0..20).filter(|_| r.allow_at(a, SECOND)).count();
        assert_eq!(allowed, 6);
        // 100 ms later one more (10/s).
        assert!(r.allow_at(a, SECOND + SECOND / 10));
        assert!(!r.allow_at(a, SECOND + SECOND / 10));
        // Another client has its own budget.
        assert!(r.allow_at(ip("192.0.2.2"), SECOND));
        // After a quiet second the burst is back.
        let allowed = (0..20).filter(|_| r.allow_at(a, 3 * SECOND)).count();
        assert_eq!(allowed, 6);
    }

    #[test]
    fn connections_are_counted_until_the_guard_drops() {
        let l = Arc::new(ConnectionLimiter::new(2));
        let a = ip("2001:db8::1");
        let g1 = l.acquire(a).unwrap();
        let _g2 = l.acquire(a).unwrap();
        assert!(l.acquire(a).is_none());
        assert!(l.acquire(ip("2001:db8::2")).is_some());
        drop(g1);
        assert!(l.acquire(a).is_some());
    }
}

//! The TLS session cache behind resumption. rustls' `ServerSessionMemoryCache` finds the
//! session to forget by scanning its whole insertion queue, and a TLS 1.3 resumption takes
//! its single-use session out: with the tens of thousands of sessions a busy node keeps,
//! every resumption scanned and shifted the queue (9 % of the proxy's CPU for new HTTPS
//! connections in the benchmark). Here taking a session is one hash-map removal: the queue
//! keeps each session's insertion generation, and an entry whose session was taken or
//! stored again since is skipped when it reaches the front.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use rustls::server::StoresServerSessions;

/// At most `capacity` sessions, the oldest stored forgotten first. A session is kept until
/// `capacity` newer ones are kept, or twice that many were stored after it.
#[derive(Debug)]
pub(crate) struct SessionCache {
    capacity: usize,
    inner: Mutex<Sessions>,
}

#[derive(Debug, Default)]
struct Sessions {
    /// Session id → (generation it was stored in, encoded session).
    by_id: HashMap<Vec<u8>, (u64, Vec<u8>)>,
    /// Ids in the order they were stored, with that generation; an entry is stale when its
    /// id was taken or stored again since.
    order: VecDeque<(Vec<u8>, u64)>,
    next_generation: u64,
}

impl SessionCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Sessions::default()),
        }
    }

    fn sessions(&self) -> MutexGuard<'_, Sessions> {
        // Nothing here panics half-way through a change; a poisoned lock still holds
        // consistent sessions.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Sessions {
    /// Forgets the oldest sessions beyond `capacity`, and pops stale queue entries once the
    /// queue is twice the capacity (each entry is popped once: constant time per session
    /// stored). The oldest live session may then go a little before the cache is full.
    fn trim(&mut self, capacity: usize) {
        while self.by_id.len() > capacity || self.order.len() > 2 * capacity {
            let Some((id, generation)) = self.order.pop_front() else {
                break;
            };
            if self.by_id.get(&id).is_some_and(|(g, _)| *g == generation) {
                self.by_id.remove(&id);
            }
        }
    }

    #[cfg(test)]
    fn queued(&self) -> usize {
        self.order.len()
    }
}

impl StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let mut sessions = self.sessions();
        let generation = sessions.next_generation;
        sessions.next_generation += 1;
        sessions.order.push_back((key.clone(), generation));
        sessions.by_id.insert(key, (generation, value));
        sessions.trim(self.capacity);
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.sessions().by_id.get(key).map(|(_, v)| v.clone())
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.sessions().by_id.remove(key).map(|(_, v)| v)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(cache: &SessionCache, id: &str, value: &str) {
        assert!(cache.put(id.into(), value.into()));
    }

    fn get(cache: &SessionCache, id: &str) -> Option<String> {
        cache
            .get(id.as_bytes())
            .map(|v| String::from_utf8(v).expect("utf-8"))
    }

    #[test]
    fn a_session_is_kept_until_taken_and_taken_once() {
        let cache = SessionCache::new(4);
        put(&cache, "a", "session a");
        assert_eq!(get(&cache, "a").as_deref(), Some("session a"));
        assert_eq!(cache.take(b"a"), Some(b"session a".to_vec()));
        assert_eq!(cache.take(b"a"), None);
        assert_eq!(get(&cache, "a"), None);
        assert_eq!(cache.take(b"never stored"), None);
    }

    #[test]
    fn the_oldest_session_goes_first_when_full() {
        let cache = SessionCache::new(3);
        for id in ["a", "b", "c", "d"] {
            put(&cache, id, id);
        }
        assert_eq!(get(&cache, "a"), None);
        for id in ["b", "c", "d"] {
            assert_eq!(get(&cache, id).as_deref(), Some(id));
        }
    }

    #[test]
    fn a_session_stored_again_counts_from_its_new_place() {
        let cache = SessionCache::new(2);
        put(&cache, "a", "old a");
        put(&cache, "b", "b");
        put(&cache, "a", "new a");
        // Full with {b, a}: the next one pushes out b, the oldest now, not a.
        put(&cache, "c", "c");
        assert_eq!(get(&cache, "b"), None);
        assert_eq!(get(&cache, "a").as_deref(), Some("new a"));
        assert_eq!(get(&cache, "c").as_deref(), Some("c"));
    }

    #[test]
    fn taken_sessions_do_not_pile_up_in_the_queue() {
        let cache = SessionCache::new(10);
        put(&cache, "kept", "kept");
        let resumed = |i: usize| {
            let id = format!("s{i}");
            put(&cache, &id, "x");
            assert!(cache.take(id.as_bytes()).is_some());
        };
        // A session outlives twice the capacity of later ones stored and taken ...
        (0..19).for_each(resumed);
        assert_eq!(get(&cache, "kept").as_deref(), Some("kept"));
        // ... while the queue never holds more than that.
        for i in 19..1000 {
            resumed(i);
            assert!(cache.sessions().queued() <= 20, "queue after {i}");
        }
        assert_eq!(get(&cache, "kept"), None);
    }

    #[test]
    fn capacity_zero_keeps_one_session() {
        let cache = SessionCache::new(0);
        put(&cache, "a", "a");
        put(&cache, "b", "b");
        assert_eq!(get(&cache, "a"), None);
        assert_eq!(get(&cache, "b").as_deref(), Some("b"));
    }
}

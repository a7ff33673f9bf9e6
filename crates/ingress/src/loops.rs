//! Request-loop protection. An Ingress whose endpoints lead back to the proxy's own
//! listeners would make every request open another connection to itself until the process
//! runs out of descriptors. Two independent guards:
//!
//! * **own addresses**: an endpoint that is one of our listeners (its bound address, or any
//!   local address on its port when it is bound to `0.0.0.0` / `::`) is never dialled;
//! * **hop header**: every request sent upstream carries `x-sluice-hop` with this proxy's
//!   random id (earlier hops' ids are kept), so a request that comes back by a path the
//!   address check cannot see (a relay, a NodePort, another node's proxy) is refused.

use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};

use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};

pub(crate) static X_SLUICE_HOP: HeaderName = HeaderName::from_static("x-sluice-hop");

/// This proxy's id in the hop header: 16 lowercase hex digits, random per proxy.
#[derive(Debug, Clone)]
pub(crate) struct HopId {
    value: HeaderValue,
}

impl HopId {
    pub(crate) fn random() -> Self {
        // std's RandomState is seeded from the OS; mixing in the time and pid keeps ids of
        // proxies in different processes apart even if that seeding were weak.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let id = RandomState::new().hash_one((nanos, std::process::id()));
        Self::from_u64(id)
    }

    fn from_u64(id: u64) -> Self {
        let text = format!("{id:016x}");
        Self {
            value: HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("0")),
        }
    }

    /// Whether the request already passed through this proxy.
    pub(crate) fn seen_in(&self, headers: &HeaderMap) -> bool {
        let ours = self.value.as_bytes();
        headers.get_all(&X_SLUICE_HOP).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|id| id.trim_ascii() == ours)
        })
    }

    /// Adds our id to the request sent upstream, after the ids of earlier hops (a separate
    /// header line: no allocation).
    pub(crate) fn append_to(&self, headers: &mut HeaderMap) {
        headers.append(&X_SLUICE_HOP, self.value.clone());
    }
}

/// The addresses that reach this proxy's own listeners.
#[derive(Debug, Clone, Default)]
pub(crate) struct OwnAddresses {
    /// Addresses the listeners are bound to (as bound: the real port, never 0).
    listeners: Vec<SocketAddr>,
    /// This host's addresses (set by the agent); with a wildcard bind, each of them on the
    /// listener's port reaches the listener.
    local_ips: Vec<IpAddr>,
}

impl OwnAddresses {
    pub(crate) fn with_listeners(&self, listeners: Vec<SocketAddr>) -> Self {
        Self {
            listeners,
            local_ips: self.local_ips.clone(),
        }
    }

    pub(crate) fn with_local_ips(&self, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut local_ips: Vec<IpAddr> = ips.into_iter().map(|ip| ip.to_canonical()).collect();
        local_ips.sort();
        local_ips.dedup();
        Self {
            listeners: self.listeners.clone(),
            local_ips,
        }
    }

    /// Whether connecting to `addr` would reach one of our listeners. Loopback and the
    /// unspecified address always count as local (connecting to `0.0.0.0` reaches this host).
    pub(crate) fn contains(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        self.listeners
            .iter()
            .filter(|l| l.port() == addr.port())
            .any(|l| {
                let bound = l.ip().to_canonical();
                bound == ip
                    || ip.is_unspecified()
                    || (bound.is_unspecified()
                        && (ip.is_loopback() || self.local_ips.contains(&ip)))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn specific_bind_matches_only_its_address() {
        let own = OwnAddresses::default().with_listeners(vec![addr("10.0.0.5:80")]);
        assert!(own.contains(addr("10.0.0.5:80")));
        assert!(own.contains(addr("0.0.0.0:80")));
        assert!(!own.contains(addr("10.0.0.6:80")));
        assert!(!own.contains(addr("127.0.0.1:80")));
        assert!(!own.contains(addr("10.0.0.5:8080")));
    }

    #[test]
    fn wildcard_bind_matches_loopback_and_local_addresses_set_later() {
        let own =
            OwnAddresses::default().with_listeners(vec![addr("[::]:443"), addr("0.0.0.0:80")]);
        assert!(own.contains(addr("127.0.0.1:80")));
        assert!(own.contains(addr("127.0.0.7:443")));
        assert!(own.contains(addr("[::1]:443")));
        assert!(!own.contains(addr("192.0.2.10:80")));
        let own = own.with_local_ips(["192.0.2.10".parse().unwrap()]);
        assert!(own.contains(addr("192.0.2.10:80")));
        assert!(own.contains(addr("[::ffff:192.0.2.10]:443")));
        assert!(!own.contains(addr("192.0.2.10:8080")));
        assert!(!own.contains(addr("192.0.2.11:80")));
        // Listeners recorded later keep the local addresses.
        let own = own.with_listeners(vec![addr("0.0.0.0:8080")]);
        assert!(own.contains(addr("192.0.2.10:8080")));
        assert!(!own.contains(addr("192.0.2.10:80")));
    }

    #[test]
    fn hop_header_finds_our_id_among_others() {
        let ours = HopId::from_u64(0xabc);
        let other = HopId::from_u64(0xdef);
        let mut h = HeaderMap::new();
        assert!(!ours.seen_in(&h));
        other.append_to(&mut h);
        assert!(!ours.seen_in(&h));
        ours.append_to(&mut h);
        assert!(ours.seen_in(&h));
        assert_eq!(h.get_all(&X_SLUICE_HOP).iter().count(), 2);
        let mut joined = HeaderMap::new();
        joined.insert(
            &X_SLUICE_HOP,
            HeaderValue::from_static("00000000000000ff, 0000000000000abc"),
        );
        assert!(ours.seen_in(&joined));
        assert!(!HopId::from_u64(0xab).seen_in(&joined));
    }

    #[test]
    fn ids_differ_between_proxies() {
        assert_ne!(HopId::random().value, HopId::random().value);
    }
}

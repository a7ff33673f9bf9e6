//! Upstream endpoint pools and the load-balancing choice (power of two choices, least
//! requests). Endpoint state (the in-flight counter) is shared across route-table reloads so
//! a reload does not reset the balance.

mod connector;
mod lb;
mod limits;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyper::http::uri::Authority;

pub(crate) use connector::{CONNECT_TIMEOUT, Counted, CountingConnector};
pub(crate) use limits::{ConnectionLimits, ConnectionPermit, LimitReached};

/// One endpoint address (`ip:port`) with its live request count.
#[derive(Debug)]
pub(crate) struct UpstreamEndpoint {
    pub(crate) addr: SocketAddr,
    /// `ip:port` ready to put in an upstream URI.
    pub(crate) authority: Authority,
    in_flight: AtomicUsize,
    /// Upstream connections open to this endpoint (see [`ConnectionLimits`]).
    connections: AtomicUsize,
    /// Names the endpoint in `affinity: cookie` cookies: the same on every node.
    pub(crate) affinity_id: u64,
}

impl UpstreamEndpoint {
    pub(crate) fn new(addr: SocketAddr) -> Option<Self> {
        let text = addr.to_string();
        let authority = Authority::try_from(text.as_str()).ok()?;
        Some(Self {
            addr,
            authority,
            in_flight: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            affinity_id: fnv1a(text.as_bytes()),
        })
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request until the returned guard is dropped (after the response body ends).
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }
}

/// An outstanding request on an endpoint.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<UpstreamEndpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The ready endpoints of one service port.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    pub(crate) endpoints: Vec<Arc<UpstreamEndpoint>>,
}

impl Pool {
    /// Picks an endpoint (power of two choices by fewest in-flight requests), never `exclude`.
    pub(crate) fn pick(&self, exclude: Option<SocketAddr>) -> Option<Arc<UpstreamEndpoint>> {
        lb::pick(&self.endpoints, exclude).cloned()
    }
}

/// A fast per-thread pseudo-random number (request ids, endpoint choice); not for secrets.
pub(crate) fn random_u64() -> u64 {
    lb::next_u64()
}

/// FNV-1a, 64 bits: a stable, unkeyed hash (the affinity id must not change between nodes).
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

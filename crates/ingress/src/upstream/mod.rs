//! Upstream endpoint pools and the load-balancing choice (power of two choices, least
//! requests). Endpoint state (the in-flight counter) is shared across route-table reloads so
//! a reload does not reset the balance.

mod connector;
mod http1;
mod lb;
mod limits;
mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use hyper::http::uri::Authority;

pub(crate) use connector::{CONNECT_TIMEOUT, Counted, CountingConnector};
pub(crate) use http1::{Http1Error, Http1Pool, PoolSettings, Reuse};
pub(crate) use limits::{ConnectionLimits, ConnectionPermit, LimitReached};
pub(crate) use tls::{TlsClient, TlsConnecting, TlsHandshakeError, TlsUpstream, client_config};

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
    /// Connect failures since the last success (passive health).
    failures: AtomicU32,
    /// Out of balancing until this [`clock_ms`] value (0: not ejected).
    ejected_until: AtomicU64,
}

/// Milliseconds since the first call, never 0 (0 means "not ejected").
fn clock_ms() -> u64 {
    static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);
    BASE.elapsed().as_millis() as u64 + 1
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
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
        })
    }

    /// Whether passive health has taken the endpoint out of balancing for now. Reads the
    /// clock only for an endpoint that was ejected.
    pub(crate) fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && clock_ms() < until
    }

    /// Records a failed connect; after `threshold` in a row (0: never) the endpoint is
    /// ejected for `duration`. Returns whether this failure ejected it.
    pub(crate) fn connect_failed(&self, threshold: u32, duration: Duration) -> bool {
        if threshold == 0 {
            return false;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < threshold {
            return false;
        }
        self.failures.store(0, Ordering::Relaxed);
        let until = clock_ms() + duration.as_millis() as u64;
        self.ejected_until.store(until, Ordering::Relaxed);
        true
    }

    /// A response came back: the failure count starts over (and an ejection ends).
    pub(crate) fn responded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.ejected_until.load(Ordering::Relaxed) != 0 {
            self.ejected_until.store(0, Ordering::Relaxed);
        }
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
    /// Picks an endpoint (power of two choices by fewest in-flight requests), never
    /// `exclude`, and no ejected one unless every other is ejected too (then trying one beats
    /// refusing the request).
    pub(crate) fn pick(&self, exclude: Option<SocketAddr>) -> Option<Arc<UpstreamEndpoint>> {
        lb::pick(&self.endpoints, exclude, true)
            .or_else(|| lb::pick(&self.endpoints, exclude, false))
            .cloned()
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

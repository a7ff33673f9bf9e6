//! Caps on upstream connections, per endpoint and in total, so that no request pattern (a
//! slow service, a request loop) can use up the process's file descriptors. Lock-free: a
//! permit is two bounded atomic increments, released when the connection closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::UpstreamEndpoint;

/// The proxy-wide count of open upstream connections and the caps.
#[derive(Debug)]
pub(crate) struct ConnectionLimits {
    open: AtomicUsize,
    max_total: usize,
    max_per_endpoint: usize,
}

/// No connection was opened: a cap is reached.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum LimitReached {
    #[error("{limit} upstream connections are open to endpoint {endpoint} (its connection limit)")]
    Endpoint { endpoint: SocketAddr, limit: usize },
    #[error("{limit} upstream connections are open (the proxy's connection limit)")]
    Total { limit: usize },
}

/// One open upstream connection; dropping it releases its place.
#[derive(Debug)]
pub(crate) struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    endpoint: Option<Arc<UpstreamEndpoint>>,
}

impl ConnectionLimits {
    pub(crate) fn new(max_total: usize, max_per_endpoint: usize) -> Self {
        Self {
            open: AtomicUsize::new(0),
            max_total,
            max_per_endpoint,
        }
    }

    /// Upstream connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A place for one more connection to `endpoint` (`None`: an endpoint no longer in the
    /// route table, which only the total cap applies to).
    pub(crate) fn acquire(
        self: &Arc<Self>,
        endpoint: Option<&Arc<UpstreamEndpoint>>,
    ) -> Result<ConnectionPermit, LimitReached> {
        if let Some(ep) = endpoint
            && !increment_below(&ep.connections, self.max_per_endpoint)
        {
            return Err(LimitReached::Endpoint {
                endpoint: ep.addr,
                limit: self.max_per_endpoint,
            });
        }
        if !increment_below(&self.open, self.max_total) {
            if let Some(ep) = endpoint {
                ep.connections.fetch_sub(1, Ordering::AcqRel);
            }
            return Err(LimitReached::Total {
                limit: self.max_total,
            });
        }
        Ok(ConnectionPermit {
            limits: Arc::clone(self),
            endpoint: endpoint.cloned(),
        })
    }
}

fn increment_below(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(ep) = &self.endpoint {
            ep.connections.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(port: u16) -> Arc<UpstreamEndpoint> {
        Arc::new(UpstreamEndpoint::new(SocketAddr::from(([10, 0, 0, 1], port))).unwrap())
    }

    #[test]
    fn per_endpoint_cap_then_total_cap_and_release_on_drop() {
        let limits = Arc::new(ConnectionLimits::new(3, 2));
        let (a, b) = (endpoint(1), endpoint(2));
        let a1 = limits.acquire(Some(&a)).unwrap();
        let _a2 = limits.acquire(Some(&a)).unwrap();
        assert!(matches!(
            limits.acquire(Some(&a)),
            Err(LimitReached::Endpoint { limit: 2, .. })
        ));
        let _b1 = limits.acquire(Some(&b)).unwrap();
        let refused = limits.acquire(Some(&b)).unwrap_err();
        assert!(matches!(refused, LimitReached::Total { limit: 3 }));
        // A refusal by the total cap gives the endpoint's place back.
        assert_eq!(b.connections.load(Ordering::Relaxed), 1);
        assert_eq!(limits.open(), 3);
        drop(a1);
        assert_eq!(limits.open(), 2);
        assert_eq!(a.connections.load(Ordering::Relaxed), 1);
        let _again = limits.acquire(None).unwrap();
        assert_eq!(limits.open(), 3);
    }
}

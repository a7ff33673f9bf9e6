//! Counters for the agent's metrics endpoint: relaxed atomics, no lock on the request path.

use std::sync::atomic::{AtomicU64, Ordering};

/// What the proxy has done since it was created.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IngressStats {
    pub connections_total: u64,
    pub connections_active: u64,
    pub requests_total: u64,
    /// Responses by status class: index 0 = 1xx ... 4 = 5xx.
    pub responses_by_class: [u64; 5],
    /// Requests answered by the built-in 404 (no rule, no default backend).
    pub not_found: u64,
    /// Failed connection attempts to endpoints.
    pub upstream_connect_failures: u64,
    /// Requests that got no response headers in time (504).
    pub upstream_timeouts: u64,
    /// Requests sent again to another endpoint after a connect failure.
    pub retries: u64,
    /// Requests refused with 508 because they would loop back into this proxy (an endpoint
    /// that is one of its own listeners, or a request that already passed through it).
    pub loops_detected: u64,
    /// Upstream connections open now (in use, pooled idle, upgraded tunnels).
    pub upstream_connections_active: u64,
    /// Requests answered 503 because an upstream connection cap was reached or the process
    /// had no file descriptor left for a new upstream connection.
    pub upstream_connection_limit_hits: u64,
    /// Request bodies that were malformed or aborted by the client (400).
    pub client_body_errors: u64,
    /// Request bodies that stalled longer than `client_body_timeout` (408).
    pub client_body_timeouts: u64,
    /// Failed `accept` calls on the listeners (typically EMFILE: out of descriptors).
    pub accept_errors: u64,
    /// Times the listeners stopped accepting because `max_client_connections` were open.
    pub accept_pauses: u64,
    /// Endpoints taken out of balancing after consecutive connect failures (passive health).
    pub endpoint_ejections: u64,
    /// Connections closed for a missing or invalid PROXY protocol header, or from an address
    /// that is not a trusted proxy.
    pub proxy_protocol_errors: u64,
    /// Access log lines dropped because the writer could not keep up.
    pub access_log_dropped: u64,
    /// Route tables built and swapped in by [`IngressProxy::update`](crate::IngressProxy::update).
    pub route_table_swaps: u64,
}

#[derive(Debug)]
pub(crate) struct Counters {
    /// The counters every request and connection touches, one block per worker (index =
    /// worker): a counter shared by all workers would bounce its cache line between cores on
    /// every request.
    per_worker: Box<[PerWorker]>,
    pub(crate) not_found: AtomicU64,
    pub(crate) upstream_connect_failures: AtomicU64,
    pub(crate) upstream_timeouts: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) loops_detected: AtomicU64,
    pub(crate) upstream_connection_limit_hits: AtomicU64,
    pub(crate) client_body_errors: AtomicU64,
    pub(crate) client_body_timeouts: AtomicU64,
    pub(crate) accept_errors: AtomicU64,
    pub(crate) accept_pauses: AtomicU64,
    pub(crate) endpoint_ejections: AtomicU64,
    pub(crate) proxy_protocol_errors: AtomicU64,
    pub(crate) route_table_swaps: AtomicU64,
}

/// One worker's share of the per-request counters, on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct PerWorker {
    connections_total: AtomicU64,
    connections_active: AtomicU64,
    requests_total: AtomicU64,
    responses_by_class: [AtomicU64; 5],
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn new(workers: usize) -> Self {
        let zero = AtomicU64::default;
        Self {
            per_worker: (0..workers.max(1)).map(|_| PerWorker::default()).collect(),
            not_found: zero(),
            upstream_connect_failures: zero(),
            upstream_timeouts: zero(),
            retries: zero(),
            loops_detected: zero(),
            upstream_connection_limit_hits: zero(),
            client_body_errors: zero(),
            client_body_timeouts: zero(),
            accept_errors: zero(),
            accept_pauses: zero(),
            endpoint_ejections: zero(),
            proxy_protocol_errors: zero(),
            route_table_swaps: zero(),
        }
    }

    /// The block of the worker running on this thread (worker 0's elsewhere).
    fn mine(&self) -> (usize, &PerWorker) {
        let index = crate::workers::current() % self.per_worker.len();
        (index, &self.per_worker[index])
    }

    pub(crate) fn request(&self) {
        inc(&self.mine().1.requests_total);
    }

    /// Connections accepted by each worker.
    pub(crate) fn worker_connections(&self) -> Vec<u64> {
        self.per_worker
            .iter()
            .map(|w| w.connections_total.load(Ordering::Relaxed))
            .collect()
    }

    fn sum(&self, counter: impl Fn(&PerWorker) -> &AtomicU64) -> u64 {
        self.per_worker
            .iter()
            .map(|w| counter(w).load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    pub(crate) fn response(&self, status: u16) {
        if let Some(c) = self
            .mine()
            .1
            .responses_by_class
            .get(usize::from(status / 100).wrapping_sub(1))
        {
            inc(c);
        }
    }

    /// The counters, with the number of upstream connections open now.
    pub(crate) fn snapshot(
        &self,
        upstream_connections_active: u64,
        access_log_dropped: u64,
    ) -> IngressStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        IngressStats {
            connections_total: self.sum(|w| &w.connections_total),
            connections_active: self.sum(|w| &w.connections_active),
            requests_total: self.sum(|w| &w.requests_total),
            responses_by_class: std::array::from_fn(|i| self.sum(|w| &w.responses_by_class[i])),
            not_found: get(&self.not_found),
            upstream_connect_failures: get(&self.upstream_connect_failures),
            upstream_timeouts: get(&self.upstream_timeouts),
            retries: get(&self.retries),
            loops_detected: get(&self.loops_detected),
            upstream_connections_active,
            upstream_connection_limit_hits: get(&self.upstream_connection_limit_hits),
            client_body_errors: get(&self.client_body_errors),
            client_body_timeouts: get(&self.client_body_timeouts),
            accept_errors: get(&self.accept_errors),
            accept_pauses: get(&self.accept_pauses),
            endpoint_ejections: get(&self.endpoint_ejections),
            proxy_protocol_errors: get(&self.proxy_protocol_errors),
            access_log_dropped,
            route_table_swaps: get(&self.route_table_swaps),
        }
    }
}

/// Counts an open connection (on the worker serving it) until dropped.
pub(crate) struct ActiveConnection<'a>(&'a PerWorker);

impl<'a> ActiveConnection<'a> {
    pub(crate) fn new(c: &'a Counters) -> Self {
        let (_, mine) = c.mine();
        inc(&mine.connections_total);
        inc(&mine.connections_active);
        Self(mine)
    }
}

impl Drop for ActiveConnection<'_> {
    fn drop(&mut self) {
        self.0.connections_active.fetch_sub(1, Ordering::Relaxed);
    }
}

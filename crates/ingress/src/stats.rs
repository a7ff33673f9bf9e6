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

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connections_total: AtomicU64,
    pub(crate) connections_active: AtomicU64,
    pub(crate) requests_total: AtomicU64,
    pub(crate) responses_by_class: [AtomicU64; 5],
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

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn response(&self, status: u16) {
        if let Some(c) = self
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
            connections_total: get(&self.connections_total),
            connections_active: get(&self.connections_active),
            requests_total: get(&self.requests_total),
            responses_by_class: std::array::from_fn(|i| get(&self.responses_by_class[i])),
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

/// Counts an open connection until dropped.
pub(crate) struct ActiveConnection<'a>(&'a Counters);

impl<'a> ActiveConnection<'a> {
    pub(crate) fn new(c: &'a Counters) -> Self {
        inc(&c.connections_total);
        inc(&c.connections_active);
        Self(c)
    }
}

impl Drop for ActiveConnection<'_> {
    fn drop(&mut self) {
        self.0.connections_active.fetch_sub(1, Ordering::Relaxed);
    }
}

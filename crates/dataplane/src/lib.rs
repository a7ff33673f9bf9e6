//! The contract between the agent and an L4 dataplane backend (eBPF, nftables, fake).
//!
//! A backend translates the decided [`Plan`] into kernel state and decides nothing itself: it
//! sees no Kubernetes object, traffic policy or endpoint condition (it depends on
//! `sluice-plan`, not on `k8s-openapi`).
//!
//! The agent calls [`Dataplane::restore`] once at start, [`Dataplane::resync`] for the first
//! programming (and to repair after a failure or on the slow resync timer), then
//! [`Dataplane::apply`] with each [`PlanDelta`] — whose cost must be proportional to the delta,
//! not to the cluster. [`Dataplane::cleanup`] serves `sluice agent --cleanup`. Backends are
//! synchronous: the agent runs them on a blocking thread, one call at a time.

#![forbid(unsafe_code)]

mod fake;

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

pub use fake::{FakeCall, FakeDataplane};
use sluice_plan::{Plan, PlanDelta, Protocol, ServicePortName};

/// What an earlier run left programmed, as far as the agent must know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// Backends that connectionless service traffic was translated to (protocol, ip, port):
    /// flows toward those no longer planned went stale while the agent was down.
    pub backends: BTreeSet<(Protocol, IpAddr, u16)>,
}

/// A service port that could not be programmed. Everything else of the same apply was; the
/// failed one keeps its previous programming where the backend can (else it is absent), and
/// the agent retries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFailure {
    pub service: ServicePortName,
    pub reason: String,
}

impl fmt::Display for ServiceFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.service, self.reason)
    }
}

/// How much one `apply` or `resync` did, for logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Service ports whose programming was added, changed or removed.
    pub services_changed: usize,
    /// Backend-specific size of the update (nftables: transaction commands; eBPF: map writes).
    pub operations: usize,
    /// Whether this was a resync (compare and rewrite everything) rather than a delta.
    pub full_sync: bool,
    /// Service ports left out (see [`ServiceFailure`]).
    pub failed: Vec<ServiceFailure>,
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("{backend} is not usable on this machine: {reason}")]
    Unavailable {
        backend: &'static str,
        reason: String,
    },
    #[error("{backend}: {action} failed")]
    Io {
        backend: &'static str,
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{backend}: {action} failed: {detail}")]
    Kernel {
        backend: &'static str,
        action: String,
        detail: String,
    },
    #[error("{backend}: refusing an invalid plan")]
    InvalidPlan {
        backend: &'static str,
        #[source]
        source: sluice_plan::PlanError,
    },
}

/// The error with all its causes, `: `-separated (what logs and `Error:` lines must show).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !inner_text.is_empty() && !text.ends_with(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        cause = inner.source();
    }
    text
}

/// An L4 dataplane backend.
pub trait Dataplane: Send {
    /// Short name for logs: `ebpf`, `nftables`, `fake`.
    fn name(&self) -> &'static str;

    /// Reads back what an earlier run programmed (pinned maps, an existing nftables table) so
    /// the first `resync` reconciles instead of flushing. Must not interrupt forwarding.
    fn restore(&mut self) -> Result<Restored, DataplaneError>;

    /// Makes the kernel hold exactly `plan`, without a flush: what matches stays untouched.
    /// Used for the first programming, after a failed apply, and on the slow resync timer
    /// (where backends should make it a cheap check when nothing drifted).
    fn resync(&mut self, plan: &Plan) -> Result<ApplyReport, DataplaneError>;

    /// Programs one delta on top of what the previous `resync`/`apply` programmed. Touches only
    /// what the delta names. Removes the delta's stale flows after programming.
    fn apply(&mut self, delta: &PlanDelta) -> Result<ApplyReport, DataplaneError>;

    /// Removes everything this backend ever created on the node.
    fn cleanup(&mut self) -> Result<(), DataplaneError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn error_chain_prints_every_cause_once() {
        let err = Outer(std::io::Error::other("inner cause"));
        assert_eq!(error_chain(&err), "outer: inner cause");
        let wrapped = DataplaneError::Io {
            backend: "ebpf",
            action: "open cgroup /x".into(),
            source: std::io::Error::other("not a cgroup2 directory"),
        };
        assert_eq!(
            error_chain(&wrapped),
            "ebpf: open cgroup /x failed: not a cgroup2 directory"
        );
    }
}

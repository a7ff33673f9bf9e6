//! The contract between the agent and an L4 dataplane backend (eBPF, nftables, fake).
//!
//! The agent calls [`Dataplane::restore`] once at start, then [`Dataplane::apply`] with every
//! new [`DesiredState`], and [`Dataplane::cleanup`] for `sluice agent --cleanup`. Backends are
//! synchronous: the agent runs them on a blocking thread, one call at a time.

mod fake;

pub use fake::{FakeCall, FakeDataplane};

use sluice_model::DesiredState;

/// How much one `apply` changed, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Service ports whose programming was added, changed or removed.
    pub services_changed: usize,
    /// Backend-specific size of the update (nftables: transaction lines; eBPF: map writes).
    pub operations: usize,
    /// Whether this apply rewrote everything (start or periodic resync) rather than a diff.
    pub full_sync: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("{backend} is not usable on this machine: {reason}")]
    Unavailable {
        backend: &'static str,
        reason: String,
    },
    #[error("{backend}: {action} failed: {source}")]
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
}

/// An L4 dataplane backend.
pub trait Dataplane: Send {
    /// Short name for logs: `ebpf`, `nftables`, `fake`.
    fn name(&self) -> &'static str;

    /// Reads back what an earlier run programmed (pinned maps, an existing nftables table) so
    /// the first `apply` reconciles instead of flushing. Must not interrupt forwarding.
    fn restore(&mut self) -> Result<(), DataplaneError>;

    /// Brings the kernel to `desired`, changing only what differs from the last apply
    /// (or from what `restore` found). `full_resync` asks for a complete rewrite check
    /// (periodic resync), still without a flush.
    fn apply(
        &mut self,
        desired: &DesiredState,
        full_resync: bool,
    ) -> Result<ApplyStats, DataplaneError>;

    /// Removes everything this backend ever created on the node.
    fn cleanup(&mut self) -> Result<(), DataplaneError>;
}

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

/// Service ports added, changed or removed between two desired states (all of them when there
/// is no previous state), for [`ApplyStats::services_changed`].
pub fn count_changed_services(previous: Option<&DesiredState>, desired: &DesiredState) -> usize {
    let Some(previous) = previous else {
        return desired.services.len();
    };
    let changed_or_added = desired
        .services
        .iter()
        .filter(|(name, state)| previous.services.get(*name) != Some(*state))
        .count();
    let removed = previous
        .services
        .keys()
        .filter(|name| !desired.services.contains_key(*name))
        .count();
    changed_or_added + removed
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

#[cfg(test)]
mod tests {
    use sluice_model::{Protocol, ServicePortName, ServicePortState};

    use super::*;

    fn state(ports: &[(&str, u16)]) -> DesiredState {
        let mut d = DesiredState::default();
        for (name, port) in ports {
            let key = ServicePortName {
                namespace: "ns".into(),
                name: (*name).into(),
                port_name: String::new(),
                protocol: Protocol::Tcp,
            };
            d.services.insert(
                key,
                ServicePortState {
                    port: *port,
                    ..ServicePortState::default()
                },
            );
        }
        d
    }

    #[test]
    fn counts_added_changed_and_removed_service_ports() {
        let before = state(&[("a", 80), ("b", 80), ("c", 80)]);
        let after = state(&[("a", 80), ("b", 81), ("d", 80)]);
        assert_eq!(count_changed_services(None, &after), 3);
        assert_eq!(count_changed_services(Some(&before), &before), 0);
        // b changed, d added, c removed.
        assert_eq!(count_changed_services(Some(&before), &after), 3);
    }

    #[test]
    fn the_fake_records_calls_in_order() {
        let mut fake = FakeDataplane::new();
        let probe = fake.clone();
        fake.restore().unwrap();
        let stats = fake.apply(&state(&[("a", 80)]), true).unwrap();
        assert_eq!(
            stats,
            ApplyStats {
                services_changed: 1,
                operations: 1,
                full_sync: true
            }
        );
        assert_eq!(
            fake.apply(&state(&[("a", 80)]), false)
                .unwrap()
                .services_changed,
            0
        );
        fake.cleanup().unwrap();
        let calls = probe.calls();
        assert_eq!(calls.len(), 4);
        assert_eq!(calls[0], FakeCall::Restore);
        assert_eq!(calls[3], FakeCall::Cleanup);
        assert_eq!(probe.last_applied(), Some(state(&[("a", 80)])));
    }
}

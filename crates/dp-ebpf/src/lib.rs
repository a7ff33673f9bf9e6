//! eBPF dataplane for sluice: socket-level load balancing on a cgroup v2 (ClusterIP, and
//! NodePort / externalIP / LB IP reached from the node itself) and tc (tcx) programs on the
//! node's external interfaces (NodePort / externalIP / LB IP from outside, with conntrack,
//! reverse NAT, Maglev and source ranges).
//!
//! The C programs live in `ebpf/` and are compiled by `build.rs`. Every map is pinned under
//! [`EbpfConfig::bpffs_path`] and every attachment is a pinned BPF link under
//! `<bpffs_path>/links`, so forwarding goes on while the agent is down; a restarted agent
//! re-opens the maps, reads them back and rewrites only what differs.
//!
//! Masquerading for `externalTrafficPolicy: Cluster` is delegated to netfilter: the tc program
//! sets [`abi::MASQ_MARK`] on the packet and a one-rule nftables table `inet sluice_ebpf`
//! (installed by this backend) masquerades marked packets in postrouting. Netfilter's own
//! conntrack then un-NATs replies before the tc egress program restores the frontend address.
//! This avoids a port allocator in BPF at the cost of relying on nf_conntrack for that path.

pub mod abi;
mod kernel;
mod links;
pub mod maglev;
mod maps;
pub mod state;

use std::fmt::Display;
use std::path::PathBuf;

use sluice_dataplane::{ApplyStats, Dataplane, DataplaneError};
use sluice_model::DesiredState;

pub use kernel::{TestRun, find_cgroup2_root};

pub(crate) const BACKEND: &str = "ebpf";

/// The sock-LB object (cgroup programs).
pub(crate) static SOCK_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice_sock.o"));
/// The tc object (classifier programs).
pub(crate) static TC_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice_tc.o"));
/// The XDP object.
pub(crate) static XDP_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice_xdp.o"));

pub(crate) fn kerr(action: impl Into<String>, err: impl Display) -> DataplaneError {
    DataplaneError::Kernel {
        backend: BACKEND,
        action: action.into(),
        detail: err.to_string(),
    }
}

/// XDP acceleration of the external path (`--xdp`). The XDP program makes the same decision
/// as tc ingress and shares its conntrack; tc stays attached for replies and masquerading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpMode {
    Native,
    Generic,
    #[default]
    Off,
}

#[derive(Debug, Clone)]
pub struct EbpfConfig {
    /// Directory on a bpffs for pinned maps and links (default `/sys/fs/bpf/sluice`).
    pub bpffs_path: PathBuf,
    /// cgroup v2 directory where socket-LB is attached (default: the cgroup2 root).
    pub cgroup_path: PathBuf,
    /// External interfaces for tc; empty = those carrying `node_port_addresses`, re-checked
    /// on every apply and on every rtnetlink link/address event, so links that appear later
    /// are picked up.
    pub interfaces: Vec<String>,
    pub xdp: XdpMode,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        EbpfConfig {
            bpffs_path: PathBuf::from("/sys/fs/bpf/sluice"),
            cgroup_path: find_cgroup2_root().unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup")),
            interfaces: Vec::new(),
            xdp: XdpMode::Off,
        }
    }
}

/// `Ok(())` when this kernel can run the eBPF dataplane, `Err(reason)` otherwise
/// (for `--proxy-mode auto`). Loads the programs through the verifier without attaching.
pub fn check_support(config: &EbpfConfig) -> Result<(), String> {
    kernel::check_support(config)
}

/// The eBPF backend. See the crate docs.
pub struct EbpfDataplane {
    config: EbpfConfig,
    kernel: kernel::Kernel,
    /// What the agent-owned maps hold (read back by `restore`, then kept in step).
    current: Option<state::MapContent>,
    groups: state::Groups,
    /// The last state applied, for change accounting.
    last: Option<DesiredState>,
}

impl EbpfDataplane {
    /// Loads the programs (re-using pinned maps) and attaches socket-LB to the cgroup.
    pub fn new(config: EbpfConfig) -> Result<Self, DataplaneError> {
        let kernel = kernel::Kernel::load(&config)?;
        Ok(EbpfDataplane {
            config,
            kernel,
            current: None,
            groups: state::Groups::default(),
            last: None,
        })
    }

    pub fn config(&self) -> &EbpfConfig {
        &self.config
    }

    /// Runs a tc program once on `packet` (an Ethernet frame) through `BPF_PROG_TEST_RUN`,
    /// with the maps as programmed. For packet fixture tests.
    pub fn test_run_tc(&self, egress: bool, packet: &[u8]) -> Result<TestRun, DataplaneError> {
        self.kernel.test_run_tc(egress, packet)
    }

    /// Runs the XDP program once on `packet` through `BPF_PROG_TEST_RUN`. For fixture tests.
    pub fn test_run_xdp(&self, packet: &[u8]) -> Result<TestRun, DataplaneError> {
        self.kernel.test_run_xdp(packet)
    }

    /// Interfaces the tc programs are attached to (name, ifindex).
    pub fn attached_interfaces(&self) -> Vec<(String, u32)> {
        self.kernel.attached_interfaces()
    }
}

impl Dataplane for EbpfDataplane {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn restore(&mut self) -> Result<(), DataplaneError> {
        let content = self.kernel.maps.read()?;
        tracing::info!(
            frontends = content.svc.len(),
            slots = content.slot.len(),
            maglev_slots = content.maglev.len(),
            "ebpf: restored pinned maps"
        );
        self.current = Some(content);
        Ok(())
    }

    fn apply(
        &mut self,
        desired: &DesiredState,
        full_resync: bool,
    ) -> Result<ApplyStats, DataplaneError> {
        if self.current.is_none() || full_resync {
            // Compare with what the kernel really has: survives restarts and repairs drift.
            self.current = Some(self.kernel.maps.read()?);
        }
        let current = self.current.take().unwrap_or_default();
        let groups = state::assign_groups(desired, &self.groups, &current);
        let want = state::render(desired, &groups);
        let svc = state::diff_map(&current.svc, &want.svc);
        let slot = state::diff_map(&current.slot, &want.slot);
        let maglev = state::diff_map(&current.maglev, &want.maglev);
        let src = state::diff_map(&current.src, &want.src);
        let cidr = state::diff_map(&current.cidr, &want.cidr);
        let removed = state::removed_backends(&current, &want);
        let ops = svc.len() + slot.len() + maglev.len() + src.len() + cidr.len();
        if let Err(e) = self.kernel.maps.write(&svc, &slot, &maglev, &src, &cidr) {
            // Partially written: re-read on the next apply.
            self.current = None;
            return Err(e);
        }
        let pruned = self.kernel.maps.prune(&removed);
        self.current = Some(want);
        self.groups = groups;

        let wants_masq = desired.services.values().any(|s| {
            s.has_external_frontends()
                && s.external_traffic_policy == sluice_model::TrafficPolicy::Cluster
        });
        self.kernel.sync_interfaces(desired);
        if wants_masq {
            self.kernel.ensure_masquerade();
        }

        let services_changed =
            sluice_dataplane::count_changed_services(self.last.as_ref(), desired);
        self.last = Some(desired.clone());
        tracing::debug!(ops, pruned, services_changed, "ebpf: applied");
        Ok(ApplyStats {
            services_changed,
            operations: ops,
            full_sync: full_resync,
        })
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        self.kernel.stop_watcher();
        self.current = None;
        self.last = None;
        self.groups = state::Groups::default();
        kernel::cleanup(&self.config)
    }
}

/// Removes everything under `config` without loading anything (`sluice agent --cleanup`
/// when the backend cannot or need not be constructed).
pub fn cleanup(config: &EbpfConfig) -> Result<(), DataplaneError> {
    kernel::cleanup(config)
}

#[cfg(test)]
mod tests;

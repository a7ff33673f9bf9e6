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
mod capacity;
mod dump;
mod kernel;
mod links;
pub mod maglev;
mod maps;
pub mod state;

use std::fmt::Display;
use std::path::PathBuf;

use std::sync::Arc;

use sluice_dataplane::{ApplyReport, Dataplane, DataplaneError, Restored};
use sluice_plan::{Plan, PlanDelta};

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
    /// The plan programmed last (deltas are applied to it).
    plan: Option<Plan>,
    /// What the maps hold: `plan` without the service ports refused for lack of room
    /// (those keep their earlier programming, see `capacity`).
    programmed: Plan,
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
            plan: None,
            programmed: Plan::default(),
        })
    }

    pub fn config(&self) -> &EbpfConfig {
        &self.config
    }

    /// The map entries `plan` translates to, as readable rows (what `sluice plan` shows).
    pub fn render_plan(plan: &Plan) -> String {
        let groups = state::assign_groups(plan, &state::Groups::default(), &Default::default());
        dump::rows(&state::render(plan, &groups))
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

    /// Writes the difference between what the maps hold and `plan`.
    fn program(&mut self, plan: &Plan, full: bool) -> Result<ApplyReport, DataplaneError> {
        if self.current.is_none() || full {
            // Compare with what the kernel really has: survives restarts and repairs drift.
            self.current = Some(self.kernel.maps.read()?);
        }
        let current = self.current.take().unwrap_or_default();
        let mut groups = state::assign_groups(plan, &self.groups, &current);
        let mut want = state::render(plan, &groups);
        let mut failed = Vec::new();
        let fitted = capacity::fit(plan, &want, &self.programmed, &capacity::CAPACITY);
        let plan = match &fitted {
            None => plan,
            Some((fitted, refused)) => {
                failed.clone_from(refused);
                groups = state::assign_groups(fitted, &self.groups, &current);
                want = state::render(fitted, &groups);
                fitted
            }
        };
        let svc = state::diff_map(&current.svc, &want.svc);
        let slot = state::diff_map(&current.slot, &want.slot);
        let maglev = state::diff_map(&current.maglev, &want.maglev);
        let src = state::diff_map(&current.src, &want.src);
        let cidr = state::diff_map(&current.cidr, &want.cidr);
        let operations = svc.len() + slot.len() + maglev.len() + src.len() + cidr.len();
        if let Err(e) = self.kernel.maps.write(&svc, &slot, &maglev, &src, &cidr) {
            // Partially written: re-read on the next apply.
            self.current = None;
            return Err(e);
        }
        self.current = Some(want);
        self.groups = groups;
        self.programmed = plan.clone();
        let wants_masq = plan.services.values().any(|s| {
            s.frontends.iter().any(|fe| {
                matches!(
                    fe.outside,
                    sluice_plan::Route::Forward {
                        masquerade: true,
                        ..
                    }
                )
            })
        });
        self.kernel.sync_interfaces(&plan.node.nodeport_addresses);
        if wants_masq {
            self.kernel.ensure_masquerade();
        }
        Ok(ApplyReport {
            services_changed: 0,
            operations,
            full_sync: full,
            failed,
        })
    }
}

impl Dataplane for EbpfDataplane {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn restore(&mut self) -> Result<Restored, DataplaneError> {
        let content = self.kernel.maps.read()?;
        tracing::info!(
            frontends = content.svc.len(),
            slots = content.slot.len(),
            maglev_slots = content.maglev.len(),
            "ebpf: restored pinned maps"
        );
        let restored = Restored {
            backends: state::connectionless_backends(&content),
        };
        self.current = Some(content);
        Ok(restored)
    }

    fn resync(&mut self, plan: &Plan) -> Result<ApplyReport, DataplaneError> {
        let mut report = self.program(plan, true)?;
        report.services_changed = plan.services.len();
        self.plan = Some(plan.clone());
        Ok(report)
    }

    fn apply(&mut self, delta: &PlanDelta) -> Result<ApplyReport, DataplaneError> {
        let mut plan = self.plan.take().unwrap_or_default();
        plan.node = Arc::clone(&delta.node);
        for change in &delta.services {
            match &change.after {
                Some(after) => plan.services.insert(change.name.clone(), Arc::clone(after)),
                None => plan.services.remove(&change.name),
            };
        }
        if let Some(checks) = &delta.health_checks {
            plan.health_checks = checks.clone();
        }
        let result = self.program(&plan, false);
        self.plan = Some(plan);
        let mut report = result?;
        report.services_changed = delta.services.len();
        let pruned = self.kernel.maps.prune(&delta.stale_flows);
        tracing::debug!(operations = report.operations, pruned, "ebpf: applied");
        Ok(report)
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        self.kernel.stop_watcher();
        self.current = None;
        self.plan = None;
        self.programmed = Plan::default();
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

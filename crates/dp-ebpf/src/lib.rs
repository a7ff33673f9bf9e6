//! eBPF dataplane for sluice: socket-level load balancing on a cgroup v2 (ClusterIP, and
//! NodePort / externalIP / LB IP reached from the node itself) and tc (tcx) programs on the
//! node's external interfaces (NodePort / externalIP / LB IP / ClusterIP from outside, with
//! conntrack, reverse NAT, Maglev, source ranges and ICMP refusals).
//!
//! The C programs live in `ebpf/` and are compiled by `build.rs`. Every map is pinned under
//! [`EbpfConfig::bpffs_path`] and every attachment is a pinned BPF link under
//! `<bpffs_path>/links`, so forwarding goes on while the agent is down; a restarted agent
//! re-opens the maps, reads them back and rewrites only what differs.
//!
//! Layers: [`render`] translates a service port's plan into map rows (pure);
//! [`MapProgrammer`] keeps per-service bookkeeping and writes only what changed, in a safe
//! order, through the [`store::MapStore`] seam; the kernel module implements that seam on
//! pinned maps (and grows them), [`store::FakeMapStore`] in memory for tests.
//! [`read_pinned`] reads the pins back in plan terms for `sluice inspect` / `sluice explain`.
//!
//! Masquerading is delegated to netfilter: the tc program sets [`abi::MASQ_MARK`] on the
//! packet and a one-rule nftables table `inet sluice_ebpf` (installed by this backend)
//! masquerades marked packets in postrouting; netfilter's conntrack then un-NATs replies
//! before the tc egress program restores the frontend address.

pub mod abi;
mod dump;
pub mod groups;
mod kernel;
mod links;
pub mod maglev;
mod programmer;
mod prune;
pub mod readback;
pub mod render;
pub mod sizing;
pub mod store;
mod transition;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_dataplane::{ApplyReport, Dataplane, DataplaneError, Restored};
use sluice_plan::{Plan, PlanDelta, Route, ServicePlan};

pub use kernel::Unsupported;
pub use kernel::bpffs::find_cgroup2_root;
pub use kernel::testrun::TestRun;
pub use programmer::{MapProgrammer, connectionless_backends, estimate};
pub use readback::{PinnedState, ReadError, ReadFlows, read_pinned};
pub use sizing::{MapOccupancy, MapSizes};

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

/// XDP acceleration of the external path (`--xdp`). The XDP program makes the same decision
/// as tc ingress and shares its conntrack; tc stays attached for replies and masquerading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpMode {
    Native,
    Generic,
    #[default]
    Off,
}

/// How long conntrack entries of finished flows stay valid (the next packet of the same
/// 5-tuple after that is a new flow, with a fresh backend choice). Other TCP entries leave by
/// LRU eviction only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConntrackTimeouts {
    /// After a RST, or a FIN in both directions (netfilter's TCP CLOSE timeout is 10 s).
    pub tcp_closed: Duration,
    /// Without a packet in either direction.
    pub udp_idle: Duration,
}

impl Default for ConntrackTimeouts {
    fn default() -> Self {
        ConntrackTimeouts {
            tcp_closed: Duration::from_secs(10),
            udp_idle: Duration::from_secs(60),
        }
    }
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
    /// Explicit map capacities (`--bpf-map-sizes`); maps not listed are sized automatically
    /// and grow when a plan needs more (see [`sizing`]).
    pub map_sizes: MapSizes,
    pub conntrack: ConntrackTimeouts,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        EbpfConfig {
            bpffs_path: PathBuf::from("/sys/fs/bpf/sluice"),
            cgroup_path: find_cgroup2_root().unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup")),
            interfaces: Vec::new(),
            xdp: XdpMode::Off,
            map_sizes: MapSizes::default(),
            conntrack: ConntrackTimeouts::default(),
        }
    }
}

/// A kernel-side failure as the dataplane contract reports it, with its causes.
fn kernel_err(action: &str, err: impl std::error::Error + Send + Sync + 'static) -> DataplaneError {
    DataplaneError::Io {
        backend: BACKEND,
        action: action.to_owned(),
        source: std::io::Error::other(err),
    }
}

fn load_err(err: kernel::KernelError) -> DataplaneError {
    match err {
        kernel::KernelError::Unavailable(reason) => DataplaneError::Unavailable {
            backend: BACKEND,
            reason: sluice_dataplane::error_chain(&reason),
        },
        other => kernel_err("loading the programs", other),
    }
}

/// `Ok(())` when this kernel can run the eBPF dataplane, `Err(reason)` otherwise
/// (for `--proxy-mode auto`). Loads the programs through the verifier without attaching.
pub fn check_support(config: &EbpfConfig) -> Result<(), Unsupported> {
    kernel::check_support(config)
}

/// Map occupancy as of the last `resync` / `apply`, readable from another thread (the
/// agent's metrics endpoint) without touching the dataplane.
#[derive(Debug, Clone, Default)]
pub struct OccupancyHandle(Arc<Mutex<Vec<MapOccupancy>>>);

impl OccupancyHandle {
    pub fn get(&self) -> Vec<MapOccupancy> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, value: Vec<MapOccupancy>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = value;
    }
}

/// The eBPF backend. See the crate docs.
pub struct EbpfDataplane {
    config: EbpfConfig,
    kernel: kernel::Kernel,
    programmer: MapProgrammer,
    occupancy: OccupancyHandle,
}

impl EbpfDataplane {
    /// Loads the programs (re-using pinned maps) and attaches socket-LB to the cgroup.
    pub fn new(config: EbpfConfig) -> Result<Self, DataplaneError> {
        let kernel = kernel::Kernel::load(&config).map_err(load_err)?;
        Ok(EbpfDataplane {
            programmer: MapProgrammer::new(config.map_sizes.clone()),
            config,
            kernel,
            occupancy: OccupancyHandle::default(),
        })
    }

    pub fn config(&self) -> &EbpfConfig {
        &self.config
    }

    /// The map entries `plan` translates to, as readable rows (what `sluice plan` shows).
    pub fn render_plan(plan: &Plan) -> String {
        dump::rows(&render::render_plan(plan))
    }

    /// Runs a tc program once on `packet` (an Ethernet frame) through `BPF_PROG_TEST_RUN`,
    /// with the maps as programmed. For packet fixture tests.
    pub fn test_run_tc(&self, egress: bool, packet: &[u8]) -> Result<TestRun, DataplaneError> {
        self.kernel
            .test_run_tc(egress, packet)
            .map_err(|e| kernel_err("test run", e))
    }

    /// Runs the XDP program once on `packet` through `BPF_PROG_TEST_RUN`. For fixture tests.
    pub fn test_run_xdp(&self, packet: &[u8]) -> Result<TestRun, DataplaneError> {
        self.kernel
            .test_run_xdp(packet)
            .map_err(|e| kernel_err("test run", e))
    }

    /// Interfaces the tc programs are attached to (name, ifindex).
    pub fn attached_interfaces(&self) -> Vec<(String, u32)> {
        self.kernel.attached_interfaces()
    }

    /// Entries and capacity of every map, counted now.
    pub fn occupancy(&mut self) -> Vec<MapOccupancy> {
        self.programmer.occupancy(&mut self.kernel, true)
    }

    /// A handle on the occupancy as of the last sync, for metrics.
    pub fn occupancy_handle(&self) -> OccupancyHandle {
        self.occupancy.clone()
    }

    /// Where a map is pinned now (its name changes when it grows).
    pub fn map_pin_path(&self, map: abi::MapKind) -> PathBuf {
        self.kernel.pin_path(map)
    }

    /// After programming: tc on the node's interfaces (on resync and node changes; the link
    /// watcher covers the rest), the masquerade rule when needed, the occupancy (the
    /// datapath's maps are counted on resync only).
    fn after_programming<'a>(
        &mut self,
        node: Option<&sluice_plan::NodePlan>,
        mut plans: impl Iterator<Item = &'a Arc<ServicePlan>>,
    ) {
        if let Some(node) = node {
            self.kernel.sync_interfaces(&node.nodeport_addresses);
        }
        if !self.kernel.masquerade_installed() && plans.any(|s| masquerades(s)) {
            self.kernel.ensure_masquerade();
        }
        let occupancy = self.programmer.occupancy(&mut self.kernel, node.is_some());
        self.occupancy.set(occupancy);
    }
}

/// Whether any packet of the service is masqueraded by tc.
fn masquerades(svc: &ServicePlan) -> bool {
    svc.frontends.iter().any(|fe| {
        [fe.pods, fe.outside].iter().any(|r| {
            matches!(
                r,
                Route::Forward {
                    masquerade: true,
                    ..
                }
            )
        })
    })
}

impl Dataplane for EbpfDataplane {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn restore(&mut self) -> Result<Restored, DataplaneError> {
        let content = self
            .programmer
            .restore(&mut self.kernel)
            .map_err(|e| kernel_err("reading the pinned maps", e))?;
        tracing::info!(
            frontends = content.svc.len(),
            slots = content.slot.len(),
            maglev_slots = content.maglev.len(),
            "ebpf: restored pinned maps"
        );
        Ok(Restored {
            backends: connectionless_backends(content),
        })
    }

    fn resync(&mut self, plan: &Plan) -> Result<ApplyReport, DataplaneError> {
        let report = self
            .programmer
            .resync(&mut self.kernel, plan)
            .map_err(|e| kernel_err("programming the maps", e))?;
        self.after_programming(Some(&plan.node), plan.services.values());
        Ok(report)
    }

    fn apply(&mut self, delta: &PlanDelta) -> Result<ApplyReport, DataplaneError> {
        let report = self
            .programmer
            .apply(&mut self.kernel, delta)
            .map_err(|e| kernel_err("programming the maps", e))?;
        let node = delta.node_changed.then(|| Arc::clone(&delta.node));
        self.after_programming(
            node.as_deref(),
            delta.services.iter().filter_map(|c| c.after.as_ref()),
        );
        tracing::debug!(operations = report.operations, "ebpf: applied");
        Ok(report)
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        self.kernel.stop_watcher();
        self.programmer.reset();
        kernel::cleanup(&self.config).map_err(|e| kernel_err("cleanup", e))
    }
}

/// Removes everything under `config` without loading anything (`sluice agent --cleanup`
/// when the backend cannot or need not be constructed).
pub fn cleanup(config: &EbpfConfig) -> Result<(), DataplaneError> {
    kernel::cleanup(config).map_err(|e| kernel_err("cleanup", e))
}

#[cfg(test)]
mod tests;

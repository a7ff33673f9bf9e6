//! Everything that talks to the kernel, by concern: `bpffs` (pin directory, generations),
//! `load` (objects through the verifier), `attach` (pinned links), `maps` (map access),
//! `masq` (the netfilter rule), `testrun` (`BPF_PROG_TEST_RUN`), `sys` (raw `bpf(2)`).
//! [`Kernel`] ties them together and is the real [`MapStore`].

mod attach;
pub mod bpffs;
mod load;
mod maps;
pub mod masq;
mod sys;
pub mod testrun;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use aya::Ebpf;
use sluice_hostnet::{HostNetwork, RtNetlink};
use sluice_plan::StaleFlow;

use crate::abi::{CtKey, CtVal, MapKind};
use crate::links::Watcher;
use crate::readback::ReadError;
use crate::render::MapContent;
use crate::sizing::default_capacity;
use crate::store::{MapStore, Row, RowKey, StoreError};
use crate::{ConntrackTimeouts, EbpfConfig};
use attach::{AttachError, Attacher};
use bpffs::{BpffsError, Pins};
use load::{LoadError, Programs, TC_EGRESS, TC_INGRESS, XDP_PROG, program_fd};
use maps::{KernelMaps, MapHandle};
use testrun::TestRun;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Unavailable(#[from] Unsupported),
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error(transparent)]
    Load(Box<LoadError>),
    #[error(transparent)]
    Attach(Box<AttachError>),
    #[error(transparent)]
    Maps(#[from] StoreError),
    #[error("BPF_PROG_TEST_RUN of {program}")]
    TestRun {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl From<LoadError> for KernelError {
    fn from(e: LoadError) -> Self {
        KernelError::Load(Box::new(e))
    }
}

impl From<AttachError> for KernelError {
    fn from(e: AttachError) -> Self {
        KernelError::Attach(Box::new(e))
    }
}

/// Why this machine cannot run the eBPF dataplane.
#[derive(Debug, thiserror::Error)]
pub enum Unsupported {
    #[error("{} is not a cgroup v2 directory ({mounted}; set --cgroup-path)", path.display())]
    NotCgroup2 { path: PathBuf, mounted: String },
    #[error("cannot read the kernel version: {detail}")]
    KernelVersion { detail: String },
    #[error("kernel {version} has no tcx (6.6 or newer needed for pinned tc links)")]
    NoTcx { version: String },
    #[error("the programs do not load")]
    Load(#[source] Box<KernelError>),
}

/// Whether `path` can take socket-LB programs.
fn check_cgroup2(path: &Path) -> Result<(), Unsupported> {
    if sys::fs_magic(path) == Some(bpffs::CGROUP2_SUPER_MAGIC) {
        return Ok(());
    }
    let mounted = bpffs::find_cgroup2_root()
        .map(|root| format!("cgroup2 is mounted at {}", root.display()))
        .unwrap_or_else(|| "no cgroup2 file system is mounted".to_owned());
    Err(Unsupported::NotCgroup2 {
        path: path.to_path_buf(),
        mounted,
    })
}

/// tc programs are attached as tcx links (kernel 6.6+), which can be pinned so forwarding
/// survives the agent; older kernels would attach unpinnable qdisc filters.
fn check_tcx() -> Result<(), Unsupported> {
    let version = aya::util::KernelVersion::current().map_err(|e| Unsupported::KernelVersion {
        detail: e.to_string(),
    })?;
    if version < aya::util::KernelVersion::new(6, 6, 0) {
        return Err(Unsupported::NoTcx {
            version: format!("{version:?}"),
        });
    }
    Ok(())
}

/// Loads everything through the verifier with maps pinned in a throw-away directory.
pub fn check_support(config: &EbpfConfig) -> Result<(), Unsupported> {
    check_cgroup2(&config.cgroup_path)?;
    check_tcx()?;
    let base = config
        .bpffs_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf"));
    let probe = base.join(format!("sluice-check-{}", std::process::id()));
    let result = (|| -> Result<(), KernelError> {
        bpffs::ensure_bpffs(&probe)?;
        let pins = Pins::scan(&probe)?;
        let defaults = ConntrackTimeouts::default();
        Programs::load(&layout(&pins, &MapSizesView::defaults(), &defaults))?;
        Ok(())
    })();
    bpffs::remove_pins(&probe);
    result.map_err(|e| Unsupported::Load(Box::new(e)))
}

/// The datapath's conntrack entries of the original direction.
pub type Conntrack = Vec<(CtKey, CtVal)>;

/// The agent's rows pinned under `dir` (current generations) and, with `conntrack`, the
/// datapath's original-direction conntrack entries, read without loading or changing
/// anything; `None` when nothing is pinned there.
pub fn read_pinned(
    dir: &Path,
    conntrack: bool,
) -> Result<Option<(MapContent, Conntrack)>, ReadError> {
    let pins = Pins::existing(dir).map_err(|source| ReadError::List {
        dir: dir.to_path_buf(),
        source,
    })?;
    let Some(pins) = pins else {
        return Ok(None);
    };
    let open = |map: MapKind| {
        let path = pins.path(map);
        MapHandle::open(map, &path).map_err(|source| ReadError::Map {
            path: path.clone(),
            source,
        })
    };
    let mut content = MapContent::default();
    for map in MapKind::AGENT {
        let handle = open(map)?;
        handle
            .read_into(&mut content)
            .map_err(|source| ReadError::Map {
                path: pins.path(map),
                source,
            })?;
    }
    let mut flows = Vec::new();
    if conntrack {
        flows = open(MapKind::Ct)?
            .conntrack_orig()
            .map_err(|source| ReadError::Map {
                path: pins.path(MapKind::Ct),
                source,
            })?;
    }
    Ok(Some((content, flows)))
}

pub use sys::monotonic_ns;

/// Removes everything under `config` (pins, links, the masquerade table).
pub fn cleanup(config: &EbpfConfig) -> Result<(), std::io::Error> {
    bpffs::remove_pins(&config.bpffs_path);
    masq::remove();
    if config.bpffs_path.exists() {
        return Err(std::io::Error::other(format!(
            "{} still contains files not created by sluice",
            config.bpffs_path.display()
        )));
    }
    Ok(())
}

/// The capacity each map is created with.
struct MapSizesView(BTreeMap<MapKind, u32>);

impl MapSizesView {
    fn defaults() -> Self {
        MapSizesView(
            MapKind::ALL
                .into_iter()
                .map(|m| (m, default_capacity(m)))
                .collect(),
        )
    }

    fn of(config: &EbpfConfig) -> Self {
        let mut view = MapSizesView::defaults();
        view.0.extend(&config.map_sizes.0);
        view
    }
}

fn layout(pins: &Pins, sizes: &MapSizesView, conntrack: &ConntrackTimeouts) -> load::Layout {
    let nanos = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    load::Layout {
        paths: MapKind::ALL
            .into_iter()
            .map(|m| (m, pins.path(m)))
            .collect(),
        capacities: sizes.0.clone(),
        globals: vec![
            ("sl_ct_closed_ns", nanos(conntrack.tcp_closed)),
            ("sl_ct_udp_idle_ns", nanos(conntrack.udp_idle)),
        ],
    }
}

/// A map generation being created by a resize.
struct Fresh {
    map: MapKind,
    filling: PathBuf,
    path: PathBuf,
    handle: Option<MapHandle>,
}

pub struct Kernel {
    config: EbpfConfig,
    pins: Pins,
    sock: Ebpf,
    maps: KernelMaps,
    /// Shared with the link watcher thread, which attaches to links that appear later.
    attacher: Arc<Mutex<Attacher>>,
    watcher: Option<Watcher>,
    masq_installed: bool,
}

impl Kernel {
    pub fn load(config: &EbpfConfig) -> Result<Self, KernelError> {
        check_cgroup2(&config.cgroup_path)?;
        check_tcx()?;
        let dir = &config.bpffs_path;
        bpffs::ensure_bpffs(dir)?;
        let pins = Pins::scan(dir)?;
        let Programs { mut sock, tc, xdp } =
            Programs::load(&layout(&pins, &MapSizesView::of(config), &config.conntrack))?;
        let maps = KernelMaps::open(&pins)?;
        let links_dir = dir.join("links");
        attach::attach_cgroup(&mut sock, &links_dir, &config.cgroup_path)?;
        pins.remove_older()?;
        tracing::info!(cgroup = %config.cgroup_path.display(), pins = %dir.display(),
            "ebpf: socket-LB attached");
        let net: Arc<dyn HostNetwork> = Arc::new(RtNetlink::new());
        let attacher = Arc::new(Mutex::new(Attacher {
            tc,
            xdp,
            xdp_mode: config.xdp,
            links_dir,
            attached: Default::default(),
            interfaces: config.interfaces.clone(),
            addresses: Vec::new(),
            net: Arc::clone(&net),
        }));
        let watcher = {
            let attacher = Arc::clone(&attacher);
            // Links that appear (or get a node address) later are covered without an apply.
            Watcher::spawn(net, move || {
                attacher.lock().unwrap_or_else(|p| p.into_inner()).sync();
            })
        };
        let mut kernel = Kernel {
            config: config.clone(),
            pins,
            sock,
            maps,
            attacher,
            watcher,
            masq_installed: false,
        };
        kernel.apply_configured_sizes()?;
        Ok(kernel)
    }

    /// Maps pinned by an earlier run with another size than configured now are resized.
    fn apply_configured_sizes(&mut self) -> Result<(), KernelError> {
        let resize: BTreeMap<MapKind, u32> = self
            .config
            .map_sizes
            .0
            .iter()
            .filter(|(map, size)| self.maps.get(**map).capacity() != **size)
            .map(|(map, size)| (*map, *size))
            .collect();
        if !resize.is_empty() {
            tracing::info!(
                ?resize,
                "ebpf: resizing pinned maps to the configured sizes"
            );
            self.resize_maps(&resize)?;
        }
        Ok(())
    }

    fn attacher(&self) -> MutexGuard<'_, Attacher> {
        // A panic while holding the lock leaves consistent data (a set of names): go on.
        self.attacher.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn attached_interfaces(&self) -> Vec<(String, u32)> {
        self.attacher().attached.iter().cloned().collect()
    }

    /// Remembers the node addresses and attaches the tc programs to every wanted interface
    /// that does not have them yet (the watcher thread does the same when links change).
    pub fn sync_interfaces(&mut self, nodeport_addresses: &[std::net::IpAddr]) {
        let mut a = self.attacher();
        a.addresses = nodeport_addresses.to_vec();
        a.sync();
    }

    pub fn masquerade_installed(&self) -> bool {
        self.masq_installed
    }

    /// Installs the netfilter masquerade rule for marked packets (once per process).
    pub fn ensure_masquerade(&mut self) {
        if self.masq_installed {
            return;
        }
        match masq::install() {
            Ok(()) => self.masq_installed = true,
            Err(e) => tracing::warn!(
                "ebpf: cannot install the masquerade rule; masqueraded traffic to other nodes will not be SNATed: {}",
                sluice_dataplane::error_chain(&e)
            ),
        }
    }

    /// Stops the link watcher (before cleanup, so it cannot re-attach).
    pub fn stop_watcher(&mut self) {
        self.watcher.take();
    }

    pub fn test_run_tc(&self, egress: bool, packet: &[u8]) -> Result<TestRun, KernelError> {
        let program = if egress { TC_EGRESS } else { TC_INGRESS };
        let a = self.attacher();
        let fd = program_fd(&a.tc, program).ok_or_else(|| LoadError::Missing {
            program: program.into(),
        })?;
        testrun::run_tc(fd, packet).map_err(|source| KernelError::TestRun { program, source })
    }

    pub fn test_run_xdp(&self, packet: &[u8]) -> Result<TestRun, KernelError> {
        let a = self.attacher();
        let fd = program_fd(&a.xdp, XDP_PROG).ok_or_else(|| LoadError::Missing {
            program: XDP_PROG.into(),
        })?;
        testrun::run_xdp(fd, packet).map_err(|source| KernelError::TestRun {
            program: XDP_PROG,
            source,
        })
    }

    /// Current pin path of a map.
    pub fn pin_path(&self, map: MapKind) -> PathBuf {
        self.pins.path(map)
    }

    /// Moves the listed maps to a new generation with the given capacities: new pins filled
    /// with every entry, every link switched to programs using them, a second copy of what
    /// the datapath added meanwhile, then the old pins removed. Nothing changes on failure
    /// before the switch.
    fn resize_maps(&mut self, capacities: &BTreeMap<MapKind, u32>) -> Result<(), KernelError> {
        let mut layout = layout(
            &self.pins,
            &MapSizesView(BTreeMap::new()),
            &self.config.conntrack,
        );
        let mut fresh: Vec<Fresh> = Vec::new();
        for (map, capacity) in capacities {
            let (filling, path) = self.pins.next(*map);
            layout.paths.insert(*map, filling.clone());
            layout.capacities.insert(*map, *capacity);
            fresh.push(Fresh {
                map: *map,
                filling,
                path,
                handle: None,
            });
        }
        let programs = match self.fill(&layout, &mut fresh) {
            Ok(programs) => programs,
            Err(e) => {
                for f in &fresh {
                    let _ = std::fs::remove_file(&f.filling);
                    let _ = std::fs::remove_file(&f.path);
                }
                return Err(e);
            }
        };
        self.switch(programs, fresh);
        Ok(())
    }

    /// Creates the new generations (by loading the programs against them), copies every
    /// entry over and renames them into place.
    fn fill(&self, layout: &load::Layout, fresh: &mut [Fresh]) -> Result<Programs, KernelError> {
        let programs = Programs::load(layout)?;
        for f in fresh.iter_mut() {
            let handle = MapHandle::open(f.map, &f.filling)?;
            let copied = self.maps.get(f.map).copy_into(&handle, false)?;
            tracing::info!(map = %f.map, copied, capacity = handle.capacity(), "ebpf: map grown");
            std::fs::rename(&f.filling, &f.path).map_err(|source| BpffsError::Io {
                action: "rename",
                path: f.filling.clone(),
                source,
            })?;
            f.handle = Some(handle);
        }
        Ok(programs)
    }

    /// Points every link at `programs`, catches up on flows created meanwhile, and retires
    /// the old generations.
    fn switch(&mut self, programs: Programs, fresh: Vec<Fresh>) {
        let links_dir = self.config.bpffs_path.join("links");
        {
            // Held across the switch: the link watcher must not attach a new interface to
            // the old programs in between.
            let attacher = Arc::clone(&self.attacher);
            let mut a = attacher.lock().unwrap_or_else(|p| p.into_inner());
            let moved = attach::relink_all(&links_dir, &programs);
            tracing::info!(links = moved, "ebpf: programs switched to the grown maps");
            let Programs { sock, tc, xdp } = programs;
            self.sock = sock;
            a.tc = tc;
            a.xdp = xdp;
        }
        for f in fresh {
            let Some(handle) = f.handle else { continue };
            let old = self.pins.path(f.map);
            if f.map.datapath_owned()
                && let Err(e) = self.maps.get(f.map).copy_into(&handle, true)
            {
                tracing::warn!(map = %f.map, "ebpf: catching up on new flows failed: {}",
                    sluice_dataplane::error_chain(&e));
            }
            self.maps.replace(handle);
            self.pins.advance(f.map);
            if let Err(e) = std::fs::remove_file(&old) {
                tracing::warn!(pin = %old.display(), error = %e, "ebpf: cannot unpin the old map");
            }
        }
    }
}

impl MapStore for Kernel {
    fn write(&mut self, row: &Row) -> Result<(), StoreError> {
        self.maps
            .get(row.map())
            .update(row.key().bytes(), row.value_bytes(), 0)
    }

    fn delete(&mut self, key: &RowKey) -> Result<(), StoreError> {
        self.maps.get(key.map()).delete(key.bytes()).map(drop)
    }

    fn read(&mut self) -> Result<MapContent, StoreError> {
        self.maps.read()
    }

    fn count(&mut self, map: MapKind) -> Result<usize, StoreError> {
        self.maps.get(map).count()
    }

    fn capacity(&self, map: MapKind) -> u32 {
        self.maps.get(map).capacity()
    }

    fn resize(&mut self, capacities: &BTreeMap<MapKind, u32>) -> Result<(), StoreError> {
        self.resize_maps(capacities)
            .map_err(|e| StoreError::Kernel {
                action: "resizing maps".into(),
                source: Box::new(e),
            })
    }

    fn prune(&mut self, flows: &[StaleFlow]) -> Result<usize, StoreError> {
        self.maps.prune(flows)
    }
}

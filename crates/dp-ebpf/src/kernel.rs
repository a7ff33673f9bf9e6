//! Loading, attaching (pinned links), interface discovery, the masquerade rule, cleanup and
//! `BPF_PROG_TEST_RUN`: everything that talks to the kernel apart from map contents.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType, Xdp, XdpMode as AyaXdpMode,
};
use aya::{Ebpf, EbpfLoader};
use sluice_dataplane::DataplaneError;
use sluice_hostnet::{HostNetwork, RtNetlink};

use crate::links::{Watcher, wanted_interfaces};
use crate::maps::Maps;
use crate::{BACKEND, EbpfConfig, SOCK_OBJ, TC_OBJ, XDP_OBJ, XdpMode, abi, kerr};

const SOCK_PROGS: &[&str] = &[
    "sl_connect4",
    "sl_sendmsg4",
    "sl_recvmsg4",
    "sl_getpeername4",
    "sl_connect6",
    "sl_sendmsg6",
    "sl_recvmsg6",
    "sl_getpeername6",
];
const TC_INGRESS: &str = "sl_tc_ingress";
const TC_EGRESS: &str = "sl_tc_egress";
const XDP_PROG: &str = "sl_xdp";

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// Name of the nftables table holding the masquerade rule.
pub const NFT_TABLE: &str = "sluice_ebpf";

pub struct Kernel {
    _sock: Ebpf,
    pub maps: Maps,
    /// Shared with the link watcher thread, which attaches to links that appear later.
    attacher: Arc<Mutex<Attacher>>,
    watcher: Option<Watcher>,
    masq_installed: bool,
}

/// Owns the tc and XDP programs and knows which interfaces they should be on.
struct Attacher {
    tc: Ebpf,
    xdp: Ebpf,
    xdp_mode: XdpMode,
    links_dir: PathBuf,
    attached: BTreeMap<(String, u32), ()>,
    /// `--interfaces` when given; else the interfaces carrying `addresses`.
    interfaces: Vec<String>,
    addresses: Vec<IpAddr>,
    /// Where links and addresses are read from.
    net: Arc<dyn HostNetwork>,
}

/// Result of one `BPF_PROG_TEST_RUN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRun {
    /// The program's return value (tc: `TC_ACT_OK` = 0, `TC_ACT_SHOT` = 2;
    /// XDP: `XDP_DROP` = 1, `XDP_PASS` = 2).
    pub verdict: u32,
    /// The packet after the program ran.
    pub packet: Vec<u8>,
    /// `skb->mark` after the program ran (tc only).
    pub mark: u32,
    /// XDP metadata in front of the packet (XDP only; the programs never resize packets,
    /// so whatever precedes the frame is metadata).
    pub meta: Vec<u8>,
}

fn io_err(action: impl Into<String>, source: std::io::Error) -> DataplaneError {
    DataplaneError::Io {
        backend: BACKEND,
        action: action.into(),
        source,
    }
}

fn fs_magic(path: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs only writes into the zeroed struct we pass; `c` is a valid C string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        if libc::statfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        #[allow(clippy::unnecessary_cast)]
        Some(st.f_type as i64)
    }
}

/// The cgroup2 mount point, from /proc/self/mounts (hybrid hosts mount it at
/// /sys/fs/cgroup/unified).
pub fn find_cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_dev, dir, ty) = (f.next()?, f.next()?, f.next()?);
        (ty == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// Makes sure `dir` is on a bpffs (mounting one at /sys/fs/bpf if needed) and exists.
fn ensure_bpffs(dir: &Path) -> Result<(), DataplaneError> {
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    if fs_magic(&probe) != Some(BPF_FS_MAGIC) {
        let root = Path::new("/sys/fs/bpf");
        if dir.starts_with(root) && fs_magic(root) != Some(BPF_FS_MAGIC) {
            // SAFETY: plain mount(2) with static NUL-terminated strings.
            let rc = unsafe {
                libc::mount(
                    c"bpf".as_ptr(),
                    c"/sys/fs/bpf".as_ptr(),
                    c"bpf".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                return Err(io_err(
                    "mount bpffs on /sys/fs/bpf",
                    std::io::Error::last_os_error(),
                ));
            }
        } else if !dir.starts_with(root) {
            return Err(DataplaneError::Unavailable {
                backend: BACKEND,
                reason: format!("{} is not on a bpf filesystem", dir.display()),
            });
        }
    }
    std::fs::create_dir_all(dir.join("links"))
        .map_err(|e| io_err(format!("create {}", dir.display()), e))
}

fn load_obj(pin_dir: &Path, obj: &[u8], what: &str) -> Result<Ebpf, DataplaneError> {
    EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(obj)
        .map_err(|e| kerr(format!("load {what} object"), error_chain(&e)))
}

/// A program of a loaded object, as its concrete type (`action` names the step in errors).
fn typed_program<'a, T>(
    obj: &'a mut Ebpf,
    name: &str,
    action: &str,
) -> Result<&'a mut T, DataplaneError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
    <&'a mut T as TryFrom<&'a mut aya::programs::Program>>::Error: std::fmt::Display,
{
    obj.program_mut(name)
        .ok_or_else(|| kerr(action, format!("program {name} missing from object")))?
        .try_into()
        .map_err(|e| kerr(format!("{action} {name}"), e))
}

/// Pins an attachment's link so it outlives the agent (tc and XDP links alike).
fn pin_link<L>(link: L, program: &str, pin: &Path) -> Result<(), DataplaneError>
where
    L: TryInto<FdLink>,
    L::Error: std::fmt::Display,
{
    let fd: FdLink = link
        .try_into()
        .map_err(|e| kerr(format!("pin {program}"), e))?;
    fd.pin(pin)
        .map_err(|e| kerr(format!("pin {}", pin.display()), error_chain(&e)))?;
    Ok(())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

fn load_sock_progs(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    for name in SOCK_PROGS {
        let prog: &mut CgroupSockAddr = typed_program(ebpf, name, "load")?;
        prog.load()
            .map_err(|e| kerr(format!("load {name}"), error_chain(&e)))?;
    }
    Ok(())
}

fn load_xdp_prog(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    let prog: &mut Xdp = typed_program(ebpf, XDP_PROG, "load")?;
    prog.load()
        .map_err(|e| kerr(format!("load {XDP_PROG}"), error_chain(&e)))
}

fn load_tc_progs(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    for name in [TC_INGRESS, TC_EGRESS] {
        let prog: &mut SchedClassifier = typed_program(ebpf, name, "load")?;
        prog.load()
            .map_err(|e| kerr(format!("load {name}"), error_chain(&e)))?;
    }
    Ok(())
}

/// `Err(reason)` when `path` cannot take socket-LB programs.
fn check_cgroup2(path: &Path) -> Result<(), String> {
    if fs_magic(path) == Some(CGROUP2_SUPER_MAGIC) {
        return Ok(());
    }
    let mounted = find_cgroup2_root()
        .map(|root| format!("cgroup2 is mounted at {}", root.display()))
        .unwrap_or_else(|| "no cgroup2 file system is mounted".to_owned());
    Err(format!(
        "{} is not a cgroup v2 directory ({mounted}; set --cgroup-path)",
        path.display()
    ))
}

/// tc programs are attached as tcx links (kernel 6.6+), which can be pinned so forwarding
/// survives the agent; older kernels would attach unpinnable qdisc filters.
fn check_tcx() -> Result<(), String> {
    let version = aya::util::KernelVersion::current()
        .map_err(|e| format!("cannot read the kernel version: {e}"))?;
    if version < aya::util::KernelVersion::new(6, 6, 0) {
        return Err(format!(
            "kernel {version:?} has no tcx (6.6 or newer needed for pinned tc links)"
        ));
    }
    Ok(())
}

pub fn check_support(config: &EbpfConfig) -> Result<(), String> {
    check_cgroup2(&config.cgroup_path)?;
    check_tcx()?;
    // Load everything through the verifier with maps pinned in a throw-away directory.
    let base = config
        .bpffs_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf"));
    let probe = base.join(format!("sluice-check-{}", std::process::id()));
    ensure_bpffs(&probe).map_err(|e| e.to_string())?;
    let result = (|| {
        let mut sock = load_obj(&probe, SOCK_OBJ, "socket-LB")?;
        load_sock_progs(&mut sock)?;
        let mut tc = load_obj(&probe, TC_OBJ, "tc")?;
        load_tc_progs(&mut tc)?;
        let mut xdp = load_obj(&probe, XDP_OBJ, "XDP")?;
        load_xdp_prog(&mut xdp)?;
        Ok::<(), DataplaneError>(())
    })();
    remove_pins(&probe);
    result.map_err(|e| e.to_string())
}

fn remove_pins(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir.join("links")) {
        for entry in entries.flatten() {
            let path = entry.path();
            match PinnedLink::from_pin(&path) {
                // Unpinning drops the last reference: the link detaches.
                Ok(link) => {
                    if let Err(e) = link.unpin() {
                        tracing::warn!(path = %path.display(), error = %e, "cannot unpin link");
                    }
                }
                Err(_) => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }
    let _ = std::fs::remove_dir(dir.join("links"));
    for name in abi::ALL_MAPS {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let _ = std::fs::remove_dir(dir);
}

pub fn cleanup(config: &EbpfConfig) -> Result<(), DataplaneError> {
    remove_pins(&config.bpffs_path);
    remove_masquerade();
    if config.bpffs_path.exists() {
        return Err(io_err(
            format!("remove {}", config.bpffs_path.display()),
            std::io::Error::other("directory still contains files not created by sluice"),
        ));
    }
    Ok(())
}

impl Kernel {
    pub fn load(config: &EbpfConfig) -> Result<Self, DataplaneError> {
        check_cgroup2(&config.cgroup_path)
            .and_then(|()| check_tcx())
            .map_err(|reason| DataplaneError::Unavailable {
                backend: BACKEND,
                reason,
            })?;
        let dir = &config.bpffs_path;
        ensure_bpffs(dir)?;
        let links_dir = dir.join("links");
        let mut sock = load_obj(dir, SOCK_OBJ, "socket-LB")?;
        load_sock_progs(&mut sock)?;
        let mut tc = load_obj(dir, TC_OBJ, "tc")?;
        load_tc_progs(&mut tc)?;
        let mut xdp = load_obj(dir, XDP_OBJ, "XDP")?;
        load_xdp_prog(&mut xdp)?;
        let maps = Maps::open(dir)?;

        let cgroup = File::open(&config.cgroup_path)
            .map_err(|e| io_err(format!("open cgroup {}", config.cgroup_path.display()), e))?;
        for name in SOCK_PROGS {
            let pin = links_dir.join(format!("cg_{name}"));
            let prog: &mut CgroupSockAddr = typed_program(&mut sock, name, "attach")?;
            let prog_fd = prog.fd().map_err(|e| kerr(format!("attach {name}"), e))?;
            if take_over(&pin, prog_fd.as_fd().as_raw_fd()) {
                continue;
            }
            // A cgroup bpf_link takes no attach flags (links always coexist): Single = 0.
            let id = prog
                .attach(cgroup.as_fd(), CgroupAttachMode::Single)
                .map_err(|e| {
                    kerr(
                        format!("attach {name} to {}", config.cgroup_path.display()),
                        error_chain(&e),
                    )
                })?;
            let link = prog
                .take_link(id)
                .map_err(|e| kerr(format!("attach {name}"), e))?;
            pin_link(link, name, &pin)?;
        }
        tracing::info!(cgroup = %config.cgroup_path.display(), pins = %dir.display(),
            "ebpf: socket-LB attached");
        let net: Arc<dyn HostNetwork> = Arc::new(RtNetlink::new());
        let attacher = Arc::new(Mutex::new(Attacher {
            tc,
            xdp,
            xdp_mode: config.xdp,
            links_dir,
            attached: BTreeMap::new(),
            interfaces: config.interfaces.clone(),
            addresses: Vec::new(),
            net: Arc::clone(&net),
        }));
        let watcher = {
            let attacher = Arc::clone(&attacher);
            // Links that appear (or get a node address) later are covered without an apply.
            Watcher::spawn(net, move || {
                let mut a = attacher.lock().unwrap_or_else(|p| p.into_inner());
                a.sync();
            })
        };
        Ok(Kernel {
            _sock: sock,
            maps,
            attacher,
            watcher,
            masq_installed: false,
        })
    }

    fn attacher(&self) -> MutexGuard<'_, Attacher> {
        // A panic while holding the lock leaves consistent data (a set of names): go on.
        self.attacher.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn attached_interfaces(&self) -> Vec<(String, u32)> {
        self.attacher().attached.keys().cloned().collect()
    }

    /// Remembers the node addresses and attaches the tc programs to every wanted interface
    /// that does not have them yet (the watcher thread does the same when links change).
    pub fn sync_interfaces(&mut self, nodeport_addresses: &[IpAddr]) {
        let mut a = self.attacher();
        a.addresses = nodeport_addresses.to_vec();
        a.sync();
    }

    pub fn test_run_tc(&self, egress: bool, packet: &[u8]) -> Result<TestRun, DataplaneError> {
        self.attacher().test_run_tc(egress, packet)
    }

    pub fn test_run_xdp(&self, packet: &[u8]) -> Result<TestRun, DataplaneError> {
        self.attacher().test_run_xdp(packet)
    }

    /// Installs the netfilter masquerade rule for marked packets (once per process; the rule
    /// set is replaced atomically so re-running is harmless).
    pub fn ensure_masquerade(&mut self) {
        if self.masq_installed {
            return;
        }
        let script = format!(
            "table inet {NFT_TABLE} {{}}\ndelete table inet {NFT_TABLE}\n\
             table inet {NFT_TABLE} {{\n chain postrouting {{\n  type nat hook postrouting priority srcnat; policy accept;\n  meta mark & {m:#x} == {m:#x} masquerade\n }}\n}}\n",
            m = abi::MASQ_MARK
        );
        match run_nft(&script) {
            Ok(()) => self.masq_installed = true,
            Err(e) => tracing::warn!(error = %e,
                "ebpf: cannot install the masquerade rule; eTP=Cluster traffic to other nodes will not be SNATed"),
        }
    }

    /// Stops the link watcher (before cleanup, so it cannot re-attach).
    pub fn stop_watcher(&mut self) {
        self.watcher.take();
    }
}

impl Attacher {
    /// Attaches to every wanted interface that does not have the programs yet. Failures on
    /// one interface are logged and do not stop the others.
    fn sync(&mut self) {
        let wanted = wanted_interfaces(self.net.as_ref(), &self.interfaces, &self.addresses);
        for (ifname, ifindex) in wanted {
            if self.attached.contains_key(&(ifname.clone(), ifindex)) {
                continue;
            }
            match self.attach_tc(&ifname, ifindex) {
                Ok(()) => {
                    tracing::info!(interface = %ifname, "ebpf: tc programs attached");
                    self.attached.insert((ifname, ifindex), ());
                }
                Err(e) => {
                    tracing::warn!(interface = %ifname, error = %sluice_dataplane::error_chain(&e), "ebpf: cannot attach tc")
                }
            }
        }
    }

    fn attach_tc(&mut self, ifname: &str, ifindex: u32) -> Result<(), DataplaneError> {
        for (name, ty, suffix) in [
            (TC_INGRESS, TcAttachType::Ingress, "in"),
            (TC_EGRESS, TcAttachType::Egress, "eg"),
        ] {
            let pin = self.links_dir.join(format!("tc_{ifindex}_{suffix}"));
            let prog: &mut SchedClassifier = typed_program(&mut self.tc, name, "attach")?;
            let prog_fd = prog.fd().map_err(|e| kerr(format!("attach {name}"), e))?;
            if take_over(&pin, prog_fd.as_fd().as_raw_fd()) {
                continue;
            }
            let id = prog
                .attach(ifname, ty)
                .map_err(|e| kerr(format!("attach {name} to {ifname}"), error_chain(&e)))?;
            let link = prog
                .take_link(id)
                .map_err(|e| kerr(format!("attach {name}"), e))?;
            pin_link(link, name, &pin)?;
        }
        let mode = match self.xdp_mode {
            XdpMode::Off => return Ok(()),
            XdpMode::Native => AyaXdpMode::Driver,
            XdpMode::Generic => AyaXdpMode::Skb,
        };
        let pin = self.links_dir.join(format!("xdp_{ifindex}"));
        let prog: &mut Xdp = typed_program(&mut self.xdp, XDP_PROG, "attach")?;
        let prog_fd = prog
            .fd()
            .map_err(|e| kerr(format!("attach {XDP_PROG}"), e))?;
        if take_over(&pin, prog_fd.as_fd().as_raw_fd()) {
            return Ok(());
        }
        let id = prog
            .attach(ifname, mode)
            .map_err(|e| kerr(format!("attach {XDP_PROG} to {ifname}"), error_chain(&e)))?;
        let link = prog
            .take_link(id)
            .map_err(|e| kerr(format!("attach {XDP_PROG}"), e))?;
        pin_link(link, XDP_PROG, &pin)
    }

    pub fn test_run_tc(&self, egress: bool, packet: &[u8]) -> Result<TestRun, DataplaneError> {
        let name = if egress { TC_EGRESS } else { TC_INGRESS };
        let prog: &SchedClassifier = self
            .tc
            .program(name)
            .ok_or_else(|| kerr("test run", format!("program {name} missing")))?
            .try_into()
            .map_err(|e| kerr("test run", e))?;
        let fd = prog.fd().map_err(|e| kerr("test run", e))?;
        test_run(fd.as_fd().as_raw_fd(), packet, true)
    }

    pub fn test_run_xdp(&self, packet: &[u8]) -> Result<TestRun, DataplaneError> {
        let prog: &Xdp = self
            .xdp
            .program(XDP_PROG)
            .ok_or_else(|| kerr("test run", format!("program {XDP_PROG} missing")))?
            .try_into()
            .map_err(|e| kerr("test run", e))?;
        let fd = prog.fd().map_err(|e| kerr("test run", e))?;
        let mut run = test_run(fd.as_fd().as_raw_fd(), packet, false)?;
        let meta_len = run.packet.len().saturating_sub(packet.len());
        run.meta = run.packet.drain(..meta_len).collect();
        Ok(run)
    }
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// A link pinned by an earlier run: point it at the program just loaded (BPF_LINK_UPDATE,
/// atomic, so forwarding never stops and a new agent version takes effect). Returns false
/// when there is no pin, or a stale one (its interface went away), which is then removed
/// so the caller attaches afresh.
fn take_over(pin: &Path, prog_fd: i32) -> bool {
    use std::os::fd::FromRawFd as _;
    use std::os::unix::ffi::OsStrExt as _;
    if !pin.exists() {
        return false;
    }
    let Ok(path) = std::ffi::CString::new(pin.as_os_str().as_bytes()) else {
        return false;
    };
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let mut get = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: bpf(2) reads the attr, whose path pointer outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &mut get as *mut ObjGet,
            std::mem::size_of::<ObjGet>(),
        )
    };
    if fd < 0 {
        let _ = std::fs::remove_file(pin);
        return false;
    }
    // SAFETY: a fresh fd returned by BPF_OBJ_GET, owned from here on.
    let link = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let mut upd = LinkUpdate {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog_fd as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: bpf(2) only reads the attr.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_UPDATE,
            &mut upd as *mut LinkUpdate,
            std::mem::size_of::<LinkUpdate>(),
        )
    };
    if rc != 0 {
        tracing::info!(pin = %pin.display(), error = %std::io::Error::last_os_error(),
            "ebpf: stale pinned link replaced");
        let _ = std::fs::remove_file(pin);
        return false;
    }
    true
}

fn run_nft(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("nft stdin: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn remove_masquerade() {
    let _ = run_nft(&format!(
        "table inet {NFT_TABLE} {{}}\ndelete table inet {NFT_TABLE}\n"
    ));
}

/// `union bpf_attr` for BPF_PROG_TEST_RUN (the `test` member).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// Larger than `struct __sk_buff`; the kernel accepts zero tails and copies back its size.
const SKB_CTX_LEN: usize = 256;
const SKB_MARK_OFFSET: usize = 8;

/// `skb_ctx`: pass a `__sk_buff` context in and out (tc); XDP runs without one.
fn test_run(prog_fd: i32, packet: &[u8], skb_ctx: bool) -> Result<TestRun, DataplaneError> {
    let mut out = vec![0u8; packet.len() + 512];
    let ctx_in = [0u8; SKB_CTX_LEN];
    let mut ctx_out = [0u8; SKB_CTX_LEN];
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    if skb_ctx {
        attr.ctx_size_in = SKB_CTX_LEN as u32;
        attr.ctx_size_out = SKB_CTX_LEN as u32;
        attr.ctx_in = ctx_in.as_ptr() as u64;
        attr.ctx_out = ctx_out.as_mut_ptr() as u64;
    }
    // SAFETY: bpf(2) reads `attr` and writes at most data_size_out / ctx_size_out bytes into
    // the buffers it points at, which outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if rc != 0 {
        return Err(io_err("BPF_PROG_TEST_RUN", std::io::Error::last_os_error()));
    }
    out.truncate(attr.data_size_out as usize);
    let mark = u32::from_ne_bytes(
        ctx_out[SKB_MARK_OFFSET..SKB_MARK_OFFSET + 4]
            .try_into()
            .unwrap_or([0; 4]),
    );
    Ok(TestRun {
        verdict: attr.retval,
        packet: out,
        mark,
        meta: Vec::new(),
    })
}

//! Small root-only namespace harness for the eBPF dataplane tests: network namespaces,
//! a test cgroup, a private bpffs directory, echo servers that answer with their name and the
//! peer they saw, and clients run as processes inside the test cgroup.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sluice_dp_ebpf::{EbpfConfig, EbpfDataplane, XdpMode, find_cgroup2_root};
use sluice_plan::{Protocol, ServicePortName};

mod shim;
pub use shim::*;

use sluice_compute::Planner;
use sluice_dataplane::{ApplyReport, Dataplane};
use sluice_model::ChangeSet;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique suffix `{pid}x{n}`; the pid lets [`sweep`] recognise leftovers of dead runs.
pub fn unique() -> String {
    sweep();
    format!(
        "{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Once per process: removes namespaces, pin directories and cgroups that earlier runs of
/// these tests left behind (their pid is gone), e.g. after a SIGKILL.
fn sweep() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dead = |rest: &str| {
            let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            !pid.is_empty()
                && rest[pid.len()..].starts_with('x')
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        };
        let entries = |dir: &std::path::Path| -> Vec<String> {
            std::fs::read_dir(dir)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        for name in entries(std::path::Path::new("/run/netns")) {
            // sle + one prefix letter + {pid}x{n}
            if let Some(rest) = name.strip_prefix("sle")
                && rest.len() > 1
                && dead(&rest[1..])
            {
                let _ = sh(&format!("ip netns del {name}"));
            }
        }
        for name in entries(std::path::Path::new("/sys/fs/bpf")) {
            if let Some(rest) = name.strip_prefix("sluice-test-")
                && dead(rest)
            {
                let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/{name}"));
            }
        }
        if let Some(root) = find_cgroup2_root() {
            for name in entries(&root) {
                if let Some(rest) = name.strip_prefix("sluice-ebpf-test-")
                    && dead(rest)
                {
                    let _ = std::fs::remove_dir(root.join(&name));
                }
            }
        }
    });
}

pub fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh").arg("-c").arg(cmd).output()?;
    if !out.status.success() {
        bail!("`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Result<Self> {
        let name = format!("sle{prefix}{}", unique());
        sh(&format!(
            "ip netns add {name} && ip -n {name} link set lo up"
        ))?;
        Ok(Netns { name })
    }

    pub fn ip(&self, args: &str) -> Result<String> {
        sh(&format!("ip -n {} {args}", self.name))
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {}", self.name));
    }
}

/// Runs `f` on a thread that has entered the network namespace (setns is per thread).
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(&path);
            f()
        })
        .join()
        .expect("namespace thread panicked")
    })
}

fn enter(path: &str) {
    let f = std::fs::File::open(path).expect("open netns");
    // SAFETY: setns on a valid namespace fd only changes this thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// TCP server in `ns` answering every connection with `"<name> <peer-ip>\n"`.
pub fn tcp_echo(ns: &str, addr: SocketAddr, name: &str) {
    let path = format!("/run/netns/{ns}");
    let name = name.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        enter(&path);
        let l = TcpListener::bind(addr).expect("bind");
        tx.send(()).expect("ready");
        for mut c in l.incoming().flatten() {
            let peer = c
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let _ = c.write_all(format!("{name} {peer}\n").as_bytes());
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("server ready");
}

/// TCP server in `ns` that greets with `"<name> <peer-ip>\n"` and then echoes every line
/// back as `"<name>: <line>\n"` for as long as the client keeps the connection.
pub fn tcp_line_echo(ns: &str, addr: SocketAddr, name: &str) {
    let path = format!("/run/netns/{ns}");
    let name = name.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        enter(&path);
        let l = TcpListener::bind(addr).expect("bind");
        tx.send(()).expect("ready");
        for c in l.incoming().flatten() {
            let name = name.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                let mut w = match c.try_clone() {
                    Ok(w) => w,
                    Err(_) => return,
                };
                let peer = c
                    .peer_addr()
                    .map(|p| p.ip().to_string())
                    .unwrap_or_default();
                let _ = w.write_all(format!("{name} {peer}\n").as_bytes());
                for line in std::io::BufReader::new(c).lines() {
                    let Ok(line) = line else { return };
                    if w.write_all(format!("{name}: {line}\n").as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("server ready");
}

/// A TCP connection opened from a namespace and kept open.
pub struct Held {
    reader: std::io::BufReader<std::net::TcpStream>,
    writer: std::net::TcpStream,
}

impl Held {
    pub fn open(ns: &str, addr: SocketAddr) -> Result<(Self, String)> {
        let c = in_ns(ns, || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        })?;
        c.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut held = Held {
            writer: c.try_clone()?,
            reader: std::io::BufReader::new(c),
        };
        let greeting = held.read_line()?;
        Ok((held, greeting))
    }

    fn read_line(&mut self) -> Result<String> {
        use std::io::BufRead;
        let mut s = String::new();
        self.reader.read_line(&mut s)?;
        Ok(s.trim().to_string())
    }

    /// Sends a line and returns the answer.
    pub fn send(&mut self, line: &str) -> Result<String> {
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        self.read_line()
    }
}

/// UDP server in `ns` answering every datagram with `"<name> <peer-ip>\n"`.
pub fn udp_echo(ns: &str, addr: SocketAddr, name: &str) {
    let path = format!("/run/netns/{ns}");
    let name = name.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        enter(&path);
        let s = UdpSocket::bind(addr).expect("bind");
        tx.send(()).expect("ready");
        let mut buf = [0u8; 1500];
        while let Ok((_, peer)) = s.recv_from(&mut buf) {
            let _ = s.send_to(format!("{name} {}\n", peer.ip()).as_bytes(), peer);
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("server ready");
}

/// TCP client from a thread in `ns` (not in any test cgroup): the response or the error.
pub fn tcp_get(ns: &str, addr: SocketAddr) -> Result<String> {
    in_ns(ns, || {
        let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        c.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok(s.trim().to_string())
    })
}

pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new() -> Result<Self> {
        let root = find_cgroup2_root().context("no cgroup2 mount")?;
        let path = root.join(format!("sluice-ebpf-test-{}", unique()));
        std::fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(TestCgroup { path })
    }

    /// Runs a python snippet as a process in this cgroup and in `ns`; returns its stdout.
    pub fn python(&self, ns: &Netns, code: &str) -> Result<String> {
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec python3 -c \"$0\"",
            self.path.display()
        );
        let out = Command::new("nsenter")
            .arg(format!("--net={}", ns.path()))
            .args(["bash", "-c", &script, code])
            .output()?;
        if !out.status.success() {
            bail!("client failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub fn ebpf_config(cgroup: &TestCgroup, interfaces: Vec<String>) -> EbpfConfig {
    EbpfConfig {
        bpffs_path: PathBuf::from(format!("/sys/fs/bpf/sluice-test-{}", unique())),
        cgroup_path: cgroup.path.clone(),
        interfaces,
        xdp: XdpMode::Off,
        map_sizes: Default::default(),
        conntrack: Default::default(),
    }
}

/// Removes the pin directory (and the masquerade table of that namespace) even when a test
/// fails before calling cleanup.
pub struct PinGuard {
    pub config: EbpfConfig,
    pub ns: String,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let config = self.config.clone();
        if std::path::Path::new(&format!("/run/netns/{}", self.ns)).exists() {
            in_ns(&self.ns, move || {
                let _ = sluice_dp_ebpf::cleanup(&config);
            });
        } else {
            // Namespace already gone: its nft table went with it, only pins remain.
            let _ = std::fs::remove_dir_all(&config.bpffs_path);
        }
    }
}

pub fn spn(name: &str, proto: Protocol) -> ServicePortName {
    ServicePortName::new("default", name, "", proto)
}

pub fn ep(ip: &str, port: u16, local: bool) -> Endpoint {
    Endpoint {
        ip: ip.parse().expect("ip"),
        port,
        is_local: local,
    }
}

/// `BPF_TCX_INGRESS` (kernel ≥ 6.6; Debian 12's headers predate it).
pub const BPF_TCX_INGRESS: u32 = 46;
pub const BPF_CGROUP_INET4_CONNECT: u32 = 10;

/// How many programs are attached at (target, attach type): BPF_PROG_QUERY. `target` is a
/// cgroup fd, or an ifindex for tcx (resolved in the calling thread's namespace).
pub fn attached_count(target: u32, attach_type: u32) -> Result<u32> {
    #[repr(C)]
    #[derive(Default)]
    struct Query {
        target: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }
    let mut q = Query {
        target,
        attach_type,
        ..Default::default()
    };
    // SAFETY: bpf(2) reads the attr and writes counts back into it; no buffers are passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            16, // BPF_PROG_QUERY
            &mut q as *mut Query,
            std::mem::size_of::<Query>(),
        )
    };
    if rc != 0 {
        bail!("BPF_PROG_QUERY: {}", std::io::Error::last_os_error());
    }
    Ok(q.prog_cnt)
}

pub fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("name");
    // SAFETY: `c` is a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// Programs a dataplane the way the agent does: the first state by `resync`, every later one
/// as the planner's delta (with its stale flows).
#[derive(Default)]
pub struct Programmer {
    planner: Option<Planner>,
}

impl Programmer {
    pub fn program(&mut self, dp: &mut EbpfDataplane, d: &DesiredState) -> Result<ApplyReport> {
        match self.planner.as_mut() {
            None => {
                let mut planner = Planner::new(d.config());
                planner.update(&d.snapshot(), &ChangeSet::everything(), &d.node());
                let report = dp.resync(planner.plan())?;
                self.planner = Some(planner);
                Ok(report)
            }
            Some(planner) => {
                let delta = planner.update(&d.snapshot(), &ChangeSet::everything(), &d.node());
                Ok(dp.apply(&delta)?)
            }
        }
    }
}

//! Attachments: socket-LB on the cgroup, tc (tcx) and XDP on the external interfaces, each a
//! bpf_link pinned under `<bpffs>/links/` so forwarding outlives the agent. A pinned link of
//! an earlier run (or of the programs before a map grew) is pointed at the programs just
//! loaded with `BPF_LINK_UPDATE`, atomically, instead of being attached twice.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aya::Ebpf;
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType, Xdp};
use sluice_hostnet::HostNetwork;

use crate::XdpMode;
use crate::kernel::load::{
    LoadError, Programs, SOCK_PROGS, TC_EGRESS, TC_INGRESS, XDP_PROG, program, program_fd,
};
use crate::kernel::sys;
use crate::links::wanted_interfaces;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Program(#[from] LoadError),
    #[error("attaching {program} to {target}")]
    Attach {
        program: &'static str,
        target: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("pinning the link of {program} at {pin}")]
    Pin {
        program: &'static str,
        pin: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("opening cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A link pinned by an earlier run: point it at `prog` (atomic, so forwarding never stops
/// and a new version takes effect). False when there is no pin, or a stale one (its
/// interface went away), which is then removed so the caller attaches afresh.
pub fn take_over(pin: &Path, prog: std::os::fd::BorrowedFd<'_>) -> bool {
    if !pin.exists() {
        return false;
    }
    let updated = sys::obj_get(pin).and_then(|link| sys::link_update(link.as_fd(), prog));
    match updated {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(pin = %pin.display(), error = %e, "ebpf: stale pinned link replaced");
            let _ = std::fs::remove_file(pin);
            false
        }
    }
}

/// Points every pinned link under `links_dir` at the matching program of `programs`.
pub fn relink_all(links_dir: &Path, programs: &Programs) -> usize {
    let mut moved = 0;
    for entry in std::fs::read_dir(links_dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(prog) = programs.for_link(&name)
            && take_over(&entry.path(), prog)
        {
            moved += 1;
        }
    }
    moved
}

fn pin_link<L>(link: L, program: &'static str, pin: &Path) -> Result<(), AttachError>
where
    L: TryInto<FdLink>,
    L::Error: std::error::Error + Send + Sync + 'static,
{
    let pin_err = |source: Box<dyn std::error::Error + Send + Sync>| AttachError::Pin {
        program,
        pin: pin.to_path_buf(),
        source,
    };
    let fd: FdLink = link.try_into().map_err(|e| pin_err(Box::new(e)))?;
    fd.pin(pin).map_err(|e| pin_err(Box::new(e)))?;
    Ok(())
}

/// Attaches socket-LB to the cgroup (or takes over the pinned links).
pub fn attach_cgroup(sock: &mut Ebpf, links_dir: &Path, cgroup: &Path) -> Result<(), AttachError> {
    let dir = File::open(cgroup).map_err(|source| AttachError::Cgroup {
        path: cgroup.to_path_buf(),
        source,
    })?;
    for name in SOCK_PROGS {
        let pin = links_dir.join(format!("cg_{name}"));
        if let Some(fd) = program_fd(sock, name)
            && take_over(&pin, fd)
        {
            continue;
        }
        let prog: &mut CgroupSockAddr = program(sock, name)?;
        let attach_err = |source| AttachError::Attach {
            program: name,
            target: cgroup.display().to_string(),
            source,
        };
        // A cgroup bpf_link takes no attach flags (links always coexist): Single = 0.
        let id = prog
            .attach(dir.as_fd(), CgroupAttachMode::Single)
            .map_err(attach_err)?;
        let link = prog.take_link(id).map_err(attach_err)?;
        pin_link(link, name, &pin)?;
    }
    Ok(())
}

/// Owns the tc and XDP programs and knows which interfaces they should be on.
pub struct Attacher {
    pub tc: Ebpf,
    pub xdp: Ebpf,
    pub xdp_mode: XdpMode,
    pub links_dir: PathBuf,
    pub attached: BTreeSet<(String, u32)>,
    /// `--interfaces` when given; else the interfaces carrying `addresses`.
    pub interfaces: Vec<String>,
    pub addresses: Vec<IpAddr>,
    /// Where links and addresses are read from.
    pub net: Arc<dyn HostNetwork>,
}

impl Attacher {
    /// Attaches to every wanted interface that does not have the programs yet. Failures on
    /// one interface are logged and do not stop the others.
    pub fn sync(&mut self) {
        let wanted = wanted_interfaces(self.net.as_ref(), &self.interfaces, &self.addresses);
        for (ifname, ifindex) in wanted {
            if self.attached.contains(&(ifname.clone(), ifindex)) {
                continue;
            }
            match self.attach(&ifname, ifindex) {
                Ok(()) => {
                    tracing::info!(interface = %ifname, "ebpf: tc programs attached");
                    self.attached.insert((ifname, ifindex));
                }
                Err(e) => tracing::warn!(interface = %ifname,
                    "ebpf: cannot attach tc: {}", sluice_dataplane::error_chain(&e)),
            }
        }
    }

    fn attach(&mut self, ifname: &str, ifindex: u32) -> Result<(), AttachError> {
        for (name, ty, suffix) in [
            (TC_INGRESS, TcAttachType::Ingress, "in"),
            (TC_EGRESS, TcAttachType::Egress, "eg"),
        ] {
            let pin = self.links_dir.join(format!("tc_{ifindex}_{suffix}"));
            if let Some(fd) = program_fd(&self.tc, name)
                && take_over(&pin, fd)
            {
                continue;
            }
            let prog: &mut SchedClassifier = program(&mut self.tc, name)?;
            let attach_err = |source| AttachError::Attach {
                program: name,
                target: ifname.to_owned(),
                source,
            };
            let id = prog.attach(ifname, ty).map_err(attach_err)?;
            let link = prog.take_link(id).map_err(attach_err)?;
            pin_link(link, name, &pin)?;
        }
        self.attach_xdp(ifname, ifindex)
    }

    fn attach_xdp(&mut self, ifname: &str, ifindex: u32) -> Result<(), AttachError> {
        let mode = match self.xdp_mode {
            XdpMode::Off => return Ok(()),
            XdpMode::Native => aya::programs::XdpMode::Driver,
            XdpMode::Generic => aya::programs::XdpMode::Skb,
        };
        let pin = self.links_dir.join(format!("xdp_{ifindex}"));
        if let Some(fd) = program_fd(&self.xdp, XDP_PROG)
            && take_over(&pin, fd)
        {
            return Ok(());
        }
        let prog: &mut Xdp = program(&mut self.xdp, XDP_PROG)?;
        let attach_err = |source| AttachError::Attach {
            program: XDP_PROG,
            target: ifname.to_owned(),
            source,
        };
        let id = prog.attach(ifname, mode).map_err(attach_err)?;
        let link = prog.take_link(id).map_err(attach_err)?;
        pin_link(link, XDP_PROG, &pin)
    }
}

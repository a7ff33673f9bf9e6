//! Loading the three objects through the verifier with every map at a chosen pin and size.

use std::collections::BTreeMap;
use std::os::fd::{AsFd as _, BorrowedFd};
use std::path::PathBuf;

use aya::programs::{CgroupSockAddr, SchedClassifier, Xdp};
use aya::{Ebpf, EbpfLoader};

use crate::abi::MapKind;
use crate::{SOCK_OBJ, TC_OBJ, XDP_OBJ};

pub const SOCK_PROGS: &[&str] = &[
    "sl_connect4",
    "sl_sendmsg4",
    "sl_recvmsg4",
    "sl_getpeername4",
    "sl_connect6",
    "sl_sendmsg6",
    "sl_recvmsg6",
    "sl_getpeername6",
];
pub const TC_INGRESS: &str = "sl_tc_ingress";
pub const TC_EGRESS: &str = "sl_tc_egress";
pub const XDP_PROG: &str = "sl_xdp";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading the {object} object")]
    Object {
        object: &'static str,
        #[source]
        source: aya::EbpfError,
    },
    #[error("program {program} is missing from its object")]
    Missing { program: String },
    #[error("program {program} has an unexpected type")]
    Type {
        program: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("loading program {program}")]
    Program {
        program: String,
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// Where each map is pinned and, when it must be created, with how many entries; and the
/// values of the programs' `volatile const` settings.
#[derive(Debug, Clone)]
pub struct Layout {
    pub paths: BTreeMap<MapKind, PathBuf>,
    pub capacities: BTreeMap<MapKind, u32>,
    pub globals: Vec<(&'static str, u64)>,
}

/// The loaded objects (their programs verified and loaded, not attached).
pub struct Programs {
    pub sock: Ebpf,
    pub tc: Ebpf,
    pub xdp: Ebpf,
}

impl Programs {
    pub fn load(layout: &Layout) -> Result<Programs, LoadError> {
        let mut sock = load_obj(SOCK_OBJ, "socket-LB", layout)?;
        for name in SOCK_PROGS {
            program::<CgroupSockAddr>(&mut sock, name)?
                .load()
                .map_err(|source| LoadError::Program {
                    program: (*name).into(),
                    source,
                })?;
        }
        let mut tc = load_obj(TC_OBJ, "tc", layout)?;
        for name in [TC_INGRESS, TC_EGRESS] {
            program::<SchedClassifier>(&mut tc, name)?
                .load()
                .map_err(|source| LoadError::Program {
                    program: name.into(),
                    source,
                })?;
        }
        let mut xdp = load_obj(XDP_OBJ, "XDP", layout)?;
        program::<Xdp>(&mut xdp, XDP_PROG)?
            .load()
            .map_err(|source| LoadError::Program {
                program: XDP_PROG.into(),
                source,
            })?;
        Ok(Programs { sock, tc, xdp })
    }

    /// The program a pinned link of that name runs (`cg_sl_connect4`, `tc_7_in`, `xdp_7`).
    pub fn for_link(&self, link: &str) -> Option<BorrowedFd<'_>> {
        let (obj, name) = if let Some(name) = link.strip_prefix("cg_") {
            (&self.sock, name)
        } else if link.starts_with("tc_") && link.ends_with("_in") {
            (&self.tc, TC_INGRESS)
        } else if link.starts_with("tc_") && link.ends_with("_eg") {
            (&self.tc, TC_EGRESS)
        } else if link.starts_with("xdp_") {
            (&self.xdp, XDP_PROG)
        } else {
            return None;
        };
        program_fd(obj, name)
    }
}

fn load_obj(bytes: &[u8], object: &'static str, layout: &Layout) -> Result<Ebpf, LoadError> {
    let mut loader = EbpfLoader::new();
    for (map, path) in &layout.paths {
        loader.map_pin_path(map.name(), path.as_path());
    }
    for (map, capacity) in &layout.capacities {
        loader.map_max_entries(map.name(), *capacity);
    }
    for (name, value) in &layout.globals {
        // Objects that do not use a setting do not carry it.
        loader.override_global(name, value, false);
    }
    loader
        .load(bytes)
        .map_err(|source| LoadError::Object { object, source })
}

/// A program of a loaded object, as its concrete type.
pub fn program<'a, T>(obj: &'a mut Ebpf, name: &str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    obj.program_mut(name)
        .ok_or_else(|| LoadError::Missing {
            program: name.into(),
        })?
        .try_into()
        .map_err(|source| LoadError::Type {
            program: name.into(),
            source,
        })
}

/// The descriptor of a loaded program.
pub fn program_fd<'a>(obj: &'a Ebpf, name: &str) -> Option<BorrowedFd<'a>> {
    let fd = obj.program(name)?.fd().ok()?;
    Some(fd.as_fd())
}

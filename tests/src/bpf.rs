//! Reading identities of pinned BPF objects, so a test can tell "re-used" from "re-created".

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result, bail};

const BPF_OBJ_GET: libc::c_long = 7;

/// `union bpf_attr` as used by `BPF_OBJ_GET`: `pathname` (u64), then `bpf_fd`, `file_flags`
/// and `path_fd` (32 bits each), all zero here; as words so no padding byte is left
/// uninitialised (the kernel rejects non-zero bytes past the fields it knows).
type ObjGetAttr = [u64; 3];

/// The kernel id of the BPF map (or program, or link) pinned at `path`: the same id after an
/// agent restart means the object was re-used, a new id that it was re-created.
pub fn pinned_object_id(path: &Path) -> Result<u32> {
    let c_path = CString::new(path.as_os_str().as_bytes()).context("path with NUL")?;
    let attr: ObjGetAttr = [c_path.as_ptr() as u64, 0, 0];
    // SAFETY: `attr` is a valid, zero-padded bpf_attr for BPF_OBJ_GET whose pathname points
    // at a NUL-terminated string that outlives the call; the size passed is its size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGetAttr,
            std::mem::size_of::<ObjGetAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        bail!(
            "BPF_OBJ_GET {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    let fd = fd as libc::c_int;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"));
    // SAFETY: `fd` was returned by BPF_OBJ_GET above and is owned here.
    unsafe { libc::close(fd) };
    let info = info.with_context(|| format!("fdinfo of {}", path.display()))?;
    info.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| ["map_id", "prog_id", "link_id"].contains(k))
        .and_then(|(_, v)| v.trim().parse().ok())
        .with_context(|| format!("no object id in fdinfo of {}: {info}", path.display()))
}

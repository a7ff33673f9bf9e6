//! The few `bpf(2)` commands aya 0.14 does not offer in the form needed here (byte-level map
//! access with the kernel's errno, batched reads, link update, test runs). Every `unsafe`
//! block of the crate's kernel access is in this file.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::path::Path;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// `BPF_NOEXIST`: insert only when the key is absent.
pub const BPF_NOEXIST: u64 = 1;

/// Calls `bpf(cmd, attr, size_of(attr))`.
///
/// # Safety
/// `attr` must be a valid `union bpf_attr` member for `cmd`: every pointer in it valid for
/// the reads and writes the kernel does for that command, for the duration of the call.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: forwarded to the caller's contract; the size passed is the attr's size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `union bpf_attr` for the element commands.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

pub fn map_update(fd: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        flags,
        ..ElemAttr::default()
    };
    // SAFETY: the kernel reads key_size bytes of `key` and value_size bytes of `value`; the
    // callers pass buffers of exactly the map's sizes (checked by `MapHandle`).
    unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }.map(drop)
}

/// Deletes `key`; `Ok(false)` when it was not there.
pub fn map_delete(fd: BorrowedFd<'_>, key: &[u8]) -> io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        ..ElemAttr::default()
    };
    // SAFETY: the kernel reads key_size bytes of `key` (a buffer of the map's key size).
    match unsafe { bpf(BPF_MAP_DELETE_ELEM, &mut attr) } {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Looks `key` up into `value`; `Ok(false)` when absent.
pub fn map_lookup(fd: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value: value.as_mut_ptr() as u64,
        ..ElemAttr::default()
    };
    // SAFETY: the kernel reads key_size bytes of `key` and writes value_size bytes into
    // `value`; both are buffers of the map's sizes.
    match unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) } {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The key after `key` (the first key for `None`) into `next`; `Ok(false)` at the end.
pub fn map_next_key(fd: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key.map_or(0, |k| k.as_ptr() as u64),
        value: next.as_mut_ptr() as u64,
        ..ElemAttr::default()
    };
    // SAFETY: the kernel reads key_size bytes of `key` (or nothing for a null key) and
    // writes key_size bytes into `next`; both have the map's key size.
    match unsafe { bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) } {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `union bpf_attr` for `BPF_MAP_LOOKUP_BATCH`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// One batch of a hash map's entries after the cursor `cursor` (`None`: from the start):
/// fills `keys`/`values` (room for `room` entries each) and returns how many came and
/// whether the map is exhausted. `cursor` is updated for the next call.
pub fn map_lookup_batch(
    fd: BorrowedFd<'_>,
    cursor: &mut Option<u64>,
    keys: &mut [u8],
    values: &mut [u8],
    room: u32,
) -> io::Result<(usize, bool)> {
    let in_batch = *cursor;
    let mut out_batch = 0u64;
    let mut attr = BatchAttr {
        in_batch: in_batch.as_ref().map_or(0, |c| c as *const u64 as u64),
        out_batch: &mut out_batch as *mut u64 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: room,
        map_fd: fd.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: the kernel reads the cursor (8 bytes: hash map cursors are 4), writes the next
    // cursor into `out_batch`, and at most `room` keys and values into the buffers, which the
    // caller sized as `room` times the key and value sizes.
    let result = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
    let got = attr.count as usize;
    *cursor = Some(out_batch);
    match result {
        Ok(_) => Ok((got, false)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok((got, true)),
        Err(e) => Err(e),
    }
}

/// Opens the BPF object pinned at `path` (map, program or link).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // `pathname` (u64), then `bpf_fd`, `file_flags`, `path_fd`: all zero, as words so no
    // padding byte is left uninitialised.
    let mut attr: [u64; 3] = [c.as_ptr() as u64, 0, 0];
    // SAFETY: the kernel reads the NUL-terminated path `c`, which outlives the call.
    let fd = unsafe { bpf(BPF_OBJ_GET, &mut attr) }?;
    // SAFETY: a fresh descriptor returned by BPF_OBJ_GET, owned from here on.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Points a link at another program (atomic: no packet or connect goes unhandled).
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let mut attr = LinkUpdate {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: the attr holds only descriptors; the kernel only reads it.
    unsafe { bpf(BPF_LINK_UPDATE, &mut attr) }.map(drop)
}

/// `union bpf_attr` for `BPF_PROG_TEST_RUN` (the `test` member).
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

/// Runs a program once on `packet`: returns its verdict and fills `out` (the packet after
/// the run, truncated to its length) and `ctx` (context in and out, when given).
pub fn prog_test_run(
    prog: BorrowedFd<'_>,
    packet: &[u8],
    out: &mut Vec<u8>,
    ctx: Option<&mut [u8]>,
) -> io::Result<u32> {
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..TestRunAttr::default()
    };
    if let Some(ctx) = ctx {
        attr.ctx_size_in = ctx.len() as u32;
        attr.ctx_size_out = ctx.len() as u32;
        attr.ctx_in = ctx.as_ptr() as u64;
        attr.ctx_out = ctx.as_mut_ptr() as u64;
    }
    // SAFETY: the kernel reads `packet` and the context, and writes at most data_size_out /
    // ctx_size_out bytes into `out` / the context, all of which outlive the call.
    unsafe { bpf(BPF_PROG_TEST_RUN, &mut attr) }?;
    out.truncate(attr.data_size_out as usize);
    Ok(attr.retval)
}

/// `statfs(2)` file system magic of `path`.
pub fn fs_magic(path: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: all-zero bytes are a valid `statfs`.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs writes only into `st`; `c` is a valid C string.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)]
    Some(st.f_type as i64)
}

/// Mounts a bpffs on /sys/fs/bpf.
pub fn mount_bpffs() -> io::Result<()> {
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
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `CLOCK_MONOTONIC` now in nanoseconds: the clock of `bpf_ktime_get_ns` (conntrack times).
pub fn monotonic_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; no other preconditions.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u64::try_from(ts.tv_nsec).ok()?;
    (rc == 0).then(|| secs * 1_000_000_000 + nanos)
}

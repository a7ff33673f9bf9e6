//! Host-wide facts and housekeeping: the cgroup2 and bpffs mounts, unique name prefixes, and
//! the sweep that removes what crashed runs left behind.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::netns;
use crate::process::run_host;

/// Where bpffs is (or gets) mounted.
pub const BPFFS: &str = "/sys/fs/bpf";

/// `(mount point, fstype)` of every mount of this process.
fn mounts() -> Vec<(String, String)> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _dev = f.next()?;
            Some((f.next()?.to_owned(), f.next()?.to_owned()))
        })
        .collect()
}

/// The cgroup v2 mount point (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on
/// hybrid ones).
pub fn cgroup2_root() -> Result<PathBuf> {
    mounts()
        .into_iter()
        .find(|(_, fstype)| fstype == "cgroup2")
        .map(|(mnt, _)| PathBuf::from(mnt))
        .context("no cgroup2 mount in /proc/self/mounts")
}

fn ensure_bpffs() -> Result<()> {
    if mounts()
        .iter()
        .any(|(mnt, fstype)| mnt == BPFFS && fstype == "bpf")
    {
        return Ok(());
    }
    run_host("mount", &["-t", "bpf", "bpf", BPFFS], None).map(drop)
}

/// A name prefix unique to this process and cluster: `sl{pid}x{n}`.
pub(crate) fn new_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "sl{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The pid encoded in a name made by [`new_prefix`] (`sl{pid}x{n}` or `sl{pid}x{n}-...`).
pub(crate) fn prefix_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("sl")?;
    let (pid, rest) = rest.split_once('x')?;
    let n: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    if n.is_empty() || !(rest.len() == n.len() || rest[n.len()..].starts_with('-')) {
        return None;
    }
    pid.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn is_stale(name: &str) -> bool {
    prefix_pid(name).is_some_and(|pid| !pid_alive(pid))
}

/// Holds an exclusive flock on a host-wide lock file, so parallel test binaries do not mount
/// bpffs twice or sweep each other.
struct HostLock {
    // Held only to keep the lock; closing the fd releases it.
    _file: File,
}

impl HostLock {
    fn take() -> Result<HostLock> {
        let file = File::create("/run/sluice-tests.lock").context("creating lock file")?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error()).context("flock");
        }
        Ok(HostLock { _file: file })
    }
}

/// Once per process: mount bpffs if needed and sweep leftovers of dead runs.
pub(crate) fn prepare() -> Result<()> {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return Ok(());
    }
    let _lock = HostLock::take()?;
    ensure_bpffs()?;
    sweep()?;
    *done = true;
    Ok(())
}

/// Removes namespaces, cgroups, bpffs directories and work directories whose prefix names a
/// process that no longer exists.
pub fn sweep() -> Result<()> {
    for ns in netns::list() {
        if is_stale(&ns) {
            netns::kill_processes(&ns);
        }
    }
    for ns in netns::list() {
        if is_stale(&ns)
            && let Err(e) = netns::delete(&ns)
        {
            eprintln!("sweep: {e:#}");
        }
    }
    let cg_root = cgroup2_root()?;
    for dir in stale_children(&cg_root) {
        if let Err(e) = remove_cgroup(&dir) {
            eprintln!("sweep: {e:#}");
        }
    }
    for dir in stale_children(Path::new(BPFFS))
        .into_iter()
        .chain(stale_children(&std::env::temp_dir()))
    {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            eprintln!("sweep: removing {}: {e}", dir.display());
        }
    }
    Ok(())
}

fn stale_children(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_str().is_some_and(is_stale))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills every process in a cgroup v2 directory and removes it.
pub(crate) fn remove_cgroup(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    // cgroup.kill (Linux 5.14+) SIGKILLs all members at once.
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    for _ in 0..200 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if procs.trim().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Members may take a moment to leave after dying (zombies being reaped).
    let mut last = None;
    for _ in 0..100 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match last {
        Some(e) => Err(e).with_context(|| format!("removing cgroup {}", dir.display())),
        None => bail!("removing cgroup {}", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_pid_parses_only_our_names() {
        assert_eq!(prefix_pid("sl123x0"), Some(123));
        assert_eq!(prefix_pid("sl123x4-node-a"), Some(123));
        assert_eq!(prefix_pid("sl123x4-pod-web-1"), Some(123));
        assert_eq!(prefix_pid("slow"), None);
        assert_eq!(prefix_pid("sl123x"), None);
        assert_eq!(prefix_pid("sl123x4node"), None);
        assert_eq!(prefix_pid("sluice"), None);
        assert_eq!(prefix_pid("system.slice"), None);
    }

    #[test]
    fn our_own_prefix_is_never_stale() {
        let p = new_prefix();
        assert_eq!(prefix_pid(&p), Some(std::process::id()));
        assert!(!is_stale(&format!("{p}-lan")));
    }
}

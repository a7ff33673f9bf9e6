//! Network namespaces, links and sysctls, through `ip` (iproute2) and setns(2).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};

use crate::process::{run_host, signal};

pub(crate) const NETNS_DIR: &str = "/run/netns";

pub(crate) fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

pub(crate) fn add(name: &str) -> Result<()> {
    run_host("ip", &["netns", "add", name], None).map(drop)
}

/// Names of all named network namespaces.
pub(crate) fn list() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills every process in the namespace, then deletes it (and with it its links).
pub(crate) fn delete(name: &str) -> Result<()> {
    kill_processes(name);
    run_host("ip", &["netns", "del", name], None).map(drop)
}

pub(crate) fn kill_processes(name: &str) {
    if let Ok(pids) = run_host("ip", &["netns", "pids", name], None) {
        for pid in pids.split_whitespace().filter_map(|p| p.parse().ok()) {
            signal(pid, libc::SIGKILL);
        }
    }
}

/// Runs iproute2 commands (one per line, without the leading `ip`) inside namespace `ns`.
pub(crate) fn ip_batch(ns: &str, commands: &[String]) -> Result<()> {
    let input = commands.join("\n") + "\n";
    run_host("ip", &["-n", ns, "-batch", "-"], Some(&input))
        .map(drop)
        .with_context(|| format!("configuring namespace {ns}"))
}

/// Writes sysctls (`net.ipv4.ip_forward` style keys) inside namespace `ns`. /proc/sys/net
/// belongs to the opening thread's namespace, so a short-lived thread joins it.
pub(crate) fn sysctls(ns: &str, values: &[(&str, &str)]) -> Result<()> {
    let file = File::open(path(ns)).with_context(|| format!("opening namespace {ns}"))?;
    let fd = file.as_raw_fd();
    let values: Vec<(String, String)> = values
        .iter()
        .map(|(k, v)| (format!("/proc/sys/{}", k.replace('.', "/")), v.to_string()))
        .collect();
    std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            // SAFETY: setns on a valid namespace fd; it changes only this thread, which ends
            // right after.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            for (key, value) in &values {
                std::fs::write(key, value).with_context(|| format!("writing {key}={value}"))?;
            }
            Ok(())
        })
        .join()
        .map_err(|_| anyhow!("sysctl thread panicked"))?
    })
    .with_context(|| format!("sysctls in namespace {ns}"))
}

/// Turns off tx checksum offload on a link: veths otherwise pass packets with partial
/// checksums, which an XDP NAT cannot fix up.
pub(crate) fn tx_offload_off(ns: &str, link: &str) -> Result<()> {
    let net = format!("--net={}", path(ns).display());
    run_host("nsenter", &[&net, "ethtool", "-K", link, "tx", "off"], None).map(drop)
}

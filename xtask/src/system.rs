//! System packages the build and the tests need, checked by what they provide.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

/// (what must exist, Debian/Ubuntu package providing it). `bin:` is searched in PATH and the
/// sbin directories; anything else is a file path.
const NEEDS: &[(&str, &str)] = &[
    ("bin:clang-19", "clang-19"),
    ("/usr/include/bpf/bpf_helpers.h", "libbpf-dev"),
    ("bin:nft", "nftables"),
    ("bin:ip", "iproute2"),
    ("bin:tc", "iproute2"),
    ("bin:conntrack", "conntrack"),
    // `--cleanup-kube-proxy` and its test (kube-proxy's iptables rules).
    ("bin:iptables-nft-save", "iptables"),
    ("bin:ethtool", "ethtool"),
    ("bin:curl", "curl"),
    ("bin:nsenter", "util-linux"),
    ("bin:openssl", "openssl"),
];

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn has_binary(name: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .any(|dir| Path::new(dir).join(name).is_file())
}

fn present(need: &str) -> bool {
    match need.strip_prefix("bin:") {
        Some(binary) => has_binary(binary),
        None => Path::new(need).exists(),
    }
}

/// The packages that are missing, without duplicates.
fn missing_of(needs: &[(&str, &'static str)]) -> Vec<&'static str> {
    let mut missing: Vec<&'static str> = needs
        .iter()
        .filter(|(need, _)| !present(need))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    missing
}

/// Installs missing packages when root on a Debian-like system, else stops with the list.
pub fn ensure_packages() -> Result<()> {
    ensure(NEEDS)
}

/// Like [`ensure_packages`] for another list of (what must exist, package).
pub fn ensure(needs: &[(&str, &'static str)]) -> Result<()> {
    let missing = missing_of(needs);
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() || !has_binary("apt-get") {
        bail!("missing system packages: {list}\ninstall them with: sudo apt-get install -y {list}");
    }
    eprintln!("installing missing system packages: {list}");
    let update = Command::new("apt-get").args(["update", "-qq"]).status()?;
    if !update.success() {
        bail!("apt-get update failed; install by hand: apt-get install -y {list}");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !status.success() {
        bail!("apt-get install {list} failed");
    }
    let still = missing_of(needs);
    if !still.is_empty() {
        bail!("still missing after install: {}", still.join(" "));
    }
    Ok(())
}

//! Namespaced test cluster for sluice's end-to-end tests (needs root).
//!
//! A [`Cluster`] is made of network namespaces: an underlay bridge (`{prefix}-lan`), one
//! namespace per node, one per echo pod (veth'd to its node, Calico style) and a `client`
//! outside the cluster, all dual-stack. Pods run `sluice-echo`, which answers with its pod
//! name and the client address it saw. Everything is removed on drop, also on panic, and a
//! sweep at first use removes what crashed runs left behind.
//!
//! ```no_run
//! use sluice_tests::{At, Cluster, tally};
//! # fn main() -> anyhow::Result<()> {
//! let mut c = Cluster::new(&["node-a", "node-b"])?;
//! let web = c.add_pod("node-b", "web-1")?;
//! let r = c.tcp(At::Pod("web-1"), web.v4(8080), 3)?;
//! assert_eq!(tally(&r), [("web-1".to_string(), 3)].into());
//! # Ok(()) }
//! ```
//!
//! Addressing: node `i` (1-based) is 192.0.2.(10+i) / 2001:db8::(10+i) on the underlay and
//! owns pod CIDRs 10.244.i.0/24 / fd00:10:244:i::/64; the client is 192.0.2.100 / 2001:db8::100.

pub mod apiserver;
pub mod bins;
mod bpf;
mod host;
pub mod manifests;
mod netns;
mod probe;
mod process;
mod topology;

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

pub use bpf::pinned_object_id;
pub use host::{cgroup2_root, sweep};
pub use probe::{
    EchoReply, HeldConn, HttpReply, ProbeError, ProbeOpts, ProbeResults, Proto, tally,
};
pub use topology::{
    AGENT_HEALTHZ, AGENT_METRICS, At, CLIENT_V4, CLIENT_V6, CLUSTER_CIDRS, Cluster, ECHO_HTTP_PORT,
    ECHO_SCTP_PORT, ECHO_TCP_PORT, ECHO_UDP_PORT, EchoPorts, Mode, Node, Pod, sctp_supported,
};

/// True when running as root; otherwise prints why the calling test is skipped.
/// Use as `if !sluice_tests::require_root("my_test") { return; }`.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipping {test}: needs root (network namespaces, cgroups)");
    }
    root
}

/// Polls `check` (every 50 ms) until it returns `Ok(true)`; an `Err` from `check` stops at
/// once. Fails with `what` after `timeout`.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    wait_for(timeout, what, || Ok(check()?.then_some(())))
}

/// Polls `check` until it returns `Ok(Some(value))` and returns the value.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `backend_tests!(scenario, ...)` makes, for each `fn scenario(mode: Mode) -> anyhow::Result<()>`
/// in the calling file, a `mod scenario { fn nftables(), fn ebpf() }` pair of tests, each
/// skipped with a printed reason when not root. This is how one suite runs against every
/// dataplane (`cargo test -p sluice-tests ebpf` runs one backend).
#[macro_export]
macro_rules! backend_tests {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[test]
            fn nftables() -> anyhow::Result<()> {
                if !$crate::require_root(concat!(stringify!($scenario), "::nftables")) {
                    return Ok(());
                }
                super::$scenario($crate::Mode::Nftables)
            }
            #[test]
            fn ebpf() -> anyhow::Result<()> {
                if !$crate::require_root(concat!(stringify!($scenario), "::ebpf")) {
                    return Ok(());
                }
                super::$scenario($crate::Mode::Ebpf)
            }
        }
    )*};
}

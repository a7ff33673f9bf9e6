//! `RtNetlink` against the real kernel, inside network namespaces these tests create and
//! delete (also when a test fails). Root only; skipped with a printed reason otherwise.

use std::future::Future;
use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use nix::sched::{CloneFlags, setns};
use sluice_hostnet::{Change, Changes, HostNetwork, MacAddr, NeighbourState, RtNetlink, Scope};

const PREFIX: &str = "slh";

macro_rules! root_only {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (creates network namespaces)");
            return Ok(());
        }
    };
}

fn is_root() -> bool {
    // "Uid: real effective saved fs"
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?.to_owned();
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

fn sh(cmd: &str) -> Result<()> {
    let out = Command::new("sh").arg("-c").arg(cmd).output()?;
    if !out.status.success() {
        bail!("`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A network namespace named `slh{pid}x{n}`, deleted on drop (also while unwinding).
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Result<Netns> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(sweep);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{PREFIX}{}x{n}", std::process::id());
        sh(&format!(
            "ip netns add {name} && ip -n {name} link set lo up"
        ))?;
        Ok(Netns { name })
    }

    fn ip(&self, args: &str) -> Result<()> {
        sh(&format!("ip -n {} {args}", self.name))
    }

    /// Runs `f` on a thread inside the namespace (setns is per thread).
    fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let ns = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
                    setns(ns, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns {path}"))?;
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs `f` in the namespace on a current-thread runtime (subscriptions need one).
    fn run_async<T: Send, F: Future<Output = Result<T>>>(
        &self,
        f: impl FnOnce() -> F + Send,
    ) -> Result<T> {
        self.run(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(f())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {}", self.name));
    }
}

/// Removes namespaces left by earlier runs that were killed (their pid is gone).
fn sweep() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((pid, _)) = name.strip_prefix(PREFIX).and_then(|r| r.split_once('x')) else {
            continue;
        };
        if pid.chars().all(|c| c.is_ascii_digit())
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = sh(&format!("ip netns del {name}"));
        }
    }
}

/// Waits (5 s at most) for a change matching `wanted`; returns every change seen until then.
async fn expect(
    changes: &mut Changes,
    what: &str,
    wanted: impl Fn(&Change) -> bool,
) -> Result<Vec<Change>> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(change) = changes.recv().await {
            let done = wanted(&change);
            seen.push(change);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    match found {
        Ok(true) => Ok(seen),
        Ok(false) => bail!("notifications ended before {what}; saw {seen:?}"),
        Err(_) => bail!("no notification of {what} within 5 s; saw {seen:?}"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

#[test]
fn listings_show_the_links_addresses_and_neighbours_of_the_namespace() -> Result<()> {
    root_only!();
    let ns = Netns::new()?;
    ns.ip("link add a0 address 02:00:00:00:00:a0 type veth peer name b0")?;
    ns.ip("addr add 10.201.0.1/24 dev a0")?;
    ns.ip("addr add fd20::1/64 dev a0 nodad")?;
    ns.ip("link set a0 up")?;
    ns.ip("neigh add 10.201.0.9 lladdr 02:00:00:00:00:09 dev a0 nud permanent")?;

    ns.run(|| {
        let net = RtNetlink::new();
        let links = net.links()?;
        let mut names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["a0", "b0", "lo"]);
        let a0 = links.iter().find(|l| l.name == "a0").context("a0 listed")?;
        assert!(a0.up, "a0 was set up");
        assert_eq!(a0.mac, Some(MacAddr([2, 0, 0, 0, 0, 0xa0])));
        assert_eq!(a0.kind.as_deref(), Some("veth"));
        let b0 = links.iter().find(|l| l.name == "b0").context("b0 listed")?;
        assert!(!b0.up, "b0 stays down");
        assert_eq!(net.link_index("a0")?, Some(a0.index));
        assert_eq!(net.link_index("nosuch0")?, None);

        let addresses = net.addresses()?;
        let v4 = addresses
            .iter()
            .find(|a| a.ip == ip("10.201.0.1"))
            .context("10.201.0.1 listed")?;
        assert_eq!(
            (v4.ifindex, v4.ifname.as_str(), v4.prefix_len),
            (a0.index, "a0", 24)
        );
        assert_eq!(v4.scope, Scope::Global);
        let v6 = addresses
            .iter()
            .find(|a| a.ip == ip("fd20::1"))
            .context("fd20::1 listed")?;
        assert_eq!((v6.ifname.as_str(), v6.prefix_len), ("a0", 64));
        assert!(
            addresses
                .iter()
                .any(|a| a.ifname == "lo" && a.ip == ip("127.0.0.1"))
        );

        assert_eq!(
            net.global_addresses()?,
            vec![ip("10.201.0.1"), ip("fd20::1")]
        );
        assert_eq!(
            net.interfaces_with(&[ip("10.201.0.1")])?,
            vec!["a0".to_string()]
        );
        assert!(
            net.interfaces_with(&[ip("127.0.0.1"), ip("::1")])?
                .is_empty(),
            "never lo"
        );

        let neighbours = net.neighbours()?;
        let n = neighbours
            .iter()
            .find(|n| n.ip == ip("10.201.0.9"))
            .context("the static neighbour is listed")?;
        assert_eq!(
            (n.ifindex, n.mac, n.state),
            (
                a0.index,
                Some(MacAddr([2, 0, 0, 0, 0, 9])),
                NeighbourState::Permanent
            )
        );
        Ok(())
    })
}

#[test]
fn link_and_address_changes_are_notified() -> Result<()> {
    root_only!();
    let ns = Netns::new()?;
    let seen = ns.run_async(|| async {
        let net = RtNetlink::new();
        let mut changes = net.subscribe()?;
        let mut seen = Vec::new();
        ns.ip("link add c0 type veth peer name d0")?;
        seen.extend(
            expect(
                &mut changes,
                "c0 appearing",
                |c| matches!(c, Change::Link { name, removed: false, .. } if name == "c0"),
            )
            .await?,
        );
        // Queries work from inside a runtime too (they run on a helper thread).
        let c0 = net.link_index("c0")?.context("c0 exists")?;
        ns.ip("addr add 10.202.0.1/24 dev c0")?;
        seen.extend(
            expect(&mut changes, "10.202.0.1 added", |c| {
                *c == Change::Address {
                    ifindex: c0,
                    ip: ip("10.202.0.1"),
                    prefix_len: 24,
                    removed: false,
                }
            })
            .await?,
        );
        ns.ip("addr del 10.202.0.1/24 dev c0")?;
        seen.extend(
            expect(&mut changes, "10.202.0.1 removed", |c| {
                matches!(c, Change::Address { ip: a, removed: true, .. } if *a == ip("10.202.0.1"))
            })
            .await?,
        );
        ns.ip("link del c0")?;
        seen.extend(
            expect(&mut changes, "c0 removed", |c| {
                *c == Change::Link {
                    ifindex: c0,
                    name: "c0".into(),
                    removed: true,
                }
            })
            .await?,
        );
        Ok(seen)
    })?;
    assert!(
        !seen.contains(&Change::Resync),
        "a handful of changes fits the default queue: {seen:?}"
    );
    Ok(())
}

#[test]
fn a_notification_queue_overflow_yields_a_resync() -> Result<()> {
    root_only!();
    let ns = Netns::new()?;
    ns.run_async(|| async {
        // The smallest queue the kernel allows (a few KiB) cannot hold the burst below.
        let net = RtNetlink::new().with_receive_buffer(1);
        let mut changes = net.subscribe()?;
        // Nothing reads the socket while the burst happens: the stream is not polled.
        ns.ip("link add e0 type veth peer name f0")?;
        for i in 0..40 {
            ns.ip(&format!("addr add 10.203.{i}.1/24 dev e0"))?;
        }
        expect(&mut changes, "a resync", |c| *c == Change::Resync).await?;
        // The subscription goes on after the overflow: drain it, then one change fits.
        while tokio::time::timeout(Duration::from_millis(300), changes.recv())
            .await
            .is_ok_and(|c| c.is_some())
        {}
        ns.ip("addr add 10.204.0.1/24 dev f0")?;
        expect(&mut changes, "10.204.0.1 added", |c| {
            matches!(c, Change::Address { ip: a, removed: false, .. } if *a == ip("10.204.0.1"))
        })
        .await?;
        Ok(())
    })
}

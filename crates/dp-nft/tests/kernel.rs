//! The nftables backend against the real kernel, in a network namespace of its own.
//! Needs root and the `nft` binary (installed by `cargo xtask test`).

mod fixture;

use std::process::Command;

use sluice_dataplane::Dataplane;
use sluice_dp_nft::{NftCommand, NftDataplane};

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Option<Self> {
        if unsafe_is_not_root() {
            eprintln!("skipped: needs root for network namespaces");
            return None;
        }
        let name = format!("sluice-nft-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name} failed");
        Some(Netns(name))
    }

    fn nft_list(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "list", "ruleset"])
            .output()
            .expect("nft");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn unsafe_is_not_root() -> bool {
    // /proc/self/status "Uid:" first field is the real uid; avoids a libc dependency.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    !status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

#[test]
fn apply_diff_restart_and_cleanup_in_the_kernel() {
    let Some(ns) = Netns::new("life") else { return };
    let mut dp = NftDataplane::with_runner(NftCommand::in_netns(&ns.0));
    dp.restore().expect("restore on an empty namespace");
    let desired = fixture::desired();
    let stats = dp.apply(&desired, false).expect("first apply");
    assert!(stats.full_sync);
    let ruleset = ns.nft_list();
    assert!(ruleset.contains("dnat to 10.244.2.2:8080"), "{ruleset}");
    assert!(
        ruleset.contains("dnat to [fd00:10:244:2::2]:8080"),
        "{ruleset}"
    );

    // Incremental: drop one endpoint; only that endpoint's chain disappears.
    let mut smaller = desired.clone();
    smaller
        .services
        .values_mut()
        .find(|s| s.port == 80)
        .unwrap()
        .cluster_endpoints
        .retain(|e| e.ip.to_string() != "10.244.2.2");
    let stats = dp.apply(&smaller, false).expect("incremental apply");
    assert!(!stats.full_sync);
    assert_eq!(stats.services_changed, 1);
    assert!(stats.operations < 10, "{stats:?}");
    let ruleset = ns.nft_list();
    assert!(
        !ruleset.contains("10.244.2.2:8080") && ruleset.contains("10.244.1.2:8080"),
        "{ruleset}"
    );
    assert_eq!(
        dp.apply(&smaller, false).expect("no-op apply").operations,
        0
    );

    // A new agent finds the table, reconciles without deleting it, and removes what is stale.
    let mut restarted = NftDataplane::with_runner(NftCommand::in_netns(&ns.0));
    restarted.restore().expect("restore");
    let mut without_front = smaller.clone();
    without_front.services.retain(|k, _| k.name != "front");
    restarted
        .apply(&without_front, false)
        .expect("reconciling apply");
    let ruleset = ns.nft_list();
    assert!(
        !ruleset.contains("shop/front"),
        "stale service chains removed:\n{ruleset}"
    );
    assert!(ruleset.contains("10.244.1.2:8080"));

    restarted.cleanup().expect("cleanup");
    assert!(!ns.nft_list().contains("sluice"), "tables removed");
    restarted.cleanup().expect("cleanup twice is fine");
}

#[test]
fn a_failed_transaction_leaves_the_previous_rules_and_forces_a_full_resync() {
    let Some(ns) = Netns::new("fail") else { return };
    let mut dp = NftDataplane::with_runner(NftCommand::in_netns(&ns.0));
    dp.restore().unwrap();
    dp.apply(&fixture::desired(), false).unwrap();
    // Someone deletes one of our chains behind our back: the next diff fails atomically...
    let status = Command::new("ip")
        .args([
            "netns", "exec", &ns.0, "nft", "delete", "table", "ip6", "sluice",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let mut changed = fixture::desired();
    changed
        .services
        .values_mut()
        .find(|s| s.port == 80)
        .unwrap()
        .cluster_endpoints
        .pop();
    let err = dp
        .apply(&changed, false)
        .expect_err("diff against a missing table fails");
    assert!(err.to_string().contains("nft transaction"), "{err}");
    assert!(
        ns.nft_list().contains("10.244.2.2:8080"),
        "v4 table untouched by the failed transaction"
    );
    // ...and the following apply is a full resync that repairs everything.
    let stats = dp.apply(&changed, false).unwrap();
    assert!(stats.full_sync);
    assert!(ns.nft_list().contains("table ip6 sluice"));
}

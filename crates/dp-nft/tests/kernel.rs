//! The nftables backend against the real kernel, in a network namespace of its own.
//! Needs root and the `nft` binary (installed by `cargo xtask test`).

mod fixture;

use std::process::Command;

use sluice_dataplane::Dataplane;
use sluice_dp_nft::{NftCommand, NftDataplane};
use sluice_plan::PlanDelta;

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
    let mut dp = NftDataplane::with_executor(NftCommand::in_netns(&ns.0));
    dp.restore().expect("restore on an empty namespace");
    let plan = fixture::plan();
    let report = dp.resync(&plan).expect("first programming");
    assert!(report.full_sync && report.failed.is_empty(), "{report:?}");
    let ruleset = ns.nft_list();
    assert!(ruleset.contains("dnat to 10.244.2.2:8080"), "{ruleset}");
    assert!(
        ruleset.contains("dnat to [fd00:10:244:2::2]:8080"),
        "{ruleset}"
    );

    // Incremental: drop one endpoint; only that endpoint's chain disappears.
    let smaller = fixture::without_web_endpoint();
    let report = dp
        .apply(&PlanDelta::between(&plan, &smaller))
        .expect("incremental apply");
    assert!(!report.full_sync);
    assert_eq!(report.services_changed, 1);
    assert!(report.operations < 10, "{report:?}");
    let ruleset = ns.nft_list();
    assert!(
        !ruleset.contains("10.244.2.2:8080") && ruleset.contains("10.244.1.2:8080"),
        "{ruleset}"
    );
    let report = dp.resync(&smaller).expect("resync with nothing to do");
    assert_eq!(report.operations, 0, "{report:?}");

    // A new agent finds the table, reconciles without deleting it, and removes what is stale.
    let mut restarted = NftDataplane::with_executor(NftCommand::in_netns(&ns.0));
    restarted.restore().expect("restore");
    let mut without_front = smaller.clone();
    without_front.services.retain(|k, _| k.name() != "front");
    restarted
        .resync(&without_front)
        .expect("reconciling resync");
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
fn a_refused_change_is_reported_and_the_next_resync_repairs_everything() {
    let Some(ns) = Netns::new("fail") else { return };
    let mut dp = NftDataplane::with_executor(NftCommand::in_netns(&ns.0));
    dp.restore().unwrap();
    let plan = fixture::plan();
    dp.resync(&plan).unwrap();
    // Someone deletes one of our tables behind our back: the change to web fails...
    let status = Command::new("ip")
        .args([
            "netns", "exec", &ns.0, "nft", "delete", "table", "ip", "sluice",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let changed = fixture::without_web_endpoint();
    let report = dp
        .apply(&PlanDelta::between(&plan, &changed))
        .expect("the other services are unaffected");
    let failed: Vec<String> = report
        .failed
        .iter()
        .map(|f| f.service.to_string())
        .collect();
    assert_eq!(failed, vec!["shop/web:http/tcp"]);
    assert!(
        report.failed[0].reason.contains("nft -f"),
        "the reason carries nft's message: {report:?}"
    );
    assert!(
        ns.nft_list().contains("[fd00:10:244:2::2]:8080"),
        "the v6 table is untouched by the refused transaction"
    );
    // ...and the following resync rewrites everything.
    let report = dp.resync(&changed).unwrap();
    assert!(report.full_sync && report.failed.is_empty(), "{report:?}");
    let ruleset = ns.nft_list();
    assert!(ruleset.contains("table ip sluice"));
    assert!(ruleset.contains("10.244.1.2:8080"), "{ruleset}");
    assert!(!ruleset.contains("10.244.2.2:8080"), "{ruleset}");
}

#[test]
fn restore_reads_back_udp_backends_of_unnamed_ports() {
    let Some(ns) = Netns::new("back") else { return };
    let mut dp = NftDataplane::with_executor(NftCommand::in_netns(&ns.0));
    dp.restore().unwrap();
    let mut s = fixture::snapshot();
    fixture::add_service(
        &mut s,
        "kube-system",
        "dns",
        serde_json::json!({
            "clusterIP": "10.96.0.53",
            "ports": [{ "port": 53, "protocol": "UDP" }],
        }),
    );
    fixture::add_slice(
        &mut s,
        "kube-system",
        "dns-1",
        "dns",
        "IPv4",
        serde_json::json!([{ "port": 5353, "protocol": "UDP" }]),
        &[("10.244.1.9", "node-a")],
    );
    dp.resync(&fixture::plan_of(&s)).unwrap();
    let mut restarted = NftDataplane::with_executor(NftCommand::in_netns(&ns.0));
    let restored = restarted.restore().unwrap();
    let backends: Vec<String> = restored
        .backends
        .iter()
        .map(|(p, ip, port)| format!("{p} {ip}:{port}"))
        .collect();
    assert_eq!(backends, vec!["udp 10.244.1.9:5353"]);
}

/// The name of the chain of `ip sluice` whose rules contain `needle`.
fn chain_containing(ns: &Netns, needle: &str) -> String {
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns.0, "nft", "list", "table", "ip", "sluice",
        ])
        .output()
        .expect("nft");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut chain = None;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line
            .strip_prefix("chain ")
            .and_then(|l| l.strip_suffix(" {"))
        {
            chain = Some(name.to_owned());
        } else if line.contains(needle) {
            return chain.expect("a rule inside a chain");
        }
    }
    panic!("no chain with {needle:?} in:\n{text}");
}

fn nft_in(ns: &Netns, script: &str) {
    let status = Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft", script])
        .status()
        .expect("nft");
    assert!(status.success(), "nft {script}");
}

/// A rule outside sluice jumps to one of web's endpoint chains, so the kernel refuses to
/// delete it (EBUSY): web's change is refused on every attempt, including the full rewrites
/// of the retries, yet every other change is programmed; once the rule goes, web converges.
#[test]
fn a_chain_held_by_a_foreign_rule_holds_back_only_its_service() {
    let Some(ns) = Netns::new("held") else { return };
    let mut dp = NftDataplane::with_executor(NftCommand::in_netns(&ns.0));
    dp.restore().unwrap();
    let plan = fixture::plan();
    dp.resync(&plan).unwrap();
    let held = chain_containing(&ns, "dnat to 10.244.2.2:8080");
    nft_in(
        &ns,
        "add map ip sluice zz-hold { type inet_service : verdict ; }",
    );
    nft_in(
        &ns,
        &format!("add element ip sluice zz-hold {{ 1 : goto {held} }}"),
    );

    let mut changed = fixture::without_web_endpoint();
    changed.services.retain(|k, _| k.name() != "cache");
    let report = dp.apply(&PlanDelta::between(&plan, &changed)).unwrap();
    let failed: Vec<String> = report
        .failed
        .iter()
        .map(|f| f.service.to_string())
        .collect();
    assert_eq!(failed, ["shop/web:http/tcp"]);
    assert!(!ns.nft_list().contains("shop/cache"), "cache removed");

    // The retry is a resync: web is refused again, dns (removed meanwhile) still goes.
    let mut later = changed.clone();
    later.services.retain(|k, _| k.name() != "dns");
    let report = dp
        .resync(&later)
        .expect("the other service ports are programmed");
    let failed: Vec<String> = report
        .failed
        .iter()
        .map(|f| f.service.to_string())
        .collect();
    assert_eq!(failed, ["shop/web:http/tcp"]);
    let ruleset = ns.nft_list();
    assert!(
        !ruleset.contains("kube-system/dns"),
        "dns removed:\n{ruleset}"
    );
    assert!(
        ruleset.contains("10.244.2.2:8080"),
        "web keeps its old endpoint"
    );

    nft_in(&ns, "delete map ip sluice zz-hold");
    let report = dp.resync(&later).unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
    assert!(!ns.nft_list().contains("10.244.2.2:8080"), "web converged");
}

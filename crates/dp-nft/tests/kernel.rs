//! The nftables backend against the real kernel, each dataplane in a network namespace of its
//! own: both executors (`nft -f` text and netlink batches), and their equivalence — the same
//! plans and deltas leave the same `nft list ruleset`. Needs root and the `nft` binary
//! (installed by `cargo xtask test`).

mod fixture;

use std::process::Command;
use std::sync::Arc;

use serde_json::json;
use sluice_dataplane::Dataplane;
use sluice_dp_nft::{NetlinkNft, NftCommand, NftDataplane, NftExecutor};
use sluice_plan::{Plan, PlanDelta};

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Option<Self> {
        if is_not_root() {
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

    fn nft(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft"])
            .args(args)
            .output()
            .expect("nft");
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn nft_list(&self) -> String {
        self.nft(&["list", "ruleset"])
    }

    fn text(&self) -> NftCommand {
        NftCommand::in_netns(&self.0)
    }

    /// A netlink executor whose socket lives in this namespace (sockets keep the namespace
    /// they were created in; `setns` is per thread).
    fn netlink(&self) -> NetlinkNft {
        let name = self.0.clone();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(format!("/run/netns/{name}")).expect("netns file");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            NetlinkNft::with_tools(NftCommand::in_netns(&name)).expect("netlink socket")
        })
        .join()
        .expect("socket thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn is_not_root() -> bool {
    // /proc/self/status "Uid:" first field is the real uid; avoids a libc dependency.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    !status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// Programs, diffs, restarts and cleans up with the executor `make` builds.
fn lifecycle<E: NftExecutor>(ns: &Netns, make: impl Fn() -> E) {
    let mut dp = NftDataplane::with_executor(make());
    dp.restore().expect("restore on an empty namespace");
    let plan = fixture::plan();
    let report = dp.resync(&plan).expect("first programming");
    assert!(report.full_sync && report.failed.is_empty(), "{report:?}");
    let ruleset = ns.nft_list();
    assert!(ruleset.contains(": 10.244.2.2 . 8080"), "{ruleset}");
    assert!(ruleset.contains(": fd00:10:244:2::2 . 8080"), "{ruleset}");

    // Incremental: drop one endpoint; only its slots change.
    let smaller = fixture::without_web_endpoint();
    let report = dp
        .apply(&PlanDelta::between(&plan, &smaller))
        .expect("incremental apply");
    assert!(!report.full_sync);
    assert_eq!(report.services_changed, 1);
    assert!(report.operations < 10, "{report:?}");
    let ruleset = ns.nft_list();
    assert!(
        !ruleset.contains("10.244.2.2 . 8080") && ruleset.contains("10.244.1.2 . 8080"),
        "{ruleset}"
    );
    let report = dp.resync(&smaller).expect("resync with nothing to do");
    assert_eq!(report.operations, 0, "{report:?}");
    let slots = ns.nft(&["list", "map", "ip", "sluice", "endpoint-slots"]);

    // A new agent finds the table, reconciles without deleting it, and removes what is stale.
    let mut restarted = NftDataplane::with_executor(make());
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
    assert_eq!(
        ns.nft(&["list", "map", "ip", "sluice", "endpoint-slots"]),
        slots,
        "the restarted agent keeps every slot where it was"
    );

    restarted.cleanup().expect("cleanup");
    assert!(!ns.nft_list().contains("sluice"), "tables removed");
    restarted.cleanup().expect("cleanup twice is fine");
}

#[test]
fn text_executor_applies_diffs_restarts_and_cleans_up() {
    let Some(ns) = Netns::new("life") else { return };
    lifecycle(&ns, || ns.text());
}

#[test]
fn netlink_executor_applies_diffs_restarts_and_cleans_up() {
    let Some(ns) = Netns::new("nlife") else {
        return;
    };
    lifecycle(&ns, || ns.netlink());
}

/// Someone empties the endpoint slots behind our back: web's change (which rewrites its slots)
/// is refused and reported, the change to another service still applies, and the next resync
/// repairs.
fn refusal_is_isolated<E: NftExecutor>(ns: &Netns, exec: E, reason: &[&str]) {
    let mut dp = NftDataplane::with_executor(exec);
    dp.restore().unwrap();
    let plan = fixture::plan();
    dp.resync(&plan).unwrap();
    ns.nft(&["flush", "map", "ip", "sluice", "endpoint-slots"]);

    // Web loses an endpoint (its slots change), and front (session affinity: per-endpoint
    // chains) gains one.
    let mut s = fixture::snapshot();
    fixture::add_slice(
        &mut s,
        "shop",
        "web-v4",
        "web",
        "IPv4",
        json!([{ "name": "http", "port": 8080 }]),
        &[("10.244.1.2", "node-a")],
    );
    fixture::add_slice(
        &mut s,
        "shop",
        "front-1",
        "front",
        "IPv4",
        json!([{ "port": 8080 }]),
        &[
            ("10.244.1.3", "node-a"),
            ("10.244.2.3", "node-b"),
            ("10.244.2.4", "node-b"),
        ],
    );
    let changed = fixture::plan_of(&s);
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
        reason.iter().all(|r| report.failed[0].reason.contains(r)),
        "the reason says what was refused and why ({reason:?}): {report:?}"
    );
    assert_eq!(report.services_changed, 1, "front applied: {report:?}");
    assert!(ns.nft_list().contains("dnat to 10.244.2.4:8080"));

    // ...and the following resync rewrites everything.
    let report = dp.resync(&changed).unwrap();
    assert!(report.full_sync && report.failed.is_empty(), "{report:?}");
    let ruleset = ns.nft_list();
    assert!(ruleset.contains("10.244.1.2 . 8080"), "{ruleset}");
    assert!(!ruleset.contains("10.244.2.2 . 8080"), "{ruleset}");
}

#[test]
fn text_executor_isolates_a_refused_service() {
    let Some(ns) = Netns::new("fail") else { return };
    refusal_is_isolated(&ns, ns.text(), &["nft -f"]);
}

#[test]
fn netlink_executor_isolates_a_refused_service() {
    let Some(ns) = Netns::new("nfail") else {
        return;
    };
    // The reason names the refused command in nft syntax (deleting web's slot that is gone),
    // and the kernel's error.
    let reason = [
        "nf_tables refused `delete element ip sluice endpoint-slots {",
        "No such file",
    ];
    refusal_is_isolated(&ns, ns.netlink(), &reason);
}

/// The states the equivalence test walks through, each with what it exercises.
fn journey() -> Vec<(&'static str, Plan)> {
    let mut steps = vec![("first programming", fixture::plan())];
    steps.push(("endpoint removed", fixture::without_web_endpoint()));

    let mut s = fixture::snapshot();
    let three = [
        ("10.244.1.2", "node-a"),
        ("10.244.2.2", "node-b"),
        ("10.244.3.2", "node-c"),
    ];
    let http = json!([{ "name": "http", "port": 8080 }]);
    fixture::add_slice(&mut s, "shop", "web-v4", "web", "IPv4", http, &three);
    steps.push(("endpoint added", fixture::plan_of(&s)));

    let web = sluice_model::ObjectKey::new("shop", "web");
    let mut affinity = s.clone();
    let svc = affinity.services.get_mut(&web).unwrap();
    Arc::make_mut(svc).spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
    steps.push(("affinity sets added", fixture::plan_of(&affinity)));
    steps.push(("affinity sets removed", fixture::plan_of(&s)));

    // The external IP moves from front to a new service on the same port.
    let front = sluice_model::ObjectKey::new("shop", "front");
    let svc = s.services.get_mut(&front).unwrap();
    Arc::make_mut(svc).spec.as_mut().unwrap().external_ips = None;
    fixture::add_service(
        &mut s,
        "shop",
        "front2",
        json!({
            "clusterIP": "10.96.0.21",
            "externalIPs": ["198.51.100.7"],
            "ports": [{ "port": 443, "targetPort": 8443 }],
        }),
    );
    let tls = json!([{ "port": 8443 }]);
    fixture::add_slice(&mut s, "shop", "front2-1", "front2", "IPv4", tls, &three);
    steps.push(("frontend moved to another service", fixture::plan_of(&s)));

    s.services.remove(&front);
    s.endpoint_slices
        .remove(&sluice_model::ObjectKey::new("shop", "front-1"));
    steps.push(("service removed", fixture::plan_of(&s)));

    let mut node_change = fixture::plan_of(&s);
    let node = Arc::make_mut(&mut node_change.node);
    node.pod_cidrs.push("10.250.0.0/16".parse().unwrap());
    node.pod_cidrs.push("fd00:20::/64".parse().unwrap());
    node.nodeport_addresses.push("192.0.2.99".parse().unwrap());
    steps.push(("node addresses and pod CIDRs changed", node_change));
    steps
}

#[test]
fn text_and_netlink_leave_the_same_ruleset_through_every_kind_of_change() {
    let (Some(text_ns), Some(netlink_ns)) = (Netns::new("eqt"), Netns::new("eqn")) else {
        return;
    };
    let mut text = NftDataplane::with_executor(text_ns.text());
    let mut netlink = NftDataplane::with_executor(netlink_ns.netlink());
    text.restore().unwrap();
    netlink.restore().unwrap();
    let mut previous: Option<Plan> = None;
    for (step, plan) in journey() {
        let (a, b) = match &previous {
            None => (text.resync(&plan), netlink.resync(&plan)),
            Some(before) => {
                let delta = PlanDelta::between(before, &plan);
                (text.apply(&delta), netlink.apply(&delta))
            }
        };
        let (a, b) = (a.expect(step), b.expect(step));
        assert!(
            a.failed.is_empty() && b.failed.is_empty(),
            "{step}: {a:?} {b:?}"
        );
        assert_eq!(a.operations, b.operations, "{step}: same transaction");
        let (listed_text, listed_netlink) = (text_ns.nft_list(), netlink_ns.nft_list());
        assert!(listed_text.contains("table ip sluice"), "{step}");
        assert_eq!(listed_text, listed_netlink, "{step}: rulesets differ");
        previous = Some(plan);
    }
    // A restarted netlink agent reconciles to the same result.
    let last = previous.expect("steps");
    let mut restarted = NftDataplane::with_executor(netlink_ns.netlink());
    restarted.restore().unwrap();
    restarted.resync(&last).unwrap();
    assert_eq!(text_ns.nft_list(), netlink_ns.nft_list(), "after restart");
}

#[test]
fn a_resync_repairs_what_others_removed_and_leaves_an_untouched_table_alone() {
    let Some(ns) = Netns::new("drift") else {
        return;
    };
    let mut dp = NftDataplane::with_executor(ns.netlink());
    dp.restore().unwrap();
    let plan = fixture::plan();
    dp.resync(&plan).unwrap();
    let programmed = ns.nft_list();

    // Nothing changed: nothing is sent.
    let report = dp.resync(&plan).unwrap();
    assert_eq!(report.operations, 0, "{report:?}");

    // Someone else commits elsewhere: our table is checked, found intact, left alone.
    ns.nft(&["add", "table", "inet", "other"]);
    let report = dp.resync(&plan).unwrap();
    assert_eq!(report.operations, 0, "{report:?}");

    // Someone deletes one of our chains (after unhooking it): the resync rewrites the table.
    let chains = ns.nft(&["list", "chains", "ip"]);
    let fw = chains
        .lines()
        .filter_map(|l| l.trim().strip_prefix("chain "))
        .map(|l| l.trim_end_matches(" {").to_owned())
        .find(|c| c.starts_with("fw-"))
        .expect("a firewall chain");
    ns.nft(&["flush", "map", "ip", "sluice", "firewall-ips"]);
    ns.nft(&["delete", "chain", "ip", "sluice", &fw]);
    let report = dp.resync(&plan).unwrap();
    assert!(report.operations > 0, "{report:?}");
    let repaired = ns.nft_list();
    // Our tables' lines (the re-created chain is listed last now, hence sorted).
    let ours = |listing: &str| {
        let mut lines: Vec<String> = listing
            .split("table ")
            .filter(|t| t.starts_with("ip sluice") || t.starts_with("ip6 sluice"))
            .flat_map(|t| t.lines().map(str::to_owned))
            .collect();
        lines.sort();
        lines
    };
    assert_eq!(ours(&repaired), ours(&programmed), "repaired");
}

#[test]
fn restore_reads_back_udp_backends_of_unnamed_ports() {
    let Some(ns) = Netns::new("back") else { return };
    let mut dp = NftDataplane::with_executor(ns.netlink());
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
    let mut restarted = NftDataplane::with_executor(ns.netlink());
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

/// A rule outside sluice jumps to web's dispatch chain, so the kernel refuses to delete it
/// (EBUSY): web's removal is refused on every attempt, including the full rewrites of the
/// retries, yet every other change is programmed; once the rule goes, web converges.
#[test]
fn a_chain_held_by_a_foreign_rule_holds_back_only_its_service() {
    let Some(ns) = Netns::new("held") else { return };
    let mut dp = NftDataplane::with_executor(NftCommand::in_netns(&ns.0));
    dp.restore().unwrap();
    let plan = fixture::plan();
    dp.resync(&plan).unwrap();
    let held = chain_containing(&ns, "map @endpoint-slots");
    assert!(
        held.starts_with("cl-") && held.contains("shop/web/"),
        "{held}"
    );
    nft_in(
        &ns,
        "add map ip sluice zz-hold { type inet_service : verdict ; }",
    );
    nft_in(
        &ns,
        &format!("add element ip sluice zz-hold {{ 1 : goto {held} }}"),
    );

    let mut changed = plan.clone();
    changed
        .services
        .retain(|k, _| k.name() != "cache" && k.name() != "web");
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
        ruleset.contains("10.244.2.2 . 8080"),
        "web keeps its old endpoints:\n{ruleset}"
    );

    nft_in(&ns, "delete map ip sluice zz-hold");
    let report = dp.resync(&later).unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
    let ruleset = ns.nft_list();
    assert!(
        !ruleset.contains("shop/web") && !ruleset.contains("10.244.2.2 . 8080"),
        "web converged:\n{ruleset}"
    );
}

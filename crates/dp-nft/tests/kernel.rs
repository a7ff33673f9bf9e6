//! The nftables backend against the real kernel, each dataplane in a network namespace of its
//! own: both executors (`nft -f` text and netlink batches), and their equivalence — the same
//! plans and deltas leave the same `nft list ruleset`. Needs root and the `nft` binary
//! (installed by `cargo xtask test`).

mod fixture;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use sluice_dataplane::Dataplane;
use sluice_dp_nft::transaction::Existing;
use sluice_dp_nft::{
    Drift, NetlinkNft, NftCommand, NftDataplane, NftError, NftExecutor, Readback, Transaction,
};
use sluice_plan::{
    Backend, Family, FrontendAddr, FrontendKey, FrontendKind, FrontendPlan, NodePlan, Plan,
    PlanDelta, Protocol, Route, Selection, ServiceChange, ServicePlan, ServicePortName, SetName,
    StaleFlow,
};

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

impl Netns {
    fn ip(&self, args: &[&str]) {
        let ok = Command::new("ip")
            .args(["-n", &self.0])
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip -n {} {args:?}", self.0);
    }

    /// Runs `f` on a thread inside this namespace (sockets it opens live there).
    fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let name = self.0.clone();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(format!("/run/netns/{name}")).expect("netns file");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread inside the namespace")
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
    let web_slots = ["list", "map", "ip", "sluice", "slots-cluster-ip-tcp-4"];
    let slots = ns.nft(&web_slots);

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
        ns.nft(&web_slots),
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
    ns.nft(&["flush", "map", "ip", "sluice", "slots-cluster-ip-tcp-4"]);

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
        "nf_tables refused `delete element ip sluice slots-cluster-ip-tcp-4 {",
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
    fixture::add_slice(
        &mut s,
        "shop",
        "front2-1",
        "front2",
        "IPv4",
        tls.clone(),
        &three,
    );
    steps.push(("frontend moved to another service", fixture::plan_of(&s)));

    // ... and on to a service whose change comes first (its name sorts before front2's).
    let front2 = sluice_model::ObjectKey::new("shop", "front2");
    let svc = s.services.get_mut(&front2).unwrap();
    Arc::make_mut(svc).spec.as_mut().unwrap().external_ips = None;
    fixture::add_service(
        &mut s,
        "shop",
        "api",
        json!({
            "clusterIP": "10.96.0.22",
            "externalIPs": ["198.51.100.7"],
            "ports": [{ "port": 443, "targetPort": 8443 }],
        }),
    );
    fixture::add_slice(&mut s, "shop", "api-1", "api", "IPv4", tls, &three);
    steps.push((
        "frontend moved to a service changed first",
        fixture::plan_of(&s),
    ));

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

/// A rule outside sluice jumps to web's route chain, so the kernel refuses to delete it
/// (EBUSY): web's removal is refused on every attempt, including the full rewrites of the
/// retries, yet every other change is programmed; once the rule goes, web converges.
#[test]
fn a_chain_held_by_a_foreign_rule_holds_back_only_its_service() {
    let Some(ns) = Netns::new("held") else { return };
    let mut dp = NftDataplane::with_executor(NftCommand::in_netns(&ns.0));
    dp.restore().unwrap();
    let plan = fixture::plan();
    dp.resync(&plan).unwrap();
    let held = chain_containing(&ns, "goto pick-cluster-ip-tcp-4");
    assert!(
        held.starts_with("svc-") && held.contains("shop/web/"),
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

/// An executor that keeps the text of every transaction it sends on.
struct Recording<E> {
    inner: E,
    sent: Arc<Mutex<Vec<String>>>,
}

impl<E: NftExecutor> NftExecutor for Recording<E> {
    fn apply(&mut self, tx: &Transaction<'_>) -> Result<(), NftError> {
        self.sent.lock().unwrap().push(tx.to_string());
        self.inner.apply(tx)
    }
    fn read_back(&mut self, family: Family) -> Result<Readback, NftError> {
        self.inner.read_back(family)
    }
    fn flush_conntrack(&mut self, flow: &StaleFlow) -> Result<(), NftError> {
        self.inner.flush_conntrack(flow)
    }
    fn drift(&mut self) -> Result<Drift, NftError> {
        self.inner.drift()
    }
    fn read_names(&mut self, family: Family) -> Result<Existing, NftError> {
        self.inner.read_names(family)
    }
}

/// Service port `bulk/svc-I`: ClusterIP 10.96.I/16:80 to `endpoints` port 8080, as compute
/// plans a ClusterIP Service (pods forwarded, node and outside masqueraded).
fn bulk_service(i: usize, endpoints: &[IpAddr]) -> ServicePlan {
    let cluster_ip = IpAddr::from([10, 96, (i >> 8) as u8, (i & 255) as u8]);
    ServicePlan {
        name: ServicePortName::new("bulk", format!("svc-{i}"), "http", Protocol::Tcp),
        frontends: vec![FrontendPlan {
            key: FrontendKey {
                addr: FrontendAddr::Ip(cluster_ip),
                protocol: Protocol::Tcp,
                port: 80,
            },
            kind: FrontendKind::ClusterIp,
            allowed_sources: Vec::new(),
            pods: Route::forward(SetName::Cluster),
            node: Route::masqueraded(SetName::Cluster),
            outside: Route::masqueraded(SetName::Cluster),
            selection: Selection::Random,
        }],
        cluster: endpoints.iter().map(|ip| Backend::new(*ip, 8080)).collect(),
        local: Vec::new(),
        affinity_timeout: None,
    }
}

/// Connects `count` times to `target` from inside `ns` and counts which of `endpoints`
/// (addresses on the namespace's loopback, each listening on 8080) accepted.
fn answers(
    ns: &Netns,
    target: SocketAddr,
    endpoints: &[IpAddr],
    count: usize,
) -> BTreeMap<IpAddr, usize> {
    let endpoints = endpoints.to_vec();
    ns.inside(move || {
        let listeners: Vec<(IpAddr, TcpListener)> = endpoints
            .iter()
            .map(|ip| {
                let listener = TcpListener::bind((*ip, 8080)).expect("listen");
                listener.set_nonblocking(true).expect("non-blocking");
                (*ip, listener)
            })
            .collect();
        let mut out = BTreeMap::new();
        for attempt in 0..count {
            let _client = TcpStream::connect_timeout(&target, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("connection {attempt} to {target}: {e}"));
            // The handshake is done: exactly one listener has the connection queued.
            let (ip, _) = listeners
                .iter()
                .find(|(_, l)| l.accept().is_ok())
                .unwrap_or_else(|| panic!("connection {attempt}: no endpoint accepted it"));
            *out.entry(*ip).or_default() += 1;
        }
        out
    })
}

/// Several thousand services; one's endpoints change (two go, one comes, the count stays
/// within its capacity): the transaction sent holds endpoint slots and hairpin elements only,
/// and connections reach exactly the new endpoints.
#[test]
fn an_endpoint_change_among_thousands_of_services_writes_only_map_elements() {
    let Some(ns) = Netns::new("bulk") else { return };
    const SERVICES: usize = 3000;
    const CHANGED: usize = 1234;
    let local: Vec<IpAddr> = (1..=4).map(|i| IpAddr::from([10, 244, 0, i])).collect();
    ns.ip(&["link", "set", "lo", "up"]);
    for ip in &local {
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"]);
    }
    // Service addresses route to the loopback, where DNAT sends them on to an endpoint.
    ns.ip(&["route", "add", "10.96.0.0/12", "dev", "lo"]);
    let remote = |i: usize| -> Vec<IpAddr> {
        (0..3)
            .map(|j| IpAddr::from([10, 245 + j, (i >> 8) as u8, (i & 255) as u8]))
            .collect()
    };
    let mut plan = Plan {
        node: Arc::new(NodePlan::default()),
        ..Plan::default()
    };
    for i in 0..SERVICES {
        let endpoints = if i == CHANGED {
            local[..3].to_vec()
        } else {
            remote(i)
        };
        let service = bulk_service(i, &endpoints);
        plan.services
            .insert(service.name.clone(), Arc::new(service));
    }
    let sent = Arc::new(Mutex::new(Vec::new()));
    let exec = Recording {
        inner: ns.netlink(),
        sent: Arc::clone(&sent),
    };
    let mut dp = NftDataplane::with_executor(exec);
    dp.restore().unwrap();
    let report = dp.resync(&plan).expect("first programming");
    assert!(report.failed.is_empty(), "{report:?}");
    let target = SocketAddr::from(([10, 96, (CHANGED >> 8) as u8, (CHANGED & 255) as u8], 80));
    let before = answers(&ns, target, &local, 30);
    assert!(
        before.keys().all(|ip| local[..3].contains(ip)),
        "before the change: {before:?}"
    );

    let old = Arc::clone(&plan.services[&bulk_service(CHANGED, &[]).name]);
    let new = Arc::new(bulk_service(CHANGED, &local[2..]));
    plan.services.insert(new.name.clone(), Arc::clone(&new));
    let delta = PlanDelta {
        node: Arc::clone(&plan.node),
        services: vec![ServiceChange {
            name: new.name.clone(),
            before: Some(old),
            after: Some(new),
        }],
        ..PlanDelta::default()
    };
    let report = dp.apply(&delta).expect("the change applies");
    assert!(
        report.failed.is_empty() && report.services_changed == 1,
        "{report:?}"
    );
    let last = sent.lock().unwrap().last().cloned().expect("a transaction");
    for line in last.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(
            matches!(words[..], ["add" | "delete", "element", "ip", "sluice", map, ..]
                if map.starts_with("slots-") || map == "hairpin-endpoints"),
            "only map elements, no rule and no verdict: {line}\nin:\n{last}"
        );
    }
    assert!(last.contains("slots-cluster-ip-tcp-4"), "{last}");
    let after = answers(&ns, target, &local, 40);
    assert!(
        after.keys().all(|ip| local[2..].contains(ip)),
        "only the new endpoints answer: {after:?}"
    );
    assert!(
        after.contains_key(&local[3]),
        "the added endpoint answers: {after:?}"
    );
}

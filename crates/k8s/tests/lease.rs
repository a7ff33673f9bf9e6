//! Leader election and node heartbeats against the fake API server. Durations are shortened
//! through the configuration (2 s leases); bounds are generous so that a slow machine does not
//! make them flaky, but tight enough to tell "waited for expiry" from "took over at once".

mod fake_apiserver;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use fake_apiserver::{FakeApiServer, GoneStyle};
use serde_json::json;
use sluice_k8s::{LeaseConfig, LeaseHolder, LiveNodes};
use tokio::sync::watch;

const NS: &str = "kube-system";
const LEASE: &str = "sluice-leader";
const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/sluice-leader";
const WAIT: Duration = Duration::from_secs(10);

/// 2 s lease, renewed every 300 ms, step down after 1.2 s without renewal, retry every 200 ms.
fn short(mut config: LeaseConfig) -> LeaseConfig {
    config.lease_duration = Duration::from_secs(2);
    config.renew_period = Duration::from_millis(300);
    config.renew_deadline = Duration::from_millis(1200);
    config.retry_period = Duration::from_millis(200);
    config
}

fn elector(fake: &FakeApiServer, identity: &str) -> LeaseHolder {
    let config = short(LeaseConfig::leader_election(NS, LEASE, identity));
    LeaseHolder::spawn(fake.client(), config).expect("valid config")
}

fn heartbeat(fake: &FakeApiServer, node: &str) -> LeaseHolder {
    let config = short(LeaseConfig::node_heartbeat(NS, node));
    LeaseHolder::spawn(fake.client(), config).expect("valid config")
}

/// Waits until the receiver shows `wanted`; returns when that was seen.
async fn wait_held(rx: &mut watch::Receiver<bool>, wanted: bool, what: &str) -> Instant {
    tokio::time::timeout(WAIT, rx.wait_for(|held| *held == wanted))
        .await
        .unwrap_or_else(|_| panic!("{what}: leadership did not become {wanted} within {WAIT:?}"))
        .expect("holder alive");
    Instant::now()
}

fn holder_of(fake: &FakeApiServer, name: &str) -> Option<String> {
    let lease = fake.object("Lease", NS, name)?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn elector_creates_the_lease_with_its_identity_and_keeps_renewing_it() {
    let fake = FakeApiServer::start().await;
    let a = elector(&fake, "node-a");
    wait_held(&mut a.subscribe(), true, "node-a").await;
    let lease = fake.object("Lease", NS, LEASE).expect("lease created");
    assert_eq!(lease["spec"]["holderIdentity"], "node-a");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 2);
    let first_renewal = lease["spec"]["renewTime"].clone();

    tokio::time::sleep(Duration::from_millis(1000)).await;
    let renewals = fake
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path == LEASE_PATH)
        .count();
    // Every 300 ms for one second: at least 2 even on a slow machine.
    assert!(renewals >= 2, "only {renewals} renewals in 1 s");
    let lease = fake.object("Lease", NS, LEASE).expect("lease");
    assert_ne!(lease["spec"]["renewTime"], first_renewal);
    assert!(a.is_held());
}

#[tokio::test]
async fn of_racing_candidates_exactly_one_leads() {
    let fake = FakeApiServer::start().await;
    let electors: Vec<LeaseHolder> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|id| elector(&fake, id))
        .collect();
    let receivers: Vec<_> = electors.iter().map(LeaseHolder::subscribe).collect();
    let until = Instant::now() + Duration::from_secs(2);
    let mut max_leaders = 0;
    while Instant::now() < until {
        let leaders = receivers.iter().filter(|rx| *rx.borrow()).count();
        max_leaders = max_leaders.max(leaders);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(max_leaders, 1, "more than one leader at once");
    let leaders: Vec<usize> = (0..3).filter(|i| *receivers[*i].borrow()).collect();
    assert_eq!(leaders.len(), 1, "one leader at the end");
    let expected = ["node-a", "node-b", "node-c"][leaders[0]];
    assert_eq!(holder_of(&fake, LEASE).as_deref(), Some(expected));
}

#[tokio::test]
async fn candidate_takes_over_after_the_lease_expires_when_the_holder_stops() {
    let fake = FakeApiServer::start().await;
    let a = elector(&fake, "node-a");
    wait_held(&mut a.subscribe(), true, "node-a").await;
    let b = elector(&fake, "node-b");
    let mut b_rx = b.subscribe();
    // While node-a renews, node-b never leads.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!*b_rx.borrow(), "node-b led while node-a renewed");

    // node-a dies without releasing (dropped: no more renewals, no release write).
    let stopped = Instant::now();
    drop(a);
    let took_over = wait_held(&mut b_rx, true, "node-b").await;
    let after = took_over - stopped;
    eprintln!("takeover {after:?} after the holder stopped (2 s lease)");
    // It waited for the 2 s lease to expire (minus at most one 300 ms renew period)...
    assert!(
        after >= Duration::from_millis(1500),
        "took over too early: {after:?}"
    );
    // ...and no longer than expiry + a retry period + slack.
    assert!(
        after <= Duration::from_secs(4),
        "took over too late: {after:?}"
    );
    assert_eq!(holder_of(&fake, LEASE).as_deref(), Some("node-b"));
    let lease = fake.object("Lease", NS, LEASE).expect("lease");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
}

#[tokio::test]
async fn released_lease_is_taken_over_without_waiting_for_expiry() {
    let fake = FakeApiServer::start().await;
    let long = |identity: &str| {
        let mut config = short(LeaseConfig::leader_election(NS, LEASE, identity));
        config.lease_duration = Duration::from_secs(30);
        config.renew_deadline = Duration::from_secs(20);
        LeaseHolder::spawn(fake.client(), config).expect("valid config")
    };
    let a = long("node-a");
    let mut a_rx = a.subscribe();
    wait_held(&mut a_rx, true, "node-a").await;
    let b = long("node-b");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let stopped = Instant::now();
    a.shutdown().await;
    assert!(
        !*a_rx.borrow(),
        "node-a still thinks it leads after shutdown"
    );
    let took_over = wait_held(&mut b.subscribe(), true, "node-b").await;
    let after = took_over - stopped;
    eprintln!("takeover {after:?} after release (30 s lease)");
    // A 30 s lease, taken over within about one 200 ms retry period.
    assert!(after <= Duration::from_secs(2), "took {after:?}");
    assert_eq!(holder_of(&fake, LEASE).as_deref(), Some("node-b"));
}

/// The last lease write that reached the fake before `before`.
fn last_put_before(fake: &FakeApiServer, before: Instant) -> Instant {
    fake.requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path == LEASE_PATH && r.at < before)
        .map(|r| r.at)
        .max()
        .expect("at least one renewal")
}

#[tokio::test]
async fn holder_steps_down_before_expiry_when_renewals_fail() {
    let fake = FakeApiServer::start().await;
    let a = elector(&fake, "node-a");
    let mut rx = a.subscribe();
    wait_held(&mut rx, true, "node-a").await;
    tokio::time::sleep(Duration::from_millis(700)).await;

    let failing_since = Instant::now();
    fake.fail_requests_always("GET", LEASE_PATH, 500);
    fake.fail_requests_always("PUT", LEASE_PATH, 500);
    let stepped_down = wait_held(&mut rx, false, "node-a").await;
    let last_renewal = last_put_before(&fake, failing_since);
    let held_for = stepped_down - last_renewal;
    eprintln!("failing renewals: stepped down {held_for:?} after the last renewal");
    // Others may take over 2 s after they saw that renewal; we are out well before.
    assert!(
        held_for < Duration::from_secs(2),
        "stepped down {held_for:?} after the last renewal"
    );
    assert!(
        held_for >= Duration::from_millis(900),
        "stepped down without waiting: {held_for:?}"
    );

    // Once the API server answers again it holds the lease again (it is still the holder).
    fake.clear_faults();
    wait_held(&mut rx, true, "node-a").await;
}

#[tokio::test]
async fn holder_steps_down_before_expiry_when_the_api_server_hangs() {
    let fake = FakeApiServer::start().await;
    let a = elector(&fake, "node-a");
    let mut rx = a.subscribe();
    wait_held(&mut rx, true, "node-a").await;
    tokio::time::sleep(Duration::from_millis(700)).await;

    let hanging_since = Instant::now();
    fake.delay_requests("GET", LEASE_PATH, Duration::from_secs(60));
    fake.delay_requests("PUT", LEASE_PATH, Duration::from_secs(60));
    let stepped_down = wait_held(&mut rx, false, "node-a").await;
    let held_for = stepped_down - last_put_before(&fake, hanging_since);
    eprintln!("hanging API server: stepped down {held_for:?} after the last renewal");
    assert!(
        held_for < Duration::from_secs(2),
        "stepped down {held_for:?} after the last renewal"
    );
}

#[tokio::test]
async fn live_nodes_shrink_when_an_agent_stops_renewing_and_at_once_on_release() {
    let fake = FakeApiServer::start().await;
    let a = heartbeat(&fake, "node-a");
    let b = heartbeat(&fake, "node-b");
    // The leader lease in the same namespace is not a heartbeat.
    let _leader = elector(&fake, "node-c");
    let live = LiveNodes::spawn(fake.client(), NS);
    let mut live_rx = live.subscribe();
    let both: BTreeSet<String> = ["node-a".into(), "node-b".into()].into();
    tokio::time::timeout(WAIT, live_rx.wait_for(|set| set.as_ref() == Some(&both)))
        .await
        .expect("both heartbeats seen live")
        .expect("watcher alive");
    let lease = fake
        .object("Lease", NS, "sluice-node-node-a")
        .expect("heartbeat lease");
    assert_eq!(
        lease["metadata"]["labels"]["sluice.dev/lease"],
        "node-heartbeat"
    );

    // node-b's agent dies: its heartbeat expires after its 2 s duration.
    let stopped = Instant::now();
    drop(b);
    let only_a: BTreeSet<String> = ["node-a".into()].into();
    tokio::time::timeout(WAIT, live_rx.wait_for(|set| set.as_ref() == Some(&only_a)))
        .await
        .expect("node-b dropped out")
        .expect("watcher alive");
    let after = stopped.elapsed();
    eprintln!("dead node left the live set {after:?} after it stopped (2 s lease)");
    assert!(
        after >= Duration::from_millis(1500),
        "dropped out before expiry: {after:?}"
    );
    assert!(
        after <= Duration::from_secs(4),
        "dropped out late: {after:?}"
    );

    // node-a shuts down cleanly: released, gone from the set without waiting for expiry.
    let stopped = Instant::now();
    a.shutdown().await;
    tokio::time::timeout(
        WAIT,
        live_rx.wait_for(|set| set.as_ref().is_some_and(BTreeSet::is_empty)),
    )
    .await
    .expect("node-a dropped out")
    .expect("watcher alive");
    assert!(
        stopped.elapsed() < Duration::from_secs(1),
        "{:?}",
        stopped.elapsed()
    );
}

#[tokio::test]
async fn heartbeat_renewed_long_ago_is_not_live_when_first_seen() {
    let fake = FakeApiServer::start().await;
    let heartbeat_lease = |node: &str, renewed: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"namespace": NS, "name": format!("sluice-node-{node}"),
                            "labels": {"sluice.dev/lease": "node-heartbeat"}},
               "spec": {"holderIdentity": node, "leaseDurationSeconds": 6, "renewTime": renewed}})
    };
    fake.apply(heartbeat_lease("node-dead", "2020-01-01T00:00:00.000000Z"));
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    fake.apply(heartbeat_lease("node-fresh", &now));
    let live = LiveNodes::spawn(fake.client(), NS);
    let mut rx = live.subscribe();
    let listed = tokio::time::timeout(WAIT, rx.wait_for(Option::is_some))
        .await
        .expect("listed")
        .expect("watcher alive")
        .clone();
    assert_eq!(listed, Some(["node-fresh".to_owned()].into()));
}

/// The history compacted while the heartbeat watch was cut and the resumed watch refused with
/// HTTP 410: the watch relists (kube-runtime alone would retry the expired resourceVersion
/// forever and never see another heartbeat).
#[tokio::test]
async fn live_nodes_relist_when_the_resumed_watch_gets_http_410() {
    let fake = FakeApiServer::start().await;
    fake.set_gone_style(GoneStyle::Http410);
    let _a = heartbeat(&fake, "node-a");
    let live = LiveNodes::spawn(fake.client(), NS);
    let mut live_rx = live.subscribe();
    let only_a: BTreeSet<String> = ["node-a".into()].into();
    tokio::time::timeout(WAIT, live_rx.wait_for(|set| set.as_ref() == Some(&only_a)))
        .await
        .expect("node-a seen live")
        .expect("watcher alive");
    // A change the heartbeat watch does not see, then the history is compacted: resuming
    // from the last resourceVersion it saw is now too old.
    fake.apply(json!({"apiVersion": "v1", "kind": "Service",
                      "metadata": {"name": "other", "namespace": "default"}, "spec": {}}));
    fake.compact_and_drop_watches();
    let _b = heartbeat(&fake, "node-b");
    let both: BTreeSet<String> = ["node-a".into(), "node-b".into()].into();
    tokio::time::timeout(WAIT, live_rx.wait_for(|set| set.as_ref() == Some(&both)))
        .await
        .expect("node-b seen after the relist")
        .expect("watcher alive");
}

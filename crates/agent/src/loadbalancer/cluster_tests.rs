//! The allocation loop with `--source k8s` against the fake API server of crates/k8s, fed by
//! the real source and pool watch: only the leader writes, failed writes are retried, a
//! written status is not written again, and the L2 side sees the address once it is written.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::watcher;
use serde_json::json;
use sluice_k8s::{
    EventRecorder, EventRecorderConfig, K8sSource, K8sSourceConfig, ObjectWatch, keep_as_is,
};
use sluice_lbipam::{AllocatorConfig, LoadBalancerIPPool};
use tokio::sync::watch;

use super::fake_apiserver::FakeApiServer;
use super::ipam::{IpamLoop, Role};
use super::metrics::LbStats;
use super::writes::Writer;

const WAIT: Duration = Duration::from_secs(10);
const STATUS_PATH: &str = "/api/v1/namespaces/default/services/web/status";

fn patches(fake: &FakeApiServer, path: &str) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path == path)
        .count()
}

fn status(fake: &FakeApiServer) -> Option<serde_json::Value> {
    let service = fake.object("Service", "default", "web")?;
    service.pointer("/status/loadBalancer/ingress").cloned()
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Running {
    leader: watch::Sender<bool>,
    l2: watch::Receiver<Option<Arc<super::announce::L2Input>>>,
    _pools: ObjectWatch<LoadBalancerIPPool>,
    _shutdown: watch::Sender<bool>,
}

/// The real source and pool watch against `fake`, feeding an allocation loop whose
/// leadership the test decides.
fn start(fake: &FakeApiServer) -> Running {
    let client = fake.client();
    let (snapshot_tx, snapshots) = watch::channel(None);
    let source = K8sSource::new(client.clone(), K8sSourceConfig::new("node-a"));
    // The source's batches reach the allocation loop through the relay, as in the agent.
    let (batch_tx, batch_rx) = tokio::sync::mpsc::channel(64);
    let (to_sync, mut for_sync) = tokio::sync::mpsc::channel(64);
    tokio::spawn(source.run(batch_tx));
    tokio::spawn(async move { while for_sync.recv().await.is_some() {} });
    let pools = ObjectWatch::<LoadBalancerIPPool>::spawn(
        client.clone(),
        watcher::Config::default(),
        keep_as_is,
    );
    let (leader, leader_rx) = watch::channel(false);
    let (l2_tx, l2) = watch::channel(None);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let relay = super::relay::Relay::new();
    tokio::spawn(relay.run(batch_rx, to_sync, snapshot_tx, None, shutdown_rx.clone()));
    let stats = Arc::new(LbStats::default());
    let recorder = EventRecorder::spawn(client.clone(), EventRecorderConfig::new("node-a"));
    let ipam = IpamLoop {
        node: "node-a".into(),
        allocator: AllocatorConfig::default(),
        stats: Arc::clone(&stats),
        l2: l2_tx,
        role: Role::Cluster {
            writer: Box::new(Writer::new(client, recorder, stats)),
            leader: leader_rx,
        },
    };
    tokio::spawn(ipam.run(snapshots, pools.subscribe(), shutdown_rx));
    Running {
        leader,
        l2,
        _pools: pools,
        _shutdown: shutdown,
    }
}

#[tokio::test]
async fn only_the_leader_writes_retrying_failures_and_writing_each_status_once() {
    let fake = FakeApiServer::start().await;
    fake.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "default", "name": "web", "uid": "uid-web"},
        "spec": {"type": "LoadBalancer", "ipFamilies": ["IPv4"],
                 "ports": [{"port": 80, "protocol": "TCP"}]}}));
    fake.apply(
        json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "LoadBalancerIPPool",
        "metadata": {"name": "lan", "uid": "uid-lan", "generation": 1},
        "spec": {"blocks": [{"cidr": "192.0.2.200/30"}]}}),
    );
    let mut r = start(&fake);

    // Not elected: the allocation runs (the L2 side hears of it) but nothing is written.
    tokio::time::timeout(WAIT, r.l2.wait_for(Option::is_some))
        .await
        .expect("an allocation run")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fake.requests().iter().filter(|r| r.method != "GET").count(),
        0
    );

    // Elected, with the API server failing the first two status writes.
    fake.fail_requests("PATCH", STATUS_PATH, 2, 500);
    r.leader.send_replace(true);
    eventually("the status written", || {
        status(&fake) == Some(json!([{"ip": "192.0.2.200", "ipMode": "VIP"}]))
    })
    .await;
    assert_eq!(patches(&fake, STATUS_PATH), 3, "two failures, then success");
    let pool_path = "/apis/sluice.dev/v1alpha1/loadbalancerippools/lan/status";
    eventually("the pool conditions", || patches(&fake, pool_path) == 1).await;
    let pool = fake.object("LoadBalancerIPPool", "", "lan").unwrap();
    assert_eq!(pool["status"]["conditions"][0]["type"], "Valid");
    assert_eq!(pool["status"]["conditions"][0]["observedGeneration"], 1);
    eventually("the Event", || {
        fake.objects("Event", Some("default"))
            .iter()
            .any(|e| e["reason"] == "IPAllocated" && e["regarding"]["name"] == "web")
    })
    .await;
    // The written address reaches the L2 side...
    let input = tokio::time::timeout(
        WAIT,
        r.l2.wait_for(|i| i.as_ref().is_some_and(|i| !i.targets.is_empty())),
    )
    .await
    .expect("the target")
    .unwrap()
    .clone()
    .unwrap();
    assert!(input.targets.contains_key(&"192.0.2.200".parse().unwrap()));
    // ...and nothing is written twice.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(patches(&fake, STATUS_PATH), 3);
    assert_eq!(patches(&fake, pool_path), 1);

    // No longer elected: a change is not written.
    r.leader.send_replace(false);
    fake.delete("LoadBalancerIPPool", "", "lan");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        patches(&fake, STATUS_PATH),
        3,
        "a follower does not release"
    );
    r.leader.send_replace(true);
    eventually("the release by the new leader", || {
        status(&fake) == Some(json!([]))
    })
    .await;
}

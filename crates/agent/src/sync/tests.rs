//! The sync loop against the fake dataplane: what is programmed when, batching, retries,
//! partial failures and the stale flows of an earlier run.

use clap::Parser as _;
use k8s_openapi::api::core::v1::Service;
use sluice_dataplane::{FakeCall, FakeDataplane};
use sluice_model::EndpointSlice;
use sluice_model::{Object, Protocol, ServicePortName, Snapshot, SourceEvent};
use sluice_plan::StaleFlow;

use super::*;
use crate::cli::{Cli, Command};

fn config(min_sync: &str) -> AgentConfig {
    let argv = [
        "sluice",
        "agent",
        "--source",
        "dir:/x",
        "--min-sync-period",
        min_sync,
        "--disable-ingress",
    ];
    let Command::Agent(args) = Cli::try_parse_from(argv).unwrap().command else {
        panic!("agent command");
    };
    args.validate_with_hostname(|| Some("node-a".into()))
        .unwrap()
}

fn service(i: usize, protocol: &str) -> Arc<Service> {
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": format!("s{i}")},
            "spec": {"clusterIP": format!("10.96.0.{}", i + 1),
                     "ports": [{"port": 80, "protocol": protocol}]},
        }))
        .unwrap(),
    )
}

fn snapshot(services: usize) -> Snapshot {
    let mut s = Snapshot::default();
    for i in 0..services {
        s.services.insert(
            ObjectKey::new("default", format!("s{i}")),
            service(i, "TCP"),
        );
    }
    s
}

/// One UDP service `s0` whose single endpoint is 10.244.1.2:5353.
fn udp_snapshot() -> Snapshot {
    let mut s = Snapshot::default();
    s.services
        .insert(ObjectKey::new("default", "s0"), service(0, "UDP"));
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "default", "name": "s0-1",
                     "labels": {"kubernetes.io/service-name": "s0"}},
        "addressType": "IPv4",
        "ports": [{"port": 5353, "protocol": "UDP"}],
        "endpoints": [{"addresses": ["10.244.1.2"]}],
    }))
    .unwrap();
    s.endpoint_slices
        .insert(ObjectKey::new("default", "s0-1"), Arc::new(slice));
    s
}

/// Stands in for a source: reports every object of a snapshot (the store drops the ones it
/// already has), then `Synced`.
struct Source(mpsc::Sender<SourceBatch>);

impl Source {
    async fn send(&self, snapshot: Snapshot) {
        let mut events: Vec<SourceEvent> = Vec::new();
        for (key, svc) in snapshot.services {
            events.push(SourceEvent::Apply(key, Object::Service(svc)));
        }
        for (key, slice) in snapshot.endpoint_slices {
            events.push(SourceEvent::Apply(key, Object::EndpointSlice(slice)));
        }
        events.push(SourceEvent::Synced);
        let batch = SourceBatch::new(events, std::time::Instant::now());
        self.0.send(batch).await.unwrap();
    }
}

type Handles = (Source, watch::Sender<bool>, tokio::task::JoinHandle<()>);

fn start(dp: &FakeDataplane, min_sync: &str, restored: Restored) -> Handles {
    let config = config(min_sync);
    let sync = SyncLoop {
        health: Arc::new(HealthState::new("node-a".into(), config.sync_period)),
        config,
        dataplane: Some(Box::new(dp.clone())),
        restored,
        metrics: Arc::new(Metrics::new(None, Vec::new())),
        observers: Default::default(),
        local_addresses: LocalAddresses::new(Arc::new(sluice_hostnet::FakeHostNetwork::new())),
        listeners: Arc::default(),
    };
    let (tx, rx) = mpsc::channel(16);
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(sync.run(rx, stop_rx));
    (Source(tx), stop_tx, task)
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Waits (up to 10 s: the machine may be busy) until the calls made are `expected`.
async fn calls_become(dp: &FakeDataplane, expected: &[(&'static str, usize)]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while summary(dp) != expected && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(summary(dp), expected);
}

/// (kind, services in the plan or in the delta) of each programming call.
fn summary(dp: &FakeDataplane) -> Vec<(&'static str, usize)> {
    dp.calls()
        .into_iter()
        .filter_map(|c| match c {
            FakeCall::Resync { services } => Some(("resync", services)),
            FakeCall::Apply { delta } => Some(("apply", delta.services.len())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn nothing_is_programmed_before_the_first_snapshot_then_a_resync_then_deltas() {
    let dp = FakeDataplane::new();
    let (tx, stop, task) = start(&dp, "0s", Restored::default());
    settle().await;
    assert!(summary(&dp).is_empty());
    tx.send(snapshot(2)).await;
    calls_become(&dp, &[("resync", 2)]).await;
    // The same content again is not programmed again.
    tx.send(snapshot(2)).await;
    settle().await;
    assert_eq!(summary(&dp).len(), 1);
    // One more service: a delta naming only it.
    tx.send(snapshot(3)).await;
    calls_become(&dp, &[("resync", 2), ("apply", 1)]).await;
    assert_eq!(dp.programmed().services.len(), 3);
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn changes_within_the_minimum_sync_period_are_batched() {
    let dp = FakeDataplane::new();
    let (tx, stop, task) = start(&dp, "500ms", Restored::default());
    tx.send(snapshot(1)).await;
    settle().await;
    for n in 2..=5 {
        tx.send(snapshot(n)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(900)).await;
    let calls = summary(&dp);
    assert_eq!(calls.first(), Some(&("resync", 1)));
    assert!(calls.len() <= 3, "four changes in 80 ms batched: {calls:?}");
    assert_eq!(dp.programmed().services.len(), 5, "{calls:?}");
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn a_failed_call_is_retried_as_a_resync_without_a_new_change() {
    let dp = FakeDataplane::new();
    dp.fail_next_calls(1);
    let (tx, stop, task) = start(&dp, "0s", Restored::default());
    tx.send(snapshot(3)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(summary(&dp), vec![("resync", 3), ("resync", 3)]);
    assert_eq!(dp.programmed().services.len(), 3);
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn a_refused_service_is_retried_and_programmed_once_the_kernel_accepts_it() {
    let dp = FakeDataplane::new();
    let (tx, stop, task) = start(&dp, "0s", Restored::default());
    tx.send(snapshot(1)).await;
    settle().await;
    let refused = ServicePortName::new("default", "s1", "", Protocol::Tcp);
    dp.fail_service(refused.clone());
    tx.send(snapshot(2)).await;
    settle().await;
    assert!(!dp.programmed().services.contains_key(&refused));
    dp.heal();
    // The retry (a resync after the backoff) programs it without any new change.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        dp.programmed().services.contains_key(&refused),
        "{:?}",
        summary(&dp)
    );
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn a_refused_service_does_not_hold_back_changes_of_the_others() {
    let dp = FakeDataplane::new();
    let (tx, stop, task) = start(&dp, "0s", Restored::default());
    tx.send(snapshot(1)).await;
    settle().await;
    let refused = ServicePortName::new("default", "s1", "", Protocol::Tcp);
    dp.fail_service(refused.clone());
    tx.send(snapshot(2)).await;
    // Retries after 0.5 s and 1.5 s fail too: the next one is due at 3.5 s.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    tx.send(snapshot(3)).await;
    settle().await;
    let s2 = ServicePortName::new("default", "s2", "", Protocol::Tcp);
    assert!(
        dp.programmed().services.contains_key(&s2),
        "a change of another service waited for the retry: {:?}",
        summary(&dp)
    );
    assert!(!dp.programmed().services.contains_key(&refused));
    // And the refused one is still retried, and programmed once accepted.
    dp.heal();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        dp.programmed().services.contains_key(&refused),
        "{:?}",
        summary(&dp)
    );
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn flows_toward_backends_gone_while_the_agent_was_down_are_removed_after_the_first_resync() {
    let dp = FakeDataplane::new();
    let gone: (Protocol, std::net::IpAddr, u16) =
        (Protocol::Udp, "10.244.1.9".parse().unwrap(), 5353);
    let kept = (Protocol::Udp, "10.244.1.2".parse().unwrap(), 5353);
    let restored = Restored {
        backends: [gone, kept].into(),
    };
    let (tx, stop, task) = start(&dp, "0s", restored);
    tx.send(udp_snapshot()).await;
    settle().await;
    let stale: Vec<Vec<StaleFlow>> = dp
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            FakeCall::Apply { delta } => Some(delta.stale_flows),
            _ => None,
        })
        .collect();
    assert_eq!(
        stale,
        vec![vec![StaleFlow::Backend {
            protocol: Protocol::Udp,
            ip: gone.1,
            port: 5353
        }]],
        "only the gone backend, once, and no flush of flows the restart kept"
    );
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn a_relist_is_programmed_only_when_complete_and_only_what_it_changed() {
    let dp = FakeDataplane::new();
    let (tx, stop, task) = start(&dp, "0s", Restored::default());
    tx.send(snapshot(3)).await;
    settle().await;
    assert_eq!(summary(&dp), vec![("resync", 3)]);
    let relist_of = |services: Vec<usize>| {
        let mut events = vec![SourceEvent::RelistStart(
            sluice_model::SnapshotKind::Service,
        )];
        for i in services {
            let key = ObjectKey::new("default", format!("s{i}"));
            events.push(SourceEvent::Apply(key, Object::Service(service(i, "TCP"))));
        }
        SourceBatch::new(events, std::time::Instant::now())
    };
    // s2 was deleted while the watch was down; the relist arrives in two parts.
    tx.0.send(relist_of(vec![0])).await.unwrap();
    tx.0.send(relist_of(vec![0, 1])).await.unwrap();
    settle().await;
    assert_eq!(summary(&dp).len(), 1, "half a relist is not programmed");
    let done = SourceEvent::RelistDone(sluice_model::SnapshotKind::Service);
    tx.0.send(SourceBatch::new(vec![done], std::time::Instant::now()))
        .await
        .unwrap();
    settle().await;
    assert_eq!(summary(&dp), vec![("resync", 3), ("apply", 1)]);
    let programmed: Vec<String> = dp
        .programmed()
        .services
        .keys()
        .map(|name| name.name().to_owned())
        .collect();
    assert_eq!(programmed, ["s0", "s1"]);
    stop.send(true).unwrap();
    task.await.unwrap();
}

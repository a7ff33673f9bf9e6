//! `update_ingress_status`, `IngressStatusWriter` and `client` against the fake API server.

mod fake_apiserver;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use serde_json::{Value, json};
use sluice_k8s::{
    DesiredIngressStatus, IngressStatusWriter, IngressStatusWriterConfig, K8sError, LeaseConfig,
    LeaseHolder, client, update_ingress_status,
};
use sluice_model::{ObjectKey, Snapshot};
use tokio::sync::watch;

const STATUS_PATH: &str = "/apis/networking.k8s.io/v1/namespaces/web/ingresses/shop/status";

fn shop_ingress() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
           "metadata": {"namespace": "web", "name": "shop"},
           "spec": {"defaultBackend": {"service": {"name": "shop", "port": {"number": 80}}}}})
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().expect("test ip")).collect()
}

fn patches(fake: &FakeApiServer) -> Vec<fake_apiserver::Recorded> {
    fake.requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect()
}

#[tokio::test]
async fn writes_the_status_with_a_merge_patch_only_when_it_differs() {
    let fake = FakeApiServer::start().await;
    fake.apply(shop_ingress());
    let client = fake.client();
    let key = ObjectKey::new("web", "shop");

    update_ingress_status(&client, &key, &ips(&["10.0.0.1", "fd00::1"]))
        .await
        .expect("status written");
    let written = patches(&fake);
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].path, STATUS_PATH);
    assert_eq!(
        written[0].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    let body: Value = serde_json::from_str(&written[0].body).expect("JSON patch body");
    assert_eq!(
        body,
        json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]}}})
    );
    let stored = fake.object("Ingress", "web", "shop").expect("ingress");
    assert_eq!(
        stored["status"]["loadBalancer"]["ingress"][1]["ip"],
        "fd00::1"
    );

    // Same addresses in another order: read, but nothing written.
    update_ingress_status(&client, &key, &ips(&["fd00::1", "10.0.0.1"]))
        .await
        .expect("no-op");
    assert_eq!(patches(&fake).len(), 1);
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.method == "GET" && r.path == STATUS_PATH)
    );

    update_ingress_status(&client, &key, &[])
        .await
        .expect("status cleared");
    let written = patches(&fake);
    assert_eq!(written.len(), 2);
    let body: Value = serde_json::from_str(&written[1].body).expect("JSON patch body");
    assert_eq!(body, json!({"status": {"loadBalancer": {"ingress": []}}}));
}

#[tokio::test]
async fn missing_ingress_is_an_error_naming_it() {
    let fake = FakeApiServer::start().await;
    let error = update_ingress_status(
        &fake.client(),
        &ObjectKey::new("web", "gone"),
        &ips(&["10.0.0.1"]),
    )
    .await
    .expect_err("no such ingress");
    assert!(matches!(error, K8sError::GetIngress { .. }), "{error:?}");
    assert!(error.to_string().contains("web/gone"), "{error}");
    assert!(patches(&fake).is_empty());
}

#[tokio::test]
async fn client_from_a_kubeconfig_file_talks_to_its_server() {
    let fake = FakeApiServer::start().await;
    fake.apply(shop_ingress());
    let dir = std::env::temp_dir().join(format!("sluice-k8s-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("kubeconfig");
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
         clusters:\n- name: fake\n  cluster:\n    server: {}\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
         users:\n- name: fake\n  user: {{}}\n",
        fake.url()
    );
    std::fs::write(&path, kubeconfig).expect("write kubeconfig");

    let client = client(Some(&path)).await.expect("client from kubeconfig");
    update_ingress_status(&client, &ObjectKey::new("web", "shop"), &ips(&["10.0.0.7"]))
        .await
        .expect("status written through the kubeconfig's server");
    assert_eq!(patches(&fake).len(), 1);
    std::fs::remove_dir_all(&dir).ok();

    let missing = dir.join("does-not-exist");
    let Err(error) = sluice_k8s::client(Some(&missing)).await else {
        panic!("a client from a missing kubeconfig");
    };
    assert!(matches!(error, K8sError::Kubeconfig { .. }), "{error:?}");
    assert!(error.to_string().contains("does-not-exist"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// IngressStatusWriter

const WAIT: Duration = Duration::from_secs(10);

fn ingress_with_status(name: &str, entries: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
           "metadata": {"namespace": "web", "name": name},
           "spec": {"defaultBackend": {"service": {"name": name, "port": {"number": 80}}}},
           "status": {"loadBalancer": {"ingress": entries}}})
}

/// Fast retries so that the retry tests take well under a second per attempt.
fn fast_config() -> IngressStatusWriterConfig {
    IngressStatusWriterConfig {
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_millis(400),
        ..IngressStatusWriterConfig::default()
    }
}

fn serve(entries: &[(&str, &[&str])]) -> DesiredIngressStatus {
    DesiredIngressStatus {
        served: entries
            .iter()
            .map(|(name, list)| (ObjectKey::new("web", *name), ips(list)))
            .collect(),
        cleared: Default::default(),
    }
}

/// The `ip`s (and `hostname`s) listed in the stored Ingress's status.
fn status_of(fake: &FakeApiServer, name: &str) -> Vec<String> {
    let Some(ingress) = fake.object("Ingress", "web", name) else {
        return Vec::new();
    };
    ingress["status"]["loadBalancer"]["ingress"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e["ip"].as_str().or(e["hostname"].as_str()))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn status_patches(fake: &FakeApiServer, name: &str) -> Vec<fake_apiserver::Recorded> {
    let path = format!("/apis/networking.k8s.io/v1/namespaces/web/ingresses/{name}/status");
    fake.requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path == path)
        .collect()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn writer_writes_the_status_within_a_second_of_a_change_and_only_then() {
    let fake = FakeApiServer::start().await;
    fake.apply(shop_ingress());
    let (_leader, leader_rx) = watch::channel(true);
    let writer = IngressStatusWriter::spawn(fake.client(), leader_rx, fast_config());

    let changed = Instant::now();
    writer.set_desired(serve(&[("shop", &["10.0.0.1"])]));
    eventually("first status", || status_of(&fake, "shop") == ["10.0.0.1"]).await;
    let latency = status_patches(&fake, "shop")[0].at - changed;
    eprintln!("status written {latency:?} after the change");
    assert!(latency < Duration::from_secs(1), "{latency:?}");

    let changed = Instant::now();
    writer.set_desired(serve(&[("shop", &["10.0.0.2", "fd00::1"])]));
    eventually("second status", || {
        status_of(&fake, "shop") == ["10.0.0.2", "fd00::1"]
    })
    .await;
    let latency = status_patches(&fake, "shop")[1].at - changed;
    assert!(latency < Duration::from_secs(1), "{latency:?}");

    // The same desired state again: no request at all.
    let before = fake.requests().len();
    writer.set_desired(serve(&[("shop", &["10.0.0.2", "fd00::1"])]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.requests().len(), before);
    assert_eq!(writer.stats().written, 2);
}

#[tokio::test]
async fn status_that_is_already_current_is_read_but_not_patched() {
    let fake = FakeApiServer::start().await;
    fake.apply(ingress_with_status("shop", json!([{"ip": "10.0.0.1"}])));
    let (_leader, leader_rx) = watch::channel(true);
    let writer = IngressStatusWriter::spawn(fake.client(), leader_rx, fast_config());
    writer.set_desired(serve(&[("shop", &["10.0.0.1"])]));
    eventually("verified", || writer.stats().unchanged == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(status_patches(&fake, "shop").is_empty());
    assert_eq!(writer.stats().written, 0);
}

#[tokio::test]
async fn a_writer_that_does_not_lead_sends_nothing_until_it_leads() {
    let fake = FakeApiServer::start().await;
    fake.apply(shop_ingress());
    let (leader, leader_rx) = watch::channel(false);
    let writer = IngressStatusWriter::spawn(fake.client(), leader_rx, fast_config());
    writer.set_desired(serve(&[("shop", &["10.0.0.1"])]));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        fake.requests()
            .iter()
            .all(|r| !r.path.contains("/ingresses/")),
        "a non-leader touched Ingresses"
    );

    let elected = Instant::now();
    leader.send_replace(true);
    eventually("written once leader", || {
        status_of(&fake, "shop") == ["10.0.0.1"]
    })
    .await;
    assert!(
        elected.elapsed() < Duration::from_secs(1),
        "{:?}",
        elected.elapsed()
    );

    leader.send_replace(false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    writer.set_desired(serve(&[("shop", &["10.0.0.9"])]));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        status_of(&fake, "shop"),
        ["10.0.0.1"],
        "written after stepping down"
    );
}

#[tokio::test]
async fn only_the_elected_agent_writes_and_its_successor_takes_over() {
    let fake = FakeApiServer::start().await;
    fake.apply(shop_ingress());
    let elector = |identity: &str| {
        let mut config = LeaseConfig::leader_election("kube-system", "sluice-leader", identity);
        config.lease_duration = Duration::from_secs(2);
        config.renew_period = Duration::from_millis(300);
        config.renew_deadline = Duration::from_millis(1200);
        config.retry_period = Duration::from_millis(200);
        LeaseHolder::spawn(fake.client(), config).expect("valid config")
    };
    // Each agent writes its own node's address, so the status tells who wrote it.
    let a = elector("node-a");
    let writer_a = IngressStatusWriter::spawn(fake.client(), a.subscribe(), fast_config());
    writer_a.set_desired(serve(&[("shop", &["10.0.0.1"])]));
    eventually("node-a wrote", || status_of(&fake, "shop") == ["10.0.0.1"]).await;
    let b = elector("node-b");
    let writer_b = IngressStatusWriter::spawn(fake.client(), b.subscribe(), fast_config());
    writer_b.set_desired(serve(&[("shop", &["10.0.0.2"])]));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let by = |ip: &str| {
        status_patches(&fake, "shop")
            .iter()
            .filter(|p| p.body.contains(ip))
            .count()
    };
    assert_eq!(by("10.0.0.2"), 0, "the non-leader wrote");
    assert_eq!(status_of(&fake, "shop"), ["10.0.0.1"]);

    drop(a); // node-a's agent dies
    eventually("node-b took over and wrote", || {
        status_of(&fake, "shop") == ["10.0.0.2"]
    })
    .await;
    assert_eq!(
        by("10.0.0.1"),
        1,
        "node-a wrote again after losing the lease"
    );
    assert_eq!((writer_a.stats().written, writer_b.stats().written), (1, 1));
}

#[tokio::test]
async fn failed_writes_are_retried_with_capped_exponential_backoff() {
    let fake = FakeApiServer::start().await;
    fake.apply(shop_ingress());
    fake.fail_requests("PATCH", STATUS_PATH, 5, 500);
    let (_leader, leader_rx) = watch::channel(true);
    let writer = IngressStatusWriter::spawn(fake.client(), leader_rx, fast_config());
    writer.set_desired(serve(&[("shop", &["10.0.0.1"])]));
    eventually("written after 5 failures", || {
        status_of(&fake, "shop") == ["10.0.0.1"]
    })
    .await;

    let attempts: Vec<Instant> = status_patches(&fake, "shop").iter().map(|p| p.at).collect();
    assert_eq!(attempts.len(), 6);
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("gaps between attempts: {gaps:?}");
    // 100, 200, 400 ms, then capped at 400 ms (uncapped would be 800 ms and 1.6 s).
    for (gap, expected_ms) in gaps.iter().zip([100, 200, 400, 400, 400]) {
        assert!(
            *gap >= Duration::from_millis(expected_ms * 9 / 10),
            "{gaps:?}"
        );
    }
    assert!(
        gaps[4] < Duration::from_millis(1200),
        "not capped: {gaps:?}"
    );
    let stats = writer.stats();
    assert_eq!((stats.failed, stats.written), (5, 1), "{stats:?}");
}

fn snapshot_of(fake: &FakeApiServer) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for object in fake.objects("Ingress", Some("web")) {
        let ingress: k8s_openapi::api::networking::v1::Ingress =
            serde_json::from_value(object).expect("stored ingress decodes");
        let key = ObjectKey::new("web", ingress.metadata.name.clone().expect("name"));
        snapshot.ingresses.insert(key, Arc::new(ingress));
    }
    snapshot
}

#[tokio::test]
async fn ingress_leaving_our_class_loses_our_address_and_keeps_others() {
    let fake = FakeApiServer::start().await;
    fake.apply(shop_ingress());
    let ours = ips(&["10.0.0.1"]);
    let (_leader, leader_rx) = watch::channel(true);
    let writer = IngressStatusWriter::spawn(fake.client(), leader_rx, fast_config());
    let shop = ObjectKey::new("web", "shop");
    writer.set_desired(DesiredIngressStatus::from_snapshot(
        &snapshot_of(&fake),
        [&shop],
        &ours,
    ));
    eventually("served", || status_of(&fake, "shop") == ["10.0.0.1"]).await;

    // shop moves to another class: no longer served by us. Another Ingress that another
    // controller also lists itself on still has our address from an earlier time.
    fake.apply(ingress_with_status(
        "mixed",
        json!([{"ip": "10.0.0.1"}, {"hostname": "lb.other.example"}]),
    ));
    let desired = DesiredIngressStatus::from_snapshot(&snapshot_of(&fake), [], &ours);
    assert_eq!(desired.cleared.len(), 2, "{desired:?}");
    writer.set_desired(desired);
    eventually("cleared", || {
        status_of(&fake, "shop").is_empty() && status_of(&fake, "mixed") == ["lb.other.example"]
    })
    .await;

    // With the statuses cleared, nothing is left to do and nothing more is sent.
    let desired = DesiredIngressStatus::from_snapshot(&snapshot_of(&fake), [], &ours);
    assert_eq!(desired, DesiredIngressStatus::default());
    writer.set_desired(desired);
    let before = fake.requests().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.requests().len(), before);
}

#[tokio::test]
async fn clearing_does_not_overwrite_a_concurrent_status_change() {
    let fake = FakeApiServer::start().await;
    fake.apply(ingress_with_status(
        "shop",
        json!([{"ip": "10.0.0.1"}, {"ip": "192.0.2.7"}]),
    ));
    fake.delay_requests("PATCH", STATUS_PATH, Duration::from_millis(500));
    let (_leader, leader_rx) = watch::channel(true);
    let writer = IngressStatusWriter::spawn(fake.client(), leader_rx, fast_config());
    writer.set_desired(DesiredIngressStatus {
        served: Default::default(),
        cleared: [(ObjectKey::new("web", "shop"), ips(&["10.0.0.1"]))].into(),
    });
    eventually("patch sent", || !status_patches(&fake, "shop").is_empty()).await;
    // Another controller adds an address while our read-modify-write is in flight.
    fake.apply(ingress_with_status(
        "shop",
        json!([{"ip": "10.0.0.1"}, {"ip": "192.0.2.7"}, {"ip": "192.0.2.8"}]),
    ));
    fake.clear_faults();
    eventually("ours removed, theirs kept", || {
        status_of(&fake, "shop") == ["192.0.2.7", "192.0.2.8"]
    })
    .await;
    assert!(
        writer.stats().failed >= 1,
        "the stale patch must have been refused"
    );
}

#[tokio::test]
async fn deleted_ingress_is_retried_until_the_caller_forgets_it() {
    let fake = FakeApiServer::start().await;
    let (_leader, leader_rx) = watch::channel(true);
    let writer = IngressStatusWriter::spawn(fake.client(), leader_rx, fast_config());
    writer.set_desired(serve(&[("gone", &["10.0.0.1"])]));
    let attempts = || {
        fake.requests()
            .iter()
            .filter(|r| r.path.contains("/ingresses/gone"))
            .count()
    };
    eventually("retried", || attempts() >= 2).await;
    writer.set_desired(DesiredIngressStatus::default());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let settled = attempts();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(attempts(), settled, "still writing a forgotten Ingress");
}

#[tokio::test]
async fn many_ingresses_are_written_with_bounded_concurrency() {
    let fake = FakeApiServer::start().await;
    let names = ["a", "b", "c", "d", "e", "f"];
    for name in names {
        fake.apply(ingress_with_status(name, json!([])));
    }
    // One of them fails first, so a retry comes due while both slots are busy (the first
    // matching fault applies, so this one goes first).
    fake.fail_requests("PATCH", "/ingresses/a/status", 1, 500);
    fake.delay_requests("PATCH", "/status", Duration::from_millis(300));
    let (_leader, leader_rx) = watch::channel(true);
    let config = IngressStatusWriterConfig {
        max_in_flight: 2,
        ..fast_config()
    };
    let writer = IngressStatusWriter::spawn(fake.client(), leader_rx, config);
    let started = Instant::now();
    let entries: Vec<(&str, &[&str])> = names.iter().map(|n| (*n, &["10.0.0.1"][..])).collect();
    writer.set_desired(serve(&entries));
    eventually("all written", || {
        names.iter().all(|n| status_of(&fake, n) == ["10.0.0.1"])
    })
    .await;
    let took = started.elapsed();
    // Six 300 ms writes two at a time: three rounds at least.
    assert!(
        took >= Duration::from_millis(850),
        "more than 2 at once? {took:?}"
    );
    assert_eq!((writer.stats().written, writer.stats().failed), (6, 1));
}

//! `ObjectWatch` against the fake API server, with the `LoadBalancerIPPool` custom resource
//! (cluster-scoped, possibly not installed) and all Nodes.

mod fake_apiserver;

use std::sync::Arc;
use std::time::Duration;

use fake_apiserver::FakeApiServer;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher;
use serde_json::{Value, json};
use sluice_k8s::{ObjectWatch, Objects, keep_as_is, trim_node};
use sluice_lbipam::LoadBalancerIPPool;
use sluice_model::ObjectKey;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(10);

fn pool(name: &str, cidr: &str) -> Value {
    json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "LoadBalancerIPPool",
           "metadata": {"name": name}, "spec": {"blocks": [{"cidr": cidr}]}})
}

type Rx<K> = watch::Receiver<Option<Arc<Objects<K>>>>;

/// Waits until the published map satisfies `check`; returns it.
async fn wait_for<K>(
    rx: &mut Rx<K>,
    what: &str,
    check: impl Fn(&Objects<K>) -> bool,
) -> Arc<Objects<K>> {
    let seen = tokio::time::timeout(WAIT, rx.wait_for(|v| v.as_deref().is_some_and(&check)))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("watch task alive");
    seen.clone().expect("checked")
}

fn cidrs(pools: &Objects<LoadBalancerIPPool>) -> Vec<(String, String)> {
    pools
        .values()
        .map(|p| {
            let cidr = p.spec.blocks[0].cidr.clone().unwrap_or_default();
            (p.name().to_owned(), cidr)
        })
        .collect()
}

fn pools(fake: &FakeApiServer) -> ObjectWatch<LoadBalancerIPPool> {
    ObjectWatch::spawn(fake.client(), watcher::Config::default(), keep_as_is)
}

#[tokio::test]
async fn pools_are_listed_then_followed_through_changes_and_deletions() {
    let fake = FakeApiServer::start().await;
    fake.apply(pool("lan", "192.0.2.240/28"));
    let watch = pools(&fake);
    let mut rx = watch.subscribe();
    let listed = wait_for(&mut rx, "the first list", |p| !p.is_empty()).await;
    assert_eq!(
        cidrs(&listed),
        [("lan".to_owned(), "192.0.2.240/28".to_owned())]
    );
    assert!(listed.contains_key(&ObjectKey::cluster("lan")));

    fake.apply(pool("team-a", "192.0.2.0/27"));
    fake.apply(pool("lan", "192.0.2.224/28"));
    let changed = wait_for(&mut rx, "the added and changed pools", |p| {
        cidrs(p).contains(&("lan".to_owned(), "192.0.2.224/28".to_owned())) && p.len() == 2
    })
    .await;
    assert_eq!(cidrs(&changed)[1], ("team-a".into(), "192.0.2.0/27".into()));

    fake.delete("LoadBalancerIPPool", "", "team-a");
    wait_for(&mut rx, "the deletion", |p| p.len() == 1).await;
    // Deleted while the watch was cut and the history compacted: the relist drops it.
    fake.delete_unseen("LoadBalancerIPPool", "", "lan");
    wait_for(&mut rx, "the relist without lan", Objects::is_empty).await;
}

#[tokio::test]
async fn a_missing_crd_publishes_nothing_until_it_is_installed() {
    let fake = FakeApiServer::start().await;
    // What the API server answers for a resource whose CRD is not installed.
    fake.fail_requests_always("GET", "loadbalancerippools", 404);
    let watch = pools(&fake);
    let rx = watch.subscribe();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(rx.borrow().is_none(), "nothing is published before a list");
    let lists = fake
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/loadbalancerippools"))
        .count();
    assert!(lists >= 1, "the watch kept trying ({lists} requests)");

    fake.clear_faults();
    fake.apply(pool("lan", "192.0.2.240/28"));
    let mut rx = rx;
    wait_for(&mut rx, "the list once the CRD exists", |p| p.len() == 1).await;
}

#[tokio::test]
async fn a_malformed_pool_is_skipped_and_its_last_good_version_kept() {
    let fake = FakeApiServer::start().await;
    fake.apply(pool("lan", "192.0.2.240/28"));
    let watch = pools(&fake);
    let mut rx = watch.subscribe();
    wait_for(&mut rx, "the first list", |p| p.len() == 1).await;

    fake.apply(
        json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "LoadBalancerIPPool",
                      "metadata": {"name": "lan"}, "spec": {"blocks": "not-a-list"}}),
    );
    fake.apply(pool("team-a", "192.0.2.0/27"));
    let seen = wait_for(&mut rx, "the next good pool", |p| p.len() == 2).await;
    assert_eq!(
        cidrs(&seen)[0],
        ("lan".to_owned(), "192.0.2.240/28".to_owned()),
        "the good version of lan stays"
    );
}

#[tokio::test]
async fn every_node_is_watched_without_its_image_list() {
    let fake = FakeApiServer::start().await;
    for name in ["node-a", "node-b"] {
        fake.apply(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "images": [{"names": ["registry.example/app:1"], "sizeBytes": 1000}]}}),
        );
    }
    let watch = ObjectWatch::<Node>::spawn(fake.client(), watcher::Config::default(), trim_node);
    let mut rx = watch.subscribe();
    let nodes = wait_for(&mut rx, "both nodes", |n| n.len() == 2).await;
    for node in nodes.values() {
        let status = node.status.as_ref().expect("status kept");
        assert!(status.images.is_none(), "images dropped");
        assert_eq!(status.conditions.as_ref().map(Vec::len), Some(1));
    }
    // The watch ends with its handle.
    drop(watch);
    tokio::time::timeout(WAIT, rx.changed())
        .await
        .expect("the channel closes")
        .expect_err("closed, not changed");
}

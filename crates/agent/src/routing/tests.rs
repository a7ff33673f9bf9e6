//! The route loop on its own: bursts coalesce, unrelated changes cost no swap, and routes
//! follow while the L4 side does not read its queue at all.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use sluice_model::{Object, SourceEvent};
use sluice_plan::HostMatch;

use super::*;

fn class() -> SourceEvent {
    let class: IngressClass = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "sluice"},
        "spec": {"controller": "sluice.dev/ingress"}
    }))
    .unwrap();
    SourceEvent::Apply(
        ObjectKey::cluster("sluice"),
        Object::IngressClass(Arc::new(class)),
    )
}

fn service(name: &str, ip: &str) -> SourceEvent {
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "shop", "name": name},
        "spec": {"clusterIP": ip, "ports": [{"port": 80}]}
    }))
    .unwrap();
    SourceEvent::Apply(
        ObjectKey::new("shop", name),
        Object::Service(Arc::new(service)),
    )
}

/// Ingress `shop/web` routing host `host` to Service `web`; `version` makes each one a
/// different object for the store.
fn ingress(host: &str, version: usize) -> SourceEvent {
    let ingress: Ingress = serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "shop", "name": "web", "resourceVersion": version.to_string()},
        "spec": {"ingressClassName": "sluice",
                 "rules": [{"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}
    }))
    .unwrap();
    SourceEvent::Apply(
        ObjectKey::new("shop", "web"),
        Object::Ingress(Arc::new(ingress)),
    )
}

fn batch(events: Vec<SourceEvent>) -> SourceBatch {
    SourceBatch::new(events, std::time::Instant::now())
}

fn route_loop(proxy: &Arc<IngressProxy>) -> RouteLoop {
    RouteLoop {
        proxy: Arc::clone(proxy),
        routes: RouteConfig::default(),
        node_name: "node-a".into(),
        local_addresses: LocalAddresses::new(Arc::new(sluice_hostnet::FakeHostNetwork::new())),
        observers: Observers::default(),
        metrics: Arc::new(Metrics::new(Some(Arc::clone(proxy)), Vec::new())),
        address_check: Duration::from_secs(3600),
    }
}

fn proxy() -> Arc<IngressProxy> {
    Arc::new(IngressProxy::new(sluice_ingress::IngressConfig::default()))
}

fn hosts(proxy: &IngressProxy) -> Vec<HostMatch> {
    proxy
        .route_plan()
        .hosts
        .iter()
        .map(|h| h.host.clone())
        .collect()
}

fn exact(host: &str) -> HostMatch {
    HostMatch::Exact(host.into())
}

#[tokio::test]
async fn a_burst_of_changes_makes_one_swap_with_the_last_version() {
    let proxy = proxy();
    let (tx, rx) = mpsc::channel(64);
    tx.send(batch(vec![
        class(),
        service("web", "10.96.0.1"),
        ingress("v0.test", 0),
    ]))
    .await
    .unwrap();
    tx.send(batch(vec![SourceEvent::Synced])).await.unwrap();
    for version in 1..=20 {
        tx.send(batch(vec![ingress(&format!("v{version}.test"), version)]))
            .await
            .unwrap();
    }
    drop(tx);
    let (_stop, shutdown) = watch::channel(false);
    route_loop(&proxy).run(rx, shutdown).await;
    assert_eq!(hosts(&proxy), [exact("v20.test")]);
    assert_eq!(proxy.stats().route_table_swaps, 1);
}

#[tokio::test]
async fn changes_the_routes_do_not_use_swap_nothing() {
    let proxy = proxy();
    let (tx, rx) = mpsc::channel(64);
    let (_stop, shutdown) = watch::channel(false);
    let running = tokio::spawn(route_loop(&proxy).run(rx, shutdown));
    tx.send(batch(vec![
        class(),
        service("web", "10.96.0.1"),
        service("other", "10.96.0.2"),
        ingress("shop.test", 1),
        SourceEvent::Synced,
    ]))
    .await
    .unwrap();
    wait_for(|| proxy.stats().route_table_swaps == 1).await;
    // A Service no Ingress routes to: nothing to plan.
    tx.send(batch(vec![service("other", "10.96.0.3")]))
        .await
        .unwrap();
    // The Service the Ingress routes to: planned again.
    tx.send(batch(vec![service("web", "10.96.0.4")]))
        .await
        .unwrap();
    drop(tx);
    running.await.unwrap();
    assert_eq!(proxy.stats().route_table_swaps, 2);
}

/// The sync loop's copy of the batches is never read here (an L4 sync that takes long, or
/// `--min-sync-period`): the routes follow all the same, and the sync side gets every batch.
#[tokio::test]
async fn routes_follow_while_the_l4_side_does_not_read() {
    let proxy = proxy();
    let (tx, rx) = mpsc::channel(64);
    let (_stop, shutdown) = watch::channel(false);
    let (mut to_sync, to_routes) = tee(rx, 64, shutdown.clone());
    tokio::spawn(route_loop(&proxy).run(to_routes, shutdown));
    tx.send(batch(vec![
        class(),
        service("web", "10.96.0.1"),
        ingress("a.test", 1),
        SourceEvent::Synced,
    ]))
    .await
    .unwrap();
    wait_for(|| hosts(&proxy) == [exact("a.test")]).await;
    tx.send(batch(vec![ingress("b.test", 2)])).await.unwrap();
    wait_for(|| hosts(&proxy) == [exact("b.test")]).await;
    let mut seen = 0;
    while to_sync.try_recv().is_ok() {
        seen += 1;
    }
    assert_eq!(seen, 2, "the sync loop's queue holds both batches");
}

async fn wait_for(mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

//! The allocation loop in `dir:` mode (no API server): the sync loop gets the Services with
//! their assigned addresses, the announcer gets what to announce.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use sluice_l2announce::Eligibility;
use sluice_model::ObjectKey;

use super::*;
use crate::loadbalancer::tests::{lb_service, node, pool, slice, snapshot};

const WAIT: Duration = Duration::from_secs(5);

struct Running {
    snapshots: watch::Sender<Option<Arc<Snapshot>>>,
    pools: watch::Sender<Option<Arc<Objects<LoadBalancerIPPool>>>>,
    overlay: watch::Receiver<Option<Arc<Snapshot>>>,
    l2: watch::Receiver<Option<Arc<L2Input>>>,
    _shutdown: watch::Sender<bool>,
}

fn start() -> Running {
    let (snapshots, snapshots_rx) = watch::channel(None);
    let (pools, pools_rx) = watch::channel(None);
    let (overlay_tx, overlay) = watch::channel(None);
    let (l2_tx, l2) = watch::channel(None);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let ipam = IpamLoop {
        node: "node-a".into(),
        allocator: AllocatorConfig::default(),
        stats: Arc::new(LbStats::default()),
        l2: l2_tx,
        role: Role::Directory {
            overlay: overlay_tx,
        },
    };
    tokio::spawn(ipam.run(snapshots_rx, pools_rx, shutdown_rx));
    Running {
        snapshots,
        pools,
        overlay,
        l2,
        _shutdown: shutdown,
    }
}

fn pools(list: &[LoadBalancerIPPool]) -> Option<Arc<Objects<LoadBalancerIPPool>>> {
    let map = list
        .iter()
        .map(|p| (ObjectKey::cluster(p.name()), Arc::new(p.clone())))
        .collect();
    Some(Arc::new(map))
}

fn status_of(snapshot: &Snapshot, name: &str) -> Vec<String> {
    let service = &snapshot.services[&ObjectKey::new("default", name)];
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default();
    ingress.into_iter().filter_map(|i| i.ip).collect()
}

async fn next<T: Clone>(rx: &mut watch::Receiver<Option<T>>, check: impl Fn(&T) -> bool) -> T {
    let seen = tokio::time::timeout(WAIT, rx.wait_for(|v| v.as_ref().is_some_and(&check)))
        .await
        .expect("in time")
        .expect("loop alive");
    seen.clone().expect("checked")
}

#[tokio::test]
async fn directory_services_get_pool_addresses_in_memory_and_are_announced() {
    let mut r = start();
    let snap = snapshot(
        vec![
            lb_service("web", &[], false),
            lb_service("local", &[], true),
        ],
        vec![slice("local", &[("node-b", true)])],
        vec![node("node-a", None, "192.0.2.11")],
    );
    r.snapshots.send_replace(Some(Arc::new(snap)));
    r.pools
        .send_replace(pools(&[pool("lan", "192.0.2.200/30", true)]));
    let applied = next(&mut r.overlay, |s| !status_of(s, "web").is_empty()).await;
    // Oldest first, then by name: both have no timestamp, so `local` comes first.
    assert_eq!(status_of(&applied, "local"), ["192.0.2.200"]);
    assert_eq!(status_of(&applied, "web"), ["192.0.2.201"]);
    let input = next(&mut r.l2, |i| i.targets.len() == 2).await;
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        input.targets,
        BTreeMap::from([
            (
                ip("192.0.2.200"),
                Eligibility::Only(["node-b".to_owned()].into())
            ),
            (ip("192.0.2.201"), Eligibility::AnyNode),
        ])
    );
    assert_eq!(input.node_addresses, vec![ip("192.0.2.11")]);
}

#[tokio::test]
async fn without_pools_the_directory_statuses_pass_through_untouched() {
    let mut r = start();
    let snap = Arc::new(snapshot(
        vec![lb_service("handmade", &["203.0.113.7"], false)],
        vec![],
        vec![],
    ));
    r.snapshots.send_replace(Some(Arc::clone(&snap)));
    r.pools.send_replace(pools(&[]));
    let passed = next(&mut r.overlay, |_| true).await;
    assert!(Arc::ptr_eq(&passed, &snap), "the very same snapshot");
    assert_eq!(status_of(&passed, "handmade"), ["203.0.113.7"]);
    let input = next(&mut r.l2, |_| true).await;
    assert!(input.targets.is_empty(), "nothing of ours to announce");
}

#[test]
fn an_endpoint_change_does_not_rerun_the_allocator() {
    let mut cache = Cache::default();
    let lan = pools(&[pool("lan", "192.0.2.200/30", true)]).unwrap();
    let config = AllocatorConfig::default();
    let mut snap = snapshot(vec![lb_service("web", &[], true)], vec![], vec![]);
    let (first, fresh) = cache.allocation(&lan, &snap, &config);
    assert!(fresh);
    snap = snapshot(
        vec![lb_service("web", &[], true)],
        vec![slice("web", &[("node-a", true)])],
        vec![],
    );
    let (again, fresh) = cache.allocation(&lan, &snap, &config);
    assert!(!fresh && Arc::ptr_eq(&first, &again));
    let snap = snapshot(
        vec![lb_service("web", &["192.0.2.200"], true)],
        vec![],
        vec![],
    );
    assert!(
        cache.allocation(&lan, &snap, &config).1,
        "a status change re-runs it"
    );
}

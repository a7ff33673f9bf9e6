//! The allocation loop in `dir:` mode (no API server): the relay gets the addresses to write
//! into the Services, the announcer gets what to announce.

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
    overlay: watch::Receiver<Arc<Overlay>>,
    l2: watch::Receiver<Option<Arc<L2Input>>>,
    _shutdown: watch::Sender<bool>,
}

fn start() -> Running {
    let (snapshots, snapshots_rx) = watch::channel(None);
    let (pools, pools_rx) = watch::channel(None);
    let (overlay_tx, overlay) = watch::channel(Arc::default());
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

fn assigned(overlay: &Overlay, name: &str) -> Vec<String> {
    let ips = overlay.get(&ObjectKey::new("default", name));
    ips.into_iter().flatten().map(ToString::to_string).collect()
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
    let applied =
        tokio::time::timeout(WAIT, r.overlay.wait_for(|o| !assigned(o, "web").is_empty()))
            .await
            .expect("in time")
            .expect("loop alive")
            .clone();
    // Oldest first, then by name: both have no timestamp, so `local` comes first.
    assert_eq!(assigned(&applied, "local"), ["192.0.2.200"]);
    assert_eq!(assigned(&applied, "web"), ["192.0.2.201"]);
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
    let input = next(&mut r.l2, |_| true).await;
    assert!(input.targets.is_empty(), "nothing of ours to announce");
    assert!(
        r.overlay.borrow().is_empty(),
        "nothing to write over the handmade status"
    );
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

//! LoadBalancer Services without a cloud (docs/loadbalancer.md): addresses assigned from
//! `LoadBalancerIPPool`s and announced on the LAN by ARP/NDP from one node per address.
//!
//! ```text
//!  sources ─▶ Relay ─────────────────────────────────────────────────────▶ sync loop
//!              │ snapshots (LB changes only)        ┌─▶ (k8s, elected agent) Service/pool status, Events
//!  pools ─────┴─▶ IpamLoop (pure allocator) ─────┼─▶ (dir) assigned addresses ─▶ Relay
//!                                                └─▶ L2Input ─┐
//!  nodes + heartbeats (k8s) / Nodes in the dir ─▶ Membership ─┴─▶ L2Announcer ─▶ responders
//! ```
//!
//! With `--source k8s` each agent holds a heartbeat Lease (`sluice-node-<node>`) and watches
//! the others' ([`sluice_k8s::LiveNodes`]); only the agent elected through `sluice-leader`
//! (held by the cluster link, `crate::cluster`) writes. With `dir:` there are no Leases: every Node in the directory counts as alive, and
//! every agent applies the same allocation to its own copy of the Services.

mod announce;
#[cfg(test)]
mod cluster_tests;
mod dir_pools;
mod ipam;
mod l2;
mod metrics;
mod relay;
#[cfg(test)]
mod tests;
mod writes;

/// The fake API server of crates/k8s, for `cluster_tests`.
#[cfg(test)]
#[path = "../../../k8s/tests/fake_apiserver/mod.rs"]
mod fake_apiserver;

use std::sync::Arc;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher;
use sluice_k8s::{
    EventRecorder, EventRecorderConfig, LeaseConfig, LeaseHolder, LiveNodes, ObjectWatch, Objects,
    keep_as_is, trim_node,
};
use sluice_l2announce::{PacketLink, ResponderConfig};
use sluice_lbipam::{AllocatorConfig, LoadBalancerIPPool};
use sluice_model::{Snapshot, SourceBatch};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use self::announce::{Membership, cluster_membership, directory_membership};
use self::ipam::{IpamLoop, Role, SnapshotRx};
use self::l2::L2Announcer;
pub use self::metrics::{LbCollector, LbStats};
use crate::cli::{LoadBalancerConfig, SourceConfig};

/// What [`start`] needs.
pub struct Setup {
    pub config: LoadBalancerConfig,
    pub node: String,
    pub source: SourceConfig,
    /// `--interfaces`.
    pub interfaces: Vec<String>,
    pub client: Option<kube::Client>,
    /// Leadership of `sluice-leader` (API source; the cluster link holds the Lease).
    pub leader: Option<watch::Receiver<bool>>,
    pub stats: Arc<LbStats>,
}

/// The running LoadBalancer side.
pub struct Running {
    tasks: JoinSet<()>,
    leases: Vec<LeaseHolder>,
}

impl Running {
    /// Waits for the loops (they end on `shutdown`), then releases the Leases so that other
    /// agents take over at once instead of after expiry.
    pub async fn stop(mut self) {
        while self.tasks.join_next().await.is_some() {}
        for lease in self.leases {
            lease.shutdown().await;
        }
    }
}

/// Starts the relay, the allocation loop, the L2 announcer and (API source) the Leases and
/// watches. `batches`: what the sources report; returned: what the sync loop must read (the
/// same batches, in `dir:` mode with the assigned addresses written into the Services).
pub fn start(
    setup: Setup,
    batches: mpsc::Receiver<SourceBatch>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(Running, mpsc::Receiver<SourceBatch>)> {
    let (snapshots_tx, snapshots) = watch::channel(None);
    let (to_sync, for_sync) = mpsc::channel(crate::SOURCE_QUEUE);
    let (l2_tx, l2_rx) = watch::channel(None);
    let (membership_tx, membership_rx) = watch::channel(Membership::Unknown);
    let mut started = Started {
        tasks: JoinSet::new(),
        leases: Vec::new(),
        ipam: IpamSettings {
            node: setup.node.clone(),
            allocator: AllocatorConfig {
                load_balancer_class: setup.config.class.clone(),
            },
            stats: Arc::clone(&setup.stats),
            l2: l2_tx,
        },
        membership: membership_tx,
        shutdown: shutdown.clone(),
    };
    let overlay = match (&setup.source, &setup.client) {
        (SourceConfig::Kubernetes { .. }, Some(client)) => {
            start_cluster(&setup, client, snapshots, &mut started)?;
            None
        }
        (SourceConfig::Dir(dir), _) => Some(start_directory(dir, snapshots, &mut started)),
        (SourceConfig::Kubernetes { .. }, None) => {
            anyhow::bail!("the API source needs a Kubernetes client")
        }
    };
    let announcer = L2Announcer {
        node: setup.node.clone(),
        interfaces: setup.interfaces.clone(),
        net: Arc::new(sluice_hostnet::RtNetlink::new()),
        open: Box::new(|name: &str| PacketLink::open(name)),
        config: ResponderConfig::default(),
        stats: Arc::clone(&setup.stats),
    };
    let Started {
        mut tasks, leases, ..
    } = started;
    let relay = relay::Relay::new();
    tasks.spawn(relay.run(batches, to_sync, snapshots_tx, overlay, shutdown.clone()));
    tasks.spawn(announcer.run(l2_rx, membership_rx, shutdown));
    Ok((Running { tasks, leases }, for_sync))
}

/// What [`start`] builds up, shared by the source-specific parts.
struct Started {
    tasks: JoinSet<()>,
    leases: Vec<LeaseHolder>,
    /// The allocation loop without its role (the source-specific part adds it).
    ipam: IpamSettings,
    membership: watch::Sender<Membership>,
    shutdown: watch::Receiver<bool>,
}

struct IpamSettings {
    node: String,
    allocator: AllocatorConfig,
    stats: Arc<LbStats>,
    l2: watch::Sender<Option<Arc<announce::L2Input>>>,
}

impl IpamSettings {
    fn with_role(&self, role: Role) -> IpamLoop {
        IpamLoop {
            node: self.node.clone(),
            allocator: self.allocator.clone(),
            stats: Arc::clone(&self.stats),
            l2: self.l2.clone(),
            role,
        }
    }
}

/// `--source k8s`: Leases, the pool watch, the leader's writer, membership from heartbeats.
fn start_cluster(
    setup: &Setup,
    client: &kube::Client,
    snapshots: SnapshotRx,
    started: &mut Started,
) -> anyhow::Result<()> {
    let ns = &setup.config.lease_namespace;
    let heartbeat =
        LeaseHolder::spawn(client.clone(), LeaseConfig::node_heartbeat(ns, &setup.node))
            .context("node heartbeat lease")?;
    let leader = setup
        .leader
        .clone()
        .context("the API source needs leader election")?;
    let pools = ObjectWatch::<LoadBalancerIPPool>::spawn(
        client.clone(),
        watcher::Config::default(),
        keep_as_is,
    );
    let recorder = EventRecorder::spawn(client.clone(), EventRecorderConfig::new(&setup.node));
    let writer = writes::Writer::new(client.clone(), recorder, Arc::clone(&setup.stats));
    let ipam = started.ipam.with_role(Role::Cluster {
        writer: Box::new(writer),
        leader,
    });
    let shutdown = started.shutdown.clone();
    let tasks = &mut started.tasks;
    tasks.spawn(ipam.run(snapshots, pools.subscribe(), shutdown.clone()));
    tasks.spawn(keep_alive(pools, shutdown.clone()));
    tasks.spawn(cluster_members(
        client.clone(),
        ns.clone(),
        heartbeat.subscribe(),
        started.membership.clone(),
        shutdown,
    ));
    started.leases.push(heartbeat);
    Ok(())
}

/// `dir:`: pools from the directory, the allocation applied in memory, every Node alive.
/// Returns the assigned addresses for the relay to write into the Services.
fn start_directory(
    dir: &std::path::Path,
    snapshots: SnapshotRx,
    started: &mut Started,
) -> relay::OverlayRx {
    let (pools_tx, pools_rx) = watch::channel(None);
    let (overlay_tx, overlay_rx) = watch::channel(Arc::default());
    let shutdown = started.shutdown.clone();
    let ipam = started.ipam.with_role(Role::Directory {
        overlay: overlay_tx,
    });
    let tasks = &mut started.tasks;
    tasks.spawn(dir_pools::watch_dir_pools(
        dir.to_owned(),
        pools_tx,
        shutdown.clone(),
    ));
    tasks.spawn(ipam.run(snapshots.clone(), pools_rx, shutdown.clone()));
    tasks.spawn(directory_members(
        snapshots,
        started.membership.clone(),
        shutdown,
    ));
    overlay_rx
}

/// Holds a watch until shutdown (its task ends when the handle is dropped).
async fn keep_alive<T>(handle: T, mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
    drop(handle);
}

/// Membership from every Node and the heartbeat Leases.
async fn cluster_members(
    client: kube::Client,
    namespace: String,
    mut own_heartbeat: watch::Receiver<bool>,
    tx: watch::Sender<Membership>,
    mut shutdown: watch::Receiver<bool>,
) {
    let nodes = ObjectWatch::<Node>::spawn(client.clone(), watcher::Config::default(), trim_node);
    let live = LiveNodes::spawn(client, &namespace);
    let (mut nodes_rx, mut live_rx) = (nodes.subscribe(), live.subscribe());
    loop {
        let membership = {
            let nodes: Option<Arc<Objects<Node>>> = nodes_rx.borrow_and_update().clone();
            let live = live_rx.borrow_and_update().clone();
            let held = *own_heartbeat.borrow_and_update();
            cluster_membership(
                nodes.as_deref().map(|n| n.values().map(AsRef::as_ref)),
                live.as_ref(),
                held,
            )
        };
        tx.send_if_modified(|current| {
            let changed = *current != membership;
            *current = membership;
            changed
        });
        tokio::select! {
            changed = nodes_rx.changed() => if changed.is_err() { return },
            changed = live_rx.changed() => if changed.is_err() { return },
            changed = own_heartbeat.changed() => if changed.is_err() { return },
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Membership from the Nodes in the directory (all alive).
async fn directory_members(
    mut snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    tx: watch::Sender<Membership>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        if let Some(snapshot) = snapshot {
            let membership = directory_membership(snapshot.nodes.values().map(AsRef::as_ref));
            tx.send_if_modified(|current| {
                let changed = *current != membership;
                *current = membership;
                changed
            });
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Logs one allocator Event (Warnings at warn); the log line names the object.
fn log_event(event: &sluice_lbipam::Event) {
    match event.type_ {
        sluice_lbipam::EventType::Warning => tracing::warn!("{event}"),
        sluice_lbipam::EventType::Normal => tracing::info!("{event}"),
    }
}

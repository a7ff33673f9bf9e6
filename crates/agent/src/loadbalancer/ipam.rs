//! The allocation loop: runs the pure allocator whenever the Services or the pools change,
//! tells the L2 announcer what to announce, and
//! * `--source k8s`: on the elected agent, writes Service and pool statuses and Events;
//! * `dir:`: applies the allocation to this agent's copy of the Services (a directory cannot
//!   be written back), so the datapath forwards the assigned addresses. Every agent computes
//!   the same allocation from the same files.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServiceStatus};
use sluice_k8s::Objects;
use sluice_lbipam::{
    Allocation, AllocatorConfig, EventFilter, LbService, LoadBalancerIPPool, allocate,
    load_balancer_status,
};
use sluice_model::Snapshot;
use tokio::sync::watch;
use tokio::time::Instant;

use super::announce::{L2Input, l2_targets, node_addresses};
use super::metrics::LbStats;
use super::relay::Overlay;
use super::writes::{Finished, Writer};

pub type PoolsRx = watch::Receiver<Option<Arc<Objects<LoadBalancerIPPool>>>>;
pub type SnapshotRx = watch::Receiver<Option<Arc<Snapshot>>>;

/// What the loop does besides publishing the L2 input.
pub enum Role {
    /// The API server: the elected agent writes.
    Cluster {
        writer: Box<Writer>,
        leader: watch::Receiver<bool>,
    },
    /// A directory: the assigned addresses go to the relay, which writes them into the
    /// Services it passes on to the sync loop.
    Directory {
        overlay: watch::Sender<Arc<Overlay>>,
    },
}

pub struct IpamLoop {
    pub node: String,
    pub allocator: AllocatorConfig,
    pub stats: Arc<LbStats>,
    pub l2: watch::Sender<Option<Arc<L2Input>>>,
    pub role: Role,
}

/// The last run's inputs and result: an endpoint change does not re-run the allocator.
#[derive(Default)]
struct Cache {
    pools: Option<Arc<Objects<LoadBalancerIPPool>>>,
    services: Vec<LbService>,
    allocation: Arc<Allocation>,
}

impl Cache {
    /// The allocation for these inputs; `true` when it was computed anew.
    fn allocation(
        &mut self,
        pools: &Arc<Objects<LoadBalancerIPPool>>,
        snapshot: &Snapshot,
        config: &AllocatorConfig,
    ) -> (Arc<Allocation>, bool) {
        let services: Vec<LbService> = snapshot
            .services
            .values()
            .filter(|s| LbService::concerns(s))
            .filter_map(|s| LbService::from_service(s))
            .collect();
        let same_pools = self.pools.as_ref().is_some_and(|p| Arc::ptr_eq(p, pools));
        if same_pools && services == self.services {
            return (Arc::clone(&self.allocation), false);
        }
        let pool_list: Vec<LoadBalancerIPPool> = pools.values().map(|p| (**p).clone()).collect();
        self.allocation = Arc::new(allocate(&pool_list, &services, config));
        self.pools = Some(Arc::clone(pools));
        self.services = services;
        (Arc::clone(&self.allocation), true)
    }
}

impl IpamLoop {
    pub async fn run(
        self,
        mut snapshots: SnapshotRx,
        mut pools: PoolsRx,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let IpamLoop {
            node,
            allocator,
            stats,
            l2,
            role,
        } = self;
        let (mut writer, mut leader, overlay) = match role {
            Role::Cluster { writer, leader } => (Some(*writer), Some(leader), None),
            Role::Directory { overlay } => (None, None, Some(overlay)),
        };
        let mut cache = Cache::default();
        let mut dir_events = EventFilter::default();
        let mut was_leader = false;
        loop {
            let retry = writer.as_ref().and_then(Writer::next_retry);
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() { return },
                changed = pools.changed() => if changed.is_err() { return },
                changed = changed_opt(&mut leader) => if changed.is_err() { return },
                Some(done) = next_done(&mut writer) => {
                    if let Some(w) = writer.as_mut() { w.finish(done) }
                },
                () = sleep_until_opt(retry) => {},
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let Some(snapshot) = snapshots.borrow_and_update().clone() else {
                continue;
            };
            let Some(pools_now) = pools.borrow_and_update().clone() else {
                // Pools not listed yet (is the CRD installed?): assign nothing, pass through.
                if let Some(overlay) = &overlay {
                    publish_overlay(overlay, Overlay::new());
                }
                continue;
            };
            let (allocation, fresh) = cache.allocation(&pools_now, &snapshot, &allocator);
            stats.set_assigned(assigned_count(&allocation));
            let effective = match &overlay {
                Some(overlay) => {
                    let applied = apply_in_memory(&snapshot, &allocation, &pools_now);
                    publish_overlay(overlay, overlay_of(&allocation, &pools_now));
                    if fresh {
                        dir_events
                            .fresh(&allocation.events)
                            .iter()
                            .for_each(super::log_event);
                    }
                    applied
                }
                None => Arc::clone(&snapshot),
            };
            publish_l2(&l2, &allocation, &effective, &node);
            if let (Some(writer), Some(leader)) = (writer.as_mut(), leader.as_ref()) {
                let is_leader = *leader.borrow();
                lead(
                    writer,
                    is_leader,
                    was_leader,
                    fresh,
                    &allocation,
                    &snapshot,
                    &pools_now,
                );
                if is_leader != was_leader {
                    stats.set_leader(is_leader);
                    was_leader = is_leader;
                }
            }
        }
    }
}

/// The assigned addresses the Services' manifests do not say (none without a pool: statuses
/// written by hand stay as they are).
fn overlay_of(allocation: &Allocation, pools: &Objects<LoadBalancerIPPool>) -> Overlay {
    if pools.is_empty() {
        return Overlay::new();
    }
    allocation
        .status_updates()
        .map(|(key, addresses)| (key.clone(), addresses.ips()))
        .collect()
}

fn publish_overlay(tx: &watch::Sender<Arc<Overlay>>, overlay: Overlay) {
    tx.send_if_modified(|current| {
        let changed = **current != overlay;
        if changed {
            *current = Arc::new(overlay);
        }
        changed
    });
}

/// Tells the L2 announcer what to announce (only when that changed).
fn publish_l2(
    l2: &watch::Sender<Option<Arc<L2Input>>>,
    allocation: &Allocation,
    snapshot: &Snapshot,
    node: &str,
) {
    let input = L2Input {
        targets: l2_targets(allocation, snapshot),
        node_addresses: node_addresses(snapshot, node),
    };
    l2.send_if_modified(|current| {
        let changed = current.as_deref() != Some(&input);
        if changed {
            *current = Some(Arc::new(input));
        }
        changed
    });
}

/// The leader's part of a run: Events (new ones only) and status writes.
fn lead(
    writer: &mut Writer,
    is_leader: bool,
    was_leader: bool,
    fresh: bool,
    allocation: &Allocation,
    snapshot: &Snapshot,
    pools: &Objects<LoadBalancerIPPool>,
) {
    match (is_leader, was_leader) {
        (false, true) => {
            tracing::info!("no longer the elected writer of LoadBalancer statuses");
            writer.stop();
        }
        (true, false) => {
            tracing::info!("elected to write LoadBalancer statuses, pool conditions and Events");
        }
        _ => {}
    }
    if !is_leader {
        return;
    }
    if fresh || !was_leader {
        writer.record_events(allocation);
    }
    writer.reconcile(allocation, snapshot, pools);
}

fn assigned_count(allocation: &Allocation) -> usize {
    let ips: std::collections::BTreeSet<_> =
        allocation.services.values().flat_map(|s| s.ips()).collect();
    ips.len()
}

/// The snapshot with the allocation written into the Services' statuses (the statuses in
/// the files are the allocator's input, so an address written there is kept). Without any
/// pool, the snapshot is passed on untouched: statuses written by hand stay as they are.
fn apply_in_memory(
    snapshot: &Arc<Snapshot>,
    allocation: &Allocation,
    pools: &Objects<LoadBalancerIPPool>,
) -> Arc<Snapshot> {
    if pools.is_empty() || allocation.status_updates().next().is_none() {
        return Arc::clone(snapshot);
    }
    let mut applied = Snapshot::clone(snapshot);
    for (key, addresses) in allocation.status_updates() {
        let Some(service) = applied.services.get_mut(key) else {
            continue;
        };
        let mut changed = Service::clone(service);
        let status = changed.status.get_or_insert_with(ServiceStatus::default);
        status.load_balancer = Some(load_balancer_status(&addresses.ips()));
        *service = Arc::new(changed);
    }
    Arc::new(applied)
}

async fn changed_opt(
    rx: &mut Option<watch::Receiver<bool>>,
) -> Result<(), watch::error::RecvError> {
    match rx {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

async fn next_done(writer: &mut Option<Writer>) -> Option<Finished> {
    match writer {
        Some(writer) => writer.next_done().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;

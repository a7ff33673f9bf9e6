//! The Ingress routes on their own path, independent of the L4 sync loop's pacing
//! (`--min-sync-period`) and of how long the kernel takes to program a change.
//!
//! The sources' batches are teed ([`tee`]): each goes on to the sync loop unchanged, and a
//! copy (the same `Arc`s: only pointers are duplicated) to the [`RouteLoop`], which keeps its
//! own [`Store`]. Woken by a batch, the loop takes every batch already queued too (a burst
//! coalesces into one swap), and when the changes touch anything the routes use it plans
//! them (`sluice-routes`) and swaps the proxy's table; then the Ingress status and Events
//! follow. Each swap is counted (`sluice_ingress_route_table_swaps`), timed from the moment
//! the source saw the change (`sluice_ingress_route_update_duration_seconds`) and logged at
//! debug level.

use std::sync::Arc;
use std::time::Duration;

use sluice_ingress::IngressProxy;
use sluice_model::{ChangeSet, ObjectKey, SourceBatch, Store};
use sluice_routes::RouteConfig;
use tokio::sync::{mpsc, watch};

use self::feed::IngressFeed;
use crate::interfaces::LocalAddresses;
use crate::metrics::Metrics;
use crate::observe::Observers;

mod feed;
#[cfg(test)]
mod tests;

/// How often the node's interface addresses are looked at when no change arrives (the proxy
/// never dials its own listeners, so it must know them).
pub const ADDRESS_CHECK: Duration = Duration::from_secs(10);

/// Passes every batch from `from` on to the first receiver and a copy to the second, until
/// `from` closes, a receiver is gone or `shutdown` says so. A receiver that does not keep up
/// holds both back (the queues are bounded, as the source's).
pub fn tee(
    mut from: mpsc::Receiver<SourceBatch>,
    queue: usize,
    mut shutdown: watch::Receiver<bool>,
) -> (mpsc::Receiver<SourceBatch>, mpsc::Receiver<SourceBatch>) {
    let (to_sync, sync_rx) = mpsc::channel(queue);
    let (to_routes, routes_rx) = mpsc::channel(queue);
    tokio::spawn(async move {
        loop {
            let batch = tokio::select! {
                batch = from.recv() => match batch {
                    Some(batch) => batch,
                    None => return,
                },
                _ = shutdown.wait_for(|s| *s) => return,
            };
            // Routes first: their copy is the one that must not wait for L4 work.
            if to_routes.send(batch.clone()).await.is_err() || to_sync.send(batch).await.is_err() {
                return;
            }
        }
    });
    (sync_rx, routes_rx)
}

/// Plans and swaps the Ingress routes as changes arrive.
pub struct RouteLoop {
    pub proxy: Arc<IngressProxy>,
    pub routes: RouteConfig,
    pub node_name: String,
    pub local_addresses: LocalAddresses,
    /// The Ingress status writer and Events (API source), after each change of the routes.
    pub observers: Observers,
    pub metrics: Arc<Metrics>,
    /// How often the interface addresses are looked at without a change ([`ADDRESS_CHECK`]).
    pub address_check: Duration,
}

/// Source batches taken together.
struct Burst {
    /// When the source saw the earliest change among them.
    observed: Option<std::time::Instant>,
    batches: usize,
}

impl RouteLoop {
    /// Runs until the tee is gone or `shutdown` says so.
    pub async fn run(
        mut self,
        mut batches: mpsc::Receiver<SourceBatch>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut store = Store::new();
        let mut feed = IngressFeed::default();
        let mut addresses = tokio::time::interval(self.address_check);
        addresses.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut burst = Burst {
                observed: None,
                batches: 0,
            };
            tokio::select! {
                batch = batches.recv() => match batch {
                    Some(batch) => burst.take(&mut store, batch),
                    None => return,
                },
                _ = addresses.tick() => {},
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let open = loop {
                match batches.try_recv() {
                    Ok(batch) => burst.take(&mut store, batch),
                    Err(mpsc::error::TryRecvError::Empty) => break true,
                    Err(mpsc::error::TryRecvError::Disconnected) => break false,
                }
            };
            if store.is_synced() {
                let changes = store.take_changes();
                self.update(&mut feed, &store, &changes, &burst);
            }
            if !open {
                return;
            }
        }
    }

    /// Plans and swaps the routes when `changes` touch them (or the node's addresses moved),
    /// then lets the status writer and Events follow.
    fn update(
        &mut self,
        feed: &mut IngressFeed,
        store: &Store,
        changes: &ChangeSet,
        burst: &Burst,
    ) {
        let snapshot = store.snapshot();
        let node_object = snapshot
            .nodes
            .get(&ObjectKey::cluster(self.node_name.clone()))
            .map(|n| n.as_ref());
        let node = sluice_compute::node_info(
            &self.node_name,
            node_object,
            &self.local_addresses.current(),
        );
        let started = std::time::Instant::now();
        let Some(fed) = feed.feed(&self.proxy, &self.routes, snapshot, changes, &node) else {
            return;
        };
        if fed.swapped {
            let latency = burst.observed.map(|o| o.elapsed());
            if let Some(latency) = latency {
                self.metrics.record_ingress_route_update(latency);
            }
            tracing::debug!(
                batches = burst.batches,
                objects = if changes.everything {
                    None
                } else {
                    Some(changes.len())
                },
                planned_us = started.elapsed().as_micros() as u64,
                since_source_us = latency.map(|l| l.as_micros() as u64),
                ingresses = self.proxy.served_ingresses().len(),
                "ingress: routes swapped"
            );
        }
        self.observers.ingress_updated(
            snapshot,
            &self.proxy,
            fed.warnings,
            node_object,
            &node.addresses,
        );
    }
}

impl Burst {
    fn take(&mut self, store: &mut Store, batch: SourceBatch) {
        store.apply_all(batch.events);
        self.batches += 1;
        self.observed = Some(match self.observed {
            Some(earlier) => earlier.min(batch.observed),
            None => batch.observed,
        });
    }
}

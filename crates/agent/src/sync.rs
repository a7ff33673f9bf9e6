//! The sync loop: source events → the store (in place) and what changed → planner (only
//! those Services) → dataplane delta (+ health check ports). The Ingress routes have their
//! own loop (`crate::routing`), fed the same events.
//!
//! Batches changes like kube-proxy: at most one sync per `--min-sync-period`, a resync every
//! `--sync-period`, and a retry with backoff when the dataplane refuses an update (all of it,
//! or some service ports).

use std::sync::Arc;
use std::time::Duration;

use sluice_compute::Planner;
use sluice_dataplane::{ApplyReport, Dataplane, DataplaneError, Restored, error_chain};
use sluice_model::{ObjectKey, SourceBatch, Store};
use sluice_plan::{Plan, PlanDelta};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::cli::AgentConfig;
use crate::health::{HealthState, ServiceHealthServers};
use crate::interfaces::LocalAddresses;
use crate::metrics::Metrics;

pub struct SyncLoop {
    pub config: AgentConfig,
    pub dataplane: Option<Box<dyn Dataplane>>,
    /// What `restore` found (connectionless backends of an earlier run).
    pub restored: Restored,
    pub metrics: Arc<Metrics>,
    pub health: Arc<HealthState>,
    /// The admin endpoint's state, and the cluster-wide reports (API source).
    pub observers: crate::observe::Observers,
    pub local_addresses: LocalAddresses,
    /// Listening sockets (health check node ports) taken over from the previous agent or
    /// bound, offered to the next.
    pub listeners: Arc<crate::handover::Listeners>,
}

/// The store the loop keeps from the sources' batches, and when the earliest change not yet
/// synced was seen by its source.
#[derive(Default)]
struct Inbox {
    store: Store,
    observed: Option<std::time::Instant>,
}

impl Inbox {
    fn receive(&mut self, batch: SourceBatch) {
        self.store.apply_all(batch.events);
        // Before the first sync, the first batch starts the clock of the first programming.
        if self.observed.is_none() && (self.store.has_changes() || !self.store.is_synced()) {
            self.observed = Some(batch.observed);
        }
    }

    /// Takes every batch already queued; false when the sources are gone.
    fn drain(&mut self, batches: &mut mpsc::Receiver<SourceBatch>) -> bool {
        loop {
            match batches.try_recv() {
                Ok(batch) => self.receive(batch),
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
    }
}

/// Where the time of one sync went. `source`: from when the source saw the earliest change
/// to when the loop took it (parsing, queueing, `--min-sync-period`); `total`: from then to
/// the dataplane being done.
struct SyncTiming {
    /// Objects changed (`None`: everything).
    objects: Option<usize>,
    source: Option<Duration>,
    plan: Duration,
    dataplane: Duration,
    total: Duration,
}

/// What the dataplane must do next.
enum Work {
    /// Make the kernel hold the whole plan (first programming, repair, periodic check).
    Resync(Box<Plan>),
    /// Program one delta.
    Apply(Box<PlanDelta>),
}

/// Dataplane bookkeeping across iterations.
struct Programming {
    /// The dataplane holds the planner's plan (every delta so far applied).
    in_step: bool,
    /// A resync is due (first programming, timer, or after a failure).
    resync_due: bool,
    next_resync: Instant,
    retry: Option<(Instant, Duration)>,
    /// First programming after start: flows an earlier run left toward gone backends.
    first: bool,
}

impl SyncLoop {
    /// Applies the sources' batches to the store the loop owns and programs what changed.
    /// Runs until the sources are gone or `shutdown` says so.
    pub async fn run(
        mut self,
        mut batches: mpsc::Receiver<SourceBatch>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut dataplane = self.dataplane.take();
        let mut planner = Planner::new(self.config.compute.clone());
        let mut store = Inbox::default();
        let mut health_servers =
            ServiceHealthServers::new(Arc::clone(&self.health), Arc::clone(&self.listeners));
        let mut prog = Programming {
            in_step: false,
            resync_due: true,
            next_resync: Instant::now() + self.config.sync_period,
            retry: None,
            first: true,
        };
        let mut last_sync: Option<Instant> = None;
        let mut trigger_times = crate::trigger::TriggerTimes::default();
        // Endpoint changes seen but not yet applied (kept across failed syncs).
        let mut pending_triggers = Vec::new();

        loop {
            let ready = store.store.is_synced();
            tokio::select! {
                batch = batches.recv() => match batch {
                    Some(batch) => store.receive(batch),
                    None => return,
                },
                _ = tokio::time::sleep_until(prog.next_resync), if ready => prog.resync_due = true,
                _ = sleep_until_opt(prog.retry.map(|r| r.0)), if ready => {},
                _ = shutdown.wait_for(|s| *s) => return,
            }
            self.health.tick();
            // Batch whatever else arrives during the minimum sync period.
            if let Some(last) = last_sync.filter(|_| store.store.is_synced()) {
                let earliest = last + self.config.min_sync_period;
                tokio::select! {
                    _ = tokio::time::sleep_until(earliest) => {},
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
            if !store.drain(&mut batches) {
                return;
            }
            if !store.store.is_synced() {
                continue;
            }
            let observed = store.observed.take();
            let dequeued = std::time::Instant::now();
            let changes = store.store.take_changes();
            let snapshot = store.store.snapshot();
            if !changes.is_empty() {
                self.health.queued();
            }
            pending_triggers.extend(trigger_times.new_triggers(snapshot, &changes));

            let node_object = snapshot
                .nodes
                .get(&ObjectKey::cluster(self.config.node_name.clone()));
            self.health.set_node(node_object.map(|n| n.as_ref()));
            let node = sluice_compute::node_info(
                &self.config.node_name,
                node_object.map(|n| n.as_ref()),
                &self.local_addresses.current(),
            );
            let planned = std::time::Instant::now();
            let delta = planner.update(snapshot, &changes, &node);
            let plan_time = planned.elapsed();
            self.observers
                .planned(&planner, &delta, prog.first, &node.addresses);
            for warning in planner.fresh_warnings() {
                tracing::warn!("services: {warning}");
            }
            if delta.health_checks.is_some() || prog.first {
                health_servers.update(&planner.plan().health_checks).await;
            }

            let Some(work) = next_work(&mut prog, planner.plan(), delta) else {
                // Nothing to program: those endpoint changes are in effect already.
                if prog.retry.is_none() {
                    self.health.record(true);
                }
                self.metrics
                    .record_network_programming(crate::trigger::latencies(
                        &pending_triggers,
                        std::time::SystemTime::now(),
                    ));
                pending_triggers.clear();
                last_sync = Some(Instant::now());
                continue;
            };
            let Some(dp) = dataplane.take() else {
                return;
            };
            let restored = prog.first.then(|| std::mem::take(&mut self.restored));
            let service_ports = planner.plan().services.len();
            let programming = tokio::task::spawn_blocking(move || program(dp, work, restored));
            let Ok((dp, result, dataplane_time)) = programming.await else {
                tracing::error!("the dataplane panicked; stopping the sync loop");
                return;
            };
            dataplane = Some(dp);
            last_sync = Some(Instant::now());
            let timing = SyncTiming {
                objects: if changes.everything {
                    None
                } else {
                    Some(changes.len())
                },
                source: observed.map(|o| dequeued.saturating_duration_since(o)),
                plan: plan_time,
                dataplane: dataplane_time,
                total: observed.unwrap_or(dequeued).elapsed(),
            };
            self.observers.programmed(&result);
            let ok = self.record(&mut prog, &timing, result, service_ports);
            if ok {
                let now = std::time::SystemTime::now();
                self.metrics
                    .record_network_programming(crate::trigger::latencies(&pending_triggers, now));
                pending_triggers.clear();
            }
        }
    }

    /// Logs and counts one dataplane call; schedules the retry or the next resync. Returns
    /// whether everything was programmed.
    fn record(
        &self,
        prog: &mut Programming,
        timing: &SyncTiming,
        result: Result<ApplyReport, DataplaneError>,
        service_ports: usize,
    ) -> bool {
        let elapsed = timing.dataplane;
        match result {
            Ok(report) => {
                tracing::info!(
                    service_ports,
                    changed = report.services_changed,
                    operations = report.operations,
                    full = report.full_sync,
                    failed = report.failed.len(),
                    elapsed_ms = elapsed.as_millis() as u64,
                    objects = timing.objects.map_or(-1, |n| n as i64),
                    source_us = timing.source.map_or(-1, |d| d.as_micros() as i64),
                    plan_us = timing.plan.as_micros() as u64,
                    dataplane_us = timing.dataplane.as_micros() as u64,
                    total_us = timing.total.as_micros() as u64,
                    "synced"
                );
                for failure in &report.failed {
                    tracing::warn!(service = %failure.service, "{}: not programmed, will retry: {}", failure.service, failure.reason);
                }
                self.metrics
                    .record_sync(elapsed, Ok(&report), service_ports);
                if report.full_sync {
                    prog.next_resync = Instant::now() + self.config.sync_period;
                }
                prog.first = false;
                if report.failed.is_empty() {
                    if prog.resync_due && prog.retry.is_some() {
                        // A delta applied while a refused service port waits for its retry.
                        return true;
                    }
                    self.health.record(true);
                    prog.retry = None;
                    return true;
                }
                // Partly refused: the rest is in place, so later changes go on as deltas;
                // the refused service ports are retried by a resync after the backoff.
                self.health.record(false);
                self.schedule_retry(prog);
                prog.in_step = true;
                false
            }
            Err(err) => {
                self.metrics.record_sync(elapsed, Err(()), service_ports);
                self.health.record(false);
                let backoff = self.schedule_retry(prog);
                tracing::error!(
                    "sync failed, retrying in {backoff:?}: {}",
                    error_chain(&err)
                );
                false
            }
        }
    }

    fn schedule_retry(&self, prog: &mut Programming) -> Duration {
        let backoff = prog.retry.map_or(Duration::from_millis(500), |(_, b)| {
            (b * 2).min(self.config.sync_period)
        });
        prog.retry = Some((Instant::now() + backoff, backoff));
        prog.resync_due = true;
        prog.in_step = false;
        backoff
    }
}

/// Decides what the dataplane does with this iteration's delta. `None`: nothing.
fn next_work(prog: &mut Programming, plan: &Plan, delta: PlanDelta) -> Option<Work> {
    if prog.retry.is_some_and(|(at, _)| Instant::now() < at) {
        if prog.in_step && !delta.is_empty() {
            // Only some service ports were refused: the others are in step and their
            // changes must not wait behind them.
            return Some(Work::Apply(Box::new(delta)));
        }
        // Backing off: the delta is folded into the resync that follows.
        prog.resync_due = true;
        prog.in_step = false;
        return None;
    }
    if prog.resync_due || !prog.in_step {
        prog.resync_due = false;
        prog.in_step = true;
        return Some(Work::Resync(Box::new(plan.clone())));
    }
    (!delta.is_empty()).then(|| Work::Apply(Box::new(delta)))
}

/// Runs one dataplane call (on a blocking thread); after a resync, returns the heap's free
/// memory to the kernel.
fn program(
    mut dp: Box<dyn Dataplane>,
    work: Work,
    restored: Option<Restored>,
) -> (
    Box<dyn Dataplane>,
    Result<ApplyReport, DataplaneError>,
    Duration,
) {
    let started = std::time::Instant::now();
    let (result, full) = match work {
        Work::Resync(plan) => (resync(dp.as_mut(), &plan, restored), true),
        Work::Apply(delta) => (dp.apply(&delta), false),
    };
    let elapsed = started.elapsed();
    if full {
        // What a full sync went through is freed by now: give it back (see `memory`).
        crate::memory::release_free_heap();
    }
    (dp, result, elapsed)
}

/// Makes the kernel hold `plan`; after the first one of a run, removes the flows an earlier
/// run left toward backends that are gone.
fn resync(
    dp: &mut dyn Dataplane,
    plan: &Plan,
    restored: Option<Restored>,
) -> Result<ApplyReport, DataplaneError> {
    let mut result = dp.resync(plan);
    if let (Ok(_), Some(restored)) = (&result, restored) {
        let stale = sluice_compute::stale_after_restore(&restored.backends, plan);
        if !stale.is_empty() {
            let flows = PlanDelta {
                node: Arc::clone(&plan.node),
                stale_flows: stale,
                ..PlanDelta::default()
            };
            if let Err(err) = dp.apply(&flows) {
                result = Err(err);
            }
        }
    }
    result
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;

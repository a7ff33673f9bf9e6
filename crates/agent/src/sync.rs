//! The sync loop: snapshot → planner (only what changed) → dataplane delta (+ ingress routes,
//! health check ports).
//!
//! Batches changes like kube-proxy: at most one sync per `--min-sync-period`, a resync every
//! `--sync-period`, and a retry with backoff when the dataplane refuses an update (all of it,
//! or some service ports).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use sluice_compute::Planner;
use sluice_dataplane::{ApplyReport, Dataplane, DataplaneError, Restored, error_chain};
use sluice_model::{ChangeSet, ObjectKey, Snapshot};
use sluice_plan::{Plan, PlanDelta};
use tokio::sync::watch;
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
    pub ingress: Option<Arc<sluice_ingress::IngressProxy>>,
    pub k8s_client: Option<kube::Client>,
    pub local_addresses: LocalAddresses,
}

/// Logs each distinct warning once, and again only after it went away and came back.
#[derive(Default)]
struct WarningLog {
    seen: BTreeSet<String>,
}

impl WarningLog {
    fn update(&mut self, what: &str, warnings: impl IntoIterator<Item = String>) {
        let now: BTreeSet<String> = warnings.into_iter().collect();
        for warning in now.difference(&self.seen) {
            tracing::warn!("{what}: skipped {warning}");
        }
        self.seen = now;
    }
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
    pub async fn run(
        mut self,
        mut snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut dataplane = self.dataplane.take();
        let mut planner = Planner::new(self.config.compute.clone());
        let mut previous: Option<Arc<Snapshot>> = None;
        let mut pending = ChangeSet::default();
        let mut health_servers = ServiceHealthServers::default();
        let mut ingress_warnings = WarningLog::default();
        let mut prog = Programming {
            in_step: false,
            resync_due: true,
            next_resync: Instant::now() + self.config.sync_period,
            retry: None,
            first: true,
        };
        let mut last_sync: Option<Instant> = None;
        let mut status_written: Option<(Vec<ObjectKey>, Vec<std::net::IpAddr>)> = None;
        let mut trigger_times = crate::trigger::TriggerTimes::default();
        // Endpoint changes seen but not yet applied (kept across failed syncs).
        let mut pending_triggers = Vec::new();

        loop {
            let ready = snapshots.borrow().is_some();
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(prog.next_resync), if ready => prog.resync_due = true,
                _ = sleep_until_opt(prog.retry.map(|r| r.0)), if ready => {},
                _ = shutdown.wait_for(|s| *s) => return,
            }
            // Batch whatever else arrives during the minimum sync period.
            if let Some(last) = last_sync {
                let earliest = last + self.config.min_sync_period;
                tokio::select! {
                    _ = tokio::time::sleep_until(earliest) => {},
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
            let Some(snapshot) = snapshots.borrow_and_update().clone() else {
                continue;
            };
            let changes = match &previous {
                Some(before) => ChangeSet::between(before, &snapshot),
                None => ChangeSet::everything(),
            };
            pending_triggers.extend(trigger_times.new_triggers(&snapshot, &changes));
            pending.merge(changes);
            previous = Some(Arc::clone(&snapshot));

            let node_object = snapshot
                .nodes
                .get(&ObjectKey::cluster(self.config.node_name.clone()));
            let node = sluice_compute::node_info(
                &self.config.node_name,
                node_object.map(|n| n.as_ref()),
                &self.local_addresses.current(),
            );
            let delta = planner.update(&snapshot, &std::mem::take(&mut pending), &node);
            for warning in planner.fresh_warnings() {
                tracing::warn!("services: skipped {warning}");
            }
            if let Some(proxy) = &self.ingress {
                let now = std::time::SystemTime::now();
                let (routes, mut warnings) =
                    sluice_routes::plan(&snapshot, &node, &self.config.routes, now);
                warnings.extend(proxy.update(&routes));
                ingress_warnings.update("ingress", warnings.iter().map(ToString::to_string));
            }
            if delta.health_checks.is_some() || prog.first {
                health_servers.update(&planner.plan().health_checks).await;
            }

            let Some(work) = next_work(&mut prog, planner.plan(), delta) else {
                // Nothing to program: those endpoint changes are in effect already.
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
            let started = std::time::Instant::now();
            let joined = tokio::task::spawn_blocking(move || program(dp, work, restored)).await;
            let Ok((dp, result)) = joined else {
                tracing::error!("the dataplane panicked; stopping the sync loop");
                return;
            };
            dataplane = Some(dp);
            last_sync = Some(Instant::now());
            let ok = self.record(&mut prog, started.elapsed(), result, service_ports);
            if ok {
                let now = std::time::SystemTime::now();
                self.metrics
                    .record_network_programming(crate::trigger::latencies(&pending_triggers, now));
                pending_triggers.clear();
            }
            let status_ips = node_object_addresses(node_object.map(|n| n.as_ref()))
                .unwrap_or_else(|| node.addresses.clone());
            self.write_ingress_status(status_ips, &mut status_written);
        }
    }

    /// Logs and counts one dataplane call; schedules the retry or the next resync. Returns
    /// whether everything was programmed.
    fn record(
        &self,
        prog: &mut Programming,
        elapsed: Duration,
        result: Result<ApplyReport, DataplaneError>,
        service_ports: usize,
    ) -> bool {
        match result {
            Ok(report) => {
                tracing::info!(
                    service_ports,
                    changed = report.services_changed,
                    operations = report.operations,
                    full = report.full_sync,
                    failed = report.failed.len(),
                    elapsed_ms = elapsed.as_millis() as u64,
                    "synced"
                );
                for failure in &report.failed {
                    tracing::warn!(service = %failure.service, "not programmed, will retry: {}", failure.reason);
                }
                self.metrics
                    .record_sync(elapsed, Ok(&report), service_ports);
                if report.full_sync {
                    prog.next_resync = Instant::now() + self.config.sync_period;
                }
                prog.first = false;
                if report.failed.is_empty() {
                    self.health.record(true);
                    prog.retry = None;
                    return true;
                }
                // Partly refused: the rest is in place; retry the rest with a resync.
                self.health.record(false);
                self.schedule_retry(prog);
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

    /// Ingress `status.loadBalancer` for the Ingresses we serve (API source only).
    fn write_ingress_status(
        &mut self,
        node_ips: Vec<std::net::IpAddr>,
        written: &mut Option<(Vec<ObjectKey>, Vec<std::net::IpAddr>)>,
    ) {
        let (Some(client), Some(proxy)) = (&self.k8s_client, &self.ingress) else {
            return;
        };
        let served: Vec<ObjectKey> = proxy
            .served_ingresses()
            .iter()
            .map(|n| ObjectKey::new(&*n.namespace, &*n.name))
            .collect();
        let mut ips = self.config.ingress_status_addresses.clone();
        if ips.is_empty() {
            ips = node_ips;
        }
        let now = Some((served.clone(), ips.clone()));
        if *written == now {
            return;
        }
        *written = now;
        let client = client.clone();
        tokio::spawn(async move {
            for ingress in served {
                if let Err(err) = sluice_k8s::update_ingress_status(&client, &ingress, &ips).await {
                    tracing::warn!(ingress = %ingress, "writing the Ingress status failed: {}", error_chain(&err));
                }
            }
        });
    }
}

/// Decides what the dataplane does with this iteration's delta. `None`: nothing.
fn next_work(prog: &mut Programming, plan: &Plan, delta: PlanDelta) -> Option<Work> {
    if prog.retry.is_some_and(|(at, _)| Instant::now() < at) {
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

/// Runs one dataplane call (on a blocking thread). After the first resync of a run, removes
/// the flows an earlier run left toward backends that are gone.
fn program(
    mut dp: Box<dyn Dataplane>,
    work: Work,
    restored: Option<Restored>,
) -> (Box<dyn Dataplane>, Result<ApplyReport, DataplaneError>) {
    let result = match work {
        Work::Resync(plan) => {
            let mut result = dp.resync(&plan);
            if let (Ok(_), Some(restored)) = (&result, restored) {
                let stale = sluice_compute::stale_after_restore(&restored.backends, &plan);
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
        Work::Apply(delta) => dp.apply(&delta),
    };
    (dp, result)
}

/// The Node object's InternalIP and ExternalIP addresses (what clients can reach), if any.
fn node_object_addresses(
    node: Option<&k8s_openapi::api::core::v1::Node>,
) -> Option<Vec<std::net::IpAddr>> {
    let addresses = node?.status.as_ref()?.addresses.as_ref()?;
    let ips: Vec<std::net::IpAddr> = addresses
        .iter()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    (!ips.is_empty()).then_some(ips)
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;

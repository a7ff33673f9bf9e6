//! The sync loop: snapshot → compute → dataplane (+ ingress routes, health check ports).
//!
//! Batches changes like kube-proxy: at most one sync per `--min-sync-period`, a full resync
//! every `--sync-period`, and a retry with backoff when the dataplane refuses an update.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use sluice_dataplane::Dataplane;
use sluice_model::{DesiredState, ObjectKey, Snapshot};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cli::AgentConfig;
use crate::health::{HealthState, ServiceHealthServers};
use crate::interfaces::local_addresses;
use crate::metrics::Metrics;

pub struct SyncLoop {
    pub config: AgentConfig,
    pub dataplane: Option<Box<dyn Dataplane>>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<HealthState>,
    pub ingress: Option<Arc<sluice_ingress::IngressProxy>>,
    pub k8s_client: Option<kube::Client>,
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

impl SyncLoop {
    pub async fn run(
        mut self,
        mut snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut dataplane = self.dataplane.take();
        let mut health_servers = ServiceHealthServers::default();
        let mut service_warnings = WarningLog::default();
        let mut ingress_warnings = WarningLog::default();
        let mut programmed: Option<DesiredState> = None;
        let mut last_sync: Option<Instant> = None;
        let mut next_full = Instant::now() + self.config.sync_period;
        let mut retry: Option<(Instant, Duration)> = None;
        let mut full = true;
        let mut status_written: Option<(Vec<ObjectKey>, Vec<std::net::IpAddr>)> = None;

        loop {
            let ready = snapshots.borrow().is_some();
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(next_full), if ready => full = true,
                _ = sleep_until_opt(retry.map(|r| r.0)), if ready => {},
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

            let node_object = snapshot
                .nodes
                .get(&ObjectKey::cluster(self.config.node_name.clone()));
            let node = sluice_compute::node_info(
                &self.config.node_name,
                node_object.map(|n| n.as_ref()),
                &local_addresses(),
            );
            let computed = sluice_compute::compute(&snapshot, &node, &self.config.compute);
            service_warnings.update(
                "services",
                computed.warnings.iter().map(ToString::to_string),
            );
            if let Some(proxy) = &self.ingress {
                ingress_warnings.update(
                    "ingress",
                    proxy.update(&snapshot).iter().map(ToString::to_string),
                );
            }
            health_servers.update(&computed.state).await;

            let unchanged = programmed.as_ref() == Some(&computed.state);
            if unchanged && !full && retry.is_none() {
                last_sync = Some(Instant::now());
                continue;
            }
            let Some(mut dp) = dataplane.take() else {
                return;
            };
            let state = computed.state;
            let do_full = full;
            let started = std::time::Instant::now();
            let joined = tokio::task::spawn_blocking(move || {
                let result = dp.apply(&state, do_full);
                (dp, state, result)
            })
            .await;
            let Ok((dp, state, result)) = joined else {
                tracing::error!("the dataplane panicked; stopping the sync loop");
                return;
            };
            let elapsed = started.elapsed();
            let service_ports = state.services.len();
            dataplane = Some(dp);
            last_sync = Some(Instant::now());
            match result {
                Ok(stats) => {
                    tracing::info!(
                        service_ports,
                        changed = stats.services_changed,
                        operations = stats.operations,
                        full = stats.full_sync,
                        elapsed_ms = elapsed.as_millis() as u64,
                        "synced"
                    );
                    self.metrics.record_sync(elapsed, Ok(stats), service_ports);
                    self.health.record(true);
                    programmed = Some(state);
                    retry = None;
                    if full {
                        full = false;
                        next_full = Instant::now() + self.config.sync_period;
                    }
                }
                Err(err) => {
                    let backoff = retry.map_or(Duration::from_millis(500), |(_, b)| {
                        (b * 2).min(self.config.sync_period)
                    });
                    tracing::error!("sync failed, retrying in {backoff:?}: {err}");
                    self.metrics.record_sync(elapsed, Err(()), service_ports);
                    self.health.record(false);
                    retry = Some((Instant::now() + backoff, backoff));
                }
            }
            self.write_ingress_status(&node, &mut status_written);
        }
    }

    /// Ingress `status.loadBalancer` for the Ingresses we serve (API source only).
    fn write_ingress_status(
        &mut self,
        node: &sluice_model::NodeInfo,
        written: &mut Option<(Vec<ObjectKey>, Vec<std::net::IpAddr>)>,
    ) {
        let (Some(client), Some(proxy)) = (&self.k8s_client, &self.ingress) else {
            return;
        };
        let served = proxy.served_ingresses();
        let mut ips = self.config.ingress_status_addresses.clone();
        if ips.is_empty() {
            ips = node.addresses.clone();
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
                    tracing::warn!(ingress = %ingress, "writing the Ingress status failed: {err}");
                }
            }
        });
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

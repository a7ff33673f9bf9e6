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
use crate::interfaces::LocalAddresses;
use crate::metrics::Metrics;

pub struct SyncLoop {
    pub config: AgentConfig,
    pub dataplane: Option<Box<dyn Dataplane>>,
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
        let mut trigger_times = crate::trigger::TriggerTimes::default();
        // Endpoint changes seen but not yet applied (kept across failed syncs).
        let mut pending_triggers = Vec::new();

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
            pending_triggers.extend(trigger_times.new_triggers(&snapshot));

            let node_object = snapshot
                .nodes
                .get(&ObjectKey::cluster(self.config.node_name.clone()));
            let node = sluice_compute::node_info(
                &self.config.node_name,
                node_object.map(|n| n.as_ref()),
                &self.local_addresses.current(),
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
                // Nothing to program: those endpoint changes are in effect already.
                let now = std::time::SystemTime::now();
                self.metrics
                    .record_network_programming(crate::trigger::latencies(&pending_triggers, now));
                pending_triggers.clear();
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
                    let now = std::time::SystemTime::now();
                    self.metrics
                        .record_network_programming(crate::trigger::latencies(
                            &pending_triggers,
                            now,
                        ));
                    pending_triggers.clear();
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
            let status_ips = node_object_addresses(node_object.map(|n| n.as_ref()))
                .unwrap_or_else(|| node.addresses.clone());
            self.write_ingress_status(status_ips, &mut status_written);
        }
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
        let served = proxy.served_ingresses();
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
                    tracing::warn!(ingress = %ingress, "writing the Ingress status failed: {err}");
                }
            }
        });
    }
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
mod tests {
    use std::sync::Mutex;

    use clap::Parser as _;
    use k8s_openapi::api::core::v1::Service;
    use sluice_dataplane::{ApplyStats, DataplaneError};

    use super::*;
    use crate::cli::{Cli, Command};

    /// Records applies; fails the first `failures` of them.
    #[derive(Clone, Default)]
    struct ScriptedDataplane {
        applies: Arc<Mutex<Vec<(usize, bool)>>>,
        failures: Arc<Mutex<usize>>,
    }

    impl Dataplane for ScriptedDataplane {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn restore(&mut self) -> Result<(), DataplaneError> {
            Ok(())
        }
        fn apply(
            &mut self,
            desired: &DesiredState,
            full: bool,
        ) -> Result<ApplyStats, DataplaneError> {
            self.applies
                .lock()
                .unwrap()
                .push((desired.services.len(), full));
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err(DataplaneError::Kernel {
                    backend: "scripted",
                    action: "apply".into(),
                    detail: "no".into(),
                });
            }
            Ok(ApplyStats::default())
        }
        fn cleanup(&mut self) -> Result<(), DataplaneError> {
            Ok(())
        }
    }

    fn config(min_sync: &str) -> AgentConfig {
        let argv = [
            "sluice",
            "agent",
            "--source",
            "dir:/x",
            "--min-sync-period",
            min_sync,
            "--disable-ingress",
        ];
        let Command::Agent(args) = Cli::try_parse_from(argv).unwrap().command;
        args.validate_with_hostname(|| Some("node-a".into()))
            .unwrap()
    }

    fn snapshot(services: usize) -> Arc<Snapshot> {
        let mut s = Snapshot::default();
        for i in 0..services {
            let svc: Service = serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "default", "name": format!("s{i}")},
                "spec": {"clusterIP": format!("10.96.0.{}", i + 1), "ports": [{"port": 80}]},
            }))
            .unwrap();
            s.services
                .insert(ObjectKey::new("default", format!("s{i}")), Arc::new(svc));
        }
        Arc::new(s)
    }

    fn start(
        dp: &ScriptedDataplane,
        min_sync: &str,
    ) -> (
        watch::Sender<Option<Arc<Snapshot>>>,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let config = config(min_sync);
        let sync = SyncLoop {
            health: Arc::new(HealthState::new("node-a".into(), config.sync_period)),
            config,
            dataplane: Some(Box::new(dp.clone())),
            metrics: Arc::new(Metrics::new(None)),
            ingress: None,
            k8s_client: None,
            local_addresses: LocalAddresses::new(Arc::new(sluice_hostnet::FakeHostNetwork::new())),
        };
        let (tx, rx) = watch::channel(None);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(sync.run(rx, stop_rx));
        (tx, stop_tx, task)
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    #[tokio::test]
    async fn nothing_is_applied_before_the_first_snapshot_and_the_first_apply_is_full() {
        let dp = ScriptedDataplane::default();
        let (tx, stop, task) = start(&dp, "0s");
        settle().await;
        assert!(dp.applies.lock().unwrap().is_empty());
        tx.send(Some(snapshot(2))).unwrap();
        settle().await;
        assert_eq!(*dp.applies.lock().unwrap(), vec![(2, true)]);
        // The same content again is not re-applied.
        tx.send(Some(snapshot(2))).unwrap();
        settle().await;
        assert_eq!(dp.applies.lock().unwrap().len(), 1);
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn changes_within_the_minimum_sync_period_are_batched() {
        let dp = ScriptedDataplane::default();
        let (tx, stop, task) = start(&dp, "500ms");
        tx.send(Some(snapshot(1))).unwrap();
        settle().await;
        for n in 2..=5 {
            tx.send(Some(snapshot(n))).unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(900)).await;
        let applies = dp.applies.lock().unwrap().clone();
        assert_eq!(applies.first(), Some(&(1, true)));
        assert_eq!(applies.last(), Some(&(5, false)), "{applies:?}");
        assert!(
            applies.len() <= 3,
            "four changes in 80 ms batched: {applies:?}"
        );
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_apply_is_retried_without_a_new_change() {
        let dp = ScriptedDataplane::default();
        *dp.failures.lock().unwrap() = 1;
        let (tx, stop, task) = start(&dp, "0s");
        tx.send(Some(snapshot(3))).unwrap();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let applies = dp.applies.lock().unwrap().clone();
        assert_eq!(
            applies,
            vec![(3, true), (3, true)],
            "failed full sync retried as a full sync"
        );
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}

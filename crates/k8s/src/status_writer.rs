//! The Ingress status writer: keeps `status.loadBalancer` of Ingresses equal to a desired state,
//! from the leader only, independent of any sync loop.
//!
//! The caller publishes the whole desired state ([`IngressStatusWriter::set_desired`], latest
//! wins); a background task works through the Ingresses whose target changed:
//!
//! * **Leader only.** Nothing is sent while the leadership receiver says `false`; losing it
//!   aborts writes in flight. Gaining it re-verifies every Ingress (another leader may have
//!   written other addresses meanwhile).
//! * **Prompt.** A change is dispatched as soon as it is published (up to `max_in_flight`
//!   Ingresses at once), not at the next resync of anything.
//! * **Cheap.** Each write reads the status first and sends nothing when it already is the
//!   target; an Ingress whose target was reached is not touched again until its target changes,
//!   leadership is regained, or `resync_period` passes.
//! * **Retried.** A failed write (including 404: a deleted Ingress stays desired until the
//!   caller drops it) is retried per Ingress with exponential backoff from `retry_initial` to
//!   `retry_max`; a new target for that Ingress is tried at once.
//! * **Forgetful.** An Ingress that leaves the desired state (deleted) is dropped, with its
//!   retries and any write in flight.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::networking::v1::Ingress;
use kube::Client;
use kube::api::Api;
use sluice_model::{ObjectKey, Snapshot};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::K8sError;
use crate::status::{StatusTarget, StatusWrite, ensure_status, status_lists_any};

/// What the Ingress statuses should be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredIngressStatus {
    /// Ingresses we serve → the addresses their status must list (exactly, as `{ip}` entries).
    pub served: BTreeMap<ObjectKey, Vec<IpAddr>>,
    /// Ingresses we no longer serve (they left our class, or stopped being served) → our
    /// addresses to remove from their status; entries with other addresses are kept. An
    /// Ingress in both maps is served.
    pub cleared: BTreeMap<ObjectKey, Vec<IpAddr>>,
}

impl DesiredIngressStatus {
    /// The usual desired state: every `served` Ingress of the snapshot lists `ips`; every other
    /// Ingress of the snapshot whose status still lists one of `ips` gets them removed.
    /// Ingresses not in the snapshot (deleted) are absent, so the writer forgets them.
    pub fn from_snapshot<'a>(
        snapshot: &Snapshot,
        served: impl IntoIterator<Item = &'a ObjectKey>,
        ips: &[IpAddr],
    ) -> Self {
        let served: BTreeMap<ObjectKey, Vec<IpAddr>> = served
            .into_iter()
            .filter(|key| snapshot.ingresses.contains_key(key))
            .map(|key| (key.clone(), ips.to_vec()))
            .collect();
        let cleared = snapshot
            .ingresses
            .iter()
            .filter(|(key, ingress)| !served.contains_key(key) && status_lists_any(ingress, ips))
            .map(|(key, _)| (key.clone(), ips.to_vec()))
            .collect();
        Self { served, cleared }
    }

    fn target(&self, key: &ObjectKey) -> Option<StatusTarget> {
        if let Some(ips) = self.served.get(key) {
            return Some(StatusTarget::Exactly(ips.clone()));
        }
        self.cleared
            .get(key)
            .map(|ips| StatusTarget::Without(ips.clone()))
    }

    fn keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.served.keys().chain(
            self.cleared
                .keys()
                .filter(|key| !self.served.contains_key(*key)),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressStatusWriterConfig {
    /// First retry delay after a failed write; doubles per failure...
    pub retry_initial: Duration,
    /// ...up to this.
    pub retry_max: Duration,
    /// Ingresses written concurrently.
    pub max_in_flight: usize,
    /// Re-verify every Ingress this often (repairs statuses changed behind our back).
    pub resync_period: Duration,
    /// Bound of one read-and-write of one Ingress.
    pub request_timeout: Duration,
}

impl Default for IngressStatusWriterConfig {
    fn default() -> Self {
        Self {
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            max_in_flight: 4,
            resync_period: Duration::from_secs(10 * 60),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters since the writer started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StatusWriterStats {
    /// Status patches sent and accepted.
    pub written: u64,
    /// Ingresses read whose status already was the target.
    pub unchanged: u64,
    /// Failed reads or writes (each is retried).
    pub failed: u64,
}

#[derive(Default)]
struct Counters {
    written: AtomicU64,
    unchanged: AtomicU64,
    failed: AtomicU64,
}

/// Handle of the background writer; dropping it stops the writer.
pub struct IngressStatusWriter {
    desired: watch::Sender<Arc<DesiredIngressStatus>>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl IngressStatusWriter {
    /// Starts the writer. `leader` is the leadership from
    /// [`LeaseHolder::subscribe`](crate::LeaseHolder::subscribe); if its sender goes away the
    /// writer stops writing for good.
    pub fn spawn(
        client: Client,
        leader: watch::Receiver<bool>,
        config: IngressStatusWriterConfig,
    ) -> Self {
        let (desired, desired_rx) = watch::channel(Arc::new(DesiredIngressStatus::default()));
        let counters = Arc::new(Counters::default());
        let state = WriterState {
            client,
            config,
            counters: counters.clone(),
            desired: Arc::default(),
            done: HashMap::new(),
            retries: HashMap::new(),
            in_flight: HashMap::new(),
            tasks: JoinSet::new(),
            generation: 0,
        };
        let task = tokio::spawn(state.run(desired_rx, leader));
        Self {
            desired,
            counters,
            task,
        }
    }

    /// Publishes the desired state (replacing the previous one). Never blocks; an unchanged
    /// desired state causes no work.
    pub fn set_desired(&self, desired: DesiredIngressStatus) {
        self.desired.send_if_modified(|current| {
            if **current == desired {
                return false;
            }
            *current = Arc::new(desired);
            true
        });
    }

    pub fn stats(&self) -> StatusWriterStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatusWriterStats {
            written: read(&self.counters.written),
            unchanged: read(&self.counters.unchanged),
            failed: read(&self.counters.failed),
        }
    }
}

impl Drop for IngressStatusWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A failed target and when to try it again.
struct Retry {
    target: StatusTarget,
    delay: Duration,
    at: Instant,
}

type Finished = (ObjectKey, u64, StatusTarget, Result<StatusWrite, K8sError>);

struct WriterState {
    client: Client,
    config: IngressStatusWriterConfig,
    counters: Arc<Counters>,
    desired: Arc<DesiredIngressStatus>,
    /// Targets reached (written or found already there) while leader.
    done: HashMap<ObjectKey, StatusTarget>,
    retries: HashMap<ObjectKey, Retry>,
    /// Writes in flight: their generation (to ignore results of aborted ones) and abort handle.
    in_flight: HashMap<ObjectKey, (u64, AbortHandle)>,
    tasks: JoinSet<Finished>,
    generation: u64,
}

impl WriterState {
    async fn run(
        mut self,
        mut desired: watch::Receiver<Arc<DesiredIngressStatus>>,
        mut leader: watch::Receiver<bool>,
    ) {
        let mut is_leader = *leader.borrow_and_update();
        let mut next_resync = Instant::now() + self.config.resync_period;
        loop {
            if is_leader {
                self.dispatch();
            }
            // With every slot busy a due retry must wait for a write to finish (the join
            // branch wakes us), or this loop would spin on a deadline in the past.
            let has_slot = self.in_flight.len() < self.config.max_in_flight.max(1);
            let retry_at = (is_leader && has_slot).then(|| self.next_retry()).flatten();
            tokio::select! {
                changed = desired.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let latest = desired.borrow_and_update().clone();
                    self.set_desired(latest);
                }
                changed = leader.changed() => {
                    let now_leader = changed.is_ok() && *leader.borrow_and_update();
                    if now_leader != is_leader {
                        is_leader = now_leader;
                        self.leadership_changed(is_leader);
                        next_resync = Instant::now() + self.config.resync_period;
                    }
                    if changed.is_err() {
                        warn!("leader election ended; Ingress statuses are no longer written");
                        break;
                    }
                }
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    // A JoinError is a write we aborted; it was already forgotten.
                    if let Ok(finished) = joined {
                        self.finished(finished);
                    }
                }
                () = sleep_until_opt(retry_at) => {}
                () = tokio::time::sleep_until(next_resync), if is_leader => {
                    debug!("re-verifying every Ingress status");
                    self.done.clear();
                    next_resync = Instant::now() + self.config.resync_period;
                }
            }
        }
        self.tasks.abort_all();
    }

    fn set_desired(&mut self, desired: Arc<DesiredIngressStatus>) {
        self.desired = desired;
        let desired = &self.desired;
        self.done.retain(|key, _| desired.target(key).is_some());
        self.retries.retain(|key, _| desired.target(key).is_some());
        self.in_flight.retain(|key, (_, abort)| {
            let keep = desired.target(key).is_some();
            if !keep {
                abort.abort();
            }
            keep
        });
    }

    fn leadership_changed(&mut self, leader: bool) {
        if leader {
            info!("leader: writing Ingress statuses");
        } else {
            info!("not leader: no longer writing Ingress statuses");
            self.tasks.abort_all();
            self.in_flight.clear();
        }
        self.done.clear();
        self.retries.clear();
    }

    /// Starts writes for Ingresses whose target is not reached, not in flight and not waiting
    /// for a retry, up to `max_in_flight`.
    fn dispatch(&mut self) {
        let now = Instant::now();
        let free = self
            .config
            .max_in_flight
            .max(1)
            .saturating_sub(self.in_flight.len());
        let due: Vec<(ObjectKey, StatusTarget)> = self
            .desired
            .keys()
            .filter(|key| !self.in_flight.contains_key(*key))
            .filter_map(|key| Some((key.clone(), self.desired.target(key)?)))
            .filter(|(key, target)| self.done.get(key) != Some(target))
            .filter(|(key, target)| {
                self.retries
                    .get(key)
                    .is_none_or(|retry| retry.target != *target || retry.at <= now)
            })
            .take(free)
            .collect();
        for (key, target) in due {
            self.generation += 1;
            let api = Api::<Ingress>::namespaced(self.client.clone(), &key.namespace);
            let timeout = self.config.request_timeout;
            let (task_key, generation) = (key.clone(), self.generation);
            let abort = self.tasks.spawn(async move {
                let result = write_with_timeout(&api, &task_key, &target, timeout).await;
                (task_key, generation, target, result)
            });
            self.in_flight.insert(key, (generation, abort));
        }
    }

    fn finished(&mut self, (key, generation, target, result): Finished) {
        if self.in_flight.get(&key).map(|(g, _)| *g) != Some(generation) {
            return;
        }
        self.in_flight.remove(&key);
        match result {
            Ok(outcome) => {
                let counter = match outcome {
                    StatusWrite::Written => {
                        info!(ingress = %key, ?target, "Ingress status written");
                        &self.counters.written
                    }
                    StatusWrite::Unchanged => &self.counters.unchanged,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.retries.remove(&key);
                self.done.insert(key, target);
            }
            Err(err) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                let delay = match self.retries.get(&key) {
                    Some(retry) if retry.target == target => {
                        (retry.delay * 2).min(self.config.retry_max)
                    }
                    _ => self.config.retry_initial,
                };
                warn!(ingress = %key, retry_in = ?delay,
                      "writing the Ingress status failed: {err}");
                let at = Instant::now() + delay;
                self.retries.insert(key, Retry { target, delay, at });
            }
        }
    }

    /// When the earliest pending retry (of a still-desired target) is due.
    fn next_retry(&self) -> Option<Instant> {
        self.retries
            .iter()
            .filter(|(key, _)| !self.in_flight.contains_key(*key))
            .filter(|(key, retry)| self.desired.target(key).as_ref() == Some(&retry.target))
            .map(|(_, retry)| retry.at)
            .min()
    }
}

async fn write_with_timeout(
    api: &Api<Ingress>,
    key: &ObjectKey,
    target: &StatusTarget,
    limit: Duration,
) -> Result<StatusWrite, K8sError> {
    tokio::time::timeout(limit, ensure_status(api, key, target))
        .await
        .unwrap_or_else(|_| {
            Err(K8sError::Timeout {
                operation: format!("writing the status of Ingress {key}"),
                after: limit,
            })
        })
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ingress(status_ips: &[&str]) -> Arc<Ingress> {
        let entries: Vec<_> = status_ips.iter().map(|ip| json!({"ip": ip})).collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": "web", "name": "x"},
                "status": {"loadBalancer": {"ingress": entries}}
            }))
            .expect("test ingress"),
        )
    }

    #[test]
    fn from_snapshot_serves_existing_and_clears_only_ingresses_listing_our_ips() {
        let ours: Vec<IpAddr> = vec!["10.0.0.1".parse().expect("ip")];
        let key = |name: &str| ObjectKey::new("web", name);
        let mut snapshot = Snapshot::default();
        snapshot.ingresses.insert(key("served"), ingress(&[]));
        snapshot
            .ingresses
            .insert(key("left-our-class"), ingress(&["10.0.0.1"]));
        snapshot
            .ingresses
            .insert(key("someone-elses"), ingress(&["192.0.2.9"]));
        let desired =
            DesiredIngressStatus::from_snapshot(&snapshot, &[key("served"), key("deleted")], &ours);
        assert_eq!(
            desired.served.keys().collect::<Vec<_>>(),
            vec![&key("served")]
        );
        assert_eq!(
            desired.cleared.keys().collect::<Vec<_>>(),
            vec![&key("left-our-class")]
        );
        assert_eq!(
            desired.target(&key("left-our-class")),
            Some(StatusTarget::Without(ours.clone()))
        );
        assert_eq!(desired.target(&key("someone-elses")), None);
    }
}

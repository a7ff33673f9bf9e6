//! Holding a `coordination.k8s.io/v1` Lease: leader election, and the per-node heartbeat
//! leases that tell other agents which nodes are alive.
//!
//! One loop serves both ([`LeaseHolder`]); only the configuration differs
//! ([`LeaseConfig::leader_election`], [`LeaseConfig::node_heartbeat`]). The algorithm is
//! client-go's `leaderelection` on a Lease lock:
//!
//! * Every write is a PUT carrying the `resourceVersion` that was read, so two candidates
//!   racing for the same Lease cannot both win (the loser gets 409 Conflict).
//! * A Lease held by someone else is taken over only when it has not *changed* for its
//!   `leaseDurationSeconds`, measured on this process's monotonic clock from the moment the
//!   change was first seen (not from `renewTime`), so clock skew between nodes does not matter.
//! * The holder renews every `renew_period` and steps down (publishes `false`) when no renewal
//!   has succeeded for `renew_deadline`, counted from the *start* of the last successful
//!   request. Since `renew_deadline < lease_duration` and every other candidate first saw that
//!   renewal after it started, the holder has stepped down before anyone else may take over.
//! * On [`LeaseHolder::shutdown`] a holder clears `holderIdentity`, so another candidate takes
//!   over at its next attempt (within its `retry_period`) instead of waiting for expiry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::K8sError;

mod live_nodes;

pub use live_nodes::LiveNodes;

/// Label put on node heartbeat Leases (value [`NODE_HEARTBEAT_LABEL_VALUE`]), so that
/// [`LiveNodes`](crate::LiveNodes) can watch only those.
pub const LEASE_KIND_LABEL: &str = "sluice.dev/lease";
pub const NODE_HEARTBEAT_LABEL_VALUE: &str = "node-heartbeat";
/// Node heartbeat Leases are named `sluice-node-<node>`.
pub const NODE_HEARTBEAT_PREFIX: &str = "sluice-node-";

/// What Lease to hold, as whom, and how often to talk to the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Written to `holderIdentity`; the node name.
    pub identity: String,
    /// Written to `leaseDurationSeconds` (rounded up to whole seconds): how long others wait
    /// after the last change before taking over.
    pub lease_duration: Duration,
    /// How often the holder renews.
    pub renew_period: Duration,
    /// The holder steps down when no renewal succeeded for this long (< `lease_duration`).
    pub renew_deadline: Duration,
    /// How often a non-holder tries to acquire, and a holder retries a failed renewal.
    pub retry_period: Duration,
    /// Labels set on the Lease when this holder creates or writes it.
    pub labels: BTreeMap<String, String>,
}

impl LeaseConfig {
    /// Leader election among the agents: 15 s lease, renewed every 2 s, step down after 10 s
    /// without a successful renewal, candidates retry every 2 s (client-go's defaults).
    pub fn leader_election(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_period: Duration::from_secs(2),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            labels: BTreeMap::new(),
        }
    }

    /// This node's heartbeat, Lease `sluice-node-<node>`: 6 s lease renewed every 2 s, so a node
    /// whose agent stopped drops out of [`LiveNodes`](crate::LiveNodes) within 6 s.
    pub fn node_heartbeat(namespace: &str, node: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: format!("{NODE_HEARTBEAT_PREFIX}{node}"),
            identity: node.to_owned(),
            lease_duration: Duration::from_secs(6),
            renew_period: Duration::from_secs(2),
            renew_deadline: Duration::from_secs(4),
            retry_period: Duration::from_secs(1),
            labels: BTreeMap::from([(
                LEASE_KIND_LABEL.to_owned(),
                NODE_HEARTBEAT_LABEL_VALUE.to_owned(),
            )]),
        }
    }

    fn validate(&self) -> Result<(), K8sError> {
        let invalid = |reason: String| {
            Err(K8sError::InvalidLeaseConfig {
                lease: format!("{}/{}", self.namespace, self.name),
                reason,
            })
        };
        if self.identity.is_empty() {
            return invalid("the identity is empty".into());
        }
        if self.retry_period.is_zero() || self.renew_period.is_zero() {
            return invalid("renew and retry periods must be positive".into());
        }
        if !(self.renew_period < self.renew_deadline && self.renew_deadline < self.lease_duration) {
            return invalid(format!(
                "need renew period ({:?}) < renew deadline ({:?}) < lease duration ({:?})",
                self.renew_period, self.renew_deadline, self.lease_duration
            ));
        }
        Ok(())
    }

    fn lease_duration_seconds(&self) -> i32 {
        let seconds = self.lease_duration.as_secs_f64().ceil();
        seconds.min(f64::from(i32::MAX)) as i32
    }
}

/// Holds (or competes for) one Lease in a background task and publishes whether this process
/// holds it. For leader election, "holds the lease" is "is the leader".
pub struct LeaseHolder {
    held: Arc<watch::Sender<bool>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl LeaseHolder {
    /// Starts competing for the Lease. Fails only on an inconsistent configuration.
    pub fn spawn(client: Client, config: LeaseConfig) -> Result<Self, K8sError> {
        config.validate()?;
        let held = Arc::new(watch::channel(false).0);
        let (stop, stop_rx) = watch::channel(false);
        let lock = LeaseLock {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        };
        let task = tokio::spawn(run(lock, held.clone(), stop_rx));
        Ok(Self {
            held,
            stop,
            task: Some(task),
        })
    }

    /// `true` while this process holds the Lease. Starts `false`; becomes `false` before the
    /// Lease could have expired for anyone else, and when the holder is stopped or dropped.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.held.subscribe()
    }

    pub fn is_held(&self) -> bool {
        *self.held.borrow()
    }

    /// Stops competing: publishes `false`, then (if held) clears `holderIdentity` so that
    /// another candidate can take over at once. Waits for that write (bounded by the renew
    /// deadline); a failed release is logged, the Lease then simply expires.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for LeaseHolder {
    fn drop(&mut self) {
        // Dropped without shutdown (or shutdown interrupted): nobody may go on believing we
        // hold the Lease, even though we cannot release it any more.
        self.held.send_replace(false);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The holder loop: attempt, then wait `renew_period` (held) or `retry_period`; step down when
/// the renew deadline passes, whatever the API server is doing.
async fn run(mut lock: LeaseLock, held: Arc<watch::Sender<bool>>, mut stop: watch::Receiver<bool>) {
    let config = lock.config.clone();
    let lease = format!("{}/{}", config.namespace, config.name);
    // Start of the last successful acquire/renew while we hold the Lease.
    let mut renewed_at: Option<Instant> = None;
    let mut next_attempt = Instant::now();
    loop {
        let step_down_at = renewed_at.map(|at| at + config.renew_deadline);
        let attempt = async {
            tokio::time::sleep_until(next_attempt).await;
            let started = Instant::now();
            (started, lock.try_acquire_or_renew().await)
        };
        tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            () = sleep_until_opt(step_down_at) => {
                warn!(%lease, identity = %config.identity, deadline = ?config.renew_deadline,
                      "could not renew the lease in time, stepping down");
                renewed_at = None;
                held.send_replace(false);
                next_attempt = Instant::now() + config.retry_period;
            }
            (started, outcome) = attempt => {
                renewed_at =
                    record_attempt(&lease, &config.identity, renewed_at, started, outcome, &held);
                let wait = match renewed_at {
                    Some(_) => config.renew_period,
                    None => config.retry_period,
                };
                next_attempt = Instant::now() + wait;
            }
        }
    }
    let was_held = renewed_at.is_some();
    held.send_replace(false);
    if was_held {
        let release = tokio::time::timeout(config.renew_deadline, lock.release());
        match release.await {
            Ok(Ok(())) => info!(%lease, identity = %config.identity, "lease released"),
            Ok(Err(err)) => warn!(%lease, "releasing the lease failed, it will expire: {err}"),
            Err(_) => warn!(%lease, "releasing the lease timed out, it will expire"),
        }
    }
}

/// Publishes the outcome of one attempt; returns the new "renewed at" (None = not held).
fn record_attempt(
    lease: &str,
    identity: &str,
    renewed_at: Option<Instant>,
    started: Instant,
    outcome: Result<Attempt, K8sError>,
    held: &watch::Sender<bool>,
) -> Option<Instant> {
    match outcome {
        Ok(Attempt::Held) => {
            if renewed_at.is_none() {
                info!(%lease, %identity, "acquired the lease");
            }
            held.send_replace(true);
            Some(started)
        }
        Ok(Attempt::HeldByOther(holder)) => {
            if renewed_at.is_some() {
                warn!(%lease, %identity, %holder, "the lease was taken over, stepping down");
                held.send_replace(false);
            } else {
                debug!(%lease, %holder, "the lease is held by another identity");
            }
            None
        }
        Err(err) => {
            // Held or not, the deadline in `run` decides when a holder steps down.
            if renewed_at.is_some() {
                warn!(%lease, "renewing the lease failed, will retry: {err}");
            } else {
                debug!(%lease, "acquiring the lease failed, will retry: {err}");
            }
            renewed_at
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

enum Attempt {
    /// We hold the Lease (just acquired or renewed it).
    Held,
    /// Someone else holds it and it has not expired.
    HeldByOther(String),
}

/// The Lease as last seen: its resourceVersion and when we first saw that version.
struct Observed {
    resource_version: Option<String>,
    at: Instant,
}

/// Reads and writes one Lease with optimistic concurrency.
struct LeaseLock {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<Observed>,
}

impl LeaseLock {
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, K8sError> {
        let name = self.config.name.clone();
        let Some(current) = self.api.get_opt(&name).await.map_err(|e| self.error(e))? else {
            return self.create().await;
        };
        self.observe(&current);
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.config.identity;
        if !ours && !holder.is_empty() && !self.expired(&spec) {
            return Ok(Attempt::HeldByOther(holder));
        }
        let now = MicroTime(Timestamp::now());
        let mut next = current;
        let mut spec = spec;
        if !ours {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.config.identity.clone());
        spec.lease_duration_seconds = Some(self.config.lease_duration_seconds());
        spec.renew_time = Some(now);
        next.spec = Some(spec);
        self.add_labels(&mut next.metadata);
        self.replace(next).await?;
        Ok(Attempt::Held)
    }

    async fn create(&mut self) -> Result<Attempt, K8sError> {
        let now = MicroTime(Timestamp::now());
        let mut lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.config.name.clone()),
                namespace: Some(self.config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.config.identity.clone()),
                lease_duration_seconds: Some(self.config.lease_duration_seconds()),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        self.add_labels(&mut lease.metadata);
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(created) => {
                self.observe(&created);
                Ok(Attempt::Held)
            }
            // Another candidate created it first; we will read it next time.
            Err(kube::Error::Api(status)) if status.is_already_exists() => {
                Ok(Attempt::HeldByOther("another candidate".into()))
            }
            Err(err) => Err(self.error(err)),
        }
    }

    /// Clears `holderIdentity` if we still hold the Lease (with a 1 s duration, like
    /// client-go), so the next candidate need not wait for expiry.
    async fn release(&mut self) -> Result<(), K8sError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.error(e))?
        else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.replace(lease).await
    }

    /// PUT with the resourceVersion we read: 409 Conflict if anyone wrote in between.
    async fn replace(&mut self, lease: Lease) -> Result<(), K8sError> {
        let written = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
            .map_err(|e| self.error(e))?;
        self.observe(&written);
        Ok(())
    }

    fn observe(&mut self, lease: &Lease) {
        let version = lease.metadata.resource_version.clone();
        if self
            .observed
            .as_ref()
            .is_none_or(|seen| seen.resource_version != version)
        {
            self.observed = Some(Observed {
                resource_version: version,
                at: Instant::now(),
            });
        }
    }

    /// Whether the Lease has not changed for its duration, on our clock.
    fn expired(&self, spec: &LeaseSpec) -> bool {
        let seconds = spec
            .lease_duration_seconds
            .map_or(self.config.lease_duration, |s| {
                Duration::from_secs(u64::try_from(s).unwrap_or(0))
            });
        self.observed
            .as_ref()
            .is_some_and(|seen| seen.at.elapsed() >= seconds)
    }

    fn add_labels(&self, metadata: &mut ObjectMeta) {
        if self.config.labels.is_empty() {
            return;
        }
        let labels = metadata.labels.get_or_insert_with(BTreeMap::new);
        for (key, value) in &self.config.labels {
            labels.insert(key.clone(), value.clone());
        }
    }

    fn error(&self, source: kube::Error) -> K8sError {
        K8sError::Lease {
            lease: format!("{}/{}", self.config.namespace, self.config.name),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_consistent() {
        LeaseConfig::leader_election("kube-system", "sluice-leader", "node-a")
            .validate()
            .expect("leader election defaults");
        let heartbeat = LeaseConfig::node_heartbeat("kube-system", "node-a");
        heartbeat.validate().expect("heartbeat defaults");
        assert_eq!(heartbeat.name, "sluice-node-node-a");
        assert_eq!(heartbeat.lease_duration_seconds(), 6);
    }

    #[test]
    fn inconsistent_periods_are_refused_naming_the_lease() {
        let mut config = LeaseConfig::leader_election("kube-system", "sluice-leader", "node-a");
        config.renew_deadline = config.lease_duration;
        let error = config
            .validate()
            .expect_err("deadline must be below the duration");
        let text = error.to_string();
        assert!(text.contains("kube-system/sluice-leader"), "{text}");
        assert!(text.contains("renew deadline"), "{text}");
    }

    #[test]
    fn fractional_durations_round_up() {
        let mut config = LeaseConfig::leader_election("ns", "l", "a");
        config.lease_duration = Duration::from_millis(1500);
        assert_eq!(config.lease_duration_seconds(), 2);
    }
}

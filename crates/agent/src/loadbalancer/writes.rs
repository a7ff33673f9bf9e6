//! What the elected agent writes after an allocation run: each Service's
//! `status.loadBalancer`, each pool's `status.conditions`, and the Events explaining them.
//!
//! * **Optimistic.** A status PATCH carries the `resourceVersion` the allocation was computed
//!   from: if the object changed meanwhile the API server refuses it (409) and the next run,
//!   on the newer version the watch brings, decides again. Nothing is written from stale
//!   input.
//! * **Once.** A write that succeeded (or was refused as stale) is not repeated until the
//!   object's version or the target changes; an object whose status already is the target
//!   is not written at all (the allocator says so).
//! * **Retried.** Other failures are retried per object with backoff (0.5 s doubling to
//!   30 s); a new target is tried at once. A deleted object (404) is dropped.
//! * **Concurrent.** Writes run as tasks; the allocation loop never waits for the API server.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use sluice_k8s::{EventRecorder, Objects};
use sluice_lbipam::{
    Allocation, EventFilter, LoadBalancerIPPool, ObjectKind, load_balancer_status,
};
use sluice_model::{ObjectKey, Snapshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::metrics::LbStats;

const RETRY_INITIAL: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The `action` of our Events.
const EVENT_ACTION: &str = "AssignAddress";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum WriteKey {
    Service(ObjectKey),
    Pool(String),
}

impl std::fmt::Display for WriteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteKey::Service(key) => write!(f, "Service {key}"),
            WriteKey::Pool(name) => write!(f, "LoadBalancerIPPool {name}"),
        }
    }
}

/// One status PATCH: against which version, what (for comparing), and the body.
#[derive(Debug, Clone)]
struct Target {
    resource_version: Option<String>,
    /// What the write sets, without timestamps (two targets with the same summary are the
    /// same write).
    summary: String,
    body: Value,
}

impl Target {
    fn same(&self, other: &Target) -> bool {
        self.resource_version == other.resource_version && self.summary == other.summary
    }
}

#[derive(Debug)]
enum Failure {
    /// 409: the object changed since the allocation read it.
    Stale,
    /// 404: the object is gone.
    Gone,
    Other(String),
}

struct Retry {
    at: Instant,
    delay: Duration,
    summary: String,
}

type Outcome = (WriteKey, Target, Result<(), Failure>);

/// A finished write, for [`Writer::finish`].
pub struct Finished(Outcome);

/// The leader's writer (see the module docs).
pub struct Writer {
    client: Client,
    recorder: EventRecorder,
    events: EventFilter,
    stats: Arc<LbStats>,
    in_flight: JoinSet<Outcome>,
    flying: BTreeSet<WriteKey>,
    /// Which object each task in flight writes (to clean up after a panicked one).
    task_keys: HashMap<tokio::task::Id, WriteKey>,
    done: BTreeMap<WriteKey, Target>,
    retries: BTreeMap<WriteKey, Retry>,
}

impl Writer {
    pub fn new(client: Client, recorder: EventRecorder, stats: Arc<LbStats>) -> Self {
        Self {
            client,
            recorder,
            events: EventFilter::default(),
            stats,
            in_flight: JoinSet::new(),
            flying: BTreeSet::new(),
            task_keys: HashMap::new(),
            done: BTreeMap::new(),
            retries: BTreeMap::new(),
        }
    }

    /// Leadership lost: abandon writes in flight and forget what was written (the next
    /// leader, maybe us again, starts from the objects as they are).
    pub fn stop(&mut self) {
        self.in_flight = JoinSet::new();
        self.flying.clear();
        self.task_keys.clear();
        self.done.clear();
        self.retries.clear();
        self.events = EventFilter::default();
    }

    /// Starts the writes that make statuses match `allocation`.
    pub fn reconcile(
        &mut self,
        allocation: &Allocation,
        snapshot: &Snapshot,
        pools: &Objects<LoadBalancerIPPool>,
    ) {
        let desired = desired_writes(allocation, snapshot, pools);
        self.done.retain(|key, _| desired.contains_key(key));
        self.retries.retain(|key, _| desired.contains_key(key));
        let now = Instant::now();
        for (key, target) in desired {
            if self.flying.contains(&key) {
                continue; // its completion triggers another reconcile
            }
            if self.done.get(&key).is_some_and(|done| done.same(&target)) {
                continue;
            }
            let waiting = self
                .retries
                .get(&key)
                .is_some_and(|r| r.summary == target.summary && now < r.at);
            if waiting {
                continue;
            }
            self.spawn(key, target);
        }
    }

    /// Emits the Events that are new since the previous run (`EventFilter`).
    pub fn record_events(&mut self, allocation: &Allocation) {
        for event in self.events.fresh(&allocation.events) {
            super::log_event(&event);
            self.recorder.record(to_k8s_event(&event));
        }
    }

    /// Waits for the next write to finish (pending while none runs); `None` for a write
    /// that panicked (it is forgotten, so the next run starts it again).
    pub async fn next_done(&mut self) -> Option<Finished> {
        if self.in_flight.is_empty() {
            return std::future::pending().await;
        }
        match self.in_flight.join_next_with_id().await? {
            Ok((id, outcome)) => {
                self.task_keys.remove(&id);
                Some(Finished(outcome))
            }
            Err(error) => {
                if let Some(key) = self.task_keys.remove(&error.id()) {
                    tracing::error!(object = %key, "a status write failed unexpectedly: {error}");
                    self.flying.remove(&key);
                }
                None
            }
        }
    }

    /// When the earliest retry is due.
    pub fn next_retry(&self) -> Option<Instant> {
        self.retries.values().map(|r| r.at).min()
    }

    /// Records a finished write.
    pub fn finish(&mut self, Finished((key, target, result)): Finished) {
        self.flying.remove(&key);
        match result {
            Ok(()) => {
                self.stats.count_status_write(true);
                tracing::info!(object = %key, "wrote status: {}", target.summary);
                self.retries.remove(&key);
                self.done.insert(key, target);
            }
            Err(Failure::Stale) => {
                tracing::debug!(object = %key, "status write refused as stale; waiting for the newer version");
                self.retries.remove(&key);
                self.done.insert(key, target);
            }
            Err(Failure::Gone) => {
                self.retries.remove(&key);
            }
            Err(Failure::Other(error)) => {
                self.stats.count_status_write(false);
                let delay = self
                    .retries
                    .get(&key)
                    .filter(|r| r.summary == target.summary)
                    .map_or(RETRY_INITIAL, |r| (r.delay * 2).min(RETRY_MAX));
                tracing::warn!(object = %key, "writing the status failed, retrying in {delay:?}: {error}");
                let retry = Retry {
                    at: Instant::now() + delay,
                    delay,
                    summary: target.summary,
                };
                self.retries.insert(key, retry);
            }
        }
    }

    fn spawn(&mut self, key: WriteKey, target: Target) {
        self.flying.insert(key.clone());
        let client = self.client.clone();
        let task_key = key.clone();
        let handle = self.in_flight.spawn(async move {
            let result =
                match tokio::time::timeout(REQUEST_TIMEOUT, patch(&client, &key, &target)).await {
                    Ok(result) => result,
                    Err(_) => Err(Failure::Other(format!(
                        "no answer within {REQUEST_TIMEOUT:?}"
                    ))),
                };
            (key, target, result)
        });
        self.task_keys.insert(handle.id(), task_key);
    }
}

async fn patch(client: &Client, key: &WriteKey, target: &Target) -> Result<(), Failure> {
    let params = PatchParams::default();
    let body = Patch::Merge(&target.body);
    let result = match key {
        WriteKey::Service(service) => {
            let api = Api::<Service>::namespaced(client.clone(), &service.namespace);
            api.patch_status(&service.name, &params, &body)
                .await
                .map(drop)
        }
        WriteKey::Pool(name) => {
            let api = Api::<LoadBalancerIPPool>::all(client.clone());
            api.patch_status(name, &params, &body).await.map(drop)
        }
    };
    result.map_err(|error| match &error {
        kube::Error::Api(status) if status.code == 409 => Failure::Stale,
        kube::Error::Api(status) if status.code == 404 => Failure::Gone,
        _ => Failure::Other(error_chain(&error)),
    })
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Every status write the allocation asks for, against the versions in `snapshot`/`pools`.
fn desired_writes(
    allocation: &Allocation,
    snapshot: &Snapshot,
    pools: &Objects<LoadBalancerIPPool>,
) -> BTreeMap<WriteKey, Target> {
    let mut desired = BTreeMap::new();
    for (key, addresses) in allocation.status_updates() {
        let Some(service) = snapshot.services.get(key) else {
            continue;
        };
        let resource_version = service.metadata.resource_version.clone();
        let ips = addresses.ips();
        let summary = if ips.is_empty() {
            "status.loadBalancer: no address".to_owned()
        } else {
            let list: Vec<String> = ips.iter().map(ToString::to_string).collect();
            format!("status.loadBalancer: {}", list.join(", "))
        };
        let body = json!({
            "metadata": {"resourceVersion": resource_version},
            "status": {"loadBalancer": load_balancer_status(&ips)},
        });
        let target = Target {
            resource_version,
            summary,
            body,
        };
        desired.insert(WriteKey::Service(key.clone()), target);
    }
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    for (name, report) in &allocation.pools {
        let Some(pool) = pools.get(&ObjectKey::cluster(name.clone())) else {
            continue;
        };
        let existing = pool
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or(&[]);
        let merged = report.merged_conditions(existing, &now);
        if merged == existing {
            continue;
        }
        let resource_version = pool.metadata.resource_version.clone();
        let summary: Vec<String> = report
            .conditions
            .iter()
            .map(|c| {
                format!(
                    "{}={} ({}: {})",
                    c.type_,
                    c.status.as_str(),
                    c.reason,
                    c.message
                )
            })
            .collect();
        let body = json!({
            "metadata": {"resourceVersion": resource_version},
            "status": {"conditions": merged},
        });
        let target = Target {
            resource_version,
            summary: format!("conditions {}", summary.join("; ")),
            body,
        };
        desired.insert(WriteKey::Pool(name.clone()), target);
    }
    desired
}

fn to_k8s_event(event: &sluice_lbipam::Event) -> sluice_k8s::Event {
    let uid = Some(event.regarding.uid.clone()).filter(|u| !u.is_empty());
    let regarding = match event.regarding.kind {
        ObjectKind::Service => sluice_k8s::ObjectRef::service(&event.regarding.key).with_uid(uid),
        ObjectKind::LoadBalancerIPPool => sluice_k8s::ObjectRef {
            api_version: sluice_lbipam::API_VERSION.to_owned(),
            kind: sluice_lbipam::KIND.to_owned(),
            namespace: None,
            name: event.regarding.key.name.clone(),
            uid,
        },
    };
    sluice_k8s::Event {
        regarding,
        type_: match event.type_ {
            sluice_lbipam::EventType::Normal => sluice_k8s::EventType::Normal,
            sluice_lbipam::EventType::Warning => sluice_k8s::EventType::Warning,
        },
        reason: event.reason.to_owned(),
        action: EVENT_ACTION.to_owned(),
        note: event.message.clone(),
    }
}

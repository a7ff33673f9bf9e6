//! Kubernetes Events (`events.k8s.io/v1`) about the objects the agent acts on.
//!
//! [`EventRecorder::record`] never blocks and never fails: it correlates the event in memory
//! and, for a new Event, queues it for a background task that talks to the API server.
//!
//! * **De-duplication** (client-go's event correlator): the same object + type + reason +
//!   action + note within `series_window` of its last occurrence is not a new Event; it
//!   increments that Event's `series.count` and `series.lastObservedTime`, written with one
//!   merge PATCH per series at most every `series_flush_period`.
//! * **Rate limit**: creating new Events about one object takes a token from that object's
//!   bucket (`burst` tokens, one more every `refill_every`, like client-go's spam filter);
//!   with none left the event is dropped and counted. Repeats cost nothing (they are coalesced).
//! * **Bounded queue**: when `queue_capacity` new Events are already waiting, the event is
//!   dropped and counted.
//! * **Failures** are counted and logged at warn once per reason (then at debug until a write
//!   of that reason succeeds again); they never reach the caller.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use sluice_model::ObjectKey;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::K8sError;

/// `reportingController` of the agent's Events.
pub const REPORTING_CONTROLLER: &str = "sluice.dev/agent";

/// The object an Event is about (`regarding`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    /// `None` for cluster-scoped objects (their Events go to the `default` namespace).
    pub namespace: Option<String>,
    pub name: String,
    pub uid: Option<String>,
}

impl ObjectRef {
    pub fn ingress(key: &ObjectKey) -> Self {
        Self::namespaced("networking.k8s.io/v1", "Ingress", key)
    }

    pub fn service(key: &ObjectKey) -> Self {
        Self::namespaced("v1", "Service", key)
    }

    pub fn node(name: &str) -> Self {
        Self {
            api_version: "v1".into(),
            kind: "Node".into(),
            namespace: None,
            name: name.into(),
            uid: None,
        }
    }

    fn namespaced(api_version: &str, kind: &str, key: &ObjectKey) -> Self {
        Self {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: Some(key.namespace.clone()),
            name: key.name.clone(),
            uid: None,
        }
    }

    /// The same reference with the object's uid (so `kubectl describe` finds it even if an
    /// object of that name is recreated).
    pub fn with_uid(mut self, uid: Option<String>) -> Self {
        self.uid = uid;
        self
    }

    /// The reference of a typed object (kind, apiVersion, namespace, name and uid).
    pub fn from_object<K: kube::Resource<DynamicType = ()>>(object: &K) -> Self {
        let meta = object.meta();
        Self {
            api_version: K::api_version(&()).into_owned(),
            kind: K::kind(&()).into_owned(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
        }
    }

    fn to_k8s(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some(self.api_version.clone()),
            kind: Some(self.kind.clone()),
            namespace: self.namespace.clone(),
            name: Some(self.name.clone()),
            uid: self.uid.clone(),
            ..ObjectReference::default()
        }
    }

    fn event_namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{} {namespace}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// One occurrence to report.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Event {
    pub regarding: ObjectRef,
    pub type_: EventType,
    /// Why, in CamelCase (`kubectl describe`'s "Reason"), e.g. `BackendUnavailable`.
    pub reason: String,
    /// What the agent did or failed to do, in CamelCase, e.g. `Sync` (required by the API).
    pub action: String,
    /// The human-readable message (at most 1 kB is sent).
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecorderConfig {
    /// `reportingController`; [`REPORTING_CONTROLLER`] by default.
    pub reporting_controller: String,
    /// `reportingInstance`: the node name.
    pub reporting_instance: String,
    /// New Events waiting to be written; more are dropped.
    pub queue_capacity: usize,
    /// A repeat within this long of the previous occurrence joins its series.
    pub series_window: Duration,
    /// How often changed series counts are written.
    pub series_flush_period: Duration,
    /// New Events per object allowed at once...
    pub burst: u32,
    /// ...and one more allowed per this period.
    pub refill_every: Duration,
    /// Bound of each API request.
    pub request_timeout: Duration,
}

impl EventRecorderConfig {
    /// Defaults: 256 queued, 6 min series window (client-go's), series written every 30 s,
    /// 25 new Events per object then one per 5 min (client-go's spam filter), 10 s requests.
    pub fn new(node: &str) -> Self {
        Self {
            reporting_controller: REPORTING_CONTROLLER.into(),
            reporting_instance: node.into(),
            queue_capacity: 256,
            series_window: Duration::from_secs(6 * 60),
            series_flush_period: Duration::from_secs(30),
            burst: 25,
            refill_every: Duration::from_secs(5 * 60),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters since the recorder started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EventStats {
    /// Events created (POST).
    pub created: u64,
    /// Series count updates written (PATCH).
    pub series_updated: u64,
    /// Occurrences folded into an existing Event's series.
    pub deduplicated: u64,
    /// New Events dropped by the per-object rate limit.
    pub dropped_rate_limited: u64,
    /// New Events dropped because the queue was full.
    pub dropped_queue_full: u64,
    /// Failed writes (creates and series updates).
    pub failed: u64,
}

/// Records Events; cheap to clone. The background task ends (after writing pending series
/// counts) when the last clone is dropped.
#[derive(Clone)]
pub struct EventRecorder {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Event>,
}

struct Shared {
    config: EventRecorderConfig,
    correlator: Mutex<Correlator>,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    created: AtomicU64,
    series_updated: AtomicU64,
    deduplicated: AtomicU64,
    dropped_rate_limited: AtomicU64,
    dropped_queue_full: AtomicU64,
    failed: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[derive(Default)]
struct Correlator {
    series: HashMap<Event, Series>,
    buckets: HashMap<ObjectRef, Bucket>,
}

/// One Event and its repeats.
struct Series {
    count: u32,
    /// The count the API server has (0 until created).
    written_count: u32,
    first_time: Timestamp,
    last_observed: Timestamp,
    last_seen: Instant,
    /// The Event's name once created.
    name: Option<String>,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, burst: u32, refill_every: Duration) {
        let earned = now.duration_since(self.updated).as_secs_f64() / refill_every.as_secs_f64();
        self.tokens = (self.tokens + earned).min(f64::from(burst));
        self.updated = now;
    }
}

impl EventRecorder {
    /// Starts the background writer.
    pub fn spawn(client: Client, config: EventRecorderConfig) -> Self {
        let (queue, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let shared = Arc::new(Shared {
            config,
            correlator: Mutex::new(Correlator::default()),
            counters: Counters::default(),
        });
        tokio::spawn(run(client, shared.clone(), receiver));
        Self { shared, queue }
    }

    /// Reports one occurrence. Never blocks on the API server; see the module docs for what is
    /// coalesced or dropped.
    pub fn record(&self, event: Event) {
        let config = &self.shared.config;
        let now = Instant::now();
        let mut correlator = self.shared.lock();
        if let Some(series) = correlator.series.get_mut(&event)
            && now.duration_since(series.last_seen) <= config.series_window
        {
            series.count = series.count.saturating_add(1);
            series.last_observed = Timestamp::now();
            series.last_seen = now;
            bump(&self.shared.counters.deduplicated);
            return;
        }
        if !correlator.take_token(&event.regarding, now, config) {
            bump(&self.shared.counters.dropped_rate_limited);
            debug!(object = %event.regarding, reason = %event.reason,
                   "event dropped by the rate limit");
            return;
        }
        let timestamp = Timestamp::now();
        let series = Series {
            count: 1,
            written_count: 0,
            first_time: timestamp,
            last_observed: timestamp,
            last_seen: now,
            name: None,
        };
        correlator.series.insert(event.clone(), series);
        if let Err(refused) = self.queue.try_send(event) {
            let event = match refused {
                mpsc::error::TrySendError::Full(event)
                | mpsc::error::TrySendError::Closed(event) => event,
            };
            correlator.series.remove(&event);
            bump(&self.shared.counters.dropped_queue_full);
        }
    }

    pub fn stats(&self) -> EventStats {
        let counters = &self.shared.counters;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        EventStats {
            created: read(&counters.created),
            series_updated: read(&counters.series_updated),
            deduplicated: read(&counters.deduplicated),
            dropped_rate_limited: read(&counters.dropped_rate_limited),
            dropped_queue_full: read(&counters.dropped_queue_full),
            failed: read(&counters.failed),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Correlator> {
        // The correlator stays consistent across a panic elsewhere; keep reporting.
        self.correlator
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Correlator {
    fn take_token(
        &mut self,
        object: &ObjectRef,
        now: Instant,
        config: &EventRecorderConfig,
    ) -> bool {
        let bucket = self.buckets.entry(object.clone()).or_insert(Bucket {
            tokens: f64::from(config.burst),
            updated: now,
        });
        bucket.refill(now, config.burst, config.refill_every);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets series past their window and buckets that are full again.
    fn collect_garbage(&mut self, now: Instant, config: &EventRecorderConfig) {
        self.series
            .retain(|_, series| now.duration_since(series.last_seen) <= config.series_window);
        self.buckets.retain(|_, bucket| {
            bucket.refill(now, config.burst, config.refill_every);
            bucket.tokens < f64::from(config.burst)
        });
    }
}

async fn run(client: Client, shared: Arc<Shared>, mut queue: mpsc::Receiver<Event>) {
    let mut writer = Writer {
        client,
        shared,
        logged_failures: HashSet::new(),
        last_name_nanos: 0,
    };
    let period = writer.shared.config.series_flush_period;
    let mut flush = tokio::time::interval_at(Instant::now() + period, period);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            next = queue.recv() => match next {
                Some(event) => writer.create(event).await,
                None => break,
            },
            _ = flush.tick() => {
                writer.flush_series().await;
                let now = Instant::now();
                writer.shared.lock().collect_garbage(now, &writer.shared.config);
            }
        }
    }
    writer.flush_series().await;
}

/// The background side: API writes and their failure log.
struct Writer {
    client: Client,
    shared: Arc<Shared>,
    /// Reasons whose last write failed and was logged at warn.
    logged_failures: HashSet<String>,
    last_name_nanos: i128,
}

impl Writer {
    async fn create(&mut self, event: Event) {
        let Some((count, first_time, last_observed)) = self
            .shared
            .lock()
            .series
            .get(&event)
            .map(|s| (s.count, s.first_time, s.last_observed))
        else {
            return;
        };
        let name = self.unique_name(&event.regarding.name, first_time);
        let body = self.k8s_event(&event, &name, count, first_time, last_observed);
        let api =
            Api::<K8sEvent>::namespaced(self.client.clone(), event.regarding.event_namespace());
        let config = &self.shared.config;
        let result = with_timeout(
            config.request_timeout,
            &event,
            api.create(&PostParams::default(), &body),
        )
        .await;
        match result {
            Ok(_) => {
                if let Some(series) = self.shared.lock().series.get_mut(&event) {
                    series.name = Some(name);
                    series.written_count = count;
                }
                bump(&self.shared.counters.created);
                self.logged_failures.remove(&event.reason);
            }
            Err(err) => {
                // Forget it: a later occurrence tries again (if the rate limit allows).
                self.shared.lock().series.remove(&event);
                self.failed(&event, &err);
            }
        }
    }

    /// Writes the count of every series that grew since it was last written.
    async fn flush_series(&mut self) {
        let dirty: Vec<(Event, String, u32, Timestamp)> = self
            .shared
            .lock()
            .series
            .iter()
            .filter(|(_, s)| s.count > s.written_count)
            .filter_map(|(event, s)| {
                Some((event.clone(), s.name.clone()?, s.count, s.last_observed))
            })
            .collect();
        for (event, name, count, last_observed) in dirty {
            let patch = json!({"series": {
                "count": clamp_count(count),
                "lastObservedTime": MicroTime(last_observed),
            }});
            let api =
                Api::<K8sEvent>::namespaced(self.client.clone(), event.regarding.event_namespace());
            let (params, patch) = (PatchParams::default(), Patch::Merge(&patch));
            let request = api.patch(&name, &params, &patch);
            match with_timeout(self.shared.config.request_timeout, &event, request).await {
                Ok(_) => {
                    if let Some(series) = self.shared.lock().series.get_mut(&event) {
                        series.written_count = series.written_count.max(count);
                    }
                    bump(&self.shared.counters.series_updated);
                    self.logged_failures.remove(&event.reason);
                }
                Err(err) => {
                    if let K8sError::WriteEvent {
                        source: kube::Error::Api(status),
                        ..
                    } = &err
                        && status.is_not_found()
                    {
                        // The API server expired the Event; the next repeat starts anew.
                        self.shared.lock().series.remove(&event);
                    }
                    self.failed(&event, &err);
                }
            }
        }
    }

    fn failed(&mut self, event: &Event, err: &K8sError) {
        bump(&self.shared.counters.failed);
        if self.logged_failures.insert(event.reason.clone()) {
            warn!(reason = %event.reason, object = %event.regarding,
                  "writing a Kubernetes Event failed (further failures of this reason are \
                   logged at debug): {err}");
        } else {
            debug!(reason = %event.reason, object = %event.regarding,
                   "writing a Kubernetes Event failed: {err}");
        }
    }

    /// `<object name>.<hex nanoseconds>` like client-go, never repeating within this process.
    fn unique_name(&mut self, object: &str, at: Timestamp) -> String {
        let nanos = at.as_nanosecond().max(self.last_name_nanos + 1);
        self.last_name_nanos = nanos;
        format!("{object}.{nanos:x}")
    }

    fn k8s_event(
        &self,
        event: &Event,
        name: &str,
        count: u32,
        first: Timestamp,
        last: Timestamp,
    ) -> K8sEvent {
        let config = &self.shared.config;
        K8sEvent {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(event.regarding.event_namespace().to_owned()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(first)),
            regarding: Some(event.regarding.to_k8s()),
            type_: Some(event.type_.as_str().to_owned()),
            reason: Some(truncate(&event.reason, 128)),
            action: Some(truncate(&event.action, 128)),
            note: Some(truncate(&event.note, 1024)),
            reporting_controller: Some(config.reporting_controller.clone()),
            reporting_instance: Some(config.reporting_instance.clone()),
            // Repeats that arrived while the create was queued go into the new Event directly.
            series: (count >= 2).then(|| EventSeries {
                count: clamp_count(count),
                last_observed_time: MicroTime(last),
            }),
            ..K8sEvent::default()
        }
    }
}

async fn with_timeout<T>(
    limit: Duration,
    event: &Event,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, K8sError> {
    match tokio::time::timeout(limit, request).await {
        Ok(result) => result.map_err(|source| K8sError::WriteEvent {
            object: event.regarding.to_string(),
            reason: event.reason.clone(),
            source,
        }),
        Err(_) => Err(K8sError::Timeout {
            operation: format!("writing Event {} about {}", event.reason, event.regarding),
            after: limit,
        }),
    }
}

fn clamp_count(count: u32) -> i32 {
    i32::try_from(count).unwrap_or(i32::MAX)
}

/// At most `max` bytes, cut at a character boundary (the API refuses longer fields).
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("short", 128), "short");
    }

    #[test]
    fn bucket_allows_burst_then_refills() {
        let config = EventRecorderConfig {
            burst: 2,
            refill_every: Duration::from_secs(10),
            ..EventRecorderConfig::new("node-a")
        };
        let mut correlator = Correlator::default();
        let object = ObjectRef::node("node-a");
        let start = Instant::now();
        assert!(correlator.take_token(&object, start, &config));
        assert!(correlator.take_token(&object, start, &config));
        assert!(!correlator.take_token(&object, start, &config));
        assert!(!correlator.take_token(&object, start + Duration::from_secs(9), &config));
        assert!(correlator.take_token(&object, start + Duration::from_secs(11), &config));
        // Another object has its own bucket.
        assert!(correlator.take_token(&ObjectRef::node("node-b"), start, &config));
    }

    #[test]
    fn object_refs_name_their_object() {
        let ingress = ObjectRef::ingress(&ObjectKey::new("web", "shop"));
        assert_eq!(ingress.to_string(), "Ingress web/shop");
        assert_eq!(ingress.event_namespace(), "web");
        let node = ObjectRef::node("node-a");
        assert_eq!(node.to_string(), "Node node-a");
        assert_eq!(node.event_namespace(), "default");
    }
}

//! The Event recorder against the fake API server: what Events exist afterwards, and what the
//! recorder counted and logged.

mod fake_apiserver;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use serde_json::Value;
use sluice_k8s::{Event, EventRecorder, EventRecorderConfig, EventType, ObjectRef};
use sluice_model::ObjectKey;

const WAIT: Duration = Duration::from_secs(10);
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/web/events";

fn config() -> EventRecorderConfig {
    EventRecorderConfig {
        series_flush_period: Duration::from_millis(200),
        ..EventRecorderConfig::new("node-a")
    }
}

fn backend_down(ingress: &str, note: &str) -> Event {
    Event {
        regarding: ObjectRef::ingress(&ObjectKey::new("web", ingress))
            .with_uid(Some(format!("uid-{ingress}"))),
        type_: EventType::Warning,
        reason: "BackendUnavailable".into(),
        action: "Route".into(),
        note: note.into(),
    }
}

fn requests(fake: &FakeApiServer, method: &str) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.method == method && r.path.starts_with(EVENTS_PATH))
        .count()
}

/// Polls until `check` holds (the recorder works in the background).
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn first_occurrence_creates_an_event_naming_object_reason_and_reporter() {
    let fake = FakeApiServer::start().await;
    let recorder = EventRecorder::spawn(fake.client(), config());
    recorder.record(backend_down(
        "shop",
        "service web/shop has no ready endpoints",
    ));
    eventually("event created", || {
        fake.objects("Event", Some("web")).len() == 1
    })
    .await;

    let event = &fake.objects("Event", Some("web"))[0];
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "BackendUnavailable");
    assert_eq!(event["action"], "Route");
    assert_eq!(event["note"], "service web/shop has no ready endpoints");
    assert_eq!(event["reportingController"], "sluice.dev/agent");
    assert_eq!(event["reportingInstance"], "node-a");
    assert_eq!(event["regarding"]["kind"], "Ingress");
    assert_eq!(event["regarding"]["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(event["regarding"]["namespace"], "web");
    assert_eq!(event["regarding"]["name"], "shop");
    assert_eq!(event["regarding"]["uid"], "uid-shop");
    assert!(
        event["eventTime"].as_str().is_some_and(|t| t.contains('T')),
        "{event}"
    );
    assert!(
        event["series"].is_null(),
        "a single occurrence has no series: {event}"
    );
    assert!(
        event["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("shop.")),
        "{event}"
    );

    // A cluster-scoped object's Events go to the default namespace.
    recorder.record(Event {
        regarding: ObjectRef::node("node-a"),
        type_: EventType::Normal,
        reason: "LeaderElected".into(),
        action: "Elect".into(),
        note: "node-a writes Ingress statuses".into(),
    });
    eventually("node event", || {
        fake.objects("Event", Some("default")).len() == 1
    })
    .await;
    assert_eq!(recorder.stats().created, 2);
}

#[tokio::test]
async fn repeats_within_the_window_update_the_series_instead_of_creating_events() {
    let fake = FakeApiServer::start().await;
    let recorder = EventRecorder::spawn(fake.client(), config());
    let event = backend_down("shop", "no ready endpoints");
    recorder.record(event.clone());
    eventually("created", || requests(&fake, "POST") == 1).await;
    for _ in 0..4 {
        recorder.record(event.clone());
    }
    eventually("series count 5", || {
        let events = fake.objects("Event", Some("web"));
        events.len() == 1 && events[0]["series"]["count"] == 5
    })
    .await;
    let stored: Vec<Value> = fake.objects("Event", Some("web"));
    assert!(
        stored[0]["series"]["lastObservedTime"].is_string(),
        "{}",
        stored[0]
    );
    assert_eq!(requests(&fake, "POST"), 1, "repeats must not create Events");
    // Four repeats within one 200 ms flush period: coalesced into at most a couple of PATCHes.
    let patches = requests(&fake, "PATCH");
    assert!(
        (1..=2).contains(&patches),
        "{patches} PATCHes for 4 repeats"
    );
    let stats = recorder.stats();
    assert_eq!((stats.created, stats.deduplicated), (1, 4), "{stats:?}");

    // A different note is a different Event.
    recorder.record(backend_down("shop", "backend 10.0.0.5:8080 refused"));
    eventually("second event", || {
        fake.objects("Event", Some("web")).len() == 2
    })
    .await;
    assert_eq!(requests(&fake, "POST"), 2);
}

#[tokio::test]
async fn series_window_ends_and_a_late_repeat_is_a_new_event() {
    let fake = FakeApiServer::start().await;
    let recorder = EventRecorder::spawn(
        fake.client(),
        EventRecorderConfig {
            series_window: Duration::from_millis(300),
            ..config()
        },
    );
    let event = backend_down("shop", "no ready endpoints");
    recorder.record(event.clone());
    eventually("created", || requests(&fake, "POST") == 1).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    recorder.record(event);
    eventually("second event", || requests(&fake, "POST") == 2).await;
    assert_eq!(recorder.stats().deduplicated, 0);
}

#[tokio::test]
async fn new_events_about_one_object_are_rate_limited_others_are_not() {
    let fake = FakeApiServer::start().await;
    let recorder = EventRecorder::spawn(
        fake.client(),
        EventRecorderConfig {
            burst: 3,
            refill_every: Duration::from_secs(3600),
            ..config()
        },
    );
    for i in 0..10 {
        recorder.record(backend_down("shop", &format!("backend {i} failed")));
    }
    recorder.record(backend_down("cart", "backend 0 failed"));
    eventually("4 events", || requests(&fake, "POST") == 4).await;
    // Give anything that was wrongly let through time to arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = fake.objects("Event", Some("web"));
    let about = |name: &str| {
        events
            .iter()
            .filter(|e| e["regarding"]["name"] == name)
            .count()
    };
    assert_eq!((about("shop"), about("cart")), (3, 1));
    assert_eq!(recorder.stats().dropped_rate_limited, 7);
}

#[tokio::test]
async fn full_queue_drops_and_counts_without_blocking_the_caller() {
    let fake = FakeApiServer::start().await;
    fake.delay_requests("POST", EVENTS_PATH, Duration::from_secs(1));
    let recorder = EventRecorder::spawn(
        fake.client(),
        EventRecorderConfig {
            queue_capacity: 2,
            ..config()
        },
    );
    let started = Instant::now();
    for i in 0..10 {
        recorder.record(backend_down(&format!("ingress-{i}"), "down"));
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(200),
        "record() blocked for {took:?}"
    );
    let stats = recorder.stats();
    // At most one being written and two queued; the rest is dropped.
    assert!(stats.dropped_queue_full >= 7, "{stats:?}");
    fake.clear_faults();
    let kept = 10 - stats.dropped_queue_full as usize;
    eventually("queued events written", || requests(&fake, "POST") == kept).await;
    assert_eq!(recorder.stats().created as usize, kept);
}

/// A log sink for the current thread (the test runtime is single-threaded, so the recorder's
/// task logs here too).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn warnings_about_event_failures(&self) -> usize {
        let text = String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned();
        text.lines()
            .filter(|l| l.contains("WARN") && l.contains("writing a Kubernetes Event failed"))
            .count()
    }
}

#[tokio::test]
async fn failures_are_counted_logged_once_per_reason_and_never_reach_the_caller() {
    let logs = Logs::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let fake = FakeApiServer::start().await;
    fake.fail_requests_always("POST", EVENTS_PATH, 403);
    let recorder = EventRecorder::spawn(fake.client(), config());
    for i in 0..3 {
        recorder.record(backend_down(&format!("ingress-{i}"), "down"));
    }
    eventually("3 failures", || recorder.stats().failed == 3).await;
    assert_eq!(logs.warnings_about_event_failures(), 1);
    assert!(fake.objects("Event", Some("web")).is_empty());

    // Once writes work again, Events arrive; a later failure of the reason warns again.
    fake.clear_faults();
    recorder.record(backend_down("ingress-9", "down"));
    eventually("created", || recorder.stats().created == 1).await;
    fake.fail_requests("POST", EVENTS_PATH, 1, 500);
    recorder.record(backend_down("ingress-10", "down"));
    eventually("4th failure", || recorder.stats().failed == 4).await;
    assert_eq!(logs.warnings_about_event_failures(), 2);
}

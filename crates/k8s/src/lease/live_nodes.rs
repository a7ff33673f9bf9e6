//! Which nodes have a live agent: a watch on the node heartbeat Leases
//! ([`LeaseConfig::node_heartbeat`](super::LeaseConfig::node_heartbeat)).
//!
//! A heartbeat counts as live while it has a holder and has changed within its
//! `leaseDurationSeconds`, measured (like leader election) on our own monotonic clock from when
//! we saw the change. A Lease seen for the first time (at start or after a relist) is dated by
//! its `renewTime` instead, so the heartbeat of a node that died an hour ago is not live for
//! one more lease duration after an agent restart; only that first dating depends on the
//! clocks of the two nodes agreeing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{LEASE_KIND_LABEL, NODE_HEARTBEAT_LABEL_VALUE};
use crate::restarting::restarting_watcher;

/// Watches the node heartbeat Leases of one namespace in a background task.
pub struct LiveNodes {
    live: watch::Receiver<Option<BTreeSet<String>>>,
    task: JoinHandle<()>,
}

impl LiveNodes {
    /// Starts watching the heartbeat Leases in `namespace` (the agent's namespace).
    pub fn spawn(client: Client, namespace: &str) -> Self {
        let (tx, live) = watch::channel(None);
        let api = Api::<Lease>::namespaced(client, namespace);
        let task = tokio::spawn(run(api, tx));
        Self { live, task }
    }

    /// The node names (`holderIdentity`) whose heartbeat is live; `None` until the Leases have
    /// been listed once. Changes when a heartbeat appears, is released, or expires.
    pub fn subscribe(&self) -> watch::Receiver<Option<BTreeSet<String>>> {
        self.live.clone()
    }

    pub fn current(&self) -> Option<BTreeSet<String>> {
        self.live.borrow().clone()
    }
}

impl Drop for LiveNodes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One heartbeat Lease as we track it.
#[derive(Debug, Clone)]
struct Heartbeat {
    holder: Option<String>,
    duration: Duration,
    resource_version: Option<String>,
    /// When it last changed, on our clock.
    changed_at: Instant,
}

impl Heartbeat {
    fn live_until(&self) -> Option<Instant> {
        self.holder.as_ref()?;
        Some(self.changed_at + self.duration)
    }
}

type Heartbeats = BTreeMap<String, Heartbeat>;

async fn run(api: Api<Lease>, tx: watch::Sender<Option<BTreeSet<String>>>) {
    let selector = format!("{LEASE_KIND_LABEL}={NODE_HEARTBEAT_LABEL_VALUE}");
    let config = watcher::Config::default().labels(&selector);
    let mut events = restarting_watcher(api, config).default_backoff().boxed();
    let mut heartbeats = Heartbeats::new();
    // A relist in progress: built aside and swapped in when complete.
    let mut relist: Option<Heartbeats> = None;
    let mut listed = false;
    loop {
        let now = Instant::now();
        let next_expiry = heartbeats
            .values()
            .filter_map(Heartbeat::live_until)
            .filter(|until| *until > now)
            .min();
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => {
                    listed |= apply_event(&mut heartbeats, &mut relist, event);
                }
                Some(Err(err)) => warn!("watching node heartbeat leases failed, retrying: {err}"),
                None => return,
            },
            () = sleep_until_opt(next_expiry) => {}
        }
        if listed {
            publish(&tx, &heartbeats);
        }
    }
}

/// Applies one watch event; returns whether a complete list has now been seen.
fn apply_event(
    heartbeats: &mut Heartbeats,
    relist: &mut Option<Heartbeats>,
    event: Event<Lease>,
) -> bool {
    match event {
        Event::Init => {
            *relist = Some(Heartbeats::new());
            false
        }
        Event::InitApply(lease) => {
            if let Some(building) = relist.as_mut() {
                let known = |name: &str| heartbeats.get(name).cloned();
                if let Some((name, beat)) = track(known, &lease) {
                    building.insert(name, beat);
                }
            }
            false
        }
        Event::InitDone => {
            if let Some(complete) = relist.take() {
                *heartbeats = complete;
            }
            true
        }
        Event::Apply(lease) => {
            let known = |name: &str| heartbeats.get(name).cloned();
            if let Some((name, beat)) = track(known, &lease) {
                heartbeats.insert(name, beat);
            }
            false
        }
        Event::Delete(lease) => {
            if let Some(name) = lease.metadata.name.as_deref() {
                heartbeats.remove(name);
            }
            false
        }
    }
}

/// The heartbeat of `lease`, keeping the change time `known` has for it when its
/// resourceVersion did not change.
fn track(known: impl Fn(&str) -> Option<Heartbeat>, lease: &Lease) -> Option<(String, Heartbeat)> {
    let name = lease.metadata.name.clone()?;
    let spec = lease.spec.clone().unwrap_or_default();
    let duration = Duration::from_secs(
        spec.lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(0),
    );
    let resource_version = lease.metadata.resource_version.clone();
    let now = Instant::now();
    let changed_at = match known(&name) {
        Some(seen) if seen.resource_version == resource_version => seen.changed_at,
        Some(_) => now,
        None => first_seen_change_time(spec.renew_time.as_ref().map(|t| t.0), duration, now),
    };
    let holder = spec.holder_identity.filter(|holder| !holder.is_empty());
    let beat = Heartbeat {
        holder,
        duration,
        resource_version,
        changed_at,
    };
    Some((name, beat))
}

/// A Lease we had never seen is dated by its `renewTime` (never in the future, and at most one
/// duration back, which is enough to count as expired).
fn first_seen_change_time(renewed: Option<Timestamp>, duration: Duration, now: Instant) -> Instant {
    let age = match renewed {
        // A negative age (the writer's clock is ahead) fails the conversion: count it as 0.
        Some(renewed) => {
            Duration::try_from(Timestamp::now().duration_since(renewed)).unwrap_or_default()
        }
        None => duration,
    };
    now.checked_sub(age.min(duration)).unwrap_or(now)
}

fn publish(tx: &watch::Sender<Option<BTreeSet<String>>>, heartbeats: &Heartbeats) {
    let now = Instant::now();
    let live: BTreeSet<String> = heartbeats
        .values()
        .filter(|beat| beat.live_until().is_some_and(|until| until > now))
        .filter_map(|beat| beat.holder.clone())
        .collect();
    tx.send_if_modified(|current| {
        if current.as_ref() == Some(&live) {
            return false;
        }
        debug!(nodes = ?live, "live nodes changed");
        *current = Some(live);
        true
    });
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

    #[tokio::test]
    async fn first_sight_is_dated_by_renew_time_within_bounds() {
        let now = Instant::now();
        let duration = Duration::from_secs(6);
        let two_seconds_ago = Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(2);
        let dated = first_seen_change_time(Some(two_seconds_ago), duration, now);
        let age = now - dated;
        assert!(
            age >= Duration::from_millis(1900) && age <= Duration::from_secs(3),
            "{age:?}"
        );
        // An hour-old renewal counts as one full duration old (expired), no more.
        let an_hour_ago = Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_hours(1);
        assert!(now - first_seen_change_time(Some(an_hour_ago), duration, now) <= duration);
        // A renewal "in the future" (skewed clock) is dated now, not later.
        let future = Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(30);
        assert_eq!(first_seen_change_time(Some(future), duration, now), now);
    }
}

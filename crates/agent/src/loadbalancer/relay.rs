//! Between the sources and the sync loop while LoadBalancer IPAM runs. The sources report
//! changed objects; the allocator reads whole snapshots. The relay keeps its own [`Store`]
//! (the same `Arc`s as the sync loop's, so only pointers are duplicated), passes every batch
//! on unchanged, and publishes a snapshot to the allocation loop only when something the
//! allocator reads changed: a Service that is or was of type LoadBalancer, an EndpointSlice
//! of one (eTP=Local eligibility), or a Node. A change elsewhere costs it one lookup. The
//! snapshot holds only what the allocator and the announcer read (every Service and Node, the
//! LoadBalancer Services' slices), so it pins no old version of anything else.
//!
//! In `dir:` mode a directory cannot be written back, so the relay also writes the assigned
//! addresses into the Services it passes on (the overlay), as the API server would store
//! the status the elected agent writes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServiceStatus};
use sluice_lbipam::{LbService, load_balancer_status};
use sluice_model::{
    ChangeSet, Object, ObjectKey, Snapshot, SourceBatch, SourceEvent, Store, slice_service,
};
use tokio::sync::{mpsc, watch};

/// The addresses assigned to each Service whose status must differ from its manifest's.
pub type Overlay = BTreeMap<ObjectKey, Vec<IpAddr>>;
pub type OverlayRx = watch::Receiver<Arc<Overlay>>;

pub struct Relay {
    store: Store,
    /// Services of type LoadBalancer now.
    lb_services: BTreeSet<ObjectKey>,
    /// The overlay last applied (`dir:` only).
    overlay: Arc<Overlay>,
}

impl Relay {
    pub fn new() -> Self {
        Self {
            store: Store::new(),
            lb_services: BTreeSet::new(),
            overlay: Arc::default(),
        }
    }

    /// Runs until the sources or the sync loop are gone, or `shutdown` says so.
    pub async fn run(
        mut self,
        mut from_sources: mpsc::Receiver<SourceBatch>,
        to_sync: mpsc::Sender<SourceBatch>,
        snapshots: watch::Sender<Option<Arc<Snapshot>>>,
        mut overlay: Option<OverlayRx>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let batch = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                batch = from_sources.recv() => match batch {
                    Some(batch) => self.receive(batch, &snapshots),
                    None => return,
                },
                changed = changed_opt(&mut overlay) => match changed {
                    Ok(new) => self.reapply(new),
                    Err(_) => return,
                },
            };
            if batch.events.is_empty() {
                continue;
            }
            tokio::select! {
                sent = to_sync.send(batch) => if sent.is_err() { return },
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// Records a source batch, publishes a snapshot when the allocator must look, and
    /// returns the batch to pass on (with the overlay applied).
    fn receive(
        &mut self,
        batch: SourceBatch,
        snapshots: &watch::Sender<Option<Arc<Snapshot>>>,
    ) -> SourceBatch {
        self.store.apply_all(batch.events.iter().cloned());
        if self.store.is_synced() {
            let changes = self.store.take_changes();
            if self.allocator_reads(&changes) {
                snapshots.send_replace(Some(Arc::new(self.allocator_view())));
            }
        }
        let events = batch
            .events
            .into_iter()
            .map(|event| self.overlaid(event))
            .collect();
        SourceBatch::new(events, batch.observed)
    }

    /// What the allocator and the announcer read: every Service and Node, and the slices of
    /// the LoadBalancer Services. Not the other slices: a published snapshot keeps what it
    /// holds alive until the next one, and the other slices change without the allocator
    /// looking (the replaced version of each stayed in memory: 3.5 KiB per changed slice of
    /// 10 endpoints).
    fn allocator_view(&self) -> Snapshot {
        let all = self.store.snapshot();
        let endpoint_slices = all
            .endpoint_slices
            .iter()
            .filter(|(key, slice)| {
                slice_service(key, slice).is_some_and(|s| self.lb_services.contains(&s))
            })
            .map(|(key, slice)| (key.clone(), Arc::clone(slice)))
            .collect();
        Snapshot {
            services: all.services.clone(),
            nodes: all.nodes.clone(),
            endpoint_slices,
            ..Snapshot::default()
        }
    }

    /// Whether `changes` touch anything the allocator reads; keeps `lb_services` current.
    fn allocator_reads(&mut self, changes: &ChangeSet) -> bool {
        let snapshot = self.store.snapshot();
        if changes.everything {
            self.lb_services = snapshot
                .services
                .iter()
                .filter(|(_, s)| LbService::is_load_balancer(s))
                .map(|(k, _)| k.clone())
                .collect();
            return true;
        }
        let mut relevant = !changes.nodes.is_empty();
        for key in &changes.services {
            let now = snapshot
                .services
                .get(key)
                .is_some_and(|s| LbService::is_load_balancer(s));
            let was = if now {
                !self.lb_services.insert(key.clone())
            } else {
                self.lb_services.remove(key)
            };
            relevant |= now || was;
        }
        relevant
            || changes
                .endpoint_slices
                .iter()
                .any(|key| snapshot.slice_may_belong_to(key, &self.lb_services))
    }

    /// A source event as the sync loop must see it.
    fn overlaid(&self, event: SourceEvent) -> SourceEvent {
        match event {
            SourceEvent::Apply(key, Object::Service(service)) => {
                let service = match self.overlay.get(&key) {
                    Some(ips) => with_status(&service, ips),
                    None => service,
                };
                SourceEvent::Apply(key, Object::Service(service))
            }
            other => other,
        }
    }

    /// The Services whose assigned addresses changed, as they must now read.
    fn reapply(&mut self, new: Arc<Overlay>) -> SourceBatch {
        let old = std::mem::replace(&mut self.overlay, new);
        let keys: BTreeSet<&ObjectKey> = old.keys().chain(self.overlay.keys()).collect();
        let services = &self.store.snapshot().services;
        let events = keys
            .into_iter()
            .filter(|key| old.get(*key) != self.overlay.get(*key))
            .filter_map(|key| {
                let manifest = services.get(key)?;
                let service = match self.overlay.get(key) {
                    Some(ips) => with_status(manifest, ips),
                    None => Arc::clone(manifest),
                };
                Some(SourceEvent::Apply(key.clone(), Object::Service(service)))
            })
            .collect();
        SourceBatch::new(events, std::time::Instant::now())
    }
}

/// The Service with these addresses in `status.loadBalancer`. Its resourceVersion is cleared:
/// the sync loop's store must compare the copy by content, not take it for the manifest.
fn with_status(service: &Arc<Service>, ips: &[IpAddr]) -> Arc<Service> {
    let mut changed = Service::clone(service);
    changed.metadata.resource_version = None;
    let status = changed.status.get_or_insert_with(ServiceStatus::default);
    status.load_balancer = Some(load_balancer_status(ips));
    Arc::new(changed)
}

async fn changed_opt(rx: &mut Option<OverlayRx>) -> Result<Arc<Overlay>, watch::error::RecvError> {
    match rx {
        Some(rx) => {
            rx.changed().await?;
            Ok(Arc::clone(&rx.borrow_and_update()))
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use sluice_model::SERVICE_NAME_LABEL;

    use super::*;

    /// A Service as the API server stores it (resourceVersion from its type).
    fn service(name: &str, type_: &str) -> Object {
        Object::Service(Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "default", "name": name, "resourceVersion": type_},
                "spec": {"type": type_, "ports": [{"port": 80}]}
            }))
            .unwrap(),
        ))
    }

    fn slice(name: &str, service: &str) -> Object {
        Object::EndpointSlice(Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "default", "name": name,
                             "labels": {SERVICE_NAME_LABEL: service}},
                "addressType": "IPv4", "endpoints": []
            }))
            .unwrap(),
        ))
    }

    fn apply(key: &str, object: Object) -> SourceEvent {
        SourceEvent::Apply(ObjectKey::new("default", key), object)
    }

    fn batch(events: Vec<SourceEvent>) -> SourceBatch {
        SourceBatch::new(events, std::time::Instant::now())
    }

    fn lb_ip(event: &SourceEvent) -> Option<String> {
        let SourceEvent::Apply(_, Object::Service(s)) = event else {
            return None;
        };
        let ingress = s
            .status
            .as_ref()?
            .load_balancer
            .as_ref()?
            .ingress
            .as_ref()?;
        ingress.first()?.ip.clone()
    }

    #[test]
    fn only_changes_the_allocator_reads_publish_a_snapshot() {
        let (tx, mut rx) = watch::channel(None);
        let mut relay = Relay::new();
        relay.receive(
            batch(vec![
                apply("lb", service("lb", "LoadBalancer")),
                apply("web", service("web", "ClusterIP")),
                SourceEvent::Synced,
            ]),
            &tx,
        );
        assert!(rx.has_changed().unwrap(), "the first snapshot is published");
        rx.mark_unchanged();
        relay.receive(batch(vec![apply("web-1", slice("web-1", "web"))]), &tx);
        assert!(
            !rx.has_changed().unwrap(),
            "a ClusterIP Service's slice is not read"
        );
        relay.receive(batch(vec![apply("lb-1", slice("lb-1", "lb"))]), &tx);
        assert!(
            rx.has_changed().unwrap(),
            "a LoadBalancer Service's slice is read"
        );
        rx.mark_unchanged();
        relay.receive(batch(vec![apply("lb", service("lb", "ClusterIP"))]), &tx);
        assert!(
            rx.has_changed().unwrap(),
            "a Service that stops being one is read"
        );
        rx.mark_unchanged();
        relay.receive(batch(vec![apply("lb-1", slice("lb-2", "lb"))]), &tx);
        assert!(!rx.has_changed().unwrap());
    }

    #[test]
    fn the_published_snapshot_holds_only_the_slices_the_allocator_reads() {
        let (tx, rx) = watch::channel(None);
        let mut relay = Relay::new();
        relay.receive(
            batch(vec![
                apply("lb", service("lb", "LoadBalancer")),
                apply("web", service("web", "ClusterIP")),
                apply("lb-1", slice("lb-1", "lb")),
                apply("web-1", slice("web-1", "web")),
                SourceEvent::Synced,
            ]),
            &tx,
        );
        let published = rx.borrow().clone().expect("published");
        fn keys<T>(map: &BTreeMap<ObjectKey, T>) -> Vec<String> {
            map.keys().map(ToString::to_string).collect()
        }
        assert_eq!(keys(&published.endpoint_slices), ["default/lb-1"]);
        // Every Service: the allocator releases what Services that are no longer of type
        // LoadBalancer still hold.
        assert_eq!(keys(&published.services), ["default/lb", "default/web"]);
    }

    #[test]
    fn assigned_addresses_are_written_into_the_services_passed_on_and_withdrawn() {
        let (tx, _rx) = watch::channel(None);
        let mut relay = Relay::new();
        relay.receive(
            batch(vec![
                apply("lb", service("lb", "LoadBalancer")),
                SourceEvent::Synced,
            ]),
            &tx,
        );
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        let assigned = relay.reapply(Arc::new(
            [(ObjectKey::new("default", "lb"), vec![ip])].into(),
        ));
        assert_eq!(assigned.events.len(), 1);
        assert_eq!(lb_ip(&assigned.events[0]).as_deref(), Some("192.0.2.10"));
        // A later edit of the manifest keeps the assigned address.
        let passed = relay.receive(batch(vec![apply("lb", service("lb", "LoadBalancer"))]), &tx);
        assert_eq!(lb_ip(&passed.events[0]).as_deref(), Some("192.0.2.10"));
        // The sync loop's store takes the copy as a change, though the manifest's
        // resourceVersion is the same.
        let mut store = Store::new();
        store.apply_all([
            apply("lb", service("lb", "LoadBalancer")),
            SourceEvent::Synced,
        ]);
        store.take_changes();
        store.apply_all(passed.events);
        assert!(store.has_changes());
        // Unassigned: the manifest as written again.
        let withdrawn = relay.reapply(Arc::default());
        assert_eq!(withdrawn.events.len(), 1);
        assert_eq!(lb_ip(&withdrawn.events[0]), None);
        assert!(relay.reapply(Arc::default()).events.is_empty());
    }
}

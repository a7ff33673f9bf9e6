//! TLS Secrets: every `kubernetes.io/tls` Secret is watched, but only those some Ingress
//! references keep their data and are published. See the `K8sSource` docs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher::Event;
use sluice_model::{Compact as _, Object, ObjectKey, SnapshotKind, SourceEvent};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::source::{Outbox, SECRET_FETCH_GRACE, TLS_SECRET_TYPE};
use crate::store::Store;

/// Marker put on our cached copy of a TLS Secret whose data we dropped because no Ingress
/// references it (never written to the API server).
const STRIPPED_ANNOTATION: &str = "sluice.dev/data-not-cached";

/// Which Secrets each Ingress references (`spec.tls[].secretName`), with the same relist
/// buffering as the store the consumer keeps: references follow the Ingresses it sees. Pinned
/// Secrets (the default certificate) count as referenced whatever the Ingresses say.
#[derive(Default)]
pub(crate) struct IngressRefs {
    live: BTreeMap<ObjectKey, Vec<ObjectKey>>,
    relist: Option<BTreeMap<ObjectKey, Vec<ObjectKey>>>,
    pinned: BTreeSet<ObjectKey>,
}

impl IngressRefs {
    pub(crate) fn with_pinned(pinned: impl IntoIterator<Item = ObjectKey>) -> Self {
        Self {
            pinned: pinned.into_iter().collect(),
            ..Self::default()
        }
    }

    pub(crate) fn relist_started(&mut self) {
        self.relist = Some(BTreeMap::new());
    }

    /// Records an Ingress; returns whether the live references changed.
    pub(crate) fn set(&mut self, key: &ObjectKey, ingress: &Ingress) -> bool {
        let refs = secret_refs(key, ingress);
        match &mut self.relist {
            Some(buffer) => {
                buffer.insert(key.clone(), refs);
                false
            }
            None => self.live.insert(key.clone(), refs.clone()) != Some(refs),
        }
    }

    pub(crate) fn remove(&mut self, key: &ObjectKey) -> bool {
        match &mut self.relist {
            Some(buffer) => {
                buffer.remove(key);
                false
            }
            None => self.live.remove(key).is_some_and(|refs| !refs.is_empty()),
        }
    }

    pub(crate) fn relist_done(&mut self) {
        if let Some(listed) = self.relist.take() {
            self.live = listed;
        }
    }

    fn referenced(&self) -> BTreeSet<ObjectKey> {
        let mut referenced: BTreeSet<ObjectKey> = self.live.values().flatten().cloned().collect();
        referenced.extend(self.pinned.iter().cloned());
        referenced
    }
}

fn secret_refs(key: &ObjectKey, ingress: &Ingress) -> Vec<ObjectKey> {
    let tls = ingress.spec.as_ref().and_then(|s| s.tls.as_ref());
    tls.into_iter()
        .flatten()
        .filter_map(|tls| tls.secret_name.as_deref().filter(|n| !n.is_empty()))
        .map(|name| ObjectKey::new(key.namespace.clone(), name))
        .collect()
}

struct PendingFetch {
    id: u64,
    started: Instant,
    handle: AbortHandle,
}

/// The result of a GET of one referenced Secret.
pub(crate) struct Fetch {
    key: ObjectKey,
    /// Tells a result apart from that of an earlier, aborted GET of the same Secret.
    id: u64,
    /// `None`: the Secret does not exist.
    secret: Option<Secret>,
}

/// The TLS Secret cache and what of it is published.
pub(crate) struct Secrets {
    client: Client,
    store: Store<Secret>,
    /// What the consumer has: referenced Secrets with their data.
    published: BTreeMap<ObjectKey, Arc<Secret>>,
    pub(crate) fetches: JoinSet<Fetch>,
    /// GETs in flight.
    pending: HashMap<ObjectKey, PendingFetch>,
    next_fetch_id: u64,
}

impl Secrets {
    pub(crate) fn new(client: Client) -> Self {
        Self {
            client,
            store: Store::new(SnapshotKind::Secret),
            published: BTreeMap::new(),
            fetches: JoinSet::new(),
            pending: HashMap::new(),
            next_fetch_id: 0,
        }
    }

    /// Applies a watch event. `ingresses_listed`: until the Ingresses are listed we cannot
    /// know what is unreferenced, so nothing is stripped.
    pub(crate) fn apply(
        &mut self,
        event: Event<DynamicObject>,
        refs: &IngressRefs,
        ingresses_listed: bool,
        out: &mut Outbox,
    ) {
        let referenced = refs.referenced();
        let changed = self.store.apply(event, |key, secret| {
            if ingresses_listed && !referenced.contains(key) {
                strip(secret);
            }
        });
        if changed {
            self.reconcile(&referenced, ingresses_listed, out);
        }
    }

    /// Drops the data of unreferenced Secrets, fetches referenced ones whose data was dropped
    /// earlier, and publishes the difference. O(TLS Secrets + Ingresses): Secrets and
    /// Ingresses change rarely, and Services or EndpointSlices never come here.
    pub(crate) fn reconcile_with(
        &mut self,
        refs: &IngressRefs,
        ingresses_listed: bool,
        out: &mut Outbox,
    ) {
        self.reconcile(&refs.referenced(), ingresses_listed, out);
    }

    fn reconcile(
        &mut self,
        referenced: &BTreeSet<ObjectKey>,
        strip_unreferenced: bool,
        out: &mut Outbox,
    ) {
        for (key, secret) in self.store.live_mut() {
            let wanted = referenced.contains(key);
            let stripped = is_stripped(secret);
            if wanted && stripped {
                if !self.pending.contains_key(key) {
                    debug!(secret = %key, "Secret newly referenced by an Ingress, fetching it");
                    self.next_fetch_id += 1;
                    let id = self.next_fetch_id;
                    let fetch = fetch_secret(self.client.clone(), key.clone(), id);
                    let handle = self.fetches.spawn(fetch);
                    let started = Instant::now();
                    let pending = PendingFetch {
                        id,
                        started,
                        handle,
                    };
                    self.pending.insert(key.clone(), pending);
                }
            } else if !wanted && !stripped && strip_unreferenced {
                let mut copy = Secret::clone(secret);
                strip(&mut copy);
                *secret = Arc::new(copy);
            }
        }
        let live = self.store.live();
        self.pending.retain(|key, PendingFetch { handle, .. }| {
            let wanted = referenced.contains(key) && live.get(key).is_some_and(|s| is_stripped(s));
            if !wanted {
                handle.abort();
            }
            wanted
        });
        self.publish(referenced, out);
    }

    /// Sends the difference between the publishable Secrets and what was published.
    fn publish(&mut self, referenced: &BTreeSet<ObjectKey>, out: &mut Outbox) {
        let publishable: BTreeMap<&ObjectKey, &Arc<Secret>> = self
            .store
            .live()
            .iter()
            .filter(|(key, secret)| {
                referenced.contains(*key)
                    && !is_stripped(secret)
                    && secret.type_.as_deref() == Some(TLS_SECRET_TYPE)
            })
            .collect();
        for (key, secret) in &publishable {
            if !self
                .published
                .get(*key)
                .is_some_and(|old| Arc::ptr_eq(old, secret))
            {
                let object = Object::Secret(Arc::clone(secret));
                out.push(SourceEvent::Apply((*key).clone(), object));
            }
        }
        for key in self.published.keys() {
            if !publishable.contains_key(key) {
                out.push(SourceEvent::Delete(SnapshotKind::Secret, key.clone()));
            }
        }
        self.published = publishable
            .into_iter()
            .map(|(key, secret)| (key.clone(), Arc::clone(secret)))
            .collect();
    }

    /// Until when publishing should wait for Secret GETs in flight (each gets
    /// [`SECRET_FETCH_GRACE`] from its start, so a failing one delays publishing only once).
    pub(crate) fn hold_until(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|pending| pending.started + SECRET_FETCH_GRACE)
            .max()
    }

    /// Takes in the result of a GET.
    pub(crate) fn fetched(&mut self, fetch: Fetch, refs: &IngressRefs, out: &mut Outbox) {
        let Fetch { key, id, secret } = fetch;
        // A result of an aborted GET that finished anyway may be older than what we know.
        if self
            .pending
            .get(&key)
            .is_none_or(|pending| pending.id != id)
        {
            return;
        }
        self.pending.remove(&key);
        let Some(mut secret) = secret else {
            // Gone meanwhile: the watch will report the deletion (or the re-creation, with data).
            return;
        };
        // Only fill in a copy that is still data-less and wanted; a watch event with data that
        // arrived meanwhile is at least as new as this GET.
        let referenced = refs.referenced();
        let wanted = referenced.contains(&key)
            && self.store.live().get(&key).is_some_and(|s| is_stripped(s));
        if !wanted || secret.type_.as_deref() != Some(TLS_SECRET_TYPE) {
            return;
        }
        secret.compact();
        self.store.live_mut().insert(key, Arc::new(secret));
        self.publish(&referenced, out);
    }
}

/// GETs one Secret, retrying transient failures with backoff until it succeeds or the task is
/// aborted (the Secret is no longer wanted).
async fn fetch_secret(client: Client, key: ObjectKey, id: u64) -> Fetch {
    let api = Api::<Secret>::namespaced(client, &key.namespace);
    let mut delay = Duration::from_millis(500);
    loop {
        match api.get_opt(&key.name).await {
            Ok(secret) => return Fetch { key, id, secret },
            Err(error) => {
                warn!(secret = %key, %error, "fetching a referenced TLS Secret failed, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

fn strip(secret: &mut Secret) {
    secret.data = None;
    secret.string_data = None;
    secret
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(STRIPPED_ANNOTATION.to_owned(), "true".to_owned());
}

fn is_stripped(secret: &Secret) -> bool {
    secret
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(STRIPPED_ANNOTATION))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ingress(namespace: &str, tls: serde_json::Value) -> (ObjectKey, Ingress) {
        let ingress: Ingress = serde_json::from_value(json!({
            "metadata": {"namespace": namespace, "name": "ing"},
            "spec": {"tls": tls}
        }))
        .expect("valid test object");
        (ObjectKey::new(namespace, "ing"), ingress)
    }

    #[test]
    fn references_are_namespaced_and_skip_empty_names() {
        let mut refs = IngressRefs::default();
        let (ka, a) = ingress(
            "a",
            json!([{"secretName": "cert"}, {"hosts": ["x"]}, {"secretName": ""}]),
        );
        let (kb, b) = ingress(
            "b",
            json!([{"secretName": "cert"}, {"secretName": "other"}]),
        );
        assert!(refs.set(&ka, &a));
        assert!(refs.set(&kb, &b));
        assert!(!refs.set(&kb, &b), "unchanged");
        let referenced: Vec<String> = refs.referenced().iter().map(ToString::to_string).collect();
        assert_eq!(referenced, ["a/cert", "b/cert", "b/other"]);
    }

    #[test]
    fn pinned_secrets_are_always_referenced() {
        let mut refs = IngressRefs::with_pinned([ObjectKey::new("ingress", "default-cert")]);
        let (ka, a) = ingress("a", json!([{"secretName": "cert"}]));
        refs.set(&ka, &a);
        refs.relist_started();
        refs.relist_done();
        let referenced: Vec<String> = refs.referenced().iter().map(ToString::to_string).collect();
        assert_eq!(referenced, ["ingress/default-cert"]);
    }

    #[test]
    fn references_follow_a_relist_only_when_it_is_done() {
        let mut refs = IngressRefs::default();
        let (ka, a) = ingress("a", json!([{"secretName": "cert"}]));
        refs.set(&ka, &a);
        refs.relist_started();
        assert!(!refs.set(&ka, &ingress("a", json!([])).1));
        assert_eq!(refs.referenced().len(), 1, "the relist is not done");
        refs.relist_done();
        assert!(refs.referenced().is_empty());
    }

    #[test]
    fn stripping_drops_data_and_marks_our_copy() {
        let mut secret: Secret = serde_json::from_value(json!({
            "metadata": {"namespace": "a", "name": "cert"},
            "type": TLS_SECRET_TYPE,
            "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}
        }))
        .expect("valid test object");
        assert!(!is_stripped(&secret));
        strip(&mut secret);
        assert!(is_stripped(&secret));
        assert!(secret.data.is_none() && secret.string_data.is_none());
    }
}

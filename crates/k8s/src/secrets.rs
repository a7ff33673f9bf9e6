//! Secrets: every `kubernetes.io/tls` and every `Opaque` Secret is watched (one watch per
//! type), but only those some Ingress references (`spec.tls`, `auth-secret`,
//! `proxy-ssl-secret`) keep their data and are published. See the `K8sSource` docs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher::Event;
use sluice_model::ingress::referenced_secrets;
use sluice_model::{Compact as _, Object, ObjectKey, SnapshotKind, SourceEvent};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::source::{OPAQUE_SECRET_TYPE, Outbox, SECRET_FETCH_GRACE, TLS_SECRET_TYPE};
use crate::store::Store;

/// Marker put on our cached copy of a Secret whose data we dropped because no Ingress
/// references it (never written to the API server).
const STRIPPED_ANNOTATION: &str = "sluice.dev/data-not-cached";

/// The Secret types watched, one watch (field selector `type=...`) each. Other types
/// (service-account tokens, Helm releases, docker configs) are never read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SecretType {
    // The index of its store in `Secrets::stores`.
    Tls = 0,
    Opaque = 1,
}

impl SecretType {
    pub(crate) const ALL: [SecretType; 2] = [SecretType::Tls, SecretType::Opaque];

    /// The `type` field of such Secrets.
    pub(crate) fn type_name(self) -> &'static str {
        match self {
            SecretType::Tls => TLS_SECRET_TYPE,
            SecretType::Opaque => OPAQUE_SECRET_TYPE,
        }
    }

    fn of(secret: &Secret) -> Option<Self> {
        let type_ = secret.type_.as_deref()?;
        Self::ALL.into_iter().find(|t| t.type_name() == type_)
    }
}

/// Which Secrets each Ingress references ([`referenced_secrets`]), with the same relist
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
        let refs = referenced_secrets(key, ingress);
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

/// The Secret cache and what of it is published.
pub(crate) struct Secrets {
    client: Client,
    /// One store per watch ([`SecretType`]), so that a relist of one watch swaps in only its
    /// own Secrets. A Secret's type cannot change, so a key is in one store, except briefly
    /// when a Secret is deleted and re-created with another type (the events of the two
    /// watches may come in either order); the Opaque copy is published meanwhile.
    stores: [Store<Secret>; 2],
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
            stores: [
                Store::new(SnapshotKind::Secret),
                Store::new(SnapshotKind::Secret),
            ],
            published: BTreeMap::new(),
            fetches: JoinSet::new(),
            pending: HashMap::new(),
            next_fetch_id: 0,
        }
    }

    fn store_mut(&mut self, type_: SecretType) -> &mut Store<Secret> {
        &mut self.stores[type_ as usize]
    }

    /// Whether every Secret watch has completed its first list.
    pub(crate) fn synced(&self) -> bool {
        self.stores.iter().all(Store::synced)
    }

    /// The cached copy of a Secret (with or without data).
    fn cached(&self, key: &ObjectKey) -> impl Iterator<Item = &Arc<Secret>> {
        self.stores
            .iter()
            .filter_map(move |store| store.live().get(key))
    }

    /// Applies an event of the watch of `type_`. `ingresses_listed`: until the Ingresses are
    /// listed we cannot know what is unreferenced, so nothing is stripped (the source starts
    /// the Secret watches only after that list, so this is a safeguard).
    pub(crate) fn apply(
        &mut self,
        type_: SecretType,
        event: Event<DynamicObject>,
        refs: &IngressRefs,
        ingresses_listed: bool,
        out: &mut Outbox,
    ) {
        let referenced = refs.referenced();
        let changed = self.store_mut(type_).apply(event, |key, secret| {
            if ingresses_listed && !referenced.contains(key) {
                strip(secret);
            }
        });
        if changed {
            self.reconcile(&referenced, ingresses_listed, out);
        }
    }

    /// Drops the data of unreferenced Secrets, fetches referenced ones whose data was dropped
    /// earlier, and publishes the difference. O(watched Secrets + Ingresses): Secrets and
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
        let mut to_fetch = Vec::new();
        for store in &mut self.stores {
            for (key, secret) in store.live_mut() {
                let wanted = referenced.contains(key);
                let stripped = is_stripped(secret);
                if wanted && stripped {
                    to_fetch.push(key.clone());
                } else if !wanted && !stripped && strip_unreferenced {
                    let mut copy = Secret::clone(secret);
                    strip(&mut copy);
                    *secret = Arc::new(copy);
                }
            }
        }
        for key in to_fetch {
            self.start_fetch(key);
        }
        let stripped: BTreeSet<ObjectKey> = self
            .pending
            .keys()
            .filter(|key| self.cached(key).any(|s| is_stripped(s)))
            .cloned()
            .collect();
        self.pending.retain(|key, PendingFetch { handle, .. }| {
            let wanted = referenced.contains(key) && stripped.contains(key);
            if !wanted {
                handle.abort();
            }
            wanted
        });
        self.publish(referenced, out);
    }

    /// GETs a Secret whose data we dropped, unless a GET of it is in flight.
    fn start_fetch(&mut self, key: ObjectKey) {
        if self.pending.contains_key(&key) {
            return;
        }
        debug!(secret = %key, "Secret newly referenced by an Ingress, fetching it");
        self.next_fetch_id += 1;
        let id = self.next_fetch_id;
        let handle = self
            .fetches
            .spawn(fetch_secret(self.client.clone(), key.clone(), id));
        let started = Instant::now();
        self.pending.insert(
            key,
            PendingFetch {
                id,
                started,
                handle,
            },
        );
    }

    /// Sends the difference between the publishable Secrets and what was published.
    fn publish(&mut self, referenced: &BTreeSet<ObjectKey>, out: &mut Outbox) {
        let mut publishable: BTreeMap<&ObjectKey, &Arc<Secret>> = BTreeMap::new();
        for (type_, store) in SecretType::ALL.into_iter().zip(&self.stores) {
            let wanted = store.live().iter().filter(|(key, secret)| {
                referenced.contains(*key)
                    && !is_stripped(secret)
                    && SecretType::of(secret) == Some(type_)
            });
            publishable.extend(wanted);
        }
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
        // A type we do not watch (re-created meanwhile): its watch, if any, reports it.
        let Some(type_) = SecretType::of(&secret) else {
            return;
        };
        // Only fill in a copy that is still data-less and wanted; a watch event with data that
        // arrived meanwhile is at least as new as this GET.
        let referenced = refs.referenced();
        let store = self.store_mut(type_);
        let wanted =
            referenced.contains(&key) && store.live().get(&key).is_some_and(|s| is_stripped(s));
        if !wanted {
            return;
        }
        secret.compact();
        store.live_mut().insert(key, Arc::new(secret));
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
                warn!(secret = %key, %error, "fetching a referenced Secret failed, retrying");
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
    fn auth_and_proxy_ssl_annotations_are_references() {
        let mut refs = IngressRefs::default();
        let (key, mut ing) = ingress("a", json!([{"secretName": "cert"}]));
        ing.metadata.annotations = Some(BTreeMap::from([
            (AUTH_SECRET.to_owned(), "users".to_owned()),
            (PROXY_SSL_SECRET.to_owned(), "certs/ca".to_owned()),
        ]));
        assert!(refs.set(&key, &ing));
        let referenced: Vec<String> = refs.referenced().iter().map(ToString::to_string).collect();
        assert_eq!(referenced, ["a/cert", "a/users", "certs/ca"]);
        // The annotation removed: no longer referenced.
        ing.metadata.annotations = None;
        assert!(refs.set(&key, &ing));
        let referenced: Vec<String> = refs.referenced().iter().map(ToString::to_string).collect();
        assert_eq!(referenced, ["a/cert"]);
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

    const AUTH_SECRET: &str = "nginx.ingress.kubernetes.io/auth-secret";
    const PROXY_SSL_SECRET: &str = "nginx.ingress.kubernetes.io/proxy-ssl-secret";

    fn watched(type_: SecretType, name: &str, rv: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"namespace": "a", "name": name, "resourceVersion": rv},
            "type": type_.type_name(),
            "data": {"auth": "YWxpY2U6eA=="}
        }))
        .expect("valid test object")
    }

    /// A (re)list of one Secret watch; returns what the consumer is sent.
    fn list(
        secrets: &mut Secrets,
        type_: SecretType,
        objects: &[(&str, &str)],
        refs: &IngressRefs,
    ) -> Vec<String> {
        let mut out = Outbox::default();
        secrets.apply(type_, Event::Init, refs, true, &mut out);
        for (name, rv) in objects {
            let event = Event::InitApply(watched(type_, name, rv));
            secrets.apply(type_, event, refs, true, &mut out);
        }
        secrets.apply(type_, Event::InitDone, refs, true, &mut out);
        sent(&mut out)
    }

    fn sent(out: &mut Outbox) -> Vec<String> {
        let events = out.take_events().into_iter();
        events
            .map(|event| match event {
                SourceEvent::Apply(key, Object::Secret(s)) => {
                    let rv = s.metadata.resource_version.as_deref().unwrap_or("");
                    let data = if s.data.is_some() {
                        "with data"
                    } else {
                        "no data"
                    };
                    format!("apply {key} {rv} {data}")
                }
                SourceEvent::Delete(SnapshotKind::Secret, key) => format!("delete {key}"),
                other => panic!("a Secret watch sent {other:?}"),
            })
            .collect()
    }

    /// Never connected to: these tests reference only Secrets the watches deliver.
    fn client() -> Client {
        let config = kube::Config::new("http://127.0.0.1:1".parse().expect("valid URL"));
        Client::try_from(config).expect("client")
    }

    #[tokio::test]
    async fn a_relist_of_one_secret_watch_leaves_the_other_watchs_secrets() {
        let mut refs = IngressRefs::default();
        let (key, mut ing) = ingress("a", json!([{"secretName": "cert"}]));
        let auth = BTreeMap::from([(AUTH_SECRET.to_owned(), "users".to_owned())]);
        ing.metadata.annotations = Some(auth);
        refs.set(&key, &ing);
        let mut secrets = Secrets::new(client());
        let (tls, opaque) = (SecretType::Tls, SecretType::Opaque);

        assert_eq!(
            list(&mut secrets, tls, &[("cert", "1"), ("spare", "2")], &refs),
            ["apply a/cert 1 with data"]
        );
        assert!(!secrets.synced(), "the Opaque watch has not listed yet");
        let listed = list(
            &mut secrets,
            opaque,
            &[("users", "3"), ("other", "4")],
            &refs,
        );
        assert_eq!(listed, ["apply a/users 3 with data"]);
        assert!(secrets.synced());
        let other = &secrets.stores[opaque as usize].live()[&ObjectKey::new("a", "other")];
        assert!(other.data.is_none(), "unreferenced: metadata only");

        // Relists of the Opaque watch: only its own Secrets can change or go.
        let relisted = list(
            &mut secrets,
            opaque,
            &[("users", "5"), ("other", "4")],
            &refs,
        );
        assert_eq!(relisted, ["apply a/users 5 with data"]);
        assert_eq!(list(&mut secrets, opaque, &[], &refs), ["delete a/users"]);
        // And the other way round.
        let relisted = list(&mut secrets, tls, &[("cert", "1"), ("spare", "2")], &refs);
        assert!(relisted.is_empty(), "{relisted:?}");
        assert_eq!(
            list(&mut secrets, opaque, &[("users", "5")], &refs),
            ["apply a/users 5 with data"]
        );
        assert_eq!(list(&mut secrets, tls, &[], &refs), ["delete a/cert"]);
        let published: Vec<String> = secrets.published.keys().map(ToString::to_string).collect();
        assert_eq!(published, ["a/users"]);
    }

    #[tokio::test]
    async fn an_unreferenced_opaque_secret_loses_its_data_and_is_withdrawn() {
        let mut refs = IngressRefs::default();
        let (key, mut ing) = ingress("a", json!([]));
        let auth = BTreeMap::from([(AUTH_SECRET.to_owned(), "users".to_owned())]);
        ing.metadata.annotations = Some(auth);
        refs.set(&key, &ing);
        let mut secrets = Secrets::new(client());
        list(&mut secrets, SecretType::Tls, &[], &refs);
        let listed = list(&mut secrets, SecretType::Opaque, &[("users", "1")], &refs);
        assert_eq!(listed, ["apply a/users 1 with data"]);

        ing.metadata.annotations = None;
        assert!(refs.set(&key, &ing));
        let mut out = Outbox::default();
        secrets.reconcile_with(&refs, true, &mut out);
        assert_eq!(sent(&mut out), ["delete a/users"]);
        let cached =
            &secrets.stores[SecretType::Opaque as usize].live()[&ObjectKey::new("a", "users")];
        assert!(cached.data.is_none() && is_stripped(cached));
        assert!(secrets.pending.is_empty(), "nothing to fetch");
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

//! The watch loop: six watchers feed six stores; a snapshot is published once all have listed,
//! then after every change, coalesced.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::{self, BoxStream, SelectAll};
use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use sluice_model::{ObjectKey, Snapshot, SnapshotKind};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::K8sError;
use crate::restarting::restarting_watcher;
use crate::store::Store;

/// Changes arriving within this window after the first one are published together.
pub const COALESCE_WINDOW: Duration = Duration::from_millis(50);

/// How long a publish waits for the GET of a newly referenced TLS Secret, so that an Ingress
/// and its certificate usually appear in the same snapshot.
pub const SECRET_FETCH_GRACE: Duration = Duration::from_secs(2);

/// Secret type of the only Secrets sluice reads.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// Marker put on our cached copy of a TLS Secret whose data we dropped because no Ingress
/// references it (never written to the API server).
const STRIPPED_ANNOTATION: &str = "sluice.dev/data-not-cached";

/// Configuration of the API server source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sSourceConfig {
    /// This node's name: only this Node object is watched.
    pub node_name: String,
}

/// Watches the API server and publishes [`Snapshot`]s.
///
/// Secrets: all `kubernetes.io/tls` Secrets are watched (field selector `type=kubernetes.io/tls`),
/// but only those some Ingress references through `spec.tls[].secretName` keep their data in
/// memory and appear in the snapshot. The others are cached metadata-only, so that when an
/// Ingress starts referencing one, it is fetched with a single GET (after that, the watch keeps
/// it current). Ingresses of every class count as references.
pub struct K8sSource {
    client: Client,
    config: K8sSourceConfig,
}

impl K8sSource {
    pub fn new(client: Client, config: K8sSourceConfig) -> Self {
        Self { client, config }
    }

    /// Runs until every receiver of `tx` is dropped. Publishes `Some(snapshot)` only after
    /// every store has finished its initial list; after that on every change, coalescing
    /// bursts (at most one snapshot per [`COALESCE_WINDOW`]; up to [`SECRET_FETCH_GRACE`]
    /// while a newly referenced TLS Secret is being fetched). Watch errors are logged and
    /// retried with kube's default backoff; the last good state stays published meanwhile.
    pub async fn run(self, tx: watch::Sender<Option<Arc<Snapshot>>>) -> Result<(), K8sError> {
        let mut updates = watch_streams(&self.client, &self.config);
        let mut stores = Stores::new(self.client.clone());
        // When the first change since the last publish happened; `None`: nothing to publish.
        let mut dirty_since: Option<Instant> = None;
        let mut announced = false;

        loop {
            let deadline = dirty_since.filter(|_| stores.all_synced()).map(|since| {
                let coalesced = since + COALESCE_WINDOW;
                stores
                    .fetch_hold_until()
                    .map_or(coalesced, |hold| hold.max(coalesced))
            });
            tokio::select! {
                biased;
                () = tx.closed() => {
                    debug!("snapshot receivers gone, stopping the API server source");
                    return Ok(());
                }
                () = sleep_until_opt(deadline), if deadline.is_some() => {
                    dirty_since = None;
                    let snapshot = stores.snapshot();
                    if !announced {
                        announced = true;
                        info!(
                            services = snapshot.services.len(),
                            endpoint_slices = snapshot.endpoint_slices.len(),
                            ingresses = snapshot.ingresses.len(),
                            secrets = snapshot.secrets.len(),
                            "initial sync with the API server complete"
                        );
                    } else {
                        debug!("publishing snapshot");
                    }
                    tx.send_replace(Some(Arc::new(snapshot)));
                }
                update = updates.next() => {
                    let Some((kind, result)) = update else {
                        return Err(K8sError::WatchEnded);
                    };
                    let changed = match result {
                        Ok(event) => stores.apply(kind, event),
                        Err(error) if is_gone(&error) => {
                            info!(kind = kind.kind_name(), "watch expired (410 Gone), relisting");
                            false
                        }
                        Err(error) => {
                            warn!(kind = kind.kind_name(), %error, "watch failed, retrying with backoff");
                            false
                        }
                    };
                    if changed {
                        dirty_since.get_or_insert_with(Instant::now);
                    }
                }
                Some(fetched) = stores.fetches.join_next(), if !stores.fetches.is_empty() => {
                    if let Ok(fetch) = fetched
                        && stores.fetched_secret(fetch)
                    {
                        dirty_since.get_or_insert_with(Instant::now);
                    }
                }
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

type Update = (SnapshotKind, watcher::Result<Event<DynamicObject>>);

fn watch_streams(
    client: &Client,
    config: &K8sSourceConfig,
) -> SelectAll<BoxStream<'static, Update>> {
    // Lists are served from the API server's watch cache (resourceVersion=0, unpaged: kube
    // drops rv=0 from paged lists), like client-go informers: every node runs an agent, and
    // quorum reads of all EndpointSlices from each of them would load etcd for nothing.
    let all = watcher::Config {
        page_size: None,
        ..watcher::Config::default().any_semantic()
    };
    stream::select_all([
        kind_stream::<Service>(client, SnapshotKind::Service, all.clone()),
        kind_stream::<EndpointSlice>(client, SnapshotKind::EndpointSlice, all.clone()),
        kind_stream::<Node>(
            client,
            SnapshotKind::Node,
            all.clone()
                .fields(&format!("metadata.name={}", config.node_name)),
        ),
        kind_stream::<Ingress>(client, SnapshotKind::Ingress, all.clone()),
        kind_stream::<IngressClass>(client, SnapshotKind::IngressClass, all.clone()),
        kind_stream::<Secret>(
            client,
            SnapshotKind::Secret,
            all.fields(&format!("type={TLS_SECRET_TYPE}")),
        ),
    ])
}

/// Watcher for one kind (all namespaces), read as untyped objects so that each object is
/// decoded on its own (see `store`), with kube's default backoff after errors.
fn kind_stream<K: Resource<DynamicType = ()>>(
    client: &Client,
    kind: SnapshotKind,
    config: watcher::Config,
) -> BoxStream<'static, Update> {
    let api = Api::<DynamicObject>::all_with(client.clone(), &ApiResource::erase::<K>(&()));
    restarting_watcher(api, config)
        .default_backoff()
        .map(move |result| (kind, result))
        .boxed()
}

/// A watch refused or ended with 410 Gone: routine, the watcher relists.
fn is_gone(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::WatchStartFailed(kube::Error::Api(status)) => status.code == 410,
        _ => false,
    }
}

struct PendingFetch {
    id: u64,
    started: Instant,
    handle: AbortHandle,
}

/// The result of a GET of one referenced Secret.
struct Fetch {
    key: ObjectKey,
    /// Tells a result apart from that of an earlier, aborted GET of the same Secret.
    id: u64,
    /// `None`: the Secret does not exist.
    secret: Option<Secret>,
}

struct Stores {
    client: Client,
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    ingresses: Store<Ingress>,
    ingress_classes: Store<IngressClass>,
    secrets: Store<Secret>,
    /// Secrets referenced by some Ingress's `spec.tls[].secretName`.
    referenced: BTreeSet<ObjectKey>,
    fetches: JoinSet<Fetch>,
    /// GETs in flight.
    pending: HashMap<ObjectKey, PendingFetch>,
    next_fetch_id: u64,
}

impl Stores {
    fn new(client: Client) -> Self {
        Self {
            client,
            services: Store::new(SnapshotKind::Service),
            endpoint_slices: Store::new(SnapshotKind::EndpointSlice),
            nodes: Store::new(SnapshotKind::Node),
            ingresses: Store::new(SnapshotKind::Ingress),
            ingress_classes: Store::new(SnapshotKind::IngressClass),
            secrets: Store::new(SnapshotKind::Secret),
            referenced: BTreeSet::new(),
            fetches: JoinSet::new(),
            pending: HashMap::new(),
            next_fetch_id: 0,
        }
    }

    fn all_synced(&self) -> bool {
        self.services.synced()
            && self.endpoint_slices.synced()
            && self.nodes.synced()
            && self.ingresses.synced()
            && self.ingress_classes.synced()
            && self.secrets.synced()
    }

    /// Applies one event; returns whether the snapshot contents changed.
    fn apply(&mut self, kind: SnapshotKind, event: Event<DynamicObject>) -> bool {
        match kind {
            SnapshotKind::Service => self.services.apply(event, keep),
            SnapshotKind::EndpointSlice => self.endpoint_slices.apply(event, keep),
            SnapshotKind::Node => self.nodes.apply(event, keep),
            SnapshotKind::IngressClass => self.ingress_classes.apply(event, keep),
            SnapshotKind::Ingress => {
                let changed = self.ingresses.apply(event, keep);
                if changed {
                    self.referenced = referenced_secrets(self.ingresses.live());
                    self.reconcile_secrets();
                }
                changed
            }
            SnapshotKind::Secret => {
                // Until the Ingresses are listed we cannot know what is unreferenced: keep all.
                let strip_unreferenced = self.ingresses.synced();
                let referenced = &self.referenced;
                let changed = self.secrets.apply(event, |key, secret| {
                    if strip_unreferenced && !referenced.contains(key) {
                        strip(secret);
                    }
                });
                if changed {
                    self.reconcile_secrets();
                }
                changed
            }
        }
    }

    /// Drops the data of unreferenced Secrets and fetches referenced ones whose data was
    /// dropped earlier.
    fn reconcile_secrets(&mut self) {
        let strip_unreferenced = self.ingresses.synced();
        for (key, secret) in self.secrets.live_mut() {
            let referenced = self.referenced.contains(key);
            let stripped = is_stripped(secret);
            if referenced && stripped {
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
            } else if !referenced && !stripped && strip_unreferenced {
                let mut copy = Secret::clone(secret);
                strip(&mut copy);
                *secret = Arc::new(copy);
            }
        }
        let (secrets, referenced) = (self.secrets.live(), &self.referenced);
        self.pending.retain(|key, PendingFetch { handle, .. }| {
            let wanted =
                referenced.contains(key) && secrets.get(key).is_some_and(|s| is_stripped(s));
            if !wanted {
                handle.abort();
            }
            wanted
        });
    }

    /// Until when a publish should wait for Secret GETs in flight (each gets
    /// [`SECRET_FETCH_GRACE`] from its start, so a failing one delays publishing only once).
    fn fetch_hold_until(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|pending| pending.started + SECRET_FETCH_GRACE)
            .max()
    }

    /// Takes in the result of a GET; returns whether the snapshot changed.
    fn fetched_secret(&mut self, Fetch { key, id, secret }: Fetch) -> bool {
        // A result of an aborted GET that finished anyway may be older than what we know.
        if self
            .pending
            .get(&key)
            .is_none_or(|pending| pending.id != id)
        {
            return false;
        }
        self.pending.remove(&key);
        let Some(mut secret) = secret else {
            // Gone meanwhile: the watch will report the deletion (or the re-creation, with data).
            return false;
        };
        // Only fill in a copy that is still data-less and wanted; a watch event with data that
        // arrived meanwhile is at least as new as this GET.
        let wanted = self.referenced.contains(&key)
            && self
                .secrets
                .live()
                .get(&key)
                .is_some_and(|s| is_stripped(s));
        if !wanted || secret.type_.as_deref() != Some(TLS_SECRET_TYPE) {
            return false;
        }
        secret.metadata.managed_fields = None;
        self.secrets.live_mut().insert(key, Arc::new(secret));
        true
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            services: self.services.live().clone(),
            endpoint_slices: self.endpoint_slices.live().clone(),
            nodes: self.nodes.live().clone(),
            ingresses: self.ingresses.live().clone(),
            ingress_classes: self.ingress_classes.live().clone(),
            secrets: self
                .secrets
                .live()
                .iter()
                .filter(|(key, secret)| {
                    self.referenced.contains(*key)
                        && !is_stripped(secret)
                        && secret.type_.as_deref() == Some(TLS_SECRET_TYPE)
                })
                .map(|(key, secret)| (key.clone(), Arc::clone(secret)))
                .collect(),
        }
    }
}

/// Stores an object as decoded.
fn keep<K>(_: &ObjectKey, _: &mut K) {}

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

fn referenced_secrets<'a>(
    ingresses: impl IntoIterator<Item = (&'a ObjectKey, &'a Arc<Ingress>)>,
) -> BTreeSet<ObjectKey> {
    ingresses
        .into_iter()
        .flat_map(|(key, ingress)| {
            let tls = ingress.spec.as_ref().and_then(|s| s.tls.as_ref());
            tls.into_iter()
                .flatten()
                .filter_map(|tls| tls.secret_name.as_deref().filter(|n| !n.is_empty()))
                .map(|name| ObjectKey::new(key.namespace.clone(), name))
        })
        .collect()
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
    use std::collections::BTreeMap;

    fn ingress(namespace: &str, tls: serde_json::Value) -> (ObjectKey, Arc<Ingress>) {
        let ingress: Ingress = serde_json::from_value(json!({
            "metadata": {"namespace": namespace, "name": "ing"},
            "spec": {"tls": tls}
        }))
        .expect("valid test object");
        (ObjectKey::new(namespace, "ing"), Arc::new(ingress))
    }

    #[test]
    fn references_are_namespaced_and_skip_empty_names() {
        let ingresses: BTreeMap<_, _> = [
            ingress(
                "a",
                json!([{"secretName": "cert"}, {"hosts": ["x"]}, {"secretName": ""}]),
            ),
            ingress(
                "b",
                json!([{"secretName": "cert"}, {"secretName": "other"}]),
            ),
        ]
        .into_iter()
        .collect();
        let referenced: Vec<String> = referenced_secrets(&ingresses)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(referenced, ["a/cert", "b/cert", "b/other"]);
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

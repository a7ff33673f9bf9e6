//! The watch loop: seven watchers (two for Secrets); every change is reported to the consumer as it comes, as
//! [`SourceEvent`]s (a relist as `RelistStart` .. `RelistDone`), in batches of what arrived
//! together.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, BoxStream, SelectAll};
use futures::{FutureExt as _, StreamExt};
use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use sluice_model::EndpointSlice;
use sluice_model::{Object, ObjectKey, SnapshotKind, SourceBatch, SourceEvent};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::K8sError;
use crate::restarting::restarting_watcher;
use crate::secrets::{IngressRefs, SecretType, Secrets};
use crate::store::decode;

/// How long a publish waits for the GET of a newly referenced Secret, so that an Ingress and
/// its certificate (or htpasswd file, or upstream CA) usually arrive together.
pub const SECRET_FETCH_GRACE: Duration = Duration::from_secs(2);

/// The two Secret types read, one watch each.
pub use sluice_model::ingress::{OPAQUE_SECRET_TYPE, TLS_SECRET_TYPE};

/// Objects per page of a paged list ([`InitialList::Paged`]), as client-go's pager.
pub const DEFAULT_PAGE_SIZE: u32 = 500;

/// At most this many watch events go into one batch (a burst, e.g. a page of a list).
const MAX_BATCH: usize = 1024;

/// How (re)lists are read. See `docs/k8s-source.md` for the trade-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialList {
    /// Consistent lists in pages of this many objects (`limit`/`continue`): memory for one
    /// page at a time. kube-apiserver ≥ 1.34 serves them from its watch cache (snapshots);
    /// older ones read etcd.
    Paged(u32),
    /// One unpaged list from the watch cache (`resourceVersion=0`): no etcd read on any
    /// version, but the whole list is in memory at once (as JSON, then decoded).
    WatchCache,
}

/// Configuration of the API server source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sSourceConfig {
    /// This node's name: only this Node object is watched.
    pub node_name: String,
    pub initial_list: InitialList,
    /// Secrets published even when no Ingress references them (the Ingress proxy's
    /// `--default-ssl-certificate`).
    pub pinned_secrets: Vec<ObjectKey>,
}

impl K8sSourceConfig {
    /// Paged lists of [`DEFAULT_PAGE_SIZE`].
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            initial_list: InitialList::Paged(DEFAULT_PAGE_SIZE),
            pinned_secrets: Vec::new(),
        }
    }
}

/// Watches the API server and reports every change as [`SourceEvent`]s.
///
/// Secrets: all Secrets of type [`TLS_SECRET_TYPE`] and [`OPAQUE_SECRET_TYPE`] are watched
/// (two watches, field selectors `type=kubernetes.io/tls` and `type=Opaque`; other types such
/// as service-account tokens and Helm releases are never read), but only those some Ingress
/// references (`spec.tls[].secretName`, the `auth-secret` and `proxy-ssl-secret` annotations:
/// [`sluice_model::ingress::referenced_secrets`]) or [`K8sSourceConfig::pinned_secrets`]
/// names keep their data in memory and are reported. The others are cached metadata-only, so
/// that when an Ingress starts referencing one, it is fetched with a single GET (after that,
/// the watch keeps it current). Ingresses of every class count as references. The Secret
/// watches start once the Ingresses are listed, so no unreferenced Secret's data is held
/// while the source starts.
pub struct K8sSource {
    client: Client,
    config: K8sSourceConfig,
}

impl K8sSource {
    pub fn new(client: Client, config: K8sSourceConfig) -> Self {
        Self { client, config }
    }

    /// Runs until the receiver of `tx` is dropped. Every watch event becomes a
    /// [`SourceEvent`] at once (events that arrive together go in one batch); a (re)list of a
    /// kind is `RelistStart`, its objects, `RelistDone`; [`SourceEvent::Synced`] follows the
    /// first complete list of every kind. While a newly referenced Secret is being
    /// fetched, publishing waits for it (at most [`SECRET_FETCH_GRACE`]). Watch errors are
    /// logged and retried with kube's default backoff; nothing is reported meanwhile, so the
    /// consumer keeps the last good state.
    pub async fn run(self, tx: mpsc::Sender<SourceBatch>) -> Result<(), K8sError> {
        let (ingresses_listed, secrets_gate) = watch::channel(false);
        let mut updates = watch_streams(&self.client, &self.config, secrets_gate);
        let mut state = State::new(self.client.clone(), &self.config.pinned_secrets);
        let mut outbox = Outbox::default();
        loop {
            let hold = state.secrets.hold_until();
            if !outbox.is_empty() && hold.is_none_or(|until| Instant::now() >= until) {
                if !outbox.flush(&tx).await {
                    debug!("the consumer is gone, stopping the API server source");
                    return Ok(());
                }
                continue;
            }
            let wake = hold.filter(|_| !outbox.is_empty());
            tokio::select! {
                biased;
                () = tx.closed() => {
                    debug!("the consumer is gone, stopping the API server source");
                    return Ok(());
                }
                () = sleep_until_opt(wake), if wake.is_some() => {}
                update = updates.next() => {
                    let Some((watched, result)) = update else {
                        return Err(K8sError::WatchEnded);
                    };
                    state.handle(watched, result, &mut outbox);
                    // Whatever else is ready goes into the same batch.
                    for _ in 0..MAX_BATCH {
                        match updates.next().now_or_never() {
                            Some(Some((watched, result))) => {
                                state.handle(watched, result, &mut outbox);
                            }
                            Some(None) => return Err(K8sError::WatchEnded),
                            None => break,
                        }
                    }
                    if state.listed.contains(&SnapshotKind::Ingress) {
                        ingresses_listed.send_if_modified(|listed| !std::mem::replace(listed, true));
                    }
                }
                Some(fetched) = state.secrets.fetches.join_next(), if !state.secrets.fetches.is_empty() => {
                    if let Ok(fetch) = fetched {
                        state.secrets.fetched(fetch, &state.refs, &mut outbox);
                    }
                }
            }
        }
    }
}

/// Events not yet sent, and when the first of them was seen.
#[derive(Default)]
pub(crate) struct Outbox {
    events: Vec<SourceEvent>,
    observed: Option<Instant>,
}

impl Outbox {
    pub(crate) fn push(&mut self, event: SourceEvent) {
        self.observed.get_or_insert_with(Instant::now);
        self.events.push(event);
    }

    fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The events not yet sent, taken out (tests look at what the consumer would get).
    #[cfg(test)]
    pub(crate) fn take_events(&mut self) -> Vec<SourceEvent> {
        self.observed = None;
        std::mem::take(&mut self.events)
    }

    /// Sends the batch; false when the consumer is gone.
    async fn flush(&mut self, tx: &mpsc::Sender<SourceBatch>) -> bool {
        let observed = self.observed.take().unwrap_or_else(Instant::now);
        let batch = SourceBatch::new(std::mem::take(&mut self.events), observed.into_std());
        tx.send(batch).await.is_ok()
    }
}

/// What the source keeps: only the Secret cache and the Ingresses' Secret references. Every
/// other object goes straight to the consumer.
struct State {
    secrets: Secrets,
    refs: IngressRefs,
    /// Kinds whose first list is complete.
    listed: BTreeSet<SnapshotKind>,
    announced: bool,
}

impl State {
    fn new(client: Client, pinned_secrets: &[ObjectKey]) -> Self {
        Self {
            secrets: Secrets::new(client),
            refs: IngressRefs::with_pinned(pinned_secrets.iter().cloned()),
            listed: BTreeSet::new(),
            announced: false,
        }
    }

    fn handle(
        &mut self,
        watched: Watched,
        result: watcher::Result<Event<DynamicObject>>,
        out: &mut Outbox,
    ) {
        let event = match result {
            Ok(event) => event,
            Err(error) if is_gone(&error) => {
                info!(watch = %watched, "watch expired (410 Gone), relisting");
                return;
            }
            Err(error) => {
                warn!(watch = %watched, %error, "watch failed, retrying with backoff");
                return;
            }
        };
        let done = matches!(event, Event::InitDone);
        match watched {
            Watched::Kind(kind) => {
                self.forward(kind, event, out);
                if done {
                    self.listed(kind, out);
                }
            }
            // Both Secret watches feed the source's own cache, never the consumer's store
            // directly: a relist of one swaps in only its own Secrets (see `Secrets`).
            Watched::Secrets(type_) => {
                let ingresses_listed = self.listed.contains(&SnapshotKind::Ingress);
                self.secrets
                    .apply(type_, event, &self.refs, ingresses_listed, out);
                if done && self.secrets.synced() {
                    self.listed(SnapshotKind::Secret, out);
                }
            }
        }
    }

    /// Reports one watch event of a kind that is passed on as it is.
    fn forward(&mut self, kind: SnapshotKind, event: Event<DynamicObject>, out: &mut Outbox) {
        let ingress = kind == SnapshotKind::Ingress;
        let refs_changed = match event {
            Event::Init => {
                debug!(kind = kind.kind_name(), "list started");
                out.push(SourceEvent::RelistStart(kind));
                if ingress {
                    self.refs.relist_started();
                }
                false
            }
            Event::InitApply(obj) | Event::Apply(obj) => {
                let Some((key, object)) = decode_object(kind, obj) else {
                    return;
                };
                let changed = match &object {
                    Object::Ingress(ingress) => self.refs.set(&key, ingress),
                    _ => false,
                };
                out.push(SourceEvent::Apply(key, object));
                changed
            }
            Event::InitDone => {
                debug!(kind = kind.kind_name(), "list complete");
                out.push(SourceEvent::RelistDone(kind));
                if ingress {
                    self.refs.relist_done();
                    // Unreferenced Secrets can be told apart from now on.
                    self.listed.insert(kind);
                }
                ingress
            }
            Event::Delete(obj) => {
                let Some(key) = ObjectKey::of(&obj.metadata) else {
                    return;
                };
                let changed = ingress && self.refs.remove(&key);
                out.push(SourceEvent::Delete(kind, key));
                changed
            }
        };
        if refs_changed {
            let ingresses_listed = self.listed.contains(&SnapshotKind::Ingress);
            self.secrets
                .reconcile_with(&self.refs, ingresses_listed, out);
        }
    }

    /// After a kind's list: `Synced` once every kind has been listed.
    fn listed(&mut self, kind: SnapshotKind, out: &mut Outbox) {
        self.listed.insert(kind);
        if !self.announced && self.listed.len() == SnapshotKind::ALL.len() {
            self.announced = true;
            info!("initial sync with the API server complete");
            out.push(SourceEvent::Synced);
        }
    }
}

/// Decodes (and compacts) one object of a kind passed on as it is.
fn decode_object(kind: SnapshotKind, obj: DynamicObject) -> Option<(ObjectKey, Object)> {
    fn wrap<K>(
        decoded: Option<(ObjectKey, K)>,
        object: impl FnOnce(Arc<K>) -> Object,
    ) -> Option<(ObjectKey, Object)> {
        decoded.map(|(key, o)| (key, object(Arc::new(o))))
    }
    match kind {
        SnapshotKind::Service => wrap(decode::<Service>(kind, obj), Object::Service),
        // Straight into sluice's compact type, which decodes as k8s-openapi's does: the
        // endpoint fields nothing reads are never allocated for long.
        SnapshotKind::EndpointSlice => {
            wrap(decode::<EndpointSlice>(kind, obj), Object::EndpointSlice)
        }
        SnapshotKind::Node => wrap(decode::<Node>(kind, obj), Object::Node),
        SnapshotKind::Ingress => wrap(decode::<Ingress>(kind, obj), Object::Ingress),
        SnapshotKind::IngressClass => wrap(decode::<IngressClass>(kind, obj), Object::IngressClass),
        SnapshotKind::Secret => wrap(decode::<Secret>(kind, obj), Object::Secret),
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

/// Which watch an update comes from: one per kind, but one per [`SecretType`] for Secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watched {
    Kind(SnapshotKind),
    Secrets(SecretType),
}

impl std::fmt::Display for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Watched::Kind(kind) => f.write_str(kind.kind_name()),
            Watched::Secrets(type_) => write!(f, "Secret (type {})", type_.type_name()),
        }
    }
}

type Update = (Watched, watcher::Result<Event<DynamicObject>>);

/// The watches of every kind. The Secret watches start only once `ingresses_listed` says
/// the Ingresses have been listed: by then the Secrets they reference are known, so the data
/// of every other Secret is dropped as it arrives instead of being held (all of it, cluster
/// wide, on every node) until the Ingress list completes.
fn watch_streams(
    client: &Client,
    config: &K8sSourceConfig,
    ingresses_listed: watch::Receiver<bool>,
) -> SelectAll<BoxStream<'static, Update>> {
    let all = match config.initial_list {
        // Consistent paged lists: kube drops resourceVersion=0 from paged lists, because the
        // watch cache would ignore the limit and answer with everything at once.
        InitialList::Paged(page_size) => watcher::Config {
            page_size: Some(page_size.max(1)),
            ..watcher::Config::default()
        },
        // Lists from the API server's watch cache, unpaged, like client-go informers.
        InitialList::WatchCache => watcher::Config {
            page_size: None,
            ..watcher::Config::default().any_semantic()
        },
    };
    let own_node = all
        .clone()
        .fields(&format!("metadata.name={}", config.node_name));
    let secrets = SecretType::ALL.map(|type_| {
        let of_type = all.clone().fields(&format!("type={}", type_.type_name()));
        let (client, mut listed) = (client.clone(), ingresses_listed.clone());
        stream::once(async move {
            // Err: the source is stopping; the stream is dropped with it.
            let _ = listed.wait_for(|listed| *listed).await;
        })
        .flat_map(move |()| {
            kind_stream::<Secret>(&client, Watched::Secrets(type_), of_type.clone())
        })
        .boxed()
    });
    let kinds = [
        kind_stream::<Service>(client, Watched::Kind(SnapshotKind::Service), all.clone()),
        kind_stream::<EndpointSlice>(
            client,
            Watched::Kind(SnapshotKind::EndpointSlice),
            all.clone(),
        ),
        kind_stream::<Node>(client, Watched::Kind(SnapshotKind::Node), own_node),
        kind_stream::<Ingress>(client, Watched::Kind(SnapshotKind::Ingress), all.clone()),
        kind_stream::<IngressClass>(client, Watched::Kind(SnapshotKind::IngressClass), all),
    ];
    stream::select_all(kinds.into_iter().chain(secrets))
}

/// Watcher for one kind (all namespaces), read as untyped objects so that each object is
/// decoded on its own (see `store`), with kube's default backoff after errors.
fn kind_stream<K: Resource<DynamicType = ()>>(
    client: &Client,
    watched: Watched,
    config: watcher::Config,
) -> BoxStream<'static, Update> {
    let api = Api::<DynamicObject>::all_with(client.clone(), &ApiResource::erase::<K>(&()));
    restarting_watcher(api, config)
        .default_backoff()
        .map(move |result| (watched, result))
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

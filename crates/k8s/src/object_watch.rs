//! [`ObjectWatch`]: one kind of object, all of it, kept current in a background task and
//! published as a map on a `watch` channel. Used next to [`K8sSource`](crate::K8sSource) for
//! what the snapshot does not carry: `LoadBalancerIPPool`s (a custom resource that may not be
//! installed) and every Node of the cluster (the source watches only the agent's own), which
//! the LoadBalancer address announcement needs.
//!
//! Same guarantees as the source's stores, on its own stream and task:
//! * `None` until the first complete list; after that every change publishes a new map;
//! * a relist is built aside and swapped in when complete (objects deleted meanwhile go,
//!   nothing half-listed is ever published) and an identical relist publishes nothing;
//! * objects are received untyped and decoded one by one: a malformed one is logged naming
//!   it and skipped (its previous good version is kept);
//! * list/watch failures (also 404 while a CRD is not installed) are retried with kube's
//!   default backoff; the first failure of a run is logged at warn, repeats at debug, and the
//!   recovery at info. The last good map stays published meanwhile.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use sluice_model::ObjectKey;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Objects by key (cluster-scoped objects have an empty namespace).
pub type Objects<K> = BTreeMap<ObjectKey, Arc<K>>;

/// Trims an object before it is stored (e.g. a Node's image list nobody reads).
pub type Prepare<K> = fn(&mut K);

/// Watches every object of kind `K` (all namespaces) in a background task.
pub struct ObjectWatch<K> {
    rx: watch::Receiver<Option<Arc<Objects<K>>>>,
    task: JoinHandle<()>,
}

impl<K> ObjectWatch<K>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Send + Sync + 'static,
{
    /// Starts watching with `config` (selectors); `prepare` trims each decoded object.
    pub fn spawn(client: Client, config: watcher::Config, prepare: Prepare<K>) -> Self {
        let (tx, rx) = watch::channel(None);
        let api = Api::<DynamicObject>::all_with(client, &ApiResource::erase::<K>(&()));
        let task = tokio::spawn(run(api, config, prepare, tx));
        Self { rx, task }
    }

    /// The objects, `None` until the first complete list.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Objects<K>>>> {
        self.rx.clone()
    }

    pub fn current(&self) -> Option<Arc<Objects<K>>> {
        self.rx.borrow().clone()
    }
}

impl<K> Drop for ObjectWatch<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Node without the parts nobody in the agent reads (`status.images` can hold hundreds of
/// entries per node).
pub fn trim_node(node: &mut k8s_openapi::api::core::v1::Node) {
    if let Some(status) = node.status.as_mut() {
        status.images = None;
        status.volumes_attached = None;
        status.volumes_in_use = None;
    }
}

/// Stores nothing extra: keeps each object as decoded.
pub fn keep_as_is<K>(_: &mut K) {}

async fn run<K>(
    api: Api<DynamicObject>,
    config: watcher::Config,
    prepare: Prepare<K>,
    tx: watch::Sender<Option<Arc<Objects<K>>>>,
) where
    K: Resource<DynamicType = ()> + DeserializeOwned + Send + Sync + 'static,
{
    let kind = K::kind(&()).into_owned();
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut store = ObjectStore::<K>::new(prepare);
    let mut failing = false;
    loop {
        tokio::select! {
            () = tx.closed() => return,
            event = events.next() => match event {
                Some(Ok(event)) => {
                    if failing {
                        info!(%kind, "watching works again");
                        failing = false;
                    }
                    if store.apply(&kind, event) {
                        tx.send_replace(Some(Arc::new(store.live.clone())));
                    }
                }
                Some(Err(error)) if !failing => {
                    failing = true;
                    warn!(%kind, "watch failed, retrying with backoff (repeats logged at debug): {error}");
                }
                Some(Err(error)) => debug!(%kind, "watch still failing: {error}"),
                None => return,
            },
        }
    }
}

/// The live objects and a relist being built.
struct ObjectStore<K> {
    live: Objects<K>,
    relist: Option<Objects<K>>,
    synced: bool,
    prepare: Prepare<K>,
    _kind: PhantomData<K>,
}

impl<K: Resource + DeserializeOwned> ObjectStore<K> {
    fn new(prepare: Prepare<K>) -> Self {
        Self {
            live: Objects::new(),
            relist: None,
            synced: false,
            prepare,
            _kind: PhantomData,
        }
    }

    /// Applies one event; returns whether the published map must change.
    fn apply(&mut self, kind: &str, event: Event<DynamicObject>) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(Objects::new());
                false
            }
            Event::InitApply(object) => {
                if let Some((key, typed)) = self.decode(kind, object) {
                    let building = self.relist.get_or_insert_with(Objects::new);
                    building.insert(key, Arc::new(typed));
                }
                false
            }
            Event::InitDone => {
                let mut listed = self.relist.take().unwrap_or_default();
                let mut changed = !self.synced || listed.len() != self.live.len();
                for (key, object) in &mut listed {
                    match self.live.get(key) {
                        Some(old) if same_version(old.as_ref(), object.as_ref()) => {
                            *object = Arc::clone(old);
                        }
                        _ => changed = true,
                    }
                }
                debug!(%kind, objects = listed.len(), changed, "list complete");
                self.live = listed;
                self.synced = true;
                changed
            }
            Event::Apply(object) => {
                let Some((key, typed)) = self.decode(kind, object) else {
                    return false;
                };
                if self
                    .live
                    .get(&key)
                    .is_some_and(|old| same_version(old.as_ref(), &typed))
                {
                    return false;
                }
                self.live.insert(key, Arc::new(typed));
                self.synced
            }
            Event::Delete(object) => match ObjectKey::of(&object.metadata) {
                Some(key) => self.live.remove(&key).is_some() && self.synced,
                None => false,
            },
        }
    }

    fn decode(&self, kind: &str, mut object: DynamicObject) -> Option<(ObjectKey, K)> {
        let Some(key) = ObjectKey::of(&object.metadata) else {
            warn!(%kind, "object without metadata.name skipped");
            return None;
        };
        object.metadata.managed_fields = None;
        let decoded = serde_json::to_value(object).and_then(serde_json::from_value::<K>);
        match decoded {
            Ok(mut typed) => {
                (self.prepare)(&mut typed);
                Some((key, typed))
            }
            Err(error) => {
                warn!(%kind, object = %key, %error,
                    "malformed object skipped (a previous version, if any, is kept)");
                None
            }
        }
    }
}

fn same_version<K: Resource>(a: &K, b: &K) -> bool {
    let (a, b) = (a.meta(), b.meta());
    a.resource_version.is_some() && a.resource_version == b.resource_version
}

//! A small fake kube-apiserver for the watch edge cases (initial list, watch events, 410 Gone,
//! dropped connections, server down) and for status writes.
//!
//! It speaks the real REST paths and JSON shapes kube-rs uses:
//! * `GET /api/v1/services` (and `/apis/GROUP/VERSION/PLURAL`, optionally under
//!   `namespaces/NS/`): a list with `metadata.resourceVersion`, items without apiVersion/kind;
//! * `...?watch=true&resourceVersion=N`: a chunked stream of `{"type":..,"object":..}` lines
//!   with every change after N, a BOOKMARK, then live changes; a watch from before the last
//!   compaction gets `410 Gone` (an ERROR event like kube-apiserver, or an HTTP 410); a
//!   stream can be cut in the middle of an event (`truncate_watch_frames`);
//! * `GET .../NAME` and `.../NAME/status`; `PATCH .../NAME` and `.../NAME/status` (JSON merge
//!   patch); `POST` to a namespaced collection (create, 409 AlreadyExists); `PUT .../NAME`
//!   (replace). Writes that carry `metadata.resourceVersion` get 409 Conflict when it is not the
//!   stored one (optimistic concurrency, as Lease locks use it);
//! * one group of watches (a kind and field selector) can be expired alone
//!   (`expire_watches_with_fields`): they end and must relist, the others carry on;
//! * `fieldSelector` with `a.b=v` terms (`metadata.name=..`, `type=..`), `labelSelector` with
//!   `k=v` terms; `limit`/`continue` paging (a continue token can be made to expire: 410
//!   Expired, as kube-apiserver answers once the token's revision is compacted).
//!
//! Every write gets the next global resourceVersion, as in etcd. Every request is recorded
//! (with its arrival time). Faults can be injected per method and path: the next N matching
//! requests (or all of them) fail with a status code, or are answered late.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The kinds this fake serves: (apiVersion, kind, plural).
const KINDS: &[(&str, &str, &str)] = &[
    ("v1", "Service", "services"),
    ("discovery.k8s.io/v1", "EndpointSlice", "endpointslices"),
    ("v1", "Node", "nodes"),
    ("networking.k8s.io/v1", "Ingress", "ingresses"),
    ("networking.k8s.io/v1", "IngressClass", "ingressclasses"),
    ("v1", "Secret", "secrets"),
    ("coordination.k8s.io/v1", "Lease", "leases"),
    ("events.k8s.io/v1", "Event", "events"),
    // The custom resource of crates/lbipam (cluster-scoped).
    (
        "sluice.dev/v1alpha1",
        "LoadBalancerIPPool",
        "loadbalancerippools",
    ),
];

/// How a watch from an expired resourceVersion is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoneStyle {
    /// HTTP 200 with one `ERROR` event carrying a 410 Status (what kube-apiserver does).
    ErrorEvent,
    /// HTTP 410 with a Status body.
    Http410,
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    pub body: String,
    /// When the request arrived.
    pub at: std::time::Instant,
}

/// What an injected fault does to a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// Answer with this HTTP status code and a Status body (the object is not touched).
    Fail(u16),
    /// Answer normally, but only after this long.
    Delay(std::time::Duration),
}

/// A fault for requests whose method is `method` and whose path contains `path_contains`.
#[derive(Debug, Clone)]
struct Fault {
    method: String,
    path_contains: String,
    /// How many more requests it applies to; `None` = until cleared.
    remaining: Option<usize>,
    action: FaultAction,
}

pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped after every change of `state`; watch streams and held lists wait on it.
    changed: watch::Sender<u64>,
}

struct State {
    resource_version: u64,
    /// Keyed by collection path, e.g. `/api/v1/services`.
    collections: BTreeMap<String, Collection>,
    /// Watches from a resourceVersion older than this get 410 Gone.
    compacted: u64,
    /// Bumping it ends every open watch stream.
    watch_epoch: u64,
    down: bool,
    gone_style: GoneStyle,
    /// Collections whose LIST does not answer until released.
    held: BTreeSet<String>,
    /// Collections whose single-object GETs answer 403 Forbidden.
    forbidden_gets: BTreeSet<String>,
    /// The next this many watch frames (of any watch) are cut in the middle of a line and
    /// their stream ends there, as when a connection breaks mid-event.
    truncate_watch_frames: usize,
    /// How many more list requests with a `continue` token answer 410 Expired.
    expire_continues: usize,
    faults: Vec<Fault>,
    requests: Vec<Recorded>,
    /// Expired watch groups (collection, fieldSelector substring), append-only: an open watch
    /// ends when a group added after its start matches it.
    expired_watches: Vec<(String, String)>,
    /// The next watch request matching one of these answers 410 Gone (then it is removed).
    gone_next_watch: Vec<(String, String)>,
}

struct Collection {
    api_version: &'static str,
    kind: &'static str,
    /// (namespace, name) -> object.
    objects: BTreeMap<(String, String), Value>,
    /// (resourceVersion, event type, object) since the last compaction.
    events: Vec<(u64, &'static str, Value)>,
}

fn collection_path(api_version: &str, plural: &str) -> String {
    if api_version == "v1" {
        format!("/api/v1/{plural}")
    } else {
        format!("/apis/{api_version}/{plural}")
    }
}

fn kind_path(kind: &str) -> String {
    let (api_version, _, plural) = KINDS
        .iter()
        .find(|(_, k, _)| *k == kind)
        .unwrap_or_else(|| panic!("fake apiserver does not serve kind {kind}"));
    collection_path(api_version, plural)
}

impl FakeApiServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake apiserver");
        Self::start_on(listener)
    }

    /// Serves on a listener the caller bound (e.g. inside a test network namespace).
    pub fn start_on(listener: TcpListener) -> Self {
        let collections = KINDS
            .iter()
            .map(|(api_version, kind, plural)| {
                let collection = Collection {
                    api_version,
                    kind,
                    objects: BTreeMap::new(),
                    events: Vec::new(),
                };
                (collection_path(api_version, plural), collection)
            })
            .collect();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                resource_version: 100,
                collections,
                compacted: 0,
                watch_epoch: 0,
                down: false,
                gone_style: GoneStyle::ErrorEvent,
                held: BTreeSet::new(),
                forbidden_gets: BTreeSet::new(),
                truncate_watch_frames: 0,
                expire_continues: 0,
                faults: Vec::new(),
                requests: Vec::new(),
                expired_watches: Vec::new(),
                gone_next_watch: Vec::new(),
            }),
            changed: watch::channel(0).0,
        });
        let addr = listener.local_addr().expect("fake apiserver address");
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone()));
        Self {
            addr,
            shared,
            accept_task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client pointed at this fake.
    pub fn client(&self) -> kube::Client {
        let uri = self.url().parse().expect("fake apiserver url");
        kube::Client::try_from(kube::Config::new(uri)).expect("kube client for the fake")
    }

    /// Creates or replaces an object (its apiVersion/kind pick the collection).
    pub fn apply(&self, mut object: Value) {
        let kind = object["kind"]
            .as_str()
            .expect("object has a kind")
            .to_owned();
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let name = object["metadata"]["name"]
            .as_str()
            .expect("object has a name")
            .to_owned();
        self.write(|state| {
            let rv = state.next_resource_version();
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            let collection = state.collection(&kind);
            let previous = collection.objects.insert((namespace, name), object.clone());
            let event = if previous.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            };
            collection.events.push((rv, event, object));
        });
    }

    /// Deletes an object with a DELETED event.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        self.write(|state| state.delete(kind, namespace, name));
    }

    /// Deletes an object so that no open watch sees it: the event history is compacted and
    /// every watch is cut, so watchers must relist (their resourceVersion is now too old).
    pub fn delete_unseen(&self, kind: &str, namespace: &str, name: &str) {
        self.write(|state| {
            state.delete(kind, namespace, name);
            state.compact();
            state.watch_epoch += 1;
        });
    }

    /// Forgets the event history (watchers resuming from before now get 410) and cuts every
    /// open watch.
    pub fn compact_and_drop_watches(&self) {
        self.write(|state| {
            state.compact();
            state.watch_epoch += 1;
        });
    }

    /// Ends every open watch stream; the history is kept, so watchers can resume.
    pub fn drop_watches(&self) {
        self.write(|state| state.watch_epoch += 1);
    }

    /// While down, every connection is closed without an answer and open watches end.
    pub fn set_down(&self, down: bool) {
        self.write(|state| {
            state.down = down;
            state.watch_epoch += 1;
        });
    }

    pub fn set_gone_style(&self, style: GoneStyle) {
        self.write(|state| state.gone_style = style);
    }

    /// The next `frames` watch frames with events (of any open or future watch) are cut in the
    /// middle of a JSON line, and each such stream ends right after: the client sees half an
    /// event and EOF, and must resume from the last event it read whole.
    pub fn truncate_watch_frames(&self, frames: usize) {
        self.write(|state| state.truncate_watch_frames = frames);
    }

    /// Expires the watches of `kind` whose `fieldSelector` contains `fields` (e.g.
    /// `type=Opaque`), as if their resourceVersion had been compacted for them alone: open ones
    /// end, and the next such watch request answers 410 Gone, so the client relists. Watches
    /// of other kinds or selectors are not touched.
    pub fn expire_watches_with_fields(&self, kind: &str, fields: &str) {
        let group = (kind_path(kind), fields.to_owned());
        self.write(|state| {
            state.expired_watches.push(group.clone());
            state.gone_next_watch.push(group);
        });
    }

    /// While held, LIST requests of this kind do not answer.
    pub fn hold_list(&self, kind: &str, hold: bool) {
        let path = kind_path(kind);
        self.write(|state| {
            if hold {
                state.held.insert(path);
            } else {
                state.held.remove(&path);
            }
        });
    }

    /// While set, GETs of single objects of this kind answer 403 Forbidden.
    pub fn forbid_get(&self, kind: &str, forbid: bool) {
        let path = kind_path(kind);
        self.write(|state| {
            if forbid {
                state.forbidden_gets.insert(path);
            } else {
                state.forbidden_gets.remove(&path);
            }
        });
    }

    /// The next `times` list requests that carry a `continue` token answer 410 Expired (the
    /// token's revision was compacted): the client must start its list over.
    pub fn expire_continue_tokens(&self, times: usize) {
        self.write(|state| state.expire_continues = times);
    }

    /// The next `times` requests with this method whose path contains `path_contains` are
    /// answered with HTTP `code` (e.g. 500, 409, 403) without touching any object.
    pub fn fail_requests(&self, method: &str, path_contains: &str, times: usize, code: u16) {
        if times == 0 {
            return;
        }
        self.add_fault(method, path_contains, Some(times), FaultAction::Fail(code));
    }

    /// Every request with this method whose path contains `path_contains` is answered with
    /// HTTP `code` until [`clear_faults`](Self::clear_faults).
    pub fn fail_requests_always(&self, method: &str, path_contains: &str, code: u16) {
        self.add_fault(method, path_contains, None, FaultAction::Fail(code));
    }

    /// Every matching request is answered `delay` late until [`clear_faults`](Self::clear_faults).
    pub fn delay_requests(&self, method: &str, path_contains: &str, delay: std::time::Duration) {
        self.add_fault(method, path_contains, None, FaultAction::Delay(delay));
    }

    pub fn clear_faults(&self) {
        self.write(|state| state.faults.clear());
    }

    fn add_fault(
        &self,
        method: &str,
        path_contains: &str,
        remaining: Option<usize>,
        action: FaultAction,
    ) {
        let fault = Fault {
            method: method.to_owned(),
            path_contains: path_contains.to_owned(),
            remaining,
            action,
        };
        self.write(|state| state.faults.push(fault));
    }

    /// Objects of one kind (in one namespace, or all with `None`), in name order.
    pub fn objects(&self, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let mut state = self.lock();
        state
            .collection(kind)
            .objects
            .iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|wanted| ns == wanted))
            .map(|(_, object)| object.clone())
            .collect()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    pub fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let mut state = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        state.collection(kind).objects.get(&key).cloned()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    fn write(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.lock());
        self.shared.notify();
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.write(|state| {
            state.down = true;
            state.watch_epoch += 1;
        });
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the real failure behind a poison error.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

impl State {
    fn next_resource_version(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    fn collection(&mut self, kind: &str) -> &mut Collection {
        let path = kind_path(kind);
        self.collections.get_mut(&path).expect("collection exists")
    }

    fn delete(&mut self, kind: &str, namespace: &str, name: &str) {
        let rv = self.next_resource_version();
        let collection = self.collection(kind);
        let key = (namespace.to_owned(), name.to_owned());
        let mut object = collection
            .objects
            .remove(&key)
            .unwrap_or_else(|| panic!("fake apiserver: no {kind} {namespace}/{name} to delete"));
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        collection.events.push((rv, "DELETED", object));
    }

    /// The action of the first fault matching this request (using up one of its count).
    fn take_fault(&mut self, method: &str, path: &str) -> Option<FaultAction> {
        let index = self
            .faults
            .iter()
            .position(|f| f.method == method && path.contains(&f.path_contains))?;
        let fault = &mut self.faults[index];
        let action = fault.action;
        if let Some(remaining) = &mut fault.remaining {
            *remaining -= 1;
            if *remaining == 0 {
                self.faults.remove(index);
            }
        }
        Some(action)
    }

    fn compact(&mut self) {
        for collection in self.collections.values_mut() {
            collection.events.clear();
        }
        self.compacted = self.resource_version;
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if shared.lock().down {
            drop(stream);
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(shared.clone(), request));
            // Errors here are connections we cut on purpose (down) or the client hanging up.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A parsed request path.
struct Route {
    collection: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn route(path: &str) -> Option<Route> {
    let (base, rest) = if let Some(rest) = path.strip_prefix("/api/v1/") {
        ("/api/v1".to_owned(), rest)
    } else {
        let mut parts = path.strip_prefix("/apis/")?.splitn(3, '/');
        let (group, version, rest) = (parts.next()?, parts.next()?, parts.next()?);
        (format!("/apis/{group}/{version}"), rest)
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let (namespace, segments) = match segments.as_slice() {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => {
            (Some((*namespace).to_owned()), rest.to_vec())
        }
        _ => (None, segments),
    };
    let (plural, name, status) = match segments.as_slice() {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some((*name).to_owned()), false),
        [plural, name, "status"] => (*plural, Some((*name).to_owned()), true),
        _ => return None,
    };
    Some(Route {
        collection: format!("{base}/{plural}"),
        namespace,
        name,
        status,
    })
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let content_type = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = request
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    {
        let mut state = shared.lock();
        if state.down {
            // Returning an error makes hyper close the connection without answering.
            return Err(std::io::Error::other("fake apiserver is down"));
        }
        state.requests.push(Recorded {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            content_type,
            body: body.clone(),
            at: std::time::Instant::now(),
        });
    }
    let fault = shared.lock().take_fault(method.as_str(), &path);
    match fault {
        Some(FaultAction::Fail(code)) => return Ok(injected_failure(code)),
        Some(FaultAction::Delay(delay)) => tokio::time::sleep(delay).await,
        None => {}
    }
    let params = parse_query(&query);
    let Some(route) = route(&path) else {
        return Ok(status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no route {path}"),
        ));
    };
    if !shared.lock().collections.contains_key(&route.collection) {
        return Ok(status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no resource {path}"),
        ));
    }
    let response = match (&method, &route.name) {
        (&Method::GET, None)
            if matches!(params.get("watch").map(String::as_str), Some("true" | "1")) =>
        {
            watch(shared, route, &params)
        }
        (&Method::GET, None) => list(shared, route, &params).await,
        (&Method::GET, Some(_)) => get(&shared, &route),
        (&Method::PATCH, Some(_)) => patch(&shared, &route, &body),
        (&Method::POST, None) if route.namespace.is_some() => create(&shared, &route, &body),
        (&Method::PUT, Some(_)) if !route.status => replace(&shared, &route, &body),
        _ => status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "not supported by the fake",
        ),
    };
    Ok(response)
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Namespace and field-selector filter of a list or watch.
#[derive(Clone)]
struct Filter {
    namespace: Option<String>,
    fields: Vec<(String, String)>,
    labels: Vec<(String, String)>,
}

impl Filter {
    fn new(route: &Route, params: &BTreeMap<String, String>) -> Self {
        let terms = |name: &str| -> Vec<(String, String)> {
            params
                .get(name)
                .map(|selector| {
                    selector
                        .split(',')
                        .filter_map(|term| term.split_once('='))
                        .map(|(path, value)| {
                            (path.to_owned(), value.trim_start_matches('=').to_owned())
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        Self {
            namespace: route.namespace.clone(),
            fields: terms("fieldSelector"),
            labels: terms("labelSelector"),
        }
    }

    fn matches(&self, object: &Value) -> bool {
        let namespace_ok = self
            .namespace
            .as_deref()
            .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns));
        let labels_ok = self.labels.iter().all(|(label, value)| {
            object["metadata"]["labels"][label.as_str()].as_str() == Some(value.as_str())
        });
        namespace_ok
            && labels_ok
            && self.fields.iter().all(|(path, value)| {
                let field = path.split('.').fold(object, |v, part| &v[part]);
                field.as_str().unwrap_or("") == value
            })
    }
}

async fn list(
    shared: Arc<Shared>,
    route: Route,
    params: &BTreeMap<String, String>,
) -> Response<Body> {
    let mut changed = shared.changed.subscribe();
    loop {
        changed.borrow_and_update();
        if !shared.lock().held.contains(&route.collection) {
            break;
        }
        if changed.changed().await.is_err() {
            break;
        }
    }
    if params.contains_key("continue") && params.contains_key("resourceVersion") {
        // As kube-apiserver's validation does.
        let message = "specifying resource version is not allowed when using continue";
        return status_response(StatusCode::BAD_REQUEST, "BadRequest", message);
    }
    if params.contains_key("continue") {
        let mut state = shared.lock();
        if state.expire_continues > 0 {
            state.expire_continues -= 1;
            let message = "The provided continue parameter is too old to display a consistent \
                           list result. You can start a new list without the continue parameter.";
            return status_response(StatusCode::GONE, "Expired", message);
        }
    }
    let filter = Filter::new(&route, params);
    // Pages: `limit` objects each, the `continue` token is the offset of the next page.
    let offset: usize = params
        .get("continue")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let limit: usize = params
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(usize::MAX);
    let state = shared.lock();
    let collection = &state.collections[&route.collection];
    let matching: Vec<&Value> = collection
        .objects
        .values()
        .filter(|object| filter.matches(object))
        .collect();
    let next = offset.saturating_add(limit);
    let mut metadata = json!({"resourceVersion": state.resource_version.to_string()});
    if next < matching.len() {
        metadata["continue"] = json!(next.to_string());
    }
    let items: Vec<Value> = matching
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|object| {
            // kube-apiserver leaves apiVersion/kind out of list items.
            let mut item = object.clone();
            if let Some(map) = item.as_object_mut() {
                map.remove("apiVersion");
                map.remove("kind");
            }
            item
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "apiVersion": collection.api_version,
            "kind": format!("{}List", collection.kind),
            "metadata": metadata,
            "items": items,
        }),
    )
}

/// What a watch is, for expiring some watches alone: its collection and field selector.
#[derive(Clone)]
struct WatchGroup {
    collection: String,
    fields: String,
}

impl WatchGroup {
    /// Whether this watch belongs to an expired group (collection, fieldSelector substring).
    fn is_in(&self, (collection, fields): &(String, String)) -> bool {
        self.collection == *collection && self.fields.contains(fields.as_str())
    }
}

fn watch(shared: Arc<Shared>, route: Route, params: &BTreeMap<String, String>) -> Response<Body> {
    let since: u64 = params
        .get("resourceVersion")
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0);
    let bookmarks = params
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let group = WatchGroup {
        collection: route.collection.clone(),
        fields: params.get("fieldSelector").cloned().unwrap_or_default(),
    };
    let (epoch, gone_style, compacted, expired_before, gone) = {
        let mut state = shared.lock();
        let gone = state.gone_next_watch.iter().position(|g| group.is_in(g));
        if let Some(index) = gone {
            state.gone_next_watch.remove(index);
        }
        let expired_before = state.expired_watches.len();
        (
            state.watch_epoch,
            state.gone_style,
            state.compacted,
            expired_before,
            gone.is_some(),
        )
    };
    if since < compacted || gone {
        let message = format!("too old resource version: {since} ({compacted})");
        return match gone_style {
            GoneStyle::Http410 => status_response(StatusCode::GONE, "Expired", &message),
            GoneStyle::ErrorEvent => {
                let event =
                    json!({"type": "ERROR", "object": status_body(410, "Expired", &message)});
                let line = format!("{event}\n");
                stream_response(Full::new(Bytes::from(line)).boxed())
            }
        };
    }
    let filter = Filter::new(&route, params);
    let collection = route.collection;
    let changed = shared.changed.subscribe();
    let stream = futures::stream::unfold(
        (shared, changed, since, bookmarks, false),
        move |(shared, mut changed, mut last, mut bookmark_due, cut)| {
            let (collection, filter, group) = (collection.clone(), filter.clone(), group.clone());
            async move {
                if cut {
                    return None;
                }
                loop {
                    changed.borrow_and_update();
                    {
                        let mut state = shared.lock();
                        let expired = state.expired_watches[expired_before..]
                            .iter()
                            .any(|g| group.is_in(g));
                        if state.watch_epoch != epoch || state.down || expired {
                            return None;
                        }
                        let mut lines = String::new();
                        let coll = &state.collections[&collection];
                        for (rv, kind, object) in &coll.events {
                            if *rv > last && filter.matches(object) {
                                lines
                                    .push_str(&json!({"type": kind, "object": object}).to_string());
                                lines.push('\n');
                            }
                        }
                        last = last.max(state.resource_version);
                        if bookmark_due {
                            bookmark_due = false;
                            let mark = json!({"type": "BOOKMARK", "object": {
                                "apiVersion": coll.api_version, "kind": coll.kind,
                                "metadata": {"resourceVersion": last.to_string()}}});
                            lines.push_str(&format!("{mark}\n"));
                        }
                        if !lines.is_empty() {
                            let cut = lines.len() > 1 && state.truncate_watch_frames > 0;
                            if cut {
                                state.truncate_watch_frames -= 1;
                                // Half of the first line, no newline; nothing was read whole.
                                let first = lines.find('\n').unwrap_or(lines.len());
                                lines.truncate(first / 2);
                            }
                            let frame = Frame::data(Bytes::from(lines));
                            return Some((
                                Ok::<_, Infallible>(frame),
                                (shared.clone(), changed, last, bookmark_due, cut),
                            ));
                        }
                    }
                    if changed.changed().await.is_err() {
                        return None;
                    }
                }
            }
        },
    );
    stream_response(BodyExt::boxed(StreamBody::new(stream)))
}

fn get(shared: &Shared, route: &Route) -> Response<Body> {
    let state = shared.lock();
    if state.forbidden_gets.contains(&route.collection) {
        return status_response(StatusCode::FORBIDDEN, "Forbidden", "get is forbidden");
    }
    let key = (
        route.namespace.clone().unwrap_or_default(),
        route.name.clone().unwrap_or_default(),
    );
    match state.collections[&route.collection].objects.get(&key) {
        Some(object) => json_response(StatusCode::OK, object),
        None => status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{} not found", key.1),
        ),
    }
}

/// `PATCH .../NAME` (the whole object) or `.../NAME/status` (only its status), JSON merge
/// patch; a `metadata.resourceVersion` in the patch is a precondition (409 when stale).
fn patch(shared: &Shared, route: &Route, body: &str) -> Response<Body> {
    let Ok(patch) = serde_json::from_str::<Value>(body) else {
        return status_response(StatusCode::BAD_REQUEST, "BadRequest", "patch is not JSON");
    };
    let status_only = route.status;
    write_object(shared, route, |object| {
        if let Some(conflict) = stale(object, &patch) {
            return Err(conflict);
        }
        if status_only {
            // The status subresource only takes the status part of the patch.
            merge_patch(&mut object["status"], &patch["status"]);
        } else {
            let mut patch = patch.clone();
            if let Some(metadata) = patch["metadata"].as_object_mut() {
                metadata.remove("resourceVersion");
            }
            merge_patch(object, &patch);
        }
        Ok(())
    })
}

/// `PUT .../NAME`: replaces the object; its `metadata.resourceVersion`, if given, must be the
/// stored one.
fn replace(shared: &Shared, route: &Route, body: &str) -> Response<Body> {
    let Ok(new_object) = serde_json::from_str::<Value>(body) else {
        return status_response(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON");
    };
    write_object(shared, route, |object| {
        if let Some(conflict) = stale(object, &new_object) {
            return Err(conflict);
        }
        let kept_metadata = object["metadata"].clone();
        *object = new_object.clone();
        for field in ["uid", "creationTimestamp", "namespace", "name"] {
            object["metadata"][field] = kept_metadata[field].clone();
        }
        Ok(())
    })
}

/// Why a write was refused: a Status answer.
struct Refusal {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

/// 409 Conflict when `request` names a resourceVersion other than `stored`'s.
fn stale(stored: &Value, request: &Value) -> Option<Refusal> {
    let wanted = request["metadata"]["resourceVersion"].as_str()?;
    let current = stored["metadata"]["resourceVersion"].as_str().unwrap_or("");
    (wanted != current).then(|| Refusal {
        code: StatusCode::CONFLICT,
        reason: "Conflict",
        message: format!(
            "Operation cannot be fulfilled: the object has been modified; please apply your \
             changes to the latest version and try again (have {current}, got {wanted})"
        ),
    })
}

/// Applies `change` to the stored object (404 if there is none), gives it the next
/// resourceVersion and records a MODIFIED event. `change` may refuse the write.
fn write_object(
    shared: &Shared,
    route: &Route,
    change: impl FnOnce(&mut Value) -> Result<(), Refusal>,
) -> Response<Body> {
    let key = (
        route.namespace.clone().unwrap_or_default(),
        route.name.clone().unwrap_or_default(),
    );
    let mut state = shared.lock();
    let rv = state.resource_version + 1;
    let collection = state
        .collections
        .get_mut(&route.collection)
        .expect("checked");
    let Some(object) = collection.objects.get_mut(&key) else {
        return status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{} not found", key.1),
        );
    };
    let mut changed = object.clone();
    if let Err(refused) = change(&mut changed) {
        return status_response(refused.code, refused.reason, &refused.message);
    }
    changed["metadata"]["resourceVersion"] = json!(rv.to_string());
    *object = changed.clone();
    collection.events.push((rv, "MODIFIED", changed.clone()));
    state.resource_version = rv;
    drop(state);
    shared.notify();
    json_response(StatusCode::OK, &changed)
}

/// `POST` to a namespaced collection: creates the object (409 AlreadyExists if its name is
/// taken), with a uid, the next resourceVersion and an ADDED event.
fn create(shared: &Shared, route: &Route, body: &str) -> Response<Body> {
    let Ok(mut object) = serde_json::from_str::<Value>(body) else {
        return status_response(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON");
    };
    let namespace = route.namespace.clone().unwrap_or_default();
    let Some(name) = object["metadata"]["name"].as_str().map(str::to_owned) else {
        return status_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "name is required",
        );
    };
    let mut state = shared.lock();
    let rv = state.resource_version + 1;
    let collection = state
        .collections
        .get_mut(&route.collection)
        .expect("checked");
    let key = (namespace.clone(), name.clone());
    if collection.objects.contains_key(&key) {
        let message = format!("{} \"{name}\" already exists", collection.kind);
        return status_response(StatusCode::CONFLICT, "AlreadyExists", &message);
    }
    object["apiVersion"] = json!(collection.api_version);
    object["kind"] = json!(collection.kind);
    object["metadata"]["namespace"] = json!(namespace);
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    object["metadata"]["uid"] = json!(format!("uid-{rv}"));
    collection.objects.insert(key, object.clone());
    collection.events.push((rv, "ADDED", object.clone()));
    state.resource_version = rv;
    drop(state);
    shared.notify();
    json_response(StatusCode::CREATED, &object)
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let target = target.as_object_mut().expect("made an object");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn injected_failure(code: u16) -> Response<Body> {
    let reason = match code {
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        _ => "InternalError",
    };
    let code = StatusCode::from_u16(code).expect("valid injected status code");
    status_response(code, reason, "injected failure")
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn status_response(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(code, &status_body(code.as_u16(), reason, message))
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("valid response")
}

fn stream_response(body: Body) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("valid response")
}

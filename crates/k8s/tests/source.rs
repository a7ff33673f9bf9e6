//! `K8sSource` against the fake API server: what ends up in a consumer's store, and which
//! changes it is told about.

mod fake_apiserver;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_apiserver::{FakeApiServer, GoneStyle};
use serde_json::{Value, json};
use sluice_k8s::{InitialList, K8sError, K8sSource, K8sSourceConfig, SECRET_FETCH_GRACE};
use sluice_model::{ChangeSet, ObjectKey, Snapshot, SourceBatch, Store};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The consumer's view: its store's snapshot after each batch, once synced.
type Rx = watch::Receiver<Option<Arc<Snapshot>>>;
/// The change sets the consumer took, one per batch that changed something.
type Changes = Arc<Mutex<Vec<ChangeSet>>>;

const WAIT: Duration = Duration::from_secs(30);

fn service(name: &str, port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"namespace": "default", "name": name},
           "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}})
}

fn endpoint_slice(name: &str, service: &str, ip: &str) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"namespace": "default", "name": name,
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4",
           "endpoints": [{"addresses": [ip], "conditions": {"ready": true}, "nodeName": "node-a"}],
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]}})
}

fn ingress(name: &str, tls_secrets: &[&str]) -> Value {
    let tls: Vec<Value> = tls_secrets
        .iter()
        .map(|s| json!({"hosts": ["web.example"], "secretName": s}))
        .collect();
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
           "metadata": {"namespace": "default", "name": name},
           "spec": {"ingressClassName": "sluice", "tls": tls,
                    "rules": [{"host": "web.example", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                        "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}})
}

fn ingress_class(name: &str) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
           "metadata": {"name": name}, "spec": {"controller": "sluice.dev/ingress"}})
}

/// An Ingress without `tls` and with these `nginx.ingress.kubernetes.io/` annotations.
fn annotated_ingress(name: &str, annotations: &[(&str, &str)]) -> Value {
    let mut ingress = ingress(name, &[]);
    for (annotation, value) in annotations {
        let annotation = format!("nginx.ingress.kubernetes.io/{annotation}");
        ingress["metadata"]["annotations"][annotation] = json!(value);
    }
    ingress
}

/// A Secret of any type with these `data` entries (values: base64).
fn secret_with(namespace: &str, name: &str, type_: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"namespace": namespace, "name": name}, "type": type_, "data": data})
}

/// `cert_b64`: base64 of the certificate bytes.
fn secret(name: &str, type_: &str, cert_b64: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"namespace": "default", "name": name},
           "type": type_, "data": {"tls.crt": cert_b64, "tls.key": "a2V5"}})
}

const CERT_1: &str = "Y2VydC0x"; // "cert-1"
const CERT_2: &str = "Y2VydC0y"; // "cert-2"
const CERT_3: &str = "Y2VydC0z"; // "cert-3"

/// A small cluster: one Service with its slice, two Nodes, one Ingress with its class and
/// TLS Secret, plus Secrets (TLS and Opaque) that no Ingress references.
fn populate(fake: &FakeApiServer) {
    fake.apply(service("web", 80));
    fake.apply(endpoint_slice("web-abc", "web", "10.244.0.5"));
    fake.apply(node("node-a"));
    fake.apply(node("node-b"));
    fake.apply(ingress("web", &["tls-web"]));
    fake.apply(ingress_class("sluice"));
    fake.apply(secret("tls-web", "kubernetes.io/tls", CERT_1));
    fake.apply(secret("tls-other", "kubernetes.io/tls", CERT_2));
    fake.apply(secret("opaque", "Opaque", CERT_1));
}

fn start(fake: &FakeApiServer) -> (Rx, JoinHandle<Result<(), K8sError>>) {
    let (rx, _, task) = start_with(fake, InitialList::Paged(500));
    (rx, task)
}

/// Runs the source into a consumer like the agent's: a [`Store`] fed by the batches. The
/// consumer publishes a copy of the store's snapshot after every batch once synced (a test
/// convenience: the agent reads its store in place), and stops when every `Rx` is gone.
fn start_with(
    fake: &FakeApiServer,
    initial_list: InitialList,
) -> (Rx, Changes, JoinHandle<Result<(), K8sError>>) {
    let (batch_tx, mut batch_rx) = mpsc::channel::<SourceBatch>(16);
    let (tx, rx) = watch::channel(None);
    let changes: Changes = Arc::default();
    let recorded = changes.clone();
    tokio::spawn(async move {
        let mut store = Store::new();
        loop {
            let batch = tokio::select! {
                () = tx.closed() => return,
                batch = batch_rx.recv() => batch,
            };
            let Some(batch) = batch else { return };
            store.apply_all(batch.events);
            if store.is_synced() && store.has_changes() {
                recorded.lock().unwrap().push(store.take_changes());
                tx.send_replace(Some(Arc::new(store.snapshot().clone())));
            }
        }
    });
    let config = K8sSourceConfig {
        initial_list,
        ..K8sSourceConfig::new("node-a")
    };
    let source = K8sSource::new(fake.client(), config);
    (rx, changes, tokio::spawn(source.run(batch_tx)))
}

/// The keys of one kind each recorded change set names, after the first ("everything").
fn changed_keys(changes: &Changes, pick: fn(&ChangeSet) -> Vec<String>) -> Vec<Vec<String>> {
    let changes = changes.lock().unwrap();
    assert!(changes.first().is_some_and(|c| c.everything));
    changes.iter().skip(1).map(pick).collect()
}

fn services_of(changes: &ChangeSet) -> Vec<String> {
    changes.services.iter().map(ToString::to_string).collect()
}

fn keys<V>(map: &std::collections::BTreeMap<ObjectKey, V>) -> Vec<String> {
    map.keys().map(ToString::to_string).collect()
}

fn port_of(snapshot: &Snapshot, name: &str) -> Option<i32> {
    let service = snapshot.services.get(&ObjectKey::new("default", name))?;
    Some(service.spec.as_ref()?.ports.as_ref()?.first()?.port)
}

fn cert_of(snapshot: &Snapshot, name: &str) -> Option<Vec<u8>> {
    let secret = snapshot.secrets.get(&ObjectKey::new("default", name))?;
    Some(secret.data.as_ref()?.get("tls.crt")?.0.clone())
}

/// Waits until a published snapshot satisfies `pred`.
async fn wait_for(rx: &mut Rx, what: &str, pred: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let current = rx.borrow_and_update().clone();
            if let Some(snapshot) = current
                && pred(&snapshot)
            {
                return snapshot;
            }
            rx.changed().await.expect("source stopped");
        }
    })
    .await;
    match found {
        Ok(snapshot) => snapshot,
        Err(_) => {
            let last = rx.borrow().as_ref().map(|s| keys(&s.services));
            panic!("timed out waiting for: {what}; last snapshot's services: {last:?}")
        }
    }
}

/// Records the Service keys of every snapshot published from now on.
fn record_services(rx: &Rx) -> Arc<Mutex<Vec<Vec<String>>>> {
    record(rx, |s| keys(&s.services))
}

/// Records `pick` of every snapshot published from now on.
fn record(rx: &Rx, pick: fn(&Snapshot) -> Vec<String>) -> Arc<Mutex<Vec<Vec<String>>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (mut rx, out) = (rx.clone(), seen.clone());
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let picked = rx.borrow_and_update().as_deref().map(pick);
            if let Some(picked) = picked {
                out.lock().expect("recorder").push(picked);
            }
        }
    });
    seen
}

fn count_requests(fake: &FakeApiServer, path: &str, watch: bool) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == path && r.query.contains("watch=true") == watch)
        .count()
}

/// Waits until every path in `paths` has been requested (watches when `watch`, else lists).
async fn wait_for_requests(fake: &FakeApiServer, paths: &[&str], watch: bool, what: &str) {
    tokio::time::timeout(WAIT, async {
        while !paths.iter().all(|p| count_requests(fake, p, watch) > 0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out: {what}"));
}

/// The Secret watches start once the Ingresses are listed, so the Secrets no Ingress
/// references are never held with their data, not even while the agent starts.
#[tokio::test]
async fn secrets_are_listed_only_after_the_ingresses() {
    let fake = FakeApiServer::start().await;
    populate(&fake);
    fake.hold_list("Ingress", true);
    let (mut rx, _task) = start(&fake);

    let lists = [
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/api/v1/nodes",
        "/apis/networking.k8s.io/v1/ingressclasses",
        "/apis/networking.k8s.io/v1/ingresses",
    ];
    wait_for_requests(&fake, &lists, false, "every other kind is listed").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let secrets = |watch| count_requests(&fake, "/api/v1/secrets", watch);
    assert_eq!(
        (secrets(false), secrets(true)),
        (0, 0),
        "Secrets requested before the Ingresses were listed"
    );

    fake.hold_list("Ingress", false);
    let snapshot = wait_for(&mut rx, "first snapshot", |_| true).await;
    assert_eq!(keys(&snapshot.secrets), ["default/tls-web"]);
    assert_eq!(secrets(false), 2, "one list per Secret type");
}

#[tokio::test]
async fn initial_snapshot_waits_for_every_list() {
    let fake = FakeApiServer::start().await;
    populate(&fake);
    fake.hold_list("IngressClass", true);
    let (mut rx, _task) = start(&fake);

    // Every other list is answered; the held one keeps the snapshot back.
    let lists = [
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/api/v1/nodes",
        "/apis/networking.k8s.io/v1/ingresses",
        "/api/v1/secrets",
    ];
    wait_for_requests(
        &fake,
        &lists,
        true,
        "the other kinds are listed and watched",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        rx.borrow().is_none(),
        "published before the IngressClass list finished"
    );

    fake.hold_list("IngressClass", false);
    let snapshot = wait_for(&mut rx, "first snapshot", |_| true).await;
    assert_eq!(keys(&snapshot.services), ["default/web"]);
    assert_eq!(port_of(&snapshot, "web"), Some(80));
    assert_eq!(keys(&snapshot.endpoint_slices), ["default/web-abc"]);
    assert_eq!(
        keys(&snapshot.nodes),
        ["node-a"],
        "only the own Node is watched"
    );
    assert_eq!(keys(&snapshot.ingresses), ["default/web"]);
    assert_eq!(keys(&snapshot.ingress_classes), ["sluice"]);
    assert_eq!(keys(&snapshot.secrets), ["default/tls-web"]);
    assert_eq!(
        cert_of(&snapshot, "tls-web").as_deref(),
        Some(&b"cert-1"[..])
    );
    assert_eq!(
        snapshot.slices_by_service()[&ObjectKey::new("default", "web")].len(),
        1
    );

    let requests = fake.requests();
    let service_list = requests
        .iter()
        .find(|r| r.path == "/api/v1/services")
        .expect("list");
    // Paged, consistent: kube-rs sends no resourceVersion=0 with a limit.
    assert!(
        service_list.query.contains("limit=500") && !service_list.query.contains("resourceVersion"),
        "{service_list:?}"
    );
    let node_list = requests
        .iter()
        .find(|r| r.path == "/api/v1/nodes")
        .expect("node list");
    assert!(
        node_list
            .query
            .contains("fieldSelector=metadata.name%3Dnode-a"),
        "{node_list:?}"
    );
    // Two Secret watches: kubernetes.io/tls and Opaque, nothing else.
    let mut secret_selectors: Vec<&str> = requests
        .iter()
        .filter(|r| r.path == "/api/v1/secrets" && !r.query.contains("watch="))
        .filter_map(|r| r.query.split('&').find(|p| p.starts_with("fieldSelector=")))
        .collect();
    secret_selectors.sort();
    assert_eq!(
        secret_selectors,
        [
            "fieldSelector=type%3DOpaque",
            "fieldSelector=type%3Dkubernetes.io%2Ftls"
        ]
    );
}

#[tokio::test]
async fn watch_events_show_up_in_the_next_snapshot() {
    let fake = FakeApiServer::start().await;
    populate(&fake);
    let (mut rx, _task) = start(&fake);
    wait_for(&mut rx, "first snapshot", |_| true).await;

    fake.apply(service("api", 8443));
    let snapshot = wait_for(&mut rx, "added Service", |s| port_of(s, "api").is_some()).await;
    assert_eq!(keys(&snapshot.services), ["default/api", "default/web"]);
    assert_eq!(port_of(&snapshot, "api"), Some(8443));

    fake.apply(service("web", 8080));
    wait_for(&mut rx, "modified Service", |s| {
        port_of(s, "web") == Some(8080)
    })
    .await;

    fake.delete("EndpointSlice", "default", "web-abc");
    let snapshot = wait_for(&mut rx, "deleted slice", |s| s.endpoint_slices.is_empty()).await;
    assert_eq!(keys(&snapshot.services), ["default/api", "default/web"]);

    // A change to another Node is not watched at all.
    fake.apply(node("node-c"));
    fake.apply(ingress_class("other"));
    let snapshot = wait_for(&mut rx, "new IngressClass", |s| {
        s.ingress_classes.len() == 2
    })
    .await;
    assert_eq!(keys(&snapshot.nodes), ["node-a"]);
}

async fn relist_after_gone(style: GoneStyle) {
    let fake = FakeApiServer::start().await;
    fake.set_gone_style(style);
    populate(&fake);
    fake.apply(service("old", 81));
    let (mut rx, changes, _task) = start_with(&fake, InitialList::Paged(500));
    wait_for(&mut rx, "first snapshot", |s| s.services.len() == 2).await;
    let seen = record_services(&rx);
    assert_eq!(count_requests(&fake, "/api/v1/services", false), 1);

    // "old" is deleted while the watch is cut and history compacted: the watcher's
    // resourceVersion is too old, so it must relist to notice.
    fake.delete_unseen("Service", "default", "old");
    fake.apply(service("new", 82));
    let snapshot = wait_for(&mut rx, "relisted Services", |s| {
        port_of(s, "new").is_some() && port_of(s, "old").is_none()
    })
    .await;
    assert_eq!(keys(&snapshot.services), ["default/new", "default/web"]);
    assert_eq!(keys(&snapshot.endpoint_slices), ["default/web-abc"]);
    assert_eq!(keys(&snapshot.secrets), ["default/tls-web"]);
    assert!(
        count_requests(&fake, "/api/v1/services", false) >= 2,
        "no relist happened"
    );
    for services in seen.lock().expect("recorder").iter() {
        assert!(
            services.contains(&"default/web".to_owned()),
            "flicker: {services:?}"
        );
    }
    // Every kind relisted (all watches were cut), but only what differs is a change.
    let mut services: Vec<String> = changed_keys(&changes, services_of).concat();
    services.sort();
    assert_eq!(services, ["default/new", "default/old"]);
    let changes = changes.lock().unwrap();
    for other in changes.iter().skip(1) {
        assert_eq!(
            other.len(),
            other.services.len(),
            "only Services: {other:?}"
        );
    }
}

#[tokio::test]
async fn gone_error_event_relists_and_drops_objects_deleted_meanwhile() {
    relist_after_gone(GoneStyle::ErrorEvent).await;
}

#[tokio::test]
async fn http_410_on_watch_relists_and_drops_objects_deleted_meanwhile() {
    relist_after_gone(GoneStyle::Http410).await;
}

#[tokio::test]
async fn dropped_watch_resumes_from_its_resource_version() {
    let fake = FakeApiServer::start().await;
    populate(&fake);
    let (mut rx, _task) = start(&fake);
    wait_for(&mut rx, "first snapshot", |_| true).await;
    // The first watch opens right after the list is reported.
    wait_for_requests(
        &fake,
        &["/api/v1/services"],
        true,
        "the Services watch opens",
    )
    .await;

    fake.drop_watches();
    fake.apply(service("web", 9090));
    wait_for(&mut rx, "change made while disconnected", |s| {
        port_of(s, "web") == Some(9090)
    })
    .await;
    // Resumed from the last resourceVersion: no second list was needed.
    assert_eq!(count_requests(&fake, "/api/v1/services", false), 1);
    assert!(count_requests(&fake, "/api/v1/services", true) >= 2);
}

#[tokio::test]
async fn server_down_keeps_the_last_snapshot_and_recovers() {
    let fake = FakeApiServer::start().await;
    populate(&fake);
    fake.apply(service("old", 81));
    let (mut rx, _task) = start(&fake);
    let good = wait_for(&mut rx, "first snapshot", |s| s.services.len() == 2).await;
    let seen = record_services(&rx);

    fake.set_down(true);
    fake.delete_unseen("Service", "default", "old");
    fake.apply(service("new", 82));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = rx.borrow().clone().expect("snapshot stays published");
    assert_eq!(
        keys(&during.services),
        keys(&good.services),
        "state changed while down"
    );
    assert_eq!(keys(&during.secrets), ["default/tls-web"]);

    fake.set_down(false);
    let snapshot = wait_for(&mut rx, "recovered state", |s| {
        port_of(s, "new").is_some() && port_of(s, "old").is_none()
    })
    .await;
    assert_eq!(keys(&snapshot.services), ["default/new", "default/web"]);
    assert_eq!(keys(&snapshot.nodes), ["node-a"]);
    for services in seen.lock().expect("recorder").iter() {
        assert!(
            services.contains(&"default/web".to_owned()),
            "emptied state published: {services:?}"
        );
    }
}

#[tokio::test]
async fn only_tls_secrets_referenced_by_an_ingress_are_published() {
    let fake = FakeApiServer::start().await;
    populate(&fake);
    let (mut rx, _task) = start(&fake);
    let snapshot = wait_for(&mut rx, "first snapshot", |_| true).await;
    // "tls-other" and "opaque" are not referenced.
    assert_eq!(keys(&snapshot.secrets), ["default/tls-web"]);

    let fetch_path = "/api/v1/namespaces/default/secrets/tls-other";
    assert_eq!(count_requests(&fake, fetch_path, false), 0);
    fake.apply(ingress("shop", &["tls-other"]));
    let snapshot = wait_for(&mut rx, "new Ingress", |s| s.ingresses.len() == 2).await;
    // Published together with its certificate, not one snapshot later.
    assert_eq!(
        keys(&snapshot.secrets),
        ["default/tls-other", "default/tls-web"]
    );
    assert_eq!(
        cert_of(&snapshot, "tls-other").as_deref(),
        Some(&b"cert-2"[..])
    );
    assert_eq!(
        count_requests(&fake, fetch_path, false),
        1,
        "fetched once with a GET"
    );

    fake.apply(secret("tls-other", "kubernetes.io/tls", CERT_3));
    wait_for(&mut rx, "updated Secret", |s| {
        cert_of(s, "tls-other").as_deref() == Some(&b"cert-3"[..])
    })
    .await;

    fake.delete("Ingress", "default", "shop");
    let snapshot = wait_for(&mut rx, "unreferenced Secret dropped", |s| {
        s.secrets.len() == 1
    })
    .await;
    assert_eq!(keys(&snapshot.secrets), ["default/tls-web"]);

    // A Secret created after the Ingress that references it arrives through the watch.
    fake.apply(ingress("late", &["tls-late"]));
    fake.apply(secret("tls-late", "kubernetes.io/tls", CERT_1));
    let snapshot = wait_for(&mut rx, "late Secret", |s| s.secrets.len() == 2).await;
    assert_eq!(
        cert_of(&snapshot, "tls-late").as_deref(),
        Some(&b"cert-1"[..])
    );
}

const AUTH_1: &str = "YWxpY2U6aGFzaC0x"; // "alice:hash-1"
const AUTH_2: &str = "YWxpY2U6aGFzaC0y"; // "alice:hash-2"
const CA_1: &str = "Y2EtMQ=="; // "ca-1"

/// `field` of the published Secret `key` (`namespace/name`).
fn data_of(snapshot: &Snapshot, key: &str, field: &str) -> Option<Vec<u8>> {
    let (namespace, name) = key.split_once('/').expect("namespace/name");
    let secret = snapshot.secrets.get(&ObjectKey::new(namespace, name))?;
    Some(secret.data.as_ref()?.get(field)?.0.clone())
}

/// GETs of one Secret (fetches of a newly referenced one).
fn secret_gets(fake: &FakeApiServer, key: &str) -> usize {
    let (namespace, name) = key.split_once('/').expect("namespace/name");
    let path = format!("/api/v1/namespaces/{namespace}/secrets/{name}");
    count_requests(fake, &path, false)
}

/// Lists of the Secret watch with this (encoded) field selector.
fn secret_lists(fake: &FakeApiServer, selector: &str) -> usize {
    let requests = fake.requests();
    let lists = requests.iter().filter(|r| {
        r.path == "/api/v1/secrets"
            && !r.query.contains("watch=")
            && r.query.contains(&format!("fieldSelector={selector}"))
    });
    lists.count()
}

const OPAQUE_SELECTOR: &str = "type%3DOpaque";
const TLS_SELECTOR: &str = "type%3Dkubernetes.io%2Ftls";

/// Populated cluster plus the Ingress `private` with basic auth from the Opaque Secret
/// `basic-auth`.
fn populate_with_basic_auth(fake: &FakeApiServer) {
    populate(fake);
    let auth = [("auth", AUTH_1)];
    fake.apply(secret_with("default", "basic-auth", "Opaque", &auth));
    fake.apply(annotated_ingress(
        "private",
        &[("auth-type", "basic"), ("auth-secret", "basic-auth")],
    ));
}

#[tokio::test]
async fn secrets_named_by_auth_and_proxy_ssl_annotations_are_published_with_their_data() {
    let fake = FakeApiServer::start().await;
    populate_with_basic_auth(&fake);
    let ca = [("ca.crt", CA_1)];
    fake.apply(secret_with("certs", "backend-ca", "Opaque", &ca));
    // A Secret of a type that is not watched is not read, even when an annotation names it.
    let token = [("token", AUTH_1)];
    let token_type = "kubernetes.io/service-account-token";
    fake.apply(secret_with("default", "token", token_type, &token));
    fake.apply(annotated_ingress("odd", &[("auth-secret", "token")]));
    let (mut rx, _task) = start(&fake);

    let snapshot = wait_for(&mut rx, "first snapshot", |_| true).await;
    // "opaque" and "certs/backend-ca" are Opaque but not referenced.
    assert_eq!(
        keys(&snapshot.secrets),
        ["default/basic-auth", "default/tls-web"]
    );
    let auth = data_of(&snapshot, "default/basic-auth", "auth");
    assert_eq!(auth.as_deref(), Some(&b"alice:hash-1"[..]));
    assert_eq!(
        secret_gets(&fake, "default/basic-auth"),
        0,
        "listed with data"
    );
    assert_eq!(secret_gets(&fake, "default/token"), 0);

    // proxy-ssl-secret: an Opaque CA in another namespace (`namespace/name`), and a
    // kubernetes.io/tls Secret (bare name) through the TLS watch.
    let upstream = [("proxy-ssl-secret", "certs/backend-ca")];
    fake.apply(annotated_ingress("upstream", &upstream));
    fake.apply(annotated_ingress(
        "mtls",
        &[("proxy-ssl-secret", "tls-other")],
    ));
    let snapshot = wait_for(&mut rx, "new Ingresses", |s| s.ingresses.len() == 5).await;
    // Published together with the Ingresses, each fetched with one GET.
    assert_eq!(
        keys(&snapshot.secrets),
        [
            "certs/backend-ca",
            "default/basic-auth",
            "default/tls-other",
            "default/tls-web"
        ]
    );
    let ca = data_of(&snapshot, "certs/backend-ca", "ca.crt");
    assert_eq!(ca.as_deref(), Some(&b"ca-1"[..]));
    assert_eq!(
        cert_of(&snapshot, "tls-other").as_deref(),
        Some(&b"cert-2"[..])
    );
    assert_eq!(secret_gets(&fake, "certs/backend-ca"), 1);
    assert_eq!(secret_gets(&fake, "default/tls-other"), 1);

    // The annotation removed: the Secret is withdrawn.
    fake.apply(annotated_ingress("private", &[("auth-type", "basic")]));
    let snapshot = wait_for(&mut rx, "auth-secret dropped", |s| s.secrets.len() == 3).await;
    assert_eq!(
        keys(&snapshot.secrets),
        ["certs/backend-ca", "default/tls-other", "default/tls-web"]
    );

    // Named again: its data had been dropped from the cache, so it is fetched again.
    fake.apply(annotated_ingress(
        "private",
        &[
            ("auth-type", "basic"),
            ("auth-secret", "default/basic-auth"),
        ],
    ));
    let snapshot = wait_for(&mut rx, "auth-secret back", |s| s.secrets.len() == 4).await;
    let auth = data_of(&snapshot, "default/basic-auth", "auth");
    assert_eq!(auth.as_deref(), Some(&b"alice:hash-1"[..]));
    assert_eq!(secret_gets(&fake, "default/basic-auth"), 1);

    // A change of a referenced Opaque Secret comes through its watch.
    let auth = [("auth", AUTH_2)];
    fake.apply(secret_with("default", "basic-auth", "Opaque", &auth));
    wait_for(&mut rx, "updated htpasswd", |s| {
        data_of(s, "default/basic-auth", "auth").as_deref() == Some(&b"alice:hash-2"[..])
    })
    .await;
    assert!(
        !rx.borrow()
            .as_ref()
            .unwrap()
            .secrets
            .contains_key(&ObjectKey::new("default", "token"))
    );
    assert_eq!(secret_gets(&fake, "default/token"), 0);
}

#[tokio::test]
async fn a_relist_of_the_opaque_secret_watch_keeps_the_tls_secrets() {
    let fake = FakeApiServer::start().await;
    populate_with_basic_auth(&fake);
    let (mut rx, _task) = start(&fake);
    let snapshot = wait_for(&mut rx, "first snapshot", |_| true).await;
    assert_eq!(
        keys(&snapshot.secrets),
        ["default/basic-auth", "default/tls-web"]
    );
    let seen = record(&rx, |s| keys(&s.secrets));
    assert_eq!(secret_lists(&fake, OPAQUE_SELECTOR), 1);
    assert_eq!(secret_lists(&fake, TLS_SELECTOR), 1);

    // Only the Opaque watch expires; the change made meanwhile comes with its relist.
    fake.expire_watches_with_fields("Secret", "type=Opaque");
    let auth = [("auth", AUTH_2)];
    fake.apply(secret_with("default", "basic-auth", "Opaque", &auth));
    let snapshot = wait_for(&mut rx, "relisted Opaque Secrets", |s| {
        data_of(s, "default/basic-auth", "auth").as_deref() == Some(&b"alice:hash-2"[..])
    })
    .await;
    assert_eq!(
        secret_lists(&fake, OPAQUE_SELECTOR),
        2,
        "the Opaque watch relisted"
    );
    assert_eq!(
        secret_lists(&fake, TLS_SELECTOR),
        1,
        "the TLS watch did not"
    );
    assert_eq!(
        keys(&snapshot.secrets),
        ["default/basic-auth", "default/tls-web"]
    );
    assert_eq!(
        cert_of(&snapshot, "tls-web").as_deref(),
        Some(&b"cert-1"[..])
    );
    for secrets in seen.lock().expect("recorder").iter() {
        assert!(
            secrets.contains(&"default/tls-web".to_owned()),
            "TLS Secret withdrawn by the Opaque relist: {secrets:?}"
        );
    }

    // And the other way round: a TLS relist keeps the Opaque Secrets.
    fake.expire_watches_with_fields("Secret", "type=kubernetes.io/tls");
    fake.apply(secret("tls-web", "kubernetes.io/tls", CERT_3));
    let snapshot = wait_for(&mut rx, "relisted TLS Secrets", |s| {
        cert_of(s, "tls-web").as_deref() == Some(&b"cert-3"[..])
    })
    .await;
    assert_eq!(
        secret_lists(&fake, TLS_SELECTOR),
        2,
        "the TLS watch relisted"
    );
    assert_eq!(
        keys(&snapshot.secrets),
        ["default/basic-auth", "default/tls-web"]
    );
    for secrets in seen.lock().expect("recorder").iter() {
        assert_eq!(
            secrets.len(),
            2,
            "a Secret withdrawn by a relist: {secrets:?}"
        );
    }
}

#[tokio::test]
async fn failing_secret_get_delays_the_ingress_only_briefly_and_is_retried() {
    let fake = FakeApiServer::start().await;
    populate(&fake);
    let (mut rx, _task) = start(&fake);
    wait_for(&mut rx, "first snapshot", |_| true).await;

    fake.forbid_get("Secret", true);
    fake.apply(ingress("shop", &["tls-other"]));
    let snapshot = wait_for(&mut rx, "new Ingress", |s| s.ingresses.len() == 2).await;
    assert_eq!(keys(&snapshot.secrets), ["default/tls-web"]);

    // Later changes are not held back by the failing GET.
    fake.apply(service("api", 8443));
    let started = tokio::time::Instant::now();
    wait_for(&mut rx, "next change", |s| port_of(s, "api").is_some()).await;
    let elapsed = started.elapsed();
    assert!(elapsed < SECRET_FETCH_GRACE / 2, "held back {elapsed:?}");

    fake.forbid_get("Secret", false);
    let snapshot = wait_for(&mut rx, "retried GET", |s| s.secrets.len() == 2).await;
    assert_eq!(
        cert_of(&snapshot, "tls-other").as_deref(),
        Some(&b"cert-2"[..])
    );
}

#[tokio::test]
async fn malformed_object_is_skipped_and_others_are_published() {
    let fake = FakeApiServer::start().await;
    populate(&fake);
    let mut bad = service("bad", 80);
    bad["spec"]["ports"] = json!("not-a-list");
    fake.apply(bad);
    let (mut rx, _task) = start(&fake);
    let snapshot = wait_for(&mut rx, "first snapshot", |_| true).await;
    assert_eq!(keys(&snapshot.services), ["default/web"]);

    fake.apply(service("bad", 8081));
    wait_for(&mut rx, "fixed object", |s| port_of(s, "bad") == Some(8081)).await;
}

fn bulk_slices(fake: &FakeApiServer, count: usize) {
    for i in 0..count {
        fake.apply(endpoint_slice(
            &format!("bulk-{i:04}"),
            "bulk",
            "10.244.1.1",
        ));
    }
}

fn list_queries(fake: &FakeApiServer, path: &str) -> Vec<String> {
    let requests = fake.requests();
    let lists = requests
        .iter()
        .filter(|r| r.path == path && !r.query.contains("watch="));
    lists.map(|r| r.query.clone()).collect()
}

#[tokio::test]
async fn large_lists_are_read_in_pages() {
    let fake = FakeApiServer::start().await;
    populate(&fake);
    bulk_slices(&fake, 1199);
    let (rx, _, _task) = start_with(&fake, InitialList::Paged(500));
    let mut rx = rx;
    let snapshot = wait_for(&mut rx, "first snapshot", |_| true).await;
    assert_eq!(snapshot.endpoint_slices.len(), 1200);
    let queries = list_queries(&fake, "/apis/discovery.k8s.io/v1/endpointslices");
    assert_eq!(queries.len(), 3, "{queries:?}");
    assert!(
        queries.iter().all(|q| q.contains("limit=500")),
        "{queries:?}"
    );
    assert!(!queries[0].contains("continue="), "{queries:?}");
    assert!(queries[1].contains("continue=500"), "{queries:?}");
    assert!(queries[2].contains("continue=1000"), "{queries:?}");
}

#[tokio::test]
async fn an_expired_continue_token_restarts_the_list_and_nothing_half_listed_is_seen() {
    let fake = FakeApiServer::start().await;
    populate(&fake);
    bulk_slices(&fake, 1199);
    fake.expire_continue_tokens(1);
    let (mut rx, changes, _task) = start_with(&fake, InitialList::Paged(500));
    let slice_counts = Arc::new(Mutex::new(Vec::new()));
    let (mut seen, counts) = (rx.clone(), slice_counts.clone());
    tokio::spawn(async move {
        while seen.changed().await.is_ok() {
            let count = seen
                .borrow_and_update()
                .as_ref()
                .map(|s| s.endpoint_slices.len());
            counts.lock().unwrap().extend(count);
        }
    });
    let snapshot = wait_for(&mut rx, "first snapshot", |_| true).await;
    assert_eq!(snapshot.endpoint_slices.len(), 1200);
    let queries = list_queries(&fake, "/apis/discovery.k8s.io/v1/endpointslices");
    // First page, the refused second page, then the whole list again.
    assert_eq!(queries.len(), 5, "{queries:?}");
    assert!(
        !queries[2].contains("continue="),
        "restarted from scratch: {queries:?}"
    );
    assert_eq!(changes.lock().unwrap().len(), 1, "one sync, no partial one");
    assert!(slice_counts.lock().unwrap().iter().all(|n| *n == 1200));
}

#[tokio::test]
async fn watch_cache_lists_are_read_whole_with_resource_version_0() {
    let fake = FakeApiServer::start().await;
    populate(&fake);
    bulk_slices(&fake, 1199);
    let (mut rx, _, _task) = start_with(&fake, InitialList::WatchCache);
    let snapshot = wait_for(&mut rx, "first snapshot", |_| true).await;
    assert_eq!(snapshot.endpoint_slices.len(), 1200);
    let queries = list_queries(&fake, "/apis/discovery.k8s.io/v1/endpointslices");
    assert_eq!(queries.len(), 1, "{queries:?}");
    assert!(
        queries[0].contains("resourceVersion=0") && !queries[0].contains("limit="),
        "{queries:?}"
    );
}

#[tokio::test]
async fn one_changed_object_is_reported_alone() {
    let fake = FakeApiServer::start().await;
    populate(&fake);
    bulk_slices(&fake, 100);
    let (mut rx, changes, _task) = start_with(&fake, InitialList::Paged(500));
    wait_for(&mut rx, "first snapshot", |_| true).await;

    fake.apply(endpoint_slice("bulk-0042", "bulk", "10.244.1.9"));
    wait_for(&mut rx, "changed slice", |s| {
        let slice = &s.endpoint_slices[&ObjectKey::new("default", "bulk-0042")];
        slice.endpoints.as_ref().unwrap()[0].addresses == ["10.244.1.9"]
    })
    .await;
    fake.apply(service("web", 81));
    wait_for(&mut rx, "changed Service", |s| {
        port_of(s, "web") == Some(81)
    })
    .await;
    let recorded = changes.lock().unwrap().clone();
    assert_eq!(recorded.len(), 3, "{recorded:?}");
    assert_eq!(recorded[1].len(), 1, "{:?}", recorded[1]);
    assert_eq!(
        recorded[1].endpoint_slices.iter().next().unwrap().name,
        "bulk-0042"
    );
    assert_eq!(services_of(&recorded[2]), ["default/web"]);
    assert_eq!(recorded[2].len(), 1);
}

#[tokio::test]
async fn run_returns_when_the_receivers_are_gone() {
    let fake = FakeApiServer::start().await;
    populate(&fake);
    let (mut rx, task) = start(&fake);
    wait_for(&mut rx, "first snapshot", |_| true).await;
    drop(rx);
    let result = tokio::time::timeout(WAIT, task)
        .await
        .expect("run returned")
        .expect("no panic");
    assert!(result.is_ok(), "{result:?}");
}

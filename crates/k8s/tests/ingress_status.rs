//! `update_ingress_status` and `client` against the fake API server.

mod fake_apiserver;

use std::net::IpAddr;

use fake_apiserver::FakeApiServer;
use serde_json::{Value, json};
use sluice_k8s::{K8sError, client, update_ingress_status};
use sluice_model::ObjectKey;

const STATUS_PATH: &str = "/apis/networking.k8s.io/v1/namespaces/web/ingresses/shop/status";

fn shop_ingress() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
           "metadata": {"namespace": "web", "name": "shop"},
           "spec": {"defaultBackend": {"service": {"name": "shop", "port": {"number": 80}}}}})
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().expect("test ip")).collect()
}

fn patches(fake: &FakeApiServer) -> Vec<fake_apiserver::Recorded> {
    fake.requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect()
}

#[tokio::test]
async fn writes_the_status_with_a_merge_patch_only_when_it_differs() {
    let fake = FakeApiServer::start().await;
    fake.apply(shop_ingress());
    let client = fake.client();
    let key = ObjectKey::new("web", "shop");

    update_ingress_status(&client, &key, &ips(&["10.0.0.1", "fd00::1"]))
        .await
        .expect("status written");
    let written = patches(&fake);
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].path, STATUS_PATH);
    assert_eq!(
        written[0].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    let body: Value = serde_json::from_str(&written[0].body).expect("JSON patch body");
    assert_eq!(
        body,
        json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]}}})
    );
    let stored = fake.object("Ingress", "web", "shop").expect("ingress");
    assert_eq!(
        stored["status"]["loadBalancer"]["ingress"][1]["ip"],
        "fd00::1"
    );

    // Same addresses in another order: read, but nothing written.
    update_ingress_status(&client, &key, &ips(&["fd00::1", "10.0.0.1"]))
        .await
        .expect("no-op");
    assert_eq!(patches(&fake).len(), 1);
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.method == "GET" && r.path == STATUS_PATH)
    );

    update_ingress_status(&client, &key, &[])
        .await
        .expect("status cleared");
    let written = patches(&fake);
    assert_eq!(written.len(), 2);
    let body: Value = serde_json::from_str(&written[1].body).expect("JSON patch body");
    assert_eq!(body, json!({"status": {"loadBalancer": {"ingress": []}}}));
}

#[tokio::test]
async fn missing_ingress_is_an_error_naming_it() {
    let fake = FakeApiServer::start().await;
    let error = update_ingress_status(
        &fake.client(),
        &ObjectKey::new("web", "gone"),
        &ips(&["10.0.0.1"]),
    )
    .await
    .expect_err("no such ingress");
    assert!(matches!(error, K8sError::GetIngress { .. }), "{error:?}");
    assert!(error.to_string().contains("web/gone"), "{error}");
    assert!(patches(&fake).is_empty());
}

#[tokio::test]
async fn client_from_a_kubeconfig_file_talks_to_its_server() {
    let fake = FakeApiServer::start().await;
    fake.apply(shop_ingress());
    let dir = std::env::temp_dir().join(format!("sluice-k8s-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("kubeconfig");
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
         clusters:\n- name: fake\n  cluster:\n    server: {}\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
         users:\n- name: fake\n  user: {{}}\n",
        fake.url()
    );
    std::fs::write(&path, kubeconfig).expect("write kubeconfig");

    let client = client(Some(&path)).await.expect("client from kubeconfig");
    update_ingress_status(&client, &ObjectKey::new("web", "shop"), &ips(&["10.0.0.7"]))
        .await
        .expect("status written through the kubeconfig's server");
    assert_eq!(patches(&fake).len(), 1);
    std::fs::remove_dir_all(&dir).ok();

    let missing = dir.join("does-not-exist");
    let Err(error) = sluice_k8s::client(Some(&missing)).await else {
        panic!("a client from a missing kubeconfig");
    };
    assert!(matches!(error, K8sError::Kubeconfig { .. }), "{error:?}");
    assert!(error.to_string().contains("does-not-exist"), "{error}");
}

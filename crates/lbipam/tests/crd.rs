//! The CRD manifest, the Rust types and the examples in docs/loadbalancer.md agree.

use std::collections::BTreeSet;
use std::path::Path;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition, LabelSelector, LabelSelectorRequirement, Time,
};
use serde::Deserialize as _;
use serde_json::{Value, json};
use sluice_lbipam::{
    IpBlock, LoadBalancerIPPool, LoadBalancerIPPoolSpec, LoadBalancerIPPoolStatus,
};

fn repo_file(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn crd() -> Value {
    serde_yaml::from_str(&repo_file("manifests/crds/loadbalancerippool.yaml")).expect("CRD YAML")
}

fn keys(object: &Value) -> BTreeSet<String> {
    object
        .as_object()
        .expect("object")
        .keys()
        .cloned()
        .collect()
}

#[test]
fn crd_names_match_the_rust_resource() {
    use k8s_openapi::Resource;
    let crd = crd();
    let spec = &crd["spec"];
    assert_eq!(spec["group"], LoadBalancerIPPool::GROUP);
    assert_eq!(spec["scope"], "Cluster");
    assert_eq!(spec["names"]["kind"], LoadBalancerIPPool::KIND);
    assert_eq!(
        spec["names"]["plural"],
        LoadBalancerIPPool::URL_PATH_SEGMENT
    );
    assert_eq!(
        crd["metadata"]["name"],
        format!(
            "{}.{}",
            LoadBalancerIPPool::URL_PATH_SEGMENT,
            LoadBalancerIPPool::GROUP
        )
    );
    assert_eq!(spec["versions"][0]["name"], LoadBalancerIPPool::VERSION);
    assert_eq!(
        LoadBalancerIPPool::API_VERSION,
        format!(
            "{}/{}",
            LoadBalancerIPPool::GROUP,
            LoadBalancerIPPool::VERSION
        )
    );
    assert!(spec["versions"][0]["subresources"]["status"].is_object());
}

#[test]
fn schema_fields_are_the_serialized_fields() {
    let crd = crd();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
    let full = LoadBalancerIPPoolSpec {
        blocks: vec![IpBlock {
            cidr: Some("192.0.2.0/24".into()),
            start: Some("a".into()),
            stop: Some("b".into()),
        }],
        service_selector: Some(LabelSelector {
            match_labels: Some([("a".to_string(), "b".to_string())].into()),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "k".into(),
                operator: "In".into(),
                values: Some(vec!["v".into()]),
            }]),
        }),
        l2_announce: false,
        disabled: true,
    };
    let spec = serde_json::to_value(&full).unwrap();
    let spec_schema = &schema["spec"]["properties"];
    assert_eq!(keys(&spec), keys(spec_schema));
    assert_eq!(
        keys(&spec["blocks"][0]),
        keys(&spec_schema["blocks"]["items"]["properties"])
    );
    let selector_schema = &spec_schema["serviceSelector"]["properties"];
    assert_eq!(keys(&spec["serviceSelector"]), keys(selector_schema));
    assert_eq!(
        keys(&spec["serviceSelector"]["matchExpressions"][0]),
        keys(&selector_schema["matchExpressions"]["items"]["properties"])
    );
    let status = LoadBalancerIPPoolStatus {
        conditions: vec![Condition {
            type_: "Valid".into(),
            status: "True".into(),
            reason: "Valid".into(),
            message: "ok".into(),
            observed_generation: Some(1),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        }],
    };
    let status = serde_json::to_value(&status).unwrap();
    assert_eq!(
        keys(&status["conditions"][0]),
        keys(&schema["status"]["properties"]["conditions"]["items"]["properties"])
    );
}

#[test]
fn objects_serialize_with_api_version_and_kind_and_defaults_apply() {
    let pool: LoadBalancerIPPool = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "LoadBalancerIPPool",
        "metadata": { "name": "lan" },
        "spec": { "blocks": [{ "start": "192.0.2.10", "stop": "192.0.2.20" }] }
    }))
    .unwrap();
    assert!(pool.spec.l2_announce, "l2Announce defaults to true");
    assert!(!pool.spec.disabled);
    assert_eq!(pool.name(), "lan");
    let back = serde_json::to_value(&pool).unwrap();
    assert_eq!(back["apiVersion"], "sluice.dev/v1alpha1");
    assert_eq!(back["kind"], "LoadBalancerIPPool");
    assert_eq!(back["spec"]["l2Announce"], true);
    assert_eq!(
        back["spec"]["blocks"],
        json!([{ "start": "192.0.2.10", "stop": "192.0.2.20" }])
    );
    assert!(back.get("status").is_none());
}

/// Every `kind: LoadBalancerIPPool` document in the docs' YAML blocks parses and is valid.
#[test]
fn pools_in_the_docs_are_valid() {
    let doc = repo_file("docs/loadbalancer.md");
    let mut pools = Vec::new();
    for block in doc.split("```yaml").skip(1) {
        let yaml = block.split("```").next().unwrap();
        for document in serde_yaml::Deserializer::from_str(yaml) {
            let value = Value::deserialize(document).expect("YAML in docs");
            if value["kind"] == "LoadBalancerIPPool" {
                pools.push(serde_json::from_value::<LoadBalancerIPPool>(value).unwrap());
            }
        }
    }
    assert!(pools.len() >= 2, "the docs show pools");
    let allocation = sluice_lbipam::allocate(&pools, &[], &Default::default());
    for (name, report) in &allocation.pools {
        let valid = report.condition("Valid").unwrap();
        assert_eq!(valid.status.as_str(), "True", "{name}: {}", valid.message);
    }
}

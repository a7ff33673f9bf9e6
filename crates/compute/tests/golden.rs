//! Golden files: representative clusters written as a user writes them (multi-document YAML)
//! and the plan compute makes of them, in the plan's text form.
//!
//! Each directory under `tests/golden/` is one case:
//! * `objects.yaml`: Services, EndpointSlices and optionally our Node (`node-a`), whose
//!   addresses and zone label become the node facts;
//! * `plan.txt`: the expected `Plan` text; `warnings.txt`: the expected warnings, one a line.
//!
//! Every case runs with `--cluster-cidr 10.244.0.0/16,fd00:10:244::/56` and the Ingress
//! listener on NodePort 30443 (`reserved_node_ports`).
//! `UPDATE_GOLDEN=1 cargo test -p sluice-compute --test golden` rewrites the expectations;
//! review the change with `git diff` before committing it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow_free::{Context, Result};
use k8s_openapi::api::core::v1::{Node, Service};
use serde::Deserialize;
use sluice_compute::{ComputeConfig, compute, node_info};
use sluice_model::EndpointSlice;
use sluice_model::{ObjectKey, Snapshot};

/// Tiny error context without pulling `anyhow` into compute's dev-dependencies.
mod anyhow_free {
    pub type Result<T> = std::result::Result<T, String>;

    pub trait Context<T> {
        fn context(self, what: impl std::fmt::Display) -> Result<T>;
    }

    impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
        fn context(self, what: impl std::fmt::Display) -> Result<T> {
            self.map_err(|e| format!("{what}: {e}"))
        }
    }
}

const NODE: &str = "node-a";

fn config() -> ComputeConfig {
    ComputeConfig {
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().expect("cidr"),
            "fd00:10:244::/56".parse().expect("cidr"),
        ],
        reserved_node_ports: vec![30443],
        ..ComputeConfig::default()
    }
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Reads one case's objects: the snapshot and our Node, if given.
fn read_objects(path: &Path) -> Result<(Snapshot, Option<Node>)> {
    let text = std::fs::read_to_string(path).context(format!("reading {}", path.display()))?;
    let mut snapshot = Snapshot::default();
    let mut node = None;
    for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .context(format!("{} document {index}", path.display()))?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(serde_yaml::Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let what = format!("{} document {index} ({kind})", path.display());
        match kind.as_str() {
            "Service" => {
                let mut service: Service = serde_yaml::from_value(value).context(&what)?;
                let key = key_in_default_namespace(&mut service.metadata).context(&what)?;
                snapshot.services.insert(key, Arc::new(service));
            }
            "EndpointSlice" => {
                let mut slice: EndpointSlice = serde_yaml::from_value(value).context(&what)?;
                let key = key_in_default_namespace(&mut slice.metadata).context(&what)?;
                snapshot.endpoint_slices.insert(key, Arc::new(slice));
            }
            "Node" => node = Some(serde_yaml::from_value(value).context(&what)?),
            other => return Err(format!("{what}: unexpected kind {other:?}")),
        }
    }
    Ok((snapshot, node))
}

/// As `kubectl apply`: objects without a namespace go to `default`.
fn key_in_default_namespace(
    meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<ObjectKey> {
    meta.namespace.get_or_insert_with(|| "default".to_owned());
    ObjectKey::of(meta).ok_or_else(|| "object without metadata.name".to_owned())
}

/// The plan text and warnings of one case.
fn render(case: &Path) -> Result<(String, String)> {
    let (snapshot, node) = read_objects(&case.join("objects.yaml"))?;
    let node = node_info(NODE, node.as_ref(), &[]);
    let computed = compute(&snapshot, &node, &config());
    let mut warnings = String::new();
    for warning in &computed.warnings {
        let _ = writeln!(warnings, "{warning}");
    }
    Ok((computed.plan.to_string(), warnings))
}

/// Compares `actual` with the file, or rewrites it under `UPDATE_GOLDEN=1`; returns the
/// problem, if any.
fn check_file(path: &Path, actual: &str, update: bool) -> Option<String> {
    if update {
        return std::fs::write(path, actual)
            .err()
            .map(|e| format!("writing {}: {e}", path.display()));
    }
    match std::fs::read_to_string(path) {
        Ok(expected) if expected == actual => None,
        Ok(expected) => Some(format!(
            "{} differs (- expected, + actual):\n{}",
            path.display(),
            sluice_plan::line_diff(&expected, actual)
        )),
        Err(e) => Some(format!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )),
    }
}

#[test]
fn plans_match_the_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("tests/golden exists")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.join("objects.yaml").is_file())
        .collect();
    cases.sort();
    assert!(cases.len() >= 5, "golden cases missing: {cases:?}");
    let mut failures = Vec::new();
    for case in &cases {
        match render(case) {
            Ok((plan, warnings)) => {
                failures.extend(check_file(&case.join("plan.txt"), &plan, update));
                failures.extend(check_file(&case.join("warnings.txt"), &warnings, update));
            }
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn malformed_golden_objects_are_reported_with_the_document() {
    let dir = std::env::temp_dir().join(format!("sluice-golden-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("objects.yaml");
    std::fs::write(
        &path,
        "kind: Service\nmetadata: {name: a}\n---\nkind: Service\nspec: 3\n",
    )
    .expect("write");
    let error = read_objects(&path).expect_err("spec: 3 is not a ServiceSpec");
    std::fs::remove_dir_all(&dir).expect("cleanup");
    assert!(error.contains("document 1 (Service)"), "{error}");
}

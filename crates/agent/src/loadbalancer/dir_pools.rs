//! `LoadBalancerIPPool`s of a `dir:` source. The directory source reads only the kinds the
//! datapath needs and skips custom resources, so the pools are read here, from the same
//! files: `*.yaml`, `*.yml` and `*.json` directly in the directory (not dot-files, not
//! subdirectories), documents separated by `---`, symlinks followed. Only files that mention
//! `LoadBalancerIPPool` are parsed; files over 8 MiB are skipped. The directory is polled
//! every [`POLL_INTERVAL`], and files are re-read only when one changed (size, mtime, or the
//! set of files).
//!
//! A pool document that cannot be read (wrong `apiVersion`, a field of the wrong type, no
//! name) is logged naming the file and document and skipped; the other pools still apply.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize as _;
use sluice_k8s::Objects;
use sluice_lbipam::{API_VERSION, KIND, LoadBalancerIPPool};
use sluice_model::ObjectKey;
use tokio::sync::watch;

pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
const MAX_FILE_SIZE: u64 = 8 << 20;

/// What identifies the directory's content without reading it.
type Signature = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// The pools found and a warning per pool document that had to be skipped.
#[derive(Debug, Default)]
pub struct DirPools {
    pub pools: Objects<LoadBalancerIPPool>,
    pub warnings: Vec<String>,
}

/// Polls `dir` until `shutdown`, publishing the pools whenever they change (the first read
/// is always published, empty or not).
pub async fn watch_dir_pools(
    dir: PathBuf,
    tx: watch::Sender<Option<Arc<Objects<LoadBalancerIPPool>>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last: Option<Signature> = None;
    let mut warned: Vec<String> = Vec::new();
    loop {
        let reading = dir.clone();
        let seen = last.clone();
        let read = tokio::task::spawn_blocking(move || {
            let signature = signature(&reading);
            if seen.as_ref() == Some(&signature) {
                return (signature, None);
            }
            let pools = read_pools(&reading);
            (signature, Some(pools))
        })
        .await;
        if let Ok((signature, Some(found))) = read {
            last = Some(signature);
            if found.warnings != warned {
                for warning in found.warnings.iter().filter(|w| !warned.contains(w)) {
                    tracing::warn!("skipped a LoadBalancerIPPool: {warning}");
                }
                warned = found.warnings;
            }
            tx.send_if_modified(|current| {
                let changed = current.as_deref() != Some(&found.pools);
                if changed {
                    *current = Some(Arc::new(found.pools));
                }
                changed
            });
        }
        tokio::select! {
            () = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = shutdown.wait_for(|s| *s) => return,
            () = tx.closed() => return,
        }
    }
}

fn candidate_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            !name.starts_with('.') && matches!(ext, "yaml" | "yml" | "json")
        })
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn signature(dir: &Path) -> Signature {
    candidate_files(dir)
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(&path).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (path, len, modified)
        })
        .collect()
}

/// Reads every pool of the directory (later files and documents win on duplicate names).
pub fn read_pools(dir: &Path) -> DirPools {
    let mut out = DirPools::default();
    for path in candidate_files(dir) {
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let too_big = std::fs::metadata(&path).is_ok_and(|m| m.len() > MAX_FILE_SIZE);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue; // not UTF-8 or unreadable: the directory source reports it
        };
        if too_big || !text.contains(KIND) {
            continue;
        }
        read_file(&name, &text, &mut out);
    }
    out
}

fn read_file(file: &str, text: &str, out: &mut DirPools) {
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        // Unparsable YAML is the directory source's to report.
        let Ok(value) = serde_yaml::Value::deserialize(document) else {
            continue;
        };
        if value.get("kind").and_then(|k| k.as_str()) != Some(KIND) {
            continue;
        }
        let place = format!("{file} document {}", index + 1);
        match decode_pool(value) {
            Ok(pool) => {
                out.pools
                    .insert(ObjectKey::cluster(pool.name()), Arc::new(pool));
            }
            Err(why) => out.warnings.push(format!("{place}: {why}")),
        }
    }
}

fn decode_pool(value: serde_yaml::Value) -> Result<LoadBalancerIPPool, String> {
    let api_version = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("")
        .to_owned();
    let named = if name.is_empty() {
        String::from("a pool without metadata.name")
    } else {
        format!("pool {name}")
    };
    if api_version != API_VERSION {
        return Err(format!(
            "{named}: apiVersion {api_version:?} is not {API_VERSION}"
        ));
    }
    if name.is_empty() {
        return Err(format!("{named} cannot be used"));
    }
    serde_yaml::from_value::<LoadBalancerIPPool>(value).map_err(|e| format!("{named}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sluice-dir-pools-{}-{}",
            std::process::id(),
            files.len()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn pools_are_read_next_to_other_objects_and_bad_ones_are_named() {
        let dir = dir_with(&[
            (
                "a-pools.yaml",
                "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n---\n\
                 apiVersion: sluice.dev/v1alpha1\nkind: LoadBalancerIPPool\n\
                 metadata: {name: lan}\nspec:\n  blocks: [{cidr: 192.0.2.240/29}]\n---\n\
                 apiVersion: sluice.dev/v1beta9\nkind: LoadBalancerIPPool\nmetadata: {name: old}\n---\n\
                 apiVersion: sluice.dev/v1alpha1\nkind: LoadBalancerIPPool\n\
                 metadata: {name: broken}\nspec: {blocks: 12}\n",
            ),
            (
                "b.json",
                r#"{"apiVersion": "sluice.dev/v1alpha1", "kind": "LoadBalancerIPPool",
                    "metadata": {"name": "v6"}, "spec": {"blocks": [{"cidr": "2001:db8::/120"}], "l2Announce": false}}"#,
            ),
            (
                ".hidden.yaml",
                "kind: LoadBalancerIPPool\nmetadata: {name: hidden}\n",
            ),
            ("notes.txt", "kind: LoadBalancerIPPool\n"),
        ]);
        let read = read_pools(&dir);
        let names: Vec<&str> = read.pools.values().map(|p| p.name()).collect();
        assert_eq!(names, ["lan", "v6"]);
        assert!(
            read.pools[&ObjectKey::cluster("lan")].spec.l2_announce,
            "default true"
        );
        assert!(!read.pools[&ObjectKey::cluster("v6")].spec.l2_announce);
        assert_eq!(read.warnings.len(), 2, "{:?}", read.warnings);
        assert!(
            read.warnings[0].starts_with("a-pools.yaml document 3: pool old: apiVersion"),
            "{:?}",
            read.warnings
        );
        assert!(
            read.warnings[1].starts_with("a-pools.yaml document 4: pool broken:"),
            "{:?}",
            read.warnings
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn changes_are_published_and_the_first_read_even_when_empty() {
        let dir = dir_with(&[]);
        let (tx, mut rx) = watch::channel(None);
        let (_stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(watch_dir_pools(dir.clone(), tx, stop_rx));
        let first = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(Option::is_some))
            .await
            .unwrap()
            .unwrap()
            .clone()
            .unwrap();
        assert!(first.is_empty());
        std::fs::write(
            dir.join("pool.yaml"),
            "apiVersion: sluice.dev/v1alpha1\nkind: LoadBalancerIPPool\nmetadata: {name: lan}\n\
             spec: {blocks: [{cidr: 192.0.2.240/29}]}\n",
        )
        .unwrap();
        let wait = rx.wait_for(|p| p.as_ref().is_some_and(|p| p.len() == 1));
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("the new pool within a few polls")
            .unwrap();
        task.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

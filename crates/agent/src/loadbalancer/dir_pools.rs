//! `LoadBalancerIPPool`s of a `dir:` source. The directory source reads only the kinds the
//! datapath needs and skips custom resources, so the pools are read here, from the same
//! files: `*.yaml`, `*.yml` and `*.json` directly in the directory (not dot-files, not
//! subdirectories), documents separated by `---`, symlinks followed. Only files that mention
//! `LoadBalancerIPPool` are parsed; files over 8 MiB are skipped. The directory is polled
//! every [`POLL_INTERVAL`] (one `stat` per file), and only the files whose size or mtime
//! changed are read again: a cluster of 100,000 Services in manifests must not be re-read
//! whenever one of its files changes.
//!
//! A pool document that cannot be read (wrong `apiVersion`, a field of the wrong type, no
//! name) is logged naming the file and document and skipped; the other pools still apply.

use std::collections::BTreeMap;
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

/// The pools found and a warning per pool document that had to be skipped.
#[derive(Debug, Default, PartialEq)]
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
    let mut files = PoolFiles::default();
    let mut warned: Vec<String> = Vec::new();
    let mut first = true;
    loop {
        let reading = dir.clone();
        let mut cache = std::mem::take(&mut files);
        let read = tokio::task::spawn_blocking(move || {
            let changed = cache.refresh(&reading).changed;
            let found = changed.then(|| cache.pools());
            (cache, found)
        })
        .await;
        match read {
            Ok((cache, found)) => {
                files = cache;
                if let Some(found) = found.or_else(|| first.then(DirPools::default)) {
                    first = false;
                    publish(&tx, found, &mut warned);
                }
            }
            // The cache is lost with the task: the next poll reads every file again.
            Err(e) => {
                tracing::warn!(error = %e, "reading the manifest directory's LoadBalancerIPPools failed; retrying")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = shutdown.wait_for(|s| *s) => return,
            () = tx.closed() => return,
        }
    }
}

/// Logs each new warning once and sends the pools if they differ from what was sent.
fn publish(
    tx: &watch::Sender<Option<Arc<Objects<LoadBalancerIPPool>>>>,
    found: DirPools,
    warned: &mut Vec<String>,
) {
    if found.warnings != *warned {
        for warning in found.warnings.iter().filter(|w| !warned.contains(w)) {
            tracing::warn!("skipped a LoadBalancerIPPool: {warning}");
        }
        *warned = found.warnings;
    }
    tx.send_if_modified(|current| {
        let changed = current.as_deref() != Some(&found.pools);
        if changed {
            *current = Some(Arc::new(found.pools));
        }
        changed
    });
}

/// What identifies a file's content without reading it.
type Stamp = (u64, Option<SystemTime>);

/// The pools of each file of the directory, as of the file's stamp when it was read.
#[derive(Debug, Default)]
pub struct PoolFiles {
    files: BTreeMap<PathBuf, (Stamp, DirPools)>,
}

/// What one [`PoolFiles::refresh`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refreshed {
    /// Files read (new or changed since the last refresh).
    pub read: usize,
    /// Whether any file appeared, changed or went away.
    pub changed: bool,
}

impl PoolFiles {
    /// Stats every candidate file and reads again only the new and changed ones.
    pub fn refresh(&mut self, dir: &Path) -> Refreshed {
        let stamps = candidate_files(dir);
        let before = self.files.len();
        self.files.retain(|path, _| stamps.contains_key(path));
        let mut refreshed = Refreshed {
            read: 0,
            changed: self.files.len() != before,
        };
        for (path, stamp) in stamps {
            if self
                .files
                .get(&path)
                .is_some_and(|(seen, _)| *seen == stamp)
            {
                continue;
            }
            let pools = read_pools_of(&path, stamp.0);
            refreshed.read += 1;
            refreshed.changed = true;
            self.files.insert(path, (stamp, pools));
        }
        refreshed
    }

    /// Every pool (later files and documents win on duplicate names) and every warning.
    pub fn pools(&self) -> DirPools {
        let mut out = DirPools::default();
        for (_, file) in self.files.values() {
            out.pools
                .extend(file.pools.iter().map(|(k, v)| (k.clone(), Arc::clone(v))));
            out.warnings.extend(file.warnings.iter().cloned());
        }
        out
    }
}

/// The candidate files and their stamps, by path.
fn candidate_files(dir: &Path) -> BTreeMap<PathBuf, Stamp> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            !name.starts_with('.') && matches!(ext, "yaml" | "yml" | "json")
        })
        .filter_map(|path| {
            // Follows symlinks, like the directory source.
            let meta = std::fs::metadata(&path).ok().filter(|m| m.is_file())?;
            Some((path, (meta.len(), meta.modified().ok())))
        })
        .collect()
}

/// The pools of one file (`len` bytes by its stamp).
fn read_pools_of(path: &Path, len: u64) -> DirPools {
    let mut out = DirPools::default();
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    if len > MAX_FILE_SIZE {
        return out;
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        return out; // not UTF-8 or unreadable: the directory source reports it
    };
    if text.contains(KIND) {
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

    /// Every pool of the directory, read at once.
    fn read_pools(dir: &Path) -> DirPools {
        let mut files = PoolFiles::default();
        files.refresh(dir);
        files.pools()
    }

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

    #[test]
    fn only_new_and_changed_files_are_read_again() {
        let pool = |name: &str| {
            format!(
                "apiVersion: sluice.dev/v1alpha1\nkind: LoadBalancerIPPool\n\
                 metadata: {{name: {name}}}\nspec: {{blocks: [{{cidr: 192.0.2.0/28}}]}}\n"
            )
        };
        let dir =
            std::env::temp_dir().join(format!("sluice-dir-pools-{}-cache", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), pool("a")).unwrap();
        std::fs::write(
            dir.join("b.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n",
        )
        .unwrap();
        std::fs::write(dir.join("c.yaml"), pool("c")).unwrap();
        let mut files = PoolFiles::default();
        assert_eq!(
            files.refresh(&dir),
            Refreshed {
                read: 3,
                changed: true
            }
        );
        assert_eq!(
            files.refresh(&dir),
            Refreshed {
                read: 0,
                changed: false
            }
        );
        let names = |files: &PoolFiles| -> Vec<String> {
            files
                .pools()
                .pools
                .values()
                .map(|p| p.name().to_owned())
                .collect()
        };
        assert_eq!(names(&files), ["a", "c"]);
        // A changed file (another size) is read again, alone.
        std::fs::write(dir.join("a.yaml"), pool("a2")).unwrap();
        assert_eq!(
            files.refresh(&dir),
            Refreshed {
                read: 1,
                changed: true
            }
        );
        assert_eq!(names(&files), ["a2", "c"]);
        // A file gone takes its pools with it, without reading anything.
        std::fs::remove_file(dir.join("c.yaml")).unwrap();
        assert_eq!(
            files.refresh(&dir),
            Refreshed {
                read: 0,
                changed: true
            }
        );
        assert_eq!(names(&files), ["a2"]);
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

//! Polling the directory, caching parsed files, and merging them into one Snapshot.

use std::collections::{BTreeMap, BTreeSet};
#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_model::{ObjectKey, Snapshot, SnapshotKind};
use tokio::sync::watch;

use crate::files::{self, Listed, ReadError, Stamp};
use crate::parse::{Limits, Origin, ParsedFile, parse_file};
use crate::warning::{LoadWarning, ObjectRef, Problem};

#[derive(Debug, thiserror::Error)]
pub enum DirSourceError {
    #[error("cannot read manifest directory {dir}")]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

struct CachedFile {
    name: String,
    stamp: Stamp,
    parsed: ParsedFile,
}

/// Watches a directory of manifests and publishes a [`Snapshot`] whenever a file changes.
///
/// Files are re-read when their size, mtime, inode or symlink target changes (polling: no
/// inotify dependency, and it works for files replaced by rename and for ConfigMap volumes).
/// Each file is parsed on its own and cached, so a change costs a re-parse of that file only.
pub struct DirSource {
    dir: PathBuf,
    poll_interval: Duration,
    limits: Limits,
    cache: BTreeMap<PathBuf, CachedFile>,
}

impl DirSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            poll_interval: Duration::from_millis(100),
            limits: Limits::default(),
            cache: BTreeMap::new(),
        }
    }

    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Files larger than `bytes` are skipped with a warning, without being read
    /// (default [`crate::DEFAULT_MAX_FILE_SIZE`], 8 MiB).
    pub fn with_max_file_size(mut self, bytes: u64) -> Self {
        self.limits.max_file_size = bytes;
        self
    }

    /// Documents nesting deeper than `levels` are skipped with a warning before the YAML
    /// parser sees them (default [`crate::DEFAULT_MAX_DEPTH`], 64).
    pub fn with_max_depth(mut self, levels: usize) -> Self {
        self.limits.max_depth = levels;
        self
    }

    /// Documents with more YAML nodes than `nodes` (counting what aliases repeat) are skipped
    /// with a warning (default [`crate::DEFAULT_MAX_NODES`], 500,000: about 100 MB to parse).
    pub fn with_max_nodes(mut self, nodes: usize) -> Self {
        self.limits.max_nodes = nodes;
        self
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Re-reads changed files. Returns the new snapshot and this round's warnings (about the
    /// files read in this round, and every duplicate object) when anything changed, `None`
    /// when nothing did. Blocking: reads files and parses YAML.
    pub fn refresh(&mut self) -> Result<Option<(Snapshot, Vec<LoadWarning>)>, DirSourceError> {
        let files = files::list(&self.dir).map_err(|source| DirSourceError::ReadDir {
            dir: self.dir.clone(),
            source,
        })?;
        let present: BTreeSet<&PathBuf> = files.iter().map(|f| &f.path).collect();
        let before = self.cache.len();
        self.cache.retain(|path, _| present.contains(path));
        let mut changed = self.cache.len() != before;
        let mut warnings = Vec::new();
        for listed in files {
            if self
                .cache
                .get(&listed.path)
                .is_some_and(|c| c.stamp == listed.stamp)
            {
                continue;
            }
            changed = true;
            let Some(parsed) = load(&listed, &self.limits) else {
                self.cache.remove(&listed.path);
                continue;
            };
            warnings.extend(parsed.warnings.iter().cloned());
            let cached = CachedFile {
                name: listed.name,
                stamp: listed.stamp,
                parsed,
            };
            self.cache.insert(listed.path, cached);
        }
        if !changed {
            return Ok(None);
        }
        let (snapshot, merge_warnings) = merge(self.cache.values());
        warnings.extend(merge_warnings);
        Ok(Some((snapshot, warnings)))
    }

    /// Publishes the first snapshot after the first full read, then one per change. Runs until
    /// every receiver is gone. An unreadable directory keeps the last good state and retries.
    ///
    /// Reading and parsing run on tokio's blocking pool, never on the async workers: a slow
    /// file cannot stall the rest of the agent.
    pub async fn run(
        mut self,
        tx: watch::Sender<Option<Arc<Snapshot>>>,
    ) -> Result<(), DirSourceError> {
        let mut reported_unreadable = false;
        loop {
            let result;
            (self, result) = match tokio::task::spawn_blocking(move || {
                let result = self.refresh();
                (self, result)
            })
            .await
            {
                Ok(done) => done,
                Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                Err(_) => return Ok(()), // the runtime is shutting down
            };
            match result {
                Ok(Some((snapshot, warnings))) => {
                    reported_unreadable = false;
                    for warning in &warnings {
                        tracing::warn!(dir = %self.dir.display(), "skipped manifest: {warning}");
                    }
                    if tx.send(Some(Arc::new(snapshot))).is_err() {
                        return Ok(());
                    }
                }
                Ok(None) => reported_unreadable = false,
                // The first read must succeed: a wrong path is a configuration error.
                Err(err) if tx.borrow().is_none() => return Err(err),
                Err(err) => {
                    if !reported_unreadable {
                        tracing::warn!("{err}; keeping the last good state");
                        reported_unreadable = true;
                    }
                }
            }
            if tx.is_closed() {
                return Ok(());
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }
}

/// Reads and parses one listed file; `None` when it vanished since the listing.
fn load(listed: &Listed, limits: &Limits) -> Option<ParsedFile> {
    let name = &listed.name;
    match &listed.stamp {
        Stamp::Problem(problem) => Some(ParsedFile::failed(name, problem.clone())),
        Stamp::File { len, .. } if *len > limits.max_file_size => {
            let problem = Problem::FileTooLarge {
                size: *len,
                limit: limits.max_file_size,
            };
            Some(ParsedFile::failed(name, problem))
        }
        Stamp::File { .. } => match files::read(&listed.path, limits.max_file_size) {
            Ok(bytes) => Some(parse_file(name, &bytes, limits)),
            Err(ReadError::Vanished) => None,
            Err(ReadError::Problem(problem)) => Some(ParsedFile::failed(name, problem)),
        },
    }
}

/// Builds one snapshot from all files (in file-name order). When an object is defined more
/// than once, the last definition in file-name and document order wins and every earlier one
/// gets a warning naming the winner. Only TLS Secrets referenced by an Ingress are kept, like
/// the API source.
fn merge<'a>(files: impl Iterator<Item = &'a CachedFile>) -> (Snapshot, Vec<LoadWarning>) {
    let mut snapshot = Snapshot::default();
    let mut warnings = Vec::new();
    let mut defined_at: BTreeMap<(SnapshotKind, ObjectKey), (&str, Origin)> = BTreeMap::new();
    for file in files {
        let parsed = &file.parsed;
        let mut record = |kind: SnapshotKind, key: &ObjectKey| {
            let origin = parsed.origins.get(&(kind, key.clone())).copied();
            let origin = origin.unwrap_or(Origin {
                document: 0,
                item: None,
            });
            let earlier = defined_at.insert((kind, key.clone()), (&file.name, origin));
            if let Some((earlier_file, earlier_origin)) = earlier {
                warnings.push(LoadWarning {
                    file: earlier_file.to_owned(),
                    document: earlier_origin.document,
                    item: earlier_origin.item,
                    object: Some(ObjectRef::of(kind, key)),
                    problem: Problem::Duplicate {
                        winner: origin.describe(&file.name),
                    },
                });
            }
        };
        macro_rules! insert_all {
            ($field:ident, $kind:expr) => {
                for (key, object) in &parsed.$field {
                    record($kind, key);
                    snapshot.$field.insert(key.clone(), Arc::clone(object));
                }
            };
        }
        insert_all!(services, SnapshotKind::Service);
        insert_all!(endpoint_slices, SnapshotKind::EndpointSlice);
        insert_all!(nodes, SnapshotKind::Node);
        insert_all!(ingresses, SnapshotKind::Ingress);
        insert_all!(ingress_classes, SnapshotKind::IngressClass);
        insert_all!(secrets, SnapshotKind::Secret);
    }
    keep_referenced_tls_secrets(&mut snapshot);
    (snapshot, warnings)
}

fn keep_referenced_tls_secrets(snapshot: &mut Snapshot) {
    let referenced: BTreeSet<ObjectKey> = snapshot
        .ingresses
        .iter()
        .flat_map(|(key, ingress)| {
            let tls = ingress.spec.as_ref().and_then(|s| s.tls.as_ref());
            tls.into_iter().flatten().filter_map(move |t| {
                t.secret_name
                    .as_ref()
                    .map(|name| ObjectKey::new(key.namespace.clone(), name.clone()))
            })
        })
        .collect();
    snapshot.secrets.retain(|key, secret| {
        referenced.contains(key) && secret.type_.as_deref() == Some("kubernetes.io/tls")
    });
}

/// Reads a directory once (tests).
#[cfg(test)]
fn load_dir(dir: &Path) -> Result<(Snapshot, Vec<LoadWarning>), DirSourceError> {
    let mut source = DirSource::new(dir);
    Ok(source.refresh()?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sluice-source-file-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    fn service(name: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n"
        )
    }

    fn cluster_ips(snapshot: &Snapshot) -> Vec<String> {
        let ip = |svc: &Arc<k8s_openapi::api::core::v1::Service>| {
            svc.spec
                .as_ref()
                .and_then(|s| s.cluster_ip.clone())
                .unwrap_or_default()
        };
        snapshot
            .services
            .iter()
            .map(|(key, svc)| format!("{key}={}", ip(svc)))
            .collect()
    }

    fn messages(warnings: &[LoadWarning]) -> Vec<String> {
        warnings.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn refresh_reports_changes_only_when_files_change() {
        let dir = tempdir("refresh");
        std::fs::write(dir.join("a.yaml"), service("a", "10.96.0.1")).unwrap();
        std::fs::write(dir.join("notes.txt"), "not a manifest").unwrap();
        let mut source = DirSource::new(&dir);
        let (snap, warnings) = source.refresh().unwrap().expect("first read");
        assert!(warnings.is_empty());
        assert_eq!(snap.services.len(), 1);
        assert!(source.refresh().unwrap().is_none(), "nothing changed");

        std::fs::write(dir.join("b.yml"), service("b", "10.96.0.2")).unwrap();
        let (snap, _) = source.refresh().unwrap().expect("new file");
        assert_eq!(snap.services.len(), 2);

        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        let (snap, _) = source.refresh().unwrap().expect("removed file");
        assert_eq!(cluster_ips(&snap), ["default/b=10.96.0.2"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn duplicate_objects_warn_on_the_losing_copy_and_the_later_file_wins() {
        let dir = tempdir("dup");
        std::fs::write(dir.join("1.yaml"), service("a", "10.96.0.1")).unwrap();
        let two = format!(
            "{}---\n{}",
            service("x", "10.96.0.9"),
            service("a", "10.96.0.2")
        );
        std::fs::write(dir.join("2.yaml"), two).unwrap();
        let (snap, warnings) = load_dir(&dir).unwrap();
        assert_eq!(
            cluster_ips(&snap),
            ["default/a=10.96.0.2", "default/x=10.96.0.9"]
        );
        assert_eq!(
            messages(&warnings),
            [
                "1.yaml document 1: Service default/a: ignored: also defined in 2.yaml document 2, \
              which wins (the last definition in file-name and document order is used)"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_tls_secrets_referenced_by_an_ingress_are_kept() {
        let dir = tempdir("secrets");
        let text = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: cafe}\nspec:\n  tls: [{hosts: [cafe.example.com], secretName: cafe-secret}]\n---\n\
apiVersion: v1\nkind: Secret\nmetadata: {name: cafe-secret}\ntype: kubernetes.io/tls\ndata: {}\n---\n\
apiVersion: v1\nkind: Secret\nmetadata: {name: unrelated}\ntype: kubernetes.io/tls\ndata: {}\n";
        std::fs::write(dir.join("cafe.yaml"), text).unwrap();
        let (snap, warnings) = load_dir(&dir).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            snap.secrets
                .keys()
                .map(|k| k.name.as_str())
                .collect::<Vec<_>>(),
            ["cafe-secret"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Builds what the kubelet makes of a ConfigMap volume: `..<timestamp>/` with the files,
    /// `..data -> ..<timestamp>`, and one `key -> ..data/key` symlink per key.
    fn configmap_update(dir: &Path, version: &str, files: &[(&str, String)]) {
        let data = dir.join(format!("..{version}"));
        std::fs::create_dir(&data).unwrap();
        let fixed_time = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for (name, text) in files {
            std::fs::write(data.join(name), text).unwrap();
            let file = std::fs::File::options()
                .write(true)
                .open(data.join(name))
                .unwrap();
            file.set_modified(fixed_time).unwrap();
            let link = dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
        // Atomic swap, as the kubelet does it: a new symlink renamed over the old one.
        symlink(format!("..{version}"), dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    }

    #[test]
    fn a_configmap_volume_is_read_once_per_key_and_an_update_is_noticed() {
        let dir = tempdir("configmap");
        configmap_update(
            &dir,
            "2026_05_01_12_00_00.1",
            &[
                ("web.yaml", service("web", "10.96.0.1")),
                ("api.yaml", service("api", "10.96.0.2")),
            ],
        );
        let mut source = DirSource::new(&dir);
        let (snap, warnings) = source.refresh().unwrap().expect("first read");
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            cluster_ips(&snap),
            ["default/api=10.96.0.2", "default/web=10.96.0.1"]
        );
        assert!(source.refresh().unwrap().is_none(), "nothing changed");

        // Same length, same mtime, only the content and the `..data` target differ.
        configmap_update(
            &dir,
            "2026_05_01_12_05_00.2",
            &[
                ("web.yaml", service("web", "10.96.0.7")),
                ("api.yaml", service("api", "10.96.0.2")),
            ],
        );
        let (snap, warnings) = source.refresh().unwrap().expect("..data re-pointed");
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            cluster_ips(&snap),
            ["default/api=10.96.0.2", "default/web=10.96.0.7"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn symlink_cycles_dangling_links_and_non_files_are_warnings_not_hangs() {
        let dir = tempdir("links");
        std::fs::write(dir.join("good.yaml"), service("good", "10.96.0.1")).unwrap();
        symlink("good.yaml", dir.join("alias.yml")).unwrap();
        symlink("loop-b.yaml", dir.join("loop-a.yaml")).unwrap();
        symlink("loop-a.yaml", dir.join("loop-b.yaml")).unwrap();
        symlink("self.yaml", dir.join("self.yaml")).unwrap();
        symlink("missing.yaml", dir.join("dangling.yaml")).unwrap();
        symlink(".", dir.join("dir.yaml")).unwrap();
        symlink("/dev/zero", dir.join("zero.yaml")).unwrap();
        let mut source = DirSource::new(&dir);
        let (snap, warnings) = source.refresh().unwrap().expect("first read");
        assert_eq!(cluster_ips(&snap), ["default/good=10.96.0.1"]);
        let mut w = messages(&warnings);
        w.sort();
        assert_eq!(w.len(), 7, "{w:?}");
        assert!(w[0].starts_with("alias.yml document 1: Service default/good: ignored: also defined in good.yaml document 1"), "{w:?}");
        assert_eq!(
            w[1],
            "dangling.yaml: symlink points to \"missing.yaml\", which does not exist"
        );
        assert_eq!(
            w[2],
            "dir.yaml: not a regular file (a directory; subdirectories are not read); skipped"
        );
        for (i, name) in [(3, "loop-a.yaml"), (4, "loop-b.yaml"), (5, "self.yaml")] {
            assert!(
                w[i].starts_with(&format!(
                    "{name}: cannot follow symlink: Too many levels of symbolic links"
                )),
                "{w:?}"
            );
        }
        assert_eq!(w[6], "zero.yaml: not a regular file (a device); skipped");
        // Reported once, not on every poll.
        assert!(source.refresh().unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_over_the_size_limit_are_skipped_with_their_size() {
        let dir = tempdir("size");
        std::fs::write(dir.join("a.yaml"), service("a", "10.96.0.1")).unwrap();
        let big = format!("{}# {}\n", service("b", "10.96.0.2"), "x".repeat(2000));
        std::fs::write(dir.join("big.yaml"), &big).unwrap();
        let mut source = DirSource::new(&dir).with_max_file_size(1000);
        let (snap, warnings) = source.refresh().unwrap().expect("first read");
        assert_eq!(cluster_ips(&snap), ["default/a=10.96.0.1"]);
        assert_eq!(
            messages(&warnings),
            [format!(
                "big.yaml: file is {} bytes, more than the limit of 1000 bytes; skipped without reading it",
                big.len()
            )]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn run_publishes_initial_state_then_changes() {
        let dir = tempdir("run");
        std::fs::write(dir.join("a.yaml"), service("a", "10.96.0.1")).unwrap();
        let (tx, mut rx) = watch::channel(None);
        let task = tokio::spawn(
            DirSource::new(&dir)
                .with_poll_interval(Duration::from_millis(10))
                .run(tx),
        );
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow_and_update().as_ref().unwrap().services.len(), 1);
        std::fs::write(dir.join("b.yaml"), service("b", "10.96.0.2")).unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rx.borrow().as_ref().unwrap().services.len(), 2);
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn run_fails_clearly_on_a_missing_directory() {
        let (tx, _rx) = watch::channel(None);
        let err = DirSource::new("/nonexistent/sluice-manifests")
            .run(tx)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/sluice-manifests"),
            "{err}"
        );
    }
}

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sluice_model::{ObjectKey, Snapshot};
use tokio::sync::watch;

use crate::parse::{LoadWarning, ParsedFile, parse_manifests};

#[derive(Debug, thiserror::Error)]
pub enum DirSourceError {
    #[error("cannot read manifest directory {dir}: {source}")]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct FileStamp {
    len: u64,
    mtime_ns: i128,
    inode: u64,
}

struct CachedFile {
    stamp: FileStamp,
    parsed: ParsedFile,
}

/// Watches a directory of manifests and publishes a [`Snapshot`] whenever a file changes.
pub struct DirSource {
    dir: PathBuf,
    poll_interval: Duration,
    cache: BTreeMap<PathBuf, CachedFile>,
}

impl DirSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            poll_interval: Duration::from_millis(100),
            cache: BTreeMap::new(),
        }
    }

    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Re-reads changed files. Returns the new snapshot and this round's warnings when anything
    /// changed, `None` when nothing did.
    pub fn refresh(&mut self) -> Result<Option<(Snapshot, Vec<LoadWarning>)>, DirSourceError> {
        let files = list_manifest_files(&self.dir)?;
        let mut changed = false;
        let mut warnings = Vec::new();
        let present: BTreeSet<&PathBuf> = files.iter().map(|(p, _)| p).collect();
        let before = self.cache.len();
        self.cache.retain(|path, _| present.contains(path));
        changed |= self.cache.len() != before;

        for (path, stamp) in &files {
            if self.cache.get(path).is_some_and(|c| c.stamp == *stamp) {
                continue;
            }
            changed = true;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let parsed = match std::fs::read_to_string(path) {
                Ok(text) => parse_manifests(&name, &text),
                // Vanished between listing and reading (rename in progress): next poll sees it.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => ParsedFile {
                    warnings: vec![LoadWarning {
                        file: name,
                        document: 0,
                        message: format!("unreadable: {err}"),
                    }],
                    ..ParsedFile::default()
                },
            };
            warnings.extend(parsed.warnings.iter().cloned());
            self.cache.insert(
                path.clone(),
                CachedFile {
                    stamp: *stamp,
                    parsed,
                },
            );
        }
        if !changed {
            return Ok(None);
        }
        let (snapshot, merge_warnings) =
            merge(self.cache.iter().map(|(p, c)| (p.as_path(), &c.parsed)));
        warnings.extend(merge_warnings);
        Ok(Some((snapshot, warnings)))
    }

    /// Publishes the first snapshot after the first full read, then one per change. Runs until
    /// every receiver is gone. An unreadable directory keeps the last good state and retries.
    pub async fn run(
        mut self,
        tx: watch::Sender<Option<Arc<Snapshot>>>,
    ) -> Result<(), DirSourceError> {
        let mut reported_unreadable = false;
        loop {
            match self.refresh() {
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

fn list_manifest_files(dir: &Path) -> Result<Vec<(PathBuf, FileStamp)>, DirSourceError> {
    let read_err = |source| DirSourceError::ReadDir {
        dir: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let path = entry.path();
        let is_manifest = path
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json");
        // Editors and atomic writers leave dot-files (`.web.yaml.tmp`) around: skip them.
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !is_manifest || hidden {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        files.push((
            path,
            FileStamp {
                len: meta.len(),
                mtime_ns,
                inode: meta.ino(),
            },
        ));
    }
    files.sort();
    Ok(files)
}

/// Builds one snapshot from all files (in file-name order). A later file's object with the
/// same key replaces an earlier one, with a warning. Only TLS Secrets referenced by an Ingress
/// are kept, like the API source.
fn merge<'a>(
    files: impl Iterator<Item = (&'a Path, &'a ParsedFile)>,
) -> (Snapshot, Vec<LoadWarning>) {
    let mut snapshot = Snapshot::default();
    let mut warnings = Vec::new();
    for (path, parsed) in files {
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut dup = |kind: &str, key: &ObjectKey| {
            warnings.push(LoadWarning {
                file: file.clone(),
                document: 0,
                message: format!("{kind} {key} is defined more than once; this file's copy wins"),
            })
        };
        macro_rules! insert_all {
            ($field:ident, $kind:literal) => {
                for (key, object) in &parsed.$field {
                    if snapshot
                        .$field
                        .insert(key.clone(), Arc::clone(object))
                        .is_some()
                    {
                        dup($kind, key);
                    }
                }
            };
        }
        insert_all!(services, "Service");
        insert_all!(endpoint_slices, "EndpointSlice");
        insert_all!(nodes, "Node");
        insert_all!(ingresses, "Ingress");
        insert_all!(ingress_classes, "IngressClass");
        insert_all!(secrets, "Secret");
    }
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
    (snapshot, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a directory once.
    fn load_dir(dir: &Path) -> Result<(Snapshot, Vec<LoadWarning>), DirSourceError> {
        let mut source = DirSource::new(dir);
        Ok(source.refresh()?.unwrap_or_default())
    }

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
        assert_eq!(
            snap.services
                .keys()
                .map(|k| k.name.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn duplicate_objects_warn_and_the_later_file_wins() {
        let dir = tempdir("dup");
        std::fs::write(dir.join("1.yaml"), service("a", "10.96.0.1")).unwrap();
        std::fs::write(dir.join("2.yaml"), service("a", "10.96.0.2")).unwrap();
        let (snap, warnings) = load_dir(&dir).unwrap();
        let svc = &snap.services[&ObjectKey::new("default", "a")];
        assert_eq!(
            svc.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("10.96.0.2")
        );
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0]
                .to_string()
                .contains("Service default/a is defined more than once")
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

//! Polling the directory, caching what each file defines, and reporting what changed.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_model::{Snapshot, SourceBatch, SourceEvent, Store};
use tokio::sync::mpsc;

use crate::files::{self, Listed, Stamp};
use crate::load::load_all;
use crate::merge::{FileUpdate, Merge};
use crate::parse::Limits;
use crate::warning::LoadWarning;

#[derive(Debug, thiserror::Error)]
pub enum DirSourceError {
    #[error("cannot read manifest directory {dir}")]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What one [`DirSource::refresh`] found: the events for the changed objects, and warnings.
pub type Refreshed = (Vec<SourceEvent>, Vec<LoadWarning>);

/// Watches a directory of manifests and reports every changed object as a [`SourceEvent`].
///
/// Files are re-read when their size, mtime, inode or symlink target changes (polling: it
/// works for files replaced by rename and for ConfigMap volumes; inotify only makes the next
/// poll come at once after a change).
/// Each file is parsed on its own and what it defines is cached, so a change costs a re-parse
/// of that file and work proportional to its objects: only the objects whose winning
/// definition differs are reported.
pub struct DirSource {
    dir: PathBuf,
    poll_interval: Duration,
    limits: Limits,
    /// The stamp of each file as last read.
    stamps: HashMap<OsString, Stamp>,
    merge: Merge,
}

impl DirSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            poll_interval: Duration::from_millis(100),
            limits: Limits::default(),
            stamps: HashMap::new(),
            merge: Merge::default(),
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

    /// Re-reads changed files. Returns the events for the objects that changed (the first
    /// call: every object) and this round's warnings (about the files read in this round, and
    /// every losing copy of an object they define), or `None` when no file changed. Blocking:
    /// reads files and parses YAML.
    pub fn refresh(&mut self) -> Result<Option<Refreshed>, DirSourceError> {
        Ok(self.poll()?.map(|(refreshed, _)| refreshed))
    }

    /// [`refresh`](Self::refresh), and when the poll knew what changed: where the work of a
    /// change starts (listing and comparing the stamps of every file is the cost of every
    /// poll, change or not).
    fn poll(&mut self) -> Result<Option<(Refreshed, Instant)>, DirSourceError> {
        let files = files::list(&self.dir).map_err(|source| DirSourceError::ReadDir {
            dir: self.dir.clone(),
            source,
        })?;
        let present: HashSet<&OsStr> = files.iter().map(|f| f.file.as_os_str()).collect();
        let mut updates: Vec<FileUpdate> = self
            .merge
            .files()
            .filter(|file| !present.contains(file))
            .map(|file| (file.to_owned(), None))
            .collect();
        self.stamps
            .retain(|file, _| present.contains(file.as_os_str()));
        let changed: Vec<Listed> = files
            .into_iter()
            .filter(|listed| self.stamps.get(&listed.file) != Some(&listed.stamp))
            .collect();
        let seen = Instant::now();
        let loaded = load_all(&self.dir, &changed, &self.limits);
        let mut warnings = Vec::new();
        for (listed, loaded) in changed.into_iter().zip(loaded) {
            let Some((file_warnings, objects)) = loaded else {
                // Vanished since the listing: gone, unless it comes back next round.
                if self.stamps.remove(&listed.file).is_some() || self.merge.contains(&listed.file) {
                    updates.push((listed.file, None));
                }
                continue;
            };
            warnings.extend(file_warnings);
            self.stamps.insert(listed.file.clone(), listed.stamp);
            updates.push((listed.file, Some(objects)));
        }
        if updates.is_empty() {
            return Ok(None);
        }
        let (events, duplicates) = self.merge.update(updates);
        warnings.extend(duplicates);
        Ok(Some(((events, warnings), seen)))
    }

    /// Reports every object after the first full read (then [`SourceEvent::Synced`]), then
    /// the objects each change touches. Runs until the receiver is gone. An unreadable
    /// directory keeps the last good state and retries.
    ///
    /// Polling, reading and parsing run on a thread of tokio's blocking pool, never on the
    /// async workers: a slow file cannot stall the rest of the agent. That thread hands each
    /// batch to the receiver itself (no task in between to wake), and notices within a poll
    /// interval that the receiver is gone.
    pub async fn run(self, tx: mpsc::Sender<SourceBatch>) -> Result<(), DirSourceError> {
        match tokio::task::spawn_blocking(move || self.run_blocking(&tx)).await {
            Ok(result) => result,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(_) => Ok(()), // the runtime is shutting down
        }
    }

    fn run_blocking(mut self, tx: &mpsc::Sender<SourceBatch>) -> Result<(), DirSourceError> {
        let mut reported_unreadable = false;
        let mut synced = false;
        let wake = crate::wake::DirWake::new(&self.dir);
        loop {
            let (mut events, seen) = match self.poll() {
                Ok(Some(((events, warnings), seen))) => {
                    reported_unreadable = false;
                    for warning in &warnings {
                        tracing::warn!(dir = %self.dir.display(), "skipped manifest: {warning}");
                    }
                    (events, seen)
                }
                Ok(None) => {
                    reported_unreadable = false;
                    (Vec::new(), Instant::now())
                }
                // The first read must succeed: a wrong path is a configuration error.
                Err(err) if !synced => return Err(err),
                Err(err) => {
                    if !reported_unreadable {
                        tracing::warn!("{err}; keeping the last good state");
                        reported_unreadable = true;
                    }
                    (Vec::new(), Instant::now())
                }
            };
            if !synced {
                synced = true;
                events.push(SourceEvent::Synced);
            }
            let batch = SourceBatch::new(events, seen);
            if !batch.events.is_empty() && tx.blocking_send(batch).is_err() || tx.is_closed() {
                return Ok(());
            }
            wake.wait(self.poll_interval);
        }
    }
}

/// Reads a directory once: its objects and the warnings about it (`sluice plan`, tests).
pub fn load_dir(dir: &Path) -> Result<(Snapshot, Vec<LoadWarning>), DirSourceError> {
    let mut source = DirSource::new(dir);
    let (events, warnings) = source.refresh()?.unwrap_or_default();
    let mut store = Store::new();
    store.apply_all(events);
    Ok((store.into_snapshot(), warnings))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::sync::Arc;

    use sluice_model::{Object, ObjectKey, SnapshotKind};

    use super::*;

    /// A source and the store a consumer keeps from its events.
    struct Reader {
        source: DirSource,
        store: Store,
        /// The events of the last refresh.
        events: Vec<SourceEvent>,
    }

    impl Reader {
        fn new(source: DirSource) -> Self {
            Self {
                source,
                store: Store::new(),
                events: Vec::new(),
            }
        }

        /// `DirSource::refresh`, with the consumer's snapshot after the events.
        fn refresh(&mut self) -> Result<Option<(Snapshot, Vec<LoadWarning>)>, DirSourceError> {
            let Some((events, warnings)) = self.source.refresh()? else {
                return Ok(None);
            };
            self.store.apply_all(events.clone());
            self.events = events;
            Ok(Some((self.store.snapshot().clone(), warnings)))
        }

        /// `kind namespace/name` of each event of the last refresh.
        fn changed(&self) -> Vec<String> {
            let name = |kind: SnapshotKind, key: &ObjectKey| format!("{} {key}", kind.kind_name());
            self.events
                .iter()
                .map(|event| match event {
                    SourceEvent::Apply(key, object) => name(object.kind(), key),
                    SourceEvent::Delete(kind, key) => format!("-{}", name(*kind, key)),
                    other => format!("{other:?}"),
                })
                .collect()
        }
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
        let mut source = Reader::new(DirSource::new(&dir));
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
    fn only_secrets_referenced_by_an_ingress_are_kept() {
        let dir = tempdir("secrets");
        let text = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: cafe}\nspec:\n  tls: [{hosts: [cafe.example.com], secretName: cafe-secret}]\n---\n\
apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: private\n  annotations:\n    nginx.ingress.kubernetes.io/auth-secret: basic-auth\n    nginx.ingress.kubernetes.io/proxy-ssl-secret: certs/ca\nspec: {}\n---\n\
apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: odd\n  annotations: {nginx.ingress.kubernetes.io/auth-secret: token}\nspec: {}\n---\n\
apiVersion: v1\nkind: Secret\nmetadata: {name: cafe-secret}\ntype: kubernetes.io/tls\ndata: {}\n---\n\
apiVersion: v1\nkind: Secret\nmetadata: {name: basic-auth}\ntype: Opaque\ndata: {}\n---\n\
apiVersion: v1\nkind: Secret\nmetadata: {name: ca, namespace: certs}\ndata: {}\n---\n\
apiVersion: v1\nkind: Secret\nmetadata: {name: token}\ntype: kubernetes.io/service-account-token\ndata: {}\n---\n\
apiVersion: v1\nkind: Secret\nmetadata: {name: unrelated}\ntype: kubernetes.io/tls\ndata: {}\n";
        std::fs::write(dir.join("cafe.yaml"), text).unwrap();
        let (snap, warnings) = load_dir(&dir).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        // The token Secret is named by an annotation, but of a type never read.
        assert_eq!(
            snap.secrets
                .keys()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["certs/ca", "default/basic-auth", "default/cafe-secret"]
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
        let mut source = Reader::new(DirSource::new(&dir));
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
        let mut source = Reader::new(DirSource::new(&dir));
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
        let mut source = Reader::new(DirSource::new(&dir).with_max_file_size(1000));
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
    async fn run_reports_every_object_then_synced_then_changes() {
        let dir = tempdir("run");
        std::fs::write(dir.join("a.yaml"), service("a", "10.96.0.1")).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(
            DirSource::new(&dir)
                .with_poll_interval(Duration::from_millis(10))
                .run(tx),
        );
        let first = rx.recv().await.unwrap();
        assert!(
            matches!(first.events.as_slice(),
            [SourceEvent::Apply(key, Object::Service(_)), SourceEvent::Synced] if key.name == "a"),
            "{:?}",
            first.events
        );
        std::fs::write(dir.join("b.yaml"), service("b", "10.96.0.2")).unwrap();
        let second = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(second.events.as_slice(),
            [SourceEvent::Apply(key, _)] if key.name == "b"),
            "{:?}",
            second.events
        );
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_empty_directory_is_synced_too() {
        let dir = tempdir("empty");
        let (tx, mut rx) = mpsc::channel(4);
        let _task = tokio::spawn(DirSource::new(&dir).run(tx));
        let first = rx.recv().await.unwrap();
        assert_eq!(first.events, [SourceEvent::Synced]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_changed_file_reports_only_the_objects_that_differ() {
        let dir = tempdir("one-change");
        let many = |changed_ip: &str| {
            (0..50)
                .map(|i| {
                    let ip = if i == 7 {
                        changed_ip.to_owned()
                    } else {
                        format!("10.96.1.{i}")
                    };
                    service(&format!("s{i}"), &ip)
                })
                .collect::<Vec<_>>()
                .join("---\n")
        };
        std::fs::write(dir.join("many.yaml"), many("10.96.1.7")).unwrap();
        std::fs::write(dir.join("other.yaml"), service("other", "10.96.0.1")).unwrap();
        let mut source = Reader::new(DirSource::new(&dir));
        let (snap, _) = source.refresh().unwrap().expect("first read");
        assert_eq!(snap.services.len(), 51);
        assert_eq!(source.events.len(), 51);

        std::fs::write(dir.join("many.yaml"), many("10.96.2.7")).unwrap();
        let (snap, _) = source.refresh().unwrap().expect("changed file");
        assert_eq!(source.changed(), ["Service default/s7"]);
        let s7 = &snap.services[&ObjectKey::new("default", "s7")];
        assert_eq!(
            s7.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("10.96.2.7")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn when_the_winning_copy_goes_the_other_one_is_reported() {
        let dir = tempdir("winner");
        std::fs::write(dir.join("1.yaml"), service("a", "10.96.0.1")).unwrap();
        std::fs::write(dir.join("2.yaml"), service("a", "10.96.0.2")).unwrap();
        let mut source = Reader::new(DirSource::new(&dir));
        let (snap, warnings) = source.refresh().unwrap().expect("first read");
        assert_eq!(cluster_ips(&snap), ["default/a=10.96.0.2"]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        std::fs::remove_file(dir.join("2.yaml")).unwrap();
        let (snap, warnings) = source.refresh().unwrap().expect("winner removed");
        assert_eq!(cluster_ips(&snap), ["default/a=10.96.0.1"]);
        assert_eq!(source.changed(), ["Service default/a"]);
        assert!(warnings.is_empty(), "{warnings:?}");
        std::fs::remove_file(dir.join("1.yaml")).unwrap();
        let (snap, _) = source.refresh().unwrap().expect("last copy removed");
        assert!(snap.services.is_empty());
        assert_eq!(source.changed(), ["-Service default/a"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_secret_is_reported_when_an_ingress_starts_referencing_it_and_withdrawn_after() {
        let dir = tempdir("secret-refs");
        let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: cert}\ntype: kubernetes.io/tls\ndata: {}\n";
        let ingress = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: shop}\nspec:\n  tls: [{secretName: cert}]\n";
        std::fs::write(dir.join("secret.yaml"), secret).unwrap();
        let mut source = Reader::new(DirSource::new(&dir));
        let (snap, _) = source.refresh().unwrap().expect("first read");
        assert!(snap.secrets.is_empty());
        assert!(source.changed().is_empty(), "{:?}", source.changed());
        std::fs::write(dir.join("shop.yaml"), ingress).unwrap();
        let (snap, _) = source.refresh().unwrap().expect("ingress added");
        assert_eq!(
            source.changed(),
            ["Ingress default/shop", "Secret default/cert"]
        );
        assert_eq!(snap.secrets.len(), 1);
        std::fs::remove_file(dir.join("shop.yaml")).unwrap();
        let (snap, _) = source.refresh().unwrap().expect("ingress removed");
        assert_eq!(
            source.changed(),
            ["-Ingress default/shop", "-Secret default/cert"]
        );
        assert!(snap.secrets.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stored_objects_are_compacted() {
        let dir = tempdir("compact");
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  annotations: {kubectl.kubernetes.io/last-applied-configuration: '{}'}\n  managedFields: [{manager: kubectl}]\nspec: {clusterIP: 10.96.0.1, selector: {app: a}, ports: [{port: 80}]}\n";
        std::fs::write(dir.join("a.yaml"), text).unwrap();
        let (snap, _) = load_dir(&dir).unwrap();
        let a: &Arc<k8s_openapi::api::core::v1::Service> =
            &snap.services[&ObjectKey::new("default", "a")];
        assert!(a.metadata.annotations.is_none() && a.metadata.managed_fields.is_none());
        assert!(a.spec.as_ref().unwrap().selector.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn run_fails_clearly_on_a_missing_directory() {
        let (tx, _rx) = mpsc::channel(1);
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

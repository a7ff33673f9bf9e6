//! What ends the wait between two polls: the poll interval, or sooner an inotify event on
//! the directory (a file written and closed, renamed in or out, or deleted), so that a change
//! is read within milliseconds instead of up to a poll interval later. Polling stays the
//! ground truth (it sees everything, inotify or not); without inotify (no instance left,
//! another kind of filesystem) only the interval ends the wait.
//!
//! Not watched: `IN_CREATE` and `IN_MODIFY`, which fire while a file is still being written
//! (a half-written file would be read as a broken one). A ConfigMap volume's update is a
//! rename of its `..data` link (`IN_MOVED_TO`).

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::sync::Notify;

pub(crate) struct DirWake {
    /// Notified by the thread that reads the directory's inotify events.
    changed: Option<Arc<Notify>>,
}

impl DirWake {
    /// Watches `dir`; falls back to the interval alone when it cannot (logged at debug).
    pub(crate) fn new(dir: &Path) -> Self {
        let changed = Arc::new(Notify::new());
        let watching = watch(dir, Arc::downgrade(&changed))
            .map_err(|err| {
                tracing::debug!(dir = %dir.display(), error = %err, "manifest directory: no inotify, polling only");
            })
            .is_ok();
        Self {
            changed: watching.then_some(changed),
        }
    }

    /// Returns after `interval`, or as soon as the directory reports a change. Events that
    /// arrive meanwhile are folded into one wake-up: one read of the directory follows a burst.
    pub(crate) async fn wait(&self, interval: Duration) {
        match &self.changed {
            Some(changed) => {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {},
                    () = changed.notified() => {},
                }
            }
            None => tokio::time::sleep(interval).await,
        }
    }
}

/// Starts a thread that blocks on the directory's inotify events and notifies `changed`
/// for each read; it ends with the source (at the first event after `changed` is gone).
/// A thread with a blocking read rather than tokio's reactor: registering a descriptor with
/// the reactor takes `unsafe`, and this crate has none.
fn watch(dir: &Path, changed: Weak<Notify>) -> Result<(), Errno> {
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC)?;
    inotify.add_watch(
        dir,
        AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_ATTRIB,
    )?;
    std::thread::Builder::new()
        .name("sluice-dir-watch".into())
        .spawn(move || {
            loop {
                match inotify.read_events() {
                    Ok(_) => match changed.upgrade() {
                        Some(changed) => changed.notify_one(),
                        None => return,
                    },
                    Err(Errno::EINTR) => {}
                    Err(_) => return,
                }
            }
        })
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use sluice_model::{SourceBatch, SourceEvent};
    use tokio::sync::mpsc;

    use crate::DirSource;

    fn service(name: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{namespace: default, name: {name}}}\n\
             spec: {{clusterIP: 10.96.0.10, ports: [{{port: 80}}]}}\n"
        )
    }

    /// The names of the Services a batch applies.
    fn applied(batch: &SourceBatch) -> Vec<String> {
        batch
            .events
            .iter()
            .filter_map(|e| match e {
                SourceEvent::Apply(key, _) => Some(key.name.to_string()),
                _ => None,
            })
            .collect()
    }

    async fn next(rx: &mut mpsc::Receiver<SourceBatch>) -> SourceBatch {
        tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv())
            .await
            .expect("a batch before the next poll")
            .expect("the source runs")
    }

    /// With an hour between polls, only the directory's events can bring these changes in.
    #[tokio::test]
    async fn a_written_or_renamed_file_is_read_without_waiting_for_the_poll() {
        let dir = std::env::temp_dir().join(format!("sluice-wake-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), service("a")).unwrap();
        let source = DirSource::new(&dir).with_poll_interval(std::time::Duration::from_secs(3600));
        let (tx, mut rx) = mpsc::channel(8);
        let running = tokio::spawn(source.run(tx));
        assert_eq!(applied(&next(&mut rx).await), ["a"]);

        std::fs::write(dir.join("b.yaml"), service("b")).unwrap();
        assert_eq!(applied(&next(&mut rx).await), ["b"]);

        // Written elsewhere and renamed in, as `kubectl cp`, editors and ConfigMaps do.
        let outside = dir.with_extension("tmp");
        std::fs::write(&outside, service("c")).unwrap();
        std::fs::rename(&outside, dir.join("c.yaml")).unwrap();
        assert_eq!(applied(&next(&mut rx).await), ["c"]);

        running.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

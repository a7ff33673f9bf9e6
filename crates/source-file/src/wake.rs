//! What ends the wait between two polls: the poll interval, or sooner an inotify event on
//! the directory (a file written and closed, renamed in or out, or deleted), so that a change
//! is read within milliseconds instead of up to a poll interval later. Polling stays the
//! ground truth (it sees everything, inotify or not); without inotify (no instance left,
//! another kind of filesystem) only the interval ends the wait.
//!
//! Not watched: `IN_CREATE` and `IN_MODIFY`, which fire while a file is still being written
//! (a half-written file would be read as a broken one). A ConfigMap volume's update is a
//! rename of its `..data` link (`IN_MOVED_TO`).

use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// Waits on the poll thread (the source's loop is blocking).
pub(crate) struct DirWake {
    inotify: Option<Inotify>,
}

impl DirWake {
    /// Watches `dir`; falls back to the interval alone when it cannot (logged at debug).
    pub(crate) fn new(dir: &Path) -> Self {
        let inotify = watch(dir)
            .map_err(|err| {
                tracing::debug!(dir = %dir.display(), error = %err, "manifest directory: no inotify, polling only");
            })
            .ok();
        Self { inotify }
    }

    /// Returns after `interval`, or as soon as the directory reports a change. Every event
    /// queued by then is consumed: one read of the directory follows a burst.
    pub(crate) fn wait(&self, interval: Duration) {
        let Some(inotify) = &self.inotify else {
            std::thread::sleep(interval);
            return;
        };
        let timeout = PollTimeout::try_from(interval).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => {}
            Ok(_) => while matches!(inotify.read_events(), Ok(events) if !events.is_empty()) {},
            // Interrupted: the caller polls the directory and comes back.
            Err(_) => {}
        }
    }
}

fn watch(dir: &Path) -> nix::Result<Inotify> {
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    inotify.add_watch(
        dir,
        AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_ATTRIB,
    )?;
    Ok(inotify)
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

        // The source stops once its receiver is gone and it wakes (the removal wakes it).
        drop(rx);
        std::fs::remove_dir_all(&dir).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(20), running)
            .await
            .expect("the source stops")
            .expect("no panic")
            .expect("no error");
    }
}

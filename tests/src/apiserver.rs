//! Helpers for running agents with `--source k8s` against an API server inside the cluster
//! (the fake of `crates/k8s/tests/fake_apiserver/`, included by the test files with `#[path]`).

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::netns;

/// A listening TCP socket on `addr` inside network namespace `netns` (bound from a thread
/// that entered it; the socket stays in that namespace). Non-blocking, for tokio.
pub fn tcp_listener_in(netns: &str, addr: SocketAddr) -> Result<std::net::TcpListener> {
    let path = netns::path(netns);
    std::thread::spawn(move || -> Result<std::net::TcpListener> {
        let ns =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: setns on this thread only, with a valid namespace fd.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns");
        }
        let listener = std::net::TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("listener thread panicked"))?
}

/// Writes a kubeconfig for the API server at `url` (no credentials) into `dir`.
pub fn write_kubeconfig(dir: &Path, url: &str) -> Result<PathBuf> {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{url}\"}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\ncurrent-context: fake\n\
             users: [{{name: fake, user: {{}}}}]\n"
        ),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

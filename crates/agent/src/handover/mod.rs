//! Restarts without failures: a new agent takes the very same listening sockets over from the
//! agent running on the node, and the old one drains.
//!
//! Why handing the sockets over rather than binding a second socket with `SO_REUSEPORT`:
//! with two sockets the kernel spreads new connections over both accept queues, and the
//! connections queued in the old socket's queue when it closes are reset. One shared socket
//! (HAProxy's `-x` / `_getsocks`, Envoy's hot restart) has one queue: whichever process
//! accepts, nothing queued is lost, and the old process stops accepting simply by closing its
//! descriptor.
//!
//! The sequence (a DaemonSet rolling update with `maxSurge: 1, maxUnavailable: 0`):
//!
//! 1. The new agent connects to `<admin socket>.handover.sock` before binding anything and
//!    receives every listening socket of the old one (Ingress, healthz, metrics, health check
//!    node ports) over `SCM_RIGHTS` ([`protocol`]). No agent there: it binds afresh.
//! 2. The old agent stops accepting on healthz and metrics (they report the new agent from
//!    now on) but goes on serving the Ingress.
//! 3. The new agent syncs; then it accepts on the Ingress listeners and says `ready`.
//! 4. The old agent stops accepting, drains (crates/ingress `drain`), stops its sync loop and
//!    waits for SIGTERM (a DaemonSet container that exits on its own is restarted). If the
//!    new agent goes away before `ready`, the old one serves on as before.

pub mod fdpass;
pub mod protocol;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

use self::fdpass::{FdPassing, ScmRights};
use self::protocol::Predecessor;

/// Where this agent stands with a successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Succession {
    /// No successor: this agent serves everything.
    Alone,
    /// A new agent took the listeners and is starting: it answers healthz and metrics, this
    /// agent still serves the Ingress.
    Starting,
    /// The new agent accepts on every listener: this agent retires.
    Ready,
}

/// How long taking over may take before the new agent gives up (and exits).
const TAKE_OVER_TIMEOUT: Duration = Duration::from_secs(5);

/// Every listening socket this agent holds, by address, so that a successor can take them
/// over; and the ones inherited from the predecessor, until claimed.
#[derive(Debug, Default)]
pub struct Listeners {
    state: Mutex<ListenerState>,
}

#[derive(Debug, Default)]
struct ListenerState {
    inherited: BTreeMap<SocketAddr, std::net::TcpListener>,
    /// A duplicate of each listener in use, to offer.
    held: BTreeMap<SocketAddr, OwnedFd>,
    /// Shutting down: nothing is offered any more.
    closed: bool,
}

impl Listeners {
    pub fn new(inherited: Vec<(SocketAddr, std::net::TcpListener)>) -> Self {
        Self {
            state: Mutex::new(ListenerState {
                inherited: inherited.into_iter().collect(),
                ..ListenerState::default()
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ListenerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The listener on `addr`: the predecessor's if it handed one over, else `bind()`'s.
    /// Offered to a successor until [`release`](Self::release)d.
    pub fn tcp(
        &self,
        addr: SocketAddr,
        bind: impl FnOnce() -> io::Result<std::net::TcpListener>,
    ) -> io::Result<std::net::TcpListener> {
        let inherited = self.state().inherited.remove(&addr);
        let taken_over = inherited.is_some();
        let listener = match inherited {
            Some(listener) => listener,
            None => bind()?,
        };
        let local = listener.local_addr()?;
        let dup = listener.as_fd().try_clone_to_owned()?;
        let mut state = self.state();
        if !state.closed {
            state.held.insert(local, dup);
        }
        if taken_over {
            tracing::info!(%local, "listening on the socket taken over from the previous agent");
        }
        Ok(listener)
    }

    /// The listener on `addr` is closed: no longer offered.
    pub fn release(&self, addr: SocketAddr) {
        self.state().held.remove(&addr);
    }

    /// Duplicates of every listener in use, for a successor.
    pub fn offer(&self) -> io::Result<Vec<(SocketAddr, OwnedFd)>> {
        let state = self.state();
        state
            .held
            .iter()
            .map(|(addr, fd)| Ok((*addr, fd.try_clone()?)))
            .collect()
    }

    /// Inherited listeners nothing claimed (an address no longer configured, a health check
    /// port no longer needed) are closed; returns their addresses.
    pub fn drop_unclaimed(&self) -> Vec<SocketAddr> {
        let unclaimed = std::mem::take(&mut self.state().inherited);
        unclaimed.into_keys().collect()
    }

    /// Shutting down: offer nothing more and let go of the duplicates, so that each socket
    /// closes with its server (unless a successor holds it).
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        state.held.clear();
        state.inherited.clear();
    }
}

/// [`Listeners`] as the Ingress proxy's listener source.
pub struct IngressSource<'a>(pub &'a Listeners);

impl sluice_ingress::ListenerSource for IngressSource<'_> {
    fn listener(&mut self, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
        self.0.tcp(addr, || sluice_ingress::bind_listener(addr))
    }
}

/// The handover socket next to the admin socket: `/run/sluice/admin.sock` →
/// `/run/sluice/admin.handover.sock`.
pub fn socket_path(admin_socket: &Path) -> PathBuf {
    admin_socket.with_extension("handover.sock")
}

/// This agent's part in restarts.
pub struct Restarts {
    pub listeners: Arc<Listeners>,
    predecessor: Mutex<Option<Predecessor>>,
    path: Option<PathBuf>,
    succession: Arc<watch::Sender<Succession>>,
    transport: Arc<dyn FdPassing>,
}

impl Restarts {
    /// Takes the listeners over from the agent serving on the handover socket, if one runs.
    /// Without `admin_socket` there is no handover: everything is bound afresh.
    pub async fn take_over(admin_socket: Option<&Path>) -> anyhow::Result<Self> {
        Self::take_over_with(admin_socket.map(socket_path), Arc::new(ScmRights)).await
    }

    pub async fn take_over_with(
        path: Option<PathBuf>,
        transport: Arc<dyn FdPassing>,
    ) -> anyhow::Result<Self> {
        let taken = match &path {
            Some(path) => {
                let (path, transport) = (path.clone(), Arc::clone(&transport));
                tokio::task::spawn_blocking(move || {
                    protocol::take_over(&path, transport.as_ref(), TAKE_OVER_TIMEOUT)
                })
                .await
                .context("handover task")?
                .context("taking the listeners over from the running agent")?
            }
            None => None,
        };
        let (predecessor, inherited) = match taken {
            Some(protocol::TakenOver {
                predecessor,
                listeners: inherited,
            }) => {
                tracing::info!(
                    previous_agent_pid = ?predecessor.pid,
                    listeners = inherited.len(),
                    "an agent runs on this node: took its listening sockets over; it drains once this agent has synced"
                );
                (Some(predecessor), inherited)
            }
            None => (None, Vec::new()),
        };
        Ok(Self {
            listeners: Arc::new(Listeners::new(inherited)),
            predecessor: Mutex::new(predecessor),
            path,
            succession: Arc::new(watch::channel(Succession::Alone).0),
            transport,
        })
    }

    /// Serves successors on the handover socket until `shutdown` (none without a path).
    pub async fn serve(self: Arc<Self>, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let Some(path) = &self.path else {
            let mut shutdown = shutdown;
            let _ = shutdown.wait_for(|s| *s).await;
            return Ok(());
        };
        let (listener, ours) = bind_socket(path)?;
        tracing::info!(socket = %path.display(), "handover socket listening");
        protocol::serve(
            listener,
            Arc::clone(&self.listeners),
            Arc::clone(&self.transport),
            Arc::clone(&self.succession),
            shutdown,
        )
        .await;
        remove_socket_if_ours(path, ours);
        Ok(())
    }

    /// This agent's successor's progress.
    pub fn succession(&self) -> watch::Receiver<Succession> {
        self.succession.subscribe()
    }

    /// Whether a new agent took the listeners over (then this one must not release what the
    /// node's agent holds, e.g. its Leases: the new agent holds them under the same name).
    pub fn has_successor(&self) -> bool {
        *self.succession.borrow() != Succession::Alone
    }

    /// This agent has synced and accepts on its listeners: inherited listeners nothing
    /// claimed are closed and the previous agent is told to retire.
    pub fn serving(&self) {
        let unclaimed = self.listeners.drop_unclaimed();
        if !unclaimed.is_empty() {
            tracing::info!(
                ?unclaimed,
                "closed the listeners taken over that this agent does not use"
            );
        }
        let predecessor = self
            .predecessor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(predecessor) = predecessor {
            tracing::info!(previous_agent_pid = ?predecessor.pid, "accepting on the listeners taken over: the previous agent retires");
            predecessor.ready();
        }
    }
}

/// Identity of a socket file, to remove it at exit only while it is still ours (a successor
/// replaces it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketFile {
    dev: u64,
    ino: u64,
}

impl SocketFile {
    pub fn of(path: &Path) -> io::Result<Self> {
        let meta = std::fs::symlink_metadata(path)?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// Binds a Unix socket at `path` (replacing whatever is there), mode 0600.
pub fn bind_socket(path: &Path) -> anyhow::Result<(tokio::net::UnixListener, SocketFile)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("removing {}", path.display())),
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    let file = SocketFile::of(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((listener, file))
}

/// Removes `path` if it is still the socket this agent bound.
pub fn remove_socket_if_ours(path: &Path, ours: SocketFile) {
    if SocketFile::of(path).is_ok_and(|now| now == ours) {
        let _ = std::fs::remove_file(path);
    }
}

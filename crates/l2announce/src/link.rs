//! The seam between the responder and the network: one Ethernet interface that receives ARP
//! requests and neighbour solicitations, sends frames, and joins multicast groups. The real
//! implementation is [`crate::PacketLink`]; [`FakeLink`] is the in-memory double.

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::net::Ipv6Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use crate::packet::Mac;

/// One interface the responder answers on.
pub trait Link: Send + Sync {
    /// Interface name (for logs).
    fn name(&self) -> &str;
    /// The MAC address answers carry.
    fn mac(&self) -> Mac;
    /// Waits for the next frame that may be a request (ARP, or IPv6 neighbour solicitation);
    /// returns its length in `buf`.
    fn recv(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<usize>> + Send;
    /// Sends one complete Ethernet frame.
    fn send(&self, frame: &[u8]) -> io::Result<()>;
    /// Joins an IPv6 multicast group on this interface (solicited-node groups).
    fn join_group(&self, group: Ipv6Addr) -> io::Result<()>;
    /// Leaves an IPv6 multicast group.
    fn leave_group(&self, group: Ipv6Addr) -> io::Result<()>;
}

#[derive(Debug, Default)]
struct FakeState {
    sent: Vec<Vec<u8>>,
    groups: BTreeSet<Ipv6Addr>,
    failing_sends: u32,
    failing_joins: u32,
}

/// In-memory [`Link`]: frames are injected through its [`FakeHandle`], sent frames and
/// joined groups are recorded there, and sends, joins and receives can fail on demand.
#[derive(Debug)]
pub struct FakeLink {
    name: String,
    mac: Mac,
    inbound: tokio::sync::Mutex<mpsc::UnboundedReceiver<io::Result<Vec<u8>>>>,
    state: Arc<Mutex<FakeState>>,
    sent: Arc<Notify>,
}

/// The test's side of a [`FakeLink`].
#[derive(Debug, Clone)]
pub struct FakeHandle {
    inbound: mpsc::UnboundedSender<io::Result<Vec<u8>>>,
    state: Arc<Mutex<FakeState>>,
    sent: Arc<Notify>,
}

impl FakeLink {
    pub fn new(name: &str, mac: Mac) -> (FakeLink, FakeHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(Mutex::new(FakeState::default()));
        let sent = Arc::new(Notify::new());
        let link = FakeLink {
            name: name.to_string(),
            mac,
            inbound: tokio::sync::Mutex::new(rx),
            state: Arc::clone(&state),
            sent: Arc::clone(&sent),
        };
        let handle = FakeHandle {
            inbound: tx,
            state,
            sent,
        };
        (link, handle)
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Link for FakeLink {
    fn name(&self) -> &str {
        &self.name
    }

    fn mac(&self) -> Mac {
        self.mac
    }

    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let next = self.inbound.lock().await.recv().await;
        match next {
            Some(Ok(frame)) => {
                let len = frame.len().min(buf.len());
                buf[..len].copy_from_slice(&frame[..len]);
                Ok(len)
            }
            Some(Err(error)) => Err(error),
            // The handle is gone: a quiet link.
            None => std::future::pending().await,
        }
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        let mut state = self.state();
        if state.failing_sends > 0 {
            state.failing_sends -= 1;
            return Err(io::Error::other("injected send failure"));
        }
        state.sent.push(frame.to_vec());
        drop(state);
        self.sent.notify_waiters();
        Ok(())
    }

    fn join_group(&self, group: Ipv6Addr) -> io::Result<()> {
        let mut state = self.state();
        if state.failing_joins > 0 {
            state.failing_joins -= 1;
            return Err(io::Error::other("injected join failure"));
        }
        state.groups.insert(group);
        Ok(())
    }

    fn leave_group(&self, group: Ipv6Addr) -> io::Result<()> {
        self.state().groups.remove(&group);
        Ok(())
    }
}

impl FakeHandle {
    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Delivers a frame to the link.
    pub fn inject(&self, frame: Vec<u8>) {
        // The link may be gone (responder stopped): then nobody listens, as on a wire.
        let _ = self.inbound.send(Ok(frame));
    }

    /// Makes the link's next `recv` fail.
    pub fn inject_receive_error(&self, error: io::Error) {
        let _ = self.inbound.send(Err(error));
    }

    /// The next `n` sends fail.
    pub fn fail_sends(&self, n: u32) {
        self.state().failing_sends = n;
    }

    /// The next `n` group joins fail.
    pub fn fail_joins(&self, n: u32) {
        self.state().failing_joins = n;
    }

    /// Every frame sent so far, and forgets them.
    pub fn take_sent(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.state().sent)
    }

    /// The multicast groups currently joined.
    pub fn groups(&self) -> BTreeSet<Ipv6Addr> {
        self.state().groups.clone()
    }

    /// Waits until at least `n` frames were sent (since the last [`FakeHandle::take_sent`])
    /// or `timeout` passed; returns how many were sent.
    pub async fn wait_sent(&self, n: usize, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.sent.notified();
            let count = self.state().sent.len();
            if count >= n {
                return count;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.state().sent.len();
            }
        }
    }
}

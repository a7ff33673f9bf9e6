//! The responder loop for one interface: follows the set of addresses this node announces,
//! answers requests for them, and announces takeovers.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::link::Link;
use crate::responder::{Changes, Responder};

/// Largest frame read; requests are far smaller (longer frames are truncated, then refused
/// by the parser if they matter).
const FRAME_BUFFER: usize = 2048;
/// Pause after a receive error (e.g. ENETDOWN while the interface flaps).
const RECEIVE_ERROR_PAUSE: Duration = Duration::from_millis(200);

/// Responder settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponderConfig {
    /// How many times a takeover announcement is repeated after the first one.
    pub repeats: u32,
    /// Time between repeats.
    pub repeat_interval: Duration,
}

impl Default for ResponderConfig {
    fn default() -> Self {
        Self {
            repeats: 2,
            repeat_interval: Duration::from_secs(1),
        }
    }
}

/// Frames the responders sent, counted (shared by the responders of all interfaces; read
/// by the agent's metrics).
#[derive(Debug, Default)]
pub struct ResponderStats {
    arp_replies: AtomicU64,
    ndp_replies: AtomicU64,
    announcements: AtomicU64,
    send_failures: AtomicU64,
}

/// A copy of [`ResponderStats`]' counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ResponderCounts {
    /// ARP replies sent (answers to requests for an announced IPv4 address).
    pub arp_replies: u64,
    /// Neighbour advertisements sent in answer to solicitations (IPv6).
    pub ndp_replies: u64,
    /// Gratuitous ARPs and unsolicited neighbour advertisements (takeovers and repeats).
    pub announcements: u64,
    /// Frames the link refused to send.
    pub send_failures: u64,
}

impl ResponderStats {
    pub fn counts(&self) -> ResponderCounts {
        ResponderCounts {
            arp_replies: self.arp_replies.load(Ordering::Relaxed),
            ndp_replies: self.ndp_replies.load(Ordering::Relaxed),
            announcements: self.announcements.load(Ordering::Relaxed),
            send_failures: self.send_failures.load(Ordering::Relaxed),
        }
    }

    fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Answers ARP and neighbour solicitations on `link` for the addresses in `announced`,
/// following its changes, until the sender side of `announced` is dropped (then it stops
/// answering, leaves its multicast groups and returns).
///
/// Failures to send or to join a group are logged and do not stop the responder; receive
/// errors are logged and retried after a short pause.
pub async fn serve<L: Link>(
    link: L,
    announced: watch::Receiver<BTreeSet<IpAddr>>,
    config: ResponderConfig,
) {
    serve_counted(link, announced, config, &ResponderStats::default()).await;
}

/// [`serve`], counting what it sends in `stats`.
pub async fn serve_counted<L: Link>(
    link: L,
    mut announced: watch::Receiver<BTreeSet<IpAddr>>,
    config: ResponderConfig,
    stats: &ResponderStats,
) {
    let mut responder = Responder::new(link.mac(), config.repeats);
    let mut buf = vec![0u8; FRAME_BUFFER];
    let mut repeat = tokio::time::interval(config.repeat_interval);
    repeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let initial = announced.borrow_and_update().clone();
    apply(&link, &mut responder, &initial, &mut repeat, stats);
    loop {
        tokio::select! {
            changed = announced.changed() => {
                let closed = changed.is_err();
                let wanted = if closed {
                    BTreeSet::new()
                } else {
                    announced.borrow_and_update().clone()
                };
                apply(&link, &mut responder, &wanted, &mut repeat, stats);
                if closed {
                    return;
                }
            }
            received = link.recv(&mut buf) => match received {
                Ok(len) => answer(&link, &responder, &buf[..len], stats),
                Err(error) => {
                    warn!(interface = link.name(), %error, "receiving ARP/NDP requests failed, retrying");
                    tokio::time::sleep(RECEIVE_ERROR_PAUSE).await;
                }
            },
            _ = repeat.tick(), if responder.has_repeats() => {
                for frame in responder.repeat_round() {
                    if send(&link, &frame, "repeated announcement", stats) {
                        stats.count(&stats.announcements);
                    }
                }
            }
        }
    }
}

fn apply(
    link: &impl Link,
    responder: &mut Responder,
    wanted: &BTreeSet<IpAddr>,
    repeat: &mut tokio::time::Interval,
    stats: &ResponderStats,
) {
    let Changes {
        started,
        stopped,
        join,
        leave,
        frames,
    } = responder.set_announced(wanted);
    for group in join {
        if let Err(error) = link.join_group(group) {
            warn!(interface = link.name(), %group, %error,
                "joining the solicited-node group failed; solicitations may not reach this node");
        }
    }
    for group in leave {
        if let Err(error) = link.leave_group(group) {
            warn!(interface = link.name(), %group, %error, "leaving a multicast group failed");
        }
    }
    for ip in &stopped {
        info!(interface = link.name(), %ip, "stopped announcing");
    }
    for (ip, frame) in started.iter().zip(&frames) {
        info!(interface = link.name(), %ip, mac = %link.mac(), "announcing");
        if send(link, frame, "takeover announcement", stats) {
            stats.count(&stats.announcements);
        }
    }
    if !started.is_empty() {
        // The first repeat comes one full interval after this announcement.
        repeat.reset();
    }
}

fn answer(link: &impl Link, responder: &Responder, frame: &[u8], stats: &ResponderStats) {
    if let Some(answer) = responder.answer(frame) {
        debug!(interface = link.name(), ip = %answer.ip, asker = %answer.asker, "answering");
        if send(link, &answer.frame, "answer", stats) {
            let counter = match answer.ip {
                IpAddr::V4(_) => &stats.arp_replies,
                IpAddr::V6(_) => &stats.ndp_replies,
            };
            stats.count(counter);
        }
    }
}

/// Sends one frame; returns whether it went out.
fn send(link: &impl Link, frame: &[u8], what: &str, stats: &ResponderStats) -> bool {
    match link.send(frame) {
        Ok(()) => true,
        Err(error) => {
            stats.count(&stats.send_failures);
            warn!(interface = link.name(), %error, "sending {what} failed");
            false
        }
    }
}

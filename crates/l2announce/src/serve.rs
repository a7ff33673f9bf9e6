//! The responder loop for one interface: follows the set of addresses this node announces,
//! answers requests for them, and announces takeovers.

use std::collections::BTreeSet;
use std::net::IpAddr;
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

/// Answers ARP and neighbour solicitations on `link` for the addresses in `announced`,
/// following its changes, until the sender side of `announced` is dropped (then it stops
/// answering, leaves its multicast groups and returns).
///
/// Failures to send or to join a group are logged and do not stop the responder; receive
/// errors are logged and retried after a short pause.
pub async fn serve<L: Link>(
    link: L,
    mut announced: watch::Receiver<BTreeSet<IpAddr>>,
    config: ResponderConfig,
) {
    let mut responder = Responder::new(link.mac(), config.repeats);
    let mut buf = vec![0u8; FRAME_BUFFER];
    let mut repeat = tokio::time::interval(config.repeat_interval);
    repeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let initial = announced.borrow_and_update().clone();
    apply(&link, &mut responder, &initial, &mut repeat);
    loop {
        tokio::select! {
            changed = announced.changed() => {
                let closed = changed.is_err();
                let wanted = if closed {
                    BTreeSet::new()
                } else {
                    announced.borrow_and_update().clone()
                };
                apply(&link, &mut responder, &wanted, &mut repeat);
                if closed {
                    return;
                }
            }
            received = link.recv(&mut buf) => match received {
                Ok(len) => answer(&link, &responder, &buf[..len]),
                Err(error) => {
                    warn!(interface = link.name(), %error, "receiving ARP/NDP requests failed, retrying");
                    tokio::time::sleep(RECEIVE_ERROR_PAUSE).await;
                }
            },
            _ = repeat.tick(), if responder.has_repeats() => {
                for frame in responder.repeat_round() {
                    send(&link, &frame, "repeated announcement");
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
        send(link, frame, "takeover announcement");
    }
    if !started.is_empty() {
        // The first repeat comes one full interval after this announcement.
        repeat.reset();
    }
}

fn answer(link: &impl Link, responder: &Responder, frame: &[u8]) {
    if let Some(answer) = responder.answer(frame) {
        debug!(interface = link.name(), ip = %answer.ip, asker = %answer.asker, "answering");
        send(link, &answer.frame, "answer");
    }
}

fn send(link: &impl Link, frame: &[u8], what: &str) {
    if let Err(error) = link.send(frame) {
        warn!(interface = link.name(), %error, "sending {what} failed");
    }
}

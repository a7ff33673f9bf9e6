//! The L2 announcer of this node: decides which addresses it announces (see `announce`)
//! whenever the targets or the membership change, and keeps one ARP/NDP responder per
//! external interface running with that set.
//!
//! Interfaces: `--interfaces` when given, else those carrying the Node object's
//! InternalIP/ExternalIP addresses (else, without a Node object, those carrying any global
//! address). They are re-checked on every change and every [`INTERFACE_RECHECK`]; a
//! responder is opened only while there is something this node may have to announce.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_hostnet::HostNetwork;
use sluice_l2announce::{Link, LinkError, ResponderConfig, serve_counted};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::announce::{L2Input, Membership, decide};
use super::metrics::LbStats;

/// How often the interface list is re-read without any other change.
pub const INTERFACE_RECHECK: Duration = Duration::from_secs(5);

/// Opens the responder's link on an interface (the real one: `PacketLink::open`).
pub type OpenLink<L> = Box<dyn Fn(&str) -> Result<L, LinkError> + Send>;

pub struct L2Announcer<L> {
    pub node: String,
    /// `--interfaces` (empty: derive them from the node's addresses).
    pub interfaces: Vec<String>,
    pub net: Arc<dyn HostNetwork>,
    pub open: OpenLink<L>,
    pub config: ResponderConfig,
    pub stats: Arc<LbStats>,
}

struct Responders {
    running: BTreeMap<String, JoinHandle<()>>,
    /// Interfaces whose opening failed (logged once until it works).
    failed: BTreeSet<String>,
}

impl<L: Link + 'static> L2Announcer<L> {
    /// Runs until `shutdown`; then stops answering at once (the responders end when the
    /// announced set's sender is dropped).
    pub async fn run(
        self,
        mut input: watch::Receiver<Option<Arc<L2Input>>>,
        mut membership: watch::Receiver<Membership>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let (announced_tx, _) = watch::channel(BTreeSet::<IpAddr>::new());
        let mut responders = Responders {
            running: BTreeMap::new(),
            failed: BTreeSet::new(),
        };
        let mut recheck = tokio::time::interval(INTERFACE_RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = input.changed() => if changed.is_err() { break },
                changed = membership.changed() => if changed.is_err() { break },
                _ = recheck.tick() => {},
                _ = shutdown.wait_for(|s| *s) => break,
            }
            let Some(current) = input.borrow_and_update().clone() else {
                continue;
            };
            let members = membership.borrow_and_update().clone();
            let decided = decide(
                &current.targets,
                &members,
                &self.node,
                &announced_tx.borrow(),
            );
            if *announced_tx.borrow() != decided {
                log_change(&announced_tx.borrow(), &decided, &members);
                self.stats.set_announced(&decided);
                announced_tx.send_replace(decided);
            }
            let wanted = if current.targets.is_empty() {
                BTreeSet::new()
            } else {
                self.wanted_interfaces(&current.node_addresses)
                    .unwrap_or_else(|| responders.running.keys().cloned().collect())
            };
            self.reconcile(&mut responders, &wanted, &announced_tx);
        }
        self.stats.set_announced(&BTreeSet::new());
        drop(announced_tx);
        for (_, task) in responders.running {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
    }

    /// `None` when the host cannot be asked (keep what runs).
    fn wanted_interfaces(&self, node_addresses: &[IpAddr]) -> Option<BTreeSet<String>> {
        if !self.interfaces.is_empty() {
            return Some(self.interfaces.iter().cloned().collect());
        }
        let addresses = if node_addresses.is_empty() {
            self.net.global_addresses()
        } else {
            Ok(node_addresses.to_vec())
        };
        match addresses.and_then(|ips| self.net.interfaces_with(&ips)) {
            Ok(names) => Some(names.into_iter().collect()),
            Err(error) => {
                tracing::warn!(
                    "cannot list the interfaces for ARP/NDP announcements, keeping the current ones: {:#}",
                    anyhow::Error::from(error)
                );
                None
            }
        }
    }

    fn reconcile(
        &self,
        responders: &mut Responders,
        wanted: &BTreeSet<String>,
        announced: &watch::Sender<BTreeSet<IpAddr>>,
    ) {
        responders.running.retain(|name, task| {
            let keep = wanted.contains(name) && !task.is_finished();
            if !keep {
                tracing::info!(interface = %name, "ARP/NDP responder stopped");
                task.abort();
            }
            keep
        });
        responders.failed.retain(|name| wanted.contains(name));
        for name in wanted {
            if responders.running.contains_key(name) {
                continue;
            }
            match (self.open)(name) {
                Ok(link) => {
                    responders.failed.remove(name);
                    tracing::info!(interface = %name, mac = %link.mac(), "ARP/NDP responder started");
                    let rx = announced.subscribe();
                    let (config, stats) = (self.config.clone(), Arc::clone(&self.stats));
                    let task = tokio::spawn(async move {
                        serve_counted(link, rx, config, &stats.responder).await;
                    });
                    responders.running.insert(name.clone(), task);
                }
                Err(error) => {
                    if responders.failed.insert(name.clone()) {
                        tracing::warn!(interface = %name,
                            "cannot answer ARP/NDP on this interface, retrying: {:#}",
                            anyhow::Error::from(error));
                    }
                }
            }
        }
    }
}

fn log_change(before: &BTreeSet<IpAddr>, after: &BTreeSet<IpAddr>, membership: &Membership) {
    let list = |set: BTreeSet<&IpAddr>| {
        set.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let started: BTreeSet<&IpAddr> = after.difference(before).collect();
    let stopped: BTreeSet<&IpAddr> = before.difference(after).collect();
    let why = match membership {
        Membership::Unknown => "membership unknown, keeping earlier choices",
        Membership::Known(_) => "chosen among the eligible nodes",
    };
    if !started.is_empty() {
        tracing::info!("this node now announces {} ({why})", list(started));
    }
    if !stopped.is_empty() {
        tracing::info!("this node no longer announces {}", list(stopped));
    }
}

#[cfg(test)]
mod tests;

//! Which links the tc programs belong on, and the thread that re-checks whenever links or
//! addresses change. Everything about the host network goes through [`HostNetwork`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_hostnet::{Changes, HostNetwork};
use tokio::sync::oneshot;

/// Pause before subscribing again when notifications ended.
const RESUBSCRIBE_DELAY: Duration = if cfg!(test) {
    Duration::from_millis(20)
} else {
    Duration::from_secs(1)
};

/// `(name, index)` of each interface that should carry the programs: `configured`
/// (`--interfaces`) when given, else those carrying any of `node_addresses` (never `lo`).
/// Failures are logged and leave interfaces out; the next change or apply asks again.
pub(crate) fn wanted_interfaces(
    net: &dyn HostNetwork,
    configured: &[String],
    node_addresses: &[IpAddr],
) -> Vec<(String, u32)> {
    let names = if configured.is_empty() {
        match net.interfaces_with(node_addresses) {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(error = %error_chain(&e),
                    "ebpf: cannot list interface addresses; attachments unchanged until the next change");
                return Vec::new();
            }
        }
    } else {
        configured.to_vec()
    };
    names
        .into_iter()
        .filter_map(|ifname| match net.link_index(&ifname) {
            Ok(Some(index)) => Some((ifname, index)),
            Ok(None) => {
                tracing::warn!(interface = %ifname, "ebpf: interface not found");
                None
            }
            Err(e) => {
                tracing::warn!(interface = %ifname, error = %error_chain(&e),
                    "ebpf: cannot look up interface");
                None
            }
        })
        .collect()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// A thread that calls `on_change` after every burst of link or address changes (and after
/// lost notifications), so links that appear or get a node address later are covered
/// without waiting for the next apply. Dropping it stops the thread at once and joins it.
pub(crate) struct Watcher {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    /// Subscribes on the calling thread (so in its network namespace, which the thread also
    /// inherits). Without notifications there is no watcher: new links are picked up on apply.
    pub(crate) fn spawn(
        net: Arc<dyn HostNetwork>,
        on_change: impl FnMut() + Send + 'static,
    ) -> Option<Watcher> {
        // The subscription is driven by this runtime; it only ever runs the watch loop.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .inspect_err(|e| {
                tracing::warn!(error = %e,
                "ebpf: cannot start the link watcher; new links are picked up on apply")
            })
            .ok()?;
        let changes = {
            let _context = runtime.enter();
            net.subscribe()
        };
        let changes = match changes {
            Ok(changes) => changes,
            Err(e) => {
                tracing::warn!(error = %error_chain(&e),
                    "ebpf: no rtnetlink events; new links are picked up on apply");
                return None;
            }
        };
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("sluice-ebpf-links".into())
            .spawn(move || runtime.block_on(watch(net, changes, stopped, on_change)))
            .inspect_err(|e| {
                tracing::warn!(error = %e,
                "ebpf: cannot start the link watcher; new links are picked up on apply")
            })
            .ok()?;
        Some(Watcher {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // Dropping the sender wakes the loop even in the middle of a resubscribe pause.
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn watch(
    net: Arc<dyn HostNetwork>,
    mut changes: Changes,
    mut stopped: oneshot::Receiver<()>,
    mut on_change: impl FnMut(),
) {
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            change = changes.recv() => match change {
                Some(change) => {
                    // One re-check for a whole burst; the content does not matter.
                    let mut burst = 1;
                    while changes.try_recv().is_some() {
                        burst += 1;
                    }
                    tracing::debug!(?change, burst, "ebpf: links or addresses changed");
                    on_change();
                }
                None => match resubscribe(net.as_ref(), &mut stopped).await {
                    Some(fresh) => {
                        changes = fresh;
                        // Whatever happened while nobody listened.
                        on_change();
                    }
                    None => return,
                },
            },
        }
    }
}

/// Subscribes again (every [`RESUBSCRIBE_DELAY`]) until it works; `None` when stopped first.
async fn resubscribe(
    net: &dyn HostNetwork,
    stopped: &mut oneshot::Receiver<()>,
) -> Option<Changes> {
    tracing::warn!("ebpf: rtnetlink events ended; subscribing again");
    loop {
        tokio::select! {
            _ = &mut *stopped => return None,
            () = tokio::time::sleep(RESUBSCRIBE_DELAY) => {}
        }
        match net.subscribe() {
            Ok(changes) => return Some(changes),
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "ebpf: cannot subscribe to rtnetlink events")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use sluice_hostnet::{Address, Call, Change, FakeHostNetwork, Link, Scope};

    use super::*;

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            up: true,
            running: true,
            mac: None,
            kind: None,
        }
    }

    fn address(ifindex: u32, ifname: &str, ip: &str) -> Address {
        Address {
            ifindex,
            ifname: ifname.into(),
            ip: ip.parse().unwrap(),
            prefix_len: 24,
            scope: Scope::Global,
        }
    }

    /// lo, eth0 (10.0.0.1) and eth1 (10.0.1.1), with the node address on lo too.
    fn host() -> FakeHostNetwork {
        let net = FakeHostNetwork::new();
        net.set_links(vec![link(1, "lo"), link(2, "eth0"), link(3, "eth1")]);
        net.set_addresses(vec![
            address(1, "lo", "10.0.0.1"),
            address(2, "eth0", "10.0.0.1"),
            address(3, "eth1", "10.0.1.1"),
        ]);
        net
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn interfaces_carrying_node_addresses_are_wanted_but_never_lo() {
        let net = host();
        let wanted = wanted_interfaces(&net, &[], &ips(&["10.0.0.1"]));
        assert_eq!(wanted, vec![("eth0".to_string(), 2)]);
    }

    #[test]
    fn configured_interfaces_win_and_unknown_ones_are_skipped() {
        let net = host();
        let configured = vec!["eth1".to_string(), "eth9".to_string()];
        let wanted = wanted_interfaces(&net, &configured, &ips(&["10.0.0.1"]));
        assert_eq!(wanted, vec![("eth1".to_string(), 3)]);
    }

    #[test]
    fn a_failed_listing_wants_nothing_and_the_next_one_answers() {
        let net = host();
        net.fail_next(Call::Addresses);
        assert!(wanted_interfaces(&net, &[], &ips(&["10.0.1.1"])).is_empty());
        let configured = vec!["eth0".to_string(), "eth1".to_string()];
        net.fail_next(Call::LinkIndex);
        assert_eq!(
            wanted_interfaces(&net, &configured, &[]),
            vec![("eth1".to_string(), 3)],
            "a failed lookup leaves out only that interface"
        );
        assert_eq!(
            wanted_interfaces(&net, &[], &ips(&["10.0.1.1"])),
            vec![("eth1".to_string(), 3)]
        );
    }

    /// A watcher over `net` counting its re-checks.
    fn counting_watcher(net: &FakeHostNetwork) -> (Option<Watcher>, Arc<AtomicUsize>) {
        let count = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&count);
        let watcher = Watcher::spawn(Arc::new(net.clone()), move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        (watcher, count)
    }

    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn every_change_and_every_resync_triggers_a_recheck() {
        let net = host();
        let (watcher, count) = counting_watcher(&net);
        assert!(watcher.is_some());
        assert_eq!(count.load(Ordering::SeqCst), 0, "nothing changed yet");
        net.notify(Change::Link {
            ifindex: 4,
            name: "eth2".into(),
            removed: false,
        });
        wait_for("a re-check after a link change", || {
            count.load(Ordering::SeqCst) == 1
        });
        net.notify(Change::Resync);
        wait_for("a re-check after lost notifications", || {
            count.load(Ordering::SeqCst) == 2
        });
    }

    #[test]
    fn stopping_is_prompt_and_unsubscribes() {
        let net = host();
        let (watcher, _) = counting_watcher(&net);
        assert_eq!(net.subscribers(), 1);
        let started = Instant::now();
        drop(watcher);
        let took = started.elapsed();
        assert!(took < Duration::from_millis(100), "stop took {took:?}");
        assert_eq!(net.subscribers(), 0);
    }

    #[test]
    fn without_notifications_there_is_no_watcher() {
        let net = host();
        net.fail_next(Call::Subscribe);
        let (watcher, _) = counting_watcher(&net);
        assert!(watcher.is_none());
    }

    #[test]
    fn ended_notifications_are_resubscribed_and_followed_by_a_recheck() {
        let net = host();
        let (_watcher, count) = counting_watcher(&net);
        net.fail_nth(Call::Subscribe, 2);
        net.end_subscriptions();
        wait_for("the third subscription", || net.subscribers() == 1);
        assert_eq!(
            net.calls(Call::Subscribe),
            3,
            "the failed attempt was retried"
        );
        wait_for("a re-check after subscribing again", || {
            count.load(Ordering::SeqCst) == 1
        });
        net.notify(Change::Resync);
        wait_for("a re-check on the new subscription", || {
            count.load(Ordering::SeqCst) == 2
        });
    }
}

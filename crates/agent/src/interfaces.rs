//! The node's own interface addresses (for NodePorts when the Node object says nothing).

use std::net::IpAddr;
use std::sync::Arc;

use futures::{FutureExt as _, StreamExt as _};
use sluice_hostnet::{Changes, HostNetwork};

/// Global-scope addresses of all interfaces (no loopback, no link-local). Listing them is a
/// netlink dump on a helper thread (most of a millisecond), so they are listed again only
/// when a link or address notification says they may have changed, or on every sync while
/// notifications are unavailable.
pub struct LocalAddresses {
    net: Arc<dyn HostNetwork>,
    /// Link and address notifications; `None`: not subscribed (not yet, or the subscription
    /// failed or ended).
    changes: Option<Changes>,
    /// The addresses must be listed again.
    stale: bool,
    /// The last answer, served while the kernel cannot be asked: a passing netlink failure
    /// must not take the NodePorts off the node's addresses.
    last: Vec<IpAddr>,
    failing: bool,
}

impl LocalAddresses {
    pub fn new(net: Arc<dyn HostNetwork>) -> LocalAddresses {
        LocalAddresses {
            net,
            changes: None,
            stale: true,
            last: Vec::new(),
            failing: false,
        }
    }

    /// The current addresses, or the last known ones (with one warning) when listing fails.
    pub fn current(&mut self) -> Vec<IpAddr> {
        self.take_notifications();
        if self.stale || self.changes.is_none() {
            self.list();
        }
        self.last.clone()
    }

    /// Marks the addresses stale when a notification arrived since the last call; subscribes
    /// when not subscribed (before listing: a change after the listing is then noticed).
    fn take_notifications(&mut self) {
        if let Some(changes) = &mut self.changes {
            loop {
                match changes.next().now_or_never() {
                    Some(Some(_)) => self.stale = true,
                    None => return,
                    Some(None) => break, // ended
                }
            }
        }
        self.changes = self.net.subscribe().ok();
        self.stale = true;
    }

    fn list(&mut self) {
        match self.net.global_addresses() {
            Ok(addresses) => {
                if self.failing {
                    tracing::info!("the node's interface addresses can be listed again");
                    self.failing = false;
                }
                self.last = addresses;
                self.stale = false;
            }
            Err(err) => {
                if !self.failing {
                    tracing::warn!(
                        "cannot list the node's interface addresses, keeping the last known ({}): {:#}",
                        self.last.len(),
                        anyhow::Error::from(err)
                    );
                    self.failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sluice_hostnet::{Address, Call, Change, FakeHostNetwork, RtNetlink, Scope};

    use super::LocalAddresses;

    #[test]
    fn never_returns_loopback_or_link_local() {
        let addresses = LocalAddresses::new(Arc::new(RtNetlink::new())).current();
        for addr in addresses {
            let link_local = match addr {
                std::net::IpAddr::V4(v4) => v4.is_link_local(),
                std::net::IpAddr::V6(v6) => v6.is_unicast_link_local(),
            };
            assert!(!addr.is_loopback() && !link_local, "{addr}");
        }
    }

    fn address(ifname: &str, ip: &str, scope: Scope) -> Address {
        Address {
            ifindex: 2,
            ifname: ifname.into(),
            ip: ip.parse().unwrap(),
            prefix_len: 24,
            scope,
        }
    }

    fn added(ip: &str) -> Change {
        Change::Address {
            ifindex: 2,
            ip: ip.parse().unwrap(),
            prefix_len: 24,
            removed: false,
        }
    }

    #[test]
    fn lists_again_only_after_a_notification_or_when_notifications_end() {
        let net = FakeHostNetwork::new();
        net.set_addresses(vec![address("eth0", "10.0.0.1", Scope::Global)]);
        let mut local = LocalAddresses::new(Arc::new(net.clone()));
        let ip = |s: &str| vec![s.parse::<std::net::IpAddr>().unwrap()];
        assert_eq!(local.current(), ip("10.0.0.1"));
        assert_eq!(local.current(), ip("10.0.0.1"));
        assert_eq!(
            net.calls(Call::Addresses),
            1,
            "nothing changed: listed once"
        );

        net.set_addresses(vec![address("eth0", "10.0.0.2", Scope::Global)]);
        net.notify(added("10.0.0.2"));
        assert_eq!(local.current(), ip("10.0.0.2"));
        assert_eq!(net.calls(Call::Addresses), 2);

        // Without notifications, every call lists (and subscribes again).
        net.end_subscriptions();
        net.set_addresses(vec![address("eth0", "10.0.0.3", Scope::Global)]);
        assert_eq!(local.current(), ip("10.0.0.3"));
        assert_eq!(net.subscribers(), 1, "subscribed again");
    }

    #[test]
    fn keeps_the_last_known_addresses_while_listing_fails() {
        let net = FakeHostNetwork::new();
        net.set_addresses(vec![
            address("lo", "127.0.0.1", Scope::Host),
            address("eth0", "fe80::1", Scope::Link),
            address("eth0", "10.0.0.1", Scope::Global),
        ]);
        let mut local = LocalAddresses::new(Arc::new(net.clone()));
        let first = local.current();
        assert_eq!(first, vec!["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]);

        net.set_addresses(vec![address("eth0", "10.0.0.2", Scope::Global)]);
        net.notify(added("10.0.0.2"));
        net.fail_next(Call::Addresses);
        assert_eq!(local.current(), first, "failed listing: last known kept");
        assert_eq!(
            local.current(),
            vec!["10.0.0.2".parse::<std::net::IpAddr>().unwrap()],
            "next listing answers again"
        );
    }
}

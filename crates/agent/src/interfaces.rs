//! The node's own interface addresses (for NodePorts when the Node object says nothing).

use std::net::IpAddr;
use std::sync::Arc;

use sluice_hostnet::HostNetwork;

/// Global-scope addresses of all interfaces (no loopback, no link-local), read from the
/// kernel on every sync.
pub struct LocalAddresses {
    net: Arc<dyn HostNetwork>,
    /// The last answer, served while the kernel cannot be asked: a passing netlink failure
    /// must not take the NodePorts off the node's addresses.
    last: Vec<IpAddr>,
    failing: bool,
}

impl LocalAddresses {
    pub fn new(net: Arc<dyn HostNetwork>) -> LocalAddresses {
        LocalAddresses {
            net,
            last: Vec::new(),
            failing: false,
        }
    }

    /// The current addresses, or the last known ones (with one warning) when listing fails.
    pub fn current(&mut self) -> Vec<IpAddr> {
        match self.net.global_addresses() {
            Ok(addresses) => {
                if self.failing {
                    tracing::info!("the node's interface addresses can be listed again");
                    self.failing = false;
                }
                self.last = addresses;
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
        self.last.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sluice_hostnet::{Address, Call, FakeHostNetwork, RtNetlink, Scope};

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
        net.fail_next(Call::Addresses);
        assert_eq!(local.current(), first, "failed listing: last known kept");
        assert_eq!(
            local.current(),
            vec!["10.0.0.2".parse::<std::net::IpAddr>().unwrap()],
            "next listing answers again"
        );
    }
}

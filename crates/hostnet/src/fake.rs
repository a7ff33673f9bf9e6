//! An in-memory [`HostNetwork`] for tests: the test sets links, addresses and neighbours,
//! injects change notifications, ends subscriptions, and makes chosen calls fail.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::channel::mpsc::{UnboundedSender, unbounded};

use crate::{Address, Change, Changes, HostNetError, HostNetwork, Link, Neighbour};

/// The calls of [`HostNetwork`] the fake counts (and can fail). The provided helpers
/// (`global_addresses`, `interfaces_with`) count as [`Call::Addresses`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Call {
    Links,
    Addresses,
    Neighbours,
    LinkIndex,
    Subscribe,
}

/// A host network held in memory. Clones share their state, so a test keeps one clone to
/// drive what the code under test (holding another) sees.
#[derive(Debug, Clone, Default)]
pub struct FakeHostNetwork {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    links: Vec<Link>,
    addresses: Vec<Address>,
    neighbours: Vec<Neighbour>,
    /// How many times each call was made.
    calls: BTreeMap<Call, usize>,
    /// (call, n): the n-th call (1-based) of that kind fails.
    failures: BTreeSet<(Call, usize)>,
    subscribers: Vec<UnboundedSender<Change>>,
}

impl FakeHostNetwork {
    pub fn new() -> FakeHostNetwork {
        FakeHostNetwork::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock left plain data behind: go on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_links(&self, links: Vec<Link>) {
        self.state().links = links;
    }

    pub fn set_addresses(&self, addresses: Vec<Address>) {
        self.state().addresses = addresses;
    }

    pub fn set_neighbours(&self, neighbours: Vec<Neighbour>) {
        self.state().neighbours = neighbours;
    }

    /// Delivers `change` to every live subscription (it does not alter the listings).
    pub fn notify(&self, change: Change) {
        let mut state = self.state();
        state
            .subscribers
            .retain(|tx| tx.unbounded_send(change.clone()).is_ok());
    }

    /// Ends every live subscription, as when the kernel socket fails.
    pub fn end_subscriptions(&self) {
        self.state().subscribers.clear();
    }

    /// Subscriptions that are still being listened to.
    pub fn subscribers(&self) -> usize {
        let mut state = self.state();
        state.subscribers.retain(|tx| !tx.is_closed());
        state.subscribers.len()
    }

    /// Makes the `nth` call (1-based, counted since the fake was created) of `call` fail.
    pub fn fail_nth(&self, call: Call, nth: usize) {
        self.state().failures.insert((call, nth));
    }

    /// Makes the next call of `call` fail.
    pub fn fail_next(&self, call: Call) {
        let mut state = self.state();
        let next = state.calls.get(&call).copied().unwrap_or(0) + 1;
        state.failures.insert((call, next));
    }

    /// How many times `call` was made (failed ones included).
    pub fn calls(&self, call: Call) -> usize {
        self.state().calls.get(&call).copied().unwrap_or(0)
    }

    /// Counts the call and fails it when asked to; else hands out the state.
    fn enter(&self, call: Call) -> Result<MutexGuard<'_, State>, HostNetError> {
        let mut state = self.state();
        let count = state.calls.entry(call).or_insert(0);
        *count += 1;
        let nth = *count;
        if state.failures.remove(&(call, nth)) {
            return Err(HostNetError::Injected { call, nth });
        }
        Ok(state)
    }
}

impl HostNetwork for FakeHostNetwork {
    fn links(&self) -> Result<Vec<Link>, HostNetError> {
        Ok(self.enter(Call::Links)?.links.clone())
    }

    fn addresses(&self) -> Result<Vec<Address>, HostNetError> {
        Ok(self.enter(Call::Addresses)?.addresses.clone())
    }

    fn neighbours(&self) -> Result<Vec<Neighbour>, HostNetError> {
        Ok(self.enter(Call::Neighbours)?.neighbours.clone())
    }

    fn link_index(&self, name: &str) -> Result<Option<u32>, HostNetError> {
        let state = self.enter(Call::LinkIndex)?;
        Ok(state.links.iter().find(|l| l.name == name).map(|l| l.index))
    }

    fn subscribe(&self) -> Result<Changes, HostNetError> {
        let mut state = self.enter(Call::Subscribe)?;
        let (tx, rx) = unbounded();
        state.subscribers.push(tx);
        Ok(Changes::from_stream(rx))
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::Scope;

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

    fn address(ifindex: u32, ifname: &str, ip: &str, scope: Scope) -> Address {
        Address {
            ifindex,
            ifname: ifname.into(),
            ip: ip.parse().unwrap(),
            prefix_len: 24,
            scope,
        }
    }

    /// lo, eth0 with global, link-local and host-scope addresses, and eth1.
    fn host() -> FakeHostNetwork {
        let net = FakeHostNetwork::new();
        net.set_links(vec![link(1, "lo"), link(2, "eth0"), link(3, "eth1")]);
        net.set_addresses(vec![
            address(1, "lo", "127.0.0.1", Scope::Host),
            address(1, "lo", "::1", Scope::Host),
            // A global-scope address on lo (as some load balancers configure) stays lo's.
            address(1, "lo", "10.0.0.100", Scope::Global),
            address(2, "eth0", "10.0.0.1", Scope::Global),
            address(2, "eth0", "fe80::1", Scope::Link),
            address(2, "eth0", "169.254.3.3", Scope::Global),
            address(2, "eth0", "10.9.9.9", Scope::Host),
            address(2, "eth0", "fd00::1", Scope::Global),
            address(3, "eth1", "10.0.1.1", Scope::Global),
            address(3, "eth1", "10.0.0.1", Scope::Global),
        ]);
        net
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn global_addresses_leave_out_loopback_link_local_and_narrower_scopes() {
        let net = host();
        let got = net.global_addresses().unwrap();
        assert_eq!(got, ips(&["10.0.0.1", "10.0.0.100", "10.0.1.1", "fd00::1"]));
    }

    #[test]
    fn interfaces_with_names_each_carrier_once_and_never_lo() {
        let net = host();
        let got = net
            .interfaces_with(&ips(&["10.0.0.1", "10.0.0.100", "fd00::1", "192.0.2.1"]))
            .unwrap();
        assert_eq!(got, vec!["eth0".to_string(), "eth1".to_string()]);
        assert!(
            net.interfaces_with(&ips(&["127.0.0.1"]))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn link_index_finds_links_by_name() {
        let net = host();
        assert_eq!(net.link_index("eth1").unwrap(), Some(3));
        assert_eq!(net.link_index("eth9").unwrap(), None);
    }

    #[test]
    fn the_nth_call_fails_and_the_others_answer() {
        let net = host();
        net.fail_nth(Call::Addresses, 2);
        assert!(net.global_addresses().is_ok());
        let err = net.interfaces_with(&[]).unwrap_err();
        assert_eq!(err.to_string(), "injected failure of Addresses call #2");
        assert!(net.addresses().is_ok());
        net.fail_next(Call::Links);
        assert!(net.links().is_err());
        assert_eq!(net.links().unwrap().len(), 3);
        assert_eq!(net.calls(Call::Addresses), 3);
        assert_eq!(net.calls(Call::Links), 2);
    }

    #[tokio::test]
    async fn notifications_reach_every_subscriber_until_their_subscription_ends() {
        let net = host();
        let mut first = net.subscribe().unwrap();
        let mut second = net.subscribe().unwrap();
        assert_eq!(net.subscribers(), 2);
        let change = Change::Link {
            ifindex: 4,
            name: "eth2".into(),
            removed: false,
        };
        net.notify(change.clone());
        net.notify(Change::Resync);
        assert_eq!(first.recv().await, Some(change.clone()));
        assert_eq!(first.try_recv(), Some(Change::Resync));
        assert_eq!(first.try_recv(), None, "nothing more queued");
        assert_eq!(second.recv().await, Some(change));
        drop(first);
        assert_eq!(net.subscribers(), 1, "a dropped subscription is forgotten");
        net.end_subscriptions();
        assert_eq!(second.recv().await, Some(Change::Resync));
        assert_eq!(second.recv().await, None, "ended");
        net.fail_next(Call::Subscribe);
        assert!(net.subscribe().is_err());
    }
}

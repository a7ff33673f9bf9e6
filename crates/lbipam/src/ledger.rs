//! Which Services hold which address during one allocation run, and whether a Service may
//! join the holders of an address (sharing rules).

use std::collections::BTreeMap;

use crate::addr::{Addr, IpRange};
use crate::service::LbService;

/// One Service holding an address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Holder<'a> {
    pub service: &'a LbService,
    pub sharing_key: Option<&'a str>,
    /// A LoadBalancer Service of another class: its addresses are reserved, never shared.
    pub foreign: bool,
}

/// Why `new` may not hold an address `held` holds; `None` when they may share it.
///
/// Sharing follows MetalLB: both Services carry the same sharing key, no (protocol, port)
/// is used by both, and either both have `externalTrafficPolicy: Cluster` or both select the
/// same pods (same non-empty `spec.selector`), because one node announces the address and it
/// must serve every Service on it.
pub(crate) fn share_refusal(new: &Holder<'_>, held: &Holder<'_>) -> Option<String> {
    let other = &held.service.key;
    if held.foreign {
        let class = held.service.load_balancer_class.as_deref().unwrap_or("");
        return Some(format!(
            "Service {other} of load balancer class {class:?} holds it"
        ));
    }
    match (new.sharing_key, held.sharing_key) {
        (Some(a), Some(b)) if a == b => {}
        _ => {
            return Some(format!(
                "Service {other} holds it and the two Services have no common sharing key"
            ));
        }
    }
    if let Some((protocol, port)) = new
        .service
        .ports
        .iter()
        .find(|p| held.service.ports.contains(p))
    {
        return Some(format!(
            "Service {other} holds it with the same sharing key but also uses port {port}/{protocol}"
        ));
    }
    let any_local = new.service.external_traffic_local || held.service.external_traffic_local;
    let same_pods =
        !new.service.selector.is_empty() && new.service.selector == held.service.selector;
    if any_local && !same_pods {
        return Some(format!(
            "Service {other} holds it; with externalTrafficPolicy Local, Services share an \
             address only when they select the same pods"
        ));
    }
    None
}

/// Addresses held so far in this run.
#[derive(Debug, Default)]
pub(crate) struct Ledger<'a> {
    held: BTreeMap<Addr, Vec<Holder<'a>>>,
}

impl<'a> Ledger<'a> {
    pub fn add(&mut self, addr: Addr, holder: Holder<'a>) {
        self.held.entry(addr).or_default().push(holder);
    }

    /// Why `candidate` cannot hold `addr` given its current holders.
    pub fn refusal(&self, addr: Addr, candidate: &Holder<'_>) -> Option<String> {
        self.held
            .get(&addr)?
            .iter()
            .find_map(|held| share_refusal(candidate, held))
    }

    /// The lowest address of `range` nobody holds.
    pub fn lowest_free(&self, range: &IpRange) -> Option<Addr> {
        let mut candidate = range.first.value;
        for addr in self.held.range(range.first..=range.last).map(|(a, _)| a) {
            if addr.value != candidate {
                break;
            }
            if candidate == range.last.value {
                return None;
            }
            candidate += 1;
        }
        Some(Addr {
            family: range.family(),
            value: candidate,
        })
    }

    /// The lowest held address of `range` that `candidate` may share with its holders.
    pub fn lowest_shareable(&self, range: &IpRange, candidate: &Holder<'_>) -> Option<Addr> {
        self.held
            .range(range.first..=range.last)
            .find(|(_, holders)| {
                holders
                    .iter()
                    .all(|h| share_refusal(candidate, h).is_none())
            })
            .map(|(addr, _)| *addr)
    }

    /// How many addresses of `range` are held.
    pub fn count_in(&self, range: &IpRange) -> u128 {
        self.held.range(range.first..=range.last).count() as u128
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::IpFamily;

    fn addr(s: &str) -> Addr {
        Addr::from(s.parse::<std::net::IpAddr>().unwrap())
    }

    #[test]
    fn lowest_free_skips_held_addresses_and_ends_at_the_range() {
        let service = LbService::new("ns", "svc");
        let holder = Holder {
            service: &service,
            sharing_key: None,
            foreign: false,
        };
        let range = IpRange {
            first: addr("10.0.0.0"),
            last: addr("10.0.0.2"),
        };
        let mut ledger = Ledger::default();
        assert_eq!(ledger.lowest_free(&range), Some(addr("10.0.0.0")));
        ledger.add(addr("10.0.0.0"), holder);
        ledger.add(addr("10.0.0.2"), holder);
        assert_eq!(ledger.lowest_free(&range), Some(addr("10.0.0.1")));
        ledger.add(addr("10.0.0.1"), holder);
        assert_eq!(ledger.lowest_free(&range), None);
        assert_eq!(ledger.count_in(&range), 3);
        // An address just outside the range does not count.
        ledger.add(addr("10.0.0.3"), holder);
        assert_eq!(ledger.count_in(&range), 3);
        assert_eq!(range.family(), IpFamily::V4);
    }

    #[test]
    fn lowest_free_handles_the_top_of_the_address_space() {
        let range = IpRange {
            first: addr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"),
            last: addr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        };
        let service = LbService::new("ns", "svc");
        let holder = Holder {
            service: &service,
            sharing_key: None,
            foreign: false,
        };
        let mut ledger = Ledger::default();
        ledger.add(range.first, holder);
        assert_eq!(ledger.lowest_free(&range), Some(range.last));
        ledger.add(range.last, holder);
        assert_eq!(ledger.lowest_free(&range), None);
    }
}

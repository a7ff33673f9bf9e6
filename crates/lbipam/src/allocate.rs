//! The allocation run: `(pools, services, config) -> Allocation`, no I/O, no clock.
//!
//! 1. Pools are validated in name order (overlaps charge the later pool).
//! 2. Addresses held by LoadBalancer Services of other classes are reserved.
//! 3. Our Services, oldest first, keep each address of their status that is still valid
//!    (in a valid pool that selects them, of a wanted family, requested if they request,
//!    and not held by an older Service they cannot share with).
//! 4. Our Services, oldest first, get what is missing: the requested addresses, or per
//!    family the lowest free address of the first matching pool in name order (after an
//!    address already shared under their sharing key).
//!
//! Because the run depends only on its inputs, a restarted agent rebuilds the same
//! assignment from the Services' statuses.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::net::IpAddr;

use sluice_model::ObjectKey;

use crate::addr::{Addr, IpFamily};
use crate::crd::LoadBalancerIPPool;
use crate::ledger::{Holder, Ledger};
use crate::outcome::{
    Allocation, AssignedAddress, Event, EventType, ObjectKind, ObjectRef, ServiceAddresses, reason,
};
use crate::pool::{self, Pool};
use crate::report::pool_reports;
use crate::service::{
    IpFamilyPolicy, LbService, Request, RequestError, check_request, requested_ips, sharing_key,
    wanted_families,
};

/// The `spec.loadBalancerClass` sluice serves by default (`--load-balancer-class`).
pub const DEFAULT_LOAD_BALANCER_CLASS: &str = "sluice.dev/lb";

/// Allocator settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocatorConfig {
    /// Services of `type: LoadBalancer` whose `spec.loadBalancerClass` is unset or equal to
    /// this are handled; others are left alone (their addresses are never handed out).
    pub load_balancer_class: String,
}

impl Default for AllocatorConfig {
    fn default() -> Self {
        Self {
            load_balancer_class: DEFAULT_LOAD_BALANCER_CLASS.to_string(),
        }
    }
}

impl AllocatorConfig {
    /// Whether sluice assigns this Service's addresses.
    pub fn handles(&self, service: &LbService) -> bool {
        service.is_load_balancer
            && service
                .load_balancer_class
                .as_deref()
                .is_none_or(|class| class == self.load_balancer_class)
    }
}

/// Computes the addresses of every LoadBalancer Service of our class, the pools'
/// conditions, and the Events to emit. Deterministic: the order of `pools` and `services`
/// does not matter.
pub fn allocate(
    pools: &[LoadBalancerIPPool],
    services: &[LbService],
    config: &AllocatorConfig,
) -> Allocation {
    let pools = pool::validate(pools);
    let mut run = Run {
        pools: &pools,
        ledger: Ledger::default(),
        events: Vec::new(),
        waiting: BTreeMap::new(),
    };
    let mut by_key: Vec<&LbService> = services.iter().collect();
    by_key.sort_by(|a, b| a.key.cmp(&b.key));
    for service in by_key.iter().filter(|s| is_foreign(s, config)) {
        run.reserve_foreign(service);
    }
    let mut handled: Vec<&LbService> = services.iter().filter(|s| config.handles(s)).collect();
    handled.sort_by(|a, b| oldest_first(a, b));
    let plans: Vec<Plan<'_>> = handled.iter().map(|s| run.plan(s)).collect();
    let kept: Vec<Vec<AssignedAddress>> = plans.iter().map(|p| run.keep_current(p)).collect();
    let mut allocation = Allocation::default();
    for (plan, kept) in plans.iter().zip(kept) {
        let addresses = run.allocate_missing(plan, kept);
        allocation.services.insert(
            plan.service.key.clone(),
            ServiceAddresses {
                uid: plan.service.uid.clone(),
                status_changed: plan.service.ingress_ips != ips_of(&addresses),
                addresses,
                external_traffic_local: plan.service.external_traffic_local,
            },
        );
    }
    for service in by_key.iter().filter(|s| !s.is_load_balancer) {
        run.release_stale(service, &mut allocation);
    }
    let (reports, pool_events) = pool_reports(&pools, &run.ledger, &run.waiting);
    allocation.pools = reports;
    allocation.events = run.events;
    allocation.events.extend(pool_events);
    allocation
}

fn is_foreign(service: &LbService, config: &AllocatorConfig) -> bool {
    service.is_load_balancer && !config.handles(service)
}

/// Older first (by creationTimestamp; Services without one last), then by namespace/name.
fn oldest_first(a: &LbService, b: &LbService) -> Ordering {
    let by_age = match (&a.created, &b.created) {
        (Some(x), Some(y)) => x.cmp(y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    by_age.then_with(|| a.key.cmp(&b.key))
}

fn ips_of(addresses: &[AssignedAddress]) -> Vec<IpAddr> {
    addresses.iter().map(|a| a.ip).collect()
}

/// What one Service asks for, worked out once per run.
struct Plan<'a> {
    service: &'a LbService,
    families: Vec<IpFamily>,
    /// `Err`: the request is unusable, the Service gets no address.
    request: Result<Option<Request>, RequestError>,
    holder: Holder<'a>,
}

/// Why one family could not be served.
enum Shortfall {
    NoPool(IpFamily),
    Exhausted(IpFamily, Vec<String>),
    Requested(&'static str, String),
}

struct Run<'p, 'a> {
    pools: &'p [Pool<'a>],
    ledger: Ledger<'a>,
    events: Vec<Event>,
    /// Pool name → Services waiting for one of its addresses.
    waiting: BTreeMap<String, Vec<ObjectKey>>,
}

impl<'p, 'a> Run<'p, 'a> {
    fn reserve_foreign(&mut self, service: &'a LbService) {
        let holder = Holder {
            service,
            sharing_key: None,
            foreign: true,
        };
        for ip in &service.ingress_ips {
            self.ledger.add(Addr::from(*ip), holder);
        }
    }

    fn plan(&mut self, service: &'a LbService) -> Plan<'a> {
        let request = requested_ips(service);
        let families = wanted_families(service, request.as_ref().ok().and_then(|r| r.as_ref()));
        let request = request.and_then(|r| match r {
            Some(r) => check_request(&r, &families, service.ip_family_policy).map(|()| Some(r)),
            None => Ok(None),
        });
        if let Err(error) = &request {
            self.warn(
                service,
                reason::INVALID_ANNOTATION,
                format!("{error}; no address is assigned until it is fixed"),
            );
        }
        Plan {
            service,
            families,
            request,
            holder: Holder {
                service,
                sharing_key: sharing_key(service),
                foreign: false,
            },
        }
    }

    /// The valid pool containing `addr` (valid pools never overlap).
    fn pool_of(&self, addr: Addr) -> Option<&'p Pool<'a>> {
        self.pools.iter().find(|p| p.is_valid() && p.contains(addr))
    }

    fn selects(pool: &Pool<'_>, service: &LbService) -> bool {
        pool.selector
            .matches(&service.labels, &service.key.namespace, &service.key.name)
    }

    /// Step 3: the addresses of the Service's status that it keeps.
    fn keep_current(&mut self, plan: &Plan<'a>) -> Vec<AssignedAddress> {
        let mut kept: Vec<AssignedAddress> = Vec::new();
        for ip in &plan.service.ingress_ips {
            if kept.iter().any(|k| k.ip == *ip) {
                continue;
            }
            match self.check_kept(plan, *ip, &kept) {
                Ok(pool) => {
                    self.ledger.add(Addr::from(*ip), plan.holder);
                    kept.push(assigned(*ip, pool));
                }
                Err((EventType::Warning, message)) => {
                    self.warn(plan.service, reason::IP_CONFLICT, message)
                }
                Err((EventType::Normal, message)) => self.event(
                    plan.service,
                    EventType::Normal,
                    reason::IP_RELEASED,
                    message,
                ),
            }
        }
        kept
    }

    fn check_kept(
        &self,
        plan: &Plan<'a>,
        ip: IpAddr,
        kept: &[AssignedAddress],
    ) -> Result<&'p Pool<'a>, (EventType, String)> {
        let release = |why: String| Err((EventType::Normal, format!("released {ip}: {why}")));
        let family = IpFamily::of(ip);
        match &plan.request {
            Err(_) => return release("the address request is invalid".into()),
            Ok(Some(request)) if !request.ips.contains(&ip) => {
                return release(format!("not requested by {}", request.source_name));
            }
            _ => {}
        }
        if !plan.families.contains(&family) || kept.iter().any(|k| IpFamily::of(k.ip) == family) {
            return release(format!("no {family} address is wanted"));
        }
        let Some(pool) = self.pool_of(Addr::from(ip)) else {
            return release("no valid LoadBalancerIPPool contains it".into());
        };
        if !Self::selects(pool, plan.service) {
            return release(format!("pool {} does not select this Service", pool.name()));
        }
        if let Some(why) = self.ledger.refusal(Addr::from(ip), &plan.holder) {
            return Err((
                EventType::Warning,
                format!(
                    "{ip} is also in this Service's status but {why}; assigning another address"
                ),
            ));
        }
        Ok(pool)
    }

    /// Step 4: completes the Service's addresses; returns them in family order.
    fn allocate_missing(
        &mut self,
        plan: &Plan<'a>,
        kept: Vec<AssignedAddress>,
    ) -> Vec<AssignedAddress> {
        let (new, shortfalls) = match &plan.request {
            Err(_) => (Vec::new(), Vec::new()),
            Ok(Some(request)) => self.take_requested(plan, request, &kept),
            Ok(None) => self.take_free(plan, &kept),
        };
        let complete = shortfalls.is_empty();
        // RequireDualStack and explicit requests are all or nothing for new addresses.
        let all_or_nothing = plan.service.ip_family_policy == IpFamilyPolicy::RequireDualStack
            || matches!(plan.request, Ok(Some(_)));
        let new = if complete || !all_or_nothing {
            new
        } else {
            Vec::new()
        };
        let served = !kept.is_empty() || !new.is_empty();
        for shortfall in shortfalls {
            self.report_shortfall(plan, shortfall, served);
        }
        for address in &new {
            self.ledger.add(Addr::from(address.ip), plan.holder);
            self.event(
                plan.service,
                EventType::Normal,
                reason::IP_ALLOCATED,
                format!("assigned {} from pool {}", address.ip, address.pool),
            );
        }
        let mut addresses: Vec<AssignedAddress> = kept.into_iter().chain(new).collect();
        addresses.sort_by_key(|a| {
            let family = IpFamily::of(a.ip);
            plan.families.iter().position(|f| *f == family)
        });
        addresses
    }

    fn take_requested(
        &self,
        plan: &Plan<'a>,
        request: &Request,
        kept: &[AssignedAddress],
    ) -> (Vec<AssignedAddress>, Vec<Shortfall>) {
        let mut new = Vec::new();
        let mut shortfalls = Vec::new();
        for ip in request
            .ips
            .iter()
            .filter(|ip| !kept.iter().any(|k| k.ip == **ip))
        {
            match self.check_requested(plan, *ip, &request.source_name) {
                Ok(pool) => new.push(assigned(*ip, pool)),
                Err((reason, message)) => shortfalls.push(Shortfall::Requested(reason, message)),
            }
        }
        (new, shortfalls)
    }

    fn check_requested(
        &self,
        plan: &Plan<'a>,
        ip: IpAddr,
        source: &str,
    ) -> Result<&'p Pool<'a>, (&'static str, String)> {
        let addr = Addr::from(ip);
        let Some(pool) = self.pool_of(addr) else {
            return Err((
                reason::REQUESTED_IP_OUTSIDE_POOLS,
                format!("{ip} (from {source}) is in no valid LoadBalancerIPPool"),
            ));
        };
        let unavailable = |why: &str| {
            Err((
                reason::REQUESTED_IP_UNAVAILABLE,
                format!("{ip} (from {source}): pool {} {why}", pool.name()),
            ))
        };
        if !Self::selects(pool, plan.service) {
            return unavailable("does not select this Service");
        }
        if pool.disabled() {
            return unavailable("is disabled");
        }
        if let Some(why) = self.ledger.refusal(addr, &plan.holder) {
            return Err((
                reason::REQUESTED_IP_IN_USE,
                format!("{ip} (from {source}) is in use: {why}"),
            ));
        }
        Ok(pool)
    }

    fn take_free(
        &self,
        plan: &Plan<'a>,
        kept: &[AssignedAddress],
    ) -> (Vec<AssignedAddress>, Vec<Shortfall>) {
        let mut new = Vec::new();
        let mut shortfalls = Vec::new();
        for family in &plan.families {
            if kept.iter().any(|k| IpFamily::of(k.ip) == *family) {
                continue;
            }
            match self.free_address(plan, *family) {
                Ok(address) => new.push(address),
                Err(shortfall) => shortfalls.push(shortfall),
            }
        }
        (new, shortfalls)
    }

    /// An address already shared under the Service's sharing key if one fits, else the
    /// lowest free address of the first matching pool in name order.
    fn free_address(
        &self,
        plan: &Plan<'a>,
        family: IpFamily,
    ) -> Result<AssignedAddress, Shortfall> {
        let pools: Vec<&'p Pool<'a>> = self
            .pools
            .iter()
            .filter(|p| p.is_valid() && !p.disabled() && Self::selects(p, plan.service))
            .filter(|p| p.families().contains(&family))
            .collect();
        if pools.is_empty() {
            return Err(Shortfall::NoPool(family));
        }
        let ledger = &self.ledger;
        let shared = plan.holder.sharing_key.and_then(|_| {
            pools.iter().find_map(|p| {
                let ranges = p.ranges_of(family);
                let found = ranges
                    .iter()
                    .find_map(|r| ledger.lowest_shareable(r, &plan.holder));
                found.map(|addr| (*p, addr))
            })
        });
        let found = shared.or_else(|| {
            pools.iter().find_map(|p| {
                let ranges = p.ranges_of(family);
                ranges
                    .iter()
                    .find_map(|r| ledger.lowest_free(r))
                    .map(|addr| (*p, addr))
            })
        });
        match found {
            Some((pool, addr)) => Ok(assigned(addr.ip(), pool)),
            None => Err(Shortfall::Exhausted(
                family,
                pools.iter().map(|p| p.name().to_string()).collect(),
            )),
        }
    }

    fn report_shortfall(&mut self, plan: &Plan<'a>, shortfall: Shortfall, served: bool) {
        let service = plan.service;
        match shortfall {
            // PreferDualStack with one family served: a missing pool for the other family
            // is a choice of the cluster admin, not a problem.
            Shortfall::NoPool(_)
                if served && service.ip_family_policy == IpFamilyPolicy::PreferDualStack => {}
            Shortfall::NoPool(family) => self.warn(
                service,
                reason::NO_MATCHING_POOL,
                format!("no valid, enabled LoadBalancerIPPool offers an {family} address to this Service"),
            ),
            Shortfall::Exhausted(family, pools) => {
                self.warn(
                    service,
                    reason::POOL_EXHAUSTED,
                    format!("no free {family} address in pools {}", pools.join(", ")),
                );
                for pool in pools {
                    self.waiting.entry(pool).or_default().push(service.key.clone());
                }
            }
            Shortfall::Requested(reason, message) => self.warn(service, reason, message),
        }
    }

    /// A Service that is no longer `type: LoadBalancer` but still carries addresses.
    fn release_stale(&mut self, service: &LbService, allocation: &mut Allocation) {
        if service.ingress_ips.is_empty() {
            return;
        }
        let ips: Vec<String> = service
            .ingress_ips
            .iter()
            .map(ToString::to_string)
            .collect();
        self.event(
            service,
            EventType::Normal,
            reason::IP_RELEASED,
            format!(
                "released {}: the Service is no longer of type LoadBalancer",
                ips.join(", ")
            ),
        );
        allocation.services.insert(
            service.key.clone(),
            ServiceAddresses {
                uid: service.uid.clone(),
                addresses: Vec::new(),
                status_changed: true,
                external_traffic_local: service.external_traffic_local,
            },
        );
    }

    fn warn(&mut self, service: &LbService, reason: &'static str, message: String) {
        self.event(service, EventType::Warning, reason, message);
    }

    fn event(
        &mut self,
        service: &LbService,
        type_: EventType,
        reason: &'static str,
        message: String,
    ) {
        self.events.push(Event {
            regarding: ObjectRef {
                kind: ObjectKind::Service,
                key: service.key.clone(),
                uid: service.uid.clone(),
            },
            type_,
            reason,
            message,
        });
    }
}

fn assigned(ip: IpAddr, pool: &Pool<'_>) -> AssignedAddress {
    AssignedAddress {
        ip,
        pool: pool.name().to_string(),
        l2_announce: pool.l2_announce(),
    }
}

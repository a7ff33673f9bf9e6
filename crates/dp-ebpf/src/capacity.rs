//! Map capacities. A plan whose entries do not fit the pinned maps would fail in the middle
//! of a write (`bpf_map_update_elem`: E2BIG/ENOMEM) and hold back every other change until it
//! shrinks. Instead, the service ports that do not fit are refused and named (an
//! `ApplyReport::failed` entry each, retried by the agent): each keeps what it had programmed
//! if that still fits, and every other service port is programmed as planned.

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_dataplane::ServiceFailure;
use sluice_plan::{Plan, ServicePlan, ServicePortName};

use crate::abi;
use crate::state::{self, Groups, MapContent};

/// `max_entries` of the maps the agent writes, as in `ebpf/include/sluice_maps.h` (a test
/// reads them there).
pub(crate) const CAPACITY: [(&str, usize); 5] = [
    (abi::MAP_SVC, 65_536),
    (abi::MAP_SLOT, 262_144),
    (abi::MAP_MAGLEV, 1_048_576),
    (abi::MAP_SRC, 16_384),
    (abi::MAP_CIDR, 256),
];

/// Entries per map, in [`CAPACITY`] order.
type Counts = [usize; 5];

fn counts(content: &MapContent) -> Counts {
    [
        content.svc.len(),
        content.slot.len(),
        content.maglev.len(),
        content.src.len(),
        content.cidr.len(),
    ]
}

fn add(a: Counts, b: Counts) -> Counts {
    std::array::from_fn(|i| a[i] + b[i])
}

/// The first map `used` overflows: (name, entries, capacity).
fn overflow(
    used: Counts,
    capacity: &[(&'static str, usize); 5],
) -> Option<(&'static str, usize, usize)> {
    used.iter()
        .zip(capacity)
        .find(|(n, (_, max))| **n > *max)
        .map(|(n, (name, max))| (*name, *n, *max))
}

/// The entries one service port needs on its own (groups numbered from scratch: only the
/// counts matter).
fn needs(plan: &Plan, name: &ServicePortName, svc: &Arc<ServicePlan>) -> Counts {
    let single = Plan {
        node: Arc::new(sluice_plan::NodePlan {
            pod_cidrs: Vec::new(),
            ..(*plan.node).clone()
        }),
        services: BTreeMap::from([(name.clone(), Arc::clone(svc))]),
        health_checks: BTreeMap::new(),
    };
    let groups = state::assign_groups(&single, &Groups::default(), &MapContent::default());
    counts(&state::render(&single, &groups))
}

/// `plan` as it fits in `capacity`: `None` when all of it does. Otherwise the fitted plan
/// and a failure per refused service port. Service ports programmed unchanged (`programmed`)
/// are kept first; then the others in name order, each refused if it does not fit, and then
/// falling back to its programmed version when that fits.
pub(crate) fn fit(
    plan: &Plan,
    whole: &MapContent,
    programmed: &Plan,
    capacity: &[(&'static str, usize); 5],
) -> Option<(Plan, Vec<ServiceFailure>)> {
    overflow(counts(whole), capacity)?;
    let node_only = Plan {
        node: Arc::clone(&plan.node),
        ..Plan::default()
    };
    let mut used = counts(&state::render(&node_only, &Groups::default()));
    let mut fitted = node_only;
    let mut failed = Vec::new();
    let unchanged = |name: &ServicePortName, svc: &Arc<ServicePlan>| {
        programmed.services.get(name).is_some_and(|p| p == svc)
    };
    let (first, then): (Vec<_>, Vec<_>) = plan
        .services
        .iter()
        .partition(|(name, svc)| unchanged(name, svc));
    for (name, svc) in first.into_iter().chain(then) {
        let need = needs(plan, name, svc);
        let Some((map, entries, max)) = overflow(add(used, need), capacity) else {
            used = add(used, need);
            fitted.services.insert(name.clone(), Arc::clone(svc));
            continue;
        };
        failed.push(ServiceFailure {
            service: name.clone(),
            reason: format!(
                "map {map} is full: this service port needs {} entries, which would make {entries} of its {max}; the previous programming is kept",
                need[CAPACITY.iter().position(|(n, _)| *n == map).unwrap_or(0)]
            ),
        });
        if let Some(old) = programmed.services.get(name).filter(|old| *old != svc) {
            let need = needs(plan, name, old);
            if overflow(add(used, need), capacity).is_none() {
                used = add(used, need);
                fitted.services.insert(name.clone(), Arc::clone(old));
            }
        }
    }
    fitted.health_checks = plan.health_checks.clone();
    Some((fitted, failed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::render;

    fn capacity_with_src(src: usize) -> [(&'static str, usize); 5] {
        let mut c = CAPACITY;
        c[3].1 = src;
        c
    }

    /// LoadBalancer-IP service ports `default/NAME` (in the order given: 203.0.113.1, .2, ...)
    /// with one backend and `ranges` source ranges each (one `sl_src_v1` entry per range).
    fn plan(services: &[(&str, usize)]) -> Plan {
        use sluice_plan::{
            Backend, FrontendAddr, FrontendKey, FrontendKind, FrontendPlan, Protocol, Route,
            Selection, SetName,
        };
        let mut plan = Plan::default();
        for (i, (name, ranges)) in services.iter().enumerate() {
            let name = ServicePortName::new("default", *name, "", Protocol::Tcp);
            let ip = std::net::Ipv4Addr::new(203, 0, 113, u8::try_from(i + 1).unwrap());
            let allowed_sources = (0..*ranges)
                .map(|r| format!("10.{}.{}.0/24", r / 256, r % 256).parse().unwrap())
                .collect();
            let forward = Route::forward(SetName::Cluster);
            let frontend = FrontendPlan {
                key: FrontendKey {
                    addr: FrontendAddr::Ip(ip.into()),
                    protocol: Protocol::Tcp,
                    port: 80,
                },
                kind: FrontendKind::LoadBalancerIp,
                allowed_sources,
                pods: forward,
                node: forward,
                outside: forward,
                selection: Selection::Random,
            };
            let svc = ServicePlan {
                name: name.clone(),
                frontends: vec![frontend],
                cluster: vec![Backend::new("10.244.1.2".parse().unwrap(), 8080)],
                local: Vec::new(),
                affinity_timeout: None,
            };
            plan.services.insert(name, Arc::new(svc));
        }
        plan
    }

    fn fitted(plan: &Plan, programmed: &Plan, src: usize) -> Option<(Plan, Vec<ServiceFailure>)> {
        let groups = state::assign_groups(plan, &Groups::default(), &MapContent::default());
        fit(
            plan,
            &render(plan, &groups),
            programmed,
            &capacity_with_src(src),
        )
    }

    #[test]
    fn capacities_are_those_of_the_map_definitions() {
        let header = include_str!("../../../ebpf/include/sluice_maps.h");
        for (map, max) in CAPACITY {
            let definition = header
                .split("SEC(\".maps\")")
                .find(|d| d.trim_end().ends_with(&format!("}} {map}")))
                .unwrap_or_else(|| panic!("{map} not defined"));
            let declared = definition
                .split("__uint(max_entries, ")
                .nth(1)
                .and_then(|rest| rest.split(')').next())
                .unwrap_or_else(|| panic!("{map} has no max_entries"));
            assert_eq!(declared.parse::<usize>().ok(), Some(max), "{map}");
        }
    }

    #[test]
    fn a_plan_that_fits_is_left_alone() {
        let p = plan(&[("a", 10), ("b", 10)]);
        assert!(fitted(&p, &Plan::default(), 20).is_none());
    }

    #[test]
    fn the_service_that_does_not_fit_is_refused_and_named_the_others_stay() {
        let programmed = plan(&[("a", 10)]);
        let p = plan(&[("a", 10), ("b", 30), ("c", 5)]);
        let (fitted, failed) = fitted(&p, &programmed, 20).expect("does not fit");
        let names: Vec<String> = fitted
            .services
            .keys()
            .map(|n| n.name().to_owned())
            .collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].service.name(), "b");
        assert!(
            failed[0].reason.starts_with("map sl_src_v1 is full: this service port needs 30 entries, which would make 40 of its 20"),
            "{}",
            failed[0].reason
        );
    }

    #[test]
    fn a_programmed_service_that_grows_too_big_keeps_its_programming() {
        let programmed = plan(&[("a", 10), ("b", 5)]);
        // b grows; a new c comes first in name order but b was there before.
        let p = plan(&[("a", 10), ("b", 30), ("c", 4)]);
        let (fitted, failed) = fitted(&p, &programmed, 20).expect("does not fit");
        assert_eq!(fitted.services.len(), 3);
        let b = fitted
            .services
            .values()
            .find(|s| s.name.name() == "b")
            .unwrap();
        assert_eq!(
            b,
            programmed
                .services
                .values()
                .find(|s| s.name.name() == "b")
                .unwrap()
        );
        assert_eq!(
            failed
                .iter()
                .map(|f| f.service.name().to_owned())
                .collect::<Vec<_>>(),
            ["b"]
        );
    }
}

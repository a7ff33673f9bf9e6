//! The programming logic against the in-memory store: incremental cost, safe write order
//! under failures at every step, overflow, growth, cheap resync, drift and restart.

use std::collections::BTreeSet;

use sluice_plan::{Plan, PlanDelta, Protocol};

use super::helpers::*;
use crate::MapProgrammer;
use crate::abi::*;
use crate::sizing::MapSizes;
use crate::store::{FakeMapStore, MapStore, RowKey};

fn programmed(plan: &Plan) -> (MapProgrammer, FakeMapStore) {
    let mut store = FakeMapStore::new();
    let mut p = MapProgrammer::new(MapSizes::default());
    let report = p.resync(&mut store, plan).expect("resync");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    (p, store)
}

fn web(eps: usize) -> DesiredState {
    let mut svc = nodeport_service();
    svc.endpoints = (1..=eps)
        .map(|i| ep(&format!("10.244.2.{i}"), 8080, false))
        .collect();
    desired_with(svc)
}

#[test]
fn one_endpoint_change_writes_only_what_changed() {
    let before = web(10).plan();
    let after = web(9).plan();
    let (mut p, mut store) = programmed(&before);
    let attempts = store.attempts();
    let report = p
        .apply(&mut store, &PlanDelta::between(&before, &after))
        .expect("apply");
    assert_eq!(report.services_changed, 1);
    let writes = store.attempts() - attempts;
    assert_eq!(report.operations, writes);
    // The removed backend owned ~M/10 Maglev slots; the random group loses its last slot
    // and the frontends their count. Nothing else.
    assert!((90..170).contains(&writes), "{writes} writes");
    assert_eq!(semantics(&store.content()), semantics(&rendered(&after)));
}

#[test]
fn a_write_failing_at_any_step_leaves_every_frontend_serving_and_resync_repairs() {
    let before = web(10).plan();
    let after = web(4).plan();
    let delta = PlanDelta::between(&before, &after);
    let old = semantics(&rendered(&before));
    let new = semantics(&rendered(&after));
    let total = {
        let (mut p, mut store) = programmed(&before);
        p.apply(&mut store, &delta).expect("apply").operations
    };
    for n in 1..=total {
        let (mut p, mut store) = programmed(&before);
        store.fail_nth_write(n);
        let report = p
            .apply(&mut store, &delta)
            .expect("a service failure, not an error");
        assert_eq!(report.failed.len(), 1, "write {n}");
        assert_eq!(report.failed[0].service, name("web", Protocol::Tcp));
        assert!(report.failed[0].reason.contains("injected failure"));
        // `semantics` panics on a frontend pointing at a missing slot.
        for (key, serving) in semantics(&store.content()) {
            let allowed: BTreeSet<Backend> = old[&key]
                .backends
                .union(&new[&key].backends)
                .copied()
                .collect();
            assert!(serving.backends.is_subset(&allowed), "write {n}: {key:?}");
        }
        let report = p.resync(&mut store, &after).expect("resync");
        assert!(report.failed.is_empty() && report.full_sync);
        assert_eq!(semantics(&store.content()), new, "repaired after write {n}");
        assert_eq!(p.resync(&mut store, &after).expect("again").operations, 0);
    }
}

#[test]
fn an_apply_after_a_failed_one_rewrites_the_service_blindly() {
    let (first, second, third) = (web(10).plan(), web(4).plan(), web(6).plan());
    let (mut p, mut store) = programmed(&first);
    store.fail_nth_write(20);
    let report = p
        .apply(&mut store, &PlanDelta::between(&first, &second))
        .expect("apply");
    assert_eq!(report.failed.len(), 1);
    let report = p
        .apply(&mut store, &PlanDelta::between(&second, &third))
        .expect("apply");
    assert!(report.failed.is_empty());
    assert_eq!(semantics(&store.content()), semantics(&rendered(&third)));
}

#[test]
fn explicitly_sized_maps_skip_what_does_not_fit_and_name_it() {
    let plan = many(10, 3).plan();
    // Two Maglev tables fit, the NodePorts of svc-0000 and svc-0005 need exactly two.
    let mut store = FakeMapStore::new().with_capacity(MapKind::Maglev, 2 * MAGLEV_M);
    let sizes: MapSizes = format!("maglev={}", 2 * MAGLEV_M).parse().expect("sizes");
    let mut p = MapProgrammer::new(sizes.clone());
    let report = p.resync(&mut store, &plan).expect("resync");
    assert!(report.failed.is_empty(), "{:?}", report.failed);

    let mut bigger = many(11, 3);
    let extra = bigger
        .services
        .remove(&name("svc-0000", Protocol::Tcp))
        .expect("svc-0000");
    bigger.services.insert(
        name("svc-0010", Protocol::Tcp),
        ServicePortState {
            node_port: Some(31000),
            ..extra.clone()
        },
    );
    bigger
        .services
        .insert(name("svc-0000", Protocol::Tcp), extra);
    let plan2 = bigger.plan();
    let report = p
        .apply(&mut store, &PlanDelta::between(&plan, &plan2))
        .expect("apply");
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    assert_eq!(report.failed[0].service, name("svc-0010", Protocol::Tcp));
    assert!(
        report.failed[0]
            .reason
            .contains("does not fit: map sl_maglev_v1"),
        "{}",
        report.failed[0].reason
    );
    assert!(store.resizes().is_empty(), "explicit sizes never grow");
    // Everything else is programmed; the one that did not fit is absent, not half-written.
    let s = semantics(&store.content());
    assert!(s.contains_key(&svc_key("10.96.0.11", 80, SCOPE_SOCK)) || s.len() > 10);
    assert!(!s.contains_key(&nodeport_key(31000, SCOPE_EXT)));
    assert_eq!(store.content().maglev.len(), 2 * MAGLEV_M as usize);
}

#[test]
fn automatically_sized_maps_grow_before_writing() {
    let plan = many(50, 3).plan();
    let mut store = FakeMapStore::new()
        .with_capacity(MapKind::Maglev, MAGLEV_M)
        .with_capacity(MapKind::Svc, 16);
    let mut p = MapProgrammer::new(MapSizes::default());
    let report = p.resync(&mut store, &plan).expect("resync");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(store.resizes().len(), 1);
    let content = store.content();
    assert_eq!(content.maglev.len(), 10 * MAGLEV_M as usize);
    assert!(store.capacity(MapKind::Maglev) as usize >= content.maglev.len() * 3 / 2);
    assert!(store.capacity(MapKind::Svc) as usize >= content.svc.len());
    assert_eq!(semantics(&content), semantics(&rendered(&plan)));
}

#[test]
fn a_failed_growth_skips_only_the_service_ports_that_do_not_fit() {
    let plan = many(10, 3).plan();
    let mut store = FakeMapStore::new().with_capacity(MapKind::Maglev, MAGLEV_M);
    store.fail_resizes(1);
    let mut p = MapProgrammer::new(MapSizes::default());
    let report = p.resync(&mut store, &plan).expect("resync");
    let failed: Vec<String> = report
        .failed
        .iter()
        .map(|f| f.service.to_string())
        .collect();
    assert_eq!(
        failed,
        ["default/svc-0005/tcp"],
        "the second NodePort service does not fit"
    );
    // Everything else is programmed; svc-0005 (10.96.0.6, NodePort 30005) not at all.
    let mut expected = semantics(&rendered(&plan));
    expected
        .retain(|k, _| k.addr != svc_key("10.96.0.6", 80, 0).addr && k.port != 30005u16.to_be());
    let got = semantics(&store.content());
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
}

#[test]
fn a_resync_in_step_is_a_count_check_without_reading_or_writing() {
    let plan = many(30, 3).plan();
    let (mut p, mut store) = programmed(&plan);
    let (attempts, reads) = (store.attempts(), store.reads());
    let report = p.resync(&mut store, &plan).expect("resync");
    assert_eq!((report.operations, report.services_changed), (0, 0));
    assert_eq!(store.attempts(), attempts, "nothing written");
    assert_eq!(store.reads(), reads, "nothing read back");
    // One changed service port: written alone, still without a read-back.
    let mut d = many(30, 3);
    d.services
        .get_mut(&name("svc-0007", Protocol::Tcp))
        .expect("svc")
        .endpoints
        .pop();
    let report = p.resync(&mut store, &d.plan()).expect("resync");
    assert_eq!(report.services_changed, 1);
    assert_eq!(store.reads(), reads);
}

#[test]
fn drift_found_by_the_counts_is_read_back_and_repaired() {
    let plan = web(3).plan();
    let (mut p, mut store) = programmed(&plan);
    let slot = *store.content().slot.keys().last().expect("a slot");
    store.tamper_delete(&RowKey::Slot(slot));
    let report = p.resync(&mut store, &plan).expect("resync");
    assert_eq!(report.operations, 1, "the missing slot is written back");
    assert_eq!(semantics(&store.content()), semantics(&rendered(&plan)));
}

#[test]
fn a_restart_reuses_group_ids_and_rewrites_nothing() {
    let mut d = many(20, 3);
    d.services
        .insert(name("web", Protocol::Tcp), nodeport_service());
    let plan = d.plan();
    let (_, mut store) = programmed(&plan);
    let before = store.content();
    let mut restarted = MapProgrammer::new(MapSizes::default());
    restarted.restore(&mut store).expect("restore");
    let attempts = store.attempts();
    let report = restarted.resync(&mut store, &plan).expect("resync");
    assert_eq!((report.operations, store.attempts()), (0, attempts));
    assert_eq!(store.content(), before);
    // ... and the bookkeeping is in step: a change is incremental again.
    let mut d2 = d.clone();
    d2.services.remove(&name("svc-0003", Protocol::Tcp));
    let plan2 = d2.plan();
    let report = restarted.resync(&mut store, &plan2).expect("resync");
    assert_eq!(report.services_changed, 1);
    assert_eq!(semantics(&store.content()), semantics(&rendered(&plan2)));
}

#[test]
fn a_node_address_change_rewrites_only_the_node_address_map() {
    let before = many(20, 3);
    let mut after = before.clone();
    after.node_port_addresses = vec![ip("172.18.0.9")];
    let (p1, p2) = (before.plan(), after.plan());
    let (mut p, mut store) = programmed(&p1);
    let delta = PlanDelta::between(&p1, &p2);
    assert!(delta.node_changed);
    let report = p.apply(&mut store, &delta).expect("apply");
    assert_eq!(report.operations, 2, "one address added, one removed");
    let c = store.content();
    assert_eq!(c.nodeip.len(), 1);
    assert_eq!(semantics(&c), semantics(&rendered(&p2)));
}

#[test]
fn group_ids_are_handed_out_incrementally_and_reused_after_removal() {
    let d = many(4, 2);
    let plan = d.plan();
    let (mut p, mut store) = programmed(&plan);
    let ids = |store: &FakeMapStore| -> BTreeSet<u32> {
        store
            .content()
            .svc
            .values()
            .map(|v| v.group)
            .filter(|g| *g != 0)
            .collect()
    };
    let first = ids(&store);
    assert_eq!(first, (1..=first.len() as u32).collect());
    let mut d2 = d.clone();
    let gone = d2
        .services
        .remove(&name("svc-0001", Protocol::Tcp))
        .expect("svc-0001");
    let p2 = d2.plan();
    p.apply(&mut store, &PlanDelta::between(&plan, &p2))
        .expect("apply");
    let mut d3 = d2.clone();
    d3.services.insert(
        name("svc-0009", Protocol::Tcp),
        ServicePortState {
            cluster_ips: vec![ip("10.96.9.9")],
            ..gone
        },
    );
    let p3 = d3.plan();
    p.apply(&mut store, &PlanDelta::between(&p2, &p3))
        .expect("apply");
    assert_eq!(
        ids(&store),
        first,
        "the freed id went to the new service port"
    );
}

#[test]
fn stale_udp_flows_are_pruned_after_the_change() {
    use sluice_plan::StaleFlow;
    let plan = web(2).plan();
    let (mut p, mut store) = programmed(&plan);
    let gone = crate::render::backend_of(&sluice_plan::Backend::new(ip("10.244.2.1"), 8080));
    store.ct.insert(
        CtKey {
            proto: 6,
            dir: CT_DIR_ORIG,
            ..CtKey::default()
        },
        CtVal {
            nat_addr: gone.addr,
            nat_port: gone.port,
            ..CtVal::default()
        },
    );
    let delta = PlanDelta {
        node: std::sync::Arc::clone(&plan.node),
        stale_flows: vec![StaleFlow::Backend {
            protocol: Protocol::Tcp,
            ip: ip("10.244.2.1"),
            port: 8080,
        }],
        ..PlanDelta::default()
    };
    p.apply(&mut store, &delta).expect("apply");
    assert!(store.ct.is_empty());
}

/// Services `a` and `b` (cluster IPs .11 and .12, one endpoint each) with these NodePorts.
fn two_with_node_ports(a: Option<u16>, b: Option<u16>) -> Plan {
    let mut d = desired_with(nodeport_service());
    d.services.clear();
    for (n, node_port, last) in [("a", a, 11), ("b", b, 12)] {
        let svc = ServicePortState {
            port: 80,
            cluster_ips: vec![ip(&format!("10.96.0.{last}"))],
            node_port,
            endpoints: vec![ep(&format!("10.244.2.{last}"), 8080, false)],
            ..Default::default()
        };
        d.services.insert(name(n, Protocol::Tcp), svc);
    }
    d.plan()
}

/// Applies the change from `before` to `after`, which must then be what the maps hold,
/// with nothing left for a resync to do; both service ports count as changed once.
fn assert_change_programmed(before: &Plan, after: &Plan) {
    let (mut p, mut store) = programmed(before);
    let report = p
        .apply(&mut store, &PlanDelta::between(before, after))
        .expect("apply");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.services_changed, 2);
    assert_eq!(semantics(&store.content()), semantics(&rendered(after)));
    let report = p.resync(&mut store, after).expect("resync");
    assert_eq!(report.operations, 0, "a resync found more to do");
}

#[test]
fn a_node_port_taken_over_by_a_service_port_processed_first_is_programmed() {
    // `a` takes 30080 from `b` in one change: `a` runs first, while `b` still holds it
    // (found by the ebpf_maps fuzz target: the NodePort was left out until a restart).
    assert_change_programmed(
        &two_with_node_ports(None, Some(30080)),
        &two_with_node_ports(Some(30080), None),
    );
}

#[test]
fn two_service_ports_swapping_node_ports_in_one_change_are_programmed() {
    assert_change_programmed(
        &two_with_node_ports(Some(30080), Some(30081)),
        &two_with_node_ports(Some(30081), Some(30080)),
    );
}

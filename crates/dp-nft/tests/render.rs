//! Golden-file and size tests of the rendered nftables transactions (pure; no root needed).
//! `UPDATE_GOLDEN=1 cargo test -p sluice-dp-nft` rewrites the golden files.

mod fixture;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use sluice_dataplane::Dataplane;
use sluice_dp_nft::render::{
    Previous, ServiceRules, hairpin_elements, render_all, render_node, render_service,
};
use sluice_dp_nft::slots::Picker;
use sluice_dp_nft::transaction::{self, Existing, PickerChain};
use sluice_dp_nft::{FakeNft, NftDataplane};
use sluice_model::Snapshot;
use sluice_plan::{Backend, Family, Plan, PlanDelta, ServicePlan, SetName};

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing {}: run with UPDATE_GOLDEN=1", path.display()));
    assert!(
        expected == actual,
        "{} differs; rerun with UPDATE_GOLDEN=1 if intended.\n--- actual ---\n{actual}",
        path.display()
    );
}

fn rules(plan: &Plan, family: Family) -> Vec<ServiceRules> {
    render_all(plan.services.values().map(Arc::as_ref), family)
}

fn full(plan: &Plan, family: Family, existing: &Existing) -> String {
    let rules = rules(plan, family);
    let pickers: BTreeSet<Picker> = rules.iter().flat_map(ServiceRules::pickers).collect();
    let pickers: Vec<PickerChain> = pickers.into_iter().map(PickerChain::new).collect();
    let mut shared = render_node(&plan.node, family);
    shared.extend(hairpin_elements(&rules));
    transaction::full(family, &pickers, &rules, &shared, existing).to_string()
}

/// The lines of `family`'s table in what the dataplane sends to go from `before` (programmed
/// in full) to `after`: empty when it sends nothing.
fn delta(before: &Plan, after: &Plan, family: Family) -> String {
    let fake = FakeNft::new();
    let mut dp = NftDataplane::with_executor(fake.clone());
    dp.resync(before).expect("the fake refuses nothing");
    dp.apply(&PlanDelta::between(before, after))
        .expect("the fake refuses nothing");
    let state = fake.state();
    if state.applied.len() < 2 {
        return String::new();
    }
    let table = sluice_dp_nft::render::table_family(family);
    state.applied[1..]
        .iter()
        .flat_map(|script| script.lines())
        .filter(|line| line.split_whitespace().nth(2) == Some(table))
        .map(|line| format!("{line}\n"))
        .collect()
}

#[test]
fn full_resync_ipv4_matches_golden() {
    golden(
        "full-ipv4.nft",
        &full(&fixture::plan(), Family::V4, &Existing::default()),
    );
}

#[test]
fn full_resync_ipv6_matches_golden() {
    golden(
        "full-ipv6.nft",
        &full(&fixture::plan(), Family::V6, &Existing::default()),
    );
}

#[test]
fn removing_one_endpoint_matches_golden_diff() {
    let text = delta(
        &fixture::plan(),
        &fixture::without_web_endpoint(),
        Family::V4,
    );
    golden("diff-remove-endpoint.nft", &text);
}

#[test]
fn equal_plans_give_an_empty_diff() {
    let plan = fixture::plan();
    assert_eq!(delta(&plan, &plan, Family::V4), "");
}

#[test]
fn full_resync_deletes_chains_found_at_restore_that_are_no_longer_wanted() {
    let mut existing = Existing::default();
    existing.chains.insert("svc-OLD00000-shop/gone/tcp".into());
    existing.chains.insert("services".into());
    existing.sets.insert("aff-OLD00000".into());
    let text = full(&fixture::plan(), Family::V4, &existing);
    assert!(text.contains("delete chain ip sluice svc-OLD00000-shop/gone/tcp\n"));
    assert!(text.contains("delete set ip sluice aff-OLD00000\n"));
    assert!(
        !text.contains("delete chain ip sluice services\n"),
        "base chains are never deleted"
    );
    assert!(
        !text.contains("delete table") && !text.contains("flush table"),
        "no table flush on restart"
    );
}

fn many_services(n: usize, port_of_4321: u16) -> Snapshot {
    let mut s = Snapshot::default();
    for i in 0..n {
        let name = format!("svc-{i}");
        fixture::add_service(
            &mut s,
            "bulk",
            &name,
            json!({
                "type": "NodePort",
                "clusterIP": format!("10.96.{}.{}", i / 250, i % 250 + 1),
                "ports": [{ "name": "http", "port": 80, "nodePort": 30000 + (i % 2000) }],
            }),
        );
        let port = if i == 4321 { port_of_4321 } else { 8080 };
        let eps: Vec<String> = (0..3)
            .map(|j| format!("10.{}.{}.{}", 100 + j, i / 250, i % 250 + 1))
            .collect();
        let eps: Vec<(&str, &str)> = eps.iter().map(|e| (e.as_str(), "node-b")).collect();
        fixture::add_slice(
            &mut s,
            "bulk",
            &format!("{name}-1"),
            &name,
            "IPv4",
            json!([{ "name": "http", "port": port }]),
            &eps,
        );
    }
    s
}

fn quiet_plan(s: &Snapshot) -> Plan {
    // Two thousand node ports shared by ten thousand services: conflicts are expected here.
    sluice_compute::compute(s, &fixture::node(), &fixture::config()).plan
}

#[test]
fn one_endpoint_change_among_ten_thousand_services_is_a_small_transaction() {
    let before = quiet_plan(&many_services(10_000, 8080));
    let after = quiet_plan(&many_services(10_000, 9090));
    let full_text = full(&before, Family::V4, &Existing::default());
    let diff = delta(&before, &after, Family::V4);
    // The three endpoints of one service port change their port: their slots are rewritten
    // (each a delete and an add of the same key, in one command each), nothing else.
    let commands: Vec<&str> = diff.lines().collect();
    assert_eq!(commands.len(), 2, "{diff}");
    assert!(
        commands[0].starts_with("delete element ip sluice slots-cluster-ip-tcp-4 {")
            && commands[1].starts_with("add element ip sluice slots-cluster-ip-tcp-4 {"),
        "only endpoint slots change:\n{diff}"
    );
    assert!(diff.contains("10.101.17.72 . 9090"), "{diff}");
    assert!(!diff.contains(". 8080"), "no old endpoint left:\n{diff}");
    assert!(
        full_text.len() > 1000 * diff.len(),
        "sanity: the full sync is large ({} bytes, the change {})",
        full_text.len(),
        diff.len()
    );
}

#[test]
fn adding_a_service_touches_only_its_own_objects() {
    let before_snapshot = many_services(1000, 8080);
    let mut after_snapshot = before_snapshot.clone();
    fixture::add_service(
        &mut after_snapshot,
        "bulk",
        "new",
        json!({
            "clusterIP": "10.97.0.1",
            "ports": [{ "port": 53, "protocol": "UDP" }],
        }),
    );
    let diff = delta(
        &quiet_plan(&before_snapshot),
        &quiet_plan(&after_snapshot),
        Family::V4,
    );
    assert_eq!(
        diff,
        "add element ip sluice no-endpoint-services { 10.97.0.1 . udp . 53 : goto reject-chain }\n"
    );
}

#[test]
fn a_refused_service_is_isolated_and_everything_else_applies() {
    let fake = FakeNft::new();
    let mut dp = NftDataplane::with_executor(fake.clone());
    dp.restore().unwrap();
    let before = fixture::plan();
    dp.resync(&before).unwrap();
    // The kernel refuses anything about the cache service (e.g. a module it lacks).
    fake.state().poison.push("shop/cache".into());
    let mut s = fixture::snapshot();
    fixture::add_service(
        &mut s,
        "shop",
        "cache",
        json!({
            "clusterIP": "10.96.0.31",
            "ports": [{ "port": 6379 }],
        }),
    );
    fixture::add_slice(
        &mut s,
        "shop",
        "web-v4",
        "web",
        "IPv4",
        json!([{ "name": "http", "port": 8080 }]),
        &[("10.244.1.2", "node-a")],
    );
    let after = fixture::plan_of(&s);
    let report = dp.apply(&PlanDelta::between(&before, &after)).unwrap();
    let failed: Vec<String> = report
        .failed
        .iter()
        .map(|f| f.service.to_string())
        .collect();
    assert_eq!(failed, vec!["shop/cache/tcp"]);
    assert_eq!(report.services_changed, 1, "web applied: {report:?}");
    let applied = fake.state().applied[1..].join("");
    assert!(
        applied.contains("delete element ip sluice hairpin-endpoints { 10.244.2.2 . 10.244.2.2 }"),
        "web's removed endpoint went:\n{applied}"
    );
    assert!(
        !applied.contains("10.244.2.2 . 8080"),
        "no slot left with it:\n{applied}"
    );
}

/// A pod behind two service ports is masqueraded when it reaches itself through either: its
/// `hairpin-endpoints` element stays while one of them still uses it and goes with the last.
#[test]
fn a_hairpin_address_shared_by_two_services_goes_with_the_last() {
    let fake = FakeNft::new();
    let mut dp = NftDataplane::with_executor(fake.clone());
    dp.restore().unwrap();
    let mut s = Snapshot::default();
    for (name, ip) in [("one", "10.96.7.1"), ("two", "10.96.7.2")] {
        let spec = json!({ "clusterIP": ip, "ports": [{ "port": 80 }] });
        fixture::add_service(&mut s, "pair", name, spec);
        let ports = json!([{ "port": 8080 }]);
        fixture::add_slice(
            &mut s,
            "pair",
            name,
            name,
            "IPv4",
            ports,
            &[("10.244.7.7", "node-b")],
        );
    }
    let both = fixture::plan_of(&s);
    dp.resync(&both).unwrap();
    let element = "hairpin-endpoints { 10.244.7.7 . 10.244.7.7 }";
    assert!(
        fake.state().applied[0].contains(element),
        "added with the first"
    );
    let mut steps = Vec::new();
    let mut before = both;
    for name in ["one", "two"] {
        s.services.retain(|key, _| key.name != name);
        let after = fixture::plan_of(&s);
        dp.apply(&PlanDelta::between(&before, &after)).unwrap();
        steps.push(fake.state().applied.last().cloned().unwrap_or_default());
        before = after;
    }
    assert!(
        !steps[0].contains(element),
        "still used by two:\n{}",
        steps[0]
    );
    let deleted = format!("delete element ip sluice {element}");
    assert!(
        steps[1].contains(&deleted),
        "gone with the last:\n{}",
        steps[1]
    );
}

/// Endpoint churn on `plan`'s backends of `family`, by step: growing well past 255 endpoints
/// (wide slot indexes, several capacities), replacing and removing some, then shrinking to
/// one. The local set keeps every third cluster endpoint.
fn churn(plan: &mut ServicePlan, family: Family, step: usize) {
    let address = |i: usize| -> std::net::IpAddr {
        match family {
            Family::V4 => std::net::Ipv4Addr::from(0x0af5_0000 + i as u32).into(),
            Family::V6 => {
                std::net::Ipv6Addr::from(0xfd00_0010_0245_0000_0000_0000_0000_0000u128 + i as u128)
                    .into()
            }
        }
    };
    let port = plan.cluster.first().map_or(8080, |b| b.port);
    let mut ours: Vec<Backend> = plan
        .backends(sluice_plan::SetName::Cluster, family)
        .copied()
        .collect();
    let fresh = |k: usize| Backend::new(address(step * 31 + k), port);
    match (step % 4, step < 60) {
        (0, true) => ours.extend((0..20).map(fresh)),
        (1, _) if ours.len() > 1 => drop(ours.remove((step * 7) % ours.len())),
        (2, _) if !ours.is_empty() => {
            let i = (step * 13) % ours.len();
            ours[i] = fresh(99);
        }
        (3, false) => ours.truncate(ours.len().saturating_sub(25).max(1)),
        _ => {}
    }
    ours.sort_unstable();
    ours.dedup();
    plan.cluster.retain(|b| !family.contains(&b.ip));
    plan.cluster.extend(&ours);
    plan.cluster.sort_unstable();
    plan.local.retain(|b| !family.contains(&b.ip));
    plan.local.extend(ours.iter().step_by(3));
    plan.local.sort_unstable();
}

/// The dataplane keeps a programmed service port as its plan and the slot layouts it was
/// rendered with, and renders its rules again when a change needs them (to compute the
/// delta): that rendering must be exactly the one made then — chains, elements, slots,
/// hairpins — whatever endpoint churn led there.
#[test]
fn a_plan_rendered_again_from_its_kept_slots_is_what_was_rendered_then() {
    let plan = fixture::plan();
    // Every service port as planned, and without session affinity (so the eTP=Local
    // LoadBalancer draws from both sets too).
    let services = plan.services.values().flat_map(|s| {
        let mut slotted = (**s).clone();
        slotted.affinity_timeout = None;
        [(**s).clone(), slotted]
    });
    let mut capacities = BTreeSet::new();
    for service in services {
        for family in Family::ALL {
            let mut current = service.clone();
            let mut rendered = render_service(&current, family, Previous::Nothing);
            for step in 0..120 {
                churn(&mut current, family, step);
                let next = render_service(&current, family, Previous::Rules(&rendered));
                let kept = next.kept_slots();
                let again = render_service(&current, family, Previous::Kept(&kept));
                assert_eq!(again, next, "{} {family:?} step {step}", current.name);
                capacities.extend(next.draws.values().map(|d| (d.set, d.slots.capacity())));
                rendered = next;
            }
        }
    }
    let local = capacities
        .iter()
        .filter(|(s, _)| *s == SetName::Local)
        .count();
    assert!(local >= 4, "the local set changed capacity: {capacities:?}");
    assert!(
        capacities.contains(&(SetName::Cluster, 512)) && capacities.len() >= 10,
        "more than 255 endpoints (wide indexes), capacities up and down: {capacities:?}"
    );
}

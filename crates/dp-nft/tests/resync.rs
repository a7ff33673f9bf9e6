//! The periodic resync against a fake kernel: cheap when nothing changed, a name check when
//! someone else committed, a full rewrite when our table lost something (pure; no root).

mod fixture;

use std::sync::Arc;

use sluice_dataplane::Dataplane;
use sluice_dp_nft::transaction::Existing;
use sluice_dp_nft::{Drift, FakeNft, NftDataplane, Readback};
use sluice_plan::{Family, Plan};

/// Programs the fixture; returns the dataplane and the names the first script created.
fn programmed(fake: &FakeNft) -> (NftDataplane<FakeNft>, Vec<(Family, Existing)>) {
    let mut dp = NftDataplane::with_executor(fake.clone());
    dp.restore().unwrap();
    dp.resync(&fixture::plan()).unwrap();
    let script = fake.state().applied[0].clone();
    (dp, names_created_by(&script))
}

/// The chains, maps and sets a full script declares, per family.
fn names_created_by(script: &str) -> Vec<(Family, Existing)> {
    let mut out: Vec<(Family, Existing)> = Family::ALL
        .iter()
        .map(|f| (*f, Existing::default()))
        .collect();
    for line in script.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [verb, kind, family, _table, name, ..] = words[..] else {
            continue;
        };
        let index = usize::from(family == "ip6");
        match (verb, kind) {
            ("add", "chain") => out[index].1.chains.insert(name.to_owned()),
            ("add", "set" | "map") => out[index].1.sets.insert(name.to_owned()),
            _ => false,
        };
    }
    out
}

fn kernel_holds(fake: &FakeNft, names: &[(Family, Existing)]) {
    fake.state().readback = names
        .iter()
        .map(|(f, existing)| {
            let back = Readback {
                existing: existing.clone(),
                ..Readback::default()
            };
            (*f, back)
        })
        .collect();
}

/// The same plan, every service plan a fresh allocation (as a recompute produces).
fn recomputed(plan: &Plan) -> Plan {
    let mut copy = plan.clone();
    for service in copy.services.values_mut() {
        *service = Arc::new((**service).clone());
    }
    copy
}

#[test]
fn nothing_changed_means_nothing_sent_and_nothing_read() {
    let fake = FakeNft::new();
    fake.state().drift = Drift::None;
    let (mut dp, _) = programmed(&fake);
    let report = dp.resync(&recomputed(&fixture::plan())).unwrap();
    assert_eq!(report.operations, 0, "{report:?}");
    let state = fake.state();
    assert_eq!(state.offered.len(), 1, "only the first programming");
    assert_eq!(state.drift_checks, 1);
    assert_eq!(
        state.name_reads, 0,
        "no read-back when the generation is ours"
    );
}

#[test]
fn an_executor_that_cannot_tell_is_trusted_like_before() {
    let fake = FakeNft::new();
    fake.state().drift = Drift::Unknown;
    let (mut dp, _) = programmed(&fake);
    let report = dp.resync(&fixture::plan()).unwrap();
    assert_eq!(report.operations, 0, "{report:?}");
    assert_eq!(fake.state().name_reads, 0);
}

#[test]
fn a_foreign_commit_with_our_table_intact_changes_nothing() {
    let fake = FakeNft::new();
    let (mut dp, names) = programmed(&fake);
    kernel_holds(&fake, &names);
    fake.state().drift = Drift::Possible;
    let report = dp.resync(&fixture::plan()).unwrap();
    assert_eq!(report.operations, 0, "{report:?}");
    let state = fake.state();
    assert_eq!(state.name_reads, 2, "both families checked");
    assert_eq!(state.offered.len(), 1, "nothing rewritten");
}

#[test]
fn a_chain_removed_behind_our_back_makes_the_resync_rewrite_everything() {
    let fake = FakeNft::new();
    let (mut dp, mut names) = programmed(&fake);
    let gone = names[0]
        .1
        .chains
        .iter()
        .find(|c| c.starts_with("ep-"))
        .cloned()
        .expect("an endpoint chain");
    names[0].1.chains.remove(&gone);
    kernel_holds(&fake, &names);
    fake.state().drift = Drift::Possible;
    let report = dp.resync(&fixture::plan()).unwrap();
    assert!(report.full_sync && report.operations > 50, "{report:?}");
    let state = fake.state();
    let rewrite = state.applied.last().expect("a rewrite");
    assert!(rewrite.starts_with("add table ip sluice\n"), "{rewrite}");
    assert!(
        rewrite.contains(&format!("add chain ip sluice {gone}\n")),
        "the missing chain is re-created"
    );
}

//! Golden-file and size tests of the rendered nftables transactions (pure; no root needed).
//! `UPDATE_GOLDEN=1 cargo test -p sluice-dp-nft` rewrites the golden files.

mod fixture;

use std::path::PathBuf;

use sluice_dp_nft::render::{Family, render};
use sluice_dp_nft::transaction::{self, Existing};
use sluice_model::{DesiredState, Protocol, ServicePortState};

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

#[test]
fn full_resync_ipv4_matches_golden() {
    let text = transaction::full(
        Family::Ipv4,
        &render(&fixture::desired(), Family::Ipv4),
        &Existing::default(),
    );
    golden("full-ipv4.nft", &text);
}

#[test]
fn full_resync_ipv6_matches_golden() {
    let text = transaction::full(
        Family::Ipv6,
        &render(&fixture::desired(), Family::Ipv6),
        &Existing::default(),
    );
    golden("full-ipv6.nft", &text);
}

#[test]
fn removing_one_endpoint_matches_golden_diff() {
    let before = fixture::desired();
    let mut after = before.clone();
    let web = after.services.values_mut().find(|s| s.port == 80).unwrap();
    web.cluster_endpoints
        .retain(|e| e.ip.to_string() != "10.244.2.2");
    let text = transaction::diff(
        Family::Ipv4,
        &render(&before, Family::Ipv4),
        &render(&after, Family::Ipv4),
    );
    golden("diff-remove-endpoint.nft", &text);
}

#[test]
fn equal_states_give_an_empty_diff() {
    let d = fixture::desired();
    assert_eq!(
        transaction::diff(
            Family::Ipv4,
            &render(&d, Family::Ipv4),
            &render(&d, Family::Ipv4)
        ),
        ""
    );
}

#[test]
fn full_resync_deletes_chains_found_at_restore_that_are_no_longer_wanted() {
    let mut existing = Existing::default();
    existing.chains.insert("svc-OLD00000-shop/gone/tcp".into());
    existing.chains.insert("services".into());
    existing.sets.insert("aff-OLD00000".into());
    let text = transaction::full(
        Family::Ipv4,
        &render(&fixture::desired(), Family::Ipv4),
        &existing,
    );
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

fn many_services(n: usize) -> DesiredState {
    let mut d = DesiredState {
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..DesiredState::default()
    };
    for i in 0..n {
        let eps = (0..3)
            .map(|j| {
                fixture::ep(
                    &format!("10.{}.{}.{}", 100 + j, i / 250, i % 250 + 1),
                    8080,
                    "node-b",
                    false,
                )
            })
            .collect();
        d.services.insert(
            fixture::name("bulk", &format!("svc-{i}"), "http", Protocol::Tcp),
            ServicePortState {
                port: 80,
                cluster_ips: vec![fixture::ip(&format!("10.96.{}.{}", i / 250, i % 250 + 1))],
                node_port: Some(30000 + (i % 2000) as u16),
                cluster_endpoints: eps,
                has_any_endpoints: true,
                ..ServicePortState::default()
            },
        );
    }
    d
}

#[test]
fn one_endpoint_change_among_ten_thousand_services_is_a_small_transaction() {
    let before = many_services(10_000);
    let mut after = before.clone();
    let svc = after.services.values_mut().nth(4321).unwrap();
    svc.cluster_endpoints[1].port = 9090;
    let full = transaction::full(
        Family::Ipv4,
        &render(&before, Family::Ipv4),
        &Existing::default(),
    );
    let diff = transaction::diff(
        Family::Ipv4,
        &render(&before, Family::Ipv4),
        &render(&after, Family::Ipv4),
    );
    let diff_lines = diff.lines().count();
    // New endpoint chain (add chain + 2 rules), re-dispatch of the cluster chain (flush + 1 rule),
    // removal of the old endpoint chain (flush + delete).
    assert!(diff_lines <= 10, "diff has {diff_lines} lines:\n{diff}");
    assert!(
        full.lines().count() > 100_000 / 2,
        "sanity: the full sync is large"
    );
    assert!(diff.contains("dnat to 10.101."), "{diff}");
    assert!(
        !diff.contains("svc-") || diff.lines().all(|l| !l.contains("add rule ip sluice svc-")),
        "service entry chain untouched"
    );
}

#[test]
fn adding_a_service_touches_only_its_own_objects() {
    let before = many_services(1000);
    let mut after = before.clone();
    after.services.insert(
        fixture::name("bulk", "new", "", Protocol::Udp),
        ServicePortState {
            port: 53,
            cluster_ips: vec![fixture::ip("10.97.0.1")],
            ..ServicePortState::default()
        },
    );
    let diff = transaction::diff(
        Family::Ipv4,
        &render(&before, Family::Ipv4),
        &render(&after, Family::Ipv4),
    );
    assert_eq!(
        diff,
        "add element ip sluice no-endpoint-services { 10.97.0.1 . udp . 53 : goto reject-chain }\n"
    );
}

//! Table tests of the allocator: what a user sees in Service statuses, pool conditions and
//! Events.

mod common;

use common::*;
use sluice_lbipam::{
    AllocatorConfig, IpFamily, IpFamilyPolicy, LbService, allocate, condition, reason,
};
use sluice_model::Protocol;

const SLUICE_IPS: &str = "sluice.dev/load-balancer-ips";
const METALLB_IPS: &str = "metallb.universe.tf/loadBalancerIPs";
const CILIUM_IPS: &str = "lbipam.cilium.io/ips";
const SHARING: &str = "sluice.dev/sharing-key";
const METALLB_SHARING: &str = "metallb.universe.tf/allow-shared-ip";

#[test]
fn services_get_the_lowest_free_addresses_oldest_first() {
    let pools = [pool("main", &["192.0.2.0/30"])];
    // Given newest first: order of input must not matter, age does.
    let services = [svc("new", 2), svc("old", 1)];
    let a = run(&pools, &services);
    assert_eq!(ips(&a, "old"), ["192.0.2.0"]);
    assert_eq!(ips(&a, "new"), ["192.0.2.1"]);
    assert!(a.services[&key("old")].status_changed);
    assert_eq!(
        service_events(&a, "old"),
        ["Normal IPAllocated: assigned 192.0.2.0 from pool main"]
    );
    assert!(warnings(&a).is_empty(), "{:?}", warnings(&a));
    let upd: Vec<String> = a.status_updates().map(|(k, _)| k.to_string()).collect();
    assert_eq!(upd, ["default/new", "default/old"]);
}

#[test]
fn ranges_are_inclusive_and_the_first_pool_in_name_order_is_used() {
    let pools = [
        pool("b-pool", &["198.51.100.0/24"]),
        pool("a-pool", &["192.0.2.10-192.0.2.11"]),
    ];
    let services = [svc("s1", 1), svc("s2", 2), svc("s3", 3)];
    let a = run(&pools, &services);
    assert_eq!(ips(&a, "s1"), ["192.0.2.10"]);
    assert_eq!(ips(&a, "s2"), ["192.0.2.11"]);
    assert_eq!(ips(&a, "s3"), ["198.51.100.0"]);
    assert_eq!(a.services[&key("s3")].addresses[0].pool, "b-pool");
}

#[test]
fn service_selector_limits_a_pool() {
    let pools = [
        pool_selecting("a-team", &["192.0.2.0/31"], "team", "a"),
        pool_selecting(
            "z-ns",
            &["203.0.113.0/31"],
            "io.kubernetes.service.namespace",
            "default",
        ),
    ];
    let services = [svc("team-a", 1).label("team", "a"), svc("other", 2)];
    let a = run(&pools, &services);
    assert_eq!(ips(&a, "team-a"), ["192.0.2.0"]);
    assert_eq!(ips(&a, "other"), ["203.0.113.0"]);

    let only_team = [pool_selecting("a-team", &["192.0.2.0/31"], "team", "a")];
    let a = run(&only_team, &[svc("other", 2)]);
    assert!(ips(&a, "other").is_empty());
    assert_eq!(
        service_events(&a, "other"),
        [
            "Warning NoMatchingPool: no valid, enabled LoadBalancerIPPool offers an IPv4 address to this Service"
        ]
    );
}

#[test]
fn load_balancer_class_decides_which_services_are_ours() {
    let pools = [pool("main", &["192.0.2.0/29"])];
    let services = [
        svc("unset", 1),
        svc("ours", 2).class("sluice.dev/lb"),
        // Another controller's Service: left alone, its address never handed out again.
        svc("theirs", 0)
            .class("example.com/lb")
            .status(&["192.0.2.0"]),
        svc("theirs-pending", 0).class("example.com/lb"),
    ];
    let a = run(&pools, &services);
    assert_eq!(ips(&a, "unset"), ["192.0.2.1"]);
    assert_eq!(ips(&a, "ours"), ["192.0.2.2"]);
    assert!(!a.services.contains_key(&key("theirs")));
    assert!(!a.services.contains_key(&key("theirs-pending")));
    assert!(service_events(&a, "theirs").is_empty());

    let custom = AllocatorConfig {
        load_balancer_class: "example.com/lb".into(),
    };
    let a = allocate(&pools, &services, &custom);
    assert_eq!(ips(&a, "theirs"), ["192.0.2.0"]);
    assert_eq!(ips(&a, "theirs-pending"), ["192.0.2.1"]);
    assert!(!a.services.contains_key(&key("ours")));
}

#[test]
fn addresses_are_released_when_the_type_changes() {
    let pools = [pool("main", &["192.0.2.0/30"])];
    let services = [
        svc("was-lb", 1).not_load_balancer().status(&["192.0.2.0"]),
        svc("plain", 2).not_load_balancer(),
        svc("lb", 3),
    ];
    let a = run(&pools, &services);
    let was = &a.services[&key("was-lb")];
    assert!(was.addresses.is_empty() && was.status_changed);
    assert_eq!(
        service_events(&a, "was-lb"),
        ["Normal IPReleased: released 192.0.2.0: the Service is no longer of type LoadBalancer"]
    );
    assert!(!a.services.contains_key(&key("plain")));
    // The released address is free for others in the same run.
    assert_eq!(ips(&a, "lb"), ["192.0.2.0"]);
}

#[test]
fn a_deleted_service_frees_its_address() {
    let pools = [pool("main", &["192.0.2.0/31"])];
    let before = [
        svc("a", 1).status(&["192.0.2.0"]),
        svc("b", 2).status(&["192.0.2.1"]),
        svc("c", 3),
    ];
    let a = run(&pools, &before);
    assert!(ips(&a, "c").is_empty());
    let after = [before[1].clone(), before[2].clone()];
    let a = run(&pools, &after);
    assert_eq!(ips(&a, "b"), ["192.0.2.1"]);
    assert_eq!(ips(&a, "c"), ["192.0.2.0"]);
}

#[test]
fn requested_addresses_from_each_annotation_and_spec_load_balancer_ip() {
    let pools = [pool("main", &["192.0.2.0/28"])];
    let mut by_spec = svc("spec", 4);
    by_spec.load_balancer_ip = Some("192.0.2.13".into());
    let services = [
        svc("sluice", 1).annotate(SLUICE_IPS, "192.0.2.10"),
        svc("metallb", 2).annotate(METALLB_IPS, "192.0.2.11"),
        svc("cilium", 3).annotate(CILIUM_IPS, " 192.0.2.12 "),
        by_spec,
        // sluice's annotation wins over the others.
        svc("both", 5)
            .annotate(SLUICE_IPS, "192.0.2.14")
            .annotate(METALLB_IPS, "192.0.2.9"),
        svc("auto", 6),
    ];
    let a = run(&pools, &services);
    assert_eq!(ips(&a, "sluice"), ["192.0.2.10"]);
    assert_eq!(ips(&a, "metallb"), ["192.0.2.11"]);
    assert_eq!(ips(&a, "cilium"), ["192.0.2.12"]);
    assert_eq!(ips(&a, "spec"), ["192.0.2.13"]);
    assert_eq!(ips(&a, "both"), ["192.0.2.14"]);
    assert_eq!(ips(&a, "auto"), ["192.0.2.0"]);
    assert!(warnings(&a).is_empty(), "{:?}", warnings(&a));
}

#[test]
fn unusable_requests_leave_the_service_without_address_and_say_why() {
    let mut disabled = pool("off", &["198.51.100.0/30"]);
    disabled.spec.disabled = true;
    let pools = [
        pool("main", &["192.0.2.0/30"]),
        pool_selecting("picky", &["203.0.113.0/30"], "team", "a"),
        disabled,
    ];
    let services = [
        svc("holder", 1).status(&["192.0.2.1"]),
        svc("outside", 2).annotate(SLUICE_IPS, "10.9.9.9"),
        svc("taken", 3).annotate(SLUICE_IPS, "192.0.2.1"),
        svc("not-selected", 4).annotate(SLUICE_IPS, "203.0.113.1"),
        svc("disabled", 5).annotate(SLUICE_IPS, "198.51.100.1"),
        svc("garbage", 6)
            .annotate(METALLB_IPS, "192.0.2.x")
            .status(&["192.0.2.2"]),
    ];
    let a = run(&pools, &services);
    let cases = [
        (
            "outside",
            "Warning RequestedIPOutsidePools: 10.9.9.9 (from annotation sluice.dev/load-balancer-ips) is in no valid LoadBalancerIPPool",
        ),
        (
            "taken",
            "Warning RequestedIPInUse: 192.0.2.1 (from annotation sluice.dev/load-balancer-ips) is in use: Service default/holder holds it and the two Services have no common sharing key",
        ),
        (
            "not-selected",
            "Warning RequestedIPUnavailable: 203.0.113.1 (from annotation sluice.dev/load-balancer-ips): pool picky does not select this Service",
        ),
        (
            "disabled",
            "Warning RequestedIPUnavailable: 198.51.100.1 (from annotation sluice.dev/load-balancer-ips): pool off is disabled",
        ),
    ];
    for (name, want) in cases {
        assert!(ips(&a, name).is_empty(), "{name}: {:?}", ips(&a, name));
        assert_eq!(service_events(&a, name), [want], "{name}");
    }
    // An unparsable annotation empties the status instead of keeping a guess.
    assert!(ips(&a, "garbage").is_empty());
    assert!(a.services[&key("garbage")].status_changed);
    assert_eq!(
        service_events(&a, "garbage"),
        [
            "Warning InvalidAnnotation: annotation metallb.universe.tf/loadBalancerIPs: \"192.0.2.x\" is not an IP address; no address is assigned until it is fixed",
            "Normal IPReleased: released 192.0.2.2: the address request is invalid",
        ]
    );
}

#[test]
fn malformed_requests_are_named() {
    let pools = [pool("main", &["192.0.2.0/30", "2001:db8::/126"])];
    let dual = [IpFamily::V4, IpFamily::V6];
    let services = [
        svc("two-v4", 1).annotate(SLUICE_IPS, "192.0.2.1,192.0.2.2"),
        svc("wrong-family", 2).annotate(SLUICE_IPS, "2001:db8::1"),
        svc("require-one", 3)
            .families(&dual, IpFamilyPolicy::RequireDualStack)
            .annotate(SLUICE_IPS, "192.0.2.1"),
        svc("empty", 4).annotate(SLUICE_IPS, " , "),
    ];
    let a = run(&pools, &services);
    let cases = [
        (
            "two-v4",
            "more than one IPv4 address (192.0.2.1 and 192.0.2.2)",
        ),
        (
            "wrong-family",
            "2001:db8::1 is an IPv6 address but the Service's ipFamilies are [IPv4]",
        ),
        (
            "require-one",
            "ipFamilyPolicy RequireDualStack needs one IPv4 and one IPv6 address",
        ),
        ("empty", "\" , \" is not an IP address"),
    ];
    for (name, want) in cases {
        assert!(ips(&a, name).is_empty(), "{name}");
        let events = service_events(&a, name);
        assert_eq!(events.len(), 1, "{name}: {events:?}");
        assert!(
            events[0].contains(reason::INVALID_ANNOTATION) && events[0].contains(want),
            "{name}: {events:?}"
        );
    }
}

#[test]
fn dual_stack_follows_ip_families_order_and_policy() {
    let pools = [
        pool("v4", &["192.0.2.0/31"]),
        pool("v6", &["2001:db8::/127"]),
    ];
    let v6_first = [IpFamily::V6, IpFamily::V4];
    let services = [
        svc("require", 1).families(&v6_first, IpFamilyPolicy::RequireDualStack),
        svc("prefer", 2).families(
            &[IpFamily::V4, IpFamily::V6],
            IpFamilyPolicy::PreferDualStack,
        ),
        svc("single-v6", 3).families(&[IpFamily::V6], IpFamilyPolicy::SingleStack),
    ];
    let a = run(&pools, &services);
    assert_eq!(ips(&a, "require"), ["2001:db8::", "192.0.2.0"]);
    assert_eq!(ips(&a, "prefer"), ["192.0.2.1", "2001:db8::1"]);
    // Both IPv6 addresses are taken now.
    assert!(ips(&a, "single-v6").is_empty());
    assert_eq!(
        service_events(&a, "single-v6"),
        ["Warning PoolExhausted: no free IPv6 address in pools v6"]
    );
}

#[test]
fn require_dual_stack_gets_nothing_new_unless_both_families_fit() {
    let pools = [
        pool("v4", &["192.0.2.0/30"]),
        pool("v6", &["2001:db8::/128"]),
    ];
    let dual = [IpFamily::V4, IpFamily::V6];
    let services = [
        svc("v6-holder", 1).families(&[IpFamily::V6], IpFamilyPolicy::SingleStack),
        svc("require", 2).families(&dual, IpFamilyPolicy::RequireDualStack),
        svc("prefer", 3).families(&dual, IpFamilyPolicy::PreferDualStack),
    ];
    let a = run(&pools, &services);
    assert_eq!(ips(&a, "v6-holder"), ["2001:db8::"]);
    assert!(
        ips(&a, "require").is_empty(),
        "no lone IPv4 for RequireDualStack"
    );
    assert_eq!(
        service_events(&a, "require"),
        ["Warning PoolExhausted: no free IPv6 address in pools v6"]
    );
    // PreferDualStack takes what there is; the IPv4 address RequireDualStack did not take
    // is the lowest free one.
    assert_eq!(ips(&a, "prefer"), ["192.0.2.0"]);
}

#[test]
fn prefer_dual_stack_without_a_pool_for_one_family_is_not_a_warning() {
    let pools = [pool("v4", &["192.0.2.0/30"])];
    let services = [svc("prefer", 1).families(
        &[IpFamily::V4, IpFamily::V6],
        IpFamilyPolicy::PreferDualStack,
    )];
    let a = run(&pools, &services);
    assert_eq!(ips(&a, "prefer"), ["192.0.2.0"]);
    assert!(warnings(&a).is_empty(), "{:?}", warnings(&a));
}

#[test]
fn sharing_needs_the_same_key_and_disjoint_ports() {
    let pools = [pool("main", &["192.0.2.0/29"])];
    let services = [
        svc("dns-udp", 1)
            .ports(&[(Protocol::Udp, 53)])
            .annotate(SHARING, "dns"),
        svc("dns-tcp", 2)
            .ports(&[(Protocol::Tcp, 53)])
            .annotate(METALLB_SHARING, "dns"),
        svc("dns-clash", 3)
            .ports(&[(Protocol::Udp, 53)])
            .annotate(SHARING, "dns"),
        svc("other-key", 4)
            .ports(&[(Protocol::Tcp, 80)])
            .annotate(SHARING, "web"),
        svc("no-key", 5).ports(&[(Protocol::Tcp, 81)]),
    ];
    let a = run(&pools, &services);
    assert_eq!(ips(&a, "dns-udp"), ["192.0.2.0"]);
    assert_eq!(
        ips(&a, "dns-tcp"),
        ["192.0.2.0"],
        "same key, other protocol"
    );
    assert_eq!(ips(&a, "dns-clash"), ["192.0.2.1"], "UDP/53 is taken on .0");
    assert_eq!(ips(&a, "other-key"), ["192.0.2.2"]);
    assert_eq!(ips(&a, "no-key"), ["192.0.2.3"]);
}

#[test]
fn a_requested_address_is_shared_only_under_the_same_key() {
    let pools = [pool("main", &["192.0.2.0/29"])];
    let services = [
        svc("web", 1)
            .annotate(SHARING, "k")
            .annotate(SLUICE_IPS, "192.0.2.5"),
        svc("ssh", 2)
            .ports(&[(Protocol::Tcp, 22)])
            .annotate(SHARING, "k")
            .annotate(SLUICE_IPS, "192.0.2.5"),
        svc("clash", 3)
            .annotate(SHARING, "k")
            .annotate(SLUICE_IPS, "192.0.2.5"),
    ];
    let a = run(&pools, &services);
    assert_eq!(ips(&a, "web"), ["192.0.2.5"]);
    assert_eq!(ips(&a, "ssh"), ["192.0.2.5"]);
    assert!(ips(&a, "clash").is_empty());
    assert_eq!(
        service_events(&a, "clash"),
        [
            "Warning RequestedIPInUse: 192.0.2.5 (from annotation sluice.dev/load-balancer-ips) is in use: Service default/web holds it with the same sharing key but also uses port 80/tcp"
        ]
    );
}

#[test]
fn local_traffic_policy_shares_only_with_the_same_pods() {
    let pools = [pool("main", &["192.0.2.0/29"])];
    let services = [
        svc("a", 1).local(&[("app", "x")]).annotate(SHARING, "k"),
        svc("b", 2)
            .ports(&[(Protocol::Tcp, 443)])
            .local(&[("app", "x")])
            .annotate(SHARING, "k"),
        svc("c", 3)
            .ports(&[(Protocol::Tcp, 8080)])
            .local(&[("app", "y")])
            .annotate(SHARING, "k"),
        svc("d", 4)
            .ports(&[(Protocol::Tcp, 9090)])
            .annotate(SHARING, "k"),
    ];
    let a = run(&pools, &services);
    assert_eq!(ips(&a, "a"), ["192.0.2.0"]);
    assert_eq!(ips(&a, "b"), ["192.0.2.0"], "same pods: shared");
    assert_eq!(ips(&a, "c"), ["192.0.2.1"], "other pods: not shared");
    // eTP=Cluster without selector cannot join the Local group on .0, nor c on .1.
    assert_eq!(ips(&a, "d"), ["192.0.2.2"]);
    assert!(a.services[&key("a")].external_traffic_local);
}

#[test]
fn statuses_are_kept_across_restarts_even_when_lower_addresses_are_free() {
    let pools = [pool("main", &["192.0.2.0/29"])];
    let services = [
        svc("a", 1).status(&["192.0.2.5"]),
        svc("b", 2).status(&["192.0.2.3"]),
        svc("new", 3),
    ];
    let a = run(&pools, &services);
    assert_eq!(ips(&a, "a"), ["192.0.2.5"]);
    assert_eq!(ips(&a, "b"), ["192.0.2.3"]);
    assert_eq!(ips(&a, "new"), ["192.0.2.0"]);
    assert!(!a.services[&key("a")].status_changed);
    assert!(service_events(&a, "a").is_empty());
    // Writing the statuses and running again changes nothing.
    let mut after = services.to_vec();
    apply_status(&mut after, &a);
    let again = run(&pools, &after);
    assert_eq!(again.status_updates().count(), 0);
    assert_eq!(again.services, {
        let mut s = a.services.clone();
        s.values_mut().for_each(|v| v.status_changed = false);
        s
    });
}

#[test]
fn a_duplicated_address_stays_with_the_older_service() {
    let pools = [pool("main", &["192.0.2.0/30"])];
    let services = [
        svc("newer", 2).status(&["192.0.2.0"]),
        svc("older", 1).status(&["192.0.2.0"]),
    ];
    let a = run(&pools, &services);
    assert_eq!(ips(&a, "older"), ["192.0.2.0"]);
    assert_eq!(ips(&a, "newer"), ["192.0.2.1"]);
    assert_eq!(
        service_events(&a, "newer"),
        [
            "Warning IPConflict: 192.0.2.0 is also in this Service's status but Service default/older holds it and the two Services have no common sharing key; assigning another address",
            "Normal IPAllocated: assigned 192.0.2.1 from pool main",
        ]
    );
    assert!(service_events(&a, "older").is_empty());
}

#[test]
fn addresses_outside_valid_selecting_pools_are_released_and_replaced() {
    let pools = [
        pool("main", &["192.0.2.0/30"]),
        pool_selecting("team", &["203.0.113.0/30"], "team", "a"),
    ];
    let services = [
        svc("pool-gone", 1).status(&["198.51.100.7"]),
        svc("left-team", 2).status(&["203.0.113.1"]),
        svc("wrong-family", 3).status(&["2001:db8::1", "192.0.2.3"]),
    ];
    let a = run(&pools, &services);
    assert_eq!(ips(&a, "pool-gone"), ["192.0.2.0"]);
    assert_eq!(
        service_events(&a, "pool-gone"),
        [
            "Normal IPReleased: released 198.51.100.7: no valid LoadBalancerIPPool contains it",
            "Normal IPAllocated: assigned 192.0.2.0 from pool main",
        ]
    );
    assert_eq!(ips(&a, "left-team"), ["192.0.2.1"]);
    assert_eq!(
        service_events(&a, "left-team")[0],
        "Normal IPReleased: released 203.0.113.1: pool team does not select this Service"
    );
    assert_eq!(ips(&a, "wrong-family"), ["192.0.2.3"]);
    assert_eq!(
        service_events(&a, "wrong-family"),
        ["Normal IPReleased: released 2001:db8::1: no IPv6 address is wanted"]
    );
}

#[test]
fn changing_the_requested_address_moves_the_service() {
    let pools = [pool("main", &["192.0.2.0/29"])];
    let services = [svc("web", 1)
        .status(&["192.0.2.0"])
        .annotate(SLUICE_IPS, "192.0.2.6")];
    let a = run(&pools, &services);
    assert_eq!(ips(&a, "web"), ["192.0.2.6"]);
    assert_eq!(
        service_events(&a, "web"),
        [
            "Normal IPReleased: released 192.0.2.0: not requested by annotation sluice.dev/load-balancer-ips",
            "Normal IPAllocated: assigned 192.0.2.6 from pool main",
        ]
    );
}

#[test]
fn an_exhausted_pool_says_so_and_names_who_waits() {
    let pools = [
        pool("small", &["192.0.2.0/31"]),
        pool("v6", &["2001:db8::/64"]),
    ];
    let services = [svc("a", 1), svc("b", 2), svc("c", 3)];
    let a = run(&pools, &services);
    assert!(ips(&a, "c").is_empty());
    assert_eq!(
        service_events(&a, "c"),
        ["Warning PoolExhausted: no free IPv4 address in pools small"]
    );
    assert_eq!(
        pool_events(&a, "small"),
        ["PoolExhausted: Service default/c waits for an address; none is free"]
    );
    assert_eq!(
        pool_condition(&a, "small", condition::EXHAUSTED),
        (
            "True".into(),
            "NoFreeAddresses".into(),
            "IPv4: 2 of 2 addresses in use; 1 Service(s) wait for an address".into()
        )
    );
    assert_eq!(
        pool_condition(&a, "v6", condition::EXHAUSTED),
        (
            "False".into(),
            "FreeAddresses".into(),
            "IPv6: 0 of 18446744073709551616 addresses in use".into()
        )
    );
    assert_eq!(pool_condition(&a, "small", condition::VALID).0, "True");
}

#[test]
fn overlapping_and_malformed_pools_are_invalid_and_unused() {
    let mut bad_selector = pool("bad-selector", &["10.0.5.0/24"]);
    bad_selector.spec.service_selector = Some(
        serde_json::from_value(serde_json::json!({
            "matchExpressions": [{ "key": "team", "operator": "Equals", "values": ["a"] }]
        }))
        .unwrap(),
    );
    let pools = [
        pool("a-main", &["192.0.2.0/24"]),
        pool("b-overlap", &["192.0.2.128-192.0.2.130"]),
        pool("c-cidr", &["192.0.2.300/24"]),
        pool("d-host-bits", &["10.0.0.1/24"]),
        pool("e-backwards", &["10.0.1.9-10.0.1.1"]),
        pool("f-mixed", &["10.0.2.1-2001:db8::1"]),
        pool("g-empty", &[]),
        pool("h-self", &["10.0.3.0/24", "10.0.3.7-10.0.3.9"]),
        bad_selector,
    ];
    let a = run(&pools, &[svc("web", 1).annotate(SLUICE_IPS, "192.0.2.129")]);
    let invalid = [
        (
            "b-overlap",
            "Overlapping",
            "blocks[0] (192.0.2.128-192.0.2.130) overlaps pool a-main (192.0.2.0-192.0.2.255), which comes first in name order",
        ),
        (
            "c-cidr",
            "InvalidSpec",
            "blocks[0]: invalid cidr \"192.0.2.300/24\": invalid IP address syntax",
        ),
        (
            "d-host-bits",
            "InvalidSpec",
            "blocks[0]: cidr 10.0.0.1/24 has host bits set (the network is 10.0.0.0/24)",
        ),
        (
            "e-backwards",
            "InvalidSpec",
            "blocks[0]: start 10.0.1.9 is after stop 10.0.1.1",
        ),
        (
            "f-mixed",
            "InvalidSpec",
            "blocks[0]: start 10.0.2.1 and stop 2001:db8::1 are of different IP families",
        ),
        ("g-empty", "InvalidSpec", "spec.blocks is empty"),
        (
            "h-self",
            "InvalidSpec",
            "blocks[1] (10.0.3.7-10.0.3.9) overlaps blocks[0] of the same pool",
        ),
        (
            "bad-selector",
            "InvalidSpec",
            "invalid serviceSelector: matchExpressions[0] (key \"team\"): unknown operator \"Equals\"",
        ),
    ];
    for (name, want_reason, want_message) in invalid {
        assert_eq!(
            pool_condition(&a, name, condition::VALID),
            ("False".into(), want_reason.into(), want_message.into()),
            "{name}"
        );
        assert_eq!(pool_condition(&a, name, condition::EXHAUSTED).0, "Unknown");
        assert_eq!(
            pool_events(&a, name),
            [format!("InvalidPool: {want_message}")]
        );
    }
    // The earlier pool of an overlap keeps working.
    assert_eq!(pool_condition(&a, "a-main", condition::VALID).0, "True");
    assert_eq!(ips(&a, "web"), ["192.0.2.129"]);
    assert_eq!(a.services[&key("web")].addresses[0].pool, "a-main");
}

#[test]
fn an_invalid_pool_does_not_serve_and_does_not_block_a_later_overlapping_one() {
    let mut broken = pool("a-broken", &["192.0.2.0/30"]);
    broken.spec.blocks.push(sluice_lbipam::IpBlock::default());
    let pools = [broken, pool("b-good", &["192.0.2.0/30"])];
    let a = run(&pools, &[svc("web", 1)]);
    assert_eq!(
        pool_condition(&a, "a-broken", condition::VALID).2,
        "blocks[1]: set either cidr, or start and stop"
    );
    assert_eq!(pool_condition(&a, "b-good", condition::VALID).0, "True");
    assert_eq!(a.services[&key("web")].addresses[0].pool, "b-good");
}

#[test]
fn a_disabled_pool_keeps_its_assignments_but_hands_out_nothing_new() {
    let mut off = pool("a-off", &["192.0.2.0/30"]);
    off.spec.disabled = true;
    let pools = [off, pool("b-on", &["203.0.113.0/30"])];
    let services = [svc("existing", 1).status(&["192.0.2.2"]), svc("new", 2)];
    let a = run(&pools, &services);
    assert_eq!(ips(&a, "existing"), ["192.0.2.2"]);
    assert_eq!(ips(&a, "new"), ["203.0.113.0"]);
    assert_eq!(
        pool_condition(&a, "a-off", condition::VALID).2,
        "the pool is valid (disabled: no new assignments)"
    );
}

#[test]
fn l2_announce_is_reported_per_address() {
    let mut quiet = pool("b-quiet", &["203.0.113.0/32"]);
    quiet.spec.l2_announce = false;
    let pools = [pool("a-l2", &["192.0.2.0/32"]), quiet];
    let services = [
        svc("one", 1).annotate(SHARING, "k").local(&[("app", "x")]),
        svc("two", 2)
            .ports(&[(Protocol::Udp, 80)])
            .annotate(SHARING, "k")
            .local(&[("app", "x")]),
        svc("three", 3),
    ];
    let a = run(&pools, &services);
    assert_eq!(ips(&a, "three"), ["203.0.113.0"]);
    let l2 = a.l2_addresses();
    assert_eq!(l2.len(), 1);
    assert_eq!(
        l2[&ip("192.0.2.0")],
        [(key("one"), true), (key("two"), true)]
    );
}

#[test]
fn services_without_ip_families_default_sensibly() {
    let pools = [pool("dual", &["192.0.2.0/30", "2001:db8::/126"])];
    let mut plain = LbService::new("default", "plain");
    plain.ports = vec![(Protocol::Tcp, 80)];
    let mut v6_request = plain.clone();
    v6_request.key.name = "v6-request".into();
    v6_request
        .annotations
        .insert(SLUICE_IPS.into(), "2001:db8::2".into());
    let mut dual = plain.clone();
    dual.key.name = "dual".into();
    dual.ip_family_policy = IpFamilyPolicy::RequireDualStack;
    let a = run(&pools, &[plain, v6_request, dual]);
    assert_eq!(ips(&a, "plain"), ["192.0.2.1"]);
    assert_eq!(ips(&a, "v6-request"), ["2001:db8::2"]);
    // `dual` has no creationTimestamp either; name order puts it first.
    assert_eq!(ips(&a, "dual"), ["192.0.2.0", "2001:db8::"]);
}

#[test]
fn only_load_balancers_and_services_holding_addresses_concern_the_allocator() {
    let service = |spec: serde_json::Value, status: serde_json::Value| {
        let object = serde_json::json!({"metadata": {"name": "web", "namespace": "default"},
                                        "spec": spec, "status": status});
        serde_json::from_value::<k8s_openapi::api::core::v1::Service>(object).expect("service")
    };
    let none = serde_json::json!({});
    let holding = serde_json::json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}});
    let empty = serde_json::json!({"loadBalancer": {"ingress": []}});
    assert!(LbService::concerns(&service(
        serde_json::json!({"type": "LoadBalancer"}),
        none.clone()
    )));
    // Type changed away from LoadBalancer: its address is still to be released.
    assert!(LbService::concerns(&service(
        serde_json::json!({"type": "ClusterIP"}),
        holding
    )));
    assert!(!LbService::concerns(&service(
        serde_json::json!({"type": "ClusterIP"}),
        empty
    )));
    assert!(!LbService::concerns(&service(
        serde_json::json!({"type": "NodePort"}),
        none.clone()
    )));
    assert!(!LbService::concerns(&service(none.clone(), none)));
}

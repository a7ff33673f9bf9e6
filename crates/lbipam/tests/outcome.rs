//! The glue the agent uses: Service conversion, condition timestamps, event de-duplication,
//! the status object.

mod common;

use common::*;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde_json::json;
use sluice_lbipam::{
    EventFilter, IpFamily, IpFamilyPolicy, LbService, condition, load_balancer_status,
};
use sluice_model::Protocol;

#[test]
fn services_convert_with_every_field_the_allocator_reads() {
    let service: Service = serde_json::from_value(json!({
        "metadata": {
            "namespace": "shop", "name": "web", "uid": "u-1",
            "creationTimestamp": "2024-05-01T10:00:00Z",
            "labels": { "team": "a" },
            "annotations": { "sluice.dev/sharing-key": "k" }
        },
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": "sluice.dev/lb",
            "ipFamilies": ["IPv6", "IPv4"],
            "ipFamilyPolicy": "RequireDualStack",
            "ports": [{ "port": 80 }, { "port": 53, "protocol": "UDP" }, { "port": 9, "protocol": "XTP" }],
            "loadBalancerIP": "192.0.2.7",
            "externalTrafficPolicy": "Local",
            "selector": { "app": "web" }
        },
        "status": { "loadBalancer": { "ingress": [
            { "ip": "2001:db8::1" }, { "hostname": "lb.example" }, { "ip": "bogus" }, { "ip": "192.0.2.7" }
        ] } }
    }))
    .unwrap();
    let s = LbService::from_service(&service).unwrap();
    assert_eq!(s.key.to_string(), "shop/web");
    assert_eq!(s.uid, "u-1");
    assert!(s.created.is_some());
    assert_eq!(s.labels["team"], "a");
    assert_eq!(s.annotations["sluice.dev/sharing-key"], "k");
    assert!(s.is_load_balancer);
    assert_eq!(s.load_balancer_class.as_deref(), Some("sluice.dev/lb"));
    assert_eq!(s.ip_families, [IpFamily::V6, IpFamily::V4]);
    assert_eq!(s.ip_family_policy, IpFamilyPolicy::RequireDualStack);
    assert_eq!(s.ports, [(Protocol::Tcp, 80), (Protocol::Udp, 53)]);
    assert_eq!(s.load_balancer_ip.as_deref(), Some("192.0.2.7"));
    assert!(s.external_traffic_local);
    assert_eq!(s.selector["app"], "web");
    assert_eq!(s.ingress_ips, [ip("2001:db8::1"), ip("192.0.2.7")]);

    let plain: Service = serde_json::from_value(json!({
        "metadata": { "namespace": "a", "name": "b" }, "spec": { "type": "ClusterIP" }
    }))
    .unwrap();
    let p = LbService::from_service(&plain).unwrap();
    assert!(!p.is_load_balancer && p.ingress_ips.is_empty() && p.created.is_none());
    assert!(
        LbService::from_service(&Service::default()).is_none(),
        "no name"
    );
}

fn existing(type_: &str, status: &str, second: i64) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: "Old".into(),
        message: "old".into(),
        observed_generation: Some(1),
        last_transition_time: time(second),
    }
}

#[test]
fn merged_conditions_keep_transition_times_of_unchanged_statuses() {
    let pools = [pool("main", &["192.0.2.0/32"])];
    let mut p = pools[0].clone();
    p.metadata.generation = Some(7);
    let a = run(&[p], &[svc("a", 1)]);
    let report = &a.pools["main"];
    let now = time(1000);
    let current = [
        existing(condition::VALID, "True", 5),
        existing(condition::EXHAUSTED, "False", 6),
        existing("SomeoneElses", "True", 7),
    ];
    let merged = report.merged_conditions(&current, &now);
    let summary: Vec<(String, String, String, i64)> = merged
        .iter()
        .map(|c| {
            (
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                c.last_transition_time.0.as_second() - 1_700_000_000,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("Valid".into(), "True".into(), "Valid".into(), 5),
            (
                "Exhausted".into(),
                "True".into(),
                "NoFreeAddresses".into(),
                1000
            ),
            ("SomeoneElses".into(), "True".into(), "Old".into(), 7),
        ]
    );
    assert!(merged[..2].iter().all(|c| c.observed_generation == Some(7)));
    // Merging again with the result is a no-op: nothing to write.
    assert_eq!(report.merged_conditions(&merged, &time(2000)), merged);
}

#[test]
fn the_event_filter_passes_each_warning_once_per_episode() {
    let pools = [pool("small", &["192.0.2.0/32"])];
    let waiting = [svc("a", 1).status(&["192.0.2.0"]), svc("b", 2)];
    let mut filter = EventFilter::default();
    let first = filter.fresh(&run(&pools, &waiting).events);
    assert_eq!(first.len(), 2, "{first:?}"); // Service b and pool small
    assert!(filter.fresh(&run(&pools, &waiting).events).is_empty());
    // a goes away: b gets the address (a Normal event), then b waits again when a returns.
    let gone = filter.fresh(&run(&pools, &waiting[1..]).events);
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].reason, "IPAllocated");
    let again = filter.fresh(&run(&pools, &waiting).events);
    assert_eq!(again.len(), 2, "{again:?}");
}

#[test]
fn the_status_object_lists_ips_as_vips() {
    let status = load_balancer_status(&[ip("192.0.2.1"), ip("2001:db8::1")]);
    assert_eq!(
        serde_json::to_value(&status).unwrap(),
        json!({ "ingress": [
            { "ip": "192.0.2.1", "ipMode": "VIP" },
            { "ip": "2001:db8::1", "ipMode": "VIP" }
        ] })
    );
}

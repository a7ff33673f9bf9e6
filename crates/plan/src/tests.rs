use std::net::IpAddr;
use std::sync::Arc;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn frontend(addr: &str, routes: [Route; 3]) -> FrontendPlan {
    FrontendPlan {
        key: FrontendKey {
            addr: FrontendAddr::Ip(ip(addr)),
            protocol: Protocol::Tcp,
            port: 80,
        },
        kind: FrontendKind::ClusterIp,
        allowed_sources: Vec::new(),
        pods: routes[0],
        node: routes[1],
        outside: routes[2],
        selection: Selection::Random,
    }
}

fn service(name: &str, frontends: Vec<FrontendPlan>, cluster: &[&str]) -> ServicePlan {
    ServicePlan {
        name: ServicePortName::new("default", name, "", Protocol::Tcp),
        frontends,
        cluster: cluster.iter().map(|a| Backend::new(ip(a), 8080)).collect(),
        local: Vec::new(),
        affinity_timeout: None,
    }
}

const FWD: Route = Route::Forward {
    set: SetName::Cluster,
    masquerade: false,
};

#[test]
fn validate_accepts_a_forwarding_frontend_with_backends_of_its_family() {
    let plan = service(
        "web",
        vec![frontend("10.96.0.1", [FWD; 3])],
        &["10.244.1.2"],
    );
    assert_eq!(plan.validate(), Ok(()));
}

#[test]
fn validate_refuses_what_a_dataplane_could_not_execute() {
    let cases = [
        (
            "forward to an empty family",
            service("web", vec![frontend("10.96.0.1", [FWD; 3])], &["fd00::2"]),
            "forwards to a set without backends",
        ),
        (
            "reject next to forward",
            service(
                "web",
                vec![frontend("10.96.0.1", [FWD, Route::Reject, FWD])],
                &["10.244.1.2"],
            ),
            "reject mixed with other routes",
        ),
        (
            "duplicate frontend",
            service(
                "web",
                vec![
                    frontend("10.96.0.1", [Route::Drop; 3]),
                    frontend("10.96.0.1", [Route::Drop; 3]),
                ],
                &[],
            ),
            "frontends not sorted or duplicated",
        ),
    ];
    for (case, plan, problem) in cases {
        match plan.validate() {
            Err(PlanError::Invalid { problem: got, .. }) => assert_eq!(got, problem, "{case}"),
            Ok(()) => panic!("{case}: accepted"),
        }
    }
}

#[test]
fn delta_between_lists_added_changed_and_removed_services_in_order() {
    let a = Arc::new(service("a", vec![], &[]));
    let b = Arc::new(service("b", vec![], &[]));
    let b2 = Arc::new(service("b", vec![], &["10.244.1.2"]));
    let c = Arc::new(service("c", vec![], &[]));
    let mut before = Plan::default();
    before.services.insert(a.name.clone(), Arc::clone(&a));
    before.services.insert(b.name.clone(), Arc::clone(&b));
    let mut after = Plan::default();
    after
        .services
        .insert(a.name.clone(), Arc::new((*a).clone()));
    after.services.insert(b.name.clone(), Arc::clone(&b2));
    after.services.insert(c.name.clone(), Arc::clone(&c));
    let delta = PlanDelta::between(&before, &after);
    let names: Vec<(String, bool, bool)> = delta
        .services
        .iter()
        .map(|c| (c.name.to_string(), c.before.is_some(), c.after.is_some()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("default/b/tcp".to_owned(), true, true),
            ("default/c/tcp".to_owned(), false, true),
        ],
        "an equal copy of a is no change"
    );
    assert!(!delta.node_changed);
    let back = PlanDelta::between(&after, &before);
    assert_eq!(back.services.len(), 2);
    assert!(back.services[1].after.is_none(), "c removed");
    assert!(PlanDelta::between(&after, &after).is_empty());
}

#[test]
fn text_form_names_every_route() {
    let mut plan = Plan::default();
    let mut fe = frontend(
        "10.96.0.1",
        [
            FWD,
            Route::masqueraded(SetName::Cluster),
            Route::masqueraded(SetName::Cluster),
        ],
    );
    fe.allowed_sources = vec!["192.0.2.0/24".parse().unwrap()];
    let svc = service("web", vec![fe], &["10.244.1.2"]);
    plan.services.insert(svc.name.clone(), Arc::new(svc));
    let text = plan.to_string();
    for line in [
        "service default/web/tcp",
        "  cluster 10.244.1.2:8080",
        "  frontend 10.96.0.1:80/tcp cluster-ip random",
        "    allow 192.0.2.0/24",
        "    pods forward cluster",
        "    node forward cluster masquerade",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
    }
}

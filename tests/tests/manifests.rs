//! The manifest builders produce objects the agent's manifest-directory parser accepts, with
//! the fields set that the builder promised. No root needed.

use std::net::{Ipv4Addr, Ipv6Addr};

use sluice_source_file::parse_manifests;
use sluice_tests::manifests::{
    Endpoint, EndpointSlice, Family, IngressPath, Port, Service, endpoint_slices, ingress,
    ingress_class, nodes_yaml, tls_secret, yaml_docs,
};
use sluice_tests::{Node, Pod};

fn pod(name: &str, node: &str, i: u8, n: u8) -> Pod {
    Pod {
        name: name.into(),
        node: node.into(),
        ipv4: Ipv4Addr::new(10, 244, i, n),
        ipv6: Ipv6Addr::new(0xfd00, 0x10, 0x244, i.into(), 0, 0, 0, n.into()),
        netns: String::new(),
    }
}

#[test]
fn services_and_slices_parse_with_their_fields() {
    let web1 = pod("web-1", "node-a", 1, 2);
    let web2 = pod("web-2", "node-b", 2, 2);
    let svc = Service::new("default", "web")
        .cluster_ips(&["10.96.0.10", "fd00:10:96::10"])
        .port(Port::tcp(80, 8080).named("http").node_port(30080))
        .port(Port::udp(53, 8080).named("dns").target_name("dns-port"))
        .load_balancer_ips(&["203.0.113.10"])
        .external_ips(&["198.51.100.7"])
        .source_ranges(&["192.0.2.0/24"])
        .external_traffic_policy("Local")
        .health_check_node_port(32000)
        .session_affinity(30);
    let mut docs = vec![svc.to_json()];
    docs.extend(endpoint_slices(
        "default",
        "web",
        &[("http", "TCP", 8080), ("dns", "UDP", 8080)],
        &[&web1, &web2],
    ));
    docs.push(
        EndpointSlice::new("default", "web-extra", "web", Family::V4)
            .port("http", "TCP", 8080)
            .endpoint(Endpoint::of(&web1, Family::V4).terminating())
            .to_json(),
    );
    let parsed = parse_manifests("web.yaml", &yaml_docs(&docs));
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    assert_eq!(parsed.services.len(), 1);
    assert_eq!(parsed.endpoint_slices.len(), 3);

    let (key, svc) = &parsed.services[0];
    assert_eq!(key.to_string(), "default/web");
    let spec = svc.spec.as_ref().expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(
        spec.cluster_ips.as_deref(),
        Some(&["10.96.0.10".to_string(), "fd00:10:96::10".to_string()][..])
    );
    let ports = spec.ports.as_ref().expect("ports");
    assert_eq!(ports[0].node_port, Some(30080));
    assert_eq!(ports[1].protocol.as_deref(), Some("UDP"));
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
    assert_eq!(spec.health_check_node_port, Some(32000));
    assert_eq!(spec.session_affinity.as_deref(), Some("ClientIP"));
    let lb = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref());
    let lb_ip = lb
        .and_then(|l| l.ingress.as_ref())
        .and_then(|i| i[0].ip.clone());
    assert_eq!(lb_ip.as_deref(), Some("203.0.113.10"));

    let (_, v6) = &parsed.endpoint_slices[1];
    let v6_endpoints = v6.endpoints.as_deref().expect("endpoints");
    assert_eq!(v6.address_type, "IPv6");
    assert_eq!(
        v6_endpoints[1].addresses,
        vec!["fd00:10:244:2::2".to_string()]
    );
    assert_eq!(v6_endpoints[1].node_name.as_deref(), Some("node-b"));
    let (_, extra) = &parsed.endpoint_slices[2];
    let cond = extra.endpoints.as_deref().expect("endpoints")[0]
        .conditions
        .as_ref()
        .expect("conditions");
    assert_eq!(
        (cond.ready, cond.serving, cond.terminating),
        (Some(false), Some(true), Some(true))
    );
}

#[test]
fn nodes_ingress_class_and_secret_parse() {
    let node = Node {
        name: "node-a".into(),
        index: 1,
        ipv4: Ipv4Addr::new(192, 0, 2, 11),
        ipv6: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x11),
        pod_cidr_v4: "10.244.1.0/24".into(),
        pod_cidr_v6: "fd00:10:244:1::/64".into(),
        netns: String::new(),
        cgroup: Default::default(),
        bpffs: Default::default(),
    };
    let mut text = nodes_yaml([&node].into_iter());
    text.push_str(&yaml_docs(&[
        ingress(
            "default",
            "web",
            Some("sluice"),
            &[IngressPath {
                host: Some("*.example.test".into()),
                path: "/api".into(),
                path_type: "Prefix".into(),
                service: "web".into(),
                port: 80,
            }],
            &[(&["a.example.test"], "web-tls")],
            Some(("fallback", 8080)),
        ),
        ingress_class("sluice", "sluice.dev/ingress", true),
        tls_secret("default", "web-tls", "CERT", "KEY"),
    ]));
    let parsed = parse_manifests("all.yaml", &text);
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);

    let (_, n) = &parsed.nodes[0];
    let addrs: Vec<_> = n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .expect("addresses")
        .iter()
        .map(|a| (a.type_.as_str(), a.address.as_str()))
        .collect();
    assert!(addrs.contains(&("InternalIP", "192.0.2.11")));
    assert!(addrs.contains(&("InternalIP", "2001:db8::11")));

    let (_, ing) = &parsed.ingresses[0];
    let spec = ing.spec.as_ref().expect("spec");
    assert_eq!(spec.ingress_class_name.as_deref(), Some("sluice"));
    let rule = &spec.rules.as_ref().expect("rules")[0];
    assert_eq!(rule.host.as_deref(), Some("*.example.test"));
    assert!(spec.default_backend.is_some());

    let (_, class) = &parsed.ingress_classes[0];
    let ann = class.metadata.annotations.as_ref().expect("annotations");
    assert_eq!(
        ann.get("ingressclass.kubernetes.io/is-default-class")
            .map(String::as_str),
        Some("true")
    );

    let (_, secret) = &parsed.secrets[0];
    let data = secret.data.as_ref().expect("data");
    assert_eq!(
        data.get("tls.crt").map(|b| b.0.as_slice()),
        Some(&b"CERT"[..])
    );
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
}

//! The precedence table of docs/ingress.md, one test per row, through what the agent does:
//! Kubernetes objects → `sluice_routes::plan` → `RouteTable` (built here) → `lookup`.

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Value, json};
use sluice_model::{NodeInfo, Snapshot};
use sluice_plan::RoutePlan;
use sluice_routes::RouteConfig;

use crate::{RouteTable, Warning, normalize_path};

fn snapshot(objects: Vec<Value>) -> Snapshot {
    Snapshot::from_json_objects(objects).unwrap()
}

fn plan_of(objects: Vec<Value>) -> (RoutePlan, Vec<Warning>) {
    sluice_routes::plan(
        &snapshot(objects),
        &NodeInfo::default(),
        &RouteConfig::default(),
        SystemTime::now(),
    )
}

/// The table the proxy builds for these objects, with the planner's and the builder's
/// warnings.
/// These tables have no HTTPS or GRPCS routes.
fn no_tls_clients(_: &sluice_plan::UpstreamTls, _: bool) -> Arc<crate::upstream::TlsClient> {
    Arc::new(Err("no upstream TLS in these tests".to_owned()))
}

fn build(objects: Vec<Value>, previous: Option<&RouteTable>) -> (RouteTable, Vec<Warning>) {
    let (plan, mut warnings) = plan_of(objects);
    let (table, more) = crate::routes::build(&plan, previous, &mut no_tls_clients);
    warnings.extend(more);
    (table, warnings)
}

fn class(name: &str, controller: &str, default: bool) -> Value {
    json!({"kind": "IngressClass", "metadata": {"name": name, "annotations":
        {"ingressclass.kubernetes.io/is-default-class": if default { "true" } else { "false" }}},
        "spec": {"controller": controller}})
}

/// A service `name` with port 80 (named "http") → target 8080, one ready endpoint `ip`.
fn service(name: &str, ip: &str) -> Vec<Value> {
    vec![
        json!({"kind": "Service", "metadata": {"namespace": "default", "name": name},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        json!({"kind": "EndpointSlice", "metadata": {"namespace": "default", "name": format!("{name}-abc"),
            "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}]}),
    ]
}

fn path(p: &str, kind: &str, svc: &str) -> Value {
    json!({"path": p, "pathType": kind, "backend": {"service": {"name": svc, "port": {"number": 80}}}})
}

fn ingress(name: &str, host: Option<&str>, paths: Vec<Value>) -> Value {
    let mut rule = json!({"http": {"paths": paths}});
    if let Some(h) = host {
        rule["host"] = json!(h);
    }
    json!({"kind": "Ingress", "metadata": {"namespace": "default", "name": name},
        "spec": {"ingressClassName": "sluice", "rules": [rule]}})
}

fn rules_less(name: &str, svc: &str) -> Value {
    json!({"kind": "Ingress", "metadata": {"namespace": "default", "name": name},
        "spec": {"ingressClassName": "sluice", "defaultBackend": {"service": {"name": svc, "port": {"number": 80}}}}})
}

fn created(mut v: Value, at: &str) -> Value {
    v["metadata"]["creationTimestamp"] = json!(at);
    v
}

/// Our class plus services a, b, c, d (endpoints 10.0.0.1..4) and `extra` objects.
fn table(extra: Vec<Value>) -> (RouteTable, Vec<Warning>) {
    let mut objects = vec![class("sluice", "sluice.dev/ingress", false)];
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        objects.extend(service(name, &format!("10.0.0.{}", i + 1)));
    }
    objects.extend(extra);
    build(objects, None)
}

/// The service name a request goes to, or "404".
fn route(t: &RouteTable, host: &str, raw_path: &str) -> String {
    let path = normalize_path(raw_path).unwrap();
    t.lookup(host, &path)
        .and_then(|r| r.backend())
        .map_or_else(|| "404".to_owned(), |b| b.service().name.to_string())
}

#[test]
fn host_exact_is_case_insensitive_and_ignores_port() {
    let (t, w) = table(vec![ingress(
        "i",
        Some("cafe.example.com"),
        vec![path("/", "Prefix", "a")],
    )]);
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(route(&t, "cafe.example.com", "/"), "a");
    assert_eq!(route(&t, "CAFE.Example.com:8080", "/x"), "a");
    assert_eq!(route(&t, "tea.example.com", "/"), "404");
}

#[test]
fn wildcard_host_matches_exactly_one_label() {
    let (t, _) = table(vec![ingress(
        "i",
        Some("*.example.com"),
        vec![path("/", "Prefix", "a")],
    )]);
    assert_eq!(route(&t, "foo.example.com", "/"), "a");
    assert_eq!(route(&t, "example.com", "/"), "404");
    assert_eq!(route(&t, "a.b.example.com", "/"), "404");
}

#[test]
fn exact_host_beats_wildcard() {
    let (t, _) = table(vec![
        ingress("w", Some("*.example.com"), vec![path("/", "Prefix", "a")]),
        ingress("e", Some("foo.example.com"), vec![path("/", "Prefix", "b")]),
    ]);
    assert_eq!(route(&t, "foo.example.com", "/"), "b");
    assert_eq!(route(&t, "bar.example.com", "/"), "a");
}

#[test]
fn rules_without_host_match_any_host() {
    let (t, _) = table(vec![ingress("i", None, vec![path("/", "Prefix", "a")])]);
    assert_eq!(route(&t, "anything.test", "/x"), "a");
}

#[test]
fn exact_path_is_case_sensitive_and_trailing_slash_matters() {
    let (t, _) = table(vec![ingress(
        "i",
        Some("h"),
        vec![path("/foo", "Exact", "a")],
    )]);
    assert_eq!(route(&t, "h", "/foo"), "a");
    assert_eq!(route(&t, "h", "/foo/"), "404");
    assert_eq!(route(&t, "h", "/Foo"), "404");
    assert_eq!(route(&t, "h", "/foo/bar"), "404");
}

#[test]
fn prefix_matches_by_whole_path_elements() {
    let (t, _) = table(vec![ingress(
        "i",
        Some("h"),
        vec![path("/aaa", "Prefix", "a")],
    )]);
    assert_eq!(route(&t, "h", "/aaa"), "a");
    assert_eq!(route(&t, "h", "/aaa/ccc"), "a");
    assert_eq!(route(&t, "h", "/aaaccc"), "404");
}

#[test]
fn prefix_ignores_trailing_slash_on_both_sides() {
    let (t, _) = table(vec![ingress(
        "i",
        Some("h"),
        vec![path("/aaa/", "Prefix", "a")],
    )]);
    assert_eq!(route(&t, "h", "/aaa"), "a");
    assert_eq!(route(&t, "h", "/aaa/"), "a");
    assert_eq!(route(&t, "h", "/aaa/b"), "a");
}

#[test]
fn longest_prefix_wins() {
    let (t, _) = table(vec![ingress(
        "i",
        Some("h"),
        vec![
            path("/", "Prefix", "a"),
            path("/foo", "Prefix", "b"),
            path("/foo/bar", "Prefix", "c"),
        ],
    )]);
    assert_eq!(route(&t, "h", "/foo/bar/baz"), "c");
    assert_eq!(route(&t, "h", "/foo/baz"), "b");
    assert_eq!(route(&t, "h", "/other"), "a");
}

#[test]
fn exact_beats_prefix_for_the_same_path() {
    let (t, _) = table(vec![ingress(
        "i",
        Some("h"),
        vec![path("/foo", "Prefix", "a"), path("/foo", "Exact", "b")],
    )]);
    assert_eq!(route(&t, "h", "/foo"), "b");
    assert_eq!(route(&t, "h", "/foo/x"), "a");
}

#[test]
fn implementation_specific_is_an_nginx_string_prefix() {
    let (t, _) = table(vec![ingress(
        "i",
        Some("h"),
        vec![
            path("/aaa", "ImplementationSpecific", "a"),
            path("/aaa/b", "Prefix", "b"),
        ],
    )]);
    assert_eq!(route(&t, "h", "/aaa/c"), "a");
    // nginx's `location /aaa` also takes /aaab.
    assert_eq!(route(&t, "h", "/aaab"), "a");
    // Longest prefix over both kinds: `Prefix /aaa/b` is the string `/aaa/b/` (and `/aaa/b`).
    assert_eq!(route(&t, "h", "/aaa/b/x"), "b");
    assert_eq!(route(&t, "h", "/aaa/b"), "b");
    assert_eq!(route(&t, "h", "/aaa/bc"), "a");
}

#[test]
fn unknown_path_type_is_skipped_with_warning() {
    let (t, w) = table(vec![ingress(
        "i",
        Some("h"),
        vec![path("/x", "Regex", "a")],
    )]);
    assert_eq!(route(&t, "h", "/x"), "404");
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].object.to_string(), "default/i");
    assert!(
        w[0].to_string()
            .starts_with("Ingress default/i: path type \"Regex\""),
        "{}",
        w[0]
    );
}

#[test]
fn rules_merge_across_ingresses_oldest_wins_conflicts() {
    let mut newer = ingress(
        "aaa-newer",
        Some("h"),
        vec![path("/x", "Prefix", "a"), path("/y", "Prefix", "c")],
    );
    newer["metadata"]["creationTimestamp"] = json!("2024-02-01T00:00:00Z");
    let mut older = ingress("zzz-older", Some("h"), vec![path("/x", "Prefix", "b")]);
    older["metadata"]["creationTimestamp"] = json!("2024-01-01T00:00:00Z");
    let (t, w) = table(vec![newer, older]);
    // Same host, same path: the older Ingress wins even though its name sorts later.
    assert_eq!(route(&t, "h", "/x"), "b");
    // Paths that do not conflict are merged.
    assert_eq!(route(&t, "h", "/y"), "c");
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(&*w[0].object.name, "aaa-newer");
    assert!(
        w[0].message.contains("Ingress default/zzz-older (older)"),
        "{w:?}"
    );
}

#[test]
fn equal_timestamps_fall_back_to_namespace_name_order() {
    let (t, _) = table(vec![
        ingress("b-ing", Some("h"), vec![path("/", "Prefix", "b")]),
        ingress("a-ing", Some("h"), vec![path("/", "Prefix", "a")]),
    ]);
    assert_eq!(route(&t, "h", "/"), "a");
}

#[test]
fn default_backend_answers_unmatched_requests() {
    let mut i = ingress(
        "cafe",
        Some("cafe.example.com"),
        vec![path("/coffee", "Prefix", "a")],
    );
    i["spec"]["defaultBackend"] = json!({"service": {"name": "d", "port": {"number": 80}}});
    let (t, _) = table(vec![i]);
    assert_eq!(route(&t, "cafe.example.com", "/coffee"), "a");
    assert_eq!(route(&t, "cafe.example.com", "/other"), "d");
    assert_eq!(route(&t, "unknown.example.com", "/"), "d");
}

#[test]
fn host_default_backend_beats_cluster_default() {
    let mut first = json!({"kind": "Ingress", "metadata": {"namespace": "default", "name": "a-default"},
        "spec": {"ingressClassName": "sluice", "defaultBackend": {"service": {"name": "d", "port": {"number": 80}}}}});
    first["metadata"]["creationTimestamp"] = json!("2024-01-01T00:00:00Z");
    let mut second = ingress("b-host", Some("h"), vec![path("/x", "Exact", "a")]);
    second["spec"]["defaultBackend"] = json!({"service": {"name": "c", "port": {"number": 80}}});
    second["metadata"]["creationTimestamp"] = json!("2024-02-01T00:00:00Z");
    let (t, _) = table(vec![first, second]);
    assert_eq!(route(&t, "h", "/y"), "c");
    assert_eq!(route(&t, "other", "/y"), "d");
}

#[test]
fn without_default_backend_unmatched_is_builtin_404() {
    let (t, _) = table(vec![ingress(
        "i",
        Some("h"),
        vec![path("/x", "Prefix", "a")],
    )]);
    assert_eq!(route(&t, "h", "/y"), "404");
}

#[test]
fn normalised_paths_cannot_bypass_routes() {
    let (t, _) = table(vec![ingress(
        "i",
        Some("h"),
        vec![path("/", "Prefix", "a"), path("/admin", "Prefix", "b")],
    )]);
    for p in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public%2F..%2Fadmin",
        "//admin",
        "/%61dmin",
    ] {
        assert_eq!(route(&t, "h", p), "b", "{p}");
    }
}

#[test]
fn class_selection_by_controller_flag() {
    let mut objects = vec![
        class("sluice", "sluice.dev/ingress", true),
        class("nginx", "k8s.io/ingress-nginx", false),
    ];
    objects.extend(service("a", "10.0.0.1"));
    let mut other = ingress("other", Some("2"), vec![path("/", "Prefix", "a")]);
    other["spec"]["ingressClassName"] = json!("nginx");
    objects.extend([
        ingress("by-name", Some("1"), vec![path("/", "Prefix", "a")]),
        other,
    ]);
    let served = |controller: &str| -> Vec<String> {
        let config = RouteConfig {
            controller: controller.to_owned(),
            ..RouteConfig::default()
        };
        let (plan, _) = sluice_routes::plan(
            &snapshot(objects.clone()),
            &NodeInfo::default(),
            &config,
            SystemTime::now(),
        );
        let (t, _) = crate::routes::build(&plan, None, &mut no_tls_clients);
        t.served_ingresses()
            .iter()
            .map(|k| k.name.to_string())
            .collect()
    };
    assert_eq!(served("sluice.dev/ingress"), ["by-name"]);
    // A different controller name (flag) owns the other class instead.
    assert_eq!(served("k8s.io/ingress-nginx"), ["other"]);
}

#[test]
fn endpoints_are_ready_ones_on_the_named_slice_port() {
    let objects = vec![
        json!({"kind": "Service", "metadata": {"namespace": "default", "name": "web"},
            "spec": {"ports": [{"name": "metrics", "port": 9090}, {"name": "http", "port": 80, "targetPort": "web"}]}}),
        json!({"kind": "EndpointSlice", "metadata": {"namespace": "default", "name": "web-1",
            "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "metrics", "port": 9100}, {"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.1.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.1.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.1.0.3"]},
                {"addresses": ["not-an-ip"]}]}),
        json!({"kind": "Ingress", "metadata": {"namespace": "default", "name": "web"},
            "spec": {"ingressClassName": "sluice", "rules": [{"http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"name": "http"}}}}]}}]}}),
    ];
    let (t, w) = table(objects);
    let b = t.lookup("x", "/").unwrap().backend().unwrap();
    let eps: Vec<String> = b.endpoints().iter().map(ToString::to_string).collect();
    assert_eq!(eps, ["10.1.0.1:8080", "10.1.0.3:8080"]);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(
        w[0].to_string(),
        "EndpointSlice default/web-1: invalid endpoints[].addresses[0] \"not-an-ip\": invalid IP address syntax"
    );
}

#[test]
fn missing_service_gives_backend_without_endpoints_and_warning() {
    let (t, w) = table(vec![ingress(
        "i",
        Some("h"),
        vec![path("/", "Prefix", "nope")],
    )]);
    assert!(
        t.lookup("h", "/")
            .unwrap()
            .backend()
            .unwrap()
            .endpoints()
            .is_empty()
    );
    assert_eq!(
        w[0].to_string(),
        "Ingress default/i: service default/nope not found"
    );
}

#[test]
fn resource_backend_is_skipped_with_warning() {
    let i = json!({"kind": "Ingress", "metadata": {"namespace": "default", "name": "i"},
        "spec": {"ingressClassName": "sluice", "rules": [{"host": "h", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"resource": {"kind": "Bucket", "name": "b"}}}]}}]}});
    let (t, w) = table(vec![i]);
    assert_eq!(route(&t, "h", "/"), "404");
    assert!(
        w[0].to_string()
            .contains("resource backends are not supported"),
        "{}",
        w[0]
    );
}

#[test]
fn invalid_tls_secret_is_named_in_the_warning() {
    let mut i = ingress(
        "cafe",
        Some("cafe.example.com"),
        vec![path("/", "Prefix", "a")],
    );
    i["spec"]["tls"] = json!([{"hosts": ["cafe.example.com"], "secretName": "cafe-secret"}]);
    let secret = json!({"kind": "Secret", "metadata": {"namespace": "default", "name": "cafe-secret"},
        "type": "kubernetes.io/tls", "stringData": {"tls.crt": "garbage", "tls.key": "garbage"}});
    let (t, w) = table(vec![i, secret]);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].to_string().starts_with("Ingress default/cafe: secret default/cafe-secret is not a valid kubernetes.io/tls secret"),
        "{}",
        w[0]
    );
    // Routing still works; HTTPS gets the generated default certificate.
    assert_eq!(route(&t, "cafe.example.com", "/"), "a");
    assert_eq!(
        t.certificate_for(Some("cafe.example.com")),
        Some(crate::CertificateChoice::Default { secret: None })
    );
}

#[test]
fn missing_tls_secret_is_named_in_the_warning() {
    let mut i = ingress(
        "cafe",
        Some("cafe.example.com"),
        vec![path("/", "Prefix", "a")],
    );
    i["spec"]["tls"] = json!([{"hosts": ["cafe.example.com"], "secretName": "gone"}]);
    let (_, w) = table(vec![i]);
    assert_eq!(
        w[0].to_string(),
        "Ingress default/cafe: secret default/gone not found"
    );
}

fn tls_secret(name: &str, host: &str) -> (Value, Vec<u8>) {
    let cert = rcgen::generate_simple_self_signed(vec![host.to_owned()]).unwrap();
    let der = cert.cert.der().to_vec();
    let secret = json!({"kind": "Secret", "metadata": {"namespace": "default", "name": name},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert.cert.pem(), "tls.key": cert.signing_key.serialize_pem()}});
    (secret, der)
}

#[test]
fn certificates_by_sni_exact_wildcard_and_default() {
    let (cafe, cafe_der) = tls_secret("cafe", "cafe.example.com");
    let (wild, wild_der) = tls_secret("wild", "*.example.org");
    let mut i = ingress(
        "i",
        Some("cafe.example.com"),
        vec![path("/", "Prefix", "a")],
    );
    i["spec"]["tls"] = json!([
        {"hosts": ["cafe.example.com"], "secretName": "cafe"},
        {"hosts": ["*.example.org"], "secretName": "wild"}]);
    let (t, w) = table(vec![i, cafe, wild]);
    assert!(w.is_empty(), "{w:?}");
    let served = |sni: Option<&str>| t.certs.resolve(sni).unwrap().cert[0].to_vec();
    assert_eq!(served(Some("CAFE.example.com")), cafe_der);
    assert_eq!(served(Some("x.example.org")), wild_der);
    // No match and no SNI: the generated default certificate (ingress-nginx's subject),
    // never another Ingress's.
    let generated = served(None);
    assert!(
        generated
            .windows(crate::tls::GENERATED_SUBJECT.len())
            .any(|w| w == crate::tls::GENERATED_SUBJECT.as_bytes())
    );
    assert_eq!(served(Some("unknown.test")), generated);
    assert_ne!(generated, cafe_der);
    assert_eq!(
        t.certificate_for(Some("cafe.example.com")),
        Some(crate::CertificateChoice::Host {
            secret: sluice_plan::ObjectName::new("default", "cafe")
        })
    );
}

#[test]
fn tls_section_without_hosts_covers_the_rule_hosts_only() {
    let (fallback, fallback_der) = tls_secret("fallback", "cafe.example.com");
    let mut i = ingress(
        "i",
        Some("cafe.example.com"),
        vec![path("/", "Prefix", "a")],
    );
    i["spec"]["tls"] = json!([{"secretName": "fallback"}]);
    let (t, _) = table(vec![i, fallback]);
    assert_eq!(
        t.certs.resolve(Some("cafe.example.com")).unwrap().cert[0].to_vec(),
        fallback_der
    );
    assert_ne!(
        t.certs.resolve(Some("other.test")).unwrap().cert[0].to_vec(),
        fallback_der
    );
}

#[test]
fn rebuild_reuses_parsed_certificates_and_endpoint_state() {
    let (cafe, _) = tls_secret("cafe", "cafe.example.com");
    let mut i = ingress(
        "i",
        Some("cafe.example.com"),
        vec![path("/", "Prefix", "a")],
    );
    i["spec"]["tls"] = json!([{"hosts": ["cafe.example.com"], "secretName": "cafe"}]);
    let mut objects = vec![class("sluice", "sluice.dev/ingress", false), i];
    objects.extend(service("a", "10.0.0.1"));
    let (first, _) = build([objects.clone(), vec![cafe.clone()]].concat(), None);
    // Same Secret content in a new snapshot: the parsed key is reused, not parsed again.
    let (second, _) = build([objects.clone(), vec![cafe]].concat(), Some(&first));
    let cert = |t: &RouteTable| t.certs.resolve(Some("cafe.example.com")).unwrap();
    assert!(Arc::ptr_eq(&cert(&first), &cert(&second)));
    let ep = |t: &RouteTable| {
        let route = t.lookup("cafe.example.com", "/").unwrap();
        Arc::clone(&route.backend().unwrap().pool.endpoints[0])
    };
    assert!(
        Arc::ptr_eq(&ep(&first), &ep(&second)),
        "endpoint counters must carry over"
    );
    // A rotated Secret is parsed.
    let (rotated, rotated_der) = tls_secret("cafe", "cafe.example.com");
    let (third, _) = build([objects, vec![rotated]].concat(), Some(&second));
    assert_eq!(cert(&third).cert[0].to_vec(), rotated_der);
}

#[test]
fn terminating_endpoints_are_used_only_when_none_is_ready() {
    let slice = |ready_ip_ready: bool| {
        json!({"kind": "EndpointSlice", "metadata": {"namespace": "default", "name": "web-1",
            "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.1.0.1"], "conditions": {"ready": ready_ip_ready}},
                {"addresses": ["10.1.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.1.0.3"], "conditions": {"ready": false, "serving": false, "terminating": true}}]})
    };
    let objects = |ready: bool| {
        vec![
            json!({"kind": "Service", "metadata": {"namespace": "default", "name": "web"},
                "spec": {"ports": [{"name": "http", "port": 80}]}}),
            slice(ready),
            ingress("web", Some("h"), vec![path("/", "Prefix", "web")]),
        ]
    };
    let eps = |t: &RouteTable| -> Vec<String> {
        t.lookup("h", "/")
            .unwrap()
            .backend()
            .unwrap()
            .endpoints()
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    let (t, _) = table(objects(true));
    assert_eq!(eps(&t), ["10.1.0.1:8080"]);
    let (t, _) = table(objects(false));
    assert_eq!(eps(&t), ["10.1.0.2:8080"]);
}

// ---------------------------------------------------------------------------------------------
// The rows of the precedence table added with ingress-nginx's rules.

#[test]
fn a_named_host_never_falls_through_to_a_wildcard_or_rules_without_host() {
    let (t, _) = table(vec![
        ingress(
            "exact",
            Some("foo.example.com"),
            vec![path("/only", "Prefix", "a")],
        ),
        ingress(
            "wild",
            Some("*.example.com"),
            vec![path("/", "Prefix", "b")],
        ),
        ingress("any", None, vec![path("/", "Prefix", "c")]),
    ]);
    assert_eq!(route(&t, "foo.example.com", "/only/x"), "a");
    assert_eq!(route(&t, "foo.example.com", "/other"), "404");
    assert_eq!(route(&t, "bar.example.com", "/other"), "b");
    assert_eq!(route(&t, "elsewhere.test", "/other"), "c");
}

#[test]
fn a_named_host_without_its_own_default_backend_gets_404_not_the_catch_all() {
    let (t, _) = table(vec![
        created(
            ingress("cafe", Some("cafe.test"), vec![path("/tea", "Prefix", "a")]),
            "2024-01-01T00:00:00Z",
        ),
        created(rules_less("catch-all", "d"), "2024-01-02T00:00:00Z"),
    ]);
    assert_eq!(route(&t, "cafe.test", "/coffee"), "404");
    // The rules-less defaultBackend catches hosts no rule names.
    assert_eq!(route(&t, "unknown.test", "/coffee"), "d");
}

#[test]
fn without_any_default_backend_unknown_hosts_get_404() {
    let (t, _) = table(vec![ingress(
        "cafe",
        Some("cafe.test"),
        vec![path("/", "Prefix", "a")],
    )]);
    assert!(t.lookup("unknown.test", "/").is_none());
}

#[test]
fn rules_without_host_fall_back_to_the_catch_all() {
    let (t, _) = table(vec![
        ingress("hostless", None, vec![path("/x", "Prefix", "a")]),
        rules_less("catch-all", "d"),
    ]);
    assert_eq!(route(&t, "anything.test", "/x"), "a");
    assert_eq!(route(&t, "anything.test", "/y"), "d");
}

#[test]
fn regex_host_takes_the_first_match_in_nginx_order_case_insensitively() {
    let mut re = ingress(
        "re",
        Some("h"),
        vec![
            path("/api/v[0-9]+", "ImplementationSpecific", "a"),
            path("/api", "ImplementationSpecific", "b"),
        ],
    );
    re["metadata"]["annotations"] = json!({"nginx.ingress.kubernetes.io/use-regex": "true"});
    let (t, w) = table(vec![
        re,
        ingress("plain", Some("h"), vec![path("/static", "Exact", "c")]),
    ]);
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(route(&t, "h", "/api/v2/items"), "a");
    assert_eq!(route(&t, "h", "/API/V2"), "a");
    assert_eq!(route(&t, "h", "/api/beta"), "b");
    assert_eq!(route(&t, "h", "/apix"), "b");
    // The other Ingress's Exact path is a regex on this host too, as with ingress-nginx.
    assert_eq!(route(&t, "h", "/static/more"), "c");
    assert_eq!(route(&t, "h", "/nothing"), "404");
}

#[test]
fn an_ingress_without_creation_timestamp_loses_a_conflict() {
    let (t, w) = table(vec![
        ingress("aaa-undated", Some("h"), vec![path("/", "Prefix", "a")]),
        created(
            ingress("zzz-dated", Some("h"), vec![path("/", "Prefix", "b")]),
            "2024-01-01T00:00:00Z",
        ),
    ]);
    assert_eq!(route(&t, "h", "/"), "b");
    assert_eq!(w.len(), 1);
    assert!(
        w[0].to_string().starts_with("Ingress default/aaa-undated:"),
        "{w:?}"
    );
    assert!(
        w[0].message.contains("Ingress default/zzz-dated (older)"),
        "{w:?}"
    );
}

/// A `kubernetes.io/tls` Secret with a self-signed certificate for `host`, valid until the
/// given day, whose `tls.crt` repeats it `copies` times (a chain of that length).
fn dated_tls_secret(name: &str, host: &str, until: (i32, u8, u8), copies: usize) -> Value {
    let mut params = rcgen::CertificateParams::new(vec![host.to_owned()]).unwrap();
    params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    json!({"kind": "Secret", "metadata": {"namespace": "default", "name": name},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert.pem().repeat(copies), "tls.key": key.serialize_pem()}})
}

#[test]
fn expired_certificate_is_served_and_named() {
    let mut i = ingress(
        "old",
        Some("old.example.com"),
        vec![path("/", "Prefix", "a")],
    );
    i["spec"]["tls"] = json!([{"hosts": ["old.example.com"], "secretName": "old"}]);
    let secret = dated_tls_secret("old", "old.example.com", (2020, 1, 2), 1);
    let (t, w) = table(vec![i, secret]);
    assert_eq!(
        w.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "Ingress default/old: secret default/old: the certificate expired at 2020-01-02T00:00:00Z; it is served only to names no valid certificate covers"
        ]
    );
    assert!(t.has_certificate_for(Some("old.example.com")));
}

#[test]
fn huge_chain_is_refused_and_named() {
    let mut i = ingress(
        "big",
        Some("big.example.com"),
        vec![path("/", "Prefix", "a")],
    );
    i["spec"]["tls"] = json!([
        {"hosts": ["big.example.com"], "secretName": "big"},
        {"hosts": ["ok.example.com"], "secretName": "ok"}]);
    let big = dated_tls_secret("big", "big.example.com", (2090, 1, 1), 17);
    let ok = dated_tls_secret("ok", "ok.example.com", (2090, 1, 1), 16);
    let (t, w) = table(vec![i, big, ok]);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].to_string().starts_with(
            "Ingress default/big: secret default/big is not a valid kubernetes.io/tls secret: tls.crt holds 17 certificates, more than 16"
        ),
        "{}",
        w[0]
    );
    assert_eq!(
        t.certs
            .resolve(Some("big.example.com"))
            .map(|c| c.cert.len()),
        t.certs
            .resolve(Some("no-such-name.example.com"))
            .map(|c| c.cert.len()),
        "big.example.com gets the default certificate, never the huge chain"
    );
}

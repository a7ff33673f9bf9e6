//! The decisions of `sluice_routes::plan`, one test per rule: which Ingresses are served,
//! conflict order, defaults, regex hosts, annotations, canaries, TLS. (What the proxy does
//! with the plan is tested in crates/ingress.)

mod common;

use common::*;
use serde_json::json;
use sluice_plan::{BackendProtocol, HostMatch, PathKind, Validity};
use sluice_routes::RouteConfig;

// ---------------------------------------------------------------------------------------------
// Classes

#[test]
fn classes_by_controller_default_class_flag_and_without_class() {
    let named = |name: &str, class: Option<&str>, legacy: Option<&str>| {
        let mut i = ingress(
            name,
            &format!("{name}.test"),
            vec![path("/", "Prefix", "a")],
        );
        i["spec"]
            .as_object_mut()
            .unwrap()
            .remove("ingressClassName");
        if let Some(c) = class {
            i["spec"]["ingressClassName"] = json!(c);
        }
        if let Some(c) = legacy {
            i["metadata"]["annotations"]["kubernetes.io/ingress.class"] = json!(c);
        }
        i
    };
    let objects = vec![
        class("sluice", "sluice.dev/ingress", false),
        class("nginx", "k8s.io/ingress-nginx", false),
        named("ours", Some("sluice"), None),
        named("legacy-ours", None, Some("sluice")),
        named("spec-wins", Some("nginx"), Some("sluice")),
        named("nginx-spec", Some("nginx"), None),
        named("nginx-legacy", None, Some("nginx")),
        named("no-class", None, None),
        named("unknown-class", Some("missing"), None),
    ];
    let served = |config: &RouteConfig| -> Vec<String> {
        let (plan, _) = plan_with(&objects, config);
        plan.served.iter().map(|n| n.name.to_string()).collect()
    };
    assert_eq!(served(&RouteConfig::default()), ["legacy-ours", "ours"]);
    // `--ingress-class nginx`: both spellings of class nginx are served.
    let nginx = RouteConfig {
        classes: vec!["nginx".to_owned()],
        ..RouteConfig::default()
    };
    assert_eq!(
        served(&nginx),
        [
            "legacy-ours",
            "nginx-legacy",
            "nginx-spec",
            "ours",
            "spec-wins"
        ]
    );
    let without_class = RouteConfig {
        watch_without_class: true,
        ..RouteConfig::default()
    };
    assert_eq!(served(&without_class), ["legacy-ours", "no-class", "ours"]);
    // Our class as the cluster default also takes Ingresses without class.
    let mut with_default = objects.clone();
    with_default[0] = class("sluice", "sluice.dev/ingress", true);
    let (plan, _) = plan_with(&with_default, &RouteConfig::default());
    let names: Vec<&str> = plan.served.iter().map(|n| &*n.name).collect();
    assert_eq!(names, ["legacy-ours", "no-class", "ours"]);
}

#[test]
fn ingress_class_flag_needs_no_ingressclass_object() {
    let mut i = ingress("web", "web.test", vec![path("/", "Prefix", "a")]);
    i["spec"]["ingressClassName"] = json!("nginx");
    let mut objects = service("a", "10.0.0.1");
    objects.push(i);
    let config = RouteConfig {
        classes: vec!["nginx".to_owned()],
        ..RouteConfig::default()
    };
    let (plan, warnings) = plan_with(&objects, &config);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(plan.served.len(), 1);
    assert!(host_text(&plan, "web.test").contains("prefix / -> default/a:80 [10.0.0.1:8080]"));
}

// ---------------------------------------------------------------------------------------------
// Conflict order

#[test]
fn same_host_and_path_goes_to_the_oldest_and_the_loser_is_warned_naming_both() {
    let (plan, warnings) = plan(vec![
        created(
            ingress("new", "h", vec![path("/x", "Prefix", "b")]),
            "2024-02-01T00:00:00Z",
        ),
        created(
            ingress(
                "old",
                "h",
                vec![path("/x", "Prefix", "a"), path("/y", "Exact", "a")],
            ),
            "2024-01-01T00:00:00Z",
        ),
        created(
            ingress(
                "newer",
                "h",
                vec![path("/y", "Exact", "c"), path("/z", "Exact", "c")],
            ),
            "2024-03-01T00:00:00Z",
        ),
    ]);
    let text = host_text(&plan, "h");
    assert!(text.contains("prefix /x -> default/a:80"), "{text}");
    assert!(text.contains("exact /y -> default/a:80"), "{text}");
    assert!(
        text.contains("exact /z -> default/c:80"),
        "rules merge: {text}"
    );
    assert_eq!(
        warnings,
        [
            "Ingress default/new: Prefix path \"/x\" on host \"h\" is already routed by Ingress default/old (older); ignored",
            "Ingress default/newer: Exact path \"/y\" on host \"h\" is already routed by Ingress default/old (older); ignored",
        ]
    );
}

#[test]
fn an_ingress_without_creation_timestamp_loses() {
    let (plan, warnings) = plan(vec![
        ingress("aaa-no-timestamp", "h", vec![path("/", "Prefix", "a")]),
        created(
            ingress("zzz-dated", "h", vec![path("/", "Prefix", "b")]),
            "2024-01-01T00:00:00Z",
        ),
    ]);
    assert!(host_text(&plan, "h").contains("prefix / -> default/b:80"));
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].starts_with("Ingress default/aaa-no-timestamp:"),
        "{warnings:?}"
    );
    assert!(
        warnings[0].contains("Ingress default/zzz-dated (older)"),
        "{warnings:?}"
    );
}

#[test]
fn equal_timestamps_fall_back_to_namespace_and_name() {
    let (plan, warnings) = plan(vec![
        ingress("b", "h", vec![path("/", "Prefix", "b")]),
        ingress("a", "h", vec![path("/", "Prefix", "a")]),
    ]);
    assert!(host_text(&plan, "h").contains("prefix / -> default/a:80"));
    assert!(
        warnings[0].starts_with("Ingress default/b:"),
        "{warnings:?}"
    );
}

#[test]
fn prefix_paths_with_and_without_trailing_slash_are_the_same_path() {
    let (plan, warnings) = plan(vec![
        ingress("a", "h", vec![path("/x/", "Prefix", "a")]),
        ingress("b", "h", vec![path("/x", "Prefix", "b")]),
    ]);
    assert!(host_text(&plan, "h").contains("prefix /x -> default/a:80"));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
}

#[test]
fn prefix_and_implementation_specific_needing_the_same_prefix_conflict() {
    let (plan, warnings) = plan(vec![
        ingress("a", "h", vec![path("/x", "Prefix", "a")]),
        ingress(
            "b",
            "h",
            vec![
                path("/x/", "ImplementationSpecific", "b"),
                path("/x", "ImplementationSpecific", "b"),
            ],
        ),
    ]);
    let text = host_text(&plan, "h");
    assert!(text.contains("prefix /x -> default/a:80"), "{text}");
    assert!(text.contains("string-prefix /x -> default/b:80"), "{text}");
    assert!(!text.contains("string-prefix /x/"), "{text}");
    assert_eq!(
        warnings,
        [
            "Ingress default/b: string-prefix path \"/x/\" on host \"h\" overlaps prefix path \"/x\" of Ingress default/a (older); ignored"
        ]
    );
}

#[test]
fn paths_are_listed_exact_first_then_longest_prefix_first() {
    let (plan, _) = plan(vec![ingress(
        "i",
        "h",
        vec![
            path("/", "Prefix", "a"),
            path("/a/b", "Prefix", "b"),
            path("/a", "ImplementationSpecific", "c"),
            path("/z", "Exact", "d"),
            path("/m", "Exact", "d"),
        ],
    )]);
    let host = &plan.hosts[0];
    let listed: Vec<(PathKind, &str)> = host.paths.iter().map(|p| (p.kind, &*p.path)).collect();
    assert_eq!(
        listed,
        [
            (PathKind::Exact, "/m"),
            (PathKind::Exact, "/z"),
            (PathKind::Prefix, "/a/b"),
            (PathKind::StringPrefix, "/a"),
            (PathKind::Prefix, "/"),
        ]
    );
}

#[test]
fn hosts_are_exact_then_wildcard_then_any_and_bad_hosts_are_skipped() {
    let mut bad = ingress("bad", "a.*.test", vec![path("/", "Prefix", "a")]);
    bad["spec"]["rules"]
        .as_array_mut()
        .unwrap()
        .push(rule("*.ok.test", vec![path("/", "Prefix", "a")]));
    let (plan, warnings) = plan(vec![
        ingress("any", "", vec![path("/", "Prefix", "a")]),
        ingress("exact", "Upper.Test.", vec![path("/", "Prefix", "a")]),
        bad,
    ]);
    let hosts: Vec<&HostMatch> = plan.hosts.iter().map(|h| &h.host).collect();
    assert_eq!(
        hosts,
        [
            &HostMatch::Exact("upper.test".into()),
            &HostMatch::Wildcard("ok.test".into()),
            &HostMatch::Any
        ]
    );
    assert_eq!(
        warnings,
        ["Ingress default/bad: host \"a.*.test\" is not a valid host or *. wildcard; rule skipped"]
    );
}

// ---------------------------------------------------------------------------------------------
// Default backends

#[test]
fn a_host_falls_back_to_its_own_ingress_default_backend_else_the_builtin_404() {
    let (plan, warnings) = plan(vec![
        created(
            default_backend(
                ingress("with-default", "h1", vec![path("/x", "Prefix", "a")]),
                "b",
            ),
            "2024-01-01T00:00:00Z",
        ),
        created(
            ingress("second", "h1", vec![path("/y", "Prefix", "c")]),
            "2024-01-02T00:00:00Z",
        ),
        created(
            ingress("no-default", "h2", vec![path("/x", "Prefix", "a")]),
            "2024-01-03T00:00:00Z",
        ),
        created(
            default_backend(
                json!({"kind": "Ingress", "metadata": {"namespace": "default", "name": "catch-all"},
            "spec": {"ingressClassName": "sluice"}}),
                "d",
            ),
            "2024-01-04T00:00:00Z",
        ),
    ]);
    assert!(warnings.is_empty(), "{warnings:?}");
    let h1 = &plan
        .hosts
        .iter()
        .find(|h| h.host.to_string() == "h1")
        .unwrap()
        .default;
    assert_eq!(h1.backend.as_ref().unwrap().service.name.as_ref(), "b");
    assert_eq!(h1.ingress.name.as_ref(), "with-default");
    // h2's Ingress has no defaultBackend: the built-in 404, not the rules-less catch-all.
    let h2 = &plan
        .hosts
        .iter()
        .find(|h| h.host.to_string() == "h2")
        .unwrap()
        .default;
    assert!(h2.backend.is_none());
    // Hosts no rule names: the rules-less Ingress's defaultBackend.
    let catch_all = plan.default_backend.as_ref().unwrap();
    assert_eq!(
        catch_all.backend.as_ref().unwrap().service.name.as_ref(),
        "d"
    );
    assert!(
        plan.to_string()
            .contains("default-backend -> default/d:80 [10.0.0.4:8080]")
    );
}

#[test]
fn the_catch_all_prefers_a_rules_less_ingress_and_warns_the_second_naming_the_first() {
    let rules_less = |name: &str, svc: &str, at: &str| {
        created(
            default_backend(
                json!({"kind": "Ingress", "metadata": {"namespace": "default", "name": name},
                "spec": {"ingressClassName": "sluice"}}),
                svc,
            ),
            at,
        )
    };
    let (plan, warnings) = plan(vec![
        created(
            default_backend(ingress("rules", "h", vec![path("/", "Prefix", "a")]), "a"),
            "2024-01-01T00:00:00Z",
        ),
        rules_less("first", "b", "2024-01-02T00:00:00Z"),
        rules_less("second", "c", "2024-01-03T00:00:00Z"),
    ]);
    assert_eq!(
        plan.default_backend.as_ref().unwrap().ingress.name.as_ref(),
        "first"
    );
    assert_eq!(
        warnings,
        [
            "Ingress default/second: defaultBackend is not used for hosts no rule names: Ingress default/first (older) already provides it"
        ]
    );
    // Without a rules-less one, the oldest Ingress with rules and a defaultBackend catches all.
    let (only_rules, _) = common::plan(vec![created(
        default_backend(ingress("rules", "h", vec![path("/", "Prefix", "a")]), "b"),
        "2024-01-01T00:00:00Z",
    )]);
    assert_eq!(
        only_rules
            .default_backend
            .as_ref()
            .unwrap()
            .ingress
            .name
            .as_ref(),
        "rules"
    );
}

#[test]
fn rules_without_host_fall_back_to_the_catch_all() {
    let (plan, _) = plan(vec![
        ingress("hostless", "", vec![path("/x", "Prefix", "a")]),
        default_backend(
            json!({"kind": "Ingress", "metadata": {"namespace": "default", "name": "z-catch"},
            "spec": {"ingressClassName": "sluice"}}),
            "b",
        ),
    ]);
    let any = plan
        .hosts
        .iter()
        .find(|h| h.host == HostMatch::Any)
        .unwrap();
    assert_eq!(
        any.default.backend.as_ref().unwrap().service.name.as_ref(),
        "b"
    );
}

// ---------------------------------------------------------------------------------------------
// Regex hosts

#[test]
fn use_regex_makes_every_path_of_the_host_a_case_insensitive_regex_in_nginx_order() {
    let (plan, warnings) = plan(vec![
        annotate(
            ingress(
                "re",
                "h",
                vec![
                    path("/api/v[0-9]+", "ImplementationSpecific", "a"),
                    path("/b.*", "ImplementationSpecific", "b"),
                ],
            ),
            &[("use-regex", "true")],
        ),
        ingress(
            "plain",
            "h",
            vec![path("/static", "Prefix", "c"), path("/exact", "Exact", "d")],
        ),
        ingress("other", "other", vec![path("/static", "Prefix", "c")]),
    ]);
    assert!(warnings.is_empty(), "{warnings:?}");
    let host = plan
        .hosts
        .iter()
        .find(|h| h.host.to_string() == "h")
        .unwrap();
    let listed: Vec<(&str, &str)> = host
        .paths
        .iter()
        .map(|p| (&*p.path, &*p.action.backend.as_ref().unwrap().service.name))
        .collect();
    // Longest first, ties in reverse lexical order; Prefix /static of the Ingress without
    // regex keeps both its locations (/static/ and /static).
    assert_eq!(
        listed,
        [
            ("(?i)^/api/v[0-9]+", "a"),
            ("(?i)^/static/", "c"),
            ("(?i)^/static", "c"),
            ("(?i)^/exact", "d"),
            ("(?i)^/b.*", "b"),
        ]
    );
    assert!(host.is_regex());
    // Other hosts keep their own kinds.
    assert!(host_text(&plan, "other").contains("prefix /static"));
}

#[test]
fn rewrite_target_makes_the_host_regex_unless_it_equals_the_path() {
    let (plan, _) = plan(vec![
        annotate(
            ingress("fanout", "h", vec![path("/coffee", "Prefix", "a")]),
            &[("rewrite-target", "/")],
        ),
        annotate(
            ingress("same", "same", vec![path("/x", "Prefix", "b")]),
            &[("rewrite-target", "/x")],
        ),
    ]);
    let text = host_text(&plan, "h");
    assert!(
        text.contains("regex (?i)^/coffee -> default/a:80"),
        "{text}"
    );
    assert!(text.contains("rewrite-target /"), "{text}");
    let same = host_text(&plan, "same");
    assert!(
        same.contains("prefix /x") && !same.contains("rewrite-target"),
        "{same}"
    );
}

#[test]
fn an_invalid_regex_path_is_skipped_with_a_warning() {
    let (plan, warnings) = plan(vec![annotate(
        ingress(
            "re",
            "h",
            vec![
                path("/ok", "ImplementationSpecific", "a"),
                path("/bad(", "ImplementationSpecific", "b"),
            ],
        ),
        &[("use-regex", "true")],
    )]);
    assert_eq!(plan.hosts[0].paths.len(), 1);
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].starts_with(
            "Ingress default/re: path \"/bad(\" on host \"h\" is not a valid regular expression"
        ),
        "{warnings:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Annotations

#[test]
fn annotations_become_route_options() {
    let (plan, warnings) = plan(vec![annotate(
        ingress("all", "h", vec![path("/app", "Prefix", "a")]),
        &[
            ("backend-protocol", "grpc"),
            ("proxy-body-size", "8m"),
            ("proxy-connect-timeout", "3"),
            ("proxy-read-timeout", "120"),
            ("proxy-send-timeout", "30s"),
            ("whitelist-source-range", "10.0.0.0/8, 192.0.2.7"),
            ("enable-cors", "true"),
            ("cors-allow-origin", "https://a.test, https://*.b.test"),
            ("cors-allow-credentials", "false"),
            ("upstream-vhost", "internal.test"),
            ("x-forwarded-prefix", "/app"),
            ("limit-rps", "10"),
            ("limit-burst-multiplier", "3"),
            ("limit-connections", "4"),
            ("affinity", "cookie"),
            ("session-cookie-max-age", "3600"),
            ("app-root", "/app/home"),
            ("force-ssl-redirect", "true"),
        ],
    )]);
    assert!(warnings.is_empty(), "{warnings:?}");
    let o = &plan.hosts[0].paths[0].action.options;
    assert_eq!(o.protocol, BackendProtocol::Grpc);
    assert_eq!(o.max_body_bytes, Some(8 << 20));
    assert_eq!(o.connect_timeout, Some(std::time::Duration::from_secs(3)));
    assert_eq!(o.send_timeout, Some(std::time::Duration::from_secs(30)));
    assert_eq!(
        o.allow_sources
            .as_ref()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["10.0.0.0/8", "192.0.2.7/32"]
    );
    let text = host_text(&plan, "h");
    for line in [
        "    backend-protocol GRPC",
        "    https-redirect 308",
        "    app-root /app/home",
        "    body-size 8388608",
        "    connect-timeout 3s",
        "    read-timeout 120s",
        "    send-timeout 30s",
        "    allow 10.0.0.0/8 192.0.2.7/32",
        "    cors origins=https://a.test,https://*.b.test methods=\"GET, PUT, POST, DELETE, PATCH, OPTIONS\"",
        "credentials=false max-age=1728000",
        "    upstream-vhost internal.test",
        "    x-forwarded-prefix /app",
        "    limit-rps 10 burst 30",
        "    limit-connections 4",
        "    affinity cookie INGRESSCOOKIE path=/app max-age=3600",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[test]
fn snippets_and_unknown_annotations_are_never_executed_and_always_named() {
    let mut i = annotate(
        ingress("snippets", "h", vec![path("/", "Prefix", "a")]),
        &[
            ("configuration-snippet", "more_set_headers \"X: y\";"),
            ("server-snippet", "location /x { return 200; }"),
            ("proxy-buffer-size", "16k"),
        ],
    );
    i["metadata"]["annotations"]["example.com/other"] = json!("ignored silently");
    let (plan, warnings) = plan(vec![i]);
    assert_eq!(
        warnings,
        [
            "Ingress default/snippets: annotation nginx.ingress.kubernetes.io/configuration-snippet is a configuration snippet, which sluice never executes; ignored",
            "Ingress default/snippets: annotation nginx.ingress.kubernetes.io/proxy-buffer-size is not supported by sluice; ignored (see docs/ingress.md)",
            "Ingress default/snippets: annotation nginx.ingress.kubernetes.io/server-snippet is a configuration snippet, which sluice never executes; ignored",
        ]
    );
    // The route itself is served unchanged.
    assert_eq!(
        *plan.hosts[0].paths[0].action.options,
        sluice_plan::RouteOptions::default()
    );
}

#[test]
fn invalid_annotation_values_are_named_and_ignored_and_a_bad_allow_list_denies_everyone() {
    let (plan, warnings) = plan(vec![annotate(
        ingress("bad", "h", vec![path("/", "Prefix", "a")]),
        &[
            ("ssl-redirect", "maybe"),
            ("proxy-body-size", "lots"),
            ("proxy-read-timeout", "-1"),
            ("backend-protocol", "FCGI"),
            ("allowlist-source-range", "10.0.0.0/8,not-an-ip"),
            ("permanent-redirect", "https://new.test/"),
            ("permanent-redirect-code", "200"),
        ],
    )]);
    let o = &plan.hosts[0].paths[0].action.options;
    assert_eq!(o.max_body_bytes, None);
    assert_eq!(o.read_timeout, None);
    assert_eq!(o.protocol, BackendProtocol::Http);
    assert_eq!(o.allow_sources, Some(Vec::new()), "fails closed");
    assert_eq!(o.redirect.as_ref().map(|r| r.code), Some(301));
    let expected = [
        "allowlist-source-range entry \"not-an-ip\" is not a CIDR or address; the route denies every client (403) until it is fixed",
        "backend-protocol value \"FCGI\" is not HTTP, HTTPS, GRPC, GRPCS or H2C; ignored",
        "permanent-redirect-code value \"200\" is not 301, 302, 303, 307 or 308; ignored",
        "proxy-body-size value \"lots\" is not a size such as 8m, 512k or 0; ignored",
        "proxy-read-timeout value \"-1\" is not a positive number of seconds; ignored",
        "ssl-redirect value \"maybe\" is not true or false; ignored",
    ];
    assert_eq!(warnings.len(), expected.len(), "{warnings:#?}");
    for (w, e) in warnings.iter().zip(expected) {
        assert_eq!(
            w,
            &format!("Ingress default/bad: annotation nginx.ingress.kubernetes.io/{e}")
        );
    }
}

#[test]
fn upstream_tls_settings_come_from_the_proxy_ssl_annotations_and_fail_closed() {
    let secret = |name: &str, data: serde_json::Value| {
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"namespace": "default", "name": name}, "stringData": data})
    };
    let (plan, warnings) = plan(vec![
        secret(
            "ca",
            json!({"ca.crt": "CA PEM", "tls.crt": "CRT", "tls.key": "KEY"}),
        ),
        secret("no-ca", json!({"tls.crt": "CRT"})),
        annotate(
            ingress("verified", "v.test", vec![path("/", "Prefix", "a")]),
            &[
                ("backend-protocol", "GRPCS"),
                ("proxy-ssl-verify", "on"),
                ("proxy-ssl-secret", "default/ca"),
                ("proxy-ssl-name", "a.internal"),
                ("proxy-ssl-server-name", "on"),
            ],
        ),
        annotate(
            ingress("plain-tls", "p.test", vec![path("/", "Prefix", "a")]),
            &[("backend-protocol", "HTTPS")],
        ),
        annotate(
            ingress("no-ca", "n.test", vec![path("/", "Prefix", "a")]),
            &[
                ("backend-protocol", "HTTPS"),
                ("proxy-ssl-verify", "on"),
                ("proxy-ssl-secret", "no-ca"),
            ],
        ),
    ]);
    let tls = |host: &str| {
        let h = plan
            .hosts
            .iter()
            .find(|h| h.host.to_string() == host)
            .unwrap();
        h.paths[0].action.options.upstream_tls.clone().unwrap()
    };
    let v = tls("v.test");
    assert!(v.verify && v.send_sni);
    assert_eq!(v.name, "a.internal");
    assert_eq!(v.ca_pem.as_deref(), Some(&b"CA PEM"[..]));
    assert!(v.client_cert.is_some());
    // Without proxy-ssl-*: no verification, no SNI, the Service's name.
    let p = tls("p.test");
    assert!(!p.verify && !p.send_sni && p.secret.is_none());
    assert_eq!(p.name, "a.default.svc");
    let n = tls("n.test");
    assert!(n.verify && n.ca_pem.is_none() && n.client_cert.is_none());
    let prefix = "Ingress default/no-ca: annotation nginx.ingress.kubernetes.io/";
    assert_eq!(
        warnings,
        [
            format!("{prefix}proxy-ssl-secret secret default/no-ca has no ca.crt"),
            format!(
                "{prefix}proxy-ssl-secret secret default/no-ca has only one of tls.crt and \
                 tls.key; no client certificate is sent"
            ),
            format!(
                "{prefix}proxy-ssl-verify is on but no proxy-ssl-secret with ca.crt is usable; \
                 every connection to the endpoints fails (502)"
            ),
        ]
    );
}

#[test]
fn ssl_redirect_is_on_for_tls_hosts_only_unless_forced_or_disabled() {
    let (plan, _) = plan(vec![
        tls_secret("s", &["tls.test", "*.wild.test"], 2020, 2040),
        with_tls(
            ingress("tls", "tls.test", vec![path("/", "Prefix", "a")]),
            &["tls.test"],
            "s",
        ),
        ingress("plain", "plain.test", vec![path("/", "Prefix", "a")]),
        annotate(
            ingress("off", "off.test", vec![path("/", "Prefix", "a")]),
            &[("ssl-redirect", "false")],
        ),
        with_tls(
            annotate(
                ingress("off2", "off2.test", vec![path("/", "Prefix", "a")]),
                &[("ssl-redirect", "false")],
            ),
            &["off2.test"],
            "s",
        ),
        annotate(
            ingress("forced", "forced.test", vec![path("/", "Prefix", "a")]),
            &[("force-ssl-redirect", "true")],
        ),
        with_tls(
            ingress("wild", "x.wild.test", vec![path("/", "Prefix", "a")]),
            &["*.wild.test"],
            "s",
        ),
        // Another Ingress's route on a TLS host redirects too (the host has a certificate).
        ingress("shared", "tls.test", vec![path("/other", "Prefix", "b")]),
    ]);
    let redirects = |host: &str| {
        let h = plan
            .hosts
            .iter()
            .find(|h| h.host.to_string() == host)
            .unwrap();
        h.paths.iter().all(|p| p.action.options.https_redirect) && h.default.options.https_redirect
    };
    assert!(redirects("tls.test"));
    assert!(redirects("x.wild.test"));
    assert!(redirects("forced.test"));
    assert!(!redirects("plain.test"));
    assert!(!redirects("off.test"));
    assert!(!redirects("off2.test"));
}

#[test]
fn redirects_app_root_and_auth_settings() {
    let secret = json!({"kind": "Secret", "metadata": {"namespace": "default", "name": "users"},
        "type": "Opaque", "stringData": {"auth":
            "alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/\nbob:{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M=\ncarol:$2y$05$abcdefghijklmnopqrstuu5Qk0gqJ1ZV/Pp1wLmYc3gCrcnY4JiO2\n"}});
    let (plan, warnings) = plan(vec![
        secret,
        annotate(
            ingress("auth", "auth.test", vec![path("/", "Prefix", "a")]),
            &[
                ("auth-type", "basic"),
                ("auth-secret", "users"),
                ("auth-realm", "Staff only"),
            ],
        ),
        annotate(
            ingress("nosecret", "nosecret.test", vec![path("/", "Prefix", "a")]),
            &[("auth-type", "basic"), ("auth-secret", "missing")],
        ),
        annotate(
            ingress("moved", "moved.test", vec![path("/", "Prefix", "a")]),
            &[("temporal-redirect", "https://new.test/")],
        ),
    ]);
    let auth = host_text(&plan, "auth.test");
    assert!(
        auth.contains("    basic-auth realm=\"Staff only\" secret default/users users alice,bob"),
        "{auth}"
    );
    assert!(
        host_text(&plan, "nosecret.test")
            .contains("basic-auth realm=\"\" secret default/missing users")
    );
    assert!(host_text(&plan, "moved.test").contains("    redirect 302 https://new.test/"));
    assert_eq!(
        warnings,
        [
            "Ingress default/auth: annotation nginx.ingress.kubernetes.io/auth-secret secret default/users: user \"carol\": bcrypt hashes ($2y$, htpasswd -B) are not supported; use htpasswd -m (apr1) or -s (SHA); this user cannot log in",
            "Ingress default/nosecret: annotation nginx.ingress.kubernetes.io/auth-secret names secret default/missing, which is not found; every request gets 401",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Canaries

#[test]
fn a_canary_joins_the_route_with_the_same_host_path_and_type() {
    let canary = |name: &str, p: &str, kind: &str, pairs: &[(&str, &str)]| {
        let mut all = vec![("canary", "true")];
        all.extend_from_slice(pairs);
        annotate(ingress(name, "h", vec![path(p, kind, "b")]), &all)
    };
    let (plan, warnings) = plan(vec![
        created(
            ingress(
                "main",
                "h",
                vec![path("/", "Prefix", "a"), path("/x", "Exact", "a")],
            ),
            "2024-01-01T00:00:00Z",
        ),
        created(
            canary(
                "c1",
                "/",
                "Prefix",
                &[
                    ("canary-by-header", "X-Canary"),
                    ("canary-by-header-value", "yes"),
                    ("canary-weight", "20"),
                ],
            ),
            "2024-01-02T00:00:00Z",
        ),
        created(
            canary("c2", "/", "Prefix", &[("canary-weight", "50")]),
            "2024-01-03T00:00:00Z",
        ),
        created(canary("c3", "/x", "Prefix", &[]), "2024-01-04T00:00:00Z"),
    ]);
    let text = host_text(&plan, "h");
    assert!(
        text.contains("  prefix / -> default/a:80 [10.0.0.1:8080]\n    canary default/b:80 [10.0.0.2:8080] from default/c1 header=X-Canary=yes weight=20/100"),
        "{text}"
    );
    // A canary is not a route of its own.
    assert!(!text.contains("-> default/b:80"), "{text}");
    assert_eq!(
        warnings,
        [
            "Ingress default/c2: the route of Ingress default/main already has canary Ingress default/c1 (older); ignored",
            "Ingress default/c3: canary path \"/x\" on host \"h\" matches no route of a non-canary Ingress (same host, path and path type); ignored",
        ]
    );
    assert_eq!(plan.served.len(), 4, "canary Ingresses are served (status)");
}

// ---------------------------------------------------------------------------------------------
// TLS

#[test]
fn certificates_per_name_valid_first_exact_before_wildcard_and_expired_ones_named() {
    let (plan, warnings) = plan(vec![
        tls_secret("expired", &["shop.test"], 2020, 2025),
        tls_secret("future", &["shop.test"], 2035, 2040),
        tls_secret("wild", &["*.test"], 2020, 2040),
        tls_secret("exact", &["shop.test"], 2020, 2040),
        created(
            with_tls(
                ingress("a-expired", "shop.test", vec![path("/", "Prefix", "a")]),
                &["shop.test"],
                "expired",
            ),
            "2024-01-01T00:00:00Z",
        ),
        created(
            with_tls(
                ingress("b-future", "shop.test", vec![path("/f", "Prefix", "a")]),
                &["shop.test"],
                "future",
            ),
            "2024-01-02T00:00:00Z",
        ),
        created(
            with_tls(
                ingress("c-wild", "x.test", vec![path("/", "Prefix", "a")]),
                &["*.test"],
                "wild",
            ),
            "2024-01-03T00:00:00Z",
        ),
        created(
            with_tls(
                ingress("d-exact", "shop.test", vec![path("/e", "Prefix", "a")]),
                &["shop.test"],
                "exact",
            ),
            "2024-01-04T00:00:00Z",
        ),
    ]);
    let shop = plan
        .tls
        .hosts
        .iter()
        .find(|h| h.name.to_string() == "shop.test")
        .unwrap();
    let order: Vec<(&str, Validity)> = shop
        .certificates
        .iter()
        .map(|c| (&*c.secret.name, c.validity))
        .collect();
    assert_eq!(
        order,
        [
            ("exact", Validity::Valid),
            ("wild", Validity::Valid),
            ("expired", Validity::Expired),
            ("future", Validity::NotYetValid),
        ]
    );
    assert_eq!(
        warnings,
        [
            "Ingress default/a-expired: secret default/expired: the certificate expired at 2025-01-01T00:00:00Z; it is served only to names no valid certificate covers",
            "Ingress default/b-future: secret default/future: the certificate is not valid before 2035-01-01T00:00:00Z; it is served only to names no valid certificate covers",
        ]
    );
    let text = plan.tls.to_string();
    assert!(text.starts_with("tls shop.test, *.test\n"), "{text}");
    assert!(
        text.contains("  shop.test <- secret default/expired expired (Ingress default/a-expired)"),
        "{text}"
    );
}

#[test]
fn bad_and_missing_tls_secrets_are_named_and_the_ingress_is_still_served() {
    let mut opaque = tls_secret("opaque", &["h"], 2020, 2040);
    opaque["type"] = json!("Opaque");
    let (plan, warnings) = plan(vec![
        opaque,
        with_tls(
            with_tls(
                ingress("i", "h", vec![path("/", "Prefix", "a")]),
                &["h"],
                "opaque",
            ),
            &["h"],
            "missing",
        ),
    ]);
    assert_eq!(plan.hosts.len(), 1);
    assert!(plan.tls.hosts.is_empty());
    assert_eq!(
        warnings,
        [
            "Ingress default/i: secret default/missing not found",
            "Ingress default/i: secret default/opaque is not a valid kubernetes.io/tls secret: has type \"Opaque\", want kubernetes.io/tls",
        ]
    );
}

#[test]
fn the_default_certificate_is_only_the_flags_and_a_hostless_entry_covers_its_rule_hosts() {
    let objects = |with_hostless: bool| {
        let mut i = with_tls(
            ingress("i", "h", vec![path("/", "Prefix", "a")]),
            &["h"],
            "named",
        );
        if with_hostless {
            i = with_tls(i, &[], "hostless");
        }
        let mut objects = vec![
            class("sluice", "sluice.dev/ingress", false),
            tls_secret("named", &["h"], 2020, 2040),
            tls_secret("hostless", &["h"], 2020, 2040),
            tls_secret("flag", &["h"], 2020, 2040),
            i,
        ];
        objects.extend(service("a", "10.0.0.1"));
        objects
    };
    let defaults = |objects: &[serde_json::Value], config: &RouteConfig| -> Vec<String> {
        let (plan, _) = plan_with(objects, config);
        plan.tls
            .default
            .iter()
            .map(|c| c.secret.name.to_string())
            .collect()
    };
    let flag = |name: &str| RouteConfig {
        default_certificate: Some(sluice_model::ObjectKey::new("default", name)),
        ..RouteConfig::default()
    };
    // As ingress-nginx: `--default-ssl-certificate`, else none here (the proxy generates a
    // self-signed one); no Ingress's certificate is shown for names it was not given for.
    assert_eq!(defaults(&objects(true), &flag("flag")), ["flag"]);
    assert!(defaults(&objects(true), &RouteConfig::default()).is_empty());
    assert!(defaults(&objects(false), &RouteConfig::default()).is_empty());
    let (plan, warnings) = plan_with(&objects(false), &flag("missing"));
    assert!(plan.tls.default.is_empty());
    assert_eq!(
        warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["Secret default/missing: default certificate secret not found"]
    );
    // A hostless entry covers the Ingress's own rule hosts.
    let (plan, _) = plan_with(&objects(true), &RouteConfig::default());
    let h = &plan.tls.hosts[0];
    assert_eq!(
        h.certificates
            .iter()
            .map(|c| &*c.secret.name)
            .collect::<Vec<_>>(),
        ["named", "hostless"]
    );
}

// ---------------------------------------------------------------------------------------------
// Backends

#[test]
fn every_ingress_naming_a_missing_service_is_warned() {
    let (plan, warnings) = plan(vec![
        ingress("one", "h1", vec![path("/", "Prefix", "gone")]),
        ingress("two", "h2", vec![path("/", "Prefix", "gone")]),
    ]);
    assert!(host_text(&plan, "h1").contains("prefix / -> default/gone:80 []"));
    assert_eq!(
        warnings,
        [
            "Ingress default/one: service default/gone not found",
            "Ingress default/two: service default/gone not found"
        ]
    );
}

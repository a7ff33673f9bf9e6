//! Ingress route matching and request-path normalisation on arbitrary routes and requests.
//! `normalize_path` never panics, its result is absolute, has no empty, `.` or `..` segment,
//! no escape it could still decode, and normalising it again changes nothing. The proxy's
//! route table (built from `sluice-routes`' plan, as the agent does) answers a normalised
//! path with the rule the plan's documented matching picks, worked out here from the plan
//! alone: exact host, then `*.` wildcard, then rules without host, then the default backend;
//! inside the host, regex hosts take the first regex that matches, others the exact path,
//! else the longest prefix (the first listed among equals); else the host's default.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use sluice_ingress::{IngressConfig, IngressProxy, normalize_path};
use sluice_model::{NodeInfo, ObjectKey, Snapshot};
use sluice_plan::{HostMatch, HostPlan, PathKind, RouteAction, RoutePlan};
use sluice_routes::RouteConfig;

const HOSTS: [&str; 8] = [
    "",
    "cafe.example.com",
    "*.example.com",
    "CAFE.example.com",
    "a.b.example.com",
    "*.b.example.com",
    "xn--caf-dma.example",
    "café.example.com",
];
const SEGMENTS: [&str; 17] = [
    "", "tea", "coffee", "..", ".", "%2e%2e", "%2F", "a%2Fb", "%zz", "%41", "Tea", "tea.", "~x",
    "%25", "(.*)", "[a-z]+", "(",
];
const KINDS: [&str; 4] = ["Exact", "Prefix", "ImplementationSpecific", "Regex"];

#[derive(Arbitrary, Debug)]
struct Route {
    host: u8,
    segments: Vec<u8>,
    trailing_slash: bool,
    kind: u8,
    service: u8,
    /// `use-regex: "true"` on this route's Ingress.
    use_regex: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    routes: Vec<Route>,
    default_backend: Option<u8>,
    request_host: u8,
    request_host_suffix: u8,
    /// The request path starts with this route's path (so that rules match often).
    request_route: Option<u8>,
    request_segments: Vec<u8>,
    raw_tail: String,
}

/// The request path before normalisation: a route's path (when asked for), then the
/// request's own segments, then the raw tail.
fn request_path(input: &Input) -> String {
    let route = input
        .request_route
        .and_then(|i| input.routes.get(usize::from(i) % input.routes.len().max(1)))
        .map(|r| path_of(&r.segments, r.trailing_slash));
    let own = if input.request_segments.is_empty() && route.is_some() {
        String::new()
    } else {
        path_of(&input.request_segments, false)
    };
    let route = route.map(|p| p.trim_end_matches('/').to_owned());
    let head = format!("{}{own}", route.unwrap_or_default());
    let head = if head.is_empty() { "/" } else { &head };
    format!("{head}{}", input.raw_tail)
}

fn path_of(segments: &[u8], trailing: bool) -> String {
    let mut p: String = segments
        .iter()
        .take(6)
        .map(|s| format!("/{}", SEGMENTS[usize::from(*s) % SEGMENTS.len()]))
        .collect();
    if p.is_empty() || trailing {
        p.push('/');
    }
    p
}

fn backend_json(service: u8) -> serde_json::Value {
    json!({"service": {"name": format!("svc-{}", service % 4), "port": {"number": 80}}})
}

fn snapshot(input: &Input) -> Snapshot {
    let mut s = Snapshot::default();
    let class =
        json!({"metadata": {"name": "sluice"}, "spec": {"controller": "sluice.dev/ingress"}});
    s.ingress_classes.insert(
        ObjectKey::cluster("sluice"),
        Arc::new(serde_json::from_value(class).expect("class")),
    );
    for (i, r) in input.routes.iter().take(8).enumerate() {
        let host = HOSTS[usize::from(r.host) % HOSTS.len()];
        let mut rule = json!({"http": {"paths": [{
            "path": path_of(&r.segments, r.trailing_slash),
            "pathType": KINDS[usize::from(r.kind) % KINDS.len()],
            "backend": backend_json(r.service)}]}});
        if !host.is_empty() {
            rule["host"] = json!(host);
        }
        let mut spec = json!({"ingressClassName": "sluice", "rules": [rule]});
        let annotations = if r.use_regex {
            json!({"nginx.ingress.kubernetes.io/use-regex": "true"})
        } else {
            json!({})
        };
        if i == 0
            && let Some(d) = input.default_backend
        {
            spec["defaultBackend"] = backend_json(d);
        }
        let name = format!("ing-{i}");
        let ing = json!({"metadata": {"namespace": "default", "name": name,
            "annotations": annotations,
            "creationTimestamp": format!("2024-01-{:02}T00:00:00Z", i + 1)}, "spec": spec});
        if let Ok(v) = serde_json::from_value(ing) {
            s.ingresses
                .insert(ObjectKey::new("default", name), Arc::new(v));
        }
    }
    s
}

fn check_normalised(raw: &str, n: &str) {
    assert!(n.starts_with('/'), "{raw:?} → {n:?}");
    assert!(!n.contains("//"), "{raw:?} → {n:?}");
    assert!(
        n[1..].split('/').all(|seg| seg != "." && seg != ".."),
        "{raw:?} → {n:?}"
    );
    assert_eq!(
        normalize_path(n).as_deref(),
        Ok(n),
        "not idempotent: {raw:?} → {n:?}"
    );
    let bytes = n.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("two hex digits");
            let c = u8::from_str_radix(hex, 16).expect("hex");
            assert!(hex == hex.to_uppercase(), "lower-case escape in {n:?}");
            assert!(
                !(c.is_ascii_alphanumeric() || b"-._~/".contains(&c)),
                "decodable escape in {n:?}"
            );
        }
    }
}

/// The request host as the plan's hosts are written: port and trailing dot removed, lower
/// case.
fn plan_host(host: &str) -> String {
    let host = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h),
    };
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

fn host_plan<'a>(plan: &'a RoutePlan, host: &str) -> Option<&'a HostPlan> {
    let find = |want: &HostMatch| plan.hosts.iter().find(|h| &h.host == want);
    find(&HostMatch::Exact(host.into()))
        .or_else(|| {
            let (_, parent) = host.split_once('.')?;
            find(&HostMatch::Wildcard(parent.into()))
        })
        .or_else(|| find(&HostMatch::Any))
}

/// The rule the plan's matching picks, named as the proxy names its routes, with its action.
fn reference_lookup(plan: &RoutePlan, host: &str, path: &str) -> Option<(String, RouteAction)> {
    let Some(h) = host_plan(plan, &plan_host(host)) else {
        let action = plan.default_backend.clone()?;
        return Some(("default-backend".to_owned(), action));
    };
    let name = |kind: &str| format!("host {}, {kind}", h.host);
    let chosen = if h.is_regex() {
        h.paths.iter().find(|p| {
            p.kind == PathKind::Regex
                && regex::RegexBuilder::new(&p.path)
                    .size_limit(1 << 20)
                    .build()
                    .is_ok_and(|re| re.is_match(path))
        })
    } else {
        h.paths
            .iter()
            .find(|p| p.exact() == Some(path))
            .or_else(|| {
                let mut longest: Option<(usize, &sluice_plan::PathRule)> = None;
                for p in &h.paths {
                    if let Some(prefix) = p.prefix()
                        && path.starts_with(&prefix)
                        && longest.is_none_or(|(len, _)| prefix.len() > len)
                    {
                        longest = Some((prefix.len(), p));
                    }
                }
                longest.map(|(_, p)| p)
            })
    };
    Some(match chosen {
        Some(p) => (
            name(&format!("{} {}", p.kind.as_str(), p.path)),
            p.action.clone(),
        ),
        None => (name("default"), h.default.clone()),
    })
}

/// One proxy for every run: only its route table changes.
fn proxy() -> &'static IngressProxy {
    static PROXY: OnceLock<IngressProxy> = OnceLock::new();
    PROXY.get_or_init(|| {
        IngressProxy::new(IngressConfig {
            access_log: false,
            ..IngressConfig::default()
        })
    })
}

fuzz_target!(|input: Input| {
    let raw = request_path(&input);
    let normalised = normalize_path(&raw);
    let Ok(path) = normalised else { return };
    check_normalised(&raw, &path);
    let (plan, _warnings) = sluice_routes::plan(
        &snapshot(&input),
        &NodeInfo::default(),
        &RouteConfig::default(),
        SystemTime::UNIX_EPOCH,
    );
    proxy().update(&plan);
    let table = proxy().route_table();
    let suffix = ["", ":80", ".", ".:8080", ":x"][usize::from(input.request_host_suffix) % 5];
    let host = format!(
        "{}{suffix}",
        HOSTS[usize::from(input.request_host) % HOSTS.len()].replace('*', "w")
    );
    let got = table
        .lookup(&host, &path)
        .map(|r| (r.rule().to_owned(), r.action().clone()));
    assert_eq!(
        got,
        reference_lookup(&plan, &host, &path),
        "host {host:?} path {path:?}\n{plan:#?}"
    );
});

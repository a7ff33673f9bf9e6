//! Ingress route matching and request-path normalisation on arbitrary routes and requests.
//! `normalize_path` never panics, its result is absolute, has no empty, `.` or `..` segment,
//! no escape it could still decode, and normalising it again changes nothing. `lookup` on a
//! normalised path picks what the documented rules pick on the table's own description
//! (`RouteTable::describe`): exact host, then `*.` wildcard, then rules without host; there,
//! the exact path, else the longest prefix matching whole path elements, else the host's
//! default backend, else the cluster-wide default backend.

#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use sluice_ingress::{IngressConfig, ObjectKey, Snapshot, build_route_table, normalize_path};

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
const SEGMENTS: [&str; 14] = [
    "", "tea", "coffee", "..", ".", "%2e%2e", "%2F", "a%2Fb", "%zz", "%41", "Tea", "tea.", "~x",
    "%25",
];
const KINDS: [&str; 4] = ["Exact", "Prefix", "ImplementationSpecific", "Regex"];

#[derive(Arbitrary, Debug)]
struct Route {
    host: u8,
    segments: Vec<u8>,
    trailing_slash: bool,
    kind: u8,
    service: u8,
}

#[derive(Arbitrary, Debug)]
struct Input {
    routes: Vec<Route>,
    default_backend: Option<u8>,
    request_host: u8,
    request_host_suffix: u8,
    request_segments: Vec<u8>,
    raw_tail: String,
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
        if i == 0
            && let Some(d) = input.default_backend
        {
            spec["defaultBackend"] = backend_json(d);
        }
        let name = format!("ing-{i}");
        let ing = json!({"metadata": {"namespace": "default", "name": name,
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

/// The table as described: host entries (`exact`, `*.`-wildcard, any) with their routes.
#[derive(Default, Debug)]
struct Described {
    hosts: BTreeMap<String, HostRoutes>,
    default_backend: Option<String>,
}

#[derive(Default, Debug)]
struct HostRoutes {
    exact: BTreeMap<String, String>,
    prefixes: Vec<(String, String)>,
    default: Option<String>,
}

fn backend_name(text: &str) -> String {
    text.split(" [").next().unwrap_or(text).to_owned()
}

fn parse_description(text: &str) -> Described {
    let mut d = Described::default();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(host) = line.strip_prefix("host ") {
            current = Some(host.to_owned());
            d.hosts.entry(host.to_owned()).or_default();
        } else if let Some(rest) = line.strip_prefix("default-backend -> ") {
            d.default_backend = Some(backend_name(rest));
        } else if let Some(route) = line.strip_prefix("  ") {
            let h = d
                .hosts
                .get_mut(current.as_deref().expect("a host line first"))
                .expect("host");
            let (left, right) = route.split_once(" -> ").expect("route line");
            let backend = backend_name(right);
            if let Some(p) = left.strip_prefix("exact ") {
                h.exact.insert(p.to_owned(), backend);
            } else if let Some(p) = left.strip_prefix("prefix ") {
                h.prefixes
                    .push((p.trim_end_matches('/').to_owned(), backend));
            } else if left == "default" {
                h.default = Some(backend);
            }
        }
    }
    d
}

fn reference_lookup(d: &Described, host: &str, path: &str) -> Option<String> {
    let host = host
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let routes = d
        .hosts
        .get(&host)
        .or_else(|| {
            host.split_once('.')
                .and_then(|(_, parent)| d.hosts.get(&format!("*.{parent}")))
        })
        .or_else(|| d.hosts.get("*"));
    let Some(r) = routes else {
        return d.default_backend.clone();
    };
    if let Some(b) = r.exact.get(path) {
        return Some(b.clone());
    }
    let mut prefixes: Vec<&(String, String)> = r.prefixes.iter().collect();
    prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    for (p, b) in prefixes {
        if let Some(rest) = path.strip_prefix(p.as_str())
            && (rest.is_empty() || rest.starts_with('/'))
        {
            return Some(b.clone());
        }
    }
    r.default.clone().or_else(|| d.default_backend.clone())
}

fuzz_target!(|input: Input| {
    let raw = format!(
        "{}{}",
        path_of(&input.request_segments, false),
        input.raw_tail
    );
    let normalised = normalize_path(&raw);
    let Ok(path) = normalised else { return };
    check_normalised(&raw, &path);
    let (table, _warnings) = build_route_table(&snapshot(&input), &IngressConfig::default());
    let suffix = ["", ":80", ".", ".:8080", ":x"][usize::from(input.request_host_suffix) % 5];
    let host = format!(
        "{}{suffix}",
        HOSTS[usize::from(input.request_host) % HOSTS.len()].replace('*', "w")
    );
    let got = table.lookup(&host, &path).map(|b| b.to_string());
    let described = parse_description(&table.describe());
    assert_eq!(
        got,
        reference_lookup(&described, &host, &path),
        "host {host:?} path {path:?}\n{}",
        table.describe()
    );
});

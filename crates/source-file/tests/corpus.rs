//! Every file of the bad-input corpus (`tests/corpus/` at the repository root) is loaded next
//! to a known-good file. For each one: no panic, every good object still present, and exactly
//! the warnings its header promises (`# expect: warn TEXT`), each naming the file and, when
//! there is one, the object. See tests/corpus/README.md for the header format.
//!
//! Semantic problems are compute's job, not the source's: those files only have to load
//! cleanly here (`# expect: load ...`), and their `# compute:` line says what compute (or the
//! ingress) must report when the whole agent runs the corpus:
//! endpointslice-address-type-mismatch, endpointslice-bad-address,
//! endpointslice-empty-addresses, endpointslice-fqdn-address-type,
//! endpointslice-missing-address-type, endpointslice-port-out-of-range,
//! endpointslice-without-service-label, huge-port-list, ingress-bad-backend-port,
//! ingress-bad-path-type, ingress-host-with-spaces, ingress-missing-path-type,
//! ingress-tls-secret-missing, ingress-unknown-service, ingressclass-missing-controller,
//! node-bad-address, secret-bad-pem, secret-wrong-type, service-bad-cluster-ip,
//! service-bad-protocol, service-bad-type, service-cluster-ips-mismatch,
//! service-duplicate-ports, service-external-ips-garbage, service-missing-spec,
//! service-negative-port, service-nodeport-out-of-range, service-port-out-of-range,
//! service-port-zero, service-session-affinity-timeout-huge, service-target-port-out-of-range,
//! yaml-tags

use std::path::{Path, PathBuf};

use sluice_model::{ObjectKey, Snapshot};
use sluice_source_file::{LoadWarning, Problem, load_dir};

/// One object of each kind, all valid. `good.yaml` sorts after most corpus names, so the
/// duplicate test's copy loses to it.
const GOOD: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: corpus-good}
spec: {clusterIP: 10.96.200.1, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: corpus-good, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.200.1], conditions: {ready: true}}]
ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Node
metadata: {name: good-node}
status: {addresses: [{type: InternalIP, address: 192.0.2.10}]}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: sluice}
spec: {controller: sluice.dev/ingress}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: cafe, namespace: corpus-good}
spec:
  ingressClassName: sluice
  tls: [{hosts: [cafe.example.com], secretName: cafe-tls}]
  rules:
  - host: cafe.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
---
apiVersion: v1
kind: Secret
metadata: {name: cafe-tls, namespace: corpus-good}
type: kubernetes.io/tls
data: {tls.crt: Y2VydA==, tls.key: a2V5}
"#;

const GOOD_OBJECTS: [(&str, &str); 6] = [
    ("Service", "corpus-good/web"),
    ("EndpointSlice", "corpus-good/web-1"),
    ("Node", "good-node"),
    ("IngressClass", "sluice"),
    ("Ingress", "corpus-good/cafe"),
    ("Secret", "corpus-good/cafe-tls"),
];

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus")
}

/// What a corpus file's header comment promises.
#[derive(Default)]
struct Expectations {
    breaks: bool,
    load: Vec<(String, String)>,
    absent: Vec<(String, String)>,
    warn: Vec<String>,
}

fn expectations(bytes: &[u8]) -> Expectations {
    let text = match bytes {
        [0xFF, 0xFE, rest @ ..] => {
            let units = rest
                .chunks_exact(2)
                .map(|p| u16::from_le_bytes([p[0], p[1]]));
            char::decode_utf16(units)
                .map(|c| c.unwrap_or('?'))
                .collect()
        }
        _ => String::from_utf8_lossy(bytes)
            .trim_start_matches('\u{FEFF}')
            .to_owned(),
    };
    let mut out = Expectations::default();
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        let object = |rest: &str| {
            let (kind, key) = rest.split_once(' ').expect("`Kind key`");
            (kind.to_owned(), key.trim().to_owned())
        };
        if line.starts_with("# breaks: ") {
            out.breaks = true;
        } else if let Some(rest) = line.strip_prefix("# expect: load ") {
            out.load.push(object(rest));
        } else if let Some(rest) = line.strip_prefix("# expect: absent ") {
            out.absent.push(object(rest));
        } else if let Some(rest) = line.strip_prefix("# expect: warn ") {
            out.warn.push(rest.to_owned());
        }
    }
    out
}

fn has(snapshot: &Snapshot, kind: &str, key: &str) -> bool {
    let key = match key.split_once('/') {
        Some((namespace, name)) => ObjectKey::new(namespace, name),
        None => ObjectKey::cluster(key),
    };
    match kind {
        "Service" => snapshot.services.contains_key(&key),
        "EndpointSlice" => snapshot.endpoint_slices.contains_key(&key),
        "Node" => snapshot.nodes.contains_key(&key),
        "Ingress" => snapshot.ingresses.contains_key(&key),
        "IngressClass" => snapshot.ingress_classes.contains_key(&key),
        "Secret" => snapshot.secrets.contains_key(&key),
        other => panic!("unknown kind {other} in a corpus header"),
    }
}

/// Problems about one object must name it.
fn is_about_an_object(problem: &Problem) -> bool {
    matches!(
        problem,
        Problem::NoKind
            | Problem::MisspelledKind { .. }
            | Problem::UnknownKind { .. }
            | Problem::UnsupportedApiVersion { .. }
            | Problem::Invalid { .. }
            | Problem::MissingName
            | Problem::OnlyGenerateName
            | Problem::InvalidName { .. }
            | Problem::Duplicate { .. }
    )
}

/// Loads `name` (with `bytes`) next to good.yaml; returns what went wrong, if anything.
fn check_file(name: &str, bytes: &[u8], scratch: &Path) -> Vec<String> {
    let dir = scratch.join(name.replace('.', "_"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("good.yaml"), GOOD).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
    let expected = expectations(bytes);
    let mut problems = Vec::new();
    if !expected.breaks {
        problems.push("header has no `# breaks:` line".to_owned());
    }
    let loaded = std::panic::catch_unwind(|| load_dir(&dir));
    let (snapshot, warnings) = match loaded {
        Ok(Ok(result)) => result,
        Ok(Err(err)) => return vec![format!("directory error: {err}")],
        Err(_) => return vec!["PANICKED".to_owned()],
    };
    for (kind, key) in GOOD_OBJECTS {
        if !has(&snapshot, kind, key) {
            problems.push(format!("good object {kind} {key} is missing"));
        }
    }
    for (kind, key) in &expected.load {
        if !has(&snapshot, kind, key) {
            problems.push(format!("{kind} {key} did not load"));
        }
    }
    for (kind, key) in &expected.absent {
        if has(&snapshot, kind, key) {
            problems.push(format!("{kind} {key} should not be in the snapshot"));
        }
    }
    problems.extend(check_warnings(name, &expected.warn, &warnings));
    std::fs::remove_dir_all(&dir).unwrap();
    problems
}

fn check_warnings(name: &str, expected: &[String], warnings: &[LoadWarning]) -> Vec<String> {
    let texts: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    let mut problems = Vec::new();
    for (warning, text) in warnings.iter().zip(&texts) {
        if warning.file != name || !text.starts_with(name) {
            problems.push(format!("warning about another file: {text}"));
        }
        if is_about_an_object(&warning.problem) && warning.object.is_none() {
            problems.push(format!("warning does not name its object: {text}"));
        }
        if !expected.iter().any(|e| text.contains(e.as_str())) {
            problems.push(format!("unexpected warning: {text}"));
        }
    }
    for e in expected {
        if !texts.iter().any(|t| t.contains(e.as_str())) {
            problems.push(format!("no warning contains {e:?}; got {texts:?}"));
        }
    }
    problems
}

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-corpus-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn every_corpus_file_loads_next_to_good_objects_with_the_promised_warnings() {
    let mut names: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 50, "only {} corpus files", names.len());
    let scratch = scratch_dir("files");
    let mut failures = Vec::new();
    for name in &names {
        let bytes = std::fs::read(corpus_dir().join(name)).unwrap();
        for problem in check_file(name, &bytes, &scratch) {
            failures.push(format!("{name}: {problem}"));
        }
    }
    std::fs::remove_dir_all(&scratch).unwrap();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Too big to commit: generated here, checked the same way.
#[test]
fn generated_huge_inputs_are_refused_and_disturb_nothing() {
    let levels = 200_000;
    let cases = [
        (
            "deeply-nested-200k-flow.yaml",
            format!(
                "# breaks: 200,000 nested flow sequences.\n# expect: warn document 1: nested more than 64 levels deep (at line 4)\nkind: Service\nspec: {}{}\n",
                "[".repeat(levels),
                "]".repeat(levels)
            ),
        ),
        (
            "deeply-nested-200k-block.yaml",
            format!(
                "# breaks: 200,000 nested block sequences.\n# expect: warn document 1: nested more than 64 levels deep (at line 5)\nkind: Service\nspec:\n{}x\n",
                "- ".repeat(levels)
            ),
        ),
        (
            "many-nodes.yaml",
            format!(
                "# breaks: one document of 600,000 list items (the limit is 500,000 nodes).\n# expect: warn document 1: has more than 500000 YAML nodes\nkind: Service\nspec: [{}]\n",
                vec!["1"; 600_000].join(",")
            ),
        ),
        (
            "many-documents.yaml",
            format!(
                "# breaks: 20,000 empty documents, then one too deep.\n# expect: warn document 20000: nested more than 64 levels deep (at line 20003)\n{}{}\n",
                "---\n".repeat(20_000),
                "[".repeat(levels)
            ),
        ),
    ];
    let scratch = scratch_dir("generated");
    let mut failures = Vec::new();
    for (name, text) in &cases {
        for problem in check_file(name, text.as_bytes(), &scratch) {
            failures.push(format!("{name}: {problem}"));
        }
    }
    std::fs::remove_dir_all(&scratch).unwrap();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

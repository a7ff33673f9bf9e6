//! The manifest parser of the `dir:` source on arbitrary text: never panics, is
//! deterministic, every object it keeps has a valid name, and no warning can forge a log
//! line (no control characters in what gets logged).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_source_file::{Limits, parse_manifests, parse_manifests_with};

fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed = parse_manifests("fuzz.yaml", &text);
    let again = parse_manifests("fuzz.yaml", &text);
    let keys = |p: &sluice_source_file::ParsedFile| {
        let mut k: Vec<String> = p.services.iter().map(|(k, _)| format!("svc {k}")).collect();
        k.extend(p.endpoint_slices.iter().map(|(k, _)| format!("slice {k}")));
        k.extend(p.nodes.iter().map(|(k, _)| format!("node {k}")));
        k.extend(p.ingresses.iter().map(|(k, _)| format!("ing {k}")));
        k.extend(p.ingress_classes.iter().map(|(k, _)| format!("class {k}")));
        k.extend(p.secrets.iter().map(|(k, _)| format!("secret {k}")));
        k
    };
    assert_eq!(keys(&parsed), keys(&again), "deterministic objects");
    let warnings: Vec<String> = parsed.warnings.iter().map(ToString::to_string).collect();
    let warnings_again: Vec<String> = again.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings, warnings_again, "deterministic warnings");
    for w in &warnings {
        assert!(
            !w.chars().any(|c| c.is_control()),
            "a warning carries a control character: {w:?}"
        );
    }
    let all_keys = parsed
        .services
        .iter()
        .map(|(k, _)| k)
        .chain(parsed.endpoint_slices.iter().map(|(k, _)| k))
        .chain(parsed.nodes.iter().map(|(k, _)| k))
        .chain(parsed.ingresses.iter().map(|(k, _)| k))
        .chain(parsed.ingress_classes.iter().map(|(k, _)| k))
        .chain(parsed.secrets.iter().map(|(k, _)| k));
    for key in all_keys {
        assert!(
            valid_label(&key.name),
            "kept an object named {:?}",
            key.name
        );
        assert!(
            key.namespace.is_empty() || valid_label(&key.namespace),
            "kept an object in namespace {:?}",
            key.namespace
        );
    }
    // Tight limits must fail cleanly too.
    let tight = Limits {
        max_file_size: 1 << 20,
        max_depth: 4,
        max_nodes: 64,
    };
    let _ = parse_manifests_with("fuzz.yaml", &text, &tight);
});

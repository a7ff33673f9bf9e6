//! Golden cases: `golden/<case>/objects.yaml` → the plan's text (`routes.txt`) and the
//! warnings (`warnings.txt`), planned with `--ingress-class nginx` at 2030-01-01. Refresh
//! with `UPDATE_GOLDEN=1 cargo test -p sluice-routes --test golden` and review the diff.

mod common;

use std::path::Path;

use sluice_routes::RouteConfig;

fn check(case: &Path, file: &str, actual: &str) -> Option<String> {
    let path = case.join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return None;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    (expected != actual).then(|| {
        format!(
            "{} differs (- expected, + actual):\n{}",
            path.display(),
            sluice_plan::line_diff(&expected, actual)
        )
    })
}

#[test]
fn golden_cases() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let config = RouteConfig {
        classes: vec!["nginx".to_owned()],
        ..RouteConfig::default()
    };
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(cases.len() >= 4, "{cases:?}");
    let mut failures = Vec::new();
    for case in cases {
        let yaml = std::fs::read_to_string(case.join("objects.yaml")).unwrap();
        let (plan, warnings) = common::plan_with(&common::yaml_objects(&yaml), &config);
        let warnings: String = warnings.iter().map(|w| format!("{w}\n")).collect();
        failures.extend(check(&case, "routes.txt", &plan.to_string()));
        failures.extend(check(&case, "warnings.txt", &warnings));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

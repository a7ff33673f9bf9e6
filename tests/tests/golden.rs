//! Golden cases of `sluice plan`: the specification of the Plan by example.
//!
//! Each directory under `tests/golden/` is one case:
//! * `objects.yaml`: the objects as a user writes them (one multi-document YAML file);
//! * `args`: the extra `sluice plan` flags, separated by white space (no quoting);
//! * `plan.txt`, `nftables.txt`, `ebpf.txt`, `ingress.txt` (with `--ingress`) and
//!   `warnings.txt`: the expected sections of the output (`==> name <==` headers);
//! * `exit-code`: the expected exit status when it is not 0.
//!
//! The test runs the built binary (`cargo build -p sluice-agent` first; found as the other
//! suites find it) in the case directory as `sluice plan --source dir:. ARGS`, so warnings name
//! `objects.yaml` and nothing depends on where the checkout is. No root needed.
//! `UPDATE_GOLDEN=1` rewrites the expected files (`cargo xtask bless`); review the change with
//! `git diff` — each file is a specification, not a snapshot. See docs/plan.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// Sections `sluice plan` may print, in order; each is compared with `<name>.txt`.
const SECTIONS: [&str; 5] = ["plan", "nftables", "ebpf", "ingress", "warnings"];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden")
}

/// Every case directory (one holding `objects.yaml`), sorted.
fn cases() -> Result<Vec<PathBuf>> {
    let dir = golden_dir();
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.join("objects.yaml").is_file() {
            cases.push(path);
        }
    }
    cases.sort();
    Ok(cases)
}

/// What one run of `sluice plan` showed the user.
struct Output {
    sections: BTreeMap<String, String>,
    exit_code: i32,
    stderr: String,
}

/// Runs `sluice plan` on one case. Flags that the environment could set (`SLUICE_*`) and
/// backtraces are removed, so the result depends on the case alone.
fn run_plan(binary: &Path, case: &Path) -> Result<Output> {
    let args_file = case.join("args");
    let args = std::fs::read_to_string(&args_file)
        .with_context(|| format!("reading {}", args_file.display()))?;
    let mut cmd = Command::new(binary);
    cmd.current_dir(case)
        .args(["plan", "--source", "dir:."])
        .args(args.split_whitespace());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SLUICE_") {
            cmd.env_remove(name);
        }
    }
    cmd.env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    let out = cmd
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    let stdout = String::from_utf8(out.stdout).context("stdout is not UTF-8")?;
    let Some(exit_code) = out.status.code() else {
        bail!("sluice plan was killed ({})", out.status);
    };
    Ok(Output {
        sections: split_sections(&stdout)?,
        exit_code,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Splits the output at its `==> name <==` headers.
fn split_sections(stdout: &str) -> Result<BTreeMap<String, String>> {
    let mut sections = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in stdout.split_inclusive('\n') {
        let header = line
            .trim_end_matches('\n')
            .strip_prefix("==> ")
            .and_then(|rest| rest.strip_suffix(" <=="));
        match (header, current.as_mut()) {
            (Some(name), _) => {
                if let Some((done, body)) = current.take() {
                    sections.insert(done, body);
                }
                if sections.contains_key(name) {
                    bail!("section {name:?} printed twice");
                }
                current = Some((name.to_owned(), String::new()));
            }
            (None, Some((_, body))) => body.push_str(line),
            (None, None) => bail!("output does not start with a section header: {line:?}"),
        }
    }
    sections.extend(current);
    if let Some(unknown) = sections.keys().find(|k| !SECTIONS.contains(&k.as_str())) {
        bail!("unknown section {unknown:?}");
    }
    Ok(sections)
}

/// The expected files of a case and what the run produced for each (`None`: no such file /
/// nothing printed).
fn expectations(output: &Output) -> Vec<(String, Option<String>)> {
    let mut files: Vec<(String, Option<String>)> = SECTIONS
        .iter()
        .map(|name| (format!("{name}.txt"), output.sections.get(*name).cloned()))
        .collect();
    let code = (output.exit_code != 0).then(|| format!("{}\n", output.exit_code));
    files.push(("exit-code".to_owned(), code));
    files
}

/// Compares one case with its files, or rewrites them; returns the differences.
fn check_case(binary: &Path, case: &Path, update: bool) -> Result<Vec<String>> {
    let output = run_plan(binary, case)?;
    let mut problems = Vec::new();
    for (file, actual) in expectations(&output) {
        let path = case.join(&file);
        if update {
            match &actual {
                Some(text) => std::fs::write(&path, text),
                None if path.exists() => std::fs::remove_file(&path),
                None => Ok(()),
            }
            .with_context(|| format!("updating {}", path.display()))?;
            continue;
        }
        let expected = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).context(format!("reading {}", path.display())),
        };
        match (expected, actual) {
            (Some(e), Some(a)) if e == a => {}
            (None, None) => {}
            (Some(e), Some(a)) => problems.push(format!(
                "{file} (- expected, + actual):\n{}",
                sluice_plan::line_diff(&e, &a)
            )),
            (None, Some(a)) => problems.push(format!(
                "{file} is missing; the output has:\n{}",
                sluice_plan::line_diff("", &a)
            )),
            (Some(_), None) => {
                problems.push(format!("{file} exists but the output has no such part"))
            }
        }
    }
    problems.extend(stderr_problems(&output));
    Ok(problems)
}

/// A user who gets exit status 1 must be told on stderr what was skipped, each warning once.
fn stderr_problems(output: &Output) -> Vec<String> {
    let warnings = output
        .sections
        .get("warnings")
        .map(String::as_str)
        .unwrap_or("");
    let mut problems = Vec::new();
    for warning in warnings.lines() {
        if !output.stderr.contains(&format!("warning: {warning}\n")) {
            problems.push(format!(
                "stderr does not name warning {warning:?}:\n{}",
                output.stderr
            ));
        }
    }
    let expected_code = if warnings.is_empty() { 0 } else { 1 };
    if output.exit_code != expected_code {
        problems.push(format!(
            "exit status {} with {} warning line(s); stderr:\n{}",
            output.exit_code,
            warnings.lines().count(),
            output.stderr
        ));
    }
    problems
}

#[test]
fn sluice_plan_matches_the_golden_cases() -> Result<()> {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let binary = sluice_tests::bins::agent()?;
    let cases = cases()?;
    assert!(cases.len() >= 30, "golden cases missing: {cases:?}");
    let mut failed = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap_or_default().to_string_lossy();
        let problems = check_case(&binary, case, update).with_context(|| format!("case {name}"))?;
        if !problems.is_empty() {
            eprintln!("=== golden case {name} differs:\n{}", problems.join("\n"));
            failed.push(name.into_owned());
        }
    }
    if update {
        eprintln!(
            "rewrote {} golden cases; review them with `git diff`",
            cases.len()
        );
    }
    assert!(
        failed.is_empty(),
        "{} of {} golden cases differ (details above): {}\n\
         if the change is intended: `cargo xtask bless`, then review `git diff tests/golden`",
        failed.len(),
        cases.len(),
        failed.join(", ")
    );
    Ok(())
}

#[test]
fn sections_are_split_at_their_headers() -> Result<()> {
    let out = "==> plan <==\nnode a\n\n==> ingress <==\n==> warnings <==\nService x: bad\n";
    let sections = split_sections(out)?;
    assert_eq!(sections["plan"], "node a\n\n");
    assert_eq!(sections["ingress"], "");
    assert_eq!(sections["warnings"], "Service x: bad\n");
    assert!(split_sections("stray\n==> plan <==\n").is_err());
    assert!(split_sections("==> plan <==\n==> plan <==\n").is_err());
    assert!(split_sections("==> bogus <==\n").is_err());
    Ok(())
}

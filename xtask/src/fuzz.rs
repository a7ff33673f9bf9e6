//! `cargo xtask fuzz [--seconds N | --smoke] [--jobs J] [TARGET...]`: runs each cargo-fuzz
//! target of `fuzz/` for N seconds (default 60; `--smoke`: 10) with nightly Rust, J targets at
//! a time (default: one per core), then prints executions, corpus size and findings per
//! target. Without a nightly toolchain it says so and stops. The nftables target's corpus is
//! then replayed into a scratch network namespace with the real `nft` (root): every full
//! script and every delta must load.
//!
//! Only the targets that reach unsafe code are built with AddressSanitizer (see
//! [`sanitizer`]); the others run without one, several times faster.
//!
//! Findings (crash reproducers) stay in `fuzz/artifacts/TARGET/`; fix the bug and commit the
//! reproducer as a regression test of the crate at fault. The corpus (`fuzz/corpus/`) is
//! seeded from `tests/corpus/` and the golden cases, and kept between runs (not committed).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::{run, workspace_root};

/// Seconds per target of `--smoke`: enough to build, start and run each target a little.
const SMOKE_SECONDS: u64 = 10;

pub const TARGETS: [&str; 5] = [
    "ingress_routes",
    "manifests",
    "compute",
    "nft_render",
    "ebpf_maps",
];

/// How a target is built and run: with AddressSanitizer, or with none (libFuzzer's coverage
/// and Rust's own checks only, debug assertions included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sanitizer {
    Address,
    None,
}

/// AddressSanitizer only finds memory errors, which safe Rust cannot make; it finds them in
/// unsafe code, at two to four times fewer executions a second. Where the code a target
/// drives forbids unsafe (`#![forbid(unsafe_code)]` in sluice-compute, -plan, -model, -dp-nft,
/// -ingress and -routes) and its dependencies are safe or fuzzed upstream, it runs without.
fn sanitizer(target: &str) -> Sanitizer {
    match target {
        // sluice-dp-ebpf reads and writes map rows by unsafe byte casts (`abi::Pod`).
        "ebpf_maps" => Sanitizer::Address,
        // serde_yaml parses with unsafe-libyaml, a machine translation of C.
        "manifests" => Sanitizer::Address,
        _ => Sanitizer::None,
    }
}

impl Sanitizer {
    fn flag(self) -> &'static str {
        match self {
            Sanitizer::Address => "address",
            Sanitizer::None => "none",
        }
    }

    /// Each build in a target directory of its own: they differ in every crate's flags, so
    /// sharing one would rebuild everything whenever the other kind ran.
    fn target_dir(self, fuzz_dir: &Path) -> PathBuf {
        match self {
            Sanitizer::Address => fuzz_dir.join("target"),
            Sanitizer::None => fuzz_dir.join("target").join("no-sanitizer"),
        }
    }
}

/// What one target's run gave.
struct Outcome {
    target: String,
    executions: u64,
    corpus: usize,
    findings: Vec<PathBuf>,
}

pub fn run_command(args: &[String]) -> Result<()> {
    let mut seconds: u64 = 60;
    let mut jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut targets: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--smoke" => seconds = SMOKE_SECONDS,
            "--seconds" => {
                let value = it.next().context("--seconds needs a value")?;
                seconds = value
                    .parse()
                    .with_context(|| format!("--seconds {value}"))?;
            }
            "--jobs" => {
                let value = it.next().context("--jobs needs a value")?;
                jobs = value.parse().with_context(|| format!("--jobs {value}"))?;
            }
            t if TARGETS.contains(&t) => targets.push(t.to_owned()),
            other => bail!(
                "unknown fuzz argument {other:?}; targets: {}",
                TARGETS.join(", ")
            ),
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|t| t.to_string()).collect();
    }
    ensure_nightly()?;
    ensure_cargo_fuzz()?;
    let fuzz_dir = workspace_root().join("fuzz");
    seed_corpus(&fuzz_dir)?;
    for target in &targets {
        run(&mut fuzz_command(&fuzz_dir, "build", target))
            .with_context(|| format!("building the fuzz target {target}"))?;
    }
    let outcomes = fuzz_all(&fuzz_dir, &targets, seconds, jobs)?;
    let replay = if targets.iter().any(|t| t == "nft_render") {
        Some(replay_nft(&fuzz_dir)?)
    } else {
        None
    };
    report(&outcomes, seconds, replay.as_deref())
}

/// Formats and lints the fuzz targets with the stable toolchain, in the workspace's
/// `target/`, so that `cargo xtask test` notices when a change of the crates breaks them
/// (they are their own workspace, which `cargo test` and `cargo clippy` never build).
pub fn lint_targets() -> Result<()> {
    let root = workspace_root();
    let manifest = root.join("fuzz").join("Cargo.toml");
    run(crate::cargo()
        .args(["fmt", "--check", "--manifest-path"])
        .arg(&manifest))
    .context("formatting the fuzz targets (run `cargo fmt --manifest-path fuzz/Cargo.toml`)")?;
    run(crate::cargo()
        .args(["clippy", "--bins", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(root.join("target"))
        .args(["--", "-D", "warnings"])
        // Linting links nothing: a named archive keeps libfuzzer-sys from compiling
        // libFuzzer's C++ sources (and needing a C++ compiler) for nothing.
        .env(
            "CUSTOM_LIBFUZZER_PATH",
            root.join("target").join("libfuzzer-unused.a"),
        ))
    .context("linting the fuzz targets (they must build against the crates as they are)")
}

fn nightly_fuzz(fuzz_dir: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "fuzz"])
        .current_dir(fuzz_dir.parent().unwrap_or(fuzz_dir));
    // Set by the stable cargo running xtask; they would pin the toolchain or the compiler.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// cargo-fuzz needs a nightly toolchain (`-Z sanitizer`); without one, say how to get it.
fn ensure_nightly() -> Result<()> {
    let out = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context(
            "running `rustup toolchain list` (fuzzing needs rustup and a nightly toolchain)",
        )?;
    let list = String::from_utf8_lossy(&out.stdout);
    if !list.lines().any(|l| l.starts_with("nightly")) {
        bail!(
            "no nightly toolchain: the fuzz targets need nightly Rust (cargo-fuzz uses -Z \
             sanitizer). Install it with `rustup toolchain install nightly`, then run \
             `cargo xtask fuzz` again. Installed toolchains:\n{list}"
        );
    }
    Ok(())
}

/// cargo-fuzz from crates.io when it is missing (a one-time build of a few minutes).
fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new("cargo")
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["+nightly", "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        eprintln!("cargo-fuzz is missing: installing it from crates.io");
        run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))?;
    }
    Ok(())
}

/// Seeds the manifest target with the bad-input corpus and the golden cases' objects.
fn seed_corpus(fuzz_dir: &Path) -> Result<()> {
    let dir = fuzz_dir.join("corpus").join("manifests");
    if dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&dir)?;
    let root = workspace_root();
    let mut seeds: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(root.join("tests/corpus"))? {
        seeds.push(entry?.path());
    }
    for entry in std::fs::read_dir(root.join("tests/golden"))? {
        let objects = entry?.path().join("objects.yaml");
        if objects.is_file() {
            seeds.push(objects);
        }
    }
    for (i, seed) in seeds.iter().enumerate() {
        if seed.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(seed, dir.join(format!("seed-{i}.yaml")))?;
        }
    }
    Ok(())
}

/// `cargo fuzz SUBCOMMAND` for `target`, built as [`sanitizer`] says, with debug assertions.
fn fuzz_command(fuzz_dir: &Path, subcommand: &str, target: &str) -> Command {
    let sanitizer = sanitizer(target);
    let mut cmd = nightly_fuzz(fuzz_dir);
    cmd.args([
        subcommand,
        "--debug-assertions",
        "--sanitizer",
        sanitizer.flag(),
    ])
    .arg("--target-dir")
    .arg(sanitizer.target_dir(fuzz_dir))
    .arg(target);
    cmd
}

/// Runs `targets` for `seconds` each, `jobs` of them at a time; the outcomes in the order of
/// `targets`.
fn fuzz_all(
    fuzz_dir: &Path,
    targets: &[String],
    seconds: u64,
    jobs: usize,
) -> Result<Vec<Outcome>> {
    let next = Mutex::new(targets.iter().enumerate());
    let outcomes = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, targets.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let Some((i, target)) = next.lock().map(|mut n| n.next()).ok().flatten() else {
                        return;
                    };
                    let outcome = fuzz_one(fuzz_dir, target, seconds);
                    if let Ok(mut all) = outcomes.lock() {
                        all.push((i, outcome));
                    }
                }
            });
        }
    });
    let mut outcomes = outcomes
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a fuzzing thread panicked"))?;
    outcomes.sort_by_key(|(i, _)| *i);
    outcomes.into_iter().map(|(_, o)| o).collect()
}

fn fuzz_one(fuzz_dir: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let corpus = fuzz_dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    let artifacts = fuzz_dir.join("artifacts").join(target);
    let before = list(&artifacts);
    println!(
        "==> fuzzing {target} for {seconds} s (sanitizer: {})",
        sanitizer(target).flag()
    );
    let started = Instant::now();
    let out = fuzz_command(fuzz_dir, "run", target)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(["-print_final_stats=1", "-timeout=20", "-rss_limit_mb=4096"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running the fuzz target {target}"))?;
    let log = String::from_utf8_lossy(&out.stderr);
    let executions = stat(&log, "stat::number_of_executed_units:");
    let findings: Vec<PathBuf> = list(&artifacts)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    if !out.status.success() {
        // The panic message first (the backtrace after it is long), then the end of the log.
        let panic: Vec<&str> = log
            .lines()
            .skip_while(|l| !l.contains("panicked at"))
            .take(12)
            .collect();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        eprintln!(
            "{target} stopped after {:.0?} ({}):\n{}\n...\n{}",
            started.elapsed(),
            out.status,
            panic.join("\n"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(Outcome {
        target: target.to_owned(),
        executions,
        corpus: list(&corpus).len(),
        findings,
    })
}

fn stat(log: &str, key: &str) -> u64 {
    log.lines()
        .rev()
        .filter_map(|l| l.strip_prefix(key))
        .find_map(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn list(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Runs the nft target once over its corpus, writing each input's scripts, and loads a
/// sample of them into a scratch network namespace: the full script of the first plan, then
/// the delta to the second. Returns a summary line.
fn replay_nft(fuzz_dir: &Path) -> Result<String> {
    if !crate::system::is_root() {
        return Ok("nft load test skipped: needs root (network namespaces)".into());
    }
    let scripts = std::env::temp_dir().join(format!("sluice-fuzz-nft-{}", std::process::id()));
    std::fs::create_dir_all(&scripts)?;
    let binary = sanitizer("nft_render")
        .target_dir(fuzz_dir)
        .join("x86_64-unknown-linux-gnu/release/nft_render");
    let corpus = fuzz_dir.join("corpus/nft_render");
    let status = Command::new(&binary)
        .arg(&corpus)
        .arg("-runs=0")
        .env("SLUICE_FUZZ_NFT_OUT", &scripts)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {}", binary.display()))?;
    if !status.success() {
        bail!("replaying the nft corpus failed ({status})");
    }
    let netns = format!("sluice-fuzz-{}", std::process::id());
    run(Command::new("ip").args(["netns", "add", &netns]))?;
    let result = load_sample(&netns, &scripts);
    let _ = Command::new("ip").args(["netns", "del", &netns]).status();
    let _ = std::fs::remove_dir_all(&scripts);
    result
}

/// Script pairs (`ID-0-full.nft`, `ID-1-delta.nft`), at most 300 of them.
fn load_sample(netns: &str, scripts: &Path) -> Result<String> {
    let mut fulls: Vec<PathBuf> = list(scripts)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with("-0-full.nft"))
        .collect();
    fulls.sort();
    let step = fulls.len().div_ceil(300).max(1);
    let (mut loaded, mut failures) = (0, Vec::new());
    for full in fulls.iter().step_by(step) {
        let delta = PathBuf::from(
            full.to_string_lossy()
                .replace("-0-full.nft", "-1-delta.nft"),
        );
        for script in [full, &delta] {
            let out = Command::new("ip")
                .args(["netns", "exec", netns, "nft", "-f"])
                .arg(script)
                .output()?;
            if !out.status.success() {
                failures.push(format!(
                    "{}: {}",
                    script.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                break;
            }
        }
        loaded += 1;
        Command::new("ip")
            .args(["netns", "exec", netns, "nft", "flush", "ruleset"])
            .status()?;
    }
    if !failures.is_empty() {
        bail!(
            "{} of {loaded} fuzzed nft scripts did not load:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(format!(
        "nft load test: a sample of {loaded} of the {} corpus inputs, each full script and then its delta, all loaded into a scratch namespace",
        fulls.len()
    ))
}

fn report(outcomes: &[Outcome], seconds: u64, replay: Option<&str>) -> Result<()> {
    println!(
        "\n{:<16} {:>8} {:>14} {:>10} {:>8}",
        "target", "seconds", "executions", "corpus", "findings"
    );
    for o in outcomes {
        println!(
            "{:<16} {:>8} {:>14} {:>10} {:>8}",
            o.target,
            seconds,
            o.executions,
            o.corpus,
            o.findings.len()
        );
    }
    let total: u64 = outcomes.iter().map(|o| o.executions).sum();
    println!(
        "{:<16} {:>8} {:>14}",
        "total",
        seconds * outcomes.len() as u64,
        total
    );
    if let Some(line) = replay {
        println!("{line}");
    }
    let findings: Vec<&PathBuf> = outcomes.iter().flat_map(|o| &o.findings).collect();
    if !findings.is_empty() {
        for f in &findings {
            println!("finding: {}", f.display());
        }
        bail!(
            "{} finding(s): reproduce with `cargo +nightly fuzz run TARGET FILE` in fuzz/",
            findings.len()
        );
    }
    Ok(())
}

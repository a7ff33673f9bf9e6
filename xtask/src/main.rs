//! `cargo xtask <command>`: the project's two user-facing commands and their helpers.
//!
//! * `cargo xtask demo`  — build, start a namespaced two-node "cluster" on this machine, run the
//!   agent on each node, show traffic through ClusterIP, NodePort, eTP=Local and the Ingress.
//! * `cargo xtask test`  — every test (unit, golden, kernel and namespaced end-to-end), plus
//!   fmt and clippy (of the fuzz targets too, which must build against the crates).
//! * `cargo xtask bench` — side-by-side benchmarks (release build); `cargo xtask bench scale`:
//!   how each stage's cost grows from 1k to 100k Services.
//! * `cargo xtask fuzz [--seconds N | --smoke] [--jobs J]` — run every fuzz target of `fuzz/`
//!   for N seconds, J at a time (nightly; `--smoke`: 10 s each; J: one per core). Not part of
//!   `cargo xtask test` (which only lints the targets).
//! * `cargo xtask bless` — rewrite the golden files (`UPDATE_GOLDEN=1`) and show what changed.
//! * `cargo xtask deps`  — install (as root on Debian/Ubuntu) or list the system packages.
//! * `cargo xtask image` — the agent's container image, from Debian packages (root).

mod bench;
mod bless;
mod demo;
mod fuzz;
mod image;
mod scale;
mod system;

use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = args
        .split_first()
        .map(|(c, r)| (c.as_str(), r))
        .unwrap_or(("help", &[]));
    match command {
        "test" => test(rest),
        "demo" => demo::run(rest),
        "bench" if rest.first().is_some_and(|a| a == "scale") => scale::run(&rest[1..]),
        "bench" => bench::run(rest),
        "bless" => bless::run(),
        "fuzz" => fuzz::run_command(rest),
        "deps" if rest.iter().any(|a| a == "--bench") => {
            system::ensure_packages()?;
            system::ensure(system::BENCH_NEEDS)
        }
        "deps" => system::ensure_packages(),
        "image" => image::run_image(rest),
        _ => {
            eprint!("{USAGE}");
            if command == "help" {
                Ok(())
            } else {
                bail!("unknown command {command:?}")
            }
        }
    }
}

/// `cargo xtask help` (a raw string: a `\` line continuation would eat the indentation).
const USAGE: &str = r#"usage: cargo xtask <command>

demo   build and show sluice forwarding in a namespaced two-node cluster (root)
test   run every test, then fmt and clippy, fuzz targets included (root for the
       kernel tests)
       --no-lint: skip fmt and clippy; anything after `--` goes to cargo test
bench  side-by-side benchmarks in release mode (root)
bench scale [--quick] [--mode M] [--sizes 1000,10000] [--changes N] [--e2e N]
       each stage's cost from 1k to 100k Services (root, release)
bless  rewrite the golden files from the current code, show what changed
fuzz   run each fuzz target (nightly, cargo-fuzz) for --seconds N (default 60;
       --smoke: 10), --jobs J at a time (default: one per core), print
       executions and findings; TARGET names pick some
deps   install the system packages sluice needs (root, Debian/Ubuntu)
       --bench: also what the benchmarks run (wrk, h2load, nginx, ...)
image  build the agent's container image from Debian packages and run it
       (root; --debug: the dev build; --refresh-base: rebuild the base)
"#;

/// Runs a command, failing with its name when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Builds the agent and the echo pod binary used by the namespaced cluster.
pub fn build_binaries(release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "sluice-agent", "-p", "sluice-echo"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)
}

fn test(args: &[String]) -> Result<()> {
    let started = Instant::now();
    let lint = !args.iter().any(|a| a == "--no-lint");
    let passthrough: Vec<&String> = args.iter().skip_while(|a| *a != "--").skip(1).collect();
    system::ensure_packages()?;
    if !system::is_root() {
        eprintln!(
            "note: not root — kernel and namespaced end-to-end tests will be skipped (each says so)"
        );
    }
    if lint {
        run(cargo().args(["fmt", "--all", "--", "--check"]))
            .context("formatting (run `cargo fmt --all`)")?;
    }
    build_binaries(false)?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--no-fail-fast"]);
    if !passthrough.is_empty() {
        cmd.arg("--").args(passthrough);
    }
    run(&mut cmd)?;
    if lint {
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        fuzz::lint_targets()?;
    }
    println!("cargo xtask test: all green in {:.0?}", started.elapsed());
    Ok(())
}

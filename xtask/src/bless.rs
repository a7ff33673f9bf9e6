//! `cargo xtask bless`: rewrites every golden file from what the code does now, then shows
//! what changed so the change can be reviewed (a golden file is a specification: read the
//! diff, do not just commit it).

use std::process::Command;

use anyhow::{Context as _, Result};

use crate::{build_binaries, cargo, workspace_root};

/// The test targets that honour `UPDATE_GOLDEN=1`: `golden` of sluice-tests and
/// sluice-compute, `render` of sluice-dp-nft. Run as one workspace invocation, so features are
/// unified as in `cargo xtask test` and its build is reused.
const GOLDEN_TESTS: [&str; 2] = ["golden", "render"];
const GOLDEN_DIRS: [&str; 3] = [
    "tests/golden",
    "crates/compute/tests/golden",
    "crates/dp-nft/tests/golden",
];

pub fn run() -> Result<()> {
    // `sluice plan` is run from the built binary: build it first, as `cargo xtask test` does.
    build_binaries(false)?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace"]);
    for test in GOLDEN_TESTS {
        cmd.args(["--test", test]);
    }
    crate::run(cmd.env("UPDATE_GOLDEN", "1")).context("rewriting the golden files")?;
    let changed = git(&["diff", "--stat", "--"])?;
    let added = git(&["ls-files", "--others", "--exclude-standard", "--"])?;
    if changed.trim().is_empty() && added.trim().is_empty() {
        println!("cargo xtask bless: golden files unchanged");
        return Ok(());
    }
    print!("{changed}");
    for file in added.lines() {
        println!(" {file} (new)");
    }
    println!(
        "cargo xtask bless: review with `git diff -- {}` before committing",
        GOLDEN_DIRS.join(" ")
    );
    Ok(())
}

/// Runs `git ARGS GOLDEN_DIRS...` in the workspace and returns its output.
fn git(args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args(args)
        .args(GOLDEN_DIRS)
        .current_dir(workspace_root())
        .output()
        .context("running git (needed to show what bless changed)")?;
    if !out.status.success() {
        anyhow::bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).context("git output is not UTF-8")
}

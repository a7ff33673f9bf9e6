//! Locating the binaries under test: `$SLUICE_BIN_DIR`, else `<workspace>/target/debug`
//! (or `$CARGO_TARGET_DIR/debug`). Build them first:
//! `cargo build -p sluice-agent -p sluice-echo`.

use std::path::PathBuf;

use anyhow::{Result, bail};

/// Directory the binaries are looked up in.
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SLUICE_BIN_DIR") {
        return PathBuf::from(d);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    target.join("debug")
}

fn find(name: &str, package: &str) -> Result<PathBuf> {
    let path = dir().join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build it first (`cargo build -p {package}`) or set SLUICE_BIN_DIR",
            path.display()
        );
    }
    Ok(path)
}

/// The `sluice-echo` binary.
pub fn echo() -> Result<PathBuf> {
    find("sluice-echo", "sluice-echo")
}

/// The `sluice` agent binary.
pub fn agent() -> Result<PathBuf> {
    find("sluice", "sluice-agent")
}

/// Whether the agent binary has been built.
pub fn agent_available() -> bool {
    agent().is_ok()
}

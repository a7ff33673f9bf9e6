//! `cargo xtask bench`: side-by-side measurements in one run (absolute numbers vary between
//! machines; the comparison is what matters). Prints a table and writes target/bench.json.

use anyhow::Result;

pub fn run(_args: &[String]) -> Result<()> {
    anyhow::bail!("benchmarks are not written yet")
}

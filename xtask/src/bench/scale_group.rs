//! The control-plane group, `scale`: the hook to `cargo xtask bench scale` (its own module,
//! `xtask/src/scale.rs`, maintained separately). The interface is the command and its output
//! file, nothing else:
//!
//! * this command runs `xtask bench scale [--quick]` as a child process (same binary, output
//!   passed through);
//! * exit status 0 → it read `target/bench/scale.json`: `{"runs": [{"mode": "nftables",
//!   "services": 1000, <figures>...}]}` where every numeric field (nested objects flattened
//!   as `a.b`) is a cost that grows with `services`;
//! * exit status [`NOT_BUILT`] → this xtask has no scale module (the group is reported as
//!   skipped).
//!
//! Each figure becomes a row "size ÷ smallest size" per mode, and the milliseconds figures a
//! log-log chart.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::chart::Series;
use super::report::{Figure, Row};

const GROUP: &str = "scale";

/// Exit status of `xtask bench scale` when no scale module is built into this xtask.
pub const NOT_BUILT: i32 = 3;

/// What happened when the group was asked for.
pub enum Outcome {
    Ran(Vec<Row>, Vec<Series>),
    NotBuilt,
}

/// Runs `xtask bench scale` and turns its JSON into rows and chart series.
pub fn run(quick: bool, out_dir: &Path) -> Result<Outcome> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["bench", "scale"]);
    if quick {
        cmd.arg("--quick");
    }
    let status = cmd.status().context("running xtask bench scale")?;
    if status.code() == Some(NOT_BUILT) {
        return Ok(Outcome::NotBuilt);
    }
    if !status.success() {
        bail!("xtask bench scale failed ({status})");
    }
    let path = out_dir.join("scale.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let report: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let figures = figures(&report);
    Ok(Outcome::Ran(rows(&figures), series(&figures)))
}

/// (figure name, mode) → services → value.
type Figures = BTreeMap<(String, String), BTreeMap<u64, f64>>;

fn figures(report: &Value) -> Figures {
    let mut out = Figures::new();
    for run in report["runs"].as_array().into_iter().flatten() {
        let (Some(mode), Some(services)) = (run["mode"].as_str(), run["services"].as_u64()) else {
            continue;
        };
        let mut leaves = Vec::new();
        flatten("", run, &mut leaves);
        for (name, value) in leaves {
            if name == "services" || name == "endpoints" {
                continue;
            }
            out.entry((name, mode.to_owned()))
                .or_default()
                .insert(services, value);
        }
    }
    out
}

fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, f64)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, v, out);
            }
        }
        Value::Number(n) => {
            if let Some(v) = n.as_f64() {
                out.push((prefix.to_owned(), v));
            }
        }
        _ => {}
    }
}

fn unit(name: &str) -> &'static str {
    if name.contains("_ms") {
        "ms"
    } else if name.contains("mib") {
        "MiB"
    } else if name.contains("second") || name.contains("cpu") {
        "s"
    } else {
        ""
    }
}

/// Per figure and mode, every size ÷ the smallest.
fn rows(figures: &Figures) -> Vec<Row> {
    let mut rows = Vec::new();
    for ((name, mode), by_size) in figures {
        let Some((&smallest, &base)) = by_size.iter().next() else {
            continue;
        };
        for (&size, &value) in by_size.iter().skip(1) {
            let mut row = Row::new(
                GROUP,
                format!("{name} ({mode}), {size} ÷ {smallest} Services"),
                unit(name),
            )
            .lower_is_better()
            .ours(Figure::new(format!("{size} Services"), Some(value)))
            .reference(Figure::new(format!("{smallest} Services"), Some(base)));
            if name == "first_programming_ms" || name.starts_with("change_in_agent_ms.p") {
                row = row.headline();
            }
            rows.push(row);
        }
    }
    rows
}

/// The millisecond figures (not their per-stage breakdowns) against the number of Services.
fn series(figures: &Figures) -> Vec<Series> {
    figures
        .iter()
        .filter(|((name, _), _)| unit(name) == "ms" && !name.contains("stages"))
        .map(|((name, mode), by_size)| Series {
            name: format!("{name} ({mode})"),
            points: by_size.iter().map(|(&s, &v)| (s as f64, v)).collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scale_json_becomes_growth_rows_and_series() {
        let report = json!({"runs": [
            {"mode": "nftables", "services": 1000, "endpoints": 10000, "first_programming_ms": 100.0,
             "change_in_agent_ms": {"p50": 2.0, "p99": 5.0}, "rss_mib": 40.0},
            {"mode": "nftables", "services": 10000, "endpoints": 100000, "first_programming_ms": 900.0,
             "change_in_agent_ms": {"p50": 3.0, "p99": 8.0}, "rss_mib": 90.0},
            {"mode": "ebpf", "services": 1000, "error": "agent did not start"},
        ]});
        let figures = figures(&report);
        let rows = rows(&figures);
        let first = rows
            .iter()
            .find(|r| r.name == "first_programming_ms (nftables), 10000 ÷ 1000 Services")
            .expect("row");
        assert_eq!(first.main_ratio(&first.ours[0]), Some(9.0));
        assert_eq!(first.unit, "ms");
        assert!(first.headline);
        assert!(rows.iter().any(|r| r.name.starts_with("change_in_agent_ms.p99 (nftables)")));
        assert!(rows.iter().all(|r| !r.name.contains("ebpf")), "the failed run has no figures");
        let series = series(&figures);
        assert_eq!(series.len(), 3, "first programming, change p50, p99: not RSS");
        assert_eq!(series[0].points, vec![(1000.0, 2.0), (10000.0, 3.0)]);
    }
}

//! The control-plane group: the scale runs of [`crate::scale`] (`cargo xtask bench scale`,
//! the same code) — both dataplanes at 1k and 10k Services (100k without `--quick`), 10
//! endpoints each, through the `dir:` source — turned into rows "N Services ÷ the smallest
//! size" per figure and dataplane. Its chart is the scale module's log-log SVG.

use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use super::report::{Figure, Row};
use crate::scale;

const GROUP: &str = "control plane";

/// (what, path into a run, unit, in the README table). Milliseconds, MiB and seconds are
/// all costs: lower is better.
const FIGURES: &[(&str, &[&str], &str, bool)] = &[
    ("first programming", &["first_programming_ms"], "ms", true),
    (
        "one change in the agent, p50",
        &["change_in_agent_ms", "p50"],
        "ms",
        true,
    ),
    (
        "one change in the agent, p99",
        &["change_in_agent_ms", "p99"],
        "ms",
        true,
    ),
    (
        "one change end to end, p50",
        &["change_end_to_end_ms", "p50"],
        "ms",
        false,
    ),
    (
        "one change end to end, p99",
        &["change_end_to_end_ms", "p99"],
        "ms",
        false,
    ),
    (
        "RSS after first programming",
        &["rss_after_first_programming_mib"],
        "MiB",
        true,
    ),
    (
        "RSS after the changes",
        &["rss_after_changes_mib"],
        "MiB",
        false,
    ),
    (
        "CPU, first programming",
        &["cpu_seconds_first_programming"],
        "s",
        true,
    ),
];

/// Runs the scale benchmark (its table printed as it goes), writes `scale.json` and
/// `scale.svg` into `out_dir`, and returns the rows and the chart.
pub fn run(quick: bool, out_dir: &Path) -> Result<(Vec<Row>, String)> {
    let options = scale::Options::for_bench(quick);
    let runs = scale::measure_all(&options);
    scale::print_table(&runs);
    scale::write_outputs(&runs, &options, out_dir)?;
    let failed: Vec<&str> = runs.iter().filter_map(|r| r["error"].as_str()).collect();
    anyhow::ensure!(
        failed.len() < runs.len(),
        "every scale run failed: {}",
        failed.join("; ")
    );
    Ok((rows(&runs), scale::chart::svg(&runs)))
}

/// A run's figure at `path`, when it was measured.
fn value(run: &Value, path: &[&str]) -> Option<f64> {
    path.iter()
        .fold(run, |v, k| &v[*k])
        .as_f64()
        .filter(|v| v.is_finite())
}

/// Per figure and dataplane: every larger size next to the smallest (the ratio says how the
/// cost grows; 10× the Services at 10× the cost is linear).
fn rows(runs: &[Value]) -> Vec<Row> {
    let mut sizes: Vec<u64> = runs.iter().filter_map(|r| r["services"].as_u64()).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let Some((&smallest, larger)) = sizes.split_first() else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for mode in ["nftables", "ebpf"] {
        let run_at = |size: u64| {
            runs.iter()
                .find(|r| r["mode"] == mode && r["services"].as_u64() == Some(size))
        };
        if runs.iter().all(|r| r["mode"] != mode) {
            continue;
        }
        for &(what, path, unit, headline) in FIGURES {
            let figure = |size: u64| {
                let system = format!("{size} Services");
                match run_at(size) {
                    Some(run) => match (value(run, path), run["error"].as_str()) {
                        (Some(v), _) => Figure::new(system, Some(v)),
                        (None, Some(error)) => Figure::failed(system, error),
                        (None, None) => Figure::failed(system, "not measured"),
                    },
                    None => Figure::failed(system, "not run"),
                }
            };
            let mut row = Row::new(GROUP, format!("{mode}: {what}"), unit)
                .lower_is_better()
                .reference(figure(smallest));
            for &size in larger {
                row = row.ours(figure(size));
            }
            rows.push(if headline { row.headline() } else { row });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_larger_size_is_compared_with_the_smallest() {
        let runs = [
            json!({"mode": "nftables", "services": 1000, "first_programming_ms": 100.0,
                   "change_in_agent_ms": {"p50": 2.0, "p99": 5.0}}),
            json!({"mode": "nftables", "services": 10000, "first_programming_ms": 900.0,
                   "change_in_agent_ms": {"p50": 3.0, "p99": 8.0}}),
            json!({"mode": "nftables", "services": 100000, "error": "agent did not start"}),
            json!({"mode": "ebpf", "services": 1000, "first_programming_ms": 50.0}),
        ];
        let rows = rows(&runs);
        let first = rows
            .iter()
            .find(|r| r.name == "nftables: first programming")
            .expect("row");
        assert_eq!(first.unit, "ms");
        assert!(first.headline);
        assert_eq!(first.references[0].system, "1000 Services");
        assert_eq!(first.main_ratio(&first.ours[0]), Some(9.0));
        assert_eq!(first.ours[1].system, "100000 Services");
        assert_eq!(first.ours[1].note.as_deref(), Some("agent did not start"));
        let ebpf = rows
            .iter()
            .find(|r| r.name == "ebpf: first programming")
            .expect("ebpf row");
        assert_eq!(ebpf.ours[0].note.as_deref(), Some("not run"));
        let rss = rows
            .iter()
            .find(|r| r.name == "nftables: RSS after first programming")
            .expect("rss row");
        assert_eq!(rss.references[0].note.as_deref(), Some("not measured"));
    }
}

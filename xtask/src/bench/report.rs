//! What a benchmark run produces: rows of figures (ours next to the references), the terminal
//! table, `results.json` and the Markdown table for the README.

use std::fmt::Write as _;

use serde_json::{Value, json};

/// Whether a larger value is better (rates) or worse (latencies, failures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// One system's figure in a row; `value` is `None` when the measurement could not be taken
/// (`note` says why).
#[derive(Debug, Clone)]
pub struct Figure {
    pub system: String,
    pub value: Option<f64>,
    pub note: Option<String>,
}

impl Figure {
    pub fn new(system: impl Into<String>, value: Option<f64>) -> Figure {
        Figure {
            system: system.into(),
            value,
            note: None,
        }
    }

    pub fn failed(system: impl Into<String>, why: impl Into<String>) -> Figure {
        Figure {
            system: system.into(),
            value: None,
            note: Some(why.into()),
        }
    }
}

/// One measurement compared across systems: each of `ours` is divided by the first of
/// `references` (the ratio column); further references are shown and kept in the JSON.
#[derive(Debug, Clone)]
pub struct Row {
    pub group: &'static str,
    pub name: String,
    pub unit: &'static str,
    pub better: Better,
    pub ours: Vec<Figure>,
    pub references: Vec<Figure>,
    /// Shown in the README's figures table.
    pub headline: bool,
}

impl Row {
    pub fn new(group: &'static str, name: impl Into<String>, unit: &'static str) -> Row {
        Row {
            group,
            name: name.into(),
            unit,
            better: Better::Higher,
            ours: Vec::new(),
            references: Vec::new(),
            headline: false,
        }
    }

    pub fn lower_is_better(mut self) -> Row {
        self.better = Better::Lower;
        self
    }

    pub fn headline(mut self) -> Row {
        self.headline = true;
        self
    }

    pub fn ours(mut self, figure: Figure) -> Row {
        self.ours.push(figure);
        self
    }

    pub fn reference(mut self, figure: Figure) -> Row {
        self.references.push(figure);
        self
    }

    /// `ours ÷ reference`, when both were measured and the reference is not zero.
    pub fn ratio(ours: &Figure, reference: &Figure) -> Option<f64> {
        match (ours.value, reference.value) {
            (Some(o), Some(r)) if r != 0.0 => Some(o / r),
            _ => None,
        }
    }

    /// The ratio of `ours` to the first reference.
    pub fn main_ratio(&self, ours: &Figure) -> Option<f64> {
        self.references.first().and_then(|r| Row::ratio(ours, r))
    }

    fn to_json(&self) -> Value {
        let figure = |f: &Figure| json!({"system": f.system, "value": f.value, "note": f.note});
        let ratios: Vec<Value> = self
            .ours
            .iter()
            .flat_map(|o| {
                self.references.iter().map(move |r| {
                    json!({"ours": o.system, "reference": r.system, "ratio": Row::ratio(o, r)})
                })
            })
            .collect();
        json!({
            "group": self.group,
            "name": self.name,
            "unit": self.unit,
            "better": match self.better { Better::Higher => "higher", Better::Lower => "lower" },
            "ours": self.ours.iter().map(figure).collect::<Vec<_>>(),
            "references": self.references.iter().map(figure).collect::<Vec<_>>(),
            "ratios": ratios,
        })
    }
}

/// A figure for a table cell: thousands separators for large numbers, 3 significant digits
/// for small ones.
pub fn number(value: f64) -> String {
    if !value.is_finite() {
        return "—".into();
    }
    if value.abs().round() >= 1000.0 {
        let digits = format!("{:.0}", value.abs());
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if value < 0.0 {
            out.insert(0, '-');
        }
        out
    } else if value.abs() >= 100.0 || value == 0.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn cell(f: &Figure) -> String {
    match f.value {
        Some(v) => format!("{} {}", f.system, number(v)),
        None => format!("{} n/a", f.system),
    }
}

fn ratio_cell(r: Option<f64>) -> String {
    r.map_or_else(|| "—".into(), |r| format!("{r:.2}×"))
}

/// The terminal table: per group, one line per figure of ours with its ratio to the first
/// reference, the references on the row's first line.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let mut group = "";
    for row in rows {
        if row.group != group {
            group = row.group;
            let _ = writeln!(
                out,
                "\n== {group}\n{:<58} {:<30} {:<34} {:>8}",
                "measurement", "ours", "reference", "ratio"
            );
        }
        let references: Vec<String> = row.references.iter().map(cell).collect();
        let name = format!("{} [{}]", row.name, row.unit);
        let mut first = true;
        for ours in &row.ours {
            let _ = writeln!(
                out,
                "{:<58} {:<30} {:<34} {:>8}",
                if first { name.as_str() } else { "" },
                cell(ours),
                if first {
                    references.join(", ")
                } else {
                    String::new()
                },
                ratio_cell(row.main_ratio(ours)),
            );
            first = false;
        }
        for note in row.ours.iter().chain(&row.references).filter_map(|f| {
            f.note
                .as_ref()
                .map(|n| format!("   {}: {}", f.system, first_line(n)))
        }) {
            let _ = writeln!(out, "{note}");
        }
    }
    out
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// The README table: headline rows only, one line per row with every figure of ours and
/// its ratio in one cell.
pub fn markdown(rows: &[Row], machine: &Machine) -> String {
    let mut out = format!(
        "{} run of `cargo xtask bench{}` on {} ({} CPUs, kernel {}, commit {}), load average \
         {} at the start and {} at the end; {}. Ratio = ours ÷ the first reference.\n\n\
         | group | measurement | ours (ratio) | reference |\n|---|---|---|---|\n",
        machine.date,
        if machine.quick { " --quick" } else { "" },
        machine.cpu_model,
        machine.cpus,
        machine.kernel,
        machine.commit,
        machine.load_at_start,
        machine.load_at_end,
        machine.note,
    );
    for row in rows.iter().filter(|r| r.headline) {
        let ours: Vec<String> = row
            .ours
            .iter()
            .map(|o| format!("{} ({})", cell(o), ratio_cell(row.main_ratio(o))))
            .collect();
        let references: Vec<String> = row.references.iter().map(cell).collect();
        let _ = writeln!(
            out,
            "| {} | {} ({}) | {} | {} |",
            row.group,
            row.name,
            row.unit,
            ours.join("<br>"),
            references.join("<br>"),
        );
    }
    out
}

/// Where and how the run happened (printed with every table: figures are only comparable
/// within a run).
#[derive(Debug, Clone)]
pub struct Machine {
    pub date: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub kernel: String,
    pub load_at_start: String,
    /// Set when the run is over.
    pub load_at_end: String,
    pub quick: bool,
    pub commit: String,
    pub note: String,
}

impl Machine {
    pub fn describe(quick: bool) -> Machine {
        let run = |program: &str, args: &[&str]| {
            std::process::Command::new(program)
                .args(args)
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        };
        let lscpu = run("lscpu", &[]);
        let cpu_model = lscpu
            .lines()
            .find_map(|l| l.strip_prefix("Model name:"))
            .map_or_else(|| "unknown CPU".into(), |m| m.trim().to_owned());
        Machine {
            date: run("date", &["-u", "+%Y-%m-%d"]),
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: run("uname", &["-r"]),
            load_at_start: load_average(),
            load_at_end: String::new(),
            quick,
            commit: run("git", &["rev-parse", "--short", "HEAD"]),
            note: "client, dataplane, proxies and backends share the machine's cores".into(),
        }
    }

    fn to_json(&self) -> Value {
        json!({"date": self.date, "cpu_model": self.cpu_model, "cpus": self.cpus,
               "kernel": self.kernel, "load_average_at_start": self.load_at_start,
               "load_average_at_end": self.load_at_end, "quick": self.quick,
               "commit": self.commit, "note": self.note})
    }
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` has them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `results.json`: the machine, each group's state (ran, skipped with a reason, failed) and
/// every row.
pub fn json(machine: &Machine, groups: &[(String, String)], rows: &[Row]) -> Value {
    json!({
        "machine": machine.to_json(),
        "groups": groups.iter().map(|(g, s)| json!({"group": g, "status": s})).collect::<Vec<_>>(),
        "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_like_a_table() {
        assert_eq!(number(1_234_567.4), "1,234,567");
        assert_eq!(number(999.6), "1,000");
        assert_eq!(number(123.4), "123");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(number(0.1234), "0.12");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(f64::NAN), "—");
    }

    #[test]
    fn the_ratio_is_ours_over_the_first_reference() {
        let row = Row::new("g", "rate", "conn/s")
            .ours(Figure::new("eBPF", Some(900.0)))
            .ours(Figure::failed("XDP", "attach failed"))
            .reference(Figure::new("pod IP", Some(1000.0)))
            .reference(Figure::new("other", Some(450.0)));
        assert_eq!(row.main_ratio(&row.ours[0]), Some(0.9));
        assert_eq!(row.main_ratio(&row.ours[1]), None);
        let json = row.to_json();
        let ratios = json["ratios"].as_array().expect("ratios");
        assert_eq!(ratios.len(), 4, "{json}");
        assert_eq!(ratios[1]["ratio"], 2.0);
        let table = table(&[row]);
        assert!(table.contains("eBPF 900"), "{table}");
        assert!(table.contains("0.90×"), "{table}");
        assert!(table.contains("XDP: attach failed"), "{table}");
    }

    #[test]
    fn markdown_lists_headline_rows_under_the_machine_line() {
        let machine = Machine {
            date: "2026-12-07".into(),
            cpu_model: "Test CPU".into(),
            cpus: 2,
            kernel: "6.18.0".into(),
            load_at_start: "1.00 2.00 3.00".into(),
            load_at_end: "4.00 2.00 3.00".into(),
            quick: true,
            commit: "abc1234".into(),
            note: "shared cores".into(),
        };
        let rows = [
            Row::new("ingress", "rate", "req/s")
                .headline()
                .ours(Figure::new("sluice", Some(150.0)))
                .reference(Figure::new("nginx", Some(100.0))),
            Row::new("ingress", "hidden", "ms").ours(Figure::new("sluice", Some(1.0))),
        ];
        let md = markdown(&rows, &machine);
        assert!(
            md.contains("`cargo xtask bench --quick` on Test CPU (2 CPUs, kernel 6.18.0"),
            "{md}"
        );
        assert!(
            md.contains("| ingress | rate (req/s) | sluice 150 (1.50×) | nginx 100 |"),
            "{md}"
        );
        assert!(!md.contains("hidden"), "{md}");
    }

    #[test]
    fn a_zero_reference_gives_no_ratio() {
        let ours = Figure::new("sluice", Some(0.0));
        assert_eq!(Row::ratio(&ours, &Figure::new("nginx", Some(0.0))), None);
        assert_eq!(
            Row::ratio(&ours, &Figure::new("nginx", Some(5.0))),
            Some(0.0)
        );
    }
}

//! `cargo xtask bench [--quick] [--only GROUP,...] [--readme]`: every headline figure side by
//! side in one run, release builds only. Groups, in this order:
//!
//! * `datapath` — one echo pod through ClusterIP, NodePort and eTP=Local for each dataplane
//!   (eBPF socket-LB / tc / XDP generic, nftables) next to its pod IP with no proxy, at 10 and
//!   at 10,000 installed Services ([`datapath`]).
//! * `control-plane` (alias `scale`) — the scale runs of `cargo xtask bench scale`
//!   ([`control_plane`], reusing [`crate::scale`]).
//! * `ingress` — sluice's Ingress proxy vs nginx (as ingress-nginx configures it) and HAProxy
//!   in front of the same pods ([`ingress`]).
//!
//! Prints a table (ours, the reference, ours ÷ reference), writes `target/bench/results.json`,
//! an SVG and a PNG chart per group and `target/bench/figures.md`; `--readme` also replaces
//! the figures table of README.md and docs/benchmarks.md with it. A measurement that fails is
//! reported as such: benchmarks never fail on a timing. See docs/benchmarks.md.

mod chart;
mod control_plane;
mod cpu;
mod datapath;
mod ingress;
mod load;
mod probe;
mod report;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::system;
use report::{Machine, Row};

const GROUPS: [&str; 3] = ["datapath", "control-plane", "ingress"];
const README_START: &str = "<!-- bench:figures:start (cargo xtask bench --readme) -->";
const README_END: &str = "<!-- bench:figures:end -->";

struct Options {
    quick: bool,
    groups: Vec<&'static str>,
    readme: bool,
}

fn options(args: &[String]) -> Result<Options> {
    let mut options = Options {
        quick: false,
        groups: GROUPS.to_vec(),
        readme: false,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--readme" => options.readme = true,
            "--only" => {
                let list = args.next().context("--only needs GROUP[,GROUP]")?;
                options.groups = list
                    .split(',')
                    .map(|g| {
                        let g = if g == "scale" { "control-plane" } else { g };
                        GROUPS
                            .iter()
                            .copied()
                            .find(|known| *known == g)
                            .with_context(|| {
                                format!("--only {g}: groups are {}", GROUPS.join(", "))
                            })
                    })
                    .collect::<Result<_>>()?;
            }
            other => bail!(
                "unknown argument {other}: cargo xtask bench [--quick] [--only {}] [--readme]",
                GROUPS.join(",")
            ),
        }
    }
    Ok(options)
}

pub fn run(args: &[String]) -> Result<()> {
    if args.first().map(String::as_str) == Some(probe::SUBCOMMAND) {
        return probe::run(&args[1..]);
    }
    let options = options(args)?;
    if !system::is_root() {
        let missing = system::missing_of(system::BENCH_NEEDS);
        bail!(
            "benchmarks build network namespaces and program the kernel: run as root{}",
            if missing.is_empty() {
                String::new()
            } else {
                format!(
                    " (they also need: apt-get install -y {})",
                    missing.join(" ")
                )
            }
        );
    }
    system::ensure_packages()?;
    system::ensure(system::BENCH_NEEDS)?;
    let built = Instant::now();
    crate::build_binaries(true)?;
    println!("release build: {:.0?}", built.elapsed());
    // SAFETY: no other thread of this process exists yet; the harness reads this variable.
    unsafe {
        std::env::set_var(
            "SLUICE_BIN_DIR",
            crate::workspace_root().join("target/release"),
        )
    };
    let out_dir = crate::workspace_root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;

    let mut machine = Machine::describe(options.quick);
    println!(
        "{} ({} CPUs), kernel {}, load average {}",
        machine.cpu_model, machine.cpus, machine.kernel, machine.load_at_start
    );
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut statuses = Vec::new();
    for group in &options.groups {
        let t = Instant::now();
        let status = match run_group(group, &options, &out_dir, &mut rows) {
            Ok(status) => status,
            Err(err) => {
                eprintln!("== {group} failed: {err:#}");
                format!("failed: {err:#}")
            }
        };
        let status = format!("{status} in {:.0} s", t.elapsed().as_secs_f64());
        println!("== {group}: {status}");
        statuses.push((group.to_string(), status));
    }
    println!("{}", report::table(&rows));
    machine.load_at_end = report::load_average();
    write_outputs(&out_dir, &machine, &statuses, &rows, options.readme)?;
    println!(
        "benchmarks took {:.0} s (load average at the start {}, now {})",
        started.elapsed().as_secs_f64(),
        machine.load_at_start,
        machine.load_at_end
    );
    Ok(())
}

fn run_group(
    group: &str,
    options: &Options,
    out_dir: &Path,
    rows: &mut Vec<Row>,
) -> Result<String> {
    let seconds =
        |quick: u64, full: u64| Duration::from_secs(if options.quick { quick } else { full });
    let (new_rows, chart) = match group {
        "datapath" => {
            let datapath = datapath::Options {
                sizes: vec![10, 10_000],
                duration: seconds(2, 10),
                repeats: if options.quick { 2 } else { 3 },
            };
            let rows = datapath::run(&datapath)?;
            let chart = ratio_chart(
                "datapath: ours ÷ pod IP (the limit), and 10,000 ÷ 10 Services",
                &rows,
            );
            (rows, chart)
        }
        "control-plane" => {
            control_plane::run(options.quick, out_dir).map(|(rows, chart)| (rows, Some(chart)))?
        }
        "ingress" => {
            println!("== ingress: sluice vs nginx vs HAProxy, 3 echo pods, wrk -t2 -c16");
            let ingress = ingress::Options {
                duration: seconds(3, 10),
                churn: seconds(5, 10),
            };
            let rows = ingress::run(&ingress)?;
            let chart = ratio_chart("Ingress: sluice ÷ nginx", &rows);
            (rows, chart)
        }
        other => bail!("no group {other}"),
    };
    let drawn = match chart {
        Some(svg) => match chart::write(&svg, out_dir, group) {
            Ok((svg, png)) => format!(", charts {} {}", svg.display(), png.display()),
            Err(err) => format!(", chart not written: {err:#}"),
        },
        None => ", no chart (no ratio measured)".into(),
    };
    let status = format!("{} rows{drawn}", new_rows.len());
    rows.extend(new_rows);
    Ok(status)
}

/// The bar chart of a group's headline rows.
fn ratio_chart(title: &str, rows: &[Row]) -> Option<String> {
    let headline: Vec<&Row> = rows.iter().filter(|r| r.headline).collect();
    chart::ratio_bars(title, &headline)
}

fn write_outputs(
    out_dir: &Path,
    machine: &Machine,
    statuses: &[(String, String)],
    rows: &[Row],
    readme: bool,
) -> Result<()> {
    let json = report::json(machine, statuses, rows);
    let results = out_dir.join("results.json");
    std::fs::write(&results, serde_json::to_string_pretty(&json)?)?;
    let figures = report::markdown(rows, machine);
    let figures_path = out_dir.join("figures.md");
    std::fs::write(&figures_path, &figures)?;
    println!("written: {}, {}", results.display(), figures_path.display());
    if readme {
        // The same table in both: the README shows it, the benchmarks' page reads it.
        for file in ["README.md", "docs/benchmarks.md"] {
            let path: PathBuf = crate::workspace_root().join(file);
            let text = std::fs::read_to_string(&path)?;
            let replaced = replace_section(&text, &figures).with_context(|| file.to_owned())?;
            std::fs::write(&path, replaced)?;
            println!("{file}: figures table replaced");
        }
    }
    Ok(())
}

/// `text` with everything between the README markers replaced by `section`.
fn replace_section(text: &str, section: &str) -> Result<String> {
    let (Some(start), Some(end)) = (text.find(README_START), text.find(README_END)) else {
        bail!("no {README_START} … {README_END} markers");
    };
    anyhow::ensure!(start < end, "README markers out of order");
    Ok(format!(
        "{}{README_START}\n{section}{}",
        &text[..start],
        &text[end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_selects_known_groups() {
        let o = options(&args(&["--quick", "--only", "ingress,scale"])).expect("options");
        assert!(o.quick);
        assert_eq!(o.groups, ["ingress", "control-plane"], "scale is an alias");
        let err = options(&args(&["--only", "nft"]))
            .err()
            .expect("unknown group");
        assert!(
            format!("{err:#}").contains("groups are datapath, control-plane, ingress"),
            "{err:#}"
        );
        assert_eq!(options(&[]).expect("defaults").groups, GROUPS);
    }

    #[test]
    fn readme_section_is_replaced_between_the_markers() {
        let text = format!("intro\n{README_START}\nold table\n{README_END}\nafter\n");
        let new = replace_section(&text, "| new |\n").expect("replaced");
        assert_eq!(
            new,
            format!("intro\n{README_START}\n| new |\n{README_END}\nafter\n")
        );
        assert!(replace_section("no markers", "x").is_err());
    }
}

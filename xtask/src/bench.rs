//! `cargo xtask bench [--quick] [--only GROUP,...] [--readme]`: every headline figure side by
//! side in one run, release builds only. Groups:
//!
//! * `datapath` — one echo pod through ClusterIP, NodePort and eTP=Local for each dataplane
//!   (eBPF socket-LB / tc / XDP generic, nftables) next to its pod IP with no proxy, at 10 and
//!   at 10,000 installed Services ([`datapath`]).
//! * `ingress` — sluice's Ingress proxy vs nginx (as ingress-nginx configures it) and HAProxy
//!   in front of the same pods ([`ingress`]).
//! * `scale` — the control plane, from `cargo xtask bench scale` ([`scale_group`]).
//!
//! Prints a table (ours, the reference, ours ÷ reference), writes `target/bench/results.json`,
//! a PNG chart per group and `target/bench/figures.md`; `--readme` also replaces the README's
//! figures table with it. A measurement that fails is reported as such: benchmarks never fail
//! on a timing. See docs/benchmarks.md.

mod chart;
mod datapath;
mod ingress;
mod load;
mod probe;
mod report;
mod scale_group;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::system;
use report::{Machine, Row};

const GROUPS: [&str; 3] = ["datapath", "ingress", "scale"];
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
                        GROUPS.iter().copied().find(|known| *known == g).with_context(|| {
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
    match args.first().map(String::as_str) {
        Some(probe::SUBCOMMAND) => return probe::run(&args[1..]),
        Some("scale") => {
            // Reached only when no scale module is built in (it dispatches `bench scale`
            // itself): tell the parent run, which reports the group as skipped.
            eprintln!("cargo xtask bench scale: the scale group is not part of this xtask build");
            std::process::exit(scale_group::NOT_BUILT);
        }
        _ => {}
    }
    let options = options(args)?;
    if !system::is_root() {
        let missing = system::missing_of(load::PACKAGES);
        bail!(
            "benchmarks build network namespaces and program the kernel: run as root{}",
            if missing.is_empty() {
                String::new()
            } else {
                format!(" (they also need: apt-get install -y {})", missing.join(" "))
            }
        );
    }
    system::ensure_packages()?;
    system::ensure(load::PACKAGES)?;
    let built = Instant::now();
    crate::build_binaries(true)?;
    println!("release build: {:.0?}", built.elapsed());
    // SAFETY: no other thread of this process exists yet; the harness reads this variable.
    unsafe { std::env::set_var("SLUICE_BIN_DIR", crate::workspace_root().join("target/release")) };
    let out_dir = crate::workspace_root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    chart::load_font(Path::new(load::FONT))?;

    let machine = Machine::describe(options.quick);
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
    write_outputs(&out_dir, &machine, &statuses, &rows, options.readme)?;
    println!(
        "benchmarks took {:.0} s (load average now {})",
        started.elapsed().as_secs_f64(),
        report::load_average()
    );
    Ok(())
}

fn run_group(group: &str, options: &Options, out_dir: &Path, rows: &mut Vec<Row>) -> Result<String> {
    let seconds = |quick: u64, full: u64| Duration::from_secs(if options.quick { quick } else { full });
    let (new_rows, series) = match group {
        "datapath" => {
            let datapath = datapath::Options {
                sizes: vec![10, 10_000],
                duration: seconds(2, 10),
            };
            (datapath::run(&datapath)?, Vec::new())
        }
        "ingress" => {
            println!("== ingress: sluice vs nginx vs HAProxy, 3 echo pods, wrk -t2 -c16");
            let ingress = ingress::Options {
                duration: seconds(3, 10),
                churn: seconds(5, 10),
            };
            (ingress::run(&ingress)?, Vec::new())
        }
        "scale" => match scale_group::run(options.quick, out_dir)? {
            scale_group::Outcome::Ran(rows, series) => (rows, series),
            scale_group::Outcome::NotBuilt => {
                return Ok("skipped: `cargo xtask bench scale` is not part of this build".into());
            }
        },
        other => bail!("no group {other}"),
    };
    let chart = out_dir.join(format!("{group}.png"));
    let drawn = if group == "scale" {
        chart::log_log(
            "control plane: cost against the number of Services (log-log)",
            "Services",
            "ms",
            &series,
            &chart,
        )?
    } else {
        let headline: Vec<&Row> = new_rows.iter().filter(|r| r.headline).collect();
        chart::ratio_bars(&format!("{group}: ours ÷ reference"), &headline, &chart)?
    };
    let status = format!(
        "{} rows{}",
        new_rows.len(),
        if drawn { format!(", chart {}", chart.display()) } else { String::new() }
    );
    rows.extend(new_rows);
    Ok(status)
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
        let path: PathBuf = crate::workspace_root().join("README.md");
        let text = std::fs::read_to_string(&path)?;
        std::fs::write(&path, replace_section(&text, &figures)?)?;
        println!("README.md figures table replaced");
    }
    Ok(())
}

/// `text` with everything between the README markers replaced by `section`.
fn replace_section(text: &str, section: &str) -> Result<String> {
    let (Some(start), Some(end)) = (text.find(README_START), text.find(README_END)) else {
        bail!("README.md has no {README_START} … {README_END} markers");
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
        assert_eq!(o.groups, ["ingress", "scale"]);
        let err = options(&args(&["--only", "nft"])).err().expect("unknown group");
        assert!(format!("{err:#}").contains("groups are datapath, ingress, scale"), "{err:#}");
        assert_eq!(options(&[]).expect("defaults").groups, GROUPS);
    }

    #[test]
    fn readme_section_is_replaced_between_the_markers() {
        let text = format!("intro\n{README_START}\nold table\n{README_END}\nafter\n");
        let new = replace_section(&text, "| new |\n").expect("replaced");
        assert_eq!(new, format!("intro\n{README_START}\n| new |\n{README_END}\nafter\n"));
        assert!(replace_section("no markers", "x").is_err());
    }
}

//! The scale benchmark's log-log chart: time against cluster size, one line per measurement
//! and dataplane, as a self-contained SVG (no plotting crate, nothing to build).

use std::fmt::Write as _;

use serde_json::Value;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 460.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 250.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// (label, path into a run, dash pattern)
const SERIES: &[(&str, &[&str], &str)] = &[
    ("first programming", &["first_programming_ms"], ""),
    (
        "one change, end to end p50",
        &["change_end_to_end_ms", "p50"],
        "8 4",
    ),
    (
        "one change in the agent p50",
        &["change_in_agent_ms", "p50"],
        "2 3",
    ),
    (
        "one change: dataplane p50",
        &["change_stages_ms", "dataplane", "p50"],
        "10 3 2 3",
    ),
];

fn color(mode: &str) -> &'static str {
    if mode == "ebpf" { "#c0392b" } else { "#2471a3" }
}

/// Points (services, ms) of one series and mode, in size order.
fn points(runs: &[Value], mode: &str, path: &[&str]) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = runs
        .iter()
        .filter(|r| r["mode"] == mode && r["error"].is_null())
        .filter_map(|r| {
            let services = r["services"].as_f64()?;
            let ms = path.iter().fold(r, |v, k| &v[*k]).as_f64()?;
            (ms > 0.0 && ms.is_finite()).then_some((services, ms))
        })
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points
}

/// Decades covering `lo..=hi` (log10 exponents).
fn decades(lo: f64, hi: f64) -> (i32, i32) {
    (
        lo.log10().floor() as i32,
        (hi.log10().ceil() as i32).max(lo.log10().floor() as i32 + 1),
    )
}

pub fn svg(runs: &[Value]) -> String {
    let modes = ["nftables", "ebpf"];
    let all: Vec<(f64, f64)> = modes
        .iter()
        .flat_map(|m| SERIES.iter().flat_map(move |(_, p, _)| points(runs, m, p)))
        .collect();
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"22\" font-size=\"15\">sluice: time against cluster size \
         (Services × 10 endpoints, log-log)</text>\n"
    );
    if all.is_empty() {
        out.push_str("<text x=\"70\" y=\"80\">no measurements</text>\n</svg>\n");
        return out;
    }
    let (x0, x1) = decades(
        all.iter().map(|p| p.0).fold(f64::MAX, f64::min),
        all.iter().map(|p| p.0).fold(0.0, f64::max),
    );
    let (y0, y1) = decades(
        all.iter().map(|p| p.1).fold(f64::MAX, f64::min),
        all.iter().map(|p| p.1).fold(0.0, f64::max),
    );
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |v: f64| LEFT + (v.log10() - x0 as f64) / f64::from(x1 - x0) * plot_w;
    let y = |v: f64| TOP + plot_h - (v.log10() - y0 as f64) / f64::from(y1 - y0) * plot_h;
    axes(&mut out, (x0, x1), (y0, y1), &x, &y);
    let mut legend_y = TOP + 10.0;
    for mode in modes {
        for (label, path, dash) in SERIES {
            let pts = points(runs, mode, path);
            if pts.is_empty() {
                continue;
            }
            let line: Vec<String> = pts
                .iter()
                .map(|(s, ms)| format!("{:.1},{:.1}", x(*s), y(*ms)))
                .collect();
            let c = color(mode);
            let _ = writeln!(
                out,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" \
                 stroke-dasharray=\"{dash}\"/>",
                line.join(" ")
            );
            for (s, ms) in &pts {
                let _ = writeln!(
                    out,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"><title>{mode} {label}: \
                     {ms:.2} ms at {s} Services</title></circle>",
                    x(*s),
                    y(*ms)
                );
            }
            let lx = WIDTH - RIGHT + 15.0;
            let _ = writeln!(
                out,
                "<line x1=\"{lx}\" y1=\"{legend_y}\" x2=\"{}\" y2=\"{legend_y}\" stroke=\"{c}\" \
                 stroke-width=\"2\" stroke-dasharray=\"{dash}\"/><text x=\"{}\" y=\"{}\">{mode}: {label}</text>",
                lx + 30.0,
                lx + 36.0,
                legend_y + 4.0
            );
            legend_y += 18.0;
        }
    }
    out.push_str("</svg>\n");
    out
}

fn axes(
    out: &mut String,
    (x0, x1): (i32, i32),
    (y0, y1): (i32, i32),
    x: &dyn Fn(f64) -> f64,
    y: &dyn Fn(f64) -> f64,
) {
    let (left, right) = (x(10f64.powi(x0)), x(10f64.powi(x1)));
    let (bottom, top) = (y(10f64.powi(y0)), y(10f64.powi(y1)));
    for e in x0..=x1 {
        let v = 10f64.powi(e);
        let _ = writeln!(
            out,
            "<line x1=\"{0:.1}\" y1=\"{top:.1}\" x2=\"{0:.1}\" y2=\"{bottom:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{0:.1}\" y=\"{1:.1}\" text-anchor=\"middle\">{2}</text>",
            x(v),
            bottom + 18.0,
            human(v)
        );
    }
    for e in y0..=y1 {
        let v = 10f64.powi(e);
        let _ = writeln!(
            out,
            "<line x1=\"{left:.1}\" y1=\"{0:.1}\" x2=\"{right:.1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{1:.1}\" y=\"{2:.1}\" text-anchor=\"end\">{3} ms</text>",
            y(v),
            left - 6.0,
            y(v) + 4.0,
            human(v)
        );
    }
    let _ = writeln!(
        out,
        "<rect x=\"{left:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"none\" stroke=\"#333\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">Services</text>",
        right - left,
        bottom - top,
        (left + right) / 2.0,
        bottom + 38.0
    );
}

fn human(v: f64) -> String {
    if v >= 1000.0 {
        format!("{}k", v / 1000.0)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_chart_has_one_line_per_measured_series_and_log_axes() {
        let runs = vec![
            json!({"mode": "nftables", "services": 1000, "first_programming_ms": 120.0,
                   "change_end_to_end_ms": {"p50": 60.0}, "change_in_agent_ms": {"p50": 4.0},
                   "change_stages_ms": {"dataplane": {"p50": 2.0}}}),
            json!({"mode": "nftables", "services": 10000, "first_programming_ms": 900.0,
                   "change_end_to_end_ms": {"p50": 65.0}, "change_in_agent_ms": {"p50": 5.0},
                   "change_stages_ms": {"dataplane": {"p50": 3.0}}}),
            json!({"mode": "ebpf", "services": 1000, "error": "did not start"}),
        ];
        let svg = svg(&runs);
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(
            svg.contains(">1k</text>") && svg.contains(">10k</text>"),
            "{svg}"
        );
        assert!(
            svg.contains(">1 ms</text>") && svg.contains(">1k ms</text>"),
            "{svg}"
        );
        assert!(!svg.contains("ebpf: first"), "a failed run draws nothing");
    }
}

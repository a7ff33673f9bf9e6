//! Charts as hand-written SVG (no plotting crate to build), each also converted to PNG with
//! `rsvg-convert` (Debian's `librsvg2-bin`): per group, one horizontal bar per figure of ours
//! showing its ratio to the reference. The control plane's log-log chart is the scale
//! module's own ([`crate::scale::chart`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::report::{Better, Row, number};

const WIDTH: f64 = 1200.0;
const LABEL_WIDTH: f64 = 620.0;
/// Room right of the longest bar for its figures.
const DETAIL_WIDTH: f64 = 300.0;
const BAR_HEIGHT: f64 = 20.0;
const TOP: f64 = 64.0;

/// One bar: what it is, its ratio, and the figures behind it.
struct Bar {
    label: String,
    ratio: f64,
    detail: String,
    good: bool,
}

fn bars(rows: &[&Row]) -> Vec<Bar> {
    let mut bars = Vec::new();
    for row in rows {
        let Some(reference) = row.references.first() else {
            continue;
        };
        for ours in &row.ours {
            let (Some(ratio), Some(value), Some(ref_value)) =
                (row.main_ratio(ours), ours.value, reference.value)
            else {
                continue;
            };
            bars.push(Bar {
                label: format!("{} — {}", row.name, ours.system),
                ratio,
                detail: format!(
                    "{ratio:.2}×  ({} vs {} {} {})",
                    number(value),
                    reference.system,
                    number(ref_value),
                    row.unit
                ),
                good: match row.better {
                    Better::Higher => ratio >= 1.0,
                    Better::Lower => ratio <= 1.0,
                },
            });
        }
    }
    bars
}

/// Text safe inside SVG elements and attributes.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Horizontal bars of ours ÷ reference for `rows`, a line at 1×; `None` when no row has a
/// ratio.
pub fn ratio_bars(title: &str, rows: &[&Row]) -> Option<String> {
    let bars = bars(rows);
    if bars.is_empty() {
        return None;
    }
    let height = TOP + BAR_HEIGHT * bars.len() as f64 + 40.0;
    let max = bars.iter().map(|b| b.ratio).fold(1.5_f64, f64::max) * 1.05;
    let (x0, x1) = (LABEL_WIDTH + 10.0, WIDTH - DETAIL_WIDTH);
    let px = |ratio: f64| x0 + ratio / max * (x1 - x0);
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         font-family=\"DejaVu Sans, sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"24\" font-size=\"17\">{}</text>\n\
         <text x=\"10\" y=\"46\" fill=\"#555\">bar = ours ÷ reference (green: better than the \
         reference, orange: worse); one run, shared cores: compare within the chart</text>\n",
        escape(title)
    );
    for (i, bar) in bars.iter().enumerate() {
        let y = TOP + BAR_HEIGHT * i as f64;
        let color = if bar.good { "#46a05a" } else { "#e68c32" };
        let end = px(bar.ratio).max(x0 + 1.0);
        // Right of the bar and of the 1× line, so the line never crosses the text.
        let text_x = end.max(px(1.0)) + 6.0;
        let _ = writeln!(
            out,
            "<text x=\"10\" y=\"{:.1}\">{}</text>\
             <rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            y + 14.0,
            escape(&clip(&bar.label, 95)),
            y + 3.0,
            end - x0,
            BAR_HEIGHT - 6.0,
            text_x,
            y + 14.0,
            escape(&bar.detail),
        );
    }
    let bottom = TOP + BAR_HEIGHT * bars.len() as f64;
    let _ = write!(
        out,
        "<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{0:.1}\" y2=\"{2:.1}\" stroke=\"black\" \
         stroke-width=\"2\"/>\n<text x=\"{0:.1}\" y=\"{3:.1}\" text-anchor=\"middle\">1× = \
         reference</text>\n</svg>\n",
        px(1.0),
        TOP - 4.0,
        bottom + 4.0,
        bottom + 22.0
    );
    Some(out)
}

fn clip(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(chars - 1).collect::<String>())
    }
}

/// Writes `DIR/STEM.svg` and converts it to `DIR/STEM.png`; returns both paths.
pub fn write(svg: &str, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf)> {
    let svg_path = dir.join(format!("{stem}.svg"));
    let png_path = dir.join(format!("{stem}.png"));
    std::fs::write(&svg_path, svg).with_context(|| format!("writing {}", svg_path.display()))?;
    to_png(&svg_path, &png_path)?;
    Ok((svg_path, png_path))
}

fn to_png(svg: &Path, png: &Path) -> Result<()> {
    let out = Command::new("rsvg-convert")
        .arg("--background-color=white")
        .arg("-o")
        .arg(png)
        .arg(svg)
        .output()
        .context("running rsvg-convert (apt-get install librsvg2-bin)")?;
    if !out.status.success() {
        bail!(
            "rsvg-convert {}: {}",
            svg.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::report::Figure;
    use super::*;

    #[test]
    fn bars_are_drawn_for_rows_with_a_ratio_only() {
        let rows = [
            Row::new("g", "rate <new>", "req/s")
                .ours(Figure::new("sluice", Some(120.0)))
                .ours(Figure::failed("other", "down"))
                .reference(Figure::new("nginx", Some(100.0))),
            Row::new("g", "latency", "ms")
                .lower_is_better()
                .ours(Figure::new("sluice", Some(3.0)))
                .reference(Figure::new("nginx", Some(2.0))),
            Row::new("g", "no reference", "req/s").ours(Figure::new("sluice", Some(1.0))),
        ];
        let refs: Vec<&Row> = rows.iter().collect();
        let svg = ratio_bars("test & title", &refs).expect("drawn");
        assert_eq!(svg.matches("fill=\"#46a05a\"").count(), 1, "{svg}");
        assert_eq!(svg.matches("fill=\"#e68c32\"").count(), 1, "{svg}");
        assert!(svg.contains("rate &lt;new&gt; — sluice"), "{svg}");
        assert!(svg.contains("1.20×  (120 vs nginx 100 req/s)"), "{svg}");
        assert!(svg.contains("test &amp; title"), "{svg}");
        assert!(ratio_bars("empty", &refs[2..]).is_none());
    }

    /// The PNG is a real image of the SVG's size (skips where rsvg-convert is missing).
    #[test]
    fn png_is_converted_from_the_svg() {
        if Command::new("rsvg-convert")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipping: rsvg-convert not installed (librsvg2-bin)");
            return;
        }
        let rows = [Row::new("g", "rate", "req/s")
            .ours(Figure::new("sluice", Some(120.0)))
            .reference(Figure::new("nginx", Some(100.0)))];
        let svg = ratio_bars("png", &rows.iter().collect::<Vec<_>>()).expect("svg");
        let dir = std::env::temp_dir().join(format!("xtask-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (_, png) = write(&svg, &dir, "bars").expect("converted");
        let bytes = std::fs::read(&png).expect("png");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR: width and height, big-endian, at bytes 16..24.
        let width = u32::from_be_bytes(bytes[16..20].try_into().expect("4 bytes"));
        let height = u32::from_be_bytes(bytes[20..24].try_into().expect("4 bytes"));
        assert_eq!(
            (width, height),
            (WIDTH as u32, (TOP + BAR_HEIGHT + 40.0) as u32)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

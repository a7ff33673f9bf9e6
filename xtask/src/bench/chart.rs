//! PNG charts with `plotters` (bitmap backend only, text through `ab_glyph` with the DejaVu
//! font from Debian's `fonts-dejavu-core`, PNG encoding with `png`): per group, one bar per
//! figure of ours showing its ratio to the reference; for the scale group, log-log lines.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::report::{Better, Row, number};

const FONT_FAMILY: &str = "sans-serif";
const BAR_HEIGHT: u32 = 22;
const WIDTH: u32 = 1500;
const LABEL_WIDTH: i32 = 720;
const TOP: i32 = 60;

/// Registers the chart font once; charts cannot be drawn without it.
pub fn load_font(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "reading the chart font {} (apt-get install fonts-dejavu-core)",
            path.display()
        )
    })?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{} is not a usable font", path.display()))
}

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

/// Horizontal bars of ours ÷ reference for `rows`, a line at 1×; writes `path`. Returns
/// false (and writes nothing) when no row has a ratio.
pub fn ratio_bars(title: &str, rows: &[&Row], path: &Path) -> Result<bool> {
    let bars = bars(rows);
    if bars.is_empty() {
        return Ok(false);
    }
    let height = TOP as u32 + BAR_HEIGHT * bars.len() as u32 + 50;
    let max = bars.iter().map(|b| b.ratio).fold(1.5_f64, f64::max) * 1.05;
    let (x0, x1) = (LABEL_WIDTH + 10, WIDTH as i32 - 330);
    let px = |ratio: f64| x0 + ((ratio / max) * f64::from(x1 - x0)) as i32;
    let mut pixels = vec![255u8; (WIDTH * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (WIDTH, height)).into_drawing_area();
        let font = |size: u32| (FONT_FAMILY, size).into_font();
        root.draw(&Text::new(title.to_owned(), (10, 12), font(22)))?;
        root.draw(&Text::new(
            "bar = ours ÷ reference (green: better than the reference, orange: worse)",
            (10, 38),
            font(14).color(&RGBColor(90, 90, 90)),
        ))?;
        for (i, bar) in bars.iter().enumerate() {
            let y = TOP + (BAR_HEIGHT as i32) * i as i32;
            let color = if bar.good {
                RGBColor(70, 160, 90)
            } else {
                RGBColor(230, 140, 50)
            };
            root.draw(&Text::new(clip(&bar.label, 100), (10, y + 4), font(13)))?;
            root.draw(&Rectangle::new(
                [(x0, y + 3), (px(bar.ratio).max(x0 + 1), y + BAR_HEIGHT as i32 - 3)],
                color.filled(),
            ))?;
            root.draw(&Text::new(
                bar.detail.clone(),
                (px(bar.ratio) + 6, y + 4),
                font(13),
            ))?;
        }
        let bottom = TOP + (BAR_HEIGHT * bars.len() as u32) as i32;
        root.draw(&PathElement::new(
            vec![(px(1.0), TOP - 4), (px(1.0), bottom + 4)],
            BLACK.stroke_width(2),
        ))?;
        root.draw(&Text::new("1× = reference", (px(1.0) - 40, bottom + 10), font(13)))?;
        root.present()?;
    }
    write_png(path, &pixels, WIDTH, height)?;
    Ok(true)
}

fn clip(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(chars - 1).collect::<String>())
    }
}

/// One line of a log-log chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Log-log lines (e.g. milliseconds against the number of Services); writes `path`. Returns
/// false when there is nothing positive to draw.
pub fn log_log(title: &str, x_desc: &str, y_desc: &str, series: &[Series], path: &Path) -> Result<bool> {
    let points = || series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| *x > 0.0 && *y > 0.0);
    let (Some(x_min), Some(y_min)) = (
        points().map(|p| p.0).reduce(f64::min),
        points().map(|p| p.1).reduce(f64::min),
    ) else {
        return Ok(false);
    };
    let x_max = points().map(|p| p.0).fold(x_min, f64::max);
    let y_max = points().map(|p| p.1).fold(y_min, f64::max);
    let (width, height) = (1200u32, 800u32);
    let mut pixels = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT_FAMILY, 22))
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(
                (x_min * 0.8..x_max * 1.25).log_scale(),
                (y_min * 0.8..y_max * 1.25).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .label_style((FONT_FAMILY, 14))
            .x_label_formatter(&|x| number(*x))
            .y_label_formatter(&|y| number(*y))
            .draw()?;
        for (i, s) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|(x, y)| *x > 0.0 && *y > 0.0).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT_FAMILY, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    write_png(path, &pixels, width, height)?;
    Ok(true)
}

fn write_png(path: &Path, rgb: &[u8], width: u32, height: u32) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::report::Figure;
    use super::*;

    fn font() -> bool {
        let path = Path::new(super::super::load::FONT);
        if !path.exists() {
            eprintln!("skipping: {} missing (fonts-dejavu-core)", path.display());
            return false;
        }
        load_font(path).expect("font");
        true
    }

    fn png_size(path: &Path) -> (u32, u32) {
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).expect("open")));
        let reader = decoder.read_info().expect("a PNG");
        let info = reader.info();
        (info.width, info.height)
    }

    #[test]
    fn bars_are_drawn_for_rows_with_a_ratio_only() {
        if !font() {
            return;
        }
        let rows = [
            Row::new("g", "rate", "req/s")
                .ours(Figure::new("sluice", Some(120.0)))
                .ours(Figure::failed("other", "down"))
                .reference(Figure::new("nginx", Some(100.0))),
            Row::new("g", "no reference", "req/s").ours(Figure::new("sluice", Some(1.0))),
        ];
        let refs: Vec<&Row> = rows.iter().collect();
        assert_eq!(bars(&refs).len(), 1);
        let dir = std::env::temp_dir().join(format!("xtask-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("bars.png");
        assert!(ratio_bars("test", &refs, &path).expect("drawn"));
        assert_eq!(png_size(&path), (WIDTH, TOP as u32 + BAR_HEIGHT + 50));
        assert!(!ratio_bars("empty", &refs[1..], &dir.join("none.png")).expect("ok"));
        assert!(!dir.join("none.png").exists());
        let series = [Series { name: "nftables".into(), points: vec![(1000.0, 50.0), (10_000.0, 400.0)] }];
        assert!(log_log("scale", "Services", "ms", &series, &dir.join("scale.png")).expect("drawn"));
        assert_eq!(png_size(&dir.join("scale.png")), (1200, 800));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

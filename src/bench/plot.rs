//! SVG charts of a benchmark run (plotters' SVG backend).
//!
//! Readable at a suite's 18 arms: every series has its own colour × line pattern ×
//! marker (10 colours, then dashed, then dotted; markers on every point, so one-epoch
//! runs show), every bar has its label, and legends sit outside the plot.

use std::path::Path;

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};

/// Tableau's ten colours.
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Width of the legend pane right of a chart.
const LEGEND_WIDTH: u32 = 300;
/// Height of one legend entry.
const ENTRY: i32 = 22;

/// How series `i` is drawn: a colour, a line pattern (0 solid, 1 dashed, 2 dotted) and a
/// marker (0 circle, 1 triangle, 2 square, 3 cross); distinct for the first 30 series.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SeriesStyle {
    color: RGBColor,
    pattern: usize,
    marker: usize,
}

fn style(i: usize) -> SeriesStyle {
    SeriesStyle {
        color: COLORS[i % COLORS.len()],
        pattern: (i / COLORS.len()) % 3,
        marker: (i / COLORS.len() + i) % 4,
    }
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> Error + '_ {
    move |e| Error::format(path, format!("drawing chart: {e}"))
}

fn range(vals: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let lo = vals.clone().fold(f64::INFINITY, f64::min);
    let hi = vals.fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

/// A marker of `s` centred on the pixel `at`.
fn marker(area: &Area, at: (i32, i32), s: SeriesStyle, path: &Path) -> Result<()> {
    let (x, y) = at;
    let fill = s.color.filled();
    match s.marker {
        0 => area.draw(&Circle::new(at, 4, fill)),
        1 => area.draw(&TriangleMarker::new(at, 5, fill)),
        2 => area.draw(&Rectangle::new([(x - 4, y - 4), (x + 4, y + 4)], fill)),
        _ => area.draw(&Cross::new(at, 5, s.color.stroke_width(2))),
    }
    .map_err(err(path))
}

/// A line in pixels in the pattern of `s`.
fn pixel_line(area: &Area, pts: Vec<(i32, i32)>, s: SeriesStyle, path: &Path) -> Result<()> {
    let st = s.color.stroke_width(2);
    match s.pattern {
        0 => area.draw(&PathElement::new(pts, st)),
        1 => area.draw(&DashedPathElement::new(pts, 8, 5, st)),
        _ => area.draw(&DashedPathElement::new(pts, 2, 4, st)),
    }
    .map_err(err(path))
}

/// The legend: one entry per name, in the pane right of the chart.
fn legend(pane: &Area, names: &[&str], line: bool, path: &Path) -> Result<()> {
    let font = ("sans-serif", 14).into_font();
    for (i, name) in names.iter().enumerate() {
        let y = 40 + ENTRY * i as i32;
        let s = style(i);
        if line {
            pixel_line(pane, vec![(8, y), (44, y)], s, path)?;
            marker(pane, (26, y), s, path)?;
        } else {
            pane.draw(&Rectangle::new(
                [(14, y - 7), (38, y + 7)],
                s.color.filled(),
            ))
            .map_err(err(path))?;
        }
        pane.draw(&Text::new(
            name.to_string(),
            (52, y),
            TextStyle::from(font.clone()).pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(err(path))?;
    }
    Ok(())
}

/// Height that fits `entries` legend rows.
fn height(entries: usize) -> u32 {
    560.max(60 + ENTRY as u32 * entries as u32)
}

/// A line chart: one named series of (x, y) points each, markers on every point and
/// the legend outside the plot.
pub fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    let root =
        SVGBackend::new(path, (900 + LEGEND_WIDTH, height(series.len()))).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let (plot, pane) = root.split_horizontally(900);
    let pts = series.iter().flat_map(|(_, p)| p.iter().copied());
    let (x0, x1) = range(pts.clone().map(|p| p.0));
    let (y0, y1) = range(pts.map(|p| p.1));
    let mut chart = ChartBuilder::on(&plot)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err(path))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(err(path))?;
    for (i, (_, p)) in series.iter().enumerate() {
        let s = style(i);
        let px: Vec<(i32, i32)> = p.iter().map(|q| chart.backend_coord(q)).collect();
        if px.len() > 1 {
            pixel_line(&plot, px.clone(), s, path)?;
        }
        for q in px {
            marker(&plot, q, s, path)?;
        }
    }
    let names: Vec<&str> = series.iter().map(|(n, _)| n.as_str()).collect();
    legend(&pane, &names, true, path)?;
    root.present().map_err(err(path))
}

/// Stacked bars: one bar per name, one segment per part (named in the legend), every
/// bar labelled under the axis and its total written above it.
pub fn stacked_bars(
    path: &Path,
    title: &str,
    y_label: &str,
    parts: &[&str],
    bars: &[(String, Vec<f64>)],
) -> Result<()> {
    let longest = bars.iter().map(|b| b.0.chars().count()).max().unwrap_or(1);
    let label_area = (12 + 8 * longest as u32).clamp(40, 200);
    let root = SVGBackend::new(path, (900 + LEGEND_WIDTH, 560 + label_area)).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let (plot, pane) = root.split_horizontally(900);
    let total = |v: &[f64]| v.iter().filter(|x| x.is_finite()).sum::<f64>();
    let hi = bars
        .iter()
        .map(|b| total(&b.1))
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.12;
    let n = bars.len().max(1);
    let mut chart = ChartBuilder::on(&plot)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(label_area)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, 0f64..hi)
        .map_err(err(path))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_label)
        .draw()
        .map_err(err(path))?;
    for (i, (_, vals)) in bars.iter().enumerate() {
        let x = i as f64;
        let mut base = 0.0;
        for (k, v) in vals.iter().enumerate() {
            if !v.is_finite() || *v <= 0.0 {
                continue;
            }
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x + 0.15, base), (x + 0.85, base + v)],
                    style(k).color.filled(),
                )))
                .map_err(err(path))?;
            base += v;
        }
        let (cx, top) = chart.backend_coord(&(x + 0.5, base));
        plot.draw(&Text::new(
            format!("{base:.1}"),
            (cx, top - 4),
            TextStyle::from(("sans-serif", 11).into_font())
                .pos(Pos::new(HPos::Center, VPos::Bottom)),
        ))
        .map_err(err(path))?;
    }
    // Bar names, rotated, each centred under its bar.
    let label = TextStyle::from(("sans-serif", 13).into_font())
        .transform(FontTransform::Rotate270)
        .pos(Pos::new(HPos::Right, VPos::Center));
    for (i, (name, _)) in bars.iter().enumerate() {
        let (cx, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        plot.draw(&Text::new(name.clone(), (cx, y + 6), label.clone()))
            .map_err(err(path))?;
    }
    legend(&pane, parts, false, path)?;
    root.present().map_err(err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eighteen_series_have_distinct_styles() {
        let styles: Vec<SeriesStyle> = (0..18).map(style).collect();
        for i in 0..18 {
            for j in 0..i {
                assert_ne!(
                    (styles[i].color, styles[i].pattern),
                    (styles[j].color, styles[j].pattern),
                    "series {i} and {j}"
                );
            }
        }
    }

    /// Whether the SVG has a text element reading `t` (plotters puts it on its own line).
    fn has_text(svg: &str, t: &str) -> bool {
        svg.lines().any(|l| l.trim() == t)
    }

    #[test]
    fn charts_draw_one_point_series_and_every_bar_label() {
        let d = tempfile::tempdir().unwrap();
        let series: Vec<(String, Vec<(f64, f64)>)> = (0..18)
            .map(|i| (format!("arm{i}"), vec![(1.0, i as f64)]))
            .collect();
        let p = d.path().join("l.svg");
        lines(&p, "t", "x", "y", &series).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        for (name, _) in &series {
            assert!(has_text(&svg, name), "legend lacks {name}");
        }
        // A one-point series still has its marker (circles are drawn as <circle>).
        assert!(svg.matches("<circle").count() >= 4, "no markers drawn");
        let bars: Vec<(String, Vec<f64>)> = (0..18)
            .map(|i| (format!("rule{i}"), vec![1.0, 2.0, 0.5, i as f64]))
            .collect();
        let p = d.path().join("b.svg");
        stacked_bars(&p, "m", "MB", &["a", "b", "c", "d"], &bars).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        for (name, _) in &bars {
            assert!(has_text(&svg, name), "bar label {name} missing");
        }
        for part in ["a", "b", "c", "d"] {
            assert!(has_text(&svg, part), "legend lacks {part}");
        }
    }
}

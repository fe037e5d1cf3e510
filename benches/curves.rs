//! Training-error curves from `futureprop train --log-every 1` runs: a CSV, two SVG
//! charts (error vs updates and vs seconds) and a table of the updates and seconds each
//! run needs to reach the reference run's final error.
//!
//! `cargo bench --bench curves -- OUT_DIR TITLE REFERENCE LABEL=metrics.jsonl...`
//!
//! The error is the minibatch loss before each update, smoothed by a trailing mean over
//! `WINDOW` (default 20) steps; "reaches" means the smoothed curve first falls to the
//! reference's final smoothed value.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

struct Curve {
    label: String,
    /// (step, seconds, loss, smoothed)
    points: Vec<(f64, f64, f64, f64)>,
}

fn load(label: &str, path: &str, window: usize) -> Curve {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let raw: Vec<(f64, f64, f64)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["type"] == "step")
        .map(|r| {
            (
                r["step"].as_f64().unwrap_or(0.0),
                r["seconds"].as_f64().unwrap_or(0.0),
                r["loss"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    let points = raw
        .iter()
        .enumerate()
        .map(|(i, &(s, t, l))| {
            let lo = (i + 1).saturating_sub(window);
            let w = &raw[lo..=i];
            (s, t, l, w.iter().map(|p| p.2).sum::<f64>() / w.len() as f64)
        })
        .collect();
    Curve {
        label: label.to_string(),
        points,
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.len() < 4 {
        eprintln!("usage: curves OUT_DIR TITLE REFERENCE LABEL=metrics.jsonl...");
        std::process::exit(2);
    }
    let window: usize = std::env::var("WINDOW")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(20);
    let out = Path::new(&args[0]);
    std::fs::create_dir_all(out).expect("create output folder");
    let (title, reference) = (&args[1], &args[2]);
    let curves: Vec<Curve> = args[3..]
        .iter()
        .map(|a| {
            let (l, p) = a.split_once('=').expect("LABEL=path");
            load(l, p, window)
        })
        .collect();
    let mut csv = String::from("run,step,seconds,loss,smoothed\n");
    for c in &curves {
        for p in &c.points {
            writeln!(csv, "{},{},{:.4},{:.6},{:.6}", c.label, p.0, p.1, p.2, p.3).unwrap();
        }
    }
    std::fs::write(out.join("curves.csv"), csv).expect("write csv");
    let series = |by_seconds: bool| -> Vec<(String, Vec<(f64, f64)>)> {
        curves
            .iter()
            .map(|c| {
                // From the first full smoothing window on: the first updates' large
                // losses would squash the rest of the chart.
                let pts = c
                    .points
                    .iter()
                    .skip(window)
                    .map(|p| (if by_seconds { p.1 } else { p.0 }, p.3))
                    .collect();
                (c.label.clone(), pts)
            })
            .collect()
    };
    futureprop::bench::plot::lines(
        &out.join("error_vs_updates.svg"),
        &format!("{title}: training error vs updates"),
        "updates",
        &format!("training loss ({window}-step mean)"),
        &series(false),
    )
    .expect("plot");
    futureprop::bench::plot::lines(
        &out.join("error_vs_seconds.svg"),
        &format!("{title}: training error vs seconds"),
        "seconds (training only)",
        &format!("training loss ({window}-step mean)"),
        &series(true),
    )
    .expect("plot");
    let target = curves
        .iter()
        .find(|c| &c.label == reference)
        .and_then(|c| c.points.last())
        .map(|p| p.3)
        .expect("the reference run has points");
    let ref_end = curves
        .iter()
        .find(|c| &c.label == reference)
        .and_then(|c| c.points.last())
        .copied()
        .unwrap();
    let mut md = format!(
        "| run | updates | seconds | final error | updates to reach {reference}'s final {target:.4} | seconds to reach it | fewer updates than {reference} | less time |\n|---|---|---|---|---|---|---|---|\n"
    );
    for c in &curves {
        let last = c.points.last().copied().unwrap_or_default();
        let hit = c.points.iter().find(|p| p.3 <= target);
        let (u, s, fu, fs) = match hit {
            Some(p) => (
                format!("{}", p.0),
                format!("{:.1}", p.1),
                format!("{:.2}×", ref_end.0 / p.0),
                format!("{:.2}×", ref_end.1 / p.1),
            ),
            None => ("not reached".into(), "—".into(), "—".into(), "—".into()),
        };
        writeln!(
            md,
            "| {} | {} | {:.1} | {:.4} | {u} | {s} | {fu} | {fs} |",
            c.label, last.0, last.1, last.3
        )
        .unwrap();
    }
    std::fs::write(out.join("summary.md"), &md).expect("write summary");
    print!("{md}");
}

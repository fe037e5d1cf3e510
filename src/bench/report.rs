//! Tables, statistics and charts of a benchmark run.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use super::stats::{mean_sd, paired_difference};
use super::suite::Suite;
use super::{CSV_COLUMNS, plot};
use crate::error::Result;

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// The value of CSV column `col` for a row.
fn cell(row: &Value, col: &str) -> Value {
    let s = &row["summary"];
    match col {
        "dataset" | "model" | "rule" | "optimizer" => row["arm"][col].clone(),
        "seed" | "status" => row[col].clone(),
        "parameter_bytes"
        | "optimizer_state_bytes"
        | "activation_bytes_per_step"
        | "rule_state_bytes"
        | "peak_training_bytes_above_baseline" => s["memory"][col].clone(),
        "samples_per_second" => {
            let c: Vec<f64> = row["curve"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| f(&p["samples_per_second"]))
                .collect();
            if c.is_empty() {
                Value::Null
            } else {
                json!(c.iter().sum::<f64>() / c.len() as f64)
            }
        }
        _ => s[col].clone(),
    }
}

/// Total bytes of the memory split (parameters, optimizer state, activations, rule state).
fn memory_total(row: &Value) -> Option<f64> {
    let m = &row["summary"]["memory"];
    Some(
        f(&m["parameter_bytes"])?
            + f(&m["optimizer_state_bytes"])?
            + f(&m["activation_bytes_per_step"])?
            + f(&m["rule_state_bytes"])?,
    )
}

/// `results.csv`: one row per arm and seed.
pub fn csv(rows: &[Value]) -> String {
    let mut out = CSV_COLUMNS.join(",") + "\n";
    for r in rows {
        let cells: Vec<String> = CSV_COLUMNS
            .iter()
            .map(|c| match cell(r, c) {
                Value::Null => String::new(),
                Value::String(s) => s.replace(',', ";"),
                v => v.to_string(),
            })
            .collect();
        out += &cells.join(",");
        out.push('\n');
    }
    out
}

type Key = (String, String, String, String);

fn key(r: &Value) -> Key {
    let a = &r["arm"];
    let s = |k: &str| a[k].as_str().unwrap_or_default().to_string();
    (s("dataset"), s("model"), s("optimizer"), s("rule"))
}

/// Statistics per arm across seeds, and each arm against the BP arm of the same dataset,
/// model and optimizer (paired by seed).
pub fn results(suite: &Suite, rows: &[Value]) -> Value {
    let mut groups: BTreeMap<Key, Vec<&Value>> = BTreeMap::new();
    for r in rows {
        groups.entry(key(r)).or_default().push(r);
    }
    let by_seed = |rs: &[&Value], metric: &dyn Fn(&Value) -> Option<f64>| -> BTreeMap<u64, f64> {
        rs.iter()
            .filter(|r| r["status"] == "ok")
            .filter_map(|r| Some((r["seed"].as_u64()?, metric(r)?)))
            .collect()
    };
    let acc = |r: &Value| f(&r["summary"]["test_accuracy"]);
    let best = |r: &Value| f(&r["summary"]["best_test_accuracy"]);
    let spe = |r: &Value| f(&r["summary"]["seconds_per_epoch"]);
    let energy = |r: &Value| f(&r["summary"]["energy_joules"]);
    let flops = |r: &Value| f(&r["summary"]["flops_per_step"]);
    let mut arms = Vec::new();
    for ((dataset, model, optimizer, rule), rs) in &groups {
        let ok: Vec<&Value> = rs.iter().copied().filter(|r| r["status"] == "ok").collect();
        let stat = |m: &dyn Fn(&Value) -> Option<f64>| {
            let v: Vec<f64> = ok.iter().filter_map(|r| m(r)).collect();
            let (mean, sd) = mean_sd(&v);
            json!({"mean": mean, "sd": sd, "n": v.len()})
        };
        let mut entry = json!({
            "dataset": dataset, "model": model, "optimizer": optimizer, "rule": rule,
            "seeds": rs.len(), "failed": rs.len() - ok.len(),
            "errors": rs.iter().filter_map(|r| r["error"].as_str()).collect::<Vec<_>>(),
            "test_accuracy": stat(&acc), "best_test_accuracy": stat(&best),
            "seconds_per_epoch": stat(&spe), "energy_joules": stat(&energy),
            "flops_per_step": stat(&flops), "memory_bytes": stat(&memory_total),
            "energy_source": ok.first().map(|r| r["summary"]["energy_source"].clone()).unwrap_or(Value::Null),
            "memory": ok.first().map(|r| r["summary"]["memory"].clone()).unwrap_or(Value::Null),
        });
        if let Some(bp) = groups.get(&(
            dataset.clone(),
            model.clone(),
            optimizer.clone(),
            "bp".to_string(),
        )) {
            let (a, b) = (by_seed(rs, &acc), by_seed(bp, &acc));
            let seeds: Vec<u64> = a.keys().filter(|s| b.contains_key(s)).copied().collect();
            let xa: Vec<f64> = seeds.iter().map(|s| a[s]).collect();
            let xb: Vec<f64> = seeds.iter().map(|s| b[s]).collect();
            let (d, ci) = paired_difference(&xa, &xb);
            let ratio = |m: &dyn Fn(&Value) -> Option<f64>| {
                let (x, _) = mean_sd(&ok.iter().filter_map(|r| m(r)).collect::<Vec<_>>());
                let (y, _) = mean_sd(
                    &bp.iter()
                        .filter(|r| r["status"] == "ok")
                        .filter_map(|r| m(r))
                        .collect::<Vec<_>>(),
                );
                if y > 0.0 { json!(x / y) } else { Value::Null }
            };
            entry["vs_bp"] = json!({
                "pairs": seeds.len(),
                "accuracy_difference": d,
                "accuracy_difference_ci95": ci.map(|(l, h)| json!([l, h])).unwrap_or(Value::Null),
                "time_ratio": ratio(&spe),
                "memory_ratio": ratio(&memory_total),
                "energy_ratio": ratio(&energy),
                "flops_ratio": ratio(&flops),
            });
        }
        arms.push(entry);
    }
    json!({"suite": suite, "machine": machine(), "arms": arms, "runs": rows})
}

/// A one-line description of this machine.
pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    json!({"cpu": cpu, "cores": cores, "os": std::env::consts::OS, "arch": std::env::consts::ARCH})
}

fn mb(b: f64) -> String {
    format!("{:.1} MB", b / 1e6)
}

/// Three significant digits.
fn sig(x: f64) -> String {
    if !x.is_finite() || x == 0.0 {
        return format!("{x}");
    }
    let d = (2 - x.abs().log10().floor() as i32).max(0) as usize;
    format!("{x:.d$}")
}

fn word_ratio(r: f64) -> &'static str {
    if r < 0.9 {
        "lower"
    } else if r > 1.1 {
        "higher"
    } else {
        "≈ BP"
    }
}

/// `report.md`: the encyclopedia-shaped table with the numbers behind each word.
pub fn markdown(suite: &Suite, results: &Value) -> String {
    let m = &results["machine"];
    let mut s = format!(
        "# Benchmark `{}`\n\n{}\n\nMachine: {} ({} cores, {}). Seeds: {}. Budget: {} epoch(s){}.\n\n",
        suite.name,
        suite.description,
        m["cpu"].as_str().unwrap_or(""),
        m["cores"],
        m["os"].as_str().unwrap_or(""),
        suite.seeds,
        suite.epochs,
        suite
            .seconds
            .map(|x| format!(" or {x} s"))
            .unwrap_or_default()
    );
    let arms = results["arms"].as_array().cloned().unwrap_or_default();
    let estimated = arms.iter().any(|a| a["energy_source"] == "estimated");
    if estimated {
        s += "Energy is **estimated** from counted FLOPs and bytes moved (no RAPL meter readable here; constants in `src/train/energy.rs`).\n\n";
    }
    let mut groups: BTreeMap<(String, String, String), Vec<&Value>> = BTreeMap::new();
    for a in &arms {
        let k = |x: &str| a[x].as_str().unwrap_or_default().to_string();
        groups
            .entry((k("dataset"), k("model"), k("optimizer")))
            .or_default()
            .push(a);
    }
    for ((dataset, model, optimizer), list) in groups {
        s += &format!("## {dataset}, `{model}`, {optimizer}\n\n");
        s += "| technique | accuracy vs BP | training speed | memory | energy |\n|---|---|---|---|---|\n";
        for a in &list {
            let acc = &a["test_accuracy"];
            let accm = acc["mean"].as_f64().unwrap_or(f64::NAN) * 100.0;
            let sd = acc["sd"]
                .as_f64()
                .map(|x| format!(" ± {:.2}", x * 100.0))
                .unwrap_or_default();
            let spe = a["seconds_per_epoch"]["mean"].as_f64().unwrap_or(f64::NAN);
            let mem = a["memory_bytes"]["mean"].as_f64().unwrap_or(f64::NAN);
            let en = a["energy_joules"]["mean"].as_f64().unwrap_or(f64::NAN);
            let est = if a["energy_source"] == "estimated" {
                " est."
            } else {
                ""
            };
            let failed = a["failed"].as_u64().unwrap_or(0);
            let rule = a["rule"].as_str().unwrap_or("");
            let (accw, speedw, memw, enw) = match a.get("vs_bp") {
                Some(v) if rule != "bp" => {
                    let d = v["accuracy_difference"].as_f64().unwrap_or(f64::NAN) * 100.0;
                    let ci = v["accuracy_difference_ci95"]
                        .as_array()
                        .map(|c| {
                            format!(
                                ", 95% CI [{:+.2}, {:+.2}]",
                                c[0].as_f64().unwrap_or(f64::NAN) * 100.0,
                                c[1].as_f64().unwrap_or(f64::NAN) * 100.0
                            )
                        })
                        .unwrap_or_default();
                    let word = if d.abs() <= 0.5 {
                        "≈ BP"
                    } else if d > 0.0 {
                        "higher"
                    } else if d > -5.0 {
                        "lower"
                    } else {
                        "much lower"
                    };
                    let t = v["time_ratio"].as_f64().unwrap_or(f64::NAN);
                    let tw = if t < 0.9 {
                        "faster"
                    } else if t > 1.1 {
                        "slower"
                    } else {
                        "≈ BP"
                    };
                    let mr = v["memory_ratio"].as_f64().unwrap_or(f64::NAN);
                    let er = v["energy_ratio"].as_f64().unwrap_or(f64::NAN);
                    (
                        format!("{word} ({accm:.2}%{sd}; {d:+.2} pts{ci})"),
                        format!("{tw} ({} s/epoch, {t:.2}× BP)", sig(spe)),
                        format!("{} ({}, {mr:.2}× BP)", word_ratio(mr), mb(mem)),
                        format!("{} ({} J{est}, {er:.2}× BP)", word_ratio(er), sig(en)),
                    )
                }
                _ => (
                    format!("reference ({accm:.2}%{sd})"),
                    format!("{} s/epoch", sig(spe)),
                    mb(mem),
                    format!("{} J{est}", sig(en)),
                ),
            };
            let note = if failed > 0 {
                format!(" ({failed} run(s) failed)")
            } else {
                String::new()
            };
            s += &format!("| {rule}{note} | {accw} | {speedw} | {memw} | {enw} |\n");
        }
        s += "\n";
    }
    s += "Accuracy: final test accuracy, mean ± sd over seeds; the difference to BP is paired by seed (same minibatch stream), with a 95% paired-t interval when there are two or more seeds. Memory: parameters + optimizer state + activations kept for the update + rule state. Words: within ±0.5 pts is \"≈ BP\"; speed, memory and energy ratios within 10% are \"≈ BP\".\n\n";
    s += "Charts: `accuracy_vs_epoch.svg`, `accuracy_vs_seconds.svg`, `memory.svg`, `alignment.svg`. Per-run numbers: `results.csv`, `results.json`.\n";
    s
}

/// An arm's name in a chart: dataset, rule, optimizer, leaving out the fields every
/// arm of `all` shares (a suite over one dataset and optimizer names its rules only).
fn label_among(r: &Value, all: &[&Value]) -> String {
    let a = &r["arm"];
    let parts: Vec<&str> = ["dataset", "rule", "optimizer"]
        .iter()
        .filter(|k| all.len() < 2 || all.iter().any(|o| o["arm"][**k] != a[**k]))
        .filter_map(|k| a[*k].as_str())
        .collect();
    if parts.is_empty() {
        a["rule"].as_str().unwrap_or("").to_string()
    } else {
        parts.join(" ")
    }
}

/// The SVG charts (seed 0 of every arm; memory of the first seed).
pub fn charts(out: &Path, rows: &[Value]) -> Result<()> {
    let first: Vec<&Value> = rows
        .iter()
        .filter(|r| r["status"] == "ok" && r["seed"] == 0)
        .collect();
    let series = |x: &str| -> Vec<(String, Vec<(f64, f64)>)> {
        first
            .iter()
            .map(|r| {
                let pts = r["curve"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| Some((f(&p[x])?, f(&p["test_accuracy"])? * 100.0)))
                    .collect();
                (label_among(r, &first), pts)
            })
            .collect()
    };
    plot::lines(
        &out.join("accuracy_vs_epoch.svg"),
        "Test accuracy by epoch (seed 0)",
        "epoch",
        "test accuracy (%)",
        &series("epoch"),
    )?;
    plot::lines(
        &out.join("accuracy_vs_seconds.svg"),
        "Test accuracy by training time (seed 0)",
        "training seconds",
        "test accuracy (%)",
        &series("elapsed_seconds"),
    )?;
    const PARTS: [(&str, &str); 4] = [
        ("parameters", "parameter_bytes"),
        ("optimizer state", "optimizer_state_bytes"),
        ("activations (one step)", "activation_bytes_per_step"),
        ("rule state", "rule_state_bytes"),
    ];
    let mem: Vec<(String, Vec<f64>)> = first
        .iter()
        .filter_map(|r| {
            let m = &r["summary"]["memory"];
            Some((
                label_among(r, &first),
                PARTS
                    .iter()
                    .map(|(_, k)| f(&m[*k]).map(|b| b / 1e6))
                    .collect::<Option<Vec<f64>>>()?,
            ))
        })
        .collect();
    plot::stacked_bars(
        &out.join("memory.svg"),
        "Memory by part (seed 0)",
        "MB",
        &PARTS.map(|p| p.0),
        &mem,
    )?;
    let align: Vec<(String, Vec<(f64, f64)>)> = first
        .iter()
        .filter(|r| r["alignment"].as_array().is_some_and(|a| !a.is_empty()))
        .map(|r| {
            let pts = r["alignment"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((f(&p["step"])?, f(&p["mean_hidden_angle_deg"])?)))
                .collect();
            (label_among(r, &first), pts)
        })
        .collect();
    plot::lines(
        &out.join("alignment.svg"),
        "Angle between the rule's update and the BP gradient (hidden layers, mean)",
        "step",
        "angle (degrees)",
        &align,
    )
}

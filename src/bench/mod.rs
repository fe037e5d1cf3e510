//! The comparative benchmark: suites of arms (rule × optimizer × model × dataset × seed)
//! on identical minibatch streams, with accuracy, speed, memory and energy.
//!
//! Outputs in the run folder: `suite.toml` (the suite as run), `arms/<arm>/seed<N>/`
//! (each arm's training run), `results.json` (everything), `results.csv` (one row per
//! arm and seed), `report.md` (the comparison table), and SVG charts.

/// Energy metering lives with the trainer that meters each epoch.
pub use crate::train::energy;
pub mod plot;
mod report;
pub mod reproduce;
pub mod stats;
pub mod suite;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

pub use suite::{Arm, Suite};

use crate::data::Splits;
use crate::error::{Error, Result};
use crate::train::{self, TrainConfig};

/// How to run a suite.
#[derive(Debug, Clone, Default)]
pub struct BenchOptions {
    /// Built-in suite name or TOML file (ignored with `resume`).
    pub suite: String,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Download mirror.
    pub mirror: Option<String>,
    /// Output folder; default `runs/bench-<suite>`.
    pub out: Option<PathBuf>,
    /// No progress bars.
    pub quiet: bool,
    /// Continue the run in this folder, skipping finished arms.
    pub resume: Option<PathBuf>,
    /// Override the suite's number of seeds.
    pub seeds: Option<u64>,
    /// Worker threads per arm.
    pub threads: Option<usize>,
}

/// The CSV columns of `results.csv`, in order. Timing columns end in `_seconds` or
/// `_per_second`, or are the energy of a measured (RAPL) run.
pub const CSV_COLUMNS: &[&str] = &[
    "dataset",
    "model",
    "rule",
    "optimizer",
    "seed",
    "status",
    "epochs",
    "steps",
    "test_accuracy",
    "best_test_accuracy",
    "test_loss",
    "train_accuracy",
    "parameter_bytes",
    "optimizer_state_bytes",
    "activation_bytes_per_step",
    "rule_state_bytes",
    "peak_training_bytes_above_baseline",
    "flops_per_step",
    "bytes_moved_per_step",
    "energy_joules",
    "energy_source",
    "seconds_per_epoch",
    "samples_per_second",
];

fn arm_dir(out: &Path, arm: &Arm, seed: u64) -> PathBuf {
    out.join("arms").join(arm.id()).join(format!("seed{seed}"))
}

fn read_json(p: &Path) -> Result<Value> {
    let t = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
    serde_json::from_str(&t).map_err(|e| Error::format(p, e.to_string()))
}

/// One finished arm × seed: its summary and curves, read back from its folder.
fn collect_row(arm: &Arm, seed: u64, dir: &Path) -> Result<Value> {
    let failed = dir.join("failed.json");
    if failed.is_file() {
        let f = read_json(&failed)?;
        return Ok(json!({"arm": arm, "seed": seed, "status": "failed", "error": f["error"]}));
    }
    let summary = read_json(&dir.join("summary.json"))?;
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).map_err(|e| Error::io(dir, e))?;
    let mut curve = Vec::new();
    let mut alignment = Vec::new();
    let mut elapsed = 0.0;
    for line in text.lines() {
        let r: Value = serde_json::from_str(line)
            .map_err(|e| Error::format(dir.join("metrics.jsonl"), e.to_string()))?;
        if r["type"] == "epoch" {
            elapsed += r["epoch_seconds"].as_f64().unwrap_or(0.0);
            curve.push(json!({"epoch": r["epoch"], "test_accuracy": r["test_accuracy"], "elapsed_seconds": elapsed, "samples_per_second": r["samples_per_second"]}));
        } else if r["type"] == "diagnostics" {
            // Mean angle over hidden layers (the output layer always gets the true gradient).
            let layers = r["layers"].as_array().cloned().unwrap_or_default();
            let hidden: Vec<f64> = layers
                .iter()
                .take(layers.len().saturating_sub(1))
                .filter_map(|l| l["angle_to_bp_deg"].as_f64())
                .collect();
            if !hidden.is_empty() {
                alignment.push(json!({"step": r["step"], "mean_hidden_angle_deg": hidden.iter().sum::<f64>() / hidden.len() as f64}));
            }
        }
    }
    Ok(
        json!({"arm": arm, "seed": seed, "status": "ok", "summary": summary, "curve": curve, "alignment": alignment}),
    )
}

/// Runs (or resumes) a suite and writes its outputs. Returns `results.json`'s content.
pub fn run(opts: &BenchOptions) -> Result<Value> {
    let (mut suite, out) = match &opts.resume {
        Some(dir) => {
            let p = dir.join("suite.toml");
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
            (Suite::parse(&text, &p.display().to_string())?, dir.clone())
        }
        None => {
            let s = Suite::load(&opts.suite)?;
            let out = opts
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from("runs").join(format!("bench-{}", s.name)));
            (s, out)
        }
    };
    if let Some(n) = opts.seeds {
        if n == 0 {
            return Err(Error::config("seeds", "must be at least 1"));
        }
        suite.seeds = n;
    }
    // Every arm's settings are checked before anything is written or run.
    for arm in &suite.arms() {
        arm_config(&suite, arm, 0, &arm_dir(&out, arm, 0), opts)?;
    }
    // Under mpirun every rank trains every arm (the ranks of one data-parallel run) and
    // rank 0 alone touches the files.
    let lead = train::comm::world().rank() == 0;
    if lead {
        std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
        let suite_text =
            toml::to_string(&suite).map_err(|e| Error::config("suite", e.to_string()))?;
        train::checkpoint::write_atomic(&out.join("suite.toml"), suite_text.as_bytes())?;
    }

    let arms = suite.arms();
    let total = arms.len() as u64 * suite.seeds;
    let multi = MultiProgress::new();
    if opts.quiet || !std::io::stderr().is_terminal() {
        multi.set_draw_target(ProgressDrawTarget::hidden());
    }
    let bar = multi.add(ProgressBar::new(total));
    if let Ok(style) =
        ProgressStyle::with_template("suite {prefix} [{bar:30}] {pos}/{len} arms {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(suite.name.clone());
    // The suite's time left: the mean time of the runs done in this invocation × the
    // runs still to do (resumed runs cost nothing and are not counted).
    let (suite_start, mut ran) = (std::time::Instant::now(), 0u32);
    let mut remaining = total;
    let mut rows = Vec::new();
    // The loaded data and what it was loaded with (arms of one dataset share it).
    let mut data: Option<(String, Splits)> = None;
    for arm in &arms {
        for seed in 0..suite.seeds {
            let dir = arm_dir(&out, arm, seed);
            let left = if ran == 0 {
                "suite time left: estimating".to_string()
            } else {
                let per = suite_start.elapsed().as_secs_f64() / f64::from(ran);
                format!(
                    "suite time left ~{}",
                    indicatif::HumanDuration(std::time::Duration::from_secs_f64(
                        per * remaining as f64
                    ))
                )
            };
            bar.set_message(format!(
                "{} {} seed {seed} · {left}",
                arm.rule, arm.optimizer
            ));
            let done = dir.join("summary.json").is_file() || dir.join("failed.json").is_file();
            if !(opts.resume.is_some() && done) {
                if lead && dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
                }
                run_arm(&suite, arm, seed, &dir, opts, &mut data, &multi)?;
                if train::stop_requested() {
                    // The arm was cut short: not a result; --resume runs it again.
                    let _ = std::fs::remove_file(dir.join("summary.json"));
                    return Err(Error::Interrupted {
                        msg: format!(
                            "the suite stopped during {} {} seed {seed}; the finished arms are kept in {}: continue with --resume {}",
                            arm.rule,
                            arm.optimizer,
                            out.display(),
                            out.display()
                        ),
                    });
                }
                ran += 1;
            }
            remaining -= 1;
            if lead {
                rows.push(collect_row(arm, seed, &dir)?);
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let results = report::results(&suite, &rows);
    if !lead {
        return Ok(results);
    }
    let text = serde_json::to_string_pretty(&results)
        .map_err(|e| Error::config("results", e.to_string()))?;
    train::checkpoint::write_atomic(&out.join("results.json"), text.as_bytes())?;
    train::checkpoint::write_atomic(&out.join("results.csv"), report::csv(&rows).as_bytes())?;
    train::checkpoint::write_atomic(
        &out.join("report.md"),
        report::markdown(&suite, &results).as_bytes(),
    )?;
    report::charts(&out, &rows)?;
    Ok(results)
}

/// The training configuration of one arm and seed, from the suite's layers.
fn arm_config(
    suite: &Suite,
    arm: &Arm,
    seed: u64,
    dir: &Path,
    opts: &BenchOptions,
) -> Result<TrainConfig> {
    let mut layers = suite.layers(arm)?;
    layers.push(json!({
        "dataset": arm.dataset,
        "model": arm.model,
        "rule": arm.rule,
        "optimizer": arm.optimizer,
        "seed": seed,
        "epochs": suite.epochs,
        "max_seconds": suite.seconds,
        "diag_every": if arm.rule == "bp" { 0 } else { suite.diag_every },
        "out": dir,
        "quiet": true,
        "data_dir": opts.data_dir,
        "mirror": opts.mirror,
        "threads": opts.threads,
    }));
    TrainConfig::fresh(&layers).map_err(|e| {
        Error::config(
            format!("suite {}", suite.name),
            format!(
                "arm {} {} {} {}: {e}",
                arm.dataset, arm.model, arm.rule, arm.optimizer
            ),
        )
    })
}

fn run_arm(
    suite: &Suite,
    arm: &Arm,
    seed: u64,
    dir: &Path,
    opts: &BenchOptions,
    data: &mut Option<(String, Splits)>,
    multi: &MultiProgress,
) -> Result<()> {
    let cfg = arm_config(suite, arm, seed, dir, opts)?;
    // Loaded again when an arm reads it otherwise: another dataset, or the input
    // scaling its rule recommends (EqProp's unit inputs).
    let key = format!(
        "{} {} {} {:?} {:?}",
        cfg.dataset, cfg.normalize, cfg.validation, cfg.train_limit, cfg.test_limit
    );
    if data.as_ref().is_none_or(|(k, _)| *k != key) {
        *data = Some((key, train::load_data(&cfg)?));
    }
    let splits = data
        .as_ref()
        .map(|(_, s)| s)
        .ok_or_else(|| Error::config("data", "not loaded"))?;
    let threads = cfg.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    // A fresh pool per arm: per-thread kernel workspaces are allocated (and counted) anew.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| Error::config("threads", e.to_string()))?;
    match pool.install(|| train::run_with(&cfg, splits, None, Some(multi))) {
        Ok(_) => Ok(()),
        // A diverging or failing arm is a result, not the end of the suite.
        Err(
            e @ (Error::NonFinite { .. }
            | Error::Shape { .. }
            | Error::Config { .. }
            | Error::UnknownName { .. }),
        ) => {
            if train::comm::world().rank() != 0 {
                return Ok(());
            }
            std::fs::create_dir_all(dir).map_err(|err| Error::io(dir, err))?;
            let f = json!({"error": e.to_string()});
            train::checkpoint::write_atomic(&dir.join("failed.json"), f.to_string().as_bytes())
        }
        Err(e) => Err(e),
    }
}

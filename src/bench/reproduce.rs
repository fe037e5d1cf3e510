//! The registry of published results and the runs that check them
//! (`reproduce/registry.toml`, compiled into the binary).
//!
//! A row is one published number (a test error, in %) with the paper's setting, our
//! recipe, the differences between the two, a tolerance and seeds. Checking a row trains
//! the recipe once per seed into `out/<row>/seed-<s>/` and compares the mean test error
//! with the paper's: PASS when |mean − paper| ≤ tolerance. The band is two-sided on
//! purpose: a result far better than the paper's is as much a sign of a different
//! setting as one far worse. A finished seed leaves `out/<row>/seed-<s>.json`, so an
//! interrupted check resumes (`--resume`) from the seeds it has and, inside a seed, from
//! the run's last checkpoint.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::train::{self, TrainConfig};

/// The registry text shipped with futureprop.
pub const REGISTRY: &str = include_str!("../../reproduce/registry.toml");

/// Where a row's number comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Anchor {
    /// A number printed in the paper.
    Paper,
    /// A peer library's number at identical settings, measured by `peer_script`.
    Peer,
}

/// What a row measures (in %, the unit of its published number and tolerance).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Test error after the last epoch.
    #[default]
    TestError,
    /// The test inputs' variance captured by the row space of the model's single Linear
    /// layer, as % of the top principal subspace's ([`crate::diag::subspace_variance`]).
    SubspaceVariance,
}

impl Metric {
    /// The key of a seed record (and of a train summary's derived value) holding it.
    pub fn key(self) -> &'static str {
        match self {
            Metric::TestError => "test_error",
            Metric::SubspaceVariance => "subspace_variance",
        }
    }

    /// How the metric reads in a report.
    pub fn label(self) -> &'static str {
        match self {
            Metric::TestError => "test error",
            Metric::SubspaceVariance => "variance captured vs PCA",
        }
    }
}

/// The paper's setting, as the paper states it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaperSetting {
    /// Layers, units and activations.
    pub architecture: String,
    /// Training and test data, preprocessing included.
    pub data: String,
    /// Optimizer and its settings.
    pub optimizer: String,
    /// Training length.
    pub epochs: String,
    /// Minibatch size.
    pub batch: String,
}

/// One published result and our recipe for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Short unique name.
    pub name: String,
    /// The techniques (rules, optimizers) this row checks.
    pub checks: Vec<String>,
    /// Citation.
    pub paper: String,
    /// The exact table or figure.
    pub source: String,
    /// Where the number comes from.
    pub anchor: Anchor,
    /// The script that measured a peer's number (`anchor = "peer"`).
    #[serde(default)]
    pub peer_script: Option<String>,
    /// Dataset name.
    pub dataset: String,
    /// What the row measures (default: the test error).
    #[serde(default)]
    pub metric: Metric,
    /// The published number, %: a test error unless `metric` says otherwise.
    pub paper_test_error: f64,
    /// The spread the paper reports with it (one standard deviation, pp), if any.
    #[serde(default)]
    pub paper_spread: Option<f64>,
    /// Allowed |ours − paper| in pp; default [`Entry::tolerance`]'s rule.
    #[serde(default)]
    pub tolerance: Option<f64>,
    /// The paper's setting.
    pub paper_setting: PaperSetting,
    /// Every way our recipe differs from the paper's setting (empty: identical).
    #[serde(default)]
    pub differences: Vec<String>,
    /// Seeds to run.
    pub seeds: Vec<u64>,
    /// Estimated minutes per seed on this project's 2-core reference machine.
    pub minutes_per_seed: f64,
    /// `futureprop train` settings of our recipe.
    pub recipe: toml::Table,
}

impl Entry {
    /// The allowed |ours − paper| in pp: the row's own, else (paper rows) the paper's spread, else
    /// 0.3 pp for errors under 3 % and 1 pp otherwise.
    pub fn tolerance(&self) -> f64 {
        // A peer's spread is our own few-seed sd, which understates the spread of a
        // difference of two few-seed means; peer rows take the rule of thumb.
        let spread = (self.anchor == Anchor::Paper)
            .then_some(self.paper_spread)
            .flatten();
        self.tolerance
            .or(spread)
            .unwrap_or(if self.paper_test_error < 3.0 {
                0.3
            } else {
                1.0
            })
    }

    /// Estimated minutes for all seeds.
    pub fn minutes(&self) -> f64 {
        self.minutes_per_seed * self.seeds.len() as f64
    }

    /// The training configuration of one seed, run into `dir`.
    pub fn config(&self, seed: u64, dir: &Path, overrides: &[Value]) -> Result<TrainConfig> {
        let recipe =
            crate::settings::toml_layer(&format!("registry row {}", self.name), &self.recipe)?;
        let mut layers = vec![json!({"dataset": self.dataset}), recipe];
        layers.extend(overrides.iter().cloned());
        layers.push(json!({"seed": seed, "out": dir}));
        TrainConfig::fresh(&layers)
            .map_err(|e| Error::config(format!("registry row {}", self.name), e.to_string()))
    }

    fn check(&self, known: &[&str]) -> Result<()> {
        let what = format!("registry row {}", self.name);
        let bad = |msg: String| Err(Error::config(&what, msg));
        if self.seeds.is_empty() {
            return bad("needs at least one seed".into());
        }
        if self.checks.is_empty() {
            return bad("`checks` names no technique".into());
        }
        if let Some(c) = self.checks.iter().find(|c| !known.contains(&c.as_str())) {
            return Err(Error::unknown("technique in `checks`", c, known));
        }
        if !(self.paper_test_error.is_finite() && self.paper_test_error >= 0.0) {
            return bad(format!("paper_test_error {}", self.paper_test_error));
        }
        if self.tolerance() <= 0.0 || !self.tolerance().is_finite() {
            return bad(format!("tolerance {} must be positive", self.tolerance()));
        }
        if self.anchor == Anchor::Peer && self.peer_script.is_none() {
            return bad("a peer anchor names its `peer_script`".into());
        }
        if self.minutes_per_seed.is_nan() || self.minutes_per_seed <= 0.0 {
            return bad("minutes_per_seed must be positive".into());
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Registry {
    result: Vec<Entry>,
}

/// Parses and checks a registry (`origin` names it in errors).
pub fn parse(text: &str, origin: &str) -> Result<Vec<Entry>> {
    let r: Registry = toml::from_str(text).map_err(|e| Error::format(origin, e.to_string()))?;
    // A row checks rules, optimizers, or RBM pretraining (`pretrain = "rbm"`).
    let mut known = crate::rule::names();
    known.extend(crate::optim::names());
    known.push("rbm");
    for (i, e) in r.result.iter().enumerate() {
        e.check(&known)?;
        if r.result[..i].iter().any(|o| o.name == e.name) {
            return Err(Error::format(origin, format!("row {} twice", e.name)));
        }
    }
    Ok(r.result)
}

/// The built-in registry.
pub fn registry() -> Result<Vec<Entry>> {
    parse(REGISTRY, "reproduce/registry.toml")
}

/// Reads a registry file.
pub fn load(path: &Path) -> Result<Vec<Entry>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse(&text, &path.display().to_string())
}

/// Selects entries by name (all when `names` is empty), in registry order.
pub fn select(entries: &[Entry], names: &[String]) -> Result<Vec<Entry>> {
    let known: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    if let Some(n) = names.iter().find(|n| !known.contains(&n.as_str())) {
        return Err(Error::unknown("registry row", n, &known));
    }
    Ok(entries
        .iter()
        .filter(|e| names.is_empty() || names.contains(&e.name))
        .cloned()
        .collect())
}

/// The credit-assignment rules no row checks.
pub fn unchecked_rules(entries: &[Entry]) -> Vec<&'static str> {
    crate::rule::names()
        .into_iter()
        .filter(|r| !entries.iter().any(|e| e.checks.iter().any(|c| c == r)))
        .collect()
}

/// The rows, in registry order, whose estimated cost still fits in `hours` once the
/// rows before them are taken (a row that does not fit is skipped, later smaller ones
/// may still fit).
pub fn within_budget(entries: &[Entry], hours: f64) -> Result<Vec<Entry>> {
    if hours.is_nan() || hours <= 0.0 {
        return Err(Error::config(
            "--budget-hours",
            format!("{hours} must be positive"),
        ));
    }
    let mut left = hours * 60.0;
    let picked: Vec<Entry> = entries
        .iter()
        .filter(|e| {
            let fits = e.minutes() <= left;
            if fits {
                left -= e.minutes();
            }
            fits
        })
        .cloned()
        .collect();
    if picked.is_empty() {
        let cheapest = entries
            .iter()
            .min_by(|a, b| a.minutes().total_cmp(&b.minutes()))
            .map(|e| {
                format!(
                    "; the cheapest row, {}, needs {:.0} min",
                    e.name,
                    e.minutes()
                )
            })
            .unwrap_or_default();
        return Err(Error::config(
            "--budget-hours",
            format!("no row fits in {hours} h{cheapest}"),
        ));
    }
    Ok(picked)
}

/// How a check runs.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Output folder.
    pub out: PathBuf,
    /// Keep finished seeds and continue interrupted ones from their checkpoints.
    pub resume: bool,
    /// Train settings applied over every recipe (data directory, threads, budget cuts).
    pub overrides: Vec<Value>,
    /// No progress display.
    pub quiet: bool,
}

/// Train settings that shorten a recipe's budget: a check with any of them set gives
/// no verdict.
const BUDGET_KEYS: [&str; 5] = [
    "epochs",
    "max_steps",
    "max_seconds",
    "train_limit",
    "test_limit",
];

fn reduces_budget(overrides: &[Value]) -> bool {
    overrides.iter().filter_map(Value::as_object).any(|o| {
        o.iter()
            .any(|(k, v)| !v.is_null() && BUDGET_KEYS.contains(&k.as_str()))
    })
}

/// Process CPU time (user + system), seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return f64::NAN;
    }
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 * 1e-6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Wall seconds of training and evaluation kept in a run's `metrics.jsonl` (the last
/// record of each epoch counts: a resumed run may have logged an epoch twice).
fn run_seconds(dir: &Path) -> f64 {
    let Ok(text) = std::fs::read_to_string(dir.join("metrics.jsonl")) else {
        return f64::NAN;
    };
    let mut by_epoch = std::collections::BTreeMap::new();
    for v in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        if v["type"] == "epoch" {
            let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
            by_epoch.insert(
                v["epoch"].as_u64().unwrap_or(0),
                f("epoch_seconds") + f("eval_seconds") + f("diagnostics_seconds"),
            );
        }
    }
    by_epoch.values().sum()
}

/// The rows and the budget overrides of the run in `out` (its plan.json), for `--resume`
/// without a row selection.
pub fn read_plan(out: &Path) -> Result<(Vec<String>, Value)> {
    let plan = read_json(&out.join("plan.json"))?;
    let rows = string_list(&plan["rows"]);
    Ok((
        rows,
        plan["overrides"].get(0).cloned().unwrap_or(Value::Null),
    ))
}

/// The strings of a JSON array (none when it is not one).
fn string_list(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(String::from))
        .collect()
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, e.to_string()))
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text =
        serde_json::to_string_pretty(v).map_err(|e| Error::config("results", e.to_string()))?;
    train::checkpoint::write_atomic(path, text.as_bytes())
}

/// What a seed's result depends on: the recipe and the budget overrides. Where the data
/// lives and how many threads ran it do not count, so a run resumes on another machine.
fn fingerprint(e: &Entry, overrides: &[Value]) -> Value {
    let kept: Vec<Value> = overrides
        .iter()
        .map(|o| match o.as_object() {
            Some(m) => Value::Object(
                m.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "data_dir" | "threads"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            None => o.clone(),
        })
        .collect();
    json!({"dataset": e.dataset, "recipe": e.recipe, "overrides": kept})
}

/// Trains one seed (resuming its checkpoint when asked) and returns its record.
fn run_seed(e: &Entry, seed: u64, opts: &CheckOptions, multi: &MultiProgress) -> Result<Value> {
    let dir = opts.out.join(&e.name).join(format!("seed-{seed}"));
    let ckpt = dir.join(train::checkpoint::FILE);
    let resumed = opts.resume && ckpt.is_file() && !dir.join("summary.json").is_file();
    if !resumed && dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|err| Error::io(&dir, err))?;
    }
    let mut overrides = opts.overrides.clone();
    overrides.push(json!({"quiet": true}));
    let cfg = e.config(seed, &dir, &overrides)?;
    let cpu0 = cpu_seconds();
    let mut ran = train::train_with(&cfg, resumed.then_some(ckpt.as_path()), Some(multi));
    // Stopped between its last checkpoint and its summary: train it again.
    if let Err(Error::NothingToDo { .. }) = ran {
        std::fs::remove_dir_all(&dir).map_err(|err| Error::io(&dir, err))?;
        ran = train::train_with(&cfg, None, Some(multi));
    }
    let cpu = cpu_seconds() - cpu0;
    let mut rec = json!({
        "row": e.name, "seed": seed, "fingerprint": fingerprint(e, &opts.overrides),
        "seconds": run_seconds(&dir), "cpu_seconds": cpu, "resumed": resumed,
    });
    match ran {
        Ok(s) => {
            let err = |k: &str| 100.0 * (1.0 - s[k].as_f64().unwrap_or(f64::NAN));
            rec["status"] = json!("ok");
            rec["test_error"] = json!(err("test_accuracy"));
            rec["best_test_error"] = json!(err("best_test_accuracy"));
            rec["epochs"] = s["epochs"].clone();
            if e.metric == Metric::SubspaceVariance {
                rec["subspace_variance"] = json!(trained_subspace_variance(&cfg, &dir)?);
            }
        }
        // A diverging seed is a result (the row fails), not the end of the check.
        Err(err @ Error::NonFinite { .. }) => {
            rec["status"] = json!("diverged");
            rec["error"] = json!(err.to_string());
        }
        Err(err) => return Err(err),
    }
    Ok(rec)
}

/// [`Metric::SubspaceVariance`] of the run in `dir`: its last checkpoint's single weight
/// matrix on the test inputs.
fn trained_subspace_variance(cfg: &TrainConfig, dir: &Path) -> Result<f64> {
    let ck = train::checkpoint::load(&dir.join(train::checkpoint::FILE))?;
    let weights: Vec<_> = ck
        .params
        .iter()
        .filter(|(k, _)| k.ends_with(".weight"))
        .collect();
    let [(_, w)] = weights.as_slice() else {
        return Err(Error::config(
            "metric subspace_variance",
            format!(
                "needs a model with one weight matrix (linear:IN-K), this one has {}",
                weights.len()
            ),
        ));
    };
    let splits = train::load_data(cfg)?;
    crate::diag::subspace_variance(w, &splits.test.x)
}

fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let sd = if xs.len() > 1 {
        (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (m, sd)
}

/// The row's record from its seeds' records.
pub fn verdict(e: &Entry, seeds: &[Value], reduced: bool) -> Value {
    let errs: Vec<f64> = seeds
        .iter()
        .filter(|s| s["status"] == "ok")
        .filter_map(|s| s[e.metric.key()].as_f64())
        .collect();
    let all_ok = errs.len() == seeds.len() && errs.iter().all(|v| v.is_finite());
    let (mean, sd) = if all_ok {
        mean_sd(&errs)
    } else {
        (f64::NAN, f64::NAN)
    };
    let tol = e.tolerance();
    let verdict = if reduced {
        "reduced budget"
    } else if all_ok && (mean - e.paper_test_error).abs() <= tol {
        "PASS"
    } else {
        "FAIL"
    };
    let sum = |k: &str| {
        seeds
            .iter()
            .filter_map(|s| s[k].as_f64())
            .filter(|v| v.is_finite())
            .sum::<f64>()
    };
    json!({
        "row": e.name, "checks": e.checks, "paper": e.paper, "source": e.source,
        "anchor": e.anchor, "peer_script": e.peer_script, "dataset": e.dataset,
        "metric": e.metric.key(),
        "paper_test_error": e.paper_test_error, "paper_spread": e.paper_spread,
        "tolerance": tol, "ours_mean": if all_ok { json!(mean) } else { Value::Null },
        "ours_sd": if all_ok { json!(sd) } else { Value::Null },
        "difference": if all_ok { json!(mean - e.paper_test_error) } else { Value::Null },
        "seeds": seeds, "verdict": verdict,
        "seconds": sum("seconds"), "cpu_seconds": sum("cpu_seconds"),
        "paper_setting": e.paper_setting, "differences": e.differences,
    })
}

/// Checks `entries` seed by seed, writing `out/results.json` and `out/results.md`.
/// Returns the report (`rows`, totals, counts).
pub fn check(entries: &[Entry], opts: &CheckOptions) -> Result<Value> {
    for e in entries {
        e.config(e.seeds[0], &opts.out, &opts.overrides)?;
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    write_json(
        &opts.out.join("plan.json"),
        &json!({"rows": names, "overrides": opts.overrides}),
    )?;
    let reduced = reduces_budget(&opts.overrides);
    let multi = MultiProgress::new();
    let visible = !opts.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    if !visible {
        multi.set_draw_target(ProgressDrawTarget::hidden());
    }
    let total: usize = entries.iter().map(|e| e.seeds.len()).sum();
    let bar = multi.add(ProgressBar::new(total as u64));
    if let Ok(style) = ProgressStyle::with_template("reproduce [{bar:30}] {pos}/{len} seeds {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    // Time left: the estimates of the seeds still to run, scaled by how the seeds run in
    // this invocation compared with their estimates.
    let (mut spent, mut estimated) = (0.0f64, 0.0f64);
    let mut left_min: f64 = entries.iter().map(Entry::minutes).sum();
    let mut rows = Vec::new();
    for e in entries {
        let mut seeds = Vec::new();
        for &seed in &e.seeds {
            let done = opts.out.join(&e.name).join(format!("seed-{seed}.json"));
            let kept = if opts.resume && done.is_file() {
                let r = read_json(&done)?;
                (r["fingerprint"] == fingerprint(e, &opts.overrides)).then_some(r)
            } else {
                None
            };
            let rec = match kept {
                Some(r) => r,
                None => {
                    let scale = if estimated > 0.0 {
                        spent / estimated
                    } else {
                        1.0
                    };
                    let left = std::time::Duration::from_secs_f64(left_min * 60.0 * scale);
                    let msg = format!(
                        "· {} seed {seed} · time left ~{}",
                        e.name,
                        HumanDuration(left)
                    );
                    bar.set_message(msg.clone());
                    if !opts.quiet && !visible {
                        eprintln!("reproduce: {msg}");
                    }
                    let t = Instant::now();
                    let r = run_seed(e, seed, opts, &multi)?;
                    if crate::train::stop_requested() {
                        // The seed was cut short: not a result; --resume runs it again.
                        return Err(Error::Interrupted {
                            msg: format!(
                                "stopped during {} seed {seed}; the finished seeds are kept in {}: continue with --resume {}",
                                e.name,
                                opts.out.display(),
                                opts.out.display()
                            ),
                        });
                    }
                    spent += t.elapsed().as_secs_f64();
                    estimated += e.minutes_per_seed * 60.0;
                    write_json(&done, &r)?;
                    r
                }
            };
            left_min -= e.minutes_per_seed;
            bar.inc(1);
            seeds.push(rec);
        }
        let row = verdict(e, &seeds, reduced);
        if !opts.quiet {
            bar.suspend(|| {
                eprintln!(
                    "reproduce: {} {} (paper {:.2} %, ours {})",
                    e.name,
                    row["verdict"].as_str().unwrap_or(""),
                    e.paper_test_error,
                    ours_text(&row)
                )
            });
        }
        rows.push(row);
    }
    bar.finish_and_clear();
    let count = |v: &str| rows.iter().filter(|r| r["verdict"] == v).count();
    let sum = |k: &str| rows.iter().filter_map(|r| r[k].as_f64()).sum::<f64>();
    let report = json!({
        "rows": rows, "pass": count("PASS"), "fail": count("FAIL"),
        "reduced_budget": reduced, "seconds": sum("seconds"), "cpu_seconds": sum("cpu_seconds"),
        "threads": opts.overrides.iter().find_map(|o| o["threads"].as_u64()),
    });
    write_json(&opts.out.join("results.json"), &report)?;
    train::checkpoint::write_atomic(&opts.out.join("results.md"), markdown(&report).as_bytes())?;
    Ok(report)
}

fn ours_text(row: &Value) -> String {
    let n = row["seeds"].as_array().map_or(0, Vec::len);
    match (row["ours_mean"].as_f64(), row["ours_sd"].as_f64()) {
        (Some(m), Some(sd)) if n > 1 => format!("{m:.2} ± {sd:.2} ({n} seeds)"),
        (Some(m), _) => format!("{m:.2} (1 seed)"),
        _ => {
            let bad = row["seeds"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|s| s["status"] != "ok")
                .count();
            format!("{bad} of {n} seeds diverged")
        }
    }
}

fn hours(seconds: f64) -> String {
    if seconds >= 3600.0 {
        format!("{:.1} h", seconds / 3600.0)
    } else {
        format!("{:.1} min", seconds / 60.0)
    }
}

/// The report as a markdown table of paper vs ours.
pub fn markdown(report: &Value) -> String {
    let rows = report["rows"].as_array().cloned().unwrap_or_default();
    let mut s = String::from(
        "| row | checks | source | metric | paper % | tolerance pp | ours % (mean ± sd) | verdict | time | CPU time | differences from the paper |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        let paper = match r["paper_spread"].as_f64() {
            Some(sp) => format!(
                "{:.2} ± {sp:.2}",
                r["paper_test_error"].as_f64().unwrap_or(f64::NAN)
            ),
            None => format!("{:.2}", r["paper_test_error"].as_f64().unwrap_or(f64::NAN)),
        };
        let anchor = if r["anchor"] == "peer" {
            format!(" (peer: {})", r["peer_script"].as_str().unwrap_or(""))
        } else {
            String::new()
        };
        let (diffs, checks) = (string_list(&r["differences"]), string_list(&r["checks"]));
        let metric: Metric = serde_json::from_value(r["metric"].clone()).unwrap_or_default();
        s += &format!(
            "| {} | {} | {}{} | {} | {} | {:.2} | {} | {} | {} | {} | {} |\n",
            r["row"].as_str().unwrap_or(""),
            checks.join(", "),
            r["source"].as_str().unwrap_or(""),
            anchor,
            metric.label(),
            paper,
            r["tolerance"].as_f64().unwrap_or(f64::NAN),
            ours_text(r),
            r["verdict"].as_str().unwrap_or(""),
            hours(r["seconds"].as_f64().unwrap_or(f64::NAN)),
            hours(r["cpu_seconds"].as_f64().unwrap_or(f64::NAN)),
            if diffs.is_empty() {
                "none".to_string()
            } else {
                diffs.join("; ")
            },
        );
    }
    let n = rows.len();
    let pass = report["pass"].as_u64().unwrap_or(0);
    s += &format!(
        "\n{pass} of {n} rows PASS ({:.0} %); training time {}, CPU time {}{}.\n",
        if n > 0 {
            100.0 * pass as f64 / n as f64
        } else {
            0.0
        },
        hours(report["seconds"].as_f64().unwrap_or(0.0)),
        hours(report["cpu_seconds"].as_f64().unwrap_or(0.0)),
        report["threads"]
            .as_u64()
            .map(|t| format!(" at {t} thread{}", if t == 1 { "" } else { "s" }))
            .unwrap_or_default(),
    );
    if report["reduced_budget"] == true {
        s += "The budget was cut (--epochs or --train-limit): no verdict is given.\n";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, err: f64, spread: Option<f64>, minutes: f64) -> Entry {
        let mut e = registry().unwrap()[0].clone();
        e.name = name.into();
        e.paper_test_error = err;
        e.paper_spread = spread;
        e.tolerance = None;
        e.minutes_per_seed = minutes;
        e.seeds = vec![0];
        e
    }

    #[test]
    fn tolerance_is_the_rows_then_the_papers_spread_then_by_error_size() {
        assert_eq!(entry("a", 2.99, None, 1.0).tolerance(), 0.3);
        assert_eq!(entry("a", 3.0, None, 1.0).tolerance(), 1.0);
        assert_eq!(entry("a", 1.5, Some(0.12), 1.0).tolerance(), 0.12);
        let mut e = entry("a", 1.5, Some(0.12), 1.0);
        e.tolerance = Some(0.7);
        assert_eq!(e.tolerance(), 0.7);
        // A peer's few-seed sd is not a tolerance: the rule of thumb applies.
        let mut p = entry("a", 1.5, Some(0.12), 1.0);
        p.anchor = Anchor::Peer;
        assert_eq!(p.tolerance(), 0.3);
    }

    #[test]
    fn the_band_is_two_sided_and_a_diverged_seed_fails_the_row() {
        let e = entry("a", 2.0, None, 1.0);
        let seed = |v: f64| json!({"status": "ok", "test_error": v});
        let v = |s: &[Value]| verdict(&e, s, false)["verdict"].clone();
        assert_eq!(v(&[seed(2.25), seed(1.85)]), "PASS");
        assert_eq!(v(&[seed(2.35)]), "FAIL");
        assert_eq!(
            v(&[seed(1.65)]),
            "FAIL",
            "far better than the paper is no reproduction"
        );
        assert_eq!(v(&[seed(2.0), json!({"status": "diverged"})]), "FAIL");
        assert_eq!(verdict(&e, &[seed(9.0)], true)["verdict"], "reduced budget");
        let r = verdict(&e, &[seed(1.0), seed(3.0)], false);
        assert_eq!(
            (r["ours_mean"].as_f64(), r["ours_sd"].as_f64()),
            (Some(2.0), Some(2f64.sqrt()))
        );
    }

    #[test]
    fn a_budget_takes_rows_in_order_while_they_fit() {
        let rows = [
            entry("a", 1.0, None, 30.0),
            entry("b", 1.0, None, 50.0),
            entry("c", 1.0, None, 20.0),
        ];
        let names = |h: f64| -> Vec<String> {
            within_budget(&rows, h)
                .unwrap()
                .into_iter()
                .map(|e| e.name)
                .collect()
        };
        assert_eq!(names(1.0), ["a", "c"]);
        assert_eq!(names(100.0 / 60.0), ["a", "b", "c"]);
        assert_eq!(names(0.4), ["c"]);
        assert!(within_budget(&rows, 0.1).is_err());
        assert!(within_budget(&rows, -1.0).is_err());
    }

    #[test]
    fn a_registry_with_an_unknown_technique_or_no_seeds_is_refused() {
        let good = REGISTRY;
        let bad = good.replacen("checks = [\"bp\"]", "checks = [\"bpp\"]", 1);
        let err = parse(&bad, "r.toml").unwrap_err().to_string();
        assert!(
            err.contains("'bpp'") && err.contains("did you mean 'bp'"),
            "{err}"
        );
        let bad = good.replacen("seeds = [0, 1, 2]", "seeds = []", 1);
        let err = parse(&bad, "r.toml").unwrap_err().to_string();
        assert!(err.contains("at least one seed"), "{err}");
        let bad = good.replacen(
            "name = \"lillicrap2016-fa\"",
            "name = \"lillicrap2016-bp\"",
            1,
        );
        assert!(
            parse(&bad, "r.toml")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }
}

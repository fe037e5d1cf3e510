//! The training loop: epochs of rule steps and optimizer steps, evaluation, metrics,
//! checkpoints and resume.
//!
//! Outputs in the run folder: `metrics.jsonl` (one JSON record per epoch; every
//! time-valued field is named `*_seconds` or `*_per_second`), `summary.json` (final
//! figures and the resolved config) and `checkpoint.safetensors`.

mod accumulate;
mod averaging;
pub mod checkpoint;
pub mod comm;
mod config;
pub mod energy;
mod loss_scale;
mod meter;
mod objective;
pub mod pipeline;
pub mod pretrain;
mod records;
pub mod sparse;
mod trainer;

use std::io::{IsTerminal, Write};
use std::path::Path;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

pub use checkpoint::Checkpoint;
pub use config::TrainConfig;
pub use loss_scale::LossScaler;
pub use objective::RuleObjective;

use crate::data::{self, Batches, Dataset, Normalize, Splits};
use crate::error::{Error, Result};
use crate::nn::{Grads, Init, Loss, Model, ModelSpec, Params};
use crate::optim::build_optimizer;
use crate::rule::{Batch, Rule};

/// Loss and accuracy of a model on a dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Mean loss.
    pub loss: f64,
    /// Fraction classified correctly (NaN for real-valued targets).
    pub accuracy: f64,
}

/// Evaluates `rule.predict` on `data` in batches of `batch_size`.
pub fn evaluate(
    rule: &dyn Rule,
    model: &Model,
    params: &Params,
    data: &Dataset,
    loss: Loss,
    batch_size: usize,
) -> Result<Evaluation> {
    let (mut total, mut correct, mut n) = (0.0, Some(0usize), 0usize);
    for b in Batches::new(data, batch_size, false, 0, 0) {
        let b = b?;
        let out = rule.predict(model, params, &b.x)?;
        let (l, _) = loss.eval(&out, &b.target)?;
        let rows = b.target.len();
        total += l * rows as f64;
        correct = match (correct, count_correct(&out, &b)?) {
            (Some(a), Some(c)) => Some(a + c),
            _ => None,
        };
        n += rows;
    }
    let n = n.max(1) as f64;
    Ok(Evaluation {
        loss: total / n,
        // NaN (null in the JSON records) where the targets are real-valued.
        accuracy: correct.map_or(f64::NAN, |c| c as f64 / n),
    })
}

/// Rows classified correctly; `None` for real-valued targets (regression,
/// reconstruction), which have no accuracy.
fn count_correct(out: &crate::tensor::Tensor, b: &Batch) -> Result<Option<usize>> {
    match &b.target {
        crate::nn::Target::Classes(labels) => Ok(Some(
            out.argmax_rows()?
                .iter()
                .zip(labels)
                .filter(|(p, l)| p == l)
                .count(),
        )),
        crate::nn::Target::Values(_) => Ok(None),
    }
}

/// Set by [`request_stop`]: every run in the process ends its epoch at the next
/// minibatch, evaluates, records and checkpoints it, as at `max_seconds`.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Asks the runs in this process to stop cleanly (an interrupt from a caller: Python's
/// Ctrl-C).
pub fn request_stop() {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Clears [`request_stop`] (before a new run).
pub fn clear_stop() {
    STOP.store(false, std::sync::atomic::Ordering::SeqCst);
}

/// Whether [`request_stop`] was called since the last [`clear_stop`].
pub fn stop_requested() -> bool {
    STOP.load(std::sync::atomic::Ordering::SeqCst)
}

/// Names of the model's own parameters (not rule state, not averages).
pub fn model_param_names(model: &Model, params: &Params) -> Vec<String> {
    let prefixes: Vec<String> = model
        .layers()
        .iter()
        .map(|l| format!("{}.", l.name()))
        .collect();
    params
        .names()
        .iter()
        .filter(|n| prefixes.iter().any(|p| n.starts_with(p.as_str())))
        .cloned()
        .collect()
}

/// The rule's update on one batch, as an [`Objective`] optimizers can re-evaluate.
/// Loads the configured dataset, downloading it first when missing and allowed.
pub fn load_data(cfg: &TrainConfig) -> Result<Splits> {
    let root = data::resolve_data_dir(cfg.data_dir.as_deref());
    data::check_name(&cfg.dataset)?;
    if cfg.dataset == "cifar-10" || data::synthetic::adding_steps(&cfg.dataset).is_some() {
        // Not downloadable yet: cifar::load names what is missing and where to get it.
    } else if !data::is_present(&root, &cfg.dataset)? {
        let remote = data::download::remote(&cfg.dataset)?;
        if !cfg.download {
            return Err(Error::MissingData {
                msg: format!(
                    "{} is not in {} and --no-download is set; pass --data-dir DIR (a folder holding {}/), or fetch it first with `cargo run --release -- data fetch {}` (`futureprop data fetch {}` once installed; --mirror URL for another source)",
                    cfg.dataset,
                    root.display(),
                    cfg.dataset,
                    cfg.dataset,
                    cfg.dataset
                ),
            });
        }
        if !cfg.quiet {
            eprintln!(
                "fetching {} into {}",
                cfg.dataset,
                root.join(&cfg.dataset).display()
            );
        }
        data::download::fetch(&root, remote, cfg.mirror.as_deref()).map_err(|e| Error::MissingData {
            msg: format!(
                "{} is not in {} and downloading it failed ({e}); pass --data-dir DIR (a folder holding {}/) or --mirror URL (a server with the same files), or fetch it with `cargo run --release -- data fetch {} --mirror URL` (`futureprop data fetch` once installed)",
                cfg.dataset,
                root.display(),
                cfg.dataset,
                cfg.dataset
            ),
        })?;
    }
    let mut splits = data::load(
        &root,
        &cfg.dataset,
        Normalize::parse(&cfg.normalize)?,
        cfg.validation,
    )?;
    if let Some(n) = cfg.train_limit {
        let idx: Vec<usize> = (0..n.min(splits.train.len())).collect();
        splits.train = splits.train.subset(&idx)?;
    }
    if let Some(n) = cfg.test_limit {
        let idx: Vec<usize> = (0..n.min(splits.test.len())).collect();
        splits.test = splits.test.subset(&idx)?;
    }
    match cfg.task.as_str() {
        "classify" => {}
        "autoencode" => {
            let loss = Loss::parse(&cfg.loss)?;
            if loss == Loss::CrossEntropy {
                return Err(Error::config(
                    "task",
                    "autoencode compares outputs with pixels: use --loss bce (with --normalize unit) or --loss mse",
                ));
            }
            if loss == Loss::Bce && cfg.normalize != "unit" {
                return Err(Error::config(
                    "task",
                    "autoencode with --loss bce needs targets in [0, 1]: add --normalize unit",
                ));
            }
            splits.train.reconstruct = true;
            splits.test.reconstruct = true;
            if let Some(v) = splits.validation.as_mut() {
                v.reconstruct = true;
            }
        }
        other => return Err(Error::unknown("task", other, &["classify", "autoencode"])),
    }
    Ok(splits)
}

/// Builds the model of `cfg` and checks it against the data's shape.
pub fn build_model(cfg: &TrainConfig, features: usize, classes: usize) -> Result<Model> {
    let mut model = Model::build(&ModelSpec {
        spec: cfg.model.clone(),
        activation: cfg.activation.clone(),
        bias: cfg.bias,
    })?;
    if let Some(mut q) = crate::nn::QuantScheme::parse(&cfg.quantize, cfg.quantize_per_channel)? {
        q.integer_forward = cfg.quantize_integer_forward;
        model.quantize(q)?;
    }
    if model.inputs() != features || model.outputs() != classes {
        // The named image models take their input map after a colon.
        let base = cfg.model.split(':').next().unwrap_or_default();
        let hint = match (base, features) {
            ("resnet20" | "vgg8b", 784) => format!("{base}:1x28x28"),
            ("resnet20" | "vgg8b", 3072) => format!("{base}:3x32x32"),
            _ => format!("mlp:{features}-1000-{classes}"),
        };
        return Err(Error::shape(
            "model vs dataset",
            format!(
                "model '{}' maps {} inputs to {} outputs but {} has {features} features and needs {classes} outputs; use e.g. {hint}",
                cfg.model,
                model.inputs(),
                model.outputs(),
                cfg.dataset
            ),
        ));
    }
    Ok(model)
}

fn progress_bar(quiet: bool, len: u64, multi: Option<&MultiProgress>) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let pb = match multi {
        Some(m) => m.add(pb),
        None => pb,
    };
    if (quiet && multi.is_none()) || !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    } else if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

fn append_line(path: &Path, v: &Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    writeln!(f, "{v}").map_err(|e| Error::io(path, e))
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::format(path, e.to_string()))?;
    checkpoint::write_atomic(path, text.as_bytes())
}

/// [`diagnose_checkpoint`] of the checkpoint at `path` (a file or a run folder), reading
/// the run's dataset from `data_dir` when given (else where the run read it).
pub fn diagnose_saved(
    path: &Path,
    data_dir: Option<&Path>,
    batch_size: Option<usize>,
    curvature: bool,
) -> Result<Value> {
    let (ck, cfg) = saved(path, data_dir)?;
    diagnose_checkpoint(&cfg, &ck, batch_size.unwrap_or(cfg.batch_size), curvature)
}

/// Test-set evaluation of a saved run (`futureprop eval`): its model's float forward
/// pass or, with `integer`, its quantised layers on the int8 kernels
/// ([`Model::forward_integer`]); accuracy, loss and seconds.
pub fn evaluate_saved(path: &Path, data_dir: Option<&Path>, integer: bool) -> Result<Value> {
    let (ck, cfg) = saved(path, data_dir)?;
    let splits = load_data(&cfg)?;
    evaluate_checkpoint(&cfg, &ck, &splits.test, integer)
}

/// A saved run's checkpoint and its configuration, quiet, reading from `data_dir` when
/// given.
fn saved(path: &Path, data_dir: Option<&Path>) -> Result<(Checkpoint, TrainConfig)> {
    let ck = checkpoint::load(path)?;
    let mut cfg = TrainConfig::from_stored(&ck.config)
        .map_err(|e| Error::format(path, format!("config in checkpoint: {e}")))?;
    if let Some(d) = data_dir {
        cfg.data_dir = Some(d.to_path_buf());
    }
    cfg.quiet = true;
    Ok((ck, cfg))
}

/// [`evaluate_saved`] on `data`.
pub fn evaluate_checkpoint(
    cfg: &TrainConfig,
    ck: &Checkpoint,
    data: &Dataset,
    integer: bool,
) -> Result<Value> {
    if integer && cfg.quantize == "none" {
        return Err(Error::config(
            "quantized (--quantized)",
            "the saved model is not quantised; train it with --quantize w8a8 (or fewer bits) to run it on integer kernels",
        ));
    }
    let loss = Loss::parse(&cfg.loss)?;
    let model = build_model(cfg, data.features(), data.outputs())?;
    let mut params = model.init_params(Init::parse(&cfg.init)?, cfg.seed)?;
    restore_params(&mut params, &ck.params, cfg, "checkpoint")?;
    let (mut total, mut correct, mut n) = (0.0, Some(0usize), 0usize);
    let start = std::time::Instant::now();
    for b in Batches::new(data, cfg.eval_batch_size, false, 0, 0) {
        let b = b?;
        let out = if integer {
            model.forward_integer(&params, &b.x)?
        } else {
            model.forward(&params, &b.x)?
        };
        let (l, _) = loss.eval(&out, &b.target)?;
        total += l * b.target.len() as f64;
        correct = correct.zip(count_correct(&out, &b)?).map(|(a, c)| a + c);
        n += b.target.len();
    }
    let n = n.max(1) as f64;
    Ok(serde_json::json!({
        "integer": integer,
        "quantize": cfg.quantize,
        "test_loss": total / n,
        "test_accuracy": correct.map(|c| c as f64 / n),
        "seconds": start.elapsed().as_secs_f64(),
    }))
}

/// Diagnostics of a checkpoint's model and rule on the first `batch_size` training
/// samples (in file order).
///
/// With `curvature`: sharpness (power iteration, 20 steps), Hutchinson trace (10 probes)
/// and the gradient noise scale (batches of 32 and 512, 10 repetitions).
pub fn diagnose_checkpoint(
    cfg: &TrainConfig,
    ck: &Checkpoint,
    batch_size: usize,
    curvature: bool,
) -> Result<Value> {
    let splits = load_data(cfg)?;
    let loss = Loss::parse(&cfg.loss)?;
    let model = build_model(cfg, splits.train.features(), splits.train.outputs())?;
    let mut rule = crate::rule::build_choice(&cfg.rule)?;
    crate::rule::check_rule_layers(rule.as_ref(), &model)?;
    let mut params = model.init_params(Init::parse(&cfg.init)?, cfg.seed)?;
    rule.init(&model, &mut params, cfg.seed)?;
    restore_params(&mut params, &ck.params, cfg, "checkpoint")?;
    let mut report = diagnose(
        rule.as_mut(),
        &model,
        &params,
        &splits.train,
        batch_size,
        loss,
        curvature,
        cfg.seed,
    )?;
    report["model"] = json!(cfg.model);
    report["epoch"] = json!(ck.epoch);
    Ok(report)
}

/// The diagnostics of `rule` at `params` on the first `batch_size` samples of `data`:
/// per-layer alignment with the backprop gradient and, with `curvature`, sharpness, the
/// Hessian trace and the gradient noise scale. `rule` must be initialised on `params`.
#[allow(clippy::too_many_arguments)]
pub fn diagnose(
    rule: &mut dyn crate::rule::Rule,
    model: &Model,
    params: &Params,
    data: &crate::data::Dataset,
    batch_size: usize,
    loss: Loss,
    curvature: bool,
    seed: u64,
) -> Result<Value> {
    let n = batch_size.clamp(1, data.len());
    let idx: Vec<usize> = (0..n).collect();
    let batch = Batch {
        x: data.x.gather_rows(&idx)?,
        target: data.targets(&idx)?,
    };
    let layers = crate::diag::diagnose(rule, model, params, &batch, loss)?;
    let mut report = json!({"rule": rule.name(), "batch_size": n, "layers": layers});
    if curvature {
        use crate::diag::curvature as c;
        report["sharpness"] = json!(c::sharpness(model, params, &batch, loss, 20, seed)?);
        report["hessian_trace"] = json!(c::hessian_trace(model, params, &batch, loss, 10, seed)?);
        let big = 512.min(data.len());
        let small = 32.min(big / 2).max(1);
        let gns = c::gradient_noise_scale(rule, model, params, data, loss, (small, big), 10, seed)?;
        report["gradient_noise_scale"] = json!(gns.b_noise);
        report["gradient_noise_scale_estimates"] = json!(gns);
        if gns.b_noise.is_none() {
            report["gradient_noise_scale_note"] = json!(format!(
                "not resolvable at batch sizes {small} and {big} ({} repetitions): the estimate of |G|^2 ({:.3e}) or of tr(Sigma) ({:.3e}) is not positive: noise dominates the difference between batches of these sizes",
                10, gns.gradient_sq_norm, gns.trace_covariance
            ));
        }
    }
    Ok(report)
}

/// Copies saved parameters (`what`: a checkpoint's, or given initial ones) over freshly
/// initialised ones, checking names and shapes.
fn restore_params(
    params: &mut Params,
    saved: &Params,
    cfg: &TrainConfig,
    what: &str,
) -> Result<()> {
    for (n, t) in saved.iter() {
        // Sparse masks (`mask.*`) are already in their weights' zeros: evaluation and
        // diagnostics, which keep no masks, read past them.
        if n.starts_with("mask.") && !params.contains(n) {
            continue;
        }
        let mine = params.get(n).map_err(|_| {
            Error::config(
                what,
                format!(
                    "parameter '{n}' does not belong to model '{}' with rule '{}'",
                    cfg.model, cfg.rule.name
                ),
            )
        })?;
        if mine.shape() != t.shape() {
            return Err(Error::shape(
                format!("{what} parameter {n}"),
                format!("{:?} vs model {:?}", t.shape(), mine.shape()),
            ));
        }
    }
    for (n, _) in params.clone().iter() {
        params.insert(n, saved.get(n)?.clone());
    }
    Ok(())
}

/// An optimizer that takes curvature products in the model's parameters (Hessian-free,
/// Sophia) composes only with a rule whose update is over exactly those parameters.
fn check_curvature_covers(
    model: &Model,
    params: &Params,
    grads: &Grads,
    rule: &str,
    optimizer: &str,
) -> Result<()> {
    let trainable: Vec<String> = model_param_names(model, params)
        .into_iter()
        .filter(|n| !crate::nn::is_buffer(n))
        .collect();
    let extra = grads.names().iter().find(|n| !trainable.contains(n));
    let missing = trainable.iter().find(|n| !grads.contains(n));
    let why = match (extra, missing) {
        (Some(e), _) => format!("also trains its own '{e}'"),
        (None, Some(m)) => format!("does not update '{m}'"),
        (None, None) => return Ok(()),
    };
    Err(Error::config(
        "optimizer",
        format!(
            "{optimizer} takes curvature products of the loss in the model's parameters, but rule {rule} {why}; use a first-order optimizer (sgd, adam, ...) with {rule}, or {optimizer} with bp"
        ),
    ))
}

/// A lower bound on the bytes a run of `model` needs: parameters, their update, the
/// optimizer's moment buffers, feedback matrices, gradient accumulation and weight
/// averages (each one copy of the parameters, f32), and one step's activations
/// (output, saved input and error signal per layer and sample).
pub fn memory_needed(cfg: &TrainConfig, model: &Model) -> Result<u64> {
    let slots = build_optimizer(&cfg.optim, 1)?.state_copies();
    let feedback = u64::from(matches!(
        cfg.rule.name.as_str(),
        "fa" | "kp" | "usf" | "brsf" | "frsf"
    ));
    let copies =
        2 + slots + feedback + u64::from(cfg.accumulate > 1) + u64::from(cfg.average != "none");
    let params = (model.param_count() as u64).saturating_mul(4);
    let activations = (model.activation_count()? as u64)
        .saturating_mul(cfg.batch_size.max(cfg.eval_batch_size) as u64)
        .saturating_mul(4 * 3);
    Ok(params.saturating_mul(copies).saturating_add(activations))
}

/// Refuses a run whose [`memory_needed`] exceeds the memory available, before anything
/// large is allocated.
fn check_memory(cfg: &TrainConfig, model: &Model) -> Result<()> {
    let need = memory_needed(cfg, model)?;
    if let Some(avail) = crate::mem::available_bytes()
        && need > avail
    {
        return Err(Error::config(
            "model",
            format!(
                "'{}' with {} parameters needs at least {} to train ({} of parameters, their update and {} optimizer state), but {} is available; use a smaller model or batch",
                cfg.model,
                model.param_count(),
                crate::mem::human(need),
                crate::mem::human((model.param_count() as u64).saturating_mul(4)),
                cfg.optim.name(),
                crate::mem::human(avail)
            ),
        ));
    }
    Ok(())
}

/// Runs training as configured; `resume` continues from a checkpoint (its config is the
/// base, `overrides` are applied on top). Returns the summary written to `summary.json`.
pub fn train(cfg: &TrainConfig, resume: Option<&Path>) -> Result<Value> {
    train_with(cfg, resume, None)
}

/// [`train`], drawing its progress bar inside `progress` (a caller's display).
pub fn train_with(
    cfg: &TrainConfig,
    resume: Option<&Path>,
    progress: Option<&MultiProgress>,
) -> Result<Value> {
    let threads = cfg.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    cfg.validate()?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::config("threads", e.to_string()))?;
    let ck = resume.map(checkpoint::load).transpose()?;
    // A bad or too large model is refused before the data is read (or downloaded).
    let model = Model::build(&ModelSpec {
        spec: cfg.model.clone(),
        activation: cfg.activation.clone(),
        bias: cfg.bias,
    })?;
    check_memory(cfg, &model)?;
    let splits = load_data(cfg)?;
    pool.install(|| run_with(cfg, &splits, ck, progress))
}

/// Trains on already loaded data.
pub fn run(cfg: &TrainConfig, splits: &Splits, resume: Option<Checkpoint>) -> Result<Value> {
    run_with(cfg, splits, resume, None)
}

/// [`run`], drawing its progress bar inside `progress` (the benchmark's display).
pub fn run_with(
    cfg: &TrainConfig,
    splits: &Splits,
    resume: Option<Checkpoint>,
    progress: Option<&MultiProgress>,
) -> Result<Value> {
    cfg.validate()?;
    if let Some(ck) = &resume {
        let step = ck.optimizer.step;
        if ck.epoch >= cfg.epochs || cfg.max_steps.is_some_and(|m| step >= m) {
            return Err(Error::NothingToDo {
                msg: format!(
                    "the checkpoint is at epoch {} (step {step}) and the run ends at {}; raise --epochs or --max-steps to train further",
                    ck.epoch,
                    match cfg.max_steps {
                        Some(m) if step >= m => format!("step {m}"),
                        _ => format!("epoch {}", cfg.epochs),
                    }
                ),
            });
        }
    }
    trainer::Trainer::new(cfg, splits, resume)?.run(progress)
}

/// [`run`] from given model parameters (by name; e.g. a model trained before with
/// another rule) instead of `cfg.init`'s draw.
pub fn run_from(cfg: &TrainConfig, splits: &Splits, initial: &Params) -> Result<Value> {
    cfg.validate()?;
    trainer::Trainer::starting_from(cfg, splits, None, Some(initial))?.run(None)
}

/// The resolved settings of a run, once everything is built (defaults included): the
/// rule and the optimizer with each of their settings, rate, batch, epochs, seed, inputs
/// and hidden units.
fn resolved_line(cfg: &TrainConfig, rule: &str, optimizer: &str) -> String {
    fn own(c: &crate::settings::Choice) -> String {
        let kv: Vec<String> = c
            .settings
            .iter()
            .map(|(k, v)| match v {
                Value::Object(o) => format!(
                    "{k}={}",
                    o.get("name").and_then(Value::as_str).unwrap_or("?")
                ),
                v => format!("{k}={v}"),
            })
            .collect();
        if kv.is_empty() {
            String::new()
        } else {
            format!(" ({})", kv.join(", "))
        }
    }
    format!(
        "{rule}{} with {optimizer}{} at lr {}, batch {}, {} epochs, seed {}; {} inputs, {} hidden units",
        own(&cfg.rule),
        own(&cfg.optim.optimizer),
        cfg.optim.lr,
        cfg.batch_size,
        cfg.epochs,
        cfg.seed,
        cfg.normalize,
        cfg.activation
    )
}

/// Per layer: the last diagnostics record and the mean angle to BP over the run.
fn summarise_diagnostics(history: &[Value]) -> Value {
    let recs: Vec<&Value> = history
        .iter()
        .filter(|r| r["type"] == "diagnostics")
        .collect();
    let Some(last) = recs.last() else {
        return Value::Null;
    };
    let mut mean = serde_json::Map::new();
    if let Some(layers) = last["layers"].as_array() {
        for l in layers {
            let name = l["layer"].as_str().unwrap_or_default();
            let angles: Vec<f64> = recs
                .iter()
                .filter_map(|r| r["layers"].as_array())
                .flat_map(|ls| ls.iter().filter(|x| x["layer"] == name))
                .filter_map(|x| x["angle_to_bp_deg"].as_f64())
                .collect();
            mean.insert(
                name.to_string(),
                json!(angles.iter().sum::<f64>() / angles.len().max(1) as f64),
            );
        }
    }
    json!({"records": recs.len(), "last": last["layers"], "mean_angle_to_bp_deg": mean})
}

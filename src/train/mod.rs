//! The training loop: epochs of rule steps and optimizer steps, evaluation, metrics,
//! checkpoints and resume.
//!
//! Outputs in the run folder: `metrics.jsonl` (one JSON record per epoch; every
//! time-valued field is named `*_seconds` or `*_per_second`), `summary.json` (final
//! figures and the resolved config) and `checkpoint.safetensors`.

mod averaging;
pub mod checkpoint;
mod config;
pub mod energy;
mod objective;
pub mod pretrain;
mod records;

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

pub use checkpoint::Checkpoint;
pub use config::TrainConfig;
pub use objective::RuleObjective;

use crate::data::{self, Batches, Dataset, Normalize, Splits};
use crate::error::{Error, Result};
use crate::nn::{Grads, Init, Loss, Model, ModelSpec, Params};
use crate::optim::{StepContext, build_optimizer};
use crate::rule::{Backprop, Batch, Rule};
use averaging::WeightAverage;
use records::Records;

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

/// Names of the model's own parameters (not rule state, not averages).
pub(crate) fn model_param_names(model: &Model, params: &Params) -> Vec<String> {
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
    let model = Model::build(&ModelSpec {
        spec: cfg.model.clone(),
        activation: cfg.activation.clone(),
        bias: cfg.bias,
    })?;
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
    restore_params(&mut params, &ck.params, cfg)?;
    let n = batch_size.clamp(1, splits.train.len());
    let idx: Vec<usize> = (0..n).collect();
    let batch = Batch {
        x: splits.train.x.gather_rows(&idx)?,
        target: splits.train.targets(&idx)?,
    };
    let layers = crate::diag::diagnose(rule.as_mut(), &model, &params, &batch, loss)?;
    let mut report = json!({"rule": rule.name(), "model": cfg.model, "epoch": ck.epoch, "batch_size": n, "layers": layers});
    if curvature {
        use crate::diag::curvature as c;
        report["sharpness"] = json!(c::sharpness(&model, &params, &batch, loss, 20, cfg.seed)?);
        report["hessian_trace"] = json!(c::hessian_trace(
            &model, &params, &batch, loss, 10, cfg.seed
        )?);
        let big = 512.min(splits.train.len());
        let small = 32.min(big / 2).max(1);
        let gns = c::gradient_noise_scale(
            rule.as_mut(),
            &model,
            &params,
            &splits.train,
            loss,
            (small, big),
            10,
            cfg.seed,
        )?;
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

/// Copies a checkpoint's parameters over freshly initialised ones, checking names and shapes.
fn restore_params(params: &mut Params, saved: &Params, cfg: &TrainConfig) -> Result<()> {
    for (n, t) in saved.iter() {
        let mine = params.get(n).map_err(|_| {
            Error::config(
                "checkpoint",
                format!(
                    "parameter '{n}' does not belong to model '{}' with rule '{}'",
                    cfg.model, cfg.rule.name
                ),
            )
        })?;
        if mine.shape() != t.shape() {
            return Err(Error::shape(
                format!("checkpoint parameter {n}"),
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
    pool.install(|| run(cfg, &splits, ck))
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
    let loss = Loss::parse(&cfg.loss)?;
    let model = build_model(cfg, splits.train.features(), splits.train.outputs())?;
    let mut rule = crate::rule::build_choice(&cfg.rule)?;
    crate::rule::check_rule_layers(rule.as_ref(), &model)?;
    check_memory(cfg, &model)?;
    let mut params = model.init_params(Init::parse(&cfg.init)?, cfg.seed)?;
    rule.init(&model, &mut params, cfg.seed)?;
    let average = WeightAverage::new(&cfg.average, &model, &mut params)?;
    let steps_per_epoch = splits
        .train
        .len()
        .div_ceil(cfg.batch_size)
        .div_ceil(cfg.accumulate) as u64;
    let mut total_steps = steps_per_epoch * cfg.epochs as u64;
    if let Some(m) = cfg.max_steps {
        total_steps = total_steps.min(m);
    }
    let mut optimizer = build_optimizer(&cfg.optim, total_steps)?;
    if !cfg.quiet {
        eprintln!("{}", resolved_line(cfg, rule.name(), optimizer.name()));
    }
    rule.keep_trace(optimizer.needs_trace());
    let mut pretrain_summary = Value::Null;
    match cfg.pretrain.as_str() {
        "none" => {}
        "rbm" if resume.is_none() => {
            let t = Instant::now();
            let errors = pretrain::pretrain_rbm(
                &model,
                &mut params,
                &splits.train.x,
                cfg.batch_size,
                &cfg.rbm,
                cfg.seed,
            )?;
            pretrain_summary = json!({"kind": "rbm", "reconstruction_error": errors, "seconds": t.elapsed().as_secs_f64()});
            if !cfg.quiet {
                eprintln!("rbm pretraining: reconstruction error per layer {errors:?}");
            }
        }
        "rbm" => {}
        other => return Err(Error::unknown("pretrain", other, &["none", "rbm"])),
    }
    let mut start_epoch = 0;
    let resumed_history = match resume {
        Some(ck) => {
            restore_params(&mut params, &ck.params, cfg)?;
            optimizer.load_state(&ck.optimizer)?;
            start_epoch = ck.epoch;
            Some(ck.history)
        }
        None => None,
    };
    let mut records = Records::open(cfg, resumed_history)?;

    let progress_multi = progress;
    let run_start = Instant::now();
    let mut step = optimizer.state().step;
    let mut activation_bytes = 0usize;
    let mut peak_above_baseline = 0usize;
    // Heap high-water mark inside `rule.step` above the live bytes at its start
    // (activations, temporaries and the returned update), and the update's bytes.
    let (mut step_peak, mut update_bytes) = (0usize, 0usize);
    let (mut train_work, mut train_steps) = (crate::tensor::counters::Work::default(), 0u64);
    let mut energy_total = 0.0;
    let mut energy_source = energy::Source::Estimated;
    let mut out_of_time = false;
    // Evaluation and diagnostics of finished epochs (the step log's clock skips them).
    let mut not_training_seconds = 0.0;
    for epoch in start_epoch..cfg.epochs {
        if cfg.max_steps.is_some_and(|m| step >= m) {
            break;
        }
        if out_of_time {
            break;
        }
        let t0 = Instant::now();
        let meter = energy::Meter::start();
        let work0 = crate::tensor::counters::read();
        let steps0 = step;
        crate::mem::reset_peak();
        let live0 = crate::mem::live();
        let mut diag_seconds = 0.0;
        let mut diag_work = crate::tensor::counters::Work::default();
        let batches = Batches::new(&splits.train, cfg.batch_size, true, cfg.seed, epoch as u64);
        let num_batches = batches.num_batches();
        let (mut acc, mut acc_n): (Option<Grads>, usize) = (None, 0);
        let pb = progress_bar(cfg.quiet, batches.num_batches() as u64, progress_multi);
        pb.set_prefix(format!("epoch {}/{}", epoch + 1, cfg.epochs));
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        // Rows with a prediction (Forward-Forward predicting by goodness has none).
        let mut judged = 0usize;
        // Relaxation diagnostics of energy-based rules: Σ steps, Σ final residual, count.
        let mut relax = (0.0, 0.0, 0.0);
        // The rule's auxiliary loss: name, Σ, count.
        let mut aux = ("", 0.0, 0.0);
        for (batch_index, batch) in batches.enumerate() {
            if cfg.max_steps.is_some_and(|m| step >= m) {
                break;
            }
            if cfg
                .max_seconds
                .is_some_and(|s| run_start.elapsed().as_secs_f64() >= s)
            {
                out_of_time = true;
                break;
            }
            let batch = batch?;
            let (live_before, peak_before) = (crate::mem::live(), crate::mem::peak());
            crate::mem::reset_peak();
            // Dropout masks are a function of (run seed, step): a resumed run draws the
            // same ones.
            model.set_train_seed(
                cfg.seed
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(step),
            );
            let out = rule.step(&model, &params, &batch, loss)?;
            if step == steps0 && epoch == start_epoch && optimizer.needs_curvature() {
                check_curvature_covers(&model, &params, &out.grads, rule.name(), optimizer.name())?;
            }
            step_peak = step_peak.max(crate::mem::peak().saturating_sub(live_before));
            update_bytes = update_bytes.max(out.grads.size_bytes());
            crate::mem::raise_peak(peak_before);
            if !out.loss.is_finite() {
                pb.finish_and_clear();
                return Err(Error::NonFinite {
                    value: out.loss,
                    epoch: epoch + 1,
                    step: step + 1,
                    checkpoint: records.kept(),
                });
            }
            let rows = batch.target.len();
            loss_sum += out.loss * rows as f64;
            if let Some((name, v)) = rule.aux_loss() {
                aux.0 = name;
                aux.1 += v;
                aux.2 += 1.0;
            }
            if let Some(r) = rule.relaxation() {
                relax.0 += r.steps as f64;
                relax.1 += r.residual.last().copied().unwrap_or(f64::NAN);
                relax.2 += 1.0;
            }
            if let Some(o) = out.prediction.as_ref().or(out.trace.output())
                && o.shape().first() == Some(&rows)
                && let Some(c) = count_correct(o, &batch)?
            {
                correct += c;
                judged += rows;
            }
            seen += rows;
            activation_bytes = activation_bytes.max(out.trace.activation_bytes());
            // Diagnostics read the batch and parameters, never the rule's random state,
            // so they leave the trajectory unchanged.
            // Their time and counted work are kept out of the epoch's figures.
            // With accumulation the optimizer steps once per `accumulate` batches (and at
            // the end of the epoch) with their mean update.
            let will_step = cfg.accumulate <= 1
                || acc_n + 1 == cfg.accumulate
                || batch_index + 1 == num_batches;
            // Running statistics of this step's training passes (BatchNorm).
            model.commit_state(&mut params)?;
            let diag = if will_step && cfg.diag_every > 0 && step % cfg.diag_every == 0 {
                let (t, w) = (Instant::now(), crate::tensor::counters::read());
                let bp = Backprop.step(&model, &params, &batch, loss)?;
                model.discard_state();
                let fb = rule.feedback_matrices(&model, &params)?;
                diag_seconds += t.elapsed().as_secs_f64();
                diag_work = diag_work + (crate::tensor::counters::read() - w);
                Some((bp.grads, fb, params.clone()))
            } else {
                None
            };
            let mut objective = RuleObjective {
                rule: rule.as_mut(),
                model: &model,
                batch: &batch,
                loss,
            };
            let mut ctx = StepContext {
                trace: Some(&out.trace),
                objective: Some(&mut objective),
            };
            if cfg.accumulate > 1 {
                match acc.as_mut() {
                    Some(a) => a.axpy(1.0, &out.grads)?,
                    None => acc = Some(out.grads.clone()),
                }
                acc_n += 1;
                if !will_step {
                    pb.inc(1);
                    continue;
                }
            }
            let mean;
            let grads = match acc.take() {
                Some(mut a) => {
                    a.scale_in_place(1.0 / acc_n as f64);
                    acc_n = 0;
                    mean = a;
                    &mean
                }
                None => &out.grads,
            };
            optimizer.step(&mut params, grads, &mut ctx)?;
            average.after_step(&mut params)?;
            if let Some((bp, fb, before)) = diag {
                let (t, w) = (Instant::now(), crate::tensor::counters::read());
                let layers =
                    crate::diag::compare(&model, &params, &out.grads, &bp, &fb, Some(&before))?;
                diag_seconds += t.elapsed().as_secs_f64();
                diag_work = diag_work + (crate::tensor::counters::read() - w);
                let rec = json!({"type": "diagnostics", "epoch": epoch + 1, "step": step, "loss": out.loss, "layers": layers});
                records.record(rec)?;
            }
            step += 1;
            if cfg.log_every > 0 && step.is_multiple_of(cfg.log_every) {
                let secs = run_start.elapsed().as_secs_f64() - not_training_seconds - diag_seconds;
                let mut rec = json!({"type": "step", "epoch": epoch + 1, "step": step, "loss": out.loss, "seconds": secs});
                if let Some(r) = rule.relaxation() {
                    rec["relax_steps"] = json!(r.steps);
                    rec["relax_residual"] = json!(r.residual.last());
                    rec["relax_energy_first"] = json!(r.energy.first());
                    rec["relax_energy_last"] = json!(r.energy.last());
                }
                records.log(&rec)?;
            }
            pb.inc(1);
            if step % 20 == 0 {
                pb.set_message(format!("loss {:.4}", loss_sum / seen.max(1) as f64));
            }
        }
        pb.finish_and_clear();
        let train_seconds = t0.elapsed().as_secs_f64() - diag_seconds;
        let work = crate::tensor::counters::read() - work0 - diag_work;
        let (joules, source) = energy::energy(meter.as_ref(), work);
        energy_total += joules;
        energy_source = source;
        train_work = train_work + work;
        train_steps += step - steps0;
        peak_above_baseline = peak_above_baseline.max(crate::mem::peak().saturating_sub(live0));
        let te = Instant::now();
        average.end_of_epoch(epoch, &mut params)?;
        let eval_params = average.for_evaluation(epoch, &params)?;
        let test = evaluate(
            rule.as_ref(),
            &model,
            &eval_params,
            &splits.test,
            loss,
            cfg.eval_batch_size,
        )?;
        let mut rec = json!({
            "type": "epoch",
            "epoch": epoch + 1,
            "step": step,
            "lr": optimizer.learning_rate(),
            "train_loss": loss_sum / seen.max(1) as f64,
            "train_accuracy": if judged > 0 { json!(correct as f64 / judged as f64) } else { Value::Null },
            "test_loss": test.loss,
            "test_accuracy": test.accuracy,
        });
        if let Some(v) = &splits.validation {
            let ev = evaluate(
                rule.as_ref(),
                &model,
                &eval_params,
                v,
                loss,
                cfg.eval_batch_size,
            )?;
            rec["validation_loss"] = json!(ev.loss);
            rec["validation_accuracy"] = json!(ev.accuracy);
        }
        if aux.2 > 0.0 {
            rec[aux.0] = json!(aux.1 / aux.2);
        }
        if relax.2 > 0.0 {
            rec["relax_steps_mean"] = json!(relax.0 / relax.2);
            rec["relax_residual_mean"] = json!(relax.1 / relax.2);
        }
        rec["flops"] = json!(work.flops);
        rec["bytes_moved"] = json!(work.bytes);
        rec["energy_joules"] = json!(joules);
        rec["energy_source"] = json!(source);
        rec["epoch_seconds"] = json!(train_seconds);
        rec["diagnostics_seconds"] = json!(diag_seconds);
        rec["eval_seconds"] = json!(te.elapsed().as_secs_f64());
        not_training_seconds += te.elapsed().as_secs_f64() + diag_seconds;
        rec["samples_per_second"] = json!(seen as f64 / train_seconds.max(1e-9));
        if !test.loss.is_finite() {
            return Err(Error::NonFinite {
                value: test.loss,
                epoch: epoch + 1,
                step,
                checkpoint: records.kept(),
            });
        }
        if !cfg.quiet {
            eprintln!(
                "epoch {:>3}  train loss {:.4} acc {:.4}  test loss {:.4} acc {:.4}  {:.1}s",
                epoch + 1,
                rec["train_loss"].as_f64().unwrap_or(f64::NAN),
                rec["train_accuracy"].as_f64().unwrap_or(f64::NAN),
                test.loss,
                test.accuracy,
                train_seconds
            );
        }
        records.record(rec)?;
        let last =
            epoch + 1 == cfg.epochs || cfg.max_steps.is_some_and(|m| step >= m) || out_of_time;
        if last || (cfg.checkpoint_every > 0 && (epoch + 1) % cfg.checkpoint_every == 0) {
            records.checkpoint(&params, optimizer.as_ref(), epoch + 1)?;
        }
    }
    let total_seconds = run_start.elapsed().as_secs_f64();
    let acc = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let history = &records.history;
    let epochs: Vec<&Value> = history.iter().filter(|r| r["type"] == "epoch").collect();
    let diagnostics = summarise_diagnostics(history);
    let last = epochs.last().copied();
    let (best_epoch, best) = epochs
        .iter()
        .map(|r| (r["epoch"].as_u64().unwrap_or(0), acc(r, "test_accuracy")))
        .fold((0, f64::NEG_INFINITY), |b, x| if x.1 > b.1 { x } else { b });
    let epoch_secs: Vec<f64> = epochs.iter().map(|r| acc(r, "epoch_seconds")).collect();
    let opt_state = optimizer.state();
    let model_bytes = model.num_parameters(&params) * 4;
    let avg_bytes: usize = params
        .iter()
        .filter(|(n, _)| n.starts_with("avg."))
        .map(|(_, t)| t.size_bytes())
        .sum();
    let summary = json!({
        "dataset": cfg.dataset,
        "model": cfg.model,
        "rule": rule.name(),
        "optimizer": optimizer.name(),
        "epochs": epochs.len(),
        "steps": step,
        "test_accuracy": last.map(|r| acc(r, "test_accuracy")),
        "test_loss": last.map(|r| acc(r, "test_loss")),
        "train_accuracy": last.map(|r| acc(r, "train_accuracy")),
        "best_test_accuracy": if epochs.is_empty() { Value::Null } else { json!(best) },
        "diagnostics": diagnostics,
        "pretrain": pretrain_summary,
        "best_epoch": best_epoch,
        "parameters": model.num_parameters(&params),
        "memory": {
            "parameter_bytes": model_bytes,
            // Weight averages (`avg.*`) count as optimizer state.
            "optimizer_state_bytes": opt_state.tensors.size_bytes() + avg_bytes,
            "activation_bytes_per_step": activation_bytes,
            "rule_state_bytes": params.size_bytes() - model_bytes - avg_bytes + rule.state_bytes(),
            "peak_training_bytes_above_baseline": if crate::mem::installed() { json!(peak_above_baseline) } else { Value::Null },
            "step_peak_bytes": if crate::mem::installed() { json!(step_peak) } else { Value::Null },
            "update_bytes": update_bytes,
            "allocator": if crate::mem::installed() { "counting" } else { "not installed" },
        },
        "flops_per_step": train_work.flops as f64 / train_steps.max(1) as f64,
        "bytes_moved_per_step": train_work.bytes as f64 / train_steps.max(1) as f64,
        "energy_joules": energy_total,
        "energy_source": energy_source,
        "total_seconds": total_seconds,
        "seconds_per_epoch": if epoch_secs.is_empty() { Value::Null } else { json!(epoch_secs.iter().sum::<f64>() / epoch_secs.len() as f64) },
        "config": records.config,
    });
    write_json(&records.dir.join("summary.json"), &summary)?;
    Ok(summary)
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

//! The trainer: a run's parts (model, rule, optimizer, weight average, records, meter)
//! and the loop over them — set-up and resume, one rule step and optimizer step per
//! minibatch (with accumulation and diagnostics), the end of an epoch (evaluation,
//! records, checkpoint) and the summary.

use std::time::Instant;

use indicatif::MultiProgress;
use serde_json::{Value, json};

use super::accumulate::Accumulation;
use super::averaging::WeightAverage;
use super::meter::{EpochMeter, EpochStats, RunMeter};
use super::records::Records;
use super::{
    Checkpoint, RuleObjective, TrainConfig, build_model, check_curvature_covers, check_memory,
    evaluate, pretrain, progress_bar, resolved_line, restore_params, summarise_diagnostics,
};
use crate::data::{Batches, Splits};
use crate::error::{Error, Result};
use crate::nn::{Init, Loss, Model, Params};
use crate::optim::{Optimizer, StepContext, build_optimizer};
use crate::rule::{Backprop, Batch, Rule};
use crate::tensor::DType;

/// A run in progress.
pub(super) struct Trainer<'a> {
    cfg: &'a TrainConfig,
    splits: &'a Splits,
    loss: Loss,
    model: Model,
    rule: Box<dyn Rule>,
    params: Params,
    optimizer: Box<dyn Optimizer>,
    average: WeightAverage,
    records: Records,
    meter: RunMeter,
    /// The f16 loss scaler (f16 runs only).
    scaler: Option<super::LossScaler>,
    /// Optimizer steps taken (a resumed run's included).
    step: u64,
    /// The first epoch this process trains.
    start_epoch: usize,
    /// What pretraining did.
    pretrain: Value,
    start: Instant,
    /// Seconds of evaluation and diagnostics of finished epochs (the step log's clock
    /// skips them).
    not_training_seconds: f64,
    out_of_time: bool,
    /// The processes of the run (one, or `mpirun`'s).
    comm: &'static dyn super::comm::Communicator,
    /// The all-reduce's send and receive buffers, kept from step to step.
    comm_buffers: (Vec<f32>, Vec<f32>),
    /// Averages the optimizer's batch statistics over the ranks.
    reducer: super::comm::RankAverage,
    /// Error-feedback sign compression of the update (`compression = "sign"`).
    compressor: Option<super::comm::SignCompressor>,
    /// This rank's layers under `parallel = "pipeline"`.
    pipeline: Option<super::pipeline::Pipeline>,
    /// BatchNorm statistics over the ranks (`sync_batch_norm`).
    batch_sync: Option<std::sync::Arc<super::comm::RankBatchSync>>,
    /// The weight masks of sparse training.
    sparsity: Option<super::sparse::Sparsity>,
    /// The LSQ step sizes of a quantised model (`*.weight_step`, `*.input_step`).
    step_sizes: Vec<String>,
}

impl<'a> Trainer<'a> {
    /// Builds the model, rule and optimizer, pretrains or restores a checkpoint, and
    /// opens the run's records.
    pub fn new(
        cfg: &'a TrainConfig,
        splits: &'a Splits,
        resume: Option<Checkpoint>,
    ) -> Result<Trainer<'a>> {
        Self::starting_from(cfg, splits, resume, None)
    }

    /// [`Trainer::new`], the model's parameters taken from `initial` (by name, shapes
    /// checked) instead of drawn by `cfg.init`, before the rule initialises its state.
    pub fn starting_from(
        cfg: &'a TrainConfig,
        splits: &'a Splits,
        resume: Option<Checkpoint>,
        initial: Option<&Params>,
    ) -> Result<Trainer<'a>> {
        let loss = Loss::parse(&cfg.loss)?;
        let mut model = build_model(cfg, splits.train.features(), splits.train.outputs())?;
        let precision = cfg.dtype()?;
        let segments = crate::nn::Segments::parse(&cfg.checkpoint_segments)?;
        let mut rule = crate::rule::build_choice(&cfg.rule)?;
        crate::rule::check_checkpointing(rule.as_ref(), segments)?;
        crate::rule::check_rule_layers(rule.as_ref(), &model)?;
        if precision != DType::F32 && !rule.mixed_precision() {
            return Err(Error::config(
                "precision (--precision)",
                format!(
                    "rule {} runs fused f32 loops of its own and does not train in {precision} (mixed precision covers bp, the FA and DFA families, kp, local, dsn, dni, cdni and ff); use --precision f32",
                    rule.name()
                ),
            ));
        }
        if cfg.quantize != "none" && (precision != DType::F32 || !rule.mixed_precision()) {
            return Err(Error::config(
                "quantize (--quantize)",
                format!(
                    "quantisation-aware training runs at --precision f32 with the rules on the shared forward and backward passes (bp, the FA and DFA families, kp, local, dsn, dni, cdni, ff); not {} at {precision}",
                    rule.name()
                ),
            ));
        }
        model.set_precision(precision);
        model.set_checkpoint_segments(segments);
        check_memory(cfg, &model)?;
        let mut params = model.init_params(Init::parse(&cfg.init)?, cfg.seed)?;
        if cfg.quantize != "none" {
            // LSQ's input steps from the first training rows (a resumed run loads its own).
            let rows: Vec<usize> = (0..splits.train.len().min(256)).collect();
            model.calibrate(&mut params, &splits.train.x.gather_rows(&rows)?)?;
        }
        if let Some(init) = initial {
            restore_params(&mut params, init, cfg, "initial")?;
        }
        rule.init(&model, &mut params, cfg.seed)?;
        let steps_per_epoch = splits
            .train
            .len()
            .div_ceil(cfg.batch_size)
            .div_ceil(cfg.accumulate) as u64;
        let mut total_steps = steps_per_epoch * cfg.epochs as u64;
        if let Some(m) = cfg.max_steps {
            total_steps = total_steps.min(m);
        }
        let sparsity = super::sparse::Sparsity::new(
            &cfg.sparse,
            &model,
            &mut params,
            steps_per_epoch * cfg.epochs as u64,
            cfg.seed,
        )?;
        if sparsity.is_some() && cfg.quantize != "none" && resume.is_none() {
            // LSQ's input steps from the masked model's activations (also over given
            // initial steps): the dense model's are several times larger and would round
            // most of them to zero.
            let rows: Vec<usize> = (0..splits.train.len().min(256)).collect();
            model.calibrate(&mut params, &splits.train.x.gather_rows(&rows)?)?;
        }
        // The average starts from the masked weights (masks are not averaged).
        let average = WeightAverage::new(&cfg.average, &model, &mut params)?;
        if sparsity.is_some() && cfg.parallel == "pipeline" {
            return Err(Error::config(
                "sparse (--sparse)",
                "sparse training runs data-parallel or in one process; use --parallel data",
            ));
        }
        let mut optimizer = build_optimizer(&cfg.optim, total_steps)?;
        if !cfg.quiet {
            eprintln!("{}", resolved_line(cfg, rule.name(), optimizer.name()));
        }
        if segments != crate::nn::Segments::Off && optimizer.needs_trace() {
            return Err(Error::config(
                "checkpoint_segments (--checkpoint-segments)",
                format!(
                    "{} reads every layer's records, which gradient checkpointing does not keep; use --checkpoint-segments off",
                    optimizer.name()
                ),
            ));
        }
        rule.keep_trace(optimizer.needs_trace());
        if optimizer.reduces_own_update()
            && super::comm::Compression::parse(&cfg.compression)? != super::comm::Compression::None
        {
            return Err(Error::config(
                "compression (--compression)",
                format!(
                    "{} compresses what the ranks send itself; use --compression none",
                    optimizer.name()
                ),
            ));
        }
        let comm = super::comm::world();
        super::comm::set_timeout(cfg.comm_timeout);
        let pipeline = if cfg.parallel == "pipeline" {
            super::pipeline::check(cfg, optimizer.as_ref(), resume.is_some())?;
            let p = super::pipeline::Pipeline::new(&model, rule.as_ref(), comm, cfg.microbatches)?;
            super::comm::check_agreement(
                comm,
                "configuration",
                super::comm::config_fingerprint(cfg)?,
            )?;
            Some(p)
        } else {
            if comm.size() > 1 {
                super::comm::check_coverage(cfg, rule.as_ref(), optimizer.as_ref(), comm)?;
            }
            None
        };
        let batch_sync = (comm.size() > 1 && pipeline.is_none() && cfg.sync_batch_norm)
            .then(|| std::sync::Arc::new(super::comm::RankBatchSync::new(comm)));
        crate::nn::set_batch_sync(
            batch_sync
                .clone()
                .map(|s| s as std::sync::Arc<dyn crate::nn::BatchSync>),
        );
        let pretrain = match cfg.pretrain.as_str() {
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
                if !cfg.quiet {
                    eprintln!("rbm pretraining: reconstruction error per layer {errors:?}");
                }
                json!({"kind": "rbm", "reconstruction_error": errors, "seconds": t.elapsed().as_secs_f64()})
            }
            "none" | "rbm" => Value::Null,
            other => return Err(Error::unknown("pretrain", other, &["none", "rbm"])),
        };
        let mut scaler = (precision == DType::F16).then(super::LossScaler::default);
        let (start_epoch, history) = match resume {
            Some(ck) => {
                restore_params(&mut params, &ck.params, cfg, "checkpoint")?;
                optimizer.load_state(&ck.optimizer)?;
                if let (Some(s), Some(saved)) = (scaler.as_mut(), ck.loss_scaler) {
                    *s = saved;
                }
                (ck.epoch, Some(ck.history))
            }
            None => (0, None),
        };
        let step_sizes = params
            .names()
            .iter()
            .filter(|n| n.ends_with(".weight_step") || n.ends_with(".input_step"))
            .cloned()
            .collect();
        // Rank 0 writes the run's files; the other ranks keep their records in memory.
        let records = Records::open(cfg, history, comm.rank() == 0)?;
        Ok(Trainer {
            cfg,
            splits,
            loss,
            model,
            rule,
            params,
            step: optimizer.state().step,
            optimizer,
            average,
            records,
            meter: RunMeter::default(),
            scaler,
            start_epoch,
            pretrain,
            start: Instant::now(),
            not_training_seconds: 0.0,
            out_of_time: false,
            comm,
            comm_buffers: Default::default(),
            reducer: super::comm::RankAverage::new(comm),
            compressor: (super::comm::Compression::parse(&cfg.compression)?
                == super::comm::Compression::Sign)
                .then(Default::default),
            pipeline,
            batch_sync,
            sparsity,
            step_sizes,
        })
    }

    /// Whether the run has reached its step limit or ran out of time; `clock`: look at
    /// the clock (before a minibatch; an epoch whose first minibatch finds the time up
    /// is still evaluated, recorded and checkpointed).
    fn at_limit(&mut self, clock: bool) -> bool {
        if self.cfg.max_steps.is_some_and(|m| self.step >= m) {
            return true;
        }
        if clock
            && (super::stop_requested()
                || self
                    .cfg
                    .max_seconds
                    .is_some_and(|s| self.start.elapsed().as_secs_f64() >= s))
        {
            self.out_of_time = true;
        }
        self.out_of_time
    }

    /// Trains the remaining epochs and writes the summary.
    pub fn run(mut self, progress: Option<&MultiProgress>) -> Result<Value> {
        for epoch in self.start_epoch..self.cfg.epochs {
            if self.at_limit(false) {
                break;
            }
            self.epoch(epoch, progress)?;
        }
        let summary = self.summary();
        if self.comm.rank() == 0 {
            super::write_json(&self.records.dir.join("summary.json"), &summary)?;
        }
        Ok(summary)
    }

    /// One epoch: its minibatches, then evaluation, records and checkpoint.
    fn epoch(&mut self, epoch: usize, progress: Option<&MultiProgress>) -> Result<()> {
        let cfg = self.cfg;
        let mut cost = EpochMeter::start();
        let steps0 = self.step;
        let bytes0 = self.comm.bytes_sent();
        let batches = Batches::new(
            &self.splits.train,
            cfg.batch_size,
            true,
            cfg.seed,
            epoch as u64,
        );
        let count = batches.num_batches();
        let mut accumulation = Accumulation::new(cfg.accumulate);
        let pb = progress_bar(cfg.quiet, count as u64, progress);
        pb.set_prefix(format!("epoch {}/{}", epoch + 1, cfg.epochs));
        let mut stats = EpochStats::default();
        for (index, batch) in batches.enumerate() {
            if self.at_limit(true) {
                break;
            }
            let ends_step = accumulation.ends_step(index, count);
            let first = self.step == steps0 && epoch == self.start_epoch;
            let done = self.batch(
                &batch?,
                epoch,
                first,
                ends_step,
                &mut accumulation,
                &mut cost,
                &mut stats,
            );
            if done.is_err() {
                pb.finish_and_clear();
            }
            done?;
            pb.inc(1);
            if ends_step && self.step.is_multiple_of(20) {
                pb.set_message(format!("loss {:.4}", stats.loss()));
            }
        }
        pb.finish_and_clear();
        if self.comm.size() > 1 {
            stats.reduce(self.comm);
        }
        if let Some(p) = &self.pipeline {
            p.gather(&self.model, &mut self.params)?;
        } else if self.comm.size() > 1 && self.batch_sync.is_none() {
            super::comm::average_running_stats(self.comm, &mut self.params)?;
        }
        let spent = cost.finish();
        self.meter.add_epoch(&spent, self.step - steps0);
        let te = Instant::now();
        self.average.end_of_epoch(epoch, &mut self.params)?;
        let mut rec = json!({
            "type": "epoch",
            "epoch": epoch + 1,
            "step": self.step,
            "lr": self.optimizer.learning_rate(),
        });
        stats.write(&mut rec);
        if let Some(s) = &self.scaler {
            rec["loss_scale"] = json!(s.scale);
            rec["skipped_steps"] = json!(stats.skipped);
        }
        if self.comm.size() > 1 {
            rec["ranks"] = json!(self.comm.size());
            rec["bytes_sent"] = json!(self.comm.bytes_sent() - bytes0);
        }
        self.evaluate_into(epoch, &mut rec)?;
        rec["flops"] = json!(spent.work.flops);
        rec["bytes_moved"] = json!(spent.work.bytes);
        rec["energy_joules"] = json!(spent.joules);
        rec["energy_source"] = json!(spent.source);
        rec["epoch_seconds"] = json!(spent.seconds);
        rec["diagnostics_seconds"] = json!(cost.aside_seconds);
        rec["eval_seconds"] = json!(te.elapsed().as_secs_f64());
        self.not_training_seconds += te.elapsed().as_secs_f64() + cost.aside_seconds;
        rec["samples_per_second"] = json!(stats.seen as f64 / spent.seconds.max(1e-9));
        let f = |k: &str| rec[k].as_f64().unwrap_or(f64::NAN);
        if !f("test_loss").is_finite() {
            return Err(Error::NonFinite {
                value: f("test_loss"),
                epoch: epoch + 1,
                step: self.step,
                checkpoint: self.records.kept(),
            });
        }
        if !cfg.quiet {
            // f16: the loss scale and the steps it skipped this epoch.
            let scaler = self.scaler.as_ref().map_or(String::new(), |s| {
                format!("  loss scale {} ({} skipped)", s.scale, stats.skipped)
            });
            eprintln!(
                "epoch {:>3}  train loss {:.4} acc {:.4}  test loss {:.4} acc {:.4}  {:.1}s{scaler}",
                epoch + 1,
                f("train_loss"),
                f("train_accuracy"),
                f("test_loss"),
                f("test_accuracy"),
                spent.seconds
            );
        }
        self.records.record(rec)?;
        let last = epoch + 1 == cfg.epochs
            || cfg.max_steps.is_some_and(|m| self.step >= m)
            || self.out_of_time;
        if last || (cfg.checkpoint_every > 0 && (epoch + 1).is_multiple_of(cfg.checkpoint_every)) {
            self.records.checkpoint(
                &self.params,
                self.optimizer.as_ref(),
                epoch + 1,
                self.scaler.as_ref(),
            )?;
        }
        Ok(())
    }

    /// One minibatch: the rule's step, then (when it `ends_step`) the optimizer's with
    /// the accumulated update, the weight average, diagnostics and the step log.
    /// `first`: the run's first step in this process (curvature optimizers check then
    /// that the rule's update covers the model).
    #[allow(clippy::too_many_arguments)]
    fn batch(
        &mut self,
        batch: &Batch,
        epoch: usize,
        first: bool,
        ends_step: bool,
        accumulation: &mut Accumulation,
        cost: &mut EpochMeter,
        stats: &mut EpochStats,
    ) -> Result<()> {
        let (cfg, loss) = (self.cfg, self.loss);
        // Data-parallel: this rank's share of the global batch; its mean update is
        // weighted by the share's rows before the ranks' updates are summed.
        let local;
        let (batch, weight) = if self.comm.size() > 1 && self.pipeline.is_none() {
            let n = batch.target.len();
            let rows: Vec<usize> =
                super::comm::share(n, self.comm.rank(), self.comm.size()).collect();
            let weight = rows.len() as f64 / n as f64;
            if let Some(s) = &self.batch_sync {
                s.set_share(weight);
            }
            local = Batch {
                x: batch.x.gather_rows(&rows)?,
                target: batch.target.rows(&rows)?,
            };
            (&local, weight)
        } else {
            (batch, 1.0)
        };
        // Dropout masks are a function of (run seed, step): a resumed run draws the
        // same ones.
        self.model.set_train_seed(
            cfg.seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(self.step),
        );
        if let Some(s) = &self.scaler {
            self.model.set_loss_scale(s.scale);
        }
        let out = match self.pipeline.as_mut() {
            Some(p) => {
                let (rule, model, params) = (self.rule.as_ref(), &self.model, &self.params);
                self.meter
                    .step(|| p.step(rule, model, params, batch, loss))?
            }
            None => self
                .meter
                .step(|| self.rule.step(&self.model, &self.params, batch, loss))?,
        };
        if first && self.optimizer.needs_curvature() {
            check_curvature_covers(
                &self.model,
                &self.params,
                &out.grads,
                self.rule.name(),
                self.optimizer.name(),
            )?;
        }
        if !out.loss.is_finite() {
            return Err(Error::NonFinite {
                value: out.loss,
                epoch: epoch + 1,
                step: self.step + 1,
                checkpoint: self.records.kept(),
            });
        }
        // A pipeline's loss and predictions are the last rank's.
        if self.pipeline.as_ref().is_none_or(|p| p.is_last()) {
            stats.add(&out, batch, self.rule.as_ref())?;
        }
        // Running statistics of this step's training passes (BatchNorm).
        self.model.commit_state(&mut self.params)?;
        // Diagnostics read the batch and parameters, never the rule's random state, so
        // they leave the trajectory unchanged; their time and counted work are kept out
        // of the epoch's figures.
        let diag = if ends_step && cfg.diag_every > 0 && self.step.is_multiple_of(cfg.diag_every) {
            Some(cost.aside(|| {
                let bp = Backprop.step(&self.model, &self.params, batch, loss)?;
                self.model.discard_state();
                let fb = self.rule.feedback_matrices(&self.model, &self.params)?;
                Ok((bp.grads, fb, self.params.clone()))
            })?)
        } else {
            None
        };
        accumulation.add(&out.grads)?;
        if !ends_step {
            return Ok(());
        }
        let mut grads = accumulation.take(&out.grads);
        if (self.comm.size() > 1 || self.compressor.is_some())
            && !self.optimizer.reduces_own_update()
            && self.pipeline.is_none()
        {
            match self.compressor.as_mut() {
                Some(c) => super::comm::sign_compressed_grads(
                    self.comm,
                    grads.to_mut(),
                    weight,
                    c,
                    &mut self.comm_buffers,
                )?,
                None => super::comm::all_reduce_grads(
                    self.comm,
                    grads.to_mut(),
                    weight,
                    &mut self.comm_buffers,
                )?,
            }
        }
        if let Some(s) = self.scaler.as_mut() {
            // GradScaler: a step with an Inf or NaN gradient is skipped and the scale
            // halves.
            let finite = grads.iter().all(|(_, t)| t.all_finite());
            if !s.update(finite) {
                stats.skipped += 1;
                return Ok(());
            }
        }
        let mut objective = RuleObjective {
            rule: self.rule.as_mut(),
            model: &self.model,
            batch,
            loss,
        };
        self.reducer.weight = weight;
        let mut ctx = StepContext {
            trace: Some(&out.trace),
            objective: Some(&mut objective),
            reducer: if self.comm.size() > 1 {
                Some(&mut self.reducer)
            } else {
                None
            },
        };
        // Sparse training: RigL grows by the unmasked update at a mask update.
        let dense = match &self.sparsity {
            Some(s) => {
                let dense = (s.method() == super::sparse::Method::Rigl
                    && s.updates_at(self.step + 1))
                .then(|| grads.clone().into_owned());
                s.mask_grads(&self.params, grads.to_mut())?;
                dense
            }
            None => None,
        };
        // LSQ step sizes fall at most by half per step: an adaptive optimizer moves each
        // parameter by about its learning rate, which takes a step of that size to zero
        // (and the layer's output with it) within a few steps.
        let halves = self
            .step_sizes
            .iter()
            .map(|n| Ok(self.params.get(n)?.scale(0.5)))
            .collect::<Result<Vec<_>>>()?;
        self.optimizer.step(&mut self.params, &grads, &mut ctx)?;
        for (n, half) in self.step_sizes.iter().zip(&halves) {
            self.params.get_mut(n)?.max_in_place(half)?;
        }
        if let Some(s) = self.sparsity.as_mut() {
            let rows = (batch.target.len() as f64 / weight).round() as usize;
            s.after_step(&mut self.params, dense.as_ref(), self.step + 1, rows)?;
        }
        self.average.after_step(&mut self.params)?;
        if let Some((bp, fb, before)) = diag {
            let (model, params) = (&self.model, &self.params);
            let layers = cost.aside(|| {
                crate::diag::compare(model, params, &out.grads, &bp, &fb, Some(&before))
            })?;
            let rec = json!({"type": "diagnostics", "epoch": epoch + 1, "step": self.step, "loss": out.loss, "layers": layers});
            self.records.record(rec)?;
        }
        self.step += 1;
        if cfg.log_every > 0 && self.step.is_multiple_of(cfg.log_every) {
            let seconds =
                self.start.elapsed().as_secs_f64() - self.not_training_seconds - cost.aside_seconds;
            let mut rec = json!({"type": "step", "epoch": epoch + 1, "step": self.step, "loss": out.loss, "seconds": seconds});
            if let Some(s) = &self.scaler {
                rec["loss_scale"] = json!(s.scale);
            }
            if let Some(r) = self.rule.relaxation() {
                rec["relax_steps"] = json!(r.steps);
                rec["relax_residual"] = json!(r.residual.last());
                rec["relax_energy_first"] = json!(r.energy.first());
                rec["relax_energy_last"] = json!(r.energy.last());
            }
            self.records.log(&rec)?;
        }
        Ok(())
    }

    /// Test (and validation) loss and accuracy at the evaluation weights (the average
    /// when one is kept), into the epoch record.
    fn evaluate_into(&self, epoch: usize, rec: &mut Value) -> Result<()> {
        let params = self.average.for_evaluation(epoch, &self.params)?;
        let sets = [
            ("test", Some(&self.splits.test)),
            ("validation", self.splits.validation.as_ref()),
        ];
        for (name, data) in sets {
            if let Some(data) = data {
                let ev = evaluate(
                    self.rule.as_ref(),
                    &self.model,
                    &params,
                    data,
                    self.loss,
                    self.cfg.eval_batch_size,
                )?;
                rec[format!("{name}_loss")] = json!(ev.loss);
                rec[format!("{name}_accuracy")] = json!(ev.accuracy);
            }
        }
        Ok(())
    }

    /// `summary.json`: final and best accuracy, memory split, work, energy, time and the
    /// resolved config.
    fn summary(&self) -> Value {
        let acc = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let history = &self.records.history;
        let epochs: Vec<&Value> = history.iter().filter(|r| r["type"] == "epoch").collect();
        let last = epochs.last().copied();
        let (best_epoch, best) = epochs
            .iter()
            .map(|r| (r["epoch"].as_u64().unwrap_or(0), acc(r, "test_accuracy")))
            .fold((0, f64::NEG_INFINITY), |b, x| if x.1 > b.1 { x } else { b });
        let epoch_secs: Vec<f64> = epochs.iter().map(|r| acc(r, "epoch_seconds")).collect();
        let (model, params, meter) = (&self.model, &self.params, &self.meter);
        let model_bytes = model.num_parameters(params) * 4;
        let avg_bytes: usize = params
            .iter()
            .filter(|(n, _)| n.starts_with("avg."))
            .map(|(_, t)| t.size_bytes())
            .sum();
        let counted = |v: usize| {
            if crate::mem::installed() {
                json!(v)
            } else {
                Value::Null
            }
        };
        let (flops, bytes) = meter.per_step();
        json!({
            "dataset": self.cfg.dataset,
            "model": self.cfg.model,
            "rule": self.rule.name(),
            "optimizer": self.optimizer.name(),
            "epochs": epochs.len(),
            "steps": self.step,
            "test_accuracy": last.map(|r| acc(r, "test_accuracy")),
            "test_loss": last.map(|r| acc(r, "test_loss")),
            "train_accuracy": last.map(|r| acc(r, "train_accuracy")),
            "best_test_accuracy": if epochs.is_empty() { Value::Null } else { json!(best) },
            "diagnostics": summarise_diagnostics(history),
            "pretrain": self.pretrain,
            "best_epoch": best_epoch,
            "parameters": model.num_parameters(params),
            "memory": {
                "parameter_bytes": model_bytes,
                // Weight averages (`avg.*`) count as optimizer state.
                "optimizer_state_bytes": self.optimizer.state().tensors.size_bytes() + avg_bytes,
                "activation_bytes_per_step": meter.activation_bytes,
                "rule_state_bytes": params.size_bytes() - model_bytes - avg_bytes + self.rule.state_bytes(),
                "peak_training_bytes_above_baseline": counted(meter.peak_above_baseline),
                "step_peak_bytes": counted(meter.step_peak),
                "update_bytes": meter.update_bytes,
                "allocator": if crate::mem::installed() { "counting" } else { "not installed" },
            },
            "sparse": self.sparsity.as_ref().map(|s| s.summary(params)),
            "precision": self.model.precision().to_string(),
            "loss_scaler": self.scaler,
            "flops_per_step": flops,
            "bytes_moved_per_step": bytes,
            "energy_joules": meter.joules,
            "energy_source": meter.source,
            "total_seconds": self.start.elapsed().as_secs_f64(),
            "seconds_per_epoch": if epoch_secs.is_empty() { Value::Null } else { json!(epoch_secs.iter().sum::<f64>() / epoch_secs.len() as f64) },
            "config": self.records.config,
        })
    }
}

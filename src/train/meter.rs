//! What training costs and how it goes: time, counted work, energy and memory per epoch
//! and per run, and the per-epoch training statistics.

use std::time::Instant;

use serde_json::{Value, json};

use super::energy;
use crate::error::Result;
use crate::rule::{Batch, Rule, StepOutput};
use crate::tensor::counters::{self, Work};

/// One epoch's cost: its clock, counted work, energy meter and heap baseline, with the
/// time and work of diagnostics kept apart.
pub(super) struct EpochMeter {
    start: Instant,
    energy: Option<energy::Meter>,
    work0: Work,
    live0: usize,
    /// Seconds spent in diagnostics.
    pub aside_seconds: f64,
    aside_work: Work,
}

/// What an [`EpochMeter`] measured.
pub(super) struct EpochCost {
    /// Training seconds (diagnostics excluded).
    pub seconds: f64,
    /// Counted work of training.
    pub work: Work,
    /// Energy of training and where the figure comes from.
    pub joules: f64,
    pub source: energy::Source,
    /// Heap high-water mark above the bytes live when the epoch started.
    pub peak_above_baseline: usize,
}

impl EpochMeter {
    /// Starts measuring (and resets the heap high-water mark).
    pub fn start() -> EpochMeter {
        let energy = energy::Meter::start();
        let work0 = counters::read();
        crate::mem::reset_peak();
        EpochMeter {
            start: Instant::now(),
            energy,
            work0,
            live0: crate::mem::live(),
            aside_seconds: 0.0,
            aside_work: Work::default(),
        }
    }

    /// Runs `f` (diagnostics) outside the epoch's time and counted work.
    pub fn aside<T>(&mut self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let (t, w) = (Instant::now(), counters::read());
        let out = f();
        self.aside_seconds += t.elapsed().as_secs_f64();
        self.aside_work = self.aside_work + (counters::read() - w);
        out
    }

    /// The epoch's cost so far.
    pub fn finish(&self) -> EpochCost {
        let work = counters::read() - self.work0 - self.aside_work;
        let (joules, source) = energy::energy(self.energy.as_ref(), work);
        EpochCost {
            seconds: self.start.elapsed().as_secs_f64() - self.aside_seconds,
            work,
            joules,
            source,
            peak_above_baseline: crate::mem::peak().saturating_sub(self.live0),
        }
    }
}

/// A run's totals over its epochs, and the memory its rule steps took.
#[derive(Default)]
pub(super) struct RunMeter {
    pub work: Work,
    pub steps: u64,
    pub joules: f64,
    pub source: energy::Source,
    pub peak_above_baseline: usize,
    /// Heap high-water mark inside a rule step above the live bytes at its start
    /// (activations, temporaries and the returned update).
    pub step_peak: usize,
    /// The largest update a step returned.
    pub update_bytes: usize,
    /// The largest trace a step kept.
    pub activation_bytes: usize,
}

impl RunMeter {
    /// Runs one rule step, measuring its memory.
    pub fn step(&mut self, f: impl FnOnce() -> Result<StepOutput>) -> Result<StepOutput> {
        let (live, peak) = (crate::mem::live(), crate::mem::peak());
        crate::mem::reset_peak();
        let out = f()?;
        self.step_peak = self.step_peak.max(crate::mem::peak().saturating_sub(live));
        self.update_bytes = self.update_bytes.max(out.grads.size_bytes());
        self.activation_bytes = self.activation_bytes.max(out.trace.activation_bytes());
        crate::mem::raise_peak(peak);
        Ok(out)
    }

    /// Adds a finished epoch of `steps` optimizer steps.
    pub fn add_epoch(&mut self, cost: &EpochCost, steps: u64) {
        self.work = self.work + cost.work;
        self.steps += steps;
        self.joules += cost.joules;
        self.source = cost.source;
        self.peak_above_baseline = self.peak_above_baseline.max(cost.peak_above_baseline);
    }

    /// Counted FLOPs and bytes moved per optimizer step.
    pub fn per_step(&self) -> (f64, f64) {
        let n = self.steps.max(1) as f64;
        (self.work.flops as f64 / n, self.work.bytes as f64 / n)
    }
}

/// An epoch's training statistics: the loss and accuracy of the minibatches at the
/// parameters each step started from, and the rules' own diagnostics.
#[derive(Default)]
pub(super) struct EpochStats {
    loss_sum: f64,
    correct: usize,
    /// Rows seen.
    pub seen: usize,
    /// Rows with a prediction (Forward-Forward predicting by goodness has none).
    judged: usize,
    /// Relaxation of energy-based rules: Σ steps, Σ final residual, count, Σ backtracks.
    relax: (f64, f64, f64, f64),
    /// The rule's auxiliary loss: name, Σ, count.
    aux: (&'static str, f64, f64),
    /// Optimizer steps the f16 loss scaler skipped (non-finite gradients).
    pub skipped: u64,
}

impl EpochStats {
    /// Adds one step's output on `batch`.
    pub fn add(&mut self, out: &StepOutput, batch: &Batch, rule: &dyn Rule) -> Result<()> {
        let rows = batch.target.len();
        self.loss_sum += out.loss * rows as f64;
        if let Some((name, v)) = rule.aux_loss() {
            self.aux = (name, self.aux.1 + v, self.aux.2 + 1.0);
        }
        if let Some(r) = rule.relaxation() {
            self.relax.0 += r.steps as f64;
            self.relax.1 += r.residual.last().copied().unwrap_or(f64::NAN);
            self.relax.2 += 1.0;
            self.relax.3 += r.backtracks as f64;
        }
        if let Some(o) = out.prediction.as_ref().or(out.trace.output())
            && o.shape().first() == Some(&rows)
            && let Some(c) = super::count_correct(o, batch)?
        {
            self.correct += c;
            self.judged += rows;
        }
        self.seen += rows;
        Ok(())
    }

    /// Sums the ranks' statistics (data-parallel training): every rank then holds the
    /// epoch's over the whole batches.
    pub fn reduce(&mut self, comm: &dyn super::comm::Communicator) {
        let mut v = [
            self.loss_sum,
            self.correct as f64,
            self.seen as f64,
            self.judged as f64,
            self.relax.0,
            self.relax.1,
            self.relax.2,
            self.relax.3,
            self.aux.1,
            self.aux.2,
        ];
        comm.all_reduce_sum(&mut v);
        self.loss_sum = v[0];
        (self.correct, self.seen, self.judged) = (v[1] as usize, v[2] as usize, v[3] as usize);
        self.relax = (v[4], v[5], v[6], v[7]);
        (self.aux.1, self.aux.2) = (v[8], v[9]);
    }

    /// Mean minibatch loss.
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.seen.max(1) as f64
    }

    /// Writes the statistics into an epoch record.
    pub fn write(&self, rec: &mut Value) {
        rec["train_loss"] = json!(self.loss());
        rec["train_accuracy"] = if self.judged > 0 {
            json!(self.correct as f64 / self.judged as f64)
        } else {
            Value::Null
        };
        if self.aux.2 > 0.0 {
            rec[self.aux.0] = json!(self.aux.1 / self.aux.2);
        }
        if self.relax.2 > 0.0 {
            rec["relax_steps_mean"] = json!(self.relax.0 / self.relax.2);
            rec["relax_residual_mean"] = json!(self.relax.1 / self.relax.2);
            if self.relax.3 > 0.0 {
                rec["relax_backtracks_mean"] = json!(self.relax.3 / self.relax.2);
            }
        }
    }
}

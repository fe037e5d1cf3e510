//! Natural gradient with a diagonal empirical Fisher (Amari 1998; the baseline that
//! K-FAC improves on): θ ← θ − η g/(F + λ), F an exponential moving average of the
//! per-sample squared gradients.
//!
//! For a Linear layer the per-sample gradients come from the step's [`Trace`]: with the
//! error δ of the mean loss (carrying 1/n) and input x, sample i's gradient is nδᵢxᵢᵀ,
//! so diag F_W = (1/n)Σᵢ(nδᵢxᵢᵀ)² = n·(δ⊙δ)ᵀ(x⊙x) and diag F_b = n·Σᵢδᵢ⊙δᵢ. Whatever
//! the rule assigned as δ is used, so this works with DFA as with BP. Parameters outside
//! Linear layers fall back to the squared minibatch gradient.

use super::{Optimizer, OptimizerState, Schedule, StepContext};
use crate::error::{Error, Result};
use crate::nn::{Grads, Params, Trace};
use crate::tensor::Tensor;

/// Diagonal natural-gradient optimizer.
pub struct NaturalGradient {
    lr: f64,
    schedule: Schedule,
    damping: f64,
    decay: f64,
    fisher: Params,
    step: u64,
}

impl NaturalGradient {
    /// Step size η, damping λ and EMA decay of the Fisher estimate.
    pub fn new(lr: f64, schedule: Schedule, damping: f64, decay: f64) -> Self {
        NaturalGradient {
            lr,
            schedule,
            damping,
            decay,
            fisher: Params::new(),
            step: 0,
        }
    }

    /// Per-sample squared-gradient means of the Linear layers in `trace`.
    pub fn diagonal_fisher(trace: &Trace, grads: &Grads) -> Result<Params> {
        let mut f = Params::new();
        for (rec, err) in trace.records.iter().zip(&trace.errors) {
            let (wk, bk) = (
                format!("{}.weight", rec.layer),
                format!("{}.bias", rec.layer),
            );
            let (Ok(gw), Some(d)) = (grads.get(&wk), err) else {
                continue;
            };
            let n = d.dims2()?.0 as f64;
            let x = &rec.input;
            if x.dims2().is_err() || gw.shape() != [d.dims2()?.1, x.dims2()?.1] {
                continue;
            }
            let d2 = d.mul(d)?;
            f.insert(wk, d2.matmul(true, &x.mul(x)?, false)?.scale(n));
            if grads.contains(&bk) {
                f.insert(bk, d2.sum_rows()?.scale(n));
            }
        }
        for (n, g) in grads.iter() {
            if !f.contains(n) {
                f.insert(n, g.mul(g)?);
            }
        }
        Ok(f)
    }
}

impl Optimizer for NaturalGradient {
    fn name(&self) -> &str {
        "natgrad"
    }

    fn step(&mut self, params: &mut Params, grads: &Grads, ctx: &mut StepContext) -> Result<()> {
        let trace = ctx.trace.ok_or_else(|| {
            Error::config(
                "optimizer",
                "natgrad reads per-layer inputs and errors from the step's trace",
            )
        })?;
        self.step += 1;
        let fb = Self::diagonal_fisher(trace, grads)?;
        for (n, f) in fb.iter() {
            match self.fisher.get_mut(n) {
                Ok(ema) => ema.axpby(self.decay, 1.0 - self.decay, f)?,
                Err(_) => self.fisher.insert(n, f.clone()),
            }
        }
        let lr = self.lr * self.schedule.factor(self.step - 1);
        for (n, g) in grads.iter() {
            let u: Tensor = g.div_shifted(self.fisher.get(n)?, self.damping)?;
            params.get_mut(n)?.axpy(-lr, &u)?;
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.lr * self.schedule.factor(self.step)
    }

    fn state(&self) -> OptimizerState {
        OptimizerState {
            step: self.step,
            tensors: self.fisher.clone(),
        }
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        self.step = state.step;
        self.fisher = state.tensors.clone();
        Ok(())
    }
}

//! Natural gradient (Amari 1998; the baseline that K-FAC improves on) with an empirical
//! Fisher F in one of two shapes (`natgrad_blocks`):
//!
//! - `diagonal`: θ ← θ − η g/(F + λ), F an exponential moving average of the per-sample
//!   squared gradients. For a Linear layer the per-sample gradients come from the step's
//!   [`Trace`]: with the error δ of the mean loss (carrying 1/n) and input x, sample i's
//!   gradient is nδᵢxᵢᵀ, so diag F_W = (1/n)Σᵢ(nδᵢxᵢᵀ)² = n·(δ⊙δ)ᵀ(x⊙x) and
//!   diag F_b = n·Σᵢδᵢ⊙δᵢ.
//! - `layer`: the full block of each Linear layer (W and b together) on the minibatch,
//!   F = UᵀU/n with rows uᵢ = n·vec(δᵢāᵢᵀ), ā = [x; 1]. The block is never formed: by
//!   Woodbury, (F + λI)⁻¹g = (g − Uᵀ(nλI + UUᵀ)⁻¹Ug)/λ, where UUᵀ = n²(δδᵀ)⊙(āāᵀ)
//!   is n × n, Ug = n·rowsum((δḠ)⊙ā) and Uᵀc = n·δᵀdiag(c)ā for Ḡ = [∇W | ∇b]. No
//!   moving average (the block changes size with the batch).
//!
//! Whatever the rule assigned as δ is used, so this works with DFA as with BP.
//! Parameters outside Linear layers fall back to the diagonal of the squared minibatch
//! gradient.

use super::{Optimizer, OptimizerState, Schedule, StepContext};
use crate::error::{Error, Result};
use crate::nn::{Grads, Params, Trace};
use crate::tensor::Tensor;

/// Diagonal natural-gradient optimizer.
pub struct NaturalGradient {
    blocks: bool,
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
            blocks: false,
            lr,
            schedule,
            damping,
            decay,
            fisher: Params::new(),
            step: 0,
        }
    }

    /// Uses the per-layer block of the minibatch Fisher instead of the diagonal.
    pub fn with_layer_blocks(mut self) -> Self {
        self.blocks = true;
        self
    }

    /// (F + λI)⁻¹Ḡ for one Linear layer's block of the minibatch empirical Fisher, with
    /// errors `delta` [n, out] (carrying 1/n), inputs `x` [n, in] and
    /// `joined` = [∇W | ∇b] (or ∇W without a bias).
    pub fn layer_block_solve(
        delta: &Tensor,
        x: &Tensor,
        joined: &Tensor,
        bias: bool,
        damping: f64,
    ) -> Result<Tensor> {
        let (n, _) = delta.dims2()?;
        let nf = n as f64;
        let xa = if bias {
            let (r, c) = x.dims2()?;
            let v = x.to_vec_f64();
            let mut a = Vec::with_capacity(r * (c + 1));
            for i in 0..r {
                a.extend_from_slice(&v[i * c..(i + 1) * c]);
                a.push(1.0);
            }
            Tensor::from_vec_f64(&[r, c + 1], a)?.to_dtype(x.dtype())
        } else {
            x.clone()
        };
        let k = delta
            .matmul(false, delta, true)?
            .mul(&xa.matmul(false, &xa, true)?)?
            .scale(nf * nf);
        let ug = delta
            .matmul(false, joined, false)?
            .mul(&xa)?
            .matmul(
                false,
                &Tensor::full(&[xa.dims2()?.1, 1], 1.0, xa.dtype()),
                false,
            )?
            .scale(nf);
        let km = super::kfac::to_faer(&k)?;
        let sys = faer::Mat::from_fn(n, n, |i, j| {
            0.5 * (km[(i, j)] + km[(j, i)]) + if i == j { nf * damping } else { 0.0 }
        });
        let llt = sys.llt(faer::Side::Lower).map_err(|e| {
            Error::config(
                "natgrad",
                format!("the damped layer block is not positive definite ({e:?}); raise --natgrad-damping"),
            )
        })?;
        let c = faer::linalg::solvers::Solve::solve(&llt, super::kfac::to_faer(&ug)?);
        let c = super::kfac::from_faer(&c, &ug)?;
        // Uᵀc = n·δᵀ diag(c) ā.
        let (r, w) = xa.dims2()?;
        let cv = c.to_vec_f64();
        let xv = xa.to_vec_f64();
        let scaled: Vec<f64> = (0..r * w).map(|q| xv[q] * cv[q / w]).collect();
        let scaled = Tensor::from_vec_f64(&[r, w], scaled)?.to_dtype(xa.dtype());
        let utc = delta.matmul(true, &scaled, false)?.scale(nf);
        let mut out = joined.sub(&utc)?;
        out.scale_in_place(1.0 / damping);
        Ok(out)
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
    fn needs_trace(&self) -> bool {
        true
    }

    fn name(&self) -> &str {
        "natgrad"
    }

    // The diagonal Fisher is averaged over the ranks; the layer blocks are batch-sized.
    fn splits_over_batch(&self) -> bool {
        !self.blocks
    }

    fn step(&mut self, params: &mut Params, grads: &Grads, ctx: &mut StepContext) -> Result<()> {
        let trace = ctx.trace.ok_or_else(|| {
            Error::config(
                "optimizer",
                "natgrad reads per-layer inputs and errors from the step's trace",
            )
        })?;
        self.step += 1;
        let lr = self.lr * self.schedule.factor(self.step - 1);
        let mut solved = Grads::new();
        if self.blocks {
            for b in super::kfac::linear_blocks(trace, grads) {
                let Some(delta) = trace.errors[b.index].as_ref() else {
                    continue;
                };
                let (wk, bk) = (format!("{}.weight", b.name), format!("{}.bias", b.name));
                let gb = if b.bias { Some(grads.get(&bk)?) } else { None };
                let joined = super::kfac::join_bias(grads.get(&wk)?, gb)?;
                let v = Self::layer_block_solve(
                    delta,
                    &trace.records[b.index].input,
                    &joined,
                    b.bias,
                    self.damping,
                )?;
                if b.bias {
                    let (w, bb) = super::kfac::split_bias(&v, grads.get(&bk)?.shape())?;
                    solved.insert(wk, w);
                    solved.insert(bk, bb);
                } else {
                    solved.insert(wk, v);
                }
            }
        }
        for (n, u) in solved.iter() {
            params.get_mut(n)?.axpy(-lr, u)?;
        }
        let mut fb = Self::diagonal_fisher(trace, grads)?;
        // Means over the rows (or, outside Linear layers, read from the summed update):
        // the ranks' average is the whole batch's.
        let mut parts: Vec<&mut Tensor> = fb.iter_mut().map(|(_, t)| t).collect();
        super::average_over_ranks(ctx, &mut parts)?;
        for (n, f) in fb.iter() {
            match self.fisher.get_mut(n) {
                Ok(ema) => ema.axpby(self.decay, 1.0 - self.decay, f)?,
                Err(_) => self.fisher.insert(n, f.clone()),
            }
        }
        for (n, g) in grads.iter() {
            if solved.contains(n) {
                continue;
            }
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

crate::settings_struct! {
    /// Natural gradient with the empirical Fisher (Amari 1998).
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct NatgradSettings {
        /// Damping λ added to the Fisher.
        #[legacy = "natgrad_damping"]
        pub damping: f64 = 1e-4,
        /// Shape of the Fisher: `diagonal` or `layer` (full per-layer blocks of the
        /// minibatch Fisher, solved by Woodbury).
        #[legacy = "natgrad_blocks"]
        pub blocks: String = "diagonal".into(),
        /// EMA decay of the diagonal Fisher estimate.
        #[legacy = "curvature_decay"]
        pub decay: f64 = 0.95,
    }
}

impl crate::settings::Settings for NatgradSettings {
    fn validate(&self) -> Result<()> {
        use crate::settings::{Range, real};
        real("natgrad_damping", self.damping, Range::Positive)?;
        real("curvature_decay", self.decay, Range::Fraction)?;
        if !matches!(self.blocks.as_str(), "diagonal" | "layer") {
            return Err(crate::Error::unknown(
                "natgrad blocks",
                &self.blocks,
                &["diagonal", "layer"],
            ));
        }
        Ok(())
    }
}

/// Natural gradient.
pub const NATGRAD: super::OptimizerSpec = super::OptimizerSpec {
    name: "natgrad",
    summary: "natural gradient, empirical Fisher: diagonal or per-layer blocks (Woodbury) from the trace",
    paper: "Amari 1998",
    settings: <NatgradSettings as crate::settings::Described>::fields,
    reads: &["schedule"],
    build: |cfg, n| {
        let s: NatgradSettings = super::own(cfg)?;
        let ng = NaturalGradient::new(
            cfg.lr,
            Schedule::parse(&cfg.schedule, n)?,
            s.damping,
            s.decay,
        );
        Ok(Box::new(if s.blocks == "layer" {
            ng.with_layer_blocks()
        } else {
            ng
        }))
    },
    ..super::OptimizerSpec::DEFAULT
};

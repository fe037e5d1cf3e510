//! 1-bit Adam (Tang, Gan, Awan, Rajbhandari, Li, Lian, Liu, Zhang & He 2021, "1-bit
//! Adam: communication efficient large-scale training with Adam's convergence speed").
//!
//! Adam's variance v settles early in training; once it is frozen, the update
//! m/(√v + ε) is linear in the momentum m, which then tolerates error-compensated 1-bit
//! compression as momentum SGD does.
//!
//! - Warm-up (steps 1…`freeze_step`): Adam on the ranks' averaged gradient (full-precision
//!   all-reduce): m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g².
//! - Compression stage: v stays frozen; each rank moves the shared m with its own
//!   gradient, mᵣ = β₁m + (1−β₁)gᵣ, takes its Adam direction uᵣ = mᵣ/(√v + ε) (at most
//!   (1 − β₁)/√(1 − β₂) in size per coordinate, Adam's own bound), and the ranks average
//!   uᵣ through one sign bit per element and one scale ‖·‖₂/√d per tensor, with error
//!   feedback (the part of uᵣ the message lost is added to the rank's next one). With v
//!   frozen and shared, averaging u is averaging m; m becomes the momentum behind ū.
//! - θ ← θ − η(u + λθ).
//!
//! Where this departs from the paper, and why (MNIST 784-1000-1000-10, batch 128):
//! - m and v are bias-corrected as in Adam, v's correction 1 − β₂^T stopping at the
//!   freeze step T. At the paper's warm-ups (thousands of steps) it is 1; at short ones
//!   an uncorrected frozen v is too small (at T = 10, by 100×) and the steps diverged.
//! - The bound on u: with v frozen at T = 200, a weight of a pixel that was rarely lit
//!   during the warm-up keeps a tiny v, and when later batches light it, m/√v grows
//!   without limit; one process with no compression at all reached NaN 46 steps after
//!   the freeze (and 67 after T = 400). Adam itself never steps further than the bound.
//! - The paper compresses m. One sign scale per tensor gives every coordinate the same
//!   magnitude, so a small-v coordinate's step would again be scale/√v; compressing u
//!   bounds each step by the tensor's RMS step and sends the same bytes.
//! - Coordinates with v = 0 at the freeze (a gradient that was zero all through the
//!   warm-up) keep m = 0, as DeepSpeed's momentum mask does.
//!
//! Weight decay is coupled, as in DeepSpeed. In one process nothing is compressed: the
//! compression stage is Adam with a frozen variance. The error-feedback residual lives in
//! the communicator's reducer and is not checkpointed (a resumed run starts it at zero,
//! as DeepSpeed does on loading).

use super::{Optimizer, OptimizerState, Schedule, StepContext};
use crate::error::Result;
use crate::nn::{Grads, Params};
use crate::tensor::{Tensor, Unary};

/// 1-bit Adam's state and settings.
pub struct OnebitAdam {
    lr: f64,
    schedule: Schedule,
    s: OnebitSettings,
    weight_decay: f64,
    m: Params,
    v: Params,
    /// Derived from the frozen v at the first compressed step (not saved): the mask
    /// 1[v > 0] under each name and 1/(√(v/c₂) + ε) under `r/{name}`.
    frozen: Params,
    step: u64,
}

impl OnebitAdam {
    /// 1-bit Adam at rate `lr`.
    pub fn new(lr: f64, schedule: Schedule, s: OnebitSettings, weight_decay: f64) -> Self {
        OnebitAdam {
            lr,
            schedule,
            s,
            weight_decay,
            m: Params::new(),
            v: Params::new(),
            frozen: Params::new(),
            step: 0,
        }
    }

    /// Whether the variance is frozen and the momentum compressed (after the warm-up).
    pub fn compressing(&self) -> bool {
        self.step > self.s.freeze_step
    }
}

impl Optimizer for OnebitAdam {
    fn name(&self) -> &str {
        "onebit_adam"
    }

    fn splits_over_batch(&self) -> bool {
        true
    }

    fn reduces_own_update(&self) -> bool {
        true
    }

    fn step(&mut self, params: &mut Params, grads: &Grads, ctx: &mut StepContext) -> Result<()> {
        self.step += 1;
        let (b1, b2) = (self.s.beta1, self.s.beta2);
        let mut names = Vec::new();
        let mut local = Vec::new();
        for (n, g) in grads.iter() {
            names.push(n.to_string());
            local.push(g.clone());
        }
        // Bias corrections; v's stops at the freeze.
        let t = self.step.min(i32::MAX as u64) as i32;
        let tv = self.step.min(self.s.freeze_step).min(i32::MAX as u64) as i32;
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(tv));
        let eps = self.s.eps;
        let mut updates = Vec::with_capacity(names.len());
        if !self.compressing() {
            // Warm-up: Adam on the averaged gradient.
            let mut parts: Vec<&mut Tensor> = local.iter_mut().collect();
            super::average_over_ranks(ctx, &mut parts)?;
            for (n, g) in names.iter().zip(&local) {
                match self.m.get_mut(n) {
                    Ok(m) => m.axpby(b1, 1.0 - b1, g)?,
                    Err(_) => self.m.insert(n, g.scale(1.0 - b1)),
                }
                match self.v.get_mut(n) {
                    Ok(v) => v.axpby_sq(b2, 1.0 - b2, g)?,
                    Err(_) => {
                        let mut v = Tensor::zeros(g.shape(), g.dtype());
                        v.axpby_sq(0.0, 1.0 - b2, g)?;
                        self.v.insert(n, v);
                    }
                }
                updates.push(Tensor::adam_ratio(
                    self.m.get(n)?,
                    self.v.get(n)?,
                    c1,
                    c2,
                    eps,
                )?);
            }
        } else {
            // Frozen v: this rank's momentum mᵣ and direction uᵣ = (mᵣ/c₁)/(√(v/c₂) + ε),
            // then the compressed average ū.
            // |u| at most Adam's own bound (1 − β₁)/√(1 − β₂) (Kingma & Ba 2015, §2.1):
            // a coordinate whose gradient was rare during the warm-up keeps a tiny frozen
            // v, and later gradients would otherwise step it by m/√v without limit.
            let bound = (1.0 - b1) / (1.0 - b2).sqrt();
            for (n, g) in names.iter().zip(&local) {
                let mut m = self.m.get(n)?.clone();
                m.axpby(b1, 1.0 - b1, g)?;
                updates.push(Tensor::adam_ratio(&m, self.v.get(n)?, c1, c2, eps)?.clamp_abs(bound));
            }
            let mut parts: Vec<&mut Tensor> = updates.iter_mut().collect();
            if let Some(r) = ctx.reducer.as_deref_mut() {
                r.average_signs(&mut parts)?;
            }
            for (n, u) in names.iter().zip(updates.iter_mut()) {
                if !self.frozen.contains(n) {
                    // From the frozen v, once: 1/(√(v/c₂) + ε) and the mask 1[v > 0].
                    let v = self.v.get(n)?;
                    let ones = Tensor::full(v.shape(), 1.0, v.dtype());
                    self.frozen.insert(
                        format!("r/{n}"),
                        Tensor::adam_ratio(&ones, v, 1.0, c2, eps)?,
                    );
                    self.frozen.insert(n, v.unary(Unary::Sign));
                }
                // Coordinates whose gradient was zero all through the warm-up (v = 0:
                // MNIST's border pixels) keep m = 0 (DeepSpeed's momentum mask).
                *u = u.mul(self.frozen.get(n)?)?;
                // m = c₁ ū (√(v/c₂) + ε): the shared momentum behind ū.
                let m = u
                    .div_shifted(self.frozen.get(&format!("r/{n}"))?, 0.0)?
                    .scale(c1);
                self.m.insert(n, m);
            }
        }
        let lr = self.lr * self.schedule.factor(self.step - 1);
        for (n, mut u) in names.iter().zip(updates) {
            let p = params.get_mut(n)?;
            if self.weight_decay > 0.0 {
                u.axpy(self.weight_decay, p)?;
            }
            p.axpy(-lr, &u)?;
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.lr * self.schedule.factor(self.step)
    }

    fn state(&self) -> OptimizerState {
        OptimizerState::of_stores(self.step, &[("m", &self.m), ("v", &self.v)])
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        self.step = state.step;
        let mut stores = state.stores(&["m", "v"]).into_iter();
        self.m = stores.next().unwrap_or_default();
        self.v = stores.next().unwrap_or_default();
        self.frozen = Params::new();
        Ok(())
    }
}

crate::settings_struct! {
    /// 1-bit Adam (Tang et al. 2021).
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct OnebitSettings {
        /// Decay β₁ of the momentum m.
        pub beta1: f64 = 0.9,
        /// Decay β₂ of the variance v (during the warm-up).
        pub beta2: f64 = 0.999,
        /// ε in m/(√v + ε).
        pub eps: f64 = 1e-8,
        /// Warm-up steps of full-precision Adam before v freezes and m is compressed.
        /// The paper warms up for 15–25 % of training (BERT-Base: 16k of 118k steps);
        /// 200 is about a seventh of 3 MNIST epochs at batch 128.
        pub freeze_step: u64 = 200,
    }
}

impl crate::settings::Settings for OnebitSettings {
    fn validate(&self) -> Result<()> {
        use crate::settings::{Range, real};
        real("beta1", self.beta1, Range::Fraction)?;
        real("beta2", self.beta2, Range::Fraction)?;
        real("eps", self.eps, Range::Positive)?;
        Ok(())
    }
}

/// 1-bit Adam.
pub const ONEBIT_ADAM: super::OptimizerSpec = super::OptimizerSpec {
    name: "onebit_adam",
    summary: "1-bit Adam: Adam warm-up, then frozen variance and 1-bit error-compensated momentum across ranks",
    paper: "Tang et al. 2021",
    settings: <OnebitSettings as crate::settings::Described>::fields,
    lr: Some(1e-3),
    reads: &["schedule", "weight_decay"],
    build: |cfg, n| {
        let s: OnebitSettings = super::own(cfg)?;
        Ok(Box::new(OnebitAdam::new(
            cfg.lr,
            Schedule::parse(&cfg.schedule, n)?,
            s,
            cfg.weight_decay,
        )))
    },
    ..super::OptimizerSpec::DEFAULT
};

//! Sophia (Liu, Li, Hall, Liang & Ma 2023, "Sophia: a scalable stochastic second-order
//! optimizer for language model pre-training"):
//!
//! m ← β₁m + (1−β₁)g; every k steps h ← β₂h + (1−β₂)ĥ with ĥ a diagonal curvature
//! estimate; θ ← θ − ηλθ − η·clip(m / max(γh, ε), 1).
//!
//! ĥ: Hutchinson, ĥ = u ⊙ (Hu) with u ~ N(0, I) and exact Hessian–vector products, or
//! the Gauss–Newton variant ĥ = u ⊙ (Gu) (positive semi-definite; our stand-in for the
//! paper's Gauss–Newton–Bartlett estimator, which samples labels). Both come from the
//! step's objective.

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use super::{Optimizer, OptimizerState, Schedule, StepContext};
use crate::error::{Error, Result};
use crate::nn::{Grads, Params};
use crate::tensor::Tensor;

/// Sophia's state and settings.
pub struct Sophia {
    lr: f64,
    schedule: Schedule,
    beta1: f64,
    beta2: f64,
    gamma: f64,
    weight_decay: f64,
    every: u64,
    gauss_newton: bool,
    m: Params,
    h: Params,
    rng: crate::Rng,
    step: u64,
}

impl Sophia {
    /// Sophia with step η, β₁, β₂, γ, decoupled decay λ, estimate interval k and
    /// estimator (Gauss–Newton when `gauss_newton`, else Hutchinson on the Hessian).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        lr: f64,
        schedule: Schedule,
        beta1: f64,
        beta2: f64,
        gamma: f64,
        weight_decay: f64,
        every: u64,
        gauss_newton: bool,
    ) -> Self {
        Sophia {
            lr,
            schedule,
            beta1,
            beta2,
            gamma,
            weight_decay,
            every: every.max(1),
            gauss_newton,
            m: Params::new(),
            h: Params::new(),
            rng: crate::Rng::seed_from_u64(0x50f1a),
            step: 0,
        }
    }
}

impl Optimizer for Sophia {
    fn needs_curvature(&self) -> bool {
        true
    }

    fn name(&self) -> &str {
        "sophia"
    }

    fn splits_over_batch(&self) -> bool {
        true
    }

    fn step(&mut self, params: &mut Params, grads: &Grads, ctx: &mut StepContext) -> Result<()> {
        self.step += 1;
        for (n, g) in grads.iter() {
            match self.m.get_mut(n) {
                Ok(m) => m.axpby(self.beta1, 1.0 - self.beta1, g)?,
                Err(_) => self.m.insert(n, g.scale(1.0 - self.beta1)),
            }
        }
        if self.step % self.every == 1 || self.every == 1 {
            let obj = ctx.objective.as_mut().ok_or_else(|| {
                Error::config("optimizer", "sophia needs an objective for its curvature estimate (the trainer provides one)")
            })?;
            let mut u = Params::new();
            for (n, g) in grads.iter() {
                let v: Vec<f64> = (0..g.len())
                    .map(|_| StandardNormal.sample(&mut self.rng))
                    .collect();
                u.insert(n, Tensor::from_vec_f64(g.shape(), v)?.to_dtype(g.dtype()));
            }
            let hu = if self.gauss_newton {
                obj.gauss_newton_vector(params, &u)?
            } else {
                obj.hessian_vector(params, &u)?
            };
            let mut ests = Vec::new();
            for (n, ui) in u.iter() {
                ests.push((n.to_string(), ui.mul(hu.get(n)?)?));
            }
            // u is the same on every rank (one seeded stream) and H the mean over the
            // batch, so u ⊙ Hu averages over the ranks' shares.
            let mut parts: Vec<&mut Tensor> = ests.iter_mut().map(|(_, t)| t).collect();
            super::average_over_ranks(ctx, &mut parts)?;
            for (n, est) in ests {
                let n = n.as_str();
                match self.h.get_mut(n) {
                    Ok(h) => h.axpby(self.beta2, 1.0 - self.beta2, &est)?,
                    Err(_) => self.h.insert(n, est.scale(1.0 - self.beta2)),
                }
            }
        }
        let lr = self.lr * self.schedule.factor(self.step - 1);
        for (n, _) in grads.iter() {
            let m = self.m.get(n)?;
            // max(γh, ε) with ε = 1e-12, then the ratio clipped to [−1, 1].
            let mut floor = match self.h.get(n) {
                Ok(h) => h.scale(self.gamma),
                Err(_) => Tensor::zeros(m.shape(), m.dtype()),
            };
            floor.max_in_place(&Tensor::full(m.shape(), 1e-12, m.dtype()))?;
            let ratio = m.div_shifted(&floor, 0.0)?.clamp_abs(1.0);
            let p = params.get_mut(n)?;
            if self.weight_decay > 0.0 {
                p.scale_in_place(1.0 - lr * self.weight_decay);
            }
            p.axpy(-lr, &ratio)?;
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.lr * self.schedule.factor(self.step)
    }

    fn state(&self) -> OptimizerState {
        OptimizerState::of_stores(self.step, &[("m", &self.m), ("h", &self.h)])
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        self.step = state.step;
        let mut stores = state.stores(&["m", "h"]).into_iter();
        self.m = stores.next().unwrap_or_default();
        self.h = stores.next().unwrap_or_default();
        Ok(())
    }
}

crate::settings_struct! {
    /// Sophia (Liu et al. 2023).
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct SophiaSettings {
        /// Decay β₁ of the gradient's moving average m.
        pub beta1: f64 = 0.9,
        /// Decay β₂ of the curvature estimate h.
        pub beta2: f64 = 0.999,
        /// Curvature estimator: `hutchinson` (Hessian) or `gauss-newton`.
        #[legacy = "sophia_estimator"]
        pub estimator: String = "hutchinson".into(),
        /// γ in the clipped step m / max(γh, ε).
        #[legacy = "sophia_gamma"]
        pub gamma: f64 = 0.01,
        /// Steps between curvature estimates.
        #[legacy = "sophia_every"]
        pub every: u64 = 10,
    }
}

impl crate::settings::Settings for SophiaSettings {
    fn validate(&self) -> Result<()> {
        use crate::settings::{Range, at_least, real};
        real("beta1", self.beta1, Range::Fraction)?;
        real("beta2", self.beta2, Range::Fraction)?;
        real("sophia_gamma", self.gamma, Range::Positive)?;
        at_least("sophia_every", self.every, 1)?;
        if !matches!(self.estimator.as_str(), "hutchinson" | "gauss-newton") {
            return Err(crate::Error::unknown(
                "sophia estimator",
                &self.estimator,
                &["hutchinson", "gauss-newton"],
            ));
        }
        Ok(())
    }
}

/// Sophia.
pub const SOPHIA: super::OptimizerSpec = super::OptimizerSpec {
    name: "sophia",
    summary: "Sophia: clipped m/max(γh, ε), h a Hutchinson or Gauss–Newton diagonal",
    paper: "Liu et al. 2023",
    settings: <SophiaSettings as crate::settings::Described>::fields,
    lr: Some(1e-4),
    reads: &["schedule", "weight_decay"],
    build: |cfg, n| {
        let s: SophiaSettings = super::own(cfg)?;
        Ok(Box::new(Sophia::new(
            cfg.lr,
            Schedule::parse(&cfg.schedule, n)?,
            s.beta1,
            s.beta2,
            s.gamma,
            cfg.weight_decay,
            s.every,
            s.estimator == "gauss-newton",
        )))
    },
    ..super::OptimizerSpec::DEFAULT
};

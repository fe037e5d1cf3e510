//! Sharpness-aware minimisation around any other optimizer.

use serde::{Deserialize, Serialize};

use super::{
    Optimizer, OptimizerConfig, OptimizerSpec, OptimizerState, StepContext, build_optimizer, own,
};
use crate::error::{Error, Result};
use crate::nn::{Grads, Params};
use crate::settings::{Choice, Described, Range::*, Settings, real};

crate::settings_struct! {
    /// SAM (Foret et al. 2021).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct SamSettings {
        /// Neighbourhood radius ρ (the paper's 0.05).
        #[legacy = "sam_rho"]
        pub rho: f64 = 0.05,
        /// The optimizer that steps with the sharpness-aware update: a name or a tagged
        /// table with its settings (`inner = { name = "adam", beta1 = 0.95 }`).
        pub inner: Choice = Choice::named("momentum"),
    }
}

impl Settings for SamSettings {
    fn validate(&self) -> Result<()> {
        real("sam_rho", self.rho, NonNegative)
    }
}

crate::settings_struct! {
    /// ASAM (Kwon et al. 2021).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct AsamSettings {
        /// Neighbourhood radius ρ; the paper uses 0.5 on CIFAR-10 (10× SAM's, as T
        /// scales ε by |θ|).
        #[legacy = "sam_rho"]
        pub rho: f64 = 0.5,
        /// η in T = |θ| + η.
        #[legacy = "asam_eta"]
        pub eta: f64 = 0.01,
        /// The optimizer that steps with the sharpness-aware update: a name or a tagged
        /// table with its settings.
        pub inner: Choice = Choice::named("momentum"),
    }
}

impl Settings for AsamSettings {
    fn validate(&self) -> Result<()> {
        real("sam_rho", self.rho, NonNegative)?;
        real("asam_eta", self.eta, NonNegative)
    }
}

/// The inner optimizer, with the run's shared settings.
fn inner(cfg: &OptimizerConfig, choice: Choice, total_steps: u64) -> Result<Box<dyn Optimizer>> {
    build_optimizer(
        &OptimizerConfig {
            optimizer: choice,
            ..cfg.clone()
        },
        total_steps,
    )
}

/// SAM.
pub const SAM: OptimizerSpec = OptimizerSpec {
    name: "sam",
    summary: "SAM: inner step with the update at θ + ρg/‖g‖",
    paper: "Foret et al. 2021",
    settings: SamSettings::fields,
    lr: None,
    wraps: true,
    build: |cfg, n| {
        let s: SamSettings = own(cfg)?;
        Ok(Box::new(Sam {
            name: "sam".into(),
            inner: inner(cfg, s.inner, n)?,
            rho: s.rho,
            adaptive: false,
            eta: 0.0,
        }))
    },
    ..OptimizerSpec::DEFAULT
};

/// ASAM.
pub const ASAM: OptimizerSpec = OptimizerSpec {
    name: "asam",
    summary: "ASAM: scale-invariant SAM, ε = ρT²g/‖Tg‖, T = |θ| + η",
    paper: "Kwon et al. 2021",
    settings: AsamSettings::fields,
    lr: None,
    wraps: true,
    build: |cfg, n| {
        let s: AsamSettings = own(cfg)?;
        Ok(Box::new(Sam {
            name: "asam".into(),
            inner: inner(cfg, s.inner, n)?,
            rho: s.rho,
            adaptive: true,
            eta: s.eta,
        }))
    },
    ..OptimizerSpec::DEFAULT
};

/// Sharpness-aware minimisation (Foret et al. 2021): the inner optimizer steps at θ with
/// the rule's update evaluated at θ + ε, ε = ρ·g/‖g‖ — or, adaptive (ASAM, Kwon et al.
/// 2021), ε = ρ·T²g/‖Tg‖ with T = |θ| + η element-wise. The second update comes from the
/// step's [`super::Objective`], so SAM works with any rule. ρ = 0 gives the inner optimizer.
pub struct Sam {
    name: String,
    inner: Box<dyn Optimizer>,
    rho: f64,
    adaptive: bool,
    eta: f64,
}

impl Optimizer for Sam {
    fn needs_trace(&self) -> bool {
        self.inner.needs_trace()
    }

    fn state_copies(&self) -> u64 {
        // The inner optimizer's, the perturbed parameters and the second update.
        self.inner.state_copies() + 2
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn step(&mut self, params: &mut Params, grads: &Grads, ctx: &mut StepContext) -> Result<()> {
        let objective = ctx.objective.as_mut().ok_or_else(|| {
            Error::config(
                "optimizer",
                format!(
                    "{} needs an objective to re-evaluate the update (the trainer provides one)",
                    self.name
                ),
            )
        })?;
        // T ⊙ g (T = 1 for SAM) and its global norm.
        let mut tg = Grads::new();
        for (n, g) in grads.iter() {
            let t = if self.adaptive {
                g.mul(
                    &params
                        .get(n)?
                        .unary(crate::tensor::Unary::Abs)
                        .add_scalar(self.eta),
                )?
            } else {
                g.clone()
            };
            tg.insert(n, t);
        }
        let norm = tg.global_norm();
        let mut perturbed = params.clone();
        if norm > 0.0 && self.rho > 0.0 {
            for (n, t) in tg.iter() {
                // ε = ρ·T·(T g)/‖T g‖
                let e = if self.adaptive {
                    t.mul(
                        &params
                            .get(n)?
                            .unary(crate::tensor::Unary::Abs)
                            .add_scalar(self.eta),
                    )?
                } else {
                    t.clone()
                };
                perturbed.get_mut(n)?.axpy(self.rho / norm, &e)?;
            }
        }
        let (_, g_sharp) = if norm > 0.0 && self.rho > 0.0 {
            objective.evaluate(&perturbed)?
        } else {
            (0.0, grads.clone())
        };
        let mut inner_ctx = StepContext {
            trace: ctx.trace,
            objective: None,
            reducer: None,
        };
        self.inner.step(params, &g_sharp, &mut inner_ctx)
    }

    fn learning_rate(&self) -> f64 {
        self.inner.learning_rate()
    }

    fn state(&self) -> OptimizerState {
        self.inner.state()
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        self.inner.load_state(state)
    }
}

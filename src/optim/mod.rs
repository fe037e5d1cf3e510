//! Optimizers: turn a rule's update directions into parameter changes.
//!
//! First-order methods are [`transform::Chain`]s of small transforms with explicit state
//! (as in optax); each named optimizer is a one-line composition in [`build_optimizer`]:
//!
//! | name | chain |
//! |---|---|
//! | `sgd` | [clip] → [L2] → −η |
//! | `momentum` | [clip] → [L2] → momentum(μ) → −η |
//! | `nesterov` | [clip] → [L2] → momentum(μ, nesterov) → −η |
//! | `adam` | [clip] → [L2] → adam(β₁, β₂, ε) → −η |
//! | `adamw` | [clip] → adam(β₁, β₂, ε) → decoupled decay → −η |
//!
//! SGD is momentum with μ = 0. Optimizers that need more than a gradient get it through
//! [`StepContext`]: the [`Trace`] (per-layer inputs and error signals, for K-FAC) and an
//! [`Objective`] that re-evaluates the rule's update at other parameters (SAM, L-BFGS
//! line searches, Hessian-free).

mod schedule;
pub mod transform;

pub use schedule::{Decay, SCHEDULE_NAMES, Schedule};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nn::{Grads, Params, Trace};
use transform::{AddDecayedWeights, Chain, ClipByGlobalNorm, ScaleByAdam, ScaleByLearningRate};

/// Something an optimizer can re-evaluate: the loss and the rule's update direction at
/// given parameters, on the current batch.
pub trait Objective {
    /// `(loss, update direction)` at `params`.
    fn evaluate(&mut self, params: &Params) -> Result<(f64, Grads)>;
}

/// Extra inputs of one optimizer step.
pub struct StepContext<'a> {
    /// The step's trace (inputs and error signals per layer), when the rule kept one.
    pub trace: Option<&'a Trace>,
    /// The objective on the current batch.
    pub objective: Option<&'a mut dyn Objective>,
}

impl StepContext<'_> {
    /// A context with nothing in it.
    pub fn empty() -> Self {
        StepContext {
            trace: None,
            objective: None,
        }
    }
}

/// Serialisable optimizer state: the step count and named tensors.
#[derive(Debug, Clone, Default)]
pub struct OptimizerState {
    /// Steps taken.
    pub step: u64,
    /// State tensors, keyed `"{transform index}.{transform}/{slot}/{param}"`.
    pub tensors: Params,
}

/// An optimizer with explicit state.
pub trait Optimizer: Send {
    /// The CLI name.
    fn name(&self) -> &str;
    /// Updates `params` in place from `grads` (entries without a gradient stay put).
    fn step(&mut self, params: &mut Params, grads: &Grads, ctx: &mut StepContext) -> Result<()>;
    /// The learning rate the next step will use.
    fn learning_rate(&self) -> f64;
    /// Current state.
    fn state(&self) -> OptimizerState;
    /// Restores a state from [`Optimizer::state`].
    fn load_state(&mut self, state: &OptimizerState) -> Result<()>;
}

/// Hyperparameters of the first-order optimizers. Every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Name (see [`OPTIMIZERS`]); default `sgd`.
    pub name: String,
    /// Base learning rate η₀; default 0.01.
    pub lr: f64,
    /// Momentum μ for `momentum`/`nesterov`; default 0.9.
    pub momentum: f64,
    /// Adam β₁; default 0.9.
    pub beta1: f64,
    /// Adam β₂; default 0.999.
    pub beta2: f64,
    /// Adam ε; default 1e-8.
    pub eps: f64,
    /// Weight decay; default 0. Coupled (L2) except for `adamw`.
    pub weight_decay: f64,
    /// Apply decay decoupled from the moments (`adamw` always does); default false.
    pub decoupled_weight_decay: bool,
    /// Exempt biases from weight decay; default false (as PyTorch).
    pub no_decay_on_bias: bool,
    /// Clip the update's global norm to this value before anything else; default none.
    pub clip_norm: Option<f64>,
    /// Learning-rate schedule (see [`SCHEDULE_NAMES`]); default `constant`.
    pub schedule: String,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            name: "sgd".into(),
            lr: 0.01,
            momentum: 0.9,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            no_decay_on_bias: false,
            clip_norm: None,
            schedule: "constant".into(),
        }
    }
}

/// Optimizer names with one line each.
pub const OPTIMIZERS: &[(&str, &str)] = &[
    (
        "sgd",
        "stochastic gradient descent: θ ← θ − η g (Robbins & Monro 1951)",
    ),
    (
        "momentum",
        "heavy-ball momentum: b ← μb + g, θ ← θ − η b (Polyak 1964)",
    ),
    (
        "nesterov",
        "Nesterov momentum: θ ← θ − η (g + μb) (Sutskever et al. 2013)",
    ),
    (
        "adam",
        "Adam: bias-corrected first/second moments (Kingma & Ba 2015)",
    ),
    (
        "adamw",
        "AdamW: Adam with decoupled weight decay (Loshchilov & Hutter 2019)",
    ),
];

/// Builds a named optimizer for a run of `total_steps` steps.
pub fn build_optimizer(cfg: &OptimizerConfig, total_steps: u64) -> Result<Box<dyn Optimizer>> {
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(Error::config(
            "learning rate",
            format!("{} must be a positive number", cfg.lr),
        ));
    }
    if cfg.weight_decay < 0.0 {
        return Err(Error::config("weight decay", "must be non-negative"));
    }
    let schedule = Schedule::parse(&cfg.schedule, total_steps)?;
    let decay = || -> Box<dyn transform::Transform> {
        Box::new(AddDecayedWeights {
            weight_decay: cfg.weight_decay,
            skip_suffixes: if cfg.no_decay_on_bias {
                vec![".bias".into()]
            } else {
                vec![]
            },
        })
    };
    let mut chain: Vec<Box<dyn transform::Transform>> = Vec::new();
    if let Some(c) = cfg.clip_norm {
        if c.is_nan() || c <= 0.0 {
            return Err(Error::config("clip norm", "must be positive"));
        }
        chain.push(Box::new(ClipByGlobalNorm { max_norm: c }));
    }
    let decoupled = cfg.decoupled_weight_decay || cfg.name == "adamw";
    if !decoupled && cfg.weight_decay > 0.0 {
        chain.push(decay());
    }
    match cfg.name.as_str() {
        "sgd" => {}
        "momentum" => chain.push(Box::new(transform::Trace::new(cfg.momentum, false))),
        "nesterov" => chain.push(Box::new(transform::Trace::new(cfg.momentum, true))),
        "adam" | "adamw" => chain.push(Box::new(ScaleByAdam::new(cfg.beta1, cfg.beta2, cfg.eps))),
        other => {
            return Err(Error::unknown(
                "optimizer",
                other,
                &OPTIMIZERS.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ));
        }
    }
    if decoupled && cfg.weight_decay > 0.0 {
        chain.push(decay());
    }
    let lr = ScaleByLearningRate {
        lr: cfg.lr,
        schedule,
    };
    Ok(Box::new(ChainOptimizer {
        name: cfg.name.clone(),
        chain: Chain(chain),
        lr,
        step: 0,
    }))
}

/// A first-order optimizer: a chain of transforms, then −η, then θ ← θ + update.
#[derive(Debug)]
pub struct ChainOptimizer {
    name: String,
    chain: Chain,
    lr: ScaleByLearningRate,
    step: u64,
}

impl Optimizer for ChainOptimizer {
    fn name(&self) -> &str {
        &self.name
    }

    fn step(&mut self, params: &mut Params, grads: &Grads, _ctx: &mut StepContext) -> Result<()> {
        self.step += 1;
        // The chain's last link, −η, is fused into θ ← θ − η·u (one pass, no copy).
        let mut updates = grads.clone();
        self.chain.update(&mut updates, params, self.step)?;
        params.axpy(-self.lr.rate(self.step), &updates)
    }

    fn learning_rate(&self) -> f64 {
        self.lr.rate(self.step + 1)
    }

    fn state(&self) -> OptimizerState {
        let mut tensors = Params::new();
        for (i, t) in self.chain.0.iter().enumerate() {
            for (n, v) in t.state().iter() {
                tensors.insert(format!("{i}.{}/{n}", t.name()), v.clone());
            }
        }
        OptimizerState {
            step: self.step,
            tensors,
        }
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        self.step = state.step;
        for (i, t) in self.chain.0.iter_mut().enumerate() {
            let pre = format!("{i}.{}/", t.name());
            let mut mine = Params::new();
            for (n, v) in state.tensors.iter() {
                if let Some(rest) = n.strip_prefix(&pre) {
                    mine.insert(rest, v.clone());
                }
            }
            t.load_state(&mine)?;
        }
        Ok(())
    }
}

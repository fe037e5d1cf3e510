//! Optimizers: turn a rule's update directions into parameter changes.
//!
//! Each optimizer describes itself in its own file: an [`OptimizerSpec`] (name, summary,
//! paper, settings struct, default learning rate, which shared settings it reads, how it
//! is built); [`REGISTRY`] lists them, one line per file. First-order methods are
//! [`transform::Chain`]s of small transforms with explicit state (as in optax), each a
//! one-line composition in `first_order.rs`:
//!
//! | name | chain |
//! |---|---|
//! | `sgd` | [clip] → [L2] → −η |
//! | `momentum` | [clip] → [L2] → momentum(μ) → −η |
//! | `nesterov` | [clip] → [L2] → momentum(μ, nesterov) → −η |
//! | `adam` | [clip] → [L2] → adam(β₁, β₂, ε[, amsgrad]) → −η |
//! | `adamw` | [clip] → adam(β₁, β₂, ε) → decoupled decay → −η |
//! | `rmsprop` | [clip] → [L2] → rms(α, ε[, centred][, μ]) → −η |
//! | `adagrad` | [clip] → [L2] → adagrad(ε) → −η |
//! | `nadam` | [clip] → [L2] → nadam(β₁, β₂, ε) → −η |
//! | `lars` | [clip] → L2 → trust ratio(c) → momentum(μ) → −η |
//! | `lamb` | [clip] → adam(β₁, β₂, ε) → decoupled decay → trust ratio(c) → −η |
//! | `lion` | [clip] → lion(β₁, β₂) → decoupled decay → −η |
//! | `sam`, `asam` | wrap the `inner` optimizer (see [`Sam`]) |
//!
//! SGD is momentum with μ = 0. LARS with trust coefficient 0 (no trust ratio) is
//! momentum SGD with L2 decay; LAMB with trust coefficient 0 is AdamW. [clip] is
//! clipping by global norm and/or by value. Optimizers that need more than a gradient get it through
//! [`StepContext`]: the [`Trace`] (per-layer inputs and error signals, for K-FAC) and an
//! [`Objective`] that re-evaluates the rule's update at other parameters (SAM, L-BFGS
//! line searches, Hessian-free).

/// The curvature–vector products live with the model ([`crate::nn::curvature`]).
pub use crate::nn::curvature;
mod first_order;
mod groups;
mod hessian_free;
pub mod kfac;
mod lbfgs;
mod natgrad;
mod onebit;
mod sam;
mod schedule;
mod sophia;
pub mod transform;

pub use first_order::{
    AdamSettings, ChainOptimizer, LambSettings, LarsSettings, LionSettings, MomentumSettings,
    NadamSettings, RmsSettings,
};
pub use groups::{ParamGroup, glob_match};
pub use hessian_free::{HessianFree, HfSettings};
pub use kfac::{FisherMode, InverseMethod, Kfac, KfacConfig};
pub use lbfgs::{Lbfgs, LbfgsSettings};
pub use natgrad::{NatgradSettings, NaturalGradient};
pub use onebit::{OnebitAdam, OnebitSettings};
pub use sam::{AsamSettings, Sam, SamSettings};
pub use sophia::{Sophia, SophiaSettings};

pub use schedule::{Decay, SCHEDULE_NAMES, Schedule};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nn::{Grads, Params, Trace};
use crate::settings::{Choice, Field, Table};

/// Something an optimizer can re-evaluate: the loss and the rule's update direction at
/// given parameters, on the current batch.
pub trait Objective {
    /// `(loss, update direction)` at `params`.
    fn evaluate(&mut self, params: &Params) -> Result<(f64, Grads)>;

    /// Gauss–Newton matrix of the loss at `params` applied to `v` (Hessian-free, natural
    /// gradient). Objectives without a model behind them do not provide it.
    fn gauss_newton_vector(&mut self, _params: &Params, _v: &Params) -> Result<Grads> {
        Err(Error::config(
            "objective",
            "provides no Gauss–Newton products",
        ))
    }

    /// Hessian of the loss at `params` applied to `v`.
    fn hessian_vector(&mut self, _params: &Params, _v: &Params) -> Result<Grads> {
        Err(Error::config("objective", "provides no Hessian products"))
    }

    /// The loss the objective measures, when it is one of the model losses.
    fn loss(&self) -> Option<crate::nn::Loss> {
        None
    }

    /// The error each layer receives from the rule when the output error is `d_out`,
    /// on the forward pass recorded in `trace` (K-FAC's sampled and Gauss–Newton
    /// factors).
    fn assign_errors(
        &mut self,
        _params: &Params,
        _trace: &Trace,
        _d_out: crate::tensor::Tensor,
    ) -> Result<Vec<Option<crate::tensor::Tensor>>> {
        Err(Error::config(
            "objective",
            "cannot assign errors for a given output error",
        ))
    }
}

/// Extra inputs of one optimizer step.
pub struct StepContext<'a> {
    /// The step's trace (inputs and error signals per layer), when the rule kept one.
    pub trace: Option<&'a Trace>,
    /// The objective on the current batch.
    pub objective: Option<&'a mut dyn Objective>,
    /// Data-parallel training: averages what the optimizer estimates from this rank's
    /// share of the batch (curvature factors, Fisher diagonals) over the ranks.
    pub reducer: Option<&'a mut dyn Reducer>,
}

/// Averages per-batch statistics over the ranks of a data-parallel run: each tensor
/// becomes Σᵣ wᵣ·tᵣ with wᵣ rank r's share of the global batch, so a statistic that is a
/// mean over the rows of a rank's share becomes the mean over the whole batch. Every rank
/// must pass the same tensors, in the same order and shapes.
pub trait Reducer {
    /// Replaces each tensor by its share-weighted average over the ranks, in one message.
    fn average(&mut self, tensors: &mut [&mut crate::tensor::Tensor]) -> Result<()>;
    /// This rank's index (0 in one process), for random draws that must differ by rank.
    fn rank(&self) -> usize;
    /// [`Reducer::average`] through one sign bit per element and one scale ‖t‖₂/√d per
    /// tensor, with error feedback: what a rank's message lost is added to its next one
    /// (1-bit Adam's compressed momentum).
    fn average_signs(&mut self, tensors: &mut [&mut crate::tensor::Tensor]) -> Result<()>;
}

/// Averages `tensors` over the ranks when the step has a reducer; one process leaves them.
pub fn average_over_ranks(
    ctx: &mut StepContext,
    tensors: &mut [&mut crate::tensor::Tensor],
) -> Result<()> {
    match ctx.reducer.as_deref_mut() {
        Some(r) if !tensors.is_empty() => r.average(tensors),
        _ => Ok(()),
    }
}

impl StepContext<'_> {
    /// A context with nothing in it.
    pub fn empty() -> Self {
        StepContext {
            trace: None,
            objective: None,
            reducer: None,
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

impl OptimizerState {
    /// The state of stores of per-parameter tensors, each under its prefix
    /// (`"m/{param}"`, ...).
    pub fn of_stores(step: u64, stores: &[(&str, &Params)]) -> OptimizerState {
        let mut tensors = Params::new();
        for (prefix, store) in stores {
            for (n, t) in store.iter() {
                tensors.insert(format!("{prefix}/{n}"), t.clone());
            }
        }
        OptimizerState { step, tensors }
    }

    /// The stores [`OptimizerState::of_stores`] wrote, one per prefix, in order.
    pub fn stores(&self, prefixes: &[&str]) -> Vec<Params> {
        let mut out = vec![Params::new(); prefixes.len()];
        for (n, t) in self.tensors.iter() {
            let hit = prefixes.iter().enumerate().find_map(|(i, p)| {
                n.strip_prefix(p)
                    .and_then(|r| r.strip_prefix('/'))
                    .map(|r| (i, r))
            });
            if let Some((i, rest)) = hit {
                out[i].insert(rest, t.clone());
            }
        }
        out
    }
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
    /// Whether [`Optimizer::step`] reads the rule's trace (`StepContext::trace`): the
    /// records of every layer. Rules that can free a block's activations as soon as it
    /// has updated keep them only when this is true.
    fn needs_trace(&self) -> bool {
        false
    }

    /// Whether the optimizer takes curvature products (Hessian or Gauss–Newton times a
    /// vector) of the loss in the model's parameters, so the rule's update must cover
    /// exactly those parameters.
    fn needs_curvature(&self) -> bool {
        false
    }

    /// Copies of the parameters its state holds (moments, history), for the memory
    /// estimate made before a run allocates.
    fn state_copies(&self) -> u64 {
        2
    }

    /// Whether a step on the ranks' summed update (and the statistics it averages
    /// through `StepContext::reducer`) equals the step one process takes on the whole
    /// batch, so data-parallel training may use it. Optimizers that re-evaluate the
    /// objective (line searches, SAM's ascent, CG) or build batch-sized matrices are not.
    fn splits_over_batch(&self) -> bool {
        false
    }

    /// Whether the optimizer averages the ranks' updates itself (through
    /// `StepContext::reducer`), so the trainer hands it this rank's own update.
    fn reduces_own_update(&self) -> bool {
        false
    }
}

/// An optimizer's description, declared in its own file; [`REGISTRY`] lists them.
#[derive(Clone, Copy)]
pub struct OptimizerSpec {
    /// The CLI name.
    pub name: &'static str,
    /// One line: what it does.
    pub summary: &'static str,
    /// The paper it comes from.
    pub paper: &'static str,
    /// Every setting of its own table (the fields of its settings structs).
    pub settings: fn() -> Vec<Field>,
    /// The learning rate a fresh run that gives none takes: its paper's or the
    /// reference implementation's; `None` for a wrapper (the inner optimizer's).
    pub lr: Option<f64>,
    /// The shared settings of [`OptimizerConfig`] it reads besides `lr`; another one set
    /// to other than its default is an error.
    pub reads: &'static [&'static str],
    /// Wraps the optimizer named by its `inner` setting (itself a tagged table), which
    /// then supplies the default rate and the shared settings read.
    pub wraps: bool,
    /// Builds it for a run of `total_steps` steps from a configuration whose table is
    /// resolved (every key its own, every setting present).
    pub build: fn(&OptimizerConfig, u64) -> Result<Box<dyn Optimizer>>,
}

/// The shared settings of the first-order optimizers (the transform chains).
pub const FIRST_ORDER_READS: &[&str] = &[
    "schedule",
    "weight_decay",
    "decoupled_weight_decay",
    "no_decay_on_bias",
    "param_groups",
    "clip_norm",
    "clip_value",
];

impl OptimizerSpec {
    /// The base the specs fill in.
    pub const DEFAULT: OptimizerSpec = OptimizerSpec {
        name: "",
        summary: "",
        paper: "",
        settings: Vec::new,
        lr: Some(0.01),
        reads: FIRST_ORDER_READS,
        wraps: false,
        build: |_, _| Err(Error::config("optimizer", "no optimizer")),
    };
}

/// Lists the specs of the optimizer files: one line per file.
macro_rules! registry {
    ($($module:ident: [$($spec:ident),+]),+ $(,)?) => {
        /// Every optimizer, in listing order.
        pub const REGISTRY: &[OptimizerSpec] = &[$($($module::$spec,)+)+];
    };
}

registry! {
    first_order: [SGD, MOMENTUM, NESTEROV, ADAM, ADAMW, RMSPROP, ADAGRAD, NADAM, LARS, LAMB, LION],
    sam: [SAM, ASAM],
    lbfgs: [LBFGS],
    hessian_free: [HF],
    natgrad: [NATGRAD],
    kfac: [KFAC],
    sophia: [SOPHIA],
    onebit: [ONEBIT_ADAM],
}

/// The optimizer called `name`; an unknown name is an error that lists them.
pub fn spec(name: &str) -> Result<&'static OptimizerSpec> {
    REGISTRY
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| Error::unknown("optimizer", name, &names()))
}

/// The optimizers' names, in registry order.
pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|s| s.name).collect()
}

/// Every optimizer's every own setting, as (optimizer name, setting): where the flat
/// keys of earlier versions (`kfac_damping`, `beta1`) and their flags are looked up.
pub fn all_settings() -> Vec<(&'static str, Field)> {
    REGISTRY
        .iter()
        .flat_map(|s| (s.settings)().into_iter().map(move |f| (s.name, f)))
        .collect()
}

/// The optimizer a wrapper's `inner` setting names (its default when unset).
pub fn inner_choice(spec: &OptimizerSpec, table: &Table) -> Result<Choice> {
    let v = match table.get("inner") {
        Some(v) => v.clone(),
        None => (spec.settings)()
            .into_iter()
            .find(|f| f.key == "inner")
            .map(|f| f.default)
            .unwrap_or_default(),
    };
    serde_json::from_value(v)
        .map_err(|e| Error::config(format!("optimizer {} inner", spec.name), e.to_string()))
}

/// A run's optimizer choice with every setting filled in, a wrapper's `inner` table
/// too (unknown settings are errors that list the valid ones).
pub fn resolve(choice: &Choice) -> Result<Choice> {
    let s = spec(&choice.name)?;
    let fields = (s.settings)();
    crate::settings::check_keys(&format!("optimizer {}", s.name), &choice.settings, &fields)?;
    let mut full = crate::settings::resolved(&choice.settings, &fields);
    if s.wraps {
        let inner = inner_choice(s, &full)?;
        if spec(&inner.name)?.wraps {
            return Err(Error::config(
                format!("optimizer {}", s.name),
                format!(
                    "inner = \"{}\": a wrapper cannot wrap a wrapper; use e.g. inner = \"momentum\"",
                    inner.name
                ),
            ));
        }
        let inner = serde_json::to_value(resolve(&inner)?)
            .map_err(|e| Error::config("optimizer", e.to_string()))?;
        full.insert("inner".into(), inner);
    }
    Ok(Choice {
        name: s.name.to_string(),
        settings: full,
    })
}

/// The optimizer whose default rate and shared settings apply: the choice's, or its
/// inner optimizer's for a wrapper.
fn effective(choice: &Choice) -> Result<&'static OptimizerSpec> {
    let s = spec(&choice.name)?;
    if s.wraps {
        spec(&inner_choice(s, &choice.settings)?.name)
    } else {
        Ok(s)
    }
}

/// The learning rate the optimizer uses when none is given (a wrapper's: its inner
/// optimizer's).
pub fn default_lr(choice: &Choice) -> Result<f64> {
    Ok(effective(choice)?.lr.unwrap_or(0.01))
}

crate::settings_struct! {
    /// A run's optimizer: which one with its own settings (a tagged table), and the
    /// shared settings, which each optimizer reads as its spec says
    /// ([`OptimizerSpec::reads`]). Every field has a default.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default)]
    pub struct OptimizerConfig {
        /// The optimizer and its own settings, a tagged table (`[optimizer]` with
        /// `name = "kfac"`, `damping = 0.01`; `optimizer = "adam"` alone takes the
        /// defaults; `futureprop optimizers show NAME`). Default Adam (Kingma & Ba 2015):
        /// it trains every rule here at its own default rate, where SGD's best rate
        /// differs by rule.
        pub optimizer: Choice = Choice::named("adam"),
        /// Base learning rate η₀; a fresh run that gives none takes the optimizer's
        /// (`futureprop optimizers`: 1e-3 for Adam, 0.01 for SGD, ...).
        pub lr: f64 = 1e-3,
        /// Learning-rate schedule (see [`SCHEDULE_NAMES`]).
        pub schedule: String = "constant".into(),
        /// Weight decay. Coupled (L2) except for the optimizers that decouple it
        /// (adamw, lamb, lion) or with `decoupled_weight_decay`.
        pub weight_decay: f64 = 0.0,
        /// Apply decay decoupled from the moments (`adamw` always does).
        pub decoupled_weight_decay: bool = false,
        /// Exempt biases from weight decay (as PyTorch).
        pub no_decay_on_bias: bool = false,
        /// Per-parameter-group settings (see [`ParamGroup`]). Config files:
        /// `[[param_groups]]` tables; CLI: `--param-group PATTERN:key=value,...`.
        pub param_groups: Vec<ParamGroup> = Vec::new(),
        /// Clip the update's global norm to this value before anything else.
        pub clip_norm: Option<f64> = None,
        /// Clip every update element to ±this value.
        pub clip_value: Option<f64> = None,
    }
}

impl OptimizerConfig {
    /// Optimizer `name` at rate `lr`, every other setting at its default.
    pub fn new(name: &str, lr: f64) -> OptimizerConfig {
        OptimizerConfig {
            optimizer: Choice::named(name),
            lr,
            ..OptimizerConfig::default()
        }
    }

    /// Sets one of the optimizer's own settings (`with("beta1", 0.95)`; a wrapper's
    /// inner optimizer: `with("inner", json!({"name": "adam", "beta1": 0.95}))`).
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> OptimizerConfig {
        self.optimizer
            .settings
            .insert(key.to_string(), value.into());
        self
    }

    /// The optimizer's name.
    pub fn name(&self) -> &str {
        &self.optimizer.name
    }

    /// Every setting in its range and read by the optimizer, its table's keys its own;
    /// an error names the setting and the value.
    pub fn validate(&self) -> Result<()> {
        build_optimizer(self, 1).map(|_| ())
    }

    /// The shared settings' ranges, and that the optimizer reads each one set.
    fn check_shared(&self) -> Result<()> {
        use crate::settings::{Described, Range::*, real, real_opt};
        real("lr", self.lr, Positive)?;
        real("weight_decay", self.weight_decay, NonNegative)?;
        real_opt("clip_norm", self.clip_norm, Positive)?;
        real_opt("clip_value", self.clip_value, Positive)?;
        for g in &self.param_groups {
            g.validate()?;
        }
        let s = effective(&self.optimizer)?;
        let mine =
            serde_json::to_value(self).map_err(|e| Error::config("optimizer", e.to_string()))?;
        for f in OptimizerConfig::fields() {
            if matches!(f.key, "optimizer" | "lr" | "param_groups") || s.reads.contains(&f.key) {
                continue;
            }
            if mine[f.key] != f.default {
                return Err(Error::config(
                    f.key,
                    format!(
                        "{} is not read by {} (it reads: lr{}); drop it or choose another optimizer",
                        mine[f.key],
                        s.name,
                        s.reads.iter().map(|r| format!(", {r}")).collect::<String>()
                    ),
                ));
            }
        }
        // Every optimizer scales a group's change (lr_scale); per-group decay is the
        // first-order chains'.
        if !s.reads.contains(&"param_groups")
            && self.param_groups.iter().any(|g| g.weight_decay.is_some())
        {
            return Err(Error::config(
                "param group",
                format!(
                    "per-group weight_decay applies to the first-order optimizers; {} takes one --weight-decay",
                    s.name
                ),
            ));
        }
        Ok(())
    }
}

/// An optimizer's settings struct read from its resolved table.
pub(crate) fn own<S: crate::settings::Settings>(cfg: &OptimizerConfig) -> Result<S> {
    crate::settings::parse(
        &format!("optimizer {}", cfg.optimizer.name),
        &cfg.optimizer.settings,
    )
}

/// The fields of two settings structs (a spec's `settings`).
pub(crate) fn both<A: crate::settings::Described, B: crate::settings::Described>() -> Vec<Field> {
    let mut f = A::fields();
    f.extend(B::fields());
    f
}

/// Builds the configured optimizer for a run of `total_steps` steps.
pub fn build_optimizer(cfg: &OptimizerConfig, total_steps: u64) -> Result<Box<dyn Optimizer>> {
    let s = spec(&cfg.optimizer.name)?;
    cfg.check_shared()?;
    let mut cfg = OptimizerConfig {
        optimizer: resolve(&cfg.optimizer)?,
        ..cfg.clone()
    };
    if cfg.param_groups.iter().all(|g| g.lr_scale == 1.0) {
        return (s.build)(&cfg, total_steps);
    }
    // Build the optimizer with per-group decay only, then scale its changes.
    let groups = cfg.param_groups.clone();
    for g in &mut cfg.param_groups {
        g.lr_scale = 1.0;
    }
    Ok(Box::new(groups::Grouped {
        inner: (s.build)(&cfg, total_steps)?,
        groups,
    }))
}

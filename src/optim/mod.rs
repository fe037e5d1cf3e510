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
mod hessian_free;
pub mod kfac;
mod lbfgs;
mod natgrad;
mod schedule;
mod sophia;
pub mod transform;

pub use hessian_free::HessianFree;
pub use kfac::{FisherMode, InverseMethod, Kfac, KfacConfig};
pub use lbfgs::Lbfgs;
pub use natgrad::NaturalGradient;
pub use sophia::Sophia;

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
}

/// Settings for the parameters whose names match a pattern (PyTorch's parameter groups).
///
/// `params` is a glob over parameter names (`*` matches any run of characters; `|`
/// separates alternatives), e.g. `*.bias` or `fc1.*|fc2.*`. The first matching group
/// wins. `lr_scale` multiplies the learning rate (for every optimizer: the group's
/// parameter change is scaled, which is what a per-group learning rate does in SGD,
/// momentum, Adam and their relatives); `weight_decay` replaces the optimizer's decay
/// (first-order optimizers).
///
/// ```
/// use futureprop::optim::ParamGroup;
/// let g: ParamGroup = "*.bias:weight_decay=0,lr_scale=2".parse().unwrap();
/// assert!(g.matches("fc1.bias") && !g.matches("fc1.weight"));
/// assert_eq!((g.lr_scale, g.weight_decay), (2.0, Some(0.0)));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamGroup {
    /// Glob over parameter names.
    pub params: String,
    /// Learning-rate multiplier; default 1.
    #[serde(default = "one")]
    pub lr_scale: f64,
    /// Weight decay of the group; default: the optimizer's.
    #[serde(default)]
    pub weight_decay: Option<f64>,
}

fn one() -> f64 {
    1.0
}

/// `*`-glob match of `name` against `pattern` (alternatives separated by `|`).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn one_pattern(p: &[u8], s: &[u8]) -> bool {
        // Iterative wildcard matching with backtracking to the last `*`.
        let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
        while j < s.len() {
            if i < p.len() && p[i] != b'*' && p[i] == s[j] {
                i += 1;
                j += 1;
            } else if i < p.len() && p[i] == b'*' {
                star = Some(i);
                mark = j;
                i += 1;
            } else if let Some(st) = star {
                i = st + 1;
                mark += 1;
                j = mark;
            } else {
                return false;
            }
        }
        p[i..].iter().all(|&c| c == b'*')
    }
    pattern
        .split('|')
        .any(|alt| one_pattern(alt.trim().as_bytes(), name.as_bytes()))
}

impl ParamGroup {
    /// Whether the parameter `name` belongs to the group.
    pub fn matches(&self, name: &str) -> bool {
        glob_match(&self.params, name)
    }
}

impl std::str::FromStr for ParamGroup {
    type Err = Error;

    /// `PATTERN:key=value,key=value` with keys `lr_scale` and `weight_decay`.
    fn from_str(s: &str) -> Result<Self> {
        let (pat, rest) = s.rsplit_once(':').ok_or_else(|| {
            Error::config(
                "param group",
                format!("'{s}' is not PATTERN:key=value[,key=value], e.g. '*.bias:weight_decay=0'"),
            )
        })?;
        let mut g = ParamGroup {
            params: pat.to_string(),
            lr_scale: 1.0,
            weight_decay: None,
        };
        for kv in rest.split(',').filter(|k| !k.trim().is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                Error::config("param group", format!("'{kv}' in '{s}' is not key=value"))
            })?;
            let x: f64 = v.trim().parse().map_err(|_| {
                Error::config("param group", format!("'{v}' in '{s}' is not a number"))
            })?;
            match k.trim().replace('-', "_").as_str() {
                "lr_scale" => g.lr_scale = x,
                "weight_decay" => g.weight_decay = Some(x),
                other => {
                    return Err(Error::unknown(
                        "param group key",
                        other,
                        &["lr_scale", "weight_decay"],
                    ));
                }
            }
        }
        g.validate()?;
        Ok(g)
    }
}

impl ParamGroup {
    fn validate(&self) -> Result<()> {
        if !(self.lr_scale.is_finite() && self.lr_scale >= 0.0) {
            return Err(Error::config(
                "param group",
                format!("{}: lr_scale must be a non-negative number", self.params),
            ));
        }
        if self
            .weight_decay
            .is_some_and(|w| !(w.is_finite() && w >= 0.0))
        {
            return Err(Error::config(
                "param group",
                format!(
                    "{}: weight_decay must be a non-negative number",
                    self.params
                ),
            ));
        }
        Ok(())
    }
}

/// Scales each group's parameter change by its `lr_scale` around any optimizer.
struct Grouped {
    inner: Box<dyn Optimizer>,
    groups: Vec<ParamGroup>,
}

impl Optimizer for Grouped {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn needs_trace(&self) -> bool {
        self.inner.needs_trace()
    }

    fn needs_curvature(&self) -> bool {
        self.inner.needs_curvature()
    }

    fn step(&mut self, params: &mut Params, grads: &Grads, ctx: &mut StepContext) -> Result<()> {
        let scaled: Vec<(String, f64, crate::tensor::Tensor)> = params
            .iter()
            .filter_map(|(n, t)| {
                let s = self.groups.iter().find(|g| g.matches(n))?.lr_scale;
                (s != 1.0).then(|| (n.to_string(), s, t.clone()))
            })
            .collect();
        self.inner.step(params, grads, ctx)?;
        for (n, s, old) in scaled {
            // θ ← θ₀ + s(θ₁ − θ₀)
            params.get_mut(&n)?.axpby(s, 1.0 - s, &old)?;
        }
        Ok(())
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

crate::settings_struct! {
    /// Hyperparameters of the first-order optimizers. Every field has a default.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default)]
    pub struct OptimizerConfig {
        /// Name (see [`OPTIMIZERS`]). Key `optimizer` in configs. Adam (Kingma & Ba
        /// 2015): it trains every rule here at its own default rate, where SGD's best
        /// rate differs by rule.
        #[serde(rename = "optimizer")]
        pub name: String = "adam".into(),
        /// Base learning rate η₀; a fresh run that gives none takes the optimizer's
        /// ([`default_lr`]: 1e-3 for Adam, 0.01 for SGD, ...).
        pub lr: f64 = 1e-3,
        /// Momentum μ for `momentum`/`nesterov`.
        pub momentum: f64 = 0.9,
        /// Adam β₁.
        pub beta1: f64 = 0.9,
        /// Adam β₂.
        pub beta2: f64 = 0.999,
        /// Adam ε.
        pub eps: f64 = 1e-8,
        /// Weight decay. Coupled (L2) except for `adamw`.
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
        /// Learning-rate schedule (see [`SCHEDULE_NAMES`]).
        pub schedule: String = "constant".into(),
        /// Clip every update element to ±this value.
        pub clip_value: Option<f64> = None,
        /// AMSGrad variant of `adam`/`adamw`.
        pub amsgrad: bool = false,
        /// RMSProp decay α.
        pub rms_decay: f64 = 0.99,
        /// Centred RMSProp.
        pub centered: bool = false,
        /// RMSProp momentum.
        pub rms_momentum: f64 = 0.0,
        /// Trust coefficient of `lars` (none: 0.001) and `lamb` (none: 1); 0 disables the
        /// trust ratio.
        pub trust_coefficient: Option<f64> = None,
        /// Lion's β₂ (β₁ is `beta1`).
        pub lion_beta2: f64 = 0.99,
        /// SAM/ASAM neighbourhood radius ρ (about 0.5 suits ASAM).
        pub sam_rho: f64 = 0.05,
        /// ASAM's η in T = |θ| + η.
        pub asam_eta: f64 = 0.01,
        /// The optimizer SAM/ASAM wraps.
        pub inner: String = "momentum".into(),
        /// L-BFGS history length m.
        pub lbfgs_history: usize = 10,
        /// Damping λ: initial Tikhonov damping of `hf`; `natgrad` uses
        /// `natgrad_damping`.
        pub damping: f64 = 1.0,
        /// Damping λ of `natgrad`.
        pub natgrad_damping: f64 = 1e-4,
        /// Shape of `natgrad`'s Fisher: `diagonal` or `layer` (full per-layer blocks of the
        /// minibatch Fisher, solved by Woodbury).
        pub natgrad_blocks: String = "diagonal".into(),
        /// EMA decay of curvature estimates (`natgrad`, `kfac`).
        pub curvature_decay: f64 = 0.95,
        /// Maximum CG iterations per `hf` step.
        pub max_cg: usize = 50,
        /// Sophia's curvature estimator: `hutchinson` (Hessian) or `gauss-newton`.
        pub sophia_estimator: String = "hutchinson".into(),
        /// Sophia's γ.
        pub sophia_gamma: f64 = 0.01,
        /// Steps between Sophia's curvature estimates.
        pub sophia_every: u64 = 10,
        /// K-FAC Tikhonov damping λ (factored, π-corrected); 1e-3 diverged in the first
        /// MNIST steps, when the factors come from one batch.
        pub kfac_damping: f64 = 0.03,
        /// K-FAC's G factor: `sampled` (targets from the model, Martens & Grosse),
        /// `empirical` or `gauss-newton` (exact, one backward pass per output).
        pub kfac_fisher: String = "sampled".into(),
        /// K-FAC factor inversion: `cholesky` or `eigen` (1.4× faster per refresh here;
        /// `eigen` clamps negative eigenvalues of rank-deficient factors).
        pub kfac_inverse: String = "cholesky".into(),
        /// Steps between K-FAC factor updates.
        pub kfac_cov_every: u64 = 1,
        /// Steps between K-FAC inverse refreshes.
        pub kfac_inv_every: u64 = 20,
        /// K-FAC KL-clipping bound κ (Ba et al. 2017); 0: off.
        pub kfac_kl_clip: f64 = 0.0,
        /// Seed of K-FAC's sampled targets.
        pub kfac_seed: u64 = 0,
        /// K-FAC chooses its step size and momentum from the Gauss–Newton quadratic model
        /// and adapts its damping (Martens & Grosse §6.5, §7).
        pub kfac_adaptive: bool = false,
    }
}

/// The settings (keys of [`OptimizerConfig`]) optimizer `name` reads, for `futureprop
/// optimizers show`; the first-order ones also take `param_groups`.
pub fn settings_of(name: &str) -> Vec<crate::settings::Field> {
    use crate::settings::Described;
    const FIRST_ORDER: &[&str] = &[
        "lr",
        "schedule",
        "weight_decay",
        "decoupled_weight_decay",
        "no_decay_on_bias",
        "clip_norm",
        "clip_value",
    ];
    let own: &[&str] = match name {
        "momentum" | "nesterov" => &["momentum"],
        "adam" | "adamw" => &["beta1", "beta2", "eps", "amsgrad"],
        "nadam" => &["beta1", "beta2", "eps"],
        "rmsprop" => &["rms_decay", "centered", "rms_momentum", "eps"],
        "adagrad" => &["eps"],
        "lars" => &["momentum", "trust_coefficient"],
        "lamb" => &["beta1", "beta2", "eps", "amsgrad", "trust_coefficient"],
        "lion" => &["beta1", "lion_beta2"],
        "sam" => &["sam_rho", "inner"],
        "asam" => &["sam_rho", "asam_eta", "inner"],
        "lbfgs" => &["lbfgs_history"],
        "hf" => &["damping", "max_cg"],
        "natgrad" => &["natgrad_damping", "natgrad_blocks", "curvature_decay"],
        "kfac" => &[
            "momentum",
            "curvature_decay",
            "kfac_damping",
            "kfac_fisher",
            "kfac_inverse",
            "kfac_cov_every",
            "kfac_inv_every",
            "kfac_kl_clip",
            "kfac_seed",
            "kfac_adaptive",
        ],
        "sophia" => &[
            "beta1",
            "beta2",
            "sophia_estimator",
            "sophia_gamma",
            "sophia_every",
        ],
        _ => &[],
    };
    let common: &[&str] = match name {
        "lbfgs" | "hf" => &["lr"],
        "natgrad" => &["lr", "schedule"],
        "kfac" | "sophia" => &["lr", "schedule", "weight_decay"],
        _ => FIRST_ORDER,
    };
    OptimizerConfig::fields()
        .into_iter()
        .filter(|f| own.contains(&f.key) || common.contains(&f.key))
        .collect()
}

/// The learning rate an optimizer uses when none is given: the value its paper or the
/// reference implementation recommends (PyTorch's defaults where it has one).
pub fn default_lr(name: &str) -> f64 {
    match name {
        // Adam and its relatives (Kingma & Ba 2015; PyTorch's NAdam default is 2e-3).
        "adam" | "adamw" | "lamb" => 1e-3,
        "nadam" => 2e-3,
        "rmsprop" => 1e-3,
        // Lion's update has unit size per coordinate: 3–10× below AdamW's (Chen et al. 2023).
        "lion" => 1e-4,
        // LARS scales each layer's step by trust × ‖w‖/‖g‖ (trust 0.001), so its base rate
        // is large (You et al. 2017).
        "lars" => 1.0,
        // Curvature methods take (damped) Newton-like steps.
        "lbfgs" | "hf" => 1.0,
        "sophia" => 1e-4,
        _ => 0.01,
    }
}

impl OptimizerConfig {
    /// Every numeric setting in its range; the error names the setting and the value.
    pub fn validate(&self) -> Result<()> {
        use crate::settings::{Range::*, at_least, real, real_opt};
        real("lr", self.lr, Positive)?;
        real("momentum", self.momentum, Fraction)?;
        real("beta1", self.beta1, Fraction)?;
        real("beta2", self.beta2, Fraction)?;
        real("eps", self.eps, NonNegative)?;
        real("weight_decay", self.weight_decay, NonNegative)?;
        real_opt("clip_norm", self.clip_norm, Positive)?;
        real_opt("clip_value", self.clip_value, Positive)?;
        real("rms_decay", self.rms_decay, Fraction)?;
        real("rms_momentum", self.rms_momentum, Fraction)?;
        real_opt("trust_coefficient", self.trust_coefficient, NonNegative)?;
        real("lion_beta2", self.lion_beta2, Fraction)?;
        real("sam_rho", self.sam_rho, NonNegative)?;
        real("asam_eta", self.asam_eta, NonNegative)?;
        at_least("lbfgs_history", self.lbfgs_history as u64, 1)?;
        real("damping", self.damping, Positive)?;
        real("natgrad_damping", self.natgrad_damping, Positive)?;
        real("curvature_decay", self.curvature_decay, Fraction)?;
        at_least("max_cg", self.max_cg as u64, 1)?;
        real("sophia_gamma", self.sophia_gamma, Positive)?;
        at_least("sophia_every", self.sophia_every, 1)?;
        real("kfac_damping", self.kfac_damping, Positive)?;
        at_least("kfac_cov_every", self.kfac_cov_every, 1)?;
        at_least("kfac_inv_every", self.kfac_inv_every, 1)?;
        real("kfac_kl_clip", self.kfac_kl_clip, NonNegative)?;
        for g in &self.param_groups {
            g.validate()?;
        }
        Ok(())
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
    (
        "rmsprop",
        "RMSProp: g/√(EMA of g²), centred and momentum options (Hinton 2012)",
    ),
    ("adagrad", "Adagrad: g/√(Σg²) (Duchi, Hazan & Singer 2011)"),
    ("nadam", "NAdam: Adam with Nesterov momentum (Dozat 2016)"),
    (
        "lars",
        "LARS: momentum SGD with layer-wise trust ratio c‖θ‖/‖u‖ (You et al. 2017)",
    ),
    (
        "lamb",
        "LAMB: AdamW with layer-wise trust ratio (You et al. 2020)",
    ),
    (
        "lion",
        "Lion: sign of interpolated momentum (Chen et al. 2023)",
    ),
    (
        "sam",
        "SAM: inner step with the update at θ + ρg/‖g‖ (Foret et al. 2021); --inner NAME",
    ),
    (
        "asam",
        "ASAM: scale-invariant SAM, ε = ρT²g/‖Tg‖, T = |θ| + η (Kwon et al. 2021); --inner NAME",
    ),
    (
        "lbfgs",
        "L-BFGS: two-loop recursion with strong-Wolfe line search (Liu & Nocedal 1989)",
    ),
    (
        "hf",
        "Hessian-free: CG on damped Gauss–Newton products, LM damping (Martens 2010)",
    ),
    (
        "natgrad",
        "natural gradient, empirical Fisher: diagonal or per-layer blocks (Woodbury) from the trace (Amari 1998)",
    ),
    (
        "kfac",
        "K-FAC: Kronecker-factored Fisher blocks A⊗G per layer, damped inverses (Martens & Grosse 2015)",
    ),
    (
        "sophia",
        "Sophia: clipped m/max(γh, ε), h a Hutchinson or Gauss–Newton diagonal (Liu et al. 2023)",
    ),
];

/// Builds a named optimizer for a run of `total_steps` steps.
pub fn build_optimizer(cfg: &OptimizerConfig, total_steps: u64) -> Result<Box<dyn Optimizer>> {
    cfg.validate()?;
    if cfg.param_groups.iter().any(|g| g.weight_decay.is_some())
        && matches!(
            cfg.name.as_str(),
            "kfac" | "natgrad" | "hf" | "lbfgs" | "sophia"
        )
    {
        return Err(Error::config(
            "param group",
            format!(
                "per-group weight_decay applies to the first-order optimizers; {} takes one --weight-decay",
                cfg.name
            ),
        ));
    }
    if cfg.param_groups.iter().any(|g| g.lr_scale != 1.0) {
        // Build the optimizer with per-group decay only, then scale its changes.
        let inner_cfg = OptimizerConfig {
            param_groups: cfg
                .param_groups
                .iter()
                .map(|g| ParamGroup {
                    lr_scale: 1.0,
                    ..g.clone()
                })
                .collect(),
            ..cfg.clone()
        };
        return Ok(Box::new(Grouped {
            inner: build_optimizer(&inner_cfg, total_steps)?,
            groups: cfg.param_groups.clone(),
        }));
    }
    if cfg.name == "hf" {
        return Ok(Box::new(HessianFree::new(cfg.lr, cfg.damping, cfg.max_cg)));
    }
    if cfg.name == "sophia" {
        let gauss_newton = match cfg.sophia_estimator.as_str() {
            "hutchinson" => false,
            "gauss-newton" => true,
            other => {
                return Err(Error::unknown(
                    "sophia estimator",
                    other,
                    &["hutchinson", "gauss-newton"],
                ));
            }
        };
        return Ok(Box::new(Sophia::new(
            cfg.lr,
            Schedule::parse(&cfg.schedule, total_steps)?,
            cfg.beta1,
            cfg.beta2,
            cfg.sophia_gamma,
            cfg.weight_decay,
            cfg.sophia_every,
            gauss_newton,
        )));
    }
    if cfg.name == "kfac" {
        return Ok(Box::new(Kfac::new(
            KfacConfig {
                lr: cfg.lr,
                momentum: cfg.momentum,
                damping: cfg.kfac_damping,
                weight_decay: cfg.weight_decay,
                decay: cfg.curvature_decay,
                cov_every: cfg.kfac_cov_every,
                inv_every: cfg.kfac_inv_every,
                kl_clip: cfg.kfac_kl_clip,
                fisher: FisherMode::parse(&cfg.kfac_fisher)?,
                inverse: InverseMethod::parse(&cfg.kfac_inverse)?,
                seed: cfg.kfac_seed,
                adaptive: cfg.kfac_adaptive,
            },
            Schedule::parse(&cfg.schedule, total_steps)?,
        )?));
    }
    if cfg.name == "natgrad" {
        let ng = NaturalGradient::new(
            cfg.lr,
            Schedule::parse(&cfg.schedule, total_steps)?,
            cfg.natgrad_damping,
            cfg.curvature_decay,
        );
        return match cfg.natgrad_blocks.as_str() {
            "diagonal" => Ok(Box::new(ng)),
            "layer" => Ok(Box::new(ng.with_layer_blocks())),
            other => Err(Error::unknown(
                "natgrad blocks",
                other,
                &["diagonal", "layer"],
            )),
        };
    }
    if cfg.name == "lbfgs" {
        return Ok(Box::new(Lbfgs::new(cfg.lr, cfg.lbfgs_history)));
    }
    if cfg.name == "sam" || cfg.name == "asam" {
        if cfg.inner == "sam" || cfg.inner == "asam" {
            return Err(Error::config(
                "inner optimizer",
                "SAM cannot wrap SAM; use e.g. --inner momentum",
            ));
        }
        let inner = build_optimizer(
            &OptimizerConfig {
                name: cfg.inner.clone(),
                ..cfg.clone()
            },
            total_steps,
        )?;
        return Ok(Box::new(Sam {
            name: cfg.name.clone(),
            inner,
            rho: cfg.sam_rho,
            adaptive: cfg.name == "asam",
            eta: cfg.asam_eta,
        }));
    }
    let schedule = Schedule::parse(&cfg.schedule, total_steps)?;
    let decay = || -> Box<dyn transform::Transform> {
        let mut overrides: Vec<(String, f64)> = Vec::new();
        if cfg.no_decay_on_bias {
            overrides.push(("*.bias".into(), 0.0));
        }
        for g in &cfg.param_groups {
            // A group without its own decay keeps the optimizer's (and shadows later ones).
            overrides.push((g.params.clone(), g.weight_decay.unwrap_or(cfg.weight_decay)));
        }
        Box::new(AddDecayedWeights {
            weight_decay: cfg.weight_decay,
            overrides,
        })
    };
    let mut chain: Vec<Box<dyn transform::Transform>> = Vec::new();
    if let Some(c) = cfg.clip_norm {
        chain.push(Box::new(ClipByGlobalNorm { max_norm: c }));
    }
    if let Some(c) = cfg.clip_value {
        chain.push(Box::new(transform::ClipByValue { max_abs: c }));
    }
    let decoupled =
        cfg.decoupled_weight_decay || matches!(cfg.name.as_str(), "adamw" | "lamb" | "lion");
    let trust = |default: f64| -> Option<Box<dyn transform::Transform>> {
        let c = cfg.trust_coefficient.unwrap_or(default);
        (c != 0.0).then(|| {
            Box::new(transform::ScaleByTrustRatio {
                coefficient: c,
                skip_suffixes: if cfg.no_decay_on_bias {
                    vec![".bias".into()]
                } else {
                    vec![]
                },
            }) as Box<dyn transform::Transform>
        })
    };
    let any_decay = cfg.weight_decay > 0.0
        || cfg
            .param_groups
            .iter()
            .any(|g| g.weight_decay.is_some_and(|w| w > 0.0));
    if !decoupled && any_decay {
        chain.push(decay());
    }
    match cfg.name.as_str() {
        "sgd" => {}
        "momentum" => chain.push(Box::new(transform::Trace::new(cfg.momentum, false))),
        "nesterov" => chain.push(Box::new(transform::Trace::new(cfg.momentum, true))),
        "adam" | "adamw" | "lamb" => {
            let mut a = ScaleByAdam::new(cfg.beta1, cfg.beta2, cfg.eps);
            a.amsgrad = cfg.amsgrad;
            chain.push(Box::new(a));
        }
        "rmsprop" => chain.push(Box::new(transform::ScaleByRms::new(
            cfg.rms_decay,
            cfg.eps,
            cfg.centered,
            cfg.rms_momentum,
        ))),
        "adagrad" => chain.push(Box::new(transform::ScaleByAdagrad::new(cfg.eps))),
        "nadam" => chain.push(Box::new(transform::ScaleByNadam::new(
            cfg.beta1, cfg.beta2, cfg.eps,
        ))),
        "lion" => chain.push(Box::new(transform::ScaleByLion::new(
            cfg.beta1,
            cfg.lion_beta2,
        ))),
        "lars" => {
            // L2 decay was added above (coupled); then the trust ratio, then momentum.
            chain.extend(trust(0.001));
            chain.push(Box::new(transform::Trace::new(cfg.momentum, false)));
        }
        other => {
            return Err(Error::unknown(
                "optimizer",
                other,
                &OPTIMIZERS.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ));
        }
    }
    if decoupled && any_decay {
        chain.push(decay());
    }
    if cfg.name == "lamb" {
        chain.extend(trust(1.0));
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

/// Sharpness-aware minimisation (Foret et al. 2021): the inner optimizer steps at θ with
/// the rule's update evaluated at θ + ε, ε = ρ·g/‖g‖ — or, adaptive (ASAM, Kwon et al.
/// 2021), ε = ρ·T²g/‖Tg‖ with T = |θ| + η element-wise. The second update comes from the
/// step's [`Objective`], so SAM works with any rule. ρ = 0 gives the inner optimizer.
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

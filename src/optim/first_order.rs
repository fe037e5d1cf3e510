//! The first-order optimizers: each a chain of transforms (see [`super::transform`]),
//! then −η. Clipping and weight decay come from the shared settings; what follows is
//! each optimizer's own core.

use serde::{Deserialize, Serialize};

use super::transform::{
    self, AddDecayedWeights, Chain, ClipByGlobalNorm, ScaleByAdam, ScaleByLearningRate, Transform,
};
use super::{
    Optimizer, OptimizerConfig, OptimizerSpec, OptimizerState, Schedule, StepContext, both, own,
};
use crate::error::Result;
use crate::nn::{Grads, Params};
use crate::settings::{Described, Range::*, Settings, real};

crate::settings_struct! {
    /// Heavy-ball and Nesterov momentum.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct MomentumSettings {
        /// Momentum μ: b ← μb + g.
        pub momentum: f64 = 0.9,
    }
}

impl Settings for MomentumSettings {
    fn validate(&self) -> Result<()> {
        real("momentum", self.momentum, Fraction)
    }
}

crate::settings_struct! {
    /// Adam's moments (Kingma & Ba 2015), as PyTorch's defaults.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct AdamSettings {
        /// Decay β₁ of the first moment.
        pub beta1: f64 = 0.9,
        /// Decay β₂ of the second moment.
        pub beta2: f64 = 0.999,
        /// ε added to √v̂.
        pub eps: f64 = 1e-8,
        /// AMSGrad: divide by the running maximum of v̂ (Reddi et al. 2018).
        pub amsgrad: bool = false,
    }
}

impl Settings for AdamSettings {
    fn validate(&self) -> Result<()> {
        real("beta1", self.beta1, Fraction)?;
        real("beta2", self.beta2, Fraction)?;
        real("eps", self.eps, NonNegative)
    }
}

impl AdamSettings {
    fn transform(&self) -> Box<dyn Transform> {
        let mut a = ScaleByAdam::new(self.beta1, self.beta2, self.eps);
        a.amsgrad = self.amsgrad;
        Box::new(a)
    }
}

crate::settings_struct! {
    /// NAdam's moments (Dozat 2016), as PyTorch's defaults but β's shared with Adam.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct NadamSettings {
        /// Decay β₁ of the first moment.
        pub beta1: f64 = 0.9,
        /// Decay β₂ of the second moment.
        pub beta2: f64 = 0.999,
        /// ε added to √v̂.
        pub eps: f64 = 1e-8,
    }
}

impl Settings for NadamSettings {
    fn validate(&self) -> Result<()> {
        real("beta1", self.beta1, Fraction)?;
        real("beta2", self.beta2, Fraction)?;
        real("eps", self.eps, NonNegative)
    }
}

crate::settings_struct! {
    /// RMSProp (Hinton 2012), as PyTorch's `RMSprop`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct RmsSettings {
        /// Decay α of the mean square v ← αv + (1−α)g².
        #[legacy = "rms_decay"]
        pub alpha: f64 = 0.99,
        /// ε added to √v.
        pub eps: f64 = 1e-8,
        /// Centred: divide by the estimated variance v − ḡ².
        pub centered: bool = false,
        /// Momentum on the scaled update (0: none).
        #[legacy = "rms_momentum"]
        pub momentum: f64 = 0.0,
    }
}

impl Settings for RmsSettings {
    fn validate(&self) -> Result<()> {
        real("rms_decay", self.alpha, Fraction)?;
        real("eps", self.eps, NonNegative)?;
        real("rms_momentum", self.momentum, Fraction)
    }
}

crate::settings_struct! {
    /// Adagrad (Duchi, Hazan & Singer 2011).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct AdagradSettings {
        /// ε added to √(Σg²).
        pub eps: f64 = 1e-8,
    }
}

impl Settings for AdagradSettings {
    fn validate(&self) -> Result<()> {
        real("eps", self.eps, NonNegative)
    }
}

crate::settings_struct! {
    /// LARS (You et al. 2017): momentum SGD with a layer-wise trust ratio.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct LarsSettings {
        /// Momentum μ.
        pub momentum: f64 = 0.9,
        /// Trust coefficient c of the ratio c‖θ‖/‖u‖; 0 disables it (momentum SGD with
        /// L2 decay).
        pub trust_coefficient: f64 = 0.001,
    }
}

impl Settings for LarsSettings {
    fn validate(&self) -> Result<()> {
        real("momentum", self.momentum, Fraction)?;
        real("trust_coefficient", self.trust_coefficient, NonNegative)
    }
}

crate::settings_struct! {
    /// LAMB's trust ratio (You et al. 2020); its moments are [`AdamSettings`].
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct LambSettings {
        /// Trust coefficient c of the ratio c‖θ‖/‖u‖; 0 disables it (AdamW).
        pub trust_coefficient: f64 = 1.0,
    }
}

impl Settings for LambSettings {
    fn validate(&self) -> Result<()> {
        real("trust_coefficient", self.trust_coefficient, NonNegative)
    }
}

crate::settings_struct! {
    /// Lion (Chen et al. 2023).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct LionSettings {
        /// β₁: interpolation of momentum and gradient whose sign is the update.
        pub beta1: f64 = 0.9,
        /// β₂: decay of the momentum.
        #[legacy = "lion_beta2"]
        pub beta2: f64 = 0.99,
    }
}

impl Settings for LionSettings {
    fn validate(&self) -> Result<()> {
        real("beta1", self.beta1, Fraction)?;
        real("lion_beta2", self.beta2, Fraction)
    }
}

/// The layer-wise trust ratio c‖θ‖/‖u‖ (none at c = 0); biases are skipped when they are
/// exempt from decay.
fn trust_ratio(cfg: &OptimizerConfig, c: f64) -> Option<Box<dyn Transform>> {
    (c != 0.0).then(|| {
        Box::new(transform::ScaleByTrustRatio {
            coefficient: c,
            skip_suffixes: if cfg.no_decay_on_bias {
                vec![".bias".into()]
            } else {
                vec![]
            },
        }) as Box<dyn Transform>
    })
}

/// [clip] → [coupled decay] → `core` → [decoupled decay] → [`after`] → −η.
/// `decoupled`: the optimizer always decouples its decay (AdamW, LAMB, Lion).
fn chain(
    cfg: &OptimizerConfig,
    total_steps: u64,
    core: Vec<Box<dyn Transform>>,
    decoupled: bool,
    after: Option<Box<dyn Transform>>,
) -> Result<Box<dyn Optimizer>> {
    let schedule = Schedule::parse(&cfg.schedule, total_steps)?;
    let decay = || -> Box<dyn Transform> {
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
    let mut links: Vec<Box<dyn Transform>> = Vec::new();
    if let Some(c) = cfg.clip_norm {
        links.push(Box::new(ClipByGlobalNorm { max_norm: c }));
    }
    if let Some(c) = cfg.clip_value {
        links.push(Box::new(transform::ClipByValue { max_abs: c }));
    }
    let decoupled = decoupled || cfg.decoupled_weight_decay;
    let any_decay = cfg.weight_decay > 0.0
        || cfg
            .param_groups
            .iter()
            .any(|g| g.weight_decay.is_some_and(|w| w > 0.0));
    if !decoupled && any_decay {
        links.push(decay());
    }
    links.extend(core);
    if decoupled && any_decay {
        links.push(decay());
    }
    links.extend(after);
    Ok(Box::new(ChainOptimizer {
        name: cfg.optimizer.name.clone(),
        chain: Chain(links),
        lr: ScaleByLearningRate {
            lr: cfg.lr,
            schedule,
        },
        step: 0,
    }))
}

/// SGD: [clip] → [L2] → −η.
pub const SGD: OptimizerSpec = OptimizerSpec {
    name: "sgd",
    summary: "stochastic gradient descent: θ ← θ − η g",
    paper: "Robbins & Monro 1951",
    build: |cfg, n| chain(cfg, n, vec![], false, None),
    ..OptimizerSpec::DEFAULT
};

/// Heavy-ball momentum.
pub const MOMENTUM: OptimizerSpec = OptimizerSpec {
    name: "momentum",
    summary: "heavy-ball momentum: b ← μb + g, θ ← θ − η b",
    paper: "Polyak 1964",
    settings: MomentumSettings::fields,
    build: |cfg, n| {
        let s: MomentumSettings = own(cfg)?;
        chain(
            cfg,
            n,
            vec![Box::new(transform::Trace::new(s.momentum, false))],
            false,
            None,
        )
    },
    ..OptimizerSpec::DEFAULT
};

/// Nesterov momentum.
pub const NESTEROV: OptimizerSpec = OptimizerSpec {
    name: "nesterov",
    summary: "Nesterov momentum: θ ← θ − η (g + μb)",
    paper: "Sutskever et al. 2013",
    settings: MomentumSettings::fields,
    build: |cfg, n| {
        let s: MomentumSettings = own(cfg)?;
        chain(
            cfg,
            n,
            vec![Box::new(transform::Trace::new(s.momentum, true))],
            false,
            None,
        )
    },
    ..OptimizerSpec::DEFAULT
};

/// [clip] → [L2] → Adam → [decoupled decay] → −η; `decoupled`: AdamW.
fn adam_chain(cfg: &OptimizerConfig, n: u64, decoupled: bool) -> Result<Box<dyn Optimizer>> {
    chain(
        cfg,
        n,
        vec![own::<AdamSettings>(cfg)?.transform()],
        decoupled,
        None,
    )
}

/// Adam.
pub const ADAM: OptimizerSpec = OptimizerSpec {
    name: "adam",
    summary: "Adam: bias-corrected first/second moments",
    paper: "Kingma & Ba 2015",
    settings: AdamSettings::fields,
    lr: Some(1e-3),
    build: |cfg, n| adam_chain(cfg, n, false),
    ..OptimizerSpec::DEFAULT
};

/// AdamW.
pub const ADAMW: OptimizerSpec = OptimizerSpec {
    name: "adamw",
    summary: "AdamW: Adam with decoupled weight decay",
    paper: "Loshchilov & Hutter 2019",
    settings: AdamSettings::fields,
    lr: Some(1e-3),
    build: |cfg, n| adam_chain(cfg, n, true),
    ..OptimizerSpec::DEFAULT
};

/// RMSProp.
pub const RMSPROP: OptimizerSpec = OptimizerSpec {
    name: "rmsprop",
    summary: "RMSProp: g/√(EMA of g²), centred and momentum options",
    paper: "Hinton 2012",
    settings: RmsSettings::fields,
    lr: Some(1e-3),
    build: |cfg, n| {
        let s: RmsSettings = own(cfg)?;
        let core = transform::ScaleByRms::new(s.alpha, s.eps, s.centered, s.momentum);
        chain(cfg, n, vec![Box::new(core)], false, None)
    },
    ..OptimizerSpec::DEFAULT
};

/// Adagrad.
pub const ADAGRAD: OptimizerSpec = OptimizerSpec {
    name: "adagrad",
    summary: "Adagrad: g/√(Σg²)",
    paper: "Duchi, Hazan & Singer 2011",
    settings: AdagradSettings::fields,
    build: |cfg, n| {
        let s: AdagradSettings = own(cfg)?;
        chain(
            cfg,
            n,
            vec![Box::new(transform::ScaleByAdagrad::new(s.eps))],
            false,
            None,
        )
    },
    ..OptimizerSpec::DEFAULT
};

/// NAdam.
pub const NADAM: OptimizerSpec = OptimizerSpec {
    name: "nadam",
    summary: "NAdam: Adam with Nesterov momentum",
    paper: "Dozat 2016",
    settings: NadamSettings::fields,
    // PyTorch's NAdam default.
    lr: Some(2e-3),
    build: |cfg, n| {
        let s: NadamSettings = own(cfg)?;
        let core = transform::ScaleByNadam::new(s.beta1, s.beta2, s.eps);
        chain(cfg, n, vec![Box::new(core)], false, None)
    },
    ..OptimizerSpec::DEFAULT
};

/// LARS: [clip] → L2 → trust ratio → momentum → −η.
pub const LARS: OptimizerSpec = OptimizerSpec {
    name: "lars",
    summary: "LARS: momentum SGD with layer-wise trust ratio c‖θ‖/‖u‖",
    paper: "You et al. 2017",
    settings: LarsSettings::fields,
    // The trust ratio (c = 0.001) sets the step's scale, so the base rate is large.
    lr: Some(1.0),
    build: |cfg, n| {
        let s: LarsSettings = own(cfg)?;
        let mut core: Vec<Box<dyn Transform>> =
            trust_ratio(cfg, s.trust_coefficient).into_iter().collect();
        core.push(Box::new(transform::Trace::new(s.momentum, false)));
        chain(cfg, n, core, false, None)
    },
    ..OptimizerSpec::DEFAULT
};

/// LAMB: [clip] → Adam → decoupled decay → trust ratio → −η.
pub const LAMB: OptimizerSpec = OptimizerSpec {
    name: "lamb",
    summary: "LAMB: AdamW with layer-wise trust ratio",
    paper: "You et al. 2020",
    settings: both::<AdamSettings, LambSettings>,
    lr: Some(1e-3),
    build: |cfg, n| {
        let trust: LambSettings = own(cfg)?;
        let core = vec![own::<AdamSettings>(cfg)?.transform()];
        chain(
            cfg,
            n,
            core,
            true,
            trust_ratio(cfg, trust.trust_coefficient),
        )
    },
    ..OptimizerSpec::DEFAULT
};

/// Lion: [clip] → lion → decoupled decay → −η.
pub const LION: OptimizerSpec = OptimizerSpec {
    name: "lion",
    summary: "Lion: sign of interpolated momentum",
    paper: "Chen et al. 2023",
    settings: LionSettings::fields,
    // Its update has unit size per coordinate: 3–10× below AdamW's rate (the paper).
    lr: Some(1e-4),
    build: |cfg, n| {
        let s: LionSettings = own(cfg)?;
        chain(
            cfg,
            n,
            vec![Box::new(transform::ScaleByLion::new(s.beta1, s.beta2))],
            true,
            None,
        )
    },
    ..OptimizerSpec::DEFAULT
};

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

    // Every transform reads only the summed update, the parameters and its own state.
    fn splits_over_batch(&self) -> bool {
        true
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

    fn state_copies(&self) -> u64 {
        self.chain.0.iter().map(|t| t.slots()).sum()
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

//! Credit-assignment rules.
//!
//! A [`Rule`] decides which error signal each layer receives and returns the update
//! direction for every parameter it trains ([`Grads`], in the sign of a gradient: the
//! optimizer descends along it). Rules keep their own state (feedback matrices, inverse
//! networks, synthesizers) beside the layers: fixed state in the rule, trained state in
//! the shared [`Params`] store under the rule's name, so one optimizer and one checkpoint
//! cover it.

mod backprop;
mod blocks;
mod classic;
mod direct_feedback;
mod equilibrium;
mod feedback_alignment;
mod forward_forward;
mod local_losses;
mod predictive_coding;
mod synthetic_gradients;
mod target_propagation;
mod uoro;

pub use crate::data::Batch;
pub use crate::nn::{backward_chain, backward_layers};
pub use backprop::Backprop;
pub use classic::{Classic, ClassicKind};
pub use direct_feedback::{DirectFeedback, DirectKind};
pub use equilibrium::{Equilibrium, Nudge};
pub use feedback_alignment::{FeedbackAlignment, FeedbackKind};
pub use forward_forward::{ForwardForward, overlay};
pub use local_losses::{LocalLosses, sim_loss};
pub use predictive_coding::PredictiveCoding;
pub use synthetic_gradients::SyntheticGradients;
pub use target_propagation::TargetPropagation;
pub use uoro::Uoro;

use crate::error::{Error, Result};
use crate::nn::{Grads, Loss, Model, Params, Trace};
use crate::tensor::Tensor;

/// What the last relaxation (inference) of an energy-based rule did: the energy and the
/// residual ‖∂E/∂state‖ (per sample) before each step, and the steps taken (fewer than
/// asked when the residual fell below the tolerance).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Relaxation {
    /// Energy per relaxation step (index 0: before the first step).
    pub energy: Vec<f64>,
    /// Residual per relaxation step.
    pub residual: Vec<f64>,
    /// Steps taken.
    pub steps: usize,
}

/// What one step of a rule produced.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// Update directions (gradient sign) for every parameter the rule trains.
    pub grads: Grads,
    /// The forward records and the error signal assigned to each layer.
    pub trace: Trace,
    /// Mean loss of the batch at the parameters the step started from.
    pub loss: f64,
    /// The model's prediction for the batch at those parameters, when the trace's output
    /// is not it (relaxed or nudged states); `None`: the trace's output.
    pub prediction: Option<Tensor>,
}

/// A credit-assignment rule.
pub trait Rule: Send {
    /// The CLI name (`bp`, `fa`, `dfa`...).
    fn name(&self) -> &'static str;

    /// Prepares the rule's state for `model`. Trained rule state goes into `params`
    /// under the rule's name. Called once before training (and before a resume loads the
    /// saved values over it).
    fn init(&mut self, _model: &Model, _params: &mut Params, _seed: u64) -> Result<()> {
        Ok(())
    }

    /// One step: the update direction for `batch` at `params`. The default is a rule
    /// built on the ordinary backward pass: the forward pass, the loss, then
    /// [`Rule::backward`] from the output error ([`step_with_backward`]). Rules with
    /// their own dynamics (relaxation, local losses, Forward-Forward) implement it.
    fn step(
        &mut self,
        model: &Model,
        params: &Params,
        batch: &Batch,
        loss: Loss,
    ) -> Result<StepOutput> {
        step_with_backward(self, model, params, batch, loss)
    }

    /// The layer families this rule can train beyond dense ones (Linear layers and
    /// element-wise activations, which every rule trains). Checked when the model is
    /// built ([`check_layers`]).
    fn trains(&self) -> Trains {
        Trains::DENSE
    }

    /// Carries an arbitrary output error `d_out` down a recorded forward pass the way
    /// this rule assigns credit, filling `trace.errors` and returning the update
    /// directions. K-FAC uses it for sampled-target factors. Rules without a backward
    /// pass from an output error (relaxation, local losses) keep this default.
    fn backward(
        &mut self,
        _model: &Model,
        _params: &Params,
        _trace: &mut Trace,
        _batch: &Batch,
        _d_out: Tensor,
    ) -> Result<Grads> {
        Err(Error::config(
            "rule",
            format!(
                "{} has no backward pass from an output error (needed by kfac's sampled and gauss-newton factors; use --kfac-fisher empirical)",
                self.name()
            ),
        ))
    }

    /// A named auxiliary loss of the last step (e.g. synthetic gradients' regression
    /// loss), reported per epoch.
    fn aux_loss(&self) -> Option<(&'static str, f64)> {
        None
    }

    /// Whether the returned trace must hold every layer's records (an optimizer such as
    /// K-FAC reads them). Rules that update block by block (`local`, `dni`, `ff`) free
    /// each block's activations once it has updated when `keep` is false, so their peak
    /// activation memory is one block's instead of the whole network's. Default: the
    /// rule always keeps its trace.
    fn keep_trace(&mut self, _keep: bool) {}

    /// Diagnostics of the last step's relaxation, for rules that relax a state.
    fn relaxation(&self) -> Option<&Relaxation> {
        None
    }

    /// Outputs used for evaluation. Most rules use the plain forward pass.
    fn predict(&self, model: &Model, params: &Params, x: &Tensor) -> Result<Tensor> {
        model.forward(params, x)
    }

    /// Bytes of fixed state the rule keeps outside the parameter store (feedback
    /// matrices); trained rule state is in the store and counted there.
    fn state_bytes(&self) -> usize {
        0
    }

    /// The matrices this rule uses in place of weight transport, per Linear layer name,
    /// in W's layout (the paper's Bᵀ). Diagnostics compare them with W.
    fn feedback_matrices(&self, _model: &Model, _params: &Params) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }
}

crate::settings_struct! {
    /// Options of the rules. Every field has a default; rules ignore what they do not use.
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default)]
    pub struct RuleConfig {
        /// Initialiser of feedback matrices (names as `--init`).
        pub feedback_init: String = "xavier-uniform".into(),
        /// Multiplier of the drawn feedback matrices.
        pub feedback_scale: f64 = 1.0,
        /// Seed of feedback matrices; none: the run's seed.
        pub feedback_seed: Option<u64> = None,
        /// Kolen–Pollack weight decay λ on W and its feedback.
        pub kp_decay: f64 = 1e-3,
        /// Predictive coding: inference steps T per batch.
        pub pc_steps: usize = 20,
        /// Predictive coding: inference step size γ (per sample); 0.1 diverged after ~11
        /// MNIST epochs with ReLU as the weights grew.
        pub pc_gamma: f64 = 0.05,
        /// Predictive coding: `standard` or `fixed-prediction`.
        pub pc_variant: String = "standard".into(),
        /// EqProp/CHL: free-phase steps T₁.
        pub eqprop_free_steps: usize = 20,
        /// EqProp/CHL: nudged (or clamped) phase steps T₂.
        pub eqprop_nudge_steps: usize = 4,
        /// EqProp: nudging strength β.
        pub eqprop_beta: f64 = 1.0,
        /// EqProp/CHL: relaxation step ε.
        pub eqprop_step: f64 = 0.5,
        /// EqProp: `one-sided`, `random-sign` or `symmetric`.
        pub eqprop_nudge: String = "one-sided".into(),
        /// EqProp/CHL state nonlinearity: `hard-sigmoid` (clip to [0, 1]), `sigmoid`,
        /// `tanh`.
        pub eqprop_rho: String = "hard-sigmoid".into(),
        /// Forward-Forward: per-unit goodness threshold (θ; × width for the `sum`
        /// goodness; as loeweX/Forward-Forward's Σh² − width). The `symmetric` loss
        /// does not use it.
        pub ff_threshold: f64 = 1.0,
        /// Forward-Forward: goodness `mean` (of h² over units, as pytorch_forward_forward)
        /// or `sum` (Hinton 2022).
        pub ff_goodness: String = "sum".into(),
        /// Forward-Forward: layer loss `separate` (Hinton 2022) or `symmetric`
        /// (softplus(G⁻ − G⁺), Lee & Song 2023 "SymBa"; 91 % vs 82 % after one MNIST
        /// epoch on 784-500-500-10 with Adam 1e-3).
        pub ff_loss: String = "symmetric".into(),
        /// Forward-Forward: negative labels `random` or `hard`.
        pub ff_negative: String = "random".into(),
        /// Forward-Forward: prediction by `goodness` (every label tried) or `readout`.
        pub ff_predict: String = "goodness".into(),
        /// Forward-Forward: leave the first hidden layer out of the goodness predictor (the
        /// paper's choice).
        pub ff_skip_first: bool = true,
        /// Local losses: head loss `pred`, `sim` or `predsim`.
        pub local_loss: String = "pred".into(),
        /// Local losses: weight β of the similarity term in `predsim`.
        pub local_beta: f64 = 0.99,
        /// Deeply-supervised nets: weight of every auxiliary head's loss.
        pub dsn_weight: f64 = 0.3,
        /// EqProp/CHL: record the energy at every relaxation step (two extra passes per
        /// layer and step).
        pub relax_trace: bool = false,
        /// Synthetic gradients: hidden width of an MLP synthesizer (0: linear).
        pub synth_hidden: usize = 0,
        /// Synthetic gradients: hidden layers of an MLP synthesizer.
        pub synth_depth: usize = 1,
        /// Synthetic gradients: batch norm after each hidden layer of an MLP synthesizer
        /// (as Jaderberg et al.'s).
        pub synth_batchnorm: bool = false,
        /// Synthetic gradients: initialiser of the synthesizers (`--init` names).
        pub synth_init: String = "zeros".into(),
        /// Energy-based rules: stop relaxing when the residual ‖∂E/∂state‖ per sample falls
        /// below this; 0: always run every step.
        pub relax_tolerance: f64 = 0.0,
        /// Difference target propagation: step η̂ of the top target τ = h − η̂·∂ℓ/∂h
        /// (per-sample loss ℓ).
        pub dtp_target_step: f64 = 0.1,
        /// Difference target propagation: σ of the Gaussian noise in the inverses'
        /// reconstruction loss.
        pub dtp_noise: f64 = 0.1,
        /// Difference target propagation: `parallel` or `alternating` inverse training.
        pub dtp_schedule: String = "parallel".into(),
    }
}

impl RuleConfig {
    /// Every numeric setting in its range; the error names the setting and the value.
    pub fn validate(&self) -> Result<()> {
        use crate::settings::{Range::*, at_least, real};
        real("feedback_scale", self.feedback_scale, NonZero)?;
        real("kp_decay", self.kp_decay, NonNegative)?;
        at_least("pc_steps", self.pc_steps as u64, 1)?;
        real("pc_gamma", self.pc_gamma, Positive)?;
        at_least("eqprop_free_steps", self.eqprop_free_steps as u64, 1)?;
        at_least("eqprop_nudge_steps", self.eqprop_nudge_steps as u64, 1)?;
        real("eqprop_beta", self.eqprop_beta, NonZero)?;
        real("eqprop_step", self.eqprop_step, Positive)?;
        real("ff_threshold", self.ff_threshold, NonNegative)?;
        real("local_beta", self.local_beta, Unit)?;
        real("dsn_weight", self.dsn_weight, NonNegative)?;
        at_least("synth_depth", self.synth_depth as u64, 1)?;
        real("relax_tolerance", self.relax_tolerance, NonNegative)?;
        real("dtp_target_step", self.dtp_target_step, Positive)?;
        real("dtp_noise", self.dtp_noise, NonNegative)?;
        Ok(())
    }

    /// The parsed feedback initialiser (`auto` means Xavier uniform).
    pub fn feedback_init(&self) -> Result<crate::nn::Init> {
        Ok(match crate::nn::Init::parse(&self.feedback_init)? {
            crate::nn::Init::Auto => crate::nn::Init::XavierUniform,
            i => i,
        })
    }
}

/// The settings (keys of [`RuleConfig`]) rule `name` reads, for `futureprop rules show`.
pub fn settings_of(name: &str) -> Vec<crate::settings::Field> {
    use crate::settings::Described;
    let prefixes: &[&str] = match name {
        "fa" | "usf" | "brsf" | "frsf" | "dfa" | "bfa" | "drtp" => &["feedback_"],
        "kp" => &["feedback_", "kp_"],
        "pc" => &["pc_", "relax_tolerance"],
        "eqprop" => &["eqprop_", "relax_"],
        "chl" => &[
            "eqprop_free_steps",
            "eqprop_nudge_steps",
            "eqprop_step",
            "eqprop_rho",
            "relax_",
        ],
        "ff" => &["ff_"],
        "local" => &["local_"],
        "dsn" => &["dsn_"],
        "dni" | "cdni" => &["synth_"],
        "dtp" => &["dtp_"],
        _ => &[],
    };
    RuleConfig::fields()
        .into_iter()
        .filter(|f| prefixes.iter().any(|p| f.key.starts_with(p)))
        .collect()
}

/// Names accepted by [`build_rule`], with one line each.
pub const RULES: &[(&str, &str)] = &[
    (
        "bp",
        "backpropagation: exact gradient through transposed Jacobians (Rumelhart et al. 1986)",
    ),
    (
        "fa",
        "feedback alignment: fixed random matrices replace Wᵀ (Lillicrap et al. 2016)",
    ),
    (
        "dfa",
        "direct feedback alignment: output error projected to every hidden block (Nøkland 2016)",
    ),
    (
        "bfa",
        "broadcast feedback alignment: DFA with one matrix shared per hidden width",
    ),
    (
        "usf",
        "uniform sign-concordant feedback: sign(W)·mean|W| replaces Wᵀ (Liao et al. 2016)",
    ),
    (
        "brsf",
        "batch-random-magnitude sign-concordant feedback (Moskovitz et al. 2018)",
    ),
    (
        "frsf",
        "fixed-random-magnitude sign-concordant feedback (Moskovitz et al. 2018)",
    ),
    (
        "kp",
        "Kolen–Pollack: feedback learned with W's update plus decay, converges to Wᵀ (Akrout et al. 2019)",
    ),
    (
        "drtp",
        "direct random target projection: one-hot target projected to hidden blocks (Frenkel et al. 2021)",
    ),
    (
        "pc",
        "predictive coding: relax value nodes on the prediction-error energy, local updates (Whittington & Bogacz 2017)",
    ),
    (
        "eqprop",
        "equilibrium propagation: free and β-nudged relaxations of a symmetric energy network (Scellier & Bengio 2017)",
    ),
    (
        "chl",
        "contrastive Hebbian learning: free vs output-clamped relaxations (Movellan 1991)",
    ),
    (
        "ff",
        "Forward-Forward: per-layer goodness of positive vs negative (wrong-label) data (Hinton 2022)",
    ),
    (
        "local",
        "local losses: each block learns from its own auxiliary head, no gradient crosses blocks (Belilovsky et al. 2019; Nøkland & Eidnes 2019)",
    ),
    (
        "dsn",
        "deeply-supervised nets: auxiliary head losses added to the global backprop loss (Lee et al. 2015)",
    ),
    (
        "dni",
        "synthetic gradients: each hidden block updates from a learned gradient predictor (Jaderberg et al. 2016)",
    ),
    (
        "cdni",
        "synthetic gradients conditioned on the label (Jaderberg et al. 2016)",
    ),
    (
        "dtp",
        "difference target propagation: layer-local targets through learned inverses (Lee et al. 2015)",
    ),
    (
        "perceptron",
        "Rosenblatt's perceptron rule, multi-class, single Linear layer (Rosenblatt 1958)",
    ),
    (
        "lms",
        "least mean squares / ADALINE: Δw = η(t − z)x, single Linear layer (Widrow & Hoff 1960)",
    ),
    (
        "hebbian",
        "Oja's normalised Hebbian rule (subspace form), unsupervised, single Linear layer (Oja 1982)",
    ),
    (
        "uoro",
        "unbiased online recurrent optimisation: rank-one forward-mode estimate for recurrent layers, backprop elsewhere (Tallec & Ollivier 2017)",
    ),
];

/// Rules defined only for one Linear layer (`linear:IN-OUT`).
pub const SINGLE_LAYER_RULES: &[&str] = &["perceptron", "lms", "hebbian"];

/// Rules that differ from backprop only on layers the feed-forward suites do not have
/// (UORO on recurrent layers); the suites' `all` leaves them out.
pub const SEQUENCE_RULES: &[&str] = &["uoro"];

/// The layer families a rule trains besides dense layers (its [`Rule::trains`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Trains {
    /// Convolution and pooling layers.
    pub conv: bool,
    /// Normalisation and dropout layers: the rule's training pass is the model's
    /// recorded forward pass and its error passes through every layer without a weight
    /// by that layer's input gradient (backprop, the feedback-alignment family), or its
    /// blocks may hold a normalisation layer (the block-local rules).
    pub norm: bool,
    /// Residual, highway and dense blocks.
    pub blocks: bool,
    /// Recurrent layers.
    pub recurrent: bool,
}

impl Trains {
    /// Dense layers only.
    pub const DENSE: Trains = Trains {
        conv: false,
        norm: false,
        blocks: false,
        recurrent: false,
    };
    /// Every layer family.
    pub const ALL: Trains = Trains {
        conv: true,
        norm: true,
        blocks: true,
        recurrent: true,
    };
}

/// [`check_rule_layers`] for the rule named `rule` (default settings).
pub fn check_layers(rule: &str, model: &Model) -> Result<()> {
    check_rule_layers(build_rule(rule)?.as_ref(), model)
}

/// Fails at build time, naming the layer and the rules that can train it, when `rule`
/// does not train a layer of `model` (its [`Rule::trains`]).
pub fn check_rule_layers(rule: &dyn Rule, model: &Model) -> Result<()> {
    use crate::nn::LayerKind;
    let family = |t: Trains, k: &LayerKind| -> Option<(bool, &'static str)> {
        Some(match k {
            LayerKind::Conv2d { .. } | LayerKind::Pool2d { .. } => {
                (t.conv, "convolution and pooling layers")
            }
            LayerKind::Norm | LayerKind::BatchNorm | LayerKind::Dropout => {
                (t.norm, "normalisation and dropout layers")
            }
            LayerKind::Residual | LayerKind::Highway | LayerKind::Dense => {
                (t.blocks, "residual, highway and dense blocks")
            }
            LayerKind::Recurrent => (t.recurrent, "recurrent layers"),
            _ => return None,
        })
    };
    let trains = rule.trains();
    let rule = rule.name();
    for (i, l) in model.layers().iter().enumerate() {
        if rule == "uoro" && i > 0 && l.kind() == LayerKind::Recurrent {
            return Err(Error::config(
                "rule",
                format!(
                    "uoro: recurrent layer {} must be the model's first layer (UORO gives no gradient for the layers below it)",
                    l.name()
                ),
            ));
        }
        let kind = l.kind();
        let Some((ok, what)) = family(trains, &kind) else {
            continue;
        };
        if !ok {
            let able: Vec<&str> = RULES
                .iter()
                .map(|(n, _)| *n)
                .filter(|n| {
                    build_rule(n).is_ok_and(|r| family(r.trains(), &kind).is_some_and(|(ok, _)| ok))
                })
                .collect();
            return Err(Error::config(
                "rule",
                format!(
                    "{rule} is not defined for {what} yet (layer {}); rules for them: {}",
                    l.name(),
                    able.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Builds a rule by its CLI name with default options.
pub fn build_rule(name: &str) -> Result<Box<dyn Rule>> {
    build_rule_with(name, &RuleConfig::default())
}

/// Builds a rule by its CLI name.
pub fn build_rule_with(name: &str, cfg: &RuleConfig) -> Result<Box<dyn Rule>> {
    cfg.validate()?;
    cfg.feedback_init()?;
    let fa = |k| -> Result<Box<dyn Rule>> { Ok(Box::new(FeedbackAlignment::new(k, cfg.clone()))) };
    let direct = |k| -> Result<Box<dyn Rule>> { Ok(Box::new(DirectFeedback::new(k, cfg.clone()))) };
    match name {
        "bp" | "backprop" => Ok(Box::new(Backprop)),
        "uoro" => Ok(Box::new(Uoro)),
        "fa" => fa(FeedbackKind::Random),
        "usf" => fa(FeedbackKind::SignUniform),
        "brsf" => fa(FeedbackKind::SignBatchRandom),
        "frsf" => fa(FeedbackKind::SignFixedRandom),
        "kp" => fa(FeedbackKind::KolenPollack),
        "dfa" => direct(DirectKind::Dfa),
        "bfa" => direct(DirectKind::Bfa),
        "drtp" => direct(DirectKind::Drtp),
        "pc" => Ok(Box::new(PredictiveCoding::new(cfg.clone())?)),
        "ff" => Ok(Box::new(ForwardForward::new(cfg)?)),
        "local" => Ok(Box::new(LocalLosses::new(false, cfg)?)),
        "dsn" => Ok(Box::new(LocalLosses::new(true, cfg)?)),
        "dni" => Ok(Box::new(SyntheticGradients::new(false, cfg.clone()))),
        "cdni" => Ok(Box::new(SyntheticGradients::new(true, cfg.clone()))),
        "dtp" => Ok(Box::new(TargetPropagation::new(cfg)?)),
        "eqprop" => Ok(Box::new(Equilibrium::new(cfg.clone(), false)?)),
        "chl" => Ok(Box::new(Equilibrium::new(cfg.clone(), true)?)),
        "perceptron" => Ok(Box::new(Classic::new(ClassicKind::Perceptron))),
        "lms" => Ok(Box::new(Classic::new(ClassicKind::Lms))),
        "hebbian" | "oja" => Ok(Box::new(Classic::new(ClassicKind::Hebbian))),
        _ => Err(Error::unknown(
            "rule",
            name,
            &RULES.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        )),
    }
}

/// The forward pass every rule starts with: the trace, the batch's mean loss and
/// ∂L/∂(model output).
pub fn forward_loss(
    model: &Model,
    params: &Params,
    batch: &Batch,
    loss: Loss,
) -> Result<(Trace, f64, Tensor)> {
    forward_loss_with(model, params, batch, loss, false)
}

/// [`forward_loss`] as the pass of an online rule when `online` (see
/// [`Model::forward_trace_with`]).
fn forward_loss_with(
    model: &Model,
    params: &Params,
    batch: &Batch,
    loss: Loss,
    online: bool,
) -> Result<(Trace, f64, Tensor)> {
    let trace = model.forward_trace_with(params, &batch.x, online)?;
    let out = trace
        .output()
        .ok_or_else(|| Error::config("model", "has no layers"))?;
    let (value, d_out) = loss.eval(out, &batch.target)?;
    Ok((trace, value, d_out))
}

/// A step of a rule defined by its [`Rule::backward`]: the forward pass, the loss and
/// the rule's error assignment from the output error.
pub fn step_with_backward<R: Rule + ?Sized>(
    rule: &mut R,
    model: &Model,
    params: &Params,
    batch: &Batch,
    loss: Loss,
) -> Result<StepOutput> {
    step_with_backward_pass(rule, model, params, batch, loss, false)
}

/// [`step_with_backward`] whose forward pass is an online rule's when `online`.
pub(crate) fn step_with_backward_pass<R: Rule + ?Sized>(
    rule: &mut R,
    model: &Model,
    params: &Params,
    batch: &Batch,
    loss: Loss,
    online: bool,
) -> Result<StepOutput> {
    let (mut trace, value, d_out) = forward_loss_with(model, params, batch, loss, online)?;
    let grads = rule.backward(model, params, &mut trace, batch, d_out)?;
    Ok(StepOutput {
        grads,
        trace,
        loss: value,
        prediction: None,
    })
}

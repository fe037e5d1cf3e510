//! Credit-assignment rules.
//!
//! A [`Rule`] decides which error signal each layer receives and returns the update
//! direction for every parameter it trains ([`Grads`], in the sign of a gradient: the
//! optimizer descends along it). Rules keep their own state (feedback matrices, inverse
//! networks, synthesizers) beside the layers: fixed state in the rule, trained state in
//! the shared [`Params`] store under the rule's name, so one optimizer and one checkpoint
//! cover it.

mod blocks;

pub use crate::data::Batch;
pub use crate::nn::{backward_chain, backward_layers};
pub use backprop::Backprop;
pub use classic::{Classic, ClassicKind};
pub use direct_feedback::{DirectFeedback, DirectKind};
pub use equilibrium::{ChlSettings, Equilibrium, Nudge, NudgeSettings, RelaxSettings};
pub use feedback_alignment::{FeedbackAlignment, FeedbackKind, FeedbackSettings, KpSettings};
pub use forward_forward::{FfSettings, ForwardForward, overlay};
pub use local_losses::{DsnSettings, LocalLosses, LocalSettings, sim_loss};
pub use predictive_coding::{PcSettings, PredictiveCoding};
pub use synthetic_gradients::{SynthSettings, SyntheticGradients};
pub use target_propagation::{DtpSettings, TargetPropagation};
pub use uoro::Uoro;

use crate::error::{Error, Result};
use crate::nn::{Grads, Loss, Model, Params, Trace};
use crate::settings::{Choice, Field, Table};
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
    /// Step retries with a halved step size (ePC's backtracking).
    pub backtracks: usize,
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

    /// Whether the rule reads the trace's records only through [`Trace::ensure`] (or
    /// [`backward_layers`], which calls it), from the top layer down, so gradient
    /// checkpointing ([`Model::set_checkpoint_segments`]) applies: bp, the FA family,
    /// kp, the DFA family and dsn. Default false; [`check_checkpointing`] refuses the setting
    /// for the others.
    fn recomputes(&self) -> bool {
        false
    }

    /// Whether the rule trains under mixed precision (`--precision bf16|f16`): rules whose
    /// passes are the model's forward and backward maps (their activations take the
    /// model's precision, [`Model::set_precision`]). Rules with fused f32 loops of their
    /// own (relaxations, layer-local inverses) keep the default, false, and the trainer
    /// refuses the setting for them when the run starts.
    fn mixed_precision(&self) -> bool {
        false
    }

    /// Whether the update is the batch mean of per-sample terms computed from the
    /// parameters and the batch alone, so that data-parallel ranks may each take a share
    /// of a batch and sum their updates weighted by their shares (`train::comm`); tested
    /// for each rule that says so against one process (`tests/distributed.rs`). Rules
    /// that compare a batch's samples (Forward-Forward's negatives, similarity losses),
    /// decide on the batch as a whole (ePC's backtracking, DTP's noise draws) or run
    /// online (UORO) keep the default, false, and are refused under `mpirun`.
    fn splits_over_batch(&self) -> bool {
        false
    }

    /// Refuses a model the rule cannot train for reasons beyond its layer families
    /// ([`Rule::trains`]), naming the layer; checked when the model is built.
    fn check_model(&self, _model: &Model) -> Result<()> {
        Ok(())
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

    /// For rules that project the output error straight onto every hidden block (DFA,
    /// BFA): the fixed matrix B (outputs × width) of hidden block `block` of
    /// [`Model::block_walk`], so hidden block l's signal is (e·B) ⊙ f′(aₗ). The
    /// layer-parallel pipeline updates each rank's blocks from e alone through it.
    fn direct_projection(&self, _model: &Model, _block: usize) -> Option<&Tensor> {
        None
    }

    /// The signal a direct-feedback rule projects, from the output error `e` (DFA with
    /// `error_bits`: `e` on a few-bit grid); others: `e`.
    fn direct_error(&self, e: Tensor) -> Result<Tensor> {
        Ok(e)
    }
}

/// A rule's description, declared in the rule's own file; [`REGISTRY`] lists them.
#[derive(Clone, Copy)]
pub struct RuleSpec {
    /// The CLI name.
    pub name: &'static str,
    /// Other names it answers to.
    pub aliases: &'static [&'static str],
    /// One line: what it does.
    pub summary: &'static str,
    /// The paper it comes from.
    pub paper: &'static str,
    /// Every setting of its table (the fields of its settings structs).
    pub settings: fn() -> Vec<Field>,
    /// The input scaling it recommends; a fresh run that sets none takes it.
    pub normalize: Option<&'static str>,
    /// The hidden activation it recommends (the one its paper trains); a fresh run that
    /// sets none takes it.
    pub activation: Option<&'static str>,
    /// Defined for one Linear layer only (`linear:IN-OUT`).
    pub single_layer: bool,
    /// Differs from backprop only on recurrent layers (the feed-forward suites'
    /// `all` leaves it out).
    pub sequence: bool,
    /// Meant for small parameter counts (a population of perturbed copies per step);
    /// the suites' `all` leaves it out.
    pub small_models: bool,
    /// Builds the rule from its table (keys already checked).
    pub build: fn(&Table) -> Result<Box<dyn Rule>>,
}

impl RuleSpec {
    /// The base the specs fill in: no settings, no recommendation.
    pub const DEFAULT: RuleSpec = RuleSpec {
        name: "",
        aliases: &[],
        summary: "",
        paper: "",
        settings: Vec::new,
        normalize: None,
        activation: None,
        single_layer: false,
        sequence: false,
        small_models: false,
        build: |_| Err(Error::config("rule", "no rule")),
    };

    /// Builds the rule from `table`, refusing keys that are not its settings.
    pub fn build_with(&self, table: &Table) -> Result<Box<dyn Rule>> {
        crate::settings::check_keys(&format!("rule {}", self.name), table, &(self.settings)())?;
        (self.build)(table)
    }

    /// `table` with every setting filled in, checked by building the rule once.
    pub fn resolve(&self, table: &Table) -> Result<Table> {
        let fields = (self.settings)();
        crate::settings::check_keys(&format!("rule {}", self.name), table, &fields)?;
        let full = crate::settings::resolved(table, &fields);
        (self.build)(&full)?;
        Ok(full)
    }
}

/// Declares the rule modules and [`REGISTRY`]: one line per file, naming its specs.
macro_rules! registry {
    ($($module:ident: [$($spec:ident),+]),+ $(,)?) => {
        $(mod $module;)+
        /// Every rule, in listing order.
        pub const REGISTRY: &[RuleSpec] = &[$($($module::$spec,)+)+];
    };
}

registry! {
    backprop: [BP],
    feedback_alignment: [FA, USF, BRSF, FRSF, KP],
    direct_feedback: [DFA, BFA, DRTP],
    predictive_coding: [PC],
    equilibrium: [EQPROP, CHL],
    forward_forward: [FF],
    local_losses: [LOCAL, DSN],
    synthetic_gradients: [DNI, CDNI],
    target_propagation: [DTP],
    classic: [PERCEPTRON, LMS, HEBBIAN],
    uoro: [UORO],
    error_pc: [EPC],
    evolution: [ES],
}

/// The rule called `name` (or one of its aliases); an unknown name is an error that
/// lists the rules.
pub fn spec(name: &str) -> Result<&'static RuleSpec> {
    REGISTRY
        .iter()
        .find(|s| s.name == name || s.aliases.contains(&name))
        .ok_or_else(|| Error::unknown("rule", name, &names()))
}

/// Every rule's every setting, as (rule name, setting): where flat keys (`pc_steps`)
/// and their flags are looked up.
pub fn all_settings() -> Vec<(&'static str, Field)> {
    REGISTRY
        .iter()
        .flat_map(|s| (s.settings)().into_iter().map(move |f| (s.name, f)))
        .collect()
}

/// The rules' names, in registry order.
pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|s| s.name).collect()
}

/// A run's rule choice with every setting filled in (unknown or ill-typed settings and
/// values out of range are errors naming them).
pub fn resolve(choice: &Choice) -> Result<Choice> {
    let s = spec(&choice.name)?;
    Ok(Choice {
        name: s.name.to_string(),
        settings: s.resolve(&choice.settings)?,
    })
}

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
            // Spiking layers are recurrent in time: trained by BPTT (surrogate gradient).
            LayerKind::Recurrent | LayerKind::Spiking => {
                (t.recurrent, "recurrent and spiking layers")
            }
            _ => return None,
        })
    };
    rule.check_model(model)?;
    let trains = rule.trains();
    let rule = rule.name();
    for l in model.layers() {
        let kind = l.kind();
        let Some((ok, what)) = family(trains, &kind) else {
            continue;
        };
        if !ok {
            let able: Vec<&str> = names()
                .into_iter()
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

/// Refuses gradient checkpointing over `segments` for a rule that does not recompute
/// records ([`Rule::recomputes`]); any rule takes `off`.
pub fn check_checkpointing(rule: &dyn Rule, segments: crate::nn::Segments) -> Result<()> {
    if segments == crate::nn::Segments::Off || rule.recomputes() {
        return Ok(());
    }
    Err(Error::config(
        "checkpoint_segments (--checkpoint-segments)",
        format!(
            "rule {} does not recompute activations (gradient checkpointing covers bp, fa, usf, brsf, frsf, kp, dfa, bfa, drtp and dsn); use --checkpoint-segments off",
            rule.name()
        ),
    ))
}

/// Builds a rule by its CLI name with default settings.
pub fn build_rule(name: &str) -> Result<Box<dyn Rule>> {
    spec(name)?.build_with(&Table::new())
}

/// Builds a rule by its CLI name with the settings in `settings`, a JSON object of its
/// table's keys (`json!({"steps": 8})`; the others at their defaults).
pub fn build_rule_with(name: &str, settings: &serde_json::Value) -> Result<Box<dyn Rule>> {
    let table = match settings {
        serde_json::Value::Object(o) => o.clone(),
        serde_json::Value::Null => Table::new(),
        other => {
            return Err(Error::config(
                format!("rule {name}"),
                format!("settings {other} are not a table"),
            ));
        }
    };
    spec(name)?.build_with(&table)
}

/// Builds a run's rule.
pub fn build_choice(choice: &Choice) -> Result<Box<dyn Rule>> {
    spec(&choice.name)?.build_with(&choice.settings)
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

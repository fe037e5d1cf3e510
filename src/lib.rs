//! # futureprop
//!
//! Train neural networks with any credit-assignment rule — backpropagation and the
//! techniques that go beyond it — with any optimizer, and measure them side by side.
//!
//! Four concepts (see `DESIGN.md` of the project):
//!
//! - [`nn::Layer`] / [`nn::Model`]: layers own their maths — `forward`, the local
//!   parameter gradient given an output error (`param_grads`), and the transposed
//!   Jacobian (`input_grad`). Parameters live in a named [`nn::Params`] store.
//! - [`rule::Rule`]: decides the error signal each layer receives and returns the update
//!   direction ([`nn::Grads`]) plus the [`nn::Trace`] of the step.
//! - [`optim::Optimizer`]: turns update directions into parameter changes, with explicit
//!   state; first-order methods are chains of small transforms.
//! - [`nn::Trace`]: per layer, what the forward pass saw and produced, and the error
//!   signal the rule assigned — read by optimizers (K-FAC) and diagnostics.
//!
//! ## Training a model in a few lines
//!
//! ```
//! use futureprop::data::{synthetic, Batches};
//! use futureprop::nn::{Init, Loss, Model, ModelSpec};
//! use futureprop::optim::{build_optimizer, OptimizerConfig, StepContext};
//! use futureprop::rule::build_rule;
//!
//! let data = synthetic::two_moons(512, 0.1, 0)?;
//! let model = Model::build(&ModelSpec { spec: "mlp:2-32-2".into(), activation: "tanh".into(), bias: true })?;
//! let mut params = model.init_params(Init::Auto, 0)?;
//! let mut rule = build_rule("bp")?;
//! let opt_cfg = OptimizerConfig::new("adam", 0.01);
//! let mut opt = build_optimizer(&opt_cfg, 1600)?;
//! for epoch in 0..200 {
//!     for batch in Batches::new(&data, 64, true, 0, epoch) {
//!         let out = rule.step(&model, &params, &batch?, Loss::CrossEntropy)?;
//!         opt.step(&mut params, &out.grads, &mut StepContext { trace: Some(&out.trace), objective: None, reducer: None })?;
//!     }
//! }
//! let acc = futureprop::train::evaluate(rule.as_ref(), &model, &params, &data, Loss::CrossEntropy, 512)?;
//! assert!(acc.accuracy > 0.95);
//! # Ok::<(), futureprop::Error>(())
//! ```
//!
//! ## How a new rule plugs in
//!
//! 1. Add `src/rule/<name>.rs` with a struct holding the rule's own state (feedback
//!    matrices, inverse networks, relaxation settings) and implement [`rule::Rule`]:
//!    - `init` creates that state for the model. State the optimizer should train
//!      (inverses, synthesizers, heads) goes into the shared [`nn::Params`] under the
//!      rule's name (`"dni.fc1.weight"`), so one optimizer and one checkpoint cover it;
//!      fixed state is drawn from the seed and stays in the struct.
//!    - `step` runs whatever dynamics the rule has and returns a [`rule::StepOutput`]:
//!      update directions for every parameter it trains (gradient sign — optimizers
//!      descend), the forward [`nn::Trace`] with `errors[i]` set to the signal layer `i`
//!      received, and the batch loss.
//!    - `predict` only if evaluation differs from a forward pass (Forward-Forward).
//! 2. Reuse the layer pieces instead of re-deriving maths: [`nn::Layer::param_grads`]
//!    gives the local gradient for any error signal; [`rule::backward_chain`] walks the
//!    model top-down with a `transport` closure — backprop passes
//!    [`nn::Layer::input_grad`], feedback alignment substitutes its matrix for Linear
//!    layers. Direct methods (DFA, DRTP) compute the signal per [`nn::Block`] and call
//!    the activation's `input_grad` then the Linear layer's `param_grads`.
//! 3. Describe it in its own file: a settings struct declared with [`settings_struct!`]
//!    (each field once, with its doc and default; a [`settings::Settings`] impl checks
//!    ranges) and a [`rule::RuleSpec`] const (name, one-line summary, paper, settings,
//!    recommended input scaling, how it is built). Add the const to
//!    [`rule::REGISTRY`], one line. `--rule-opt KEY=VALUE`, the `[rule]` table of
//!    config files and `futureprop rules show NAME` are derived from the spec, and the
//!    combination harness (`tests/combinations.rs`) covers the rule from then on.
//! 4. Test it against the backprop oracle where theory gives an equivalence (e.g. FA with
//!    B = Wᵀ must equal BP), as `tests/gradcheck.rs` does for backprop itself.
//!
//! Optimizers that need more than a gradient read [`optim::StepContext`]: the trace, and
//! an [`optim::Objective`] that re-runs the rule at other parameters on the same batch.

pub mod bench;
pub mod data;
pub mod diag;
pub mod error;
pub mod mem;
pub mod nn;
pub mod optim;
pub mod rule;
pub mod settings;
pub mod tensor;
pub mod train;
pub use error::{Error, Result};

/// The crate's seeded random generator (ChaCha8: portable and reproducible).
pub type Rng = rand_chacha::ChaCha8Rng;

//! Credit-assignment rules.
//!
//! A [`Rule`] decides which error signal each layer receives and returns the update
//! direction for every parameter it trains ([`Grads`], in the sign of a gradient: the
//! optimizer descends along it). Rules keep their own state (feedback matrices, inverse
//! networks, synthesizers) beside the layers: fixed state in the rule, trained state in
//! the shared [`Params`] store under the rule's name, so one optimizer and one checkpoint
//! cover it.

mod backprop;

pub use backprop::Backprop;

use crate::error::{Error, Result};
use crate::nn::{Grads, Layer, Loss, Model, Params, Record, Target, Trace};
use crate::tensor::Tensor;

/// A minibatch: inputs `x[n × features]` and their targets.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Inputs, one row per sample.
    pub x: Tensor,
    /// Targets.
    pub target: Target,
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

    /// One step: the update direction for `batch` at `params`.
    fn step(
        &mut self,
        model: &Model,
        params: &Params,
        batch: &Batch,
        loss: Loss,
    ) -> Result<StepOutput>;

    /// Outputs used for evaluation. Most rules use the plain forward pass.
    fn predict(&self, model: &Model, params: &Params, x: &Tensor) -> Result<Tensor> {
        model.forward(params, x)
    }
}

/// Names accepted by [`build_rule`], with one line each.
pub const RULES: &[(&str, &str)] = &[(
    "bp",
    "backpropagation: exact gradient through transposed Jacobians (Rumelhart et al. 1986)",
)];

/// Builds a rule by its CLI name.
pub fn build_rule(name: &str) -> Result<Box<dyn Rule>> {
    match name {
        "bp" | "backprop" => Ok(Box::new(Backprop)),
        _ => Err(Error::unknown(
            "rule",
            name,
            &RULES.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        )),
    }
}

/// Carries the error `d_out` (∂L/∂output of the last layer) down the model, giving each
/// layer its parameter gradient and recording the signal in `trace.errors`.
///
/// `transport(i, layer, record, d)` maps the error at layer `i`'s output to its input:
/// backprop passes [`Layer::input_grad`]; feedback alignment swaps in a fixed matrix for
/// Linear layers. The input error of layer 0 is never computed.
pub fn backward_chain<F>(
    model: &Model,
    params: &Params,
    trace: &mut Trace,
    d_out: Tensor,
    grads: &mut Grads,
    mut transport: F,
) -> Result<()>
where
    F: FnMut(usize, &dyn Layer, &Record, &Tensor) -> Result<Tensor>,
{
    let mut d = d_out;
    for (i, layer) in model.layers().iter().enumerate().rev() {
        let rec = &trace.records[i];
        layer.param_grads(params, rec, &d, grads)?;
        let next = if i > 0 {
            Some(transport(i, layer.as_ref(), rec, &d)?)
        } else {
            None
        };
        trace.errors[i] = Some(d);
        match next {
            Some(n) => d = n,
            None => break,
        }
    }
    Ok(())
}

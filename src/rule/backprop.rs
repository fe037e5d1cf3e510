//! Backpropagation.

use super::{Batch, Rule, RuleSpec};

pub(super) const BP: RuleSpec = RuleSpec {
    name: "bp",
    aliases: &["backprop"],
    summary: "backpropagation: exact gradient through transposed Jacobians",
    paper: "Rumelhart et al. 1986",
    build: |_| Ok(Box::new(Backprop)),
    ..RuleSpec::DEFAULT
};
use crate::error::Result;
use crate::nn::{Grads, Model, Params, Trace};
use crate::tensor::Tensor;

/// Backpropagation (Rumelhart, Hinton & Williams 1986): δ_L = ∂L/∂z_L and
/// δₗ = Jₗ₊₁ᵀ δₗ₊₁ through every layer's transposed Jacobian; ∂L/∂θₗ from δₗ locally.
/// The oracle every other rule is measured against.
#[derive(Debug, Clone, Copy, Default)]
pub struct Backprop;

impl Rule for Backprop {
    fn mixed_precision(&self) -> bool {
        true
    }

    fn splits_over_batch(&self) -> bool {
        true
    }

    fn trains(&self) -> super::Trains {
        super::Trains::ALL
    }

    fn name(&self) -> &'static str {
        "bp"
    }

    fn recomputes(&self) -> bool {
        true
    }

    fn backward(
        &mut self,
        model: &Model,
        params: &Params,
        trace: &mut Trace,
        _batch: &Batch,
        d_out: Tensor,
    ) -> Result<Grads> {
        let mut grads = Grads::new();
        super::backward_layers(
            model,
            params,
            trace,
            d_out,
            &mut grads,
            |_, layer, rec, d, g, input| layer.backward(params, rec, d, g, input),
        )?;
        Ok(grads)
    }
}

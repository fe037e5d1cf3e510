//! The objective an optimizer re-evaluates: a rule's update on one batch, with the
//! model's curvature products. Assembled here, where training is, so that neither rules
//! nor optimizers import each other.

use crate::data::Batch;
use crate::error::Result;
use crate::nn::{Grads, Loss, Model, Params};
use crate::rule::Rule;

/// The rule's update on one batch as an [`Objective`](crate::optim::Objective): what
/// SAM, L-BFGS, Hessian-free and K-FAC re-evaluate.
pub struct RuleObjective<'a> {
    /// The rule.
    pub rule: &'a mut dyn Rule,
    /// The model.
    pub model: &'a Model,
    /// The batch.
    pub batch: &'a Batch,
    /// The loss.
    pub loss: Loss,
}

impl crate::optim::Objective for RuleObjective<'_> {
    fn evaluate(&mut self, params: &Params) -> Result<(f64, Grads)> {
        let out = self.rule.step(self.model, params, self.batch, self.loss)?;
        Ok((out.loss, out.grads))
    }

    fn gauss_newton_vector(&mut self, params: &Params, v: &Params) -> Result<Grads> {
        crate::nn::curvature::gauss_newton_vector(self.model, params, &self.batch.x, self.loss, v)
    }

    fn loss(&self) -> Option<Loss> {
        Some(self.loss)
    }

    fn assign_errors(
        &mut self,
        params: &Params,
        trace: &crate::nn::Trace,
        d_out: crate::tensor::Tensor,
    ) -> Result<Vec<Option<crate::tensor::Tensor>>> {
        let mut t = trace.clone();
        self.rule
            .backward(self.model, params, &mut t, self.batch, d_out)?;
        Ok(t.errors)
    }

    fn hessian_vector(&mut self, params: &Params, v: &Params) -> Result<Grads> {
        crate::nn::curvature::hessian_vector(
            self.model,
            params,
            &self.batch.x,
            &self.batch.target,
            self.loss,
            v,
        )
    }
}

//! UORO for recurrent layers (Tallec & Ollivier 2017); backprop elsewhere.

use super::{Batch, Rule, RuleSpec, StepOutput};

pub(super) const UORO: RuleSpec = RuleSpec {
    name: "uoro",
    summary: "unbiased online recurrent optimisation: rank-one forward-mode estimate for recurrent layers, backprop elsewhere",
    paper: "Tallec & Ollivier 2017",
    sequence: true,
    build: |_| Ok(Box::new(Uoro)),
    ..RuleSpec::DEFAULT
};
use crate::error::{Error, Result};
use crate::nn::{Grads, Loss, Model, Params, Trace};
use crate::tensor::Tensor;

/// UORO (Tallec & Ollivier 2017) for recurrent layers: each recurrent layer's update is
/// its unbiased rank-one online estimate of the gradient
/// ([`Layer::online_param_grads`](crate::nn::Layer::online_param_grads)); every other
/// layer learns by backprop, and the error reaching a recurrent layer from above is
/// backprop's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Uoro;

impl Rule for Uoro {
    fn check_model(&self, model: &Model) -> Result<()> {
        if let Some(l) = model
            .layers()
            .iter()
            .find(|l| l.kind() == crate::nn::LayerKind::Spiking)
        {
            return Err(Error::config(
                "rule",
                format!(
                    "uoro has no online estimate for spiking layers (layer {}); train them with bp (surrogate-gradient BPTT)",
                    l.name()
                ),
            ));
        }
        for l in model.layers().iter().skip(1) {
            if l.kind() == crate::nn::LayerKind::Recurrent {
                return Err(Error::config(
                    "rule",
                    format!(
                        "uoro: recurrent layer {} must be the model's first layer (UORO gives no gradient for the layers below it)",
                        l.name()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn trains(&self) -> super::Trains {
        super::Trains {
            recurrent: true,
            ..super::Trains::DENSE
        }
    }

    fn name(&self) -> &'static str {
        "uoro"
    }

    fn step(
        &mut self,
        model: &Model,
        params: &Params,
        batch: &Batch,
        loss: Loss,
    ) -> Result<StepOutput> {
        // Online pass: the recurrent layer's estimate advances with its steps.
        super::step_with_backward_pass(self, model, params, batch, loss, true)
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
            |_, layer, rec, d, g, input| {
                match layer.online() {
                    Some(o) => o.online_param_grads(params, rec, d, g)?,
                    None => layer.param_grads(params, rec, d, g)?,
                }
                input.then(|| layer.input_grad(params, rec, d)).transpose()
            },
        )?;
        Ok(grads)
    }
}

//! The backward chain: an output error carried down the model layer by layer, each
//! layer adding its parameter gradient. Backprop, feedback alignment, synthetic
//! gradients and the curvature products share it.

use crate::error::Result;
use crate::nn::{Grads, Layer, Model, Params, Record, Trace};
use crate::tensor::Tensor;

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
    backward_layers(model, trace, d_out, grads, |i, layer, rec, d, g, input| {
        layer.param_grads(params, rec, d, g)?;
        input.then(|| transport(i, layer, rec, d)).transpose()
    })
}

/// The loop under [`backward_chain`]: from the top layer down, `step(i, layer, record,
/// d, grads, input)` adds layer i's update for the error `d` at its output and, when
/// `input` (every layer but the first), returns the error at its input; each layer's
/// signal is recorded in `trace.errors`.
pub fn backward_layers<F>(
    model: &Model,
    trace: &mut Trace,
    d_out: Tensor,
    grads: &mut Grads,
    mut step: F,
) -> Result<()>
where
    F: FnMut(usize, &dyn Layer, &Record, &Tensor, &mut Grads, bool) -> Result<Option<Tensor>>,
{
    let mut d = d_out;
    for (i, layer) in model.layers().iter().enumerate().rev() {
        let next = step(i, layer.as_ref(), &trace.records[i], &d, grads, i > 0)?;
        trace.errors[i] = Some(d);
        match next {
            Some(n) => d = n,
            None => break,
        }
    }
    Ok(())
}

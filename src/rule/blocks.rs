//! Helpers for rules that work block by block (a Linear layer and the activation after
//! it): forward of one block into a trace, its output, its transposed Jacobian and its
//! parameter gradients. Used by predictive coding, synthetic gradients, local losses
//! and Forward-Forward.

use crate::error::Result;
use crate::nn::{Block, Grads, Model, Params, Record, Trace};
use crate::tensor::{DType, Tensor};

/// A trace with an empty record per layer, to be filled block by block.
pub(crate) fn scratch_trace(model: &Model, dtype: DType) -> Trace {
    Trace {
        records: model
            .layers()
            .iter()
            .map(|l| Record::new(l.name(), Tensor::zeros(&[0, 0], dtype)))
            .collect(),
        errors: vec![None; model.layers().len()],
    }
}

/// Drops the block's records and error signals (its activations), keeping empty
/// records in their place.
pub(crate) fn free_block(b: &Block, trace: &mut Trace) {
    for i in std::iter::once(b.linear).chain(b.activation) {
        let name = trace.records[i].layer.clone();
        let dt = trace.records[i].input.dtype();
        trace.records[i] = Record::new(&name, Tensor::zeros(&[0, 0], dt));
        trace.errors[i] = None;
    }
}

/// The dtype of the block's weights (for the rule state made beside it).
pub(crate) fn block_dtype(model: &Model, params: &Params, b: &Block) -> Result<DType> {
    Ok(params
        .get(&format!("{}.weight", model.layers()[b.linear].name()))?
        .dtype())
}

/// Forward of one block from input `h`, replacing its records in `trace`.
pub(crate) fn block_forward(
    model: &Model,
    params: &Params,
    b: &Block,
    h: &Tensor,
    trace: &mut Trace,
) -> Result<()> {
    let layers = model.layers();
    let lin = &layers[b.linear];
    let mut rec = Record::new(lin.name(), h.clone());
    let pre = lin.forward(params, h, &mut rec)?;
    rec.output = pre.clone();
    trace.records[b.linear] = rec;
    if let Some(a) = b.activation {
        let mut r = Record::new(layers[a].name(), pre.clone());
        let o = layers[a].forward(params, &pre, &mut r)?;
        r.output = o;
        trace.records[a] = r;
    }
    Ok(())
}

/// The block's output (after its activation).
pub(crate) fn block_output<'a>(b: &Block, trace: &'a Trace) -> &'a Tensor {
    &trace.records[b.activation.unwrap_or(b.linear)].output
}

/// Jᵀg: carries `g` (at the block's output) to the block's input.
pub(crate) fn block_input_grad(
    model: &Model,
    params: &Params,
    b: &Block,
    trace: &Trace,
    g: &Tensor,
) -> Result<Tensor> {
    let layers = model.layers();
    let d_pre = match b.activation {
        Some(a) => layers[a].input_grad(params, &trace.records[a], g)?,
        None => g.clone(),
    };
    layers[b.linear].input_grad(params, &trace.records[b.linear], &d_pre)
}

/// Adds the block's parameter gradients for `g` at its output; records the errors.
pub(crate) fn block_param_grads(
    model: &Model,
    params: &Params,
    b: &Block,
    trace: &mut Trace,
    g: Tensor,
    grads: &mut Grads,
) -> Result<()> {
    let layers = model.layers();
    let d_pre = match b.activation {
        Some(a) => {
            layers[a].param_grads(params, &trace.records[a], &g, grads)?;
            let d = layers[a].input_grad(params, &trace.records[a], &g)?;
            trace.errors[a] = Some(g);
            d
        }
        None => g,
    };
    layers[b.linear].param_grads(params, &trace.records[b.linear], &d_pre, grads)?;
    trace.errors[b.linear] = Some(d_pre);
    Ok(())
}

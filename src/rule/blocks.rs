//! Helpers for rules that work block by block (a weight layer, a normalisation layer,
//! the activation and a pooling layer): forward of one block into a trace, its output, its transposed Jacobian and its
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
            .map(|l| Record::empty(l.name(), dtype))
            .collect(),
        errors: vec![None; model.layers().len()],
        recompute: None,
    }
}

/// Drops the block's records and error signals (its activations), keeping empty
/// records in their place.
pub(crate) fn free_block(b: &Block, trace: &mut Trace) {
    for i in block_layers(b) {
        let name = trace.records[i].layer.clone();
        let dt = trace.records[i].input.dtype();
        trace.records[i] = Record::empty(&name, dt);
        trace.errors[i] = None;
    }
}

/// The block's layer indices in order.
fn block_layers(b: &Block) -> impl DoubleEndedIterator<Item = usize> {
    std::iter::once(b.linear)
        .chain(b.norm)
        .chain(b.activation)
        .chain(b.pool)
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
    let mut x = h.clone();
    // A training pass: batch normalisation uses (and records) batch statistics.
    let seed = Some(model.train_seed());
    for i in block_layers(b) {
        let mut rec = Record::training(layers[i].name(), x.clone(), seed);
        x = layers[i].forward(params, &x, &mut rec)?;
        rec.output = x.clone();
        trace.records[i] = rec;
    }
    Ok(())
}

/// The block's output (after its activation and pooling).
pub(crate) fn block_output<'a>(b: &Block, trace: &'a Trace) -> &'a Tensor {
    &trace.records[b.pool.or(b.activation).unwrap_or(b.linear)].output
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
    let mut d = g.clone();
    for i in block_layers(b).rev() {
        d = layers[i].input_grad(params, &trace.records[i], &d)?;
    }
    Ok(d)
}

/// [`block_input_grad`] on a trace that may be checkpointed: each layer's records are
/// recomputed when needed ([`Trace::ensure`]).
pub(crate) fn block_input_grad_ensured(
    model: &Model,
    params: &Params,
    b: &Block,
    trace: &mut Trace,
    g: &Tensor,
) -> Result<Tensor> {
    let layers = model.layers();
    let mut d = g.clone();
    for i in block_layers(b).rev() {
        trace.ensure(model, params, i)?;
        d = layers[i].input_grad(params, &trace.records[i], &d)?;
    }
    Ok(d)
}

/// Adds the block's parameter gradients for `g` at its output; records the errors. A
/// checkpointed trace's records are recomputed as they are reached ([`Trace::ensure`]).
pub(crate) fn block_param_grads(
    model: &Model,
    params: &Params,
    b: &Block,
    trace: &mut Trace,
    g: Tensor,
    grads: &mut Grads,
) -> Result<()> {
    let layers = model.layers();
    let mut d = g;
    for i in block_layers(b).rev() {
        trace.ensure(model, params, i)?;
        layers[i].param_grads(params, &trace.records[i], &d, grads)?;
        let below = if i == b.linear {
            None
        } else {
            Some(layers[i].input_grad(params, &trace.records[i], &d)?)
        };
        trace.record_error(i, d);
        match below {
            Some(x) => d = x,
            None => break,
        }
    }
    Ok(())
}

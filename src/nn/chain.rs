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
    backward_layers(
        model,
        params,
        trace,
        d_out,
        grads,
        |i, layer, rec, d, g, input| {
            layer.param_grads(params, rec, d, g)?;
            input.then(|| transport(i, layer, rec, d)).transpose()
        },
    )
}

/// The loop under [`backward_chain`]: from the top layer down, `step(i, layer, record,
/// d, grads, input)` adds layer i's update for the error `d` at its output and, when
/// `input` (every layer above the lowest one with parameters), returns the error at its
/// input; each layer's
/// signal is recorded in `trace.errors`. Records of a checkpointed trace are recomputed
/// a segment at a time as the loop reaches them ([`Trace::ensure`]).
///
/// Under mixed precision the error at the output of a layer with a matrix product takes
/// that output's element type (as autograd gives a bf16 tensor a bf16 gradient), so the
/// layer's products run in bf16 ([`error_in_precision`]). With a loss scale S ≠ 1 ([`Model::set_loss_scale`]) the chain carries S·d_out
/// (the recorded errors are scaled) and the gradients it adds to `grads` are divided by
/// S again.
pub fn backward_layers<F>(
    model: &Model,
    params: &Params,
    trace: &mut Trace,
    d_out: Tensor,
    grads: &mut Grads,
    mut step: F,
) -> Result<()>
where
    F: FnMut(usize, &dyn Layer, &Record, &Tensor, &mut Grads, bool) -> Result<Option<Tensor>>,
{
    let scale = model.loss_scale();
    let mut scaled = Grads::new();
    let g = if scale == 1.0 {
        &mut *grads
    } else {
        &mut scaled
    };
    let mut d = if scale == 1.0 {
        d_out
    } else {
        d_out.scale(scale)
    };
    // Below the lowest layer with parameters no error is needed (a spike encoder, an
    // input activation): the chain stops there.
    let lowest = model
        .layers()
        .iter()
        .position(|l| l.param_count() > 0)
        .unwrap_or(0);
    for (i, layer) in model.layers().iter().enumerate().rev() {
        // Gradient checkpointing: recompute this layer's segment on reaching it.
        trace.ensure(model, params, i)?;
        let rec = &trace.records[i];
        d = error_in_precision(layer.as_ref(), d, rec);
        let next = step(i, layer.as_ref(), rec, &d, g, i > lowest)?;
        trace.record_error(i, d);
        match next {
            Some(n) => d = n,
            None => break,
        }
    }
    if scale != 1.0 {
        for (name, t) in scaled.iter() {
            grads.accumulate(name, t.scale(1.0 / scale))?;
        }
    }
    Ok(())
}

/// The error `d` at a layer's output as that layer's backward takes it under mixed
/// precision: rounded to the output's bf16 or f16 for layers whose backward is a matrix
/// product (Linear, Conv2d, recurrent), so it runs on the reduced kernel; left f32 for the
/// others, which compute in f32 anyway — normalisation's backward subtracts batch means
/// of the error, and a rounded error would lose the small difference (as autocast runs
/// normalisation in f32).
pub(crate) fn error_in_precision(layer: &dyn Layer, d: Tensor, rec: &Record) -> Tensor {
    use crate::nn::LayerKind;
    if !rec.output.dtype().is_reduced() {
        return d;
    }
    match layer.kind() {
        LayerKind::Linear { .. } | LayerKind::Conv2d { .. } | LayerKind::Recurrent => {
            crate::nn::model::follow(d, &rec.output)
        }
        _ => d,
    }
}

/// How many segments gradient checkpointing cuts a model's layers into (Chen et al.
/// 2016): `off`, `auto` (⌈√L⌉ for L layers) or a count K (at most L).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segments {
    /// Keep every layer's records.
    Off,
    /// ⌈√L⌉ segments.
    Auto,
    /// K segments.
    Count(usize),
}

impl Segments {
    /// Parses `off`, `auto` or a positive count.
    pub fn parse(s: &str) -> crate::error::Result<Segments> {
        match s {
            "off" => Ok(Segments::Off),
            "auto" => Ok(Segments::Auto),
            n => match n.parse::<usize>() {
                Ok(k) if k > 0 => Ok(Segments::Count(k)),
                _ => Err(crate::error::Error::config(
                    "checkpoint_segments (--checkpoint-segments)",
                    format!("'{s}' (must be off, auto or a positive number of segments)"),
                )),
            },
        }
    }

    /// The number of segments for `layers` layers (1 when off).
    pub fn count(self, layers: usize) -> usize {
        let l = layers.max(1);
        match self {
            Segments::Off => 1,
            Segments::Auto => ((l as f64).sqrt().ceil() as usize).clamp(1, l),
            Segments::Count(k) => k.clamp(1, l),
        }
    }
}

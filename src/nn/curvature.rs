//! Curvature–vector products of the training loss by Pearlmutter's R-operator (1994):
//! one forward pass carrying R{·} = d/dr(·)(θ + rV) beside the activations, then one
//! backward pass.
//!
//! - Gauss–Newton: G·v = Jᵀ (∇²_z L) J v, with J v = R{z} from the R-forward pass and Jᵀ
//!   applied by ordinary backprop (Schraudolph 2002; Martens 2010). G is positive
//!   semi-definite for convex losses of the output.
//! - Hessian: H·v = R{∇_θ L}, from the R-forward pass and the R-backward pass, which also
//!   needs each activation's f″.

use crate::error::{Error, Result};
use crate::nn::backward_chain;
use crate::nn::{Grads, Loss, Model, Params, Target};
use crate::tensor::Tensor;

/// Forward pass with R{·}: the trace and R{input} of every layer, plus R{output}.
fn r_forward(
    model: &Model,
    params: &Params,
    v: &Params,
    x: &Tensor,
) -> Result<(crate::nn::Trace, Vec<Tensor>, Tensor)> {
    let trace = model.forward_trace(params, x)?;
    let mut rx = Tensor::zeros(x.shape(), x.dtype());
    let mut r_inputs = Vec::with_capacity(model.layers().len());
    for (l, rec) in model.layers().iter().zip(&trace.records) {
        let ry = l
            .r_operator()
            .ok_or_else(|| super::no_r_operator(l.name()))?
            .r_forward(params, v, rec, &rx)?;
        r_inputs.push(std::mem::replace(&mut rx, ry));
    }
    Ok((trace, r_inputs, rx))
}

/// J·v: the directional derivative of the model's output along `v`.
pub fn jacobian_vector(model: &Model, params: &Params, x: &Tensor, v: &Params) -> Result<Tensor> {
    Ok(r_forward(model, params, v, x)?.2)
}

/// G·v, the Gauss–Newton matrix of the mean loss on inputs `x` applied to `v`
/// (For these losses ∇²_z L does not depend on the targets.)
pub fn gauss_newton_vector(
    model: &Model,
    params: &Params,
    x: &Tensor,
    loss: Loss,
    v: &Params,
) -> Result<Grads> {
    let (mut trace, _, rz) = r_forward(model, params, v, x)?;
    let out = trace
        .output()
        .cloned()
        .ok_or_else(|| Error::config("model", "has no layers"))?;
    let u = loss.hessian_vector(&out, &rz)?;
    let mut g = Grads::new();
    backward_chain(model, params, &mut trace, u, &mut g, |_, layer, rec, d| {
        layer.input_grad(params, rec, d)
    })?;
    Ok(g)
}

/// H·v, the exact Hessian of the mean loss on `(x, target)` applied to `v`.
pub fn hessian_vector(
    model: &Model,
    params: &Params,
    x: &Tensor,
    target: &Target,
    loss: Loss,
    v: &Params,
) -> Result<Grads> {
    let (trace, r_inputs, rz) = r_forward(model, params, v, x)?;
    let out = trace
        .output()
        .cloned()
        .ok_or_else(|| Error::config("model", "has no layers"))?;
    let (_, mut d) = loss.eval(&out, target)?;
    let mut rd = loss.hessian_vector(&out, &rz)?;
    let mut hv = Grads::new();
    for (i, l) in model.layers().iter().enumerate().rev() {
        let rec = &trace.records[i];
        let r_in = l
            .r_operator()
            .ok_or_else(|| super::no_r_operator(l.name()))?
            .r_backward(params, v, rec, &r_inputs[i], &d, &rd, &mut hv)?;
        if i > 0 {
            d = l.input_grad(params, rec, &d)?;
            rd = r_in;
        }
    }
    Ok(hv)
}

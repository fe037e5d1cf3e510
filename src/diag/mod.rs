//! Diagnostics: how far a rule's update is from the true gradient, per layer.
//!
//! For each Linear layer's weight: the cosine and angle between the rule's update
//! direction and the backprop gradient on the same batch (as TinyDFA measures), both
//! norms, the norm of the step the optimizer took, and — for rules with feedback matrices
//! F in place of W (the paper's Bᵀ) — the angle between W and F and ‖F‖/‖W‖ (as
//! BioTorch measures).

pub mod curvature;

use serde::Serialize;

use crate::error::Result;
use crate::nn::{Grads, LayerKind, Loss, Model, Params};
use crate::rule::{Backprop, Batch, Rule};
use crate::tensor::Tensor;

/// Diagnostics of one Linear layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerDiagnostics {
    /// Layer name.
    pub layer: String,
    /// cos∠(rule update, BP gradient) of the weight.
    pub cosine_to_bp: f64,
    /// ∠(rule update, BP gradient) in degrees.
    pub angle_to_bp_deg: f64,
    /// ‖rule update‖ of the weight.
    pub update_direction_norm: f64,
    /// ‖BP gradient‖ of the weight.
    pub bp_gradient_norm: f64,
    /// ‖θ_after − θ_before‖ of the weight, when an optimizer step was observed.
    pub step_norm: Option<f64>,
    /// ∠(W, F) in degrees, for rules with a feedback matrix at this layer.
    pub feedback_angle_deg: Option<f64>,
    /// ‖F‖/‖W‖.
    pub feedback_norm_ratio: Option<f64>,
}

/// cos∠(a, b); 0 when either is zero.
pub fn cosine(a: &Tensor, b: &Tensor) -> Result<f64> {
    let d = a.norm() * b.norm();
    Ok(if d > 0.0 {
        (a.dot(b)? / d).clamp(-1.0, 1.0)
    } else {
        0.0
    })
}

/// ∠(a, b) in degrees.
pub fn angle_deg(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok(cosine(a, b)?.acos().to_degrees())
}

/// Per-layer comparison of `rule_grads` with `bp_grads`; `feedback` as from
/// [`Rule::feedback_matrices`]; `before`, when given, is the parameters before the
/// optimizer step that produced `params`.
pub fn compare(
    model: &Model,
    params: &Params,
    rule_grads: &Grads,
    bp_grads: &Grads,
    feedback: &[(String, Tensor)],
    before: Option<&Params>,
) -> Result<Vec<LayerDiagnostics>> {
    let mut out = Vec::new();
    for l in model.layers() {
        if !matches!(l.kind(), LayerKind::Linear { .. }) {
            continue;
        }
        let key = format!("{}.weight", l.name());
        let (Ok(g), Ok(b)) = (rule_grads.get(&key), bp_grads.get(&key)) else {
            continue;
        };
        let w = params.get(&key)?;
        let fb = feedback.iter().find(|(n, _)| n == l.name()).map(|(_, f)| f);
        let step_norm = match before {
            Some(p0) => Some(w.sub(p0.get(&key)?)?.norm()),
            None => None,
        };
        let (feedback_angle_deg, feedback_norm_ratio) = match fb {
            Some(f) => (
                Some(angle_deg(w, f)?),
                Some(f.norm() / w.norm().max(f64::MIN_POSITIVE)),
            ),
            None => (None, None),
        };
        let c = cosine(g, b)?;
        out.push(LayerDiagnostics {
            layer: l.name().to_string(),
            cosine_to_bp: c,
            angle_to_bp_deg: c.acos().to_degrees(),
            update_direction_norm: g.norm(),
            bp_gradient_norm: b.norm(),
            step_norm,
            feedback_angle_deg,
            feedback_norm_ratio,
        });
    }
    Ok(out)
}

/// Runs `rule` and backprop on `batch` at `params` and compares them.
pub fn diagnose(
    rule: &mut dyn Rule,
    model: &Model,
    params: &Params,
    batch: &Batch,
    loss: Loss,
) -> Result<Vec<LayerDiagnostics>> {
    let r = rule.step(model, params, batch, loss)?;
    let b = Backprop.step(model, params, batch, loss)?;
    let fb = rule.feedback_matrices(model, params)?;
    compare(model, params, &r.grads, &b.grads, &fb, None)
}

/// The share of the inputs' variance that the row space of `w` (`[k, d]`) captures, as %
/// of the most any k-dimensional subspace captures (the top-k principal subspace):
/// 100·tr(P C)/Σᵢ≤ₖ λᵢ(C), C = XᵀX/n the second moment of `x` (`[n, d]`, uncentred, as
/// Oja's rule sees its inputs) and P = Wᵀ(WWᵀ)⁻¹W the projector onto W's rows. Oja's
/// subspace rule converges to that subspace (Oja 1989), so a trained layer scores 100.
pub fn subspace_variance(w: &Tensor, x: &Tensor) -> Result<f64> {
    use crate::optim::kfac::to_faer;
    use faer::Side;
    let ((k, d), (n, dx)) = (w.dims2()?, x.dims2()?);
    if d != dx || k == 0 || k > d || n == 0 {
        return Err(crate::error::Error::config(
            "subspace_variance",
            format!("weights {k}×{d} and inputs {n}×{dx} do not fit"),
        ));
    }
    let c = to_faer(&x.matmul(true, x, false)?.scale(1.0 / n as f64))?;
    let w = to_faer(w)?;
    let fail = |what: &str, e: String| {
        crate::error::Error::config("subspace_variance", format!("{what} failed ({e})"))
    };
    let eig = c
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| fail("eigendecomposition", format!("{e:?}")))?;
    let mut s: Vec<f64> = (0..d).map(|i| eig.S().column_vector()[i]).collect();
    s.sort_by(|a, b| b.total_cmp(a));
    let best: f64 = s[..k].iter().sum();
    let g = &w * w.transpose();
    let h = &w * &c * w.transpose();
    let llt = g.llt(Side::Lower).map_err(|e| {
        fail(
            "the weights' Gram matrix (rows dependent?)",
            format!("{e:?}"),
        )
    })?;
    let sol = faer::linalg::solvers::Solve::solve(&llt, &h);
    let captured: f64 = (0..k).map(|i| sol[(i, i)]).sum();
    Ok(100.0 * captured / best)
}

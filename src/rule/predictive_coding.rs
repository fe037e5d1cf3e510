//! Predictive coding (Rao & Ballard 1999; Whittington & Bogacz 2017).
//!
//! Each hidden block k has value nodes xₖ and a prediction μₖ = fₖ(Wₖxₖ₋₁ + bₖ) from the
//! block below (x₀ is the clamped input). The energy, in the units of the mean loss, is
//!
//!   F = (1/n) Σₖ ½‖εₖ‖² + L(μ_out, y),   εₖ = xₖ − μₖ,
//!
//! where the output term is the training loss at the top prediction (the target clamps
//! the output). Inference runs T steps of gradient descent on F over the hidden xₖ with
//! per-sample step γ: xₖ ← xₖ − γ(εₖ + n·Jₖ₊₁ᵀ gₖ₊₁), where gₖ = ∂F/∂μₖ is −εₖ/n for
//! hidden blocks and ∂L/∂μ_out at the top, and Jₖ₊₁ᵀ carries it through block k+1 (its
//! activation's derivative, then Wₖ₊₁ᵀ). All nodes move together (synchronous), then
//! the predictions are recomputed; the input block's drive is computed once per batch.
//! After inference each block's update is the local ∂F/∂θₖ: gₖ through the block's own
//! activation derivative, times its input (xₖ₋₁): a Hebbian-like product of the
//! prediction error and presynaptic activity.
//!
//! Variants (`pc_variant`):
//! - `standard`: inference learning as above.
//! - `fixed-prediction`: μₖ and the Jacobians stay at their feed-forward values during
//!   inference (Millidge, Tschantz & Buckley 2020; Song et al. 2020's Z-IL makes the
//!   same assumption). The fixed point is εₖ = −n·J̃ₖ₊₁ᵀgₖ₊₁, so gₖ = J̃ₖ₊₁ᵀgₖ₊₁: exactly
//!   backprop's errors, and with γ = 1 they are reached after one step per layer.
//!
//! Prediction at test time is the plain forward pass. Relaxation diagnostics (energy and
//! residual ‖∂F/∂x‖ per step, steps taken; early stop at `relax_tolerance`) are kept in
//! [`Relaxation`].

use super::blocks::{block_forward, block_input_grad, block_output, block_param_grads};
use super::{Batch, Relaxation, Rule, RuleConfig, StepOutput};
use crate::error::{Error, Result};
use crate::nn::{Block, Grads, Loss, Model, Params};
use crate::tensor::Tensor;

/// Predictive-coding inference learning.
#[derive(Debug)]
pub struct PredictiveCoding {
    cfg: RuleConfig,
    fixed: bool,
    relaxation: Relaxation,
}

impl PredictiveCoding {
    /// PC with the options in `cfg` (`pc_steps`, `pc_gamma`, `pc_variant`,
    /// `relax_tolerance`).
    pub fn new(cfg: RuleConfig) -> Result<Self> {
        let fixed = match cfg.pc_variant.as_str() {
            "standard" => false,
            "fixed-prediction" => true,
            other => {
                return Err(Error::unknown(
                    "pc variant",
                    other,
                    &["standard", "fixed-prediction"],
                ));
            }
        };
        if !(cfg.pc_gamma.is_finite() && cfg.pc_gamma > 0.0) {
            return Err(Error::config("pc gamma", "must be a positive number"));
        }
        Ok(PredictiveCoding {
            cfg,
            fixed,
            relaxation: Relaxation::default(),
        })
    }
}

impl Rule for PredictiveCoding {
    fn name(&self) -> &'static str {
        "pc"
    }

    fn step(
        &mut self,
        model: &Model,
        params: &Params,
        batch: &Batch,
        loss: Loss,
    ) -> Result<StepOutput> {
        let (hidden, last) = model.layered_blocks("pc")?;
        let mut trace = model.forward_trace(params, &batch.x)?;
        let n = batch.x.dims2()?.0.max(1) as f64;
        let prediction = block_output(&last, &trace).clone();
        let (first_loss, mut g_top) = loss.eval(&prediction, &batch.target)?;
        let mut top_loss = first_loss;
        let mut all: Vec<Block> = hidden.clone();
        all.push(last);
        // Value nodes start at the feed-forward predictions: εₖ = 0.
        let mut x: Vec<Tensor> = hidden
            .iter()
            .map(|b| block_output(b, &trace).clone())
            .collect();
        let gamma = self.cfg.pc_gamma;
        let tol = self.cfg.relax_tolerance;
        self.relaxation = Relaxation::default();
        let hidden_g = |x: &Tensor, mu: &Tensor| -> Result<Tensor> {
            // g = ∂F/∂μ = −(x − μ)/n
            let mut e = mu.sub(x)?;
            e.scale_in_place(1.0 / n);
            Ok(e)
        };
        // From the feed-forward start every hidden error is exactly zero; an error turns
        // non-zero only once its node or its prediction has moved, one block per step
        // from the top down. Products with an all-zero operand are skipped (their result
        // is exactly zero), and so are the predictions of blocks whose input did not move:
        // the same numbers for less work (for 3 hidden blocks and T = 5, 14 of the 20
        // hidden-width products of a naive relaxation).
        let mut live: Vec<bool> = vec![false; hidden.len()];
        for t in 0..=self.cfg.pc_steps {
            // Errors at every block output, then ∂F/∂xₖ (per sample) for the hidden nodes.
            let mut eps_sq = 0.0;
            let mut gs: Vec<Option<Tensor>> = Vec::with_capacity(all.len());
            for (k, b) in hidden.iter().enumerate() {
                gs.push(if live[k] {
                    let g = hidden_g(&x[k], block_output(b, &trace))?;
                    eps_sq += g.sum_sq() * n * n;
                    Some(g)
                } else {
                    None
                });
            }
            gs.push(Some(g_top.clone()));
            let mut dx: Vec<Option<Tensor>> = Vec::with_capacity(hidden.len());
            let mut res_sq = 0.0;
            for k in 0..hidden.len() {
                // εₖ + n·Jₖ₊₁ᵀgₖ₊₁ = −n·gₖ + n·Jᵀgₖ₊₁
                let up = gs[k + 1]
                    .as_ref()
                    .map(|g| block_input_grad(model, params, &all[k + 1], &trace, g))
                    .transpose()?;
                let d = match (up, &gs[k]) {
                    (Some(mut u), Some(g)) => {
                        u.axpy(-1.0, g)?;
                        Some(u)
                    }
                    (Some(u), None) => Some(u),
                    (None, Some(g)) => Some(g.scale(-1.0)),
                    (None, None) => None,
                };
                dx.push(d.map(|mut d| {
                    d.scale_in_place(n);
                    res_sq += d.sum_sq();
                    d
                }));
            }
            self.relaxation.energy.push(0.5 * eps_sq / n + top_loss);
            self.relaxation.residual.push(res_sq.sqrt() / n);
            if t == self.cfg.pc_steps || (tol > 0.0 && res_sq.sqrt() / n < tol) || hidden.is_empty()
            {
                break;
            }
            self.relaxation.steps += 1;
            let moved: Vec<bool> = dx.iter().map(Option::is_some).collect();
            for (k, (xk, d)) in x.iter_mut().zip(&dx).enumerate() {
                if let Some(d) = d {
                    xk.axpy(-gamma, d)?;
                    live[k] = true;
                }
            }
            if !self.fixed {
                // New predictions from the moved nodes; block 0's drive is unchanged.
                for k in 1..all.len() {
                    if moved[k - 1] {
                        block_forward(model, params, &all[k], &x[k - 1], &mut trace)?;
                        if k < hidden.len() {
                            live[k] = true;
                        }
                    }
                }
                if moved[hidden.len() - 1] {
                    let (l, g) = loss.eval(block_output(&last, &trace), &batch.target)?;
                    top_loss = l;
                    g_top = g;
                }
            }
        }
        let mut grads = Grads::new();
        for (k, b) in hidden.iter().enumerate() {
            let g = hidden_g(&x[k], block_output(b, &trace))?;
            block_param_grads(model, params, b, &mut trace, g, &mut grads)?;
        }
        block_param_grads(model, params, &last, &mut trace, g_top, &mut grads)?;
        Ok(StepOutput {
            grads,
            trace,
            loss: first_loss,
            prediction: Some(prediction),
        })
    }

    fn relaxation(&self) -> Option<&Relaxation> {
        Some(&self.relaxation)
    }
}

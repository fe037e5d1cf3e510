//! Error-based predictive coding, ePC (Goemaere, Oliviers, Bogacz & Demeester 2025,
//! "Error Optimization: Overcoming Exponential Signal Decay in Deep Predictive Coding
//! Networks").
//!
//! The energy is predictive coding's (see `pc`), in the units of the mean loss,
//!
//!   F = (1/n) Σₖ ½‖εₖ‖² + L(μ_out, y),
//!
//! but inference runs over the prediction errors εₖ instead of the value nodes: the
//! states are a function of the errors, xₖ = fₖ(Wₖxₖ₋₁ + bₖ) + εₖ (x₀ the input), so
//! one forward pass with the errors added gives every state, and one backward pass from
//! the loss gives every ∂F/∂εₖ = εₖ/n + ∂L/∂xₖ. The output error reaches every layer at
//! every step, where state-based PC moves it one layer down per step, each time scaled
//! by about γ: its signal decays exponentially with depth, ePC's does not. Per-sample
//! step γ: εₖ ← εₖ − γ(εₖ + n·∂L/∂xₖ), from ε = 0 (the feed-forward pass); a step that
//! would raise F is retried with γ halved (`epc_backtrack`): F's curvature along ε grows
//! with ‖∂output/∂εₖ‖², so a fixed γ that suits a fresh network diverges once training
//! has grown its weights. The change of
//! variables keeps PC's minima, so at convergence ePC's states, and its updates, are
//! PC's.
//!
//! After inference each block's update is PC's local ∂F/∂θₖ at the inferred states:
//! −εₖ/n through the block's activation derivative, times its input xₖ₋₁; the output
//! block's is the training loss's gradient at its input. Prediction is the plain
//! forward pass.

use super::blocks::{
    block_forward, block_input_grad, block_output, block_param_grads, scratch_trace,
};
use super::{Batch, Relaxation, Rule, RuleSpec, StepOutput};
use crate::error::Result;
use crate::nn::{Block, Grads, Loss, Model, Params, Trace};
use crate::settings::{Described, Range, Settings, at_least, parse, real};
use crate::tensor::Tensor;

crate::settings_struct! {
    /// ePC's settings.
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default)]
    pub struct EpcSettings: "epc" {
        /// Inference steps T per batch (each a forward and a backward pass).
        pub steps: usize = 20,
        /// Inference step size γ on the errors (per sample).
        pub gamma: f64 = 0.1,
        /// Stop when the residual ‖∂F/∂ε‖ per sample falls below this; 0: run every
        /// step.
        pub tolerance: f64 = 0.0,
        /// Whenever a step would raise the energy F, retry it with γ halved (γ stays
        /// halved for the rest of the batch), so inference cannot diverge once the
        /// network's Jacobians outgrow 2/γ.
        pub backtrack: bool = true,
    }
}

impl Settings for EpcSettings {
    fn validate(&self) -> Result<()> {
        at_least("epc_steps", self.steps as u64, 1)?;
        real("epc_gamma", self.gamma, Range::Positive)?;
        real("epc_tolerance", self.tolerance, Range::NonNegative)
    }
}

pub(super) const EPC: RuleSpec = RuleSpec {
    name: "epc",
    summary: "error-based predictive coding: PC's energy relaxed over the prediction errors, one forward and backward pass per step",
    paper: "Goemaere et al. 2025",
    settings: EpcSettings::fields,
    build: |t| Ok(Box::new(ErrorPc::new(parse("rule epc", t)?)?)),
    ..RuleSpec::DEFAULT
};

/// Error-based predictive coding.
#[derive(Debug)]
pub struct ErrorPc {
    cfg: EpcSettings,
    relaxation: Relaxation,
}

impl ErrorPc {
    /// ePC with the settings `cfg`.
    pub fn new(cfg: EpcSettings) -> Result<Self> {
        cfg.validate()?;
        Ok(ErrorPc {
            cfg,
            relaxation: Relaxation::default(),
        })
    }
}

/// Halvings of γ tried on one step before it is taken anyway.
const MAX_HALVINGS: usize = 30;

/// The states xₖ = μₖ + εₖ block by block into `trace`; returns the output.
fn forward_with_errors(
    model: &Model,
    params: &Params,
    (hidden, last): (&[Block], &Block),
    x: &Tensor,
    eps: &[Tensor],
    trace: &mut Trace,
) -> Result<Tensor> {
    let mut h = x.clone();
    for (b, e) in hidden.iter().zip(eps) {
        block_forward(model, params, b, &h, trace)?;
        h = block_output(b, trace).add(e)?;
    }
    block_forward(model, params, last, &h, trace)?;
    Ok(block_output(last, trace).clone())
}

impl Rule for ErrorPc {
    fn name(&self) -> &'static str {
        "epc"
    }

    fn step(
        &mut self,
        model: &Model,
        params: &Params,
        batch: &Batch,
        loss: Loss,
    ) -> Result<StepOutput> {
        let (hidden, last) = model.block_walk("epc", crate::nn::BlockShape::LAYERED)?;
        let n = batch.x.dims2()?.0.max(1) as f64;
        let mut trace = scratch_trace(model, batch.x.dtype());
        let mut eps: Vec<Tensor> = Vec::with_capacity(hidden.len());
        // ε = 0: the feed-forward pass, which also sizes the errors.
        let mut h = batch.x.clone();
        for b in &hidden {
            block_forward(model, params, b, &h, &mut trace)?;
            h = block_output(b, &trace).clone();
            eps.push(Tensor::zeros(h.shape(), h.dtype()));
        }
        block_forward(model, params, &last, &h, &mut trace)?;
        let mut out = block_output(&last, &trace).clone();
        let blocks = (hidden.as_slice(), &last);
        let prediction = out.clone();
        let (first_loss, mut g_top) = loss.eval(&out, &batch.target)?;
        // F = ½Σ‖εₖ‖²/n + L at the current errors (ε = 0: the loss alone).
        let mut energy = first_loss;
        self.relaxation = Relaxation::default();
        let mut gamma = self.cfg.gamma;
        for t in 0..=self.cfg.steps {
            self.relaxation.energy.push(energy);
            if t == self.cfg.steps || hidden.is_empty() {
                break;
            }
            // One backward pass: g = ∂L/∂xₖ from the top down; d = n·∂F/∂εₖ = εₖ + n·g.
            let mut g = block_input_grad(model, params, &last, &trace, &g_top)?;
            let mut ds: Vec<Tensor> = Vec::with_capacity(hidden.len());
            for k in (0..hidden.len()).rev() {
                let mut d = g.scale(n);
                d.axpy(1.0, &eps[k])?;
                if k > 0 {
                    g = block_input_grad(model, params, &hidden[k], &trace, &g)?;
                }
                ds.push(d);
            }
            ds.reverse();
            let res_sq: f64 = ds.iter().map(Tensor::sum_sq).sum();
            self.relaxation.residual.push(res_sq.sqrt() / n);
            if self.cfg.tolerance > 0.0 && res_sq.sqrt() / n < self.cfg.tolerance {
                break;
            }
            let mut halvings = 0;
            loop {
                for (e, d) in eps.iter_mut().zip(&ds) {
                    e.axpy(-gamma, d)?;
                }
                out = forward_with_errors(model, params, blocks, &batch.x, &eps, &mut trace)?;
                let (l, g) = loss.eval(&out, &batch.target)?;
                let f = 0.5 * eps.iter().map(Tensor::sum_sq).sum::<f64>() / n + l;
                // Slack for roundoff near the minimum; divergence grows geometrically.
                let rose = f > energy + 1e-6 * energy.abs();
                if !self.cfg.backtrack || !rose || halvings == MAX_HALVINGS {
                    (energy, g_top) = (f, g);
                    break;
                }
                // Undo the step, then retry it at half the size.
                for (e, d) in eps.iter_mut().zip(&ds) {
                    e.axpy(gamma, d)?;
                }
                gamma *= 0.5;
                halvings += 1;
                self.relaxation.backtracks += 1;
            }
            self.relaxation.steps += 1;
        }
        // PC's local updates at the inferred states: ∂F/∂μₖ = −εₖ/n.
        let mut grads = Grads::new();
        for (b, e) in hidden.iter().zip(&eps) {
            block_param_grads(model, params, b, &mut trace, e.scale(-1.0 / n), &mut grads)?;
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

//! Decoupled neural interfaces with synthetic gradients (Jaderberg et al. 2016).
//!
//! After every hidden block k a synthesizer Mₖ predicts the per-sample gradient of the
//! loss with respect to the block's output hₖ: ĝₖ = Mₖ(hₖ) (`dni`) or Mₖ([hₖ, onehot(y)])
//! (`cdni`, conditioned on the label). Mₖ is linear and zero-initialised by default (the
//! paper's choice, so training starts as if hidden layers were frozen). The block updates
//! at once from ĝₖ (divided by n to be in the mean loss's units), without waiting for
//! the layers above. Mₖ learns by regression ½‖Mₖ(hₖ) − tₖ‖² (mean over the batch and
//! units) toward the gradient that arrives from above: tₖ = Jₖ₊₁ᵀ ĝₖ₊₁ carried through
//! block k+1 — itself synthetic (bootstrapping) except below the output layer, where it
//! is the true gradient. Synthesizer weights live in the parameter store
//! (`dni.syn{k}.weight`, `.bias`) and train with the run's optimizer; their loss is
//! reported as the rule's `synth_loss`.

use super::blocks::{block_dtype, block_input_grad, block_output, block_param_grads};
use super::{Batch, Rule, RuleConfig, StepOutput};
use crate::error::{Error, Result};
use crate::nn::{Grads, Loss, Model, Params, Target};
use crate::tensor::Tensor;

/// Synthetic-gradient rule.
#[derive(Debug)]
pub struct SyntheticGradients {
    conditional: bool,
    cfg: RuleConfig,
    /// Last step's synthesizer regression loss (mean over synthesizers).
    pub synth_loss: f64,
    /// Replace every synthesizer by the true backprop gradient (tests and ablations).
    pub oracle: bool,
}

impl SyntheticGradients {
    /// `dni`, or `cdni` when `conditional`.
    pub fn new(conditional: bool, cfg: RuleConfig) -> Self {
        SyntheticGradients {
            conditional,
            cfg,
            synth_loss: 0.0,
            oracle: false,
        }
    }

    fn key(k: usize) -> (String, String) {
        (format!("dni.syn{k}.weight"), format!("dni.syn{k}.bias"))
    }

    /// Synthesizer input: hₖ, or [hₖ, onehot(y)] for `cdni`.
    fn input(&self, h: &Tensor, target: &Target, classes: usize) -> Result<Tensor> {
        if !self.conditional {
            return Ok(h.clone());
        }
        let (n, w) = h.dims2()?;
        let y = target.dense(n, classes, h.dtype())?.to_vec_f64();
        let hv = h.to_vec_f64();
        let mut v = Vec::with_capacity(n * (w + classes));
        for i in 0..n {
            v.extend_from_slice(&hv[i * w..(i + 1) * w]);
            v.extend_from_slice(&y[i * classes..(i + 1) * classes]);
        }
        Ok(Tensor::from_vec_f64(&[n, w + classes], v)?.to_dtype(h.dtype()))
    }
}

impl Rule for SyntheticGradients {
    fn name(&self) -> &'static str {
        if self.conditional { "cdni" } else { "dni" }
    }

    fn init(&mut self, model: &Model, params: &mut Params, seed: u64) -> Result<()> {
        let (hidden, _) = model.layered_blocks(self.name())?;
        let init = crate::nn::Init::parse(&self.cfg.synth_init)?;
        let mut rng = <crate::Rng as rand::SeedableRng>::seed_from_u64(seed ^ 0x5e_7d);
        let classes = model.outputs();
        for (k, b) in hidden.iter().enumerate() {
            let inputs = b.outputs + if self.conditional { classes } else { 0 };
            let dt = block_dtype(model, params, b)?;
            let w = init.sample(inputs, b.outputs, &mut rng);
            let (wk, bk) = Self::key(k);
            params.insert(wk, Tensor::from_vec(&[b.outputs, inputs], w)?.to_dtype(dt));
            params.insert(bk, Tensor::zeros(&[b.outputs], dt));
        }
        Ok(())
    }

    fn step(
        &mut self,
        model: &Model,
        params: &Params,
        batch: &Batch,
        loss: Loss,
    ) -> Result<StepOutput> {
        let (hidden, last) = model.layered_blocks(self.name())?;
        let (mut trace, value, d_out) = super::forward_loss(model, params, batch, loss)?;
        let n = batch.x.dims2()?.0.max(1) as f64;
        let classes = model.outputs();
        let mut grads = Grads::new();
        // The oracle: true backprop errors at every block output.
        let oracle: Option<Vec<Tensor>> = if self.oracle {
            let mut t = trace.clone();
            let mut g = Grads::new();
            super::backward_chain(
                model,
                params,
                &mut t,
                d_out.clone(),
                &mut g,
                |_, l, r, d| l.input_grad(params, r, d),
            )?;
            Some(
                hidden
                    .iter()
                    .map(|b| {
                        t.errors[b.activation.unwrap_or(b.linear)]
                            .clone()
                            .ok_or_else(|| Error::config("dni", "oracle error missing"))
                    })
                    .collect::<Result<_>>()?,
            )
        } else {
            None
        };
        // Synthetic gradients (mean-loss units) at each hidden block output.
        let mut synth: Vec<Tensor> = Vec::with_capacity(hidden.len());
        let mut inputs: Vec<Tensor> = Vec::with_capacity(hidden.len());
        for (k, b) in hidden.iter().enumerate() {
            let si = self.input(block_output(b, &trace), &batch.target, classes)?;
            let (wk, bk) = Self::key(k);
            let mut g = si.matmul(false, params.get(&wk)?, true)?;
            g.add_row(params.get(&bk)?)?;
            g.scale_in_place(1.0 / n);
            synth.push(match &oracle {
                Some(o) => o[k].clone(),
                None => g,
            });
            inputs.push(si);
        }
        // Targets for each synthesizer: the signal from the block above carried down.
        let mut synth_loss = 0.0;
        let mut all = hidden.clone();
        all.push(last);
        for k in 0..hidden.len() {
            let above = if k + 1 == hidden.len() {
                d_out.clone()
            } else {
                synth[k + 1].clone()
            };
            let target = block_input_grad(model, params, &all[k + 1], &trace, &above)?;
            // Regression in per-sample units: r = n·(ĝ − t); loss ½ mean ‖r‖²/width.
            let mut r = synth[k].sub(&target)?;
            r.scale_in_place(n);
            let width = r.dims2()?.1.max(1) as f64;
            synth_loss += 0.5 * r.sum_sq() / (n * width);
            if oracle.is_none() {
                let (wk, bk) = Self::key(k);
                let scale = 1.0 / (n * width);
                grads.insert(wk, r.matmul(true, &inputs[k], false)?.scale(scale));
                grads.insert(bk, r.sum_rows()?.scale(scale));
            }
        }
        self.synth_loss = synth_loss / hidden.len().max(1) as f64;
        // Every block updates from the signal at its own output.
        for (k, b) in hidden.iter().enumerate() {
            block_param_grads(model, params, b, &mut trace, synth[k].clone(), &mut grads)?;
        }
        block_param_grads(model, params, &last, &mut trace, d_out, &mut grads)?;
        Ok(StepOutput {
            grads,
            trace,
            loss: value,
            prediction: None,
        })
    }

    fn aux_loss(&self) -> Option<(&'static str, f64)> {
        Some(("synth_loss", self.synth_loss))
    }
}

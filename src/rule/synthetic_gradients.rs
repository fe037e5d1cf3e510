//! Decoupled neural interfaces with synthetic gradients (Jaderberg et al. 2016).
//!
//! After every hidden block k a synthesizer Mₖ predicts the per-sample gradient of the
//! loss with respect to the block's output hₖ: ĝₖ = Mₖ(hₖ) (`dni`) or Mₖ([hₖ, onehot(y)])
//! (`cdni`, conditioned on the label). Mₖ is linear and zero-initialised by default (the
//! paper's choice, so training starts as if hidden layers were frozen); with
//! `synth_hidden = H > 0` it is a small MLP, Mₖ(s) = W·relu(V s + c) + b, with V drawn
//! He-uniform (`dni.syn{k}.hidden.weight`, `.bias`) and the output layer W initialised by
//! `synth_init` (zeros). The block updates
//! at once from ĝₖ (divided by n to be in the mean loss's units), without waiting for
//! the layers above. Mₖ learns by regression ½‖Mₖ(hₖ) − tₖ‖² (mean over the batch and
//! units) toward the gradient that arrives from above: tₖ = Jₖ₊₁ᵀ ĝₖ₊₁ carried through
//! block k+1 — itself synthetic (bootstrapping) except below the output layer, where it
//! is the true gradient. Synthesizer weights live in the parameter store
//! (`dni.syn{k}.weight`, `.bias`) and train with the run's optimizer; their loss is
//! reported as the rule's `synth_loss`.

use super::blocks::{
    block_dtype, block_forward, block_input_grad, block_output, block_param_grads, free_block,
    scratch_trace,
};
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
    keep_trace: bool,
}

impl SyntheticGradients {
    /// `dni`, or `cdni` when `conditional`.
    pub fn new(conditional: bool, cfg: RuleConfig) -> Self {
        SyntheticGradients {
            conditional,
            cfg,
            synth_loss: 0.0,
            oracle: false,
            keep_trace: true,
        }
    }

    fn key(k: usize) -> (String, String) {
        (format!("dni.syn{k}.weight"), format!("dni.syn{k}.bias"))
    }

    /// Regression of synthesizer k toward `target` (both in mean-loss units); adds its
    /// gradients and returns its loss ½ mean ‖n(ĝ − t)‖²/width.
    fn regress(
        k: usize,
        (input, hidden): (&Tensor, Option<&Tensor>),
        synth: &Tensor,
        target: &Tensor,
        params: &Params,
        grads: &mut Grads,
    ) -> Result<f64> {
        let n = synth.dims2()?.0.max(1) as f64;
        let mut r = synth.sub(target)?;
        r.scale_in_place(n);
        let width = r.dims2()?.1.max(1) as f64;
        let (wk, bk) = Self::key(k);
        let scale = 1.0 / (n * width);
        let loss = 0.5 * r.sum_sq() * scale;
        let r = r.scale(scale);
        grads.insert(bk, r.sum_rows()?);
        match hidden {
            None => grads.insert(wk, r.matmul(true, input, false)?),
            Some(z) => {
                // Through the output layer, then relu (z > 0 where it passed).
                grads.insert(wk.clone(), r.matmul(true, z, false)?);
                let dz = r
                    .matmul(false, params.get(&wk)?, false)?
                    .mul(&z.unary(crate::tensor::Unary::Sign))?;
                let (hk, hb) = Self::hidden_key(k);
                grads.insert(hk, dz.matmul(true, input, false)?);
                grads.insert(hb, dz.sum_rows()?);
            }
        }
        Ok(loss)
    }

    fn hidden_key(k: usize) -> (String, String) {
        (
            format!("dni.syn{k}.hidden.weight"),
            format!("dni.syn{k}.hidden.bias"),
        )
    }

    /// Mₖ(s) (per-sample units) and the hidden activity of an MLP synthesizer.
    fn synthesize(
        &self,
        k: usize,
        si: &Tensor,
        params: &Params,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (wk, bk) = Self::key(k);
        let (z, hidden) = if self.cfg.synth_hidden > 0 {
            let (hk, hb) = Self::hidden_key(k);
            let mut a = si.matmul(false, params.get(&hk)?, true)?;
            a.add_row(params.get(&hb)?)?;
            let z = a.unary(crate::tensor::Unary::Relu);
            (z.clone(), Some(z))
        } else {
            (si.clone(), None)
        };
        let mut g = z.matmul(false, params.get(&wk)?, true)?;
        g.add_row(params.get(&bk)?)?;
        Ok((g, hidden))
    }

    /// The step block by block: block k runs forward, updates from Mₖ(hₖ) at once, and
    /// gives synthesizer k−1 its target Jₖᵀĝₖ; then its activations can go (only hₖ and
    /// ĝₖ wait for the block above).
    fn step_streaming(
        &mut self,
        model: &Model,
        params: &Params,
        batch: &Batch,
        loss: Loss,
        (hidden, last): (&[crate::nn::Block], &crate::nn::Block),
        oracle: Option<Vec<Tensor>>,
    ) -> Result<StepOutput> {
        let n = batch.x.dims2()?.0.max(1) as f64;
        let classes = model.outputs();
        let mut grads = Grads::new();
        let mut trace = scratch_trace(model, batch.x.dtype());
        let mut h = batch.x.clone();
        // Synthesizer input, hidden activity and prediction of the block below, awaiting
        // its target.
        let mut below: Option<(Tensor, Option<Tensor>, Tensor)> = None;
        let mut synth_loss = 0.0;
        for (k, b) in hidden.iter().enumerate() {
            block_forward(model, params, b, &h, &mut trace)?;
            let out = block_output(b, &trace).clone();
            let si = self.input(&out, &batch.target, classes)?;
            let (mut g, z) = self.synthesize(k, &si, params)?;
            g.scale_in_place(1.0 / n);
            if let Some(o) = &oracle {
                g = o[k].clone();
            }
            if let Some((inp, hz, syn)) = below.take()
                && oracle.is_none()
            {
                let target = block_input_grad(model, params, b, &trace, &g)?;
                synth_loss += Self::regress(
                    k - 1,
                    (&inp, hz.as_ref()),
                    &syn,
                    &target,
                    params,
                    &mut grads,
                )?;
            }
            block_param_grads(model, params, b, &mut trace, g.clone(), &mut grads)?;
            if !self.keep_trace {
                free_block(b, &mut trace);
            }
            below = Some((si, z, g));
            h = out;
        }
        block_forward(model, params, last, &h, &mut trace)?;
        let (value, d_out) = loss.eval(block_output(last, &trace), &batch.target)?;
        if let Some((inp, hz, syn)) = below.take()
            && oracle.is_none()
        {
            let target = block_input_grad(model, params, last, &trace, &d_out)?;
            synth_loss += Self::regress(
                hidden.len() - 1,
                (&inp, hz.as_ref()),
                &syn,
                &target,
                params,
                &mut grads,
            )?;
        }
        block_param_grads(model, params, last, &mut trace, d_out, &mut grads)?;
        self.synth_loss = synth_loss / hidden.len().max(1) as f64;
        Ok(StepOutput {
            grads,
            trace,
            loss: value,
            prediction: None,
        })
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
        let (hidden, _) = model.chain_blocks(self.name())?;
        let init = crate::nn::Init::parse(&self.cfg.synth_init)?;
        let mut rng = <crate::Rng as rand::SeedableRng>::seed_from_u64(seed ^ 0x5e_7d);
        let classes = model.outputs();
        for (k, b) in hidden.iter().enumerate() {
            let mut inputs = b.outputs + if self.conditional { classes } else { 0 };
            let dt = block_dtype(model, params, b)?;
            let hsz = self.cfg.synth_hidden;
            if hsz > 0 {
                let v = crate::nn::Init::HeUniform.sample(inputs, hsz, &mut rng);
                let (hk, hb) = Self::hidden_key(k);
                params.insert(hk, Tensor::from_vec(&[hsz, inputs], v)?.to_dtype(dt));
                params.insert(hb, Tensor::zeros(&[hsz], dt));
                inputs = hsz;
            }
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
        let (hidden, last) = model.chain_blocks(self.name())?;
        // The oracle: the true backprop error at every block output replaces Mₖ(hₖ).
        let oracle = if self.oracle {
            let (mut t, _, d_out) = super::forward_loss(model, params, batch, loss)?;
            let mut g = Grads::new();
            super::backward_chain(model, params, &mut t, d_out, &mut g, |_, l, r, d| {
                l.input_grad(params, r, d)
            })?;
            Some(
                hidden
                    .iter()
                    .map(|b| {
                        t.errors[b.pool.or(b.activation).unwrap_or(b.linear)]
                            .clone()
                            .ok_or_else(|| Error::config("dni", "oracle error missing"))
                    })
                    .collect::<Result<Vec<_>>>()?,
            )
        } else {
            None
        };
        self.step_streaming(model, params, batch, loss, (&hidden, &last), oracle)
    }

    fn aux_loss(&self) -> Option<(&'static str, f64)> {
        Some(("synth_loss", self.synth_loss))
    }

    fn keep_trace(&mut self, keep: bool) {
        self.keep_trace = keep;
    }
}

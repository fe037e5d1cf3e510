//! Difference target propagation (Lee et al. 2015), in the form compared by Bartunov et
//! al. 2018.
//!
//! Hidden blocks hₖ = fₖ(hₖ₋₁) (k = 0…K−1, h₋₁ = x) feed a Linear output layer trained on
//! the loss directly. Targets instead of gradients travel down:
//! - top: τ_{K−1} = h_{K−1} − η̂·∂ℓ/∂h_{K−1}, ℓ the per-sample loss (a gradient step
//!   through the output layer only; η̂ = `dtp_target_step`);
//! - below: τₖ₋₁ = hₖ₋₁ + gₖ(τₖ) − gₖ(hₖ), with a learned inverse
//!   gₖ(h) = actₖ₋₁(Vₖh + cₖ) of block k (parameters `dtp.inv{k}.weight`, `.bias`). The
//!   difference correction makes the inverse's reconstruction error cancel: τₖ = hₖ gives
//!   τₖ₋₁ = hₖ₋₁ exactly, whatever gₖ is.
//!
//! Block k descends its layer-local loss ½‖hₖ − τₖ‖² (mean over the batch), with its
//! input detached; the top block's update is therefore η̂ times backprop's. Inverse gₖ
//! descends ½‖gₖ(fₖ(hₖ₋₁ + ε)) − (hₖ₋₁ + ε)‖², ε ~ N(0, σ²) (σ = `dtp_noise`), with fₖ
//! fixed. Schedules (`dtp_schedule`): `parallel` trains forward weights and inverses on
//! every batch (Bartunov et al.'s parallel variant); `alternating` gives odd steps to the
//! inverses and even steps to the forward weights (Lee et al. alternate the two phases).
//! The inverse loss is reported as the rule's `inverse_loss`.

use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use super::blocks::{block_dtype, block_input_grad, block_output, block_param_grads};
use super::{Batch, Rule, RuleSpec, StepOutput};
use crate::error::{Error, Result};
use crate::nn::{Block, Grads, Loss, Model, Params, Record};
use crate::settings::{Described, Range, Settings, parse, real};
use crate::tensor::Tensor;

crate::settings_struct! {
    /// Difference target propagation's settings.
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default)]
    pub struct DtpSettings: "dtp" {
        /// Step η̂ of the top target τ = h − η̂·∂ℓ/∂h (per-sample loss ℓ).
        pub target_step: f64 = 0.1,
        /// σ of the Gaussian noise in the inverses' reconstruction loss.
        pub noise: f64 = 0.1,
        /// `parallel` or `alternating` inverse training.
        pub schedule: String = "parallel".into(),
    }
}

impl Settings for DtpSettings {
    fn validate(&self) -> Result<()> {
        real("dtp_target_step", self.target_step, Range::NonNegative)?;
        real("dtp_noise", self.noise, Range::NonNegative)
    }
}

pub(super) const DTP: RuleSpec = RuleSpec {
    name: "dtp",
    summary: "difference target propagation: layer-local targets through learned inverses",
    paper: "Lee et al. 2015",
    settings: DtpSettings::fields,
    build: |t| Ok(Box::new(TargetPropagation::new(&parse("rule dtp", t)?)?)),
    ..RuleSpec::DEFAULT
};

/// Difference target propagation.
#[derive(Debug)]
pub struct TargetPropagation {
    target_step: f64,
    noise: f64,
    alternating: bool,
    steps: u64,
    rng: crate::Rng,
    /// Last step's inverse reconstruction loss (mean over inverses).
    pub inverse_loss: f64,
}

impl TargetPropagation {
    /// DTP with the settings `cfg`.
    pub fn new(cfg: &DtpSettings) -> Result<Self> {
        cfg.validate()?;
        let alternating = match cfg.schedule.as_str() {
            "parallel" => false,
            "alternating" => true,
            other => {
                return Err(Error::unknown(
                    "dtp schedule",
                    other,
                    &["parallel", "alternating"],
                ));
            }
        };
        Ok(TargetPropagation {
            target_step: cfg.target_step,
            noise: cfg.noise,
            alternating,
            steps: 0,
            rng: crate::Rng::seed_from_u64(0),
            inverse_loss: 0.0,
        })
    }

    fn key(k: usize) -> (String, String) {
        (format!("dtp.inv{k}.weight"), format!("dtp.inv{k}.bias"))
    }

    /// gₖ(h) = actₖ₋₁(Vₖh + cₖ), with the activation's record for its backward.
    fn inverse(
        model: &Model,
        params: &Params,
        k: usize,
        below: &Block,
        h: &Tensor,
    ) -> Result<(Tensor, Option<Record>)> {
        let (wk, bk) = Self::key(k);
        let mut z = h.matmul(false, params.get(&wk)?, true)?;
        z.add_row(params.get(&bk)?)?;
        match below.activation {
            Some(a) => {
                let layer = &model.layers()[a];
                let mut rec = Record::new(layer.name(), z.clone());
                let out = layer.forward(params, &z, &mut rec)?;
                // Record::new sets output = input; tanh′/σ′ read the output.
                rec.output = out.clone();
                Ok((out, Some(rec)))
            }
            None => Ok((z, None)),
        }
    }

    /// The targets τₖ of every hidden block for `batch` at `params` (index k is block
    /// k).
    pub fn targets(
        &self,
        model: &Model,
        params: &Params,
        batch: &Batch,
        loss: Loss,
    ) -> Result<Vec<Tensor>> {
        let (hidden, last) = model.block_walk("dtp", crate::nn::BlockShape::LAYERED)?;
        let (trace, _, d_out) = super::forward_loss(model, params, batch, loss)?;
        self.targets_from(model, params, &hidden, &last, &trace, &d_out)
    }

    fn targets_from(
        &self,
        model: &Model,
        params: &Params,
        hidden: &[Block],
        last: &Block,
        trace: &crate::nn::Trace,
        d_out: &Tensor,
    ) -> Result<Vec<Tensor>> {
        let Some(top) = hidden.len().checked_sub(1) else {
            return Ok(Vec::new());
        };
        let n = d_out.dims2()?.0 as f64;
        // ∂ℓ/∂h_{K−1} per sample = n · ∂(mean loss)/∂h_{K−1}.
        let g = block_input_grad(model, params, last, trace, d_out)?;
        let mut tau = block_output(&hidden[top], trace).clone();
        tau.axpy(-self.target_step * n, &g)?;
        let mut targets = vec![tau];
        for k in (1..=top).rev() {
            let upper = targets.last().expect("one target per block above");
            let (g_tau, _) = Self::inverse(model, params, k, &hidden[k - 1], upper)?;
            let (g_h, _) = Self::inverse(
                model,
                params,
                k,
                &hidden[k - 1],
                block_output(&hidden[k], trace),
            )?;
            let mut t = block_output(&hidden[k - 1], trace).add(&g_tau)?;
            t.axpy(-1.0, &g_h)?;
            targets.push(t);
        }
        targets.reverse();
        Ok(targets)
    }

    /// Gradients of the inverses' noisy reconstruction losses; returns their mean loss.
    fn inverse_grads(
        &mut self,
        model: &Model,
        params: &Params,
        hidden: &[Block],
        trace: &crate::nn::Trace,
        grads: &mut Grads,
    ) -> Result<f64> {
        let layers = model.layers();
        let mut total = 0.0;
        for k in 1..hidden.len() {
            let (below, b) = (&hidden[k - 1], &hidden[k]);
            let h = block_output(below, trace);
            let (n, w) = h.dims2()?;
            let mut x = h.clone();
            if self.noise > 0.0 {
                let normal = Normal::new(0.0, self.noise)
                    .map_err(|e| Error::config("dtp noise", e.to_string()))?;
                let eps: Vec<f64> = (0..n * w).map(|_| normal.sample(&mut self.rng)).collect();
                x.axpy(
                    1.0,
                    &Tensor::from_vec_f64(&[n, w], eps)?.to_dtype(h.dtype()),
                )?;
            }
            // fₖ(x̃) with the forward weights fixed.
            let mut rec = Record::new(layers[b.linear].name(), x.clone());
            let mut y = layers[b.linear].forward(params, &x, &mut rec)?;
            if let Some(a) = b.activation {
                let mut r = Record::new(layers[a].name(), y.clone());
                y = layers[a].forward(params, &y, &mut r)?;
            }
            let (r, rec) = Self::inverse(model, params, k, below, &y)?;
            let e = r.sub(&x)?;
            total += 0.5 * e.sum_sq() / n as f64;
            let e = e.scale(1.0 / n as f64);
            let d = match (below.activation, rec) {
                (Some(a), Some(rec)) => layers[a].input_grad(params, &rec, &e)?,
                _ => e,
            };
            let (wk, bk) = Self::key(k);
            grads.insert(wk, d.matmul(true, &y, false)?);
            grads.insert(bk, d.sum_rows()?);
        }
        Ok(total / (hidden.len().saturating_sub(1)).max(1) as f64)
    }
}

impl Rule for TargetPropagation {
    fn name(&self) -> &'static str {
        "dtp"
    }

    fn init(&mut self, model: &Model, params: &mut Params, seed: u64) -> Result<()> {
        let (hidden, _) = model.block_walk("dtp", crate::nn::BlockShape::LAYERED)?;
        self.rng = crate::Rng::seed_from_u64(seed ^ 0x0d79);
        let mut rng = crate::Rng::seed_from_u64(seed ^ 0x0001_27e5);
        for k in 1..hidden.len() {
            let (below, b) = (&hidden[k - 1], &hidden[k]);
            let dt = block_dtype(model, params, b)?;
            let w = crate::nn::Init::XavierUniform.sample(b.outputs, below.outputs, &mut rng);
            let (wk, bk) = Self::key(k);
            params.insert(
                wk,
                Tensor::from_vec(&[below.outputs, b.outputs], w)?.to_dtype(dt),
            );
            params.insert(bk, Tensor::zeros(&[below.outputs], dt));
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
        let (hidden, last) = model.block_walk("dtp", crate::nn::BlockShape::LAYERED)?;
        let (mut trace, value, d_out) = super::forward_loss(model, params, batch, loss)?;
        self.steps += 1;
        let (train_forward, train_inverse) = if self.alternating {
            (self.steps.is_multiple_of(2), !self.steps.is_multiple_of(2))
        } else {
            (true, true)
        };
        let mut grads = Grads::new();
        if train_inverse {
            self.inverse_loss = self.inverse_grads(model, params, &hidden, &trace, &mut grads)?;
        }
        if train_forward {
            let targets = self.targets_from(model, params, &hidden, &last, &trace, &d_out)?;
            let n = d_out.dims2()?.0 as f64;
            for (b, tau) in hidden.iter().zip(&targets) {
                // ∂/∂hₖ of mean ½‖hₖ − τₖ‖².
                let g = block_output(b, &trace).sub(tau)?.scale(1.0 / n);
                block_param_grads(model, params, b, &mut trace, g, &mut grads)?;
            }
            block_param_grads(model, params, &last, &mut trace, d_out, &mut grads)?;
        }
        Ok(StepOutput {
            grads,
            trace,
            loss: value,
            prediction: None,
        })
    }

    fn aux_loss(&self) -> Option<(&'static str, f64)> {
        Some(("inverse_loss", self.inverse_loss))
    }
}

//! Local losses: every hidden block learns from an auxiliary head of its own.
//!
//! `local` (greedy / decoupled greedy learning, Belilovsky et al. 2019, 2020; Nøkland &
//! Eidnes 2019): block k's output hₖ feeds a linear classifier head Hₖ (parameters
//! `local.head{k}.weight`, `.bias`); the block and its head descend the head's loss and
//! nothing else — no gradient crosses a block boundary, so each block could update as
//! soon as its forward pass is done. The output layer learns from the training loss on
//! its own (detached) input. Head losses (`local_loss`):
//! - `pred`: the training loss of the head's prediction;
//! - `sim`: ‖S(hₖ) − S(Y)‖²_F / n², S(X) the batch's cosine-similarity matrix of the
//!   row-centred rows of X and Y the one-hot targets (Nøkland & Eidnes' similarity
//!   matching loss; for an MLP, computed on hₖ itself);
//! - `predsim`: (1 − β)·pred + β·sim (β = `local_beta`, 0.99 in the paper).
//!
//! `dsn` (deeply-supervised nets, Lee et al. 2015): the same heads, but their losses
//! are added with weight `dsn_weight` to the global loss and everything backpropagates;
//! weight 0 is backprop.

use super::blocks::{
    block_dtype, block_forward, block_input_grad_ensured, block_output, block_param_grads,
    free_block,
    scratch_trace,
};
use super::{Batch, Rule, RuleSpec, StepOutput};
use crate::error::{Error, Result};
use crate::nn::{Grads, Loss, Model, Params, Target};
use crate::settings::{Described, Range, Settings, parse, real};
use crate::tensor::Tensor;

crate::settings_struct! {
    /// The auxiliary heads' loss (`local` and `dsn`).
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default)]
    pub struct LocalSettings: "local" {
        /// Head loss `pred`, `sim` or `predsim`.
        pub loss: String = "pred".into(),
        /// Weight β of the similarity term in `predsim`.
        pub beta: f64 = 0.99,
    }
}

impl Settings for LocalSettings {
    fn validate(&self) -> Result<()> {
        real("local_beta", self.beta, Range::Unit)?;
        HeadLoss::parse(&self.loss, self.beta).map(|_| ())
    }
}

crate::settings_struct! {
    /// Deeply-supervised nets' own setting.
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default)]
    pub struct DsnSettings: "dsn" {
        /// Weight of every auxiliary head's loss.
        pub weight: f64 = 0.3,
    }
}

impl Settings for DsnSettings {
    fn validate(&self) -> Result<()> {
        real("dsn_weight", self.weight, Range::NonNegative)
    }
}

pub(super) const LOCAL: RuleSpec = RuleSpec {
    name: "local",
    summary: "local losses: each block learns from its own auxiliary head, no gradient crosses blocks",
    paper: "Belilovsky et al. 2019; Nøkland & Eidnes 2019",
    settings: LocalSettings::fields,
    build: |t| Ok(Box::new(LocalLosses::new(parse("rule local", t)?, None)?)),
    ..RuleSpec::DEFAULT
};

pub(super) const DSN: RuleSpec = RuleSpec {
    name: "dsn",
    summary: "deeply-supervised nets: auxiliary head losses added to the global backprop loss",
    paper: "Lee et al. 2015",
    settings: || [LocalSettings::fields(), DsnSettings::fields()].concat(),
    build: |t| {
        let d: DsnSettings = parse("rule dsn", t)?;
        Ok(Box::new(LocalLosses::new(parse("rule dsn", t)?, Some(d))?))
    },
    ..RuleSpec::DEFAULT
};

/// Which head loss.
#[derive(Debug, Clone, Copy, PartialEq)]
enum HeadLoss {
    Pred,
    Sim,
    PredSim(f64),
}

impl HeadLoss {
    fn parse(s: &str, beta: f64) -> Result<HeadLoss> {
        match s {
            "pred" => Ok(HeadLoss::Pred),
            "sim" => Ok(HeadLoss::Sim),
            "predsim" => Ok(HeadLoss::PredSim(beta)),
            other => Err(Error::unknown(
                "local loss",
                other,
                &["pred", "sim", "predsim"],
            )),
        }
    }
}

/// Local-loss or deeply-supervised training.
#[derive(Debug)]
pub struct LocalLosses {
    deeply_supervised: bool,
    head_loss: HeadLoss,
    dsn_weight: f64,
    keep_trace: bool,
}

impl LocalLosses {
    /// `local` (`dsn` none) or deeply-supervised nets (`dsn`).
    pub fn new(cfg: LocalSettings, dsn: Option<DsnSettings>) -> Result<Self> {
        cfg.validate()?;
        let head_loss = HeadLoss::parse(&cfg.loss, cfg.beta)?;
        if let Some(d) = &dsn {
            d.validate()?;
        }
        Ok(LocalLosses {
            deeply_supervised: dsn.is_some(),
            head_loss,
            dsn_weight: dsn.map_or(0.0, |d| d.weight),
            keep_trace: true,
        })
    }

    fn key(k: usize) -> (String, String) {
        (
            format!("local.head{k}.weight"),
            format!("local.head{k}.bias"),
        )
    }

    /// Head k's gradient with respect to its block's output `h` (times the head weight:
    /// 1 for `local`, `dsn_weight` for `dsn`); the head's own gradients go into `grads`.
    #[allow(clippy::too_many_arguments)]
    fn head_grad(
        &self,
        k: usize,
        h: &Tensor,
        params: &Params,
        batch: &Batch,
        loss: Loss,
        classes: usize,
        grads: &mut Grads,
    ) -> Result<Tensor> {
        let weight = if self.deeply_supervised {
            self.dsn_weight
        } else {
            1.0
        };
        let (wk, bk) = Self::key(k);
        let hw = params.get(&wk)?;
        let (pred_w, sim_w) = match self.head_loss {
            HeadLoss::Pred => (1.0, 0.0),
            HeadLoss::Sim => (0.0, 1.0),
            HeadLoss::PredSim(beta) => (1.0 - beta, beta),
        };
        let mut g = Tensor::zeros(h.shape(), h.dtype());
        if pred_w > 0.0 {
            let mut z = h.matmul(false, hw, true)?;
            z.add_row(params.get(&bk)?)?;
            let (_, dz) = loss.eval(&z, &batch.target)?;
            let dz = dz.scale(pred_w * weight);
            grads.insert(wk.clone(), dz.matmul(true, h, false)?);
            grads.insert(bk.clone(), dz.sum_rows()?);
            g.axpy(1.0, &dz.matmul(false, hw, false)?)?;
        } else {
            grads.insert(wk.clone(), hw.scale(0.0));
            grads.insert(bk.clone(), params.get(&bk)?.scale(0.0));
        }
        if sim_w > 0.0 {
            let (_, gs) = sim_loss(h, &batch.target, classes)?;
            g.axpy(sim_w * weight, &gs)?;
        }
        Ok(g)
    }
}

/// Cosine-similarity matrix of the row-centred rows of `x`, and the normalised rows
/// with their norms (for the backward pass).
fn similarity(x: &Tensor) -> Result<(Tensor, Tensor, Vec<f64>)> {
    let (nrm, norms) = x.center_normalize_rows(1e-8)?;
    Ok((nrm.matmul(false, &nrm, true)?, nrm, norms))
}

/// Similarity-matching loss ‖S(h) − S(Y)‖²_F / n² and its gradient with respect to h.
pub fn sim_loss(h: &Tensor, target: &Target, classes: usize) -> Result<(f64, Tensor)> {
    let (n, _) = h.dims2()?;
    let y = target.dense(n, classes, h.dtype())?;
    let (sh, nrm, norms) = similarity(h)?;
    let (sy, _, _) = similarity(&y)?;
    let diff = sh.sub(&sy)?;
    let nf = (n * n).max(1) as f64;
    let value = diff.sum_sq() / nf;
    // dL/dN = 2(dL/dS)N with dL/dS = 2(S − S_y)/n² (S symmetric); then through z/‖z‖
    // and the row centring.
    let g_n = diff.matmul(false, &nrm, false)?.scale(4.0 / nf);
    Ok((value, nrm.center_normalize_rows_backward(&norms, &g_n)?.to_dtype(h.dtype())))
}

impl Rule for LocalLosses {
    fn mixed_precision(&self) -> bool {
        true
    }

    /// dsn and the pred head are per-sample; sim and predsim compare the batch's samples.
    fn splits_over_batch(&self) -> bool {
        self.deeply_supervised || matches!(self.head_loss, HeadLoss::Pred)
    }

    /// dsn walks the global backward pass from the top; local trains block by block on
    /// its own passes.
    fn recomputes(&self) -> bool {
        self.deeply_supervised
    }

    fn trains(&self) -> super::Trains {
        // Per convolutional block; a block may hold a normalisation layer.
        super::Trains {
            conv: true,
            norm: true,
            ..super::Trains::DENSE
        }
    }

    fn name(&self) -> &'static str {
        if self.deeply_supervised {
            "dsn"
        } else {
            "local"
        }
    }

    fn init(&mut self, model: &Model, params: &mut Params, seed: u64) -> Result<()> {
        let (hidden, _) = model.block_walk(self.name(), crate::nn::BlockShape::CHAIN)?;
        let mut rng = <crate::Rng as rand::SeedableRng>::seed_from_u64(seed ^ 0x10ca1);
        let classes = model.outputs();
        for (k, b) in hidden.iter().enumerate() {
            let dt = block_dtype(model, params, b)?;
            let w = crate::nn::Init::Torch.sample(b.outputs, classes, &mut rng);
            let (wk, bk) = Self::key(k);
            params.insert(wk, Tensor::from_vec(&[classes, b.outputs], w)?.to_dtype(dt));
            params.insert(bk, Tensor::zeros(&[classes], dt));
        }
        Ok(())
    }

    fn keep_trace(&mut self, keep: bool) {
        self.keep_trace = keep;
    }

    fn step(
        &mut self,
        model: &Model,
        params: &Params,
        batch: &Batch,
        loss: Loss,
    ) -> Result<StepOutput> {
        let (hidden, last) = model.block_walk(self.name(), crate::nn::BlockShape::CHAIN)?;
        let mut grads = Grads::new();
        if self.deeply_supervised {
            // Backprop of the global loss with each head's gradient joining at its block.
            // From the top block down, each head on its block's output as the pass
            // reaches it (a checkpointed trace recomputes each segment once).
            let (mut trace, value, d_out) = super::forward_loss(model, params, batch, loss)?;
            let mut g = d_out;
            block_param_grads(model, params, &last, &mut trace, g.clone(), &mut grads)?;
            let mut above = last;
            for (k, b) in hidden.iter().enumerate().rev() {
                g = block_input_grad_ensured(model, params, &above, &mut trace, &g)?;
                trace.ensure(model, params, b.pool.or(b.activation).unwrap_or(b.linear))?;
                let h = block_output(b, &trace).clone();
                let head = self.head_grad(k, &h, params, batch, loss, model.outputs(), &mut grads)?;
                g.axpy(1.0, &head)?;
                block_param_grads(model, params, b, &mut trace, g.clone(), &mut grads)?;
                above = *b;
            }
            return Ok(StepOutput {
                grads,
                trace,
                loss: value,
                prediction: None,
            });
        }
        // Block by block: forward, head, update; then the block's activations can go.
        let mut trace = scratch_trace(model, batch.x.dtype());
        let mut h = batch.x.clone();
        for (k, b) in hidden.iter().enumerate() {
            block_forward(model, params, b, &h, &mut trace)?;
            let out = block_output(b, &trace).clone();
            let g = self.head_grad(k, &out, params, batch, loss, model.outputs(), &mut grads)?;
            block_param_grads(model, params, b, &mut trace, g, &mut grads)?;
            if !self.keep_trace {
                free_block(b, &mut trace);
            }
            h = out;
        }
        // The output layer learns from the training loss on its detached input.
        block_forward(model, params, &last, &h, &mut trace)?;
        let (value, d_out) = loss.eval(block_output(&last, &trace), &batch.target)?;
        block_param_grads(model, params, &last, &mut trace, d_out, &mut grads)?;
        Ok(StepOutput {
            grads,
            trace,
            loss: value,
            prediction: None,
        })
    }
}

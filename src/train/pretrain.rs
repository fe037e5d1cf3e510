//! Greedy layer-wise pretraining of a deep belief net (Hinton, Osindero & Teh 2006):
//! each hidden Linear layer in turn is the weight matrix of a restricted Boltzmann
//! machine whose visible units are the previous layer's hidden probabilities (the input
//! pixels, in [0, 1], for the first), trained by contrastive divergence CD-k (Hinton
//! 2002). The RBM's hidden biases are the layer's biases; its visible biases are
//! discarded afterwards. The output layer is left to supervised fine-tuning with any
//! rule (`futureprop train --pretrain rbm`).
//!
//! CD-k on a batch v₀ (Hinton's practical guide, 2010): p(h|v) = σ(Wv + c),
//! p(v|h) = σ(Wᵀh + b); h₀ ~ p(h|v₀); k Gibbs steps vⱼ = p(v|hⱼ₋₁) (probabilities for the
//! visible reconstructions), hⱼ ~ p(h|vⱼ); with the last step's probabilities
//! q = p(h|v_k): ΔW = ⟨p(h|v₀)v₀ᵀ⟩ − ⟨q v_kᵀ⟩, Δc = ⟨p(h|v₀) − q⟩, Δb = ⟨v₀ − v_k⟩
//! (batch means), applied with momentum SGD: W ← W + η·(μ·velocity + Δ).

use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nn::{LayerKind, Model, Params};
use crate::tensor::{Tensor, Unary};

crate::settings_struct! {
    /// RBM pretraining settings.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default)]
    pub struct RbmConfig {
        /// RBM pretraining epochs per layer.
        pub rbm_epochs: usize = 5,
        /// RBM learning rate η.
        pub rbm_lr: f64 = 0.05,
        /// Gibbs steps k of CD-k.
        pub rbm_k: usize = 1,
        /// RBM momentum μ.
        pub rbm_momentum: f64 = 0.5,
    }
}

impl RbmConfig {
    /// Every numeric setting in its range; the error names the setting and the value.
    pub fn validate(&self) -> Result<()> {
        use crate::settings::{Range::*, at_least, real};
        at_least("rbm_epochs", self.rbm_epochs as u64, 1)?;
        real("rbm_lr", self.rbm_lr, Positive)?;
        at_least("rbm_k", self.rbm_k as u64, 1)?;
        real("rbm_momentum", self.rbm_momentum, Fraction)
    }
}

/// The CD-k statistics of one batch: (ΔW [hidden, visible], Δc [hidden], Δb [visible])
/// in ascent direction, and the mean squared reconstruction error. With `sample`
/// false the hidden states are their probabilities (mean-field CD, deterministic).
pub fn cd_k(
    w: &Tensor,
    c: &Tensor,
    b: &Tensor,
    v0: &Tensor,
    k: usize,
    sample: bool,
    rng: &mut crate::Rng,
) -> Result<(Tensor, Tensor, Tensor, f64)> {
    let (n, _) = v0.dims2()?;
    let nf = n.max(1) as f64;
    let hidden_probs = |v: &Tensor| -> Result<Tensor> {
        let mut a = v.matmul(false, w, true)?;
        a.add_row(c)?;
        Ok(a.unary(Unary::Sigmoid))
    };
    let draw = |p: &Tensor, rng: &mut crate::Rng| -> Result<Tensor> {
        if !sample {
            return Ok(p.clone());
        }
        Ok(p.bernoulli(rng))
    };
    let ph0 = hidden_probs(v0)?;
    let mut h = draw(&ph0, rng)?;
    let mut v = v0.clone();
    let mut q = ph0.clone();
    for _ in 0..k.max(1) {
        let mut a = h.matmul(false, w, false)?;
        a.add_row(b)?;
        v = a.unary(Unary::Sigmoid);
        q = hidden_probs(&v)?;
        h = draw(&q, rng)?;
    }
    let mut dw = ph0.matmul(true, v0, false)?;
    dw.axpy(-1.0, &q.matmul(true, &v, false)?)?;
    dw.scale_in_place(1.0 / nf);
    let dc = ph0.sub(&q)?.sum_rows()?.scale(1.0 / nf);
    let dv = v0.sub(&v)?;
    let db = dv.sum_rows()?.scale(1.0 / nf);
    let err = dv.sum_sq() / (nf * v0.dims2()?.1.max(1) as f64);
    Ok((dw, dc, db, err))
}

/// Pretrains every hidden Linear layer of `model` (all but the last) as a stack of RBMs
/// on the rows of `x`, in batches of `batch_size`, writing the weights and hidden biases
/// into `params`. Returns the last epoch's reconstruction error per layer.
pub fn pretrain_rbm(
    model: &Model,
    params: &mut Params,
    x: &Tensor,
    batch_size: usize,
    cfg: &RbmConfig,
    seed: u64,
) -> Result<Vec<f64>> {
    let linears: Vec<(String, usize, usize)> = model
        .layers()
        .iter()
        .filter_map(|l| match l.kind() {
            LayerKind::Linear {
                inputs,
                outputs,
                bias: true,
            } => Some((l.name().to_string(), inputs, outputs)),
            _ => None,
        })
        .collect();
    let stack = model.block_walk("rbm", crate::nn::BlockShape::LAYERED);
    if linears.len() < 2 || !stack.is_ok_and(|(hidden, _)| hidden.len() + 1 == linears.len()) {
        return Err(Error::config(
            "pretrain",
            "rbm pretraining needs an MLP with at least one hidden layer, all with biases",
        ));
    }
    if model.hidden_activation() != Some(Unary::Sigmoid) {
        return Err(Error::config(
            "pretrain",
            "rbm pretraining trains sigmoid units; use --activation sigmoid",
        ));
    }
    let mut rng = crate::Rng::seed_from_u64(seed ^ 0xdbe7);
    let (n, _) = x.dims2()?;
    let mut data = x.clone();
    let mut errors = Vec::new();
    for (name, inputs, outputs) in &linears[..linears.len() - 1] {
        let wk = format!("{name}.weight");
        let ck = format!("{name}.bias");
        let mut w = params.get(&wk)?.clone();
        let mut c = params.get(&ck)?.clone();
        let mut b = Tensor::zeros(&[*inputs], x.dtype());
        let (mut vw, mut vc, mut vb) = (
            Tensor::zeros(&[*outputs, *inputs], x.dtype()),
            Tensor::zeros(&[*outputs], x.dtype()),
            Tensor::zeros(&[*inputs], x.dtype()),
        );
        let mut last_err = f64::NAN;
        for epoch in 0..cfg.rbm_epochs {
            let order = crate::data::shuffled_indices(n, seed, epoch as u64);
            let (mut err_sum, mut batches) = (0.0, 0usize);
            for chunk in order.chunks(batch_size.max(1)) {
                let v0 = data.gather_rows(chunk)?;
                let (dw, dc, db, err) = cd_k(&w, &c, &b, &v0, cfg.rbm_k, true, &mut rng)?;
                vw.axpby(cfg.rbm_momentum, 1.0, &dw)?;
                vc.axpby(cfg.rbm_momentum, 1.0, &dc)?;
                vb.axpby(cfg.rbm_momentum, 1.0, &db)?;
                w.axpy(cfg.rbm_lr, &vw)?;
                c.axpy(cfg.rbm_lr, &vc)?;
                b.axpy(cfg.rbm_lr, &vb)?;
                err_sum += err;
                batches += 1;
            }
            last_err = err_sum / batches.max(1) as f64;
        }
        errors.push(last_err);
        // The next RBM sees this layer's hidden probabilities.
        let mut a = data.matmul(false, &w, true)?;
        a.add_row(&c)?;
        data = a.unary(Unary::Sigmoid);
        params.insert(wk, w);
        params.insert(ck, c);
    }
    Ok(errors)
}

//! Direct feedback: every hidden block receives a fixed random projection of one global
//! signal instead of an error carried down through the layers above.
//!
//! For hidden block l (Linear then activation f, pre-activation aₗ):
//!
//! - `dfa` (Nøkland 2016): δₗ = (e·Bₗ) ⊙ f′(aₗ), e = ∂L/∂z the output error, Bₗ fixed
//!   random of shape (outputs × widthₗ) (the paper's Bₗ transposed; rows are samples).
//! - `bfa` ("broadcast"): as `dfa`, with one B shared by all hidden blocks of equal width.
//! - `drtp` (Frenkel, Lefebvre & Bol 2021): δₗ = (−y*·Bₗ) ⊙ f′(aₗ), y* the one-hot target.
//!   The paper projects y* as a surrogate of the error; we use −y* so that the signal has
//!   the sign of a gradient (e = softmax(z) − y* ≈ −y* early in training) and optimizers
//!   descend along it, which gives the paper's update ΔWₗ ∝ (Bₗᵀy* ⊙ f′)·hₗ₋₁ᵀ.
//!
//! The output layer is always trained with its true local gradient ∂L/∂W = eᵀh. No Wᵀδ
//! product is computed: the backward pass costs one projection per hidden block.
//!
//! Low precision ([`DirectPrecision`]): the matrices B may be int8, ternary or binary and
//! the error e a k-bit integer times one scale per batch, so every hidden update is an
//! integer projection of an integer signal (the form analog and neuromorphic hardware
//! can run); the output layer then learns from the same quantised e.

use std::collections::HashMap;

use rand::SeedableRng;

use super::feedback_alignment::FeedbackSettings;
use super::{Batch, Rule, RuleSpec};
use crate::error::{Error, Result};
use crate::nn::{Block, Grads, Model, Params, Trace};
use crate::settings::{Described, parse};
use crate::tensor::Tensor;

fn direct_rule(kind: DirectKind, t: &crate::settings::Table) -> Result<Box<dyn Rule>> {
    let mut r = DirectFeedback::new(kind, parse("rule", t)?);
    r.precision = parse("rule", t)?;
    Ok(Box::new(r))
}

/// The settings of the direct-feedback rules: the feedback draw and its precision.
fn direct_settings() -> Vec<crate::settings::Field> {
    let mut f = FeedbackSettings::fields();
    f.extend(DirectPrecision::fields());
    f
}

crate::settings_struct! {
    /// Low-precision direct feedback, the hardware-friendly form for neuromorphic and
    /// analog chips (Frenkel et al. 2021; Crafton et al. 2019): integer feedback
    /// matrices and a few-bit output error, so each hidden update is an integer
    /// projection of an integer signal.
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default)]
    pub struct DirectPrecision: "direct feedback precision" {
        /// Feedback matrices: `f32` (as drawn), `int8` (symmetric, step max|B|/127),
        /// `ternary` (α·{−1, 0, 1}: zero below Δ = 0.7·mean|B|, α the mean |B| above it;
        /// Li & Liu 2016) or `binary` (mean|B|·sign B).
        pub feedback_precision: String = "f32".into(),
        /// Bits of the projected signal (the output error), 2 to 16, symmetric per batch
        /// with step max|e|/(2^(k−1) − 1) (2 bits: ternary); 0 keeps it f32. The output
        /// layer learns from the same quantised error.
        pub error_bits: u32 = 0,
    }
}

impl crate::settings::Settings for DirectPrecision {
    fn validate(&self) -> Result<()> {
        if !matches!(
            self.feedback_precision.as_str(),
            "f32" | "int8" | "ternary" | "binary"
        ) {
            return Err(Error::unknown(
                "feedback_precision",
                &self.feedback_precision,
                &["f32", "int8", "ternary", "binary"],
            ));
        }
        if self.error_bits == 1 || self.error_bits > 16 {
            return Err(Error::config(
                "error_bits",
                format!("{} is not 0 (f32) or 2 to 16", self.error_bits),
            ));
        }
        Ok(())
    }
}

/// `b` in `precision`: int8, ternary or binary values times one scale.
fn quantize_feedback(b: &Tensor, precision: &str) -> Result<Tensor> {
    let v = b.to_vec_f64();
    let mean = v.iter().map(|x| x.abs()).sum::<f64>() / v.len().max(1) as f64;
    let q: Vec<f64> = match precision {
        "int8" => {
            let step = v.iter().fold(0.0f64, |m, x| m.max(x.abs())) / 127.0;
            if step == 0.0 {
                return Ok(b.clone());
            }
            v.iter().map(|x| (x / step).round().clamp(-127.0, 127.0) * step).collect()
        }
        "ternary" => {
            let delta = 0.7 * mean;
            let above: Vec<f64> = v.iter().map(|x| x.abs()).filter(|a| *a > delta).collect();
            let alpha = above.iter().sum::<f64>() / above.len().max(1) as f64;
            v.iter()
                .map(|x| if x.abs() > delta { alpha * x.signum() } else { 0.0 })
                .collect()
        }
        "binary" => v.iter().map(|x| mean * if *x >= 0.0 { 1.0 } else { -1.0 }).collect(),
        _ => return Ok(b.clone()),
    };
    Ok(Tensor::from_vec_f64(b.shape(), q)?.to_dtype(b.dtype()))
}

/// `e` on a symmetric `bits`-bit grid with step max|e|/(2^(bits−1) − 1).
fn quantize_error(e: &Tensor, bits: u32) -> Result<Tensor> {
    let top = e.to_vec_f64().iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let levels = 2f64.powi(bits as i32 - 1) - 1.0;
    if top == 0.0 || e.is_empty() {
        return Ok(e.clone());
    }
    Ok(e.fake_quantize(&[top / levels], e.len(), levels, levels)?.0)
}

pub(super) const DFA: RuleSpec = RuleSpec {
    name: "dfa",
    summary: "direct feedback alignment: output error projected to every hidden block",
    paper: "Nøkland 2016",
    settings: direct_settings,
    build: |t| direct_rule(DirectKind::Dfa, t),
    ..RuleSpec::DEFAULT
};

pub(super) const BFA: RuleSpec = RuleSpec {
    name: "bfa",
    summary: "broadcast feedback alignment: DFA with one matrix shared per hidden width",
    paper: "Nøkland 2016, shared",
    settings: direct_settings,
    build: |t| direct_rule(DirectKind::Bfa, t),
    ..RuleSpec::DEFAULT
};

pub(super) const DRTP: RuleSpec = RuleSpec {
    name: "drtp",
    summary: "direct random target projection: one-hot target projected to hidden blocks",
    paper: "Frenkel et al. 2021",
    settings: direct_settings,
    // The paper's hidden units are tanh. With ReLU the projected target's sign pushes
    // units that the target switches off into the dead zone: one MNIST epoch with Adam
    // 1e-3 scores 68 % on ReLU, 93 % on tanh.
    activation: Some("tanh"),
    build: |t| direct_rule(DirectKind::Drtp, t),
    ..RuleSpec::DEFAULT
};

/// Which global signal is projected, and whether matrices are shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectKind {
    /// Output error, one matrix per block (`dfa`).
    Dfa,
    /// Output error, one matrix per hidden width (`bfa`).
    Bfa,
    /// Negative one-hot target, one matrix per block (`drtp`).
    Drtp,
}

/// Direct feedback alignment and direct random target projection.
#[derive(Debug)]
pub struct DirectFeedback {
    kind: DirectKind,
    feedback: FeedbackSettings,
    precision: DirectPrecision,
    /// Projection matrices (outputs × width), keyed by block index or, for `bfa`, width.
    matrices: HashMap<usize, Tensor>,
}

impl DirectFeedback {
    /// A direct-feedback rule.
    pub fn new(kind: DirectKind, feedback: FeedbackSettings) -> Self {
        DirectFeedback {
            kind,
            feedback,
            precision: DirectPrecision::default(),
            matrices: HashMap::new(),
        }
    }

    /// Hidden blocks (Linear or Conv2d with their activation; pooling may sit between)
    /// and the output layer. On a convolution the projection reaches the whole feature
    /// map: B is outputs × (C·H·W).
    fn blocks(model: &Model) -> Result<(Vec<Block>, Block)> {
        model.block_walk("direct feedback", crate::nn::BlockShape::WEIGHTS)
    }

    fn key(&self, index: usize, width: usize) -> usize {
        match self.kind {
            DirectKind::Bfa => width,
            _ => index,
        }
    }

    /// The projection matrix of hidden block `index`.
    pub fn matrix(&self, model: &Model, index: usize) -> Option<&Tensor> {
        let (hidden, _) = Self::blocks(model).ok()?;
        let b = hidden.get(index)?;
        self.matrices.get(&self.key(index, b.outputs))
    }

    /// Replaces the projection matrix of hidden block `index` (tests, experiments).
    pub fn set_matrix(&mut self, model: &Model, index: usize, m: Tensor) -> Result<()> {
        let (hidden, _) = Self::blocks(model)?;
        let b = hidden
            .get(index)
            .ok_or_else(|| Error::config("block", format!("no hidden block {index}")))?;
        if m.shape() != [model.outputs(), b.outputs] {
            return Err(Error::shape(
                "direct feedback matrix",
                format!(
                    "expected [{}, {}], got {:?}",
                    model.outputs(),
                    b.outputs,
                    m.shape()
                ),
            ));
        }
        let k = self.key(index, b.outputs);
        self.matrices.insert(k, m);
        Ok(())
    }
}

impl Rule for DirectFeedback {
    fn mixed_precision(&self) -> bool {
        true
    }

    fn splits_over_batch(&self) -> bool {
        true
    }

    fn recomputes(&self) -> bool {
        true
    }

    fn trains(&self) -> super::Trains {
        // Projections onto whole feature maps.
        super::Trains {
            conv: true,
            ..super::Trains::DENSE
        }
    }

    fn name(&self) -> &'static str {
        match self.kind {
            DirectKind::Dfa => "dfa",
            DirectKind::Bfa => "bfa",
            DirectKind::Drtp => "drtp",
        }
    }

    fn state_bytes(&self) -> usize {
        self.matrices.values().map(Tensor::size_bytes).sum()
    }

    fn direct_error(&self, e: Tensor) -> Result<Tensor> {
        match self.precision.error_bits {
            0 => Ok(e),
            bits => quantize_error(&e, bits),
        }
    }

    fn direct_projection(&self, model: &Model, block: usize) -> Option<&Tensor> {
        // DRTP projects the target, not the error.
        (self.kind != DirectKind::Drtp)
            .then(|| self.matrix(model, block))
            .flatten()
    }

    fn init(&mut self, model: &Model, params: &mut Params, seed: u64) -> Result<()> {
        let (hidden, last) = Self::blocks(model)?;
        // Projections take the dtype of the model's weights.
        let dt = super::blocks::block_dtype(model, params, &last)?;
        let mut rng = crate::Rng::seed_from_u64(self.feedback.seed.unwrap_or(seed) ^ 0x0d1e_c7fb);
        let init = self.feedback.initialiser()?;
        self.matrices.clear();
        for (i, b) in hidden.iter().enumerate() {
            let width = b.outputs;
            let k = self.key(i, width);
            if self.matrices.contains_key(&k) {
                continue;
            }
            // Drawn like a (width → outputs) weight, stored as outputs × width.
            let v = init.sample(width, model.outputs(), &mut rng);
            let m = Tensor::from_vec(&[model.outputs(), width], v)?
                .scale(self.feedback.scale)
                .to_dtype(dt);
            let m = quantize_feedback(&m, &self.precision.feedback_precision)?;
            self.matrices.insert(k, m);
        }
        Ok(())
    }

    fn backward(
        &mut self,
        model: &Model,
        params: &Params,
        trace: &mut Trace,
        batch: &Batch,
        e: Tensor,
    ) -> Result<Grads> {
        let (hidden, last) = Self::blocks(model)?;
        let mut grads = Grads::new();
        let layers = model.layers();
        let e = self.direct_error(e)?;
        // Blocks from the top down, so a checkpointed trace recomputes each segment once.
        trace.ensure(model, params, last.linear)?;
        layers[last.linear].param_grads(params, &trace.records[last.linear], &e, &mut grads)?;
        let signal = match self.kind {
            DirectKind::Dfa | DirectKind::Bfa => e.clone(),
            DirectKind::Drtp => {
                let (r, c) = e.dims2()?;
                batch.target.dense(r, c, e.dtype())?.scale(-1.0)
            }
        };
        for (i, b) in hidden.iter().enumerate().rev() {
            let m = self.matrices.get(&self.key(i, b.outputs)).ok_or_else(|| {
                Error::config("direct feedback", "no projection matrix; was init called?")
            })?;
            let mut d_act = signal.matmul(false, m, false)?;
            // A quantiser on the next layer's input clips this block's output: its
            // straight-through mask joins f′ (quantisation-aware training).
            let next = hidden.get(i + 1).map_or(last.linear, |n| n.linear);
            trace.ensure(model, params, next)?;
            if let Some(mask) = layers[next].input_mask(&trace.records[next])
                && mask.shape() == d_act.shape()
            {
                d_act = d_act.mul(mask)?;
            }
            let d_pre = match b.activation {
                Some(a) => {
                    trace.ensure(model, params, a)?;
                    let rec = &trace.records[a];
                    layers[a].param_grads(params, rec, &d_act, &mut grads)?;
                    let d = layers[a].input_grad(params, rec, &d_act)?;
                    trace.record_error(a, d_act);
                    d
                }
                None => d_act,
            };
            trace.ensure(model, params, b.linear)?;
            layers[b.linear].param_grads(params, &trace.records[b.linear], &d_pre, &mut grads)?;
            trace.record_error(b.linear, d_pre);
        }
        trace.record_error(last.linear, e);
        Ok(grads)
    }
}

//! Forward-Forward (Hinton 2022), supervised variant.
//!
//! The label is written into the first C input features (one-hot: 1 for the label, 0
//! for the others). Positive data carry the true label, negative data a wrong one —
//! drawn uniformly (`ff_negative = random`) or the wrong label the network currently
//! finds best (`hard`, one forward pass per label). Each hidden block (Linear → ReLU)
//! sees its input normalised to root-mean-square 1, x·√d/‖x‖ (as loeweX/Forward-Forward;
//! the paper's length normalisation at the scale the initialiser expects), so only the
//! direction of the layer below is passed on, and is trained by its own loss on its goodness G, the mean of hⱼ² over
//! the layer's units (`ff_goodness = mean`, as pytorch_forward_forward) or their sum
//! (`sum`, Hinton's σ(Σⱼyⱼ² − θ)):
//!
//! - `separate` (the paper's): softplus(θ − G⁺) + softplus(G⁻ − θ);
//! - `symmetric`: softplus(G⁻ − G⁺) (the pair's difference, as in SymBa).
//!
//! θ = `ff_threshold` for the mean and `ff_threshold` × width for the sum: the same
//! per-unit threshold, but the sum's logistic is width times sharper (at initialisation
//! G⁺ and G⁻ are both far below θ and only positives get a gradient). The gradient stays inside the layer: nothing flows to the
//! layer below. The model's output Linear layer is a softmax readout trained with the
//! training loss on the last hidden layer's normalised activity under a neutral label
//! (every label feature 1/C), detached from the FF layers.
//!
//! Prediction (`ff_predict`): `goodness` writes each label in turn and picks the one
//! with the largest goodness summed over the hidden layers (`skip_first = true` leaves
//! the first out when there are several, as the paper does after 60 epochs; early in
//! training the first layer ranks labels best, so the default keeps it); `readout` uses the
//! softmax readout, trained (and giving the train accuracy) only in this mode; with
//! `goodness` no train accuracy is reported.

use rand::{Rng as _, SeedableRng};

use super::blocks::{block_forward, block_output, block_param_grads, free_block, scratch_trace};
use super::{Batch, Rule, RuleSpec, StepOutput};
use crate::error::{Error, Result};
use crate::nn::{Block, Grads, Loss, Model, Params, Target};
use crate::settings::{Described, Range, Settings, parse, real};
use crate::tensor::{Tensor, Unary};

crate::settings_struct! {
    /// Forward-Forward's settings.
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default)]
    pub struct FfSettings: "ff" {
        /// Per-unit goodness threshold (θ; × width for the `sum` goodness, as
        /// loeweX/Forward-Forward's Σh² − width). The `symmetric` loss does not use it.
        pub threshold: f64 = 1.0,
        /// Goodness `mean` (of h² over units, as pytorch_forward_forward) or `sum`
        /// (Hinton 2022).
        pub goodness: String = "sum".into(),
        /// Layer loss `separate` (Hinton 2022) or `symmetric` (softplus(G⁻ − G⁺), Lee &
        /// Song 2023 "SymBa"; 91 % vs 82 % after one MNIST epoch on 784-500-500-10 with
        /// Adam 1e-3).
        pub loss: String = "symmetric".into(),
        /// Negative labels `random` or `hard`.
        pub negative: String = "random".into(),
        /// Prediction by `goodness` (every label tried) or `readout`.
        pub predict: String = "goodness".into(),
        /// Leave the first hidden layer out of the goodness predictor (the paper's
        /// choice, for 60 epochs). Off by default: after 3 MNIST epochs on the default
        /// model every layer's goodness scores 95.6 %, all but the first 94.7 %.
        pub skip_first: bool = false,
    }
}

impl Settings for FfSettings {
    /// The checks of [`ForwardForward::new`].
    fn validate(&self) -> Result<()> {
        ForwardForward::new(self).map(|_| ())
    }
}

pub(super) const FF: RuleSpec = RuleSpec {
    name: "ff",
    summary: "Forward-Forward: per-layer goodness of positive vs negative (wrong-label) data",
    paper: "Hinton 2022",
    settings: FfSettings::fields,
    build: |t| Ok(Box::new(ForwardForward::new(&parse("rule ff", t)?)?)),
    ..RuleSpec::DEFAULT
};

/// Forward-Forward training.
#[derive(Debug)]
pub struct ForwardForward {
    threshold: f64,
    symmetric: bool,
    hard_negatives: bool,
    predict_by_goodness: bool,
    skip_first: bool,
    mean_goodness: bool,
    keep_trace: bool,
    rng: crate::Rng,
}

impl ForwardForward {
    /// FF with the settings `cfg`.
    pub fn new(cfg: &FfSettings) -> Result<Self> {
        let symmetric = match cfg.loss.as_str() {
            "separate" => false,
            "symmetric" => true,
            o => return Err(Error::unknown("ff loss", o, &["separate", "symmetric"])),
        };
        let hard_negatives = match cfg.negative.as_str() {
            "random" => false,
            "hard" => true,
            o => return Err(Error::unknown("ff negative", o, &["random", "hard"])),
        };
        let predict_by_goodness = match cfg.predict.as_str() {
            "goodness" => true,
            "readout" => false,
            o => return Err(Error::unknown("ff predict", o, &["goodness", "readout"])),
        };
        let mean_goodness = match cfg.goodness.as_str() {
            "mean" => true,
            "sum" => false,
            o => return Err(Error::unknown("ff goodness", o, &["mean", "sum"])),
        };
        real("ff_threshold", cfg.threshold, Range::NonNegative)?;
        Ok(ForwardForward {
            threshold: cfg.threshold,
            symmetric,
            hard_negatives,
            predict_by_goodness,
            skip_first: cfg.skip_first,
            mean_goodness,
            keep_trace: true,
            rng: crate::Rng::seed_from_u64(0xff_0ff),
        })
    }

    fn blocks(model: &Model) -> Result<(Vec<Block>, Block)> {
        let (hidden, last) = model.block_walk("ff", crate::nn::BlockShape::LAYERED)?;
        if hidden.is_empty() {
            return Err(Error::config(
                "model",
                "ff trains hidden layers: use e.g. mlp:784-2000-2000-10",
            ));
        }
        if model.inputs() < model.outputs() {
            return Err(Error::config(
                "model",
                "ff writes the label into the first C inputs: needs at least as many inputs as classes",
            ));
        }
        Ok((hidden, last))
    }
}

/// `x` with its first C features replaced by `labels` one-hot (or all 1/C for None).
pub fn overlay(x: &Tensor, labels: Option<&[usize]>, classes: usize) -> Result<Tensor> {
    let (n, f) = x.dims2()?;
    if f < classes {
        return Err(Error::shape(
            "ff overlay",
            format!("{f} inputs < {classes} classes"),
        ));
    }
    let mut out = x.clone();
    for i in 0..n {
        for c in 0..classes {
            let v = match labels {
                Some(l) => (l[i] == c) as u8 as f64,
                None => 1.0 / classes as f64,
            };
            out.set(i * f + c, v)?;
        }
    }
    Ok(out)
}

/// Rows scaled to root-mean-square 1, x/√(mean x²) (length √d; ε = 1e-8 guards zero
/// rows); returns the divisors too.
///
/// Unit length instead makes every unit's input √d times smaller than the initialiser
/// assumes: the per-unit threshold is then reached only after the weights have grown
/// √d-fold, and meanwhile goodness saturates for every label alike. Measured on
/// `mlp:784-500-500-10`, Adam 1e-3, one MNIST epoch: unit length ranks the true label
/// 7th of 10 in layer 2 (0.6–2 % accuracy, below chance), RMS 1 scores 82 % (separate
/// loss) and 91 % (symmetric).
fn normalise(x: &Tensor) -> Result<(Tensor, Vec<f64>)> {
    let (_, f) = x.dims2()?;
    let d = f.max(1) as f64;
    let norms: Vec<f64> = x
        .row_sum_sq()?
        .into_iter()
        .map(|s| (s / d).sqrt() + 1e-8)
        .collect();
    let inv: Vec<f64> = norms.iter().map(|n| 1.0 / n).collect();
    Ok((x.scale_rows(&inv)?, norms))
}

/// Per-row goodness Σⱼhⱼ², divided by the width when `mean`.
fn goodness(h: &Tensor, mean: bool) -> Result<Vec<f64>> {
    let (_, f) = h.dims2()?;
    let d = if mean { f.max(1) as f64 } else { 1.0 };
    Ok(h.row_sum_sq()?.into_iter().map(|s| s / d).collect())
}

fn softplus(x: f64) -> f64 {
    Unary::Softplus.apply(x)
}

fn sigmoid(x: f64) -> f64 {
    Unary::Sigmoid.apply(x)
}

/// Outputs of every hidden block for input `x` (label already written in), each block
/// fed the normalised output of the one below.
fn hidden_outputs(
    model: &Model,
    params: &Params,
    hidden: &[Block],
    x: &Tensor,
) -> Result<Vec<Tensor>> {
    let mut h = normalise(x)?.0;
    let mut outs = Vec::with_capacity(hidden.len());
    let mut t = scratch_trace(model, x.dtype());
    for b in hidden {
        block_forward(model, params, b, &h, &mut t)?;
        let o = block_output(b, &t).clone();
        h = normalise(&o)?.0;
        outs.push(o);
    }
    Ok(outs)
}

/// Goodness summed over the scored layers (all but the first when there are several)
/// for every label: [n, C].
fn label_scores(
    model: &Model,
    params: &Params,
    hidden: &[Block],
    x: &Tensor,
    classes: usize,
    order: &[usize],
    (skip_first, mean): (bool, bool),
) -> Result<Tensor> {
    let (n, _) = x.dims2()?;
    let mut scores = vec![0.0; n * classes];
    let skip = usize::from(skip_first && hidden.len() > 1);
    for &c in order {
        let xc = overlay(x, Some(&vec![c; n]), classes)?;
        let outs = hidden_outputs(model, params, hidden, &xc)?;
        for o in &outs[skip..] {
            for (i, g) in goodness(o, mean)?.into_iter().enumerate() {
                scores[i * classes + c] += g;
            }
        }
    }
    Tensor::from_vec_f64(&[n, classes], scores)
}

impl ForwardForward {
    /// Goodness scores of every label for `x` with labels tried in `order` (a permutation
    /// of 0..C; the result does not depend on it).
    pub fn scores_in_order(
        &self,
        model: &Model,
        params: &Params,
        x: &Tensor,
        order: &[usize],
    ) -> Result<Tensor> {
        let (hidden, _) = Self::blocks(model)?;
        label_scores(
            model,
            params,
            &hidden,
            x,
            model.outputs(),
            order,
            (self.skip_first, self.mean_goodness),
        )
    }
}

impl Rule for ForwardForward {
    fn mixed_precision(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "ff"
    }

    fn init(&mut self, _model: &Model, _params: &mut Params, seed: u64) -> Result<()> {
        self.rng = crate::Rng::seed_from_u64(seed ^ 0xff_0ff);
        Ok(())
    }

    fn step(
        &mut self,
        model: &Model,
        params: &Params,
        batch: &Batch,
        loss: Loss,
    ) -> Result<StepOutput> {
        let (hidden, last) = Self::blocks(model)?;
        let classes = model.outputs();
        let Target::Classes(labels) = &batch.target else {
            return Err(Error::config("rule", "ff needs class labels"));
        };
        let n = labels.len();
        let nf = n.max(1) as f64;
        let wrong: Vec<usize> = if self.hard_negatives {
            let order: Vec<usize> = (0..classes).collect();
            label_scores(
                model,
                params,
                &hidden,
                &batch.x,
                classes,
                &order,
                (self.skip_first, self.mean_goodness),
            )?
            .argmax_rows_except(labels)?
        } else {
            labels
                .iter()
                .map(|&y| (y + 1 + self.rng.random_range(0..classes - 1)) % classes)
                .collect()
        };
        let mut grads = Grads::new();
        // Positive passes write the returned trace; negative ones a trace of their own.
        let mut trace = scratch_trace(model, batch.x.dtype());
        let mut neg_trace = scratch_trace(model, batch.x.dtype());
        let mut total = 0.0;
        let mut pos = normalise(&overlay(&batch.x, Some(labels), classes)?)?.0;
        let mut neg = normalise(&overlay(&batch.x, Some(&wrong), classes)?)?.0;
        for b in &hidden {
            let (theta, dg) = if self.mean_goodness {
                (self.threshold, 2.0 / b.outputs.max(1) as f64)
            } else {
                (self.threshold * b.outputs as f64, 2.0)
            };
            block_forward(model, params, b, &pos, &mut trace)?;
            block_forward(model, params, b, &neg, &mut neg_trace)?;
            let (hp, hn) = (
                block_output(b, &trace).clone(),
                block_output(b, &neg_trace).clone(),
            );
            let (gp, gn) = (
                goodness(&hp, self.mean_goodness)?,
                goodness(&hn, self.mean_goodness)?,
            );
            // dL/dG per sample (batch mean), then dG/dh = dg·h.
            let (mut cp, mut cn) = (vec![0.0; n], vec![0.0; n]);
            for i in 0..n {
                if self.symmetric {
                    total += softplus(gn[i] - gp[i]) / nf;
                    let s = sigmoid(gn[i] - gp[i]) / nf;
                    cp[i] = -s;
                    cn[i] = s;
                } else {
                    total += (softplus(theta - gp[i]) + softplus(gn[i] - theta)) / nf;
                    cp[i] = -sigmoid(theta - gp[i]) / nf;
                    cn[i] = sigmoid(gn[i] - theta) / nf;
                }
            }
            let scale_rows = |h: &Tensor, c: &[f64]| -> Result<Tensor> {
                h.scale_rows(&c.iter().map(|c| dg * c).collect::<Vec<_>>())
            };
            // W's gradient is the sum of both passes' (block_param_grads accumulates).
            block_param_grads(
                model,
                params,
                b,
                &mut trace,
                scale_rows(&hp, &cp)?,
                &mut grads,
            )?;
            block_param_grads(
                model,
                params,
                b,
                &mut neg_trace,
                scale_rows(&hn, &cn)?,
                &mut grads,
            )?;
            if !self.keep_trace {
                free_block(b, &mut trace);
                free_block(b, &mut neg_trace);
            }
            pos = normalise(&hp)?.0;
            neg = normalise(&hn)?.0;
        }
        // Softmax readout on the neutral-label pass, detached from the FF layers: trained
        // only when it predicts (a forward pass of every hidden layer more per step).
        let mut prediction = None;
        if !self.predict_by_goodness {
            let neutral = overlay(&batch.x, None, classes)?;
            let outs = hidden_outputs(model, params, &hidden, &neutral)?;
            let a = normalise(outs.last().expect("ff has hidden blocks"))?.0;
            block_forward(model, params, &last, &a, &mut trace)?;
            let z = block_output(&last, &trace).clone();
            let (_, dz) = loss.eval(&z, &batch.target)?;
            block_param_grads(model, params, &last, &mut trace, dz, &mut grads)?;
            prediction = Some(z);
        }
        Ok(StepOutput {
            grads,
            trace,
            loss: total,
            prediction,
        })
    }

    fn keep_trace(&mut self, keep: bool) {
        self.keep_trace = keep;
    }

    fn predict(&self, model: &Model, params: &Params, x: &Tensor) -> Result<Tensor> {
        let (hidden, last) = Self::blocks(model)?;
        let classes = model.outputs();
        if self.predict_by_goodness {
            let order: Vec<usize> = (0..classes).collect();
            return Ok(label_scores(
                model,
                params,
                &hidden,
                x,
                classes,
                &order,
                (self.skip_first, self.mean_goodness),
            )?
            .to_dtype(x.dtype()));
        }
        let neutral = overlay(x, None, classes)?;
        let outs = hidden_outputs(model, params, &hidden, &neutral)?;
        let a = normalise(outs.last().unwrap())?.0;
        let mut t = scratch_trace(model, x.dtype());
        block_forward(model, params, &last, &a, &mut t)?;
        Ok(block_output(&last, &t).clone())
    }
}

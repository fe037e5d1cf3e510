//! The classic single-layer rules the story of learning rules starts from. Each needs a
//! model that is one Linear layer (`linear:IN-OUT`); updates are returned in gradient
//! sign (the optimizer subtracts them), averaged over the batch, so `--optimizer sgd
//! --lr η` is the textbook rule with step η.
//!
//! - `perceptron` (Rosenblatt 1958), multi-class form: for a misclassified sample the
//!   true class's weights move toward x and the predicted class's away from it:
//!   ΔW = η(e_y − e_ŷ)xᵀ, Δb = η(e_y − e_ŷ); nothing for a correct sample.
//! - `lms` (Widrow & Hoff 1960, ADALINE): ΔW = η(t − Wx − b)xᵀ on the linear output
//!   with one-hot (or real) targets t: stochastic gradient of ½‖t − z‖².
//! - `hebbian` (Oja 1982; subspace form, Oja 1989): unsupervised,
//!   ΔW = η(y xᵀ − y yᵀ W) with y = Wx; rows converge to an orthonormal basis of the
//!   inputs' principal subspace (one output: the first principal component, unit norm).
//!   Biases are not trained.

use super::{Batch, Rule, RuleSpec, StepOutput};

pub(super) const PERCEPTRON: RuleSpec = RuleSpec {
    name: "perceptron",
    summary: "Rosenblatt's perceptron rule, multi-class, single Linear layer",
    paper: "Rosenblatt 1958",
    single_layer: true,
    build: |_| Ok(Box::new(Classic::new(ClassicKind::Perceptron))),
    ..RuleSpec::DEFAULT
};

pub(super) const LMS: RuleSpec = RuleSpec {
    name: "lms",
    summary: "least mean squares / ADALINE: Δw = η(t − z)x, single Linear layer",
    paper: "Widrow & Hoff 1960",
    single_layer: true,
    build: |_| Ok(Box::new(Classic::new(ClassicKind::Lms))),
    ..RuleSpec::DEFAULT
};

pub(super) const HEBBIAN: RuleSpec = RuleSpec {
    name: "hebbian",
    aliases: &["oja"],
    summary: "Oja's normalised Hebbian rule (subspace form), unsupervised, single Linear layer",
    paper: "Oja 1982",
    single_layer: true,
    build: |_| Ok(Box::new(Classic::new(ClassicKind::Hebbian))),
    ..RuleSpec::DEFAULT
};
use crate::error::{Error, Result};
use crate::nn::{Grads, LayerKind, Loss, Model, Params, Target};
use crate::tensor::Tensor;

/// Which classic rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassicKind {
    /// Rosenblatt's perceptron rule.
    Perceptron,
    /// Widrow–Hoff least mean squares.
    Lms,
    /// Oja's normalised Hebbian rule.
    Hebbian,
}

/// A classic single-layer rule.
#[derive(Debug, Clone)]
pub struct Classic {
    kind: ClassicKind,
}

impl Classic {
    /// The rule of `kind`.
    pub fn new(kind: ClassicKind) -> Self {
        Classic { kind }
    }

    fn layer_name(&self, model: &Model) -> Result<(String, bool)> {
        let layers = model.layers();
        match (layers.len(), layers.first().map(|l| l.kind())) {
            (1, Some(LayerKind::Linear { bias, .. })) => Ok((layers[0].name().to_string(), bias)),
            _ => Err(Error::config(
                "model",
                format!(
                    "{} is defined for single-layer models; use --model linear:IN-OUT",
                    self.name()
                ),
            )),
        }
    }
}

impl Rule for Classic {
    /// Oja's rule is left out: not checked under data-parallel training yet.
    fn splits_over_batch(&self) -> bool {
        !matches!(self.kind, ClassicKind::Hebbian)
    }

    fn name(&self) -> &'static str {
        match self.kind {
            ClassicKind::Perceptron => "perceptron",
            ClassicKind::Lms => "lms",
            ClassicKind::Hebbian => "hebbian",
        }
    }

    fn step(
        &mut self,
        model: &Model,
        params: &Params,
        batch: &Batch,
        loss: Loss,
    ) -> Result<StepOutput> {
        let (name, bias) = self.layer_name(model)?;
        let trace = model.forward_trace(params, &batch.x)?;
        let z = &trace.records[0].output;
        let (n, c) = z.dims2()?;
        let nf = n.max(1) as f64;
        // The loss is reported for comparison; these rules do not descend it.
        let value = loss.eval(z, &batch.target).map(|v| v.0).unwrap_or(f64::NAN);
        let x = &batch.x;
        // `d`: the per-sample signal s.t. the update is −(1/n) dᵀx (gradient sign).
        let d = match self.kind {
            ClassicKind::Perceptron => {
                let Target::Classes(labels) = &batch.target else {
                    return Err(Error::config("rule", "perceptron needs class labels"));
                };
                let pred = z.argmax_rows()?;
                let mut v = vec![0.0; n * c];
                for (i, (&y, &p)) in labels.iter().zip(&pred).enumerate() {
                    if y >= c {
                        return Err(Error::shape(
                            "perceptron",
                            format!("label {y} but only {c} outputs"),
                        ));
                    }
                    if p != y {
                        v[i * c + p] += 1.0;
                        v[i * c + y] -= 1.0;
                    }
                }
                Tensor::from_vec_f64(&[n, c], v)?.to_dtype(z.dtype())
            }
            ClassicKind::Lms => z.sub(&batch.target.dense(n, c, z.dtype())?)?,
            ClassicKind::Hebbian => {
                // −(y xᵀ − y yᵀ W): gradient-sign form of Oja's subspace rule.
                let w = params.get(&format!("{name}.weight"))?;
                let yy = z.matmul(true, z, false)?; // yᵀy summed over samples [c, c]
                let mut g = yy.matmul(false, w, false)?;
                g = g.sub(&z.matmul(true, x, false)?)?;
                g.scale_in_place(1.0 / nf);
                let mut grads = Grads::new();
                grads.insert(format!("{name}.weight"), g);
                return Ok(StepOutput {
                    grads,
                    trace,
                    loss: value,
                    prediction: None,
                });
            }
        };
        let mut grads = Grads::new();
        grads.insert(
            format!("{name}.weight"),
            d.matmul(true, x, false)?.scale(1.0 / nf),
        );
        if bias {
            grads.insert(format!("{name}.bias"), d.sum_rows()?.scale(1.0 / nf));
        }
        let mut trace = trace;
        trace.errors[0] = Some(d.scale(1.0 / nf));
        Ok(StepOutput {
            grads,
            trace,
            loss: value,
            prediction: None,
        })
    }
}

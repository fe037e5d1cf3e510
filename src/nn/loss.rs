//! Losses on the model's output (logits).

use serde::{Deserialize, Serialize};

pub use crate::data::Target;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Names accepted by [`Loss::parse`].
pub const LOSS_NAMES: &[&str] = &["cross-entropy", "mse", "bce"];

/// A loss on the model's raw output `z`. Each returns the batch mean and ∂L/∂z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loss {
    /// Softmax cross-entropy: L = mean_i [log Σⱼ e^{zᵢⱼ} − z_{i,yᵢ}]; ∂L/∂z = (softmax(z) − onehot)/n.
    CrossEntropy,
    /// Mean squared error over all elements: L = mean (z − t)²; ∂L/∂z = 2(z − t)/numel.
    Mse,
    /// Binary cross-entropy of sigmoid outputs: L = mean −[t ln σ(z) + (1−t) ln(1−σ(z))];
    /// ∂L/∂z = (σ(z) − t)/numel.
    Bce,
}

impl Loss {
    /// Parses a CLI name.
    pub fn parse(s: &str) -> Result<Loss> {
        match s {
            "cross-entropy" | "ce" | "xent" => Ok(Loss::CrossEntropy),
            "mse" => Ok(Loss::Mse),
            "bce" => Ok(Loss::Bce),
            _ => Err(Error::unknown("loss", s, LOSS_NAMES)),
        }
    }

    /// ∇²_z L · r: the loss Hessian with respect to the output applied to `r`
    /// (cross-entropy: per row (p ⊙ r − p(pᵀr))/n with p = softmax(z); MSE: 2r/numel;
    /// BCE: σ(z)(1 − σ(z)) ⊙ r/numel). The targets do not enter.
    pub fn hessian_vector(&self, out: &Tensor, r: &Tensor) -> Result<Tensor> {
        let (rows, c) = out.dims2()?;
        if r.shape() != out.shape() {
            return Err(Error::shape(
                "loss Hessian",
                format!("output {:?} vs direction {:?}", out.shape(), r.shape()),
            ));
        }
        let numel = out.len().max(1) as f64;
        let rv = r.to_vec_f64();
        let h: Vec<f64> = match self {
            Loss::CrossEntropy => {
                let p = out.softmax_rows()?.to_vec_f64();
                let mut h = vec![0.0; rows * c];
                for i in 0..rows {
                    let (pr, rr) = (&p[i * c..(i + 1) * c], &rv[i * c..(i + 1) * c]);
                    let dot: f64 = pr.iter().zip(rr).map(|(a, b)| a * b).sum();
                    for j in 0..c {
                        h[i * c + j] = pr[j] * (rr[j] - dot) / rows.max(1) as f64;
                    }
                }
                h
            }
            Loss::Mse => rv.iter().map(|x| 2.0 * x / numel).collect(),
            Loss::Bce => out
                .to_vec_f64()
                .iter()
                .zip(&rv)
                .map(|(z, x)| {
                    let s = crate::tensor::Unary::Sigmoid.apply(*z);
                    s * (1.0 - s) * x / numel
                })
                .collect(),
        };
        Ok(Tensor::from_vec_f64(out.shape(), h)?.to_dtype(out.dtype()))
    }

    /// `(mean loss, ∂L/∂out)`.
    pub fn eval(&self, out: &Tensor, target: &Target) -> Result<(f64, Tensor)> {
        let (r, c) = out.dims2()?;
        if target.len() != r {
            return Err(Error::shape(
                "loss",
                format!("{r} outputs vs {} targets", target.len()),
            ));
        }
        match (self, target) {
            (Loss::CrossEntropy, Target::Classes(labels)) => out.softmax_cross_entropy(labels),
            (Loss::CrossEntropy, Target::Values(_)) => Err(Error::config(
                "loss",
                "cross-entropy needs class labels; use mse for real-valued targets",
            )),
            (Loss::Mse, _) => {
                let t = target.dense(r, c, out.dtype())?;
                if t.shape() != out.shape() {
                    return Err(Error::shape(
                        "mse",
                        format!("output {:?} vs target {:?}", out.shape(), t.shape()),
                    ));
                }
                let diff = out.sub(&t)?;
                let n = out.len().max(1) as f64;
                Ok((diff.sum_sq() / n, diff.scale(2.0 / n)))
            }
            (Loss::Bce, _) => {
                let t = target.dense(r, c, out.dtype())?;
                out.sigmoid_bce(&t)
            }
        }
    }
}

//! Losses on the model's output (logits).

use serde::{Deserialize, Serialize};

pub use crate::data::Target;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Names accepted by [`Loss::parse`].
pub const LOSS_NAMES: &[&str] = &["cross-entropy", "mse", "sse", "bce"];

/// A loss on the model's raw output `z`. Each returns the batch mean and ∂L/∂z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loss {
    /// Softmax cross-entropy: L = mean_i [log Σⱼ e^{zᵢⱼ} − z_{i,yᵢ}]; ∂L/∂z = (softmax(z) − onehot)/n.
    CrossEntropy,
    /// Mean squared error over all elements: L = mean (z − t)²; ∂L/∂z = 2(z − t)/numel.
    Mse,
    /// Half the summed squared error per sample, averaged over samples (the output energy
    /// of predictive coding, Whittington & Bogacz 2017): L = (1/n) Σᵢ ½‖zᵢ − tᵢ‖²;
    /// ∂L/∂z = (z − t)/n.
    Sse,
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
            "sse" => Ok(Loss::Sse),
            "bce" => Ok(Loss::Bce),
            _ => Err(Error::unknown("loss", s, LOSS_NAMES)),
        }
    }

    /// ∇²_z L · r: the loss Hessian with respect to the output applied to `r`
    /// (cross-entropy: per row (p ⊙ r − p(pᵀr))/n with p = softmax(z); MSE: 2r/numel;
    /// SSE: r/n; BCE: σ(z)(1 − σ(z)) ⊙ r/numel). The targets do not enter.
    pub fn hessian_vector(&self, out: &Tensor, r: &Tensor) -> Result<Tensor> {
        let (rows, _) = out.dims2()?;
        if r.shape() != out.shape() {
            return Err(Error::shape(
                "loss Hessian",
                format!("output {:?} vs direction {:?}", out.shape(), r.shape()),
            ));
        }
        let numel = out.len().max(1) as f64;
        match self {
            Loss::CrossEntropy => {
                let p = out.softmax_rows()?;
                let pr = p.mul(r)?;
                let dot = pr.row_sums()?;
                let mut h = pr.sub(&p.scale_rows(&dot)?)?;
                h.scale_in_place(1.0 / rows.max(1) as f64);
                Ok(h)
            }
            Loss::Mse => Ok(r.scale(2.0 / numel)),
            Loss::Sse => Ok(r.scale(1.0 / rows.max(1) as f64)),
            Loss::Bce => {
                let s = out.unary(crate::tensor::Unary::Sigmoid);
                let ds = s.mul(&s.scale(-1.0).add_scalar(1.0))?;
                Ok(ds.mul(r)?.scale(1.0 / numel))
            }
        }
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
            (Loss::Mse | Loss::Sse, _) => {
                let name = if *self == Loss::Mse { "mse" } else { "sse" };
                let t = target.dense(r, c, out.dtype())?;
                if t.shape() != out.shape() {
                    return Err(Error::shape(
                        name,
                        format!("output {:?} vs target {:?}", out.shape(), t.shape()),
                    ));
                }
                let diff = out.sub(&t)?;
                if *self == Loss::Mse {
                    let n = out.len().max(1) as f64;
                    Ok((diff.sum_sq() / n, diff.scale(2.0 / n)))
                } else {
                    let n = r.max(1) as f64;
                    Ok((0.5 * diff.sum_sq() / n, diff.scale(1.0 / n)))
                }
            }
            (Loss::Bce, _) => {
                let t = target.dense(r, c, out.dtype())?;
                out.sigmoid_bce(&t)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_is_half_the_summed_square_per_sample() {
        let z = Tensor::from_vec_f64(&[2, 2], vec![1.0, 2.0, 0.0, -1.0]).unwrap();
        let t = Target::Values(Tensor::from_vec_f64(&[2, 2], vec![0.0, 0.0, 0.0, 1.0]).unwrap());
        // Rows' squared errors 5 and 4: ½(5 + 4)/2; MSE is their mean over 4 elements.
        let (l, g) = Loss::Sse.eval(&z, &t).unwrap();
        assert!((l - 2.25).abs() < 1e-12);
        assert_eq!(g.to_vec_f64(), vec![0.5, 1.0, 0.0, -1.0]);
        let (m, _) = Loss::Mse.eval(&z, &t).unwrap();
        assert!((m - 2.25).abs() < 1e-12);
        assert_eq!(Loss::parse("sse").unwrap(), Loss::Sse);
    }
}

//! What a step trains on: a minibatch of inputs and their targets.

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// What the output is compared with.
#[derive(Debug, Clone)]
pub enum Target {
    /// One class index per row.
    Classes(Vec<usize>),
    /// A target value per output (regression), same shape as the output.
    Values(Tensor),
}

impl Target {
    /// The rows `idx`.
    pub fn rows(&self, idx: &[usize]) -> Result<Target> {
        match self {
            Target::Classes(c) => idx
                .iter()
                .map(|&i| {
                    c.get(i).copied().ok_or_else(|| {
                        Error::shape("target rows", format!("row {i} of {}", c.len()))
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(Target::Classes),
            Target::Values(t) => t.gather_rows(idx).map(Target::Values),
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        match self {
            Target::Classes(c) => c.len(),
            Target::Values(t) => t.shape().first().copied().unwrap_or(0),
        }
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The target as a dense tensor shaped like `out` (one-hot for classes).
    pub fn dense(&self, rows: usize, cols: usize, dtype: DType) -> Result<Tensor> {
        match self {
            Target::Values(t) => Ok(t.to_dtype(dtype)),
            Target::Classes(c) => {
                let mut v = vec![0.0f64; rows * cols];
                for (i, &l) in c.iter().enumerate() {
                    if l >= cols {
                        return Err(Error::shape(
                            "one-hot",
                            format!("label {l} but only {cols} outputs"),
                        ));
                    }
                    v[i * cols + l] = 1.0;
                }
                Ok(Tensor::from_vec_f64(&[rows, cols], v)?.to_dtype(dtype))
            }
        }
    }
}

/// A minibatch: inputs `x[n × features]` and their targets.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Inputs, one row per sample.
    pub x: Tensor,
    /// Targets.
    pub target: Target,
}

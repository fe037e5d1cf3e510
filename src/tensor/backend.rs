//! The interface every storage implements: the kernels a [`super::Tensor`] dispatches
//! to. [`super::Tensor`] checks shapes and counts work, then calls one of these on its
//! storage; a backend (host memory today, a device later) implements them for its own
//! storage type and becomes one more arm of [`super::Storage`].
//!
//! Arguments are already validated (shapes agree, dimensions given); a backend reports
//! only what it alone can see, a pair of element types it cannot combine.

use super::{DType, Rho, Unary, Window};
use crate::error::Result;

/// A tensor's elements on one backend, with their element type.
pub trait BackendStorage: Sized + Clone {
    /// Element type.
    fn dtype(&self) -> DType;
    /// Number of elements.
    fn len(&self) -> usize;
    /// True when there are no elements.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `n` elements equal to `value`, of type `dtype`, on this storage's backend.
    fn full_like(&self, n: usize, value: f64, dtype: DType) -> Self;
    /// The elements converted to `dtype` (rounded for bf16 and f16).
    fn to_dtype(&self, dtype: DType) -> Self;
    /// The elements as f64, copied to host memory.
    fn to_vec_f64(&self) -> Vec<f64>;
    /// The elements as f32, copied to host memory.
    fn to_vec_f32(&self) -> Vec<f32>;
    /// Element `i`, `None` past the end.
    fn get(&self, i: usize) -> Option<f64>;
    /// Sets element `i`; false past the end.
    fn set(&mut self, i: usize, value: f64) -> bool;

    // ---- linear algebra -------------------------------------------------------------

    /// `op(self)[m×k] · op(rhs)[k×n]`; f32 output when a reduced type takes part.
    fn matmul(&self, ta: bool, rhs: &Self, tb: bool, mkn: (usize, usize, usize)) -> Result<Self>;
    /// `self += op(a) · op(b)`.
    fn matmul_acc(
        &mut self,
        a: &Self,
        ta: bool,
        b: &Self,
        tb: bool,
        mkn: (usize, usize, usize),
    ) -> Result<()>;

    // ---- layout ---------------------------------------------------------------------

    /// Parts of one type, one after the other.
    fn concat(parts: &[&Self]) -> Self;
    /// Rows of `[r, a]` and `[r, b]` side by side (in `self`'s type).
    fn concat_cols(&self, other: &Self, r: usize, a: usize, b: usize) -> Self;
    /// Columns `from..from + width` of `[r, c]`.
    fn columns(&self, r: usize, c: usize, from: usize, width: usize) -> Self;
    /// Transpose of `[r, c]`.
    fn transpose(&self, r: usize, c: usize) -> Self;
    /// Rows `idx` of a matrix with `c` columns.
    fn gather_rows(&self, c: usize, idx: &[usize]) -> Self;
    /// Rows of `[n·a, b]` read as `a × b` matrices and transposed.
    fn batch_transpose(&self, n: usize, a: usize, b: usize) -> Self;

    // ---- broadcasting and reductions ------------------------------------------------

    /// Adds the row vector `b` to every row (`c` columns).
    fn add_row(&mut self, b: &Self, c: usize) -> Result<()>;
    /// Per-row Σ x² (f64).
    fn row_sum_sq(&self, c: usize) -> Vec<f64>;
    /// Per-row Σ x (f64).
    fn row_sums(&self, c: usize) -> Vec<f64>;
    /// Rows centred and scaled to unit norm (floored), and the norms.
    fn center_normalize_rows(&self, n: usize, w: usize, floor: f64) -> (Self, Vec<f64>);
    /// Adjoint of `center_normalize_rows` at its output `self`.
    fn center_normalize_rows_backward(&self, norms: &[f64], g: &Self, n: usize, w: usize) -> Self;
    /// Rows standardised, and the per-row 1/√(var + eps) as f64.
    fn standardize_rows(&self, n: usize, f: usize, eps: f64) -> (Self, Self);
    /// Adjoint of `standardize_rows` at its output `self` with scales `inv`.
    fn standardize_rows_backward(&self, inv: &Self, g: &Self, n: usize, f: usize) -> Self;
    /// Row `i` times `s[i]`.
    fn scale_rows(&mut self, c: usize, s: &[f64]);
    /// Column sums of `[_, c]`.
    fn sum_rows(&self, c: usize) -> Self;
    /// Σ x.
    fn sum(&self) -> f64;
    /// Σ x².
    fn sum_sq(&self) -> f64;
    /// Σ xᵢyᵢ.
    fn dot(&self, other: &Self) -> Result<f64>;
    /// True when every element is finite.
    fn all_finite(&self) -> bool;
    /// Column of each row's largest element.
    fn argmax_rows(&self, c: usize) -> Vec<usize>;
    /// Column of each row's largest element other than `skip[i]`.
    fn argmax_rows_except(&self, c: usize, skip: &[usize]) -> Vec<usize>;
    /// 1 with probability `self[i]`, one uniform draw per element in order.
    fn bernoulli(&self, rng: &mut crate::Rng) -> Self;

    // ---- element-wise ---------------------------------------------------------------

    /// `f(self)`.
    fn unary(&self, f: Unary) -> Self;
    /// `d ⊙ f′(self)`.
    fn unary_backward(&self, f: Unary, d: &Self) -> Result<Self>;
    /// `d ⊙ f″(self) ⊙ r`.
    fn unary_second(&self, f: Unary, d: &Self, r: &Self) -> Self;
    /// `d ⊙ f′(x)` from the output `self` = f(x); `None` when f′ is not a function of it.
    fn unary_backward_from_output(&self, f: Unary, d: &Self) -> Result<Option<Self>>;
    /// PReLU with one slope per column.
    fn prelu(&self, slope: &Self, c: usize) -> Result<Self>;
    /// PReLU's `(dx, dslope)`.
    fn prelu_backward(&self, slope: &Self, d: &Self, c: usize) -> Result<(Self, Self)>;
    /// `self ⊙ other`.
    fn mul(&self, other: &Self) -> Result<Self>;
    /// `self ← s · self`.
    fn scale(&mut self, s: f64);
    /// `self ← a · self + b · x`.
    fn axpby(&mut self, a: f64, b: f64, x: &Self) -> Result<()>;
    /// `self ← a · self + b · x²`.
    fn axpby_sq(&mut self, a: f64, b: f64, x: &Self) -> Result<()>;
    /// `(m / c1) / (√max(v / c2, 0) + eps)`.
    fn adam_ratio(m: &Self, v: &Self, c1: f64, c2: f64, eps: f64) -> Result<Self>;
    /// Adam's moments and ratio in one pass (see `Tensor::adam_step`).
    fn adam_step(
        update: &mut Self,
        m: &mut Self,
        v: &mut Self,
        betas: (f64, f64),
        corrections: (f64, f64),
        eps: f64,
    ) -> Result<()>;
    /// `self ← max(self, x)`.
    fn max_in_place(&mut self, x: &Self) -> Result<()>;
    /// `self / (denom + c)`.
    fn div_shifted(&self, denom: &Self, c: f64) -> Result<Self>;
    /// `self + c`.
    fn add_scalar(&self, c: f64) -> Self;
    /// Clamp to `[−c, c]`.
    fn clamp_abs(&self, c: f64) -> Self;
    /// LSQ fake quantisation with one step per `group` consecutive elements: the
    /// quantised values, the straight-through mask and ∂q/∂s ([`crate::tensor::Tensor::fake_quantize`]).
    fn fake_quantize(&self, steps: &[f64], group: usize, qn: f64, qp: f64) -> (Self, Self, Self);

    // ---- losses ---------------------------------------------------------------------

    /// Softmax of each row of `[_, c]`.
    fn softmax_rows(&self, c: usize) -> Self;
    /// Mean softmax cross-entropy against `labels` and its gradient.
    fn softmax_xent(&self, c: usize, labels: &[usize]) -> (f64, Self);
    /// Mean binary cross-entropy of σ(self) against `t`, gradient `(σ − t)/n`.
    fn sigmoid_bce(&self, t: &Self, n: f64) -> Result<(f64, Self)>;

    // ---- windows (convolution and pooling) ------------------------------------------

    /// Receptive fields of channels `c0..c0 + cg` of `n` samples as rows.
    fn im2col(&self, n: usize, win: &Window, c0: usize, cg: usize) -> Result<Self>;
    /// Adds the adjoint of `im2col` of `cols` into `self`.
    fn col2im_acc(
        &mut self,
        cols: &Self,
        n: usize,
        win: &Window,
        c0: usize,
        cg: usize,
    ) -> Result<()>;
    /// Max pooling of `n` samples and each maximum's flat index.
    fn max_pool(&self, n: usize, win: &Window) -> Result<(Self, Vec<usize>)>;
    /// `self[idx[i]] += g[i]` (max pooling's adjoint; `usize::MAX` skips).
    fn scatter_add(&mut self, g: &Self, idx: &[usize]) -> Result<()>;
    /// Average pooling of `n` samples, or its adjoint.
    fn avg_pool(&self, n: usize, win: &Window, adjoint: bool) -> Result<Self>;

    // ---- fused kernels of the rules (`fused`) ---------------------------------------

    /// One relaxation step of an energy network's state (see `Tensor::relax_step`).
    #[allow(clippy::too_many_arguments)]
    fn relax_step(
        s: &Self,
        fwd: &Self,
        feedback: Option<&Self>,
        target: Option<&Self>,
        beta: f64,
        eps: f64,
        rho: Rho,
    ) -> Result<(Self, f64, f64)>;
    /// Per (sample, channel) sums (see `Tensor::channel_sums`).
    fn channel_sums(
        x: &Self,
        other: Option<&Self>,
        center: Option<&[f64]>,
        channels_positions: (usize, usize),
    ) -> Result<Vec<(f64, f64)>>;
    /// Per (sample, channel) affine map (see `Tensor::channel_affine`).
    fn channel_affine(
        x: &Self,
        other: Option<&Self>,
        coef: &[(f64, f64, f64)],
        channels_positions: (usize, usize),
    ) -> Result<Self>;
}

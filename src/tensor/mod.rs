//! The numeric core: an owned, row-major tensor and the kernels the layers call.
//!
//! A [`Tensor`] is a shape plus a [`Storage`]. Storage is cheap to clone (reference
//! counted, copied on write), so a [`crate::nn::Trace`] can keep a layer's input and the
//! previous layer's output without duplicating memory. Layers never index storage: they
//! call the methods here, which dispatch on the storage variant. Today every variant
//! lives in host memory (`f32` for training, `f64` for finite-difference checks, `bf16`
//! and `f16` for mixed precision, which compute in f32 and have their own matrix product,
//! `bf16_gemm`); a CUDA device becomes another variant and another arm in each kernel.
//!
//! ```
//! use futureprop::tensor::Tensor;
//! let a = Tensor::from_vec(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
//! let b = Tensor::from_vec(&[2, 1], vec![1.0, 1.0]).unwrap();
//! // [[1,2],[3,4]]·[1,1]ᵀ = [3, 7]
//! assert_eq!(a.matmul(false, &b, false).unwrap().to_vec_f32(), vec![3.0, 7.0]);
//! ```

mod bf16_gemm;
mod conv;
pub mod counters;
mod cpu;
mod gemm;
mod reduced;
mod unary;

use std::sync::Arc;

pub use conv::Window;
pub use unary::Unary;

use crate::error::{Error, Result};
use cpu::Elem;

/// Element type of a tensor. bf16 and f16 store half the bytes of f32 and compute in
/// f32 (see `reduced`): they hold activations and matrix-product inputs under mixed
/// precision, never parameters or optimizer state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F64,
    BF16,
    F16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 => 8,
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }

    /// The type sums over elements of this type are kept in: f32 for bf16 and f16
    /// (which compute in f32), the type itself otherwise.
    pub fn accumulator(self) -> DType {
        if self.is_reduced() { DType::F32 } else { self }
    }

    /// True for the 16-bit types.
    pub fn is_reduced(self) -> bool {
        matches!(self, DType::BF16 | DType::F16)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        })
    }
}

/// Where a tensor's elements live. Every variant is host memory today.
#[derive(Debug, Clone, PartialEq)]
pub enum Storage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    BF16(Vec<half::bf16>),
    F16(Vec<half::f16>),
}

/// An owned row-major tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Arc<Storage>,
}

// The dispatch macros: f32 and f64 run their own kernels; bf16 and f16 run the f32
// kernel on widened copies (`reduced`), rounding back where the output keeps the type.

macro_rules! map1 {
    ($s:expr, $v:ident => $e:expr) => {
        match $s {
            Storage::F32($v) => Storage::F32($e),
            Storage::F64($v) => Storage::F64($e),
            half => {
                let w = reduced::widen(half);
                let $v = &w;
                reduced::narrow(dtype_of(half), $e)
            }
        }
    };
}

macro_rules! each1 {
    ($s:expr, $v:ident => $e:expr) => {
        match $s {
            Storage::F32($v) => $e,
            Storage::F64($v) => $e,
            half => {
                let w = reduced::widen(half);
                let $v = &w;
                $e
            }
        }
    };
}

macro_rules! each1_mut {
    ($s:expr, $v:ident => $e:expr) => {
        match $s {
            Storage::F64($v) => $e,
            other => reduced::with_f32_mut(other, |$v| $e),
        }
    };
}

macro_rules! each2 {
    ($op:expr, $a:expr, $b:expr, ($x:ident, $y:ident) => $e:expr) => {
        match ($a, $b) {
            (Storage::F32($x), Storage::F32($y)) => Ok($e),
            (Storage::F64($x), Storage::F64($y)) => Ok($e),
            (l, r) => match (reduced::f32_view(l), reduced::f32_view(r)) {
                (Some(wx), Some(wy)) => {
                    let ($x, $y) = (&*wx, &*wy);
                    Ok($e)
                }
                _ => Err(Error::DType {
                    op: $op,
                    lhs: dtype_of(l),
                    rhs: dtype_of(r),
                }),
            },
        }
    };
}

macro_rules! each2_mut {
    ($op:expr, $a:expr, $b:expr, ($x:ident, $y:ident) => $e:expr) => {{
        let (l, r) = (dtype_of($a), dtype_of($b));
        match ($a, $b) {
            (Storage::F32($x), Storage::F32($y)) => Ok($e),
            (Storage::F64($x), Storage::F64($y)) => Ok($e),
            (s, o) => match reduced::f32_view(o) {
                Some(wy) if l != DType::F64 => {
                    let $y = &*wy;
                    Ok(reduced::with_f32_mut(s, |$x| $e))
                }
                _ => Err(Error::DType {
                    op: $op,
                    lhs: l,
                    rhs: r,
                }),
            },
        }
    }};
}

fn dtype_of(s: &Storage) -> DType {
    match s {
        Storage::F32(_) => DType::F32,
        Storage::F64(_) => DType::F64,
        Storage::BF16(_) => DType::BF16,
        Storage::F16(_) => DType::F16,
    }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    fn new(shape: Vec<usize>, data: Storage) -> Self {
        Tensor {
            shape,
            data: Arc::new(data),
        }
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize], dtype: DType) -> Self {
        Self::full(shape, 0.0, dtype)
    }

    /// A tensor filled with `value`.
    pub fn full(shape: &[usize], value: f64, dtype: DType) -> Self {
        let n = numel(shape);
        let data = match dtype {
            DType::F32 => Storage::F32(vec![value as f32; n]),
            DType::F64 => Storage::F64(vec![value; n]),
            DType::BF16 => Storage::BF16(vec![half::bf16::from_f64(value); n]),
            DType::F16 => Storage::F16(vec![half::f16::from_f64(value); n]),
        };
        Self::new(shape.to_vec(), data)
    }

    /// An `f32` tensor from row-major data.
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Result<Self> {
        Self::from_storage(shape, Storage::F32(data))
    }

    /// An `f64` tensor from row-major data.
    pub fn from_vec_f64(shape: &[usize], data: Vec<f64>) -> Result<Self> {
        Self::from_storage(shape, Storage::F64(data))
    }

    /// A tensor from storage, checking that its length matches the shape.
    pub fn from_storage(shape: &[usize], data: Storage) -> Result<Self> {
        let len = each1!(&data, v => v.len());
        if len != numel(shape) {
            return Err(Error::shape(
                "Tensor::from_storage",
                format!("shape {shape:?} needs {} elements, got {len}", numel(shape)),
            ));
        }
        Ok(Self::new(shape.to_vec(), data))
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        numel(&self.shape)
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the elements.
    pub fn size_bytes(&self) -> usize {
        self.len() * self.dtype().size()
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        dtype_of(&self.data)
    }

    /// The storage (for backends and serialisation).
    pub fn storage(&self) -> &Storage {
        &self.data
    }

    fn storage_mut(&mut self) -> &mut Storage {
        Arc::make_mut(&mut self.data)
    }

    /// The elements of an f32 tensor (for fused kernels outside this module).
    pub fn as_f32(&self) -> Result<&[f32]> {
        match &*self.data {
            Storage::F32(v) => Ok(v),
            other => Err(Error::DType {
                op: "as_f32",
                lhs: dtype_of(other),
                rhs: DType::F32,
            }),
        }
    }

    /// The elements of an f32 tensor, mutably (copied first if shared).
    pub fn as_f32_mut(&mut self) -> Result<&mut [f32]> {
        let dtype = self.dtype();
        match self.storage_mut() {
            Storage::F32(v) => Ok(v),
            _ => Err(Error::DType {
                op: "as_f32_mut",
                lhs: dtype,
                rhs: DType::F32,
            }),
        }
    }

    /// `(rows, cols)` of a 2-D tensor.
    pub fn dims2(&self) -> Result<(usize, usize)> {
        match self.shape.as_slice() {
            [r, c] => Ok((*r, *c)),
            s => Err(Error::shape(
                "dims2",
                format!("expected a 2-D tensor, got shape {s:?}"),
            )),
        }
    }

    /// The same elements with another shape of equal size.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.len() {
            return Err(Error::shape(
                "reshape",
                format!("cannot view {:?} as {shape:?}", self.shape),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            data: self.data.clone(),
        })
    }

    /// Converts to another element type.
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype() {
            return self.clone();
        }
        let data = match dtype {
            DType::F64 => Storage::F64(self.to_vec_f64()),
            d => reduced::narrow(d, self.to_vec_f32()),
        };
        Self::new(self.shape.clone(), data)
    }

    /// The same tensor when it is f32 or f64; a bf16 or f16 one widened to f32.
    pub fn widened(&self) -> Tensor {
        if self.dtype().is_reduced() {
            self.to_dtype(DType::F32)
        } else {
            self.clone()
        }
    }

    /// `f` of the f32-widened tensor, returned in this tensor's type: how a kernel with
    /// no reduced-precision path of its own computes in f32.
    fn via_f32(&self, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        Ok(f(&self.widened())?.to_dtype(self.dtype()))
    }

    /// Elements as `f32`, copied to host.
    pub fn to_vec_f32(&self) -> Vec<f32> {
        match &*self.data {
            Storage::F64(v) => v.iter().map(|&x| x as f32).collect(),
            other => reduced::widen(other),
        }
    }

    /// Elements as `f64`, copied to host.
    pub fn to_vec_f64(&self) -> Vec<f64> {
        each1!(&*self.data, v => v.iter().map(|x| x.f64()).collect())
    }

    /// Element `i` of the flattened tensor as `f64`.
    pub fn get(&self, i: usize) -> Result<f64> {
        each1!(&*self.data, v => v.get(i).map(|x| x.f64())).ok_or_else(|| {
            Error::shape(
                "get",
                format!("index {i} out of range for {:?}", self.shape),
            )
        })
    }

    /// Sets element `i` of the flattened tensor.
    pub fn set(&mut self, i: usize, value: f64) -> Result<()> {
        let shape = self.shape.clone();
        let ok = each1_mut!(self.storage_mut(), v => match v.get_mut(i) {
            Some(x) => { *x = Elem::of(value); true }
            None => false,
        });
        if ok {
            Ok(())
        } else {
            Err(Error::shape(
                "set",
                format!("index {i} out of range for {shape:?}"),
            ))
        }
    }

    fn same_shape(&self, op: &str, other: &Tensor) -> Result<()> {
        if self.shape != other.shape {
            return Err(Error::shape(
                op,
                format!("{:?} vs {:?}", self.shape, other.shape),
            ));
        }
        Ok(())
    }

    // ---- linear algebra -------------------------------------------------------------

    /// `op(self) · op(rhs)` for 2-D tensors, `op` transposing when its flag is set.
    pub fn matmul(&self, ta: bool, rhs: &Tensor, tb: bool) -> Result<Tensor> {
        let (m, k, n) = matmul_dims(self, ta, rhs, tb)?;
        count_gemm(m, k, n, self.dtype(), false);
        let data = match (&*self.data, &*rhs.data) {
            (Storage::F32(x), Storage::F32(y)) => {
                Storage::F32(gemm::gemm_new(m, n, k, x, ta, y, tb))
            }
            (Storage::F64(x), Storage::F64(y)) => {
                Storage::F64(gemm::gemm_new(m, n, k, x, ta, y, tb))
            }
            (l, r) => {
                let mut c = Vec::with_capacity(m * n);
                // SAFETY: f32 has no invalid bit patterns; mixed_gemm writes all m·n
                // elements (it overwrites, `accumulate` false) or the vector is dropped
                // unread on the error below.
                #[allow(clippy::uninit_vec)]
                unsafe {
                    c.set_len(m * n)
                };
                if !reduced::mixed_gemm((m, k, n), l, ta, r, tb, &mut c, false) {
                    return Err(Error::DType {
                        op: "matmul",
                        lhs: dtype_of(l),
                        rhs: dtype_of(r),
                    });
                }
                Storage::F32(c)
            }
        };
        Ok(Self::new(vec![m, n], data))
    }

    /// `self += op(a) · op(b)`.
    pub fn matmul_acc(&mut self, a: &Tensor, ta: bool, b: &Tensor, tb: bool) -> Result<()> {
        let (m, k, n) = matmul_dims(a, ta, b, tb)?;
        if self.shape != [m, n] {
            return Err(Error::shape(
                "matmul_acc",
                format!("output {:?} but product is [{m}, {n}]", self.shape),
            ));
        }
        count_gemm(m, k, n, a.dtype(), true);
        self.matmul_acc_impl(a, ta, b, tb, (m, k, n))
    }

    fn matmul_acc_impl(
        &mut self,
        a: &Tensor,
        ta: bool,
        b: &Tensor,
        tb: bool,
        (m, k, n): (usize, usize, usize),
    ) -> Result<()> {
        let (ad, bd) = (a.data.clone(), b.data.clone());
        let err = || Error::DType {
            op: "matmul",
            lhs: dtype_of(&ad),
            rhs: dtype_of(&bd),
        };
        match (self.storage_mut(), &*ad, &*bd) {
            (Storage::F32(c), Storage::F32(x), Storage::F32(y)) => {
                gemm::gemm(m, n, k, x, ta, y, tb, c, true)
            }
            (Storage::F64(c), Storage::F64(x), Storage::F64(y)) => {
                gemm::gemm(m, n, k, x, ta, y, tb, c, true)
            }
            (Storage::F64(_), _, _) => return Err(err()),
            // f32 or a reduced type (summed in f32, rounded back) += a product with a
            // reduced operand.
            (c, x, y) => {
                let ok = reduced::with_f32_mut(c, |c| match (x, y) {
                    (Storage::F32(x), Storage::F32(y)) => {
                        gemm::gemm(m, n, k, x, ta, y, tb, c, true);
                        true
                    }
                    _ => reduced::mixed_gemm((m, k, n), x, ta, y, tb, c, true),
                });
                if !ok {
                    return Err(err());
                }
            }
        }
        Ok(())
    }

    /// 2-D tensors of one width and type stacked row-wise: `[Σ rᵢ, c]`.
    pub fn concat_rows(parts: &[Tensor]) -> Result<Tensor> {
        let first = parts
            .first()
            .ok_or_else(|| Error::shape("concat_rows", "no tensors"))?;
        let (_, c) = first.dims2()?;
        let mut rows = 0;
        for t in parts {
            let (r, tc) = t.dims2()?;
            if tc != c || t.dtype() != first.dtype() {
                return Err(Error::shape(
                    "concat_rows",
                    format!(
                        "{:?} {} after {:?} {}",
                        t.shape,
                        t.dtype(),
                        first.shape,
                        first.dtype()
                    ),
                ));
            }
            rows += r;
        }
        let data = match first.dtype() {
            DType::F64 => Storage::F64(parts.iter().flat_map(Tensor::to_vec_f64).collect()),
            d => reduced::narrow(d, parts.iter().flat_map(Tensor::to_vec_f32).collect()),
        };
        Tensor::from_storage(&[rows, c], data)
    }

    /// `[self | other]`: the columns of two 2-D tensors with the same rows, side by side
    /// (in `self`'s type).
    pub fn concat_cols(&self, other: &Tensor) -> Result<Tensor> {
        let ((r, a), (r2, b)) = (self.dims2()?, other.dims2()?);
        if r != r2 {
            return Err(Error::shape(
                "concat_cols",
                format!("{:?} beside {:?}", self.shape, other.shape),
            ));
        }
        let join = |x: &[f64], y: &[f64]| -> Vec<f64> {
            let mut v = Vec::with_capacity(r * (a + b));
            for i in 0..r {
                v.extend_from_slice(&x[i * a..(i + 1) * a]);
                v.extend_from_slice(&y[i * b..(i + 1) * b]);
            }
            v
        };
        let v = join(&self.to_vec_f64(), &other.to_vec_f64());
        Ok(Tensor::from_vec_f64(&[r, a + b], v)?.to_dtype(self.dtype()))
    }

    /// Columns `from..from + width` of a 2-D tensor.
    pub fn columns(&self, from: usize, width: usize) -> Result<Tensor> {
        let (r, c) = self.dims2()?;
        if from + width > c {
            return Err(Error::shape(
                "columns",
                format!("columns {from}..{} of {c}", from + width),
            ));
        }
        let data = map1!(&*self.data, v => v
            .chunks(c.max(1))
            .take(r)
            .flat_map(|row| row[from..from + width].iter().copied())
            .collect());
        Tensor::from_storage(&[r, width], data)
    }

    /// Transpose of a 2-D tensor.
    pub fn transpose(&self) -> Result<Tensor> {
        let (r, c) = self.dims2()?;
        let data = map1!(&*self.data, v => cpu::transpose(v, r, c));
        Ok(Self::new(vec![c, r], data))
    }

    // ---- broadcasting and reductions ------------------------------------------------

    /// Adds a row vector `b[cols]` to every row of a 2-D tensor.
    pub fn add_row(&mut self, b: &Tensor) -> Result<()> {
        let (_, c) = self.dims2()?;
        if b.len() != c {
            return Err(Error::shape(
                "add_row",
                format!("row of {c} vs bias of {}", b.len()),
            ));
        }
        count_elementwise(self.len(), 2, self.dtype());
        let bd = b.data.clone();
        each2_mut!("add_row", self.storage_mut(), &*bd, (x, y) => cpu::add_row(x, y))
    }

    /// Per-row sums of squares of a 2-D tensor: `out[i] = Σⱼ self[i, j]²` (accumulated
    /// in f64).
    pub fn row_sum_sq(&self) -> Result<Vec<f64>> {
        let (_, c) = self.dims2()?;
        count_elementwise(self.len(), 1, self.dtype());
        Ok(each1!(&*self.data, v => v
            .chunks(c.max(1))
            .map(|row| row.iter().map(|a| { let a = a.f64(); a * a }).sum())
            .collect()))
    }

    /// Per-row sums of a 2-D tensor: `out[i] = Σⱼ self[i, j]` (accumulated in f64).
    pub fn row_sums(&self) -> Result<Vec<f64>> {
        let (_, c) = self.dims2()?;
        count_elementwise(self.len(), 1, self.dtype());
        Ok(each1!(&*self.data, v => v
            .chunks(c.max(1))
            .map(|row| row.iter().map(|a| a.f64()).sum())
            .collect()))
    }

    /// Each row of a 2-D tensor centred and scaled to unit norm, z = (x − x̄)/max(‖x −
    /// x̄‖, floor), and the norms (for [`Tensor::center_normalize_rows_backward`]);
    /// computed in f64.
    pub fn center_normalize_rows(&self, floor: f64) -> Result<(Tensor, Vec<f64>)> {
        let (n, w) = self.dims2()?;
        let v = self.to_vec_f64();
        let mut out = vec![0.0; n * w];
        let mut norms = vec![0.0; n];
        for i in 0..n {
            let row = &v[i * w..(i + 1) * w];
            let mean = row.iter().sum::<f64>() / w.max(1) as f64;
            let norm = row
                .iter()
                .map(|a| (a - mean).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(floor);
            norms[i] = norm;
            for j in 0..w {
                out[i * w + j] = (row[j] - mean) / norm;
            }
        }
        Ok((
            Tensor::from_vec_f64(&[n, w], out)?.to_dtype(self.dtype()),
            norms,
        ))
    }

    /// The adjoint of [`Tensor::center_normalize_rows`] at its output `self` (= z, with
    /// its `norms`) applied to `g` = ∂L/∂z: ∂L/∂x = C((g − z·(gᵀz))/‖·‖) per row, C the
    /// row centring.
    pub fn center_normalize_rows_backward(&self, norms: &[f64], g: &Tensor) -> Result<Tensor> {
        let (n, w) = self.dims2()?;
        self.same_shape("center_normalize_rows_backward", g)?;
        if norms.len() != n {
            return Err(Error::shape(
                "center_normalize_rows_backward",
                format!("{n} rows vs {} norms", norms.len()),
            ));
        }
        let (gv, zv) = (g.to_vec_f64(), self.to_vec_f64());
        let mut out = vec![0.0; n * w];
        for i in 0..n {
            let (gi, zi) = (&gv[i * w..(i + 1) * w], &zv[i * w..(i + 1) * w]);
            let dot: f64 = gi.iter().zip(zi).map(|(a, b)| a * b).sum();
            let gz: Vec<f64> = (0..w).map(|j| (gi[j] - zi[j] * dot) / norms[i]).collect();
            let mean = gz.iter().sum::<f64>() / w.max(1) as f64;
            for j in 0..w {
                out[i * w + j] = gz[j] - mean;
            }
        }
        Ok(Tensor::from_vec_f64(&[n, w], out)?.to_dtype(self.dtype()))
    }

    /// Each row of a 2-D tensor standardised, x̂ = (x − x̄)·s with s = 1/√(var + eps) (the
    /// population variance), and the per-row s as an f64 tensor (layer normalisation; in
    /// f64).
    pub fn standardize_rows(&self, eps: f64) -> Result<(Tensor, Tensor)> {
        let (n, f) = self.dims2()?;
        let v = self.to_vec_f64();
        let (mut xh, mut inv) = (vec![0.0; n * f], vec![0.0; n]);
        for i in 0..n {
            let row = &v[i * f..(i + 1) * f];
            let m = row.iter().sum::<f64>() / f.max(1) as f64;
            let var = row.iter().map(|a| (a - m).powi(2)).sum::<f64>() / f.max(1) as f64;
            inv[i] = 1.0 / (var + eps).sqrt();
            for j in 0..f {
                xh[i * f + j] = (row[j] - m) * inv[i];
            }
        }
        Ok((
            Tensor::from_vec_f64(&[n, f], xh)?.to_dtype(self.dtype()),
            Tensor::from_vec_f64(&[n], inv)?,
        ))
    }

    /// The adjoint of [`Tensor::standardize_rows`] at its output `self` = x̂ with scales
    /// `inv`, applied to `g` = ∂L/∂x̂: ∂L/∂x = (g − ḡ − x̂·mean(g ⊙ x̂))·s per row, in `g`'s
    /// accumulator type.
    pub fn standardize_rows_backward(&self, inv: &Tensor, g: &Tensor) -> Result<Tensor> {
        let (n, f) = self.dims2()?;
        self.same_shape("standardize_rows_backward", g)?;
        if inv.len() != n {
            return Err(Error::shape(
                "standardize_rows_backward",
                format!("{n} rows vs {} scales", inv.len()),
            ));
        }
        let (xh, s, gv) = (self.to_vec_f64(), inv.to_vec_f64(), g.to_vec_f64());
        let mut dx = vec![0.0; n * f];
        for i in 0..n {
            let r = i * f..(i + 1) * f;
            let (gi, xi) = (&gv[r.clone()], &xh[r]);
            let mg = gi.iter().sum::<f64>() / f.max(1) as f64;
            let mgx = gi.iter().zip(xi).map(|(a, b)| a * b).sum::<f64>() / f.max(1) as f64;
            for j in 0..f {
                dx[i * f + j] = (gi[j] - mg - xi[j] * mgx) * s[i];
            }
        }
        Ok(Tensor::from_vec_f64(&[n, f], dx)?.to_dtype(g.dtype().accumulator()))
    }

    /// Each row `i` of a 2-D tensor times `s[i]`.
    pub fn scale_rows(&self, s: &[f64]) -> Result<Tensor> {
        let (r, c) = self.dims2()?;
        if s.len() != r {
            return Err(Error::shape(
                "scale_rows",
                format!("{r} rows vs {} scales", s.len()),
            ));
        }
        count_elementwise(self.len(), 2, self.dtype());
        let mut out = self.clone();
        each1_mut!(out.storage_mut(), v => cpu::scale_rows(v, c, s));
        Ok(out)
    }

    /// Column sums of a 2-D tensor: `out[j] = Σᵢ self[i, j]`.
    pub fn sum_rows(&self) -> Result<Tensor> {
        let (_, c) = self.dims2()?;
        let data = map1!(&*self.data, v => cpu::sum_rows(v, c));
        Ok(Self::new(vec![c], data))
    }

    /// Σ of all elements.
    pub fn sum(&self) -> f64 {
        each1!(&*self.data, v => v.iter().map(|x| x.f64()).sum())
    }

    /// Σ x² of all elements.
    pub fn sum_sq(&self) -> f64 {
        each1!(&*self.data, v => cpu::sum_sq(v))
    }

    /// ‖x‖₂.
    pub fn norm(&self) -> f64 {
        self.sum_sq().sqrt()
    }

    /// Σ xᵢyᵢ.
    pub fn dot(&self, other: &Tensor) -> Result<f64> {
        self.same_shape("dot", other)?;
        each2!("dot", &*self.data, &*other.data, (x, y) => cpu::dot(x, y))
    }

    /// True when every element is finite.
    pub fn all_finite(&self) -> bool {
        each1!(&*self.data, v => v.iter().all(|x| x.f64().is_finite()))
    }

    /// Index of the largest element of each row of a 2-D tensor.
    pub fn argmax_rows(&self) -> Result<Vec<usize>> {
        let (_, c) = self.dims2()?;
        if c == 0 {
            return Err(Error::shape("argmax_rows", "rows have no columns"));
        }
        Ok(each1!(&*self.data, v => cpu::argmax_rows(v, c)))
    }

    /// For each row `i` of a 2-D tensor, the column of its largest element other than
    /// `skip[i]` (ties: the last; 0 when the row has no other column).
    pub fn argmax_rows_except(&self, skip: &[usize]) -> Result<Vec<usize>> {
        let (r, c) = self.dims2()?;
        if skip.len() != r {
            return Err(Error::shape(
                "argmax_rows_except",
                format!("{r} rows vs {} columns to skip", skip.len()),
            ));
        }
        let v = self.to_vec_f64();
        Ok((0..r)
            .map(|i| {
                (0..c)
                    .filter(|&j| j != skip[i])
                    .max_by(|&a, &b| v[i * c + a].total_cmp(&v[i * c + b]))
                    .unwrap_or(0)
            })
            .collect())
    }

    /// Draws, element-wise, 1 with probability `self[i]` and 0 otherwise (one uniform
    /// draw per element, in order).
    pub fn bernoulli(&self, rng: &mut crate::Rng) -> Tensor {
        use rand::Rng as _;
        let v: Vec<f64> = self
            .to_vec_f64()
            .iter()
            .map(|&q| (rng.random::<f64>() < q) as u8 as f64)
            .collect();
        Tensor::new(self.shape.clone(), Storage::F64(v)).to_dtype(self.dtype())
    }

    /// Rows `idx` of a 2-D tensor, in that order.
    pub fn gather_rows(&self, idx: &[usize]) -> Result<Tensor> {
        let (r, c) = self.dims2()?;
        if let Some(&bad) = idx.iter().find(|&&i| i >= r) {
            return Err(Error::shape("gather_rows", format!("row {bad} of {r}")));
        }
        let data = map1!(&*self.data, v => cpu::gather_rows(v, c, idx));
        Ok(Self::new(vec![idx.len(), c], data))
    }

    // ---- element-wise ---------------------------------------------------------------

    /// `f(self)` element-wise.
    pub fn unary(&self, f: Unary) -> Tensor {
        count_elementwise(self.len(), 2, self.dtype());
        let data = map1!(&*self.data, v => cpu::unary(v, f));
        Self::new(self.shape.clone(), data)
    }

    /// `d_out ⊙ f'(self)`: the input error of an element-wise map whose input was `self`.
    pub fn unary_backward(&self, f: Unary, d_out: &Tensor) -> Result<Tensor> {
        self.same_shape("unary_backward", d_out)?;
        count_elementwise(self.len(), 3, self.dtype());
        let data = each2!("unary_backward", &*self.data, &*d_out.data, (x, d) => {
            Elem::wrap(cpu::unary_backward(x, d, f))
        })?;
        Ok(Self::new(self.shape.clone(), data))
    }

    /// `d_out ⊙ f''(self) ⊙ r`: the curvature term of an element-wise map's R-backward.
    pub fn unary_second(&self, f: Unary, d_out: &Tensor, r: &Tensor) -> Result<Tensor> {
        self.same_shape("unary_second", d_out)?;
        self.same_shape("unary_second", r)?;
        count_elementwise(self.len(), 4, self.dtype());
        let (x, d, r) = (self.to_vec_f64(), d_out.to_vec_f64(), r.to_vec_f64());
        let v: Vec<f64> = x
            .iter()
            .zip(&d)
            .zip(&r)
            .map(|((x, d), r)| f.second_derivative(*x) * d * r)
            .collect();
        Ok(Tensor::from_vec_f64(&self.shape, v)?.to_dtype(self.dtype()))
    }

    /// `d_out ⊙ f′(x)` computed from the output `self` = f(x), for maps whose derivative
    /// is a function of the output (tanh, sigmoid); `None` for the others.
    pub fn unary_backward_from_output(&self, f: Unary, d_out: &Tensor) -> Result<Option<Tensor>> {
        self.same_shape("unary_backward_from_output", d_out)?;
        let data = each2!("unary_backward_from_output", &*self.data, &*d_out.data, (y, d) => {
            cpu::unary_backward_from_output(y, d, f).map(Elem::wrap)
        })?;
        if data.is_some() {
            count_elementwise(self.len(), 3, self.dtype());
        }
        Ok(data.map(|d| Self::new(self.shape.clone(), d)))
    }

    /// PReLU with one slope per column: `y = x` for x > 0, `a_j·x` otherwise.
    pub fn prelu(&self, slope: &Tensor) -> Result<Tensor> {
        let (_, c) = self.dims2()?;
        if slope.len() != c {
            return Err(Error::shape(
                "prelu",
                format!("{c} columns vs {} slopes", slope.len()),
            ));
        }
        let data = match (&*self.data, &*slope.data) {
            (Storage::F32(x), Storage::F32(a)) => Storage::F32(cpu::prelu(x, a, c)),
            (Storage::F64(x), Storage::F64(a)) => Storage::F64(cpu::prelu(x, a, c)),
            (l, r) => {
                return Err(Error::DType {
                    op: "prelu",
                    lhs: dtype_of(l),
                    rhs: dtype_of(r),
                });
            }
        };
        Ok(Self::new(self.shape.clone(), data))
    }

    /// PReLU backward: returns `(dx, dslope)` given the input `self` and `d_out`.
    pub fn prelu_backward(&self, slope: &Tensor, d_out: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, c) = self.dims2()?;
        self.same_shape("prelu_backward", d_out)?;
        if slope.len() != c {
            return Err(Error::shape(
                "prelu_backward",
                format!("{c} columns vs {} slopes", slope.len()),
            ));
        }
        let (dx, da) = match (&*self.data, &*slope.data, &*d_out.data) {
            (Storage::F32(x), Storage::F32(a), Storage::F32(d)) => {
                let (dx, da) = cpu::prelu_backward(x, a, d, c);
                (Storage::F32(dx), Storage::F32(da))
            }
            (Storage::F64(x), Storage::F64(a), Storage::F64(d)) => {
                let (dx, da) = cpu::prelu_backward(x, a, d, c);
                (Storage::F64(dx), Storage::F64(da))
            }
            (l, _, r) => {
                return Err(Error::DType {
                    op: "prelu_backward",
                    lhs: dtype_of(l),
                    rhs: dtype_of(r),
                });
            }
        };
        Ok((Self::new(self.shape.clone(), dx), Self::new(vec![c], da)))
    }

    /// `self ⊙ other`.
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        self.same_shape("mul", other)?;
        count_elementwise(self.len(), 3, self.dtype());
        let data = each2!("mul", &*self.data, &*other.data, (x, y) => Elem::wrap(x.iter().zip(y).map(|(a, b)| *a * *b).collect::<Vec<_>>()))?;
        Ok(Self::new(self.shape.clone(), data))
    }

    /// `self + other`.
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        let mut out = self.clone();
        out.axpy(1.0, other)?;
        Ok(out)
    }

    /// `self − other`.
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        let mut out = self.clone();
        out.axpy(-1.0, other)?;
        Ok(out)
    }

    /// `s · self`.
    pub fn scale(&self, s: f64) -> Tensor {
        let mut out = self.clone();
        out.scale_in_place(s);
        out
    }

    /// `self ← s · self`.
    pub fn scale_in_place(&mut self, s: f64) {
        each1_mut!(self.storage_mut(), v => cpu::scale(v, s))
    }

    /// `self ← self + a · x`.
    pub fn axpy(&mut self, a: f64, x: &Tensor) -> Result<()> {
        self.axpby(1.0, a, x)
    }

    /// `self ← a · self + b · x`.
    pub fn axpby(&mut self, a: f64, b: f64, x: &Tensor) -> Result<()> {
        self.same_shape("axpby", x)?;
        count_elementwise(self.len(), 3, self.dtype());
        let xd = x.data.clone();
        each2_mut!("axpby", self.storage_mut(), &*xd, (s, y) => cpu::axpby(s, a, b, y))
    }

    /// `self ← a · self + b · x²` (element-wise square; second-moment averages).
    pub fn axpby_sq(&mut self, a: f64, b: f64, x: &Tensor) -> Result<()> {
        self.same_shape("axpby_sq", x)?;
        count_elementwise(self.len(), 3, self.dtype());
        let xd = x.data.clone();
        each2_mut!("axpby_sq", self.storage_mut(), &*xd, (s, y) => cpu::axpby_sq(s, a, b, y))
    }

    /// `(m / c1) / (sqrt(max(v / c2, 0)) + eps)`: Adam's bias-corrected direction.
    pub fn adam_ratio(m: &Tensor, v: &Tensor, c1: f64, c2: f64, eps: f64) -> Result<Tensor> {
        m.same_shape("adam_ratio", v)?;
        count_elementwise(m.len(), 3, m.dtype());
        let data = each2!("adam_ratio", &*m.data, &*v.data, (x, y) => Elem::wrap(cpu::adam_ratio(x, y, c1, c2, eps)))?;
        Ok(Self::new(m.shape.clone(), data))
    }

    /// Adam's moment update and ratio in one pass: `m`, `v` move toward the gradient in
    /// `update` (β₁, β₂), then `update` becomes (m/c₁)/(√(v/c₂) + ε).
    pub fn adam_step(
        update: &mut Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        (beta1, beta2): (f64, f64),
        (c1, c2): (f64, f64),
        eps: f64,
    ) -> Result<()> {
        update.same_shape("adam_step", m)?;
        update.same_shape("adam_step", v)?;
        count_elementwise(update.len(), 6, update.dtype());
        let (ud, md) = (update.dtype(), m.dtype());
        match (update.storage_mut(), m.storage_mut(), v.storage_mut()) {
            (Storage::F32(u), Storage::F32(mm), Storage::F32(vv)) => {
                cpu::adam_step(u, mm, vv, beta1, beta2, c1, c2, eps)
            }
            (Storage::F64(u), Storage::F64(mm), Storage::F64(vv)) => {
                cpu::adam_step(u, mm, vv, beta1, beta2, c1, c2, eps)
            }
            _ => {
                return Err(Error::DType {
                    op: "adam_step",
                    lhs: ud,
                    rhs: md,
                });
            }
        }
        Ok(())
    }

    /// `self ← max(self, x)` element-wise.
    pub fn max_in_place(&mut self, x: &Tensor) -> Result<()> {
        self.same_shape("max_in_place", x)?;
        count_elementwise(self.len(), 3, self.dtype());
        let xd = x.data.clone();
        each2_mut!("max_in_place", self.storage_mut(), &*xd, (s, y) => {
            for (a, b) in s.iter_mut().zip(y) {
                if *b > *a {
                    *a = *b;
                }
            }
        })
    }

    /// `self / (denom + c)` element-wise.
    pub fn div_shifted(&self, denom: &Tensor, c: f64) -> Result<Tensor> {
        self.same_shape("div_shifted", denom)?;
        count_elementwise(self.len(), 3, self.dtype());
        let data = each2!("div_shifted", &*self.data, &*denom.data, (x, d) => {
            Elem::wrap(cpu::div_shifted(x, d, c))
        })?;
        Ok(Self::new(self.shape.clone(), data))
    }

    /// `self + c` element-wise.
    pub fn add_scalar(&self, c: f64) -> Tensor {
        count_elementwise(self.len(), 2, self.dtype());
        let data = map1!(&*self.data, v => v.iter().map(|x| Elem::of(x.f64() + c)).collect());
        Self::new(self.shape.clone(), data)
    }

    /// Element-wise clamp to `[-c, c]`.
    pub fn clamp_abs(&self, c: f64) -> Tensor {
        let data =
            map1!(&*self.data, v => v.iter().map(|x| Elem::of(x.f64().clamp(-c, c))).collect());
        Self::new(self.shape.clone(), data)
    }

    // ---- losses ---------------------------------------------------------------------

    /// Softmax over each row of a 2-D tensor.
    pub fn softmax_rows(&self) -> Result<Tensor> {
        let (_, c) = self.dims2()?;
        let data = map1!(&*self.data, v => cpu::softmax_rows(v, c));
        Ok(Self::new(self.shape.clone(), data))
    }

    /// Mean softmax cross-entropy of logits `self[n×c]` against class labels, and its
    /// gradient `(softmax − onehot)/n`. Returns `(mean loss, gradient)`.
    pub fn softmax_cross_entropy(&self, labels: &[usize]) -> Result<(f64, Tensor)> {
        let (r, c) = self.dims2()?;
        if labels.len() != r {
            return Err(Error::shape(
                "softmax_cross_entropy",
                format!("{r} rows vs {} labels", labels.len()),
            ));
        }
        if let Some(&bad) = labels.iter().find(|&&l| l >= c) {
            return Err(Error::shape(
                "softmax_cross_entropy",
                format!("label {bad} but only {c} classes"),
            ));
        }
        let (loss, grad) = match &*self.data {
            Storage::F32(v) => {
                let (l, g) = cpu::softmax_xent(v, c, labels);
                (l, Storage::F32(g))
            }
            Storage::F64(v) => {
                let (l, g) = cpu::softmax_xent(v, c, labels);
                (l, Storage::F64(g))
            }
            reduced => {
                let (l, g) = cpu::softmax_xent(&reduced::widen(reduced), c, labels);
                (l, Storage::F32(g))
            }
        };
        Ok((loss, Self::new(self.shape.clone(), grad)))
    }

    /// Mean binary cross-entropy of `σ(self)` against targets in [0, 1], with gradient
    /// `(σ(x) − t)/numel` with respect to the logits.
    pub fn sigmoid_bce(&self, target: &Tensor) -> Result<(f64, Tensor)> {
        self.same_shape("sigmoid_bce", target)?;
        let n = self.len().max(1) as f64;
        let (loss, grad) = each2!("sigmoid_bce", &*self.data, &*target.data, (x, t) => {
            let (l, g) = cpu::sigmoid_bce(x, t, n);
            (l, Elem::wrap(g))
        })?;
        Ok((loss, Self::new(self.shape.clone(), grad)))
    }
}

fn elem_bytes(d: DType) -> u64 {
    d.size() as u64
}

fn count_gemm(m: usize, k: usize, n: usize, d: DType, accumulate: bool) {
    let c = (m * n) as u64 * if accumulate { 2 } else { 1 };
    counters::add(
        2 * (m * n * k) as u64,
        elem_bytes(d) * ((m * k + k * n) as u64 + c),
    );
}

/// Counts an element-wise kernel over `n` elements touching `operands` arrays.
fn count_elementwise(n: usize, operands: u64, d: DType) {
    counters::add(n as u64, elem_bytes(d) * operands * n as u64);
}

fn matmul_dims(a: &Tensor, ta: bool, b: &Tensor, tb: bool) -> Result<(usize, usize, usize)> {
    let (ar, ac) = a.dims2()?;
    let (br, bc) = b.dims2()?;
    let (m, k) = if ta { (ac, ar) } else { (ar, ac) };
    let (k2, n) = if tb { (bc, br) } else { (br, bc) };
    if k != k2 {
        return Err(Error::shape(
            "matmul",
            format!(
                "inner dimensions differ: {}{:?} · {}{:?}",
                if ta { "ᵀ" } else { "" },
                a.shape,
                if tb { "ᵀ" } else { "" },
                b.shape
            ),
        ));
    }
    Ok((m, k, n))
}

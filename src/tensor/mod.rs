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

// Backend dispatch: the body is written once against `BackendStorage` and instantiated
// for each backend's storage; operands on different backends are an error (once there
// is more than one).
macro_rules! on_backend {
    ($s:expr, $v:ident => $e:expr) => {
        match $s {
            $crate::tensor::Storage::Host($v) => $e,
        }
    };
    ($a:expr, $b:expr, ($x:ident, $y:ident) => $e:expr) => {
        match ($a, $b) {
            ($crate::tensor::Storage::Host($x), $crate::tensor::Storage::Host($y)) => $e,
        }
    };
    ($a:expr, $b:expr, $c:expr, ($x:ident, $y:ident, $z:ident) => $e:expr) => {
        match ($a, $b, $c) {
            (
                $crate::tensor::Storage::Host($x),
                $crate::tensor::Storage::Host($y),
                $crate::tensor::Storage::Host($z),
            ) => $e,
        }
    };
}

// Dispatch with optional operands (`Option<&Storage>`), which must be on the backend of
// the first.
macro_rules! on_backend_opt {
    ($a:expr, $o:expr, ($x:ident, $y:ident) => $e:expr) => {
        match $a {
            $crate::tensor::Storage::Host($x) => {
                let $y = $o.map(|s| match s {
                    $crate::tensor::Storage::Host(h) => h,
                });
                $e
            }
        }
    };
    ($a:expr, $b:expr, $o1:expr, $o2:expr, ($x:ident, $y:ident, $p:ident, $q:ident) => $e:expr) => {
        match ($a, $b) {
            ($crate::tensor::Storage::Host($x), $crate::tensor::Storage::Host($y)) => {
                let $p = $o1.map(|s| match s {
                    $crate::tensor::Storage::Host(h) => h,
                });
                let $q = $o2.map(|s| match s {
                    $crate::tensor::Storage::Host(h) => h,
                });
                $e
            }
        }
    };
}

mod backend;
mod bf16_gemm;
mod conv;
pub mod counters;
mod cpu;
mod fastmath;
mod fused;
mod gemm;
mod host;
pub mod int8_gemm;
mod reduced;
mod select;
pub mod spiking;
mod unary;

use std::sync::Arc;

pub use conv::Window;
pub use fused::Rho;
pub use gemm::serial;
pub use unary::Unary;

pub use backend::BackendStorage;
pub use host::{F32Buffer, HostStorage, SharedF32};

use crate::error::{Error, Result};

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

/// Where a tensor's elements live: one variant per backend, each holding that
/// backend's storage (which carries the element type). Host memory is the only backend
/// today; a device becomes another variant, an arm in [`on_backend!`] and an
/// implementation of [`BackendStorage`].
#[derive(Debug, Clone, PartialEq)]
pub enum Storage {
    Host(HostStorage),
}

impl From<HostStorage> for Storage {
    fn from(h: HostStorage) -> Self {
        Storage::Host(h)
    }
}

/// An owned row-major tensor: a shape over a [`Storage`].
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Arc<Storage>,
}

impl Storage {
    fn dtype(&self) -> DType {
        on_backend!(self, s => s.dtype())
    }

    fn len(&self) -> usize {
        on_backend!(self, s => s.len())
    }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    fn new(shape: Vec<usize>, data: impl Into<Storage>) -> Self {
        Tensor {
            shape,
            data: Arc::new(data.into()),
        }
    }

    /// The same shape over other elements.
    fn like(&self, data: impl Into<Storage>) -> Self {
        Self::new(self.shape.clone(), data)
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize], dtype: DType) -> Self {
        Self::full(shape, 0.0, dtype)
    }

    /// A host tensor filled with `value`.
    pub fn full(shape: &[usize], value: f64, dtype: DType) -> Self {
        Self::new(
            shape.to_vec(),
            HostStorage::full(numel(shape), value, dtype),
        )
    }

    /// A tensor filled with `value` on this tensor's backend.
    pub fn full_like(&self, shape: &[usize], value: f64, dtype: DType) -> Self {
        let n = numel(shape);
        Self::new(
            shape.to_vec(),
            on_backend!(&*self.data, s => Storage::from(s.full_like(n, value, dtype))),
        )
    }

    /// An `f32` tensor from row-major data.
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Result<Self> {
        Self::from_storage(shape, HostStorage::F32(data.into()))
    }

    /// An `f32` tensor that reads `data` in place (memory another owner keeps alive, e.g.
    /// a numpy array); the first write to it copies the elements into memory of its own.
    pub fn from_shared_f32(shape: &[usize], data: SharedF32) -> Result<Self> {
        Self::from_storage(shape, HostStorage::F32(F32Buffer::Shared(data)))
    }

    /// True when the elements are read in place from another owner's memory
    /// ([`Tensor::from_shared_f32`]) and have not been copied yet.
    pub fn is_shared(&self) -> bool {
        matches!(&*self.data, Storage::Host(HostStorage::F32(b)) if b.is_shared())
    }

    /// `scale`·the elements of `parts`, in order, written into `buf` (resized to fit;
    /// what a communicator sends). [`Tensor::unpack_f32`] undoes it.
    pub fn pack_f32(parts: &[&Tensor], scale: f32, buf: &mut Vec<f32>) -> Result<()> {
        buf.clear();
        buf.reserve(parts.iter().map(|t| t.len()).sum());
        for t in parts {
            let t = t.to_dtype(DType::F32);
            buf.extend(t.as_f32()?.iter().map(|&v| v * scale));
        }
        Ok(())
    }

    /// Replaces the elements of `parts`, in order, with `buf`'s (from
    /// [`Tensor::pack_f32`]; a part of another type rounds them to it).
    pub fn unpack_f32(buf: &[f32], parts: &mut [&mut Tensor]) -> Result<()> {
        let total: usize = parts.iter().map(|t| t.len()).sum();
        if total != buf.len() {
            return Err(Error::shape(
                "unpack_f32",
                format!("{} elements for tensors of {total}", buf.len()),
            ));
        }
        let mut at = 0;
        for t in parts.iter_mut() {
            let part = &buf[at..at + t.len()];
            at += t.len();
            // In place when the tensor owns its f32 memory alone; else new storage (the
            // old one is shared, and a copy-on-write would copy twice).
            if let Some(Storage::Host(HostStorage::F32(F32Buffer::Owned(v)))) =
                Arc::get_mut(&mut t.data)
            {
                v.copy_from_slice(part);
                continue;
            }
            **t = Tensor::from_vec(t.shape(), part.to_vec())?.to_dtype(t.dtype());
        }
        Ok(())
    }

    /// An `f64` tensor from row-major data.
    pub fn from_vec_f64(shape: &[usize], data: Vec<f64>) -> Result<Self> {
        Self::from_storage(shape, HostStorage::F64(data))
    }

    /// A tensor from storage, checking that its length matches the shape.
    pub fn from_storage(shape: &[usize], data: impl Into<Storage>) -> Result<Self> {
        let data = data.into();
        let len = data.len();
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
        self.data.dtype()
    }

    /// The storage (for backends).
    pub fn storage(&self) -> &Storage {
        &self.data
    }

    /// The elements in host memory, with their type (a copy for a device; for
    /// serialisation).
    pub fn to_host(&self) -> HostStorage {
        match &*self.data {
            Storage::Host(h) => h.clone(),
        }
    }

    fn storage_mut(&mut self) -> &mut Storage {
        Arc::make_mut(&mut self.data)
    }

    /// The elements of an f32 host tensor (for fused kernels outside this module).
    pub fn as_f32(&self) -> Result<&[f32]> {
        match &*self.data {
            Storage::Host(HostStorage::F32(v)) => Ok(v),
            other => Err(Error::DType {
                op: "as_f32",
                lhs: other.dtype(),
                rhs: DType::F32,
            }),
        }
    }

    /// The elements of an f32 host tensor, mutably (copied first if shared).
    pub fn as_f32_mut(&mut self) -> Result<&mut [f32]> {
        let dtype = self.dtype();
        match self.storage_mut() {
            Storage::Host(HostStorage::F32(v)) => Ok(v),
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
        self.like(on_backend!(&*self.data, s => Storage::from(s.to_dtype(dtype))))
    }

    /// The same tensor when it is f32 or f64; a bf16 or f16 one widened to f32.
    pub fn widened(&self) -> Tensor {
        if self.dtype().is_reduced() {
            self.to_dtype(DType::F32)
        } else {
            self.clone()
        }
    }

    /// Elements as `f32`, copied to host.
    pub fn to_vec_f32(&self) -> Vec<f32> {
        on_backend!(&*self.data, s => s.to_vec_f32())
    }

    /// Elements as `f64`, copied to host.
    pub fn to_vec_f64(&self) -> Vec<f64> {
        on_backend!(&*self.data, s => s.to_vec_f64())
    }

    /// Element `i` of the flattened tensor as `f64`.
    pub fn get(&self, i: usize) -> Result<f64> {
        on_backend!(&*self.data, s => s.get(i)).ok_or_else(|| {
            Error::shape(
                "get",
                format!("index {i} out of range for {:?}", self.shape),
            )
        })
    }

    /// Sets element `i` of the flattened tensor.
    pub fn set(&mut self, i: usize, value: f64) -> Result<()> {
        let shape = self.shape.clone();
        if on_backend!(self.storage_mut(), s => s.set(i, value)) {
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
        let data = on_backend!(&*self.data, &*rhs.data, (x, y) => Storage::from(x.matmul(ta, y, tb, (m, k, n))?));
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
        let (ad, bd) = (a.data.clone(), b.data.clone());
        on_backend!(self.storage_mut(), &*ad, &*bd, (c, x, y) => c.matmul_acc(x, ta, y, tb, (m, k, n)))
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
        let host: Vec<&HostStorage> = parts
            .iter()
            .map(|t| on_backend!(&*t.data, s => s))
            .collect();
        Tensor::from_storage(&[rows, c], HostStorage::concat(&host))
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
        let data = on_backend!(&*self.data, &*other.data, (x, y) => Storage::from(x.concat_cols(y, r, a, b)));
        Ok(Self::new(vec![r, a + b], data))
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
        let data = on_backend!(&*self.data, s => Storage::from(s.columns(r, c, from, width)));
        Tensor::from_storage(&[r, width], data)
    }

    /// Transpose of a 2-D tensor.
    pub fn transpose(&self) -> Result<Tensor> {
        let (r, c) = self.dims2()?;
        let data = on_backend!(&*self.data, s => Storage::from(s.transpose(r, c)));
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
        let xd = b.data.clone();
        on_backend!(self.storage_mut(), &*xd, (s, y) => s.add_row(y, c))
    }

    /// Per-row sums of squares of a 2-D tensor: `out[i] = Σⱼ self[i, j]²` (accumulated
    /// in f64).
    pub fn row_sum_sq(&self) -> Result<Vec<f64>> {
        let (_, c) = self.dims2()?;
        count_elementwise(self.len(), 1, self.dtype());
        Ok(on_backend!(&*self.data, s => s.row_sum_sq(c)))
    }

    /// Per-row sums of a 2-D tensor: `out[i] = Σⱼ self[i, j]` (accumulated in f64).
    pub fn row_sums(&self) -> Result<Vec<f64>> {
        let (_, c) = self.dims2()?;
        count_elementwise(self.len(), 1, self.dtype());
        Ok(on_backend!(&*self.data, s => s.row_sums(c)))
    }

    /// Each row of a 2-D tensor centred and scaled to unit norm, z = (x − x̄)/max(‖x −
    /// x̄‖, floor), and the norms (for [`Tensor::center_normalize_rows_backward`]);
    /// computed in f64.
    pub fn center_normalize_rows(&self, floor: f64) -> Result<(Tensor, Vec<f64>)> {
        let (n, w) = self.dims2()?;
        let (z, norms) = on_backend!(&*self.data, s => {
            let (z, norms) = s.center_normalize_rows(n, w, floor);
            (Storage::from(z), norms)
        });
        Ok((self.like(z), norms))
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
        let data = on_backend!(&*self.data, &*g.data, (z, g) => Storage::from(z.center_normalize_rows_backward(norms, g, n, w)));
        Ok(self.like(data))
    }

    /// Each row of a 2-D tensor standardised, x̂ = (x − x̄)·s with s = 1/√(var + eps) (the
    /// population variance), and the per-row s as an f64 tensor (layer normalisation; in
    /// f64).
    pub fn standardize_rows(&self, eps: f64) -> Result<(Tensor, Tensor)> {
        let (n, f) = self.dims2()?;
        let (xh, inv) = on_backend!(&*self.data, s => {
            let (xh, inv) = s.standardize_rows(n, f, eps);
            (Storage::from(xh), Storage::from(inv))
        });
        Ok((self.like(xh), Self::new(vec![n], inv)))
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
        let data = on_backend!(&*self.data, &*inv.data, &*g.data, (x, s, g) => Storage::from(x.standardize_rows_backward(s, g, n, f)));
        Ok(self.like(data))
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
        on_backend!(out.storage_mut(), v => v.scale_rows(c, s));
        Ok(out)
    }

    /// Column sums of a 2-D tensor: `out[j] = Σᵢ self[i, j]`.
    pub fn sum_rows(&self) -> Result<Tensor> {
        let (_, c) = self.dims2()?;
        let data = on_backend!(&*self.data, s => Storage::from(s.sum_rows(c)));
        Ok(Self::new(vec![c], data))
    }

    /// Σ of all elements.
    pub fn sum(&self) -> f64 {
        on_backend!(&*self.data, s => s.sum())
    }

    /// Σ x² of all elements.
    pub fn sum_sq(&self) -> f64 {
        on_backend!(&*self.data, s => s.sum_sq())
    }

    /// ‖x‖₂.
    pub fn norm(&self) -> f64 {
        self.sum_sq().sqrt()
    }

    /// Σ xᵢyᵢ.
    pub fn dot(&self, other: &Tensor) -> Result<f64> {
        self.same_shape("dot", other)?;
        on_backend!(&*self.data, &*other.data, (x, y) => x.dot(y))
    }

    /// True when every element is finite.
    pub fn all_finite(&self) -> bool {
        on_backend!(&*self.data, s => s.all_finite())
    }

    /// Index of the largest element of each row of a 2-D tensor.
    pub fn argmax_rows(&self) -> Result<Vec<usize>> {
        let (_, c) = self.dims2()?;
        if c == 0 {
            return Err(Error::shape("argmax_rows", "rows have no columns"));
        }
        Ok(on_backend!(&*self.data, s => s.argmax_rows(c)))
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
        Ok(on_backend!(&*self.data, s => s.argmax_rows_except(c, skip)))
    }

    /// Draws, element-wise, 1 with probability `self[i]` and 0 otherwise (one uniform
    /// draw per element, in order).
    pub fn bernoulli(&self, rng: &mut crate::Rng) -> Tensor {
        self.like(on_backend!(&*self.data, s => Storage::from(s.bernoulli(rng))))
    }

    /// Rows `idx` of a 2-D tensor, in that order.
    pub fn gather_rows(&self, idx: &[usize]) -> Result<Tensor> {
        let (r, c) = self.dims2()?;
        if let Some(&bad) = idx.iter().find(|&&i| i >= r) {
            return Err(Error::shape("gather_rows", format!("row {bad} of {r}")));
        }
        let data = on_backend!(&*self.data, s => Storage::from(s.gather_rows(c, idx)));
        Ok(Self::new(vec![idx.len(), c], data))
    }

    // ---- element-wise ---------------------------------------------------------------

    /// `f(self)` element-wise.
    pub fn unary(&self, f: Unary) -> Tensor {
        count_elementwise(self.len(), 2, self.dtype());
        self.like(on_backend!(&*self.data, s => Storage::from(s.unary(f))))
    }

    /// `d_out ⊙ f'(self)`: the input error of an element-wise map whose input was `self`.
    pub fn unary_backward(&self, f: Unary, d_out: &Tensor) -> Result<Tensor> {
        self.same_shape("unary_backward", d_out)?;
        count_elementwise(self.len(), 3, self.dtype());
        let data = on_backend!(&*self.data, &*d_out.data, (x, d) => Storage::from(x.unary_backward(f, d)?));
        Ok(self.like(data))
    }

    /// `d_out ⊙ f''(self) ⊙ r`: the curvature term of an element-wise map's R-backward.
    pub fn unary_second(&self, f: Unary, d_out: &Tensor, r: &Tensor) -> Result<Tensor> {
        self.same_shape("unary_second", d_out)?;
        self.same_shape("unary_second", r)?;
        count_elementwise(self.len(), 4, self.dtype());
        let data = on_backend!(&*self.data, &*d_out.data, &*r.data, (x, d, r) => Storage::from(x.unary_second(f, d, r)));
        Ok(self.like(data))
    }

    /// `d_out ⊙ f′(x)` computed from the output `self` = f(x), for maps whose derivative
    /// is a function of the output (tanh, sigmoid); `None` for the others.
    pub fn unary_backward_from_output(&self, f: Unary, d_out: &Tensor) -> Result<Option<Tensor>> {
        self.same_shape("unary_backward_from_output", d_out)?;
        let data = on_backend!(&*self.data, &*d_out.data, (y, d) => y.unary_backward_from_output(f, d)?.map(Storage::from));
        if data.is_some() {
            count_elementwise(self.len(), 3, self.dtype());
        }
        Ok(data.map(|d| self.like(d)))
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
        let data = on_backend!(&*self.data, &*slope.data, (x, a) => Storage::from(x.prelu(a, c)?));
        Ok(self.like(data))
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
        let (dx, da) = on_backend!(&*self.data, &*slope.data, &*d_out.data, (x, a, d) => {
            let (dx, da) = x.prelu_backward(a, d, c)?;
            (Storage::from(dx), Storage::from(da))
        });
        Ok((self.like(dx), Self::new(vec![c], da)))
    }

    /// `self ⊙ other`.
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        self.same_shape("mul", other)?;
        count_elementwise(self.len(), 3, self.dtype());
        let data = on_backend!(&*self.data, &*other.data, (x, y) => Storage::from(x.mul(y)?));
        Ok(self.like(data))
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
        on_backend!(self.storage_mut(), v => v.scale(s))
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
        on_backend!(self.storage_mut(), &*xd, (s, y) => s.axpby(a, b, y))
    }

    /// `self ← a · self + b · x²` (element-wise square; second-moment averages).
    pub fn axpby_sq(&mut self, a: f64, b: f64, x: &Tensor) -> Result<()> {
        self.same_shape("axpby_sq", x)?;
        count_elementwise(self.len(), 3, self.dtype());
        let xd = x.data.clone();
        on_backend!(self.storage_mut(), &*xd, (s, y) => s.axpby_sq(a, b, y))
    }

    /// `(m / c1) / (sqrt(max(v / c2, 0)) + eps)`: Adam's bias-corrected direction.
    pub fn adam_ratio(m: &Tensor, v: &Tensor, c1: f64, c2: f64, eps: f64) -> Result<Tensor> {
        m.same_shape("adam_ratio", v)?;
        count_elementwise(m.len(), 3, m.dtype());
        let data = on_backend!(&*m.data, &*v.data, (x, y) => Storage::from(BackendStorage::adam_ratio(x, y, c1, c2, eps)?));
        Ok(m.like(data))
    }

    /// Adam's moment update and ratio in one pass: `m`, `v` move toward the gradient in
    /// `update` (β₁, β₂), then `update` becomes (m/c₁)/(√(v/c₂) + ε).
    pub fn adam_step(
        update: &mut Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        betas: (f64, f64),
        corrections: (f64, f64),
        eps: f64,
    ) -> Result<()> {
        update.same_shape("adam_step", m)?;
        update.same_shape("adam_step", v)?;
        count_elementwise(update.len(), 6, update.dtype());
        on_backend!(update.storage_mut(), m.storage_mut(), v.storage_mut(), (u, mm, vv) => {
            BackendStorage::adam_step(u, mm, vv, betas, corrections, eps)
        })
    }

    /// `self ← max(self, x)` element-wise.
    pub fn max_in_place(&mut self, x: &Tensor) -> Result<()> {
        self.same_shape("max_in_place", x)?;
        count_elementwise(self.len(), 3, self.dtype());
        let xd = x.data.clone();
        on_backend!(self.storage_mut(), &*xd, (s, y) => s.max_in_place(y))
    }

    /// `self / (denom + c)` element-wise.
    pub fn div_shifted(&self, denom: &Tensor, c: f64) -> Result<Tensor> {
        self.same_shape("div_shifted", denom)?;
        count_elementwise(self.len(), 3, self.dtype());
        let data =
            on_backend!(&*self.data, &*denom.data, (x, d) => Storage::from(x.div_shifted(d, c)?));
        Ok(self.like(data))
    }

    /// `self + c` element-wise.
    pub fn add_scalar(&self, c: f64) -> Tensor {
        count_elementwise(self.len(), 2, self.dtype());
        self.like(on_backend!(&*self.data, s => Storage::from(s.add_scalar(c))))
    }

    /// Element-wise clamp to `[-c, c]`.
    pub fn clamp_abs(&self, c: f64) -> Tensor {
        self.like(on_backend!(&*self.data, s => Storage::from(s.clamp_abs(c))))
    }

    /// The integers of [`Tensor::fake_quantize`]: clamp(round(v/s), −`qn`, `qp`) with
    /// step `steps[i / group]`, for an integer kernel, as `T` (`i8` for grids within
    /// −128…127, `u8` for unsigned ones within 0…255, `i16` for up to 16 bits).
    pub fn quantize_to_grid<T: GridInt>(
        &self,
        steps: &[f64],
        group: usize,
        qn: f64,
        qp: f64,
    ) -> Result<Vec<T>> {
        if group == 0 || steps.len() * group != self.len() || !T::holds(-qn, qp) {
            return Err(Error::shape(
                "quantize_to_grid",
                format!(
                    "{} steps of {group} elements for {} elements, grid −{qn}…{qp} as {}",
                    steps.len(),
                    self.len(),
                    std::any::type_name::<T>()
                ),
            ));
        }
        use rayon::prelude::*;
        let v = self.to_dtype(DType::F32);
        let v = v.as_f32()?;
        let (lo, hi) = (-qn as f32, qp as f32);
        let inv: Vec<f32> = steps.iter().map(|s| (1.0 / s) as f32).collect();
        let mut out = vec![T::default(); v.len()];
        const CHUNK: usize = 1 << 14;
        out.par_chunks_mut(CHUNK)
            .zip(v.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (o, x))| {
                // Runs of elements sharing one step.
                let (start, mut j) = (c * CHUNK, 0);
                while j < x.len() {
                    let g = (start + j) / group;
                    let end = ((g + 1) * group - start).min(x.len());
                    for (o, &x) in o[j..end].iter_mut().zip(&x[j..end]) {
                        // The f32 fake quantiser's arithmetic, so the two grids agree.
                        let c = (x * inv[g]).clamp(lo, hi);
                        *o = T::from_rounded(((c.abs() + 0.5) as i32 as f32).copysign(c) as i32);
                    }
                    j = end;
                }
            });
        Ok(out)
    }

    /// LSQ fake quantisation (Esser et al. 2020) to the integer grid [−`qn`, `qp`] with
    /// step `steps[i / group]` for element i (one step per tensor: `group` = len; one per
    /// row of a weight: `group` = columns). Returns (q, mask, r): the quantised values
    /// q = clamp(round(v/s), −qn, qp)·s, the clipped straight-through estimator's mask
    /// 1[−qn ≤ v/s ≤ qp] (∂q/∂v), and r = ∂q/∂s: round(v/s) − v/s inside the range,
    /// −qn below it, qp above it.
    pub fn fake_quantize(
        &self,
        steps: &[f64],
        group: usize,
        qn: f64,
        qp: f64,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        if group == 0
            || steps.len() * group != self.len()
            || steps.iter().any(|s| s.is_nan() || *s <= 0.0)
        {
            return Err(Error::shape(
                "fake_quantize",
                format!(
                    "{} steps of {group} elements for {} elements (steps must be positive)",
                    steps.len(),
                    self.len()
                ),
            ));
        }
        count_elementwise(self.len(), 3, self.dtype());
        let (q, m, r) = on_backend!(&*self.data, s => {
            let (q, m, r) = s.fake_quantize(steps, group, qn, qp);
            (Storage::from(q), Storage::from(m), Storage::from(r))
        });
        Ok((self.like(q), self.like(m), self.like(r)))
    }

    // ---- losses ---------------------------------------------------------------------

    /// Softmax over each row of a 2-D tensor.
    pub fn softmax_rows(&self) -> Result<Tensor> {
        let (_, c) = self.dims2()?;
        Ok(self.like(on_backend!(&*self.data, s => Storage::from(s.softmax_rows(c)))))
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
        let (loss, grad) = on_backend!(&*self.data, s => {
            let (l, g) = s.softmax_xent(c, labels);
            (l, Storage::from(g))
        });
        Ok((loss, self.like(grad)))
    }

    /// Mean binary cross-entropy of `σ(self)` against targets in [0, 1], with gradient
    /// `(σ(x) − t)/numel` with respect to the logits.
    pub fn sigmoid_bce(&self, target: &Tensor) -> Result<(f64, Tensor)> {
        self.same_shape("sigmoid_bce", target)?;
        let n = self.len().max(1) as f64;
        let (loss, grad) = on_backend!(&*self.data, &*target.data, (x, t) => {
            let (l, g) = x.sigmoid_bce(t, n)?;
            (l, Storage::from(g))
        });
        Ok((loss, self.like(grad)))
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

/// An integer type a quantiser's grid is written in ([`Tensor::quantize_to_grid`]).
pub trait GridInt: Copy + Default + Send + Sync {
    /// Whether −`lo`…`hi` fits.
    fn holds(lo: f64, hi: f64) -> bool;
    /// The value of a grid point already within range.
    fn from_rounded(v: i32) -> Self;
}

macro_rules! grid_int {
    ($($t:ty),*) => {$(
        impl GridInt for $t {
            fn holds(lo: f64, hi: f64) -> bool {
                lo >= <$t>::MIN as f64 && hi <= <$t>::MAX as f64
            }
            fn from_rounded(v: i32) -> Self {
                v as $t
            }
        }
    )*};
}
grid_int!(i8, u8, i16);

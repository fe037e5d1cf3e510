//! The host backend: elements in host memory, one variant per element type. f32 and f64
//! run the generic kernels of `cpu` (and `conv`); bf16 and f16 run the f32 kernel on
//! widened copies (`reduced`), rounding back where the output keeps the type, and have
//! their own matrix product (`bf16_gemm`).

use super::backend::BackendStorage;
use super::cpu::{self, Elem};
use std::borrow::Cow;
use std::sync::Arc;

use super::{DType, Rho, Unary, Window, conv, fused, gemm, reduced};
use crate::error::{Error, Result};

/// Host memory holding elements of one type.
#[derive(Debug, Clone, PartialEq)]
pub enum HostStorage {
    F32(F32Buffer),
    F64(Vec<f64>),
    BF16(Vec<half::bf16>),
    F16(Vec<half::f16>),
}

/// Memory another owner keeps alive, read as f32 elements (a numpy array).
pub type SharedF32 = Arc<dyn AsRef<[f32]> + Send + Sync>;

/// The elements of an f32 storage: owned, or read in place from memory another owner
/// keeps alive (the Python package trains on numpy arrays without copying them). A write
/// to shared elements copies them first, so the owner's memory is only ever read.
#[derive(Clone)]
pub enum F32Buffer {
    Owned(Vec<f32>),
    Shared(SharedF32),
}

impl F32Buffer {
    /// The elements as an owned vector (copied out of shared memory first).
    pub fn vec_mut(&mut self) -> &mut Vec<f32> {
        if let F32Buffer::Shared(s) = self {
            *self = F32Buffer::Owned((**s).as_ref().to_vec());
        }
        match self {
            F32Buffer::Owned(v) => v,
            F32Buffer::Shared(_) => unreachable!("made owned above"),
        }
    }

    /// True when the elements are read in place from another owner's memory.
    pub fn is_shared(&self) -> bool {
        matches!(self, F32Buffer::Shared(_))
    }
}

impl std::ops::Deref for F32Buffer {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            F32Buffer::Owned(v) => v,
            F32Buffer::Shared(s) => (**s).as_ref(),
        }
    }
}

impl std::ops::DerefMut for F32Buffer {
    fn deref_mut(&mut self) -> &mut [f32] {
        self.vec_mut()
    }
}

impl<'a> IntoIterator for &'a F32Buffer {
    type Item = &'a f32;
    type IntoIter = std::slice::Iter<'a, f32>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl From<Vec<f32>> for F32Buffer {
    fn from(v: Vec<f32>) -> Self {
        F32Buffer::Owned(v)
    }
}

impl std::fmt::Debug for F32Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl PartialEq for F32Buffer {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

// The dtype dispatch: f32 and f64 run their own kernels; bf16 and f16 widen.

macro_rules! map1 {
    ($s:expr, $v:ident => $e:expr) => {
        match $s {
            HostStorage::F32($v) => HostStorage::F32(F32Buffer::Owned($e)),
            HostStorage::F64($v) => HostStorage::F64($e),
            half => {
                let w = reduced::widen(half);
                let $v = &w;
                reduced::narrow(half.dtype(), $e)
            }
        }
    };
}

macro_rules! each1 {
    ($s:expr, $v:ident => $e:expr) => {
        match $s {
            HostStorage::F32($v) => $e,
            HostStorage::F64($v) => $e,
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
            HostStorage::F64($v) => $e,
            other => reduced::with_f32_mut(other, |$v| $e),
        }
    };
}

macro_rules! each2 {
    ($op:expr, $a:expr, $b:expr, ($x:ident, $y:ident) => $e:expr) => {
        match ($a, $b) {
            (HostStorage::F32($x), HostStorage::F32($y)) => Ok($e),
            (HostStorage::F64($x), HostStorage::F64($y)) => Ok($e),
            (l, r) => match (reduced::f32_view(l), reduced::f32_view(r)) {
                (Some(wx), Some(wy)) => {
                    let ($x, $y) = (&*wx, &*wy);
                    Ok($e)
                }
                _ => Err(dtype_error($op, l, r)),
            },
        }
    };
}

macro_rules! each2_mut {
    ($op:expr, $a:expr, $b:expr, ($x:ident, $y:ident) => $e:expr) => {{
        let (l, r) = ($a.dtype(), $b.dtype());
        match ($a, $b) {
            (HostStorage::F32($x), HostStorage::F32($y)) => Ok($e),
            (HostStorage::F64($x), HostStorage::F64($y)) => Ok($e),
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

fn dtype_error(op: &'static str, l: &HostStorage, r: &HostStorage) -> Error {
    Error::DType {
        op,
        lhs: l.dtype(),
        rhs: r.dtype(),
    }
}

impl HostStorage {
    /// `n` elements equal to `value`.
    pub fn full(n: usize, value: f64, dtype: DType) -> Self {
        match dtype {
            DType::F32 => HostStorage::F32(vec![value as f32; n].into()),
            DType::F64 => HostStorage::F64(vec![value; n]),
            DType::BF16 => HostStorage::BF16(vec![half::bf16::from_f64(value); n]),
            DType::F16 => HostStorage::F16(vec![half::f16::from_f64(value); n]),
        }
    }

    /// f64 values stored as `dtype`.
    pub(crate) fn from_f64(dtype: DType, v: Vec<f64>) -> Self {
        match dtype {
            DType::F64 => HostStorage::F64(v),
            d => reduced::narrow(d, v.into_iter().map(|x| x as f32).collect()),
        }
    }
}

/// Operands of a fused kernel seen in one computing type: all f64, or all f32 (bf16 and
/// f16 widened); `None` entries are absent optional operands.
enum Views<'a> {
    F32(Vec<Option<Cow<'a, [f32]>>>),
    F64(Vec<Option<&'a [f64]>>),
}

fn views<'a>(op: &'static str, parts: &[Option<&'a HostStorage>]) -> Result<Views<'a>> {
    let first = parts
        .iter()
        .flatten()
        .next()
        .map_or(DType::F32, |p| p.dtype());
    if first == DType::F64 {
        let mut v = Vec::with_capacity(parts.len());
        for p in parts {
            v.push(match p {
                None => None,
                Some(HostStorage::F64(x)) => Some(x.as_slice()),
                Some(other) => {
                    return Err(Error::DType {
                        op,
                        lhs: DType::F64,
                        rhs: other.dtype(),
                    });
                }
            });
        }
        return Ok(Views::F64(v));
    }
    let mut v = Vec::with_capacity(parts.len());
    for p in parts {
        v.push(match p {
            None => None,
            Some(x) => Some(reduced::f32_view(x).ok_or(Error::DType {
                op,
                lhs: first,
                rhs: DType::F64,
            })?),
        });
    }
    Ok(Views::F32(v))
}

impl BackendStorage for HostStorage {
    fn dtype(&self) -> DType {
        match self {
            HostStorage::F32(_) => DType::F32,
            HostStorage::F64(_) => DType::F64,
            HostStorage::BF16(_) => DType::BF16,
            HostStorage::F16(_) => DType::F16,
        }
    }

    fn len(&self) -> usize {
        match self {
            HostStorage::F32(v) => v.len(),
            HostStorage::F64(v) => v.len(),
            HostStorage::BF16(v) => v.len(),
            HostStorage::F16(v) => v.len(),
        }
    }

    fn full_like(&self, n: usize, value: f64, dtype: DType) -> Self {
        Self::full(n, value, dtype)
    }

    fn to_dtype(&self, dtype: DType) -> Self {
        if dtype == self.dtype() {
            return self.clone();
        }
        match dtype {
            DType::F64 => HostStorage::F64(self.to_vec_f64()),
            d => reduced::narrow(d, self.to_vec_f32()),
        }
    }

    fn to_vec_f64(&self) -> Vec<f64> {
        each1!(self, v => v.iter().map(|x| x.f64()).collect())
    }

    fn to_vec_f32(&self) -> Vec<f32> {
        match self {
            HostStorage::F64(v) => v.iter().map(|&x| x as f32).collect(),
            other => reduced::widen(other),
        }
    }

    fn get(&self, i: usize) -> Option<f64> {
        match self {
            HostStorage::F32(v) => v.get(i).map(|x| *x as f64),
            HostStorage::F64(v) => v.get(i).copied(),
            HostStorage::BF16(v) => v.get(i).map(|x| x.to_f64()),
            HostStorage::F16(v) => v.get(i).map(|x| x.to_f64()),
        }
    }

    fn set(&mut self, i: usize, value: f64) -> bool {
        match self {
            HostStorage::F32(v) => v.get_mut(i).map(|x| *x = value as f32).is_some(),
            HostStorage::F64(v) => v.get_mut(i).map(|x| *x = value).is_some(),
            HostStorage::BF16(v) => v
                .get_mut(i)
                .map(|x| *x = half::bf16::from_f64(value))
                .is_some(),
            HostStorage::F16(v) => v
                .get_mut(i)
                .map(|x| *x = half::f16::from_f64(value))
                .is_some(),
        }
    }

    fn matmul(
        &self,
        ta: bool,
        rhs: &Self,
        tb: bool,
        (m, k, n): (usize, usize, usize),
    ) -> Result<Self> {
        Ok(match (self, rhs) {
            (HostStorage::F32(x), HostStorage::F32(y)) => {
                HostStorage::F32(gemm::gemm_new(m, n, k, x, ta, y, tb).into())
            }
            (HostStorage::F64(x), HostStorage::F64(y)) => {
                HostStorage::F64(gemm::gemm_new(m, n, k, x, ta, y, tb))
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
                    return Err(dtype_error("matmul", l, r));
                }
                HostStorage::F32(c.into())
            }
        })
    }

    fn matmul_acc(
        &mut self,
        a: &Self,
        ta: bool,
        b: &Self,
        tb: bool,
        (m, k, n): (usize, usize, usize),
    ) -> Result<()> {
        match (&mut *self, a, b) {
            (HostStorage::F32(c), HostStorage::F32(x), HostStorage::F32(y)) => {
                gemm::gemm(m, n, k, x, ta, y, tb, c, true)
            }
            (HostStorage::F64(c), HostStorage::F64(x), HostStorage::F64(y)) => {
                gemm::gemm(m, n, k, x, ta, y, tb, c, true)
            }
            (HostStorage::F64(_), _, _) => return Err(dtype_error("matmul", a, b)),
            // f32 or a reduced type (summed in f32, rounded back) += a product with a
            // reduced operand.
            (c, x, y) => {
                let ok = reduced::with_f32_mut(c, |c| match (x, y) {
                    (HostStorage::F32(x), HostStorage::F32(y)) => {
                        gemm::gemm(m, n, k, x, ta, y, tb, c, true);
                        true
                    }
                    _ => reduced::mixed_gemm((m, k, n), x, ta, y, tb, c, true),
                });
                if !ok {
                    return Err(dtype_error("matmul", a, b));
                }
            }
        }
        Ok(())
    }

    fn concat(parts: &[&Self]) -> Self {
        // Same-type parts (the caller checks) copied slice by slice.
        macro_rules! join {
            ($v:ident) => {{
                let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
                for p in parts {
                    if let HostStorage::$v(x) = p {
                        out.extend_from_slice(x);
                    }
                }
                HostStorage::$v(out.into())
            }};
        }
        match parts.first() {
            None | Some(HostStorage::F32(_)) => join!(F32),
            Some(HostStorage::F64(_)) => join!(F64),
            Some(HostStorage::BF16(_)) => join!(BF16),
            Some(HostStorage::F16(_)) => join!(F16),
        }
    }

    fn concat_cols(&self, other: &Self, r: usize, a: usize, b: usize) -> Self {
        let (x, y) = (self.to_vec_f64(), other.to_vec_f64());
        let mut v = Vec::with_capacity(r * (a + b));
        for i in 0..r {
            v.extend_from_slice(&x[i * a..(i + 1) * a]);
            v.extend_from_slice(&y[i * b..(i + 1) * b]);
        }
        Self::from_f64(self.dtype(), v)
    }

    fn columns(&self, r: usize, c: usize, from: usize, width: usize) -> Self {
        map1!(self, v => v
            .chunks(c.max(1))
            .take(r)
            .flat_map(|row| row[from..from + width].iter().copied())
            .collect())
    }

    fn transpose(&self, r: usize, c: usize) -> Self {
        map1!(self, v => cpu::transpose(v, r, c))
    }

    fn gather_rows(&self, c: usize, idx: &[usize]) -> Self {
        map1!(self, v => cpu::gather_rows(v, c, idx))
    }

    fn batch_transpose(&self, n: usize, a: usize, b: usize) -> Self {
        map1!(self, v => conv::batch_transpose(v, n, a, b))
    }

    fn add_row(&mut self, b: &Self, _c: usize) -> Result<()> {
        each2_mut!("add_row", self, b, (x, y) => cpu::add_row(x, y))
    }

    fn row_sum_sq(&self, c: usize) -> Vec<f64> {
        each1!(self, v => v
            .chunks(c.max(1))
            .map(|row| row.iter().map(|a| { let a = a.f64(); a * a }).sum())
            .collect())
    }

    fn row_sums(&self, c: usize) -> Vec<f64> {
        each1!(self, v => v
            .chunks(c.max(1))
            .map(|row| row.iter().map(|a| a.f64()).sum())
            .collect())
    }

    fn center_normalize_rows(&self, n: usize, w: usize, floor: f64) -> (Self, Vec<f64>) {
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
        (Self::from_f64(self.dtype(), out), norms)
    }

    fn center_normalize_rows_backward(&self, norms: &[f64], g: &Self, n: usize, w: usize) -> Self {
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
        Self::from_f64(self.dtype(), out)
    }

    fn standardize_rows(&self, n: usize, f: usize, eps: f64) -> (Self, Self) {
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
        (Self::from_f64(self.dtype(), xh), HostStorage::F64(inv))
    }

    fn standardize_rows_backward(&self, inv: &Self, g: &Self, n: usize, f: usize) -> Self {
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
        Self::from_f64(g.dtype().accumulator(), dx)
    }

    fn scale_rows(&mut self, c: usize, s: &[f64]) {
        each1_mut!(self, v => cpu::scale_rows(v, c, s))
    }

    fn sum_rows(&self, c: usize) -> Self {
        map1!(self, v => cpu::sum_rows(v, c))
    }

    fn sum(&self) -> f64 {
        each1!(self, v => v.iter().map(|x| x.f64()).sum())
    }

    fn sum_sq(&self) -> f64 {
        each1!(self, v => cpu::sum_sq(v))
    }

    fn dot(&self, other: &Self) -> Result<f64> {
        each2!("dot", self, other, (x, y) => cpu::dot(x, y))
    }

    fn all_finite(&self) -> bool {
        each1!(self, v => v.iter().all(|x| x.f64().is_finite()))
    }

    fn argmax_rows(&self, c: usize) -> Vec<usize> {
        each1!(self, v => cpu::argmax_rows(v, c))
    }

    fn argmax_rows_except(&self, c: usize, skip: &[usize]) -> Vec<usize> {
        let v = self.to_vec_f64();
        (0..skip.len())
            .map(|i| {
                (0..c)
                    .filter(|&j| j != skip[i])
                    .max_by(|&a, &b| v[i * c + a].total_cmp(&v[i * c + b]))
                    .unwrap_or(0)
            })
            .collect()
    }

    fn bernoulli(&self, rng: &mut crate::Rng) -> Self {
        use rand::Rng as _;
        let v: Vec<f64> = self
            .to_vec_f64()
            .iter()
            .map(|&q| (rng.random::<f64>() < q) as u8 as f64)
            .collect();
        Self::from_f64(self.dtype(), v)
    }

    fn unary(&self, f: Unary) -> Self {
        map1!(self, v => cpu::unary(v, f))
    }

    fn unary_backward(&self, f: Unary, d: &Self) -> Result<Self> {
        each2!("unary_backward", self, d, (x, d) => Elem::wrap(cpu::unary_backward(x, d, f)))
    }

    fn unary_second(&self, f: Unary, d: &Self, r: &Self) -> Self {
        let (x, d, r) = (self.to_vec_f64(), d.to_vec_f64(), r.to_vec_f64());
        let v: Vec<f64> = x
            .iter()
            .zip(&d)
            .zip(&r)
            .map(|((x, d), r)| f.second_derivative(*x) * d * r)
            .collect();
        Self::from_f64(self.dtype(), v)
    }

    fn unary_backward_from_output(&self, f: Unary, d: &Self) -> Result<Option<Self>> {
        each2!("unary_backward_from_output", self, d, (y, d) => {
            cpu::unary_backward_from_output(y, d, f).map(Elem::wrap)
        })
    }

    fn prelu(&self, slope: &Self, c: usize) -> Result<Self> {
        match (self, slope) {
            (HostStorage::F32(x), HostStorage::F32(a)) => {
                Ok(HostStorage::F32(cpu::prelu(x, a, c).into()))
            }
            (HostStorage::F64(x), HostStorage::F64(a)) => Ok(HostStorage::F64(cpu::prelu(x, a, c))),
            (l, r) => Err(dtype_error("prelu", l, r)),
        }
    }

    fn prelu_backward(&self, slope: &Self, d: &Self, c: usize) -> Result<(Self, Self)> {
        match (self, slope, d) {
            (HostStorage::F32(x), HostStorage::F32(a), HostStorage::F32(d)) => {
                let (dx, da) = cpu::prelu_backward(x, a, d, c);
                Ok((HostStorage::F32(dx.into()), HostStorage::F32(da.into())))
            }
            (HostStorage::F64(x), HostStorage::F64(a), HostStorage::F64(d)) => {
                let (dx, da) = cpu::prelu_backward(x, a, d, c);
                Ok((HostStorage::F64(dx), HostStorage::F64(da)))
            }
            (l, _, r) => Err(dtype_error("prelu_backward", l, r)),
        }
    }

    fn mul(&self, other: &Self) -> Result<Self> {
        each2!("mul", self, other, (x, y) => Elem::wrap(x.iter().zip(y).map(|(a, b)| *a * *b).collect::<Vec<_>>()))
    }

    fn scale(&mut self, s: f64) {
        each1_mut!(self, v => cpu::scale(v, s))
    }

    fn axpby(&mut self, a: f64, b: f64, x: &Self) -> Result<()> {
        each2_mut!("axpby", self, x, (s, y) => cpu::axpby(s, a, b, y))
    }

    fn axpby_sq(&mut self, a: f64, b: f64, x: &Self) -> Result<()> {
        each2_mut!("axpby_sq", self, x, (s, y) => cpu::axpby_sq(s, a, b, y))
    }

    fn adam_ratio(m: &Self, v: &Self, c1: f64, c2: f64, eps: f64) -> Result<Self> {
        each2!("adam_ratio", m, v, (x, y) => Elem::wrap(cpu::adam_ratio(x, y, c1, c2, eps)))
    }

    fn adam_step(
        update: &mut Self,
        m: &mut Self,
        v: &mut Self,
        (beta1, beta2): (f64, f64),
        (c1, c2): (f64, f64),
        eps: f64,
    ) -> Result<()> {
        let (ud, md) = (update.dtype(), m.dtype());
        match (update, m, v) {
            (HostStorage::F32(u), HostStorage::F32(mm), HostStorage::F32(vv)) => {
                cpu::adam_step(u, mm, vv, beta1, beta2, c1, c2, eps)
            }
            (HostStorage::F64(u), HostStorage::F64(mm), HostStorage::F64(vv)) => {
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

    fn max_in_place(&mut self, x: &Self) -> Result<()> {
        each2_mut!("max_in_place", self, x, (s, y) => {
            for (a, b) in s.iter_mut().zip(y) {
                if *b > *a {
                    *a = *b;
                }
            }
        })
    }

    fn div_shifted(&self, denom: &Self, c: f64) -> Result<Self> {
        each2!("div_shifted", self, denom, (x, d) => Elem::wrap(cpu::div_shifted(x, d, c)))
    }

    fn add_scalar(&self, c: f64) -> Self {
        map1!(self, v => v.iter().map(|x| Elem::of(x.f64() + c)).collect())
    }

    fn fake_quantize(&self, steps: &[f64], group: usize, qn: f64, qp: f64) -> (Self, Self, Self) {
        match self {
            HostStorage::F32(v) => {
                let (q, m, d) = cpu::fake_quantize_f32(v, steps, group, qn, qp);
                (
                    HostStorage::F32(q.into()),
                    HostStorage::F32(m.into()),
                    HostStorage::F32(d.into()),
                )
            }
            HostStorage::F64(v) => {
                let (q, m, d) = cpu::fake_quantize(v, steps, group, qn, qp);
                (
                    HostStorage::F64(q),
                    HostStorage::F64(m),
                    HostStorage::F64(d),
                )
            }
            half => {
                let (q, m, d) = cpu::fake_quantize(&reduced::widen(half), steps, group, qn, qp);
                let dt = half.dtype();
                (
                    reduced::narrow(dt, q),
                    reduced::narrow(dt, m),
                    reduced::narrow(dt, d),
                )
            }
        }
    }

    fn clamp_abs(&self, c: f64) -> Self {
        map1!(self, v => v.iter().map(|x| Elem::of(x.f64().clamp(-c, c))).collect())
    }

    fn softmax_rows(&self, c: usize) -> Self {
        map1!(self, v => cpu::softmax_rows(v, c))
    }

    fn softmax_xent(&self, c: usize, labels: &[usize]) -> (f64, Self) {
        match self {
            HostStorage::F32(v) => {
                let (l, g) = cpu::softmax_xent(v, c, labels);
                (l, HostStorage::F32(g.into()))
            }
            HostStorage::F64(v) => {
                let (l, g) = cpu::softmax_xent(v, c, labels);
                (l, HostStorage::F64(g))
            }
            reduced => {
                let (l, g) = cpu::softmax_xent(&reduced::widen(reduced), c, labels);
                (l, HostStorage::F32(g.into()))
            }
        }
    }

    fn sigmoid_bce(&self, t: &Self, n: f64) -> Result<(f64, Self)> {
        each2!("sigmoid_bce", self, t, (x, t) => {
            let (l, g) = cpu::sigmoid_bce(x, t, n);
            (l, Elem::wrap(g))
        })
    }

    fn im2col(&self, n: usize, win: &Window, c0: usize, cg: usize) -> Result<Self> {
        match self {
            HostStorage::F32(v) => Ok(HostStorage::F32(conv::im2col(v, n, win, c0, cg)?.into())),
            HostStorage::F64(v) => Ok(HostStorage::F64(conv::im2col(v, n, win, c0, cg)?)),
            half => Ok(reduced::narrow(
                half.dtype(),
                conv::im2col(&reduced::widen(half), n, win, c0, cg)?,
            )),
        }
    }

    fn col2im_acc(
        &mut self,
        cols: &Self,
        n: usize,
        win: &Window,
        c0: usize,
        cg: usize,
    ) -> Result<()> {
        let err = dtype_error("col2im", self, cols);
        match (self, cols) {
            (HostStorage::F32(d), HostStorage::F32(v)) => conv::col2im_acc(d, v, n, win, c0, cg),
            (HostStorage::F64(d), HostStorage::F64(v)) => conv::col2im_acc(d, v, n, win, c0, cg),
            (HostStorage::F64(_), _) | (_, HostStorage::F64(_)) => Err(err),
            // A reduced type on either side: summed in f32.
            (d, v) => {
                let v = reduced::f32_view(v).ok_or(err)?;
                reduced::with_f32_mut(d, |d| conv::col2im_acc(d, &v, n, win, c0, cg))
            }
        }
    }

    fn max_pool(&self, n: usize, win: &Window) -> Result<(Self, Vec<usize>)> {
        match self {
            HostStorage::F32(v) => {
                let (o, i) = conv::max_pool(v, n, win)?;
                Ok((HostStorage::F32(o.into()), i))
            }
            HostStorage::F64(v) => {
                let (o, i) = conv::max_pool(v, n, win)?;
                Ok((HostStorage::F64(o), i))
            }
            half => {
                let (o, i) = conv::max_pool(&reduced::widen(half), n, win)?;
                Ok((reduced::narrow(half.dtype(), o), i))
            }
        }
    }

    fn scatter_add(&mut self, g: &Self, idx: &[usize]) -> Result<()> {
        each2_mut!("scatter_add", self, g, (o, g) => {
            for (&i, &v) in idx.iter().zip(g) {
                if i != usize::MAX {
                    o[i] += v;
                }
            }
        })
    }

    fn avg_pool(&self, n: usize, win: &Window, adjoint: bool) -> Result<Self> {
        match self {
            HostStorage::F32(v) => Ok(HostStorage::F32(conv::avg_pool(v, n, win, adjoint)?.into())),
            HostStorage::F64(v) => Ok(HostStorage::F64(conv::avg_pool(v, n, win, adjoint)?)),
            half => Ok(reduced::narrow(
                half.dtype(),
                conv::avg_pool(&reduced::widen(half), n, win, adjoint)?,
            )),
        }
    }

    fn relax_step(
        s: &Self,
        fwd: &Self,
        feedback: Option<&Self>,
        target: Option<&Self>,
        beta: f64,
        eps: f64,
        rho: Rho,
    ) -> Result<(Self, f64, f64)> {
        let op = "relax_step";
        Ok(match views(op, &[Some(s), Some(fwd), feedback, target])? {
            Views::F64(v) => {
                let (o, r2, c) = fused::relax_step(
                    v[0].unwrap_or_default(),
                    v[1].unwrap_or_default(),
                    v[2],
                    v[3],
                    beta,
                    eps,
                    rho,
                );
                (HostStorage::F64(o), r2, c)
            }
            Views::F32(v) => {
                let (x, f) = (
                    v[0].as_deref().unwrap_or_default(),
                    v[1].as_deref().unwrap_or_default(),
                );
                let (o, r2, c) = match (&v[2], &v[3], rho) {
                    (Some(fb), None, Rho::HardSigmoid) => {
                        let (o, r2) = fused::hard_sigmoid_step(x, f, fb, eps as f32);
                        (o, r2, 0.0)
                    }
                    _ => fused::relax_step(x, f, v[2].as_deref(), v[3].as_deref(), beta, eps, rho),
                };
                (reduced::narrow(s.dtype(), o), r2, c)
            }
        })
    }

    fn channel_sums(
        x: &Self,
        other: Option<&Self>,
        center: Option<&[f64]>,
        cp: (usize, usize),
    ) -> Result<Vec<(f64, f64)>> {
        Ok(match views("channel_sums", &[Some(x), other])? {
            Views::F64(v) => fused::channel_sums(v[0].unwrap_or_default(), v[1], center, cp),
            Views::F32(v) => fused::channel_sums(
                v[0].as_deref().unwrap_or_default(),
                v[1].as_deref(),
                center,
                cp,
            ),
        })
    }

    fn channel_affine(
        x: &Self,
        other: Option<&Self>,
        coef: &[(f64, f64, f64)],
        cp: (usize, usize),
    ) -> Result<Self> {
        Ok(match views("channel_affine", &[Some(x), other])? {
            Views::F64(v) => HostStorage::F64(fused::channel_affine(
                v[0].unwrap_or_default(),
                v[1],
                coef,
                cp,
            )),
            Views::F32(v) => reduced::narrow(
                x.dtype(),
                fused::channel_affine(
                    v[0].as_deref().unwrap_or_default(),
                    v[1].as_deref(),
                    coef,
                    cp,
                ),
            ),
        })
    }
}

//! Host kernels, generic over the element type. Only `tensor` calls these.

use super::fastmath::{map, map2};
use super::{HostStorage, Unary};

/// A host element type: `f32` or `f64`.
pub(crate) trait Elem:
    Copy
    + Send
    + Sync
    + 'static
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::AddAssign
    + super::gemm::One
{
    fn f64(self) -> f64;
    fn of(x: f64) -> Self;
    fn wrap(v: Vec<Self>) -> HostStorage;
    /// tanh in the type's own precision.
    fn tanh(self) -> Self;
    /// 1/(1 + e^−x) in the type's own precision.
    fn sigmoid(self) -> Self;
    /// √x.
    fn sqrt(self) -> Self;
    /// GELU x·Φ(x) in the type's own precision.
    fn gelu(self) -> Self;
    /// GELU′(x) = Φ(x) + x·φ(x).
    fn gelu_derivative(self) -> Self;
}

impl Elem for f32 {
    #[inline]
    fn f64(self) -> f64 {
        self as f64
    }
    #[inline]
    fn of(x: f64) -> Self {
        x as f32
    }
    fn wrap(v: Vec<Self>) -> HostStorage {
        HostStorage::F32(v.into())
    }
    /// A rational minimax approximation, x·P(x²)/Q(x²) on |x| ≤ 7.905 (odd degree 13
    /// over even degree 6, the form used by Eigen's vectorised `ptanh`); it vectorises,
    /// unlike libm's `tanhf`, and stays within a few ulp (tested against f64 `tanh`).
    #[inline]
    #[allow(clippy::excessive_precision)]
    fn tanh(self) -> Self {
        let x = self.clamp(-7.905_311, 7.905_311);
        let x2 = x * x;
        let p = ((((((-2.760_768_5e-16f32 * x2 + 2.000_187_9e-13) * x2 - 8.604_671_5e-11) * x2
            + 5.122_297e-8)
            * x2
            + 1.485_722_4e-5)
            * x2
            + 6.372_619_3e-4)
            * x2
            + 4.893_524_6e-3)
            * x;
        let q =
            ((1.198_258_4e-6f32 * x2 + 1.185_347_1e-4) * x2 + 2.268_434_6e-3) * x2 + 4.893_525e-3;
        p / q
    }
    #[inline]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    /// 1/(1 + e^−x) with the vectorised exp (no cancellation for either sign).
    #[inline]
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + super::fastmath::exp(-self))
    }
    #[inline]
    fn gelu(self) -> Self {
        super::fastmath::gelu(self)
    }
    #[inline]
    fn gelu_derivative(self) -> Self {
        super::fastmath::gelu_derivative(self)
    }
}

impl Elem for f64 {
    #[inline]
    fn f64(self) -> f64 {
        self
    }
    #[inline]
    fn of(x: f64) -> Self {
        x
    }
    fn wrap(v: Vec<Self>) -> HostStorage {
        HostStorage::F64(v)
    }
    #[inline]
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
    #[inline]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    #[inline]
    fn sigmoid(self) -> Self {
        Unary::Sigmoid.apply(self)
    }
    #[inline]
    fn gelu(self) -> Self {
        Unary::Gelu.apply(self)
    }
    #[inline]
    fn gelu_derivative(self) -> Self {
        Unary::Gelu.derivative(self)
    }
}

pub(crate) fn transpose<T: Elem>(v: &[T], r: usize, c: usize) -> Vec<T> {
    let mut out = vec![T::zero(); r * c];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = v[i * c + j];
        }
    }
    out
}

pub(crate) fn add_row<T: Elem>(x: &mut [T], b: &[T]) {
    for row in x.chunks_exact_mut(b.len()) {
        for (y, &bj) in row.iter_mut().zip(b) {
            *y += bj;
        }
    }
}

pub(crate) fn sum_rows<T: Elem>(x: &[T], c: usize) -> Vec<T> {
    let mut out = vec![T::zero(); c];
    if c == 0 {
        return out;
    }
    for row in x.chunks_exact(c) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
    out
}

pub(crate) fn sum_sq<T: Elem>(x: &[T]) -> f64 {
    x.iter().map(|v| v.f64() * v.f64()).sum()
}

pub(crate) fn dot<T: Elem>(x: &[T], y: &[T]) -> f64 {
    x.iter().zip(y).map(|(a, b)| a.f64() * b.f64()).sum()
}

pub(crate) fn argmax_rows<T: Elem>(x: &[T], c: usize) -> Vec<usize> {
    x.chunks_exact(c)
        .map(|row| {
            let mut best = 0;
            for (j, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = j;
                }
            }
            best
        })
        .collect()
}

pub(crate) fn gather_rows<T: Elem>(x: &[T], c: usize, idx: &[usize]) -> Vec<T> {
    let mut out = Vec::with_capacity(idx.len() * c);
    for &i in idx {
        out.extend_from_slice(&x[i * c..(i + 1) * c]);
    }
    out
}

pub(crate) fn unary<T: Elem>(x: &[T], f: Unary) -> Vec<T> {
    let zero = T::zero();
    match f {
        Unary::Identity => x.to_vec(),
        Unary::Relu => map(x, |v| if v > zero { v } else { zero }),
        Unary::Tanh => map(x, |v| v.tanh()),
        Unary::Sigmoid => map(x, |v| v.sigmoid()),
        Unary::Gelu => map(x, |v| v.gelu()),
        Unary::Sign => map(x, |v| {
            if v > zero {
                T::one()
            } else if v < zero {
                T::of(-1.0)
            } else {
                zero
            }
        }),
        Unary::Abs => map(x, |v| if v < zero { T::of(-v.f64()) } else { v }),
        _ => x.iter().map(|&v| T::of(f.apply(v.f64()))).collect(),
    }
}

pub(crate) fn unary_backward<T: Elem>(x: &[T], d: &[T], f: Unary) -> Vec<T> {
    let zero = T::zero();
    match f {
        Unary::Identity => d.to_vec(),
        Unary::Relu => map2(x, d, |v, g| if v > zero { g } else { zero }),
        Unary::Gelu => map2(x, d, |v, g| v.gelu_derivative() * g),
        _ => x
            .iter()
            .zip(d)
            .map(|(&v, &g)| T::of(f.derivative(v.f64()) * g.f64()))
            .collect(),
    }
}

pub(crate) fn prelu<T: Elem>(x: &[T], a: &[T], c: usize) -> Vec<T> {
    let mut out = x.to_vec();
    for row in out.chunks_exact_mut(c) {
        for (v, &aj) in row.iter_mut().zip(a) {
            if *v <= T::zero() {
                *v = *v * aj;
            }
        }
    }
    out
}

pub(crate) fn prelu_backward<T: Elem>(x: &[T], a: &[T], d: &[T], c: usize) -> (Vec<T>, Vec<T>) {
    let mut dx = d.to_vec();
    let mut da = vec![T::zero(); c];
    for (r, (xrow, drow)) in x.chunks_exact(c).zip(d.chunks_exact(c)).enumerate() {
        for j in 0..c {
            if xrow[j] <= T::zero() {
                dx[r * c + j] = drow[j] * a[j];
                da[j] += drow[j] * xrow[j];
            }
        }
    }
    (dx, da)
}

/// Element-wise maps over at least this many elements run in chunks on the rayon pool
/// (the optimizers' per-parameter passes: memory-bound, one core does not saturate it).
const PAR_MIN: usize = 1 << 16;
const PAR_CHUNK: usize = 1 << 14;

/// `f(y_chunk, x_chunk)` over matching chunks, in parallel for long slices.
fn zip_chunks<T: Elem, F>(y: &mut [T], x: &[T], f: F)
where
    F: Fn(&mut [T], &[T]) + Sync + Send,
{
    use rayon::prelude::*;
    if y.len() >= PAR_MIN && rayon::current_num_threads() > 1 {
        y.par_chunks_mut(PAR_CHUNK)
            .zip(x.par_chunks(PAR_CHUNK))
            .for_each(|(a, b)| f(a, b));
    } else {
        f(y, x);
    }
}

pub(crate) fn scale<T: Elem>(x: &mut [T], s: f64) {
    use rayon::prelude::*;
    let s = T::of(s);
    let f = |a: &mut [T]| {
        for v in a.iter_mut() {
            *v = *v * s;
        }
    };
    if x.len() >= PAR_MIN && rayon::current_num_threads() > 1 {
        x.par_chunks_mut(PAR_CHUNK).for_each(f);
    } else {
        f(x);
    }
}

pub(crate) fn axpby<T: Elem>(y: &mut [T], a: f64, b: f64, x: &[T]) {
    let (a, b) = (T::of(a), T::of(b));
    zip_chunks(y, x, |yc, xc| {
        for (yv, &xv) in yc.iter_mut().zip(xc) {
            *yv = a * *yv + b * xv;
        }
    });
}

pub(crate) fn axpby_sq<T: Elem>(y: &mut [T], a: f64, b: f64, x: &[T]) {
    let (a, b) = (T::of(a), T::of(b));
    zip_chunks(y, x, |yc, xc| {
        for (yv, &xv) in yc.iter_mut().zip(xc) {
            *yv = a * *yv + b * xv * xv;
        }
    });
}

/// One fused pass of Adam: m ← β₁m + (1−β₁)u, v ← β₂v + (1−β₂)u², then
/// u ← (m/c₁)/(√(v/c₂) + ε) (u holds the gradient on entry, the update on exit).
#[allow(clippy::too_many_arguments)]
pub(crate) fn adam_step<T: Elem>(
    u: &mut [T],
    m: &mut [T],
    v: &mut [T],
    b1: f64,
    b2: f64,
    c1: f64,
    c2: f64,
    eps: f64,
) {
    use rayon::prelude::*;
    let (b1, b2) = (T::of(b1), T::of(b2));
    let (o1, o2) = (T::of(1.0) + T::of(-1.0) * b1, T::of(1.0) + T::of(-1.0) * b2);
    let (a, b, e) = (T::of(1.0 / c1), T::of(1.0 / c2), T::of(eps));
    let f = |((uc, mc), vc): ((&mut [T], &mut [T]), &mut [T])| {
        for ((uv, mv), vv) in uc.iter_mut().zip(mc.iter_mut()).zip(vc.iter_mut()) {
            let g = *uv;
            *mv = b1 * *mv + o1 * g;
            *vv = b2 * *vv + o2 * g * g;
            let s = *vv * b;
            let s = if s > T::zero() { s.sqrt() } else { T::zero() };
            *uv = *mv * a / (s + e);
        }
    };
    if u.len() >= PAR_MIN && rayon::current_num_threads() > 1 {
        u.par_chunks_mut(PAR_CHUNK)
            .zip(m.par_chunks_mut(PAR_CHUNK))
            .zip(v.par_chunks_mut(PAR_CHUNK))
            .for_each(f);
    } else {
        f(((u, m), v));
    }
}

pub(crate) fn adam_ratio<T: Elem>(m: &[T], v: &[T], c1: f64, c2: f64, eps: f64) -> Vec<T> {
    // In the element type so the loop vectorises.
    let (a, b, e) = (T::of(1.0 / c1), T::of(1.0 / c2), T::of(eps));
    let mut out = m.to_vec();
    zip_chunks(&mut out, v, |mc, vc| {
        for (mv, &vv) in mc.iter_mut().zip(vc) {
            let s = vv * b;
            let s = if s > T::zero() { s.sqrt() } else { T::zero() };
            *mv = *mv * a / (s + e);
        }
    });
    out
}

pub(crate) fn softmax_rows<T: Elem>(x: &[T], c: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(c) {
        let max = row
            .iter()
            .map(|v| v.f64())
            .fold(f64::NEG_INFINITY, f64::max);
        let start = out.len();
        let mut z = 0.0;
        for v in row {
            let e = (v.f64() - max).exp();
            z += e;
            out.push(T::of(e));
        }
        for o in &mut out[start..] {
            *o = T::of(o.f64() / z);
        }
    }
    out
}

/// Mean cross-entropy and its gradient `(softmax − onehot)/n`.
pub(crate) fn softmax_xent<T: Elem>(x: &[T], c: usize, labels: &[usize]) -> (f64, Vec<T>) {
    let n = labels.len().max(1) as f64;
    let mut grad = softmax_rows(x, c);
    let mut loss = 0.0;
    for (i, (row, &l)) in x.chunks_exact(c).zip(labels).enumerate() {
        let max = row
            .iter()
            .map(|v| v.f64())
            .fold(f64::NEG_INFINITY, f64::max);
        let lse = max + row.iter().map(|v| (v.f64() - max).exp()).sum::<f64>().ln();
        loss += lse - row[l].f64();
        let g = &mut grad[i * c..(i + 1) * c];
        g[l] = T::of(g[l].f64() - 1.0);
        for v in g {
            *v = T::of(v.f64() / n);
        }
    }
    (loss / n, grad)
}

/// Mean over elements of −[t ln σ(x) + (1−t) ln(1−σ(x))], gradient (σ(x) − t)/numel.
pub(crate) fn sigmoid_bce<T: Elem>(x: &[T], t: &[T], n: f64) -> (f64, Vec<T>) {
    let mut loss = 0.0;
    let grad = x
        .iter()
        .zip(t)
        .map(|(&xv, &tv)| {
            let (xv, tv) = (xv.f64(), tv.f64());
            // ln(1+e^x) − t·x, the stable form of the BCE of σ(x).
            loss += xv.max(0.0) + (-xv.abs()).exp().ln_1p() - tv * xv;
            T::of((Unary::Sigmoid.apply(xv) - tv) / n)
        })
        .collect();
    (loss / n, grad)
}

pub(crate) fn div_shifted<T: Elem>(x: &[T], d: &[T], c: f64) -> Vec<T> {
    x.iter()
        .zip(d)
        .map(|(a, b)| T::of(a.f64() / (b.f64() + c)))
        .collect()
}

/// d ⊙ f′ expressed through the output y = f(x): tanh′ = 1 − y², σ′ = y(1 − y).
pub(crate) fn unary_backward_from_output<T: Elem>(y: &[T], d: &[T], f: Unary) -> Option<Vec<T>> {
    let (one, minus) = (T::one(), T::of(-1.0));
    match f {
        Unary::Tanh => Some(map2(y, d, |v, g| g * (one + minus * v * v))),
        Unary::Sigmoid => Some(map2(y, d, |v, g| g * v * (one + minus * v))),
        _ => None,
    }
}

/// Row `i` (of `c` columns) times `s[i]`.
pub(crate) fn scale_rows<T: Elem>(v: &mut [T], c: usize, s: &[f64]) {
    for (row, &k) in v.chunks_mut(c.max(1)).zip(s) {
        let k = T::of(k);
        row.iter_mut().for_each(|a| *a = *a * k);
    }
}

/// `f(start, v, q, mask, ds)` over `v` and three outputs of its length, in parallel
/// chunks when `v` is large (`start`: the chunk's offset in `v`).
#[allow(clippy::type_complexity)]
fn map3<T: Elem>(
    v: &[T],
    f: impl Fn(usize, &[T], &mut [T], &mut [T], &mut [T]) + Sync,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    use rayon::prelude::*;
    let n = v.len();
    let (mut q, mut mask, mut ds) = (
        vec![T::of(0.0); n],
        vec![T::of(0.0); n],
        vec![T::of(0.0); n],
    );
    if n >= PAR_MIN && rayon::current_num_threads() > 1 {
        v.par_chunks(PAR_CHUNK)
            .zip(q.par_chunks_mut(PAR_CHUNK))
            .zip(mask.par_chunks_mut(PAR_CHUNK))
            .zip(ds.par_chunks_mut(PAR_CHUNK))
            .enumerate()
            .for_each(|(c, (((v, q), m), d))| f(c * PAR_CHUNK, v, q, m, d));
    } else {
        f(0, v, &mut q, &mut mask, &mut ds);
    }
    (q, mask, ds)
}

/// LSQ fake quantisation, one step per `group` consecutive elements: the quantised values
/// clamp(round(v/s), −qn, qp)·s, the straight-through mask 1[−qn ≤ v/s ≤ qp], and
/// ∂q/∂s: round(v/s) − v/s inside, −qn below, qp above (Esser et al. 2020, eq. 3).
/// Branch-free so the f32 form vectorises: u = v·(1/s), c = clamp(u), r = round(c) half
/// away from zero by truncation (|c| ≤ 2¹⁵; `round` is a libm call on baseline x86-64),
/// and ∂q/∂s = r − u inside, c (= −qn or qp) outside.
pub(crate) fn fake_quantize<T: Elem>(
    v: &[T],
    steps: &[f64],
    group: usize,
    qn: f64,
    qp: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let group = group.max(1);
    map3(v, |start, v, q, mask, ds| {
        for (j, x) in v.iter().enumerate() {
            let s = steps[(start + j) / group];
            let u = x.f64() / s;
            let c = u.clamp(-qn, qp);
            let r = ((c.abs() + 0.5) as i64 as f64).copysign(c);
            let inside = u >= -qn && u <= qp;
            q[j] = T::of(r * s);
            mask[j] = T::of(f64::from(u8::from(inside)));
            ds[j] = T::of(if inside { r - u } else { c });
        }
    })
}

/// [`fake_quantize`] in f32 arithmetic, one step's run of elements at a time.
pub(crate) fn fake_quantize_f32(
    v: &[f32],
    steps: &[f64],
    group: usize,
    qn: f64,
    qp: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let group = group.max(1);
    let (lo, hi) = (-qn as f32, qp as f32);
    map3(v, |start, v, q, mask, ds| {
        let mut j = 0;
        while j < v.len() {
            let g = (start + j) / group;
            let end = ((g + 1) * group - start).min(v.len());
            let (s, inv) = (steps[g] as f32, (1.0 / steps[g]) as f32);
            for k in j..end {
                let u = v[k] * inv;
                let c = u.clamp(lo, hi);
                let r = ((c.abs() + 0.5) as i32 as f32).copysign(c);
                let inside = u >= lo && u <= hi;
                q[k] = r * s;
                mask[k] = f32::from(u8::from(inside));
                ds[k] = if inside { r - u } else { c };
            }
            j = end;
        }
    })
}

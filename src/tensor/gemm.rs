//! The one matrix-multiply entry point of the CPU backend.
//!
//! Provider: the `gemm` crate's single-threaded kernels, with the work split across the
//! current rayon pool by this module (blocks of the larger output dimension). Chosen by
//! measurement on the step shapes of `mlp:784-1000-1000-10` at batch 128 (see
//! `bench/step_vs_pytorch.sh`): `gemm` and `matrixmultiply` reached the same ~95–105
//! GFLOP/s on one Zen 4 core for the large shapes, `gemm` was 2–3× faster on the thin
//! 10-column shapes, and splitting the output ourselves beat `gemm`'s own rayon mode.

use gemm::Parallelism;

/// Below this many multiply-adds a product runs on one thread.
const PARALLEL_MIN_WORK: usize = 1 << 19;

#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// Row-major `c[m×n] (+)= op(a) · op(b)` where `op(a)` is `a[m×k]`, or `a[k×m]ᵀ` when
/// `ta`; `op(b)` is `b[k×n]`, or `b[n×k]ᵀ` when `tb`. With `accumulate` the product is
/// added to `c`, otherwise `c` is overwritten.
///
/// The caller guarantees the slice lengths (checked by `Tensor::matmul`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<T: 'static + Copy + Send + Sync + One>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    ta: bool,
    b: &[T],
    tb: bool,
    c: &mut [T],
    accumulate: bool,
) {
    debug_assert_eq!(c.len(), m * n);
    gemm_raw(m, n, k, a, ta, b, tb, SendPtr(c.as_mut_ptr()), accumulate);
}

thread_local! {
    /// Set while [`serial`] runs: matrix products stay on the calling thread.
    static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every matrix product on the calling thread: for work that is already
/// split across the pool (one part per thread), where splitting each product again only
/// hands work between threads.
pub fn serial<R>(f: impl FnOnce() -> R) -> R {
    let before = SERIAL.replace(true);
    let out = f();
    SERIAL.set(before);
    out
}

#[allow(clippy::too_many_arguments)]
fn gemm_raw<T: 'static + Copy + Send + Sync + One>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    ta: bool,
    b: &[T],
    tb: bool,
    c: SendPtr<T>,
    accumulate: bool,
) {
    debug_assert_eq!(a.len(), m * k);
    debug_assert_eq!(b.len(), k * n);
    if m == 0 || n == 0 {
        return;
    }
    // (row stride, column stride) of each operand as stored.
    let (a_rs, a_cs) = if ta { (1, m as isize) } else { (k as isize, 1) };
    let (b_rs, b_cs) = if tb { (1, k as isize) } else { (n as isize, 1) };
    let threads = if SERIAL.get() {
        1
    } else {
        rayon::current_num_threads()
    };
    let work = m * n * k;
    let split_rows = m >= n;
    let dim = if split_rows { m } else { n };
    let parts = if threads > 1 && work >= PARALLEL_MIN_WORK {
        threads.min(dim / 8).max(1)
    } else {
        1
    };
    let (ap, bp, cp) = (
        SendPtr(a.as_ptr() as *mut T),
        SendPtr(b.as_ptr() as *mut T),
        c,
    );
    let run = move |lo: usize, hi: usize| {
        let (ap, bp, cp) = (ap.get(), bp.get(), cp.get());
        // SAFETY: lo..hi is within the split dimension; the blocks of `c` written by the
        // parts are disjoint and `a`, `b` are only read.
        unsafe {
            let (mm, nn, a0, b0, c0) = if split_rows {
                (
                    hi - lo,
                    n,
                    ap.offset(lo as isize * a_rs) as *const T,
                    bp as *const T,
                    cp.add(lo * n),
                )
            } else {
                (
                    m,
                    hi - lo,
                    ap as *const T,
                    bp.offset(lo as isize * b_cs) as *const T,
                    cp.add(lo),
                )
            };
            gemm::gemm(
                mm,
                nn,
                k,
                c0,
                1,
                n as isize,
                accumulate,
                a0,
                a_cs,
                a_rs,
                b0,
                b_cs,
                b_rs,
                T::one(),
                T::one(),
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    };
    if parts == 1 {
        run(0, dim);
        return;
    }
    // Blocks aligned to 16 so each part keeps whole micro-kernel tiles.
    let block = dim.div_ceil(parts).div_ceil(16) * 16;
    rayon::scope(|s| {
        let mut lo = 0;
        while lo < dim {
            let hi = (lo + block).min(dim);
            s.spawn(move |_| run(lo, hi));
            lo = hi;
        }
    });
}

/// A fresh row-major `op(a) · op(b)`; the output is written once, never zero-filled.
pub(crate) fn gemm_new<T: 'static + Copy + Send + Sync + One>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    ta: bool,
    b: &[T],
    tb: bool,
) -> Vec<T> {
    let mut c: Vec<T> = Vec::with_capacity(m * n);
    if k == 0 {
        // No products to sum: the result is zero.
        c.resize(m * n, T::zero());
        return c;
    }
    let out = SendPtr(c.as_mut_ptr());
    gemm_raw(m, n, k, a, ta, b, tb, out, false);
    // SAFETY: with k > 0 and `accumulate` false, gemm_raw wrote all m·n elements.
    unsafe { c.set_len(m * n) };
    c
}

/// The multiplicative identity, for `gemm`'s scaling factors.
pub(crate) trait One {
    fn one() -> Self;
    fn zero() -> Self;
}
impl One for f32 {
    fn one() -> Self {
        1.0
    }
    fn zero() -> Self {
        0.0
    }
}
impl One for f64 {
    fn one() -> Self {
        1.0
    }
    fn zero() -> Self {
        0.0
    }
}

//! Whether a sparse kernel would pay for sparse training's forward product: y = x·Wᵀ
//! with W (n × k) at density d, as our dense f32 GEMM against a row-compressed (CSR) W
//! applied as yᵀ[j] = Σ_k W[j,k]·xᵀ[k] (an axpy of the m batch rows per nonzero,
//! AVX-512 where the CPU has it), the transposes of x and y included. Default 128 × 1000
//! × 1000 (a batch through a 1000-unit layer) at densities 0.2, 0.1, 0.05; median of
//! REPS alternating runs.
//! `cargo bench --bench sparse_kernel -- --threads N [--reps R]`

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rayon::prelude::*;

mod common;
use common::arg;

use futureprop::tensor::Tensor;

/// W as rows of (column, value).
struct Csr {
    start: Vec<usize>,
    col: Vec<usize>,
    val: Vec<f32>,
}

/// row = Σ_e val[e]·xt[col[e]] over one row of W.
fn row_product(row: &mut [f32], col: &[usize], val: &[f32], xt: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was detected above.
        return unsafe { row_avx512(row, col, val, xt) };
    }
    row_portable(row, col, val, xt)
}

#[inline(always)]
fn row_portable(row: &mut [f32], col: &[usize], val: &[f32], xt: &[f32]) {
    let m = row.len();
    row.fill(0.0);
    for (&k, &a) in col.iter().zip(val) {
        for (y, x) in row.iter_mut().zip(&xt[k * m..(k + 1) * m]) {
            *y += a * x;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn row_avx512(row: &mut [f32], col: &[usize], val: &[f32], xt: &[f32]) {
    row_portable(row, col, val, xt)
}

/// yᵀ (n × m) from xᵀ (k × m).
fn csr_forward(w: &Csr, xt: &[f32], m: usize, yt: &mut [f32]) {
    yt.par_chunks_mut(m).enumerate().for_each(|(j, row)| {
        let (a, b) = (w.start[j], w.start[j + 1]);
        row_product(row, &w.col[a..b], &w.val[a..b], xt);
    });
}

fn main() -> futureprop::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let threads = arg(&args, "--threads", 1);
    let reps = arg(&args, "--reps", 100);
    let (m, n, k) = (128, 1000, 1000);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| futureprop::Error::config("threads", e.to_string()))?;
    let mut rng = futureprop::Rng::seed_from_u64(1);
    let xv: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    let x = Tensor::from_vec(&[m, k], xv)?;
    for density in [0.2, 0.1, 0.05] {
        let mut wv = vec![0.0f32; n * k];
        let (mut start, mut col, mut val) = (vec![0], Vec::new(), Vec::new());
        for j in 0..n {
            for c in 0..k {
                if rng.random::<f64>() < density {
                    let v = rng.random_range(-1.0..1.0);
                    wv[j * k + c] = v;
                    col.push(c);
                    val.push(v);
                }
            }
            start.push(col.len());
        }
        let csr = Csr { start, col, val };
        let w = Tensor::from_vec(&[n, k], wv)?;
        let mut yt = vec![0.0f32; n * m];
        let (mut td, mut ts) = (Vec::new(), Vec::new());
        let mut worst = 0.0f64;
        pool.install(|| -> futureprop::Result<()> {
            for _ in 0..reps {
                let t = Instant::now();
                let dense = std::hint::black_box(x.matmul(false, &w, true)?);
                td.push(t.elapsed().as_secs_f64());
                let t = Instant::now();
                let xt = x.transpose()?;
                csr_forward(&csr, xt.as_f32()?, m, &mut yt);
                let y = Tensor::from_vec(&[n, m], yt.clone())?.transpose()?;
                std::hint::black_box(&y);
                ts.push(t.elapsed().as_secs_f64());
                worst = worst.max(y.sub(&dense)?.norm() / dense.norm());
            }
            Ok(())
        })?;
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (d, s) = (med(&mut td), med(&mut ts));
        println!(
            "{m}×{k}×{n}, density {density}, {threads} thread(s): dense GEMM {:.3} ms, CSR {:.3} ms: sparse is {:.2}× the dense speed (relative difference {worst:.1e})",
            d * 1e3,
            s * 1e3,
            d / s
        );
    }
    Ok(())
}

//! Curvature and noise diagnostics of the training loss.
//!
//! - Sharpness: the Hessian eigenvalue of largest magnitude, by power iteration on exact
//!   Hessian–vector products (R-operator): v ← Hv/‖Hv‖, λ = vᵀHv.
//! - Hessian trace: Hutchinson's estimator E[vᵀHv] over Rademacher vectors v.
//! - Gradient noise scale B_noise = tr(Σ)/‖G‖² (McCandlish, Kaplan, Amodei et al. 2018,
//!   "An empirical model of large-batch training", App. A): from the squared norms of
//!   gradients at two batch sizes b < B, ‖G‖² ≈ (B‖g_B‖² − b‖g_b‖²)/(B − b) and
//!   tr(Σ) ≈ (‖g_b‖² − ‖g_B‖²)/(1/b − 1/B), each averaged over repetitions.

use rand::{Rng, SeedableRng};

use crate::data::{Dataset, shuffled_indices};
use crate::error::{Error, Result};
use crate::nn::curvature::hessian_vector;
use crate::nn::{Loss, Model, Params};
use crate::rule::{Batch, Rule};
use crate::tensor::Tensor;

fn random_direction(params: &Params, seed: u64, rademacher: bool) -> Result<Params> {
    let mut rng = crate::Rng::seed_from_u64(seed);
    let mut v = Params::new();
    for (n, t) in params.iter() {
        let vals: Vec<f64> = (0..t.len())
            .map(|_| {
                if rademacher {
                    if rng.random::<bool>() { 1.0 } else { -1.0 }
                } else {
                    rng.random_range(-1.0..1.0)
                }
            })
            .collect();
        v.insert(
            n,
            Tensor::from_vec_f64(t.shape(), vals)?.to_dtype(t.dtype()),
        );
    }
    Ok(v)
}

/// The Hessian eigenvalue of largest magnitude on `batch` (`iterations` power steps).
pub fn sharpness(
    model: &Model,
    params: &Params,
    batch: &Batch,
    loss: Loss,
    iterations: usize,
    seed: u64,
) -> Result<f64> {
    let mut v = random_direction(params, seed, false)?;
    v.scale_in_place(1.0 / v.global_norm().max(f64::MIN_POSITIVE));
    let mut lambda = 0.0;
    for _ in 0..iterations.max(1) {
        let hv = hessian_vector(model, params, &batch.x, &batch.target, loss, &v)?;
        lambda = v.dot(&hv)?;
        let norm = hv.global_norm();
        if norm == 0.0 {
            return Ok(0.0);
        }
        v = hv;
        v.scale_in_place(1.0 / norm);
    }
    Ok(lambda)
}

/// Hutchinson's estimate of tr(H) on `batch` from `samples` Rademacher probes.
pub fn hessian_trace(
    model: &Model,
    params: &Params,
    batch: &Batch,
    loss: Loss,
    samples: usize,
    seed: u64,
) -> Result<f64> {
    let mut sum = 0.0;
    for s in 0..samples.max(1) {
        let v = random_direction(params, seed.wrapping_add(s as u64), true)?;
        sum += v.dot(&hessian_vector(
            model,
            params,
            &batch.x,
            &batch.target,
            loss,
            &v,
        )?)?;
    }
    Ok(sum / samples.max(1) as f64)
}

/// The simple gradient noise scale and the two estimates it is the ratio of.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct NoiseScale {
    /// B_noise = tr(Σ)/‖G‖²; `None` when the estimate is not resolvable at these batch
    /// sizes (the unbiased estimate of ‖G‖² is not positive, or that of tr(Σ) is
    /// negative beyond rounding: noise dominates the difference between the batches).
    pub b_noise: Option<f64>,
    /// Unbiased estimate of ‖G‖², the squared norm of the full-data update.
    pub gradient_sq_norm: f64,
    /// Unbiased estimate of tr(Σ), the per-sample covariance's trace.
    pub trace_covariance: f64,
    /// The two batch sizes.
    pub batch_sizes: (usize, usize),
}

/// The simple gradient noise scale B_noise = tr(Σ)/‖G‖² of `rule`'s update on `data`,
/// from `repeats` batches of sizes `small` and `big` drawn with `seed` (McCandlish et
/// al. 2018, App. A: |G|² ≈ (B_big|G_big|² − B_small|G_small|²)/(B_big − B_small),
/// tr Σ ≈ (|G_small|² − |G_big|²)/(1/B_small − 1/B_big)).
#[allow(clippy::too_many_arguments)]
pub fn gradient_noise_scale(
    rule: &mut dyn Rule,
    model: &Model,
    params: &Params,
    data: &Dataset,
    loss: Loss,
    (small, big): (usize, usize),
    repeats: usize,
    seed: u64,
) -> Result<NoiseScale> {
    if small == 0 || big <= small || big > data.len() {
        return Err(Error::config(
            "noise scale",
            format!(
                "need 0 < small < big ≤ {} samples, got {small} and {big}",
                data.len()
            ),
        ));
    }
    let mean_sq = |rule: &mut dyn Rule, size: usize, salt: u64| -> Result<f64> {
        let mut s = 0.0;
        for r in 0..repeats.max(1) {
            let idx = shuffled_indices(data.len(), seed ^ salt, r as u64);
            let idx = &idx[..size];
            let b = Batch {
                x: data.x.gather_rows(idx)?,
                target: data.targets(idx)?,
            };
            s += rule
                .step(model, params, &b, loss)?
                .grads
                .global_norm()
                .powi(2);
        }
        Ok(s / repeats.max(1) as f64)
    };
    let (gs, gb) = (mean_sq(rule, small, 1)?, mean_sq(rule, big, 2)?);
    let (b, bb) = (small as f64, big as f64);
    let g2 = (bb * gb - b * gs) / (bb - b);
    let tr = (gs - gb) / (1.0 / b - 1.0 / bb);
    // tr Σ of noiseless data is 0 up to f32 rounding of the two norms.
    let rounding = 1e-6 * gs.max(gb) / (1.0 / b - 1.0 / bb);
    let resolvable = g2 > 0.0 && tr >= -rounding;
    Ok(NoiseScale {
        b_noise: resolvable.then(|| tr.max(0.0) / g2),
        gradient_sq_norm: g2,
        trace_covariance: tr,
        batch_sizes: (small, big),
    })
}

//! Small synthetic problems for tests and examples.

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use super::Dataset;
use crate::error::Result;
use crate::tensor::Tensor;

fn normal(rng: &mut crate::Rng) -> f64 {
    StandardNormal.sample(rng)
}

/// Two interleaving half circles (2 features, 2 classes) with Gaussian noise `noise`.
pub fn two_moons(n: usize, noise: f64, seed: u64) -> Result<Dataset> {
    let mut rng = crate::Rng::seed_from_u64(seed);
    let mut x = Vec::with_capacity(2 * n);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % 2;
        let t = rng.random_range(0.0..std::f64::consts::PI);
        let (px, py) = if c == 0 {
            (t.cos(), t.sin())
        } else {
            (1.0 - t.cos(), 0.5 - t.sin())
        };
        x.push((px + noise * normal(&mut rng)) as f32);
        x.push((py + noise * normal(&mut rng)) as f32);
        labels.push(c);
    }
    Ok(Dataset {
        x: Tensor::from_vec(&[n, 2], x)?,
        labels,
        classes: 2,
        reconstruct: false,
    })
}

/// `classes` interleaved spiral arms in the plane (2 features).
pub fn spirals(n: usize, classes: usize, noise: f64, seed: u64) -> Result<Dataset> {
    let mut rng = crate::Rng::seed_from_u64(seed);
    let classes = classes.max(1);
    let mut x = Vec::with_capacity(2 * n);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % classes;
        let r: f64 = rng.random_range(0.05..1.0);
        let theta = r * 4.0 + c as f64 * 2.0 * std::f64::consts::PI / classes as f64;
        x.push((r * theta.cos() + noise * normal(&mut rng)) as f32);
        x.push((r * theta.sin() + noise * normal(&mut rng)) as f32);
        labels.push(c);
    }
    Ok(Dataset {
        x: Tensor::from_vec(&[n, 2], x)?,
        labels,
        classes,
        reconstruct: false,
    })
}

/// Teacher–student regression: x ~ N(0, I), y = tanh(x W₁ᵀ) W₂ᵀ + noise with a random
/// teacher of `hidden` units. Returns `(x[n×inputs], y[n×outputs])`.
pub fn teacher_student(
    n: usize,
    inputs: usize,
    hidden: usize,
    outputs: usize,
    noise: f64,
    seed: u64,
) -> Result<(Tensor, Tensor)> {
    let mut rng = crate::Rng::seed_from_u64(seed);
    let mut draw = |len: usize, s: f64| -> Vec<f32> {
        (0..len).map(|_| (s * normal(&mut rng)) as f32).collect()
    };
    let w1 = Tensor::from_vec(
        &[hidden, inputs],
        draw(hidden * inputs, 1.0 / (inputs as f64).sqrt()),
    )?;
    let w2 = Tensor::from_vec(
        &[outputs, hidden],
        draw(outputs * hidden, 1.0 / (hidden as f64).sqrt()),
    )?;
    let x = Tensor::from_vec(&[n, inputs], draw(n * inputs, 1.0))?;
    let h = x
        .matmul(false, &w1, true)?
        .unary(crate::tensor::Unary::Tanh);
    let y = h.matmul(false, &w2, true)?;
    let eps = Tensor::from_vec(&[n, outputs], draw(n * outputs, noise))?;
    Ok((x, y.add(&eps)?))
}

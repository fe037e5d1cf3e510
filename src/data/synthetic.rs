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
        values: None,
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
        values: None,
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

/// The adding problem (Hochreiter & Schmidhuber 1997; the form of Arjovsky et al. 2016):
/// `n` sequences of `steps` steps, each step a pair (value ~ U[0, 1], marker); exactly one
/// marker in each half of the sequence is 1. The target is the sum of the two marked
/// values (regression; predicting the mean 1 gives a squared error of 1/6). Rows are
/// `[n, steps·2]`, step t in columns 2t, 2t + 1.
pub fn adding(n: usize, steps: usize, seed: u64) -> Result<Dataset> {
    if steps < 2 {
        return Err(crate::Error::config(
            "dataset",
            "the adding problem needs at least 2 steps",
        ));
    }
    let mut rng = crate::Rng::seed_from_u64(seed);
    let mut x = vec![0f32; n * steps * 2];
    let mut y = Vec::with_capacity(n);
    let half = steps / 2;
    for i in 0..n {
        let row = &mut x[i * steps * 2..(i + 1) * steps * 2];
        for t in 0..steps {
            row[2 * t] = rng.random_range(0.0..1.0);
        }
        let a = rng.random_range(0..half);
        let b = half + rng.random_range(0..steps - half);
        row[2 * a + 1] = 1.0;
        row[2 * b + 1] = 1.0;
        y.push(row[2 * a] + row[2 * b]);
    }
    Ok(Dataset {
        x: Tensor::from_vec(&[n, steps * 2], x)?,
        labels: vec![0; n],
        classes: 1,
        reconstruct: false,
        values: Some(Tensor::from_vec(&[n, 1], y)?),
    })
}

/// Steps of an `adding` or `adding:T` dataset name (default 50), `None` for other names.
pub fn adding_steps(name: &str) -> Option<Result<usize>> {
    match name.split_once(':') {
        None if name == "adding" => Some(Ok(50)),
        Some(("adding", t)) => Some(t.parse::<usize>().ok().filter(|t| *t >= 2).ok_or_else(|| {
            crate::Error::config(
                "dataset",
                format!("'{name}': expected adding:STEPS with STEPS ≥ 2, e.g. adding:50"),
            )
        })),
        _ => None,
    }
}

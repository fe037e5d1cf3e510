//! Helpers shared by the integration tests.

use futureprop::tensor::Tensor;
use rand::{Rng, SeedableRng};

/// A tensor of uniform draws in (−scale, scale), f64, from `seed`.
pub fn rand_tensor(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    let mut rng = futureprop::Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    Tensor::from_vec_f64(
        shape,
        (0..n).map(|_| rng.random_range(-scale..scale)).collect(),
    )
    .unwrap()
}

//! Helpers shared by the integration tests.

use futureprop::nn::{Init, Model, ModelSpec, Params};
use futureprop::tensor::{DType, Tensor};
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

/// An MLP from `spec` with biases and Xavier-normal f64 parameters from `seed`.
#[allow(dead_code)] // not every test binary uses it
pub fn model(spec: &str, act: &str, seed: u64) -> (Model, Params) {
    let m = Model::build(&ModelSpec {
        spec: spec.into(),
        activation: act.into(),
        bias: true,
    })
    .unwrap();
    let p = m
        .init_params(Init::XavierNormal, seed)
        .unwrap()
        .to_dtype(DType::F64);
    (m, p)
}

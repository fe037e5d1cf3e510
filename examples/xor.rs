//! The XOR story: a single-layer perceptron cannot separate XOR, a two-layer network
//! trained by backprop can.
//!
//!   cargo run --example xor

use futureprop::nn::{Init, Loss, Model, ModelSpec, Params, Target};
use futureprop::optim::{OptimizerConfig, StepContext, build_optimizer};
use futureprop::rule::{Batch, build_rule};
use futureprop::tensor::Tensor;

fn fit(spec: &str, rule: &str, opt: &str, lr: f64, steps: usize) -> futureprop::Result<f64> {
    let model = Model::build(&ModelSpec {
        spec: spec.into(),
        activation: "tanh".into(),
        bias: true,
    })?;
    let batch = Batch {
        x: Tensor::from_vec(&[4, 2], vec![0., 0., 0., 1., 1., 0., 1., 1.])?,
        target: Target::Classes(vec![0, 1, 1, 0]),
    };
    let mut params: Params = model.init_params(Init::XavierUniform, 1)?;
    let mut r = build_rule(rule)?;
    r.init(&model, &mut params, 1)?;
    let mut o = build_optimizer(&OptimizerConfig::new(opt, lr), steps as u64)?;
    for _ in 0..steps {
        let out = r.step(&model, &params, &batch, Loss::CrossEntropy)?;
        o.step(&mut params, &out.grads, &mut StepContext::empty())?;
    }
    let pred = model.forward(&params, &batch.x)?.argmax_rows()?;
    Ok(pred
        .iter()
        .zip([0, 1, 1, 0])
        .filter(|(p, y)| **p == *y)
        .count() as f64
        / 4.0)
}

fn main() -> futureprop::Result<()> {
    let p = fit("linear:2-2", "perceptron", "sgd", 1.0, 1000)?;
    let b = fit("mlp:2-8-2", "bp", "adam", 0.05, 500)?;
    println!("perceptron (linear:2-2): {:.0} % of XOR", 100.0 * p);
    println!("backprop (mlp:2-8-2, tanh): {:.0} % of XOR", 100.0 * b);
    Ok(())
}

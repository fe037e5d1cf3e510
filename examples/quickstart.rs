//! Train a small MLP on the two-moons problem with backprop and Adam.
//!
//! `cargo run --release --example quickstart`

use futureprop::data::{Batches, synthetic};
use futureprop::nn::{Init, Loss, Model, ModelSpec};
use futureprop::optim::{OptimizerConfig, StepContext, build_optimizer};
use futureprop::rule::build_rule;
use futureprop::train::evaluate;

fn main() -> futureprop::Result<()> {
    let train = synthetic::two_moons(1024, 0.1, 0)?;
    let test = synthetic::two_moons(512, 0.1, 1)?;
    let model = Model::build(&ModelSpec {
        spec: "mlp:2-32-32-2".into(),
        activation: "tanh".into(),
        bias: true,
    })?;
    let mut params = model.init_params(Init::Auto, 0)?;
    let mut rule = build_rule("bp")?;
    let cfg = OptimizerConfig::new("adam", 0.01);
    let epochs = 50;
    let mut opt = build_optimizer(&cfg, epochs * 16)?;
    for epoch in 0..epochs {
        for batch in Batches::new(&train, 64, true, 0, epoch) {
            let out = rule.step(&model, &params, &batch?, Loss::CrossEntropy)?;
            opt.step(&mut params, &out.grads, &mut StepContext::empty())?;
        }
        if (epoch + 1) % 10 == 0 {
            let e = evaluate(
                rule.as_ref(),
                &model,
                &params,
                &test,
                Loss::CrossEntropy,
                512,
            )?;
            println!(
                "epoch {:>3}: test loss {:.4}, accuracy {:.3}",
                epoch + 1,
                e.loss,
                e.accuracy
            );
        }
    }
    Ok(())
}

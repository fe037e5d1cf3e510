//! The vanishing-gradient story, measured: per-layer gradient norms of a 20-hidden-layer
//! MLP (width 256) on MNIST at initialisation and after one epoch, for
//! - sigmoid units with the "standard" initialisation U(±1/√fan_in) (Glorot & Bengio
//!   2010's baseline, PyTorch's `nn.Linear` default),
//! - ReLU units with He initialisation (He et al. 2015),
//! - pre-norm residual blocks x + relu(W·LayerNorm(x)) with He initialisation.
//!
//! Each weight matrix's gradient norm ‖∂L/∂W‖ on the same 512 training images, in depth
//! order, after backprop; one epoch of Adam (lr 1e-3, batch 128) in between.
//! `cargo bench --bench vanishing -- [--data DIR] [--out DIR]` writes
//! `gradient_norms.csv`, `at_init.svg`, `after_one_epoch.svg` and `summary.md`.

use std::path::PathBuf;

mod common;
use common::arg_str as arg;

use futureprop::data::{Batches, Normalize};
use futureprop::nn::{Init, Loss, Model, ModelSpec, Target};
use futureprop::optim::{OptimizerConfig, StepContext, build_optimizer};
use futureprop::rule::{Batch, build_rule};

/// ‖∂L/∂W‖ of every weight matrix, in the order the layers run.
fn layer_norms(
    model: &Model,
    params: &futureprop::nn::Params,
    batch: &Batch,
) -> futureprop::Result<Vec<f64>> {
    let out = build_rule("bp")?.step(model, params, batch, Loss::CrossEntropy)?;
    Ok(params
        .iter()
        .filter(|(n, _)| n.ends_with("weight") && !n.ends_with("norm.weight"))
        .map(|(n, _)| out.grads.get(n).map(|g| g.norm()).unwrap_or(0.0))
        .collect())
}

fn main() -> futureprop::Result<()> {
    futureprop::mem::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let data = PathBuf::from(arg(
        &args,
        "--data",
        &std::env::var("FUTUREPROP_DATA").unwrap_or_else(|_| "../shared/datasets".into()),
    ));
    let out = PathBuf::from(arg(&args, "--out", "reports/vanishing"));
    std::fs::create_dir_all(&out).map_err(|e| futureprop::Error::io(&out, e))?;
    let splits = futureprop::data::load(&data, "mnist", Normalize::Standard, 0)?;
    let idx: Vec<usize> = (0..512).collect();
    let probe = Batch {
        x: splits.train.x.gather_rows(&idx)?,
        target: splits.train.targets(&idx)?,
    };
    let depth = 20;
    let hidden = vec!["256"; depth].join("-");
    let configs = [
        (
            "sigmoid, standard init",
            format!("mlp:784-{hidden}-10"),
            "sigmoid",
            "torch",
        ),
        (
            "ReLU, He init",
            format!("mlp:784-{hidden}-10"),
            "relu",
            "he-normal",
        ),
        (
            "residual + LayerNorm, ReLU, He init",
            format!("resmlp:784-256x{depth}-10"),
            "relu",
            "he-normal",
        ),
    ];
    let mut csv = String::from("config,phase,layer,gradient_norm\n");
    let mut summary = String::from(
        "# Vanishing gradients, measured\n\nProduced by `cargo bench --bench vanishing`: MNIST, 20 hidden layers of 256, \
         ‖∂L/∂W‖ per weight matrix (input layer = 1) on the first 512 training images, at initialisation and after one \
         epoch of Adam (lr 1e-3, batch 128). Plots: `at_init.svg`, `after_one_epoch.svg` (log₁₀ of the norm).\n\n\
         | configuration | first/last layer gradient norm at init | after one epoch | test accuracy after one epoch |\n|---|---|---|---|\n",
    );
    let (mut init_series, mut trained_series) = (Vec::new(), Vec::new());
    for (label, spec, act, init) in configs {
        let model = Model::build(&ModelSpec {
            spec: spec.clone(),
            activation: act.into(),
            bias: true,
        })?;
        let mut params = model.init_params(Init::parse(init)?, 0)?;
        let before = layer_norms(&model, &params, &probe)?;
        let mut rule = build_rule("bp")?;
        let steps = splits.train.len().div_ceil(128) as u64;
        let mut opt = build_optimizer(&OptimizerConfig::new("adam", 1e-3), steps)?;
        for b in Batches::new(&splits.train, 128, true, 0, 0) {
            let step = rule.step(&model, &params, &b?, Loss::CrossEntropy)?;
            opt.step(&mut params, &step.grads, &mut StepContext::empty())?;
        }
        let after = layer_norms(&model, &params, &probe)?;
        let pred = model.forward(&params, &splits.test.x)?.argmax_rows()?;
        let Target::Classes(y) = splits
            .test
            .targets(&(0..splits.test.len()).collect::<Vec<_>>())?
        else {
            unreachable!("MNIST has class labels")
        };
        let acc = pred.iter().zip(&y).filter(|(a, b)| a == b).count() as f64 / y.len() as f64;
        for (phase, norms, series) in [
            ("init", &before, &mut init_series),
            ("one_epoch", &after, &mut trained_series),
        ] {
            for (i, g) in norms.iter().enumerate() {
                csv += &format!("{label},{phase},{},{g:e}\n", i + 1);
            }
            series.push((
                label.to_string(),
                norms
                    .iter()
                    .enumerate()
                    .map(|(i, g)| ((i + 1) as f64, g.max(1e-30).log10()))
                    .collect::<Vec<_>>(),
            ));
        }
        let ratio = |v: &[f64]| {
            format!(
                "{:.3e} / {:.3e} ({:.1e}×)",
                v[0],
                v[v.len() - 1],
                v[0] / v[v.len() - 1]
            )
        };
        summary += &format!(
            "| {label} | {} | {} | {:.2} % |\n",
            ratio(&before),
            ratio(&after),
            100.0 * acc
        );
        println!(
            "{label}: init {} | one epoch {} | test {:.2} %",
            ratio(&before),
            ratio(&after),
            100.0 * acc
        );
    }
    let write = |name: &str, text: &str| {
        let p = out.join(name);
        std::fs::write(&p, text).map_err(|e| futureprop::Error::io(&p, e))
    };
    write("gradient_norms.csv", &csv)?;
    write("summary.md", &summary)?;
    futureprop::bench::plot::lines(
        &out.join("at_init.svg"),
        "Gradient norm per layer at initialisation",
        "layer (1 = input)",
        "log10 ‖∂L/∂W‖",
        &init_series,
    )?;
    futureprop::bench::plot::lines(
        &out.join("after_one_epoch.svg"),
        "Gradient norm per layer after one epoch",
        "layer (1 = input)",
        "log10 ‖∂L/∂W‖",
        &trained_series,
    )?;
    Ok(())
}

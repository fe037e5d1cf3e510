//! What the same seed reproduces: every rule's step is bit-for-bit the same on repeated
//! runs at one thread count, and agrees to f32 rounding across thread counts (large
//! GEMMs are split into one block per thread, and the kernel's k-blocking follows the
//! block's shape, so sums are ordered differently). Sizes are above every parallel
//! threshold: GEMM work 2¹⁹, element-wise 2¹⁶, predictive coding's 64-row split.

use futureprop::nn::{Init, Loss, Model, ModelSpec, Target};
use futureprop::rule::{Batch, build_rule, check_layers};
use futureprop::tensor::DType;

mod common;

/// The rule's update for one batch, as (name, f64 values) in name order, computed in a
/// pool of `threads` threads.
fn update(rule: &str, spec: &str, threads: usize) -> Vec<(String, Vec<f64>)> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let model = Model::build(&ModelSpec {
            spec: spec.into(),
            activation: "relu".into(),
            bias: true,
        })
        .unwrap();
        let mut r = build_rule(rule).unwrap();
        let mut p = model.init_params(Init::Torch, 3).unwrap();
        r.init(&model, &mut p, 3).unwrap();
        let n = 256;
        let batch = Batch {
            x: common::rand_tensor(&[n, model.inputs()], 7, 1.0).to_dtype(DType::F32),
            target: Target::Classes((0..n).map(|i| (i * 7) % model.outputs()).collect()),
        };
        let out = r.step(&model, &p, &batch, Loss::CrossEntropy).unwrap();
        let mut g: Vec<(String, Vec<f64>)> = out
            .grads
            .iter()
            .map(|(k, t)| (k.to_string(), t.to_vec_f64()))
            .collect();
        g.push(("loss".into(), vec![out.loss]));
        g.sort_by(|a, b| a.0.cmp(&b.0));
        g
    })
}

/// A model `rule` trains: single-layer for the classic rules, recurrent for UORO.
fn model_for(rule: &str) -> &'static str {
    let spec = match rule {
        "perceptron" | "lms" | "hebbian" => "linear:256-10",
        "uoro" => "rnn:8x32-256-10",
        _ => "mlp:256-256-256-10",
    };
    let m = Model::build(&ModelSpec {
        spec: spec.into(),
        activation: "relu".into(),
        bias: true,
    })
    .unwrap();
    check_layers(rule, &m).unwrap();
    spec
}

#[test]
fn every_rule_repeats_bit_for_bit_and_agrees_across_thread_counts() {
    for rule in &futureprop::rule::names() {
        let spec = model_for(rule);
        let one = update(rule, spec, 1);
        assert_eq!(one, update(rule, spec, 1), "{rule}: 1 thread, run twice");
        let two = update(rule, spec, 2);
        assert_eq!(two, update(rule, spec, 2), "{rule}: 2 threads, run twice");
        assert_eq!(
            one.iter().map(|e| &e.0).collect::<Vec<_>>(),
            two.iter().map(|e| &e.0).collect::<Vec<_>>()
        );
        for ((name, a), (_, b)) in one.iter().zip(&two) {
            let diff = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>();
            let norm = a.iter().map(|x| x * x).sum::<f64>();
            assert!(
                diff.sqrt() <= 1e-4 * norm.sqrt() + 1e-9,
                "{rule} {name}: 1 vs 2 threads differ by {:.3e} (norm {:.3e})",
                diff.sqrt(),
                norm.sqrt()
            );
        }
    }
}

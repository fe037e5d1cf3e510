//! Evolution strategies as a rule (`--rule es`): the antithetic estimate is unbiased for
//! the gradient of a quadratic (the Gaussian-smoothed loss is the loss plus a constant),
//! a population trains a small net with no backward pass, and bad settings are named.

use futureprop::data::Splits;
use futureprop::nn::{Init, Loss, Model, ModelSpec, Target};
use futureprop::rule::{Backprop, Batch, Rule, build_rule_with};
use futureprop::tensor::DType;
use futureprop::train::{self, TrainConfig};

mod common;
use common::{prototypes, rand_tensor};

#[test]
fn the_antithetic_estimate_is_unbiased_for_a_quadratic() {
    // MSE of a Linear layer: quadratic in (W, b), so L(θ + σε) − L(θ − σε) = 2σ∇L·ε
    // exactly and E[ĝ] = ∇L whatever σ.
    let m = Model::build(&ModelSpec {
        spec: "linear:4-3".into(),
        ..Default::default()
    })
    .unwrap();
    let mut p = m
        .init_params(Init::XavierNormal, 1)
        .unwrap()
        .to_dtype(DType::F64);
    let mut rule = build_rule_with(
        "es",
        &serde_json::json!({"population": 2000, "sigma": 0.3, "fitness_shaping": "none"}),
    )
    .unwrap();
    rule.init(&m, &mut p, 5).unwrap();
    let batch = Batch {
        x: rand_tensor(&[6, 4], 2, 1.0),
        target: Target::Values(rand_tensor(&[6, 3], 3, 1.0)),
    };
    let exact = Backprop.step(&m, &p, &batch, Loss::Mse).unwrap().grads;
    let flat = |g: &futureprop::nn::Grads| -> Vec<f64> {
        ["fc1.weight", "fc1.bias"]
            .iter()
            .flat_map(|n| g.get(n).unwrap().to_vec_f64())
            .collect()
    };
    let want = flat(&exact);
    let norm = want.iter().map(|v| v * v).sum::<f64>().sqrt();
    let (steps, mut mean) = (10, vec![0.0; want.len()]);
    for _ in 0..steps {
        let out = rule.step(&m, &p, &batch, Loss::Mse).unwrap();
        let g = flat(&out.grads);
        // One step's 1000 directions already point the right way.
        let cos = g.iter().zip(&want).map(|(a, b)| a * b).sum::<f64>()
            / (norm * g.iter().map(|v| v * v).sum::<f64>().sqrt());
        assert!(cos > 0.9, "cosine {cos}");
        for (m, v) in mean.iter_mut().zip(g) {
            *m += v / steps as f64;
        }
    }
    // 10 000 directions in 15 dimensions: the mean is within a few √(15/10⁴) ≈ 4 %.
    let err = mean
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        .sqrt()
        / norm;
    assert!(err < 0.1, "relative error {err}");
}

#[test]
fn a_population_trains_a_small_net_without_a_backward_pass() {
    let t = tempfile::tempdir().unwrap();
    let splits = Splits {
        train: prototypes(256, 1),
        validation: None,
        test: prototypes(64, 2),
    };
    let cfg = TrainConfig {
        model: "mlp:64-16-4".into(),
        rule: "es".into(),
        epochs: 5,
        batch_size: 32,
        quiet: true,
        out: Some(t.path().to_path_buf()),
        optim: futureprop::optim::OptimizerConfig::new("adam", 0.03),
        ..TrainConfig::default()
    };
    let s = train::run(&cfg, &splits, None).unwrap();
    let acc = s["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.8, "accuracy {acc}");
    for (settings, word) in [
        (serde_json::json!({"population": 3}), "population"),
        (serde_json::json!({"sigma": 0.0}), "sigma"),
        (
            serde_json::json!({"fitness_shaping": "fitness"}),
            "fitness_shaping",
        ),
    ] {
        let e = build_rule_with("es", &settings).err().unwrap().to_string();
        assert!(e.contains(word), "{e}");
    }
}

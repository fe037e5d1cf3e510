//! The classic single-layer rules: hand-computed updates, LMS as the least-squares
//! gradient, Oja's rule finding the first principal component, and the XOR story (a
//! perceptron cannot fit it, a two-layer network trained by backprop does).

use futureprop::nn::{Init, Loss, Model, ModelSpec, Params, Target};
use futureprop::optim::{OptimizerConfig, StepContext, build_optimizer};
use futureprop::rule::{Batch, build_rule};
use futureprop::tensor::Tensor;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

fn build(spec: &str, act: &str) -> Model {
    Model::build(&ModelSpec {
        spec: spec.into(),
        activation: act.into(),
        bias: true,
    })
    .unwrap()
}

fn xor() -> Batch {
    Batch {
        x: Tensor::from_vec_f64(&[4, 2], vec![0., 0., 0., 1., 1., 0., 1., 1.]).unwrap(),
        target: Target::Classes(vec![0, 1, 1, 0]),
    }
}

fn accuracy(m: &Model, p: &Params, b: &Batch) -> f64 {
    let Target::Classes(l) = &b.target else {
        unreachable!()
    };
    let pred = m.forward(p, &b.x).unwrap().argmax_rows().unwrap();
    pred.iter().zip(l).filter(|(a, b)| a == b).count() as f64 / l.len() as f64
}

fn train(
    rule: &str,
    opt: &str,
    lr: f64,
    m: &Model,
    p: &mut Params,
    b: &Batch,
    steps: usize,
) -> f64 {
    let mut r = build_rule(rule).unwrap();
    r.init(m, p, 0).unwrap();
    let mut o = build_optimizer(&OptimizerConfig::new(opt, lr), steps as u64).unwrap();
    let mut best: f64 = 0.0;
    for _ in 0..steps {
        let out = r.step(m, p, b, Loss::CrossEntropy).unwrap();
        o.step(p, &out.grads, &mut StepContext::empty()).unwrap();
        best = best.max(accuracy(m, p, b));
    }
    best
}

#[test]
fn perceptron_cannot_fit_xor_but_a_two_layer_backprop_network_does() {
    let b = xor();
    let m = build("linear:2-2", "identity");
    let mut p = m
        .init_params(Init::XavierUniform, 1)
        .unwrap()
        .to_dtype(futureprop::tensor::DType::F64);
    let best = train("perceptron", "sgd", 1.0, &m, &mut p, &b, 2000);
    assert!(best <= 0.75, "a linear classifier fit XOR: {best}");

    let m = build("mlp:2-8-2", "tanh");
    let mut p = m
        .init_params(Init::XavierUniform, 1)
        .unwrap()
        .to_dtype(futureprop::tensor::DType::F64);
    let best = train("bp", "adam", 0.05, &m, &mut p, &b, 500);
    assert_eq!(best, 1.0, "backprop on 2-8-2 did not fit XOR");
}

#[test]
fn perceptron_update_on_a_hand_case() {
    let m = build("linear:2-2", "identity");
    let mut p = Params::new();
    // Class 1 scores higher for x = (1, 2), but the label is 0.
    p.insert(
        "fc1.weight",
        Tensor::from_vec_f64(&[2, 2], vec![0., 0., 1., 1.]).unwrap(),
    );
    p.insert(
        "fc1.bias",
        Tensor::from_vec_f64(&[2], vec![0., 0.]).unwrap(),
    );
    let b = Batch {
        x: Tensor::from_vec_f64(&[2, 2], vec![1., 2., -1., 0.]).unwrap(),
        target: Target::Classes(vec![0, 0]),
    };
    let out = build_rule("perceptron")
        .unwrap()
        .step(&m, &p, &b, Loss::CrossEntropy)
        .unwrap();
    // Sample 0 is wrong: ΔW₀ = +x, ΔW₁ = −x; sample 1 (scores 0 vs −1) is right.
    // Gradient sign, averaged over 2 samples: −ΔW/2.
    assert_eq!(
        out.grads.get("fc1.weight").unwrap().to_vec_f64(),
        vec![-0.5, -1.0, 0.5, 1.0]
    );
    assert_eq!(
        out.grads.get("fc1.bias").unwrap().to_vec_f64(),
        vec![-0.5, 0.5]
    );
}

#[test]
fn lms_is_the_least_squares_gradient() {
    let m = build("linear:3-2", "identity");
    let p = m
        .init_params(Init::XavierUniform, 2)
        .unwrap()
        .to_dtype(futureprop::tensor::DType::F64);
    let b = Batch {
        x: Tensor::from_vec_f64(&[4, 3], (0..12).map(|i| (i as f64 * 0.37).sin()).collect())
            .unwrap(),
        target: Target::Values(
            Tensor::from_vec_f64(&[4, 2], (0..8).map(|i| (i as f64).cos()).collect()).unwrap(),
        ),
    };
    let lms = build_rule("lms")
        .unwrap()
        .step(&m, &p, &b, Loss::Mse)
        .unwrap();
    let bp = build_rule("bp")
        .unwrap()
        .step(&m, &p, &b, Loss::Mse)
        .unwrap();
    // Our MSE is the mean over all n·c elements of (z − t)², so its gradient is
    // 2/c times LMS's (1/n)Σ(z − t)xᵀ.
    for (n, g) in bp.grads.iter() {
        let (a, want) = (lms.grads.get(n).unwrap().to_vec_f64(), g.to_vec_f64());
        let c = 2.0;
        for (x, y) in a.iter().zip(&want) {
            assert!((x * 2.0 / c - y).abs() < 1e-12, "{n}: LMS {x} vs BP {y}");
        }
    }
}

#[test]
fn oja_finds_the_first_principal_component_with_unit_norm() {
    // Inputs with covariance R diag(9, 1) Rᵀ, R a 30° rotation: PC1 = (cos 30°, sin 30°).
    let mut rng = futureprop::Rng::seed_from_u64(3);
    let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
    let n = 4000;
    let mut v = Vec::with_capacity(2 * n);
    for _ in 0..n {
        let (a, b): (f64, f64) = (
            StandardNormal.sample(&mut rng),
            StandardNormal.sample(&mut rng),
        );
        let (a, b) = (3.0 * a, b);
        v.extend([c * a - s * b, s * a + c * b]);
    }
    let x = Tensor::from_vec_f64(&[n, 2], v).unwrap();
    let m = Model::build(&ModelSpec {
        spec: "linear:2-1".into(),
        activation: "identity".into(),
        bias: false,
    })
    .unwrap();
    let mut p = m
        .init_params(Init::XavierUniform, 4)
        .unwrap()
        .to_dtype(futureprop::tensor::DType::F64);
    let mut rule = build_rule("hebbian").unwrap();
    let mut opt = build_optimizer(&OptimizerConfig::new("sgd", 0.01), 1).unwrap();
    for epoch in 0..5 {
        for k in 0..(n / 50) {
            let idx: Vec<usize> = (k * 50..(k + 1) * 50).collect();
            let b = Batch {
                x: x.gather_rows(&idx).unwrap(),
                target: Target::Classes(vec![0; 50]),
            };
            let out = rule.step(&m, &p, &b, Loss::Mse).unwrap();
            assert!(out.grads.get("fc1.weight").is_ok(), "epoch {epoch}");
            opt.step(&mut p, &out.grads, &mut StepContext::empty())
                .unwrap();
        }
    }
    let w = p.get("fc1.weight").unwrap().to_vec_f64();
    let norm = (w[0] * w[0] + w[1] * w[1]).sqrt();
    let align = (w[0] * c + w[1] * s).abs() / norm;
    assert!((norm - 1.0).abs() < 0.05, "‖w‖ = {norm}");
    assert!(align > 0.995, "|cos(w, PC1)| = {align}");
}

#[test]
fn classic_rules_name_the_model_they_need() {
    let m = build("mlp:2-3-2", "tanh");
    let p = m.init_params(Init::XavierUniform, 0).unwrap();
    for r in ["perceptron", "lms", "hebbian"] {
        let b = Batch {
            x: Tensor::from_vec(&[1, 2], vec![0.0, 1.0]).unwrap(),
            target: Target::Classes(vec![0]),
        };
        let e = build_rule(r)
            .unwrap()
            .step(&m, &p, &b, Loss::CrossEntropy)
            .unwrap_err()
            .to_string();
        assert!(e.contains("linear:IN-OUT"), "{r}: {e}");
    }
}

#[test]
fn subspace_variance_scores_the_principal_subspace_100_in_any_basis() {
    // x = z·diag(5, 3, 1, 0.5) with z standard normal: the top-2 subspace is e₁, e₂.
    let mut rng = futureprop::Rng::seed_from_u64(9);
    let n = 2000;
    let sd = [5.0, 3.0, 1.0, 0.5];
    let v: Vec<f64> = (0..n * 4)
        .map(|i| {
            let z: f64 = StandardNormal.sample(&mut rng);
            z * sd[i % 4]
        })
        .collect();
    let x = Tensor::from_vec_f64(&[n, 4], v).unwrap();
    let score = |w: Vec<f64>| {
        futureprop::diag::subspace_variance(&Tensor::from_vec_f64(&[2, 4], w).unwrap(), &x).unwrap()
    };
    // e₁, e₂ mixed by an invertible 2×2 matrix: the same row space.
    let top = score(vec![2.0, 1.0, 0.0, 0.0, -1.0, 3.0, 0.0, 0.0]);
    assert!((top - 100.0).abs() < 0.5, "{top}");
    // e₁, e₃: (25 + 1)/(25 + 9) of the best, up to sampling.
    let worse = score(vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    assert!((worse - 100.0 * 26.0 / 34.0).abs() < 3.0, "{worse}");
    let e = futureprop::diag::subspace_variance(
        &Tensor::from_vec_f64(&[2, 3], vec![0.0; 6]).unwrap(),
        &x,
    );
    assert!(e.unwrap_err().to_string().contains("do not fit"));
}

//! One table of tests for every optimizer: convergence on a quadratic, and two-step
//! numeric fixtures computed with PyTorch 2.15 (float64; `torch.optim.SGD/Adam/AdamW`,
//! θ₀ = [0.5, −1.5, 2], gradients g₁ = [0.1, −0.2, 0.3], g₂ = [−0.4, 0.5, 0.6], lr 0.1).

use futureprop::nn::Params;
use futureprop::optim::{OPTIMIZERS, OptimizerConfig, Schedule, StepContext, build_optimizer};
use futureprop::tensor::Tensor;

fn cfg(name: &str, lr: f64) -> OptimizerConfig {
    OptimizerConfig {
        name: name.into(),
        lr,
        ..Default::default()
    }
}

fn params(v: &[f64]) -> Params {
    let mut p = Params::new();
    p.insert("w", Tensor::from_vec_f64(&[v.len()], v.to_vec()).unwrap());
    p
}

/// (label, config, θ after two steps, tolerance)
fn fixtures() -> Vec<(&'static str, OptimizerConfig, [f64; 3], f64)> {
    let wd = |mut c: OptimizerConfig| {
        c.weight_decay = 0.01;
        c
    };
    let clip = |mut c: OptimizerConfig| {
        c.clip_norm = Some(0.5);
        c
    };
    vec![
        ("sgd", cfg("sgd", 0.1), [0.53, -1.53, 1.91], 1e-12),
        (
            "sgd + L2 0.01",
            wd(cfg("sgd", 0.1)),
            [0.5290105, -1.5270215, 1.906032],
            1e-12,
        ),
        (
            "momentum 0.9",
            cfg("momentum", 0.1),
            [0.521, -1.512, 1.883],
            1e-12,
        ),
        (
            "nesterov 0.9",
            cfg("nesterov", 0.1),
            [0.5488999999999999, -1.5408, 1.8047],
            1e-12,
        ),
        (
            "adam",
            cfg("adam", 0.1),
            [0.4559503574851284, -1.444221530217233, 1.8034818027856336],
            1e-12,
        ),
        (
            "adam + L2 0.01",
            wd(cfg("adam", 0.1)),
            [0.45476529206769234, -1.4409605477168215, 1.8031311908531402],
            1e-12,
        ),
        (
            "adamw 0.01",
            wd(cfg("adamw", 0.1)),
            [0.4550508574751284, -1.4413230302122328, 1.7995838027823003],
            1e-12,
        ),
        // PyTorch's clip_grad_norm_ divides by ‖g‖ + 1e-6; we divide by ‖g‖ exactly.
        (
            "sgd + clip 0.5",
            clip(cfg("sgd", 0.1)),
            [0.5127920893179312, -1.508490111647414, 1.9358118660231032],
            1e-6,
        ),
    ]
}

#[test]
fn two_step_fixtures_match_pytorch() {
    let g = [[0.1, -0.2, 0.3], [-0.4, 0.5, 0.6]];
    for (label, c, want, tol) in fixtures() {
        let mut opt = build_optimizer(&c, 100).unwrap();
        let mut p = params(&[0.5, -1.5, 2.0]);
        for gk in &g {
            opt.step(&mut p, &params(gk), &mut StepContext::empty())
                .unwrap();
        }
        let got = p.get("w").unwrap().to_vec_f64();
        for (a, b) in got.iter().zip(want) {
            assert!(
                (a - b).abs() <= tol,
                "{label}: got {got:?}, PyTorch {want:?}"
            );
        }
    }
}

#[test]
fn every_optimizer_converges_on_a_quadratic() {
    // f(θ) = ½ Σ aᵢ(θᵢ − cᵢ)², ∇f = a ⊙ (θ − c); ill-conditioned (a from 0.5 to 4).
    let a = [0.5, 1.0, 2.0, 4.0];
    let c = [1.0, -2.0, 0.5, 3.0];
    for (name, _) in OPTIMIZERS {
        let lr = if name.starts_with("adam") { 0.05 } else { 0.1 };
        let mut conf = cfg(name, lr);
        conf.schedule = "cosine".into();
        let steps = 2000;
        let mut opt = build_optimizer(&conf, steps).unwrap();
        let mut p = params(&[0.0; 4]);
        for _ in 0..steps {
            let th = p.get("w").unwrap().to_vec_f64();
            let g: Vec<f64> = (0..4).map(|i| a[i] * (th[i] - c[i])).collect();
            opt.step(&mut p, &params(&g), &mut StepContext::empty())
                .unwrap();
        }
        let th = p.get("w").unwrap().to_vec_f64();
        let err = th
            .iter()
            .zip(c)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-3, "{name}: θ = {th:?}, optimum {c:?}");
    }
}

#[test]
fn state_round_trip_continues_identically() {
    // Saving state after one step and loading it into a fresh optimizer gives the same
    // second step as never stopping.
    let g1 = params(&[0.1, -0.2, 0.3]);
    let g2 = params(&[-0.4, 0.5, 0.6]);
    for (label, c, _, _) in fixtures() {
        let mut a = build_optimizer(&c, 100).unwrap();
        let mut pa = params(&[0.5, -1.5, 2.0]);
        a.step(&mut pa, &g1, &mut StepContext::empty()).unwrap();
        let mut b = build_optimizer(&c, 100).unwrap();
        b.load_state(&a.state()).unwrap();
        let mut pb = pa.clone();
        a.step(&mut pa, &g2, &mut StepContext::empty()).unwrap();
        b.step(&mut pb, &g2, &mut StepContext::empty()).unwrap();
        assert_eq!(pa, pb, "{label}");
    }
}

#[test]
fn parameters_without_gradient_are_untouched() {
    let mut p = params(&[1.0, 2.0, 3.0]);
    p.insert(
        "frozen",
        Tensor::from_vec_f64(&[2], vec![5.0, 6.0]).unwrap(),
    );
    let mut opt = build_optimizer(&cfg("adam", 0.1), 10).unwrap();
    opt.step(&mut p, &params(&[1.0, 1.0, 1.0]), &mut StepContext::empty())
        .unwrap();
    assert_eq!(p.get("frozen").unwrap().to_vec_f64(), vec![5.0, 6.0]);
}

#[test]
fn schedules_follow_their_formulas() {
    let s = Schedule::parse("step:10:0.5", 100).unwrap();
    assert_eq!(
        (s.factor(0), s.factor(9), s.factor(10), s.factor(25)),
        (1.0, 1.0, 0.5, 0.25)
    );
    let s = Schedule::parse("cosine", 100).unwrap();
    assert_eq!(s.factor(0), 1.0);
    assert!((s.factor(50) - 0.5).abs() < 1e-12);
    assert!(s.factor(100).abs() < 1e-12);
    let s = Schedule::parse("warmup:4,constant", 100).unwrap();
    assert_eq!(
        (s.factor(0), s.factor(1), s.factor(3), s.factor(50)),
        (0.25, 0.5, 1.0, 1.0)
    );
    // η₀/(1 + k/τ)
    let s = Schedule::parse("robbins-monro:10", 100).unwrap();
    assert_eq!((s.factor(0), s.factor(10), s.factor(30)), (1.0, 0.5, 0.25));
    let s = Schedule::parse("warmup:10,cosine:0.1", 110).unwrap();
    assert!((s.factor(10) - 1.0).abs() < 1e-12 && (s.factor(110) - 0.1).abs() < 1e-12);
    for bad in ["cosine:x", "step:0:0.5", "linear", "robbins-monro:-1"] {
        assert!(
            Schedule::parse(bad, 10).is_err(),
            "{bad} should be rejected"
        );
    }
}

#[test]
fn bad_hyperparameters_are_rejected_with_names() {
    let e = build_optimizer(&cfg("adagrad2", 0.1), 1)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("unknown optimizer 'adagrad2'") && e.contains("adamw"),
        "{e}"
    );
    let e = build_optimizer(&cfg("sgd", -1.0), 1)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("learning rate"), "{e}");
}

#[test]
fn no_decay_on_bias_exempts_biases() {
    let mut c = cfg("sgd", 1.0);
    c.weight_decay = 0.5;
    c.no_decay_on_bias = true;
    let mut opt = build_optimizer(&c, 1).unwrap();
    let mut p = Params::new();
    p.insert("fc.weight", Tensor::from_vec_f64(&[1], vec![2.0]).unwrap());
    p.insert("fc.bias", Tensor::from_vec_f64(&[1], vec![2.0]).unwrap());
    let mut g = p.zeros_like();
    g.insert("fc.weight", Tensor::from_vec_f64(&[1], vec![0.0]).unwrap());
    opt.step(&mut p, &g, &mut StepContext::empty()).unwrap();
    // weight: 2 − 1·(0 + 0.5·2) = 1; bias: unchanged.
    assert_eq!(p.get("fc.weight").unwrap().to_vec_f64(), vec![1.0]);
    assert_eq!(p.get("fc.bias").unwrap().to_vec_f64(), vec![2.0]);
}

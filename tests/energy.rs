//! Energy-based rules against the backprop oracle: predictive coding with fixed
//! predictions gives backprop's updates; standard inference approaches them for small
//! output errors; relaxation converges.

mod common;
use common::{cosine, model, rand_tensor};
use futureprop::nn::{Init, Loss, Model, ModelSpec, Params, Target};
use futureprop::rule::{Batch, Rule, build_rule, build_rule_with};
use futureprop::tensor::{DType, Tensor};
use rand::SeedableRng;

fn pc(steps: usize, gamma: f64, variant: &str) -> Box<dyn Rule> {
    build_rule_with(
        "pc",
        &serde_json::json!({
            "steps": steps,
            "gamma": gamma,
            "variant": variant,
        }),
    )
    .unwrap()
}

fn class_batch(rows: usize, inputs: usize, classes: usize, seed: u64) -> Batch {
    Batch {
        x: rand_tensor(&[rows, inputs], seed, 1.0),
        target: Target::Classes((0..rows).map(|i| (i * 5 + 1) % classes).collect()),
    }
}

#[test]
fn fixed_prediction_pc_gives_backprop_updates() {
    let (m, p) = model("mlp:5-8-7-6-3", "tanh", 1);
    let batch = class_batch(9, 5, 3, 2);
    let bp = build_rule("bp")
        .unwrap()
        .step(&m, &p, &batch, Loss::CrossEntropy)
        .unwrap();
    // γ = 1: one step per hidden layer reaches the fixed point exactly.
    // Small γ: geometric convergence to the same point.
    for (steps, gamma, tol) in [(3, 1.0, 1e-12), (400, 0.1, 1e-9)] {
        let out = pc(steps, gamma, "fixed-prediction")
            .step(&m, &p, &batch, Loss::CrossEntropy)
            .unwrap();
        assert_eq!(out.loss, bp.loss);
        for (n, g) in bp.grads.iter() {
            let (a, b) = (out.grads.get(n).unwrap().to_vec_f64(), g.to_vec_f64());
            let scale = b.iter().fold(1e-6f64, |s, v| s.max(v.abs()));
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x - y).abs() <= tol * scale,
                    "T={steps} γ={gamma} {n}: PC {x} vs BP {y}"
                );
            }
        }
    }
}

#[test]
fn standard_pc_approaches_backprop_for_small_output_errors() {
    let (m, p) = model("mlp:4-10-10-3", "tanh", 3);
    let x = rand_tensor(&[12, 4], 4, 1.0);
    let out = m.forward(&p, &x).unwrap();
    // Targets close to the prediction: the regime of Whittington & Bogacz's equivalence.
    let y = out.add(&rand_tensor(&[12, 3], 5, 0.01)).unwrap();
    let batch = Batch {
        x,
        target: Target::Values(y),
    };
    let bp = build_rule("bp")
        .unwrap()
        .step(&m, &p, &batch, Loss::Mse)
        .unwrap();
    // Small γ, few steps: each layer's update points along backprop's (the errors reach
    // layer k scaled by about γ^(L−k), so directions match layer by layer). At the
    // relaxed equilibrium the hidden nodes absorb part of the output error and the
    // agreement loosens (Whittington & Bogacz 2017).
    for (steps, gamma, min_cos) in [(3usize, 0.05, 0.99), (300, 0.05, 0.95)] {
        let out = pc(steps, gamma, "standard")
            .step(&m, &p, &batch, Loss::Mse)
            .unwrap();
        for (n, g) in bp.grads.iter() {
            let c = cosine(&out.grads.get(n).unwrap().to_vec_f64(), &g.to_vec_f64());
            assert!(c > min_cos, "T={steps} γ={gamma} {n}: cosine to BP {c}");
        }
    }
    let mut rule = pc(300, 0.05, "standard");
    rule.step(&m, &p, &batch, Loss::Mse).unwrap();
    // Energy falls monotonically under small steps.
    let r = rule.relaxation().unwrap();
    assert_eq!(r.steps, 300);
    for w in r.energy.windows(2) {
        assert!(w[1] <= w[0] + 1e-15, "energy rose: {} → {}", w[0], w[1]);
    }
}

#[test]
fn relaxation_converges_below_tolerance_on_random_networks() {
    for seed in 0..5u64 {
        let (m, p) = model(
            "mlp:6-9-8-4",
            if seed % 2 == 0 { "tanh" } else { "sigmoid" },
            seed,
        );
        let batch = class_batch(7, 6, 4, 100 + seed);
        let mut rule = build_rule_with(
            "pc",
            &serde_json::json!({
                "steps": 2000,
                "gamma": 0.2,
                "tolerance": 1e-8,
            }),
        )
        .unwrap();
        rule.step(&m, &p, &batch, Loss::CrossEntropy).unwrap();
        let r = rule.relaxation().unwrap();
        let last = *r.residual.last().unwrap();
        assert!(
            last < 1e-8 && r.steps < 2000,
            "seed {seed}: residual {last} after {} steps",
            r.steps
        );
        assert!(r.energy.last().unwrap() <= &r.energy[0]);
    }
}

#[test]
fn pc_options_are_checked() {
    let bad = build_rule_with(
        "pc",
        &serde_json::json!({
            "variant": "sideways",
        }),
    );
    assert!(bad.err().unwrap().to_string().contains("sideways"));
    assert!(
        build_rule_with(
            "pc",
            &serde_json::json!({
                "gamma": 0.0,
            })
        )
        .is_err()
    );
}

fn eq_rule(name: &str, nudge: &str, beta: f64, rho: &str) -> Box<dyn Rule> {
    let mut settings = serde_json::json!({
        "free_steps": 20000,
        "nudge_steps": 20000,
        "step": 0.5,
        "rho": rho,
        "tolerance": 1e-14,
    });
    // CHL clamps the output: it has no nudge.
    if name == "eqprop" {
        settings["beta"] = beta.into();
        settings["nudge"] = nudge.into();
    }
    build_rule_with(name, &settings).unwrap()
}

#[test]
fn eqprop_update_approaches_the_loss_gradient_at_the_free_fixed_point() {
    let (m, p) = model("mlp:3-4-2", "sigmoid", 11);
    let x = rand_tensor(&[3, 3], 12, 1.0).add_scalar(1.0).scale(0.5);
    let y = rand_tensor(&[3, 2], 13, 0.5).add_scalar(0.5);
    let batch = Batch {
        x: x.clone(),
        target: Target::Values(y.clone()),
    };
    // L(θ) = mean over the batch of ½‖s_L* − y‖² at the free fixed point.
    let free = eq_rule("eqprop", "one-sided", 1.0, "sigmoid");
    let loss_at = |q: &Params| -> f64 {
        let out = free.predict(&m, q, &x).unwrap();
        0.5 * out.sub(&y).unwrap().sum_sq() / 3.0
    };
    let h = 1e-5;
    let mut fd = Params::new();
    for (n, t) in p.iter() {
        let v = t.to_vec_f64();
        let g: Vec<f64> = (0..v.len())
            .map(|i| {
                let mut plus = v.clone();
                plus[i] += h;
                let mut minus = v.clone();
                minus[i] -= h;
                let (mut qp, mut qm) = (p.clone(), p.clone());
                qp.insert(n, Tensor::from_vec_f64(t.shape(), plus).unwrap());
                qm.insert(n, Tensor::from_vec_f64(t.shape(), minus).unwrap());
                (loss_at(&qp) - loss_at(&qm)) / (2.0 * h)
            })
            .collect();
        fd.insert(n, Tensor::from_vec_f64(t.shape(), g).unwrap());
    }
    let err = |nudge: &str, beta: f64| -> f64 {
        let g = eq_rule("eqprop", nudge, beta, "sigmoid")
            .step(&m, &p, &batch, Loss::Mse)
            .unwrap()
            .grads;
        let (mut num, mut den) = (0.0, 0.0);
        for (n, t) in fd.iter() {
            let a = g.get(n).unwrap().to_vec_f64();
            for (u, v) in a.iter().zip(t.to_vec_f64()) {
                num += (u - v).powi(2);
                den += v * v;
            }
        }
        (num / den).sqrt()
    };
    let (one, sym) = (err("one-sided", 0.05), err("symmetric", 0.05));
    assert!(one < 0.1, "one-sided β=0.05: relative error {one}");
    assert!(
        sym < one / 5.0,
        "symmetric {sym} is not much better than one-sided {one}"
    );
    let small = err("one-sided", 0.005);
    assert!(small < one / 5.0, "β=0.005: {small} vs β=0.05: {one}");
}

#[test]
fn chl_with_weak_feedback_approaches_the_loss_gradient() {
    // Xie & Seung 2003: with feedback scaled by γ and layer l's update by γ^(l−L), CHL's
    // update tends to the gradient of ½‖s_L − y‖² at the free fixed point as γ → 0
    // (hard sigmoid: the fixed point is s = clip(drive), their layered network).
    let (m, p) = model("mlp:3-5-4-2", "identity", 21);
    let x = rand_tensor(&[4, 3], 22, 1.0).add_scalar(1.0).scale(0.5);
    let y = rand_tensor(&[4, 2], 23, 0.5).add_scalar(0.5);
    let batch = Batch {
        x: x.clone(),
        target: Target::Values(y.clone()),
    };
    let chl = |gamma: f64| {
        build_rule_with(
            "chl",
            &serde_json::json!({
                "free_steps": 20000, "nudge_steps": 20000, "step": 0.5,
                "rho": "hard-sigmoid", "tolerance": 1e-14, "feedback": gamma,
            }),
        )
        .unwrap()
    };
    let err = |gamma: f64| -> f64 {
        let free = chl(gamma);
        let loss_at = |q: &Params| -> f64 {
            let out = free.predict(&m, q, &x).unwrap();
            0.5 * out.sub(&y).unwrap().sum_sq() / 4.0
        };
        let g = chl(gamma).step(&m, &p, &batch, Loss::Mse).unwrap().grads;
        let h = 1e-6;
        let (mut num, mut den) = (0.0, 0.0);
        for (n, t) in p.iter() {
            let v = t.to_vec_f64();
            let got = g.get(n).unwrap().to_vec_f64();
            for i in 0..v.len() {
                let (mut plus, mut minus) = (v.clone(), v.clone());
                plus[i] += h;
                minus[i] -= h;
                let (mut qp, mut qm) = (p.clone(), p.clone());
                qp.insert(n, Tensor::from_vec_f64(t.shape(), plus).unwrap());
                qm.insert(n, Tensor::from_vec_f64(t.shape(), minus).unwrap());
                let fd = (loss_at(&qp) - loss_at(&qm)) / (2.0 * h);
                num += (got[i] - fd).powi(2);
                den += fd * fd;
            }
        }
        (num / den).sqrt()
    };
    let (strong, weak, weaker) = (err(1.0), err(0.1), err(0.01));
    assert!(weaker < 0.05, "γ = 0.01: relative error {weaker}");
    assert!(
        weaker < weak && weak < strong,
        "error must fall with γ: {strong} (1), {weak} (0.1), {weaker} (0.01)"
    );
}

#[test]
fn chl_update_on_a_two_unit_case() {
    // One input unit x = 0.5 → one output unit, w = 0.4, b = 0.1, hard sigmoid:
    // free fixed point s = clip(wx + b) = 0.3; clamped s = y = 1.
    // ΔW = (ρ(s_c) − ρ(s_f))x = 0.35, Δb = 0.7; gradient sign: −ΔW.
    let m = Model::build(&ModelSpec {
        spec: "linear:1-1".into(),
        activation: "identity".into(),
        bias: true,
    })
    .unwrap();
    let mut p = Params::new();
    p.insert(
        "fc1.weight",
        Tensor::from_vec_f64(&[1, 1], vec![0.4]).unwrap(),
    );
    p.insert("fc1.bias", Tensor::from_vec_f64(&[1], vec![0.1]).unwrap());
    let batch = Batch {
        x: Tensor::from_vec_f64(&[1, 1], vec![0.5]).unwrap(),
        target: Target::Values(Tensor::from_vec_f64(&[1, 1], vec![1.0]).unwrap()),
    };
    let g = eq_rule("chl", "one-sided", 1.0, "hard-sigmoid")
        .step(&m, &p, &batch, Loss::Mse)
        .unwrap()
        .grads;
    let gw = g.get("fc1.weight").unwrap().to_vec_f64()[0];
    let gb = g.get("fc1.bias").unwrap().to_vec_f64()[0];
    assert!((gw + 0.35).abs() < 1e-9, "ΔW {gw}");
    assert!((gb + 0.7).abs() < 1e-9, "Δb {gb}");
    // EqProp with β = 1 on the same case: the nudged fixed point of
    // s − (wx + b) + β(s − y) = 0 is s = (0.3 + 1)/2 = 0.65, so ΔW = 0.35·0.5/1.
    let g = eq_rule("eqprop", "one-sided", 1.0, "hard-sigmoid")
        .step(&m, &p, &batch, Loss::Mse)
        .unwrap()
        .grads;
    let gw = g.get("fc1.weight").unwrap().to_vec_f64()[0];
    assert!((gw + 0.175).abs() < 1e-9, "EqProp ΔW {gw}");
}

#[test]
fn cd_k_updates_on_a_two_unit_case() {
    use futureprop::train::pretrain::cd_k;
    let mut rng = futureprop::Rng::seed_from_u64(0);
    let t = |v: f64, shape: &[usize]| Tensor::from_vec_f64(shape, vec![v]).unwrap();
    let v0 = t(1.0, &[1, 1]);
    // W = 0, biases 0, mean-field CD-1: p(h|v₀) = ½, v₁ = σ(0) = ½, q = σ(0) = ½.
    // ΔW = ½·1 − ½·½ = ¼, Δc = 0, Δb = 1 − ½ = ½.
    let (dw, dc, db, err) = cd_k(
        &t(0.0, &[1, 1]),
        &t(0.0, &[1]),
        &t(0.0, &[1]),
        &v0,
        1,
        false,
        &mut rng,
    )
    .unwrap();
    assert!((dw.to_vec_f64()[0] - 0.25).abs() < 1e-12);
    assert!(dc.to_vec_f64()[0].abs() < 1e-12);
    assert!((db.to_vec_f64()[0] - 0.5).abs() < 1e-12);
    assert!((err - 0.25).abs() < 1e-12);
    // W = 1: p(h|v₀) = σ(1), v₁ = σ(σ(1)), q = σ(v₁); ΔW = σ(1) − q·v₁ > 0.
    let s = |x: f64| 1.0 / (1.0 + (-x).exp());
    let (h0, v1) = (s(1.0), s(s(1.0)));
    let q = s(v1);
    let (dw, dc, _, _) = cd_k(
        &t(1.0, &[1, 1]),
        &t(0.0, &[1]),
        &t(0.0, &[1]),
        &v0,
        1,
        false,
        &mut rng,
    )
    .unwrap();
    assert!((dw.to_vec_f64()[0] - (h0 - q * v1)).abs() < 1e-12);
    assert!((dc.to_vec_f64()[0] - (h0 - q)).abs() < 1e-12);
}

#[test]
fn rbm_pretraining_learns_to_reconstruct_its_data() {
    use futureprop::train::pretrain::{RbmConfig, pretrain_rbm};
    // Four binary patterns over 12 pixels, repeated.
    let patterns = [
        [1., 1., 1., 0., 0., 0., 1., 1., 1., 0., 0., 0.],
        [0., 0., 0., 1., 1., 1., 0., 0., 0., 1., 1., 1.],
        [1., 0., 1., 0., 1., 0., 1., 0., 1., 0., 1., 0.],
        [0., 1., 0., 1., 0., 1., 0., 1., 0., 1., 0., 1.],
    ];
    let v: Vec<f64> = (0..200).flat_map(|i| patterns[i % 4]).collect();
    let x = Tensor::from_vec_f64(&[200, 12], v)
        .unwrap()
        .to_dtype(DType::F32);
    let m = Model::build(&ModelSpec {
        spec: "mlp:12-6-2".into(),
        activation: "sigmoid".into(),
        bias: true,
    })
    .unwrap();
    let err_after = |epochs: usize| {
        let mut p = m.init_params(Init::XavierUniform, 1).unwrap();
        let cfg = RbmConfig {
            rbm_epochs: epochs,
            rbm_lr: 0.1,
            ..Default::default()
        };
        let e = pretrain_rbm(&m, &mut p, &x, 20, &cfg, 0).unwrap();
        assert_eq!(e.len(), 1, "one hidden layer, one RBM");
        e[0]
    };
    let (short, long) = (err_after(1), err_after(30));
    assert!(long < 0.5 * short, "reconstruction error {short} → {long}");
    let relu = Model::build(&ModelSpec {
        spec: "mlp:12-6-2".into(),
        activation: "relu".into(),
        bias: true,
    })
    .unwrap();
    let mut p = relu.init_params(Init::XavierUniform, 1).unwrap();
    let e = pretrain_rbm(&relu, &mut p, &x, 20, &RbmConfig::default(), 0).unwrap_err();
    assert!(e.to_string().contains("sigmoid"), "{e}");
}

#[test]
fn the_fused_pc_relaxation_matches_the_general_loop() {
    // 11 rows relax as one block; 70 rows on two threads as two blocks in parallel; f32
    // and f64 (the fused loop runs on tensor operations in either type).
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for (act, rows, dtype) in [
        ("relu", 11, DType::F32),
        ("tanh", 11, DType::F32),
        ("sigmoid", 70, DType::F32),
        ("elu", 11, DType::F32),
        ("gelu", 70, DType::F32),
        ("relu", 70, DType::F32),
        ("gelu", 11, DType::F64),
        ("tanh", 70, DType::F64),
    ] {
        let m = Model::build(&ModelSpec {
            spec: "mlp:6-9-8-7-4".into(),
            activation: act.into(),
            bias: true,
        })
        .unwrap();
        let mut p = m.init_params(Init::XavierNormal, 3).unwrap();
        if dtype == DType::F64 {
            p = p.to_dtype(DType::F64);
        }
        let mut batch = class_batch(rows, 6, 4, 5);
        batch.x = batch.x.to_dtype(dtype);
        let cfg = futureprop::rule::PcSettings {
            steps: 7,
            gamma: 0.3,
            trace: true,
            ..Default::default()
        };
        let run = |fused: bool| {
            let mut r = futureprop::rule::PredictiveCoding::new(cfg.clone()).unwrap();
            r.fused = fused;
            let out = pool.install(|| r.step(&m, &p, &batch, Loss::CrossEntropy).unwrap());
            (out, r.relaxation().unwrap().clone())
        };
        let ((a, ra), (b, rb)) = (run(true), run(false));
        for (name, t) in b.grads.iter() {
            let (u, v) = (a.grads.get(name).unwrap().to_vec_f64(), t.to_vec_f64());
            let scale = v.iter().map(|x| x.abs()).fold(0.0, f64::max);
            for (x, y) in u.iter().zip(&v) {
                assert!(
                    (x - y).abs() <= 1e-5 * (scale + 1e-3),
                    "{act} {name}: {x} vs {y}"
                );
            }
        }
        assert_eq!(ra.steps, rb.steps);
        for (x, y) in ra.energy.iter().zip(&rb.energy) {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                "{act} energy {x} vs {y}"
            );
        }
        for (x, y) in ra.residual.iter().zip(&rb.residual) {
            assert!(
                (x - y).abs() <= 1e-4 * (1e-6 + y.abs()),
                "{act} residual {x} vs {y}"
            );
        }
        assert_eq!(a.trace.records.len(), b.trace.records.len());
        assert_eq!(
            a.trace.output().unwrap().shape(),
            b.trace.output().unwrap().shape()
        );
    }
}

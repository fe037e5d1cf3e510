//! K-FAC against exact curvature: for one Linear layer with a least-squares loss the
//! Kronecker factors are the exact Gauss–Newton block, so an undamped step is Newton's
//! step and solves the problem; sampled-target factors estimate the same matrix.

mod common;
use common::{model, rand_tensor};
use futureprop::nn::{Loss, Model, Params, Target};
use futureprop::optim::curvature::gauss_newton_vector;
use futureprop::optim::{
    FisherMode, InverseMethod, Kfac, KfacConfig, Optimizer, Schedule, StepContext,
};
use futureprop::rule::{Batch, Rule, build_rule};
use futureprop::tensor::Tensor;
use futureprop::train::RuleObjective;

fn config(fisher: FisherMode, inverse: InverseMethod, damping: f64) -> KfacConfig {
    KfacConfig {
        momentum: 0.0,
        damping,
        decay: 0.0,
        cov_every: 1,
        inv_every: 1,
        kl_clip: 0.0,
        fisher,
        inverse,
        seed: 3,
        adaptive: false,
        bf16_products: false,
    }
}

/// One optimizer step of `rule` + `opt` on `batch`; returns the loss before the step.
fn step(
    rule: &mut dyn Rule,
    opt: &mut dyn Optimizer,
    m: &Model,
    p: &mut Params,
    batch: &Batch,
    loss: Loss,
) -> f64 {
    let out = rule.step(m, p, batch, loss).unwrap();
    let mut obj = RuleObjective {
        rule,
        model: m,
        batch,
        loss,
    };
    let mut ctx = StepContext {
        trace: Some(&out.trace),
        objective: Some(&mut obj),
        reducer: None,
    };
    opt.step(p, &out.grads, &mut ctx).unwrap();
    out.loss
}

/// The exact Gauss–Newton matrix of a one-layer model over (W, b), by products with
/// basis vectors; index (o, i) for W[o][i] and (o, in) for b[o].
fn exact_gn(m: &Model, p: &Params, x: &Tensor, loss: Loss, o: usize, i: usize) -> Vec<f64> {
    let d = o * (i + 1);
    let idx = |r: usize, c: usize| r * (i + 1) + c;
    let mut gn = vec![0.0; d * d];
    for r in 0..o {
        for c in 0..=i {
            let mut w = vec![0.0; o * i];
            let mut b = vec![0.0; o];
            if c < i {
                w[r * i + c] = 1.0;
            } else {
                b[r] = 1.0;
            }
            let mut v = Params::new();
            v.insert("fc1.weight", Tensor::from_vec_f64(&[o, i], w).unwrap());
            v.insert("fc1.bias", Tensor::from_vec_f64(&[o], b).unwrap());
            let g = gauss_newton_vector(m, p, x, loss, &v).unwrap();
            let (gw, gb) = (
                g.get("fc1.weight").unwrap().to_vec_f64(),
                g.get("fc1.bias").unwrap().to_vec_f64(),
            );
            for r2 in 0..o {
                for c2 in 0..=i {
                    let val = if c2 < i { gw[r2 * i + c2] } else { gb[r2] };
                    gn[idx(r2, c2) * d + idx(r, c)] = val;
                }
            }
        }
    }
    gn
}

#[test]
fn kronecker_factors_of_one_linear_layer_are_the_exact_gauss_newton_block() {
    let (o, i, n) = (3, 4, 11);
    let (m, mut p) = model(&format!("linear:{i}-{o}"), "identity", 1);
    let x = rand_tensor(&[n, i], 2, 1.0);
    let batch = Batch {
        x: x.clone(),
        target: Target::Values(rand_tensor(&[n, o], 3, 1.0)),
    };
    let gn = exact_gn(&m, &p, &x, Loss::Mse, o, i);
    let mut bp = build_rule("bp").unwrap();
    let mut k = Kfac::new(
        config(FisherMode::GaussNewton, InverseMethod::Eigen, 1e-3),
        1.0,
        0.0,
        Schedule::default(),
    )
    .unwrap();
    step(bp.as_mut(), &mut k, &m, &mut p, &batch, Loss::Mse);
    let (a, g) = k.factors("fc1").expect("fc1 has factors");
    assert_eq!((a.shape(), g.shape()), (&[i + 1, i + 1][..], &[o, o][..]));
    let (a, g) = (a.to_vec_f64(), g.to_vec_f64());
    let d = o * (i + 1);
    for r in 0..o {
        for c in 0..=i {
            for r2 in 0..o {
                for c2 in 0..=i {
                    let kron = g[r * o + r2] * a[c * (i + 1) + c2];
                    let exact = gn[(r * (i + 1) + c) * d + r2 * (i + 1) + c2];
                    assert!(
                        (kron - exact).abs() < 1e-12,
                        "({r},{c})×({r2},{c2}): A⊗G {kron} vs GN {exact}"
                    );
                }
            }
        }
    }
}

#[test]
fn undamped_step_solves_linear_least_squares_in_one_step() {
    for inverse in [InverseMethod::Eigen, InverseMethod::Cholesky] {
        let (o, i, n) = (3, 5, 40);
        let (m, mut p) = model(&format!("linear:{i}-{o}"), "identity", 4);
        let batch = Batch {
            x: rand_tensor(&[n, i], 5, 1.0),
            target: Target::Values(rand_tensor(&[n, o], 6, 2.0)),
        };
        let mut bp = build_rule("bp").unwrap();
        let mut k = Kfac::new(
            config(FisherMode::GaussNewton, inverse, 1e-16),
            1.0,
            0.0,
            Schedule::default(),
        )
        .unwrap();
        let before = bp.step(&m, &p, &batch, Loss::Mse).unwrap().grads;
        step(bp.as_mut(), &mut k, &m, &mut p, &batch, Loss::Mse);
        let after = bp.step(&m, &p, &batch, Loss::Mse).unwrap().grads;
        let ratio = after.global_norm() / before.global_norm();
        assert!(
            ratio < 1e-6,
            "{inverse:?}: gradient norm after one step is {ratio:e} of the start"
        );
    }
}

#[test]
fn sampled_output_factor_estimates_the_gauss_newton_factor() {
    // Softmax cross-entropy, one layer, many samples: E over sampled labels of g gᵀ is
    // the output Hessian, so the sampled G approaches the Gauss–Newton G.
    let (o, i, n) = (4, 3, 20000);
    let (m, p) = model(&format!("linear:{i}-{o}"), "identity", 7);
    let batch = Batch {
        x: rand_tensor(&[n, i], 8, 2.0),
        target: Target::Classes((0..n).map(|r| r % o).collect()),
    };
    let g_of = |fisher| {
        let mut bp = build_rule("bp").unwrap();
        let mut k = Kfac::new(
            config(fisher, InverseMethod::Eigen, 1e-3),
            1.0,
            0.0,
            Schedule::default(),
        )
        .unwrap();
        let mut q = p.clone();
        step(bp.as_mut(), &mut k, &m, &mut q, &batch, Loss::CrossEntropy);
        k.factors("fc1").unwrap().1.to_vec_f64()
    };
    let (gn, sampled, empirical) = (
        g_of(FisherMode::GaussNewton),
        g_of(FisherMode::Sampled),
        g_of(FisherMode::Empirical),
    );
    let dist = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f64>()
            .sqrt()
            / b.iter().map(|y| y * y).sum::<f64>().sqrt()
    };
    assert!(
        dist(&sampled, &gn) < 0.05,
        "sampled G is {} from the GN G",
        dist(&sampled, &gn)
    );
    // The labels here are unrelated to the model, so the empirical Fisher is not it.
    assert!(dist(&empirical, &gn) > 0.2);
}

#[test]
fn kfac_works_with_feedback_rules_and_beats_sgd_on_a_teacher() {
    let teacher = model("mlp:6-12-3", "tanh", 20).1;
    let (m, p0) = model("mlp:6-12-3", "tanh", 21);
    let x = rand_tensor(&[64, 6], 22, 1.5);
    let y = m.forward(&teacher, &x).unwrap();
    let batch = Batch {
        x,
        target: Target::Values(y),
    };
    let run = |rule: &str, opt: &mut dyn Optimizer| {
        let mut r = build_rule(rule).unwrap();
        let mut p = p0.clone();
        r.init(&m, &mut p, 1).unwrap();
        let first = step(r.as_mut(), opt, &m, &mut p, &batch, Loss::Mse);
        for _ in 0..40 {
            step(r.as_mut(), opt, &m, &mut p, &batch, Loss::Mse);
        }
        (first, r.step(&m, &p, &batch, Loss::Mse).unwrap().loss)
    };
    // K-FAC at step size 0.5.
    let kcfg = KfacConfig {
        damping: 1e-2,
        decay: 0.9,
        inv_every: 5,
        ..config(FisherMode::Sampled, InverseMethod::Eigen, 1e-2)
    };
    let mut sgd = futureprop::optim::build_optimizer(
        &futureprop::optim::OptimizerConfig::new("momentum", 0.05),
        41,
    )
    .unwrap();
    let (start, sgd_end) = run("bp", sgd.as_mut());
    let (_, kfac_end) = run(
        "bp",
        &mut Kfac::new(kcfg.clone(), 0.5, 0.0, Schedule::default()).unwrap(),
    );
    assert!(
        kfac_end < 0.5 * sgd_end,
        "K-FAC {kfac_end} vs momentum {sgd_end} (start {start})"
    );
    for rule in ["dfa", "fa"] {
        for fisher in [FisherMode::Sampled, FisherMode::Empirical] {
            let mut k = Kfac::new(
                KfacConfig {
                    fisher,
                    ..kcfg.clone()
                },
                // Feedback errors are not the true gradient's: a smaller step.
                0.1,
                0.0,
                Schedule::default(),
            )
            .unwrap();
            let (first, end) = run(rule, &mut k);
            assert!(
                end.is_finite() && end < 0.5 * first,
                "K-FAC + {rule} ({fisher:?}): {first} → {end}"
            );
        }
    }
}

#[test]
fn kfac_state_round_trip_continues_identically_and_zero_gradients_are_finite() {
    let (m, p0) = model("mlp:5-7-3", "relu", 30);
    let batch = Batch {
        x: rand_tensor(&[16, 5], 31, 1.0),
        target: Target::Classes((0..16).map(|r| r % 3).collect()),
    };
    // Step size 0.1.
    let cfg = KfacConfig {
        momentum: 0.9,
        decay: 0.9,
        inv_every: 2,
        ..config(FisherMode::Sampled, InverseMethod::Cholesky, 1e-2)
    };
    let mut bp = build_rule("bp").unwrap();
    let mut a = Kfac::new(cfg.clone(), 0.1, 0.0, Schedule::default()).unwrap();
    let mut pa = p0.clone();
    for _ in 0..3 {
        step(bp.as_mut(), &mut a, &m, &mut pa, &batch, Loss::CrossEntropy);
    }
    let mut b = Kfac::new(cfg.clone(), 0.1, 0.0, Schedule::default()).unwrap();
    b.load_state(&a.state()).unwrap();
    let mut pb = pa.clone();
    for _ in 0..3 {
        step(bp.as_mut(), &mut a, &m, &mut pa, &batch, Loss::CrossEntropy);
        step(bp.as_mut(), &mut b, &m, &mut pb, &batch, Loss::CrossEntropy);
    }
    for (n, t) in pa.iter() {
        assert_eq!(t.to_vec_f64(), pb.get(n).unwrap().to_vec_f64(), "{n}");
    }

    // Zero gradients: a trace whose errors are zero.
    let mut bp = build_rule("bp").unwrap();
    let mut out = bp.step(&m, &p0, &batch, Loss::CrossEntropy).unwrap();
    for e in out.trace.errors.iter_mut().flatten() {
        *e = e.scale(0.0);
    }
    let zero = out.grads.zeros_like();
    let mut k = Kfac::new(
        config(FisherMode::Empirical, InverseMethod::Cholesky, 1e-3),
        1.0,
        0.0,
        Schedule::default(),
    )
    .unwrap();
    let mut p = p0.clone();
    let mut ctx = StepContext {
        trace: Some(&out.trace),
        objective: None,
        reducer: None,
    };
    k.step(&mut p, &zero, &mut ctx).unwrap();
    for (n, t) in p.iter() {
        assert_eq!(t.to_vec_f64(), p0.get(n).unwrap().to_vec_f64(), "{n} moved");
    }
}

#[test]
fn kfac_needs_a_trace_and_names_bad_settings() {
    let mut k = Kfac::new(
        config(FisherMode::Empirical, InverseMethod::Eigen, 1e-3),
        1.0,
        0.0,
        Schedule::default(),
    )
    .unwrap();
    let mut p = Params::new();
    p.insert("w", Tensor::from_vec_f64(&[2], vec![1.0, 2.0]).unwrap());
    let g = p.clone();
    let err = k
        .step(&mut p, &g, &mut StepContext::empty())
        .unwrap_err()
        .to_string();
    assert!(err.contains("trace"), "{err}");
    let bad = Kfac::new(
        KfacConfig {
            inv_every: 0,
            ..config(FisherMode::Empirical, InverseMethod::Eigen, 1e-3)
        },
        1.0,
        0.0,
        Schedule::default(),
    );
    assert!(bad.is_err());
    assert!(
        FisherMode::parse("typo")
            .unwrap_err()
            .to_string()
            .contains("typo")
    );
}

#[test]
fn adaptive_kfac_picks_the_newton_step_on_least_squares_and_keeps_damping_in_state() {
    // Exact factors on a linear least-squares problem: the K-FAC direction is Newton's,
    // so the quadratic model's minimiser along it is α = 1 and one step solves it.
    let (o, i, n) = (2, 4, 30);
    let (m, mut p) = model(&format!("linear:{i}-{o}"), "identity", 8);
    let batch = Batch {
        x: rand_tensor(&[n, i], 9, 1.0),
        target: Target::Values(rand_tensor(&[n, o], 10, 2.0)),
    };
    let mut bp = build_rule("bp").unwrap();
    let mut k = Kfac::new(
        KfacConfig {
            adaptive: true,
            ..config(FisherMode::GaussNewton, InverseMethod::Cholesky, 1e-12)
        },
        1.0,
        0.0,
        Schedule::default(),
    )
    .unwrap();
    let before = bp.step(&m, &p, &batch, Loss::Mse).unwrap().grads;
    step(bp.as_mut(), &mut k, &m, &mut p, &batch, Loss::Mse);
    let after = bp.step(&m, &p, &batch, Loss::Mse).unwrap().grads;
    let ratio = after.global_norm() / before.global_norm();
    assert!(
        ratio < 1e-5,
        "gradient norm ratio {ratio:e} after one adaptive step"
    );
    // λ is adapted (the step was exact: ρ = 1 > ¾ shrinks it) and survives a round trip.
    assert!(k.damping() < 1e-12, "λ = {}", k.damping());
    let mut k2 = Kfac::new(
        KfacConfig {
            adaptive: true,
            ..config(FisherMode::GaussNewton, InverseMethod::Cholesky, 1.0)
        },
        1.0,
        0.0,
        Schedule::default(),
    )
    .unwrap();
    k2.load_state(&k.state()).unwrap();
    assert_eq!(k2.damping(), k.damping());
}

#[test]
fn bf16_products_give_the_f32_step_within_bf16_rounding() {
    // The same damped K-FAC step with the preconditioning and factor products on the
    // bf16 kernel: operands rounded to 8 significant bits (2⁻⁹ relative), sums in f32,
    // so the update moves by well under 1 %.
    let (m, p) = model("mlp:12-16-16-5", "tanh", 7);
    let p = p.to_dtype(futureprop::tensor::DType::F32);
    let batch = Batch {
        x: rand_tensor(&[32, 12], 8, 1.0).to_dtype(futureprop::tensor::DType::F32),
        target: Target::Classes((0..32).map(|i| i % 5).collect()),
    };
    let mut updates = Vec::new();
    for bf16 in [false, true] {
        let mut q = p.clone();
        let mut k = Kfac::new(
            KfacConfig {
                bf16_products: bf16,
                ..config(FisherMode::Empirical, InverseMethod::Cholesky, 0.03)
            },
            0.1,
            0.0,
            Schedule::default(),
        )
        .unwrap();
        let mut bp = build_rule("bp").unwrap();
        step(bp.as_mut(), &mut k, &m, &mut q, &batch, Loss::CrossEntropy);
        let mut u = q.clone();
        u.axpy(-1.0, &p).unwrap();
        updates.push(u);
    }
    let mut diff = updates[1].clone();
    diff.axpy(-1.0, &updates[0]).unwrap();
    let rel = diff.global_norm() / updates[0].global_norm();
    assert!(
        rel > 0.0 && rel < 0.01,
        "relative change of the update {rel}"
    );
}

//! Gauss–Newton– and Hessian–vector products (R-operator) against finite differences in
//! f64: J·v ≈ (z(θ+εv) − z(θ−εv))/2ε and H·v ≈ (∇L(θ+εv) − ∇L(θ−εv))/2ε.

mod common;
use common::rand_tensor;
use futureprop::nn::{Init, Loss, Model, ModelSpec, Params, Target};
use futureprop::optim::curvature::{gauss_newton_vector, hessian_vector, jacobian_vector};
use futureprop::rule::{Backprop, Batch, Rule};
use futureprop::tensor::{DType, Tensor};

const EPS: f64 = 1e-5;

fn setup(spec: &str, act: &str, seed: u64) -> (Model, Params, Params) {
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
    let mut v = Params::new();
    for (i, (n, t)) in p.iter().enumerate() {
        v.insert(n, rand_tensor(t.shape(), seed * 31 + i as u64, 1.0));
    }
    (m, p, v)
}

fn shifted(p: &Params, v: &Params, e: f64) -> Params {
    let mut q = p.clone();
    q.axpy(e, v).unwrap();
    q
}

fn target(loss: Loss, rows: usize, cols: usize) -> Target {
    match loss {
        Loss::CrossEntropy => Target::Classes((0..rows).map(|i| (i * 7) % cols).collect()),
        Loss::Mse | Loss::Sse => Target::Values(rand_tensor(&[rows, cols], 99, 1.0)),
        Loss::Bce => Target::Values(rand_tensor(&[rows, cols], 98, 0.5).add_scalar(0.5)),
    }
}

fn grad(m: &Model, p: &Params, x: &Tensor, t: &Target, loss: Loss) -> Params {
    Backprop
        .step(
            m,
            p,
            &Batch {
                x: x.clone(),
                target: t.clone(),
            },
            loss,
        )
        .unwrap()
        .grads
}

fn assert_close(a: &Params, b: &Params, tol: f64, label: &str) {
    for (n, t) in a.iter() {
        let (x, y) = (t.to_vec_f64(), b.get(n).unwrap().to_vec_f64());
        let scale = y.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        for (i, (p, q)) in x.iter().zip(&y).enumerate() {
            assert!((p - q).abs() <= tol * scale, "{label}: {n}[{i}] {p} vs {q}");
        }
    }
}

#[test]
fn jacobian_vector_products_match_finite_differences() {
    for act in [
        "tanh", "sigmoid", "relu", "gelu", "softplus", "silu", "identity",
    ] {
        let (m, p, v) = setup("mlp:5-7-17-3", act, 1);
        let x = rand_tensor(&[4, 5], 2, 1.0);
        let jv = jacobian_vector(&m, &p, &x, &v).unwrap().to_vec_f64();
        let plus = m.forward(&shifted(&p, &v, EPS), &x).unwrap().to_vec_f64();
        let minus = m.forward(&shifted(&p, &v, -EPS), &x).unwrap().to_vec_f64();
        for (i, a) in jv.iter().enumerate() {
            let fd = (plus[i] - minus[i]) / (2.0 * EPS);
            assert!(
                (a - fd).abs() < 1e-6 * (1.0 + fd.abs()),
                "{act} J·v[{i}]: {a} vs {fd}"
            );
        }
    }
}

#[test]
fn hessian_vector_products_match_finite_differences_of_gradients() {
    for act in [
        "tanh", "sigmoid", "gelu", "softplus", "silu", "identity", "relu",
    ] {
        for loss in [Loss::CrossEntropy, Loss::Mse, Loss::Sse, Loss::Bce] {
            let (m, p, v) = setup("mlp:4-9-6-3", act, 3);
            let x = rand_tensor(&[5, 4], 4, 1.5);
            let t = target(loss, 5, 3);
            let hv = hessian_vector(&m, &p, &x, &t, loss, &v).unwrap();
            let mut fd = grad(&m, &shifted(&p, &v, EPS), &x, &t, loss);
            fd.axpy(-1.0, &grad(&m, &shifted(&p, &v, -EPS), &x, &t, loss))
                .unwrap();
            fd.scale_in_place(1.0 / (2.0 * EPS));
            assert_close(&hv, &fd, 1e-5, &format!("H·v {act} {loss:?}"));
        }
    }
}

#[test]
fn gauss_newton_equals_hessian_for_a_linear_model_and_is_psd() {
    for loss in [Loss::CrossEntropy, Loss::Mse, Loss::Sse, Loss::Bce] {
        // z = xWᵀ + b is linear in θ, so the Hessian is exactly Jᵀ∇²L J.
        let (m, p, v) = setup("linear:6-4", "identity", 5);
        let x = rand_tensor(&[7, 6], 6, 1.0);
        let t = target(loss, 7, 4);
        let gv = gauss_newton_vector(&m, &p, &x, loss, &v).unwrap();
        let hv = hessian_vector(&m, &p, &x, &t, loss, &v).unwrap();
        assert_close(&gv, &hv, 1e-10, &format!("G·v vs H·v {loss:?}"));
        // On a nonlinear model G stays symmetric positive semi-definite.
        let (m, p, v) = setup("mlp:6-8-4", "tanh", 7);
        let (_, _, u) = setup("mlp:6-8-4", "tanh", 8);
        let gv = gauss_newton_vector(&m, &p, &x, loss, &v).unwrap();
        let gu = gauss_newton_vector(&m, &p, &x, loss, &u).unwrap();
        assert!(v.dot(&gv).unwrap() >= 0.0 && u.dot(&gu).unwrap() >= 0.0);
        let (a, b) = (u.dot(&gv).unwrap(), v.dot(&gu).unwrap());
        assert!(
            (a - b).abs() < 1e-10 * (1.0 + a.abs()),
            "uᵀGv = {a}, vᵀGu = {b}"
        );
    }
}

/// The mean loss of a model on fixed data, with Gauss–Newton products.
struct Net {
    model: Model,
    x: Tensor,
    t: Target,
    loss: Loss,
}

impl futureprop::optim::Objective for Net {
    fn evaluate(&mut self, p: &Params) -> futureprop::Result<(f64, futureprop::nn::Grads)> {
        let out = Backprop.step(
            &self.model,
            p,
            &Batch {
                x: self.x.clone(),
                target: self.t.clone(),
            },
            self.loss,
        )?;
        Ok((out.loss, out.grads))
    }
    fn gauss_newton_vector(
        &mut self,
        p: &Params,
        v: &Params,
    ) -> futureprop::Result<futureprop::nn::Grads> {
        gauss_newton_vector(&self.model, p, &self.x, self.loss, v)
    }
}

#[test]
fn hessian_free_fits_a_teacher_network_in_a_few_steps() {
    use futureprop::optim::{Objective, OptimizerConfig, StepContext, build_optimizer};
    let (x, y) = futureprop::data::synthetic::teacher_student(256, 4, 8, 2, 0.0, 1).unwrap();
    let model = Model::build(&ModelSpec {
        spec: "mlp:4-16-2".into(),
        activation: "tanh".into(),
        bias: true,
    })
    .unwrap();
    let mut p = model
        .init_params(Init::XavierUniform, 2)
        .unwrap()
        .to_dtype(DType::F64);
    let mut net = Net {
        model,
        x: x.to_dtype(DType::F64),
        t: Target::Values(y.to_dtype(DType::F64)),
        loss: Loss::Mse,
    };
    let (f0, _) = net.evaluate(&p).unwrap();
    let mut hf = build_optimizer(&OptimizerConfig::new("hf", 1.0), 30).unwrap();
    for _ in 0..30 {
        let (_, g) = net.evaluate(&p).unwrap();
        hf.step(
            &mut p,
            &g,
            &mut StepContext {
                trace: None,
                objective: Some(&mut net),
                reducer: None,
            },
        )
        .unwrap();
    }
    let (f, _) = net.evaluate(&p).unwrap();
    assert!(f < 0.01 * f0, "HF: loss {f0} → {f} after 30 steps");
}

#[test]
fn diagonal_fisher_from_the_trace_equals_mean_squared_per_sample_gradients() {
    use futureprop::optim::NaturalGradient;
    let (m, p, _) = setup("mlp:3-5-4", "tanh", 11);
    let x = rand_tensor(&[6, 3], 12, 1.0);
    let t = target(Loss::CrossEntropy, 6, 4);
    let out = Backprop
        .step(
            &m,
            &p,
            &Batch {
                x: x.clone(),
                target: t.clone(),
            },
            Loss::CrossEntropy,
        )
        .unwrap();
    let f = NaturalGradient::diagonal_fisher(&out.trace, &out.grads).unwrap();
    // Brute force: gradient of each one-sample loss, squared, averaged.
    let labels = match &t {
        Target::Classes(c) => c.clone(),
        _ => unreachable!(),
    };
    let mut mean_sq = out.grads.zeros_like();
    for (i, &label) in labels.iter().enumerate() {
        let xi = x.gather_rows(&[i]).unwrap();
        let gi = grad(
            &m,
            &p,
            &xi,
            &Target::Classes(vec![label]),
            Loss::CrossEntropy,
        );
        for (n, g) in gi.iter() {
            mean_sq
                .get_mut(n)
                .unwrap()
                .axpy(1.0 / 6.0, &g.mul(g).unwrap())
                .unwrap();
        }
    }
    assert_close(&f, &mean_sq, 1e-10, "diag F");
}

#[test]
fn layer_block_natural_gradient_equals_the_dense_damped_fisher_solve() {
    use futureprop::optim::NaturalGradient;
    let (m, p, _) = setup("mlp:3-5-4", "tanh", 13);
    let n = 6;
    let x = rand_tensor(&[n, 3], 14, 1.0);
    let t = target(Loss::CrossEntropy, n, 4);
    let labels = match &t {
        Target::Classes(c) => c.clone(),
        _ => unreachable!(),
    };
    let out = Backprop
        .step(
            &m,
            &p,
            &Batch {
                x: x.clone(),
                target: t.clone(),
            },
            Loss::CrossEntropy,
        )
        .unwrap();
    let lambda = 0.05;
    for (idx, layer) in [(0usize, "fc1"), (2, "fc2")] {
        // Per-sample gradients [∇W | ∇b] (row-major) from one-sample batches.
        let joined = |g: &Params| -> Vec<f64> {
            let (w, b) = (
                g.get(&format!("{layer}.weight")).unwrap(),
                g.get(&format!("{layer}.bias")).unwrap().to_vec_f64(),
            );
            let (o, i) = w.dims2().unwrap();
            let wv = w.to_vec_f64();
            (0..o)
                .flat_map(|r| {
                    let mut row = wv[r * i..(r + 1) * i].to_vec();
                    row.push(b[r]);
                    row
                })
                .collect()
        };
        let u: Vec<Vec<f64>> = (0..n)
            .map(|s| {
                let g = grad(
                    &m,
                    &p,
                    &x.gather_rows(&[s]).unwrap(),
                    &Target::Classes(vec![labels[s]]),
                    Loss::CrossEntropy,
                );
                joined(&g)
            })
            .collect();
        let d = u[0].len();
        let gbar = joined(&out.grads);
        let f = faer::Mat::from_fn(d, d, |a, b| {
            u.iter().map(|r| r[a] * r[b]).sum::<f64>() / n as f64
                + if a == b { lambda } else { 0.0 }
        });
        let rhs = faer::Mat::from_fn(d, 1, |a, _| gbar[a]);
        let dense = faer::linalg::solvers::Solve::solve(&f.llt(faer::Side::Lower).unwrap(), rhs);
        let (o, i) = out
            .grads
            .get(&format!("{layer}.weight"))
            .unwrap()
            .dims2()
            .unwrap();
        let jt = Tensor::from_vec_f64(&[o, i + 1], gbar.clone()).unwrap();
        let solved = NaturalGradient::layer_block_solve(
            out.trace.errors[idx].as_ref().unwrap(),
            &out.trace.records[idx].input,
            &jt,
            true,
            lambda,
        )
        .unwrap()
        .to_vec_f64();
        for a in 0..d {
            assert!(
                (solved[a] - dense[(a, 0)]).abs() < 1e-9 * (1.0 + dense[(a, 0)].abs()),
                "{layer}[{a}]: Woodbury {} vs dense {}",
                solved[a],
                dense[(a, 0)]
            );
        }
    }
}

#[test]
fn natural_gradient_trains_a_classifier() {
    use futureprop::data::{Batches, synthetic};
    use futureprop::optim::{OptimizerConfig, StepContext, build_optimizer};
    let data = synthetic::two_moons(512, 0.1, 0).unwrap();
    let m = Model::build(&ModelSpec {
        spec: "mlp:2-32-2".into(),
        activation: "tanh".into(),
        bias: true,
    })
    .unwrap();
    let p = m.init_params(Init::XavierUniform, 0).unwrap();
    for blocks in ["diagonal", "layer"] {
        let conf = OptimizerConfig::new("natgrad", 0.01)
            .with("blocks", blocks)
            .with("damping", if blocks == "layer" { 1e-2 } else { 1e-4 });
        let mut p = p.clone();
        let mut opt = build_optimizer(&conf, 1000).unwrap();
        for epoch in 0..60 {
            for b in Batches::new(&data, 64, true, 0, epoch) {
                let out = Backprop
                    .step(&m, &p, &b.unwrap(), Loss::CrossEntropy)
                    .unwrap();
                opt.step(
                    &mut p,
                    &out.grads,
                    &mut StepContext {
                        trace: Some(&out.trace),
                        objective: None,
                        reducer: None,
                    },
                )
                .unwrap();
            }
        }
        let e =
            futureprop::train::evaluate(&Backprop, &m, &p, &data, Loss::CrossEntropy, 512).unwrap();
        assert!(
            e.accuracy > 0.95,
            "natgrad ({blocks}) accuracy {}",
            e.accuracy
        );
        let e = opt
            .step(&mut p.clone(), &p.zeros_like(), &mut StepContext::empty())
            .unwrap_err()
            .to_string();
        assert!(e.contains("trace"), "{e}");
    }
}

#[test]
fn sharpness_and_hessian_trace_of_least_squares_are_known() {
    use futureprop::diag::curvature::{hessian_trace, sharpness};
    // z = xWᵀ (no bias), L = mean over the n·k entries of (z − t)²: H = (2/(nk))·(XᵀX ⊗ I_k).
    // With X = diag(1, 2, 3, 4, 5): λ_max = 2/(5·3)·25 and tr H = (2/(nk))·k·Σ s² = 2·55/5.
    let m = Model::build(&ModelSpec {
        spec: "linear:5-3".into(),
        activation: "identity".into(),
        bias: false,
    })
    .unwrap();
    let p = m
        .init_params(Init::XavierUniform, 1)
        .unwrap()
        .to_dtype(DType::F64);
    let mut xv = vec![0.0; 25];
    for i in 0..5 {
        xv[i * 5 + i] = (i + 1) as f64;
    }
    let b = Batch {
        x: Tensor::from_vec_f64(&[5, 5], xv).unwrap(),
        target: Target::Values(rand_tensor(&[5, 3], 3, 1.0)),
    };
    let s = sharpness(&m, &p, &b, Loss::Mse, 200, 7).unwrap();
    assert!((s - 2.0 / 15.0 * 25.0).abs() < 1e-6, "sharpness {s}");
    // Rademacher probes give tr(H) exactly when H is diagonal.
    let t = hessian_trace(&m, &p, &b, Loss::Mse, 3, 9).unwrap();
    assert!((t - 22.0).abs() < 1e-9, "trace {t}");
}

#[test]
fn gradient_noise_scale_vanishes_without_noise_and_grows_with_it() {
    use futureprop::data::Dataset;
    use futureprop::diag::curvature::gradient_noise_scale;
    let m = Model::build(&ModelSpec {
        spec: "mlp:2-8-2".into(),
        activation: "tanh".into(),
        bias: true,
    })
    .unwrap();
    let p = m.init_params(Init::XavierUniform, 1).unwrap();
    // Every sample identical: every batch gradient equals G, so tr(Σ) = 0.
    let same = Dataset {
        x: Tensor::from_vec(&[200, 2], [0.3f32, -0.7].repeat(200)).unwrap(),
        labels: vec![1; 200],
        classes: 2,
        reconstruct: false,
        values: None,
    };
    let b0 = gradient_noise_scale(
        &mut Backprop,
        &m,
        &p,
        &same,
        Loss::CrossEntropy,
        (8, 64),
        4,
        0,
    )
    .unwrap();
    let b0 = b0.b_noise.expect("resolvable: tr Σ is 0 up to rounding");
    assert!(b0.abs() < 1e-4, "no noise (f32 rounding only): {b0}");
    let moons = futureprop::data::synthetic::two_moons(2000, 0.3, 0).unwrap();
    let b1 = gradient_noise_scale(
        &mut Backprop,
        &m,
        &p,
        &moons,
        Loss::CrossEntropy,
        (8, 512),
        40,
        0,
    )
    .unwrap()
    .b_noise
    .unwrap();
    assert!(b1 > 1.0, "noisy data: {b1}");
    assert!(
        gradient_noise_scale(
            &mut Backprop,
            &m,
            &p,
            &moons,
            Loss::CrossEntropy,
            (64, 8),
            2,
            0
        )
        .is_err()
    );
}

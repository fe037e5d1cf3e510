//! Backprop against central finite differences in f64, for every layer, activation and
//! loss, at odd sizes (1, 3, 17, 257).
//!
//! For a scalar loss L(θ), the central difference (L(θ+h·eᵢ) − L(θ−h·eᵢ))/2h has error
//! O(h²·L‴); with h = 1e-5 in f64 it agrees with the analytic ∂L/∂θᵢ to ~1e-8.

use futureprop::nn::{Activation, Init, Linear, Loss, Model, PRelu, Params, Target};
use futureprop::rule::{Batch, build_rule};
use futureprop::tensor::{DType, Tensor, Unary};
use rand::{Rng, SeedableRng};

const H: f64 = 1e-5;

fn all_unaries() -> Vec<Unary> {
    vec![
        Unary::Identity,
        Unary::Sigmoid,
        Unary::Tanh,
        Unary::Relu,
        Unary::LeakyRelu(0.01),
        Unary::Elu(1.0),
        Unary::Selu,
        Unary::Silu,
        Unary::Gelu,
        Unary::HardSigmoid,
        Unary::Softplus,
    ]
}

/// Random inputs kept at least 1e-3 away from the kinks of `avoid`.
fn input(rows: usize, cols: usize, seed: u64, avoid: &[f64], scale: f64) -> Tensor {
    let mut rng = futureprop::Rng::seed_from_u64(seed);
    let v: Vec<f64> = (0..rows * cols)
        .map(|_| {
            loop {
                let x = rng.random_range(-scale..scale);
                if avoid.iter().all(|k| (x - k).abs() > 1e-3) {
                    break x;
                }
            }
        })
        .collect();
    Tensor::from_vec_f64(&[rows, cols], v).unwrap()
}

fn target(loss: Loss, rows: usize, cols: usize, seed: u64) -> Target {
    let mut rng = futureprop::Rng::seed_from_u64(seed ^ 0xabc);
    match loss {
        Loss::CrossEntropy => {
            Target::Classes((0..rows).map(|_| rng.random_range(0..cols)).collect())
        }
        Loss::Mse | Loss::Sse => Target::Values(input(rows, cols, seed ^ 7, &[], 1.0)),
        Loss::Bce => Target::Values(
            Tensor::from_vec_f64(
                &[rows, cols],
                (0..rows * cols)
                    .map(|_| rng.random_range(0.0..1.0))
                    .collect(),
            )
            .unwrap(),
        ),
    }
}

fn loss_at(model: &Model, p: &Params, x: &Tensor, t: &Target, loss: Loss) -> f64 {
    loss.eval(&model.forward(p, x).unwrap(), t).unwrap().0
}

fn close(a: f64, n: f64, what: &str) {
    let tol = 1e-6 * (1.0 + a.abs().max(n.abs()));
    assert!(
        (a - n).abs() <= tol,
        "{what}: analytic {a:e} vs finite difference {n:e}"
    );
}

/// Indices to probe: all of a small tensor, 24 spread over a large one.
fn probes(len: usize, seed: u64) -> Vec<usize> {
    if len <= 64 {
        return (0..len).collect();
    }
    let mut rng = futureprop::Rng::seed_from_u64(seed);
    (0..24).map(|_| rng.random_range(0..len)).collect()
}

/// Checks ∂L/∂θ for every parameter and ∂L/∂x of the model's first layer.
fn check(model: &Model, mut p: Params, x: Tensor, t: Target, loss: Loss, label: &str) {
    // Analytic: the backprop rule, plus the input error of layer 0.
    let mut rule = build_rule("bp").unwrap();
    let batch = Batch {
        x: x.clone(),
        target: t.clone(),
    };
    let out = rule.step(model, &p, &batch, loss).unwrap();
    let d0 = out.trace.errors[0].clone().expect("layer 0 error recorded");
    let dx = model.layers()[0]
        .input_grad(&p, &out.trace.records[0], &d0)
        .unwrap();
    let names: Vec<String> = p.names().to_vec();
    for name in names {
        let g = out
            .grads
            .get(&name)
            .unwrap_or_else(|_| panic!("{label}: no gradient for {name}"));
        assert_eq!(
            g.shape(),
            p.get(&name).unwrap().shape(),
            "{label}: gradient shape of {name}"
        );
        for i in probes(g.len(), 1) {
            let orig = p.get(&name).unwrap().get(i).unwrap();
            p.get_mut(&name).unwrap().set(i, orig + H).unwrap();
            let lp = loss_at(model, &p, &x, &t, loss);
            p.get_mut(&name).unwrap().set(i, orig - H).unwrap();
            let lm = loss_at(model, &p, &x, &t, loss);
            p.get_mut(&name).unwrap().set(i, orig).unwrap();
            close(
                g.get(i).unwrap(),
                (lp - lm) / (2.0 * H),
                &format!("{label} ∂L/∂{name}[{i}]"),
            );
        }
    }
    let mut xm = x.clone();
    for i in probes(x.len(), 2) {
        let orig = x.get(i).unwrap();
        xm.set(i, orig + H).unwrap();
        let lp = loss_at(model, &p, &xm, &t, loss);
        xm.set(i, orig - H).unwrap();
        let lm = loss_at(model, &p, &xm, &t, loss);
        xm.set(i, orig).unwrap();
        close(
            dx.get(i).unwrap(),
            (lp - lm) / (2.0 * H),
            &format!("{label} ∂L/∂x[{i}]"),
        );
    }
}

fn f64_params(model: &Model, seed: u64) -> Params {
    model
        .init_params(Init::XavierNormal, seed)
        .unwrap()
        .to_dtype(DType::F64)
}

#[test]
fn linear_layer_with_and_without_bias_at_odd_sizes() {
    for &(i, o) in &[
        (1, 1),
        (3, 1),
        (1, 3),
        (17, 3),
        (3, 17),
        (257, 3),
        (17, 257),
    ] {
        for bias in [true, false] {
            let model =
                Model::from_layers(vec![Box::new(Linear::new("fc", i, o, bias))], i).unwrap();
            let mut p = f64_params(&model, 3);
            if bias {
                // Non-zero biases so the bias path is exercised.
                p.insert("fc.bias", input(1, o, 9, &[], 0.5).reshape(&[o]).unwrap());
            }
            let x = input(5, i, 4, &[], 1.0);
            let t = target(Loss::Mse, 5, o, 5);
            check(
                &model,
                p,
                x,
                t,
                Loss::Mse,
                &format!("linear {i}->{o} bias={bias}"),
            );
        }
    }
}

#[test]
fn every_activation_at_odd_sizes() {
    for f in all_unaries() {
        for &w in &[1, 3, 17, 257] {
            let model = Model::from_layers(vec![Box::new(Activation::new("act", f))], w).unwrap();
            let p = Params::new();
            let x = input(3, w, 11, f.kinks(), 4.0);
            let t = target(Loss::Mse, 3, w, 12);
            check(&model, p, x, t, Loss::Mse, &format!("{f:?} width {w}"));
        }
    }
}

#[test]
fn prelu_slope_and_input() {
    for &w in &[1, 3, 17, 257] {
        let model = Model::from_layers(vec![Box::new(PRelu::new("act", w))], w).unwrap();
        let mut p = model
            .init_params(Init::Auto, 0)
            .unwrap()
            .to_dtype(DType::F64);
        p.insert(
            "act.slope",
            input(1, w, 21, &[], 0.5).reshape(&[w]).unwrap(),
        );
        let x = input(4, w, 22, &[0.0], 2.0);
        let t = target(Loss::Mse, 4, w, 23);
        check(&model, p, x, t, Loss::Mse, &format!("prelu width {w}"));
    }
}

#[test]
fn every_loss_at_odd_sizes() {
    for loss in [Loss::CrossEntropy, Loss::Mse, Loss::Sse, Loss::Bce] {
        for &c in &[1, 3, 17, 257] {
            let model =
                Model::from_layers(vec![Box::new(Linear::new("fc", 3, c, true))], 3).unwrap();
            let p = f64_params(&model, 31);
            let x = input(6, 3, 32, &[], 2.0);
            let t = target(loss, 6, c, 33);
            check(&model, p, x, t, loss, &format!("{loss:?} with {c} outputs"));
        }
    }
}

#[test]
fn whole_mlps_every_activation_and_loss() {
    for act in [
        "identity",
        "sigmoid",
        "tanh",
        "relu",
        "leaky-relu",
        "prelu",
        "elu",
        "selu",
        "silu",
        "gelu",
        "hard-sigmoid",
        "softplus",
    ] {
        for loss in [Loss::CrossEntropy, Loss::Mse, Loss::Sse, Loss::Bce] {
            let model = Model::build(&futureprop::nn::ModelSpec {
                spec: "mlp:5-7-17-3".into(),
                activation: act.into(),
                bias: true,
            })
            .unwrap();
            let p = f64_params(&model, 41);
            let x = input(4, 5, 42, &[], 1.5);
            let t = target(loss, 4, 3, 43);
            check(&model, p, x, t, loss, &format!("mlp {act} {loss:?}"));
        }
    }
}

#[test]
fn derivative_table_matches_finite_differences_pointwise() {
    // f'(x) against (f(x+h) − f(x−h))/2h on a grid avoiding kinks.
    for f in all_unaries() {
        for k in -40..=40 {
            let x = k as f64 * 0.1237 + 0.0005;
            if f.kinks().iter().any(|z| (x - z).abs() < 1e-3) {
                continue;
            }
            let n = (f.apply(x + H) - f.apply(x - H)) / (2.0 * H);
            close(f.derivative(x), n, &format!("{f:?}'({x})"));
        }
    }
}

//! Difference target propagation: exact linear inverses give the analytic targets (each
//! target is the preimage of the one above); the difference correction cancels the
//! inverses' reconstruction error; the top block's update is η̂ times backprop's; the
//! inverses learn to reconstruct; the alternating schedule alternates.

mod common;
use common::{model, rand_tensor};
use futureprop::nn::{Loss, Model, Params, Target};
use futureprop::rule::{Batch, Rule, TargetPropagation, build_rule};
use futureprop::tensor::{Tensor, Unary};

fn batch(n: usize, inputs: usize, classes: usize, seed: u64) -> Batch {
    Batch {
        x: rand_tensor(&[n, inputs], seed, 1.0),
        target: Target::Classes((0..n).map(|i| (i * 3 + 1) % classes).collect()),
    }
}

fn dtp(step: f64, noise: f64, schedule: &str) -> TargetPropagation {
    TargetPropagation::new(&futureprop::rule::DtpSettings {
        target_step: step,
        noise,
        schedule: schedule.into(),
    })
    .unwrap()
}

/// Inverse of a square matrix (row-major) by Gauss–Jordan with partial pivoting.
fn invert(a: &[f64], n: usize) -> Vec<f64> {
    let mut m = a.to_vec();
    let mut inv: Vec<f64> = (0..n * n)
        .map(|k| if k / n == k % n { 1.0 } else { 0.0 })
        .collect();
    for c in 0..n {
        let p = (c..n)
            .max_by(|&i, &j| m[i * n + c].abs().total_cmp(&m[j * n + c].abs()))
            .unwrap();
        for k in 0..n {
            m.swap(c * n + k, p * n + k);
            inv.swap(c * n + k, p * n + k);
        }
        let d = m[c * n + c];
        assert!(d.abs() > 1e-9, "singular test matrix");
        for k in 0..n {
            m[c * n + k] /= d;
            inv[c * n + k] /= d;
        }
        for r in (0..n).filter(|&r| r != c) {
            let f = m[r * n + c];
            for k in 0..n {
                m[r * n + k] -= f * m[c * n + k];
                inv[r * n + k] -= f * inv[c * n + k];
            }
        }
    }
    inv
}

fn close(a: &Tensor, b: &Tensor, tol: f64, label: &str) {
    assert_eq!(a.shape(), b.shape(), "{label}: shapes");
    for (u, v) in a.to_vec_f64().iter().zip(b.to_vec_f64()) {
        assert!(
            (u - v).abs() <= tol * (1.0 + v.abs()),
            "{label}: {u} vs {v}"
        );
    }
}

/// h·Wᵀ + b for layer `name`.
fn affine(p: &Params, name: &str, h: &Tensor) -> Tensor {
    let mut z = h
        .matmul(false, p.get(&format!("{name}.weight")).unwrap(), true)
        .unwrap();
    z.add_row(p.get(&format!("{name}.bias")).unwrap()).unwrap();
    z
}

#[test]
fn exact_linear_inverses_give_the_analytic_targets() {
    let (m, mut p) = model("mlp:3-4-4-4-2", "linear", 1);
    let mut r = dtp(0.1, 0.0, "parallel");
    r.init(&m, &mut p, 0).unwrap();
    // gₖ = fₖ⁻¹: Vₖ = Wₖ⁻¹, cₖ = −Wₖ⁻¹bₖ for the blocks above the first.
    for k in 1..3 {
        let lin = format!("fc{}", k + 1);
        let w = p.get(&format!("{lin}.weight")).unwrap().to_vec_f64();
        let v = Tensor::from_vec_f64(&[4, 4], invert(&w, 4)).unwrap();
        let c = v
            .matmul(
                false,
                &p.get(&format!("{lin}.bias"))
                    .unwrap()
                    .reshape(&[4, 1])
                    .unwrap(),
                false,
            )
            .unwrap()
            .reshape(&[4])
            .unwrap()
            .scale(-1.0);
        p.insert(format!("dtp.inv{k}.weight"), v);
        p.insert(format!("dtp.inv{k}.bias"), c);
    }
    let b = batch(5, 3, 2, 2);
    let targets = r.targets(&m, &p, &b, Loss::CrossEntropy).unwrap();
    assert_eq!(targets.len(), 3);
    // Forward values of the hidden blocks.
    let h1 = affine(&p, "fc1", &b.x);
    let h2 = affine(&p, "fc2", &h1);
    let h3 = affine(&p, "fc3", &h2);
    let z = affine(&p, "fc4", &h3);
    // Top: τ₃ = h₃ − η̂ (softmax(z) − y) W₄.
    let zv = z.to_vec_f64();
    let mut e = vec![0.0; 10];
    for i in 0..5 {
        let (a, c) = (zv[2 * i], zv[2 * i + 1]);
        let mx = a.max(c);
        let s = (a - mx).exp() + (c - mx).exp();
        e[2 * i] = (a - mx).exp() / s;
        e[2 * i + 1] = (c - mx).exp() / s;
        let Target::Classes(y) = &b.target else {
            unreachable!()
        };
        e[2 * i + y[i]] -= 1.0;
    }
    let e = Tensor::from_vec_f64(&[5, 2], e).unwrap();
    let mut t3 = h3.clone();
    t3.axpy(
        -0.1,
        &e.matmul(false, p.get("fc4.weight").unwrap(), false)
            .unwrap(),
    )
    .unwrap();
    close(&targets[2], &t3, 1e-12, "top target");
    // Below: every target is the exact preimage of the target above, τₖ = fₖ₊₁⁻¹(τₖ₊₁).
    close(
        &affine(&p, "fc3", &targets[1]),
        &targets[2],
        1e-10,
        "τ₂ → τ₃",
    );
    close(
        &affine(&p, "fc2", &targets[0]),
        &targets[1],
        1e-10,
        "τ₁ → τ₂",
    );
    // And differs from the forward value by W⁻¹(τ − h).
    let v2 = p.get("dtp.inv2.weight").unwrap();
    let mut t2 = h2.clone();
    t2.axpy(1.0, &t3.sub(&h3).unwrap().matmul(false, v2, true).unwrap())
        .unwrap();
    close(&targets[1], &t2, 1e-10, "τ₂ analytic");
}

#[test]
fn the_difference_correction_cancels_the_inverse_error() {
    let (m, mut p) = model("mlp:5-7-6-6-4", "tanh", 3);
    let mut r = dtp(0.0, 0.0, "parallel");
    r.init(&m, &mut p, 9).unwrap();
    let b = batch(8, 5, 4, 4);
    let targets = r.targets(&m, &p, &b, Loss::CrossEntropy).unwrap();
    let h1 = affine(&p, "fc1", &b.x).unary(Unary::Tanh);
    let h2 = affine(&p, "fc2", &h1).unary(Unary::Tanh);
    let h3 = affine(&p, "fc3", &h2).unary(Unary::Tanh);
    // With no top step every target is the forward value exactly...
    for (t, h) in targets.iter().zip([&h1, &h2, &h3]) {
        close(t, h, 1e-14, "τ = h");
    }
    // ...although the random inverse reconstructs badly (plain TP's target g(h) ≠ h).
    let g2 = affine(&p, "dtp.inv2", &h3).unary(Unary::Tanh);
    let err = g2.sub(&h2).unwrap().norm() / h2.norm();
    assert!(err > 0.3, "inverse unexpectedly accurate: {err}");
    // Hence the hidden blocks get no update (up to rounding).
    let out = r.step(&m, &p, &b, Loss::CrossEntropy).unwrap();
    for k in ["fc1.weight", "fc2.bias", "fc3.weight"] {
        // Zero up to the rounding of h + g(h) − g(h).
        assert!(out.grads.get(k).unwrap().norm() < 1e-14, "{k}");
    }
}

#[test]
fn the_top_block_update_is_eta_times_backprop() {
    for spec in ["mlp:5-7-4", "mlp:5-7-6-4"] {
        let (m, mut p) = model(spec, "tanh", 5);
        let mut r = dtp(0.3, 0.1, "parallel");
        r.init(&m, &mut p, 1).unwrap();
        let b = batch(9, 5, 4, 6);
        let bp = build_rule("bp")
            .unwrap()
            .step(&m, &p, &b, Loss::CrossEntropy)
            .unwrap();
        let out = r.step(&m, &p, &b, Loss::CrossEntropy).unwrap();
        let depth = m
            .block_walk("dtp", futureprop::nn::BlockShape::LAYERED)
            .unwrap()
            .0
            .len()
            + 1;
        let (top, outl) = (format!("fc{}", depth - 1), format!("fc{depth}"));
        for suffix in ["weight", "bias"] {
            let k = format!("{outl}.{suffix}");
            close(
                out.grads.get(&k).unwrap(),
                bp.grads.get(&k).unwrap(),
                1e-12,
                &k,
            );
            let k = format!("{top}.{suffix}");
            close(
                out.grads.get(&k).unwrap(),
                &bp.grads.get(&k).unwrap().scale(0.3),
                1e-12,
                &k,
            );
        }
        assert!((out.loss - bp.loss).abs() < 1e-12);
    }
}

fn descend(p: &mut Params, grads: &futureprop::nn::Grads, prefix: &str, lr: f64) {
    for (k, g) in grads.iter() {
        if k.starts_with(prefix) {
            p.get_mut(k).unwrap().axpy(-lr, g).unwrap();
        }
    }
}

#[test]
fn inverses_learn_to_reconstruct_and_alternating_alternates() {
    let (m, mut p) = model("mlp:5-8-8-3", "tanh", 7);
    let mut r = dtp(0.1, 0.0, "parallel");
    r.init(&m, &mut p, 2).unwrap();
    let b = batch(16, 5, 3, 8);
    let first = {
        r.step(&m, &p, &b, Loss::CrossEntropy).unwrap();
        r.inverse_loss
    };
    for _ in 0..300 {
        let out = r.step(&m, &p, &b, Loss::CrossEntropy).unwrap();
        descend(&mut p, &out.grads, "dtp.", 0.5);
    }
    let last = r.aux_loss().unwrap().1;
    assert!(
        last < 0.2 * first,
        "inverse loss {first} → {last} did not fall"
    );

    let mut alt = dtp(0.1, 0.1, "alternating");
    let (m, mut p) = model("mlp:5-8-8-3", "tanh", 7);
    alt.init(&m, &mut p, 2).unwrap();
    let names = |g: &futureprop::nn::Grads| -> Vec<String> {
        g.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>()
    };
    let s1 = names(&alt.step(&m, &p, &b, Loss::CrossEntropy).unwrap().grads);
    let s2 = names(&alt.step(&m, &p, &b, Loss::CrossEntropy).unwrap().grads);
    assert!(
        !s1.is_empty() && s1.iter().all(|k| k.starts_with("dtp.")),
        "{s1:?}"
    );
    assert!(
        !s2.is_empty() && s2.iter().all(|k| k.starts_with("fc")),
        "{s2:?}"
    );
}

#[test]
fn bad_options_and_models_are_named() {
    let e = TargetPropagation::new(&futureprop::rule::DtpSettings {
        schedule: "sometimes".into(),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("dtp schedule") && e.contains("alternating"),
        "{e}"
    );
    let e = TargetPropagation::new(&futureprop::rule::DtpSettings {
        noise: -1.0,
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("dtp_noise"), "{e}");
    let m = Model::build(&futureprop::nn::ModelSpec {
        spec: "linear:4-3".into(),
        ..Default::default()
    })
    .unwrap();
    let mut p = m.init_params(futureprop::nn::Init::Auto, 0).unwrap();
    let mut r = build_rule("dtp").unwrap();
    // One Linear layer has no hidden block: DTP is backprop on the output layer.
    r.init(&m, &mut p, 0).unwrap();
}

#[test]
fn the_inverse_gradient_matches_finite_differences() {
    let (m, mut p) = model("mlp:4-6-5-3", "tanh", 11);
    let mut r = dtp(0.1, 0.0, "parallel");
    r.init(&m, &mut p, 4).unwrap();
    let b = batch(7, 4, 3, 12);
    let grads = r.step(&m, &p, &b, Loss::CrossEntropy).unwrap().grads;
    let mut loss_at = |p: &Params| {
        r.step(&m, p, &b, Loss::CrossEntropy).unwrap();
        r.inverse_loss
    };
    for key in ["dtp.inv1.weight", "dtp.inv1.bias"] {
        let g = grads.get(key).unwrap().to_vec_f64();
        for i in [0, 3, g.len() - 1] {
            let h = 1e-6;
            let mut v = p.get(key).unwrap().to_vec_f64();
            let shape = p.get(key).unwrap().shape().to_vec();
            let mut at = |d: f64| {
                let mut q = p.clone();
                v[i] += d;
                q.insert(key, Tensor::from_vec_f64(&shape, v.clone()).unwrap());
                v[i] -= d;
                loss_at(&q)
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (fd - g[i]).abs() < 1e-7 * (1.0 + fd.abs()),
                "{key}[{i}]: {fd} vs {}",
                g[i]
            );
        }
    }
}

//! Quantisation-aware training (`--quantize wXaY`, LSQ): the fake quantiser's grid,
//! clipping and step derivative; the layer's gradients against an oracle (a plain Linear
//! layer's backprop at the quantised values, through the clipped straight-through mask)
//! and against finite differences of LSQ's straight-through surrogate; every rule on the
//! shared passes training a quantised model, the others refused by name; the quantised
//! convolution against a plain one at the quantised values and against differences of
//! the surrogate.

use futureprop::data::Splits;
use futureprop::nn::{Init, Loss, Model, ModelSpec, Params, QuantScheme, Target};
use futureprop::rule::{Backprop, Batch, Rule};
use futureprop::tensor::{DType, Tensor};
use futureprop::train::{self, TrainConfig};

mod common;
use common::{layer_params, prototypes, rand_tensor};

#[test]
fn the_fake_quantiser_keeps_the_grid_clips_outside_and_gives_lsq_s_step_derivative() {
    // Signed 4 bits, s = 0.5: the grid is −8…7 steps, −4.0…3.5.
    let v = [-5.0, -4.0, -0.74, 0.0, 0.26, 1.0, 3.5, 3.6, 10.0];
    let t = Tensor::from_vec_f64(&[9], v.to_vec()).unwrap();
    let (q, m, r) = t.fake_quantize(&[0.5], 9, 8.0, 7.0).unwrap();
    let (q, m, r) = (q.to_vec_f64(), m.to_vec_f64(), r.to_vec_f64());
    let want_q = [-4.0, -4.0, -0.5, 0.0, 0.5, 1.0, 3.5, 3.5, 3.5];
    let want_m = [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0];
    // round(v/s) − v/s inside; −Q_N below, Q_P above.
    let want_r = [-8.0, 0.0, 0.48, 0.0, 0.48, 0.0, 0.0, 7.0, 7.0];
    for i in 0..9 {
        assert!((q[i] - want_q[i]).abs() < 1e-12, "q[{i}] = {}", q[i]);
        assert_eq!(m[i], want_m[i], "mask[{i}]");
        assert!((r[i] - want_r[i]).abs() < 1e-12, "r[{i}] = {}", r[i]);
    }
    // The f32 kernel (branch-free, vectorised) gives the same, over sizes that take its
    // parallel chunks and step runs across chunk boundaries.
    for (n, group) in [(9, 9), (70_001, 70_001), (200_000, 1000)] {
        let v = rand_tensor(&[n], 7, 3.0);
        let steps: Vec<f64> = (0..n / group).map(|i| 0.2 + 0.01 * i as f64).collect();
        let a = v.fake_quantize(&steps, group, 8.0, 7.0).unwrap();
        let b = v
            .to_dtype(DType::F32)
            .fake_quantize(&steps, group, 8.0, 7.0)
            .unwrap();
        for (x, y) in [(&a.0, &b.0), (&a.1, &b.1), (&a.2, &b.2)] {
            let d = x.sub(&y.to_dtype(DType::F64)).unwrap().to_vec_f64();
            assert!(
                d.iter().all(|e| e.abs() < 1e-5),
                "n {n}: f32 and f64 quantisers differ"
            );
        }
    }
    // Quantised values are on the grid: quantising them again changes nothing.
    let (again, _, _) = Tensor::from_vec_f64(&[9], q.clone())
        .unwrap()
        .fake_quantize(&[0.5], 9, 8.0, 7.0)
        .unwrap();
    assert_eq!(again.to_vec_f64(), q);
    // One step per row: rows of 2 with steps 1 and 0.25; unsigned 2 bits (0…3).
    let t = Tensor::from_vec_f64(&[2, 2], vec![2.4, -1.0, 0.6, 2.0]).unwrap();
    let (q, m, _) = t.fake_quantize(&[1.0, 0.25], 2, 0.0, 3.0).unwrap();
    assert_eq!(q.to_vec_f64(), vec![2.0, 0.0, 0.5, 0.75]);
    assert_eq!(m.to_vec_f64(), vec![1.0, 0.0, 1.0, 0.0]);
    assert!(t.fake_quantize(&[0.0, 1.0], 2, 0.0, 3.0).is_err());
    assert!(t.fake_quantize(&[1.0], 2, 0.0, 3.0).is_err());
    for (s, ok) in [
        ("w8a8", true),
        ("w2a2", true),
        ("w4a16", true),
        ("w1a8", false),
        ("8a8", false),
        ("w8", false),
    ] {
        assert_eq!(QuantScheme::parse(s, false).is_ok(), ok, "{s}");
    }
    assert_eq!(QuantScheme::parse("none", false).unwrap(), None);
}

/// A one-layer model `linear:4-3` quantised w3a3 (per channel or not), f64, its input
/// step calibrated on `x`.
fn quantized(per_channel: bool, x: &Tensor) -> (Model, Params) {
    let mut m = Model::build(&ModelSpec {
        spec: "linear:4-3".into(),
        activation: "relu".into(),
        bias: true,
    })
    .unwrap();
    m.quantize(QuantScheme {
        weight_bits: 3,
        input_bits: 3,
        per_channel,
        integer_forward: false,
    })
    .unwrap();
    let mut p = m
        .init_params(Init::XavierNormal, 5)
        .unwrap()
        .to_dtype(DType::F64);
    m.calibrate(&mut p, x).unwrap();
    (m, p)
}

/// The mean-squared loss of a plain `linear:4-3` with weight `w` and bias `b` on input `x`.
fn plain_loss(w: &[f64], b: &[f64], x: &Tensor, t: &Tensor) -> f64 {
    let m = Model::build(&ModelSpec {
        spec: "linear:4-3".into(),
        activation: "relu".into(),
        bias: true,
    })
    .unwrap();
    let mut p = Params::new();
    p.insert(
        "fc1.weight",
        Tensor::from_vec_f64(&[3, 4], w.to_vec()).unwrap(),
    );
    p.insert("fc1.bias", Tensor::from_vec_f64(&[3], b.to_vec()).unwrap());
    let out = m.forward(&p, x).unwrap();
    Loss::Mse.eval(&out, &Target::Values(t.clone())).unwrap().0
}

/// q(v), the mask and round(v/s) − v/s (or the clip) for signed 3 bits (−4…3), one step
/// per `group` elements: the test's own quantiser.
fn grid(v: &[f64], s: &[f64], group: usize, qn: f64, qp: f64) -> Vec<(f64, f64, f64)> {
    v.iter()
        .enumerate()
        .map(|(i, &x)| {
            let (s, u) = (s[i / group], x / s[i / group]);
            if u < -qn {
                (-qn * s, 0.0, -qn)
            } else if u > qp {
                (qp * s, 0.0, qp)
            } else {
                (u.round() * s, 1.0, u.round() - u)
            }
        })
        .collect()
}

/// LSQ's straight-through surrogate of the 3-bit quantiser at step `s` around `s0`:
/// q̃(s) = s·round(v/s₀) + v − s·v/s₀ inside the range, −Q_N·s or Q_P·s outside.
fn surrogate(v: &[f64], s0: &[f64], s: &[f64], group: usize) -> Vec<f64> {
    grid(v, s0, group, 4.0, 3.0)
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let (s0, s) = (s0[i / group], s[i / group]);
            if e.1 == 1.0 {
                s * (v[i] / s0).round() + v[i] - s * v[i] / s0
            } else {
                s * e.0 / s0
            }
        })
        .collect()
}

#[test]
fn lsq_gradients_match_backprop_through_the_mask_and_differences_of_the_surrogate() {
    let x = rand_tensor(&[5, 4], 1, 1.5);
    let t = rand_tensor(&[5, 3], 2, 1.0);
    let batch = Batch {
        x: x.clone(),
        target: Target::Values(t.clone()),
    };
    for per_channel in [false, true] {
        let (m, p) = quantized(per_channel, &x);
        let g = Backprop.step(&m, &p, &batch, Loss::Mse).unwrap().grads;
        let w = p.get("fc1.weight").unwrap().to_vec_f64();
        let b = p.get("fc1.bias").unwrap().to_vec_f64();
        let sw = p.get("fc1.weight_step").unwrap().to_vec_f64();
        let sa = p.get("fc1.input_step").unwrap().to_vec_f64()[0];
        let group = if per_channel { 4 } else { 12 };
        let wq = grid(&w, &sw, group, 4.0, 3.0);
        let xq = grid(&x.to_vec_f64(), &[sa], 20, 4.0, 3.0);
        let qw: Vec<f64> = wq.iter().map(|e| e.0).collect();
        let qx = Tensor::from_vec_f64(&[5, 4], xq.iter().map(|e| e.0).collect()).unwrap();
        // Oracle: the plain layer's gradient at q(W), q(x), by central differences.
        let h = 1e-6;
        let dw = g.get("fc1.weight").unwrap().to_vec_f64();
        for i in 0..12 {
            let (mut up, mut dn) = (qw.clone(), qw.clone());
            up[i] += h;
            dn[i] -= h;
            let d = (plain_loss(&up, &b, &qx, &t) - plain_loss(&dn, &b, &qx, &t)) / (2.0 * h);
            // Through the clipped straight-through mask.
            assert!(
                (dw[i] - d * wq[i].1).abs() < 1e-6,
                "∂W[{i}]: {} vs {}",
                dw[i],
                d * wq[i].1
            );
        }
        // The weight steps: differences of LSQ's surrogate q̃(s) = s·round(v/s₀) + v −
        // s·v/s₀ inside (−Q_N·s, Q_P·s outside), times the gradient scale 1/√(N·Q_P).
        let ds = g.get("fc1.weight_step").unwrap().to_vec_f64();
        for (k, &got) in ds.iter().enumerate() {
            let (mut up, mut dn) = (sw.clone(), sw.clone());
            up[k] += h;
            dn[k] -= h;
            let lu = plain_loss(&surrogate(&w, &sw, &up, group), &b, &qx, &t);
            let ld = plain_loss(&surrogate(&w, &sw, &dn, group), &b, &qx, &t);
            let scale = 1.0 / (group as f64 * 3.0).sqrt();
            let want = (lu - ld) / (2.0 * h) * scale;
            assert!(
                (got - want).abs() < 1e-6,
                "per_channel {per_channel}, ∂s_W[{k}]: {got} vs {want}"
            );
        }
        // The input step, the same way over the batch's 20 input elements.
        let xs = x.to_vec_f64();
        let at = |s: f64| {
            let q = surrogate(&xs, &[sa], &[s], 20);
            plain_loss(&qw, &b, &Tensor::from_vec_f64(&[5, 4], q).unwrap(), &t)
        };
        let want = (at(sa + h) - at(sa - h)) / (2.0 * h) / (20.0 * 3.0f64).sqrt();
        let got = g.get("fc1.input_step").unwrap().to_vec_f64()[0];
        assert!((got - want).abs() < 1e-6, "∂s_x: {got} vs {want}");
        // LSQ's initial steps: 2⟨|v|⟩/√Q_P.
        let mean = xs.iter().map(|v| v.abs()).sum::<f64>() / 20.0;
        assert!((sa - 2.0 * mean / 3.0f64.sqrt()).abs() < 1e-12);
    }
}

fn config(rule: &str, quantize: &str, out: &std::path::Path) -> TrainConfig {
    TrainConfig {
        model: "mlp:64-32-32-4".into(),
        rule: rule.into(),
        epochs: 3,
        batch_size: 32,
        quiet: true,
        quantize: quantize.into(),
        out: Some(out.to_path_buf()),
        optim: futureprop::optim::OptimizerConfig::new("adam", 0.003),
        ..TrainConfig::default()
    }
}

/// The rules whose passes are the model's forward and backward maps.
const SHARED: &[&str] = &[
    "bp", "fa", "usf", "brsf", "frsf", "kp", "dfa", "bfa", "drtp", "local", "dsn", "dni", "cdni",
    "ff",
];

#[test]
fn a_quantised_convolution_is_the_plain_one_at_the_quantised_values_through_the_masks() {
    use futureprop::nn::{Conv2d, ConvOptions, Layer, QuantConv2d, Record};
    let conv = || {
        let opts = ConvOptions {
            padding: (1, 1),
            stride: (2, 1),
            ..Default::default()
        };
        Conv2d::new("c", (2, 5, 5), 3, (3, 3), opts).unwrap()
    };
    let x = rand_tensor(&[4, 50], 3, 1.5);
    for per_channel in [false, true] {
        let scheme = QuantScheme {
            weight_bits: 3,
            input_bits: 3,
            per_channel,
            integer_forward: false,
        };
        let q = QuantConv2d::new(conv(), scheme, false);
        let mut p = layer_params(&q, 4);
        q.calibrate(&mut p, &x).unwrap();
        let sw = p.get("c.weight_step").unwrap().to_vec_f64();
        let sa = p.get("c.input_step").unwrap().get(0).unwrap();
        let w = p.get("c.weight").unwrap().to_vec_f64();
        let group = if per_channel { 18 } else { 54 };
        let wq = grid(&w, &sw, group, 4.0, 3.0);
        let xq = grid(&x.to_vec_f64(), &[sa], 200, 4.0, 3.0);
        let qw = Tensor::from_vec_f64(&[3, 2, 3, 3], wq.iter().map(|e| e.0).collect()).unwrap();
        let qx = Tensor::from_vec_f64(&[4, 50], xq.iter().map(|e| e.0).collect()).unwrap();
        // The plain convolution at q(x), q(W).
        let plain = conv();
        let mut pp = p.clone();
        pp.insert("c.weight", qw.clone());
        let mut rec = Record::training("c", qx.clone(), Some(0));
        let y_plain = plain.forward(&pp, &qx, &mut rec).unwrap();
        let mut qrec = Record::training("c", x.clone(), Some(0));
        let y = q.forward(&p, &x, &mut qrec).unwrap();
        assert!(y.sub(&y_plain).unwrap().norm() < 1e-12);
        let d_out = rand_tensor(y.shape(), 5, 1.0);
        let mut g = futureprop::nn::Grads::new();
        let dx = q
            .backward(&p, &qrec, &d_out, &mut g, true)
            .unwrap()
            .unwrap();
        let mut gp = futureprop::nn::Grads::new();
        plain.param_grads(&pp, &rec, &d_out, &mut gp).unwrap();
        let dx_plain = plain.input_grad(&pp, &rec, &d_out).unwrap().to_vec_f64();
        let (dw, dw_plain) = (
            g.get("c.weight").unwrap().to_vec_f64(),
            gp.get("c.weight").unwrap().to_vec_f64(),
        );
        for i in 0..w.len() {
            assert!((dw[i] - dw_plain[i] * wq[i].1).abs() < 1e-12, "∂W[{i}]");
        }
        let dx = dx.to_vec_f64();
        for i in 0..dx.len() {
            assert!((dx[i] - dx_plain[i] * xq[i].1).abs() < 1e-12, "∂x[{i}]");
        }
        // The steps: L = ⟨δ, conv(q(x), q(W))⟩ with LSQ's straight-through surrogate in
        // the step, by central differences, times the gradient scale 1/√(N·Q_P).
        let loss = |xv: Vec<f64>, wv: Vec<f64>| {
            let mut pp = p.clone();
            pp.insert("c.weight", Tensor::from_vec_f64(&[3, 2, 3, 3], wv).unwrap());
            let xt = Tensor::from_vec_f64(&[4, 50], xv).unwrap();
            let mut r = Record::training("c", xt.clone(), Some(0));
            plain
                .forward(&pp, &xt, &mut r)
                .unwrap()
                .dot(&d_out)
                .unwrap()
        };
        let h = 1e-6;
        let qxv = qx.to_vec_f64();
        let ds = g.get("c.weight_step").unwrap().to_vec_f64();
        assert_eq!(ds.len(), if per_channel { 3 } else { 1 });
        for (k, &got) in ds.iter().enumerate() {
            let (mut up, mut dn) = (sw.clone(), sw.clone());
            up[k] += h;
            dn[k] -= h;
            let want = (loss(qxv.clone(), surrogate(&w, &sw, &up, group))
                - loss(qxv.clone(), surrogate(&w, &sw, &dn, group)))
                / (2.0 * h)
                / (group as f64 * 3.0).sqrt();
            assert!((got - want).abs() < 1e-6, "∂s_W[{k}]: {got} vs {want}");
        }
        let xs = x.to_vec_f64();
        let qwv = qw.to_vec_f64();
        let want = (loss(surrogate(&xs, &[sa], &[sa + h], 200), qwv.clone())
            - loss(surrogate(&xs, &[sa], &[sa - h], 200), qwv.clone()))
            / (2.0 * h)
            / (200.0 * 3.0f64).sqrt();
        let got = g.get("c.input_step").unwrap().get(0).unwrap();
        assert!((got - want).abs() < 1e-6, "∂s_x: {got} vs {want}");
    }
}

#[test]
fn every_rule_on_the_shared_passes_trains_quantised_and_the_others_refuse() {
    let t = tempfile::tempdir().unwrap();
    let s = Splits {
        train: prototypes(256, 1),
        validation: None,
        test: prototypes(64, 2),
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let accuracy = |rule: &str, q: &str| {
        let out = t.path().join(format!("{rule}-{q}"));
        pool.install(|| train::run(&config(rule, q, &out), &s, None))
            .map(|r| {
                let f = |k: &str| r[k].as_f64().unwrap();
                (f("test_loss"), f("test_accuracy"))
            })
    };
    for rule in &futureprop::rule::names() {
        if !SHARED.contains(rule) {
            let e = accuracy(rule, "w8a8")
                .expect_err(&format!("{rule} quantised must be refused"))
                .to_string();
            assert!(
                e.contains("quantize") && e.contains(&format!("not {rule}")),
                "{rule}: {e}"
            );
            continue;
        }
        let full = accuracy(rule, "none").unwrap();
        let w8 = accuracy(rule, "w8a8").unwrap_or_else(|e| panic!("{rule} w8a8: {e}"));
        // The same seeds and batches: 8 bits follow the f32 run (measured: within 18 %
        // of its test loss for every rule, most within 5 %).
        assert!(
            w8.0 <= 1.25 * full.0 + 0.02,
            "{rule}: w8a8 test loss {} against f32 {}",
            w8.0,
            full.0
        );
    }
    // At 2 bits bp still learns the task (4 classes).
    assert!(accuracy("bp", "w2a2").unwrap().1 > 0.5);
}

#[test]
fn low_precision_dfa_projects_a_few_bit_error_through_integer_feedback() {
    use futureprop::rule::build_rule_with;
    let (m, p) = common::model("mlp:12-8-6-3", "relu", 4);
    let distinct = |t: &Tensor| {
        let mut v = t.to_vec_f64();
        v.sort_by(f64::total_cmp);
        v.dedup();
        v
    };
    let drawn = |precision: &str| {
        let mut r = build_rule_with(
            "dfa",
            &serde_json::json!({ "feedback_precision": precision }),
        )
        .unwrap();
        let mut p = p.clone();
        r.init(&m, &mut p, 9).unwrap();
        r.direct_projection(&m, 0).unwrap().clone()
    };
    let full = drawn("f32").to_vec_f64();
    let mean = full.iter().map(|x| x.abs()).sum::<f64>() / full.len() as f64;
    // binary: mean|B|·sign B
    let b = drawn("binary").to_vec_f64();
    for (q, f) in b.iter().zip(&full) {
        assert!((q - mean * f.signum()).abs() < 1e-6);
    }
    // ternary: 0 within 0.7·mean|B|, ±α outside
    let t = drawn("ternary");
    assert!(distinct(&t).len() <= 3);
    for (q, f) in t.to_vec_f64().iter().zip(&full) {
        assert_eq!(*q == 0.0, f.abs() <= 0.7 * mean, "{f} → {q}");
    }
    // int8: at most 255 values, each within half a step of the drawn one
    let top = full.iter().fold(0.0f64, |a, x| a.max(x.abs()));
    let i8 = drawn("int8").to_vec_f64();
    for (q, f) in i8.iter().zip(&full) {
        assert!((q - f).abs() <= top / 127.0 / 2.0 + 1e-9);
    }
    // A 2-bit error is ternary: the output layer's recorded error is e on the grid
    // {−1, 0, 1}·max|e|, and the hidden signals are its projections.
    let batch = Batch {
        x: rand_tensor(&[10, 12], 3, 1.0),
        target: Target::Classes((0..10).map(|i| i % 3).collect()),
    };
    let step = |bits: u32| {
        let mut r = build_rule_with("dfa", &serde_json::json!({ "error_bits": bits })).unwrap();
        let mut p = p.clone();
        r.init(&m, &mut p, 9).unwrap();
        r.step(&m, &p, &batch, Loss::CrossEntropy).unwrap()
    };
    let (exact, coarse) = (step(0), step(2));
    let last = m.layers().len() - 1;
    let e = exact.trace.errors[last].as_ref().unwrap().to_vec_f64();
    let q = coarse.trace.errors[last].as_ref().unwrap().to_vec_f64();
    let top = e.iter().fold(0.0f64, |a, x| a.max(x.abs()));
    for (q, e) in q.iter().zip(&e) {
        assert!((q - (e / top).round() * top).abs() < 1e-12, "{e} → {q}");
    }
    assert!(distinct(coarse.trace.errors[last].as_ref().unwrap()).len() <= 3);
    // At 16 bits the update is DFA's to within the grid's step.
    let fine = step(16);
    for (name, g) in exact.grads.iter() {
        let d = g.sub(fine.grads.get(name).unwrap()).unwrap().norm() / g.norm();
        assert!(d < 1e-3, "{name}: {d}");
    }
    assert!(build_rule_with("dfa", &serde_json::json!({ "error_bits": 1 })).is_err());
    assert!(build_rule_with("dfa", &serde_json::json!({ "feedback_precision": "int4" })).is_err());
}

#[test]
fn integer_inference_gives_the_fake_quantised_outputs() {
    for (scheme, per_channel) in [
        ("w8a8", false),
        ("w8a8", true),
        ("w4a4", true),
        ("w4a8", false),
    ] {
        let mut m = Model::build(&ModelSpec {
            spec: "mlp:20-16-12-5".into(),
            activation: "relu".into(),
            bias: true,
        })
        .unwrap();
        m.quantize(QuantScheme::parse(scheme, per_channel).unwrap().unwrap())
            .unwrap();
        let mut p = m.init_params(Init::Torch, 3).unwrap();
        let x = rand_tensor(&[37, 20], 8, 2.0).to_dtype(DType::F32);
        m.calibrate(&mut p, &x).unwrap();
        let fake = m.forward(&p, &x).unwrap().to_vec_f64();
        let int = m.forward_integer(&p, &x).unwrap().to_vec_f64();
        // Training's forward pass on the int8 kernel (`quantize_integer_forward`): the
        // same outputs, and the same gradients (the backward pass reads the same grids).
        let mut q = QuantScheme::parse(scheme, per_channel).unwrap().unwrap();
        q.integer_forward = true;
        let mut mi = Model::build(m.spec()).unwrap();
        mi.quantize(q).unwrap();
        let batch = Batch {
            x: x.clone(),
            target: Target::Classes((0..37).map(|i| i % 5).collect()),
        };
        let g = Backprop.step(&m, &p, &batch, Loss::CrossEntropy).unwrap();
        let gi = Backprop.step(&mi, &p, &batch, Loss::CrossEntropy).unwrap();
        let trained = gi.trace.output().unwrap().to_vec_f64();
        let top = fake.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        for ((a, b), c) in fake.iter().zip(&int).zip(&trained) {
            assert!(
                (a - b).abs() <= 1e-5 * top && (a - c).abs() <= 1e-5 * top,
                "{scheme} {per_channel}: {a} vs {b} vs {c}"
            );
        }
        for (n, t) in g.grads.iter() {
            let d = gi.grads.get(n).unwrap().sub(t).unwrap().norm();
            assert!(d <= 1e-4 * t.norm().max(1e-6), "{scheme} {n}: {d}");
        }
    }
}

#[test]
fn a_saved_quantised_run_evaluates_the_same_on_integer_kernels() {
    let t = tempfile::tempdir().unwrap();
    let s = Splits {
        train: prototypes(256, 1),
        validation: None,
        test: prototypes(64, 2),
    };
    for q in ["w8a8", "none"] {
        let out = t.path().join(q);
        let cfg = config("bp", q, &out);
        train::run(&cfg, &s, None).unwrap();
        let ck = train::checkpoint::load(&out.join("checkpoint.safetensors")).unwrap();
        let float = train::evaluate_checkpoint(&cfg, &ck, &s.test, false).unwrap();
        if q == "none" {
            let e = train::evaluate_checkpoint(&cfg, &ck, &s.test, true).unwrap_err();
            assert!(e.to_string().contains("not quantised"), "{e}");
            continue;
        }
        let int = train::evaluate_checkpoint(&cfg, &ck, &s.test, true).unwrap();
        assert_eq!(int["integer"], true);
        assert_eq!(int["test_accuracy"], float["test_accuracy"]);
        let (a, b) = (
            int["test_loss"].as_f64().unwrap(),
            float["test_loss"].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-4 * b.max(1.0), "{a} vs {b}");
    }
}

#[test]
fn dfa_gives_no_update_to_units_the_next_quantiser_clips() {
    // Block 1's output is Q(relu(a)) for the next layer: DFA's signal takes the
    // quantiser's straight-through mask with f′, as BP's chain would.
    let mut m = Model::build(&ModelSpec {
        spec: "mlp:12-8-6-3".into(),
        activation: "relu".into(),
        bias: true,
    })
    .unwrap();
    m.quantize(QuantScheme::parse("w4a4", false).unwrap().unwrap())
        .unwrap();
    let x = rand_tensor(&[10, 12], 3, 1.0);
    let mut p = m
        .init_params(Init::XavierNormal, 2)
        .unwrap()
        .to_dtype(DType::F64);
    m.calibrate(&mut p, &x).unwrap();
    // fc2's unsigned 4-bit input grid tops out at 15·s: a small s clips most of block
    // 1's positive outputs.
    p.insert(
        "fc2.input_step",
        Tensor::from_vec_f64(&[1], vec![0.02]).unwrap(),
    );
    let batch = Batch {
        x,
        target: Target::Classes((0..10).map(|i| i % 3).collect()),
    };
    let mut r = futureprop::rule::build_rule("dfa").unwrap();
    r.init(&m, &mut p, 9).unwrap();
    let out = r.step(&m, &p, &batch, Loss::CrossEntropy).unwrap();
    // act1's signal (e·B ⊙ mask) and fc2's input mask.
    let d_act = out.trace.errors[1].as_ref().unwrap().to_vec_f64();
    let mask = out.trace.records[2].saved[1].to_vec_f64();
    let clipped = mask.iter().filter(|&&v| v == 0.0).count();
    assert!(clipped > 10, "only {clipped} clipped");
    for (d, k) in d_act.iter().zip(&mask) {
        assert!(*k == 1.0 || *d == 0.0, "a clipped unit got signal {d}");
    }
    assert!(d_act.iter().any(|d| *d != 0.0));
}

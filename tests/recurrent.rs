//! Recurrent layers: BPTT against central finite differences for Elman and LSTM cells
//! over several steps (and the input gradient), truncated BPTT against its definition,
//! UORO's estimate unbiased (its mean over many draws approaches the BPTT gradient), the
//! adding problem's data, and the `lstm:` / `rnn:` model specs.

mod common;
use common::{check_layer_gradients, layer_forward, rand_tensor};
use futureprop::nn::{Cell, Grads, Layer, Model, ModelSpec, OnlineGrads, Params, Recurrent};

fn params(layer: &dyn Layer, seed: u64) -> Params {
    // Weights scaled up so the nonlinearities are exercised.
    let mut p = common::layer_params(layer, seed);
    p.scale_in_place(2.0);
    p
}

#[test]
fn bptt_matches_finite_differences_for_elman_and_lstm() {
    for (cell, label) in [(Cell::Elman, "elman"), (Cell::Lstm, "lstm")] {
        let layer = Recurrent::new("rec", cell, 3, 4, 5).unwrap();
        let p = params(&layer, 1);
        let x = rand_tensor(&[2, 15], 2, 1.0);
        check_layer_gradients(&layer, &p, &x, 1e-6, label);
    }
}

#[test]
fn truncated_bptt_keeps_only_the_last_steps() {
    for cell in [Cell::Elman, Cell::Lstm] {
        let full = Recurrent::new("rec", cell, 2, 3, 6).unwrap();
        let trunc = full.clone().truncated(2).unwrap();
        let p = params(&full, 3);
        let x = rand_tensor(&[3, 12], 4, 1.0);
        let (y, rec) = layer_forward(&full, &p, &x);
        let d = rand_tensor(y.shape(), 5, 1.0);
        let dx_full = full.input_grad(&p, &rec, &d).unwrap().to_vec_f64();
        let dx_trunc = trunc.input_grad(&p, &rec, &d).unwrap().to_vec_f64();
        for i in 0..3 {
            for c in 0..12 {
                let (a, b) = (dx_full[i * 12 + c], dx_trunc[i * 12 + c]);
                if c >= 8 {
                    // The last two steps (columns 8..12) see the same error.
                    assert!((a - b).abs() < 1e-12, "{cell:?} step {} {a} {b}", c / 2);
                } else {
                    assert_eq!(b, 0.0, "{cell:?} column {c} beyond the truncation");
                }
            }
        }
        // Truncation changes the weight gradient (earlier steps no longer contribute).
        let (mut gf, mut gt) = (Grads::new(), Grads::new());
        full.param_grads(&p, &rec, &d, &mut gf).unwrap();
        trunc.param_grads(&p, &rec, &d, &mut gt).unwrap();
        let diff = gf
            .get("rec.w_ih")
            .unwrap()
            .sub(gt.get("rec.w_ih").unwrap())
            .unwrap()
            .norm();
        assert!(diff > 1e-6, "{cell:?}: {diff}");
        assert!(
            futureprop::nn::Recurrent::new("r", cell, 2, 3, 6)
                .unwrap()
                .truncated(0)
                .is_err()
        );
    }
}

#[test]
fn uoro_is_an_unbiased_estimate_of_the_bptt_gradient() {
    for (cell, draws) in [(Cell::Elman, 20_000u64), (Cell::Lstm, 20_000)] {
        let layer = Recurrent::new("rec", cell, 2, 3, 4).unwrap();
        let p = params(&layer, 7);
        let x = rand_tensor(&[1, 8], 8, 1.0);
        let (y, rec) = layer_forward(&layer, &p, &x);
        let d = rand_tensor(y.shape(), 9, 1.0);
        let mut exact = Grads::new();
        layer.param_grads(&p, &rec, &d, &mut exact).unwrap();
        let draw = |s: u64| {
            let mut r = rec.clone();
            r.train = Some(s);
            let mut g = Grads::new();
            layer.online_param_grads(&p, &r, &d, &mut g).unwrap();
            g
        };
        let one = draw(0);
        let mut mean = one.clone();
        for s in 1..draws {
            mean.axpy(1.0, &draw(s)).unwrap();
        }
        mean.scale_in_place(1.0 / draws as f64);
        let flat = |g: &Grads| -> Vec<f64> {
            ["rec.w_ih", "rec.w_hh", "rec.bias"]
                .iter()
                .flat_map(|n| g.get(n).unwrap().to_vec_f64())
                .collect()
        };
        let (e, m, o) = (flat(&exact), flat(&mean), flat(&one));
        let dist = |a: &[f64]| -> f64 {
            a.iter()
                .zip(&e)
                .map(|(u, v)| (u - v).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let en = e.iter().map(|v| v * v).sum::<f64>().sqrt();
        // One draw is far off; the mean of many is close (error ~ 1/√draws).
        assert!(
            dist(&o) > 0.3 * en,
            "{cell:?}: one draw {} vs |g| {en}",
            dist(&o)
        );
        assert!(
            dist(&m) < 0.1 * en,
            "{cell:?}: mean {} vs |g| {en}",
            dist(&m)
        );
    }
}

#[test]
fn adding_problem_data_and_recurrent_specs() {
    let d = futureprop::data::synthetic::adding(50, 10, 1).unwrap();
    assert_eq!(d.x.shape(), &[50, 20]);
    let x = d.x.to_vec_f64();
    let y = d.values.as_ref().unwrap().to_vec_f64();
    for i in 0..50 {
        let row = &x[i * 20..(i + 1) * 20];
        let marked: Vec<usize> = (0..10).filter(|t| row[2 * t + 1] == 1.0).collect();
        assert_eq!(marked.len(), 2);
        assert!(marked[0] < 5 && marked[1] >= 5);
        let sum = row[2 * marked[0]] + row[2 * marked[1]];
        assert!((sum - y[i]).abs() < 1e-6);
    }
    assert!(futureprop::data::check_name("adding:1").is_err());
    assert!(futureprop::data::check_name("adding:30").is_ok());
    let m = Model::build(&ModelSpec {
        spec: "lstm:28x28-16-10".into(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!((m.inputs(), m.outputs()), (784, 10));
    for bad in ["lstm:28-16-10", "rnn:28x28-16", "lstm:0x28-16-10"] {
        let e = Model::build(&ModelSpec {
            spec: bad.into(),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("STEPSxFEATURES"), "{bad}: {e}");
    }
    // Recurrent layers take backprop through time and UORO only.
    let e = futureprop::rule::check_layers("fa", &m)
        .unwrap_err()
        .to_string();
    assert!(e.contains("recurrent") && e.contains("uoro"), "{e}");
    assert!(futureprop::rule::check_layers("uoro", &m).is_ok());
}

#[test]
fn an_lstm_model_trained_by_backprop_has_the_finite_difference_gradient() {
    // Backprop drives the recurrent layer through its one-pass `backward`.
    let m = Model::build(&ModelSpec {
        spec: "lstm:3x2-4-3".into(),
        ..Default::default()
    })
    .unwrap();
    let mut p = m.init_params(futureprop::nn::Init::Auto, 1).unwrap();
    p = p.to_dtype(futureprop::tensor::DType::F64);
    let b = futureprop::rule::Batch {
        x: rand_tensor(&[5, 6], 2, 1.0),
        target: futureprop::nn::Target::Classes(vec![0, 1, 2, 1, 0]),
    };
    let loss = futureprop::nn::Loss::CrossEntropy;
    let out = futureprop::rule::build_rule("bp")
        .unwrap()
        .step(&m, &p, &b, loss)
        .unwrap();
    let f = |q: &Params| {
        loss.eval(&m.forward(q, &b.x).unwrap(), &b.target)
            .unwrap()
            .0
    };
    for name in ["lstm.w_ih", "lstm.w_hh", "lstm.bias", "fc.weight"] {
        let n = p.get(name).unwrap().len();
        let an = out.grads.get(name).unwrap().to_vec_f64();
        common::check_param(&p, name, &an, (0..n).step_by(3).collect(), 1e-6, "lstm", f);
    }
}

#[test]
fn online_uoro_keeps_no_history_and_gives_the_replayed_estimate() {
    for cell in [Cell::Elman, Cell::Lstm] {
        let layer = Recurrent::new("rec", cell, 2, 3, 6).unwrap();
        let p = params(&layer, 11);
        let x = rand_tensor(&[4, 12], 12, 1.0);
        let (y, replay) = layer_forward(&layer, &p, &x);
        let d = rand_tensor(y.shape(), 13, 1.0);
        let mut online = futureprop::nn::Record::training("rec", x.clone(), Some(5));
        online.online = true;
        let y2 = layer.forward(&p, &x, &mut online).unwrap();
        assert_eq!(y2, y, "{cell:?}: the online pass computes the same output");
        // Only h_T, s̃ and θ̃ are kept, whatever the number of steps.
        assert_eq!(online.saved.len(), 3, "{cell:?}");
        let (mut a, mut b) = (Grads::new(), Grads::new());
        layer.online_param_grads(&p, &online, &d, &mut a).unwrap();
        let mut r = replay.clone();
        r.train = Some(5);
        layer.online_param_grads(&p, &r, &d, &mut b).unwrap();
        for k in ["rec.w_ih", "rec.w_hh", "rec.bias"] {
            let (u, v) = (
                a.get(k).unwrap().to_vec_f64(),
                b.get(k).unwrap().to_vec_f64(),
            );
            for (s, t) in u.iter().zip(&v) {
                assert!(
                    (s - t).abs() < 1e-12 * (1.0 + t.abs()),
                    "{cell:?} {k}: {s} vs {t}"
                );
            }
        }
        // No history: backprop through time refuses the online record.
        let e = layer.input_grad(&p, &online, &d).unwrap_err().to_string();
        assert!(e.contains("history"), "{e}");
    }
    // Under uoro a recurrent layer must come first.
    let desc = futureprop::nn::ModelDesc::from_toml(
        "input = 12\n[[layers]]\ntype = \"linear\"\nout = 12\n[[layers]]\ntype = \"lstm\"\nhidden = 3\nsteps = 6\n[[layers]]\ntype = \"linear\"\nout = 2\n",
    )
    .unwrap();
    let m = Model::from_desc(&ModelSpec::default(), &desc).unwrap();
    let p = m.init_params(futureprop::nn::Init::Auto, 0).unwrap();
    let b = futureprop::rule::Batch {
        x: rand_tensor(&[3, 12], 1, 1.0).to_dtype(futureprop::tensor::DType::F32),
        target: futureprop::nn::Target::Classes(vec![0, 1, 0]),
    };
    let e = futureprop::rule::build_rule("uoro")
        .unwrap()
        .step(&m, &p, &b, futureprop::nn::Loss::CrossEntropy)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("first layer"), "{e}");
    // And the model is refused when it is built for the rule.
    let e = futureprop::rule::check_layers("uoro", &m)
        .unwrap_err()
        .to_string();
    assert!(e.contains("first layer"), "{e}");
}

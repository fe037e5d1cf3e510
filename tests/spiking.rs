//! Spiking networks (`snn:...`): surrogate-gradient BPTT equals the exact gradient of the
//! smooth surrogate network (finite differences, every surrogate and decoder), the LIF
//! dynamics and their detached resets on a hand case, the spike encoders, and a spiking
//! net learning under bp while rules without BPTT refuse it by name.

use futureprop::data::Splits;
use futureprop::nn::{Loss, Model, ModelSpec, Params, Target};
use futureprop::rule::{Backprop, Batch, Rule};
use futureprop::tensor::Tensor;
use futureprop::tensor::spiking::{Encoding, Lif, Reset, Surrogate, encode};
use futureprop::train::{self, TrainConfig};

mod common;
use common::{check_param, model, prototypes, rand_tensor};

/// A spiking model in f64 (ReLU unused), Xavier-normal weights from seed 3.
fn snn(spec: &str) -> (Model, Params) {
    model(spec, "relu", 3)
}

#[test]
fn surrogate_bptt_is_the_gradient_of_the_smooth_network() {
    let x = rand_tensor(&[4, 6], 1, 1.5);
    let labels = Target::Classes(vec![0, 2, 1, 2]);
    for surrogate in ["atan", "fast-sigmoid", "triangle"] {
        for (decoder, adapt) in [
            ("mean", ""),
            ("count", ""),
            ("mean", ",adapt_beta=0.7,adapt_rho=0.8"),
        ] {
            let spec = format!(
                "snn:6-5-4-3,steps=5,encoding=direct,smooth=true,reset=none,beta=0.8,threshold=0.5,surrogate={surrogate},decoder={decoder},learn_beta=true{adapt}"
            );
            let (m, p) = snn(&spec);
            let batch = Batch {
                x: x.clone(),
                target: labels.clone(),
            };
            let g = Backprop
                .step(&m, &p, &batch, Loss::CrossEntropy)
                .unwrap()
                .grads;
            let loss = |q: &Params| {
                let out = m.forward(q, &x).unwrap();
                Loss::CrossEntropy.eval(&out, &labels).unwrap().0
            };
            for name in [
                "lif1.weight",
                "lif1.bias",
                "lif2.weight",
                "readout.weight",
                "readout.bias",
                "lif1.beta",
                "lif2.beta",
                "readout.beta",
            ] {
                let a = g.get(name).unwrap().to_vec_f64();
                assert!(
                    a.iter().any(|v| v.abs() > 1e-8),
                    "{spec}: {name} has no gradient"
                );
                let idx: Vec<usize> = (0..a.len()).step_by(3).collect();
                check_param(&p, name, &a, idx, 1e-5, &spec, loss);
            }
        }
    }
}

#[test]
fn lif_dynamics_and_detached_resets_on_a_hand_case() {
    // One unit, currents 0.7, 0.6, 0.9, β = 0.5, θ = 1.
    let i = Tensor::from_vec_f64(&[1, 3], vec![0.7, 0.6, 0.9]).unwrap();
    let lif = |reset| Lif {
        steps: 3,
        beta: 0.5,
        threshold: 1.0,
        reset,
        surrogate: Surrogate::FastSigmoid(1.0),
        smooth: false,
        spiking: true,
        adapt: None,
    };
    let sd = |x: f64| 1.0 / (1.0 + x.abs()).powi(2);
    let d = Tensor::from_vec_f64(&[1, 3], vec![1.0, -2.0, 0.5]).unwrap();
    // Subtract: U = 0.7, 0.35 + 0.6 = 0.95, 0.475 + 0.9 = 1.375 → spike at t = 3 only.
    // Zero gives the same here (no spike before t = 3).
    for reset in [Reset::Subtract, Reset::Zero] {
        let (s, u) = lif(reset).forward(&i).unwrap();
        assert_eq!(s.to_vec_f64(), vec![0.0, 0.0, 1.0]);
        let u = u.to_vec_f64();
        for (a, b) in u.iter().zip([0.7, 0.95, 1.375]) {
            assert!((a - b).abs() < 1e-12);
        }
        // g₃ = δ₃σ'(U₃ − θ); g₂ = δ₂σ'(U₂ − θ) + β g₃; g₁ = δ₁σ'(U₁ − θ) + β g₂.
        let g = lif(reset)
            .backward(&Tensor::from_vec_f64(&[1, 3], u).unwrap(), &d)
            .unwrap();
        let g3 = 0.5 * sd(0.375);
        let g2 = -2.0 * sd(-0.05) + 0.5 * g3;
        let g1 = sd(-0.3) + 0.5 * g2;
        for (a, b) in g.to_vec_f64().iter().zip([g1, g2, g3]) {
            assert!((a - b).abs() < 1e-12, "{reset:?}: {a} vs {b}");
        }
    }
    // Currents 1.2, 0.3, 0.4: a spike at t = 1, then the resets differ.
    let i = Tensor::from_vec_f64(&[1, 3], vec![1.2, 0.3, 0.4]).unwrap();
    // Subtract: U = 1.2, 0.6 + 0.3 − 1 = −0.1, −0.05 + 0.4 = 0.35.
    let (_, u) = lif(Reset::Subtract).forward(&i).unwrap();
    for (a, b) in u.to_vec_f64().iter().zip([1.2, -0.1, 0.35]) {
        assert!((a - b).abs() < 1e-12);
    }
    // Zero: U = 1.2, 0·0.6 + 0.3 = 0.3, 0.15 + 0.4 = 0.55; the carry through the reset
    // step is cut (∂U₂/∂U₁ = β(1 − r₂) = 0), under subtraction it is β (r detached).
    let (_, u) = lif(Reset::Zero).forward(&i).unwrap();
    let uz = u.to_vec_f64();
    for (a, b) in uz.iter().zip([1.2, 0.3, 0.55]) {
        assert!((a - b).abs() < 1e-12);
    }
    let g = lif(Reset::Zero).backward(&u, &d).unwrap().to_vec_f64();
    let g3 = 0.5 * sd(-0.45);
    let g2 = -2.0 * sd(-0.7) + 0.5 * g3;
    let g1 = sd(0.2);
    for (a, b) in g.iter().zip([g1, g2, g3]) {
        assert!((a - b).abs() < 1e-12, "zero: {a} vs {b}");
    }
}

#[test]
fn an_adaptive_threshold_rises_after_a_spike_and_decays() {
    // θ = 1, β = 0.5, ρ = 0.5, β_a = 1, reset by subtracting the threshold crossed.
    // t0: A = 1, U = 1.2, spike. t1: a = 1, A = 2, U = 0.6 + 0.3 − 1 = −0.1.
    // t2: a = 0.5, A = 1.5, U = −0.05 + 1.5 = 1.45 < 1.5: no spike (a fixed θ would fire).
    let lif = |adapt| Lif {
        steps: 3,
        beta: 0.5,
        threshold: 1.0,
        reset: Reset::Subtract,
        surrogate: Surrogate::FastSigmoid(1.0),
        smooth: false,
        spiking: true,
        adapt,
    };
    let i = Tensor::from_vec_f64(&[1, 3], vec![1.2, 0.3, 1.5]).unwrap();
    let (s, u) = lif(Some((0.5, 1.0))).forward(&i).unwrap();
    assert_eq!(s.to_vec_f64(), vec![1.0, 0.0, 0.0]);
    for (a, b) in u.to_vec_f64().iter().zip([1.2, -0.1, 1.45]) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
    let (s, _) = lif(None).forward(&i).unwrap();
    assert_eq!(s.to_vec_f64(), vec![1.0, 0.0, 1.0]);
}

#[test]
fn encoders_repeat_fire_at_their_rate_and_fire_bright_pixels_first() {
    let x = Tensor::from_vec_f64(&[1, 3], vec![0.0, 0.25, 1.0]).unwrap();
    let d = encode(&x, 4, Encoding::Direct, 0).unwrap().to_vec_f64();
    assert_eq!(d, [0.0, 0.25, 1.0].repeat(4));
    // Latency over T = 5: x = 1 at step 0, 0.25 at round(0.75·4) = 3, 0 never.
    let l = encode(&x, 5, Encoding::Latency, 0).unwrap().to_vec_f64();
    let at = |j: usize| (0..5).filter(|t| l[t * 3 + j] == 1.0).collect::<Vec<_>>();
    assert_eq!((at(0), at(1), at(2)), (vec![], vec![3], vec![0]));
    // Rate: Bernoulli(x) per step; 4000 steps within 4 standard deviations.
    let r = encode(&x, 4000, Encoding::Rate, 9).unwrap().to_vec_f64();
    let rate = |j: usize| (0..4000).map(|t| r[t * 3 + j]).sum::<f64>() / 4000.0;
    assert_eq!(rate(0), 0.0);
    assert_eq!(rate(2), 1.0);
    assert!((rate(1) - 0.25).abs() < 4.0 * (0.25f64 * 0.75 / 4000.0).sqrt());
    // Another seed, other spikes.
    assert_ne!(
        r,
        encode(&x, 4000, Encoding::Rate, 10).unwrap().to_vec_f64()
    );
}

fn splits() -> Splits {
    let mut s = Splits {
        train: prototypes(256, 1),
        validation: None,
        test: prototypes(64, 2),
    };
    // Intensities in [0, 1] for the rate code.
    for d in [&mut s.train, &mut s.test] {
        let v: Vec<f32> = d.x.to_vec_f32().iter().map(|v| (v + 1.5) / 3.0).collect();
        d.x = Tensor::from_vec(d.x.shape(), v).unwrap();
    }
    s
}

#[test]
fn a_spiking_net_learns_under_bp_and_rules_without_bptt_refuse_it() {
    let t = tempfile::tempdir().unwrap();
    let cfg = |rule: &str, model: &str| TrainConfig {
        model: model.into(),
        rule: rule.into(),
        epochs: 4,
        batch_size: 32,
        quiet: true,
        normalize: "none".into(),
        out: Some(t.path().join(rule)),
        optim: futureprop::optim::OptimizerConfig::new("adam", 0.005),
        ..TrainConfig::default()
    };
    for model in [
        "snn:64-32-4,steps=8",
        "snn:64-32-4,steps=8,decoder=count,reset=zero",
    ] {
        let s = train::run(&cfg("bp", model), &splits(), None).unwrap();
        let acc = s["test_accuracy"].as_f64().unwrap();
        assert!(acc > 0.8, "{model}: accuracy {acc}");
    }
    let e = train::run(&cfg("dfa", "snn:64-32-4,steps=8"), &splits(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("spiking") && e.contains("bp"), "{e}");
    for bad in [
        "snn:64-32-4,steps=0",
        "snn:64-32-4,beta=2",
        "snn:64-32-4,surrogate=relu",
        "snn:64-32-4,tau=3",
        "snn:64",
    ] {
        let e = Model::build(&ModelSpec {
            spec: bad.into(),
            ..Default::default()
        })
        .err()
        .unwrap_or_else(|| panic!("{bad} was accepted"))
        .to_string();
        assert!(!e.is_empty(), "{bad}");
    }
}

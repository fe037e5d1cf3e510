//! The feedback-alignment family against the backprop oracle.

use futureprop::data::{Batches, synthetic};
use futureprop::nn::{Grads, Init, Loss, Model, ModelSpec, Params, Target};
use futureprop::optim::{OptimizerConfig, StepContext, build_optimizer};
use futureprop::rule::{
    Batch, DirectFeedback, DirectKind, FeedbackAlignment, FeedbackKind, Rule, build_rule,
    build_rule_with,
};
use futureprop::tensor::{Tensor, Unary};
use rand::{Rng, SeedableRng};

fn mlp(spec: &str, act: &str) -> Model {
    Model::build(&ModelSpec {
        spec: spec.into(),
        activation: act.into(),
        bias: true,
    })
    .unwrap()
}

fn batch(n: usize, inputs: usize, classes: usize, seed: u64) -> Batch {
    let mut rng = futureprop::Rng::seed_from_u64(seed);
    let x: Vec<f32> = (0..n * inputs)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    Batch {
        x: Tensor::from_vec(&[n, inputs], x).unwrap(),
        target: Target::Classes((0..n).map(|_| rng.random_range(0..classes)).collect()),
    }
}

fn assert_grads_close(a: &Grads, b: &Grads, keys: &[String], label: &str) {
    for k in keys {
        let (x, y) = (
            a.get(k).unwrap().to_vec_f32(),
            b.get(k).unwrap().to_vec_f32(),
        );
        let scale = y.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        for (i, (p, q)) in x.iter().zip(&y).enumerate() {
            assert!(
                (p - q).abs() <= 1e-5 * scale,
                "{label}: {k}[{i}] {p} vs BP {q}"
            );
        }
    }
}

fn model_keys(p: &Params) -> Vec<String> {
    p.names()
        .iter()
        .filter(|n| n.starts_with("fc"))
        .cloned()
        .collect()
}

fn bp(model: &Model, p: &Params, b: &Batch, loss: Loss) -> Grads {
    build_rule("bp")
        .unwrap()
        .step(model, p, b, loss)
        .unwrap()
        .grads
}

#[test]
fn fa_with_feedback_equal_to_w_is_backprop() {
    let model = mlp("mlp:7-17-9-3", "tanh");
    let mut p = model.init_params(Init::XavierUniform, 1).unwrap();
    let mut fa = FeedbackAlignment::new(FeedbackKind::Random, Default::default(), 1e-3);
    fa.init(&model, &mut p, 1).unwrap();
    for l in ["fc2", "fc3"] {
        fa.set_feedback(l, p.get(&format!("{l}.weight")).unwrap().clone())
            .unwrap();
    }
    let b = batch(5, 7, 3, 2);
    let g = fa.step(&model, &p, &b, Loss::CrossEntropy).unwrap().grads;
    assert_grads_close(
        &g,
        &bp(&model, &p, &b, Loss::CrossEntropy),
        &model_keys(&p),
        "FA(F=W)",
    );
    // With its own random feedback, FA differs from BP below the output layer.
    let mut fa = build_rule("fa").unwrap();
    fa.init(&model, &mut p, 1).unwrap();
    let g = fa.step(&model, &p, &b, Loss::CrossEntropy).unwrap().grads;
    assert_ne!(
        g.get("fc1.weight").unwrap(),
        bp(&model, &p, &b, Loss::CrossEntropy)
            .get("fc1.weight")
            .unwrap()
    );
}

#[test]
fn usf_on_equal_magnitude_weights_is_backprop() {
    let model = mlp("mlp:6-11-8-4", "relu");
    let mut p = model.init_params(Init::XavierUniform, 3).unwrap();
    // Every weight of a layer gets the same magnitude c, keeping its sign.
    for (l, c) in [
        ("fc1.weight", 0.3),
        ("fc2.weight", 0.2),
        ("fc3.weight", 0.25),
    ] {
        let w = p.get(l).unwrap().unary(Unary::Sign).scale(c);
        p.insert(l, w);
    }
    let mut usf = build_rule("usf").unwrap();
    usf.init(&model, &mut p, 0).unwrap();
    let b = batch(8, 6, 4, 4);
    let g = usf.step(&model, &p, &b, Loss::CrossEntropy).unwrap().grads;
    assert_grads_close(
        &g,
        &bp(&model, &p, &b, Loss::CrossEntropy),
        &model_keys(&p),
        "uSF(|W|=c)",
    );
}

#[test]
fn dfa_with_one_hidden_layer_and_b_equal_to_w_out_is_backprop() {
    // One hidden block: BP's δ₁ = (e·W₂) ⊙ f′(a₁), DFA's δ₁ = (e·B₁) ⊙ f′(a₁); B₁ = W₂ makes them equal.
    let model = mlp("mlp:5-13-4", "sigmoid");
    let mut p = model.init_params(Init::XavierUniform, 5).unwrap();
    let mut dfa = DirectFeedback::new(DirectKind::Dfa, Default::default());
    dfa.init(&model, &mut p, 0).unwrap();
    dfa.set_matrix(&model, 0, p.get("fc2.weight").unwrap().clone())
        .unwrap();
    for loss in [Loss::CrossEntropy, Loss::Mse] {
        let b = batch(6, 5, 4, 6);
        let g = dfa.step(&model, &p, &b, loss).unwrap().grads;
        assert_grads_close(
            &g,
            &bp(&model, &p, &b, loss),
            &model_keys(&p),
            "DFA(B=W_out)",
        );
    }
    let e = dfa
        .set_matrix(&model, 0, Tensor::from_vec(&[2, 2], vec![0.0; 4]).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("[4, 13]"), "{e}");
}

#[test]
fn last_layer_update_is_backprops_for_every_rule() {
    let model = mlp("mlp:6-10-10-3", "tanh");
    let b = batch(7, 6, 3, 8);
    // The rules whose output layer learns from the true output error; the energy-based,
    // Forward-Forward and single-layer rules do not (tests/energy.rs, tests/decoupled.rs).
    let rules = [
        "bp", "fa", "dfa", "bfa", "usf", "brsf", "frsf", "kp", "drtp", "dni", "cdni", "local",
        "dsn",
    ];
    for name in &rules {
        assert!(futureprop::rule::names().contains(name));
        let mut p = model.init_params(Init::XavierUniform, 9).unwrap();
        let mut r = build_rule(name).unwrap();
        r.init(&model, &mut p, 9).unwrap();
        let g = r.step(&model, &p, &b, Loss::CrossEntropy).unwrap().grads;
        let want = bp(&model, &p, &b, Loss::CrossEntropy);
        let keys = if *name == "kp" {
            vec!["fc3.bias".to_string()]
        } else {
            vec!["fc3.weight".into(), "fc3.bias".into()]
        };
        assert_grads_close(&g, &want, &keys, name);
        // Every rule assigns an error signal to every layer of the trace.
        let out = r.step(&model, &p, &b, Loss::CrossEntropy).unwrap();
        assert!(
            out.trace.errors.iter().all(Option::is_some),
            "{name}: missing error signals"
        );
    }
}

#[test]
fn drtp_hidden_updates_depend_on_the_target_only() {
    let model = mlp("mlp:5-9-9-3", "tanh");
    let mut p = model.init_params(Init::XavierUniform, 10).unwrap();
    let mut r = build_rule("drtp").unwrap();
    r.init(&model, &mut p, 10).unwrap();
    let b = batch(6, 5, 3, 11);
    let g1 = r.step(&model, &p, &b, Loss::CrossEntropy).unwrap().grads;
    // Change the output layer, hence the output error: hidden updates stay the same.
    let mut q = p.clone();
    q.insert("fc3.weight", p.get("fc3.weight").unwrap().scale(-3.0));
    let g2 = r.step(&model, &q, &b, Loss::CrossEntropy).unwrap().grads;
    for k in ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"] {
        assert_eq!(g1.get(k).unwrap(), g2.get(k).unwrap(), "{k}");
    }
    assert_ne!(g1.get("fc3.weight").unwrap(), g2.get("fc3.weight").unwrap());
    // Change the targets: hidden updates change.
    let mut b2 = b.clone();
    b2.target = Target::Classes(vec![0; 6]);
    let g3 = r.step(&model, &p, &b2, Loss::CrossEntropy).unwrap().grads;
    assert_ne!(g1.get("fc1.weight").unwrap(), g3.get("fc1.weight").unwrap());
}

#[test]
fn sign_rules_keep_signs_and_differ_in_magnitudes() {
    let model = mlp("mlp:4-8-8-2", "relu");
    let b = batch(4, 4, 2, 12);
    for name in ["usf", "brsf", "frsf"] {
        let mut p = model.init_params(Init::XavierUniform, 13).unwrap();
        let mut r = build_rule(name).unwrap();
        r.init(&model, &mut p, 13).unwrap();
        r.step(&model, &p, &b, Loss::CrossEntropy).unwrap();
        let f1 = r.feedback_matrices(&model, &p).unwrap();
        assert_eq!(f1.len(), 2, "{name}: fc2 and fc3 need feedback");
        for (layer, f) in &f1 {
            let w = p.get(&format!("{layer}.weight")).unwrap();
            assert_eq!(
                f.unary(Unary::Sign),
                w.unary(Unary::Sign),
                "{name} {layer}: sign(F) = sign(W)"
            );
        }
        r.step(&model, &p, &b, Loss::CrossEntropy).unwrap();
        let f2 = r.feedback_matrices(&model, &p).unwrap();
        // brsf redraws magnitudes each batch; usf and frsf do not change with W fixed.
        assert_eq!(f1 != f2, name == "brsf", "{name}");
    }
}

fn angle_deg(a: &Tensor, b: &Tensor) -> f64 {
    (a.dot(b).unwrap() / (a.norm() * b.norm()))
        .clamp(-1.0, 1.0)
        .acos()
        .to_degrees()
}

#[test]
fn kolen_pollack_feedback_converges_to_w() {
    let data = synthetic::two_moons(256, 0.1, 0).unwrap();
    let model = mlp("mlp:2-32-32-2", "tanh");
    let mut r = build_rule_with("kp", &serde_json::json!({"decay": 0.1})).unwrap();
    let mut p = model.init_params(Init::XavierUniform, 0).unwrap();
    r.init(&model, &mut p, 0).unwrap();
    let key = FeedbackAlignment::kp_key("fc2");
    let start = angle_deg(p.get("fc2.weight").unwrap(), p.get(&key).unwrap());
    assert!(
        start > 60.0,
        "independent random matrices start near 90°: {start}"
    );
    let mut opt = build_optimizer(&OptimizerConfig::new("sgd", 0.1), 1).unwrap();
    for epoch in 0..250 {
        for b in Batches::new(&data, 32, true, 0, epoch) {
            let out = r.step(&model, &p, &b.unwrap(), Loss::CrossEntropy).unwrap();
            opt.step(&mut p, &out.grads, &mut StepContext::empty())
                .unwrap();
        }
    }
    // (W − F) shrinks by (1 − ηλ) per step: 2000 steps × 0.01.
    for l in ["fc2", "fc3"] {
        let a = angle_deg(
            p.get(&format!("{l}.weight")).unwrap(),
            p.get(&FeedbackAlignment::kp_key(l)).unwrap(),
        );
        assert!(a < 5.0, "{l}: angle(W, F) = {a}°");
    }
}

#[test]
fn direct_rules_reject_models_they_cannot_address() {
    let model = Model::from_layers(
        vec![Box::new(futureprop::nn::Activation::new("a", Unary::Tanh))],
        3,
    )
    .unwrap();
    let mut p = Params::new();
    for name in ["dfa", "bfa", "drtp"] {
        let e = build_rule(name)
            .unwrap()
            .init(&model, &mut p, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Linear"), "{name}: {e}");
    }
    assert!(
        build_rule_with(
            "fa",
            &serde_json::json!({
                "init": "bogus",
            })
        )
        .is_err()
    );
}

#[test]
fn bfa_shares_one_matrix_per_width() {
    let model = mlp("mlp:5-8-8-6-3", "tanh");
    let mut p = model.init_params(Init::XavierUniform, 1).unwrap();
    let mut bfa = DirectFeedback::new(DirectKind::Bfa, Default::default());
    bfa.init(&model, &mut p, 1).unwrap();
    assert_eq!(bfa.matrix(&model, 0), bfa.matrix(&model, 1));
    assert_ne!(
        bfa.matrix(&model, 1).unwrap().shape(),
        bfa.matrix(&model, 2).unwrap().shape()
    );
    let mut dfa = DirectFeedback::new(DirectKind::Dfa, Default::default());
    dfa.init(&model, &mut p, 1).unwrap();
    assert_ne!(dfa.matrix(&model, 0), dfa.matrix(&model, 1));
}

#[test]
fn diagnostics_measure_angles_by_their_definition() {
    use futureprop::diag;
    let a = Tensor::from_vec(&[2], vec![1.0, 0.0]).unwrap();
    let b = Tensor::from_vec(&[2], vec![0.0, 2.0]).unwrap();
    let c = Tensor::from_vec(&[2], vec![1.0, 1.0]).unwrap();
    assert!((diag::angle_deg(&a, &b).unwrap() - 90.0).abs() < 1e-12);
    assert!((diag::angle_deg(&a, &c).unwrap() - 45.0).abs() < 1e-5);
    assert_eq!(
        diag::cosine(&a, &Tensor::from_vec(&[2], vec![0.0, 0.0]).unwrap()).unwrap(),
        0.0
    );
    // BP against itself: every angle is zero; FA with F = W reports a zero feedback angle.
    let model = mlp("mlp:4-6-3", "tanh");
    let mut p = model.init_params(Init::XavierUniform, 2).unwrap();
    let mut fa = FeedbackAlignment::new(FeedbackKind::Random, Default::default(), 1e-3);
    fa.init(&model, &mut p, 2).unwrap();
    fa.set_feedback("fc2", p.get("fc2.weight").unwrap().clone())
        .unwrap();
    let d = diag::diagnose(&mut fa, &model, &p, &batch(5, 4, 3, 1), Loss::CrossEntropy).unwrap();
    assert_eq!(d.len(), 2);
    for l in &d {
        assert!(l.angle_to_bp_deg < 0.1, "{l:?}");
    }
    assert!(
        d[1].feedback_angle_deg.unwrap() < 0.1
            && (d[1].feedback_norm_ratio.unwrap() - 1.0).abs() < 1e-9
    );
}

#[test]
fn rules_report_the_fixed_state_they_keep() {
    let model = mlp("mlp:5-8-8-3", "tanh");
    let mut p = model.init_params(Init::XavierUniform, 1).unwrap();
    // fa: F for fc2 (8×8) and fc3 (3×8); dfa: B for both hidden blocks (3×8 each); f32.
    for (name, floats) in [
        ("bp", 0),
        ("fa", 64 + 24),
        ("dfa", 24 + 24),
        ("bfa", 24),
        ("usf", 0),
        ("kp", 0),
    ] {
        let mut r = build_rule(name).unwrap();
        r.init(&model, &mut p, 1).unwrap();
        assert_eq!(r.state_bytes(), 4 * floats, "{name}");
    }
}

//! Error-based predictive coding against its oracles: the change of variables keeps
//! predictive coding's fixed point (ePC and PC converge to the same updates); for small
//! output errors that fixed point gives backprop's updates; and the output error reaches
//! every layer at the first inference step, where state-based PC's reaches only the top.

mod common;
use common::{cosine, model, rand_tensor};
use futureprop::nn::{Loss, Target};
use futureprop::rule::{Batch, Rule, build_rule, build_rule_with};
use serde_json::json;

fn rule(name: &str, settings: serde_json::Value) -> Box<dyn Rule> {
    build_rule_with(name, &settings).unwrap()
}

fn classes(rows: usize, inputs: usize, k: usize, seed: u64) -> Batch {
    Batch {
        x: rand_tensor(&[rows, inputs], seed, 1.0),
        target: Target::Classes((0..rows).map(|i| (i * 5 + 1) % k).collect()),
    }
}

#[test]
fn epc_converges_to_the_updates_of_converged_pc() {
    let (m, p) = model("mlp:5-8-7-6-3", "tanh", 1);
    let batch = classes(9, 5, 3, 2);
    let tol = 1e-11;
    let mut pc = rule(
        "pc",
        json!({"steps": 20000, "gamma": 0.2, "tolerance": tol}),
    );
    let mut epc = rule(
        "epc",
        json!({"steps": 20000, "gamma": 0.2, "tolerance": tol}),
    );
    let a = pc.step(&m, &p, &batch, Loss::CrossEntropy).unwrap();
    let b = epc.step(&m, &p, &batch, Loss::CrossEntropy).unwrap();
    assert!(
        epc.relaxation().unwrap().steps < 20000,
        "ePC did not converge"
    );
    assert!(
        pc.relaxation().unwrap().steps < 20000,
        "PC did not converge"
    );
    assert_eq!(a.loss, b.loss);
    for (n, g) in a.grads.iter() {
        let (x, y) = (b.grads.get(n).unwrap().to_vec_f64(), g.to_vec_f64());
        let scale = y.iter().fold(1e-9f64, |s, v| s.max(v.abs()));
        for (u, v) in x.iter().zip(&y) {
            assert!((u - v).abs() <= 1e-7 * scale, "{n}: ePC {u} vs PC {v}");
        }
    }
    // The energies at convergence agree as well.
    let (ea, eb) = (
        *pc.relaxation().unwrap().energy.last().unwrap(),
        *epc.relaxation().unwrap().energy.last().unwrap(),
    );
    assert!((ea - eb).abs() < 1e-9, "energy PC {ea} vs ePC {eb}");
}

#[test]
fn epc_approaches_backprop_for_small_output_errors() {
    let (m, p) = model("mlp:4-10-10-3", "tanh", 3);
    let x = rand_tensor(&[12, 4], 4, 1.0);
    let out = m.forward(&p, &x).unwrap();
    // Targets close to the prediction: the regime of PC's equivalence with backprop
    // (Whittington & Bogacz 2017), which ePC inherits with PC's fixed point.
    let y = out.add(&rand_tensor(&[12, 3], 5, 0.01)).unwrap();
    let batch = Batch {
        x,
        target: Target::Values(y),
    };
    let bp = build_rule("bp")
        .unwrap()
        .step(&m, &p, &batch, Loss::Mse)
        .unwrap();
    let mut epc = rule("epc", json!({"steps": 300, "gamma": 0.1}));
    let out = epc.step(&m, &p, &batch, Loss::Mse).unwrap();
    for (n, g) in bp.grads.iter() {
        let c = cosine(&out.grads.get(n).unwrap().to_vec_f64(), &g.to_vec_f64());
        assert!(c > 0.95, "{n}: cosine to BP {c}");
    }
    // Energy falls monotonically under small steps.
    let r = epc.relaxation().unwrap();
    assert_eq!(r.steps, 300);
    for w in r.energy.windows(2) {
        assert!(w[1] <= w[0] + 1e-15, "energy rose: {} → {}", w[0], w[1]);
    }
}

#[test]
fn backtracking_keeps_the_energy_falling_where_a_fixed_step_diverges() {
    // Weights scaled ×3: F's curvature along ε (≈ 1 + ‖∂z/∂ε‖²) is far above 2/γ.
    let (m, p) = model("mlp:6-16-16-16-4", "tanh", 7);
    let mut p = p;
    for (k, t) in p.clone().iter() {
        p.insert(k.to_string(), t.scale(3.0));
    }
    let batch = classes(10, 6, 4, 8);
    let energies = |backtrack: bool| {
        let mut epc = rule(
            "epc",
            json!({"steps": 40, "gamma": 0.5, "backtrack": backtrack}),
        );
        epc.step(&m, &p, &batch, Loss::Sse).unwrap();
        let r = epc.relaxation().unwrap().clone();
        (r.energy, r.backtracks)
    };
    let (fixed, none) = energies(false);
    assert_eq!(none, 0);
    assert!(
        fixed.last().unwrap() > &fixed[0] || !fixed.last().unwrap().is_finite(),
        "the fixed step did not diverge: {fixed:?}"
    );
    let (safe, backtracks) = energies(true);
    assert!(backtracks > 0);
    for w in safe.windows(2) {
        assert!(
            w[1] <= w[0] + 1e-6 * w[0].abs(),
            "energy rose: {} → {}",
            w[0],
            w[1]
        );
    }
    assert!(safe.last().unwrap() < &safe[0]);
}

#[test]
fn the_output_error_reaches_every_layer_at_the_first_step() {
    // Five hidden layers. After one inference step from the feed-forward pass, ePC's
    // errors are −γ·n·∂L/∂xₖ at every layer, so each hidden update is γ times backprop's
    // (to first order in γ); state-based PC has moved only the top hidden layer, and the
    // layers below it get no update at all.
    let (m, p) = model("mlp:4-6-6-6-6-6-3", "tanh", 7);
    let batch = classes(8, 4, 3, 8);
    let bp = build_rule("bp")
        .unwrap()
        .step(&m, &p, &batch, Loss::CrossEntropy)
        .unwrap();
    let gamma = 1e-6;
    let epc = rule("epc", json!({"steps": 1, "gamma": gamma}))
        .step(&m, &p, &batch, Loss::CrossEntropy)
        .unwrap();
    let pc = rule("pc", json!({"steps": 1, "gamma": gamma}))
        .step(&m, &p, &batch, Loss::CrossEntropy)
        .unwrap();
    for layer in ["fc1", "fc2", "fc3", "fc4", "fc5"] {
        let key = format!("{layer}.weight");
        let want = bp.grads.get(&key).unwrap().to_vec_f64();
        let got: Vec<f64> = epc
            .grads
            .get(&key)
            .unwrap()
            .to_vec_f64()
            .iter()
            .map(|g| g / gamma)
            .collect();
        let scale = want.iter().fold(0.0f64, |s, v| s.max(v.abs()));
        assert!(scale > 0.0, "{key}: backprop gives no gradient");
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-4 * scale, "{key}: ePC/γ {a} vs BP {b}");
        }
        let pc_norm: f64 = pc
            .grads
            .get(&key)
            .unwrap()
            .to_vec_f64()
            .iter()
            .map(|v| v.abs())
            .sum();
        if layer == "fc5" {
            assert!(pc_norm > 0.0, "PC's top hidden layer moved");
        } else {
            assert_eq!(pc_norm, 0.0, "{key}: PC's error reached it in one step");
        }
    }
}

#[test]
fn epc_settings_are_checked_by_name() {
    let e = build_rule_with("epc", &json!({"gama": 0.1}))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("did you mean 'gamma'") && e.contains("steps"),
        "{e}"
    );
    let e = build_rule_with("epc", &json!({"gamma": 0.0}))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("epc_gamma") && e.contains("> 0"), "{e}");
    let e = build_rule_with("epc", &json!({"steps": 0}))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("epc_steps"), "{e}");
}

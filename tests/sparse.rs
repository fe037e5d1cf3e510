//! Sparse training (`--sparse static|set|rigl|prune`): exact sparsity after every step
//! and update, grown connections at zero, as many grown as dropped, RigL growing where
//! the update is largest, the cosine drop schedule, gradual pruning reaching its target,
//! masks in checkpoints (a resumed run equals an unbroken one) and RigL under DFA.

use futureprop::data::Splits;
use futureprop::nn::{Grads, Params};
use futureprop::tensor::Tensor;
use futureprop::train::sparse::{Method, SparseConfig, Sparsity};
use futureprop::train::{self, TrainConfig};

mod common;
use common::{model, prototypes, rand_tensor};

fn sparse_cfg(method: &str, sparsity: f64, every: u64) -> SparseConfig {
    SparseConfig {
        sparse: method.into(),
        sparsity,
        sparse_every: every,
        ..SparseConfig::default()
    }
}

/// Active entries of each mask.
fn active(s: &Sparsity, p: &Params) -> Vec<usize> {
    s.layers()
        .iter()
        .map(|l| p.get(&l.mask_key).unwrap().positions(true).len())
        .collect()
}

/// Every weight outside its mask is exactly zero.
fn assert_masked(s: &Sparsity, p: &Params, when: &str) {
    for l in s.layers() {
        let w = p.get(&l.key).unwrap().to_vec_f64();
        let m = p.get(&l.mask_key).unwrap().to_vec_f64();
        let stray = w
            .iter()
            .zip(&m)
            .filter(|(w, m)| **m == 0.0 && **w != 0.0)
            .count();
        assert_eq!(
            stray, 0,
            "{when}: {} has {stray} weights outside its mask",
            l.key
        );
    }
}

/// A fake optimizer step: every weight moves (the masked update included, and a drift
/// on all weights, as momentum or weight decay would).
fn perturb(s: &Sparsity, p: &mut Params, g: &Grads, seed: u64) {
    for (i, l) in s.layers().iter().enumerate() {
        let w = p.get(&l.key).unwrap();
        let drift = rand_tensor(w.shape(), seed * 10 + i as u64, 0.01);
        let w = w
            .sub(&g.get(&l.key).unwrap().scale(0.1))
            .unwrap()
            .add(&drift)
            .unwrap();
        p.insert(l.key.clone(), w);
    }
}

fn grads_for(s: &Sparsity, p: &Params, seed: u64) -> Grads {
    let mut g = Grads::new();
    for (i, l) in s.layers().iter().enumerate() {
        let shape = p.get(&l.key).unwrap().shape().to_vec();
        g.insert(
            l.key.clone(),
            rand_tensor(&shape, 1000 + seed * 10 + i as u64, 1.0),
        );
    }
    g
}

#[test]
fn set_and_rigl_keep_exact_sparsity_grow_at_zero_and_grow_what_they_drop() {
    for method in ["set", "rigl"] {
        let (m, mut p) = model("mlp:40-30-30-5", "relu", 1);
        let mut s = Sparsity::new(&sparse_cfg(method, 0.8, 2), &m, &mut p, 40, 7)
            .unwrap()
            .unwrap();
        assert_masked(&s, &p, "start");
        let counts = active(&s, &p);
        // ERK: 80 % sparse over all weights.
        let total: usize = s.layers().iter().map(|l| l.size).sum();
        let kept: usize = counts.iter().sum();
        assert!(
            (kept as f64 / total as f64 - 0.2).abs() < 0.01,
            "{method}: {kept}/{total}"
        );
        let mut updates = 0;
        for step in 1..=40u64 {
            let g = grads_for(&s, &p, step);
            let mut masked = g.clone();
            s.mask_grads(&p, &mut masked).unwrap();
            let before: Vec<Tensor> = s
                .layers()
                .iter()
                .map(|l| p.get(&l.mask_key).unwrap().clone())
                .collect();
            perturb(&s, &mut p, &masked, step);
            let changes = s.after_step(&mut p, Some(&g), step, 8).unwrap();
            assert_masked(&s, &p, &format!("{method} step {step}"));
            assert_eq!(
                active(&s, &p),
                counts,
                "{method} step {step}: active counts"
            );
            assert_eq!(changes.is_some(), s.updates_at(step));
            let Some(changes) = changes else { continue };
            updates += 1;
            for ((l, (dropped, grown)), old) in s.layers().iter().zip(&changes).zip(&before) {
                assert_eq!(dropped, grown, "{method} step {step} {}", l.key);
                let new = p.get(&l.mask_key).unwrap();
                let w = p.get(&l.key).unwrap().to_vec_f64();
                let (old_v, new_v) = (old.to_vec_f64(), new.to_vec_f64());
                let grown_idx: Vec<usize> = (0..w.len())
                    .filter(|&i| old_v[i] == 0.0 && new_v[i] == 1.0)
                    .collect();
                // Newly grown connections start at zero.
                assert!(grown_idx.iter().all(|&i| w[i] == 0.0), "{method} {}", l.key);
                if method == "rigl" && !grown_idx.is_empty() {
                    // Every newly grown connection's update is at least as large as that
                    // of any connection left inactive.
                    let gv = g.get(&l.key).unwrap().to_vec_f64();
                    let least = grown_idx
                        .iter()
                        .map(|&i| gv[i].abs())
                        .fold(f64::MAX, f64::min);
                    let most_left = (0..w.len())
                        .filter(|&i| new_v[i] == 0.0)
                        .map(|i| gv[i].abs())
                        .fold(0.0, f64::max);
                    assert!(
                        least >= most_left,
                        "{method} {}: {least} < {most_left}",
                        l.key
                    );
                }
            }
            // The drop fraction α/2·(1 + cos(πt/T_end)) with T_end = 0.75·40 = 30.
            let f = 0.15 * (1.0 + (std::f64::consts::PI * step as f64 / 30.0).cos());
            assert!((s.drop_fraction(step) - f).abs() < 1e-12);
        }
        // Updates every 2 steps before T_end = 30: steps 2, 4, ..., 28.
        assert_eq!(updates, 14, "{method}");
        assert!(!s.updates_at(30) && !s.updates_at(32));
    }
}

#[test]
fn static_masks_never_change_and_pruning_reaches_its_target_from_dense() {
    let (m, mut p) = model("mlp:40-30-30-5", "relu", 2);
    let mut s = Sparsity::new(&sparse_cfg("static", 0.5, 1), &m, &mut p, 20, 3)
        .unwrap()
        .unwrap();
    assert_eq!(s.method(), Method::Static);
    let masks: Vec<Tensor> = s
        .layers()
        .iter()
        .map(|l| p.get(&l.mask_key).unwrap().clone())
        .collect();
    for step in 1..=20 {
        let g = grads_for(&s, &p, step);
        perturb(&s, &mut p, &g, step);
        assert!(s.after_step(&mut p, None, step, 8).unwrap().is_none());
        assert_masked(&s, &p, "static");
    }
    for (l, m0) in s.layers().iter().zip(&masks) {
        assert_eq!(p.get(&l.mask_key).unwrap().to_vec_f64(), m0.to_vec_f64());
    }

    let (m, mut p) = model("mlp:40-30-30-5", "relu", 2);
    let cfg = SparseConfig {
        sparse_distribution: "uniform".into(),
        ..sparse_cfg("prune", 0.9, 5)
    };
    let mut s = Sparsity::new(&cfg, &m, &mut p, 40, 3).unwrap().unwrap();
    let sizes: Vec<usize> = s.layers().iter().map(|l| l.size).collect();
    assert_eq!(active(&s, &p), sizes, "pruning starts dense");
    let mut last = sizes.clone();
    for step in 1..=40 {
        let g = grads_for(&s, &p, step);
        perturb(&s, &mut p, &g, step);
        let changed = s.after_step(&mut p, None, step, 8).unwrap();
        let now = active(&s, &p);
        assert!(
            now.iter().zip(&last).all(|(a, b)| a <= b),
            "pruning only removes"
        );
        if let Some(c) = changed {
            assert!(c.iter().all(|(_, grown)| *grown == 0));
            // Zhu & Gupta: sparsity s·(1 − (1 − t/T_end)³), T_end = 30.
            let t = (step as f64 / 30.0).min(1.0);
            let target = 0.9 * (1.0 - (1.0 - t).powi(3));
            for (a, n) in now.iter().zip(&sizes) {
                let want = ((1.0 - target) * *n as f64).round() as usize;
                assert_eq!(*a, want.max(1), "step {step}");
            }
        }
        assert_masked(&s, &p, "prune");
        last = now;
    }
    for (a, n) in last.iter().zip(&sizes) {
        assert_eq!(*a, (0.1 * *n as f64).round() as usize);
    }
}

fn splits() -> Splits {
    Splits {
        train: prototypes(256, 1),
        validation: None,
        test: prototypes(64, 2),
    }
}

fn config(rule: &str, epochs: usize, out: &std::path::Path) -> TrainConfig {
    TrainConfig {
        model: "mlp:64-32-32-4".into(),
        rule: rule.into(),
        epochs,
        batch_size: 32,
        quiet: true,
        out: Some(out.to_path_buf()),
        optim: futureprop::optim::OptimizerConfig::new("adam", 0.003),
        sparse: sparse_cfg("rigl", 0.8, 3),
        ..TrainConfig::default()
    }
}

#[test]
fn masks_survive_resume_and_rigl_trains_under_bp_and_dfa() {
    let s = splits();
    let t = tempfile::tempdir().unwrap();
    for rule in ["bp", "dfa"] {
        let full = t.path().join(format!("{rule}-full"));
        let summary = train::run(&config(rule, 4, &full), &s, None).unwrap();
        let acc = summary["test_accuracy"].as_f64().unwrap();
        assert!(acc > 0.7, "{rule}: accuracy {acc}");
        let sp = &summary["sparse"];
        assert!(
            (sp["sparsity"].as_f64().unwrap() - 0.8).abs() < 0.01,
            "{sp}"
        );
        // 32 steps, T_end = 24, ΔT = 3: updates at 3, 6, ..., 21.
        assert_eq!(sp["mask_updates"], 7, "{sp}");
        let frac = sp["flops_fraction"].as_f64().unwrap();
        assert!(frac > 0.2 && frac < 0.35, "{rule}: FLOPs fraction {frac}");
        let ck = train::checkpoint::load(&full).unwrap();
        let masks: Vec<&str> = ck
            .params
            .names()
            .iter()
            .map(String::as_str)
            .filter(|n| n.starts_with("mask."))
            .collect();
        assert_eq!(
            masks,
            ["mask.fc1.weight", "mask.fc2.weight", "mask.fc3.weight"]
        );
        // Stopped after two epochs (16 steps), then the rest from the checkpoint: the
        // same masks and weights.
        let part = t.path().join(format!("{rule}-part"));
        let cut = TrainConfig {
            max_steps: Some(16),
            ..config(rule, 4, &part)
        };
        train::run(&cut, &s, None).unwrap();
        let mid = train::checkpoint::load(&part).unwrap();
        train::run(&config(rule, 4, &part), &s, Some(mid)).unwrap();
        let resumed = train::checkpoint::load(&part).unwrap();
        for n in ck.params.names() {
            assert_eq!(
                resumed.params.get(n).unwrap().to_vec_f64(),
                ck.params.get(n).unwrap().to_vec_f64(),
                "{rule}: {n} after resume"
            );
        }
        // Evaluating the saved run reads past the masks.
        let v = train::evaluate_checkpoint(&config(rule, 4, &full), &ck, &s.test, false).unwrap();
        assert_eq!(v["test_accuracy"].as_f64(), Some(acc));
    }
}

#[test]
fn bad_sparse_settings_are_named() {
    for (cfg, word) in [
        (sparse_cfg("dense", 0.9, 1), "sparse"),
        (sparse_cfg("rigl", 1.0, 1), "sparsity"),
        (sparse_cfg("rigl", 0.9, 0), "sparse_every"),
        (
            SparseConfig {
                sparse_distribution: "er".into(),
                ..sparse_cfg("rigl", 0.9, 1)
            },
            "sparse_distribution",
        ),
    ] {
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains(word), "{e}");
    }
}

#[test]
fn quantised_sparse_training_at_a_high_adaptive_rate_keeps_its_steps() {
    // 90 % sparse: activations, and so LSQ's input steps, are small, and Adam at 1e-2
    // would move a step by about its own size each update; steps fall at most by half
    // per step, so the quantisers stay alive.
    let t = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        quantize: "w8a8".into(),
        optim: futureprop::optim::OptimizerConfig::new("adam", 0.01),
        sparse: SparseConfig {
            sparse: "static".into(),
            sparsity: 0.9,
            ..SparseConfig::default()
        },
        model: "mlp:64-64-64-4".into(),
        ..config("bp", 5, t.path())
    };
    let s = train::run(&cfg, &splits(), None).unwrap();
    let acc = s["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.7, "accuracy {acc}");
    let ck = train::checkpoint::load(t.path()).unwrap();
    for (n, v) in ck.params.iter().filter(|(n, _)| n.ends_with("_step")) {
        assert!(
            v.to_vec_f64().iter().all(|s| *s > 0.0),
            "{n}: {:?}",
            v.to_vec_f64()
        );
    }
}

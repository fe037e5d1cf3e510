//! Gradient checkpointing (Chen et al. 2016): a backward pass that recomputes segments of
//! the model gives the plain backward's update bit for bit — bp on every layer kind, the
//! FA and DFA families on dense and conv nets — for every segment count, and batch
//! normalisation folds one pass's statistics; rules that cannot recompute are refused by
//! name.

mod common;
use common::{model, rand_tensor};
use futureprop::nn::{Loss, Segments, Target};
use futureprop::rule::{Backprop, Batch, Rule, build_rule, check_checkpointing};

/// The segment counts every test sweeps: one, two, three, ⌈√L⌉ and more than L.
fn counts(layers: usize) -> [Segments; 5] {
    [
        Segments::Count(1),
        Segments::Count(2),
        Segments::Count(3),
        Segments::Auto,
        Segments::Count(layers + 5),
    ]
}

#[test]
fn checkpointed_backprop_equals_plain_backprop_exactly() {
    for (spec, act, inputs, classes) in [
        ("mlp:12-16-16-16-16-5", "tanh", 12, 5),
        ("mlp:12-16-16-5", "gelu", 12, 5),
        ("resmlp:12-16x3-5", "relu", 12, 5),
        ("lstm:4x3-8-5", "tanh", 12, 5),
        ("lenet5", "relu", 784, 10),
        ("resnet20:1x8x8", "relu", 64, 10),
    ] {
        let (mut m, p) = model(spec, act, 3);
        let batch = Batch {
            x: rand_tensor(&[6, inputs], 4, 1.0),
            target: Target::Classes((0..6).map(|i| i % classes).collect()),
        };
        let plain = Backprop.step(&m, &p, &batch, Loss::CrossEntropy).unwrap();
        for s in counts(m.layers().len()) {
            // Batch statistics of earlier passes are dropped.
            m.discard_state();
            m.set_checkpoint_segments(s);
            let out = Backprop.step(&m, &p, &batch, Loss::CrossEntropy).unwrap();
            assert_eq!(out.loss.to_bits(), plain.loss.to_bits(), "{spec} {s:?}");
            assert_eq!(out.grads.len(), plain.grads.len(), "{spec} {s:?}");
            for (n, g) in plain.grads.iter() {
                assert_eq!(
                    out.grads.get(n).unwrap().to_vec_f64(),
                    g.to_vec_f64(),
                    "{spec} {s:?}: {n}"
                );
            }
            assert_eq!(
                out.trace.output().unwrap().to_vec_f64(),
                plain.trace.output().unwrap().to_vec_f64()
            );
            // √L segments of a deep model keep less than every record: their inputs and
            // one segment's records (the peak is checked in checkpoint_memory.rs).
            if s == Segments::Auto && m.layers().len() >= 9 {
                assert!(
                    out.trace.activation_bytes() < plain.trace.activation_bytes(),
                    "{spec}: {} vs {}",
                    out.trace.activation_bytes(),
                    plain.trace.activation_bytes()
                );
            }
            // Batch normalisation folds the statistics of the first pass only.
            let (mut a, mut b) = (p.clone(), p.clone());
            m.commit_state(&mut a).unwrap();
            m.set_checkpoint_segments(Segments::Off);
            Backprop.step(&m, &p, &batch, Loss::CrossEntropy).unwrap();
            m.commit_state(&mut b).unwrap();
            for (n, t) in a.iter() {
                assert_eq!(
                    t.to_vec_f64(),
                    b.get(n).unwrap().to_vec_f64(),
                    "{spec} {s:?}: {n}"
                );
            }
        }
    }
}

#[test]
fn checkpointed_feedback_alignment_direct_feedback_and_deep_supervision_equal_their_plain_updates()
{
    let mut ran = Vec::new();
    for (spec, inputs, classes) in [("mlp:12-16-16-16-5", 12, 5), ("lenet5", 784, 10)] {
        for rule in ["fa", "usf", "kp", "dfa", "drtp", "dsn"] {
            let (mut m, mut p) = model(spec, "tanh", 3);
            let mut r = build_rule(rule).unwrap();
            if r.check_model(&m).is_err()
                || futureprop::rule::check_rule_layers(r.as_ref(), &m).is_err()
            {
                continue;
            }
            r.init(&m, &mut p, 1).unwrap();
            let batch = Batch {
                x: rand_tensor(&[6, inputs], 4, 1.0),
                target: Target::Classes((0..6).map(|i| i % classes).collect()),
            };
            let plain = r.step(&m, &p, &batch, Loss::CrossEntropy).unwrap();
            for s in counts(m.layers().len()) {
                check_checkpointing(r.as_ref(), s).unwrap();
                m.set_checkpoint_segments(s);
                let out = r.step(&m, &p, &batch, Loss::CrossEntropy).unwrap();
                m.set_checkpoint_segments(Segments::Off);
                assert_eq!(out.grads.len(), plain.grads.len(), "{rule} {spec} {s:?}");
                for (n, g) in plain.grads.iter() {
                    assert_eq!(
                        out.grads.get(n).unwrap().to_vec_f64(),
                        g.to_vec_f64(),
                        "{rule} {spec} {s:?}: {n}"
                    );
                }
            }
            ran.push(format!("{rule} {spec}"));
        }
    }
    // Every rule on the MLP; those that train conv layers on LeNet-5 too.
    assert!(ran.len() >= 8, "{ran:?}");
}

#[test]
fn segments_parse_and_count() {
    assert_eq!(Segments::parse("off").unwrap(), Segments::Off);
    assert_eq!(Segments::parse("auto").unwrap().count(16), 4);
    assert_eq!(Segments::parse("auto").unwrap().count(10), 4);
    assert_eq!(Segments::parse("3").unwrap().count(2), 2);
    for bad in ["0", "-1", "x", ""] {
        let e = Segments::parse(bad).unwrap_err().to_string();
        assert!(
            e.contains("checkpoint_segments") && e.contains("auto"),
            "{e}"
        );
    }
}

#[test]
fn what_cannot_be_recomputed_is_refused_by_name() {
    use futureprop::train::TrainConfig;
    // Rules without recomputation.
    for rule in ["local", "pc", "eqprop", "dni"] {
        let r = build_rule(rule).unwrap();
        let e = check_checkpointing(r.as_ref(), Segments::Auto)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(rule) && e.contains("bp"), "{e}");
        assert!(check_checkpointing(r.as_ref(), Segments::Off).is_ok());
    }
    // A bad value in a config.
    let e = TrainConfig::fresh(&[serde_json::json!({"checkpoint_segments": "some"})])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("checkpoint_segments") && e.contains("some"),
        "{e}"
    );
}

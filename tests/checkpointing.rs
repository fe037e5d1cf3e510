//! Gradient checkpointing (Chen et al. 2016): backprop that recomputes segments of the
//! model during the backward pass gives the plain backward's update bit for bit, for
//! every segment count, and batch normalisation folds one pass's statistics; rules that
//! cannot recompute are refused by name.

mod common;
use common::{model, rand_tensor};
use futureprop::nn::{Loss, Segments, Target};
use futureprop::rule::{Backprop, Batch, Rule, build_rule, with_checkpointing};

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
        let (m, p) = model(spec, act, 3);
        let batch = Batch {
            x: rand_tensor(&[6, inputs], 4, 1.0),
            target: Target::Classes((0..6).map(|i| i % classes).collect()),
        };
        let plain = Backprop.step(&m, &p, &batch, Loss::CrossEntropy).unwrap();
        let layers = m.layers().len();
        for s in [
            Segments::Count(1),
            Segments::Count(2),
            Segments::Count(3),
            Segments::Auto,
            Segments::Count(layers + 5),
        ] {
            // Batch statistics of earlier passes are dropped.
            m.discard_state();
            let mut r = with_checkpointing(build_rule("bp").unwrap(), s).unwrap();
            r.check_model(&m).unwrap();
            let out = r.step(&m, &p, &batch, Loss::CrossEntropy).unwrap();
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
                out.prediction.unwrap().to_vec_f64(),
                plain.trace.output().unwrap().to_vec_f64()
            );
            // Batch normalisation folds the statistics of the first pass only.
            let (mut a, mut b) = (p.clone(), p.clone());
            m.commit_state(&mut a).unwrap();
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
    let e = with_checkpointing(build_rule("dfa").unwrap(), Segments::Auto)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("dfa") && e.contains("bp"), "{e}");
    assert!(with_checkpointing(build_rule("dfa").unwrap(), Segments::Off).is_ok());
    // A bad value in a config.
    let e = TrainConfig::fresh(&[serde_json::json!({"checkpoint_segments": "some"})])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("checkpoint_segments") && e.contains("some"),
        "{e}"
    );
}

//! Convolution and pooling: forward against a direct (naive) evaluation of the
//! definition, and input and parameter gradients against central finite differences, for
//! stride, padding, dilation, groups and odd sizes; a conv → ReLU → max-pool → linear
//! network's backprop gradient against finite differences of its loss.

mod common;
use common::{check_layer_gradients, check_param, layer_forward as forward, rand_tensor};
use futureprop::nn::{
    Activation, Conv2d, ConvOptions, Init, Layer, Linear, Loss, Model, Params, Pool2d, PoolKind,
    Target,
};
use futureprop::rule::{Batch, build_rule};
use futureprop::tensor::{DType, Tensor, Unary};

struct Case {
    input: (usize, usize, usize),
    out: usize,
    kernel: (usize, usize),
    opts: ConvOptions,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            input: (3, 7, 6),
            out: 4,
            kernel: (3, 2),
            opts: ConvOptions {
                stride: (2, 1),
                padding: (1, 0),
                dilation: (1, 2),
                ..Default::default()
            },
        },
        Case {
            input: (4, 5, 5),
            out: 6,
            kernel: (3, 3),
            opts: ConvOptions {
                padding: (1, 1),
                groups: 2,
                ..Default::default()
            },
        },
        Case {
            input: (1, 9, 9),
            out: 2,
            kernel: (5, 5),
            opts: ConvOptions {
                stride: (2, 2),
                bias: false,
                ..Default::default()
            },
        },
        Case {
            input: (2, 1, 1),
            out: 3,
            kernel: (1, 1),
            opts: ConvOptions::default(),
        },
    ]
}

fn params_of(layer: &dyn Layer, seed: u64) -> Params {
    common::layer_params(layer, seed)
}

/// y[s, o, i, j] = b[o] + Σ_{c in o's group, u, v} w[o, c, u, v]·x[s, c, i·s + u·d − p, …].
fn naive_conv(c: &Case, p: &Params, x: &Tensor, name: &str) -> Vec<f64> {
    let (ci, h, w) = c.input;
    let (kh, kw) = c.kernel;
    let o = c.opts;
    let ho = (h + 2 * o.padding.0 - o.dilation.0 * (kh - 1) - 1) / o.stride.0 + 1;
    let wo = (w + 2 * o.padding.1 - o.dilation.1 * (kw - 1) - 1) / o.stride.1 + 1;
    let (cg, og) = (ci / o.groups, c.out / o.groups);
    let wt = p.get(&format!("{name}.weight")).unwrap().to_vec_f64();
    let b = p
        .get(&format!("{name}.bias"))
        .map(|t| t.to_vec_f64())
        .unwrap_or_else(|_| vec![0.0; c.out]);
    let xv = x.to_vec_f64();
    let n = x.shape()[0];
    let mut y = vec![0.0; n * c.out * ho * wo];
    for s in 0..n {
        for oc in 0..c.out {
            let g = oc / og;
            for i in 0..ho {
                for j in 0..wo {
                    let mut acc = b[oc];
                    for cc in 0..cg {
                        for u in 0..kh {
                            for v in 0..kw {
                                let r = (i * o.stride.0 + u * o.dilation.0) as isize
                                    - o.padding.0 as isize;
                                let q = (j * o.stride.1 + v * o.dilation.1) as isize
                                    - o.padding.1 as isize;
                                if r < 0 || q < 0 || r >= h as isize || q >= w as isize {
                                    continue;
                                }
                                let xc = g * cg + cc;
                                acc += wt[((oc * cg + cc) * kh + u) * kw + v]
                                    * xv[((s * ci + xc) * h + r as usize) * w + q as usize];
                            }
                        }
                    }
                    y[((s * c.out + oc) * ho + i) * wo + j] = acc;
                }
            }
        }
    }
    y
}

#[test]
fn conv2d_matches_the_definition_and_finite_differences() {
    for (k, c) in cases().iter().enumerate() {
        let conv = Conv2d::new("conv", c.input, c.out, c.kernel, c.opts).unwrap();
        let p = params_of(&conv, k as u64);
        let (ci, h, w) = c.input;
        let x = rand_tensor(&[3, ci * h * w], 10 + k as u64, 1.0);
        let (y, _) = forward(&conv, &p, &x);
        let want = naive_conv(c, &p, &x, "conv");
        assert_eq!(y.len(), want.len(), "case {k}: output size");
        for (a, b) in y.to_vec_f64().iter().zip(&want) {
            assert!((a - b).abs() < 1e-12, "case {k}: {a} vs {b}");
        }
        let (oc, oh, ow) = conv.output_map();
        assert_eq!(y.shape(), &[3, oc * oh * ow]);
        check_layer_gradients(&conv, &p, &x, 1e-7, &format!("conv case {k}"));
    }
}

#[test]
fn pooling_matches_the_definition_and_finite_differences() {
    // Distinct inputs keep every window's maximum unique under the ±h probes.
    let x = {
        let v: Vec<f64> = (0..2 * 3 * 7 * 5)
            .map(|i| ((i * 37 % 211) as f64) / 50.0 - 2.0)
            .collect();
        Tensor::from_vec_f64(&[2, 3 * 7 * 5], v).unwrap()
    };
    let p = Params::new();
    for (kind, k, s, pad) in [
        (PoolKind::Max, (2, 2), (2, 2), (0, 0)),
        (PoolKind::Max, (3, 2), (2, 1), (1, 1)),
        (PoolKind::Average, (2, 3), (1, 2), (0, 1)),
        (PoolKind::Average, (3, 3), (2, 2), (1, 1)),
    ] {
        let pool = Pool2d::new("pool", kind, (3, 7, 5), k, s, pad).unwrap();
        let (y, _) = forward(&pool, &p, &x);
        let (c, ho, wo) = pool.output_map();
        assert_eq!(y.shape(), &[2, c * ho * wo]);
        // Reference: max over (or mean over the k taps, zeros in the padding of) each window.
        let xv = x.to_vec_f64();
        for sample in 0..2 {
            for ch in 0..3 {
                for i in 0..ho {
                    for j in 0..wo {
                        let mut vals = Vec::new();
                        for u in 0..k.0 {
                            for v in 0..k.1 {
                                let r = (i * s.0 + u) as isize - pad.0 as isize;
                                let q = (j * s.1 + v) as isize - pad.1 as isize;
                                if r >= 0 && q >= 0 && r < 7 && q < 5 {
                                    vals.push(
                                        xv[sample * 105 + ch * 35 + r as usize * 5 + q as usize],
                                    );
                                }
                            }
                        }
                        let want = match kind {
                            PoolKind::Max => vals.iter().cloned().fold(f64::MIN, f64::max),
                            PoolKind::Average => vals.iter().sum::<f64>() / (k.0 * k.1) as f64,
                        };
                        let got = y.to_vec_f64()[sample * c * ho * wo + (ch * ho + i) * wo + j];
                        assert!(
                            (got - want).abs() < 1e-12,
                            "{kind:?} {k:?}: {got} vs {want}"
                        );
                    }
                }
            }
        }
        check_layer_gradients(&pool, &p, &x, 1e-7, &format!("{kind:?} {k:?}"));
    }
    let g = Pool2d::global_average("gap", (3, 7, 5)).unwrap();
    let (y, _) = forward(&g, &p, &x);
    assert_eq!(y.shape(), &[2, 3]);
    let mean0: f64 = x.to_vec_f64()[..35].iter().sum::<f64>() / 35.0;
    assert!((y.to_vec_f64()[0] - mean0).abs() < 1e-12);
}

#[test]
fn a_conv_net_backprop_gradient_matches_finite_differences() {
    // conv → tanh → max-pool → conv → tanh → linear (tanh: no kink under the probes).
    let m = small_conv_net(Unary::Tanh);
    assert_eq!(m.outputs(), 3);
    let p = m
        .init_params(Init::XavierNormal, 4)
        .unwrap()
        .to_dtype(DType::F64);
    let b = Batch {
        x: rand_tensor(&[4, 36], 5, 1.0),
        target: Target::Classes(vec![0, 2, 1, 2]),
    };
    let out = build_rule("bp")
        .unwrap()
        .step(&m, &p, &b, Loss::CrossEntropy)
        .unwrap();
    let loss = |q: &Params| {
        let y = m.forward(q, &b.x).unwrap();
        Loss::CrossEntropy.eval(&y, &b.target).unwrap().0
    };
    for name in ["conv1.weight", "conv1.bias", "conv2.weight", "fc1.weight"] {
        let n = p.get(name).unwrap().len();
        let an = out.grads.get(name).unwrap().to_vec_f64();
        check_param(&p, name, &an, vec![0, n / 2, n - 1], 1e-7, "conv net", loss);
    }
}

#[test]
fn bad_geometry_is_named_at_build_time() {
    let e = Conv2d::new("c", (3, 4, 4), 4, (5, 5), ConvOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer c") && e.contains("does not fit"), "{e}");
    let e = Conv2d::new(
        "c",
        (3, 8, 8),
        4,
        (3, 3),
        ConvOptions {
            groups: 2,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("groups"), "{e}");
    let e = Pool2d::new("p", PoolKind::Max, (1, 4, 4), (2, 2), (2, 2), (2, 2))
        .unwrap_err()
        .to_string();
    assert!(e.contains("padding"), "{e}");
}

#[test]
fn named_lenets_have_pytorchs_parameter_count_and_rules_without_a_conv_form_refuse_them() {
    for name in ["lenet5", "biotorch-lenet"] {
        let m = Model::build(&futureprop::nn::ModelSpec {
            spec: name.into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((m.inputs(), m.outputs()), (784, 10), "{name}");
        let p = m.init_params(Init::Auto, 0).unwrap();
        // conv1 156 + conv2 2416 + conv3 48120 + fc1 10164 + fc2 850 (BioTorch's LeNetMNIST).
        assert_eq!(m.num_parameters(&p), 61_706, "{name}");
        assert!(m.has_conv_layers());
        assert!(futureprop::rule::check_layers("bp", &m).is_ok());
        for ok in ["fa", "dfa", "frsf"] {
            assert!(futureprop::rule::check_layers(ok, &m).is_ok(), "{ok}");
        }
        let e = futureprop::rule::check_layers("pc", &m)
            .unwrap_err()
            .to_string();
        assert!(e.contains("pc") && e.contains("conv1"), "{e}");
        let y = m
            .forward(&p, &Tensor::zeros(&[2, 784], DType::F32))
            .unwrap();
        assert_eq!(y.shape(), &[2, 10]);
    }
}

/// conv(1→2, 3×3, pad 1) → `act1` → 2×2 max-pool → conv(2→3, 2×2) → tanh → linear(12→3)
/// on 1×6×6 inputs.
fn small_conv_net(act1: Unary) -> Model {
    let c1 = Conv2d::new(
        "conv1",
        (1, 6, 6),
        2,
        (3, 3),
        ConvOptions {
            padding: (1, 1),
            ..Default::default()
        },
    )
    .unwrap();
    let p1 = Pool2d::new("pool1", PoolKind::Max, (2, 6, 6), (2, 2), (2, 2), (0, 0)).unwrap();
    let c2 = Conv2d::new("conv2", (2, 3, 3), 3, (2, 2), ConvOptions::default()).unwrap();
    let layers: Vec<Box<dyn Layer>> = vec![
        Box::new(c1),
        Box::new(Activation::new("act1", act1)),
        Box::new(p1),
        Box::new(c2),
        Box::new(Activation::new("act2", Unary::Tanh)),
        Box::new(Linear::new("fc1", 12, 3, true)),
    ];
    Model::from_layers(layers, 36).unwrap()
}

#[test]
fn feedback_alignment_on_convolutions_is_backprop_when_the_kernels_are_transported() {
    use futureprop::rule::{FeedbackAlignment, FeedbackKind, Rule};
    let m = small_conv_net(Unary::Relu);
    let p = m
        .init_params(Init::XavierNormal, 2)
        .unwrap()
        .to_dtype(DType::F64);
    let b = Batch {
        x: rand_tensor(&[5, 36], 3, 1.0),
        target: Target::Classes(vec![0, 1, 2, 0, 1]),
    };
    let bp = build_rule("bp")
        .unwrap()
        .step(&m, &p, &b, Loss::CrossEntropy)
        .unwrap();
    // F = W on every layer with a weight: backprop exactly.
    let mut fa = FeedbackAlignment::new(FeedbackKind::Random, Default::default(), 1e-3);
    let mut q = p.clone();
    fa.init(&m, &mut q, 0).unwrap();
    for name in ["conv2", "fc1"] {
        fa.set_feedback(name, p.get(&format!("{name}.weight")).unwrap().clone())
            .unwrap();
    }
    let out = fa.step(&m, &p, &b, Loss::CrossEntropy).unwrap();
    for (k, g) in bp.grads.iter() {
        let (a, w) = (out.grads.get(k).unwrap().to_vec_f64(), g.to_vec_f64());
        for (x, y) in a.iter().zip(&w) {
            assert!((x - y).abs() < 1e-12, "{k}: {x} vs {y}");
        }
    }
    // Random feedback kernels: the output layer still gets backprop's update, conv1 not.
    let mut fa = FeedbackAlignment::new(FeedbackKind::Random, Default::default(), 1e-3);
    let mut q = p.clone();
    fa.init(&m, &mut q, 7).unwrap();
    let out = fa.step(&m, &p, &b, Loss::CrossEntropy).unwrap();
    assert_eq!(
        out.grads.get("fc1.weight").unwrap().to_vec_f64(),
        bp.grads.get("fc1.weight").unwrap().to_vec_f64()
    );
    let d = out
        .grads
        .get("conv1.weight")
        .unwrap()
        .sub(bp.grads.get("conv1.weight").unwrap())
        .unwrap()
        .norm();
    assert!(d > 1e-6, "random kernels gave backprop's conv1 update");
    // Every member of the family builds kernels of the forward kernels' shape and runs.
    for rule in ["usf", "brsf", "frsf", "kp"] {
        let mut r = build_rule(rule).unwrap();
        let mut q = p.clone();
        r.init(&m, &mut q, 1).unwrap();
        let out = r.step(&m, &q, &b, Loss::CrossEntropy).unwrap();
        assert!(
            out.grads.get("conv1.weight").unwrap().all_finite(),
            "{rule}"
        );
        let fb = r.feedback_matrices(&m, &q).unwrap();
        let conv2 = fb
            .iter()
            .find(|(n, _)| n == "conv2")
            .map(|(_, f)| f.shape().to_vec());
        assert_eq!(conv2, Some(vec![3, 2, 2, 2]), "{rule}");
    }
}

#[test]
fn dfa_on_a_convolutional_block_is_backprop_when_its_projection_is_the_output_weight() {
    use futureprop::rule::{DirectFeedback, DirectKind, Rule};
    // One hidden conv block, then the output layer: backprop's error at the block's
    // feature map is e·W_out, which DFA gives with B = W_out.
    let c1 = Conv2d::new("conv1", (1, 5, 5), 2, (3, 3), ConvOptions::default()).unwrap();
    let layers: Vec<Box<dyn Layer>> = vec![
        Box::new(c1),
        Box::new(Activation::new("act1", Unary::Tanh)),
        Box::new(Linear::new("fc1", 18, 3, true)),
    ];
    let m = Model::from_layers(layers, 25).unwrap();
    let p = m
        .init_params(Init::XavierNormal, 4)
        .unwrap()
        .to_dtype(DType::F64);
    let b = Batch {
        x: rand_tensor(&[4, 25], 6, 1.0),
        target: Target::Classes(vec![0, 2, 1, 1]),
    };
    let bp = build_rule("bp")
        .unwrap()
        .step(&m, &p, &b, Loss::CrossEntropy)
        .unwrap();
    let mut dfa = DirectFeedback::new(DirectKind::Dfa, Default::default());
    let mut q = p.clone();
    dfa.init(&m, &mut q, 0).unwrap();
    assert_eq!(dfa.matrix(&m, 0).unwrap().shape(), &[3, 18]);
    dfa.set_matrix(&m, 0, p.get("fc1.weight").unwrap().clone())
        .unwrap();
    let out = dfa.step(&m, &p, &b, Loss::CrossEntropy).unwrap();
    for (k, g) in bp.grads.iter() {
        for (x, y) in out
            .grads
            .get(k)
            .unwrap()
            .to_vec_f64()
            .iter()
            .zip(g.to_vec_f64())
        {
            assert!((x - y).abs() < 1e-12, "{k}: {x} vs {y}");
        }
    }
    // On the LeNet (pooling between blocks) every direct rule runs.
    let m = Model::build(&futureprop::nn::ModelSpec {
        spec: "biotorch-lenet".into(),
        ..Default::default()
    })
    .unwrap();
    let mut p = m.init_params(Init::Auto, 0).unwrap();
    let x = Tensor::from_vec(&[2, 784], (0..1568).map(|i| (i % 7) as f32 / 7.0).collect()).unwrap();
    let b = Batch {
        x,
        target: Target::Classes(vec![3, 8]),
    };
    for rule in ["dfa", "bfa", "drtp"] {
        let mut r = build_rule(rule).unwrap();
        r.init(&m, &mut p, 0).unwrap();
        let out = r.step(&m, &p, &b, Loss::CrossEntropy).unwrap();
        assert!(
            out.grads.get("conv1.weight").unwrap().norm() > 0.0,
            "{rule}"
        );
    }
}

#[test]
fn block_local_rules_on_convolutional_blocks_match_their_oracles() {
    use futureprop::rule::{Rule, SyntheticGradients, build_rule, build_rule_with};
    // Blocks: conv1→act1→pool1, conv2→act2, then the Linear output layer.
    let m = small_conv_net(Unary::Tanh);
    let (hidden, last) = m
        .block_walk("local", futureprop::nn::BlockShape::CHAIN)
        .unwrap();
    assert_eq!(hidden.len(), 2);
    assert_eq!((hidden[0].pool, hidden[0].outputs), (Some(2), 18));
    assert_eq!((hidden[1].pool, hidden[1].outputs), (None, 12));
    assert_eq!(last.linear, 5);
    let p0 = m
        .init_params(Init::XavierNormal, 4)
        .unwrap()
        .to_dtype(DType::F64);
    let b = futureprop::rule::Batch {
        x: rand_tensor(&[5, 36], 5, 1.0),
        target: Target::Classes(vec![0, 1, 2, 1, 0]),
    };
    let bp = build_rule("bp")
        .unwrap()
        .step(&m, &p0, &b, Loss::CrossEntropy)
        .unwrap()
        .grads;
    let same = |g: &Params, label: &str| {
        for k in ["conv1.weight", "conv1.bias", "conv2.weight", "fc1.weight"] {
            let (a, e) = (
                g.get(k).unwrap().to_vec_f64(),
                bp.get(k).unwrap().to_vec_f64(),
            );
            for (u, v) in a.iter().zip(&e) {
                assert!(
                    (u - v).abs() < 1e-12 * (1.0 + v.abs()),
                    "{label} {k}: {u} vs {v}"
                );
            }
        }
    };
    // DNI whose synthesizers return the true gradient is backprop.
    let mut p = p0.clone();
    let mut dni = SyntheticGradients::new(false, Default::default());
    dni.init(&m, &mut p, 0).unwrap();
    assert_eq!(p.get("dni.syn0.weight").unwrap().shape(), &[18, 18]);
    assert_eq!(p.get("dni.syn1.weight").unwrap().shape(), &[12, 12]);
    dni.oracle = true;
    same(
        &dni.step(&m, &p, &b, Loss::CrossEntropy).unwrap().grads,
        "oracle dni",
    );
    // Deep supervision with auxiliary weight 0 is backprop.
    let mut p = p0.clone();
    let mut dsn = build_rule_with(
        "dsn",
        &serde_json::json!({
            "weight": 0.0,
        }),
    )
    .unwrap();
    dsn.init(&m, &mut p, 0).unwrap();
    same(
        &dsn.step(&m, &p, &b, Loss::CrossEntropy).unwrap().grads,
        "dsn 0",
    );
    // Local losses: the output layer's weights do not reach the convolutional blocks.
    let mut p = p0.clone();
    let mut local = build_rule("local").unwrap();
    local.init(&m, &mut p, 0).unwrap();
    let g1 = local.step(&m, &p, &b, Loss::CrossEntropy).unwrap().grads;
    let mut q = p.clone();
    q.insert("fc1.weight", rand_tensor(&[3, 12], 9, 3.0));
    let g2 = local.step(&m, &q, &b, Loss::CrossEntropy).unwrap().grads;
    for k in ["conv1.weight", "conv2.weight", "conv2.bias"] {
        assert_eq!(g1.get(k).unwrap(), g2.get(k).unwrap(), "{k}");
        assert_ne!(g1.get(k).unwrap(), bp.get(k).unwrap(), "{k}");
    }
    // Rules without a convolutional form say so at build time.
    for rule in ["pc", "dtp", "ff", "eqprop"] {
        let e = futureprop::rule::check_layers(rule, &m)
            .unwrap_err()
            .to_string();
        assert!(e.contains(rule) && e.contains("conv1"), "{e}");
    }
}

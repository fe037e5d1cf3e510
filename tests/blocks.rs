//! Layer normalisation and residual blocks: input and parameter gradients against
//! central finite differences; the residual block's skip path; a `resmlp` network's
//! backprop gradient against finite differences of its loss.

mod common;
use common::{check_layer_gradients, check_param, layer_forward as forward, rand_tensor};
use futureprop::nn::{
    Activation, Init, Layer, LayerNorm, Linear, Loss, Model, ModelSpec, Params, Residual, Target,
};
use futureprop::rule::{Batch, build_rule};
use futureprop::tensor::{DType, Tensor, Unary};

fn params(layer: &dyn Layer, seed: u64) -> Params {
    let p = common::layer_params(layer, seed);
    // Move γ and β off 1 and 0 so their gradients matter.
    let mut q = p.clone();
    for (name, t) in p.iter() {
        if name.ends_with("norm.weight") || name.ends_with("norm.bias") || name.starts_with("ln.") {
            q.insert(name, rand_tensor(t.shape(), seed + 9, 1.0));
        }
    }
    q
}

#[test]
fn layer_norm_gradients_match_finite_differences() {
    for affine in [true, false] {
        let ln = LayerNorm::new("ln", 7, affine);
        let p = params(&ln, 1);
        let x = rand_tensor(&[4, 7], 2, 2.0);
        check_layer_gradients(&ln, &p, &x, 1e-6, &format!("layernorm affine={affine}"));
        // Without affine parameters every output row has mean 0 and variance ≈ 1.
        if !affine {
            let (y, _) = forward(&ln, &p, &x);
            for row in y.to_vec_f64().chunks(7) {
                let m = row.iter().sum::<f64>() / 7.0;
                let v = row.iter().map(|a| (a - m).powi(2)).sum::<f64>() / 7.0;
                assert!(m.abs() < 1e-12 && (v - 1.0).abs() < 1e-3, "{m} {v}");
            }
        }
    }
}

#[test]
fn residual_blocks_match_finite_differences_with_and_without_projection() {
    for (out, label) in [(6, "identity skip"), (4, "projection")] {
        let inner: Vec<Box<dyn Layer>> = vec![
            Box::new(LayerNorm::new("res.norm", 6, true)),
            Box::new(Linear::new("res.fc", 6, out, true)),
            Box::new(Activation::new("res.act", Unary::Tanh)),
        ];
        let block = Residual::new("res", inner, 6).unwrap();
        assert_eq!(block.output_width(6).unwrap(), out);
        let p = params(&block, 3);
        assert_eq!(p.get("res.proj.weight").is_ok(), out != 6, "{label}");
        let x = rand_tensor(&[5, 6], 4, 1.0);
        check_layer_gradients(&block, &p, &x, 1e-6, label);
    }
    // With F's weights at zero (and β = 0) the block is the identity.
    let inner: Vec<Box<dyn Layer>> = vec![Box::new(Linear::new("z.fc", 3, 3, true))];
    let block = Residual::new("z", inner, 3).unwrap();
    let mut p = Params::new();
    p.insert("z.fc.weight", Tensor::zeros(&[3, 3], DType::F64));
    p.insert("z.fc.bias", Tensor::zeros(&[3], DType::F64));
    let x = rand_tensor(&[2, 3], 5, 1.0);
    assert_eq!(forward(&block, &p, &x).0.to_vec_f64(), x.to_vec_f64());
}

#[test]
fn a_residual_mlp_backprop_gradient_matches_finite_differences() {
    let m = Model::build(&ModelSpec {
        spec: "resmlp:5-6x3-4".into(),
        activation: "tanh".into(),
        bias: true,
    })
    .unwrap();
    assert_eq!((m.inputs(), m.outputs(), m.layers().len()), (5, 4, 6));
    let p = m
        .init_params(Init::XavierNormal, 6)
        .unwrap()
        .to_dtype(DType::F64);
    let b = Batch {
        x: rand_tensor(&[7, 5], 8, 1.0),
        target: Target::Classes(vec![0, 1, 2, 3, 0, 1, 2]),
    };
    let out = build_rule("bp")
        .unwrap()
        .step(&m, &p, &b, Loss::CrossEntropy)
        .unwrap();
    let loss = |q: &Params| {
        Loss::CrossEntropy
            .eval(&m.forward(q, &b.x).unwrap(), &b.target)
            .unwrap()
            .0
    };
    for name in [
        "fc_in.weight",
        "res1.fc.weight",
        "res2.norm.weight",
        "res3.fc.bias",
        "fc_out.weight",
    ] {
        let n = p.get(name).unwrap().len();
        let an = out.grads.get(name).unwrap().to_vec_f64();
        check_param(&p, name, &an, vec![0, n - 1], 1e-6, "resmlp", loss);
    }
    let e = futureprop::rule::check_layers("fa", &m)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fa") && e.contains("res1"), "{e}");
    let e = Model::build(&ModelSpec {
        spec: "resmlp:5-6-4".into(),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("WIDTHxDEPTH"), "{e}");
}

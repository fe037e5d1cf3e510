//! Batch, group and instance normalisation, dropout, highway and dense blocks: gradients
//! against central finite differences (BatchNorm in both modes, odd sizes), the
//! statistics they produce, running statistics, seeded masks, TOML model descriptions
//! and the named models built from them.

mod common;
use common::{check_layer_gradients, check_layer_gradients_mode, layer_forward_mode, rand_tensor};
use futureprop::nn::{
    Activation, Dense, Dropout, Highway, Init, Layer, Linear, Model, ModelDesc, ModelSpec,
    Normalization, Params,
};
use futureprop::tensor::{DType, Tensor, Unary};
use rand::SeedableRng;

fn params(layer: &dyn Layer, seed: u64) -> Params {
    let p = common::layer_params(layer, seed);
    // γ, β and the running statistics off their initial values so they matter.
    let mut q = p.clone();
    for (name, t) in p.iter() {
        let r = rand_tensor(t.shape(), seed + 9, 1.0);
        if name.ends_with("running_var") {
            q.insert(name, r.add_scalar(2.0));
        } else if name.contains("bn") || name.contains("gn") {
            q.insert(name, r);
        }
    }
    q
}

#[test]
fn batch_norm_gradients_match_finite_differences_in_both_modes() {
    // 1-d (5 features) and 2-d (3 channels of 2×3) with odd batch sizes.
    for (c, s, n) in [(5, 1, 7), (3, 6, 3)] {
        for affine in [true, false] {
            let bn = Normalization::batch("bn", c, s, affine).unwrap();
            let p = params(&bn, 1);
            let x = rand_tensor(&[n, c * s], 2, 2.0);
            let label = format!("bn c{c} s{s} affine={affine}");
            check_layer_gradients_mode(&bn, &p, &x, 1e-6, &format!("{label} train"), Some(0));
            check_layer_gradients_mode(&bn, &p, &x, 1e-6, &format!("{label} eval"), None);
        }
    }
}

#[test]
fn batch_norm_standardises_channels_and_tracks_running_statistics() {
    let (c, s, n) = (2, 3, 4);
    let bn = Normalization::batch("bn", c, s, false).unwrap();
    let mut p = Params::new();
    bn.init_params(
        Init::XavierNormal,
        &mut futureprop::Rng::seed_from_u64(0),
        &mut p,
    )
    .unwrap();
    let mut p = p.to_dtype(DType::F64);
    let x = rand_tensor(&[n, c * s], 3, 3.0).add_scalar(1.5);
    let xv = x.to_vec_f64();
    let (y, _) = layer_forward_mode(&bn, &p, &x, Some(1));
    let yv = y.to_vec_f64();
    let mut stats = Vec::new();
    for ch in 0..c {
        let vals = |v: &[f64]| -> Vec<f64> {
            (0..n)
                .flat_map(|i| v[i * c * s + ch * s..i * c * s + (ch + 1) * s].to_vec())
                .collect()
        };
        let (xs, ys) = (vals(&xv), vals(&yv));
        let m = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let var = |v: &[f64]| {
            let mu = m(v);
            v.iter().map(|a| (a - mu).powi(2)).sum::<f64>() / v.len() as f64
        };
        assert!(m(&ys).abs() < 1e-12 && (var(&ys) - 1.0).abs() < 1e-3);
        stats.push((m(&xs), var(&xs) * 12.0 / 11.0));
    }
    // Running statistics move by momentum 0.1 toward the batch's (variance unbiased).
    bn.commit_state(&mut p).unwrap();
    let rm = p.get("bn.running_mean").unwrap().to_vec_f64();
    let rv = p.get("bn.running_var").unwrap().to_vec_f64();
    for ch in 0..c {
        assert!((rm[ch] - 0.1 * stats[ch].0).abs() < 1e-6, "{rm:?}");
        assert!((rv[ch] - (0.9 + 0.1 * stats[ch].1)).abs() < 1e-6, "{rv:?}");
    }
    // Evaluation uses them (and measures nothing); a discarded pass changes nothing.
    let (ye, _) = layer_forward_mode(&bn, &p, &x, None);
    let expect = (xv[0] - rm[0]) / (rv[0] + 1e-5).sqrt();
    assert!((ye.to_vec_f64()[0] - expect).abs() < 1e-6);
    layer_forward_mode(&bn, &p, &x, Some(2));
    bn.discard_state();
    let before = p.clone();
    bn.commit_state(&mut p).unwrap();
    assert_eq!(p, before);
    // One value per channel cannot be normalised over the batch.
    let e = bn
        .forward(
            &p,
            &rand_tensor(&[1, 2], 1, 1.0),
            &mut futureprop::nn::Record::training(
                "bn",
                Tensor::zeros(&[1, 2], DType::F64),
                Some(0),
            ),
        )
        .map(|_| ())
        .unwrap_err();
    assert!(!e.to_string().is_empty());
}

#[test]
fn group_and_instance_norm_match_finite_differences() {
    for (g, label) in [(1, "group 1"), (2, "group 2"), (4, "instance")] {
        let gn = Normalization::group("gn", g, 4, 3, true).unwrap();
        let p = params(&gn, 4);
        let x = rand_tensor(&[3, 12], 5, 2.0);
        check_layer_gradients(&gn, &p, &x, 1e-6, label);
    }
    let inn = Normalization::instance("in", 3, 5, false).unwrap();
    check_layer_gradients(
        &inn,
        &Params::new(),
        &rand_tensor(&[2, 15], 6, 1.0),
        1e-6,
        "in",
    );
    let e = Normalization::group("gn", 3, 4, 1, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 groups") && e.contains("4 channels"), "{e}");
}

#[test]
fn dropout_is_seeded_inverted_and_off_in_evaluation() {
    let d = Dropout::new("drop", 0.3).unwrap();
    let p = Params::new();
    let x = Tensor::from_vec_f64(&[100, 100], vec![1.0; 10_000]).unwrap();
    let (ye, _) = layer_forward_mode(&d, &p, &x, None);
    assert_eq!(ye, x);
    let (y1, rec) = layer_forward_mode(&d, &p, &x, Some(5));
    let (y2, _) = layer_forward_mode(&d, &p, &x, Some(5));
    let (y3, _) = layer_forward_mode(&d, &p, &x, Some(6));
    assert_eq!(y1, y2);
    assert_ne!(y1, y3);
    let v = y1.to_vec_f64();
    let dropped = v.iter().filter(|a| **a == 0.0).count() as f64 / 1e4;
    assert!((dropped - 0.3).abs() < 0.03, "{dropped}");
    assert!(v.iter().all(|a| *a == 0.0 || (a - 1.0 / 0.7).abs() < 1e-6));
    // The input gradient is the same mask.
    let g = d.input_grad(&p, &rec, &x).unwrap();
    assert_eq!(g, y1);
    check_layer_gradients_mode(
        &d,
        &p,
        &rand_tensor(&[3, 4], 1, 1.0),
        1e-6,
        "dropout",
        Some(3),
    );
    for bad in [1.0, -0.1] {
        assert!(Dropout::new("d", bad).is_err());
    }
}

#[test]
fn highway_and_dense_blocks_match_finite_differences() {
    let inner: Vec<Box<dyn Layer>> = vec![
        Box::new(Linear::new("hw.fc", 5, 5, true)),
        Box::new(Activation::new("hw.act", Unary::Tanh)),
    ];
    let hw = Highway::new("hw", inner, 5).unwrap();
    let p = params(&hw, 7);
    // The gate starts mostly closed (bias −2): y ≈ x.
    assert!(
        p.get("hw.gate.bias")
            .unwrap()
            .to_vec_f64()
            .iter()
            .all(|b| *b == -2.0)
    );
    check_layer_gradients(&hw, &p, &rand_tensor(&[4, 5], 8, 1.0), 1e-6, "highway");
    let inner: Vec<Box<dyn Layer>> = vec![
        Box::new(Linear::new("dn.fc", 3, 2, true)),
        Box::new(Activation::new("dn.act", Unary::Sigmoid)),
    ];
    let dn = Dense::new("dn", inner, 3).unwrap();
    assert_eq!(dn.output_width(3).unwrap(), 5);
    let p = params(&dn, 9);
    let x = rand_tensor(&[3, 3], 10, 1.0);
    let (y, _) = layer_forward_mode(&dn, &p, &x, None);
    // The first three features of each row are the input.
    for i in 0..3 {
        assert_eq!(
            y.to_vec_f64()[i * 5..i * 5 + 3],
            x.to_vec_f64()[i * 3..i * 3 + 3]
        );
    }
    check_layer_gradients(&dn, &p, &x, 1e-6, "dense");
    let bad: Vec<Box<dyn Layer>> = vec![Box::new(Linear::new("b.fc", 5, 4, true))];
    assert!(Highway::new("b", bad, 5).is_err());
}

const DESC: &str = r#"
input = [1, 8, 8]
[[layers]]
type = "conv"
channels = 4
kernel = 3
padding = 1
[[layers]]
type = "batchnorm"
[[layers]]
type = "relu"
[[layers]]
type = "residual"
layers = [
  { type = "conv", channels = 4, kernel = 3, padding = 1, bias = false },
  { type = "groupnorm", groups = 2 },
  { type = "tanh" },
]
[[layers]]
type = "dense"
layers = [{ type = "conv", channels = 2, kernel = 1 }]
[[layers]]
type = "maxpool"
kernel = 2
[[layers]]
type = "flatten"
[[layers]]
type = "dropout"
p = 0.2
[[layers]]
type = "highway"
layers = [{ type = "linear", out = 96 }, { type = "activation", fn = "relu" }]
[[layers]]
type = "linear"
out = 3
"#;

#[test]
fn toml_descriptions_build_models_whose_backprop_gradient_is_exact() {
    let desc = ModelDesc::from_toml(DESC).unwrap();
    let spec = ModelSpec {
        spec: "custom".into(),
        ..Default::default()
    };
    let mut m = Model::from_desc(&spec, &desc).unwrap();
    assert_eq!((m.inputs(), m.outputs()), (64, 3));
    let names: Vec<&str> = m.layers().iter().map(|l| l.name()).collect();
    assert_eq!(
        names,
        [
            "conv1", "bn2", "act3", "res4", "dense5", "pool6", "drop8", "hw9", "fc10"
        ]
    );
    let p = m
        .init_params(Init::XavierNormal, 1)
        .unwrap()
        .to_dtype(DType::F64);
    assert!(p.get("res4.conv1.weight").is_ok() && p.get("res4.conv1.bias").is_err());
    // Dropout and BatchNorm in training mode under a fixed seed are a fixed function.
    let b = futureprop::rule::Batch {
        x: rand_tensor(&[5, 64], 2, 1.0),
        target: futureprop::nn::Target::Classes(vec![0, 1, 2, 0, 1]),
    };
    m.set_train_seed(11);
    let out = futureprop::rule::build_rule("bp")
        .unwrap()
        .step(&m, &p, &b, futureprop::nn::Loss::CrossEntropy)
        .unwrap();
    let loss = |q: &Params| {
        let t = m.forward_trace(q, &b.x).unwrap();
        futureprop::nn::Loss::CrossEntropy
            .eval(t.output().unwrap(), &b.target)
            .unwrap()
            .0
    };
    for name in [
        "conv1.weight",
        "bn2.weight",
        "res4.conv1.weight",
        "res4.gn2.bias",
        "dense5.conv1.weight",
        "hw9.gate.weight",
        "hw9.fc1.weight",
        "fc10.bias",
    ] {
        let n = p.get(name).unwrap().len();
        let an = out.grads.get(name).unwrap().to_vec_f64();
        common::check_param(&p, name, &an, vec![0, n / 2, n - 1], 1e-5, "toml", loss);
    }
    // Errors name what is wrong.
    for (bad, want) in [
        (
            "input = 4\n[[layers]]\ntype = \"conv\"\nchannels = 2\nkernel = 1",
            "map",
        ),
        ("input = 4\n[[layers]]\ntype = \"linear\"\nouts = 2", "outs"),
        ("input = 4\n[[layers]]\ntype = \"nope\"", "nope"),
        ("input = 4\nlayers = []", "no layers"),
    ] {
        let e = ModelDesc::from_toml(bad)
            .and_then(|d| Model::from_desc(&spec, &d))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{bad}: {e}");
    }
}

#[test]
fn named_resnet20_and_vgg8b_have_their_published_shapes() {
    let build = |s: &str| {
        Model::build(&ModelSpec {
            spec: s.into(),
            bias: true,
            activation: "relu".into(),
        })
        .unwrap()
    };
    let r = build("resnet20");
    assert_eq!((r.inputs(), r.outputs()), (3072, 10));
    let p = r.init_params(Init::Auto, 0).unwrap();
    // He et al. 2016 report 0.27M parameters for ResNet-20.
    let n = r.num_parameters(&p);
    assert!((260_000..280_000).contains(&n), "{n}");
    let v = build("vgg8b:1x28x28");
    assert_eq!((v.inputs(), v.outputs()), (784, 10));
    let x = rand_tensor(&[2, 784], 1, 1.0).to_dtype(DType::F32);
    let y = v
        .forward(&v.init_params(Init::Auto, 0).unwrap(), &x)
        .unwrap();
    assert_eq!(y.shape(), &[2, 10]);
    let e = Model::build(&ModelSpec {
        spec: "resnet20:3x32".into(),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("CxHxW"), "{e}");
    // Rules not defined for batch normalisation say so at build time.
    for rule in ["eqprop", "dfa", "pc"] {
        let e = futureprop::rule::check_layers(rule, &r)
            .unwrap_err()
            .to_string();
        assert!(e.contains(rule), "{e}");
    }
}

#[test]
fn the_example_model_descriptions_build_and_run() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/models");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().and_then(|x| x.to_str()) != Some("toml") {
            continue;
        }
        let mut m = Model::build(&ModelSpec {
            spec: path.to_str().unwrap().into(),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!((m.inputs(), m.outputs()), (784, 10), "{}", path.display());
        let p = m.init_params(Init::Auto, 0).unwrap();
        m.set_train_seed(1);
        let t = m
            .forward_trace(&p, &rand_tensor(&[3, 784], 1, 1.0).to_dtype(DType::F32))
            .unwrap();
        assert_eq!(t.output().unwrap().shape(), &[3, 10]);
        n += 1;
    }
    assert!(n >= 2);
    let e = Model::build(&ModelSpec {
        spec: "no/such/model.toml".into(),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("no/such/model.toml"), "{e}");
}

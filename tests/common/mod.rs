//! Helpers shared by the integration tests.

use futureprop::nn::{Init, Model, ModelSpec, Params};
use futureprop::tensor::{DType, Tensor};
use rand::{Rng, SeedableRng};

/// A tensor of uniform draws in (−scale, scale), f64, from `seed`.
#[allow(dead_code)]
pub fn rand_tensor(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    let mut rng = futureprop::Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    Tensor::from_vec_f64(
        shape,
        (0..n).map(|_| rng.random_range(-scale..scale)).collect(),
    )
    .unwrap()
}

/// An MLP from `spec` with biases and Xavier-normal f64 parameters from `seed`.
/// cos∠(a, b).
#[allow(dead_code)]
pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[allow(dead_code)] // not every test binary uses it
pub fn model(spec: &str, act: &str, seed: u64) -> (Model, Params) {
    let m = Model::build(&ModelSpec {
        spec: spec.into(),
        activation: act.into(),
        bias: true,
    })
    .unwrap();
    let p = m
        .init_params(Init::XavierNormal, seed)
        .unwrap()
        .to_dtype(DType::F64);
    (m, p)
}

/// One layer's forward pass with its record (output filled in, as a model records it).
#[allow(dead_code)]
pub fn layer_forward(
    layer: &dyn futureprop::nn::Layer,
    p: &Params,
    x: &Tensor,
) -> (Tensor, futureprop::nn::Record) {
    layer_forward_mode(layer, p, x, None)
}

/// [`layer_forward`] in training mode with `Some(seed)`, in evaluation with `None`.
#[allow(dead_code)]
pub fn layer_forward_mode(
    layer: &dyn futureprop::nn::Layer,
    p: &Params,
    x: &Tensor,
    train: Option<u64>,
) -> (Tensor, futureprop::nn::Record) {
    let mut rec = futureprop::nn::Record::training(layer.name(), x.clone(), train);
    let y = layer.forward(p, x, &mut rec).unwrap();
    rec.output = y.clone();
    (y, rec)
}

/// For L = Σ y ⊙ r (r random), checks the layer's input gradient and every parameter's
/// gradient against central differences (step 1e-6, relative tolerance `tol`).
#[allow(dead_code)]
pub fn check_layer_gradients(
    layer: &dyn futureprop::nn::Layer,
    p: &Params,
    x: &Tensor,
    tol: f64,
    label: &str,
) {
    check_layer_gradients_mode(layer, p, x, tol, label, None)
}

/// [`check_layer_gradients`] in training mode with `Some(seed)` (the same seed for every
/// pass, so dropout masks stay fixed), in evaluation with `None`. Buffers (running
/// statistics) are not parameters and are skipped.
#[allow(dead_code)]
pub fn check_layer_gradients_mode(
    layer: &dyn futureprop::nn::Layer,
    p: &Params,
    x: &Tensor,
    tol: f64,
    label: &str,
    train: Option<u64>,
) {
    let (y, rec) = layer_forward_mode(layer, p, x, train);
    let r = rand_tensor(y.shape(), 99, 1.0);
    let loss = |p: &Params, x: &Tensor| layer_forward_mode(layer, p, x, train).0.dot(&r).unwrap();
    let h = 1e-6;
    let dx = layer.input_grad(p, &rec, &r).unwrap().to_vec_f64();
    let xv = x.to_vec_f64();
    for i in 0..xv.len() {
        let at = |d: f64| {
            let mut v = xv.clone();
            v[i] += d;
            loss(p, &Tensor::from_vec_f64(x.shape(), v).unwrap())
        };
        let fd = (at(h) - at(-h)) / (2.0 * h);
        assert!(
            (fd - dx[i]).abs() < tol * (1.0 + fd.abs()),
            "{label} dx[{i}]: fd {fd} vs {}",
            dx[i]
        );
    }
    let mut g = futureprop::nn::Grads::new();
    layer.param_grads(p, &rec, &r, &mut g).unwrap();
    for (name, _) in p.iter().filter(|(n, _)| !futureprop::nn::is_buffer(n)) {
        let an = g.get(name).unwrap().to_vec_f64();
        check_param(p, name, &an, (0..an.len()).collect(), tol, label, |q| {
            loss(q, x)
        });
    }
}

/// Checks `analytic` (∂L/∂`name`) at `indices` against central differences of `loss`.
#[allow(dead_code)]
pub fn check_param(
    p: &Params,
    name: &str,
    analytic: &[f64],
    indices: Vec<usize>,
    tol: f64,
    label: &str,
    loss: impl Fn(&Params) -> f64,
) {
    let t = p.get(name).unwrap();
    let h = 1e-6;
    for i in indices {
        let at = |d: f64| {
            let mut v = t.to_vec_f64();
            v[i] += d;
            let mut q = p.clone();
            q.insert(name, Tensor::from_vec_f64(t.shape(), v).unwrap());
            loss(&q)
        };
        let fd = (at(h) - at(-h)) / (2.0 * h);
        assert!(
            (fd - analytic[i]).abs() < tol * (1.0 + fd.abs()),
            "{label} {name}[{i}]: fd {fd} vs {}",
            analytic[i]
        );
    }
}

/// A layer's parameters drawn Xavier-normal from `seed`, as f64.
#[allow(dead_code)]
pub fn layer_params(layer: &dyn futureprop::nn::Layer, seed: u64) -> Params {
    let mut p = Params::new();
    let mut rng = futureprop::Rng::seed_from_u64(seed);
    layer
        .init_params(futureprop::nn::Init::XavierNormal, &mut rng, &mut p)
        .unwrap();
    p.to_dtype(DType::F64)
}

/// A folder holding every dataset in `names` (`mnist`, `fashion-mnist`): `FUTUREPROP_DATA`,
/// else `../shared/datasets`, else the per-user cache, else downloaded into the cache.
/// `None` (after one line on stderr saying how to provide the data) when none of that
/// works; under `CI=true` missing data fails the test instead, so CI never skips.
#[allow(dead_code)]
pub fn data_with(names: &[&str]) -> Option<std::path::PathBuf> {
    use futureprop::data::{self, download};
    use std::path::PathBuf;
    static DOWNLOAD_FAILED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let has_all = |d: &PathBuf| {
        names
            .iter()
            .all(|n| data::is_present(d, n).unwrap_or(false))
    };
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("FUTUREPROP_DATA").filter(|v| !v.is_empty()) {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets"));
    let cache = data::cache_dir();
    candidates.push(cache.clone());
    if let Some(d) = candidates.iter().find(|d| has_all(d)) {
        return Some(d.clone());
    }
    // One download attempt per dataset and test process.
    let mut failed = DOWNLOAD_FAILED.lock().unwrap_or_else(|e| e.into_inner());
    let mut why = Vec::new();
    for n in names {
        if data::is_present(&cache, n).unwrap_or(false) || failed.iter().any(|f| f == n) {
            continue;
        }
        if let Err(e) = download::remote(n).and_then(|r| download::fetch(&cache, r, None)) {
            failed.push(n.to_string());
            why.push(format!("{n}: {e}"));
        }
    }
    if has_all(&cache) {
        return Some(cache);
    }
    let msg = format!(
        "{} not found in FUTUREPROP_DATA, ../shared/datasets or {} and not downloadable ({}); set FUTUREPROP_DATA to a folder holding {}/ or run `cargo run --release -- data fetch {}`",
        names.join(" and "),
        cache.display(),
        if why.is_empty() {
            "tried earlier".to_string()
        } else {
            why.join("; ")
        },
        names.join("/, "),
        names[0]
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and {msg}");
    }
    eprintln!("skipped: {msg}");
    None
}

/// Runs the `futureprop` binary with `args` (and without `FUTUREPROP_DATA`).
#[allow(dead_code)]
pub fn run(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_futureprop"))
        .args(args)
        .env_remove("FUTUREPROP_DATA")
        .output()
        .unwrap()
}

/// A finished command's standard error as text.
#[allow(dead_code)]
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// 64 features (an 8×8 map, or 8 steps of 8), 4 classes: a noisy prototype per class
/// (prototypes from a fixed seed, noise from `seed`).
#[allow(dead_code)]
pub fn prototypes(n: usize, seed: u64) -> futureprop::data::Dataset {
    let mut rng = futureprop::Rng::seed_from_u64(11);
    let protos: Vec<f32> = (0..4 * 64).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut rng = futureprop::Rng::seed_from_u64(seed);
    let labels: Vec<usize> = (0..n).map(|i| i % 4).collect();
    let x: Vec<f32> = labels
        .iter()
        .flat_map(|&c| {
            protos[c * 64..(c + 1) * 64]
                .iter()
                .map(|v| v + rng.random_range(-0.5..0.5))
                .collect::<Vec<_>>()
        })
        .collect();
    futureprop::data::Dataset {
        x: Tensor::from_vec(&[n, 64], x).unwrap(),
        labels,
        classes: 4,
        reconstruct: false,
        values: None,
    }
}

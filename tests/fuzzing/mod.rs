//! A seeded mutation fuzzer over every parser that reads user input (stable Rust: no
//! cargo-fuzz). Each target has a corpus of valid inputs; a case applies one to four
//! random mutations (bit flips, random bytes, interesting integers, inserted tokens,
//! deleted, duplicated or truncated ranges) to a corpus entry and runs the parser under
//! `catch_unwind`. An `Err` is the right answer to bad input; a panic is a crash.
//!
//! Used by `tests/fuzz.rs` (a fixed number of cases per target) and `benches/fuzz.rs`
//! (a chosen time per target).

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use futureprop::bench::{reproduce, suite::Suite};
use futureprop::data::{cifar, idx};
use futureprop::nn::{Model, ModelDesc, ModelSpec, Params};
use futureprop::optim::OptimizerState;
use futureprop::tensor::Tensor;
use futureprop::train::{TrainConfig, checkpoint};
use rand::{Rng, SeedableRng};

/// A parser under test.
pub struct Target {
    /// Name (`idx`, `cifar`, ...).
    pub name: &'static str,
    /// Valid inputs the mutations start from.
    pub corpus: Vec<Vec<u8>>,
    /// Tokens worth inserting (keywords, numbers at the edges of ranges).
    pub tokens: &'static [&'static str],
    /// Parses one input; returns whether it was accepted (errors are fine, panics not).
    pub run: fn(&[u8]) -> bool,
}

/// What a fuzzing run found.
#[derive(Debug, Default)]
pub struct Report {
    /// Cases run.
    pub cases: u64,
    /// Inputs the parser accepted.
    pub accepted: u64,
    /// Panics: (message, input).
    pub crashes: Vec<(String, Vec<u8>)>,
}

const TEXT_TOKENS: &[&str] = &[
    "nan",
    "inf",
    "-inf",
    "1e309",
    "-1",
    "0",
    "0.0",
    "1",
    "-0",
    "18446744073709551616",
    "99999999999",
    "4294967296",
    "\"",
    "'",
    "[",
    "]",
    "[[",
    "]]",
    "=",
    "\n",
    ",",
    "{",
    "}",
    ".",
    "-",
    ":",
    "x",
    "#",
    "true",
    "\"\"",
    "\"all\"",
    "\u{0}",
    "é",
];

const CONFIG_TOKENS: &[&str] = &[
    "lr",
    "epochs",
    "batch_size",
    "rule",
    "optimizer",
    "model",
    "momentum",
    "beta2",
    "max_steps",
    "train_limit",
    "clip_norm",
    "pc_steps",
    "eqprop_beta",
    "\"kfac\"",
    "\"mlp:784-10\"",
    "param_groups",
    "[[param_groups]]",
    "params = \"*\"",
    "lr_scale",
    "weight_decay",
    "schedule",
    "\"cosine\"",
    "\"warmup:5,cosine\"",
    "average",
    "\"ema:0.9\"",
    "accumulate",
];

const MODEL_TOKENS: &[&str] = &[
    "type",
    "\"linear\"",
    "\"conv\"",
    "\"maxpool\"",
    "\"avgpool\"",
    "\"batchnorm\"",
    "\"residual\"",
    "\"highway\"",
    "\"dense\"",
    "\"lstm\"",
    "\"rnn\"",
    "\"dropout\"",
    "\"relu\"",
    "\"prelu\"",
    "\"flatten\"",
    "\"globalavgpool\"",
    "\"groupnorm\"",
    "\"layernorm\"",
    "out",
    "channels",
    "kernel",
    "stride",
    "padding",
    "dilation",
    "groups",
    "hidden",
    "steps",
    "truncation",
    "shortcut",
    "layers",
    "[[layers]]",
    "[[layers.layers]]",
    "input",
    "[1, 28, 28]",
    "[3, 32, 32]",
    "name",
    "p = 0.5",
    "p = 1.0",
];

const SPEC_TOKENS: &[&str] = &[
    "mlp:",
    "linear:",
    "lstm:",
    "rnn:",
    "resmlp:",
    "resnet20",
    "vgg8b",
    "lenet5",
    "biotorch-lenet",
    ":1x28x28",
    ":3x32x32",
    "-",
    "x",
    ":",
    "0",
    "1",
    "784",
    "10",
    "99999999999",
    "18446744073709551615",
    ":linear",
    ":prelu",
    ":tanh",
    ".toml",
];

const SUITE_TOKENS: &[&str] = &[
    "name",
    "datasets",
    "models",
    "rules",
    "optimizers",
    "seeds",
    "epochs",
    "seconds",
    "diag_every",
    "[defaults]",
    "[rule.ff]",
    "[optimizer.adam]",
    "\"mnist\"",
    "\"adding:10\"",
    "\"all\"",
    "[\"bp\", \"dfa\"]",
    "[\"adam\"]",
];

const REGISTRY_TOKENS: &[&str] = &[
    "[[result]]",
    "name",
    "paper",
    "dataset",
    "recipe",
    "[result.recipe]",
    "reported_test_error",
    "budget_matches",
    "recipe_note",
    "epochs",
    "lr",
];

/// A small valid checkpoint: two parameters, one optimizer tensor.
fn checkpoint_bytes() -> Vec<u8> {
    let mut params = Params::new();
    params.insert(
        "fc1.weight",
        Tensor::from_vec(&[2, 3], vec![0.1, -0.2, 0.3, 0.4, -0.5, 0.6]).unwrap(),
    );
    params.insert("fc1.bias", Tensor::from_vec(&[2], vec![0.0, 1.0]).unwrap());
    let mut opt = Params::new();
    opt.insert(
        "m.fc1.bias",
        Tensor::from_vec_f64(&[2], vec![0.5, -0.5]).unwrap(),
    );
    let cfg = serde_json::to_value(TrainConfig {
        model: "mlp:3-2".into(),
        ..TrainConfig::default()
    })
    .unwrap();
    let ck = futureprop::train::Checkpoint {
        params,
        optimizer: OptimizerState {
            step: 7,
            tensors: opt,
        },
        config: cfg,
        epoch: 1,
        history: vec![serde_json::json!({"type": "epoch", "epoch": 1, "test_loss": 0.5})],
        loss_scaler: None,
    };
    checkpoint::to_bytes(&ck, Path::new("fuzz.safetensors")).unwrap()
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const SOURCE: &str = "fuzz-input";

fn run_idx(b: &[u8]) -> bool {
    idx::gunzip_if_gz(b.to_vec(), Path::new(SOURCE))
        .and_then(|raw| idx::parse_idx(&raw, Path::new(SOURCE)))
        .is_ok()
}

fn run_cifar(b: &[u8]) -> bool {
    cifar::parse_batch(b, Path::new(SOURCE)).is_ok()
}

fn run_checkpoint(b: &[u8]) -> bool {
    let Ok(ck) = checkpoint::from_bytes(b, Path::new(SOURCE)) else {
        return false;
    };
    // What --resume does next: the stored config becomes a run config.
    serde_json::from_value::<TrainConfig>(ck.config)
        .ok()
        .and_then(|c| c.merged(&[]).ok())
        .is_some()
}

fn run_config(b: &[u8]) -> bool {
    TrainConfig::parse_toml(&text(b), Path::new(SOURCE))
        .and_then(|layer| TrainConfig::default().merged(&[layer]))
        .is_ok()
}

fn run_model_toml(b: &[u8]) -> bool {
    let Ok(desc) = ModelDesc::from_toml(&text(b)) else {
        return false;
    };
    desc.build(true)
        .map(|(layers, _)| {
            layers
                .iter()
                .fold(0usize, |a, l| a.saturating_add(l.param_count()))
        })
        .is_ok()
}

fn run_model_spec(b: &[u8]) -> bool {
    let spec = text(b);
    if spec.ends_with(".toml") {
        // A path: the model-toml target covers file contents.
        return false;
    }
    Model::build(&ModelSpec {
        spec,
        activation: "relu".into(),
        bias: true,
    })
    .and_then(|m| {
        m.param_count();
        m.activation_count()
    })
    .is_ok()
}

fn run_suite(b: &[u8]) -> bool {
    let Ok(s) = Suite::parse(&text(b), SOURCE) else {
        return false;
    };
    // The arms' configurations, as `bench` checks them before running.
    s.arms().iter().take(64).all(|a| {
        s.layers(a)
            .and_then(|l| TrainConfig::default().merged(&l))
            .is_ok()
    })
}

fn run_registry(b: &[u8]) -> bool {
    let Ok(entries) = reproduce::parse(&text(b), "fuzzed registry") else {
        return false;
    };
    entries.iter().all(|e| {
        futureprop::settings::toml_layer(&e.name, &e.recipe)
            .and_then(|r| {
                TrainConfig::default().merged(&[serde_json::json!({"dataset": e.dataset}), r])
            })
            .is_ok()
    })
}

/// Every target with its corpus.
pub fn targets() -> Vec<Target> {
    let image = idx::encode_idx(&[2, 2, 3], &(0..12).collect::<Vec<u8>>());
    let labels = idx::encode_idx(&[5], &[0, 1, 2, 9, 3]);
    let mut cifar_two = vec![3u8];
    cifar_two.extend((0..3072).map(|i| (i % 251) as u8));
    cifar_two.push(7);
    cifar_two.extend((0..3072).map(|i| (i % 13) as u8));
    let config = b"lr = 0.001\nepochs = 2\noptimizer = \"adam\"\nrule = \"dfa\"\nbatch_size = 64\nmodel = \"mlp:784-100-10\"\nschedule = \"warmup:5,cosine\"\nclip_norm = 1.0\n\n[[param_groups]]\nparams = \"*.bias\"\nweight_decay = 0.0\n".to_vec();
    let suites = [
        include_str!("../../bench/suites/quick.toml"),
        include_str!("../../bench/suites/standard.toml"),
        include_str!("../../bench/suites/memory.toml"),
    ];
    let specs = [
        "mlp:784-1000-1000-10",
        "linear:784-10",
        "mlp:784-1000-30:linear-1000-784",
        "lstm:28x28-128-10",
        "rnn:28x28-64-10",
        "resmlp:784-256x4-10",
        "lenet5",
        "biotorch-lenet",
        "resnet20:1x28x28",
        "vgg8b:3x32x32",
    ];
    vec![
        Target {
            name: "idx",
            corpus: vec![image.clone(), labels.clone(), gz(&image), gz(&labels)],
            tokens: &[
                "\u{0}\u{0}\u{8}\u{1}",
                "\u{ff}\u{ff}\u{ff}\u{ff}",
                "\u{1f}\u{8b}",
            ],
            run: run_idx,
        },
        Target {
            name: "cifar",
            corpus: vec![cifar_two.clone(), cifar_two[..3073].to_vec()],
            tokens: &["\u{a}", "\u{ff}"],
            run: run_cifar,
        },
        Target {
            name: "checkpoint",
            corpus: vec![checkpoint_bytes()],
            tokens: &[
                "\"shape\":[",
                "\"dtype\":\"F64\"",
                "\"data_offsets\":[0,",
                "\"__metadata__\"",
                "\"sha256\"",
                "\"format\"",
                "futureprop-checkpoint-1",
                "\"config\"",
                "}",
                "{",
            ],
            run: run_checkpoint,
        },
        Target {
            name: "config",
            corpus: vec![config],
            tokens: CONFIG_TOKENS,
            run: run_config,
        },
        Target {
            name: "model-toml",
            corpus: vec![
                include_bytes!("../../examples/models/small_resnet.toml").to_vec(),
                include_bytes!("../../examples/models/sequence_lstm.toml").to_vec(),
            ],
            tokens: MODEL_TOKENS,
            run: run_model_toml,
        },
        Target {
            name: "model-spec",
            corpus: specs.iter().map(|s| s.as_bytes().to_vec()).collect(),
            tokens: SPEC_TOKENS,
            run: run_model_spec,
        },
        Target {
            name: "suite",
            corpus: suites.iter().map(|s| s.as_bytes().to_vec()).collect(),
            tokens: SUITE_TOKENS,
            run: run_suite,
        },
        Target {
            name: "registry",
            corpus: vec![reproduce::REGISTRY.as_bytes().to_vec()],
            tokens: REGISTRY_TOKENS,
            run: run_registry,
        },
    ]
}

/// One to four mutations of `input`.
fn mutate(input: &[u8], tokens: &[&str], rng: &mut futureprop::Rng) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = b.len();
        let at = if len == 0 {
            0
        } else {
            rng.random_range(0..len)
        };
        match rng.random_range(0..8) {
            0 if len > 0 => b[at] ^= 1 << rng.random_range(0..8),
            1 if len > 0 => b[at] = rng.random(),
            2 if len >= 4 => {
                let v: u32 = *[0, 1, 0x7f, 0xff, 0xffff, 0x7fff_ffff, u32::MAX]
                    .get(rng.random_range(0..7))
                    .unwrap_or(&0);
                let end = (at + 4).min(len);
                let bytes = v.to_be_bytes();
                b[at..end].copy_from_slice(&bytes[..end - at]);
            }
            3 | 4 => {
                let pool: Vec<&str> = tokens.iter().chain(TEXT_TOKENS).copied().collect();
                let t = pool[rng.random_range(0..pool.len())];
                b.splice(at..at, t.bytes());
            }
            5 if len > 0 => {
                let end = (at + rng.random_range(1..=16)).min(len);
                b.drain(at..end);
            }
            6 if len > 0 => {
                let end = (at + rng.random_range(1..=64)).min(len);
                let piece = b[at..end].to_vec();
                let to = rng.random_range(0..=b.len());
                b.splice(to..to, piece);
            }
            _ if len > 0 => b.truncate(at),
            _ => b.push(rng.random()),
        }
    }
    b
}

/// Runs `target` for `cases` cases or until `time` has passed, whichever is first.
pub fn fuzz(target: &Target, cases: u64, time: Duration, seed: u64) -> Report {
    let mut rng = futureprop::Rng::seed_from_u64(seed);
    let start = Instant::now();
    let mut report = Report::default();
    let trace = std::env::var_os("FUZZ_TRACE");
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    while report.cases < cases && start.elapsed() < time {
        let base = &target.corpus[rng.random_range(0..target.corpus.len())];
        let input = mutate(base, target.tokens, &mut rng);
        if let Some(f) = &trace {
            // The input about to run, for crashes that abort (out of memory).
            let _ = std::fs::write(f, &input);
        }
        let run = target.run;
        match std::panic::catch_unwind(|| run(&input)) {
            Ok(true) => report.accepted += 1,
            Ok(false) => {}
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into());
                if !report.crashes.iter().any(|(m, _)| *m == msg) {
                    report.crashes.push((msg, input));
                }
            }
        }
        report.cases += 1;
    }
    std::panic::set_hook(hook);
    report
}

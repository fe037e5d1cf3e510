//! Bad input on the command line: every case gets a one-line error naming what is wrong
//! (or, resuming a finished run, a message that there is nothing to do), no panic, and
//! nothing partial left behind. Runs on a small MNIST-format dataset the test writes, so
//! it needs no downloaded data.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use futureprop::data::idx::encode_idx;

mod common;
use common::{run, stderr};

const BIN: &str = env!("CARGO_BIN_EXE_futureprop");

/// `DIR/mnist/` with `train` training and `test` test images (28×28, labels 0..9).
fn tiny_mnist(dir: &Path, train: usize, test: usize) -> PathBuf {
    let d = dir.join("mnist");
    std::fs::create_dir_all(&d).unwrap();
    let write = |img: &str, lab: &str, n: usize, salt: usize| {
        let pixels: Vec<u8> = (0..n * 784)
            .map(|i| ((i * 31 + salt) % 256) as u8)
            .collect();
        let labels: Vec<u8> = (0..n).map(|i| ((i + salt) % 10) as u8).collect();
        std::fs::write(d.join(img), encode_idx(&[n, 28, 28], &pixels)).unwrap();
        std::fs::write(d.join(lab), encode_idx(&[n], &labels)).unwrap();
    };
    write(
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        train,
        1,
    );
    write("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", test, 2);
    dir.to_path_buf()
}

/// A failed run whose stderr is one line starting `error:` containing every `want`.
fn fails_with(o: &Output, want: &[&str]) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "exit status for: {e}");
    assert!(!e.contains("panicked"), "panic: {e}");
    assert_eq!(e.trim_end().lines().count(), 1, "one line: {e}");
    assert!(e.starts_with("error: "), "{e}");
    for w in want {
        assert!(e.contains(w), "'{w}' not in: {e}");
    }
}

/// `train` on the tiny dataset with a small model, quiet, into `out`, plus `extra`.
fn train(data: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--data-dir",
        data.to_str().unwrap(),
        "--no-download",
        "--model",
        "mlp:784-16-10",
        "--batch-size",
        "50",
        "--epochs",
        "1",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn non_finite_and_out_of_range_settings_are_refused_by_name() {
    let t = tempfile::tempdir().unwrap();
    let data = tiny_mnist(t.path(), 200, 50);
    let out = t.path().join("run");
    for (flag, value, want) in [
        ("--lr", "nan", "invalid lr: NaN in the command line"),
        ("--lr", "inf", "invalid lr: inf"),
        ("--lr", "1e309", "invalid lr: inf"),
        ("--lr", "-1", "invalid lr: -1 (must be a finite number > 0)"),
        (
            "--weight-decay",
            "nan",
            "weight_decay (--weight-decay): NaN",
        ),
        ("--momentum", "nan", "invalid momentum: NaN"),
        ("--clip-norm", "nan", "clip_norm (--clip-norm): NaN"),
        ("--max-seconds", "nan", "max_seconds (--max-seconds): NaN"),
        ("--beta2", "1", "invalid beta2: 1 (must be in [0, 1))"),
    ] {
        fails_with(&train(&data, &out, &[flag, value]), &[want]);
    }
    // A rule's own setting, as a flat flag and in its table.
    for extra in [["--pc-gamma", "0"], ["--rule-opt", "gamma=0"]] {
        let mut args = vec!["--rule", "pc"];
        args.extend(extra);
        fails_with(&train(&data, &out, &args), &["pc_gamma (--pc-gamma): 0"]);
    }
    fails_with(
        &train(&data, &out, &["--rule", "pc", "--rule-opt", "gamma=nan"]),
        &["gamma", "NaN", "must be a finite number"],
    );
    // Nothing was started: no run folder.
    assert!(!out.exists());
    for text in [
        "lr = nan\n",
        "lr = inf\n",
        "[[param_groups]]\nparams = \"*\"\nlr_scale = nan\n",
    ] {
        let cfg = t.path().join("run.toml");
        std::fs::write(&cfg, text).unwrap();
        fails_with(
            &train(&data, &out, &["--config", cfg.to_str().unwrap()]),
            &["run.toml", "must be a finite number"],
        );
    }
    let suite = t.path().join("s.toml");
    std::fs::write(
        &suite,
        "name = \"s\"\ndatasets = [\"mnist\"]\nmodels = [\"mlp:784-8-10\"]\nrules = [\"bp\"]\noptimizers = [\"sgd\"]\nepochs = 1\n[rule.bp]\nlr = nan\n",
    )
    .unwrap();
    let o = run(&[
        "bench",
        "--suite",
        suite.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        t.path().join("b").to_str().unwrap(),
        "--quiet",
    ]);
    fails_with(&o, &["invalid lr: NaN", "suite s [rule.bp]"]);
}

#[test]
fn empty_work_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    let data = tiny_mnist(t.path(), 200, 50);
    let out = t.path().join("run");
    for (flag, want) in [
        ("--epochs", "invalid epochs: 0"),
        ("--max-steps", "max_steps (--max-steps): 0"),
        ("--train-limit", "train_limit (--train-limit): 0"),
        ("--test-limit", "test_limit (--test-limit): 0"),
    ] {
        fails_with(&train(&data, &out, &[flag, "0"]), &[want, "at least 1"]);
    }
    let empty_test = tiny_mnist(&t.path().join("e"), 200, 0);
    fails_with(
        &train(&empty_test, &out, &[]),
        &["t10k-images-idx3-ubyte", "holds no samples"],
    );
    let empty_train = tiny_mnist(&t.path().join("f"), 0, 50);
    fails_with(
        &train(&empty_train, &out, &[]),
        &["train-images-idx3-ubyte", "holds no samples"],
    );
}

#[test]
fn huge_models_and_duplicate_layer_names_are_refused_when_built() {
    let t = tempfile::tempdir().unwrap();
    // No data folder at all: the model is refused before any data is read.
    let data = t.path().join("nowhere");
    let out = t.path().join("run");
    for spec in ["mlp:784-99999999999-10", "mlp:784-100000000-10"] {
        fails_with(
            &train(&data, &out, &["--model", spec]),
            &[spec, "needs at least", "is available"],
        );
    }
    fails_with(
        &train(&data, &out, &["--model", "mlp:784-9999999999999-10"]),
        &["width 9999999999999 is more than the largest allowed"],
    );
    let m = t.path().join("dup.toml");
    std::fs::write(
        &m,
        "input = 784\n[[layers]]\ntype = \"linear\"\nout = 32\nname = \"a\"\n[[layers]]\ntype = \"relu\"\n[[layers]]\ntype = \"linear\"\nout = 10\nname = \"a\"\n",
    )
    .unwrap();
    fails_with(
        &train(&data, &out, &["--model", m.to_str().unwrap()]),
        &["two layers are named 'a'"],
    );
    assert!(!out.exists());
}

#[test]
fn checkpoints_are_verified_and_resuming_a_finished_run_does_nothing() {
    let t = tempfile::tempdir().unwrap();
    let data = tiny_mnist(t.path(), 200, 50);
    let out = t.path().join("run");
    let o = train(&data, &out, &["--epochs", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ck = out.join("checkpoint.safetensors");
    let good = std::fs::read(&ck).unwrap();
    // Resuming past the end: a message, exit 0, nothing rewritten.
    let metrics = std::fs::read(out.join("metrics.jsonl")).unwrap();
    for extra in [&["--max-steps", "2"][..], &[][..]] {
        let mut args = vec!["train", "--resume", out.to_str().unwrap(), "--quiet"];
        args.extend_from_slice(extra);
        let o = run(&args);
        let e = stderr(&o);
        assert!(o.status.success(), "{e}");
        assert!(
            e.starts_with("nothing to do: the checkpoint is at epoch 2"),
            "{e}"
        );
        assert_eq!(std::fs::read(&ck).unwrap(), good);
        assert_eq!(std::fs::read(out.join("metrics.jsonl")).unwrap(), metrics);
    }
    // One flipped byte in the tensor data (after the 8-byte length and the header).
    let header = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut bad = good.clone();
    bad[8 + header + 10] ^= 0x01;
    let flipped = t.path().join("flipped.safetensors");
    std::fs::write(&flipped, &bad).unwrap();
    let f = flipped.to_str().unwrap();
    fails_with(
        &run(&["train", "--resume", f, "--epochs", "3", "--quiet"]),
        &["flipped.safetensors", "SHA-256 mismatch", "rejected"],
    );
    fails_with(
        &run(&[
            "diagnose",
            "--checkpoint",
            f,
            "--data-dir",
            data.to_str().unwrap(),
        ]),
        &["flipped.safetensors", "SHA-256 mismatch"],
    );
    // A temporary file a killed writer left behind is removed on resume.
    let stale = out.join(format!(".checkpoint.safetensors.tmp-{}", u32::MAX));
    std::fs::write(&stale, b"partial").unwrap();
    let o = run(&[
        "train",
        "--resume",
        out.to_str().unwrap(),
        "--epochs",
        "3",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stale.exists(), "stale temporary file kept");
    // A fresh run that diverges before its first checkpoint says it has none.
    let div = t.path().join("div");
    let o = train(&data, &div, &["--optimizer", "sgd", "--lr", "1e12"]);
    fails_with(&o, &["loss became", "no checkpoint had been written"]);
}

#[test]
fn a_closed_or_full_stdout_is_no_panic() {
    // The reader is gone before the first write: the write fails with EPIPE.
    for cmd in ["rules", "optimizers", "reproduce --list"] {
        let o = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "(sleep 0.3; exec '{BIN}' {cmd}) | true; echo \"status ${{PIPESTATUS[0]}}\" >&2"
            ))
            .output()
            .unwrap();
        let e = stderr(&o);
        assert_eq!(
            e.trim(),
            "status 141",
            "{cmd}: quiet exit expected, got: {e}"
        );
    }
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full");
    if let Ok(full) = full {
        let o = Command::new(BIN)
            .arg("rules")
            .stdout(full)
            .output()
            .unwrap();
        fails_with(&o, &["standard output", "No space left on device"]);
    }
}

#[test]
fn technique_flags_are_derived_from_the_settings_structs() {
    use futureprop::settings::Described;
    // Every shared optimizer setting and every pretraining setting has its flag in
    // `train --help`, with its default; the rules' and optimizers' own settings are
    // described by `rules show` / `optimizers show` and set with `--rule-opt` /
    // `--optimizer-opt` (their flat flags of earlier versions are accepted, not shown).
    let help = String::from_utf8_lossy(&run(&["train", "--help"]).stdout).into_owned();
    assert!(
        help.contains("--rule-opt") && help.contains("--optimizer-opt"),
        "{help}"
    );
    for f in futureprop::optim::OptimizerConfig::fields()
        .into_iter()
        .filter(|f| f.key != "optimizer" && f.key != "param_groups")
    {
        assert!(
            help.contains(&format!("{} ", f.flag())),
            "{} missing",
            f.flag()
        );
    }
    for f in futureprop::train::pretrain::RbmConfig::fields() {
        assert!(
            help.contains(&format!("{} ", f.flag())),
            "{} missing",
            f.flag()
        );
    }
    assert!(!help.contains("--kfac-damping <"), "{help}");
    // Run-level flags show the defaults TrainConfig declares (not a copy in the CLI).
    let d = futureprop::train::TrainConfig::default();
    for (flag, default) in [
        ("--batch-size <", d.batch_size.to_string()),
        ("--epochs <", d.epochs.to_string()),
        ("--model <", d.model.clone()),
        ("--optimizer <", d.optim.optimizer.name.clone()),
        ("--rule <", d.rule.name.clone()),
    ] {
        let at = help.find(flag).unwrap_or_else(|| panic!("{flag} missing"));
        let entry = &help[at..];
        let entry = &entry[..entry[2..].find("\n      --").map_or(entry.len(), |e| e + 2)];
        assert!(
            entry.contains(&format!("[default: {default}]")),
            "{flag}: {entry}"
        );
    }
    // `rules show` / `optimizers show` list a technique's own settings.
    let o = run(&["rules", "show", "pc"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success());
    assert!(
        out.contains("--pc-steps") && out.contains("[default: 20]"),
        "{out}"
    );
    assert!(!out.contains("--ff-threshold"), "{out}");
    let out = String::from_utf8_lossy(&run(&["optimizers", "show", "adam"]).stdout).into_owned();
    assert!(
        out.contains("default learning rate 1e-3") && out.contains("--beta2"),
        "{out}"
    );
    fails_with(
        &run(&["rules", "show", "pcx"]),
        &["unknown rule 'pcx'", "did you mean 'pc'"],
    );
    // Typed values: a switch alone, a boolean with a value, a bad number.
    let t = tempfile::tempdir().unwrap();
    let data = tiny_mnist(t.path(), 100, 20);
    let out = t.path().join("run");
    let o = train(
        &data,
        &out,
        &[
            "--optimizer",
            "adam",
            "--amsgrad",
            "--rule",
            "ff",
            "--ff-skip-first",
            "true",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let config = || -> serde_json::Value {
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                .unwrap();
        s["config"].clone()
    };
    let c = config();
    assert_eq!(
        (
            c["optimizer"]["amsgrad"].as_bool(),
            c["rule"]["skip_first"].as_bool()
        ),
        (Some(true), Some(true))
    );
    let o = train(
        &data,
        &out,
        &[
            "--optimizer",
            "rmsprop",
            "--optimizer-opt",
            "alpha=0.9,centered=true",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let c = config();
    assert_eq!(
        (
            c["optimizer"]["alpha"].as_f64(),
            c["optimizer"]["centered"].as_bool()
        ),
        (Some(0.9), Some(true))
    );
    let o = train(&data, &out, &["--rule", "pc", "--rule-opt", "steps=3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c = config();
    assert_eq!(
        (c["rule"]["steps"].as_u64(), c["lr"].as_f64()),
        (Some(3), Some(1e-3))
    );
    let o = run(&["train", "--pc-steps", "x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--pc-steps"), "{}", stderr(&o));
    let cfg = t.path().join("c.toml");
    std::fs::write(&cfg, "pc_stepz = 3\n").unwrap();
    fails_with(
        &train(&data, &out, &["--config", cfg.to_str().unwrap()]),
        &["unknown key 'pc_stepz'", "did you mean 'pc_steps'"],
    );
}

#[test]
fn gradient_checkpointing_runs_with_bp_and_is_refused_where_it_cannot_apply() {
    let t = tempfile::tempdir().unwrap();
    let data = tiny_mnist(t.path(), 100, 20);
    let out = t.path().join("run");
    let args = ["--model", "mlp:784-16-16-10", "--checkpoint-segments"];
    // DFA recomputes too, in bf16 as well.
    let o = train(
        &data,
        &out,
        &[&args[..], &["2", "--rule", "dfa", "--precision", "bf16"]].concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = train(&data, &out, &[&args[..], &["auto"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["config"]["checkpoint_segments"], "auto");
    fails_with(
        &train(
            &data,
            &out,
            &[&args[..], &["2", "--rule", "local"]].concat(),
        ),
        &["checkpoint_segments", "local", "bp"],
    );
    fails_with(
        &train(
            &data,
            &out,
            &[&args[..], &["2", "--optimizer", "kfac"]].concat(),
        ),
        &["checkpoint_segments", "kfac"],
    );
    fails_with(
        &train(&data, &out, &[&args[..], &["zero"]].concat()),
        &["checkpoint_segments", "zero"],
    );
}

//! The command line end to end: small real runs on MNIST, determinism, resume,
//! divergence, config files, and one-line errors for bad input.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{run, stderr};

/// A folder with MNIST and Fashion-MNIST (see [`common::data_with`]); `None` skips the
/// test.
fn data_dir() -> Option<PathBuf> {
    common::data_with(&["mnist", "fashion-mnist"])
}

/// A small MNIST run: 2000 training and 500 test samples.
fn small_train(out: &Path, extra: &[&str]) -> Output {
    let d = data_dir().expect("the test checks for the data first");
    let mut args = vec![
        "train",
        "--data-dir",
        d.to_str().unwrap(),
        "--model",
        "mlp:784-32-10",
        "--train-limit",
        "2000",
        "--test-limit",
        "500",
        "--batch-size",
        "50",
        "--optimizer",
        "adam",
        "--lr",
        "1e-3",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// metrics.jsonl records without the fields named *_seconds / *_per_second.
fn metrics_without_timings(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut()
                .unwrap()
                .retain(|k, _| !k.ends_with("_seconds") && !k.ends_with("_per_second"));
            v
        })
        .collect()
}

#[test]
fn train_writes_metrics_summary_and_checkpoint_and_is_deterministic() {
    let Some(_d) = data_dir() else { return };
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let oa = small_train(&a, &["--epochs", "2", "--seed", "3"]);
    assert!(oa.status.success(), "{}", stderr(&oa));
    let ob = small_train(&b, &["--epochs", "2", "--seed", "3", "--threads", "1"]);
    assert!(ob.status.success(), "{}", stderr(&ob));
    let ma = metrics_without_timings(&a);
    assert_eq!(ma.len(), 2);
    assert_eq!(
        ma,
        metrics_without_timings(&b),
        "same seed must give the same metrics"
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("summary.json")).unwrap()).unwrap();
    for k in [
        "test_accuracy",
        "best_test_accuracy",
        "total_seconds",
        "seconds_per_epoch",
        "parameters",
        "config",
    ] {
        assert!(!s[k].is_null(), "summary lacks {k}");
    }
    assert_eq!(s["parameters"], 784 * 32 + 32 + 32 * 10 + 10);
    assert_eq!(s["config"]["model"], "mlp:784-32-10");
    // 2000 samples, 2 epochs of a small MLP: far above chance.
    assert!(s["test_accuracy"].as_f64().unwrap() > 0.8, "{s}");
    assert!(a.join("checkpoint.safetensors").is_file());
    let c = small_train(&t.path().join("c"), &["--epochs", "2", "--seed", "4"]);
    assert!(c.status.success());
    assert_ne!(
        ma,
        metrics_without_timings(&t.path().join("c")),
        "another seed gives another run"
    );
}

#[test]
fn resume_continues_exactly_where_the_run_stopped() {
    let Some(_d) = data_dir() else { return };
    let t = tempfile::tempdir().unwrap();
    let (full, part) = (t.path().join("full"), t.path().join("part"));
    assert!(small_train(&full, &["--epochs", "3"]).status.success());
    assert!(small_train(&part, &["--epochs", "1"]).status.success());
    // From the checkpoint file to epoch 2, then from the run directory to epoch 3.
    let ck = part.join("checkpoint.safetensors");
    for (from, epochs) in [(&ck, "2"), (&part, "3")] {
        let o = run(&[
            "train",
            "--resume",
            from.to_str().unwrap(),
            "--epochs",
            epochs,
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(
        metrics_without_timings(&full),
        metrics_without_timings(&part)
    );
}

#[test]
fn divergence_stops_with_a_message_and_keeps_the_last_good_checkpoint() {
    let Some(_d) = data_dir() else { return };
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("run");
    assert!(
        small_train(&d, &["--epochs", "1", "--optimizer", "sgd", "--lr", "0.01"])
            .status
            .success()
    );
    let ck = d.join("checkpoint.safetensors");
    let before = std::fs::read(&ck).unwrap();
    let o = run(&[
        "train",
        "--resume",
        ck.to_str().unwrap(),
        "--epochs",
        "3",
        "--lr",
        "1e12",
        "--quiet",
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("loss became") && e.contains("the checkpoint it resumed from is unchanged"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(&ck).unwrap(),
        before,
        "checkpoint must be the last good one"
    );
    // A fresh run that diverges in its first epoch has written none, and says so.
    let fresh = t.path().join("fresh");
    let o = small_train(
        &fresh,
        &["--epochs", "2", "--optimizer", "sgd", "--lr", "1e12"],
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("no checkpoint had been written"), "{e}");
    assert!(!fresh.join("checkpoint.safetensors").exists());
}

#[test]
fn config_file_sets_values_and_flags_win() {
    let Some(_d) = data_dir() else { return };
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("run");
    let cfg = t.path().join("c.toml");
    std::fs::write(
        &cfg,
        "epochs = 1\nseed = 9\nbatch-size = 100\nactivation = \"tanh\"\n",
    )
    .unwrap();
    let o = small_train(&d, &["--config", cfg.to_str().unwrap(), "--seed", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["config"]["epochs"], 1);
    assert_eq!(s["config"]["activation"], "tanh");
    // Flags given on the command line win over the file.
    assert_eq!(s["config"]["seed"], 5);
    assert_eq!(s["config"]["batch_size"], 50);
    std::fs::write(&cfg, "epochz = 1\n").unwrap();
    let o = small_train(&d, &["--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unknown key 'epochz'"),
        "{}",
        stderr(&o)
    );
}

fn one_line_error(args: &[&str], want: &[&str]) {
    let o = run(args);
    assert!(!o.status.success(), "{args:?} should fail");
    let e = stderr(&o);
    assert_eq!(e.trim().lines().count(), 1, "one line expected: {e}");
    assert!(!e.contains("panicked"), "{e}");
    for w in want {
        assert!(e.contains(w), "{args:?}: '{w}' not in: {e}");
    }
}

#[test]
fn bad_input_gives_one_line_errors() {
    let Some(d) = data_dir() else { return };
    let d = d.to_str().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let e = empty.path().to_str().unwrap();
    one_line_error(
        &["train", "--data-dir", d, "--rule", "magic"],
        &["unknown rule 'magic'", "bp"],
    );
    one_line_error(
        &["train", "--data-dir", d, "--optimizer", "sgdd"],
        &["unknown optimizer 'sgdd'", "adam"],
    );
    one_line_error(
        &["train", "--data-dir", d, "--model", "mlp:100-10"],
        &["784 features", "mlp:784-1000-10"],
    );
    one_line_error(
        &["train", "--data-dir", d, "--model", "mlp:784-x-10"],
        &["width 'x'"],
    );
    one_line_error(
        &["train", "--data-dir", d, "--activation", "relu6"],
        &["unknown activation 'relu6'"],
    );
    one_line_error(
        &["train", "--data-dir", d, "--dataset", "cifar-100"],
        &["unknown dataset 'cifar-100'", "mnist"],
    );
    one_line_error(
        &["train", "--data-dir", e, "--no-download"],
        &["futureprop data fetch mnist"],
    );
    one_line_error(
        &[
            "train",
            "--data-dir",
            d,
            "--resume",
            "/nonexistent/ck.safetensors",
        ],
        &["/nonexistent/ck.safetensors"],
    );
    one_line_error(
        &["train", "--data-dir", d, "--config", "/nonexistent.toml"],
        &["/nonexistent.toml"],
    );
    let junk = empty.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    one_line_error(
        &["train", "--resume", junk.to_str().unwrap()],
        &["junk.safetensors"],
    );
    // clap's own errors for malformed flags: non-zero exit, no panic.
    let o = run(&["train", "--lr", "fast"]);
    assert!(!o.status.success() && stderr(&o).contains("--lr"));
}

#[test]
fn listings_and_data_verify() {
    let Some(d) = data_dir() else { return };
    let o = run(&["rules"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("bp"));
    let o = run(&["optimizers"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    for n in ["sgd", "momentum", "nesterov", "adam", "adamw"] {
        assert!(
            out.lines().any(|l| l.starts_with(n)),
            "{n} not listed: {out}"
        );
    }
    let o = run(&[
        "data",
        "verify",
        "mnist",
        "fashion-mnist",
        "--data-dir",
        d.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let empty = tempfile::tempdir().unwrap();
    let o = run(&[
        "data",
        "verify",
        "mnist",
        "--data-dir",
        empty.path().to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("missing"));
}

#[test]
fn diagnostics_leave_the_trajectory_unchanged_and_diagnose_reads_checkpoints() {
    let Some(d) = data_dir() else { return };
    let t = tempfile::tempdir().unwrap();
    let (plain, diag) = (t.path().join("plain"), t.path().join("diag"));
    // brsf draws random magnitudes every batch: the diagnostics must not disturb that stream.
    assert!(
        small_train(&plain, &["--epochs", "2", "--rule", "brsf"])
            .status
            .success()
    );
    let o = small_train(
        &diag,
        &["--epochs", "2", "--rule", "brsf", "--diag-every", "7"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let with: Vec<_> = metrics_without_timings(&diag);
    let epochs: Vec<_> = with
        .iter()
        .filter(|r| r["type"] == "epoch")
        .cloned()
        .collect();
    assert_eq!(epochs, metrics_without_timings(&plain));
    let diags: Vec<_> = with.iter().filter(|r| r["type"] == "diagnostics").collect();
    // 40 steps per epoch, every 7th step from step 0: 0, 7, ..., 77 → 12 records.
    assert_eq!(diags.len(), 12);
    let l = &diags[3]["layers"];
    assert_eq!(l.as_array().unwrap().len(), 2);
    assert!(
        l[1]["feedback_angle_deg"].as_f64().unwrap() < 90.0,
        "sign-concordant feedback is aligned with W"
    );
    assert!(
        (l[1]["angle_to_bp_deg"].as_f64().unwrap()).abs() < 1e-3,
        "output layer uses the true gradient"
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(diag.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["diagnostics"]["records"], 12);
    let o = run(&[
        "diagnose",
        "--checkpoint",
        diag.join("checkpoint.safetensors").to_str().unwrap(),
        "--data-dir",
        d.to_str().unwrap(),
        "--batch-size",
        "64",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (r["rule"].as_str(), r["batch_size"].as_u64()),
        (Some("brsf"), Some(64))
    );
    let a = r["layers"][0]["angle_to_bp_deg"].as_f64().unwrap();
    assert!(a > 0.0 && a < 90.0, "hidden layer angle {a}");
    assert!(r["sharpness"].is_null(), "curvature only when asked");
    let o = run(&[
        "diagnose",
        "--checkpoint",
        diag.join("checkpoint.safetensors").to_str().unwrap(),
        "--data-dir",
        d.to_str().unwrap(),
        "--curvature",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in ["sharpness", "hessian_trace"] {
        assert!(r[k].as_f64().is_some_and(f64::is_finite), "{k}: {}", r[k]);
    }
    // The noise scale is a non-negative number, or null with a note saying why.
    match r["gradient_noise_scale"].as_f64() {
        Some(b) => assert!(b.is_finite() && b >= 0.0, "noise scale {b}"),
        None => assert!(
            r["gradient_noise_scale_note"]
                .as_str()
                .is_some_and(|n| n.contains("not resolvable")),
            "{r}"
        ),
    }
    // Cross-entropy is convex in the logits: near a trained point the top eigenvalue is positive.
    assert!(r["sharpness"].as_f64().unwrap() > 0.0);
}

const TINY_SUITE: &str = r#"
name = "tiny"
description = "two rules, two seeds, small data"
datasets = ["mnist"]
models = ["mlp:784-16-16-10"]
rules = ["bp", "dfa"]
optimizers = ["adam"]
seeds = 2
epochs = 2
diag_every = 10
[defaults]
train_limit = 1000
test_limit = 300
batch_size = 50
lr = 1e-3
"#;

/// results.csv rows without the columns that depend on timing: durations, and the
/// allocator's peak (which depends on how threads interleave).
fn csv_without_timings(dir: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    let keep: Vec<usize> = (0..head.len())
        .filter(|&i| {
            !head[i].ends_with("_seconds")
                && !head[i].ends_with("_per_second")
                && !head[i].ends_with("_epoch")
                && !head[i].starts_with("peak_")
        })
        .collect();
    lines
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            keep.iter().map(|&i| c[i].to_string()).collect()
        })
        .collect()
}

#[test]
fn bench_suite_writes_its_outputs_and_resume_gives_the_same_rows() {
    let Some(d) = data_dir() else { return };
    let t = tempfile::tempdir().unwrap();
    let suite = t.path().join("tiny.toml");
    std::fs::write(&suite, TINY_SUITE).unwrap();
    let bench = |out: &Path| {
        run(&[
            "bench",
            "--suite",
            suite.to_str().unwrap(),
            "--data-dir",
            d.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ])
    };
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let o = bench(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "results.json",
        "results.csv",
        "report.md",
        "suite.toml",
        "accuracy_vs_epoch.svg",
        "accuracy_vs_seconds.svg",
        "memory.svg",
        "alignment.svg",
    ] {
        assert!(a.join(f).is_file(), "{f} missing");
    }
    let rows = csv_without_timings(&a);
    assert_eq!(rows.len(), 4, "2 arms × 2 seeds");
    let report = std::fs::read_to_string(a.join("report.md")).unwrap();
    assert!(
        report.contains("| technique | accuracy vs BP | training speed | memory | energy |"),
        "{report}"
    );
    assert!(
        report.contains("estimated"),
        "energy without a meter must be labelled estimated"
    );
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("results.json")).unwrap()).unwrap();
    let dfa = results["arms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["rule"] == "dfa")
        .unwrap();
    assert_eq!(dfa["vs_bp"]["pairs"], 2);
    assert!(dfa["vs_bp"]["accuracy_difference_ci95"].is_array());
    assert!(
        dfa["vs_bp"]["flops_ratio"].as_f64().unwrap() < 1.0,
        "DFA skips the δ·W products"
    );
    // Same suite again, interrupted during its last arm: that arm's summary and the
    // suite outputs are gone; resuming runs only what is missing.
    assert!(bench(&b).status.success());
    let arms = b.join("arms");
    let dfa_dir = std::fs::read_dir(&arms)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("__dfa__"))
        .unwrap();
    let bp_dir = std::fs::read_dir(&arms)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("__bp__"))
        .unwrap();
    std::fs::remove_file(dfa_dir.join("seed1/summary.json")).unwrap();
    std::fs::remove_file(b.join("results.csv")).unwrap();
    let bp_mtime = std::fs::metadata(bp_dir.join("seed0/summary.json"))
        .unwrap()
        .modified()
        .unwrap();
    let o = run(&[
        "bench",
        "--resume",
        b.to_str().unwrap(),
        "--data-dir",
        d.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::metadata(bp_dir.join("seed0/summary.json"))
            .unwrap()
            .modified()
            .unwrap(),
        bp_mtime,
        "finished arms are skipped"
    );
    assert!(dfa_dir.join("seed1/summary.json").is_file());
    assert_eq!(csv_without_timings(&b), rows);
}

#[test]
fn a_bench_arm_reads_its_data_as_its_rule_recommends_whatever_ran_before() {
    // EqProp recommends unit inputs; in a suite it follows a BP arm on standardised
    // inputs. Run alone (a resume of its arm only) it must give the same row.
    let Some(d) = data_dir() else { return };
    let t = tempfile::tempdir().unwrap();
    let suite = t.path().join("two.toml");
    let text = TINY_SUITE
        .replace(r#"rules = ["bp", "dfa"]"#, r#"rules = ["bp", "eqprop"]"#)
        .replace("seeds = 2", "seeds = 1")
        .replace("epochs = 2", "epochs = 1")
        .replace("[defaults]", "[defaults]\nactivation = \"relu\"");
    std::fs::write(&suite, text).unwrap();
    let out = t.path().join("b");
    let o = run(&[
        "bench",
        "--suite",
        suite.to_str().unwrap(),
        "--data-dir",
        d.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = csv_without_timings(&out);
    let eqprop_dir = std::fs::read_dir(out.join("arms"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("__eqprop__"))
        .unwrap();
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(eqprop_dir.join("seed0/summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["config"]["normalize"], "unit");
    std::fs::remove_file(eqprop_dir.join("seed0/summary.json")).unwrap();
    std::fs::remove_file(out.join("results.csv")).unwrap();
    let o = run(&[
        "bench",
        "--resume",
        out.to_str().unwrap(),
        "--data-dir",
        d.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(csv_without_timings(&out), rows);
}

#[test]
fn bench_rejects_unknown_suites_and_bad_suite_files() {
    one_line_error(
        &["bench", "--suite", "huge"],
        &["unknown suite 'huge'", "quick"],
    );
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("s.toml");
    std::fs::write(
        &p,
        TINY_SUITE.replace("[\"bp\", \"dfa\"]", "[\"bp\", \"magic\"]"),
    )
    .unwrap();
    one_line_error(
        &["bench", "--suite", p.to_str().unwrap()],
        &["unknown rule 'magic'"],
    );
    std::fs::write(&p, "name = 1").unwrap();
    one_line_error(
        &["bench", "--suite", p.to_str().unwrap()],
        &["s.toml", "invalid suite"],
    );
}

/// A registry of two rows on 1000 MNIST images: `near` with the paper's number set far
/// from anything a 1-epoch run reaches on one side, `far` on the other, so that the
/// verdicts follow from the band alone.
fn tiny_registry(dir: &Path, near_error: f64, far_error: f64) -> PathBuf {
    let row = |name: &str, err: f64, tol: f64, seeds: &str| {
        format!(
            "[[result]]\nname = \"{name}\"\nchecks = [\"bp\"]\npaper = \"test\"\nsource = \"Table 0\"\n\
             anchor = \"paper\"\ndataset = \"mnist\"\npaper_test_error = {err}\ntolerance = {tol}\n\
             seeds = {seeds}\nminutes_per_seed = 0.1\ndifferences = [\"a tiny budget\"]\n\
             [result.paper_setting]\narchitecture = \"a\"\ndata = \"d\"\noptimizer = \"o\"\nepochs = \"1\"\nbatch = \"100\"\n\
             [result.recipe]\nmodel = \"mlp:784-32-10\"\nrule = \"bp\"\noptimizer = \"adam\"\nlr = 1e-3\n\
             epochs = 2\ntrain_limit = 1000\ntest_limit = 500\nbatch_size = 100\n"
        )
    };
    let p = dir.join("registry.toml");
    std::fs::write(
        &p,
        row("near", near_error, 60.0, "[0, 1]") + &row("far", far_error, 0.5, "[0]"),
    )
    .unwrap();
    p
}

#[test]
fn reproduce_lists_the_registry_and_refuses_unknown_rows() {
    let o = run(&["reproduce", "--list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    for n in ["lillicrap2016-fa", "bartunov2018-dfa", "lecun1998-lms"] {
        assert!(out.contains(n), "{out}");
    }
    // The listing names the rules no row checks yet, and only those.
    let reg = futureprop::bench::reproduce::registry().unwrap();
    let missing = futureprop::bench::reproduce::unchecked_rules(&reg);
    assert!(
        !missing.contains(&"bp") && !missing.contains(&"drtp"),
        "{missing:?}"
    );
    for r in &missing {
        assert!(!reg.iter().any(|e| e.checks.iter().any(|c| c == r)), "{r}");
    }
    assert_eq!(
        out.contains("rules without a row yet"),
        !missing.is_empty(),
        "{out}"
    );
    one_line_error(
        &["reproduce", "--only", "nobody2030"],
        &["unknown registry row 'nobody2030'", "lillicrap2016-fa"],
    );
    one_line_error(
        &["reproduce", "--budget-hours", "0.0001"],
        &["--budget-hours", "no row fits", "the cheapest row"],
    );
    one_line_error(
        &["reproduce", "--all", "--only", "lecun1998-lms"],
        &["one of --only, --all, --budget-hours"],
    );
}

#[test]
fn reproduce_check_gives_verdicts_fails_the_command_and_resumes() {
    let Some(d) = data_dir() else { return };
    let t = tempfile::tempdir().unwrap();
    // 2 epochs on 1000 images leave a test error between 5 % and 40 %.
    let reg = tiny_registry(t.path(), 20.0, 99.0);
    let out = t.path().join("out");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "reproduce",
            "--registry",
            reg.to_str().unwrap(),
            "--quiet",
            "--threads",
            "1",
            "--data-dir",
            d.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let argv = args(&["--all", "--check", "--out", out.to_str().unwrap()]);
    let o = run(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success(), "a failing row fails --check");
    let err = stderr(&o);
    assert!(
        err.contains("1 of 2 rows outside their tolerance: far"),
        "{err}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(
        (rows[0]["verdict"].as_str(), rows[1]["verdict"].as_str()),
        (Some("PASS"), Some("FAIL"))
    );
    assert_eq!((r["pass"].as_u64(), r["fail"].as_u64()), (Some(1), Some(1)));
    // The row's mean and sd are those of its seeds' test errors.
    let e: Vec<f64> = rows[0]["seeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["test_error"].as_f64().unwrap())
        .collect();
    assert_eq!(e.len(), 2);
    assert!(e.iter().all(|&v| v > 5.0 && v < 40.0), "{e:?}");
    let m = (e[0] + e[1]) / 2.0;
    assert!((rows[0]["ours_mean"].as_f64().unwrap() - m).abs() < 1e-9);
    let sd = ((e[0] - m).powi(2) + (e[1] - m).powi(2)).sqrt();
    assert!((rows[0]["ours_sd"].as_f64().unwrap() - sd).abs() < 1e-9);
    assert!(e[0] != e[1], "seeds differ");
    // The seed's run holds the recipe with the seed applied.
    let s: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("near/seed-1/summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(s["config"]["seed"], 1);
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(
        md.contains("| near | bp | Table 0 | test error | 20.00 | 60.00 |")
            && md.contains("1 of 2 rows PASS"),
        "{md}"
    );

    // Resuming keeps finished seeds: drop one seed's record and its run, and only that
    // seed trains again (the other's record, marked, comes back unchanged).
    let kept = out.join("near/seed-0.json");
    let mut marked: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&kept).unwrap()).unwrap();
    marked["test_error"] = 25.0.into();
    std::fs::write(&kept, marked.to_string()).unwrap();
    std::fs::remove_file(out.join("far/seed-0.json")).unwrap();
    let argv = args(&["--resume", out.to_str().unwrap()]);
    let o = run(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        o.status.success(),
        "without --check a failing row is reported only: {}",
        stderr(&o)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(r["rows"][0]["seeds"][0]["test_error"], 25.0);
    assert!(out.join("far/seed-0.json").is_file());
    // A cut budget gives no verdict, and --check refuses it.
    let argv = args(&[
        "--only",
        "near",
        "--epochs",
        "1",
        "--check",
        "--out",
        t.path().join("cut").to_str().unwrap(),
    ]);
    let o = run(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no row has a verdict"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn accumulation_and_weight_averaging() {
    let Some(d) = data_dir() else { return };
    use futureprop::train::checkpoint;
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    // One optimizer step on 100 samples: two accumulated batches of 50 or one batch of 100.
    let common = [
        "--optimizer",
        "sgd",
        "--lr",
        "0.1",
        "--max-steps",
        "1",
        "--epochs",
        "1",
    ];
    let mut args = common.to_vec();
    args.extend(["--accumulate", "2"]);
    assert!(small_train(&a, &args).status.success());
    let mut args = common.to_vec();
    args.extend(["--batch-size", "100"]);
    assert!(small_train(&b, &args).status.success());
    let (pa, pb) = (
        checkpoint::load(&a.join("checkpoint.safetensors"))
            .unwrap()
            .params,
        checkpoint::load(&b.join("checkpoint.safetensors"))
            .unwrap()
            .params,
    );
    for (n, x) in pa.iter() {
        let (x, y) = (x.to_vec_f32(), pb.get(n).unwrap().to_vec_f32());
        for (p, q) in x.iter().zip(&y) {
            assert!((p - q).abs() < 1e-6, "{n}: {p} vs {q}");
        }
    }
    // Averaging changes what is evaluated, not how training goes.
    let (plain, ema, swa) = (
        t.path().join("plain"),
        t.path().join("ema"),
        t.path().join("swa"),
    );
    assert!(small_train(&plain, &["--epochs", "2"]).status.success());
    assert!(
        small_train(&ema, &["--epochs", "2", "--average", "ema:0.9"])
            .status
            .success()
    );
    assert!(
        small_train(&swa, &["--epochs", "2", "--average", "swa:1"])
            .status
            .success()
    );
    let field = |d: &Path, k: &str| -> Vec<serde_json::Value> {
        metrics_without_timings(d)
            .iter()
            .map(|r| r[k].clone())
            .collect()
    };
    assert_eq!(field(&plain, "train_loss"), field(&ema, "train_loss"));
    assert_eq!(field(&plain, "train_loss"), field(&swa, "train_loss"));
    assert_ne!(field(&plain, "test_loss"), field(&ema, "test_loss"));
    // SWA from epoch 1: after epoch 1 the average is the weights themselves.
    assert_eq!(field(&plain, "test_loss")[0], field(&swa, "test_loss")[0]);
    assert_ne!(field(&plain, "test_loss")[1], field(&swa, "test_loss")[1]);
    one_line_error(
        &[
            "train",
            "--data-dir",
            d.to_str().unwrap(),
            "--average",
            "ema:2",
        ],
        &["average", "ema:DECAY"],
    );
}

#[test]
fn every_registry_recipe_is_a_valid_training_configuration() {
    use futureprop::train::TrainConfig;
    for e in futureprop::bench::reproduce::registry().unwrap() {
        let recipe = serde_json::to_value(&e.recipe).unwrap();
        let cfg = TrainConfig::default()
            .merged(&[serde_json::json!({"dataset": e.dataset}), recipe])
            .unwrap_or_else(|err| panic!("{}: {err}", e.name));
        futureprop::rule::build_choice(&cfg.rule).unwrap_or_else(|err| panic!("{}: {err}", e.name));
        futureprop::optim::build_optimizer(&cfg.optim, 100)
            .unwrap_or_else(|err| panic!("{}: {err}", e.name));
        // A peer-anchored row names the script that measures its number.
        if let Some(script) = &e.peer_script {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
            assert!(
                path.is_file(),
                "{}: peer script {script} is missing",
                e.name
            );
        }
    }
}

#[test]
fn a_described_model_with_batch_norm_and_dropout_resumes_exactly() {
    // Dropout masks are a function of (seed, step) and the running statistics live in
    // the checkpoint, so a resumed run repeats the uninterrupted one.
    let t = tempfile::tempdir().unwrap();
    let model = t.path().join("net.toml");
    std::fs::write(
        &model,
        "input = 16\n[[layers]]\ntype = \"linear\"\nout = 24\n[[layers]]\ntype = \"batchnorm\"\n\
         [[layers]]\ntype = \"relu\"\n[[layers]]\ntype = \"dropout\"\np = 0.3\n\
         [[layers]]\ntype = \"linear\"\nout = 1\n",
    )
    .unwrap();
    let (full, part) = (t.path().join("full"), t.path().join("part"));
    let train = |out: &Path, epochs: &str| {
        run(&[
            "train",
            "--dataset",
            "adding:8",
            "--loss",
            "mse",
            "--model",
            model.to_str().unwrap(),
            "--optimizer",
            "adam",
            "--lr",
            "3e-3",
            "--train-limit",
            "4000",
            "--epochs",
            epochs,
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let o = train(&full, "4");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("test loss"));
    assert!(train(&part, "2").status.success());
    let ck = part.join("checkpoint.safetensors");
    let o = run(&[
        "train",
        "--resume",
        ck.to_str().unwrap(),
        "--epochs",
        "4",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = metrics_without_timings(&full);
    assert_eq!(m, metrics_without_timings(&part));
    // The model learned something beyond predicting the mean (squared error 1/6).
    let last = m.iter().rev().find(|r| r["type"] == "epoch").unwrap();
    assert!(last["test_loss"].as_f64().unwrap() < 0.16, "{last}");
    // A rule not defined for batch normalisation is refused before training.
    let o = run(&[
        "train",
        "--dataset",
        "adding:8",
        "--loss",
        "mse",
        "--model",
        model.to_str().unwrap(),
        "--rule",
        "dfa",
        "--quiet",
        "--out",
        t.path().join("dfa").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("normalisation"), "{}", stderr(&o));
}

#[test]
fn a_rule_is_a_tagged_table_and_flat_keys_of_earlier_versions_still_load() {
    use futureprop::train::TrainConfig;
    use serde_json::json;
    // A stored config of the earlier layout holds every rule's flat keys (at the defaults
    // of its time: ff_threshold was 2, eqprop_nudge one-sided); the stored rule's are
    // read into its table, the others dropped.
    let old = json!({
        "rule": "pc", "pc_steps": 8, "pc_gamma": 0.02, "relax_tolerance": 0.0,
        "ff_threshold": 2.0, "eqprop_nudge": "one-sided", "feedback_init": "xavier-uniform",
        "optimizer": "sgd", "lr": 0.01,
    });
    let cfg = TrainConfig::from_stored(&old).unwrap();
    assert_eq!(cfg.rule.name, "pc");
    assert_eq!(cfg.rule.settings["steps"], 8);
    assert_eq!(cfg.rule.settings["gamma"], 0.02);
    assert_eq!(
        cfg.rule.settings["variant"], "standard",
        "resolved: every setting"
    );
    assert!(cfg.rule.settings.get("threshold").is_none());
    assert_eq!((cfg.optim.name(), cfg.optim.lr), ("sgd", 0.01));
    // From a user's layer, another rule's flat key is refused unless at its default.
    let e = TrainConfig::default()
        .merged(&[json!({"rule": "bp", "pc_steps": 8})])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pc_steps") && e.contains("pc") && e.contains("bp"),
        "{e}"
    );
    assert!(
        TrainConfig::default()
            .merged(&[json!({"rule": "bp", "pc_steps": 20})])
            .is_ok()
    );
    // The table in TOML; a summary stores it resolved.
    let path = std::path::Path::new("run.toml");
    let layer = TrainConfig::parse_toml("[rule]\nname = \"pc\"\nsteps = 8\n", path).unwrap();
    let cfg = TrainConfig::fresh(&[layer]).unwrap();
    let stored = serde_json::to_value(&cfg).unwrap();
    assert_eq!(stored["rule"]["name"], "pc");
    assert_eq!(stored["rule"]["steps"], 8);
    assert_eq!(stored["rule"]["gamma"], 0.05);
    assert_eq!(
        TrainConfig::from_stored(&stored).unwrap(),
        cfg,
        "round trip"
    );
    // Unknown keys in the table are named with the closest and the valid ones.
    let bad = TrainConfig::parse_toml("[rule]\nname = \"pc\"\nstepz = 8\n", path).unwrap();
    let e = TrainConfig::fresh(&[bad]).unwrap_err().to_string();
    assert!(
        e.contains("unknown setting 'stepz'") && e.contains("did you mean 'steps'"),
        "{e}"
    );
    // A later layer naming another rule starts a fresh table.
    let cfg = TrainConfig::fresh(&[
        json!({"rule": {"name": "pc", "steps": 8}}),
        json!({"rule": "dfa"}),
    ])
    .unwrap();
    assert_eq!(cfg.rule.name, "dfa");
    assert_eq!(cfg.rule.settings["init"], "xavier-uniform");
    assert!(cfg.rule.settings.get("steps").is_none());
    // A rule's recommendation applies to a fresh run that sets nothing, and yields to a
    // setting.
    let cfg = TrainConfig::fresh(&[json!({"rule": "eqprop"})]).unwrap();
    assert_eq!(cfg.normalize, "unit");
    let cfg = TrainConfig::fresh(&[json!({"rule": "eqprop", "normalize": "standard"})]).unwrap();
    assert_eq!(cfg.normalize, "standard");
}

#[test]
fn an_optimizer_is_a_tagged_table_and_flat_keys_of_earlier_versions_still_load() {
    use futureprop::train::TrainConfig;
    use serde_json::json;
    // A stored config of the earlier layout: every optimizer's flat keys beside the name.
    let old = json!({
        "optimizer": "kfac", "lr": 0.003, "momentum": 0.8, "kfac_damping": 0.01,
        "kfac_fisher": "empirical", "curvature_decay": 0.9, "beta1": 0.5,
        "sam_rho": 0.05, "inner": "momentum", "lbfgs_history": 10, "trust_coefficient": null,
    });
    let cfg = TrainConfig::from_stored(&old).unwrap();
    let o = &cfg.optim.optimizer;
    assert_eq!((o.name.as_str(), cfg.optim.lr), ("kfac", 0.003));
    assert_eq!(o.settings["momentum"], 0.8);
    assert_eq!(o.settings["damping"], 0.01);
    assert_eq!(o.settings["fisher"], "empirical");
    assert_eq!(o.settings["decay"], 0.9);
    assert_eq!(o.settings["inv_every"], 20, "resolved: every setting");
    assert!(o.settings.get("beta1").is_none() && o.settings.get("rho").is_none());
    // A wrapper's flat keys: its own, then its inner optimizer's.
    let old =
        json!({"optimizer": "sam", "sam_rho": 0.1, "inner": "adam", "beta1": 0.8, "momentum": 0.9});
    let o = TrainConfig::from_stored(&old).unwrap().optim.optimizer;
    assert_eq!(o.settings["rho"], 0.1);
    assert_eq!(o.settings["inner"]["name"], "adam");
    assert_eq!(o.settings["inner"]["beta1"], 0.8);
    assert_eq!(o.settings["inner"]["beta2"], 0.999);
    // From a user's layer, another optimizer's flat key is refused unless at a default.
    let e = TrainConfig::default()
        .merged(&[json!({"optimizer": "sgd", "kfac_damping": 0.5})])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("kfac_damping") && e.contains("kfac") && e.contains("sgd"),
        "{e}"
    );
    // The table in TOML, a wrapper's inner one nested; a summary stores it resolved.
    let path = std::path::Path::new("run.toml");
    let layer = TrainConfig::parse_toml(
        "[optimizer]\nname = \"sam\"\nrho = 0.2\ninner = { name = \"adam\", beta1 = 0.95 }\n",
        path,
    )
    .unwrap();
    let cfg = TrainConfig::fresh(&[layer]).unwrap();
    assert_eq!(cfg.optim.lr, 1e-3, "the inner optimizer's rate");
    let stored = serde_json::to_value(&cfg).unwrap();
    assert_eq!(stored["optimizer"]["name"], "sam");
    assert_eq!(stored["optimizer"]["inner"]["beta1"], 0.95);
    assert_eq!(stored["optimizer"]["inner"]["eps"], 1e-8);
    assert_eq!(
        TrainConfig::from_stored(&stored).unwrap(),
        cfg,
        "round trip"
    );
    // Unknown settings are named with the closest and the valid ones; so are a
    // wrapper's inner ones, and a shared setting the optimizer does not read.
    for (layer, want) in [
        (
            json!({"optimizer": {"name": "kfac", "dampin": 0.1}}),
            vec![
                "unknown setting 'dampin'",
                "did you mean 'damping'",
                "inv_every",
            ],
        ),
        (
            json!({"optimizer": {"name": "sam", "inner": {"name": "adam", "beta3": 0.1}}}),
            vec!["optimizer adam", "unknown setting 'beta3'", "beta2"],
        ),
        (
            json!({"optimizer": {"name": "sam", "inner": "asam"}}),
            vec!["cannot wrap a wrapper"],
        ),
        (
            json!({"optimizer": "lbfgs", "schedule": "cosine"}),
            vec!["schedule", "not read by lbfgs"],
        ),
        (
            json!({"optimizer": {"name": "kfac", "fisher": "exact"}}),
            vec!["optimizer kfac", "exact", "gauss-newton"],
        ),
    ] {
        let e = TrainConfig::fresh(&[layer]).unwrap_err().to_string();
        for w in want {
            assert!(e.contains(w), "{w} not in: {e}");
        }
    }
    // A later layer naming another optimizer starts a fresh table.
    let cfg = TrainConfig::fresh(&[
        json!({"optimizer": {"name": "kfac", "damping": 0.1}}),
        json!({"optimizer": "adam"}),
    ])
    .unwrap();
    assert_eq!(cfg.optim.optimizer.name, "adam");
    assert!(cfg.optim.optimizer.settings.get("damping").is_none());
    // The flat keys of rules and optimizers are distinct, and optimizers that share one
    // (`momentum`, `eps`) give it one type (one flag each).
    let rules = futureprop::rule::all_settings();
    let all = futureprop::optim::all_settings();
    for (o, f) in &all {
        for (p, g) in all.iter().filter(|(_, g)| g.legacy == f.legacy) {
            assert_eq!(f.ty, g.ty, "{o} and {p} type {} differently", f.legacy);
        }
    }
    for (o, f) in all {
        assert!(
            !rules.iter().any(|(_, r)| r.legacy == f.legacy),
            "{o}'s {} is also a rule's flat key",
            f.legacy
        );
    }
}

#[test]
fn reproduce_measures_a_rows_own_metric_the_subspace_oja_finds() {
    let Some(d) = data_dir() else { return };
    let t = tempfile::tempdir().unwrap();
    let row = |name: &str, lr: &str, model: &str| {
        format!(
            "[[result]]\nname = \"{name}\"\nchecks = [\"hebbian\"]\npaper = \"test\"\nsource = \"theorem\"\n\
             anchor = \"paper\"\ndataset = \"mnist\"\nmetric = \"subspace_variance\"\npaper_test_error = 100.0\n\
             tolerance = 10.0\nseeds = [0]\nminutes_per_seed = 0.1\n\
             [result.paper_setting]\narchitecture = \"a\"\ndata = \"d\"\noptimizer = \"o\"\nepochs = \"1\"\nbatch = \"100\"\n\
             [result.recipe]\nmodel = \"{model}\"\nbias = false\nrule = \"hebbian\"\noptimizer = \"sgd\"\nlr = {lr}\n\
             epochs = 2\ntrain_limit = 10000\ntest_limit = 1000\nbatch_size = 50\n\n"
        )
    };
    let reg = t.path().join("registry.toml");
    // A working step size converges; one 1000× too small leaves the random start.
    std::fs::write(
        &reg,
        row("oja", "2e-3", "linear:784-10") + &row("stalled", "2e-6", "linear:784-10"),
    )
    .unwrap();
    let out = t.path().join("out");
    let (r, o) = (reg.to_str().unwrap(), out.to_str().unwrap());
    let dd = d.to_str().unwrap();
    let base = [
        "reproduce",
        "--registry",
        r,
        "--quiet",
        "--threads",
        "1",
        "--data-dir",
        dd,
    ];
    let o2 = run(&[&base[..], &["--all", "--check", "--out", o]].concat());
    assert!(!o2.status.success());
    let res: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let rows = res["rows"].as_array().unwrap();
    let v = |i: usize| rows[i]["ours_mean"].as_f64().unwrap();
    assert_eq!(rows[0]["metric"], "subspace_variance");
    assert!(v(0) > 90.0 && v(0) <= 100.0 + 1e-6, "oja: {}", v(0));
    assert!(v(1) < 50.0, "stalled: {}", v(1));
    assert_eq!(rows[0]["verdict"], "PASS");
    assert_eq!(rows[1]["verdict"], "FAIL");
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("variance captured vs PCA"), "{md}");
    // A model with more than one weight matrix has no single subspace to score.
    std::fs::write(
        &reg,
        row("deep", "1e-3", "mlp:784-16-10")
            .replace("rule = \"hebbian\"", "rule = \"bp\"")
            .replace("[\"hebbian\"]", "[\"bp\"]"),
    )
    .unwrap();
    let o3 = run(&[
        &base[..],
        &["--all", "--out", t.path().join("o3").to_str().unwrap()],
    ]
    .concat());
    let err = stderr(&o3);
    assert!(
        !o3.status.success() && err.contains("one weight matrix"),
        "{err}"
    );
}

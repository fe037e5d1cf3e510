//! Data-parallel training under `mpirun` (the `mpi` feature): 2 ranks with B/2 rows each
//! give the parameters 1 process gives with B rows, up to summation order, for every kind
//! of rule that says its update splits over the batch; bad use fails on every rank with
//! one clear error. Needs Open MPI's `mpirun` on the PATH.
//!
//!     cargo test --features mpi --test distributed
#![cfg(feature = "mpi")]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use futureprop::train::checkpoint;

/// `futureprop ARGS` under `mpirun -np RANKS` (loopback; root and more ranks than cores
/// allowed, as in a container).
fn mpirun(ranks: usize, args: &[String]) -> Output {
    launch(&vec![args.to_vec(); ranks])
}

/// One `mpirun` starting one rank per element of `each`, each with its own arguments
/// (MPMD: `mpirun -np 1 A : -np 1 B`).
fn launch(each: &[Vec<String>]) -> Output {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "--bind-to", "none"]);
    for (i, args) in each.iter().enumerate() {
        if i > 0 {
            cmd.arg(":");
        }
        cmd.args(["-np", "1"])
            .arg(env!("CARGO_BIN_EXE_futureprop"))
            .args(args);
    }
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl", "self,vader,tcp")
        .env("OMPI_MCA_btl_tcp_if_include", "lo")
        .output()
        .expect("mpirun (Open MPI) on the PATH: apt-get install openmpi-bin libopenmpi-dev")
}

fn single(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_futureprop"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `train` on MNIST from `data` into `out`, at 1 thread, quietly, with `extra` settings.
fn train_args(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let (data, out) = (data.to_str().unwrap(), out.to_str().unwrap());
    [
        "train",
        "--dataset",
        "mnist",
        "--data-dir",
        data,
        "--threads",
        "1",
        "--quiet",
    ]
    .iter()
    .chain(extra)
    .chain(&["--out", out])
    .map(|s| s.to_string())
    .collect()
}

/// The last epoch record of the run in `out`.
fn last_epoch(out: &Path) -> serde_json::Value {
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    serde_json::from_str(metrics.lines().last().unwrap()).unwrap()
}

/// Largest |a − b| over the model's parameters of two runs' checkpoints.
fn max_difference(a: &Path, b: &Path) -> f64 {
    let (a, b) = (checkpoint::load(a).unwrap(), checkpoint::load(b).unwrap());
    let mut worst: f64 = 0.0;
    for (name, ta) in a.params.iter() {
        let tb = b.params.get(name).unwrap();
        assert_eq!(ta.shape(), tb.shape(), "{name}");
        for (x, y) in ta.to_vec_f64().iter().zip(tb.to_vec_f64()) {
            worst = worst.max((x - y).abs());
        }
    }
    worst
}

#[test]
fn two_ranks_with_half_batches_give_one_process_s_parameters() {
    let Some(data) = common::data_with(&["mnist"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // Rules on the shared backward pass, and energy-based, local and synthetic-gradient
    // rules whose updates are per-sample too.
    // K-FAC's factors are averaged over the ranks (its empirical Fisher: the sampled one
    // draws each rank's own targets); natgrad's diagonal Fisher and Sophia's Hutchinson
    // estimate likewise.
    let kfac = ["--kfac-fisher", "empirical"];
    let mut cases: Vec<(&str, &str, &str, &[&str])> = Vec::new();
    for rule in ["bp", "fa", "dfa", "pc", "local", "dni", "eqprop"] {
        cases.push((rule, "sgd", "0.05", &[]));
        cases.push((rule, "adam", "0.001", &[]));
        cases.push((rule, "kfac", "0.01", &kfac));
    }
    cases.push(("bp", "kfac", "0.01", &["--kfac-fisher", "gauss-newton"]));
    cases.push(("dfa", "natgrad", "0.001", &[]));
    cases.push(("bp", "sophia", "0.001", &[]));
    // 1-bit Adam's warm-up: Adam on the full-precision average.
    cases.push((
        "bp",
        "onebit_adam",
        "0.001",
        &["--optimizer-opt", "freeze_step=1000"],
    ));
    for (rule, optimizer, lr, extra) in cases {
        {
            let args = |out: &Path| {
                let mut all = vec![
                    "--model",
                    "mlp:784-48-24-10",
                    "--train-limit",
                    "640",
                    "--test-limit",
                    "200",
                    "--batch-size",
                    "64",
                    "--epochs",
                    "1",
                    "--rule",
                    rule,
                    "--optimizer",
                    optimizer,
                    "--lr",
                    lr,
                ];
                all.extend(extra);
                train_args(&data, out, &all)
            };
            let (one, two) = (
                tmp.path()
                    .join(format!("{rule}-{optimizer}-{}-1", extra.len())),
                tmp.path()
                    .join(format!("{rule}-{optimizer}-{}-2", extra.len())),
            );
            ok(&single(&args(&one)), "1 process");
            ok(&mpirun(2, &args(&two)), "2 ranks");
            // 10 steps; the two halves' f32 sums meet in another order than one batch's.
            let d = max_difference(&one, &two);
            assert!(d < 2e-5, "{rule} {optimizer}: parameters differ by {d:e}");
            // Rank 0 wrote the run: its records say so, and count the bytes it sent.
            let epoch = last_epoch(&two);
            assert_eq!(epoch["ranks"], 2);
            assert!(epoch["bytes_sent"].as_u64().unwrap() > 0);
        }
    }
}

#[test]
fn compressed_runs_send_fewer_bytes_and_still_train() {
    let Some(data) = common::data_with(&["mnist"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut sent = Vec::new();
    // 40 steps; 1-bit Adam warms up for 10 of them in full precision.
    let onebit = [
        "--optimizer",
        "onebit_adam",
        "--optimizer-opt",
        "freeze_step=10",
    ];
    for (label, extra) in [
        ("none", &["--optimizer", "adam"][..]),
        (
            "sign",
            &["--optimizer", "adam", "--compression", "sign"][..],
        ),
        ("onebit", &onebit[..]),
    ] {
        let out = tmp.path().join(label);
        let mut all = vec![
            "--model",
            "mlp:784-64-10",
            "--train-limit",
            "2560",
            "--test-limit",
            "500",
            "--batch-size",
            "64",
            "--epochs",
            "1",
            "--lr",
            "1e-3",
        ];
        all.extend(extra);
        ok(&mpirun(2, &train_args(&data, &out, &all)), label);
        let epoch = last_epoch(&out);
        assert!(
            epoch["test_accuracy"].as_f64().unwrap() > 0.7,
            "{label}: {epoch}"
        );
        sent.push(epoch["bytes_sent"].as_f64().unwrap());
    }
    // 50,890 parameters: 203,560 bytes as f32 against 6,362 of signs and 16 of scales.
    let ratio = sent[0] / sent[1];
    assert!((31.0..32.1).contains(&ratio), "sign: bytes ratio {ratio}");
    // 1-bit Adam: 10 full steps and 30 of signs, 40/(10 + 30/31.9) = 3.66.
    let ratio = sent[0] / sent[2];
    assert!(
        (3.5..3.8).contains(&ratio),
        "1-bit Adam: bytes ratio {ratio}"
    );
}

#[test]
fn synchronised_batch_norm_gives_one_process_s_parameters_and_per_rank_does_not() {
    let Some(data) = common::data_with(&["mnist"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("bn.toml");
    std::fs::write(
        &model,
        "input = 784\n[[layers]]\ntype = \"linear\"\nout = 32\n[[layers]]\ntype = \"batchnorm\"\n[[layers]]\ntype = \"relu\"\n[[layers]]\ntype = \"linear\"\nout = 10\n",
    )
    .unwrap();
    // Not Adam here: BatchNorm makes the gradient of a weight whose input is constant
    // over the batch exactly 0 in exact arithmetic, and Adam turns the f32 rounding noise
    // left in its place into steps of ±η (1 process is at that noise as much as 2 ranks).
    for optimizer in ["sgd", "momentum"] {
        let args = |out: &Path, extra: &[&str]| {
            let mut all = vec![
                "--model",
                model.to_str().unwrap(),
                "--train-limit",
                "640",
                "--test-limit",
                "200",
                "--batch-size",
                "64",
                "--epochs",
                "1",
                "--optimizer",
                optimizer,
            ];
            all.extend(extra);
            train_args(&data, out, &all)
        };
        let one = tmp.path().join(format!("{optimizer}-1"));
        let (synced, own) = (
            tmp.path().join(format!("{optimizer}-sync")),
            tmp.path().join(format!("{optimizer}-own")),
        );
        ok(&single(&args(&one, &[])), "1 process");
        ok(&mpirun(2, &args(&synced, &["--sync-batch-norm"])), "sync");
        ok(&mpirun(2, &args(&own, &[])), "per rank");
        // The running statistics are parameters of the store too.
        let d = max_difference(&one, &synced);
        assert!(
            d < 2e-5,
            "{optimizer}, synchronised: parameters differ by {d:e}"
        );
        let d = max_difference(&one, &own);
        assert!(
            d > 1e-4,
            "{optimizer}, per rank: statistics of 32 rows, not 64 ({d:e})"
        );
    }
}

#[test]
fn a_layer_pipeline_gives_one_process_s_parameters() {
    let Some(data) = common::data_with(&["mnist"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // DFA: each rank updates its layers from the broadcast output error alone; BP: the
    // error flows back rank by rank. Four weight layers over 2 and 3 ranks.
    for rule in ["dfa", "bp"] {
        let args = |out: &Path, extra: &[&str]| {
            let mut all = vec![
                "--model",
                "mlp:784-48-40-24-10",
                "--train-limit",
                "640",
                "--test-limit",
                "200",
                "--batch-size",
                "64",
                "--epochs",
                "1",
                "--rule",
                rule,
                "--optimizer",
                "adam",
            ];
            all.extend(extra);
            train_args(&data, out, &all)
        };
        let one = tmp.path().join(format!("{rule}-1"));
        ok(&single(&args(&one, &[])), "1 process");
        for ranks in [2, 3] {
            let piped = tmp.path().join(format!("{rule}-pipe-{ranks}"));
            let extra = ["--parallel", "pipeline", "--microbatches", "3"];
            ok(&mpirun(ranks, &args(&piped, &extra)), "pipeline");
            let d = max_difference(&one, &piped);
            assert!(
                d < 2e-5,
                "{rule} on {ranks} ranks: parameters differ by {d:e}"
            );
            let (a, b) = (last_epoch(&one), last_epoch(&piped));
            let loss = |r: &serde_json::Value| r["train_loss"].as_f64().unwrap();
            assert!((loss(&a) - loss(&b)).abs() < 1e-5, "{a}\n{b}");
            assert_eq!(a["train_accuracy"], b["train_accuracy"]);
        }
    }
}

#[test]
fn a_run_resumes_at_another_number_of_ranks() {
    let Some(data) = common::data_with(&["mnist"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (whole, split) = (tmp.path().join("whole"), tmp.path().join("split"));
    let args = |out: &Path, epochs: &str| {
        train_args(
            &data,
            out,
            &[
                "--model",
                "mlp:784-32-10",
                "--train-limit",
                "512",
                "--test-limit",
                "200",
                "--batch-size",
                "64",
                "--rule",
                "dfa",
                "--optimizer",
                "adam",
                "--epochs",
                epochs,
            ],
        )
    };
    ok(&single(&args(&whole, "2")), "2 epochs, 1 process");
    // Epoch 1 on 2 ranks, epoch 2 resumed by 1 process from rank 0's checkpoint.
    ok(&mpirun(2, &args(&split, "1")), "epoch 1, 2 ranks");
    let ck = split.join("checkpoint.safetensors");
    let resume = [
        "train",
        "--resume",
        ck.to_str().unwrap(),
        "--epochs",
        "2",
        "--quiet",
        "--out",
    ];
    let resume: Vec<String> = resume
        .iter()
        .map(|s| s.to_string())
        .chain([split.to_str().unwrap().to_string()])
        .collect();
    ok(&single(&resume), "epoch 2 resumed, 1 process");
    let d = max_difference(&whole, &split);
    assert!(
        d < 2e-5,
        "resumed at another rank count: parameters differ by {d:e}"
    );
}

#[test]
fn bad_use_fails_on_every_rank_with_one_clear_error() {
    let Some(data) = common::data_with(&["mnist"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let args = |extra: &[&str]| {
        let base = [
            "--model",
            "mlp:784-16-10",
            "--train-limit",
            "256",
            "--epochs",
            "1",
        ];
        let all: Vec<&str> = base.iter().chain(extra).copied().collect();
        train_args(&data, &out, &all)
    };
    let run = |extra: &[&str]| {
        let o = mpirun(2, &args(extra));
        assert!(!o.status.success(), "{extra:?} should fail");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = run(&["--batch-size", "63"]);
    assert!(e.contains("63 rows do not split over 2 ranks"), "{e}");
    let e = run(&["--rule", "ff"]);
    assert!(e.contains("rule ff is not data-parallel"), "{e}");
    let e = run(&["--rule", "local", "--local-loss", "predsim"]);
    assert!(
        e.contains("rule local is not data-parallel at these settings"),
        "{e}"
    );
    let e = run(&["--optimizer", "lbfgs"]);
    assert!(e.contains("optimizer lbfgs is not data-parallel"), "{e}");
    let e = run(&["--optimizer", "onebit_adam", "--compression", "sign"]);
    assert!(
        e.contains("onebit_adam compresses what the ranks send itself"),
        "{e}"
    );
    let e = run(&["--parallel", "pipeline", "--rule", "fa"]);
    assert!(e.contains("the layer pipeline runs bp, dfa and bfa"), "{e}");
    let e = run(&["--parallel", "pipeline", "--optimizer", "kfac"]);
    assert!(e.contains("kfac is not one"), "{e}");
    let e = run(&["--optimizer", "kfac", "--optimizer-opt", "adaptive=true"]);
    assert!(e.contains("optimizer kfac is not data-parallel"), "{e}");
    // Ranks started with different settings.
    let o = launch(&[args(&["--seed", "0"]), args(&["--seed", "1"])]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("ranks disagree on the configuration"),
        "{e}"
    );
}

/// Starts a long 2-rank run, waits until it is training, sends `signal` to one rank and
/// returns how the job ended and its error output.
fn interrupt_a_rank(data: &Path, out: &Path, signal: &str) -> (std::process::ExitStatus, String) {
    use std::time::{Duration, Instant};
    let args = train_args(
        data,
        out,
        &[
            "--model",
            "mlp:784-256-10",
            "--batch-size",
            "64",
            "--epochs",
            "100",
            "--log-every",
            "1",
            "--comm-timeout",
            "3",
        ],
    );
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "--bind-to", "none", "-np", "2"])
        .arg(env!("CARGO_BIN_EXE_futureprop"))
        .args(&args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl", "self,vader,tcp")
        .env("OMPI_MCA_btl_tcp_if_include", "lo")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut job = cmd.spawn().unwrap();
    let metrics = out.join("metrics.jsonl");
    let start = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |m| m.lines().count()) < 5 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the run never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The ranks: the processes running in `out`, mpirun excepted (it started first).
    let pids = Command::new("pgrep")
        .args(["-f", out.to_str().unwrap()])
        .output()
        .unwrap();
    let mut pids: Vec<u32> = String::from_utf8_lossy(&pids.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|&p| p != job.id())
        .collect();
    pids.sort();
    let victim = pids.last().expect("a rank's process").to_string();
    ok(
        &Command::new("kill")
            .args([signal, &victim])
            .output()
            .unwrap(),
        "kill",
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = job.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = job.kill();
            let _ = Command::new("kill").args(["-KILL", &victim]).output();
            panic!("the job still runs 60 s after a rank got {signal}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = Command::new("kill").args(["-KILL", &victim]).output();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut job.stderr.take().unwrap(), &mut err).unwrap();
    (status, err)
}

#[test]
fn a_rank_that_hangs_or_dies_ends_the_job_with_an_error() {
    let Some(data) = common::data_with(&["mnist"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // A stopped rank: the other's wait runs past --comm-timeout.
    let (status, err) = interrupt_a_rank(&data, &tmp.path().join("hang"), "-STOP");
    assert!(!status.success());
    assert!(
        err.contains("no answer from the other ranks for 3 s")
            && err.contains("a rank has died or hangs"),
        "{err}"
    );
    // A killed rank: the launcher ends the job.
    let (status, _) = interrupt_a_rank(&data, &tmp.path().join("dead"), "-KILL");
    assert!(!status.success());
}

#[test]
fn a_suite_runs_under_mpirun_and_rank_0_writes_its_report() {
    let Some(data) = common::data_with(&["mnist"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let suite = tmp.path().join("suite.toml");
    std::fs::write(
        &suite,
        r#"name = "mpi"
datasets = ["mnist"]
models = ["mlp:784-32-10"]
rules = ["bp", "dfa", "ff"]
optimizers = ["adam"]
epochs = 1
[defaults]
train_limit = 512
test_limit = 200
batch_size = 64
"#,
    )
    .unwrap();
    let out = tmp.path().join("bench");
    let args: Vec<String> = [
        "bench",
        "--suite",
        suite.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--threads",
        "1",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let o = mpirun(2, &args);
    ok(&o, "bench under mpirun");
    // One report, printed once.
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(stdout.matches("results in").count(), 1, "{stdout}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert!(out.join("report.md").is_file());
    // bp and dfa ran on both ranks; ff, whose update couples a batch, says why it did not.
    for run in results["runs"].as_array().unwrap() {
        let rule = run["arm"]["rule"].as_str().unwrap();
        if rule == "ff" {
            assert_eq!(run["status"], "failed");
            let why = run["error"].as_str().unwrap();
            assert!(why.contains("rule ff is not data-parallel"), "{why}");
        } else {
            assert_eq!(run["status"], "ok", "{rule}");
            let dir = Path::new(run["summary"]["config"]["out"].as_str().unwrap());
            assert_eq!(last_epoch(dir)["ranks"], 2, "{rule}");
        }
    }
}

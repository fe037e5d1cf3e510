//! The futureprop command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::Serialize;

use futureprop::data::{self, download};
use futureprop::train::{self, TrainConfig};
use futureprop::{Error, Result};

/// `println!` that returns the write error instead of panicking (a closed pipe, a full
/// disk): `out!(...)` is `emit(format_args!(...))?`.
macro_rules! out {
    ($($t:tt)*) => { emit(format_args!($($t)*))? };
}

/// The path named by errors writing standard output.
const STDOUT: &str = "standard output";

fn emit(args: std::fmt::Arguments) -> Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    writeln!(o, "{args}")
        .and_then(|_| o.flush())
        .map_err(|e| Error::io(STDOUT, e))
}

#[global_allocator]
static ALLOC: futureprop::mem::CountingAlloc = futureprop::mem::CountingAlloc;

#[derive(Parser)]
#[command(
    name = "futureprop",
    version,
    args_override_self = true,
    about = "Train neural networks with any credit-assignment rule, and measure them side by side"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (flags override --config; see `futureprop train --help`).
    Train(Box<TrainArgs>),
    /// Run a benchmark suite: every arm on the same minibatch stream, with accuracy,
    /// speed, memory and energy side by side.
    Bench {
        /// Built-in suite (quick, standard, memory) or a suite TOML file.
        #[arg(long, default_value = "quick")]
        suite: String,
        /// Data directory (default: FUTUREPROP_DATA, else the per-user cache).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Base URL to download datasets from.
        #[arg(long)]
        mirror: Option<String>,
        /// Output folder [default: runs/bench-<suite>].
        #[arg(long)]
        out: Option<PathBuf>,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
        /// Continue an interrupted run in DIR (finished arms are skipped).
        #[arg(long, value_name = "DIR")]
        resume: Option<PathBuf>,
        /// Seeds per arm (overrides the suite).
        #[arg(long)]
        seeds: Option<u64>,
        /// Worker threads per arm [default: all cores].
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Reproduce published results from the registry: paper vs ours, with a verdict.
    ///
    /// Each row trains its recipe once per seed and compares the mean test error with the
    /// paper's: PASS when within the row's tolerance (two-sided). `--check` exits non-zero
    /// when a row fails. Rows come from --only, --all or --budget-hours (or, with --resume
    /// alone, the interrupted run's own rows).
    Reproduce {
        /// List the registry.
        #[arg(long)]
        list: bool,
        /// Run these rows (repeatable, or comma-separated).
        #[arg(long, value_name = "NAME", value_delimiter = ',')]
        only: Vec<String>,
        /// Run every row.
        #[arg(long)]
        all: bool,
        /// Run the rows, in registry order, whose estimated time fits in H hours.
        #[arg(long, value_name = "H")]
        budget_hours: Option<f64>,
        /// Exit with an error when any row fails.
        #[arg(long)]
        check: bool,
        /// Continue an interrupted run in DIR: finished seeds are kept, a seed cut off
        /// mid-run continues from its checkpoint.
        #[arg(long, value_name = "DIR")]
        resume: Option<PathBuf>,
        /// Registry file instead of the built-in one.
        #[arg(long, value_name = "FILE")]
        registry: Option<PathBuf>,
        /// Data directory (default: FUTUREPROP_DATA, else the per-user cache).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Output folder [default: runs/reproduce].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Shorter budget for a quick look (no verdict is given).
        #[arg(long)]
        epochs: Option<usize>,
        /// Train on the first N samples only (a quick look; no verdict is given).
        #[arg(long)]
        train_limit: Option<usize>,
        /// Worker threads [default: all cores].
        #[arg(long)]
        threads: Option<usize>,
        /// No progress display.
        #[arg(long)]
        quiet: bool,
    },
    /// List the credit-assignment rules; `rules show NAME` lists one rule's settings.
    Rules {
        #[command(subcommand)]
        command: Option<ShowCommand>,
    },
    /// List the optimizers; `optimizers show NAME` lists one optimizer's settings.
    Optimizers {
        #[command(subcommand)]
        command: Option<ShowCommand>,
    },
    /// Per-layer diagnostics of a saved model on one batch of its dataset: angle between
    /// the rule's update and the backprop gradient, feedback angles and norms (JSON).
    Diagnose {
        /// A checkpoint written by `train`.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Data directory [default: the checkpoint's, else FUTUREPROP_DATA, else the cache].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Samples in the batch [default: the run's batch size].
        #[arg(long)]
        batch_size: Option<usize>,
        /// Also report sharpness (top Hessian eigenvalue), the Hessian trace and the
        /// gradient noise scale.
        #[arg(long)]
        curvature: bool,
    },
    /// Accuracy and loss of a saved model on its test set, with --quantized on integer kernels (JSON)
    Eval {
        /// A checkpoint written by `train`.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Data directory [default: the checkpoint's, else FUTUREPROP_DATA, else the cache].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Run the quantised layers (a run trained with --quantize, at most 8 bits) on
        /// int8 × int8 → int32 kernels instead of their float forward pass.
        #[arg(long)]
        quantized: bool,
    },
    /// Fetch or verify datasets.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
}

#[derive(Subcommand)]
enum ShowCommand {
    /// Each setting with its flag, type, default and meaning.
    Show {
        /// The technique's name.
        name: String,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Download a dataset, verify its SHA-256 and cache it.
    Fetch {
        /// mnist or fashion-mnist.
        name: String,
        /// Data directory (default: FUTUREPROP_DATA, else the per-user cache).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Base URL to download from instead of the built-in mirrors.
        #[arg(long)]
        mirror: Option<String>,
    },
    /// Check the SHA-256 of every dataset file in a directory.
    Verify {
        /// Dataset names (default: all known).
        names: Vec<String>,
        /// Data directory (default: FUTUREPROP_DATA, else the per-user cache).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// Flags of `train`. Each one, when given, overrides the config file.
#[derive(Args, Serialize, Default)]
#[command(allow_negative_numbers = true)]
struct TrainArgs {
    /// TOML file with any of the settings below (keys as the flags, with - or _).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Continue from a checkpoint file or a run directory (its config is the base; flags and --config apply on top).
    #[arg(long)]
    #[serde(skip)]
    resume: Option<PathBuf>,
    /// Dataset: mnist, fashion-mnist, cifar-10 (from --data-dir), adding:STEPS (synthetic regression; use --loss mse)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    dataset: Option<String>,
    /// Data directory [default: FUTUREPROP_DATA, else ~/.cache/futureprop].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// Do not download a missing dataset.
    #[arg(long)]
    #[serde(skip)]
    no_download: bool,
    /// Base URL to download datasets from.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    mirror: Option<String>,
    /// Feature scaling: standard, unit, none
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    normalize: Option<String>,
    /// Hold out the last N training samples for validation
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    validation: Option<usize>,
    /// Train on the first N training samples only.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    train_limit: Option<usize>,
    /// Test on the first N test samples only.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    test_limit: Option<usize>,
    /// Model: mlp:784-1000-1000-10, linear:IN-OUT, resmlp:IN-WxD-OUT, lstm:TxD-H-OUT, rnn:TxD-H-OUT, lenet5, biotorch-lenet, resnet20[:CxHxW], vgg8b[:CxHxW], or a .toml description
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    /// Hidden activation: relu, tanh, sigmoid, leaky-relu[:a], prelu, elu[:a], selu, silu, gelu, hard-sigmoid, softplus, identity
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    activation: Option<String>,
    /// Initialiser: auto, xavier-uniform, xavier-normal, he-uniform, he-normal, lecun-normal, torch, zeros, constant:V, normal:SD (weights and biases N(0, SD²)), sparse[:K]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    init: Option<String>,
    /// Linear layers without bias.
    #[arg(long)]
    #[serde(skip)]
    no_bias: bool,
    /// Loss: cross-entropy, mse, sse (½‖z − t‖² per sample, mean over samples), bce
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    loss: Option<String>,
    /// Task: classify, autoencode (targets are the inputs)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    task: Option<String>,
    /// Unsupervised pretraining: none, rbm (greedy CD-k RBMs, sigmoid MLPs)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pretrain: Option<String>,
    /// Log the minibatch loss every N optimizer steps to metrics.jsonl (0: off)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_every: Option<u64>,
    /// Credit-assignment rule (see `futureprop rules`)
    #[arg(long)]
    #[serde(skip)]
    rule: Option<String>,
    /// The rule's own settings KEY=VALUE[,KEY=VALUE...], repeatable: `--rule pc
    /// --rule-opt steps=8,gamma=0.1` (`futureprop rules show NAME` lists them; a config
    /// file's [rule] table takes the same keys). Unknown keys are an error that lists the
    /// valid ones. The flat flags of earlier versions (`--pc-steps 8`) still work.
    #[arg(long = "rule-opt", value_name = "KEY=VALUE,...")]
    #[serde(skip)]
    rule_opt: Vec<String>,
    /// Every N steps, compare each layer's update with the backprop gradient (0: never)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    diag_every: Option<u64>,
    /// Optimizer (see `futureprop optimizers`)
    #[arg(long)]
    #[serde(skip)]
    optimizer: Option<String>,
    /// The optimizer's own settings KEY=VALUE[,KEY=VALUE...], repeatable: `--optimizer
    /// kfac --optimizer-opt damping=0.01,fisher=empirical`; a wrapper's inner optimizer
    /// as `inner=adam,inner.beta1=0.95` (`futureprop optimizers show NAME` lists them; a
    /// config file's [optimizer] table takes the same keys). The flat flags of earlier
    /// versions (`--kfac-damping 0.01`, `--beta1 0.95`) still work.
    #[arg(long = "optimizer-opt", value_name = "KEY=VALUE,...")]
    #[serde(skip)]
    optimizer_opt: Vec<String>,
    /// Parameter-group settings PATTERN:key=value,... (keys lr_scale, weight_decay; `*`
    /// globs over parameter names, e.g. '*.bias:weight_decay=0'); repeatable; replaces a
    /// config file's [[param_groups]].
    #[arg(long = "param-group")]
    #[serde(rename = "param_groups", skip_serializing_if = "Vec::is_empty")]
    param_group: Vec<futureprop::optim::ParamGroup>,
    /// Gradient checkpointing: off, auto (√L segments), or K segments (bp, FA and DFA families, dsn)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint_segments: Option<String>,
    /// Mixed precision: f32, bf16 (activations and products in bf16, f32 master weights) or f16 (with dynamic loss scaling)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    precision: Option<String>,
    /// Quantisation-aware training: none or wXaY (w8a8, w4a4, w2a2): LSQ fake quantisation of every Linear layer's weight and input
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    quantize: Option<String>,
    /// One learned weight step per output unit instead of one per layer (--quantize)
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    quantize_per_channel: Option<bool>,
    /// Training's forward pass of quantised Linear layers (≤ 8 bits) on the int8 kernel instead of f32 products of fake-quantised values
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    quantize_integer_forward: Option<bool>,
    /// What data-parallel ranks send: none (the f32 update) or sign (error-feedback 1-bit signs with a scale per tensor)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    compression: Option<String>,
    /// How mpirun's ranks share the work: data (a share of each batch) or pipeline (a run of layers each; bp, dfa, bfa on mlp models)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel: Option<String>,
    /// Data-parallel batch normalisation over the whole global batch (SyncBatchNorm) instead of each rank's rows
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    sync_batch_norm: Option<bool>,
    /// Microbatches of a pipelined batch (GPipe)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    microbatches: Option<usize>,
    /// Seconds a rank waits for the others in one communication before stopping with an error (0: for ever)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    comm_timeout: Option<u64>,
    /// Average the update over N minibatches per optimizer step
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    accumulate: Option<usize>,
    /// Evaluate with averaged weights: none, ema:DECAY, swa:START_EPOCH
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    average: Option<String>,
    /// Minibatch size
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    batch_size: Option<usize>,
    /// Epochs
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    epochs: Option<usize>,
    /// Stop after N optimizer steps.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_steps: Option<u64>,
    /// Stop after this many seconds of wall-clock time (checked before each step).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_seconds: Option<f64>,
    /// Seed
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    /// Worker threads [default: all cores].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    threads: Option<usize>,
    /// Output folder [default: runs/<dataset>-<rule>-<optimizer>-s<seed>].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    out: Option<PathBuf>,
    /// Checkpoint every N epochs (0: only at the end)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint_every: Option<usize>,
    /// No progress bar or per-epoch lines.
    #[arg(long)]
    #[serde(skip)]
    quiet: bool,
    /// The rule's, the optimizer's and the pretraining's own settings: one flag per
    /// field of their settings structs, generated from them.
    #[command(flatten)]
    #[serde(flatten)]
    techniques: TechniqueArgs,
}

/// `--rule NAME` / `--optimizer NAME` and their `-opt KEY=VALUE,...` as the layer's
/// `rule` / `optimizer` table; a dotted key (`inner.beta1`) sets a nested table's.
fn choice_layer(name: Option<&str>, opts: &[String]) -> Result<Option<serde_json::Value>> {
    use serde_json::Value;
    if name.is_none() && opts.is_empty() {
        return Ok(None);
    }
    let mut t = futureprop::settings::Table::new();
    if let Some(n) = name {
        t.insert("name".into(), n.into());
    }
    for o in opts
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|o| !o.trim().is_empty())
    {
        let (k, v) = futureprop::settings::parse_assignment(o)?;
        match k.split_once('.') {
            None => {
                t.insert(k, v);
            }
            Some((outer, inner)) => {
                let slot = t
                    .entry(outer.to_string())
                    .or_insert_with(|| Value::Object(Default::default()));
                if let Value::String(n) = slot {
                    // `inner=adam,inner.beta1=0.95`: the name becomes the table's.
                    *slot = serde_json::json!({ "name": n.clone() });
                }
                match slot {
                    Value::Object(o) => {
                        o.insert(inner.to_string(), v);
                    }
                    other => {
                        return Err(Error::config(
                            "setting",
                            format!("'{o}': {outer} is {other}, not a table"),
                        ));
                    }
                }
            }
        }
    }
    Ok(Some(Value::Object(t)))
}

/// The flat flags of the rules' and optimizers' own settings (`--pc-steps`,
/// `--kfac-damping`), one per flat key, as earlier versions had them: accepted, not
/// shown in `--help` (`--rule-opt` and `--optimizer-opt` are).
fn legacy_fields() -> Vec<futureprop::settings::Field> {
    let mut out: Vec<futureprop::settings::Field> = Vec::new();
    let all = futureprop::rule::all_settings()
        .into_iter()
        .chain(futureprop::optim::all_settings());
    for (_, f) in all {
        if !out.iter().any(|o| o.legacy == f.legacy) {
            out.push(f);
        }
    }
    out
}

/// The settings with a generated flag each: the flat keys of the techniques' own
/// settings (hidden), the optimizers' shared settings except the name (`--optimizer`)
/// and parameter groups (`--param-group`), and the pretraining's.
fn technique_fields() -> Vec<futureprop::settings::Field> {
    use futureprop::settings::Described;
    let mut f = legacy_fields();
    f.extend(
        futureprop::optim::OptimizerConfig::fields()
            .into_iter()
            .filter(|f| f.key != "optimizer" && f.key != "param_groups"),
    );
    f.extend(futureprop::train::pretrain::RbmConfig::fields());
    f.extend(futureprop::train::sparse::SparseConfig::fields());
    f
}

/// The generated flags' values, as the TOML table of the settings they set.
#[derive(Default, Serialize)]
#[serde(transparent)]
struct TechniqueArgs(toml::Table);

/// A doc comment as a help line: rustdoc links and code marks dropped.
fn help_text(f: &futureprop::settings::Field) -> String {
    let doc = f.doc.replace("[`", "").replace("`]", "").replace('`', "");
    if f.key == "lr" {
        // A fresh run without one takes its optimizer's (`futureprop optimizers`).
        return format!("{doc} [default: the optimizer's]");
    }
    let default = match &f.default {
        serde_json::Value::Null => "none".to_string(),
        serde_json::Value::String(s) => s.clone(),
        // A tagged table at its defaults: its name.
        serde_json::Value::Object(o) if o.len() == 1 && o.contains_key("name") => {
            o["name"].as_str().unwrap_or_default().to_string()
        }
        v => v.to_string(),
    };
    format!("{doc} [default: {default}]")
}

impl clap::FromArgMatches for TechniqueArgs {
    fn from_arg_matches(m: &clap::ArgMatches) -> std::result::Result<Self, clap::Error> {
        let mut s = TechniqueArgs::default();
        s.update_from_arg_matches(m)?;
        Ok(s)
    }

    fn update_from_arg_matches(
        &mut self,
        m: &clap::ArgMatches,
    ) -> std::result::Result<(), clap::Error> {
        for f in technique_fields() {
            let v = match f.ty {
                "usize" | "u64" | "Option<u64>" => m
                    .get_one::<u64>(&f.legacy)
                    .map(|v| toml::Value::Integer(*v as i64)),
                "f64" | "Option<f64>" => {
                    m.get_one::<f64>(&f.legacy).map(|v| toml::Value::Float(*v))
                }
                "bool" => m
                    .get_one::<bool>(&f.legacy)
                    .map(|v| toml::Value::Boolean(*v)),
                _ => m
                    .get_one::<String>(&f.legacy)
                    .map(|v| toml::Value::String(v.clone())),
            };
            if let Some(v) = v {
                self.0.insert(f.legacy.clone(), v);
            }
        }
        Ok(())
    }
}

impl clap::Args for TechniqueArgs {
    fn augment_args(mut cmd: clap::Command) -> clap::Command {
        use clap::{Arg, ArgAction, value_parser};
        let hidden: Vec<String> = legacy_fields().into_iter().map(|f| f.legacy).collect();
        for f in technique_fields() {
            let arg = Arg::new(f.legacy.clone())
                .long(f.legacy.replace('_', "-"))
                .value_name(f.legacy.to_uppercase())
                .help(help_text(&f))
                .hide(hidden.contains(&f.legacy))
                .help_heading("Optimizer, pretraining and sparsity settings");
            let arg = match f.ty {
                "usize" | "u64" | "Option<u64>" => arg.value_parser(value_parser!(u64)),
                "f64" | "Option<f64>" => arg
                    .value_parser(value_parser!(f64))
                    .allow_negative_numbers(true),
                // `--amsgrad` alone, or `--ff-skip-first false`.
                "bool" => arg
                    .value_parser(value_parser!(bool))
                    .num_args(0..=1)
                    .default_missing_value("true")
                    .action(ArgAction::Set),
                _ => arg.value_parser(value_parser!(String)),
            };
            cmd = cmd.arg(arg);
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

fn train_cmd(args: &TrainArgs) -> Result<()> {
    let (base, resume) = match &args.resume {
        Some(p) => {
            let ck = train::checkpoint::load(p)?;
            let base = TrainConfig::from_stored(&ck.config)
                .map_err(|e| Error::format(p, format!("config in checkpoint: {e}")))?;
            (base, Some(p.clone()))
        }
        None => (TrainConfig::default(), None),
    };
    let mut layers = Vec::new();
    if let Some(c) = &args.config {
        layers.push(TrainConfig::read_toml(c)?);
    }
    let mut flags = futureprop::settings::serialize_layer("the command line", args)?;
    if args.no_download {
        flags["download"] = false.into();
    }
    if args.no_bias {
        flags["bias"] = false.into();
    }
    // Data-parallel ranks other than 0 say nothing: rank 0 reports for the run.
    let reporting = train::comm::world().rank() == 0;
    if args.quiet || !reporting {
        flags["quiet"] = true.into();
    }
    if let Some(rule) = choice_layer(args.rule.as_deref(), &args.rule_opt)? {
        flags["rule"] = rule;
    }
    if let Some(o) = choice_layer(args.optimizer.as_deref(), &args.optimizer_opt)? {
        flags["optimizer"] = o;
    }
    layers.push(flags);
    let cfg = if resume.is_some() {
        base.merged(&layers)?
    } else {
        TrainConfig::fresh(&layers)?
    };

    let summary = train::train(&cfg, resume.as_deref())?;
    if !reporting {
        return Ok(());
    }
    let out = cfg.out_dir();
    let f = |k: &str| summary[k].as_f64().unwrap_or(f64::NAN);
    // Reconstruction and regression (the adding problem) report the loss.
    if cfg.task == "autoencode" || futureprop::data::synthetic::adding_steps(&cfg.dataset).is_some()
    {
        out!(
            "test loss {:.4} after {} epochs, {:.1}s; results in {}",
            f("test_loss"),
            summary["epochs"],
            f("total_seconds"),
            out.display()
        );
        return Ok(());
    }
    out!(
        "test accuracy {:.4} (best {:.4}) after {} epochs, {:.1}s; results in {}",
        f("test_accuracy"),
        f("best_test_accuracy"),
        summary["epochs"],
        f("total_seconds"),
        out.display()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
struct ReproduceArgs<'a> {
    list: bool,
    only: &'a [String],
    all: bool,
    budget_hours: Option<f64>,
    check: bool,
    resume: &'a Option<PathBuf>,
    registry: &'a Option<PathBuf>,
    data_dir: &'a Option<PathBuf>,
    out: &'a Option<PathBuf>,
    epochs: Option<usize>,
    train_limit: Option<usize>,
    threads: Option<usize>,
    quiet: bool,
}

fn reproduce_cmd(a: &ReproduceArgs<'_>) -> Result<()> {
    use futureprop::bench::reproduce;
    let reg = match a.registry {
        Some(p) => reproduce::load(p)?,
        None => reproduce::registry()?,
    };
    let chosen = !a.only.is_empty() || a.all || a.budget_hours.is_some();
    if a.list || (!chosen && a.resume.is_none()) {
        out!(
            "{:<24} {:<18} {:>8} {:>6} {:>6} {:>8}  source",
            "row",
            "checks",
            "paper %",
            "tol",
            "seeds",
            "est. min"
        );
        for e in &reg {
            out!(
                "{:<24} {:<18} {:>8.2} {:>6.2} {:>6} {:>8.0}  {}{}",
                e.name,
                e.checks.join(","),
                e.paper_test_error,
                e.tolerance(),
                e.seeds.len(),
                e.minutes(),
                e.source,
                if e.anchor == reproduce::Anchor::Peer {
                    " (peer)"
                } else {
                    ""
                }
            );
        }
        let total: f64 = reg.iter().map(reproduce::Entry::minutes).sum();
        out!("{} rows, estimated {:.1} h in all", reg.len(), total / 60.0);
        let missing = reproduce::unchecked_rules(&reg);
        if !missing.is_empty() {
            out!("rules without a row yet: {}", missing.join(", "));
        }
        if !a.list {
            out!(
                "\nrun with --only NAME, --all or --budget-hours H (and --check for a verdict that fails the command)"
            );
        }
        return Ok(());
    }
    if [!a.only.is_empty(), a.all, a.budget_hours.is_some()]
        .iter()
        .filter(|&&x| x)
        .count()
        > 1
    {
        return Err(Error::config(
            "reproduce",
            "choose rows with one of --only, --all, --budget-hours",
        ));
    }
    let out = match (a.resume, a.out) {
        (Some(r), Some(o)) if r != o => {
            return Err(Error::config(
                "reproduce",
                "--resume DIR continues in DIR; leave out --out or give the same folder",
            ));
        }
        (Some(r), _) => r.clone(),
        (None, Some(o)) => o.clone(),
        (None, None) => PathBuf::from("runs/reproduce"),
    };
    let mut overrides = serde_json::json!({
        "data_dir": a.data_dir, "epochs": a.epochs, "train_limit": a.train_limit, "threads": a.threads,
    });
    let entries = if let Some(h) = a.budget_hours {
        reproduce::within_budget(&reg, h)?
    } else if a.all {
        reg.clone()
    } else if !a.only.is_empty() {
        reproduce::select(&reg, a.only)?
    } else {
        // --resume alone: the interrupted run's rows and settings.
        let (names, saved) = reproduce::read_plan(&out)?;
        if let Some(o) = saved.as_object() {
            for (k, v) in o {
                if overrides[k].is_null() {
                    overrides[k] = v.clone();
                }
            }
        }
        reproduce::select(&reg, &names)?
    };
    let opts = reproduce::CheckOptions {
        out: out.clone(),
        resume: a.resume.is_some(),
        overrides: vec![overrides],
        quiet: a.quiet,
    };
    let report = reproduce::check(&entries, &opts)?;
    out!("{}", reproduce::markdown(&report));
    out!("results in {}", out.display());
    let failed: Vec<&str> = report["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["verdict"] == "FAIL")
        .filter_map(|r| r["row"].as_str())
        .collect();
    if a.check && !failed.is_empty() {
        return Err(Error::CheckFailed {
            msg: format!(
                "{} of {} rows outside their tolerance: {}",
                failed.len(),
                entries.len(),
                failed.join(", ")
            ),
        });
    }
    if a.check && report["reduced_budget"] == true {
        return Err(Error::CheckFailed {
            msg: "the budget was cut (--epochs or --train-limit), so no row has a verdict".into(),
        });
    }
    Ok(())
}

fn bench_cmd(opts: &futureprop::bench::BenchOptions) -> Result<()> {
    let results = futureprop::bench::run(opts)?;
    if train::comm::world().rank() != 0 {
        return Ok(());
    }
    let out = match (&opts.resume, &opts.out) {
        (Some(d), _) | (None, Some(d)) => d.clone(),
        _ => PathBuf::from("runs").join(format!(
            "bench-{}",
            results["suite"]["name"].as_str().unwrap_or("suite")
        )),
    };
    let report = std::fs::read_to_string(out.join("report.md"))
        .map_err(|e| Error::io(out.join("report.md"), e))?;
    out!("{report}");
    out!("results in {}", out.display());
    Ok(())
}

fn eval_cmd(
    checkpoint: &std::path::Path,
    data_dir: Option<&std::path::Path>,
    quantized: bool,
) -> Result<()> {
    let v = train::evaluate_saved(checkpoint, data_dir, quantized)?;
    out!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    Ok(())
}

fn diagnose_cmd(
    checkpoint: &std::path::Path,
    data_dir: Option<&std::path::Path>,
    batch_size: Option<usize>,
    curvature: bool,
) -> Result<()> {
    let report = train::diagnose_saved(checkpoint, data_dir, batch_size, curvature)?;
    out!(
        "{}",
        serde_json::to_string_pretty(&report)
            .map_err(|e| Error::config("report", e.to_string()))?
    );
    Ok(())
}

fn data_cmd(cmd: &DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Fetch {
            name,
            data_dir,
            mirror,
        } => {
            let root = data::resolve_data_dir(data_dir.as_deref());
            if name == "cifar-10" {
                return Err(futureprop::Error::config(
                    "data fetch",
                    format!(
                        "cifar-10 is not downloaded by futureprop yet: download https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz and extract it into {}",
                        root.join("cifar-10").display()
                    ),
                ));
            }
            let remote = download::remote(name)?;
            let got = download::fetch(&root, remote, mirror.as_deref())?;
            if got.is_empty() {
                out!(
                    "{name}: already present and verified in {}",
                    root.join(name).display()
                );
            } else {
                for p in got {
                    out!("fetched and verified {}", p.display());
                }
            }
            Ok(())
        }
        DataCommand::Verify { names, data_dir } => {
            let root = data::resolve_data_dir(data_dir.as_deref());
            let names: Vec<&str> = if names.is_empty() {
                download::REMOTES.iter().map(|r| r.name).collect()
            } else {
                names.iter().map(String::as_str).collect()
            };
            let mut bad = 0;
            for n in names {
                for (p, st) in download::verify(&root, download::remote(n)?)? {
                    match st {
                        download::FileStatus::Ok => out!("ok        {}", p.display()),
                        download::FileStatus::Missing => {
                            bad += 1;
                            out!("missing   {}", p.display())
                        }
                        download::FileStatus::Mismatch { actual } => {
                            bad += 1;
                            out!("MISMATCH  {} (sha256 {actual})", p.display())
                        }
                    }
                }
            }
            if bad > 0 {
                return Err(Error::MissingData {
                    msg: format!(
                        "{bad} file(s) missing or corrupt in {}; run `futureprop data fetch NAME`",
                        root.display()
                    ),
                });
            }
            Ok(())
        }
    }
}

/// The optimizers with the learning rate each uses when none is given.
fn optimizers_cmd() -> Result<()> {
    for s in futureprop::optim::REGISTRY {
        let lr = match s.lr {
            Some(lr) => format!("{lr:e}"),
            None => "inner's".to_string(),
        };
        out!("{:<10} lr {lr:<8} {} ({})", s.name, s.summary, s.paper);
    }
    Ok(())
}

/// A technique's settings, one line each: key, flat flag, type, default and doc.
fn settings_lines(fields: &[futureprop::settings::Field]) -> Result<()> {
    for f in fields {
        out!(
            "  {:<17} {:<22} {:<13} {}",
            f.key,
            f.flag(),
            f.ty,
            help_text(f)
        );
    }
    Ok(())
}

/// One optimizer: its line, default rate, own settings and the shared ones it reads.
fn optimizer_show_cmd(name: &str) -> Result<()> {
    let s = futureprop::optim::spec(name)?;
    out!("{}: {} ({})", s.name, s.summary, s.paper);
    match s.lr {
        Some(lr) => out!("  default learning rate {lr:e}"),
        None => out!("  default learning rate: the inner optimizer's"),
    }
    let fields = (s.settings)();
    if fields.is_empty() {
        out!("  no settings of its own");
    } else {
        out!("  settings (--optimizer-opt KEY=VALUE, or [optimizer] in a config file):");
    }
    settings_lines(&fields)?;
    if s.wraps {
        out!("  shared settings: those of the inner optimizer");
    } else {
        out!(
            "  shared settings it reads: --lr{}",
            s.reads
                .iter()
                .map(|r| format!(", --{}", r.replace('_', "-")))
                .collect::<String>()
        );
    }
    Ok(())
}

/// The rules, a line each.
fn rules_cmd() -> Result<()> {
    for s in futureprop::rule::REGISTRY {
        out!("{:<10} {} ({})", s.name, s.summary, s.paper);
    }
    Ok(())
}

/// One rule: its line, what it recommends, then each of its settings with key, flat
/// flag, type, default and doc.
fn rule_show_cmd(name: &str) -> Result<()> {
    let s = futureprop::rule::spec(name)?;
    out!("{}: {} ({})", s.name, s.summary, s.paper);
    if let Some(n) = s.normalize {
        out!("  recommends --normalize {n} (a run that sets none takes it)");
    }
    if let Some(a) = s.activation {
        out!("  recommends --activation {a} (a run that sets none takes it)");
    }
    if s.single_layer {
        out!("  trains a single Linear layer: --model linear:IN-OUT");
    }
    let fields = (s.settings)();
    if fields.is_empty() {
        out!("  no settings of its own");
    } else {
        out!("  settings (--rule-opt KEY=VALUE, or [rule] in a config file):");
    }
    settings_lines(&fields)
}

/// `train --help` with each flag's default read from [`TrainConfig::default`], where the
/// settings' defaults are declared (flags with a described default keep theirs: the
/// generated technique flags, and the ones whose default is a rule rather than a value).
fn with_defaults(cmd: clap::Command) -> clap::Command {
    let Ok(defaults) = serde_json::to_value(TrainConfig::default()) else {
        return cmd;
    };
    cmd.mut_subcommand("train", |mut train| {
        let ids: Vec<String> = train
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        for id in ids {
            let v = match &defaults[id.as_str()] {
                serde_json::Value::Object(o) => o.get("name").cloned().unwrap_or_default(),
                v => v.clone(),
            };
            let shown = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                _ => continue,
            };
            train = train.mut_arg(&id, |a| {
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                if help.contains("[default:") {
                    a
                } else {
                    a.help(format!("{help} [default: {shown}]"))
                }
            });
        }
        train
    })
}

fn main() -> ExitCode {
    futureprop::mem::keep_freed_memory();
    let cli = match Cli::from_arg_matches(&with_defaults(Cli::command()).get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Under `mpirun`: MPI starts here and finalises when `mpi` drops at the end.
    let mpi = match train::comm::init() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = match &cli.command {
        Command::Train(a) => train_cmd(a),
        Command::Bench {
            suite,
            data_dir,
            mirror,
            out,
            quiet,
            resume,
            seeds,
            threads,
        } => bench_cmd(&futureprop::bench::BenchOptions {
            suite: suite.clone(),
            data_dir: data_dir.clone(),
            mirror: mirror.clone(),
            out: out.clone(),
            quiet: *quiet,
            resume: resume.clone(),
            seeds: *seeds,
            threads: *threads,
        }),
        Command::Reproduce {
            list,
            only,
            all,
            budget_hours,
            check,
            resume,
            registry,
            data_dir,
            out,
            epochs,
            train_limit,
            threads,
            quiet,
        } => reproduce_cmd(&ReproduceArgs {
            list: *list,
            only,
            all: *all,
            budget_hours: *budget_hours,
            check: *check,
            resume,
            registry,
            data_dir,
            out,
            epochs: *epochs,
            train_limit: *train_limit,
            threads: *threads,
            quiet: *quiet,
        }),
        Command::Rules { command: None } => rules_cmd(),
        Command::Optimizers { command: None } => optimizers_cmd(),
        Command::Rules {
            command: Some(ShowCommand::Show { name }),
        } => rule_show_cmd(name),
        Command::Optimizers {
            command: Some(ShowCommand::Show { name }),
        } => optimizer_show_cmd(name),
        Command::Data { command } => data_cmd(command),
        Command::Diagnose {
            checkpoint,
            data_dir,
            batch_size,
            curvature,
        } => diagnose_cmd(checkpoint, data_dir.as_deref(), *batch_size, *curvature),
        Command::Eval {
            checkpoint,
            data_dir,
            quantized,
        } => eval_cmd(checkpoint, data_dir.as_deref(), *quantized),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        // The reader closed the pipe (`futureprop rules | head -1`): stop quietly with the
        // status a shell reports for a process ended by SIGPIPE.
        Err(Error::Io { path, source })
            if path.as_os_str() == STDOUT && source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            ExitCode::from(141)
        }
        // Resuming a finished run: say so, and succeed (a script may resume repeatedly).
        Err(e @ Error::NothingToDo { .. }) => {
            eprintln!("{e}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            // One rank's error stops every rank (they would wait for it forever).
            if let Some(g) = mpi {
                g.abort(1);
            }
            ExitCode::FAILURE
        }
    }
}

//! The run configuration: one serialisable struct, every field with a default.
//! Layers of overrides (a TOML file, then command-line flags) are merged onto it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::optim::OptimizerConfig;
use crate::settings::{Choice, Field};

/// Everything that defines a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Unknown keys are rejected by `merged` (serde's flatten cannot deny them).
#[serde(default)]
pub struct TrainConfig {
    /// Dataset name (`mnist`, `fashion-mnist`); default `mnist`.
    pub dataset: String,
    /// Data directory; default: `FUTUREPROP_DATA`, else the per-user cache.
    pub data_dir: Option<PathBuf>,
    /// Download the dataset when it is missing; default true.
    pub download: bool,
    /// Base URL replacing the built-in download mirrors; default none.
    pub mirror: Option<String>,
    /// Feature scaling: `standard`, `unit`, `none`; default `standard`.
    pub normalize: String,
    /// Training samples held out for validation (the last ones); default 0.
    pub validation: usize,
    /// Use only the first N training samples; default all.
    pub train_limit: Option<usize>,
    /// Use only the first N test samples; default all.
    pub test_limit: Option<usize>,
    /// Model spec; default `mlp:784-1000-1000-10`.
    pub model: String,
    /// Hidden activation; default `relu`.
    pub activation: String,
    /// Weight initialiser; default `torch` (PyTorch's `nn.Linear` default, so runs compare
    /// with PyTorch loops; `auto` picks He/LeCun/Xavier by activation).
    pub init: String,
    /// Linear layers have biases; default true.
    pub bias: bool,
    /// Loss: `cross-entropy`, `mse`, `bce`; default `cross-entropy`.
    pub loss: String,
    /// Unsupervised pretraining before supervised training: `none` or `rbm` (greedy
    /// layer-wise RBMs with CD-k, a deep belief net; sigmoid MLPs); default `none`.
    pub pretrain: String,
    /// RBM pretraining settings (`rbm_epochs`, `rbm_lr`, `rbm_k`, `rbm_momentum`).
    #[serde(flatten)]
    pub rbm: super::pretrain::RbmConfig,
    /// `classify` (targets are the labels) or `autoencode` (targets are the inputs; needs
    /// a model whose output width is the input width, `--loss bce` with
    /// `--normalize unit`, or `mse`); default `classify`.
    pub task: String,
    /// Credit-assignment rule and its own settings, a tagged table (`[rule]` with
    /// `name = "pc"`, `steps = 8`; `rule = "pc"` alone takes the defaults); default
    /// `bp`. Resolved configurations hold every setting of the rule
    /// (`futureprop rules show NAME`). Flat keys of earlier versions (`pc_steps = 8`)
    /// are read into the table.
    pub rule: Choice,
    /// Compute per-layer diagnostics every N steps (0: never); default 0.
    pub diag_every: u64,
    /// The optimizer: `optimizer`, its tagged table (`[optimizer]` with `name = "kfac"`,
    /// `damping = 0.01`; `optimizer = "adam"` alone takes the defaults), and the shared
    /// settings (`lr`, `schedule`, `weight_decay`, ...; see [`OptimizerConfig`]) as
    /// top-level keys. Resolved configurations hold every setting of the optimizer.
    /// Flat keys of earlier versions (`kfac_damping = 0.01`) are read into the table.
    #[serde(flatten)]
    pub optim: OptimizerConfig,
    /// Gradient checkpointing (Chen et al. 2016): `off`, `auto` (√L segments of the
    /// model's L layers) or a number of segments K. The forward pass keeps only each
    /// segment's input; the backward pass recomputes a segment at a time, so activation
    /// memory falls to K inputs plus one segment's records and the update is bit-identical.
    /// Rules: bp, the FA family (fa, usf, brsf, frsf, kp), the DFA family (dfa, bfa,
    /// drtp) and dsn; default `off`.
    pub checkpoint_segments: String,
    /// Mixed precision, as `torch.autocast`: `f32` (default), `bf16` or `f16`.
    /// Activations and matrix-product inputs take the type (products accumulate in f32,
    /// on AMX or AVX512_BF16 for bf16); parameters, gradients, optimizer state, losses,
    /// softmax and normalisation statistics stay f32. `f16` adds dynamic loss scaling
    /// ([`super::LossScaler`]). Rules on the shared forward and backward passes (bp, the
    /// FA and DFA families, kp, local, dsn, dni, cdni, ff); the others refuse it.
    pub precision: String,
    /// Quantisation-aware training: `none` (default) or `wXaY`, X-bit weights and Y-bit
    /// inputs of every top-level Linear layer (w8a8, w4a4, w2a2; 2 to 16 bits), fake
    /// quantised with learned step sizes (LSQ, Esser et al. 2020) and the clipped
    /// straight-through estimator; inputs after a ReLU unsigned. The steps are trained
    /// by the run's optimizer and fall at most by half per step (an adaptive optimizer
    /// would otherwise take a small step to zero). Rules on the shared forward and
    /// backward passes (as for `precision`); f32 only.
    pub quantize: String,
    /// One weight step per output unit (per channel) instead of one per layer.
    pub quantize_per_channel: bool,
    /// Training's forward pass of the quantised Linear layers (at most 8 bits) on the
    /// int8 kernel, the deployed arithmetic, instead of the f32 product of the
    /// fake-quantised values (equal up to f32 rounding); default false (slower at these
    /// sizes: reports/quantized.md).
    pub quantize_integer_forward: bool,
    /// Sparse training (`sparse`, `sparsity`, `sparse_distribution`, `sparse_every`,
    /// `sparse_drop_fraction`, `sparse_end`; see [`super::sparse`]): static masks, SET,
    /// RigL or gradual magnitude pruning of the Linear and conv weights.
    #[serde(flatten)]
    pub sparse: super::sparse::SparseConfig,
    /// What the data-parallel ranks send each step: `none` (the f32 update, summed by an
    /// all-reduce; default) or `sign` (error-feedback sign compression, EF-SignSGD,
    /// Karimireddy et al. 2019: one bit per element and a scale ‖p‖₁/d per tensor, the
    /// residual kept by each rank for its next step; 32× fewer bytes). With one process
    /// `sign` compresses the update the same way (its effect on training, without MPI).
    /// The residual is not saved in checkpoints: a resumed run starts it at zero.
    pub compression: String,
    /// How `mpirun`'s ranks share the work: `data` (default; each rank takes a share of
    /// every batch and the updates are averaged) or `pipeline` (each rank owns a
    /// contiguous run of the layers and the batch flows through them in `microbatches`;
    /// dfa and bfa then update every rank's layers from the broadcast output error with
    /// no backward messages, bp passes the error back rank by rank; dense models).
    pub parallel: String,
    /// Data-parallel batch normalisation: `false` (default, as PyTorch's
    /// DistributedDataParallel) normalises by each rank's own rows, and the ranks'
    /// running statistics are averaged at the end of each epoch; `true` synchronises the
    /// batch statistics over the ranks (SyncBatchNorm: two small all-reduces per
    /// BatchNorm layer and pass), which makes 2 ranks × B/2 rows compute 1 process × B.
    pub sync_batch_norm: bool,
    /// Microbatches a pipelined batch is cut into (GPipe); default 4.
    pub microbatches: usize,
    /// Seconds a rank waits for the others in one communication before it stops the run
    /// with an error (a rank that died or hangs); 0: for ever; default 300.
    pub comm_timeout: u64,
    /// Average the rule's updates over N minibatches per optimizer step (gradient
    /// accumulation; an effective batch of N × `batch_size`); default 1.
    pub accumulate: usize,
    /// Weight averaging used for evaluation: `none`, `ema:DECAY` (exponential moving
    /// average after every step, Polyak & Juditsky 1992) or `swa:START_EPOCH` (uniform
    /// average of the weights at the end of each epoch from START_EPOCH on, Izmailov et
    /// al. 2018); default `none`. Averages are kept in the parameter store as `avg.*`.
    pub average: String,
    /// Minibatch size; default 128.
    pub batch_size: usize,
    /// Batch size for evaluation; default 1000.
    pub eval_batch_size: usize,
    /// Epochs; default 10.
    pub epochs: usize,
    /// Stop after this many optimizer steps in total; default none.
    pub max_steps: Option<u64>,
    /// Stop training after this many seconds (checked every step; the epoch in progress
    /// is then evaluated); default none. Runs cut by time are not reproducible.
    pub max_seconds: Option<f64>,
    /// Seed of initialisation, shuffling and rule state; default 0.
    pub seed: u64,
    /// Worker threads; default: all cores.
    pub threads: Option<usize>,
    /// Output folder; default `runs/<dataset>-<rule>-<optimizer>-s<seed>`.
    pub out: Option<PathBuf>,
    /// Write a checkpoint every N epochs (0: only at the end); default 1.
    pub checkpoint_every: usize,
    /// Every this many optimizer steps, append a `"type":"step"` record (step, the
    /// minibatch loss before the update, training seconds excluding evaluation) to
    /// metrics.jsonl; default 0 (off).
    pub log_every: u64,
    /// No progress bar; default false.
    pub quiet: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            dataset: "mnist".into(),
            data_dir: None,
            download: true,
            mirror: None,
            normalize: "standard".into(),
            task: "classify".into(),
            pretrain: "none".into(),
            rbm: Default::default(),
            validation: 0,
            train_limit: None,
            test_limit: None,
            model: "mlp:784-1000-1000-10".into(),
            activation: "relu".into(),
            init: "torch".into(),
            bias: true,
            loss: "cross-entropy".into(),
            rule: Choice::named("bp"),
            diag_every: 0,
            optim: OptimizerConfig::default(),
            checkpoint_segments: "off".into(),
            precision: "f32".into(),
            quantize: "none".into(),
            quantize_per_channel: false,
            quantize_integer_forward: false,
            sparse: Default::default(),
            compression: "none".into(),
            parallel: "data".into(),
            sync_batch_norm: false,
            microbatches: 4,
            comm_timeout: 300,
            accumulate: 1,
            average: "none".into(),
            batch_size: 128,
            eval_batch_size: 1000,
            epochs: 10,
            max_steps: None,
            max_seconds: None,
            seed: 0,
            threads: None,
            out: None,
            checkpoint_every: 1,
            quiet: false,
            log_every: 0,
        }
    }
}

impl TrainConfig {
    /// The output folder.
    pub fn out_dir(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| {
            PathBuf::from("runs").join(format!(
                "{}-{}-{}-s{}",
                self.dataset, self.rule.name, self.optim.optimizer.name, self.seed
            ))
        })
    }

    /// The element type of `precision`: f32, bf16 or f16.
    pub fn dtype(&self) -> Result<crate::tensor::DType> {
        use crate::tensor::DType;
        match self.precision.as_str() {
            "f32" | "fp32" => Ok(DType::F32),
            "bf16" => Ok(DType::BF16),
            "f16" | "fp16" => Ok(DType::F16),
            other => Err(Error::unknown(
                "precision (--precision)",
                other,
                &["f32", "bf16", "f16"],
            )),
        }
    }

    /// Every numeric setting in its range, including the rule's, the optimizer's and
    /// the pretraining's; an error names the setting and the value. A run that would do
    /// no work (0 epochs, 0 steps, no training or test samples) is an error too.
    pub fn validate(&self) -> Result<()> {
        use crate::settings::{Range::*, at_least, at_least_opt, real_opt};
        at_least("epochs", self.epochs as u64, 1)?;
        at_least("batch_size", self.batch_size as u64, 1)?;
        at_least("eval_batch_size", self.eval_batch_size as u64, 1)?;
        at_least("accumulate", self.accumulate as u64, 1)?;
        at_least_opt("max_steps", self.max_steps, 1)?;
        at_least_opt("train_limit", self.train_limit.map(|n| n as u64), 1)?;
        at_least_opt("test_limit", self.test_limit.map(|n| n as u64), 1)?;
        at_least_opt("threads", self.threads.map(|n| n as u64), 1)?;
        real_opt("max_seconds", self.max_seconds, Positive)?;
        self.rbm.validate()?;
        self.sparse.validate()?;
        crate::nn::Segments::parse(&self.checkpoint_segments)?;
        self.dtype()?;
        super::comm::Compression::parse(&self.compression)?;
        crate::nn::QuantScheme::parse(&self.quantize, self.quantize_per_channel)?;
        if !matches!(self.parallel.as_str(), "data" | "pipeline") {
            return Err(Error::unknown(
                "parallel (--parallel)",
                &self.parallel,
                &["data", "pipeline"],
            ));
        }
        at_least("microbatches", self.microbatches as u64, 1)?;
        crate::rule::resolve(&self.rule)?;
        self.optim.validate()
    }

    /// A fresh run's configuration: the defaults with `layers` merged on top; when no
    /// layer sets them, the learning rate the chosen optimizer recommends
    /// ([`crate::optim::default_lr`], SAM's inner optimizer's for `sam`/`asam`), and the
    /// input scaling and hidden activation the rule recommends
    /// ([`crate::rule::RuleSpec::normalize`], [`crate::rule::RuleSpec::activation`]);
    /// `unit` scaling for a spiking model (`snn:...`).
    pub fn fresh(layers: &[serde_json::Value]) -> Result<TrainConfig> {
        let mut cfg = TrainConfig::default().merged(layers)?;
        let given = |key: &str| {
            layers
                .iter()
                .filter_map(|l| l.as_object())
                .any(|o| o.get(key).is_some_and(|v| !v.is_null()))
        };
        if !given("lr") {
            cfg.optim.lr = crate::optim::default_lr(&cfg.optim.optimizer)?;
        }
        let spec = crate::rule::spec(&cfg.rule.name)?;
        if !given("normalize")
            && let Some(n) = spec.normalize
        {
            cfg.normalize = n.to_string();
        }
        // A spiking model's rate and latency codes read intensities in [0, 1].
        if !given("normalize") && cfg.model.starts_with("snn:") {
            cfg.normalize = "unit".into();
        }
        if !given("activation")
            && let Some(a) = spec.activation
        {
            cfg.activation = a.to_string();
        }
        Ok(cfg)
    }

    /// A configuration as stored in a summary or checkpoint, including those written
    /// with the flat rule keys of earlier versions: they held every rule's keys, so the
    /// keys of rules other than the stored one are dropped whatever their value.
    pub fn from_stored(v: &serde_json::Value) -> Result<TrainConfig> {
        TrainConfig::default().merge(std::slice::from_ref(v), true)
    }

    /// Merges override layers (JSON objects; `null` values are ignored) onto `self`,
    /// rejecting unknown keys and ill-typed values by name. The rule's table is merged
    /// key by key (a layer that names another rule starts a new table); flat rule keys
    /// (`pc_steps`) are read as settings of the final rule when it has them, ignored
    /// at their default value otherwise (configs of earlier versions hold every one),
    /// and refused with another value.
    pub fn merged(&self, layers: &[serde_json::Value]) -> Result<TrainConfig> {
        self.merge(layers, false)
    }

    /// [`TrainConfig::merged`]; `stored`: flat keys of other rules and optimizers are
    /// dropped.
    fn merge(&self, layers: &[serde_json::Value], stored: bool) -> Result<TrainConfig> {
        let mut base =
            serde_json::to_value(self).map_err(|e| Error::config("config", e.to_string()))?;
        let obj = base
            .as_object_mut()
            .ok_or_else(|| Error::config("config", "not an object"))?;
        let mut rule = self.rule.clone();
        let mut optimizer = self.optim.optimizer.clone();
        let rules = crate::rule::all_settings();
        let optimizers = crate::optim::all_settings();
        let is_flat = |all: &[(&str, Field)], key: &str| all.iter().any(|(_, f)| f.legacy == key);
        let (mut rule_flat, mut optim_flat) = (Vec::new(), Vec::new());
        for layer in layers {
            let Some(l) = layer.as_object() else {
                return Err(Error::config("config", "override is not a table"));
            };
            for (k, v) in l {
                let key = k.replace('-', "_");
                if v.is_null() {
                    continue;
                }
                if key == "rule" {
                    merge_choice(&mut rule, "rule", v, |n| Ok(crate::rule::spec(n)?.name))?;
                } else if key == "optimizer" {
                    merge_choice(&mut optimizer, "optimizer", v, |n| {
                        Ok(crate::optim::spec(n)?.name)
                    })?;
                } else if obj.contains_key(&key) {
                    obj.insert(key, v.clone());
                } else if is_flat(&rules, &key) {
                    rule_flat.push((key, v.clone()));
                } else if is_flat(&optimizers, &key) {
                    optim_flat.push((key, v.clone()));
                } else {
                    let mut known: Vec<&str> = obj.keys().map(String::as_str).collect();
                    known.sort();
                    let candidates: Vec<&str> = known
                        .iter()
                        .copied()
                        .chain(
                            rules
                                .iter()
                                .chain(&optimizers)
                                .map(|(_, f)| f.legacy.as_str()),
                        )
                        .collect();
                    let hint = crate::error::closest(&key, &candidates)
                        .map(|c| format!(" (did you mean '{c}'?)"))
                        .unwrap_or_default();
                    return Err(Error::config(
                        "config",
                        format!(
                            "unknown key '{k}'{hint}; known keys: {} (a rule's or an optimizer's own settings go in its [rule] or [optimizer] table: futureprop rules show NAME, futureprop optimizers show NAME)",
                            known.join(", ")
                        ),
                    ));
                }
            }
        }
        // Flat keys of earlier versions: the chosen rule's and optimizer's (a wrapper's
        // inner optimizer's after its own) are read into their tables.
        let own = (crate::rule::spec(&rule.name)?.settings)();
        let rest = claim(&mut rule.settings, &own, rule_flat);
        refuse_unclaimed("rule", &rule.name, rest, &rules, &own, stored)?;
        let spec = crate::optim::spec(&optimizer.name)?;
        let own = (spec.settings)();
        let mut rest = claim(&mut optimizer.settings, &own, optim_flat);
        if spec.wraps && !rest.is_empty() {
            let mut inner = crate::optim::inner_choice(spec, &optimizer.settings)?;
            let fields = (crate::optim::spec(&inner.name)?.settings)();
            rest = claim(&mut inner.settings, &fields, rest);
            optimizer.settings.insert(
                "inner".into(),
                serde_json::to_value(inner)
                    .map_err(|e| Error::config("optimizer", e.to_string()))?,
            );
        }
        refuse_unclaimed(
            "optimizer",
            &optimizer.name,
            rest,
            &optimizers,
            &own,
            stored,
        )?;
        obj.insert(
            "rule".into(),
            serde_json::to_value(crate::rule::resolve(&rule)?)
                .map_err(|e| Error::config("rule", e.to_string()))?,
        );
        obj.insert(
            "optimizer".into(),
            serde_json::to_value(crate::optim::resolve(&optimizer)?)
                .map_err(|e| Error::config("optimizer", e.to_string()))?,
        );
        let cfg: TrainConfig =
            serde_json::from_value(base).map_err(|e| Error::config("config", e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a TOML file as an override layer.
    pub fn read_toml(path: &std::path::Path) -> Result<serde_json::Value> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse_toml(&text, path)
    }

    /// TOML text as an override layer; `path` names the source in errors.
    pub fn parse_toml(text: &str, path: &std::path::Path) -> Result<serde_json::Value> {
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| Error::format(path, format!("invalid TOML: {}", e.message())))?;
        crate::settings::toml_layer(&path.display().to_string(), &table)
    }
}

/// Merges a layer's `rule` or `optimizer` value (a name, or a table with or without
/// `name`) onto `choice`: another name starts a fresh table. `canonical` maps a name
/// (or alias) to the registry's.
fn merge_choice(
    choice: &mut Choice,
    what: &str,
    v: &serde_json::Value,
    canonical: fn(&str) -> Result<&'static str>,
) -> Result<()> {
    let (name, settings) = match v {
        serde_json::Value::String(n) => (Some(n.as_str()), None),
        serde_json::Value::Object(o) => (o.get("name").and_then(|n| n.as_str()), Some(o)),
        other => {
            return Err(Error::config(
                what,
                format!("{other} is neither a name nor a table"),
            ));
        }
    };
    if let Some(n) = name {
        let n = canonical(n)?;
        if n != choice.name {
            *choice = Choice::named(n);
        }
    }
    for (k, v) in settings.into_iter().flatten() {
        if k != "name" && !v.is_null() {
            choice.settings.insert(k.replace('-', "_"), v.clone());
        }
    }
    Ok(())
}

/// Moves the flat keys (`pc_steps`, `kfac_damping`) that are settings of `own` into
/// `table` under their keys; returns the others.
fn claim(
    table: &mut crate::settings::Table,
    own: &[Field],
    flat: Vec<(String, serde_json::Value)>,
) -> Vec<(String, serde_json::Value)> {
    let mut rest = Vec::new();
    for (key, v) in flat {
        match own.iter().find(|f| f.legacy == key) {
            Some(f) => {
                table.insert(f.key.to_string(), v);
            }
            None => rest.push((key, v)),
        }
    }
    rest
}

/// Flat keys no chosen technique claimed: dropped from a stored configuration (which
/// held every technique's), ignored at a default value of the technique they belong to,
/// refused otherwise with the name of that technique.
fn refuse_unclaimed(
    what: &str,
    chosen: &str,
    rest: Vec<(String, serde_json::Value)>,
    all: &[(&'static str, Field)],
    own: &[Field],
    stored: bool,
) -> Result<()> {
    if stored {
        return Ok(());
    }
    for (key, v) in rest {
        let owners = all.iter().filter(|(_, f)| f.legacy == key);
        if !owners.clone().any(|(_, f)| f.default == v) {
            let of: Vec<&str> = owners.map(|(r, _)| *r).collect();
            return Err(Error::config(
                key.as_str(),
                format!(
                    "{v} is a setting of {} but the {what} is {chosen} (whose settings are: {}); drop it or choose that {what}",
                    of.join("/"),
                    if own.is_empty() {
                        "none".to_string()
                    } else {
                        own.iter()
                            .map(|f| f.legacy.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            ));
        }
    }
    Ok(())
}

//! Suite files: which arms to run, with what budget and options.
//!
//! ```toml
//! name = "quick"
//! datasets = ["mnist"]
//! models = ["mlp:784-1000-1000-10"]
//! rules = "all"                 # or a list: ["bp", "fa", "dfa"]
//! optimizers = ["adam"]
//! seeds = 1                     # seeds 0..N (`--seeds` overrides)
//! epochs = 1                    # budget per arm; or `seconds = 60`
//! diag_every = 50               # alignment diagnostics for rules other than bp (0: off)
//! [defaults]                    # any `futureprop train` setting, for every arm
//! lr = 1e-3
//! [rule.dfa]                    # settings for the arms of one rule
//! lr = 5e-4
//! [optimizer.sgd]               # settings for the arms of one optimizer
//! lr = 0.05
//! ```
//!
//! Arms are the product datasets × models × rules × optimizers; each runs once per seed.
//! Arms with the same seed see the same minibatch stream (shuffling depends on the seed
//! and epoch only).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A parsed suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    /// Name.
    pub name: String,
    /// One line saying what it measures.
    #[serde(default)]
    pub description: String,
    /// Dataset names.
    pub datasets: Vec<String>,
    /// Model specs.
    pub models: Vec<String>,
    /// Rule names, or `"all"`.
    pub rules: RuleList,
    /// Optimizer names.
    pub optimizers: Vec<String>,
    /// Number of seeds (0..N); default 1.
    #[serde(default = "one")]
    pub seeds: u64,
    /// Epochs per arm (the budget when `seconds` is absent); default 1.
    #[serde(default = "one_usize")]
    pub epochs: usize,
    /// Wall-clock budget per arm in seconds (then `epochs` is an upper bound).
    #[serde(default)]
    pub seconds: Option<f64>,
    /// Diagnostics interval for rules other than `bp`; 0 disables.
    #[serde(default)]
    pub diag_every: u64,
    /// Settings for every arm (keys of `futureprop train`).
    #[serde(default)]
    pub defaults: toml::Table,
    /// Settings per rule.
    #[serde(default)]
    pub rule: BTreeMap<String, toml::Table>,
    /// Settings per optimizer.
    #[serde(default)]
    pub optimizer: BTreeMap<String, toml::Table>,
}

fn one() -> u64 {
    1
}
fn one_usize() -> usize {
    1
}

/// `"all"` or an explicit list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RuleList {
    /// Every rule of [`crate::rule::REGISTRY`] defined for multi-layer feed-forward models.
    All(String),
    /// These rules.
    List(Vec<String>),
}

/// Built-in suites by name, with their TOML text.
pub const BUILTIN: &[(&str, &str)] = &[
    ("quick", include_str!("../../bench/suites/quick.toml")),
    ("standard", include_str!("../../bench/suites/standard.toml")),
    ("memory", include_str!("../../bench/suites/memory.toml")),
];

/// One arm: a rule × optimizer × model × dataset (run once per seed).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Arm {
    /// Dataset.
    pub dataset: String,
    /// Model spec.
    pub model: String,
    /// Rule.
    pub rule: String,
    /// Optimizer.
    pub optimizer: String,
}

impl Arm {
    /// A folder name for the arm.
    pub fn id(&self) -> String {
        let m: String = self
            .model
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{}__{}__{}__{}", self.dataset, m, self.rule, self.optimizer)
    }
}

impl Suite {
    /// Parses suite TOML; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Suite> {
        let s: Suite = toml::from_str(text)
            .map_err(|e| Error::format(origin, format!("invalid suite: {}", e.message())))?;
        s.validate(origin)?;
        Ok(s)
    }

    /// A built-in suite by name, or a suite file.
    pub fn load(name_or_path: &str) -> Result<Suite> {
        if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            return Suite::parse(text, name_or_path);
        }
        let p = Path::new(name_or_path);
        if p.extension().is_some_and(|e| e == "toml") || p.exists() {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            return Suite::parse(&text, name_or_path);
        }
        Err(Error::unknown(
            "suite",
            name_or_path,
            &[
                BUILTIN
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
                    .as_str(),
                "FILE.toml",
            ],
        ))
    }

    fn validate(&self, origin: &str) -> Result<()> {
        let bad = |m: String| Err(Error::format(origin, m));
        if self.datasets.is_empty() || self.models.is_empty() || self.optimizers.is_empty() {
            return bad("datasets, models and optimizers must each list at least one entry".into());
        }
        if let RuleList::All(s) = &self.rules
            && s != "all"
        {
            return bad(format!("rules = \"{s}\": use \"all\" or a list of names"));
        }
        for r in self.rule_names() {
            crate::rule::build_rule(&r)?;
        }
        for d in &self.datasets {
            crate::data::check_name(d)?;
        }
        if self.seeds == 0 || self.epochs == 0 {
            return bad("seeds and epochs must be at least 1".into());
        }
        if self.seconds.is_some_and(|s| s.is_nan() || s <= 0.0) {
            return bad("seconds must be positive".into());
        }
        Ok(())
    }

    /// The rules, with `"all"` expanded.
    pub fn rule_names(&self) -> Vec<String> {
        match &self.rules {
            // The single-layer classics are not defined for the suites' MLPs; name them.
            RuleList::All(_) => crate::rule::REGISTRY
                .iter()
                .filter(|s| !s.single_layer && !s.sequence && !s.small_models)
                .map(|s| s.name.to_string())
                .collect(),
            RuleList::List(l) => l.clone(),
        }
    }

    /// Every arm, in run order (grouped by dataset, so data loads once).
    pub fn arms(&self) -> Vec<Arm> {
        let mut out = Vec::new();
        for d in &self.datasets {
            for m in &self.models {
                for o in &self.optimizers {
                    for r in self.rule_names() {
                        out.push(Arm {
                            dataset: d.clone(),
                            model: m.clone(),
                            rule: r,
                            optimizer: o.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Override layers (lowest first) for an arm's `TrainConfig`.
    pub fn layers(&self, arm: &Arm) -> Result<Vec<serde_json::Value>> {
        use crate::settings::toml_layer;
        let mut layers = vec![toml_layer(
            &format!("suite {} [defaults]", self.name),
            &self.defaults,
        )?];
        if let Some(t) = self.optimizer.get(&arm.optimizer) {
            layers.push(toml_layer(
                &format!("suite {} [optimizer.{}]", self.name, arm.optimizer),
                t,
            )?);
        }
        if let Some(t) = self.rule.get(&arm.rule) {
            layers.push(toml_layer(
                &format!("suite {} [rule.{}]", self.name, arm.rule),
                t,
            )?);
        }
        Ok(layers)
    }
}

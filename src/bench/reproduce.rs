//! The registry of published results and the runs that reproduce them
//! (`reproduce/registry.toml`, compiled into the binary).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::train::{self, TrainConfig};

/// The registry text shipped with futureprop.
pub const REGISTRY: &str = include_str!("../../reproduce/registry.toml");

/// One published result and our recipe for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Short unique name.
    pub name: String,
    /// Citation.
    pub paper: String,
    /// Dataset name.
    pub dataset: String,
    /// The paper's architecture.
    pub architecture: String,
    /// The paper's training recipe.
    pub paper_recipe: String,
    /// Reported test error in percent.
    pub reported_test_error: f64,
    /// Whether our recipe's budget matches the paper's.
    pub budget_matches: bool,
    /// How our recipe differs.
    #[serde(default)]
    pub recipe_note: String,
    /// `futureprop train` settings of our recipe.
    pub recipe: toml::Table,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Registry {
    result: Vec<Entry>,
}

/// Parses a registry.
pub fn parse(text: &str) -> Result<Vec<Entry>> {
    let r: Registry = toml::from_str(text)
        .map_err(|e| Error::format("reproduce/registry.toml", e.message().to_string()))?;
    Ok(r.result)
}

/// The built-in registry.
pub fn registry() -> Result<Vec<Entry>> {
    parse(REGISTRY)
}

/// Selects entries by name (all when `names` is empty).
pub fn select(entries: &[Entry], names: &[String]) -> Result<Vec<Entry>> {
    if names.is_empty() {
        return Ok(entries.to_vec());
    }
    names
        .iter()
        .map(|n| {
            entries
                .iter()
                .find(|e| &e.name == n)
                .cloned()
                .ok_or_else(|| {
                    Error::unknown(
                        "result",
                        n,
                        &entries.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
                    )
                })
        })
        .collect()
}

/// Runs `entries`, each into `out/<name>`, with `overrides` (JSON objects of train
/// settings, e.g. a data directory) applied on top of the recipe. Any override of the
/// budget marks the budget as not matching. Returns one record per entry and writes
/// `out/results.json` and `out/results.md`.
pub fn run(entries: &[Entry], out: &Path, overrides: &[Value]) -> Result<Vec<Value>> {
    let budget_keys = [
        "epochs",
        "max_steps",
        "max_seconds",
        "train_limit",
        "test_limit",
    ];
    let changed_budget = overrides.iter().filter_map(Value::as_object).any(|o| {
        o.iter()
            .any(|(k, v)| !v.is_null() && budget_keys.contains(&k.as_str()))
    });
    let mut records = Vec::new();
    for e in entries {
        let recipe = crate::settings::toml_layer(&format!("registry row {}", e.name), &e.recipe)?;
        let mut layers = vec![json!({"dataset": e.dataset}), recipe];
        layers.extend(overrides.iter().cloned());
        let dir: PathBuf = out.join(&e.name);
        layers.push(json!({"out": dir}));
        let cfg = TrainConfig::fresh(&layers)?;
        let rec = match train::train(&cfg, None) {
            Ok(s) => {
                let ours = 100.0 * (1.0 - s["test_accuracy"].as_f64().unwrap_or(f64::NAN));
                let best = 100.0 * (1.0 - s["best_test_accuracy"].as_f64().unwrap_or(f64::NAN));
                json!({
                    "name": e.name, "paper": e.paper, "dataset": e.dataset,
                    "paper_test_error": e.reported_test_error, "our_test_error": ours, "our_best_test_error": best,
                    "difference": ours - e.reported_test_error,
                    "budget_matches": e.budget_matches && !changed_budget,
                    "epochs": s["epochs"], "recipe_note": e.recipe_note, "status": "ok",
                })
            }
            Err(err @ Error::NonFinite { .. }) => json!({
                "name": e.name, "paper_test_error": e.reported_test_error, "status": "failed", "error": err.to_string(),
                "budget_matches": e.budget_matches && !changed_budget,
            }),
            Err(err) => return Err(err),
        };
        records.push(rec);
    }
    let text = serde_json::to_string_pretty(&records)
        .map_err(|e| Error::config("results", e.to_string()))?;
    train::checkpoint::write_atomic(&out.join("results.json"), text.as_bytes())?;
    train::checkpoint::write_atomic(&out.join("results.md"), markdown(&records).as_bytes())?;
    Ok(records)
}

/// A table of paper vs ours.
pub fn markdown(records: &[Value]) -> String {
    let mut s = String::from(
        "| result | paper test error % | ours % (best epoch) | difference | budget matches | note |\n|---|---|---|---|---|---|\n",
    );
    for r in records {
        let n = |k: &str| {
            r[k].as_f64()
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "—".into())
        };
        let ours = if r["status"] == "ok" {
            format!("{} ({})", n("our_test_error"), n("our_best_test_error"))
        } else {
            format!("failed: {}", r["error"].as_str().unwrap_or(""))
        };
        s += &format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r["name"].as_str().unwrap_or(""),
            n("paper_test_error"),
            ours,
            r["difference"]
                .as_f64()
                .map(|v| format!("{v:+.2}"))
                .unwrap_or_else(|| "—".into()),
            if r["budget_matches"].as_bool().unwrap_or(false) {
                "yes"
            } else {
                "no"
            },
            r["recipe_note"].as_str().unwrap_or("")
        );
    }
    s
}

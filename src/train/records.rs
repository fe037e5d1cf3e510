//! What a run writes as it goes: `metrics.jsonl` (one record per line; it always holds
//! exactly the run's history), the checkpoint (written atomically) and what the run can
//! fall back on when it must stop.

use std::io::Write as _;
use std::path::PathBuf;

use serde_json::Value;

use super::checkpoint::{self, Checkpoint};
use super::{TrainConfig, append_line};
use crate::error::{Error, Result};
use crate::nn::Params;

/// What a run has on disk to fall back on.
enum Saved {
    Nothing,
    ResumedFrom,
    Written(usize),
}

/// The run folder's records.
pub(super) struct Records {
    /// The run folder.
    pub(super) dir: PathBuf,
    checkpoint: PathBuf,
    metrics: PathBuf,
    /// The resolved configuration, as stored in the checkpoint and the summary.
    pub(super) config: Value,
    /// Every epoch and diagnostics record so far (a resumed run's included).
    pub(super) history: Vec<Value>,
    saved: Saved,
    /// Whether this process writes the run's files.
    write: bool,
}

impl Records {
    /// Creates the run folder and `metrics.jsonl` with the history a resumed run
    /// brings (`resumed`), or none. With `write` false (a data-parallel rank other than
    /// 0, whose records rank 0 writes) nothing goes to disk.
    pub(super) fn open(
        cfg: &TrainConfig,
        resumed: Option<Vec<Value>>,
        write: bool,
    ) -> Result<Records> {
        let dir = cfg.out_dir();
        let metrics = dir.join("metrics.jsonl");
        let saved = if resumed.is_some() {
            Saved::ResumedFrom
        } else {
            Saved::Nothing
        };
        let history = resumed.unwrap_or_default();
        if write {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            let mut f = std::fs::File::create(&metrics).map_err(|e| Error::io(&metrics, e))?;
            for h in &history {
                writeln!(f, "{h}").map_err(|e| Error::io(&metrics, e))?;
            }
        }
        Ok(Records {
            checkpoint: dir.join(checkpoint::FILE),
            dir,
            metrics,
            config: serde_json::to_value(cfg)
                .map_err(|e| Error::config("config", e.to_string()))?,
            history,
            saved,
            write,
        })
    }

    /// Appends a record to `metrics.jsonl` only (per-step records).
    pub(super) fn log(&self, rec: &Value) -> Result<()> {
        if !self.write {
            return Ok(());
        }
        append_line(&self.metrics, rec)
    }

    /// Appends a record to `metrics.jsonl` and the history (epochs, diagnostics).
    pub(super) fn record(&mut self, rec: Value) -> Result<()> {
        self.log(&rec)?;
        self.history.push(rec);
        Ok(())
    }

    /// Writes the checkpoint after `epoch`.
    pub(super) fn checkpoint(
        &mut self,
        params: &Params,
        opt: &dyn crate::optim::Optimizer,
        epoch: usize,
        loss_scaler: Option<&super::LossScaler>,
    ) -> Result<()> {
        if !self.write {
            return Ok(());
        }
        checkpoint::save(
            &self.checkpoint,
            &Checkpoint {
                params: params.clone(),
                optimizer: opt.state(),
                config: self.config.clone(),
                epoch,
                history: self.history.clone(),
                loss_scaler: loss_scaler.cloned(),
            },
        )?;
        self.saved = Saved::Written(epoch);
        Ok(())
    }

    /// What is left on disk, for an error that stops the run.
    pub(super) fn kept(&self) -> String {
        match self.saved {
            Saved::Written(e) => format!(
                "last good checkpoint kept: {}, after epoch {e}",
                self.checkpoint.display()
            ),
            Saved::ResumedFrom => "the checkpoint it resumed from is unchanged".to_string(),
            Saved::Nothing => "no checkpoint had been written".to_string(),
        }
    }
}

//! Weight averaging used for evaluation: an exponential moving average after every step
//! (Polyak & Juditsky 1992) or the uniform average of end-of-epoch weights from a start
//! epoch on (SWA, Izmailov et al. 2018). Averages live in the parameter store as
//! `avg.NAME`, so the checkpoint carries them.

use crate::error::{Error, Result};
use crate::nn::{Model, Params};

/// Weight averaging for evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Averaging {
    None,
    Ema(f64),
    Swa(usize),
}

impl Averaging {
    fn parse(s: &str) -> Result<Averaging> {
        let bad = || {
            Error::config(
                "average",
                format!("'{s}'; expected none, ema:DECAY (0 < DECAY < 1) or swa:START_EPOCH"),
            )
        };
        match s.split_once(':') {
            None if s == "none" => Ok(Averaging::None),
            Some(("ema", d)) => match d.parse::<f64>() {
                Ok(d) if d > 0.0 && d < 1.0 => Ok(Averaging::Ema(d)),
                _ => Err(bad()),
            },
            Some(("swa", e)) => e.parse().map(Averaging::Swa).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

/// The trainer's weight average: which, over which parameters.
pub(super) struct WeightAverage {
    kind: Averaging,
    /// The model's own parameters (not rule state).
    names: Vec<String>,
}

impl WeightAverage {
    /// The average named by `spec` (`none`, `ema:DECAY`, `swa:START_EPOCH`), its
    /// `avg.*` copies added to `params`.
    pub(super) fn new(spec: &str, model: &Model, params: &mut Params) -> Result<Self> {
        let kind = Averaging::parse(spec)?;
        let names = super::model_param_names(model, params);
        if kind != Averaging::None {
            for n in &names {
                let t = params.get(n)?.clone();
                params.insert(format!("avg.{n}"), t);
            }
        }
        Ok(WeightAverage { kind, names })
    }

    /// After an optimizer step: avg ← d·avg + (1 − d)·θ for the EMA.
    pub(super) fn after_step(&self, params: &mut Params) -> Result<()> {
        if let Averaging::Ema(d) = self.kind {
            for n in &self.names {
                let t = params.get(n)?.clone();
                params.get_mut(&format!("avg.{n}"))?.axpby(d, 1.0 - d, &t)?;
            }
        }
        Ok(())
    }

    /// At the end of `epoch` (0-based): SWA's running mean avg ← avg + (θ − avg)/k of
    /// the end-of-epoch weights from its start epoch on.
    pub(super) fn end_of_epoch(&self, epoch: usize, params: &mut Params) -> Result<()> {
        if let Averaging::Swa(start) = self.kind
            && epoch + 1 >= start.max(1)
        {
            let k = (epoch + 2 - start.max(1)) as f64;
            for n in &self.names {
                let t = params.get(n)?.clone();
                params
                    .get_mut(&format!("avg.{n}"))?
                    .axpby(1.0 - 1.0 / k, 1.0 / k, &t)?;
            }
        }
        Ok(())
    }

    /// The parameters to evaluate after `epoch`: the averaged weights in place of the
    /// model's once an average exists.
    pub(super) fn for_evaluation(&self, epoch: usize, params: &Params) -> Result<Params> {
        let averaged = match self.kind {
            Averaging::None => false,
            Averaging::Ema(_) => true,
            Averaging::Swa(start) => epoch + 1 >= start.max(1),
        };
        let mut p = params.clone();
        if averaged {
            for n in &self.names {
                p.insert(n.clone(), params.get(&format!("avg.{n}"))?.clone());
            }
        }
        Ok(p)
    }
}

//! Learning-rate schedules: a multiplier of the base rate as a function of the step.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Names accepted by [`Schedule::parse`].
pub const SCHEDULE_NAMES: &[&str] = &[
    "constant",
    "step:EVERY_STEPS:GAMMA",
    "cosine[:FLOOR]",
    "robbins-monro:TAU",
    "cosine-restarts:PERIOD[:MULT]",
    "one-cycle[:PCT]",
    "warmup:STEPS,<schedule>",
];

/// The decay after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decay {
    /// η = η₀.
    Constant,
    /// η = η₀ · γ^⌊k/every⌋.
    Step { every: u64, gamma: f64 },
    /// η = η₀ · (floor + (1 − floor)(1 + cos(πk/K))/2) over the K steps of the run
    /// (Loshchilov & Hutter 2017, without restarts).
    Cosine { floor: f64 },
    /// η = η₀ / (1 + k/τ) (Robbins & Monro 1951 step sizes: Σηₖ = ∞, Σηₖ² < ∞).
    RobbinsMonro { tau: f64 },
    /// SGDR (Loshchilov & Hutter 2017): cosine from η₀ to 0 over a period of `period`
    /// steps, then restart; each period is `mult` times the previous one.
    CosineRestarts { period: u64, mult: f64 },
    /// One-cycle (Smith & Topin 2019, as PyTorch's OneCycleLR with cosine annealing):
    /// from η₀/25 up to η₀ over the first `pct` of the run, then down to η₀/(25·10⁴).
    OneCycle { pct: f64 },
}

/// A linear warm-up over `warmup` steps (η₀·(k+1)/warmup), then `decay`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Warm-up steps (0: none).
    pub warmup: u64,
    /// Decay after warm-up; its step count `k` starts after the warm-up.
    pub decay: Decay,
    /// Steps of the whole run (used by cosine).
    pub total_steps: u64,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            warmup: 0,
            decay: Decay::Constant,
            total_steps: 1,
        }
    }
}

fn num<T: std::str::FromStr>(s: &str, what: &str) -> Result<T> {
    s.parse()
        .map_err(|_| Error::config("schedule", format!("{what} '{s}' is not a valid number")))
}

impl Schedule {
    /// Parses `constant`, `step:1000:0.5`, `cosine`, `cosine:0.01`, `robbins-monro:500`,
    /// or `warmup:500,cosine`. `total_steps` is the run's length in steps.
    pub fn parse(s: &str, total_steps: u64) -> Result<Schedule> {
        let mut warmup = 0;
        let mut rest = s;
        if let Some(w) = s.strip_prefix("warmup:") {
            let (n, tail) = w.split_once(',').unwrap_or((w, "constant"));
            warmup = num(n, "warm-up steps")?;
            rest = tail;
        }
        let parts: Vec<&str> = rest.split(':').collect();
        let decay = match parts.as_slice() {
            ["constant"] => Decay::Constant,
            ["step", every, gamma] => {
                let every: u64 = num(every, "step interval")?;
                if every == 0 {
                    return Err(Error::config("schedule", "step interval must be positive"));
                }
                Decay::Step {
                    every,
                    gamma: num(gamma, "gamma")?,
                }
            }
            ["cosine"] => Decay::Cosine { floor: 0.0 },
            ["cosine", f] => Decay::Cosine {
                floor: num(f, "floor")?,
            },
            ["cosine-restarts", p] | ["cosine-restarts", p, _] => {
                let period: u64 = num(p, "period")?;
                let mult: f64 = match parts.get(2) {
                    Some(m) => num(m, "period multiplier")?,
                    None => 1.0,
                };
                if period == 0 || mult < 1.0 {
                    return Err(Error::config(
                        "schedule",
                        "cosine-restarts needs period ≥ 1 and multiplier ≥ 1",
                    ));
                }
                Decay::CosineRestarts { period, mult }
            }
            ["one-cycle"] => Decay::OneCycle { pct: 0.3 },
            ["one-cycle", p] => {
                let pct: f64 = num(p, "warm-up fraction")?;
                if !(pct > 0.0 && pct < 1.0) {
                    return Err(Error::config(
                        "schedule",
                        "one-cycle fraction must be in (0, 1)",
                    ));
                }
                Decay::OneCycle { pct }
            }
            ["robbins-monro", t] => {
                let tau: f64 = num(t, "tau")?;
                if tau <= 0.0 {
                    return Err(Error::config(
                        "schedule",
                        "robbins-monro tau must be positive",
                    ));
                }
                Decay::RobbinsMonro { tau }
            }
            _ => return Err(Error::unknown("schedule", s, SCHEDULE_NAMES)),
        };
        Ok(Schedule {
            warmup,
            decay,
            total_steps: total_steps.max(1),
        })
    }

    /// Multiplier of the base learning rate at step `k` (0-based).
    pub fn factor(&self, k: u64) -> f64 {
        if k < self.warmup {
            return (k + 1) as f64 / self.warmup as f64;
        }
        let k = k - self.warmup;
        match self.decay {
            Decay::Constant => 1.0,
            Decay::Step { every, gamma } => gamma.powi((k / every) as i32),
            Decay::Cosine { floor } => {
                let span = self.total_steps.saturating_sub(self.warmup).max(1) as f64;
                let t = (k as f64 / span).min(1.0);
                floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            Decay::RobbinsMonro { tau } => 1.0 / (1.0 + k as f64 / tau),
            Decay::CosineRestarts { period, mult } => {
                let (mut start, mut len) = (0f64, period as f64);
                while k as f64 >= start + len {
                    start += len;
                    len *= mult;
                }
                0.5 * (1.0 + (std::f64::consts::PI * (k as f64 - start) / len).cos())
            }
            Decay::OneCycle { pct } => {
                let total = self.total_steps.saturating_sub(self.warmup).max(2) as f64;
                let up = (pct * total - 1.0).max(1.0);
                let (lo, hi, end) = (1.0 / 25.0, 1.0, 1.0 / 25.0 / 1e4);
                let cos = |from: f64, to: f64, t: f64| {
                    to + (from - to)
                        * 0.5
                        * (1.0 + (std::f64::consts::PI * t.clamp(0.0, 1.0)).cos())
                };
                let k = k as f64;
                if k <= up {
                    cos(lo, hi, k / up)
                } else {
                    cos(hi, end, (k - up) / (total - 1.0 - up).max(1.0))
                }
            }
        }
    }
}

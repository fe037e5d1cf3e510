//! Dynamic loss scaling for f16 mixed precision (Micikevicius et al. 2018), with the
//! defaults of PyTorch's `GradScaler`: the output error is multiplied by a scale S
//! (initially 2¹⁶) so small errors survive f16, the gradients are divided by S again;
//! a step whose gradients hold an Inf or NaN is skipped and S halves, and S doubles
//! after 2000 clean steps in a row.

use serde::{Deserialize, Serialize};

/// The scaler's state (saved in checkpoints, so a resumed run continues it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// The current scale S.
    pub scale: f64,
    /// Clean steps in a row after which S doubles.
    pub growth_interval: u64,
    /// Clean steps since S last changed.
    pub clean_steps: u64,
    /// Steps skipped so far (non-finite gradients).
    pub skipped: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler {
            scale: 65536.0,
            growth_interval: 2000,
            clean_steps: 0,
            skipped: 0,
        }
    }
}

impl LossScaler {
    /// Takes a step's verdict: `finite` when every gradient is finite. Returns whether
    /// the step is applied (false: skip it; S has halved).
    pub fn update(&mut self, finite: bool) -> bool {
        if !finite {
            self.scale *= 0.5;
            self.clean_steps = 0;
            self.skipped += 1;
            return false;
        }
        self.clean_steps += 1;
        if self.clean_steps >= self.growth_interval {
            self.scale *= 2.0;
            self.clean_steps = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_grows_after_the_interval_and_backs_off_on_overflow() {
        let mut s = LossScaler {
            growth_interval: 3,
            ..LossScaler::default()
        };
        assert!(s.update(true) && s.update(true));
        assert_eq!(s.scale, 65536.0);
        assert!(s.update(true));
        assert_eq!((s.scale, s.clean_steps), (131072.0, 0));
        assert!(!s.update(false));
        assert_eq!((s.scale, s.clean_steps, s.skipped), (65536.0, 0, 1));
        // The count restarts after a skip: two clean steps do not grow it.
        assert!(s.update(true) && s.update(true));
        assert_eq!(s.scale, 65536.0);
    }
}

//! Parameter groups (PyTorch's): settings for the parameters whose names match a glob.

use serde::{Deserialize, Serialize};

use super::{Optimizer, OptimizerState, StepContext};
use crate::error::{Error, Result};
use crate::nn::{Grads, Params};

/// Settings for the parameters whose names match a pattern (PyTorch's parameter groups).
///
/// `params` is a glob over parameter names (`*` matches any run of characters; `|`
/// separates alternatives), e.g. `*.bias` or `fc1.*|fc2.*`. The first matching group
/// wins. `lr_scale` multiplies the learning rate (for every optimizer: the group's
/// parameter change is scaled, which is what a per-group learning rate does in SGD,
/// momentum, Adam and their relatives); `weight_decay` replaces the optimizer's decay
/// (first-order optimizers).
///
/// ```
/// use futureprop::optim::ParamGroup;
/// let g: ParamGroup = "*.bias:weight_decay=0,lr_scale=2".parse().unwrap();
/// assert!(g.matches("fc1.bias") && !g.matches("fc1.weight"));
/// assert_eq!((g.lr_scale, g.weight_decay), (2.0, Some(0.0)));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamGroup {
    /// Glob over parameter names.
    pub params: String,
    /// Learning-rate multiplier; default 1.
    #[serde(default = "one")]
    pub lr_scale: f64,
    /// Weight decay of the group; default: the optimizer's.
    #[serde(default)]
    pub weight_decay: Option<f64>,
}

fn one() -> f64 {
    1.0
}

/// `*`-glob match of `name` against `pattern` (alternatives separated by `|`).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn one_pattern(p: &[u8], s: &[u8]) -> bool {
        // Iterative wildcard matching with backtracking to the last `*`.
        let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
        while j < s.len() {
            if i < p.len() && p[i] != b'*' && p[i] == s[j] {
                i += 1;
                j += 1;
            } else if i < p.len() && p[i] == b'*' {
                star = Some(i);
                mark = j;
                i += 1;
            } else if let Some(st) = star {
                i = st + 1;
                mark += 1;
                j = mark;
            } else {
                return false;
            }
        }
        p[i..].iter().all(|&c| c == b'*')
    }
    pattern
        .split('|')
        .any(|alt| one_pattern(alt.trim().as_bytes(), name.as_bytes()))
}

impl ParamGroup {
    /// Whether the parameter `name` belongs to the group.
    pub fn matches(&self, name: &str) -> bool {
        glob_match(&self.params, name)
    }
}

impl std::str::FromStr for ParamGroup {
    type Err = Error;

    /// `PATTERN:key=value,key=value` with keys `lr_scale` and `weight_decay`.
    fn from_str(s: &str) -> Result<Self> {
        let (pat, rest) = s.rsplit_once(':').ok_or_else(|| {
            Error::config(
                "param group",
                format!("'{s}' is not PATTERN:key=value[,key=value], e.g. '*.bias:weight_decay=0'"),
            )
        })?;
        let mut g = ParamGroup {
            params: pat.to_string(),
            lr_scale: 1.0,
            weight_decay: None,
        };
        for kv in rest.split(',').filter(|k| !k.trim().is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                Error::config("param group", format!("'{kv}' in '{s}' is not key=value"))
            })?;
            let x: f64 = v.trim().parse().map_err(|_| {
                Error::config("param group", format!("'{v}' in '{s}' is not a number"))
            })?;
            match k.trim().replace('-', "_").as_str() {
                "lr_scale" => g.lr_scale = x,
                "weight_decay" => g.weight_decay = Some(x),
                other => {
                    return Err(Error::unknown(
                        "param group key",
                        other,
                        &["lr_scale", "weight_decay"],
                    ));
                }
            }
        }
        g.validate()?;
        Ok(g)
    }
}

impl ParamGroup {
    pub(super) fn validate(&self) -> Result<()> {
        if !(self.lr_scale.is_finite() && self.lr_scale >= 0.0) {
            return Err(Error::config(
                "param group",
                format!("{}: lr_scale must be a non-negative number", self.params),
            ));
        }
        if self
            .weight_decay
            .is_some_and(|w| !(w.is_finite() && w >= 0.0))
        {
            return Err(Error::config(
                "param group",
                format!(
                    "{}: weight_decay must be a non-negative number",
                    self.params
                ),
            ));
        }
        Ok(())
    }
}

/// Scales each group's parameter change by its `lr_scale` around any optimizer.
pub(super) struct Grouped {
    pub(super) inner: Box<dyn Optimizer>,
    pub(super) groups: Vec<ParamGroup>,
}

impl Optimizer for Grouped {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn needs_trace(&self) -> bool {
        self.inner.needs_trace()
    }

    fn needs_curvature(&self) -> bool {
        self.inner.needs_curvature()
    }

    fn splits_over_batch(&self) -> bool {
        self.inner.splits_over_batch()
    }

    fn reduces_own_update(&self) -> bool {
        self.inner.reduces_own_update()
    }

    fn state_copies(&self) -> u64 {
        self.inner.state_copies()
    }

    fn step(&mut self, params: &mut Params, grads: &Grads, ctx: &mut StepContext) -> Result<()> {
        let scaled: Vec<(String, f64, crate::tensor::Tensor)> = params
            .iter()
            .filter_map(|(n, t)| {
                let s = self.groups.iter().find(|g| g.matches(n))?.lr_scale;
                (s != 1.0).then(|| (n.to_string(), s, t.clone()))
            })
            .collect();
        self.inner.step(params, grads, ctx)?;
        for (n, s, old) in scaled {
            // θ ← θ₀ + s(θ₁ − θ₀)
            params.get_mut(&n)?.axpby(s, 1.0 - s, &old)?;
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.inner.learning_rate()
    }

    fn state(&self) -> OptimizerState {
        self.inner.state()
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        self.inner.load_state(state)
    }
}

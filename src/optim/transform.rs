//! Gradient transformations in the style of optax: small pieces with explicit state
//! that map an update to an update. A named optimizer is a [`Chain`] of them.

use super::Schedule;
use crate::error::Result;
use crate::nn::{Grads, Params};
use crate::tensor::Tensor;

/// One transformation of the update.
pub trait Transform: Send + std::fmt::Debug {
    /// Short name used in state keys.
    fn name(&self) -> &'static str;
    /// Rewrites `updates` in place. `step` counts from 1.
    fn update(&mut self, updates: &mut Grads, params: &Params, step: u64) -> Result<()>;
    /// The state tensors, keyed by `"{slot}/{param}"`.
    fn state(&self) -> Params {
        Params::new()
    }
    /// Restores state saved by [`Transform::state`].
    fn load_state(&mut self, _state: &Params) -> Result<()> {
        Ok(())
    }
}

/// Applies transforms in order.
#[derive(Debug, Default)]
pub struct Chain(pub Vec<Box<dyn Transform>>);

impl Chain {
    /// Runs every transform.
    pub fn update(&mut self, updates: &mut Grads, params: &Params, step: u64) -> Result<()> {
        for t in &mut self.0 {
            t.update(updates, params, step)?;
        }
        Ok(())
    }
}

/// Rescales the whole update so its global norm is at most `max_norm`
/// (Pascanu et al. 2013): g ← g · min(1, c/‖g‖).
#[derive(Debug, Clone)]
pub struct ClipByGlobalNorm {
    /// The norm bound c.
    pub max_norm: f64,
}

impl Transform for ClipByGlobalNorm {
    fn name(&self) -> &'static str {
        "clip_norm"
    }
    fn update(&mut self, updates: &mut Grads, _: &Params, _: u64) -> Result<()> {
        let n = updates.global_norm();
        if n > self.max_norm && n > 0.0 {
            updates.scale_in_place(self.max_norm / n);
        }
        Ok(())
    }
}

/// Adds `wd · θ` to the update: L2 regularisation when placed before the moment
/// transforms (coupled), decoupled weight decay (Loshchilov & Hutter 2019) when placed
/// after them. Parameters whose name matches `skip` (e.g. biases) are left alone.
#[derive(Debug, Clone)]
pub struct AddDecayedWeights {
    /// The decay coefficient.
    pub weight_decay: f64,
    /// Skip parameters whose name ends with one of these suffixes.
    pub skip_suffixes: Vec<String>,
}

impl Transform for AddDecayedWeights {
    fn name(&self) -> &'static str {
        "decay"
    }
    fn update(&mut self, updates: &mut Grads, params: &Params, _: u64) -> Result<()> {
        if self.weight_decay == 0.0 {
            return Ok(());
        }
        for (n, u) in updates.iter_mut() {
            if self.skip_suffixes.iter().any(|s| n.ends_with(s.as_str())) {
                continue;
            }
            u.axpy(self.weight_decay, params.get(n)?)?;
        }
        Ok(())
    }
}

fn state_get(state: &Params, key: &str) -> Option<Tensor> {
    state.get(key).ok().cloned()
}

/// Heavy-ball momentum as PyTorch's SGD: b ← μb + g; update = b, or g + μb with
/// Nesterov (Sutskever et al. 2013). μ = 0 is plain SGD.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// μ.
    pub momentum: f64,
    /// Nesterov look-ahead.
    pub nesterov: bool,
    buf: Params,
}

impl Trace {
    /// A momentum transform.
    pub fn new(momentum: f64, nesterov: bool) -> Self {
        Trace {
            momentum,
            nesterov,
            buf: Params::new(),
        }
    }
}

impl Transform for Trace {
    fn name(&self) -> &'static str {
        "momentum"
    }
    fn update(&mut self, updates: &mut Grads, _: &Params, _: u64) -> Result<()> {
        for (n, u) in updates.iter_mut() {
            match self.buf.get_mut(n) {
                Ok(b) => b.axpby(self.momentum, 1.0, u)?,
                Err(_) => self.buf.insert(n, u.clone()),
            }
            let b = self.buf.get(n)?;
            if self.nesterov {
                u.axpy(self.momentum, b)?;
            } else {
                *u = b.clone();
            }
        }
        Ok(())
    }
    fn state(&self) -> Params {
        prefixed("buf", &self.buf)
    }
    fn load_state(&mut self, state: &Params) -> Result<()> {
        self.buf = unprefixed("buf", state);
        Ok(())
    }
}

/// Adam's moment scaling (Kingma & Ba 2015): m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g²,
/// update = m̂/(√v̂ + ε) with m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ).
#[derive(Debug, Clone)]
pub struct ScaleByAdam {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    m: Params,
    v: Params,
}

impl ScaleByAdam {
    /// An Adam moment transform.
    pub fn new(beta1: f64, beta2: f64, eps: f64) -> Self {
        ScaleByAdam {
            beta1,
            beta2,
            eps,
            m: Params::new(),
            v: Params::new(),
        }
    }
}

impl Transform for ScaleByAdam {
    fn name(&self) -> &'static str {
        "adam"
    }
    fn update(&mut self, updates: &mut Grads, _: &Params, step: u64) -> Result<()> {
        let c1 = 1.0 - self.beta1.powi(step as i32);
        let c2 = 1.0 - self.beta2.powi(step as i32);
        for (n, u) in updates.iter_mut() {
            if !self.m.contains(n) {
                self.m.insert(n, Tensor::zeros(u.shape(), u.dtype()));
                self.v.insert(n, Tensor::zeros(u.shape(), u.dtype()));
            }
            let m = self.m.get_mut(n)?;
            m.axpby(self.beta1, 1.0 - self.beta1, u)?;
            let v = self.v.get_mut(n)?;
            v.axpby_sq(self.beta2, 1.0 - self.beta2, u)?;
            *u = Tensor::adam_ratio(self.m.get(n)?, self.v.get(n)?, c1, c2, self.eps)?;
        }
        Ok(())
    }
    fn state(&self) -> Params {
        let mut s = prefixed("m", &self.m);
        for (n, t) in prefixed("v", &self.v).iter() {
            s.insert(n, t.clone());
        }
        s
    }
    fn load_state(&mut self, state: &Params) -> Result<()> {
        self.m = unprefixed("m", state);
        self.v = unprefixed("v", state);
        Ok(())
    }
}

/// Multiplies the update by −η(k): the last link of every chain, turning a direction into
/// a step that is added to the parameters.
#[derive(Debug, Clone)]
pub struct ScaleByLearningRate {
    /// Base rate η₀.
    pub lr: f64,
    /// Multiplier of η₀ per step.
    pub schedule: Schedule,
}

impl ScaleByLearningRate {
    /// η at step `step` (1-based).
    pub fn rate(&self, step: u64) -> f64 {
        self.lr * self.schedule.factor(step.saturating_sub(1))
    }
}

impl Transform for ScaleByLearningRate {
    fn name(&self) -> &'static str {
        "lr"
    }
    fn update(&mut self, updates: &mut Grads, _: &Params, step: u64) -> Result<()> {
        updates.scale_in_place(-self.rate(step));
        Ok(())
    }
}

fn prefixed(prefix: &str, p: &Params) -> Params {
    let mut out = Params::new();
    for (n, t) in p.iter() {
        out.insert(format!("{prefix}/{n}"), t.clone());
    }
    out
}

fn unprefixed(prefix: &str, state: &Params) -> Params {
    let mut out = Params::new();
    let pre = format!("{prefix}/");
    for (n, _) in state.iter() {
        if let Some(rest) = n.strip_prefix(&pre)
            && let Some(t) = state_get(state, n)
        {
            out.insert(rest, t);
        }
    }
    out
}

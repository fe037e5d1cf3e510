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
    /// Copies of the parameters its state holds (the memory estimate).
    fn slots(&self) -> u64 {
        0
    }
}

/// `state`/`load_state` for a transform whose whole state is one [`Params`] field.
macro_rules! single_state {
    ($field:ident) => {
        fn state(&self) -> Params {
            self.$field.clone()
        }
        fn load_state(&mut self, state: &Params) -> Result<()> {
            self.$field = state.clone();
            Ok(())
        }
    };
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
    /// (glob, decay) pairs: the first glob matching a parameter name sets its decay.
    pub overrides: Vec<(String, f64)>,
}

impl Transform for AddDecayedWeights {
    fn name(&self) -> &'static str {
        "decay"
    }
    fn update(&mut self, updates: &mut Grads, params: &Params, _: u64) -> Result<()> {
        for (n, u) in updates.iter_mut() {
            let wd = self
                .overrides
                .iter()
                .find(|(g, _)| super::glob_match(g, n))
                .map_or(self.weight_decay, |(_, w)| *w);
            if wd != 0.0 {
                u.axpy(wd, params.get(n)?)?;
            }
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
    fn slots(&self) -> u64 {
        1
    }

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
    /// AMSGrad (Reddi, Kale & Kumar 2018): divide by √max(v₁..vₜ) (as PyTorch, the
    /// maximum of the uncorrected v, then the bias correction).
    pub amsgrad: bool,
    m: Params,
    v: Params,
    vmax: Params,
}

impl ScaleByAdam {
    /// An Adam moment transform.
    pub fn new(beta1: f64, beta2: f64, eps: f64) -> Self {
        ScaleByAdam {
            beta1,
            beta2,
            eps,
            amsgrad: false,
            m: Params::new(),
            v: Params::new(),
            vmax: Params::new(),
        }
    }
}

impl Transform for ScaleByAdam {
    fn slots(&self) -> u64 {
        2 + u64::from(self.amsgrad)
    }

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
            if !self.amsgrad {
                // One fused pass: the same arithmetic as the AMSGrad path below.
                let m = self.m.get_mut(n)?;
                let v = self.v.get_mut(n)?;
                Tensor::adam_step(u, m, v, (self.beta1, self.beta2), (c1, c2), self.eps)?;
                continue;
            }
            let m = self.m.get_mut(n)?;
            m.axpby(self.beta1, 1.0 - self.beta1, u)?;
            let v = self.v.get_mut(n)?;
            v.axpby_sq(self.beta2, 1.0 - self.beta2, u)?;
            let denom = if self.amsgrad {
                let v = self.v.get(n)?.clone();
                let vm = slot(&mut self.vmax, n, &v)?;
                vm.max_in_place(&v)?;
                vm.clone()
            } else {
                self.v.get(n)?.clone()
            };
            *u = Tensor::adam_ratio(self.m.get(n)?, &denom, c1, c2, self.eps)?;
        }
        Ok(())
    }
    fn state(&self) -> Params {
        let mut s = prefixed("m", &self.m);
        for (n, t) in prefixed("v", &self.v)
            .iter()
            .chain(prefixed("vmax", &self.vmax).iter())
        {
            s.insert(n, t.clone());
        }
        s
    }
    fn load_state(&mut self, state: &Params) -> Result<()> {
        self.m = unprefixed("m", state);
        self.v = unprefixed("v", state);
        self.vmax = unprefixed("vmax", state);
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

/// Clamps every update element to `[−c, c]`.
#[derive(Debug, Clone)]
pub struct ClipByValue {
    /// The bound c.
    pub max_abs: f64,
}

impl Transform for ClipByValue {
    fn name(&self) -> &'static str {
        "clip_value"
    }
    fn update(&mut self, updates: &mut Grads, _: &Params, _: u64) -> Result<()> {
        for (_, u) in updates.iter_mut() {
            *u = u.clamp_abs(self.max_abs);
        }
        Ok(())
    }
}

/// Fetches (creating with zeros shaped like `like`) the state slot `name` of `store`.
fn slot<'a>(store: &'a mut Params, name: &str, like: &Tensor) -> Result<&'a mut Tensor> {
    if !store.contains(name) {
        store.insert(name, Tensor::zeros(like.shape(), like.dtype()));
    }
    store.get_mut(name)
}

/// RMSProp (Hinton, Lecture 6e, 2012), as PyTorch: v ← αv + (1−α)g²; centred: ḡ ← αḡ +
/// (1−α)g and v − ḡ² in place of v; u = g/(√v + ε); with momentum μ: b ← μb + u, u = b.
#[derive(Debug, Clone, Default)]
pub struct ScaleByRms {
    /// α.
    pub decay: f64,
    /// ε.
    pub eps: f64,
    /// Subtract the squared mean gradient (Graves 2013).
    pub centered: bool,
    /// μ (0: none).
    pub momentum: f64,
    state: Params,
}

impl ScaleByRms {
    /// An RMSProp transform.
    pub fn new(decay: f64, eps: f64, centered: bool, momentum: f64) -> Self {
        ScaleByRms {
            decay,
            eps,
            centered,
            momentum,
            state: Params::new(),
        }
    }
}

impl Transform for ScaleByRms {
    fn slots(&self) -> u64 {
        1 + u64::from(self.centered) + u64::from(self.momentum > 0.0)
    }

    fn name(&self) -> &'static str {
        "rms"
    }
    fn update(&mut self, updates: &mut Grads, _: &Params, _: u64) -> Result<()> {
        for (n, u) in updates.iter_mut() {
            let a = self.decay;
            slot(&mut self.state, &format!("v/{n}"), u)?.axpby_sq(a, 1.0 - a, u)?;
            let mut v = self.state.get(&format!("v/{n}"))?.clone();
            if self.centered {
                let g = slot(&mut self.state, &format!("g/{n}"), u)?;
                g.axpby(a, 1.0 - a, u)?;
                v.axpby_sq(1.0, -1.0, &g.clone())?;
            }
            let mut r = Tensor::adam_ratio(u, &v, 1.0, 1.0, self.eps)?;
            if self.momentum > 0.0 {
                let b = slot(&mut self.state, &format!("b/{n}"), u)?;
                b.axpby(self.momentum, 1.0, &r)?;
                r = b.clone();
            }
            *u = r;
        }
        Ok(())
    }
    single_state!(state);
}

/// Adagrad (Duchi, Hazan & Singer 2011): s ← s + g², u = g/(√s + ε).
#[derive(Debug, Clone, Default)]
pub struct ScaleByAdagrad {
    /// ε.
    pub eps: f64,
    sum: Params,
}

impl ScaleByAdagrad {
    /// An Adagrad transform.
    pub fn new(eps: f64) -> Self {
        ScaleByAdagrad {
            eps,
            sum: Params::new(),
        }
    }
}

impl Transform for ScaleByAdagrad {
    fn slots(&self) -> u64 {
        1
    }

    fn name(&self) -> &'static str {
        "adagrad"
    }
    fn update(&mut self, updates: &mut Grads, _: &Params, _: u64) -> Result<()> {
        for (n, u) in updates.iter_mut() {
            let s = slot(&mut self.sum, n, u)?;
            s.axpby_sq(1.0, 1.0, u)?;
            *u = Tensor::adam_ratio(u, s, 1.0, 1.0, self.eps)?;
        }
        Ok(())
    }
    single_state!(sum);
}

/// NAdam as PyTorch (Dozat 2016, with momentum decay ψ = 0.004):
/// μₜ = β₁(1 − ½·0.96^{tψ}), m̂ = μₜ₊₁m/(1 − Πᵢ≤ₜ₊₁μᵢ) + (1 − μₜ)g/(1 − Πᵢ≤ₜμᵢ),
/// u = m̂/(√(v/(1−β₂ᵗ)) + ε).
#[derive(Debug, Clone)]
pub struct ScaleByNadam {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// ψ.
    pub momentum_decay: f64,
    state: Params,
}

impl ScaleByNadam {
    /// A NAdam transform.
    pub fn new(beta1: f64, beta2: f64, eps: f64) -> Self {
        ScaleByNadam {
            beta1,
            beta2,
            eps,
            momentum_decay: 0.004,
            state: Params::new(),
        }
    }
    fn mu(&self, t: u64) -> f64 {
        self.beta1 * (1.0 - 0.5 * 0.96f64.powf(t as f64 * self.momentum_decay))
    }
}

impl Transform for ScaleByNadam {
    fn slots(&self) -> u64 {
        2
    }

    fn name(&self) -> &'static str {
        "nadam"
    }
    fn update(&mut self, updates: &mut Grads, _: &Params, step: u64) -> Result<()> {
        // Πμ over steps so far is a function of the step alone.
        let prod: f64 = (1..=step).map(|t| self.mu(t)).product();
        let (mu, mu_next) = (self.mu(step), self.mu(step + 1));
        let c2 = 1.0 - self.beta2.powi(step as i32);
        for (n, u) in updates.iter_mut() {
            slot(&mut self.state, &format!("m/{n}"), u)?.axpby(self.beta1, 1.0 - self.beta1, u)?;
            slot(&mut self.state, &format!("v/{n}"), u)?.axpby_sq(
                self.beta2,
                1.0 - self.beta2,
                u,
            )?;
            let mut mhat = self
                .state
                .get(&format!("m/{n}"))?
                .scale(mu_next / (1.0 - prod * mu_next));
            mhat.axpy((1.0 - mu) / (1.0 - prod), u)?;
            *u = Tensor::adam_ratio(&mhat, self.state.get(&format!("v/{n}"))?, 1.0, c2, self.eps)?;
        }
        Ok(())
    }
    single_state!(state);
}

/// Lion (Chen et al. 2023, "Symbolic discovery of optimization algorithms"):
/// u = sign(β₁m + (1−β₁)g), then m ← β₂m + (1−β₂)g.
#[derive(Debug, Clone)]
pub struct ScaleByLion {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    m: Params,
}

impl ScaleByLion {
    /// A Lion transform.
    pub fn new(beta1: f64, beta2: f64) -> Self {
        ScaleByLion {
            beta1,
            beta2,
            m: Params::new(),
        }
    }
}

impl Transform for ScaleByLion {
    fn slots(&self) -> u64 {
        1
    }

    fn name(&self) -> &'static str {
        "lion"
    }
    fn update(&mut self, updates: &mut Grads, _: &Params, _: u64) -> Result<()> {
        for (n, u) in updates.iter_mut() {
            let m = slot(&mut self.m, n, u)?;
            let mut c = m.clone();
            c.axpby(self.beta1, 1.0 - self.beta1, u)?;
            m.axpby(self.beta2, 1.0 - self.beta2, u)?;
            *u = c.unary(crate::tensor::Unary::Sign);
        }
        Ok(())
    }
    single_state!(m);
}

/// Layer-wise trust ratio (You et al. 2017 LARS, 2020 LAMB): each parameter tensor's
/// update is scaled by c·‖θ‖/‖u‖ (1 when either norm is 0). Parameters whose name ends
/// with a suffix in `skip` (biases) keep ratio 1.
#[derive(Debug, Clone)]
pub struct ScaleByTrustRatio {
    /// The trust coefficient c.
    pub coefficient: f64,
    /// Suffixes of parameters left unscaled.
    pub skip_suffixes: Vec<String>,
}

impl Transform for ScaleByTrustRatio {
    fn name(&self) -> &'static str {
        "trust_ratio"
    }
    fn update(&mut self, updates: &mut Grads, params: &Params, _: u64) -> Result<()> {
        for (n, u) in updates.iter_mut() {
            if self.skip_suffixes.iter().any(|s| n.ends_with(s.as_str())) {
                continue;
            }
            let (pn, un) = (params.get(n)?.norm(), u.norm());
            if pn > 0.0 && un > 0.0 {
                u.scale_in_place(self.coefficient * pn / un);
            }
        }
        Ok(())
    }
}

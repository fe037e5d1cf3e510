//! Equilibrium propagation (Scellier & Bengio 2017) and contrastive Hebbian learning
//! (Movellan 1991) on a layered network with symmetric weights.
//!
//! The model's Linear layers supply the weights: layer l connects state sₗ₋₁ to sₗ
//! (s₀ = x, clamped, entering as given) and the same Wₗ carries feedback from sₗ to sₗ₋₁
//! (symmetric). The model's activation layers are not used: the state nonlinearity ρ is
//! the rule's `eqprop_rho` (`hard-sigmoid` ρ(s) = clip(s, 0, 1) as in the paper,
//! `sigmoid` or `tanh`). Hopfield-like energy, per sample:
//!
//!   E(s) = ½Σₗ‖sₗ‖² − Σₗ ρ(sₗ)ᵀ(Wₗρ(sₗ₋₁) + bₗ),   C = ½‖s_L − y‖²,   F = E + βC.
//!
//! Relaxation: sₗ ← sₗ + ε(ρ'(sₗ)⊙(Wₗρ(sₗ₋₁) + bₗ + Wₗ₊₁ᵀρ(sₗ₊₁)) − sₗ) − εβ∂C/∂sₗ, all
//! layers at once; with the hard sigmoid states are clipped to [0, 1] after each step and
//! ρ' = 1 inside (the paper's implementation). The input's drive W₁x + b₁ is computed
//! once per batch. States start at 0 for every batch.
//!
//! `eqprop`: a free phase of T₁ steps (β = 0) to s⁰, then a nudged phase of T₂ steps
//! from s⁰ with β. The update (gradient sign, batch mean) is
//! ∂L/∂Wₗ ≈ −(ρ(sₗᵝ)ρ(sₗ₋₁ᵝ)ᵀ − ρ(sₗ⁰)ρ(sₗ₋₁⁰)ᵀ)/β, which tends to the gradient of
//! C at the free fixed point as β → 0 (the paper's theorem). Nudging (`eqprop_nudge`):
//! `one-sided`; `random-sign` (β's sign drawn per batch); `symmetric` (Laborieux et al.
//! 2021: phases at +β and −β, difference over 2β, error O(β²) instead of O(β)).
//! Per-layer learning rates: `--param-group 'fc1.*:lr_scale=…'`.
//!
//! `chl`: the free phase, then a clamped phase with the output held at the target while
//! the hidden states relax T₂ steps; update −(ρρᵀ|clamped − ρρᵀ|free). Its feedback may
//! be weakened by γ (Xie & Seung 2003, "Equivalence of backpropagation and contrastive
//! Hebbian learning in a layered network"): the drive of layer l is
//! Wₗρ(sₗ₋₁) + bₗ + γWₗ₊₁ᵀρ(sₗ₊₁), the relaxation of the energy Σₗ γ^(l−L)Eₗ, and layer
//! l's update is scaled by γ^(l−L) (L the output layer); as γ → 0 the CHL update tends to
//! backprop's gradient of the squared error. γ = 1 is Movellan's CHL.
//!
//! Prediction is the output state after a free phase of T₁ steps.

use rand::{Rng as _, SeedableRng};

use super::{Batch, Relaxation, Rule, RuleSpec, StepOutput};
use crate::error::{Error, Result};
use crate::nn::{Grads, Loss, Model, Params, Trace};
use crate::settings::{Described, Range, Settings, at_least, parse, real};
pub use crate::tensor::Rho;
use crate::tensor::Tensor;

/// Which contrast the rule learns from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nudge {
    /// Free vs +β.
    OneSided,
    /// Free vs ±β, the sign drawn per batch.
    RandomSign,
    /// +β vs −β.
    Symmetric,
    /// Free vs output clamped to the target (CHL).
    Clamped,
}

impl Nudge {
    fn parse(s: &str) -> Result<Nudge> {
        match s {
            "one-sided" => Ok(Nudge::OneSided),
            "random-sign" => Ok(Nudge::RandomSign),
            "symmetric" => Ok(Nudge::Symmetric),
            other => Err(Error::unknown(
                "eqprop nudge",
                other,
                &["one-sided", "random-sign", "symmetric"],
            )),
        }
    }
}

/// One relaxation step of a layer (see [`Tensor::relax_step`]).
fn fused_step(
    s: &Tensor,
    fwd: &Tensor,
    feedback: Option<&Tensor>,
    target: Option<&Tensor>,
    beta: f64,
    eps: f64,
    rho: Rho,
) -> Result<(Tensor, f64, f64)> {
    s.relax_step(fwd, feedback, target, beta, eps, rho)
}

crate::settings_struct! {
    /// The relaxation of EqProp and CHL.
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default)]
    pub struct RelaxSettings: "eqprop" {
        /// Free-phase steps T₁.
        pub free_steps: usize = 20,
        /// Nudged (or clamped) phase steps T₂.
        pub nudge_steps: usize = 4,
        /// Relaxation step ε, in (0, 1].
        pub step: f64 = 0.5,
        /// State nonlinearity: `hard-sigmoid` (clip to [0, 1]), `sigmoid`, `tanh`.
        pub rho: String = "hard-sigmoid".into(),
        /// Stop relaxing when the residual ‖∂E/∂state‖ per sample falls below this; 0:
        /// always run every step.
        #[legacy = "relax_tolerance"]
        pub tolerance: f64 = 0.0,
        /// Record the energy at every relaxation step (two extra passes per layer and
        /// step).
        #[legacy = "relax_trace"]
        pub trace: bool = false,
    }
}

impl Settings for RelaxSettings {
    fn validate(&self) -> Result<()> {
        at_least("eqprop_free_steps", self.free_steps as u64, 1)?;
        at_least("eqprop_nudge_steps", self.nudge_steps as u64, 1)?;
        real("eqprop_step", self.step, Range::Positive)?;
        if self.step > 1.0 {
            return Err(Error::config(
                "eqprop_step (--eqprop-step)",
                format!("{} (ε must be in (0, 1])", self.step),
            ));
        }
        real("relax_tolerance", self.tolerance, Range::NonNegative)?;
        Rho::parse(&self.rho).map(|_| ())
    }
}

crate::settings_struct! {
    /// EqProp's nudge.
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default)]
    pub struct NudgeSettings: "eqprop" {
        /// Nudging strength β.
        pub beta: f64 = 1.0,
        /// `one-sided`, `random-sign` or `symmetric` (Laborieux et al. 2021: the
        /// one-sided estimate's O(β) bias kept MNIST at 10 % after a third of an epoch
        /// with unit inputs, symmetric reached 92 %).
        pub nudge: String = "symmetric".into(),
    }
}

impl Settings for NudgeSettings {
    fn validate(&self) -> Result<()> {
        real("eqprop_beta", self.beta, Range::NonZero)?;
        Nudge::parse(&self.nudge).map(|_| ())
    }
}

pub(super) const EQPROP: RuleSpec = RuleSpec {
    name: "eqprop",
    summary: "equilibrium propagation: free and β-nudged relaxations of a symmetric energy network",
    paper: "Scellier & Bengio 2017",
    settings: || [RelaxSettings::fields(), NudgeSettings::fields()].concat(),
    // States live in [0, 1] (hard sigmoid), as the paper's inputs.
    normalize: Some("unit"),
    build: |t| {
        let n: NudgeSettings = parse("rule eqprop", t)?;
        Ok(Box::new(Equilibrium::new(
            parse("rule eqprop", t)?,
            Some(n),
        )?))
    },
    ..RuleSpec::DEFAULT
};

crate::settings_struct! {
    /// CHL's feedback.
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default)]
    pub struct ChlSettings: "chl" {
        /// Feedback strength γ in (0, 1]: each layer receives γ times its upper layer's
        /// feedback and its update is scaled by γ^(l−L) (Xie & Seung 2003); 1 is
        /// Movellan's CHL, γ → 0 tends to backprop. 0.1: MNIST after one epoch of
        /// `mlp:784-1000-1000-10` (Adam 1e-3) 95.3 %, against 91.9 % at 1, 94.4 % at 0.3
        /// and 94.3 % at 0.03.
        pub feedback: f64 = 0.1,
    }
}

impl Settings for ChlSettings {
    fn validate(&self) -> Result<()> {
        real("chl_feedback", self.feedback, Range::Positive)?;
        if self.feedback > 1.0 {
            return Err(Error::config(
                "chl_feedback (--chl-feedback)",
                format!("{} (γ must be in (0, 1])", self.feedback),
            ));
        }
        Ok(())
    }
}

pub(super) const CHL: RuleSpec = RuleSpec {
    name: "chl",
    summary: "contrastive Hebbian learning: free vs output-clamped relaxations, feedback weakened by γ",
    paper: "Movellan 1991; Xie & Seung 2003",
    settings: || [RelaxSettings::fields(), ChlSettings::fields()].concat(),
    build: |t| {
        let c: ChlSettings = parse("rule chl", t)?;
        c.validate()?;
        let mut r = Equilibrium::new(parse("rule chl", t)?, None)?;
        r.feedback = c.feedback;
        Ok(Box::new(r))
    },
    ..RuleSpec::DEFAULT
};

/// Equilibrium propagation or contrastive Hebbian learning.
#[derive(Debug)]
pub struct Equilibrium {
    cfg: RelaxSettings,
    beta: f64,
    rho: Rho,
    nudge: Nudge,
    rng: crate::Rng,
    relaxation: Relaxation,
    /// Feedback strength γ (CHL; 1 for EqProp).
    feedback: f64,
}

/// The layered network's weights, from the model's Linear layers.
struct Net {
    w: Vec<Tensor>,
    b: Vec<Option<Tensor>>,
    names: Vec<String>,
}

impl Net {
    fn new(model: &Model, params: &Params, rule: &str) -> Result<Net> {
        let (hidden, last) = model.block_walk(rule, crate::nn::BlockShape::LAYERED)?;
        let mut net = Net {
            w: Vec::new(),
            b: Vec::new(),
            names: Vec::new(),
        };
        for blk in hidden.iter().chain(std::iter::once(&last)) {
            let name = model.layers()[blk.linear].name().to_string();
            net.w.push(params.get(&format!("{name}.weight"))?.clone());
            net.b
                .push(params.get(&format!("{name}.bias")).ok().cloned());
            net.names.push(name);
        }
        Ok(net)
    }
}

impl Equilibrium {
    /// `eqprop` with its nudge, or `chl` (`nudge` none: the output is clamped).
    pub fn new(cfg: RelaxSettings, nudge: Option<NudgeSettings>) -> Result<Self> {
        cfg.validate()?;
        let rho = Rho::parse(&cfg.rho)?;
        let (nudge, beta) = match nudge {
            None => (Nudge::Clamped, 1.0),
            Some(n) => {
                n.validate()?;
                (Nudge::parse(&n.nudge)?, n.beta)
            }
        };
        let rng = crate::Rng::seed_from_u64(0xe9_9e0b);
        Ok(Equilibrium {
            cfg,
            beta,
            rho,
            nudge,
            rng,
            relaxation: Relaxation::default(),
            feedback: 1.0,
        })
    }

    /// Relaxes `s` for `steps` steps from its current value. `beta` nudges the output
    /// toward `y`; `clamp` holds the output at `y`. `x_drive` = W₁x + b₁. Returns
    /// per-step (energy, residual) when `log`.
    #[allow(clippy::too_many_arguments)]
    fn relax(
        &self,
        net: &Net,
        x_drive: &Tensor,
        s: &mut [Tensor],
        y: Option<&Tensor>,
        beta: f64,
        clamp: bool,
        steps: usize,
        log: Option<&mut Relaxation>,
    ) -> Result<()> {
        let eps = self.cfg.step;
        let tol = self.cfg.tolerance;
        let nl = s.len();
        let n = x_drive.dims2()?.0.max(1) as f64;
        let mut log = log;
        if clamp {
            s[nl - 1] = y
                .ok_or_else(|| Error::config("chl", "needs targets"))?
                .clone();
        }
        for t in 0..=steps {
            let r: Vec<Tensor> = s.iter().map(|v| self.rho.apply(v)).collect();
            // Feed-forward and feedback parts of each layer's drive.
            let mut fwd = Vec::with_capacity(nl);
            for l in 0..nl {
                let f = if l == 0 {
                    x_drive.clone()
                } else {
                    let mut f = r[l - 1].matmul(false, &net.w[l], true)?;
                    if let Some(b) = &net.b[l] {
                        f.add_row(b)?;
                    }
                    f
                };
                fwd.push(f);
            }
            let mut new = Vec::with_capacity(nl);
            let (mut energy, mut res_sq) = (0.0, 0.0);
            for l in 0..nl {
                // The energy costs two passes per layer: every step with `relax_trace`,
                // else before the first and at the last step only.
                if log.is_some() && (self.cfg.trace || t == 0 || t == steps || tol > 0.0) {
                    energy +=
                        self.layer_weight(l, nl) * (0.5 * s[l].sum_sq() - r[l].dot(&fwd[l])?);
                }
                if clamp && l == nl - 1 {
                    new.push(s[l].clone());
                    continue;
                }
                let feedback = if l + 1 < nl {
                    let mut f = r[l + 1].matmul(false, &net.w[l + 1], false)?;
                    if self.feedback != 1.0 {
                        f.scale_in_place(self.feedback);
                    }
                    Some(f)
                } else {
                    None
                };
                let target = if l == nl - 1 && beta != 0.0 {
                    Some(y.ok_or_else(|| Error::config("eqprop", "needs targets"))?)
                } else {
                    None
                };
                let (next, r2, cost) = fused_step(
                    &s[l],
                    &fwd[l],
                    feedback.as_ref(),
                    target,
                    beta,
                    eps,
                    self.rho,
                )?;
                res_sq += r2;
                energy += beta * cost;
                new.push(next);
            }
            let residual = res_sq.sqrt() / n.sqrt();
            if let Some(log) = log.as_deref_mut() {
                if self.cfg.trace || t == 0 || t == steps || tol > 0.0 {
                    log.energy.push(energy / n);
                }
                log.residual.push(residual);
            }
            if t == steps || (tol > 0.0 && residual < tol) {
                break;
            }
            if let Some(log) = log.as_deref_mut() {
                log.steps += 1;
            }
            s.clone_from_slice(&new);
        }
        Ok(())
    }

    /// Layer l's weight γ^(l−L) in the energy and the update (1 without weakened
    /// feedback).
    fn layer_weight(&self, l: usize, layers: usize) -> f64 {
        if self.feedback == 1.0 {
            1.0
        } else {
            self.feedback.powi(-((layers - 1 - l) as i32))
        }
    }

    /// The free-phase states for inputs `x`.
    fn free_phase(
        &self,
        net: &Net,
        x: &Tensor,
        log: Option<&mut Relaxation>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let n = x.dims2()?.0;
        let mut x_drive = x.matmul(false, &net.w[0], true)?;
        if let Some(b) = &net.b[0] {
            x_drive.add_row(b)?;
        }
        let mut s: Vec<Tensor> = net
            .w
            .iter()
            .map(|w| Tensor::zeros(&[n, w.shape()[0]], x.dtype()))
            .collect();
        self.relax(
            net,
            &x_drive,
            &mut s,
            None,
            0.0,
            false,
            self.cfg.free_steps,
            log,
        )?;
        Ok((x_drive, s))
    }

    /// The contrastive update ca·Σρ(aₗ)ρ(aₗ₋₁)ᵀ + cb·Σρ(bₗ)ρ(bₗ₋₁)ᵀ (sums over the batch;
    /// ρ(s₋₁) = x) and the same for biases, for two relaxed states `a` and `b`. The
    /// coefficients scale the small n×width factors, not the weight-sized products; the
    /// first layer, whose input x is clamped in both phases, takes one product:
    /// (ca·ρ(a₀) + cb·ρ(b₀))ᵀx.
    fn contrast(
        &self,
        net: &Net,
        x: &Tensor,
        (a, ca): (&[Tensor], f64),
        (b, cb): (&[Tensor], f64),
        g: &mut Grads,
    ) -> Result<()> {
        let ra: Vec<Tensor> = a.iter().map(|v| self.rho.apply(v)).collect();
        let rb: Vec<Tensor> = b.iter().map(|v| self.rho.apply(v)).collect();
        let nl = a.len();
        for l in 0..nl {
            let (ca, cb) = (ca * self.layer_weight(l, nl), cb * self.layer_weight(l, nl));
            let mut left = ra[l].scale(ca);
            let gw = if l == 0 {
                left.axpy(cb, &rb[0])?;
                left.matmul(true, x, false)?
            } else {
                let mut gw = left.matmul(true, &ra[l - 1], false)?;
                gw.matmul_acc(&rb[l].scale(cb), true, &rb[l - 1], false)?;
                gw
            };
            g.insert(format!("{}.weight", net.names[l]), gw);
            if net.b[l].is_some() {
                let mut gb = ra[l].sum_rows()?.scale(ca);
                gb.axpy(cb, &rb[l].sum_rows()?)?;
                g.insert(format!("{}.bias", net.names[l]), gb);
            }
        }
        Ok(())
    }
}

impl Rule for Equilibrium {
    fn splits_over_batch(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        if self.nudge == Nudge::Clamped {
            "chl"
        } else {
            "eqprop"
        }
    }

    fn step(
        &mut self,
        model: &Model,
        params: &Params,
        batch: &Batch,
        loss: Loss,
    ) -> Result<StepOutput> {
        let net = Net::new(model, params, self.name())?;
        let x = &batch.x;
        let (n, _) = x.dims2()?;
        let nf = n.max(1) as f64;
        let outputs = net.w.last().map(|w| w.shape()[0]).unwrap_or(0);
        let y = batch.target.dense(n, outputs, x.dtype())?;
        let mut log = Relaxation::default();
        let (x_drive, free) = self.free_phase(&net, x, Some(&mut log))?;
        self.relaxation = log;
        let prediction = free.last().cloned();
        let value = match &prediction {
            Some(p) => loss.eval(p, &batch.target)?.0,
            None => f64::NAN,
        };
        let t2 = self.cfg.nudge_steps;
        let beta = self.beta;
        let mut grads = Grads::new();
        match self.nudge {
            Nudge::OneSided | Nudge::RandomSign => {
                let b = if self.nudge == Nudge::RandomSign && self.rng.random::<bool>() {
                    -beta
                } else {
                    beta
                };
                let mut s = free.clone();
                self.relax(&net, &x_drive, &mut s, Some(&y), b, false, t2, None)?;
                let c = 1.0 / (b * nf);
                self.contrast(&net, x, (&s, -c), (&free, c), &mut grads)?;
            }
            Nudge::Symmetric => {
                let (mut sp, mut sm) = (free.clone(), free.clone());
                self.relax(&net, &x_drive, &mut sp, Some(&y), beta, false, t2, None)?;
                self.relax(&net, &x_drive, &mut sm, Some(&y), -beta, false, t2, None)?;
                let c = 1.0 / (2.0 * beta * nf);
                self.contrast(&net, x, (&sp, -c), (&sm, c), &mut grads)?;
            }
            Nudge::Clamped => {
                let mut s = free.clone();
                self.relax(&net, &x_drive, &mut s, Some(&y), 0.0, true, t2, None)?;
                self.contrast(&net, x, (&s, -1.0 / nf), (&free, 1.0 / nf), &mut grads)?;
            }
        }
        // A trace with the input only: these rules keep no feed-forward records.
        let trace = Trace::default();
        Ok(StepOutput {
            grads,
            trace,
            loss: value,
            prediction,
        })
    }

    fn predict(&self, model: &Model, params: &Params, x: &Tensor) -> Result<Tensor> {
        let net = Net::new(model, params, self.name())?;
        let (_, s) = self.free_phase(&net, x, None)?;
        Ok(s.last().cloned().unwrap_or_else(|| x.clone()))
    }

    fn relaxation(&self) -> Option<&Relaxation> {
        Some(&self.relaxation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_f32_hard_sigmoid_fast_path_matches_the_general_step() {
        // 37 elements: four chunks of 8 and a remainder.
        let v = |k: usize| -> Vec<f64> {
            (0..37)
                .map(|i| (((i * 31 + k * 17) % 23) as f64) / 11.0 - 0.6)
                .collect()
        };
        let t64 = |x: Vec<f64>| Tensor::from_vec_f64(&[1, 37], x).unwrap();
        let (s, f, b) = (t64(v(1)), t64(v(2)), t64(v(3)));
        let (want, r_want, _) =
            fused_step(&s, &f, Some(&b), None, 0.0, 0.5, Rho::HardSigmoid).unwrap();
        let to32 = |t: &Tensor| t.to_dtype(crate::tensor::DType::F32);
        let (got, r_got, c) = fused_step(
            &to32(&s),
            &to32(&f),
            Some(&to32(&b)),
            None,
            0.0,
            0.5,
            Rho::HardSigmoid,
        )
        .unwrap();
        assert_eq!(got.dtype(), crate::tensor::DType::F32);
        assert_eq!(c, 0.0);
        for (a, w) in got.to_vec_f64().iter().zip(want.to_vec_f64()) {
            assert!((a - w).abs() < 1e-6, "{a} vs {w}");
        }
        assert!((r_got - r_want).abs() < 1e-5 * r_want.max(1.0));
    }
}

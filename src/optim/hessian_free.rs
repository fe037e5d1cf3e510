//! Hessian-free optimisation (Martens 2010, "Deep learning via Hessian-free
//! optimization"): each step approximately minimises the damped quadratic model
//! q(d) = gᵀd + ½dᵀ(G + λI)d by conjugate gradient, with G·v the Gauss–Newton product
//! from the objective (R-operator), then
//!
//! - starts CG from the previous solution decayed by 0.95;
//! - stops CG on Martens' relative-progress test: i > k and
//!   (qᵢ − qᵢ₋ₖ)/qᵢ < k·ε with k = max(10, 0.1i), ε = 5·10⁻⁴;
//! - backtracks over CG iterates kept at iterations ⌈1.3ʲ⌉, taking the last one before
//!   the true loss stops improving;
//! - adapts λ Levenberg–Marquardt style from the reduction ratio
//!   ρ = (f(θ + d) − f(θ))/q(d): λ ← 1.5λ when ρ < ¼, λ ← ⅔λ when ρ > ¾;
//! - takes the step with an Armijo backtracking line search (factor 0.8).

use super::{Objective, Optimizer, OptimizerState, StepContext};
use crate::error::{Error, Result};
use crate::nn::{Grads, Params};

/// Hessian-free optimizer state.
pub struct HessianFree {
    lr: f64,
    damping: f64,
    max_cg: usize,
    previous: Option<Grads>,
    step: u64,
}

impl HessianFree {
    /// HF with step scale `lr` (1 is the Newton step), initial damping λ and at most
    /// `max_cg` CG iterations per step.
    pub fn new(lr: f64, damping: f64, max_cg: usize) -> Self {
        HessianFree {
            lr,
            damping,
            max_cg: max_cg.max(1),
            previous: None,
            step: 0,
        }
    }

    /// The current damping λ.
    pub fn damping(&self) -> f64 {
        self.damping
    }

    fn apply(&self, obj: &mut dyn Objective, params: &Params, v: &Grads) -> Result<Grads> {
        let mut a = obj.gauss_newton_vector(params, v)?;
        // Entries of v without curvature (none for spec-built models) still get λv.
        for (n, t) in v.iter() {
            if !a.contains(n) {
                a.insert(n, t.scale(0.0));
            }
        }
        a.axpy(self.damping, v)?;
        Ok(a)
    }
}

fn quad(g: &Grads, d: &Grads, ad: &Grads) -> Result<f64> {
    Ok(g.dot(d)? + 0.5 * d.dot(ad)?)
}

impl Optimizer for HessianFree {
    fn needs_curvature(&self) -> bool {
        true
    }

    fn name(&self) -> &str {
        "hf"
    }

    fn step(&mut self, params: &mut Params, grads: &Grads, ctx: &mut StepContext) -> Result<()> {
        let obj: &mut dyn Objective = match ctx.objective.as_mut() {
            Some(o) => &mut **o,
            None => {
                return Err(Error::config(
                    "optimizer",
                    "hf needs an objective with Gauss–Newton products (the trainer provides one)",
                ));
            }
        };
        self.step += 1;
        let g = grads;
        if g.global_norm() == 0.0 {
            return Ok(());
        }
        let (f0, _) = obj.evaluate(params)?;
        // CG on (G + λI)d = −g from d₀ = 0.95·d_prev.
        let mut d = match &self.previous {
            Some(p) => {
                let mut d = p.clone();
                d.scale_in_place(0.95);
                d
            }
            None => g.zeros_like(),
        };
        let mut ad = self.apply(obj, params, &d)?;
        let mut r = g.clone();
        r.scale_in_place(-1.0);
        r.axpy(-1.0, &ad)?;
        let mut p = r.clone();
        let mut rr = r.dot(&r)?;
        let mut qs = vec![quad(g, &d, &ad)?];
        let mut snapshots: Vec<(usize, Grads)> = Vec::new();
        let mut next_keep = 1.0f64;
        for i in 1..=self.max_cg {
            let ap = self.apply(obj, params, &p)?;
            let pap = p.dot(&ap)?;
            if pap <= 0.0 || rr == 0.0 {
                break;
            }
            let alpha = rr / pap;
            d.axpy(alpha, &p)?;
            ad.axpy(alpha, &ap)?;
            r.axpy(-alpha, &ap)?;
            let rr_new = r.dot(&r)?;
            qs.push(quad(g, &d, &ad)?);
            if i as f64 >= next_keep.ceil() {
                snapshots.push((i, d.clone()));
                next_keep *= 1.3;
            }
            let k = 10.max(i / 10);
            if i > k {
                let (qi, qk) = (qs[i], qs[i - k]);
                if qi < 0.0 && (qi - qk) / qi < k as f64 * 5e-4 {
                    break;
                }
            }
            let beta = rr_new / rr;
            rr = rr_new;
            let mut np = r.clone();
            np.axpy(beta, &p)?;
            p = np;
        }
        if snapshots.last().is_none_or(|(_, s)| *s != d) {
            snapshots.push((usize::MAX, d.clone()));
        }
        self.previous = Some(d.clone());
        // Backtrack over the kept iterates: from the last, step back while it helps.
        let loss_at = |obj: &mut dyn Objective, step: &Grads, scale: f64| -> Result<f64> {
            let mut q = params.clone();
            q.axpy(scale, step)?;
            Ok(obj.evaluate(&q)?.0)
        };
        let mut j = snapshots.len() - 1;
        let mut fj = loss_at(obj, &snapshots[j].1, 1.0)?;
        while j > 0 {
            let f_prev = loss_at(obj, &snapshots[j - 1].1, 1.0)?;
            if f_prev < fj {
                j -= 1;
                fj = f_prev;
            } else {
                break;
            }
        }
        let chosen = snapshots.swap_remove(j).1;
        // Levenberg–Marquardt adjustment of λ from the reduction ratio.
        let a_chosen = self.apply(obj, params, &chosen)?;
        let predicted = quad(g, &chosen, &a_chosen)?;
        let rho = if predicted < 0.0 {
            (fj - f0) / predicted
        } else {
            0.0
        };
        if rho < 0.25 {
            self.damping *= 1.5;
        } else if rho > 0.75 {
            self.damping *= 2.0 / 3.0;
        }
        // Armijo backtracking on the step length.
        let slope = g.dot(&chosen)?;
        let mut rate = self.lr;
        let mut f = if rate == 1.0 {
            fj
        } else {
            loss_at(obj, &chosen, rate)?
        };
        let mut tries = 0;
        while f > f0 + 1e-2 * rate * slope && tries < 60 {
            rate *= 0.8;
            f = loss_at(obj, &chosen, rate)?;
            tries += 1;
        }
        if f <= f0 {
            params.axpy(rate, &chosen)?;
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.lr
    }

    fn state(&self) -> OptimizerState {
        let mut tensors = Params::new();
        if let Some(p) = &self.previous {
            for (n, t) in p.iter() {
                tensors.insert(format!("previous/{n}"), t.clone());
            }
        }
        let lambda = crate::tensor::Tensor::from_vec_f64(&[1], vec![self.damping])
            .unwrap_or_else(|_| crate::tensor::Tensor::zeros(&[1], crate::tensor::DType::F64));
        tensors.insert("damping", lambda);
        OptimizerState {
            step: self.step,
            tensors,
        }
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        self.step = state.step;
        if let Ok(l) = state.tensors.get("damping") {
            self.damping = l.get(0)?;
        }
        let mut prev = Params::new();
        for (n, t) in state.tensors.iter() {
            if let Some(k) = n.strip_prefix("previous/") {
                prev.insert(k, t.clone());
            }
        }
        self.previous = (!prev.is_empty()).then_some(prev);
        Ok(())
    }
}

crate::settings_struct! {
    /// Hessian-free optimisation (Martens 2010).
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct HfSettings {
        /// Initial Tikhonov damping λ (adapted by the Levenberg–Marquardt rule).
        pub damping: f64 = 1.0,
        /// Maximum CG iterations per step.
        pub max_cg: usize = 50,
    }
}

impl crate::settings::Settings for HfSettings {
    fn validate(&self) -> Result<()> {
        use crate::settings::{Range, at_least, real};
        real("damping", self.damping, Range::Positive)?;
        at_least("max_cg", self.max_cg as u64, 1)
    }
}

/// Hessian-free.
pub const HF: super::OptimizerSpec = super::OptimizerSpec {
    name: "hf",
    summary: "Hessian-free: CG on damped Gauss–Newton products, LM damping",
    paper: "Martens 2010",
    settings: <HfSettings as crate::settings::Described>::fields,
    lr: Some(1.0),
    reads: &[],
    build: |cfg, _| {
        let s: HfSettings = super::own(cfg)?;
        Ok(Box::new(HessianFree::new(cfg.lr, s.damping, s.max_cg)))
    },
    ..super::OptimizerSpec::DEFAULT
};

//! L-BFGS (Liu & Nocedal 1989) with a strong-Wolfe line search (Nocedal & Wright 2006,
//! Algorithms 3.5–3.6, cubic interpolation in the zoom phase).
//!
//! Each optimizer step is one L-BFGS iteration on the step's objective: the direction
//! d = −H g from the two-loop recursion over the last `history` pairs
//! (sₖ = θₖ₊₁ − θₖ, yₖ = gₖ₊₁ − gₖ) with H₀ = (sᵀy/yᵀy)·I, then a step length α that
//! satisfies f(θ + αd) ≤ f(θ) + c₁αgᵀd and |g(θ + αd)ᵀd| ≤ c₂|gᵀd|. Both gradients of a
//! pair come from the same objective (the same minibatch), so with large fixed batches
//! it is the stochastic mode of Schraudolph, Yu & Günter (2007); with the whole training
//! set as one batch it is classical full-batch L-BFGS.

use super::{Objective, Optimizer, OptimizerState, StepContext};
use crate::error::{Error, Result};
use crate::nn::{Grads, Params};

/// Sufficient-decrease constant c₁.
const C1: f64 = 1e-4;
/// Curvature constant c₂ (0.9 for quasi-Newton methods).
const C2: f64 = 0.9;

/// L-BFGS state: the curvature pairs.
pub struct Lbfgs {
    lr: f64,
    history: usize,
    max_evals: usize,
    pairs: Vec<(Params, Params)>,
    step: u64,
}

impl Lbfgs {
    /// L-BFGS with initial step `lr` (the first step is scaled to length `lr`; later
    /// steps start the line search at α = 1) and `history` pairs.
    pub fn new(lr: f64, history: usize) -> Self {
        Lbfgs {
            lr,
            history: history.max(1),
            max_evals: 25,
            pairs: Vec::new(),
            step: 0,
        }
    }

    /// d = −H g by the two-loop recursion.
    fn direction(&self, g: &Grads) -> Result<Grads> {
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(self.pairs.len());
        for (s, y) in self.pairs.iter().rev() {
            let rho = 1.0 / y.dot(s)?;
            let a = rho * s.dot(&q)?;
            q.axpy(-a, y)?;
            alphas.push((rho, a));
        }
        if let Some((s, y)) = self.pairs.last() {
            q.scale_in_place(s.dot(y)? / y.dot(y)?);
        }
        for ((s, y), (rho, a)) in self.pairs.iter().zip(alphas.into_iter().rev()) {
            let b = rho * y.dot(&q)?;
            q.axpy(a - b, s)?;
        }
        q.scale_in_place(-1.0);
        Ok(q)
    }
}

/// The point θ + αd restricted to the entries of `d`.
fn at(params: &Params, d: &Grads, alpha: f64) -> Result<Params> {
    let mut p = params.clone();
    p.axpy(alpha, d)?;
    Ok(p)
}

/// Minimiser of the cubic through (a, fa, ga) and (b, fb, gb), kept inside [a, b]
/// (Nocedal & Wright eq. 3.59); bisection when the cubic has no real minimiser.
fn cubic(a: f64, fa: f64, ga: f64, b: f64, fb: f64, gb: f64) -> f64 {
    let d1 = ga + gb - 3.0 * (fa - fb) / (a - b);
    let disc = d1 * d1 - ga * gb;
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    if disc < 0.0 {
        return 0.5 * (a + b);
    }
    let d2 = (b - a).signum() * disc.sqrt();
    let t = b - (b - a) * (gb + d2 - d1) / (gb - ga + 2.0 * d2);
    if t.is_finite() {
        // Stay away from the ends so the interval shrinks.
        t.clamp(lo + 0.1 * (hi - lo), hi - 0.1 * (hi - lo))
    } else {
        0.5 * (a + b)
    }
}

struct Point {
    alpha: f64,
    f: f64,
    /// Directional derivative g(θ + αd)ᵀd.
    slope: f64,
    g: Grads,
}

fn probe(obj: &mut dyn Objective, params: &Params, d: &Grads, alpha: f64) -> Result<Point> {
    let (f, g) = obj.evaluate(&at(params, d, alpha)?)?;
    let slope = g.dot(d)?;
    Ok(Point { alpha, f, slope, g })
}

/// Strong-Wolfe line search from α₀. Returns the accepted point, or the best point seen
/// when the evaluation budget runs out.
fn line_search(
    obj: &mut dyn Objective,
    params: &Params,
    d: &Grads,
    f0: f64,
    slope0: f64,
    alpha0: f64,
    max_evals: usize,
) -> Result<Point> {
    let mut prev = Point {
        alpha: 0.0,
        f: f0,
        slope: slope0,
        g: Grads::new(),
    };
    let mut alpha = alpha0;
    let mut evals = 0;
    let mut best: Option<Point> = None;
    let keep_best = |best: &mut Option<Point>, p: &Point| {
        if best.as_ref().is_none_or(|b| p.f < b.f) {
            *best = Some(Point {
                alpha: p.alpha,
                f: p.f,
                slope: p.slope,
                g: p.g.clone(),
            });
        }
    };
    // Bracketing phase (Algorithm 3.5).
    let (mut lo, mut hi) = loop {
        let cur = probe(obj, params, d, alpha)?;
        evals += 1;
        keep_best(&mut best, &cur);
        if cur.f > f0 + C1 * alpha * slope0 || (evals > 1 && cur.f >= prev.f) {
            break (prev, cur);
        }
        if cur.slope.abs() <= -C2 * slope0 {
            return Ok(cur);
        }
        if cur.slope >= 0.0 {
            break (cur, prev);
        }
        if evals >= max_evals {
            return best.ok_or_else(|| Error::config("line search", "no evaluation"));
        }
        let next = alpha * 2.0;
        prev = cur;
        alpha = next;
    };
    // Zoom phase (Algorithm 3.6).
    while evals < max_evals {
        let a = cubic(lo.alpha, lo.f, lo.slope, hi.alpha, hi.f, hi.slope);
        let cur = probe(obj, params, d, a)?;
        evals += 1;
        keep_best(&mut best, &cur);
        if cur.f > f0 + C1 * a * slope0 || cur.f >= lo.f {
            hi = cur;
        } else {
            if cur.slope.abs() <= -C2 * slope0 {
                return Ok(cur);
            }
            if cur.slope * (hi.alpha - lo.alpha) >= 0.0 {
                hi = lo;
            }
            lo = cur;
        }
        if (hi.alpha - lo.alpha).abs() < 1e-16 {
            break;
        }
    }
    best.ok_or_else(|| Error::config("line search", "no evaluation"))
}

impl Optimizer for Lbfgs {
    fn name(&self) -> &str {
        "lbfgs"
    }

    fn state_copies(&self) -> u64 {
        // m pairs (s, y), the last gradient and the last parameters.
        2 * self.history as u64 + 2
    }

    fn step(&mut self, params: &mut Params, grads: &Grads, ctx: &mut StepContext) -> Result<()> {
        let obj = ctx.objective.as_mut().ok_or_else(|| {
            Error::config(
                "optimizer",
                "lbfgs needs an objective to search along its direction (the trainer provides one)",
            )
        })?;
        self.step += 1;
        let gnorm = grads.global_norm();
        if gnorm == 0.0 || !gnorm.is_finite() {
            return Ok(());
        }
        let (f0, g0) = obj.evaluate(params)?;
        let mut d = self.direction(&g0)?;
        let mut slope = g0.dot(&d)?;
        if slope >= 0.0 {
            // Not a descent direction (stale curvature): restart from steepest descent.
            self.pairs.clear();
            d = g0.clone();
            d.scale_in_place(-1.0);
            slope = g0.dot(&d)?;
        }
        let alpha0 = if self.pairs.is_empty() {
            (self.lr / d.global_norm()).min(1.0)
        } else {
            1.0
        };
        let p = line_search(*obj, params, &d, f0, slope, alpha0, self.max_evals)?;
        if p.f > f0 || p.alpha == 0.0 {
            return Ok(());
        }
        let mut s = d;
        s.scale_in_place(p.alpha);
        let mut y = p.g;
        y.axpy(-1.0, &g0)?;
        params.axpy(1.0, &s)?;
        if s.dot(&y)? > 1e-10 * y.dot(&y)?.max(f64::MIN_POSITIVE) {
            self.pairs.push((s, y));
            if self.pairs.len() > self.history {
                self.pairs.remove(0);
            }
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.lr
    }

    fn state(&self) -> OptimizerState {
        let mut tensors = Params::new();
        for (i, (s, y)) in self.pairs.iter().enumerate() {
            for (n, t) in s.iter() {
                tensors.insert(format!("s{i}/{n}"), t.clone());
            }
            for (n, t) in y.iter() {
                tensors.insert(format!("y{i}/{n}"), t.clone());
            }
        }
        OptimizerState {
            step: self.step,
            tensors,
        }
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        self.step = state.step;
        self.pairs.clear();
        for i in 0.. {
            let (s_pre, y_pre) = (format!("s{i}/"), format!("y{i}/"));
            let (mut s, mut y) = (Params::new(), Params::new());
            for (n, t) in state.tensors.iter() {
                if let Some(k) = n.strip_prefix(&s_pre) {
                    s.insert(k, t.clone());
                } else if let Some(k) = n.strip_prefix(&y_pre) {
                    y.insert(k, t.clone());
                }
            }
            if s.is_empty() {
                break;
            }
            self.pairs.push((s, y));
        }
        Ok(())
    }
}

crate::settings_struct! {
    /// L-BFGS (Liu & Nocedal 1989).
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct LbfgsSettings {
        /// History length m: the (s, y) pairs kept.
        #[legacy = "lbfgs_history"]
        pub history: usize = 10,
    }
}

impl crate::settings::Settings for LbfgsSettings {
    fn validate(&self) -> Result<()> {
        crate::settings::at_least("lbfgs_history", self.history as u64, 1)
    }
}

/// L-BFGS.
pub const LBFGS: super::OptimizerSpec = super::OptimizerSpec {
    name: "lbfgs",
    summary: "L-BFGS: two-loop recursion with strong-Wolfe line search",
    paper: "Liu & Nocedal 1989",
    settings: <LbfgsSettings as crate::settings::Described>::fields,
    // The line search takes a Newton-like step from α = 1.
    lr: Some(1.0),
    reads: &[],
    build: |cfg, _| {
        let s: LbfgsSettings = super::own(cfg)?;
        Ok(Box::new(Lbfgs::new(cfg.lr, s.history)))
    },
    ..super::OptimizerSpec::DEFAULT
};

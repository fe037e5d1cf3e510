//! Sparse training: a 0/1 mask on every Linear and convolution weight of the model's
//! top level (layers inside blocks stay dense), kept in the parameter store as
//! `mask.<weight>` so checkpoints carry it and a resumed run continues with it.
//!
//! - **static**: a random mask at each layer's density, fixed for the run;
//! - **set** (Mocanu et al. 2018) and **rigl** (Evci et al. 2020, "Rigging the lottery"):
//!   every ΔT steps until `sparse_end` of the run, each layer drops the
//!   k = round(f(t)·active) active weights of smallest magnitude and grows k inactive
//!   ones, f(t) = α/2·(1 + cos(πt/T_end)) (the cosine drop schedule). SET grows at random;
//!   RigL where the dense update of the step is largest — the rule's update, whatever the
//!   rule (so RigL runs under DFA as under BP). Grown weights start at zero. As in the
//!   reference code, a connection dropped at this update may be grown again.
//! - **prune**: gradual magnitude pruning (Zhu & Gupta 2017) from dense: every ΔT steps
//!   until T_end each layer keeps its largest weights at sparsity s·(1 − (1 − t/T_end)³).
//!
//! Layer densities (`sparse_distribution`): `uniform` (every layer at 1 − s) or `erk`
//! (Erdős–Rényi–Kernel): density ∝ (Σ dims)/(Π dims) of the weight's
//! (out, in[, kh, kw]), scaled so the model's weights are at 1 − s overall; a layer the
//! scale would take above 1 is dense and the scale is solved again for the rest.
//!
//! Each step the rule's update is masked before the optimizer sees it (an inactive
//! weight's optimizer state only decays) and the weights are masked after it, so the
//! sparsity is exact after every step. FLOPs per step are the sparse model's, counted as
//! in the RigL paper (appendix H): 3·f_S per example (forward, input gradient, weight
//! gradient at the current densities), plus f_D − f_S on RigL's update steps for the
//! dense gradient; f_S and f_D are the masked products' forward FLOPs, sparse and dense.

use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::nn::{Grads, LayerKind, Model, Params};
use crate::tensor::Tensor;

crate::settings_struct! {
    /// Sparse training settings.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default)]
    pub struct SparseConfig {
        /// Sparse training of the Linear and conv weights: `none`, `static` (a random
        /// mask fixed for the run), `set` (drop the smallest, grow at random), `rigl` (drop
        /// the smallest, grow where the update is largest) or `prune` (gradual magnitude
        /// pruning from dense).
        pub sparse: String = "none".into(),
        /// Fraction of the sparse weights that are zero (over all of them).
        pub sparsity: f64 = 0.9,
        /// Layer densities: `erk` (Erdős–Rényi–Kernel) or `uniform`.
        pub sparse_distribution: String = "erk".into(),
        /// Steps ΔT between mask updates (set, rigl, prune).
        pub sparse_every: u64 = 100,
        /// Drop fraction α at step 0 of the cosine schedule (set, rigl).
        pub sparse_drop_fraction: f64 = 0.3,
        /// Fraction of the run's steps (epochs × steps per epoch; `max_steps` cuts the
        /// run short without compressing the schedule, so a resumed run follows the
        /// same one) after which the masks stop changing (set, rigl, prune).
        pub sparse_end: f64 = 0.75,
    }
}

/// How the masks change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Fixed random mask.
    Static,
    /// Drop by magnitude, grow at random.
    Set,
    /// Drop by magnitude, grow by the update's magnitude.
    Rigl,
    /// Gradual magnitude pruning from dense.
    Prune,
}

impl SparseConfig {
    /// The method, or `None` for dense training.
    pub fn method(&self) -> Result<Option<Method>> {
        Ok(Some(match self.sparse.as_str() {
            "none" => return Ok(None),
            "static" => Method::Static,
            "set" => Method::Set,
            "rigl" => Method::Rigl,
            "prune" => Method::Prune,
            other => {
                return Err(Error::unknown(
                    "sparse (--sparse)",
                    other,
                    &["none", "static", "set", "rigl", "prune"],
                ));
            }
        }))
    }

    /// Every setting in its range; the error names the setting and the value.
    pub fn validate(&self) -> Result<()> {
        use crate::settings::{Range::*, at_least, real};
        self.method()?;
        real("sparsity", self.sparsity, Fraction)?;
        if !matches!(self.sparse_distribution.as_str(), "erk" | "uniform") {
            return Err(Error::unknown(
                "sparse_distribution (--sparse-distribution)",
                &self.sparse_distribution,
                &["erk", "uniform"],
            ));
        }
        at_least("sparse_every", self.sparse_every, 1)?;
        real("sparse_drop_fraction", self.sparse_drop_fraction, Unit)?;
        real("sparse_end", self.sparse_end, Unit)
    }
}

/// Densities of weights of `dims` (out, in[, kh, kw]) at overall sparsity `sparsity`:
/// uniform, or Erdős–Rényi–Kernel with layers that would exceed 1 made dense.
pub fn layer_densities(dims: &[Vec<usize>], sparsity: f64, erk: bool) -> Vec<f64> {
    let size = |d: &Vec<usize>| d.iter().product::<usize>() as f64;
    if !erk {
        return vec![1.0 - sparsity; dims.len()];
    }
    let raw: Vec<f64> = dims
        .iter()
        .map(|d| d.iter().sum::<usize>() as f64 / size(d))
        .collect();
    let mut dense = vec![false; dims.len()];
    loop {
        // ε·Σ_sparse raw_l·n_l = (1 − s)·Σ_all n_l − Σ_dense n_l.
        let (mut rhs, mut divisor) = (0.0, 0.0);
        for (l, d) in dims.iter().enumerate() {
            let n = size(d);
            if dense[l] {
                rhs -= sparsity * n;
            } else {
                rhs += (1.0 - sparsity) * n;
                divisor += raw[l] * n;
            }
        }
        let eps = if divisor > 0.0 { rhs / divisor } else { 0.0 };
        let max = (0..dims.len())
            .filter(|&l| !dense[l])
            .map(|l| raw[l])
            .fold(0.0, f64::max);
        if eps * max > 1.0 {
            for l in 0..dims.len() {
                if !dense[l] && raw[l] == max {
                    dense[l] = true;
                }
            }
        } else {
            return (0..dims.len())
                .map(|l| if dense[l] { 1.0 } else { eps * raw[l] })
                .collect();
        }
    }
}

/// One masked weight.
#[derive(Debug, Clone)]
pub struct SparseLayer {
    /// The weight's parameter name.
    pub key: String,
    /// Its mask's parameter name, `mask.<key>`.
    pub mask_key: String,
    /// (out, in[, kh, kw]) for ERK.
    pub dims: Vec<usize>,
    /// Elements of the weight.
    pub size: usize,
    /// Target density at the end of the run.
    pub density: f64,
    /// Multiply-adds of the dense weight per example.
    pub macs: f64,
}

/// What a mask update did, per layer: (dropped, grown).
pub type Changes = Vec<(usize, usize)>;

/// The masks of a run and their schedule.
#[derive(Debug)]
pub struct Sparsity {
    method: Method,
    cfg: SparseConfig,
    layers: Vec<SparseLayer>,
    /// T_end: the last step at which masks change.
    end_step: u64,
    seed: u64,
    updates: u64,
    /// Σ over this process's steps of the sparse and the dense model's training FLOPs.
    flops: (f64, f64),
    /// The masked products' forward FLOPs per example at the current masks (read from
    /// them at the first step, so after a resume's, and again after each mask update).
    sparse_forward: Option<f64>,
    steps: u64,
}

impl Sparsity {
    /// The masked layers of `model` with their densities, or `None` for a dense run;
    /// the masks are drawn (dense for `prune`), put in `params` and applied.
    pub fn new(
        cfg: &SparseConfig,
        model: &Model,
        params: &mut Params,
        total_steps: u64,
        seed: u64,
    ) -> Result<Option<Sparsity>> {
        let Some(method) = cfg.method()? else {
            return Ok(None);
        };
        let mut layers = Vec::new();
        for l in model.layers() {
            let (dims, positions) = match l.kind() {
                LayerKind::Linear {
                    inputs, outputs, ..
                } => (vec![outputs, inputs], 1),
                LayerKind::Conv2d {
                    window,
                    out_channels,
                    groups,
                    ..
                } => {
                    let (h, w) = window.output()?;
                    let (kh, kw) = window.kernel;
                    let cin = window.channels / groups.max(1);
                    (vec![out_channels, cin, kh, kw], h * w)
                }
                _ => continue,
            };
            let key = format!("{}.weight", l.name());
            let size = params.get(&key)?.len();
            layers.push(SparseLayer {
                mask_key: format!("mask.{key}"),
                key,
                macs: (size * positions) as f64,
                size,
                dims,
                density: 1.0,
            });
        }
        if layers.is_empty() {
            return Err(Error::config(
                "sparse (--sparse)",
                "sparse training masks Linear and convolution weights at the model's top level; this model has none",
            ));
        }
        let dims: Vec<Vec<usize>> = layers.iter().map(|l| l.dims.clone()).collect();
        let densities = layer_densities(&dims, cfg.sparsity, cfg.sparse_distribution == "erk");
        let mut rng = crate::Rng::seed_from_u64(seed ^ 0x5A5A_0F0F_1234_8765);
        for (l, d) in layers.iter_mut().zip(densities) {
            l.density = d;
            let w = params.get(&l.key)?;
            let mut mask = Tensor::zeros(w.shape(), w.dtype());
            if method == Method::Prune {
                mask = Tensor::full(w.shape(), 1.0, w.dtype());
            } else {
                let active = active_count(d, l.size);
                let idx = rand::seq::index::sample(&mut rng, l.size, active).into_vec();
                mask.fill_at(&idx, 1.0)?;
            }
            params.insert(l.mask_key.clone(), mask);
        }
        let end_step = ((cfg.sparse_end * total_steps as f64).floor() as u64).max(1);
        let s = Sparsity {
            method,
            cfg: cfg.clone(),
            layers,
            end_step,
            seed,
            updates: 0,
            flops: (0.0, 0.0),
            sparse_forward: None,
            steps: 0,
        };
        s.apply(params)?;
        Ok(Some(s))
    }

    /// The masked layers.
    pub fn layers(&self) -> &[SparseLayer] {
        &self.layers
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The drop fraction f(t) = α/2·(1 + cos(πt/T_end)).
    pub fn drop_fraction(&self, step: u64) -> f64 {
        let t = (step as f64 / self.end_step as f64).min(1.0);
        self.cfg.sparse_drop_fraction / 2.0 * (1.0 + (std::f64::consts::PI * t).cos())
    }

    /// Whether the masks change after optimizer step `step` (1-based).
    pub fn updates_at(&self, step: u64) -> bool {
        match self.method {
            Method::Static => false,
            Method::Set | Method::Rigl => {
                step.is_multiple_of(self.cfg.sparse_every) && step < self.end_step
            }
            Method::Prune => {
                (step.is_multiple_of(self.cfg.sparse_every) && step <= self.end_step)
                    || step == self.end_step
            }
        }
    }

    /// Zeroes the update of every inactive weight.
    pub fn mask_grads(&self, params: &Params, grads: &mut Grads) -> Result<()> {
        for l in &self.layers {
            if let Ok(g) = grads.get_mut(&l.key) {
                *g = g.mul(params.get(&l.mask_key)?)?;
            }
        }
        Ok(())
    }

    /// W ← W ⊙ M for every masked weight.
    pub fn apply(&self, params: &mut Params) -> Result<()> {
        for l in &self.layers {
            let masked = params.get(&l.key)?.mul(params.get(&l.mask_key)?)?;
            params.insert(l.key.clone(), masked);
        }
        Ok(())
    }

    /// After optimizer step `step` (1-based) of `rows` examples: masks the weights, then
    /// updates the masks when one is due (`dense`: the step's unmasked update, which
    /// RigL grows by). Returns what an update did.
    pub fn after_step(
        &mut self,
        params: &mut Params,
        dense: Option<&Grads>,
        step: u64,
        rows: usize,
    ) -> Result<Option<Changes>> {
        self.apply(params)?;
        let due = self.updates_at(step);
        self.count_flops(params, rows, due && self.method == Method::Rigl)?;
        if !due {
            return Ok(None);
        }
        self.updates += 1;
        self.sparse_forward = None;
        // The same draws on every rank and after a resume: a function of (seed, step).
        let mut rng = crate::Rng::seed_from_u64(self.seed ^ step.wrapping_mul(0x9E37_79B9));
        let mut changes = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let mut mask = params.get(&l.mask_key)?.clone();
            let mut w = params.get(&l.key)?.clone();
            let active = mask.sum().round() as usize;
            let (drop, grow) = match self.method {
                Method::Static => (0, 0),
                Method::Set | Method::Rigl => {
                    let k = (self.drop_fraction(step) * active as f64).round() as usize;
                    (k, k)
                }
                Method::Prune => {
                    let t = (step as f64 / self.end_step as f64).min(1.0);
                    let s = (1.0 - l.density) * (1.0 - (1.0 - t).powi(3));
                    (active.saturating_sub(active_count(1.0 - s, l.size)), 0)
                }
            };
            let dropped = w.select_by_magnitude(&mask, true, drop, false)?;
            mask.fill_at(&dropped, 0.0)?;
            let grown = match self.method {
                Method::Rigl => {
                    let g = dense.and_then(|g| g.get(&l.key).ok()).ok_or_else(|| {
                        Error::config(
                            "sparse",
                            format!("rigl found no update for {} at its mask update", l.key),
                        )
                    })?;
                    g.select_by_magnitude(&mask, false, grow, true)?
                }
                Method::Set => {
                    let free = mask.positions(false);
                    let mut idx: Vec<usize> =
                        rand::seq::index::sample(&mut rng, free.len(), grow.min(free.len()))
                            .into_iter()
                            .map(|i| free[i])
                            .collect();
                    idx.sort_unstable();
                    idx
                }
                Method::Static | Method::Prune => Vec::new(),
            };
            mask.fill_at(&grown, 1.0)?;
            w.fill_at(&grown, 0.0)?;
            w = w.mul(&mask)?;
            params.insert(l.mask_key.clone(), mask);
            params.insert(l.key.clone(), w);
            changes.push((dropped.len(), grown.len()));
        }
        Ok(Some(changes))
    }

    /// The RigL paper's training FLOPs of this step, sparse and dense.
    fn count_flops(&mut self, params: &Params, rows: usize, dense_grad: bool) -> Result<()> {
        let fs = match self.sparse_forward {
            Some(f) => f,
            None => {
                let mut f = 0.0;
                for l in &self.layers {
                    f += 2.0 * l.macs * params.get(&l.mask_key)?.sum() / l.size.max(1) as f64;
                }
                self.sparse_forward = Some(f);
                f
            }
        };
        let fd: f64 = self.layers.iter().map(|l| 2.0 * l.macs).sum();
        let step = if dense_grad { 2.0 * fs + fd } else { 3.0 * fs };
        self.flops.0 += rows as f64 * step;
        self.flops.1 += rows as f64 * 3.0 * fd;
        self.steps += 1;
        Ok(())
    }

    /// The run's sparsity for `summary.json`: method, the reached sparsity per layer and
    /// overall, mask updates and FLOPs per step against the dense model's.
    pub fn summary(&self, params: &Params) -> Value {
        let mut layers = Vec::new();
        let (mut zeros, mut total) = (0.0, 0.0);
        for l in &self.layers {
            let active = params.get(&l.mask_key).map_or(f64::NAN, |m| m.sum());
            zeros += l.size as f64 - active;
            total += l.size as f64;
            layers.push(json!({
                "weight": l.key,
                "size": l.size,
                "density": active / l.size.max(1) as f64,
                "target_density": l.density,
            }));
        }
        let n = self.steps.max(1) as f64;
        json!({
            "method": self.cfg.sparse,
            "distribution": self.cfg.sparse_distribution,
            "sparsity": zeros / total.max(1.0),
            "target_sparsity": self.cfg.sparsity,
            "mask_updates": self.updates,
            "layers": layers,
            "training_flops_per_step": self.flops.0 / n,
            "dense_training_flops_per_step": self.flops.1 / n,
            "flops_fraction": if self.flops.1 > 0.0 { json!(self.flops.0 / self.flops.1) } else { Value::Null },
        })
    }
}

/// Active weights of a layer of `size` at `density`: round(d·n), at least one.
fn active_count(density: f64, size: usize) -> usize {
    ((density * size as f64).round() as usize).clamp(1.min(size), size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erk_densities_follow_the_formula() {
        // 784-1000-1000-10 at 90 %: ε·(n_in + n_out)/(n_in·n_out), overall 10 % dense.
        let dims = vec![vec![1000, 784], vec![1000, 1000], vec![10, 1000]];
        let d = layer_densities(&dims, 0.9, true);
        let sizes: Vec<f64> = dims.iter().map(|d| (d[0] * d[1]) as f64).collect();
        let total: f64 = sizes.iter().sum();
        let kept: f64 = d.iter().zip(&sizes).map(|(d, n)| d * n).sum();
        assert!((kept / total - 0.1).abs() < 1e-12);
        let raw = |d: &Vec<usize>| (d[0] + d[1]) as f64 / (d[0] * d[1]) as f64;
        let eps = d[0] / raw(&dims[0]);
        assert!((d[1] - eps * raw(&dims[1])).abs() < 1e-12);
        assert!(d[2] <= 1.0);
        // At 50 % the small output layer would exceed 1: it is dense, the rest rescaled.
        let d = layer_densities(&dims, 0.5, true);
        assert_eq!(d[2], 1.0);
        let kept: f64 = d.iter().zip(&sizes).map(|(d, n)| d * n).sum();
        assert!((kept / total - 0.5).abs() < 1e-12);
        assert!((d[0] / raw(&dims[0]) - d[1] / raw(&dims[1])).abs() < 1e-12);
        for d in layer_densities(&dims, 0.8, false) {
            assert!((d - 0.2).abs() < 1e-12);
        }
    }
}

//! Batch, group and instance normalisation, and dropout.
//!
//! Per sample, features are laid out as C channels × S positions (S = H·W for a 2-D map,
//! 1 for a feature vector). Each normalisation standardises x over one set of entries per
//! statistic k:
//! - BatchNorm (Ioffe & Szegedy 2015): the batch and the positions of one channel;
//! - GroupNorm (Wu & He 2018): the positions and C/G channels of one group in one sample;
//! - InstanceNorm (Ulyanov et al. 2016): GroupNorm with G = C.
//!
//! x̂ = (x − μₖ)/√(σₖ² + ε), y = γ_c x̂ + β_c. With g = γ_c ∂L/∂y the input gradient is
//! ∂L/∂x = (g − meanₖ(g) − x̂·meanₖ(g x̂))/√(σₖ² + ε). BatchNorm in evaluation uses its
//! running statistics instead, a fixed affine map: ∂L/∂x = g/√(σ²_run + ε). The running
//! statistics are buffers in the parameter store (`{name}.running_mean`,
//! `{name}.running_var`, never in a gradient), updated after each training step from the
//! batches the step saw: r ← (1 − m)·r + m·batch statistic, the variance unbiased, as
//! PyTorch does.

use std::sync::Mutex;

use rand::{Rng as _, SeedableRng};
use rayon::prelude::*;

use super::{Grads, Init, Layer, LayerKind, Params, Record, missing};
use crate::error::{Error, Result};
use crate::tensor::{DType, Storage, Tensor};

/// Which entries share a statistic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// One statistic per channel over the batch (BatchNorm).
    Batch,
    /// One statistic per sample and group of channels (GroupNorm; InstanceNorm when the
    /// groups are the channels).
    Group(usize),
}

/// Batch, group or instance normalisation of `[n, C·S]` inputs.
#[derive(Debug)]
pub struct Normalization {
    name: String,
    kind: NormKind,
    channels: usize,
    positions: usize,
    affine: bool,
    eps: f64,
    momentum: f64,
    /// Batch statistics (mean, unbiased variance) of training passes not yet folded into
    /// the running statistics.
    pending: Mutex<Vec<(Vec<f64>, Vec<f64>)>>,
}

impl Normalization {
    /// BatchNorm over `channels` × `positions` features (ε 1e-5, momentum 0.1, PyTorch's
    /// defaults). `positions` = 1 is BatchNorm1d, H·W is BatchNorm2d.
    pub fn batch(
        name: impl Into<String>,
        channels: usize,
        positions: usize,
        affine: bool,
    ) -> Result<Self> {
        Self::new(name.into(), NormKind::Batch, channels, positions, affine)
    }

    /// GroupNorm with `groups` groups of channels (each must divide `channels`).
    pub fn group(
        name: impl Into<String>,
        groups: usize,
        channels: usize,
        positions: usize,
        affine: bool,
    ) -> Result<Self> {
        Self::new(
            name.into(),
            NormKind::Group(groups),
            channels,
            positions,
            affine,
        )
    }

    /// InstanceNorm: GroupNorm with one group per channel.
    pub fn instance(
        name: impl Into<String>,
        channels: usize,
        positions: usize,
        affine: bool,
    ) -> Result<Self> {
        Self::group(name, channels, channels, positions, affine)
    }

    fn new(
        name: String,
        kind: NormKind,
        channels: usize,
        positions: usize,
        affine: bool,
    ) -> Result<Self> {
        if channels == 0 || positions == 0 {
            return Err(Error::config(
                format!("layer {name}"),
                "needs at least one channel and one position",
            ));
        }
        if let NormKind::Group(g) = kind
            && (g == 0 || !channels.is_multiple_of(g))
        {
            return Err(Error::config(
                format!("layer {name}"),
                format!("{g} groups must divide the {channels} channels"),
            ));
        }
        Ok(Normalization {
            name,
            kind,
            channels,
            positions,
            affine,
            eps: 1e-5,
            momentum: 0.1,
            pending: Mutex::new(Vec::new()),
        })
    }

    /// Sets the momentum of the running statistics (BatchNorm).
    pub fn with_momentum(mut self, momentum: f64) -> Result<Self> {
        if !(momentum > 0.0 && momentum <= 1.0) {
            return Err(Error::config(
                format!("layer {}", self.name),
                format!("momentum {momentum} must be in (0, 1]"),
            ));
        }
        self.momentum = momentum;
        Ok(self)
    }

    /// The kind of normalisation.
    pub fn norm_kind(&self) -> NormKind {
        self.kind
    }

    fn key(&self, what: &str) -> String {
        format!("{}.{what}", self.name)
    }

    /// Statistic index of entry (sample i, channel c) and the number of statistics.
    fn stat_of(&self, n: usize) -> (impl Fn(usize, usize) -> usize + '_, usize) {
        let (kind, c_all) = (self.kind, self.channels);
        let count = match kind {
            NormKind::Batch => c_all,
            NormKind::Group(g) => n * g,
        };
        (
            move |i: usize, c: usize| match kind {
                NormKind::Batch => c,
                NormKind::Group(g) => i * g + c / (c_all / g),
            },
            count,
        )
    }
}

/// Storage element of the normalisation kernels (f32 or f64).
trait Real: Copy + Send + Sync + Into<f64> {
    fn of(v: f64) -> Self;
}

impl Real for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
}

impl Real for f64 {
    fn of(v: f64) -> Self {
        v
    }
}

/// (γ, β) per channel when affine.
type Affine = Option<(Vec<f64>, Vec<f64>)>;

impl Normalization {
    fn affine_params(&self, p: &Params) -> Result<Affine> {
        if !self.affine {
            return Ok(None);
        }
        Ok(Some((
            p.get(&self.key("weight"))?.to_vec_f64(),
            p.get(&self.key("bias"))?.to_vec_f64(),
        )))
    }

    /// Two sums per (sample, channel) over its positions, `f(row start, row, t)` for
    /// position t, in parallel over samples; laid out sample-major (`i·C + c`).
    fn sums<T: Real>(
        &self,
        v: &[T],
        n: usize,
        f: impl Fn(usize, &[T], usize) -> f64 + Sync,
    ) -> Vec<(f64, f64)> {
        let (cs, s) = (self.channels, self.positions);
        let w = cs * s;
        let mut out = vec![(0.0, 0.0); n * cs];
        out.par_chunks_mut(cs)
            .zip(v.par_chunks(w))
            .enumerate()
            .for_each(|(i, (o, row))| {
                for (c, oc) in o.iter_mut().enumerate() {
                    let r = &row[c * s..(c + 1) * s];
                    let (mut a, mut b) = (0.0, 0.0);
                    for t in 0..s {
                        a += f(i * w + c * s, r, t);
                        b += r[t].into();
                    }
                    *oc = (a, b);
                }
            });
        out
    }

    /// Sums of `sums` gathered per statistic (and the counts).
    fn per_stat(&self, n: usize, sums: &[(f64, f64)]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (stat, k) = self.stat_of(n);
        let (mut a, mut b, mut cnt) = (vec![0.0; k], vec![0.0; k], vec![0.0; k]);
        for i in 0..n {
            for c in 0..self.channels {
                let j = stat(i, c);
                a[j] += sums[i * self.channels + c].0;
                b[j] += sums[i * self.channels + c].1;
                cnt[j] += self.positions as f64;
            }
        }
        (a, b, cnt)
    }

    /// y, x̂, 1/√(σ² + ε) per statistic and, with batch statistics, (mean, unbiased
    /// variance) per statistic.
    #[allow(clippy::type_complexity)]
    fn forward_t<T: Real>(
        &self,
        v: &[T],
        n: usize,
        running: Option<(Vec<f64>, Vec<f64>)>,
        affine: &Affine,
    ) -> (Vec<T>, Vec<T>, Vec<f64>, Option<(Vec<f64>, Vec<f64>)>) {
        let (cs, s) = (self.channels, self.positions);
        let (stat, _) = self.stat_of(n);
        let (mean, inv, batch) = match running {
            Some((rm, rv)) => {
                let inv: Vec<f64> = rv.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
                (rm, inv, None)
            }
            None => {
                let (sum, _, cnt) = self.per_stat(n, &self.sums(v, n, |_, r, t| r[t].into()));
                let mean: Vec<f64> = sum.iter().zip(&cnt).map(|(a, b)| a / b).collect();
                // Second pass about the mean (no cancellation in E[x²] − E[x]²).
                let sq = self.sums(v, n, |start, r, t| {
                    let c = (start % (cs * s)) / s;
                    let i = start / (cs * s);
                    let d: f64 = r[t].into() - mean[stat(i, c)];
                    d * d
                });
                let (sq, _, _) = self.per_stat(n, &sq);
                let var: Vec<f64> = sq.iter().zip(&cnt).map(|(a, b)| a / b).collect();
                let inv: Vec<f64> = var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
                let unbiased = var
                    .iter()
                    .zip(&cnt)
                    .map(|(v, m)| v * m / (m - 1.0).max(1.0))
                    .collect();
                (mean.clone(), inv, Some((mean, unbiased)))
            }
        };
        let w = cs * s;
        let (mut y, mut xh) = (vec![T::of(0.0); n * w], vec![T::of(0.0); n * w]);
        y.par_chunks_mut(w)
            .zip(xh.par_chunks_mut(w))
            .zip(v.par_chunks(w))
            .enumerate()
            .for_each(|(i, ((yr, xr), vr))| {
                for c in 0..cs {
                    let j = stat(i, c);
                    let (g, b) = affine.as_ref().map_or((1.0, 0.0), |(g, b)| (g[c], b[c]));
                    let (m, iv) = (mean[j], inv[j]);
                    for t in c * s..(c + 1) * s {
                        let h = (vr[t].into() - m) * iv;
                        xr[t] = T::of(h);
                        yr[t] = T::of(g * h + b);
                    }
                }
            });
        (y, xh, inv, batch)
    }

    /// ∂L/∂x from ∂L/∂y (`d`) and x̂.
    fn input_grad_t<T: Real>(
        &self,
        d: &[T],
        xh: &[T],
        n: usize,
        inv: &[f64],
        batch_stats: bool,
        gamma: &Option<Vec<f64>>,
    ) -> Vec<T> {
        let (cs, s) = (self.channels, self.positions);
        let w = cs * s;
        let (stat, _) = self.stat_of(n);
        let gm = |c: usize| gamma.as_ref().map_or(1.0, |g| g[c]);
        let (mg, mgx) = if batch_stats {
            // Σ g and Σ g·x̂ per statistic, g = γ_c ∂L/∂y.
            let sums = self.sums(d, n, |start, r, t| r[t].into() * xh[start + t].into());
            let (sgx, sg, cnt) = self.per_stat(n, &sums);
            // γ is per channel and a statistic may span channels (groups): fold it in.
            let (mut mg, mut mgx) = (vec![0.0; sg.len()], vec![0.0; sg.len()]);
            if gamma.is_none() || self.kind == NormKind::Batch {
                for j in 0..sg.len() {
                    let gj = if self.kind == NormKind::Batch {
                        gm(j)
                    } else {
                        1.0
                    };
                    mg[j] = gj * sg[j] / cnt[j];
                    mgx[j] = gj * sgx[j] / cnt[j];
                }
            } else {
                for i in 0..n {
                    for c in 0..cs {
                        let j = stat(i, c);
                        let (a, b) = sums[i * cs + c];
                        mgx[j] += gm(c) * a / cnt[j];
                        mg[j] += gm(c) * b / cnt[j];
                    }
                }
            }
            (mg, mgx)
        } else {
            (Vec::new(), Vec::new())
        };
        let mut dx = vec![T::of(0.0); n * w];
        dx.par_chunks_mut(w)
            .zip(d.par_chunks(w))
            .zip(xh.par_chunks(w))
            .enumerate()
            .for_each(|(i, ((out, dr), xr))| {
                for c in 0..cs {
                    let g = gm(c);
                    if batch_stats {
                        let j = stat(i, c);
                        let (a, b, iv) = (mg[j], mgx[j], inv[j]);
                        for t in c * s..(c + 1) * s {
                            out[t] = T::of((g * dr[t].into() - a - xr[t].into() * b) * iv);
                        }
                    } else {
                        let iv = inv[c];
                        for t in c * s..(c + 1) * s {
                            out[t] = T::of(g * dr[t].into() * iv);
                        }
                    }
                }
            });
        dx
    }
}

impl Layer for Normalization {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> LayerKind {
        match self.kind {
            NormKind::Batch => LayerKind::BatchNorm,
            NormKind::Group(_) => LayerKind::Norm,
        }
    }

    fn output_width(&self, input: usize) -> Result<usize> {
        if input != self.channels * self.positions {
            return Err(Error::shape(
                format!("layer {}", self.name),
                format!(
                    "expects {} channels × {} positions = {} features, got {input}",
                    self.channels,
                    self.positions,
                    self.channels * self.positions
                ),
            ));
        }
        Ok(input)
    }

    fn param_count(&self) -> usize {
        let c = self.channels;
        let sets = 2 * (u64::from(self.affine) + u64::from(self.kind == NormKind::Batch));
        c.saturating_mul(sets as usize)
    }

    fn init_params(&self, _: Init, _: &mut crate::Rng, p: &mut Params) -> Result<()> {
        let c = self.channels;
        if self.affine {
            p.insert(self.key("weight"), Tensor::from_vec(&[c], vec![1.0; c])?);
            p.insert(self.key("bias"), Tensor::zeros(&[c], DType::F32));
        }
        if self.kind == NormKind::Batch {
            p.insert(self.key("running_mean"), Tensor::zeros(&[c], DType::F32));
            p.insert(
                self.key("running_var"),
                Tensor::from_vec(&[c], vec![1.0; c])?,
            );
        }
        Ok(())
    }

    fn forward(&self, p: &Params, x: &Tensor, rec: &mut Record) -> Result<Tensor> {
        // Statistics in f32 under mixed precision.
        let x = &x.widened();
        let (n, f) = x.dims2()?;
        self.output_width(f)?;
        let batch_stats = self.kind != NormKind::Batch || rec.train.is_some();
        if batch_stats && self.kind == NormKind::Batch && n * self.positions < 2 {
            return Err(Error::shape(
                format!("layer {}", self.name),
                "batch normalisation in training needs more than one value per channel",
            ));
        }
        let running = if batch_stats {
            None
        } else {
            Some((
                p.get(&self.key("running_mean"))?.to_vec_f64(),
                p.get(&self.key("running_var"))?.to_vec_f64(),
            ))
        };
        let affine = self.affine_params(p)?;
        let (y, xhat, inv, batch) = match x.storage() {
            Storage::F32(v) => {
                let (y, xh, inv, b) = self.forward_t(v, n, running, &affine);
                (
                    Tensor::from_vec(&[n, f], y)?,
                    Tensor::from_vec(&[n, f], xh)?,
                    inv,
                    b,
                )
            }
            Storage::F64(v) => {
                let (y, xh, inv, b) = self.forward_t(v, n, running, &affine);
                (
                    Tensor::from_vec_f64(&[n, f], y)?,
                    Tensor::from_vec_f64(&[n, f], xh)?,
                    inv,
                    b,
                )
            }
            _ => unreachable!("reduced types are widened above"),
        };
        if let (Some((mean, var)), true) = (batch, self.kind == NormKind::Batch && !rec.recompute) {
            self.pending
                .lock()
                .map_err(|_| Error::config(format!("layer {}", self.name), "lock poisoned"))?
                .push((mean, var));
        }
        let k = inv.len();
        rec.saved.push(xhat);
        rec.saved.push(Tensor::from_vec_f64(&[k], inv)?);
        rec.saved.push(Tensor::from_vec_f64(
            &[1],
            vec![if batch_stats { 1.0 } else { 0.0 }],
        )?);
        Ok(y)
    }

    fn param_grads(&self, _p: &Params, rec: &Record, d_out: &Tensor, g: &mut Grads) -> Result<()> {
        if !self.affine {
            return Ok(());
        }
        let d_out = &d_out.widened();
        let (n, _) = d_out.dims2()?;
        let xh = rec.saved.first().ok_or_else(|| missing(&self.name))?;
        let sums = match (d_out.storage(), xh.storage()) {
            (Storage::F32(d), Storage::F32(x)) => {
                self.sums(d, n, |i, row, t| (row[t] * x[i + t]).into())
            }
            (Storage::F64(d), Storage::F64(x)) => self.sums(d, n, |i, row, t| row[t] * x[i + t]),
            _ => return Err(missing(&self.name)),
        };
        let cs = self.channels;
        let (mut gw, mut gb) = (vec![0.0; cs], vec![0.0; cs]);
        for (ic, (a, b)) in sums.iter().enumerate() {
            gw[ic % cs] += a;
            gb[ic % cs] += b;
        }
        let dt = d_out.dtype();
        g.accumulate(
            &self.key("weight"),
            Tensor::from_vec_f64(&[cs], gw)?.to_dtype(dt),
        )?;
        g.accumulate(
            &self.key("bias"),
            Tensor::from_vec_f64(&[cs], gb)?.to_dtype(dt),
        )
    }

    fn input_grad(&self, p: &Params, rec: &Record, d_out: &Tensor) -> Result<Tensor> {
        let d_out = &d_out.widened();
        let (n, f) = d_out.dims2()?;
        let [xh, inv, flag, ..] = rec.saved.as_slice() else {
            return Err(missing(&self.name));
        };
        let inv = inv.to_vec_f64();
        let batch_stats = flag.get(0).ok() == Some(1.0);
        let gamma = self.affine_params(p)?.map(|(g, _)| g);
        match (d_out.storage(), xh.storage()) {
            (Storage::F32(d), Storage::F32(x)) => Tensor::from_vec(
                &[n, f],
                self.input_grad_t(d, x, n, &inv, batch_stats, &gamma),
            ),
            (Storage::F64(d), Storage::F64(x)) => Tensor::from_vec_f64(
                &[n, f],
                self.input_grad_t(d, x, n, &inv, batch_stats, &gamma),
            ),
            _ => Err(missing(&self.name)),
        }
    }

    fn commit_state(&self, p: &mut Params) -> Result<()> {
        let pending = std::mem::take(
            &mut *self
                .pending
                .lock()
                .map_err(|_| Error::config(format!("layer {}", self.name), "lock poisoned"))?,
        );
        if pending.is_empty() {
            return Ok(());
        }
        let m = self.momentum;
        let (km, kv) = (self.key("running_mean"), self.key("running_var"));
        let (mut rm, mut rv) = (p.get(&km)?.to_vec_f64(), p.get(&kv)?.to_vec_f64());
        for (mean, var) in pending {
            for c in 0..self.channels {
                rm[c] = (1.0 - m) * rm[c] + m * mean[c];
                rv[c] = (1.0 - m) * rv[c] + m * var[c];
            }
        }
        let dt = p.get(&km)?.dtype();
        p.insert(km, Tensor::from_vec_f64(&[self.channels], rm)?.to_dtype(dt));
        p.insert(kv, Tensor::from_vec_f64(&[self.channels], rv)?.to_dtype(dt));
        Ok(())
    }

    fn discard_state(&self) {
        if let Ok(mut v) = self.pending.lock() {
            v.clear();
        }
    }
}

/// Inverted dropout (Srivastava et al. 2014): in training each entry is kept with
/// probability 1 − p and scaled by 1/(1 − p); evaluation is the identity. The mask is a
/// function of the pass's seed and the layer's name, so a run resumed from a checkpoint
/// draws the same masks as an uninterrupted one.
#[derive(Debug, Clone)]
pub struct Dropout {
    name: String,
    p: f64,
}

impl Dropout {
    /// Drops each entry with probability `p` ∈ [0, 1).
    pub fn new(name: impl Into<String>, p: f64) -> Result<Self> {
        let name = name.into();
        if !(0.0..1.0).contains(&p) {
            return Err(Error::config(
                format!("layer {name}"),
                format!("dropout probability {p} must be in [0, 1)"),
            ));
        }
        Ok(Dropout { name, p })
    }

    /// The drop probability.
    pub fn probability(&self) -> f64 {
        self.p
    }
}

/// FNV-1a hash of a layer name, to give each stochastic layer its own stream.
pub(crate) fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Layer for Dropout {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> LayerKind {
        LayerKind::Dropout
    }

    fn output_width(&self, input: usize) -> Result<usize> {
        Ok(input)
    }

    fn param_count(&self) -> usize {
        0
    }

    fn init_params(&self, _: Init, _: &mut crate::Rng, _: &mut Params) -> Result<()> {
        Ok(())
    }

    fn forward(&self, _p: &Params, x: &Tensor, rec: &mut Record) -> Result<Tensor> {
        let Some(seed) = rec.train.filter(|_| self.p > 0.0) else {
            return Ok(x.clone());
        };
        let mut rng = crate::Rng::seed_from_u64(
            seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ name_hash(&self.name),
        );
        let keep = 1.0 / (1.0 - self.p);
        let mask: Vec<f32> = (0..x.len())
            .map(|_| {
                if rng.random::<f64>() < self.p {
                    0.0
                } else {
                    keep as f32
                }
            })
            .collect();
        let mask = Tensor::from_vec(x.shape(), mask)?.to_dtype(x.dtype());
        let y = x.mul(&mask)?;
        rec.saved.push(mask);
        Ok(y)
    }

    fn param_grads(&self, _: &Params, _: &Record, _: &Tensor, _: &mut Grads) -> Result<()> {
        Ok(())
    }

    fn input_grad(&self, _p: &Params, rec: &Record, d_out: &Tensor) -> Result<Tensor> {
        match rec.saved.first() {
            Some(mask) => d_out.mul(mask),
            None => Ok(d_out.clone()),
        }
    }
}

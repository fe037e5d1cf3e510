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

use super::{Grads, Init, Layer, LayerKind, Params, Record, missing};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

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

    fn gamma(&self, p: &Params) -> Result<Option<Vec<f64>>> {
        self.affine
            .then(|| p.get(&self.key("weight")).map(Tensor::to_vec_f64))
            .transpose()
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
        let (n, f) = x.dims2()?;
        self.output_width(f)?;
        let (cs, s) = (self.channels, self.positions);
        let v = x.to_vec_f64();
        let (stat, k) = self.stat_of(n);
        let batch_stats = self.kind != NormKind::Batch || rec.train.is_some();
        let (mean, inv) = if batch_stats {
            if self.kind == NormKind::Batch && n * s < 2 {
                return Err(Error::shape(
                    format!("layer {}", self.name),
                    "batch normalisation in training needs more than one value per channel",
                ));
            }
            let (mut sum, mut sq, mut cnt) = (vec![0.0; k], vec![0.0; k], vec![0.0; k]);
            for i in 0..n {
                for c in 0..cs {
                    let j = stat(i, c);
                    let row = &v[i * f + c * s..i * f + (c + 1) * s];
                    sum[j] += row.iter().sum::<f64>();
                    cnt[j] += s as f64;
                }
            }
            let mean: Vec<f64> = sum.iter().zip(&cnt).map(|(a, b)| a / b).collect();
            for i in 0..n {
                for c in 0..cs {
                    let j = stat(i, c);
                    let row = &v[i * f + c * s..i * f + (c + 1) * s];
                    sq[j] += row.iter().map(|a| (a - mean[j]).powi(2)).sum::<f64>();
                }
            }
            let var: Vec<f64> = sq.iter().zip(&cnt).map(|(a, b)| a / b).collect();
            if self.kind == NormKind::Batch {
                let unbiased = var
                    .iter()
                    .zip(&cnt)
                    .map(|(v, m)| v * m / (m - 1.0))
                    .collect();
                self.pending
                    .lock()
                    .map_err(|_| Error::config(format!("layer {}", self.name), "lock poisoned"))?
                    .push((mean.clone(), unbiased));
            }
            let inv: Vec<f64> = var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
            (mean, inv)
        } else {
            let rm = p.get(&self.key("running_mean"))?.to_vec_f64();
            let rv = p.get(&self.key("running_var"))?.to_vec_f64();
            (rm, rv.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect())
        };
        let gamma = self.gamma(p)?;
        let beta = self
            .affine
            .then(|| p.get(&self.key("bias")).map(Tensor::to_vec_f64))
            .transpose()?;
        let (mut xh, mut y) = (vec![0.0; n * f], vec![0.0; n * f]);
        for i in 0..n {
            for c in 0..cs {
                let j = stat(i, c);
                let (g, b) = (
                    gamma.as_ref().map_or(1.0, |g| g[c]),
                    beta.as_ref().map_or(0.0, |b| b[c]),
                );
                for t in i * f + c * s..i * f + (c + 1) * s {
                    xh[t] = (v[t] - mean[j]) * inv[j];
                    y[t] = g * xh[t] + b;
                }
            }
        }
        rec.saved
            .push(Tensor::from_vec_f64(&[n, f], xh)?.to_dtype(x.dtype()));
        rec.saved.push(Tensor::from_vec_f64(&[k], inv)?);
        rec.saved.push(Tensor::from_vec_f64(
            &[1],
            vec![if batch_stats { 1.0 } else { 0.0 }],
        )?);
        Tensor::from_vec_f64(&[n, f], y).map(|t| t.to_dtype(x.dtype()))
    }

    fn param_grads(&self, _p: &Params, rec: &Record, d_out: &Tensor, g: &mut Grads) -> Result<()> {
        if !self.affine {
            return Ok(());
        }
        let (n, f) = d_out.dims2()?;
        let xh = rec.saved.first().ok_or_else(|| missing(&self.name))?;
        let (d, xh) = (d_out.to_vec_f64(), xh.to_vec_f64());
        let (cs, s) = (self.channels, self.positions);
        let (mut gw, mut gb) = (vec![0.0; cs], vec![0.0; cs]);
        for i in 0..n {
            for c in 0..cs {
                for t in i * f + c * s..i * f + (c + 1) * s {
                    gw[c] += d[t] * xh[t];
                    gb[c] += d[t];
                }
            }
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
        let (n, f) = d_out.dims2()?;
        let [xh, inv, flag, ..] = rec.saved.as_slice() else {
            return Err(missing(&self.name));
        };
        let (xh, inv) = (xh.to_vec_f64(), inv.to_vec_f64());
        let batch_stats = flag.to_vec_f64().first() == Some(&1.0);
        let (cs, s) = (self.channels, self.positions);
        let (stat, k) = self.stat_of(n);
        let gamma = self.gamma(p)?;
        let d = d_out.to_vec_f64();
        let mut g = vec![0.0; n * f];
        for i in 0..n {
            for c in 0..cs {
                let gm = gamma.as_ref().map_or(1.0, |gm| gm[c]);
                for t in i * f + c * s..i * f + (c + 1) * s {
                    g[t] = d[t] * gm;
                }
            }
        }
        let mut dx = vec![0.0; n * f];
        if !batch_stats {
            for i in 0..n {
                for (c, iv) in inv.iter().enumerate().take(cs) {
                    for t in i * f + c * s..i * f + (c + 1) * s {
                        dx[t] = g[t] * iv;
                    }
                }
            }
        } else {
            let (mut mg, mut mgx, mut cnt) = (vec![0.0; k], vec![0.0; k], vec![0.0; k]);
            for i in 0..n {
                for c in 0..cs {
                    let j = stat(i, c);
                    for t in i * f + c * s..i * f + (c + 1) * s {
                        mg[j] += g[t];
                        mgx[j] += g[t] * xh[t];
                    }
                    cnt[j] += s as f64;
                }
            }
            for j in 0..k {
                mg[j] /= cnt[j];
                mgx[j] /= cnt[j];
            }
            for i in 0..n {
                for c in 0..cs {
                    let j = stat(i, c);
                    for t in i * f + c * s..i * f + (c + 1) * s {
                        dx[t] = (g[t] - mg[j] - xh[t] * mgx[j]) * inv[j];
                    }
                }
            }
        }
        Tensor::from_vec_f64(&[n, f], dx).map(|t| t.to_dtype(d_out.dtype()))
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

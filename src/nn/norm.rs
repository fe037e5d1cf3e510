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

use std::sync::{Arc, Mutex, RwLock};

use rand::{Rng as _, SeedableRng};

use super::{Grads, Init, Layer, LayerKind, Params, Record, missing};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Batch statistics summed over data-parallel ranks (synchronised batch normalisation,
/// as PyTorch's SyncBatchNorm): with a sync set, BatchNorm's training passes take the
/// mean and variance of the whole global batch, and its backward pass the whole batch's
/// means of g and g·x̂, so 2 ranks with B/2 rows each compute what 1 process computes
/// with B. Every rank must then run the same training passes in the same order.
pub trait BatchSync: Send + Sync {
    /// Σ over the ranks of `v`, in place.
    fn sum(&self, v: &mut [f64]);
    /// This rank's share of the current batch, n_r/n: its errors are of its share's mean
    /// loss, 1/(n_r/n) times the whole batch's.
    fn share(&self) -> f64;
}

static SYNC: RwLock<Option<Arc<dyn BatchSync>>> = RwLock::new(None);

/// Synchronises every BatchNorm's batch statistics of this process through `sync`
/// (`None`: each process normalises by its own rows).
pub fn set_batch_sync(sync: Option<Arc<dyn BatchSync>>) {
    if let Ok(mut s) = SYNC.write() {
        *s = sync;
    }
}

fn batch_sync() -> Option<Arc<dyn BatchSync>> {
    SYNC.read().ok().and_then(|s| s.clone())
}

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

    /// One coefficient triple per (sample, channel) from a statistic's and a channel's
    /// values: `f(statistic j, channel c)`.
    fn per_channel(
        &self,
        n: usize,
        f: impl Fn(usize, usize) -> (f64, f64, f64),
    ) -> Vec<(f64, f64, f64)> {
        let (stat, _) = self.stat_of(n);
        (0..n)
            .flat_map(|i| (0..self.channels).map(move |c| (i, c)))
            .map(|(i, c)| f(stat(i, c), c))
            .collect()
    }

    /// y, x̂, 1/√(σ² + ε) per statistic and, with batch statistics, (mean, unbiased
    /// variance) per statistic.
    #[allow(clippy::type_complexity)]
    fn forward_t(
        &self,
        x: &Tensor,
        n: usize,
        running: Option<(Vec<f64>, Vec<f64>)>,
        affine: &Affine,
    ) -> Result<(Tensor, Tensor, Vec<f64>, Option<(Vec<f64>, Vec<f64>)>)> {
        let (cs, s) = (self.channels, self.positions);
        let (mean, inv, batch) = match running {
            Some((rm, rv)) => {
                let inv: Vec<f64> = rv.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
                (rm, inv, None)
            }
            None => {
                let sync = batch_sync().filter(|_| self.kind == NormKind::Batch);
                let (_, mut sum, mut cnt) = self.per_stat(n, &x.channel_sums(None, None, cs, s)?);
                if let Some(sync) = &sync {
                    let mut v = [sum.as_slice(), cnt.as_slice()].concat();
                    sync.sum(&mut v);
                    let k = sum.len();
                    (sum, cnt) = (v[..k].to_vec(), v[k..].to_vec());
                }
                let mean: Vec<f64> = sum.iter().zip(&cnt).map(|(a, b)| a / b).collect();
                // Second pass about the mean (no cancellation in E[x²] − E[x]²).
                let m: Vec<f64> = self
                    .per_channel(n, |j, _| (mean[j], 0.0, 0.0))
                    .iter()
                    .map(|t| t.0)
                    .collect();
                let (mut sq, _, _) = self.per_stat(n, &x.channel_sums(None, Some(&m), cs, s)?);
                if let Some(sync) = &sync {
                    sync.sum(&mut sq);
                }
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
        // x̂ = (x − m)·s and y = γx̂ + β = x·γs + (β − γms), both from x.
        let xh = x.channel_affine(
            None,
            &self.per_channel(n, |j, _| (inv[j], 0.0, -mean[j] * inv[j])),
            cs,
            s,
        )?;
        let y = match affine {
            None => xh.clone(),
            Some((g, b)) => x.channel_affine(
                None,
                &self.per_channel(n, |j, c| {
                    (g[c] * inv[j], 0.0, b[c] - g[c] * mean[j] * inv[j])
                }),
                cs,
                s,
            )?,
        };
        Ok((y, xh, inv, batch))
    }

    /// ∂L/∂x from ∂L/∂y (`d`) and x̂.
    fn input_grad_t(
        &self,
        d: &Tensor,
        xh: &Tensor,
        n: usize,
        inv: &[f64],
        batch_stats: bool,
        gamma: &Option<Vec<f64>>,
    ) -> Result<Tensor> {
        let (cs, s) = (self.channels, self.positions);
        let (stat, _) = self.stat_of(n);
        let gm = |c: usize| gamma.as_ref().map_or(1.0, |g| g[c]);
        if !batch_stats {
            // Running statistics: one per channel, ∂L/∂x = γ s ∂L/∂y.
            return d.channel_affine(
                None,
                &self.per_channel(n, |_, c| (gm(c) * inv[c], 0.0, 0.0)),
                cs,
                s,
            );
        }
        // Σ g and Σ g·x̂ per statistic, g = γ_c ∂L/∂y.
        let sums = d.channel_sums(Some(xh), None, cs, s)?;
        let (mut sgx, mut sg, mut cnt) = self.per_stat(n, &sums);
        if let Some(sync) = batch_sync().filter(|_| self.kind == NormKind::Batch) {
            // Σᵣ wᵣ·S over the ranks, then back to this rank's scale 1/wᵣ.
            let w = sync.share();
            let k = sg.len();
            let mut v: Vec<f64> = sgx.iter().chain(&sg).map(|a| a * w).collect();
            v.extend(&cnt);
            sync.sum(&mut v);
            sgx = v[..k].iter().map(|a| a / w).collect();
            sg = v[k..2 * k].iter().map(|a| a / w).collect();
            cnt = v[2 * k..].to_vec();
        }
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
        // ∂L/∂x = (γ ∂L/∂y − mean g − x̂·mean(g x̂))·s.
        let coef = self.per_channel(n, |j, c| {
            (gm(c) * inv[j], -mgx[j] * inv[j], -mg[j] * inv[j])
        });
        d.channel_affine(Some(xh), &coef, cs, s)
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
        let (y, xhat, inv, batch) = self.forward_t(x, n, running, &affine)?;
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
        let xh = rec.saved.first().ok_or_else(|| missing(&self.name))?;
        let sums = d_out.channel_sums(Some(xh), None, self.channels, self.positions)?;
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
        let (n, _) = d_out.dims2()?;
        let [xh, inv, flag, ..] = rec.saved.as_slice() else {
            return Err(missing(&self.name));
        };
        let inv = inv.to_vec_f64();
        let batch_stats = flag.get(0).ok() == Some(1.0);
        let gamma = self.affine_params(p)?.map(|(g, _)| g);
        self.input_grad_t(d_out, xh, n, &inv, batch_stats, &gamma)
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

//! Window kernels for convolution and pooling. A batch of feature maps is a 2-D tensor
//! `[n, C·H·W]`, each row one sample in channel-major (NCHW) order, so every layer keeps
//! the 2-D interface. Convolution is im2col + GEMM: [`Tensor::im2col`] lays each output
//! position's receptive field out as a row, [`Tensor::col2im_acc`] is its adjoint.

use rayon::prelude::*;

use super::backend::BackendStorage;
use super::cpu::Elem;
use super::{Storage, Tensor, count_elementwise};
use crate::error::{Error, Result};

/// A window sweeping one sample's `channels × height × width` map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Channels of the input map.
    pub channels: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Kernel (rows, columns).
    pub kernel: (usize, usize),
    /// Stride (rows, columns).
    pub stride: (usize, usize),
    /// Zero padding on each side (rows, columns).
    pub padding: (usize, usize),
    /// Dilation (rows, columns).
    pub dilation: (usize, usize),
}

impl Window {
    /// Output height and width: ⌊(H + 2p − d(k − 1) − 1)/s⌋ + 1 per axis.
    pub fn output(&self) -> Result<(usize, usize)> {
        let axis = |size: usize, k: usize, s: usize, p: usize, d: usize| -> Option<usize> {
            let span = d.checked_mul(k.checked_sub(1)?)? + 1;
            let padded = size + 2 * p;
            if s == 0 || padded < span {
                return None;
            }
            Some((padded - span) / s + 1)
        };
        match (
            axis(
                self.height,
                self.kernel.0,
                self.stride.0,
                self.padding.0,
                self.dilation.0,
            ),
            axis(
                self.width,
                self.kernel.1,
                self.stride.1,
                self.padding.1,
                self.dilation.1,
            ),
        ) {
            (Some(h), Some(w)) if self.kernel.0 > 0 && self.kernel.1 > 0 => Ok((h, w)),
            _ => Err(Error::shape(
                "window",
                format!(
                    "kernel {:?} (stride {:?}, padding {:?}, dilation {:?}) does not fit a {}×{} map",
                    self.kernel, self.stride, self.padding, self.dilation, self.height, self.width
                ),
            )),
        }
    }

    /// Features per sample of the input map.
    pub fn input_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Input (row, column) under kernel tap (ki, kj) at output (oh, ow), if inside the map.
    #[inline]
    fn tap(&self, oh: usize, ow: usize, ki: usize, kj: usize) -> Option<(usize, usize)> {
        let r = (oh * self.stride.0 + ki * self.dilation.0).checked_sub(self.padding.0)?;
        let c = (ow * self.stride.1 + kj * self.dilation.1).checked_sub(self.padding.1)?;
        (r < self.height && c < self.width).then_some((r, c))
    }
}

fn check_rows(t: &Tensor, win: &Window, op: &str) -> Result<usize> {
    let (n, f) = t.dims2()?;
    if f != win.input_len() {
        return Err(Error::shape(
            op,
            format!(
                "rows of {f} features, but the map is {}×{}×{} = {}",
                win.channels,
                win.height,
                win.width,
                win.input_len()
            ),
        ));
    }
    Ok(n)
}

/// For output position `o` on one axis: the first input index of tap 0 (may be
/// negative: padding) and the range of taps that land inside the input.
fn tap_range(
    o: usize,
    stride: usize,
    pad: usize,
    dil: usize,
    k: usize,
    size: usize,
) -> (isize, usize, usize) {
    let base = (o * stride) as isize - pad as isize;
    let ceil_div = |a: isize, b: isize| (a + b - 1) / b;
    let d = dil as isize;
    let lo = if base >= 0 {
        0
    } else {
        ceil_div(-base, d) as usize
    };
    let hi = if (size as isize) > base {
        (ceil_div(size as isize - base, d) as usize).min(k)
    } else {
        0
    };
    (base, lo.min(hi), hi)
}

pub(super) fn im2col<T: Elem>(
    x: &[T],
    n: usize,
    win: &Window,
    c0: usize,
    cg: usize,
) -> Result<Vec<T>> {
    let (ho, wo) = win.output()?;
    let (kh, kw) = win.kernel;
    let k = cg * kh * kw;
    let hw = win.height * win.width;
    let mut out = vec![T::of(0.0); n * ho * wo * k];
    // One sample per task.
    out.par_chunks_mut((ho * wo * k).max(1))
        .enumerate()
        .for_each(|(s, block)| {
            let xs = &x[s * win.input_len()..(s + 1) * win.input_len()];
            let (w, (dh, dw)) = (win.width, win.dilation);
            for oh in 0..ho {
                let (rb, ki_lo, ki_hi) =
                    tap_range(oh, win.stride.0, win.padding.0, dh, kh, win.height);
                for ow in 0..wo {
                    let (cb, kj_lo, kj_hi) = tap_range(ow, win.stride.1, win.padding.1, dw, kw, w);
                    let row = &mut block[(oh * wo + ow) * k..][..k];
                    for ci in 0..cg {
                        let xc = &xs[(c0 + ci) * hw..][..hw];
                        for ki in ki_lo..ki_hi {
                            let r = (rb + (ki * dh) as isize) as usize;
                            let dst = &mut row[(ci * kh + ki) * kw..][..kw];
                            let c = (cb + (kj_lo * dw) as isize) as usize;
                            for (j, kj) in (kj_lo..kj_hi).enumerate() {
                                dst[kj] = xc[r * w + c + j * dw];
                            }
                        }
                    }
                }
            }
        });
    Ok(out)
}

pub(super) fn col2im_acc<T: Elem>(
    dx: &mut [T],
    cols: &[T],
    n: usize,
    win: &Window,
    c0: usize,
    cg: usize,
) -> Result<()> {
    let (ho, wo) = win.output()?;
    let (kh, kw) = win.kernel;
    let k = cg * kh * kw;
    let hw = win.height * win.width;
    // One sample per task: each writes only its own input block.
    dx.par_chunks_mut(win.input_len().max(1))
        .take(n)
        .enumerate()
        .for_each(|(s, xs)| {
            let (w, (dh, dw)) = (win.width, win.dilation);
            for oh in 0..ho {
                let (rb, ki_lo, ki_hi) =
                    tap_range(oh, win.stride.0, win.padding.0, dh, kh, win.height);
                for ow in 0..wo {
                    let (cb, kj_lo, kj_hi) = tap_range(ow, win.stride.1, win.padding.1, dw, kw, w);
                    let row = &cols[((s * ho + oh) * wo + ow) * k..][..k];
                    for ci in 0..cg {
                        let xc = &mut xs[(c0 + ci) * hw..][..hw];
                        for ki in ki_lo..ki_hi {
                            let r = (rb + (ki * dh) as isize) as usize;
                            let src = &row[(ci * kh + ki) * kw..][..kw];
                            let c = (cb + (kj_lo * dw) as isize) as usize;
                            for (j, kj) in (kj_lo..kj_hi).enumerate() {
                                xc[r * w + c + j * dw] += src[kj];
                            }
                        }
                    }
                }
            }
        });
    Ok(())
}

pub(super) fn batch_transpose<T: Elem>(x: &[T], n: usize, a: usize, b: usize) -> Vec<T> {
    let mut out = vec![T::of(0.0); x.len()];
    out.par_chunks_mut((a * b).max(1))
        .take(n)
        .enumerate()
        .for_each(|(s, dst)| {
            let src = &x[s * a * b..][..a * b];
            for i in 0..a {
                for j in 0..b {
                    dst[j * a + i] = src[i * b + j];
                }
            }
        });
    out
}

/// Max over each window per channel; also the flat input index of each maximum.
pub(super) fn max_pool<T: Elem>(x: &[T], n: usize, win: &Window) -> Result<(Vec<T>, Vec<usize>)> {
    let (ho, wo) = win.output()?;
    let (kh, kw) = win.kernel;
    let (hw, w) = (win.height * win.width, win.width);
    let per = (win.channels * ho * wo).max(1);
    let mut out = vec![T::of(0.0); n * per];
    let mut idx = vec![usize::MAX; n * per];
    // One sample per task.
    out.par_chunks_mut(per)
        .zip(idx.par_chunks_mut(per))
        .enumerate()
        .for_each(|(s, (o, ix))| {
            for ch in 0..win.channels {
                let base = s * win.input_len() + ch * hw;
                for oh in 0..ho {
                    let (rb, ki_lo, ki_hi) =
                        tap_range(oh, win.stride.0, win.padding.0, 1, kh, win.height);
                    for ow in 0..wo {
                        let (cb, kj_lo, kj_hi) =
                            tap_range(ow, win.stride.1, win.padding.1, 1, kw, w);
                        let mut best: Option<(T, usize)> = None;
                        for ki in ki_lo..ki_hi {
                            let r = (rb + ki as isize) as usize;
                            for kj in kj_lo..kj_hi {
                                let i = base + r * w + (cb + kj as isize) as usize;
                                if best.is_none_or(|(b, _)| x[i] > b) {
                                    best = Some((x[i], i));
                                }
                            }
                        }
                        // A window entirely in the padding sees only the padding's zero.
                        if let Some((v, i)) = best {
                            let at = (ch * ho + oh) * wo + ow;
                            o[at] = v;
                            ix[at] = i;
                        }
                    }
                }
            }
        });
    Ok((out, idx))
}

/// Mean over each window per channel, padding counted as zeros (PyTorch's default
/// `count_include_pad`), or its adjoint when `backward` (then `x` holds the output error
/// and the result is the input error).
pub(super) fn avg_pool<T: Elem>(x: &[T], n: usize, win: &Window, backward: bool) -> Result<Vec<T>> {
    let (ho, wo) = win.output()?;
    let (kh, kw) = win.kernel;
    let hw = win.height * win.width;
    let scale = T::of(1.0 / (kh * kw) as f64);
    let per = win.channels * ho * wo;
    let mut out = vec![
        T::of(0.0);
        if backward {
            n * win.input_len()
        } else {
            n * per
        }
    ];
    for s in 0..n {
        for ch in 0..win.channels {
            let base = s * win.input_len() + ch * hw;
            for oh in 0..ho {
                for ow in 0..wo {
                    let o = s * per + (ch * ho + oh) * wo + ow;
                    for ki in 0..kh {
                        for kj in 0..kw {
                            if let Some((r, c)) = win.tap(oh, ow, ki, kj) {
                                let i = base + r * win.width + c;
                                if backward {
                                    out[i] += x[o] * scale;
                                } else {
                                    out[o] += x[i] * scale;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

impl Tensor {
    /// Receptive fields as rows: for input channels `c0..c0 + cg` of every sample, an
    /// `[n·Ho·Wo, cg·kh·kw]` matrix (row = output position, column = (channel, tap);
    /// taps in the padding are 0).
    pub fn im2col(&self, win: &Window, c0: usize, cg: usize) -> Result<Tensor> {
        let n = check_rows(self, win, "im2col")?;
        if c0 + cg > win.channels {
            return Err(Error::shape(
                "im2col",
                format!("channels {c0}..{} of {}", c0 + cg, win.channels),
            ));
        }
        let (ho, wo) = win.output()?;
        let k = cg * win.kernel.0 * win.kernel.1;
        count_elementwise(n * ho * wo * k, 2, self.dtype());
        let data = on_backend!(self.storage(), s => Storage::from(s.im2col(n, win, c0, cg)?));
        Tensor::from_storage(&[n * ho * wo, k], data)
    }

    /// Adds the adjoint of [`Tensor::im2col`] of `cols` into `self` (`[n, C·H·W]`).
    pub fn col2im_acc(&mut self, cols: &Tensor, win: &Window, c0: usize, cg: usize) -> Result<()> {
        let n = check_rows(self, win, "col2im")?;
        let (ho, wo) = win.output()?;
        let k = cg * win.kernel.0 * win.kernel.1;
        if cols.shape() != [n * ho * wo, k] || c0 + cg > win.channels {
            return Err(Error::shape(
                "col2im",
                format!(
                    "columns {:?} for {n} samples of {ho}×{wo} positions × {k} taps",
                    cols.shape()
                ),
            ));
        }
        count_elementwise(cols.len(), 2, self.dtype());
        let c = cols.clone();
        on_backend!(self.storage_mut(), c.storage(), (d, v) => d.col2im_acc(v, n, win, c0, cg))
    }

    /// Reads each row of `n` rows as an `a × b` matrix and transposes it: the rows of
    /// `[n·a, b]` become `[n, b·a]` (position-major ↔ channel-major).
    pub fn batch_transpose(&self, n: usize, a: usize, b: usize) -> Result<Tensor> {
        if self.len() != n * a * b {
            return Err(Error::shape(
                "batch_transpose",
                format!("{} elements for {n}×{a}×{b}", self.len()),
            ));
        }
        count_elementwise(self.len(), 2, self.dtype());
        let data = on_backend!(self.storage(), s => Storage::from(s.batch_transpose(n, a, b)));
        Tensor::from_storage(&[n, a * b], data)
    }

    /// Max pooling of every channel; returns the pooled `[n, C·Ho·Wo]` and the flat index
    /// (into `self`'s storage) of each maximum, for [`Tensor::max_pool_backward`].
    pub fn max_pool(&self, win: &Window) -> Result<(Tensor, Vec<usize>)> {
        let n = check_rows(self, win, "max_pool")?;
        let (ho, wo) = win.output()?;
        count_elementwise(
            n * win.channels * ho * wo * win.kernel.0 * win.kernel.1,
            1,
            self.dtype(),
        );
        let (data, idx) = on_backend!(self.storage(), s => {
            let (o, i) = s.max_pool(n, win)?;
            (Storage::from(o), i)
        });
        Ok((
            Tensor::from_storage(&[n, win.channels * ho * wo], data)?,
            idx,
        ))
    }

    /// Routes the output error `self` (`[n, C·Ho·Wo]`) to the maxima found by
    /// [`Tensor::max_pool`]: an `[n, C·H·W]` input error (f32 for a reduced `self`).
    pub fn max_pool_backward(&self, idx: &[usize], win: &Window) -> Result<Tensor> {
        let (n, _) = self.dims2()?;
        if idx.len() != self.len() {
            return Err(Error::shape(
                "max_pool_backward",
                format!("{} errors for {} maxima", self.len(), idx.len()),
            ));
        }
        let d = self.widened();
        let mut out = d.full_like(&[n, win.input_len()], 0.0, d.dtype());
        on_backend!(out.storage_mut(), d.storage(), (o, g) => o.scatter_add(g, idx))?;
        Ok(out)
    }

    /// Average pooling of every channel (padding counted as zeros).
    pub fn avg_pool(&self, win: &Window) -> Result<Tensor> {
        let n = check_rows(self, win, "avg_pool")?;
        let (ho, wo) = win.output()?;
        let data = on_backend!(self.storage(), s => Storage::from(s.avg_pool(n, win, false)?));
        Tensor::from_storage(&[n, win.channels * ho * wo], data)
    }

    /// The adjoint of [`Tensor::avg_pool`] applied to the output error `self` (f32 for a
    /// reduced `self`).
    pub fn avg_pool_backward(&self, win: &Window) -> Result<Tensor> {
        let (n, f) = self.dims2()?;
        let (ho, wo) = win.output()?;
        if f != win.channels * ho * wo {
            return Err(Error::shape(
                "avg_pool_backward",
                format!("rows of {f} for {}×{ho}×{wo}", win.channels),
            ));
        }
        let d = self.widened();
        let data = on_backend!(d.storage(), s => Storage::from(s.avg_pool(n, win, true)?));
        Tensor::from_storage(&[n, win.input_len()], data)
    }
}

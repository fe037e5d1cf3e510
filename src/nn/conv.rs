//! Convolution and pooling layers on batches of flattened feature maps `[n, C·H·W]`
//! (channel-major rows, PyTorch's NCHW order).
//!
//! `Conv2d` is im2col + GEMM (one product per group for the forward pass and for each
//! gradient): with X the `[n·P, K]` receptive-field matrix of a group (P = Ho·Wo output
//! positions, K = C_in/groups·kh·kw taps) and W_g its `[C_out/groups, K]` weights,
//! Y = X·W_gᵀ; ∂L/∂W_g = δᵀX; ∂L/∂b = Σ δ; ∂L/∂X = δ·W_g, folded back by col2im.

use super::{Grads, Init, Layer, LayerKind, Params, Record, Transport};
use crate::error::{Error, Result};
use crate::tensor::{Tensor, Window};

/// Hyper-parameters of a convolution beyond its kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvOptions {
    /// Stride (rows, columns); default (1, 1).
    pub stride: (usize, usize),
    /// Zero padding per side; default (0, 0).
    pub padding: (usize, usize),
    /// Dilation; default (1, 1).
    pub dilation: (usize, usize),
    /// Groups (input and output channels split into this many independent parts);
    /// default 1.
    pub groups: usize,
    /// Bias per output channel; default true.
    pub bias: bool,
}

impl Default for ConvOptions {
    fn default() -> Self {
        ConvOptions {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
            bias: true,
        }
    }
}

/// 2-D convolution (cross-correlation, as PyTorch's `Conv2d`). Weight `[C_out,
/// C_in/groups, kh, kw]`, bias `[C_out]`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    name: String,
    window: Window,
    out_channels: usize,
    groups: usize,
    bias: bool,
    out_hw: (usize, usize),
}

impl Conv2d {
    /// A convolution of a `(channels, height, width)` input with `out_channels` kernels
    /// of size `kernel`.
    pub fn new(
        name: impl Into<String>,
        input: (usize, usize, usize),
        out_channels: usize,
        kernel: (usize, usize),
        opts: ConvOptions,
    ) -> Result<Self> {
        let name = name.into();
        let (c, h, w) = input;
        if opts.groups == 0
            || !c.is_multiple_of(opts.groups)
            || !out_channels.is_multiple_of(opts.groups)
        {
            return Err(Error::config(
                format!("layer {name}"),
                format!(
                    "{} groups must divide both {c} input and {out_channels} output channels",
                    opts.groups
                ),
            ));
        }
        if out_channels == 0 || opts.dilation.0 == 0 || opts.dilation.1 == 0 {
            return Err(Error::config(
                format!("layer {name}"),
                "needs at least one output channel and a dilation of at least 1",
            ));
        }
        let window = Window {
            channels: c,
            height: h,
            width: w,
            kernel,
            stride: opts.stride,
            padding: opts.padding,
            dilation: opts.dilation,
        };
        let out_hw = window
            .output()
            .map_err(|e| Error::config(format!("layer {name}"), e.to_string()))?;
        Ok(Conv2d {
            name,
            window,
            out_channels,
            groups: opts.groups,
            bias: opts.bias,
            out_hw,
        })
    }

    /// Output map (channels, height, width).
    pub fn output_map(&self) -> (usize, usize, usize) {
        (self.out_channels, self.out_hw.0, self.out_hw.1)
    }

    fn taps(&self) -> usize {
        self.window.channels / self.groups * self.window.kernel.0 * self.window.kernel.1
    }

    /// The `[C_out/groups, K]` weight rows of group `g`.
    fn group_weight(&self, p: &Params, g: usize) -> Result<Tensor> {
        self.group_rows_of(p.get(&format!("{}.weight", self.name))?, g)
    }

    /// The `[C_out/groups, K]` rows of group `g` of a weight-shaped tensor `w`.
    fn group_rows_of(&self, w: &Tensor, g: usize) -> Result<Tensor> {
        let (og, k) = (self.out_channels / self.groups, self.taps());
        if w.len() != self.out_channels * k {
            return Err(Error::shape(
                format!("layer {}", self.name),
                format!("weight {:?}", w.shape()),
            ));
        }
        let w2 = w.reshape(&[self.out_channels, k])?;
        if self.groups == 1 {
            return Ok(w2);
        }
        let idx: Vec<usize> = (g * og..(g + 1) * og).collect();
        w2.gather_rows(&idx)
    }

    fn positions(&self) -> usize {
        self.out_hw.0 * self.out_hw.1
    }

    /// δ of group g as `[n·P, C_out/groups]` rows (position-major).
    fn group_rows(&self, d_out: &Tensor, g: usize) -> Result<Tensor> {
        let (n, _) = d_out.dims2()?;
        let (og, pos) = (self.out_channels / self.groups, self.positions());
        // [n, C_out·P] → per sample [C_out, P] → [P, C_out]; then keep the group's columns.
        let rows = d_out
            .batch_transpose(n, self.out_channels, pos)?
            .reshape(&[n * pos, self.out_channels])?;
        if self.groups == 1 {
            return Ok(rows);
        }
        rows.transpose()?
            .gather_rows(&(g * og..(g + 1) * og).collect::<Vec<_>>())?
            .transpose()
    }
}

impl Layer for Conv2d {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> LayerKind {
        LayerKind::Conv2d {
            window: self.window,
            out_channels: self.out_channels,
            groups: self.groups,
            bias: self.bias,
        }
    }

    fn output_width(&self, input: usize) -> Result<usize> {
        if input != self.window.input_len() {
            return Err(Error::shape(
                format!("layer {}", self.name),
                format!(
                    "expects {}×{}×{} = {} input features, got {input}",
                    self.window.channels,
                    self.window.height,
                    self.window.width,
                    self.window.input_len()
                ),
            ));
        }
        Ok(self.out_channels * self.positions())
    }

    fn param_count(&self) -> usize {
        self.taps()
            .saturating_mul(self.out_channels)
            .saturating_add(if self.bias { self.out_channels } else { 0 })
    }

    fn init_params(&self, init: Init, rng: &mut crate::Rng, p: &mut Params) -> Result<()> {
        let k = self.taps();
        let (kh, kw) = self.window.kernel;
        let w = init.sample(k, self.out_channels, rng);
        p.insert(
            format!("{}.weight", self.name),
            Tensor::from_vec(
                &[
                    self.out_channels,
                    self.window.channels / self.groups,
                    kh,
                    kw,
                ],
                w,
            )?,
        );
        if self.bias {
            // PyTorch's default: U(−1/√fan_in, 1/√fan_in).
            let b = Init::Torch.sample(k, self.out_channels, rng);
            p.insert(
                format!("{}.bias", self.name),
                Tensor::from_vec(&[self.out_channels], b[..self.out_channels].to_vec())?,
            );
        }
        Ok(())
    }

    fn forward(&self, p: &Params, x: &Tensor, rec: &mut Record) -> Result<Tensor> {
        let (n, _) = x.dims2()?;
        self.output_width(x.dims2()?.1)?;
        let (cg, pos) = (self.window.channels / self.groups, self.positions());
        // Output rows [n·P, C_out], filled group by group.
        let mut rows: Option<Tensor> = None;
        let mut parts = Vec::with_capacity(self.groups);
        for g in 0..self.groups {
            let cols = x.im2col(&self.window, g * cg, cg)?;
            let y = cols.matmul(false, &self.group_weight(p, g)?, true)?;
            // A pass recomputed for gradient checkpointing keeps no columns (k_h·k_w
            // times the input): the backward pass forms them again from the input.
            if !rec.recompute {
                rec.saved.push(cols);
            }
            if self.groups == 1 {
                rows = Some(y);
            } else {
                parts.push(y.transpose()?);
            }
        }
        let mut rows = match rows {
            Some(r) => r,
            // Stack the groups' [og, n·P] blocks into [C_out, n·P], back to rows.
            None => Tensor::concat_rows(&parts)?.transpose()?,
        };
        if self.bias {
            rows.add_row(p.get(&format!("{}.bias", self.name))?)?;
        }
        rows.reshape(&[n * pos * self.out_channels])?
            .batch_transpose(n, pos, self.out_channels)
    }

    fn param_grads(&self, _p: &Params, rec: &Record, d_out: &Tensor, g: &mut Grads) -> Result<()> {
        let (kh, kw) = self.window.kernel;
        let shape = [
            self.out_channels,
            self.window.channels / self.groups,
            kh,
            kw,
        ];
        let cg = self.window.channels / self.groups;
        // δ_gᵀX_g per group: rows of the weight in group order.
        let mut parts = Vec::with_capacity(self.groups);
        for gi in 0..self.groups {
            let d = self.group_rows(d_out, gi)?;
            // The columns again from the recorded input (kernel-area times smaller
            // than they are), unless the forward pass kept them.
            let cols = match rec.saved.get(gi) {
                Some(c) => c.clone(),
                None => rec.input.im2col(&self.window, gi * cg, cg)?,
            };
            parts.push(d.matmul(true, &cols, false)?);
        }
        let dw = if self.groups == 1 {
            parts.remove(0)
        } else {
            Tensor::concat_rows(&parts)?
        }
        .reshape(&shape)?;
        g.accumulate(&format!("{}.weight", self.name), dw)?;
        if self.bias {
            let (n, _) = d_out.dims2()?;
            let db = d_out
                .batch_transpose(n, self.out_channels, self.positions())?
                .reshape(&[n * self.positions(), self.out_channels])?
                .sum_rows()?;
            g.accumulate(&format!("{}.bias", self.name), db)?;
        }
        Ok(())
    }

    fn input_grad(&self, p: &Params, rec: &Record, d_out: &Tensor) -> Result<Tensor> {
        let w = p.get(&format!("{}.weight", self.name))?;
        self.input_grad_with_weight(p, rec, d_out, w)
    }

    fn transport(&self) -> Option<&dyn Transport> {
        Some(self)
    }
}

impl Transport for Conv2d {
    /// The transposed convolution of `d_out` with `weight` (W's shape) in place of W.
    fn input_grad_with_weight(
        &self,
        _p: &Params,
        _rec: &Record,
        d_out: &Tensor,
        weight: &Tensor,
    ) -> Result<Tensor> {
        let (n, _) = d_out.dims2()?;
        let cg = self.window.channels / self.groups;
        // Summed in f32 under mixed precision.
        let mut dx = Tensor::zeros(&[n, self.window.input_len()], d_out.dtype().accumulator());
        for gi in 0..self.groups {
            let d = self.group_rows(d_out, gi)?;
            let dcols = d.matmul(false, &self.group_rows_of(weight, gi)?, false)?;
            dx.col2im_acc(&dcols, &self.window, gi * cg, cg)?;
        }
        Ok(dx)
    }
}

/// Max or average pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    /// Maximum of each window (padding never wins).
    Max,
    /// Mean of each window, padding counted as zeros.
    Average,
}

/// 2-D pooling of every channel.
#[derive(Debug, Clone)]
pub struct Pool2d {
    name: String,
    kind: PoolKind,
    window: Window,
    out_hw: (usize, usize),
}

impl Pool2d {
    /// Pooling of a `(channels, height, width)` input with `kernel`, `stride` and
    /// `padding`.
    pub fn new(
        name: impl Into<String>,
        kind: PoolKind,
        input: (usize, usize, usize),
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Result<Self> {
        let name = name.into();
        let (c, h, w) = input;
        if 2 * padding.0 > kernel.0 || 2 * padding.1 > kernel.1 {
            return Err(Error::config(
                format!("layer {name}"),
                format!("padding {padding:?} must be at most half the kernel {kernel:?}"),
            ));
        }
        let window = Window {
            channels: c,
            height: h,
            width: w,
            kernel,
            stride,
            padding,
            dilation: (1, 1),
        };
        let out_hw = window
            .output()
            .map_err(|e| Error::config(format!("layer {name}"), e.to_string()))?;
        Ok(Pool2d {
            name,
            kind,
            window,
            out_hw,
        })
    }

    /// Global average pooling: one mean per channel.
    pub fn global_average(name: impl Into<String>, input: (usize, usize, usize)) -> Result<Self> {
        Self::new(
            name,
            PoolKind::Average,
            input,
            (input.1, input.2),
            (1, 1),
            (0, 0),
        )
    }

    /// Output map (channels, height, width).
    pub fn output_map(&self) -> (usize, usize, usize) {
        (self.window.channels, self.out_hw.0, self.out_hw.1)
    }
}

impl Layer for Pool2d {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> LayerKind {
        LayerKind::Pool2d {
            window: self.window,
            max: self.kind == PoolKind::Max,
        }
    }

    fn output_width(&self, input: usize) -> Result<usize> {
        if input != self.window.input_len() {
            return Err(Error::shape(
                format!("layer {}", self.name),
                format!(
                    "expects {} input features, got {input}",
                    self.window.input_len()
                ),
            ));
        }
        Ok(self.window.channels * self.out_hw.0 * self.out_hw.1)
    }

    fn param_count(&self) -> usize {
        0
    }

    fn init_params(&self, _: Init, _: &mut crate::Rng, _: &mut Params) -> Result<()> {
        Ok(())
    }

    fn forward(&self, _p: &Params, x: &Tensor, rec: &mut Record) -> Result<Tensor> {
        match self.kind {
            PoolKind::Max => {
                let (y, idx) = x.max_pool(&self.window)?;
                // The argmax indices, exact in f64 (< 2⁵³).
                let idx: Vec<f64> = idx
                    .into_iter()
                    .map(|i| if i == usize::MAX { -1.0 } else { i as f64 })
                    .collect();
                rec.saved.push(Tensor::from_vec_f64(&[idx.len()], idx)?);
                Ok(y)
            }
            PoolKind::Average => x.avg_pool(&self.window),
        }
    }

    fn param_grads(&self, _: &Params, _: &Record, _: &Tensor, _: &mut Grads) -> Result<()> {
        Ok(())
    }

    fn input_grad(&self, _p: &Params, rec: &Record, d_out: &Tensor) -> Result<Tensor> {
        match self.kind {
            PoolKind::Max => {
                let idx: Vec<usize> = rec
                    .saved
                    .first()
                    .ok_or_else(|| {
                        Error::config(format!("layer {}", self.name), "record lacks its maxima")
                    })?
                    .to_vec_f64()
                    .into_iter()
                    .map(|i| if i < 0.0 { usize::MAX } else { i as usize })
                    .collect();
                d_out.max_pool_backward(&idx, &self.window)
            }
            PoolKind::Average => d_out.avg_pool_backward(&self.window),
        }
    }
}

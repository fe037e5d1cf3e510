//! Quantisation-aware training with learned step sizes (LSQ; Esser, McKinstry, Bablani,
//! Appuswamy & Modha 2020, "Learned step size quantization").
//!
//! A quantised Linear layer computes y = q(x) q(W)ᵀ + b with the fake quantiser
//! q(v) = clamp(round(v/s), −Q_N, Q_P)·s: b-bit signed for weights (Q_N = 2^(b−1),
//! Q_P = 2^(b−1) − 1) and for inputs that can be negative (the data), unsigned after a
//! ReLU (Q_N = 0, Q_P = 2^b − 1). Gradients (the clipped straight-through estimator):
//!
//! - ∂q/∂v = 1 inside the range, 0 outside;
//! - ∂q/∂s = round(v/s) − v/s inside, −Q_N below, Q_P above, scaled by
//!   g = 1/√(N·Q_P), N the number of weights (for a weight step; per output row with
//!   per-channel steps) or of input elements in the batch (for the input step), as in
//!   the reference implementations;
//! - steps start at 2⟨|v|⟩/√Q_P: the weights' at initialisation, the inputs' from a
//!   calibration batch ([`Model::calibrate`](super::Model::calibrate)).
//!
//! Every rule that trains layers through their own `param_grads` and `input_grad`
//! (bp, the FA and DFA families, ...) trains a quantised model unchanged: the layer
//! passes δ·q(W) (or δ·B under feedback alignment) through the input mask. The input
//! step's gradient sums q(W)ᵀδ against ∂q/∂s into one number, so under DFA it reads the
//! layer's own weight, not another layer's.

use super::{Grads, Init, Layer, LayerKind, Linear, Params, Record, Transport, missing};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor, Unary};

/// The integer grid of a quantiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    /// Bits per value.
    pub bits: u32,
    /// Whether values may be negative.
    pub signed: bool,
}

impl Grid {
    /// Q_N: the grid reaches −Q_N.
    pub fn qn(&self) -> f64 {
        if self.signed {
            2f64.powi(self.bits as i32 - 1)
        } else {
            0.0
        }
    }

    /// Q_P: the grid reaches Q_P.
    pub fn qp(&self) -> f64 {
        if self.signed {
            2f64.powi(self.bits as i32 - 1) - 1.0
        } else {
            2f64.powi(self.bits as i32) - 1.0
        }
    }

    /// LSQ's initial step for values `v`: 2⟨|v|⟩/√Q_P.
    pub(super) fn initial_step(&self, mean_abs: f64) -> f64 {
        let s = 2.0 * mean_abs / self.qp().sqrt();
        if s > 0.0 && s.is_finite() { s } else { 1e-3 }
    }
}

/// A learned step an optimizer has pushed to or below zero quantises at 1e-8 instead
/// (its gradient still flows from there).
fn floor_step(s: f64) -> f64 {
    if s > 1e-8 { s } else { 1e-8 }
}

/// LSQ's weight-step gradient from ∂L/∂q(W) (`dwq`, `rows` × its row length) and
/// ∂q/∂s (`wr`): per row with per-channel steps (g = 1/√(row·Q_P)), else one
/// (g = 1/√(N·Q_P)).
pub(super) fn weight_step_grad(
    dwq: &Tensor,
    wr: &Tensor,
    rows: usize,
    per_channel: bool,
    qp: f64,
) -> Result<Tensor> {
    let n = dwq.len();
    let g: Vec<f64> = if per_channel {
        let gs = 1.0 / ((n / rows.max(1)) as f64 * qp).sqrt();
        dwq.mul(wr)?
            .reshape(&[rows, n / rows.max(1)])?
            .row_sums()?
            .iter()
            .map(|v| v * gs)
            .collect()
    } else {
        vec![dwq.dot(wr)? / (n as f64 * qp).sqrt()]
    };
    Ok(Tensor::from_vec_f64(&[g.len()], g)?.to_dtype(dwq.dtype()))
}

/// LSQ's input-step gradient from ∂L/∂q(x) (`dxq`) and ∂q/∂s (`xr`), g = 1/√(N·Q_P)
/// with N the batch's input elements.
pub(super) fn input_step_grad(dxq: &Tensor, xr: &Tensor, qp: f64) -> Result<Tensor> {
    let g = dxq.dot(xr)? / (xr.len() as f64 * qp).sqrt();
    Ok(Tensor::from_vec_f64(&[1], vec![g])?.to_dtype(dxq.dtype()))
}

/// Inserts LSQ's initial steps: the weight `key`'s 2⟨|w|⟩/√Q_P over each of `steps`
/// equal runs of its elements (its output units, or one run) as `weight_step`, and a
/// placeholder input step (replaced by [`Model::calibrate`](super::Model::calibrate)'s).
pub(super) fn insert_initial_steps(
    p: &mut Params,
    key: &str,
    grid: Grid,
    steps: usize,
    names: (&str, &str),
) -> Result<()> {
    let abs = p.get(key)?.unary(Unary::Abs);
    let per = abs.len() / steps.max(1);
    let s: Vec<f64> = abs
        .reshape(&[steps, per])?
        .row_sums()?
        .iter()
        .map(|s| grid.initial_step(s / per.max(1) as f64))
        .collect();
    p.insert(
        names.0,
        Tensor::from_vec_f64(&[s.len()], s)?.to_dtype(DType::F32),
    );
    p.insert(names.1, Tensor::from_vec(&[1], vec![1.0])?);
    Ok(())
}

/// Sets the input step `name` to LSQ's 2⟨|x|⟩/√Q_P over the calibration batch `x`.
pub(super) fn calibrate_input_step(
    p: &mut Params,
    name: &str,
    grid: Grid,
    x: &Tensor,
) -> Result<()> {
    let mean = x.unary(Unary::Abs).sum() / x.len().max(1) as f64;
    let dt = p.get(name).map_or(DType::F32, |t| t.dtype());
    p.insert(
        name,
        Tensor::from_vec_f64(&[1], vec![grid.initial_step(mean)])?.to_dtype(dt),
    );
    Ok(())
}

/// The learned steps `name` in `p`, floored ([`floor_step`]); at least one.
pub(super) fn read_steps(p: &Params, name: &str) -> Result<Vec<f64>> {
    let s: Vec<f64> = p
        .get(name)?
        .to_vec_f64()
        .into_iter()
        .map(floor_step)
        .collect();
    if s.is_empty() {
        return Err(Error::shape(name, "an empty step"));
    }
    Ok(s)
}

/// What `--quantize wXaY` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantScheme {
    /// Weight bits.
    pub weight_bits: u32,
    /// Input (activation) bits.
    pub input_bits: u32,
    /// One weight step per output unit instead of one per layer.
    pub per_channel: bool,
    /// Training's forward pass of Linear layers of at most 8 bits on the int8 kernel
    /// (the deployed integer arithmetic) instead of the f32 product of the fake-quantised
    /// values; the backward pass is the same.
    pub integer_forward: bool,
}

impl QuantScheme {
    /// `none`, or `wXaY` with 2 ≤ X, Y ≤ 16 (e.g. `w8a8`, `w4a4`, `w2a2`).
    pub fn parse(s: &str, per_channel: bool) -> Result<Option<QuantScheme>> {
        if s == "none" {
            return Ok(None);
        }
        let bad = || {
            Error::config(
                "quantize (--quantize)",
                format!("'{s}' is not none or wXaY with 2 to 16 bits each (w8a8, w4a4, w2a2)"),
            )
        };
        let rest = s.strip_prefix('w').ok_or_else(bad)?;
        let (w, a) = rest.split_once('a').ok_or_else(bad)?;
        let (w, a): (u32, u32) = (w.parse().map_err(|_| bad())?, a.parse().map_err(|_| bad())?);
        if !(2..=16).contains(&w) || !(2..=16).contains(&a) {
            return Err(bad());
        }
        Ok(Some(QuantScheme {
            weight_bits: w,
            input_bits: a,
            per_channel,
            integer_forward: false,
        }))
    }
}

/// A Linear layer trained through LSQ fake quantisers of its weight and its input.
#[derive(Debug, Clone)]
pub struct QuantLinear {
    inner: Linear,
    weight: Grid,
    input: Grid,
    per_channel: bool,
    integer_forward: bool,
    weight_step: String,
    input_step: String,
}

impl QuantLinear {
    /// `inner` quantised by `scheme`; `unsigned_input` when its input is a ReLU's output.
    pub fn new(inner: Linear, scheme: QuantScheme, unsigned_input: bool) -> Self {
        let name = inner.name().to_string();
        QuantLinear {
            weight: Grid {
                bits: scheme.weight_bits,
                signed: true,
            },
            input: Grid {
                bits: scheme.input_bits,
                signed: !unsigned_input,
            },
            per_channel: scheme.per_channel,
            integer_forward: scheme.integer_forward,
            weight_step: format!("{name}.weight_step"),
            input_step: format!("{name}.input_step"),
            inner,
        }
    }

    /// Whether both grids fit the int8 kernel.
    fn fits_int8(&self) -> bool {
        self.weight.bits <= 8 && self.input.bits <= 8
    }

    /// The weight, its steps (floored) and the elements per step.
    fn weight_grid<'p>(&self, p: &'p Params) -> Result<(&'p Tensor, Vec<f64>, usize)> {
        let w = p.get(self.inner.weight_key())?;
        let steps = read_steps(p, &self.weight_step)?;
        let group = if self.per_channel {
            self.inner.inputs
        } else {
            w.len()
        };
        Ok((w, steps, group))
    }

    /// The quantised weight: q(W), the mask and ∂q/∂s.
    fn quantized_weight(&self, p: &Params) -> Result<(Tensor, Tensor, Tensor)> {
        let (w, steps, group) = self.weight_grid(p)?;
        w.fake_quantize(&steps, group, self.weight.qn(), self.weight.qp())
    }

    fn input_scale(&self, p: &Params) -> Result<f64> {
        Ok(read_steps(p, &self.input_step)?[0])
    }
}

impl Layer for QuantLinear {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn kind(&self) -> LayerKind {
        self.inner.kind()
    }

    fn output_width(&self, input: usize) -> Result<usize> {
        self.inner.output_width(input)
    }

    fn param_count(&self) -> usize {
        let steps = if self.per_channel {
            self.inner.outputs
        } else {
            1
        };
        self.inner.param_count() + steps + 1
    }

    fn init_params(&self, init: Init, rng: &mut crate::Rng, p: &mut Params) -> Result<()> {
        self.inner.init_params(init, rng, p)?;
        let steps = if self.per_channel {
            self.inner.outputs
        } else {
            1
        };
        let names = (self.weight_step.as_str(), self.input_step.as_str());
        insert_initial_steps(p, self.inner.weight_key(), self.weight, steps, names)
    }

    fn input_mask<'r>(&self, rec: &'r Record) -> Option<&'r Tensor> {
        rec.saved.get(1)
    }

    fn forward_integer(&self, p: &Params, x: &Tensor) -> Option<Result<Tensor>> {
        (self.fits_int8() && !x.is_empty()).then(|| self.integer_pass(p, x))
    }

    fn calibrate(&self, p: &mut Params, x: &Tensor) -> Result<()> {
        calibrate_input_step(p, &self.input_step, self.input, x)
    }

    fn forward(&self, p: &Params, x: &Tensor, rec: &mut Record) -> Result<Tensor> {
        if x.is_empty() {
            return self.inner.forward(p, x, rec);
        }
        let (xq, xm, xr) = x.fake_quantize(
            &[self.input_scale(p)?],
            x.len(),
            self.input.qn(),
            self.input.qp(),
        )?;
        let (wq, wm, wr) = self.quantized_weight(p)?;
        let y = if self.integer_forward && x.dtype() == DType::F32 && self.fits_int8() {
            self.integer_pass(p, x)?
        } else {
            let mut y = xq.matmul(false, &wq, true)?;
            if self.inner.bias {
                y.add_row(p.get(self.inner.bias_key())?)?;
            }
            y
        };
        rec.saved = vec![xq, xm, xr, wq, wm, wr];
        Ok(y)
    }

    fn param_grads(&self, _p: &Params, rec: &Record, d_out: &Tensor, g: &mut Grads) -> Result<()> {
        self.grads(rec, d_out, g).map(|_| ())
    }

    // One δ·q(W) for both the input step's gradient and ∂L/∂x.
    fn backward(
        &self,
        _p: &Params,
        rec: &Record,
        d_out: &Tensor,
        g: &mut Grads,
        input: bool,
    ) -> Result<Option<Tensor>> {
        let dxq = self.grads(rec, d_out, g)?;
        let [_, xm, ..] = rec.saved.as_slice() else {
            return Err(missing(self.name()));
        };
        input.then(|| dxq.mul(xm)).transpose()
    }

    fn input_grad(&self, _p: &Params, rec: &Record, d_out: &Tensor) -> Result<Tensor> {
        let [_, xm, _, wq, ..] = rec.saved.as_slice() else {
            return Err(missing(self.name()));
        };
        d_out.matmul(false, wq, false)?.mul(xm)
    }

    fn transport(&self) -> Option<&dyn Transport> {
        Some(self)
    }
}

impl QuantLinear {
    /// y = s_x·s_W·(X·Wᵀ) + b with X, W the integer grids of x and W, on the int8 kernel.
    fn integer_pass(&self, p: &Params, x: &Tensor) -> Result<Tensor> {
        use crate::tensor::int8_gemm::{PackedI8, gemm_i8, gemm_u8};
        let (m, k) = x.dims2()?;
        let n = self.inner.outputs;
        let (w, sw, group) = self.weight_grid(p)?;
        let wi: Vec<i8> = w.quantize_to_grid(&sw, group, self.weight.qn(), self.weight.qp())?;
        let packed = PackedI8::new(&wi, n, k);
        let sx = self.input_scale(p)?;
        let (qn, qp) = (self.input.qn(), self.input.qp());
        let mut acc = vec![0i32; m * n];
        if self.input.signed {
            gemm_i8(
                &x.quantize_to_grid(&[sx], x.len(), qn, qp)?,
                m,
                &packed,
                &mut acc,
            );
        } else {
            gemm_u8(
                &x.quantize_to_grid(&[sx], x.len(), qn, qp)?,
                m,
                &packed,
                &mut acc,
            );
        }
        let scale: Vec<f32> = (0..n)
            .map(|j| (sx * if self.per_channel { sw[j] } else { sw[0] }) as f32)
            .collect();
        let mut y = vec![0.0f32; m * n];
        for (yr, ar) in y.chunks_mut(n).zip(acc.chunks(n)) {
            for ((y, &a), &s) in yr.iter_mut().zip(ar).zip(&scale) {
                *y = a as f32 * s;
            }
        }
        let mut y = Tensor::from_vec(&[m, n], y)?;
        if self.inner.bias {
            y.add_row(&p.get(self.inner.bias_key())?.to_dtype(DType::F32))?;
        }
        Ok(y.to_dtype(x.dtype()))
    }

    /// Adds the parameter and step gradients for `d_out`; returns ∂L/∂q(x) = δ·q(W).
    fn grads(&self, rec: &Record, d_out: &Tensor, g: &mut Grads) -> Result<Tensor> {
        let [xq, _, xr, wq, wm, wr] = rec.saved.as_slice() else {
            return Err(missing(self.name()));
        };
        // ∂L/∂q(W) = δᵀq(x); through the mask to W, against ∂q/∂s to the step.
        let dwq = d_out.matmul(true, xq, false)?;
        g.accumulate(self.inner.weight_key(), dwq.mul(wm)?)?;
        g.accumulate(
            &self.weight_step,
            weight_step_grad(
                &dwq,
                wr,
                self.inner.outputs,
                self.per_channel,
                self.weight.qp(),
            )?,
        )?;
        if self.inner.bias {
            g.accumulate(self.inner.bias_key(), d_out.sum_rows()?)?;
        }
        // ∂L/∂q(x) = δ·q(W), summed against ∂q/∂s into the input step's gradient.
        let dxq = d_out.matmul(false, wq, false)?;
        g.accumulate(
            &self.input_step,
            input_step_grad(&dxq, xr, self.input.qp())?,
        )?;
        Ok(dxq)
    }
}

impl Transport for QuantLinear {
    /// δ·B through the input quantiser's mask (feedback alignment's B in place of q(W)).
    fn input_grad_with_weight(
        &self,
        _p: &Params,
        rec: &Record,
        d_out: &Tensor,
        weight: &Tensor,
    ) -> Result<Tensor> {
        let [_, xm, ..] = rec.saved.as_slice() else {
            return Err(missing(self.name()));
        };
        d_out.matmul(false, weight, false)?.mul(xm)
    }
}

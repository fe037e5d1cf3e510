//! LSQ quantisation-aware training of convolutions ([`QuantConv2d`]); the quantiser
//! and its gradients are [`super::quant`]'s.

use super::quant::{
    Grid, QuantScheme, calibrate_input_step, input_step_grad, insert_initial_steps, read_steps,
    weight_step_grad,
};
use super::{Grads, Init, Layer, LayerKind, Params, Record, Transport, missing};
use crate::error::Result;
use crate::tensor::Tensor;

/// A convolution trained through LSQ fake quantisers of its weight (one step per layer,
/// or per output channel) and its input: the convolution of q(x) with q(W), its
/// gradients those of the convolution taken at q(x) and q(W), through the clipped
/// straight-through masks. Evaluation with `--quantized` runs it on the same fake
/// quantisers in f32 (integer kernels serve Linear layers).
#[derive(Debug, Clone)]
pub struct QuantConv2d {
    inner: super::conv::Conv2d,
    weight: Grid,
    input: Grid,
    per_channel: bool,
    out_channels: usize,
    weight_key: String,
    bias_key: Option<String>,
    weight_step: String,
    input_step: String,
}

/// The quantisers' records after the convolution's own: q(W), ∂q/∂x and ∂q/∂s of the
/// input, then of the weight.
const CONV_SAVED: usize = 5;

impl QuantConv2d {
    /// `inner` quantised by `scheme`; `unsigned_input` when its input cannot be negative.
    pub fn new(inner: super::conv::Conv2d, scheme: QuantScheme, unsigned_input: bool) -> Self {
        let name = inner.name().to_string();
        let LayerKind::Conv2d {
            out_channels, bias, ..
        } = inner.kind()
        else {
            unreachable!("a Conv2d's kind is Conv2d")
        };
        QuantConv2d {
            weight: Grid {
                bits: scheme.weight_bits,
                signed: true,
            },
            input: Grid {
                bits: scheme.input_bits,
                signed: !unsigned_input,
            },
            per_channel: scheme.per_channel,
            out_channels,
            weight_key: format!("{name}.weight"),
            bias_key: bias.then(|| format!("{name}.bias")),
            weight_step: format!("{name}.weight_step"),
            input_step: format!("{name}.input_step"),
            inner,
        }
    }

    fn steps(&self) -> usize {
        if self.per_channel {
            self.out_channels
        } else {
            1
        }
    }

    /// `p` with the weight replaced by `wq`, for the convolution's own passes.
    fn with_weight(&self, p: &Params, wq: &Tensor) -> Params {
        let mut q = p.clone();
        q.insert(self.weight_key.clone(), wq.clone());
        q
    }

    /// The convolution's record (its own saved tensors) and the quantisers'.
    fn split<'r>(&self, rec: &'r Record) -> Result<(Record, &'r [Tensor])> {
        let n = rec.saved.len();
        if n < CONV_SAVED {
            return Err(missing(self.name()));
        }
        let mut inner = rec.clone();
        inner.saved.truncate(n - CONV_SAVED);
        Ok((inner, &rec.saved[n - CONV_SAVED..]))
    }

    /// Adds the parameter and step gradients for `d_out`; returns ∂L/∂q(x).
    fn grads(&self, p: &Params, rec: &Record, d_out: &Tensor, g: &mut Grads) -> Result<Tensor> {
        let (inner, [wq, _, xr, wm, wr]) = self.split(rec)? else {
            return Err(missing(self.name()));
        };
        let mut own = Grads::new();
        self.inner.param_grads(p, &inner, d_out, &mut own)?;
        let dwq = own
            .remove(&self.weight_key)
            .ok_or_else(|| missing(self.name()))?;
        g.accumulate(&self.weight_key, dwq.mul(wm)?)?;
        g.accumulate(
            &self.weight_step,
            weight_step_grad(
                &dwq,
                wr,
                self.out_channels,
                self.per_channel,
                self.weight.qp(),
            )?,
        )?;
        if let Some(b) = &self.bias_key {
            g.accumulate(b, own.remove(b).ok_or_else(|| missing(self.name()))?)?;
        }
        let dxq = self
            .inner
            .input_grad(&self.with_weight(p, wq), &inner, d_out)?;
        g.accumulate(
            &self.input_step,
            input_step_grad(&dxq, xr, self.input.qp())?,
        )?;
        Ok(dxq)
    }
}

impl Layer for QuantConv2d {
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
        self.inner.param_count() + self.steps() + 1
    }

    fn init_params(&self, init: Init, rng: &mut crate::Rng, p: &mut Params) -> Result<()> {
        self.inner.init_params(init, rng, p)?;
        let names = (self.weight_step.as_str(), self.input_step.as_str());
        insert_initial_steps(p, &self.weight_key, self.weight, self.steps(), names)
    }

    fn input_mask<'r>(&self, rec: &'r Record) -> Option<&'r Tensor> {
        let n = rec.saved.len();
        (n >= CONV_SAVED).then(|| &rec.saved[n - CONV_SAVED + 1])
    }

    fn calibrate(&self, p: &mut Params, x: &Tensor) -> Result<()> {
        calibrate_input_step(p, &self.input_step, self.input, x)
    }

    fn forward(&self, p: &Params, x: &Tensor, rec: &mut Record) -> Result<Tensor> {
        if x.is_empty() {
            return self.inner.forward(p, x, rec);
        }
        let sx = read_steps(p, &self.input_step)?[0];
        let (xq, xm, xr) = x.fake_quantize(&[sx], x.len(), self.input.qn(), self.input.qp())?;
        let w = p.get(&self.weight_key)?;
        let steps = read_steps(p, &self.weight_step)?;
        let (wq, wm, wr) = w.fake_quantize(
            &steps,
            w.len() / self.steps(),
            self.weight.qn(),
            self.weight.qp(),
        )?;
        // The convolution sees (and its weight gradient reads) the quantised input.
        rec.input = xq.clone();
        let y = self.inner.forward(&self.with_weight(p, &wq), &xq, rec)?;
        rec.saved.extend([wq, xm, xr, wm, wr]);
        Ok(y)
    }

    fn param_grads(&self, p: &Params, rec: &Record, d_out: &Tensor, g: &mut Grads) -> Result<()> {
        self.grads(p, rec, d_out, g).map(|_| ())
    }

    fn backward(
        &self,
        p: &Params,
        rec: &Record,
        d_out: &Tensor,
        g: &mut Grads,
        input: bool,
    ) -> Result<Option<Tensor>> {
        let dxq = self.grads(p, rec, d_out, g)?;
        let xm = self.input_mask(rec).ok_or_else(|| missing(self.name()))?;
        input.then(|| dxq.mul(xm)).transpose()
    }

    fn input_grad(&self, p: &Params, rec: &Record, d_out: &Tensor) -> Result<Tensor> {
        let (inner, [wq, xm, ..]) = self.split(rec)? else {
            return Err(missing(self.name()));
        };
        self.inner
            .input_grad(&self.with_weight(p, wq), &inner, d_out)?
            .mul(xm)
    }

    fn transport(&self) -> Option<&dyn Transport> {
        Some(self)
    }
}

impl Transport for QuantConv2d {
    /// The transposed convolution with `weight` in place of q(W), through the input
    /// quantiser's mask.
    fn input_grad_with_weight(
        &self,
        p: &Params,
        rec: &Record,
        d_out: &Tensor,
        weight: &Tensor,
    ) -> Result<Tensor> {
        let (inner, [_, xm, ..]) = self.split(rec)? else {
            return Err(missing(self.name()));
        };
        self.inner
            .input_grad_with_weight(p, &inner, d_out, weight)?
            .mul(xm)
    }
}

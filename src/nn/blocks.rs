//! Layer normalisation and residual blocks.
//!
//! `LayerNorm` (Ba, Kiros & Hinton 2016) normalises each row over its features:
//! x̂ = (x − μ)/√(σ² + ε), y = γ ⊙ x̂ + β (γ, β optional). With g = ∂L/∂y ⊙ γ, the input
//! gradient is ∂L/∂x = (g − mean(g) − x̂·mean(g ⊙ x̂))/√(σ² + ε) per row.
//!
//! `Residual` (He et al. 2016) wraps a stack of layers F: y = F(x) + x, or
//! y = F(x) + xPᵀ with a learned projection P when F changes the width. Its record keeps
//! the inner layers' records (flattened into `saved`), so any rule that drives layers
//! through [`Layer`] drives the block.

use super::{Grads, Init, Layer, LayerKind, Linear, Params, Record};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Layer normalisation over the features of each row.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    name: String,
    width: usize,
    affine: bool,
    eps: f64,
}

impl LayerNorm {
    /// Normalisation of `width` features, with learned scale and shift when `affine`
    /// (ε = 1e-5, PyTorch's default).
    pub fn new(name: impl Into<String>, width: usize, affine: bool) -> Self {
        LayerNorm {
            name: name.into(),
            width,
            affine,
            eps: 1e-5,
        }
    }

    fn keys(&self) -> (String, String) {
        (
            format!("{}.weight", self.name),
            format!("{}.bias", self.name),
        )
    }
}

impl Layer for LayerNorm {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> LayerKind {
        LayerKind::Norm
    }

    fn output_width(&self, input: usize) -> Result<usize> {
        if input != self.width {
            return Err(Error::shape(
                format!("layer {}", self.name),
                format!("expects {} features, got {input}", self.width),
            ));
        }
        Ok(input)
    }

    fn init_params(&self, _: Init, _: &mut crate::Rng, p: &mut Params) -> Result<()> {
        if self.affine {
            let (w, b) = self.keys();
            p.insert(w, Tensor::from_vec(&[self.width], vec![1.0; self.width])?);
            p.insert(b, Tensor::zeros(&[self.width], crate::tensor::DType::F32));
        }
        Ok(())
    }

    fn forward(&self, p: &Params, x: &Tensor, rec: &mut Record) -> Result<Tensor> {
        let (n, f) = x.dims2()?;
        self.output_width(f)?;
        let v = x.to_vec_f64();
        let (mut xh, mut inv) = (vec![0.0; n * f], vec![0.0; n]);
        for i in 0..n {
            let row = &v[i * f..(i + 1) * f];
            let m = row.iter().sum::<f64>() / f as f64;
            let var = row.iter().map(|a| (a - m).powi(2)).sum::<f64>() / f as f64;
            inv[i] = 1.0 / (var + self.eps).sqrt();
            for j in 0..f {
                xh[i * f + j] = (row[j] - m) * inv[i];
            }
        }
        let xhat = Tensor::from_vec_f64(&[n, f], xh)?.to_dtype(x.dtype());
        let mut y = xhat.clone();
        if self.affine {
            let (w, b) = self.keys();
            y = y.mul(&broadcast_rows(p.get(&w)?, n)?)?;
            y.add_row(p.get(&b)?)?;
        }
        rec.saved.push(xhat);
        rec.saved.push(Tensor::from_vec_f64(&[n], inv)?);
        Ok(y)
    }

    fn param_grads(&self, _p: &Params, rec: &Record, d_out: &Tensor, g: &mut Grads) -> Result<()> {
        if self.affine {
            let (w, b) = self.keys();
            let xhat = rec.saved.first().ok_or_else(|| missing(&self.name))?;
            g.accumulate(&w, d_out.mul(xhat)?.sum_rows()?)?;
            g.accumulate(&b, d_out.sum_rows()?)?;
        }
        Ok(())
    }

    fn input_grad(&self, p: &Params, rec: &Record, d_out: &Tensor) -> Result<Tensor> {
        let (n, f) = d_out.dims2()?;
        let (xhat, inv) = match rec.saved.as_slice() {
            [a, b, ..] => (a.to_vec_f64(), b.to_vec_f64()),
            _ => return Err(missing(&self.name)),
        };
        let gamma = if self.affine {
            Some(p.get(&self.keys().0)?.to_vec_f64())
        } else {
            None
        };
        let d = d_out.to_vec_f64();
        let mut dx = vec![0.0; n * f];
        for i in 0..n {
            let r = i * f..(i + 1) * f;
            let g: Vec<f64> = d[r.clone()]
                .iter()
                .enumerate()
                .map(|(j, v)| v * gamma.as_ref().map_or(1.0, |gm| gm[j]))
                .collect();
            let xh = &xhat[r.clone()];
            let mg = g.iter().sum::<f64>() / f as f64;
            let mgx = g.iter().zip(xh).map(|(a, b)| a * b).sum::<f64>() / f as f64;
            for j in 0..f {
                dx[i * f + j] = (g[j] - mg - xh[j] * mgx) * inv[i];
            }
        }
        Ok(Tensor::from_vec_f64(&[n, f], dx)?.to_dtype(d_out.dtype()))
    }
}

fn missing(name: &str) -> Error {
    Error::config(
        format!("layer {name}"),
        "record lacks what its forward pass saved",
    )
}

/// `v` (a row of `f`) repeated for `n` rows.
fn broadcast_rows(v: &Tensor, n: usize) -> Result<Tensor> {
    let mut out = Tensor::zeros(&[n, v.len()], v.dtype());
    out.add_row(v)?;
    Ok(out)
}

/// A residual block y = F(x) + x (or + xPᵀ when F changes the width).
#[derive(Debug)]
pub struct Residual {
    name: String,
    inner: Vec<Box<dyn Layer>>,
    projection: Option<Linear>,
    inputs: usize,
    outputs: usize,
}

impl Residual {
    /// A block over `inner` for inputs of `inputs` features; a bias-free projection
    /// `{name}.proj` is added when the inner stack changes the width.
    pub fn new(name: impl Into<String>, inner: Vec<Box<dyn Layer>>, inputs: usize) -> Result<Self> {
        let name = name.into();
        if inner.is_empty() {
            return Err(Error::config(format!("block {name}"), "has no layers"));
        }
        let mut w = inputs;
        for l in &inner {
            w = l.output_width(w)?;
        }
        let projection =
            (w != inputs).then(|| Linear::new(format!("{name}.proj"), inputs, w, false));
        Ok(Residual {
            name,
            inner,
            projection,
            inputs,
            outputs: w,
        })
    }

    /// Rebuilds the inner records from the block's record.
    fn inner_records(&self, rec: &Record) -> Result<Vec<Record>> {
        let mut out = Vec::with_capacity(self.inner.len());
        let mut it = rec.saved.iter();
        for l in &self.inner {
            let (Some(input), Some(output), Some(count)) = (it.next(), it.next(), it.next()) else {
                return Err(missing(&self.name));
            };
            let k = count.to_vec_f64().first().copied().unwrap_or(0.0) as usize;
            let saved: Vec<Tensor> = it.by_ref().take(k).cloned().collect();
            out.push(Record {
                layer: l.name().to_string(),
                input: input.clone(),
                output: output.clone(),
                saved,
            });
        }
        Ok(out)
    }

    /// ∂L/∂x through F, adding F's parameter gradients to `g` when given.
    fn through_inner(
        &self,
        p: &Params,
        rec: &Record,
        d_out: &Tensor,
        mut g: Option<&mut Grads>,
    ) -> Result<Tensor> {
        let recs = self.inner_records(rec)?;
        let mut d = d_out.clone();
        for (l, r) in self.inner.iter().zip(&recs).rev() {
            if let Some(g) = g.as_deref_mut() {
                l.param_grads(p, r, &d, g)?;
            }
            d = l.input_grad(p, r, &d)?;
        }
        Ok(d)
    }
}

impl Layer for Residual {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> LayerKind {
        LayerKind::Residual
    }

    fn output_width(&self, input: usize) -> Result<usize> {
        if input != self.inputs {
            return Err(Error::shape(
                format!("block {}", self.name),
                format!("expects {} features, got {input}", self.inputs),
            ));
        }
        Ok(self.outputs)
    }

    fn init_params(&self, init: Init, rng: &mut crate::Rng, p: &mut Params) -> Result<()> {
        for l in &self.inner {
            l.init_params(init, rng, p)?;
        }
        if let Some(pr) = &self.projection {
            pr.init_params(init, rng, p)?;
        }
        Ok(())
    }

    fn forward(&self, p: &Params, x: &Tensor, rec: &mut Record) -> Result<Tensor> {
        let mut h = x.clone();
        for l in &self.inner {
            let mut r = Record::new(l.name(), h.clone());
            let y = l.forward(p, &h, &mut r)?;
            rec.saved.push(h);
            rec.saved.push(y.clone());
            rec.saved
                .push(Tensor::from_vec_f64(&[1], vec![r.saved.len() as f64])?);
            rec.saved.extend(r.saved);
            h = y;
        }
        match &self.projection {
            Some(pr) => {
                let mut r = Record::new(pr.name(), x.clone());
                h.axpy(1.0, &pr.forward(p, x, &mut r)?)?;
            }
            None => h.axpy(1.0, x)?,
        }
        Ok(h)
    }

    fn param_grads(&self, p: &Params, rec: &Record, d_out: &Tensor, g: &mut Grads) -> Result<()> {
        self.through_inner(p, rec, d_out, Some(g))?;
        if let Some(pr) = &self.projection {
            pr.param_grads(p, &Record::new(pr.name(), rec.input.clone()), d_out, g)?;
        }
        Ok(())
    }

    fn input_grad(&self, p: &Params, rec: &Record, d_out: &Tensor) -> Result<Tensor> {
        let mut d = self.through_inner(p, rec, d_out, None)?;
        match &self.projection {
            Some(pr) => d.axpy(
                1.0,
                &pr.input_grad(p, &Record::new(pr.name(), rec.input.clone()), d_out)?,
            )?,
            None => d.axpy(1.0, d_out)?,
        }
        Ok(d)
    }
}

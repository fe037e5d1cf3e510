//! Layer normalisation and residual blocks.
//!
//! `LayerNorm` (Ba, Kiros & Hinton 2016) normalises each row over its features:
//! x̂ = (x − μ)/√(σ² + ε), y = γ ⊙ x̂ + β (γ, β optional). With g = ∂L/∂y ⊙ γ, the input
//! gradient is ∂L/∂x = (g − mean(g) − x̂·mean(g ⊙ x̂))/√(σ² + ε) per row.
//!
//! `Residual` (He et al. 2016) wraps a stack of layers F: y = F(x) + x, or
//! y = F(x) + S(x) with a shortcut S (a learned projection) when F changes the width.
//! `Highway` (Srivastava et al. 2015): y = T(x)·F(x) + (1 − T(x))·x with the gate
//! T(x) = σ(x W_Tᵀ + b_T), b_T initialised to −2 so the block starts near the identity;
//! ∂L/∂x = ∂F/∂xᵀ(δ·T) + δ·(1 − T) + W_Tᵀ(δ·(F − x)·T(1 − T)).
//! `Dense` (Huang et al. 2017): y = [x, F(x)], the features (channels of a channel-major
//! map) concatenated; a dense block is a chain of them.
//! A block's record keeps its inner layers' records (flattened into `saved`), so any rule
//! that drives layers through [`Layer`] drives the block.

use super::{Grads, Init, Layer, LayerKind, Linear, Params, Record, missing};
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

    fn param_count(&self) -> usize {
        if self.affine {
            self.width.saturating_mul(2)
        } else {
            0
        }
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
        let (xhat, inv) = x.standardize_rows(self.eps)?;
        let mut y = xhat.clone();
        if self.affine {
            let (w, b) = self.keys();
            y = y.mul(&broadcast_rows(p.get(&w)?, n)?)?;
            y.add_row(p.get(&b)?)?;
        }
        rec.saved.push(xhat);
        rec.saved.push(inv);
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
        let (n, _) = d_out.dims2()?;
        let [xhat, inv, ..] = rec.saved.as_slice() else {
            return Err(missing(&self.name));
        };
        // ∂L/∂x̂ = d ⊙ γ.
        let g = if self.affine {
            d_out.mul(&broadcast_rows(p.get(&self.keys().0)?, n)?)?
        } else {
            d_out.clone()
        };
        xhat.standardize_rows_backward(inv, &g)
    }
}

/// `v` (a row of `f`) repeated for `n` rows.
fn broadcast_rows(v: &Tensor, n: usize) -> Result<Tensor> {
    let mut out = Tensor::zeros(&[n, v.len()], v.dtype());
    out.add_row(v)?;
    Ok(out)
}

/// A stack of layers run inside a block, keeping their records in the block's record.
#[derive(Debug)]
struct Stack {
    layers: Vec<Box<dyn Layer>>,
}

impl Stack {
    fn new(block: &str, layers: Vec<Box<dyn Layer>>, inputs: usize) -> Result<(Self, usize)> {
        if layers.is_empty() {
            return Err(Error::config(format!("block {block}"), "has no layers"));
        }
        let mut w = inputs;
        for l in &layers {
            w = l.output_width(w)?;
        }
        Ok((Stack { layers }, w))
    }

    fn param_count(&self) -> usize {
        self.layers
            .iter()
            .fold(0usize, |a, l| a.saturating_add(l.param_count()))
    }

    fn init_params(&self, init: Init, rng: &mut crate::Rng, p: &mut Params) -> Result<()> {
        self.layers
            .iter()
            .try_for_each(|l| l.init_params(init, rng, p))
    }

    /// Runs the stack on `x`, appending each layer's input, output, count of saved
    /// tensors and saved tensors to `saved`.
    fn forward(
        &self,
        p: &Params,
        x: &Tensor,
        train: Option<u64>,
        recompute: bool,
        saved: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for l in &self.layers {
            let mut r = Record::training(l.name(), h.clone(), train);
            r.recompute = recompute;
            let y = crate::nn::model::follow(l.forward(p, &h, &mut r)?, &h);
            saved.push(h);
            saved.push(y.clone());
            saved.push(Tensor::from_vec_f64(&[1], vec![r.saved.len() as f64])?);
            saved.extend(r.saved);
            h = y;
        }
        Ok(h)
    }

    /// Rebuilds the records from `saved` (consumed from the front); the rest stays.
    fn records<'a>(
        &self,
        block: &str,
        saved: &mut impl Iterator<Item = &'a Tensor>,
        train: Option<u64>,
    ) -> Result<Vec<Record>> {
        let mut out = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let (Some(input), Some(output), Some(count)) =
                (saved.next(), saved.next(), saved.next())
            else {
                return Err(missing(block));
            };
            let k = count.get(0).unwrap_or(0.0) as usize;
            let kept: Vec<Tensor> = saved.by_ref().take(k).cloned().collect();
            if kept.len() != k {
                return Err(missing(block));
            }
            out.push(Record {
                layer: l.name().to_string(),
                input: input.clone(),
                output: output.clone(),
                saved: kept,
                train,
                online: false,
                recompute: false,
            });
        }
        Ok(out)
    }

    /// ∂L/∂x through the stack, adding its parameter gradients to `g` when given.
    fn backward(
        &self,
        p: &Params,
        recs: &[Record],
        d_out: &Tensor,
        mut g: Option<&mut Grads>,
    ) -> Result<Tensor> {
        let mut d = d_out.clone();
        for (l, r) in self.layers.iter().zip(recs).rev() {
            d = crate::nn::chain::error_in_precision(l.as_ref(), d, r);
            d = match g.as_deref_mut() {
                Some(g) => l
                    .backward(p, r, &d, g, true)?
                    .ok_or_else(|| missing(l.name()))?,
                None => l.input_grad(p, r, &d)?,
            };
        }
        Ok(d)
    }

    fn commit_state(&self, p: &mut Params) -> Result<()> {
        self.layers.iter().try_for_each(|l| l.commit_state(p))
    }

    fn discard_state(&self) {
        self.layers.iter().for_each(|l| l.discard_state());
    }
}

/// A residual block y = F(x) + x, or F(x) + S(x) with a shortcut stack S.
#[derive(Debug)]
pub struct Residual {
    name: String,
    inner: Stack,
    shortcut: Option<Stack>,
    inputs: usize,
    outputs: usize,
}

impl Residual {
    /// A block over `inner` for inputs of `inputs` features; a bias-free Linear
    /// projection `{name}.proj` is the shortcut when the inner stack changes the width.
    pub fn new(name: impl Into<String>, inner: Vec<Box<dyn Layer>>, inputs: usize) -> Result<Self> {
        let name = name.into();
        let (inner, w) = Stack::new(&name, inner, inputs)?;
        let shortcut = if w != inputs {
            let proj: Vec<Box<dyn Layer>> = vec![Box::new(Linear::new(
                format!("{name}.proj"),
                inputs,
                w,
                false,
            ))];
            Some(Stack::new(&name, proj, inputs)?.0)
        } else {
            None
        };
        Ok(Residual {
            name,
            inner,
            shortcut,
            inputs,
            outputs: w,
        })
    }

    /// A block with an explicit shortcut stack (e.g. a strided 1×1 convolution and batch
    /// normalisation, as ResNet's projection shortcut), which must produce F's width.
    pub fn with_shortcut(
        name: impl Into<String>,
        inner: Vec<Box<dyn Layer>>,
        shortcut: Vec<Box<dyn Layer>>,
        inputs: usize,
    ) -> Result<Self> {
        let name = name.into();
        let (inner, w) = Stack::new(&name, inner, inputs)?;
        let (shortcut, ws) = Stack::new(&name, shortcut, inputs)?;
        if ws != w {
            return Err(Error::shape(
                format!("block {name}"),
                format!("the shortcut gives {ws} features, the inner layers {w}"),
            ));
        }
        Ok(Residual {
            name,
            inner,
            shortcut: Some(shortcut),
            inputs,
            outputs: w,
        })
    }

    /// ∂L/∂x through F and the skip, adding the block's parameter gradients to `g` when
    /// given, in one traversal of the inner layers ([`Layer::param_grads`] computes the
    /// input error too and drops it).
    fn both(
        &self,
        p: &Params,
        rec: &Record,
        d_out: &Tensor,
        mut g: Option<&mut Grads>,
    ) -> Result<Tensor> {
        let (inner, short) = self.records(rec)?;
        let mut d = self.inner.backward(p, &inner, d_out, g.as_deref_mut())?;
        match &self.shortcut {
            Some(s) => d.axpy(1.0, &s.backward(p, &short, d_out, g)?)?,
            None => d.axpy(1.0, d_out)?,
        }
        Ok(d)
    }

    /// The records of the inner stack and of the shortcut.
    fn records(&self, rec: &Record) -> Result<(Vec<Record>, Vec<Record>)> {
        let mut it = rec.saved.iter();
        let inner = self.inner.records(&self.name, &mut it, rec.train)?;
        let short = match &self.shortcut {
            Some(s) => s.records(&self.name, &mut it, rec.train)?,
            None => Vec::new(),
        };
        Ok((inner, short))
    }
}

fn check_width(block: &str, expected: usize, input: usize) -> Result<()> {
    if input != expected {
        return Err(Error::shape(
            format!("block {block}"),
            format!("expects {expected} features, got {input}"),
        ));
    }
    Ok(())
}

impl Layer for Residual {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> LayerKind {
        LayerKind::Residual
    }

    fn output_width(&self, input: usize) -> Result<usize> {
        check_width(&self.name, self.inputs, input)?;
        Ok(self.outputs)
    }

    fn param_count(&self) -> usize {
        self.inner
            .param_count()
            .saturating_add(self.shortcut.as_ref().map_or(0, |s| s.param_count()))
    }

    fn init_params(&self, init: Init, rng: &mut crate::Rng, p: &mut Params) -> Result<()> {
        self.inner.init_params(init, rng, p)?;
        if let Some(s) = &self.shortcut {
            s.init_params(init, rng, p)?;
        }
        Ok(())
    }

    fn forward(&self, p: &Params, x: &Tensor, rec: &mut Record) -> Result<Tensor> {
        let mut h = self
            .inner
            .forward(p, x, rec.train, rec.recompute, &mut rec.saved)?;
        match &self.shortcut {
            Some(s) => h.axpy(
                1.0,
                &s.forward(p, x, rec.train, rec.recompute, &mut rec.saved)?,
            )?,
            None => h.axpy(1.0, x)?,
        }
        Ok(h)
    }

    fn param_grads(&self, p: &Params, rec: &Record, d_out: &Tensor, g: &mut Grads) -> Result<()> {
        self.both(p, rec, d_out, Some(g)).map(|_| ())
    }

    fn input_grad(&self, p: &Params, rec: &Record, d_out: &Tensor) -> Result<Tensor> {
        self.both(p, rec, d_out, None)
    }

    fn backward(
        &self,
        p: &Params,
        rec: &Record,
        d_out: &Tensor,
        g: &mut Grads,
        _input: bool,
    ) -> Result<Option<Tensor>> {
        self.both(p, rec, d_out, Some(g)).map(Some)
    }

    fn commit_state(&self, p: &mut Params) -> Result<()> {
        self.inner.commit_state(p)?;
        self.shortcut.as_ref().map_or(Ok(()), |s| s.commit_state(p))
    }

    fn discard_state(&self) {
        self.inner.discard_state();
        if let Some(s) = &self.shortcut {
            s.discard_state();
        }
    }
}

/// A highway block y = T(x)·F(x) + (1 − T(x))·x, T(x) = σ(x W_Tᵀ + b_T).
#[derive(Debug)]
pub struct Highway {
    name: String,
    inner: Stack,
    gate: Linear,
    width: usize,
}

impl Highway {
    /// A block over `inner`, which must keep the width.
    pub fn new(name: impl Into<String>, inner: Vec<Box<dyn Layer>>, width: usize) -> Result<Self> {
        let name = name.into();
        let (inner, w) = Stack::new(&name, inner, width)?;
        check_width(&name, width, w)?;
        let gate = Linear::new(format!("{name}.gate"), width, width, true);
        Ok(Highway {
            name,
            inner,
            gate,
            width,
        })
    }

    /// Gate bias at initialisation (Srivastava et al. 2015 use −1 to −3).
    pub const GATE_BIAS: f32 = -2.0;
}

impl Layer for Highway {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> LayerKind {
        LayerKind::Highway
    }

    fn output_width(&self, input: usize) -> Result<usize> {
        check_width(&self.name, self.width, input)?;
        Ok(input)
    }

    fn param_count(&self) -> usize {
        self.inner
            .param_count()
            .saturating_add(self.gate.param_count())
    }

    fn init_params(&self, init: Init, rng: &mut crate::Rng, p: &mut Params) -> Result<()> {
        self.inner.init_params(init, rng, p)?;
        self.gate.init_params(init, rng, p)?;
        p.insert(
            format!("{}.bias", self.gate.name()),
            Tensor::from_vec(&[self.width], vec![Self::GATE_BIAS; self.width])?,
        );
        Ok(())
    }

    fn forward(&self, p: &Params, x: &Tensor, rec: &mut Record) -> Result<Tensor> {
        let mut r = Record::new(self.gate.name(), x.clone());
        let t = self
            .gate
            .forward(p, x, &mut r)?
            .unary(crate::tensor::Unary::Sigmoid);
        let mut saved = vec![t.clone()];
        let f = self
            .inner
            .forward(p, x, rec.train, rec.recompute, &mut saved)?;
        // y = x + T·(F − x)
        let mut y = f.sub(x)?.mul(&t)?;
        y.axpy(1.0, x)?;
        saved.insert(1, f);
        rec.saved.extend(saved);
        Ok(y)
    }

    fn param_grads(&self, p: &Params, rec: &Record, d_out: &Tensor, g: &mut Grads) -> Result<()> {
        self.both(p, rec, d_out, Some(g)).map(|_| ())
    }

    fn input_grad(&self, p: &Params, rec: &Record, d_out: &Tensor) -> Result<Tensor> {
        self.both(p, rec, d_out, None)
    }

    fn backward(
        &self,
        p: &Params,
        rec: &Record,
        d_out: &Tensor,
        g: &mut Grads,
        _input: bool,
    ) -> Result<Option<Tensor>> {
        self.both(p, rec, d_out, Some(g)).map(Some)
    }

    fn commit_state(&self, p: &mut Params) -> Result<()> {
        self.inner.commit_state(p)
    }

    fn discard_state(&self) {
        self.inner.discard_state();
    }
}

impl Highway {
    /// ∂L/∂x, adding the block's parameter gradients to `g` when given (one traversal
    /// of the inner layers).
    fn both(
        &self,
        p: &Params,
        rec: &Record,
        d_out: &Tensor,
        mut g: Option<&mut Grads>,
    ) -> Result<Tensor> {
        let (t, f, inner) = self.parts(rec)?;
        let mut d = self
            .inner
            .backward(p, &inner, &d_out.mul(&t)?, g.as_deref_mut())?;
        // δ·(1 − T)
        d.axpy(1.0, d_out)?;
        d.axpy(-1.0, &d_out.mul(&t)?)?;
        let d_pre = self.gate_error(rec, &t, &f, d_out)?;
        let gate_rec = Record::new(self.gate.name(), rec.input.clone());
        if let Some(g) = g {
            self.gate.param_grads(p, &gate_rec, &d_pre, g)?;
        }
        d.axpy(1.0, &self.gate.input_grad(p, &gate_rec, &d_pre)?)?;
        Ok(d)
    }

    fn parts(&self, rec: &Record) -> Result<(Tensor, Tensor, Vec<Record>)> {
        let mut it = rec.saved.iter();
        let (Some(t), Some(f)) = (it.next(), it.next()) else {
            return Err(missing(&self.name));
        };
        let inner = self.inner.records(&self.name, &mut it, rec.train)?;
        Ok((t.clone(), f.clone(), inner))
    }

    /// ∂L/∂(gate pre-activation) = δ·(F − x)·T(1 − T).
    fn gate_error(&self, rec: &Record, t: &Tensor, f: &Tensor, d_out: &Tensor) -> Result<Tensor> {
        let dt = d_out.mul(&f.sub(&rec.input)?)?;
        t.unary_backward_from_output(crate::tensor::Unary::Sigmoid, &dt)?
            .ok_or_else(|| missing(&self.name))
    }
}

/// A dense unit y = [x, F(x)] (features concatenated per sample).
#[derive(Debug)]
pub struct Dense {
    name: String,
    inner: Stack,
    inputs: usize,
    growth: usize,
}

impl Dense {
    /// A unit over `inner` for inputs of `inputs` features.
    pub fn new(name: impl Into<String>, inner: Vec<Box<dyn Layer>>, inputs: usize) -> Result<Self> {
        let name = name.into();
        let (inner, growth) = Stack::new(&name, inner, inputs)?;
        Ok(Dense {
            name,
            inner,
            inputs,
            growth,
        })
    }
}

impl Dense {
    /// ∂L/∂x, adding the inner layers' gradients to `g` when given.
    fn both(
        &self,
        p: &Params,
        rec: &Record,
        d_out: &Tensor,
        g: Option<&mut Grads>,
    ) -> Result<Tensor> {
        let inner = self
            .inner
            .records(&self.name, &mut rec.saved.iter(), rec.train)?;
        let df = columns(d_out, self.inputs, self.growth)?;
        let mut d = self.inner.backward(p, &inner, &df, g)?;
        d.axpy(1.0, &columns(d_out, 0, self.inputs)?)?;
        Ok(d)
    }
}

/// Columns `[from, from + width)` of `t` (`[n, f]`).
fn columns(t: &Tensor, from: usize, width: usize) -> Result<Tensor> {
    t.columns(from, width)
}

impl Layer for Dense {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> LayerKind {
        LayerKind::Dense
    }

    fn output_width(&self, input: usize) -> Result<usize> {
        check_width(&self.name, self.inputs, input)?;
        Ok(self.inputs + self.growth)
    }

    fn param_count(&self) -> usize {
        self.inner.param_count()
    }

    fn init_params(&self, init: Init, rng: &mut crate::Rng, p: &mut Params) -> Result<()> {
        self.inner.init_params(init, rng, p)
    }

    fn forward(&self, p: &Params, x: &Tensor, rec: &mut Record) -> Result<Tensor> {
        let f = self
            .inner
            .forward(p, x, rec.train, rec.recompute, &mut rec.saved)?;
        x.concat_cols(&f)
    }

    fn param_grads(&self, p: &Params, rec: &Record, d_out: &Tensor, g: &mut Grads) -> Result<()> {
        self.both(p, rec, d_out, Some(g)).map(|_| ())
    }

    fn input_grad(&self, p: &Params, rec: &Record, d_out: &Tensor) -> Result<Tensor> {
        self.both(p, rec, d_out, None)
    }

    fn backward(
        &self,
        p: &Params,
        rec: &Record,
        d_out: &Tensor,
        g: &mut Grads,
        _input: bool,
    ) -> Result<Option<Tensor>> {
        self.both(p, rec, d_out, Some(g)).map(Some)
    }

    fn commit_state(&self, p: &mut Params) -> Result<()> {
        self.inner.commit_state(p)
    }

    fn discard_state(&self) {
        self.inner.discard_state();
    }
}

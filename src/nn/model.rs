//! Models: sequences of layers built from a spec string.

use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::activation::{ActivationSpec, parse_activation};
use super::{Activation, Init, Layer, LayerKind, Linear, PRelu, Params, Record, Segments, Trace};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor, Unary};

/// Everything needed to rebuild a model: the spec string and its options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// `mlp:784-1000-1000-10` (widths, input first) or `linear:784-10`. A hidden width may
    /// name its own activation, e.g. `mlp:784-1000-30:linear-1000-784`.
    pub spec: String,
    /// Hidden activation name (see [`super::ACTIVATION_NAMES`]); default `relu`.
    pub activation: String,
    /// Whether Linear layers have biases; default true.
    pub bias: bool,
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec {
            spec: "mlp:784-1000-1000-10".into(),
            activation: "relu".into(),
            bias: true,
        }
    }
}

/// A Linear layer and the activation after it (none for the output layer): the unit
/// that DFA, DRTP and local rules address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Index of the Linear layer.
    pub linear: usize,
    /// Index of the activation layer after it, if any.
    pub activation: Option<usize>,
    /// Input width of the Linear layer.
    pub inputs: usize,
    /// Output width of the block: the weight layer's, or the pooling layer's when the
    /// block ends in one.
    pub outputs: usize,
    /// Index of a pooling layer after the activation that belongs to the block
    /// ([`BlockShape::CHAIN`] only).
    pub pool: Option<usize>,
    /// Index of a normalisation layer between the weight layer and the activation
    /// ([`BlockShape::CHAIN`] only).
    pub norm: Option<usize>,
}

/// Where pooling layers may sit in a [`Model::block_walk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Nowhere.
    Refused,
    /// Between blocks, belonging to none (direct feedback projects onto each weight
    /// layer's output).
    Between,
    /// At the end of a block, after its activation (block-local rules).
    Inside,
}

/// The blocks a rule can address: what may start a block and what it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockShape {
    /// A convolution starts a block as a Linear layer does.
    pub conv: bool,
    /// A normalisation layer may sit between the weight layer and the activation.
    pub norm: bool,
    /// Where pooling layers may sit.
    pub pool: Pooling,
}

impl BlockShape {
    /// Linear → activation blocks only: the energy-based rules, Forward-Forward,
    /// target propagation.
    pub const LAYERED: BlockShape = BlockShape {
        conv: false,
        norm: false,
        pool: Pooling::Refused,
    };
    /// Weight layers with their activation, pooling between them (direct feedback).
    pub const WEIGHTS: BlockShape = BlockShape {
        conv: true,
        norm: false,
        pool: Pooling::Between,
    };
    /// Weight layer, normalisation, activation and pooling per block (local losses,
    /// synthetic gradients).
    pub const CHAIN: BlockShape = BlockShape {
        conv: true,
        norm: true,
        pool: Pooling::Inside,
    };

    fn describe(self) -> &'static str {
        match (self.conv, self.norm, self.pool) {
            (false, false, Pooling::Refused) => "a stack of Linear→activation blocks",
            (true, false, Pooling::Between) => {
                "Linear or Conv2d layers, each with its activation, pooling between them"
            }
            _ => "a Linear or Conv2d layer, its normalisation, its activation, then pooling",
        }
    }
}

/// A sequence of layers.
#[derive(Debug)]
pub struct Model {
    layers: Vec<Box<dyn Layer>>,
    inputs: usize,
    outputs: usize,
    spec: ModelSpec,
    /// Seed of the training passes' randomness (dropout masks), set per step by whoever
    /// owns the model (`&mut`): a pass reads it, never changes it.
    train_seed: u64,
    /// Element type of activations and matrix-product inputs (mixed precision).
    precision: DType,
    /// Factor on the output error of the backward chain (f16 loss scaling); its
    /// parameter gradients are divided by it again, so they are unscaled.
    loss_scale: f64,
    /// Gradient checkpointing of training passes.
    segments: Segments,
}

impl Trace {
    /// Records `d` as the signal at layer `i`'s output — unless the trace is
    /// checkpointed: then no layer's error is kept (they are as large as the activations
    /// checkpointing frees; the optimizers that read them are refused with it).
    pub fn record_error(&mut self, i: usize, d: Tensor) {
        if self.recompute.is_none() {
            self.errors[i] = Some(d);
        }
    }

    /// Makes record `i` present: under gradient checkpointing, recomputes the records of
    /// the segment holding layer `i` from its kept input (dropping the segment recomputed
    /// before); otherwise nothing. A backward pass that reads records from the top layer
    /// down recomputes each segment once.
    pub fn ensure(&mut self, model: &Model, p: &Params, i: usize) -> Result<()> {
        let Some(r) = self.recompute.as_mut() else {
            return Ok(());
        };
        let Some(seg) = r.bounds.windows(2).position(|w| w[0] <= i && i < w[1]) else {
            return Err(Error::shape(
                "checkpointed trace",
                format!("layer {i} of {}", self.records.len()),
            ));
        };
        if r.current == Some(seg) {
            return Ok(());
        }
        let dt = r.output.dtype();
        if let Some(c) = r.current {
            for j in r.bounds[c]..r.bounds[c + 1] {
                let name = std::mem::take(&mut self.records[j].layer);
                self.records[j] = Record::empty(&name, dt);
            }
            if let Some(last) = self.records.last_mut()
                && last.output.is_empty()
            {
                last.output = r.output.clone();
            }
        }
        let range = r.bounds[seg]..r.bounds[seg + 1];
        let (_, recs) = model.forward_range(p, &r.inputs[seg], range.clone(), true)?;
        for (j, rec) in range.zip(recs) {
            self.records[j] = rec;
        }
        r.current = Some(seg);
        Ok(())
    }
}

/// A layer's output `y` in the element type of its input `x` when that is bf16 or f16
/// (a product or normalisation computes in f32; mixed precision stores its result
/// rounded). f32 and f64 outputs are left as they are.
pub(crate) fn follow(y: Tensor, x: &Tensor) -> Tensor {
    if x.dtype().is_reduced() && y.dtype() != x.dtype() {
        y.to_dtype(x.dtype())
    } else {
        y
    }
}

/// Whether a parameter-store entry is a buffer (running statistics) rather than a
/// trainable parameter.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

/// Most blocks a generated model (`resmlp:IN-WxDEPTH-OUT`) may have: each is an object
/// built before any parameter exists, so the depth is bounded here, not by memory.
pub const MAX_DEPTH: usize = 100_000;

impl Model {
    /// Builds a model from its spec.
    ///
    /// ```
    /// use futureprop::nn::{Model, ModelSpec};
    /// let m = Model::build(&ModelSpec { spec: "mlp:4-8-3".into(), ..Default::default() }).unwrap();
    /// assert_eq!((m.inputs(), m.outputs(), m.layers().len()), (4, 3, 3));
    /// ```
    pub fn build(spec: &ModelSpec) -> Result<Model> {
        if let Some(m) = Self::named(spec)? {
            return Ok(m);
        }
        if let Some(rest) = spec.spec.strip_prefix("resmlp:") {
            return Self::residual_mlp(spec, rest);
        }
        if spec.spec.ends_with(".toml") {
            let path = std::path::Path::new(&spec.spec);
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let desc = super::ModelDesc::from_toml(&text)
                .map_err(|e| Error::config("model", format!("{}: {e}", spec.spec)))?;
            return Self::from_desc(spec, &desc);
        }
        if let Some(desc) = super::describe::named(&spec.spec, 10)? {
            return Self::from_desc(spec, &desc);
        }
        if let Some(rest) = spec.spec.strip_prefix("snn:") {
            let mut m = super::spiking::build(spec, rest)?;
            m.spec = spec.clone();
            return Ok(m);
        }
        for (kind, cell) in [("lstm:", super::Cell::Lstm), ("rnn:", super::Cell::Elman)] {
            if let Some(rest) = spec.spec.strip_prefix(kind) {
                return Self::recurrent(spec, cell, rest);
            }
        }
        let (kind, rest) = spec.spec.split_once(':').ok_or_else(|| {
            Error::config(
                "model",
                format!("'{}' has no kind; expected e.g. mlp:784-1000-10", spec.spec),
            )
        })?;
        if kind != "mlp" && kind != "linear" {
            return Err(Error::unknown("model kind", kind, &["mlp", "linear"]));
        }
        // Each width may carry its own activation: `30:linear` (hidden widths only).
        let mut own_act: Vec<Option<ActivationSpec>> = Vec::new();
        let widths = rest
            .split('-')
            .map(|tok| {
                let (w, act) = match tok.split_once(':') {
                    Some((w, a)) => (w, Some(parse_activation(a)?)),
                    None => (tok, None),
                };
                own_act.push(act);
                match w.parse::<usize>() {
                    Ok(v) if v > 0 => super::bounded(&spec.spec, "width", v, super::MAX_WIDTH),
                    _ => Err(Error::config(
                        "model",
                        format!("width '{w}' in '{}' is not a positive integer", spec.spec),
                    )),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        if own_act.first().is_some_and(Option::is_some)
            || own_act.last().is_some_and(Option::is_some)
        {
            return Err(Error::config(
                "model",
                format!(
                    "'{}': only hidden widths take an activation (WIDTH:ACT); the input has none and the output is linear (the loss applies its link)",
                    spec.spec
                ),
            ));
        }
        if widths.len() < 2 {
            return Err(Error::config(
                "model",
                format!(
                    "'{}' needs at least an input and an output width",
                    spec.spec
                ),
            ));
        }
        if kind == "linear" && widths.len() != 2 {
            return Err(Error::config(
                "model",
                "linear:IN-OUT takes exactly two widths",
            ));
        }
        let act = parse_activation(&spec.activation)?;
        let mut layers: Vec<Box<dyn Layer>> = Vec::new();
        let n = widths.len() - 1;
        for i in 0..n {
            layers.push(Box::new(Linear::new(
                format!("fc{}", i + 1),
                widths[i],
                widths[i + 1],
                spec.bias,
            )));
            if i + 1 < n {
                let name = format!("act{}", i + 1);
                layers.push(match own_act[i + 1].unwrap_or(act) {
                    ActivationSpec::Fixed(f) => Box::new(Activation::new(name, f)),
                    ActivationSpec::PRelu => Box::new(PRelu::new(name, widths[i + 1])),
                });
            }
        }
        Ok(Model {
            layers,
            inputs: widths[0],
            outputs: widths[n],
            spec: spec.clone(),
            train_seed: 0,
            precision: DType::F32,
            loss_scale: 1.0,
            segments: Segments::Off,
        })
    }

    /// The named convolutional models, for 1×28×28 inputs (MNIST, Fashion-MNIST):
    /// - `lenet5` (LeCun et al. 1998): conv 6@5×5 (padding 2, standing in for the paper's
    ///   32×32 input), tanh, 2×2 average pool, conv 16@5×5, tanh, average pool, conv
    ///   120@5×5, tanh, fc 84, tanh, fc 10;
    /// - `biotorch-lenet` (BioTorch's `le_net_mnist`): the same stack with ReLU and 2×2 max
    ///   pooling (padding 2 again stands in for BioTorch's 32×32 resize).
    ///
    /// `None` when `spec` names no such model.
    fn named(spec: &ModelSpec) -> Result<Option<Model>> {
        use super::conv::{Conv2d, ConvOptions, Pool2d, PoolKind};
        let (act, pool) = match spec.spec.as_str() {
            "lenet5" => (Unary::Tanh, PoolKind::Average),
            "biotorch-lenet" => (Unary::Relu, PoolKind::Max),
            _ => return Ok(None),
        };
        let conv = |name: &str, input, out, pad| {
            Conv2d::new(
                name,
                input,
                out,
                (5, 5),
                ConvOptions {
                    padding: (pad, pad),
                    bias: spec.bias,
                    ..Default::default()
                },
            )
        };
        let pool2 = |name: &str, input| Pool2d::new(name, pool, input, (2, 2), (2, 2), (0, 0));
        let c1 = conv("conv1", (1, 28, 28), 6, 2)?;
        let p1 = pool2("pool1", c1.output_map())?;
        let c2 = conv("conv2", p1.output_map(), 16, 0)?;
        let p2 = pool2("pool2", c2.output_map())?;
        let c3 = conv("conv3", p2.output_map(), 120, 0)?;
        let a = |i: usize| -> Box<dyn Layer> { Box::new(Activation::new(format!("act{i}"), act)) };
        let layers: Vec<Box<dyn Layer>> = vec![
            Box::new(c1),
            a(1),
            Box::new(p1),
            Box::new(c2),
            a(2),
            Box::new(p2),
            Box::new(c3),
            a(3),
            Box::new(Linear::new("fc1", 120, 84, spec.bias)),
            a(4),
            Box::new(Linear::new("fc2", 84, 10, spec.bias)),
        ];
        let mut m = Model::from_layers(layers, 784)?;
        m.spec = spec.clone();
        Ok(Some(m))
    }

    /// A model from a layer description.
    pub fn from_desc(spec: &ModelSpec, desc: &super::ModelDesc) -> Result<Model> {
        let (layers, inputs) = desc.build(spec.bias)?;
        let mut m = Model::from_layers(layers, inputs)?;
        m.spec = spec.clone();
        Ok(m)
    }

    /// `lstm:TxD-H-OUT` / `rnn:TxD-H-OUT`: a recurrent layer of H units over T steps of D
    /// features, then Linear H→OUT on the last hidden state (sequential MNIST:
    /// `lstm:28x28-128-10`).
    fn recurrent(spec: &ModelSpec, cell: super::Cell, rest: &str) -> Result<Model> {
        let bad = || {
            Error::config(
                "model",
                format!(
                    "'{}': expected lstm:STEPSxFEATURES-HIDDEN-OUT, e.g. lstm:28x28-128-10",
                    spec.spec
                ),
            )
        };
        let parts: Vec<&str> = rest.split('-').collect();
        let [td, hid, out] = parts.as_slice() else {
            return Err(bad());
        };
        let (t, d) = td.split_once('x').ok_or_else(bad)?;
        let num = |s: &str| s.parse::<usize>().ok().filter(|v| *v > 0).ok_or_else(bad);
        let (t, d, hid, out) = (num(t)?, num(d)?, num(hid)?, num(out)?);
        for (what, v) in [
            ("steps", t),
            ("features", d),
            ("hidden width", hid),
            ("outputs", out),
        ] {
            super::bounded(&spec.spec, what, v, super::MAX_WIDTH)?;
        }
        super::bounded(
            &spec.spec,
            "input width (steps × features)",
            t.saturating_mul(d),
            super::MAX_WIDTH,
        )?;
        let name = if cell == super::Cell::Lstm {
            "lstm"
        } else {
            "rnn"
        };
        let layers: Vec<Box<dyn Layer>> = vec![
            Box::new(super::Recurrent::new(name, cell, d, hid, t)?),
            Box::new(Linear::new("fc", hid, out, spec.bias)),
        ];
        let mut m = Model::from_layers(layers, t * d)?;
        m.spec = spec.clone();
        Ok(m)
    }

    /// `resmlp:IN-WxD-OUT`: Linear IN→W and the activation, then D pre-norm residual
    /// blocks x + act(Linear(LayerNorm(x))) of width W, then Linear W→OUT.
    fn residual_mlp(spec: &ModelSpec, rest: &str) -> Result<Model> {
        use super::{LayerNorm, Residual};
        let bad = || {
            Error::config(
                "model",
                format!(
                    "'{}': expected resmlp:IN-WIDTHxDEPTH-OUT, e.g. resmlp:784-256x20-10",
                    spec.spec
                ),
            )
        };
        let parts: Vec<&str> = rest.split('-').collect();
        let [inp, mid, out] = parts.as_slice() else {
            return Err(bad());
        };
        let (w, d) = mid.split_once('x').ok_or_else(bad)?;
        let num = |t: &str| t.parse::<usize>().ok().filter(|v| *v > 0).ok_or_else(bad);
        let (inp, w, d, out) = (num(inp)?, num(w)?, num(d)?, num(out)?);
        for (what, v) in [("input width", inp), ("width", w), ("outputs", out)] {
            super::bounded(&spec.spec, what, v, super::MAX_WIDTH)?;
        }
        if d > MAX_DEPTH {
            return Err(Error::config(
                "model",
                format!(
                    "'{}': depth {d} is more than the {MAX_DEPTH} blocks a model may have",
                    spec.spec
                ),
            ));
        }
        let act = match parse_activation(&spec.activation)? {
            ActivationSpec::Fixed(f) => f,
            ActivationSpec::PRelu => {
                return Err(Error::config("model", "resmlp takes a fixed activation"));
            }
        };
        let mut layers: Vec<Box<dyn Layer>> = vec![
            Box::new(Linear::new("fc_in", inp, w, spec.bias)),
            Box::new(Activation::new("act_in", act)),
        ];
        for k in 1..=d {
            let inner: Vec<Box<dyn Layer>> = vec![
                Box::new(LayerNorm::new(format!("res{k}.norm"), w, true)),
                Box::new(Linear::new(format!("res{k}.fc"), w, w, spec.bias)),
                Box::new(Activation::new(format!("res{k}.act"), act)),
            ];
            layers.push(Box::new(Residual::new(format!("res{k}"), inner, w)?));
        }
        layers.push(Box::new(Linear::new("fc_out", w, out, spec.bias)));
        let mut m = Model::from_layers(layers, inp)?;
        m.spec = spec.clone();
        Ok(m)
    }

    /// The model as hidden blocks and a Linear output block, in the shape a rule
    /// accepts ([`BlockShape`]): one walk for every block-wise rule. A block is a weight
    /// layer (Linear, or Conv2d where the shape allows), then a normalisation layer
    /// (where allowed), the activation and a pooling layer (inside the block, or
    /// skipped between blocks, where allowed), each optional but the first. The last
    /// block is a Linear layer with nothing after it. `rule` names the rule in errors.
    pub fn block_walk(&self, rule: &str, shape: BlockShape) -> Result<(Vec<Block>, Block)> {
        let bad = |why: String| Error::config("model", format!("{rule}: {why}"));
        let kind = |i: usize| self.layers.get(i).map(|l| l.kind());
        let is_act = |i: usize| {
            matches!(
                kind(i),
                Some(LayerKind::Activation(_) | LayerKind::ParametricActivation)
            )
        };
        let is_pool = |i: usize| matches!(kind(i), Some(LayerKind::Pool2d { .. }));
        let starts = |k: &LayerKind| match k {
            LayerKind::Linear { .. } => true,
            LayerKind::Conv2d { .. } => shape.conv,
            _ => false,
        };
        let mut blocks = Vec::new();
        let (mut width, mut i) = (self.inputs, 0);
        while i < self.layers.len() {
            let l = &self.layers[i];
            if shape.pool == Pooling::Between && is_pool(i) {
                width = l.output_width(width)?;
                i += 1;
                continue;
            }
            if !starts(&l.kind()) {
                return Err(bad(format!(
                    "layer {} does not start a block ({})",
                    l.name(),
                    shape.describe()
                )));
            }
            let start = i;
            let mut out = l.output_width(width)?;
            i += 1;
            let norm = (shape.norm
                && matches!(kind(i), Some(LayerKind::Norm | LayerKind::BatchNorm)))
            .then_some(i);
            i += usize::from(norm.is_some());
            let activation = is_act(i).then_some(i);
            i += usize::from(activation.is_some());
            let pool = (shape.pool == Pooling::Inside && is_pool(i)).then_some(i);
            if let Some(p) = pool {
                out = self.layers[p].output_width(out)?;
                i += 1;
            }
            blocks.push(Block {
                linear: start,
                activation,
                inputs: width,
                outputs: out,
                pool,
                norm,
            });
            width = out;
        }
        let last = blocks
            .pop()
            .ok_or_else(|| bad("the model has no weight layer".into()))?;
        if last.activation.is_some()
            || last.pool.is_some()
            || last.norm.is_some()
            || last.linear + 1 != self.layers.len()
            || !matches!(self.layers[last.linear].kind(), LayerKind::Linear { .. })
        {
            return Err(bad(format!(
                "the model must end in a Linear output layer ({})",
                shape.describe()
            )));
        }
        Ok((blocks, last))
    }

    /// Whether any layer is a convolution or a pooling layer.
    pub fn has_conv_layers(&self) -> bool {
        self.layers.iter().any(|l| {
            matches!(
                l.kind(),
                LayerKind::Conv2d { .. } | LayerKind::Pool2d { .. }
            )
        })
    }

    /// A model from explicit layers (for tests and custom architectures).
    pub fn from_layers(layers: Vec<Box<dyn Layer>>, inputs: usize) -> Result<Model> {
        let mut w = inputs;
        for l in &layers {
            w = l.output_width(w)?;
        }
        Ok(Model {
            layers,
            inputs,
            outputs: w,
            spec: ModelSpec {
                spec: "custom".into(),
                ..Default::default()
            },
            train_seed: 0,
            precision: DType::F32,
            loss_scale: 1.0,
            segments: Segments::Off,
        })
    }

    /// The spec it was built from.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The layers in order.
    pub fn layers(&self) -> &[Box<dyn Layer>] {
        &self.layers
    }

    /// Input width.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Output width.
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// The hidden activation of a spec-built model (the first activation layer's map).
    pub fn hidden_activation(&self) -> Option<Unary> {
        self.layers.iter().find_map(|l| match l.kind() {
            LayerKind::Activation(f) => Some(f),
            _ => None,
        })
    }

    /// Elements of every parameter and buffer the model draws (no allocation).
    pub fn param_count(&self) -> usize {
        self.layers
            .iter()
            .fold(0usize, |a, l| a.saturating_add(l.param_count()))
    }

    /// Per-sample elements of a forward pass: every layer's output width, summed.
    pub fn activation_count(&self) -> Result<usize> {
        let (mut w, mut total) = (self.inputs, 0usize);
        for l in &self.layers {
            w = l.output_width(w)?;
            total = total.saturating_add(w);
        }
        Ok(total)
    }

    /// Draws fresh parameters with `init` from `seed`. The parameters' memory is
    /// reserved fallibly first, so a model too large for the machine is an error, not an
    /// abort.
    pub fn init_params(&self, init: Init, seed: u64) -> Result<Params> {
        let n = self.param_count();
        let mut probe: Vec<f32> = Vec::new();
        probe.try_reserve_exact(n).map_err(|_| {
            Error::config(
                "model",
                format!(
                    "'{}' has {n} parameters ({}); that much memory cannot be allocated here",
                    self.spec.spec,
                    crate::mem::human((n as u64).saturating_mul(4))
                ),
            )
        })?;
        drop(probe);
        let init = match init {
            Init::Auto => match self.hidden_activation() {
                Some(
                    Unary::Relu | Unary::LeakyRelu(_) | Unary::Elu(_) | Unary::Gelu | Unary::Silu,
                ) => Init::HeUniform,
                Some(Unary::Selu) => Init::LecunNormal,
                None if self
                    .layers
                    .iter()
                    .any(|l| l.kind() == LayerKind::ParametricActivation) =>
                {
                    Init::HeUniform
                }
                _ => Init::XavierUniform,
            },
            i => i,
        };
        let mut rng = crate::Rng::seed_from_u64(seed);
        let mut p = Params::new();
        for l in &self.layers {
            l.init_params(init, &mut rng, &mut p)?;
        }
        Ok(p)
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let (_, c) = x.dims2()?;
        if c != self.inputs {
            return Err(Error::shape(
                "model input",
                format!(
                    "model '{}' expects {} features per sample, the data has {c}",
                    self.spec.spec, self.inputs
                ),
            ));
        }
        Ok(())
    }

    /// Evaluation forward pass keeping only the output (dropout off, batch
    /// normalisation with running statistics).
    pub fn forward(&self, p: &Params, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        let mut h = self.cast_input(x);
        for l in &self.layers {
            let mut rec = Record::new(l.name(), h.clone());
            h = follow(l.forward(p, &h, &mut rec)?, &h);
        }
        Ok(h)
    }

    /// Sets the element type of activations and matrix-product inputs: `F32` (the
    /// default) or, for mixed precision (as `torch.autocast`), `BF16` or `F16`. The
    /// input is cast to it and every layer's output keeps it, so stored activations
    /// take its size; products accumulate in f32, reductions, losses and normalisation
    /// statistics run in f32, and parameters and gradients stay f32 ([`Params`]).
    pub fn set_precision(&mut self, precision: DType) {
        self.precision = precision;
    }

    /// The element type of activations.
    pub fn precision(&self) -> DType {
        self.precision
    }

    /// Sets the loss scale of the backward chain (f16 mixed precision): the output error
    /// is multiplied by it before the chain runs, so small errors survive f16, and each
    /// layer's parameter gradients are divided by it (Micikevicius et al. 2018).
    pub fn set_loss_scale(&mut self, scale: f64) {
        self.loss_scale = scale;
    }

    /// The loss scale of the backward chain (1 unless f16 training set it).
    pub fn loss_scale(&self) -> f64 {
        self.loss_scale
    }

    /// Sets gradient checkpointing of training passes (Chen et al. 2016): with K
    /// segments, [`Model::forward_trace`] keeps only each segment's input and empty
    /// records, and a backward pass recomputes a segment's records when it first reads
    /// one of them ([`Trace::ensure`]; [`crate::nn::backward_layers`] does). The same
    /// kernels and seeds, so the update is bit-identical; activation memory falls from
    /// every layer's records to K inputs plus one segment's records.
    pub fn set_checkpoint_segments(&mut self, segments: Segments) {
        self.segments = segments;
    }

    /// Gradient checkpointing of training passes.
    pub fn checkpoint_segments(&self) -> Segments {
        self.segments
    }

    /// The input in the model's precision (unchanged for f32 and f64 data at `F32`).
    fn cast_input(&self, x: &Tensor) -> Tensor {
        if self.precision.is_reduced() {
            x.to_dtype(self.precision)
        } else {
            x.clone()
        }
    }

    /// Sets the seed of the next training passes' randomness (the trainer sets it from
    /// the run's seed and the step, so dropout masks survive a resume).
    pub fn set_train_seed(&mut self, seed: u64) {
        self.train_seed = seed;
    }

    /// The seed of the current training passes.
    pub fn train_seed(&self) -> u64 {
        self.train_seed
    }

    /// Folds the running statistics measured by training passes into `p`'s buffers.
    pub fn commit_state(&self, p: &mut Params) -> Result<()> {
        self.layers.iter().try_for_each(|l| l.commit_state(p))
    }

    /// Forgets the statistics of training passes since the last commit.
    pub fn discard_state(&self) {
        self.layers.iter().for_each(|l| l.discard_state());
    }

    /// Forward pass of training, recording every layer's input and output: dropout is
    /// on (masks drawn from [`Model::train_seed`]) and batch normalisation uses batch
    /// statistics. [`Model::forward`] is the evaluation pass.
    pub fn forward_trace(&self, p: &Params, x: &Tensor) -> Result<Trace> {
        self.forward_trace_with(p, x, false)
    }

    /// [`Model::forward_trace`] as a pass of an online rule when `online` (recurrent
    /// layers run UORO forward and keep no history).
    pub fn forward_trace_with(&self, p: &Params, x: &Tensor, online: bool) -> Result<Trace> {
        self.check_input(x)?;
        if self.segments != Segments::Off && !online {
            return self.forward_segments(p, x);
        }
        let mut records = Vec::with_capacity(self.layers.len());
        let mut h = self.cast_input(x);
        let seed = Some(self.train_seed());
        for l in &self.layers {
            let mut rec = Record::training(l.name(), h.clone(), seed);
            rec.online = online;
            h = follow(l.forward(p, &h, &mut rec)?, &h);
            rec.output = h.clone();
            records.push(rec);
        }
        Ok(Trace {
            errors: vec![None; records.len()],
            records,
            recompute: None,
        })
    }

    /// The checkpointed training pass: each segment's input kept, its records dropped
    /// as soon as it has run (this pass takes batch statistics; recomputations do not).
    fn forward_segments(&self, p: &Params, x: &Tensor) -> Result<Trace> {
        let n = self.layers.len();
        let k = self.segments.count(n);
        let bounds: Vec<usize> = (0..=k).map(|j| j * n / k).collect();
        let mut inputs = Vec::with_capacity(k);
        let mut h = self.cast_input(x);
        for w in bounds.windows(2) {
            inputs.push(h.clone());
            h = self.forward_range(p, &h, w[0]..w[1], false)?.0;
        }
        let mut records: Vec<Record> = self
            .layers
            .iter()
            .map(|l| Record::empty(l.name(), h.dtype()))
            .collect();
        if let Some(last) = records.last_mut() {
            last.output = h.clone();
        }
        Ok(Trace {
            errors: vec![None; n],
            records,
            recompute: Some(super::Recompute {
                bounds,
                inputs,
                current: None,
                output: h,
            }),
        })
    }

    /// The training pass of layers `range` on their input `x` (the output of the layer
    /// before `range.start`): the output, and every layer's record when `keep` (else
    /// each record is dropped as soon as its layer has run). A kept pass is a
    /// recomputation ([`Record::recompute`]): batch normalisation takes its statistics
    /// from the pass that kept nothing. The same kernels and seeds
    /// as [`Model::forward_trace`], so recomputing a range gives its records bit for bit
    /// (gradient checkpointing).
    pub fn forward_range(
        &self,
        p: &Params,
        x: &Tensor,
        range: std::ops::Range<usize>,
        keep: bool,
    ) -> Result<(Tensor, Vec<Record>)> {
        if range.start == 0 {
            self.check_input(x)?;
        }
        let mut records = Vec::new();
        let mut h = if range.start == 0 {
            self.cast_input(x)
        } else {
            x.clone()
        };
        let seed = Some(self.train_seed());
        for l in &self.layers[range] {
            let mut rec = Record::training(l.name(), h.clone(), seed);
            // A kept pass is the recomputation: the first pass took the statistics.
            rec.recompute = keep;
            h = follow(l.forward(p, &h, &mut rec)?, &h);
            if keep {
                rec.output = h.clone();
                records.push(rec);
            }
        }
        Ok((h, records))
    }

    /// Replaces every top-level Linear and convolution layer by its LSQ-quantised form
    /// ([`super::QuantLinear`], [`super::QuantConv2d`]); an input that follows a ReLU
    /// (through pooling) is quantised unsigned. Layers inside blocks stay as they are.
    pub fn quantize(&mut self, scheme: super::QuantScheme) -> Result<()> {
        for i in 0..self.layers.len() {
            // Pooling keeps a ReLU's output non-negative.
            let unsigned = self.layers[..i]
                .iter()
                .rev()
                .find(|l| !matches!(l.kind(), LayerKind::Pool2d { .. }))
                .is_some_and(|l| {
                    matches!(l.kind(), LayerKind::Activation(crate::tensor::Unary::Relu))
                });
            let name = self.layers[i].name().to_string();
            let quantized: Box<dyn Layer> = match self.layers[i].kind() {
                LayerKind::Linear {
                    inputs,
                    outputs,
                    bias,
                } => {
                    let linear = super::Linear::new(&name, inputs, outputs, bias);
                    Box::new(super::QuantLinear::new(linear, scheme, unsigned))
                }
                LayerKind::Conv2d {
                    window: w,
                    out_channels,
                    groups,
                    bias,
                } => {
                    let opts = super::conv::ConvOptions {
                        stride: w.stride,
                        padding: w.padding,
                        dilation: w.dilation,
                        groups,
                        bias,
                    };
                    let conv = super::conv::Conv2d::new(
                        &name,
                        (w.channels, w.height, w.width),
                        out_channels,
                        w.kernel,
                        opts,
                    )?;
                    Box::new(super::QuantConv2d::new(conv, scheme, unsigned))
                }
                _ => continue,
            };
            self.layers[i] = quantized;
        }
        Ok(())
    }

    /// The evaluation pass with every layer that has one on integer kernels
    /// ([`Layer::forward_integer`]: quantised Linear layers of at most 8 bits); the same
    /// outputs as [`Model::forward`] up to the rounding of the final scaling.
    pub fn forward_integer(&self, p: &Params, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        let mut h = self.cast_input(x);
        for l in &self.layers {
            h = match l.forward_integer(p, &h) {
                Some(y) => y?,
                None => {
                    let mut rec = Record::new(l.name(), h.clone());
                    follow(l.forward(p, &h, &mut rec)?, &h)
                }
            };
        }
        Ok(h)
    }

    /// Runs `x` through the model in evaluation mode, letting each layer set what it
    /// estimates from data ([`Layer::calibrate`]) from its input before it runs.
    pub fn calibrate(&self, p: &mut Params, x: &Tensor) -> Result<()> {
        self.check_input(x)?;
        let mut h = self.cast_input(x);
        for l in &self.layers {
            l.calibrate(p, &h)?;
            let mut rec = Record::new(l.name(), h.clone());
            h = follow(l.forward(p, &h, &mut rec)?, &h);
        }
        Ok(())
    }

    /// Number of trainable scalars of the model's layers in `p`.
    pub fn num_parameters(&self, p: &Params) -> usize {
        let prefixes: Vec<String> = self
            .layers
            .iter()
            .map(|l| format!("{}.", l.name()))
            .collect();
        p.iter()
            .filter(|(n, _)| {
                !is_buffer(n) && prefixes.iter().any(|pre| n.starts_with(pre.as_str()))
            })
            .map(|(_, t)| t.len())
            .sum()
    }
}

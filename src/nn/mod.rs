//! Layers, models, initialisers and losses.
//!
//! A [`Layer`] owns no learning rule: it knows its forward map, the *local* gradient of
//! its parameters given the error at its output ([`Layer::param_grads`]), and the
//! transposed Jacobian that carries an output error to its input ([`Layer::input_grad`],
//! the "weight transport" of backprop). Rules combine these pieces.

mod activation;
mod blocks;
mod chain;
mod conv;
pub mod curvature;
mod describe;
mod init;
mod linear;
mod loss;
mod model;
mod norm;
mod params;
mod quant;
mod quant_conv;
mod recurrent;
pub mod spiking;

pub use activation::{ACTIVATION_NAMES, Activation, ActivationSpec, PRelu, parse_activation};
pub use blocks::{Dense, Highway, LayerNorm, Residual};
pub use chain::{Segments, backward_chain, backward_layers};
pub use conv::{Conv2d, ConvOptions, Pool2d, PoolKind};
pub use describe::{LayerDesc, ModelDesc, Shape};
pub use init::{INIT_NAMES, Init};
pub use linear::Linear;
pub use loss::{LOSS_NAMES, Loss, Target};
pub use model::{Block, BlockShape, Model, ModelSpec, Pooling, is_buffer};
pub use norm::{BatchSync, Dropout, NormKind, Normalization, set_batch_sync};
pub use params::{Grads, Params};
pub use quant::{Grid, QuantLinear, QuantScheme};
pub use quant_conv::QuantConv2d;
pub use recurrent::{Cell, Recurrent};

use crate::error::Result;
use crate::tensor::Tensor;

/// What one layer saw and produced in a forward pass.
#[derive(Debug, Clone)]
pub struct Record {
    /// Name of the layer that produced it (its parameters are `"{layer}.{param}"`).
    pub layer: String,
    /// The layer's input.
    pub input: Tensor,
    /// The layer's output.
    pub output: Tensor,
    /// Anything else the layer keeps for its backward maths (masks, statistics).
    pub saved: Vec<Tensor>,
    /// `Some(seed)` in a training pass (dropout draws its mask from the seed, batch
    /// normalisation uses batch statistics); `None` in evaluation.
    pub train: Option<u64>,
    /// A pass of an online rule (UORO): recurrent layers advance their forward-mode
    /// estimate step by step and keep no history.
    pub online: bool,
    /// A training pass recomputed for gradient checkpointing: its batch statistics were
    /// already taken by the first pass, so normalisation layers do not take them again.
    pub recompute: bool,
}

impl Record {
    /// A record of layer `layer` holding only the input (the model fills `output` after
    /// `forward`).
    pub fn new(layer: &str, input: Tensor) -> Self {
        Record {
            layer: layer.to_string(),
            output: input.clone(),
            input,
            saved: Vec::new(),
            train: None,
            online: false,
            recompute: false,
        }
    }

    /// A record of layer `layer` holding nothing (an empty `dtype` tensor): the
    /// placeholder of a dropped or not yet computed record.
    pub fn empty(layer: &str, dtype: crate::tensor::DType) -> Self {
        Record::new(layer, Tensor::zeros(&[0, 0], dtype))
    }

    /// The record of a training pass drawing its randomness from `seed`.
    pub fn training(layer: &str, input: Tensor, seed: Option<u64>) -> Self {
        Record {
            train: seed,
            ..Record::new(layer, input)
        }
    }

    /// Bytes kept by this record (shared storage counted once per tensor here).
    pub fn size_bytes(&self) -> usize {
        self.input.size_bytes()
            + self.output.size_bytes()
            + self.saved.iter().map(Tensor::size_bytes).sum::<usize>()
    }
}

/// The records of one forward pass and the error signal a rule assigned to each layer's
/// output. Optimizers (K-FAC) and diagnostics read it, whatever the rule.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// One record per layer of the model, in order.
    pub records: Vec<Record>,
    /// `errors[i]`: the signal the rule used as ∂L/∂(output of layer i), if any.
    pub errors: Vec<Option<Tensor>>,
    /// Under gradient checkpointing: the segments' inputs, from which
    /// [`Trace::ensure`] recomputes the records a backward pass reads.
    pub recompute: Option<Recompute>,
}

/// What a checkpointed forward pass keeps (Chen et al. 2016): the input of each segment
/// of layers; the records themselves are empty until [`Trace::ensure`] recomputes them,
/// one segment at a time.
#[derive(Debug, Clone)]
pub struct Recompute {
    /// Segment `j` is layers `bounds[j]..bounds[j + 1]`.
    pub bounds: Vec<usize>,
    /// The input of each segment.
    pub inputs: Vec<Tensor>,
    /// The segment whose records are present.
    pub current: Option<usize>,
    /// The model's output (the last record's output, kept while its segment is dropped).
    pub output: Tensor,
}

impl Trace {
    /// The model's output (the last layer's output), if the trace is not empty.
    pub fn output(&self) -> Option<&Tensor> {
        self.records.last().map(|r| &r.output)
    }

    /// Bytes of activations kept by the records (and, under gradient checkpointing, the
    /// segments' inputs). Tensors shared between consecutive records (output of i =
    /// input of i+1) are counted once.
    pub fn activation_bytes(&self) -> usize {
        let mut n = self
            .recompute
            .as_ref()
            .map_or(0, |r| r.inputs.iter().map(Tensor::size_bytes).sum());
        for (i, r) in self.records.iter().enumerate() {
            if i == 0 {
                n += r.input.size_bytes();
            }
            n += r.output.size_bytes() + r.saved.iter().map(Tensor::size_bytes).sum::<usize>();
        }
        n
    }
}

/// What a layer is, for rules that treat kinds differently.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerKind {
    /// `y = x Wᵀ + b`, `W` of shape `[out, in]`.
    Linear {
        inputs: usize,
        outputs: usize,
        bias: bool,
    },
    /// An element-wise map without parameters.
    Activation(crate::tensor::Unary),
    /// Element-wise map with learned parameters (PReLU).
    ParametricActivation,
    /// 2-D convolution over flattened `[n, C·H·W]` maps.
    Conv2d {
        /// The input map and the kernel's sweep.
        window: crate::tensor::Window,
        /// Output channels.
        out_channels: usize,
        /// Channel groups.
        groups: usize,
        /// Whether the layer has a bias.
        bias: bool,
    },
    /// Normalisation with per-sample statistics (LayerNorm, GroupNorm, InstanceNorm).
    Norm,
    /// Batch normalisation (batch statistics in training, running ones in evaluation).
    BatchNorm,
    /// Inverted dropout.
    Dropout,
    /// A residual block around inner layers.
    Residual,
    /// A highway block y = T(x)·F(x) + (1 − T(x))·x.
    Highway,
    /// A dense unit y = [x, F(x)].
    Dense,
    /// A recurrent layer unrolled over a sequence.
    Recurrent,
    /// A spiking layer (an encoder, or leaky integrate-and-fire neurons unrolled over
    /// time).
    Spiking,
    /// Max (`max`) or average pooling.
    Pool2d {
        /// The input map and the window's sweep.
        window: crate::tensor::Window,
        /// Max pooling (else average).
        max: bool,
    },
}

/// Largest per-sample feature width a layer may have (2⁴⁰): anything larger cannot be
/// trained anywhere, and bounding it keeps every size product inside `usize`.
pub const MAX_WIDTH: usize = 1 << 40;
/// Largest channel count, height, width, kernel, stride, padding, dilation or group
/// count of a feature map (2²⁰), so `channels × height × width` fits in `usize`.
pub const MAX_MAP_DIM: usize = 1 << 20;

/// `v` when it is at most `max`, else an error naming `what` in `model`.
pub(crate) fn bounded(model: &str, what: &str, v: usize, max: usize) -> crate::Result<usize> {
    if v <= max {
        Ok(v)
    } else {
        Err(crate::Error::config(
            "model",
            format!("'{model}': {what} {v} is more than the largest allowed, {max}"),
        ))
    }
}

/// One layer: its forward map and the two halves of its backward map.
pub trait Layer: Send + Sync + std::fmt::Debug {
    /// Unique name within the model; its parameters are `"{name}.{param}"`.
    fn name(&self) -> &str;

    /// What kind of layer this is.
    fn kind(&self) -> LayerKind;

    /// Per-sample output width for a per-sample input width.
    fn output_width(&self, input: usize) -> Result<usize>;

    /// Draws this layer's parameters into `p`.
    fn init_params(&self, init: Init, rng: &mut crate::Rng, p: &mut Params) -> Result<()>;

    /// Number of elements `init_params` draws (parameters and buffers), known before
    /// anything is allocated.
    fn param_count(&self) -> usize;

    /// Forward map. `rec.input` is `x`; the layer may push tensors to `rec.saved`.
    fn forward(&self, p: &Params, x: &Tensor, rec: &mut Record) -> Result<Tensor>;

    /// Local and the same under every rule: adds ∂L/∂θ for this layer's parameters to
    /// `g`, given `d_out` = ∂L/∂(output) (or whatever signal the rule assigns).
    fn param_grads(&self, p: &Params, rec: &Record, d_out: &Tensor, g: &mut Grads) -> Result<()>;

    /// The transposed Jacobian applied to `d_out`: ∂L/∂(input). For Linear this is the
    /// weight transport `d_out · W`.
    fn input_grad(&self, p: &Params, rec: &Record, d_out: &Tensor) -> Result<Tensor>;

    /// Backprop through the layer in one pass: adds its parameter gradients to `g` and,
    /// when `input`, returns ∂L/∂(input). The default calls [`Layer::param_grads`] and
    /// [`Layer::input_grad`]; blocks and recurrent layers override it so their inner
    /// chain (or unrolled steps) is traversed once instead of twice.
    fn backward(
        &self,
        p: &Params,
        rec: &Record,
        d_out: &Tensor,
        g: &mut Grads,
        input: bool,
    ) -> Result<Option<Tensor>> {
        self.param_grads(p, rec, d_out, g)?;
        input.then(|| self.input_grad(p, rec, d_out)).transpose()
    }

    /// The straight-through mask of the quantiser on this layer's input, 1 where the
    /// recorded input was inside the grid (a quantised layer); `None`: no quantiser.
    /// Rules that skip the backward chain (DFA) fold it into the block below's
    /// nonlinearity: the block's output is Q(f(a)), whose STE derivative is f′·mask.
    fn input_mask<'r>(&self, _rec: &'r Record) -> Option<&'r Tensor> {
        None
    }

    /// The evaluation forward pass on integer kernels, where the layer has one (an LSQ
    /// layer of at most 8 bits: int8 × int8 → int32 products); `None`: use `forward`.
    fn forward_integer(&self, _p: &Params, _x: &Tensor) -> Option<Result<Tensor>> {
        None
    }

    /// Sets what the layer estimates from data before training (LSQ's input step from a
    /// calibration batch `x`, the layer's input); most layers have nothing to set.
    fn calibrate(&self, _p: &mut Params, _x: &Tensor) -> Result<()> {
        Ok(())
    }

    /// Its weight transport with the weight swapped ([`Transport`]): layers with a
    /// weight (Linear, Conv2d).
    fn transport(&self) -> Option<&dyn Transport> {
        None
    }

    /// Its R-operator ([`ROperator`]): Linear and fixed activations.
    fn r_operator(&self) -> Option<&dyn ROperator> {
        None
    }

    /// Its online update ([`OnlineGrads`]): recurrent layers.
    fn online(&self) -> Option<&dyn OnlineGrads> {
        None
    }

    /// Folds what training passes since the last call measured into the parameter
    /// store's buffers (BatchNorm's running statistics). Default: nothing.
    fn commit_state(&self, _p: &mut Params) -> Result<()> {
        Ok(())
    }

    /// Forgets what training passes since the last commit measured (passes run for
    /// diagnostics only). Default: nothing.
    fn discard_state(&self) {}
}

/// A layer whose weight a rule may replace in the backward pass: feedback alignment's F
/// in place of W.
pub trait Transport {
    /// The input error with the layer's weight replaced by `weight` (same shape).
    fn input_grad_with_weight(
        &self,
        p: &Params,
        rec: &Record,
        d_out: &Tensor,
        weight: &Tensor,
    ) -> Result<Tensor>;
}

/// Pearlmutter's R-operator of a layer, for Gauss–Newton and Hessian–vector products.
pub trait ROperator {
    /// R{y} = ∂y/∂r at θ + rV, input x + r·R{x} (`v` holds V; missing entries are zero).
    fn r_forward(&self, p: &Params, v: &Params, rec: &Record, rx: &Tensor) -> Result<Tensor>;

    /// R-operator of the backward maps: given R{x}, δ = ∂L/∂y and R{δ}, adds R{∂L/∂θ} to
    /// `rg` and returns R{∂L/∂x}.
    #[allow(clippy::too_many_arguments)]
    fn r_backward(
        &self,
        p: &Params,
        v: &Params,
        rec: &Record,
        rx: &Tensor,
        d_out: &Tensor,
        rd_out: &Tensor,
        rg: &mut Grads,
    ) -> Result<Tensor>;
}

/// A layer with an online credit-assignment update (UORO's estimate for a recurrent
/// layer) in place of its exact gradient.
pub trait OnlineGrads {
    /// Adds the online update for this layer's parameters to `g`.
    fn online_param_grads(
        &self,
        p: &Params,
        rec: &Record,
        d_out: &Tensor,
        g: &mut Grads,
    ) -> Result<()>;
}

/// The error for a record that lacks what the layer's forward pass saved.
pub(crate) fn missing(name: &str) -> crate::Error {
    crate::Error::config(
        format!("layer {name}"),
        "record lacks what its forward pass saved",
    )
}

pub(crate) fn no_r_operator(layer: &str) -> crate::Error {
    crate::Error::config(
        "curvature",
        format!(
            "layer {layer} has no R-operator (Gauss–Newton/Hessian products are defined for Linear and fixed activations)"
        ),
    )
}

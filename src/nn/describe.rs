//! Models described in TOML: any sequence of layers and blocks, without Rust.
//!
//! ```toml
//! input = [1, 28, 28]           # channels, height, width (or a width: input = 784)
//! [[layers]]
//! type = "conv"                 # channels, kernel, stride, padding, dilation, groups, bias
//! channels = 16
//! kernel = 3
//! padding = 1
//! [[layers]]
//! type = "batchnorm"            # 2-D over a map, 1-D over features; affine, momentum
//! [[layers]]
//! type = "relu"                 # an activation name (or type = "activation", fn = "relu";
//!                               # the identity is fn = "linear": type "linear" is a layer)
//! [[layers]]
//! type = "residual"             # layers = [...], optional shortcut = [...]
//! layers = [{ type = "conv", channels = 16, kernel = 3, padding = 1 }, { type = "relu" }]
//! [[layers]]
//! type = "globalavgpool"
//! [[layers]]
//! type = "linear"
//! out = 10
//! ```
//!
//! Other types: `maxpool`/`avgpool` (kernel, stride = kernel, padding), `flatten`,
//! `dropout` (p), `layernorm`, `groupnorm` (groups), `instancenorm`, `highway`, `dense`,
//! `rnn`/`lstm` (hidden, steps: the input is `steps` time steps of equal width). Layers
//! are named `{type}{index}` (inside a block `{block}.{type}{index}`) unless `name` is
//! given. The same descriptions build the named models `resnet20` and `vgg8b`.

use serde::Deserialize;

use super::activation::{ActivationSpec, parse_activation};
use super::conv::{Conv2d, ConvOptions, Pool2d, PoolKind};
use super::{
    Activation, Dense, Dropout, Highway, Layer, LayerNorm, Linear, Normalization, PRelu, Residual,
};
use crate::error::{Error, Result};

/// A whole model: its input and its layers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDesc {
    /// A feature width or a `[channels, height, width]` map.
    pub input: InputDesc,
    /// The layers in order.
    pub layers: Vec<LayerDesc>,
}

/// The input of a described model.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum InputDesc {
    /// Flat features.
    Width(usize),
    /// A channel-major map.
    Map([usize; 3]),
}

/// A kernel, stride, padding or dilation: one size for both axes or `[rows, cols]`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum Size {
    /// The same along both axes.
    One(usize),
    /// Rows, columns.
    Two([usize; 2]),
}

impl Size {
    fn pair(self) -> (usize, usize) {
        match self {
            Size::One(a) => (a, a),
            Size::Two([a, b]) => (a, b),
        }
    }
}

fn yes() -> bool {
    true
}

/// One layer or block of a described model.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
#[allow(missing_docs)] // the fields are documented in the module's example
pub enum LayerDesc {
    Linear {
        out: usize,
        #[serde(default = "yes")]
        bias: bool,
        name: Option<String>,
    },
    Conv {
        channels: usize,
        kernel: Size,
        stride: Option<Size>,
        padding: Option<Size>,
        dilation: Option<Size>,
        groups: Option<usize>,
        #[serde(default = "yes")]
        bias: bool,
        name: Option<String>,
    },
    Maxpool {
        kernel: Size,
        stride: Option<Size>,
        padding: Option<Size>,
        name: Option<String>,
    },
    Avgpool {
        kernel: Size,
        stride: Option<Size>,
        padding: Option<Size>,
        name: Option<String>,
    },
    Globalavgpool {
        name: Option<String>,
    },
    Flatten {
        name: Option<String>,
    },
    Activation {
        #[serde(rename = "fn")]
        function: String,
        name: Option<String>,
    },
    Batchnorm {
        #[serde(default = "yes")]
        affine: bool,
        momentum: Option<f64>,
        name: Option<String>,
    },
    Layernorm {
        #[serde(default = "yes")]
        affine: bool,
        name: Option<String>,
    },
    Groupnorm {
        groups: usize,
        #[serde(default = "yes")]
        affine: bool,
        name: Option<String>,
    },
    Instancenorm {
        #[serde(default)]
        affine: bool,
        name: Option<String>,
    },
    Dropout {
        p: f64,
        name: Option<String>,
    },
    Residual {
        layers: Vec<LayerDesc>,
        shortcut: Option<Vec<LayerDesc>>,
        name: Option<String>,
    },
    Highway {
        layers: Vec<LayerDesc>,
        name: Option<String>,
    },
    Dense {
        layers: Vec<LayerDesc>,
        name: Option<String>,
    },
    Rnn {
        hidden: usize,
        steps: usize,
        truncation: Option<usize>,
        name: Option<String>,
    },
    Lstm {
        hidden: usize,
        steps: usize,
        truncation: Option<usize>,
        name: Option<String>,
    },
}

/// What flows between layers: flat features or a channel-major map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Flat features.
    Flat(usize),
    /// Channels, height, width.
    Map(usize, usize, usize),
}

impl Shape {
    /// Features per sample.
    pub fn width(self) -> usize {
        match self {
            Shape::Flat(w) => w,
            Shape::Map(c, h, w) => c * h * w,
        }
    }

    /// Channels and positions per channel (a flat shape is channels × 1).
    fn channels_positions(self) -> (usize, usize) {
        match self {
            Shape::Flat(w) => (w, 1),
            Shape::Map(c, h, w) => (c, h * w),
        }
    }
}

impl ModelDesc {
    /// Parses a TOML description; activation names are accepted as layer types.
    pub fn from_toml(text: &str) -> Result<ModelDesc> {
        let mut v: toml::Value =
            toml::from_str(text).map_err(|e| Error::config("model description", e.to_string()))?;
        if let Some(layers) = v.get_mut("layers") {
            expand_activations(layers);
        }
        v.try_into()
            .map_err(|e: toml::de::Error| Error::config("model description", e.to_string()))
    }

    /// The input shape.
    pub fn input_shape(&self) -> Shape {
        match self.input {
            InputDesc::Width(w) => Shape::Flat(w),
            InputDesc::Map([c, h, w]) => Shape::Map(c, h, w),
        }
    }

    /// Builds the layers; returns them with the input width.
    pub fn build(&self, bias_default: bool) -> Result<(Vec<Box<dyn Layer>>, usize)> {
        use super::{MAX_MAP_DIM, MAX_WIDTH, bounded};
        match self.input {
            InputDesc::Width(w) => {
                bounded("model description", "input width", w, MAX_WIDTH)?;
            }
            InputDesc::Map(m) => {
                for v in m {
                    bounded("model description", "input map size", v, MAX_MAP_DIM)?;
                }
            }
        }
        check_sizes(&self.layers)?;
        let input = self.input_shape();
        if input.width() == 0 {
            return Err(Error::config("model description", "the input is empty"));
        }
        let (layers, _) = build_layers(&self.layers, input, "", bias_default)?;
        if layers.is_empty() {
            return Err(Error::config("model description", "has no layers"));
        }
        Ok((layers, input.width()))
    }
}

/// Every size in `descs` (recursively) within [`super::MAX_WIDTH`] (widths) or
/// [`super::MAX_MAP_DIM`] (map sizes), so building the layers cannot overflow.
fn check_sizes(descs: &[LayerDesc]) -> Result<()> {
    use super::{MAX_MAP_DIM as M, MAX_WIDTH as W, bounded};
    let at = "model description";
    let size = |what: &str, s: &Option<Size>| -> Result<()> {
        if let Some(s) = s {
            let (a, b) = s.pair();
            bounded(at, what, a.max(b), M)?;
        }
        Ok(())
    };
    for d in descs {
        match d {
            LayerDesc::Linear { out, .. } => {
                bounded(at, "linear out", *out, W)?;
            }
            LayerDesc::Conv {
                channels,
                kernel,
                stride,
                padding,
                dilation,
                groups,
                ..
            } => {
                bounded(at, "conv channels", *channels, M)?;
                bounded(at, "conv groups", groups.unwrap_or(1), M)?;
                size("conv kernel", &Some(*kernel))?;
                size("conv stride", stride)?;
                size("conv padding", padding)?;
                size("conv dilation", dilation)?;
            }
            LayerDesc::Maxpool {
                kernel,
                stride,
                padding,
                ..
            }
            | LayerDesc::Avgpool {
                kernel,
                stride,
                padding,
                ..
            } => {
                size("pool kernel", &Some(*kernel))?;
                size("pool stride", stride)?;
                size("pool padding", padding)?;
            }
            LayerDesc::Groupnorm { groups, .. } => {
                bounded(at, "groupnorm groups", *groups, M)?;
            }
            LayerDesc::Rnn { hidden, steps, .. } | LayerDesc::Lstm { hidden, steps, .. } => {
                bounded(at, "recurrent hidden width", *hidden, W)?;
                bounded(at, "recurrent steps", *steps, W)?;
            }
            LayerDesc::Residual {
                layers, shortcut, ..
            } => {
                check_sizes(layers)?;
                if let Some(s) = shortcut {
                    check_sizes(s)?;
                }
            }
            LayerDesc::Highway { layers, .. } | LayerDesc::Dense { layers, .. } => {
                check_sizes(layers)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Rewrites `{type = "relu"}` as `{type = "activation", fn = "relu"}`, recursively.
fn expand_activations(layers: &mut toml::Value) {
    let Some(arr) = layers.as_array_mut() else {
        return;
    };
    for l in arr {
        let Some(t) = l.as_table_mut() else { continue };
        if let Some(ty) = t.get("type").and_then(|v| v.as_str()).map(str::to_string)
            && ty != "linear"
            && parse_activation(&ty).is_ok()
        {
            t.insert("type".into(), toml::Value::String("activation".into()));
            t.insert("fn".into(), toml::Value::String(ty));
        }
        for key in ["layers", "shortcut"] {
            if let Some(inner) = t.get_mut(key) {
                expand_activations(inner);
            }
        }
    }
}

type Built = (Vec<Box<dyn Layer>>, Shape);

/// Builds `descs` from `input`; names get `prefix`.
pub fn build_layers(
    descs: &[LayerDesc],
    input: Shape,
    prefix: &str,
    bias_default: bool,
) -> Result<Built> {
    let mut out: Vec<Box<dyn Layer>> = Vec::new();
    let mut shape = input;
    for (i, d) in descs.iter().enumerate() {
        let idx = i + 1;
        let named = |given: &Option<String>, ty: &str| -> String {
            format!("{prefix}{}", given.clone().unwrap_or(format!("{ty}{idx}")))
        };
        let need_map = |name: &str| -> Result<(usize, usize, usize)> {
            match shape {
                Shape::Map(c, h, w) => Ok((c, h, w)),
                Shape::Flat(w) => Err(Error::config(
                    format!("layer {name}"),
                    format!(
                        "needs a [channels, height, width] map but gets {w} flat features (give the model's input as a map)"
                    ),
                )),
            }
        };
        let pool =
            |kind, kernel: &Size, stride: &Option<Size>, padding: &Option<Size>, name: String| {
                let k = kernel.pair();
                let map = need_map(&name)?;
                Pool2d::new(
                    name,
                    kind,
                    map,
                    k,
                    stride.map_or(k, Size::pair),
                    padding.map_or((0, 0), Size::pair),
                )
            };
        let (layer, next): (Box<dyn Layer>, Shape) = match d {
            LayerDesc::Linear { out, bias, name } => {
                if *out == 0 {
                    return Err(Error::config(
                        named(name, "fc"),
                        "needs at least one output",
                    ));
                }
                let b = *bias && bias_default;
                (
                    Box::new(Linear::new(named(name, "fc"), shape.width(), *out, b)),
                    Shape::Flat(*out),
                )
            }
            LayerDesc::Conv {
                channels,
                kernel,
                stride,
                padding,
                dilation,
                groups,
                bias,
                name,
            } => {
                let n = named(name, "conv");
                let c = Conv2d::new(
                    n.clone(),
                    need_map(&n)?,
                    *channels,
                    kernel.pair(),
                    ConvOptions {
                        stride: stride.map_or((1, 1), Size::pair),
                        padding: padding.map_or((0, 0), Size::pair),
                        dilation: dilation.map_or((1, 1), Size::pair),
                        groups: groups.unwrap_or(1),
                        bias: *bias && bias_default,
                    },
                )?;
                let (c2, h, w) = c.output_map();
                (Box::new(c), Shape::Map(c2, h, w))
            }
            LayerDesc::Maxpool {
                kernel,
                stride,
                padding,
                name,
            }
            | LayerDesc::Avgpool {
                kernel,
                stride,
                padding,
                name,
            } => {
                let kind = if matches!(d, LayerDesc::Maxpool { .. }) {
                    PoolKind::Max
                } else {
                    PoolKind::Average
                };
                let p = pool(kind, kernel, stride, padding, named(name, "pool"))?;
                let (c, h, w) = p.output_map();
                (Box::new(p), Shape::Map(c, h, w))
            }
            LayerDesc::Globalavgpool { name } => {
                let n = named(name, "gap");
                let p = Pool2d::global_average(n.clone(), need_map(&n)?)?;
                let (c, _, _) = p.output_map();
                (Box::new(p), Shape::Flat(c))
            }
            LayerDesc::Flatten { .. } => {
                shape = Shape::Flat(shape.width());
                continue;
            }
            LayerDesc::Activation { function, name } => {
                let n = named(name, "act");
                let l: Box<dyn Layer> = match parse_activation(function)? {
                    ActivationSpec::Fixed(f) => Box::new(Activation::new(n, f)),
                    ActivationSpec::PRelu => Box::new(PRelu::new(n, shape.width())),
                };
                (l, shape)
            }
            LayerDesc::Batchnorm {
                affine,
                momentum,
                name,
            } => {
                let (c, s) = shape.channels_positions();
                let mut b = Normalization::batch(named(name, "bn"), c, s, *affine)?;
                if let Some(m) = momentum {
                    b = b.with_momentum(*m)?;
                }
                (Box::new(b), shape)
            }
            LayerDesc::Layernorm { affine, name } => (
                Box::new(LayerNorm::new(named(name, "ln"), shape.width(), *affine)),
                shape,
            ),
            LayerDesc::Groupnorm {
                groups,
                affine,
                name,
            } => {
                let (c, s) = shape.channels_positions();
                (
                    Box::new(Normalization::group(
                        named(name, "gn"),
                        *groups,
                        c,
                        s,
                        *affine,
                    )?),
                    shape,
                )
            }
            LayerDesc::Instancenorm { affine, name } => {
                let (c, s) = shape.channels_positions();
                (
                    Box::new(Normalization::instance(named(name, "in"), c, s, *affine)?),
                    shape,
                )
            }
            LayerDesc::Dropout { p, name } => {
                (Box::new(Dropout::new(named(name, "drop"), *p)?), shape)
            }
            LayerDesc::Residual {
                layers,
                shortcut,
                name,
            } => {
                let n = named(name, "res");
                let (inner, out) = build_layers(layers, shape, &format!("{n}."), bias_default)?;
                let block = match shortcut {
                    Some(s) => {
                        let (sc, _) = build_layers(s, shape, &format!("{n}.short."), bias_default)?;
                        Residual::with_shortcut(n, inner, sc, shape.width())?
                    }
                    None => Residual::new(n, inner, shape.width())?,
                };
                (Box::new(block), out)
            }
            LayerDesc::Highway { layers, name } => {
                let n = named(name, "hw");
                let (inner, out) = build_layers(layers, shape, &format!("{n}."), bias_default)?;
                if out.width() != shape.width() {
                    return Err(Error::config(
                        format!("block {n}"),
                        "a highway block's layers must keep the width",
                    ));
                }
                (Box::new(Highway::new(n, inner, shape.width())?), shape)
            }
            LayerDesc::Dense { layers, name } => {
                let n = named(name, "dense");
                let (inner, out) = build_layers(layers, shape, &format!("{n}."), bias_default)?;
                let next = match (shape, out) {
                    (Shape::Map(c, h, w), Shape::Map(c2, h2, w2)) if (h, w) == (h2, w2) => {
                        Shape::Map(c + c2, h, w)
                    }
                    (Shape::Map(..), Shape::Map(..)) => {
                        return Err(Error::config(
                            format!("block {n}"),
                            "a dense block's layers must keep the map's height and width",
                        ));
                    }
                    _ => Shape::Flat(shape.width() + out.width()),
                };
                (Box::new(Dense::new(n, inner, shape.width())?), next)
            }
            LayerDesc::Rnn {
                hidden,
                steps,
                truncation,
                name,
            }
            | LayerDesc::Lstm {
                hidden,
                steps,
                truncation,
                name,
            } => {
                let lstm = matches!(d, LayerDesc::Lstm { .. });
                let n = named(name, if lstm { "lstm" } else { "rnn" });
                let width = shape.width();
                if *steps == 0 || !width.is_multiple_of(*steps) {
                    return Err(Error::config(
                        format!("layer {n}"),
                        format!("{steps} steps must divide the {width} input features"),
                    ));
                }
                let cell = if lstm {
                    super::recurrent::Cell::Lstm
                } else {
                    super::recurrent::Cell::Elman
                };
                let mut r = super::Recurrent::new(n, cell, width / steps, *hidden, *steps)?;
                if let Some(k) = truncation {
                    r = r.truncated(*k)?;
                }
                (Box::new(r), Shape::Flat(*hidden))
            }
        };
        // Parameters are keyed by layer name: two layers of one name would share them.
        if out.iter().any(|l| l.name() == layer.name()) {
            return Err(Error::config(
                "model description",
                format!(
                    "two layers are named '{}'; layer names must be unique",
                    layer.name()
                ),
            ));
        }
        out.push(layer);
        shape = next;
    }
    Ok((out, shape))
}

fn conv3(channels: usize, stride: usize) -> LayerDesc {
    LayerDesc::Conv {
        channels,
        kernel: Size::One(3),
        stride: Some(Size::One(stride)),
        padding: Some(Size::One(1)),
        dilation: None,
        groups: None,
        bias: false,
        name: None,
    }
}

fn bn() -> LayerDesc {
    LayerDesc::Batchnorm {
        affine: true,
        momentum: None,
        name: None,
    }
}

fn relu() -> LayerDesc {
    LayerDesc::Activation {
        function: "relu".into(),
        name: None,
    }
}

/// `(channels, height, width)` from a `CxHxW` suffix, or `default`.
fn input_map(arg: Option<&str>, default: [usize; 3], model: &str) -> Result<[usize; 3]> {
    let Some(a) = arg else { return Ok(default) };
    let v: Vec<usize> = a.split('x').filter_map(|t| t.parse().ok()).collect();
    match v.as_slice() {
        [c, h, w] if *c > 0 && *h > 0 && *w > 0 => Ok([*c, *h, *w]),
        _ => Err(Error::config(
            "model",
            format!("'{model}:{a}': expected {model}:CxHxW, e.g. {model}:3x32x32"),
        )),
    }
}

/// The named models built from descriptions, for `classes` outputs:
/// - `resnet20[:CxHxW]` (He et al. 2016, CIFAR-10 ResNet, n = 3): conv 16@3×3, BN, ReLU;
///   three stages of three basic blocks (16, 32, 64 channels; the first block of stages 2
///   and 3 strides by 2 with a 1×1 convolution + BN projection shortcut); global average
///   pooling; fc. Default input 3×32×32.
/// - `vgg8b[:CxHxW]` (Nøkland & Eidnes 2019): conv128, conv256, pool, conv256, conv512,
///   pool, conv512, pool, conv512, pool (3×3 convolutions, each with BN and ReLU),
///   fc1024 (BN, ReLU), fc. Default input 3×32×32; `vgg8b:1x28x28` for MNIST.
///
/// `None` when `spec` names neither.
pub fn named(spec: &str, classes: usize) -> Result<Option<ModelDesc>> {
    let (name, arg) = match spec.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (spec, None),
    };
    let fc = |out| LayerDesc::Linear {
        out,
        bias: true,
        name: None,
    };
    let layers = match name {
        "resnet20" => {
            let mut l = vec![conv3(16, 1), bn(), relu()];
            let mut cin = 16;
            for (c, s) in [(16, 1), (32, 2), (64, 2)] {
                for b in 0..3 {
                    let stride = if b == 0 { s } else { 1 };
                    let shortcut = (stride != 1 || cin != c).then(|| {
                        vec![
                            LayerDesc::Conv {
                                channels: c,
                                kernel: Size::One(1),
                                stride: Some(Size::One(stride)),
                                padding: None,
                                dilation: None,
                                groups: None,
                                bias: false,
                                name: None,
                            },
                            bn(),
                        ]
                    });
                    l.push(LayerDesc::Residual {
                        layers: vec![conv3(c, stride), bn(), relu(), conv3(c, 1), bn()],
                        shortcut,
                        name: None,
                    });
                    l.push(relu());
                    cin = c;
                }
            }
            l.push(LayerDesc::Globalavgpool { name: None });
            l.push(fc(classes));
            l
        }
        "vgg8b" => {
            let pool = || LayerDesc::Maxpool {
                kernel: Size::One(2),
                stride: None,
                padding: None,
                name: None,
            };
            let mut l = Vec::new();
            for c in [128, 256, 0, 256, 512, 0, 512, 0, 512, 0] {
                if c == 0 {
                    l.push(pool());
                } else {
                    l.extend([conv3(c, 1), bn(), relu()]);
                }
            }
            l.extend([fc(1024), bn(), relu(), fc(classes)]);
            l
        }
        _ => return Ok(None),
    };
    let input = input_map(arg, [3, 32, 32], name)?;
    Ok(Some(ModelDesc {
        input: InputDesc::Map(input),
        layers,
    }))
}

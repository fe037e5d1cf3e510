//! Element-wise activation layers.

use super::{Grads, Init, Layer, LayerKind, Params, ROperator, Record};
use crate::error::{Error, Result};
use crate::tensor::{Tensor, Unary};

/// Names accepted by [`parse_activation`].
pub const ACTIVATION_NAMES: &[&str] = &[
    "identity",
    "sigmoid",
    "tanh",
    "relu",
    "leaky-relu[:SLOPE]",
    "prelu",
    "elu[:ALPHA]",
    "selu",
    "silu",
    "swish",
    "gelu",
    "hard-sigmoid",
    "softplus",
];

/// A parsed activation: a fixed element-wise map or PReLU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActivationSpec {
    /// A fixed map.
    Fixed(Unary),
    /// PReLU with a learned slope per unit, initialised to 0.25 (He et al. 2015).
    PRelu,
}

/// Parses `relu`, `leaky-relu:0.2`, `elu`, `prelu`, ...
pub fn parse_activation(s: &str) -> Result<ActivationSpec> {
    let (head, arg) = match s.split_once(':') {
        Some((h, a)) => (
            h,
            Some(
                a.parse::<f64>()
                    .map_err(|_| Error::config("activation", format!("'{a}' is not a number")))?,
            ),
        ),
        None => (s, None),
    };
    let f = match head {
        "identity" | "linear" | "none" => Unary::Identity,
        "sigmoid" => Unary::Sigmoid,
        "tanh" => Unary::Tanh,
        "relu" => Unary::Relu,
        "leaky-relu" | "leaky_relu" => Unary::LeakyRelu(arg.unwrap_or(0.01)),
        "elu" => Unary::Elu(arg.unwrap_or(1.0)),
        "selu" => Unary::Selu,
        "silu" | "swish" => Unary::Silu,
        "gelu" => Unary::Gelu,
        "hard-sigmoid" | "hardsigmoid" => Unary::HardSigmoid,
        "softplus" => Unary::Softplus,
        "prelu" => return Ok(ActivationSpec::PRelu),
        _ => return Err(Error::unknown("activation", s, ACTIVATION_NAMES)),
    };
    Ok(ActivationSpec::Fixed(f))
}

/// A parameter-free element-wise layer `y = f(x)`; `∂L/∂x = ∂L/∂y ⊙ f′(x)`.
#[derive(Debug, Clone)]
pub struct Activation {
    name: String,
    /// The map.
    pub f: Unary,
}

impl Activation {
    /// An activation layer called `name`.
    pub fn new(name: impl Into<String>, f: Unary) -> Self {
        Activation {
            name: name.into(),
            f,
        }
    }
}

impl Layer for Activation {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> LayerKind {
        LayerKind::Activation(self.f)
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
    fn forward(&self, _p: &Params, x: &Tensor, _rec: &mut Record) -> Result<Tensor> {
        Ok(x.unary(self.f))
    }
    fn param_grads(&self, _: &Params, _: &Record, _: &Tensor, _: &mut Grads) -> Result<()> {
        Ok(())
    }
    fn input_grad(&self, _p: &Params, rec: &Record, d_out: &Tensor) -> Result<Tensor> {
        // tanh′ = 1 − y² and σ′ = y(1 − y) reuse the recorded output instead of
        // re-evaluating the function.
        match rec.output.unary_backward_from_output(self.f, d_out)? {
            Some(g) => Ok(g),
            None => rec.input.unary_backward(self.f, d_out),
        }
    }

    fn r_operator(&self) -> Option<&dyn ROperator> {
        Some(self)
    }
}

impl ROperator for Activation {
    /// R{y} = f′(x) ⊙ R{x}.
    fn r_forward(&self, _p: &Params, _v: &Params, rec: &Record, rx: &Tensor) -> Result<Tensor> {
        rec.input.unary_backward(self.f, rx)
    }

    /// R{∂L/∂x} = R{δ} ⊙ f′(x) + δ ⊙ f″(x) ⊙ R{x}.
    fn r_backward(
        &self,
        _p: &Params,
        _v: &Params,
        rec: &Record,
        rx: &Tensor,
        d_out: &Tensor,
        rd_out: &Tensor,
        _rg: &mut Grads,
    ) -> Result<Tensor> {
        let a = rec.input.unary_backward(self.f, rd_out)?;
        a.add(&rec.input.unary_second(self.f, d_out, rx)?)
    }
}

/// PReLU (He et al. 2015): `y = x` for x > 0, `aⱼ·x` otherwise, one learned slope per
/// unit; ∂L/∂aⱼ = Σ_{x≤0} δ·x.
#[derive(Debug, Clone)]
pub struct PRelu {
    name: String,
    width: usize,
    key: String,
}

impl PRelu {
    /// A PReLU layer over `width` units.
    pub fn new(name: impl Into<String>, width: usize) -> Self {
        let name = name.into();
        PRelu {
            key: format!("{name}.slope"),
            name,
            width,
        }
    }
}

impl Layer for PRelu {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> LayerKind {
        LayerKind::ParametricActivation
    }
    fn output_width(&self, input: usize) -> Result<usize> {
        Ok(input)
    }
    fn param_count(&self) -> usize {
        self.width
    }

    fn init_params(&self, _: Init, _: &mut crate::Rng, p: &mut Params) -> Result<()> {
        p.insert(
            self.key.clone(),
            Tensor::from_vec(&[self.width], vec![0.25; self.width])?,
        );
        Ok(())
    }
    fn forward(&self, p: &Params, x: &Tensor, _rec: &mut Record) -> Result<Tensor> {
        x.prelu(p.get(&self.key)?)
    }
    fn param_grads(&self, p: &Params, rec: &Record, d_out: &Tensor, g: &mut Grads) -> Result<()> {
        let (_, da) = rec.input.prelu_backward(p.get(&self.key)?, d_out)?;
        g.accumulate(&self.key, da)
    }
    fn input_grad(&self, p: &Params, rec: &Record, d_out: &Tensor) -> Result<Tensor> {
        Ok(rec.input.prelu_backward(p.get(&self.key)?, d_out)?.0)
    }
}

//! Element-wise functions and their derivatives, shared by every backend.

use serde::{Deserialize, Serialize};

/// An element-wise function `y = f(x)` with a known derivative `f'(x)`.
///
/// These are the activations of [`crate::nn`] and the maps the optimizers need.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unary {
    /// f(x) = x
    Identity,
    /// f(x) = 1 / (1 + e^-x)
    Sigmoid,
    /// f(x) = tanh x
    Tanh,
    /// f(x) = max(0, x); f'(0) = 0 as in PyTorch.
    Relu,
    /// f(x) = x for x > 0, a·x otherwise (default a = 0.01).
    LeakyRelu(f64),
    /// f(x) = x for x > 0, a(e^x − 1) otherwise (Clevert et al. 2016; default a = 1).
    Elu(f64),
    /// f(x) = λ·elu_α(x), λ = 1.0507…, α = 1.6733… (Klambauer et al. 2017).
    Selu,
    /// Swish / SiLU: f(x) = x·σ(x) (Ramachandran et al. 2017).
    Silu,
    /// GELU, exact form: f(x) = x·Φ(x) with Φ the standard normal CDF (Hendrycks & Gimpel 2016).
    Gelu,
    /// Hard sigmoid as in PyTorch: f(x) = clamp(x/6 + 1/2, 0, 1).
    HardSigmoid,
    /// f(x) = ln(1 + e^x)
    Softplus,
    /// f(x) = sign(x) ∈ {−1, 0, 1}; f′ = 0 (not an activation: feedback maths).
    Sign,
    /// f(x) = |x|; f′ = sign(x) (not an activation: feedback maths).
    Abs,
}

const SELU_LAMBDA: f64 = 1.050_700_987_355_480_5;
const SELU_ALPHA: f64 = 1.673_263_242_354_377_3;
const INV_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn softplus(x: f64) -> f64 {
    // ln(1+e^x) = max(x,0) + ln(1+e^-|x|), stable for large |x|.
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

impl Unary {
    /// f(x) in f64 (the f32 kernels round the result).
    #[inline]
    pub fn apply(self, x: f64) -> f64 {
        match self {
            Unary::Identity => x,
            Unary::Sigmoid => sigmoid(x),
            Unary::Tanh => x.tanh(),
            Unary::Relu => x.max(0.0),
            Unary::LeakyRelu(a) => {
                if x > 0.0 {
                    x
                } else {
                    a * x
                }
            }
            Unary::Elu(a) => {
                if x > 0.0 {
                    x
                } else {
                    a * x.exp_m1()
                }
            }
            Unary::Selu => SELU_LAMBDA * if x > 0.0 { x } else { SELU_ALPHA * x.exp_m1() },
            Unary::Silu => x * sigmoid(x),
            Unary::Gelu => 0.5 * x * (1.0 + libm::erf(x * INV_SQRT_2)),
            Unary::HardSigmoid => (x / 6.0 + 0.5).clamp(0.0, 1.0),
            Unary::Softplus => softplus(x),
            Unary::Sign => {
                if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            }
            Unary::Abs => x.abs(),
        }
    }

    /// f'(x).
    #[inline]
    pub fn derivative(self, x: f64) -> f64 {
        match self {
            Unary::Identity => 1.0,
            Unary::Sigmoid => {
                let s = sigmoid(x);
                s * (1.0 - s)
            }
            Unary::Tanh => {
                let t = x.tanh();
                1.0 - t * t
            }
            Unary::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Unary::LeakyRelu(a) => {
                if x > 0.0 {
                    1.0
                } else {
                    a
                }
            }
            Unary::Elu(a) => {
                if x > 0.0 {
                    1.0
                } else {
                    a * x.exp()
                }
            }
            Unary::Selu => SELU_LAMBDA * if x > 0.0 { 1.0 } else { SELU_ALPHA * x.exp() },
            Unary::Silu => {
                let s = sigmoid(x);
                s * (1.0 + x * (1.0 - s))
            }
            Unary::Gelu => {
                0.5 * (1.0 + libm::erf(x * INV_SQRT_2)) + x * INV_SQRT_2PI * (-0.5 * x * x).exp()
            }
            Unary::HardSigmoid => {
                if x > -3.0 && x < 3.0 {
                    1.0 / 6.0
                } else {
                    0.0
                }
            }
            Unary::Softplus => sigmoid(x),
            Unary::Sign => 0.0,
            Unary::Abs => Unary::Sign.apply(x),
        }
    }

    /// f''(x) (zero almost everywhere for the piecewise-linear maps).
    #[inline]
    pub fn second_derivative(self, x: f64) -> f64 {
        match self {
            Unary::Identity
            | Unary::Relu
            | Unary::LeakyRelu(_)
            | Unary::HardSigmoid
            | Unary::Sign
            | Unary::Abs => 0.0,
            Unary::Sigmoid => {
                let s = sigmoid(x);
                s * (1.0 - s) * (1.0 - 2.0 * s)
            }
            Unary::Tanh => {
                let t = x.tanh();
                -2.0 * t * (1.0 - t * t)
            }
            Unary::Elu(a) => {
                if x > 0.0 {
                    0.0
                } else {
                    a * x.exp()
                }
            }
            Unary::Selu => {
                if x > 0.0 {
                    0.0
                } else {
                    SELU_LAMBDA * SELU_ALPHA * x.exp()
                }
            }
            Unary::Silu => {
                let s = sigmoid(x);
                let ds = s * (1.0 - s);
                2.0 * ds + x * ds * (1.0 - 2.0 * s)
            }
            Unary::Gelu => {
                let pdf = INV_SQRT_2PI * (-0.5 * x * x).exp();
                2.0 * pdf - x * x * pdf
            }
            Unary::Softplus => {
                let s = sigmoid(x);
                s * (1.0 - s)
            }
        }
    }

    /// Points where f is not differentiable (finite-difference checks avoid them).
    pub fn kinks(self) -> &'static [f64] {
        match self {
            Unary::Relu | Unary::LeakyRelu(_) | Unary::Elu(_) | Unary::Selu => &[0.0],
            Unary::HardSigmoid => &[-3.0, 3.0],
            Unary::Sign | Unary::Abs => &[0.0],
            _ => &[],
        }
    }
}

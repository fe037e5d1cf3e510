//! Fully connected layer.

use super::{Grads, Init, Layer, LayerKind, Params, ROperator, Record, Transport};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `y = x Wᵀ + b` with `W ∈ ℝ^{out×in}` (PyTorch's layout) and optional `b ∈ ℝ^{out}`.
///
/// Gradients: ∂L/∂W = δᵀx, ∂L/∂b = Σ_rows δ, ∂L/∂x = δW, with δ = ∂L/∂y.
#[derive(Debug, Clone)]
pub struct Linear {
    name: String,
    /// Input width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
    /// Whether the layer has a bias.
    pub bias: bool,
    weight_key: String,
    bias_key: String,
}

impl Linear {
    /// A linear layer called `name`.
    pub fn new(name: impl Into<String>, inputs: usize, outputs: usize, bias: bool) -> Self {
        let name = name.into();
        Linear {
            weight_key: format!("{name}.weight"),
            bias_key: format!("{name}.bias"),
            name,
            inputs,
            outputs,
            bias,
        }
    }

    /// Key of the weight in the parameter store.
    pub fn weight_key(&self) -> &str {
        &self.weight_key
    }

    /// Key of the bias in the parameter store (present only when `bias`).
    pub fn bias_key(&self) -> &str {
        &self.bias_key
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let (_, c) = x.dims2()?;
        if c != self.inputs {
            return Err(Error::shape(
                format!("layer {}", self.name),
                format!("expects {} input features, got {c}", self.inputs),
            ));
        }
        Ok(())
    }
}

impl Layer for Linear {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> LayerKind {
        LayerKind::Linear {
            inputs: self.inputs,
            outputs: self.outputs,
            bias: self.bias,
        }
    }

    fn output_width(&self, input: usize) -> Result<usize> {
        if input != self.inputs {
            return Err(Error::shape(
                format!("layer {}", self.name),
                format!("expects {} input features, got {input}", self.inputs),
            ));
        }
        Ok(self.outputs)
    }

    fn param_count(&self) -> usize {
        self.inputs
            .saturating_mul(self.outputs)
            .saturating_add(if self.bias { self.outputs } else { 0 })
    }

    fn init_params(&self, init: Init, rng: &mut crate::Rng, p: &mut Params) -> Result<()> {
        let w = init.sample(self.inputs, self.outputs, rng);
        p.insert(
            self.weight_key.clone(),
            Tensor::from_vec(&[self.outputs, self.inputs], w)?,
        );
        if self.bias {
            let b = match init {
                // PyTorch draws biases from the same U(±1/√fan_in).
                Init::Torch => {
                    Init::Torch.sample(self.inputs, self.outputs, rng)[..self.outputs].to_vec()
                }
                Init::Normal(_) => init.sample(1, self.outputs, rng),
                _ => vec![0.0; self.outputs],
            };
            p.insert(self.bias_key.clone(), Tensor::from_vec(&[self.outputs], b)?);
        }
        Ok(())
    }

    fn forward(&self, p: &Params, x: &Tensor, _rec: &mut Record) -> Result<Tensor> {
        self.check_input(x)?;
        let mut y = x.matmul(false, p.get(&self.weight_key)?, true)?;
        if self.bias {
            y.add_row(p.get(&self.bias_key)?)?;
        }
        Ok(y)
    }

    fn param_grads(&self, _p: &Params, rec: &Record, d_out: &Tensor, g: &mut Grads) -> Result<()> {
        // A second signal for the same layer (Forward-Forward's negative pass, several
        // heads) accumulates in place: no weight-sized temporary.
        match g.get_mut(&self.weight_key) {
            Ok(w) => w.matmul_acc(d_out, true, &rec.input, false)?,
            Err(_) => g.insert(
                self.weight_key.clone(),
                d_out.matmul(true, &rec.input, false)?,
            ),
        }
        if self.bias {
            g.accumulate(&self.bias_key, d_out.sum_rows()?)?;
        }
        Ok(())
    }

    fn input_grad(&self, p: &Params, _rec: &Record, d_out: &Tensor) -> Result<Tensor> {
        d_out.matmul(false, p.get(&self.weight_key)?, false)
    }

    fn transport(&self) -> Option<&dyn Transport> {
        Some(self)
    }

    fn r_operator(&self) -> Option<&dyn ROperator> {
        Some(self)
    }
}

impl Transport for Linear {
    fn input_grad_with_weight(
        &self,
        _p: &Params,
        _rec: &Record,
        d_out: &Tensor,
        weight: &Tensor,
    ) -> Result<Tensor> {
        d_out.matmul(false, weight, false)
    }
}

impl ROperator for Linear {
    /// R{y} = R{x}Wᵀ + x·V_Wᵀ + V_b.
    fn r_forward(&self, p: &Params, v: &Params, rec: &Record, rx: &Tensor) -> Result<Tensor> {
        let mut ry = rx.matmul(false, p.get(&self.weight_key)?, true)?;
        if let Ok(vw) = v.get(&self.weight_key) {
            ry.matmul_acc(&rec.input, false, vw, true)?;
        }
        if self.bias
            && let Ok(vb) = v.get(&self.bias_key)
        {
            ry.add_row(vb)?;
        }
        Ok(ry)
    }

    /// R{∂L/∂W} = R{δ}ᵀx + δᵀR{x}, R{∂L/∂b} = Σ R{δ}, R{∂L/∂x} = R{δ}W + δV_W.
    fn r_backward(
        &self,
        p: &Params,
        v: &Params,
        rec: &Record,
        rx: &Tensor,
        d_out: &Tensor,
        rd_out: &Tensor,
        rg: &mut Grads,
    ) -> Result<Tensor> {
        let mut rw = rd_out.matmul(true, &rec.input, false)?;
        rw.matmul_acc(d_out, true, rx, false)?;
        rg.accumulate(&self.weight_key, rw)?;
        if self.bias {
            rg.accumulate(&self.bias_key, rd_out.sum_rows()?)?;
        }
        let mut rdx = rd_out.matmul(false, p.get(&self.weight_key)?, false)?;
        if let Ok(vw) = v.get(&self.weight_key) {
            rdx.matmul_acc(d_out, false, vw, false)?;
        }
        Ok(rdx)
    }
}

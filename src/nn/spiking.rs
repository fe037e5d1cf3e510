//! Spiking networks: a spike encoder for static inputs and layers of leaky
//! integrate-and-fire neurons ([`crate::tensor::spiking`]) behind a Linear map applied
//! at every time step, trained by backprop through time with a surrogate gradient
//! (Neftci, Mostafa & Zenke 2019). Activations are `[n, T·width]`, time-major per sample.
//!
//! `snn:784-1000-10` builds encoder → LIF 1000 → leaky readout 10, with settings after
//! commas: `steps` T (25), `encoding` direct|rate|latency (rate), `beta` (0.95),
//! `threshold` (1), `surrogate` atan|fast-sigmoid|triangle (atan), `slope` (2 for atan,
//! 25 for fast-sigmoid, 0.3 for triangle), `reset` subtract|zero|none (subtract),
//! `decoder` mean|count (mean: the readout does not spike and its output is its mean
//! membrane potential over time; count: it spikes and its output is its spike count),
//! `adapt_beta` β_a and `adapt_rho` ρ (0 and 0.95: with β_a > 0 the spiking layers are
//! adaptive LIF neurons, Bellec et al. 2018, threshold θ + β_a·a_t with
//! a_t = ρ·a_{t−1} + S_{t−1}), `learn_beta` (false; true: β is trained per layer, clamped to [0, 1], as snnTorch's
//! `learn_beta`), `smooth` (false; true: spikes are the surrogate's primitive F(U − θ), the smooth
//! network whose exact gradient the surrogate BPTT is). The defaults are snnTorch's
//! `Leaky` (tutorial 5: β = 0.95, threshold 1, reset by subtraction, arctan surrogate).

use super::{Grads, Init, Layer, LayerKind, Linear, Params, Record, missing};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::tensor::spiking::{Encoding, Lif, Reset, Surrogate, encode, time_mean, time_sum};

/// Static inputs `[n, f]` as spike trains `[n, T·f]`.
#[derive(Debug, Clone)]
pub struct SpikeEncoder {
    name: String,
    features: usize,
    steps: usize,
    encoding: Encoding,
}

impl Layer for SpikeEncoder {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> LayerKind {
        LayerKind::Spiking
    }

    fn output_width(&self, input: usize) -> Result<usize> {
        if input != self.features {
            return Err(Error::shape(
                format!("layer {}", self.name),
                format!("expects {} input features, got {input}", self.features),
            ));
        }
        Ok(input * self.steps)
    }

    fn param_count(&self) -> usize {
        0
    }

    fn init_params(&self, _: Init, _: &mut crate::Rng, _: &mut Params) -> Result<()> {
        Ok(())
    }

    /// Rate coding draws from the training pass's seed (a fixed one in evaluation).
    fn forward(&self, _p: &Params, x: &Tensor, rec: &mut Record) -> Result<Tensor> {
        encode(x, self.steps, self.encoding, rec.train.unwrap_or(0))
    }

    fn param_grads(&self, _: &Params, _: &Record, _: &Tensor, _: &mut Grads) -> Result<()> {
        Ok(())
    }

    /// The sum over time (exact for direct coding; straight-through for the others).
    fn input_grad(&self, _p: &Params, _rec: &Record, d_out: &Tensor) -> Result<Tensor> {
        time_sum(d_out, self.steps)
    }
}

/// What a LIF layer outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// Its spikes at every step, `[n, T·h]`.
    Spikes,
    /// Its spike count, `[n, h]`.
    Count,
    /// A non-spiking readout's mean membrane potential, `[n, h]`.
    MeanMembrane,
}

/// A Linear map at every time step into leaky integrate-and-fire neurons.
#[derive(Debug, Clone)]
pub struct LifLayer {
    linear: Linear,
    lif: Lif,
    decoder: Decoder,
    /// `Some(name)`: β is the learned parameter `name`, clamped to [0, 1] (snnTorch's
    /// `learn_beta`; no gradient while it sits outside).
    learned_beta: Option<String>,
}

impl LifLayer {
    /// `inputs` → `units` neurons over `lif.steps` steps.
    pub fn new(
        name: &str,
        inputs: usize,
        units: usize,
        bias: bool,
        lif: Lif,
        decoder: Decoder,
    ) -> Self {
        let lif = Lif {
            spiking: decoder != Decoder::MeanMembrane,
            ..lif
        };
        LifLayer {
            linear: Linear::new(name, inputs, units, bias),
            lif,
            decoder,
            learned_beta: None,
        }
    }

    /// Learns β, starting from the given one.
    pub fn with_learned_beta(mut self, learn: bool) -> Self {
        self.learned_beta = learn.then(|| format!("{}.beta", self.linear.name()));
        self
    }

    /// The dynamics at the parameters `p` (a learned β read from them).
    fn lif_at(&self, p: &Params) -> Result<Lif> {
        Ok(match &self.learned_beta {
            Some(k) => Lif {
                beta: p.get(k)?.get(0)?.clamp(0.0, 1.0),
                ..self.lif
            },
            None => self.lif,
        })
    }

    /// ∂L/∂I `[n·T, h]` from `d_out`, and ∂L/∂β when β is learned.
    fn grads(&self, p: &Params, rec: &Record, d_out: &Tensor, g: &mut Grads) -> Result<Tensor> {
        let u = rec.saved.first().ok_or_else(|| missing(self.name()))?;
        let lif = self.lif_at(p)?;
        let d = match self.decoder {
            Decoder::Spikes => d_out.clone(),
            Decoder::Count => time_mean(d_out, lif.steps, true)?.scale(lif.steps as f64),
            Decoder::MeanMembrane => time_mean(d_out, lif.steps, true)?,
        };
        let di = lif.backward(u, &d)?;
        if let Some(k) = &self.learned_beta {
            let raw = p.get(k)?;
            let inside = (0.0..=1.0).contains(&raw.get(0)?);
            let db = if inside { lif.beta_grad(u, &di)? } else { 0.0 };
            g.accumulate(
                k,
                Tensor::from_vec_f64(&[1], vec![db])?.to_dtype(raw.dtype()),
            )?;
        }
        let di = self.per_step(&di)?;
        self.linear
            .param_grads(p, &self.step_record(rec)?, &di, g)?;
        Ok(di)
    }

    fn units(&self) -> usize {
        match self.linear.kind() {
            LayerKind::Linear { outputs, .. } => outputs,
            _ => 0,
        }
    }

    /// `[n, T·w]` as `[n·T, w]`.
    fn per_step(&self, x: &Tensor) -> Result<Tensor> {
        let (n, w) = x.dims2()?;
        x.reshape(&[n * self.lif.steps, w / self.lif.steps])
    }

    fn step_record(&self, rec: &Record) -> Result<Record> {
        Ok(Record::new(self.name(), self.per_step(&rec.input)?))
    }
}

impl Layer for LifLayer {
    fn name(&self) -> &str {
        self.linear.name()
    }

    fn kind(&self) -> LayerKind {
        LayerKind::Spiking
    }

    fn output_width(&self, input: usize) -> Result<usize> {
        let steps = self.lif.steps;
        if !input.is_multiple_of(steps) {
            return Err(Error::shape(
                format!("layer {}", self.name()),
                format!("{input} input features are not {steps} time steps"),
            ));
        }
        let h = self.linear.output_width(input / steps)?;
        Ok(if self.decoder == Decoder::Spikes {
            h * steps
        } else {
            h
        })
    }

    fn param_count(&self) -> usize {
        self.linear.param_count() + usize::from(self.learned_beta.is_some())
    }

    fn init_params(&self, init: Init, rng: &mut crate::Rng, p: &mut Params) -> Result<()> {
        self.linear.init_params(init, rng, p)?;
        if let Some(k) = &self.learned_beta {
            p.insert(
                k.clone(),
                Tensor::from_vec(&[1], vec![self.lif.beta as f32])?,
            );
        }
        Ok(())
    }

    fn forward(&self, p: &Params, x: &Tensor, rec: &mut Record) -> Result<Tensor> {
        let (n, _) = x.dims2()?;
        self.output_width(x.dims2()?.1)?;
        let mut step = Record::new(self.name(), Tensor::zeros(&[0, 0], x.dtype()));
        let i = self.linear.forward(p, &self.per_step(x)?, &mut step)?;
        let (out, u) = self
            .lif_at(p)?
            .forward(&i.reshape(&[n, self.lif.steps * self.units()])?)?;
        rec.saved = vec![u];
        match self.decoder {
            Decoder::Spikes => Ok(out),
            Decoder::Count => time_sum(&out, self.lif.steps),
            Decoder::MeanMembrane => time_mean(&out, self.lif.steps, false),
        }
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
        let di = self.grads(p, rec, d_out, g)?;
        if !input {
            return Ok(None);
        }
        let (n, w) = rec.input.dims2()?;
        Ok(Some(self.linear.input_grad(p, rec, &di)?.reshape(&[n, w])?))
    }

    fn input_grad(&self, p: &Params, rec: &Record, d_out: &Tensor) -> Result<Tensor> {
        let (n, w) = rec.input.dims2()?;
        let di = self.grads(p, rec, d_out, &mut Grads::new())?;
        self.linear.input_grad(p, rec, &di)?.reshape(&[n, w])
    }
}

/// The model `snn:WIDTHS[,key=value...]` (see the module's documentation); `rest` is
/// what follows `snn:`.
pub fn build(spec: &super::ModelSpec, rest: &str) -> Result<super::Model> {
    let (bias, spec_text) = (spec.bias, spec.spec.clone());
    let spec = spec_text.as_str();
    let bad = |msg: String| Error::config("model", format!("'{spec}': {msg}"));
    let mut parts = rest.split(',');
    let widths: Vec<usize> = parts
        .next()
        .unwrap_or_default()
        .split('-')
        .map(|w| match w.parse::<usize>() {
            Ok(v) if v > 0 => super::bounded(spec, "width", v, super::MAX_WIDTH),
            _ => Err(bad(format!("width '{w}' is not a positive integer"))),
        })
        .collect::<Result<_>>()?;
    if widths.len() < 2 {
        return Err(bad("needs at least an input and an output width".into()));
    }
    let (mut steps, mut encoding, mut beta, mut threshold) = (25usize, Encoding::Rate, 0.95, 1.0);
    let (mut surrogate, mut slope, mut reset) = ("atan".to_string(), None, Reset::Subtract);
    let (mut decoder, mut smooth, mut learn_beta) = (Decoder::MeanMembrane, false, false);
    let (mut adapt_rho, mut adapt_beta) = (0.95, 0.0);
    for kv in parts {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| bad(format!("'{kv}' is not key=value")))?;
        let num = |v: &str| -> Result<f64> {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| bad(format!("{k}={v} is not a number")))
        };
        match k {
            "steps" => {
                steps = v
                    .parse()
                    .ok()
                    .filter(|&t| (1..=100_000).contains(&t))
                    .ok_or_else(|| bad(format!("steps={v} is not 1 to 100000")))?
            }
            "encoding" => {
                encoding = match v {
                    "direct" => Encoding::Direct,
                    "rate" => Encoding::Rate,
                    "latency" => Encoding::Latency,
                    _ => {
                        return Err(Error::unknown(
                            "encoding",
                            v,
                            &["direct", "rate", "latency"],
                        ));
                    }
                }
            }
            "beta" => {
                beta = num(v)?;
                if !(0.0..=1.0).contains(&beta) {
                    return Err(bad(format!("beta={v} is not in [0, 1]")));
                }
            }
            "threshold" => {
                threshold = num(v)?;
                if threshold <= 0.0 {
                    return Err(bad(format!("threshold={v} is not positive")));
                }
            }
            "surrogate" => surrogate = v.to_string(),
            "slope" => {
                let s = num(v)?;
                if s <= 0.0 {
                    return Err(bad(format!("slope={v} is not positive")));
                }
                slope = Some(s);
            }
            "reset" => {
                reset = match v {
                    "subtract" => Reset::Subtract,
                    "zero" => Reset::Zero,
                    "none" => Reset::None,
                    _ => return Err(Error::unknown("reset", v, &["subtract", "zero", "none"])),
                }
            }
            "decoder" => {
                decoder = match v {
                    "mean" => Decoder::MeanMembrane,
                    "count" => Decoder::Count,
                    _ => return Err(Error::unknown("decoder", v, &["mean", "count"])),
                }
            }
            "adapt_rho" => {
                adapt_rho = num(v)?;
                if !(0.0..=1.0).contains(&adapt_rho) {
                    return Err(bad(format!("adapt_rho={v} is not in [0, 1]")));
                }
            }
            "adapt_beta" => {
                adapt_beta = num(v)?;
                if adapt_beta < 0.0 {
                    return Err(bad(format!("adapt_beta={v} is negative")));
                }
            }
            "learn_beta" => {
                learn_beta = v
                    .parse()
                    .map_err(|_| bad(format!("learn_beta={v} is not true or false")))?
            }
            "smooth" => {
                smooth = v
                    .parse()
                    .map_err(|_| bad(format!("smooth={v} is not true or false")))?
            }
            _ => {
                return Err(Error::unknown(
                    "spiking setting",
                    k,
                    &[
                        "steps",
                        "encoding",
                        "beta",
                        "threshold",
                        "surrogate",
                        "slope",
                        "reset",
                        "decoder",
                        "learn_beta",
                        "adapt_rho",
                        "adapt_beta",
                        "smooth",
                    ],
                ));
            }
        }
    }
    let surrogate = match surrogate.as_str() {
        "atan" => Surrogate::Arctan(slope.unwrap_or(2.0)),
        "fast-sigmoid" => Surrogate::FastSigmoid(slope.unwrap_or(25.0)),
        "triangle" => Surrogate::Triangle(slope.unwrap_or(0.3)),
        other => {
            return Err(Error::unknown(
                "surrogate",
                other,
                &["atan", "fast-sigmoid", "triangle"],
            ));
        }
    };
    let lif = Lif {
        steps,
        beta,
        threshold,
        reset,
        surrogate,
        smooth,
        spiking: true,
        adapt: (adapt_beta > 0.0).then_some((adapt_rho, adapt_beta)),
    };
    let mut layers: Vec<Box<dyn Layer>> = vec![Box::new(SpikeEncoder {
        name: "encoder".into(),
        features: widths[0],
        steps,
        encoding,
    })];
    let n = widths.len() - 1;
    for i in 0..n {
        let last = i + 1 == n;
        let name = if last {
            "readout".to_string()
        } else {
            format!("lif{}", i + 1)
        };
        let d = if last { decoder } else { Decoder::Spikes };
        layers.push(Box::new(
            LifLayer::new(&name, widths[i], widths[i + 1], bias, lif, d)
                .with_learned_beta(learn_beta),
        ));
    }
    super::Model::from_layers(layers, widths[0])
}

//! Decoupled neural interfaces with synthetic gradients (Jaderberg et al. 2016).
//!
//! After every hidden block k a synthesizer Mₖ predicts the per-sample gradient of the
//! loss with respect to the block's output hₖ: ĝₖ = Mₖ(hₖ) (`dni`) or Mₖ([hₖ, onehot(y)])
//! (`cdni`, conditioned on the label). Mₖ is linear and zero-initialised by default (the
//! paper's choice, so training starts as if hidden layers were frozen); with
//! `synth_hidden = H > 0` it is an MLP of `synth_depth` hidden layers of width H,
//! [linear → (batch norm, `synth_batchnorm`) → relu]ᵈ → linear, the hidden weights drawn
//! He-uniform (`dni.syn{k}.hidden.weight`, then `.hidden1`, …) and the output layer
//! (`dni.syn{k}.weight`, `.bias`) by `synth_init` (zeros). Jaderberg et al.'s MNIST/CIFAR
//! FCN synthesizers are 2 hidden layers of 1024 with batch norm. The block updates
//! at once from ĝₖ (divided by n to be in the mean loss's units), without waiting for
//! the layers above. With `synth_units = mean` Mₖ predicts the mean loss's gradient
//! itself and regresses by mean squared error over all entries, as the dni-pytorch
//! library does: under Adam the two differ only through ε and the regression's pace
//! relative to the target's scale. Mₖ learns by regression ½‖Mₖ(hₖ) − tₖ‖² (mean over the batch and
//! units) toward the gradient that arrives from above: tₖ = Jₖ₊₁ᵀ ĝₖ₊₁ carried through
//! block k+1 — itself synthetic (bootstrapping) except below the output layer, where it
//! is the true gradient. Synthesizer weights live in the parameter store and train with
//! the run's optimizer; their loss is reported as the rule's `synth_loss`. A batch-norm
//! synthesizer always normalises with the batch's statistics (it runs only in training).

use super::blocks::{
    block_dtype, block_forward, block_input_grad, block_output, block_param_grads, free_block,
    scratch_trace,
};
use super::{Batch, Rule, RuleSpec, StepOutput};
use crate::error::{Error, Result};
use crate::nn::{
    Activation, Grads, Layer, Linear, Loss, Model, Normalization, Params, Target, Trace,
};
use crate::settings::{Described, Settings, at_least, parse};
use crate::tensor::{Tensor, Unary};

crate::settings_struct! {
    /// The synthesizers of `dni` and `cdni`.
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default)]
    pub struct SynthSettings: "synth" {
        /// Hidden width of an MLP synthesizer (0: linear).
        pub hidden: usize = 0,
        /// Hidden layers of an MLP synthesizer.
        pub depth: usize = 1,
        /// Batch norm after each hidden layer of an MLP synthesizer (as Jaderberg et
        /// al.'s).
        pub batchnorm: bool = false,
        /// Initialiser of the synthesizers (`--init` names).
        pub init: String = "zeros".into(),
        /// What a synthesizer predicts: `sample`, the per-sample gradient n·∂L̄/∂h
        /// (regression ½·mean over batch and units); `mean`, the gradient ∂L̄/∂h of the
        /// batch-mean loss, regressed by mean squared error over all entries (the
        /// dni-pytorch library's convention).
        pub units: String = "sample".into(),
    }
}

impl Settings for SynthSettings {
    fn validate(&self) -> Result<()> {
        at_least("synth_depth", self.depth as u64, 1)?;
        if !matches!(self.units.as_str(), "sample" | "mean") {
            return Err(Error::unknown(
                "synth_units",
                &self.units,
                &["sample", "mean"],
            ));
        }
        crate::nn::Init::parse(&self.init).map(|_| ())
    }
}

pub(super) const DNI: RuleSpec = RuleSpec {
    name: "dni",
    summary: "synthetic gradients: each hidden block updates from a learned gradient predictor",
    paper: "Jaderberg et al. 2016",
    settings: SynthSettings::fields,
    build: |t| {
        Ok(Box::new(SyntheticGradients::new(
            false,
            parse("rule dni", t)?,
        )))
    },
    ..RuleSpec::DEFAULT
};

pub(super) const CDNI: RuleSpec = RuleSpec {
    name: "cdni",
    summary: "synthetic gradients conditioned on the label",
    paper: "Jaderberg et al. 2016",
    settings: SynthSettings::fields,
    build: |t| {
        Ok(Box::new(SyntheticGradients::new(
            true,
            parse("rule cdni", t)?,
        )))
    },
    ..RuleSpec::DEFAULT
};

/// Synthetic-gradient rule.
#[derive(Debug)]
pub struct SyntheticGradients {
    conditional: bool,
    cfg: SynthSettings,
    /// Last step's synthesizer regression loss (mean over synthesizers).
    pub synth_loss: f64,
    /// Replace every synthesizer by the true backprop gradient (tests and ablations).
    pub oracle: bool,
    keep_trace: bool,
    /// Mₖ for every hidden block, built by `init`.
    synths: Vec<Model>,
}

impl SyntheticGradients {
    /// `dni`, or `cdni` when `conditional`.
    pub fn new(conditional: bool, cfg: SynthSettings) -> Self {
        SyntheticGradients {
            conditional,
            cfg,
            synth_loss: 0.0,
            oracle: false,
            keep_trace: true,
            synths: Vec::new(),
        }
    }

    /// Mₖ as a model from `inputs` to `outputs` features (names in the module doc).
    fn build_synth(&self, k: usize, inputs: usize, outputs: usize) -> Result<Model> {
        let mut layers: Vec<Box<dyn Layer>> = Vec::new();
        let mut w = inputs;
        let depth = if self.cfg.hidden > 0 {
            self.cfg.depth
        } else {
            0
        };
        for j in 0..depth {
            layers.push(Box::new(Linear::new(
                Self::hidden_name(k, j),
                w,
                self.cfg.hidden,
                true,
            )));
            if self.cfg.batchnorm {
                layers.push(Box::new(Normalization::batch(
                    format!("dni.syn{k}.bn{j}"),
                    self.cfg.hidden,
                    1,
                    true,
                )?));
            }
            layers.push(Box::new(Activation::new(
                format!("dni.syn{k}.relu{j}"),
                Unary::Relu,
            )));
            w = self.cfg.hidden;
        }
        layers.push(Box::new(Linear::new(
            format!("dni.syn{k}"),
            w,
            outputs,
            true,
        )));
        Model::from_layers(layers, inputs)
    }

    fn hidden_name(k: usize, j: usize) -> String {
        if j == 0 {
            format!("dni.syn{k}.hidden")
        } else {
            format!("dni.syn{k}.hidden{j}")
        }
    }

    /// Regression of synthesizer k toward `target` (both in mean-loss units); adds its
    /// gradients and returns its loss: ½ mean ‖n(ĝ − t)‖²/width (`units = sample`) or
    /// mean ‖ĝ − t‖²/width (`mean`).
    fn regress(
        &self,
        k: usize,
        trace: &mut Trace,
        synth: &Tensor,
        target: &Tensor,
        params: &Params,
        grads: &mut Grads,
    ) -> Result<f64> {
        let n = synth.dims2()?.0.max(1) as f64;
        let mut r = synth.sub(target)?;
        let width = r.dims2()?.1.max(1) as f64;
        let mean = 1.0 / (n * width);
        let (loss, scale) = if self.per_sample() {
            r.scale_in_place(n);
            (0.5 * r.sum_sq() * mean, mean)
        } else {
            (r.sum_sq() * mean, 2.0 * mean)
        };
        super::backward_chain(
            &self.synths[k],
            params,
            trace,
            r.scale(scale),
            grads,
            |_, l, rec, d| l.input_grad(params, rec, d),
        )?;
        Ok(loss)
    }

    /// Whether the synthesizers predict per-sample gradients (`units = sample`).
    fn per_sample(&self) -> bool {
        self.cfg.units == "sample"
    }

    /// Mₖ(s) (in the synthesizers' units) and the synthesizer's trace (for its regression).
    fn synthesize(&self, k: usize, si: &Tensor, params: &Params) -> Result<(Tensor, Trace)> {
        let m = self.synths.get(k).ok_or_else(|| {
            Error::config(self.name(), "the rule must be initialised before a step")
        })?;
        let trace = m.forward_trace(params, si)?;
        m.discard_state();
        let g = trace
            .output()
            .ok_or_else(|| Error::config(self.name(), "empty synthesizer"))?
            .clone();
        Ok((g, trace))
    }

    /// The step block by block: block k runs forward, updates from Mₖ(hₖ) at once, and
    /// gives synthesizer k−1 its target Jₖᵀĝₖ; then its activations can go (only hₖ and
    /// ĝₖ wait for the block above).
    fn step_streaming(
        &mut self,
        model: &Model,
        params: &Params,
        batch: &Batch,
        loss: Loss,
        (hidden, last): (&[crate::nn::Block], &crate::nn::Block),
        oracle: Option<Vec<Tensor>>,
    ) -> Result<StepOutput> {
        let n = batch.x.dims2()?.0.max(1) as f64;
        let classes = model.outputs();
        let mut grads = Grads::new();
        let mut trace = scratch_trace(model, batch.x.dtype());
        let mut h = batch.x.clone();
        // Synthesizer trace and prediction of the block below, awaiting its target.
        let mut below: Option<(Trace, Tensor)> = None;
        let mut synth_loss = 0.0;
        for (k, b) in hidden.iter().enumerate() {
            block_forward(model, params, b, &h, &mut trace)?;
            let out = block_output(b, &trace).clone();
            let si = self.input(&out, &batch.target, classes)?;
            let (mut g, st) = self.synthesize(k, &si, params)?;
            if self.per_sample() {
                g.scale_in_place(1.0 / n);
            }
            if let Some(o) = &oracle {
                g = o[k].clone();
            }
            if let Some((mut st, syn)) = below.take()
                && oracle.is_none()
            {
                let target = block_input_grad(model, params, b, &trace, &g)?;
                synth_loss += self.regress(k - 1, &mut st, &syn, &target, params, &mut grads)?;
            }
            block_param_grads(model, params, b, &mut trace, g.clone(), &mut grads)?;
            if !self.keep_trace {
                free_block(b, &mut trace);
            }
            below = Some((st, g));
            h = out;
        }
        block_forward(model, params, last, &h, &mut trace)?;
        let (value, d_out) = loss.eval(block_output(last, &trace), &batch.target)?;
        if let Some((mut st, syn)) = below.take()
            && oracle.is_none()
        {
            let target = block_input_grad(model, params, last, &trace, &d_out)?;
            synth_loss +=
                self.regress(hidden.len() - 1, &mut st, &syn, &target, params, &mut grads)?;
        }
        block_param_grads(model, params, last, &mut trace, d_out, &mut grads)?;
        self.synth_loss = synth_loss / hidden.len().max(1) as f64;
        Ok(StepOutput {
            grads,
            trace,
            loss: value,
            prediction: None,
        })
    }

    /// Synthesizer input: hₖ, or [hₖ, onehot(y)] for `cdni`.
    fn input(&self, h: &Tensor, target: &Target, classes: usize) -> Result<Tensor> {
        if !self.conditional {
            return Ok(h.clone());
        }
        let (n, _) = h.dims2()?;
        h.concat_cols(&target.dense(n, classes, h.dtype())?)
    }
}

impl Rule for SyntheticGradients {
    fn mixed_precision(&self) -> bool {
        true
    }

    fn splits_over_batch(&self) -> bool {
        true
    }

    fn trains(&self) -> super::Trains {
        // Per convolutional block; a block may hold a normalisation layer.
        super::Trains {
            conv: true,
            norm: true,
            ..super::Trains::DENSE
        }
    }

    fn name(&self) -> &'static str {
        if self.conditional { "cdni" } else { "dni" }
    }

    fn init(&mut self, model: &Model, params: &mut Params, seed: u64) -> Result<()> {
        let (hidden, _) = model.block_walk(self.name(), crate::nn::BlockShape::CHAIN)?;
        let init = crate::nn::Init::parse(&self.cfg.init)?;
        let mut rng = <crate::Rng as rand::SeedableRng>::seed_from_u64(seed ^ 0x5e_7d);
        let classes = model.outputs();
        if self.cfg.hidden > 0 && self.cfg.depth == 0 {
            return Err(Error::config(
                "synth-depth",
                "an MLP synthesizer (synth-hidden > 0) needs at least one hidden layer",
            ));
        }
        self.synths.clear();
        for (k, b) in hidden.iter().enumerate() {
            let inputs = b.outputs + if self.conditional { classes } else { 0 };
            let dt = block_dtype(model, params, b)?;
            let m = self.build_synth(k, inputs, b.outputs)?;
            // Hidden layers He-uniform with zero bias, the output layer by `synth_init`
            // (drawn in this order from one generator).
            let output = m.layers().len() - 1;
            for (j, l) in m.layers().iter().enumerate() {
                let name = l.name();
                if let crate::nn::LayerKind::Linear {
                    inputs: i,
                    outputs: o,
                    ..
                } = l.kind()
                {
                    let w = if j == output {
                        init.sample(i, o, &mut rng)
                    } else {
                        crate::nn::Init::HeUniform.sample(i, o, &mut rng)
                    };
                    params.insert(
                        format!("{name}.weight"),
                        Tensor::from_vec(&[o, i], w)?.to_dtype(dt),
                    );
                    params.insert(format!("{name}.bias"), Tensor::zeros(&[o], dt));
                } else {
                    let mut own = Params::new();
                    l.init_params(crate::nn::Init::Zeros, &mut rng, &mut own)?;
                    // Batch statistics only: no running-statistics buffers.
                    for (key, t) in own.iter().filter(|(key, _)| !crate::nn::is_buffer(key)) {
                        params.insert(key, t.to_dtype(dt));
                    }
                }
            }
            self.synths.push(m);
        }
        Ok(())
    }

    fn step(
        &mut self,
        model: &Model,
        params: &Params,
        batch: &Batch,
        loss: Loss,
    ) -> Result<StepOutput> {
        let (hidden, last) = model.block_walk(self.name(), crate::nn::BlockShape::CHAIN)?;
        // The oracle: the true backprop error at every block output replaces Mₖ(hₖ).
        let oracle = if self.oracle {
            let (mut t, _, d_out) = super::forward_loss(model, params, batch, loss)?;
            let mut g = Grads::new();
            super::backward_chain(model, params, &mut t, d_out, &mut g, |_, l, r, d| {
                l.input_grad(params, r, d)
            })?;
            Some(
                hidden
                    .iter()
                    .map(|b| {
                        t.errors[b.pool.or(b.activation).unwrap_or(b.linear)]
                            .clone()
                            .ok_or_else(|| Error::config("dni", "oracle error missing"))
                    })
                    .collect::<Result<Vec<_>>>()?,
            )
        } else {
            None
        };
        self.step_streaming(model, params, batch, loss, (&hidden, &last), oracle)
    }

    fn aux_loss(&self) -> Option<(&'static str, f64)> {
        Some(("synth_loss", self.synth_loss))
    }

    fn keep_trace(&mut self, keep: bool) {
        self.keep_trace = keep;
    }
}

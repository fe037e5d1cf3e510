//! Feedback alignment and its sign-concordant and learned-feedback variants: rules that
//! replace the transposed forward weights of backprop ("weight transport") by another
//! matrix, layer by layer.
//!
//! Backprop carries the error through a Linear layer as δ_in = δ_out·W (W ∈ ℝ^{out×in},
//! rows are samples). These rules use δ_in = δ_out·F with a feedback matrix F of W's
//! shape (the paper's Bᵀ); everything else — the activations' local derivatives, the
//! parameter gradients from the received error, the output layer's true gradient — is
//! backprop's. The first Linear layer needs no feedback (its input error is unused).
//!
//! | rule | F | reference |
//! |---|---|---|
//! | `fa` | fixed random | Lillicrap et al. 2016 |
//! | `usf` | sign(W) · mean\|W\| (uniform magnitude, recomputed each step) | Liao, Leibo & Poggio 2016 |
//! | `brsf` | sign(W) ⊙ \|R\|, R redrawn every batch | Moskovitz, Litwin-Kumar & Abbott 2018 |
//! | `frsf` | sign(W) ⊙ \|R\|, R fixed at initialisation | Moskovitz et al. 2018 |
//! | `kp` | learned: ΔF = ΔW, both with weight decay λ, so F → W | Kolen & Pollack 1994; Akrout et al. 2019 |
//!
//! FA with F = W is backprop exactly; uSF equals backprop when every weight of a layer
//! has the same magnitude (then sign(W)·mean|W| = W). On a convolution F is a set of
//! feedback kernels of the forward kernels' shape, used in the transposed convolution;
//! pooling layers carry errors as in backprop (they have no weight to transport).

use std::collections::HashMap;

use rand::SeedableRng;

use super::{Batch, Rule, RuleSpec, StepOutput, backward_chain};
use crate::error::{Error, Result};
use crate::nn::{Grads, LayerKind, Loss, Model, Params, Trace};
use crate::settings::{Described, Settings, parse};
use crate::tensor::{Tensor, Unary};

crate::settings_struct! {
    /// How the fixed feedback matrices are drawn (every rule of the feedback-alignment
    /// and direct-feedback families).
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default)]
    pub struct FeedbackSettings: "feedback" {
        /// Initialiser of the feedback matrices (names as `--init`; `auto`: Xavier
        /// uniform).
        pub init: String = "xavier-uniform".into(),
        /// Multiplier of the drawn feedback matrices.
        pub scale: f64 = 1.0,
        /// Seed of the feedback matrices; none: the run's seed.
        pub seed: Option<u64> = None,
    }
}

impl Settings for FeedbackSettings {
    fn validate(&self) -> Result<()> {
        crate::settings::real(
            "feedback_scale",
            self.scale,
            crate::settings::Range::NonZero,
        )?;
        self.initialiser().map(|_| ())
    }
}

impl FeedbackSettings {
    /// The parsed initialiser (`auto` means Xavier uniform).
    pub fn initialiser(&self) -> Result<crate::nn::Init> {
        Ok(match crate::nn::Init::parse(&self.init)? {
            crate::nn::Init::Auto => crate::nn::Init::XavierUniform,
            i => i,
        })
    }
}

crate::settings_struct! {
    /// Kolen–Pollack's own setting.
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default)]
    pub struct KpSettings: "kp" {
        /// Weight decay λ on W and its feedback (the decay makes F converge to Wᵀ).
        pub decay: f64 = 1e-3,
    }
}

impl Settings for KpSettings {
    fn validate(&self) -> Result<()> {
        crate::settings::real("kp_decay", self.decay, crate::settings::Range::NonNegative)
    }
}

fn feedback_rule(kind: FeedbackKind, t: &crate::settings::Table) -> Result<Box<dyn Rule>> {
    let decay = parse::<KpSettings>("rule kp", t)?.decay;
    Ok(Box::new(FeedbackAlignment::new(
        kind,
        parse("rule", t)?,
        decay,
    )))
}

pub(super) const FA: RuleSpec = RuleSpec {
    name: "fa",
    summary: "feedback alignment: fixed random matrices replace Wᵀ",
    paper: "Lillicrap et al. 2016",
    settings: FeedbackSettings::fields,
    build: |t| feedback_rule(FeedbackKind::Random, t),
    ..RuleSpec::DEFAULT
};

pub(super) const USF: RuleSpec = RuleSpec {
    name: "usf",
    summary: "uniform sign-concordant feedback: sign(W)·mean|W| replaces Wᵀ",
    paper: "Liao et al. 2016",
    settings: FeedbackSettings::fields,
    build: |t| feedback_rule(FeedbackKind::SignUniform, t),
    ..RuleSpec::DEFAULT
};

pub(super) const BRSF: RuleSpec = RuleSpec {
    name: "brsf",
    summary: "batch-random-magnitude sign-concordant feedback",
    paper: "Moskovitz et al. 2018",
    settings: FeedbackSettings::fields,
    build: |t| feedback_rule(FeedbackKind::SignBatchRandom, t),
    ..RuleSpec::DEFAULT
};

pub(super) const FRSF: RuleSpec = RuleSpec {
    name: "frsf",
    summary: "fixed-random-magnitude sign-concordant feedback",
    paper: "Moskovitz et al. 2018",
    settings: FeedbackSettings::fields,
    build: |t| feedback_rule(FeedbackKind::SignFixedRandom, t),
    ..RuleSpec::DEFAULT
};

pub(super) const KP: RuleSpec = RuleSpec {
    name: "kp",
    summary: "Kolen–Pollack: feedback learned with W's update plus decay, converges to Wᵀ",
    paper: "Akrout et al. 2019",
    settings: || [FeedbackSettings::fields(), KpSettings::fields()].concat(),
    build: |t| feedback_rule(FeedbackKind::KolenPollack, t),
    ..RuleSpec::DEFAULT
};

/// Which feedback matrix replaces W.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedbackKind {
    /// Fixed random F (`fa`).
    Random,
    /// sign(W) scaled by the layer's mean |W| (`usf`).
    SignUniform,
    /// sign(W) ⊙ |R| with R redrawn every batch (`brsf`).
    SignBatchRandom,
    /// sign(W) ⊙ |R| with R fixed (`frsf`).
    SignFixedRandom,
    /// Learned F with the same update as W plus weight decay (`kp`).
    KolenPollack,
}

/// A rule that swaps the weight transport of Linear layers for feedback matrices.
#[derive(Debug)]
pub struct FeedbackAlignment {
    kind: FeedbackKind,
    feedback: FeedbackSettings,
    /// Kolen–Pollack's decay λ.
    decay: f64,
    /// Per Linear layer (by layer name): F for `fa`, R for `frsf`.
    fixed: HashMap<String, Tensor>,
    /// Per layer, the magnitudes drawn for the current batch (`brsf`).
    batch_magnitudes: HashMap<String, Tensor>,
    rng: crate::Rng,
}

impl FeedbackAlignment {
    /// A rule of the given kind; `decay` is Kolen–Pollack's λ (ignored by the others).
    pub fn new(kind: FeedbackKind, feedback: FeedbackSettings, decay: f64) -> Self {
        FeedbackAlignment {
            kind,
            feedback,
            decay,
            fixed: HashMap::new(),
            batch_magnitudes: HashMap::new(),
            rng: crate::Rng::seed_from_u64(0),
        }
    }

    /// Key of layer `name`'s learned feedback matrix in the parameter store (`kp`).
    pub fn kp_key(name: &str) -> String {
        format!("kp.{name}.feedback")
    }

    /// Sets the feedback matrix of `layer` (W's layout). For `fa` only; used by tests and
    /// experiments (F = W turns FA into backprop).
    pub fn set_feedback(&mut self, layer: &str, f: Tensor) -> Result<()> {
        if self.kind != FeedbackKind::Random {
            return Err(Error::config(
                "feedback",
                "only `fa` has a settable fixed feedback matrix",
            ));
        }
        self.fixed.insert(layer.to_string(), f);
        Ok(())
    }

    /// A random matrix of `shape` (W's shape: [out, in] or a convolution's
    /// [C_out, C_in/groups, kh, kw]), fan-in the product of all but the first axis.
    fn draw(&mut self, shape: &[usize]) -> Result<Tensor> {
        let rows = shape.first().copied().unwrap_or(1);
        let cols = shape.iter().skip(1).product::<usize>();
        let v = self
            .feedback
            .initialiser()?
            .sample(cols, rows, &mut self.rng);
        Ok(Tensor::from_vec(shape, v)?.scale(self.feedback.scale))
    }

    /// The feedback F used for layer `name` with weight `w` (W's layout).
    fn feedback(&self, name: &str, w: &Tensor, params: &Params) -> Result<Tensor> {
        let missing = || {
            Error::config(
                "feedback",
                format!("no feedback matrix for layer {name}; was init called?"),
            )
        };
        let signed = |mag: &Tensor| -> Result<Tensor> { w.unary(Unary::Sign).mul(mag) };
        match self.kind {
            FeedbackKind::Random => self.fixed.get(name).cloned().ok_or_else(missing),
            FeedbackKind::SignUniform => {
                let mean_abs = w.unary(Unary::Abs).sum() / w.len().max(1) as f64;
                Ok(w.unary(Unary::Sign).scale(mean_abs))
            }
            FeedbackKind::SignFixedRandom => signed(self.fixed.get(name).ok_or_else(missing)?),
            FeedbackKind::SignBatchRandom => {
                signed(self.batch_magnitudes.get(name).ok_or_else(missing)?)
            }
            FeedbackKind::KolenPollack => Ok(params.get(&Self::kp_key(name))?.clone()),
        }
    }

    /// Layers with a weight that need feedback (Linear and Conv2d): every one but the
    /// first layer of the model. Their feedback has the weight's shape.
    fn feedback_layers(model: &Model) -> Vec<(usize, String)> {
        model
            .layers()
            .iter()
            .enumerate()
            .filter_map(|(i, l)| match l.kind() {
                LayerKind::Linear { .. } | LayerKind::Conv2d { .. } if i > 0 => {
                    Some((i, l.name().to_string()))
                }
                _ => None,
            })
            .collect()
    }
}

impl Rule for FeedbackAlignment {
    fn mixed_precision(&self) -> bool {
        true
    }

    fn splits_over_batch(&self) -> bool {
        true
    }

    fn recomputes(&self) -> bool {
        true
    }

    fn trains(&self) -> super::Trains {
        // Feedback kernels in the transposed convolution; norms by their input gradient.
        super::Trains {
            conv: true,
            norm: true,
            ..super::Trains::DENSE
        }
    }

    fn name(&self) -> &'static str {
        match self.kind {
            FeedbackKind::Random => "fa",
            FeedbackKind::SignUniform => "usf",
            FeedbackKind::SignBatchRandom => "brsf",
            FeedbackKind::SignFixedRandom => "frsf",
            FeedbackKind::KolenPollack => "kp",
        }
    }

    fn state_bytes(&self) -> usize {
        self.fixed.values().map(Tensor::size_bytes).sum::<usize>()
            + self
                .batch_magnitudes
                .values()
                .map(Tensor::size_bytes)
                .sum::<usize>()
    }

    fn init(&mut self, model: &Model, params: &mut Params, seed: u64) -> Result<()> {
        self.rng = crate::Rng::seed_from_u64(self.feedback.seed.unwrap_or(seed) ^ 0x0fee_dbac);
        self.fixed.clear();
        for (_, name) in Self::feedback_layers(model) {
            // Feedback matrices take the shape and dtype of the weights they stand in for.
            let w = params.get(&format!("{name}.weight"))?;
            let (dt, shape) = (w.dtype(), w.shape().to_vec());
            match self.kind {
                FeedbackKind::Random => {
                    let f = self.draw(&shape)?.to_dtype(dt);
                    self.fixed.insert(name, f);
                }
                FeedbackKind::SignFixedRandom => {
                    let r = self.draw(&shape)?.unary(Unary::Abs).to_dtype(dt);
                    self.fixed.insert(name, r);
                }
                FeedbackKind::KolenPollack => {
                    let f = self.draw(&shape)?.to_dtype(dt);
                    params.insert(Self::kp_key(&name), f);
                }
                FeedbackKind::SignUniform | FeedbackKind::SignBatchRandom => {}
            }
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
        let layers = Self::feedback_layers(model);
        if self.kind == FeedbackKind::SignBatchRandom {
            for (_, name) in &layers {
                let w = params.get(&format!("{name}.weight"))?;
                let (dt, shape) = (w.dtype(), w.shape().to_vec());
                let r = self.draw(&shape)?.unary(Unary::Abs).to_dtype(dt);
                self.batch_magnitudes.insert(name.clone(), r);
            }
        }
        super::step_with_backward(self, model, params, batch, loss)
    }

    fn backward(
        &mut self,
        model: &Model,
        params: &Params,
        trace: &mut Trace,
        _batch: &Batch,
        e: Tensor,
    ) -> Result<Grads> {
        let layers = Self::feedback_layers(model);
        let mut feedback: HashMap<usize, Tensor> = HashMap::new();
        for (i, name) in &layers {
            let w = params.get(&format!("{name}.weight"))?;
            feedback.insert(*i, self.feedback(name, w, params)?);
        }
        let mut grads = Grads::new();
        backward_chain(
            model,
            params,
            trace,
            e,
            &mut grads,
            |i, layer, rec, d| match feedback.get(&i) {
                Some(f) => layer
                    .transport()
                    .ok_or_else(|| {
                        Error::config(
                            "feedback",
                            format!("layer {} has no weight to replace", layer.name()),
                        )
                    })?
                    .input_grad_with_weight(params, rec, d, f),
                None => layer.input_grad(params, rec, d),
            },
        )?;
        if self.kind == FeedbackKind::KolenPollack {
            // Akrout et al. 2019: ΔW = −η(∇W + λW), ΔF = −η(∇W + λF), so W − F decays.
            let lambda = self.decay;
            for (_, name) in &layers {
                let wk = format!("{name}.weight");
                let fk = Self::kp_key(name);
                let mut gf = grads.get(&wk)?.clone();
                gf.axpy(lambda, params.get(&fk)?)?;
                grads.get_mut(&wk)?.axpy(lambda, params.get(&wk)?)?;
                grads.insert(fk, gf);
            }
        }
        Ok(grads)
    }

    fn feedback_matrices(&self, model: &Model, params: &Params) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (_, name) in Self::feedback_layers(model) {
            let w = params.get(&format!("{name}.weight"))?;
            if self.kind == FeedbackKind::SignBatchRandom
                && !self.batch_magnitudes.contains_key(&name)
            {
                continue;
            }
            out.push((name.clone(), self.feedback(&name, w, params)?));
        }
        Ok(out)
    }
}

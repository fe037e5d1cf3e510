//! Evolution strategies as a rule: no backward pass, only forward evaluations of
//! perturbed parameters (OpenAI-ES, Salimans, Ho, Chen, Sidor & Sutskever 2017).
//!
//! Each step draws `population`/2 directions εᵢ ~ N(0, I) over every trainable parameter
//! and evaluates the batch loss at θ ± σεᵢ (antithetic pairs), the pairs in parallel on
//! the thread pool. With fitness shaping `none` the update (gradient sign) is
//! ĝ = 1/(Pσ)·Σᵢ (L(θ + σεᵢ) − L(θ − σεᵢ))·εᵢ, P the population: an unbiased estimate of
//! the gradient of the Gaussian-smoothed loss E_ε[L(θ + σε)] (of L itself for a
//! quadratic). With `ranks` (the paper's centred ranks) each loss is replaced by its
//! rank among the P, scaled to [−0.5, 0.5], which makes the step invariant to the loss's
//! scale; the optimizer's learning rate sets the step. Directions are regenerated from
//! their seeds rather than stored (the paper's shared-noise trick, per step).

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use super::{Batch, Rule, RuleSpec, StepOutput};
use crate::error::{Error, Result};
use crate::nn::{Grads, Loss, Model, Params};
use crate::settings::parse;
use crate::tensor::Tensor;

crate::settings_struct! {
    /// OpenAI-ES settings.
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default)]
    pub struct EsSettings: "es" {
        /// Evaluations per step P (antithetic pairs: P/2 directions; even, at least 2).
        pub population: usize = 50,
        /// Perturbation scale σ.
        pub sigma: f64 = 0.02,
        /// Fitness shaping: `ranks` (centred ranks in [−0.5, 0.5]) or `none` (raw losses).
        pub fitness_shaping: String = "ranks".into(),
    }
}

impl crate::settings::Settings for EsSettings {
    fn validate(&self) -> Result<()> {
        use crate::settings::{Range::Positive, real};
        if self.population < 2 || !self.population.is_multiple_of(2) {
            return Err(Error::config(
                "population",
                format!("{} is not an even number of at least 2", self.population),
            ));
        }
        real("sigma", self.sigma, Positive)?;
        if !matches!(self.fitness_shaping.as_str(), "ranks" | "none") {
            return Err(Error::unknown(
                "fitness_shaping",
                &self.fitness_shaping,
                &["ranks", "none"],
            ));
        }
        Ok(())
    }
}

pub(super) const ES: RuleSpec = RuleSpec {
    name: "es",
    aliases: &["openai-es"],
    summary: "evolution strategies: antithetic Gaussian perturbations, centred-rank fitness, no backward pass",
    paper: "Salimans et al. 2017",
    settings: <EsSettings as crate::settings::Described>::fields,
    small_models: true,
    build: |t| Ok(Box::new(Es::new(parse("rule", t)?))),
    ..RuleSpec::DEFAULT
};

/// OpenAI-ES.
#[derive(Debug, Clone)]
pub struct Es {
    settings: EsSettings,
    seed: u64,
    steps: u64,
}

impl Es {
    /// The rule with `settings`.
    pub fn new(settings: EsSettings) -> Self {
        Es {
            settings,
            seed: 0,
            steps: 0,
        }
    }
}

/// Direction `i` of a step: one N(0, 1) draw per element of `shapes`, from `seed`.
fn direction(seed: u64, shapes: &[Vec<usize>]) -> Result<Vec<Tensor>> {
    let mut rng = crate::Rng::seed_from_u64(seed);
    shapes
        .iter()
        .map(|s| {
            let n: usize = s.iter().product();
            let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
            Tensor::from_vec(s, v)
        })
        .collect()
}

/// Centred ranks of `v` (smallest first): rank/(n − 1) − 0.5.
fn centred_ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]).then(a.cmp(&b)));
    let mut r = vec![0.0; v.len()];
    let d = (v.len().max(2) - 1) as f64;
    for (rank, &i) in idx.iter().enumerate() {
        r[i] = rank as f64 / d - 0.5;
    }
    r
}

impl Rule for Es {
    fn name(&self) -> &'static str {
        "es"
    }

    fn init(&mut self, _model: &Model, _params: &mut Params, seed: u64) -> Result<()> {
        self.seed = seed;
        Ok(())
    }

    /// Every family whose evaluation pass is its training pass (normalisation and
    /// dropout layers differ between the two, and the population is evaluated).
    fn trains(&self) -> super::Trains {
        super::Trains {
            norm: false,
            ..super::Trains::ALL
        }
    }

    fn splits_over_batch(&self) -> bool {
        // Each rank would draw the same directions on its own rows: the estimate of the
        // whole batch's loss differences is not the average of the ranks' estimates'
        // shaped fitness; refused under mpirun.
        false
    }

    fn step(
        &mut self,
        model: &Model,
        params: &Params,
        batch: &Batch,
        loss: Loss,
    ) -> Result<StepOutput> {
        let names: Vec<String> = crate::train::model_param_names(model, params)
            .into_iter()
            .filter(|n| !crate::nn::is_buffer(n))
            .collect();
        let shapes: Vec<Vec<usize>> = names
            .iter()
            .map(|n| params.get(n).map(|t| t.shape().to_vec()))
            .collect::<Result<_>>()?;
        let sigma = self.settings.sigma;
        let pairs = self.settings.population / 2;
        self.steps += 1;
        let step_seed = self
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(self.steps);
        let seed_of = |i: usize| step_seed ^ (i as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
        let evaluate = |i: usize, sign: f64| -> Result<f64> {
            let eps = direction(seed_of(i), &shapes)?;
            let mut q = params.clone();
            for (n, e) in names.iter().zip(&eps) {
                let mut t = q.get(n)?.clone();
                t.axpy(sign * sigma, &e.to_dtype(t.dtype()))?;
                q.insert(n.clone(), t);
            }
            let out = model.forward(&q, &batch.x)?;
            Ok(loss.eval(&out, &batch.target)?.0)
        };
        let losses: Vec<(f64, f64)> = (0..pairs)
            .into_par_iter()
            .map(|i| Ok((evaluate(i, 1.0)?, evaluate(i, -1.0)?)))
            .collect::<Result<_>>()?;
        let flat: Vec<f64> = losses.iter().flat_map(|&(a, b)| [a, b]).collect();
        let shaped = if self.settings.fitness_shaping == "ranks" {
            centred_ranks(&flat)
        } else {
            flat
        };
        // ĝ = 1/(Pσ) Σ (L⁺ − L⁻) ε, with the shaped losses.
        let scale = 1.0 / (self.settings.population as f64 * sigma);
        let mut g: Vec<Tensor> = shapes
            .iter()
            .map(|s| Tensor::zeros(s, crate::tensor::DType::F32))
            .collect();
        for i in 0..pairs {
            let w = (shaped[2 * i] - shaped[2 * i + 1]) * scale;
            for (gt, e) in g.iter_mut().zip(direction(seed_of(i), &shapes)?) {
                gt.axpy(w, &e)?;
            }
        }
        let mut grads = Grads::new();
        for (n, t) in names.iter().zip(g) {
            let dt = params.get(n)?.dtype();
            grads.insert(n.clone(), t.to_dtype(dt));
        }
        let trace = model.forward_trace(params, &batch.x)?;
        let out = trace
            .output()
            .ok_or_else(|| Error::config("rule", "es: empty model"))?;
        let value = loss.eval(out, &batch.target)?.0;
        Ok(StepOutput {
            grads,
            trace,
            loss: value,
            prediction: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::centred_ranks;

    #[test]
    fn centred_ranks_span_minus_to_plus_a_half() {
        assert_eq!(centred_ranks(&[3.0, -1.0, 10.0]), vec![0.0, -0.5, 0.5]);
    }
}

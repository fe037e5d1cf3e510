//! Weight initialisers.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How a weight matrix of shape `[fan_out, fan_in]` is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Init {
    /// Pick from the activation: He uniform for the ReLU family, LeCun normal for SELU,
    /// Xavier uniform otherwise.
    Auto,
    /// U(±√(6/(fan_in+fan_out))) (Glorot & Bengio 2010).
    XavierUniform,
    /// N(0, 2/(fan_in+fan_out)).
    XavierNormal,
    /// U(±√(6/fan_in)) (He et al. 2015).
    HeUniform,
    /// N(0, 2/fan_in).
    HeNormal,
    /// N(0, 1/fan_in) (LeCun 1998; for SELU, Klambauer et al. 2017).
    LecunNormal,
    /// PyTorch's `nn.Linear` default: U(±1/√fan_in) for weights and biases.
    Torch,
    /// All zeros.
    Zeros,
    /// Every weight equal to the value.
    Constant(f64),
    /// N(0, s²) for weights and biases alike, whatever the fan-in (the fixed-scale
    /// draw of many reference implementations).
    Normal(f64),
    /// Sparse initialisation (Martens 2010, §5): each unit gets `k` nonzero incoming
    /// weights drawn from N(0, 1), the rest zero (all of them when fan_in ≤ k); biases 0.
    ///
    /// ```
    /// use futureprop::nn::Init;
    /// use rand::SeedableRng;
    /// let mut rng = futureprop::Rng::seed_from_u64(0);
    /// let w = Init::parse("sparse").unwrap().sample(100, 4, &mut rng);
    /// for row in w.chunks(100) {
    ///     assert_eq!(row.iter().filter(|v| **v != 0.0).count(), 15);
    /// }
    /// ```
    Sparse(usize),
}

/// Names accepted by [`Init::parse`].
pub const INIT_NAMES: &[&str] = &[
    "auto",
    "xavier-uniform",
    "xavier-normal",
    "he-uniform",
    "he-normal",
    "lecun-normal",
    "torch",
    "zeros",
    "constant:VALUE",
    "normal:SD",
    "sparse[:K]",
];

impl Init {
    /// Parses a CLI name such as `he-uniform` or `constant:0.1`.
    pub fn parse(s: &str) -> Result<Init> {
        Ok(match s {
            "auto" => Init::Auto,
            "xavier-uniform" | "glorot-uniform" => Init::XavierUniform,
            "xavier-normal" | "glorot-normal" => Init::XavierNormal,
            "he-uniform" | "kaiming-uniform" => Init::HeUniform,
            "he-normal" | "kaiming-normal" => Init::HeNormal,
            "lecun-normal" => Init::LecunNormal,
            "torch" => Init::Torch,
            "zeros" => Init::Zeros,
            "sparse" => Init::Sparse(15),
            _ if s.starts_with("sparse:") => {
                let k = &s["sparse:".len()..];
                match k.parse::<usize>() {
                    Ok(k) if k > 0 => Init::Sparse(k),
                    _ => {
                        return Err(Error::config(
                            "init",
                            format!("sparse:K needs a positive count, got '{k}'"),
                        ));
                    }
                }
            }
            _ if s.starts_with("normal:") => {
                let v = &s["normal:".len()..];
                match v.parse::<f64>() {
                    Ok(sd) if sd.is_finite() && sd > 0.0 => Init::Normal(sd),
                    _ => {
                        return Err(Error::config(
                            "init",
                            format!("normal:SD needs a positive standard deviation, got '{v}'"),
                        ));
                    }
                }
            }
            _ => match s.strip_prefix("constant:") {
                Some(v) => Init::Constant(
                    v.parse()
                        .map_err(|_| Error::config("init", format!("'{v}' is not a number")))?,
                ),
                None => return Err(Error::unknown("initialiser", s, INIT_NAMES)),
            },
        })
    }

    /// Draws `fan_out × fan_in` weights, row-major.
    pub fn sample<R: Rng>(self, fan_in: usize, fan_out: usize, rng: &mut R) -> Vec<f32> {
        let n = fan_in * fan_out;
        let (fi, fo) = (fan_in.max(1) as f64, fan_out.max(1) as f64);
        let uniform = |a: f64, rng: &mut R| -> Vec<f32> {
            (0..n).map(|_| rng.random_range(-a..=a) as f32).collect()
        };
        let normal = |s: f64, rng: &mut R| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    let z: f64 = StandardNormal.sample(rng);
                    (s * z) as f32
                })
                .collect()
        };
        match self {
            Init::Auto | Init::XavierUniform => uniform((6.0 / (fi + fo)).sqrt(), rng),
            Init::XavierNormal => normal((2.0 / (fi + fo)).sqrt(), rng),
            Init::HeUniform => uniform((6.0 / fi).sqrt(), rng),
            Init::HeNormal => normal((2.0 / fi).sqrt(), rng),
            Init::LecunNormal => normal((1.0 / fi).sqrt(), rng),
            Init::Torch => uniform(1.0 / fi.sqrt(), rng),
            Init::Zeros => vec![0.0; n],
            Init::Constant(c) => vec![c as f32; n],
            Init::Normal(s) => normal(s, rng),
            Init::Sparse(k) => {
                let mut w = vec![0.0f32; n];
                for row in w.chunks_mut(fan_in.max(1)) {
                    let chosen = rand::seq::index::sample(rng, fan_in, k.min(fan_in));
                    for j in chosen.iter() {
                        let z: f64 = StandardNormal.sample(rng);
                        row[j] = z as f32;
                    }
                }
                w
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Model, ModelSpec};

    #[test]
    fn normal_draws_weights_and_biases_at_the_given_scale() {
        let m = Model::build(&ModelSpec {
            spec: "mlp:400-300-10".into(),
            activation: "tanh".into(),
            bias: true,
        })
        .unwrap();
        let p = m
            .init_params(Init::parse("normal:0.1").unwrap(), 0)
            .unwrap();
        let sd = |k: &str| {
            let v = p.get(k).unwrap().to_vec_f64();
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            assert!(mean.abs() < 0.02, "{k}: mean {mean}");
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt()
        };
        // 120k weights: sd within 1 %; 300 biases: within 15 %.
        assert!((sd("fc1.weight") - 0.1).abs() < 1e-3);
        assert!((sd("fc1.bias") - 0.1).abs() < 0.015);
        for bad in ["normal:0", "normal:-1", "normal:x", "normal:inf"] {
            let e = Init::parse(bad).unwrap_err().to_string();
            assert!(e.contains("normal:SD"), "{bad}: {e}");
        }
    }
}

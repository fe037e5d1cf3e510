//! Leaky integrate-and-fire dynamics over time and their surrogate-gradient adjoint
//! (Neftci, Mostafa & Zenke 2019), on `[n, T·h]` tensors: sample-major, then time, then
//! unit (element (i, t, j) at i·T·h + t·h + j).
//!
//! Forward, for each unit, from U₀ = 0 (snnTorch's `Leaky`):
//! r_t = H(U_{t−1} − θ) (the reset, detached from the gradient, as snnTorch's default),
//! U_t = β·U_{t−1} + I_t − θ·r_t (reset by subtraction), β·(1 − r_t)·U_{t−1} + I_t (reset
//! to zero) or β·U_{t−1} + I_t (none); S_t = H(U_t − θ), or S_t = F(U_t − θ) with F the
//! surrogate's primitive in the smooth network.
//!
//! Backward (BPTT through the membrane): with the surrogate derivative σ'(U_t − θ) in
//! place of H', g_t = δS_t·σ'(U_t − θ) + β·c_{t+1}·g_{t+1} where c = 1 − r under reset to
//! zero and 1 otherwise; ∂L/∂I_t = g_t. A non-spiking (readout) layer has δU_t in place of
//! δS_t·σ'.

use rayon::prelude::*;

use super::{DType, Tensor};
use crate::error::{Error, Result};

/// An element the kernels compute in: f32 (training) or f64 (gradient checks).
trait El: Copy + Send + Sync + Default {
    fn get(self) -> f64;
    fn put(v: f64) -> Self;
    fn tensor(shape: &[usize], v: Vec<Self>) -> Result<Tensor>;
}

impl El for f32 {
    fn get(self) -> f64 {
        f64::from(self)
    }
    fn put(v: f64) -> Self {
        v as f32
    }
    fn tensor(shape: &[usize], v: Vec<Self>) -> Result<Tensor> {
        Tensor::from_vec(shape, v)
    }
}

impl El for f64 {
    fn get(self) -> f64 {
        self
    }
    fn put(v: f64) -> Self {
        v
    }
    fn tensor(shape: &[usize], v: Vec<Self>) -> Result<Tensor> {
        Tensor::from_vec_f64(shape, v)
    }
}

/// Runs `$body` with `$v` the elements of each tensor as a slice of f64 (an f64 tensor)
/// or f32 (any other), `$E` the element type; the result in the first tensor's type.
macro_rules! on_elements {
    ($first:expr, [$($t:ident => $v:ident),+], $E:ident => $body:block) => {{
        if $first.dtype() == DType::F64 {
            type $E = f64;
            $( let $v = $t.to_vec_f64(); let $v: &[f64] = &$v; )+
            $body
        } else {
            type $E = f32;
            $( let $v = $t.to_dtype(DType::F32); let $v: &[f32] = $v.as_f32()?; )+
            $body
        }
    }};
}

/// The pseudo-derivative σ' standing in for the Heaviside step's in the backward pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Surrogate {
    /// σ'(x) = 1/(1 + k|x|)² (Zenke & Ganguli 2018; snnTorch's `fast_sigmoid`, k = 25);
    /// F(x) = x/(1 + k|x|).
    FastSigmoid(f64),
    /// σ'(x) = (α/2)/(1 + (πα x/2)²) (snnTorch's `atan`, α = 2); F(x) = arctan(πα x/2)/π.
    Arctan(f64),
    /// σ'(x) = γ·max(0, 1 − |x|) (Bellec et al. 2018's pseudo-derivative, γ = 0.3, for
    /// θ = 1); F its integral.
    Triangle(f64),
}

impl Surrogate {
    /// σ'(x).
    pub fn derivative(self, x: f64) -> f64 {
        match self {
            Surrogate::FastSigmoid(k) => 1.0 / (1.0 + k * x.abs()).powi(2),
            Surrogate::Arctan(a) => {
                let z = std::f64::consts::FRAC_PI_2 * a * x;
                a / 2.0 / (1.0 + z * z)
            }
            Surrogate::Triangle(g) => g * (1.0 - x.abs()).max(0.0),
        }
    }

    /// F(x), a primitive of σ' (the smooth network's spike), up to a constant.
    pub fn primitive(self, x: f64) -> f64 {
        match self {
            Surrogate::FastSigmoid(k) => x / (1.0 + k * x.abs()),
            Surrogate::Arctan(a) => {
                (std::f64::consts::FRAC_PI_2 * a * x).atan() / std::f64::consts::PI
            }
            Surrogate::Triangle(g) => {
                let c = x.clamp(-1.0, 1.0);
                g * (c - c * c.abs() / 2.0)
            }
        }
    }
}

/// How the membrane resets after a spike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// U ← U − θ.
    Subtract,
    /// U ← 0.
    Zero,
    /// No reset.
    None,
}

/// One LIF population's constants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lif {
    /// Time steps T.
    pub steps: usize,
    /// Membrane decay β.
    pub beta: f64,
    /// Threshold θ.
    pub threshold: f64,
    /// Reset after a spike.
    pub reset: Reset,
    /// The backward pass's pseudo-derivative.
    pub surrogate: Surrogate,
    /// Spikes are F(U − θ) instead of H(U − θ) (the smooth surrogate network).
    pub smooth: bool,
    /// Whether the population spikes (else a leaky readout: its output is U).
    pub spiking: bool,
    /// Threshold adaptation (adaptive LIF, Bellec et al. 2018) as (ρ, β_a):
    /// a_t = ρ·a_{t−1} + S_{t−1}, threshold A_t = θ + β_a·a_t; reset by subtraction
    /// takes off the threshold crossed, A_{t−1}. `None`: a fixed threshold θ.
    pub adapt: Option<(f64, f64)>,
}

/// One sample's thresholds A_t and hard spikes z_t, replayed from its membrane.
struct Replay {
    threshold: Vec<f64>,
    spike: Vec<bool>,
}

impl Lif {
    fn shape(&self, t: &Tensor, what: &str) -> Result<(usize, usize)> {
        let (n, w) = t.dims2()?;
        if self.steps == 0 || !w.is_multiple_of(self.steps) {
            return Err(Error::shape(
                what,
                format!("{w} columns are not {} time steps of units", self.steps),
            ));
        }
        Ok((n, w / self.steps))
    }

    /// The adaptation's input from step t: the spike, smooth in the smooth network.
    fn adapt_input(&self, v: f64, a: f64) -> f64 {
        if self.smooth {
            self.surrogate.primitive(v - a)
        } else if v >= a {
            1.0
        } else {
            0.0
        }
    }

    /// A_t and z_t of one sample from its membrane `u` (`[T·h]`).
    fn replay<E: El>(&self, u: &[E], h: usize) -> Replay {
        let mut threshold = vec![self.threshold; u.len()];
        let mut spike = vec![false; u.len()];
        let mut a = vec![0.0f64; h];
        for t in 0..self.steps {
            for (j, a) in a.iter_mut().enumerate() {
                let k = t * h + j;
                if let Some((rho, ba)) = self.adapt {
                    if t > 0 {
                        let p = k - h;
                        *a = rho * *a + self.adapt_input(u[p].get(), threshold[p]);
                    }
                    threshold[k] = self.threshold + ba * *a;
                }
                spike[k] = self.spiking && u[k].get() >= threshold[k];
            }
        }
        Replay { threshold, spike }
    }

    /// Whether the reset acts at all.
    fn resets(&self) -> bool {
        self.spiking && self.reset != Reset::None
    }

    /// (output, membrane) from the input currents I `[n, T·h]`: the output is the spikes
    /// (or U for a readout).
    pub fn forward(&self, currents: &Tensor) -> Result<(Tensor, Tensor)> {
        let (n, h) = self.shape(currents, "lif_forward")?;
        on_elements!(currents, [currents => i], E => {
            let (s, u) = self.forward_on::<E>(i, n, h);
            Ok((E::tensor(&[n, self.steps * h], s)?, E::tensor(&[n, self.steps * h], u)?))
        })
    }

    fn forward_on<E: El>(&self, i: &[E], n: usize, h: usize) -> (Vec<E>, Vec<E>) {
        let len = self.steps * h;
        let mut u = vec![E::default(); n * len];
        let mut s = vec![E::default(); n * len];
        u.par_chunks_mut(len)
            .zip(s.par_chunks_mut(len))
            .zip(i.par_chunks(len))
            .for_each(|((u, s), i)| {
                // Per unit: U_{t−1}, A_{t−1}, z_{t−1}, the adaptation a and its input.
                let mut prev = vec![(0.0f64, self.threshold, false, 0.0f64, 0.0f64); h];
                for t in 0..self.steps {
                    for (j, (pu, pa, pz, a, pin)) in prev.iter_mut().enumerate() {
                        let k = t * h + j;
                        let r = if self.resets() && *pz { 1.0 } else { 0.0 };
                        let leak = match self.reset {
                            Reset::Zero => self.beta * (1.0 - r) * *pu,
                            _ => self.beta * *pu,
                        };
                        let sub = if self.reset == Reset::Subtract {
                            r * *pa
                        } else {
                            0.0
                        };
                        let th = match self.adapt {
                            Some((rho, ba)) => {
                                *a = rho * *a + *pin;
                                self.threshold + ba * *a
                            }
                            None => self.threshold,
                        };
                        let v = leak + i[k].get() - sub;
                        u[k] = E::put(v);
                        s[k] = E::put(if !self.spiking {
                            v
                        } else if self.smooth {
                            self.surrogate.primitive(v - th)
                        } else if v >= th {
                            1.0
                        } else {
                            0.0
                        });
                        *pin = self.adapt_input(v, th);
                        (*pu, *pa, *pz) = (v, th, self.spiking && v >= th);
                    }
                }
            });
        (s, u)
    }

    /// ∂L/∂I from ∂L/∂output `d_out` and the forward pass's membrane `u`.
    pub fn backward(&self, u: &Tensor, d_out: &Tensor) -> Result<Tensor> {
        let (n, h) = self.shape(u, "lif_backward")?;
        if d_out.shape() != u.shape() {
            return Err(Error::shape(
                "lif_backward",
                format!("gradient {:?} vs membrane {:?}", d_out.shape(), u.shape()),
            ));
        }
        on_elements!(u, [u => uv, d_out => dv], E => {
            let g = self.backward_on::<E>(uv, dv, n, h);
            E::tensor(&[n, self.steps * h], g)
        })
    }

    fn backward_on<E: El>(&self, uv: &[E], dv: &[E], n: usize, h: usize) -> Vec<E> {
        let len = self.steps * h;
        let mut g = vec![E::default(); n * len];
        g.par_chunks_mut(len)
            .zip(uv.par_chunks(len).zip(dv.par_chunks(len)))
            .for_each(|(g, (u, d))| {
                let rp = self.replay(u, h);
                // Per unit: ∂L/∂U_{t+1} and ∂L/∂a_{t+1}.
                let mut next = vec![(0.0f64, 0.0f64); h];
                for t in (0..self.steps).rev() {
                    for (j, (gu, ga)) in next.iter_mut().enumerate() {
                        let k = t * h + j;
                        let last = t + 1 == self.steps;
                        // ∂U_{t+1}/∂U_t: β, or β(1 − r_{t+1}) under reset to zero.
                        let c = if self.reset == Reset::Zero && self.resets() && rp.spike[k] {
                            0.0
                        } else {
                            1.0
                        };
                        let carry = if last { 0.0 } else { self.beta * c * *gu };
                        let (du, da) = if self.spiking {
                            let sd = self.surrogate.derivative(u[k].get() - rp.threshold[k]);
                            // ∂L/∂S_t: the output's, and through a_{t+1} = ρa_t + S_t.
                            let (rho, ba) = self.adapt.unwrap_or((0.0, 0.0));
                            let gs = d[k].get() + if last { 0.0 } else { *ga };
                            (gs * sd, -ba * gs * sd + if last { 0.0 } else { rho * *ga })
                        } else {
                            (d[k].get(), 0.0)
                        };
                        *gu = du + carry;
                        *ga = da;
                        g[k] = E::put(*gu);
                    }
                }
            });
        g
    }
}

impl Lif {
    /// ∂L/∂β from the membrane `u` and g = ∂L/∂U (the [`Lif::backward`] output, which is
    /// ∂L/∂I): Σ_t g_t·∂U_t/∂β with ∂U_t/∂β = U_{t−1} (times 1 − r_t under reset to zero).
    pub fn beta_grad(&self, u: &Tensor, g: &Tensor) -> Result<f64> {
        let (_, h) = self.shape(u, "lif_beta_grad")?;
        if g.shape() != u.shape() {
            return Err(Error::shape(
                "lif_beta_grad",
                format!("gradient {:?} vs membrane {:?}", g.shape(), u.shape()),
            ));
        }
        let len = self.steps * h;
        on_elements!(u, [u => uv, g => gv], E => {
            let _: Option<E> = None;
            Ok(uv
                .par_chunks(len)
                .zip(gv.par_chunks(len))
                .map(|(u, g)| {
                    let rp = self.replay(u, h);
                    let mut s = 0.0;
                    for t in 1..self.steps {
                        for j in 0..h {
                            let p = (t - 1) * h + j;
                            let c = if self.reset == Reset::Zero && self.resets() && rp.spike[p] {
                                0.0
                            } else {
                                1.0
                            };
                            s += g[t * h + j].get() * u[p].get() * c;
                        }
                    }
                    s
                })
                .sum())
        })
    }
}

/// The mean over the T time steps of `[n, T·h]`, `[n, h]` (or its adjoint: each step
/// gets 1/T of `[n, h]`).
pub fn time_mean(x: &Tensor, steps: usize, adjoint: bool) -> Result<Tensor> {
    let (n, w) = x.dims2()?;
    let steps = steps.max(1);
    if !adjoint && !w.is_multiple_of(steps) {
        return Err(Error::shape(
            "time_mean",
            format!("{w} columns over {steps} steps"),
        ));
    }
    let inv = 1.0 / steps as f64;
    on_elements!(x, [x => v], E => {
        if adjoint {
            let mut out = vec![E::default(); n * w * steps];
            for (o, r) in out.chunks_mut(w * steps).zip(v.chunks(w)) {
                for t in 0..steps {
                    for (o, &r) in o[t * w..(t + 1) * w].iter_mut().zip(r) {
                        *o = E::put(r.get() * inv);
                    }
                }
            }
            E::tensor(&[n, w * steps], out)
        } else {
            let h = w / steps;
            let mut out = vec![E::default(); n * h];
            for (o, r) in out.chunks_mut(h).zip(v.chunks(w)) {
                for t in 0..steps {
                    for (o, &r) in o.iter_mut().zip(&r[t * h..(t + 1) * h]) {
                        *o = E::put(o.get() + r.get() * inv);
                    }
                }
            }
            E::tensor(&[n, h], out)
        }
    })
}

/// Spike trains `[n, T·f]` of `[n, f]` intensities: `Direct` repeats x at every step;
/// `Rate` draws a spike with probability clamp(x, 0, 1) at each step (Bernoulli, from
/// `seed`); `Latency` fires once, at step round((1 − x)·(T − 1)) for x > 0 clamped to
/// [0, 1] (brighter earlier), never for x ≤ 0.
pub fn encode(x: &Tensor, steps: usize, kind: Encoding, seed: u64) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let (n, f) = x.dims2()?;
    on_elements!(x, [x => v], E => {
        let mut out = vec![E::default(); n * f * steps];
        out.par_chunks_mut(f * steps)
            .zip(v.par_chunks(f))
            .enumerate()
            .for_each(|(i, (o, x))| {
                let mut rng =
                    crate::Rng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                for t in 0..steps {
                    for (j, &x) in x.iter().enumerate() {
                        let x = x.get();
                        o[t * f + j] = E::put(match kind {
                            Encoding::Direct => x,
                            Encoding::Rate => f64::from(u8::from(rng.random::<f64>() < x.clamp(0.0, 1.0))),
                            Encoding::Latency => {
                                let at = ((1.0 - x.clamp(0.0, 1.0)) * (steps.max(1) - 1) as f64).round() as usize;
                                f64::from(u8::from(x > 0.0 && at == t))
                            }
                        });
                    }
                }
            });
        E::tensor(&[n, f * steps], out)
    })
}

/// How a static input becomes spikes over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The input as a current at every step.
    Direct,
    /// Bernoulli spikes at rate x.
    Rate,
    /// One spike, earlier for larger x.
    Latency,
}

/// The sum over time of `[n, T·h]` gradients into `[n, h]` (the adjoint of repeating an
/// input at every step).
pub fn time_sum(x: &Tensor, steps: usize) -> Result<Tensor> {
    Ok(time_mean(x, steps, false)?.scale(steps as f64))
}

//! Fused kernels of the learning rules: loops that read several tensors once per element
//! where a chain of tensor operations would pass over memory several times (the
//! relaxation step of equilibrium propagation, per-channel statistics and affine maps of
//! normalisation). Each is a [`super::BackendStorage`] method; the host versions are
//! here, generic over the element type.

use rayon::prelude::*;

use super::cpu::Elem;
use super::{Tensor, Unary};

use crate::error::{Error, Result};

/// The state nonlinearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rho {
    /// clip(s, 0, 1), states clipped to [0, 1].
    HardSigmoid,
    /// Logistic sigmoid.
    Sigmoid,
    /// tanh.
    Tanh,
}

impl Rho {
    /// Parses `hard-sigmoid`, `sigmoid` or `tanh`.
    pub fn parse(s: &str) -> Result<Rho> {
        match s {
            "hard-sigmoid" => Ok(Rho::HardSigmoid),
            "sigmoid" => Ok(Rho::Sigmoid),
            "tanh" => Ok(Rho::Tanh),
            _ => Err(Error::unknown(
                "eqprop rho",
                s,
                &["hard-sigmoid", "sigmoid", "tanh"],
            )),
        }
    }

    /// ρ(s).
    pub fn apply(self, s: &Tensor) -> Tensor {
        match self {
            // States stay in [0, 1], where the hard sigmoid is the identity.
            Rho::HardSigmoid => s.clone(),
            Rho::Sigmoid => s.unary(Unary::Sigmoid),
            Rho::Tanh => s.unary(Unary::Tanh),
        }
    }
}

/// The f32 hard-sigmoid case of [`relax_step`] without a target, written so the
/// compiler vectorises it: s' = clip(s + ε(fwd + feedback − s), 0, 1). Returns s' and
/// ‖g‖².
pub(super) fn hard_sigmoid_step(s: &[f32], f: &[f32], fb: &[f32], eps: f32) -> (Vec<f32>, f64) {
    let mut out = vec![0.0f32; s.len()];
    let mut acc = [0.0f32; 8];
    let body = |o: &mut [f32], sv: &[f32], fv: &[f32], bv: &[f32], acc: &mut [f32; 8]| {
        for j in 0..o.len() {
            let g = fv[j] + bv[j] - sv[j];
            acc[j] += g * g;
            o[j] = (sv[j] + eps * g).clamp(0.0, 1.0);
        }
    };
    let mut oc = out.chunks_exact_mut(8);
    let (mut sc, mut fc, mut bc) = (s.chunks_exact(8), f.chunks_exact(8), fb.chunks_exact(8));
    for (((o, sv), fv), bv) in (&mut oc).zip(&mut sc).zip(&mut fc).zip(&mut bc) {
        body(o, sv, fv, bv, &mut acc);
    }
    body(
        oc.into_remainder(),
        sc.remainder(),
        fc.remainder(),
        bc.remainder(),
        &mut acc,
    );
    (out, acc.iter().map(|&a| a as f64).sum())
}

/// One relaxation step with drive = fwd + feedback: g = ρ'(s)⊙drive − s − β(s − y),
/// s' = s + εg (clipped to [0, 1] for the hard sigmoid). Returns s', ‖g‖² and ½‖s − y‖²
/// (0 without a target).
#[allow(clippy::too_many_arguments)]
pub(super) fn relax_step<T: Elem>(
    s: &[T],
    f: &[T],
    fb: Option<&[T]>,
    y: Option<&[T]>,
    beta: f64,
    eps: f64,
    rho: Rho,
) -> (Vec<T>, f64, f64) {
    let n = s.len();
    let mut out: Vec<T> = vec![T::of(0.0); n];
    let (lo, hi) = if rho == Rho::HardSigmoid {
        (0.0, 1.0)
    } else {
        (f64::NEG_INFINITY, f64::INFINITY)
    };
    let slope = |x: f64| match rho {
        Rho::HardSigmoid => 1.0,
        Rho::Sigmoid => {
            let q = Unary::Sigmoid.apply(x);
            q * (1.0 - q)
        }
        Rho::Tanh => {
            let q = x.tanh();
            1.0 - q * q
        }
    };
    // Eight partial sums so the loop vectorises.
    let mut acc = [0.0f64; 8];
    let mut cost = 0.0;
    for i in 0..n {
        let si = s[i].f64();
        let mut di = f[i].f64();
        if let Some(fb) = fb {
            di += fb[i].f64();
        }
        let mut g = if rho == Rho::HardSigmoid {
            di - si
        } else {
            slope(si) * di - si
        };
        if let Some(y) = y {
            let e = si - y[i].f64();
            cost += 0.5 * e * e;
            g -= beta * e;
        }
        acc[i % 8] += g * g;
        out[i] = T::of((si + eps * g).clamp(lo, hi));
    }
    (out, acc.iter().sum(), cost)
}

/// Per (sample, channel) of `[n, C·S]` rows: (Σₜ (xₜ − mᵢ꜀)·(oₜ, or xₜ − mᵢ꜀ without
/// `other`), Σₜ xₜ), m the optional `center`; sample-major (`i·C + c`), in parallel over
/// samples.
pub(super) fn channel_sums<T: Elem>(
    x: &[T],
    other: Option<&[T]>,
    center: Option<&[f64]>,
    (cs, s): (usize, usize),
) -> Vec<(f64, f64)> {
    let w = cs * s;
    let n = x.len().checked_div(w).unwrap_or(0);
    let mut out = vec![(0.0, 0.0); n * cs];
    out.par_chunks_mut(cs.max(1))
        .enumerate()
        .for_each(|(i, o)| {
            for (c, oc) in o.iter_mut().enumerate() {
                let r = i * w + c * s..i * w + (c + 1) * s;
                let m = center.map_or(0.0, |m| m[i * cs + c]);
                let (mut a, mut b) = (0.0, 0.0);
                match other {
                    Some(y) => {
                        for (xv, yv) in x[r.clone()].iter().zip(&y[r]) {
                            a += (xv.f64() - m) * yv.f64();
                            b += xv.f64();
                        }
                    }
                    None => {
                        for xv in &x[r] {
                            let d = xv.f64() - m;
                            a += d * d;
                            b += xv.f64();
                        }
                    }
                }
                *oc = (a, b);
            }
        });
    out
}

/// Per (sample, channel) of `[n, C·S]` rows: x·p + o·q + r with one (p, q, r) per
/// (sample, channel) (`i·C + c`), `o` optional; computed in f64.
pub(super) fn channel_affine<T: Elem>(
    x: &[T],
    other: Option<&[T]>,
    coef: &[(f64, f64, f64)],
    (cs, s): (usize, usize),
) -> Vec<T> {
    let w = cs * s;
    let mut out = vec![T::of(0.0); x.len()];
    out.par_chunks_mut(w.max(1))
        .enumerate()
        .for_each(|(i, row)| {
            for c in 0..cs {
                let (p, q, r) = coef[i * cs + c];
                let base = i * w + c * s;
                match other {
                    Some(o) => {
                        for t in 0..s {
                            row[c * s + t] =
                                T::of(x[base + t].f64() * p + o[base + t].f64() * q + r);
                        }
                    }
                    None => {
                        for t in 0..s {
                            row[c * s + t] = T::of(x[base + t].f64() * p + r);
                        }
                    }
                }
            }
        });
    out
}

impl Tensor {
    /// One relaxation step of an energy network's layer state `self` driven by `fwd`
    /// (+ `feedback`), nudged toward `target` with strength β: g = ρ'(s)⊙drive − s −
    /// β(s − y), s' = s + εg (clipped to [0, 1] for the hard sigmoid). Returns s', ‖g‖²
    /// and ½‖s − y‖² (0 without a target).
    pub fn relax_step(
        &self,
        fwd: &Tensor,
        feedback: Option<&Tensor>,
        target: Option<&Tensor>,
        beta: f64,
        eps: f64,
        rho: Rho,
    ) -> Result<(Tensor, f64, f64)> {
        let same = |t: Option<&Tensor>| t.is_none_or(|t| t.shape() == self.shape());
        if self.shape() != fwd.shape() || !same(feedback) || !same(target) {
            return Err(Error::shape(
                "eqprop relaxation",
                format!("state {:?} vs drive {:?}", self.shape(), fwd.shape()),
            ));
        }
        let fast = target.is_none() && feedback.is_some() && rho == Rho::HardSigmoid;
        // ~8 flops per element (4 on the fast path); reads s, fwd, feedback, writes s'.
        super::counters::add(
            if fast { 4 } else { 8 } * self.len() as u64,
            4 * 4 * self.len() as u64,
        );
        let fb = feedback.map(|t| t.storage());
        let y = target.map(|t| t.storage());
        let (v, r2, cost) = on_backend_opt!(self.storage(), fwd.storage(), fb, y,
        (s, f, fb, y) => {
            let (v, r2, c) = super::BackendStorage::relax_step(s, f, fb, y, beta, eps, rho)?;
            (super::Storage::from(v), r2, c)
        });
        Ok((self.like(v), r2, cost))
    }

    /// Per (sample, channel) sums over the `positions` of each channel of `[n, C·S]`
    /// rows: (Σ (x − m)·o, Σ x) with `o` = `other`, or (Σ (x − m)², Σ x) without; `m` =
    /// `center[i·C + c]` (0 without). Sample-major, accumulated in f64.
    pub fn channel_sums(
        &self,
        other: Option<&Tensor>,
        center: Option<&[f64]>,
        channels: usize,
        positions: usize,
    ) -> Result<Vec<(f64, f64)>> {
        let (n, f) = self.dims2()?;
        self.check_channels(
            "channel_sums",
            f,
            channels,
            positions,
            other,
            center.map(<[f64]>::len),
            n,
        )?;
        super::count_elementwise(self.len(), 2, self.dtype());
        let o = other.map(|t| t.storage());
        on_backend_opt!(self.storage(), o, (x, o) => {
            super::BackendStorage::channel_sums(x, o, center, (channels, positions))
        })
    }

    /// Per (sample, channel) of `[n, C·S]` rows: x·p + o·q + r, one `(p, q, r)` per
    /// (sample, channel) (sample-major), `o` = `other` (the `q` term is dropped
    /// without); computed in f64, returned in `self`'s type.
    pub fn channel_affine(
        &self,
        other: Option<&Tensor>,
        coef: &[(f64, f64, f64)],
        channels: usize,
        positions: usize,
    ) -> Result<Tensor> {
        let (n, f) = self.dims2()?;
        self.check_channels(
            "channel_affine",
            f,
            channels,
            positions,
            other,
            Some(coef.len()),
            n,
        )?;
        super::count_elementwise(self.len(), 3, self.dtype());
        let o = other.map(|t| t.storage());
        let v = on_backend_opt!(self.storage(), o, (x, o) => {
            super::Storage::from(super::BackendStorage::channel_affine(x, o, coef, (channels, positions))?)
        });
        Ok(self.like(v))
    }

    #[allow(clippy::too_many_arguments)]
    fn check_channels(
        &self,
        op: &str,
        f: usize,
        channels: usize,
        positions: usize,
        other: Option<&Tensor>,
        per_channel: Option<usize>,
        n: usize,
    ) -> Result<()> {
        if f != channels * positions {
            return Err(Error::shape(
                op,
                format!("rows of {f} for {channels} channels × {positions} positions"),
            ));
        }
        if let Some(o) = other {
            self.same_shape(op, o)?;
        }
        if let Some(k) = per_channel
            && k != n * channels
        {
            return Err(Error::shape(
                op,
                format!("{k} coefficients for {n} samples × {channels} channels"),
            ));
        }
        Ok(())
    }
}

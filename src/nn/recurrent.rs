//! Recurrent layers unrolled over a sequence: Elman RNN and LSTM cells, trained by
//! backprop through time (full or truncated) or by UORO.
//!
//! The input row of a sample is T time steps of D features (`[n, T·D]`, step t in columns
//! t·D..(t+1)·D — sequential MNIST is an image's 28 rows); the output is the last hidden
//! state h_T (`[n, H]`). With z = W_ih x_t + W_hh h_{t−1} + b:
//! - Elman (1990): h_t = tanh(z);
//! - LSTM (Hochreiter & Schmidhuber 1997, with forget gate; PyTorch's gate order i, f, g,
//!   o): i, f, o = σ(z_i, z_f, z_o), g = tanh(z_g), c_t = f·c_{t−1} + i·g,
//!   h_t = o·tanh(c_t).
//!
//! BPTT carries δh (and δc) back through the steps; truncated to k steps it stops after
//! the last k. UORO (Tallec & Ollivier 2017) keeps, per sequence, a rank-one estimate
//! s̃ θ̃ᵀ of ∂s_t/∂θ (s = h, or (h, c)): with random signs ν,
//! s̃ ← ρ₀ (∂F/∂s) s̃ + ρ₁ ν, θ̃ ← θ̃/ρ₀ + νᵀ(∂F/∂θ)/ρ₁,
//! ρ₀ = √(‖θ̃‖/‖(∂F/∂s) s̃‖), ρ₁ = √(‖νᵀ∂F/∂θ‖/‖ν‖), and the gradient estimate
//! (∂L/∂s_T · s̃) θ̃ is unbiased. In an online pass (the `uoro` rule) the estimate
//! advances with each step of the forward pass and only the last step's states, s̃ and
//! θ̃ are kept: memory independent of T, no history to backpropagate through. The record
//! of an ordinary training pass replays to the same estimate from its saved states.

use rand::{Rng as _, SeedableRng};
use rayon::prelude::*;

use super::{Grads, Init, Layer, LayerKind, OnlineGrads, Params, Record, missing};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The recurrent cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// h_t = tanh(W_ih x_t + W_hh h_{t−1} + b).
    Elman,
    /// Long short-term memory.
    Lstm,
}

impl Cell {
    fn gates(self) -> usize {
        match self {
            Cell::Elman => 1,
            Cell::Lstm => 4,
        }
    }
}

/// A recurrent layer over `steps` steps of `input` features with `hidden` units.
#[derive(Debug, Clone)]
pub struct Recurrent {
    name: String,
    cell: Cell,
    input: usize,
    hidden: usize,
    steps: usize,
    truncation: Option<usize>,
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Recurrent {
    /// A layer reading `steps` × `input` features.
    pub fn new(
        name: impl Into<String>,
        cell: Cell,
        input: usize,
        hidden: usize,
        steps: usize,
    ) -> Result<Self> {
        let name = name.into();
        if input == 0 || hidden == 0 || steps == 0 {
            return Err(Error::config(
                format!("layer {name}"),
                "needs at least one input feature, hidden unit and time step",
            ));
        }
        Ok(Recurrent {
            name,
            cell,
            input,
            hidden,
            steps,
            truncation: None,
        })
    }

    /// Truncates backprop through time to the last `k` steps (k ≥ 1).
    pub fn truncated(mut self, k: usize) -> Result<Self> {
        if k == 0 {
            return Err(Error::config(
                format!("layer {}", self.name),
                "BPTT truncation must be at least 1 step",
            ));
        }
        self.truncation = Some(k);
        Ok(self)
    }

    /// The cell.
    pub fn cell(&self) -> Cell {
        self.cell
    }

    /// (input features per step, hidden units, steps, gate rows G·H).
    fn dims(&self) -> (usize, usize, usize, usize) {
        (
            self.input,
            self.hidden,
            self.steps,
            self.cell.gates() * self.hidden,
        )
    }

    fn keys(&self) -> [String; 3] {
        ["w_ih", "w_hh", "bias"].map(|k| format!("{}.{k}", self.name))
    }

    fn weights(&self, p: &Params) -> Result<(Tensor, Tensor, Vec<f64>)> {
        let [a, b, c] = self.keys();
        Ok((
            p.get(&a)?.clone(),
            p.get(&b)?.clone(),
            p.get(&c)?.to_vec_f64(),
        ))
    }

    /// Per-step saved tensors: Elman keeps h_0..h_T; LSTM keeps (h, c, gates) per step
    /// and h_T, c_T.
    fn per_step(&self) -> usize {
        match self.cell {
            Cell::Elman => 1,
            Cell::Lstm => 3,
        }
    }

    fn saved_h<'a>(&self, rec: &'a Record, t: usize) -> Result<&'a Tensor> {
        rec.saved
            .get(t * self.per_step())
            .ok_or_else(|| missing(&self.name))
    }

    /// c_t and the gates (i, f, g, o) of step t + 1 (LSTM).
    fn saved_lstm<'a>(&self, rec: &'a Record, t: usize) -> Result<(&'a Tensor, &'a Tensor)> {
        match (rec.saved.get(3 * t + 1), rec.saved.get(3 * t + 2)) {
            (Some(c), Some(a)) => Ok((c, a)),
            _ => Err(missing(&self.name)),
        }
    }

    /// Error at the pre-activations z of step t + 1 given δh (and δc, which becomes the
    /// δc carried to step t) at its output.
    fn step_back(&self, rec: &Record, t: usize, dh: &[f64], dc: &mut [f64]) -> Result<Vec<f64>> {
        let h = self.hidden;
        match self.cell {
            Cell::Elman => {
                let ht = self.saved_h(rec, t + 1)?.to_vec_f64();
                Ok(dh.iter().zip(&ht).map(|(d, y)| d * (1.0 - y * y)).collect())
            }
            Cell::Lstm => {
                let (c_prev, a) = self.saved_lstm(rec, t)?;
                let (c_prev, a) = (c_prev.to_vec_f64(), a.to_vec_f64());
                let c_now = self.saved_lstm_c(rec, t + 1)?;
                let n = dh.len() / h;
                let mut dz = vec![0.0; n * 4 * h];
                for r in 0..n {
                    for j in 0..h {
                        let ga = |q: usize| a[r * 4 * h + q * h + j];
                        let (i, f, g, o) = (ga(0), ga(1), ga(2), ga(3));
                        let k = r * h + j;
                        let tc = c_now[k].tanh();
                        let dct = dc[k] + dh[k] * o * (1.0 - tc * tc);
                        let z = &mut dz[r * 4 * h..(r + 1) * 4 * h];
                        z[j] = dct * g * i * (1.0 - i);
                        z[h + j] = dct * c_prev[k] * f * (1.0 - f);
                        z[2 * h + j] = dct * i * (1.0 - g * g);
                        z[3 * h + j] = dh[k] * tc * o * (1.0 - o);
                        dc[k] = dct * f;
                    }
                }
                Ok(dz)
            }
        }
    }

    fn saved_lstm_c(&self, rec: &Record, t: usize) -> Result<Vec<f64>> {
        rec.saved
            .get(3 * t + 1)
            .map(Tensor::to_vec_f64)
            .ok_or_else(|| missing(&self.name))
    }

    /// BPTT: the parameter gradients (when `g` is given) and ∂L/∂x (when `want_dx`).
    fn bptt(
        &self,
        p: &Params,
        rec: &Record,
        d_out: &Tensor,
        g: Option<&mut Grads>,
        want_dx: bool,
    ) -> Result<Option<Tensor>> {
        if rec.online {
            return Err(Error::config(
                format!("layer {}", self.name),
                "an online (UORO) pass keeps no history to backpropagate through time; under uoro a recurrent layer must be the model's first layer",
            ));
        }
        let (n, _) = d_out.dims2()?;
        let (d, h, steps, gh) = self.dims();
        let (w_ih, w_hh, _) = self.weights(p)?;
        let dt = d_out.dtype();
        let mut dh = d_out.to_vec_f64();
        let mut dc = vec![0.0; n * h];
        // All steps' δz, rows (sample, step) as in the input's [n·T, D] view.
        let mut dz_all = vec![0.0; n * steps * gh];
        let first = self.truncation.map_or(0, |k| steps.saturating_sub(k));
        let mut g_hh = Tensor::zeros(&[gh, h], dt);
        for t in (first..steps).rev() {
            let dz = self.step_back(rec, t, &dh, &mut dc)?;
            for r in 0..n {
                dz_all[(r * steps + t) * gh..(r * steps + t + 1) * gh]
                    .copy_from_slice(&dz[r * gh..(r + 1) * gh]);
            }
            let dz = Tensor::from_vec_f64(&[n, gh], dz)?.to_dtype(dt);
            if g.is_some() {
                g_hh.matmul_acc(&dz, true, self.saved_h(rec, t)?, false)?;
            }
            if t > first {
                dh = dz.matmul(false, &w_hh, false)?.to_vec_f64();
            }
        }
        let dz_all = Tensor::from_vec_f64(&[n * steps, gh], dz_all)?.to_dtype(dt);
        if let Some(g) = g {
            let [k_ih, k_hh, k_b] = self.keys();
            let x = rec.input.reshape(&[n * steps, d])?;
            g.accumulate(&k_ih, dz_all.matmul(true, &x, false)?)?;
            g.accumulate(&k_hh, g_hh)?;
            g.accumulate(&k_b, dz_all.sum_rows()?)?;
        }
        if want_dx {
            return Ok(Some(
                dz_all
                    .matmul(false, &w_ih, false)?
                    .reshape(&[n, steps * d])?,
            ));
        }
        Ok(None)
    }

    /// One UORO step from the states of step t + 1 in `rec` (its layout, step t), the
    /// step's inputs `x_t` (`[n, D]`) and the state before it.
    fn uoro_step(
        &self,
        w_hh: &Tensor,
        rec: &Record,
        t: usize,
        x_t: &[f64],
        u: &mut Uoro,
    ) -> Result<()> {
        let (d, h, _, gh) = self.dims();
        let (s, np) = (u.s, u.np);
        let n = u.st.len() / s;
        let dt = w_hh.dtype();
        const EPS: f64 = 1e-7;
        let h_prev = self.saved_h(rec, t)?.to_vec_f64();
        // Tangent of the pre-activations: z̃ = W_hh h̃.
        let ht: Vec<f64> = (0..n)
            .flat_map(|r| u.st[r * s..r * s + h].iter().copied())
            .collect();
        let zt = Tensor::from_vec_f64(&[n, h], ht)?
            .to_dtype(dt)
            .matmul(false, w_hh, true)?
            .to_vec_f64();
        let nu: Vec<f64> = (0..n * s)
            .map(|_| if u.rng.random::<bool>() { 1.0 } else { -1.0 })
            .collect();
        // J s̃ (new tangent before scaling) and the VJP's δz for ν.
        let mut js = vec![0.0; n * s];
        let dz = match self.cell {
            Cell::Elman => {
                let hn = self.saved_h(rec, t + 1)?.to_vec_f64();
                for k in 0..n * h {
                    js[k] = (1.0 - hn[k] * hn[k]) * zt[k];
                }
                self.step_back(rec, t, &nu, &mut vec![0.0; n * h])?
            }
            Cell::Lstm => {
                let (c_prev, a) = self.saved_lstm(rec, t)?;
                let (c_prev, a) = (c_prev.to_vec_f64(), a.to_vec_f64());
                let c_now = self.saved_lstm_c(rec, t + 1)?;
                for r in 0..n {
                    for j in 0..h {
                        let ga = |q: usize| a[r * 4 * h + q * h + j];
                        let za = |q: usize| zt[r * 4 * h + q * h + j];
                        let (i, f, g, o) = (ga(0), ga(1), ga(2), ga(3));
                        let (ti, tf, tg, to) = (
                            i * (1.0 - i) * za(0),
                            f * (1.0 - f) * za(1),
                            (1.0 - g * g) * za(2),
                            o * (1.0 - o) * za(3),
                        );
                        let k = r * h + j;
                        let c_tan = tf * c_prev[k] + f * u.st[r * s + h + j] + ti * g + i * tg;
                        let tc = c_now[k].tanh();
                        js[r * s + j] = to * tc + o * (1.0 - tc * tc) * c_tan;
                        js[r * s + h + j] = c_tan;
                    }
                }
                let (nh, mut nc): (Vec<f64>, Vec<f64>) = (
                    (0..n)
                        .flat_map(|r| nu[r * s..r * s + h].iter().copied())
                        .collect(),
                    (0..n)
                        .flat_map(|r| nu[r * s + h..(r + 1) * s].iter().copied())
                        .collect(),
                );
                self.step_back(rec, t, &nh, &mut nc)?
            }
        };
        // Per sequence: νᵀ∂F/∂θ = δz ⊗ [x_t, h_{t−1}, 1] in the [W_ih | W_hh | b] layout.
        u.st.par_chunks_mut(s)
            .zip(u.th.par_chunks_mut(np))
            .enumerate()
            .for_each(|(r, (st_r, th_r))| {
                let dzr = &dz[r * gh..(r + 1) * gh];
                let xr = &x_t[r * d..(r + 1) * d];
                let hr = &h_prev[r * h..(r + 1) * h];
                let u2 = xr.iter().chain(hr).map(|v| v * v).sum::<f64>() + 1.0;
                let vjp_norm = (dzr.iter().map(|v| v * v).sum::<f64>() * u2).sqrt();
                let th_norm = th_r.iter().map(|v| v * v).sum::<f64>().sqrt();
                let js_r = &js[r * s..(r + 1) * s];
                let js_norm = js_r.iter().map(|v| v * v).sum::<f64>().sqrt();
                let rho0 = ((th_norm + EPS) / (js_norm + EPS)).sqrt();
                let rho1 = ((vjp_norm + EPS) / (s as f64).sqrt()).sqrt();
                for (k, v) in st_r.iter_mut().enumerate() {
                    *v = rho0 * js_r[k] + rho1 * nu[r * s + k];
                }
                let (w_ih, rest) = th_r.split_at_mut(gh * d);
                let (w_hh, b) = rest.split_at_mut(gh * h);
                for q in 0..gh {
                    let e = dzr[q] / rho1;
                    for (a, xv) in w_ih[q * d..(q + 1) * d].iter_mut().zip(xr) {
                        *a = *a / rho0 + e * xv;
                    }
                    for (a, hv) in w_hh[q * h..(q + 1) * h].iter_mut().zip(hr) {
                        *a = *a / rho0 + e * hv;
                    }
                    b[q] = b[q] / rho0 + e;
                }
            });
        Ok(())
    }

    /// UORO's state for `n` sequences, its signs drawn from `seed` and the layer's name.
    fn uoro_start(&self, n: usize, seed: u64) -> Uoro {
        let (d, h, _, gh) = self.dims();
        let s = if self.cell == Cell::Lstm { 2 * h } else { h };
        let np = gh * (d + h + 1);
        Uoro {
            s,
            np,
            st: vec![0.0; n * s],
            th: vec![0.0; n * np],
            rng: crate::Rng::seed_from_u64(
                seed.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ super::norm::name_hash(&self.name),
            ),
        }
    }

    /// Columns of step t of the input rows (`[n, D]`).
    fn step_input(&self, x: &[f64], n: usize, t: usize) -> Vec<f64> {
        let (d, _, steps, _) = self.dims();
        (0..n)
            .flat_map(|r| {
                x[r * steps * d + t * d..r * steps * d + (t + 1) * d]
                    .iter()
                    .copied()
            })
            .collect()
    }

    /// UORO's gradient estimate for the batch (sum over sequences): online records carry
    /// the final s̃ and θ̃; other records are replayed from their saved states with signs
    /// drawn from `seed` (the same estimate).
    fn uoro(&self, p: &Params, rec: &Record, d_out: &Tensor, seed: u64) -> Result<Vec<f64>> {
        let (n, _) = d_out.dims2()?;
        let h = self.hidden;
        let (st, th, s, np) = if rec.online {
            let (st, th) = match rec.saved.as_slice() {
                [_, st, th, ..] => (st.to_vec_f64(), th.to_vec_f64()),
                _ => return Err(missing(&self.name)),
            };
            let s = st.len() / n.max(1);
            let np = th.len() / n.max(1);
            (st, th, s, np)
        } else {
            let (_, w_hh, _) = self.weights(p)?;
            let x = rec.input.to_vec_f64();
            let mut u = self.uoro_start(n, seed);
            for t in 0..self.steps {
                self.uoro_step(&w_hh, rec, t, &self.step_input(&x, n, t), &mut u)?;
            }
            (u.st, u.th, u.s, u.np)
        };
        // (∂L/∂s_T · s̃) θ̃, summed over the batch (∂L/∂c_T = 0).
        let dl = d_out.to_vec_f64();
        let mut grad = vec![0.0; np];
        for r in 0..n {
            let a: f64 = (0..h).map(|j| dl[r * h + j] * st[r * s + j]).sum();
            for (gv, tv) in grad.iter_mut().zip(&th[r * np..(r + 1) * np]) {
                *gv += a * tv;
            }
        }
        Ok(grad)
    }
}

/// UORO's running estimate: s̃ (`[n, S]`) and θ̃ (`[n, P]`) per sequence.
struct Uoro {
    s: usize,
    np: usize,
    st: Vec<f64>,
    th: Vec<f64>,
    rng: crate::Rng,
}

impl Layer for Recurrent {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> LayerKind {
        LayerKind::Recurrent
    }

    fn output_width(&self, input: usize) -> Result<usize> {
        if input != self.steps * self.input {
            return Err(Error::shape(
                format!("layer {}", self.name),
                format!(
                    "expects {} steps × {} features = {}, got {input}",
                    self.steps,
                    self.input,
                    self.steps * self.input
                ),
            ));
        }
        Ok(self.hidden)
    }

    /// Uniform(−1/√H, 1/√H) for every weight and bias (PyTorch's recurrent default,
    /// whatever `init` says), and the LSTM's forget-gate bias at 1 (Jozefowicz et al.
    /// 2015).
    fn param_count(&self) -> usize {
        let (d, h, _, gh) = self.dims();
        gh.saturating_mul(d.saturating_add(h).saturating_add(1))
    }

    fn init_params(&self, _init: Init, rng: &mut crate::Rng, p: &mut Params) -> Result<()> {
        let (d, h, _, gh) = self.dims();
        let k = 1.0 / (h as f64).sqrt();
        let mut draw =
            |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-k..k) as f32).collect() };
        let [a, b, c] = self.keys();
        p.insert(a, Tensor::from_vec(&[gh, d], draw(gh * d))?);
        p.insert(b, Tensor::from_vec(&[gh, h], draw(gh * h))?);
        let mut bias = draw(gh);
        if self.cell == Cell::Lstm {
            bias[h..2 * h].iter_mut().for_each(|v| *v = 1.0);
        }
        p.insert(c, Tensor::from_vec(&[gh], bias)?);
        Ok(())
    }

    fn forward(&self, p: &Params, x: &Tensor, rec: &mut Record) -> Result<Tensor> {
        let (n, f) = x.dims2()?;
        self.output_width(f)?;
        let (d, h, steps, gh) = self.dims();
        let (w_ih, w_hh, b) = self.weights(p)?;
        let dt = x.dtype();
        // Input drive of every step at once: [n·T, D]·W_ihᵀ.
        let xw = x
            .reshape(&[n * steps, d])?
            .matmul(false, &w_ih, true)?
            .to_vec_f64();
        let mut hs = Tensor::zeros(&[n, h], dt);
        let mut c = vec![0.0; n * h];
        // Online UORO (a training pass of the `uoro` rule): the estimate advances with
        // each step and only the last step's states are kept.
        let online = rec.online && rec.train.is_some();
        let mut uoro = online.then(|| self.uoro_start(n, rec.train.unwrap_or(0)));
        let xv = if online { x.to_vec_f64() } else { Vec::new() };
        let kept = rec.saved.len();
        for t in 0..steps {
            let mut z = hs.matmul(false, &w_hh, true)?.to_vec_f64();
            for r in 0..n {
                let row = &xw[(r * steps + t) * gh..(r * steps + t + 1) * gh];
                for q in 0..gh {
                    z[r * gh + q] += row[q] + b[q];
                }
            }
            rec.saved.push(hs);
            let hn = match self.cell {
                Cell::Elman => z.iter().map(|v| v.tanh()).collect::<Vec<f64>>(),
                Cell::Lstm => {
                    rec.saved
                        .push(Tensor::from_vec_f64(&[n, h], c.clone())?.to_dtype(dt));
                    let mut hn = vec![0.0; n * h];
                    for r in 0..n {
                        let zr = &mut z[r * gh..(r + 1) * gh];
                        for j in 0..h {
                            let (i, fg, g, o) = (
                                sigmoid(zr[j]),
                                sigmoid(zr[h + j]),
                                zr[2 * h + j].tanh(),
                                sigmoid(zr[3 * h + j]),
                            );
                            zr[j] = i;
                            zr[h + j] = fg;
                            zr[2 * h + j] = g;
                            zr[3 * h + j] = o;
                            let k = r * h + j;
                            c[k] = fg * c[k] + i * g;
                            hn[k] = o * c[k].tanh();
                        }
                    }
                    rec.saved
                        .push(Tensor::from_vec_f64(&[n, gh], z)?.to_dtype(dt));
                    hn
                }
            };
            hs = Tensor::from_vec_f64(&[n, h], hn)?.to_dtype(dt);
            if let Some(u) = uoro.as_mut() {
                // This step's states in a one-step record: h_t (c_t, gates), h_{t+1} (c_{t+1}).
                let mut step = Record::empty(&self.name, dt);
                step.saved = rec.saved.split_off(kept);
                step.saved.push(hs.clone());
                if self.cell == Cell::Lstm {
                    step.saved
                        .push(Tensor::from_vec_f64(&[n, h], c.clone())?.to_dtype(dt));
                }
                self.uoro_step(&w_hh, &step, 0, &self.step_input(&xv, n, t), u)?;
            }
        }
        if let Some(u) = uoro {
            rec.saved.push(hs.clone());
            rec.saved.push(Tensor::from_vec_f64(&[n, u.s], u.st)?);
            rec.saved.push(Tensor::from_vec_f64(&[n, u.np], u.th)?);
            return Ok(hs);
        }
        rec.saved.push(hs.clone());
        if self.cell == Cell::Lstm {
            rec.saved
                .push(Tensor::from_vec_f64(&[n, h], c)?.to_dtype(dt));
        }
        Ok(hs)
    }

    fn param_grads(&self, p: &Params, rec: &Record, d_out: &Tensor, g: &mut Grads) -> Result<()> {
        self.bptt(p, rec, d_out, Some(g), false).map(|_| ())
    }

    fn input_grad(&self, p: &Params, rec: &Record, d_out: &Tensor) -> Result<Tensor> {
        self.bptt(p, rec, d_out, None, true)?
            .ok_or_else(|| missing(&self.name))
    }

    fn backward(
        &self,
        p: &Params,
        rec: &Record,
        d_out: &Tensor,
        g: &mut Grads,
        input: bool,
    ) -> Result<Option<Tensor>> {
        self.bptt(p, rec, d_out, Some(g), input)
    }

    fn online(&self) -> Option<&dyn OnlineGrads> {
        Some(self)
    }
}

impl OnlineGrads for Recurrent {
    fn online_param_grads(
        &self,
        p: &Params,
        rec: &Record,
        d_out: &Tensor,
        g: &mut Grads,
    ) -> Result<()> {
        let seed = rec.train.unwrap_or(0);
        let grad = self.uoro(p, rec, d_out, seed)?;
        let (d, h, _, gh) = self.dims();
        let dt = d_out.dtype();
        let [a, b, c] = self.keys();
        let (gi, rest) = grad.split_at(gh * d);
        let (gw, gb) = rest.split_at(gh * h);
        g.accumulate(
            &a,
            Tensor::from_vec_f64(&[gh, d], gi.to_vec())?.to_dtype(dt),
        )?;
        g.accumulate(
            &b,
            Tensor::from_vec_f64(&[gh, h], gw.to_vec())?.to_dtype(dt),
        )?;
        g.accumulate(&c, Tensor::from_vec_f64(&[gh], gb.to_vec())?.to_dtype(dt))
    }
}

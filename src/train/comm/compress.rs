//! What the ranks send in place of the f32 update: error-feedback signs (EF-SignSGD;
//! 1-bit Adam's compressed direction goes through the same compressor).

use super::Communicator;
use crate::error::{Error, Result};
use crate::nn::Grads;
use crate::tensor::Tensor;
/// What the ranks send each step (`compression` in the run's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// The f32 update, summed by an all-reduce.
    None,
    /// Error-feedback signs ([`SignCompressor`]).
    Sign,
}

impl Compression {
    /// `none` or `sign`.
    pub fn parse(s: &str) -> Result<Compression> {
        match s {
            "none" => Ok(Compression::None),
            "sign" => Ok(Compression::Sign),
            other => Err(Error::unknown(
                "compression (--compression)",
                other,
                &["none", "sign"],
            )),
        }
    }
}

/// Error-feedback sign compression (EF-SignSGD, Karimireddy et al. 2019, Algorithm 2):
/// a rank adds its residual to its update, p = u + e, sends Δ = (‖p‖₁/d)·sign(p) per
/// tensor of d elements (one bit per element and one f32 scale), and keeps e ← p − Δ for
/// its next step; every rank decodes every message and averages them, so all apply the
/// same update. The learning rate stays in the optimizer (for SGD at a constant rate this
/// is the paper's algorithm with the rate factored out).
///
/// With [`SignScale::Rms`] the scale is ‖p‖₂/√d instead, as 1-bit Adam's compressed
/// momentum uses (Tang et al. 2021; DeepSpeed's implementation).
#[derive(Default)]
pub struct SignCompressor {
    /// How a tensor's scale is taken.
    pub scale: SignScale,
    /// The residual e, in the packed order of the update.
    residual: Vec<f32>,
    /// This rank's message, every rank's messages, the decoded update.
    message: Vec<u8>,
    gathered: Vec<u8>,
    decoded: Vec<f32>,
}

/// The one number a [`SignCompressor`] sends per tensor beside its signs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum SignScale {
    /// ‖p‖₁/d: the scaled sign is the best one-bit approximation in L2 (EF-SignSGD).
    #[default]
    MeanAbs,
    /// ‖p‖₂/√d: the scaled sign keeps the tensor's norm (1-bit Adam).
    Rms,
}

impl SignCompressor {
    /// A compressor taking scales by `scale`.
    pub fn new(scale: SignScale) -> Self {
        SignCompressor {
            scale,
            ..Default::default()
        }
    }

    /// The residual this rank carries into its next step.
    pub fn residual(&self) -> &[f32] {
        &self.residual
    }

    /// Encodes `p = update + residual` (tensors of `lens` elements, packed in order) as
    /// one scale and one sign bit per element per tensor, keeping the new residual.
    fn encode(&mut self, update: &[f32], lens: &[usize]) {
        if self.residual.len() != update.len() {
            self.residual = vec![0.0; update.len()];
        }
        self.message.clear();
        let mut at = 0;
        for &d in lens {
            let (u, e) = (&update[at..at + d], &mut self.residual[at..at + d]);
            // p = u + e in place; ‖p‖₁ or ‖p‖₂² summed in f32 blocks, the blocks in f64.
            let rms = self.scale == SignScale::Rms;
            let mut norm = 0.0f64;
            for (eb, ub) in e.chunks_mut(4096).zip(u.chunks(4096)) {
                let mut block = 0.0f32;
                for (ei, &ui) in eb.iter_mut().zip(ub) {
                    *ei += ui;
                    block += if rms { *ei * *ei } else { ei.abs() };
                }
                norm += f64::from(block);
            }
            let scale = match (d, rms) {
                (0, _) => 0.0,
                (_, false) => (norm / d as f64) as f32,
                (_, true) => (norm / d as f64).sqrt() as f32,
            };
            self.message.extend_from_slice(&scale.to_le_bytes());
            for chunk in e.chunks_mut(8) {
                let mut byte = 0u8;
                for (b, p) in chunk.iter_mut().enumerate() {
                    let positive = *p >= 0.0;
                    byte |= u8::from(positive) << b;
                    // e ← p − Δ, Δ = ±scale
                    *p -= if positive { scale } else { -scale };
                }
                self.message.push(byte);
            }
            at += d;
        }
    }

    /// The mean of `k` ranks' messages in `gathered`, decoded into `decoded`.
    fn decode(&mut self, lens: &[usize], k: usize) {
        let total: usize = lens.iter().sum();
        self.decoded.clear();
        self.decoded.resize(total, 0.0);
        let len = self.message.len();
        for msg in self.gathered.chunks(len).take(k) {
            let (mut at, mut pos) = (0, 0);
            for &d in lens {
                let scale =
                    f32::from_le_bytes([msg[pos], msg[pos + 1], msg[pos + 2], msg[pos + 3]])
                        / k as f32;
                pos += 4;
                let bytes = &msg[pos..pos + d.div_ceil(8)];
                for (chunk, &byte) in self.decoded[at..at + d].chunks_mut(8).zip(bytes) {
                    for (b, out) in chunk.iter_mut().enumerate() {
                        // bit 1: +scale, bit 0: −scale
                        *out += scale * (f32::from((byte >> b) & 1) * 2.0 - 1.0);
                    }
                }
                pos += d.div_ceil(8);
                at += d;
            }
        }
    }
}

/// [`all_reduce_grads`] through a [`SignCompressor`]: each rank sends its weighted
/// update scaled by the number of ranks (its share's mean, for equal shares) with error
/// feedback, and every rank receives the mean of the decoded messages.
pub fn sign_compressed_grads(
    comm: &dyn Communicator,
    grads: &mut Grads,
    weight: f64,
    compressor: &mut SignCompressor,
    buffers: &mut (Vec<f32>, Vec<f32>),
) -> Result<()> {
    let mut parts: Vec<&mut Tensor> = grads.iter_mut().map(|(_, t)| t).collect();
    sign_average(comm, &mut parts, weight, compressor, buffers)
}

/// Σᵣ `weight`ᵣ·partᵣ over the ranks, each rank's part sent as error-feedback signs.
pub(super) fn sign_average(
    comm: &dyn Communicator,
    parts: &mut [&mut Tensor],
    weight: f64,
    compressor: &mut SignCompressor,
    buffers: &mut (Vec<f32>, Vec<f32>),
) -> Result<()> {
    let k = comm.size();
    let lens: Vec<usize> = parts.iter().map(|t| t.len()).collect();
    {
        let view: Vec<&Tensor> = parts.iter().map(|t| &**t).collect();
        Tensor::pack_f32(&view, (weight * k as f64) as f32, &mut buffers.0)?;
    }
    compressor.encode(&buffers.0, &lens);
    compressor.gathered.resize(compressor.message.len() * k, 0);
    comm.all_gather_bytes(&compressor.message, &mut compressor.gathered);
    compressor.decode(&lens, k);
    Tensor::unpack_f32(&compressor.decoded, parts)
}

//! The communicator: how the processes of one run share their work. One process has
//! [`Single`], which does nothing; `mpirun -np K futureprop ...` built with the `mpi`
//! feature has MPI's world communicator (Open MPI through rsmpi). The trainer asks it to
//! split batches and to sum updates; rules and optimizers never talk to it.
//!
//! Data-parallel SGD (e.g. Goyal et al. 2017): rank r of K takes rows
//! [r·B/K, (r+1)·B/K) of every global minibatch of B rows, and the ranks' mean gradients,
//! each weighted by its share of the rows, are summed by one all-reduce, so every rank
//! applies the full batch's mean gradient and the parameters stay identical.

use std::sync::OnceLock;

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::nn::Grads;
use crate::tensor::Tensor;

/// The processes of a run.
pub trait Communicator: Send + Sync {
    /// This process's rank, 0..size.
    fn rank(&self) -> usize;
    /// Number of processes.
    fn size(&self) -> usize;
    /// Element-wise sum over the ranks, in place; every rank receives it.
    fn all_reduce_sum(&self, buf: &mut [f64]);
    /// Element-wise f32 sum of every rank's `send` into `recv` (same length): what the
    /// updates travel in.
    fn all_reduce_sum_f32(&self, send: &[f32], recv: &mut [f32]);
    /// Every rank's `v`, in rank order.
    fn all_gather(&self, v: u64) -> Vec<u64>;
    /// Every rank's `send` (all of one length), in rank order, into `recv` (size × as
    /// long).
    fn all_gather_bytes(&self, send: &[u8], recv: &mut [u8]);
    /// Sends `buf` to rank `to` (blocking until it can be reused).
    fn send_f32(&self, to: usize, buf: &[f32]);
    /// Receives into `buf` what rank `from` sends (of `buf`'s length).
    fn recv_f32(&self, from: usize, buf: &mut [f32]);
    /// Rank `root`'s `buf`, into every rank's `buf`.
    fn broadcast_f32(&self, root: usize, buf: &mut [f32]);
    /// Bytes this process has sent so far (the all-reduce's payload, counted as a ring
    /// all-reduce sends it: 2(K−1)/K of the buffer).
    fn bytes_sent(&self) -> u64;
}

/// One process: nothing to share.
pub struct Single;

impl Communicator for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _buf: &mut [f64]) {}
    fn all_reduce_sum_f32(&self, send: &[f32], recv: &mut [f32]) {
        recv.copy_from_slice(send);
    }
    fn all_gather(&self, v: u64) -> Vec<u64> {
        vec![v]
    }
    fn all_gather_bytes(&self, send: &[u8], recv: &mut [u8]) {
        recv.copy_from_slice(send);
    }
    // One process has no peer to send to or hear from.
    fn send_f32(&self, _to: usize, _buf: &[f32]) {}
    fn recv_f32(&self, _from: usize, _buf: &mut [f32]) {}
    fn broadcast_f32(&self, _root: usize, _buf: &mut [f32]) {}
    fn bytes_sent(&self) -> u64 {
        0
    }
}

/// Seconds a call into the communicator may wait for the other ranks before this
/// process stops with an error (`comm_timeout`; 0: wait for ever). Set by the trainer.
static TIMEOUT_S: AtomicU64 = AtomicU64::new(0);
/// When the call under way began (milliseconds since [`EPOCH`], 0: no call) and which.
static CALL_SINCE_MS: AtomicU64 = AtomicU64::new(0);
static CALL_OP: AtomicUsize = AtomicUsize::new(0);
static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
const OPS: [&str; 7] = [
    "an all-reduce",
    "an all-reduce",
    "an all-gather",
    "an all-gather",
    "a send",
    "a receive",
    "a broadcast",
];

/// Bounds every later wait on the other ranks to `seconds` (0: unbounded).
pub fn set_timeout(seconds: u64) {
    TIMEOUT_S.store(seconds, Ordering::Relaxed);
}

/// Runs communicator call `op` (an index into [`OPS`]) under the watchdog's eye.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
fn watched<T>(op: usize, f: impl FnOnce() -> T) -> T {
    let epoch = EPOCH.get_or_init(std::time::Instant::now);
    CALL_OP.store(op, Ordering::Relaxed);
    CALL_SINCE_MS.store(epoch.elapsed().as_millis() as u64 + 1, Ordering::Release);
    let out = f();
    CALL_SINCE_MS.store(0, Ordering::Release);
    out
}

/// A thread that stops this process when a call into the communicator has waited
/// longer than the timeout: a rank that died or hangs then ends the job with an error
/// (the launcher takes the other ranks down) instead of leaving it waiting for ever.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
fn start_watchdog(rank: usize) {
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(std::time::Duration::from_millis(250));
            let (limit, since) = (
                TIMEOUT_S.load(Ordering::Relaxed),
                CALL_SINCE_MS.load(Ordering::Acquire),
            );
            if limit == 0 || since == 0 {
                continue;
            }
            let waited = epoch.elapsed().as_millis() as u64 + 1 - since;
            if waited > limit * 1000 {
                eprintln!(
                    "error: rank {rank}: no answer from the other ranks for {limit} s in {} (comm_timeout, --comm-timeout); a rank has died or hangs, so this one stops",
                    OPS[CALL_OP.load(Ordering::Relaxed)]
                );
                std::process::exit(1);
            }
        }
    });
}

static WORLD: OnceLock<Box<dyn Communicator>> = OnceLock::new();

/// The run's communicator: MPI's world once [`init`] has found `mpirun`, else [`Single`].
pub fn world() -> &'static dyn Communicator {
    WORLD.get_or_init(|| Box::new(Single)).as_ref()
}

/// The environment variables a launcher sets for each process it starts.
const LAUNCHER_VARS: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"];

/// Starts MPI when this process was launched by `mpirun` (the CLI calls it first thing);
/// the returned guard finalises MPI when dropped at the end of `main`. Without a
/// launcher it does nothing. Launched by `mpirun` but built without the `mpi` feature,
/// it refuses: K unconnected copies of one run would overwrite each other's files.
pub fn init() -> Result<Option<Guard>> {
    let launched = LAUNCHER_VARS
        .iter()
        .find_map(|v| std::env::var(v).ok().map(|val| format!("{v}={val}")));
    let Some(launcher) = launched else {
        return Ok(None);
    };
    mpi_world::start(&launcher)
}

/// Keeps MPI initialised; dropping it finalises MPI.
pub struct Guard {
    #[cfg(feature = "mpi")]
    universe: mpi::environment::Universe,
}

impl Guard {
    /// Ends every rank of the run with `code` (after an error on this one: the others
    /// would otherwise wait for it in their next all-reduce).
    pub fn abort(self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        {
            use mpi::traits::Communicator as _;
            self.universe.world().abort(code)
        }
        #[cfg(not(feature = "mpi"))]
        std::process::exit(code)
    }
}

/// Refuses what data-parallel training does not cover yet, and ranks that disagree.
pub(super) fn check_coverage(
    cfg: &super::TrainConfig,
    rule: &dyn crate::rule::Rule,
    optimizer: &dyn crate::optim::Optimizer,
    comm: &dyn Communicator,
) -> Result<()> {
    let k = comm.size();
    if !cfg.batch_size.is_multiple_of(k) {
        return Err(Error::config(
            "batch_size (--batch-size)",
            format!(
                "{} rows do not split over {k} ranks; use a multiple of {k}",
                cfg.batch_size
            ),
        ));
    }
    if !rule.splits_over_batch() {
        let covered: Vec<&str> = crate::rule::names()
            .into_iter()
            .filter(|n| {
                crate::rule::build_rule_with(n, &serde_json::json!({}))
                    .is_ok_and(|r| r.splits_over_batch())
            })
            .collect();
        return Err(Error::config(
            "mpirun",
            format!(
                "rule {} is not data-parallel at these settings (its update couples the samples of a batch, or it decides on the batch as a whole); data-parallel training covers {} (at their defaults)",
                rule.name(),
                covered.join(", ")
            ),
        ));
    }
    if !optimizer.splits_over_batch() {
        let covered: Vec<&str> = crate::optim::names()
            .into_iter()
            .filter(|n| {
                let cfg = crate::optim::OptimizerConfig {
                    optimizer: crate::settings::Choice::named(n),
                    ..Default::default()
                };
                crate::optim::build_optimizer(&cfg, 1).is_ok_and(|o| o.splits_over_batch())
            })
            .collect();
        return Err(Error::config(
            "mpirun",
            format!(
                "optimizer {} is not data-parallel at these settings (it re-evaluates the objective on the batch or builds batch-sized matrices); data-parallel training covers {} (kfac without adaptive damping, natgrad with diagonal blocks)",
                optimizer.name(),
                covered.join(", ")
            ),
        ));
    }
    check_agreement(comm, "configuration", config_fingerprint(cfg)?)
}

/// A fingerprint of the run's configuration as every rank must share it.
pub(super) fn config_fingerprint(cfg: &super::TrainConfig) -> Result<u64> {
    // `quiet` is per process (ranks other than 0 are quiet).
    let shared = super::TrainConfig {
        quiet: true,
        ..cfg.clone()
    };
    let text =
        serde_json::to_string(&shared).map_err(|e| Error::config("config", e.to_string()))?;
    Ok(fingerprint(text.as_bytes()))
}

/// Checks that every rank runs the same configuration (`fingerprint`: a hash of it).
pub fn check_agreement(comm: &dyn Communicator, what: &str, fingerprint: u64) -> Result<()> {
    let all = comm.all_gather(fingerprint);
    if let Some(r) = all.iter().position(|&f| f != all[0]) {
        return Err(Error::config(
            "mpirun",
            format!(
                "ranks disagree on the {what}: rank {r}'s differs from rank 0's; start every rank with the same command and files"
            ),
        ));
    }
    Ok(())
}

/// FNV-1a over `bytes`: a fingerprint that is the same on every machine.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The rows of a global batch of `n` that rank `rank` of `size` takes.
pub fn share(n: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    (n * rank / size)..(n * (rank + 1) / size)
}

/// Sums `weight`·`grads` over the ranks in one fused all-reduce (the tensors in the
/// store's order, which every rank shares), replacing `grads` with the sum. `buffers`
/// (send and receive) are kept by the caller from step to step, so a step allocates
/// nothing for its messages.
pub fn all_reduce_grads(
    comm: &dyn Communicator,
    grads: &mut Grads,
    weight: f64,
    buffers: &mut (Vec<f32>, Vec<f32>),
) -> Result<()> {
    let mut parts: Vec<&mut Tensor> = grads.iter_mut().map(|(_, t)| t).collect();
    all_reduce_tensors(comm, &mut parts, weight, buffers)
}

/// Replaces each of `parts` by Σᵣ `weight`ᵣ·partᵣ over the ranks, in one message.
pub(super) fn all_reduce_tensors(
    comm: &dyn Communicator,
    parts: &mut [&mut Tensor],
    weight: f64,
    buffers: &mut (Vec<f32>, Vec<f32>),
) -> Result<()> {
    let (send, recv) = buffers;
    {
        let view: Vec<&Tensor> = parts.iter().map(|t| &**t).collect();
        Tensor::pack_f32(&view, weight as f32, send)?;
    }
    recv.resize(send.len(), 0.0);
    comm.all_reduce_sum_f32(send, recv);
    Tensor::unpack_f32(recv, parts)
}

/// The [`Reducer`](crate::optim::Reducer) a data-parallel step hands its optimizer:
/// statistics weighted by this rank's share of the batch (`weight`, set each step) and
/// summed over the ranks.
pub struct RankAverage {
    comm: &'static dyn Communicator,
    /// This rank's share of the current batch, n_r/n.
    pub weight: f64,
    buffers: (Vec<f32>, Vec<f32>),
    /// Error feedback of [`Reducer::average_signs`](crate::optim::Reducer::average_signs).
    signs: SignCompressor,
}

impl RankAverage {
    /// A reducer over `comm`.
    pub fn new(comm: &'static dyn Communicator) -> Self {
        RankAverage {
            comm,
            weight: 1.0 / comm.size() as f64,
            buffers: Default::default(),
            signs: SignCompressor::new(SignScale::Rms),
        }
    }
}

impl crate::optim::Reducer for RankAverage {
    fn average(&mut self, tensors: &mut [&mut Tensor]) -> Result<()> {
        all_reduce_tensors(self.comm, tensors, self.weight, &mut self.buffers)
    }

    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn average_signs(&mut self, tensors: &mut [&mut Tensor]) -> Result<()> {
        sign_average(
            self.comm,
            tensors,
            self.weight,
            &mut self.signs,
            &mut self.buffers,
        )
    }
}

/// BatchNorm's statistics summed over the ranks (`sync_batch_norm`).
pub struct RankBatchSync {
    comm: &'static dyn Communicator,
    /// This rank's share of the current batch (f64 bits), set each step.
    share: AtomicU64,
}

impl RankBatchSync {
    /// A sync over `comm`.
    pub fn new(comm: &'static dyn Communicator) -> Self {
        RankBatchSync {
            comm,
            share: AtomicU64::new((1.0 / comm.size() as f64).to_bits()),
        }
    }

    /// Sets this rank's share of the batch under way.
    pub fn set_share(&self, share: f64) {
        self.share.store(share.to_bits(), Ordering::Relaxed);
    }
}

impl crate::nn::BatchSync for RankBatchSync {
    fn sum(&self, v: &mut [f64]) {
        self.comm.all_reduce_sum(v);
    }
    fn share(&self) -> f64 {
        f64::from_bits(self.share.load(Ordering::Relaxed))
    }
}

/// Averages the running statistics of per-rank batch normalisation over the ranks, so
/// every rank evaluates (and rank 0 saves) the same model.
pub fn average_running_stats(
    comm: &dyn Communicator,
    params: &mut crate::nn::Params,
) -> Result<()> {
    let mut parts: Vec<&mut Tensor> = params
        .iter_mut()
        .filter(|(n, _)| n.ends_with(".running_mean") || n.ends_with(".running_var"))
        .map(|(_, t)| t)
        .collect();
    if parts.is_empty() {
        return Ok(());
    }
    let mut buffers = Default::default();
    all_reduce_tensors(comm, &mut parts, 1.0 / comm.size() as f64, &mut buffers)
}

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
fn sign_average(
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

/// Bytes a ring all-reduce of `bytes` sends from each of `size` ranks.
pub fn ring_bytes(bytes: usize, size: usize) -> u64 {
    (2 * (size.saturating_sub(1)) * bytes / size.max(1)) as u64
}

#[cfg(feature = "mpi")]
mod mpi_world {
    use super::{Communicator, Error, Guard, Result, WORLD, ring_bytes, watched};
    use mpi::collective::SystemOperation;
    use mpi::environment::Threading;
    use mpi::point_to_point::{Destination, Source};
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::Root;
    use mpi::traits::{Communicator as MpiCommunicator, CommunicatorCollectives};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// MPI's world communicator. The trainer calls it from one thread at a time (MPI
    /// initialised at `Threading::Serialized`), never from the kernels' worker threads.
    struct Mpi {
        world: SimpleCommunicator,
        sent: AtomicU64,
    }

    // SAFETY: the handle is MPI_COMM_WORLD, valid from initialisation to finalisation on
    // any thread; MPI was initialised with MPI_THREAD_SERIALIZED and futureprop calls it
    // from the training thread only, one call at a time.
    unsafe impl Send for Mpi {}
    unsafe impl Sync for Mpi {}

    impl Communicator for Mpi {
        fn rank(&self) -> usize {
            MpiCommunicator::rank(&self.world) as usize
        }
        fn size(&self) -> usize {
            MpiCommunicator::size(&self.world) as usize
        }
        fn all_reduce_sum(&self, buf: &mut [f64]) {
            let send = buf.to_vec();
            watched(0, || {
                self.world
                    .all_reduce_into(&send[..], buf, SystemOperation::sum())
            });
            self.count(std::mem::size_of_val(buf));
        }
        fn all_reduce_sum_f32(&self, send: &[f32], recv: &mut [f32]) {
            watched(1, || {
                self.world
                    .all_reduce_into(send, recv, SystemOperation::sum())
            });
            self.count(std::mem::size_of_val(send));
        }
        fn all_gather(&self, v: u64) -> Vec<u64> {
            let mut all = vec![0u64; Communicator::size(self)];
            watched(2, || self.world.all_gather_into(&v, &mut all[..]));
            all
        }
        fn all_gather_bytes(&self, send: &[u8], recv: &mut [u8]) {
            watched(3, || self.world.all_gather_into(send, recv));
            // A ring all-gather passes each rank's message on K − 1 times.
            let k = Communicator::size(self);
            self.sent
                .fetch_add(((k - 1) * send.len()) as u64, Ordering::Relaxed);
        }
        fn send_f32(&self, to: usize, buf: &[f32]) {
            watched(4, || self.world.process_at_rank(to as i32).send(buf));
            self.sent
                .fetch_add(std::mem::size_of_val(buf) as u64, Ordering::Relaxed);
        }
        fn recv_f32(&self, from: usize, buf: &mut [f32]) {
            watched(5, || {
                self.world.process_at_rank(from as i32).receive_into(buf);
            });
        }
        fn broadcast_f32(&self, root: usize, buf: &mut [f32]) {
            watched(6, || {
                self.world.process_at_rank(root as i32).broadcast_into(buf)
            });
            if Communicator::rank(self) == root {
                // A tree broadcast: the root's message reaches K − 1 ranks.
                let k = Communicator::size(self) as u64;
                self.sent.fetch_add(
                    (k - 1) * std::mem::size_of_val(buf) as u64,
                    Ordering::Relaxed,
                );
            }
        }
        fn bytes_sent(&self) -> u64 {
            self.sent.load(Ordering::Relaxed)
        }
    }

    impl Mpi {
        fn count(&self, bytes: usize) {
            self.sent.fetch_add(
                ring_bytes(bytes, Communicator::size(self)),
                Ordering::Relaxed,
            );
        }
    }

    pub(super) fn start(launcher: &str) -> Result<Option<Guard>> {
        let (universe, got) =
            mpi::initialize_with_threading(Threading::Serialized).ok_or_else(|| {
                Error::config(
                    "mpirun",
                    format!("{launcher} is set but MPI was initialised already"),
                )
            })?;
        if !matches!(got, Threading::Serialized | Threading::Multiple) {
            return Err(Error::config(
                "mpirun",
                format!("this MPI library gives thread level {got:?}; futureprop needs Serialized"),
            ));
        }
        let world = universe.world();
        super::start_watchdog(MpiCommunicator::rank(&world) as usize);
        if WORLD
            .set(Box::new(Mpi {
                world,
                sent: AtomicU64::new(0),
            }))
            .is_err()
        {
            return Err(Error::config(
                "mpirun",
                "the communicator was in use before MPI started",
            ));
        }
        Ok(Some(Guard { universe }))
    }
}

#[cfg(not(feature = "mpi"))]
mod mpi_world {
    use super::*;

    pub(super) fn start(launcher: &str) -> Result<Option<Guard>> {
        Err(Error::config(
            "mpirun",
            format!(
                "this process was started by an MPI launcher ({launcher}), but futureprop was built without the `mpi` feature, so every process would run the whole job alone; build it with `cargo build --release --features mpi` (needs libopenmpi-dev and libclang)"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_batch_once_in_order() {
        for (n, k) in [(128, 2), (127, 2), (10, 3), (3, 4)] {
            let rows: Vec<usize> = (0..k).flat_map(|r| share(n, r, k)).collect();
            assert_eq!(rows, (0..n).collect::<Vec<_>>(), "n {n} k {k}");
        }
    }

    #[test]
    fn a_ring_all_reduce_sends_twice_the_buffer_less_one_share() {
        assert_eq!(ring_bytes(1000, 1), 0);
        assert_eq!(ring_bytes(1000, 2), 1000);
        assert_eq!(ring_bytes(1000, 4), 1500);
    }

    /// EF-SignSGD's invariant: what was sent plus what is still owed is what was given,
    /// Σₜ Δₜ + e_T = Σₜ uₜ, and each Δ is ±‖p‖₁/d element-wise.
    #[test]
    fn error_feedback_carries_the_residual_exactly() {
        for scale in [SignScale::MeanAbs, SignScale::Rms] {
            feedback_carries_the_residual(scale);
        }
        assert!(Compression::parse("top-k").is_err());
    }

    /// Over 20 steps, what was sent plus the residual still owed is what was given, and
    /// each message is the sign of p = u + e times the tensor's scale.
    fn feedback_carries_the_residual(kind: SignScale) {
        let comm = Single;
        let mut c = SignCompressor::new(kind);
        let (mut sent, mut given) = (vec![0.0f64; 7], vec![0.0f64; 7]);
        let mut buffers = Default::default();
        for step in 0..20u32 {
            let u: Vec<f32> = (0..7)
                .map(|i| ((i * 7 + step as usize * 3) % 11) as f32 / 5.0 - 1.0)
                .collect();
            let mut g = Grads::new();
            g.insert(
                "a".to_string(),
                Tensor::from_vec(&[3], u[..3].to_vec()).unwrap(),
            );
            g.insert(
                "b".to_string(),
                Tensor::from_vec(&[2, 2], u[3..].to_vec()).unwrap(),
            );
            let before: Vec<f32> = c.residual().to_vec();
            sign_compressed_grads(&comm, &mut g, 1.0, &mut c, &mut buffers).unwrap();
            let delta: Vec<f64> = ["a", "b"]
                .iter()
                .flat_map(|n| g.get(n).unwrap().to_vec_f64())
                .collect();
            // One magnitude per tensor: the mean |p| (or the RMS of p) of that tensor.
            for (range, tensor) in [(0..3, "a"), (3..7, "b")] {
                let p: Vec<f64> = range
                    .clone()
                    .map(|i| f64::from(u[i]) + before.get(i).map_or(0.0, |&e| f64::from(e)))
                    .collect();
                let scale = match kind {
                    SignScale::MeanAbs => p.iter().map(|v| v.abs()).sum::<f64>() / p.len() as f64,
                    SignScale::Rms => {
                        (p.iter().map(|v| v * v).sum::<f64>() / p.len() as f64).sqrt()
                    }
                };
                for (j, i) in range.enumerate() {
                    assert!((delta[i].abs() - scale).abs() < 1e-6, "{tensor}");
                    assert_eq!(delta[i] >= 0.0, p[j] >= 0.0, "{tensor}: the sign of p");
                }
            }
            for i in 0..7 {
                sent[i] += delta[i];
                given[i] += f64::from(u[i]);
            }
        }
        for i in 0..7 {
            let owed = f64::from(c.residual()[i]);
            assert!(
                (sent[i] + owed - given[i]).abs() < 1e-5,
                "{kind:?}: element {i}"
            );
        }
    }

    #[test]
    fn one_process_changes_nothing() {
        let comm = Single;
        let mut g = Grads::new();
        g.insert(
            "w".to_string(),
            Tensor::from_vec(&[2], vec![1.0, -2.0]).unwrap(),
        );
        all_reduce_grads(&comm, &mut g, 0.5, &mut Default::default()).unwrap();
        assert_eq!(g.get("w").unwrap().to_vec_f64(), vec![0.5, -1.0]);
        assert!(check_agreement(&comm, "config", 7).is_ok());
        assert_ne!(fingerprint(b"a"), fingerprint(b"b"));
    }
}

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

mod compress;
use compress::sign_average;
pub use compress::{Compression, SignCompressor, SignScale, sign_compressed_grads};

/// Bytes a ring all-reduce of `bytes` sends from each of `size` ranks.
pub fn ring_bytes(bytes: usize, size: usize) -> u64 {
    (2 * (size.saturating_sub(1)) * bytes / size.max(1)) as u64
}

#[cfg(feature = "mpi")]
mod mpi_world;

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

//! The communicator on MPI's world (Open MPI through rsmpi), with the watchdog's
//! bounded waits.

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

//! Seeded minibatch iteration.

use rand::SeedableRng;
use rand::seq::SliceRandom;

use super::Dataset;
use super::{Batch, Target};
use crate::error::Result;

/// A permutation of `0..n` determined by `(seed, epoch)` alone.
pub fn shuffled_indices(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    // Distinct stream per epoch: the ChaCha stream id carries the epoch.
    let mut rng = crate::Rng::seed_from_u64(seed);
    rng.set_stream(epoch + 1);
    idx.shuffle(&mut rng);
    idx
}

/// Minibatches of one epoch, in a seeded order. The last batch may be smaller.
#[derive(Debug)]
pub struct Batches<'a> {
    data: &'a Dataset,
    order: Vec<usize>,
    batch_size: usize,
    pos: usize,
}

impl<'a> Batches<'a> {
    /// Batches of `data` for `epoch`, shuffled by `seed` when `shuffle`.
    pub fn new(data: &'a Dataset, batch_size: usize, shuffle: bool, seed: u64, epoch: u64) -> Self {
        let order = if shuffle {
            shuffled_indices(data.len(), seed, epoch)
        } else {
            (0..data.len()).collect()
        };
        Batches {
            data,
            order,
            batch_size: batch_size.max(1),
            pos: 0,
        }
    }

    /// Number of batches in the epoch.
    pub fn num_batches(&self) -> usize {
        self.order.len().div_ceil(self.batch_size)
    }

    /// Skips the first `n` batches (resuming mid-epoch).
    pub fn skip_batches(&mut self, n: usize) {
        self.pos = (n * self.batch_size).min(self.order.len());
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.order.len() {
            return None;
        }
        let end = (self.pos + self.batch_size).min(self.order.len());
        let idx = &self.order[self.pos..end];
        self.pos = end;
        Some(self.data.x.gather_rows(idx).and_then(|x| {
            Ok(Batch {
                target: if self.data.reconstruct {
                    Target::Values(x.clone())
                } else {
                    self.data.targets(idx)?
                },
                x,
            })
        }))
    }
}

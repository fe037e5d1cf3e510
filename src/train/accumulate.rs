//! Gradient accumulation: the optimizer steps once per `every` minibatches (and at the
//! end of an epoch) with the mean of their updates, an effective batch of
//! `every × batch_size`.

use std::borrow::Cow;

use crate::error::Result;
use crate::nn::Grads;

/// The updates of the minibatches since the last optimizer step.
pub(super) struct Accumulation {
    every: usize,
    sum: Option<Grads>,
    n: usize,
}

impl Accumulation {
    /// One optimizer step per `every` minibatches (1: every minibatch).
    pub fn new(every: usize) -> Accumulation {
        Accumulation {
            every,
            sum: None,
            n: 0,
        }
    }

    /// Whether minibatch `index` of an epoch of `count` ends an optimizer step.
    pub fn ends_step(&self, index: usize, count: usize) -> bool {
        self.every <= 1 || self.n + 1 == self.every || index + 1 == count
    }

    /// Adds a minibatch's update (kept only when accumulating).
    pub fn add(&mut self, g: &Grads) -> Result<()> {
        if self.every > 1 {
            match self.sum.as_mut() {
                Some(s) => s.axpy(1.0, g)?,
                None => self.sum = Some(g.clone()),
            }
            self.n += 1;
        }
        Ok(())
    }

    /// The update to step with: the mean of those added, or `last` when not
    /// accumulating; starts the next step's sum.
    pub fn take<'a>(&mut self, last: &'a Grads) -> Cow<'a, Grads> {
        match self.sum.take() {
            Some(mut s) => {
                s.scale_in_place(1.0 / self.n as f64);
                self.n = 0;
                Cow::Owned(s)
            }
            None => Cow::Borrowed(last),
        }
    }
}

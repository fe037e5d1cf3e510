//! futureprop: train neural networks with any credit-assignment rule.
pub mod data;
pub mod error;
pub mod nn;
pub mod optim;
pub mod rule;
pub mod tensor;
pub mod train;
pub use error::{Error, Result};

/// The crate's seeded random generator (ChaCha8: portable and reproducible).
pub type Rng = rand_chacha::ChaCha8Rng;

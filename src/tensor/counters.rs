//! Work counters kept by the kernels: floating-point operations and bytes moved.
//!
//! GEMM counts 2·m·n·k FLOPs and 4-or-8 bytes per element of its three operands;
//! element-wise kernels count one FLOP per element and the bytes of their operands.
//! The counters are global and relaxed-atomic (a few adds per kernel call); read them
//! as differences around the work of interest, on one run at a time.

use std::sync::atomic::{AtomicU64, Ordering};

static FLOPS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

/// A reading of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Work {
    /// Floating-point operations.
    pub flops: u64,
    /// Bytes read and written by the kernels.
    pub bytes: u64,
}

impl std::ops::Add for Work {
    type Output = Work;
    fn add(self, o: Work) -> Work {
        Work {
            flops: self.flops + o.flops,
            bytes: self.bytes + o.bytes,
        }
    }
}

impl std::ops::Sub for Work {
    type Output = Work;
    fn sub(self, o: Work) -> Work {
        Work {
            flops: self.flops.saturating_sub(o.flops),
            bytes: self.bytes.saturating_sub(o.bytes),
        }
    }
}

/// The counters now.
pub fn read() -> Work {
    Work {
        flops: FLOPS.load(Ordering::Relaxed),
        bytes: BYTES.load(Ordering::Relaxed),
    }
}

#[inline]
pub(crate) fn add(flops: u64, bytes: u64) {
    FLOPS.fetch_add(flops, Ordering::Relaxed);
    BYTES.fetch_add(bytes, Ordering::Relaxed);
}

//! Energy: a real meter when the machine has one, otherwise a labelled estimate.
//!
//! Measured: Linux RAPL through powercap (`/sys/class/powercap/intel-rapl:N/energy_uj`,
//! package domains; AMD processors expose the same interface), read before and after,
//! with counter wrap-around handled through `max_energy_range_uj`.
//!
//! Estimated (when no meter is readable): E = FLOPs · 4.6 pJ + bytes · 160 pJ, from the
//! kernels' work counters. Constants from Horowitz, "Computing's energy problem (and
//! what we can do about it)", ISSCC 2014, 45 nm: FP32 multiply 3.7 pJ + add 0.9 pJ;
//! DRAM 640 pJ per 32-bit access (160 pJ/byte). It counts arithmetic and DRAM traffic
//! only (no static power, caches treated as DRAM), so it ranks methods by work rather
//! than predicting a wall-plug reading. Outputs label it `estimated`.

use std::path::{Path, PathBuf};

use crate::tensor::counters::Work;

/// Picojoules per floating-point operation (estimate).
pub const PJ_PER_FLOP: f64 = 4.6;
/// Picojoules per byte moved (estimate).
pub const PJ_PER_BYTE: f64 = 160.0;

/// How an energy figure was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Read from RAPL.
    Rapl,
    /// Estimated from counted work.
    #[default]
    Estimated,
}

/// A RAPL reading: microjoules per package domain.
#[derive(Debug, Clone)]
pub struct Meter {
    domains: Vec<(PathBuf, u64, u64)>,
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

impl Meter {
    /// Reads every readable RAPL package domain; `None` when there is none.
    pub fn start() -> Option<Meter> {
        let mut domains = Vec::new();
        for i in 0..16 {
            let dir = PathBuf::from(format!("/sys/class/powercap/intel-rapl:{i}"));
            let (Some(e), Some(max)) = (
                read_u64(&dir.join("energy_uj")),
                read_u64(&dir.join("max_energy_range_uj")),
            ) else {
                continue;
            };
            domains.push((dir, e, max));
        }
        (!domains.is_empty()).then_some(Meter { domains })
    }

    /// Joules since [`Meter::start`].
    pub fn joules(&self) -> Option<f64> {
        let mut uj = 0u64;
        for (dir, e0, max) in &self.domains {
            let e1 = read_u64(&dir.join("energy_uj"))?;
            uj += if e1 >= *e0 { e1 - e0 } else { max - e0 + e1 };
        }
        Some(uj as f64 * 1e-6)
    }
}

/// Estimated joules of `work`.
pub fn estimate(work: Work) -> f64 {
    (work.flops as f64 * PJ_PER_FLOP + work.bytes as f64 * PJ_PER_BYTE) * 1e-12
}

/// Joules of a phase: measured when `meter` is present, else estimated from `work`.
pub fn energy(meter: Option<&Meter>, work: Work) -> (f64, Source) {
    match meter.and_then(Meter::joules) {
        Some(j) => (j, Source::Rapl),
        None => (estimate(work), Source::Estimated),
    }
}

//! CIFAR-10 in its binary distribution (Krizhevsky 2009, `cifar-10-binary.tar.gz`):
//! `data_batch_1.bin` … `data_batch_5.bin` (50 000 training images) and `test_batch.bin`
//! (10 000). Each record is one label byte (0–9) and 3072 pixel bytes: the red, green and
//! blue 32×32 planes, row-major — already the channel-major (NCHW) row layout the
//! convolution layers read. Looked for in `<data dir>/cifar-10/` or in the archive's own
//! folder `<data dir>/cifar-10/cifar-10-batches-bin/`.

use std::path::{Path, PathBuf};

use super::{Normalize, Splits};
use crate::error::{Error, Result};

/// Pixels per image (3 × 32 × 32).
pub const FEATURES: usize = 3072;
/// Bytes per record: the label and the pixels.
pub const RECORD: usize = 1 + FEATURES;
/// The training files, in order.
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test file.
pub const TEST_FILE: &str = "test_batch.bin";

/// The folder under `root` that holds every CIFAR-10 file, if any does.
pub fn locate(root: &Path) -> Option<PathBuf> {
    let base = root.join("cifar-10");
    [base.join("cifar-10-batches-bin"), base]
        .into_iter()
        .find(|d| {
            TRAIN_FILES
                .iter()
                .chain(std::iter::once(&TEST_FILE))
                .all(|f| d.join(f).is_file())
        })
}

/// Reads one batch file: pixel bytes (record after record) and labels.
pub fn read_batch(path: &Path) -> Result<(Vec<u8>, Vec<usize>)> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_batch(&raw, path)
}

/// Parses the bytes of one batch file; `path` only names the source in errors.
pub fn parse_batch(raw: &[u8], path: &Path) -> Result<(Vec<u8>, Vec<usize>)> {
    if raw.is_empty() || !raw.len().is_multiple_of(RECORD) {
        return Err(Error::format(
            path,
            format!(
                "{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records",
                raw.len()
            ),
        ));
    }
    let n = raw.len() / RECORD;
    let (mut pixels, mut labels) = (Vec::with_capacity(n * FEATURES), Vec::with_capacity(n));
    for (i, rec) in raw.chunks_exact(RECORD).enumerate() {
        if rec[0] >= 10 {
            return Err(Error::format(
                path,
                format!("record {i} has label {} outside 0..10", rec[0]),
            ));
        }
        labels.push(rec[0] as usize);
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok((pixels, labels))
}

/// Loads CIFAR-10 from `root/cifar-10/`, scales it and holds out the last `validation`
/// training images. `standard` normalisation is per colour channel (μ, σ of the
/// training pixels of that channel).
pub fn load(root: &Path, normalize: Normalize, validation: usize) -> Result<Splits> {
    let dir = locate(root).ok_or_else(|| Error::MissingData {
        msg: format!(
            "cifar-10: {} lacks data_batch_1..5.bin and test_batch.bin; download the binary version (https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz) and extract it there",
            root.join("cifar-10").display()
        ),
    })?;
    let (mut tr_x, mut tr_y) = (Vec::new(), Vec::new());
    for f in TRAIN_FILES {
        let (x, y) = read_batch(&dir.join(f))?;
        tr_x.extend(x);
        tr_y.extend(y);
    }
    let (te_x, te_y) = read_batch(&dir.join(TEST_FILE))?;
    let plane = FEATURES / 3;
    let stats: Vec<(f64, f64)> = (0..3)
        .map(|c| {
            if normalize != Normalize::Standard {
                return (0.0, 1.0);
            }
            let vals = tr_x
                .chunks_exact(FEATURES)
                .flat_map(|img| img[c * plane..(c + 1) * plane].iter())
                .map(|&v| v as f64 / 255.0);
            let (mut s, mut s2, mut k) = (0.0, 0.0, 0.0);
            for v in vals {
                s += v;
                s2 += v * v;
                k += 1.0;
            }
            let m = s / k;
            (m, (s2 / k - m * m).max(0.0).sqrt().max(1e-12))
        })
        .collect();
    let scale = |raw: &[u8]| -> Vec<f32> {
        raw.iter()
            .enumerate()
            .map(|(i, &v)| match normalize {
                Normalize::None => v as f32,
                _ => {
                    let (m, s) = stats[(i % FEATURES) / plane];
                    ((v as f64 / 255.0 - m) / s) as f32
                }
            })
            .collect()
    };
    super::splits(
        (scale(&tr_x), tr_y),
        (scale(&te_x), te_y),
        FEATURES,
        validation,
    )
}

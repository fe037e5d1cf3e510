//! Datasets, loaders and downloads.
//!
//! Where datasets are looked for, in order: an explicit directory (`--data-dir`), the
//! `FUTUREPROP_DATA` environment variable, then the per-user cache
//! (`$XDG_CACHE_HOME/futureprop` or `~/.cache/futureprop`). Each dataset is a folder of
//! that directory named like the dataset (`mnist/`, `fashion-mnist/`).

mod batch;
pub mod cifar;
pub mod download;
pub mod idx;
mod loader;
pub mod synthetic;

use std::path::{Path, PathBuf};

pub use loader::{Batches, shuffled_indices};

use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub use batch::{Batch, Target};

/// A labelled classification set: one row of features per sample.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Features, `[n, features]`, f32.
    pub x: Tensor,
    /// Class of each row.
    pub labels: Vec<usize>,
    /// Number of classes.
    pub classes: usize,
    /// The targets are the inputs themselves (autoencoders); labels are kept but unused.
    pub reconstruct: bool,
    /// Real-valued targets `[n, outputs]` (regression, e.g. the adding problem); labels
    /// are kept but unused.
    pub values: Option<Tensor>,
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Width of the model output this data asks for: features when reconstructing,
    /// else classes.
    pub fn outputs(&self) -> usize {
        if self.reconstruct {
            self.features()
        } else if let Some(v) = &self.values {
            v.shape().get(1).copied().unwrap_or(0)
        } else {
            self.classes
        }
    }

    /// Features per sample.
    pub fn features(&self) -> usize {
        self.x.shape().get(1).copied().unwrap_or(0)
    }

    /// The rows `idx`.
    pub fn subset(&self, idx: &[usize]) -> Result<Dataset> {
        Ok(Dataset {
            x: self.x.gather_rows(idx)?,
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            classes: self.classes,
            reconstruct: self.reconstruct,
            values: self
                .values
                .as_ref()
                .map(|v| v.gather_rows(idx))
                .transpose()?,
        })
    }

    /// Targets for the rows `idx`.
    pub fn targets(&self, idx: &[usize]) -> Result<Target> {
        match &self.values {
            Some(v) => Ok(Target::Values(v.gather_rows(idx)?)),
            None => Ok(Target::Classes(
                idx.iter().map(|&i| self.labels[i]).collect(),
            )),
        }
    }
}

/// Train, optional validation, and test sets.
#[derive(Debug, Clone)]
pub struct Splits {
    /// Training samples.
    pub train: Dataset,
    /// Held out from the training file, when asked for.
    pub validation: Option<Dataset>,
    /// The test set.
    pub test: Dataset,
}

/// How features are scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalize {
    /// Pixels to [0, 1], then (x − μ)/σ with μ, σ of the training pixels.
    Standard,
    /// Pixels to [0, 1].
    Unit,
    /// Raw 0–255 values.
    None,
}

impl Normalize {
    /// Parses `standard`, `unit` or `none`.
    pub fn parse(s: &str) -> Result<Normalize> {
        match s {
            "standard" => Ok(Normalize::Standard),
            "unit" => Ok(Normalize::Unit),
            "none" => Ok(Normalize::None),
            _ => Err(Error::unknown(
                "normalisation",
                s,
                &["standard", "unit", "none"],
            )),
        }
    }
}

/// Datasets loadable by name. MNIST and Fashion-MNIST are downloaded when missing;
/// CIFAR-10 is read from its extracted binary distribution (see [`cifar`]).
pub const DATASETS: &[&str] = &["mnist", "fashion-mnist", "cifar-10", "adding:STEPS"];

/// Checks that `name` is a dataset futureprop can load.
pub fn check_name(name: &str) -> Result<()> {
    if let Some(steps) = synthetic::adding_steps(name) {
        return steps.map(|_| ());
    }
    if DATASETS.contains(&name) {
        Ok(())
    } else {
        Err(Error::unknown("dataset", name, DATASETS))
    }
}

/// The per-user cache directory for datasets.
pub fn cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("futureprop");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(h) => PathBuf::from(h).join(".cache").join("futureprop"),
        None => PathBuf::from(".futureprop-cache"),
    }
}

/// Resolves the data directory: explicit, else `FUTUREPROP_DATA`, else the cache.
pub fn resolve_data_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("FUTUREPROP_DATA").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    cache_dir()
}

/// True when every file of dataset `name` is present under `root`.
pub fn is_present(root: &Path, name: &str) -> Result<bool> {
    if name == "cifar-10" {
        return Ok(cifar::locate(root).is_some());
    }
    let remote = download::remote(name)?;
    let dir = root.join(name);
    Ok(remote
        .files
        .iter()
        .all(|f| download::locate(&dir, f.name).is_some()))
}

fn load_pair(
    dir: &Path,
    images: &str,
    labels: &str,
    name: &str,
) -> Result<(Vec<u8>, usize, Vec<usize>)> {
    let find = |f: &str| {
        download::locate(dir, f).ok_or_else(|| Error::MissingData {
            msg: format!(
                "{name}: {} not found; run `futureprop data fetch {name}` (or pass --data-dir / set FUTUREPROP_DATA to a folder that has {name}/)",
                dir.join(f).display()
            ),
        })
    };
    let ip = find(images)?;
    let lp = find(labels)?;
    let img = idx::read_idx(&ip)?;
    let lab = idx::read_idx(&lp)?;
    if img.dims.len() < 2 {
        return Err(Error::format(
            &ip,
            format!("expected an image array, got dimensions {:?}", img.dims),
        ));
    }
    if lab.dims.len() != 1 {
        return Err(Error::format(
            &lp,
            format!("expected a 1-D label array, got dimensions {:?}", lab.dims),
        ));
    }
    if img.dims[0] != lab.dims[0] {
        return Err(Error::format(
            &lp,
            format!(
                "{} labels for {} images in {}",
                lab.dims[0],
                img.dims[0],
                ip.display()
            ),
        ));
    }
    if img.dims[0] == 0 {
        return Err(Error::format(&ip, "holds no samples (0 images)"));
    }
    let features = img.dims[1..].iter().product();
    let labels: Vec<usize> = lab.data.iter().map(|&l| l as usize).collect();
    if let Some(bad) = labels.iter().find(|&&l| l >= 10) {
        return Err(Error::format(&lp, format!("label {bad} outside 0..10")));
    }
    Ok((img.data, features, labels))
}

/// Loads MNIST or Fashion-MNIST from `root/<name>/`, scales the features, and holds out
/// the last `validation` training samples.
pub fn load(root: &Path, name: &str, normalize: Normalize, validation: usize) -> Result<Splits> {
    if let Some(steps) = synthetic::adding_steps(name) {
        // Generated, not read: 10 000 training and 1 000 test sequences from fixed seeds.
        let steps = steps?;
        return hold_out(
            synthetic::adding(10_000, steps, 1)?,
            synthetic::adding(1_000, steps, 2)?,
            validation,
        );
    }
    if name == "cifar-10" {
        return cifar::load(root, normalize, validation);
    }
    download::remote(name)?;
    let dir = root.join(name);
    let (tr_x, feat, tr_y) = load_pair(
        &dir,
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        name,
    )?;
    let (te_x, feat_t, te_y) = load_pair(
        &dir,
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        name,
    )?;
    if feat != feat_t {
        return Err(Error::format(
            &dir,
            format!("train images have {feat} pixels, test images {feat_t}"),
        ));
    }
    let (mean, std) = match normalize {
        Normalize::Standard => {
            let n = tr_x.len() as f64;
            let m = tr_x.iter().map(|&v| v as f64 / 255.0).sum::<f64>() / n;
            let var = tr_x
                .iter()
                .map(|&v| (v as f64 / 255.0 - m).powi(2))
                .sum::<f64>()
                / n;
            (m, var.sqrt().max(1e-12))
        }
        _ => (0.0, 1.0),
    };
    let scale = |raw: &[u8]| -> Vec<f32> {
        match normalize {
            Normalize::None => raw.iter().map(|&v| v as f32).collect(),
            _ => raw
                .iter()
                .map(|&v| ((v as f64 / 255.0 - mean) / std) as f32)
                .collect(),
        }
    };
    splits((scale(&tr_x), tr_y), (scale(&te_x), te_y), feat, validation)
}

/// Train and test sets of 10 classes from scaled features and labels, with the last
/// `validation` training samples held out.
pub(crate) fn splits(
    (tr_x, tr_y): (Vec<f32>, Vec<usize>),
    (te_x, te_y): (Vec<f32>, Vec<usize>),
    features: usize,
    validation: usize,
) -> Result<Splits> {
    let set = |x: Vec<f32>, labels: Vec<usize>| -> Result<Dataset> {
        Ok(Dataset {
            x: Tensor::from_vec(&[labels.len(), features], x)?,
            labels,
            classes: 10,
            reconstruct: false,
            values: None,
        })
    };
    hold_out(set(tr_x, tr_y)?, set(te_x, te_y)?, validation)
}

/// Train and test sets with the last `validation` training samples held out.
fn hold_out(train_all: Dataset, test: Dataset, validation: usize) -> Result<Splits> {
    let n_tr = train_all.len();
    if n_tr == 0 || test.is_empty() {
        let which = if n_tr == 0 { "training" } else { "test" };
        return Err(Error::MissingData {
            msg: format!("the {which} set has no samples"),
        });
    }
    if validation >= n_tr {
        return Err(Error::config(
            "validation",
            format!("{validation} samples requested but the training set has {n_tr}"),
        ));
    }
    let (train, validation) = if validation > 0 {
        let cut = n_tr - validation;
        (
            train_all.subset(&(0..cut).collect::<Vec<_>>())?,
            Some(train_all.subset(&(cut..n_tr).collect::<Vec<_>>())?),
        )
    } else {
        (train_all, None)
    };
    Ok(Splits {
        train,
        validation,
        test,
    })
}

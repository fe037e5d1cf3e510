//! Checkpoints in safetensors format, written atomically (temp file, fsync, rename).
//!
//! Tensors: `param/<name>` for every parameter (model and rule state) and
//! `optim/<key>` for optimizer state. Metadata (string → string): `format`, `config`
//! (the resolved run config as JSON), `epoch` (epochs completed), `step` (optimizer
//! steps), `history` (the per-epoch metric records so far, JSON), `sha256` (a digest of
//! all of it, verified on load: a corrupted file is refused, naming it).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::error::{Error, Result};
use crate::nn::Params;
use crate::optim::OptimizerState;
use crate::tensor::{HostStorage, Tensor};

/// Format 2 adds `sha256`: a digest of every tensor (name, dtype, shape, bytes) and of
/// the metadata, checked on load. Format 1 files (no digest) still load.
const FORMAT: &str = "futureprop-checkpoint-2";
const FORMAT_1: &str = "futureprop-checkpoint-1";

/// SHA-256 over the tensors in name order (name, dtype, shape, little-endian bytes) and
/// the metadata values that define the run (config, epoch, step, history).
fn digest<'a>(
    tensors: impl Iterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>,
    meta: &HashMap<String, String>,
) -> String {
    use sha2::{Digest, Sha256};
    let mut t: Vec<_> = tensors.collect();
    t.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Sha256::new();
    for (name, dtype, shape, data) in t {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(format!("{dtype:?}{shape:?}").as_bytes());
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
    }
    for k in ["config", "epoch", "step", "history"] {
        let v = meta.get(k).map_or("", String::as_str);
        h.update((v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    // Newer keys enter only when present, so older files keep their digest.
    if let Some(v) = meta.get("loss_scaler") {
        h.update((v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Everything a run needs to continue.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Parameters (model and rule).
    pub params: Params,
    /// Optimizer state.
    pub optimizer: OptimizerState,
    /// The run's resolved config as JSON.
    pub config: serde_json::Value,
    /// Epochs completed.
    pub epoch: usize,
    /// Per-epoch metric records so far.
    pub history: Vec<serde_json::Value>,
    /// The f16 loss scaler's state (runs in f16 only).
    pub loss_scaler: Option<super::LossScaler>,
}

fn bytes_of(t: &Tensor) -> (Dtype, Vec<u8>) {
    match t.to_host() {
        HostStorage::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        HostStorage::F64(v) => (Dtype::F64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        HostStorage::BF16(v) => (
            Dtype::BF16,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        HostStorage::F16(v) => (Dtype::F16, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
    }
}

/// Writes `ck` to `path` atomically: the file is either the old one or the new one.
pub fn save(path: &Path, ck: &Checkpoint) -> Result<()> {
    write_atomic(path, &to_bytes(ck, path)?)
}

/// The safetensors bytes of `ck`; `path` only names the destination in errors.
pub fn to_bytes(ck: &Checkpoint, path: &Path) -> Result<Vec<u8>> {
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (n, t) in ck.params.iter() {
        let (d, b) = bytes_of(t);
        owned.push((format!("param/{n}"), d, t.shape().to_vec(), b));
    }
    for (n, t) in ck.optimizer.tensors.iter() {
        let (d, b) = bytes_of(t);
        owned.push((format!("optim/{n}"), d, t.shape().to_vec(), b));
    }
    let views = owned
        .iter()
        .map(|(n, d, s, b)| {
            TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::format(path, format!("tensor {n}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("config".to_string(), ck.config.to_string());
    meta.insert("epoch".to_string(), ck.epoch.to_string());
    meta.insert("step".to_string(), ck.optimizer.step.to_string());
    meta.insert(
        "history".to_string(),
        serde_json::Value::Array(ck.history.clone()).to_string(),
    );
    if let Some(s) = &ck.loss_scaler {
        meta.insert("loss_scaler".to_string(), serde_json::json!(s).to_string());
    }
    let sum = digest(
        owned
            .iter()
            .map(|(n, d, sh, b)| (n.as_str(), *d, sh.as_slice(), b.as_slice())),
        &meta,
    );
    meta.insert("sha256".to_string(), sum);
    safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::format(path, format!("serialising checkpoint: {e}")))
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    remove_stale_temps(path);
    let tmp = dir.join(format!("{}{}", temp_prefix(path), std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// `.NAME.tmp-`: the temporary files of [`write_atomic`] for `path` start so, followed by
/// the writer's process id.
fn temp_prefix(path: &Path) -> String {
    format!(
        ".{}.tmp-",
        path.file_name().and_then(|s| s.to_str()).unwrap_or("file")
    )
}

/// Removes temporary files that a killed writer of `path` left behind: those of
/// processes no longer running (on Linux, no `/proc/PID`; elsewhere every one but this
/// process's). Best effort: failures are ignored.
pub fn remove_stale_temps(path: &Path) {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prefix = temp_prefix(path);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix.as_str())) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let alive = pid == std::process::id()
            || (cfg!(target_os = "linux") && Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A run directory's checkpoint file name.
pub const FILE: &str = "checkpoint.safetensors";

/// Reads a checkpoint written by [`save`]: the file, or a run directory's [`FILE`].
pub fn load(path: &Path) -> Result<Checkpoint> {
    let file;
    let path = if path.is_dir() {
        file = path.join(FILE);
        file.as_path()
    } else {
        path
    };
    remove_stale_temps(path);
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_bytes(&bytes, path)
}

/// Parses checkpoint bytes (see [`load`]); `path` only names the source in errors.
pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Checkpoint> {
    let bad = |msg: String| Error::format(path, msg);
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let (_, md) = SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("bad header: {e}")))?;
    let meta = md.metadata().clone().unwrap_or_default();
    let get = |k: &str| {
        meta.get(k).cloned().ok_or_else(|| {
            bad(format!(
                "metadata has no '{k}' (not a futureprop checkpoint?)"
            ))
        })
    };
    let format = get("format")?;
    if format != FORMAT && format != FORMAT_1 {
        return Err(bad(format!("unsupported checkpoint format '{format}'")));
    }
    if format == FORMAT {
        let expected = get("sha256")?;
        let tensors = st.tensors();
        let actual = digest(
            tensors
                .iter()
                .map(|(n, v)| (n.as_str(), v.dtype(), v.shape(), v.data())),
            &meta,
        );
        if actual != expected {
            return Err(Error::Checksum {
                path: path.to_path_buf(),
                expected,
                actual,
            });
        }
    }
    let config: serde_json::Value =
        serde_json::from_str(&get("config")?).map_err(|e| bad(format!("config: {e}")))?;
    let epoch: usize = get("epoch")?
        .parse()
        .map_err(|_| bad("epoch is not a number".into()))?;
    let step: u64 = get("step")?
        .parse()
        .map_err(|_| bad("step is not a number".into()))?;
    let history: Vec<serde_json::Value> = match meta.get("history") {
        Some(h) => serde_json::from_str(h).map_err(|e| bad(format!("history: {e}")))?,
        None => Vec::new(),
    };
    let loss_scaler = match meta.get("loss_scaler") {
        Some(s) => Some(serde_json::from_str(s).map_err(|e| bad(format!("loss_scaler: {e}")))?),
        None => None,
    };
    let mut names: Vec<(String, TensorView)> = st.tensors();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let mut params = Params::new();
    let mut opt = Params::new();
    // Parameters keep the order they were saved in (safetensors sorts keys; the store's
    // order only matters for display).
    for (n, v) in names {
        let t = tensor_of(&n, &v, path)?;
        if let Some(p) = n.strip_prefix("param/") {
            params.insert(p, t);
        } else if let Some(o) = n.strip_prefix("optim/") {
            opt.insert(o, t);
        }
    }
    Ok(Checkpoint {
        params,
        optimizer: OptimizerState { step, tensors: opt },
        config,
        epoch,
        history,
        loss_scaler,
    })
}

/// A stored f32 or f64 tensor.
fn tensor_of(n: &str, v: &TensorView, path: &Path) -> Result<Tensor> {
    let data = v.data();
    match v.dtype() {
        Dtype::F32 => Tensor::from_vec(
            v.shape(),
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::F64 => Tensor::from_vec_f64(
            v.shape(),
            data.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        ),
        d => Err(Error::format(
            path,
            format!("tensor {n} has unsupported dtype {d:?}"),
        )),
    }
}

/// Writes a model's parameters alone as a plain safetensors file, the layout PyTorch's
/// state dicts use: each tensor under its own name (`fc1.weight` `[out, in]`,
/// `fc1.bias`, `conv1.weight` `[out, in/groups, kh, kw]`, batch-norm `running_mean`
/// ...), f32, so `module.load_state_dict(safetensors.torch.load_file(path))` takes it
/// for a module whose layers carry the same names; the model spec rides in the metadata
/// (`futureprop_model`, `activation`, `bias`). Rule state (feedback matrices, ...) is
/// left out; `only` keeps the tensors it names (all when `None`).
pub fn export_model(
    path: &Path,
    spec: &crate::nn::ModelSpec,
    params: &Params,
    only: Option<&[String]>,
) -> Result<()> {
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = params
        .iter()
        .filter(|(n, _)| only.is_none_or(|o| o.iter().any(|k| k == n)))
        .map(|(n, t)| {
            let b: Vec<u8> = t
                .to_vec_f64()
                .into_iter()
                .flat_map(|x| (x as f32).to_le_bytes())
                .collect();
            (n.to_string(), t.shape().to_vec(), b)
        })
        .collect();
    let views = owned
        .iter()
        .map(|(n, s, b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::format(path, format!("tensor {n}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta = HashMap::new();
    meta.insert("futureprop_model".to_string(), spec.spec.clone());
    meta.insert("activation".to_string(), spec.activation.clone());
    meta.insert("bias".to_string(), spec.bias.to_string());
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::format(path, format!("serialising the model: {e}")))?;
    write_atomic(path, &bytes)
}

/// Reads a file written by [`export_model`] (or any safetensors file of f32/f64 tensors,
/// given the spec it fits): the spec from its metadata, when there, and the tensors.
pub fn import_model(path: &Path) -> Result<(Option<crate::nn::ModelSpec>, Params)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: String| Error::format(path, msg);
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let (_, md) =
        SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("bad header: {e}")))?;
    let meta = md.metadata().clone().unwrap_or_default();
    let spec = meta.get("futureprop_model").map(|s| crate::nn::ModelSpec {
        spec: s.clone(),
        activation: meta
            .get("activation")
            .cloned()
            .unwrap_or_else(|| "relu".into()),
        bias: meta.get("bias").is_none_or(|b| b != "false"),
    });
    let mut names: Vec<(String, TensorView)> = st.tensors();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let mut params = Params::new();
    for (n, v) in names {
        let t = tensor_of(&n, &v, path)?;
        params.insert(n, t);
    }
    Ok((spec, params))
}

//! `futureprop._futureprop`: the native half of the Python package. The Python half
//! (`py/futureprop/__init__.py`) checks arrays and keyword arguments and calls these;
//! settings cross as JSON in the same keys as a `futureprop train` config file, so every
//! rule's and optimizer's settings reach Python without code of their own.

use numpy::{
    PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArrayDyn,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use futureprop::data::{Dataset, Splits};
use futureprop::error::Error;
use futureprop::nn::{Model, ModelSpec};
use futureprop::tensor::Tensor;
use futureprop::train::{self, TrainConfig};

pyo3::create_exception!(
    _futureprop,
    FutureError,
    PyValueError,
    "A futureprop error: bad settings, shapes or data (the message names what is wrong)."
);

/// A Rust error as a Python exception with the same message.
fn py_err(e: Error) -> PyErr {
    match e {
        Error::Io { .. } => PyOSError::new_err(e.to_string()),
        Error::NonFinite { .. } => PyRuntimeError::new_err(e.to_string()),
        _ => FutureError::new_err(e.to_string()),
    }
}

/// Runs `f` with the GIL released on a worker of rayon's global pool (so the kernels'
/// parallel loops run as they do inside the trainer, not injected one by one from a
/// foreign thread); a panic becomes `RuntimeError`.
fn native<T: Send>(py: Python<'_>, what: &str, f: impl FnOnce() -> T + Send) -> PyResult<T> {
    py.detach(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rayon::scope(|_| f()))))
        .map_err(|_| {
            PyRuntimeError::new_err(format!(
                "futureprop panicked in {what} (a bug: please report it)"
            ))
        })
}

fn json_err(e: serde_json::Error) -> PyErr {
    PyValueError::new_err(format!("settings are not valid JSON: {e}"))
}

/// One row per technique: (name, summary, paper, settings JSON).
type Listing = Vec<(String, String, String, String)>;

fn listing(
    names: Vec<&'static str>,
    spec: impl Fn(
        &str,
    ) -> futureprop::error::Result<(
        &'static str,
        &'static str,
        &'static str,
        Vec<futureprop::settings::Field>,
    )>,
) -> PyResult<Listing> {
    names
        .into_iter()
        .map(|n| {
            let (name, summary, paper, fields) = spec(n).map_err(py_err)?;
            let fields: Vec<serde_json::Value> = fields.iter().map(field_json).collect();
            Ok((
                name.to_string(),
                summary.to_string(),
                paper.to_string(),
                serde_json::to_string(&fields).map_err(json_err)?,
            ))
        })
        .collect()
}

/// The rules as (name, summary, paper, settings JSON) tuples.
#[pyfunction]
fn rules() -> PyResult<Listing> {
    listing(futureprop::rule::names(), |n| {
        let s = futureprop::rule::spec(n)?;
        Ok((s.name, s.summary, s.paper, (s.settings)()))
    })
}

/// The optimizers as (name, summary, paper, settings JSON) tuples.
#[pyfunction]
fn optimizers() -> PyResult<Listing> {
    listing(futureprop::optim::names(), |n| {
        let s = futureprop::optim::spec(n)?;
        Ok((s.name, s.summary, s.paper, (s.settings)()))
    })
}

fn field_json(f: &futureprop::settings::Field) -> serde_json::Value {
    serde_json::json!({"key": f.key, "flat": f.legacy, "type": f.ty, "doc": f.doc, "default": f.default})
}

/// A labelled set from a contiguous float32 `[n, f]` array and int64 labels.
fn dataset(
    x: &PyReadonlyArray2<f32>,
    y: &PyReadonlyArray1<i64>,
    classes: usize,
) -> PyResult<Dataset> {
    Ok(Dataset {
        x: shared2(x)?,
        labels: labels(y)?,
        classes,
        reconstruct: false,
        values: None,
    })
}

/// Trains on arrays: `config` is a train config as JSON (its `out` folder receives
/// metrics.jsonl, the checkpoint and summary.json); returns the summary as JSON. The
/// GIL is released while training.
/// With `model`, training starts from its parameters and leaves the trained ones in it.
/// With `x_val`/`y_val`, every epoch is also evaluated on them (`validation_*`).
/// With `callback`, it is called with each epoch's record (a dict) as the epoch ends; a
/// return value of `False` stops the run at its next minibatch (that epoch is evaluated
/// and checkpointed), an exception stops it and is raised once it has stopped.
#[pyfunction]
#[pyo3(signature = (config, x=None, y=None, x_test=None, y_test=None, classes=0, model=None, x_val=None, y_val=None, callback=None))]
#[allow(clippy::too_many_arguments)]
fn train_arrays(
    py: Python<'_>,
    config: &str,
    x: Option<PyReadonlyArray2<f32>>,
    y: Option<PyReadonlyArray1<i64>>,
    x_test: Option<PyReadonlyArray2<f32>>,
    y_test: Option<PyReadonlyArray1<i64>>,
    classes: usize,
    model: Option<PyRefMut<'_, PyModel>>,
    x_val: Option<PyReadonlyArray2<f32>>,
    y_val: Option<PyReadonlyArray1<i64>>,
    callback: Option<Bound<'_, PyAny>>,
) -> PyResult<String> {
    let mut layer: serde_json::Value = serde_json::from_str(config).map_err(json_err)?;
    if let Some(m) = &model {
        layer["model"] = m.spec.spec.clone().into();
        layer["activation"] = m.spec.activation.clone().into();
        layer["bias"] = m.spec.bias.into();
    }
    let cfg = TrainConfig::fresh(&[layer]).map_err(py_err)?;
    let initial = model.as_ref().map(|m| {
        let own = train::model_param_names(&m.model, &m.params);
        let mut p = futureprop::nn::Params::new();
        for n in own {
            if let Ok(t) = m.params.get(&n) {
                p.insert(n, t.clone());
            }
        }
        p
    });
    // Arrays, or (without them) the config's named dataset, loaded by the run's thread.
    let given = match (&x, &y, &x_test, &y_test) {
        (Some(x), Some(y), Some(xt), Some(yt)) => {
            let validation = match (&x_val, &y_val) {
                (Some(xv), Some(yv)) => Some(dataset(xv, yv, classes)?),
                _ => None,
            };
            Some(Splits {
                train: dataset(x, y, classes)?,
                validation,
                test: dataset(xt, yt, classes)?,
            })
        }
        (None, None, None, None) => None,
        _ => {
            return Err(PyValueError::new_err(
                "give x, y, x_test and y_test together, or none of them (a named dataset)",
            ));
        }
    };
    let go = || {
        let loaded;
        let splits = match &given {
            Some(s) => s,
            None => {
                loaded = train::load_data(&cfg)?;
                &loaded
            }
        };
        match &initial {
            Some(p) => train::run_from(&cfg, splits, p),
            None => train::run(&cfg, splits, None),
        }
    };
    let pooled = || match cfg.threads {
        Some(t) => rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .map_err(|e| Error::config("threads", e.to_string()))
            .and_then(|pool| pool.install(go)),
        None => go(),
    };
    let mut epochs = callback.as_ref().map(|_| EpochFeed::new(&cfg.out_dir()));
    // Training runs on its own thread, the GIL released; this one wakes every 50 ms to
    // let Python look at its signals and to hand finished epochs to the callback. Ctrl-C
    // asks the run to stop: it ends the epoch, evaluates and checkpoints it, and
    // KeyboardInterrupt follows.
    train::clear_stop();
    let mut interrupted = None;
    let mut raised = None;
    let deliver = |epochs: &mut Option<EpochFeed>, raised: &mut Option<PyErr>| {
        if let (Some(feed), Some(cb)) = (epochs.as_mut(), &callback)
            && raised.is_none()
            && let Err(e) = feed.deliver(py, cb)
        {
            train::request_stop();
            *raised = Some(e);
        }
    };
    let ran = std::thread::scope(|s| {
        let h = s.spawn(pooled);
        while !h.is_finished() {
            py.detach(|| std::thread::sleep(std::time::Duration::from_millis(50)));
            if interrupted.is_none()
                && let Err(e) = py.check_signals()
            {
                train::request_stop();
                interrupted = Some(e);
            }
            deliver(&mut epochs, &mut raised);
        }
        h.join()
    });
    train::clear_stop();
    deliver(&mut epochs, &mut raised);
    let summary = ran
        .map_err(|_| {
            PyRuntimeError::new_err("futureprop panicked while training (a bug: please report it)")
        })?
        .map_err(py_err)?;
    if let Some(mut m) = model {
        // The trained parameters, from the run's last checkpoint.
        let out = summary["config"]["out"].as_str().unwrap_or_default();
        let ck = train::checkpoint::load(std::path::Path::new(out)).map_err(py_err)?;
        for n in train::model_param_names(&m.model, &m.params) {
            if let Ok(t) = ck.params.get(&n) {
                m.params.insert(n, t.clone());
            }
        }
    }
    if let Some(e) = interrupted.or(raised) {
        return Err(e);
    }
    serde_json::to_string(&summary).map_err(json_err)
}

/// The epoch records a run appends to its `metrics.jsonl`, read as they arrive.
struct EpochFeed {
    path: std::path::PathBuf,
    /// Bytes of whole lines already read.
    read: u64,
    /// The callback asked the run to stop: later epochs are not delivered.
    stopped: bool,
}

impl EpochFeed {
    /// Starts from an empty file: the run recreates `metrics.jsonl`, so an older run's
    /// records in the same folder must not be delivered before it does.
    fn new(dir: &std::path::Path) -> Self {
        let path = dir.join("metrics.jsonl");
        let _ = std::fs::remove_file(&path);
        EpochFeed {
            path,
            read: 0,
            stopped: false,
        }
    }

    /// Calls `cb` with each epoch record written since the last call.
    fn deliver(&mut self, py: Python<'_>, cb: &Bound<'_, PyAny>) -> PyResult<()> {
        use std::io::{Read, Seek};
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Ok(());
        };
        let mut text = String::new();
        if f.seek(std::io::SeekFrom::Start(self.read)).is_err()
            || f.read_to_string(&mut text).is_err()
        {
            return Ok(());
        }
        let whole = text.rfind('\n').map_or(0, |i| i + 1);
        self.read += whole as u64;
        let loads = py.import("json")?.getattr("loads")?;
        for line in text[..whole].lines() {
            if self.stopped || !line.contains("\"type\":\"epoch\"") {
                continue;
            }
            let rec = loads.call1((line,))?;
            if rec.get_item("type")?.extract::<String>()? != "epoch" {
                continue;
            }
            let answer = cb.call1((rec,))?;
            if answer.is_instance_of::<pyo3::types::PyBool>() && !answer.extract::<bool>()? {
                train::request_stop();
                self.stopped = true;
            }
        }
        Ok(())
    }
}

/// The model spec of a run's config.
fn spec_of(c: &serde_json::Value) -> ModelSpec {
    ModelSpec {
        spec: c["model"].as_str().unwrap_or_default().to_string(),
        activation: c["activation"].as_str().unwrap_or("relu").to_string(),
        bias: c["bias"].as_bool().unwrap_or(true),
    }
}

/// A named dataset (`mnist`, `fashion-mnist`, ...) as float32 features and int64 labels:
/// (x, y, x_test, y_test), scaled by `normalize`; read from `data_dir` (default:
/// FUTUREPROP_DATA, else the cache), downloaded and verified first when missing.
#[pyfunction]
#[pyo3(signature = (name, data_dir=None, normalize="standard"))]
#[allow(clippy::type_complexity)]
fn load_dataset<'py>(
    py: Python<'py>,
    name: &str,
    data_dir: Option<&str>,
    normalize: &str,
) -> PyResult<(
    Bound<'py, PyArray2<f32>>,
    Bound<'py, numpy::PyArray1<i64>>,
    Bound<'py, PyArray2<f32>>,
    Bound<'py, numpy::PyArray1<i64>>,
)> {
    let layer = serde_json::json!({"dataset": name, "data_dir": data_dir, "normalize": normalize});
    let cfg = TrainConfig::fresh(&[layer]).map_err(py_err)?;
    let splits = native(py, "load_dataset", || train::load_data(&cfg))?.map_err(py_err)?;
    let arrays = |d: &Dataset| -> PyResult<_> {
        let (n, f) = d.x.dims2().map_err(py_err)?;
        let x: Vec<f32> = d.x.to_vec_f64().into_iter().map(|v| v as f32).collect();
        let y: Vec<i64> = d.labels.iter().map(|&l| l as i64).collect();
        Ok((
            numpy::PyArray1::from_vec(py, x).reshape([n, f])?,
            numpy::PyArray1::from_vec(py, y),
        ))
    };
    let (x, y) = arrays(&splits.train)?;
    let (xt, yt) = arrays(&splits.test)?;
    Ok((x, y, xt, yt))
}

/// Features as a tensor (copied once into the tensor's storage).
fn tensor2(x: &PyReadonlyArray2<f32>) -> PyResult<Tensor> {
    let (n, f) = (x.shape()[0], x.shape()[1]);
    let data = x
        .as_slice()
        .map_err(|_| PyValueError::new_err("x must be C-contiguous"))?
        .to_vec();
    Tensor::from_vec(&[n, f], data).map_err(py_err)
}

/// Features as a tensor that reads the array's memory in place (no copy) where it is
/// C-contiguous and aligned, else a copy. Numpy keeps the memory alive while the tensor
/// holds the array, and futureprop never writes it (a write to the tensor copies first);
/// Python code must not write the array while a call that reads it runs.
fn shared2(x: &PyReadonlyArray2<f32>) -> PyResult<Tensor> {
    let (n, f) = (x.shape()[0], x.shape()[1]);
    let slice = x
        .as_slice()
        .map_err(|_| PyValueError::new_err("x must be C-contiguous"))?;
    if !(slice.as_ptr() as usize).is_multiple_of(std::mem::align_of::<f32>()) {
        return tensor2(x);
    }
    let memory = NumpyMemory {
        _array: x.as_untyped().clone().unbind(),
        ptr: slice.as_ptr(),
        len: slice.len(),
    };
    Tensor::from_shared_f32(&[n, f], std::sync::Arc::new(memory)).map_err(py_err)
}

/// The elements of a numpy array, kept alive by a reference to the array.
struct NumpyMemory {
    _array: Py<numpy::PyUntypedArray>,
    ptr: *const f32,
    len: usize,
}

// SAFETY: `ptr..ptr+len` is the buffer of the array `_array` refers to; numpy neither frees
// nor moves it while that reference lives (it refuses to resize an array that others
// refer to), and it is only ever read through `as_ref`.
unsafe impl Send for NumpyMemory {}
unsafe impl Sync for NumpyMemory {}

impl AsRef<[f32]> for NumpyMemory {
    fn as_ref(&self) -> &[f32] {
        // SAFETY: see the Send/Sync note above; the pointer is aligned (checked in shared2).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A tensor as a numpy float32 array of its shape.
fn array<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, numpy::PyArrayDyn<f32>>> {
    let t = t.to_dtype(futureprop::tensor::DType::F32);
    numpy::PyArray1::from_slice(py, t.as_f32().map_err(py_err)?).reshape(t.shape().to_vec())
}

/// Class labels (the Python side has checked they are non-negative).
fn labels(y: &PyReadonlyArray1<i64>) -> PyResult<Vec<usize>> {
    Ok(y.as_slice()
        .map_err(|_| PyValueError::new_err("y must be contiguous"))?
        .iter()
        .map(|&l| l as usize)
        .collect())
}

/// A numpy array as a tensor of the same shape.
fn from_array(a: &Bound<'_, PyAny>, name: &str) -> PyResult<Tensor> {
    let a: PyReadonlyArrayDyn<f32> = a.extract().map_err(|_| {
        pyo3::exceptions::PyTypeError::new_err(format!("{name} must be a float32 numpy array"))
    })?;
    let data = a
        .as_slice()
        .map_err(|_| PyValueError::new_err(format!("{name} must be C-contiguous")))?
        .to_vec();
    Tensor::from_vec(a.shape(), data).map_err(py_err)
}

/// A model and its parameters (rule state included once a rule is initialised on it).
#[pyclass(name = "Model", module = "futureprop", unsendable)]
struct PyModel {
    spec: ModelSpec,
    model: Model,
    params: futureprop::nn::Params,
}

#[pymethods]
impl PyModel {
    #[new]
    #[pyo3(signature = (spec, activation="relu", bias=true, init=None, seed=0))]
    fn new(
        spec: std::path::PathBuf,
        activation: &str,
        bias: bool,
        init: Option<&str>,
        seed: u64,
    ) -> PyResult<Self> {
        // A TOML model file is named by its absolute path, so that a saved model (which
        // records the spec) and `fp.train` find it from any working directory.
        let spec = match spec.extension() {
            Some(e) if e == "toml" => std::path::absolute(&spec)
                .map_err(|e| PyOSError::new_err(format!("{}: {e}", spec.display())))?,
            _ => spec,
        };
        let spec = ModelSpec {
            spec: spec.to_string_lossy().into_owned(),
            activation: activation.into(),
            bias,
        };
        let model = Model::build(&spec).map_err(py_err)?;
        // The same default as `futureprop train` (and `fp.train`).
        let init = init.map_or_else(|| TrainConfig::default().init, str::to_string);
        let init = futureprop::nn::Init::parse(&init).map_err(py_err)?;
        let params = model.init_params(init, seed).map_err(py_err)?;
        Ok(PyModel {
            spec,
            model,
            params,
        })
    }

    /// The model spec.
    #[getter]
    fn spec(&self) -> String {
        self.spec.spec.clone()
    }

    /// The outputs on `x` (`[n, inputs]` float32).
    fn predict<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<f32>,
    ) -> PyResult<Bound<'py, numpy::PyArrayDyn<f32>>> {
        let x = shared2(&x)?;
        let (net, params) = (&self.model, &self.params);
        let out = native(py, "predict", || net.forward(params, &x))?.map_err(py_err)?;
        array(py, &out)
    }

    /// Every tensor (model parameters, buffers, and any rule state) as numpy copies.
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (n, t) in self.params.iter() {
            d.set_item(n, array(py, t)?)?;
        }
        Ok(d)
    }

    /// Replaces tensors by name (shapes must match).
    fn load_state_dict(&mut self, state: &Bound<'_, PyDict>) -> PyResult<()> {
        for (k, v) in state.iter() {
            let name: String = k.extract()?;
            let old = self.params.get(&name).map_err(py_err)?;
            let t = from_array(&v, &name)?;
            if t.shape() != old.shape() {
                return Err(PyValueError::new_err(format!(
                    "{name}: shape {:?}, the model's is {:?}",
                    t.shape(),
                    old.shape()
                )));
            }
            self.params.insert(name, t.to_dtype(old.dtype()));
        }
        Ok(())
    }

    /// Writes the model's own tensors (no rule state) as safetensors in PyTorch's
    /// state-dict layout (see the package docs for the names).
    fn save(&self, path: std::path::PathBuf) -> PyResult<()> {
        let own = train::model_param_names(&self.model, &self.params);
        futureprop::train::checkpoint::export_model(&path, &self.spec, &self.params, Some(&own))
            .map_err(py_err)
    }

    /// Reads a file written by `save` (or a run's checkpoint.safetensors).
    #[staticmethod]
    fn load(path: std::path::PathBuf) -> PyResult<Self> {
        let p = path.as_path();
        let (spec, params) = match futureprop::train::checkpoint::import_model(p).map_err(py_err)? {
            (Some(spec), params) => (spec, params),
            (None, _) => {
                // A training checkpoint: its config names the model.
                let ck = train::checkpoint::load(p).map_err(py_err)?;
                (spec_of(&ck.config), ck.params)
            }
        };
        let model = Model::build(&spec).map_err(py_err)?;
        let want = model
            .init_params(futureprop::nn::Init::Zeros, 0)
            .map_err(py_err)?;
        for (n, t) in want.iter() {
            let got = params.get(n).map_err(py_err)?;
            if got.shape() != t.shape() {
                return Err(PyValueError::new_err(format!(
                    "{}: {n} has shape {:?}, {} needs {:?}",
                    path.display(),
                    got.shape(),
                    spec.spec,
                    t.shape()
                )));
            }
        }
        Ok(PyModel {
            spec,
            model,
            params,
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "Model({:?}, activation={:?}, bias={})",
            self.spec.spec,
            self.spec.activation,
            if self.spec.bias { "True" } else { "False" }
        )
    }
}

/// One step's update: the update direction per tensor (gradient sign convention) and
/// the batch's loss.
#[pyclass(name = "Update", module = "futureprop", unsendable)]
struct PyUpdate {
    out: futureprop::rule::StepOutput,
}

#[pymethods]
impl PyUpdate {
    /// The batch's mean loss at the parameters the step started from.
    #[getter]
    fn loss(&self) -> f64 {
        self.out.loss
    }

    /// The update directions as numpy copies, by tensor name.
    fn grads<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (n, t) in self.out.grads.iter() {
            d.set_item(n, array(py, t)?)?;
        }
        Ok(d)
    }

    /// Replaces update directions by name (e.g. after clipping them in numpy).
    fn set_grads(&mut self, grads: &Bound<'_, PyDict>) -> PyResult<()> {
        for (k, v) in grads.iter() {
            self.__setitem__(&k.extract::<String>()?, &v)?;
        }
        Ok(())
    }

    /// The tensor names, in the model's order.
    fn keys(&self) -> Vec<String> {
        self.out.grads.names().to_vec()
    }

    /// (name, numpy copy) pairs.
    fn items<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Vec<(String, Bound<'py, numpy::PyArrayDyn<f32>>)>> {
        self.out
            .grads
            .iter()
            .map(|(n, t)| Ok((n.to_string(), array(py, t)?)))
            .collect()
    }

    /// The update directions as numpy copies, in the order of `keys()`.
    fn values<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, numpy::PyArrayDyn<f32>>>> {
        self.out.grads.iter().map(|(_, t)| array(py, t)).collect()
    }

    fn __len__(&self) -> usize {
        self.out.grads.names().len()
    }

    fn __contains__(&self, name: &str) -> bool {
        self.out.grads.get(name).is_ok()
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.keys()
            .into_pyobject(py)?
            .try_iter()
            .map(Bound::into_any)
    }

    /// One tensor's update direction as a numpy copy.
    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        name: &str,
    ) -> PyResult<Bound<'py, numpy::PyArrayDyn<f32>>> {
        match self.out.grads.get(name) {
            Ok(t) => array(py, t),
            Err(_) => Err(pyo3::exceptions::PyKeyError::new_err(name.to_string())),
        }
    }

    /// Replaces one tensor's update direction (same shape).
    fn __setitem__(&mut self, name: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let old = self
            .out
            .grads
            .get(name)
            .map_err(|_| pyo3::exceptions::PyKeyError::new_err(name.to_string()))?;
        let t = from_array(value, name)?.to_dtype(old.dtype());
        if t.shape() != old.shape() {
            return Err(PyValueError::new_err(format!(
                "{name}: shape {:?}, expected {:?}",
                t.shape(),
                old.shape()
            )));
        }
        self.out.grads.insert(name.to_string(), t);
        Ok(())
    }
}

/// A credit-assignment rule with its settings (`fp.rules.<name>(...).build()`).
#[pyclass(name = "RuleState", module = "futureprop", unsendable)]
struct PyRule {
    rule: Box<dyn futureprop::rule::Rule>,
    loss: futureprop::nn::Loss,
    seed: u64,
    ready: bool,
}

#[pymethods]
impl PyRule {
    #[new]
    #[pyo3(signature = (name, settings="{}", loss="cross-entropy", seed=0))]
    fn new(name: &str, settings: &str, loss: &str, seed: u64) -> PyResult<Self> {
        let s: serde_json::Value = serde_json::from_str(settings).map_err(json_err)?;
        Ok(PyRule {
            rule: futureprop::rule::build_rule_with(name, &s).map_err(py_err)?,
            loss: futureprop::nn::Loss::parse(loss).map_err(py_err)?,
            seed,
            ready: false,
        })
    }

    /// The update of one batch (`x` float32 `[n, inputs]`, `y` int64 labels); the first
    /// call initialises the rule's state (feedback matrices, ...) inside the model. The
    /// GIL is released while the rule runs.
    fn step(
        &mut self,
        py: Python<'_>,
        model: &mut PyModel,
        x: PyReadonlyArray2<f32>,
        y: PyReadonlyArray1<i64>,
    ) -> PyResult<PyUpdate> {
        // A copy, not a view: the update's trace keeps the batch (K-FAC reads it in the
        // optimizer's step), and a loop may refill the array before then.
        let batch = futureprop::rule::Batch {
            x: tensor2(&x)?,
            target: futureprop::nn::Target::Classes(labels(&y)?),
        };
        let (rule, loss, seed, ready) = (&mut self.rule, self.loss, self.seed, &mut self.ready);
        let (net, params) = (&model.model, &mut model.params);
        let out = native(py, "a rule's step", move || {
            if !*ready {
                futureprop::rule::check_layers(rule.name(), net)?;
                rule.init(net, params, seed)?;
                *ready = true;
            }
            rule.step(net, params, &batch, loss)
        })?
        .map_err(py_err)?;
        Ok(PyUpdate { out })
    }

    #[getter]
    fn name(&self) -> &'static str {
        self.rule.name()
    }
}

/// An optimizer with its settings and state.
#[pyclass(name = "OptimizerState", module = "futureprop", unsendable)]
struct PyOptimizer {
    opt: Box<dyn futureprop::optim::Optimizer>,
}

#[pymethods]
impl PyOptimizer {
    #[new]
    #[pyo3(signature = (name, lr=None, settings="{}"))]
    fn new(name: &str, lr: Option<f64>, settings: &str) -> PyResult<Self> {
        let s: serde_json::Value = serde_json::from_str(settings).map_err(json_err)?;
        let spec = futureprop::optim::spec(name).map_err(py_err)?;
        let mut cfg = futureprop::optim::OptimizerConfig::new(spec.name, 0.0);
        for (k, v) in s.as_object().into_iter().flatten() {
            cfg = cfg.with(k, v.clone());
        }
        cfg.lr = match lr {
            Some(lr) => lr,
            None => futureprop::optim::default_lr(&cfg.optimizer).map_err(py_err)?,
        };
        Ok(PyOptimizer {
            opt: futureprop::optim::build_optimizer(&cfg, 0).map_err(py_err)?,
        })
    }

    /// Applies `update` to `model`'s parameters (the GIL released).
    fn step(&mut self, py: Python<'_>, model: &mut PyModel, update: &PyUpdate) -> PyResult<()> {
        let (opt, params, out) = (&mut self.opt, &mut model.params, &update.out);
        native(py, "an optimizer's step", move || {
            let mut ctx = futureprop::optim::StepContext {
                trace: Some(&out.trace),
                objective: None,
            };
            opt.step(params, &out.grads, &mut ctx)
        })?
        .map_err(py_err)
    }

    #[getter]
    fn lr(&self) -> f64 {
        self.opt.learning_rate()
    }
}

/// Runs a benchmark suite (`quick`, `standard`, ... or a suite TOML file); returns its
/// report as JSON.
#[pyfunction(name = "bench")]
#[pyo3(signature = (suite, data_dir=None, out=None, seeds=None, threads=None))]
fn run_bench(
    py: Python<'_>,
    suite: &str,
    data_dir: Option<&str>,
    out: Option<&str>,
    seeds: Option<u64>,
    threads: Option<usize>,
) -> PyResult<String> {
    let opts = futureprop::bench::BenchOptions {
        suite: suite.into(),
        data_dir: data_dir.map(Into::into),
        mirror: None,
        out: out.map(Into::into),
        quiet: true,
        resume: None,
        seeds,
        threads,
    };
    let report = native(py, "bench", || futureprop::bench::run(&opts))?.map_err(py_err)?;
    serde_json::to_string(&report).map_err(json_err)
}

/// Checks registry rows against their published numbers (`rows`: names, empty for all);
/// returns the report as JSON.
#[pyfunction]
#[pyo3(signature = (rows, out, data_dir=None, threads=None, resume=false))]
fn reproduce(
    py: Python<'_>,
    rows: Vec<String>,
    out: &str,
    data_dir: Option<&str>,
    threads: Option<usize>,
    resume: bool,
) -> PyResult<String> {
    use futureprop::bench::reproduce as rp;
    let entries = rp::select(&rp::registry().map_err(py_err)?, &rows).map_err(py_err)?;
    let opts = rp::CheckOptions {
        out: out.into(),
        resume,
        overrides: vec![serde_json::json!({"data_dir": data_dir, "threads": threads})],
        quiet: true,
    };
    let report = native(py, "reproduce", || rp::check(&entries, &opts))?.map_err(py_err)?;
    serde_json::to_string(&report).map_err(json_err)
}

/// Diagnostics of `rule` (with its settings as JSON) at `model`'s parameters on the first
/// `batch_size` samples of `x`/`y`, as `futureprop diagnose` reports them. With `state`
/// (a rule that has stepped on this model), that rule is diagnosed with its own state
/// (feedback matrices, ...); otherwise a fresh one draws its state from `seed`.
/// Returns the report as JSON.
#[pyfunction]
#[pyo3(signature = (model, rule, settings, x, y, batch_size=128, loss="cross-entropy", curvature=false, seed=0, state=None))]
#[allow(clippy::too_many_arguments)]
fn diagnose_model(
    py: Python<'_>,
    model: PyRef<'_, PyModel>,
    rule: &str,
    settings: &str,
    x: PyReadonlyArray2<f32>,
    y: PyReadonlyArray1<i64>,
    batch_size: usize,
    loss: &str,
    curvature: bool,
    seed: u64,
    state: Option<PyRefMut<'_, PyRule>>,
) -> PyResult<String> {
    let loss = futureprop::nn::Loss::parse(loss).map_err(py_err)?;
    let data = dataset(&x, &y, model.model.outputs())?;
    let (net, held) = (&model.model, &model.params);
    let mut state = state.filter(|s| s.ready);
    let report = match state.as_mut() {
        Some(st) => {
            let r = st.rule.as_mut();
            native(py, "diagnose", move || {
                train::diagnose(r, net, held, &data, batch_size, loss, curvature, seed)
            })?
        }
        None => {
            let s: serde_json::Value = serde_json::from_str(settings).map_err(json_err)?;
            let mut r = futureprop::rule::build_rule_with(rule, &s).map_err(py_err)?;
            native(py, "diagnose", move || {
                futureprop::rule::check_layers(r.name(), net)?;
                let mut params = held.clone();
                r.init(net, &mut params, seed)?;
                train::diagnose(
                    r.as_mut(),
                    net,
                    &params,
                    &data,
                    batch_size,
                    loss,
                    curvature,
                    seed,
                )
            })?
        }
    }
    .map_err(py_err)?;
    serde_json::to_string(&report).map_err(json_err)
}

/// Diagnostics of a saved run (its checkpoint file or folder) on its own dataset, as
/// `futureprop diagnose` prints them; returns the report as JSON.
#[pyfunction]
#[pyo3(signature = (path, data_dir=None, batch_size=None, curvature=false))]
fn diagnose_checkpoint(
    py: Python<'_>,
    path: &str,
    data_dir: Option<&str>,
    batch_size: Option<usize>,
    curvature: bool,
) -> PyResult<String> {
    let report = native(py, "diagnose", || {
        train::diagnose_saved(
            std::path::Path::new(path),
            data_dir.map(std::path::Path::new),
            batch_size,
            curvature,
        )
    })?
    .map_err(py_err)?;
    serde_json::to_string(&report).map_err(json_err)
}

#[pymodule]
fn _futureprop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // As the CLI does: steps reuse freed buffers instead of faulting pages back in.
    futureprop::mem::keep_freed_memory();
    m.add("FutureError", m.py().get_type::<FutureError>())?;
    m.add_function(wrap_pyfunction!(rules, m)?)?;
    m.add_function(wrap_pyfunction!(optimizers, m)?)?;
    m.add_function(wrap_pyfunction!(train_arrays, m)?)?;
    m.add_function(wrap_pyfunction!(load_dataset, m)?)?;
    m.add_function(wrap_pyfunction!(run_bench, m)?)?;
    m.add_function(wrap_pyfunction!(reproduce, m)?)?;
    m.add_function(wrap_pyfunction!(diagnose_model, m)?)?;
    m.add_function(wrap_pyfunction!(diagnose_checkpoint, m)?)?;
    m.add_class::<PyModel>()?;
    m.add_class::<PyUpdate>()?;
    m.add_class::<PyRule>()?;
    m.add_class::<PyOptimizer>()?;
    Ok(())
}

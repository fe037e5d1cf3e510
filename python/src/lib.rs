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
        x: tensor2(x)?,
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
#[pyfunction]
#[pyo3(signature = (config, x, y, x_test, y_test, classes, model=None))]
#[allow(clippy::too_many_arguments)]
fn train_arrays(
    py: Python<'_>,
    config: &str,
    x: PyReadonlyArray2<f32>,
    y: PyReadonlyArray1<i64>,
    x_test: PyReadonlyArray2<f32>,
    y_test: PyReadonlyArray1<i64>,
    classes: usize,
    model: Option<PyRefMut<'_, PyModel>>,
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
    let splits = Splits {
        train: dataset(&x, &y, classes)?,
        validation: None,
        test: dataset(&x_test, &y_test, classes)?,
    };
    let go = || match &initial {
        Some(p) => train::run_from(&cfg, &splits, p),
        None => train::run(&cfg, &splits, None),
    };
    let pooled = || match cfg.threads {
        Some(t) => rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .map_err(|e| Error::config("threads", e.to_string()))
            .and_then(|pool| pool.install(go)),
        None => go(),
    };
    // Training runs on its own thread, the GIL released; this one wakes every 50 ms to
    // let Python look at its signals. Ctrl-C asks the run to stop: it ends the epoch,
    // evaluates and checkpoints it, and KeyboardInterrupt follows.
    train::clear_stop();
    let mut interrupted = None;
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
        }
        h.join()
    });
    train::clear_stop();
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
    if let Some(e) = interrupted {
        return Err(e);
    }
    serde_json::to_string(&summary).map_err(json_err)
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
    let splits = py.detach(|| train::load_data(&cfg)).map_err(py_err)?;
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

/// A tensor as a numpy float32 array of its shape.
fn array<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, numpy::PyArrayDyn<f32>>> {
    let v: Vec<f32> = t.to_vec_f64().into_iter().map(|v| v as f32).collect();
    numpy::PyArray1::from_vec(py, v).reshape(t.shape().to_vec())
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
    #[pyo3(signature = (spec, activation="relu", bias=true, init="auto", seed=0))]
    fn new(spec: &str, activation: &str, bias: bool, init: &str, seed: u64) -> PyResult<Self> {
        let spec = ModelSpec {
            spec: spec.into(),
            activation: activation.into(),
            bias,
        };
        let model = Model::build(&spec).map_err(py_err)?;
        let init = futureprop::nn::Init::parse(init).map_err(py_err)?;
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
        let out = self
            .model
            .forward(&self.params, &tensor2(&x)?)
            .map_err(py_err)?;
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
    fn save(&self, path: &str) -> PyResult<()> {
        let own = train::model_param_names(&self.model, &self.params);
        futureprop::train::checkpoint::export_model(
            std::path::Path::new(path),
            &self.spec,
            &self.params,
            Some(&own),
        )
        .map_err(py_err)
    }

    /// Reads a file written by `save` (or a run's checkpoint.safetensors).
    #[staticmethod]
    fn load(path: &str) -> PyResult<Self> {
        let p = std::path::Path::new(path);
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
                    "{path}: {n} has shape {:?}, {} needs {:?}",
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
            let name: String = k.extract()?;
            let old = self.out.grads.get(&name).map_err(py_err)?;
            let t = from_array(&v, &name)?.to_dtype(old.dtype());
            if t.shape() != old.shape() {
                return Err(PyValueError::new_err(format!(
                    "{name}: shape {:?}, expected {:?}",
                    t.shape(),
                    old.shape()
                )));
            }
            self.out.grads.insert(name, t);
        }
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
    /// call initialises the rule's state (feedback matrices, ...) inside the model.
    fn step(
        &mut self,
        model: &mut PyModel,
        x: PyReadonlyArray2<f32>,
        y: PyReadonlyArray1<i64>,
    ) -> PyResult<PyUpdate> {
        if !self.ready {
            futureprop::rule::check_layers(self.rule.name(), &model.model).map_err(py_err)?;
            self.rule
                .init(&model.model, &mut model.params, self.seed)
                .map_err(py_err)?;
            self.ready = true;
        }
        let batch = futureprop::rule::Batch {
            x: tensor2(&x)?,
            target: futureprop::nn::Target::Classes(labels(&y)?),
        };
        let out = self
            .rule
            .step(&model.model, &model.params, &batch, self.loss)
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

    /// Applies `update` to `model`'s parameters.
    fn step(&mut self, model: &mut PyModel, update: &PyUpdate) -> PyResult<()> {
        let mut ctx = futureprop::optim::StepContext {
            trace: Some(&update.out.trace),
            objective: None,
        };
        self.opt
            .step(&mut model.params, &update.out.grads, &mut ctx)
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
    let report = py
        .detach(|| futureprop::bench::run(&opts))
        .map_err(py_err)?;
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
    let report = py.detach(|| rp::check(&entries, &opts)).map_err(py_err)?;
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
    m.add_class::<PyModel>()?;
    m.add_class::<PyUpdate>()?;
    m.add_class::<PyRule>()?;
    m.add_class::<PyOptimizer>()?;
    Ok(())
}

//! `futureprop._futureprop`: the native half of the Python package. The Python half
//! (`py/futureprop/__init__.py`) checks arrays and keyword arguments and calls these;
//! settings cross as JSON in the same keys as a `futureprop train` config file, so every
//! rule's and optimizer's settings reach Python without code of their own.

mod arrays;
mod calls;
mod model;
mod step;

use numpy::{PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use futureprop::data::{Dataset, Splits};
use futureprop::error::Error;
use futureprop::train::{self, TrainConfig};

use arrays::dataset;
use calls::{FutureError, interruptible, json_err, long_call, native, py_err};
use model::PyModel;
use step::{PyOptimizer, PyRule, PyUpdate};

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
    let mut raised = None;
    let mut deliver = || {
        if let (Some(feed), Some(cb)) = (epochs.as_mut(), &callback)
            && raised.is_none()
            && let Err(e) = feed.deliver(py, cb)
        {
            train::request_stop();
            raised = Some(e);
        }
    };
    let (ran, interrupted) = interruptible(py, "training", pooled, &mut deliver)?;
    deliver();
    let summary = ran.map_err(py_err)?;
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
    let splits = long_call(py, "load_dataset", || train::load_data(&cfg))?;
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
    let report = long_call(py, "bench", || futureprop::bench::run(&opts))?;
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
    let report = long_call(py, "reproduce", || rp::check(&entries, &opts))?;
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
    let report = long_call(py, "diagnose", || {
        train::diagnose_saved(
            std::path::Path::new(path),
            data_dir.map(std::path::Path::new),
            batch_size,
            curvature,
        )
    })?;
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

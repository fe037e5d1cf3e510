//! `futureprop._futureprop`: the native half of the Python package. The Python half
//! (`py/futureprop/__init__.py`) checks arrays and keyword arguments and calls these;
//! settings cross as JSON in the same keys as a `futureprop train` config file, so every
//! rule's and optimizer's settings reach Python without code of their own.

use numpy::{PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

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

/// The rules as (name, summary, paper, settings JSON) tuples.
#[pyfunction]
fn rules() -> PyResult<Vec<(String, String, String, String)>> {
    futureprop::rule::names()
        .into_iter()
        .map(|n| {
            let s = futureprop::rule::spec(n).map_err(py_err)?;
            let fields: Vec<serde_json::Value> = (s.settings)().iter().map(field_json).collect();
            Ok((
                s.name.to_string(),
                s.summary.to_string(),
                s.paper.to_string(),
                serde_json::to_string(&fields).map_err(json_err)?,
            ))
        })
        .collect()
}

/// The optimizers as (name, summary, paper, settings JSON) tuples.
#[pyfunction]
fn optimizers() -> PyResult<Vec<(String, String, String, String)>> {
    futureprop::optim::names()
        .into_iter()
        .map(|n| {
            let s = futureprop::optim::spec(n).map_err(py_err)?;
            let fields: Vec<serde_json::Value> = (s.settings)().iter().map(field_json).collect();
            Ok((
                s.name.to_string(),
                s.summary.to_string(),
                s.paper.to_string(),
                serde_json::to_string(&fields).map_err(json_err)?,
            ))
        })
        .collect()
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
    let (n, f) = (x.shape()[0], x.shape()[1]);
    let data = x
        .as_slice()
        .map_err(|_| PyValueError::new_err("x must be C-contiguous"))?
        .to_vec();
    let labels: Vec<usize> = y
        .as_slice()
        .map_err(|_| PyValueError::new_err("y must be contiguous"))?
        .iter()
        .map(|&l| l as usize)
        .collect();
    Ok(Dataset {
        x: Tensor::from_vec(&[n, f], data).map_err(py_err)?,
        labels,
        classes,
        reconstruct: false,
        values: None,
    })
}

/// Trains on arrays: `config` is a train config as JSON (its `out` folder receives
/// metrics.jsonl, the checkpoint and summary.json); returns the summary as JSON. The
/// GIL is released while training.
#[pyfunction]
#[pyo3(signature = (config, x, y, x_test, y_test, classes))]
fn train_arrays(
    py: Python<'_>,
    config: &str,
    x: PyReadonlyArray2<f32>,
    y: PyReadonlyArray1<i64>,
    x_test: PyReadonlyArray2<f32>,
    y_test: PyReadonlyArray1<i64>,
    classes: usize,
) -> PyResult<String> {
    let layer: serde_json::Value = serde_json::from_str(config).map_err(json_err)?;
    let cfg = TrainConfig::fresh(&[layer]).map_err(py_err)?;
    let splits = Splits {
        train: dataset(&x, &y, classes)?,
        validation: None,
        test: dataset(&x_test, &y_test, classes)?,
    };
    let summary = py
        .detach(|| match cfg.threads {
            Some(t) => rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .map_err(|e| Error::config("threads", e.to_string()))
                .and_then(|pool| pool.install(|| train::run(&cfg, &splits, None))),
            None => train::run(&cfg, &splits, None),
        })
        .map_err(py_err)?;
    serde_json::to_string(&summary).map_err(json_err)
}

/// The outputs of a checkpoint's model on `x` (`[n, f]` float32).
#[pyfunction]
fn predict<'py>(
    py: Python<'py>,
    checkpoint: &str,
    x: PyReadonlyArray2<f32>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let ck = train::checkpoint::load(std::path::Path::new(checkpoint)).map_err(py_err)?;
    let c = &ck.config;
    let spec = ModelSpec {
        spec: c["model"].as_str().unwrap_or_default().to_string(),
        activation: c["activation"].as_str().unwrap_or("relu").to_string(),
        bias: c["bias"].as_bool().unwrap_or(true),
    };
    let (n, f) = (x.shape()[0], x.shape()[1]);
    let data = x
        .as_slice()
        .map_err(|_| PyValueError::new_err("x must be C-contiguous"))?
        .to_vec();
    let out = py
        .detach(|| {
            let m = Model::build(&spec)?;
            m.forward(&ck.params, &Tensor::from_vec(&[n, f], data)?)
        })
        .map_err(py_err)?;
    let (rows, cols) = out.dims2().map_err(py_err)?;
    let v: Vec<f32> = out.to_vec_f64().into_iter().map(|v| v as f32).collect();
    let flat = numpy::PyArray1::from_vec(py, v);
    flat.reshape([rows, cols])
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

#[pymodule]
fn _futureprop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("FutureError", m.py().get_type::<FutureError>())?;
    m.add_function(wrap_pyfunction!(rules, m)?)?;
    m.add_function(wrap_pyfunction!(optimizers, m)?)?;
    m.add_function(wrap_pyfunction!(train_arrays, m)?)?;
    m.add_function(wrap_pyfunction!(predict, m)?)?;
    m.add_function(wrap_pyfunction!(load_dataset, m)?)?;
    Ok(())
}

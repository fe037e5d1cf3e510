//! `fp.Model`: a model and its parameters, with PyTorch-layout safetensors.

use numpy::PyReadonlyArray2;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use futureprop::nn::{Model, ModelSpec};
use futureprop::train::{self, TrainConfig};

use crate::arrays::{array, from_array, shared2};
use crate::calls::{native, py_err};

/// The model spec of a run's config.
pub(crate) fn spec_of(c: &serde_json::Value) -> ModelSpec {
    ModelSpec {
        spec: c["model"].as_str().unwrap_or_default().to_string(),
        activation: c["activation"].as_str().unwrap_or("relu").to_string(),
        bias: c["bias"].as_bool().unwrap_or(true),
    }
}

/// A model and its parameters (rule state included once a rule is initialised on it).
#[pyclass(name = "Model", module = "futureprop", unsendable)]
pub(crate) struct PyModel {
    pub(crate) spec: ModelSpec,
    pub(crate) model: Model,
    pub(crate) params: futureprop::nn::Params,
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

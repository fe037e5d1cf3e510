//! Step-level control: a rule's update of one batch (`fp.Update`) and an optimizer
//! applying it.

use numpy::{PyReadonlyArray1, PyReadonlyArray2};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::arrays::{array, from_array, labels, tensor2};
use crate::calls::{json_err, native, py_err};
use crate::model::PyModel;

/// One step's update: the update direction per tensor (gradient sign convention) and
/// the batch's loss.
#[pyclass(name = "Update", module = "futureprop", unsendable)]
pub(crate) struct PyUpdate {
    pub(crate) out: futureprop::rule::StepOutput,
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
pub(crate) struct PyRule {
    pub(crate) rule: Box<dyn futureprop::rule::Rule>,
    loss: futureprop::nn::Loss,
    seed: u64,
    /// The rule's state is initialised (its first step ran).
    pub(crate) ready: bool,
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
pub(crate) struct PyOptimizer {
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
                reducer: None,
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

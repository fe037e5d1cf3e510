//! numpy arrays in and out: features read in place where their layout allows, labels,
//! and tensors handed back as numpy arrays.

use numpy::{
    PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArrayDyn, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use futureprop::data::Dataset;
use futureprop::tensor::Tensor;

use crate::calls::py_err;

/// A labelled set from a contiguous float32 `[n, f]` array and int64 labels.
pub(crate) fn dataset(
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

/// Features as a tensor (copied once into the tensor's storage).
pub(crate) fn tensor2(x: &PyReadonlyArray2<f32>) -> PyResult<Tensor> {
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
pub(crate) fn shared2(x: &PyReadonlyArray2<f32>) -> PyResult<Tensor> {
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
pub(crate) fn array<'py>(
    py: Python<'py>,
    t: &Tensor,
) -> PyResult<Bound<'py, numpy::PyArrayDyn<f32>>> {
    let t = t.to_dtype(futureprop::tensor::DType::F32);
    numpy::PyArray1::from_slice(py, t.as_f32().map_err(py_err)?).reshape(t.shape().to_vec())
}

/// Class labels (the Python side has checked they are non-negative).
pub(crate) fn labels(y: &PyReadonlyArray1<i64>) -> PyResult<Vec<usize>> {
    Ok(y.as_slice()
        .map_err(|_| PyValueError::new_err("y must be contiguous"))?
        .iter()
        .map(|&l| l as usize)
        .collect())
}

/// A numpy array as a tensor of the same shape.
pub(crate) fn from_array(a: &Bound<'_, PyAny>, name: &str) -> PyResult<Tensor> {
    let a: PyReadonlyArrayDyn<f32> = a.extract().map_err(|_| {
        pyo3::exceptions::PyTypeError::new_err(format!("{name} must be a float32 numpy array"))
    })?;
    let data = a
        .as_slice()
        .map_err(|_| PyValueError::new_err(format!("{name} must be C-contiguous")))?
        .to_vec();
    Tensor::from_vec(a.shape(), data).map_err(py_err)
}

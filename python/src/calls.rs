//! How a native call meets Python: errors as exceptions, the GIL released, the thread
//! pool, Ctrl-C and panics.

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use futureprop::error::Error;
use futureprop::train;

pyo3::create_exception!(
    _futureprop,
    FutureError,
    PyValueError,
    "A futureprop error: bad settings, shapes or data (the message names what is wrong)."
);

/// A Rust error as a Python exception with the same message.
pub(crate) fn py_err(e: Error) -> PyErr {
    match e {
        Error::Io { .. } => PyOSError::new_err(e.to_string()),
        Error::NonFinite { .. } => PyRuntimeError::new_err(e.to_string()),
        _ => FutureError::new_err(e.to_string()),
    }
}

/// Runs `f` with the GIL released on a worker of rayon's global pool (so the kernels'
/// parallel loops run as they do inside the trainer, not injected one by one from a
/// foreign thread); a panic becomes `RuntimeError`.
pub(crate) fn native<T: Send>(
    py: Python<'_>,
    what: &str,
    f: impl FnOnce() -> T + Send,
) -> PyResult<T> {
    py.detach(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rayon::scope(|_| f()))))
        .map_err(|_| {
            PyRuntimeError::new_err(format!(
                "futureprop panicked in {what} (a bug: please report it)"
            ))
        })
}

/// Runs a long call `f` on a thread of its own, the GIL released; this thread wakes every
/// 50 ms to let Python look at its signals and to run `tick` (which may call Python).
/// Ctrl-C asks the work to stop ([`train::request_stop`]: a run ends its epoch,
/// evaluates and checkpoints it; a suite keeps its finished arms) and comes back as the
/// second value, for the caller to raise once it has kept what it needs; a panic
/// becomes `RuntimeError`.
pub(crate) fn interruptible<T: Send>(
    py: Python<'_>,
    what: &str,
    f: impl FnOnce() -> T + Send,
    mut tick: impl FnMut(),
) -> PyResult<(T, Option<PyErr>)> {
    train::clear_stop();
    let mut interrupted = None;
    let ran = std::thread::scope(|s| {
        let h = s.spawn(f);
        while !h.is_finished() {
            py.detach(|| std::thread::sleep(std::time::Duration::from_millis(50)));
            if interrupted.is_none()
                && let Err(e) = py.check_signals()
            {
                train::request_stop();
                interrupted = Some(e);
            }
            tick();
        }
        h.join()
    });
    train::clear_stop();
    let out = ran.map_err(|_| {
        PyRuntimeError::new_err(format!(
            "futureprop panicked in {what} (a bug: please report it)"
        ))
    })?;
    Ok((out, interrupted))
}

/// [`interruptible`] for a call with nothing to keep: the interrupt is raised at once.
pub(crate) fn long_call<T: Send>(
    py: Python<'_>,
    what: &str,
    f: impl FnOnce() -> futureprop::error::Result<T> + Send,
) -> PyResult<T> {
    match interruptible(py, what, f, || {})? {
        (_, Some(e)) => Err(e),
        (r, None) => r.map_err(py_err),
    }
}

pub(crate) fn json_err(e: serde_json::Error) -> PyErr {
    PyValueError::new_err(format!("settings are not valid JSON: {e}"))
}

//! Named parameter stores. The same type holds parameters, gradients and updates.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// An ordered map from names (`"fc1.weight"`) to tensors.
///
/// Layers keep their parameters here under their own name; rules keep their extra
/// networks and feedback matrices here under the rule's name, so one optimizer and one
/// checkpoint cover everything. Used for gradients ([`Grads`]) too.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    names: Vec<String>,
    tensors: Vec<Tensor>,
    index: HashMap<String, usize>,
}

/// Update directions, keyed like [`Params`]. A parameter with no entry is not updated.
pub type Grads = Params;

impl Params {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces `name`. A bf16 or f16 tensor is stored widened to f32: under
    /// mixed precision parameters, gradients and optimizer state stay f32.
    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) {
        let name = name.into();
        let t = t.widened();
        match self.index.get(&name) {
            Some(&i) => self.tensors[i] = t,
            None => {
                self.index.insert(name.clone(), self.names.len());
                self.names.push(name);
                self.tensors.push(t);
            }
        }
    }

    /// Removes the entry `name` (keeping the others in order), returning it.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        let i = self.index.remove(name)?;
        self.names.remove(i);
        let t = self.tensors.remove(i);
        for (k, n) in self.names.iter().enumerate().skip(i) {
            self.index.insert(n.clone(), k);
        }
        Some(t)
    }

    /// Adds `t` to the entry `name`, creating it if absent.
    pub fn accumulate(&mut self, name: &str, t: Tensor) -> Result<()> {
        match self.index.get(name) {
            Some(&i) => self.tensors[i].axpy(1.0, &t),
            None => {
                self.insert(name, t);
                Ok(())
            }
        }
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| Error::MissingKey {
                key: name.to_string(),
                store: "parameter store".into(),
            })
    }

    /// The tensor called `name`, mutably.
    pub fn get_mut(&mut self, name: &str) -> Result<&mut Tensor> {
        match self.index.get(name) {
            Some(&i) => Ok(&mut self.tensors[i]),
            None => Err(Error::MissingKey {
                key: name.to_string(),
                store: "parameter store".into(),
            }),
        }
    }

    /// True when `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Names in insertion order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// `(name, tensor)` pairs in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.names
            .iter()
            .map(String::as_str)
            .zip(self.tensors.iter())
    }

    /// Mutable `(name, tensor)` pairs in insertion order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut Tensor)> {
        self.names
            .iter()
            .map(String::as_str)
            .zip(self.tensors.iter_mut())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Total number of scalar elements.
    pub fn num_elements(&self) -> usize {
        self.tensors.iter().map(Tensor::len).sum()
    }

    /// Total bytes of the elements.
    pub fn size_bytes(&self) -> usize {
        self.tensors.iter().map(Tensor::size_bytes).sum()
    }

    /// A store with the same names and shapes, all zeros.
    pub fn zeros_like(&self) -> Params {
        let mut out = Params::new();
        for (n, t) in self.iter() {
            out.insert(n, Tensor::zeros(t.shape(), t.dtype()));
        }
        out
    }

    /// Every entry converted to `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Params {
        let mut out = Params::new();
        for (n, t) in self.iter() {
            out.insert(n, t.to_dtype(dtype));
        }
        out
    }

    /// Global ‖·‖₂ over all entries.
    pub fn global_norm(&self) -> f64 {
        self.tensors.iter().map(Tensor::sum_sq).sum::<f64>().sqrt()
    }

    /// `self ← self + a · other` for every entry of `other` (entries must exist here).
    pub fn axpy(&mut self, a: f64, other: &Params) -> Result<()> {
        for (n, t) in other.iter() {
            self.get_mut(n)?.axpy(a, t)?;
        }
        Ok(())
    }

    /// Scales every entry.
    pub fn scale_in_place(&mut self, s: f64) {
        for t in &mut self.tensors {
            t.scale_in_place(s);
        }
    }

    /// Σ over shared entries of ⟨self, other⟩.
    pub fn dot(&self, other: &Params) -> Result<f64> {
        let mut s = 0.0;
        for (n, t) in self.iter() {
            if let Ok(o) = other.get(n) {
                s += t.dot(o)?;
            }
        }
        Ok(s)
    }
}

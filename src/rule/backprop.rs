//! Backpropagation.

use super::{Batch, Rule, RuleSpec};

pub(super) const BP: RuleSpec = RuleSpec {
    name: "bp",
    aliases: &["backprop"],
    summary: "backpropagation: exact gradient through transposed Jacobians",
    paper: "Rumelhart et al. 1986",
    build: |_| Ok(Box::new(Backprop)),
    ..RuleSpec::DEFAULT
};
use super::StepOutput;
use crate::error::Result;
use crate::nn::{Grads, Loss, Model, Params, Record, Segments, Trace};
use crate::tensor::Tensor;

/// Backpropagation (Rumelhart, Hinton & Williams 1986): δ_L = ∂L/∂z_L and
/// δₗ = Jₗ₊₁ᵀ δₗ₊₁ through every layer's transposed Jacobian; ∂L/∂θₗ from δₗ locally.
/// The oracle every other rule is measured against.
#[derive(Debug, Clone, Copy, Default)]
pub struct Backprop;

impl Rule for Backprop {
    fn mixed_precision(&self) -> bool {
        true
    }

    fn trains(&self) -> super::Trains {
        super::Trains::ALL
    }

    fn name(&self) -> &'static str {
        "bp"
    }

    fn checkpointed(&self, segments: Segments) -> Result<Option<Box<dyn Rule>>> {
        Ok((segments != Segments::Off).then(|| Box::new(Checkpointed { segments }) as Box<dyn Rule>))
    }

    fn backward(
        &mut self,
        model: &Model,
        params: &Params,
        trace: &mut Trace,
        _batch: &Batch,
        d_out: Tensor,
    ) -> Result<Grads> {
        let mut grads = Grads::new();
        super::backward_layers(
            model,
            trace,
            d_out,
            &mut grads,
            |_, layer, rec, d, g, input| layer.backward(params, rec, d, g, input),
        )?;
        Ok(grads)
    }
}

/// Backprop with gradient checkpointing (Chen et al. 2016, "Training deep nets with
/// sublinear memory cost"): the forward pass keeps only the input of each of K segments
/// of the model's layers; the backward pass recomputes one segment's records at a time
/// from its input and carries the error down through it. Same kernels, seeds and order
/// as [`Backprop`], so the update is bit-identical; activation memory falls from all L
/// layers' records to K segment inputs plus one segment's records (√L segments: O(√L)).
#[derive(Debug, Clone, Copy)]
pub struct Checkpointed {
    segments: Segments,
}

impl Checkpointed {
    /// Backprop recomputing `segments` segments.
    pub fn new(segments: Segments) -> Self {
        Checkpointed { segments }
    }
}

impl Rule for Checkpointed {
    fn mixed_precision(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "bp"
    }

    fn trains(&self) -> super::Trains {
        super::Trains::ALL
    }

    fn step(
        &mut self,
        model: &Model,
        params: &Params,
        batch: &super::Batch,
        loss: Loss,
    ) -> Result<StepOutput> {
        let n = model.layers().len();
        let k = self.segments.count(n);
        let bounds: Vec<usize> = (0..=k).map(|j| j * n / k).collect();
        // Forward: only each segment's input is kept.
        let mut inputs = Vec::with_capacity(k);
        let mut h = batch.x.clone();
        for w in bounds.windows(2) {
            inputs.push(h.clone());
            h = model.forward_range(params, &h, w[0]..w[1], false)?.0;
        }
        let (value, mut d) = loss.eval(&h, &batch.target)?;
        // Backward: recompute a segment's records, carry the error through it, drop them.
        let mut grads = Grads::new();
        for (j, w) in bounds.windows(2).enumerate().rev() {
            let (_, records) = model.forward_range(params, &inputs[j], w[0]..w[1], true)?;
            for i in (w[0]..w[1]).rev() {
                let rec = &records[i - w[0]];
                match model.layers()[i].backward(params, rec, &d, &mut grads, i > 0)? {
                    Some(next) => d = next,
                    None => break,
                }
            }
        }
        // The trace keeps no activations: an empty record per layer.
        let dt = batch.x.dtype();
        let trace = Trace {
            records: model
                .layers()
                .iter()
                .map(|l| Record::new(l.name(), Tensor::zeros(&[0, 0], dt)))
                .collect(),
            errors: vec![None; n],
        };
        Ok(StepOutput {
            grads,
            trace,
            loss: value,
            prediction: Some(h),
        })
    }
}

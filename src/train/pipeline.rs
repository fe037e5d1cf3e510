//! Layer-parallel training (`parallel = "pipeline"` under `mpirun`): each rank owns a
//! contiguous run of the model's blocks and the batch flows through the ranks in
//! microbatches (GPipe, Huang et al. 2019).
//!
//! - DFA and BFA (seed §5.1; Nøkland 2016): activations go forward rank to rank; the
//!   last rank computes the output error e and broadcasts it; every rank then updates
//!   its blocks from e alone, δₗ = (e·Bₗ) ⊙ f′(aₗ), ΔWₗ = δₗᵀhₗ₋₁. No message flows
//!   backward between layers.
//! - BP: the same forward flow, then ∂L/∂h travels back rank by rank, each microbatch
//!   as soon as the rank after has finished it.
//!
//! Every rank reads the whole batch stream (rank 0 feeds the inputs; the last rank reads
//! the targets), holds the whole parameter store but updates only its own blocks, and
//! the stores are made whole again ([`Pipeline::gather`]) before an evaluation or a
//! checkpoint. A microbatch's error is that of the whole batch's mean loss (its rows'
//! share), so the summed updates equal one process's on the batch, up to summation order.

use std::ops::Range;

use super::comm::Communicator;
use crate::data::Batch;
use crate::error::{Error, Result};
use crate::nn::{Block, BlockShape, Grads, LayerKind, Loss, Model, Params, Record};
use crate::rule::{Rule, StepOutput};
use crate::tensor::Tensor;

/// How a rank's blocks get their error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credit {
    /// The output error projected by fixed matrices (DFA, BFA).
    Direct,
    /// The error carried back through the ranks after (BP).
    Backprop,
}

/// One rank's part of a pipelined model.
pub struct Pipeline {
    comm: &'static dyn Communicator,
    credit: Credit,
    /// The model's blocks (the last is the output layer).
    blocks: Vec<Block>,
    /// This rank's blocks and their layers.
    mine: Range<usize>,
    layers: Range<usize>,
    microbatches: usize,
    /// The send buffer of activations and errors, kept from step to step.
    message: Vec<f32>,
}

/// The layers of block `j`: from its weight layer to the next block's.
fn block_layers(blocks: &[Block], j: usize, n_layers: usize) -> Range<usize> {
    blocks[j].linear..blocks.get(j + 1).map_or(n_layers, |b| b.linear)
}

/// Contiguous runs of `costs` over `k` ranks, each boundary where the running cost is
/// nearest its even share; every rank gets at least one block.
pub fn partition(costs: &[usize], k: usize) -> Vec<Range<usize>> {
    let total: usize = costs.iter().sum();
    let mut cum = vec![0usize];
    for c in costs {
        cum.push(cum.last().unwrap() + c);
    }
    let mut bounds = vec![0];
    for r in 1..k {
        let lo = bounds[r - 1] + 1;
        let hi = costs.len() - (k - r);
        let target = total as f64 * r as f64 / k as f64;
        let j = (lo..=hi)
            .min_by(|&a, &b| {
                (cum[a] as f64 - target)
                    .abs()
                    .total_cmp(&(cum[b] as f64 - target).abs())
            })
            .unwrap_or(lo);
        bounds.push(j);
    }
    bounds.push(costs.len());
    bounds.windows(2).map(|w| w[0]..w[1]).collect()
}

/// Refuses what the pipeline does not cover: it keeps no trace for the optimizer, one
/// dtype on the wire, and each rank's optimizer state for its own layers only.
pub(super) fn check(
    cfg: &super::TrainConfig,
    optimizer: &dyn crate::optim::Optimizer,
    resume: bool,
) -> Result<()> {
    let bad = |why: String| Err(Error::config("parallel (--parallel pipeline)", why));
    if !optimizer.splits_over_batch() || optimizer.needs_trace() || optimizer.reduces_own_update() {
        return bad(format!(
            "the layer pipeline steps each rank's layers with an element-wise optimizer (sgd, adam, …); {} is not one",
            optimizer.name()
        ));
    }
    if cfg.precision != "f32"
        || cfg.compression != "none"
        || cfg.checkpoint_segments != "off"
        || cfg.quantize != "none"
    {
        return bad(
            "the layer pipeline runs at f32, with --compression none, --checkpoint-segments off and --quantize none"
                .into(),
        );
    }
    if cfg.average != "none" || cfg.diag_every > 0 {
        return bad("the layer pipeline takes no weight averaging (--average) or diagnostics (--diag-every): each rank holds the others' layers only as of the last evaluation".into());
    }
    if resume {
        return bad("a pipelined run does not resume yet: its checkpoint holds the whole model but rank 0's optimizer state only; resume it with --parallel data (the other ranks' optimizer state then starts afresh) or start a new run".into());
    }
    Ok(())
}

impl Pipeline {
    /// This rank's part of `model` trained by `rule` over `comm`'s ranks.
    pub fn new(
        model: &Model,
        rule: &dyn Rule,
        comm: &'static dyn Communicator,
        microbatches: usize,
    ) -> Result<Pipeline> {
        let bad = |why: String| Error::config("parallel (--parallel pipeline)", why);
        let credit = match rule.name() {
            "bp" => Credit::Backprop,
            "dfa" | "bfa" => Credit::Direct,
            other => {
                return Err(bad(format!(
                    "the layer pipeline runs bp, dfa and bfa; {other} is data-parallel only (--parallel data)"
                )));
            }
        };
        let (mut blocks, last) = model.block_walk("the layer pipeline", BlockShape::WEIGHTS)?;
        blocks.push(last);
        let layers = model.layers();
        let dense = blocks.iter().all(|b| {
            matches!(layers[b.linear].kind(), LayerKind::Linear { .. })
                && b.norm.is_none()
                && b.pool.is_none()
        }) && blocks.iter().enumerate().all(|(j, b)| {
            block_layers(&blocks, j, layers.len()).len() == 1 + usize::from(b.activation.is_some())
        });
        if !dense {
            return Err(bad(
                "the layer pipeline takes chains of Linear layers and activations (an mlp:…)"
                    .into(),
            ));
        }
        let k = comm.size();
        if blocks.len() < k {
            return Err(bad(format!(
                "{} weight layers do not split over {k} ranks; use at most {} ranks",
                blocks.len(),
                blocks.len()
            )));
        }
        let costs: Vec<usize> = blocks.iter().map(|b| b.inputs * b.outputs).collect();
        let mine = partition(&costs, k).swap_remove(comm.rank());
        let layers = blocks[mine.start].linear
            ..block_layers(&blocks, mine.end - 1, model.layers().len()).end;
        Ok(Pipeline {
            comm,
            credit,
            blocks,
            mine,
            layers,
            microbatches: microbatches.max(1),
            message: Vec::new(),
        })
    }

    /// Whether this rank holds the output layer (and so the loss and predictions).
    pub fn is_last(&self) -> bool {
        self.comm.rank() + 1 == self.comm.size()
    }

    /// The layers this rank trains.
    pub fn layers(&self) -> Range<usize> {
        self.layers.clone()
    }

    /// One pipelined step on `batch`: this rank's blocks' updates, the batch's mean loss
    /// (on every rank) and, on the last rank, the model's output as the prediction.
    pub fn step(
        &mut self,
        rule: &dyn Rule,
        model: &Model,
        params: &Params,
        batch: &Batch,
        loss: Loss,
    ) -> Result<StepOutput> {
        let (rank, k) = (self.comm.rank(), self.comm.size());
        let rows = batch.target.len();
        let m = self.microbatches.min(rows).max(1);
        let micro: Vec<Range<usize>> = (0..m).map(|i| super::comm::share(rows, i, m)).collect();
        let width_in = self.blocks[self.mine.start].inputs;
        // Forward, microbatch by microbatch.
        let mut records: Vec<Vec<Record>> = Vec::with_capacity(m);
        let mut outputs = Vec::new();
        for r in &micro {
            let x = if rank == 0 {
                batch.x.gather_rows(&r.clone().collect::<Vec<_>>())?
            } else {
                let mut buf = vec![0.0f32; r.len() * width_in];
                self.comm.recv_f32(rank - 1, &mut buf);
                Tensor::from_vec(&[r.len(), width_in], buf)?
            };
            let (h, recs) = model.forward_range(params, &x, self.layers.clone(), true)?;
            if rank + 1 < k {
                Tensor::pack_f32(&[&h], 1.0, &mut self.message)?;
                self.comm.send_f32(rank + 1, &self.message);
            } else {
                outputs.push(h);
            }
            records.push(recs);
        }
        // The last rank's loss and output errors, each microbatch's scaled to its share
        // of the batch's mean.
        let mut value = 0.0;
        let mut errors = Vec::with_capacity(m);
        if self.is_last() {
            for (r, z) in micro.iter().zip(&outputs) {
                let idx: Vec<usize> = r.clone().collect();
                let (l, e) = loss.eval(z, &batch.target.rows(&idx)?)?;
                let share = r.len() as f64 / rows as f64;
                value += l * share;
                errors.push(e.scale(share));
            }
        }
        let mut total = [value];
        self.comm.all_reduce_sum(&mut total);
        let mut grads = Grads::new();
        match self.credit {
            Credit::Direct => {
                self.broadcast_errors(model, &micro, &mut errors)?;
                // Quantised, like the rule's own pass, per microbatch (the whole batch's
                // grid when there is one microbatch).
                errors = errors
                    .into_iter()
                    .map(|e| rule.direct_error(e))
                    .collect::<Result<_>>()?;
                for (e, recs) in errors.iter().zip(&records) {
                    self.direct_updates(rule, model, params, recs, e, &mut grads)?;
                }
            }
            Credit::Backprop => {
                let width_out = self.blocks[self.mine.end - 1].outputs;
                for (i, (r, recs)) in micro.iter().zip(&records).enumerate() {
                    let mut d = if self.is_last() {
                        errors[i].clone()
                    } else {
                        let mut buf = vec![0.0f32; r.len() * width_out];
                        self.comm.recv_f32(rank + 1, &mut buf);
                        Tensor::from_vec(&[r.len(), width_out], buf)?
                    };
                    let layers = model.layers();
                    for (j, rec) in self.layers.clone().zip(recs).rev() {
                        let input = j > 0;
                        if let Some(next) =
                            layers[j].backward(params, rec, &d, &mut grads, input)?
                        {
                            d = next;
                        }
                    }
                    if rank > 0 {
                        Tensor::pack_f32(&[&d], 1.0, &mut self.message)?;
                        self.comm.send_f32(rank - 1, &self.message);
                    }
                }
            }
        }
        let prediction = (self.is_last() && !outputs.is_empty())
            .then(|| Tensor::concat_rows(&outputs))
            .transpose()?;
        Ok(StepOutput {
            grads,
            trace: Default::default(),
            loss: total[0],
            prediction,
        })
    }

    /// The last rank's output errors, sent to every rank in one broadcast.
    fn broadcast_errors(
        &self,
        model: &Model,
        micro: &[Range<usize>],
        errors: &mut Vec<Tensor>,
    ) -> Result<()> {
        let c = model.outputs();
        let rows: usize = micro.iter().map(|r| r.len()).sum();
        let mut buf = Vec::with_capacity(rows * c);
        let parts: Vec<&Tensor> = errors.iter().collect();
        Tensor::pack_f32(&parts, 1.0, &mut buf)?;
        buf.resize(rows * c, 0.0);
        self.comm.broadcast_f32(self.comm.size() - 1, &mut buf);
        if !self.is_last() {
            errors.clear();
            for r in micro {
                let part = buf[r.start * c..r.end * c].to_vec();
                errors.push(Tensor::from_vec(&[r.len(), c], part)?);
            }
        }
        Ok(())
    }

    /// DFA's updates of this rank's blocks from the output error `e` of one microbatch
    /// whose records (this rank's layers) are `recs`.
    fn direct_updates(
        &self,
        rule: &dyn Rule,
        model: &Model,
        params: &Params,
        recs: &[Record],
        e: &Tensor,
        grads: &mut Grads,
    ) -> Result<()> {
        let layers = model.layers();
        let rec = |i: usize| &recs[i - self.layers.start];
        let out = self.blocks.len() - 1;
        for j in self.mine.clone() {
            let b = &self.blocks[j];
            if j == out {
                layers[b.linear].param_grads(params, rec(b.linear), e, grads)?;
                continue;
            }
            let proj = rule.direct_projection(model, j).ok_or_else(|| {
                Error::config("direct feedback", "no projection matrix; was init called?")
            })?;
            let d_act = e.to_dtype(proj.dtype()).matmul(false, proj, false)?;
            let d_pre = match b.activation {
                Some(a) => {
                    layers[a].param_grads(params, rec(a), &d_act, grads)?;
                    layers[a].input_grad(params, rec(a), &d_act)?
                }
                None => d_act,
            };
            layers[b.linear].param_grads(params, rec(b.linear), &d_pre, grads)?;
        }
        Ok(())
    }

    /// Makes every rank's parameter store whole: each parameter of a layer takes the
    /// value of the rank that trains it (one all-reduce of the store, others' zeroed).
    pub fn gather(&self, model: &Model, params: &mut Params) -> Result<()> {
        let layers = model.layers();
        let own: Vec<String> = self
            .layers
            .clone()
            .map(|i| format!("{}.", layers[i].name()))
            .collect();
        let trained: Vec<String> = layers.iter().map(|l| format!("{}.", l.name())).collect();
        let mut parts: Vec<&mut Tensor> = Vec::new();
        for (name, t) in params.iter_mut() {
            if !trained.iter().any(|p| name.starts_with(p.as_str())) {
                continue;
            }
            if !own.iter().any(|p| name.starts_with(p.as_str())) {
                t.scale_in_place(0.0);
            }
            parts.push(t);
        }
        let mut buffers = Default::default();
        super::comm::all_reduce_tensors(self.comm, &mut parts, 1.0, &mut buffers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_split_where_the_cost_is_even_and_every_rank_gets_one() {
        // 784-1000-1000-1000-1000-10: rank 0 takes 1.78 M weights, rank 1 2.01 M.
        let costs = [784_000, 1_000_000, 1_000_000, 1_000_000, 10_000];
        assert_eq!(partition(&costs, 2), vec![0..2, 2..5]);
        assert_eq!(partition(&costs, 5), vec![0..1, 1..2, 2..3, 3..4, 4..5]);
        assert_eq!(partition(&[1, 1, 100], 3), vec![0..1, 1..2, 2..3]);
        assert_eq!(partition(&[5], 1), vec![0..1]);
    }
}

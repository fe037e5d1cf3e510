//! Times one training step (forward, the rule's backward, SGD update) at batch 128
//! (`--batch N`), and each GEMM of the backprop step of the model at that batch.
//!
//! `cargo bench --bench step -- --threads N [--steps S] [--rule R] [--model SPEC]
//! [--precision f32|bf16|f16] [--gemm-dtype f32|bf16|f16] [--json]`:
//! prints the median step time in milliseconds over S steps (default 300) after 30
//! warm-up steps, the step's counted GEMM FLOPs, and (for the default model) the
//! throughput of each GEMM shape. `bench/step_vs_pytorch.sh` compares BP with PyTorch;
//! `bench/rule_speed.sh` compares rules with BP; `--optimizer a,b,...` runs every
//! rule × optimizer interleaved (`bench/optimizer_speed.sh`).

use std::time::Instant;

use futureprop::nn::{Init, Loss, Model, ModelSpec, Target};
use futureprop::optim::{OptimizerConfig, StepContext, build_optimizer};
mod common;
use common::{arg, arg_str};
use futureprop::rule::{Batch, build_rule};
use futureprop::tensor::Tensor;
use futureprop::train::RuleObjective;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// GEMM FLOPs (2·m·n·k per product) of one step of an MLP of `widths` at batch `n`:
/// forward x·Wᵀ per layer, weight gradients δᵀ·x per layer, and the backward signal:
/// δ·W below every layer but the first (bp, fa and its variants), or one projection
/// e·Bₗ of the output error per hidden block (dfa, bfa, drtp).
fn step_flops(widths: &[usize], n: usize, rule: &str) -> f64 {
    let layers: Vec<(usize, usize)> = widths.windows(2).map(|w| (w[0], w[1])).collect();
    let out = *widths.last().unwrap_or(&0);
    let prod = |a: usize, b: usize| 2.0 * (n * a * b) as f64;
    let fwd: f64 = layers.iter().map(|&(i, o)| prod(i, o)).sum();
    let backward: f64 = if matches!(rule, "dfa" | "bfa" | "drtp") {
        layers[..layers.len() - 1]
            .iter()
            .map(|&(_, o)| prod(out, o))
            .sum()
    } else {
        layers[1..].iter().map(|&(i, o)| prod(i, o)).sum()
    };
    2.0 * fwd + backward
}

fn main() -> futureprop::Result<()> {
    // As the futureprop binary: keep freed buffers in the heap.
    futureprop::mem::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let threads = arg(&args, "--threads", 1);
    let steps = arg(&args, "--steps", 300);
    let json = args.iter().any(|a| a == "--json");
    let rule_name = arg_str(&args, "--rule", "bp");
    let optimizer_names = arg_str(&args, "--optimizer", "sgd");
    let spec = arg_str(&args, "--model", "mlp:784-1000-1000-10");
    let batch = arg(&args, "--batch", 128);
    // Element type of the per-shape GEMM timings: f32, bf16 or f16.
    let gemm_dtype = match arg_str(&args, "--gemm-dtype", "f32").as_str() {
        "bf16" => futureprop::tensor::DType::BF16,
        "f16" => futureprop::tensor::DType::F16,
        _ => futureprop::tensor::DType::F32,
    };
    let widths: Vec<usize> = spec
        .trim_start_matches("mlp:")
        .split('-')
        .map(|w| w.parse().expect("--model mlp:W0-W1-..."))
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    pool.install(|| -> futureprop::Result<()> {
        let mut model = Model::build(&ModelSpec {
            spec: spec.clone(),
            activation: "relu".into(),
            bias: true,
        })?;
        // Mixed precision of the step (`--precision f32|bf16|f16`); f16's loss scale is
        // left at 1 (timing only).
        model.set_precision(match arg_str(&args, "--precision", "f32").as_str() {
            "bf16" => futureprop::tensor::DType::BF16,
            "f16" => futureprop::tensor::DType::F16,
            _ => futureprop::tensor::DType::F32,
        });
        // Several rules (`--rule bp,fa,dfa`) run interleaved step by step in one process,
        // so the machine's drift affects them alike; each keeps its own parameters.
        let names: Vec<String> = rule_name.split(',').map(str::to_string).collect();
        let opt_names: Vec<String> = optimizer_names.split(',').map(str::to_string).collect();
        let mut arms = Vec::new();
        for name in &names {
            for o in &opt_names {
                let mut params = model.init_params(Init::Torch, 0)?;
                let mut rule = build_rule(name)?;
                rule.init(&model, &mut params, 0)?;
                let lr = if matches!(o.as_str(), "hf" | "lbfgs") { 1.0 } else { 0.01 };
                let opt = build_optimizer(
                    &OptimizerConfig::new(o, lr),
                    1 << 30,
                )?;
                // As the trainer: block-wise rules free activations unless the optimizer reads them.
                rule.keep_trace(opt.needs_trace());
                arms.push((name.clone(), o.clone(), params, rule, opt, Vec::with_capacity(steps)));
            }
        }
        let n = batch;
        let (inputs, classes) = (widths[0], *widths.last().unwrap_or(&1));
        let x: Vec<f32> = (0..n * inputs).map(|i| ((i * 7919 % 255) as f32) / 255.0 - 0.13).collect();
        let batch = Batch {
            x: Tensor::from_vec(&[n, inputs], x)?,
            target: Target::Classes((0..n).map(|i| i % classes).collect()),
        };
        for i in 0..steps + 30 {
            for (_, _, params, rule, opt, times) in arms.iter_mut() {
                let t = Instant::now();
                let out = rule.step(&model, params, &batch, Loss::CrossEntropy)?;
                let mut objective = RuleObjective {
                    rule: rule.as_mut(),
                    model: &model,
                    batch: &batch,
                    loss: Loss::CrossEntropy,
                };
                let mut ctx = StepContext {
                    trace: Some(&out.trace),
                    objective: Some(&mut objective),
                    reducer: None,
                };
                opt.step(params, &out.grads, &mut ctx)?;
                if i >= 30 {
                    times.push(t.elapsed().as_secs_f64());
                }
            }
        }
        let results: Vec<(String, String, f64, f64)> = arms
            .into_iter()
            .map(|(name, o, _, _, _, times)| {
                let f = step_flops(&widths, n, &name);
                (name, o, median(times) * 1e3, f)
            })
            .collect();
        let (step_ms, flops) = (results[0].2, results[0].3);
        // The GEMMs of the step, per layer: forward x·Wᵀ, weight gradient δᵀ·x and input
        // error δ·W (none for the first layer).
        let mut shapes: Vec<(usize, usize, usize, bool, bool, String)> = Vec::new();
        for (l, w) in widths.windows(2).enumerate() {
            let (i, o) = (w[0], w[1]);
            shapes.push((n, o, i, false, true, format!("fwd{} x·W{}ᵀ", l + 1, l + 1)));
            shapes.push((o, i, n, true, false, format!("dW{} δᵀ·x", l + 1)));
            if l > 0 {
                shapes.push((n, i, o, false, false, format!("dh{} δ·W{}", l, l + 1)));
            }
        }
        let mut gemm = Vec::new();
        for (m, nn, k, ta, tb, label) in shapes {
            let a = Tensor::full(&if ta { [k, m] } else { [m, k] }, 0.5, gemm_dtype);
            let b = Tensor::full(&if tb { [nn, k] } else { [k, nn] }, 0.25, gemm_dtype);
            let mut ts = Vec::new();
            for i in 0..230 {
                let t = Instant::now();
                let c = a.matmul(ta, &b, tb)?;
                std::hint::black_box(&c);
                if i >= 30 {
                    ts.push(t.elapsed().as_secs_f64());
                }
            }
            let s = median(ts);
            gemm.push((label, m, nn, k, s * 1e3, 2.0 * (m * nn * k) as f64 / s / 1e9));
        }
        if json {
            let g: Vec<_> = gemm
                .iter()
                .map(|(l, m, n, k, ms, gf)| serde_json::json!({"op": l, "m": m, "n": n, "k": k, "ms": ms, "gflops": gf}))
                .collect();
            let rules: Vec<_> = results
                .iter()
                .map(|(r, o, ms, f)| serde_json::json!({"rule": r, "optimizer": o, "step_ms": ms, "gemm_flops": f}))
                .collect();
            println!(
                "{}",
                serde_json::json!({"threads": threads, "rule": results[0].0, "model": spec, "step_ms": step_ms, "gemm_flops": flops, "rules": rules, "gemm": g})
            );
        } else {
            for (r, o, ms, f) in &results {
                println!(
                    "futureprop {r}+{o} step of {spec} (batch {n}, {threads} thread(s)): median {ms:.3} ms over {steps} steps, {:.3} GFLOP of GEMM",
                    f / 1e9
                );
            }
            for (l, m, n, k, ms, gf) in gemm {
                println!("  {l:<12} {m:>4}x{n:<4}x{k:<4} {ms:>7.3} ms {gf:>6.1} GFLOP/s");
            }
        }
        Ok(())
    })
}

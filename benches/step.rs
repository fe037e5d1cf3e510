//! Times one training step (forward, backprop, SGD update) of `mlp:784-1000-1000-10`
//! at batch 128, and the GEMMs of that step.
//!
//! `cargo bench --bench step -- --threads N [--steps S] [--json]`: prints the median step
//! time in milliseconds over S steps (default 300) after 30 warm-up steps, and the
//! throughput of each GEMM shape. `bench/step_vs_pytorch.sh` compares it with PyTorch.

use std::time::Instant;

use futureprop::nn::{Init, Loss, Model, ModelSpec, Target};
use futureprop::optim::{OptimizerConfig, StepContext, build_optimizer};
use futureprop::rule::{Batch, build_rule};
use futureprop::tensor::Tensor;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> futureprop::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let threads = arg(&args, "--threads", 1);
    let steps = arg(&args, "--steps", 300);
    let json = args.iter().any(|a| a == "--json");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    pool.install(|| -> futureprop::Result<()> {
        let model = Model::build(&ModelSpec {
            spec: "mlp:784-1000-1000-10".into(),
            activation: "relu".into(),
            bias: true,
        })?;
        let mut params = model.init_params(Init::Torch, 0)?;
        let mut rule = build_rule("bp")?;
        let mut opt = build_optimizer(
            &OptimizerConfig {
                name: "sgd".into(),
                lr: 0.01,
                ..Default::default()
            },
            1 << 30,
        )?;
        let n = 128;
        let x: Vec<f32> = (0..n * 784).map(|i| ((i * 7919 % 255) as f32) / 255.0 - 0.13).collect();
        let batch = Batch {
            x: Tensor::from_vec(&[n, 784], x)?,
            target: Target::Classes((0..n).map(|i| i % 10).collect()),
        };
        let mut times = Vec::with_capacity(steps);
        for i in 0..steps + 30 {
            let t = Instant::now();
            let out = rule.step(&model, &params, &batch, Loss::CrossEntropy)?;
            opt.step(&mut params, &out.grads, &mut StepContext::empty())?;
            if i >= 30 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        let step_ms = median(times) * 1e3;
        // The GEMMs of the step: forward x·Wᵀ, weight gradients δᵀ·x, input errors δ·W.
        let shapes: [(usize, usize, usize, bool, bool, &str); 8] = [
            (128, 1000, 784, false, true, "fwd1 x·W1ᵀ"),
            (128, 1000, 1000, false, true, "fwd2 h·W2ᵀ"),
            (128, 10, 1000, false, true, "fwd3 h·W3ᵀ"),
            (10, 1000, 128, true, false, "dW3 δᵀ·h"),
            (128, 1000, 10, false, false, "dh2 δ·W3"),
            (1000, 1000, 128, true, false, "dW2 δᵀ·h"),
            (128, 1000, 1000, false, false, "dh1 δ·W2"),
            (1000, 784, 128, true, false, "dW1 δᵀ·x"),
        ];
        let mut gemm = Vec::new();
        for (m, nn, k, ta, tb, label) in shapes {
            let a = Tensor::full(&if ta { [k, m] } else { [m, k] }, 0.5, futureprop::tensor::DType::F32);
            let b = Tensor::full(&if tb { [nn, k] } else { [k, nn] }, 0.25, futureprop::tensor::DType::F32);
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
            println!("{}", serde_json::json!({"threads": threads, "step_ms": step_ms, "gemm": g}));
        } else {
            println!("futureprop step (batch 128, {threads} thread(s)): median {step_ms:.3} ms over {steps} steps");
            for (l, m, n, k, ms, gf) in gemm {
                println!("  {l:<12} {m:>4}x{n:<4}x{k:<4} {ms:>7.3} ms {gf:>6.1} GFLOP/s");
            }
        }
        Ok(())
    })
}

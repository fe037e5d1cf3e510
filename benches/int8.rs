//! Int8 × int8 → int32 GEMM (AVX512_VNNI where the CPU has it) against our f32 GEMM on
//! the same shape, C = A·Bᵀ with A m × k and B n × k: by default 128 × 1000 × 1000 (a
//! batch through a 1000-unit Linear layer). Median of REPS, each kernel timed in
//! alternation. `cargo bench --bench int8 -- --threads N [--reps R] [--m M --n N --k K]`.
//! With `--mlp`: inference of MNIST's 784-1000-1000-10 on a batch of M rows, the f32
//! model against the same model quantised w8a8 on the integer kernel.

use std::time::Instant;

mod common;
use common::arg;

use futureprop::nn::{Init, Model, ModelSpec, QuantScheme};
use futureprop::tensor::Tensor;
use futureprop::tensor::int8_gemm::{PackedI8, gemm_i8, has_vnni};

fn main() -> futureprop::Result<()> {
    futureprop::mem::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let threads = arg(&args, "--threads", 1);
    let reps = arg(&args, "--reps", 200);
    let (m, n, k) = (
        arg(&args, "--m", 128),
        arg(&args, "--n", 1000),
        arg(&args, "--k", 1000),
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| futureprop::Error::config("threads", e.to_string()))?;
    if args.iter().any(|a| a == "--mlp") {
        return pool.install(|| mlp(arg(&args, "--m", 1000), reps, threads));
    }
    let walk = |len: usize, seed: usize| -> Vec<i8> {
        (0..len)
            .map(|i| ((i * 7919 + seed) % 255) as i16 as i8)
            .collect()
    };
    let (a8, b8) = (walk(m * k, 1), walk(n * k, 2));
    let a = Tensor::from_vec(&[m, k], a8.iter().map(|&v| f32::from(v)).collect())?;
    let b = Tensor::from_vec(&[n, k], b8.iter().map(|&v| f32::from(v)).collect())?;
    let packed = PackedI8::new(&b8, n, k);
    let mut c = vec![0i32; m * n];
    let (mut tf, mut ti) = (Vec::new(), Vec::new());
    pool.install(|| -> futureprop::Result<()> {
        for _ in 0..reps {
            let t = Instant::now();
            std::hint::black_box(a.matmul(false, &b, true)?);
            tf.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            gemm_i8(&a8, m, &packed, &mut c);
            std::hint::black_box(&c);
            ti.push(t.elapsed().as_secs_f64());
        }
        Ok(())
    })?;
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (f, i) = (med(&mut tf), med(&mut ti));
    let flops = 2.0 * (m * n * k) as f64;
    println!(
        "{m}×{n}×{k}, {threads} thread(s), vnni {}: f32 {:.3} ms ({:.1} GFLOP/s), int8 {:.3} ms ({:.1} GOP/s): int8 is {:.2}× f32's throughput",
        has_vnni(),
        1e3 * f,
        flops / f / 1e9,
        1e3 * i,
        flops / i / 1e9,
        f / i
    );
    Ok(())
}

/// f32 inference of 784-1000-1000-10 against its w8a8 form on the integer kernel.
fn mlp(rows: usize, reps: usize, threads: usize) -> futureprop::Result<()> {
    let spec = ModelSpec {
        spec: "mlp:784-1000-1000-10".into(),
        activation: "relu".into(),
        bias: true,
    };
    let plain = Model::build(&spec)?;
    let mut quant = Model::build(&spec)?;
    quant.quantize(QuantScheme::parse("w8a8", false)?.expect("a scheme"))?;
    let mut p = quant.init_params(Init::Torch, 0)?;
    let x = Tensor::from_vec(
        &[rows, 784],
        (0..rows * 784)
            .map(|i| ((i * 7919) % 255) as f32 / 255.0)
            .collect(),
    )?;
    quant.calibrate(&mut p, &x)?;
    let (mut tf, mut ti) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = Instant::now();
        std::hint::black_box(plain.forward(&p, &x)?);
        tf.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        std::hint::black_box(quant.forward_integer(&p, &x)?);
        ti.push(t.elapsed().as_secs_f64());
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (f, i) = (med(&mut tf), med(&mut ti));
    println!(
        "784-1000-1000-10 inference, {rows} rows, {threads} thread(s), vnni {}: f32 {:.3} ms, w8a8 on int8 {:.3} ms (quantising inputs and packing weights included): {:.2}× f32's speed",
        has_vnni(),
        1e3 * f,
        1e3 * i,
        f / i
    );
    Ok(())
}

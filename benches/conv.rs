//! Times one convolution's forward and backward (input and parameter gradients): by
//! default a 64×1×28×28 batch through 32 filters of 5×5 (no padding), PyTorch's
//! `Conv2d(1, 32, 5)`. `cargo bench --bench conv -- --threads N [--reps R] [--json]`.

use std::time::Instant;

mod common;
use common::arg;

use futureprop::nn::{Conv2d, ConvOptions, Grads, Init, Layer, Params, Record};
use futureprop::tensor::Tensor;
use rand::SeedableRng;

fn main() -> futureprop::Result<()> {
    // As the futureprop binary: keep freed buffers in the heap.
    futureprop::mem::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let threads = arg(&args, "--threads", 1);
    let reps = arg(&args, "--reps", 50);
    let json = args.iter().any(|a| a == "--json");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| futureprop::Error::config("threads", e.to_string()))?;
    pool.install(|| {
        let (n, c, h, w, out, k) = (64, 1, 28, 28, 32, 5);
        let conv = Conv2d::new("conv", (c, h, w), out, (k, k), ConvOptions::default())?;
        let mut p = Params::new();
        let mut rng = futureprop::Rng::seed_from_u64(0);
        conv.init_params(Init::Torch, &mut rng, &mut p)?;
        let x: Vec<f32> = (0..n * c * h * w).map(|i| ((i * 7919) % 255) as f32 / 255.0).collect();
        let x = Tensor::from_vec(&[n, c * h * w], x)?;
        let mut times = Vec::with_capacity(reps);
        for i in 0..reps + 5 {
            let t = Instant::now();
            let mut rec = Record::new("conv", x.clone());
            let y = conv.forward(&p, &x, &mut rec)?;
            let mut g = Grads::new();
            conv.param_grads(&p, &rec, &y, &mut g)?;
            let dx = conv.input_grad(&p, &rec, &y)?;
            std::hint::black_box((&g, &dx));
            if i >= 5 {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        let ms = times[times.len() / 2];
        if json {
            println!("{{\"threads\": {threads}, \"ms\": {ms}}}");
        } else {
            println!("conv 64×1×28×28 → 32×5×5, forward + backward, {threads} thread(s): median {ms:.3} ms over {reps}");
        }
        Ok(())
    })
}

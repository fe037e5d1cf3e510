//! Gradient checkpointing lowers the heap high-water mark of a backprop step (counted by
//! the counting allocator, which this test binary installs; one test only, so no other
//! test allocates meanwhile).

use futureprop::mem::CountingAlloc;
use futureprop::nn::{Init, Loss, Model, ModelSpec, Segments, Target};
use futureprop::rule::{Batch, build_rule};
use futureprop::tensor::Tensor;
use rand::{Rng, SeedableRng};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[test]
fn fewer_kept_records_lower_the_peak_of_a_step() {
    // 16 hidden layers of 256: 33 layers (Linear and activation each), so auto = 6.
    let spec = format!("mlp:64{}-10", "-256".repeat(16));
    let mut m = Model::build(&ModelSpec {
        spec,
        activation: "tanh".into(),
        bias: true,
    })
    .unwrap();
    let p = m.init_params(Init::Auto, 1).unwrap();
    let mut rng = futureprop::Rng::seed_from_u64(2);
    let n = 128;
    let x: Vec<f32> = (0..n * 64).map(|_| rng.random_range(-1.0..1.0)).collect();
    let batch = Batch {
        x: Tensor::from_vec(&[n, 64], x).unwrap(),
        target: Target::Classes((0..n).map(|i| i % 10).collect()),
    };
    let mut peaks = Vec::new();
    let mut update = 0;
    for s in [Segments::Off, Segments::Count(2), Segments::Auto] {
        m.set_checkpoint_segments(s);
        let mut r = build_rule("bp").unwrap();
        let live = futureprop::mem::live();
        futureprop::mem::reset_peak();
        let out = r.step(&m, &p, &batch, Loss::CrossEntropy).unwrap();
        peaks.push(futureprop::mem::peak() - live);
        update = out.grads.size_bytes();
        drop(out);
    }
    let [off, two, auto] = peaks[..] else {
        unreachable!()
    };
    eprintln!("step peak above live: off {off} B, 2 segments {two} B, auto {auto} B");
    // The update itself (the gradients, 16·256² floats) is the same in all three.
    assert!(
        two < off && auto < two,
        "peaks off {off}, 2 {two}, auto {auto}"
    );
    // Beyond the update, auto keeps at most a quarter of what the plain step does: no
    // layer's records outside the current segment, and no per-layer errors.
    assert!(
        4 * (auto - update) < off - update,
        "peaks off {off}, auto {auto}, update {update}"
    );
    let activations = 33 * n * 256 * 4;
    assert!(
        off - auto > activations / 2,
        "checkpointing saved {} bytes of about {activations} of activations",
        off - auto
    );
}

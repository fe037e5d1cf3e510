//! Rules that update block by block (`local`, `dni`, `ff`) free each block's activations
//! once it has updated when the optimizer does not read the trace: the same update, a
//! lower heap high-water mark during the step (counted by the counting allocator, which
//! this test binary installs; one test only, so no other test allocates meanwhile).

use futureprop::mem::CountingAlloc;
use futureprop::nn::{Init, Loss, Model, ModelSpec, Target};
use futureprop::rule::{Batch, build_rule};
use futureprop::tensor::Tensor;
use rand::{Rng, SeedableRng};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[test]
fn freeing_blocks_keeps_the_update_and_lowers_the_peak() {
    let m = Model::build(&ModelSpec {
        spec: "mlp:64-512-512-512-512-10".into(),
        activation: "relu".into(),
        bias: true,
    })
    .unwrap();
    let p0 = m.init_params(Init::Auto, 1).unwrap();
    let mut rng = futureprop::Rng::seed_from_u64(2);
    let n = 128;
    let x: Vec<f32> = (0..n * 64).map(|_| rng.random_range(-1.0..1.0)).collect();
    let batch = Batch {
        x: Tensor::from_vec(&[n, 64], x).unwrap(),
        target: Target::Classes((0..n).map(|i| i % 10).collect()),
    };
    // One block's activations: the Linear output and the ReLU output, f32.
    let block_bytes = n * 512 * 4 * 2;
    for name in ["local", "dni", "ff"] {
        let mut peaks = Vec::new();
        let mut updates = Vec::new();
        for keep in [true, false] {
            let mut r = build_rule(name).unwrap();
            let mut p = p0.clone();
            r.init(&m, &mut p, 0).unwrap();
            r.keep_trace(keep);
            let live = futureprop::mem::live();
            futureprop::mem::reset_peak();
            let out = r.step(&m, &p, &batch, Loss::CrossEntropy).unwrap();
            peaks.push(futureprop::mem::peak() - live);
            let lean_records = out.trace.records[..8]
                .iter()
                .filter(|rec| rec.input.shape() == [0, 0])
                .count();
            assert_eq!(lean_records, if keep { 0 } else { 8 }, "{name} keep={keep}");
            updates.push(out.grads);
        }
        for (k, g) in updates[0].iter() {
            assert_eq!(
                g.to_vec_f64(),
                updates[1].get(k).unwrap().to_vec_f64(),
                "{name}: {k} differs when blocks are freed"
            );
        }
        // Three of the four hidden blocks are gone by the time the last one runs.
        assert!(
            peaks[1] + 2 * block_bytes < peaks[0],
            "{name}: peak {} B freeing vs {} B keeping",
            peaks[1],
            peaks[0]
        );
    }
}

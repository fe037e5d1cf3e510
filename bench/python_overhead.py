"""Overhead of a Python-driven step loop over the Rust trainer's own loop: the same MLP
(784-1000-1000-10 ReLU, bp, Adam 1e-3, batch 128) on the same MNIST batches, per-step
time of `rule.step` + `optimizer.step` from Python against `fp.train`'s steps (its
epoch_seconds / steps). REPS alternating repetitions of STEPS steps each; the overhead is
the median of the per-repetition ratios (each pair runs back to back, so a slow spell of
the machine hits both sides), with the quartiles beside it.

    python/test.sh -k nothing      # the venv target/py-venv; then a release build:
    (cd python && VIRTUAL_ENV=$PWD/../target/py-venv ../target/py-venv/bin/maturin develop -r)
    FUTUREPROP_DATA=../shared/datasets target/py-venv/bin/python bench/python_overhead.py

Measured here before the steps ran on the thread pool (2026-12-04): +7.3 % (9.73 vs
9.06 ms/step), a second run +13 %. Since (2026-12-07, release build): +3.6 % (15 paired
ratios of 100 steps, quartiles −3.2 / +12.7 %) and +3.8 % (11 of 200 steps, quartiles
−3.7 / +7.6 %).
"""
import os
import statistics
import time

import futureprop as fp

STEPS, REPS, BATCH = int(os.environ.get("STEPS", 100)), int(os.environ.get("REPS", 5)), 128
threads = int(os.environ.get("THREADS", 2))
x, y, _, _ = fp.load_dataset("mnist")
n = STEPS * BATCH
xs, ys = x[:n], y[:n]
py_t, rust_t = [], []
for rep in range(REPS):
    model = fp.Model("mlp:784-1000-1000-10", activation="relu", seed=0)
    rule, opt = fp.rules.bp(), fp.optim.adam(lr=1e-3)
    # No warm-up: the trainer's epoch starts cold too (first step, optimizer state).
    t = time.perf_counter()
    for i in range(0, n, BATCH):
        opt.step(model, rule.step(model, xs[i:i + BATCH], ys[i:i + BATCH]))
    py_t.append((time.perf_counter() - t) / STEPS)
    run = fp.train("mlp:784-1000-1000-10", xs, ys, x_test=xs[:BATCH], y_test=ys[:BATCH],
                   activation="relu", rule="bp", optimizer=fp.optim.adam(lr=1e-3), epochs=1,
                   batch_size=BATCH, seed=0, threads=threads)
    rust_t.append(run.history[0]["epoch_seconds"] / STEPS)
p, r = statistics.median(py_t), statistics.median(rust_t)
ratios = sorted(a / b for a, b in zip(py_t, rust_t))
q1, med, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
print(f"python loop {1e3 * p:.2f} ms/step, rust trainer {1e3 * r:.2f} ms/step (medians); "
      f"overhead {100 * (med - 1):+.1f} % (median of {REPS} paired ratios, quartiles "
      f"{100 * (q1 - 1):+.1f} / {100 * (q3 - 1):+.1f} %; {STEPS} steps, {threads} threads)")

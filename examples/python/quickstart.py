"""futureprop from Python: MNIST with backprop, feedback alignment and direct feedback
alignment, one epoch each, then predictions from the last run.

    pip install ./python && python examples/python/quickstart.py

MNIST is read from $FUTUREPROP_DATA (or futureprop's cache), downloaded and verified
first when missing.
"""
import time

import futureprop as fp

x, y, x_test, y_test = fp.load_dataset("mnist")
print(f"MNIST: {x.shape[0]} training and {x_test.shape[0]} test images of {x.shape[1]} pixels")
for rule in [fp.rules.bp(), fp.rules.fa(), fp.rules.dfa()]:
    t = time.time()
    run = fp.train("mlp:784-256-256-10", x, y, x_test=x_test, y_test=y_test, rule=rule,
                   optimizer=fp.optim.adam(lr=1e-3), epochs=1, activation="tanh", seed=0)
    print(f"{rule['name']:>4}: test accuracy {run.history[-1]['test_accuracy']:.4f} "
          f"after 1 epoch ({time.time() - t:.1f} s; run in {run.out})")
pred = run.predict(x_test[:8]).argmax(1)
print("predicted", pred.tolist(), "true", y_test[:8].tolist())
# How far DFA's update is from backprop's gradient, per layer, at the trained weights (the
# feedback matrices drawn from the run's seed, 0).
report = fp.diagnose(fp.Model.load(run.checkpoint), x_test, y_test, fp.rules.dfa(), batch_size=512)
print("dfa vs backprop, angle per layer:",
      ", ".join(f"{l['layer']} {l['angle_to_bp_deg']:.0f}°" for l in report["layers"]))
print("rules:", ", ".join(fp.rules.names()))

"""Several rules on the same MNIST MLP, test accuracy after every epoch, side by side;
a plot (compare_rules.png) when matplotlib is installed.

    python examples/python/compare_rules.py [EPOCHS=3]
"""
import sys

import futureprop as fp

epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
x, y, x_test, y_test = fp.load_dataset("mnist")
rules = [fp.rules.bp(), fp.rules.fa(), fp.rules.dfa(), fp.rules.kp(), fp.rules.pc(steps=5)]
curves = {}
for rule in rules:
    run = fp.train("mlp:784-256-256-10", x, y, x_test=x_test, y_test=y_test, rule=rule,
                   optimizer=fp.optim.adam(lr=1e-3), epochs=epochs, activation="tanh", seed=0)
    curves[rule["name"]] = [h["test_accuracy"] for h in run.history]
    print(f"{rule['name']:>4}: " + "  ".join(f"{a:.4f}" for a in curves[rule["name"]]))
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit(0)
for name, acc in curves.items():
    plt.plot(range(1, epochs + 1), acc, marker="o", label=name)
plt.xlabel("epoch")
plt.ylabel("test accuracy")
plt.title("MNIST 784-256-256-10 tanh, Adam 1e-3")
plt.legend()
plt.savefig("compare_rules.png", dpi=120)
print("wrote compare_rules.png")

"""CHL peer for bench/peers/anchors.sh: augustwester/chl's `CHLNet` (contrastive Hebbian
learning with feedback weakened by γ, Xie & Seung 2003) trained on MNIST as the
repository's main.py does: 784-128-10, γ 0.1, lr 0.01, batch 8, 5 epochs, free and
clamped phases of 50 Gauss-Seidel sweeps from zero states, weights and biases N(0, 0.1²),
pixels in [0, 1], one-hot targets clamped on the output, prediction the free phase's
argmax.

One change, made when the class is loaded: its logistic nonlinearity is replaced by the
hard sigmoid clip(·, 0, 1), the state nonlinearity of futureprop's `chl` (whose states
relax on an EqProp-style energy, so they sit at x = ρ(drive) only for ρ the hard
sigmoid). Nothing else is changed.

  python chl_peer.py --src DIR --data DIR --epochs 5 --seed 0

Prints one JSON line with the test accuracy after the last epoch.
"""
import argparse
import json
import os
import sys
import time

import mnist_idx
import numpy as np

p = argparse.ArgumentParser()
p.add_argument("--src", required=True, help="a checkout of augustwester/chl")
p.add_argument("--data", required=True)
p.add_argument("--epochs", type=int, default=5)
p.add_argument("--batch-size", type=int, default=8)
p.add_argument("--gamma", type=float, default=0.1)
p.add_argument("--lr", type=float, default=0.01)
p.add_argument("--hidden", type=int, default=128)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()

sys.path.insert(0, a.src)
from chlnet import CHLNet  # noqa: E402

CHLNet.sigmoid = lambda self, x: np.clip(x, 0.0, 1.0)
np.random.seed(a.seed)
xtr, ytr, xte, yte = mnist_idx.load(a.data)
xtr, xte = xtr.astype(np.float64), xte.astype(np.float64)
ttr = np.eye(10)[ytr]
net = CHLNet([784, a.hidden, 10], gamma=a.gamma, lr=a.lr)
t0 = time.time()
for epoch in range(a.epochs):
    perm = np.random.permutation(len(xtr))
    xs, ts = xtr[perm], ttr[perm]
    for j in range(0, len(xs), a.batch_size):
        xb, tb = xs[j:j + a.batch_size], ts[j:j + a.batch_size]
        net.update(net.free_phase(xb), net.clamped_phase(xb, tb))
acc = float(np.mean(np.argmax(net.free_phase(xte)[-1], axis=1) == yte))
print(json.dumps({"rule": "chl", "peer": "augustwester/chl", "numpy": np.__version__,
                  "seed": a.seed, "epochs": a.epochs, "test_accuracy": acc,
                  "seconds": time.time() - t0}))

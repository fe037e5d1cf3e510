"""Forward-Forward with the fflib package (PyPI `fflib` 0.3.0, PyTorch CPU): its own
FFLinear layers (per-layer Adam, mean-of-squares goodness, softplus loss) trained with
its FFNet.run_train_combined on MNIST, label one-hot concatenated to the image as fflib's
FFMNIST.combine_to_input does, random wrong labels as negatives (fflib's
NegativeGenerator.RANDOM), prediction by fflib's TryAllClasses probe. Data come from the
IDX files futureprop reads (fflib's own loader downloads through torchvision).

    python ff_peer.py --data DIR --widths 2000,2000 --epochs 1 --threads 2

Prints one JSON line: seconds per epoch (training loop only) and test accuracy.
"""
import argparse
import json
import time

import torch
from torch.nn.functional import one_hot

from fflib.nn.ff_linear import FFLinear
from fflib.nn.ff_net import FFNet
from fflib.probes.one_hot import TryAllClasses

from mnist_idx import load

p = argparse.ArgumentParser()
p.add_argument("--data", required=True)
p.add_argument("--widths", default="2000,2000")
p.add_argument("--epochs", type=int, default=1)
p.add_argument("--batch-size", type=int, default=128)
p.add_argument("--lr", type=float, default=0.01)
p.add_argument("--threshold", type=float, default=2.0)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)

xtr, ytr, xte, yte = (torch.from_numpy(v) for v in load(a.data))
widths = [784 + 10] + [int(w) for w in a.widths.split(",")]
net = FFNet([FFLinear(i, o, a.threshold, a.lr) for i, o in zip(widths, widths[1:])], None)


def combine(x, y):
    return torch.cat((x, one_hot(y, num_classes=10).float()), 1)


def negatives(y):
    rnd = torch.rand((y.shape[0], 10))
    rnd[torch.arange(y.shape[0]), y] = 0
    return rnd.argmax(1)


epoch_seconds = []
for epoch in range(a.epochs):
    perm = torch.randperm(xtr.shape[0])
    t0 = time.perf_counter()
    for s in range(0, xtr.shape[0], a.batch_size):
        idx = perm[s:s + a.batch_size]
        x, y = xtr[idx], ytr[idx]
        net.run_train_combined(combine(x, y), combine(x, negatives(y)))
    epoch_seconds.append(time.perf_counter() - t0)

probe = TryAllClasses(lambda x, y: net(torch.cat((x, y), 1)), 10)
correct = 0
with torch.no_grad():
    for s in range(0, xte.shape[0], 1000):
        correct += int((probe.predict(xte[s:s + 1000]) == yte[s:s + 1000]).sum())
print(json.dumps({"peer": "fflib", "version": "0.3.0", "torch": torch.__version__,
                  "widths": widths, "epochs": a.epochs, "batch_size": a.batch_size,
                  "seconds_per_epoch": sorted(epoch_seconds)[len(epoch_seconds) // 2],
                  "test_accuracy": correct / xte.shape[0]}))

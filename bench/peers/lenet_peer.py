"""One epoch of BioTorch's LeNet (le_net_mnist's layers, padding 2 on conv1 as futureprop's
`biotorch-lenet`) with backprop in PyTorch CPU: Adam lr 1e-3, batch 128, MNIST from the
IDX files futureprop reads, pixels standardised with the training mean and sd.

    python lenet_peer.py --data DIR --threads N [--epochs E]

Prints one JSON line: seconds per epoch (training loop only) and test accuracy.
"""
import argparse
import json
import time

import torch
import torch.nn as nn

from mnist_idx import load

p = argparse.ArgumentParser()
p.add_argument("--data", required=True)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--epochs", type=int, default=1)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
xtr, ytr, xte, yte = (torch.from_numpy(v) for v in load(a.data))
m, s = xtr.mean(), xtr.std()
xtr, xte = ((xtr - m) / s).view(-1, 1, 28, 28), ((xte - m) / s).view(-1, 1, 28, 28)
net = nn.Sequential(
    nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(16, 120, 5), nn.ReLU(), nn.Flatten(),
    nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
loss_fn = nn.CrossEntropyLoss()
times = []
for epoch in range(a.epochs):
    perm = torch.randperm(xtr.shape[0])
    t0 = time.perf_counter()
    for k in range(0, xtr.shape[0], 128):
        idx = perm[k:k + 128]
        opt.zero_grad(set_to_none=True)
        loss_fn(net(xtr[idx]), ytr[idx]).backward()
        opt.step()
    times.append(time.perf_counter() - t0)
with torch.no_grad():
    acc = (net(xte).argmax(1) == yte).float().mean().item()
print(json.dumps({"peer": "pytorch", "torch": torch.__version__, "seconds_per_epoch": sorted(times)[len(times) // 2],
                  "test_accuracy": acc}))

"""Peer runs for `bench/peers/run.sh`: PyTorch backprop and BioTorch's FA/DFA/uSF on
MNIST with the settings of the matching futureprop arm. Prints one JSON line.

`--rule dsn` is deeply-supervised nets (Lee et al. 2015) by PyTorch's autograd: a linear
head (PyTorch's default init, zero bias) on every hidden layer's output and the loss
CE(output) + w * sum_k CE(head_k), w = --dsn-weight, all of it backpropagated.

  python torch_peers.py --rule bp|fa|dfa|usf|dsn --data DIR --model 784-500-500-10
         --activation tanh --epochs E --batch-size 128 --lr 1e-3 --threads T --seed 0

Data are read from the IDX files and standardised with the training set's pixel mean and
standard deviation, as futureprop does. Epoch time counts the training loop only.
"""
import argparse
import mnist_idx
import json
import time

import numpy as np
import torch

p = argparse.ArgumentParser()
p.add_argument("--rule", default="bp")
p.add_argument("--data", required=True)
p.add_argument("--model", default="784-500-500-10")
p.add_argument("--activation", default="tanh")
p.add_argument("--epochs", type=int, default=1)
p.add_argument("--batch-size", type=int, default=128)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--dsn-weight", type=float, default=0.3)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)
np.random.seed(a.seed)



xtr, ytr, xte, yte = mnist_idx.load(a.data)
m, s = xtr.mean(), xtr.std()
xtr, xte = torch.from_numpy((xtr - m) / s), torch.from_numpy((xte - m) / s)
ytr, yte = torch.from_numpy(ytr), torch.from_numpy(yte)

widths = [int(w) for w in a.model.split("-")]
act = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid}[a.activation]
layers = []
for i in range(len(widths) - 1):
    layers.append(torch.nn.Linear(widths[i], widths[i + 1]))
    if i + 2 < len(widths):
        layers.append(act())
net = torch.nn.Sequential(*layers)
for mod in net:
    if isinstance(mod, torch.nn.Linear):
        torch.nn.init.xavier_uniform_(mod.weight)
        torch.nn.init.zeros_(mod.bias)
loss_fn = torch.nn.CrossEntropyLoss()
peer = "pytorch"
heads = torch.nn.ModuleList()
if a.rule == "dsn":
    for w in widths[1:-1]:
        h = torch.nn.Linear(w, widths[-1])
        torch.nn.init.zeros_(h.bias)
        heads.append(h)
elif a.rule != "bp":
    from biotorch.module.biomodule import BioModule

    peer = "biotorch"
    kw = {"output_dim": widths[-1]} if a.rule == "dfa" else {}
    net = BioModule(net, mode=a.rule, **kw)
opt = torch.optim.Adam(list(net.parameters()) + list(heads.parameters()), lr=a.lr)


def dsn_loss(x, y):
    """Global loss plus the weighted head losses, each head on its hidden layer's output."""
    total, k = 0.0, 0
    for mod in net:
        x = mod(x)
        if not isinstance(mod, torch.nn.Linear):
            total = total + a.dsn_weight * loss_fn(heads[k](x), y)
            k += 1
    return loss_fn(x, y) + total


epoch_seconds = []
for epoch in range(a.epochs):
    g = torch.Generator().manual_seed(a.seed * 1000 + epoch)
    perm = torch.randperm(60000, generator=g)
    net.train()
    t = time.perf_counter()
    for i in range(0, 60000, a.batch_size):
        b = perm[i: i + a.batch_size]
        x, y = xtr[b], ytr[b]
        opt.zero_grad(set_to_none=True)
        if a.rule == "dsn":
            dsn_loss(x, y).backward()
        else:
            out = net(x, targets=y, loss_function=loss_fn) if a.rule == "dfa" else net(x)
            loss_fn(out, y).backward()
        opt.step()
    epoch_seconds.append(time.perf_counter() - t)
net.eval()
with torch.no_grad():
    acc = (net(xte).argmax(1) == yte).float().mean().item()
print(json.dumps({"peer": peer, "rule": a.rule, "test_accuracy": acc, "seconds_per_epoch": sum(epoch_seconds) / len(epoch_seconds),
                  "torch": torch.__version__}))

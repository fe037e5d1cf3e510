"""DNI / cDNI peer for bench/peers/anchors.sh: the dni-pytorch library (koz4k/dni-pytorch,
a PyTorch implementation of Jaderberg et al. 2016's decoupled neural interfaces) training
an MNIST MLP with a `BackwardInterface` after every hidden layer, so every hidden layer
updates at once from its synthesizer's gradient, each synthesizer regresses onto the
gradient that arrives from the layer above (bootstrapped, true below the output layer),
and the output layer learns from the loss. `--cdni` conditions the synthesizers on the
one-hot label.

Synthesizers are the library's `BasicSynthesizer` with no hidden layer (linear), weight
zero-initialised by the library; their biases are zeroed here as well, so training
starts with no hidden-layer update, as futureprop's zero-initialised synthesizers do.
The library predates PyTorch 2: two renamed calls (`init.constant`, `saved_variables`)
are mapped to their current names when it is loaded; nothing else is changed.

  python dni_peer.py --src DIR --data DIR [--cdni] --model 784-256-256-10 --activation relu
         --epochs 20 --batch-size 128 --lr 1e-3 --threads 2 --seed 0

Data are read from the IDX files and standardised with the training set's pixel mean and
standard deviation, as futureprop does. Prints one JSON line with the test accuracy after
the last epoch.
"""
import argparse
import json
import os
import time
import types

import mnist_idx
import numpy as np
import torch

p = argparse.ArgumentParser()
p.add_argument("--src", required=True, help="a checkout of koz4k/dni-pytorch")
p.add_argument("--data", required=True)
p.add_argument("--cdni", action="store_true")
p.add_argument("--model", default="784-256-256-10")
p.add_argument("--activation", default="relu")
p.add_argument("--epochs", type=int, default=1)
p.add_argument("--batch-size", type=int, default=128)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)

source = open(os.path.join(a.src, "dni.py")).read()
source = source.replace("init.constant(", "init.constant_(").replace("saved_variables", "saved_tensors")
dni = types.ModuleType("dni")
exec(compile(source, "dni.py", "exec"), dni.__dict__)

xtr, ytr, xte, yte = mnist_idx.load(a.data)
m, s = xtr.mean(), xtr.std()
xtr, xte = torch.from_numpy((xtr - m) / s), torch.from_numpy((xte - m) / s)
ytr, yte = torch.from_numpy(ytr).long(), torch.from_numpy(yte).long()

widths = [int(w) for w in a.model.split("-")]
act = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}[a.activation]
classes = widths[-1]


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(widths[i], widths[i + 1]) for i in range(len(widths) - 1))
        self.interfaces = torch.nn.ModuleList()
        for w in widths[1:-1]:
            syn = dni.BasicSynthesizer(output_dim=w, n_hidden=0, context_dim=classes if a.cdni else None)
            for lin in (syn.input_trigger, syn.input_context):
                if lin is not None:
                    torch.nn.init.zeros_(lin.bias)
            self.interfaces.append(dni.BackwardInterface(syn))

    def forward(self, x, y=None):
        context = torch.nn.functional.one_hot(y, classes).float() if (a.cdni and y is not None) else None
        with dni.synthesizer_context(context):
            for layer, interface in zip(self.layers[:-1], self.interfaces):
                x = interface(act(layer(x)))
        return self.layers[-1](x)


net = Net()
opt = torch.optim.Adam(net.parameters(), lr=a.lr)
loss_fn = torch.nn.CrossEntropyLoss()
epoch_seconds = []
for epoch in range(a.epochs):
    g = torch.Generator().manual_seed(a.seed * 1000 + epoch)
    perm = torch.randperm(len(xtr), generator=g)
    net.train()
    t = time.perf_counter()
    for i in range(0, len(xtr), a.batch_size):
        b = perm[i: i + a.batch_size]
        opt.zero_grad(set_to_none=True)
        loss_fn(net(xtr[b], ytr[b]), ytr[b]).backward()
        opt.step()
    epoch_seconds.append(time.perf_counter() - t)
net.eval()
with torch.no_grad():
    acc = (net(xte).argmax(1) == yte).float().mean().item()
print(json.dumps({"peer": "dni-pytorch", "rule": "cdni" if a.cdni else "dni", "test_accuracy": acc,
                  "seconds_per_epoch": float(np.mean(epoch_seconds)), "torch": torch.__version__}))

"""EqProp peer for bench/peers/energy_speed.sh: the update loop of Laborieux et al. 2021
(github.com/Laborieux-Axel/Equilibrium-Propagation, P_MLP in model_utils.py),
re-implemented here in a few lines because the repository is not a package.

Their loop, which this follows: states start at zero; each of T steps builds the
primitive function Phi = sum_l <s_{l+1}, W_l s_l + b_l> - beta * 0.5||s_L - y||^2 and sets
s <- rho(dPhi/ds) by torch.autograd.grad (so the input layer's drive is recomputed every
step); a free phase of T1 steps, a nudged phase of T2 steps at beta; the weight gradient
is d/dtheta of (Phi(s^beta) - Phi(s^0))/(0 - beta) by backward; SGD with one learning rate
per layer. rho is their hard_sigmoid, (1 + hardtanh(x - 1))/2 = clip(x, 0, 1).

  python eqprop_peer.py --data DIR --arch 784-500-10 --T1 20 --T2 4 --beta 1.0 \
      --batch-size 20 --lrs 0.1 0.05 --threads 2 [--max-batches N]

Prints one JSON line: seconds of the training loop per epoch (extrapolated from
--max-batches when given) and test accuracy after it.
"""
import argparse
import mnist_idx
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--data", required=True)
p.add_argument("--arch", default="784-500-10")
p.add_argument("--T1", type=int, default=20)
p.add_argument("--T2", type=int, default=4)
p.add_argument("--beta", type=float, default=1.0)
p.add_argument("--batch-size", type=int, default=20)
p.add_argument("--lrs", type=float, nargs="+", default=[0.1, 0.05])
p.add_argument("--threads", type=int, default=2)
p.add_argument("--max-batches", type=int, default=0)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)



xtr, ytr, xte, yte = (torch.from_numpy(v) for v in mnist_idx.load(a.data))

widths = [int(w) for w in a.arch.split("-")]
syn = torch.nn.ModuleList(torch.nn.Linear(widths[i], widths[i + 1]) for i in range(len(widths) - 1))


def rho(v):
    return 0.5 * (1 + F.hardtanh(v - 1))


def phi(x, y1h, s, beta):
    layers = [x] + s
    total = sum((syn[i](layers[i]) * layers[i + 1]).sum(1) for i in range(len(syn)))
    if beta != 0.0:
        total = total - beta * 0.5 * ((s[-1] - y1h) ** 2).sum(1)
    return total


def relax(x, y1h, s, steps, beta):
    for _ in range(steps):
        g = torch.autograd.grad(phi(x, y1h, s, beta).sum(), s)
        s = [rho(gi).detach().requires_grad_() for gi in g]
    return s


opt = torch.optim.SGD([{"params": syn[i].parameters(), "lr": a.lrs[i]} for i in range(len(syn))])
n = xtr.shape[0]
order = torch.randperm(n)
batches = n // a.batch_size
if a.max_batches:
    batches = min(batches, a.max_batches)
t0 = time.perf_counter()
for k in range(batches):
    ix = order[k * a.batch_size:(k + 1) * a.batch_size]
    x, y = xtr[ix], ytr[ix]
    y1h = F.one_hot(y, widths[-1]).float()
    s = [torch.zeros(len(ix), w, requires_grad=True) for w in widths[1:]]
    free = relax(x, y1h, s, a.T1, 0.0)
    s0 = [v.detach().clone().requires_grad_() for v in free]
    nudged = relax(x, y1h, s0, a.T2, a.beta)
    opt.zero_grad()
    f = [v.detach() for v in free]
    nu = [v.detach() for v in nudged]
    delta = (phi(x, y1h, nu, a.beta).mean() - phi(x, y1h, f, 0.0).mean()) / (0.0 - a.beta)
    delta.backward()
    opt.step()
elapsed = time.perf_counter() - t0
per_epoch = elapsed * (n // a.batch_size) / batches
correct = 0
with torch.no_grad():
    for k in range(0, 10000, 1000):
        xb = xte[k:k + 1000]
        s = [torch.zeros(len(xb), w, requires_grad=True) for w in widths[1:]]
        with torch.enable_grad():
            s = relax(xb, None, s, a.T1, 0.0)
        correct += (s[-1].argmax(1) == yte[k:k + 1000]).sum().item()
print(json.dumps({"peer": "laborieux-eqprop (re-implemented loop)", "torch": torch.__version__,
                  "batches": batches, "seconds_per_epoch": per_epoch, "test_accuracy": correct / 10000}))

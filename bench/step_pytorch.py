"""PyTorch peer of `cargo bench --bench step`: one SGD step of mlp:784-1000-1000-10 at
batch 128 (forward, backward, update), median of many steps, and the step's GEMMs.

Usage: python bench/step_pytorch.py --threads N [--steps S] [--optimizer sgd|adam]
       [--autocast none|bf16]
Prints one JSON line. Needs a venv with torch (see bench/step_vs_pytorch.sh).
`--autocast bf16` runs the forward pass and loss under torch.autocast("cpu",
dtype=torch.bfloat16), the backward outside it, as PyTorch's recipe does.
"""
import argparse
import json
import time

import torch

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=1)
p.add_argument("--steps", type=int, default=300)
p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
p.add_argument("--autocast", default="none", choices=["none", "bf16"])
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)

model = torch.nn.Sequential(
    torch.nn.Linear(784, 1000), torch.nn.ReLU(),
    torch.nn.Linear(1000, 1000), torch.nn.ReLU(),
    torch.nn.Linear(1000, 10),
)
opt = (torch.optim.SGD(model.parameters(), lr=0.01) if a.optimizer == "sgd"
       else torch.optim.Adam(model.parameters(), lr=1e-3))
x = (torch.arange(128 * 784) * 7919 % 255).float().reshape(128, 784) / 255.0 - 0.13
y = torch.arange(128) % 10
loss_fn = torch.nn.CrossEntropyLoss()


def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.autocast == "bf16"):
        loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()


times = []
for i in range(a.steps + 30):
    t = time.perf_counter()
    step()
    if i >= 30:
        times.append(time.perf_counter() - t)
times.sort()
step_ms = times[len(times) // 2] * 1e3

shapes = [
    (128, 1000, 784, False, True, "fwd1 x·W1ᵀ"),
    (128, 1000, 1000, False, True, "fwd2 h·W2ᵀ"),
    (128, 10, 1000, False, True, "fwd3 h·W3ᵀ"),
    (10, 1000, 128, True, False, "dW3 δᵀ·h"),
    (128, 1000, 10, False, False, "dh2 δ·W3"),
    (1000, 1000, 128, True, False, "dW2 δᵀ·h"),
    (128, 1000, 1000, False, False, "dh1 δ·W2"),
    (1000, 784, 128, True, False, "dW1 δᵀ·x"),
]
gemm = []
with torch.no_grad():
    for m, n, k, ta, tb, label in shapes:
        A = torch.full((k, m) if ta else (m, k), 0.5)
        B = torch.full((n, k) if tb else (k, n), 0.25)
        opa = A.t() if ta else A
        opb = B.t() if tb else B
        ts = []
        for i in range(230):
            t = time.perf_counter()
            C = opa @ opb
            if i >= 30:
                ts.append(time.perf_counter() - t)
        ts.sort()
        s = ts[len(ts) // 2]
        gemm.append({"op": label, "m": m, "n": n, "k": k, "ms": s * 1e3, "gflops": 2 * m * n * k / s / 1e9})
print(json.dumps({"threads": a.threads, "step_ms": step_ms, "torch": torch.__version__,
                  "optimizer": a.optimizer, "autocast": a.autocast, "gemm": gemm}))

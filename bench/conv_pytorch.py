"""PyTorch CPU reference for benches/conv.rs: Conv2d(1, 32, 5) forward and backward
(input and parameter gradients) on a 64×1×28×28 batch; median milliseconds.

    python conv_pytorch.py --threads N [--reps R]
"""
import argparse
import json
import time

import torch

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=1)
p.add_argument("--reps", type=int, default=50)
a = p.parse_args()
torch.set_num_threads(a.threads)
conv = torch.nn.Conv2d(1, 32, 5)
x = torch.rand(64, 1, 28, 28, requires_grad=True)
times = []
for i in range(a.reps + 5):
    t = time.perf_counter()
    y = conv(x)
    conv.zero_grad(set_to_none=True)
    x.grad = None
    y.backward(y.detach())
    if i >= 5:
        times.append((time.perf_counter() - t) * 1e3)
times.sort()
print(json.dumps({"threads": a.threads, "ms": times[len(times) // 2], "torch": torch.__version__}))

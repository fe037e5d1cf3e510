"""The peer of bench/checkpointing.sh: the same 32 × 1024 ReLU MLP (784 inputs, 10
outputs, batch 128, Adam, cross-entropy) in PyTorch CPU, plain and with
torch.utils.checkpoint.checkpoint_sequential at ceil(sqrt(L)) segments of its L modules.

Time: median step over STEPS steps after a warm-up step. Memory, as a rough figure only
(PyTorch CPU has no allocator statistics): each mode runs in a fresh process and reports
its resident-set high-water mark (getrusage) minus the resident set after the first step;
it varies from run to run, so bench/checkpointing.sh reports the time only.

    python bench/checkpointing_pytorch.py [--steps 20] [--threads 2]   (prints JSON lines)
"""

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run(mode, steps, threads):
    import torch
    from torch.utils.checkpoint import checkpoint_sequential

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    layers = [torch.nn.Linear(784, 1024), torch.nn.ReLU()]
    for _ in range(31):
        layers += [torch.nn.Linear(1024, 1024), torch.nn.ReLU()]
    layers += [torch.nn.Linear(1024, 10)]
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(128, 784)
    y = torch.randint(0, 10, (128,))
    segments = math.ceil(math.sqrt(len(layers)))

    def step():
        opt.zero_grad(set_to_none=False)
        if mode == "checkpoint":
            out = checkpoint_sequential(model, segments, x, use_reentrant=False)
        else:
            out = model(x)
        torch.nn.functional.cross_entropy(out, y).backward()
        opt.step()

    step()
    base = rss_bytes()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "peer": "pytorch",
        "mode": mode,
        "segments": segments if mode == "checkpoint" else None,
        "activation_bytes": peak - base,
        "seconds_per_step": statistics.median(times),
        "torch": torch.__version__,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode")
    a = ap.parse_args()
    if a.mode:
        print(json.dumps(run(a.mode, a.steps, a.threads)))
        return
    for mode in ["plain", "checkpoint"]:
        out = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--steps", str(a.steps),
             "--threads", str(a.threads)],
            check=True, capture_output=True, text=True,
        )
        print(out.stdout.strip())


if __name__ == "__main__":
    main()

"""snnTorch (PyPI, CPU) on the spiking net futureprop trains as `snn:784-1000-10`: rate
coding over T steps (spikegen.rate), fc 784→1000 into Leaky(β, threshold 1, reset by
subtraction, arctan surrogate), fc 1000→10 into a Leaky readout without reset whose
membrane potential, averaged over the T steps, is the logits; cross-entropy, Adam.
Prints one JSON line: training seconds of the epoch(s), test accuracy, steps.

    python snntorch_peer.py DATA_DIR [--threads N] [--steps T] [--epochs E] [--max-steps S]
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import snntorch as snn
from snntorch import spikegen, surrogate

sys.path.insert(0, os.path.dirname(__file__))
from mnist_idx import load  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("data")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--steps", type=int, default=25)
p.add_argument("--epochs", type=int, default=1)
p.add_argument("--max-steps", type=int, default=0)
p.add_argument("--batch", type=int, default=128)
p.add_argument("--lr", type=float, default=5e-4)
p.add_argument("--beta", type=float, default=0.95)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)
xtr, ytr, xte, yte = (torch.from_numpy(v) for v in load(a.data))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(784, 1000)
        self.lif1 = snn.Leaky(beta=a.beta, spike_grad=surrogate.atan())
        self.fc2 = torch.nn.Linear(1000, 10)
        self.lif2 = snn.Leaky(beta=a.beta, reset_mechanism="none")

    def forward(self, spikes):  # [T, B, 784]
        mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
        total = 0
        for t in range(spikes.shape[0]):
            spk1, mem1 = self.lif1(self.fc1(spikes[t]), mem1)
            _, mem2 = self.lif2(self.fc2(spk1), mem2)
            total = total + mem2
        return total / spikes.shape[0]


net = Net()
opt = torch.optim.Adam(net.parameters(), lr=a.lr, betas=(0.9, 0.999))
loss_fn = torch.nn.CrossEntropyLoss()
steps, seconds = 0, 0.0
for epoch in range(a.epochs):
    perm = torch.randperm(len(xtr))
    t0 = time.perf_counter()
    for i in range(0, len(xtr), a.batch):
        idx = perm[i:i + a.batch]
        out = net(spikegen.rate(xtr[idx], num_steps=a.steps))
        loss = loss_fn(out, ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        if a.max_steps and steps >= a.max_steps:
            break
    seconds += time.perf_counter() - t0
correct = 0
with torch.no_grad():
    for i in range(0, len(xte), 1000):
        out = net(spikegen.rate(xte[i:i + 1000], num_steps=a.steps))
        correct += (out.argmax(1) == yte[i:i + 1000]).sum().item()
print(json.dumps({"snntorch": snn.__version__, "torch": torch.__version__, "train_seconds": seconds, "steps": steps,
                  "seconds_per_step": seconds / steps, "test_accuracy": correct / len(xte)}))

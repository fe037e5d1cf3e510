"""A futureprop model loaded into PyTorch: train an MLP (784-256-256-10, tanh, DFA) and
LeNet-5 (bp) one epoch each with the Python package, save them with `Model.save`, load
them into PyTorch modules whose layers carry the same names
(`load_state_dict(safetensors.torch.load_file(path))`, strict), and compare the logits
on 1000 MNIST test images: max |futureprop − PyTorch|.

    python/test.sh -k nothing     # builds the extension into python/py/futureprop
    python3 -m venv TORCH_VENV && TORCH_VENV/bin/pip install torch safetensors numpy
    PYTHONPATH=python/py FUTUREPROP_DATA=../shared/datasets TORCH_VENV/bin/python bench/python_torch_roundtrip.py

Measured here: MLP 9.5e-06, LeNet-5 4.8e-06 (logits up to 11), the same argmax on all.
"""
import os
import tempfile

import numpy as np
import safetensors.torch
import torch
from torch import nn

import futureprop as fp


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(784, 256), nn.Linear(256, 256), nn.Linear(256, 10)

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


class LeNet5(nn.Module):
    """futureprop's lenet5: conv 6@5×5 (padding 2), tanh, avg pool, conv 16@5×5, tanh,
    avg pool, conv 120@5×5, tanh, fc 84, tanh, fc 10; inputs flattened 1×28×28."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.conv3 = nn.Conv2d(16, 120, 5)
        self.fc1, self.fc2 = nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
        x = x.view(-1, 1, 28, 28)
        x = nn.functional.avg_pool2d(torch.tanh(self.conv1(x)), 2)
        x = nn.functional.avg_pool2d(torch.tanh(self.conv2(x)), 2)
        x = torch.tanh(self.conv3(x)).flatten(1)
        return self.fc2(torch.tanh(self.fc1(x)))


x, y, xt, yt = fp.load_dataset("mnist")
xt = xt[:1000]
with tempfile.TemporaryDirectory() as d:
    for name, model, rule, torch_model in [
        ("mlp 784-256-256-10 (dfa)", fp.Model("mlp:784-256-256-10", activation="tanh", seed=0), "dfa", MLP()),
        ("lenet5 (bp)", fp.Model("lenet5", activation="tanh", seed=0), "bp", LeNet5()),
    ]:
        fp.train(model, x, y, x_test=xt, y_test=yt[:1000], rule=rule, epochs=1, seed=0)
        path = os.path.join(d, "m.safetensors")
        model.save(path)
        torch_model.load_state_dict(safetensors.torch.load_file(path), strict=True)
        ours = model.predict(xt)
        with torch.no_grad():
            theirs = torch_model(torch.from_numpy(xt)).numpy()
        acc = np.mean(ours.argmax(1) == yt[:1000])
        print(f"{name}: max |logit difference| {np.abs(ours - theirs).max():.2e} "
              f"(logits up to {np.abs(ours).max():.1f}; accuracy {acc:.3f}, same argmax on "
              f"{np.mean(ours.argmax(1) == theirs.argmax(1)):.3f})")

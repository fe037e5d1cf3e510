"""A model trained by futureprop (here with feedback alignment), loaded into PyTorch.

    pip install torch safetensors   # beside futureprop
    python examples/python/to_pytorch.py

`Model.save` writes PyTorch's state-dict layout: each Linear as `fcK.weight` [out, in] and
`fcK.bias`, so a module whose layers carry the same names loads it as is.
"""
import numpy as np
import safetensors.torch
import torch
from torch import nn

import futureprop as fp

x, y, x_test, y_test = fp.load_dataset("mnist")
model = fp.Model("mlp:784-256-10", activation="relu", seed=0)
fp.train(model, x, y, rule=fp.rules.fa(), epochs=1)
model.save("fa-mlp.safetensors")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, 256), nn.Linear(256, 10)

    def forward(self, v):
        return self.fc2(torch.relu(self.fc1(v)))


net = Net()
net.load_state_dict(safetensors.torch.load_file("fa-mlp.safetensors"))
with torch.no_grad():
    logits = net(torch.from_numpy(x_test)).numpy()
print("PyTorch test accuracy", np.mean(logits.argmax(1) == y_test))
print("max |futureprop − PyTorch| logit", float(np.abs(model.predict(x_test) - logits).max()))

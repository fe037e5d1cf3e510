"""PC peer for bench/energy.sh: PCX (pip `pcx`, CPU JAX, JIT-compiled) training the MLP of
its MNIST discriminative experiments, 784-128-128-128-10, with T inference steps per
batch: value nodes initialised by a forward pass, T steps of SGD on the energy over the
hidden nodes (output node clamped to the one-hot target, squared-error energies), then
one Adam step on the weights. Same settings as futureprop's `pc` arm in bench/energy.sh.

  python pcx_peer.py --data DIR --T 5 --batch-size 128 --lr-h 0.1 --lr-w 1e-3 --threads 2
         [--epochs E --seed S]

As PCX's own examples do, the node optimiser covers the unfrozen nodes only (the output
node stays clamped to the target) and the weight gradient of the batch-summed energy is
scaled by 1/batch. Prints one JSON line: seconds per training epoch (the first batch,
which carries the JIT compilation, excluded: it is timed separately) and the test
accuracy after the last epoch.
"""
import argparse
import mnist_idx
import json
import os
import time

p = argparse.ArgumentParser()
p.add_argument("--data", required=True)
p.add_argument("--T", type=int, default=5)
p.add_argument("--batch-size", type=int, default=128)
p.add_argument("--lr-h", type=float, default=0.1)
p.add_argument("--lr-w", type=float, default=1e-3)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--activation", choices=["relu", "gelu", "tanh"], default="relu")
p.add_argument("--max-batches", type=int, default=0)
p.add_argument("--epochs", type=int, default=1)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
os.environ.setdefault(
    "XLA_FLAGS",
    f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={a.threads}",
)

import numpy as np  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
import pcx as px  # noqa: E402
import pcx.predictive_coding as pxc  # noqa: E402
import pcx.nn as pxnn  # noqa: E402
import pcx.utils as pxu  # noqa: E402
import pcx.functional as pxf  # noqa: E402



xtr, ytr, xte, yte = mnist_idx.load(a.data)
m, s = xtr.mean(), xtr.std()
xtr, xte = (xtr - m) / s, (xte - m) / s


# GELU in its exact form, as futureprop's `gelu`.
ACT = {"relu": jax.nn.relu, "tanh": jnp.tanh, "gelu": lambda x: jax.nn.gelu(x, approximate=False)}[a.activation]


class Net(pxc.EnergyModule):
    def __init__(self, widths):
        super().__init__()
        self.layers = [pxnn.Linear(widths[i], widths[i + 1]) for i in range(len(widths) - 1)]
        self.vodes = [pxc.Vode() for _ in range(len(widths) - 2)] + [pxc.Vode(pxc.se_energy)]
        self.vodes[-1].h.frozen = True

    def __call__(self, x, y):
        for v, layer in zip(self.vodes[:-1], self.layers[:-1]):
            x = v(ACT(layer(x)))
        x = self.vodes[-1](self.layers[-1](x))
        if y is not None:
            self.vodes[-1].set("h", y)
        return self.vodes[-1].get("u")


@pxf.vmap(pxu.M(pxc.VodeParam | pxc.VodeParam.Cache).to((None, 0)), in_axes=(0, 0), out_axes=0)
def forward(x, y, *, model):
    return model(x, y)


@pxf.vmap(pxu.M(pxc.VodeParam | pxc.VodeParam.Cache).to((None, 0)), in_axes=(0,), out_axes=(None, 0), axis_name="batch")
def energy(x, *, model):
    y_ = model(x, None)
    return jax.lax.psum(model.energy(), "batch"), y_


@pxf.jit(static_argnums=0)
def train_on_batch(T, x, y, *, model, optim_w, optim_h):
    model.train()
    with pxu.step(model, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):
        forward(x, y, model=model)
    optim_h.init(pxu.M_hasnot(pxc.VodeParam, frozen=True)(model))
    for _ in range(T):
        with pxu.step(model, clear_params=pxc.VodeParam.Cache):
            _, g = pxf.value_and_grad(pxu.M_hasnot(pxc.VodeParam, frozen=True).to([False, True]), has_aux=True)(energy)(x, model=model)
        optim_h.step(model, g["model"])
    optim_h.clear()
    with pxu.step(model, clear_params=pxc.VodeParam.Cache):
        _, g = pxf.value_and_grad(pxu.M(pxnn.LayerParam).to([False, True]), has_aux=True)(energy)(x, model=model)
    optim_w.step(model, g["model"], scale_by=1.0 / x.shape[0])


@pxf.jit()
def eval_on_batch(x, *, model):
    model.eval()
    with pxu.step(model, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):
        y_ = forward(x, None, model=model).argmax(axis=-1)
    return y_


bs = a.batch_size
px.RKG.seed(a.seed)
model = Net([784, 128, 128, 128, 10])
with pxu.step(model, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):
    forward(jnp.zeros((bs, 784)), None, model=model)
    optim_h = pxu.Optim(lambda: optax.sgd(a.lr_h))
    optim_w = pxu.Optim(lambda: optax.adam(a.lr_w), pxu.M(pxnn.LayerParam)(model))

rng = np.random.default_rng(a.seed)
nb = 60000 // bs
if a.max_batches:
    nb = min(nb, a.max_batches)
onehot = np.eye(10, dtype=np.float32)
elapsed, compile_s = 0.0, 0.0
for epoch in range(a.epochs):
    order = rng.permutation(60000)
    first = 0
    if epoch == 0:
        t0 = time.perf_counter()
        train_on_batch(a.T, jnp.asarray(xtr[order[:bs]]), jnp.asarray(onehot[ytr[order[:bs]]]), model=model, optim_w=optim_w, optim_h=optim_h)
        jax.block_until_ready(model.layers[0].nn.weight.get())
        compile_s = time.perf_counter() - t0
        first = 1
    t0 = time.perf_counter()
    for k in range(first, nb):
        ix = order[k * bs:(k + 1) * bs]
        train_on_batch(a.T, jnp.asarray(xtr[ix]), jnp.asarray(onehot[ytr[ix]]), model=model, optim_w=optim_w, optim_h=optim_h)
    jax.block_until_ready(model.layers[0].nn.weight.get())
    elapsed += (time.perf_counter() - t0) * (60000 // bs) / max(nb - first, 1)
elapsed /= a.epochs
# The vodes have the training batch's shape: the last test batch is padded and its
# padding ignored.
correct = 0
for k in range(0, len(xte), bs):
    xb = xte[k:k + bs]
    pad = np.zeros((bs - len(xb), xb.shape[1]), dtype=xb.dtype)
    pred = np.asarray(eval_on_batch(jnp.asarray(np.concatenate([xb, pad])), model=model))[:len(xb)]
    correct += int((pred == yte[k:k + bs]).sum())
import importlib.metadata as md  # noqa: E402
print(json.dumps({"peer": f"pcx {md.version('pcx')} (jax {jax.__version__})", "seconds_per_epoch": elapsed,
                  "compile_seconds": compile_s, "test_accuracy": correct / len(xte),
                  "epochs": a.epochs, "seed": a.seed, "activation": a.activation}))

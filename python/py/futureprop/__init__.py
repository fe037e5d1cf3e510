"""futureprop: train neural networks with any credit-assignment rule (backprop, feedback
alignment and its relatives, predictive coding, equilibrium propagation, Forward-Forward,
synthetic gradients, local losses, ...) and any optimizer, from numpy arrays.

    import numpy as np, futureprop as fp
    run = fp.train("mlp:784-256-10", x, y, rule=fp.rules.dfa(), optimizer=fp.optim.adam(lr=1e-3),
                   epochs=5, x_test=xt, y_test=yt)
    run.history[-1]["test_accuracy"], run.predict(xt).argmax(1)

`fp.rules.<name>(**settings)` and `fp.optim.<name>(**settings)` take the settings of the
Rust technique (`help(fp.rules.pc)` lists them with their defaults); any other keyword
of `fp.train` is a `futureprop train` config key (`activation`, `init`, `seed`, `loss`,
`threads`, ...).
"""
import json
import os
import tempfile

import numpy as np

from . import _futureprop as _native
from ._futureprop import FutureError, Model, Update

__all__ = ["FutureError", "Model", "Run", "Update", "bench", "load_dataset", "optim", "predict",
           "reproduce", "rules", "train"]

Model.__doc__ = """Model(spec, activation="relu", bias=True, init="auto", seed=0): a model and its
parameters. `predict(x)`, `state_dict()` / `load_state_dict(d)` (numpy arrays by name),
`save(path)` / `Model.load(path)` (safetensors in PyTorch's layout: Linear weights
`[out, in]` as `fc1.weight`, `fc1.bias`, ...; convolutions `conv1.weight`
`[out, in/groups, kh, kw]`; so a PyTorch module whose layers carry the same names loads
it with `load_state_dict(safetensors.torch.load_file(path))`)."""


class Choice(dict):
    """A rule or optimizer with its settings: the table a config file's [rule] holds.
    `fp.train` takes it; its `step` drives training one batch at a time:

        rule, opt = fp.rules.dfa(), fp.optim.adam(lr=1e-3)
        update = rule.step(model, x, y)       # an fp.Update: .loss, .grads()
        opt.step(model, update)
    """

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.items() if k != "name")
        return f"{self['name']}({args})"

    def _settings(self, *drop):
        return json.dumps({k: v for k, v in self.items() if k != "name" and k not in drop})

    def step(self, model, *args, loss="cross-entropy", seed=0):
        """A rule: `step(model, x, y)` returns the batch's `Update` (the first call
        initialises the rule's state in `model`). An optimizer: `step(model, update)`
        applies the update to `model`'s parameters."""
        state = self.__dict__.get("_state")
        if self._kind == "rule":
            x, y = args
            x = _features("x", x)
            y = _labels("y", y, x.shape[0])
            if state is None:
                state = self.__dict__["_state"] = _native.RuleState(self["name"], self._settings(), loss, seed)
            return state.step(model, x, y)
        (update,) = args
        if state is None:
            state = self.__dict__["_state"] = _native.OptimizerState(
                self["name"], self.get("lr"), self._settings("lr"))
        state.step(model, update)


class _Technique:
    def __init__(self, kind, name, summary, paper, fields):
        if kind == "optimizer":
            # The learning rate is a run setting (`lr`), taken here for convenience.
            fields = [{"key": "lr", "type": "f64", "default": None,
                       "doc": "Learning rate (default: the optimizer's own, see `futureprop optimizers`)."}] + fields
        self.kind, self.name, self.fields = kind, name, {f["key"]: f for f in fields}
        lines = [f"{name}: {summary} ({paper})", ""]
        if fields:
            lines.append("Settings (keyword, type, default):")
            for f in fields:
                lines.append(f"  {f['key']} ({f['type']}, default {f['default']!r}): {f['doc']}")
        else:
            lines.append("No settings of its own.")
        self.__doc__ = "\n".join(lines)

    def __call__(self, **settings):
        unknown = sorted(set(settings) - set(self.fields))
        if unknown:
            known = ", ".join(self.fields) or "none"
            raise TypeError(f"{self.kind} {self.name} has no setting {', '.join(unknown)} (its settings: {known})")
        c = Choice(name=self.name, **settings)
        c._kind = self.kind
        return c

    def __repr__(self):
        return f"<futureprop {self.kind} {self.name}>"


class _Registry:
    def __init__(self, kind, listing):
        self._kind = kind
        self._names = []
        for name, summary, paper, fields in listing:
            setattr(self, name, _Technique(kind, name, summary, paper, json.loads(fields)))
            self._names.append(name)
        self.__doc__ = f"The {kind}s: " + ", ".join(self._names)

    def names(self):
        """The names, in registry order."""
        return list(self._names)

    def __iter__(self):
        return (getattr(self, n) for n in self._names)

    def __dir__(self):
        return list(self._names) + ["names"]


rules = _Registry("rule", _native.rules())
optim = _Registry("optimizer", _native.optimizers())


def _features(name, a):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples × features), got shape {a.shape}")
    if a.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {a.dtype}; convert with {name}.astype(np.float32)")
    if a.shape[0] == 0:
        raise ValueError(f"{name} holds no samples")
    # Zero-copy when already contiguous float32; a strided view is copied once here.
    return np.ascontiguousarray(a)


def _labels(name, y, rows):
    if not isinstance(y, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of class labels, got {type(y).__name__}")
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one class label per sample), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class labels, got {y.dtype}")
    if len(y) != rows:
        raise ValueError(f"{name} has {len(y)} labels for {rows} samples")
    if len(y) and y.min() < 0:
        raise ValueError(f"{name} holds a negative class label ({y.min()})")
    return np.ascontiguousarray(y, dtype=np.int64)


class Run:
    """A finished training run: its summary, per-epoch history and output folder."""

    def __init__(self, summary, out):
        self.summary, self.out = summary, out
        self.history = []
        path = os.path.join(out, "metrics.jsonl")
        if os.path.exists(path):
            with open(path) as f:
                self.history = [r for r in map(json.loads, f) if r.get("type") == "epoch"]

    @property
    def checkpoint(self):
        """The path of the run's last checkpoint (safetensors)."""
        return os.path.join(self.out, "checkpoint.safetensors")

    def predict(self, x):
        """The trained model's outputs on `x` (float32, samples × features)."""
        return predict(self.checkpoint, x)

    def __repr__(self):
        return f"<futureprop Run {self.out}: test accuracy {self.summary.get('test_accuracy')}>"


def train(model, x, y, *, rule="bp", optimizer="adam", epochs=1, batch_size=128, x_test=None,
          y_test=None, out=None, **config):
    """Trains `model` (a model spec such as "mlp:784-256-10", or an `fp.Model`, which
    training starts from and leaves trained) on float32 features `x` and
    integer labels `y`, evaluating on `x_test`/`y_test` (default: the training set) after
    every epoch. `rule` and `optimizer` are names or `fp.rules.<name>(...)` /
    `fp.optim.<name>(...)`; other keywords are config keys of `futureprop train`. The run
    is written to `out` (default: a new temporary folder). Returns a `Run`."""
    x = _features("x", x)
    y = _labels("y", y, x.shape[0])
    if (x_test is None) != (y_test is None):
        raise ValueError("give both x_test and y_test, or neither")
    if x_test is None:
        x_test, y_test = x, y
    else:
        x_test = _features("x_test", x_test)
        y_test = _labels("y_test", y_test, x_test.shape[0])
        if x_test.shape[1] != x.shape[1]:
            raise ValueError(f"x_test has {x_test.shape[1]} features, x has {x.shape[1]}")
    classes = int(max(y.max(), y_test.max())) + 1
    if isinstance(optimizer, Choice) and "lr" in optimizer:
        optimizer = Choice(optimizer)
        lr = optimizer.pop("lr")
        if lr is not None:
            config.setdefault("lr", lr)
    out = out or tempfile.mkdtemp(prefix="futureprop-")
    obj = model if isinstance(model, Model) else None
    cfg = dict(config, model=obj.spec if obj else model, rule=rule, optimizer=optimizer, epochs=epochs,
               batch_size=batch_size, out=str(out), quiet=config.get("quiet", True))
    summary = json.loads(_native.train_arrays(json.dumps(cfg), x, y, x_test, y_test, classes, obj))
    return Run(summary, str(out))


def predict(checkpoint, x):
    """The outputs of a saved run's model (`checkpoint`: its checkpoint.safetensors) on
    float32 features `x`."""
    return Model.load(os.fspath(checkpoint)).predict(_features("x", x))


def load_dataset(name, data_dir=None, normalize="standard"):
    """A named dataset ("mnist", "fashion-mnist") as (x, y, x_test, y_test): float32
    features scaled by `normalize` ("standard", "unit", "none") and int64 labels. Read
    from `data_dir` (default: $FUTUREPROP_DATA, else the cache), downloaded and verified
    first when missing."""
    return _native.load_dataset(name, None if data_dir is None else os.fspath(data_dir), normalize)


def bench(suite="quick", data_dir=None, out=None, seeds=None, threads=None):
    """Runs a benchmark suite ("quick", "standard", ... or a suite TOML file) as
    `futureprop bench` does; returns its report (a dict with one row per arm)."""
    return json.loads(_native.bench(os.fspath(suite), None if data_dir is None else os.fspath(data_dir),
                                    None if out is None else os.fspath(out), seeds, threads))


def reproduce(rows=(), out=None, data_dir=None, threads=None, resume=False):
    """Checks registry rows (names; all when empty) against their published numbers as
    `futureprop reproduce --check` does, writing the run to `out` (default: a new temporary
    folder); returns the report: per row paper vs ours, the verdict and the times. A
    failing row is a verdict in the report, not an exception."""
    out = out or tempfile.mkdtemp(prefix="futureprop-reproduce-")
    return json.loads(_native.reproduce(list(rows), os.fspath(out),
                                        None if data_dir is None else os.fspath(data_dir), threads, resume))

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
import collections.abc
import json
import os
import tempfile

import numpy as np

from . import _futureprop as _native
from ._futureprop import FutureError, Model, Update

__all__ = ["FutureError", "Model", "Run", "Update", "bench", "diagnose", "load_dataset", "optim",
           "predict", "reproduce", "rules", "train"]

# An update reads and writes like a dict of numpy arrays (tensor name → update direction).
collections.abc.MutableMapping.register(Update)
Update.__doc__ = """The update a rule's step produced: `update["fc1.weight"]` (a numpy copy of that
tensor's update direction, gradient sign convention), `update[name] = array` (the one
the optimizer then applies), `keys()`, `items()`, `len(update)`; `update.loss` is the
batch's loss. `grads()` / `set_grads(d)` read and write them all as a dict."""

Model.__doc__ = """Model(spec, activation="relu", bias=True, init=None, seed=0): a model and its
parameters. `spec` is a model spec ("mlp:784-256-10", "lenet5", "resmlp:...") or the path of a
TOML model file (the format: `examples/models/`); `init` defaults to `futureprop train`'s. `predict(x)`, `state_dict()` / `load_state_dict(d)` (numpy arrays by name),
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
_technique_names = set(rules.names()) | set(optim.names())


def _features(name, a):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples × features), got shape {a.shape}")
    if a.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {a.dtype}; convert with {name}.astype(np.float32)")
    if a.shape[0] == 0:
        raise ValueError(f"{name} holds no samples")
    # A C-contiguous float32 array passes as it is (fp.train and predict then read its
    # memory in place); a strided view is copied once here.
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


def _is_technique(a):
    return isinstance(a, (Choice, _Technique)) or (isinstance(a, str) and a in _technique_names)


def train(model, *data, rule="bp", optimizer="adam", epochs=1, batch_size=128, x_test=None,
          y_test=None, validation=None, callback=None, out=None, data_dir=None, **config):
    """Trains `model` and returns a `Run` (its `history`: one dict per epoch).

        fp.train(model, x, y, rule=..., optimizer=..., epochs=...)
        fp.train(model, rule, optimizer, x, y, epochs=...)
        fp.train(model, "mnist", rule=...)            # a named dataset (and its test set)

    `model` is a model spec ("mlp:784-256-10", a TOML model file) or an `fp.Model`, which
    training starts from and leaves trained. `x` holds float32 features (samples ×
    features), `y` integer class labels. A C-contiguous float32 array is read in place,
    not copied (do not write to it while `train` runs); a strided one is copied once;
    another dtype is refused. `rule` and `optimizer` are names or
    `fp.rules.<name>(...)` / `fp.optim.<name>(...)`. Each epoch is evaluated on
    `x_test`/`y_test` (default: the training set; a named dataset's test set) and, with
    `validation=(x_val, y_val)`, on those too (`validation_accuracy`, ...).
    `callback(record)` is called with each epoch's record as it ends; returning `False`
    stops the run (the epoch then under way is cut short, evaluated and checkpointed).
    Other keywords are config keys of `futureprop train` (`activation`, `seed`, `loss`,
    `threads`, `max_seconds`, ...). The run is written to `out` (default: a new
    temporary folder)."""
    if len(data) in (3, 4) and _is_technique(data[0]):
        if rule != "bp" or optimizer != "adam":
            raise TypeError("rule and optimizer given both by position and by keyword")
        rule, optimizer, data = data[0], data[1], data[2:]
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    if isinstance(optimizer, Choice) and "lr" in optimizer:
        optimizer = Choice(optimizer)
        lr = optimizer.pop("lr")
        if lr is not None:
            config.setdefault("lr", lr)
    rule, optimizer = (t() if isinstance(t, _Technique) else t for t in (rule, optimizer))
    out = out or tempfile.mkdtemp(prefix="futureprop-")
    obj = model if isinstance(model, Model) else None
    cfg = dict(config, model=obj.spec if obj else os.fspath(model), rule=rule, optimizer=optimizer,
               epochs=epochs, batch_size=batch_size, out=os.fspath(out), quiet=config.get("quiet", True))
    if len(data) == 1 and isinstance(data[0], str):
        # A named dataset, read (downloaded first when missing) as `futureprop train` reads
        # it: `train_limit`, `test_limit`, `normalize` and `validation=N` (the last N
        # training samples held out) apply.
        if x_test is not None or y_test is not None:
            raise ValueError("a named dataset brings its own test set: leave out x_test and y_test")
        if validation is not None and (isinstance(validation, bool) or not isinstance(validation, int)):
            raise TypeError("with a named dataset, validation is a number of training samples to hold out")
        cfg.update(dataset=data[0], **({} if validation is None else {"validation": validation}))
        if data_dir is not None:
            cfg["data_dir"] = os.fspath(data_dir)
        summary = json.loads(_native.train_arrays(json.dumps(cfg), model=obj, callback=callback))
        return Run(summary, os.fspath(out))
    if len(data) != 2:
        raise TypeError("train(model, x, y, ...), train(model, rule, optimizer, x, y, ...) or "
                        f"train(model, dataset_name, ...): got {len(data)} positional arguments after the model")
    x, y = data
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
    x_val = y_val = None
    if validation is not None:
        if not (isinstance(validation, (tuple, list)) and len(validation) == 2):
            raise TypeError("validation must be a pair (x_val, y_val) of numpy arrays")
        x_val = _features("validation x", validation[0])
        y_val = _labels("validation y", validation[1], x_val.shape[0])
        if x_val.shape[1] != x.shape[1]:
            raise ValueError(f"validation x has {x_val.shape[1]} features, x has {x.shape[1]}")
    labels = [y.max(), y_test.max()] + ([] if y_val is None else [y_val.max()])
    classes = int(max(labels)) + 1
    summary = json.loads(_native.train_arrays(json.dumps(cfg), x, y, x_test, y_test, classes, obj,
                                              x_val, y_val, callback))
    return Run(summary, os.fspath(out))


def diagnose(model, x=None, y=None, rule="bp", *, batch_size=None, curvature=False, loss="cross-entropy",
             seed=0, data_dir=None):
    """How far a rule's update is from the true gradient, per layer, as `futureprop
    diagnose` reports it: a dict with `layers` (per Linear layer: `cosine_to_bp`,
    `angle_to_bp_deg`, the norms, and for rules with feedback matrices the angle between
    W and its feedback) and, with `curvature=True`, `sharpness`, `hessian_trace` and
    `gradient_noise_scale`.

        fp.diagnose(model, x, y, fp.rules.fa())   # an fp.Model on arrays
        fp.diagnose("runs/x/checkpoint.safetensors")  # a saved run, on its own dataset

    The batch is the first `batch_size` rows (default: 128 for arrays, the run's own batch
    size for a saved run).
    For an `fp.Model`, a rule that has stepped on it (`rule.step(model, ...)`) is
    diagnosed with its own state (its feedback matrices, ...); a fresh rule draws its
    state from `seed`."""
    if not isinstance(model, Model):
        if x is not None or y is not None:
            raise TypeError("a saved run is diagnosed on its own dataset: give x and y with an fp.Model")
        return json.loads(_native.diagnose_checkpoint(os.fspath(model), None if data_dir is None else
                                                      os.fspath(data_dir), batch_size, curvature))
    if x is None or y is None:
        raise TypeError("diagnose(model, x, y, rule): an fp.Model needs features x and labels y")
    x = _features("x", x)
    y = _labels("y", y, x.shape[0])
    if isinstance(rule, _Technique):
        rule = rule()
    name, settings = (rule["name"], rule._settings()) if isinstance(rule, Choice) else (rule, "{}")
    state = rule.__dict__.get("_state") if isinstance(rule, Choice) and rule._kind == "rule" else None
    return json.loads(_native.diagnose_model(model, name, settings, x, y, batch_size or 128, loss, curvature,
                                             seed, state))


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

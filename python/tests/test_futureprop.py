"""The Python package against its contract: arrays in and out with their shapes and
dtypes, clear errors on bad input, the technique registry with its settings, the same
seed giving the same history, and the GIL released while training."""
import contextlib
import os
import signal
import threading

import numpy as np
import pytest

import futureprop as fp


def blobs(n=600, f=20, k=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, f)).astype(np.float32)
    y = (x @ rng.normal(size=(f, k))).argmax(1)
    return x, y


@contextlib.contextmanager
def ctrl_c_after(seconds):
    """Sends this process SIGINT after `seconds` and expects KeyboardInterrupt. A shell
    starts background jobs with SIGINT ignored, and Python then leaves it so: Python's
    own handler is installed for the duration."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)


def test_train_learns_and_predict_gives_one_row_per_sample():
    x, y = blobs()
    run = fp.train("mlp:20-32-3", x[:500], y[:500], x_test=x[500:], y_test=y[500:],
                   rule=fp.rules.dfa(), optimizer=fp.optim.adam(lr=1e-2), epochs=5,
                   batch_size=50, seed=0, threads=1)
    assert len(run.history) == 5
    acc = [h["test_accuracy"] for h in run.history]
    assert acc[-1] > 0.8 > acc[0] - 0.5, acc
    assert run.summary["test_accuracy"] == pytest.approx(acc[-1])
    out = run.predict(x[500:])
    assert out.shape == (100, 3) and out.dtype == np.float32
    assert np.mean(out.argmax(1) == y[500:]) == pytest.approx(acc[-1])


def test_the_same_seed_gives_the_same_history_and_another_does_not():
    x, y = blobs()
    h = [fp.train("mlp:20-16-3", x, y, rule="fa", epochs=3, batch_size=64, seed=s, threads=1).history
         for s in (4, 4, 5)]
    loss = [[r["train_loss"] for r in hist] for hist in h]
    assert loss[0] == loss[1]
    assert loss[0] != loss[2]


def test_bad_arrays_are_refused_by_name():
    x, y = blobs()
    with pytest.raises(TypeError, match="x must be float32, got float64"):
        fp.train("mlp:20-8-3", x.astype(np.float64), y)
    with pytest.raises(ValueError, match="x must be 2-D"):
        fp.train("mlp:20-8-3", x.reshape(-1), y)
    with pytest.raises(TypeError, match="integer class labels"):
        fp.train("mlp:20-8-3", x, y.astype(np.float32))
    with pytest.raises(ValueError, match="599 labels for 600 samples"):
        fp.train("mlp:20-8-3", x, y[:-1])
    with pytest.raises(TypeError, match="numpy array"):
        fp.train("mlp:20-8-3", x.tolist(), y)
    with pytest.raises(ValueError, match="x_test has 19 features"):
        fp.train("mlp:20-8-3", x, y, x_test=x[:, :19].copy(), y_test=y)
    # A strided view is accepted (copied once), not refused.
    run = fp.train("mlp:10-8-3", x[:, ::2], y, epochs=1, threads=1)
    assert len(run.history) == 1


def test_rust_errors_arrive_with_their_messages():
    x, y = blobs()
    with pytest.raises(fp.FutureError, match="'4x'"):
        fp.train("mlp:20-32-4x", x, y)
    with pytest.raises(fp.FutureError, match="20 inputs|features"):
        fp.train("mlp:19-8-3", x, y)
    with pytest.raises(fp.FutureError, match="unknown rule"):
        fp.train("mlp:20-8-3", x, y, rule="backprob")


def test_every_rust_technique_appears_with_its_settings():
    assert "pc" in fp.rules.names() and "kfac" in fp.optim.names()
    assert len(fp.rules.names()) >= 20
    doc = fp.rules.pc.__doc__
    assert "steps" in doc and "gamma" in doc and "Whittington" in doc
    assert fp.rules.pc(steps=5, gamma=0.1) == {"name": "pc", "steps": 5, "gamma": 0.1}
    with pytest.raises(TypeError, match="no setting stepz"):
        fp.rules.pc(stepz=5)
    # Rule settings reach the run: the summary's config holds them.
    x, y = blobs(n=128)
    run = fp.train("mlp:20-8-3", x, y, rule=fp.rules.pc(steps=3), epochs=1, threads=1)
    assert run.summary["config"]["rule"]["steps"] == 3
    assert run.summary["config"]["rule"]["gamma"] == fp.rules.pc.fields["gamma"]["default"]


def test_training_releases_the_gil():
    x, y = blobs(n=4000, f=64)
    ticks = []
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks.append(1)

    t = threading.Thread(target=count)
    t.start()
    try:
        before = len(ticks)
        fp.train("mlp:64-512-512-3", x, y, epochs=3, batch_size=32, threads=1)
        during = len(ticks) - before
    finally:
        stop.set()
        t.join()
    # With the GIL held for the whole call the counter would stand still.
    assert during > 1000, during


def test_a_named_dataset_loads_as_arrays_and_trains():
    import os
    if not os.environ.get("FUTUREPROP_DATA"):
        pytest.skip("FUTUREPROP_DATA is not set")
    x, y, xt, yt = fp.load_dataset("mnist")
    assert x.shape == (60000, 784) and x.dtype == np.float32
    assert y.shape == (60000,) and y.dtype == np.int64 and set(np.unique(y)) == set(range(10))
    assert xt.shape == (10000, 784)
    # Standardised with the training set's statistics.
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-3
    run = fp.train("mlp:784-64-10", x[:3000], y[:3000], x_test=xt[:1000], y_test=yt[:1000],
                   epochs=1, threads=1, seed=0)
    assert run.history[0]["test_accuracy"] > 0.7
    with pytest.raises(fp.FutureError, match="unknown dataset"):
        fp.load_dataset("mnistt")


def test_a_step_loop_in_python_trains_and_updates_are_numpy_dicts():
    x, y = blobs()
    model = fp.Model("mlp:20-32-3", activation="tanh", seed=1)
    rule, opt = fp.rules.fa(), fp.optim.sgd(lr=0.1)
    losses = []
    for epoch in range(5):
        for i in range(0, 600, 50):
            update = rule.step(model, x[i:i + 50], y[i:i + 50])
            losses.append(update.loss)
            opt.step(model, update)
    assert np.mean(losses[-12:]) < 0.6 * np.mean(losses[:12]), (losses[:12], losses[-12:])
    g = update.grads()
    assert g["fc1.weight"].shape == (32, 20) and g["fc1.weight"].dtype == np.float32
    # The update itself reads and writes like a dict of numpy arrays.
    import collections.abc
    assert isinstance(update, collections.abc.Mapping)
    assert list(update) == list(update.keys()) == list(g) and len(update) == 4 and "fc2.bias" in update
    np.testing.assert_array_equal(update["fc1.weight"], g["fc1.weight"])
    assert {k: v.shape for k, v in update.items()} == {k: v.shape for k, v in g.items()}
    with pytest.raises(KeyError):
        update["fc9.weight"]
    with pytest.raises(ValueError, match="shape"):
        update["fc1.weight"] = np.zeros((3, 3), np.float32)
    # FA's top layer gets the true gradient, the layer below a random projection of it.
    bp = fp.rules.bp().step(model, x[:50], y[:50]).grads()
    fa = rule.step(model, x[:50], y[:50]).grads()
    np.testing.assert_allclose(fa["fc2.weight"], bp["fc2.weight"], rtol=1e-5, atol=1e-7)
    assert not np.allclose(fa["fc1.weight"], bp["fc1.weight"], atol=1e-4)
    # An update edited in numpy is the one applied: zero directions leave the model put.
    before = model.state_dict()["fc2.weight"].copy()
    update = rule.step(model, x[:50], y[:50])
    for k, v in update.items():
        update[k] = np.zeros_like(v)
    opt.step(model, update)
    assert np.array_equal(model.state_dict()["fc2.weight"], before)
    with pytest.raises(TypeError, match="float32"):
        rule.step(model, x[:5].astype(np.float64), y[:5])


def test_a_saved_model_loads_with_its_outputs_and_the_pytorch_layout(tmp_path):
    x, y = blobs()
    model = fp.Model("mlp:20-16-3", activation="relu", seed=2)
    fp.train(model, x, y, epochs=2, threads=1)  # trains the object in place
    out = model.predict(x[:10])
    path = tmp_path / "m.safetensors"
    model.save(str(path))
    back = fp.Model.load(str(path))
    assert back.spec == "mlp:20-16-3"
    np.testing.assert_array_equal(back.predict(x[:10]), out)
    # PyTorch's nn.Linear layout: weight [out, in], bias [out]; only the model's tensors.
    sd = back.state_dict()
    assert sorted(sd) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    assert sd["fc1.weight"].shape == (16, 20) and sd["fc2.bias"].shape == (3,)
    w1, b1, w2, b2 = (sd[k].astype(np.float64) for k in ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"])
    ref = np.maximum(x[:10] @ w1.T + b1, 0) @ w2.T + b2
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        back.load_state_dict({"fc1.weight": np.zeros((3, 3), np.float32)})


def test_train_continues_from_a_model_object():
    x, y = blobs()
    model = fp.Model("mlp:20-16-3", seed=3)
    first = fp.train(model, x, y, epochs=1, threads=1, seed=0).history[-1]["test_accuracy"]
    again = fp.train(model, x, y, epochs=1, threads=1, seed=0).history[0]["test_accuracy"]
    fresh = fp.train(fp.Model("mlp:20-16-3", seed=3), x, y, epochs=1, threads=1, seed=0).history[0]["test_accuracy"]
    assert fresh == first  # the same start gives the same first epoch
    assert again > first  # the second call starts where the first ended


def cli_binary():
    import os
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    for p in [os.environ.get("FUTUREPROP_BIN"), os.path.join(root, "target", "debug", "futureprop"),
              os.path.join(root, "target", "release", "futureprop")]:
        if p and os.path.isfile(p):
            return p
    return None


def test_the_same_seed_gives_the_same_history_from_python_and_from_the_cli(tmp_path):
    import json
    import os
    import subprocess
    data, binary = os.environ.get("FUTUREPROP_DATA"), cli_binary()
    if not data or not binary:
        if os.environ.get("CI"):
            pytest.fail("needs FUTUREPROP_DATA and a built futureprop binary (cargo build)")
        pytest.skip("needs FUTUREPROP_DATA and a built futureprop binary")
    args = ["--model", "mlp:784-32-10", "--rule", "dfa", "--epochs", "2", "--seed", "3", "--threads", "1"]
    subprocess.run([binary, "train", "--data-dir", data, "--dataset", "mnist", "--train-limit", "2000",
                    "--test-limit", "500", "--quiet", "--out", str(tmp_path / "cli"), *args], check=True)
    with open(tmp_path / "cli" / "metrics.jsonl") as f:
        cli = [r for r in map(json.loads, f) if r.get("type") == "epoch"]
    x, y, xt, yt = fp.load_dataset("mnist", data_dir=data)
    run = fp.train("mlp:784-32-10", x[:2000], y[:2000], x_test=xt[:500], y_test=yt[:500], rule="dfa",
                   epochs=2, seed=3, threads=1)
    for a, b in zip(cli, run.history, strict=True):
        assert a["train_loss"] == b["train_loss"] and a["test_accuracy"] == b["test_accuracy"]


def test_ctrl_c_stops_training_cleanly_and_keeps_the_last_checkpoint(tmp_path):
    import json
    import os
    x, y = blobs(n=20000, f=64)
    # max_seconds: should the interrupt be lost, the call ends anyway (and fails).
    with ctrl_c_after(0.5):
        fp.train("mlp:64-512-512-3", x, y, epochs=1000, batch_size=32, threads=1, out=str(tmp_path),
                 max_seconds=60)
    # The interrupted epoch was finished early, evaluated and checkpointed.
    assert os.path.isfile(tmp_path / "checkpoint.safetensors")
    with open(tmp_path / "metrics.jsonl") as f:
        epochs = [r for r in map(json.loads, f) if r.get("type") == "epoch"]
    assert 1 <= len(epochs) < 1000
    back = fp.Model.load(str(tmp_path / "checkpoint.safetensors"))
    assert back.predict(x[:4]).shape == (4, 3)


def test_bench_and_reproduce_return_their_reports(tmp_path):
    import os
    if not os.environ.get("FUTUREPROP_DATA"):
        pytest.skip("FUTUREPROP_DATA is not set")
    suite = tmp_path / "tiny.toml"
    suite.write_text('name = "tiny"\ndescription = "two rules"\ndatasets = ["mnist"]\n'
                     'models = ["mlp:784-16-10"]\nrules = ["bp", "dfa"]\noptimizers = ["adam"]\n'
                     'seeds = 1\nepochs = 1\n[defaults]\ntrain_limit = 1000\ntest_limit = 300\n'
                     'batch_size = 50\nlr = 1e-3\n')
    report = fp.bench(str(suite), out=tmp_path / "bench", threads=1)
    arms = report["arms"]
    assert sorted(a["rule"] for a in arms) == ["bp", "dfa"]
    acc = {a["rule"]: a["test_accuracy"]["mean"] for a in arms}
    assert acc["bp"] > 0.3 and 0 <= acc["dfa"] <= 1, acc
    assert (tmp_path / "bench" / "report.md").is_file()
    # The perceptron row at its full budget: seconds; a verdict, not an exception.
    rep = fp.reproduce(["lecun1998-perceptron"], out=tmp_path / "rep", threads=1)
    (row,) = rep["rows"]
    assert row["row"] == "lecun1998-perceptron" and row["verdict"] in ("PASS", "FAIL")
    assert len(row["seeds"]) == 3 and 5 < row["ours_mean"] < 20
    with pytest.raises(fp.FutureError, match="unknown registry row"):
        fp.reproduce(["nobody2030"])


def test_rule_and_optimizer_by_position_give_the_same_run():
    x, y = blobs()
    a = fp.train("mlp:20-16-3", fp.rules.fa(), fp.optim.sgd(lr=0.05), x, y, epochs=2, batch_size=64, seed=1,
                 threads=1)
    b = fp.train("mlp:20-16-3", x, y, rule="fa", optimizer="sgd", lr=0.05, epochs=2, batch_size=64, seed=1,
                 threads=1)
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert a.summary["config"]["lr"] == 0.05
    with pytest.raises(TypeError, match="positional arguments"):
        fp.train("mlp:20-16-3", x)
    with pytest.raises(TypeError, match="both by position and by keyword"):
        fp.train("mlp:20-16-3", "fa", "sgd", x, y, rule="dfa")


def test_validation_is_evaluated_every_epoch():
    x, y = blobs(n=700)
    model = fp.Model("mlp:20-16-3", seed=0)
    run = fp.train(model, x[:500], y[:500], validation=(x[500:600], y[500:600]), x_test=x[600:],
                   y_test=y[600:], epochs=3, threads=1)
    assert len(run.history) == 3 and all("validation_accuracy" in h for h in run.history)
    # Evaluated at the trained weights the model object now holds.
    acc = np.mean(model.predict(x[500:600]).argmax(1) == y[500:600])
    assert run.history[-1]["validation_accuracy"] == pytest.approx(acc)
    with pytest.raises(TypeError, match="pair"):
        fp.train("mlp:20-16-3", x, y, validation=x[:10])
    with pytest.raises(ValueError, match="validation y has 9 labels for 10 samples"):
        fp.train("mlp:20-16-3", x, y, validation=(x[:10], y[:9]))


def test_a_callback_sees_every_epoch_and_can_stop_the_run():
    x, y = blobs()
    seen = []
    run = fp.train("mlp:20-16-3", x, y, epochs=4, threads=1, callback=seen.append)
    assert [r["epoch"] for r in seen] == [1, 2, 3, 4]
    assert seen == run.history
    # Returning False stops the run: epochs long enough that it cannot run ahead far.
    x, y = blobs(n=20000, f=64)
    seen = []

    def two_epochs(record):
        seen.append(record["epoch"])
        return record["epoch"] < 2

    run = fp.train("mlp:64-256-3", x, y, epochs=200, batch_size=32, threads=1, callback=two_epochs)
    assert seen == [1, 2]
    assert 2 <= len(run.history) <= 4, len(run.history)

    def boom(record):
        raise RuntimeError("raised by the callback")

    with pytest.raises(RuntimeError, match="raised by the callback"):
        fp.train("mlp:64-256-3", x, y, epochs=200, batch_size=32, threads=1, callback=boom)
    with pytest.raises(TypeError, match="callable"):
        fp.train("mlp:20-16-3", x, y, callback=3)


def test_a_toml_model_file_builds_trains_saves_and_loads_from_anywhere(tmp_path, monkeypatch):
    (tmp_path / "net.toml").write_text('input = 20\n[[layers]]\ntype = "linear"\nout = 12\n'
                                       '[[layers]]\ntype = "tanh"\n[[layers]]\ntype = "linear"\nout = 3\n')
    x, y = blobs()
    monkeypatch.chdir(tmp_path)
    model = fp.Model("net.toml", seed=0)
    run = fp.train(model, x, y, optimizer=fp.optim.adam(lr=1e-2), epochs=5, batch_size=50, threads=1)
    assert run.history[-1]["test_accuracy"] > 0.8
    model.save(tmp_path / "m.safetensors")
    monkeypatch.chdir(tmp_path.parent)
    back = fp.Model.load(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(back.predict(x[:5]), model.predict(x[:5]))
    # Layers are named by their place in the stack (the tanh is the second).
    sd = back.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {"fc1.weight": (12, 20), "fc1.bias": (12,),
                                                  "fc3.weight": (3, 12), "fc3.bias": (3,)}
    with pytest.raises(OSError, match="missing.toml"):
        fp.Model("missing.toml")


def test_diagnose_compares_a_rule_with_backprop():
    x, y = blobs()
    model = fp.Model("mlp:20-16-16-3", activation="tanh", seed=0)
    bp = fp.diagnose(model, x, y, "bp")
    assert [round(l["cosine_to_bp"], 6) for l in bp["layers"]] == [1.0, 1.0, 1.0]
    fa = fp.diagnose(model, x, y, fp.rules.fa(), batch_size=64)
    assert fa["batch_size"] == 64 and fa["rule"] == "fa"
    # FA's top layer gets the true gradient; below it, a random feedback matrix.
    assert fa["layers"][-1]["cosine_to_bp"] == pytest.approx(1.0, abs=1e-6)
    assert fa["layers"][0]["cosine_to_bp"] < 0.99
    # Feedback replaces the weights of the layers whose error is sent down (fc2, fc3).
    angles = [l["feedback_angle_deg"] for l in fa["layers"]]
    assert angles[0] is None and all(a > 45 for a in angles[1:]), angles
    # A rule that has stepped is diagnosed with its own feedback matrices (drawn from the
    # step's seed 0), a fresh one with feedback drawn from `seed`.
    rule = fp.rules.fa()
    rule.step(model, x[:50], y[:50])
    stepped = fp.diagnose(model, x, y, rule, seed=99)["layers"][2]["feedback_angle_deg"]
    assert stepped == fp.diagnose(model, x, y, fp.rules.fa(), seed=0)["layers"][2]["feedback_angle_deg"]
    assert stepped != fp.diagnose(model, x, y, fp.rules.fa(), seed=99)["layers"][2]["feedback_angle_deg"]
    curv = fp.diagnose(model, x, y, curvature=True)
    # Sharpness is the top Hessian eigenvalue (positive here); the trace of an
    # indefinite Hessian may have either sign.
    assert curv["sharpness"] > 0 and np.isfinite(curv["hessian_trace"])
    assert "gradient_noise_scale" in curv
    with pytest.raises(TypeError, match="needs features"):
        fp.diagnose(model)


def test_a_named_dataset_trains_by_name_and_its_run_is_diagnosed(tmp_path):
    import os
    data = os.environ.get("FUTUREPROP_DATA")
    if not data:
        pytest.skip("FUTUREPROP_DATA is not set")
    run = fp.train("mlp:784-32-10", "mnist", rule="bp", train_limit=2000, test_limit=500, validation=300,
                   epochs=1, batch_size=32, threads=1, data_dir=data, out=tmp_path)
    (h,) = run.history
    assert h["test_accuracy"] > 0.5 and "validation_accuracy" in h
    rep = fp.diagnose(run.out, data_dir=data, batch_size=100)
    assert rep["rule"] == "bp" and rep["epoch"] == 1 and rep["batch_size"] == 100
    assert len(rep["layers"]) == 2
    with pytest.raises(ValueError, match="own test set"):
        fp.train("mlp:784-32-10", "mnist", x_test=np.zeros((1, 784), np.float32), y_test=np.zeros(1, int))


IN_PLACE = """
import resource, sys
import numpy as np
import futureprop as fp
# 256 MiB of features, written so that they are resident now; a copy of them would raise
# this fresh process's peak by as much again.
x = np.random.default_rng(0).standard_normal((65536, 1024), dtype=np.float32)
y = (x[:, 0] > 0).astype(np.int64)
kept = x[:4].copy()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
run = fp.train("mlp:1024-8-2", x, y, x_test=x[:256], y_test=y[:256], batch_size=256, max_steps=4, threads=1)
assert len(run.history) == 1
assert np.array_equal(x[:4], kept)  # read, never written
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak) / x.nbytes)
"""


def test_contiguous_float32_arrays_are_read_in_place():
    import subprocess
    import sys
    # A fresh process, so that the peak resident set is this test's alone.
    out = subprocess.run([sys.executable, "-c", IN_PLACE], capture_output=True, text=True, check=True)
    grown = float(out.stdout.strip().splitlines()[-1])
    assert grown < 0.25, f"training grew the peak memory by {grown:.2f}× the array's size"
    x = np.random.default_rng(1).standard_normal((8, 1024), dtype=np.float32)
    model = fp.Model("mlp:1024-8-2", seed=0)
    np.testing.assert_array_equal(model.predict(x), model.predict(x.copy()))


def test_ctrl_c_stops_a_benchmark_and_keeps_no_cut_short_arm(tmp_path):
    import os
    if not os.environ.get("FUTUREPROP_DATA"):
        pytest.skip("FUTUREPROP_DATA is not set")
    suite = tmp_path / "long.toml"
    # `seconds` bounds each arm should the interrupt be lost (the test then fails).
    suite.write_text('name = "long"\ndescription = "two long arms"\ndatasets = ["mnist"]\n'
                     'models = ["mlp:784-64-10"]\nrules = ["bp", "fa"]\noptimizers = ["adam"]\n'
                     'seeds = 1\nepochs = 500\nseconds = 30\n[defaults]\ntrain_limit = 2000\n'
                     'test_limit = 200\nbatch_size = 50\n')
    with ctrl_c_after(1.5):
        fp.bench(str(suite), out=tmp_path / "bench", threads=1)
    # The interrupted arm left no summary (a resume runs it again) and no report exists.
    assert not list((tmp_path / "bench").rglob("summary.json"))
    assert not (tmp_path / "bench" / "results.json").exists()


def test_sparse_and_quantised_training_take_their_settings_as_keywords():
    x, y = blobs()
    run = fp.train("mlp:20-32-32-3", x[:500], y[:500], x_test=x[500:], y_test=y[500:],
                   rule="dfa", optimizer=fp.optim.adam(lr=1e-2), epochs=5, batch_size=50,
                   seed=0, threads=1, sparse="rigl", sparsity=0.5, sparse_every=5,
                   quantize="w8a8")
    sp = run.summary["sparse"]
    assert sp["method"] == "rigl" and sp["mask_updates"] > 0
    assert sp["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert run.history[-1]["test_accuracy"] > 0.7
    with pytest.raises(fp.FutureError, match="sparsity"):
        fp.train("mlp:20-8-3", x, y, epochs=1, sparse="rigl", sparsity=1.5)

"""The Python package against its contract: arrays in and out with their shapes and
dtypes, clear errors on bad input, the technique registry with its settings, the same
seed giving the same history, and the GIL released while training."""
import threading

import numpy as np
import pytest

import futureprop as fp


def blobs(n=600, f=20, k=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, f)).astype(np.float32)
    y = (x @ rng.normal(size=(f, k))).argmax(1)
    return x, y


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
    # FA's top layer gets the true gradient, the layer below a random projection of it.
    bp = fp.rules.bp().step(model, x[:50], y[:50]).grads()
    fa = rule.step(model, x[:50], y[:50]).grads()
    np.testing.assert_allclose(fa["fc2.weight"], bp["fc2.weight"], rtol=1e-5, atol=1e-7)
    assert not np.allclose(fa["fc1.weight"], bp["fc1.weight"], atol=1e-4)
    # An update edited in numpy is the one applied: zero directions leave the model put.
    before = model.state_dict()["fc2.weight"].copy()
    update = rule.step(model, x[:50], y[:50])
    update.set_grads({k: np.zeros_like(v) for k, v in update.grads().items()})
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
    import signal
    x, y = blobs(n=20000, f=64)
    # A shell starts background jobs with SIGINT ignored, and Python then leaves it so:
    # install Python's own handler for this test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            # max_seconds: should the interrupt be lost, the call ends anyway (and fails).
            fp.train("mlp:64-512-512-3", x, y, epochs=1000, batch_size=32, threads=1,
                     out=str(tmp_path), max_seconds=60)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
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

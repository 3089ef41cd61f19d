"""kiln's Python package as a user runs it: the acceptance programs (the
tutorial's and Keras's mnist_mlp.py, with their imports changed) in
subprocesses of the installed package, and the Keras-shaped API around
them. Run by the test command (ci/test.sh) after `pip install ./python`."""

import pathlib
import re
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import kiln
from kiln import layers, models, optimizers
from kiln.datasets import mnist
from kiln.utils import to_categorical

HERE = pathlib.Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"
ROOT = HERE.parent.parent


def run(program):
    out = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_tutorial_program_runs_unchanged():
    stdout = run(EXAMPLES / "tutorial_kiln.py")
    # Keras-style progress lines, one per epoch.
    assert stdout.count("469/469") == 5 and "Epoch 5/5" in stdout, stdout
    acc = float(stdout.split("test_acc:")[1].split()[0])
    assert acc >= 0.975, stdout


def test_keras_mnist_mlp_runs_unchanged():
    stdout = run(EXAMPLES / "mnist_mlp.py")
    assert "dropout_1 (Dropout)" in stdout and "Total params: 669706" in stdout, stdout
    assert stdout.count("val_accuracy:") == 20, stdout
    acc = float(stdout.split("Test accuracy:")[1].split()[0])
    assert acc >= 0.983, stdout


def tutorial_data(n=None):
    (x, y), (xt, yt) = mnist.load_data()
    n = n or len(x)
    return (x[:n].reshape(n, 784).astype("float32") / 255, y[:n]), (xt.reshape(10000, 784).astype("float32") / 255, yt)


def tutorial_model(loss="categorical_crossentropy", **compile_args):
    m = models.Sequential()
    m.add(layers.Dense(512, activation="relu", input_shape=(784,)))
    m.add(layers.Dense(10, activation="softmax"))
    m.compile(optimizer="rmsprop", loss=loss, metrics=["accuracy"], **compile_args)
    return m


def test_load_data_has_keras_shapes_and_dtypes():
    (x, y), (xt, yt) = mnist.load_data()
    assert (x.shape, x.dtype, y.shape, y.dtype) == ((60000, 28, 28), np.uint8, (60000,), np.uint8)
    assert (xt.shape, yt.shape) == ((10000, 28, 28), (10000,))
    assert y[:5].tolist() == [5, 0, 4, 1, 9]


def test_float_pixels_train_to_the_clis_bits(tmp_path):
    """x.astype('float32') / 255 takes the u8 path: the same weights as `train`."""
    (x, y), _ = tutorial_data(1024)
    m = tutorial_model()
    m.fit(x, to_categorical(y), epochs=1, batch_size=128, verbose=0, shuffle=False)
    idx = tmp_path / "data"
    idx.mkdir()
    (xr, yr), (xtr, ytr) = mnist.load_data()
    for name, arr in (("train-images-idx3-ubyte", xr[:1024]), ("train-labels-idx1-ubyte", yr[:1024]),
                      ("t10k-images-idx3-ubyte", xtr[:100]), ("t10k-labels-idx1-ubyte", ytr[:100])):
        dims = arr.shape
        header = bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
        (idx / name).write_bytes(header + arr.tobytes())
    train = ROOT / "target" / "release" / "train"
    if not train.exists():
        pytest.skip("the train binary is not built (cargo build --release)")
    out = tmp_path / "m.safetensors"
    subprocess.run([str(train), "--data", str(idx), "--epochs", "1", "--no-shuffle", "--out", str(out), "--json"],
                   check=True, capture_output=True)
    saved = tmp_path / "py.safetensors"
    m.save(saved)
    # Compare tensors, not files (the CLI's metadata differs, and Python's
    # save keeps RMSprop's state besides the weights).
    from_cli, from_py = read_tensors(out), read_tensors(saved)
    state = {k for k in from_py if k.startswith("optimizer.velocity.")}
    assert from_cli.keys() == from_py.keys() - state and len(state) == len(from_cli)
    for k in from_cli:
        assert from_cli[k] == from_py[k], k


def read_tensors(path):
    import json

    b = pathlib.Path(path).read_bytes()
    n = int.from_bytes(b[:8], "little")
    header = json.loads(b[8 : 8 + n])
    return {k: b[8 + n + v["data_offsets"][0] : 8 + n + v["data_offsets"][1]] for k, v in header.items() if k != "__metadata__"}


def test_history_predict_evaluate_and_sparse_labels():
    (x, y), (xt, yt) = tutorial_data(4000)
    m = tutorial_model(loss="sparse_categorical_crossentropy")
    h = m.fit(x, y, epochs=3, batch_size=64, verbose=0, validation_split=0.1)
    assert set(h.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(h.history["loss"]) == 3 and h.history["loss"][2] < h.history["loss"][0]
    p = m.predict(xt[:7], verbose=0)
    assert p.shape == (7, 10) and p.dtype == np.float32
    assert np.allclose(p.sum(axis=1), 1, atol=1e-5)
    loss, acc = m.evaluate(xt, yt, verbose=0)
    assert acc > 0.85 and loss > 0
    assert acc == float((m.predict(xt, verbose=0).argmax(1) == yt).mean())


def test_weights_move_in_keras_order_and_shapes():
    m = tutorial_model()
    w = m.get_weights()
    assert [a.shape for a in w] == [(784, 512), (512,), (512, 10), (10,)]
    assert all(np.all(b == 0) for b in w[1::2])
    limit = np.sqrt(6 / (784 + 512))
    assert np.abs(w[0]).max() <= limit and np.abs(w[0]).max() > 0.9 * limit
    w[3] = np.arange(10, dtype="float32")
    m.set_weights(w)
    assert np.array_equal(m.get_weights()[3], np.arange(10, dtype="float32"))
    assert np.array_equal(m.layers[1].get_weights()[1], np.arange(10, dtype="float32"))
    with pytest.raises(ValueError, match="array 0 has shape"):
        m.set_weights([w[0].T] + w[1:])


def test_unsupported_things_are_errors_naming_them():
    with pytest.raises(ValueError, match="activation 'gelu' is not supported"):
        layers.Dense(10, activation="gelu")
    with pytest.raises(ValueError, match="rate must be in"):
        layers.Dropout(1.0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        layers.Dense(10, kernel_size=3)
    with pytest.raises(ValueError, match="use_bias=False is not supported"):
        layers.Dense(10, use_bias=False)
    m = models.Sequential([layers.Dense(10, activation="softmax", input_shape=(784,))])
    with pytest.raises(ValueError, match="loss 'mse' is not supported"):
        m.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="optimizer 'lion' is not supported"):
        m.compile(optimizer="lion", loss="categorical_crossentropy")
    with pytest.raises(ValueError, match="clipnorm=1.0 is not supported"):
        optimizers.Adam(clipnorm=1.0)
    m.compile(optimizer=optimizers.SGD(learning_rate=0.1), loss="categorical_crossentropy", metrics=["accuracy"])
    x = np.zeros((4, 784), "float32")
    with pytest.raises(ValueError, match="row 0 is not one-hot"):
        m.fit(x, np.full((4, 10), 0.1), verbose=0)
    with pytest.raises(ValueError, match="class_weight=.* is not supported"):
        m.fit(x, to_categorical([0, 1, 2, 3], 10), class_weight={0: 2.0}, verbose=0)
    with pytest.raises(ValueError, match="samples of shape"):
        m.fit(np.zeros((4, 28, 28), "float32"), to_categorical([0, 1, 2, 3], 10), verbose=0)
    with pytest.raises(ValueError, match="features must be finite"):
        m.fit(np.full((4, 784), np.nan, "float32"), to_categorical([0, 1, 2, 3], 10), verbose=0)
    with pytest.raises(ValueError, match="a Dropout must follow a Dense layer"):
        models.Sequential([kiln.Input((4,)), layers.Dropout(0.5), layers.Dense(2, activation="softmax")]).summary()


def test_flatten_input_and_callbacks():
    (x, y), _ = mnist.load_data()
    seen = []

    class Record(kiln.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(("begin", epoch))

        def on_epoch_end(self, epoch, logs=None):
            seen.append(("end", epoch, sorted(logs)))

    m = models.Sequential([kiln.Input((28, 28)), layers.Flatten(), layers.Dense(32, activation="tanh"),
                           layers.Dropout(0.1), layers.Dense(10, activation="softmax")])
    m.compile(optimizer=optimizers.Adam(), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(x[:512], y[:512], epochs=3, initial_epoch=1, verbose=0, callbacks=[Record()])
    assert seen == [("begin", 1), ("end", 1, ["accuracy", "loss"]), ("begin", 2), ("end", 2, ["accuracy", "loss"])]

    batches = []

    class PerBatch(kiln.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            batches.append((batch, sorted(logs)))

    m.fit(x[:100], y[:100], batch_size=32, epochs=2, steps_per_epoch=3, verbose=0, callbacks=[PerBatch()])
    assert batches == [(b, ["accuracy", "loss"]) for b in (0, 1, 2, 0, 1, 2)], batches

    class Boom(kiln.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                raise RuntimeError("boom at batch 1")

    with pytest.raises(RuntimeError, match="boom at batch 1"):
        m.fit(x[:640], y[:640], batch_size=32, epochs=5, verbose=0, callbacks=[Boom()])

    # Keras's order: epoch begin, then per step batch begin and end (the
    # weights a begin hook sees are those before its step), then epoch end;
    # on_batch_begin/end are what the train hooks call by default.
    order = []

    class Order(kiln.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            order.append(("epoch", epoch))

        def on_train_batch_begin(self, batch, logs=None):
            order.append(("begin", batch, logs, self.model.get_weights()[1].copy()))

        def on_train_batch_end(self, batch, logs=None):
            order.append(("end", batch, sorted(logs), self.model.get_weights()[1].copy()))

        def on_epoch_end(self, epoch, logs=None):
            order.append(("epoch end", epoch))

    class Old(kiln.callbacks.Callback):
        def on_batch_begin(self, batch, logs=None):
            order.append(("old begin", batch))

    m.fit(x[:96], y[:96], batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[Order(), Old()])
    names = [o[:2] for o in order]
    per_epoch = lambda e: [("epoch", e)] + [s for b in range(3) for s in (("begin", b), ("old begin", b), ("end", b))] + [("epoch end", e)]
    assert names == per_epoch(0) + per_epoch(1), names
    begins = [o for o in order if o[0] == "begin"]
    ends = [o for o in order if o[0] == "end"]
    assert all(b[2] is None for b in begins) and all(e[2] == ["accuracy", "loss"] for e in ends)
    for b, e in zip(begins[1:], ends):  # batch k + 1 begins with the weights batch k ended with
        assert np.array_equal(b[3], e[3])
    assert not np.array_equal(begins[0][3], ends[0][3])  # and a step changes them

    class Stop(kiln.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 2:
                raise KeyError("stop before batch 2")

    with pytest.raises(KeyError, match="stop before batch 2"):
        m.fit(x[:640], y[:640], batch_size=32, epochs=1, verbose=0, callbacks=[Stop()])


def test_the_gil_is_released_while_kiln_trains():
    (x, y), _ = tutorial_data(20000)
    m = tutorial_model(loss="sparse_categorical_crossentropy")
    ticks = []
    done = threading.Event()

    def tick():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.005)

    t = threading.Thread(target=tick)
    t.start()
    start = time.perf_counter()
    m.fit(x, y, epochs=2, batch_size=128, verbose=0)
    end = time.perf_counter()
    done.set()
    t.join()
    during = [s for s in ticks if start < s < end]
    # The thread kept ticking through fit (it could not while fit held the GIL).
    assert len(during) >= 10 and max(np.diff(during)) < 0.5 * (end - start), (len(during), end - start)


def test_errors_are_exceptions_never_aborts():
    code = "import numpy as np\nfrom kiln import _kiln\ntry:\n    _kiln.Network('0:relu', 4, 2, 1, 'rmsprop', {})\nexcept ValueError as e:\n    print('caught', e)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "caught" in out.stdout and "0 units" in out.stdout, out


def test_a_panic_inside_kiln_is_a_runtime_error_and_the_interpreter_lives_on():
    # A Rust panic in kiln's pool (where fit, evaluate and predict run), as
    # a bug would cause, then ordinary work in the same process.
    code = """
import numpy as np
from kiln import _kiln, layers, models
try:
    _kiln._panic_in_pool()
except RuntimeError as e:
    print("caught:", e)
m = models.Sequential([layers.Dense(2, activation="softmax", input_shape=(3,))])
m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
m.fit(np.zeros((4, 3), np.float32), np.array([0, 1, 0, 1]), verbose=0)
print("after:", m.predict(np.zeros((1, 3), np.float32), verbose=0).shape)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out
    assert "caught: kiln failed with an internal error" in out.stdout and "deliberate panic" in out.stdout, out
    assert "after: (1, 2)" in out.stdout, out


def test_uint8_and_float32_inputs_are_read_without_a_copy():
    # Peak RSS (ru_maxrss) can only grow: a copy of a 200 MB input, anywhere
    # in fit, evaluate or predict, would raise it by 200 MB; kiln's own
    # buffers (one batch, 1000-row evaluation chunks, the N x 10 output) are
    # a few MB. Run in a subprocess so nothing before it sets the peak.
    code = """
import resource
import numpy as np
from kiln import layers, models
mb = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
n = 256_000
pixels = np.random.default_rng(0).integers(0, 256, (n, 784), dtype=np.uint8)  # 200 MB
features = np.random.default_rng(1).standard_normal((n // 4, 784), dtype=np.float32)  # 200 MB, not k/255
labels = (np.arange(n) % 10).astype(np.uint8)
m = models.Sequential([layers.Dense(10, activation="softmax", input_shape=(784,))])
m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
m.predict(pixels[:10], verbose=0)
base = mb()
for x, y in ((pixels, labels), (features, labels[: n // 4])):
    m.fit(x, y, batch_size=128, epochs=1, steps_per_epoch=2, verbose=0, validation_data=(x, y))
    m.evaluate(x, y, verbose=0)
    m.predict(x, verbose=0)
print("grew", mb() - base)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    grew = float(out.stdout.split()[-1])
    assert grew < 60, f"peak RSS grew by {grew:.0f} MB reading 200 MB inputs: they were copied"


@pytest.mark.parametrize("stack", [
    [("dense", 512, "relu")],
    [("dense", 512, "tanh"), ("dense", 256, "sigmoid")],
    [("dense", 512, "relu"), ("dropout", 0.2), ("dense", 512, "relu"), ("dropout", 0.2)],
])
def test_onnx_export_runs_in_onnx_runtime_as_kiln_predicts(tmp_path, stack):
    """The issue's check: onnx.checker (full) passes, and ONNX Runtime's
    probabilities on all 10,000 test images are within 1e-5 of predict's,
    with the same class for every image."""
    import onnx  # the test command installs both from PyPI
    import onnxruntime as ort
    (x, y), (xt, yt) = tutorial_data(10000)
    m = models.Sequential([kiln.Input((784,))] + [
        layers.Dense(l[1], activation=l[2]) if l[0] == "dense" else layers.Dropout(l[1]) for l in stack
    ] + [layers.Dense(10, activation="softmax")])
    m.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(x, y, epochs=1, batch_size=128, verbose=0)
    path = tmp_path / "model.onnx"
    m.export(path, format="onnx", verbose=False)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    runtime = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in runtime.get_inputs()] == ["input"]
    got = runtime.run(None, {"input": xt})[0]
    want = m.predict(xt, verbose=0)
    assert got.shape == want.shape == (10000, 10)
    assert np.abs(got - want).max() <= 1e-5, np.abs(got - want).max()
    assert np.array_equal(got.argmax(1), want.argmax(1))
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["classes"] == "10" and meta["layers"].endswith("10:softmax")


def test_early_stopping_and_model_checkpoint(tmp_path):
    (x, y), (xt, yt) = tutorial_data(3000)
    m = tutorial_model(loss="sparse_categorical_crossentropy")
    # A validation set the model cannot learn: val_loss rises from the start.
    bad_val = (xt[:500], (yt[:500] + 1) % 10)
    stop = kiln.callbacks.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    ckpt = kiln.callbacks.ModelCheckpoint(str(tmp_path / "m-{epoch:02d}.safetensors"))
    weights = []

    class Keep(kiln.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            weights.append(self.model.get_weights())

    h = m.fit(x, y, epochs=10, verbose=0, validation_data=bad_val, callbacks=[stop, ckpt, Keep()])
    epochs = len(h.history["loss"])
    assert epochs < 10, h.history["val_loss"]
    assert stop.stopped_epoch == epochs - 1
    best = int(np.argmin(h.history["val_loss"]))
    assert stop.best_epoch == best
    # Restored: the weights are the best epoch's, not the last one's.
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), weights[best]))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"m-{e + 1:02d}.safetensors" for e in range(epochs)]
    with pytest.raises(ValueError, match="monitor 'val_loss' is not in the logs"):
        m.fit(x, y, epochs=1, verbose=0, callbacks=[kiln.callbacks.EarlyStopping()])


def test_ctrl_c_stops_fit_within_a_second_keeping_the_last_step():
    import signal

    program = "\n".join([
        "import numpy as np",
        "import kiln",
        "from kiln import models, layers",
        "from kiln.datasets import mnist",
        "(x, y), _ = mnist.load_data()",
        "m = models.Sequential([layers.Dense(512, activation='relu', input_shape=(784,)),",
        "                       layers.Dense(10, activation='softmax')])",
        "m.compile(optimizer='rmsprop', loss='sparse_categorical_crossentropy')",
        "w0 = m.get_weights()[0].copy()",
        "ended = []",
        "class Count(kiln.callbacks.Callback):",
        "    def on_epoch_end(self, epoch, logs=None):",
        "        ended.append(epoch)",
        "print('ready', flush=True)",
        "try:",
        "    # Batches of 1: an epoch is 60,000 steps, seconds long, so only a",
        "    # check between steps can stop it within a second.",
        "    m.fit(x.reshape(60000, 784), y, epochs=1000, batch_size=1, verbose=0, callbacks=[Count()])",
        "    print('finished', flush=True)",
        "except KeyboardInterrupt:",
        "    print('interrupted', flush=True)",
        "    print('trained', not np.array_equal(m.get_weights()[0], w0), 'epochs', len(ended), flush=True)",
    ])
    p = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    sent = time.perf_counter()
    p.send_signal(signal.SIGINT)
    line = p.stdout.readline().strip()
    waited = time.perf_counter() - sent
    rest = p.stdout.read()
    p.wait(timeout=60)
    assert line == "interrupted", (line, rest)
    assert waited < 1.0, waited
    assert rest.strip() == "trained True epochs 0", rest


def test_save_keeps_the_optimizer_state_so_fit_goes_on_exactly(tmp_path):
    (x, y), _ = mnist.load_data()
    x, y = x[:2000].reshape(-1, 784), y[:2000]

    def model():
        m = models.Sequential([layers.Dense(64, activation="relu", input_shape=(784,)), layers.Dropout(0.2),
                               layers.Dense(10, activation="softmax")])
        lr = optimizers.schedules.ExponentialDecay(2e-3, decay_steps=10, decay_rate=0.9)
        m.compile(optimizer=optimizers.Adam(learning_rate=lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
        return m

    fit = dict(batch_size=128, shuffle=False, verbose=0)
    whole = model()
    whole.fit(x, y, epochs=2, **fit)
    half = model()
    half.fit(x, y, epochs=1, **fit)
    half.save(tmp_path / "m.safetensors")
    back = models.load_model(tmp_path / "m.safetensors")
    back.fit(x, y, epochs=1, **fit)
    # Adam's moments, its bias correction's count, the schedule's step and
    # the Dropout masks' step all came back: the bits of an unbroken fit.
    assert all(np.array_equal(a, b) for a, b in zip(whole.get_weights(), back.get_weights()))
    # The same weights without the state go on elsewhere.
    weights_only = models.load_model(tmp_path / "m.safetensors", compile=False)
    weights_only.compile(optimizer=optimizers.Adam(learning_rate=2e-3), loss="sparse_categorical_crossentropy")
    weights_only.fit(x, y, epochs=1, **fit)
    assert not all(np.array_equal(a, b) for a, b in zip(whole.get_weights(), weights_only.get_weights()))
    # Weights only on request (what kiln before the state's format reads).
    half.save(tmp_path / "w.safetensors", include_optimizer=False)
    assert not any(k.startswith("optimizer.") for k in read_tensors(tmp_path / "w.safetensors"))
    assert any(k.startswith("optimizer.") for k in read_tensors(tmp_path / "m.safetensors"))


def with_metadata(src, dst, **changes):
    """A copy of the model file `src` at `dst` with metadata keys changed."""
    import json

    b = pathlib.Path(src).read_bytes()
    n = int.from_bytes(b[:8], "little")
    header = json.loads(b[8 : 8 + n])
    header["__metadata__"].update(changes)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    pathlib.Path(dst).write_bytes(len(text).to_bytes(8, "little") + text + b[8 + n :])


def test_the_optimizer_classes_are_the_crates_optimizers_with_keras_defaults():
    """One Python class for each optimizer the crate has (`_kiln.OPTIMIZERS`,
    from `Optimizer::NAMES`), named as Keras names it, whose defaults are the
    crate's (Keras's); an argument kiln does not know is an error."""
    from kiln import _kiln

    assert set(optimizers._BY_NAME) == set(_kiln.OPTIMIZERS)
    for name, entry in _kiln.OPTIMIZERS.items():
        cls = optimizers._BY_NAME[name]
        assert cls.__name__ == entry["class"], name
        assert cls().get_config() == entry["defaults"], name
        assert optimizers.get(name.upper()).get_config() == entry["defaults"], name
    with pytest.raises(ValueError, match="unknown optimizer argument `clipnorm`"):
        _kiln.Network("4:relu", 3, 2, 0, "sgd", {"clipnorm": 1.0})
    with pytest.raises(ValueError, match="rho is not an argument of sgd"):
        _kiln.Network("4:relu", 3, 2, 0, "sgd", {"rho": 0.5})
    with pytest.raises(ValueError, match="rmsprop: rho must be a number, got 'fast'"):
        _kiln.Network("4:relu", 3, 2, 0, "rmsprop", {"rho": "fast"})
    m = models.Sequential([kiln.Input((3,)), layers.Dense(2, activation="softmax")])
    m.compile(optimizer=optimizers.Adam(beta_2=1.0), loss="categorical_crossentropy")
    with pytest.raises(ValueError, match=re.escape("beta_2 must be in [0, 1) (got 1)")):
        m.predict(np.zeros((1, 3), np.float32), verbose=0)


def test_the_peers_benchmark_knows_every_activation_kiln_has():
    """benches/peers.py builds the same stacks in Keras, JAX and PyTorch: its
    list of activations is the crate's (a new one is benchmarked too)."""
    import importlib.util

    from kiln import _kiln

    spec = importlib.util.spec_from_file_location("peers", ROOT / "benches" / "peers.py")
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    assert set(peers.ACTIVATIONS) == set(_kiln.ACTIVATIONS)


def test_the_peers_benchmark_names_the_placement_of_the_epochs_it_compares(capsys):
    """benches/peers.py labels each run by the placement of its epochs 2..N
    (the first is left out of the mean, so of the label too), and runs the
    probe that gives them."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("peers", ROOT / "benches" / "peers.py")
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    layers = peers.parse_layers("512:relu")
    for places, want in [([(50, "near"), (400, "far"), (420, "far")], "far"),
                         ([(400, "far"), (60, "near"), (45, "near")], "near"),
                         ([(50, "near"), (60, "near"), (445, "far")], "mixed"),
                         ([(50, "near"), None, (45, "near")], "mixed")]:
        peers.PLACES[:] = places
        peers.report("x", layers, [1.0, 0.5, 0.5], 0.9, False)
        line = json.loads(capsys.readouterr().out)
        assert line["placement"] == want and line["round_trip_ns"] == [p[0] if p else None for p in places]
    # The probe itself, where it is built (cargo build --release -p kiln-kernels --example placement).
    peers.PLACES.clear()
    peers.probe()
    if peers.PROBE[0].exists():
        ns, kind = peers.PLACES[0]
        assert ns > 0 and kind in ("near", "far")
    else:
        assert peers.PLACES == [None]


def test_a_model_file_naming_an_unknown_optimizer_is_an_error_not_rmsprop(tmp_path):
    (x, y), _ = tutorial_data(512)
    m = tutorial_model(loss="sparse_categorical_crossentropy")
    m.fit(x, y, epochs=1, batch_size=128, verbose=0)
    m.save(tmp_path / "m.safetensors")
    assert type(models.load_model(tmp_path / "m.safetensors")._compiled["optimizer"]).__name__ == "RMSprop"
    with_metadata(tmp_path / "m.safetensors", tmp_path / "bad.safetensors", optimizer="Lion(learning_rate=0.001)")
    with pytest.raises(ValueError, match=r"bad\.safetensors: optimizer 'Lion\(learning_rate=0.001\)' is not one kiln has"):
        models.load_model(tmp_path / "bad.safetensors")
    # Without compiling, the weights load as they are.
    assert len(models.load_model(tmp_path / "bad.safetensors", compile=False).get_weights()) == 4


def test_save_and_load_model_round_trip_and_interchange_with_the_cli(tmp_path):
    (x, y), (xt, yt) = tutorial_data(2000)
    m = models.Sequential([kiln.Input((784,)), layers.Dense(64, activation="tanh"), layers.Dropout(0.3),
                           layers.Dense(10, activation="softmax")])
    m.compile(optimizer=optimizers.Adam(learning_rate=0.002), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
    m.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "m.safetensors"
    m.save(path)
    back = models.load_model(path)
    assert all(np.array_equal(a, b) for a, b in zip(back.get_weights(), m.get_weights()))
    assert np.array_equal(back.predict(xt, verbose=0), m.predict(xt, verbose=0))
    assert back._compiled["loss"] == "sparse_categorical_crossentropy"
    assert back._compiled["optimizer"].get_config()["learning_rate"] == 0.002
    assert [type(l).__name__ for l in back.layers] == ["Dense", "Dropout", "Dense"]
    # The CLI reads what Python wrote, and Python what the CLI wrote.
    predict = ROOT / "target" / "release" / "predict"
    train = ROOT / "target" / "release" / "train"
    if not (predict.exists() and train.exists()):
        pytest.skip("the CLI is not built (cargo build --release)")
    npy = tmp_path / "rows.npy"
    np.save(npy, xt[:3])
    out = subprocess.run([str(predict), "--model", str(path), "--npy", str(npy), "--json"], capture_output=True,
                         text=True, check=True).stdout
    import json

    got = np.array([json.loads(l)["probabilities"] for l in out.splitlines()], dtype=np.float32)
    assert np.array_equal(got, m.predict(xt[:3], verbose=0))
    cli = tmp_path / "cli.safetensors"
    subprocess.run([str(train), "--epochs", "1", "--layers", "32:relu", "--optimizer", "sgd", "--lr", "0.05",
                    "--out", str(cli)], check=True, capture_output=True)
    from_cli = models.load_model(cli)
    assert from_cli._compiled["optimizer"].get_config() == {"learning_rate": 0.05, "momentum": 0.0, "nesterov": False}
    loss, acc = from_cli.evaluate(xt, to_categorical(yt), verbose=0)
    assert acc > 0.85


def test_set_threads_before_the_first_run_from_any_thread():
    code = "\n".join([
        "import threading, numpy as np, kiln",
        "from kiln import models, layers",
        "t = threading.Thread(target=kiln.config.set_threads, args=(1,))",
        "t.start(); t.join()",
        "print(kiln.config.get_threads())",
        "m = models.Sequential([layers.Dense(3, activation='softmax', input_shape=(4,))])",
        "m.compile(loss='sparse_categorical_crossentropy')",
        "m.fit(np.zeros((8, 4), 'float32'), np.zeros(8, 'uint8'), verbose=0)",
        "kiln.config.set_threads(1)  # the same count: fine",
        "try:",
        "    kiln.config.set_threads(2)",
        "except RuntimeError as e:",
        "    print('refused:', e)",
    ])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "1" and "refused: set_threads(2)" in lines[1] and "before" in lines[1], out.stdout
    with pytest.raises(ValueError, match="positive integer"):
        kiln.config.set_threads(0)


def test_a_callback_may_predict_on_one_thread_and_ctrl_c_in_evaluate_is_raised():
    # On a one-thread pool, a callback's `predict` runs on the pool's own
    # thread (handing it over and waiting would leave nobody to run it);
    # SIGINT during a long evaluate comes back as KeyboardInterrupt.
    code = """
import os, signal, threading, numpy as np, kiln
from kiln import layers, models
kiln.config.set_threads(1)
m = models.Sequential([layers.Dense(16, activation="relu", input_shape=(784,)), layers.Dense(10, activation="softmax")])
m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
seen = []
class Peek(kiln.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        seen.append(self.model.predict(np.zeros((3, 784), np.float32), verbose=0).shape)
x, y = np.zeros((256, 784), np.uint8), np.zeros(256, np.uint8)
m.fit(x, y, batch_size=64, epochs=2, verbose=0, callbacks=[Peek()])
print("predicted", seen)
big = np.random.default_rng(0).integers(0, 256, (400_000, 784), dtype=np.uint8)
labels = np.zeros(len(big), np.uint8)
threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    for _ in range(20):
        m.evaluate(big, labels, verbose=0)
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "predicted [(3, 10), (3, 10)]" in out.stdout and "interrupted" in out.stdout.splitlines()[-1], out.stdout
    assert out.stdout.splitlines()[-1] == "interrupted", out.stdout


def test_the_ray_tune_sweep_runs_bounded_and_leaves_no_ray_processes(tmp_path):
    """examples/python/ray_tune_sweep.py on a local Ray instance: 4 trials of 2
    epochs on 6,000 images; every trial ran and reported its epochs in order
    (ASHA may stop weak ones after the first), the best is sensible, and
    Ray is gone afterwards."""
    script = ROOT / "examples" / "python" / "ray_tune_sweep.py"
    out = subprocess.run([sys.executable, str(script), "--trials", "4", "--epochs", "2", "--samples", "6000",
                          "--cpus", "2", "--storage", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    lines = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    trials, best = lines[:-1], lines[-1]
    assert len(trials) == 4, out.stdout
    for t in trials:
        assert t["error"] is None, t
        assert t["epochs"] == list(range(1, len(t["epochs"]) + 1)) and t["epochs"], t
        assert all(0 < a <= 1 for a in t["val_accuracy"]), t
    assert any(t["epochs"] == [1, 2] for t in trials), trials
    assert best["val_accuracy"] > 0.85, best
    # ray.shutdown() stops the raylet and GCS and waits for them, but the
    # raylet's own children (its agents, idle workers) exit after it on
    # their own: give them a bounded time to go, then name what stayed. A
    # zombie (state Z) has exited and holds nothing but its process-table
    # entry until an init reaps it: not left running.
    def ray_processes():
        ps = subprocess.run(["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True).stdout
        rows = (line.split(None, 2) for line in ps.splitlines())
        return [" ".join(r) for r in rows if len(r) == 3 and not r[1].startswith("Z")
                and re.search(r"raylet|gcs_server|ray::", r[2])]

    deadline = time.monotonic() + 60
    while (left := ray_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, "Ray processes left running 60 s after the sweep ended:\n" + "\n".join(left)


def test_learning_rate_schedules_are_keras_s():
    """ExponentialDecay: with SGD (no state), the second update runs at
    lr * rate^(1/decay_steps); a model trained with the schedule matches
    one trained step by step at the schedule's rates."""
    from kiln.optimizers import schedules

    (x, y), _ = tutorial_data(64)
    sched = schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)

    def model(opt):
        m = models.Sequential([kiln.Input((784,)), layers.Dense(8, activation="tanh"), layers.Dense(10, activation="softmax")])
        m.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
        return m

    a = model(optimizers.SGD(learning_rate=sched))
    a.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)  # two steps: lr 0.1 then 0.05
    b = model(optimizers.SGD(learning_rate=0.1))
    b.fit(x[:32], y[:32], batch_size=32, epochs=1, shuffle=False, verbose=0)
    c = model(optimizers.SGD(learning_rate=float(np.float32(0.1) * np.float32(0.5))))
    c.set_weights(b.get_weights())
    c.fit(x[32:], y[32:], batch_size=32, epochs=1, shuffle=False, verbose=0)
    assert all(np.array_equal(p, q) for p, q in zip(a.get_weights(), c.get_weights()))
    with pytest.raises(ValueError, match="staircase=True is not supported"):
        schedules.ExponentialDecay(0.1, 10, 0.9, staircase=True)
    optimizers.Adam(learning_rate=schedules.CosineDecay(0.001, 1000))

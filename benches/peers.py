#!/usr/bin/env python3
"""The same 5-epoch job as `cargo run --release --bin train` in the peer
frameworks that are installed (Keras/TensorFlow, PyTorch, JAX, and kiln's
own Python package, `pip install ./python`), on the
vendored MNIST, so their epoch times can be compared on one machine.

    python3 benches/peers.py [--epochs 5] [--threads 2] [--only keras,torch,jax,kiln-python]
                             [--layers 512:relu,10:softmax] [--validate] [--probe PATH | --no-probe]

--layers is the stack of layers in kiln's syntax and Keras order, input 784
implied, output layer included: comma-separated UNITS:ACTIVATION for a Dense
layer, with ACTIVATION one of relu, sigmoid, tanh, linear, softmax (softmax
only on the last layer, and with 10 units, one per digit), or dropout:RATE
for a Dropout of the layer below. If the last layer given is not softmax,
10:softmax is appended. The default, 512:relu,10:softmax, is the tutorial
network, Dense(784 -> 512, ReLU) -> Dense(512 -> 10, softmax); e.g. --layers
512:relu,dropout:0.2,512:relu,dropout:0.2 is Keras's examples/mnist_mlp.py.
--validate evaluates the test set after every epoch, inside the epoch's time,
as mnist_mlp.py's validation_data does (compare with kiln's wall time per
epoch under --validate-on-test).

Each framework builds exactly that stack and trains it as kiln does:
categorical cross-entropy, RMSprop as Keras 3 runs it (v = 0.9 v + 0.1 g^2;
w -= 1e-3 g / sqrt(v + 1e-7), written out by hand for PyTorch and JAX, whose
own RMSprop puts eps outside the square root), Glorot-uniform kernels, zero
biases, batch 128, shuffled every epoch. Prints one JSON line per framework
with the layer list, the mean epoch time (first epoch excluded, it includes
compilation) and the test accuracy. Frameworks that are not installed are
skipped; installing them is not part of kiln's tests.

After every epoch (outside its time) it runs kiln's placement probe (`cargo
build --release -p kiln-kernels --example placement`, or --probe PATH), which
times a cache line's round trip between the two cores: the 2-vCPU VMs this
project measures on move their vCPUs between the host's core complexes, and
kiln's 2-thread epoch is then about 40% longer ("far", 350-500 ns) than on
one complex ("near", 45-120 ns). Each line then also lists the epochs'
round trips and names the placement of epochs 2..N ("near", "far",
"mixed"); compare frameworks only on epochs of one placement.
"""

import argparse
import gzip
import json
import os
import pathlib
import subprocess
import time

import numpy as np

DATA = pathlib.Path(__file__).resolve().parent.parent / "data" / "mnist"
PIXELS, CLASSES = 784, 10
ACTIVATIONS = ("relu", "sigmoid", "tanh", "linear", "softmax")


def parse_layers(spec):
    """`512:relu,dropout:0.2[,10:softmax]` -> [("dense", 512, "relu"), ("dropout", 0.2), ("dense", 10, "softmax")]."""
    layers = []
    items = [item.strip() for item in spec.split(",")]
    for i, item in enumerate(items):
        head, sep, tail = item.partition(":")
        if head.strip() == "dropout":
            try:
                rate = float(tail)
            except ValueError:
                rate = -1.0
            if not 0 <= rate < 1 or not layers:
                raise argparse.ArgumentTypeError(f"layer {i + 1} {item!r}: expected dropout:RATE, 0 <= RATE < 1, after a Dense layer")
            layers.append(("dropout", rate))
            continue
        act = tail.strip().lower()
        try:
            n = int(head)
        except ValueError:
            n = 0
        if not sep or n <= 0:
            raise argparse.ArgumentTypeError(f"layer {i + 1} {item!r}: expected UNITS:ACTIVATION, UNITS > 0")
        if act not in ACTIVATIONS:
            raise argparse.ArgumentTypeError(f"layer {i + 1} {item!r}: activation must be one of {', '.join(ACTIVATIONS)}")
        if act == "softmax" and i != len(items) - 1:
            raise argparse.ArgumentTypeError(f"layer {i + 1} {item!r}: softmax only on the last layer")
        if act == "softmax" and n != CLASSES:
            raise argparse.ArgumentTypeError(f"layer {i + 1} {item!r}: the softmax layer has {CLASSES} units")
        layers.append(("dense", n, act))
    if layers[-1][0] != "dense" or layers[-1][2] != "softmax":
        layers.append(("dense", CLASSES, "softmax"))
    return layers


def layers_str(layers):
    return ",".join(f"{l[1]}:{l[2]}" if l[0] == "dense" else f"dropout:{l[1]}" for l in layers)


def dense(layers):
    """[(units, activation, dropout rates after it)] of the Dense layers."""
    out = []
    for l in layers:
        if l[0] == "dense":
            out.append((l[1], l[2], []))
        else:
            out[-1][2].append(l[1])
    return out


def widths(layers):
    """(fan_in, fan_out) of each Dense layer."""
    sizes = [PIXELS] + [n for n, _, _ in dense(layers)]
    return list(zip(sizes[:-1], sizes[1:]))


def idx(name):
    raw = gzip.open(DATA / f"{name}.gz").read()
    ndims = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndims).reshape(dims)


def load():
    xtr = idx("train-images-idx3-ubyte").reshape(-1, 784).astype("float32") / 255
    xte = idx("t10k-images-idx3-ubyte").reshape(-1, 784).astype("float32") / 255
    return xtr, idx("train-labels-idx1-ubyte"), xte, idx("t10k-labels-idx1-ubyte")


def glorot(rng, fan_in, fan_out):
    limit = np.sqrt(6 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, (fan_in, fan_out)).astype("float32")


def init_params(rng, layers):
    """[W1, b1, W2, b2, ...]: Glorot-uniform kernels drawn in layer order, zero biases."""
    params = []
    for fan_in, fan_out in widths(layers):
        params += [glorot(rng, fan_in, fan_out), np.zeros(fan_out, "float32")]
    return params


# kiln's placement probe (--probe), if built; None: not run.
PROBE = [pathlib.Path(__file__).resolve().parent.parent / "target" / "release" / "examples" / "placement"]
# The round trips and placements of the epochs timed so far, in order.
PLACES = []


def probe():
    """Appends the current placement to PLACES: (round trip ns, "near" | "far"), or None."""
    path = PROBE[0]
    if path is None or not path.exists():
        PLACES.append(None)
        return
    try:
        out = subprocess.run([str(path)], capture_output=True, text=True, timeout=10).stdout.split()
        PLACES.append((int(out[0]), out[1]) if len(out) == 2 else None)
    except (OSError, subprocess.SubprocessError, ValueError):
        PLACES.append(None)


def report(name, layers, epoch_times, acc, validate):
    steady = epoch_times[1:] or epoch_times
    places = PLACES[-len(epoch_times):] if PLACES else []
    kinds = {p[1] if p else "unknown" for p in places[1:] or places}
    line = {"framework": name, "layers": layers_str(layers), "validate": validate,
            "epoch_seconds": epoch_times, "mean_epoch_seconds_after_first": sum(steady) / len(steady),
            "test_acc": acc}
    if places:
        line["round_trip_ns"] = [p[0] if p else None for p in places]
        line["placement"] = kinds.pop() if len(kinds) == 1 else "mixed"
    print(json.dumps(line), flush=True)


def run_keras(data, layers, epochs, validate):
    import keras

    xtr, ytr, xte, yte = data
    # Dense's defaults are the Glorot-uniform kernel and zero bias.
    made = [keras.layers.Dense(l[1], activation=l[2]) if l[0] == "dense" else keras.layers.Dropout(l[1])
            for l in layers]
    model = keras.Sequential([keras.Input((PIXELS,))] + made)
    model.compile(optimizer=keras.optimizers.RMSprop(), loss="categorical_crossentropy", metrics=["accuracy"])
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)
            probe()

    val = (xte, keras.utils.to_categorical(yte, 10)) if validate else None
    model.fit(xtr, keras.utils.to_categorical(ytr, 10), epochs=epochs, batch_size=128, verbose=0,
              callbacks=[Timer()], validation_data=val)
    _, acc = model.evaluate(xte, keras.utils.to_categorical(yte, 10), verbose=0)
    report("keras", layers, times, float(acc), validate)


def run_kiln_python(data, layers, epochs, threads, validate):
    """kiln's Python package (`pip install ./python`), driven exactly as Keras is above."""
    import kiln

    kiln.config.set_threads(threads)
    xtr, ytr, xte, yte = data
    made = [kiln.layers.Dense(l[1], activation=l[2]) if l[0] == "dense" else kiln.layers.Dropout(l[1])
            for l in layers]
    model = kiln.models.Sequential([kiln.Input((PIXELS,))] + made)
    model.compile(optimizer=kiln.optimizers.RMSprop(), loss="categorical_crossentropy", metrics=["accuracy"])
    times = []

    class Timer(kiln.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)
            probe()

    val = (xte, kiln.utils.to_categorical(yte, 10)) if validate else None
    model.fit(xtr, kiln.utils.to_categorical(ytr, 10), epochs=epochs, batch_size=128, verbose=0,
              callbacks=[Timer()], validation_data=val)
    _, acc = model.evaluate(xte, kiln.utils.to_categorical(yte, 10), verbose=0)
    report("kiln-python", layers, times, float(acc), validate)


def run_torch(data, layers, epochs, threads, validate):
    import torch

    torch.set_num_threads(threads)
    xtr, ytr, xte, yte = (torch.from_numpy(np.ascontiguousarray(a)) for a in data)
    ytr, yte = ytr.long(), yte.long()
    rng = np.random.default_rng(1)
    params = [torch.from_numpy(p) for p in init_params(rng, layers)]
    for p in params:
        p.requires_grad_(True)
    vel = [torch.zeros_like(p) for p in params]
    acts = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "linear": lambda z: z}

    stack = dense(layers)

    def forward(x, training):
        # Logits: the last layer's softmax is inside cross_entropy.
        for i, (_, act, rates) in enumerate(stack[:-1]):
            x = acts[act](x @ params[2 * i] + params[2 * i + 1])
            for rate in rates:
                x = torch.nn.functional.dropout(x, rate, training=training)
        return x @ params[-2] + params[-1]

    def test_acc():
        with torch.no_grad():
            return (forward(xte, False).argmax(1) == yte).float().mean().item()

    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 128):
            idx_ = perm[i : i + 128]
            loss = torch.nn.functional.cross_entropy(forward(xtr[idx_], True), ytr[idx_])
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g, v in zip(params, grads, vel):
                    v.mul_(0.9).add_(0.1 * g * g)
                    p.sub_(1e-3 * g / torch.sqrt(v + 1e-7))
        if validate:
            test_acc()
        times.append(time.perf_counter() - t)
        probe()
    report("torch", layers, times, test_acc(), validate)


def run_jax(data, layers, epochs, validate):
    import jax
    import jax.numpy as jnp

    xtr, ytr, xte, yte = data
    rng = np.random.default_rng(1)
    params = [jnp.asarray(p) for p in init_params(rng, layers)]
    vel = [jnp.zeros_like(p) for p in params]
    acts = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "linear": lambda z: z}

    stack = dense(layers)

    def forward(p, x, key=None):
        # Logits: the last layer's softmax is inside the loss's log_softmax.
        for i, (_, act, rates) in enumerate(stack[:-1]):
            x = acts[act](x @ p[2 * i] + p[2 * i + 1])
            for j, rate in enumerate(rates):
                if key is not None and rate > 0:
                    keep = jax.random.bernoulli(jax.random.fold_in(key, 16 * i + j), 1 - rate, x.shape)
                    x = jnp.where(keep, x / (1 - rate), 0)
        return x @ p[-2] + p[-1]

    def loss(p, x, y, key):
        logp = jax.nn.log_softmax(forward(p, x, key))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], 1))

    predict = jax.jit(lambda p, x: forward(p, x).argmax(1))

    @jax.jit
    def step(p, v, x, y, key):
        g = jax.grad(loss)(p, x, y, key)
        v = [0.9 * vi + 0.1 * gi * gi for vi, gi in zip(v, g)]
        p = [pi - 1e-3 * gi / jnp.sqrt(vi + 1e-7) for pi, gi, vi in zip(p, g, v)]
        return p, v

    times = []
    key = jax.random.PRNGKey(1)
    for _ in range(epochs):
        t = time.perf_counter()
        perm = rng.permutation(len(xtr))
        for i in range(0, len(xtr), 128):
            idx_ = perm[i : i + 128]
            key, sub = jax.random.split(key)
            params, vel = step(params, vel, xtr[idx_], ytr[idx_].astype("int32"), sub)
        jax.block_until_ready(params)
        if validate:
            float((predict(params, xte) == yte).mean())
        times.append(time.perf_counter() - t)
        probe()
    acc = float((predict(params, xte) == yte).mean())
    report("jax", layers, times, acc, validate)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="keras,torch,jax,kiln-python")
    ap.add_argument("--layers", type=parse_layers, default="512:relu,10:softmax",
                    help="the stack, Keras order, output included: UNITS:ACTIVATION (relu, sigmoid, tanh, linear, "
                         "softmax last) or dropout:RATE, comma-separated; 10:softmax appended if the last is not "
                         "softmax [default: 512:relu,10:softmax]")
    ap.add_argument("--validate", action="store_true",
                    help="evaluate the test set after every epoch, inside the epoch's time")
    ap.add_argument("--probe", type=pathlib.Path, default=PROBE[0],
                    help="kiln's placement probe, run after every epoch [default: target/release/examples/placement]")
    ap.add_argument("--no-probe", action="store_true", help="do not run the placement probe")
    args = ap.parse_args()
    PROBE[0] = None if args.no_probe else args.probe
    # Limit every framework to the same number of threads as kiln's run.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ["XLA_FLAGS"] = f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={args.threads}"
    data = load()
    runners = {"keras": lambda: run_keras(data, args.layers, args.epochs, args.validate),
               "kiln-python": lambda: run_kiln_python(data, args.layers, args.epochs, args.threads, args.validate),
               "torch": lambda: run_torch(data, args.layers, args.epochs, args.threads, args.validate),
               "jax": lambda: run_jax(data, args.layers, args.epochs, args.validate)}
    for name in args.only.split(","):
        try:
            runners[name]()
        except ImportError as e:
            print(json.dumps({"framework": name, "skipped": f"not installed ({e})"}), flush=True)


if __name__ == "__main__":
    main()

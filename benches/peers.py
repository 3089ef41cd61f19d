#!/usr/bin/env python3
"""The same 5-epoch job as `cargo run --release --bin train` in the peer
frameworks that are installed (Keras/TensorFlow, PyTorch, JAX), on the
vendored MNIST, so their epoch times can be compared on one machine.

    python3 benches/peers.py [--epochs 5] [--threads 2] [--only keras,torch,jax]

Each framework runs the tutorial network exactly as kiln does: Dense(784 ->
512, ReLU) -> Dense(512 -> 10, softmax), categorical cross-entropy,
RMSprop as Keras 3 runs it (v = 0.9 v + 0.1 g^2; w -= 1e-3 g / sqrt(v +
1e-7), written out by hand for PyTorch and JAX, whose own RMSprop puts eps
outside the square root), Glorot-uniform weights, zero biases, batch 128,
shuffled every epoch. Prints one JSON line per framework with the mean epoch
time (first epoch excluded, it includes compilation) and the test accuracy.
Frameworks that are not installed are skipped; installing them is not part
of kiln's tests.
"""

import argparse
import gzip
import json
import os
import pathlib
import time

import numpy as np

DATA = pathlib.Path(__file__).resolve().parent.parent / "data" / "mnist"


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


def report(name, epoch_times, acc):
    steady = epoch_times[1:] or epoch_times
    print(json.dumps({"framework": name, "epoch_seconds": epoch_times,
                      "mean_epoch_seconds_after_first": sum(steady) / len(steady), "test_acc": acc}), flush=True)


def run_keras(data, epochs):
    import keras

    xtr, ytr, xte, yte = data
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(512, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.RMSprop(), loss="categorical_crossentropy", metrics=["accuracy"])
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    model.fit(xtr, keras.utils.to_categorical(ytr, 10), epochs=epochs, batch_size=128, verbose=0,
              callbacks=[Timer()])
    _, acc = model.evaluate(xte, keras.utils.to_categorical(yte, 10), verbose=0)
    report("keras", times, float(acc))


def run_torch(data, epochs, threads):
    import torch

    torch.set_num_threads(threads)
    xtr, ytr, xte, yte = (torch.from_numpy(np.ascontiguousarray(a)) for a in data)
    ytr, yte = ytr.long(), yte.long()
    rng = np.random.default_rng(1)
    params = [torch.from_numpy(glorot(rng, 784, 512)), torch.zeros(512),
              torch.from_numpy(glorot(rng, 512, 10)), torch.zeros(10)]
    for p in params:
        p.requires_grad_(True)
    vel = [torch.zeros_like(p) for p in params]

    def forward(x):
        return torch.relu(x @ params[0] + params[1]) @ params[2] + params[3]

    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 128):
            idx_ = perm[i : i + 128]
            loss = torch.nn.functional.cross_entropy(forward(xtr[idx_]), ytr[idx_])
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g, v in zip(params, grads, vel):
                    v.mul_(0.9).add_(0.1 * g * g)
                    p.sub_(1e-3 * g / torch.sqrt(v + 1e-7))
        times.append(time.perf_counter() - t)
    with torch.no_grad():
        acc = (forward(xte).argmax(1) == yte).float().mean().item()
    report("torch", times, acc)


def run_jax(data, epochs):
    import jax
    import jax.numpy as jnp

    xtr, ytr, xte, yte = data
    rng = np.random.default_rng(1)
    params = [jnp.asarray(glorot(rng, 784, 512)), jnp.zeros(512), jnp.asarray(glorot(rng, 512, 10)), jnp.zeros(10)]
    vel = [jnp.zeros_like(p) for p in params]

    def forward(p, x):
        return jax.nn.relu(x @ p[0] + p[1]) @ p[2] + p[3]

    def loss(p, x, y):
        logp = jax.nn.log_softmax(forward(p, x))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], 1))

    @jax.jit
    def step(p, v, x, y):
        g = jax.grad(loss)(p, x, y)
        v = [0.9 * vi + 0.1 * gi * gi for vi, gi in zip(v, g)]
        p = [pi - 1e-3 * gi / jnp.sqrt(vi + 1e-7) for pi, gi, vi in zip(p, g, v)]
        return p, v

    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        perm = rng.permutation(len(xtr))
        for i in range(0, len(xtr), 128):
            idx_ = perm[i : i + 128]
            params, vel = step(params, vel, xtr[idx_], ytr[idx_].astype("int32"))
        jax.block_until_ready(params)
        times.append(time.perf_counter() - t)
    acc = float((forward(params, xte).argmax(1) == yte).mean())
    report("jax", times, acc)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="keras,torch,jax")
    args = ap.parse_args()
    # Limit every framework to the same number of threads as kiln's run.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ["XLA_FLAGS"] = f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={args.threads}"
    data = load()
    runners = {"keras": lambda: run_keras(data, args.epochs), "torch": lambda: run_torch(data, args.epochs, args.threads),
               "jax": lambda: run_jax(data, args.epochs)}
    for name in args.only.split(","):
        try:
            runners[name]()
        except ImportError as e:
            print(json.dumps({"framework": name, "skipped": f"not installed ({e})"}), flush=True)


if __name__ == "__main__":
    main()

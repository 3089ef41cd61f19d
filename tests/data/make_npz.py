#!/usr/bin/env python3
"""Writes the .npz fixtures tests/npz.rs reads, from the vendored MNIST: the
first 300 training and 100 test images in the forms Keras's users have.

    python3 tests/data/make_npz.py   # needs numpy

mnist-small.npz         np.savez_compressed, as keras.datasets.mnist caches
                        mnist.npz: x uint8 (N, 28, 28), y uint8 (N,)
mnist-small-f32.npz     np.savez (stored, memory-mapped by kiln): x float32
                        x / 255 (N, 784), y int64 (N,)
mnist-small-f64-onehot.npz  compressed: x float64 x / 255 (N, 28, 28), y
                        float32 one-hot (N, 10)
mnist-small-std.npz     compressed: x float32 standardized per pixel with the
                        training split's mean and std, y uint8
"""
import gzip
import pathlib

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
MNIST = HERE.parent.parent / "data" / "mnist"


def idx(name, n):
    raw = gzip.open(MNIST / f"{name}.gz").read()
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(raw[3])]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * len(dims)).reshape(dims)[:n].copy()


xtr, ytr = idx("train-images-idx3-ubyte", 300), idx("train-labels-idx1-ubyte", 300)
xte, yte = idx("t10k-images-idx3-ubyte", 100), idx("t10k-labels-idx1-ubyte", 100)
np.savez_compressed(HERE / "mnist-small.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
f = lambda x: x.reshape(len(x), -1).astype("float32") / 255
np.savez(HERE / "mnist-small-f32.npz", x_train=f(xtr), y_train=ytr.astype("int64"), x_test=f(xte),
         y_test=yte.astype("int64"))
hot = lambda y: np.eye(10, dtype="float32")[y]
np.savez_compressed(HERE / "mnist-small-f64-onehot.npz", x_train=xtr.astype("float64") / 255, y_train=hot(ytr),
                    x_test=xte.astype("float64") / 255, y_test=hot(yte))
mean, std = f(xtr).mean(0), f(xtr).std(0)
std[std == 0] = 1
s = lambda x: ((f(x) - mean) / std).astype("float32")
np.savez_compressed(HERE / "mnist-small-std.npz", x_train=s(xtr), y_train=ytr, x_test=s(xte), y_test=yte)

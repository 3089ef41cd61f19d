"""Keras's own test accuracy for the tutorial network with a chosen optimizer,
to compare with `train --optimizer ...` (README, "Optimizers").

Usage: python benches/keras_accuracy.py --optimizer sgd --momentum 0.9 --nesterov --seeds 0 1
(needs keras and tensorflow-cpu; reads the vendored data/mnist)."""
import argparse, gzip, os
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--optimizer", default="rmsprop", choices=["rmsprop", "sgd", "adam", "adamw"])
ap.add_argument("--lr", type=float)
ap.add_argument("--momentum", type=float)
ap.add_argument("--nesterov", action="store_true")
ap.add_argument("--epochs", type=int, default=5)
ap.add_argument("--layers", default="512:relu")
ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
args = ap.parse_args()
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras
from keras import layers

data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "mnist")

def idx(name):
    raw = gzip.open(os.path.join(data, name + ".gz")).read()
    nd = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * nd).reshape(dims)

xtr = idx("train-images-idx3-ubyte").reshape(-1, 784).astype("float32") / 255
ytr = keras.utils.to_categorical(idx("train-labels-idx1-ubyte"), 10)
xte = idx("t10k-images-idx3-ubyte").reshape(-1, 784).astype("float32") / 255
yte = keras.utils.to_categorical(idx("t10k-labels-idx1-ubyte"), 10)
kw = {}
if args.lr is not None:
    kw["learning_rate"] = args.lr
if args.optimizer in ("sgd", "rmsprop") and args.momentum is not None:
    kw["momentum"] = args.momentum
if args.optimizer == "sgd":
    kw["nesterov"] = args.nesterov
make = {"rmsprop": keras.optimizers.RMSprop, "sgd": keras.optimizers.SGD,
        "adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW}[args.optimizer]
for seed in args.seeds:
    keras.utils.set_random_seed(seed)
    stack = [keras.Input((784,))]
    for spec in args.layers.split(","):
        units, act = spec.split(":")
        stack.append(layers.Dense(int(units), activation=act))
    stack.append(layers.Dense(10, activation="softmax"))
    net = keras.Sequential(stack)
    net.compile(optimizer=make(**kw), loss="categorical_crossentropy", metrics=["accuracy"])
    net.fit(xtr, ytr, epochs=args.epochs, batch_size=128, verbose=0)
    loss, acc = net.evaluate(xte, yte, verbose=0)
    print(f"keras {keras.__version__} {args.optimizer} {kw} seed {seed}: test accuracy {acc:.4f}", flush=True)

"""A hyper-parameter sweep of kiln models on Ray Tune.

Each trial trains kiln's Python package on MNIST with its own learning
rate, hidden width and dropout rate, on `--cpus-per-trial` CPUs (kiln's
threads set to match), reporting `val_accuracy` after every epoch from a
kiln callback; an ASHA scheduler stops the weak trials early.

On this machine (a local Ray instance):

    pip install ./python "ray[tune]"
    python examples/python/ray_tune_sweep.py --trials 16 --epochs 10

On a cluster, unchanged: start Ray on each machine, then run the script on
any of them with `--address auto`:

    ray start --head --port 6379                  # on the first machine
    ray start --address FIRST_MACHINE:6379        # on each of the others
    python examples/python/ray_tune_sweep.py --address auto --trials 64 --epochs 20

Every machine needs kiln's package installed (the trials import it) and the
same Python. Prints one JSON line per trial (its config, every epoch's
val_accuracy) and the best trial.
"""

import argparse
import json
import os
import tempfile

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler


def train_mnist(config):
    """One trial: kiln's Keras-shaped API, reporting to Tune every epoch."""
    import kiln
    from kiln import callbacks, layers, models, optimizers
    from kiln.datasets import mnist

    kiln.config.set_threads(config["threads"])
    (x, y), (xt, yt) = mnist.load_data()
    n = config["samples"]
    x = x[:n].reshape(n, 784).astype("float32") / 255
    xt = xt.reshape(len(xt), 784).astype("float32") / 255
    model = models.Sequential([
        kiln.Input((784,)),
        layers.Dense(config["units"], activation="relu"),
        layers.Dropout(config["dropout"]),
        layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=optimizers.RMSprop(learning_rate=config["lr"]),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    class ReportToTune(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            tune.report({"epoch": epoch + 1, "val_accuracy": logs["val_accuracy"], "val_loss": logs["val_loss"]})

    model.fit(x, y[:n], epochs=config["epochs"], batch_size=128, validation_data=(xt, yt), verbose=0,
              callbacks=[ReportToTune()])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--samples", type=int, default=60000, help="training images per trial")
    ap.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray instance [default: all]")
    ap.add_argument("--cpus-per-trial", type=int, default=1)
    ap.add_argument("--address", default=None, help="an existing Ray cluster ('auto'), else a local instance")
    ap.add_argument("--storage", default=None, help="where Tune keeps its results [default: a temporary directory]")
    args = ap.parse_args()
    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(num_cpus=args.cpus, include_dashboard=False)
    storage = args.storage or tempfile.mkdtemp(prefix="kiln-tune-")
    try:
        tuner = tune.Tuner(
            tune.with_resources(train_mnist, {"cpu": args.cpus_per_trial}),
            param_space={
                "lr": tune.loguniform(1e-4, 1e-2),
                "units": tune.choice([64, 128, 256, 512]),
                "dropout": tune.uniform(0.0, 0.5),
                "epochs": args.epochs,
                "samples": args.samples,
                "threads": args.cpus_per_trial,
            },
            tune_config=tune.TuneConfig(
                metric="val_accuracy",
                mode="max",
                num_samples=args.trials,
                scheduler=ASHAScheduler(max_t=args.epochs, grace_period=1, time_attr="training_iteration"),
            ),
            run_config=tune.RunConfig(name="kiln_mnist", storage_path=os.path.abspath(storage), verbose=0),
        )
        results = tuner.fit()
        for r in results:
            df = r.metrics_dataframe
            epochs = [] if df is None else df["epoch"].tolist()
            accs = [] if df is None else df["val_accuracy"].tolist()
            config = {k: r.config[k] for k in ("lr", "units", "dropout")}
            print(json.dumps({"trial": r.path.rsplit("/", 1)[-1], "config": config, "epochs": epochs,
                              "val_accuracy": accs, "error": str(r.error) if r.error else None}), flush=True)
        best = results.get_best_result()
        print(json.dumps({"best": {k: best.config[k] for k in ("lr", "units", "dropout")},
                          "val_accuracy": best.metrics["val_accuracy"]}), flush=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()

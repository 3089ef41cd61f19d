"""`Sequential`, with Keras 3's methods, signatures and defaults, trained and
run by kiln's Rust engine (`kiln._kiln`)."""

import sys

import numpy as np

from . import _kiln, callbacks as callbacks_module, layers as layers_module, optimizers, utils

_LOSSES = ("categorical_crossentropy", "sparse_categorical_crossentropy")
_METRICS = {"accuracy", "acc", "categorical_accuracy", "sparse_categorical_accuracy"}


def _verbosity(verbose):
    if verbose == "auto":
        return 1
    if verbose in (0, 1, 2):
        return verbose
    raise ValueError(f"verbose={verbose!r}: expected 'auto', 0, 1 or 2")


class _StopTraining(Exception):
    """Raised after an epoch whose callbacks set `model.stop_training`."""


class Sequential:
    """A stack of layers: `Dense`, `Dropout`, and `Input` or `Flatten` first."""

    def __init__(self, layers=None, trainable=True, name=None):
        if not trainable:
            raise ValueError("Sequential: trainable=False is not supported by kiln")
        self.name = name or "sequential"
        self.layers = []
        self._input_shape = None
        self._flatten = False
        self._net = None
        self._compiled = None
        self.stop_training = False
        for layer in layers or []:
            self.add(layer)

    # -- building ---------------------------------------------------------

    def add(self, layer):
        """Adds `layer` on top of the stack."""
        if not isinstance(layer, layers_module.Layer):
            raise TypeError(f"Sequential.add: {layer!r} is not a kiln layer")
        if self._net is not None:
            raise ValueError("Sequential.add: the model is already built; add layers before fit")
        first = not any(isinstance(l, (layers_module.Dense, layers_module.Dropout)) for l in self.layers)
        if isinstance(layer, (layers_module.InputLayer, layers_module.Flatten)) or layer.input_shape is not None:
            if not first:
                raise ValueError(f"{type(layer).__name__}: an input shape or Flatten is only allowed before the first Dense layer")
            if layer.input_shape is not None:
                self._input_shape = tuple(layer.input_shape)
            if isinstance(layer, layers_module.Flatten):
                self._flatten = True
        if isinstance(layer, layers_module.InputLayer):
            return  # Keras does not list an Input among the layers either.
        layer._model = self
        self.layers.append(layer)

    def _dense(self):
        return [l for l in self.layers if isinstance(l, layers_module.Dense)]

    def _spec(self):
        stack = [l for l in self.layers if isinstance(l, (layers_module.Dense, layers_module.Dropout))]
        if not stack or not isinstance(stack[-1], layers_module.Dense):
            raise ValueError("the model needs a Dense output layer last (e.g. Dense(10, activation='softmax'))")
        return ",".join(l._spec() for l in stack)

    def _width(self, shape):
        if len(shape) != 1 and not self._flatten:
            raise ValueError(f"samples of shape {shape} need layers.Flatten() first; kiln's Dense layers read vectors")
        return int(np.prod(shape))

    def _build(self, width):
        if self._net is not None:
            return
        if self._compiled is None:
            raise ValueError("the model is not compiled: call compile(optimizer, loss, metrics) first")
        dense = self._dense()
        if not dense:
            raise ValueError("the model has no Dense layer")
        opt = self._compiled["optimizer"]
        self._net = _kiln.Network(self._spec(), width, dense[-1].units, utils._seed(), opt._name, opt.get_config())
        for i, layer in enumerate(dense):
            layer._dense_index = i
        if self._input_shape is None:
            self._input_shape = (width,)

    def _ensure_built(self):
        if self._net is None:
            if self._input_shape is None:
                raise ValueError("the model is not built: give the first layer input_shape, or call fit first")
            self._build(self._width(self._input_shape))

    # -- compile, fit, evaluate, predict ----------------------------------

    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=None, weighted_metrics=None,
                run_eagerly=False, steps_per_execution=1, jit_compile="auto", auto_scale_loss=True):
        """Keras's `compile`: an optimizer by name or object, the loss
        `categorical_crossentropy` (one-hot labels) or
        `sparse_categorical_crossentropy` (class ids), `metrics=['accuracy']`.
        Compiling a built model again keeps its weights and gives it the new
        optimizer, fresh, as Keras's does."""
        if loss not in _LOSSES:
            raise ValueError(f"loss {loss!r} is not supported; kiln trains with {' or '.join(_LOSSES)}")
        metrics = list(metrics or [])
        unknown = [m for m in metrics if m not in _METRICS]
        if unknown:
            raise ValueError(f"metrics {unknown} are not supported; kiln reports 'accuracy'")
        for arg, got, default in (("loss_weights", loss_weights, None), ("weighted_metrics", weighted_metrics, None),
                                  ("steps_per_execution", steps_per_execution, 1)):
            if got != default:
                raise ValueError(f"compile: {arg}={got!r} is not supported by kiln")
        del run_eagerly, jit_compile, auto_scale_loss  # how Keras runs, not what it computes
        compiled = {"optimizer": optimizers.get(optimizer), "loss": loss, "metrics": bool(metrics)}
        before = self._net, self._compiled
        weights = None if self._net is None else [values for _, values in self._net.get_weights()]
        self._net, self._compiled = None, compiled
        if weights is not None:
            try:
                self._build(self._width(self._input_shape))
                self._net.set_weights(weights)
            except BaseException:
                self._net, self._compiled = before  # the trained model stays as it was
                raise

    def _x(self, x, what="x"):
        if x is None:
            raise ValueError(f"{what} is required (kiln takes NumPy arrays)")
        x = np.asarray(x)
        if x.ndim < 2:
            raise ValueError(f"{what} of shape {x.shape}: expected (samples, ...)")
        width = self._width(x.shape[1:])
        if self._input_shape is not None and int(np.prod(self._input_shape)) != width:
            raise ValueError(f"{what}: samples of shape {x.shape[1:]}, but the model's input shape is {self._input_shape}")
        if x.dtype == np.uint8:
            return np.ascontiguousarray(x.reshape(len(x), width)), width
        if x.dtype.kind in "fiub":
            return np.ascontiguousarray(x.reshape(len(x), width), dtype=np.float32), width
        raise TypeError(f"{what}: dtype {x.dtype} is not supported (uint8 or floats)")

    def _y(self, y, n, what="y"):
        if y is None:
            raise ValueError(f"{what} is required")
        y = np.asarray(y)
        if len(y) != n:
            raise ValueError(f"{what}: {len(y)} labels for {n} samples")
        classes = self._dense()[-1].units
        if self._compiled["loss"] == "categorical_crossentropy":
            if y.ndim != 2 or y.shape[1] != classes:
                raise ValueError(f"{what} of shape {y.shape}: categorical_crossentropy takes one-hot rows (N, {classes}); "
                                 "use to_categorical, or loss='sparse_categorical_crossentropy' for class ids")
            hot = (y == 1).sum(axis=1) == 1
            if not np.all(hot & np.all((y == 0) | (y == 1), axis=1)):
                bad = int(np.argmin(hot))
                raise ValueError(f"{what}: row {bad} is not one-hot; kiln trains on hard labels")
            ids = y.argmax(axis=1)
        else:
            ids = y.reshape(len(y), -1)
            if ids.shape[1] != 1 or ids.dtype.kind not in "iu":
                raise ValueError(f"{what} of shape {y.shape} and dtype {y.dtype}: sparse_categorical_crossentropy takes class ids (N,)")
            ids = ids[:, 0]
        if len(ids) and (ids.min() < 0 or ids.max() >= classes):
            raise ValueError(f"{what}: class id {int(ids.max() if ids.max() >= classes else ids.min())} "
                             f"is not in 0..{classes - 1} (the output layer's units)")
        return np.ascontiguousarray(ids, dtype=np.uint8)

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0,
            steps_per_epoch=None, validation_steps=None, validation_batch_size=None, validation_freq=1):
        """Keras's `fit`: trains for `epochs - initial_epoch` epochs and returns a
        `History` whose `.history` maps `loss`, `accuracy` (with metrics) and,
        with validation, `val_loss` and `val_accuracy` to per-epoch lists.

        x: samples `(N, ...)`, uint8 pixels or floats (floats that are all
           `k / 255` train through the u8 path, to the CLI's bits). uint8
           and float32 arrays in C order are read in place, not copied.
        y: one-hot rows `(N, C)` for `categorical_crossentropy`, class ids
           `(N,)` for `sparse_categorical_crossentropy`.
        batch_size: 32 when None, as Keras. validation_split takes the last
        fraction before shuffling; validation_data is `(x_val, y_val)`.
        steps_per_epoch: each epoch stops after that many steps, the next
        going on from the following batch (Keras's epoch iterator).
        callbacks: `kiln.callbacks` (EarlyStopping, ModelCheckpoint,
        Callback subclasses with epoch and batch hooks). The
        GIL is released while kiln trains; Ctrl-C stops within a second.
        Unsupported arguments (class_weight, sample_weight, ...) raise
        ValueError."""
        verbose = _verbosity(verbose)
        for arg, got, default in (("class_weight", class_weight, None), ("sample_weight", sample_weight, None),
                                  ("validation_steps", validation_steps, None),
                                  ("validation_batch_size", validation_batch_size, None),
                                  ("validation_freq", validation_freq, 1)):
            if got is not default and got != default:
                raise ValueError(f"fit: {arg}={got!r} is not supported by kiln yet")
        if self._compiled is None:
            raise ValueError("the model is not compiled: call compile(optimizer, loss, metrics) first")
        batch_size = 32 if batch_size is None else batch_size
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"fit: batch_size must be a positive integer, got {batch_size!r}")
        x, width = self._x(x)
        self._build(width)
        y = self._y(y, len(x))
        if validation_data is None and validation_split:
            if not 0 < validation_split < 1:
                raise ValueError(f"fit: validation_split must be in (0, 1), got {validation_split!r}")
            at = int(len(x) * (1 - validation_split))
            x, y, validation_data = x[:at], y[:at], (x[at:], y[at:])
            val = (np.ascontiguousarray(validation_data[0]), np.ascontiguousarray(validation_data[1]))
        elif validation_data is not None:
            if len(validation_data) != 2:
                raise ValueError("fit: validation_data must be (x_val, y_val); sample weights are not supported")
            vx, _ = self._x(validation_data[0], "validation_data x")
            val = (vx, self._y(validation_data[1], len(vx), "validation_data y"))
        else:
            val = None
        history = callbacks_module.History()
        cbs = [history] + list(callbacks or [])
        for cb in cbs:
            if not isinstance(cb, callbacks_module.Callback):
                raise TypeError(f"fit: callback {cb!r} is not a kiln.callbacks.Callback")
            cb.set_model(self)
        if steps_per_epoch is not None and (not isinstance(steps_per_epoch, int) or steps_per_epoch < 1):
            raise ValueError(f"fit: steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")
        # Per-batch hooks cost the GIL every step: asked only when a callback has one.
        def overrides(cb, *hooks):
            return any(getattr(type(cb), h) is not getattr(callbacks_module.Callback, h) for h in hooks)
        begin_hooks = [cb.on_train_batch_begin for cb in cbs
                       if overrides(cb, "on_train_batch_begin", "on_batch_begin")]
        end_hooks = [cb.on_train_batch_end for cb in cbs if overrides(cb, "on_train_batch_end", "on_batch_end")]
        batch_hooks = begin_hooks + end_hooks

        def begin_epoch(e):
            for cb in cbs:
                cb.on_epoch_begin(e)
            for hook in begin_hooks:
                hook(0, None)

        def on_batch(batch, loss, acc, steps):
            # Called by kiln after step `batch` and before the next: batch
            # `batch` ends and, within the epoch, `batch + 1` begins.
            logs = {"loss": loss, "accuracy": acc} if self._compiled["metrics"] else {"loss": loss}
            for hook in end_hooks:
                hook(batch, dict(logs))
            if batch + 1 < steps:
                for hook in begin_hooks:
                    hook(batch + 1, None)
        runs = epochs - initial_epoch
        for cb in cbs:
            cb.on_train_begin()
        if runs > 0:
            begin_epoch(initial_epoch)

        def report(i, logs):
            e = initial_epoch + i
            keras_logs = {k: logs[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in logs}
            if not self._compiled["metrics"]:
                keras_logs = {k: v for k, v in keras_logs.items() if "accuracy" not in k}
            if verbose:
                steps, secs = int(logs["steps"]), logs["seconds"]
                metrics = " - ".join(f"{k}: {v:.4f}" for k, v in sorted(keras_logs.items(), key=lambda kv: (kv[0].startswith("val_"), kv[0])))
                bar = " " + "\u2501" * 20 if verbose == 1 else " -"
                print(f"Epoch {e + 1}/{epochs}")
                print(f"{steps}/{steps}{bar} {secs:.0f}s {1000 * secs / max(steps, 1):.0f}ms/step - {metrics}")
                sys.stdout.flush()
            for cb in cbs:
                cb.on_epoch_end(e, dict(keras_logs))
            if self.stop_training:
                raise _StopTraining()
            if e + 1 < epochs:
                begin_epoch(e + 1)

        self.stop_training = False
        if runs > 0:
            try:
                self._net.fit(x, y, runs, batch_size, bool(shuffle), utils._seed(), val, report, steps_per_epoch,
                              on_batch if batch_hooks else None)
            except _StopTraining:
                pass  # a callback set stop_training: the weights are those after that epoch
        for cb in cbs:
            cb.on_train_end()
        return history

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, steps=None,
                 callbacks=None, return_dict=False):
        """Keras's `evaluate`: `[loss, accuracy]` (`loss` alone without metrics)."""
        verbose = _verbosity(verbose)
        if sample_weight is not None or steps is not None or callbacks:
            raise ValueError("evaluate: sample_weight, steps and callbacks are not supported by kiln yet")
        if self._compiled is None:
            raise ValueError("the model is not compiled: call compile(optimizer, loss, metrics) first")
        x, width = self._x(x)
        self._build(width)
        y = self._y(y, len(x))
        loss, acc = self._net.evaluate(x, y)
        if verbose:
            steps = -(-len(x) // (batch_size or 32))
            print(f"{steps}/{steps} {chr(0x2501) * 20} - accuracy: {acc:.4f} - loss: {loss:.4f}")
        if return_dict:
            return {"loss": loss, "accuracy": acc} if self._compiled["metrics"] else {"loss": loss}
        return [loss, acc] if self._compiled["metrics"] else loss

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """Keras's `predict`: class probabilities, float32 `(N, C)`."""
        _verbosity(verbose)
        if steps is not None or callbacks:
            raise ValueError("predict: steps and callbacks are not supported by kiln yet")
        x, width = self._x(x)
        if self._net is None:
            if self._compiled is None:
                self.compile(loss="categorical_crossentropy")
            self._build(width)
        return self._net.predict(x)

    # -- inspection and weights -------------------------------------------

    def summary(self, print_fn=None, **kwargs):
        """Prints Keras's `model.summary()` table."""
        if self._input_shape is None:
            raise ValueError("summary: the model is not built; give the first layer input_shape, or call fit first")
        width = self._width(self._input_shape)
        text = f'Model: "{self.name}"\n' + _kiln.summary(self._spec(), width, self._dense()[-1].units)
        (print_fn or print)(text)

    def get_weights(self):
        """Every weight in Keras's order (per Dense layer: kernel `(in, out)`, bias `(out,)`)."""
        self._ensure_built()
        return [np.asarray(v, dtype=np.float32).reshape(shape) for shape, v in self._net.get_weights()]

    def set_weights(self, weights):
        """Replaces the weights (Keras's order and shapes, as `get_weights` gives them)."""
        self._ensure_built()
        want = [tuple(s) for s, _ in self._net.get_weights()]
        weights = list(weights)
        if len(weights) != len(want):
            raise ValueError(f"set_weights: {len(weights)} arrays given; the model has {len(want)}")
        for i, (w, s) in enumerate(zip(weights, want)):
            if tuple(np.shape(w)) != s:
                raise ValueError(f"set_weights: array {i} has shape {np.shape(w)}, expected {s}")
        self._net.set_weights([np.asarray(w, dtype=np.float32).ravel().tolist() for w in weights])

    def export(self, filepath, format="onnx", verbose=True, **kwargs):
        """Keras 3's `model.export(path, format="onnx")`: an ONNX graph (float32
        `input` `[N, D]` -> `probabilities` `[N, C]`) for ONNX Runtime and the
        rest; the other formats are not supported."""
        import os

        if format != "onnx":
            raise ValueError(f"export: format={format!r} is not supported by kiln (only 'onnx')")
        if kwargs:
            raise TypeError(f"export() got unexpected keyword arguments: {', '.join(sorted(kwargs))}")
        self._ensure_built()
        self._net.export_onnx(os.fspath(filepath))
        if verbose:
            print(f"Saved an ONNX model to {filepath}")

    def save(self, filepath, overwrite=True, include_optimizer=True):
        """Writes a kiln model file (safetensors, as `train` writes them: the
        CLI's `predict`, `serve` and `train --init` read it, and
        `models.load_model` reads it back). Once the model has trained, the
        file keeps the optimizer's state too, as Keras's does, unless
        `include_optimizer=False` (kiln before 2026-12-07 reads only files
        without it)."""
        import os

        if not overwrite and os.path.exists(filepath):
            raise ValueError(f"save: {filepath} exists and overwrite=False")
        self._ensure_built()
        extra = {"loss": self._compiled["loss"]} if self._compiled else {}
        self._net.save(os.fspath(filepath), extra, bool(include_optimizer))


def _optimizer_from(call, schedule=None):
    """An optimizer from Keras's constructor call as kiln's model files record
    it (`RMSprop(learning_rate=0.001, rho=0.9, ...)`), with the learning-rate
    schedule recorded beside it (kiln's spec: `exponential:STEPS:RATE`,
    `cosine:STEPS`)."""
    import re

    if not call:
        # A file that records no optimizer: Keras's default.
        return optimizers.RMSprop()
    m = re.fullmatch(r"(\w+)\((.*)\)", call)
    classes = {cls.__name__: cls for cls in optimizers._BY_NAME.values()}
    if not m or m.group(1) not in classes:
        raise ValueError(f"optimizer {call!r} is not one kiln has ({', '.join(classes)})")
    args = {}
    for part in filter(None, (p.strip() for p in m.group(2).split(","))):
        key, _, value = part.partition("=")
        args[key.strip()] = {"True": True, "False": False}.get(value.strip()) if value.strip() in ("True", "False") else float(value)
    kind, *rest = (schedule or "constant").split(":")
    lr = args.get("learning_rate", classes[m.group(1)]().get_config()["learning_rate"])
    try:
        if kind == "exponential" and len(rest) == 2:
            args["learning_rate"] = optimizers.schedules.ExponentialDecay(lr, int(rest[0]), float(rest[1]))
        elif kind == "cosine" and len(rest) == 1:
            args["learning_rate"] = optimizers.schedules.CosineDecay(lr, int(rest[0]))
        elif kind != "constant" or rest:
            raise ValueError
    except ValueError:
        raise ValueError(f"its learning-rate schedule {schedule!r} is not one kiln knows") from None
    return classes[m.group(1)](**args)


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """Keras's `load_model` for kiln model files (written by `save` or by the
    CLI's `train`): the layers, the weights, and, with `compile`, the
    optimizer with its learning-rate schedule and, when the file has it
    (`save` writes it once the model has trained), its state, so that `fit`
    goes on exactly as it would have without the save; and the loss it was
    saved with (`categorical_crossentropy` when unrecorded)."""
    import os

    del safe_mode
    if custom_objects:
        raise ValueError("load_model: custom_objects are not supported by kiln")
    spec, inputs, classes, weights, meta = _kiln.load_model(os.fspath(filepath))
    model = Sequential([layers_module.Input((inputs,))])
    for part in spec.split(","):
        head, _, tail = part.partition(":")
        model.add(layers_module.Dropout(float(tail)) if head == "dropout" else layers_module.Dense(int(head), activation=tail))
    try:
        optimizer = _optimizer_from(meta.get("optimizer"), meta.get("lr_schedule")) if compile else "rmsprop"
    except (ValueError, TypeError) as e:
        raise ValueError(f"load_model: {os.fspath(filepath)}: {e}") from None
    model.compile(optimizer=optimizer,
                  loss=meta.get("loss", "categorical_crossentropy"), metrics=["accuracy"])
    model._build(inputs)
    if compile:
        model._net.restore(os.fspath(filepath))
    else:
        model._net.set_weights([values for _, values in weights])
    return model

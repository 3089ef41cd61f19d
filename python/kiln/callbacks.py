"""Keras's callback interface, as far as kiln calls it."""


class Callback:
    """Subclass and override `on_train_begin/end(logs)` and
    `on_epoch_begin/end(epoch, logs)`; kiln calls them from `fit` with
    Keras's log keys (`loss`, `accuracy`, `val_loss`, `val_accuracy`).
    Setting `self.model.stop_training = True` stops `fit` after the
    epoch. `on_train_batch_begin(batch, logs)` is called before every step
    (logs None, as Keras 3) and `on_train_batch_end(batch, logs)` after it
    (running `loss` and `accuracy` of the epoch); by default they call
    `on_batch_begin` and `on_batch_end`, as Keras's do. An exception from
    either stops `fit` before the next step. Per-batch hooks cost a call
    into Python every step, so kiln calls them only for callbacks that
    override one."""

    def __init__(self):
        self.model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs=logs)

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs=logs)

    def on_batch_begin(self, batch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass


class History(Callback):
    """What `fit` returns: `history` maps each log key to its per-epoch values."""

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)


def _better(mode, monitor):
    """`(current, best) -> bool` and the starting best for `mode` ('auto': max for accuracies)."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode={mode!r}: expected 'auto', 'min' or 'max'")
    up = mode == "max" or (mode == "auto" and "acc" in monitor)
    return (lambda a, b: a > b) if up else (lambda a, b: a < b), (-float("inf") if up else float("inf"))


class EarlyStopping(Callback):
    """Keras's `EarlyStopping`: stops `fit` when `monitor` has not improved
    by more than `min_delta` for `patience` epochs; with
    `restore_best_weights`, the best epoch's weights are put back when
    training ends."""

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto", baseline=None,
                 restore_best_weights=False, start_from_epoch=0):
        super().__init__()
        self.monitor, self.min_delta, self.patience, self.verbose = monitor, abs(min_delta), patience, verbose
        self.baseline, self.restore_best_weights, self.start_from_epoch = baseline, restore_best_weights, start_from_epoch
        self._better, self._worst = _better(mode, monitor)

    def on_train_begin(self, logs=None):
        self.wait, self.stopped_epoch, self.best, self.best_weights, self.best_epoch = 0, 0, self._worst, None, 0

    def _improved(self, current, reference):
        if reference is None:
            return True
        delta = self.min_delta if self._better(1, 0) else -self.min_delta
        return self._better(current - delta, reference)

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None:
            raise ValueError(f"EarlyStopping: monitor {self.monitor!r} is not in the logs {sorted(logs or {})}")
        if epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()
        self.wait += 1
        if self._improved(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._improved(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(Callback):
    """Keras's `ModelCheckpoint`: saves the model (kiln's model file) after
    every epoch, or with `save_best_only` when `monitor` improved;
    `filepath` may hold `{epoch}` and log keys (`"m-{epoch:02d}-{val_loss:.2f}.safetensors"`)."""

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False, save_weights_only=False,
                 mode="auto", save_freq="epoch", initial_value_threshold=None):
        super().__init__()
        if save_freq != "epoch":
            raise ValueError(f"ModelCheckpoint: save_freq={save_freq!r} is not supported by kiln (only 'epoch')")
        self.filepath, self.monitor, self.verbose, self.save_best_only = str(filepath), monitor, verbose, save_best_only
        self._better, worst = _better(mode, monitor)
        self.best = worst if initial_value_threshold is None else initial_value_threshold
        del save_weights_only  # kiln's model file holds the weights either way

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        path = self.filepath.format(epoch=epoch + 1, **logs)
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None:
                raise ValueError(f"ModelCheckpoint: monitor {self.monitor!r} is not in the logs {sorted(logs)}")
            if not self._better(current, self.best):
                return
            self.best = current
        if self.verbose > 0:
            print(f"Epoch {epoch + 1}: saving model to {path}")
        self.model.save(path)

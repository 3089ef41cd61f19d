"""Keras's callback interface, as far as kiln calls it."""


class Callback:
    """Subclass and override `on_train_begin/end(logs)` and
    `on_epoch_begin/end(epoch, logs)`; kiln calls them from `fit` with
    Keras's log keys (`loss`, `accuracy`, `val_loss`, `val_accuracy`).
    Per-batch hooks are not called yet: overriding one is an error."""

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
        pass

    def on_train_batch_end(self, batch, logs=None):
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

"""`keras.utils` helpers."""

import numpy as np


def to_categorical(x, num_classes=None):
    """One-hot rows (float32) of the integer class ids `x`, as Keras's
    `to_categorical`: `num_classes` defaults to `max(x) + 1`."""
    x = np.asarray(x)
    if x.dtype.kind not in "iub":
        if x.dtype.kind == "f" and np.all(np.isfinite(x)) and np.all(x == np.round(x)):
            x = x.astype("int64")
        else:
            raise ValueError(f"to_categorical: class ids must be integers, got {x.dtype}")
    if x.size and x.min() < 0:
        raise ValueError(f"to_categorical: class ids must be >= 0, got {int(x.min())}")
    if x.ndim > 1 and x.shape[-1] == 1:
        x = x.reshape(x.shape[:-1])
    n = int(x.max()) + 1 if num_classes is None and x.size else int(num_classes or 0)
    if x.size and int(x.max()) >= n:
        raise ValueError(f"to_categorical: class id {int(x.max())} is not below num_classes={n}")
    out = np.zeros(x.shape + (n,), dtype="float32")
    np.put_along_axis(out, x[..., None].astype("int64"), 1.0, axis=-1)
    return out


_SEED = [1]


def set_random_seed(seed):
    """Seeds everything kiln draws (initial weights, shuffles, Dropout masks),
    as `keras.utils.set_random_seed` does; kiln's default seed is 1, so runs
    are reproducible unless you change it."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"set_random_seed: seed must be a non-negative integer, got {seed!r}")
    _SEED[0] = seed


def _seed():
    return _SEED[0]

"""kiln's runtime settings."""

from . import _kiln


def set_threads(n):
    """Runs kiln's work on `n` threads (default: every CPU). Like TensorFlow's
    `tf.config.threading` settings it must come before the first `fit`,
    `evaluate` or `predict` of the process, from any thread; under Ray Tune,
    call it with the trial's CPUs (`tune.with_resources(..., {"cpu": k})`)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_threads: n must be a positive integer, got {n!r}")
    _kiln.set_threads(n)


def get_threads():
    """The threads kiln's work runs on."""
    return _kiln.get_threads()

"""kiln's runtime settings."""

from . import _kiln


def set_threads(n):
    """Runs kiln's work on `n` threads (default: every CPU). Like TensorFlow's
    `tf.config.threading` settings it must come before the first `fit`,
    `evaluate` or `predict` of the process, from any thread; under Ray Tune,
    call it with the trial's CPUs (`tune.with_resources(..., {"cpu": k})`)."""
    import os

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_threads: n must be a positive integer, got {n!r}")
    cpus = os.cpu_count() or 1
    if n > 4 * cpus:
        raise ValueError(f"set_threads({n}): this machine has {cpus} CPUs; more than {4 * cpus} threads only wait "
                         "for each other")
    _kiln.set_threads(n)


def get_threads():
    """The threads kiln's work runs on."""
    return _kiln.get_threads()

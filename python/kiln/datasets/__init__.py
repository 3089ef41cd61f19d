"""Datasets, as `keras.datasets` has them (read from kiln's vendored files, no network)."""

from . import mnist

__all__ = ["mnist"]

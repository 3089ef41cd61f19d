"""kiln: Keras's Sequential API, trained and run by kiln's Rust engine.

    from kiln.datasets import mnist
    from kiln import models, layers
    from kiln.utils import to_categorical

Programs written for Keras run with their imports changed; anything kiln
does not support raises ValueError or TypeError naming it.
"""

from . import callbacks, config, datasets, layers, models, optimizers, utils
from .layers import Input

__all__ = ["callbacks", "config", "datasets", "layers", "models", "optimizers", "utils", "Input"]
__version__ = "0.1.0"

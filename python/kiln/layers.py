"""The layers kiln runs, with Keras 3's names, arguments and defaults."""

from . import _kiln

# Keras's names of the activations kiln has (the list is the Rust crate's).
_ACTIVATIONS = tuple(_kiln.ACTIVATIONS)


def _no_unknown(kind, kwargs):
    if kwargs:
        raise TypeError(f"{kind}() got unexpected keyword arguments: {', '.join(sorted(kwargs))}")


class Layer:
    """Base class of kiln's layers."""

    input_shape = None

    def __init__(self, name=None):
        self.name = name
        self._model = None
        self._dense_index = None

    def get_weights(self):
        """This layer's weights (kernel and bias for Dense; none for the others)."""
        if self._dense_index is None:
            return []
        if self._model is None or self._model._net is None:
            raise ValueError(f"{self.name or type(self).__name__}: the model is not built yet (call fit, or give input_shape)")
        return self._model.get_weights()[2 * self._dense_index : 2 * self._dense_index + 2]


class Dense(Layer):
    """`Dense(units, activation=None)`: `activation(x @ kernel + bias)`, the kernel
    Glorot-uniform and the bias zero, as Keras initializes them."""

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, bias_constraint=None, input_shape=None,
                 input_dim=None, name=None, **kwargs):
        _no_unknown("Dense", kwargs)
        super().__init__(name)
        if isinstance(units, bool) or not isinstance(units, int) or units < 1:
            raise ValueError(f"Dense: units must be a positive integer, got {units!r}")
        act = "linear" if activation is None else activation
        if not isinstance(act, str) or act.lower() not in _ACTIVATIONS:
            raise ValueError(f"Dense: activation {activation!r} is not supported; kiln has {', '.join(_ACTIVATIONS)}")
        unsupported = {"use_bias": (use_bias, True), "kernel_initializer": (kernel_initializer, "glorot_uniform"),
                       "bias_initializer": (bias_initializer, "zeros"), "kernel_regularizer": (kernel_regularizer, None),
                       "bias_regularizer": (bias_regularizer, None), "activity_regularizer": (activity_regularizer, None),
                       "kernel_constraint": (kernel_constraint, None), "bias_constraint": (bias_constraint, None)}
        for arg, (got, default) in unsupported.items():
            if got != default:
                raise ValueError(f"Dense: {arg}={got!r} is not supported by kiln (only {default!r})")
        self.units, self.activation = units, act.lower()
        if input_dim is not None:
            input_shape = (input_dim,)
        self.input_shape = tuple(input_shape) if input_shape is not None else None

    def _spec(self):
        return f"{self.units}:{self.activation}"


class Dropout(Layer):
    """`Dropout(rate)`: in training each input is kept with probability
    `1 - rate` and scaled by `1 / (1 - rate)`; at inference it passes unchanged."""

    def __init__(self, rate, noise_shape=None, seed=None, name=None, **kwargs):
        _no_unknown("Dropout", kwargs)
        super().__init__(name)
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate < 1:
            raise ValueError(f"Dropout: rate must be in [0, 1), got {rate!r}")
        if noise_shape is not None:
            raise ValueError("Dropout: noise_shape is not supported by kiln")
        if seed is not None:
            raise ValueError("Dropout: seed is not supported by kiln; kiln.utils.set_random_seed seeds every mask")
        self.rate = float(rate)

    def _spec(self):
        return f"dropout:{self.rate!r}"


class Flatten(Layer):
    """`Flatten()`, as the first layer: each sample's values in one row."""

    def __init__(self, data_format=None, input_shape=None, name=None, **kwargs):
        _no_unknown("Flatten", kwargs)
        super().__init__(name)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"Flatten: data_format={data_format!r} is not supported")
        self.input_shape = tuple(input_shape) if input_shape is not None else None


class InputLayer(Layer):
    """What `Input(shape)` returns: the shape of one sample."""

    def __init__(self, shape, name=None):
        super().__init__(name)
        if shape is None:
            raise ValueError("Input: shape is required")
        self.input_shape = tuple(shape) if not isinstance(shape, int) else (shape,)


def Input(shape=None, batch_size=None, dtype=None, name=None, **kwargs):
    """`Input(shape)`: the first entry of a `Sequential` stack."""
    _no_unknown("Input", kwargs)
    if batch_size is not None:
        raise ValueError("Input: batch_size is not supported by kiln (fit's batch_size sets it)")
    if dtype not in (None, "float32", "uint8"):
        raise ValueError(f"Input: dtype={dtype!r} is not supported (float32 or uint8)")
    return InputLayer(shape, name)

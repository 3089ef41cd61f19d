"""Keras 3's optimizers, with their argument names and defaults, run by kiln's kernels."""


class Optimizer:
    """Base class: a kiln optimizer name and Keras's arguments."""

    _name = None

    def __init__(self, **args):
        self._args = args

    def get_config(self):
        return dict(self._args)


def _lr(learning_rate):
    if not isinstance(learning_rate, (int, float)) or isinstance(learning_rate, bool):
        raise ValueError(f"learning_rate={learning_rate!r}: kiln takes a number (schedules are not supported yet)")
    return float(learning_rate)


class RMSprop(Optimizer):
    _name = "rmsprop"

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-07, centered=False, **kwargs):
        _check(kwargs, "RMSprop")
        super().__init__(learning_rate=_lr(learning_rate), rho=rho, momentum=momentum, epsilon=epsilon,
                         centered=bool(centered))


class SGD(Optimizer):
    _name = "sgd"

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, **kwargs):
        _check(kwargs, "SGD")
        super().__init__(learning_rate=_lr(learning_rate), momentum=momentum, nesterov=bool(nesterov))


class Adam(Optimizer):
    _name = "adam"

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-07, amsgrad=False, **kwargs):
        _check(kwargs, "Adam")
        if amsgrad:
            raise ValueError("Adam: amsgrad=True is not supported by kiln")
        super().__init__(learning_rate=_lr(learning_rate), beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)


class AdamW(Optimizer):
    _name = "adamw"

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-07,
                 amsgrad=False, **kwargs):
        _check(kwargs, "AdamW")
        if amsgrad:
            raise ValueError("AdamW: amsgrad=True is not supported by kiln")
        super().__init__(learning_rate=_lr(learning_rate), weight_decay=weight_decay, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon)


# Keras's base-optimizer arguments kiln does not run, with their defaults.
_UNSUPPORTED = {"weight_decay": None, "clipnorm": None, "clipvalue": None, "global_clipnorm": None,
                "use_ema": False, "ema_momentum": 0.99, "ema_overwrite_frequency": None,
                "loss_scale_factor": None, "gradient_accumulation_steps": None, "name": None}


def _check(kwargs, kind):
    for k, v in kwargs.items():
        if k not in _UNSUPPORTED:
            raise TypeError(f"{kind}() got an unexpected keyword argument {k!r}")
        if k != "name" and v != _UNSUPPORTED[k]:
            raise ValueError(f"{kind}: {k}={v!r} is not supported by kiln")


_BY_NAME = {"rmsprop": RMSprop, "sgd": SGD, "adam": Adam, "adamw": AdamW}


def get(identifier):
    """An optimizer from its name (`'rmsprop'`, `'sgd'`, `'adam'`, `'adamw'`, Keras's defaults) or itself."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    raise ValueError(f"optimizer {identifier!r} is not supported; kiln has {', '.join(_BY_NAME)}")

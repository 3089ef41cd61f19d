"""Keras 3's optimizers, with their argument names and defaults, run by kiln's kernels."""


class Optimizer:
    """Base class: a kiln optimizer name and Keras's arguments."""

    _name = None

    def __init__(self, **args):
        self._args = args

    def get_config(self):
        return dict(self._args)


class schedules:
    """`keras.optimizers.schedules`: the learning-rate schedules kiln runs."""

    class LearningRateSchedule:
        _spec = None

    class ExponentialDecay(LearningRateSchedule):
        """`initial_learning_rate * decay_rate ** (step / decay_steps)`."""

        def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, name="ExponentialDecay"):
            if staircase:
                raise ValueError("ExponentialDecay: staircase=True is not supported by kiln")
            if not isinstance(decay_steps, int) or decay_steps < 1:
                raise ValueError(f"ExponentialDecay: decay_steps must be a positive integer, got {decay_steps!r}")
            self.initial_learning_rate, self.decay_steps, self.decay_rate = float(initial_learning_rate), decay_steps, float(decay_rate)
            self._spec = f"exponential:{decay_steps}:{float(decay_rate)!r}"

    class CosineDecay(LearningRateSchedule):
        """`initial_learning_rate * 0.5 * (1 + cos(pi * min(step, decay_steps) / decay_steps))` (alpha 0)."""

        def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay", warmup_target=None,
                     warmup_steps=0):
            if alpha != 0.0 or warmup_target is not None or warmup_steps != 0:
                raise ValueError("CosineDecay: alpha, warmup_target and warmup_steps are not supported by kiln")
            if not isinstance(decay_steps, int) or decay_steps < 1:
                raise ValueError(f"CosineDecay: decay_steps must be a positive integer, got {decay_steps!r}")
            self.initial_learning_rate, self.decay_steps = float(initial_learning_rate), decay_steps
            self._spec = f"cosine:{decay_steps}"


def _lr(learning_rate, args):
    """The initial learning rate, and the schedule's spec in `args` for a schedule."""
    if isinstance(learning_rate, schedules.LearningRateSchedule):
        args["schedule"] = learning_rate._spec
        return learning_rate.initial_learning_rate
    if not isinstance(learning_rate, (int, float)) or isinstance(learning_rate, bool):
        raise ValueError(f"learning_rate={learning_rate!r}: expected a number or a kiln.optimizers.schedules schedule")
    return float(learning_rate)


class RMSprop(Optimizer):
    _name = "rmsprop"

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-07, centered=False, **kwargs):
        _check(kwargs, "RMSprop")
        extra = {}
        super().__init__(learning_rate=_lr(learning_rate, extra), rho=rho, momentum=momentum, epsilon=epsilon,
                         centered=bool(centered), **extra)


class SGD(Optimizer):
    _name = "sgd"

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, **kwargs):
        _check(kwargs, "SGD")
        extra = {}
        super().__init__(learning_rate=_lr(learning_rate, extra), momentum=momentum, nesterov=bool(nesterov), **extra)


class Adam(Optimizer):
    _name = "adam"

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-07, amsgrad=False, **kwargs):
        _check(kwargs, "Adam")
        if amsgrad:
            raise ValueError("Adam: amsgrad=True is not supported by kiln")
        extra = {}
        super().__init__(learning_rate=_lr(learning_rate, extra), beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, **extra)


class AdamW(Optimizer):
    _name = "adamw"

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-07,
                 amsgrad=False, **kwargs):
        _check(kwargs, "AdamW")
        if amsgrad:
            raise ValueError("AdamW: amsgrad=True is not supported by kiln")
        extra = {}
        super().__init__(learning_rate=_lr(learning_rate, extra), weight_decay=weight_decay, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, **extra)


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


# The classes by kiln's name; tested to be exactly the crate's optimizers
# (`_kiln.OPTIMIZERS`), with its Keras class names and defaults.
_BY_NAME = {cls._name: cls for cls in (RMSprop, SGD, Adam, AdamW)}


def get(identifier):
    """An optimizer from its name (`'rmsprop'`, `'sgd'`, `'adam'`, `'adamw'`, Keras's defaults) or itself."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    raise ValueError(f"optimizer {identifier!r} is not supported; kiln has {', '.join(_BY_NAME)}")

"""Optimisation of a fine-tuning run: `MomentumSGD` (coupled L2 weight decay), the learning-rate schedules and the
linear scaling rule.

The Keras classes (`MomentumSGD`, `StepDecay`) are defined on first use, so that importing this module does not
import TensorFlow; they are registered as `nonlocal_zoo>MomentumSGD` and `nonlocal_zoo>StepDecay`, the names saved
in the checkpoints of a run.

Example:
    >>> schedule = make_lr_schedule(lr=0.01, schedule="step", total_steps=400)
    >>> optimizer = momentum_sgd_class()(learning_rate=schedule, weight_decay=1e-4)
"""
from nonlocal_zoo import _compat
from nonlocal_zoo.training.config import SCHEDULES

_CLASSES = {}


def momentum_sgd_class():
    """The registered `MomentumSGD` class (defined on the first call)."""
    if "MomentumSGD" in _CLASSES:
        return _CLASSES["MomentumSGD"]
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="nonlocal_zoo")
    class MomentumSGD(_compat.coupled_weight_decay_mixin(), keras.optimizers.SGD):
        """SGD with momentum and coupled L2 weight decay, as Caffe2's `MomentumSGDUpdate` and PyTorch's SGD.

        The decay is added to the gradient before the momentum update, `g <- g + weight_decay * w`; Keras' own
        `weight_decay` shrinks the weights outside the momentum (decoupled), which decays 1 / (1 - momentum) = 10x
        less at momentum 0.9. Keras' momentum update `m <- momentum * m - lr * g; w <- w + m` equals Caffe2's (the
        learning rate is inside the momentum buffer).

        Args:
            learning_rate: float or `LearningRateSchedule`.
            momentum: momentum. Defaults to 0.9.
            nesterov: Nesterov momentum. Defaults to `False`.
            weight_decay: L2 coefficient (the gradient of `weight_decay / 2 * ||w||^2`). Defaults to 1e-4.
            no_decay_paths: variable paths (`variable.path`, e.g. `"res_conv1_bn/gamma"`) without decay.
            **kwargs: other `keras.optimizers.SGD` arguments.

        Example:
            >>> opt = MomentumSGD(learning_rate=0.01, weight_decay=1e-4, no_decay_paths=["bn/gamma", "bn/beta"])
        """

        def __init__(self, learning_rate=0.01, momentum=0.9, nesterov=False, weight_decay=1e-4, no_decay_paths=(),
                     name="momentum_sgd", **kwargs):
            super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov,
                             weight_decay=weight_decay or None, name=name, **kwargs)
            self.no_decay_paths = sorted(set(no_decay_paths or ()))

        def build(self, variables):
            if self.built:
                return
            excluded = set(self.no_decay_paths)
            self.exclude_from_weight_decay(var_list=[v for v in variables if v.path in excluded])
            super().build(variables)

        def update_step(self, gradient, variable, learning_rate):
            if self.decays(variable):  # coupled: the decay joins the gradient before the momentum update
                gradient = ops.add(ops.cast(gradient, variable.dtype),
                                   ops.multiply(ops.cast(self.weight_decay, variable.dtype), variable))
            super().update_step(gradient, variable, learning_rate)

        def get_config(self):
            config = super().get_config()
            config["no_decay_paths"] = list(self.no_decay_paths)
            return config

    _CLASSES["MomentumSGD"] = MomentumSGD
    return MomentumSGD


def step_decay_class():
    """The registered `StepDecay` learning-rate schedule class (defined on the first call)."""
    if "StepDecay" in _CLASSES:
        return _CLASSES["StepDecay"]
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="nonlocal_zoo")
    class StepDecay(keras.optimizers.schedules.LearningRateSchedule):
        """Piecewise-constant learning rate with an optional linear warmup (official `steps_with_relative_lrs`).

        `lr(step) = learning_rate * factors[i]` where `i` counts the boundaries `<= step`; during the first
        `warmup_steps`, it rises linearly from `warmup_start_factor * lr(warmup_steps)` to `lr(warmup_steps)`.

        Args:
            learning_rate: base learning rate.
            boundaries: increasing step numbers where the rate changes.
            factors: `len(boundaries) + 1` multiples of the base rate.
            warmup_steps: warmup length in steps. Defaults to 0.
            warmup_start_factor: start of the warmup as a multiple of the rate. Defaults to 0.1.

        Example:
            >>> schedule = StepDecay(0.01, boundaries=[150, 300, 350], factors=[1, 0.1, 0.01, 0.001])
            >>> float(schedule(200))
            0.001
        """

        def __init__(self, learning_rate, boundaries, factors, warmup_steps=0, warmup_start_factor=0.1, name=None):
            super().__init__()
            if len(factors) != len(boundaries) + 1:
                raise ValueError("`factors` must hold len(boundaries) + 1 values. "
                                 f"Received: boundaries={boundaries}, factors={factors}")
            self.learning_rate = float(learning_rate)
            self.boundaries = [int(b) for b in boundaries]
            self.factors = [float(f) for f in factors]
            self.warmup_steps = int(warmup_steps)
            self.warmup_start_factor = float(warmup_start_factor)
            self.name = name

        def _piecewise(self, step):
            index = ops.zeros((), "int32")
            for boundary in self.boundaries:
                index = index + ops.cast(ops.greater_equal(step, boundary), "int32")
            return self.learning_rate * ops.take(ops.convert_to_tensor(self.factors, "float32"), index)

        def __call__(self, step):
            step = ops.cast(step, "float32")
            lr = self._piecewise(step)
            if self.warmup_steps > 0:
                target = self._piecewise(ops.convert_to_tensor(float(self.warmup_steps)))
                start = self.warmup_start_factor * target
                warm = start + (target - start) * step / float(self.warmup_steps)
                lr = ops.where(ops.less(step, float(self.warmup_steps)), warm, lr)
            return lr

        def get_config(self):
            return {"learning_rate": self.learning_rate, "boundaries": self.boundaries, "factors": self.factors,
                    "warmup_steps": self.warmup_steps, "warmup_start_factor": self.warmup_start_factor,
                    "name": self.name}

    _CLASSES["StepDecay"] = StepDecay
    return StepDecay


def register_keras_objects():
    """Define and register `MomentumSGD` and `StepDecay` (before loading a checkpoint that names them)."""
    return {"MomentumSGD": momentum_sgd_class(), "StepDecay": step_decay_class()}


def __getattr__(name):
    if name == "MomentumSGD":
        return momentum_sgd_class()
    if name == "StepDecay":
        return step_decay_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_lr_schedule(*, lr, schedule, total_steps, lr_steps=(0.375, 0.75, 0.875), lr_factors=(1.0, 0.1, 0.01, 0.001),
                     warmup_steps=0, warmup_start_factor=0.1):
    """The learning-rate schedule of a run (a Keras `LearningRateSchedule` over optimizer steps).

    Args:
        lr: the (already scaled) base learning rate.
        schedule: `"step"` (drops at the fractions `lr_steps` of `total_steps` to `lr_factors`; official) or
            `"cosine"` (`keras.optimizers.schedules.CosineDecay` to 0 after the warmup).
        total_steps: optimizer steps of the whole run.
        warmup_steps: linear warmup steps from `warmup_start_factor * lr`.

    Example:
        >>> schedule = make_lr_schedule(lr=0.01, schedule="step", total_steps=400)
        >>> [round(float(schedule(s)), 6) for s in (0, 149, 150, 300, 399)]
        [0.01, 0.01, 0.001, 0.0001, 1e-05]
    """
    import keras

    if schedule == "cosine":
        warmup_steps = min(int(warmup_steps), max(total_steps - 1, 0))
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=lr * warmup_start_factor if warmup_steps else lr,
            decay_steps=max(total_steps - warmup_steps, 1), alpha=0.0,
            warmup_target=lr if warmup_steps else None, warmup_steps=warmup_steps)
    if schedule != "step":
        raise ValueError(f"`schedule` must be one of {SCHEDULES}. Received: schedule={schedule!r}")
    boundaries = [int(round(f * total_steps)) for f in lr_steps]
    return step_decay_class()(lr, boundaries, lr_factors, warmup_steps=int(warmup_steps),
                              warmup_start_factor=warmup_start_factor)


def scaled_learning_rate(lr, *, global_batch_size, lr_base_batch_size=None, per_replica_batch_size=None):
    """Linear scaling rule: `lr * global_batch_size / lr_base_batch_size` (base defaults to one replica's batch).

    Example:
        >>> scaled_learning_rate(0.01, global_batch_size=16, lr_base_batch_size=64)
        0.0025
    """
    base = lr_base_batch_size or per_replica_batch_size or global_batch_size
    return lr * global_batch_size / base

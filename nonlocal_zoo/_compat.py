"""Every use of private Keras API in nonlocal_zoo, in one place, each checked against the Keras versions it fits.

Keras 3 has no public API for a few things nonlocal_zoo needs. Each of them is a shim here, named in `SHIMS` with
the Keras versions it was written for: the lower bound is the oldest Keras the package supports (setup.cfg), whose
source was read for the private names and signatures used; the upper bound is the newest Keras the test suite ran
on. Outside its range a shim raises `KerasVersionError` naming the Keras found and the range, before touching any
private name, instead of failing somewhere deep inside Keras (or silently doing something else). Setting the
environment variable `NONLOCAL_ZOO_UNCHECKED_KERAS=1` skips the check (for trying a newer Keras).

| shim | private Keras API | used by |
|---|---|---|
| `flatten_layers` | `Layer._flatten_layers` (nested sublayers, e.g. the `bn` of a `NonLocalBlock`) | training, tasks (sync BN) |
| `patch_model_for_multiworker` | `Trainer._symbolic_build`, `_maybe_symbolic_build` (keras-team/keras#20585) | training |
| `coupled_weight_decay_mixin` | `BaseOptimizer._use_weight_decay`, `_apply_weight_decay` | training (MomentumSGD) |
| `override_tf_backend_ops` | `keras.src.backend.tensorflow.nn.{conv, max_pool, average_pool}` | export (`tflite_lowering`, the legacy public context manager; `export_model` does not use it) |
| `set_instance_call`, `clear_instance_call` | `Layer.__call__` looking `call` up on the instance | attention maps |

Where public API does the job, it is used instead (e.g. `export_model` lowers 3-D ops for TFLite by cloning the
model with `keras.models.clone_model(clone_function=...)`, not with `override_tf_backend_ops`).

This module imports nothing of nonlocal_zoo but its version, and Keras only when a shim is used.

Example:
    >>> from nonlocal_zoo import _compat
    >>> bns = [l for l in _compat.flatten_layers(model) if isinstance(l, keras.layers.BatchNormalization)]
"""
import contextlib
import importlib
import os
import re

from nonlocal_zoo.version import __version__

UNCHECKED_ENV = "NONLOCAL_ZOO_UNCHECKED_KERAS"

# shim -> (oldest Keras it was written for, newest Keras it was tested on: any patch release of that minor version)
SHIMS = {
    "flatten_layers": ("3.12.0", "3.15"),
    "patch_model_for_multiworker": ("3.12.0", "3.15"),
    "coupled_weight_decay_mixin": ("3.12.0", "3.15"),
    "override_tf_backend_ops": ("3.12.0", "3.15"),
    "instance_call": ("3.12.0", "3.15"),
}


class KerasVersionError(ImportError):
    """The installed Keras is outside the versions a private-API shim of nonlocal_zoo was written for."""


def _version_tuple(text):
    """`"3.15.1"` -> `(3, 15, 1)`; pre-release suffixes (`"3.16.0.dev2025"`, `"3.13.0rc1"`) are ignored."""
    parts = []
    for piece in str(text).split(".")[:3]:
        match = re.match(r"\d+", piece)
        if match is None:
            break
        parts.append(int(match.group()))
    return tuple(parts + [0] * (3 - len(parts)))


def keras_version():
    """The installed Keras version string (imports Keras)."""
    import keras

    return keras.__version__


def check_keras_version(shim):
    """Raise `KerasVersionError` unless the installed Keras is within the range of `shim` (a key of `SHIMS`).

    Args:
        shim: the shim's name.

    Returns:
        The installed Keras version string.

    Raises:
        KerasVersionError: the installed Keras is older than the range, or newer than its last tested minor version.

    Example:
        >>> check_keras_version("flatten_layers")
        '3.15.1'
    """
    if shim not in SHIMS:
        raise ValueError(f"Unknown Keras compatibility shim. Expected one of {sorted(SHIMS)}. Received: {shim!r}")
    found = keras_version()
    if os.environ.get(UNCHECKED_ENV, "") not in ("", "0"):
        return found
    low, high = SHIMS[shim]
    version = _version_tuple(found)
    if version < _version_tuple(low) or version[:2] > _version_tuple(high)[:2]:
        raise KerasVersionError(
            f"nonlocal_zoo {__version__}: `{shim}` uses private Keras API written for Keras {low} to {high}.x, "
            f"but Keras {found} is installed. Install a Keras in that range (pip install 'keras>={low},"
            f"<{_version_tuple(high)[0]}.{_version_tuple(high)[1] + 1}') or set {UNCHECKED_ENV}=1 to try anyway. "
            f"Received: keras.__version__={found!r}"
        )
    return found


# ---------------------------------------------------------------------------------------------------- layers
def flatten_layers(layer):
    """Every layer nested in `layer` (not `layer` itself), at any depth: also sublayers held as attributes, such as
    the `theta`, `phi`, `g`, `out` and `bn` of a `NonLocalBlock`, which `model.layers` does not list.

    Private API: `Layer._flatten_layers(include_self=False, recursive=True)`.

    Example:
        >>> [l.name for l in flatten_layers(model) if l.name == "bn"]
    """
    check_keras_version("flatten_layers")
    return list(layer._flatten_layers(include_self=False, recursive=True))


# ---------------------------------------------------------------------------------------------------- training
def patch_model_for_multiworker(model, strategy, example_batch):
    """Work around Keras 3 + `MultiWorkerMirroredStrategy` `fit` failures (keras-team/keras#20585).

    1. `fit` builds the compiled metrics with `strategy.reduce("MEAN", batch)` on the first batch, which fails in
       multi-worker mode: build them here from a local example batch and skip that step.
    2. Step outputs are reduced with `strategy.reduce("MEAN", v, axis=0)`, which fails on scalars: return each
       logged value with shape (1,), which that reduction turns into the mean over all replicas of all workers.

    Private API: `Trainer._symbolic_build(data_batch=...)`, `Trainer._maybe_symbolic_build` (replaced on the
    instance by a no-op).

    Args:
        model: a compiled `keras.Model`.
        strategy: the `tf.distribute.MultiWorkerMirroredStrategy` it was built under.
        example_batch: `(x, y)` of one local batch (shapes and dtypes matter, not values).

    Example:
        >>> patch_model_for_multiworker(model, strategy, (tf.zeros((1, 8, 112, 112, 3)), tf.zeros((1,), tf.int32)))
    """
    check_keras_version("patch_model_for_multiworker")
    from keras import ops

    with strategy.scope():
        model._symbolic_build(data_batch=example_batch)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None

    def per_replica_vector(step):
        def wrapped(data):
            return {k: ops.reshape(v, (1,)) for k, v in step(data).items()}

        return wrapped

    model.train_step = per_replica_vector(model.train_step)
    model.test_step = per_replica_vector(model.test_step)
    return model


def coupled_weight_decay_mixin():
    """A mixin class for a `keras.optimizers.Optimizer` subclass that applies weight decay itself (coupled L2).

    The mixin turns off Keras' own (decoupled) weight-decay step and gives `self.decays(variable)`: whether
    `variable` takes weight decay (`weight_decay` set and the variable not excluded with
    `exclude_from_weight_decay`). Keras' public API has no such query for the variable objects `update_step`
    receives (under `tf.distribute` they are the backend's variables, matched by Keras' private variable keys).

    Private API: `BaseOptimizer._use_weight_decay(variable)`, `BaseOptimizer._apply_weight_decay(variables)`
    (overridden as a no-op).

    Example:
        >>> class MyOptimizer(coupled_weight_decay_mixin(), keras.optimizers.SGD):
        ...     def update_step(self, gradient, variable, learning_rate):
        ...         if self.decays(variable):
        ...             gradient = gradient + self.weight_decay * variable
        ...         super().update_step(gradient, variable, learning_rate)
    """
    check_keras_version("coupled_weight_decay_mixin")

    class CoupledWeightDecay:
        def _apply_weight_decay(self, variables):
            return  # the subclass adds the decay to the gradient in `update_step`

        def decays(self, variable):
            return self.weight_decay is not None and self._use_weight_decay(variable)

    return CoupledWeightDecay


# ---------------------------------------------------------------------------------------------------- export
@contextlib.contextmanager
def override_tf_backend_ops(**replacements):
    """Within the context, Keras' TensorFlow backend computes the named ops with the given functions.

    Each replacement is called as `replacement(original, *args, **kwargs)`, where `original` is Keras' own function,
    so it may fall back to it. Only `conv`, `max_pool` and `average_pool` may be replaced.

    Private API: the module `keras.src.backend.tensorflow.nn` and its functions `conv(inputs, kernel, strides,
    padding, data_format, dilation_rate)`, `max_pool(...)` and `average_pool(inputs, pool_size, strides, padding,
    data_format)`, reassigned for the duration of the context.

    Example:
        >>> def pool(original, inputs, *args, **kwargs):
        ...     return original(inputs, *args, **kwargs)
        >>> with override_tf_backend_ops(max_pool=pool):
        ...     y = keras.ops.max_pool(x, 2)
    """
    allowed = ("conv", "max_pool", "average_pool")
    unknown = sorted(set(replacements) - set(allowed))
    if unknown:
        raise ValueError(f"Only {allowed} can be overridden. Received: {unknown}")
    check_keras_version("override_tf_backend_ops")
    nn = importlib.import_module("keras.src.backend.tensorflow.nn")
    originals = {name: getattr(nn, name) for name in replacements}

    def bind(name, replacement):
        def op(*args, **kwargs):
            return replacement(originals[name], *args, **kwargs)

        return op

    for name, replacement in replacements.items():
        setattr(nn, name, bind(name, replacement))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(nn, name, fn)


# ---------------------------------------------------------------------------------------------------- attention
def set_instance_call(layer, call):
    """Make `layer(...)` run `call` (until `clear_instance_call`), for any model structure, without graph surgery.

    Private API: Keras' `Layer.__call__` looks `call` up on the instance, so an instance attribute shadows the
    class's `call`; it is set past Keras' attribute tracking (`object.__setattr__`).

    Example:
        >>> original = type(layer).call.__get__(layer)
        >>> set_instance_call(layer, lambda inputs, *a, **k: original(inputs, *a, **k))
    """
    check_keras_version("instance_call")
    object.__setattr__(layer, "call", call)


def clear_instance_call(layer):
    """Undo `set_instance_call`: `layer` runs its class's `call` again."""
    if "call" in vars(layer):
        object.__delattr__(layer, "call")

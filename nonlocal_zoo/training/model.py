"""The network of a fine-tuning run: the preset with a new head, frozen stages, synchronized BatchNorm, the variables
without weight decay, the mixed-precision policy, and the compiled model.

Example:
    >>> frozen = freeze_stages(model, "res3")
    >>> synced = convert_to_sync_batchnorm(model)
"""
import math

from nonlocal_zoo import _compat
from nonlocal_zoo.training.config import STAGES
from nonlocal_zoo.training.optim import momentum_sgd_class


def stage_of_layer(name):
    """The network part (`"conv1"`, `"res2"`..`"res5"`) a backbone layer belongs to, or `None` (input, head).

    Example:
        >>> stage_of_layer("nonlocal_conv3_1"), stage_of_layer("res_conv1_bn"), stage_of_layer("pred")
        ('res3', 'conv1', None)
    """
    if name in ("conv1", "conv1_pad", "res_conv1_bn", "res_conv1_relu", "pool1", "pool1_pad"):
        return "conv1"
    if name == "pool2":
        return "res2"
    for prefix in ("nonlocal_conv", "res"):
        if name.startswith(prefix):
            head = name[len(prefix):].split("_")[0]
            if head.isdigit() and f"res{head}" in STAGES:
                return f"res{head}"
    return None


def freeze_stages(model, up_to):
    """Freeze the backbone from `conv1` up to and including stage `up_to` (`"conv1"`, `"res2"`, ..., `"res5"`).

    Frozen layers get `trainable = False`, so their BatchNormalization layers (also those inside non-local blocks)
    run in inference mode (moving statistics, no updates), as in Keras' transfer-learning guide.

    Args:
        model: a model built by `create_model` / `build_backbone` (Caffe2 layer names).
        up_to: the last frozen part, or `None` (nothing frozen).

    Returns:
        The names of the frozen layers.

    Example:
        >>> frozen = freeze_stages(model, "res3")
    """
    if up_to is None:
        return []
    if up_to not in STAGES:
        raise ValueError(f"`up_to` must be None or one of {STAGES}. Received: up_to={up_to!r}")
    last = STAGES.index(up_to)
    frozen = []
    for layer in model.layers:
        stage = stage_of_layer(layer.name)
        if stage is not None and STAGES.index(stage) <= last:
            layer.trainable = False
            frozen.append(layer.name)
    if not frozen:
        raise ValueError(f"No backbone layers (conv1, res2..res5 names) found to freeze in model {model.name!r}. "
                         f"Received: up_to={up_to!r}")
    return frozen


def convert_to_sync_batchnorm(model):
    """Switch every BatchNormalization layer of `model` (those inside non-local blocks too) to synchronized
    statistics over all replicas, in place; returns the model.

    `synchronized` is read by Keras' BatchNormalization at call time (TensorFlow backend), so the model, a
    `VideoClassifier`, keeps its class, config and weights. Call it inside the strategy scope, before `compile`.

    Example:
        >>> with strategy.scope():
        ...     model = convert_to_sync_batchnorm(model)
    """
    import keras

    if hasattr(model, "synchronize_batchnorm"):  # a VideoClassifier also keeps the setting in its config
        return model.synchronize_batchnorm()
    for layer in _compat.flatten_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
    return model


def normalization_variable_paths(model):
    """Paths of the scales and offsets of every BatchNormalization / Affine layer (nested ones included).

    Example:
        >>> "res_conv1_bn/gamma" in normalization_variable_paths(model)
        True
    """
    import keras

    from nonlocal_zoo.layers.affine import Affine

    paths = []
    for layer in _compat.flatten_layers(model):
        if isinstance(layer, (keras.layers.BatchNormalization, Affine)):
            paths.extend(v.path for v in layer.trainable_weights)
    return paths


def mixed_policy(setting):
    """The Keras dtype policy name of a `mixed_precision` setting, or None for float32.

    `True`/`"auto"` pick `mixed_float16` on a GPU and `mixed_bfloat16` on CPU.

    Example:
        >>> mixed_policy(False) is None
        True
    """
    import tensorflow as tf

    if setting is False or setting == "float32":
        return None
    has_gpu = bool(tf.config.list_logical_devices("GPU"))
    if setting is True or setting == "auto":
        return "mixed_float16" if has_gpu else "mixed_bfloat16"
    if setting == "mixed_float16" and not has_gpu:
        raise ValueError("mixed_float16 needs a GPU: TensorFlow has no float16 CPU kernels for some layers of these "
                         "networks (MaxPool3D). Use mixed_bfloat16 (or mixed_precision=True, which picks it on CPU). "
                         "Received: mixed_precision='mixed_float16'")
    return setting


def build_training_model(cfg, *, class_names, preprocessing, schedule, restoring=False, load_from=None):
    """The compiled `VideoClassifier` of a run (call inside the strategy scope).

    The preset through the one resolver (`nonlocal_zoo.tasks.resolve`): its architecture (with `cfg["arch"]`
    overrides), the run's preprocessing, `cfg["weights"]` (unless the run is being restored: its backup or
    checkpoint holds every weight) and a new `pred` head for `class_names`; then synchronized BatchNorm when
    `sync_bn`, frozen stages, and `MomentumSGD` with decay on the normalisation scales/offsets only when
    `weight_decay_bn == weight_decay`. The model carries its preprocessing and class names, so its checkpoints
    load in every command.

    Args:
        cfg: a resolved config.
        class_names: the classes of the new head, in label order.
        preprocessing: the run's resolved preprocessing dict (clip length, crops, normalisation, views).
        schedule: the learning-rate schedule.
        restoring: the run resumes (from its backup or `load_from`): the preset's weights are not loaded.
        load_from: a `.keras` checkpoint of the run whose weights and optimizer state to load, or None.

    Returns:
        `(model, frozen layer names)`.

    Example:
        >>> model, frozen = build_training_model(cfg, class_names=["a", "b"], preprocessing=pre, schedule=0.01)
    """
    import keras

    from nonlocal_zoo.tasks import resolve

    weights = None if restoring or load_from is not None else cfg["weights"]  # the backup holds every weight
    model = resolve(cfg["model"], weights=weights, labels=list(class_names), preprocessing=dict(preprocessing),
                    clip_shape=(preprocessing["num_frames"], None, None, 3), dropout=cfg["dropout_rate"],
                    **cfg["arch"])
    if cfg["sync_bn"]:
        model = convert_to_sync_batchnorm(model)
    frozen = freeze_stages(model, cfg["freeze_stages"])
    no_decay = normalization_variable_paths(model) if cfg["weight_decay_bn"] != cfg["weight_decay"] else []
    optimizer = momentum_sgd_class()(learning_rate=schedule, momentum=cfg["momentum"], nesterov=cfg["nesterov"],
                                     weight_decay=cfg["weight_decay"], no_decay_paths=no_decay)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    if load_from is not None:
        model.optimizer.build(model.trainable_variables)  # (a LossScaleOptimizer under mixed_float16)
        model.load_weights(load_from)  # weights and optimizer state (iterations, momentum)
    return model, frozen


def trainable_parameter_count(model):
    """Number of trainable parameters of `model`."""
    return int(sum(math.prod(v.shape) for v in model.trainable_weights))

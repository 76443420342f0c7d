"""Fine-tuning a preset on your own clips: `finetune(...)`, the `nonlocal-zoo finetune` CLI, and their parts.

A run starts from a preset (with its weights, e.g. Kinetics-400), replaces the classifier with a new `pred` layer for
the classes of your data (class names from the folder names, saved as `class_names.txt`), optionally freezes the
first stages (their BatchNorm layers then run in inference mode), and trains with SGD + momentum and L2 weight decay
as the official Caffe2 recipes do (decay added to the gradient before the momentum update, none on BN parameters),
on a step or cosine schedule with optional linear warmup. One machine or many: `strategy="mirrored"` (the GPUs, or the
logical CPUs, of this machine) or `"multiworker"` (`TF_CONFIG`); the global batch is `batch_size x replicas` and the
learning rate is scaled linearly with it.

Everything a run writes lives in `output_dir`:

    run_config.yaml        the resolved settings (and the derived ones: replicas, global batch, scaled LR, steps)
    class_names.txt        one class name per line, in label order
    checkpoints/last.keras the model after the last finished epoch; checkpoints/best.keras the best one (`monitor`)
    logs/                  TensorBoard (`tensorboard --logdir <output_dir>/logs`)
    training_log.csv       one row per finished epoch (kept across resumptions, never duplicated)
    backup/                `keras.callbacks.BackupAndRestore` state while a run is unfinished (weights + optimizer)

A run that is killed (even mid-epoch) continues with `resume=True` (`--resume`) from the state saved at the end of
its last finished epoch: no finished epoch is lost, its logs and checkpoints are kept.

Recipes are YAML files (`configs/finetune_*.yaml`) whose keys are the keyword arguments of `finetune`.

Example:
    >>> from nonlocal_zoo import finetune
    >>> result = finetune("my_clips/", config="configs/finetune_i3d_nl5_r50_8x8.yaml", output_dir="runs/mine")
    >>> result.best_checkpoint
    'runs/mine/checkpoints/best.keras'

This module imports TensorFlow and Keras only when a run starts, so that building the CLI parser stays cheap.
"""
import argparse
import copy
import csv
import dataclasses
import json
import math
import os
import shutil
import sys
import warnings

import yaml

# ----------------------------------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------------------------------
# Official Caffe2 recipe (video-nonlocal-net configs/DBG_kinetics_resnet_8gpu_c2d_nonlocal_400k.yaml): BASE_LR 0.01 for
# a batch of 64 (8 GPUs x 8 clips), steps at 150k/300k/350k of 400k iterations with relative LRs 1, 0.1, 0.01, 0.001,
# WEIGHT_DECAY 1e-4, WEIGHT_DECAY_BN 0, MOMENTUM 0.9, warmup off (when on: from 0.1x over the first 0.5%).
DEFAULTS = {
    "data": None,                  # training clips: folder root/<class>/<clip>, CSV/list file, or "tfds:<name>"
    "val_data": None,              # validation clips (same forms); class order follows the training data
    "split": None,                 # split sub-folder of `data` (root/<split>/<class>/<clip>)
    "val_split": None,             # split sub-folder of `val_data` (or of `data` when `val_data` is not given)
    "output_dir": None,            # where the run writes (defaults to runs/<model>)
    "model": "i3d_nl5_r50_8x8_kinetics400",
    "weights": "kinetics400",      # None, "kinetics400", a weights file or an "hf://" handle
    "arch": {},                    # architecture overrides (`build_backbone` arguments; needs weights=None)
    "preprocessing": {},           # preprocessing overrides (see nonlocal_zoo.data.preprocessing)
    "num_frames": None,            # shortcut: clip length
    "crop": None,                  # shortcut: train and test crop (short sides scaled like 224 <- [256, 320], 256)
    "dropout_rate": 0.5,
    "epochs": 30,
    "batch_size": 8,               # per replica
    "steps_per_epoch": None,       # defaults to the number of training clips // global batch
    "validation_steps": None,
    "lr": 0.01,                    # learning rate for a global batch of `lr_base_batch_size` ...
    "lr_base_batch_size": 64,      # ... scaled linearly to the real global batch; None: `lr` is for one replica
    "schedule": "step",            # "step" (official) or "cosine"
    "lr_steps": [0.375, 0.75, 0.875],   # step schedule: fractions of the run where the LR drops ...
    "lr_factors": [1.0, 0.1, 0.01, 0.001],  # ... to these multiples of the base LR
    "warmup_epochs": 0.0,          # linear warmup length (fractional epochs allowed)
    "warmup_start_factor": 0.1,    # warmup starts at this multiple of the LR
    "momentum": 0.9,
    "nesterov": True,  # official SOLVER.NESTEROV: True
    "weight_decay": 1e-4,          # L2, added to the gradient (Caffe2/PyTorch style)
    "weight_decay_bn": 0.0,        # on BatchNorm/Affine scales and offsets (0 or equal to weight_decay)
    "freeze_stages": None,         # None, or the last frozen part: "conv1", "res2", "res3", "res4", "res5"
    "mixed_precision": False,      # False, True (mixed_float16 on GPU, mixed_bfloat16 on CPU) or a policy name
    "strategy": "none",            # "none", "mirrored" or "multiworker"
    "sync_bn": False,              # BatchNormalization(synchronized=True) across replicas
    "monitor": None,               # metric of the best checkpoint (val_accuracy with validation data, else loss)
    "backup_freq": "epoch",        # BackupAndRestore save_freq: "epoch" or every N steps
    "seed": 0,
    "num_parallel_calls": None,    # parallel decoding calls (None: tf.data AUTOTUNE)
    "on_error": "skip",            # undecodable clips: "skip" (reported) or "raise"
}
SCHEDULES = ("step", "cosine")
STRATEGIES = ("none", "mirrored", "multiworker")
STAGES = ("conv1", "res2", "res3", "res4", "res5")
MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

RUN_CONFIG = "run_config.yaml"
CLASS_NAMES = "class_names.txt"
CSV_LOG = "training_log.csv"
RUN_FILES = (RUN_CONFIG, CLASS_NAMES, CSV_LOG, "checkpoints", "logs", "backup")
WORKERS_DIR = "workers"
# Keys that may differ from the saved run when resuming without changing what is trained.
RESUME_FREE_KEYS = ("output_dir", "data", "val_data", "num_parallel_calls", "on_error", "validation_steps")


def _say(verbose, *lines):
    if verbose:
        print("\n".join(lines), flush=True)


def load_config(config):
    """A fine-tuning recipe as a dict: a YAML path, a recipe name from `configs/`, or a dict (copied).

    Args:
        config: path to a YAML file, the name of a file in the repository's `configs/` folder (with or without
            `.yaml`), or a dict.

    Returns:
        A dict of `finetune` keyword arguments.

    Raises:
        ValueError: when the file is missing, is not a YAML mapping, or has unknown keys.

    Example:
        >>> load_config("finetune_i3d_nl5_r50_8x8")["model"]
        'i3d_nl5_r50_8x8_kinetics400'
    """
    if config is None:
        return {}
    if isinstance(config, dict):
        loaded = copy.deepcopy(config)
    else:
        path = os.fspath(config)
        if not os.path.isfile(path):
            name = path if path.endswith((".yaml", ".yml")) else f"{path}.yaml"
            candidate = os.path.join(CONFIG_DIR, name)
            if not os.path.isfile(candidate):
                raise ValueError(f"Fine-tuning config not found (a YAML file or a name in {CONFIG_DIR}). "
                                 f"Received: config={path!r}")
            path = candidate
        with open(path, encoding="utf-8") as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"A fine-tuning config must be a YAML mapping of settings. Received: {path!r} holding "
                             f"{type(loaded).__name__}")
    loaded.pop("derived", None)  # written by a run (run_config.yaml), not a setting
    unknown = sorted(set(loaded) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown fine-tuning settings {unknown}. Known: {sorted(DEFAULTS)}")
    return loaded


def _check_positive(name, value, kind=int, allow_none=False):
    if value is None and allow_none:
        return None
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
          and (kind is float or float(value).is_integer()))
    if not ok:
        what = "a positive integer" if kind is int else "a positive number"
        raise ValueError(f"`{name}` must be {what}{' or None' if allow_none else ''}. Received: {name}={value!r}")
    return kind(value)


def resolve_config(*configs, **options):
    """Merge recipes and explicit settings into one validated dict (later ones win; `None` options are ignored).

    Args:
        *configs: recipes (dicts, YAML paths or names) applied in order over `DEFAULTS`.
        **options: explicit settings; `None` means "not given".

    Returns:
        A dict with every key of `DEFAULTS`, validated.

    Example:
        >>> resolve_config({"epochs": 5}, lr=0.1)["lr"]
        0.1
    """
    cfg = copy.deepcopy(DEFAULTS)
    for config in configs:
        cfg.update(load_config(config))
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown fine-tuning settings {unknown}. Known: {sorted(DEFAULTS)}")
    cfg.update({k: copy.deepcopy(v) for k, v in options.items() if v is not None})
    return _validate(cfg)


def _validate(cfg):
    for key in ("data", "val_data", "output_dir"):
        if cfg[key] is not None and not isinstance(cfg[key], (str, os.PathLike)):
            raise ValueError(f"`{key}` must be a path or a 'tfds:' name. Received: {key}={cfg[key]!r}")
        if cfg[key] is not None:
            cfg[key] = os.fspath(cfg[key])
    if isinstance(cfg["weights"], str) and cfg["weights"].lower() in ("none", "null", ""):
        cfg["weights"] = None
    if cfg["weights"] is not None and not isinstance(cfg["weights"], (str, os.PathLike)):
        raise ValueError(f"`weights` must be None, 'kinetics400', a weights file or an 'hf://' handle. "
                         f"Received: weights={cfg['weights']!r}")
    if not isinstance(cfg["model"], str):
        raise ValueError(f"`model` must be a preset name. Received: model={cfg['model']!r}")
    for key in ("arch", "preprocessing"):
        if cfg[key] is None:
            cfg[key] = {}
        if not isinstance(cfg[key], dict):
            raise ValueError(f"`{key}` must be a mapping of overrides. Received: {key}={cfg[key]!r}")
    cfg["epochs"] = _check_positive("epochs", cfg["epochs"])
    cfg["batch_size"] = _check_positive("batch_size", cfg["batch_size"])
    for key in ("steps_per_epoch", "validation_steps", "lr_base_batch_size", "num_frames", "crop"):
        cfg[key] = _check_positive(key, cfg[key], allow_none=True)
    cfg["lr"] = _check_positive("lr", cfg["lr"], float)
    if cfg["schedule"] not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {SCHEDULES}. Received: schedule={cfg['schedule']!r}")
    steps, factors = cfg["lr_steps"], cfg["lr_factors"]
    if (not isinstance(steps, (list, tuple))
            or any(isinstance(s, bool) or not isinstance(s, (int, float)) for s in steps)
            or list(steps) != sorted(steps) or any(not 0 < s < 1 for s in steps)):
        raise ValueError(f"`lr_steps` must be increasing fractions of the run in (0, 1). Received: lr_steps={steps!r}")
    if (not isinstance(factors, (list, tuple)) or len(factors) != len(steps) + 1
            or any(isinstance(f, bool) or not isinstance(f, (int, float)) or f < 0 for f in factors)):
        raise ValueError("`lr_factors` must hold one non-negative factor per schedule segment "
                         f"(len(lr_steps) + 1 = {len(steps) + 1}). Received: lr_factors={factors!r}")
    cfg["lr_steps"], cfg["lr_factors"] = [float(s) for s in steps], [float(f) for f in factors]
    for key in ("warmup_epochs", "weight_decay", "weight_decay_bn"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"`{key}` must be a non-negative number. Received: {key}={value!r}")
        cfg[key] = float(value)
    for key in ("momentum", "dropout_rate"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(f"`{key}` must be in [0, 1). Received: {key}={value!r}")
        cfg[key] = float(value)
    cfg["warmup_start_factor"] = _check_positive("warmup_start_factor", cfg["warmup_start_factor"], float)
    for key in ("nesterov", "sync_bn"):
        if not isinstance(cfg[key], bool):
            raise ValueError(f"`{key}` must be true or false. Received: {key}={cfg[key]!r}")
    if cfg["freeze_stages"] in ("none", "None", ""):
        cfg["freeze_stages"] = None
    if cfg["freeze_stages"] is not None and cfg["freeze_stages"] not in STAGES:
        raise ValueError(f"`freeze_stages` must be None or the last frozen part, one of {STAGES}. "
                         f"Received: freeze_stages={cfg['freeze_stages']!r}")
    mp = cfg["mixed_precision"]
    if not isinstance(mp, bool) and mp not in MIXED_POLICIES and mp not in ("auto", "float32"):
        raise ValueError(f"`mixed_precision` must be true, false, 'auto' or one of {MIXED_POLICIES}. "
                         f"Received: mixed_precision={mp!r}")
    if cfg["strategy"] is None:
        cfg["strategy"] = "none"
    if cfg["strategy"] not in STRATEGIES + ("custom",):  # "custom": a strategy object given to `finetune`
        raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: strategy={cfg['strategy']!r}")
    if cfg["backup_freq"] != "epoch":
        cfg["backup_freq"] = _check_positive("backup_freq", cfg["backup_freq"])
    if cfg["monitor"] is not None and not isinstance(cfg["monitor"], str):
        raise ValueError(f"`monitor` must be a metric name such as 'val_accuracy'. "
                         f"Received: monitor={cfg['monitor']!r}")
    if cfg["seed"] is not None and (isinstance(cfg["seed"], bool) or not isinstance(cfg["seed"], int)):
        raise ValueError(f"`seed` must be an integer or None. Received: seed={cfg['seed']!r}")
    if cfg["on_error"] not in ("skip", "raise"):
        raise ValueError(f"`on_error` must be 'skip' or 'raise'. Received: on_error={cfg['on_error']!r}")
    return cfg


def preprocessing_overrides(cfg):
    """The preprocessing overrides of a resolved config: `num_frames`/`crop` shortcuts, then `preprocessing`.

    `crop=c` sets `train_crop = test_crop = c` and scales the preset's short sides by `c / 224` (so 224 keeps the
    official [256, 320] training jitter and the 256 test side). Explicit `preprocessing` keys win.

    Example:
        >>> preprocessing_overrides(resolve_config(crop=112))["train_short_side_range"]
        [128, 160]
    """
    overrides = {}
    if cfg["num_frames"] is not None:
        overrides["num_frames"] = cfg["num_frames"]
    if cfg["crop"] is not None:
        c = cfg["crop"]
        overrides.update(train_crop=c, test_crop=c, train_short_side_range=[round(c * 256 / 224), round(c * 320 / 224)],
                         test_short_side=round(c * 256 / 224))
    overrides.update(cfg["preprocessing"])
    return overrides


# ----------------------------------------------------------------------------------------------------------------------
# Keras pieces (defined on first use: importing this module must not import TensorFlow)
# ----------------------------------------------------------------------------------------------------------------------
_KERAS_OBJECTS = {}


def _keras_objects():
    """Defines (once) and returns the registered Keras classes of this module: `MomentumSGD`, `StepDecay`."""
    if _KERAS_OBJECTS:
        return _KERAS_OBJECTS
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="nonlocal_zoo")
    class MomentumSGD(keras.optimizers.SGD):
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

        def _apply_weight_decay(self, variables):
            return  # coupled: applied to the gradient in `update_step`

        def update_step(self, gradient, variable, learning_rate):
            if self.weight_decay is not None and self._use_weight_decay(variable):
                gradient = ops.add(ops.cast(gradient, variable.dtype),
                                   ops.multiply(ops.cast(self.weight_decay, variable.dtype), variable))
            super().update_step(gradient, variable, learning_rate)

        def get_config(self):
            config = super().get_config()
            config["no_decay_paths"] = list(self.no_decay_paths)
            return config

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

    _KERAS_OBJECTS.update(MomentumSGD=MomentumSGD, StepDecay=StepDecay)
    return _KERAS_OBJECTS


def __getattr__(name):
    if name in ("MomentumSGD", "StepDecay"):
        return _keras_objects()[name]
    raise AttributeError(f"module 'nonlocal_zoo.training' has no attribute {name!r}")


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
    return _keras_objects()["StepDecay"](lr, boundaries, lr_factors, warmup_steps=int(warmup_steps),
                                         warmup_start_factor=warmup_start_factor)


def scaled_learning_rate(lr, *, global_batch_size, lr_base_batch_size=None, per_replica_batch_size=None):
    """Linear scaling rule: `lr * global_batch_size / lr_base_batch_size` (base defaults to one replica's batch).

    Example:
        >>> scaled_learning_rate(0.01, global_batch_size=16, lr_base_batch_size=64)
        0.0025
    """
    base = lr_base_batch_size or per_replica_batch_size or global_batch_size
    return lr * global_batch_size / base


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
    """A copy of `model` whose BatchNormalization layers are `synchronized=True` (statistics over all replicas).

    The top-level layers are re-created from their configs (`keras.models.clone_model`) with `synchronized=True`;
    BatchNormalization layers nested in other layers (the `bn` of each `NonLocalBlock`) are switched on the copy.
    Weights are copied. Call it inside the strategy scope.

    Example:
        >>> with strategy.scope():
        ...     model = convert_to_sync_batchnorm(model)
    """
    import keras

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.BatchNormalization):
            config["synchronized"] = True
        return layer.__class__.from_config(config)

    synced = keras.models.clone_model(model, clone_function=clone)
    synced.set_weights(model.get_weights())
    for layer in synced._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
    return synced


def _normalization_variable_paths(model):
    """Paths of the scales and offsets of every BatchNormalization / Affine layer (nested ones included)."""
    import keras

    from nonlocal_zoo.layers.affine import Affine

    paths = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, (keras.layers.BatchNormalization, Affine)):
            paths.extend(v.path for v in layer.trainable_weights)
    return paths


# ----------------------------------------------------------------------------------------------------------------------
# Distribution
# ----------------------------------------------------------------------------------------------------------------------
def worker_info(strategy="none"):
    """`(task_type, task_id, num_workers, is_chief)` of this process, read from `TF_CONFIG` for "multiworker"."""
    if strategy != "multiworker" or not os.environ.get("TF_CONFIG"):
        return None, 0, 1, True
    try:
        tf_config = json.loads(os.environ["TF_CONFIG"])
        cluster, task = tf_config.get("cluster", {}), tf_config.get("task", {})
        task_type, task_id = task.get("type"), int(task.get("index", 0))
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"TF_CONFIG is not valid JSON with 'cluster' and 'task'. Received: "
                         f"TF_CONFIG={os.environ['TF_CONFIG']!r} ({e})") from None
    num_workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in cluster)
    return task_type, task_id, max(num_workers, 1), is_chief


_STRATEGIES = {}


def get_strategy(name="none"):
    """A `tf.distribute` strategy by name: `"none"` (default strategy), `"mirrored"`, `"multiworker"`.

    `"mirrored"` uses every GPU of this machine, or, without GPUs, every logical CPU device when there are several
    (e.g. made with `tf.config.set_logical_device_configuration`). `"multiworker"` reads the cluster from
    `TF_CONFIG`; it must be created before TensorFlow runs anything else in the process. A strategy object passed
    in is returned as it is.

    Strategies are created once per process and reused: TensorFlow's collective ops key their instances per
    strategy object, and two strategies over the same devices in one process can collide.

    Example:
        >>> strategy = get_strategy("mirrored")
        >>> strategy.num_replicas_in_sync
        2
    """
    import tensorflow as tf

    if isinstance(name, tf.distribute.Strategy):
        return name
    if name == "none":
        return tf.distribute.get_strategy()
    if name not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES} or a tf.distribute.Strategy. "
                         f"Received: strategy={name!r}")
    if name not in _STRATEGIES:
        if name == "mirrored":
            if tf.config.list_logical_devices("GPU"):
                _STRATEGIES[name] = tf.distribute.MirroredStrategy()
            else:
                cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
                _STRATEGIES[name] = tf.distribute.MirroredStrategy(devices=cpus if len(cpus) > 1 else None)
        else:
            _STRATEGIES[name] = tf.distribute.MultiWorkerMirroredStrategy()
    return _STRATEGIES[name]


def _patch_for_multiworker(model, strategy, example_batch):
    """Work around Keras 3 + MultiWorkerMirroredStrategy `fit` failures (keras-team/keras#20585).

    1. `fit` builds the compiled metrics with `strategy.reduce("MEAN", batch)` on the first batch, which fails in
       multi-worker mode: build them here from a local example batch and skip that step.
    2. Step outputs are reduced with `strategy.reduce("MEAN", v, axis=0)`, which fails on scalars: return each
       logged value with shape (1,), which that reduction turns into the mean over all replicas of all workers.
    """
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


# ----------------------------------------------------------------------------------------------------------------------
# Run directory, logs and resumption
# ----------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RunPaths:
    """Where a run writes (see the module docstring)."""

    output_dir: str

    def __post_init__(self):
        d = self.output_dir
        self.config = os.path.join(d, RUN_CONFIG)
        self.class_names = os.path.join(d, CLASS_NAMES)
        self.checkpoints = os.path.join(d, "checkpoints")
        self.best = os.path.join(self.checkpoints, "best.keras")
        self.last = os.path.join(self.checkpoints, "last.keras")
        self.logs = os.path.join(d, "logs")
        self.csv = os.path.join(d, CSV_LOG)
        self.backup = os.path.join(d, "backup")

    def existing_run_files(self):
        if not os.path.isdir(self.output_dir):
            return []
        return sorted(f for f in os.listdir(self.output_dir) if f in RUN_FILES)

    def backup_epoch(self):
        """Finished epochs recorded by the BackupAndRestore state, or None without a backup."""
        meta = os.path.join(self.backup, "training_metadata.json")
        if not os.path.isfile(os.path.join(self.backup, "latest.weights.h5")) or not os.path.isfile(meta):
            return None
        with open(meta, encoding="utf-8") as f:
            return int(json.load(f)["epoch"])


def read_log(path):
    """Rows of a run's `training_log.csv` as dicts (`epoch` int, metrics float); `[]` when absent."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        parsed = {}
        for key, value in row.items():
            if key == "epoch":
                parsed[key] = int(value)
            else:
                try:
                    parsed[key] = float(value)
                except (TypeError, ValueError):
                    parsed[key] = value
        out.append(parsed)
    return out


def _truncate_log(path, num_epochs):
    """Keep only the rows of the first `num_epochs` epochs (rows of an epoch that is about to be re-run go)."""
    if not os.path.isfile(path):
        return
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        rows = list(reader)
    if not rows:
        return
    header, body = rows[0], rows[1:]
    index = header.index("epoch") if "epoch" in header else 0
    kept = [r for r in body if r and int(r[index]) < num_epochs]
    if len(kept) != len(body):
        tmp = f"{path}.tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header] + kept)
        os.replace(tmp, path)


def _write_yaml(path, data):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    os.replace(tmp, path)


@dataclasses.dataclass
class FinetuneResult:
    """What `finetune` returns.

    Attributes:
        model: the trained Keras model (the state after the last epoch).
        history: `{metric: [value per epoch]}` over every finished epoch of the run, resumptions included.
        output_dir, best_checkpoint, last_checkpoint, log_dir, csv_log, class_names_file, config_file: paths.
        class_names: class names in label order.
        initial_epoch: the epoch this call started at (> 0 after a resumption).
        config: the resolved settings, with `derived` (replicas, global batch, scaled LR, steps).
    """

    model: object
    history: dict
    output_dir: str
    best_checkpoint: str
    last_checkpoint: str
    log_dir: str
    csv_log: str
    class_names_file: str
    config_file: str
    class_names: list
    initial_epoch: int
    config: dict


def _history_from_log(rows):
    history = {}
    for row in rows:
        for key, value in row.items():
            if key != "epoch":
                history.setdefault(key, []).append(value)
    return history


def load_checkpoint(path, *, compile=False):
    """Load a `.keras` checkpoint written by `finetune` (registers nonlocal_zoo's layers and optimizer first).

    Example:
        >>> model = load_checkpoint("runs/mine/checkpoints/best.keras")
    """
    import keras

    import nonlocal_zoo.layers  # noqa: F401  (registers NonLocalBlock, Affine)

    _keras_objects()
    return keras.saving.load_model(os.fspath(path), compile=compile)


# ----------------------------------------------------------------------------------------------------------------------
# finetune
# ----------------------------------------------------------------------------------------------------------------------
def _is_file_source(source):
    return isinstance(source, (str, os.PathLike)) and not os.fspath(source).startswith("tfds:")


def _mixed_policy(setting):
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


def _learning_rate_logger():
    """A Keras callback adding the current `learning_rate` to the epoch logs (so CSV and TensorBoard get it)."""
    import keras
    from keras import ops

    class LearningRateLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["learning_rate"] = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))

    return LearningRateLogger()


def finetune(data=None, *, config=None, output_dir=None, resume=False, overwrite=False, callbacks=None,
             verbose="auto", **options):
    """Fine-tune a preset on a folder (or list, or TFDS dataset) of clips; see the module docstring for the outputs.

    Settings come from `DEFAULTS`, then the saved `run_config.yaml` when resuming, then the recipe `config`, then
    the keyword arguments given here (`None` = not given).

    Args:
        data: training clips: a folder `root/<class>/<clip>` (class names = folder names), a CSV/list file of
            `path,label` rows, or `"tfds:<name or prepared dir>"`. When resuming it defaults to the saved one.
        config: a recipe: YAML path, name of a file in `configs/`, or dict.
        output_dir: the run folder. Defaults to `runs/<model>`.
        resume: continue the run in `output_dir` from its last finished epoch (a run that finished returns at once;
            one killed before finishing an epoch starts over).
        overwrite: delete a previous run in `output_dir` and start a new one.
        callbacks: extra Keras callbacks.
        verbose: Keras `fit` verbosity (`"auto"`, 0, 1 progress bar, 2 one line per epoch); 0 also silences the
            summary lines this function prints.
        **options: any key of `DEFAULTS`: `model`, `weights`, `val_data`, `epochs`, `batch_size` (per replica),
            `lr` (for a global batch of `lr_base_batch_size`, scaled linearly), `schedule`, `warmup_epochs`,
            `freeze_stages`, `mixed_precision`, `strategy` (a name, or a `tf.distribute.Strategy` object),
            `sync_bn`, `num_frames`, `crop`, `arch`, ...

    Returns:
        A `FinetuneResult`.

    Raises:
        ValueError: for invalid settings, an `output_dir` holding another run (without `resume`/`overwrite`), or a
            resumed run whose classes differ.

    Example:
        >>> result = finetune("my_clips/", model="i3d_nl5_r50_8x8_kinetics400", epochs=10, freeze_stages="res3",
        ...                   output_dir="runs/mine")
        >>> result.history["accuracy"][-1]
    """
    strategy_object = None
    if options.get("strategy") is not None and not isinstance(options["strategy"], str):
        import tensorflow as tf

        strategy_object = options["strategy"]
        if isinstance(strategy_object, tf.distribute.MultiWorkerMirroredStrategy):
            options["strategy"] = "multiworker"
        elif isinstance(strategy_object, tf.distribute.MirroredStrategy):
            options["strategy"] = "mirrored"
        else:
            options["strategy"] = "custom"
    explicit = dict(options, data=data, output_dir=output_dir)
    file_cfg = load_config(config)
    first = resolve_config(file_cfg, **explicit)
    if first["output_dir"] is None:
        first["output_dir"] = os.path.join("runs", first["model"])
    root = first["output_dir"]
    task_type, task_id, num_workers, is_chief = worker_info(first["strategy"])
    run_dir = root if is_chief else os.path.join(root, WORKERS_DIR, f"worker{task_id}")
    paths = RunPaths(run_dir)

    saved = None
    if resume and os.path.isfile(paths.config):
        saved = load_config(paths.config)
        cfg = resolve_config(saved, file_cfg, **explicit)
        changed = sorted(k for k in DEFAULTS if k not in RESUME_FREE_KEYS and saved.get(k, DEFAULTS[k]) != cfg[k])
        if changed:
            warnings.warn(f"Resuming {root!r} with settings that differ from the saved run: "
                          + ", ".join(f"{k}: {saved.get(k)!r} -> {cfg[k]!r}" for k in changed), stacklevel=2)
    else:
        cfg = first
    cfg["output_dir"] = root
    if cfg["data"] is None:
        raise ValueError("No training data: pass a folder of clips, a CSV/list file or 'tfds:<name>'. "
                         "Received: data=None")

    existing = paths.existing_run_files()
    if existing and not resume:
        if not overwrite:
            raise ValueError(f"{run_dir!r} already holds a run ({', '.join(existing)}). Pass resume=True (--resume) to "
                             f"continue it, overwrite=True (--overwrite) to start over, or another output_dir. "
                             f"Received: output_dir={root!r}")
        for name in existing + ([WORKERS_DIR] if is_chief and os.path.isdir(os.path.join(root, WORKERS_DIR)) else []):
            target = os.path.join(run_dir, name)
            shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)

    restored_epoch = paths.backup_epoch() if resume else None
    from_last = False
    if resume and restored_epoch is None:
        rows = read_log(paths.csv)
        if rows and os.path.isfile(paths.last):
            if len(rows) >= cfg["epochs"]:
                _say(verbose, f"Nothing to resume: the run in {root} finished its {cfg['epochs']} epochs.",
                     f"  last checkpoint: {paths.last}")
                return FinetuneResult(load_checkpoint(paths.last), _history_from_log(rows), root, paths.best,
                                      paths.last, paths.logs, paths.csv, paths.class_names, paths.config,
                                      _read_class_names(paths.class_names), len(rows), cfg)
            # No backup (the run finished and more epochs are asked for, or it died before its first backup):
            # the last checkpoint holds the weights and the optimizer state of the last logged epoch.
            restored_epoch, from_last = len(rows), True
        else:
            if rows or os.path.isdir(paths.checkpoints):
                _say(verbose, f"No finished epoch to resume from in {run_dir}; starting the run over.")
            for name in ("checkpoints", "logs", CSV_LOG):
                target = os.path.join(run_dir, name)
                if os.path.isdir(target):
                    shutil.rmtree(target)
                elif os.path.isfile(target):
                    os.remove(target)

    # TensorFlow work starts here; a multi-worker strategy must come first.
    import keras
    import tensorflow as tf

    strategy = get_strategy(strategy_object or cfg["strategy"])
    if cfg["seed"] is not None:
        keras.utils.set_random_seed(cfg["seed"])
    previous_policy = keras.config.dtype_policy()
    policy = _mixed_policy(cfg["mixed_precision"])
    try:
        if policy is not None:
            keras.config.set_dtype_policy(policy)
        return _run(cfg, strategy=strategy, paths=paths, is_chief=is_chief, task_id=task_id, num_workers=num_workers,
                    restored_epoch=restored_epoch, from_last=from_last, policy=policy, callbacks=callbacks,
                    verbose=verbose, keras=keras, tf=tf)
    finally:
        keras.config.set_dtype_policy(previous_policy)


def _read_class_names(path):
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def _run(cfg, *, strategy, paths, is_chief, task_id, num_workers, restored_epoch, from_last, policy, callbacks,
         verbose, keras, tf):
    from nonlocal_zoo.data import ClipList, make_dataset
    from nonlocal_zoo.data.pipeline import clip_list
    from nonlocal_zoo.data.preprocessing import resolve_preprocessing
    from nonlocal_zoo.models import add_classifier_head, create_model

    verbose_fit = 1 if verbose == "auto" else verbose
    replicas = strategy.num_replicas_in_sync
    global_batch = cfg["batch_size"] * replicas
    pre = resolve_preprocessing(cfg["model"], **preprocessing_overrides(cfg))
    frames, train_crop = pre["num_frames"], pre["train_crop"]
    multiworker = cfg["strategy"] == "multiworker" and num_workers > 1

    # ---- data ----
    common = dict(preset=pre, num_parallel_calls=cfg["num_parallel_calls"], on_error=cfg["on_error"])
    if _is_file_source(cfg["data"]):
        clips = clip_list(cfg["data"], split=cfg["split"])
        class_names = clips.class_names or [str(i) for i in range(max(clips.labels) + 1)]
        num_examples = len(clips)
    else:
        clips = None
    if clips is not None and multiworker:
        # Each worker decodes only its shard of the clips; per-replica batches; repeated, so every worker runs the
        # same number of steps.
        def dataset_fn(context):
            shard = ClipList(clips.paths[context.input_pipeline_id::context.num_input_pipelines],
                             clips.labels[context.input_pipeline_id::context.num_input_pipelines], class_names)
            if not len(shard):
                raise ValueError(f"Worker {context.input_pipeline_id} has no training clips: {len(clips)} clips for "
                                 f"{context.num_input_pipelines} workers.")
            return make_dataset(shard, training=True, batch_size=context.get_per_replica_batch_size(global_batch),
                                seed=None if cfg["seed"] is None else cfg["seed"] + context.input_pipeline_id,
                                repeat=True, **common)

        train_ds = strategy.distribute_datasets_from_function(dataset_fn)
    else:
        train_ds = make_dataset(clips if clips is not None else cfg["data"], split=cfg["split"], training=True,
                                batch_size=global_batch, seed=cfg["seed"], repeat=True, **common)
        if clips is None:
            class_names = train_ds.class_names
            num_examples = train_ds.decode_report.num_per_pass
            if class_names is None:
                raise ValueError(f"The training data has no class names (needs a ClassLabel 'label' feature). "
                                 f"Received: data={cfg['data']!r}")
        if multiworker:
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
            train_ds = train_ds.with_options(options)
    class_names = [str(c) for c in class_names]
    steps_per_epoch = cfg["steps_per_epoch"]
    if steps_per_epoch is None:
        if not num_examples:
            raise ValueError(f"The number of training clips of {cfg['data']!r} is unknown; set steps_per_epoch.")
        steps_per_epoch = max(1, num_examples // global_batch)

    val_source = cfg["val_data"] or (cfg["data"] if cfg["val_split"] else None)
    val_ds = None
    if val_source is not None:
        val_ds = make_dataset(val_source, split=cfg["val_split"], training=False, batch_size=global_batch,
                              class_names=class_names if _is_file_source(val_source) else None, **common)
        if multiworker:
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
            val_ds = val_ds.with_options(options)
    monitor = cfg["monitor"] or ("val_accuracy" if val_ds is not None else "loss")
    mode = "min" if "loss" in monitor else "max"

    saved_names = _read_class_names(paths.class_names)
    if restored_epoch is not None and saved_names is not None and saved_names != class_names:
        raise ValueError(f"The classes of {cfg['data']!r} differ from those of the run being resumed "
                         f"({paths.class_names}). Received: class_names={class_names[:10]}")

    # ---- schedule ----
    lr = scaled_learning_rate(cfg["lr"], global_batch_size=global_batch, lr_base_batch_size=cfg["lr_base_batch_size"],
                              per_replica_batch_size=cfg["batch_size"])
    total_steps = cfg["epochs"] * steps_per_epoch
    warmup_steps = int(round(cfg["warmup_epochs"] * steps_per_epoch))
    schedule = make_lr_schedule(lr=lr, schedule=cfg["schedule"], total_steps=total_steps, lr_steps=cfg["lr_steps"],
                                lr_factors=cfg["lr_factors"], warmup_steps=warmup_steps,
                                warmup_start_factor=cfg["warmup_start_factor"])

    # ---- model ----
    weights = None if restored_epoch is not None else cfg["weights"]  # the backup holds every weight
    with strategy.scope():
        base = create_model(cfg["model"], weights=weights, include_top=False, input_shape=(frames, None, None, 3),
                            **cfg["arch"])
        model = add_classifier_head(base, classes=len(class_names), dropout_rate=cfg["dropout_rate"])
        if cfg["sync_bn"]:
            model = convert_to_sync_batchnorm(model)
        frozen = freeze_stages(model, cfg["freeze_stages"])
        no_decay = _normalization_variable_paths(model) if cfg["weight_decay_bn"] != cfg["weight_decay"] else []
        optimizer = _keras_objects()["MomentumSGD"](
            learning_rate=schedule, momentum=cfg["momentum"], nesterov=cfg["nesterov"],
            weight_decay=cfg["weight_decay"], no_decay_paths=no_decay)
        model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
        if from_last:
            model.optimizer.build(model.trainable_variables)  # (a LossScaleOptimizer under mixed_float16)
            model.load_weights(paths.last)  # weights and optimizer state (iterations, momentum)
    if multiworker:
        example = (tf.zeros((1, frames, train_crop, train_crop, 3)), tf.zeros((1,), tf.int32))
        _patch_for_multiworker(model, strategy, example)

    strategy_name = {"none": "none", "mirrored": "MirroredStrategy",
                     "multiworker": "MultiWorkerMirroredStrategy"}.get(cfg["strategy"], type(strategy).__name__)

    # ---- files ----
    os.makedirs(paths.checkpoints, exist_ok=True)
    with open(paths.class_names, "w", encoding="utf-8") as f:
        f.write("".join(f"{name}\n" for name in class_names))
    derived = {
        "num_replicas": replicas, "num_workers": num_workers, "strategy": strategy_name,
        "global_batch_size": global_batch, "learning_rate": lr, "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps, "warmup_steps": warmup_steps, "num_classes": len(class_names),
        "num_training_clips": num_examples, "mixed_precision_policy": policy or "float32",
        "frozen_layers": len(frozen), "trainable_params": int(sum(math.prod(v.shape) for v in model.trainable_weights)),
        "monitor": monitor,
    }
    _write_yaml(paths.config, {**{k: cfg[k] for k in DEFAULTS}, "derived": derived})
    if restored_epoch is not None:
        _truncate_log(paths.csv, restored_epoch)
    previous = [r for r in read_log(paths.csv) if monitor in r]
    best_so_far = None
    if previous:
        values = [r[monitor] for r in previous]
        best_so_far = min(values) if mode == "min" else max(values)

    role = "" if is_chief else f" (worker {task_id}: temporary files, removed at the end)"
    lr_rule = (f"{cfg['lr']} x {global_batch}/{cfg['lr_base_batch_size'] or cfg['batch_size']} = {lr:g}"
               if lr != cfg["lr"] else f"{lr:g}")
    _say(verbose,
         f"nonlocal_zoo finetune: {cfg['model']} (weights={cfg['weights']}) -> {len(class_names)} classes: "
         f"{', '.join(class_names[:8])}{' ...' if len(class_names) > 8 else ''}",
         f"  output dir:   {paths.output_dir}{role}",
         f"  class map:    {paths.class_names}",
         f"  settings:     {paths.config}",
         f"  checkpoints:  {paths.best} (best {monitor}), {paths.last}",
         f"  TensorBoard:  {paths.logs}   (tensorboard --logdir {paths.logs})",
         f"  CSV log:      {paths.csv}",
         f"  backup:       {paths.backup}   (continue an interrupted run with --resume)",
         f"  replicas:     {replicas} ({strategy_name}, {num_workers} worker(s)); batch {cfg['batch_size']} "
         f"per replica, global {global_batch}; lr {lr_rule} ({cfg['schedule']} schedule, {total_steps} steps)",
         f"  frozen:       {'conv1..' + cfg['freeze_stages'] if frozen else 'nothing'} ({len(frozen)} layers)"
         f"; mixed precision: {policy or 'off'}; sync BN: {cfg['sync_bn']}")
    if restored_epoch is not None:
        source = paths.last if from_last else paths.backup
        _say(verbose, f"Resuming at epoch {restored_epoch + 1}/{cfg['epochs']} from the state after epoch "
                      f"{restored_epoch} ({source}).")

    # ---- callbacks: everything of an epoch is written before its backup, so a finished epoch is never lost ----
    # (the last checkpoint precedes the CSV row: a run resumed from it never skips an epoch)
    run_callbacks = [
        _learning_rate_logger(),
        keras.callbacks.ModelCheckpoint(paths.last),
        keras.callbacks.ModelCheckpoint(paths.best, monitor=monitor, mode=mode, save_best_only=True,
                                        initial_value_threshold=best_so_far),
        keras.callbacks.CSVLogger(paths.csv, append=True),
        keras.callbacks.TensorBoard(paths.logs),
        *(callbacks or []),
        keras.callbacks.BackupAndRestore(paths.backup, save_freq=cfg["backup_freq"]),
    ]
    try:
        with warnings.catch_warnings():
            # The validation set's length is unknown to tf.data (undecodable clips are dropped); Keras learns it
            # by running out of data once, which is expected (the training set repeats).
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            fit = model.fit(train_ds, epochs=cfg["epochs"], steps_per_epoch=steps_per_epoch, validation_data=val_ds,
                            validation_steps=cfg["validation_steps"], callbacks=run_callbacks, verbose=verbose_fit,
                            shuffle=False, initial_epoch=restored_epoch if from_last else 0)
    except KeyboardInterrupt:
        _say(verbose, f"\nInterrupted. Continue with: nonlocal-zoo finetune --output {paths.output_dir} --resume")
        raise
    rows = read_log(paths.csv)
    _say(verbose, f"Done: {len(rows)} epochs. Best ({monitor}): {paths.best}; last: {paths.last}; "
                  f"logs: {paths.logs}; class map: {paths.class_names}")
    if not is_chief:
        shutil.rmtree(paths.output_dir, ignore_errors=True)
        try:
            os.rmdir(os.path.dirname(paths.output_dir))  # workers/, once the last worker has left it
        except OSError:
            pass
    initial_epoch = restored_epoch or 0
    history = _history_from_log(rows) if rows else dict(fit.history)
    root = cfg["output_dir"]
    chief = RunPaths(root)
    return FinetuneResult(model, history, root, chief.best, chief.last, chief.logs, chief.csv, chief.class_names,
                          chief.config, class_names, initial_epoch, {**cfg, "derived": derived})


# ----------------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------------
def _parse_set(items):
    """`["a.b=1", "lr=0.1"]` -> nested dict; values are YAML (`[1, 2]`, `true`, `null`, numbers, strings)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set takes KEY=VALUE (e.g. arch.stage_depths=[1,1,1,1]). Received: {item!r}")
        key, value = item.split("=", 1)
        target = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = yaml.safe_load(value)
    return out


def add_finetune_arguments(parser):
    """Add the `finetune` arguments to an `argparse` parser (the `nonlocal-zoo finetune` sub-command).

    Every option defaults to "not given", so a `--config` recipe's values apply unless overridden here.
    """
    p = parser
    p.add_argument("data", nargs="?", default=None,
                   help="training clips: folder root/<class>/<clip>, CSV/list file, or tfds:<name> (default when "
                        "resuming: the saved one)")
    p.add_argument("--model", metavar="PRESET", default=None,
                   help=f"preset to start from (default {DEFAULTS['model']})")
    p.add_argument("--config", metavar="YAML", default=None, help="recipe: YAML file or a name in configs/")
    p.add_argument("--weights", default=None,
                   help="'kinetics400' (default), a weights file, an hf:// handle, or 'none' (random init)")
    p.add_argument("--val", dest="val_data", metavar="DATA", default=None, help="validation clips")
    p.add_argument("--split", default=None, help="split folder of DATA (root/<split>/<class>/<clip>)")
    p.add_argument("--val-split", default=None, help="split folder of the validation data (e.g. val)")
    p.add_argument("--output", "--output-dir", dest="output_dir", metavar="DIR", default=None,
                   help="run folder (default runs/<model>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last finished epoch")
    p.add_argument("--overwrite", action="store_true", help="delete the run in --output and start over")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="clips per replica (global = x replicas)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate for a global batch of --lr-base-batch-size, scaled linearly (default 0.01 @ 64)")
    p.add_argument("--lr-base-batch-size", type=int, default=None, help="global batch that --lr is given for")
    p.add_argument("--schedule", choices=SCHEDULES, default=None, help="step (official, default) or cosine")
    p.add_argument("--warmup-epochs", type=float, default=None, help="linear warmup length (epochs)")
    p.add_argument("--weight-decay", type=float, default=None, help="L2 weight decay (default 1e-4)")
    p.add_argument("--momentum", type=float, default=None, help="SGD momentum (default 0.9)")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None, help="Nesterov momentum")
    p.add_argument("--freeze-stages", choices=STAGES + ("none",), default=None,
                   help="freeze conv1 up to this stage (BN there in inference mode), e.g. res3")
    p.add_argument("--mixed-precision", nargs="?", const="auto", default=None,
                   choices=("auto", "off") + MIXED_POLICIES,
                   help="mixed precision (mixed_float16 on GPU, mixed_bfloat16 on CPU, or the given policy)")
    p.add_argument("--strategy", choices=STRATEGIES, default=None,
                   help="none, mirrored (GPUs of this machine) or multiworker (TF_CONFIG)")
    p.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="synchronized BatchNorm across replicas")
    p.add_argument("--num-frames", type=int, default=None, help="clip length override")
    p.add_argument("--crop", type=int, default=None, help="crop size override (short sides scaled accordingly)")
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--dropout", dest="dropout_rate", type=float, default=None)
    p.add_argument("--monitor", default=None, help="metric of the best checkpoint (default val_accuracy or loss)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--set", dest="set_options", action="append", metavar="KEY=VALUE", default=None,
                   help="any recipe setting as YAML, repeatable: --set arch.stage_depths=[1,1,1,1]")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=None, help="0 silent, 1 progress bar, 2 per epoch")
    return parser


_ARG_KEYS = ("model", "val_data", "split", "val_split", "epochs", "batch_size", "lr", "lr_base_batch_size",
             "schedule", "warmup_epochs", "weight_decay", "momentum", "nesterov", "freeze_stages", "strategy",
             "sync_bn", "num_frames", "crop", "steps_per_epoch", "dropout_rate", "monitor", "seed")


def options_from_args(args):
    """The `finetune` keyword arguments of parsed `add_finetune_arguments` arguments."""
    options = {k: getattr(args, k, None) for k in _ARG_KEYS}
    extra = _parse_set(getattr(args, "set_options", None))
    recipe = load_config(args.config) if getattr(args, "config", None) else {}
    for key in ("arch", "preprocessing"):
        if key in extra and isinstance(extra[key], dict):
            extra[key] = {**recipe.get(key, {}), **extra[key]}  # --set arch.x=... adds to the recipe's overrides
    options.update(extra)
    options["weights"] = args.weights  # "none" -> random initialisation
    if args.mixed_precision is not None:
        options["mixed_precision"] = False if args.mixed_precision == "off" else args.mixed_precision
    return options


def run_finetune_from_args(args, *, callbacks=None):
    """Run `finetune` from parsed CLI arguments; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    try:
        verbose = "auto" if args.verbose is None else args.verbose
        finetune(args.data, config=args.config, output_dir=args.output_dir, resume=args.resume,
                 overwrite=args.overwrite, callbacks=callbacks, verbose=verbose, **options_from_args(args))
    except ValueError as e:
        print(f"nonlocal-zoo finetune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv=None, *, callbacks=None):
    """`python -m nonlocal_zoo.training DATA [options]` (the same as `nonlocal-zoo finetune`)."""
    parser = argparse.ArgumentParser(prog="nonlocal-zoo finetune", description=finetune.__doc__.splitlines()[0])
    add_finetune_arguments(parser)
    return run_finetune_from_args(parser.parse_args(argv), callbacks=callbacks)


if __name__ == "__main__":
    # run the importable module's `main`, so that its Keras classes are registered once, under their module
    from nonlocal_zoo.training import main as _main

    sys.exit(_main())

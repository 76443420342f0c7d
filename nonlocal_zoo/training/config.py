"""Fine-tuning settings: the defaults (the official Caffe2 recipe), YAML recipes, validation and derived overrides.

Recipes are YAML files (`configs/finetune_*.yaml`) whose keys are the keyword arguments of `finetune`; settings are
merged `DEFAULTS` < saved run < recipe < explicit options, then validated (`resolve_config`).

Example:
    >>> cfg = resolve_config("finetune_i3d_nl5_r50_8x8", epochs=5)
    >>> cfg["lr"], cfg["epochs"]
    (0.01, 5)
"""
import copy
import os

import yaml

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
    "cluster": "tf_config",        # where "multiworker" finds its workers: "tf_config" (TF_CONFIG) or "slurm" (srun)
    "port_base": None,             # cluster "slurm": first port of the workers of a node (default: from SLURM_JOB_ID)
    "gpus_per_task": None,         # cluster "slurm": GPUs per task (default: SLURM_GPUS_PER_TASK, or an even share)
    "sync_bn": False,              # BatchNormalization(synchronized=True) across replicas
    "monitor": None,               # metric of the best checkpoint (val_accuracy with validation data, else loss)
    "backup_freq": "epoch",        # BackupAndRestore save_freq: "epoch" or every N steps
    "seed": 0,
    "num_parallel_calls": None,    # parallel decoding calls (None: tf.data AUTOTUNE)
    "on_error": "skip",            # undecodable clips: "skip" (reported) or "raise"
}
SCHEDULES = ("step", "cosine")
STRATEGIES = ("none", "mirrored", "multiworker")
CLUSTERS = ("tf_config", "slurm")
STAGES = ("conv1", "res2", "res3", "res4", "res5")
MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")

# Keys that may differ from the saved run when resuming without changing what is trained.
RESUME_FREE_KEYS = ("output_dir", "data", "val_data", "num_parallel_calls", "on_error", "validation_steps", "cluster",
                    "port_base", "gpus_per_task")


def load_config(config):
    """A fine-tuning recipe as a dict: a YAML path, a recipe name from `configs/`, or a dict (copied).

    Args:
        config: path to a YAML file, the name of a file in the repository's `configs/` folder (with or without
            `.yaml`), or a dict.

    Returns:
        A dict of `finetune` keyword arguments.

    Raises:
        ValueError: when the file is missing, is not valid YAML or not a YAML mapping, or has unknown keys.

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
            try:
                loaded = yaml.safe_load(f) or {}
            except yaml.YAMLError as error:
                where = getattr(error, "problem_mark", None)
                line = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
                problem = getattr(error, "problem", None) or str(error).splitlines()[0]
                raise ValueError(f"Fine-tuning config {path!r} is not valid YAML{line}: {problem}") from None
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
    """Check and normalise every setting of a merged config (in place); returns it."""
    _validate_sources(cfg)
    _validate_sizes(cfg)
    _validate_schedule(cfg)
    _validate_choices(cfg)
    _validate_cluster(cfg)
    return cfg


def _validate_sources(cfg):
    """Paths, weights, the preset name and the override mappings."""
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


def _validate_sizes(cfg):
    """Epochs, batch and step counts, clip shape, learning rate, decay, momentum and dropout."""
    cfg["epochs"] = _check_positive("epochs", cfg["epochs"])
    cfg["batch_size"] = _check_positive("batch_size", cfg["batch_size"])
    for key in ("steps_per_epoch", "validation_steps", "lr_base_batch_size", "num_frames", "crop"):
        cfg[key] = _check_positive(key, cfg[key], allow_none=True)
    cfg["lr"] = _check_positive("lr", cfg["lr"], float)
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


def _validate_schedule(cfg):
    """The schedule name and the step schedule's fractions and factors."""
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


def _validate_choices(cfg):
    """Flags and named choices: Nesterov, sync BN, frozen stages, precision, strategy, checkpoints, seed, errors."""
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


def _validate_cluster(cfg):
    """The multi-worker cluster: `cluster` ("slurm" implies strategy "multiworker") and its Slurm options."""
    if cfg["cluster"] is None:
        cfg["cluster"] = "tf_config"
    if cfg["cluster"] not in CLUSTERS:
        raise ValueError(f"`cluster` must be one of {CLUSTERS}. Received: cluster={cfg['cluster']!r}")
    if cfg["cluster"] == "slurm":
        if cfg["strategy"] == "none":
            cfg["strategy"] = "multiworker"
        if cfg["strategy"] != "multiworker":
            raise ValueError("`cluster='slurm'` runs one worker per Slurm task and needs strategy 'multiworker' (or "
                             f"none given). Received: strategy={cfg['strategy']!r}")
    port, gpus = cfg["port_base"], cfg["gpus_per_task"]  # used by cluster "slurm" only (a resumed run may set them
    # before the saved cluster setting is known)
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1024 <= port <= 65000):
        raise ValueError(f"`port_base` must be an integer port in [1024, 65000]. Received: port_base={port!r}")
    if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0):
        raise ValueError(f"`gpus_per_task` must be a non-negative integer (0: CPU only). "
                         f"Received: gpus_per_task={gpus!r}")


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


def parse_overrides(items):
    """`["a.b=1", "lr=0.1"]` -> nested dict of settings; values are YAML (`[1, 2]`, `true`, `null`, numbers, strings).

    The `--set KEY=VALUE` options of `nonlocal-zoo finetune`.

    Args:
        items: `KEY=VALUE` strings; dotted keys address nested settings (`arch.stage_depths`).

    Returns:
        A nested dict.

    Raises:
        ValueError: an item without `=`.

    Example:
        >>> parse_overrides(["arch.stem_width=16", "epochs=3"])
        {'arch': {'stem_width': 16}, 'epochs': 3}
    """
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

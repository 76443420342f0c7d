"""Fine-tuning a preset on your own clips: `finetune(...)` and its parts, one module per job.

- `config`: the defaults (official Caffe2 recipe), YAML recipes, validation, preprocessing overrides.
- `data`: training and validation pipelines, class names, steps per epoch.
- `optim`: `MomentumSGD` (coupled L2 weight decay), the step/cosine schedules, the linear scaling rule.
- `model`: the network of a run (new head, frozen stages, synchronized BatchNorm, mixed precision).
- `distribute`: `tf.distribute` strategies, `TF_CONFIG` roles (from Slurm with `cluster="slurm"`), multi-worker
  input and fixes.
- `run_folder`: the run's folder (settings, class map, checkpoints, logs, backup) and resuming from it.
- `callbacks`: the Keras callbacks that write the folder during training.
- `loop`: `finetune`, the steps of a run.

The `nonlocal-zoo finetune` command line is `nonlocal_zoo.cli`. Importing this package does not import TensorFlow.

Example:
    >>> from nonlocal_zoo.training import finetune, load_checkpoint
    >>> result = finetune("my_clips/", config="finetune_i3d_nl5_r50_8x8", output_dir="runs/mine")
    >>> model = load_checkpoint(result.best_checkpoint)
"""
from nonlocal_zoo.training.callbacks import learning_rate_logger, run_callbacks
from nonlocal_zoo.training.config import (
    CLUSTERS,
    CONFIG_DIR,
    DEFAULTS,
    MIXED_POLICIES,
    RESUME_FREE_KEYS,
    SCHEDULES,
    STAGES,
    STRATEGIES,
    load_config,
    parse_overrides,
    preprocessing_overrides,
    resolve_config,
)
from nonlocal_zoo.training.data import TrainingData, is_file_source, training_data
from nonlocal_zoo.training.distribute import configure_cluster, get_strategy, slurm_cluster, worker_info
from nonlocal_zoo.training.loop import finetune
from nonlocal_zoo.training.model import (
    build_training_model,
    convert_to_sync_batchnorm,
    freeze_stages,
    mixed_policy,
    normalization_variable_paths,
    stage_of_layer,
)
from nonlocal_zoo.training.optim import (
    make_lr_schedule,
    momentum_sgd_class,
    register_keras_objects,
    scaled_learning_rate,
    step_decay_class,
)
from nonlocal_zoo.training.run_folder import (
    CLASS_NAMES,
    CSV_LOG,
    RUN_CONFIG,
    RUN_FILES,
    WORKERS_DIR,
    FinetuneResult,
    RunPaths,
    load_checkpoint,
    read_class_names,
    read_log,
    write_run_files,
)

__all__ = [
    "CLASS_NAMES",
    "CLUSTERS",
    "CONFIG_DIR",
    "CSV_LOG",
    "DEFAULTS",
    "MIXED_POLICIES",
    "RESUME_FREE_KEYS",
    "RUN_CONFIG",
    "RUN_FILES",
    "SCHEDULES",
    "STAGES",
    "STRATEGIES",
    "WORKERS_DIR",
    "FinetuneResult",
    "MomentumSGD",
    "RunPaths",
    "StepDecay",
    "TrainingData",
    "build_training_model",
    "configure_cluster",
    "convert_to_sync_batchnorm",
    "finetune",
    "freeze_stages",
    "get_strategy",
    "is_file_source",
    "learning_rate_logger",
    "load_checkpoint",
    "load_config",
    "make_lr_schedule",
    "mixed_policy",
    "momentum_sgd_class",
    "normalization_variable_paths",
    "parse_overrides",
    "preprocessing_overrides",
    "read_class_names",
    "read_log",
    "register_keras_objects",
    "resolve_config",
    "run_callbacks",
    "scaled_learning_rate",
    "slurm_cluster",
    "stage_of_layer",
    "step_decay_class",
    "training_data",
    "worker_info",
    "write_run_files",
]


# The command line moved to nonlocal_zoo.cli (training sits below it and does not import it).
_MOVED_TO_CLI = {"main": "finetune_main", "add_finetune_arguments": "add_finetune_arguments",
                 "options_from_args": "finetune_options", "run_finetune_from_args": "finetune_main"}


def __getattr__(name):
    # The Keras classes are defined on first use (importing this package must not import TensorFlow).
    if name == "MomentumSGD":
        return momentum_sgd_class()
    if name == "StepDecay":
        return step_decay_class()
    if name in _MOVED_TO_CLI:
        raise AttributeError(f"nonlocal_zoo.training.{name} moved to nonlocal_zoo.cli.{_MOVED_TO_CLI[name]} "
                             "(the `nonlocal-zoo finetune` command line)")
    raise AttributeError(f"module 'nonlocal_zoo.training' has no attribute {name!r}")

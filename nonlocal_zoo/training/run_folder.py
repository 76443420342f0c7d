"""The folder a fine-tuning run writes, its logs, and resuming a run from it.

    run_config.yaml        the resolved settings (and the derived ones: replicas, global batch, scaled LR, steps)
    class_names.txt        one class name per line, in label order
    checkpoints/last.keras the model after the last finished epoch; checkpoints/best.keras the best one (`monitor`)
    logs/                  TensorBoard (`tensorboard --logdir <output_dir>/logs`)
    training_log.csv       one row per finished epoch (kept across resumptions, never duplicated)
    backup/                `keras.callbacks.BackupAndRestore` state while a run is unfinished (weights + optimizer)
    config.json, model.weights.h5, preprocessor.json, labels.txt, metadata.json, README.md
                           written when the run finishes: the folder is then a `VideoClassifier` preset directory
                           of the best checkpoint (`VideoClassifier.from_preset(output_dir)`)

`write_run_files` writes the files a run starts with (settings, class map, folders); the checkpoints, logs and
backup are written during training by the callbacks of `nonlocal_zoo.training.callbacks.run_callbacks`.

Example:
    >>> paths = RunPaths("runs/mine")
    >>> read_log(paths.csv)[-1]["accuracy"]
"""
import contextlib
import csv
import dataclasses
import json
import os
import shutil

import yaml

from nonlocal_zoo.training.optim import register_keras_objects

RUN_CONFIG = "run_config.yaml"
CLASS_NAMES = "class_names.txt"
CSV_LOG = "training_log.csv"
# The preset-directory files (`nonlocal_zoo.tasks.save_to_preset`) a finished run also holds.
PRESET_FILES = ("config.json", "model.weights.h5", "preprocessor.json", "labels.txt", "metadata.json", "README.md")
RUN_FILES = (RUN_CONFIG, CLASS_NAMES, CSV_LOG, "checkpoints", "logs", "backup", *PRESET_FILES)
WORKERS_DIR = "workers"


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


def truncate_log(path, num_epochs):
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


def write_yaml(path, data):
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


def history_from_log(rows):
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
    import nonlocal_zoo.tasks  # noqa: F401  (registers VideoClassifier, its backbone and preprocessor)

    register_keras_objects()
    return keras.saving.load_model(os.fspath(path), compile=compile)


def read_class_names(path):
    """The class names saved in a run's `class_names.txt`, or None when it is absent."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def clear_run(run_dir, *, output_dir, is_chief, resume, overwrite):
    """Refuse or clear a previous run in `run_dir` (this worker's folder of `output_dir`) before a new one starts.

    Without `resume`, an existing run is an error unless `overwrite`, which deletes its files (and, on the chief,
    the workers' temporary folders).

    Raises:
        ValueError: `run_dir` holds a run and neither `resume` nor `overwrite` is set.
    """
    paths = RunPaths(run_dir)
    existing = paths.existing_run_files()
    if not existing or resume:
        return
    if not overwrite:
        raise ValueError(f"{run_dir!r} already holds a run ({', '.join(existing)}). Pass resume=True (--resume) to "
                         f"continue it, overwrite=True (--overwrite) to start over, or another output_dir. "
                         f"Received: output_dir={output_dir!r}")
    workers = [WORKERS_DIR] if is_chief and os.path.isdir(os.path.join(run_dir, WORKERS_DIR)) else []
    for name in existing + workers:
        _remove(os.path.join(run_dir, name))


def clear_unfinished_epochs(run_dir):
    """Remove the checkpoints, logs and CSV log of a run that finished no epoch (it starts over)."""
    for name in ("checkpoints", "logs", CSV_LOG):
        _remove(os.path.join(run_dir, name))


def _remove(target):
    if os.path.isdir(target):
        shutil.rmtree(target)
    elif os.path.isfile(target):
        os.remove(target)


def write_run_files(paths, *, class_names, settings, derived, restored_epoch=None):
    """Write the files a run starts with: `checkpoints/`, `class_names.txt`, `run_config.yaml`; on a resumption,
    drop the CSV rows of epochs that are about to be run again.

    Args:
        paths: the run's `RunPaths`.
        class_names: class names in label order.
        settings: the resolved settings (keys of `DEFAULTS`).
        derived: settings derived at the start (replicas, global batch, scaled LR, steps, ...), saved as `derived`.
        restored_epoch: finished epochs of the run being resumed, or None.

    Example:
        >>> write_run_files(RunPaths("runs/mine"), class_names=["a", "b"], settings=cfg, derived={"num_classes": 2})
    """
    os.makedirs(paths.checkpoints, exist_ok=True)
    with open(paths.class_names, "w", encoding="utf-8") as f:
        f.write("".join(f"{name}\n" for name in class_names))
    write_yaml(paths.config, {**settings, "derived": derived})
    if restored_epoch is not None:
        truncate_log(paths.csv, restored_epoch)


LOCK_FILE = ".finetune.lock"


@contextlib.contextmanager
def lock_run_folder(run_dir):
    """Hold the run folder's lock for the duration of a run: a second `finetune` into the same folder is refused.

    The lock is an OS file lock (released by the OS when the process dies, so a killed run can be resumed).

    Raises:
        ValueError: another process holds the lock.

    Example:
        >>> with lock_run_folder("runs/mine"):
        ...     ...
    """
    import filelock

    os.makedirs(run_dir, exist_ok=True)
    lock = filelock.FileLock(os.path.join(run_dir, LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise ValueError(f"Another finetune run is writing to {run_dir!r} (it holds {LOCK_FILE}); wait for it to "
                         "finish, or choose another output_dir.") from None
    try:
        yield
    finally:
        lock.release()


def write_preset(paths):
    """Make a run folder a `VideoClassifier` preset directory of its best checkpoint (else its last one).

    Example:
        >>> write_preset(RunPaths("runs/mine"))   # then VideoClassifier.from_preset("runs/mine")
    """
    from nonlocal_zoo.tasks import VideoClassifier

    source = paths.best if os.path.isfile(paths.best) else paths.last
    if not os.path.isfile(source):
        return None
    model = load_checkpoint(source)
    if not isinstance(model, VideoClassifier):
        raise ValueError(f"The checkpoint {source!r} is not a VideoClassifier. Received: {type(model).__name__}")
    return model.save_to_preset(paths.output_dir)


def leave_worker_folder(run_dir):
    """Remove a non-chief worker's temporary run folder (and `workers/` once the last worker has left it)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        os.rmdir(os.path.dirname(run_dir))
    except OSError:
        pass

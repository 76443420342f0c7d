"""Fine-tuning a preset on your own clips: `finetune(...)` and the steps of a run.

A run starts from a preset (with its weights, e.g. Kinetics-400), replaces the classifier with a new `pred` layer for
the classes of your data (class names from the folder names, saved as `class_names.txt`), optionally freezes the
first stages (their BatchNorm layers then run in inference mode), and trains with SGD + momentum and L2 weight decay
as the official Caffe2 recipes do (decay added to the gradient before the momentum update, none on BN parameters),
on a step or cosine schedule with optional linear warmup. One machine or many: `strategy="mirrored"` (the GPUs, or the
logical CPUs, of this machine) or `"multiworker"` (`TF_CONFIG`, or the tasks of a Slurm job step with
`cluster="slurm"`); the global batch is `batch_size x replicas` and the
learning rate is scaled linearly with it.

Everything a run writes lives in `output_dir` (see `nonlocal_zoo.training.run_folder`); a finished run's folder is
also a `VideoClassifier` preset directory of its best checkpoint (`VideoClassifier.from_preset(output_dir)`,
`nonlocal-zoo classify VIDEO --model output_dir`). A run that is killed (even
mid-epoch) continues with `resume=True` (`--resume`) from the state saved at the end of its last finished epoch: no
finished epoch is lost, its logs and checkpoints are kept.

Example:
    >>> from nonlocal_zoo import finetune
    >>> result = finetune("my_clips/", config="configs/finetune_i3d_nl5_r50_8x8.yaml", output_dir="runs/mine")
    >>> result.best_checkpoint
    'runs/mine/checkpoints/best.keras'

TensorFlow and Keras are imported only when a run starts, so that building the CLI parser stays cheap.
"""
import dataclasses
import os
import warnings

from nonlocal_zoo.training.callbacks import best_logged_value, run_callbacks
from nonlocal_zoo.training.config import (
    DEFAULTS,
    RESUME_FREE_KEYS,
    load_config,
    preprocessing_overrides,
    resolve_config,
)
from nonlocal_zoo.training.data import check_training_source, training_data
from nonlocal_zoo.training.distribute import (
    configure_cluster,
    get_strategy,
    prepare_multiworker_model,
    strategy_display_name,
    strategy_setting,
    worker_info,
)
from nonlocal_zoo.training.model import build_training_model, mixed_policy, trainable_parameter_count
from nonlocal_zoo.training.optim import make_lr_schedule, scaled_learning_rate
from nonlocal_zoo.training.run_folder import (
    WORKERS_DIR,
    FinetuneResult,
    RunPaths,
    clear_run,
    clear_unfinished_epochs,
    history_from_log,
    leave_worker_folder,
    lock_run_folder,
    load_checkpoint,
    read_class_names,
    read_log,
    write_preset,
    write_run_files,
)


def _say(verbose, *lines):
    if verbose:
        print("\n".join(lines), flush=True)


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
        strategy_object = options["strategy"]
        options["strategy"] = strategy_setting(strategy_object)
    cfg, run = _resolve_run(dict(options, data=data, output_dir=output_dir), config, resume)
    check_training_source(cfg["data"], split=cfg["split"])  # classes, clips and one decodable clip, up front
    with lock_run_folder(run.paths.output_dir):
        if not resume:
            clear_run(run.paths.output_dir, output_dir=cfg["output_dir"], is_chief=run.is_chief, resume=resume,
                      overwrite=overwrite)
        start = _resume_point(cfg, run.paths, resume, verbose) if resume else _Start()
        if start.finished is not None:
            return start.finished
        return _train(cfg, run, start, strategy_object, callbacks, verbose)


def _train(cfg, run, start, strategy_object, callbacks, verbose):
    """The TensorFlow part of a run: strategy, seed, dtype policy, then `_run`."""
    # TensorFlow work starts here; a multi-worker strategy must come first.
    import keras

    strategy = get_strategy(strategy_object or cfg["strategy"])
    if cfg["seed"] is not None:
        keras.utils.set_random_seed(cfg["seed"])
    previous_policy = keras.config.dtype_policy()
    policy = mixed_policy(cfg["mixed_precision"])
    try:
        if policy is not None:
            keras.config.set_dtype_policy(policy)
        return _run(cfg, run=run, start=start, strategy=strategy, policy=policy, callbacks=callbacks, verbose=verbose)
    finally:
        keras.config.set_dtype_policy(previous_policy)


@dataclasses.dataclass
class _Worker:
    """This process in the run: its folder and its role."""

    paths: RunPaths
    task_id: int
    num_workers: int
    is_chief: bool


@dataclasses.dataclass
class _Start:
    """Where a run starts: `restored_epoch` finished epochs (None: a new run), restored from the backup or, with
    `from_last`, from the last checkpoint `last`; `finished`: the result of a run that has nothing left to do."""

    restored_epoch: object = None
    from_last: bool = False
    last: object = None
    finished: object = None


def _resolve_run(explicit, config, resume):
    """(settings, this worker) from the options, the recipe and, when resuming, the saved run."""
    file_cfg = load_config(config)
    first = resolve_config(file_cfg, **explicit)
    if first["output_dir"] is None:
        first["output_dir"] = os.path.join("runs", first["model"])
    root = first["output_dir"]
    cfg = first
    if resume:
        # A resumed run's settings (strategy and cluster included) are the saved ones: every worker reads the chief's
        # file in the shared run folder, or its own copy (workers/workerN) when it does not see the chief's.
        saved_file = RunPaths(root).config
        if not os.path.isfile(saved_file):
            configure_cluster(first)
            saved_file = RunPaths(_worker_dir(root, first["strategy"])).config
        if os.path.isfile(saved_file):
            saved = load_config(saved_file)
            cfg = resolve_config(saved, file_cfg, **explicit)
            changed = sorted(k for k in DEFAULTS if k not in RESUME_FREE_KEYS and saved.get(k, DEFAULTS[k]) != cfg[k])
            if changed:
                warnings.warn(f"Resuming {root!r} with settings that differ from the saved run: "
                              + ", ".join(f"{k}: {saved.get(k)!r} -> {cfg[k]!r}" for k in changed), stacklevel=3)
    configure_cluster(cfg)  # cluster "slurm": TF_CONFIG from the job step, before anything reads it
    _, task_id, num_workers, is_chief = worker_info(cfg["strategy"])
    paths = RunPaths(_worker_dir(root, cfg["strategy"]))
    cfg["output_dir"] = root
    if cfg["data"] is None:
        raise ValueError("No training data: pass a folder of clips, a CSV/list file or 'tfds:<name>'. "
                         "Received: data=None")
    return cfg, _Worker(paths, task_id, num_workers, is_chief)


def _worker_dir(root, strategy):
    """The folder this worker writes: the run folder for the chief, `workers/worker<index>` inside it for the others
    (removed at the end)."""
    _, task_id, _, is_chief = worker_info(strategy)
    return root if is_chief else os.path.join(root, WORKERS_DIR, f"worker{task_id}")


def _resume_point(cfg, paths, resume, verbose):
    """Where a resumed run starts: its backup, else its last checkpoint, else the beginning (files cleared)."""
    restored_epoch = paths.backup_epoch()
    if restored_epoch is not None:
        return _Start(restored_epoch)
    rows, logged = read_log(paths.csv), paths
    if not (rows and os.path.isfile(paths.last)):
        # A worker other than the chief removes its folder when a run finishes: it continues from the chief's
        # last checkpoint, as the chief does (every worker must build and restore the same model).
        logged = RunPaths(cfg["output_dir"])
        rows = read_log(logged.csv) if logged.output_dir != paths.output_dir else rows
    if rows and os.path.isfile(logged.last):
        if len(rows) >= cfg["epochs"]:
            _say(verbose, f"Nothing to resume: the run in {cfg['output_dir']} finished its {cfg['epochs']} epochs.",
                 f"  last checkpoint: {logged.last}")
            return _Start(finished=FinetuneResult(
                load_checkpoint(logged.last), history_from_log(rows), cfg["output_dir"], logged.best, logged.last,
                logged.logs, logged.csv, logged.class_names, logged.config, read_class_names(logged.class_names),
                len(rows), cfg))
        # No backup (the run finished and more epochs are asked for, or it died before its first backup):
        # the last checkpoint holds the weights and the optimizer state of the last logged epoch.
        return _Start(len(rows), from_last=True, last=logged.last)
    if rows or os.path.isdir(paths.checkpoints):
        _say(verbose, f"No finished epoch to resume from in {paths.output_dir}; starting the run over.")
    clear_unfinished_epochs(paths.output_dir)
    return _Start()


def _run(cfg, *, run, start, strategy, policy, callbacks, verbose):
    """Train: data, schedule, model, run files, fit; returns the `FinetuneResult`."""
    from nonlocal_zoo.data.preprocessing import resolve_preprocessing

    paths = run.paths
    replicas = strategy.num_replicas_in_sync
    global_batch = cfg["batch_size"] * replicas
    pre = resolve_preprocessing(cfg["model"], **preprocessing_overrides(cfg))
    multiworker = cfg["strategy"] == "multiworker" and run.num_workers > 1
    data = training_data(cfg, strategy=strategy, preprocessing=pre, global_batch=global_batch,
                         multiworker=multiworker)
    saved_names = read_class_names(paths.class_names)
    if start.restored_epoch is not None and saved_names is not None and saved_names != data.class_names:
        raise ValueError(f"The classes of {cfg['data']!r} differ from those of the run being resumed "
                         f"({paths.class_names}). Received: class_names={data.class_names[:10]}")
    monitor = cfg["monitor"] or ("val_accuracy" if data.val is not None else "loss")
    mode = "min" if "loss" in monitor else "max"
    lr, schedule, steps = _learning_rate_schedule(cfg, global_batch, data.steps_per_epoch)

    with strategy.scope():
        model, frozen = build_training_model(
            cfg, class_names=data.class_names, preprocessing=pre, schedule=schedule,
            restoring=start.restored_epoch is not None, load_from=start.last if start.from_last else None)
    if multiworker:
        prepare_multiworker_model(model, strategy, frames=pre["num_frames"], crop=pre["train_crop"])

    derived = {
        "num_replicas": replicas, "num_workers": run.num_workers, "strategy": strategy_display_name(cfg, strategy),
        "global_batch_size": global_batch, "learning_rate": lr, "steps_per_epoch": data.steps_per_epoch,
        "total_steps": steps["total"], "warmup_steps": steps["warmup"], "num_classes": len(data.class_names),
        "num_training_clips": data.num_examples, "mixed_precision_policy": policy or "float32",
        "frozen_layers": len(frozen), "trainable_params": trainable_parameter_count(model), "monitor": monitor,
    }
    write_run_files(paths, class_names=data.class_names, settings={k: cfg[k] for k in DEFAULTS}, derived=derived,
                    restored_epoch=start.restored_epoch)
    best_so_far = best_logged_value(read_log(paths.csv), monitor, mode)
    _print_summary(verbose, cfg, run, data.class_names, derived, frozen)
    if start.restored_epoch is not None:
        source = start.last if start.from_last else paths.backup
        _say(verbose, f"Resuming at epoch {start.restored_epoch + 1}/{cfg['epochs']} from the state after epoch "
                      f"{start.restored_epoch} ({source}).")

    run_cbs = run_callbacks(paths, monitor=monitor, mode=mode, best_so_far=best_so_far,
                            backup_freq=cfg["backup_freq"], extra=callbacks)
    fit = _fit(model, data, cfg, run_cbs, verbose=verbose, run_dir=paths.output_dir,
               initial_epoch=start.restored_epoch if start.from_last else 0)
    return _finish(model, fit, cfg, run, start, data.class_names, derived, monitor, verbose)


def _learning_rate_schedule(cfg, global_batch, steps_per_epoch):
    """(scaled base LR, schedule, {"total": steps, "warmup": steps}) of a run."""
    lr = scaled_learning_rate(cfg["lr"], global_batch_size=global_batch, lr_base_batch_size=cfg["lr_base_batch_size"],
                              per_replica_batch_size=cfg["batch_size"])
    total_steps = cfg["epochs"] * steps_per_epoch
    warmup_steps = int(round(cfg["warmup_epochs"] * steps_per_epoch))
    schedule = make_lr_schedule(lr=lr, schedule=cfg["schedule"], total_steps=total_steps, lr_steps=cfg["lr_steps"],
                                lr_factors=cfg["lr_factors"], warmup_steps=warmup_steps,
                                warmup_start_factor=cfg["warmup_start_factor"])
    return lr, schedule, {"total": total_steps, "warmup": warmup_steps}


def _print_summary(verbose, cfg, run, class_names, derived, frozen):
    """The lines a run prints at its start: model, classes, where everything is written, replicas and schedule."""
    paths = run.paths
    lr, global_batch = derived["learning_rate"], derived["global_batch_size"]
    role = "" if run.is_chief else f" (worker {run.task_id}: temporary files, removed at the end)"
    lr_rule = (f"{cfg['lr']} x {global_batch}/{cfg['lr_base_batch_size'] or cfg['batch_size']} = {lr:g}"
               if lr != cfg["lr"] else f"{lr:g}")
    policy = derived["mixed_precision_policy"]
    _say(verbose,
         f"nonlocal_zoo finetune: {cfg['model']} (weights={cfg['weights']}) -> {len(class_names)} classes: "
         f"{', '.join(class_names[:8])}{' ...' if len(class_names) > 8 else ''}",
         f"  output dir:   {paths.output_dir}{role}",
         f"  class map:    {paths.class_names}",
         f"  settings:     {paths.config}",
         f"  checkpoints:  {paths.best} (best {derived['monitor']}), {paths.last}",
         f"  TensorBoard:  {paths.logs}   (tensorboard --logdir {paths.logs})",
         f"  CSV log:      {paths.csv}",
         f"  backup:       {paths.backup}   (continue an interrupted run with --resume)",
         f"  replicas:     {derived['num_replicas']} ({derived['strategy']}, {run.num_workers} worker(s)); batch "
         f"{cfg['batch_size']} per replica, global {global_batch}; lr {lr_rule} ({cfg['schedule']} schedule, "
         f"{derived['total_steps']} steps)",
         f"  frozen:       {'conv1..' + cfg['freeze_stages'] if frozen else 'nothing'} ({len(frozen)} layers)"
         f"; mixed precision: {'off' if policy == 'float32' else policy}; sync BN: {cfg['sync_bn']}")
    if cfg["cluster"] == "slurm":
        _say(verbose, f"  cluster:      Slurm task {run.task_id} of {run.num_workers} (TF_CONFIG "
                      f"{os.environ.get('TF_CONFIG')}; CUDA_VISIBLE_DEVICES="
                      f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r})")


def _fit(model, data, cfg, callbacks, *, verbose, run_dir, initial_epoch):
    """`model.fit` over the run's epochs; an interrupt prints how to resume."""
    try:
        with warnings.catch_warnings():
            # The validation set's length is unknown to tf.data (undecodable clips are dropped); Keras learns it
            # by running out of data once, which is expected (the training set repeats).
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            return model.fit(data.train, epochs=cfg["epochs"], steps_per_epoch=data.steps_per_epoch,
                             validation_data=data.val, validation_steps=cfg["validation_steps"], callbacks=callbacks,
                             verbose=1 if verbose == "auto" else verbose, shuffle=False,
                             initial_epoch=initial_epoch)
    except KeyboardInterrupt:
        _say(verbose, f"\nInterrupted. Continue with: nonlocal-zoo finetune --output {run_dir} --resume")
        raise


def _finish(model, fit, cfg, run, start, class_names, derived, monitor, verbose):
    """Report, remove a worker's temporary folder, and return the `FinetuneResult` (chief's paths)."""
    paths = run.paths
    rows = read_log(paths.csv)
    if run.is_chief:
        write_preset(paths)
    _say(verbose, f"Done: {len(rows)} epochs. Best ({monitor}): {paths.best}; last: {paths.last}; "
                  f"logs: {paths.logs}; class map: {paths.class_names}",
         f"The run folder is a model preset (the best checkpoint): nonlocal-zoo classify VIDEO --model "
         f"{paths.output_dir}")
    if not run.is_chief:
        leave_worker_folder(paths.output_dir)
    history = history_from_log(rows) if rows else dict(fit.history)
    root = cfg["output_dir"]
    chief = RunPaths(root)
    return FinetuneResult(model, history, root, chief.best, chief.last, chief.logs, chief.csv, chief.class_names,
                          chief.config, class_names, start.restored_epoch or 0, {**cfg, "derived": derived})

"""The input pipelines of a fine-tuning run: training clips (sharded per worker in multi-worker runs), validation
clips, class names and the number of steps per epoch.

Example:
    >>> data = training_data(cfg, strategy=strategy, preprocessing=pre, global_batch=16, multiworker=False)
    >>> data.class_names, data.steps_per_epoch
"""
import dataclasses
import os

from nonlocal_zoo.training.distribute import shard_by_data


def is_file_source(source):
    """Whether `source` is a folder or CSV/list file (not a `"tfds:<name>"` dataset)."""
    return isinstance(source, (str, os.PathLike)) and not os.fspath(source).startswith("tfds:")


@dataclasses.dataclass
class TrainingData:
    """The data of a run.

    Attributes:
        train: the repeated training dataset (or distributed dataset) of global batches.
        val: the validation dataset, or None.
        class_names: class names in label order.
        num_examples: training clips per pass (None when unknown).
        steps_per_epoch: optimizer steps per epoch.
    """

    train: object
    val: object
    class_names: list
    num_examples: object
    steps_per_epoch: int


def check_training_source(data, *, split=None, decode_options=None, max_probes=None):
    """Refuse a training set that cannot train a classifier, before any TensorFlow work.

    A folder or list file must name at least two classes, every class must have clips, and at least one clip must
    decode (probed in listing order until one does: one frame is read). TFDS datasets are checked by TFDS.

    Args:
        data: the `data` setting (folder, list file or `"tfds:<name>"`).
        split: the split sub-folder.
        decode_options: decoder options for the probe.
        max_probes: stop after this many undecodable clips (None: try every clip until one decodes).

    Returns:
        The `ClipList`, or None for a TFDS source.

    Raises:
        ValueError: naming the data, the empty classes or the decode errors.

    Example:
        >>> check_training_source("my_clips", split="train").class_names
    """
    if not is_file_source(data):
        return None
    from nonlocal_zoo.data import read_frames_for
    from nonlocal_zoo.data.pipeline import clip_list

    clips = clip_list(data, split=split)
    names = clips.class_names or [str(i) for i in range(max(clips.labels) + 1)]
    where = f"{os.fspath(data)!r}" + (f" (split {split!r})" if split else "")
    if len(names) < 2:
        raise ValueError(f"Fine-tuning needs at least 2 classes; {where} has {len(names)}: {names}. Add a folder "
                         "of clips per class.")
    counts = [0] * len(names)
    for label in clips.labels:
        counts[label] += 1
    empty = [name for name, n in zip(names, counts) if n == 0]
    if empty:
        raise ValueError(f"Class folder(s) of {where} without any video file: {empty}. Remove them or add clips.")
    errors = []
    for path in clips.paths[:max_probes] if max_probes else clips.paths:
        try:
            read_frames_for(path, lambda num_frames: [0], **(decode_options or {}))
            return clips
        except (ValueError, OSError) as error:  # VideoDecodeError is a ValueError
            errors.append(f"{path}: {getattr(error, 'reason', None) or error}")
    raise ValueError(f"None of the {len(errors)} clips of {where} could be decoded, e.g. {errors[:3]}")


def training_data(cfg, *, strategy, preprocessing, global_batch, multiworker):
    """Build the training and validation pipelines of a resolved config.

    Args:
        cfg: resolved settings (`data`, `split`, `val_data`, `val_split`, `seed`, `num_parallel_calls`, `on_error`,
            `steps_per_epoch`).
        strategy: the run's `tf.distribute` strategy.
        preprocessing: the resolved preprocessing dict.
        global_batch: clips per optimizer step over all replicas.
        multiworker: whether several workers train together (each decodes only its share of the clips).

    Returns:
        A `TrainingData`.

    Raises:
        ValueError: no class names, an unknown number of clips without `steps_per_epoch`, or a worker without clips.

    Example:
        >>> data = training_data(cfg, strategy=strategy, preprocessing=pre, global_batch=8, multiworker=False)
    """
    common = dict(preset=preprocessing, num_parallel_calls=cfg["num_parallel_calls"], on_error=cfg["on_error"])
    train, class_names, num_examples = _training_dataset(cfg, strategy, common, global_batch, multiworker)
    class_names = [str(c) for c in class_names]
    steps_per_epoch = cfg["steps_per_epoch"]
    if steps_per_epoch is None:
        if not num_examples:
            raise ValueError(f"The number of training clips of {cfg['data']!r} is unknown; set steps_per_epoch.")
        steps_per_epoch = max(1, num_examples // global_batch)
    val = _validation_dataset(cfg, common, global_batch, multiworker, class_names)
    return TrainingData(train, val, class_names, num_examples, steps_per_epoch)


def _training_dataset(cfg, strategy, common, global_batch, multiworker):
    """(dataset, class names, clips per pass) of the training data."""
    from nonlocal_zoo.data import make_dataset
    from nonlocal_zoo.data.pipeline import clip_list

    if is_file_source(cfg["data"]):
        clips = clip_list(cfg["data"], split=cfg["split"])
        class_names = clips.class_names or [str(i) for i in range(max(clips.labels) + 1)]
        if multiworker:
            dataset = _sharded_clip_dataset(cfg, strategy, clips, class_names, common, global_batch)
        else:
            dataset = make_dataset(clips, split=cfg["split"], training=True, batch_size=global_batch,
                                   seed=cfg["seed"], repeat=True, **common)
        return dataset, class_names, len(clips)
    dataset = make_dataset(cfg["data"], split=cfg["split"], training=True, batch_size=global_batch, seed=cfg["seed"],
                           repeat=True, **common)
    if dataset.class_names is None:
        raise ValueError(f"The training data has no class names (needs a ClassLabel 'label' feature). "
                         f"Received: data={cfg['data']!r}")
    class_names, num_examples = dataset.class_names, dataset.decode_report.num_per_pass
    if multiworker:
        dataset = shard_by_data(dataset)
    return dataset, class_names, num_examples


def _sharded_clip_dataset(cfg, strategy, clips, class_names, common, global_batch):
    """Each worker decodes only its shard of the clips, in per-replica batches; repeated, so every worker runs the
    same number of steps."""
    from nonlocal_zoo.data import ClipList, make_dataset

    def dataset_fn(context):
        index, count = context.input_pipeline_id, context.num_input_pipelines
        shard = ClipList(clips.paths[index::count], clips.labels[index::count], class_names)
        if not len(shard):
            raise ValueError(f"Worker {index} has no training clips: {len(clips)} clips for {count} workers.")
        return make_dataset(shard, training=True, batch_size=context.get_per_replica_batch_size(global_batch),
                            seed=None if cfg["seed"] is None else cfg["seed"] + index, repeat=True, **common)

    return strategy.distribute_datasets_from_function(dataset_fn)


def _validation_dataset(cfg, common, global_batch, multiworker, class_names):
    """The validation dataset (`val_data`, or the `val_split` of `data`), or None."""
    from nonlocal_zoo.data import make_dataset

    source = cfg["val_data"] or (cfg["data"] if cfg["val_split"] else None)
    if source is None:
        return None
    dataset = make_dataset(source, split=cfg["val_split"], training=False, batch_size=global_batch,
                           class_names=class_names if is_file_source(source) else None, **common)
    return shard_by_data(dataset) if multiworker else dataset

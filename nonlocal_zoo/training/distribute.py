"""Distribution of a fine-tuning run: `tf.distribute` strategies by name, this worker's role from `TF_CONFIG`, and
the per-worker input pipeline and Keras fixes of multi-worker training.

Example:
    >>> strategy = get_strategy("mirrored")
    >>> task_type, task_id, num_workers, is_chief = worker_info("multiworker")
"""
import json
import os

from nonlocal_zoo import _compat
from nonlocal_zoo.training.config import STRATEGIES


def worker_info(strategy="none"):
    """`(task_type, task_id, num_workers, is_chief)` of this process, read from `TF_CONFIG` for "multiworker".

    Args:
        strategy: the `strategy` setting; other than `"multiworker"` (or without `TF_CONFIG`) this process is the
            only worker and the chief.

    Raises:
        ValueError: `TF_CONFIG` is not JSON with `cluster` and `task`.

    Example:
        >>> worker_info("none")
        (None, 0, 1, True)
    """
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


def prepare_multiworker_model(model, strategy, *, frames, crop):
    """Apply the Keras fixes multi-worker `fit` needs (keras-team/keras#20585) to a compiled model.

    See `nonlocal_zoo._compat.patch_model_for_multiworker`; the example batch is one local clip of `frames` x
    `crop` x `crop`.
    """
    import tensorflow as tf

    example = (tf.zeros((1, frames, crop, crop, 3)), tf.zeros((1,), tf.int32))
    return _compat.patch_model_for_multiworker(model, strategy, example)


def shard_by_data(dataset):
    """`dataset` with the DATA auto-shard policy: each worker reads every file and keeps its share of the elements."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def strategy_display_name(cfg, strategy):
    """`"none"`, `"MirroredStrategy"`, `"MultiWorkerMirroredStrategy"` or the class of a custom strategy."""
    return {"none": "none", "mirrored": "MirroredStrategy",
            "multiworker": "MultiWorkerMirroredStrategy"}.get(cfg["strategy"], type(strategy).__name__)


def strategy_setting(strategy):
    """The `strategy` setting of a `tf.distribute.Strategy` object passed to `finetune`."""
    import tensorflow as tf

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "multiworker"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "mirrored"
    return "custom"

"""Distribution of a fine-tuning run: `tf.distribute` strategies by name, this worker's role from `TF_CONFIG`
(written from the Slurm job step with `cluster="slurm"`), and the per-worker input pipeline and Keras fixes of
multi-worker training.

Example:
    >>> configure_cluster({"strategy": "multiworker", "cluster": "slurm", "port_base": None, "gpus_per_task": None})
    >>> strategy = get_strategy("multiworker")
    >>> task_type, task_id, num_workers, is_chief = worker_info("multiworker")
"""
import json
import os
import re
import shutil
import subprocess

from nonlocal_zoo import _compat
from nonlocal_zoo.training.config import STRATEGIES


# What `tf.distribute.cluster_resolver.SlurmClusterResolver` reads: set by `srun` in each task of a job step.
SLURM_STEP_VARIABLES = ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE")
# Default first port of a node's workers: PORT_BASE + 16 * (SLURM_JOB_ID % 1000), so two jobs sharing a node use
# different ports (windows of 16 ports, below Linux's ephemeral range 32768-60999).
PORT_BASE, PORT_WINDOW, PORT_WINDOWS = 15000, 16, 1000
# How long the coordination service waits for a worker's heartbeat before it aborts the whole job. TensorFlow's
# default (10 s) aborted healthy CPU jobs on a loaded 2-core machine, whose heartbeat threads were starved by the
# training threads ("Task /job:worker/... heartbeat timeout"); a dead worker is still detected within a minute.
HEARTBEAT_TIMEOUT_S = 60


def slurm_port_base():
    """The default first port of the workers on a node: from `SLURM_JOB_ID` (the same in every task of a job).

    Example:
        >>> os.environ["SLURM_JOB_ID"] = "4242"
        >>> slurm_port_base()
        18872
    """
    job = os.environ.get("SLURM_JOB_ID", "")
    return PORT_BASE + PORT_WINDOW * (int(job) % PORT_WINDOWS) if job.isdigit() else PORT_BASE


def _tasks_per_node(text):
    """`"2(x3),1"` -> `[2, 2, 2, 1]` (Slurm's compressed tasks-per-node list)."""
    counts = []
    for part in text.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if match is None:
            raise ValueError(f"SLURM_STEP_TASKS_PER_NODE is not a Slurm tasks-per-node list such as '2(x3),1'. "
                             f"Received: {text!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def _visible_gpus():
    """The GPU ids this task may use: `CUDA_VISIBLE_DEVICES` when set (Slurm sets it for GPU jobs), else the GPUs
    `nvidia-smi -L` lists, else none."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [g.strip() for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, _ in enumerate(line for line in listed.splitlines() if line.startswith("GPU "))]


def _task_gpus(gpus_per_task, max_tasks_per_node):
    """(GPUs per task, the `CUDA_VISIBLE_DEVICES` of this task or None to leave it) from the visible GPUs."""
    visible = _visible_gpus()
    if gpus_per_task is None:
        given = os.environ.get("SLURM_GPUS_PER_TASK", "").rsplit(":", 1)[-1]  # "2" or "a100:2"
        gpus_per_task = int(given) if given.isdigit() else len(visible) // max_tasks_per_node
        if visible and gpus_per_task == 0:
            raise ValueError(f"{max_tasks_per_node} tasks per node share {len(visible)} GPU(s) "
                             f"(CUDA_VISIBLE_DEVICES={','.join(visible)}): start at most one task per GPU "
                             "(srun --ntasks-per-node), or pass --gpus-per-task 0 to train on the CPUs")
    if gpus_per_task == 0:
        return 0, "" if visible else None
    if len(visible) == gpus_per_task:  # Slurm bound the GPUs to the task already (e.g. srun --gpus-per-task)
        return gpus_per_task, None
    if len(visible) < gpus_per_task * max_tasks_per_node:
        raise ValueError(f"{max_tasks_per_node} tasks per node x {gpus_per_task} GPU(s) per task need more GPUs "
                         f"than this task sees ({len(visible)}: CUDA_VISIBLE_DEVICES="
                         f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}); check --gpus-per-task and the "
                         "job's --gpus-per-node / --gres")
    local = os.environ.get("SLURM_LOCALID", "")
    if not local.isdigit():
        raise ValueError(f"SLURM_LOCALID (this task's index on its node) is needed to give each task its GPUs. "
                         f"Received: SLURM_LOCALID={local!r}")
    first = int(local) * gpus_per_task
    return gpus_per_task, ",".join(visible[first:first + gpus_per_task])


def slurm_cluster(*, port_base=None, gpus_per_task=None):
    """This Slurm task's `TF_CONFIG` (built by `tf.distribute.cluster_resolver.SlurmClusterResolver`) and GPUs.

    Every task of the job step (`srun`) is one worker: task `SLURM_PROCID` is worker `SLURM_PROCID`, task 0 is the
    chief; the workers of a node listen on `port_base`, `port_base + 1`, ... Each task gets `gpus_per_task` of
    the GPUs it sees, picked by its index on the node (`SLURM_LOCALID`), unless Slurm bound them already.

    Args:
        port_base: first port of each node's workers (default `slurm_port_base()`: from `SLURM_JOB_ID`).
        gpus_per_task: GPUs of each worker; 0 trains on the CPUs (default: `SLURM_GPUS_PER_TASK`, else the GPUs
            this task sees divided by the most tasks on a node).

    Returns:
        `(tf_config, cuda_visible_devices)`: the `TF_CONFIG` dict, and the `CUDA_VISIBLE_DEVICES` value this task
        must use (`None`: leave it as it is).

    Raises:
        ValueError: outside a Slurm job step (the missing variables are named), unreadable Slurm variables, more
            GPUs asked for than the node has, or a task that Slurm placed elsewhere than the cluster spec says.

    Example:
        >>> tf_config, gpus = slurm_cluster(port_base=15000)   # in task 1 of `srun -N 2 --ntasks-per-node 2 ...`
        >>> tf_config
        {'cluster': {'worker': ['n1:15000', 'n1:15001', 'n2:15000', 'n2:15001']}, 'task': {'type': 'worker', 'index': 1}}
    """
    missing = [name for name in SLURM_STEP_VARIABLES if not os.environ.get(name)]
    if missing:
        hint = ("this process is in Slurm job " + os.environ["SLURM_JOB_ID"] + " but not in a job step: start one "
                "worker per task with `srun nonlocal-zoo finetune ...`" if os.environ.get("SLURM_JOB_ID") else
                "run it inside a Slurm allocation with `srun` (sbatch script or salloc), one task per worker")
        raise ValueError(f"--cluster slurm needs the Slurm job-step variables {', '.join(missing)} (missing): {hint}")
    counts = _tasks_per_node(os.environ["SLURM_STEP_TASKS_PER_NODE"])
    gpus, cuda_devices = _task_gpus(gpus_per_task, max(counts))
    port_base = slurm_port_base() if port_base is None else port_base

    import tensorflow as tf

    try:
        # GPUs are assigned above (auto_set_gpu=False): the resolver would count them with nvidia-smi and number
        # them from 0; its GPU counts (at least 1: it steps a range by them) only feed that assignment.
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(
            port_base=port_base, gpus_per_node=max(gpus, 1) * max(counts), gpus_per_task=max(gpus, 1),
            auto_set_gpu=False)
        cluster = resolver.cluster_spec().as_dict()
        task_type, task_id = resolver.get_task_info()
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"The Slurm job step's variables do not describe a cluster: {e} (" + ", ".join(
            f"{name}={os.environ[name]!r}" for name in SLURM_STEP_VARIABLES) + ")") from None
    if task_type is None:
        raise ValueError(f"SLURM_PROCID={os.environ['SLURM_PROCID']!r} is not one of the job step's "
                         f"{os.environ['SLURM_STEP_NUM_TASKS']} tasks")
    _check_placement(cluster[task_type][task_id], port_base)
    return {"cluster": cluster, "task": {"type": task_type, "index": task_id}}, cuda_devices


def _check_placement(address, port_base):
    """Fail (instead of hanging) when Slurm started this task elsewhere than the cluster spec's `address`: the
    resolver puts tasks on the nodes in sorted order, `SLURM_STEP_TASKS_PER_NODE` at a time (block distribution)."""
    host, port = address.rsplit(":", 1)
    node, local = os.environ.get("SLURMD_NODENAME"), os.environ.get("SLURM_LOCALID", "")
    wrong_node = node is not None and node != host
    wrong_port = local.isdigit() and int(port) != port_base + int(local)
    if wrong_node or wrong_port:
        raise ValueError(f"Slurm started task {os.environ['SLURM_PROCID']} on node {node!r} as its task "
                         f"{local or '?'}, but the cluster spec places it at {address}: nonlocal-zoo needs tasks "
                         "handed out node by node in sorted node order (srun --distribution=block, the default)")


def configure_cluster(cfg):
    """Write `TF_CONFIG` (and this task's `CUDA_VISIBLE_DEVICES`) for `cluster="slurm"`; other settings: nothing.

    Must run before TensorFlow uses a device. Returns the `TF_CONFIG` dict written, or None.

    Example:
        >>> configure_cluster({"strategy": "multiworker", "cluster": "slurm", "port_base": 15000,
        ...                    "gpus_per_task": 0})["task"]
        {'type': 'worker', 'index': 0}
    """
    if cfg.get("cluster") != "slurm":
        return None
    tf_config, cuda_devices = slurm_cluster(port_base=cfg.get("port_base"), gpus_per_task=cfg.get("gpus_per_task"))
    os.environ["TF_CONFIG"] = json.dumps(tf_config)
    if cuda_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_devices
    return tf_config


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
            configure_coordination_service()
            _STRATEGIES[name] = tf.distribute.MultiWorkerMirroredStrategy()
    return _STRATEGIES[name]


def configure_coordination_service(heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S):
    """Configure TensorFlow's coordination service for the `TF_CONFIG` cluster, as `MultiWorkerMirroredStrategy`
    would, but with a heartbeat timeout of `heartbeat_timeout_s` instead of TensorFlow's 10 s.

    The strategy configures the service itself only when nothing has; so this must run before it is created (and
    before TensorFlow's context is initialized). Does nothing without `TF_CONFIG`, when the service is already
    configured, or when this TensorFlow lacks the (private) `context.configure_coordination_service`: the strategy
    then keeps TensorFlow's defaults. Returns the `CoordinationServiceConfig` set, or None.

    Args:
        heartbeat_timeout_s: seconds without a heartbeat from a worker after which the job is aborted.

    Example:
        >>> configure_coordination_service(120).heartbeat_timeout_in_ms
        120000
    """
    if not os.environ.get("TF_CONFIG"):
        return None
    import tensorflow as tf
    from tensorflow.python.distribute import collective_all_reduce_strategy
    from tensorflow.python.eager import context

    # the protobuf module wherever this TensorFlow keeps it: the one its strategy uses
    coordination_config_pb2 = getattr(collective_all_reduce_strategy, "coordination_config_pb2", None)
    ctx = context.context()
    if (coordination_config_pb2 is None or not hasattr(ctx, "configure_coordination_service")
            or ctx.coordination_service is not None):
        return None
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    spec = resolver.cluster_spec()
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=spec.num_tasks(job))
            for job in ("chief", "worker") if job in spec.jobs]
    if not jobs or "ps" in spec.jobs or resolver.task_type not in ("chief", "worker"):
        return None  # not a cluster whose service the strategy would configure
    # The leader TensorFlow picks (multi_worker_util.coordination_leader): the chief if there is one, else worker 0.
    leader = f"/job:{jobs[0].name}/replica:0/task:0"
    ctx.configure_coordination_service(service_type="standalone", service_leader=leader, coordinated_jobs=jobs,
                                       heartbeat_timeout_in_ms=int(heartbeat_timeout_s * 1000))
    return ctx.coordination_service


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

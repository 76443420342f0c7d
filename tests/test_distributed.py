"""Distributed fine-tuning on this machine: MirroredStrategy over two logical CPU devices (a subprocess) and
MultiWorkerMirroredStrategy with two worker processes on 127.0.0.1 (TF_CONFIG); both with synchronized BatchNorm.

Each run is a real `finetune` of the tiny recipe; the two must report 2 replicas, the global batch and the linearly
scaled learning rate, and write the same kind of checkpoints.
"""
import json
import os
import re
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import yaml

from nonlocal_zoo import training
from tests.test_training import TINY, subprocess_env, write_colour_clips

PER_REPLICA_BATCH, BASE_BATCH, LR, EPOCHS = 2, 2, 0.1, 2
RUN_ARGS = ["--config", TINY, "--epochs", str(EPOCHS), "--batch-size", str(PER_REPLICA_BATCH), "--lr", str(LR),
            "--lr-base-batch-size", str(BASE_BATCH), "--sync-bn", "--verbose", "2"]

MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    from nonlocal_zoo.cli import finetune_main as main
    from nonlocal_zoo.training import convert_to_sync_batchnorm, get_strategy

    status = main(sys.argv[2:])

    # synchronized BN: batch statistics over the global batch, not per replica
    strategy = get_strategy("mirrored")
    x = np.concatenate([np.random.default_rng(0).normal(0.0, 1.0, (4, 3)),
                        np.random.default_rng(1).normal(10.0, 1.0, (4, 3))]).astype("float32")
    variances = {}
    for sync in (True, False):
        with strategy.scope():
            inputs = keras.Input((3,))
            model = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.0)(inputs))
            if sync:
                model = convert_to_sync_batchnorm(model)
            model.compile(keras.optimizers.SGD(0.0), loss="mse")
        model.fit(x, x, batch_size=8, epochs=1, verbose=0, shuffle=False)
        variances[str(sync)] = keras.ops.convert_to_numpy(model.layers[-1].moving_variance).tolist()
    with open(sys.argv[1], "w") as f:
        json.dump({"replicas": strategy.num_replicas_in_sync, "x": x.tolist(), "variances": variances}, f)
    sys.exit(status)
""")


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Training clips (12) and validation clips (6, passed with --val)."""
    root = tmp_path_factory.mktemp("dist")
    return write_colour_clips(root / "train", 4, seed=0), write_colour_clips(root / "val", 2, seed=1)


@pytest.fixture(scope="module")
def mirrored_run(tmp_path_factory, clips):
    tmp = tmp_path_factory.mktemp("mirrored")
    script, report, out = tmp / "mirrored.py", tmp / "report.json", tmp / "run"
    script.write_text(MIRRORED_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(report), clips[0], "--val", clips[1], "--strategy",
                           "mirrored", "--output", str(out), *RUN_ARGS], env=subprocess_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(report) as f:
        return {"out": out, "stdout": done.stdout, "report": json.load(f)}


@pytest.fixture(scope="module")
def multiworker_run(tmp_path_factory, clips):
    tmp = tmp_path_factory.mktemp("multiworker")
    out = tmp / "run"
    ports = _free_ports(2)
    workers = []
    for index in range(2):
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                     "task": {"type": "worker", "index": index}}
        command = [sys.executable, "-m", "nonlocal_zoo.cli", "finetune", clips[0], "--val", clips[1], "--strategy",
                   "multiworker", "--output", str(out), *RUN_ARGS]
        workers.append((command, dict(subprocess_env(), TF_CONFIG=json.dumps(tf_config)), tmp / f"worker{index}.log"))
    return {"out": out, "outputs": run_workers(workers, timeout=600)}


def run_workers(workers, *, timeout):
    """Start one process per `(command, env, log_path)` at once (they train together), wait for all, kill any left
    over; asserts every process exited 0 (showing the tail of each log otherwise) and returns the logs' texts."""
    procs, logs = [], []
    for command, env, log_path in workers:
        logs.append(open(log_path, "w+"))
        procs.append(subprocess.Popen(command, env=env, stdout=logs[-1], stderr=subprocess.STDOUT, text=True))
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    assert codes == [0] * len(procs), "\n=====\n".join(o[-3000:] for o in outputs)
    return outputs


def _derived(out):
    with open(out / "run_config.yaml") as f:
        return yaml.safe_load(f)["derived"]


def _checkpoint_kind(out):
    """Files of the run and, per checkpoint, its classes and (variable path, shape) list and sync-BN flags."""
    files = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs
                   if not f.startswith("events."))
    kinds = {}
    for name in ("best.keras", "last.keras"):
        model = training.load_checkpoint(out / "checkpoints" / name)
        bn = [layer.get_config()["synchronized"] for layer in model.layers
              if isinstance(layer, keras.layers.BatchNormalization)]  # the folding BatchNormalization subclass too
        kinds[name] = {"variables": [(v.path, tuple(v.shape)) for v in model.weights],
                       "outputs": model.output.shape[-1], "sync_bn": bool(bn) and all(bn)}
    return files, kinds


def _check_scaling(derived, num_workers):
    assert derived["num_replicas"] == 2 and derived["num_workers"] == num_workers
    assert derived["global_batch_size"] == 2 * PER_REPLICA_BATCH
    assert derived["learning_rate"] == pytest.approx(LR * 2 * PER_REPLICA_BATCH / BASE_BATCH)
    assert derived["steps_per_epoch"] == 12 // (2 * PER_REPLICA_BATCH)


def test_mirrored_two_logical_cpus(mirrored_run):
    out = mirrored_run["out"]
    derived = _derived(out)
    assert derived["strategy"] == "MirroredStrategy"
    _check_scaling(derived, num_workers=1)
    rows = training.read_log(str(out / "training_log.csv"))
    assert [r["epoch"] for r in rows] == list(range(EPOCHS)) and all(np.isfinite(r["loss"]) for r in rows)
    assert all(0 <= r["val_accuracy"] <= 1 for r in rows) and derived["monitor"] == "val_accuracy"
    assert "replicas:     2 (MirroredStrategy" in mirrored_run["stdout"]

    report = mirrored_run["report"]
    assert report["replicas"] == 2
    x = np.asarray(report["x"])
    global_var = x.var(axis=0)  # biased variance over the global batch of 8 (momentum 0: moving = batch value)
    np.testing.assert_allclose(report["variances"]["True"], global_var, rtol=1e-4)
    # without synchronization each replica sees half the batch: the variances miss the between-half spread
    assert np.all(np.asarray(report["variances"]["False"]) < 0.5 * global_var)


def test_multiworker_two_processes(multiworker_run):
    out = multiworker_run["out"]
    derived = _derived(out)
    assert derived["strategy"] == "MultiWorkerMirroredStrategy"
    _check_scaling(derived, num_workers=2)
    rows = training.read_log(str(out / "training_log.csv"))
    assert [r["epoch"] for r in rows] == list(range(EPOCHS)) and all(np.isfinite(r["loss"]) for r in rows)
    assert all(0 <= r["val_accuracy"] <= 1 for r in rows)
    # both workers log the same metrics: means over all replicas of all workers (validation: each worker evaluates
    # its shard of the 6 clips)
    for metric in ("loss", "val_loss", "val_accuracy"):
        values = [re.findall(rf" {metric}: ([0-9.e+-]+)", o) for o in multiworker_run["outputs"]]
        assert len(values[0]) == EPOCHS and values[0] == values[1], metric
    assert not (out / "workers").exists()  # the second worker's temporary files are gone


def test_both_modes_write_the_same_kind_of_checkpoints(mirrored_run, multiworker_run):
    files_m, kinds_m = _checkpoint_kind(mirrored_run["out"])
    files_w, kinds_w = _checkpoint_kind(multiworker_run["out"])
    assert files_m == files_w
    assert {"checkpoints/best.keras", "checkpoints/last.keras", "class_names.txt", "run_config.yaml",
            "training_log.csv"} <= set(files_m)
    for run in (mirrored_run, multiworker_run):
        logs = run["out"] / "logs"
        assert os.listdir(logs / "train") and os.listdir(logs / "validation")
    assert kinds_m == kinds_w
    assert kinds_m["last.keras"]["outputs"] == 3 and kinds_m["last.keras"]["sync_bn"]


COORDINATION_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from tensorflow.python.distribute import multi_worker_util
    import tensorflow as tf
    from nonlocal_zoo.training import distribute

    out = []
    for cluster in json.loads(sys.argv[1]):
        os.environ["TF_CONFIG"] = json.dumps(cluster)
        from tensorflow.python.eager import context
        context.context()._coordination_service_config = None  # a fresh process per cluster, in effect
        config = distribute.configure_coordination_service(distribute.HEARTBEAT_TIMEOUT_S)
        spec = tf.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec()
        out.append(None if config is None else {
            "heartbeat_ms": config.heartbeat_timeout_in_ms, "leader": config.service_leader,
            "tf_leader": tf.DeviceSpec.from_string(multi_worker_util.coordination_leader(spec)).to_string(),
            "jobs": {j.name: j.num_tasks for j in config.coordinated_job_list}})
    print(json.dumps(out))
""")


def test_coordination_service_waits_longer_for_heartbeats():
    """The multi-worker strategy's coordination service, configured before the strategy: TensorFlow's own leader
    and jobs (multi_worker_util), a 60 s heartbeat timeout instead of 10 s; nothing for clusters TensorFlow's
    strategy would not coordinate (parameter servers, an evaluator task)."""
    workers = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    clusters = [{"cluster": workers, "task": {"type": "worker", "index": 1}},
                {"cluster": {"chief": ["127.0.0.1:3"], **workers}, "task": {"type": "worker", "index": 0}},
                {"cluster": {"ps": ["127.0.0.1:4"], **workers}, "task": {"type": "worker", "index": 0}},
                {"cluster": {"evaluator": ["127.0.0.1:5"], **workers}, "task": {"type": "evaluator", "index": 0}}]
    done = subprocess.run([sys.executable, "-c", COORDINATION_SCRIPT, json.dumps(clusters)], env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    plain, chief, ps, evaluator = json.loads(done.stdout.strip().splitlines()[-1])
    assert ps is None and evaluator is None
    for config, jobs in ((plain, {"worker": 2}), (chief, {"chief": 1, "worker": 2})):
        assert config["heartbeat_ms"] == 60_000 and config["jobs"] == jobs
        assert config["leader"] == config["tf_leader"]
    assert plain["leader"] == "/job:worker/replica:0/task:0" and chief["leader"] == "/job:chief/replica:0/task:0"

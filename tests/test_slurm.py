"""`finetune --cluster slurm`: the TF_CONFIG and GPUs of each task of a faked Slurm job step, the errors outside one,
and a real two-task run on this machine (two workers on localhost) that must end with identical weights.

The expected cluster is written out here from the Slurm variables (node names, tasks per node, ports), not computed
with the code under test; the run's reference is the chief's own checkpoint and the other worker's weights.
"""
import json
import os
import socket
import sys
import textwrap

import numpy as np
import pytest
import yaml

from nonlocal_zoo import training
from nonlocal_zoo.cli import add_finetune_arguments, finetune_main, finetune_options
from tests.test_distributed import run_workers
from tests.test_training import TINY, subprocess_env, write_colour_clips

# `srun -N 2 --ntasks-per-node 2` on node001 and node002
STEP = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NODELIST": "node[001-002]",
        "SLURM_STEP_TASKS_PER_NODE": "2(x2)"}
NODES = ["node001", "node002"]


def _workers(nodes, tasks_per_node, port):
    """The worker addresses a block distribution gives: node by node, ports port, port + 1, ... on each."""
    return [f"{node}:{port + i}" for node, count in zip(nodes, tasks_per_node) for i in range(count)]


@pytest.fixture
def slurm(monkeypatch, tmp_path):
    """A clean environment (no SLURM_*, TF_CONFIG, CUDA_VISIBLE_DEVICES, no nvidia-smi); returns a setter."""
    for name in list(os.environ):
        if name.startswith(("SLURM_", "SLURMD_")) or name in ("TF_CONFIG", "CUDA_VISIBLE_DEVICES"):
            monkeypatch.delenv(name)
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + "/usr/bin" + os.pathsep + "/bin")

    def set_task(rank, local, node, **extra):
        for name, value in {**STEP, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(local),
                            "SLURMD_NODENAME": node, **extra}.items():
            monkeypatch.setenv(name, value)
    return set_task


def _cfg(**options):
    return training.resolve_config(cluster="slurm", **options)


@pytest.mark.parametrize("rank", range(4))
def test_tf_config_of_each_task(slurm, rank):
    slurm(rank, rank % 2, NODES[rank // 2])
    written = training.configure_cluster(_cfg(port_base=23456))
    expected = {"cluster": {"worker": _workers(NODES, [2, 2], 23456)}, "task": {"type": "worker", "index": rank}}
    assert written == expected and json.loads(os.environ["TF_CONFIG"]) == expected
    # the existing multi-worker path reads it: worker `rank` of 4, task 0 is the chief (it alone writes the run folder)
    assert training.worker_info("multiworker") == ("worker", rank, 4, rank == 0)
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # no GPUs here: left alone


def test_uneven_tasks_per_node_and_default_port(slurm):
    # 7 tasks: 3 on node001, 2 on node002 and node003; task 4 is node002's second task
    slurm(4, 1, "node002", SLURM_STEP_NUM_TASKS="7", SLURM_STEP_NODELIST="node[001-003]",
          SLURM_STEP_TASKS_PER_NODE="3,2(x2)", SLURM_JOB_ID="1234567")
    port = 15000 + 16 * (1234567 % 1000)  # documented default: 15000 + 16 x (SLURM_JOB_ID % 1000)
    tf_config, _ = training.slurm_cluster()
    assert tf_config == {"cluster": {"worker": _workers(["node001", "node002", "node003"], [3, 2, 2], port)},
                         "task": {"type": "worker", "index": 4}}
    assert tf_config["cluster"]["worker"][4] == f"node002:{port + 1}"


@pytest.mark.parametrize("visible, gpus_per_task, local, expected", [
    ("4,5,6,7", None, 1, "6,7"),   # the job's 4 GPUs of the node, 2 tasks: an even share, by SLURM_LOCALID
    ("4,5,6,7", 1, 1, "5"),        # --gpus-per-task 1
    ("4,5,6,7", 0, 0, ""),         # --gpus-per-task 0: CPUs only, GPUs hidden
    ("0", 1, 1, None),             # Slurm bound one GPU to each task already: left as it is
])
def test_gpus_of_a_task(slurm, monkeypatch, visible, gpus_per_task, local, expected):
    slurm(2 + local, local, "node002")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert training.slurm_cluster(gpus_per_task=gpus_per_task)[1] == expected
    training.configure_cluster(_cfg(gpus_per_task=gpus_per_task))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == (visible if expected is None else expected)


def test_gpus_from_slurm_and_nvidia_smi(slurm, monkeypatch, tmp_path):
    slurm(1, 1, "node001")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    monkeypatch.setenv("SLURM_GPUS_PER_TASK", "a100:1")  # srun --gpus-per-task a100:1: bound by Slurm
    assert training.slurm_cluster()[1] is None
    monkeypatch.delenv("SLURM_GPUS_PER_TASK")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # no CUDA_VISIBLE_DEVICES: the GPUs nvidia-smi lists
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + "".join(f"echo 'GPU {i}: NVIDIA H100 (UUID: GPU-{i})'\n" for i in range(4)))
    smi.chmod(0o755)
    assert training.slurm_cluster()[1] == "2,3"


@pytest.mark.parametrize("visible, gpus_per_task, message", [
    ("0", None, "2 tasks per node share 1 GPU"),
    ("0,1,2", 2, "2 tasks per node x 2 GPU(s) per task need more GPUs than this task sees (3"),
    ("", 1, "need more GPUs than this task sees (0"),
])
def test_too_few_gpus(slurm, monkeypatch, visible, gpus_per_task, message):
    slurm(0, 0, "node001")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        training.slurm_cluster(gpus_per_task=gpus_per_task)


def test_outside_slurm_names_the_missing_variables(slurm, monkeypatch, tmp_path, capsys):
    with pytest.raises(ValueError) as error:
        training.configure_cluster(_cfg())
    text = str(error.value)
    for name in ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE"):
        assert name in text
    assert "TF_CONFIG" not in os.environ
    # inside an allocation (sbatch script) but not in a job step: the hint says srun
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_PROCID", "0")
    with pytest.raises(ValueError, match=r"SLURM_STEP_NUM_TASKS, SLURM_STEP_NODELIST, SLURM_STEP_TASKS_PER_NODE "
                                         r"\(missing\).*job 77 but not in a job step.*srun") as error:
        training.configure_cluster(_cfg())
    assert "SLURM_PROCID" not in str(error.value)
    # the command fails first thing (before looking at the data, which does not exist here), one line, status 2
    status = finetune_main([str(tmp_path / "no_clips"), "--cluster", "slurm", "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("nonlocal-zoo finetune: error: --cluster slurm needs the Slurm job-step "
                                          "variables SLURM_STEP_NUM_TASKS") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_inconsistent_or_misplaced_tasks(slurm, monkeypatch):
    slurm(0, 0, "node001", SLURM_STEP_NUM_TASKS="3")
    with pytest.raises(ValueError, match="do not describe a cluster: Requested 3 tasks but only 4 were assigned"):
        training.slurm_cluster()
    slurm(0, 0, "node001", SLURM_STEP_TASKS_PER_NODE="2(x2")
    with pytest.raises(ValueError, match=r"SLURM_STEP_TASKS_PER_NODE is not a Slurm tasks-per-node list.*'2\(x2'"):
        training.slurm_cluster()
    # cyclic distribution: task 1 runs on node002, but the cluster spec (block) puts worker 1 on node001
    slurm(1, 0, "node002")
    with pytest.raises(ValueError, match=r"task 1 on node 'node002' as its task 0, but the cluster spec places it "
                                         r"at node001:15001.*--distribution=block"):
        training.slurm_cluster(port_base=15000)


def test_settings_and_command_line(tmp_path):
    # YAML key / finetune argument: cluster "slurm" implies the multi-worker strategy
    recipe = tmp_path / "slurm.yaml"
    recipe.write_text("cluster: slurm\nport_base: 20000\ngpus_per_task: 0\n")
    cfg = training.resolve_config(TINY, recipe)
    assert (cfg["strategy"], cfg["cluster"], cfg["port_base"], cfg["gpus_per_task"]) == ("multiworker", "slurm",
                                                                                       20000, 0)
    assert training.resolve_config()["cluster"] == "tf_config"  # today's behaviour without the setting
    assert training.configure_cluster(training.resolve_config(strategy="multiworker")) is None
    with pytest.raises(ValueError, match="needs strategy 'multiworker'.*strategy='mirrored'"):
        training.resolve_config(cluster="slurm", strategy="mirrored")
    assert training.configure_cluster(training.resolve_config(port_base=20000)) is None  # Slurm options only
    with pytest.raises(ValueError, match="`cluster` must be one of"):
        training.resolve_config(cluster="mpi")
    with pytest.raises(ValueError, match="`port_base` must be an integer port"):
        training.resolve_config(cluster="slurm", port_base=80)
    parser = add_finetune_arguments(__import__("argparse").ArgumentParser())
    options = finetune_options(parser.parse_args(["clips", "--cluster", "slurm", "--port-base", "20000",
                                                  "--gpus-per-task", "2"]))
    assert (options["cluster"], options["port_base"], options["gpus_per_task"]) == ("slurm", 20000, 2)
    assert finetune_options(parser.parse_args(["clips"]))["cluster"] is None


# ---- a real job step of two tasks on this machine --------------------------------------------------------------

WORKER_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import keras
    import numpy as np
    from nonlocal_zoo.cli import finetune_main

    class Weights(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.first = [keras.ops.convert_to_numpy(w) for w in self.model.weights]

        def on_train_end(self, logs=None):
            last = [keras.ops.convert_to_numpy(w) for w in self.model.weights]
            np.savez(sys.argv[1] + ".npz", *last)
            self.changed = sum(not np.array_equal(a, b) for a, b in zip(self.first, last))

    weights = Weights()
    weights.changed = None
    status = finetune_main(sys.argv[2:], callbacks=[weights])
    with open(sys.argv[1] + ".json", "w") as f:
        json.dump({"status": status, "TF_CONFIG": os.environ.get("TF_CONFIG"), "changed": weights.changed,
                   "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}, f)
    sys.exit(status)
""")


def _free_port_pair():
    """A port p with p and p + 1 free on this machine (the two workers of the node)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port >= 65000:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


def _job_step(tmp, out, port, tag, args):
    """Run `finetune` in the two tasks of a faked job step (srun -N 1 --ntasks-per-node 2 on "localhost"); returns
    each task's report: TF_CONFIG, CUDA_VISIBLE_DEVICES, final weights, number of weights changed by training."""
    script = tmp / "worker.py"
    script.write_text(WORKER_SCRIPT)
    base = {k: v for k, v in subprocess_env().items() if not k.startswith(("SLURM_", "SLURMD_"))
            and k != "TF_CONFIG"}
    workers = []
    for rank in range(2):
        env = dict(base, SLURM_JOB_ID="99", SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NODEID="0",
                   SLURM_STEP_NUM_TASKS="2", SLURM_STEP_NODELIST="localhost", SLURM_STEP_TASKS_PER_NODE="2",
                   SLURMD_NODENAME="localhost", CUDA_VISIBLE_DEVICES="")
        command = [sys.executable, str(script), str(tmp / f"{tag}{rank}"), *args, "--output", str(out),
                   "--verbose", "2"]
        workers.append((command, env, tmp / f"{tag}{rank}.log"))
    outputs = run_workers(workers, timeout=300)
    reports = []
    for rank in range(2):
        with open(tmp / f"{tag}{rank}.json") as f:
            report = json.load(f)
        report["weights"] = list(np.load(tmp / f"{tag}{rank}.npz").values())
        report["output"] = outputs[rank]
        reports.append(report)
    return reports


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slurm")
    clips = write_colour_clips(tmp / "clips", 2, seed=0)
    out, port = tmp / "run", _free_port_pair()
    reports = _job_step(tmp, out, port, "task", [clips, "--config", TINY, "--cluster", "slurm", "--port-base",
                                                 str(port), "--epochs", "1", "--steps-per-epoch", "1",
                                                 "--batch-size", "2", "--sync-bn"])
    return {"tmp": tmp, "out": out, "port": port, "reports": reports}


def _same_weights(reports, checkpoint):
    """Both workers hold the same weights, and the chief saved exactly them in `checkpoint`."""
    first, second = reports[0]["weights"], reports[1]["weights"]
    assert len(first) == len(second) > 0
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    saved = training.load_checkpoint(checkpoint).weights
    assert len(saved) == len(first)
    for a, w in zip(first, saved):
        np.testing.assert_array_equal(a, np.asarray(w))


def test_two_tasks_train_as_one(slurm_run):
    out, port, reports = slurm_run["out"], slurm_run["port"], slurm_run["reports"]
    workers = [f"localhost:{port}", f"localhost:{port + 1}"]
    for rank, report in enumerate(reports):
        assert json.loads(report["TF_CONFIG"]) == {"cluster": {"worker": workers},
                                                   "task": {"type": "worker", "index": rank}}
        assert report["CUDA_VISIBLE_DEVICES"] == ""
        assert f"cluster:      Slurm task {rank} of 2" in report["output"]
    # one synchronous step: both workers hold the same, changed weights, and the chief saved them (BN moving averages
    # included, thanks to --sync-bn: without it each worker keeps those of its own half of the batch)
    assert reports[0]["changed"] > 0
    _same_weights(reports, out / "checkpoints" / "last.keras")
    # only task 0 (the chief) wrote the run folder; the other worker's temporary folder is gone
    with open(out / "run_config.yaml") as f:
        run_config = yaml.safe_load(f)
    assert run_config["cluster"] == "slurm" and run_config["strategy"] == "multiworker"
    assert run_config["port_base"] == port
    derived = run_config["derived"]
    assert (derived["num_workers"], derived["num_replicas"], derived["strategy"]) == (2, 2,
                                                                                     "MultiWorkerMirroredStrategy")
    assert derived["global_batch_size"] == 4
    assert not (out / "workers").exists()
    assert [r["epoch"] for r in training.read_log(str(out / "training_log.csv"))] == [0]


@pytest.mark.slow
def test_resubmitted_job_resumes(slurm_run):
    """The docs' `sbatch finetune.sbatch --resume` with one more epoch: no data or --cluster given (both come from
    the saved run), new ports; the worker whose folder was removed follows the chief's last checkpoint."""
    tmp, out = slurm_run["tmp"], slurm_run["out"]
    before = training.load_checkpoint(out / "checkpoints" / "last.keras").weights
    before = [np.asarray(w) for w in before]
    port = _free_port_pair()  # a new job: new ports (port_base may differ from the saved run's)
    reports = _job_step(tmp, out, port, "resumed", ["--resume", "--epochs", "2", "--port-base", str(port)])
    for report in reports:
        assert "Resuming at epoch 2/2 from the state after epoch 1" in report["output"]
        assert report["changed"] > 0
    _same_weights(reports, out / "checkpoints" / "last.keras")
    assert [r["epoch"] for r in training.read_log(str(out / "training_log.csv"))] == [0, 1]
    assert not all(np.array_equal(a, b) for a, b in zip(before, reports[0]["weights"]))
    assert not (out / "workers").exists()

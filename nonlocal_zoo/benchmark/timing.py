"""Measuring: interleaved timings (medians of wall and CPU time), thread settings shared by TensorFlow and PyTorch,
peak resident memory, fresh processes for isolated measurements, and the optional PyTorch references.

Peak memory is the growth of the resident set (Linux `VmHWM`, reset through `/proc/self/clear_refs`) of a process over
its size before the measured calls; TensorFlow allocations are invisible to `tracemalloc`.

Example:
    >>> time_interleaved({"a": lambda: sum(range(1000))}, warmup=1, repeats=3)["a"]["runs"]
    3
"""
import contextlib
import json
import os
import subprocess
import sys
import time

import numpy as np


def median(values):
    """The median of `values` as a float (NaN for none)."""
    return float(np.median(values)) if values else float("nan")


def wall_time(fn):
    """Wall seconds of one call of `fn`."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def time_interleaved(fns, *, warmup, repeats):
    """Time callables one call of each in turn; returns `{name: {"median_s", "min_s", "cpu_median_s", "runs"}}`.

    Args:
        fns: `{name: callable}`; each call must finish its work before returning (convert results to numpy).
        warmup: untimed calls of each first (tracing, XLA compilation, allocator warm-up).
        repeats: timed rounds.

    Example:
        >>> time_interleaved({"a": lambda: sum(range(1000))}, warmup=1, repeats=3)["a"]["runs"]
        3
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {
        name: {"median_s": median(wall[name]), "min_s": float(min(wall[name])), "cpu_median_s": median(cpu[name]),
               "runs": len(wall[name])}
        for name in fns
    }


def import_torch():
    """`torch`, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def import_pytorchvideo():
    """pytorchvideo's layers and model builders, or None.

    `pytorchvideo.models` imports `torchvision.ops.RoIAlign` for its detection head only; PyPI's torchvision does
    not import beside the pinned CPU torch, so a placeholder module stands in for that symbol when needed.
    """
    if import_torch() is None:
        return None
    import types

    if "torchvision" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except Exception:
            stub, stub_ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")

            class RoIAlign:
                def __init__(self, *args, **kwargs):
                    raise RuntimeError("torchvision.ops.RoIAlign is not available")

            stub_ops.RoIAlign = RoIAlign
            stub.ops = stub_ops
            sys.modules["torchvision"], sys.modules["torchvision.ops"] = stub, stub_ops
    try:
        import pytorchvideo.layers.nonlocal_net
        import pytorchvideo.models.resnet
    except Exception:
        return None
    return pytorchvideo


def configure_threads(threads):
    """Same intra-op threads for TensorFlow and PyTorch; call before TensorFlow runs its first op."""
    if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # the runtime is already initialised (e.g. when called from a test)
            pass
    torch = import_torch() if os.environ.get("KERAS_BACKEND", "tensorflow") in ("tensorflow", "torch") else None
    if torch is not None:
        torch.set_num_threads(threads)
    return threads


def _memory_now():
    """`{"VmHWM": bytes, "VmRSS": bytes}` of this process (Linux)."""
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM", "VmRSS")):
                key, value = line.split(":")
                status[key] = int(value.split()[0]) * 1024
    return status


@contextlib.contextmanager
def peak_memory():
    """Measure the peak growth of this process' resident set inside the block (Linux): `result["peak_bytes"]`."""
    result = {}
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = _memory_now()["VmRSS"]
    yield result
    result["peak_bytes"] = _memory_now()["VmHWM"] - before


def run_probes(specs, *, envs=None, timeout=900, parallel=False):
    """Run each spec in a fresh Python process (`python -m nonlocal_zoo.benchmark.probe JSON`); returns dicts.

    Args:
        specs: list of probe specs (dicts with a `"kind"`).
        envs: per-spec extra environment variables (e.g. `KERAS_BACKEND`), or None.
        timeout: seconds per process.
        parallel: start all processes at once (for correctness probes; never for timings or memory).
    """
    envs = envs or [{}] * len(specs)

    def start(spec, env):
        cmd = [sys.executable, "-m", "nonlocal_zoo.benchmark.probe", json.dumps(spec)]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})

    def finish(proc):
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return {"error": f"timed out after {timeout} s"}
        for line in reversed(stdout.splitlines()):
            if line.startswith("PROBE "):
                return json.loads(line[len("PROBE "):])
        lines = (stderr or stdout).strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {proc.returncode}"}

    if parallel:
        procs = [start(spec, env) for spec, env in zip(specs, envs)]
        return [finish(proc) for proc in procs]
    return [finish(start(spec, env)) for spec, env in zip(specs, envs)]

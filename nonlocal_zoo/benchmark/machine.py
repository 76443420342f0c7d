"""The machine: CPU, memory, library versions, and its dense matmul peak (the yardstick of the models' GFLOP/s).

Example:
    >>> machine_info()["python"]
"""
import os
import platform
import subprocess

import numpy as np

from nonlocal_zoo.benchmark.timing import import_torch, time_interleaved


def machine_info():
    """CPU model, cores, memory and library versions."""
    info = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "L2 cache",
                               "L3 cache", "Hypervisor vendor"):
                info[key.strip()] = value.strip()
        flags = next((line for line in lscpu.splitlines() if line.startswith("Flags")), "")
        info["SIMD"] = " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags)
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/meminfo") as f:
            info["RAM"] = f"{int(f.readline().split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    info["load average (1/5/15 min)"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    for module in ("numpy", "tensorflow", "keras", "torch", "jax", "pytorchvideo", "cv2"):
        try:
            info[module] = __import__(module).__version__
        except Exception:
            info[module] = "not installed"
    return info


def bench_matmul(cfg):
    """Dense square matmul GFLOP/s (2 n^3 per product), TensorFlow and PyTorch, float32 and bfloat16."""
    import tensorflow as tf

    n = cfg["matmul_size"]
    a = np.random.default_rng(0).standard_normal((n, n)).astype("float32")
    fns = {}
    for dtype in ("float32", "bfloat16"):
        x = tf.cast(tf.constant(a), dtype)
        fns[f"tensorflow {dtype}"] = (lambda x=x: tf.linalg.matmul(x, x).numpy())
    torch = import_torch()
    if torch is not None:
        for dtype in ("float32", "bfloat16"):
            x = torch.from_numpy(a).to(getattr(torch, dtype))
            fns[f"torch {dtype}"] = (lambda x=x: torch.matmul(x, x))
    times = time_interleaved(fns, warmup=cfg["warmup"], repeats=2 * cfg["repeats"])
    rows = {name: 2 * n**3 / t["min_s"] / 1e9 for name, t in times.items()}  # the peak: best of the repeats
    # GFLOP per CPU-second (all threads): the per-core rate, insensitive to other processes taking cores.
    per_cpu = {name: 2 * n**3 / t["cpu_median_s"] / 1e9 for name, t in times.items()}
    result = {"size": n, "gflops": rows, "gflops_per_cpu_s": per_cpu}
    for dtype in ("float32", "bfloat16"):
        result[f"peak_{dtype}"] = max(v for k, v in rows.items() if k.endswith(f" {dtype}"))
        result[f"peak_{dtype}_per_cpu_s"] = max(v for k, v in per_cpu.items() if k.endswith(f" {dtype}"))
    return result

"""The machine: CPU, memory, library versions, and its dense matmul peak (the yardstick of the models' GFLOP/s).

Example:
    >>> machine_info()["python"]
"""
import os
import platform
import subprocess

import numpy as np

from nonlocal_zoo.benchmark.timing import import_torch, time_interleaved, wall_time


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


def matmul_callables(n, dtypes=("float32", "bfloat16")):
    """`{"<library> <dtype>": callable}`: one dense `(n, n) x (n, n)` product per call, TensorFlow and PyTorch (when
    installed), for each dtype; 2 n^3 FLOPs each. Time them with `time_interleaved` and turn the times into rates with
    `matmul_rates` (the `families` section interleaves them with its model runs)."""
    import tensorflow as tf

    a = np.random.default_rng(0).standard_normal((n, n)).astype("float32")
    fns = {}
    for dtype in dtypes:
        x = tf.cast(tf.constant(a), dtype)
        fns[f"tensorflow {dtype}"] = (lambda x=x: tf.linalg.matmul(x, x).numpy())
    torch = import_torch()
    if torch is not None:
        for dtype in dtypes:
            x = torch.from_numpy(a).to(getattr(torch, dtype))
            fns[f"torch {dtype}"] = (lambda x=x: torch.matmul(x, x))
    return fns


def matmul_rates(times, n, dtypes=("float32", "bfloat16")):
    """The peak of `time_interleaved` times of `matmul_callables(n)`: GFLOP/s of each (best repeat), GFLOP per
    CPU-second (median) and `peak_<dtype>` / `peak_<dtype>_per_cpu_s`, the best library of each dtype."""
    rows = {name: 2 * n**3 / t["min_s"] / 1e9 for name, t in times.items()}  # the peak: best of the repeats
    # GFLOP per CPU-second (all threads): the per-core rate, insensitive to other processes taking cores.
    per_cpu = {name: 2 * n**3 / t["cpu_median_s"] / 1e9 for name, t in times.items()}
    result = {"size": n, "gflops": rows, "gflops_per_cpu_s": per_cpu}
    for dtype in dtypes:
        result[f"peak_{dtype}"] = max(v for k, v in rows.items() if k.endswith(f" {dtype}"))
        result[f"peak_{dtype}_per_cpu_s"] = max(v for k, v in per_cpu.items() if k.endswith(f" {dtype}"))
    return result


def sustained_matmul_callables(n, seconds, dtypes=("float32",), *, calibration=3):
    """`({name: callable}, {name: products})`: `matmul_callables(n, dtypes)`, but each call runs `products` dense
    `(n, n)` products back to back, as many as fill about `seconds` (the duration of the forward pass they are
    compared with; at least one).

    The yardstick of a forward pass's GFLOP/s is the rate this machine *sustains* for as long as that pass runs: a
    single 0.1 s product can finish inside a burst of turbo clock, a quiet slice of a shared host or a warm cache,
    which a multi-second forward pass never does; compared call for call (both medians, interleaved), the two see the
    same clock and the same interruptions. Time them with `time_interleaved` and turn the times into rates with
    `sustained_rates`.

    Args:
        n: the matrix size.
        seconds: the target duration of one call.
        dtypes: the dtypes to run (one callable per library and dtype).
        calibration: single products timed (after one warm-up) to estimate a product's time (their best).

    Example:
        >>> fns, products = sustained_matmul_callables(512, 0.05)
        >>> times = time_interleaved(fns, warmup=1, repeats=3)
        >>> sustained_rates(times, 512, products)["peak_float32"]   # GFLOP/s
    """
    singles = matmul_callables(n, dtypes)
    fns, products = {}, {}
    for name, fn in singles.items():
        fn()
        single = min(wall_time(fn) for _ in range(calibration))
        count = products[name] = max(1, int(round(seconds / max(single, 1e-9))))
        fns[name] = (lambda fn=fn, count=count: [fn() for _ in range(count)] and None)
    return fns, products


def sustained_rates(times, n, products, dtypes=("float32",)):
    """The sustained peak from `time_interleaved` times of `sustained_matmul_callables`: GFLOP/s of each from its
    median call (`gflops`), GFLOP per CPU-second (median, `gflops_per_cpu_s`), and `peak_<dtype>` /
    `peak_<dtype>_per_cpu_s`: the best library of each dtype."""
    rows = {name: 2 * n**3 * products[name] / t["median_s"] / 1e9 for name, t in times.items()}
    per_cpu = {name: 2 * n**3 * products[name] / t["cpu_median_s"] / 1e9 for name, t in times.items()}
    result = {"size": n, "products_per_call": dict(products), "gflops": rows, "gflops_per_cpu_s": per_cpu}
    for dtype in dtypes:
        result[f"peak_{dtype}"] = max(v for k, v in rows.items() if k.endswith(f" {dtype}"))
        result[f"peak_{dtype}_per_cpu_s"] = max(v for k, v in per_cpu.items() if k.endswith(f" {dtype}"))
    return result


def bench_matmul(cfg):
    """Dense square matmul GFLOP/s (2 n^3 per product), TensorFlow and PyTorch, float32 and bfloat16."""
    n = cfg["matmul_size"]
    times = time_interleaved(matmul_callables(n), warmup=cfg["warmup"], repeats=2 * cfg["repeats"])
    return matmul_rates(times, n)

"""Benchmarks of nonlocal_zoo against the PyTorch reference, side by side on one machine.

Everything is measured in one run, with the same input, the same number of threads (TensorFlow intra-op threads =
`torch.set_num_threads`), warm-up calls first, then repeated timings whose medians are reported. Variants that are
compared with each other are timed interleaved (one call of each in turn, repeated), so that a load change on a
shared machine hits all of them alike; the tables report ratios measured that way.

Sections (`--sections`, default all):

- `machine`: CPU model, cores, RAM, library versions.
- `matmul`: the machine's dense float32/bfloat16 matmul peak (GFLOP/s), TensorFlow and PyTorch.
- `block`: `NonLocalBlock` forward and forward+backward at the res3/res4 shapes of 8x8 (= 32x2) and 32x4 clips
  against pytorchvideo's `NonLocal`; eager, `tf.function` and XLA; peak memory of each in a fresh process.
- `chunking`: `chunk_size="auto"` against the unchunked block at long-clip shapes (up to the 629 MB affinity of 32
  frames without temporal downsampling): time ratio, max |difference|, affinity buffer and peak memory.
- `models`: I3D-NL5 R50 and C2D R50 forward, batch 1 and 8, 8x224x224 and 32x224x224, clips/s against the
  equivalent pytorchvideo `create_resnet` (+ `NonLocal`) model; eager, `tf.function`, XLA; float32 and bfloat16;
  achieved GFLOP/s from the analytic MAC count (`nonlocal_zoo.models.flops`) against the matmul peak.
- `pipeline`: the input pipeline in clips/s (`benchmarks/data_pipeline.py`, when run from the repository) against
  the models' consumption rate.
- `backends`: the same block and a tiny backbone under KERAS_BACKEND=jax and =torch (one process each), time and
  max |difference| against TensorFlow.

Peak memory is the growth of the resident set (Linux `VmHWM`, reset through `/proc/self/clear_refs`) of a fresh
process over its size before the measured calls; TensorFlow allocations are invisible to `tracemalloc`.

Example:
    $ nonlocal-zoo benchmark --quick --output /tmp/bench.md
    $ python -m benchmarks.run                      # the full run that writes benchmarks/RESULTS.md
"""
import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

SECTIONS = ("machine", "matmul", "block", "chunking", "models", "pipeline", "backends")
DEFAULT_OUTPUT = os.path.join("benchmarks", "RESULTS.md")

# Block shapes (T, H, W, C) of the official networks at a 224 crop. 8x8 (repo geometry) and 32x2 (paper geometry)
# clips both reach res3 with T=4; 32x4 clips (repo geometry, 32 frames) with T=16.
BLOCK_SHAPES = {
    "res3, 8x8 / 32x2 clip": (4, 28, 28, 512),
    "res4, 8x8 / 32x2 clip": (4, 14, 14, 1024),
    "res3, 32x4 clip": (16, 28, 28, 512),
    "res4, 32x4 clip": (16, 14, 14, 1024),
}
# Long clips for the chunked attention: (T, H, W, C) at res3.
CHUNK_SHAPES = {
    "res3, 32x4 clip (T=16)": (16, 28, 28, 512),
    "res3, 32 frames, no temporal downsampling (T=32)": (32, 28, 28, 512),
}
# Full models: (label, preset, frames). 8-frame clips use the repo geometry, 32-frame clips the paper geometry.
MODELS = (
    ("I3D-NL5 R50", "i3d_nl5_r50_8x8_kinetics400", 8),
    ("I3D-NL5 R50", "i3d_nl5_r50_32x2_kinetics400", 32),
    ("C2D R50", "c2d_r50_8x8_kinetics400", 8),
    ("C2D R50", "c2d_r50_32x2_kinetics400", 32),
)

FULL = {
    "warmup": 1, "repeats": 5, "block_batch": 2, "block_shapes": BLOCK_SHAPES, "memory_shapes": 2,
    "chunk_shapes": CHUNK_SHAPES, "budget_mb": 64, "matmul_size": 2048, "models": MODELS, "model_batches": (1, 8),
    "model_size": 224, "model_repeats": 3, "model_warmup": 1, "backend_shape": (4, 14, 14, 256),
}
# CI: tiny shapes, the same code paths; < 60 s on two cores.
QUICK = {
    "warmup": 1, "repeats": 3, "block_batch": 2, "block_shapes": {"tiny (T=2, 8x8, C=64)": (2, 8, 8, 64)},
    "memory_shapes": 1, "chunk_shapes": {"tiny long clip (T=8, 28x28, C=16)": (8, 28, 28, 16)}, "budget_mb": 2,
    "matmul_size": 256, "models": (("tiny I3D-NL", "tiny", 4),), "model_batches": (2,), "model_size": 32,
    "model_repeats": 2, "model_warmup": 1, "backend_shape": (2, 6, 6, 16),
}
# A reduced I3D-NL backbone for the quick mode and the backend checks (same builder, same code paths). Few distinct
# weight shapes: JAX compiles its random initializers once per shape, seconds each on a loaded machine.
TINY_ARCH = {
    "stem_width": 8, "stage_depths": [1, 2, 1, 1], "stage_widths": [8, 8, 8, 8], "bottleneck_expansion": 1,
    "temporal_kernels": [[3], [3, 1], [1], [3]], "nonlocal_blocks": [[], [0, 1], [], []],
}


# ---------------------------------------------------------------------------------------------------------- helpers
def _median(values):
    return float(np.median(values)) if values else float("nan")


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
        name: {"median_s": _median(wall[name]), "min_s": float(min(wall[name])), "cpu_median_s": _median(cpu[name]),
               "runs": len(wall[name])}
        for name in fns
    }


def _import_torch():
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
    if _import_torch() is None:
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
    torch = _import_torch() if os.environ.get("KERAS_BACKEND", "tensorflow") in ("tensorflow", "torch") else None
    if torch is not None:
        torch.set_num_threads(threads)
    return threads


def _memory_now():
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
    """Run each spec in a fresh Python process (`python -m nonlocal_zoo.benchmark --probe JSON`); returns dicts.

    Args:
        specs: list of probe specs (dicts with a `"kind"`).
        envs: per-spec extra environment variables (e.g. `KERAS_BACKEND`), or None.
        timeout: seconds per process.
        parallel: start all processes at once (for correctness probes; never for timings or memory).
    """
    envs = envs or [{}] * len(specs)

    def start(spec, env):
        cmd = [sys.executable, "-m", "nonlocal_zoo.benchmark", "--probe", json.dumps(spec)]
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


def measure_memory(specs, *, isolated):
    """Peak memory of block probes: each in a fresh process (`isolated`), else in this process, in the given order.

    In-process numbers (the quick mode) can only under-estimate what a fresh process would show, since memory freed
    by an earlier measurement may be reused; order the specs from small to large.
    """
    if isolated:
        return [r.get("peak_bytes") for r in run_probes(specs)]
    return [_probe_block_memory(spec)["peak_bytes"] for spec in specs]


# ---------------------------------------------------------------------------------------------------------- machine
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


# ----------------------------------------------------------------------------------------------------------- matmul
def bench_matmul(cfg):
    """Dense square matmul GFLOP/s (2 n^3 per product), TensorFlow and PyTorch, float32 and bfloat16."""
    import tensorflow as tf

    n = cfg["matmul_size"]
    a = np.random.default_rng(0).standard_normal((n, n)).astype("float32")
    fns = {}
    for dtype in ("float32", "bfloat16"):
        x = tf.cast(tf.constant(a), dtype)
        fns[f"tensorflow {dtype}"] = (lambda x=x: tf.linalg.matmul(x, x).numpy())
    torch = _import_torch()
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


# ------------------------------------------------------------------------------------------------------------ block
def _random_block_weights(block, seed=0):
    """Random weights for every variable (BN gamma non-zero, variances positive), so the block is not the identity."""
    rng = np.random.default_rng(seed)
    for v in block.weights:
        shape = tuple(v.shape)
        if "variance" in v.path:
            value = rng.uniform(0.5, 1.5, shape)
        elif v.path.endswith(("gamma", "scale")):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0.0, 0.05, shape)
        v.assign(value.astype("float32"))


def make_block(shape, seed=0, **kwargs):
    """A built `NonLocalBlock` (official flavour unless overridden) for `(B, T, H, W, C)` with random weights."""
    from nonlocal_zoo.layers import NonLocalBlock

    block = NonLocalBlock(**kwargs)
    block.build(shape)
    _random_block_weights(block, seed)
    return block


def torch_block_like(block):
    """pytorchvideo's `NonLocal` (softmax instantiation, 1x2x2 max-pool, BN) carrying the weights of `block`."""
    torch = _import_torch()
    ptv = import_pytorchvideo()
    channels = block.out.kernel.shape[1]
    ref = ptv.layers.nonlocal_net.create_nonlocal(
        dim_in=channels, dim_inner=block.dim, pool_size=(1, 2, 2), instantiation="softmax"
    )
    with torch.no_grad():
        for name, conv in (("theta", ref.conv_theta), ("phi", ref.conv_phi), ("g", ref.conv_g), ("out", ref.conv_out)):
            layer = getattr(block, name)
            conv.weight.copy_(torch.from_numpy(np.asarray(layer.kernel).T[:, :, None, None, None].copy()))
            conv.bias.copy_(torch.from_numpy(np.asarray(layer.bias)))
        ref.norm.weight.copy_(torch.from_numpy(np.asarray(block.bn.gamma)))
        ref.norm.bias.copy_(torch.from_numpy(np.asarray(block.bn.beta)))
        ref.norm.running_mean.copy_(torch.from_numpy(np.asarray(block.bn.moving_mean)))
        ref.norm.running_var.copy_(torch.from_numpy(np.asarray(block.bn.moving_variance)))
    return ref


def block_callables(block, x, *, train=False, variants=("eager", "graph", "xla")):
    """TensorFlow callables running `block` on `x` (NTHWC numpy): forward, or forward+backward when `train`."""
    import tensorflow as tf

    xt = tf.constant(x)
    w = tf.constant(np.random.default_rng(5).standard_normal(x.shape).astype("float32"))

    def forward(a):
        return block(a, training=False)

    def train_step(a):
        with tf.GradientTape() as tape:
            tape.watch(a)
            loss = tf.reduce_sum(block(a, training=True) * w)
        grads = tape.gradient(loss, [a] + block.trainable_variables)
        return tf.add_n([tf.reduce_sum(g) for g in grads])

    fn = train_step if train else forward
    compiled = {"eager": fn, "graph": tf.function(fn), "xla": tf.function(fn, jit_compile=True)}
    return {v: (lambda f=compiled[v]: np.asarray(f(xt))) for v in variants}


def torch_block_callable(ref, x, *, train=False):
    torch = _import_torch()
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))  # NTHWC -> NCTHW
    if not train:
        ref.eval()

        def forward():
            with torch.no_grad():
                return ref(xt)

        return forward
    ref.train()
    xg = xt.clone().requires_grad_(True)
    w = torch.from_numpy(np.ascontiguousarray(
        np.random.default_rng(5).standard_normal(x.shape).astype("float32").transpose(0, 4, 1, 2, 3)))

    def step():
        for p in ref.parameters():
            p.grad = None
        xg.grad = None
        (ref(xg) * w).sum().backward()
        return xg.grad

    return step


def bench_block(cfg, log):
    """NonLocalBlock vs pytorchvideo NonLocal: forward and forward+backward times, output agreement, peak memory."""
    torch = _import_torch()
    have_ref = import_pytorchvideo() is not None
    rows = []
    batch = cfg["block_batch"]
    for label, (t, h, w, c) in cfg["block_shapes"].items():
        shape = (batch, t, h, w, c)
        x = np.random.default_rng(1).standard_normal(shape).astype("float32")
        block = make_block(shape)
        row = {"shape": label, "input": list(shape)}
        if have_ref:
            ref = torch_block_like(block)
            with torch.no_grad():
                theirs = ref.eval()(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))).numpy()
            ours = np.asarray(block(x, training=False)).transpose(0, 4, 1, 2, 3)
            row["max_abs_diff"] = float(np.abs(ours - theirs).max())
        for train in (False, True):
            variants = ("graph", "xla") if train else ("eager", "graph", "xla")
            fns = block_callables(block, x, train=train, variants=variants)
            if have_ref:
                fns["torch"] = torch_block_callable(ref, x, train=train)
            times = time_interleaved(fns, warmup=cfg["warmup"], repeats=cfg["repeats"])
            row["train" if train else "forward"] = times
            log(f"block {label} {'fwd+bwd' if train else 'fwd'}: " + ", ".join(
                f"{k} {v['median_s'] * 1e3:.1f} ms" for k, v in times.items()))
        rows.append(row)
    # Peak memory, one fresh process per measurement, for the first shapes (the res3 ones in the full run).
    memory, specs = [], []
    impls = ("tensorflow", "torch") if have_ref else ("tensorflow",)
    for label, (t, h, w, c) in list(cfg["block_shapes"].items())[: cfg["memory_shapes"]]:
        for train in (False, True):
            memory.append({"shape": label, "pass": "fwd+bwd" if train else "fwd"})
            specs += [{"kind": "block_memory", "impl": impl, "shape": [batch, t, h, w, c], "train": train,
                       "threads": cfg["threads"]} for impl in impls]
    peaks = iter(measure_memory(specs, isolated=cfg["isolated_memory"]))
    for entry in memory:
        entry.update({impl: next(peaks) for impl in impls})
        log(f"block memory {entry}")
    return {"batch": batch, "rows": rows, "memory": memory, "isolated_memory": cfg["isolated_memory"],
            "reference": "pytorchvideo NonLocal" if have_ref else None}


def _probe_block_memory(spec):
    """Peak RSS growth of building nothing more: one forward (or forward+backward) of the block, in this process."""
    shape = tuple(spec["shape"])
    x = np.random.default_rng(1).standard_normal(shape).astype("float32")
    kwargs = {}
    if spec.get("chunk_size") is not None:
        kwargs = {"chunk_size": spec["chunk_size"], "memory_budget_mb": spec.get("budget_mb", 64)}
    block = make_block(shape, **kwargs)
    if spec["impl"] == "torch":
        fn = torch_block_callable(torch_block_like(block), x, train=spec["train"])
    else:
        fn = block_callables(block, x, train=spec["train"], variants=(spec.get("variant", "graph"),))
        fn = next(iter(fn.values()))
    with peak_memory() as result:
        for _ in range(spec.get("calls", 2)):
            fn()
    return result


# --------------------------------------------------------------------------------------------------------- chunking
def affinity_bytes(block, input_shape):
    """Bytes of the largest float32 affinity buffer one call of `block` allocates (0 for `mode="dot"`)."""
    return block.affinity_buffer_bytes(input_shape)


def bench_chunking(cfg, log):
    """Unchunked vs `chunk_size="auto"` at long-clip shapes: time ratio, exactness, buffer size, peak memory."""
    import tensorflow as tf

    budget = cfg["budget_mb"]
    rows = []
    for label, (t, h, w, c) in cfg["chunk_shapes"].items():
        shape = (1, t, h, w, c)
        x = np.random.default_rng(2).standard_normal(shape).astype("float32")
        full = make_block(shape)
        auto = make_block(shape, chunk_size="auto", memory_budget_mb=budget)
        auto.set_weights(full.get_weights())
        xt = tf.constant(x)
        f_full = tf.function(lambda a: full(a, training=False))
        f_auto = tf.function(lambda a: auto(a, training=False))
        diff = float(np.abs(np.asarray(f_full(xt)) - np.asarray(f_auto(xt))).max())
        times = time_interleaved({"unchunked": lambda: np.asarray(f_full(xt)), "auto": lambda: np.asarray(f_auto(xt))},
                                 warmup=cfg["warmup"], repeats=cfg["repeats"])
        row = {"shape": label, "input": list(shape), "budget_mb": budget, "max_abs_diff": diff, "times": times,
               "buffer_unchunked": affinity_bytes(full, shape), "buffer_auto": affinity_bytes(auto, shape)}
        keys, specs = [], []
        for train in (False, True):
            for name, chunk in (("auto", "auto"), ("unchunked", None)):  # small first (matters in-process)
                keys.append(f"peak_{name}_{'train' if train else 'forward'}")
                specs.append({"kind": "block_memory", "impl": "tensorflow", "shape": list(shape), "train": train,
                              "chunk_size": chunk, "budget_mb": budget, "threads": cfg["threads"]})
        row.update(zip(keys, measure_memory(specs, isolated=cfg["isolated_memory"])))
        rows.append(row)
        log(f"chunking {label}: {json.dumps({k: v for k, v in row.items() if k != 'times'})} "
            f"time auto/unchunked {times['auto']['median_s'] / times['unchunked']['median_s']:.3f}")
    return {"rows": rows}


# ----------------------------------------------------------------------------------------------------------- models
def torch_model_like(arch, frames, size):
    """pytorchvideo `create_resnet` with `NonLocal` blocks after the same residual blocks, from a builder arch."""
    torch = _import_torch()
    ptv = import_pytorchvideo()
    from torch import nn

    from nonlocal_zoo.models.arch import feature_shapes, normalize_arch

    a = normalize_arch(**arch)
    res5 = feature_shapes(a, (frames, size, size, 3))["res5"]
    torch.manual_seed(0)
    model = ptv.models.resnet.create_resnet(
        input_channel=3, model_depth={(3, 4, 6, 3): 50, (3, 4, 23, 3): 101}[tuple(a["stage_depths"])],
        model_num_class=400, dropout_rate=0.5, norm=nn.BatchNorm3d,
        stem_conv_kernel_size=tuple(a["conv1_kernel"]), stem_conv_stride=tuple(a["conv1_strides"]),
        stem_pool_kernel_size=tuple(a["pool1_size"]), stem_pool_stride=tuple(a["pool1_strides"]),
        stage1_pool=nn.MaxPool3d if a["pool2_size"] else None,
        stage1_pool_kernel_size=tuple(a["pool2_size"] or (1, 1, 1)),
        stage_conv_a_kernel_size=[[(k, 1, 1) for k in stage] for stage in a["temporal_kernels"]],
        head_pool=nn.AvgPool3d, head_pool_kernel_size=tuple(res5[:3]), head_activation=None,
    )
    model.blocks[0].pool = nn.MaxPool3d(tuple(a["pool1_size"]), stride=tuple(a["pool1_strides"]),
                                        padding=tuple(a["pool1_padding"]))
    stages = [b for b in model.blocks if isinstance(b, ptv.models.resnet.ResStage)]
    for s, blocks in enumerate(a["nonlocal_blocks"]):
        for i in blocks:
            dim = stages[s].res_blocks[i].branch2.conv_c.out_channels
            nl = ptv.layers.nonlocal_net.create_nonlocal(dim_in=dim, dim_inner=dim // 2, pool_size=(1, 2, 2),
                                                         instantiation="softmax")
            stages[s].res_blocks[i] = nn.Sequential(stages[s].res_blocks[i], nl)
    return model.eval()


def _keras_model(preset, frames, size, dtype):
    import keras

    from nonlocal_zoo.models import build_backbone, create_model
    from nonlocal_zoo.presets import get_preset

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16" if dtype == "bfloat16" else "float32")
    try:
        if preset == "tiny":
            arch = {**get_preset("i3d_nl5_r50_8x8_kinetics400")["arch"], **TINY_ARCH}
            model = build_backbone(input_shape=(frames, size, size, 3), **arch)
        else:
            arch = get_preset(preset)["arch"]
            model = create_model(preset, input_shape=(frames, size, size, 3), classifier_activation=None)
    finally:
        keras.config.set_dtype_policy(previous)
    return model, arch


def bench_models(cfg, matmul, log):
    """Full-model forward clips/s: TensorFlow eager / tf.function / XLA, float32 / bfloat16, against PyTorch."""
    import tensorflow as tf

    from nonlocal_zoo.models import count_macs, count_params

    torch = _import_torch()
    have_ref = import_pytorchvideo() is not None
    size = cfg["model_size"]
    rows = []
    for label, preset, frames in cfg["models"]:
        models = {dtype: _keras_model(preset, frames, size, dtype) for dtype in ("float32", "bfloat16")}
        arch = models["float32"][1]
        macs = count_macs(arch, (frames, size, size, 3), include_top=preset != "tiny")["total"]
        ref = torch_model_like(arch, frames, size) if have_ref and preset != "tiny" else None
        params = {"ours": count_params(arch, include_top=preset != "tiny")["trainable"]}
        if ref is not None:
            params["torch"] = sum(p.numel() for p in ref.parameters())
        for batch in cfg["model_batches"]:
            x = np.random.default_rng(3).standard_normal((batch, frames, size, size, 3)).astype("float32")
            xt = tf.constant(x)
            fns, traced = {}, {}
            for dtype, (model, _) in models.items():
                call = lambda a, m=model: m(a, training=False)  # noqa: E731
                graph, xla = tf.function(call), tf.function(call, jit_compile=True)
                traced[f"tf graph {dtype}"], traced[f"tf xla {dtype}"] = graph, xla
                if dtype == "float32":
                    fns["tf eager float32"] = lambda m=model: np.asarray(m(xt, training=False))
                fns[f"tf graph {dtype}"] = lambda f=graph: np.asarray(f(xt))
                fns[f"tf xla {dtype}"] = lambda f=xla: np.asarray(f(xt))
            if ref is not None:
                xr = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))

                def torch_fwd(dtype):
                    def fn():
                        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                            return ref(xr)
                    return fn

                fns["torch float32"] = torch_fwd("float32")
                fns["torch bfloat16"] = torch_fwd("bfloat16")
            times = {}
            for name, fn in list(fns.items()):
                try:  # a variant that fails (e.g. a missing bfloat16 kernel) is reported, not fatal
                    fn()
                except Exception as e:  # noqa: BLE001
                    times[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
                    del fns[name]
            times.update(time_interleaved(fns, warmup=cfg["model_warmup"], repeats=cfg["model_repeats"]))
            for name, fn in traced.items():  # no retracing: one trace for all the calls of one shape
                if "median_s" in times.get(name, {}):
                    times[name]["traces"] = fn.experimental_get_tracing_count()
            for name, t in times.items():
                if "median_s" in t:
                    t["clips_per_s"] = batch / t["median_s"]
                    dtype = "bfloat16" if "bfloat16" in name else "float32"
                    t["gflops"] = 2 * macs * batch / t["median_s"] / 1e9
                    t["fraction_of_peak"] = t["gflops"] / matmul[f"peak_{dtype}"]
                    t["gflops_per_cpu_s"] = 2 * macs * batch / t["cpu_median_s"] / 1e9
                    t["fraction_of_peak_per_cpu_s"] = t["gflops_per_cpu_s"] / matmul[f"peak_{dtype}_per_cpu_s"]
            rows.append({"model": label, "preset": preset, "clip": f"{frames}x{size}x{size}", "batch": batch,
                         "gmacs_per_clip": macs / 1e9, "params": params, "times": times})
            log(f"model {label} {preset} batch {batch}: " + ", ".join(
                f"{k} {v.get('clips_per_s', float('nan')):.2f} clips/s" for k, v in times.items()))
    return {"rows": rows}


# --------------------------------------------------------------------------------------------------------- pipeline
def bench_pipeline(cfg, models, log):
    """The input pipeline's clips/s (benchmarks/data_pipeline.py) against the models' consumption rate."""
    try:
        from benchmarks.data_pipeline import run as pipeline_run
    except ImportError as e:
        return {"error": f"benchmarks/data_pipeline.py is not importable ({e}); run from the repository root"}
    result = pipeline_run(quick=cfg["quick"])
    consumption = {}
    for row in (models or {}).get("rows", []):
        timed = [(t["clips_per_s"], t["cpu_median_s"] / row["batch"]) for k, t in row["times"].items()
                 if k.startswith("tf") and "clips_per_s" in t]
        if timed:
            consumption[f"{row['model']} {row['clip']} batch {row['batch']}"] = max(timed)
    # CPU seconds per clip are robust to other load on a shared machine: decoding cost vs model cost per clip.
    cpu_per_clip = {k: result["cores_busy"][k] / v for k, v in result.get("clips_per_s", {}).items()
                    if v and k in result.get("cores_busy", {}) and not k.startswith("cold")}
    baseline = _plain_opencv(num_frames=80 if cfg["quick"] else 150)
    if baseline:
        cpu_per_clip["plain sequential OpenCV (whole file, no transforms)"] = baseline["cpu_s_per_clip"]
    log(f"pipeline: {result}; plain OpenCV {baseline}")
    return {"result": result, "consumption": consumption, "cpu_s_per_clip": cpu_per_clip, "opencv": baseline}


def _plain_opencv(num_frames, num_clips=8):
    """Plain sequential `cv2.VideoCapture.read` of every frame of the pipeline benchmark's synthetic files."""
    try:
        import cv2

        from benchmarks.data_pipeline import _write_clips
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as folder:
        paths = _write_clips(folder, num_clips=num_clips, num_frames=num_frames)

        def decode_all():
            for path in paths:
                cap = cv2.VideoCapture(path)
                while cap.read()[0]:
                    pass
                cap.release()

        times = time_interleaved({"opencv": decode_all}, warmup=1, repeats=3)["opencv"]
    return {"clips_per_s": num_clips / times["median_s"], "cpu_s_per_clip": times["cpu_median_s"] / num_clips,
            "frames_per_clip": num_frames}


# --------------------------------------------------------------------------------------------------------- backends
def bench_backends(cfg, log):
    """The block and a tiny backbone under each Keras backend (one process each), against TensorFlow's output."""
    t, h, w, c = cfg["backend_shape"]
    shape = [2, t, h, w, c]
    with tempfile.TemporaryDirectory() as tmp:
        rows = {"tensorflow": _probe_backend({"dir": tmp, "shape": shape, "save": True, "repeats": cfg["repeats"]})}
        backends = ("jax", "torch")
        # Quick mode: one thread each, the processes run side by side.
        spec = {"kind": "backend", "dir": tmp, "shape": shape, "save": False,
                "threads": 1 if cfg["quick"] else cfg["threads"], "repeats": cfg["repeats"]}
        envs = [{"KERAS_BACKEND": b} for b in backends]
        if cfg["quick"]:
            # JAX compiles every random initializer of every weight shape; unoptimised XLA code compiles ~4x faster.
            envs[0]["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
        results = run_probes([spec] * len(backends), envs=envs, parallel=cfg["quick"])
        rows.update(zip(backends, results))
    log(f"backends: {rows}")
    return {"shape": shape, "rows": rows, "timed_in_parallel": cfg["quick"]}


def backend_fixture(directory, shape, *, save):
    """Build the block and tiny backbone; with `save`, write their weights and inputs/outputs to `directory`.

    Without `save`, load the weights from `directory` and return the outputs and their max |difference| to the
    saved (TensorFlow) ones. Used by the `backends` section and tests/test_backends.py.
    """
    import keras

    from nonlocal_zoo.layers import NonLocalBlock
    from nonlocal_zoo.models import build_backbone
    from nonlocal_zoo.presets import get_preset

    shape = tuple(shape)
    inputs = keras.Input(shape[1:])
    # A budget of a few query rows exercises the chunked path too (3 steps per clip at the default test shape).
    block = NonLocalBlock(chunk_size="auto", memory_budget_mb=0.002, name="nl")
    block_model = keras.Model(inputs, block(inputs))
    arch = {**get_preset("i3d_nl5_r50_8x8_kinetics400")["arch"], **TINY_ARCH}
    backbone = build_backbone(input_shape=(4, 32, 32, 3), **arch)
    files = {name: os.path.join(directory, f"{name}.weights.h5") for name in ("block", "backbone")}
    arrays = os.path.join(directory, "arrays.npz")
    if save:
        _random_block_weights(block, seed=3)
        rng = np.random.default_rng(4)
        for v in backbone.weights:
            value = rng.uniform(0.5, 1.5, v.shape) if "variance" in v.path or v.path.endswith("gamma") else \
                rng.normal(0.0, 0.1, v.shape)
            v.assign(value.astype("float32"))
        x_block = rng.standard_normal(shape).astype("float32")
        x_backbone = rng.standard_normal((2, 4, 32, 32, 3)).astype("float32")
        block_model.save_weights(files["block"])
        backbone.save_weights(files["backbone"])
    else:
        block_model.load_weights(files["block"])
        backbone.load_weights(files["backbone"])
        saved = np.load(arrays)
        x_block, x_backbone = saved["x_block"], saved["x_backbone"]
    # predict: compiled the way each backend runs inference (tf.function, jax.jit, torch eager).
    outputs = {
        "block": block_model.predict(x_block, verbose=0),
        "backbone": backbone.predict(x_backbone, verbose=0),
        "block_input_gradient": _input_gradient(block_model, x_block),
    }
    if save:
        np.savez(arrays, x_block=x_block, x_backbone=x_backbone, **{f"y_{k}": v for k, v in outputs.items()})
        return outputs, {}
    diffs = {k: float(np.abs(v - saved[f"y_{k}"]).max()) for k, v in outputs.items()}
    return outputs, diffs


def _input_gradient(model, x):
    """d/dx sum(model(x) * w) for a fixed random w, with the backend's own autodiff (inference mode)."""
    import keras

    w = np.random.default_rng(7).standard_normal(x.shape).astype("float32")
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(model(xt, training=False) * w)
        return tape.gradient(loss, xt).numpy()
    if backend == "jax":
        import jax

        tv = [v.value for v in model.trainable_variables]
        ntv = [v.value for v in model.non_trainable_variables]
        loss = lambda a: (model.stateless_call(tv, ntv, a, training=False)[0] * w).sum()  # noqa: E731
        return np.asarray(jax.grad(loss)(x))
    import torch

    xt = torch.tensor(x, requires_grad=True)
    (model(xt, training=False) * torch.from_numpy(w)).sum().backward()
    return xt.grad.numpy()


def _probe_backend(spec):
    import keras

    from nonlocal_zoo.layers import NonLocalBlock

    _, diffs = backend_fixture(spec["dir"], spec["shape"], save=spec["save"])
    # Timing: the plain (unchunked) block forward, compiled the way each backend compiles a Keras model's predict.
    shape = tuple(spec["shape"])
    block = NonLocalBlock(name="nl_timed")
    block.build(shape)
    x = keras.ops.convert_to_tensor(np.random.default_rng(6).standard_normal(shape).astype("float32"))
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda a: block(a, training=False))
        call = lambda: fn(x).numpy()  # noqa: E731
    elif backend == "jax":
        import jax

        state = [v.value for v in block.trainable_variables], [v.value for v in block.non_trainable_variables]
        fn = jax.jit(lambda tv, ntv, a: block.stateless_call(tv, ntv, a, training=False)[0])
        call = lambda: fn(*state, x).block_until_ready()  # noqa: E731
    else:
        import torch

        def call():
            with torch.no_grad():
                return block(x, training=False)
    times = time_interleaved({"forward": call}, warmup=1, repeats=spec["repeats"])
    return {"backend": backend, "max_abs_diff": diffs, "forward_median_s": times["forward"]["median_s"]}


# ----------------------------------------------------------------------------------------------------------- report
def _ms(t):
    return f"{t['median_s'] * 1e3:.1f}" if t and "median_s" in t else "n/a"


def _mb(b):
    return "n/a" if b is None else f"{b / 1e6:.0f}"


def _ratio(theirs, ours):
    if not theirs or not ours or "median_s" not in theirs or "median_s" not in ours:
        return "n/a"
    return f"{theirs['median_s'] / ours['median_s']:.2f}"


def render_markdown(results, command):
    """The results as a Markdown report (machine, commands, one table per section)."""
    out = ["# nonlocal_zoo benchmarks", ""]
    out += [f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M %Z')} "
            f"({'quick' if results['config']['quick'] else 'full'} mode, {results['config']['threads']} threads, "
            f"wall {results['wall_s']:.0f} s). Times are medians of interleaved runs; "
            "**speed-up = PyTorch time / our time** (> 1: we are faster).", ""]
    if "machine" in results:
        out += ["## Machine", "", "| | |", "|---|---|"]
        out += [f"| {k} | {v} |" for k, v in results["machine"].items()] + [""]
    if "matmul" in results:
        m = results["matmul"]
        out += [f"## Dense matmul peak ({m['size']}x{m['size']})", "",
                "| library, dtype | GFLOP/s (best repeat) | GFLOP per CPU-second (per-core rate) |", "|---|---|---|"]
        out += [f"| {k} | {v:.1f} | {m['gflops_per_cpu_s'][k]:.1f} |" for k, v in m["gflops"].items()] + [""]
    if "block" in results:
        b = results["block"]
        out += [f"## NonLocalBlock vs {b['reference']} (batch {b['batch']}, embedded Gaussian, keys pooled 1x2x2)", "",
                "| shape (B,T,H,W,C) | max abs diff | fwd torch ms | fwd eager ms | fwd graph ms | fwd XLA ms | "
                "speed-up graph | speed-up XLA | fwd+bwd torch ms | fwd+bwd graph ms | fwd+bwd XLA ms | "
                "speed-up graph | speed-up XLA |", "|---" * 13 + "|"]
        for r in b["rows"]:
            f, t = r["forward"], r["train"]
            out.append(
                f"| {r['shape']} {tuple(r['input'])} | {r.get('max_abs_diff', float('nan')):.1e} | "
                f"{_ms(f.get('torch'))} | {_ms(f['eager'])} | {_ms(f['graph'])} | {_ms(f['xla'])} | "
                f"{_ratio(f.get('torch'), f['graph'])} | {_ratio(f.get('torch'), f['xla'])} | {_ms(t.get('torch'))} | "
                f"{_ms(t['graph'])} | {_ms(t['xla'])} | {_ratio(t.get('torch'), t['graph'])} | "
                f"{_ratio(t.get('torch'), t['xla'])} |")
        if b["memory"]:
            where = "a fresh process" if b["isolated_memory"] else "this process (quick mode: a lower bound)"
            out += ["", f"Peak memory (MB, resident-set growth of {where} over two calls; TensorFlow in "
                    "`tf.function`):", "", "| shape | pass | ours | PyTorch |", "|---|---|---|---|"]
            out += [f"| {m['shape']} | {m['pass']} | {_mb(m.get('tensorflow'))} | {_mb(m.get('torch'))} |"
                    for m in b["memory"]]
        out.append("")
    if "chunking" in results:
        out += ["## Exact memory-bounded attention (`chunk_size=\"auto\"`, batch 1, `tf.function`)", "",
                "| shape (B,T,H,W,C) | budget MB | affinity buffer MB unchunked / auto | max abs diff | "
                "time ms unchunked / auto | auto / unchunked time | peak MB fwd unchunked / auto | "
                "peak MB fwd+bwd unchunked / auto |", "|---" * 8 + "|"]
        for r in results["chunking"]["rows"]:
            tm = r["times"]
            out.append(
                f"| {r['shape']} {tuple(r['input'])} | {r['budget_mb']} | {_mb(r['buffer_unchunked'])} / "
                f"{_mb(r['buffer_auto'])} | {r['max_abs_diff']:.1e} | {_ms(tm['unchunked'])} / {_ms(tm['auto'])} | "
                f"{tm['auto']['median_s'] / tm['unchunked']['median_s']:.3f} | "
                f"{_mb(r['peak_unchunked_forward'])} / {_mb(r['peak_auto_forward'])} | "
                f"{_mb(r['peak_unchunked_train'])} / {_mb(r['peak_auto_train'])} |")
        out.append("")
    if "models" in results:
        out += ["## Full models, forward (clips/s; speed-up vs PyTorch float32 eager, same dtype for bfloat16)", "",
                "| model | preset | clip | batch | GMACs/clip | variant | clips/s | speed-up | CPU s/clip | GFLOP/s | "
                "% of matmul peak | % of per-core matmul rate (CPU time) |",
                "|---" * 12 + "|"]
        for r in results["models"]["rows"]:
            for name, t in r["times"].items():
                dtype = "bfloat16" if "bfloat16" in name else "float32"
                ref = r["times"].get(f"torch {dtype}")
                if "error" in t:
                    out.append(f"| {r['model']} | {r['preset']} | {r['clip']} | {r['batch']} | "
                               f"{r['gmacs_per_clip']:.1f} | {name} | {t['error']} | | | | | |")
                    continue
                out.append(
                    f"| {r['model']} | {r['preset']} | {r['clip']} | {r['batch']} | {r['gmacs_per_clip']:.1f} | "
                    f"{name} | {t['clips_per_s']:.2f} | {_ratio(ref, t)} | {t['cpu_median_s'] / r['batch']:.2f} | "
                    f"{t['gflops']:.0f} | {100 * t['fraction_of_peak']:.0f} | "
                    f"{100 * t['fraction_of_peak_per_cpu_s']:.0f} |")
        traces = sorted({t["traces"] for r in results["models"]["rows"] for t in r["times"].values() if "traces" in t})
        out += ["", f"`tf.function` traces per variant and shape after all calls: {traces} (no retracing)."]
        params = {f"{r['preset']}": r["params"] for r in results["models"]["rows"]}
        out += ["", "Trainable parameters (ours / PyTorch reference): " + "; ".join(
            f"{k} {v['ours']:,} / {v.get('torch', 'n/a'):,}" if "torch" in v else f"{k} {v['ours']:,}"
            for k, v in params.items()), ""]
    if "pipeline" in results:
        p = results["pipeline"]
        out += ["## Input pipeline", ""]
        if "error" in p:
            out += [str(p["error"]), ""]
        else:
            out += ["| measurement | value |", "|---|---|"]
            out += [f"| {k} | {v} |" for k, v in _flatten(p["result"]).items()]
            if p.get("opencv"):
                out.append(f"| plain sequential OpenCV decoding of the same kind of files "
                           f"({p['opencv']['frames_per_clip']} frames, all decoded) | "
                           f"{p['opencv']['clips_per_s']:.1f} clips/s |")
            out += [f"| pipeline CPU s per clip: {k} | {v:.4f} |" for k, v in p.get("cpu_s_per_clip", {}).items()]
            out += [f"| model consumption: {k} (fastest TensorFlow variant) | {cps:.2f} clips/s, {cpu:.3f} CPU s per "
                    "clip |" for k, (cps, cpu) in p["consumption"].items()] + [""]
    if "backends" in results:
        bk = results["backends"]
        out += [f"## Keras backends (block {tuple(bk['shape'])} forward; tiny I3D-NL backbone and weights loaded "
                "from TensorFlow's .weights.h5)", "",
                "| backend | block forward ms | max abs diff vs TensorFlow: block / backbone / block input gradient |",
                "|---|---|---|"]
        for name, r in bk["rows"].items():
            if "error" in r:
                out.append(f"| {name} | error: {r['error']} | |")
                continue
            d = r.get("max_abs_diff") or {}
            diff = " / ".join(f"{d[k]:.1e}" for k in ("block", "backbone", "block_input_gradient")) if d else \
                "(reference)"
            out.append(f"| {name} | {r['forward_median_s'] * 1e3:.1f} | {diff} |")
        out.append("")
    return "\n".join(out)


GENERATED_START, GENERATED_END = "<!-- benchmark tables: start (generated) -->", "<!-- benchmark tables: end -->"


def write_report(path, report):
    """Write `report` to `path`; if the file has the generated-section markers, replace only what is between them
    (so a hand-written summary above or below survives re-runs)."""
    block = f"{GENERATED_START}\n{report}\n{GENERATED_END}\n"
    text = None
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    if text and GENERATED_START in text and GENERATED_END in text:
        head, rest = text.split(GENERATED_START, 1)
        tail = rest.split(GENERATED_END, 1)[1].lstrip("\n")
        block = head + block + tail
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(block)


def _flatten(d, prefix=""):
    flat = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{key}."))
        else:
            flat[key] = f"{v:.3g}" if isinstance(v, float) else v
    return flat


# ------------------------------------------------------------------------------------------------------------- main
def run(*, quick=False, sections=SECTIONS, threads=None, model_batches=None, model_frames=None, log=print):
    """Run the benchmark sections; returns the results dict (see `render_markdown`).

    Args:
        quick: tiny shapes (CI).
        sections: names from `SECTIONS`, run in that order.
        threads: intra-op threads of TensorFlow and PyTorch. Defaults to all cores.
        model_batches: batch sizes of the `models` section (default 1 and 8).
        model_frames: clip lengths of the `models` section (default 8 and 32).
        log: progress messages.
    """
    cfg = dict(QUICK if quick else FULL)
    cfg["quick"] = quick
    if model_batches:
        cfg["model_batches"] = tuple(model_batches)
    if model_frames and not quick:
        cfg["models"] = tuple(m for m in cfg["models"] if m[2] in model_frames)
    cfg["threads"] = configure_threads(threads or os.cpu_count() or 1)
    cfg["isolated_memory"] = not quick
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "The benchmark compares the TensorFlow backend with PyTorch and runs the other Keras backends in their own "
            f"processes; start it with KERAS_BACKEND=tensorflow. Received: KERAS_BACKEND={keras.backend.backend()!r}"
        )
    start = time.perf_counter()
    results = {"config": {"quick": quick, "threads": cfg["threads"], "sections": list(sections)}}
    matmul = None
    for section in sections:
        t0 = time.perf_counter()
        if section == "machine":
            results["machine"] = machine_info()
        elif section == "matmul":
            results["matmul"] = matmul = bench_matmul(cfg)
        elif section == "block":
            results["block"] = bench_block(cfg, log)
        elif section == "chunking":
            results["chunking"] = bench_chunking(cfg, log)
        elif section == "models":
            results["models"] = bench_models(cfg, matmul or bench_matmul(cfg), log)
        elif section == "pipeline":
            results["pipeline"] = bench_pipeline(cfg, results.get("models"), log)
        elif section == "backends":
            results["backends"] = bench_backends(cfg, log)
        log(f"[{section}: {time.perf_counter() - t0:.1f} s]")
    results["wall_s"] = time.perf_counter() - start
    return results


def _probe(spec):
    configure_threads(spec.get("threads") or os.cpu_count() or 1)
    if spec["kind"] == "block_memory":
        return _probe_block_memory(spec)
    if spec["kind"] == "backend":
        return _probe_backend(spec)
    raise ValueError(f"Unknown probe kind. Received: kind={spec['kind']!r}")


def main(argv=None):
    """Command line: `nonlocal-zoo benchmark [--quick] [--output PATH] [--json PATH] [--sections ...]`."""
    parser = argparse.ArgumentParser(prog="nonlocal-zoo benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, the same code paths (CI, < 60 s)")
    parser.add_argument("--output", default=None,
                        help=f"Markdown report path (default: {DEFAULT_OUTPUT} for the full run, "
                             "a temporary file in --quick mode)")
    parser.add_argument("--json", default=None, help="also write the raw results as JSON")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    parser.add_argument("--model-batches", type=int, nargs="+", default=None, help="models section: batch sizes")
    parser.add_argument("--model-frames", type=int, nargs="+", choices=(8, 32), default=None,
                        help="models section: clip lengths")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe is not None:
        print("PROBE " + json.dumps(_probe(json.loads(args.probe))), flush=True)
        return 0
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be a positive integer. Received: --threads={args.threads}")
    command = "nonlocal-zoo benchmark " + " ".join(argv if argv is not None else sys.argv[1:])
    results = run(quick=args.quick, sections=args.sections, threads=args.threads, model_batches=args.model_batches,
                  model_frames=args.model_frames, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    output = args.output or (os.path.join(tempfile.gettempdir(), "nonlocal_zoo_benchmark_quick.md") if args.quick
                             else DEFAULT_OUTPUT)
    write_report(output, render_markdown(results, command.strip()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    print(f"Wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

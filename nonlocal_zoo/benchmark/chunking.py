"""The `chunking` section: `chunk_size="auto"` against the unchunked block at long-clip shapes (time ratio, max
|difference|, affinity buffer, peak memory).

Example:
    >>> affinity_bytes(make_block((1, 16, 28, 28, 512)), (1, 16, 28, 28, 512)) / 1e6
"""
import json

import numpy as np

from nonlocal_zoo.benchmark.block import make_block, measure_memory
from nonlocal_zoo.benchmark.timing import time_interleaved


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

"""The `backends` section: the same block and a tiny backbone under KERAS_BACKEND=jax and =torch (one process each),
time and max |difference| against TensorFlow (weights loaded from TensorFlow's `.weights.h5`).

Example:
    >>> outputs, _ = backend_fixture("/tmp/fixture", (2, 4, 8, 8, 16), save=True)      # TensorFlow writes
"""
import os
import tempfile

import numpy as np

from nonlocal_zoo.benchmark.block import random_block_weights
from nonlocal_zoo.benchmark.config import TINY_ARCH
from nonlocal_zoo.benchmark.timing import run_probes, time_interleaved


def bench_backends(cfg, log):
    """The block and a tiny backbone under each Keras backend (one process each), against TensorFlow's output."""
    t, h, w, c = cfg["backend_shape"]
    shape = [2, t, h, w, c]
    with tempfile.TemporaryDirectory() as tmp:
        rows = {"tensorflow": probe_backend({"dir": tmp, "shape": shape, "save": True, "repeats": cfg["repeats"]})}
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
        random_block_weights(block, seed=3)
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
        "block_input_gradient": input_gradient(block_model, x_block),
    }
    if save:
        np.savez(arrays, x_block=x_block, x_backbone=x_backbone, **{f"y_{k}": v for k, v in outputs.items()})
        return outputs, {}
    diffs = {k: float(np.abs(v - saved[f"y_{k}"]).max()) for k, v in outputs.items()}
    return outputs, diffs


def input_gradient(model, x):
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


def probe_backend(spec):
    """One backend's row (run in a process with that `KERAS_BACKEND`): max |difference| to TensorFlow's saved
    outputs and the block's forward time."""
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

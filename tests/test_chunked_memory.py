"""Exact memory-bounded non-local attention: `chunk_size` (int or "auto" with `memory_budget_mb`).

Chunked outputs and gradients must equal the unchunked block (itself checked against a float64 numpy transcription of
the paper); the affinity buffer must stay within the budget for any clip length and batch size; and the peak memory
of a real call, measured in a fresh process from the resident set, must drop accordingly.
"""
import json
import math
import subprocess
import sys

import keras
import numpy as np
import pytest

from nonlocal_zoo import NonLocalBlock
from tests.nonlocal_reference import nonlocal_reference

MODES = ("embedded", "dot", "gaussian", "concatenate")
C = 6


def built(shape, seed=0, **kwargs):
    block = NonLocalBlock(**kwargs)
    block.build(shape)
    rng = np.random.default_rng(seed)
    for v in block.weights:
        value = rng.uniform(0.5, 1.5, v.shape) if "variance" in v.path else rng.normal(0.0, 0.5, v.shape)
        v.assign(value.astype("float32"))
    return block


def copy_of(block, shape, **kwargs):
    config = {**block.get_config(), **kwargs}
    other = NonLocalBlock.from_config(config)
    other.build(shape)
    other.set_weights(block.get_weights())
    return other


def numpy_reference(block, x):
    n = keras.ops.convert_to_numpy
    params = {f"{k}_{w}": (None if getattr(getattr(block, k), w) is None else n(getattr(getattr(block, k), w)))
              for k in ("theta", "phi", "g", "out") if hasattr(block, k) for w in ("kernel", "bias")}
    if block.mode == "concatenate":
        params["concat_kernel"] = n(block.concat_project.kernel)
    params.update(bn_gamma=n(block.bn.gamma), bn_beta=n(block.bn.beta), bn_mean=n(block.bn.moving_mean),
                  bn_var=n(block.bn.moving_variance))
    return nonlocal_reference(x, params, mode=block.mode, compression=block.compression,
                              pool_position=block.pool_position, use_scale=block.use_scale,
                              normalization=block.normalization, add_residual=block.add_residual)


def close(a, b, rtol=1e-5):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())


# Budgets (MB) that force each plan for a (B=5, T=3, 6x4, C) input, N = 72 queries, M = 18 keys (1x2x2 pooling):
# one clip = 72 x 18 x 4 B = 5184 B.
BUDGETS = {
    "all at once": 1.0,
    "2 clips per step, padded batch": 0.011,  # 2 clips fit -> 3 groups of 2 for B=5
    "rows of one clip": 0.002,  # 27 rows -> 3 chunks of 24 rows
    "one row at a time": 1e-9,
}


@pytest.mark.parametrize("mode", MODES)
def test_auto_chunked_equals_unchunked(mode):
    shape = (5, 3, 6, 4, C)
    x = np.random.default_rng(1).standard_normal(shape).astype("float32")
    full = built(shape, mode=mode)
    expected = keras.ops.convert_to_numpy(full(x, training=False))
    close(expected, numpy_reference(full, x))
    for plan, budget in BUDGETS.items():
        block = copy_of(full, shape, chunk_size="auto", memory_budget_mb=budget)
        close(keras.ops.convert_to_numpy(block(x, training=False)), expected, rtol=1e-6)
        if mode != "dot":
            assert block.affinity_buffer_bytes(shape) <= max(budget * 1e6, 18 * 4), plan


@pytest.mark.parametrize("mode", ("embedded", "concatenate"))
def test_auto_chunked_with_unknown_sizes(mode):
    """Traced with unknown batch and positions (TensorFlow), the plan is made at run time and stays exact."""
    shape = (3, 2, 6, 6, C)
    full = built(shape, seed=2, mode=mode)
    block = copy_of(full, shape, chunk_size="auto", memory_budget_mb=0.002)
    inputs = keras.Input((None, None, None, C))
    model = keras.Model(inputs, block(inputs))
    fn = model.predict
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        traced = tf.function(lambda t: model(t, training=False),
                             input_signature=[tf.TensorSpec((None, None, None, None, C), tf.float32)])
        fn = lambda t: traced(t).numpy()  # noqa: E731
    for size in ((3, 2, 6, 6), (1, 4, 8, 6), (4, 1, 2, 2)):
        x = np.random.default_rng(sum(size)).standard_normal(size + (C,)).astype("float32")
        close(fn(x), keras.ops.convert_to_numpy(full(x, training=False)), rtol=1e-6)
        close(model.predict(x, verbose=0, batch_size=2), numpy_reference(full, x))


@pytest.mark.parametrize("mode", ("embedded", "gaussian"))
def test_chunked_gradients_equal_unchunked(mode):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("gradient tape of the TensorFlow backend")
    import tensorflow as tf

    shape = (3, 2, 6, 4, C)
    x = tf.constant(np.random.default_rng(3).standard_normal(shape).astype("float32"))
    w = tf.constant(np.random.default_rng(4).standard_normal(shape).astype("float32"))
    full = built(shape, seed=5, mode=mode)
    grads = {}
    for name, block in (("full", full), ("auto", copy_of(full, shape, chunk_size="auto", memory_budget_mb=0.001)),
                        ("int", copy_of(full, shape, chunk_size=5))):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(block(x, training=True) * w)
        grads[name] = tape.gradient(loss, [x] + block.trainable_variables)
    # The phi bias gets an exactly-zero gradient in theory (softmax is shift-invariant), i.e. rounding noise: the
    # absolute slack is relative to the largest gradient of all.
    scale = max(np.abs(g.numpy()).max() for g in grads["full"])
    for name in ("auto", "int"):
        for g, ref in zip(grads[name], grads["full"]):
            np.testing.assert_allclose(g.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("frames", (4, 16, 32, 128))
@pytest.mark.parametrize("batch", (1, 8))
def test_auto_buffer_within_budget_for_any_clip_length(frames, batch):
    # res3 of the official networks: 28x28 positions, 512 channels, keys pooled 1x2x2. T=32 unchunked: 629 MB/clip.
    shape = (batch, frames, 28, 28, 512)
    naive = NonLocalBlock().affinity_buffer_bytes(shape)
    assert naive == batch * (frames * 28 * 28) * (frames * 14 * 14) * 4
    for budget in (64, 16):
        block = NonLocalBlock(chunk_size="auto", memory_budget_mb=budget)
        assert block.affinity_buffer_bytes(shape) <= budget * 1e6
        # Steps are not needlessly small: at least half the budget is used when the whole batch does not fit.
        assert block.affinity_buffer_bytes(shape) >= min(naive, budget * 1e6 / 2)
    assert NonLocalBlock(chunk_size="auto", temporal_group_size=4).affinity_buffer_bytes(shape) <= 64e6


def test_config_round_trip_and_errors():
    block = NonLocalBlock(chunk_size="auto", memory_budget_mb=12.5)
    config = block.get_config()
    assert config["chunk_size"] == "auto" and config["memory_budget_mb"] == 12.5
    restored = NonLocalBlock.from_config(json.loads(json.dumps(config)))
    assert restored.get_config() == config
    for kwargs, quoted in (({"chunk_size": "big"}, "chunk_size='big'"), ({"chunk_size": 0}, "chunk_size=0"),
                           ({"memory_budget_mb": 0}, "memory_budget_mb=0"),
                           ({"memory_budget_mb": "64"}, "memory_budget_mb='64'"),
                           ({"memory_budget_mb": math.inf}, "memory_budget_mb=inf")):
        with pytest.raises(ValueError, match=quoted):
            NonLocalBlock(**kwargs)


PROBE = r"""
import json, sys
import numpy as np
import tensorflow as tf
from nonlocal_zoo.benchmark import peak_memory
from nonlocal_zoo.layers import NonLocalBlock
shape = (1, 16, 28, 28, 8)                       # N = 12544 queries, M = 3136 keys: 157 MB affinity unchunked
x = tf.constant(np.random.default_rng(0).standard_normal(shape).astype("float32"))
out = {}
for name, kwargs in (("auto", {"chunk_size": "auto", "memory_budget_mb": 16}), ("unchunked", {})):  # small first
    block = NonLocalBlock(**kwargs)
    block.build(shape)
    fn = tf.function(lambda a, block=block: block(a, training=False))
    with peak_memory() as peak:
        for _ in range(2):
            fn(x).numpy()
    out[name] = peak["peak_bytes"]
    out[name + "_buffer"] = block.affinity_buffer_bytes(shape)
print("RESULT " + json.dumps(out))
"""


def test_peak_memory_is_capped():
    """A real call in a fresh process: the unchunked block's peak grows by > 1 affinity (157 MB), "auto" stays small."""
    if keras.backend.backend() != "tensorflow" or not sys.platform.startswith("linux"):
        pytest.skip("resident-set measurement of the TensorFlow backend on Linux")
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                          env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "", "KERAS_BACKEND": "tensorflow"})
    line = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert line, proc.stderr[-2000:]
    peak = json.loads(line[0][len("RESULT "):])
    assert peak["unchunked_buffer"] == 12544 * 3136 * 4
    assert peak["auto_buffer"] <= 16e6
    assert peak["unchunked"] > peak["unchunked_buffer"]  # the measurement sees the affinity (and the softmax)
    assert peak["auto"] < 4 * 16e6 + 30e6  # generous: two step buffers plus TF's own allocations
    assert peak["auto"] < peak["unchunked"] / 3

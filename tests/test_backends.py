"""The layer, a tiny I3D-NL backbone and weight loading under KERAS_BACKEND=jax and =torch give TensorFlow's outputs.

KERAS_BACKEND is read when Keras is imported, so each backend runs in its own process
(`python -m nonlocal_zoo.benchmark --probe ...`): TensorFlow saves `.weights.h5` files, inputs and its outputs to a
temporary folder; the other backends load the weights, run the same inputs (through `predict`, i.e. `jax.jit` on JAX)
and compare, as well as the block's input gradient from each backend's own autodiff. The block runs its chunked
path (`chunk_size="auto"` with a budget of a few query rows, steps recomputed in the backward pass).
"""
import importlib.util

import keras
import numpy as np
import pytest

from nonlocal_zoo.benchmark import backend_fixture, run_probes

SHAPE = [2, 2, 6, 6, 16]  # N = 72 queries, M = 18 keys: 3 chunks per clip with the fixture's budget
BACKENDS = [b for b in ("jax", "torch") if importlib.util.find_spec(b) is not None]


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the reference outputs come from TensorFlow")
@pytest.mark.skipif(not BACKENDS, reason="neither jax nor torch is installed")
def test_backends_match_tensorflow(tmp_path):
    outputs, _ = backend_fixture(str(tmp_path), SHAPE, save=True)
    # The reference itself is no identity map and not degenerate.
    saved = np.load(tmp_path / "arrays.npz")
    assert np.abs(outputs["block"] - saved["x_block"]).max() > 0.1
    assert np.abs(outputs["backbone"]).max() > 1e-3
    spec = {"kind": "backend", "dir": str(tmp_path), "shape": SHAPE, "save": False, "threads": 1, "repeats": 1}
    # JAX: unoptimised XLA code compiles ~4x faster (it compiles every random initializer); same arithmetic.
    envs = [{"KERAS_BACKEND": b, "XLA_FLAGS": "--xla_backend_optimization_level=0"} for b in BACKENDS]
    results = run_probes([spec] * len(BACKENDS), envs=envs, parallel=True, timeout=600)
    for backend, result in zip(BACKENDS, results):
        assert "error" not in result, (backend, result)
        assert result["backend"] == backend
        for name in ("block", "backbone", "block_input_gradient"):
            scale = np.abs(saved[f"y_{name}"]).max()
            assert result["max_abs_diff"][name] <= 1e-5 * max(scale, 1.0), (backend, name, result)

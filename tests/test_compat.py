"""`nonlocal_zoo._compat`: each private-Keras-API shim works on the installed Keras (checked against an independent
computation: numpy, TensorFlow's own ops, the layers' own attributes), and outside its Keras version range it raises
`KerasVersionError` naming the version found and the range, before touching Keras internals."""
import numpy as np
import pytest

import keras
import tensorflow as tf

from nonlocal_zoo import _compat
from nonlocal_zoo.layers import NonLocalBlock

OUTSIDE = ("3.16.0", "4.0.0", "3.11.3")


@pytest.fixture
def keras_version(monkeypatch):
    """Set the Keras version the shims see (`keras.__version__`)."""
    monkeypatch.delenv(_compat.UNCHECKED_ENV, raising=False)

    def set_version(version):
        monkeypatch.setattr(keras, "__version__", version)

    return set_version


def _assert_refused(call, shim, version):
    low, high = _compat.SHIMS[shim]
    with pytest.raises(_compat.KerasVersionError, match=rf"Keras {low} to {high}\.x.*Keras {version} is installed"):
        call()


def test_installed_keras_is_in_every_range():
    for shim in _compat.SHIMS:
        assert _compat.check_keras_version(shim) == keras.__version__


@pytest.mark.parametrize("text, expected", [("3.15.1", (3, 15, 1)), ("3.16.0.dev2025120100", (3, 16, 0)),
                                            ("3.13.0rc1", (3, 13, 0)), ("3.12", (3, 12, 0))])
def test_version_parsing(text, expected):
    assert _compat._version_tuple(text) == expected


def test_range_edges_and_override(keras_version, monkeypatch):
    keras_version("3.15.9")  # any patch release of the last tested minor version
    assert _compat.check_keras_version("flatten_layers") == "3.15.9"
    keras_version("3.12.0")
    assert _compat.check_keras_version("flatten_layers") == "3.12.0"
    keras_version("3.16.0")
    _assert_refused(lambda: _compat.check_keras_version("flatten_layers"), "flatten_layers", "3.16.0")
    monkeypatch.setenv(_compat.UNCHECKED_ENV, "1")
    assert _compat.check_keras_version("flatten_layers") == "3.16.0"
    with pytest.raises(ValueError, match="Received: 'no_such_shim'"):
        _compat.check_keras_version("no_such_shim")


def test_version_error_is_a_one_line_usage_error_in_the_cli():
    from nonlocal_zoo import cli

    error = _compat.KerasVersionError("x")
    assert isinstance(error, ImportError) and cli._exit_code(error) == cli.EXIT_USAGE


# ---------------------------------------------------------------------------------------------------- flatten_layers
def _block_model():
    inputs = keras.Input((2, 4, 4, 8))
    x = keras.layers.Conv3D(8, 1, name="conv")(inputs)
    outputs = NonLocalBlock(name="nl")(x)
    return keras.Model(inputs, outputs)


def test_flatten_layers_finds_nested_sublayers():
    model = _block_model()
    block = model.get_layer("nl")
    found = _compat.flatten_layers(model)
    expected = [model.get_layer("conv"), block, block.theta, block.phi, block.g, block.out, block.bn]
    assert all(any(layer is e for layer in found) for e in expected)
    assert not any(layer is model for layer in found)
    assert isinstance(block.bn, keras.layers.BatchNormalization)


@pytest.mark.parametrize("version", OUTSIDE)
def test_flatten_layers_refuses_other_keras(keras_version, version):
    model = _block_model()
    keras_version(version)
    _assert_refused(lambda: _compat.flatten_layers(model), "flatten_layers", version)


# ---------------------------------------------------------------------------------------------------- multi-worker fit
def _classifier(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(4, activation="softmax")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_multiworker_patch_logs_the_true_loss():
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    y = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    model = _classifier()
    strategy = tf.distribute.get_strategy()
    _compat.patch_model_for_multiworker(model, strategy, (tf.zeros((1, 3)), tf.zeros((1,), tf.int32)))
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    probabilities = np.asarray(model.predict(x, verbose=0), np.float64)  # lr 0: the weights did not move
    expected_loss = -np.mean(np.log(probabilities[np.arange(8), y]))
    np.testing.assert_allclose(np.ravel(history.history["loss"])[0], expected_loss, rtol=1e-5)
    np.testing.assert_allclose(np.ravel(history.history["accuracy"])[0], np.mean(probabilities.argmax(-1) == y))


@pytest.mark.parametrize("version", OUTSIDE)
def test_multiworker_patch_refuses_other_keras(keras_version, version):
    model = _classifier()
    step = model.train_step
    keras_version(version)
    _assert_refused(lambda: _compat.patch_model_for_multiworker(model, tf.distribute.get_strategy(), None),
                    "patch_model_for_multiworker", version)
    assert model.train_step == step  # untouched


# ---------------------------------------------------------------------------------------------------- weight decay
def test_coupled_weight_decay_mixin_matches_numpy():
    class CoupledSGD(_compat.coupled_weight_decay_mixin(), keras.optimizers.SGD):
        def update_step(self, gradient, variable, learning_rate):
            if self.decays(variable):
                gradient = gradient + self.weight_decay * variable
            super().update_step(gradient, variable, learning_rate)

    rng = np.random.default_rng(0)
    w0, b0 = rng.normal(size=(3, 2)).astype("float32"), rng.normal(size=(2,)).astype("float32")
    gw, gb = rng.normal(size=(3, 2)).astype("float32"), rng.normal(size=(2,)).astype("float32")
    w, b = keras.Variable(w0), keras.Variable(b0)
    lr, wd = 0.1, 0.05
    opt = CoupledSGD(learning_rate=lr, weight_decay=wd)
    opt.exclude_from_weight_decay(var_list=[b])
    opt.apply_gradients([(gw, w), (gb, b)])
    # plain SGD on g + wd * w (decay inside the gradient, none outside it); b excluded
    np.testing.assert_allclose(keras.ops.convert_to_numpy(w), w0 - lr * (gw + wd * w0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(b), b0 - lr * gb, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("version", OUTSIDE)
def test_coupled_weight_decay_mixin_refuses_other_keras(keras_version, version):
    keras_version(version)
    _assert_refused(_compat.coupled_weight_decay_mixin, "coupled_weight_decay_mixin", version)


# ---------------------------------------------------------------------------------------------------- backend ops
def test_override_tf_backend_ops_routes_and_restores():
    calls = []

    def max_pool(original, inputs, *args, **kwargs):
        calls.append(tuple(inputs.shape))
        return original(inputs, *args, **kwargs)

    x = np.random.default_rng(1).normal(size=(1, 4, 6, 6, 2)).astype("float32")
    expected = tf.nn.max_pool3d(x, (1, 2, 2), (1, 2, 2), "VALID").numpy()
    with _compat.override_tf_backend_ops(max_pool=max_pool):
        inside = keras.ops.convert_to_numpy(keras.ops.max_pool(x, (1, 2, 2), (1, 2, 2)))
    after = keras.ops.convert_to_numpy(keras.ops.max_pool(x, (1, 2, 2), (1, 2, 2)))
    assert calls == [x.shape]  # routed inside the context only
    np.testing.assert_array_equal(inside, expected)
    np.testing.assert_array_equal(after, expected)
    with pytest.raises(ValueError, match="relu"):
        with _compat.override_tf_backend_ops(relu=max_pool):
            pass


def test_tflite_lowering_context_computes_the_same_pools():
    from nonlocal_zoo.export import tflite_lowering

    x = np.random.default_rng(2).normal(size=(2, 5, 7, 9, 3)).astype("float32")
    with tflite_lowering():
        graph = tf.function(lambda a: keras.ops.max_pool(a, (2, 3, 3), (2, 2, 2))).get_concrete_function(
            tf.TensorSpec(x.shape, tf.float32))
    ops = {op.type for op in graph.graph.get_operations()}
    assert "MaxPool3D" not in ops and "MaxPool" in ops
    np.testing.assert_allclose(graph(tf.constant(x)).numpy(),
                               tf.nn.max_pool3d(x, (2, 3, 3), (2, 2, 2), "VALID").numpy(), rtol=1e-6)


@pytest.mark.parametrize("version", OUTSIDE)
def test_override_tf_backend_ops_refuses_other_keras(keras_version, version):
    import importlib

    nn = importlib.import_module("keras.src.backend.tensorflow.nn")
    original = nn.max_pool
    keras_version(version)

    def enter():
        with _compat.override_tf_backend_ops(max_pool=lambda original, *a, **k: original(*a, **k)):
            pass

    _assert_refused(enter, "override_tf_backend_ops", version)
    assert nn.max_pool is original


# ---------------------------------------------------------------------------------------------------- instance call
def test_instance_call_records_inputs_and_is_undone():
    model = _block_model()
    block = model.get_layer("nl")
    original = type(block).call.__get__(block)
    seen = []

    def call(inputs, *args, **kwargs):
        seen.append(keras.ops.convert_to_numpy(inputs))
        return original(inputs, *args, **kwargs)

    x = np.random.default_rng(3).normal(size=(1, 2, 4, 4, 8)).astype("float32")
    expected_input = keras.ops.convert_to_numpy(model.get_layer("conv")(x))
    _compat.set_instance_call(block, call)
    try:
        y = keras.ops.convert_to_numpy(model(x))
    finally:
        _compat.clear_instance_call(block)
    assert len(seen) == 1
    np.testing.assert_allclose(seen[0], expected_input, rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), y, rtol=1e-6)
    assert len(seen) == 1 and "call" not in vars(block)


@pytest.mark.parametrize("version", OUTSIDE)
def test_instance_call_refuses_other_keras(keras_version, version):
    block = _block_model().get_layer("nl")
    keras_version(version)
    _assert_refused(lambda: _compat.set_instance_call(block, lambda *a, **k: None), "instance_call", version)
    assert "call" not in vars(block)

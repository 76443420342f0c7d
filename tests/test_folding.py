"""Inference-time folding of BatchNormalization / Affine into the convolution before it, and of the non-local block's
`bn(out(y))` into one matmul: same values as the unfolded layers (Keras' own BatchNormalization as the reference)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from nonlocal_zoo.layers import Affine, NonLocalBlock
from nonlocal_zoo.layers.folding import BatchNormalization as ConvBatchNormalization
from nonlocal_zoo.layers.folding import fold_into_conv


def _random_bn_weights(layer, rng):
    gamma, beta, mean, var = layer.get_weights()
    layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.5, beta.shape),
                       rng.normal(0, 0.5, mean.shape), rng.uniform(0.5, 2.0, var.shape)])


def _conv_bn_pair(norm_layer, strides=(1, 2, 2), rank=3):
    conv_cls = keras.layers.Conv3D if rank == 3 else keras.layers.Conv2D
    inputs = keras.Input((4, 10, 10, 6) if rank == 3 else (10, 10, 6))
    x = conv_cls(8, 3, strides=strides[-rank:], padding="valid", use_bias=False, name="conv")(inputs)
    y = norm_layer(x)
    return keras.Model(inputs, keras.layers.ReLU()(y))


@pytest.mark.parametrize("rank", [3, 2])
def test_conv_batchnorm_folds_in_graphs_and_equals_keras_batchnorm(rank):
    rng = np.random.default_rng(0)
    folded = _conv_bn_pair(ConvBatchNormalization(epsilon=1e-5, name="bn"), rank=rank)
    plain = _conv_bn_pair(keras.layers.BatchNormalization(epsilon=1e-5, name="bn"), rank=rank)
    _random_bn_weights(folded.get_layer("bn"), rng)
    plain.set_weights(folded.get_weights())  # same names, same weights: checkpoints load either way
    x = rng.standard_normal((3,) + folded.input_shape[1:]).astype("float32")
    graph = tf.function(lambda a: folded(a, training=False))
    reference = np.asarray(tf.function(lambda a: plain(a, training=False))(x))
    np.testing.assert_allclose(np.asarray(graph(x)), reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(folded(x, training=False)), reference, rtol=1e-5, atol=1e-5)  # eager
    # The traced graph computes the normalization as a BiasAdd on a convolution with a rescaled kernel.
    ops = graph.get_concrete_function(tf.TensorSpec(x.shape, tf.float32)).graph.get_operations()
    bias_adds = [op for op in ops if op.type == "BiasAdd"]
    assert len(bias_adds) == 1 and bias_adds[0].inputs[0].op.type == ("Conv3D" if rank == 3 else "Conv2D")
    assert bias_adds[0].inputs[0].op.inputs[1].op.type == "Mul"
    assert not any(op.type == "Rsqrt" and "batchnorm" in op.name for op in ops)


def test_conv_batchnorm_trains_with_batch_statistics_like_keras():
    rng = np.random.default_rng(1)
    folded = _conv_bn_pair(ConvBatchNormalization(epsilon=1e-5, name="bn"))
    plain = _conv_bn_pair(keras.layers.BatchNormalization(epsilon=1e-5, name="bn"))
    _random_bn_weights(folded.get_layer("bn"), rng)
    plain.set_weights(folded.get_weights())
    x = rng.standard_normal((3, 4, 10, 10, 6)).astype("float32")
    out = tf.function(lambda a: folded(a, training=True))(x)
    ref = tf.function(lambda a: plain(a, training=True))(x)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)
    for a, b in zip(folded.get_layer("bn").get_weights(), plain.get_layer("bn").get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # moving statistics updated alike


def test_affine_folds_and_equals_its_formula():
    rng = np.random.default_rng(2)
    model = _conv_bn_pair(Affine(name="bn"))
    scale, bias = rng.uniform(0.5, 1.5, 8).astype("float32"), rng.normal(0, 0.5, 8).astype("float32")
    model.get_layer("bn").set_weights([scale, bias])
    x = rng.standard_normal((2, 4, 10, 10, 6)).astype("float32")
    conv = keras.Model(model.input, model.get_layer("conv").output)
    reference = np.maximum(np.asarray(conv(x)) * scale + bias, 0)
    np.testing.assert_allclose(np.asarray(tf.function(lambda a: model(a))(x)), reference, rtol=1e-5, atol=1e-5)


def test_fold_declines_what_it_cannot_fold():
    x = tf.ones((1, 4, 4, 4, 2))
    s, b = tf.ones((2,)), tf.zeros((2,))
    assert fold_into_conv(x, s, b) is None  # eager
    assert tf.function(lambda a: tf.constant(fold_into_conv(a * 2.0, s, b) is None))(x)  # not a convolution
    w = tf.ones((1, 1, 1, 2, 2), tf.float16)
    conv_f16 = tf.function(lambda a: tf.constant(fold_into_conv(
        tf.nn.conv3d(tf.cast(a, tf.float16), w, [1] * 5, "VALID"), s, b) is None))
    assert conv_f16(x)  # float16 stays unfolded (float32 and bfloat16 fold)


def test_bfloat16_conv_batchnorm_folds_before_the_kernel_cast_and_matches_keras():
    from nonlocal_zoo.tasks.precision import policy_scope

    rng = np.random.default_rng(6)
    with policy_scope("mixed_bfloat16"):
        folded = _conv_bn_pair(ConvBatchNormalization(epsilon=1e-5, name="bn"))
        plain = _conv_bn_pair(keras.layers.BatchNormalization(epsilon=1e-5, name="bn"))
    _random_bn_weights(folded.get_layer("bn"), rng)
    plain.set_weights(folded.get_weights())
    x = rng.standard_normal((3,) + folded.input_shape[1:]).astype("float32")
    graph = tf.function(lambda a: folded(a, training=False))
    out = np.asarray(tf.cast(graph(x), tf.float32))
    # References: Keras' BatchNormalization under the same policy, and float32 numpy from the same weights.
    reference = np.asarray(tf.cast(tf.function(lambda a: plain(a, training=False))(x), tf.float32))
    gamma, beta, mean, var = folded.get_layer("bn").get_weights()
    conv = keras.Model(folded.input, folded.get_layer("conv").output)
    with policy_scope("float32"):
        conv32 = keras.Model.from_config(conv.get_config())
    conv32.set_weights(conv.get_weights())
    exact = np.maximum((np.asarray(conv32(x)) - mean) / np.sqrt(var + 1e-5) * gamma + beta, 0)
    scale = np.abs(exact).max()
    assert np.abs(out - exact).max() < 0.02 * scale  # bfloat16 rounding (8 bits of mantissa)
    assert np.abs(out - exact).max() <= 2 * np.abs(reference - exact).max() + 1e-3 * scale  # no worse than Keras'
    ops = graph.get_concrete_function(tf.TensorSpec(x.shape, tf.float32)).graph.get_operations()
    (bias_add,) = [op for op in ops if op.type == "BiasAdd"]
    conv_op = bias_add.inputs[0].op
    assert conv_op.type == "Conv3D" and conv_op.get_attr("T") == tf.bfloat16
    kernel = conv_op.inputs[1].op  # Cast(float32 kernel * scale): rounded to bfloat16 once
    assert kernel.type == "Cast" and kernel.inputs[0].op.type == "Mul" and kernel.inputs[0].dtype == tf.float32


@pytest.mark.parametrize("normalization", ["batch", "affine", None])
@pytest.mark.parametrize("pool_position", ["input", "projection"])
def test_nonlocal_block_folded_output_equals_unfolded(normalization, pool_position, monkeypatch):
    rng = np.random.default_rng(3)
    block = NonLocalBlock(normalization=normalization, pool_position=pool_position, out_use_bias=normalization is None)
    x = rng.standard_normal((2, 4, 6, 6, 16)).astype("float32")
    block(x)
    block.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") if "variance" not in w.path
                       else rng.uniform(0.5, 2, w.shape).astype("float32") for w in block.weights])
    folded = np.asarray(block(x, training=False))
    monkeypatch.setattr(NonLocalBlock, "_folded_output", lambda self, training: None)
    unfolded = np.asarray(block(x, training=False))
    assert np.abs(folded - x).max() > 0.1  # the branch contributes
    np.testing.assert_allclose(folded, unfolded, rtol=1e-5, atol=1e-5)


def test_folding_disabled_traces_the_unfolded_graph():
    from nonlocal_zoo.layers import folding_disabled

    model = _conv_bn_pair(ConvBatchNormalization(epsilon=1e-5, name="bn"))
    _random_bn_weights(model.get_layer("bn"), np.random.default_rng(4))
    x = np.random.default_rng(5).standard_normal((2, 4, 10, 10, 6)).astype("float32")
    folded, unfolded = tf.function(lambda a: model(a, training=False)), tf.function(lambda a: model(a, training=False))
    with folding_disabled():
        graph = unfolded.get_concrete_function(tf.TensorSpec(x.shape, tf.float32)).graph
    assert not [op for op in graph.get_operations() if op.type == "BiasAdd"]  # BN as multiply-add again
    folded_graph = folded.get_concrete_function(tf.TensorSpec(x.shape, tf.float32)).graph
    assert [op for op in folded_graph.get_operations() if op.type == "BiasAdd"]  # the switch is restored
    np.testing.assert_allclose(np.asarray(unfolded(x)), np.asarray(folded(x)), rtol=1e-5, atol=1e-5)


def test_weights_files_load_across_keras_and_folding_batchnorm(tmp_path):
    # Keras keys a layer in .weights.h5 by its class name: files written with keras' BatchNormalization (the
    # embedded demo weights, earlier runs) must load into the folding one and back.
    rng = np.random.default_rng(6)
    plain = _conv_bn_pair(keras.layers.BatchNormalization(epsilon=1e-5, name="bn"))
    _random_bn_weights(plain.get_layer("bn"), rng)
    plain.save_weights(tmp_path / "plain.weights.h5")
    folded = _conv_bn_pair(ConvBatchNormalization(epsilon=1e-5, name="bn"))
    folded.load_weights(tmp_path / "plain.weights.h5")
    for a, b in zip(folded.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)
    folded.save_weights(tmp_path / "folded.weights.h5")
    back = _conv_bn_pair(keras.layers.BatchNormalization(epsilon=1e-5, name="bn"))
    back.load_weights(tmp_path / "folded.weights.h5")
    for a, b in zip(back.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", ["embedded", "dot", "concatenate"])
@pytest.mark.parametrize("pool_position", ["input", "projection"])
def test_nonlocal_projections_of_one_input_run_as_one_matmul_and_equal_three(mode, pool_position, monkeypatch):
    rng = np.random.default_rng(7)
    block = NonLocalBlock(mode=mode, pool_position=pool_position, normalization="batch")
    x = rng.standard_normal((2, 4, 6, 6, 16)).astype("float32")
    block(x)
    block.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") if "variance" not in w.path
                       else rng.uniform(0.5, 2, w.shape).astype("float32") for w in block.weights])
    graph = tf.function(lambda a: block(a, training=False))
    fused = np.asarray(graph(x))
    # One matmul with the columns of theta, phi, g (pooling after the projections) or of phi, g (pooling before).
    ops = graph.get_concrete_function(tf.TensorSpec(x.shape, tf.float32)).graph.get_operations()
    widths = sorted(int(op.outputs[0].shape[-1]) for op in ops if op.type == "MatMul")
    assert (3 * block.dim if pool_position == "projection" else 2 * block.dim) in widths
    monkeypatch.setattr(NonLocalBlock, "_fused_projections", lambda self, x, pooled, training: None)
    separate = np.asarray(tf.function(lambda a: block(a, training=False))(x))
    assert np.abs(fused - x).max() > 0.1  # the branch contributes
    np.testing.assert_allclose(fused, separate, rtol=1e-5, atol=1e-5)

"""Tests of `nonlocal_zoo.NonLocalBlock` against a float64 numpy transcription of the paper
(tests/nonlocal_reference.py) and against pytorchvideo's PyTorch `NonLocal`."""
import re

import keras
import numpy as np
import pytest

from nonlocal_zoo import NonLocalBlock
from tests.nonlocal_reference import nonlocal_reference

# Maps whose keys pool down to one position make Keras warn about a softmax over a size-1 axis; that is intended.
pytestmark = pytest.mark.filterwarnings("ignore:You are using a softmax over axis")

MODES = ("embedded", "dot", "gaussian", "concatenate")
CHANNELS = 6
# Tiny feature maps with sizes that the pool windows do not divide (5 // 2, 3 // 2): "valid" pooling is exercised.
SHAPES = {3: (2, 7, CHANNELS), 4: (2, 5, 4, CHANNELS), 5: (2, 4, 5, 3, CHANNELS)}
# A per-axis pool tuple for each rank, different from what the int form gives.
POOL_TUPLES = {3: (3,), 4: (2, 3), 5: (2, 1, 2)}


# ----------------------------------------------------------------------------------------------------------- helpers
def randomize(block, seed, scale=0.5, gamma=(0.5, 1.5)):
    """Give every variable of a built block (kernels, biases, BN gamma/beta and moving stats) random non-zero values."""
    rng = np.random.default_rng(seed)
    for variable in block.weights:
        shape = tuple(variable.shape)
        if variable.name == "moving_variance":
            value = rng.uniform(0.5, 2.0, shape)
        elif variable.name in ("gamma", "scale"):
            value = rng.uniform(*gamma, shape) * rng.choice([-1.0, 1.0], shape)
        else:
            value = rng.normal(0.0, scale, shape)
        variable.assign(value.astype(variable.dtype))
        assert np.all(keras.ops.convert_to_numpy(variable) != 0), variable.path


def params_of(block):
    """The block's weights by sublayer name (the checkpoint blob names of DESIGN.md §2), as the reference expects."""
    numpy = keras.ops.convert_to_numpy
    params = {}
    for name in ("theta", "phi", "g", "out"):
        layer = getattr(block, name, None)
        if layer is not None:
            params[f"{name}_kernel"] = numpy(layer.kernel)
            params[f"{name}_bias"] = None if layer.bias is None else numpy(layer.bias)
    if block.mode == "concatenate":
        params["concat_kernel"] = numpy(block.concat_project.kernel)
    if block.normalization == "batch":
        bn = block.bn
        params.update(
            bn_gamma=numpy(bn.gamma), bn_beta=numpy(bn.beta), bn_mean=numpy(bn.moving_mean),
            bn_var=numpy(bn.moving_variance),
        )
    elif block.normalization == "affine":
        params.update(bn_scale=numpy(block.bn.scale), bn_bias=numpy(block.bn.bias))
    return params


def reference_of(block, x, **overrides):
    kwargs = dict(
        mode=block.mode, compression=block.compression, pool_position=block.pool_position, use_scale=block.use_scale,
        normalization=block.normalization, add_residual=block.add_residual,
        temporal_group_size=block.temporal_group_size,
    )
    kwargs.update(overrides)
    return nonlocal_reference(x, params_of(block), **kwargs)


def assert_close(actual, expected, rtol=1e-5):
    """Element-wise close, with the absolute slack scaled to the magnitude of the expected tensor."""
    actual = np.asarray(actual, dtype=np.float64)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


def random_input(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def built_block(shape, seed=1, **kwargs):
    block = NonLocalBlock(**kwargs)
    block.build(shape)
    randomize(block, seed)
    return block


def check_against_reference(block, x):
    out = keras.ops.convert_to_numpy(block(x, training=False))
    ref = reference_of(block, x)
    # The non-local branch must matter, otherwise the comparison would not test it.
    assert np.abs(ref - x).max() > 0.1 * np.abs(x).max()
    assert_close(out, ref)


# ------------------------------------------------------------------------------------------- numpy reference grid
@pytest.mark.parametrize("pool_position", ["input", "projection"])
@pytest.mark.parametrize("compression", [None, 1, 2, "tuple"])
@pytest.mark.parametrize("rank", [3, 4, 5])
@pytest.mark.parametrize("mode", MODES)
def test_matches_reference(mode, rank, compression, pool_position):
    if compression == "tuple":
        compression = POOL_TUPLES[rank]
    shape = SHAPES[rank]
    intermediate_dim = 4 if rank == 4 else None  # default C // 2 = 3 elsewhere
    block = built_block(
        shape, mode=mode, compression=compression, pool_position=pool_position, intermediate_dim=intermediate_dim
    )
    check_against_reference(block, random_input(shape))


@pytest.mark.parametrize("use_scale", [True, False])
@pytest.mark.parametrize("normalization", ["affine", None, "batch"])
@pytest.mark.parametrize("mode", MODES)
def test_flavours_match_reference(mode, normalization, use_scale):
    """Normalization variants, scale on/off, and the mmaction2 flavour (pool after the projections, unbiased `out`)."""
    shape = SHAPES[5]
    block = built_block(
        shape, mode=mode, normalization=normalization, use_scale=use_scale, out_use_bias=False,
        pool_position="projection",
    )
    assert block.out.bias is None
    check_against_reference(block, random_input(shape, seed=2))


@pytest.mark.parametrize("mode", ["embedded", "dot", "softmax", "dot_product", "embedded_gaussian", "concatenation"])
def test_aliases_and_unbiased_projections(mode):
    shape = SHAPES[4]
    block = built_block(shape, mode=mode, use_bias=False, add_residual=False)
    assert all(getattr(block, name).bias is None for name in ("theta", "phi", "g", "out"))
    x = random_input(shape, seed=3)
    assert_close(keras.ops.convert_to_numpy(block(x)), reference_of(block, x))


@pytest.mark.parametrize("pool_position", ["input", "projection"])
@pytest.mark.parametrize("mode", MODES)
def test_temporal_groups_match_reference(mode, pool_position):
    shape = (2, 6, 4, 3, 4)
    x = random_input(shape, seed=4)
    for group in (2, 3):
        block = built_block(shape, mode=mode, pool_position=pool_position, temporal_group_size=group)
        out = keras.ops.convert_to_numpy(block(x))
        ref = reference_of(block, x)  # each group of frames computed separately
        assert_close(out, ref)
        # Grouping really changes the result (the groups do not see each other).
        assert np.abs(ref - reference_of(block, x, temporal_group_size=None)).max() > 1e-3
        # Also with T, H and W unknown when traced.
        assert_close(keras.ops.convert_to_numpy(_symbolic(block, 5, channels=shape[-1])(x)), ref)


# ------------------------------------------------------------------------------------- pytorchvideo (PyTorch) reference
@pytest.mark.parametrize("pool", [(1, 2, 2), (2, 2, 2), (1, 1, 1)])
@pytest.mark.parametrize("mode", ["embedded", "dot"])
def test_matches_pytorchvideo(mode, pool):
    ptv = pytest.importorskip("tests.ptv")
    torch = ptv.torch
    from pytorchvideo.layers.nonlocal_net import NonLocal

    shape = (2, 4, 5, 4, 8)
    channels, dim = shape[-1], 4
    block = built_block(shape, mode=mode, compression=pool, intermediate_dim=dim)
    params = params_of(block)

    def conv(name, c_in, c_out):
        layer = torch.nn.Conv3d(c_in, c_out, kernel_size=1)
        with torch.no_grad():
            # Dense kernel (C_in, C_out) -> Conv3d weight (C_out, C_in, 1, 1, 1).
            layer.weight.copy_(torch.from_numpy(params[f"{name}_kernel"].T.copy()).reshape(c_out, c_in, 1, 1, 1))
            layer.bias.copy_(torch.from_numpy(params[f"{name}_bias"]))
        return layer

    norm = torch.nn.BatchNorm3d(channels, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(params["bn_gamma"]))
        norm.bias.copy_(torch.from_numpy(params["bn_beta"]))
        norm.running_mean.copy_(torch.from_numpy(params["bn_mean"]))
        norm.running_var.copy_(torch.from_numpy(params["bn_var"]))
    reference = NonLocal(
        conv_theta=conv("theta", channels, dim), conv_phi=conv("phi", channels, dim), conv_g=conv("g", channels, dim),
        conv_out=conv("out", dim, channels),
        pool=torch.nn.MaxPool3d(pool, stride=pool) if max(pool) > 1 else None,
        norm=norm, instantiation="softmax" if mode == "embedded" else "dot_product",
    ).eval()

    x = random_input(shape, seed=5)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x).permute(0, 4, 1, 2, 3))  # NTHWC -> NCTHW
    expected = expected.permute(0, 2, 3, 4, 1).double().numpy()  # NCTHW -> NTHWC
    assert np.abs(expected - x).max() > 0.1 * np.abs(x).max()
    assert_close(keras.ops.convert_to_numpy(block(x, training=False)), expected)


# ------------------------------------------------------------------------------------------------ behaviour
@pytest.mark.parametrize("normalization", ["batch", "affine", None])
@pytest.mark.parametrize("mode", MODES)
def test_fresh_block_is_identity(mode, normalization):
    for rank, seed in ((5, 6), (3, 7)):
        x = random_input(SHAPES[rank], seed=seed) * 10
        block = NonLocalBlock(mode=mode, normalization=normalization)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(block(x, training=False)), x)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(block(x, training=True)), x)


def _gradients(block, x, training):
    import tensorflow as tf

    upstream = tf.constant(np.random.default_rng(8).normal(size=x.shape).astype("float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(block(x, training=training) * upstream)
    return dict(zip([v.path for v in block.trainable_weights], tape.gradient(loss, block.trainable_weights)))


@pytest.mark.parametrize("normalization", ["batch", "affine", None])
@pytest.mark.parametrize("mode", MODES)
def test_gradients_reach_every_weight(mode, normalization):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("GradientTape is TensorFlow-only")
    shape = SHAPES[5]
    block = built_block(shape, mode=mode, normalization=normalization)
    x = random_input(shape, seed=9)
    expected = {"theta", "phi", "g", "out"} - ({"theta", "phi"} if mode == "gaussian" else set())
    expected |= {"concat_project"} if mode == "concatenate" else set()
    expected |= {"bn"} if normalization else set()
    grads = _gradients(block, x, training=False)
    assert {path.split("/")[-2] for path in grads} == expected
    for path, grad in grads.items():
        assert grad is not None, path
        magnitude = np.abs(keras.ops.convert_to_numpy(grad)).max()
        if mode == "embedded" and path.endswith("phi/bias"):
            # A constant shift of every key adds theta_i . b to a whole softmax row: mathematically zero gradient.
            assert magnitude < 1e-4, path
        else:
            assert magnitude > 1e-6, path
    # In training mode the batch statistics are used, and the gradient still reaches gamma and the projections.
    grads = _gradients(block, x, training=True)
    assert all(g is not None for g in grads.values())


@pytest.mark.parametrize("mode", MODES)
def test_keras_save_load_round_trip(mode, tmp_path):
    shape = SHAPES[5]
    inputs = keras.Input(shape[1:])
    block = NonLocalBlock(
        mode=mode, compression=POOL_TUPLES[5], pool_position="projection", out_use_bias=False, chunk_size=7,
        name="nonlocal_conv3_0",
    )
    model = keras.Model(inputs, block(inputs))
    randomize(block, seed=10)
    x = random_input(shape, seed=11)
    expected = keras.ops.convert_to_numpy(model(x))
    path = tmp_path / "model.keras"
    model.save(path)
    for kwargs in ({}, {"safe_mode": True}):
        loaded = keras.models.load_model(path, **kwargs)
        layer = loaded.get_layer("nonlocal_conv3_0")
        assert isinstance(layer, NonLocalBlock)
        assert layer.get_config() == block.get_config()
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)), expected)
    assert_close(expected, reference_of(block, x))


def _symbolic(fn, rank, channels=CHANNELS):
    """`fn` traced once with unknown batch and position sizes (TensorFlow), or `fn` itself on other backends."""
    if keras.backend.backend() != "tensorflow":
        return fn
    import tensorflow as tf

    return tf.function(fn, input_signature=[tf.TensorSpec((None,) * (rank - 1) + (channels,), tf.float32)])


@pytest.mark.parametrize("mode", MODES)
def test_functional_model_with_unknown_sizes(mode):
    inputs = keras.Input((None, None, None, CHANNELS))
    block = NonLocalBlock(mode=mode, pool_position="input" if mode in ("embedded", "dot") else "projection")
    model = keras.Model(inputs, block(inputs))
    assert model.output_shape == (None, None, None, None, CHANNELS)
    randomize(block, seed=12)
    traced = _symbolic(lambda t: model(t, training=False), 5)
    for size in ((4, 4, 4), (2, 6, 5), (1, 3, 2), (3, 2, 7)):
        x = random_input((2,) + size + (CHANNELS,), seed=sum(size))
        ref = reference_of(block, x)
        assert_close(keras.ops.convert_to_numpy(model(x)), ref)
        assert_close(keras.ops.convert_to_numpy(traced(x)), ref)


@pytest.mark.parametrize(
    "conv, shape",
    [(keras.layers.Conv1D, (7, 3)), (keras.layers.Conv2D, (5, 4, 3)), (keras.layers.Conv3D, (4, 5, 3, 3))],
)
def test_sequential_after_conv(conv, shape):
    block = NonLocalBlock(mode="embedded", name="nl")
    model = keras.Sequential([keras.Input(shape), conv(CHANNELS, 3, padding="same"), block])
    assert model.output_shape == (None,) + shape[:-1] + (CHANNELS,)
    randomize(block, seed=13)
    x = random_input((2,) + shape, seed=14)
    features = keras.ops.convert_to_numpy(model.layers[0](x))
    assert_close(keras.ops.convert_to_numpy(model.predict(x, verbose=0)), reference_of(block, features))


@pytest.mark.parametrize("mode", MODES)
def test_chunked_equals_unchunked(mode):
    shape = (2, 3, 4, 5, CHANNELS)  # N = 60 query positions
    x = random_input(shape, seed=15)
    full = built_block(shape, mode=mode, temporal_group_size=None)
    expected = keras.ops.convert_to_numpy(full(x))
    assert_close(expected, reference_of(full, x))
    for chunk in (1, 7, 16, 60, 1000):  # 7 and 16 do not divide 60
        block = NonLocalBlock(mode=mode, chunk_size=chunk)
        block.build(shape)
        block.set_weights(full.get_weights())
        assert_close(keras.ops.convert_to_numpy(block(x)), expected, rtol=1e-6)
        if chunk not in (7, 16):
            continue
        traced = _symbolic(lambda t, block=block: block(t), 5)  # unknown N: the chunk count is computed at run time
        for size in ((3, 4, 5), (1, 3, 3)):
            y = random_input((1,) + size + (CHANNELS,), seed=16)
            assert_close(keras.ops.convert_to_numpy(traced(y)), keras.ops.convert_to_numpy(full(y)), rtol=1e-6)


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"mode": "softmax", "compression": (1, 2, 2), "chunk_size": 64},
        {"mode": "dot_product", "intermediate_dim": 16, "compression": None, "use_bias": False},
        {"mode": "gaussian", "pool_position": "projection", "use_scale": False, "out_use_bias": False},
        {"mode": "concatenation", "normalization": "affine", "temporal_group_size": 4, "add_residual": False},
        {"normalization": None, "kernel_initializer": "he_normal", "name": "nl", "trainable": False},
    ],
)
def test_get_config_round_trip(config):
    block = NonLocalBlock(**config)
    restored = NonLocalBlock.from_config(block.get_config())
    assert restored.get_config() == block.get_config()
    assert restored.mode in MODES
    if "compression" in config and config["compression"] is not None:
        assert tuple(restored.get_config()["compression"]) == config["compression"]


# -------------------------------------------------------------------------------------------------- mixed precision
@pytest.fixture(params=["mixed_float16", "mixed_bfloat16"])
def mixed_policy(request):
    previous = keras.mixed_precision.global_policy()
    try:
        keras.mixed_precision.set_global_policy(request.param)
        yield request.param
    finally:
        keras.mixed_precision.set_global_policy(previous)


# Unit roundoff u of the compute dtype (half the spacing of the numbers in [1, 2)).
UNIT_ROUNDOFF = {"mixed_float16": 2.0**-11, "mixed_bfloat16": 2.0**-8}
FLOAT16_MAX = 65504.0
# Per mode: std of the random projection weights, and factors on the concat_project and out kernels. Chosen so that
# an intermediate leaves the float16 range (asserted below) while the block output stays inside it.
MIXED_WEIGHTS = {"embedded": (0.15, 1.0, 1.0), "dot": (0.02, 1.0, 1.0), "gaussian": (0.1, 1.0, 1.0),
                 "concatenate": (0.1, 8.0, 0.1)}
# Allowed error, in units of u, relative to the largest float32 output. Each rounding to the compute dtype (the
# inputs, the kernels, theta/phi/g, the output) costs up to u relative, and the chain has about five of them: a few u.
# In the softmax modes the logits reach ~1e5, so their rounding (u * |logit|, hundreds) also moves weight between
# nearly tied keys. Measured: at most 3.8 u for float16 and 14.2 u for bfloat16 (embedded without residual).
ALLOWED_U = {"mixed_float16": 10, "mixed_bfloat16": 20}


@pytest.mark.parametrize("mode", MODES)
def test_mixed_precision_large_inputs(mode, mixed_policy):
    shape = (2, 4, 4, 4, CHANNELS)
    x = np.random.default_rng(17).uniform(300.0, 1000.0, shape).astype("float32")
    scale, concat_factor, out_factor = MIXED_WEIGHTS[mode]
    for add_residual in (False, True):
        reference = NonLocalBlock(mode=mode, add_residual=add_residual, dtype="float32")
        reference.build(shape)
        randomize(reference, seed=18, scale=scale)
        reference.out.kernel.assign(reference.out.kernel * out_factor)
        if mode == "concatenate":
            reference.concat_project.kernel.assign(reference.concat_project.kernel * concat_factor)
        mixed = NonLocalBlock(mode=mode, add_residual=add_residual)
        mixed.build(shape)
        mixed.set_weights(reference.get_weights())
        expected = keras.ops.convert_to_numpy(reference(x, training=False)).astype(np.float64)
        out = keras.ops.convert_to_numpy(mixed(x, training=False))
        assert out.dtype == np.dtype(mixed_policy.split("_")[1])
        out = out.astype(np.float64)
        assert np.all(np.isfinite(out))
        assert np.abs(expected).max() < FLOAT16_MAX
        # A real test: float16 overflows in the pairwise term theta_i . phi_j / x_i . x_j (embedded, Gaussian) or in
        # y (dot, concatenation), should the layer compute them in the compute dtype.
        intermediates = {}
        assert_close(expected, reference_of(reference, x, intermediates=intermediates))
        key = "y" if mode in ("dot", "concatenate") else "pairwise"
        assert max(np.abs(t).max() for t in intermediates[key]) > FLOAT16_MAX
        error_u = np.abs(out - expected).max() / np.abs(expected).max() / UNIT_ROUNDOFF[mixed_policy]
        assert error_u <= ALLOWED_U[mixed_policy]


# ---------------------------------------------------------------------------------------------------------- errors
def _raises(fn, received):
    with pytest.raises(ValueError, match=re.escape(received)):
        fn()


@pytest.mark.parametrize(
    "kwargs, received",
    [
        ({"mode": "bogus"}, "mode='bogus'"),
        ({"pool_position": "after"}, "pool_position='after'"),
        ({"normalization": "group"}, "normalization='group'"),
        ({"intermediate_dim": 0}, "intermediate_dim=0"),
        ({"intermediate_dim": -4}, "intermediate_dim=-4"),
        ({"intermediate_dim": 2.5}, "intermediate_dim=2.5"),
        ({"chunk_size": 0}, "chunk_size=0"),
        ({"chunk_size": -1}, "chunk_size=-1"),
        ({"temporal_group_size": 0}, "temporal_group_size=0"),
        ({"compression": 0}, "compression=0"),
        ({"compression": (2, 0)}, "compression=(2, 0)"),
    ],
)
def test_bad_arguments(kwargs, received):
    _raises(lambda: NonLocalBlock(**kwargs), received)


@pytest.mark.parametrize(
    "kwargs, shape, received",
    [
        ({}, (2, 8), "input_shape=(2, 8)"),
        ({}, (1, 2, 2, 2, 2, 8), "input_shape=(1, 2, 2, 2, 2, 8)"),
        ({}, (None, 4, 4, None), "input_shape=(None, 4, 4, None)"),
        ({"compression": 4}, (2, 4, 3, 3, 8), "compression=4"),
        ({"compression": 3}, (2, 2, 8), "compression=3"),
        ({"compression": (3, 1, 1)}, (2, 2, 4, 4, 8), "compression=(3, 1, 1)"),
        ({"compression": (2, 2)}, (2, 4, 4, 4, 8), "compression=(2, 2)"),
        ({"compression": (1, 2, 2)}, (2, 4, 4, 8), "compression=(1, 2, 2)"),
        ({"temporal_group_size": 2}, (2, 5, 4, 4, 8), "temporal_group_size=2"),
        ({"temporal_group_size": 2}, (2, 4, 4, 8), "temporal_group_size=2"),
    ],
)
def test_bad_inputs(kwargs, shape, received):
    block = NonLocalBlock(**kwargs)
    _raises(lambda: block(keras.Input(shape[1:], batch_size=shape[0])), received)
    if None not in shape:
        block = NonLocalBlock(**kwargs)
        _raises(lambda: block(np.zeros(shape, "float32")), received)

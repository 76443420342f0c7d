"""Attention maps: the recomputed weights against a numpy transcription of the paper's f/C(x) for every mode, and
against the block itself (the weights must rebuild the block's output at the query), plus drawing and errors."""
import math

import keras
import numpy as np
import pytest
from PIL import Image

from nonlocal_zoo import attention
from nonlocal_zoo.layers import NonLocalBlock

FRAMES, SIZE, CHANNELS = 4, 8, 8


def _tiny_model(strides=(1, 1, 1), seed=0, **block_kwargs):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((FRAMES, SIZE, SIZE, 3))
    x = keras.layers.Conv3D(CHANNELS, 3, strides=strides, padding="same", name="stem")(inputs)
    x = NonLocalBlock(name="nl", kernel_initializer=keras.initializers.RandomNormal(stddev=0.3), **block_kwargs)(x)
    outputs = keras.layers.Dense(3, name="pred")(keras.layers.GlobalAveragePooling3D()(x))
    model = keras.Model(inputs, outputs)
    block = model.get_layer("nl")
    rng = np.random.default_rng(seed)
    if block.normalization is not None:  # a fresh block is the identity (gamma 0): make bn(out(y)) count
        block.bn.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in block.bn.get_weights()])
    return model


def _clip(seed=1):
    return np.random.default_rng(seed).integers(0, 256, (FRAMES, SIZE, SIZE, 3)).astype(np.uint8)


def _np_pool(x, pool):
    """Valid max pooling of (T, H, W, C) by kernel = stride `pool` (numpy)."""
    if pool is None:
        return x
    t, h, w = (n // p for n, p in zip(x.shape[:3], pool))
    x = x[: t * pool[0], : h * pool[1], : w * pool[2]]
    return x.reshape(t, pool[0], h, pool[1], w, pool[2], -1).max(axis=(1, 3, 5))


def _dense(layer, x):
    kernel, *bias = [np.asarray(v, np.float64) for v in layer.get_weights()]
    return x @ kernel + (bias[0] if bias else 0.0)


def _reference_weights(block, x, query):
    """f(x_i, x_j) / C(x) of eq. (1) for query i over the pooled keys j, from the block's weights (numpy)."""
    t, y, w = query
    offset = 0
    if block.temporal_group_size:
        offset = (t // block.temporal_group_size) * block.temporal_group_size
        x = x[offset:offset + block.temporal_group_size]
        t -= offset
    pool = block.pool_size
    if block.mode == "gaussian":
        q, keys = x[t, y, w], _np_pool(x, pool)
    else:
        q = _dense(block.theta, x[t, y, w])
        if block.pool_position == "input":
            keys = _dense(block.phi, _np_pool(x, pool))
        else:
            keys = _np_pool(_dense(block.phi, x), pool)
    grid = keys.shape[:3]
    keys = keys.reshape(-1, keys.shape[-1])
    if block.mode == "concatenate":
        v = np.asarray(block.concat_project.get_weights()[0], np.float64)[:, 0]
        f = np.maximum(v[: len(q)] @ q + keys @ v[len(q):], 0)
        return (f / len(keys)).reshape(grid), offset
    logits = keys @ q
    if block.mode == "dot":
        return (logits / len(keys)).reshape(grid), offset
    if block.use_scale:
        logits = logits / math.sqrt(keys.shape[-1])
    e = np.exp(logits - logits.max())
    return (e / e.sum()).reshape(grid), offset


CASES = [
    dict(mode="embedded"),
    dict(mode="embedded", compression=None),
    dict(mode="embedded", pool_position="projection", use_scale=False),
    dict(mode="embedded", compression=(2, 2, 2)),
    dict(mode="embedded", temporal_group_size=2),
    dict(mode="gaussian"),
    dict(mode="gaussian", use_scale=False, compression=None),
    dict(mode="dot"),
    dict(mode="dot", pool_position="projection", temporal_group_size=2),
    dict(mode="concatenate"),
    dict(mode="concatenate", compression=None, normalization="affine"),
    dict(mode="embedded", normalization=None),
]


@pytest.mark.parametrize("kwargs", CASES, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
def test_weights_match_equation_and_rebuild_block_output(kwargs):
    model = _tiny_model(**kwargs)
    block = model.get_layer("nl")
    clip = _clip()
    query = (3, 5, 2)
    att = attention.attention_map(model, clip, query)
    assert att.block == "nl" and att.mode == block.mode and att.feature_query == query

    features = keras.Model(model.input, block.input)(clip[None].astype("float32"))  # (1, T, H, W, C)
    x = np.asarray(features, np.float64)[0]  # (T, H, W, C)
    expected, offset = _reference_weights(block, x, query)
    assert att.frame_offset == offset
    np.testing.assert_allclose(att.weights, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    if block.mode in ("embedded", "gaussian"):
        np.testing.assert_allclose(att.weights.sum(), 1.0, rtol=1e-6)

    # The weights are the block's: y_i = sum_j w_j g_j, z_i = x_i + bn(out(y_i)) equals the block's output at i.
    xs = x[offset:offset + block.temporal_group_size] if block.temporal_group_size else x
    if block.pool_position == "input":
        values = _dense(block.g, _np_pool(xs, block.pool_size))
    else:
        values = _np_pool(_dense(block.g, xs), block.pool_size)
    y = att.weights.reshape(-1) @ values.reshape(-1, values.shape[-1])  # (M,) x (M, D) -> (D,)
    z = _dense(block.out, y)
    if block.normalization == "batch":
        gamma, beta, mean, var = [np.asarray(v, np.float64) for v in block.bn.get_weights()]
        z = gamma * (z - mean) / np.sqrt(var + block.bn.epsilon) + beta
    elif block.normalization == "affine":
        scale, bias = [np.asarray(v, np.float64) for v in block.bn.get_weights()]
        z = scale * z + bias
    output = np.asarray(keras.Model(model.input, block.output)(clip[None].astype("float32")))[0]
    np.testing.assert_allclose(x[query] + z, output[query], rtol=1e-4, atol=1e-4)
    assert att.predictions.shape == (3,)


def test_query_maps_to_feature_grid_and_nested_models():
    model = _tiny_model(strides=(1, 2, 2), compression=None)
    clip = _clip()
    att = attention.attention_map(model, clip, (1, 5, 6))
    assert att.feature_shape == (FRAMES, SIZE // 2, SIZE // 2)
    assert att.feature_query == (1, 2, 3)  # (t, 5 * 4 // 8, 6 * 4 // 8)
    inputs = keras.Input((FRAMES, SIZE, SIZE, 3))
    outer = keras.Model(inputs, model(inputs), name="outer")
    assert list(attention.nonlocal_blocks(outer)) == ["nl"]
    nested = attention.attention_map(outer, clip, (1, 5, 6), block=0)
    np.testing.assert_allclose(nested.weights, att.weights, rtol=1e-6)


def test_frame_weights_upsample_key_grid_and_respect_groups():
    model = _tiny_model(compression=(2, 2, 2), temporal_group_size=None)
    att = attention.attention_map(model, _clip(), (0, 1, 1))
    assert att.weights.shape == (2, 4, 4)
    heat = att.frame_weights()
    assert heat.shape == (FRAMES, SIZE, SIZE)
    kt, ky, kx = np.unravel_index(np.argmax(att.weights), att.weights.shape)
    t, y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert t // 2 == kt and y // 2 == ky and x // 2 == kx  # key cell (kt, ky, kx) covers frames 2kt..2kt+1 etc.
    assert att.top_keys(1)[0][1:] == (2 * kt, (ky + 0.5) * 2, (kx + 0.5) * 2)

    grouped = attention.attention_map(_tiny_model(temporal_group_size=2), _clip(), (3, 1, 1))
    assert grouped.frame_offset == 2 and grouped.weights.shape == (2, 4, 4)
    heat = grouped.frame_weights()
    assert np.all(heat[:2] == 0) and heat[2:].max() > 0  # frames 0-1 are outside the query's group


def test_save_attention_png_and_gif_sizes(tmp_path):
    att = attention.attention_map(_tiny_model(), _clip(), (2, 3, 4))
    paths = attention.save_attention(att, tmp_path / "out", top_k=4)
    scale = math.ceil(160 / SIZE)  # frames are upscaled to >= 160 px
    with Image.open(paths["png"]) as png:
        assert png.size == (FRAMES * SIZE * scale + (FRAMES - 1) * 2, SIZE * scale)
    with Image.open(paths["gif"]) as gif:
        assert gif.n_frames == FRAMES and gif.size == (SIZE * scale, SIZE * scale)
    sheet = attention.contact_sheet(np.zeros((10, 5, 6, 3), np.uint8), columns=4, gap=1)
    assert sheet.shape == (3 * 5 + 2, 4 * 6 + 3, 3)


def test_default_query_finds_the_moving_object():
    clip = np.zeros((5, 32, 32, 3), np.uint8)
    for t in range(5):
        clip[t, 10:14, 4 + 5 * t:8 + 5 * t] = 255
    t, y, x = attention.default_query(clip)
    assert t == 2 and 10 <= y < 14 and 14 <= x < 18


def test_bad_inputs_raise_clear_errors():
    model = _tiny_model()
    with pytest.raises(ValueError, match="query"):
        attention.attention_map(model, _clip(), (4, 0, 0))
    with pytest.raises(ValueError, match="Unknown non-local block.*nope"):
        attention.attention_map(model, _clip(), (0, 0, 0), block="nope")
    with pytest.raises(ValueError, match="out of range"):
        attention.attention_map(model, _clip(), (0, 0, 0), block=3)
    plain = keras.Sequential([keras.Input((2, 4, 4, 3)), keras.layers.Conv3D(2, 1)])
    with pytest.raises(ValueError, match="no NonLocalBlock"):
        attention.attention_map(plain, np.zeros((2, 4, 4, 3), np.uint8), (0, 0, 0))
    for text in ("1,2", "a,b,c", "1,-2,3"):
        with pytest.raises(ValueError, match="Received: query"):
            attention.parse_query(text)
    assert attention.parse_query(" 1, 2,3") == (1, 2, 3)

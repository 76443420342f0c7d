"""`nonlocal_chunk_size="auto"` for whole backbones: validated by the architecture check, passed to every non-local
block with its `nonlocal_memory_budget_mb`, weight-neutral, kept in the config, and exact: the chunked backbone equals
the unchunked one bit for bit (same weights), on a budget small enough that every block really runs in steps."""
import keras
import numpy as np
import pytest

from nonlocal_zoo.layers.nonlocal_block import NonLocalBlock
from nonlocal_zoo.models.arch import WEIGHT_NEUTRAL_KEYS, normalize_arch
from nonlocal_zoo.presets import get_preset
from nonlocal_zoo.tasks import NonLocalResNetBackbone, resolve

CLIP = (8, 64, 64, 3)  # tiny_nl_i3d: res3 (4, 8, 8) = 256 queries x 256 keys, res4 (4, 4, 4) = 64 x 64
BUDGET_MB = 0.01  # 10 kB: 9 query rows of res3 (1 kB a row), 39 of res4's 64 (256 B a row)


def _arch(**overrides):
    return {**get_preset("tiny_nl_i3d")["arch"], **overrides}


def _randomize(model, seed=0):
    """Every normalization and non-local weight random (fresh ones make each non-local block the identity: its
    output BN starts at gamma 0); the convolutions keep their random He initialisation."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape, path = tuple(v.shape), v.path
        if path.endswith(("gamma", "moving_variance")):
            value = rng.uniform(0.5, 1.5, shape)
        elif path.endswith(("beta", "moving_mean", "bias")):
            value = rng.normal(0.0, 0.2, shape)
        elif "nonlocal" in path:
            value = rng.normal(0.0, 1.0 / np.sqrt(shape[0]), shape)
        else:
            continue
        v.assign(value.astype("float32"))


def _blocks(model):
    return [layer for layer in model.layers if isinstance(layer, NonLocalBlock)]


def test_auto_backbone_equals_unchunked_exactly():
    plain = NonLocalResNetBackbone(_arch(), clip_shape=CLIP)
    auto = NonLocalResNetBackbone(_arch(nonlocal_chunk_size="auto", nonlocal_memory_budget_mb=BUDGET_MB),
                                  clip_shape=CLIP)
    _randomize(plain)
    auto.set_weights(plain.get_weights())
    x = np.random.default_rng(1).normal(size=(3,) + CLIP).astype("float32")
    batch = len(x)
    blocks = _blocks(auto)
    assert len(blocks) == 2
    for block, reference in zip(blocks, _blocks(plain)):
        assert (block.chunk_size, block.memory_budget_mb) == ("auto", BUDGET_MB)
        shape = (batch,) + tuple(block.input.shape[1:])
        n = int(np.prod(shape[1:-1]))  # compression None: as many keys as queries
        assert reference.affinity_buffer_bytes(shape) == 4 * batch * n * n
        # part of one clip's queries per step: it really chunks
        assert block.affinity_buffer_bytes(shape) <= BUDGET_MB * 1e6 < 4 * n * n
    # the non-local blocks do change the result (else the equality below would prove nothing)
    y_plain = np.asarray(plain.predict_on_batch(x))
    no_nl = NonLocalResNetBackbone(_arch(nonlocal_blocks=[[], [], []]), clip_shape=CLIP)
    for layer in no_nl.layers:
        if layer.weights:
            layer.set_weights(plain.get_layer(layer.name).get_weights())
    assert np.abs(y_plain - np.asarray(no_nl.predict_on_batch(x))).max() > 1e-2
    y_auto = np.asarray(auto.predict_on_batch(x))
    np.testing.assert_array_equal(y_auto, y_plain)


def test_auto_in_config_and_resolver():
    arch = normalize_arch(**_arch(nonlocal_chunk_size="auto", nonlocal_memory_budget_mb=BUDGET_MB))
    assert arch["nonlocal_chunk_size"] == "auto" and arch["nonlocal_memory_budget_mb"] == BUDGET_MB
    assert normalize_arch()["nonlocal_memory_budget_mb"] == NonLocalBlock().memory_budget_mb == 64
    assert {"nonlocal_chunk_size", "nonlocal_memory_budget_mb"} <= set(WEIGHT_NEUTRAL_KEYS)
    clf = resolve("tiny_nl_i3d", weights=None, nonlocal_chunk_size="auto", nonlocal_memory_budget_mb=BUDGET_MB)
    config = keras.saving.serialize_keras_object(clf)
    again = keras.saving.deserialize_keras_object(config)
    for model in (clf, again):
        assert model.backbone.arch["nonlocal_chunk_size"] == "auto"
        assert [(b.chunk_size, b.memory_budget_mb) for b in _blocks(model)] == [("auto", BUDGET_MB)] * 2
    # same weights as the unchunked model: the head and every variable path match
    plain = resolve("tiny_nl_i3d", weights=None)
    assert [v.path for v in plain.weights] == [v.path for v in clf.weights]


@pytest.mark.parametrize("key, value", [("nonlocal_chunk_size", "automatic"), ("nonlocal_chunk_size", 0),
                                        ("nonlocal_chunk_size", True), ("nonlocal_memory_budget_mb", 0),
                                        ("nonlocal_memory_budget_mb", "64"), ("nonlocal_memory_budget_mb", float("nan"))])
def test_bad_chunk_arguments_are_refused(key, value):
    with pytest.raises(ValueError, match=key):
        normalize_arch(**{key: value})

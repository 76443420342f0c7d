"""Backbone builder and create_model: parameter counts (DESIGN.md §3), stage shapes per geometry, non-local
placement, temporal kernels, Caffe2 layer names, heads, serialization and argument validation.

Full-size models are only built (symbolically, never run); anything that runs uses tiny widths or clips.
"""
import functools

import keras
import numpy as np
import pytest

from nonlocal_zoo.layers import Affine, NonLocalBlock
from nonlocal_zoo.models import (
    add_classifier_head,
    build_backbone,
    build_feature_extractor,
    create_model,
    get_stage_outputs,
    nl_resnet50_3d,
    preset_of,
)
from nonlocal_zoo.models.arch import feature_shapes
from nonlocal_zoo.presets import get_preset

# DESIGN.md §3 (trainable, 400 classes) and research/architecture.md §1.9 (BN running statistics).
DESIGN_COUNTS = {
    "c2d_r50": (24_327_632, 53_120),
    "c2d_nl5_r50": (31_686_096, 61_312),
    "i3d_r50": (28_043_472, 53_120),
    "i3d_nl5_r50": (35_401_936, 61_312),
    "c2d_r101": (43_319_760, 105_344),
    "i3d_r101": (51_754_192, 105_344),
    "i3d_nl5_r101": (59_112_656, 113_536),
    # Not tabulated in DESIGN.md: C2D R101 + 2 res3 NL blocks (526,592 each) + 3 res4 blocks (2,101,760 each),
    # per-block counts from architecture.md §1.9.
    "c2d_nl5_r101": (43_319_760 + 2 * 526_592 + 3 * 2_101_760, 105_344 + 2 * 1_024 + 3 * 2_048),
}
NL5_R50 = {"nonlocal_conv3_1", "nonlocal_conv3_3", "nonlocal_conv4_1", "nonlocal_conv4_3", "nonlocal_conv4_5"}
NL5_R101 = {"nonlocal_conv3_1", "nonlocal_conv3_3", "nonlocal_conv4_6", "nonlocal_conv4_13", "nonlocal_conv4_20"}
# DESIGN.md §3 I3D: 1 = conv "a" is 3x1x1.
I3D_INFLATE = {
    50: [[1, 1, 1], [1, 0, 1, 0], [1, 0, 1, 0, 1, 0], [0, 1, 0]],
    101: [[1, 1, 1], [1, 0, 1, 0], [1 - i % 2 for i in range(23)], [0, 1, 0]],
}

# Tiny architecture overrides (widths / depths) for tests that run the network.
TINY = {
    "stem_width": 8,
    "stage_widths": [4, 8, 8, 16],
    "stage_depths": [1, 2, 2, 1],
    "temporal_kernels": [[3], [3, 1], [3, 1], [1]],
    "nonlocal_blocks": [[], [1], [], []],  # res4 maps are 2x2 at 32x32: pooled keys would be a single position
}


@functools.lru_cache(maxsize=None)
def full_model(preset, shape):
    """Full-size model built once per test session (symbolic only)."""
    return create_model(preset, input_shape=shape)


def counts(model):
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    non_trainable = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    return trainable, non_trainable


def nonlocal_names(model):
    return {layer.name for layer in model.layers if isinstance(layer, NonLocalBlock)}


# ---------------------------------------------------------------------------------------------- full-size structure
@pytest.mark.parametrize("preset", sorted(DESIGN_COUNTS))
def test_parameter_counts_equal_design(preset):
    model = full_model(preset, (32, 224, 224, 3))
    assert counts(model) == DESIGN_COUNTS[preset]


@pytest.mark.parametrize("preset", ["i3d_nl5_r50_8x8_kinetics400", "i3d_nl5_r50_8x8_kinetics400_pyslowfast"])
def test_parameter_counts_do_not_depend_on_geometry(preset):
    assert counts(full_model(preset, (8, 224, 224, 3))) == DESIGN_COUNTS["i3d_nl5_r50"]


# architecture.md §1.2: (T, H) after each part at a 224 crop.
STAGE_SHAPES = {
    # paper geometry, 32x2: conv1 t-stride 2, pool1 2x3x3 stride 2 unpadded -> 55
    ("i3d_nl5_r50", 32): {"conv1": (16, 112), "pool1": (8, 55), "res2": (8, 55), "pool2": (4, 55), "res3": (4, 28),
                          "res4": (4, 14), "res5": (4, 7)},
    # repo geometry, 8x8: conv1 t-stride 1, pool1 1x3x3 unpadded -> 55
    ("i3d_nl5_r50_8x8_kinetics400", 8): {"conv1": (8, 112), "pool1": (8, 55), "res2": (8, 55), "pool2": (4, 55),
                                         "res3": (4, 28), "res4": (4, 14), "res5": (4, 7)},
    # PySlowFast: padded pool1 -> 56
    ("i3d_nl5_r50_8x8_kinetics400_pyslowfast", 8): {"conv1": (8, 112), "pool1": (8, 56), "res2": (8, 56),
                                                    "pool2": (4, 56), "res3": (4, 28), "res4": (4, 14), "res5": (4, 7)},
}


@pytest.mark.parametrize("preset, frames", sorted(STAGE_SHAPES))
def test_stage_output_shapes_per_geometry(preset, frames):
    model = full_model(preset, (frames, 224, 224, 3))
    widths = {"conv1": 64, "pool1": 64, "res2": 256, "pool2": 256, "res3": 512, "res4": 1024, "res5": 2048}
    for layer, (t, h) in STAGE_SHAPES[(preset, frames)].items():
        assert model.get_layer(layer).output.shape == (None, t, h, h, widths[layer]), layer
    stages = get_stage_outputs(model)
    assert list(stages) == ["res2", "res3", "res4", "res5"]
    # The analytic shapes agree with the built graph.
    analytic = feature_shapes(get_preset(preset)["arch"], (frames, 224, 224, 3))
    for layer, shape in analytic.items():
        assert model.get_layer(layer).output.shape[1:] == shape, layer


def test_official_test_crop_and_long_clip_sizes():
    # architecture.md §1.1: 256 test crop gives 128 -> 63 -> 32 -> 16 -> 8; 128x1 clips keep 32 frames at res2.
    shapes = feature_shapes(get_preset("i3d_nl5_r50_8x8_kinetics400")["arch"], (8, 256, 256, 3))
    assert [shapes[k][1] for k in ("conv1", "pool1", "res3", "res4", "res5")] == [128, 63, 32, 16, 8]
    shapes = feature_shapes(get_preset("i3d_nl5_r50_128x1_kinetics400")["arch"], (128, 224, 224, 3))
    assert [shapes[k][0] for k in ("conv1", "pool1", "res2", "res3", "res5")] == [64, 32, 32, 16, 16]
    shapes = feature_shapes(get_preset("i3d_nl5_r50_32x4_kinetics400")["arch"], (32, 224, 224, 3))
    assert [shapes[k][0] for k in ("conv1", "pool1", "res2", "res3", "res5")] == [32, 32, 32, 16, 16]


@pytest.mark.parametrize("preset, expected", [
    ("i3d_nl5_r50", NL5_R50),
    ("c2d_nl5_r50", NL5_R50),
    ("i3d_nl5_r101", NL5_R101),
    ("c2d_nl5_r101", NL5_R101),
    ("i3d_r50", set()),
    ("c2d_r101", set()),
])
def test_nonlocal_blocks_follow_their_residual_block(preset, expected):
    model = full_model(preset, (32, 224, 224, 3))
    assert nonlocal_names(model) == expected
    for name in expected:
        stage, index = name[len("nonlocal_conv"):].split("_")
        # The block's input is the ReLU output of residual block `index` of stage `stage`.
        assert model.get_layer(name).input is model.get_layer(f"res{stage}_{index}_relu").output
        layer = model.get_layer(name)
        assert (layer.mode, layer.compression, layer.pool_position, layer.use_scale, layer.use_bias,
                layer.normalization) == ("embedded", 2, "input", True, True, "batch")
        assert layer.dim == layer.input.shape[-1] // 2


@pytest.mark.parametrize("preset, depth", [("c2d_nl5_r50", 50), ("c2d_r101", 101)])
def test_c2d_has_no_temporal_kernels(preset, depth):
    model = full_model(preset, (32, 224, 224, 3))
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv3D)]
    assert len(convs) == 1 + 3 * sum(len(stage) for stage in I3D_INFLATE[depth]) + 4  # conv1, a/b/c, branch1
    assert all(conv.kernel_size[0] == 1 for conv in convs)


@pytest.mark.parametrize("preset, depth", [("i3d_nl5_r50", 50), ("i3d_nl5_r101", 101)])
def test_i3d_temporal_kernels_where_the_table_says(preset, depth):
    model = full_model(preset, (32, 224, 224, 3))
    assert model.get_layer("conv1").kernel_size == (5, 7, 7)
    assert model.get_layer("conv1_pad").padding == ((2, 2), (3, 3), (3, 3))
    for s, stage in enumerate(I3D_INFLATE[depth]):
        for i, inflated in enumerate(stage):
            prefix = f"res{s + 2}_{i}"
            assert model.get_layer(f"{prefix}_branch2a").kernel_size == ((3 if inflated else 1), 1, 1), prefix
            stride = 2 if (i == 0 and s > 0) else 1
            b = model.get_layer(f"{prefix}_branch2b")
            assert (b.kernel_size, b.strides) == ((1, 3, 3), (1, stride, stride)), prefix
            assert model.get_layer(f"{prefix}_branch2c").kernel_size == (1, 1, 1)
        branch1 = model.get_layer(f"res{s + 2}_0_branch1")  # projection shortcut in every stage's first block
        assert branch1.strides == (1, 1 if s == 0 else 2, 1 if s == 0 else 2)


def test_layers_are_caffe2_compatible():
    model = full_model("i3d_nl5_r50", (32, 224, 224, 3))
    for name in ("conv1", "res_conv1_bn", "pool1", "pool2", "res3_1_branch2a", "res3_1_branch2a_bn",
                 "res3_0_branch1", "res3_0_branch1_bn", "nonlocal_conv3_1", "pool5", "dropout", "pred"):
        model.get_layer(name)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv3D):
            assert not layer.use_bias and layer.padding == "valid", layer.name
        if isinstance(layer, keras.layers.BatchNormalization):
            assert (layer.epsilon, layer.momentum) == (1e-5, 0.9), layer.name
    assert model.get_layer("pool1").padding == "valid"
    assert model.get_layer("dropout").rate == 0.5
    assert model.get_layer("pred").kernel.shape == (2048, 400)
    assert preset_of(model) == "i3d_nl5_r50"


# ---------------------------------------------------------------------------------------------- tiny builder
def tiny_backbone(**kwargs):
    args = {**TINY, "input_shape": (8, 32, 32, 3), **kwargs}
    return build_backbone(**args)


def test_tiny_backbone_runs_with_unknown_sizes_and_exposes_stages():
    model = tiny_backbone(input_shape=(None, None, None, 3))
    extractor = build_feature_extractor(model)
    for frames, size in ((8, 32), (16, 48)):
        clip = np.random.default_rng(0).standard_normal((1, frames, size, size, 3)).astype("float32")
        features = extractor(clip)
        expected = feature_shapes(TINY, (frames, size, size, 3))
        assert {k: tuple(v.shape[1:]) for k, v in features.items()} == {
            k: expected[k] for k in ("res2", "res3", "res4", "res5")
        }
        np.testing.assert_allclose(np.asarray(model(clip)), np.asarray(features["res5"]), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="stages"):
        build_feature_extractor(model, stages=["res6"])


def test_affine_normalization_uses_affine_layers_only():
    model = tiny_backbone(normalization="affine", nonlocal_normalization=None, input_shape=(16, 32, 32, 3),
                          nonlocal_temporal_group_sizes=[None, 2, None, None])
    kinds = {type(layer) for layer in model.layers}
    assert Affine in kinds and keras.layers.BatchNormalization not in kinds
    assert model.get_layer("nonlocal_conv3_1").temporal_group_size == 2
    assert model.non_trainable_weights == []


def test_keras_round_trip(tmp_path):
    model = create_model("i3d_nl5_r50_8x8_kinetics400", input_shape=(8, 32, 32, 3), **TINY)
    clip = np.random.default_rng(0).standard_normal((2, 8, 32, 32, 3)).astype("float32")
    # Non-trivial BN / NL statistics so that the round trip has something to lose.
    rng = np.random.default_rng(1)
    for layer in model.layers:
        bn = layer.bn if isinstance(layer, NonLocalBlock) else layer
        if isinstance(bn, keras.layers.BatchNormalization):
            bn.set_weights([w + rng.uniform(0.1, 0.5, w.shape).astype("float32") for w in bn.get_weights()])
    expected = np.asarray(model(clip))
    path = tmp_path / "tiny.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(restored(clip)), expected, rtol=1e-5, atol=1e-6)
    # a plain Keras model does not save its preset, and its name is not taken for one (issue 12): a renamed model
    # would lose it; VideoClassifier keeps the preset in its config
    assert restored.name == "i3d_nl5_r50_8x8_kinetics400" and preset_of(restored) is None
    assert [layer.name for layer in restored.layers] == [layer.name for layer in model.layers]
    clone = keras.Model.from_config(model.get_config())
    assert clone.count_params() == model.count_params()


@pytest.mark.parametrize("kwargs, match", [
    ({"stage_depths": [3, 4, 6]}, "stage_widths"),
    ({"temporal_kernels": [[3, 3, 3], [3, 1, 3, 1], [3, 1, 3, 1, 3, 1], [1, 3]]}, "temporal_kernels"),
    ({"temporal_kernels": [[2, 3, 3], [3, 1, 3, 1], [3, 1, 3, 1, 3, 1], [1, 3, 1]]}, "odd"),
    ({"nonlocal_blocks": [[], [1, 4], [], []]}, "nonlocal_blocks"),
    ({"nonlocal_blocks": [[], [1, 1], [], []]}, "distinct"),
    ({"nonlocal_mode": "cosine"}, "nonlocal_mode"),
    ({"nonlocal_pool_position": "after"}, "nonlocal_pool_position"),
    ({"normalization": "group"}, "normalization"),
    ({"nonlocal_normalization": "layer"}, "nonlocal_normalization"),
    ({"conv1_kernel": [4, 7, 7]}, "odd"),
    ({"pool1_padding": [1, 1, 1]}, "pool1_padding"),
    ({"nonlocal_temporal_group_sizes": [None, 0, None, None]}, "nonlocal_temporal_group_sizes"),
    ({"stage_width": [64, 128, 256, 512]}, "Unknown architecture"),
    ({"input_shape": (8, 224, 224)}, "input_shape"),
    ({"input_shape": (1, 224, 224, 3)}, "too small"),
    ({"input_shape": (32, 4, 4, 3)}, "too small"),
    ({"input_shape": (8, 224, 224, 3), "nonlocal_temporal_group_sizes": [None, 3, None, None]}, "groups of 3"),
])
def test_bad_builder_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_backbone(**{"input_shape": (32, 224, 224, 3), **kwargs})


# ---------------------------------------------------------------------------------------------- create_model heads
def tiny(preset="i3d_nl5_r50_8x8_kinetics400", **kwargs):
    return create_model(preset, **{"input_shape": (8, 32, 32, 3), **TINY, **kwargs})


def test_heads_and_pooling_shapes():
    model = tiny()
    assert model.output.shape == (None, 400)
    clip = np.random.default_rng(0).standard_normal((2, 8, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(model(clip)).sum(-1), 1.0, rtol=1e-5)
    assert tiny(classes=7).output.shape == (None, 7)
    assert tiny(include_top=False).output.shape == (None, 4, 1, 1, 64)
    assert tiny(include_top=False, pooling="avg").output.shape == (None, 64)
    assert tiny(include_top=False, pooling="max").output.shape == (None, 64)
    head = add_classifier_head(tiny(include_top=False), classes=5)
    assert head.output.shape == (None, 5) and head.get_layer("pred").kernel.shape == (64, 5)


def test_logits_head_and_softmax_head_agree():
    logits_model = tiny(classifier_activation=None)
    softmax_model = tiny()
    softmax_model.set_weights(logits_model.get_weights())
    clip = np.random.default_rng(0).standard_normal((2, 8, 32, 32, 3)).astype("float32")
    logits = np.asarray(logits_model(clip))
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(softmax_model(clip)), expected, rtol=1e-5, atol=1e-7)


def test_fully_convolutional_head_averages_per_location_softmax():
    # Official test: pool5 = average over the training window (T_res5, 7, 7) with stride 1 on the larger crop,
    # `pred` per location, softmax per location, mean over T, H, W.
    model = tiny(fully_convolutional=True, input_shape=(8, None, None, 3), classes=11)
    rng = np.random.default_rng(0)
    model.get_layer("pred").set_weights([rng.standard_normal((64, 11)).astype("float32"),
                                         rng.standard_normal(11).astype("float32")])
    clip = rng.standard_normal((1, 8, 256, 320, 3)).astype("float32")
    res5 = np.asarray(build_feature_extractor(model, ["res5"])(clip)["res5"])[0]  # (T, H, W, C)
    assert res5.shape == (4, 8, 10, 64)
    kernel, bias = model.get_layer("pred").get_weights()
    probs = []
    for h in range(8 - 7 + 1):
        for w in range(10 - 7 + 1):
            z = res5[:, h:h + 7, w:w + 7].mean((0, 1, 2)) @ kernel + bias
            e = np.exp(z - z.max())
            probs.append(e / e.sum())
    np.testing.assert_allclose(np.asarray(model(clip))[0], np.mean(probs, 0), rtol=1e-4, atol=1e-6)
    # At the training crop the window covers the map: the same as the global-average head.
    standard = tiny(input_shape=(8, 224, 224, 3), classes=11)
    standard.set_weights(model.get_weights())
    clip = rng.standard_normal((1, 8, 224, 224, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(model(clip)), np.asarray(standard(clip)), rtol=1e-5, atol=1e-7)


def test_input_tensor_and_factory_and_names():
    tensor = keras.Input((8, 32, 32, 3))
    model = tiny(input_tensor=tensor, input_shape=None)
    assert model.inputs[0] is tensor
    model = nl_resnet50_3d(clip="8x8", input_shape=(8, 32, 32, 3), **TINY)
    assert preset_of(model) == "i3d_nl5_r50_8x8_kinetics400"
    assert tiny(model_name="mine").name == "mine"
    with pytest.raises(ValueError, match="clip='16x4'"):
        nl_resnet50_3d(clip="16x4")


def test_weights_go_through_the_loader(monkeypatch, tmp_path):
    # The contract with the weight loader: create_model hands weights to `nonlocal_zoo.models.weights.load_weights`.
    calls = []
    from nonlocal_zoo.models import weights as loading
    monkeypatch.setattr(loading, "load_weights",
                        lambda model, weights, **kwargs: calls.append((model.name, weights, kwargs)))
    model = create_model("i3d_nl5_r50_8x8_kinetics400", weights="kinetics400", input_shape=(8, 32, 32, 3),
                         nonlocal_chunk_size=64)  # a weight-neutral override is allowed
    assert calls == [("i3d_nl5_r50_8x8_kinetics400", "kinetics400",
                      {"preset": "i3d_nl5_r50_8x8_kinetics400", "include_top": True, "classes": 400, "format": None})]
    assert model.get_layer("nonlocal_conv3_1").chunk_size == 64
    # A weights file may carry another head (keras.applications checks `classes` only for its own weights).
    path = tmp_path / "finetuned.weights.h5"
    path.write_bytes(b"")
    create_model("i3d_nl5_r50_8x8_kinetics400", weights=path, input_shape=(8, 32, 32, 3), classes=10,
                 include_top=True)
    assert calls[-1] == ("i3d_nl5_r50_8x8_kinetics400", path,
                         {"preset": "i3d_nl5_r50_8x8_kinetics400", "include_top": True, "classes": 10,
                          "format": None})


@pytest.mark.parametrize("kwargs, match", [
    ({"weights": "kinetics400", "preset": "i3d_nl5_r101"}, "no published weights"),
    ({"weights": "/no/such/file.weights.h5"}, "weights"),
    ({"weights": 3}, "weights"),
    ({"weights": "kinetics400", "classes": 10}, "classes"),
    ({"weights": "kinetics400", "classifier_activation": "sigmoid"}, "classifier_activation"),
    ({"weights": "kinetics400", "nonlocal_blocks": [[], [], [], []]}, "nonlocal_blocks"),
    ({"weights": "kinetics400", "input_shape": (8, 224, 224, 1)}, "3 input channels"),
    ({"nonlocal_block": [[], [], [], []]}, "Unknown architecture"),
    ({"pooling": "sum", "include_top": False}, "pooling"),
    ({"weights": "kinetics400", "stage_depths": [3, 4, 23, 3],
      "temporal_kernels": [[1] * 3, [1] * 4, [1] * 23, [1] * 3]}, "stage_depths"),
    ({"fully_convolutional": True, "include_top": False}, "include_top"),
    ({"classes": 0}, "classes"),
    ({"input_shape": (8, 224, 224)}, "input_shape"),
    ({"input_shape": (8, 4, 4, 3)}, "too small"),
    ({"input_shape": (8, 64, 64, 3), "input_tensor": keras.Input((8, 32, 32, 3))}, "input_tensor"),
])
def test_bad_create_model_arguments_raise(kwargs, match):
    kwargs = dict(kwargs)
    preset = kwargs.pop("preset", "i3d_nl5_r50_8x8_kinetics400")
    with pytest.raises(ValueError, match=match):
        create_model(preset, **kwargs)

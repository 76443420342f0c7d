"""The preset registry: names of DESIGN.md §4, architecture flags per source (research/architecture.md,
research/gluoncv.md), weights provenance, preprocessing, metadata counts, the analytic counter against published
figures, factories, every preset building with `weights=None`; one keyword entry per preset carrying its labels,
factory call, parity test and licence; the demo and tiny presets."""
import ast
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from nonlocal_zoo.models import FACTORIES, FACTORY_PRESETS, create_model, factory_preset, format_info, model_info
from nonlocal_zoo.models.flops import count_macs, count_params
from nonlocal_zoo import presets
from nonlocal_zoo.presets import PRESETS, get_preset, list_models, num_classes

ROOT = Path(__file__).resolve().parent.parent

# DESIGN.md §4, verbatim.
PRETRAINED = [
    "c2d_r50_32x2_kinetics400", "c2d_nl5_r50_32x2_kinetics400", "i3d_r50_32x2_kinetics400",
    "i3d_nl5_r50_32x2_kinetics400", "c2d_r50_8x8_kinetics400", "c2d_nl5_r50_8x8_kinetics400",
    "i3d_r50_8x8_kinetics400", "i3d_nl5_r50_8x8_kinetics400", "i3d_r50_128x1_kinetics400",
    "i3d_nl5_r50_128x1_kinetics400", "i3d_r50_32x4_kinetics400", "i3d_nl5_r50_32x4_kinetics400",
    "i3d_r50_8x8_kinetics400_pyslowfast", "i3d_nl5_r50_8x8_kinetics400_pyslowfast",
    "c2d_nopool_r50_8x8_kinetics400_pyslowfast", "i3d_r50_32x2_kinetics400_mmaction2",
    "i3d_nl5_r50_32x2_kinetics400_mmaction2_embedded", "i3d_nl5_r50_32x2_kinetics400_mmaction2_dot",
    "i3d_nl5_r50_32x2_kinetics400_mmaction2_gaussian", "c2d_r50_8x8_kinetics400_pytorchvideo",
    "i3d_r50_8x8_kinetics400_pytorchvideo", "i3d_nl5_r50_32x2_kinetics400_gluoncv",
    "i3d_nl10_r50_32x2_kinetics400_gluoncv", "i3d_nl5_r101_32x2_kinetics400_gluoncv",
    "i3d_nl10_r101_32x2_kinetics400_gluoncv",
]
ARCH_ONLY = ["c2d_r50", "c2d_r101", "i3d_r50", "i3d_r101", "c2d_nl5_r50", "c2d_nl5_r101", "i3d_nl5_r50",
             "i3d_nl5_r101", "c2d_nl10_r50", "i3d_nl10_r50"]
INTERNAL = ["demo", "tiny_nl_i3d"]
ZOO = sorted(PRETRAINED + ARCH_ONLY)  # the Kinetics-400 model zoo: every per-source check below runs on these


def source_of(name):
    for source in ("pyslowfast", "mmaction2", "pytorchvideo", "gluoncv"):
        if source in name:
            return source
    return "official"


# ---------------------------------------------------------------------------------------------- registry
def test_names_are_the_design_names():
    assert sorted(list_models(pretrained=True)) == sorted(PRETRAINED)
    assert sorted(list_models()) == sorted(PRETRAINED + ARCH_ONLY)
    assert list_models() == sorted(list_models())
    # The demo model and the tiny test architecture are presets too, listed only on request.
    assert list_models(include_internal=True) == sorted(ZOO + INTERNAL)
    assert list_models(pretrained=True, include_internal=True) == sorted(PRETRAINED + ["demo"])
    assert sorted(PRESETS) == sorted(ZOO + INTERNAL)


def test_get_preset_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"i3d_nl5_r50_8x8_kinetics400.*Received: name='i3d_nl5_r50_8x8_kinetic'"):
        get_preset("i3d_nl5_r50_8x8_kinetic")
    with pytest.raises(ValueError, match="Unknown preset"):
        create_model("resnet50")
    preset = get_preset("i3d_r50")
    preset["arch"]["stage_depths"][0] = 99
    assert get_preset("i3d_r50")["arch"]["stage_depths"][0] == 3  # a copy


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_structure(name):
    preset = PRESETS[name]
    assert json.loads(json.dumps(preset)) == preset  # JSON-able, no tuples
    assert set(preset) == {"arch", "weights", "preprocessing", "metadata", "labels", "factory", "parity_test",
                           "licence"}
    assert {"num_frames", "sampling_rate", "mean", "std", "scale", "channel_order", "train_crop",
            "train_short_side_range", "test_short_side", "test_crop", "test_num_clips", "test_num_crops", "sampling",
            "test_aggregation"} <= set(preset["preprocessing"])
    assert {"description", "top1", "top5", "params", "macs", "paper", "licence", "source"} <= set(preset["metadata"])
    weights = preset["weights"]
    if name in ARCH_ONLY or name == "tiny_nl_i3d":
        assert weights is None and preset["metadata"]["top1"] is None
        return
    assert {"format", "url", "file_name", "sha256", "sha256_prefix", "sha1", "sha1_prefix", "licence",
            "source", "package_file"} <= set(weights)
    if name == "demo":
        assert weights["package_file"] and weights["url"] is None and weights["format"] == "keras_weights_h5"
        return
    assert weights["package_file"] is False
    assert weights["url"].startswith("https://") and weights["url"].endswith("/" + weights["file_name"])
    assert 60 < preset["metadata"]["top1"] < 80


# ---------------------------------------------------------------------------------------------- architecture per source
@pytest.mark.parametrize("name", ZOO)
def test_architecture_flags_per_source(name):
    arch, pre = PRESETS[name]["arch"], PRESETS[name]["preprocessing"]
    source = source_of(name)
    depth = 101 if "_r101" in name else 50
    assert arch["stage_depths"] == ([3, 4, 23, 3] if depth == 101 else [3, 4, 6, 3])
    clip = re.search(r"_(\d+)x(\d+)", name)
    frames, rate = (int(clip.group(1)), int(clip.group(2))) if clip else (32, 2)
    assert (pre["num_frames"], pre["sampling_rate"]) == (frames, rate)
    # Temporal kernels: C2D all 1; I3D 5x7x7 conv1 and the official table (DESIGN.md §3).
    if name.startswith("c2d"):
        assert arch["conv1_kernel"] == [1, 7, 7]
        assert all(k == 1 for stage in arch["temporal_kernels"] for k in stage)
    else:
        assert arch["conv1_kernel"] == [5, 7, 7]
        res4 = [3, 1, 3, 1, 3, 1] if depth == 50 else [3 if i % 2 == 0 else 1 for i in range(23)]
        assert arch["temporal_kernels"] == [[3, 3, 3], [3, 1, 3, 1], res4, [1, 3, 1]]
    # Geometry (architecture.md §1.1, §1.5, §1.7; gluoncv.md §2).
    stem = (arch["conv1_strides"], arch["pool1_size"], arch["pool1_strides"], arch["pool1_padding"])
    if source == "official" and (frames, rate) in ((32, 2), (128, 1)):
        assert stem == ([2, 2, 2], [2, 3, 3], [2, 2, 2], [0, 0, 0])
    elif source == "official":
        assert stem == ([1, 2, 2], [1, 3, 3], [1, 2, 2], [0, 0, 0])
    elif source in ("pyslowfast", "pytorchvideo"):
        assert stem == ([1, 2, 2], [1, 3, 3], [1, 2, 2], [0, 1, 1])
    else:  # mmaction2, gluoncv
        assert stem == ([2, 2, 2], [1, 3, 3], [2, 2, 2], [0, 1, 1])
    assert arch["pool2_size"] == (None if "nopool" in name else [2, 1, 1])
    # Non-local placement (architecture.md §1.3; gluoncv.md §2).
    if "_nl5_" in name:
        res4 = [1, 3, 5] if depth == 50 else [6, 13, 20]
        assert arch["nonlocal_blocks"] == [[], [1, 3], res4, []]
    elif "_nl10_" in name:
        res4 = list(range(6)) if depth == 50 else [2, 6, 10, 14, 18, 22]
        assert arch["nonlocal_blocks"] == [[], [0, 1, 2, 3], res4, []]
    else:
        assert arch["nonlocal_blocks"] == [[], [], [], []]
    # Non-local flavour (architecture.md §2.5).
    flags = (arch["nonlocal_compression"], arch["nonlocal_pool_position"], arch["nonlocal_use_scale"],
             arch["nonlocal_use_bias"], arch["nonlocal_out_use_bias"] is not False)
    if source == "mmaction2":
        assert flags == (2, "projection", False, True, False)
        mode = name.rsplit("_", 1)[1]
        assert arch["nonlocal_mode"] == (mode if "_nl5_" in name else "embedded")
    elif source == "gluoncv":
        assert flags == (None, "input", True, True, True) and arch["nonlocal_mode"] == "embedded"
    else:
        assert flags == (2, "input", True, True, True) and arch["nonlocal_mode"] == "embedded"
    # Frozen-BN long-clip models: affine, no NL normalization, res3 NL grouped by 4 frames.
    frozen = source == "official" and (frames, rate) in ((32, 4), (128, 1))
    assert arch["normalization"] == ("affine" if frozen else "batch")
    if "_nl" in name:
        assert arch["nonlocal_normalization"] == (None if frozen else "batch")
        assert arch["nonlocal_temporal_group_sizes"] == ([None, 4, None, None] if frozen else [None] * 4)


# ---------------------------------------------------------------------------------------------- weights, preprocessing
@pytest.mark.parametrize("name", PRETRAINED)
def test_weights_provenance(name):
    weights, source = PRESETS[name]["weights"], source_of(name)
    expected = {"official": ("caffe2_pkl", "https://dl.fbaipublicfiles.com/video-nonlocal/", "CC-BY-NC-4.0"),
                "pyslowfast": ("pyslowfast_pkl", "https://dl.fbaipublicfiles.com/pyslowfast/model_zoo/kinetics400/",
                               "Apache-2.0"),
                "pytorchvideo": ("pytorchvideo_pyth", "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/",
                                 "Apache-2.0"),
                "mmaction2": ("mmaction2_pth", "https://download.openmmlab.com/mmaction/v1.0/recognition/i3d/",
                              "Apache-2.0"),
                "gluoncv": ("gluoncv_pth", "https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/torch/models/",
                            "Apache-2.0")}[source]
    assert (weights["format"], weights["licence"]) == (expected[0], expected[2])
    assert weights["url"].startswith(expected[1])
    assert PRESETS[name]["metadata"]["licence"] == expected[2]
    if source == "mmaction2":  # file names end with the first 8 hex digits of the sha256
        assert re.fullmatch(r"[0-9a-f]{8}", weights["sha256_prefix"])
        assert weights["file_name"].endswith(f"-{weights['sha256_prefix']}.pth")
    if source == "gluoncv":  # file names end with the first 8 hex digits of the full sha1
        assert re.fullmatch(r"[0-9a-f]{40}", weights["sha1"])
        assert weights["file_name"].endswith(f"-{weights['sha1'][:8]}.pth")
        assert weights["sha1_prefix"] == weights["sha1"][:8]
    if source == "official":
        kind = "nonlocal" if "_nl5_" in name else "baseline"
        init = "I3D" if re.search(r"_(32x4|128x1)_", name) else "IN"
        clip = re.search(r"_(\d+x\d+)_", name).group(1)
        assert weights["file_name"] == f"{name[:3]}_{kind}_{clip}_{init}_pretrain_400k.pkl"


@pytest.mark.parametrize("name", ZOO)
def test_preprocessing_per_source(name):
    pre, source = PRESETS[name]["preprocessing"], source_of(name)
    assert pre["channel_order"] == "RGB" and pre["scale"] == 255.0
    if source in ("mmaction2", "gluoncv"):  # ImageNet mean/std (0-1 values x 255)
        np.testing.assert_allclose(pre["mean"], np.array([0.485, 0.456, 0.406]) * 255)
        np.testing.assert_allclose(pre["std"], [58.395, 57.12, 57.375])
    else:  # (x - 0.45) / 0.225 on 0-1 frames
        np.testing.assert_allclose(pre["mean"], [0.45 * 255] * 3)
        np.testing.assert_allclose(pre["std"], [0.225 * 255] * 3)
    assert (pre["test_short_side"], pre["test_crop"], pre["test_num_clips"], pre["test_num_crops"]) == (256, 256, 10, 3)
    assert pre["train_crop"] == 224
    assert pre["test_aggregation"] == ("logits" if source == "gluoncv" else "softmax")
    assert pre["test_fully_convolutional"] == (source in ("official", "pyslowfast", "pytorchvideo"))
    assert pre["sampling"] == {"pytorchvideo": "pyslowfast"}.get(source, source)


# ---------------------------------------------------------------------------------------------- counts
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_metadata_counts_equal_the_analytic_counter(name):
    # params/MACs are written in each registry entry as data; the counter recomputes them from the architecture.
    preset = PRESETS[name]
    pre, classes = preset["preprocessing"], num_classes(name)
    assert classes == (400 if name in ZOO else len(preset["labels"]))
    assert preset["metadata"]["params"] == count_params(preset["arch"], classes=classes)["trainable"]
    view = (pre["num_frames"], pre["test_crop"], pre["test_crop"], 3)
    assert preset["metadata"]["macs"] == count_macs(preset["arch"], view, classes=classes)["total"]


@pytest.mark.parametrize("name, crop, expected", [
    # research/architecture.md §1.9, official "repo" geometry 8x8 (G MACs, two decimals).
    ("c2d_r50_8x8_kinetics400", 224, 19.29), ("c2d_r50_8x8_kinetics400", 256, 25.23),
    ("c2d_nl5_r50_8x8_kinetics400", 224, 27.42), ("c2d_nl5_r50_8x8_kinetics400", 256, 37.04),
    ("i3d_r50_8x8_kinetics400", 224, 28.11), ("i3d_r50_8x8_kinetics400", 256, 36.76),
    ("i3d_nl5_r50_8x8_kinetics400", 224, 36.24), ("i3d_nl5_r50_8x8_kinetics400", 256, 48.57),
])
def test_macs_match_architecture_notes(name, crop, expected):
    assert round(count_macs(PRESETS[name]["arch"], (8, crop, crop, 3))["total"] / 1e9, 2) == expected


@pytest.mark.parametrize("name, frames, published, tolerance", [
    # mmaction2 configs/recognition/i3d/README.md "FLOPs" of a 32x256x256 view.
    ("i3d_r50_32x2_kinetics400_mmaction2", 32, 43.5e9, 0.01),
    ("i3d_nl5_r50_32x2_kinetics400_mmaction2_embedded", 32, 59.3e9, 0.01),
    ("i3d_nl5_r50_32x2_kinetics400_mmaction2_dot", 32, 59.3e9, 0.01),
    # pytorchvideo docs/source/model_zoo.md GFLOPs of an 8x256x256 view (their counter also counts BN etc.).
    ("c2d_r50_8x8_kinetics400_pytorchvideo", 8, 25.89e9, 0.02),
    ("i3d_r50_8x8_kinetics400_pytorchvideo", 8, 37.53e9, 0.02),
])
def test_macs_match_published_figures(name, frames, published, tolerance):
    macs = count_macs(PRESETS[name]["arch"], (frames, 256, 256, 3))["total"]
    assert abs(macs - published) <= tolerance * published


def test_info():
    info = model_info("i3d_nl5_r50_32x2_kinetics400")
    assert info["params"] == {"trainable": 35_401_936, "non_trainable": 61_312, "total": 35_463_248}
    assert info["feature_shapes"]["pool1"] == [8, 55, 55, 64]
    assert info["test_views"] == 30 and info["macs_test_total"] == 30 * info["macs_test_view"]
    text = format_info("i3d_nl5_r50_32x2_kinetics400")
    for fragment in ("35,401,936", "top-1 74.9 / top-5 91.6", "nonlocal_conv4_5", "CC-BY-NC-4.0",
                     "i3d_nonlocal_32x2_IN_pretrain_400k.pkl", "pool1 8x55x55"):
        assert fragment in text
    assert "not published" in format_info("i3d_nl5_r101")


# ---------------------------------------------------------------------------------------------- factories
def test_factories_reach_every_pretrained_preset():
    reachable = {preset for table in FACTORY_PRESETS.values() for preset in table.values()}
    assert reachable <= set(PRESETS)
    assert set(PRETRAINED) <= reachable
    assert reachable == {name for name, preset in PRESETS.items() if preset["factory"]}  # read from the registry
    assert set(FACTORIES) == {"nl_resnet50_3d", "nl_resnet101_3d", "nl_c2d_resnet50", "nl_c2d_resnet101",
                              "i3d_resnet50", "i3d_resnet101", "c2d_resnet50", "c2d_resnet101"}
    assert factory_preset("nl_resnet50_3d") == "i3d_nl5_r50_32x2_kinetics400"
    assert factory_preset("nl_resnet50_3d", clip="8x8", source="pyslowfast") == "i3d_nl5_r50_8x8_kinetics400_pyslowfast"
    assert (factory_preset("nl_resnet101_3d", source="gluoncv", num_nonlocal=10)
            == "i3d_nl10_r101_32x2_kinetics400_gluoncv")
    assert factory_preset("c2d_resnet101") == "c2d_r101"
    with pytest.raises(ValueError, match="source='mmaction2'"):
        factory_preset("c2d_resnet50", source="mmaction2")
    for name, factory in FACTORIES.items():
        assert factory.__name__ == name and "Args:" in factory.__doc__


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_entry_labels_factory_parity_test_and_licence(name):
    preset = PRESETS[name]
    assert preset["labels"] == "kinetics400" if name in ZOO else isinstance(preset["labels"], list)
    # One licence per entry, repeated where older readers look for it; only weights carry one.
    licence = preset["licence"]
    assert preset["metadata"]["licence"] == licence
    assert (licence is None) == (preset["weights"] is None)
    if preset["weights"] is not None:
        assert preset["weights"]["licence"] == licence in ("CC-BY-NC-4.0", "Apache-2.0")
    # The factory call written in the entry builds this preset.
    factory = preset["factory"]
    if factory is not None:
        assert factory_preset(factory["function"], **factory["arguments"]) == name
        assert FACTORIES[factory["function"]].__doc__.count(f"`{name}`") == 1
    else:
        assert name not in {p for table in FACTORY_PRESETS.values() for p in table.values()}
    # The parity test named in the entry exists.
    path, _, function = preset["parity_test"].partition("::")
    source = (ROOT / path).read_text(encoding="utf-8")
    assert re.search(rf"^def {function}\(", source, re.MULTILINE), preset["parity_test"]


def test_every_preset_is_one_keyword_entry_with_counts_as_data():
    tree = ast.parse((ROOT / "nonlocal_zoo" / "presets.py").read_text(encoding="utf-8"))
    entries = next(node.value for node in tree.body
                   if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "_ENTRIES")
    names = []
    for call in entries.elts:
        assert isinstance(call, ast.Call) and call.func.id == "Preset" and not call.args  # keywords only
        fields = {keyword.arg: keyword.value for keyword in call.keywords}
        assert {"name", "description", "arch", "preprocessing", "labels", "licence", "parity_test", "params",
                "macs"} <= set(fields)
        for key in ("name", "params", "macs"):  # written as data, not computed or patched in later
            assert isinstance(fields[key], ast.Constant), (fields["name"].value, key)
        names.append(fields["name"].value)
    assert sorted(names) == sorted(PRESETS) and len(names) == len(set(names))


def test_num_classes_and_unknown_label_sets():
    assert num_classes("i3d_nl5_r50_32x2_kinetics400") == 400
    assert num_classes("demo") == 12 and num_classes(get_preset("tiny_nl_i3d")) == 5
    with pytest.raises(ValueError, match="labels='kinetics700'"):
        num_classes({"labels": "kinetics700"})
    with pytest.raises(ValueError, match="Unknown preset"):
        num_classes("no_such_preset")
    with pytest.raises(ValueError, match="labels"):
        presets.Preset(name="x", description="x", arch={}, preprocessing={}, labels="imagenet", licence=None,
                       source="x", parity_test="tests/x.py::test_x", params=1, macs=1)
    with pytest.raises(TypeError):  # keyword fields only: no positional tuples
        presets.Preset("x", "x", {}, {}, ["a"], None, "x", "tests/x.py::test_x", 1, 1)
    with pytest.raises(ValueError, match="licence"):
        presets.Preset(name="x", description="x", arch={}, preprocessing={}, labels=["a"], licence="MIT",
                       source="x", parity_test="tests/x.py::test_x", params=1, macs=1)


# ---------------------------------------------------------------------------------------------- demo and tiny presets
def test_demo_preset_is_the_shipped_demo_model():
    from nonlocal_zoo import demo, synthetic

    preset, record = get_preset("demo"), demo.provenance()
    assert preset["arch"] == record["arch"] == demo.variant_arch("nl") == demo.DEMO_ARCH
    assert preset["labels"] == record["classes"] == list(synthetic.CLASSES)  # the head's output order
    assert preset["preprocessing"] == demo.DEMO_PREPROCESSING
    pre = preset["preprocessing"]
    assert [pre["num_frames"], pre["test_crop"], pre["test_crop"], 3] == record["input_shape"]
    weights = preset["weights"]
    assert weights["file_name"] == demo.WEIGHTS_FILE and weights["licence"] == "Apache-2.0"
    digest = hashlib.sha256(Path(demo.weights_path()).read_bytes()).hexdigest()
    assert weights["sha256"] == record["sha256"] == digest
    assert count_params(preset["arch"], classes=12)["total"] == record["params"]


def test_demo_preset_alone_rebuilds_the_demo_model():
    """The registry entry is enough: create_model("demo") takes the shipped weights and gives the demo's scores."""
    from nonlocal_zoo import demo

    pre = get_preset("demo")["preprocessing"]
    model = create_model("demo", input_shape=(pre["num_frames"], pre["test_crop"], pre["test_crop"], 3))
    model.load_weights(demo.weights_path())
    clips = np.stack([demo.demo_clip(label) for label in ("moving_left", "flashing", "meeting")])
    x = demo.preprocess_clips(clips)
    expected = np.asarray(demo.load_demo_model()(x, training=False))
    np.testing.assert_allclose(np.asarray(model(x, training=False)), expected, rtol=1e-5, atol=1e-6)
    assert expected.argmax(-1).tolist() == [get_preset("demo")["labels"].index(c)
                                            for c in ("moving_left", "flashing", "meeting")]


def test_tiny_preset_builds_with_its_counts():
    preset = get_preset("tiny_nl_i3d")
    pre, meta = preset["preprocessing"], preset["metadata"]
    shape = (pre["num_frames"], pre["test_crop"], pre["test_crop"], 3)
    model = create_model("tiny_nl_i3d", input_shape=shape, classifier_activation=None)
    assert model.output.shape == (None, len(preset["labels"])) == (None, 5)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == meta["params"] < 50_000
    assert [layer.name for layer in model.layers if layer.name.startswith("nonlocal")] == [
        "nonlocal_conv3_0", "nonlocal_conv4_0"]
    info = model_info("tiny_nl_i3d")
    assert info["params"]["trainable"] == meta["params"] and info["macs_test_view"] == meta["macs"]
    logits = np.asarray(model(np.random.default_rng(0).standard_normal((2, *shape)).astype("float32")))
    assert logits.shape == (2, 5) and np.isfinite(logits).all()


# ---------------------------------------------------------------------------------------------- every preset builds
# One preset per distinct feature in the default run (geometries, frozen BN + groups, NL flavours and modes, R101);
# the slow run builds all of them.
REPRESENTATIVE = [
    "i3d_nl5_r50_128x1_kinetics400",
    "c2d_nopool_r50_8x8_kinetics400_pyslowfast",
    "i3d_nl5_r50_32x2_kinetics400_mmaction2_gaussian",
    "i3d_nl10_r101_32x2_kinetics400_gluoncv",
]


def _tiny_clip_shape(name):
    """Smallest cheap clip the preset accepts: 64x64, frames so that grouped NL stages still divide."""
    frames = {"i3d_nl5_r50_128x1_kinetics400": 32, "i3d_nl5_r50_32x4_kinetics400": 16}.get(name, 8)
    return (frames, 64, 64, 3)


def check_builds(name):
    shape = _tiny_clip_shape(name)
    model = create_model(name, weights=None, input_shape=shape, classifier_activation=None)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == PRESETS[name]["metadata"]["params"]
    assert model.name == name
    clip = np.random.default_rng(0).standard_normal((1, *shape)).astype("float32")
    logits = np.asarray(model(clip))
    assert logits.shape == (1, 400) and np.isfinite(logits).all()


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_representative_presets_build_and_run(name):
    check_builds(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(ZOO) - set(REPRESENTATIVE)))
def test_every_preset_builds_and_runs(name):
    check_builds(name)

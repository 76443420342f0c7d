"""gluon-cv's I3D-NL ResNet-50/101 (nl5, nl10): presets, the `gluoncv_pth` converter and its strictness.

The reference is `tests/gluoncv_reference.py`, a PyTorch transcription of gluon-cv's `I3D_ResNetV1` / `NonLocal`
with gluon-cv's module names (so its state dict has the published key names, aliases included) and gluon-cv's own
`inflate_freq` / `nonlocal_freq` tables, not our presets. Its random weights are non-trivial: every BN (non-local
BNs included) has non-zero gamma and calibrated-then-perturbed running statistics, and the attention is neither
uniform nor one-hot. Saved with `torch.save(state_dict)` like the published files, converted through the public
API, the Keras logits must match to 1e-4 of their largest magnitude with the same top-1 class.

Default runs use the real depth of ResNet-50 on small, odd-sized clips (16 x 33 x 41); ResNet-101 is marked slow.
Torch runs single-threaded here: on a busy 2-core machine its thread pool made a 0.4 s forward take 13 s.
"""
import hashlib

import numpy as np
import pytest

import torch

from tests import gluoncv_reference as gref
from tests.test_download import server  # noqa: F401  (the local HTTP server fixture)

from nonlocal_zoo.models import create_model
from nonlocal_zoo.models.arch import feature_shapes
from nonlocal_zoo.models.flops import count_params
from nonlocal_zoo.presets import PRESETS, get_preset
from nonlocal_zoo.pretrained.convert import CheckpointMismatchError, assign_checkpoint, read_checkpoint
from nonlocal_zoo.pretrained.download import ChecksumError
from nonlocal_zoo.pretrained.loading import download_preset

# preset -> gluon-cv model name (gluoncv.md §1)
GLUONCV = {
    "i3d_nl5_r50_32x2_kinetics400_gluoncv": "i3d_nl5_resnet50_v1_kinetics400",
    "i3d_nl10_r50_32x2_kinetics400_gluoncv": "i3d_nl10_resnet50_v1_kinetics400",
    "i3d_nl5_r101_32x2_kinetics400_gluoncv": "i3d_nl5_resnet101_v1_kinetics400",
    "i3d_nl10_r101_32x2_kinetics400_gluoncv": "i3d_nl10_resnet101_v1_kinetics400",
}
SHAPE = (16, 33, 41, 3)  # (T, H, W, C): odd, non-square sizes exercise the padding and rounding of every stride
BATCH = 3
RTOL = 1e-4


@pytest.fixture(autouse=True)
def single_threaded_torch():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def home(zoo_home):
    return zoo_home


class Checkpoint:
    """A random gluon-cv network, its `.pth` bytes (raw state dict, gluon-cv key names) and reference logits."""

    def __init__(self, gluoncv_name, seed=0):
        self.clips = gref.test_clips(BATCH, *SHAPE[:3], seed=seed)  # (B, C, T, H, W)
        self.model = gref.randomize(gref.build(gluoncv_name), self.clips, seed=seed)
        with torch.no_grad():
            self.expected = self.model(self.clips).numpy()
        self.state = self.model.state_dict()
        self.parameters = gref.count_parameters(self.model)

    def save(self, path):
        torch.save(self.state, path)
        return path

    def keras_input(self):
        return self.clips.permute(0, 2, 3, 4, 1).numpy()  # (B, T, H, W, C)


def assert_matches_reference(model, checkpoint):
    got = np.asarray(model(checkpoint.keras_input(), training=False))
    want = checkpoint.expected
    error = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert error <= RTOL, f"max |keras - torch| / max |torch| = {error:.3g}"
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


def assert_nontrivial(checkpoint):
    state = checkpoint.state
    nl_gammas = [v for k, v in state.items() if k.endswith("nonlocal_block.bn.weight")]
    assert nl_gammas and min(float(v.abs().min()) for v in nl_gammas) > 0.05  # NL blocks are not the identity
    assert len(set(checkpoint.expected.argmax(-1).tolist())) > 1  # the clips get different top-1 classes


def trainable_parameters(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# --------------------------------------------------------------------------------------------------- numerics
@pytest.mark.parametrize(
    "preset",
    [
        "i3d_nl10_r50_32x2_kinetics400_gluoncv",
        pytest.param("i3d_nl5_r101_32x2_kinetics400_gluoncv", marks=pytest.mark.slow),
        pytest.param("i3d_nl10_r101_32x2_kinetics400_gluoncv", marks=pytest.mark.slow),
    ],
)
def test_converted_checkpoint_matches_reference(preset, tmp_path):
    checkpoint = Checkpoint(GLUONCV[preset])
    assert_nontrivial(checkpoint)
    path = checkpoint.save(tmp_path / f"{GLUONCV[preset]}.pth")
    assert read_checkpoint(path)[0].name == "gluoncv_pth"  # detected from the key names
    model = create_model(preset, weights=str(path), input_shape=SHAPE, classifier_activation=None)
    assert_matches_reference(model, checkpoint)
    assert trainable_parameters(model) == checkpoint.parameters


def test_kinetics400_download_verifies_sha1_and_converts(server, monkeypatch, home):  # noqa: F811
    """`weights="kinetics400"` for nl5-R50: fetched over HTTP, checked against the full SHA-1 and the 8-digit
    prefix of the gluon-cv file name, converted, cached, and equal to the reference."""
    preset = "i3d_nl5_r50_32x2_kinetics400_gluoncv"
    checkpoint = Checkpoint(GLUONCV[preset], seed=1)
    assert_nontrivial(checkpoint)
    data = checkpoint.save(home.parent / "upstream.pth").read_bytes()
    sha1 = hashlib.sha1(data).hexdigest()
    file_name = f"{GLUONCV[preset]}-{sha1[:8]}.pth"
    server.files[f"/torch/models/{file_name}"] = data
    weights = dict(PRESETS[preset]["weights"], url=server.url(f"/torch/models/{file_name}"), file_name=file_name,
                   sha1=sha1, sha1_prefix=sha1[:8])
    monkeypatch.setitem(PRESETS[preset], "weights", weights)

    model = create_model(preset, weights="kinetics400", input_shape=SHAPE, classifier_activation=None)
    assert_matches_reference(model, checkpoint)
    assert trainable_parameters(model) == checkpoint.parameters
    assert (home / "converted" / f"{preset}.h5").is_file()

    # A file whose SHA-1 is not the published one is refused and not kept.
    other = f"{GLUONCV[preset]}-{'0' * 8}.pth"
    server.files[f"/torch/models/{other}"] = data
    monkeypatch.setitem(PRESETS[preset], "weights", dict(weights, url=server.url(f"/torch/models/{other}"),
                                                          file_name=other, sha1="0" * 40, sha1_prefix="0" * 8))
    with pytest.raises(ChecksumError):
        download_preset(preset, progress=False)
    assert not (home / "downloads" / other).exists()


# --------------------------------------------------------------------------------------------- preset checks
@pytest.mark.parametrize("preset", sorted(GLUONCV))
def test_parameter_counts_match_reference(preset):
    """Full-size reference (400 classes) vs. the preset's recorded count and the analytic counter of its arch
    (trainable = parameters; non-trainable = BN running statistics)."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = gref.build(GLUONCV[preset])
    reference = gref.count_parameters(model)
    statistics = sum(m.running_mean.numel() + m.running_var.numel()
                     for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d))  # distinct modules
    assert get_preset(preset)["metadata"]["params"] == reference
    counts = count_params(get_preset(preset)["arch"])
    assert (counts["trainable"], counts["non_trainable"]) == (reference, statistics)


@pytest.mark.parametrize("preset", sorted(GLUONCV))
def test_feature_map_sizes_match_reference_at_full_size(preset):
    """Stage sizes for the 32 x 224 x 224 training clip, from the reference run on shapes only (meta tensors)."""
    with torch.device("meta"):
        reference = gref.build(GLUONCV[preset]).eval()
    sizes = {}
    with torch.no_grad():
        x = reference.first_stage(torch.empty(1, 3, 32, 224, 224, device="meta"))
        sizes["pool1"] = tuple(x.shape[2:]) + (x.shape[1],)
        for s, stage in enumerate(reference.res_layers):
            x = stage(x)
            sizes[f"res{s + 2}"] = tuple(x.shape[2:]) + (x.shape[1],)
            if s == 0:
                x = reference.pool2(x)
    ours = feature_shapes(get_preset(preset)["arch"], (32, 224, 224, 3))
    assert {k: ours[k] for k in sizes} == sizes
    assert sizes["pool1"] == (8, 56, 56, 64) and sizes["res5"] == (4, 7, 7, 2048)  # gluoncv.md §2 (Obs.)


@pytest.mark.parametrize("preset", sorted(GLUONCV))
def test_preset_metadata_and_protocol(preset):
    """Values of research/gluoncv.md §1 and §4 (gluon-cv's model_store.py, Kinetics400_torch.csv, data code)."""
    p = get_preset(preset)
    published = {  # full SHA-1 of the .pth, PyTorch top-1 (30 views)
        "i3d_nl5_resnet50_v1_kinetics400": ("9df1e103d54bc1227da58d19347e1371cf98a9fb", 75.17),
        "i3d_nl10_resnet50_v1_kinetics400": ("281e1e8a8ef78ada7e095b43caf0cd3f75e7a6a4", 75.93),
        "i3d_nl5_resnet101_v1_kinetics400": ("2cea8edd07e5565b9c1eb66ca862ade3127ce523", 75.81),
        "i3d_nl10_resnet101_v1_kinetics400": ("526a2ed07cffeab6d827ab28c979b537100cd2b3", 75.93),
    }
    sha1, top1 = published[GLUONCV[preset]]
    w = p["weights"]
    assert w["format"] == "gluoncv_pth" and w["sha1"] == sha1 and w["sha1_prefix"] == sha1[:8]
    assert w["file_name"] == f"{GLUONCV[preset]}-{sha1[:8]}.pth"
    assert w["url"] == f"https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/torch/models/{w['file_name']}"
    assert p["metadata"]["top1"] == top1 and p["metadata"]["top5"] is None  # top-5 not published
    assert p["metadata"]["licence"] == w["licence"] == "Apache-2.0"
    pre = p["preprocessing"]
    np.testing.assert_allclose(np.asarray(pre["mean"]) / pre["scale"], [0.485, 0.456, 0.406])  # RGB / 255, ImageNet
    np.testing.assert_allclose(np.asarray(pre["std"]) / pre["scale"], [0.229, 0.224, 0.225])
    assert pre["channel_order"] == "RGB" and (pre["num_frames"], pre["sampling_rate"]) == (32, 2)
    assert list(pre["decode_size"]) == [256, 340]  # decord to 340x256 (W x H), aspect not kept
    assert (pre["test_short_side"], pre["test_crop"], pre["test_num_clips"], pre["test_num_crops"]) == (256, 256, 10, 3)
    assert pre["test_aggregation"] == "logits" and not pre["test_fully_convolutional"]
    a = p["arch"]
    assert (a["pool1_size"], a["pool1_strides"], a["pool1_padding"]) == ([1, 3, 3], [2, 2, 2], [0, 1, 1])
    assert a["nonlocal_compression"] is None and a["nonlocal_use_scale"] and a["nonlocal_use_bias"]


# ------------------------------------------------------------------------------------------------ strictness
@pytest.fixture(scope="module")
def nl5_model():
    return create_model("i3d_nl5_r50_32x2_kinetics400_gluoncv", input_shape=SHAPE, classifier_activation=None)


def _numpy_state(gluoncv_name):
    torch.manual_seed(0)
    return {k: v.numpy().copy() for k, v in gref.build(gluoncv_name).state_dict().items()}


def _weights_by_path(model):
    return {v.path: np.array(v.numpy()) for v in model.weights}


def test_aliases_are_dropped_or_stand_in(nl5_model):
    state = _numpy_state("i3d_nl5_resnet50_v1_kinetics400")
    assign_checkpoint(nl5_model, state, format="gluoncv_pth")
    full = _weights_by_path(nl5_model)
    np.testing.assert_array_equal(full["pred/kernel"], state["fc.weight"].T)
    np.testing.assert_array_equal(full["nonlocal_conv4_5/out/bias"], state["res_layers.2.5.nonlocal_block.W.bias"])

    # Only the aliases W_bn.{0,1}.* and head.1.* kept: they stand in for W, bn and fc.
    aliases_only = {k: v for k, v in state.items()
                    if not (k.startswith("fc.") or ".nonlocal_block.W." in k or ".nonlocal_block.bn." in k)}
    assert any(".W_bn.1." in k for k in aliases_only) and "head.1.weight" in aliases_only
    for variable in nl5_model.weights:
        variable.assign(np.zeros(variable.shape, variable.dtype))
    assign_checkpoint(nl5_model, aliases_only, format="gluoncv_pth")
    again = _weights_by_path(nl5_model)
    for path, value in full.items():
        np.testing.assert_array_equal(again[path], value, err_msg=path)


def test_mismatches_are_listed(nl5_model):
    state = _numpy_state("i3d_nl5_resnet50_v1_kinetics400")
    before = _weights_by_path(nl5_model)

    broken = dict(state)
    del broken["res_layers.2.3.nonlocal_block.theta.bias"]  # no alias
    broken["res_layers.1.1.nonlocal_block.extra.weight"] = np.zeros(3, np.float32)
    broken["res_layers.0.0.conv1.weight"] = np.zeros((64, 64, 1, 1, 1), np.float32)  # inflated conv: (3, 1, 1)
    with pytest.raises(CheckpointMismatchError) as info:
        assign_checkpoint(nl5_model, broken, format="gluoncv_pth")
    error = info.value
    assert [m.split(" ")[0] for m in error.missing] == ["nonlocal_conv4_3_theta_b"]
    assert error.unexpected == ["res_layers.1.1.nonlocal_block.extra.weight"]
    assert [m[0] for m in error.mismatched] == ["res_layers.0.0.conv1.weight"]
    after = _weights_by_path(nl5_model)
    assert all(np.array_equal(before[p], after[p]) for p in before)  # nothing assigned

    # A 10-block checkpoint in the 5-block model: its extra non-local blocks have no place.
    with pytest.raises(CheckpointMismatchError) as info:
        assign_checkpoint(nl5_model, _numpy_state("i3d_nl10_resnet50_v1_kinetics400"), format="gluoncv_pth")
    assert not info.value.missing and not info.value.mismatched
    extra_blocks = {k.split(".nonlocal_block.")[0] for k in info.value.unexpected}
    assert extra_blocks == {f"res_layers.1.{i}" for i in (0, 2)} | {f"res_layers.2.{i}" for i in (0, 2, 4)}


def test_training_checkpoint_with_module_prefix(nl5_model, tmp_path):
    """`{"state_dict": {"module.<key>": ...}}` (gluon-cv's DDP training checkpoints) loads like the raw file."""
    state = gref.build("i3d_nl5_resnet50_v1_kinetics400").state_dict()
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    assert read_checkpoint(path)[0].name == "gluoncv_pth"
    assign_checkpoint(nl5_model, path)
    loaded = _weights_by_path(nl5_model)
    conv1 = state["first_stage.0.weight"].numpy()  # (O, I, T, H, W) -> Keras (T, H, W, I, O)
    np.testing.assert_array_equal(loaded["conv1/kernel"], conv1.transpose(2, 3, 4, 1, 0))
    np.testing.assert_array_equal(loaded["res_conv1_bn/moving_variance"], state["first_stage.1.running_var"].numpy())


def test_include_top_false_keeps_the_head(nl5_model):
    state = _numpy_state("i3d_nl5_resnet50_v1_kinetics400")
    head = {p: v for p, v in _weights_by_path(nl5_model).items() if p.startswith("pred/")}
    assign_checkpoint(nl5_model, state, format="gluoncv_pth", include_top=False)  # fc.* and head.1.* both skipped
    loaded = _weights_by_path(nl5_model)
    assert all(np.array_equal(loaded[p], v) for p, v in head.items())
    np.testing.assert_array_equal(loaded["nonlocal_conv3_3/theta/kernel"],
                                  state["res_layers.1.3.nonlocal_block.theta.weight"].reshape(256, 512).T)

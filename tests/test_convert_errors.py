"""Strictness of the converters: unsafe files refused, missing / unexpected / mis-shaped tensors reported together."""
import os
import pickle
import re

import numpy as np
import pytest

from tests.torch_references import (
    MMRecognizer3D,
    i3d_temporal_kernels,
    official_blobs,
    official_config,
    save_caffe2_pickle,
    save_torch_checkpoint,
    tiny_overrides,
)

from nonlocal_zoo.models import create_model
from nonlocal_zoo.pretrained import convert
from nonlocal_zoo.pretrained.convert import (
    CheckpointFormat,
    CheckpointMismatchError,
    UnknownFormatError,
    assign_checkpoint,
    get_format,
    register_format,
)
from nonlocal_zoo.models.conversion import convert_checkpoint
from nonlocal_zoo.models.weights import load_weights
from nonlocal_zoo.pretrained.pickle_io import UnsafePickleError, load_caffe2_pickle

PRESET = "i3d_nl5_r50_8x8_kinetics400"  # official "repo" geometry
DEPTHS = [1, 1, 1, 1]
NL = [[], [0], [0], []]
SHAPE = (8, 32, 32, 3)


def _cfg():
    return official_config(stem_width=4, depths=DEPTHS, widths=[4, 8, 16, 32], conv1_kt=5, conv1_ts=1,
                           pool1_kernel=(1, 3, 3), pool1_stride=(1, 2, 2),
                           temporal_kernels=i3d_temporal_kernels(DEPTHS), nonlocal_blocks=NL)


def _model(**kwargs):
    overrides = tiny_overrides(depths=DEPTHS, stem_width=4, temporal_kernels=i3d_temporal_kernels(DEPTHS),
                               nonlocal_blocks=NL)
    overrides.update(kwargs.pop("overrides", {}))
    return create_model(PRESET, input_shape=SHAPE, classifier_activation=None, **overrides, **kwargs)


def _values(model):
    return [np.array(v.numpy()) for v in model.weights]


class _Payload:
    """Unpickling this would run a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": np.zeros(3, np.float32), "x": _Payload(marker)}}, f, protocol=2)
    model = _model()
    before = _values(model)
    with pytest.raises(UnsafePickleError, match=r"system.*Nothing from the file was executed"):
        load_weights(model, path)
    out = tmp_path / "out.weights.h5"
    with pytest.raises(UnsafePickleError):
        convert_checkpoint(path, model=model, out=out)
    assert not marker.exists()
    assert not out.exists()
    for old, new in zip(before, _values(model)):
        np.testing.assert_array_equal(old, new)


def test_malicious_torch_checkpoint_is_refused_and_not_executed(tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"backbone.conv1.conv.weight": torch.zeros(1)}, "hook": _Payload(marker)}, path)
    with pytest.raises(UnsafePickleError, match="PyTorch's restricted loader refused it") as info:
        load_weights(_model(), path)
    assert not marker.exists()
    assert "weights_only" not in str(info.value)  # never torch's advice to switch the check off (issue 15)


def test_missing_unexpected_and_misshaped_are_listed_together(tmp_path):
    blobs = official_blobs(_cfg(), seed=0)
    del blobs["res3_0_branch2b_bn_riv"]
    del blobs["nonlocal_conv4_0_phi_b"]
    blobs["res9_0_branch2a_w"] = np.zeros((4, 4, 1, 1, 1), np.float32)
    blobs["nonlocal_conv3_0_theta_w"] = np.transpose(blobs["nonlocal_conv3_0_theta_w"], (1, 0, 2, 3, 4)).copy()
    blobs["res2_0_branch2a_w"] = blobs["res2_0_branch2a_w"][:, :, :1]  # a C2D kernel in an I3D model
    path = save_caffe2_pickle(tmp_path / "bad.pkl", blobs, solver_state=True)
    model = _model()
    before = _values(model)
    with pytest.raises(CheckpointMismatchError) as info:
        load_weights(model, path)
    error, message = info.value, str(info.value)
    assert [m.split()[0] for m in error.missing] == ["res3_0_branch2b_bn_riv", "nonlocal_conv4_0_phi_b"]
    assert "res3_0_branch2b_bn/moving_variance" in message  # the model variable is named too
    assert error.unexpected == ["res9_0_branch2a_w"]  # solver blobs (lr, model_iter, *_momentum) are not listed
    assert sorted((name, tuple(got), tuple(want)) for name, got, want, _ in error.mismatched) == [
        ("nonlocal_conv3_0_theta_w", (32, 16, 1, 1, 1), (16, 32)),
        ("res2_0_branch2a_w", (4, 4, 1, 1, 1), (4, 4, 3, 1, 1)),
    ]
    assert re.search(r"missing .*\[2\].*unexpected .*\[1\].*mis-shaped .*\[2\]", message, re.S)
    for old, new in zip(before, _values(model)):  # nothing was assigned
        np.testing.assert_array_equal(old, new)


def test_torch_leftover_and_missing_keys(tmp_path):
    pytest.importorskip("torch")
    net = MMRecognizer3D(depths=DEPTHS, base_channels=4, nonlocal_blocks=NL, seed=0)
    state = net.state_dict()
    state["backbone.layer1.0.conv4.conv.weight"] = state["backbone.layer1.0.conv1.conv.weight"]
    del state["backbone.layer2.0.non_local_block.conv_out.bn.running_mean"]
    path = save_torch_checkpoint(tmp_path / "mm.pth", state, wrapper="state_dict")
    model = _model(overrides={"nonlocal_pool_position": "projection", "nonlocal_use_scale": False,
                              "nonlocal_out_use_bias": False})
    with pytest.raises(CheckpointMismatchError) as info:  # an mmaction2 file in an official-flavour preset: forced
        load_weights(model, path, format="mmaction2_pth")
    assert info.value.unexpected == ["backbone.layer1.0.conv4.conv.weight"]
    assert [m.split()[0] for m in info.value.missing] == ["nonlocal_conv3_0_bn_rm"]
    # num_batches_tracked buffers are bookkeeping, never reported.
    assert "num_batches_tracked" not in str(info.value)


def test_model_without_nonlocal_blocks_rejects_nonlocal_checkpoint(tmp_path):
    path = save_caffe2_pickle(tmp_path / "nl.pkl", official_blobs(_cfg(), seed=0))
    with pytest.raises(CheckpointMismatchError) as info:
        load_weights(_model(overrides={"nonlocal_blocks": [[], [], [], []]}), path)
    assert len(info.value.unexpected) == 2 * 12 and not info.value.missing  # two blocks x 12 tensors


def test_head_is_skipped_without_top_or_with_other_classes(tmp_path):
    blobs = official_blobs(_cfg(), seed=0)
    path = save_caffe2_pickle(tmp_path / "m.pkl", blobs)
    headless = _model(include_top=False)
    load_weights(headless, path, include_top=False)
    np.testing.assert_array_equal(headless.get_layer("conv1").kernel.numpy(),
                                  np.transpose(blobs["conv1_w"], (2, 3, 4, 1, 0)))
    ten = _model(classes=10)
    fresh = np.array(ten.get_layer("pred").kernel.numpy())
    load_weights(ten, path, classes=10)
    np.testing.assert_array_equal(ten.get_layer("pred").kernel.numpy(), fresh)
    np.testing.assert_array_equal(ten.get_layer("res5_0_branch2c_bn").moving_variance.numpy(),
                                  blobs["res5_0_branch2c_bn_riv"])
    # include_top with the wrong number of classes and no `classes` hint is a shape error, not a silent skip.
    with pytest.raises(CheckpointMismatchError, match="pred_w"):
        load_weights(_model(classes=10), path)


def test_unknown_format_and_format_registry(tmp_path):
    path = save_caffe2_pickle(tmp_path / "other.pkl", {"fc.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(UnknownFormatError, match="fc.weight"):
        load_weights(_model(), path)
    with pytest.raises(UnknownFormatError, match="format='no_such_format'"):
        get_format("no_such_format")
    with pytest.raises(ValueError, match="already registered"):
        register_format(CheckpointFormat(name="caffe2_pkl", reader=load_caffe2_pickle, map_names=dict))
    assert get_format("pyslowfast_pkl") is get_format("caffe2_pkl")

    # A new format is one registered entry: a reader and a name mapping (here: blob names with a prefix).
    blobs = official_blobs(_cfg(), seed=0)
    path = save_caffe2_pickle(tmp_path / "prefixed.pkl", {f"net/{k}": v for k, v in blobs.items()})
    fmt = CheckpointFormat(name="test_prefixed", reader=load_caffe2_pickle,
                           map_names=lambda keys: {k: k[len("net/"):] for k in keys if k.startswith("net/")})
    register_format(fmt)
    try:
        model = _model()
        assert assign_checkpoint(model, path, format="test_prefixed") is fmt
        np.testing.assert_array_equal(model.get_layer("pred").bias.numpy(), blobs["pred_b"])
    finally:
        del convert._FORMATS["test_prefixed"]


def test_keras_weights_file_is_loaded_strictly(tmp_path):
    source = _model()
    path = tmp_path / "nl.weights.h5"
    source.save_weights(path)
    same = _model()
    load_weights(same, path)
    for a, b in zip(source.weights, same.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    no_nl = _model(overrides={"nonlocal_blocks": [[], [], [], []]})
    before = _values(no_nl)
    with pytest.raises(CheckpointMismatchError, match="more arrays than the model has variables"):
        load_weights(no_nl, path, preset=None)
    for old, new in zip(before, _values(no_nl)):
        np.testing.assert_array_equal(old, new)

"""A checkpoint of the wrong framework or flavour is refused, not silently loaded (issue 15, item 4).

The three cases of the issue, each written by the reference implementations of the test suite: a gluon-cv `.pth`
for the PySlowFast I3D-NL preset and a PySlowFast Caffe2 `.pkl` for a gluon-cv preset (same tensor shapes,
different stems and non-local subsampling), and an mmaction2 embedded-Gaussian `.pth` (with the training config
mmengine writes into `meta`) for the dot-product preset. The error names both sides; `format=` loads the file
anyway, and a file of the right flavour still loads and matches its reference.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests import gluoncv_reference as gref  # noqa: E402
from tests.torch_references import (  # noqa: E402
    MMRecognizer3D,
    assert_logits_match,
    i3d_temporal_kernels,
    keras_logits,
    ptv_resnet,
    ptv_to_caffe2_blobs,
    random_clips,
    save_caffe2_pickle,
    tiny_overrides,
    torch_logits,
)

from nonlocal_zoo.models import create_model  # noqa: E402
from nonlocal_zoo.models.weights import load_weights  # noqa: E402
from nonlocal_zoo.pretrained.convert import CheckpointFlavourError, read_checkpoint  # noqa: E402
from nonlocal_zoo.pretrained.formats.mmaction2 import nonlocal_mode  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPTHS = [2, 2, 2, 2]
WIDTH = 8
NL = [[], [1], [1], []]
KERNELS = i3d_temporal_kernels(DEPTHS)

# What mmengine's Runner.save_checkpoint puts in meta["cfg"]: the config's pretty_text (an excerpt of the
# i3d_imagenet-pretrained-r50-nl-embedded-gaussian config; norm_cfg nests a dict inside non_local_cfg).
MM_CFG = """model = dict(
    type='Recognizer3D',
    backbone=dict(
        type='ResNet3d',
        non_local=((0, 0, 0), (0, 1, 0, 1), (0, 1, 0, 1, 0, 1), (0, 0, 0)),
        non_local_cfg=dict(
            sub_sample=True,
            use_scale=False,
            norm_cfg=dict(type='BN3d', requires_grad=True),
            mode='{mode}'),
        pretrained2d=True),
    cls_head=dict(type='I3DHead', num_classes=400, average_clips='prob'))
test_dataloader = dict(dataset=dict(test_mode=True))
"""


def _values(model):
    return [np.array(v.numpy()) for v in model.weights]


def _same(before, model):
    return all(np.array_equal(a, b, equal_nan=True) for a, b in zip(before, _values(model)))


def test_gluoncv_pth_into_the_pyslowfast_preset(tmp_path):
    preset = "i3d_nl5_r50_8x8_kinetics400_pyslowfast"
    net = gref.build("i3d_nl5_resnet50_v1_kinetics400")
    path = tmp_path / "i3d_nl5_resnet50_v1_kinetics400-9df1e103.pth"
    torch.save(net.state_dict(), path)
    assert read_checkpoint(path)[0].name == "gluoncv_pth"
    model = create_model(preset, input_shape=(8, 64, 64, 3))
    before = _values(model)
    with pytest.raises(CheckpointFlavourError) as info:
        load_weights(model, path, preset=preset)
    message = str(info.value)
    for text in (str(path), "gluoncv_pth", "gluon-cv", "pyslowfast_pkl", "PySlowFast", "format='gluoncv_pth'"):
        assert text in message, text
    assert info.value.detected == "gluoncv_pth" and info.value.expected == "pyslowfast_pkl"
    assert _same(before, model)  # nothing was assigned
    with pytest.raises(CheckpointFlavourError, match="gluon-cv"):
        create_model(preset, weights=path, input_shape=(8, 64, 64, 3))
    # Every shape fits (the override loads strictly): only the flavour check stood in the way.
    model = create_model(preset, weights=path, format="gluoncv_pth", input_shape=(8, 64, 64, 3))
    conv1 = net.state_dict()["first_stage.0.weight"].numpy()
    np.testing.assert_array_equal(model.get_layer("conv1").kernel.numpy(), conv1.transpose(2, 3, 4, 1, 0))
    theta = net.state_dict()["res_layers.1.1.nonlocal_block.theta.weight"].numpy()
    np.testing.assert_array_equal(model.get_layer("nonlocal_conv3_1").theta.kernel.numpy(),
                                  theta.reshape(theta.shape[:2]).T)


@pytest.fixture(scope="module")
def pyslowfast_pkl(tmp_path_factory):
    """A reduced PySlowFast I3D-NL network and its Caffe2 `.pkl` (the I3D_NLN_8x8_R50.pkl layout)."""
    x = random_clips((2, 3, 8, 64, 64), seed=4)
    net = ptv_resnet(depths=DEPTHS, stem_width=WIDTH, conv1_kt=5, temporal_kernels=KERNELS, nonlocal_blocks=NL,
                     head_pool=(4, 2, 2), seed=3, calibration=x)
    path = save_caffe2_pickle(tmp_path_factory.mktemp("psf") / "I3D_NLN_8x8_R50.pkl", ptv_to_caffe2_blobs(net))
    return path, x, torch_logits(net, x)


def _reduced(preset, weights=None, format=None, frames=8):
    """A reduced model of `preset` (create_model refuses weights with architecture overrides, so they are loaded
    as create_model would: `load_weights(model, weights, preset=preset, format=format)`)."""
    model = create_model(preset, input_shape=(frames, 64, 64, 3), classifier_activation=None,
                         **tiny_overrides(depths=DEPTHS, stem_width=WIDTH, temporal_kernels=KERNELS,
                                          nonlocal_blocks=NL))
    load_weights(model, weights, preset=preset, format=format)
    return model


def test_pyslowfast_pkl_into_a_gluoncv_preset(pyslowfast_pkl):
    path, x, expected = pyslowfast_pkl
    preset = "i3d_nl5_r50_32x2_kinetics400_gluoncv"
    with pytest.raises(CheckpointFlavourError) as info:
        _reduced(preset, weights=path)
    for text in (str(path), "caffe2_pkl", "PySlowFast", "gluoncv_pth", "gluon-cv"):
        assert text in str(info.value), text
    # The right preset loads it and computes the reference network ...
    right = _reduced("i3d_nl5_r50_8x8_kinetics400_pyslowfast", weights=path)
    assert_logits_match(keras_logits(right, x), expected)
    # ... while the gluon-cv network given the same tensors (format= forces it) computes something else: what
    # a silent load would have produced.
    forced = _reduced(preset, weights=path, format="caffe2_pkl")
    for a, b in zip(right.weights, forced.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    wrong = keras_logits(forced, x)
    assert np.max(np.abs(wrong - expected)) > 0.1 * np.max(np.abs(expected))


def _mm_checkpoint(path, mode, *, meta_key="cfg", as_dict=False):
    x = random_clips((2, 3, 16, 64, 64), seed=14)
    net = MMRecognizer3D(depths=DEPTHS, base_channels=WIDTH, nonlocal_blocks=NL, nonlocal_mode=mode, seed=13,
                         calibration=x)
    cfg = {"model": {"backbone": {"non_local_cfg": {"sub_sample": True, "mode": mode}}}} if as_dict \
        else MM_CFG.format(mode=mode)
    meta = {meta_key: cfg, "seed": 1234567890, "experiment_name": "i3d", "mmengine_version": "0.7.4",
            "epoch": 100, "iter": 120000}
    torch.save({"meta": meta, "state_dict": net.state_dict()}, path)
    return net, x


def _mm_model(preset, weights=None, format=None):
    return _reduced(preset, weights, format, frames=16)


def test_mmaction2_embedded_pth_into_the_dot_preset(tmp_path):
    path = tmp_path / "i3d_imagenet-pretrained-r50-nl-embedded-gaussian_20220812-afd8f562.pth"
    net, x = _mm_checkpoint(path, "embedded_gaussian")
    with pytest.raises(CheckpointFlavourError) as info:
        _mm_model("i3d_nl5_r50_32x2_kinetics400_mmaction2_dot", weights=path)
    message = str(info.value)
    assert str(path) in message and "'embedded'" in message and "['dot']" in message
    assert "format='mmaction2_pth'" in message
    right = _mm_model("i3d_nl5_r50_32x2_kinetics400_mmaction2_embedded", weights=path)
    assert_logits_match(keras_logits(right, x), torch_logits(net, x))
    forced = _mm_model("i3d_nl5_r50_32x2_kinetics400_mmaction2_dot", weights=path, format="mmaction2_pth")
    assert np.max(np.abs(keras_logits(forced, x) - torch_logits(net, x))) > 1e-3
    # load_weights on a model without a preset compares with the model's own blocks as well
    model = _mm_model("i3d_nl5_r50_32x2_kinetics400_mmaction2_dot")
    with pytest.raises(CheckpointFlavourError, match="'embedded'"):
        load_weights(model, path)  # no preset
    model = _mm_model("i3d_nl5_r50_32x2_kinetics400_mmaction2_embedded")
    model_dot = _mm_model("i3d_nl5_r50_32x2_kinetics400_mmaction2_dot")
    other = tmp_path / "dot.pth"
    _mm_checkpoint(other, "dot_product", meta_key="config")
    load_weights(model_dot, other)  # the right mode loads (mmcv 1.x `config` key)
    with pytest.raises(CheckpointFlavourError, match="'dot'"):
        load_weights(model, other)


@pytest.mark.parametrize("meta_key, as_dict", [("cfg", False), ("config", False), ("cfg", True)])
@pytest.mark.parametrize("mode, ours", [("embedded_gaussian", "embedded"), ("dot_product", "dot"),
                                        ("gaussian", "gaussian"), ("concatenation", "concatenate")])
def test_mmaction2_mode_from_meta(meta_key, as_dict, mode, ours):
    cfg = {"model": {"backbone": {"non_local_cfg": {"mode": mode}}}} if as_dict else MM_CFG.format(mode=mode)
    assert nonlocal_mode({"meta": {meta_key: cfg}}) == ours
    assert nonlocal_mode({"meta": {"epoch": 100}}) is None and nonlocal_mode({}) is None


def test_format_needs_a_local_file():
    with pytest.raises(ValueError, match="format='caffe2_pkl'"):
        create_model("i3d_nl5_r50_8x8_kinetics400", format="caffe2_pkl")
    with pytest.raises(ValueError, match="format="):
        create_model("i3d_nl5_r50_8x8_kinetics400", weights="kinetics400", format="caffe2_pkl")


def test_cli_convert_names_both_flavours(pyslowfast_pkl, tmp_path):
    path, _, _ = pyslowfast_pkl
    out = tmp_path / "x.weights.h5"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
    result = subprocess.run([sys.executable, "-m", "nonlocal_zoo.cli", "convert", str(path), "--model",
                             "i3d_nl5_r50_32x2_kinetics400_gluoncv", "--out", str(out)], capture_output=True,
                            text=True, timeout=300, cwd=REPO, env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
    assert "caffe2_pkl" in lines[0] and "gluoncv_pth" in lines[0] and not out.exists()

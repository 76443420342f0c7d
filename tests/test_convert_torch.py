"""PyTorch state-dict conversion (PySlowFast, pytorchvideo, mmaction2), against independent PyTorch references.

PySlowFast and pytorchvideo: pytorchvideo's own `create_resnet` (+ its NonLocal blocks), saved under PySlowFast's
names or with its native `state_dict`. mmaction2: a module-for-module transcription of `Recognizer3D(ResNet3d)`
with mmcv's `NonLocal3d` whose `state_dict()` gives mmaction2's names. Logits within 1e-4 relative, same top-1.
"""
import pytest

from tests.torch_references import (
    MMRecognizer3D,
    assert_logits_match,
    c2d_temporal_kernels,
    i3d_temporal_kernels,
    keras_logits,
    ptv_resnet,
    ptv_to_pyslowfast_state,
    random_clips,
    save_torch_checkpoint,
    tiny_overrides,
    torch_logits,
)

from nonlocal_zoo.models import create_model
from nonlocal_zoo.pretrained.convert import read_checkpoint
from nonlocal_zoo.models.weights import load_weights

DEPTHS = [2, 2, 2, 2]
WIDTH = 8
NL = [[], [1], [1], []]
NONE = [[], [], [], []]


def _keras(preset, kernels, blocks, shape, **extra):
    overrides = tiny_overrides(depths=DEPTHS, stem_width=WIDTH, temporal_kernels=kernels, nonlocal_blocks=blocks,
                               **extra)
    return create_model(preset, input_shape=(*shape, 3), classifier_activation=None, **overrides)


PTV_CASES = {
    # name: (file format, preset, temporal, NL blocks)
    "pyslowfast_i3d_nl": ("pyslowfast_pyth", "i3d_nl5_r50_8x8_kinetics400_pyslowfast", "i3d", NL),
    "pyslowfast_c2d": ("pyslowfast_pyth", "c2d_r50_8x8_kinetics400_pytorchvideo", "c2d", NONE),
    "pytorchvideo_i3d": ("pytorchvideo_pyth", "i3d_r50_8x8_kinetics400_pytorchvideo", "i3d", NONE),
    "pytorchvideo_c2d": ("pytorchvideo_pyth", "c2d_r50_8x8_kinetics400_pytorchvideo", "c2d", NONE),
}


@pytest.mark.parametrize("case", sorted(PTV_CASES))
def test_pyslowfast_and_pytorchvideo_state_dicts(case, tmp_path):
    fmt, preset, temporal, blocks = PTV_CASES[case]
    kernels = (i3d_temporal_kernels if temporal == "i3d" else c2d_temporal_kernels)(DEPTHS)
    x = random_clips((2, 3, 8, 64, 64), seed=12)
    net = ptv_resnet(depths=DEPTHS, stem_width=WIDTH, conv1_kt=5 if temporal == "i3d" else 1,
                     temporal_kernels=kernels, nonlocal_blocks=blocks, head_pool=(4, 2, 2), seed=11, calibration=x)
    state = ptv_to_pyslowfast_state(net) if fmt == "pyslowfast_pyth" else net.state_dict()
    path = save_torch_checkpoint(tmp_path / "checkpoint.pyth", state, wrapper="model_state")
    assert read_checkpoint(path)[0].name == fmt  # told apart by the key names alone
    model = _keras(preset, kernels, blocks, (8, 64, 64))
    load_weights(model, path)
    assert_logits_match(keras_logits(model, x), torch_logits(net, x))


MM_CASES = {
    # name: (preset, mmcv mode, extra Keras overrides)
    "no_nl": ("i3d_r50_32x2_kinetics400_mmaction2", None, {}),
    "embedded_gaussian": ("i3d_nl5_r50_32x2_kinetics400_mmaction2_embedded", "embedded_gaussian", {}),
    "dot_product": ("i3d_nl5_r50_32x2_kinetics400_mmaction2_dot", "dot_product", {}),
    "gaussian": ("i3d_nl5_r50_32x2_kinetics400_mmaction2_gaussian", "gaussian", {}),
    # mmaction2 publishes no concatenation model; the layer supports it, so the converter does too.
    "concatenation": ("i3d_nl5_r50_32x2_kinetics400_mmaction2_embedded", "concatenation",
                      {"nonlocal_mode": "concatenate"}),
}


@pytest.mark.parametrize("case", sorted(MM_CASES))
def test_mmaction2_state_dict(case, tmp_path):
    preset, mode, extra = MM_CASES[case]
    blocks = NL if mode else NONE
    # The gaussian mode takes the softmax of raw x_i . x_j (no projection, no scale): with activations of
    # size ~3 float32 rounding alone moves the logits by ~1e-4 relative (torch float32 vs. float64 too), so
    # its reference has smaller activations (BN scales 0.2-0.4).
    x = random_clips((2, 3, 16, 64, 64), seed=14)
    net = MMRecognizer3D(depths=DEPTHS, base_channels=WIDTH, nonlocal_blocks=blocks,
                         nonlocal_mode=mode or "embedded_gaussian", seed=13, calibration=x,
                         bn_gamma=(0.2, 0.4) if mode == "gaussian" else (0.6, 1.4))
    path = save_torch_checkpoint(tmp_path / f"i3d_{case}_20220812-00000000.pth", net.state_dict(),
                                 wrapper="state_dict")
    model = _keras(preset, i3d_temporal_kernels(DEPTHS), blocks, (16, 64, 64), **extra)
    load_weights(model, path)
    assert_logits_match(keras_logits(model, x), torch_logits(net, x))


@pytest.mark.slow
def test_pytorchvideo_hub_i3d_r50_full(tmp_path):
    """pytorchvideo's hub `i3d_r50` builder itself (the I3D_8x8_R50.pyth architecture), full size."""
    from pytorchvideo.models.hub.resnet import i3d_r50

    from tests.torch_references import randomize_

    x = random_clips((1, 3, 8, 112, 112), seed=22)
    net = randomize_(i3d_r50(pretrained=False, head_pool_kernel_size=(4, 4, 4)), seed=21, calibration=x)
    path = save_torch_checkpoint(tmp_path / "I3D_8x8_R50.pyth", net.state_dict(), wrapper="model_state")
    model = create_model("i3d_r50_8x8_kinetics400_pytorchvideo", weights=path, input_shape=(8, 112, 112, 3),
                         classifier_activation=None)
    assert_logits_match(keras_logits(model, x), torch_logits(net, x))


@pytest.mark.slow
def test_pyslowfast_state_dict_full_r50(tmp_path):
    x = random_clips((1, 3, 8, 112, 112), seed=24)
    net = ptv_resnet(nonlocal_blocks=[[], [1, 3], [1, 3, 5], []], head_pool=(4, 4, 4), seed=23, calibration=x)
    path = save_torch_checkpoint(tmp_path / "I3D_NLN_8x8_R50.pyth", ptv_to_pyslowfast_state(net),
                                 wrapper="model_state")
    model = create_model("i3d_nl5_r50_8x8_kinetics400_pyslowfast", weights=path, input_shape=(8, 112, 112, 3),
                         classifier_activation=None)
    assert_logits_match(keras_logits(model, x), torch_logits(net, x))


@pytest.mark.slow
def test_mmaction2_state_dict_full_r50(tmp_path):
    x = random_clips((1, 3, 16, 112, 112), seed=26)
    net = MMRecognizer3D(nonlocal_blocks=[[], [1, 3], [1, 3, 5], []], nonlocal_mode="embedded_gaussian", seed=25,
                         calibration=x)
    path = save_torch_checkpoint(tmp_path / "i3d_nl_embedded_20220812-afd8f562.pth", net.state_dict(),
                                 wrapper="state_dict")
    model = create_model("i3d_nl5_r50_32x2_kinetics400_mmaction2_embedded", weights=path,
                         input_shape=(16, 112, 112, 3), classifier_activation=None)
    assert_logits_match(keras_logits(model, x), torch_logits(net, x))

"""Caffe2 `.pkl` conversion, checked against independent PyTorch references (logits within 1e-4 relative, same top-1).

Official geometry: a transcription of the official Caffe2 network on the blob dict (`torch_references.official_*`).
PySlowFast geometry (PySlowFast's Caffe2-format files): pytorchvideo's `create_resnet` with pytorchvideo NonLocal
blocks, its tensors written under the official blob names.
"""
import pytest

from tests.torch_references import (
    assert_logits_match,
    c2d_temporal_kernels,
    i3d_temporal_kernels,
    keras_logits,
    official_blobs,
    official_config,
    official_forward,
    ptv_resnet,
    ptv_to_caffe2_blobs,
    random_clips,
    save_caffe2_pickle,
    tiny_overrides,
    torch_logits,
)

from nonlocal_zoo.models import create_model
from nonlocal_zoo.models.weights import load_weights

DEPTHS = [2, 2, 2, 2]
WIDTH = 8

OFFICIAL_CASES = {
    # preset, official network arguments, input (T, H, W)
    "i3d_nl_paper_geometry": (
        "i3d_nl5_r50_32x2_kinetics400",
        dict(conv1_kt=5, conv1_ts=2, pool1_kernel=(2, 3, 3), pool1_stride=(2, 2, 2),
             temporal_kernels=i3d_temporal_kernels(DEPTHS), nonlocal_blocks=[[], [0, 1], [1], []]),
        (16, 64, 64),
    ),
    "c2d_repo_geometry": (
        "c2d_r50_8x8_kinetics400",
        dict(conv1_kt=1, conv1_ts=1, pool1_kernel=(1, 3, 3), pool1_stride=(1, 2, 2),
             temporal_kernels=c2d_temporal_kernels(DEPTHS), nonlocal_blocks=[[], [], [], []]),
        (8, 64, 64),
    ),
    # Frozen-BN (AffineNd) 32x4 model: no NL BatchNorm, res3 NL attends within groups of 4 frames.
    "i3d_nl_affine_grouped": (
        "i3d_nl5_r50_32x4_kinetics400",
        dict(conv1_kt=5, conv1_ts=1, pool1_kernel=(1, 3, 3), pool1_stride=(1, 2, 2),
             temporal_kernels=i3d_temporal_kernels(DEPTHS), nonlocal_blocks=[[], [1], [1], []],
             nonlocal_groups=[None, 4, None, None], nonlocal_bn=False, affine=True),
        (16, 64, 64),
    ),
}


@pytest.mark.parametrize("case", sorted(OFFICIAL_CASES))
def test_official_caffe2_pkl(case, tmp_path):
    preset, args, (t, h, w) = OFFICIAL_CASES[case]
    cfg = official_config(stem_width=WIDTH, depths=DEPTHS, widths=[WIDTH * 2**s for s in range(4)], **args)
    x = random_clips((2, 3, t, h, w), seed=2)
    blobs = official_blobs(cfg, seed=1, calibration=x)
    path = save_caffe2_pickle(tmp_path / "model.pkl", blobs, solver_state=case == "c2d_repo_geometry")
    expected = official_forward(blobs, x, cfg).numpy()

    overrides = tiny_overrides(depths=DEPTHS, stem_width=WIDTH, temporal_kernels=cfg["temporal_kernels"],
                               nonlocal_blocks=cfg["nonlocal_blocks"])
    model = create_model(preset, input_shape=(t, h, w, 3), classifier_activation=None, **overrides)
    load_weights(model, path)
    assert_logits_match(keras_logits(model, x), expected)


PYSLOWFAST_CASES = {
    # preset, pytorchvideo arguments, input (T, H, W), head pool = res5 map
    "i3d_nl": ("i3d_nl5_r50_8x8_kinetics400_pyslowfast",
               dict(conv1_kt=5, temporal_kernels=i3d_temporal_kernels(DEPTHS), nonlocal_blocks=[[], [1], [1], []]),
               (8, 64, 64), (4, 2, 2)),
    "c2d_nopool": ("c2d_nopool_r50_8x8_kinetics400_pyslowfast",
                   dict(conv1_kt=1, temporal_kernels=c2d_temporal_kernels(DEPTHS), pool2=False),
                   (8, 64, 64), (8, 2, 2)),
}


@pytest.mark.parametrize("case", sorted(PYSLOWFAST_CASES))
def test_pyslowfast_caffe2_pkl(case, tmp_path):
    preset, args, (t, h, w), head_pool = PYSLOWFAST_CASES[case]
    args = {"nonlocal_blocks": [[], [], [], []], **args}
    x = random_clips((2, 3, t, h, w), seed=4)
    net = ptv_resnet(depths=DEPTHS, stem_width=WIDTH, head_pool=head_pool, seed=3, calibration=x, **args)
    path = save_caffe2_pickle(tmp_path / "I3D_8x8.pkl", ptv_to_caffe2_blobs(net))
    expected = torch_logits(net, x)

    overrides = tiny_overrides(depths=DEPTHS, stem_width=WIDTH, temporal_kernels=args["temporal_kernels"],
                               nonlocal_blocks=args["nonlocal_blocks"])
    model = create_model(preset, input_shape=(t, h, w, 3), classifier_activation=None, **overrides)
    load_weights(model, path)
    assert_logits_match(keras_logits(model, x), expected)


@pytest.mark.slow
def test_official_caffe2_pkl_full_r50(tmp_path):
    """Full-size I3D-NL5 R50 (paper geometry, 32x2 file layout) through `create_model(weights=path)`."""
    cfg = official_config()
    x = random_clips((1, 3, 16, 112, 112), seed=6)
    blobs = official_blobs(cfg, seed=5, calibration=x)
    path = save_caffe2_pickle(tmp_path / "i3d_nonlocal_32x2_IN_pretrain_400k.pkl", blobs, solver_state=True)
    expected = official_forward(blobs, x, cfg).numpy()
    model = create_model("i3d_nl5_r50_32x2_kinetics400", weights=path, input_shape=(16, 112, 112, 3),
                         classifier_activation=None)
    assert_logits_match(keras_logits(model, x), expected)


@pytest.mark.slow
def test_pyslowfast_caffe2_pkl_full_r50(tmp_path):
    """Full-size I3D-NL5 R50 in PySlowFast geometry (I3D_NLN_8x8_R50.pkl layout)."""
    x = random_clips((1, 3, 8, 112, 112), seed=8)
    net = ptv_resnet(nonlocal_blocks=[[], [1, 3], [1, 3, 5], []], head_pool=(4, 4, 4), seed=7, calibration=x)
    path = save_caffe2_pickle(tmp_path / "I3D_NLN_8x8_R50.pkl", ptv_to_caffe2_blobs(net))
    expected = torch_logits(net, x)
    model = create_model("i3d_nl5_r50_8x8_kinetics400_pyslowfast", weights=path, input_shape=(8, 112, 112, 3),
                         classifier_activation=None)
    assert_logits_match(keras_logits(model, x), expected)

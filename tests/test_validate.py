"""`validate.expected_tensors` (a pure function of an arch dict) against the variables of built models, and
`check_checkpoint` on files written by the independent reference in tests/torch_references.py."""
import pickle

import pytest

from nonlocal_zoo.models import create_model
from nonlocal_zoo.presets import PRESETS, get_preset, list_models
from nonlocal_zoo.pretrained.convert import CheckpointMismatchError, model_slots
from nonlocal_zoo.pretrained.validate import check_checkpoint, expected_tensors, preset_validator


def _slot_shapes(model):
    """Canonical name -> shape in the checkpoint layout, from the model's own variables (not from the arch)."""
    shapes = {}
    for slot in model_slots(model):
        shape = tuple(slot.variable.shape)
        if slot.kind == "conv":  # Keras (T, H, W, I, O) -> Caffe2 (O, I, T, H, W)
            shape = (shape[4], shape[3], *shape[:3])
        elif slot.kind == "dense":  # Keras (I, O) -> (O, I)
            shape = (shape[1], shape[0])
        shapes[slot.name] = shape
    return shapes


TINY = {"stem_width": 4, "stage_depths": [2, 1, 3, 1], "stage_widths": [4, 8, 16, 32],
        "temporal_kernels": [[3, 1], [3], [1, 3, 1], [3]], "nonlocal_blocks": [[], [0], [0, 2], []]}
CASES = {
    # name: (preset whose flavour is kept, extra overrides)
    "official": ("i3d_nl5_r50_8x8_kinetics400", {}),
    "frozen_bn_affine_no_nl_norm": ("i3d_nl5_r50_128x1_kinetics400", {"nonlocal_temporal_group_sizes": [None] * 4}),
    "mmaction2_out_without_bias": ("i3d_nl5_r50_32x2_kinetics400_mmaction2_embedded", {}),
    "mmaction2_dot": ("i3d_nl5_r50_32x2_kinetics400_mmaction2_dot", {}),
    "mmaction2_gaussian_no_theta_phi": ("i3d_nl5_r50_32x2_kinetics400_mmaction2_gaussian", {}),
    "gluoncv": ("i3d_nl5_r50_32x2_kinetics400_gluoncv", {}),
    "c2d_nopool": ("c2d_nopool_r50_8x8_kinetics400_pyslowfast", {"temporal_kernels": [[1, 1], [1], [1, 1, 1], [1]],
                                                                 "nonlocal_blocks": [[]] * 4}),
    "concatenate": ("i3d_nl5_r50_8x8_kinetics400", {"nonlocal_mode": "concatenate"}),
    "alias_embedded_gaussian_no_bias": ("i3d_nl5_r50_8x8_kinetics400", {"nonlocal_mode": "embedded_gaussian",
                                                                        "nonlocal_use_bias": False}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_expected_tensors_equal_the_slots_of_a_built_model(case):
    preset, extra = CASES[case]
    overrides = {**TINY, **extra}
    model = create_model(preset, weights=None, classes=7, input_shape=(8, 32, 32, 3), **overrides)
    expected = expected_tensors({**get_preset(preset)["arch"], **overrides}, classes=7)
    assert expected == _slot_shapes(model)
    headless = expected_tensors({**get_preset(preset)["arch"], **overrides}, include_top=False)
    assert set(expected) - set(headless) == {"pred_w", "pred_b"}


def test_expected_tensors_of_the_three_stage_test_preset():
    arch = get_preset("tiny_nl_i3d")["arch"]
    model = create_model("tiny_nl_i3d", weights=None, classes=5)
    assert expected_tensors(arch, classes=5) == _slot_shapes(model)


@pytest.mark.slow
@pytest.mark.parametrize("preset", list_models(pretrained=True))
def test_expected_tensors_of_every_published_preset_at_full_size(preset):
    model = create_model(preset, weights=None)
    assert expected_tensors(get_preset(preset)["arch"]) == _slot_shapes(model)
    assert preset_validator(preset).classes == 400


def _official_pickle(path, *, conv1_kt=5, nonlocal_blocks=((), (0,), (0,), ()), drop=(), classes=400):
    pytest.importorskip("torch")
    from tests.torch_references import i3d_temporal_kernels, official_blobs, official_config

    depths = [1, 1, 1, 1]
    cfg = official_config(stem_width=4, depths=depths, widths=[4, 8, 16, 32], conv1_kt=conv1_kt, classes=classes,
                          temporal_kernels=i3d_temporal_kernels(depths),
                          nonlocal_blocks=[list(b) for b in nonlocal_blocks])
    blobs = {k: v for k, v in official_blobs(cfg, seed=3).items() if k not in drop}
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    return path


ARCH = {**PRESETS["i3d_nl5_r50_8x8_kinetics400"]["arch"], "stem_width": 4, "stage_depths": [1, 1, 1, 1],
        "stage_widths": [4, 8, 16, 32], "temporal_kernels": [[3], [3], [3], [1]],  # i3d_temporal_kernels([1] * 4)
        "nonlocal_blocks": [[], [0], [0], []]}


def test_check_checkpoint_accepts_the_matching_file_and_lists_what_is_wrong(tmp_path):
    check_checkpoint(_official_pickle(tmp_path / "good.pkl"), format="caffe2_pkl", arch=ARCH)
    bad = _official_pickle(tmp_path / "bad.pkl", conv1_kt=1, drop=("res4_0_branch2b_bn_riv",))  # C2D stem, a blob lost
    with pytest.raises(CheckpointMismatchError) as info:
        check_checkpoint(bad, format="caffe2_pkl", arch=ARCH, what="The test file")
    error = info.value
    assert error.missing == ["res4_0_branch2b_bn_riv"] and error.unexpected == []
    assert error.mismatched == [("conv1_w", (4, 3, 1, 7, 7), (4, 3, 5, 7, 7), "conv1_w")]
    assert str(error).startswith("The test file does not match the model.")
    with pytest.raises(CheckpointMismatchError, match="pred_w: \\(10, 128\\) vs. \\(400, 128\\)"):
        check_checkpoint(_official_pickle(tmp_path / "ten.pkl", classes=10), format="caffe2_pkl", arch=ARCH)


def test_preset_validator_key_changes_with_the_expectation(monkeypatch):
    name = "i3d_nl5_r50_8x8_kinetics400_pyslowfast"
    key = preset_validator(name).cache_key
    assert key.startswith(f"{name}:pyslowfast_pkl:") and preset_validator(name).cache_key == key
    monkeypatch.setitem(PRESETS[name], "arch", ARCH)
    assert preset_validator(name).cache_key != key
    with pytest.raises(ValueError, match="no published weights.*'i3d_r50'"):
        preset_validator("i3d_r50")

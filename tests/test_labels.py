"""Tests of nonlocal_zoo.pretrained.labels: packaged Kinetics-400 labels, decode_predictions, preprocess_input."""
import hashlib
import importlib.resources
import re

import numpy as np
import pytest

from nonlocal_zoo.pretrained.labels import decode_predictions, kinetics400_labels, preprocess_input

# sha256 of the label file, from data/README.md of the design repository (400 lines, LF, trailing newline).
_LABELS_SHA256 = "e9f2806fe9109b851a80a74841244f6f8c9d10917fa0229cd82bab67f2f8e28f"


def test_kinetics400_labels_file_and_order():
    raw = importlib.resources.files("nonlocal_zoo.pretrained").joinpath("kinetics400_labels.txt").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == _LABELS_SHA256
    labels = kinetics400_labels()
    assert len(labels) == 400 and len(set(labels)) == 400
    assert labels == sorted(labels)  # classifier index order is plain code-point order
    assert labels[0] == "abseiling" and labels[-1] == "zumba"
    assert "passing American football (in game)" in labels  # official spelling, capital A
    labels.append("mutated")  # callers get a copy
    assert len(kinetics400_labels()) == 400


def test_decode_predictions_matches_a_plain_sort():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 400))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = kinetics400_labels()
    decoded = decode_predictions(probs, top=5)
    assert len(decoded) == 3
    for row, result in zip(probs, decoded):
        expected = sorted(range(400), key=lambda i: -row[i])[:5]
        assert [i for i, _, _ in result] == expected
        assert [name for _, name, _ in result] == [labels[i] for i in expected]
        assert [score for _, _, score in result] == [float(row[i]) for i in expected]
        assert all(type(i) is int and type(score) is float for i, _, score in result)


def test_decode_predictions_custom_labels_and_ties():
    preds = np.array([[0.2, 0.5, 0.3], [0.4, 0.2, 0.4]], np.float32)
    out = decode_predictions(preds, top=3, labels=["a", "b", "c"])
    assert out[0] == [(1, "b", pytest.approx(0.5)), (2, "c", pytest.approx(0.3)), (0, "a", pytest.approx(0.2))]
    assert [i for i, _, _ in out[1]] == [0, 2, 1]  # ties keep index order


@pytest.mark.parametrize(
    "preds, kwargs, quoted",
    [
        (np.zeros(400), {}, "shape (400,)"),
        (np.zeros((2, 1, 400)), {}, "shape (2, 1, 400)"),
        (np.zeros((2, 10)), {}, "shape (2, 10)"),
        (np.zeros((2, 10)), {"labels": ["x"] * 9}, "len(labels)=9"),
        (np.zeros((1, 400)), {"top": 0}, "top=0"),
        (np.zeros((1, 400)), {"top": 401}, "top=401"),
        (np.zeros((1, 400)), {"top": 2.0}, "top=2.0"),
    ],
)
def test_decode_predictions_bad_input(preds, kwargs, quoted):
    with pytest.raises(ValueError, match=re.escape(quoted)):
        decode_predictions(preds, **kwargs)


def _clip(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize(
    "preset, mean, std",
    [
        (None, [114.75] * 3, [57.375] * 3),
        ("official", [114.75] * 3, [57.375] * 3),
        ("pyslowfast", [0.45 * 255] * 3, [0.225 * 255] * 3),  # PySlowFast writes it as x/255, 0.45, 0.225
        ("mmaction2", [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]),
        ("gluoncv", [0.485 * 255, 0.456 * 255, 0.406 * 255], [0.229 * 255, 0.224 * 255, 0.225 * 255]),
    ],
)
def test_preprocess_input_protocols(preset, mean, std):
    clip = _clip((4, 5, 6, 3))
    out = preprocess_input(clip, preset)
    expected = (clip.astype(np.float64) - np.array(mean)) / np.array(std)
    assert out.dtype == np.float32 and out.shape == clip.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_preprocess_input_gluoncv_is_imagenet_on_unit_range():
    clip = _clip((1, 2, 3, 4, 3), seed=1)
    expected = (clip / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(preprocess_input(clip, "gluoncv"), expected, rtol=1e-5, atol=1e-5)


def test_preprocess_input_explicit_values_and_dict():
    clip = _clip((2, 3, 2, 2, 3), seed=2).astype(np.float64)
    out = preprocess_input(clip, mean=(10.0, 20.0, 30.0), std=2.0)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, (clip - [10.0, 20.0, 30.0]) / 2.0)
    out = preprocess_input(clip, {"mean": [0.5] * 3, "std": [0.25] * 3, "scale": 1.0})
    np.testing.assert_allclose(out, (clip / 255.0 - 0.5) / 0.25)
    # Explicit arguments override the preset's values.
    np.testing.assert_allclose(preprocess_input(clip, "mmaction2", std=1.0), clip - [123.675, 116.28, 103.53])


def test_preprocess_input_accepts_lists():
    clip = _clip((1, 1, 2, 3), seed=3)
    np.testing.assert_allclose(preprocess_input(clip.tolist()), (clip - 114.75) / 57.375, rtol=1e-6)


def test_preprocess_input_with_a_preset_name():
    from nonlocal_zoo.presets import get_preset, list_models

    clip = _clip((2, 4, 4, 3), seed=4)
    for name in list_models(pretrained=True):
        config = get_preset(name)["preprocessing"]
        expected = (clip * (config.get("scale", 255.0) / 255.0) - np.array(config["mean"])) / np.array(config["std"])
        np.testing.assert_allclose(preprocess_input(clip, name), expected, rtol=1e-5, atol=1e-5, err_msg=name)
    with pytest.raises(ValueError, match="not_a_preset"):
        preprocess_input(clip, "not_a_preset")


@pytest.mark.parametrize(
    "clip, kwargs, quoted",
    [
        (np.zeros((4, 4, 3), np.uint8), {}, "shape (4, 4, 3)"),
        (np.zeros((2, 4, 4, 1), np.uint8), {}, "shape (2, 4, 4, 1)"),
        (np.zeros((1, 2, 2, 2, 2, 3), np.uint8), {}, "shape (1, 2, 2, 2, 2, 3)"),
        (np.zeros((2, 4, 4, 3), bool), {}, "dtype bool"),
        (np.zeros((2, 4, 4, 3), np.uint8), {"std": 0.0}, "std=0.0"),
        (np.zeros((2, 4, 4, 3), np.uint8), {"mean": (1.0, 2.0)}, "mean=(1.0, 2.0)"),
        (np.zeros((2, 4, 4, 3), np.uint8), {"scale": -1}, "scale=-1"),
        (np.zeros((2, 4, 4, 3), np.uint8), {"preset": 3}, "preset=3"),
    ],
)
def test_preprocess_input_bad_input(clip, kwargs, quoted):
    with pytest.raises(ValueError, match=re.escape(quoted)):
        preprocess_input(clip, **kwargs)


def test_preprocess_input_on_backend_tensors():
    keras = pytest.importorskip("keras")
    clip = _clip((2, 3, 4, 4, 3), seed=5)
    tensor = keras.ops.convert_to_tensor(clip)
    out = preprocess_input(tensor, "mmaction2")
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    expected = preprocess_input(clip, "mmaction2")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), expected, rtol=1e-6, atol=1e-6)

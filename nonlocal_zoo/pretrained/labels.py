"""Kinetics-400 labels, `decode_predictions` and `preprocess_input`, `keras.applications` style.

The label file ships with the package (`kinetics400_labels.txt`). It has the 400 class names in classifier index
order, i.e. plain code-point order. The same order serves the Caffe2, PySlowFast, pytorchvideo, mmaction2 and
gluon-cv checkpoints (see `data/README.md` of the design repository).
"""
import functools
import importlib.resources
from collections.abc import Mapping

import numpy as np

_LABELS_FILE = "kinetics400_labels.txt"

# Normalisation protocols of the checkpoint sources (research/architecture.md §5, research/gluoncv.md). As in
# `nonlocal_zoo.presets`, `mean` and `std` are in units of pixel values in [0, scale]. Clips come in on the 0-255
# scale, so y = (x * scale / 255 - mean) / std.
_OFFICIAL = {"mean": 114.75, "std": 57.375, "scale": 255.0}
PREPROCESSING = {
    "official": _OFFICIAL,  # Caffe2 video-nonlocal-net: MODEL.MEAN 114.75, MODEL.STD 57.375
    "caffe2": _OFFICIAL,
    "pyslowfast": _OFFICIAL,  # x / 255, mean 0.45, std 0.225: the same numbers
    "pytorchvideo": _OFFICIAL,
    "mmaction2": {"mean": (123.675, 116.28, 103.53), "std": (58.395, 57.12, 57.375), "scale": 255.0},
    "gluoncv": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "scale": 1.0},  # x / 255, ImageNet stats
}
_INPUT_RANGE = 255.0


@functools.lru_cache(maxsize=None)
def _read_kinetics400_labels():
    text = importlib.resources.files("nonlocal_zoo.pretrained").joinpath(_LABELS_FILE).read_text(encoding="utf-8")
    labels = tuple(text.splitlines())
    if len(labels) != 400 or len(set(labels)) != 400:
        raise RuntimeError(f"The packaged {_LABELS_FILE} is damaged: {len(labels)} lines, {len(set(labels))} unique.")
    return labels


def kinetics400_labels():
    """Returns the 400 Kinetics-400 class names in classifier index order.

    Example:
        >>> from nonlocal_zoo.pretrained.labels import kinetics400_labels
        >>> kinetics400_labels()[0]
        'abseiling'
    """
    return list(_read_kinetics400_labels())


def decode_predictions(preds, top=5, labels=None):
    """Decodes class scores into the `top` (index, label, score) tuples per sample, best first.

    Args:
        preds: array-like of shape `(batch, num_classes)`, e.g. softmax outputs of a Kinetics-400 model.
        top: how many classes to return per sample (1 <= top <= num_classes).
        labels: class names in index order. None means the Kinetics-400 names (needs num_classes == 400).

    Returns:
        A list with one list per sample of `(index, label, score)` tuples (`int`, `str`, `float`).

    Example:
        >>> probs = model.predict(clips)              # (B, 400)
        >>> decode_predictions(probs, top=3)[0]
        [(12, 'bowling', 0.91), (3, 'archery', 0.02), ...]
    """
    scores = _to_numpy(preds)
    if scores.ndim != 2:
        raise ValueError(
            "`decode_predictions` expects a batch of scores of shape (batch, num_classes). "
            f"Received: preds with shape {scores.shape}"
        )
    num_classes = scores.shape[1]
    if labels is None:
        if num_classes != 400:
            raise ValueError(
                "Without `labels`, `decode_predictions` decodes Kinetics-400 scores (400 classes); pass `labels=` "
                f"for other heads. Received: preds with shape {scores.shape}"
            )
        labels = _read_kinetics400_labels()
    labels = list(labels)
    if len(labels) != num_classes:
        raise ValueError(
            f"`labels` has {len(labels)} names but preds has {num_classes} classes. Received: preds with shape "
            f"{scores.shape}, len(labels)={len(labels)}"
        )
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or not 1 <= top <= num_classes:
        raise ValueError(f"`top` must be an integer in [1, {num_classes}]. Received: top={top!r}")
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top]  # (batch, top)
    return [[(int(i), labels[i], float(row[i])) for i in idx] for row, idx in zip(scores, order)]


def _to_numpy(x):
    try:
        return np.asarray(x)
    except (TypeError, ValueError, RuntimeError):
        import keras

        return keras.ops.convert_to_numpy(x)


def _resolve_preprocessing(preset, mean, std, scale):
    if preset is None:
        config = _OFFICIAL
    elif isinstance(preset, Mapping):
        config = preset
    elif isinstance(preset, str) and preset.lower() in PREPROCESSING:
        config = PREPROCESSING[preset.lower()]
    elif isinstance(preset, str):
        try:
            from nonlocal_zoo.presets import get_preset
        except ImportError as error:
            raise ValueError(
                f"Unknown preprocessing preset (the preset registry is unavailable: {error}). Known protocols: "
                f"{sorted(PREPROCESSING)}. Received: preset={preset!r}"
            ) from error
        config = get_preset(preset)["preprocessing"]
    else:
        raise ValueError(f"`preset` must be a preset name, a protocol name or a dict. Received: preset={preset!r}")
    config = {
        "mean": config.get("mean") if mean is None else mean,
        "std": config.get("std") if std is None else std,
        "scale": config.get("scale") if scale is None else scale,
    }
    values = {}
    for key, default in (("mean", 0.0), ("std", 1.0), ("scale", _INPUT_RANGE)):
        value = config[key]
        array = np.asarray(default if value is None else value, dtype="float64")
        if array.ndim > 1 or array.size not in (1, 3) or not np.all(np.isfinite(array)):
            raise ValueError(f"`{key}` must be a finite number or 3 per-channel numbers. Received: {key}={value!r}")
        if key == "std" and np.any(array == 0):
            raise ValueError(f"`std` must be non-zero. Received: std={value!r}")
        if key == "scale" and (array.size != 1 or array.item() <= 0):
            raise ValueError(f"`scale` must be one positive number (255 or 1). Received: scale={value!r}")
        values[key] = array.reshape(-1)
    values["factor"] = values.pop("scale") / _INPUT_RANGE
    return values


def preprocess_input(clip, preset=None, *, mean=None, std=None, scale=None):
    """Normalises RGB clips the way a checkpoint was trained: `(clip * scale / 255 - mean) / std`.

    Protocols: "official" (default; Caffe2, PySlowFast, pytorchvideo) `(x - 114.75) / 57.375`; "mmaction2"
    mean (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375); "gluoncv" `x / 255`, then ImageNet mean
    (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) (`scale=1`). A preset name (e.g.
    "i3d_nl5_r50_32x2_kinetics400") uses that preset's `preprocessing` entry. If you pass `mean`, `std` or
    `scale`, your values replace the preset's.

    Args:
        clip: uint8 or float RGB values in [0, 255], of shape `(T, H, W, 3)` or `(B, T, H, W, 3)`. This can be a
            numpy array or a backend tensor; a tensor is processed with `keras.ops`, so this works inside
            `tf.data`.
        preset: None, a protocol name (see above), a preset name, or a dict with "mean", "std", "scale".
        mean: per-channel (3 values) or global mean, in units of pixel values in [0, scale].
        std: per-channel or global standard deviation (non-zero), same units.
        scale: the pixel range `mean` and `std` refer to: 255 (default) for 0-255 statistics, 1 for 0-1
            statistics. The clip itself is always on the 0-255 scale.

    Returns:
        float array of the same shape: float32, or the input's own float dtype when it is already floating.

    Example:
        >>> clip = nonlocal_zoo.data.read_video("video.mp4")[:32]     # uint8 (32, H, W, 3)
        >>> x = preprocess_input(clip, "i3d_nl5_r50_32x2_kinetics400_mmaction2")
    """
    values = _resolve_preprocessing(preset, mean, std, scale)
    shape = tuple(getattr(clip, "shape", np.shape(clip)))
    if len(shape) not in (4, 5) or shape[-1] not in (3, None):
        raise ValueError(
            "`preprocess_input` expects RGB clips of shape (T, H, W, 3) or (B, T, H, W, 3). "
            f"Received: clip with shape {shape}"
        )
    if isinstance(clip, (np.ndarray, list, tuple)):
        x = np.asarray(clip)
        if x.dtype == bool or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise ValueError(f"`clip` must hold integer or float RGB values. Received: clip with dtype {x.dtype}")
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype("float32")
        x = x.astype(dtype, copy=False)
        mean_, std_, factor = (values[k].astype(dtype) for k in ("mean", "std", "factor"))
        return (x * factor - mean_) / std_

    from keras import backend, ops

    dtype = backend.standardize_dtype(clip.dtype)
    if dtype == "bool" or not (dtype.startswith(("int", "uint", "float", "bfloat"))):
        raise ValueError(f"`clip` must hold integer or float RGB values. Received: clip with dtype {dtype}")
    if not dtype.startswith(("float", "bfloat")):
        dtype = "float32"
    x = ops.cast(clip, dtype)
    mean_, std_, factor = (ops.convert_to_tensor(values[k], dtype=dtype) for k in ("mean", "std", "factor"))
    return (x * factor - mean_) / std_

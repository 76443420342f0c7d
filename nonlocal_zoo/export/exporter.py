"""`export_model`: a zoo model (or any clip classifier) to a SavedModel, TFLite or ONNX artifact.

Example:
    >>> path = export_model("i3d_nl5_r50_8x8_kinetics400", "onnx", "i3d_nl5.onnx", weights=None)
"""
import shutil
from pathlib import Path

import numpy as np

from nonlocal_zoo.export.calibration import generated_clips
from nonlocal_zoo.export.metadata import DEFAULT_ONNX_OPSET, QUANTIZATIONS, build_metadata, normalize_format
from nonlocal_zoo.export.onnx import write_onnx
from nonlocal_zoo.export.savedmodel import write_saved_model
from nonlocal_zoo.export.serving import check_model, resolve_model, serving_model
from nonlocal_zoo.export.tflite import write_tflite


def export_model(
    model_or_name,
    format="saved_model",
    out=None,
    *,
    weights="auto",
    preset=None,
    input_shape=None,
    labels=None,
    quantization=None,
    representative_clips=None,
    num_calibration_clips=16,
    select_tf_ops=False,
    lower_3d_ops=True,
    opset=DEFAULT_ONNX_OPSET,
    overwrite=False,
):
    """Export a zoo model (or any clip classifier) to a SavedModel, TFLite or ONNX artifact.

    The artifact takes `uint8` RGB clips `(B, T, H, W, 3)` (input `clips`), normalises them in the graph and
    returns `probabilities` `(B, classes)`; its metadata records the preset, the clip protocol (frames, sampling
    rate and sampling code, short side, crop, mean/std) and the labels (see the module docstring).

    Args:
        model_or_name: a name as `nonlocal_zoo.tasks.resolve` takes it (a preset, `"demo"`, a preset directory
            such as a fine-tuning run, a `.keras` file, `hf://org/repo`), a `VideoClassifier`, or a plain
            `keras.Model` with one `(B, T, H, W, 3)` input and one `(B, classes)` output (with `preset=`).
        format: `"saved_model"` (a directory; TF Serving signature `serving_default`), `"tflite"` (a `.tflite`
            file) or `"onnx"` (a `.onnx` file). Aliases: `"tf_saved_model"`, `"litert"`.
        out: where to write. Defaults to `<model name>` + `/`, `.tflite` or `.onnx` in the working directory.
        weights: with a name: `"auto"` (default: the published or saved weights; an architecture-only preset is
            refused), `None` (random), `"kinetics400"`, a path or an `"hf://"` handle.
        preset: with a plain `keras.Model`: the preset whose preprocessing it uses, or a dict
            with `mean`, `std`, `scale` (and optionally `num_frames`, `sampling_rate`, `sampling`,
            `test_short_side`).
        input_shape: with a preset name: `(T, H, W, 3)` of the exported input. Defaults to the preset's frames and
            training crop (e.g. `(32, 224, 224, 3)`): a single-view classifier; `None` sizes are allowed.
        labels: class names in output order. Defaults to a VideoClassifier's own, else the Kinetics-400 names for
            400-class models.
        quantization: TFLite only: `None` (float32), `"float16"`, `"dynamic_int8"` or `"int8"` (calibrated on
            `representative_clips`).
        representative_clips: uint8 `(N, T, H, W, 3)` calibration clips for `"int8"`. Defaults to
            `num_calibration_clips` generated clips (`generated_clips`).
        num_calibration_clips: how many clips to generate for `"int8"` calibration. Defaults to 16.
        select_tf_ops: TFLite only: allow Flex (SELECT_TF_OPS) ops for anything builtins cannot express (needs an
            interpreter with the Flex delegate). Defaults to `False`.
        lower_3d_ops: TFLite only: convert `lower_for_tflite(model)` (exact 2-D lowerings of the 3-D pools and
            separable convolutions, built with `keras.models.clone_model`). Defaults to `True`.
        opset: ONNX opset. Defaults to 17.
        overwrite: replace an existing `out`. Defaults to `False`.

    Returns:
        The `pathlib.Path` of the artifact.

    Raises:
        ValueError: bad arguments (quoting them), or an op the format cannot express (naming it).

    Example:
        >>> path = export_model("i3d_r50_8x8_kinetics400", "tflite", "i3d.tflite", weights=None,
        ...                     quantization="float16")
    """
    fmt = _check_arguments(format, quantization)
    model, preset_name, pre = resolve_model(model_or_name, weights=weights, preset=preset, input_shape=input_shape)
    if labels is None and getattr(model, "labels", None) is not None:
        labels = list(model.labels)  # a VideoClassifier names its classes
    check_model(model)
    out = _output_path(out, model, fmt, overwrite)
    extra = {}
    if fmt == "tflite":
        representative_clips = _calibration_clips(model, quantization, representative_clips, num_calibration_clips)
        extra = {"quantization": quantization, "lowered_3d_ops": bool(lower_3d_ops), "select_tf_ops": select_tf_ops}
        if quantization == "int8":
            extra["calibration_clips"] = int(len(representative_clips))
    if fmt == "onnx":
        extra = {"opset": opset}
    metadata = build_metadata(model, preset_name, pre, labels, fmt, **extra)
    if fmt == "saved_model":
        write_saved_model(serving_model(model, pre), out, metadata)
    elif fmt == "tflite":
        write_tflite(model, pre, out, metadata, quantization=quantization, representative_clips=representative_clips,
                     select_tf_ops=select_tf_ops, lower=lower_3d_ops)
    else:
        write_onnx(serving_model(model, pre), out, metadata, opset=opset)
    return out


def _check_arguments(format, quantization):
    """The canonical format; bad format/quantization combinations and non-TensorFlow backends raise ValueError."""
    fmt = normalize_format(format)
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"`quantization` must be one of {list(QUANTIZATIONS)}. Received: quantization={quantization!r}"
        )
    if quantization is not None and fmt != "tflite":
        raise ValueError(
            "`quantization` applies to format='tflite' only. "
            f"Received: format={format!r}, quantization={quantization!r}"
        )
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "Export runs on the TensorFlow backend (SavedModel and TFLite are TensorFlow graphs; ONNX goes through "
            f"tf2onnx). Set KERAS_BACKEND=tensorflow. Received: backend={keras.backend.backend()!r}"
        )
    return fmt


def _output_path(out, model, fmt, overwrite):
    """The artifact path (default `<model name>` + suffix), checked and cleared for writing."""
    suffix = {"saved_model": "", "tflite": ".tflite", "onnx": ".onnx"}[fmt]
    out = Path(out if out is not None else f"{model.name}{suffix}")
    if suffix and out.suffix != suffix:
        raise ValueError(f"A {fmt} export is a file named *{suffix}. Received: out={str(out)!r}")
    if out.exists():
        if not overwrite:
            raise ValueError(f"`out` already exists; pass overwrite=True to replace it. Received: out={str(out)!r}")
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _calibration_clips(model, quantization, representative_clips, num_calibration_clips):
    """The uint8 calibration clips of an `"int8"` export (generated when not given), or None."""
    if quantization != "int8":
        return representative_clips
    if representative_clips is None:
        shape = tuple(model.inputs[0].shape[1:])
        if any(d is None for d in shape):
            raise ValueError(f"Generated calibration clips need a static input shape. Received: {shape}; "
                             "pass representative_clips=")
        representative_clips = generated_clips(num_calibration_clips, shape)
    representative_clips = np.asarray(representative_clips)
    if representative_clips.dtype != np.uint8 or representative_clips.ndim != 5:
        raise ValueError(
            "`representative_clips` must be uint8 clips (N, T, H, W, 3). Received: dtype "
            f"{representative_clips.dtype}, shape {representative_clips.shape}"
        )
    return representative_clips

"""What an export records about itself, and reading it back: the artifact contract (input/output names, metadata
key and location per format) and the metadata dict (preset, clip protocol, labels).

- SavedModel: `assets.extra/nonlocal_zoo.json` (TF Serving ignores `assets.extra`); signature `serving_default`.
- TFLite: a flatbuffer metadata entry named `nonlocal_zoo` (the interpreter ignores it).
- ONNX: `metadata_props["nonlocal_zoo"]`.

Example:
    >>> read_export_metadata("i3d.tflite")["preprocessing"]["num_frames"]
    8
"""
import json
import os
from pathlib import Path

import numpy as np

FORMATS = ("saved_model", "tflite", "onnx")
FORMAT_ALIASES = {"saved_model": "saved_model", "tf_saved_model": "saved_model", "savedmodel": "saved_model",
                  "tflite": "tflite", "litert": "tflite", "onnx": "onnx"}
QUANTIZATIONS = (None, "dynamic_int8", "float16", "int8")
INPUT_NAME = "clips"
OUTPUT_NAME = "probabilities"
SIGNATURE = "serving_default"
METADATA_KEY = "nonlocal_zoo"
SAVED_MODEL_METADATA = os.path.join("assets.extra", "nonlocal_zoo.json")
DEFAULT_ONNX_OPSET = 17


def normalize_format(format):
    """The canonical format name of `format` (`"saved_model"`, `"tflite"` or `"onnx"`; aliases accepted)."""
    key = format.lower() if isinstance(format, str) else None
    if key not in FORMAT_ALIASES:
        raise ValueError(f"`format` must be one of {list(FORMATS)}. Received: format={format!r}")
    return FORMAT_ALIASES[key]


def build_metadata(model, preset_name, pre, labels, fmt, **extra):
    """The metadata dict of an export of `model` (the Keras model, before the serving wrapper).

    Args:
        model: the exported classifier, one `(B, T, H, W, 3)` input and one `(B, classes)` output.
        preset_name: its preset, or None.
        pre: its preprocessing dict (`mean`, `std`, `scale`, `num_frames`, `sampling_rate`, ...).
        labels: class names in output order, or None (Kinetics-400 names for 400 classes).
        fmt: the format name.
        **extra: format-specific entries (quantization, opset, ...).

    Raises:
        ValueError: `labels` does not name every class.

    Example:
        >>> build_metadata(model, "demo", pre, None, "onnx", opset=17)["output"]["classes"]
    """
    from nonlocal_zoo.version import __version__

    classes = int(model.outputs[0].shape[-1])
    if labels is None and classes == 400:
        from nonlocal_zoo.pretrained.labels import kinetics400_labels

        labels = kinetics400_labels()
    if labels is not None:
        labels = [str(label) for label in labels]
        if len(labels) != classes:
            raise ValueError(f"`labels` must name the {classes} classes of the model. Received: {len(labels)} labels")
    _, frames, height, width, _ = model.inputs[0].shape
    mean, std, scale = (np.broadcast_to(np.asarray(pre.get(k, d), "float64"), (3,)).tolist()
                        for k, d in (("mean", 0.0), ("std", 1.0), ("scale", 255.0)))
    return {
        "nonlocal_zoo_version": __version__,
        "format": fmt,
        "preset": preset_name,
        "model_name": model.name,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": [None, frames, height, width, 3],
                  "layout": "BTHWC", "channel_order": pre.get("channel_order", "RGB"), "value_range": [0, 255]},
        "output": {"name": OUTPUT_NAME, "classes": classes, "activation": "softmax"},
        "preprocessing": {
            "in_graph": "(clips / 255 * scale - mean) / std, per RGB channel",
            "num_frames": frames if frames is not None else pre.get("num_frames"),
            "sampling_rate": pre.get("sampling_rate"),
            "sampling": pre.get("sampling"),
            "mean": mean,
            "std": std,
            "scale": scale[0],
            "short_side": pre.get("test_short_side"),
            "crop": [height, width],
        },
        "labels": labels,
        **extra,
    }


def export_format(path):
    """`"saved_model"`, `"tflite"` or `"onnx"` for an exported artifact path."""
    path = Path(path)
    if path.is_dir() and (path / "saved_model.pb").exists():
        return "saved_model"
    if path.is_file() and path.suffix == ".tflite":
        return "tflite"
    if path.is_file() and path.suffix == ".onnx":
        return "onnx"
    raise ValueError(
        "Not an exported model: expected a SavedModel directory (with saved_model.pb), a .tflite or a .onnx file. "
        f"Received: path={str(path)!r}"
    )


def read_export_metadata(path):
    """The metadata dict `export_model` stored in a SavedModel directory, `.tflite` or `.onnx` file.

    Example:
        >>> read_export_metadata("i3d.tflite")["preprocessing"]["num_frames"]
        8
    """
    fmt = export_format(path)
    path = Path(path)
    if fmt == "saved_model":
        meta = path / SAVED_MODEL_METADATA
        if not meta.exists():
            raise ValueError(f"{path} has no {SAVED_MODEL_METADATA}: not exported by nonlocal_zoo.")
        return json.loads(meta.read_text(encoding="utf-8"))
    if fmt == "tflite":
        from tensorflow.lite.python import schema_py_generated as schema

        data = path.read_bytes()
        model = schema.Model.GetRootAsModel(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name().decode() == METADATA_KEY:
                return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode("utf-8"))
        raise ValueError(f"{path} has no '{METADATA_KEY}' metadata: not exported by nonlocal_zoo.")
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    raise ValueError(f"{path} has no '{METADATA_KEY}' metadata: not exported by nonlocal_zoo.")

"""Export zoo models for deployment: TensorFlow SavedModel (TF Serving), TFLite (LiteRT) and ONNX.

Every artifact takes a batch of raw clips, `uint8` RGB of shape `(B, T, H, W, 3)` (input name `clips`), normalises
them inside the graph with the preset's mean and std, and returns class probabilities `(B, classes)` (output name
`probabilities`; a softmax is added when the model ends in logits). The preprocessing that the graph does *not* do
(frame sampling, short-side resize, crop) is recorded in the artifact's metadata, with the preset name and the labels:

- SavedModel: `assets.extra/nonlocal_zoo.json` (TF Serving ignores `assets.extra`); signature `serving_default`.
- TFLite: a flatbuffer metadata entry named `nonlocal_zoo` (the interpreter ignores it).
- ONNX: `metadata_props["nonlocal_zoo"]`.

`read_export_metadata(path)` reads it back from any of the three, `load_export(path)` runs any of them.

What each format can express (measured on this code base with TensorFlow 2.21, tf2onnx 1.17, onnxruntime 1.32):

- SavedModel: everything (the graph is the Keras model's TensorFlow graph).
- ONNX (via `keras.Model.export(format="onnx")`, i.e. tf2onnx): everything; `Conv3D` and `MaxPool3D` map to ONNX
  `Conv` and `MaxPool` on 5-D tensors.
- TFLite builtins have `CONV_3D` (float32 kernels only) but no `MAX_POOL_3D` / `AVERAGE_POOL_3D`; a plain
  conversion stops at `tf.MaxPool3D` (pool1, pool2 and the non-local key/value pooling), and the `SELECT_TF_OPS`
  (Flex) fallback does not run in `tf.lite.Interpreter` of the `tensorflow` wheel ("Select TensorFlow op(s) ... are
  not supported by this interpreter"). So the TFLite graph is traced with exact lowerings: a 3-D max/average pool
  with kernel `(kt, kh, kw)` is a 2-D pool over `(H, W)` on `(B*T, H, W, C)` followed by a 2-D pool over `(T, 1)` on
  `(B, T, H*W, C)` (max and mean over a box are separable); a `Conv3D` whose kernel is `(1, kh, kw)` becomes
  `CONV_2D` on `(B*T, H, W, C)` (temporal stride = frame slicing), and one whose kernel is `(kt, 1, 1)` becomes
  `CONV_2D` with kernel `(kt, 1)` on `(B, T, H*W, C)` (spatial stride = pixel slicing). Only the I3D stem conv1
  (5x7x7) stays `CONV_3D`. With these, every op of every zoo model is a TFLite builtin.
- TFLite quantization: `"float16"` (weights in float16, computed in float32; every op), `"dynamic_int8"` (int8
  weights, activations quantized on the fly; `CONV_2D`, `FULLY_CONNECTED` and `BATCH_MATMUL` have hybrid kernels,
  the I3D stem `CONV_3D` stays float32), `"int8"` (static int8 activations calibrated on generated clips; every op
  with an int8 kernel runs in int8; TFLite's `CONV_3D` has no int8 kernel, so the I3D stem runs in float32 between
  QUANTIZE/DEQUANTIZE ops, and the uint8 input is cast to float before normalisation: not a pure-integer model,
  which int8-only accelerators (Edge TPU) would need).

Example:
    >>> from nonlocal_zoo.export import export_model, load_export
    >>> path = export_model("i3d_nl5_r50_8x8_kinetics400", "onnx", "i3d_nl5.onnx", weights=None)
    >>> probabilities = load_export(path)(clips)        # clips: uint8 (B, 8, 224, 224, 3)
"""
import contextlib
import importlib
import json
import os
import shutil
import tempfile
import warnings
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


# ----------------------------------------------------------------------------------------------------------------------
# Model and metadata
# ----------------------------------------------------------------------------------------------------------------------
def _normalize_format(format):
    key = format.lower() if isinstance(format, str) else None
    if key not in FORMAT_ALIASES:
        raise ValueError(f"`format` must be one of {list(FORMATS)}. Received: format={format!r}")
    return FORMAT_ALIASES[key]


def _resolve_model(model_or_name, *, weights, preset, input_shape):
    """(keras.Model, preset name or None, preprocessing dict)."""
    import keras

    from nonlocal_zoo.models import create_model, preset_of
    from nonlocal_zoo.presets import get_preset

    if isinstance(model_or_name, str):
        if preset is not None and preset != model_or_name:
            raise ValueError(f"Pass the preset either as the model name or as `preset`. Received: preset={preset!r}")
        config = get_preset(model_or_name)
        pre = config["preprocessing"]
        if weights == "auto":
            weights = "kinetics400" if config["weights"] is not None else None
        if input_shape is None:
            input_shape = (pre["num_frames"], pre["train_crop"], pre["train_crop"], 3)
        model = create_model(model_or_name, weights=weights, input_shape=tuple(input_shape))
        return model, model_or_name, pre
    if not isinstance(model_or_name, keras.Model):
        raise ValueError(
            "`model_or_name` must be a preset name (see nonlocal_zoo.list_models()) or a keras.Model. "
            f"Received: model_or_name of type {type(model_or_name).__name__}"
        )
    if weights != "auto" or input_shape is not None:
        raise ValueError(
            "`weights` and `input_shape` apply when exporting a preset by name; a keras.Model is exported as it is. "
            f"Received: weights={weights!r}, input_shape={input_shape!r}"
        )
    model = model_or_name
    if isinstance(preset, dict):
        return model, None, preset
    name = preset or preset_of(model)
    if name is None:
        raise ValueError(
            "Cannot tell which preprocessing this model needs: its name is not a preset. Pass `preset=` (a preset "
            "name whose preprocessing it uses, or a dict with num_frames, sampling_rate, mean, std, scale). "
            f"Received: model.name={model.name!r}, preset=None"
        )
    return model, name, get_preset(name)["preprocessing"]


def _check_model(model):
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 5 or model.inputs[0].shape[-1] != 3:
        raise ValueError(
            "Export needs a model with one RGB clip input (B, T, H, W, 3). "
            f"Received: inputs with shapes {[tuple(i.shape) for i in model.inputs]}"
        )
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        raise ValueError(
            "Export needs a classifier with one (B, classes) output (include_top=True). "
            f"Received: outputs with shapes {[tuple(o.shape) for o in model.outputs]}"
        )


def _ends_with_softmax(model):
    """Whether the model's output already is a softmax (or the mean of per-location softmaxes)."""
    last = model.layers[-1]
    if last.name == "pred_mean":  # fully-convolutional head: softmax per location, then the mean
        names = [layer.name for layer in model.layers]
        if "pred_activation" not in names:
            return False
        last = model.get_layer("pred_activation")
    if type(last).__name__ == "Softmax":
        return True
    return getattr(getattr(last, "activation", None), "__name__", None) == "softmax"


def _metadata(model, preset_name, pre, labels, fmt, **extra):
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


def _serving_model(model, pre):
    """uint8 clips -> in-graph normalisation -> model -> probabilities."""
    import keras

    mean = np.broadcast_to(np.asarray(pre.get("mean", 0.0), "float64"), (3,))
    std = np.broadcast_to(np.asarray(pre.get("std", 1.0), "float64"), (3,))
    factor = float(pre.get("scale", 255.0)) / 255.0
    clips = keras.Input(tuple(model.inputs[0].shape[1:]), dtype="uint8", name=INPUT_NAME)
    # (x * factor - mean) / std as one multiply-add per channel: (B, T, H, W, 3) float32
    x = keras.layers.Rescaling(scale=(factor / std).tolist(), offset=(-mean / std).tolist(), dtype="float32",
                               name="normalize")(clips)
    y = model(x)
    if not _ends_with_softmax(model):
        y = keras.layers.Softmax(dtype="float32", name=OUTPUT_NAME)(y)
    return keras.Model(clips, y, name=f"{model.name}_serving")


def _input_spec(serving):
    import tensorflow as tf

    return tf.TensorSpec(tuple(serving.inputs[0].shape), tf.uint8, name=INPUT_NAME)


# ----------------------------------------------------------------------------------------------------------------------
# TFLite lowerings (see the module docstring): 3-D pools and convolutions as 2-D builtins
# ----------------------------------------------------------------------------------------------------------------------
def _pool3d_as_2d(inputs, pool_size, strides, pool):
    """`pool` ("max"/"avg") over (kt, kh, kw) windows of `(B, T, H, W, C)`, valid padding, as two 2-D pools."""
    import tensorflow as tf

    pool_fn = tf.nn.max_pool2d if pool == "max" else tf.nn.avg_pool2d
    kt, kh, kw = pool_size
    st, sh, sw = strides
    channels = inputs.shape[-1]
    shape = tf.shape(inputs)
    batch, frames, height, width = shape[0], shape[1], shape[2], shape[3]
    x = inputs
    if (kh, kw, sh, sw) != (1, 1, 1, 1):
        x = tf.reshape(x, [-1, height, width, channels])  # (B*T, H, W, C)
        x = pool_fn(x, (kh, kw), (sh, sw), "VALID")  # (B*T, H', W', C)
        height, width = tf.shape(x)[1], tf.shape(x)[2]
        x = tf.reshape(x, [batch, frames, height, width, channels])
    if (kt, st) != (1, 1):
        x = tf.reshape(x, [batch, frames, height * width, channels])  # (B, T, H'W', C)
        x = pool_fn(x, (kt, 1), (st, 1), "VALID")  # (B, T', H'W', C)
        x = tf.reshape(x, [batch, tf.shape(x)[1], height, width, channels])  # (B, T', H', W', C)
    return x


def _conv3d_as_2d(inputs, kernel, strides):
    """Valid, undilated `Conv3D` of `(B, T, H, W, C)` as `CONV_2D`, for kernels `(1, kh, kw)` or `(kt, 1, 1)`.

    Returns None for other kernels (they stay `CONV_3D`)."""
    import tensorflow as tf

    kt, kh, kw, cin, cout = kernel.shape
    st, sh, sw = strides
    shape = tf.shape(inputs)
    if kt == 1:
        x = inputs[:, ::st] if st != 1 else inputs  # a 1-frame kernel with temporal stride keeps frames 0, st, ...
        shape = tf.shape(x)
        batch, frames = shape[0], shape[1]
        x = tf.reshape(x, [-1, shape[2], shape[3], cin])  # (B*T', H, W, Cin)
        y = tf.nn.conv2d(x, kernel[0], (sh, sw), "VALID")  # (B*T', H', W', Cout)
        out = tf.shape(y)
        return tf.reshape(y, [batch, frames, out[1], out[2], cout])  # (B, T', H', W', Cout)
    if (kh, kw) == (1, 1):
        x = inputs[:, :, ::sh, ::sw] if (sh, sw) != (1, 1) else inputs  # 1x1 spatial kernel: stride = slicing
        shape = tf.shape(x)
        batch, height, width = shape[0], shape[2], shape[3]
        x = tf.reshape(x, [batch, shape[1], height * width, cin])  # (B, T, HW, Cin)
        y = tf.nn.conv2d(x, kernel[:, 0], (st, 1), "VALID")  # kernel (kt, 1, Cin, Cout) -> (B, T', HW, Cout)
        return tf.reshape(y, [batch, tf.shape(y)[1], height, width, cout])  # (B, T', H, W, Cout)
    return None


@contextlib.contextmanager
def tflite_lowering():
    """Within this context, Keras' TensorFlow backend computes 3-D pools and (1,k,k) / (k,1,1) convolutions as 2-D
    ops, so that a graph traced inside it converts to TFLite builtins. The results are the same functions (exact
    lowerings; float rounding aside). Other ops and other backends are untouched.

    Example:
        >>> with tflite_lowering():
        ...     converter = tf.lite.TFLiteConverter.from_concrete_functions(...)
    """
    nn = importlib.import_module("keras.src.backend.tensorflow.nn")
    originals = {name: getattr(nn, name, None) for name in ("conv", "max_pool", "average_pool")}
    if any(fn is None for fn in originals.values()):  # Keras moved its internals: convert without lowering
        warnings.warn("Keras' TensorFlow backend has changed; exporting TFLite without the 3-D op lowerings.")
        yield
        return

    def channels_last_5d(inputs, padding, data_format):
        return (len(inputs.shape) == 5 and str(padding).lower() == "valid"
                and data_format in (None, "channels_last"))

    def make_pool(name, pool):
        original = originals[name]

        def pool_fn(inputs, pool_size, strides=None, padding="valid", data_format=None):
            if not channels_last_5d(inputs, padding, data_format):
                return original(inputs, pool_size, strides, padding, data_format)
            sizes = tuple(pool_size) if isinstance(pool_size, (tuple, list)) else (pool_size,) * 3
            steps = sizes if strides is None else (tuple(strides) if isinstance(strides, (tuple, list))
                                                   else (strides,) * 3)
            return _pool3d_as_2d(inputs, sizes, steps, pool)

        return pool_fn

    def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        dilations = tuple(dilation_rate) if isinstance(dilation_rate, (tuple, list)) else (dilation_rate,)
        if channels_last_5d(inputs, padding, data_format) and all(d == 1 for d in dilations):
            steps = tuple(strides) if isinstance(strides, (tuple, list)) else (strides,) * 3
            result = _conv3d_as_2d(inputs, kernel, steps)
            if result is not None:
                return result
        return originals["conv"](inputs, kernel, strides, padding, data_format, dilation_rate)

    nn.conv, nn.max_pool, nn.average_pool = conv, make_pool("max_pool", "max"), make_pool("average_pool", "avg")
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(nn, name, fn)


# ----------------------------------------------------------------------------------------------------------------------
# Writers
# ----------------------------------------------------------------------------------------------------------------------
def _write_saved_model(serving, path, metadata):
    import keras

    archive = keras.export.ExportArchive()
    archive.track(serving)
    archive.add_endpoint(
        SIGNATURE, lambda clips: {OUTPUT_NAME: serving(clips, training=False)}, input_signature=[_input_spec(serving)]
    )
    archive.write_out(str(path), verbose=False)
    meta_path = Path(path) / SAVED_MODEL_METADATA
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(metadata, indent=1), encoding="utf-8")


def generated_clips(num_clips, shape, *, seed=0):
    """Generated uint8 clips `(num_clips, T, H, W, 3)`: smooth colour fields drifting over time, plus noise.

    Used as the representative dataset of int8 calibration and to measure quantized agreement; no real video needed.

    Example:
        >>> generated_clips(4, (8, 64, 64, 3)).shape
        (4, 8, 64, 64, 3)
    """
    import cv2

    frames, height, width, channels = shape
    rng = np.random.default_rng(seed)
    clips = np.empty((num_clips, frames, height, width, channels), np.uint8)
    for n in range(num_clips):
        grid = rng.uniform(0, 255, (6, 6, channels)).astype("float32")  # coarse colour field
        big = cv2.resize(grid, (2 * width, 2 * height), interpolation=cv2.INTER_CUBIC)
        drift = rng.uniform(-1, 1, 2) * min(height, width) / max(frames, 1)
        for t in range(frames):
            dy, dx = (np.array([height, width]) // 2 + t * drift).astype(int) % np.array([height, width])
            frame = big[dy:dy + height, dx:dx + width] + rng.normal(0, 8, (height, width, channels))
            clips[n, t] = np.clip(frame, 0, 255).astype(np.uint8)
    return clips


def _tflite_converter(saved_model_dir, quantization, representative_clips, select_tf_ops):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=[SIGNATURE])
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if select_tf_ops:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops
    if quantization is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        clips = representative_clips

        def representative_dataset():
            for clip in clips:
                yield [clip[None]]  # (1, T, H, W, 3) uint8

        converter.representative_dataset = representative_dataset
    return converter


def _add_tflite_metadata(flatbuffer, name, data):
    """The TFLite flatbuffer with one more `metadata` entry `name` -> bytes `data` (ignored by interpreters)."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(data, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata = list(model.metadata or []) + [entry]
    builder = flatbuffers.Builder(len(flatbuffer) + len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _write_tflite(serving, path, metadata, *, quantization, representative_clips, select_tf_ops, lower):
    with tempfile.TemporaryDirectory(prefix="nonlocal_zoo_tflite_") as tmp:
        with tflite_lowering() if lower else contextlib.nullcontext():
            _write_saved_model(serving, tmp, metadata)
        converter = _tflite_converter(tmp, quantization, representative_clips, select_tf_ops)
        try:
            flatbuffer = converter.convert()
        except Exception as error:  # tf.lite's ConverterError; its message lists the ops it could not express
            text = str(error)
            unsupported = sorted({line.strip().split("(")[0] for line in text.splitlines()
                                  if line.strip().startswith("tf.")})
            raise ValueError(
                f"TFLite cannot express {unsupported or 'some ops'} of model {serving.name!r} as builtin ops"
                + (" even after nonlocal_zoo's 3-D pool/conv lowerings" if lower else "")
                + ". `select_tf_ops=True` embeds them as Flex (SELECT_TF_OPS) ops, which need an interpreter "
                "linked with the Flex delegate (tf.lite.Interpreter of the tensorflow wheel is not). "
                f"Received: quantization={quantization!r}, select_tf_ops={select_tf_ops}. Converter said: "
                f"{text[-1500:]}"
            ) from error
    flatbuffer = _add_tflite_metadata(flatbuffer, METADATA_KEY, json.dumps(metadata).encode("utf-8"))
    Path(path).write_bytes(flatbuffer)


def _write_onnx(serving, path, metadata, *, opset):
    import onnx

    with tempfile.TemporaryDirectory(prefix="nonlocal_zoo_onnx_") as tmp:
        raw = os.path.join(tmp, "model.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # tf2onnx's numpy 2 shims
            serving.export(raw, format="onnx", verbose=False, input_signature=[_input_spec(serving)],
                           opset_version=opset)
        proto = onnx.load(raw)
    graph = proto.graph
    if len(graph.output) != 1:
        raise RuntimeError(f"Expected one ONNX output. Received: {[o.name for o in graph.output]}")
    old = graph.output[0].name
    for node in graph.node:  # rename the output tensor (tf2onnx calls it after the TF op, e.g. "Identity:0")
        node.output[:] = [OUTPUT_NAME if name == old else name for name in node.output]
        node.input[:] = [OUTPUT_NAME if name == old else name for name in node.input]
    graph.output[0].name = OUTPUT_NAME
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    proto.doc_string = f"nonlocal_zoo export of {metadata['preset'] or metadata['model_name']}"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


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
        model_or_name: a preset name (the model is built with `create_model`) or a `keras.Model` with one
            `(B, T, H, W, 3)` input and one `(B, classes)` output.
        format: `"saved_model"` (a directory; TF Serving signature `serving_default`), `"tflite"` (a `.tflite`
            file) or `"onnx"` (a `.onnx` file). Aliases: `"tf_saved_model"`, `"litert"`.
        out: where to write. Defaults to `<model name>` + `/`, `.tflite` or `.onnx` in the working directory.
        weights: with a preset name: `"auto"` (default: the published Kinetics-400 weights when the preset has
            them, else random initialisation), `None`, `"kinetics400"`, a path or an `"hf://"` handle.
        preset: with a `keras.Model` whose name is not a preset: the preset whose preprocessing it uses, or a dict
            with `mean`, `std`, `scale` (and optionally `num_frames`, `sampling_rate`, `sampling`,
            `test_short_side`).
        input_shape: with a preset name: `(T, H, W, 3)` of the exported input. Defaults to the preset's frames and
            training crop (e.g. `(32, 224, 224, 3)`): a single-view classifier; `None` sizes are allowed.
        labels: class names in output order. Defaults to the Kinetics-400 names for 400-class models.
        quantization: TFLite only: `None` (float32), `"float16"`, `"dynamic_int8"` or `"int8"` (calibrated on
            `representative_clips`).
        representative_clips: uint8 `(N, T, H, W, 3)` calibration clips for `"int8"`. Defaults to
            `num_calibration_clips` generated clips (`generated_clips`).
        num_calibration_clips: how many clips to generate for `"int8"` calibration. Defaults to 16.
        select_tf_ops: TFLite only: allow Flex (SELECT_TF_OPS) ops for anything builtins cannot express (needs an
            interpreter with the Flex delegate). Defaults to `False`.
        lower_3d_ops: TFLite only: trace with `tflite_lowering()`. Defaults to `True`.
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
    fmt = _normalize_format(format)
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
    model, preset_name, pre = _resolve_model(model_or_name, weights=weights, preset=preset, input_shape=input_shape)
    _check_model(model)
    suffix = {"saved_model": "", "tflite": ".tflite", "onnx": ".onnx"}[fmt]
    out = Path(out if out is not None else f"{model.name}{suffix}")
    if suffix and out.suffix != suffix:
        raise ValueError(f"A {fmt} export is a file named *{suffix}. Received: out={str(out)!r}")
    if out.exists():
        if not overwrite:
            raise ValueError(f"`out` already exists; pass overwrite=True to replace it. Received: out={str(out)!r}")
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)

    serving = _serving_model(model, pre)
    extra = {}
    if fmt == "tflite":
        extra = {"quantization": quantization, "lowered_3d_ops": bool(lower_3d_ops), "select_tf_ops": select_tf_ops}
        if quantization == "int8":
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
            extra["calibration_clips"] = int(len(representative_clips))
    if fmt == "onnx":
        extra = {"opset": opset}
    metadata = _metadata(model, preset_name, pre, labels, fmt, **extra)
    if fmt == "saved_model":
        _write_saved_model(serving, out, metadata)
    elif fmt == "tflite":
        _write_tflite(serving, out, metadata, quantization=quantization, representative_clips=representative_clips,
                      select_tf_ops=select_tf_ops, lower=lower_3d_ops)
    else:
        _write_onnx(serving, out, metadata, opset=opset)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Reading artifacts back
# ----------------------------------------------------------------------------------------------------------------------
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


def _tflite_interpreter(path):
    try:  # LiteRT, the interpreter's new home
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "tf.lite.Interpreter is deprecated"
            return tf.lite.Interpreter(model_path=str(path))
    return Interpreter(model_path=str(path))


class ExportedModel:
    """A loaded export: `model(clips)` -> numpy probabilities `(B, classes)`; `model.metadata`, `model.format`.

    Runs SavedModels with `tf.saved_model.load` (signature `serving_default`), TFLite files with the LiteRT /
    `tf.lite` interpreter and ONNX files with onnxruntime.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.format = export_format(path)
        self.metadata = read_export_metadata(path)
        if self.format == "saved_model":
            import tensorflow as tf

            self._loaded = tf.saved_model.load(str(path))
            self._runner = self._loaded.signatures[SIGNATURE]
        elif self.format == "tflite":
            self._runner = _tflite_interpreter(path)
            self._shape = None
        else:
            import onnxruntime

            self._runner = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    @property
    def labels(self):
        return self.metadata.get("labels")

    def __call__(self, clips):
        clips = np.asarray(clips)
        expected = self.metadata["input"]["shape"][1:]
        if (clips.dtype != np.uint8 or clips.ndim != 5
                or any(e is not None and e != s for e, s in zip(expected, clips.shape[1:]))):
            raise ValueError(
                f"Expected uint8 clips of shape (B, {', '.join(str(e) for e in expected)}). "
                f"Received: clips with dtype {clips.dtype} and shape {clips.shape}"
            )
        if self.format == "saved_model":
            import tensorflow as tf

            return self._runner(**{INPUT_NAME: tf.constant(clips)})[OUTPUT_NAME].numpy()
        if self.format == "tflite":
            interpreter = self._runner
            index = interpreter.get_input_details()[0]["index"]
            if self._shape != clips.shape:
                interpreter.resize_tensor_input(index, clips.shape)
                interpreter.allocate_tensors()
                self._shape = clips.shape
            interpreter.set_tensor(index, clips)
            interpreter.invoke()
            return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()
        return self._runner.run([OUTPUT_NAME], {INPUT_NAME: clips})[0]

    def __repr__(self):
        return f"ExportedModel({str(self.path)!r}, format={self.format!r}, preset={self.metadata.get('preset')!r})"


def load_export(path):
    """Load an artifact written by `export_model` (any format) as an `ExportedModel`.

    Example:
        >>> model = load_export("i3d.onnx")
        >>> probabilities = model(clips)           # uint8 (B, T, H, W, 3) -> (B, classes)
        >>> model.metadata["preprocessing"]["sampling_rate"]
        8
    """
    return ExportedModel(path)


def compare_with_keras(exported, model, clips):
    """How closely an export reproduces the Keras model on `clips` (uint8 `(N, T, H, W, 3)`).

    Args:
        exported: an `ExportedModel` or a path.
        model: the Keras model it was exported from (it takes normalised float clips).
        clips: uint8 clips; normalised for the Keras model with the export's recorded mean/std.

    Returns:
        `{"max_abs_diff": float, "top1_agreement": float, "clips": int}` on the probabilities.

    Example:
        >>> compare_with_keras("i3d.tflite", model, generated_clips(8, (8, 224, 224, 3)))["top1_agreement"]
        1.0
    """
    import keras

    exported = exported if isinstance(exported, ExportedModel) else load_export(exported)
    pre = exported.metadata["preprocessing"]
    serving = _serving_model(model, pre)
    clips = np.asarray(clips)
    ours = np.concatenate([exported(clips[i:i + 4]) for i in range(0, len(clips), 4)])
    theirs = np.concatenate([keras.ops.convert_to_numpy(serving(clips[i:i + 4], training=False))
                             for i in range(0, len(clips), 4)])
    return {
        "max_abs_diff": float(np.abs(ours - theirs).max()),
        "top1_agreement": float(np.mean(ours.argmax(-1) == theirs.argmax(-1))),
        "clips": int(len(clips)),
    }

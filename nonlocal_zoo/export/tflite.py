"""TFLite (LiteRT) export: the 3-D op lowerings, conversion (float32 and quantized), flatbuffer metadata, and the
interpreter.

TFLite builtins have `CONV_3D` (float32 kernels only) but no `MAX_POOL_3D` / `AVERAGE_POOL_3D`; a plain conversion
stops at `tf.MaxPool3D` (pool1, pool2 and the non-local key/value pooling), and the `SELECT_TF_OPS` (Flex) fallback
does not run in `tf.lite.Interpreter` of the `tensorflow` wheel. So the exported model is first cloned with exact
lowerings (`lower_for_tflite`, public Keras API: `keras.models.clone_model(clone_function=...)`): a 3-D max/average
pool with kernel `(kt, kh, kw)` is a 2-D pool over `(H, W)` on `(B*T, H, W, C)` followed by a 2-D pool over `(T, 1)`
on `(B, T, H*W, C)` (max and mean over a box are separable); a `Conv3D` whose kernel is `(1, kh, kw)` becomes
`CONV_2D` on `(B*T, H, W, C)` (temporal stride = frame slicing), and one whose kernel is `(kt, 1, 1)` becomes
`CONV_2D` with kernel `(kt, 1)` on `(B, T, H*W, C)` (spatial stride = pixel slicing). Only the I3D stem conv1
(5x7x7) stays `CONV_3D`. With these, every op of every zoo model is a TFLite builtin.

Example:
    >>> lowered = lower_for_tflite(model)           # same outputs, TFLite-friendly ops
    >>> write_tflite(model, pre, "model.tflite", metadata, quantization=None, representative_clips=None,
    ...              select_tf_ops=False, lower=True)
"""
import contextlib
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np

from nonlocal_zoo import _compat
from nonlocal_zoo.export.metadata import METADATA_KEY, SIGNATURE
from nonlocal_zoo.export.savedmodel import write_saved_model
from nonlocal_zoo.export.serving import serving_model


# ---------------------------------------------------------------------------------------------------- lowerings
def pool3d_as_2d(inputs, pool_size, strides, pool):
    """`pool` ("max"/"avg") over (kt, kh, kw) windows of `(B, T, H, W, C)`, valid padding, as two 2-D pools.

    Max and mean over a box are separable: a 2-D pool over `(H, W)` on `(B*T, H, W, C)`, then a 2-D pool over
    `(T, 1)` on `(B, T, H*W, C)`.

    Example:
        >>> pool3d_as_2d(x, (1, 2, 2), (1, 2, 2), "max")     # == tf.nn.max_pool3d(x, (1, 2, 2), (1, 2, 2), "VALID")
    """
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


def conv3d_as_2d(inputs, kernel, strides):
    """Valid, undilated `Conv3D` of `(B, T, H, W, C)` as `CONV_2D`, for kernels `(1, kh, kw)` or `(kt, 1, 1)`.

    Returns None for other kernels (they stay `CONV_3D`).

    Example:
        >>> conv3d_as_2d(x, kernel, (1, 2, 2))            # kernel (1, 3, 3, Cin, Cout): == tf.nn.conv3d, VALID
    """
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


def _lowerable(inputs, padding, data_format):
    """A rank-5, channels-last, valid-padded op (the only kind the lowerings handle)."""
    return (len(inputs.shape) == 5 and str(padding).lower() == "valid"
            and data_format in (None, "channels_last"))


def _triple(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * 3


_LOWERED = {}


def _lowered_layer_classes():
    """`{original class: lowered subclass}` for Conv3D, MaxPooling3D, AveragePooling3D and NonLocalBlock."""
    if _LOWERED:
        return _LOWERED
    import keras

    from nonlocal_zoo.layers import NonLocalBlock

    class LoweredConv3D(keras.layers.Conv3D):
        """`Conv3D` computing (1, kh, kw) and (kt, 1, 1) kernels as `CONV_2D` (`conv3d_as_2d`)."""

        def convolution_op(self, inputs, kernel):
            if (self.groups == 1 and all(d == 1 for d in _triple(self.dilation_rate))
                    and _lowerable(inputs, self.padding, self.data_format)):
                outputs = conv3d_as_2d(inputs, kernel, _triple(self.strides))
                if outputs is not None:
                    return outputs
            return super().convolution_op(inputs, kernel)

    def lowered_pool(base, mode):
        class LoweredPool(base):
            def call(self, inputs):
                if not _lowerable(inputs, self.padding, self.data_format):
                    return super().call(inputs)
                sizes = _triple(self.pool_size)
                return pool3d_as_2d(inputs, sizes, sizes if self.strides is None else _triple(self.strides), mode)

        LoweredPool.__name__ = LoweredPool.__qualname__ = f"Lowered{base.__name__}"
        return LoweredPool

    class LoweredNonLocalBlock(NonLocalBlock):
        """`NonLocalBlock` whose key/value max-pool over `(B, T, H, W, C)` is two 2-D pools."""

        def _pool(self, x):
            if self.pool_size is None or len(x.shape) != 5:
                return super()._pool(x)
            dtype = keras.backend.standardize_dtype(x.dtype)
            pooled = pool3d_as_2d(keras.ops.cast(x, "float32"), self.pool_size, self.pool_size, "max")
            return keras.ops.cast(pooled, dtype)  # a max is exact in any float dtype

    _LOWERED.update({
        keras.layers.Conv3D: LoweredConv3D,
        keras.layers.MaxPooling3D: lowered_pool(keras.layers.MaxPooling3D, "max"),
        keras.layers.AveragePooling3D: lowered_pool(keras.layers.AveragePooling3D, "avg"),
        NonLocalBlock: LoweredNonLocalBlock,
    })
    return _LOWERED


def lower_for_tflite(model):
    """A copy of `model` whose 3-D pools and (1,k,k) / (k,1,1) convolutions (non-local blocks included) compute as
    2-D ops, so that it converts to TFLite builtins; same function (exact lowerings, float rounding aside).

    Public Keras API only: `keras.models.clone_model(clone_function=...)` replaces the `Conv3D`, `MaxPooling3D`,
    `AveragePooling3D` and `NonLocalBlock` layers (of exactly those classes, in nested models too) by subclasses that
    compute the lowered ops, with the same config and weights; every other layer is shared with `model`.

    Args:
        model: a functional or Sequential `keras.Model` (e.g. from `create_model`).

    Returns:
        A functional `keras.Model` named like `model`.

    Example:
        >>> lowered = lower_for_tflite(model)
        >>> np.allclose(lowered.predict(x), model.predict(x), atol=1e-5)
        True
    """
    import keras

    lowered = _lowered_layer_classes()
    replaced = []

    def lower(layer):
        target = lowered.get(type(layer))
        if target is None:
            return layer  # shared: same object, same weights
        copy = target.from_config(layer.get_config())
        replaced.append((layer, copy))
        return copy

    inputs, outputs = model.inputs, model.outputs
    if len(inputs) == 1 and len(outputs) == 1:
        inputs, outputs = inputs[0], outputs[0]
    view = keras.Model(inputs, outputs, name=model.name)  # a plain functional graph of the same layers
    result = keras.models.clone_model(view, clone_function=lower, recursive=True)
    for original, copy in replaced:
        copy.set_weights(original.get_weights())
    return result


@contextlib.contextmanager
def tflite_lowering():
    """Within this context, Keras' TensorFlow backend computes 3-D pools and (1,k,k) / (k,1,1) convolutions as 2-D
    ops, so that a graph traced inside it converts to TFLite builtins. The results are the same functions (exact
    lowerings; float rounding aside). Other ops and other backends are untouched.

    `export_model` uses `lower_for_tflite` (public Keras API) instead; this context patches private Keras
    functions (`nonlocal_zoo._compat.override_tf_backend_ops`, version-checked) and is kept for code that traces
    its own functions.

    Example:
        >>> with tflite_lowering():
        ...     converter = tf.lite.TFLiteConverter.from_concrete_functions(...)
    """
    def make_pool(mode):
        def pool_fn(original, inputs, pool_size, strides=None, padding="valid", data_format=None):
            if not _lowerable(inputs, padding, data_format):
                return original(inputs, pool_size, strides, padding, data_format)
            sizes = _triple(pool_size)
            return pool3d_as_2d(inputs, sizes, sizes if strides is None else _triple(strides), mode)

        return pool_fn

    def conv(original, inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        dilations = tuple(dilation_rate) if isinstance(dilation_rate, (tuple, list)) else (dilation_rate,)
        if _lowerable(inputs, padding, data_format) and all(d == 1 for d in dilations):
            result = conv3d_as_2d(inputs, kernel, _triple(strides))
            if result is not None:
                return result
        return original(inputs, kernel, strides, padding, data_format, dilation_rate)

    with _compat.override_tf_backend_ops(conv=conv, max_pool=make_pool("max"), average_pool=make_pool("avg")):
        yield


# ---------------------------------------------------------------------------------------------------- conversion
def tflite_converter(saved_model_dir, quantization, representative_clips, select_tf_ops):
    """A `tf.lite.TFLiteConverter` of a SavedModel's serving signature, set up for `quantization`."""
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


def add_tflite_metadata(flatbuffer, name, data):
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


def _conversion_error(error, model_name, *, lower, quantization, select_tf_ops):
    """A ValueError naming the ops TFLite could not express (from tf.lite's ConverterError message)."""
    text = str(error)
    unsupported = sorted({line.strip().split("(")[0] for line in text.splitlines() if line.strip().startswith("tf.")})
    return ValueError(
        f"TFLite cannot express {unsupported or 'some ops'} of model {model_name!r} as builtin ops"
        + (" even after nonlocal_zoo's 3-D pool/conv lowerings" if lower else "")
        + ". `select_tf_ops=True` embeds them as Flex (SELECT_TF_OPS) ops, which need an interpreter "
        "linked with the Flex delegate (tf.lite.Interpreter of the tensorflow wheel is not). "
        f"Received: quantization={quantization!r}, select_tf_ops={select_tf_ops}. Converter said: {text[-1500:]}"
    )


def write_tflite(model, pre, path, metadata, *, quantization, representative_clips, select_tf_ops, lower):
    """Write the TFLite export of `model` (uint8 clips in, probabilities out) with its metadata to `path`.

    Args:
        model: the Keras classifier (normalised float clips in).
        pre: its preprocessing dict (mean, std, scale), normalised in the graph.
        path: the `.tflite` file to write.
        metadata: the dict stored under `nonlocal_zoo` in the flatbuffer.
        quantization: None, `"float16"`, `"dynamic_int8"` or `"int8"`.
        representative_clips: uint8 calibration clips for `"int8"`.
        select_tf_ops: allow Flex ops.
        lower: convert `lower_for_tflite(model)` (3-D ops as 2-D builtins).

    Raises:
        ValueError: an op TFLite cannot express (named).

    Example:
        >>> write_tflite(model, pre, "m.tflite", metadata, quantization=None, representative_clips=None,
        ...              select_tf_ops=False, lower=True)
    """
    serving = serving_model(lower_for_tflite(model) if lower else model, pre)
    with tempfile.TemporaryDirectory(prefix="nonlocal_zoo_tflite_") as tmp:
        write_saved_model(serving, tmp, metadata)
        converter = tflite_converter(tmp, quantization, representative_clips, select_tf_ops)
        try:
            flatbuffer = converter.convert()
        except Exception as error:  # tf.lite's ConverterError; its message lists the ops it could not express
            raise _conversion_error(error, serving.name, lower=lower, quantization=quantization,
                                    select_tf_ops=select_tf_ops) from error
    flatbuffer = add_tflite_metadata(flatbuffer, METADATA_KEY, json.dumps(metadata).encode("utf-8"))
    Path(path).write_bytes(flatbuffer)


# ---------------------------------------------------------------------------------------------------- running
def tflite_interpreter(path):
    """A TFLite interpreter of `path`: LiteRT's when installed, else `tf.lite.Interpreter`."""
    try:  # LiteRT, the interpreter's new home
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "tf.lite.Interpreter is deprecated"
            return tf.lite.Interpreter(model_path=str(path))
    return Interpreter(model_path=str(path))

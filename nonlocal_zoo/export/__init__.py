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
  not supported by this interpreter"). So the TFLite graph is traced from a clone of the model with exact lowerings
  (`nonlocal_zoo.export.tflite.lower_for_tflite`): a 3-D max/average pool
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

The package, one module per job: `serving` (the model and its uint8 -> probabilities wrapper), `metadata` (what an
artifact records, and reading it back), `savedmodel`, `tflite` (lowerings, conversion, interpreter), `onnx`,
`calibration` (generated clips), `runtime` (`load_export`, `ExportedModel`, `compare_with_keras`) and `exporter`
(`export_model`).

Example:
    >>> from nonlocal_zoo.export import export_model, load_export
    >>> path = export_model("i3d_nl5_r50_8x8_kinetics400", "onnx", "i3d_nl5.onnx", weights=None)
    >>> probabilities = load_export(path)(clips)        # clips: uint8 (B, 8, 224, 224, 3)
"""
from nonlocal_zoo.export.calibration import generated_clips
from nonlocal_zoo.export.exporter import export_model
from nonlocal_zoo.export.metadata import (
                                          DEFAULT_ONNX_OPSET,
                                          FORMAT_ALIASES,
                                          FORMATS,
                                          INPUT_NAME,
                                          METADATA_KEY,
                                          OUTPUT_NAME,
                                          QUANTIZATIONS,
                                          SAVED_MODEL_METADATA,
                                          SIGNATURE,
                                          build_metadata,
                                          export_format,
                                          normalize_format,
                                          read_export_metadata,
)
from nonlocal_zoo.export.runtime import ExportedModel, compare_with_keras, load_export
from nonlocal_zoo.export.serving import resolve_model, serving_model
from nonlocal_zoo.export.tflite import conv3d_as_2d, lower_for_tflite, pool3d_as_2d, tflite_interpreter, tflite_lowering

__all__ = [
                                          "DEFAULT_ONNX_OPSET",
                                          "FORMATS",
                                          "FORMAT_ALIASES",
                                          "INPUT_NAME",
                                          "METADATA_KEY",
                                          "OUTPUT_NAME",
                                          "QUANTIZATIONS",
                                          "SAVED_MODEL_METADATA",
                                          "SIGNATURE",
                                          "ExportedModel",
                                          "build_metadata",
                                          "compare_with_keras",
                                          "conv3d_as_2d",
                                          "export_format",
                                          "export_model",
                                          "generated_clips",
                                          "load_export",
                                          "lower_for_tflite",
                                          "normalize_format",
                                          "pool3d_as_2d",
                                          "read_export_metadata",
                                          "resolve_model",
                                          "serving_model",
                                          "tflite_interpreter",
                                          "tflite_lowering",
]

"""Running exports: `load_export(path)` loads any of the three formats as an `ExportedModel` (numpy clips in,
numpy probabilities out), and `compare_with_keras` measures how closely it reproduces the Keras model.

Example:
    >>> model = load_export("i3d.onnx")
    >>> probabilities = model(clips)           # uint8 (B, T, H, W, 3) -> (B, classes)
"""
from pathlib import Path

import numpy as np

from nonlocal_zoo.export.metadata import INPUT_NAME, OUTPUT_NAME, SIGNATURE, export_format, read_export_metadata
from nonlocal_zoo.export.serving import serving_model
from nonlocal_zoo.export.tflite import tflite_interpreter


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
            self._runner = tflite_interpreter(path)
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
    serving = serving_model(model, pre)
    clips = np.asarray(clips)
    ours = np.concatenate([exported(clips[i:i + 4]) for i in range(0, len(clips), 4)])
    theirs = np.concatenate([keras.ops.convert_to_numpy(serving(clips[i:i + 4], training=False))
                             for i in range(0, len(clips), 4)])
    return {
        "max_abs_diff": float(np.abs(ours - theirs).max()),
        "top1_agreement": float(np.mean(ours.argmax(-1) == theirs.argmax(-1))),
        "clips": int(len(clips)),
    }

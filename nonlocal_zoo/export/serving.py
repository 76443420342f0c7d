"""The model an export serves: resolved from a preset name or a `keras.Model`, checked, and wrapped so that it takes
uint8 clips, normalises them in the graph and returns probabilities.

Example:
    >>> model, preset_name, pre = resolve_model("demo", weights="auto", preset=None, input_shape=None)
    >>> serving = serving_model(model, pre)        # uint8 (B, T, H, W, 3) -> (B, classes) probabilities
"""
import os

import numpy as np

from nonlocal_zoo.export.metadata import INPUT_NAME, OUTPUT_NAME


def resolve_model(model_or_name, *, weights, preset, input_shape):
    """`(keras.Model, preset name or None, preprocessing dict)` of what `export_model` was given.

    Names go through the one resolver (`nonlocal_zoo.tasks.resolve`), so a preset, `"demo"`, a preset directory
    (e.g. a fine-tuning run), a `.keras` file and `hf://org/repo` all export with their own preprocessing and labels.

    Args:
        model_or_name: a name as `resolve` takes it, a `VideoClassifier` (exported with its own preprocessing), or a
            plain `keras.Model` (with `preset=`).
        weights: with a name: `"auto"` (published or saved weights; an architecture-only preset is refused: pass
            `weights=None` for a randomly initialised export), None, `"kinetics400"`, a path or an `hf://` handle.
        preset: with a plain `keras.Model`: the preset name whose preprocessing it uses, or a preprocessing dict.
            Defaults to the preset `create_model` recorded on the model (not saved with a plain `.keras` file).
        input_shape: with a name: `(T, H, W, 3)`, or None (the model's frames and training crop).

    Raises:
        ValueError: an unknown name, a non-model, or preprocessing that cannot be told.

    Example:
        >>> model, name, pre = resolve_model("i3d_r50_8x8_kinetics400", weights=None, preset=None, input_shape=None)
    """
    import keras

    from nonlocal_zoo.presets import get_preset
    from nonlocal_zoo.tasks import VideoClassifier, resolve

    if isinstance(model_or_name, (str, os.PathLike)):
        if preset is not None:
            raise ValueError(f"`preset` applies to a plain keras.Model; a name carries its own preprocessing. "
                             f"Received: preset={preset!r}")
        clf = resolve(model_or_name, weights=weights, require_weights=weights == "auto")
        pre = clf.preprocessor.config
        shape = tuple(input_shape) if input_shape is not None else (
            pre["num_frames"], pre["train_crop"], pre["train_crop"], 3)
        return clf.with_clip_shape(shape), clf.preset, dict(pre)  # a fixed-size graph for the artifact
    if isinstance(model_or_name, VideoClassifier):
        if weights != "auto" or input_shape is not None or preset is not None:
            raise ValueError("A VideoClassifier is exported as it is, with its own preprocessing. Received: "
                             f"weights={weights!r}, input_shape={input_shape!r}, preset={preset!r}")
        return model_or_name, model_or_name.preset, dict(model_or_name.preprocessor.config)
    if not isinstance(model_or_name, keras.Model):
        raise ValueError(
            "`model_or_name` must be a preset name, a preset directory, a .keras file, a VideoClassifier or a "
            f"keras.Model. Received: model_or_name of type {type(model_or_name).__name__}"
        )
    if weights != "auto" or input_shape is not None:
        raise ValueError(
            "`weights` and `input_shape` apply when exporting a model by name; a keras.Model is exported as it is. "
            f"Received: weights={weights!r}, input_shape={input_shape!r}"
        )
    model = model_or_name
    if isinstance(preset, dict):
        return model, None, preset
    if preset is None:
        from nonlocal_zoo.models import preset_of

        preset = preset_of(model)  # what `create_model` recorded on the model (never its name)
    if preset is None:
        raise ValueError(
            "Cannot tell which preprocessing this plain keras.Model needs (a model's name is not its preset). Pass "
            "`preset=` (a preset name whose preprocessing it uses, or a dict with num_frames, sampling_rate, mean, "
            f"std, scale), or export a VideoClassifier. Received: model.name={model.name!r}, preset=None"
        )
    return model, preset, get_preset(preset)["preprocessing"]


def check_model(model):
    """Raise ValueError unless `model` has one RGB clip input `(B, T, H, W, 3)` and one `(B, classes)` output."""
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


def ends_with_softmax(model):
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


def serving_model(model, pre):
    """uint8 clips -> in-graph normalisation -> model -> probabilities (a softmax is added to logits models).

    Args:
        model: the classifier (takes normalised float clips).
        pre: preprocessing dict with `mean`, `std` and `scale` (per channel or scalar).

    Example:
        >>> probabilities = serving_model(model, {"mean": 114.75, "std": 57.375})(clips)   # uint8 clips
    """
    import keras

    mean = np.broadcast_to(np.asarray(pre.get("mean", 0.0), "float64"), (3,))
    std = np.broadcast_to(np.asarray(pre.get("std", 1.0), "float64"), (3,))
    factor = float(pre.get("scale", 255.0)) / 255.0
    clips = keras.Input(tuple(model.inputs[0].shape[1:]), dtype="uint8", name=INPUT_NAME)
    # (x * factor - mean) / std as one multiply-add per channel: (B, T, H, W, 3) float32
    x = keras.layers.Rescaling(scale=(factor / std).tolist(), offset=(-mean / std).tolist(), dtype="float32",
                               name="normalize")(clips)
    y = model(x)
    if not ends_with_softmax(model):
        y = keras.layers.Softmax(dtype="float32", name=OUTPUT_NAME)(y)
    return keras.Model(clips, y, name=f"{model.name}_serving")


def input_spec(serving):
    """The `tf.TensorSpec` of the serving model's uint8 clip input (named `clips`)."""
    import tensorflow as tf

    return tf.TensorSpec(tuple(serving.inputs[0].shape), tf.uint8, name=INPUT_NAME)

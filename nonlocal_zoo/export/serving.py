"""The model an export serves: resolved from a preset name or a `keras.Model`, checked, and wrapped so that it takes
uint8 clips, normalises them in the graph and returns probabilities.

Example:
    >>> model, preset_name, pre = resolve_model("demo", weights="auto", preset=None, input_shape=None)
    >>> serving = serving_model(model, pre)        # uint8 (B, T, H, W, 3) -> (B, classes) probabilities
"""
import numpy as np

from nonlocal_zoo.export.metadata import INPUT_NAME, OUTPUT_NAME


def resolve_model(model_or_name, *, weights, preset, input_shape):
    """`(keras.Model, preset name or None, preprocessing dict)` of what `export_model` was given.

    Args:
        model_or_name: a preset name (built with `create_model`) or a `keras.Model` (exported as it is).
        weights: with a preset name: `"auto"` (the published weights when the preset has them), None, a path, ...
        preset: with a `keras.Model`: the preset name whose preprocessing it uses, or a preprocessing dict.
        input_shape: with a preset name: `(T, H, W, 3)`, or None (the preset's frames and training crop).

    Raises:
        ValueError: an unknown preset, a non-model, or preprocessing that cannot be told.

    Example:
        >>> model, name, pre = resolve_model("i3d_r50_8x8_kinetics400", weights=None, preset=None, input_shape=None)
    """
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

"""`create_model(name)` and the keras.applications-style factories (`nl_resnet50_3d`, ...), thin wrappers over presets.

A model built here is named after its preset (unless `model_name=` is given), but nothing looks the preset up by that
name: loaders take `preset=` explicitly, and a `VideoClassifier` records its preset in its config; `preset_of(model)`
returns it. Nothing else is stored on the model, so this survives `.keras` saving.
"""
import os

import keras

from nonlocal_zoo.models.arch import WEIGHT_NEUTRAL_KEYS, feature_shapes, normalize_arch, validate_input_shape
from nonlocal_zoo.models.backbone import apply_backbone, make_input
from nonlocal_zoo.models.classifier import ACTIVATIONS_WITH_WEIGHTS, apply_head
from nonlocal_zoo.presets import PRESETS, get_preset, num_classes

KINETICS400_CLASSES = 400
PRETRAINED_WEIGHTS = "kinetics400"
POOLINGS = (None, "avg", "max")


def preset_of(model):
    """The preset a model records in its config (`VideoClassifier.preset`, `NonLocalResNetBackbone.preset`), or
    `None`. A model's Keras name is never taken for its preset: a renamed or fine-tuned model would lose it."""
    preset = getattr(model, "preset", None)
    return preset if preset in PRESETS else None


def _check_weights(name, preset, weights):
    """Refuses a `weights` argument that is not None, 'kinetics400' (for a preset with published weights), an
    existing file or an 'hf://' handle."""
    if weights is None:
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            "`weights` must be None, 'kinetics400', a path to a weights file or an 'hf://' handle. "
            f"Received: weights={weights!r}"
        )
    weights = os.fspath(weights)
    if weights == PRETRAINED_WEIGHTS:
        if preset["weights"] is None:
            pretrained = [n for n in PRESETS if PRESETS[n]["weights"] is not None
                          and PRESETS[n]["arch"]["stage_depths"] == preset["arch"]["stage_depths"]]
            raise ValueError(
                f"Preset {name!r} has no published weights (architecture only). Presets with Kinetics-400 weights "
                f"and the same depth: {sorted(pretrained)}. Received: weights={weights!r}"
            )
    elif not weights.startswith("hf://") and not os.path.exists(weights):
        raise ValueError(
            "`weights` must be None, 'kinetics400', the path to an existing weights file or an 'hf://' handle. "
            f"Received: weights={weights!r}"
        )


def _preset_arch(name, preset, overrides, weights):
    """The preset's normalised arch with `overrides` applied; refuses overrides that change the architecture (any
    key but the weight-neutral ones) when `weights` are to be loaded."""
    arch = normalize_arch(**preset["arch"])
    if overrides:
        overridden = normalize_arch(**{**preset["arch"], **overrides})
        changed = sorted(k for k in overrides if overridden[k] != arch[k] and k not in WEIGHT_NEUTRAL_KEYS)
        if changed and weights is not None:
            raise ValueError(
                f"The overrides {changed} change the architecture of preset {name!r}, so its weights cannot be "
                f"loaded. Use weights=None, or a preset with that architecture. "
                f"Received: {', '.join(f'{k}={overrides[k]!r}' for k in changed)}"
            )
        arch = overridden
    return arch


def _check_head_arguments(preset, *, weights, include_top, classes, classifier_activation, pooling,
                          fully_convolutional):
    """Checks the head arguments of `create_model` against each other and the weights; returns `classes` (the
    preset's class count when None)."""
    if not isinstance(include_top, bool):
        raise ValueError(f"`include_top` must be True or False. Received: include_top={include_top!r}")
    if classes is None:
        classes = num_classes(preset)  # 400 for the Kinetics-400 presets
    elif isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ValueError(f"`classes` must be a positive integer. Received: classes={classes!r}")
    if weights == PRETRAINED_WEIGHTS and include_top and classes != KINETICS400_CLASSES:
        raise ValueError(
            f"With weights='{PRETRAINED_WEIGHTS}' and `include_top=True`, `classes` must be {KINETICS400_CLASSES}. "
            "To fine-tune on other classes use include_top=False and `add_classifier_head`. "
            f"Received: classes={classes}"
        )
    if weights is not None and include_top and classifier_activation not in ACTIVATIONS_WITH_WEIGHTS:
        raise ValueError(
            "With pretrained `weights`, `classifier_activation` must be None or 'softmax'. "
            f"Received: classifier_activation={classifier_activation!r}"
        )
    if pooling not in POOLINGS:
        raise ValueError(f"`pooling` must be one of {POOLINGS}. Received: pooling={pooling!r}")
    if fully_convolutional and not include_top:
        raise ValueError(
            "`fully_convolutional=True` is a head option and needs include_top=True. Received: include_top=False"
        )
    return classes


def create_model(
    name,
    *,
    weights=None,
    include_top=True,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=None,
    classifier_activation="softmax",
    fully_convolutional=False,
    dropout_rate=0.5,
    model_name=None,
    format=None,
    **overrides,
):
    """Build the model of a preset (see `nonlocal_zoo.list_models()`), optionally with its weights.

    Args:
        name: preset name, e.g. `"i3d_nl5_r50_32x2_kinetics400"`.
        weights: `None` (random initialisation), `"kinetics400"` (the preset's published checkpoint, converted on
            this machine), a path to a weights file, or an `"hf://org/repo"` handle. Loading goes through
            `nonlocal_zoo.models.weights.load_weights`.
        include_top: add the classification head (`pool5`, `dropout`, `pred`). Defaults to `True`.
        input_tensor: optional Keras tensor to use as the model input.
        input_shape: `(frames, height, width, channels)`; `None` entries allowed. Defaults to
            `(num_frames, 224, 224, 3)` of the preset, or `(num_frames, None, None, 3)` when `fully_convolutional`.
        pooling: without the top: `None` (the 5-D res5 map), `"avg"` or `"max"` (global pooling).
        classes: number of classes of `pred`. Defaults to the number of the preset's labels (400 for the
            Kinetics-400 presets). With `weights="kinetics400"` and `include_top`, it must be 400 (use
            `include_top=False` and `add_classifier_head` to fine-tune on other classes); a weights file may hold
            another head.
        classifier_activation: `"softmax"` or `None` (logits); any Keras activation without weights.
        fully_convolutional: the official test head: `pred` applied at every location of the `pool5` map on a large
            crop (256x256, 256x320, or `None` sizes), per-location softmax, then averaged. Defaults to `False`
            (global average pool, then `pred`, as mmaction2 and gluon-cv test).
        dropout_rate: dropout before `pred` (training only). Defaults to 0.5.
        model_name: the Keras model name. Defaults to the preset name (see `preset_of`).
        format: with `weights` a local upstream checkpoint: its format (`nonlocal_zoo.pretrained.convert
            .list_formats()`). None detects it and refuses a file of another framework or flavour than the preset's
            (e.g. a gluon-cv `.pth` for a PySlowFast preset); naming the format loads it anyway.
        **overrides: architecture arguments replacing the preset's (see `build_backbone`), e.g.
            `nonlocal_chunk_size=1024`. Overrides that change the architecture are refused with `weights`.

    Returns:
        A functional `keras.Model` named after the preset.

    Example:
        >>> model = create_model("i3d_nl5_r50_8x8_kinetics400", weights=None, input_shape=(8, 224, 224, 3))
        >>> model.output.shape
        (None, 400)
    """
    preset = get_preset(name)
    _check_weights(name, preset, weights)
    if format is not None and (weights is None or os.fspath(weights) == PRETRAINED_WEIGHTS):
        raise ValueError(
            "`format` names the format of a local checkpoint file given as `weights`. "
            f"Received: format={format!r}, weights={weights!r}"
        )
    arch = _preset_arch(name, preset, overrides, weights)
    classes = _check_head_arguments(preset, weights=weights, include_top=include_top, classes=classes,
                                    classifier_activation=classifier_activation, pooling=pooling,
                                    fully_convolutional=fully_convolutional)

    frames = preset["preprocessing"]["num_frames"]
    default_shape = (frames, None, None, 3) if fully_convolutional else (frames, 224, 224, 3)
    if input_shape is not None:
        validate_input_shape(arch, input_shape)
    inputs, model_inputs = make_input(input_shape, input_tensor, default_shape=default_shape)
    shape = validate_input_shape(arch, tuple(inputs.shape[1:]))
    if weights is not None and shape[-1] != 3:
        raise ValueError(f"Pretrained weights need 3 input channels (RGB). Received: input_shape={shape}")

    stages = apply_backbone(inputs, **arch)
    x = stages[list(stages)[-1]]
    if include_top:
        train_res5 = feature_shapes(arch, (frames, 224, 224, 3))[list(stages)[-1]]
        x = apply_head(
            x,
            classes=classes,
            dropout_rate=dropout_rate,
            classifier_activation=classifier_activation,
            fully_convolutional=fully_convolutional,
            pool_size=train_res5[:3],
        )
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling3D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling3D(name="max_pool")(x)
    model = keras.Model(model_inputs, x, name=model_name or name)
    model.preset = name  # in memory only: a plain Keras model does not save it (a VideoClassifier does)
    if weights is not None:
        from nonlocal_zoo.models import weights as weights_loader

        weights_loader.load_weights(model, weights, preset=name, include_top=include_top, classes=classes,
                                    format=format)
    return model


# ----------------------------------------------------------------------------------------------------------------------
# Factories: (clip, source[, number of non-local blocks]) -> preset
# ----------------------------------------------------------------------------------------------------------------------
def _factory_presets():
    """`{factory: {(clip, source[, num_nonlocal]): preset}}`, read from the registry entries' `factory` fields."""
    table = {}
    for name, preset in PRESETS.items():
        if preset["factory"] is None:
            continue
        function, arguments = preset["factory"]["function"], preset["factory"]["arguments"]
        key = (arguments["clip"], arguments["source"])
        if function.startswith("nl_"):
            key += (arguments["num_nonlocal"],)
        if key in table.get(function, {}):
            raise ValueError(f"Presets {table[function][key]!r} and {name!r} both claim {function}{key}.")
        table.setdefault(function, {})[key] = name
    return table


FACTORY_PRESETS = _factory_presets()


def factory_preset(factory, *, clip="32x2", source="official", num_nonlocal=None):
    """The preset name a factory call resolves to, e.g. `factory_preset("nl_resnet50_3d", clip="8x8")`."""
    if factory not in FACTORY_PRESETS:
        raise ValueError(f"Unknown factory. Expected one of {sorted(FACTORY_PRESETS)}. Received: factory={factory!r}")
    table = FACTORY_PRESETS[factory]
    with_nl = factory.startswith("nl_")
    if with_nl and num_nonlocal is None:
        num_nonlocal = 5
    key = (clip, source, num_nonlocal) if with_nl else (clip, source)
    if key not in table or (not with_nl and num_nonlocal is not None):
        fields = "(clip, source, num_nonlocal)" if with_nl else "(clip, source)"
        choices = "; ".join(", ".join(repr(v) for v in k) for k in table)
        received = f"clip={clip!r}, source={source!r}"
        if num_nonlocal is not None:
            received += f", num_nonlocal={num_nonlocal!r}"
        raise ValueError(f"`{factory}` has no such variant. Choices {fields}: {choices}. Received: {received}")
    return table[key]


_FACTORY_DOC = """{summary}

    Thin wrapper over `create_model(preset, ...)`; the preset is chosen by `clip`, `source`{nl_arg}:
{table}

    Args:
        clip: frames x sampling rate of the checkpoint. Defaults to `"32x2"`.
        source: which release's checkpoint (and its exact architecture variant). Defaults to `"official"`.{nl_doc}
        weights: `None`, `"kinetics400"`, a weights-file path or an `"hf://"` handle.
        include_top, input_tensor, input_shape, pooling, classes, classifier_activation: as in
            `keras.applications` (see `create_model`).
        **kwargs: further `create_model` arguments (`fully_convolutional`, `dropout_rate`, architecture overrides).

    Returns:
        A `keras.Model` named after the preset.

    Example:
        >>> model = {factory}(weights=None, input_shape=(32, 224, 224, 3))
"""


_NL_DOC = "\n        num_nonlocal: 5 (the released models) or 10 non-local blocks. Defaults to 5."


def _make_factory(factory, summary):
    with_nl = factory.startswith("nl_")

    if with_nl:

        def fn(*, clip="32x2", source="official", num_nonlocal=5, weights=None, include_top=True, input_tensor=None,
               input_shape=None, pooling=None, classes=None, classifier_activation="softmax", **kwargs):
            preset = factory_preset(factory, clip=clip, source=source, num_nonlocal=num_nonlocal)
            return create_model(preset, weights=weights, include_top=include_top, input_tensor=input_tensor,
                                input_shape=input_shape, pooling=pooling, classes=classes,
                                classifier_activation=classifier_activation, **kwargs)

    else:

        def fn(*, clip="32x2", source="official", weights=None, include_top=True, input_tensor=None,
               input_shape=None, pooling=None, classes=None, classifier_activation="softmax", **kwargs):
            preset = factory_preset(factory, clip=clip, source=source)
            return create_model(preset, weights=weights, include_top=include_top, input_tensor=input_tensor,
                                input_shape=input_shape, pooling=pooling, classes=classes,
                                classifier_activation=classifier_activation, **kwargs)

    table = "\n".join(
        f"        - {', '.join(repr(p) for p in key)}: `{preset}`" for key, preset in FACTORY_PRESETS[factory].items()
    )
    fn.__name__ = fn.__qualname__ = factory
    fn.__doc__ = _FACTORY_DOC.format(
        summary=summary,
        nl_arg=" and `num_nonlocal`" if with_nl else "",
        nl_doc=_NL_DOC if with_nl else "",
        table=table,
        factory=factory,
    )
    return fn


nl_resnet50_3d = _make_factory("nl_resnet50_3d", "I3D ResNet-50 with non-local blocks (the paper's NL I3D).")
nl_resnet101_3d = _make_factory("nl_resnet101_3d", "I3D ResNet-101 with non-local blocks.")
nl_c2d_resnet50 = _make_factory("nl_c2d_resnet50", "C2D ResNet-50 with non-local blocks.")
nl_c2d_resnet101 = _make_factory("nl_c2d_resnet101", "C2D ResNet-101 with non-local blocks.")
i3d_resnet50 = _make_factory("i3d_resnet50", "I3D ResNet-50 baseline (inflated 3x1x1 kernels, no non-local blocks).")
i3d_resnet101 = _make_factory("i3d_resnet101", "I3D ResNet-101 baseline.")
c2d_resnet50 = _make_factory("c2d_resnet50", "C2D ResNet-50 baseline (2-D kernels, temporal max-pools only).")
c2d_resnet101 = _make_factory("c2d_resnet101", "C2D ResNet-101 baseline.")

FACTORIES = {
    f.__name__: f
    for f in (nl_resnet50_3d, nl_resnet101_3d, nl_c2d_resnet50, nl_c2d_resnet101, i3d_resnet50, i3d_resnet101,
              c2d_resnet50, c2d_resnet101)
}

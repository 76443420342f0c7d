"""Classification heads: average pool, dropout 0.5 and the dense `pred` layer, plus the official fully-convolutional
test head (per-location softmax over the test crop, averaged)."""
import keras

ACTIVATIONS_WITH_WEIGHTS = (None, "softmax")


def _check_classes(classes):
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ValueError(f"`classes` must be a positive integer. Received: classes={classes!r}")


def apply_head(
    features,
    *,
    classes,
    dropout_rate=0.5,
    classifier_activation="softmax",
    fully_convolutional=False,
    pool_size=(4, 7, 7),
):
    """Classifier head on a `(B, T, H, W, C)` feature map.

    Default: `GlobalAveragePooling3D` (`pool5`) -> `Dropout` -> `Dense` (`pred`) -> activation (`pred_activation`,
    float32). `fully_convolutional=True` is the official test head: `AveragePooling3D(pool_size, strides=1)`
    (`pool5`; the training pool window, clamped to the map size when known) -> `Dropout` -> `pred` at every
    location -> activation per location -> mean over the locations (`pred_mean`). Both use the same `pred`
    weights; at the training crop size they agree, and with `classifier_activation=None` they always agree.

    Args:
        features: the res5 Keras tensor.
        classes: number of classes.
        dropout_rate: dropout before `pred` (training only). Defaults to 0.5.
        classifier_activation: activation of the outputs, `None` for logits. Defaults to `"softmax"`.
        fully_convolutional: use the official per-location test head. Defaults to `False`.
        pool_size: the `pool5` window `(T, H, W)` of the fully-convolutional head (the res5 size at training).

    Returns:
        The output tensor `(B, classes)`.
    """
    _check_classes(classes)
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"`dropout_rate` must be in [0, 1). Received: dropout_rate={dropout_rate!r}")
    if fully_convolutional:
        window = tuple(p if n is None else min(p, n) for p, n in zip(pool_size, features.shape[1:4]))
        x = keras.layers.AveragePooling3D(pool_size=window, strides=1, padding="valid", name="pool5")(features)
    else:
        x = keras.layers.GlobalAveragePooling3D(name="pool5")(features)
    x = keras.layers.Dropout(dropout_rate, name="dropout")(x)
    x = keras.layers.Dense(
        classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01), bias_initializer="zeros", name="pred"
    )(x)  # (B, T', H', W', classes) per location when fully convolutional
    if classifier_activation is not None:
        x = keras.layers.Activation(classifier_activation, dtype="float32", name="pred_activation")(x)
    if fully_convolutional:
        x = keras.layers.GlobalAveragePooling3D(dtype="float32", name="pred_mean")(x)  # mean over the locations
    return x


def add_classifier_head(
    backbone,
    *,
    classes,
    dropout_rate=0.5,
    classifier_activation="softmax",
    fully_convolutional=False,
    pool_size=(4, 7, 7),
    name=None,
):
    """A new classifier on top of a headless model (`create_model(..., include_top=False)` or `build_backbone`).

    Shares the backbone's layers and weights; the new `pred` layer is freshly initialised (N(0, 0.01), bias 0).

    Example:
        >>> base = create_model("i3d_nl5_r50_32x2_kinetics400", weights="kinetics400", include_top=False)
        >>> model = add_classifier_head(base, classes=10)
    """
    if len(backbone.outputs) != 1 or len(backbone.outputs[0].shape) != 5:
        raise ValueError(
            "`backbone` must output one (B, T, H, W, C) feature map (include_top=False, pooling=None). "
            f"Received: backbone.outputs={[tuple(o.shape) for o in backbone.outputs]}"
        )
    outputs = apply_head(
        backbone.outputs[0],
        classes=classes,
        dropout_rate=dropout_rate,
        classifier_activation=classifier_activation,
        fully_convolutional=fully_convolutional,
        pool_size=pool_size,
    )
    inputs = backbone.inputs[0] if len(backbone.inputs) == 1 else backbone.inputs
    return keras.Model(inputs, outputs, name=name or backbone.name)


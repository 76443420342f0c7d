"""Inference-time folding of a per-channel affine transform into the convolution that feeds it.

At inference a BatchNormalization (moving statistics) or an `Affine` layer computes `y = x * scale + offset` per
channel. When `x = conv(z, W)` comes straight from a convolution, `y = conv(z, W * scale) + offset`: the same values up
to float32 rounding, without the two passes over the activation (a `Mul` and an `AddV2` the size of the feature map).
In a TensorFlow graph the `conv + bias_add (+ residual add) (+ relu)` chain that results is one fused oneDNN
convolution (`_FusedConv3D`, oneDNN), which also takes in the ReLU and the residual sum; the before/after per
preset family is in the `families` benchmark section (benchmarks/RESULTS.md). The kernel product `W * scale` is computed per call on the weights (0.1% of the
forward's arithmetic), so the layers keep their variables (and checkpoint names) unchanged.

The fold is a rewrite of the traced graph: it applies only with the TensorFlow backend, inside a `tf.function`
(what `predict`, `predict_on_batch` and `classify` run), to a float32 or bfloat16 `Conv3D`/`Conv2D` op; everywhere
else (eager calls, the JAX and PyTorch backends, float16, training with batch statistics, an input that is not a
convolution's output) the caller computes the affine transform as before. Under `mixed_bfloat16` the float32 kernel is
rescaled before the layer's cast to bfloat16 (rounded once, as the unscaled kernel was) and the offset is the fused
convolution's bias, added to oneDNN's float32 accumulator; the deviation this brings against the unfolded bfloat16
network is measured in benchmarks/RESULTS.md (bfloat16 section).

`folding_disabled()` traces graphs without the folds (the unfolded reference of the `families` benchmark); it also
turns off the non-local block's inference rewrites (folded `bn(out(y))`, projections of one input as one matmul).

Example:
    >>> y = fold_into_conv(conv_output, scale, offset)   # None: compute `conv_output * scale + offset` instead
    >>> with folding_disabled():
    ...     reference = tf.function(lambda x: model(x, training=False))(clip)   # traced unfolded
"""
import contextlib

import keras

FOLDABLE_OPS = ("Conv3D", "Conv2D")
FOLDABLE_DTYPES = ("float32", "bfloat16")
_STATE = {"enabled": True}


def folding_enabled():
    """Whether layers traced now fold their inference normalization (see `folding_disabled`)."""
    return _STATE["enabled"]


@contextlib.contextmanager
def folding_disabled():
    """Inside this block, layers compute their normalization unfolded (`BatchNormalization` of this module, `Affine` and the
    non-local block's `bn(out(y))`). It acts when a graph is traced: a `tf.function` traced inside keeps it.

    Example:
        >>> with folding_disabled():
        ...     unfolded = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    """
    previous = _STATE["enabled"]
    _STATE["enabled"] = False
    try:
        yield
    finally:
        _STATE["enabled"] = previous


def fold_into_conv(inputs, scale, offset):
    """`conv(z, W * scale) + offset` for `inputs = conv(z, W)`, or None when the fold does not apply.

    Args:
        inputs: the output of a convolution, channels last.
        scale: per-channel scale `(C,)`, float32.
        offset: per-channel offset `(C,)`, float32.

    Returns:
        The folded output (a new `Conv3D`/`Conv2D` op plus a `BiasAdd`; the original convolution, when nothing else
        uses its output, is left without consumers and pruned by grappler; otherwise both run), or None: not the TensorFlow backend, not inside a `tf.function`, not a
        float32 or bfloat16 `Conv3D`/`Conv2D` output in `NDHWC`/`NHWC` layout.
    """
    if keras.backend.backend() != "tensorflow" or not folding_enabled():
        return None
    import tensorflow as tf

    if not tf.inside_function() or not isinstance(inputs, tf.Tensor) or inputs.dtype.name not in FOLDABLE_DTYPES:
        return None
    try:
        op = inputs.op
    except AttributeError:  # an eager tensor
        return None
    if op.type not in FOLDABLE_OPS or len(op.outputs) != 1:
        return None
    attrs = {name: op.get_attr(name) for name in ("strides", "padding", "data_format", "dilations")}
    if attrs["data_format"] not in (b"NDHWC", b"NHWC") or attrs["padding"] not in (b"VALID", b"SAME"):
        return None
    attrs = {k: v.decode() if isinstance(v, bytes) else list(v) for k, v in attrs.items()}
    source, kernel = op.inputs[0], op.inputs[1]
    if kernel.dtype == tf.bfloat16 and kernel.op.type == "Cast" and kernel.op.inputs[0].dtype == tf.float32:
        # mixed_bfloat16: the layer casts its float32 kernel to bfloat16 per call; rescale before that cast, so the
        # product is rounded to bfloat16 once (as the unscaled kernel was).
        kernel = tf.cast(kernel.op.inputs[0] * scale, tf.bfloat16)  # (..., C_in, C_out) * (C_out,)
    else:
        kernel = kernel * tf.cast(scale, kernel.dtype)  # (..., C_in, C_out) * (C_out,)
    if op.type == "Conv3D":
        folded = tf.raw_ops.Conv3D(input=source, filter=kernel, **attrs)
    else:
        folded = tf.raw_ops.Conv2D(input=source, filter=kernel, **attrs)
    return bias_add(folded, offset)


@keras.saving.register_keras_serializable(package="nonlocal_zoo")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that, at inference inside a TensorFlow graph, folds into the convolution
    feeding it (`fold_into_conv`); same arguments, weights (`gamma`, `beta`, `moving_mean`, `moving_variance`),
    training behaviour and results (up to float32 rounding).

    The backbone puts one after every convolution. The class keeps Keras' name on purpose: Keras' `.weights.h5`
    files key each layer by its class name (`batch_normalization_3`), so weights files written before (and the
    embedded demo weights) load unchanged, and a plain `keras.layers.BatchNormalization` loads these weights.
    Serialized as `nonlocal_zoo>BatchNormalization`.

    Example:
        >>> x = keras.layers.Conv3D(8, 3, use_bias=False)(keras.Input((4, 8, 8, 3)))
        >>> y = BatchNormalization(epsilon=1e-5, name="conv_bn")(x)
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) and self.center and self.scale and mask is None and (
            self.axis in (-1, len(inputs.shape) - 1)
        ):
            # The inference transform of BatchNormalization: x * s + (beta - mean * s), s = gamma / sqrt(var + eps).
            folded = fold_into_conv(inputs, *batchnorm_affine(self))
            if folded is not None:
                return folded
        return super().call(inputs, training=training, mask=mask)


def bias_add(x, bias):
    """`x + bias` over the last axis; a `BiasAdd` op on TensorFlow, which grappler fuses into the matmul or
    convolution producing `x` (an `AddV2` is not fused)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.nn.bias_add(x, tf.cast(bias, x.dtype))
    return keras.ops.add(x, keras.ops.cast(bias, x.dtype))


def batchnorm_affine(bn):
    """`(scale, offset)` in float32 of a BatchNormalization layer at inference: `bn(x) == x * scale + offset`, with
    `scale = gamma / sqrt(moving_variance + epsilon)` and `offset = beta - moving_mean * scale`.

    Example:
        >>> scale, offset = batchnorm_affine(model.get_layer("res_conv1_bn"))
    """
    scale = batchnorm_scale(bn.gamma, bn.moving_variance, bn.epsilon)
    return scale, keras.ops.cast(bn.beta, "float32") - keras.ops.cast(bn.moving_mean, "float32") * scale


def batchnorm_scale(gamma, variance, epsilon):
    """`gamma / sqrt(variance + epsilon)` in float32: the per-channel scale of an inference BatchNormalization."""
    ops = keras.ops
    return ops.cast(gamma, "float32") * ops.rsqrt(ops.cast(variance, "float32") + epsilon)

"""Per-channel affine transform: the frozen-BatchNorm layer of the official Caffe2 `AffineNd` op."""
import keras
from keras import ops

from nonlocal_zoo.layers.folding import fold_into_conv


@keras.saving.register_keras_serializable(package="nonlocal_zoo")
class Affine(keras.layers.Layer):
    """Channels-last per-channel `y = x * scale + bias` (Caffe2 `AffineNd`, a BatchNorm folded and frozen).

    The official 32x4 and 128x1 I3D checkpoints store `<name>_s` and `<name>_b` blobs for it.

    Args:
        scale_initializer: initializer of `scale`. Defaults to `"ones"`.
        bias_initializer: initializer of `bias`. Defaults to `"zeros"`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, `trainable`).

    Example:
        >>> layer = Affine(name="res_conv1_bn")
        >>> y = layer(keras.ops.ones((1, 2, 4, 4, 8)))
    """

    def __init__(self, scale_initializer="ones", bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.scale_initializer = keras.initializers.get(scale_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"Affine needs a known channel count. Received: input_shape={input_shape}")
        self.scale = self.add_weight(shape=(channels,), initializer=self.scale_initializer, name="scale")
        self.bias = self.add_weight(shape=(channels,), initializer=self.bias_initializer, name="bias")

    def call(self, inputs):
        # At inference in a TensorFlow graph, folded into the convolution that feeds it (same values up to rounding).
        folded = fold_into_conv(inputs, ops.cast(self.scale, "float32"), ops.cast(self.bias, "float32"))
        if folded is not None:
            return folded
        return inputs * ops.cast(self.scale, inputs.dtype) + ops.cast(self.bias, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "scale_initializer": keras.initializers.serialize(self.scale_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config

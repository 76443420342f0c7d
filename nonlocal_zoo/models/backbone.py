"""The generic C2D/I3D ResNet video backbone with non-local blocks (official Caffe2 layout, channels-last).

Layer names mirror the official Caffe2 blob prefixes, so a checkpoint converts by name:

    conv1_pad, conv1, res_conv1_bn, res_conv1_relu, pool1_pad, pool1,
    res{s}_{i}_branch2a[_pad|_bn|_relu], res{s}_{i}_branch2b[_pad|_bn|_relu], res{s}_{i}_branch2c[_bn],
    res{s}_0_branch1, res{s}_0_branch1_bn, res{s}_{i}_sum, res{s}_{i}_relu, nonlocal_conv{s}_{i}, pool2,
    res2 ... res5 (parameter-free `Identity` layers marking the stage outputs).

All convolutions are `Conv3D` without bias on an explicitly, symmetrically zero-padded input with `padding="valid"`,
so the results equal Caffe2 and PyTorch exactly (Keras' `"same"` pads asymmetrically when the stride is 2). pool1 is
padded with zeros where a geometry pads it; its input follows a ReLU, so zeros act like PyTorch's -inf padding.
The BatchNormalization layers are `nonlocal_zoo.layers.folding.BatchNormalization`: Keras' layer (same name, weights
and `.weights.h5` keys) that at inference in a TensorFlow graph folds into the convolution before it.
"""
import keras

from nonlocal_zoo.layers.affine import Affine
from nonlocal_zoo.layers import folding
from nonlocal_zoo.layers.nonlocal_block import NonLocalBlock
from nonlocal_zoo.models.arch import normalize_arch, stage_names, validate_input_shape

BN_EPSILON = 1e-5  # Caffe2 1.0000001e-5; PyTorch 1e-5. Not the Keras default 1e-3.
BN_MOMENTUM = 0.9  # Caffe2 momentum 0.9 == PyTorch 0.1 == Keras 0.9 (same convention as Caffe2).


def _conv_init():
    # Caffe2 MSRAFill: N(0, sqrt(2 / fan_out)).
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_out", distribution="untruncated_normal")


def _conv(x, filters, kernel, strides, name):
    """Conv3D without bias, symmetric padding `kernel // 2` applied explicitly."""
    pad = tuple(k // 2 for k in kernel)
    if any(pad):
        x = keras.layers.ZeroPadding3D(padding=pad, name=f"{name}_pad")(x)
    return keras.layers.Conv3D(
        filters, tuple(kernel), strides=tuple(strides), padding="valid", use_bias=False,
        kernel_initializer=_conv_init(), name=name,
    )(x)


def _norm(x, normalization, name, zero_init=False):
    gamma = "zeros" if zero_init else "ones"
    if normalization == "affine":
        return Affine(scale_initializer=gamma, name=name)(x)
    # A BatchNormalization that folds into the convolution before it at inference (TensorFlow graphs).
    return folding.BatchNormalization(
        epsilon=BN_EPSILON, momentum=BN_MOMENTUM, gamma_initializer=gamma, name=name
    )(x)


def _bottleneck(x, *, prefix, inner, out, temporal_kernel, stride, normalization, zero_init_residual):
    """Official `bottleneck_transformation_3d` + shortcut: (kt,1,1) -> (1,3,3) stride (1,s,s) -> (1,1,1), sum, ReLU."""
    in_channels = x.shape[-1]
    if in_channels != out or stride != 1:
        shortcut = _conv(x, out, (1, 1, 1), (1, stride, stride), f"{prefix}_branch1")
        shortcut = _norm(shortcut, normalization, f"{prefix}_branch1_bn")
    else:
        shortcut = x
    y = _conv(x, inner, (temporal_kernel, 1, 1), (1, 1, 1), f"{prefix}_branch2a")
    y = _norm(y, normalization, f"{prefix}_branch2a_bn")
    y = keras.layers.ReLU(name=f"{prefix}_branch2a_relu")(y)
    y = _conv(y, inner, (1, 3, 3), (1, stride, stride), f"{prefix}_branch2b")
    y = _norm(y, normalization, f"{prefix}_branch2b_bn")
    y = keras.layers.ReLU(name=f"{prefix}_branch2b_relu")(y)
    y = _conv(y, out, (1, 1, 1), (1, 1, 1), f"{prefix}_branch2c")
    y = _norm(y, normalization, f"{prefix}_branch2c_bn", zero_init=zero_init_residual)
    y = keras.layers.Add(name=f"{prefix}_sum")([y, shortcut])
    return keras.layers.ReLU(name=f"{prefix}_relu")(y)


def apply_backbone(x, *, zero_init_residual=True, **arch):
    """Build the backbone layers on a `(B, T, H, W, C)` Keras tensor; returns `{"res2": ..., ..., "res5": ...}`.

    Args:
        x: a channels-last 5-D Keras tensor.
        zero_init_residual: initialise the gamma of each `branch2c` BN to zero (official `BN_INIT_GAMMA 0`).
        **arch: builder arguments (see `build_backbone`).

    Returns:
        A dict from stage name to the stage's output tensor (after its last block and non-local block).
    """
    a = normalize_arch(**arch)
    norm = a["normalization"]
    # Stem: conv1 (kt,7,7) stride (ts,2,2) pad (kt//2,3,3) -> BN -> ReLU -> pool1 (max, valid after explicit pad).
    x = _conv(x, a["stem_width"], a["conv1_kernel"], a["conv1_strides"], "conv1")
    x = _norm(x, norm, "res_conv1_bn")
    x = keras.layers.ReLU(name="res_conv1_relu")(x)
    if a["pool1_size"] is not None:
        if any(a["pool1_padding"]):
            x = keras.layers.ZeroPadding3D(padding=tuple(a["pool1_padding"]), name="pool1_pad")(x)
        x = keras.layers.MaxPooling3D(
            pool_size=tuple(a["pool1_size"]), strides=tuple(a["pool1_strides"]), padding="valid", name="pool1"
        )(x)
    outputs = {}
    names = stage_names(len(a["stage_depths"]))
    for s, name in enumerate(names):
        inner = a["stage_widths"][s]
        out = inner * a["bottleneck_expansion"]
        for i in range(a["stage_depths"][s]):
            x = _bottleneck(
                x,
                prefix=f"{name}_{i}",
                inner=inner,
                out=out,
                temporal_kernel=a["temporal_kernels"][s][i],
                stride=a["stage_strides"][s] if i == 0 else 1,
                normalization=norm,
                zero_init_residual=zero_init_residual,
            )
            if i in a["nonlocal_blocks"][s]:
                # Official naming: nonlocal_conv{stage}_{block index}; no ReLU after the block.
                x = NonLocalBlock(
                    intermediate_dim=out // 2,
                    compression=a["nonlocal_compression"],
                    mode=a["nonlocal_mode"],
                    pool_position=a["nonlocal_pool_position"],
                    use_scale=a["nonlocal_use_scale"],
                    use_bias=a["nonlocal_use_bias"],
                    out_use_bias=a["nonlocal_out_use_bias"],
                    normalization=a["nonlocal_normalization"],
                    temporal_group_size=a["nonlocal_temporal_group_sizes"][s],
                    chunk_size=a["nonlocal_chunk_size"],
                    memory_budget_mb=a["nonlocal_memory_budget_mb"],
                    name=f"nonlocal_conv{s + 2}_{i}",
                )(x)
        x = keras.layers.Identity(name=name)(x)
        outputs[name] = x
        if s == 0 and a["pool2_size"] is not None:
            x = keras.layers.MaxPooling3D(
                pool_size=tuple(a["pool2_size"]),
                strides=tuple(a["pool2_strides"] or a["pool2_size"]),
                padding="valid",
                name="pool2",
            )(x)
    return outputs


def make_input(input_shape=None, input_tensor=None, default_shape=(None, None, None, 3)):
    """`keras.Input` from `input_shape`/`input_tensor` as keras.applications does; returns `(inputs, model_inputs)`."""
    if input_tensor is not None:
        tensor_shape = tuple(input_tensor.shape[1:])
        if input_shape is not None and tuple(input_shape) != tensor_shape:
            raise ValueError(
                "`input_shape` does not match the shape of `input_tensor`. "
                f"Received: input_shape={input_shape}, input_tensor.shape={tuple(input_tensor.shape)}"
            )
        if len(input_tensor.shape) != 5:
            raise ValueError(
                f"`input_tensor` must be 5-D (batch, frames, height, width, channels). "
                f"Received: input_tensor.shape={tuple(input_tensor.shape)}"
            )
        if keras.backend.is_keras_tensor(input_tensor):
            inputs = input_tensor
        else:
            inputs = keras.Input(tensor=input_tensor, shape=tensor_shape)
        sources = keras.utils.get_source_inputs(input_tensor)
        return inputs, sources[0] if len(sources) == 1 else sources
    shape = tuple(default_shape if input_shape is None else input_shape)
    inputs = keras.Input(shape=shape, name="clip")
    return inputs, inputs


def build_backbone(
    *,
    input_shape=None,
    input_tensor=None,
    name="nonlocal_resnet_backbone",
    zero_init_residual=True,
    **arch,
):
    """Functional C2D/I3D ResNet video backbone with non-local blocks; outputs the res5 feature map.

    Every architecture argument is keyword-only and JSON-able; `nonlocal_zoo.presets.PRESETS[name]["arch"]` holds
    the exact arguments of each published model. Defaults give I3D ResNet-50 with 5 official non-local blocks in
    the official "paper" geometry (32x2 clips).

    Args:
        input_shape: `(frames, height, width, channels)`; `None` entries allowed. Defaults to `(None, None, None, 3)`.
        input_tensor: optional Keras tensor (or backend tensor) to use as the input.
        name: the model name. Defaults to `"nonlocal_resnet_backbone"`.
        zero_init_residual: zero-initialise the gamma of every `branch2c` BN (official `BN_INIT_GAMMA 0`), so that a
            fresh block starts as the identity. Defaults to `True`.
        stem_width: conv1 filters. Default 64.
        conv1_kernel: conv1 kernel `(kt, kh, kw)`, padded by `k // 2`. `[5, 7, 7]` for I3D, `[1, 7, 7]` for C2D.
        conv1_strides: conv1 strides; `[2, 2, 2]` in the paper geometry, `[1, 2, 2]` in the repo geometry.
        pool1_size, pool1_strides, pool1_padding: the max-pool after the stem (`pool1_size=None`: none).
            Official paper geometry `[2, 3, 3]`/`[2, 2, 2]`/`[0, 0, 0]` (224 -> 55), repo `[1, 3, 3]`/`[1, 2, 2]`/
            `[0, 0, 0]`, PySlowFast `[1, 3, 3]`/`[1, 2, 2]`/`[0, 1, 1]` (224 -> 56).
        pool2_size, pool2_strides: the max-pool after res2 (`[2, 1, 1]`; `None`: none; strides default to the size).
        stage_depths: blocks per stage, `[3, 4, 6, 3]` (R50) or `[3, 4, 23, 3]` (R101).
        stage_widths: inner widths per stage; the stage outputs `width * bottleneck_expansion` channels.
        stage_strides: spatial stride of each stage's first block (on the 3x3 conv "b" and the shortcut).
        bottleneck_expansion: output/inner width ratio. Default 4.
        temporal_kernels: per stage, per block, the temporal kernel of conv "a" (3 = inflated 3x1x1, 1 = 1x1x1).
        nonlocal_blocks: per stage, the block indices after which a `NonLocalBlock` named
            `nonlocal_conv{stage}_{index}` is inserted, e.g. `[[], [1, 3], [1, 3, 5], []]`.
        nonlocal_mode, nonlocal_compression, nonlocal_pool_position, nonlocal_use_scale, nonlocal_use_bias,
            nonlocal_out_use_bias, nonlocal_normalization, nonlocal_chunk_size, nonlocal_memory_budget_mb: passed to
            every `NonLocalBlock` (`mode`, `compression`, ..., `chunk_size`, `memory_budget_mb`); its intermediate
            dim is half the stage width. `nonlocal_chunk_size="auto"` bounds every block's affinity buffer by
            `nonlocal_memory_budget_mb` (default 64 MB) for any clip length and batch; like an int chunk size it
            changes neither the weights nor the result (weight-neutral: allowed as an override with pretrained
            weights).
        nonlocal_temporal_group_sizes: per stage, the `temporal_group_size` of its non-local blocks (`None`: all
            frames attend to each other). The official frozen-BN models use `[None, 4, None, None]`.
        normalization: `"batch"` (BatchNormalization, epsilon 1e-5, momentum 0.9) or `"affine"` (`Affine`, the
            frozen-BN checkpoints).

    Returns:
        A functional `keras.Model` from the clip to the res5 map `(B, T', H', W', 2048)`. The stage outputs are the
        layers `res2` ... `res5`; see `get_stage_outputs` and `build_feature_extractor`.

    Example:
        >>> from nonlocal_zoo.presets import get_preset
        >>> arch = get_preset("i3d_nl5_r50_8x8_kinetics400")["arch"]
        >>> backbone = build_backbone(input_shape=(8, 224, 224, 3), **arch)
        >>> backbone.get_layer("res3").output.shape
        (None, 4, 28, 28, 512)
    """
    arch = normalize_arch(**arch)
    inputs, model_inputs = make_input(input_shape, input_tensor)
    validate_input_shape(arch, tuple(inputs.shape[1:]))
    outputs = apply_backbone(inputs, zero_init_residual=zero_init_residual, **arch)
    return keras.Model(model_inputs, outputs[stage_names(len(arch["stage_depths"]))[-1]], name=name)


def get_stage_outputs(model):
    """The stage outputs of a backbone or classifier built here: `{"res2": tensor, ..., "res5": tensor}`."""
    outputs = {}
    for s in range(2, 100):
        try:
            outputs[f"res{s}"] = model.get_layer(f"res{s}").output
        except ValueError:
            break
    if not outputs:
        raise ValueError(
            f"The model has no stage output layers named res2, res3, ... Received: model.name={model.name!r}"
        )
    return outputs


def _model_input(model):
    """The model's input structure as it was built (a single tensor stays a single tensor)."""
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


def build_feature_extractor(model, stages=None):
    """A model from the same input to a dict of stage outputs (shares the layers and weights of `model`).

    Args:
        model: a model from `build_backbone` or `create_model`.
        stages: names to return, e.g. `["res4", "res5"]`. Defaults to all stages.

    Example:
        >>> features = build_feature_extractor(backbone)(clip)   # {"res2": ..., ..., "res5": ...}
    """
    outputs = get_stage_outputs(model)
    if stages is not None:
        missing = [s for s in stages if s not in outputs]
        if missing:
            raise ValueError(f"Unknown stages {missing}; the model has {sorted(outputs)}. Received: stages={stages!r}")
        outputs = {s: outputs[s] for s in stages}
    return keras.Model(_model_input(model), outputs, name=f"{model.name}_features")

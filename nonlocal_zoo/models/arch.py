"""Architecture arguments of the backbone builder: defaults, validation and feature-map shape inference.

The argument tables themselves (depths, temporal kernels, geometries, non-local placements and flavours) live in
`nonlocal_zoo.presets`, the registry; this module checks a set of arguments and computes the feature-map sizes
they give, without building any layer.
"""
import copy

from nonlocal_zoo.layers.nonlocal_block import MODE_ALIASES, NORMALIZATIONS, POOL_POSITIONS
from nonlocal_zoo.presets import make_arch

# The builder's defaults: I3D ResNet-50 with 5 official non-local blocks, official "paper" geometry (32x2 clips).
DEFAULT_ARCH = {**make_arch(depth=50, temporal="i3d", geometry="paper", nonlocal_placement="nl5"),
                "pool2_strides": None, "nonlocal_chunk_size": None, "nonlocal_memory_budget_mb": 64}
ARCH_KEYS = tuple(DEFAULT_ARCH)
# Arguments that change neither the weights nor the function computed: safe to override with pretrained weights.
WEIGHT_NEUTRAL_KEYS = ("nonlocal_chunk_size", "nonlocal_memory_budget_mb")
BACKBONE_NORMALIZATIONS = ("batch", "affine")


def stage_names(num_stages):
    """Caffe2 stage names: `res2`, `res3`, ... (res1 is the stem)."""
    return [f"res{s + 2}" for s in range(num_stages)]


def _int_tuple(name, value, length=3, allow_zero=False, allow_none=False):
    if value is None and allow_none:
        return None
    low = 0 if allow_zero else 1
    if (
        not isinstance(value, (list, tuple))
        or len(value) != length
        or any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in value)
    ):
        what = "non-negative" if allow_zero else "positive"
        none = " or None" if allow_none else ""
        raise ValueError(f"`{name}` must be a list of {length} {what} integers{none}. Received: {name}={value!r}")
    return [int(v) for v in value]


def _int_list(name, value, length, low=1):
    if (
        not isinstance(value, (list, tuple))
        or len(value) != length
        or any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in value)
    ):
        raise ValueError(f"`{name}` must be a list of {length} integers >= {low}. Received: {name}={value!r}")
    return [int(v) for v in value]


def normalize_arch(**arch):
    """Validate builder arguments and return them complete (defaults filled in) as a JSON-able dict of lists.

    Args:
        **arch: any subset of `ARCH_KEYS` (see `build_backbone` for their meaning).

    Returns:
        A dict with every key of `ARCH_KEYS`.

    Raises:
        ValueError: for unknown keys or invalid values, quoting what was received.

    Example:
        >>> normalize_arch(nonlocal_blocks=[[], [], [], []])["stage_depths"]
        [3, 4, 6, 3]
    """
    unknown = sorted(set(arch) - set(ARCH_KEYS))
    if unknown:
        raise ValueError(f"Unknown architecture arguments {unknown}. Expected some of {list(ARCH_KEYS)}.")
    a = copy.deepcopy(DEFAULT_ARCH)
    a.update(copy.deepcopy(arch))
    # Each step checks one group of arguments and writes it back normalised (lists of ints, canonical names).
    _check_stages(a)
    _check_stem(a)
    depths = a["stage_depths"]
    _check_nonlocal_blocks(a, depths)
    _check_nonlocal_options(a)
    _check_nonlocal_groups(a, len(depths))
    if a["normalization"] not in BACKBONE_NORMALIZATIONS:
        raise ValueError(
            f"`normalization` must be one of {BACKBONE_NORMALIZATIONS}. Received: normalization={a['normalization']!r}"
        )
    return a


def _check_stages(a):
    """Stage depths, widths and strides, stem width, bottleneck expansion and per-block temporal kernels."""
    depths = a["stage_depths"]
    if (
        not isinstance(depths, (list, tuple))
        or not depths
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in depths)
    ):
        raise ValueError(
            f"`stage_depths` must be a non-empty list of positive integers. Received: stage_depths={depths!r}"
        )
    a["stage_depths"] = depths = [int(d) for d in depths]
    num_stages = len(depths)
    a["stage_widths"] = _int_list("stage_widths", a["stage_widths"], num_stages)
    a["stage_strides"] = _int_list("stage_strides", a["stage_strides"], num_stages)
    for key in ("stem_width", "bottleneck_expansion"):
        if isinstance(a[key], bool) or not isinstance(a[key], int) or a[key] < 1:
            raise ValueError(f"`{key}` must be a positive integer. Received: {key}={a[key]!r}")

    kernels = a["temporal_kernels"]
    if not isinstance(kernels, (list, tuple)) or len(kernels) != num_stages:
        raise ValueError(
            f"`temporal_kernels` must hold one list per stage ({num_stages}). Received: temporal_kernels={kernels!r}"
        )
    checked = []
    for s, (stage, depth) in enumerate(zip(kernels, depths)):
        if (
            not isinstance(stage, (list, tuple))
            or len(stage) != depth
            or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0 for k in stage)
        ):
            raise ValueError(
                f"`temporal_kernels[{s}]` must list one odd positive kernel size per block of "
                f"{stage_names(num_stages)[s]} ({depth} blocks). Received: temporal_kernels={kernels!r}"
            )
        checked.append([int(k) for k in stage])
    a["temporal_kernels"] = checked


def _check_stem(a):
    """conv1 kernel/strides (odd kernels), pool1 (size, strides, padding below half the size) and pool2."""
    a["conv1_kernel"] = _int_tuple("conv1_kernel", a["conv1_kernel"])
    if any(k % 2 == 0 for k in a["conv1_kernel"]):
        raise ValueError(
            f"`conv1_kernel` sizes must be odd (symmetric padding). Received: conv1_kernel={a['conv1_kernel']}"
        )
    a["conv1_strides"] = _int_tuple("conv1_strides", a["conv1_strides"])
    a["pool1_size"] = _int_tuple("pool1_size", a["pool1_size"], allow_none=True)
    if a["pool1_size"] is not None:
        a["pool1_strides"] = _int_tuple("pool1_strides", a["pool1_strides"])
        a["pool1_padding"] = _int_tuple("pool1_padding", a["pool1_padding"], allow_zero=True)
        if any(2 * p >= k for p, k in zip(a["pool1_padding"], a["pool1_size"])):
            raise ValueError(
                "`pool1_padding` must be smaller than half of `pool1_size` on every axis. "
                f"Received: pool1_size={a['pool1_size']}, pool1_padding={a['pool1_padding']}"
            )
    a["pool2_size"] = _int_tuple("pool2_size", a["pool2_size"], allow_none=True)
    a["pool2_strides"] = _int_tuple("pool2_strides", a["pool2_strides"], allow_none=True)


def _check_nonlocal_blocks(a, depths):
    """`nonlocal_blocks`: one list of distinct block indices per stage, written back sorted."""
    blocks = a["nonlocal_blocks"]
    if not isinstance(blocks, (list, tuple)) or len(blocks) != len(depths):
        raise ValueError(
            f"`nonlocal_blocks` must hold one list of block indices per stage ({len(depths)}). "
            f"Received: nonlocal_blocks={blocks!r}"
        )
    checked = []
    for s, (stage, depth) in enumerate(zip(blocks, depths)):
        if (
            not isinstance(stage, (list, tuple))
            or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < depth for i in stage)
            or len(set(stage)) != len(stage)
        ):
            raise ValueError(
                f"`nonlocal_blocks[{s}]` must list distinct block indices in [0, {depth}) of "
                f"{stage_names(len(depths))[s]}. Received: nonlocal_blocks={blocks!r}"
            )
        checked.append(sorted(int(i) for i in stage))
    a["nonlocal_blocks"] = checked


def _check_nonlocal_options(a):
    """The non-local flavour: mode (aliases resolved), key compression, pool position, scale/bias flags and the
    normalization of its output."""
    if a["nonlocal_mode"] not in MODE_ALIASES:
        raise ValueError(
            f"`nonlocal_mode` must be one of {sorted(MODE_ALIASES)}. Received: nonlocal_mode={a['nonlocal_mode']!r}"
        )
    a["nonlocal_mode"] = MODE_ALIASES[a["nonlocal_mode"]]
    compression = a["nonlocal_compression"]
    if isinstance(compression, (list, tuple)):
        a["nonlocal_compression"] = _int_tuple("nonlocal_compression", compression)
    elif compression is not None and (
        isinstance(compression, bool) or not isinstance(compression, int) or compression < 1
    ):
        raise ValueError(
            f"`nonlocal_compression` must be a positive int, a list of 3 positive ints or None. "
            f"Received: nonlocal_compression={compression!r}"
        )
    if a["nonlocal_pool_position"] not in POOL_POSITIONS:
        raise ValueError(
            f"`nonlocal_pool_position` must be one of {POOL_POSITIONS}. "
            f"Received: nonlocal_pool_position={a['nonlocal_pool_position']!r}"
        )
    for key in ("nonlocal_use_scale", "nonlocal_use_bias"):
        if not isinstance(a[key], bool):
            raise ValueError(f"`{key}` must be True or False. Received: {key}={a[key]!r}")
    if a["nonlocal_out_use_bias"] is not None and not isinstance(a["nonlocal_out_use_bias"], bool):
        raise ValueError(
            "`nonlocal_out_use_bias` must be True, False or None. "
            f"Received: nonlocal_out_use_bias={a['nonlocal_out_use_bias']!r}"
        )
    if a["nonlocal_normalization"] not in NORMALIZATIONS:
        raise ValueError(
            f"`nonlocal_normalization` must be one of {NORMALIZATIONS}. "
            f"Received: nonlocal_normalization={a['nonlocal_normalization']!r}"
        )


def _check_nonlocal_groups(a, num_stages):
    """Per-stage temporal group sizes (positive int or None) and the weight-neutral `nonlocal_chunk_size` (positive
    int, `"auto"` or None) with its `nonlocal_memory_budget_mb` (positive number, used by `"auto"`)."""
    groups = a["nonlocal_temporal_group_sizes"]
    if (
        not isinstance(groups, (list, tuple))
        or len(groups) != num_stages
        or any(g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 1) for g in groups)
    ):
        raise ValueError(
            f"`nonlocal_temporal_group_sizes` must hold one positive int or None per stage ({num_stages}). "
            f"Received: nonlocal_temporal_group_sizes={groups!r}"
        )
    a["nonlocal_temporal_group_sizes"] = list(groups)
    chunk = a["nonlocal_chunk_size"]
    if chunk is not None and chunk != "auto" and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(
            f"`nonlocal_chunk_size` must be a positive int, \"auto\" or None. Received: nonlocal_chunk_size={chunk!r}"
        )
    budget = a["nonlocal_memory_budget_mb"]
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget < float("inf"):
        raise ValueError(
            f"`nonlocal_memory_budget_mb` must be a positive number. Received: nonlocal_memory_budget_mb={budget!r}"
        )


def _out_size(size, kernel, stride, pad):
    """Output length of a conv/pool with symmetric padding, rounding down (Caffe2, PyTorch, Keras 'valid')."""
    if size is None:
        return None
    return (size + 2 * pad - kernel) // stride + 1


def nonlocal_pool(compression):
    """The `(t, h, w)` max-pool window of a non-local block's keys for a `compression` argument."""
    if compression is None:
        return (1, 1, 1)
    if isinstance(compression, (list, tuple)):
        return tuple(compression)
    return (1, compression, compression)


def feature_shapes(arch, input_shape):
    """Feature-map sizes `(T, H, W, C)` after each part of the network, for one input clip shape.

    Args:
        arch: builder arguments (any subset; they are validated with `normalize_arch`).
        input_shape: `(T, H, W, C)`; `None` entries propagate as `None`.

    Returns:
        A dict (in network order) from `"conv1"`, `"pool1"`, `"res2"`, `"pool2"`, `"res3"`, ... to `(T, H, W, C)`.

    Raises:
        ValueError: when the clip is too small for the geometry (an axis shrinks below 1), when a non-local temporal
            group size does not divide the frames of its stage, or when non-local pooling exceeds the map.

    Example:
        >>> feature_shapes({}, (32, 224, 224, 3))["pool1"]
        (8, 55, 55, 64)
    """
    a = normalize_arch(**arch)
    input_shape = tuple(input_shape)
    shapes = {}

    def check(part, size):
        if any(s is not None and s < 1 for s in size):
            raise ValueError(
                f"The input clip is too small for this architecture: the feature map after {part} would be "
                f"{tuple(size)}. Received: input_shape={input_shape}"
            )

    t, h, w = input_shape[:3]
    k, st = a["conv1_kernel"], a["conv1_strides"]
    size = [_out_size(n, k[i], st[i], k[i] // 2) for i, n in enumerate((t, h, w))]
    check("conv1", size)
    shapes["conv1"] = (*size, a["stem_width"])
    if a["pool1_size"] is not None:
        size = [
            _out_size(n, a["pool1_size"][i], a["pool1_strides"][i], a["pool1_padding"][i]) for i, n in enumerate(size)
        ]
        check("pool1", size)
        shapes["pool1"] = (*size, a["stem_width"])
    for s, name in enumerate(stage_names(len(a["stage_depths"]))):
        stride = a["stage_strides"][s]
        size = [size[0], _out_size(size[1], 1, stride, 0), _out_size(size[2], 1, stride, 0)]
        check(name, size)
        channels = a["stage_widths"][s] * a["bottleneck_expansion"]
        if a["nonlocal_blocks"][s]:
            group = a["nonlocal_temporal_group_sizes"][s]
            if group is not None and size[0] is not None and size[0] % group:
                raise ValueError(
                    f"The non-local blocks of {name} attend within groups of {group} frames, but {name} has "
                    f"{size[0]} frames. Received: input_shape={input_shape}, nonlocal_temporal_group_sizes="
                    f"{a['nonlocal_temporal_group_sizes']}"
                )
            pool = nonlocal_pool(a["nonlocal_compression"])
            if any(n is not None and p > n for n, p in zip(size, pool)):
                raise ValueError(
                    f"The non-local blocks of {name} pool keys by {pool}, but the map is only {tuple(size)}. "
                    f"Received: input_shape={input_shape}, nonlocal_compression={a['nonlocal_compression']!r}"
                )
        shapes[name] = (*size, channels)
        if s == 0 and a["pool2_size"] is not None:
            strides = a["pool2_strides"] or a["pool2_size"]
            size = [_out_size(n, a["pool2_size"][i], strides[i], 0) for i, n in enumerate(size)]
            check("pool2", size)
            shapes["pool2"] = (*size, channels)
    return shapes


def validate_input_shape(arch, input_shape):
    """Check a `(T, H, W, C)` input shape against an architecture; returns it as a tuple.

    Raises:
        ValueError: for a malformed shape or one too small for the geometry.
    """
    if (
        not isinstance(input_shape, (list, tuple))
        or len(input_shape) != 4
        or any(d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1) for d in input_shape)
    ):
        raise ValueError(
            "`input_shape` must be (frames, height, width, channels) with positive ints or None (channels-last). "
            f"Received: input_shape={input_shape!r}"
        )
    if input_shape[-1] is None:
        raise ValueError(f"The channel count of `input_shape` must be known. Received: input_shape={input_shape!r}")
    feature_shapes(arch, input_shape)
    return tuple(input_shape)


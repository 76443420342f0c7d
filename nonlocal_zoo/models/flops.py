"""Analytic parameter and multiply-accumulate (MAC) counts, computed from the architecture arguments alone.

No layer is built, so counting the 101-layer models takes microseconds. Conventions (as the model zoos publish them):
MACs count convolutions, the dense `pred` and the non-local products (projections, affinity and aggregation, at the
sizes of the op as defined: `N x M x D` each for the affinity and the aggregation); BatchNorm, ReLU, pooling, softmax
and additions are not counted. "FLOPs" in mmaction2 and pytorchvideo tables are these MACs.

Example:
    >>> from nonlocal_zoo.models.flops import format_info
    >>> print(format_info("i3d_nl5_r50_32x2_kinetics400"))
"""
import math

from nonlocal_zoo.models.arch import nonlocal_pool, feature_shapes, normalize_arch, stage_names
from nonlocal_zoo.presets import get_preset, num_classes


def count_params(arch, *, classes=400, input_channels=3, include_top=True):
    """Trainable and non-trainable parameters of a backbone (plus `pred` when `include_top`).

    Args:
        arch: builder arguments (a preset's `"arch"` dict).
        classes: outputs of `pred`. Defaults to 400.
        input_channels: channels of the clip. Defaults to 3.
        include_top: count `pred`. Defaults to `True`.

    Returns:
        `{"trainable": int, "non_trainable": int, "total": int}`; non-trainable are the BN moving statistics.

    Example:
        >>> from nonlocal_zoo.presets import get_preset
        >>> count_params(get_preset("i3d_nl5_r50")["arch"])["trainable"]
        35401936
    """
    a = normalize_arch(**arch)
    trainable = non_trainable = 0

    def norm(channels, kind):
        nonlocal trainable, non_trainable
        if kind is None:
            return
        trainable += 2 * channels  # gamma, beta (or affine scale, bias)
        if kind == "batch":
            non_trainable += 2 * channels  # moving mean, moving variance

    trainable += math.prod(a["conv1_kernel"]) * input_channels * a["stem_width"]
    norm(a["stem_width"], a["normalization"])
    cin = a["stem_width"]
    for s, depth in enumerate(a["stage_depths"]):
        inner = a["stage_widths"][s]
        out = inner * a["bottleneck_expansion"]
        for i in range(depth):
            stride = a["stage_strides"][s] if i == 0 else 1
            if cin != out or stride != 1:
                trainable += cin * out
                norm(out, a["normalization"])
            trainable += a["temporal_kernels"][s][i] * cin * inner + 9 * inner * inner + inner * out
            norm(inner, a["normalization"])
            norm(inner, a["normalization"])
            norm(out, a["normalization"])
            cin = out
            if i in a["nonlocal_blocks"][s]:
                d = out // 2
                bias = 1 if a["nonlocal_use_bias"] else 0
                out_bias = bias if a["nonlocal_out_use_bias"] is None else int(a["nonlocal_out_use_bias"])
                projections = 1 if a["nonlocal_mode"] == "gaussian" else 3  # g (+ theta, phi)
                trainable += projections * (out * d + bias * d) + d * out + out_bias * out
                if a["nonlocal_mode"] == "concatenate":
                    trainable += 2 * d
                norm(out, a["nonlocal_normalization"])
    if include_top:
        trainable += cin * classes + classes
    return {"trainable": trainable, "non_trainable": non_trainable, "total": trainable + non_trainable}


def count_macs(arch, input_shape, *, classes=400, include_top=True):
    """Multiply-accumulates of one clip, by part of the network.

    Args:
        arch: builder arguments.
        input_shape: `(T, H, W, C)` of the clip (static sizes).
        classes: outputs of `pred`. Defaults to 400.
        include_top: count `pred`. Defaults to `True`.

    Returns:
        `{"total": int, "stem": int, "res2": int, ..., "nonlocal": int, "head": int}` (stage entries include
        their non-local blocks; `"nonlocal"` repeats the non-local share of the total).

    Example:
        >>> from nonlocal_zoo.presets import get_preset
        >>> count_macs(get_preset("c2d_r50_8x8_kinetics400")["arch"], (8, 224, 224, 3))["total"] / 1e9  # ~19.3
    """
    if any(d is None for d in input_shape):
        raise ValueError(f"count_macs needs a static input shape. Received: input_shape={tuple(input_shape)}")
    a = normalize_arch(**arch)
    shapes = feature_shapes(a, input_shape)
    macs = {"stem": 0}
    conv1 = shapes["conv1"]
    macs["stem"] = math.prod(conv1[:3]) * math.prod(a["conv1_kernel"]) * input_shape[-1] * a["stem_width"]
    nonlocal_total = 0
    cin = a["stem_width"]
    previous = shapes.get("pool1", shapes["conv1"])  # the map entering the next stage
    for s, name in enumerate(stage_names(len(a["stage_depths"]))):
        t, h, w, out = shapes[name]
        inner = a["stage_widths"][s]
        positions = t * h * w
        stage = 0
        for i in range(a["stage_depths"][s]):
            stride = a["stage_strides"][s] if i == 0 else 1
            if cin != out or stride != 1:
                stage += positions * cin * out  # branch1 (strided 1x1x1)
            # conv a runs at the block's input resolution; the spatial stride is on conv b.
            in_positions = math.prod(previous[:3]) if i == 0 else positions
            stage += in_positions * a["temporal_kernels"][s][i] * cin * inner
            stage += positions * 9 * inner * inner + positions * inner * out
            cin = out
            if i in a["nonlocal_blocks"][s]:
                nl = _nonlocal_macs(a, s, (t, h, w), out)
                stage += nl
                nonlocal_total += nl
        macs[name] = stage
        previous = shapes["pool2"] if s == 0 and "pool2" in shapes else shapes[name]
    macs["nonlocal"] = nonlocal_total
    macs["head"] = cin * classes if include_top else 0
    macs["total"] = sum(v for k, v in macs.items() if k != "nonlocal")
    return macs


def _nonlocal_macs(a, s, size, channels):
    t, h, w = size
    d = channels // 2
    group = a["nonlocal_temporal_group_sizes"][s] or t
    groups = t // group
    pool = nonlocal_pool(a["nonlocal_compression"])
    queries = group * h * w  # per group
    keys = (group // pool[0]) * (h // pool[1]) * (w // pool[2])  # per group, after pooling
    n, m = groups * queries, groups * keys
    mode = a["nonlocal_mode"]
    projected = m if a["nonlocal_pool_position"] == "input" else n  # positions the phi/g projections see
    total = projected * channels * d  # g
    if mode != "gaussian":
        total += n * channels * d + projected * channels * d  # theta, phi
    total += n * d * channels  # out
    if mode == "concatenate":
        total += (n + m) * d + groups * queries * keys * d  # w . [theta, phi] (decomposed) + aggregation
    else:
        dim = channels if mode == "gaussian" else d
        total += groups * queries * keys * dim + groups * queries * keys * d  # affinity + aggregation
    return total


def model_info(name):
    """Architecture, counts, weights and protocol of a preset, as a JSON-able dict.

    Returns:
        A dict with `name`, `description`, `params` (`count_params`, with the preset's classes), `macs_train_view`
        (num_frames x train_crop^2), `macs_test_view` (num_frames x test_crop^2), `test_views`, `macs_test_total`,
        `feature_shapes` (train view), `nonlocal_blocks`, `top1`, `top5`, `licence`, `source`, `weights`,
        `preprocessing`, `arch`.

    Example:
        >>> model_info("i3d_nl5_r50_32x2_kinetics400")["params"]["trainable"]
        35401936
    """
    preset = get_preset(name)
    arch, pre, meta = preset["arch"], preset["preprocessing"], preset["metadata"]
    frames = pre["num_frames"]
    train_shape = (frames, pre["train_crop"], pre["train_crop"], 3)
    test_shape = (frames, pre["test_crop"], pre["test_crop"], 3)
    views = pre["test_num_clips"] * pre["test_num_crops"]
    classes = num_classes(preset)  # 400, or the head of the demo / test presets
    test_macs = count_macs(arch, test_shape, classes=classes)["total"]
    blocks = normalize_arch(**arch)["nonlocal_blocks"]
    return {
        "name": name,
        "description": meta["description"],
        "params": count_params(arch, classes=classes),
        "macs_train_view": count_macs(arch, train_shape, classes=classes)["total"],
        "macs_test_view": test_macs,
        "test_views": views,
        "macs_test_total": views * test_macs,
        "feature_shapes": {k: list(v) for k, v in feature_shapes(arch, train_shape).items()},
        "nonlocal_blocks": [f"nonlocal_conv{s + 2}_{i}" for s, stage in enumerate(blocks) for i in stage],
        "top1": meta["top1"],
        "top5": meta["top5"],
        "licence": meta["licence"],
        "source": meta["source"],
        "weights": preset["weights"],
        "preprocessing": pre,
        "arch": arch,
    }


def format_info(name):
    """`model_info` as the text that `nonlocal-zoo info NAME` prints."""
    info = model_info(name)
    pre = info["preprocessing"]
    weights = info["weights"]
    acc = "not published" if info["top1"] is None else (
        f"top-1 {info['top1']}" + ("" if info["top5"] is None else f" / top-5 {info['top5']}")
    )
    lines = [
        info["name"],
        f"  {info['description']}",
        f"  params           {info['params']['trainable']:,} trainable + "
        f"{info['params']['non_trainable']:,} BN statistics",
        f"  MACs             {info['macs_train_view'] / 1e9:.2f} G per {pre['num_frames']}x{pre['train_crop']}x"
        f"{pre['train_crop']} clip; {info['macs_test_view'] / 1e9:.2f} G per {pre['test_crop']}x{pre['test_crop']} "
        f"test view; {info['macs_test_total'] / 1e12:.2f} T for {info['test_views']} views",
        "  feature maps     "
        + ", ".join(f"{k} {'x'.join(str(d) for d in v[:3])}" for k, v in info["feature_shapes"].items()),
        f"  non-local        {', '.join(info['nonlocal_blocks']) or 'none'}",
        f"  Kinetics-400     {acc}",
        f"  clip             {pre['num_frames']} frames every {pre['sampling_rate']}; RGB mean {pre['mean']} std "
        f"{pre['std']} (0-255); test {pre['test_num_clips']} clips x {pre['test_num_crops']} crops of "
        f"{pre['test_crop']}, {pre['test_aggregation']} averaged",
        "  weights          "
        + ("none (architecture only)" if weights is None else f"{weights['url']} ({weights['format']})"),
        f"  licence          {info['licence'] or 'n/a'}; source {info['source']}",
    ]
    if weights is not None and weights.get("url"):  # the first good download's sha256, from the cache's record
        from nonlocal_zoo.pretrained.download import describe_download

        lines.append(f"  sha256           {describe_download(weights['file_name'])}")
    return "\n".join(lines)

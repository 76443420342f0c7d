"""Model cards and model tables generated from the preset registry (`nonlocal_zoo.presets.PRESETS`).

- `model_card(name)`: the Hugging Face model card (README.md with YAML front matter) of one preset: architecture,
  source checkpoint and URL, licence, clip protocol, preprocessing, published accuracy and the converter parity
  test that covers the preset's checkpoint format. `push_to_hub` uploads it; `nonlocal-zoo info` prints it.
- `model_table()`: the README model table (name, source, clip protocol, params, MACs per view, published
  top-1/top-5, licence, load snippet).
- `choice_table()`: accuracy against cost, sorted by compute, for `docs/choose_a_model.md`.

`scripts/render_model_table.py` writes both tables into README.md and the docs between `<!-- model-table:start -->`
/ `<!-- model-table:end -->` (and `choice-table`) markers; `tests/test_model_table.py` fails when they are stale.

Example:
    >>> from nonlocal_zoo.model_cards import model_card
    >>> print(model_card("i3d_nl5_r50_32x2_kinetics400"))
"""
from nonlocal_zoo.presets import PRESETS, get_preset, list_models

# Which test checks the conversion of each checkpoint format against an independent reference, and how.
# tests/test_model_table.py checks that every file and test function named here exists.
PARITY_TESTS = {
    "caffe2_pkl": {
        "test": "tests/test_convert_caffe2.py::test_official_caffe2_pkl",
        "reference": "the official Caffe2 network (video-nonlocal-net resnet_video{,_org}.py) transcribed to PyTorch",
    },
    "pyslowfast_pkl": {
        "test": "tests/test_convert_caffe2.py::test_pyslowfast_caffe2_pkl",
        "reference": "pytorchvideo create_resnet + NonLocal (PySlowFast geometry), written as a Caffe2-format .pkl",
    },
    "pytorchvideo_pyth": {
        "test": "tests/test_convert_torch.py::test_pyslowfast_and_pytorchvideo_state_dicts",
        "reference": "pytorchvideo's own create_resnet, saved with its native state_dict as a .pyth checkpoint",
    },
    "mmaction2_pth": {
        "test": "tests/test_convert_torch.py::test_mmaction2_state_dict",
        "reference": "a module-for-module PyTorch transcription of mmaction2's Recognizer3D(ResNet3d) with mmcv's "
                     "NonLocal3d, whose state_dict has mmaction2's names",
    },
    "gluoncv_pth": {
        "test": "tests/test_gluoncv.py::test_converted_checkpoint_matches_reference",
        "reference": "a PyTorch transcription of gluon-cv's I3D_ResNetV1 / NonLocal with gluon-cv's module names",
    },
}
ARCHITECTURE_PARITY_TEST = {
    "test": "tests/test_models_reference.py",
    "reference": "pytorchvideo create_resnet + NonLocal blocks with the same weights",
}
PARITY_CRITERION = "logits max |diff| <= 1e-4 x max |logit| and the same top-1 class"

SOURCE_NAMES = {
    "facebookresearch/video-nonlocal-net": "official Caffe2",
    "facebookresearch/SlowFast": "PySlowFast",
    "facebookresearch/pytorchvideo": "pytorchvideo",
    "open-mmlab/mmaction2": "mmaction2",
    "dmlc/gluon-cv": "gluon-cv",
}
HF_LICENCES = {"CC-BY-NC-4.0": "cc-by-nc-4.0", "Apache-2.0": "apache-2.0"}


def _source_name(preset):
    return SOURCE_NAMES.get(preset["metadata"]["source"], preset["metadata"]["source"])


def _num_nonlocal(arch):
    return sum(len(stage) for stage in arch["nonlocal_blocks"])


def _fmt_acc(value):
    """Accuracy as published: 74.9, 92.07, 72.0; "–" when not published."""
    if value is None:
        return "–"
    text = f"{value:.2f}"
    return text[:-1] if text.endswith("0") else text


def clip_protocol(name):
    """One line: frames x sampling rate, sampling code, test views and crop, e.g.
    `"32x2 (official), 10x3 views, 256 crop, fully conv."`."""
    pre = get_preset(name)["preprocessing"]
    head = ", fully conv." if pre["test_fully_convolutional"] else ""
    return (f"{pre['num_frames']}x{pre['sampling_rate']} ({pre['sampling']}), {pre['test_num_clips']}x"
            f"{pre['test_num_crops']} views, {pre['test_crop']} crop{head}")


def load_snippet(name):
    """The one-line Python that loads a preset (with its weights when it has published ones)."""
    weights = '"kinetics400"' if PRESETS[name]["weights"] is not None else "None"
    return f'create_model("{name}", weights={weights})'


def _macs_g(preset):
    return preset["metadata"]["macs"] / 1e9


def _params_m(preset):
    return preset["metadata"]["params"] / 1e6


# ----------------------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------------------
def model_table():
    """The README model table (Markdown), one row per preset with published weights, then the
    architecture-only presets.

    Example:
        >>> print(model_table().splitlines()[0])
        | preset | source | clip protocol | params | MACs / view | top-1 / top-5 | licence | load |
    """
    lines = [
        "| preset | source | clip protocol | params | MACs / view | top-1 / top-5 | licence | load |",
        "|---|---|---|--:|--:|:-:|---|---|",
    ]
    for name in list_models(pretrained=True):
        preset = PRESETS[name]
        meta = preset["metadata"]
        lines.append(
            f"| `{name}` | {_source_name(preset)} | {clip_protocol(name)} | {_params_m(preset):.1f} M | "
            f"{_macs_g(preset):.1f} G | {_fmt_acc(meta['top1'])} / {_fmt_acc(meta['top5'])} | "
            f"{meta['licence']} | `{load_snippet(name)}` |"
        )
    arch_only = [n for n in list_models() if PRESETS[n]["weights"] is None]
    lines += [
        "",
        "Kinetics-400 top-1/top-5 (%) as published by each source (10 clips x 3 crops, or the source's own "
        "multi-view protocol); MACs of one test view (frames x crop x crop) counted by `nonlocal_zoo.models.flops`; "
        "params are trainable parameters with the 400-class head. Weights are converted on your machine from the "
        "upstream files, under the upstream licence.",
        "",
        "Architecture-only presets (no published weights; `weights=None`): "
        + ", ".join(f"`{n}` ({_params_m(PRESETS[n]):.1f} M, {_macs_g(PRESETS[n]):.1f} G)" for n in arch_only) + ".",
    ]
    return "\n".join(lines)


def choice_table():
    """Accuracy against cost for the presets with published accuracy, sorted by MACs per view (Markdown).

    Columns: preset, top-1, top-5, GMACs per view, views, TMACs per video (all views), params, frames x rate.
    """
    rows = []
    for name in list_models(pretrained=True):
        preset = PRESETS[name]
        meta, pre = preset["metadata"], preset["preprocessing"]
        if meta["top1"] is None:
            continue
        views = pre["test_num_clips"] * pre["test_num_crops"]
        rows.append((meta["macs"], name, meta, pre, views, preset))
    lines = [
        "| preset | top-1 | top-5 | GMACs / view | views | TMACs / video | params | clip |",
        "|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for macs, name, meta, pre, views, preset in sorted(rows, key=lambda r: (r[0], r[1])):
        lines.append(
            f"| `{name}` | {_fmt_acc(meta['top1'])} | {_fmt_acc(meta['top5'])} | {macs / 1e9:.1f} | {views} | "
            f"{macs * views / 1e12:.2f} | {_params_m(preset):.1f} M | {pre['num_frames']}x{pre['sampling_rate']} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Model cards
# ----------------------------------------------------------------------------------------------------------------------
def parity_summary(name, parity=None):
    """The parity line of a card: the converter test that covers the preset's checkpoint format, or `parity`.

    Args:
        name: preset name.
        parity: `None` (the registered test of the format), a string (used as is), or a dict of a measurement
            (`max_abs_diff`, `max_rel_diff`, `top1_agreement`, `reference`, `test`, ... ; printed as given).
    """
    if isinstance(parity, str):
        return parity
    weights = PRESETS[name]["weights"]
    entry = ARCHITECTURE_PARITY_TEST if weights is None else PARITY_TESTS.get(weights["format"])
    if isinstance(parity, dict):
        measured = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in parity.items())
        return f"Measured on conversion: {measured}."
    if parity is not None:
        raise ValueError(f"`parity` must be None, a string or a dict. Received: parity={parity!r}")
    if entry is None:
        return "No parity test is registered for this checkpoint format."
    what = "architecture" if weights is None else f"`{weights['format']}` conversion"
    return (f"The {what} is checked against {entry['reference']}: {PARITY_CRITERION} "
            f"(`{entry['test']}`, random non-trivial weights on small inputs).")


def model_card(preset_name, parity=None):
    """The Hugging Face model card (Markdown with YAML front matter) of a preset.

    Args:
        preset_name: a preset name (see `nonlocal_zoo.list_models()`).
        parity: optional measured parity (see `parity_summary`); defaults to the registered converter test.

    Returns:
        The card text.

    Example:
        >>> card = model_card("i3d_nl5_r50_32x2_kinetics400")
        >>> "CC-BY-NC-4.0" in card
        True
    """
    from nonlocal_zoo.models.flops import model_info
    from nonlocal_zoo.version import __version__

    preset = get_preset(preset_name)
    info = model_info(preset_name)
    arch, pre, meta, weights = preset["arch"], preset["preprocessing"], preset["metadata"], preset["weights"]
    licence = meta["licence"]
    load_weights = "None" if weights is None else '"kinetics400"'
    scaled = "x" if pre["scale"] == 255 else f"x / 255 * {pre['scale']:g}"
    front = ["---", "library_name: keras", "pipeline_tag: video-classification"]
    if licence in HF_LICENCES:
        front.append(f"license: {HF_LICENCES[licence]}")
    front += ["tags:", "- video-classification", "- non-local", "- nonlocal_zoo", "- keras", "- kinetics-400", "---"]

    depth = 101 if len(arch["stage_depths"]) == 4 and arch["stage_depths"][2] == 23 else 50
    temporal = "I3D" if arch["conv1_kernel"][0] > 1 else "C2D"
    blocks = info["nonlocal_blocks"]
    nl = (f"{len(blocks)} non-local blocks ({arch['nonlocal_mode']}, pooling {arch['nonlocal_pool_position']}, "
          f"compression {arch['nonlocal_compression']}): {', '.join(blocks)}") if blocks else "no non-local blocks"
    params = info["params"]
    mean = ", ".join(f"{m:g}" for m in pre["mean"])
    std = ", ".join(f"{s:g}" for s in pre["std"])
    top = "not published" if meta["top1"] is None else f"top-1 {_fmt_acc(meta['top1'])} %"
    if meta["top5"] is not None:
        top += f", top-5 {_fmt_acc(meta['top5'])} %"
    lines = front + [
        "",
        f"# {preset_name}",
        "",
        f"{meta['description']}. Keras 3 model of nonlocal_zoo {__version__} (Non-local Neural Networks, Wang et al., "
        "CVPR 2018).",
        "",
        "## Architecture",
        "",
        f"- {temporal} ResNet-{depth}, {nl}.",
        f"- Stem: conv1 {'x'.join(map(str, arch['conv1_kernel']))} stride {tuple(arch['conv1_strides'])}; pool1 "
        f"{arch['pool1_size']} stride {arch['pool1_strides']} padding {arch['pool1_padding']}; pool2 "
        f"{arch['pool2_size']}. Normalization: {arch['normalization']}.",
        f"- Parameters: {params['trainable']:,} trainable + {params['non_trainable']:,} BatchNorm statistics.",
        f"- Compute: {info['macs_train_view'] / 1e9:.1f} GMACs per {pre['num_frames']}x{pre['train_crop']}x"
        f"{pre['train_crop']} clip; {info['macs_test_view'] / 1e9:.1f} GMACs per {pre['test_crop']}x"
        f"{pre['test_crop']} test view; {info['macs_test_total'] / 1e12:.2f} TMACs for the {info['test_views']} views.",
        "",
        "## Source checkpoint",
        "",
    ]
    if weights is None:
        lines.append("None: architecture only (no published weights). Load with `weights=None`.")
    else:
        hashes = ", ".join(f"{k} `{weights[k]}`" for k in ("sha256", "sha256_prefix", "sha1", "sha1_prefix")
                           if weights.get(k))
        lines += [
            f"- File: [`{weights['file_name']}`]({weights['url']}) ({weights['format']}, from "
            f"[{weights['source']}](https://github.com/{weights['source']})){'; ' + hashes if hashes else ''}.",
            "- Converted on the user's machine from the upstream file (`weights=\"kinetics400\"`); the converted "
            "weights carry the upstream licence.",
        ]
    lines += [
        "",
        "## Licence",
        "",
        (f"Weights: {licence} (from {meta['source']}). nonlocal_zoo code: Apache-2.0." if licence else
         "No weights. nonlocal_zoo code: Apache-2.0."),
        "",
        "## Clip protocol and preprocessing",
        "",
        f"- Clips: {pre['num_frames']} RGB frames every {pre['sampling_rate']} frames ({pre['sampling']} sampling).",
        f"- Normalisation: `({scaled} - mean) / std` on 0-255 RGB x, mean ({mean}), std ({std}) "
        f"(`nonlocal_zoo.preprocess_input(clip, \"{preset_name}\")`).",
        f"- Training: short side uniform in {pre['train_short_side_range']}, random {pre['train_crop']} crop, "
        "random flip.",
        f"- Testing: short side {pre['test_short_side']}, {pre['test_num_clips']} clips x {pre['test_num_crops']} "
        f"crops of {pre['test_crop']}, {pre['test_aggregation']} averaged over the views"
        + (", fully-convolutional head (per-location softmax averaged)." if pre["test_fully_convolutional"] else "."),
        "",
        "## Published accuracy (Kinetics-400 validation)",
        "",
        (f"{top} ({pre['test_num_clips']}x{pre['test_num_crops']} views, as reported by {meta['source']}). "
         "Numbers are the source's; they were not re-measured here (the dataset is not redistributable)."
         if meta["top1"] is not None else "Not published (architecture only)."),
        "",
        "## Parity",
        "",
        parity_summary(preset_name, parity),
        "",
        "## Usage",
        "",
        "```python",
        "import nonlocal_zoo",
        "",
        f"model = nonlocal_zoo.create_model(\"{preset_name}\", weights={load_weights},",
        f"                                  input_shape=({pre['num_frames']}, None, None, 3), "
        f"fully_convolutional={bool(pre['test_fully_convolutional'])})",
        f"views = nonlocal_zoo.data.multiview_clips(\"video.mp4\", preset=\"{preset_name}\")  # uint8 "
        f"({pre['test_num_clips'] * pre['test_num_crops']}, {pre['num_frames']}, {pre['test_crop']}, "
        f"{pre['test_crop']}, 3)",
        f"probs = model.predict(nonlocal_zoo.preprocess_input(views, \"{preset_name}\")).mean(0, keepdims=True)",
        "print(nonlocal_zoo.decode_predictions(probs, top=5))",
        "```",
        "",
        "## Citation",
        "",
        "```bibtex",
        "@inproceedings{wang2018nonlocal,",
        "  title={Non-local Neural Networks},",
        "  author={Wang, Xiaolong and Girshick, Ross and Gupta, Abhinav and He, Kaiming},",
        "  booktitle={CVPR},",
        "  year={2018}",
        "}",
        "```",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Generated blocks in Markdown files
# ----------------------------------------------------------------------------------------------------------------------
# file (relative to the repository root) -> {marker: generator}
GENERATED_BLOCKS = {
    "README.md": {"model-table": model_table},
    "docs/choose_a_model.md": {"choice-table": choice_table},
}


def replace_between_markers(text, marker, content):
    """`text` with the lines between `<!-- {marker}:start -->` and `<!-- {marker}:end -->` replaced by `content`.

    Raises:
        ValueError: when the markers are missing or out of order.
    """
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"Markers {start} ... {end} not found (in this order). Received: text of {len(text)} chars")
    return text[:i + len(start)] + "\n" + content.rstrip("\n") + "\n" + text[j:]


def render_generated_blocks(root, *, check=False):
    """Rewrite (or, with `check`, only compare) the generated blocks of `GENERATED_BLOCKS` under `root`.

    Returns:
        The relative paths whose content is (or was) stale.
    """
    import os

    stale = []
    for relative, blocks in GENERATED_BLOCKS.items():
        path = os.path.join(root, relative)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = text
        for marker, generate in blocks.items():
            new = replace_between_markers(new, marker, generate())
        if new != text:
            stale.append(relative)
            if not check:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(new)
    return stale

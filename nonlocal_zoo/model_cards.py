"""Model cards, the licence map and the model tables, generated from the preset registry (`nonlocal_zoo.presets`).

The one place for cards and licences:

- `model_card(name)`: the Hugging Face model card (README.md with YAML front matter) of one preset: architecture,
  source checkpoint and URL, licence, clip protocol, preprocessing, published accuracy and the parity test named in
  the preset's registry entry. `nonlocal-zoo info` prints it.
- `render_card(preset, ...)`: the card to upload or save with a model (`push_to_hub`, `save_to_preset`): the
  preset's `model_card`, or a short card for a model of no preset.
- `hub_license(licence)` / `HUB_LICENSES`: registry licence -> Hugging Face `license:` identifier.
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

# What the parity test named in each preset entry (`PRESETS[name]["parity_test"]`) compares against.
# tests/test_model_table.py checks that every preset's test is described here and that the test function exists.
PARITY_REFERENCES = {
    "tests/test_convert_caffe2.py::test_official_caffe2_pkl":
        "the official Caffe2 network (video-nonlocal-net resnet_video{,_org}.py) transcribed to PyTorch",
    "tests/test_convert_caffe2.py::test_pyslowfast_caffe2_pkl":
        "pytorchvideo create_resnet + NonLocal (PySlowFast geometry), written as a Caffe2-format .pkl",
    "tests/test_convert_torch.py::test_pyslowfast_and_pytorchvideo_state_dicts":
        "pytorchvideo's own create_resnet, saved with its native state_dict as a .pyth checkpoint",
    "tests/test_convert_torch.py::test_mmaction2_state_dict":
        "a module-for-module PyTorch transcription of mmaction2's Recognizer3D(ResNet3d) with mmcv's NonLocal3d, "
        "whose state_dict has mmaction2's names",
    "tests/test_gluoncv.py::test_converted_checkpoint_matches_reference":
        "a PyTorch transcription of gluon-cv's I3D_ResNetV1 / NonLocal with gluon-cv's module names",
    "tests/test_models_reference.py::test_c2d_nl5_r50_paper_geometry_matches_pytorchvideo":
        "pytorchvideo create_resnet + NonLocal blocks in the official C2D paper geometry, with the same weights",
    "tests/test_models_reference.py::test_i3d_nl5_r101_official_rule_matches_pytorchvideo":
        "pytorchvideo create_resnet + NonLocal blocks with the official ResNet-101 temporal-kernel and non-local "
        "placement rules, with the same weights",
    "tests/test_demo.py::test_demo_model_reaches_stated_held_out_accuracy":
        "the held-out accuracy recorded in the demo weights' provenance (freshly rendered clips)",
    "tests/test_presets.py::test_tiny_preset_builds_with_its_counts":
        "the analytic parameter and MAC counter (no weights)",
}
PARITY_CRITERION = "logits max |diff| <= 1e-4 x max |logit| and the same top-1 class"

SOURCE_NAMES = {
    "facebookresearch/video-nonlocal-net": "official Caffe2",
    "facebookresearch/SlowFast": "PySlowFast",
    "facebookresearch/pytorchvideo": "pytorchvideo",
    "open-mmlab/mmaction2": "mmaction2",
    "dmlc/gluon-cv": "gluon-cv",
}
# The one licence map: registry licence -> Hugging Face `license:` identifier.
HUB_LICENSES = {"CC-BY-NC-4.0": "cc-by-nc-4.0", "Apache-2.0": "apache-2.0", "MIT": "mit"}
HF_LICENCES = HUB_LICENSES  # older name


def hub_license(licence):
    """The Hugging Face `license:` identifier of a registry licence, or `None` when it has none.

    Args:
        licence: a preset's `"licence"` (e.g. `"CC-BY-NC-4.0"`), or `None`.

    Example:
        >>> hub_license("CC-BY-NC-4.0")
        'cc-by-nc-4.0'
    """
    return HUB_LICENSES.get(licence)


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
    """The parity line of a card: the parity test named in the preset's registry entry, or `parity`.

    Args:
        name: preset name.
        parity: `None` (the registered test of the preset), a string (used as is), or a dict of a measurement
            (`max_abs_diff`, `max_rel_diff`, `top1_agreement`, `reference`, `test`, ... ; printed as given).
    """
    if isinstance(parity, str):
        return parity
    if isinstance(parity, dict):
        measured = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in parity.items())
        return f"Measured on conversion: {measured}."
    if parity is not None:
        raise ValueError(f"`parity` must be None, a string or a dict. Received: parity={parity!r}")
    preset = get_preset(name)
    test, weights = preset["parity_test"], preset["weights"]
    reference = PARITY_REFERENCES.get(test)
    if reference is None:
        return f"Checked by `{test}`."
    if preset["metadata"]["internal"]:
        return f"Checked against {reference} (`{test}`)."
    what = "architecture" if weights is None else f"`{weights['format']}` conversion"
    return (f"The {what} is checked against {reference}: {PARITY_CRITERION} "
            f"(`{test}`, random non-trivial weights on small inputs).")


def _macs_text(macs, *, total=False):
    """"54.7 GMACs" (per view) or "1.64 TMACs" (all views); MMACs for the miniature models."""
    if macs < 1e9:
        return f"{macs / 1e6:.1f} MMACs"
    return f"{macs / 1e12:.2f} TMACs" if total else f"{macs / 1e9:.1f} GMACs"


def _front_matter(licence, *, kinetics=True):
    """The YAML front matter lines of a Hugging Face card (library, pipeline, licence, tags)."""
    front = ["---", "library_name: keras", "pipeline_tag: video-classification"]
    if hub_license(licence):
        front.append(f"license: {hub_license(licence)}")
    front += ["tags:", "- video-classification", "- non-local", "- nonlocal_zoo", "- keras"]
    if kinetics:
        front.append("- kinetics-400")
    return front + ["---"]


def _usage(preset_name, preset, repo_id, plain_keras=False):
    """The lines of the card's usage snippet: `VideoClassifier.from_preset` (from `hf://repo_id` when given; with
    `plain_keras`, the preset with the repository's weights), or `create_model` + the test views for a registry
    preset."""
    pre, internal = preset["preprocessing"], preset["metadata"]["internal"]
    if repo_id and plain_keras:  # a plain Keras model of the preset: its weights go into the preset's classifier
        return [
            "import nonlocal_zoo",
            "",
            f"clf = nonlocal_zoo.VideoClassifier.from_preset(\"{preset_name}\", weights=\"hf://{repo_id}\")",
            "probs = clf.predict([\"video.mp4\"])  # one row of class probabilities per video (all test views)",
            "print(clf.decode_predictions(probs, top=5))",
        ]
    if internal or repo_id:
        source = f"hf://{repo_id}" if repo_id else preset_name
        return [
            "import nonlocal_zoo",
            "",
            f"clf = nonlocal_zoo.VideoClassifier.from_preset(\"{source}\")",
            "probs = clf.predict([\"video.mp4\"])  # one row of class probabilities per video (all test views)",
            "print(clf.decode_predictions(probs, top=5))",
        ]
    load_weights = "None" if preset["weights"] is None else '"kinetics400"'
    return [
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
    ]


def model_card(preset_name, parity=None, *, repo_id=None, plain_keras=False):
    """The Hugging Face model card (Markdown with YAML front matter) of a preset.

    Args:
        preset_name: a preset name (see `nonlocal_zoo.list_models(include_internal=True)`).
        parity: optional measured parity (see `parity_summary`); defaults to the preset's registered parity test.
        repo_id: the Hub repository the card is uploaded to (`"org/repo"`); the usage section then loads from
            `hf://org/repo`.
        plain_keras: the repository holds a plain Keras model of the preset (what
            `nonlocal_zoo.models.conversion.push_to_hub` uploads), not a `VideoClassifier`: the usage section
            loads its weights into the preset (`VideoClassifier.from_preset(preset, weights="hf://org/repo")`).

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
    meta, kinetics = preset["metadata"], preset["labels"] == "kinetics400"
    lines = _front_matter(preset["licence"], kinetics=kinetics) + [
        "",
        f"# {preset_name}",
        "",
        f"{meta['description']}. Keras 3 model of nonlocal_zoo {__version__} (Non-local Neural Networks, Wang et al., "
        "CVPR 2018).",
        "",
        *_card_architecture(preset, model_info(preset_name)),
        "",
        "## Source checkpoint",
        "",
        *_card_source(preset["weights"]),
        "",
        *_card_licence(preset),
        "",
        *_card_preprocessing(preset_name, preset["preprocessing"]),
        "",
        *_card_accuracy(preset),
        "",
        "## Parity",
        "",
        parity_summary(preset_name, parity),
        "",
        "## Usage",
        "",
        "```python",
        *_usage(preset_name, preset, repo_id, plain_keras),
        "```",
        "",
        *_CITATION,
        "",
    ]
    return "\n".join(lines)


_CITATION = [
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
]


def _card_architecture(preset, info):
    """The card's "Architecture" section: network, stem, head, parameters and compute.

    Args:
        preset: the registry entry. info: its `nonlocal_zoo.models.flops.model_info` (params, MACs, block names).
    """
    arch, pre = preset["arch"], preset["preprocessing"]
    depth = sum(arch["stage_depths"]) * 3 + 2
    temporal = "I3D" if arch["conv1_kernel"][0] > 1 else "C2D"
    blocks = info["nonlocal_blocks"]
    nl = (f"{len(blocks)} non-local blocks ({arch['nonlocal_mode']}, pooling {arch['nonlocal_pool_position']}, "
          f"compression {arch['nonlocal_compression']}): {', '.join(blocks)}") if blocks else "no non-local blocks"
    params = info["params"]
    classes = ("the 400 Kinetics-400 classes" if preset["labels"] == "kinetics400" else
               f"{len(preset['labels'])} classes: {', '.join(preset['labels'])}")
    return [
        "## Architecture",
        "",
        f"- {temporal} ResNet-{depth}, {nl}.",
        f"- Stem: conv1 {'x'.join(map(str, arch['conv1_kernel']))} stride {tuple(arch['conv1_strides'])}; pool1 "
        f"{arch['pool1_size']} stride {arch['pool1_strides']} padding {arch['pool1_padding']}; pool2 "
        f"{arch['pool2_size']}. Normalization: {arch['normalization']}.",
        f"- Head: {classes}.",
        f"- Parameters: {params['trainable']:,} trainable + {params['non_trainable']:,} BatchNorm statistics.",
        f"- Compute: {_macs_text(info['macs_train_view'])} per {pre['num_frames']}x{pre['train_crop']}x"
        f"{pre['train_crop']} clip; {_macs_text(info['macs_test_view'])} per {pre['test_crop']}x"
        f"{pre['test_crop']} test view; {_macs_text(info['macs_test_total'], total=True)} for the "
        f"{info['test_views']} views.",
    ]


def _card_source(weights):
    """The body of the card's "Source checkpoint" section for a preset's `weights` entry (None: architecture only)."""
    if weights is None:
        return ["None: architecture only (no published weights). Load with `weights=None`."]
    if weights.get("package_file"):
        return [f"- File: `{weights['file_name']}`, shipped inside the nonlocal_zoo package (sha256 "
                f"`{weights['sha256']}`), trained here (`scripts/train_demo_model.py`)."]
    hashes = ", ".join(f"{k} `{weights[k]}`" for k in ("sha256", "sha256_prefix", "sha1", "sha1_prefix")
                       if weights.get(k))
    return [
        f"- File: [`{weights['file_name']}`]({weights['url']}) ({weights['format']}, from "
        f"[{weights['source']}](https://github.com/{weights['source']})){'; ' + hashes if hashes else ''}.",
        "- Converted on the user's machine from the upstream file (`weights=\"kinetics400\"`); the converted "
        "weights carry the upstream licence.",
    ]


def _card_licence(preset):
    """The card's "Licence" section: the weights' licence (from the registry) and the code's."""
    licence, source = preset["licence"], preset["metadata"]["source"]
    return [
        "## Licence",
        "",
        (f"Weights: {licence} (from {source}). nonlocal_zoo code: Apache-2.0." if licence else
         "No weights. nonlocal_zoo code: Apache-2.0."),
    ]


def _card_preprocessing(preset_name, pre):
    """The card's "Clip protocol and preprocessing" section: sampling, normalisation, train and test views."""
    scaled = "x" if pre["scale"] == 255 else f"x / 255 * {pre['scale']:g}"
    mean = ", ".join(f"{m:g}" for m in pre["mean"])
    std = ", ".join(f"{s:g}" for s in pre["std"])
    return [
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
    ]


def _card_accuracy(preset):
    """The card's accuracy section: the source's published Kinetics-400 numbers, or why there are none."""
    meta, pre = preset["metadata"], preset["preprocessing"]
    if meta["top1"] is not None:
        top = f"top-1 {_fmt_acc(meta['top1'])} %"
        if meta["top5"] is not None:
            top += f", top-5 {_fmt_acc(meta['top5'])} %"
        views = f"{pre['test_num_clips']}x{pre['test_num_crops']} views"
        return [
            "## Published accuracy (Kinetics-400 validation)",
            "",
            f"{top} ({views}, as reported by {meta['source']}). "
            "Numbers are the source's; they were not re-measured here (the dataset is not redistributable).",
        ]
    if preset["labels"] == "kinetics400":
        return ["## Published accuracy (Kinetics-400 validation)", "", "Not published (architecture only)."]
    return ["## Accuracy", "", "No Kinetics-400 accuracy (not a Kinetics-400 model); see the description."]


def render_card(preset=None, *, model_name=None, repo_id=None, parity=None, labels=None, licence=None,
                plain_keras=False):
    """The model card to upload or save with a model: the preset's full card, or a short generic one.

    The one card generator for `push_to_hub` and `save_to_preset`: with a registry preset it is `model_card`;
    a model built from no preset (e.g. a fine-tuned head) gets a short card with its name, classes and licence.

    Args:
        preset: a registry preset name, or `None`.
        model_name: the model's name (the card title without a preset).
        repo_id: the Hub repository (`"org/repo"`) the card goes to, for the usage snippet.
        parity: optional measured parity (see `parity_summary`).
        labels: class names of a model without a preset (listed in the card).
        licence: licence of a model without a preset (e.g. inherited from the weights it was fine-tuned from).
        plain_keras: the repository holds a plain Keras model, not a `VideoClassifier` (see `model_card`); without
            a preset the card then has no `from_preset` snippet (only a VideoClassifier loads from `hf://` alone).

    Returns:
        The card text (Markdown with YAML front matter).

    Example:
        >>> render_card("i3d_nl5_r50_32x2_kinetics400").startswith("---")
        True
        >>> "license: apache-2.0" in render_card(model_name="my_model", licence="Apache-2.0")
        True
    """
    if preset is not None:
        return model_card(preset, parity=parity, repo_id=repo_id, plain_keras=plain_keras)
    title = model_name or "nonlocal_zoo model"
    lines = _front_matter(licence, kinetics=False) + ["", f"# {title}", "", "Keras model built with nonlocal_zoo."]
    if labels:
        lines += ["", f"Classes ({len(labels)}): {', '.join(map(str, labels))}."]
    if licence:
        lines += ["", f"Licence: {licence}."]
    if parity is not None:
        lines += ["", parity_summary(None, parity)]
    if repo_id and not plain_keras:
        lines += ["", "```python", "import nonlocal_zoo", "",
                  f"clf = nonlocal_zoo.VideoClassifier.from_preset(\"hf://{repo_id}\")", "```"]
    return "\n".join(lines) + "\n"


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

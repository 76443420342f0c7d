"""`weights=` for every model: None, "kinetics400", a local file, or "hf://org/repo"; plus download/convert/push.

- `"kinetics400"`: the preset's upstream checkpoint is downloaded and verified (`download.fetch`), converted
  strictly (`convert.assign_checkpoint`) and the converted `.weights.h5` is cached under
  `cache_dir()/converted/<preset>.weights.h5` with `<preset>.provenance.json` (source URL and sha256, converter
  version, sha256 of the converted file). Later calls verify the recorded sha256 and load the cached file; a
  cached file that fails the check is converted again.
- a local path: `.pkl` (Caffe2), `.pth`/`.pyth` (PySlowFast, pytorchvideo, mmaction2; needs torch) are converted on
  the fly; `.weights.h5` and `.keras` files (and Keras model folders) are loaded strictly.
- `"hf://org/repo[@revision][/file]"`: resolved through `hub.resolve_hf` (huggingface_hub, its cache, offline
  mode), then loaded as a local path.

`include_top=False`, or a `classes` count that differs from the checkpoint's, loads everything but the `pred`
layer, which keeps its fresh initialisation.

Building a model of a preset (to convert into, or to read a whole-model weights file for a headless model) uses
`nonlocal_zoo.models`, imported inside the functions that need it.
"""
import datetime
import json
import logging
import os
from pathlib import Path

from nonlocal_zoo.presets import PRESETS, get_preset
from nonlocal_zoo.pretrained.convert import (
    CONVERTER_VERSION,
    HEAD_LAYER,
    assign_checkpoint,
    atomic_save,
    h5_weight_count,
    load_keras_weights_strict,
    provenance_path,
    transfer_weights,
)
from nonlocal_zoo.pretrained.download import cache_dir, fetch, hash_file
from nonlocal_zoo.pretrained.validate import preset_validator

logger = logging.getLogger(__name__)

PRETRAINED_TAG = "kinetics400"
CONVERTED_SUBDIR = "converted"
DOWNLOADS_SUBDIR = "downloads"
KINETICS400_CLASSES = 400
PROVENANCE_VERSION = 1
_HASH_KEYS = ("sha256", "sha256_prefix", "sha1", "sha1_prefix")


# ----------------------------------------------------------------------------------------------------------------
# Presets: download, convert, cache
# ----------------------------------------------------------------------------------------------------------------
def _published_weights(name):
    preset = get_preset(name)
    if preset["weights"] is None:
        with_weights = sorted(n for n, p in PRESETS.items() if p["weights"] is not None)
        raise ValueError(
            f"Preset {name!r} has no published weights (architecture only). Presets with weights: {with_weights}. "
            f"Received: name={name!r}"
        )
    return preset["weights"]


def download_preset(name, *, progress=True, offline=None):
    """Downloads (once) and verifies the upstream checkpoint of a preset; returns its cached path.

    Used by `nonlocal-zoo download NAME`. The file is checked against every hash the preset records (full
    digests or the prefixes in mmaction2/gluon-cv file names), parsed with its format's reader and checked for the
    tensors of the preset's architecture (`validate.preset_validator`), and re-verified on every later use.

    Args:
        name: a preset with published weights (`nonlocal_zoo.list_models(pretrained=True)`).
        progress: show a progress bar.
        offline: True to use only the cache (None: `NONLOCAL_ZOO_OFFLINE` / `HF_HUB_OFFLINE`).

    Returns:
        `pathlib.Path` of the upstream file in `cache_dir()/downloads/`.

    Example:
        >>> download_preset("i3d_nl5_r50_32x2_kinetics400")
        PosixPath('/home/me/.keras/nonlocal_zoo/downloads/i3d_nonlocal_32x2_IN_pretrain_400k.pkl')
    """
    w = _published_weights(name)
    hashes = {key: w.get(key) for key in _HASH_KEYS}
    return fetch(
        w["url"], file_name=w["file_name"], subdir=DOWNLOADS_SUBDIR, progress=progress, offline=offline,
        validate=preset_validator(name), **hashes
    )


def _utc_now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _pred_units(model):
    try:
        return model.get_layer(HEAD_LAYER).units
    except (ValueError, AttributeError):
        return None


def _write_json_atomic(path, data):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def read_provenance(weights_path):
    """The provenance record next to a converted file (`x.provenance.json`), or None."""
    path = provenance_path(weights_path)
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_provenance(weights_path, *, preset, model, fmt, source_path, source_url=None):
    """Writes `<name>.provenance.json` next to a converted file; returns the record.

    The record holds the preset, the source (URL, file name, format, sha256 and sha1 of the upstream file,
    licence), the converter and library versions, and the sha256 of the converted file.
    """
    import keras

    from nonlocal_zoo.version import __version__

    weights_path = Path(weights_path)
    source_hashes = hash_file(source_path)
    weights = get_preset(preset)["weights"] if preset in PRESETS else None
    record = {
        "provenance_version": PROVENANCE_VERSION,
        "preset": preset,
        "model_name": model.name,
        "classes": _pred_units(model),
        "source": {
            "url": source_url,
            "file_name": Path(source_path).name,
            "format": fmt.name,
            "sha256": source_hashes["sha256"],
            "sha1": source_hashes["sha1"],
            "licence": weights["licence"] if weights else None,
            "repository": weights["source"] if weights else None,
        },
        "converter_version": CONVERTER_VERSION,
        "nonlocal_zoo_version": __version__,
        "keras_version": keras.__version__,
        "weights_file": weights_path.name,
        "weights_sha256": hash_file(weights_path)["sha256"],
        "created_utc": _utc_now(),
    }
    _write_json_atomic(provenance_path(weights_path), record)
    return record


def _cache_problem(target, name, w):
    """None when the converted cache of preset `name` may be used, else why not."""
    if not target.is_file():
        return "missing"
    record = read_provenance(target)
    if record is None:
        return "no readable provenance record"
    source = record.get("source") or {}
    if record.get("preset") != name:
        return f"it was converted for preset {record.get('preset')!r}"
    if record.get("converter_version") != CONVERTER_VERSION:
        return f"converter version {record.get('converter_version')!r} differs from {CONVERTER_VERSION!r}"
    if source.get("url") != w["url"] or source.get("file_name") != w["file_name"]:
        return f"it was converted from {source.get('url')!r}, the preset now names {w['url']!r}"
    for algorithm in ("sha256", "sha1"):
        for key in (algorithm, f"{algorithm}_prefix"):
            expected = w.get(key)
            if expected and not str(source.get(algorithm, "")).startswith(expected.lower()):
                return f"its source {algorithm} {source.get(algorithm)!r} does not match the preset's {key}={expected!r}"
    actual = hash_file(target)["sha256"]
    if actual != record.get("weights_sha256"):
        return f"its sha256 {actual} differs from the recorded {record.get('weights_sha256')}"
    return None


def _build(name, *, classes=KINETICS400_CLASSES):
    from nonlocal_zoo.models import create_model

    return create_model(name, weights=None, include_top=True, classes=classes)


def converted_weights(name, *, progress=True, offline=None):
    """The converted `.weights.h5` of a preset, from the cache or freshly downloaded and converted.

    Args:
        name: a preset with published weights.
        progress: show download progress.
        offline: True to use only the caches (None: from the environment). A valid converted file is enough
            offline; the upstream file is needed only to convert.

    Returns:
        `pathlib.Path` of `cache_dir()/converted/<name>.weights.h5` (its provenance record lies beside it).

    Raises:
        CheckpointMismatchError: the upstream file does not fit the preset's architecture.
        ChecksumError, DownloadError, OfflineError: see `download.fetch`.

    Example:
        >>> path = converted_weights("i3d_nl5_r50_8x8_kinetics400")
    """
    import filelock

    w = _published_weights(name)
    folder = cache_dir() / CONVERTED_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.weights.h5"
    with filelock.FileLock(str(folder / f"{name}.lock")):
        problem = _cache_problem(target, name, w)
        if problem is None:
            return target
        if problem != "missing":
            logger.warning("Converted weights %s cannot be used (%s); converting again.", target, problem)
        for stale in (target, provenance_path(target)):
            if stale.exists():
                stale.unlink()
        source = download_preset(name, progress=progress, offline=offline)
        logger.info("Converting %s (%s) for preset %s.", source, w["format"], name)
        model = _build(name)
        fmt = assign_checkpoint(model, source, format=w["format"])
        atomic_save(model, target)
        write_provenance(target, preset=name, model=model, fmt=fmt, source_path=source, source_url=w["url"])
        return target


def convert_checkpoint(src, *, model, out, format=None, source_url=None, progress=True):
    """Converts an upstream checkpoint into a Keras `.weights.h5` (or `.keras`) file with a provenance record.

    Used by `nonlocal-zoo convert SRC --model NAME --out FILE`.

    Args:
        src: the checkpoint file (`.pkl`, `.pth`, `.pyth`), or `"kinetics400"` for the preset's upstream file
            (downloaded and verified first).
        model: a preset name, or a Keras model built by `nonlocal_zoo.models` (converted into in place).
        out: output path ending in `.weights.h5` (weights only) or `.keras` (the whole model).
        format: the checkpoint format (`nonlocal_zoo.pretrained.convert.list_formats()`); None detects it.
        source_url: where `src` came from, for the provenance record.
        progress: show download progress (for `src="kinetics400"`).

    Returns:
        `pathlib.Path` of the written file; `<name>.provenance.json` is written next to it.

    Raises:
        CheckpointMismatchError: the checkpoint does not fit the model (lists missing, unexpected, mis-shaped).
        UnsafePickleError: the file was refused by the safe reader; nothing from it was executed.

    Example:
        >>> convert_checkpoint("I3D_NLN_8x8_R50.pkl", model="i3d_nl5_r50_8x8_kinetics400_pyslowfast",
        ...                    out="i3d_nl5_pyslowfast.weights.h5")
    """
    if isinstance(model, str):
        preset = model
        get_preset(preset)
        keras_model = None
    else:
        keras_model = model
        preset = model.name if model.name in PRESETS else None
    out = Path(out)
    if not (out.name.endswith(".weights.h5") or out.suffix == ".keras"):
        raise ValueError(f"`out` must end with '.weights.h5' or '.keras'. Received: out={str(out)!r}")
    if os.fspath(src) == PRETRAINED_TAG:
        if preset is None:
            raise ValueError(f"src='{PRETRAINED_TAG}' needs a preset name as `model`. Received: model={model!r}")
        w = _published_weights(preset)
        src, source_url, format = download_preset(preset, progress=progress), w["url"], format or w["format"]
    src = Path(src)
    if keras_model is None:
        keras_model = _build(preset)
    fmt = assign_checkpoint(keras_model, src, format=format)
    atomic_save(keras_model, out)
    write_provenance(out, preset=preset, model=keras_model, fmt=fmt, source_path=src, source_url=source_url)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------
def _load_keras_weights_file(model, path, *, include_top, classes):
    """Strictly loads a `.weights.h5` saved from a whole model (backbone + `pred`) into `model`.

    When the head is not to be loaded (or `model` has none), the file is read into a full-model view that shares
    `model`'s backbone layers and has a throwaway `pred`, so that every array of the file still pairs up.
    """
    import keras

    from nonlocal_zoo.models import add_classifier_head, get_stage_outputs

    record = read_provenance(path) or {}
    source_classes = record.get("classes") or KINETICS400_CLASSES
    units = _pred_units(model)
    load_head = include_top and units == source_classes and classes in (None, units)
    if (load_head or units is None) and h5_weight_count(path) == len(model.weights):
        load_keras_weights_strict(model, path)  # same structure (a whole model, or a headless file and model)
        return
    stages = get_stage_outputs(model)
    last = stages[max(stages, key=lambda name: int(name[3:]))]
    view = add_classifier_head(keras.Model(model.inputs, last), classes=source_classes, name=f"{model.name}_view")
    load_keras_weights_strict(view, path)


def _load_keras_model_file(model, path, *, include_top, classes):
    import keras

    source = keras.saving.load_model(str(path), compile=False)
    units = _pred_units(model)
    load_head = include_top and units is not None and units == _pred_units(source) and classes in (None, units)
    transfer_weights(source, model, include_top=load_head, what=f"Keras model '{path}'")


def _load_folder(model, folder, *, include_top, classes):
    folder = Path(folder)
    weights_files = sorted(folder.glob("*.weights.h5"))
    keras_files = sorted(folder.glob("*.keras"))
    if (folder / "config.json").is_file() and weights_files:
        return _load_keras_model_file(model, folder, include_top=include_top, classes=classes)
    if len(keras_files) == 1:
        return _load_keras_model_file(model, keras_files[0], include_top=include_top, classes=classes)
    if len(weights_files) == 1:
        return _load_keras_weights_file(model, weights_files[0], include_top=include_top, classes=classes)
    raise ValueError(
        f"Cannot tell which file of {folder} to load: expected a Keras model folder (config.json + "
        f"model.weights.h5), one .keras file or one .weights.h5 file. Found: {sorted(p.name for p in folder.iterdir())}"
    )


def _load_path(model, path, *, include_top, classes, format):
    path = Path(path)
    if path.is_dir():
        return _load_folder(model, path, include_top=include_top, classes=classes)
    if not path.is_file():
        raise FileNotFoundError(f"No such weights file: {path}")
    if path.name.endswith(".weights.h5"):
        return _load_keras_weights_file(model, path, include_top=include_top, classes=classes)
    if path.suffix == ".keras":
        return _load_keras_model_file(model, path, include_top=include_top, classes=classes)
    assign_checkpoint(model, path, format=format, include_top=include_top, classes=classes)


def load_weights(model, weights, *, preset=None, include_top=True, classes=None, format=None, progress=True):
    """Loads `weights` into a model built by `nonlocal_zoo.models` (what `create_model(weights=...)` calls).

    Args:
        model: the Keras model.
        weights: None (nothing to do); `"kinetics400"` (the preset's published checkpoint: downloaded, verified,
            converted once and cached); a local path to a `.pkl`, `.pth`, `.pyth`, `.weights.h5` or `.keras` file
            or a Keras model folder; or `"hf://org/repo[@revision][/file]"` on the Hugging Face Hub.
        preset: the preset the model was built from (defaults to `model.name` when that is a preset). Needed for
            `"kinetics400"`.
        include_top: load the classifier `pred`. With False the head is not loaded (it stays fresh, if present).
        classes: the model's classes; a count that differs from the checkpoint's leaves a fresh head.
        format: the checkpoint format of a local upstream file (None: detected).
        progress: show download progress.

    Raises:
        CheckpointMismatchError: the weights do not fit the model (lists missing, unexpected, mis-shaped names).
        UnsafePickleError: a checkpoint was refused by the safe readers (nothing was executed).
        ChecksumError, DownloadError, OfflineError: download problems (see `download.fetch`).
        ValueError: bad arguments, quoting the value received.

    Example:
        >>> model = create_model("i3d_nl5_r50_32x2_kinetics400")
        >>> load_weights(model, "kinetics400")
        >>> load_weights(model, "hf://me/i3d_nl5_r50_32x2_kinetics400@v1")
    """
    if weights is None:
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            "`weights` must be None, 'kinetics400', a path or an 'hf://' handle. "
            f"Received: weights={weights!r}"
        )
    weights = os.fspath(weights)
    if preset is None and model.name in PRESETS:
        preset = model.name
    if weights == PRETRAINED_TAG:
        if preset is None:
            raise ValueError(
                f"weights='{PRETRAINED_TAG}' needs the preset the model was built from. "
                f"Received: preset=None, model.name={model.name!r}"
            )
        path = converted_weights(preset, progress=progress)
        return _load_keras_weights_file(model, path, include_top=include_top, classes=classes)
    if weights.startswith("hf://"):
        from nonlocal_zoo.pretrained.hub import resolve_hf

        weights = resolve_hf(weights)
    return _load_path(model, weights, include_top=include_top, classes=classes, format=format)


# ----------------------------------------------------------------------------------------------------------------
# Hub
# ----------------------------------------------------------------------------------------------------------------
_HUB_LICENSES = {"CC-BY-NC-4.0": "cc-by-nc-4.0", "Apache-2.0": "apache-2.0", "MIT": "mit"}


def minimal_model_card(preset_name, *, repo_id=None):
    """A short model card for a preset: architecture, source checkpoint and licence, published accuracy and
    test protocol, preprocessing, usage. (`nonlocal_zoo.model_cards.model_card` writes the full one.)"""
    preset = get_preset(preset_name)
    meta, pre, w, arch = preset["metadata"], preset["preprocessing"], preset["weights"], preset["arch"]
    licence = (w or {}).get("licence") or meta.get("licence")
    front = ["---", "library_name: keras", "tags:", "- video-classification", "- non-local", "- nonlocal_zoo"]
    if licence in _HUB_LICENSES:
        front.append(f"license: {_HUB_LICENSES[licence]}")
    front.append("---")
    blocks = sum(len(b) for b in arch["nonlocal_blocks"])
    depth = sum(arch["stage_depths"]) * 3 + 2
    lines = [
        *front,
        f"# {preset_name}",
        "",
        f"{meta['description']}. Converted with nonlocal_zoo from the published checkpoint.",
        "",
        "## Architecture",
        f"- ResNet-{depth}, stage depths {arch['stage_depths']}, conv1 kernel {arch['conv1_kernel']}, "
        f"{blocks} non-local blocks ({arch['nonlocal_mode']}) at {arch['nonlocal_blocks']}",
        f"- trainable parameters: {meta['params']:,}" if meta.get("params") else "- trainable parameters: see model",
        f"- MACs per {pre['num_frames']}x{pre['test_crop']}x{pre['test_crop']} view: {meta['macs'] / 1e9:.1f} G"
        if meta.get("macs") else "",
        f"- paper: {meta['paper']}",
        "",
        "## Source checkpoint",
    ]
    if w:
        lines += [f"- file: [{w['file_name']}]({w['url']}) ({w['format']}, from {w['source']})",
                  f"- licence: **{w['licence']}** (the licence of the original weights applies to this conversion)"]
    else:
        lines += ["- none (architecture only)"]
    top1 = f"{meta['top1']}" if meta.get("top1") is not None else "not published"
    top5 = f"{meta['top5']}" if meta.get("top5") is not None else "not published"
    fully = "fully-convolutional (per-location softmax) " if pre["test_fully_convolutional"] else ""
    lines += [
        "",
        "## Published accuracy (Kinetics-400 validation)",
        f"- top-1 {top1}, top-5 {top5}",
        f"- protocol: {pre['test_num_clips']} clips x {pre['test_num_crops']} crops, short side "
        f"{pre['test_short_side']}, {fully}{pre['test_crop']}x{pre['test_crop']} crops, "
        f"{pre['test_aggregation']} averaged over views",
        "",
        "## Preprocessing",
        f"- {pre['num_frames']} frames at stride {pre['sampling_rate']} ({pre['sampling']} sampling), "
        f"{pre['channel_order']}, pixels in [0, {pre['scale']:g}]",
        f"- normalise: (x - {pre['mean']}) / {pre['std']}",
        f"- `nonlocal_zoo.preprocess_input(clip, preset=\"{preset_name}\")`",
        "",
        "## Usage",
        "```python",
        "import nonlocal_zoo",
        f"model = nonlocal_zoo.create_model(\"{preset_name}\", weights=\"hf://{repo_id or '<org>/<repo>'}\")",
        "```",
        "",
    ]
    return "\n".join(line for line in lines if line is not None)


def push_to_hub(model_or_preset, repo_id, *, card=None, weights=PRETRAINED_TAG, parity=None, token=None,
                private=False, commit_message="Upload model with nonlocal_zoo"):
    """Uploads a converted model with a generated model card to the Hugging Face Hub.

    Args:
        model_or_preset: a Keras model, or a preset name (the model is built and its `weights` loaded).
        repo_id: 'org/repo' or 'hf://org/repo'.
        card: model card markdown; None generates one from the preset (`nonlocal_zoo.model_cards.model_card` when
            available, else `minimal_model_card`).
        weights: what to load when a preset name is given. Defaults to `"kinetics400"`.
        parity: optional parity report passed to the model-card generator.
        token, private, commit_message: as in `hub.upload_folder_to_hub`.

    Returns:
        the `huggingface_hub.CommitInfo` of the upload.

    Example:
        >>> push_to_hub("i3d_nl5_r50_8x8_kinetics400_pyslowfast", "me/i3d_nl5_r50_8x8_pyslowfast")
        >>> model = create_model("i3d_nl5_r50_8x8_kinetics400_pyslowfast", weights="hf://me/i3d_nl5_r50_8x8_pyslowfast")
    """
    from nonlocal_zoo.pretrained import hub

    if isinstance(model_or_preset, str):
        from nonlocal_zoo.models import create_model

        preset = model_or_preset
        model = create_model(preset, weights=weights)
    else:
        model = model_or_preset
        preset = model.name if model.name in PRESETS else None
    if card is None:
        card = _generate_card(preset, model, hub._repo_id(repo_id), parity)
    return hub.push_to_hub(model, repo_id, card=card, token=token, private=private, commit_message=commit_message)


def _generate_card(preset, model, repo_id, parity):
    if preset is None:
        return f"---\nlibrary_name: keras\ntags:\n- nonlocal_zoo\n---\n# {model.name}\n\nKeras model built with nonlocal_zoo.\n"
    try:
        from nonlocal_zoo.model_cards import model_card
    except ImportError:
        return minimal_model_card(preset, repo_id=repo_id)
    return model_card(preset, parity=parity)

"""The one resolver: `(name | preset dir | .keras file | hf://, weights)` -> a `VideoClassifier`, and preset dirs.

Every command that needs a model (`classify`, `evaluate`, `export`, `attention`, `finetune`, `push_to_hub`) goes
through `resolve`. The model it returns carries its preprocessing, labels and aggregation rule in its config; none
of them is found by `model.name`.

A preset directory (what `VideoClassifier.save_to_preset` and `nonlocal-zoo finetune` write):

    config.json         the VideoClassifier's Keras config (backbone arch, head, preprocessor, labels, preset)
    model.weights.h5    its weights (Keras format; same variable paths as `create_model`)
    preprocessor.json   the preprocessor's config, for reading without Keras
    labels.txt          class names, one per line, in output order
    metadata.json       nonlocal_zoo / Keras versions, parameter count, source preset, sha256 of the weights
    README.md           a model card

Example:
    >>> clf = resolve("demo")
    >>> clf.save_to_preset("/tmp/demo_copy")
    >>> resolve("/tmp/demo_copy").predict("clip.mp4")
"""
import difflib
import hashlib
import importlib.resources
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import keras

from nonlocal_zoo.presets import PRESETS, get_preset
from nonlocal_zoo.tasks.backbone import NonLocalResNetBackbone
from nonlocal_zoo.tasks.classifier import VideoClassifier
from nonlocal_zoo.tasks.preprocessor import VideoClassifierPreprocessor

logger = logging.getLogger("nonlocal_zoo.tasks")

CONFIG_FILE, WEIGHTS_FILE, PREPROCESSOR_FILE = "config.json", "model.weights.h5", "preprocessor.json"
LABELS_FILE, METADATA_FILE, CARD_FILE = "labels.txt", "metadata.json", "README.md"
PRETRAINED = "kinetics400"


# ----------------------------------------------------------------------------------------------------------- helpers
def _registry_names():
    try:
        from nonlocal_zoo.presets import list_models

        names = set(list_models())
    except Exception:  # pragma: no cover - the registry always imports
        names = set()
    return names | set(PRESETS)


def _read_labels(labels):
    """A list of class names from a list or a text file (one per line)."""
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        path = os.fspath(labels)
        if not os.path.isfile(path):
            raise ValueError(f"`labels` must be a list or an existing text file. Received: labels={path!r}")
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    return [str(x) for x in labels]


def preset_labels(entry):
    """The class names of a registry entry (`"kinetics400"`, a list, or None)."""
    labels = entry.get("labels", PRETRAINED if entry.get("weights") else None)
    if labels == PRETRAINED:
        from nonlocal_zoo.pretrained.labels import kinetics400_labels

        return list(kinetics400_labels())
    return None if labels is None else [str(x) for x in labels]


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_weights(model, weights, *, preset, include_top, classes, format=None):
    from nonlocal_zoo.models.weights import load_weights

    return load_weights(model, weights, preset=preset, include_top=include_top, classes=classes, format=format)


def _load_h5_strict(model, path):
    from nonlocal_zoo.pretrained.convert import load_keras_weights_strict

    load_keras_weights_strict(model, path)


def _package_weights(name, w):
    """Weights shipped inside the package (the demo model), verified against the registry's sha256."""
    path = importlib.resources.files("nonlocal_zoo").joinpath("weights", w["file_name"])
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"The weights of preset {name!r} are missing from the package: {path}")
    expected = w.get("sha256")
    if expected:
        actual = _sha256(path)
        if actual != expected:
            raise ValueError(f"The packaged weights of preset {name!r} are damaged: sha256 {actual} != {expected}. "
                             f"Received: path={path!r}")
    return path


# ----------------------------------------------------------------------------------------------------------- resolve
def resolve(spec, *, weights="auto", num_classes=None, labels=None, format=None, preset=None, clip_shape=None,
            preprocessing=None, require_weights=False, **arch_overrides):
    """The `VideoClassifier` a user names: a registry preset, a preset directory, a `.keras` file or `hf://`.

    Args:
        spec: `"demo"`, a preset name, a preset directory (`save_to_preset`, `finetune` output), a `.keras` file,
            or `hf://org/repo[@revision]` (a preset directory on the Hub).
        weights: `"auto"`: the published weights of a pretrained preset, the packaged weights of `"demo"`, the
            saved weights of a directory or file; random for an architecture-only preset (refused when
            `require_weights`). None or `"none"`: random. `"kinetics400"`, a weights file (`.pkl`, `.pth`,
            `.pyth`, `.weights.h5`, `.keras`) or an `hf://` handle: loaded into the preset's architecture.
        num_classes: a new head of this many classes (fresh `pred`; the backbone keeps its weights).
        labels: class names (list or text file); with a new count they define the new head.
        format: checkpoint format of an upstream weights file (detected when None).
        preset: for a plain `.keras` model that is not a `VideoClassifier`: the preset whose architecture and
            protocol it has.
        clip_shape: `(T, H, W, 3)` of the network input. Defaults to `(num_frames, None, None, 3)`.
        preprocessing: dict of preprocessing keys overriding the preset's (e.g. `{"test_num_clips": 1}`).
        require_weights: refuse `weights="auto"` for a preset without weights (what the CLI wants).
        **arch_overrides: architecture keys replacing the preset's (e.g. `nonlocal_chunk_size=1024`).

    Returns:
        A `VideoClassifier`.

    Raises:
        ValueError: unknown names, bad arguments, files that are not models (quoting what was received).

    Example:
        >>> clf = resolve("i3d_nl5_r50_8x8_kinetics400")
    """
    if not isinstance(spec, (str, os.PathLike)) or not os.fspath(spec):
        raise ValueError("`model` must be 'demo', a preset name, a preset directory, a .keras file or hf://org/repo. "
                         f"Received: model={spec!r}")
    spec = os.fspath(spec)
    weights = None if weights in (None, "none", "None") else weights
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"`weights` must be 'auto', None, 'kinetics400', a path or an hf:// handle. "
                         f"Received: weights={weights!r}")
    weights = None if weights is None else os.fspath(weights)
    labels = _read_labels(labels)
    common = dict(weights=weights, num_classes=num_classes, labels=labels, format=format)
    if spec.startswith("hf://"):
        from nonlocal_zoo.pretrained.hub import resolve_hf

        spec = os.fspath(resolve_hf(spec))
    if spec in _registry_names() and not os.path.exists(spec):
        return _from_registry(spec, clip_shape=clip_shape, preprocessing=preprocessing,
                              require_weights=require_weights, arch_overrides=arch_overrides, **common)
    if os.path.isdir(spec):
        if not os.path.isfile(os.path.join(spec, CONFIG_FILE)):
            raise ValueError(f"{spec!r} is a folder but not a preset directory (no {CONFIG_FILE}; write one with "
                             f"VideoClassifier.save_to_preset). Received: model={spec!r}")
        clf = _from_directory(spec, weights=weights)
        return _adapt(clf, preprocessing=preprocessing, **common)
    if os.path.isfile(spec):
        if not spec.endswith(".keras"):
            raise ValueError("A model file must be a saved `.keras` model or a preset directory; for a weights file "
                             f"use `--model PRESET --weights FILE`. Received: model={spec!r}")
        clf = _from_keras_file(spec, preset=preset, weights=weights)
        return _adapt(clf, preprocessing=preprocessing, **common)
    close = difflib.get_close_matches(spec, ["demo", *sorted(PRESETS)], n=3, cutoff=0.5)
    hint = f" Did you mean {close}?" if close else " See `nonlocal-zoo list`."
    raise ValueError(f"Unknown model: not a preset name, a preset directory or an existing .keras file.{hint} "
                     f"Received: model={spec!r}")


def _from_registry(name, *, weights, num_classes, labels, format, clip_shape, preprocessing, require_weights,
                   arch_overrides):
    entry = get_preset(name)
    published = entry["weights"]
    if weights == "auto":
        if published is None:
            if require_weights:
                raise ValueError(f"Preset {name!r} has no published weights; pass `--weights PATH` (or `--weights "
                                 f"none` for a randomly initialised model). Received: model={name!r}")
            weights = None
        else:
            weights = "package" if published.get("package_file") else PRETRAINED
    base_labels = preset_labels(entry)
    if labels is None and num_classes is None:
        labels = base_labels
    if labels is None:
        labels = [f"class_{i}" for i in range(num_classes or 400)]
    if num_classes is not None and num_classes != len(labels):
        raise ValueError(f"`num_classes` ({num_classes}) differs from the number of labels ({len(labels)}).")
    pre = VideoClassifierPreprocessor(entry["preprocessing"], **(preprocessing or {}))
    if clip_shape is None:
        clip_shape = (pre.num_frames, None, None, 3)
    backbone = NonLocalResNetBackbone({**entry["arch"], **arch_overrides}, clip_shape=clip_shape, preset=name)
    head = entry.get("head") or {}
    clf = VideoClassifier(backbone, preprocessor=pre, labels=labels, preset=name, name=name,
                          dropout=head.get("dropout", 0.5))
    same_head = base_labels is not None and len(base_labels) == len(labels)
    if weights == "package":
        if not same_head:
            raise ValueError(f"The packaged weights of {name!r} have {len(base_labels)} classes; a new head needs "
                             f"fine-tuning. Received: labels of {len(labels)} classes")
        _load_h5_strict(clf, _package_weights(name, published))
    elif weights is not None:
        _load_weights(clf, weights, preset=name, include_top=True, classes=len(labels), format=format)
    return clf


def _from_directory(folder, *, weights):
    with open(os.path.join(folder, CONFIG_FILE), encoding="utf-8") as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{os.path.join(folder, CONFIG_FILE)} is not valid JSON: {e}") from None
    if not isinstance(config, dict) or config.get("class_name") != "VideoClassifier":
        raise ValueError(f"{os.path.join(folder, CONFIG_FILE)} does not describe a nonlocal_zoo VideoClassifier. "
                         f"Received: class_name={config.get('class_name') if isinstance(config, dict) else config!r}")
    clf = keras.saving.deserialize_keras_object(config)
    if weights == "auto":
        path = os.path.join(folder, WEIGHTS_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"The preset directory {folder!r} has no {WEIGHTS_FILE}.")
        _load_h5_strict(clf, path)
    elif weights is not None:
        _load_weights(clf, weights, preset=clf.preset, include_top=True, classes=clf.num_classes)
    return clf


def _from_keras_file(path, *, preset, weights):
    model = keras.saving.load_model(path, compile=False)  # training objects (optimizer, loss) are not needed
    if not isinstance(model, VideoClassifier):
        if preset is None:
            raise ValueError(f"{path!r} holds a plain Keras model ({type(model).__name__} {model.name!r}), which does "
                             "not carry its preprocessing: pass the preset whose architecture and protocol it has "
                             f"(`--preset NAME` / preset=). Received: preset=None")
        units = int(model.output_shape[-1])
        clf = _from_registry(preset, weights=None, num_classes=units, labels=None, format=None, clip_shape=None,
                             preprocessing=None, require_weights=False, arch_overrides={})
        from nonlocal_zoo.pretrained.convert import transfer_weights

        transfer_weights(model, clf, include_top=True, what=f"Keras model '{path}'")
        model = clf
    if weights not in ("auto", None):
        _load_weights(model, weights, preset=model.preset, include_top=True, classes=model.num_classes)
    return model


def _adapt(clf, *, weights, num_classes, labels, format, preprocessing):
    """A loaded classifier with another head (`num_classes`/`labels`) or preprocessing overrides."""
    del weights, format
    new_labels = labels if labels is not None else (
        [f"class_{i}" for i in range(num_classes)] if num_classes not in (None, clf.num_classes) else None)
    if new_labels is None and not preprocessing:
        return clf
    if new_labels is not None and len(new_labels) == clf.num_classes and not preprocessing:
        clf.labels = tuple(new_labels)  # renamed classes, same head
        return clf
    config = clf.get_config()
    if preprocessing:
        pre = dict(clf.preprocessor.get_config())
        pre["preprocessing"] = {**pre["preprocessing"], **preprocessing}
        config["preprocessor"] = VideoClassifierPreprocessor.from_config(pre)
    else:
        config["preprocessor"] = clf.preprocessor
    config["backbone"] = NonLocalResNetBackbone.from_config(clf.backbone.get_config())
    same_head = new_labels is None or len(new_labels) == clf.num_classes
    config["labels"] = list(new_labels) if new_labels is not None else list(clf.labels)
    new = VideoClassifier.from_config(config)
    from nonlocal_zoo.pretrained.convert import transfer_weights

    transfer_weights(clf, new, include_top=same_head, what=f"model {clf.name!r}")
    return new


# ----------------------------------------------------------------------------------------------------------- saving
def _card(clf):
    lines = [f"# {clf.name}", "", "A nonlocal_zoo `VideoClassifier` preset directory.", ""]
    if clf.preset and clf.preset in PRESETS:
        meta = get_preset(clf.preset)["metadata"]
        lines += [f"- Architecture and protocol: preset `{clf.preset}` ({meta.get('description')})",
                  f"- Licence of the source weights: {meta.get('licence') or 'n/a'}"]
    c = clf.preprocessor.config
    lines += [f"- Classes: {clf.num_classes} ({', '.join(list(clf.labels)[:8])}{', ...' if clf.num_classes > 8 else ''})",
              f"- Clips: {c['num_frames']} frames, stride {c['sampling_rate']}, {c['sampling']} sampling; test views "
              f"{c['test_num_clips']} x {c['test_num_crops']} of {c['test_crop']} px; aggregation "
              f"`{c['test_aggregation']}`",
              "", "```python", "import nonlocal_zoo",
              "clf = nonlocal_zoo.VideoClassifier.from_preset(\"<this folder or hf://org/repo>\")",
              "print(clf.decode_predictions(clf.predict(\"clip.mp4\"), top=5))", "```", ""]
    return "\n".join(lines)


def save_to_preset(clf, preset_dir):
    """Writes `clf` as a preset directory (see the module docstring); returns its `pathlib.Path`."""
    from nonlocal_zoo.version import __version__

    if not isinstance(clf, VideoClassifier):
        raise ValueError(f"Only a VideoClassifier can be saved as a preset. Received: {type(clf).__name__}")
    target = Path(preset_dir)
    if target.exists() and not target.is_dir():
        raise ValueError(f"`preset_dir` exists and is not a folder. Received: preset_dir={str(target)!r}")
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=target))
    try:
        clf.save_weights(staging / WEIGHTS_FILE)
        config = keras.saving.serialize_keras_object(clf)
        (staging / PREPROCESSOR_FILE).write_text(
            json.dumps(keras.saving.serialize_keras_object(clf.preprocessor), indent=2), encoding="utf-8")
        (staging / LABELS_FILE).write_text("\n".join(clf.labels) + "\n", encoding="utf-8")
        metadata = {"nonlocal_zoo_version": __version__, "keras_version": keras.__version__,
                    "parameter_count": int(clf.count_params()), "preset": clf.preset, "num_classes": clf.num_classes,
                    "weights_sha256": _sha256(staging / WEIGHTS_FILE)}
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2), encoding="utf-8")
        (staging / CARD_FILE).write_text(_card(clf), encoding="utf-8")
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
        stale = target / CONFIG_FILE
        if stale.exists():
            stale.unlink()  # the folder is incomplete until the new config.json is moved in
        for name in (WEIGHTS_FILE, PREPROCESSOR_FILE, LABELS_FILE, METADATA_FILE, CARD_FILE, CONFIG_FILE):
            os.replace(staging / name, target / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def is_preset_dir(path):
    """True for a folder written by `save_to_preset` (it has a `config.json` of a VideoClassifier)."""
    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("class_name") == "VideoClassifier"
    except (ValueError, OSError, AttributeError):
        return False

"""Preset directories and registry helpers of the task layer (the resolver itself is
`nonlocal_zoo.tasks.classifier.resolve`, which builds on these).

A preset directory (what `VideoClassifier.save_to_preset` and `nonlocal-zoo finetune` write):

    config.json         the VideoClassifier's Keras config (backbone arch, head, preprocessor, labels, preset)
    model.weights.h5    its weights (Keras format; same variable paths as `create_model`)
    preprocessor.json   the preprocessor's config, for reading without Keras
    labels.txt          class names, one per line, in output order
    metadata.json       nonlocal_zoo / Keras versions, parameter count, source preset, sha256 of the weights
    README.md           a model card

Example:
    >>> save_to_preset(VideoClassifier.from_preset("demo"), "/tmp/demo_copy")
    >>> is_preset_dir("/tmp/demo_copy")
    True
"""
import importlib.resources
import json
import os
import shutil
import tempfile
from pathlib import Path

import keras

from nonlocal_zoo.presets import PRESETS, get_preset

CONFIG_FILE, WEIGHTS_FILE, PREPROCESSOR_FILE = "config.json", "model.weights.h5", "preprocessor.json"
LABELS_FILE, METADATA_FILE, CARD_FILE = "labels.txt", "metadata.json", "README.md"
PRETRAINED = "kinetics400"


# ----------------------------------------------------------------------------------------------------------- helpers
def registry_names():
    try:
        from nonlocal_zoo.presets import list_models

        names = set(list_models())
    except Exception:  # pragma: no cover - the registry always imports
        names = set()
    return names | set(PRESETS)


def read_labels(labels):
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
    from nonlocal_zoo.pretrained.download import hash_file

    return hash_file(path, ("sha256",))["sha256"]


def load_weights(model, weights, *, preset, include_top, classes, format=None):
    from nonlocal_zoo.models.weights import load_weights

    return load_weights(model, weights, preset=preset, include_top=include_top, classes=classes, format=format)


def load_h5_strict(model, path):
    from nonlocal_zoo.pretrained.convert import load_keras_weights_strict

    load_keras_weights_strict(model, path)


def package_weights(name, w):
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


# ----------------------------------------------------------------------------------------------------------- saving
def _card(clf):
    """The README.md of a preset directory: the zoo's card text plus the model's own protocol and usage."""
    from nonlocal_zoo.model_cards import render_card

    licence = get_preset(clf.preset)["licence"] if clf.preset in PRESETS else None
    lines = [render_card(model_name=clf.name, labels=list(clf.labels), licence=licence).rstrip(), ""]
    if clf.preset in PRESETS:
        lines.append(f"Architecture and protocol of preset `{clf.preset}` "
                     f"({get_preset(clf.preset)['metadata']['description']}).")
    c = clf.preprocessor.config
    lines += [f"Clips: {c['num_frames']} frames, stride {c['sampling_rate']}, {c['sampling']} sampling; test views "
              f"{c['test_num_clips']} x {c['test_num_crops']} of {c['test_crop']} px, `{c['test_aggregation']}` "
              "averaging.", "", "```python", "import nonlocal_zoo", "",
              "clf = nonlocal_zoo.VideoClassifier.from_preset(\"<this folder or hf://org/repo>\")",
              "print(clf.decode_predictions(clf.predict(\"clip.mp4\"), top=5))", "```", ""]
    return "\n".join(lines)


def save_to_preset(clf, preset_dir):
    """Writes `clf` as a preset directory (see the module docstring); returns its `pathlib.Path`."""
    from nonlocal_zoo.version import __version__

    if not hasattr(clf, "preprocessor") or not hasattr(clf, "labels"):
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

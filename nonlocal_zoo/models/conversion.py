"""Converted files and the Hub for the models of `nonlocal_zoo.models`: `convert_checkpoint` (what
`nonlocal-zoo convert` runs) and `push_to_hub`. Each builds at most the one model it converts into or uploads.
"""
import os
from pathlib import Path

from nonlocal_zoo.model_cards import render_card
from nonlocal_zoo.models.factories import create_model
from nonlocal_zoo.models.weights import PRETRAINED_TAG, declared_format, pred_units, preset_of_model
from nonlocal_zoo.presets import get_preset, num_classes
from nonlocal_zoo.pretrained import hub, loading
from nonlocal_zoo.pretrained.convert import assign_checkpoint, atomic_save


def convert_checkpoint(src, *, model, out, format=None, source_url=None, progress=True, preset=None):
    """Converts an upstream checkpoint into a Keras `.weights.h5` (or `.keras`) file with a provenance record.

    Used by `nonlocal-zoo convert SRC --model NAME --out FILE`. With a preset name the one model is built here and
    the checkpoint converted straight into it.

    Args:
        src: the checkpoint file (`.pkl`, `.pth`, `.pyth`), or `"kinetics400"` for the preset's upstream file
            (downloaded and verified first).
        model: a preset name, or a Keras model built by `nonlocal_zoo.models` (converted into in place).
        out: output path ending in `.weights.h5` (weights only) or `.keras` (the whole model).
        format: the checkpoint format (`nonlocal_zoo.pretrained.convert.list_formats()`). None detects it and
            refuses a file of another flavour than the preset's; naming it converts the file as that format anyway.
        source_url: where `src` came from, for the provenance record.
        progress: show download progress (for `src="kinetics400"`).
        preset: the preset of a Keras `model` (None: its `preset` attribute, if any).

    Returns:
        `pathlib.Path` of the written file; `<name>.provenance.json` is written next to it.

    Raises:
        CheckpointMismatchError: the checkpoint does not fit the model (lists missing, unexpected, mis-shaped).
        CheckpointFlavourError: the file is of another framework or flavour than the preset.
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
        preset = preset_of_model(model, preset)
    out = Path(out)
    if not (out.name.endswith(".weights.h5") or out.suffix == ".keras"):
        raise ValueError(f"`out` must end with '.weights.h5' or '.keras'. Received: out={str(out)!r}")
    if os.fspath(src) == PRETRAINED_TAG:
        if preset is None:
            raise ValueError(f"src='{PRETRAINED_TAG}' needs a preset name as `model`. Received: model={model!r}")
        w = loading.published_weights(preset)
        src, source_url, format = loading.download_preset(preset, progress=progress), w["url"], format or w["format"]
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"No such checkpoint file: {src}")
    if keras_model is None:
        keras_model = create_model(preset, weights=None, include_top=True)
    fmt = assign_checkpoint(keras_model, src, format=format, expected_format=declared_format(preset))
    atomic_save(keras_model, out)
    loading.write_provenance(out, preset=preset, fmt=fmt, source_path=src, source_url=source_url,
                             model_name=keras_model.name, classes=pred_units(keras_model))
    return out


def push_to_hub(model_or_preset, repo_id, *, card=None, weights=PRETRAINED_TAG, parity=None, token=None,
                private=False, commit_message="Upload model with nonlocal_zoo", preset=None):
    """Uploads a converted model with a model card to the Hugging Face Hub.

    Args:
        model_or_preset: a Keras model, or a preset name (the model is built and its `weights` loaded).
        repo_id: 'org/repo' or 'hf://org/repo'.
        card: model card markdown. None generates it with `nonlocal_zoo.model_cards`: the preset's full card
            (`model_card(preset, parity=..., repo_id=...)`) for a model of a registry preset with the preset's
            classes, else a short card (`render_card(model_name=...)`).
        weights: what to load when a preset name is given. Defaults to `"kinetics400"`.
        parity: measured parity for the generated card (see `nonlocal_zoo.model_cards.parity_summary`). With your
            own `card` it raises ValueError rather than being dropped silently.
        token, private, commit_message: as in `hub.upload_folder_to_hub`.
        preset: the preset of a Keras model, for its card (None: the model's `preset` attribute, if any).

    Returns:
        the `huggingface_hub.CommitInfo` of the upload.

    Example:
        >>> push_to_hub("i3d_nl5_r50_8x8_kinetics400_pyslowfast", "me/i3d_nl5_r50_8x8_pyslowfast",
        ...             parity={"max_rel_diff": 3e-6, "top1_agreement": 1.0})
        >>> clf = VideoClassifier.from_preset("i3d_nl5_r50_8x8_kinetics400_pyslowfast",
        ...                                   weights="hf://me/i3d_nl5_r50_8x8_pyslowfast")
    """
    if parity is not None and card is not None:
        raise ValueError(
            "`parity` goes into the generated model card; with your own `card`, write it there "
            f"(nonlocal_zoo.model_cards.model_card(preset, parity=...)). Received: parity={parity!r} and a card"
        )
    if isinstance(model_or_preset, str):
        preset = model_or_preset
        model = create_model(preset, weights=weights)
    else:
        model = model_or_preset
        preset = preset_of_model(model, preset)
    if card is None:
        card = _default_card(preset, model, hub.normalize_repo_id(repo_id), parity)
    return hub.push_to_hub(model, repo_id, card=card, token=token, private=private, commit_message=commit_message)


def _default_card(preset, model, repo_id, parity):
    """The card `push_to_hub` generates: the registry's full card when the model has its preset's classes (or no
    head), else a short card with the model's name (and the preset's licence, which its weights inherit)."""
    classifier = getattr(model, "preprocessor", None) is not None  # a VideoClassifier loads from hf:// alone
    units = pred_units(model)
    if preset is not None and units in (None, num_classes(preset)):
        return render_card(preset, repo_id=repo_id, parity=parity, plain_keras=not classifier)
    labels = list(getattr(model, "labels", None) or []) or None
    licence = get_preset(preset)["licence"] if preset is not None else None
    return render_card(model_name=model.name, repo_id=repo_id, parity=parity, labels=labels, licence=licence,
                       plain_keras=not classifier)

"""`push_to_hub`: publish a model on the Hugging Face Hub so that `VideoClassifier.from_preset("hf://org/repo")`
(and `create_model(preset, weights="hf://org/repo")`) load it back with its preprocessing and labels.

A name goes through the one resolver (`nonlocal_zoo.tasks.resolve`): a preset (with its published weights,
converted here), `"demo"`, a preset directory such as a fine-tuning run, or a `.keras` file. The repository holds
Keras's unzipped layout of the `VideoClassifier` (`config.json` with the preprocessor and labels,
`model.weights.h5`) and a model card from `nonlocal_zoo.model_cards`.

Example:
    >>> push_to_hub("i3d_nl5_r50_8x8_kinetics400_pyslowfast", "me/i3d_nl5_r50_8x8_pyslowfast")
    >>> clf = VideoClassifier.from_preset("hf://me/i3d_nl5_r50_8x8_pyslowfast")
"""
import os

from nonlocal_zoo.model_cards import model_card, render_card
from nonlocal_zoo.models.conversion import push_to_hub as upload_model
from nonlocal_zoo.presets import PRESETS, get_preset
from nonlocal_zoo.pretrained.hub import normalize_repo_id
from nonlocal_zoo.tasks import resolve


def _card(model, preset, repo_id, parity):
    """The registry's full card for an unmodified zoo preset, else a card naming the model's own classes."""
    labels = list(getattr(model, "labels", []) or [])
    if preset in PRESETS and not get_preset(preset)["metadata"]["internal"]:
        from nonlocal_zoo.tasks import preset_labels

        if not labels or labels == preset_labels(get_preset(preset)):
            return model_card(preset, parity=parity, repo_id=repo_id)
    licence = get_preset(preset)["licence"] if preset in PRESETS else None
    return render_card(model_name=model.name, repo_id=repo_id, labels=labels or None, licence=licence)


def push_to_hub(model_or_name, repo_id, *, weights="auto", card=None, parity=None, preset=None, token=None,
                private=False, commit_message="Upload model with nonlocal_zoo"):
    """Uploads a model (a `VideoClassifier`, a Keras model, or a name the resolver knows) with its model card.

    Args:
        model_or_name: a `VideoClassifier` or `keras.Model`, or a name: a preset, `"demo"`, a preset directory
            (e.g. a fine-tuning run) or a `.keras` file.
        repo_id: `"org/repo"` or `"hf://org/repo"`.
        weights: with a name: `"auto"` (published / saved weights; an architecture-only preset is refused),
            `"kinetics400"`, a weights file, or None (random, for tests).
        card: model card markdown; None generates one (`nonlocal_zoo.model_cards`): the preset's full card with
            `parity` for an unmodified zoo preset, else a card with the model's classes and inherited licence.
        parity: measured parity for the card (see `nonlocal_zoo.model_cards.parity_summary`).
        preset: the preset of a plain Keras model (a VideoClassifier knows its own).
        token, private, commit_message: as in `nonlocal_zoo.pretrained.hub.upload_folder_to_hub`.

    Returns:
        The `huggingface_hub.CommitInfo` of the upload.

    Example:
        >>> push_to_hub("runs/mine", "me/my-video-classifier")
    """
    if isinstance(model_or_name, (str, os.PathLike)):
        model = resolve(model_or_name, weights=weights, require_weights=weights == "auto")
    else:
        model = model_or_name
    preset = preset or getattr(model, "preset", None)
    if card is None:
        card = _card(model, preset, normalize_repo_id(repo_id), parity)
    return upload_model(model, repo_id, card=card, token=token, private=private, commit_message=commit_message,
                        preset=preset)

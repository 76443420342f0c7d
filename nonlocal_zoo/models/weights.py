"""Weights for the models of `nonlocal_zoo.models`: `load_weights`, what `create_model(weights=...)` calls. One
model is built, by the caller; the weights go straight into it. (`models.conversion` writes converted files and
uploads to the Hub.)

- `"kinetics400"`: when the preset's converted cache (`pretrained.loading`) is valid, it is read into the model.
  Otherwise the upstream checkpoint is downloaded and verified, converted strictly straight into the model
  (`convert.assign_checkpoint`), and only then the cache is written from the same tensors, atomically and with a
  provenance record. No second model is built and nothing round-trips through disk.
- a local path: `.pkl` (Caffe2), `.pth`/`.pyth` (PySlowFast, pytorchvideo, mmaction2, gluon-cv; needs torch) are
  converted on the fly. Their format is detected from the file and must be the flavour the preset declares
  (`convert.check_flavour`; an mmaction2 file's non-local mode, from its `meta`, must be the model's): a file of
  another framework or flavour is refused unless `format=` names its format explicitly. `.weights.h5`, `.keras`
  files and Keras model folders are loaded strictly; our canonical `.h5` files (the converted cache) too.
- `"hf://org/repo[@revision][/file]"`: resolved through `pretrained.hub.resolve_hf`, then loaded as a local path.

`include_top=False`, or a `classes` count that differs from the checkpoint's, loads everything but the `pred`
layer, which keeps its fresh initialisation.

The preset of a model is the `preset=` argument, else the model's `preset` attribute (`VideoClassifier` has one);
it is never guessed from `model.name`.
"""
import logging
import os
from pathlib import Path

from nonlocal_zoo.presets import PRESETS, get_preset
from nonlocal_zoo.pretrained import hub, loading
from nonlocal_zoo.pretrained.convert import (
    CANONICAL_FORMAT,
    HEAD_LAYER,
    assign_checkpoint,
    h5_weight_count,
    is_canonical_h5,
    load_keras_model,
    load_keras_weights_strict,
    read_checkpoint,
    transfer_weights,
)

logger = logging.getLogger(__name__)

PRETRAINED_TAG = loading.PRETRAINED_TAG
KINETICS400_CLASSES = loading.KINETICS400_CLASSES


def preset_of_model(model, preset=None):
    """The preset a model was built from: `preset` when given, else the model's `preset` attribute, else None.

    Raises:
        ValueError: `preset` is given but is not a preset name.
    """
    if preset is None:
        preset = getattr(model, "preset", None)
    if preset is not None:
        get_preset(preset)  # ValueError naming the unknown preset
    return preset


def declared_format(preset):
    """The checkpoint format a preset's published weights come in (`"caffe2_pkl"`, ...), or None."""
    if preset is None or preset not in PRESETS:
        return None
    return (get_preset(preset)["weights"] or {}).get("format")


def pred_units(model):
    """Units of the model's `pred` layer, or None when it has none."""
    try:
        return model.get_layer(HEAD_LAYER).units
    except (ValueError, AttributeError):
        return None


# ----------------------------------------------------------------------------------------------------------------
# "kinetics400": the published checkpoint, straight into the model, then the cache
# ----------------------------------------------------------------------------------------------------------------
def _load_pretrained(model, preset, *, include_top, classes, progress):
    w = loading.published_weights(preset)
    with loading.conversion_lock(preset):
        cached = loading.valid_converted(preset)
        if cached is not None:
            assign_checkpoint(model, cached, format=CANONICAL_FORMAT, include_top=include_top, classes=classes,
                              source=f"Converted weights '{cached}' of preset {preset!r}")
            return cached
        source = loading.download_preset(preset, progress=progress)
        logger.info("Converting %s (%s) for preset %s.", source, w["format"], preset)
        fmt, state = read_checkpoint(source, format=w["format"])
        assign_checkpoint(model, state, format=fmt.name, include_top=include_top, classes=classes,
                          source=f"Checkpoint '{source}' ({fmt.name}) of preset {preset!r}")
        return loading.write_converted(preset, state, fmt=fmt, source_path=source)


# ----------------------------------------------------------------------------------------------------------------
# Local files
# ----------------------------------------------------------------------------------------------------------------
def _load_keras_weights_file(model, path, *, include_top, classes):
    """Strictly loads a Keras `.weights.h5` saved from a whole model (backbone + `pred`) into `model`.

    When the head is not to be loaded (or `model` has none), the file is read into a full-model *view*: a
    `keras.Model` over `model`'s own backbone layers with a throwaway `pred`, so that every array of the file still
    pairs up. The view shares `model`'s variables; no second backbone is built.
    """
    import keras

    from nonlocal_zoo.models.backbone import get_stage_outputs
    from nonlocal_zoo.models.classifier import add_classifier_head

    record = loading.read_provenance(path) or {}
    source_classes = record.get("classes") or KINETICS400_CLASSES
    units = pred_units(model)
    load_head = include_top and units == source_classes and classes in (None, units)
    if (load_head or units is None) and h5_weight_count(path) == len(model.weights):
        load_keras_weights_strict(model, path)  # same structure (a whole model, or a headless file and model)
        return
    stages = get_stage_outputs(model)
    last = stages[max(stages, key=lambda name: int(name[3:]))]
    view = add_classifier_head(keras.Model(model.inputs, last), classes=source_classes, name=f"{model.name}_view")
    load_keras_weights_strict(view, path)


def _load_keras_model_file(model, path, *, include_top, classes):
    source = load_keras_model(path)
    units = pred_units(model)
    load_head = include_top and units is not None and units == pred_units(source) and classes in (None, units)
    transfer_weights(source, model, include_top=load_head, what=f"Keras model '{path}'")


def _load_folder(model, folder, *, include_top, classes):
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


def _load_path(model, path, *, include_top, classes, format, expected_format):
    path = Path(path)
    if path.is_dir():
        return _load_folder(model, path, include_top=include_top, classes=classes)
    if not path.is_file():
        raise FileNotFoundError(f"No such weights file: {path}")
    if path.suffix == ".h5" and format is None and is_canonical_h5(path):
        return assign_checkpoint(model, path, format=CANONICAL_FORMAT, include_top=include_top, classes=classes)
    if path.name.endswith(".weights.h5"):
        return _load_keras_weights_file(model, path, include_top=include_top, classes=classes)
    if path.suffix == ".keras":
        return _load_keras_model_file(model, path, include_top=include_top, classes=classes)
    return assign_checkpoint(model, path, format=format, include_top=include_top, classes=classes,
                             expected_format=expected_format)


def load_weights(model, weights, *, preset=None, include_top=True, classes=None, format=None, progress=True):
    """Loads `weights` into a model built by `nonlocal_zoo.models` (what `create_model(weights=...)` calls).

    Args:
        model: the Keras model (layers named like the checkpoint blobs: `conv1`, `res2_0_branch2a`, ...,
            `pred`), e.g. from `create_model` or a `VideoClassifier`.
        weights: None (nothing to do); `"kinetics400"` (the preset's published checkpoint: downloaded, verified,
            converted straight into `model` on the first load and cached); a local path to a `.pkl`, `.pth`,
            `.pyth`, `.weights.h5`, `.h5` (canonical) or `.keras` file or a Keras model folder; or
            `"hf://org/repo[@revision][/file]"` on the Hugging Face Hub.
        preset: the preset the model was built from. None: the model's `preset` attribute, if any. Needed for
            `"kinetics400"`; for an upstream file it is the flavour the file must have.
        include_top: load the classifier `pred`. With False the head is not loaded (it stays fresh, if present).
        classes: the model's classes; a count that differs from the checkpoint's leaves a fresh head.
        format: the checkpoint format of a local upstream file (`convert.list_formats()`). None detects it and
            refuses a file of another flavour than the preset's; naming it loads the file as that format anyway.
        progress: show download progress.

    Returns:
        None.

    Raises:
        CheckpointMismatchError: the weights do not fit the model (lists missing, unexpected, mis-shaped names).
        CheckpointFlavourError: an upstream file of another framework or flavour than the preset (names both).
        UnsafePickleError: a checkpoint was refused by the safe readers (nothing was executed).
        KerasFileError: a `.keras` file that cannot be loaded (damaged, or a config asking for other classes).
        ChecksumError, DownloadError, OfflineError: download problems (see `download.fetch`).
        ValueError: bad arguments, quoting the value received.

    Example:
        >>> model = create_model("i3d_nl5_r50_32x2_kinetics400")
        >>> load_weights(model, "kinetics400", preset="i3d_nl5_r50_32x2_kinetics400")
        >>> load_weights(model, "I3D_NLN_8x8_R50.pkl", preset="i3d_nl5_r50_32x2_kinetics400")  # refused: PySlowFast
    """
    if weights is None:
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            "`weights` must be None, 'kinetics400', a path or an 'hf://' handle. "
            f"Received: weights={weights!r}"
        )
    weights = os.fspath(weights)
    preset = preset_of_model(model, preset)
    if weights == PRETRAINED_TAG:
        if preset is None:
            raise ValueError(
                f"weights='{PRETRAINED_TAG}' needs the preset the model was built from: pass preset=NAME. "
                f"Received: preset=None, model.name={model.name!r}"
            )
        if format is not None:
            raise ValueError(
                f"weights='{PRETRAINED_TAG}' uses the format the preset declares; `format` is for local files. "
                f"Received: format={format!r}"
            )
        _load_pretrained(model, preset, include_top=include_top, classes=classes, progress=progress)
        return
    if weights.startswith("hf://"):
        weights = hub.resolve_hf(weights)
    _load_path(model, weights, include_top=include_top, classes=classes, format=format,
               expected_format=declared_format(preset))

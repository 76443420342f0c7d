"""Strict converters from upstream checkpoints (Caffe2 `.pkl`, PyTorch state dicts) into nonlocal_zoo models.

Every format is one registered `CheckpointFormat`: a reader (file -> `{name: np.ndarray}`) and a name-mapping
function (upstream names -> *canonical* names). The canonical names are the official Caffe2 blob names
(`conv1_w`, `res_conv1_bn_s`, `res3_1_branch2a_w`, `nonlocal_conv3_1_theta_b`, `pred_w`, ...; see
`research/architecture.md` §3.1), and the canonical array layouts are the Caffe2 / PyTorch ones (conv weights
`[out, in, kT, kH, kW]`, dense weights `[out, in]`). Our Keras layers carry the same names as the blob prefixes,
so one function, `assign_checkpoint`, places canonical tensors into any model built by `nonlocal_zoo.models`.

Strictness: every tensor of the file is consumed (only optimizer/solver state and bookkeeping buffers such as
`*_momentum`, `lr`, `model_iter` and `num_batches_tracked` may be dropped, as each format declares); every model
variable is assigned; every shape is checked. Anything else raises one `CheckpointMismatchError` that lists
what is missing, unexpected and mis-shaped.

Adding a format (e.g. gluon-cv's, in its own module `nonlocal_zoo/pretrained/formats/<name>.py`, which is
imported automatically):

    from nonlocal_zoo.pretrained.convert import CheckpointFormat, register_format
    from nonlocal_zoo.pretrained.pickle_io import load_torch_state_dict

    def map_names(keys):
        # {upstream key: canonical name, or None for a tensor that is safe to drop}; keys left out are "unexpected"
        ...

    register_format(CheckpointFormat(name="gluoncv_pth", reader=load_torch_state_dict, map_names=map_names,
                                     detect=lambda keys: any(k.startswith("...") for k in keys),
                                     suffixes=(".pth",), description="gluon-cv PyTorch I3D(-NL) state dict"))
"""
import dataclasses
import importlib
import os
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from nonlocal_zoo.pretrained.pickle_io import CheckpointState

# Bump when a change to the converters changes the bytes they produce: cached conversions are then redone.
# "2": the cache holds canonical tensors (`CANONICAL_FORMAT`), not a Keras weights file of one model layout.
CONVERTER_VERSION = "2"

# Our own format: canonical names, canonical layouts, in HDF5 (the converted cache; see `write_canonical_h5`).
CANONICAL_FORMAT = "nonlocal_zoo_h5"
_CANONICAL_MARK = "nonlocal_zoo_canonical"

# The architecture variant ("flavour") that a preset's declared checkpoint format stands for. Checkpoints of two
# flavours can have the same tensor shapes and still compute different networks (stems, pool1 padding, NL
# subsampling and scale), so a file of another flavour is refused unless `format=` is given explicitly.
DECLARED_FLAVOURS = {
    "caffe2_pkl": "official Caffe2",
    "pyslowfast_pkl": "PySlowFast",
    "pyslowfast_pyth": "PySlowFast",
    "pytorchvideo_pyth": "PySlowFast",  # pytorchvideo's create_resnet is PySlowFast's network (padded pool1)
    "mmaction2_pth": "mmaction2",
    "gluoncv_pth": "gluon-cv",
}

HEAD_LAYER = "pred"
_TORCH_SUFFIXES = (".pth", ".pyth", ".pt", ".bin", ".ckpt")
_MAX_LISTED = 25


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model: names missing, unexpected or with the wrong shape.

    Attributes:
        missing: canonical names (with the model variable) that the model needs and the checkpoint lacks.
        unexpected: checkpoint names that the model has no place for.
        mismatched: `(checkpoint name, checkpoint shape, expected shape, model variable)` tuples.
    """

    def __init__(self, message, *, missing=(), unexpected=(), mismatched=()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


class UnknownFormatError(ValueError):
    """No registered format can read the file, or the requested format is not registered."""


class CheckpointFlavourError(ValueError):
    """The checkpoint comes from another framework or flavour than the model (or preset) it is loaded into.

    Raised when the format detected from the file differs from the preset's declared one, or when a checkpoint's
    own metadata names another non-local mode than the model's blocks. `format=` given explicitly skips the check.

    Attributes:
        detected: what the file is (format name, or non-local mode).
        expected: what the model or preset needs.
    """

    def __init__(self, message, *, detected=None, expected=None):
        super().__init__(message)
        self.detected = detected
        self.expected = expected




# ----------------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CheckpointFormat:
    """One upstream checkpoint format.

    Args:
        name: registry name, as used in presets (`"caffe2_pkl"`, `"mmaction2_pth"`, ...).
        reader: `reader(path) -> {name: np.ndarray}` (a safe reader from `pickle_io`).
        map_names: `map_names(keys) -> {key: canonical name or None}`. `None` marks a tensor that may be dropped
            (optimizer or bookkeeping state). Keys that are left out of the result are reported as unexpected.
        detect: `detect(keys) -> bool`, True when the keys look like this format (used when no format is given;
            the reader is chosen by file type first: `.pkl` -> Caffe2 pickle, `.pth`/`.pyth`/zip -> torch).
        suffixes: file suffixes of the format (lower case, with the dot), for documentation.
        description: one line for messages.
        transform: optional `transform(canonical_name, array) -> array`, for a format whose layouts differ from
            the Caffe2/PyTorch ones (conv `[out, in, kT, kH, kW]`, dense `[out, in]`).
        flavours: the architecture flavours (`DECLARED_FLAVOURS` values) its files can come from; empty: any.
            A file is refused for a preset whose declared flavour is not among them.
        describe: optional `describe(state) -> dict` of what the file says about the network it was trained
            with (from names or `state.metadata`); the key `"nonlocal_mode"` is checked against the model.
    """

    name: str
    reader: Callable
    map_names: Callable
    detect: Callable | None = None
    suffixes: tuple = ()
    description: str = ""
    transform: Callable | None = None
    flavours: tuple = ()
    describe: Callable | None = None


_FORMATS = {}
_ALIASES = {}
_PLUGINS_LOADED = False


def register_format(fmt, *, aliases=(), replace=False):
    """Adds a `CheckpointFormat` to the registry (and optional alias names that point to it).

    Raises:
        ValueError: the name is taken and `replace` is False.
    """
    if not isinstance(fmt, CheckpointFormat):
        raise ValueError(f"`fmt` must be a CheckpointFormat. Received: fmt={fmt!r}")
    for name in (fmt.name, *aliases):
        if not replace and (name in _FORMATS or name in _ALIASES) and _FORMATS.get(name) is not fmt:
            raise ValueError(f"A checkpoint format named {name!r} is already registered. Received: name={name!r}")
    _FORMATS[fmt.name] = fmt
    for alias in aliases:
        _ALIASES[alias] = fmt.name
    return fmt


def _load_plugins():
    global _PLUGINS_LOADED
    if not _PLUGINS_LOADED:
        importlib.import_module("nonlocal_zoo.pretrained.formats")
        _PLUGINS_LOADED = True


def list_formats():
    """Names of the registered checkpoint formats (aliases included), sorted."""
    _load_plugins()
    return sorted([*_FORMATS, *_ALIASES])


def get_format(name):
    """The registered `CheckpointFormat` called `name` (or an alias of it).

    Raises:
        UnknownFormatError: no such format (lists the registered ones).
    """
    _load_plugins()
    name = _ALIASES.get(name, name)
    if name not in _FORMATS:
        raise UnknownFormatError(
            f"No converter is registered for checkpoint format {name!r}. Registered: {list_formats()}. "
            f"Received: format={name!r}"
        )
    return _FORMATS[name]


# ----------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------
def _reader_kind(path):
    """'torch' for PyTorch files (by suffix, or a zip archive), 'h5' for our canonical files, else 'pickle'."""
    suffix = path.suffix.lower()
    if suffix in _TORCH_SUFFIXES:
        return "torch"
    if suffix == ".pkl":
        return "pickle"
    if suffix == ".h5" and is_canonical_h5(path):
        return "h5"
    return "torch" if zipfile.is_zipfile(path) else "pickle"


def read_checkpoint(path, *, format=None):
    """Reads a checkpoint file safely and tells its format.

    Args:
        path: the file.
        format: a registered format name; None detects it from the suffix and the tensor names.

    Returns:
        `(CheckpointFormat, {name: np.ndarray})`.

    Raises:
        FileNotFoundError, UnsafePickleError (refused, nothing executed), UnknownFormatError.

    Example:
        >>> fmt, state = read_checkpoint("I3D_8x8_R50.pyth")
        >>> fmt.name
        'pytorchvideo_pyth'
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such checkpoint file: {path}")
    if format is not None:
        fmt = get_format(format)
        return fmt, fmt.reader(path)
    _load_plugins()
    from nonlocal_zoo.pretrained.pickle_io import load_caffe2_pickle, load_torch_state_dict

    kind = _reader_kind(path)
    if kind == "h5":
        fmt = get_format(CANONICAL_FORMAT)
        return fmt, fmt.reader(path)
    reader = load_torch_state_dict if kind == "torch" else load_caffe2_pickle
    state = reader(path)
    keys = list(state)
    candidates = [f for f in _FORMATS.values() if f.reader is reader and f.detect is not None and f.detect(keys)]
    if not candidates:
        raise UnknownFormatError(
            f"Could not tell the format of '{path}': its tensor names match none of {list_formats()}. "
            f"First names: {keys[:8]}. Pass format=... explicitly."
        )
    if len(candidates) > 1:
        raise UnknownFormatError(
            f"The tensor names of '{path}' fit several formats: {sorted(f.name for f in candidates)}. "
            f"Pass format=... explicitly. First names: {keys[:8]}"
        )
    return candidates[0], state


def check_flavour(fmt, expected_format, *, what):
    """Refuses a detected format whose flavour differs from what a preset declares.

    Args:
        fmt: the detected `CheckpointFormat`.
        expected_format: the preset's declared format name (`preset["weights"]["format"]`), or None (no check).
        what: how to name the checkpoint in the message.

    Raises:
        CheckpointFlavourError: naming the detected format and flavour and the preset's.

    Example:
        >>> check_flavour(get_format("gluoncv_pth"), "pyslowfast_pkl", what="'x.pth'")
        Traceback (most recent call last):
        CheckpointFlavourError: 'x.pth' is a gluoncv_pth checkpoint (gluon-cv) but the model needs pyslowfast_pkl ...
    """
    if expected_format is None or not fmt.flavours:
        return
    declared = DECLARED_FLAVOURS.get(expected_format)
    if declared is None:
        declared_fmt = get_format(expected_format)
        if declared_fmt.name == fmt.name or set(declared_fmt.flavours) & set(fmt.flavours):
            return
        declared = "/".join(declared_fmt.flavours) or declared_fmt.name
    elif declared in fmt.flavours:
        return
    raise CheckpointFlavourError(
        f"{what} is a {fmt.name} checkpoint ({' or '.join(fmt.flavours)}: {fmt.description}), but the model needs "
        f"{expected_format} ({declared}). The shapes may fit, the networks differ (stem, pool1 padding, non-local "
        f"subsampling/scale), so it is refused. Load it into a preset of its own flavour, or pass "
        f"format={fmt.name!r} to load it anyway.",
        detected=fmt.name,
        expected=expected_format,
    )


def _model_nonlocal_modes(model):
    from nonlocal_zoo.layers.nonlocal_block import NonLocalBlock

    return {layer.mode for layer in _iter_layers(model) if isinstance(layer, NonLocalBlock)}


def check_nonlocal_mode(model, fmt, state, *, what):
    """Refuses a checkpoint whose own metadata names another non-local mode than the model's blocks.

    (mmaction2 writes its training config, with `non_local_cfg=dict(mode=...)`, into the checkpoint's `meta`; the
    embedded-Gaussian, dot-product and Gaussian files have the same tensor shapes.)

    Raises:
        CheckpointFlavourError: naming both modes.
    """
    if fmt.describe is None:
        return
    mode = (fmt.describe(state) or {}).get("nonlocal_mode")
    modes = _model_nonlocal_modes(model)
    if mode is None or not modes or modes == {mode}:
        return
    raise CheckpointFlavourError(
        f"{what} was trained with non-local mode {mode!r} (from its metadata), but the model's non-local blocks "
        f"use {sorted(modes)}. Load it into a preset with mode {mode!r}, or pass format={fmt.name!r} to load it "
        "anyway.",
        detected=mode,
        expected=sorted(modes),
    )


def to_canonical(state, fmt):
    """Renames a state dict to canonical names with the format's `map_names`.

    Returns:
        `(canonical, unexpected)`: `canonical` maps canonical name -> `(source name, array)`; `unexpected` lists
        source names that the format does not know.

    Raises:
        CheckpointMismatchError: two source tensors map to the same canonical name.
    """
    mapping = fmt.map_names(list(state))
    canonical, unexpected, duplicates = {}, [], []
    for key, array in state.items():
        if key not in mapping:
            unexpected.append(key)
            continue
        name = mapping[key]
        if name is None:
            continue
        if name in canonical:
            duplicates.append(f"{canonical[name][0]} and {key} -> {name}")
            continue
        array = np.asarray(array)
        canonical[name] = (key, fmt.transform(name, array) if fmt.transform is not None else array)
    if duplicates:
        raise CheckpointMismatchError(f"Several checkpoint tensors map to the same variable: {duplicates}")
    return canonical, unexpected


# ----------------------------------------------------------------------------------------------------------------
# Model side: the canonical slots of a Keras model
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Slot:
    name: str  # canonical name, e.g. "res2_0_branch2a_w"
    variable: object  # the keras.Variable
    kind: str  # "conv" (Caffe2 [O, I, T, H, W] -> Keras (T, H, W, I, O)), "dense" ([O, I] -> (I, O)), "vector"
    layer: str  # top-level layer name


def _iter_layers(model):
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _iter_layers(layer)
        else:
            yield layer


def _layer_slots(layer, prefix, top):
    """Slots of one layer; returns None for layer types we do not know (if they have weights)."""
    import keras

    from nonlocal_zoo.layers.affine import Affine
    from nonlocal_zoo.layers.nonlocal_block import NonLocalBlock

    if isinstance(layer, keras.layers.Conv3D):
        slots = [_Slot(f"{prefix}_w", layer.kernel, "conv", top)]
        if layer.use_bias:
            slots.append(_Slot(f"{prefix}_b", layer.bias, "vector", top))
        return slots
    if isinstance(layer, keras.layers.Dense):
        slots = [_Slot(f"{prefix}_w", layer.kernel, "dense", top)]
        if layer.use_bias:
            slots.append(_Slot(f"{prefix}_b", layer.bias, "vector", top))
        return slots
    if isinstance(layer, keras.layers.BatchNormalization):
        pairs = (("s", layer.gamma), ("b", layer.beta), ("rm", layer.moving_mean), ("riv", layer.moving_variance))
        return [_Slot(f"{prefix}_{suffix}", var, "vector", top) for suffix, var in pairs if var is not None]
    if isinstance(layer, Affine):
        return [_Slot(f"{prefix}_s", layer.scale, "vector", top), _Slot(f"{prefix}_b", layer.bias, "vector", top)]
    if isinstance(layer, NonLocalBlock):
        slots = []
        for attr in ("theta", "phi", "g", "out", "concat_project", "bn"):
            sub = getattr(layer, attr, None)
            if sub is not None:
                sub_slots = _layer_slots(sub, f"{prefix}_{attr}", top)
                if sub_slots is None:
                    return None
                slots += sub_slots
        return slots
    return [] if not layer.weights else None


def model_slots(model):
    """The canonical name of every variable of a model built by `nonlocal_zoo.models`.

    Returns:
        a list of slots with `.name` (e.g. `"nonlocal_conv3_1_theta_w"`), `.variable`, `.kind` and `.layer`.

    Raises:
        ValueError: the model has layers with weights that no canonical name covers (names them).
    """
    slots, unknown = [], []
    for layer in _iter_layers(model):
        layer_slots = _layer_slots(layer, layer.name, layer.name)
        if layer_slots is None:
            unknown.append(f"{layer.name} ({type(layer).__name__})")
        else:
            slots += layer_slots
    covered = {id(slot.variable) for slot in slots}
    stray = [v.path for v in model.weights if id(v) not in covered]
    if unknown or stray:
        raise ValueError(
            "The model has weights that no checkpoint name maps to, so it is not a nonlocal_zoo model "
            f"(or it was changed). Layers: {unknown[:_MAX_LISTED]}; variables: {stray[:_MAX_LISTED]}. "
            f"Received: model.name={model.name!r}"
        )
    return slots


def _expected_source_shape(slot):
    shape = tuple(slot.variable.shape)
    if slot.kind == "conv":  # Keras (T, H, W, I, O) <- Caffe2 (O, I, T, H, W)
        return (shape[4], shape[3], *shape[:3])
    if slot.kind == "dense":  # Keras (I, O) <- (O, I)
        return (shape[1], shape[0])
    return shape


def _to_keras(slot, array):
    """The array in Keras layout, or None when its shape does not fit the slot."""
    expected = _expected_source_shape(slot)
    if slot.kind == "dense":
        # 1x1(x1) convolutions (Caffe2 NL projections, mmcv ConvModule) are dense layers on channels-last input.
        if array.ndim >= 2 and array.shape[:2] == expected and all(d == 1 for d in array.shape[2:]):
            return array.reshape(expected).T
        return None
    if array.shape != expected:
        return None
    if slot.kind == "conv":
        return np.transpose(array, (2, 3, 4, 1, 0))
    return array


def _listing(title, items):
    if not items:
        return ""
    shown = "\n    ".join(items[:_MAX_LISTED])
    more = f"\n    ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"\n  {title} [{len(items)}]:\n    {shown}{more}"


def mismatch_error(what, *, missing=(), unexpected=(), mismatched=()):
    """Builds the one `CheckpointMismatchError` that lists all three kinds of problems."""
    lines = _listing("missing (the model needs them, the checkpoint lacks them)", list(missing))
    lines += _listing("unexpected (in the checkpoint, no place for them in the model)", list(unexpected))
    lines += _listing(
        "mis-shaped (checkpoint shape vs. the shape the model needs, in the checkpoint's layout)",
        [f"{name}: {tuple(got)} vs. {tuple(want)} ({var})" for name, got, want, var in mismatched],
    )
    return CheckpointMismatchError(
        f"{what} does not match the model.{lines}", missing=missing, unexpected=unexpected, mismatched=mismatched
    )


def assign_checkpoint(model, checkpoint, *, format=None, include_top=True, classes=None, source=None,
                      expected_format=None):
    """Strictly loads an upstream checkpoint into a model built by `nonlocal_zoo.models`.

    Args:
        model: the Keras model (its layers carry the official Caffe2 names).
        checkpoint: a file path, or a `{name: np.ndarray}` state in the given `format`.
        format: registered format name; None detects it (files only).
        include_top: load the classifier `pred`. With False, the checkpoint's `pred` tensors are dropped and the
            model's head (if any) keeps its fresh initialisation.
        classes: the model's number of classes; when it differs from the checkpoint's, the head is skipped as with
            `include_top=False`.
        source: how to name the checkpoint in error messages (defaults to the path).
        expected_format: the format the model's preset declares. When `format` is None (detected), a file of
            another flavour (`check_flavour`), or one whose metadata names another non-local mode than the
            model's (`check_nonlocal_mode`), is refused. An explicit `format` skips both checks.

    Returns:
        the `CheckpointFormat` that was used.

    Raises:
        CheckpointMismatchError: anything missing, unexpected or mis-shaped (nothing is assigned then).
        CheckpointFlavourError: the file is of another framework or flavour than the preset or the model.
        UnsafePickleError: the file was refused by the safe reader (nothing was executed).

    Example:
        >>> model = create_model("i3d_nl5_r50_32x2_kinetics400")
        >>> assign_checkpoint(model, "i3d_nonlocal_32x2_IN_pretrain_400k.pkl")
    """
    if isinstance(checkpoint, Mapping):
        if format is None:
            raise ValueError("Pass `format=` together with an in-memory state dict. Received: format=None")
        fmt, state = get_format(format), checkpoint
        what = source or f"The {fmt.name} state dict"
    else:
        fmt, state = read_checkpoint(checkpoint, format=format)
        what = source or f"Checkpoint '{checkpoint}' ({fmt.name})"
    if format is None:
        check_flavour(fmt, expected_format, what=what)
        check_nonlocal_mode(model, fmt, state, what=what)
    canonical, unexpected = to_canonical(state, fmt)
    pred = canonical.get(f"{HEAD_LAYER}_w")
    skip_head = not include_top or (
        classes is not None and pred is not None and pred[1].ndim >= 1 and pred[1].shape[0] != classes
    )
    slots = model_slots(model)
    if skip_head:
        slots = [s for s in slots if s.layer != HEAD_LAYER]
        for name in [n for n in canonical if n.startswith(f"{HEAD_LAYER}_")]:
            del canonical[name]
    missing, mismatched, values = [], [], []
    for slot in slots:
        if slot.name not in canonical:
            missing.append(f"{slot.name} (model variable {slot.variable.path})")
            continue
        key, array = canonical.pop(slot.name)
        converted = _to_keras(slot, array)
        if converted is None:
            mismatched.append((key, array.shape, _expected_source_shape(slot), slot.variable.path))
        else:
            values.append((slot.variable, converted))
    unexpected += [key for key, _ in canonical.values()]
    if missing or unexpected or mismatched:
        raise mismatch_error(what, missing=missing, unexpected=unexpected, mismatched=mismatched)
    for variable, value in values:
        variable.assign(value.astype(variable.dtype, copy=False))
    return fmt


# ----------------------------------------------------------------------------------------------------------------
# Keras files: strict loading and model-to-model transfer
# ----------------------------------------------------------------------------------------------------------------
def h5_weight_count(path):
    """Number of arrays in a Keras `.weights.h5` file (optimizer state not counted)."""
    import h5py

    names = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return len([n for n in names if not n.startswith("optimizer")])


def _is_float(variable):
    return "float" in str(variable.dtype)


def load_keras_weights_strict(model, path):
    """`model.load_weights(path)` that fails unless every variable was loaded and nothing was left over.

    Keras skips file entries and model layers that do not pair up without a word. Here every variable is first
    set to NaN; afterwards a variable still all-NaN was not in the file, and a file with more arrays than the
    model has variables holds something the model has no place for. On failure the previous values are restored.

    Raises:
        CheckpointMismatchError: the file does not fit the model.
    """
    count = h5_weight_count(path)
    weights = list(model.weights)
    if count != len(weights):
        raise mismatch_error(
            f"Weights file '{path}' ({count} arrays, the model has {len(weights)} variables)",
            unexpected=[f"{count - len(weights)} more arrays than the model has variables"] if count > len(weights)
            else [],
            missing=[f"{len(weights) - count} variables more than the file has arrays"] if count < len(weights)
            else [],
        )
    backup = [np.array(v.numpy()) for v in weights]
    for variable in weights:
        if _is_float(variable):
            variable.assign(np.full(variable.shape, np.nan, dtype=variable.dtype))
    try:
        model.load_weights(str(path))
        missing = [
            v.path for v in weights if _is_float(v) and v.shape and np.all(np.isnan(np.asarray(v.numpy())))
        ]
        if missing:
            raise mismatch_error(f"Weights file '{path}'", missing=missing)
    except Exception as error:
        for variable, value in zip(weights, backup):
            variable.assign(value)
        if isinstance(error, CheckpointMismatchError):
            raise
        raise CheckpointMismatchError(f"Weights file '{path}' does not match the model: {error}") from error


def transfer_weights(source, target, *, include_top=True, what=None):
    """Copies variables from one model to another by variable path (`res2_0_branch2a/kernel`, ...), strictly.

    Args:
        source: the model holding the weights (e.g. a loaded `.keras` model).
        target: the model to fill.
        include_top: with False, the `pred` variables are not copied (the target's head stays fresh, or absent).
        what: how to name the source in error messages.

    Raises:
        CheckpointMismatchError: a target variable has no source, a source variable has no target, or a shape
            differs.
    """
    head = f"{HEAD_LAYER}/"
    sources = {v.path: v for v in source.weights if include_top or not v.path.startswith(head)}
    missing, mismatched, pairs = [], [], []
    for variable in target.weights:
        if not include_top and variable.path.startswith(head):
            continue
        src = sources.pop(variable.path, None)
        if src is None:
            missing.append(variable.path)
        elif tuple(src.shape) != tuple(variable.shape):
            mismatched.append((variable.path, src.shape, variable.shape, variable.path))
        else:
            pairs.append((variable, src))
    if missing or sources or mismatched:
        raise mismatch_error(
            what or f"Model {source.name!r}", missing=missing, unexpected=list(sources), mismatched=mismatched
        )
    for variable, src in pairs:
        variable.assign(src.numpy())


def provenance_path(weights_path):
    """`x.weights.h5` / `x.keras` -> `x.provenance.json`, next to it."""
    path = Path(weights_path)
    name = path.name
    for suffix in (".weights.h5", ".keras", ".h5"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(f"{name}.provenance.json")


def atomic_save(model, out):
    """Saves `model` to `out` (`.weights.h5`: weights only; `.keras`: the whole model) via a temporary file and
    `os.replace`, so a reader never sees a half-written file."""
    out = Path(out)
    if out.name.endswith(".weights.h5"):
        suffix = ".weights.h5"
    elif out.suffix == ".keras":
        suffix = ".keras"
    else:
        raise ValueError(f"The output must end with '.weights.h5' or '.keras'. Received: out={str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name[: -len(suffix)]}.{os.getpid()}.tmp{suffix}")
    try:
        if suffix == ".keras":
            model.save(str(tmp))
        else:
            model.save_weights(str(tmp))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


# ----------------------------------------------------------------------------------------------------------------
# Helpers for format modules
# ----------------------------------------------------------------------------------------------------------------
TORCH_BN = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}
TORCH_PARAM = {"weight": "w", "bias": "b"}
TORCH_BN_BOOKKEEPING = "num_batches_tracked"


def regex_mapper(rules, *, ignore=(), strip_prefixes=("module.",)):
    """A `map_names` from `(regex, function(match) -> canonical name)` rules, tried in order.

    `ignore` regexes mark tensors that may be dropped (mapped to None). Keys matching nothing are left out (and so
    reported as unexpected). A leading `module.` (from `DistributedDataParallel`) is stripped before matching.
    """
    compiled = [(re.compile(pattern), fn) for pattern, fn in rules]
    ignored = [re.compile(pattern) for pattern in ignore]

    def map_names(keys):
        mapping = {}
        for key in keys:
            name = key
            for prefix in strip_prefixes:
                if name.startswith(prefix):
                    name = name[len(prefix):]
            if any(p.search(name) for p in ignored):
                mapping[key] = None
                continue
            for pattern, fn in compiled:
                match = pattern.fullmatch(name)
                if match:
                    mapping[key] = fn(match)
                    break
        return mapping

    return map_names


# ----------------------------------------------------------------------------------------------------------------
# Our canonical files: canonical names and layouts in HDF5 (the converted cache)
# ----------------------------------------------------------------------------------------------------------------
def is_canonical_h5(path):
    """True when `path` is an HDF5 file written by `write_canonical_h5`."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") == _CANONICAL_MARK
    except (OSError, ValueError):
        return False


def write_canonical_h5(path, arrays, *, attrs=None):
    """Writes `{canonical name: array}` (canonical layouts) to an HDF5 file, atomically.

    The file is independent of how a Keras model lays out its variables, so one file fills a full model, a
    headless one, a model with another head or a `VideoClassifier` alike (through `assign_checkpoint`).

    Args:
        path: the output file.
        arrays: `{canonical name: np.ndarray}`, e.g. from `to_canonical`.
        attrs: extra string/number attributes for the file (e.g. the source format).

    Returns:
        `pathlib.Path` of the file.

    Example:
        >>> write_canonical_h5("x.h5", {"pred_w": np.zeros((400, 2048), "float32")})
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = _CANONICAL_MARK
            f.attrs["converter_version"] = CONVERTER_VERSION
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
            group = f.create_group("tensors")
            for name, array in arrays.items():
                group.create_dataset(name, data=np.asarray(array))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_canonical_h5(path):
    """Reads a file written by `write_canonical_h5` into `{canonical name: np.ndarray}`.

    Raises:
        ValueError: not such a file (names it).
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != _CANONICAL_MARK or "tensors" not in f:
                raise ValueError(f"'{path}' is not a nonlocal_zoo canonical weights file.")
            group = f["tensors"]
            return CheckpointState(
                {name: np.asarray(group[name][()]) for name in group},
                metadata={key: f.attrs[key] for key in f.attrs},
            )
    except OSError as error:
        raise ValueError(f"Could not read '{path}' as a nonlocal_zoo canonical weights file: {error}") from error


register_format(
    CheckpointFormat(
        name=CANONICAL_FORMAT,
        reader=read_canonical_h5,
        map_names=lambda keys: {key: key for key in keys},
        suffixes=(".h5",),
        description="nonlocal_zoo canonical weights (HDF5; the converted cache)",
    )
)


# ----------------------------------------------------------------------------------------------------------------
# Whole Keras models from files
# ----------------------------------------------------------------------------------------------------------------
class KerasFileError(ValueError):
    """A `.keras` file (or Keras model folder) could not be loaded: damaged, or its config asks for something
    that is not allowed (a `Lambda` layer, an unknown or non-Keras class). Nothing from it was executed."""


def load_keras_model(path, *, compile=False):
    """`keras.saving.load_model(path, safe_mode=True)` that turns every failure into one `KerasFileError`.

    Keras refuses `Lambda` layers (safe mode) and classes outside Keras and the registered custom objects, but
    says so with a `TypeError`/`ValueError` deep in its deserialisation; this names the file and the reason.

    Args:
        path: a `.keras` file or a Keras model folder.
        compile: also restore the training configuration.

    Returns:
        the `keras.Model`.

    Raises:
        FileNotFoundError: no such file.
        KerasFileError: anything else that stops the load.

    Example:
        >>> model = load_keras_model("runs/x/best.keras")
    """
    import keras

    import nonlocal_zoo.layers  # noqa: F401  (registers the zoo's layers for deserialisation)

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such Keras model file: {path}")
    try:
        return keras.saving.load_model(str(path), compile=compile, safe_mode=True)
    except (TypeError, ValueError, KeyError, AttributeError, OSError, zipfile.BadZipFile, NotImplementedError) as error:
        innermost = error  # Keras wraps the specific cause ("Could not locate class 'x'") in generic errors
        while (innermost.__cause__ or innermost.__context__) is not None:
            innermost = innermost.__cause__ or innermost.__context__
        # Keras's own advice to switch safe mode off is dropped: the file is what is wrong
        sentences = re.split(r"(?<=\.) ", " ".join(str(innermost).split()))
        reason = " ".join(x for x in sentences if "safe_mode" not in x and "unsafe" not in x) or type(error).__name__
        if len(reason) > 400:
            reason = reason[:400] + " ..."
        raise KerasFileError(
            f"Could not load the Keras model '{path}' ({type(innermost).__name__}): {reason} Nothing from it was "
            "executed. Only models made of Keras and nonlocal_zoo layers load; a Lambda layer or an unknown class "
            "in its config is refused."
        ) from None

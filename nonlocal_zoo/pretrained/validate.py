"""Is a downloaded file the checkpoint a preset needs? Parse it with its format's reader and check its tensors.

Most presets have no published hash (the official Caffe2 files, PySlowFast and pytorchvideo), so a hash cannot tell
a good download from an HTML error page, a body cut short, or bytes spliced from two versions of the file. What
can tell them apart is the file itself: it must parse as its declared format (Caffe2 pickle, torch zip or legacy
file), and after the format's name mapping it must hold exactly the canonical tensors that the preset's
architecture has, with their shapes. `download.fetch(..., validate=preset_validator(name))` runs this check before
a download becomes final and before an unverified cached file is served.

The expected tensors are computed from the preset's `arch` dict alone (`expected_tensors`): no Keras model is
built and `nonlocal_zoo.models` is not imported (pretrained/ sits below models/). tests/test_validate.py checks
the function against `convert.model_slots` of built models.

Example:
    >>> from nonlocal_zoo.pretrained.validate import expected_tensors
    >>> from nonlocal_zoo.presets import get_preset
    >>> shapes = expected_tensors(get_preset("i3d_nl5_r50_8x8_kinetics400")["arch"])
    >>> shapes["conv1_w"], shapes["nonlocal_conv3_1_theta_w"], shapes["pred_w"]
    ((64, 3, 5, 7, 7), (256, 512), (400, 2048))
"""
import hashlib
import importlib.util
import json

from nonlocal_zoo.presets import get_preset, make_arch, num_classes
from nonlocal_zoo.pretrained.convert import (
    CONVERTER_VERSION,
    get_format,
    mismatch_error,
    read_checkpoint,
    to_canonical,
)

KINETICS400_CLASSES = 400
# Mode spellings of `NonLocalBlock` that need no lookup (the block's MODE_ALIASES is consulted for any other, lazily:
# importing nonlocal_zoo.layers imports Keras, which `nonlocal-zoo download` does not need).
_CANONICAL_MODES = ("embedded", "dot", "gaussian", "concatenate")
_TORCH_SUFFIXES = (".pth", ".pyth", ".pt")
_BN_KEYS = {"batch": ("s", "b", "rm", "riv"), "affine": ("s", "b"), None: ()}


def _mode(mode):
    if mode in _CANONICAL_MODES:
        return mode
    from nonlocal_zoo.layers.nonlocal_block import MODE_ALIASES

    if mode not in MODE_ALIASES:
        raise ValueError(f"`nonlocal_mode` must be one of {sorted(MODE_ALIASES)}. Received: nonlocal_mode={mode!r}")
    return MODE_ALIASES[mode]


def _norm(shapes, prefix, kind, channels):
    if kind not in _BN_KEYS:
        raise ValueError(f"Unknown normalization {kind!r} (expected one of {list(_BN_KEYS)}). Received: {kind!r}")
    for key in _BN_KEYS[kind]:
        shapes[f"{prefix}_{key}"] = (channels,)


def expected_tensors(arch, *, classes=KINETICS400_CLASSES, include_top=True):
    """The canonical tensor names and shapes of a network, from its architecture arguments alone.

    Mirrors `nonlocal_zoo.models.build_backbone` (+ the `pred` head): names are the official Caffe2 blob names,
    shapes are in the canonical layouts (`[out, in, kT, kH, kW]` for convolutions, `[out, in]` for the non-local
    projections and `pred`, which checkpoints may store as `[out, in, 1, 1, 1]`).

    Args:
        arch: `build_backbone` keyword arguments (a preset's `"arch"`); missing keys take the builder's defaults.
        classes: rows of `pred_w` (400 for the Kinetics-400 checkpoints).
        include_top: include `pred_w` and `pred_b`.

    Returns:
        dict mapping canonical name to shape tuple, in network order.

    Example:
        >>> expected_tensors(get_preset("c2d_r50_8x8_kinetics400")["arch"])["res2_0_branch2a_w"]
        (64, 64, 1, 1, 1)
    """
    a = {**make_arch(), **dict(arch)}
    shapes = {}
    norm = a["normalization"]
    stem = a["stem_width"]
    shapes["conv1_w"] = (stem, 3, *a["conv1_kernel"])
    _norm(shapes, "res_conv1_bn", norm, stem)
    mode = _mode(a["nonlocal_mode"])
    out_bias = a["nonlocal_use_bias"] if a["nonlocal_out_use_bias"] is None else a["nonlocal_out_use_bias"]
    channels = stem
    for s, depth in enumerate(a["stage_depths"]):
        inner = a["stage_widths"][s]
        out = inner * a["bottleneck_expansion"]
        for i in range(depth):
            prefix = f"res{s + 2}_{i}"
            stride = a["stage_strides"][s] if i == 0 else 1
            if channels != out or stride != 1:
                shapes[f"{prefix}_branch1_w"] = (out, channels, 1, 1, 1)
                _norm(shapes, f"{prefix}_branch1_bn", norm, out)
            shapes[f"{prefix}_branch2a_w"] = (inner, channels, a["temporal_kernels"][s][i], 1, 1)
            _norm(shapes, f"{prefix}_branch2a_bn", norm, inner)
            shapes[f"{prefix}_branch2b_w"] = (inner, inner, 1, 3, 3)
            _norm(shapes, f"{prefix}_branch2b_bn", norm, inner)
            shapes[f"{prefix}_branch2c_w"] = (out, inner, 1, 1, 1)
            _norm(shapes, f"{prefix}_branch2c_bn", norm, out)
            channels = out
            if i in a["nonlocal_blocks"][s]:
                nl, dim = f"nonlocal_conv{s + 2}_{i}", out // 2
                for part in ("g",) if mode == "gaussian" else ("theta", "phi", "g"):
                    shapes[f"{nl}_{part}_w"] = (dim, out)
                    if a["nonlocal_use_bias"]:
                        shapes[f"{nl}_{part}_b"] = (dim,)
                shapes[f"{nl}_out_w"] = (out, dim)
                if out_bias:
                    shapes[f"{nl}_out_b"] = (out,)
                if mode == "concatenate":
                    shapes[f"{nl}_concat_project_w"] = (1, 2 * dim)
                _norm(shapes, f"{nl}_bn", a["nonlocal_normalization"], out)
    if include_top:
        shapes["pred_w"] = (classes, channels)
        shapes["pred_b"] = (classes,)
    return shapes


def _fits(shape, expected):
    """Exact match, or a `[out, in]` tensor stored as a 1x1(x1) convolution `[out, in, 1, 1(, 1)]`."""
    shape = tuple(shape)
    if shape == expected:
        return True
    return len(expected) == 2 and shape[:2] == expected and all(d == 1 for d in shape[2:])


def check_checkpoint(path, *, format, arch, classes=KINETICS400_CLASSES, what=None):
    """Parses a checkpoint with its format's reader and checks that it holds exactly the tensors `arch` needs.

    Args:
        path: the file.
        format: its registered format name (a preset's `weights["format"]`).
        arch: the architecture it must fit (a preset's `arch`).
        classes: rows of `pred_w`.
        what: how to name the file in the error message (default: the path).

    Raises:
        CheckpointMismatchError: tensors missing, unexpected or mis-shaped (lists them).
        ValueError, UnsafePickleError, RuntimeError, ...: whatever the reader raises for a file it cannot read.

    Example:
        >>> check_checkpoint("I3D_NLN_8x8_R50.pkl", format="pyslowfast_pkl",
        ...                  arch=get_preset("i3d_nl5_r50_8x8_kinetics400_pyslowfast")["arch"])
    """
    fmt, state = read_checkpoint(path, format=format)
    canonical, unexpected = to_canonical(state, fmt)
    expected = expected_tensors(arch, classes=classes)
    missing = [name for name in expected if name not in canonical]
    unexpected = list(unexpected) + [source for name, (source, _) in canonical.items() if name not in expected]
    mismatched = [
        (source, tuple(array.shape), expected[name], name)
        for name, (source, array) in canonical.items()
        if name in expected and not _fits(array.shape, expected[name])
    ]
    if missing or unexpected or mismatched:
        raise mismatch_error(
            what or f"Checkpoint '{path}' ({fmt.name})", missing=missing, unexpected=unexpected, mismatched=mismatched
        )


class PresetValidator:
    """`validate(path)` for `download.fetch`: the file must be the checkpoint of preset `name`.

    Attributes:
        name: the preset.
        format: its checkpoint format.
        description: what the file must be, for messages (`"the pyslowfast_pkl checkpoint of preset '...'"`).
        cache_key: identifies what was checked (preset, format, a digest of the expected tensors and the converter
            version). `fetch` records it next to a verified file, so an unchanged file (same sha256) is not parsed
            again until the expectation changes.
    """

    def __init__(self, name, *, classes=None):
        preset = get_preset(name)
        if preset["weights"] is None:
            raise ValueError(f"Preset {name!r} has no published weights to validate. Received: name={name!r}")
        self.name = name
        self.format = preset["weights"]["format"]
        self.arch = preset["arch"]
        self.classes = num_classes(preset) if classes is None else classes
        fmt = get_format(self.format)
        # Torch files can only be parsed with torch; say so before downloading hundreds of MB that cannot be checked.
        torch_file = any(suffix in _TORCH_SUFFIXES for suffix in fmt.suffixes)
        if torch_file and importlib.util.find_spec("torch") is None:
            raise ImportError(
                f"Preset {name!r} is published as a PyTorch file ({self.format}); checking and converting it needs "
                "torch. Install it with: pip install nonlocal_zoo[torch]"
            )
        expected = expected_tensors(self.arch, classes=self.classes)
        digest = hashlib.sha256(json.dumps(sorted(expected.items())).encode()).hexdigest()[:16]
        # The converter version stands for the readers too: a reader that got stricter re-checks cached files.
        self.cache_key = f"{name}:{self.format}:{digest}:converter{CONVERTER_VERSION}"
        self.description = f"the {self.format} checkpoint of preset {name!r}"

    def __call__(self, path):
        check_checkpoint(path, format=self.format, arch=self.arch, classes=self.classes,
                         what=f"The {self.format} file for preset {self.name!r}")

    def __repr__(self):
        return f"PresetValidator({self.name!r}, format={self.format!r})"


def preset_validator(name, *, classes=None):
    """The validator of a preset's upstream file, for `download.fetch(..., validate=...)`.

    Args:
        name: a preset with published weights.
        classes: rows of the checkpoint's `pred_w`; None: the preset's class count (400 for Kinetics-400).

    Returns:
        a `PresetValidator` (callable on a path; raises when the file is not the preset's checkpoint).

    Raises:
        ValueError: unknown preset, or one without weights.
        ImportError: the preset's format needs torch and torch is not installed.

    Example:
        >>> from nonlocal_zoo.pretrained.download import fetch
        >>> w = get_preset("i3d_nl5_r50_8x8_kinetics400")["weights"]
        >>> fetch(w["url"], file_name=w["file_name"], validate=preset_validator("i3d_nl5_r50_8x8_kinetics400"))
    """
    return PresetValidator(name, classes=classes)

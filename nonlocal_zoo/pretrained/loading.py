"""Published weights of the presets: download, verified cache of converted tensors, provenance.

- `download_preset(name)`: the preset's upstream checkpoint, downloaded once and verified (`download.fetch`).
- the converted cache: `cache_dir()/converted/<preset>.h5` holds the checkpoint's tensors under canonical names
  and layouts (`convert.CANONICAL_FORMAT`, independent of how any one Keras model lays out its variables), with
  `<preset>.provenance.json` beside it (source URL and sha256, converter version, sha256 of the converted file).
  `valid_converted` verifies the record and the file before it is used; a file that fails is converted again.
  `write_converted` writes both atomically, under `conversion_lock(name)`.

Loading weights into a model (`load_weights`, `create_model(weights=...)`), `convert_checkpoint` and
`push_to_hub` live in `nonlocal_zoo.models.weights` and `nonlocal_zoo.models.conversion`, one floor up: this
module never builds a model.
"""
import contextlib
import datetime
import json
import logging
import os
from pathlib import Path

from nonlocal_zoo.presets import PRESETS, get_preset
from nonlocal_zoo.pretrained.convert import (
    CONVERTER_VERSION,
    HEAD_LAYER,
    mismatch_error,
    provenance_path,
    read_checkpoint,
    to_canonical,
    write_canonical_h5,
)
from nonlocal_zoo.pretrained.download import cache_dir, fetch, hash_file
from nonlocal_zoo.pretrained.validate import preset_validator

logger = logging.getLogger(__name__)

PRETRAINED_TAG = "kinetics400"
CONVERTED_SUBDIR = "converted"
DOWNLOADS_SUBDIR = "downloads"
KINETICS400_CLASSES = 400
PROVENANCE_VERSION = 2
_HASH_KEYS = ("sha256", "sha256_prefix", "sha1", "sha1_prefix")


# ----------------------------------------------------------------------------------------------------------------
# Presets: download, convert, cache
# ----------------------------------------------------------------------------------------------------------------
def published_weights(name):
    """The `weights` entry of a preset; ValueError (listing the presets that have weights) when it has none."""
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
    w = published_weights(name)
    hashes = {key: w.get(key) for key in _HASH_KEYS}
    return fetch(
        w["url"], file_name=w["file_name"], subdir=DOWNLOADS_SUBDIR, progress=progress, offline=offline,
        validate=preset_validator(name), **hashes
    )


def _utc_now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


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


def write_provenance(weights_path, *, preset, fmt, source_path, source_url=None, model_name=None, classes=None):
    """Writes `<name>.provenance.json` next to a converted file; returns the record.

    The record holds the preset, the source (URL, file name, format, sha256 and sha1 of the upstream file,
    licence), the converter and library versions, and the sha256 of the converted file.

    Args:
        weights_path: the converted file.
        preset: the preset it was converted for (or None).
        fmt: the `CheckpointFormat` of the source.
        source_path: the upstream file.
        source_url: where it came from.
        model_name: the Keras model's name, when the file is a Keras weights or model file.
        classes: the number of classes of the converted head (None: no head).

    Example:
        >>> write_provenance(path, preset="i3d_nl5_r50_8x8_kinetics400", fmt=fmt, source_path="x.pkl")
    """
    import keras

    from nonlocal_zoo.version import __version__

    weights_path = Path(weights_path)
    source_hashes = hash_file(source_path)
    weights = get_preset(preset)["weights"] if preset in PRESETS else None
    record = {
        "provenance_version": PROVENANCE_VERSION,
        "preset": preset,
        "model_name": model_name,
        "classes": classes,
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


def converted_path(name):
    """Where the converted weights of preset `name` are cached: `cache_dir()/converted/<name>.h5`."""
    return cache_dir() / CONVERTED_SUBDIR / f"{name}.h5"


@contextlib.contextmanager
def conversion_lock(name):
    """A file lock held while preset `name`'s converted cache is checked, converted or written (one process at
    a time, so two first loads neither convert twice nor read a half-written file)."""
    import filelock

    folder = cache_dir() / CONVERTED_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(folder / f"{name}.lock")):
        yield


def valid_converted(name):
    """The converted cache of preset `name` when it may be used (provenance and sha256 check out), else None.

    A file that fails a check is removed (with its provenance record) and the reason logged, so that it is
    converted again. Call it under `conversion_lock(name)`.

    Example:
        >>> with conversion_lock("i3d_nl5_r50_8x8_kinetics400"):
        ...     path = valid_converted("i3d_nl5_r50_8x8_kinetics400")
    """
    w = published_weights(name)
    target = converted_path(name)
    problem = _cache_problem(target, name, w)
    if problem is None:
        return target
    if problem != "missing":
        logger.warning("Converted weights %s cannot be used (%s); converting again.", target, problem)
    legacy = target.with_name(f"{name}.weights.h5")  # converter version 1 cached a Keras weights file
    for stale in (target, provenance_path(target), legacy):
        if stale.exists():
            stale.unlink()
    return None


def write_converted(name, state, *, fmt, source_path):
    """Writes the converted cache of preset `name` (canonical tensors, `convert.write_canonical_h5`) and its
    provenance record, both atomically. Call it under `conversion_lock(name)`.

    Args:
        name: the preset.
        state: the upstream state dict as read (`read_checkpoint`), in format `fmt`.
        fmt: its `CheckpointFormat`.
        source_path: the upstream file (hashed into the provenance record).

    Returns:
        `pathlib.Path` of the cache file.

    Raises:
        CheckpointMismatchError: the state holds tensors that the format does not know.

    Example:
        >>> fmt, state = read_checkpoint(source, format="caffe2_pkl")
        >>> write_converted("i3d_nl5_r50_8x8_kinetics400", state, fmt=fmt, source_path=source)
    """
    w = published_weights(name)
    canonical, unexpected = to_canonical(state, fmt)
    if unexpected:
        raise mismatch_error(f"Checkpoint '{source_path}' ({fmt.name})", unexpected=unexpected)
    arrays = {key: array for key, (_, array) in canonical.items()}
    target = write_canonical_h5(converted_path(name), arrays, attrs={"preset": name, "source_format": fmt.name})
    pred = arrays.get(f"{HEAD_LAYER}_b")
    write_provenance(target, preset=name, fmt=fmt, source_path=source_path, source_url=w["url"],
                     classes=None if pred is None else int(pred.shape[0]))
    return target


def converted_weights(name, *, progress=True, offline=None):
    """The converted weights of a preset, from the cache or freshly downloaded and converted (no model needed).

    The file holds the checkpoint's tensors under canonical names and layouts (`convert.CANONICAL_FORMAT`);
    `create_model(name, weights=path)` and `nonlocal_zoo.models.weights.load_weights` read it into any model of
    the preset (whole, headless, another head). `load_weights(model, "kinetics400")` fills this cache itself on
    the first load, converting straight into the model it loads.

    Args:
        name: a preset with published weights.
        progress: show download progress.
        offline: True to use only the caches (None: from the environment). A valid converted file is enough
            offline; the upstream file is needed only to convert.

    Returns:
        `pathlib.Path` of `cache_dir()/converted/<name>.h5` (its provenance record lies beside it).

    Raises:
        CheckpointMismatchError: the upstream file holds tensors its format does not know.
        ChecksumError, DownloadError, OfflineError: see `download.fetch`.

    Example:
        >>> path = converted_weights("i3d_nl5_r50_8x8_kinetics400")
    """
    w = published_weights(name)
    with conversion_lock(name):
        target = valid_converted(name)
        if target is not None:
            return target
        source = download_preset(name, progress=progress, offline=offline)
        logger.info("Converting %s (%s) for preset %s.", source, w["format"], name)
        fmt, state = read_checkpoint(source, format=w["format"])
        return write_converted(name, state, fmt=fmt, source_path=source)

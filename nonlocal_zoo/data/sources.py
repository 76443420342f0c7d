"""Where clips come from: a folder of clips per class, a CSV/list file of (path, label), or Python pairs.

Folder layout (like `keras.utils.image_dataset_from_directory` and TFDS `ImageFolder`):

    root/<class>/<clip>               # split=None
    root/<split>/<class>/<clip>       # split="train", "val", ...; classes are the union over all splits

Class names are sorted; labels are their indices. Files are found recursively under each class folder; only the
extensions in `VIDEO_EXTENSIONS` are listed (a damaged file with a video extension is listed, and the pipelines
skip or raise on it as `on_error` says).
"""
import csv
import dataclasses
import os

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp",
                    ".ogv", ".ts", ".mts")
SPLIT_NAMES = ("train", "training", "val", "valid", "validation", "test", "testing")


@dataclasses.dataclass
class ClipList:
    """Resolved clip source: parallel `paths` and int `labels`, plus `class_names` (None when labels are bare ints)."""

    paths: list
    labels: list
    class_names: list = None

    def __len__(self):
        return len(self.paths)


def _is_video(name, extensions):
    return not name.startswith(".") and name.lower().endswith(tuple(e.lower() for e in extensions))


def class_dirs(folder):
    return sorted(d for d in os.listdir(folder) if not d.startswith(".") and os.path.isdir(os.path.join(folder, d)))


def _files_under(folder, extensions):
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_video(f, extensions))
    return found


def list_video_folder(root, *, split=None, class_names=None, extensions=VIDEO_EXTENSIONS):
    """List `root/<class>/<clip>` (or `root/<split>/<class>/<clip>`) as a `ClipList`.

    Args:
        root: dataset folder.
        split: split sub-folder to list, or None for a folder without splits.
        class_names: fix the class order (e.g. the training classes when listing a validation folder). Defaults to
            the sorted class folders (union over every split folder when `split` is given).
        extensions: file name endings that count as videos.

    Returns:
        `ClipList`.

    Example:
        >>> clips = list_video_folder("my_clips", split="train")
        >>> clips.class_names[:2], len(clips)
        (['archery', 'bowling'], 120)
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ValueError(f"Video folder not found or not a directory. Received: root={root!r}")
    top = class_dirs(root)
    if split is None:
        lowered = {d.lower() for d in top}
        if top and lowered <= set(SPLIT_NAMES) and all(class_dirs(os.path.join(root, d)) for d in top):
            raise ValueError(
                f"{root!r} looks like a folder of splits ({top}); pass split= one of them. Received: split=None"
            )
        folder = root
        names = top
    else:
        folder = os.path.join(root, split)
        if not os.path.isdir(folder):
            raise ValueError(f"Split folder {folder!r} not found; available: {top}. Received: split={split!r}")
        names = sorted({c for d in top for c in class_dirs(os.path.join(root, d))})
    if class_names is not None:
        names = list(class_names)
    index = {name: i for i, name in enumerate(names)}
    paths, labels = [], []
    for name in class_dirs(folder):
        if name not in index:
            raise ValueError(
                f"Class folder {name!r} of {folder!r} is not in class_names. Received: class_names={names}"
            )
        for path in _files_under(os.path.join(folder, name), extensions):
            paths.append(path)
            labels.append(index[name])
    if not paths:
        raise ValueError(f"No video files ({', '.join(extensions)}) found under {folder!r}")
    return ClipList(paths, labels, list(names))


_PATH_HEADERS = ("path", "video", "filename", "file", "clip", "video_path")
_LABEL_HEADERS = ("label", "class", "class_name", "label_name", "category", "target")


def read_clip_list(list_file, *, root=None, class_names=None):
    """Read a CSV (`.csv`, comma-separated) or text list (whitespace-separated) of `path label` rows.

    A CSV may have a header naming its columns (`path`/`video`/`filename`, `label`/`class`); without one the first
    two columns are path and label. Labels are ints, or class names mapped through `class_names` (default: the
    sorted names found in the file). Relative paths are resolved against `root` (default: the list's folder).

    Example:
        >>> clips = read_clip_list("val.csv")
    """
    list_file = os.fspath(list_file)
    if not os.path.isfile(list_file):
        raise ValueError(f"Clip list file not found. Received: list_file={list_file!r}")
    root = os.path.dirname(os.path.abspath(list_file)) if root is None else os.fspath(root)
    with open(list_file, newline="", encoding="utf-8") as f:
        if list_file.lower().endswith(".csv"):
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
        else:
            rows = [line.split() for line in f if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise ValueError(f"Clip list {list_file!r} has no rows")
    path_col, label_col = 0, 1
    header = [c.strip().lower() for c in rows[0]]
    if any(h in _PATH_HEADERS for h in header):
        path_col = next(i for i, h in enumerate(header) if h in _PATH_HEADERS)
        label_col = next((i for i, h in enumerate(header) if h in _LABEL_HEADERS), None)
        rows = rows[1:]
    pairs = []
    for n, row in enumerate(rows):
        if label_col is None or len(row) <= max(path_col, label_col):
            raise ValueError(f"Row {n + 1} of {list_file!r} needs a path and a label. Received: row={row!r}")
        pairs.append((row[path_col].strip(), row[label_col].strip()))
    paths = [p if os.path.isabs(p) else os.path.join(root, p) for p, _ in pairs]
    return _label_pairs(paths, [lab for _, lab in pairs], class_names)


def _label_pairs(paths, raw_labels, class_names):
    def as_int(v):
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            return int(v)
        if isinstance(v, str) and v.lstrip("-").isdigit():
            return int(v)
        return None

    ints = [as_int(v) for v in raw_labels]
    if all(i is not None for i in ints) and class_names is None:
        labels = ints
        names = None
    else:
        names = list(class_names) if class_names is not None else sorted({str(v) for v in raw_labels})
        index = {name: i for i, name in enumerate(names)}
        labels = []
        for v, i in zip(raw_labels, ints):
            if str(v) in index:
                labels.append(index[str(v)])
            elif i is not None and 0 <= i < len(names):
                labels.append(i)
            else:
                raise ValueError(f"Label {v!r} is not a known class. Received: class_names={names[:10]}...")
    bad = [lab for lab in labels if lab < 0]
    if bad:
        raise ValueError(f"Labels must be >= 0. Received: labels containing {bad[0]}")
    return ClipList(list(paths), labels, names)


def resolve_clip_source(source, *, split=None, class_names=None, extensions=VIDEO_EXTENSIONS):
    """A `ClipList` from a folder, a CSV/list file, a `ClipList`, or a sequence of `(path, label)` pairs."""
    if isinstance(source, ClipList):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            return list_video_folder(path, split=split, class_names=class_names, extensions=extensions)
        if os.path.isfile(path):
            return read_clip_list(path, class_names=class_names)
        raise ValueError(f"`source` is neither a folder nor a clip list file. Received: source={path!r}")
    try:
        pairs = [(os.fspath(p), lab) for p, lab in source]
    except (TypeError, ValueError):
        raise ValueError(
            "`source` must be a folder, a CSV/list file, a TFDS dataset or a sequence of (path, label) pairs. "
            f"Received: source={source!r}"
        ) from None
    if not pairs:
        raise ValueError("`source` has no (path, label) pairs. Received: source=[]")
    return _label_pairs([p for p, _ in pairs], [lab for _, lab in pairs], class_names)

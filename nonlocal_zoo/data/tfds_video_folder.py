"""A TFDS builder for a folder of clips: custom videos become a versioned, cached TFDS dataset.

TFDS ships `ImageFolder` but no video counterpart (`research/ecosystem.md` §4.1). `VideoFolder` reads
`root/<split>/<class>/<clip>` (or `root/<class>/<clip>`, one `train` split), decodes every clip frame-exactly with
`read_video` (bad clips are logged and left out, like TFDS's UCF101), optionally resizes the short side, and stores
frames as encoded images (`tfds.features.Video`). The prepared dataset loads without this code:
`tfds.builder_from_directory(path)`; `make_dataset("tfds:<path>")` reads it too.

Example:
    >>> builder = prepare_tfds("my_clips", "~/tensorflow_datasets", name="my_clips", short_side=256)
    >>> ds = builder.as_dataset(split="train")          # {"video", "label", "path", "num_frames"}
"""
import hashlib
import logging
import os
import re
import types

import numpy as np
import tensorflow_datasets as tfds

from nonlocal_zoo.data import transforms
from nonlocal_zoo.data.sources import SPLIT_NAMES, VIDEO_EXTENSIONS, class_dirs, list_video_folder
from nonlocal_zoo.data.video_io import VideoDecodeError, read_video

logger = logging.getLogger("nonlocal_zoo.data")

ENCODINGS = ("jpeg", "png")


class VideoFolderConfig(tfds.core.BuilderConfig):
    """Storage options of a `VideoFolder` build; its `name` encodes them, so each variant is cached apart."""

    def __init__(self, *, short_side=None, max_frames=None, encoding_format="jpeg", **kwargs):
        if short_side is not None and (not isinstance(short_side, int) or short_side < 1):
            raise ValueError(f"`short_side` must be a positive int or None. Received: short_side={short_side!r}")
        if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
            raise ValueError(f"`max_frames` must be a positive int or None. Received: max_frames={max_frames!r}")
        if encoding_format not in ENCODINGS:
            raise ValueError(
                f"`encoding_format` must be one of {ENCODINGS}. Received: encoding_format={encoding_format!r}"
            )
        name = encoding_format + (f"_short{short_side}" if short_side else "")
        name += f"_max{max_frames}" if max_frames else ""
        kwargs.setdefault("name", name)
        kwargs.setdefault("description", f"frames stored as {encoding_format}, short side {short_side or 'unchanged'}, "
                                         f"at most {max_frames or 'all'} frames per clip")
        super().__init__(**kwargs)
        self.short_side = short_side
        self.max_frames = max_frames
        self.encoding_format = encoding_format


def _split_layout(root):
    """`{split: folder}` for `root/<split>/<class>/<clip>`, or `{"train": root}` for `root/<class>/<clip>`."""
    top = class_dirs(root)
    if top and {d.lower() for d in top} <= set(SPLIT_NAMES) and all(class_dirs(os.path.join(root, d)) for d in top):
        return {d: d for d in top}
    return {"train": None}


def folder_fingerprint(root, extensions=VIDEO_EXTENSIONS):
    """sha256 over the relative paths, sizes and modification times of the clips under `root`."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            if f.lower().endswith(tuple(extensions)) and not f.startswith("."):
                full = os.path.join(dirpath, f)
                st = os.stat(full)
                digest.update(f"{os.path.relpath(full, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class VideoFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder for `root/<split>/<class>/<clip>` video folders (the video analogue of `tfds.ImageFolder`).

    Args:
        root_dir: the clip folder.
        config: a `VideoFolderConfig` (storage options). Defaults to JPEG frames, unchanged size, all frames.
        class_names: fix the label order. Defaults to the sorted class folders (union over splits).
        decode_options: dict passed to `read_video` (`backend`, `max_pixels`, `timeout`).
        **kwargs: `tfds.core.DatasetBuilder` arguments (`data_dir`, `version`).

    Example:
        >>> builder = VideoFolder(root_dir="my_clips", data_dir="/tmp/tfds")
        >>> builder.download_and_prepare()
        >>> ds = builder.as_dataset(split="train")
    """

    name = "video_folder"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Frames decoded frame-exactly with nonlocal_zoo.data.read_video."}
    BUILDER_CONFIGS = [VideoFolderConfig()]

    def __init__(self, *, root_dir, class_names=None, decode_options=None, **kwargs):
        root_dir = os.path.abspath(os.path.expanduser(os.fspath(root_dir)))
        if not os.path.isdir(root_dir):
            raise ValueError(f"`root_dir` must be a folder of clips. Received: root_dir={root_dir!r}")
        self._root_dir = root_dir
        self._layout = _split_layout(root_dir)
        if class_names is None:
            if set(self._layout.values()) == {None}:
                class_names = class_dirs(root_dir)
            else:
                class_names = sorted({c for d in self._layout.values() for c in class_dirs(os.path.join(root_dir, d))})
        if not class_names:
            raise ValueError(f"No class folders found under {root_dir!r}")
        self._class_names = list(class_names)
        self._decode_options = dict(decode_options or {})
        super().__init__(**kwargs)

    def _info(self):
        return self.dataset_info_from_configs(
            description=f"Video clips from the folder {self._root_dir}.",
            features=tfds.features.FeaturesDict({
                "video": tfds.features.Video(shape=(None, None, None, 3),
                                             encoding_format=self.builder_config.encoding_format),
                "label": tfds.features.ClassLabel(names=self._class_names),
                "path": tfds.features.Text(),
                "num_frames": tfds.features.Scalar(dtype=np.int32),
            }),
            supervised_keys=("video", "label"),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        self.info.metadata["root_dir"] = self._root_dir
        self.info.metadata["fingerprint"] = folder_fingerprint(self._root_dir)
        return {split: self._generate_examples(split if folder is not None else None)
                for split, folder in self._layout.items()}

    def _generate_examples(self, split):
        clips = list_video_folder(self._root_dir, split=split, class_names=self._class_names)
        config = self.builder_config
        skipped = []
        for path, label in zip(clips.paths, clips.labels):
            try:
                frames = read_video(path, max_frames=config.max_frames, **self._decode_options)
            except VideoDecodeError as e:
                skipped.append((path, e.reason))
                logger.warning("VideoFolder: skipping %s", e)
                continue
            if config.short_side:
                frames = transforms.short_side_resize(frames, config.short_side)
            key = os.path.relpath(path, self._root_dir)
            yield key, {"video": frames, "label": label, "path": key, "num_frames": frames.shape[0]}
        if skipped:
            logger.warning("VideoFolder split %r: skipped %d of %d clips: %s", split or "train", len(skipped),
                           len(clips), "; ".join(f"{p} ({r})" for p, r in skipped))


_NAMED = {}


def video_folder_builder_class(name="video_folder"):
    """A `VideoFolder` subclass whose TFDS name is `name` (so datasets are stored under `data_dir/<name>/`)."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name or ""):
        raise ValueError(f"`name` must be snake_case (a-z, 0-9, _), starting with a letter. Received: name={name!r}")
    if name == VideoFolder.name:
        return VideoFolder
    if name not in _NAMED:
        camel = "".join(part.capitalize() for part in name.split("_")) or "VideoFolderNamed"
        _NAMED[name] = types.new_class(camel, (VideoFolder,), {"skip_registration": True},
                                       lambda ns: ns.update({"name": name, "__module__": __name__}))
    return _NAMED[name]


def prepare_tfds(folder, data_dir, *, name="video_folder", short_side=None, max_frames=None, encoding_format="jpeg",
                 class_names=None, decode_options=None, overwrite=False):
    """Build (or reuse) the TFDS dataset of a clip folder and return its prepared builder.

    The dataset is written to `data_dir/<name>/<config>/1.0.0/`, where `<config>` names the storage options
    (e.g. `jpeg_short256`). An existing build is reused when the folder's fingerprint (paths, sizes, times) is
    unchanged, and rebuilt otherwise (or when `overwrite=True`). Clips that fail to decode are logged and left out.

    Args:
        folder: `root/<split>/<class>/<clip>` or `root/<class>/<clip>` (a single `train` split).
        data_dir: TFDS data directory.
        name: dataset name (snake_case). Defaults to `"video_folder"`.
        short_side: resize the short side of stored frames to this (e.g. 256, as the official data preparation).
            Defaults to None (keep the size).
        max_frames: store at most this many frames per clip. Defaults to None (all frames).
        encoding_format: `"jpeg"` (default, compact) or `"png"` (lossless).
        class_names: fix the label order. decode_options: dict passed to `read_video`.
        overwrite: rebuild even if a matching build exists.

    Returns:
        the prepared `tfds.core.DatasetBuilder`; `builder.as_dataset(split=...)` loads it, `builder.data_dir` is
        its folder (loadable later with `tfds.builder_from_directory`).

    Example:
        >>> builder = prepare_tfds("my_clips", "/data/tfds", name="my_clips", short_side=256)
        >>> builder.info.splits["train"].num_examples
        120
    """
    cls = video_folder_builder_class(name)
    config = VideoFolderConfig(short_side=short_side, max_frames=max_frames, encoding_format=encoding_format)
    data_dir = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
    if config.name in {c.name for c in cls.BUILDER_CONFIGS}:  # TFDS refuses a new object named like a predefined one
        config = config.name
    builder = cls(root_dir=folder, config=config, data_dir=data_dir, class_names=class_names,
                  decode_options=decode_options)
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    if overwrite:
        mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
    elif builder.is_prepared():
        stored = builder.info.metadata.get("fingerprint") if builder.info.metadata is not None else None
        if stored != folder_fingerprint(builder._root_dir):
            logger.warning("VideoFolder %r: the clip folder changed since the last build; rebuilding.", name)
            mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode,
                                                                              try_download_gcs=False))
    return builder

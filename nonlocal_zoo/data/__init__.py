"""Video data: frame-exact decoding, reference sampling and transforms, tf.data and TFDS pipelines.

Example:
    >>> from nonlocal_zoo import data
    >>> clip = data.read_video("clip.mp4")                          # uint8 RGB (F, H, W, 3)
    >>> views = data.multiview_clips("clip.mp4", preset="i3d_nl5_r50_8x8_kinetics400")   # (30, 8, 256, 256, 3)
    >>> ds = data.make_dataset("my_clips", split="train", training=True, batch_size=8)

Layering: this package imports nothing of ours but `nonlocal_zoo.presets` (lazily, to resolve preset names).
TensorFlow and TFDS are imported only by the functions that need them.
"""
import importlib

from nonlocal_zoo.data.preprocessing import DEFAULT_PREPROCESSING, multiview_clips, resolve_preprocessing, train_clip
from nonlocal_zoo.data.sampling import SAMPLING_METHODS, sample_test_indices, sample_train_indices
from nonlocal_zoo.data.sources import VIDEO_EXTENSIONS, ClipList, list_video_folder, read_clip_list
from nonlocal_zoo.data.transforms import (
    crop,
    crop_offsets,
    horizontal_flip,
    normalize,
    random_crop,
    random_short_side,
    resize,
    short_side_resize,
    short_side_resize_shape,
    spatial_views,
)
from nonlocal_zoo.data.video_io import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_TIMEOUT,
    VideoDamageWarning,
    VideoDecodeError,
    count_frames,
    read_frames_for,
    read_video,
)
from nonlocal_zoo.data.pipeline import DecodeReport, make_dataset
from nonlocal_zoo.data.seek import FrameIndex, SeekReader, frame_index, read_frames

_LAZY = {  # these import tensorflow_datasets
    "VideoFolder": "nonlocal_zoo.data.tfds_video_folder",
    "VideoFolderConfig": "nonlocal_zoo.data.tfds_video_folder",
    "prepare_tfds": "nonlocal_zoo.data.tfds_video_folder",
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'nonlocal_zoo.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS", "DEFAULT_PREPROCESSING", "DEFAULT_TIMEOUT", "FrameIndex", "SAMPLING_METHODS", "SeekReader",
    "VIDEO_EXTENSIONS", "ClipList", "DecodeReport", "VideoDamageWarning", "VideoDecodeError", "VideoFolder", "VideoFolderConfig", "count_frames", "crop",
    "crop_offsets", "frame_index", "horizontal_flip", "list_video_folder", "make_dataset", "multiview_clips", "normalize",
    "prepare_tfds", "random_crop", "random_short_side", "read_clip_list", "read_frames", "read_frames_for", "read_video", "resize",
    "resolve_preprocessing", "sample_test_indices", "sample_train_indices", "short_side_resize",
    "short_side_resize_shape", "spatial_views", "train_clip",
]

"""`VideoClassifierPreprocessor`: everything between a video file and the network, for one preset's protocol.

It owns decoding (frame-exact), the preset's temporal sampling, resize/crop, channel order, normalisation, the
train (one random clip) and test (`num_clips x num_crops` views) modes, and the rule that turns the views' outputs
into one score row per video (`test_aggregation`: average the softmax probabilities, or average the logits and then
take the softmax, as gluon-cv tests). It is a plain serializable object (`get_config` / `from_config`), saved with
the model by `VideoClassifier.save_to_preset`, so a model never looks its preprocessing up by name.

Example:
    >>> pre = VideoClassifierPreprocessor.from_preset("i3d_nl5_r50_8x8_kinetics400")
    >>> views, counts = pre.views(["a.mp4", "b.mp4"], num_clips=10, num_crops=3)   # uint8 (60, 8, 256, 256, 3)
    >>> x = pre.normalize(views)                                                   # float32 network input
"""
import os

import keras
import numpy as np

from nonlocal_zoo.data import VideoDecodeError, multiview_clips, normalize, resolve_preprocessing, train_clip
from nonlocal_zoo.presets import MAX_TEST_CLIPS, get_preset

AGGREGATIONS = ("softmax", "logits")


def softmax(x):
    """Softmax over the last axis, in the input's float precision."""
    x = x - x.max(axis=-1, keepdims=True)  # (..., C)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def aggregate_views(view_scores, rule):
    """One probability row from the `(V, C)` scores of one video's views by a `test_aggregation` rule:
    `"softmax"` averages the per-view probabilities, `"logits"` averages the per-view logits, then takes the softmax.

    Example:
        >>> aggregate_views(np.log([[0.5, 0.5], [0.9, 0.1]]), "logits")   # softmax of the mean logits
    """
    mean = np.asarray(view_scores, np.float64).mean(axis=0)  # (C,)
    return softmax(mean) if rule == "logits" else mean


@keras.saving.register_keras_serializable(package="nonlocal_zoo")
class VideoClassifierPreprocessor:
    """Decoding, sampling, transforms, normalisation and view aggregation of one preset's protocol.

    Args:
        preprocessing: a preprocessing dict (a preset's `"preprocessing"`), a preset name, or None for the official
            8x8 protocol. Keys are those of `nonlocal_zoo.data.DEFAULT_PREPROCESSING`.
        decode_options: decoder options (`backend`, `max_pixels`, `timeout`, `num_threads`, `max_buffer_bytes`).
        **overrides: preprocessing keys replacing the given ones (e.g. `test_num_clips=1`).

    Example:
        >>> pre = VideoClassifierPreprocessor({"num_frames": 8, "sampling_rate": 1}, test_crop=64, test_short_side=64)
        >>> VideoClassifierPreprocessor.from_config(pre.get_config()).config == pre.config
        True
    """

    def __init__(self, preprocessing=None, *, decode_options=None, **overrides):
        self.config = resolve_preprocessing(preprocessing, **overrides)
        if self.config["test_aggregation"] not in AGGREGATIONS:
            raise ValueError(f"`test_aggregation` must be one of {AGGREGATIONS}. "
                             f"Received: test_aggregation={self.config['test_aggregation']!r}")
        if decode_options is not None and not isinstance(decode_options, dict):
            raise ValueError(f"`decode_options` must be a dict or None. Received: decode_options={decode_options!r}")
        self.decode_options = dict(decode_options or {})

    # ------------------------------------------------------------------------------------------- serialization
    def get_config(self):
        config = {k: list(v) if isinstance(v, tuple) else v for k, v in self.config.items()}
        return {"preprocessing": config, "decode_options": dict(self.decode_options)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    @classmethod
    def from_preset(cls, preset, **overrides):
        """The preprocessor of a registry preset (`"demo"` and `"tiny_nl_i3d"` included)."""
        return cls(get_preset(preset)["preprocessing"], **overrides)

    def __repr__(self):
        c = self.config
        return (f"VideoClassifierPreprocessor({c['num_frames']}x{c['sampling_rate']} {c['sampling']}, test "
                f"{c['test_num_clips']}x{c['test_num_crops']} views of {c['test_crop']}, "
                f"aggregation={c['test_aggregation']!r})")

    # ------------------------------------------------------------------------------------------- properties
    @property
    def num_frames(self):
        return self.config["num_frames"]

    @property
    def aggregation(self):
        return self.config["test_aggregation"]

    @property
    def clip_shape(self):
        """`(T, S, S, 3)` of one test view."""
        return (self.config["num_frames"], self.config["test_crop"], self.config["test_crop"], 3)

    # ------------------------------------------------------------------------------------------- inputs
    @staticmethod
    def standardize(videos):
        """The videos of an input as a list of paths and `(F, H, W, 3)` uint8 arrays.

        Accepts a path, a list of paths (or arrays), a uint8 array `(F, H, W, 3)` (one video) or `(N, F, H, W, 3)`
        (N videos).

        Raises:
            ValueError: anything else, naming what was received.
        """
        if isinstance(videos, (str, os.PathLike)):
            return [os.fspath(videos)]
        if isinstance(videos, np.ndarray) or hasattr(videos, "numpy") and not isinstance(videos, (list, tuple)):
            array = np.asarray(videos)
            _check_array(array, allowed_ranks=(4, 5))
            return [array] if array.ndim == 4 else list(array)
        if isinstance(videos, (list, tuple)):
            if not videos:
                raise ValueError("`videos` is empty. Received: videos=[]")
            out = []
            for i, item in enumerate(videos):
                if isinstance(item, (str, os.PathLike)):
                    out.append(os.fspath(item))
                elif isinstance(item, np.ndarray):
                    _check_array(item, allowed_ranks=(4,), what=f"videos[{i}]")
                    out.append(item)
                else:
                    raise ValueError(f"`videos[{i}]` must be a path or a uint8 (F, H, W, 3) array. "
                                     f"Received: {type(item).__name__} {item!r:.80}")
            return out
        raise ValueError("`videos` must be a path, a list of paths, a uint8 array (F, H, W, 3) or a batch "
                         f"(N, F, H, W, 3). Received: {type(videos).__name__} {videos!r:.80}")

    # ------------------------------------------------------------------------------------------- modes
    def views(self, videos, *, num_clips=None, num_crops=None):
        """The uint8 test views of videos, concatenated: `(sum of V_i, T, S, S, 3)` and the count per video.

        Args:
            videos: see `standardize`.
            num_clips: temporal views per video. Defaults to the preset's `test_num_clips`.
            num_crops: spatial crops per clip (1 or 3). Defaults to the preset's `test_num_crops`.

        Returns:
            `(views, counts)`: the raw RGB views in clip-major order (as `nonlocal_zoo.data.multiview_clips`) and
            the list of views per video.
        """
        num_clips, num_crops = self.check_views(num_clips, num_crops)
        out = [self.video_views(video, num_clips=num_clips, num_crops=num_crops)
               for video in self.standardize(videos)]
        return np.concatenate(out), [len(v) for v in out]

    def video_views(self, video, *, num_clips=None, num_crops=None):
        """The raw test views `(num_clips * num_crops, T, S, S, 3)` of one video (a path or an array)."""
        num_clips, num_crops = self.check_views(num_clips, num_crops)
        return multiview_clips(video, preset=self.config, num_clips=num_clips, num_crops=num_crops, normalize=False,
                               decode_options=self.decode_options)

    def train_clip(self, video, *, rng=None):
        """One augmented, normalised training clip `(T, train_crop, train_crop, 3)` float32 (random mode)."""
        return train_clip(video, preset=self.config, rng=rng, decode_options=self.decode_options)

    def normalize(self, clips):
        """Raw RGB clips (uint8, or float32 pixels) -> the network's float32 input in the preset's channel order."""
        c = self.config
        return normalize(np.asarray(clips), mean=c["mean"], std=c["std"], scale=c["scale"],
                         channel_order=c["channel_order"])

    def __call__(self, videos, *, training=False, num_clips=None, num_crops=None, rng=None):
        """Network inputs of videos: views (test mode) or one random clip each (training mode).

        Returns:
            test mode: `(x, counts)` with `x` float32 `(sum V_i, T, S, S, 3)`; training mode: float32
            `(N, T, C, C, 3)`.
        """
        if training:
            rng = np.random.default_rng(rng)
            return np.stack([self.train_clip(v, rng=rng) for v in self.standardize(videos)])
        views, counts = self.views(videos, num_clips=num_clips, num_crops=num_crops)
        return self.normalize(views), counts

    # ------------------------------------------------------------------------------------------- aggregation
    def aggregate(self, view_scores, counts=None):
        """One probability row per video from per-view scores, by the preset's `test_aggregation` rule.

        Args:
            view_scores: `(sum V_i, C)`: softmax probabilities per view when the rule is `"softmax"`, logits per
                view when it is `"logits"` (see `VideoClassifier.view_scores`).
            counts: views per video (defaults to one video holding all rows).

        Returns:
            float64 `(N, C)`: mean probabilities (`"softmax"`) or softmax of the mean logits (`"logits"`).
        """
        scores = np.asarray(view_scores, dtype=np.float64)
        counts = [len(scores)] if counts is None else list(counts)
        if scores.ndim != 2 or sum(counts) != len(scores):
            raise ValueError(f"`view_scores` must be (sum of counts, C). Received: shape {scores.shape}, "
                             f"counts={counts}")
        bounds = np.cumsum([0, *counts])
        return np.stack([aggregate_views(scores[a:b], self.aggregation) for a, b in zip(bounds[:-1], bounds[1:])])

    def check_views(self, num_clips, num_crops):
        """`(num_clips, num_crops)` with the test protocol's defaults for None; ValueError quoting a bad value."""
        num_clips = self.config["test_num_clips"] if num_clips is None else num_clips
        num_crops = self.config["test_num_crops"] if num_crops is None else num_crops
        if (isinstance(num_clips, bool) or not isinstance(num_clips, (int, np.integer))
                or not 1 <= num_clips <= MAX_TEST_CLIPS):
            raise ValueError(f"`num_clips` must be an integer in [1, {MAX_TEST_CLIPS}]. "
                             f"Received: num_clips={num_clips!r}")
        if num_crops not in (1, 3) or isinstance(num_crops, bool):
            raise ValueError(f"`num_crops` must be 1 or 3. Received: num_crops={num_crops!r}")
        return int(num_clips), int(num_crops)


def _check_array(array, *, allowed_ranks, what="videos"):
    shapes = {4: "(F, H, W, 3)", 5: "(N, F, H, W, 3)"}
    expected = " or ".join(shapes[r] for r in allowed_ranks)
    if array.ndim not in allowed_ranks or array.shape[-1] != 3 or 0 in array.shape:
        raise ValueError(f"`{what}` as an array must have shape {expected}. Received: shape={array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"`{what}` as an array must be uint8 RGB frames (0-255). Received: dtype={array.dtype}")


__all__ = ["AGGREGATIONS", "VideoClassifierPreprocessor", "VideoDecodeError", "aggregate_views", "softmax"]

"""Preset-driven clip preparation: one training clip, or the multi-view test clips, from a file or decoded frames.

Preset contract. Every function here takes explicit parameters and also `preset=`, which may be
- None: `DEFAULT_PREPROCESSING` (the official Caffe2 8x8 protocol);
- a preset name: resolved lazily with `nonlocal_zoo.presets.get_preset(name)["preprocessing"]`;
- a dict: a whole preset (with a `"preprocessing"` key) or a preprocessing dict.
Keys missing from the preset take the defaults below; explicit keyword arguments override both. The keys:

    num_frames, sampling_rate          clip length T and stride r
    mean, std, scale, channel_order    normalisation (x * scale / 255 - mean) / std on 0-255 frames: mean/std are in
                                       units of pixel values in [0, scale] (255 or 1), in `channel_order` (RGB/BGR)
    train_crop, train_short_side_range random short side in the range, random square crop, random flip
    test_short_side, test_crop         short side before the test crops, square test crop size
    test_num_clips, test_num_crops     views of multi-view testing (10 x 3 published)
    sampling                           "official" | "pyslowfast" | "mmaction2" | "gluoncv" (index and offset rules)
    decode_size                        optional (height, width) every frame is first resized to, aspect ignored
                                       (gluon-cv decodes to 256 x 340; that is the default when sampling="gluoncv")
    test_aggregation, test_fully_convolutional   carried along for the model side; unused here
Other keys of a preset's dict are kept as they are.
"""
import numpy as np

from nonlocal_zoo.data import sampling as sampling_lib
from nonlocal_zoo.data import transforms
from nonlocal_zoo.data.video_io import read_frames_for

DEFAULT_PREPROCESSING = {
    "num_frames": 8,
    "sampling_rate": 8,
    "mean": (114.75, 114.75, 114.75),
    "std": (57.375, 57.375, 57.375),
    "scale": 255.0,
    "channel_order": "RGB",
    "test_short_side": 256,
    "test_crop": 256,
    "train_crop": 224,
    "train_short_side_range": (256, 320),
    "test_num_clips": 10,
    "test_num_crops": 3,
    "sampling": "official",
    "decode_size": None,
    "test_aggregation": "softmax",
    "test_fully_convolutional": True,
}

_INT_KEYS = ("num_frames", "sampling_rate", "test_short_side", "test_crop", "train_crop", "test_num_clips",
             "test_num_crops")


def resolve_preprocessing(preset=None, **overrides):
    """The full preprocessing dict for `preset` (None, a name or a dict), with non-None `overrides` applied.

    Args:
        preset: None, a preset name (looked up in `nonlocal_zoo.presets` only when given) or a dict.
        **overrides: any preprocessing key (see the module docstring); None values are ignored.

    Returns:
        A new dict with every key of `DEFAULT_PREPROCESSING`, validated.

    Example:
        >>> resolve_preprocessing(None, num_frames=32, sampling_rate=2)["num_frames"]
        32
    """
    if preset is None:
        base = {}
    elif isinstance(preset, str):
        from nonlocal_zoo.presets import get_preset  # lazy: data/ stands below presets only at call time

        base = dict(get_preset(preset)["preprocessing"])
    elif isinstance(preset, dict):
        base = dict(preset.get("preprocessing", preset))
    else:
        raise ValueError(f"`preset` must be None, a preset name or a dict. Received: preset={preset!r}")
    config = dict(DEFAULT_PREPROCESSING)
    config.update({k: v for k, v in base.items() if v is not None})
    unknown = sorted(set(overrides) - set(DEFAULT_PREPROCESSING))
    if unknown:
        raise ValueError(f"Unknown preprocessing option(s) {unknown}. Known: {sorted(DEFAULT_PREPROCESSING)}")
    config.update({k: v for k, v in overrides.items() if v is not None})
    if config["sampling"] == "gluoncv" and "decode_size" not in base and overrides.get("decode_size") is None:
        config["decode_size"] = (256, 340)
    return _validate(config)


def _validate(config):
    for key in _INT_KEYS:
        value = config[key]
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"Preprocessing `{key}` must be a positive int. Received: {key}={value!r}")
        config[key] = int(value)
    if config["sampling"] not in sampling_lib.SAMPLING_METHODS:
        raise ValueError(
            f"Preprocessing `sampling` must be one of {sampling_lib.SAMPLING_METHODS}. "
            f"Received: sampling={config['sampling']!r}"
        )
    if config["test_num_crops"] not in (1, 3):
        raise ValueError(f"`test_num_crops` must be 1 or 3. Received: test_num_crops={config['test_num_crops']!r}")
    if config["channel_order"] not in ("RGB", "BGR"):
        raise ValueError(
            f"`channel_order` must be 'RGB' or 'BGR'. Received: channel_order={config['channel_order']!r}"
        )
    for key in ("mean", "std"):
        values = np.broadcast_to(np.asarray(config[key], dtype=np.float64), (3,))
        config[key] = tuple(float(v) for v in values)
    if any(s == 0 for s in config["std"]):
        raise ValueError(f"`std` must be non-zero. Received: std={config['std']!r}")
    config["scale"] = float(config["scale"])
    if not config["scale"] > 0:
        raise ValueError(f"`scale` must be a positive number (255 or 1). Received: scale={config['scale']!r}")
    config["train_short_side_range"] = transforms.check_range(config["train_short_side_range"])
    if config["train_short_side_range"][0] < config["train_crop"]:
        raise ValueError(
            "`train_short_side_range` must not go below `train_crop`. "
            f"Received: train_short_side_range={config['train_short_side_range']}, train_crop={config['train_crop']}"
        )
    if config["test_short_side"] < config["test_crop"]:
        raise ValueError(
            "`test_short_side` must be >= `test_crop`. "
            f"Received: test_short_side={config['test_short_side']}, test_crop={config['test_crop']}"
        )
    if config["decode_size"] is not None:
        h, w = (int(v) for v in config["decode_size"])
        config["decode_size"] = (h, w)
    return config


def _load(video, select, decode_options):
    """Frames selected by `select(F)` from a path (decoded frame-exactly) or an in-memory `(F, H, W, 3)` array."""
    if isinstance(video, np.ndarray):
        if video.ndim != 4 or video.shape[0] < 1 or video.shape[-1] != 3:
            raise ValueError(f"An in-memory video must have shape (F, H, W, 3). Received: shape={video.shape}")
        indices = np.asarray(select(video.shape[0]), dtype=np.int64)
        return video[indices.reshape(-1)].reshape(indices.shape + video.shape[1:]), indices
    frames, indices, _ = read_frames_for(video, select, **decode_options)
    return frames, indices


def _prepare_pixels(frames, config):
    # (N, H, W, 3) uint8 -> optional fixed decode size; PySlowFast resizes float tensors, the others uint8 images
    if config["decode_size"] is not None:
        frames = transforms.resize(frames, config["decode_size"])
    if config["sampling"] == "pyslowfast":
        frames = frames.astype(np.float32)
    return frames


def _finish(frames, config, normalize):
    if normalize:
        return transforms.normalize(frames, mean=config["mean"], std=config["std"], scale=config["scale"],
                                    channel_order=config["channel_order"])
    return np.ascontiguousarray(frames)  # raw pixels stay RGB; `transforms.normalize` applies the channel order


def train_clip(video, *, preset=None, rng=None, normalize=True, decode_options=None, **overrides):
    """One augmented training clip: temporal jitter, short-side scale jitter, random crop, random flip.

    Args:
        video: a video path, or decoded uint8 RGB frames `(F, H, W, 3)`.
        preset: None, a preset name or a dict (see the module docstring).
        rng: `np.random.Generator` or int seed. Defaults to an unseeded generator.
        normalize: return normalised float32 in the preset's channel order (default), or the raw RGB pixels
            (uint8; float32 for PySlowFast) for `transforms.normalize` to finish later.
        decode_options: dict passed to the decoder (`backend`, `max_pixels`, `timeout`, `num_threads`,
            `max_buffer_bytes`, `on_damage`: see `read_video`).
        **overrides: preprocessing keys (e.g. `num_frames=32, sampling_rate=2`).

    Returns:
        array `(num_frames, train_crop, train_crop, 3)`.

    Example:
        >>> clip = train_clip("clip.mp4", preset="i3d_nl5_r50_8x8_kinetics400", rng=0)
        >>> clip.shape
        (8, 224, 224, 3)
    """
    config = resolve_preprocessing(preset, **overrides)
    rng = np.random.default_rng(rng)
    select = lambda F: sampling_lib.sample_train_indices(  # noqa: E731
        F, num_frames=config["num_frames"], sampling_rate=config["sampling_rate"], sampling=config["sampling"],
        rng=rng)
    frames, _ = _load(video, select, decode_options or {})
    frames = _prepare_pixels(frames, config)
    side = transforms.random_short_side(config["train_short_side_range"], rng=rng, sampling=config["sampling"])
    frames = transforms.short_side_resize(frames, side, sampling=config["sampling"])
    frames = transforms.random_crop(frames, config["train_crop"], rng=rng, sampling=config["sampling"])
    if rng.random() < 0.5:
        frames = transforms.horizontal_flip(frames)
    return _finish(frames, config, normalize)


def multiview_clips(video, *, preset=None, num_clips=None, num_crops=None, normalize=True, decode_options=None,
               **overrides):
    """The multi-view test clips of one video: `num_clips` temporal positions x `num_crops` spatial crops.

    The union of the needed frames is decoded once and resized once; views are ordered clip-major
    (view `k * num_crops + c` is temporal clip k, crop c; crops go start, centre, end along the long side).

    Args:
        video: a video path, or decoded uint8 RGB frames `(F, H, W, 3)`.
        preset: None, a preset name or a dict (see the module docstring).
        num_clips, num_crops: views (defaults: the preset's `test_num_clips`, `test_num_crops`).
        normalize, decode_options, **overrides: as in `train_clip`.

    Returns:
        array `(num_clips * num_crops, num_frames, test_crop, test_crop, 3)`.

    Example:
        >>> multiview_clips("clip.mp4", preset="i3d_nl5_r50_8x8_kinetics400").shape
        (30, 8, 256, 256, 3)
    """
    config = resolve_preprocessing(preset, test_num_clips=num_clips, test_num_crops=num_crops, **overrides)
    holder = {}

    def select(F):
        clips = sampling_lib.sample_test_indices(
            F, num_frames=config["num_frames"], sampling_rate=config["sampling_rate"],
            num_clips=config["test_num_clips"], sampling=config["sampling"])
        holder["clips"] = clips
        return np.unique(clips)

    frames, unique = _load(video, select, decode_options or {})
    clips = holder["clips"]  # (num_clips, T) frame indices
    frames = _prepare_pixels(frames, config)
    frames = transforms.short_side_resize(frames, config["test_short_side"], sampling=config["sampling"])
    position = np.searchsorted(unique, clips)  # (num_clips, T) rows of `frames`
    views = []
    for k in range(config["test_num_clips"]):
        clip = frames[position[k]]  # (T, H, W, 3)
        views.append(transforms.spatial_views(clip, config["test_crop"], num_crops=config["test_num_crops"],
                                               sampling=config["sampling"]))
    views = np.concatenate(views)  # (num_clips * num_crops, T, S, S, 3)
    return _finish(views, config, normalize)

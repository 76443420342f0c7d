"""Spatial transforms on decoded clips `(T, H, W, C)` (numpy, OpenCV resizing), per reference protocol.

The protocols differ in small integer details, reproduced here because converted checkpoints are evaluated with
them (`research/architecture.md` §5, `research/gluoncv.md` §2):

- `"official"` (`ScaleTransform`, `ClipTransformFlex`): long side `int(float32(L) * float32(s / short))`;
  centre offset `(L - c) // 2`; 3 crops at `0, off, 2 * off`.
- `"pyslowfast"` (`transform.py`): long side `floor(L / short * s)`; centre `ceil((L - c) / 2)`; 3 crops at
  `0, ceil((L - c) / 2), L - c`.
- `"mmaction2"` (`Resize`, `CenterCrop`, `ThreeCrop`): long side `int(L * s / short + 0.5)`; centre `(L - c) // 2`;
  3 crops at `0, (L - c) // 2, 2 * ((L - c) // 2)`.
- `"gluoncv"` (`video_transforms`, `VideoClsDataset`): long side `int(s * L / short)`; centre
  `round((L - c) / 2)`; 3 crops at `int(k * (L - c) / 2)`.

Random training crops: official, mmaction2 and gluoncv draw offsets uniformly in `[0, L - c]`; PySlowFast draws
in `[0, L - c)` (numpy `randint`). Scale jitter: a uniform integer short side in the range (PySlowFast:
`int(round(uniform(lo, hi)))`).
"""
import math

import numpy as np

from nonlocal_zoo.data.sampling import SAMPLING_METHODS

_INTERPOLATIONS = {"bilinear": 1, "nearest": 0, "bicubic": 2, "area": 3}  # cv2.INTER_* values


def _check_clip(frames, name="frames"):
    if not isinstance(frames, np.ndarray) or frames.ndim != 4:
        shape = getattr(frames, "shape", None)
        raise ValueError(f"`{name}` must be a numpy array of shape (T, H, W, C). Received: {name}.shape={shape}")


def _check_sampling(sampling):
    if sampling not in SAMPLING_METHODS:
        raise ValueError(f"`sampling` must be one of {SAMPLING_METHODS}. Received: sampling={sampling!r}")


def short_side_resize_shape(height, width, short_side, *, sampling="official"):
    """The `(new_height, new_width)` that each protocol computes when resizing the short side to `short_side`.

    Args:
        height, width: current frame size.
        short_side: target length of the shorter side.
        sampling: protocol whose rounding to use (see the module docstring).

    Returns:
        `(new_height, new_width)`; the short side is always exactly `short_side` (the official float32 formula
        can give `short_side - 1`, e.g. 223 from 23 px, after which its crop would read out of bounds).

    Example:
        >>> short_side_resize_shape(240, 320, 256)
        (256, 341)
    """
    _check_sampling(sampling)
    if not isinstance(short_side, (int, np.integer)) or short_side < 1:
        raise ValueError(f"`short_side` must be a positive int. Received: short_side={short_side!r}")
    if height < 1 or width < 1:
        raise ValueError(f"Frame size must be positive. Received: height={height}, width={width}")
    h_is_short = height <= width  # every protocol treats the height as the short side when H == W
    short, long_ = (height, width) if h_is_short else (width, height)
    if sampling == "official":
        # ratio = (float)side / (float)short; new = (int)((float)len * ratio)
        ratio = np.float32(short_side) / np.float32(short)
        new_long = int(np.float32(np.float32(long_) * ratio))
    elif sampling == "pyslowfast":
        if short == short_side:
            return int(height), int(width)
        new_long = int(math.floor((float(long_) / short) * short_side))
    elif sampling == "mmaction2":
        scale = short_side / short  # mmcv.rescale_size with scale (inf, s): int(x * factor + 0.5)
        new_long = int(long_ * float(scale) + 0.5)
    else:  # gluoncv get_resize_sizes
        new_long = int(short_side * long_ / short)
    new_long = max(new_long, 1)
    return (int(short_side), new_long) if h_is_short else (new_long, int(short_side))


def resize(frames, size, *, interpolation="bilinear"):
    """Resize every frame of `(T, H, W, C)` to `size = (height, width)` with OpenCV (`cv2.resize`).

    uint8 input gives uint8 output (OpenCV's fixed-point bilinear, as the official and mmaction2 code); float32
    input is resized in float32 (as PyTorch's `interpolate(mode="bilinear", align_corners=False)` of PySlowFast).

    Example:
        >>> resize(np.zeros((8, 240, 320, 3), np.uint8), (256, 341)).shape
        (8, 256, 341, 3)
    """
    import cv2

    _check_clip(frames)
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(
            f"`interpolation` must be one of {sorted(_INTERPOLATIONS)}. Received: interpolation={interpolation!r}"
        )
    new_h, new_w = (int(s) for s in size)
    if new_h < 1 or new_w < 1:
        raise ValueError(f"`size` must be positive (height, width). Received: size={size!r}")
    if frames.shape[1:3] == (new_h, new_w):
        return frames
    out = np.empty((frames.shape[0], new_h, new_w, frames.shape[3]), dtype=frames.dtype)
    flag = _INTERPOLATIONS[interpolation]
    for t in range(frames.shape[0]):
        if frames.shape[3] <= 4:  # resize straight into the output frame
            cv2.resize(frames[t], (new_w, new_h), dst=out[t], interpolation=flag)
        else:
            out[t] = cv2.resize(frames[t], (new_w, new_h), interpolation=flag).reshape(new_h, new_w, -1)
    return out


def short_side_resize(frames, short_side, *, sampling="official", interpolation="bilinear"):
    """Resize `(T, H, W, C)` so that the shorter side is `short_side`, keeping the aspect ratio.

    Example:
        >>> short_side_resize(np.zeros((8, 240, 320, 3), np.uint8), 256).shape
        (8, 256, 341, 3)
    """
    _check_clip(frames)
    size = short_side_resize_shape(frames.shape[1], frames.shape[2], short_side, sampling=sampling)
    return resize(frames, size, interpolation=interpolation)


def random_short_side(scale_range, *, rng, sampling="official"):
    """Draw the training short side from `scale_range = (low, high)` (inclusive), as the protocol does.

    Example:
        >>> random_short_side((256, 320), rng=np.random.default_rng(0))
        311
    """
    _check_sampling(sampling)
    low, high = check_range(scale_range)
    if sampling == "pyslowfast":  # int(round(np.random.uniform(min_size, max_size)))
        return int(round(float(rng.uniform(low, high))))
    return int(rng.integers(low, high, endpoint=True))  # std::uniform_int_distribution<>(min, max)


def check_range(scale_range):
    """`(low, high)` ints of a short-side range, validated (positive, low <= high); ValueError quoting it otherwise."""
    try:
        low, high = (int(v) for v in scale_range)
    except (TypeError, ValueError):
        raise ValueError(f"`scale_range` must be a pair of ints. Received: scale_range={scale_range!r}") from None
    if low < 1 or high < low:
        raise ValueError(f"`scale_range` must satisfy 1 <= low <= high. Received: scale_range={scale_range!r}")
    return low, high


def crop(frames, top, left, height, width):
    """Crop `(T, H, W, C)` to `(T, height, width, C)` at `(top, left)`; the window must lie inside the frame."""
    _check_clip(frames)
    H, W = frames.shape[1:3]
    if top < 0 or left < 0 or top + height > H or left + width > W or height < 1 or width < 1:
        raise ValueError(
            f"Crop window outside the {H}x{W} frame. Received: top={top}, left={left}, height={height}, "
            f"width={width}"
        )
    return frames[:, top:top + height, left:left + width]


def random_crop_offset(height, width, size, *, rng, sampling="official"):
    """Top-left corner `(top, left)` of a random `size x size` training crop."""
    _check_sampling(sampling)
    _check_fits(height, width, size)
    if sampling == "pyslowfast":  # np.random.randint(0, L - size) if L > size else 0 (exclusive upper bound)
        top = int(rng.integers(0, height - size)) if height > size else 0
        left = int(rng.integers(0, width - size)) if width > size else 0
        return top, left
    return int(rng.integers(0, height - size, endpoint=True)), int(rng.integers(0, width - size, endpoint=True))


def random_crop(frames, size, *, rng, sampling="official"):
    """A random `size x size` crop of `(T, H, W, C)`, the same window on every frame."""
    _check_clip(frames)
    top, left = random_crop_offset(frames.shape[1], frames.shape[2], size, rng=rng, sampling=sampling)
    return crop(frames, top, left, size, size)


def horizontal_flip(frames):
    """Mirror `(T, H, W, C)` left-right (a new array; `cv2.flip` is ~100x faster than copying `frames[:, :, ::-1]`)."""
    import cv2

    _check_clip(frames)
    if frames.shape[-1] > 4 or frames.dtype not in (np.uint8, np.float32, np.float64):
        return np.ascontiguousarray(frames[:, :, ::-1])
    out = np.empty(frames.shape, frames.dtype)
    for t in range(frames.shape[0]):
        out[t] = cv2.flip(frames[t], 1).reshape(frames.shape[1:])
    return out


def _check_fits(height, width, size):
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"`size` must be a positive int. Received: size={size!r}")
    if size > height or size > width:
        raise ValueError(f"Crop size {size} does not fit in a {height}x{width} frame. Received: size={size}")


def crop_offsets(height, width, size, *, num_crops=3, sampling="official"):
    """Top-left corners of the test crops: 1 (centre) or 3 (start, centre, end of the long side).

    Args:
        height, width: frame size after the test resize.
        size: square crop size.
        num_crops: 1 or 3.
        sampling: protocol whose offsets to use (see the module docstring).

    Returns:
        list of `(top, left)` pairs, in the order start, centre, end.

    Example:
        >>> crop_offsets(256, 341, 256)
        [(0, 0), (0, 42), (0, 84)]
    """
    _check_sampling(sampling)
    _check_fits(height, width, size)
    if num_crops not in (1, 3):
        raise ValueError(f"`num_crops` must be 1 or 3. Received: num_crops={num_crops!r}")
    dh, dw = height - size, width - size
    if sampling == "pyslowfast":  # transform.uniform_crop
        cy, cx = int(math.ceil(dh / 2)), int(math.ceil(dw / 2))
        if num_crops == 1:
            return [(cy, cx)]
        if height > width:
            return [(0, cx), (cy, cx), (dh, cx)]
        return [(cy, 0), (cy, cx), (cy, dw)]
    if sampling == "gluoncv":
        if num_crops == 1:  # CenterCrop: int(round((L - c) / 2.))
            return [(int(round(dh / 2.0)), int(round(dw / 2.0)))]
        step = 1.0 * (max(height, width) - size) / (num_crops - 1)  # VideoClsDataset test mode
        starts = [int(k * step) for k in range(num_crops)]
        if height >= width:
            return [(s, 0) for s in starts]
        return [(0, s) for s in starts]
    # official (ClipTransformFlex) and mmaction2 (CenterCrop, ThreeCrop) agree on these offsets
    h_off, w_off = dh // 2, dw // 2
    if num_crops == 1:
        return [(h_off, w_off)]
    if sampling == "official":
        if h_off > 0:  # official: crops move along the height when there is room there, else along the width
            return [(h_off * pos, w_off) for pos in range(3)]
        return [(h_off, w_off * pos) for pos in range(3)]
    if dw == 0 or (dh > 0 and height > width):  # mmaction2 ThreeCrop: along the side that is longer than the crop
        return [(h_off * pos, w_off) for pos in range(3)]
    return [(h_off, w_off * pos) for pos in range(3)]


def spatial_views(frames, size, *, num_crops=3, sampling="official"):
    """The test crops of one clip stacked: `(T, H, W, C) -> (num_crops, T, size, size, C)`.

    Example:
        >>> spatial_views(np.zeros((8, 256, 341, 3), np.uint8), 256).shape
        (3, 8, 256, 256, 3)
    """
    _check_clip(frames)
    offsets = crop_offsets(frames.shape[1], frames.shape[2], size, num_crops=num_crops, sampling=sampling)
    return np.stack([crop(frames, top, left, size, size) for top, left in offsets])


def normalize(frames, *, mean, std, scale=255.0, channel_order="RGB", dtype="float32"):
    """`(frames * scale / 255 - mean) / std` per channel, after reordering RGB input to `channel_order`.

    The convention of `nonlocal_zoo.presets`: frames are on the 0-255 scale, `mean` and `std` are in units of pixel
    values in `[0, scale]` (255 for 0-255 statistics such as the official 114.75 / 57.375, 1 for 0-1 statistics).

    Args:
        frames: uint8 or float array `(..., 3)` in RGB order (what `read_video` returns), 0-255.
        mean, std: per-channel (or scalar) statistics, in the order of `channel_order`.
        scale: the pixel range `mean` and `std` refer to. Defaults to 255.
        channel_order: `"RGB"` or `"BGR"` (the order the model expects).
        dtype: output dtype. Defaults to float32.

    Example:
        >>> normalize(np.full((1, 1, 1, 3), 114.75), mean=114.75, std=57.375).ravel()
        array([0., 0., 0.], dtype=float32)
    """
    if channel_order not in ("RGB", "BGR"):
        raise ValueError(f"`channel_order` must be 'RGB' or 'BGR'. Received: channel_order={channel_order!r}")
    if not isinstance(scale, (int, float, np.number)) or not scale > 0:
        raise ValueError(f"`scale` must be a positive number (255 or 1). Received: scale={scale!r}")
    x = np.asarray(frames)
    if x.shape[-1] != 3:
        raise ValueError(f"`frames` must have 3 channels last. Received: frames.shape={x.shape}")
    if channel_order == "BGR":
        x = x[..., ::-1]
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    if np.any(std == 0):
        raise ValueError(f"`std` must be non-zero. Received: std={std.tolist()}")
    # x * (scale / 255 / std) + (-mean / std): one multiply into float32 and one in-place add. Per-channel values
    # go row by row against the factors tiled along a row of pixels (W * 3 values, channels interleaved): numpy's
    # inner loop stays long and contiguous (a length-3 broadcast makes it 3 elements long, ~10x slower; strided
    # per-channel passes ~2x slower). Same float32 operations, bit for bit, as channel by channel.
    factor = np.broadcast_to(np.float64(scale) / 255.0 / std.astype(np.float64), (3,)).astype(np.float32)
    offset = np.broadcast_to(-mean.astype(np.float64) / std.astype(np.float64), (3,)).astype(np.float32)
    out = np.empty(x.shape, np.float32)
    if np.all(factor == factor[0]) and np.all(offset == offset[0]):
        np.multiply(x, factor[0], out=out, casting="unsafe")
        out += offset[0]
    else:
        x = np.ascontiguousarray(x)
        pixels = x.shape[-2] if x.ndim >= 2 else 1
        rows, out_rows = x.reshape(-1, 3 * pixels), out.reshape(-1, 3 * pixels)  # (N * ... * H, W * 3)
        np.multiply(rows, np.tile(factor, pixels), out=out_rows, casting="unsafe")
        out_rows += np.tile(offset, pixels)
    return out.astype(dtype, copy=False)

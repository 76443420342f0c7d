"""Generated clips for int8 calibration and for checking an export, without any real video.

Example:
    >>> generated_clips(4, (8, 64, 64, 3)).shape
    (4, 8, 64, 64, 3)
"""
import numpy as np


def generated_clips(num_clips, shape, *, seed=0):
    """Generated uint8 clips `(num_clips, T, H, W, 3)`: smooth colour fields drifting over time, plus noise.

    Used as the representative dataset of int8 calibration and to measure quantized agreement; no real video needed.

    Example:
        >>> generated_clips(4, (8, 64, 64, 3)).shape
        (4, 8, 64, 64, 3)
    """
    import cv2

    frames, height, width, channels = shape
    rng = np.random.default_rng(seed)
    clips = np.empty((num_clips, frames, height, width, channels), np.uint8)
    for n in range(num_clips):
        grid = rng.uniform(0, 255, (6, 6, channels)).astype("float32")  # coarse colour field
        big = cv2.resize(grid, (2 * width, 2 * height), interpolation=cv2.INTER_CUBIC)
        drift = rng.uniform(-1, 1, 2) * min(height, width) / max(frames, 1)
        for t in range(frames):
            dy, dx = (np.array([height, width]) // 2 + t * drift).astype(int) % np.array([height, width])
            frame = big[dy:dy + height, dx:dx + width] + rng.normal(0, 8, (height, width, channels))
            clips[n, t] = np.clip(frame, 0, 255).astype(np.uint8)
    return clips

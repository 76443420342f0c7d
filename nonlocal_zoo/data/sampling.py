"""Temporal sampling: which frame indices form a clip, exactly as each reference code base computes them.

Every function takes the number of frames that were actually decoded (`num_video_frames`, never a header count)
and returns int64 frame indices in `[0, num_video_frames)`.

- `"official"` (Caffe2 `DecodeClipFromVideoFileFlex`): training start uniform int in `[0, F - T*r]`; test view k
  of n starts at `int(float32(F / n) * k) % F`; indices `start + i*r` wrap modulo F (short videos loop).
- `"pyslowfast"` (`decoder.get_start_end_idx` + `temporal_sampling`): training start uniform real in
  `[0, F - T*r]`; test start `(F - T*r) * k / n`; indices `float32 linspace(start, start + T*r - 1, T)` clamped to
  `[0, F - 1]` and truncated.
- `"mmaction2"` (`SampleFrames`): training start `randint(F - T*r + 1)`; test start
  `round(k * max(F - ((T-1)*r + 1), 0) / (n - 1))`; indices wrap modulo F.
- `"gluoncv"` (`VideoClsDataset`): training `linspace(end - T*r, end, T)` with end `randint(T*r, F)`
  (linspace over the whole video, last frame repeated, when it is short); test: keep every r-th frame, then T
  consecutive kept frames from `int(k * step)`.
"""
import numpy as np

SAMPLING_METHODS = ("official", "pyslowfast", "mmaction2", "gluoncv")


def _check(num_video_frames, num_frames, sampling_rate, sampling):
    if not isinstance(num_video_frames, (int, np.integer)) or num_video_frames < 1:
        raise ValueError(
            "`num_video_frames` must be a positive int (decoded frames). "
            f"Received: num_video_frames={num_video_frames!r}"
        )
    if not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"`num_frames` must be a positive int. Received: num_frames={num_frames!r}")
    if not isinstance(sampling_rate, (int, np.integer)) or sampling_rate < 1:
        raise ValueError(f"`sampling_rate` must be a positive int. Received: sampling_rate={sampling_rate!r}")
    if sampling not in SAMPLING_METHODS:
        raise ValueError(f"`sampling` must be one of {SAMPLING_METHODS}. Received: sampling={sampling!r}")


def _torch_linspace_f32(start, end, steps):
    """`torch.linspace(start, end, steps)` in float32, element for element (torch's CPU kernel computes the first
    half forward from `start` and the second half backward from `end`)."""
    start = np.float32(start)
    end = np.float32(end)
    if steps == 1:
        return np.array([start], dtype=np.float32)
    step = np.float32((end - start) / np.float32(steps - 1))
    i = np.arange(steps)
    half = steps // 2
    forward = start + step * i.astype(np.float32)
    backward = end - step * (steps - i - 1).astype(np.float32)
    return np.where(i < half, forward, backward).astype(np.float32)


def _pyslowfast_indices(num_video_frames, start, clip_size, num_frames):
    end = start + clip_size - 1
    index = _torch_linspace_f32(start, end, num_frames)
    index = np.clip(index, 0, num_video_frames - 1)
    return index.astype(np.int64)  # torch `.long()` truncates toward zero (values are >= 0)


def _clip_size(num_frames, sampling_rate, video_fps, target_fps):
    # PySlowFast: num_frames * sampling_rate * fps / target_fps (the clip spans the same time at any fps).
    if video_fps is None or target_fps is None:
        return float(num_frames * sampling_rate)
    return num_frames * sampling_rate * float(video_fps) / float(target_fps)


def sample_train_indices(num_video_frames, *, num_frames, sampling_rate, sampling="official", rng=None,
                       video_fps=None, target_fps=30):
    """Frame indices of one randomly placed training clip.

    Args:
        num_video_frames: decoded frame count F of the video.
        num_frames: clip length T.
        sampling_rate: stride r between sampled frames.
        sampling: reference protocol, one of `"official"`, `"pyslowfast"`, `"mmaction2"`, `"gluoncv"`.
        rng: `np.random.Generator` (or an int seed). Defaults to a fresh unseeded generator.
        video_fps, target_fps: PySlowFast only: the clip spans `T * r / target_fps` seconds of a `video_fps` video.
            Defaults to None (no fps conversion).

    Returns:
        int64 array of shape `(T,)`.

    Example:
        >>> sample_train_indices(300, num_frames=8, sampling_rate=8, rng=0)
        array([201, 209, 217, 225, 233, 241, 249, 257])
    """
    _check(num_video_frames, num_frames, sampling_rate, sampling)
    rng = np.random.default_rng(rng)
    F, T, r = int(num_video_frames), int(num_frames), int(sampling_rate)
    if sampling == "official":
        # use_start_frm = uniform_int_distribution<>(0, F - T*r) if F - T*r > 0 else 0; i = (start + idx*r) % F
        start = int(rng.integers(0, F - T * r, endpoint=True)) if F - T * r > 0 else 0
        return (start + np.arange(T, dtype=np.int64) * r) % F
    if sampling == "pyslowfast":
        clip_size = _clip_size(T, r, video_fps, target_fps)
        delta = max(F - clip_size, 0)
        start = float(rng.uniform(0, delta)) if delta > 0 else 0.0
        return _pyslowfast_indices(F, start, clip_size, T)
    if sampling == "mmaction2":
        # SampleFrames._get_train_clips with num_clips=1, then out_of_bound_opt='loop'
        ori_clip_len = T * r
        avg_interval = F - ori_clip_len + 1
        offset = int(rng.integers(avg_interval)) if avg_interval > 0 else 0
        return (offset + np.arange(T, dtype=np.int64) * r) % F
    # gluoncv: VideoClsDataset.loadvideo_decord, num_segment=1
    converted_len = T * r
    if F <= converted_len:
        index = np.linspace(0, F, num=F // r)
        index = np.concatenate((index, np.ones(T - F // r) * F))
        return np.clip(index, 0, F - 1).astype(np.int64)
    end_idx = int(rng.integers(converted_len, F))
    str_idx = end_idx - converted_len
    index = np.linspace(str_idx, end_idx, num=T)
    return np.clip(index, str_idx, end_idx - 1).astype(np.int64)


def sample_test_indices(num_video_frames, *, num_frames, sampling_rate, num_clips=10, sampling="official",
                      video_fps=None, target_fps=30, use_offset=False):
    """Frame indices of the `num_clips` uniformly placed test clips (the temporal views of multi-view testing).

    Args:
        num_video_frames: decoded frame count F of the video.
        num_frames: clip length T.
        sampling_rate: stride r between sampled frames.
        num_clips: number of temporal views n. Defaults to 10 (the published protocol).
        sampling: reference protocol, one of `"official"`, `"pyslowfast"`, `"mmaction2"`, `"gluoncv"`.
        video_fps, target_fps: PySlowFast only (see `sample_train_indices`).
        use_offset: PySlowFast `DATA.USE_OFFSET_SAMPLING` (start `k * floor(delta / (n - 1))`). Defaults to False.

    Returns:
        int64 array of shape `(num_clips, T)`.

    Example:
        >>> sample_test_indices(100, num_frames=4, sampling_rate=2, num_clips=2)
        array([[ 0,  2,  4,  6],
               [50, 52, 54, 56]])
    """
    _check(num_video_frames, num_frames, sampling_rate, sampling)
    if not isinstance(num_clips, (int, np.integer)) or num_clips < 1:
        raise ValueError(f"`num_clips` must be a positive int. Received: num_clips={num_clips!r}")
    F, T, r, n = int(num_video_frames), int(num_frames), int(sampling_rate), int(num_clips)
    steps = np.arange(T, dtype=np.int64) * r
    if sampling == "official":
        # frame_gaps = (float)F / (float)sample_times; use_start_frm = ((int)(frame_gaps * k)) % F (float32 math)
        gaps = np.float32(F) / np.float32(n)
        starts = [int(np.float32(gaps * np.float32(k))) % F for k in range(n)]
        return np.stack([(s + steps) % F for s in starts])
    if sampling == "pyslowfast":
        clip_size = _clip_size(T, r, video_fps, target_fps)
        delta = max(F - clip_size, 0)
        out = []
        for k in range(n):
            if use_offset:
                start = float(np.floor(delta / 2)) if n == 1 else float(k * np.floor(delta / (n - 1)))
            else:
                start = delta * k / n
            out.append(_pyslowfast_indices(F, start, clip_size, T))
        return np.stack(out)
    if sampling == "mmaction2":
        # SampleFrames._get_test_clips (3-D recognizer, no target_fps), then out_of_bound_opt='loop'
        ori_clip_len = (T - 1) * r + 1
        max_offset = max(F - ori_clip_len, 0)
        if n > 1:
            offsets = np.round(np.arange(n) * (max_offset / float(n - 1)))  # numpy rounds half to even
        else:
            offsets = np.array([max_offset // 2])
        return (offsets.astype(np.int64)[:, None] + steps[None, :]) % F
    # gluoncv: test mode keeps every r-th frame (padded with the last one to T), then T consecutive kept frames
    # from int(k * step), step = max((len - T) / (n - 1), 0). n == 1 takes the middle clip (the reference divides
    # by n - 1).
    kept = list(range(0, F, r))
    while len(kept) < T:
        kept.append(kept[-1])
    kept = np.asarray(kept, dtype=np.int64)
    if n > 1:
        step = max(1.0 * (len(kept) - T) / (n - 1), 0)
        starts = [int(k * step) for k in range(n)]
    else:
        starts = [(len(kept) - T) // 2]
    return np.stack([kept[s:s + T] for s in starts])

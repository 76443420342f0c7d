"""Frame-exact video decoding: OpenCV (default) or PyAV, to uint8 RGB `(F, H, W, 3)`.

Header metadata lies (`CAP_PROP_FRAME_COUNT` is an estimate, sometimes negative) and `CAP_PROP_POS_FRAMES` seeks
land on key frames, so this module never uses either: it decodes sequentially from the first frame and trusts only
what was decoded (`research/perf_reliability.md` §6, `research/ecosystem.md` §4.2). Every way a file can be
unreadable ends in one typed error, `VideoDecodeError`, which names the file and the reason.
"""
import os
import threading
import time

import numpy as np

DEFAULT_MAX_PIXELS = 4096 * 4096
"""Largest frame (width x height) decoded by default; checked on the header before any frame is decoded."""

DEFAULT_TIMEOUT = 60.0
"""Default wall-clock limit, in seconds, for opening and decoding one file."""

BACKENDS = ("opencv", "pyav")


class VideoDecodeError(ValueError):
    """A video file could not be decoded. `path` and `reason` are attributes; `str()` names both.

    Example:
        >>> try:
        ...     read_video("missing.mp4")
        ... except VideoDecodeError as e:
        ...     print(e.path, e.reason)
    """

    def __init__(self, path, reason):
        self.path = None if path is None else os.fspath(path)
        self.reason = str(reason)
        super().__init__(f"Cannot decode video '{self.path}': {self.reason}")

    def __reduce__(self):  # picklable across processes despite the two-argument constructor
        return (type(self), (self.path, self.reason))


# --------------------------------------------------------------------------------------------------------------
# Backends. Each reader exposes `width`/`height` from the header (0 when unknown), `grab()` (decode one frame,
# return False at the end) and `read()` (decode one frame, return it as uint8 RGB, or None at the end).


class _OpenCVReader:
    def __init__(self, path, *, timeout, num_threads):
        import cv2

        self._cv2 = cv2
        timeout_ms = int(max(1.0, timeout * 1000))
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
        if num_threads is not None:
            params += [cv2.CAP_PROP_N_THREADS, int(num_threads)]
        start = time.monotonic()
        try:
            cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, params)
        except cv2.error as e:
            raise VideoDecodeError(path, f"OpenCV failed to open it ({str(e).strip()})") from None
        if not cap.isOpened():
            cap.release()
            if time.monotonic() - start >= timeout:
                raise VideoDecodeError(path, f"opening exceeded the time limit of {timeout} s")
            raise VideoDecodeError(
                path,
                "OpenCV/FFmpeg cannot open it: not a video, an unsupported format, or a damaged/truncated "
                "container (e.g. 'moov atom not found')",
            )
        self._cap = cap
        self.width = max(int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), 0)
        self.height = max(int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0), 0)

    def grab(self):
        try:
            return bool(self._cap.grab())
        except self._cv2.error:
            return False

    def read(self):
        cv2 = self._cv2
        try:
            ok, frame = self._cap.read()
        except cv2.error:
            return None
        if not ok or frame is None or frame.size == 0:
            return None
        if frame.dtype != np.uint8:  # e.g. 16-bit output with CAP_PROP_CONVERT_RGB off
            frame = cv2.convertScaleAbs(frame, alpha=255.0 / np.iinfo(frame.dtype).max)
        if frame.ndim == 2:
            return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
        if frame.shape[2] == 4:
            return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
        if frame.shape[2] == 1:
            return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def close(self):
        self._cap.release()


class _PyAVReader:
    def __init__(self, path, *, timeout, num_threads):
        try:
            import av
        except ImportError:
            raise ImportError("backend='pyav' needs PyAV: `pip install av`.") from None
        self._av = av
        try:
            self._container = av.open(path, timeout=(timeout, timeout), metadata_errors="replace")
        except Exception as e:  # av.FFmpegError subclasses, OSError, UnicodeDecodeError from odd metadata
            raise VideoDecodeError(path, f"PyAV/FFmpeg cannot open it ({type(e).__name__}: {e})") from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoDecodeError(path, "the file has no video stream")
        stream = self._container.streams.video[0]
        if num_threads != 1:
            stream.thread_type = "AUTO"
        if num_threads:
            stream.codec_context.thread_count = int(num_threads)
        self.width = int(stream.codec_context.width or 0)
        self.height = int(stream.codec_context.height or 0)
        self._frames = self._container.decode(stream)

    def _next(self):
        try:
            return next(self._frames)
        except StopIteration:
            return None
        except Exception:  # a damaged packet ends the decodable part, as it does for OpenCV
            return None

    def grab(self):
        return self._next() is not None

    def read(self):
        frame = self._next()
        if frame is None:
            return None
        try:
            return frame.to_ndarray(format="rgb24")
        except Exception:
            return None

    def close(self):
        self._container.close()


_READERS = {"opencv": _OpenCVReader, "pyav": _PyAVReader}


# --------------------------------------------------------------------------------------------------------------


def _check_file(path):
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise ValueError(f"`path` must be a file path. Received: path={path!r}")
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not os.path.exists(path):
        raise VideoDecodeError(path, "file not found")
    if os.path.isdir(path):
        raise VideoDecodeError(path, "is a directory, not a video file")
    if not os.access(path, os.R_OK):
        raise VideoDecodeError(path, "file is not readable (permission denied)")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)")
    return path


def _check_options(backend, max_pixels, timeout, num_threads):
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}. Received: backend={backend!r}")
    if max_pixels is not None and (not isinstance(max_pixels, (int, np.integer)) or max_pixels <= 0):
        raise ValueError(f"`max_pixels` must be a positive int or None. Received: max_pixels={max_pixels!r}")
    if timeout is not None and (not isinstance(timeout, (int, float)) or not timeout > 0):
        raise ValueError(f"`timeout` must be a positive number of seconds or None. Received: timeout={timeout!r}")
    if num_threads is not None and (not isinstance(num_threads, (int, np.integer)) or num_threads < 0):
        raise ValueError(f"`num_threads` must be a non-negative int or None. Received: num_threads={num_threads!r}")


def _check_pixels(path, width, height, max_pixels, where):
    if max_pixels is not None and width * height > max_pixels:
        raise VideoDecodeError(
            path,
            f"frame size {width}x{height} ({width * height} pixels, {where}) exceeds max_pixels={max_pixels}; "
            "pass a larger max_pixels to decode it",
        )


def _decode(path, *, wanted=None, stop_after=None, max_buffer_bytes=None, backend="opencv",
            max_pixels=DEFAULT_MAX_PIXELS, timeout=DEFAULT_TIMEOUT, num_threads=None):
    """Decode sequentially from frame 0. The one loop behind `read_video`, `count_frames` and the pipelines.

    Args:
        wanted: None keeps every frame; a set keeps only those indices (others are grabbed, not converted).
        stop_after: last frame index to decode (inclusive); None decodes to the end.
        max_buffer_bytes: with `wanted=None`, stop keeping frames once they would exceed this many bytes and only
            count the rest (the returned `frames` is then None).

    Returns:
        `(frames, num_decoded, reached_end)`: `frames` maps index -> uint8 RGB frame (or is None, see above),
        `num_decoded` counts the frames decoded, `reached_end` tells whether decoding reached the end of the video.
    """
    path = _check_file(path)
    _check_options(backend, max_pixels, timeout, num_threads)
    start = time.monotonic()
    deadline = None if timeout is None else start + float(timeout)
    reader = _READERS[backend](path, timeout=timeout or 3600.0, num_threads=num_threads)
    try:
        if reader.width and reader.height:  # pixel cap from the header, before anything is decoded
            _check_pixels(path, reader.width, reader.height, max_pixels, "from the header")
        frames = {}
        buffered = 0
        shape = None
        index = 0
        reached_end = False
        while stop_after is None or index <= stop_after:
            keep = frames is not None and (wanted is None or index in wanted)
            if keep or shape is None:  # always convert the first frame: it gives the true size
                frame = reader.read()
                ok = frame is not None
            else:
                ok = reader.grab()
            if not ok:
                reached_end = True
                break
            if shape is None:
                shape = frame.shape
                _check_pixels(path, shape[1], shape[0], max_pixels, "of the first decoded frame")
            elif keep and frame.shape != shape:
                raise VideoDecodeError(
                    path, f"frame size changed from {shape[1]}x{shape[0]} to {frame.shape[1]}x{frame.shape[0]} "
                    f"at frame {index}"
                )
            if keep:
                frames[index] = frame
                buffered += frame.nbytes
                if wanted is None and max_buffer_bytes is not None and buffered > max_buffer_bytes:
                    frames = None  # too long to hold: from here on only count
            index += 1
            if deadline is not None and time.monotonic() > deadline:
                raise VideoDecodeError(
                    path, f"decoding exceeded the time limit of {timeout} s after {index} frames"
                )
    finally:
        reader.close()
    if index == 0:
        raise VideoDecodeError(path, "no decodable video frames (the container opened but 0 frames decoded)")
    return frames, index, reached_end


def read_video(path, *, frame_indices=None, max_frames=None, backend="opencv", max_pixels=DEFAULT_MAX_PIXELS,
               timeout=DEFAULT_TIMEOUT, num_threads=None):
    """Decode a video file to a uint8 RGB array of shape `(F, H, W, 3)`, frame-exactly.

    Frames are decoded sequentially from the first one; frame `i` of the result is the `i`-th decodable frame.
    Header frame counts and seeking are never used. A file damaged in its middle yields the frames before the
    damage.

    Args:
        path: path of the video file.
        frame_indices: optional 1-D sequence of frame indices (>= 0, repeats and any order allowed). Only frames up
            to the largest index are decoded, and the result holds exactly these frames, in this order. Defaults to
            None (every frame).
        max_frames: with `frame_indices=None`, stop after this many frames. Defaults to None (no limit).
        backend: `"opencv"` (default; `opencv-python-headless`, FFmpeg inside) or `"pyav"` (optional `av`).
        max_pixels: largest accepted `width * height`, checked on the header before decoding (and on the first
            decoded frame). None disables the check. Defaults to 4096 * 4096.
        timeout: wall-clock limit in seconds for the whole read (also passed to FFmpeg's open/read timeouts).
            None disables it. Defaults to 60.
        num_threads: decoder threads for this file (None: the backend's default). Pipelines that decode many files
            in parallel pass 1.

    Returns:
        `np.ndarray` of dtype uint8, shape `(F, H, W, 3)`, channels in RGB order.

    Raises:
        VideoDecodeError: the file is missing, empty, a directory, not a video, damaged or truncated so that no
            frame decodes, too large, too slow to decode, or shorter than a requested frame index. The message
            names the file and the reason.
        ValueError: invalid arguments (they are quoted).

    Example:
        >>> clip = read_video("clip.mp4", frame_indices=range(0, 64, 8))  # 8 frames at stride 8
        >>> clip.shape, clip.dtype
        ((8, 256, 340, 3), dtype('uint8'))
    """
    if frame_indices is None:
        if max_frames is not None and (not isinstance(max_frames, (int, np.integer)) or max_frames <= 0):
            raise ValueError(f"`max_frames` must be a positive int or None. Received: max_frames={max_frames!r}")
        stop_after = None if max_frames is None else int(max_frames) - 1
        frames, count, _ = _decode(path, stop_after=stop_after, backend=backend, max_pixels=max_pixels,
                                   timeout=timeout, num_threads=num_threads)
        return np.stack([frames[i] for i in range(count)])

    indices = _as_indices(frame_indices)
    if max_frames is not None:
        raise ValueError(
            f"Pass either `frame_indices` or `max_frames`, not both. Received: max_frames={max_frames!r}"
        )
    last = int(indices.max())
    frames, count, _ = _decode(path, wanted=set(indices.tolist()), stop_after=last, backend=backend,
                               max_pixels=max_pixels, timeout=timeout, num_threads=num_threads)
    if count <= last:
        raise VideoDecodeError(
            path, f"frame {last} was requested but the video has only {count} decodable frames"
        )
    return gather_frames(frames, indices)


def gather_frames(frames, indices):
    """Stack `frames[i]` for `i` in `indices` into one preallocated `(len(indices), H, W, 3)` array.

    `frames` is a sequence or an index -> frame mapping (what the sequential decoder keeps).
    """
    indices = np.asarray(indices, dtype=np.int64)
    first = frames[int(indices[0])]
    out = np.empty((len(indices),) + first.shape, dtype=first.dtype)
    for j, i in enumerate(indices.tolist()):
        out[j] = frames[i]
    return out


def _as_indices(frame_indices):
    try:
        indices = np.asarray(list(frame_indices) if not isinstance(frame_indices, np.ndarray) else frame_indices)
    except TypeError:
        raise ValueError(
            f"`frame_indices` must be a 1-D sequence of ints. Received: frame_indices={frame_indices!r}"
        ) from None
    if indices.ndim != 1 or indices.size == 0 or not np.issubdtype(indices.dtype, np.integer) or indices.min() < 0:
        raise ValueError(
            "`frame_indices` must be a non-empty 1-D sequence of ints >= 0. "
            f"Received: frame_indices={frame_indices!r}"
        )
    return indices.astype(np.int64)


# --------------------------------------------------------------------------------------------------------------
# Frame counts, by decoding (cached per file content stamp).

_COUNT_CACHE = {}
_COUNT_CACHE_LOCK = threading.Lock()
_COUNT_CACHE_SIZE = 100_000


def _stamp(path):
    st = os.stat(path)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns)


def cached_frame_count(path):
    """The decoded frame count of `path` if an earlier decode recorded it (and the file is unchanged), else None."""
    try:
        key = _stamp(os.fspath(path))
    except OSError:
        return None
    with _COUNT_CACHE_LOCK:
        return _COUNT_CACHE.get(key)


def remember_frame_count(path, count):
    """Record the decoded frame count of `path` (used by the pipelines after a full sequential decode)."""
    try:
        key = _stamp(os.fspath(path))
    except OSError:
        return
    with _COUNT_CACHE_LOCK:
        if len(_COUNT_CACHE) >= _COUNT_CACHE_SIZE:
            _COUNT_CACHE.pop(next(iter(_COUNT_CACHE)))
        _COUNT_CACHE[key] = int(count)


def count_frames(path, *, backend="opencv", max_pixels=DEFAULT_MAX_PIXELS, timeout=DEFAULT_TIMEOUT,
                 num_threads=None, use_cache=True):
    """Number of decodable frames of a video, counted by decoding it (never from the header).

    Args:
        path: video file.
        backend, max_pixels, timeout, num_threads: as in `read_video`.
        use_cache: reuse a count recorded for the same file (same path, size and modification time).

    Returns:
        int >= 1.

    Raises:
        VideoDecodeError: as `read_video`.

    Example:
        >>> count_frames("clip.mp4")
        300
    """
    if use_cache:
        cached = cached_frame_count(path)
        if cached is not None:
            return cached
    _, count, _ = _decode(path, wanted=set(), backend=backend, max_pixels=max_pixels, timeout=timeout,
                          num_threads=num_threads)
    remember_frame_count(path, count)
    return count


def read_frames_for(path, select, *, max_buffer_bytes=512 * 2**20, backend="opencv",
                    max_pixels=DEFAULT_MAX_PIXELS, timeout=DEFAULT_TIMEOUT, num_threads=None):
    """Decode the frames that `select(num_frames)` asks for, where `num_frames` is the true decoded count.

    When the count is already cached, one pass decodes up to the last needed frame. Otherwise one pass decodes and
    keeps every frame (while they fit in `max_buffer_bytes`), learns the count, and selects; a longer video gets a
    counting pass and then a selective pass. Sampling positions therefore always come from decoded counts.

    Args:
        path: video file.
        select: callable `num_frames -> indices` (an int array of any shape, values in `[0, num_frames)`).
        max_buffer_bytes: memory allowed for holding a whole decoded video. Defaults to 512 MiB.
        backend, max_pixels, timeout, num_threads: as in `read_video`.

    Returns:
        `(frames, indices, num_frames)`: `frames` has shape `indices.shape + (H, W, 3)`.
    """
    options = dict(backend=backend, max_pixels=max_pixels, timeout=timeout, num_threads=num_threads)
    count = cached_frame_count(path)
    frames = None
    if count is None:
        frames, count, _ = _decode(path, max_buffer_bytes=max_buffer_bytes, **options)
        remember_frame_count(path, count)
    indices = np.asarray(select(count), dtype=np.int64)
    if indices.size == 0 or indices.min() < 0 or indices.max() >= count:
        raise ValueError(
            f"The sampler returned indices outside [0, {count}). Received: indices={indices.tolist()!r}"
        )
    flat = indices.reshape(-1)
    if frames is None:
        frames, decoded, _ = _decode(path, wanted=set(flat.tolist()), stop_after=int(flat.max()), **options)
        if decoded <= flat.max():  # the file changed, or decoding is not repeatable
            raise VideoDecodeError(
                path, f"frame {int(flat.max())} was requested but a second pass decoded only {decoded} frames"
            )
    out = gather_frames(frames, flat)
    return out.reshape(indices.shape + out.shape[1:]), indices, count

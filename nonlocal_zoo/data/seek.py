"""Seek-based frame-exact access to long videos: frames `[a, b)` without decoding everything before `a`.

`read_video` decodes from the first frame, so a window at minute 50 costs 50 minutes of decoding. Here a video's
frames are indexed by the one demux-only PyAV pass `read_video` already makes (`video_io.container_index`: packet
pts, dts and keyframe flags, nothing decoded, cached per file and invalidated when the file changes), and a read
seeks to the last keyframe at or before the first wanted frame and decodes forward only as far as needed.

The rules (also in `SeekReader`'s docstring):

- **Frame `k`** is the `k`-th frame in presentation order: the `k`-th smallest pts among the frames the container
  holds (packets an edit list discards and empty packets are not frames). That is the frame sequential decoding
  gives as frame `k`, also for files whose frames are stored out of order (B-frames) and for variable-frame-rate
  files. Decoded frames are identified by their own pts, never by counting after a seek, so an imprecise seek
  cannot shift them; a wanted frame that does not come out after a seek makes the reader seek one keyframe earlier
  (and in the end decode from the start) before it gives up with `VideoDecodeError`.
- **Timestamps** are the frames' own presentation times: `(pts - stream start) * time_base` seconds, the clock of
  `read_video`'s damage checks (the first frame of most files is at 0). A frame ends where the next one starts; the
  last one ends after its packet's duration (or the median frame gap when the container states none).
- **Fallback**: files PyAV cannot index (no container, no pts) are read with OpenCV, forward only (a backward read
  reopens the file), frames numbered in decoding order and timestamps from OpenCV's `CAP_PROP_POS_MSEC`; a raw
  stream that carries no timestamps at all gets `k / fps` and says so (`timestamp_source == "frame_rate"`).

Example:
    >>> from nonlocal_zoo.data import SeekReader
    >>> with SeekReader("long.mp4") as reader:
    ...     frames = reader.read(range(90_000, 90_064))      # uint8 (64, H, W, 3): a minute-50 window
    ...     start, end = reader.starts[90_000], reader.ends[90_063]
"""
import os
import threading
import time
from typing import NamedTuple

import numpy as np

from nonlocal_zoo.data.video_io import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_TIMEOUT,
    NO_TIMESTAMP,
    VideoDecodeError,
    container_index,
)

BACKENDS = ("auto", "pyav", "opencv")
_RETRIES = 2  # earlier keyframes tried when a wanted frame does not come out after a seek, before decoding from 0
_MIN_SKIP = 16  # seek forward only past more frames than this: decoding a few frames is cheaper than a decoder flush


class FrameIndex(NamedTuple):
    """The frames of a video in presentation order, from its container (no decoding). See `frame_index`.

    Attributes:
        pts: int64 `(N,)` presentation timestamps in `time_base` units, ascending: frame `k` has `pts[k]`.
        keyframes: int64 `(K,)` ascending frame numbers of the keyframes (frames a decoder can start from).
        seek_targets: int64 `(K,)` the timestamp to seek to for each keyframe (its pts).
        starts: float64 `(N,)` start of each frame in s from the stream start.
        ends: float64 `(N,)` end of each frame in s (the next frame's start; the last one's duration).
        time_base: `fractions.Fraction`, seconds per pts unit.
        start: the stream's start time in `time_base` units.
    """

    pts: np.ndarray
    keyframes: np.ndarray
    seek_targets: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    time_base: object
    start: int

    @property
    def num_frames(self):
        return len(self.pts)

    def keyframe_before(self, k):
        """Position in `keyframes` of the last keyframe at or before frame `k` (0 when none is)."""
        return max(int(np.searchsorted(self.keyframes, k, side="right")) - 1, 0)


def frame_index(path, *, timeout=DEFAULT_TIMEOUT):
    """The presentation-order frame index of a video from one demux-only pass, or None if PyAV cannot build it.

    Built from `video_io.container_index` (cached per file path, size and modification time, so a changed file is
    indexed again). None when PyAV cannot open the file, FFmpeg read it as a raw stream without a container, a
    packet has no pts, or two frames share a pts: such files are read with OpenCV (see `SeekReader`).

    Args:
        path: video file.
        timeout: wall-clock limit in seconds for the demux pass. Defaults to 60.

    Returns:
        A `FrameIndex`, or None.

    Example:
        >>> index = frame_index("clip.mp4")
        >>> index.num_frames, index.keyframes[:3], index.starts[:2]
        (300, array([  0, 250]), array([0.  , 0.04]))
    """
    info = container_index(path, timeout=timeout)
    if info is None or info.raw_fallback or not info.packets or info.packet_pts is None or not info.time_base:
        return None
    pts = info.packet_pts
    if np.any(pts == NO_TIMESTAMP):
        return None
    order = np.argsort(pts, kind="stable")
    sorted_pts = pts[order]
    if np.any(np.diff(sorted_pts) <= 0):
        return None  # repeated timestamps: frames could not be told apart by pts
    position = np.empty(len(pts), dtype=np.int64)
    position[order] = np.arange(len(pts))  # packet (file order) -> frame number (presentation order)
    key_packets = np.flatnonzero(info.packet_keyframe)
    if key_packets.size == 0:
        key_packets = np.array([0])
    keyframes = position[key_packets]
    # Seek by the keyframe's pts: FFmpeg's demuxers index keyframes by presentation time (mov's index holds them at
    # their pts once its edit list is applied; the dts of a B-frame stream start below it and land a keyframe early).
    targets = pts[key_packets]
    sort = np.argsort(keyframes, kind="stable")
    keyframes, targets = keyframes[sort], targets[sort]
    if keyframes[0] != 0:  # frames before the first keyframe: reached by a seek to the start
        keyframes = np.concatenate([[0], keyframes])
        targets = np.concatenate([[min(int(sorted_pts[0]), int(targets.min()))], targets])
    tb = float(info.time_base)
    starts = (sorted_pts - info.start) * tb
    last_duration = int(info.packet_duration[order[-1]])
    if last_duration <= 0 or last_duration == NO_TIMESTAMP:
        gaps = np.diff(sorted_pts)
        last_duration = int(np.median(gaps)) if gaps.size else 0
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    ends[-1] = starts[-1] + last_duration * tb
    return FrameIndex(sorted_pts, keyframes.astype(np.int64), targets.astype(np.int64), starts, ends,
                      info.time_base, int(info.start))


class SeekReader:
    """Frame-exact random access to one video: seeks to keyframes, decodes forward, identifies frames by pts.

    Reads that move forward through the video reuse the decoder's position (no seek) unless a keyframe lies more
    than 16 frames ahead of the decoder and at or before the next wanted frame: then it seeks there, also within
    one `read` whose frames have gaps. Reading a whole video window by window costs one sequential decode; reading
    sparse windows decodes only from each window's keyframe.

    Args:
        path: video file.
        backend: `"auto"` (PyAV with the seek index when the file has one, else OpenCV), `"pyav"` (require the
            index) or `"opencv"` (forward-only sequential decoding).
        timeout: wall-clock limit in seconds for each `read` (and for building the index). None: no limit.
            Defaults to 60.
        num_threads: decoder threads (None: FFmpeg's default).
        max_pixels: largest accepted frame (width x height). Defaults to `DEFAULT_MAX_PIXELS`.

    Attributes:
        num_frames: frames the video holds (from the index, or counted by OpenCV in the fallback).
        starts, ends: float64 `(num_frames,)` each frame's start and end in s, from the frames' pts.
        backend: the backend in use (`"pyav"` or `"opencv"`).
        seeks: seeks made so far (for tests and benchmarks).
        decoded: frames decoded so far, wanted or not (for tests and benchmarks).
        timestamp_source: `"pts"` (the frames' own timestamps) or `"frame_rate"` (`k / fps`: only for raw streams
            that carry no timestamps at all, read by the OpenCV fallback).

    Raises:
        VideoDecodeError: unreadable file, or `backend="pyav"` on a file PyAV cannot index.

    Example:
        >>> with SeekReader("long.mp4") as reader:
        ...     window = reader.read(np.arange(1000, 1064, 8))     # uint8 (8, H, W, 3), frames 1000, 1008, ...
    """

    def __init__(self, path, *, backend="auto", timeout=DEFAULT_TIMEOUT, num_threads=None,
                 max_pixels=DEFAULT_MAX_PIXELS):
        if backend not in BACKENDS:
            raise ValueError(f"`backend` must be one of {BACKENDS}. Received: backend={backend!r}")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not timeout > 0):
            raise ValueError(f"`timeout` must be a positive number of seconds or None. Received: timeout={timeout!r}")
        self.path = os.fspath(path)
        self.timeout = timeout
        self.max_pixels = max_pixels
        self.seeks = 0
        self.decoded = 0
        index = None if backend == "opencv" else frame_index(self.path, timeout=timeout)
        if index is None and backend == "pyav":
            raise VideoDecodeError(self.path, "PyAV cannot index its frames (no container, or frames without pts); "
                                              "use backend='auto' or 'opencv'")
        if index is not None:
            self._impl = _PyAVSeeker(self.path, index, num_threads=num_threads, timeout=timeout)
            self.backend = "pyav"
            self.timestamp_source = "pts"
            self.starts, self.ends = index.starts, index.ends
        else:
            self._impl = _OpenCVForward(self.path, num_threads=num_threads, timeout=timeout)
            self.backend = "opencv"
            self.timestamp_source = self._impl.timestamp_source
            self.starts, self.ends = self._impl.starts, self._impl.ends
        self.num_frames = len(self.starts)

    def read(self, indices):
        """The frames at `indices` (any order, repeats allowed), uint8 RGB `(len(indices), H, W, 3)`, upright.

        Raises:
            ValueError: indices that are not ints in `[0, num_frames)` (quoted).
            VideoDecodeError: a wanted frame did not decode, or the read exceeded the time limit.
        """
        indices = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)
        if indices.ndim != 1 or indices.size == 0 or not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(f"`indices` must be a non-empty 1-D sequence of ints. Received: {indices!r:.200}")
        if indices.min() < 0 or indices.max() >= self.num_frames:
            raise ValueError(f"Frame indices must be in [0, {self.num_frames}) for '{self.path}'. Received: "
                             f"min {int(indices.min())}, max {int(indices.max())}")
        deadline = None if self.timeout is None else time.monotonic() + float(self.timeout)
        wanted = sorted(set(indices.tolist()))
        frames = self._impl.frames(wanted, deadline)
        first = frames[wanted[0]]
        if self.max_pixels is not None and first.shape[0] * first.shape[1] > self.max_pixels:
            raise VideoDecodeError(self.path, f"frame size {first.shape[1]}x{first.shape[0]} exceeds "
                                              f"max_pixels={self.max_pixels}")
        out = np.empty((len(indices),) + first.shape, dtype=np.uint8)
        for j, k in enumerate(indices.tolist()):
            out[j] = frames[k]
        self.seeks, self.decoded = self._impl.seeks, self._impl.decoded
        return out

    def close(self):
        self._impl.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def read_frames(path, start, stop, *, step=1, backend="auto", timeout=DEFAULT_TIMEOUT, num_threads=None):
    """Frames `[start, stop)` (every `step`-th) of a video by seeking, with their timestamps.

    Args:
        path: video file.
        start, stop: frame range (presentation order, 0-based, `stop` exclusive, clipped to the video's length).
        step: keep every `step`-th frame. Defaults to 1.
        backend, timeout, num_threads: as in `SeekReader`.

    Returns:
        `(frames, starts, ends)`: uint8 `(F, H, W, 3)` and float64 `(F,)` start/end times in s.

    Example:
        >>> frames, starts, ends = read_frames("long.mp4", 54_000, 54_064)
    """
    with SeekReader(path, backend=backend, timeout=timeout, num_threads=num_threads) as reader:
        indices = np.arange(int(start), min(int(stop), reader.num_frames), int(step))
        if indices.size == 0:
            raise ValueError(f"Empty frame range [{start}, {stop}) of '{os.fspath(path)}' "
                             f"({reader.num_frames} frames)")
        return reader.read(indices), reader.starts[indices], reader.ends[indices]


# --------------------------------------------------------------------------------------------------------------
class _PyAVSeeker:
    def __init__(self, path, index, *, num_threads, timeout):
        import av

        self._av = av
        self.path = path
        self.index = index
        self.seeks = 0
        self.decoded = 0
        wait = timeout or 3600.0
        try:
            self._container = av.open(path, timeout=(wait, wait), metadata_errors="replace")
        except Exception as e:
            raise VideoDecodeError(path, f"PyAV/FFmpeg cannot open it ({type(e).__name__}: {e})") from None
        stream = self._stream = self._container.streams.video[0]
        if num_threads != 1:
            stream.thread_type = "AUTO"
        if num_threads:
            stream.codec_context.thread_count = int(num_threads)
        self._frames_iter = None
        self._position = -1  # frame number of the last frame the decoder put out (-1: nothing since open/seek)
        self._floor = 0  # after a seek to keyframe j: frames before it are not trusted

    def _decoded(self):
        try:
            for packet in self._container.demux(self._stream):
                try:
                    frames = packet.decode()
                except self._av.FFmpegError:
                    continue
                yield from frames
        except self._av.FFmpegError:
            return

    def _seek(self, j):
        """Seek to keyframe number `j` of the index (0: the start of the file)."""
        index = self.index
        target = int(index.seek_targets[j])
        if j == 0:
            target = min(target, int(index.pts[0]))
        self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
        self.seeks += 1
        self._frames_iter = self._decoded()
        self._position = -1
        self._floor = int(index.keyframes[j])

    def _to_rgb(self, frame):
        array = frame.to_ndarray(format="rgb24")
        degrees = round(getattr(frame, "rotation", 0) or 0)  # the display matrix, as read_video applies it
        turns = (degrees // 90) % 4 if degrees % 90 == 0 else 0
        return np.ascontiguousarray(np.rot90(array, turns)) if turns else array

    def frames(self, wanted, deadline):
        index = self.index
        out = {}
        pending = list(wanted)  # ascending
        attempts = {}
        while pending:
            k = pending[0]
            j = index.keyframe_before(k)
            tries = attempts.get(k, 0)
            if tries:  # the frame did not come out after the last seek: start further back
                j = 0 if tries > _RETRIES else max(j - tries, 0)
            continuing = self._frames_iter is not None and self._position < k and \
                self._floor <= k and int(index.keyframes[j]) <= self._position + 1 + _MIN_SKIP and not tries
            if not continuing:
                self._seek(j)
            missed = self._decode_until(pending, out, deadline, skip_gaps=not tries)
            pending = [i for i in pending if i not in out]
            if missed is not None:
                attempts[missed] = attempts.get(missed, 0) + 1
                if attempts[missed] > _RETRIES + 1:
                    raise VideoDecodeError(
                        self.path, f"frame {missed} (pts {int(index.pts[missed])}) of the container's "
                                   f"{index.num_frames} frames did not decode, also when decoding from the start")
        return out

    def _decode_until(self, pending, out, deadline, skip_gaps=True):
        """Decode forward, keeping the pending frames; stop at the last one, or (`skip_gaps`) where a keyframe lies
        between the decoder and the next pending frame, for the caller to seek there. Returns a frame that was
        skipped (did not come out), else None."""
        index = self.index
        wanted = set(pending)
        last = pending[-1]
        for frame in self._frames_iter:
            self.decoded += 1
            if frame.pts is None:
                continue
            k = int(np.searchsorted(index.pts, frame.pts))
            if k >= index.num_frames or index.pts[k] != frame.pts:
                continue  # not a frame of the index (e.g. an edit list's discarded sample)
            if k < self._floor:
                continue  # a leading frame of an open GOP: its references precede the seek point
            self._position = k
            if k in wanted and k not in out:
                out[k] = self._to_rgb(frame)
            if deadline is not None and time.monotonic() > deadline:
                raise VideoDecodeError(self.path, "seeking and decoding exceeded the time limit")
            first_missing = next((i for i in pending if i not in out), None)
            if first_missing is None:
                return None
            if k > first_missing:  # frames come out in presentation order: this one was skipped
                return first_missing
            if k >= last:
                break
            if skip_gaps and int(index.keyframes[index.keyframe_before(first_missing)]) > k + 1 + _MIN_SKIP:
                return None  # a keyframe lies between here and the next wanted frame: seeking skips the gap
        self._frames_iter = None  # end of stream
        return next((i for i in pending if i not in out), None)

    def close(self):
        self._container.close()


class _OpenCVForward:
    """Sequential OpenCV decoding that keeps its position; frames numbered in decoding order."""

    _COUNTS = {}  # stamp -> (starts, ends): one counting pass per file content
    _LOCK = threading.Lock()

    def __init__(self, path, *, num_threads, timeout):
        self.path = path
        self.num_threads = num_threads
        self.timeout = timeout
        self.seeks = 0
        self.decoded = 0
        self._cap = None
        self._position = -1
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
        with self._LOCK:
            cached = self._COUNTS.get(key)
        if cached is None:
            times = []
            self._open()
            deadline = None if timeout is None else time.monotonic() + float(timeout) * 10
            while self._cap.grab():
                ms = self._cap.get(self._cv2.CAP_PROP_POS_MSEC)
                times.append(float(ms) / 1000.0)
                if deadline is not None and time.monotonic() > deadline:
                    raise VideoDecodeError(path, "counting frames with OpenCV exceeded the time limit")
            fps = float(self._cap.get(self._cv2.CAP_PROP_FPS) or 0.0)
            self._release()
            if not times:
                raise VideoDecodeError(path, "no decodable video frames")
            starts = np.asarray(times, dtype=np.float64)
            source = "pts"
            if len(starts) > 1 and np.any(np.diff(starts) <= 0):  # a raw stream: no timestamps at all
                starts = np.arange(len(starts), dtype=np.float64) / (fps if 0 < fps < 1000 else 25.0)
                source = "frame_rate"
            gaps = np.diff(starts)
            ends = np.append(starts[1:], starts[-1] + (float(np.median(gaps)) if gaps.size else 0.0))
            cached = (starts, ends, source)
            with self._LOCK:
                self._COUNTS[key] = cached
        self.starts, self.ends, self.timestamp_source = cached

    def _open(self):
        import cv2

        self._cv2 = cv2
        params = []
        if self.num_threads is not None:
            params = [cv2.CAP_PROP_N_THREADS, int(self.num_threads)]
        cap = cv2.VideoCapture(self.path, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            raise VideoDecodeError(self.path, "neither PyAV nor OpenCV/FFmpeg can open it")
        cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
        self._cap = cap
        self._position = -1

    def _release(self):
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def frames(self, wanted, deadline):
        cv2 = self._cv2 if self._cap is not None else None
        if self._cap is None or wanted[0] <= self._position:
            self._release()
            self._open()  # backwards: start again
            self.seeks += 1
            cv2 = self._cv2
        out, todo = {}, set(wanted)
        while todo:
            k = self._position + 1
            if k in todo:
                ok, frame = self._cap.read()
                if ok:
                    out[k] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                    todo.discard(k)
            else:
                ok = self._cap.grab()
            if not ok:
                raise VideoDecodeError(self.path, f"frame {k} did not decode (OpenCV, sequential)")
            self.decoded += 1
            self._position = k
            if deadline is not None and time.monotonic() > deadline:
                raise VideoDecodeError(self.path, "decoding exceeded the time limit")
        return out

    def close(self):
        self._release()


__all__ = ["FrameIndex", "SeekReader", "frame_index", "read_frames"]

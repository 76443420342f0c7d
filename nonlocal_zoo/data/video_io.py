"""Frame-exact video decoding: OpenCV (default) or PyAV, to uint8 RGB `(F, H, W, 3)`.

Header metadata lies (`CAP_PROP_FRAME_COUNT` is an estimate, sometimes negative) and `CAP_PROP_POS_FRAMES` seeks
land on key frames, so this module never seeks: it decodes sequentially from the first frame and a frame's index is
its position in decoding order (`research/perf_reliability.md` §6, `research/ecosystem.md` §4.2).

Decoding order is only the true frame order when nothing was lost, so before decoding the container is demuxed
once with PyAV (packets only, nothing decoded: milliseconds) and each decoded frame's timestamp is matched to the
container's frame list. The rules (also in `read_video`'s docstring):

- **Damage** is a frame missing before or between decoded frames (every later frame would be shifted), a frame the
  file holds but the decoder could not decode at its end, or a container header FFmpeg could not read so that it
  fell back to a raw elementary stream without any frame index (e.g. an `.mp4` whose first bytes are zeroed). It
  raises `VideoDecodeError` naming the file and both counts, or, with `on_damage="warn"`, returns what was decoded
  and warns (`VideoDamageWarning`) with the missing frames.
- **Not damage**: a file cut short (the header lists more frames than the file holds, or the last packet is cut):
  its first frames are exact, the video is just shorter. Packets an edit list discards and empty packets are not
  frames. Files without a container index (raw streams named `.h264`, `.m4v`, ...) are not checked.
- **Memory**: the frame count and size known before decoding bound the output; a read that would exceed
  `max_bytes` (default 4 GiB, env `NONLOCAL_ZOO_MAX_VIDEO_BYTES`) is refused before any frame is decoded.
- **Rotation**: both backends apply the container's display matrix (rotation metadata of phone videos), so they
  return the frames upright as players show them, in the same orientation.

Every way a file can be unreadable ends in one typed error, `VideoDecodeError`, which names the file and the reason.
"""
import fractions
import os
import threading
import time
import warnings
from typing import NamedTuple, Optional

import numpy as np

DEFAULT_MAX_PIXELS = 4096 * 4096
"""Largest frame (width x height) decoded by default; checked on the header before any frame is decoded."""

DEFAULT_TIMEOUT = 60.0
"""Default wall-clock limit, in seconds, for opening and decoding one file."""

DEFAULT_MAX_BYTES = 4 * 2**30
"""Default cap (bytes) on the frames one `read_video` call returns; `NONLOCAL_ZOO_MAX_VIDEO_BYTES` overrides it."""

MAX_BYTES_ENV = "NONLOCAL_ZOO_MAX_VIDEO_BYTES"
"""Environment variable that sets the default `max_bytes` (an int number of bytes)."""

BACKENDS = ("opencv", "pyav")
ON_DAMAGE = ("raise", "warn")


class VideoDecodeError(ValueError):
    """A video file could not be decoded. `path` and `reason` are attributes; `str()` names both.

    For damaged files (see `read_video`), `decoded_frames` (frames decoded), `container_frames` (frames the container
    holds, None when unknown) and `missing_frames` (container indices that did not decode, None when they cannot be
    told) are set too; otherwise they are None.

    Example:
        >>> try:
        ...     read_video("missing.mp4")
        ... except VideoDecodeError as e:
        ...     print(e.path, e.reason)
    """

    def __init__(self, path, reason, *, decoded_frames=None, container_frames=None, missing_frames=None):
        self.path = None if path is None else os.fspath(path)
        self.reason = str(reason)
        self.decoded_frames = decoded_frames
        self.container_frames = container_frames
        self.missing_frames = missing_frames
        super().__init__(f"Cannot decode video '{self.path}': {self.reason}")

    def __reduce__(self):  # picklable across processes despite the keyword-only attributes
        return (type(self), (self.path, self.reason), self.__dict__)


class VideoDamageWarning(UserWarning):
    """Issued by `read_video(..., on_damage="warn")` when frames of a damaged file are missing."""


# --------------------------------------------------------------------------------------------------------------
# The container, demuxed once with PyAV (no decoding): its format, frame size and the timestamps of the frames it
# holds. This is the "index" that decoded frames are checked against.

# Extensions whose container FFmpeg must recognise; reading such a file as anything else (a raw elementary stream)
# means its header is damaged. Ambiguous extensions (.m4v, .mpg, .ts: also used for raw streams) are left out.
_CONTAINER_OF_EXTENSION = {
    ".mp4": "mp4", ".mov": "mov", ".3gp": "3gp", ".3g2": "3g2", ".avi": "avi", ".mkv": "matroska",
    ".webm": "webm", ".flv": "flv", ".wmv": "asf", ".asf": "asf", ".ogv": "ogg",
}


class _Container(NamedTuple):
    format: str  # FFmpeg's demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    width: int
    height: int
    header_frames: Optional[int]  # the frame count the header states (None when it states none)
    packets: int  # video frames (non-empty, non-discarded packets) the file actually holds
    timestamps: Optional[np.ndarray]  # their presentation times in s from the stream start, sorted; None if unknown
    cut: bool  # the file ends inside its last frame, or holds fewer frames than its header states
    raw_fallback: Optional[str]  # the container expected from the extension when FFmpeg fell back to a raw stream
    complete: bool  # every packet was read (False: demuxing stopped at `limit`, `packets` is a lower bound)
    # Per packet, in file (decoding) order, for seeking (`container_index`, `nonlocal_zoo.data.seek`): pts, dts,
    # keyframe flag and duration in `time_base` units (None entries become INT64_MIN), `start` the stream start.
    packet_pts: Optional[np.ndarray] = None
    packet_dts: Optional[np.ndarray] = None
    packet_keyframe: Optional[np.ndarray] = None
    packet_duration: Optional[np.ndarray] = None
    time_base: Optional[object] = None  # fractions.Fraction
    start: int = 0


_PROBE_CACHE = {}
_PROBE_CACHE_LOCK = threading.Lock()
_PROBE_CACHE_SIZE = 4096
_REORDER_MARGIN = 64  # packets demuxed past the last needed frame: more than any decoder's reordering delay


def _probe(path, deadline, timeout, limit=None):
    """Demux `path` with PyAV, decoding nothing. None when PyAV is missing or cannot open it (the backend reports).

    `limit` stops after that many packets (a partial read of a long file needs only the start of its index).
    """
    try:
        key = _stamp(path)
    except OSError:
        key = None
    with _PROBE_CACHE_LOCK:
        if key in _PROBE_CACHE:  # only complete probes are cached
            return _PROBE_CACHE[key]
    try:
        import av
    except ImportError:  # pragma: no cover - `av` is a dependency; without it only the decoder's own checks run
        return None
    try:
        container = av.open(path, timeout=(timeout, timeout), metadata_errors="replace")
    except Exception:  # av.FFmpegError, OSError, ...: not a container PyAV reads; the decoding backend decides
        return None
    with container:
        if not container.streams.video:
            return None
        stream = container.streams.video[0]
        fmt = container.format.name
        expected = _CONTAINER_OF_EXTENSION.get(os.path.splitext(path)[1].lower())
        raw_fallback = expected if expected is not None and expected not in _container_names(fmt) else None
        start = stream.start_time or 0
        time_base = float(stream.time_base) if stream.time_base else None
        exact_time_base = fractions.Fraction(stream.time_base) if stream.time_base else None  # copied while open
        pts, dts, keys, durations, packets, cut, complete = [], [], [], [], 0, False, True
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:  # the flush packet; samples an edit list drops
                    continue
                if limit is not None and packets >= limit:
                    complete = False
                    break
                packets += 1
                pts.append(packet.pts)
                dts.append(packet.dts)
                keys.append(bool(packet.is_keyframe))
                durations.append(packet.duration)
                cut = bool(packet.is_corrupt)  # set on the last packet when the file ends inside it
                if deadline is not None and packets % 256 == 0 and time.monotonic() > deadline:
                    raise VideoDecodeError(path, f"reading the container exceeded the time limit of {timeout} s")
        except VideoDecodeError:
            raise
        except Exception:  # a demuxing error ends the readable part, as for the decoders
            cut = True
        header_frames = int(stream.frames) if stream.frames and stream.frames > 0 else None
        cut = complete and (cut or (header_frames is not None and header_frames > packets))
        timestamps = None
        if packets and time_base and all(p is not None for p in pts):
            timestamps = np.sort((np.asarray(pts, dtype=np.float64) - start) * time_base)
        width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
    info = _Container(fmt, width, height, header_frames, packets, timestamps, cut, raw_fallback, complete,
                      _int64(pts), _int64(dts), np.asarray(keys, dtype=bool), _int64(durations),
                      exact_time_base, int(start))
    if key is not None and complete:
        with _PROBE_CACHE_LOCK:
            if len(_PROBE_CACHE) >= _PROBE_CACHE_SIZE:
                _PROBE_CACHE.pop(next(iter(_PROBE_CACHE)))
            _PROBE_CACHE[key] = info
    return info


NO_TIMESTAMP = np.iinfo(np.int64).min
"""Marks a packet without a pts/dts/duration in `container_index`'s arrays."""


def _int64(values):
    return np.asarray([NO_TIMESTAMP if v is None else v for v in values], dtype=np.int64)


def container_index(path, *, timeout=DEFAULT_TIMEOUT):
    """The container's packet list of a video, from one demux-only PyAV pass (nothing decoded), cached per file.

    This is the index `read_video` checks decoded frames against, complete (every packet). It is cached in memory
    beside the decoded frame counts, keyed by the file's path, size and modification time, so a changed file is
    demuxed again.

    Args:
        path: video file.
        timeout: wall-clock limit in seconds for the demux pass. Defaults to 60.

    Returns:
        None when PyAV cannot open the file (use a decoding backend instead), else a named tuple with, among
        others, `packets` (frames the file holds), `timestamps` (their sorted presentation times in s from the
        stream start, or None), `packet_pts`, `packet_dts`, `packet_keyframe`, `packet_duration` (per packet in
        file order; `NO_TIMESTAMP` where the container has none), `time_base` (a `Fraction`) and `start` (the
        stream's start time in `time_base` units).

    Raises:
        VideoDecodeError: the file is missing, unreadable, empty, or the pass exceeded `timeout`.

    Example:
        >>> info = container_index("clip.mp4")
        >>> info.packets, int(info.packet_keyframe.sum())
        (300, 12)
    """
    path = _check_file(path)
    deadline = None if timeout is None else time.monotonic() + float(timeout)
    return _probe(path, deadline, timeout or 3600.0)


def _container_names(fmt):
    """The containers an FFmpeg demuxer name covers: "mov,mp4,m4a,3gp,3g2,mj2" -> {"mov", "mp4", ...}."""
    return set(fmt.split(","))


# --------------------------------------------------------------------------------------------------------------
# Backends. Each reader exposes `width`/`height` and `header_frames` from the header (0 when unknown), `grab()`
# (decode one frame, return False at the end), `read()` (decode one frame, return it as uint8 RGB, upright, or None
# at the end), `timestamp()` (presentation time in s from the stream start of the frame just decoded, or None) and
# `errors` (packets the decoder rejected).


class _OpenCVReader:
    def __init__(self, path, *, timeout, num_threads):
        import cv2

        self._cv2 = cv2
        self.errors = 0  # OpenCV stops at the first packet its decoder rejects and does not report it
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
        cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)  # apply the display matrix (OpenCV's default, made explicit)
        self._cap = cap
        self.width = max(int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), 0)
        self.height = max(int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0), 0)
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.header_frames = int(count) if 0 < count < 2**40 else 0

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

    def timestamp(self):
        # (pts - stream start_time) * time_base, in ms: the same clock as the probe's timestamps
        ms = self._cap.get(self._cv2.CAP_PROP_POS_MSEC)
        return None if ms is None or not np.isfinite(ms) else ms / 1000.0

    def close(self):
        self._cap.release()


class _PyAVReader:
    def __init__(self, path, *, timeout, num_threads):
        try:
            import av
        except ImportError:
            raise ImportError("backend='pyav' needs PyAV: `pip install av`.") from None
        self._av = av
        self.errors = 0
        try:
            self._container = av.open(path, timeout=(timeout, timeout), metadata_errors="replace")
        except Exception as e:  # av.FFmpegError subclasses, OSError, UnicodeDecodeError from odd metadata
            raise VideoDecodeError(path, f"PyAV/FFmpeg cannot open it ({type(e).__name__}: {e})") from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoDecodeError(path, "the file has no video stream")
        stream = self._stream = self._container.streams.video[0]
        if num_threads != 1:
            stream.thread_type = "AUTO"
        if num_threads:
            stream.codec_context.thread_count = int(num_threads)
        self.width = int(stream.codec_context.width or 0)
        self.height = int(stream.codec_context.height or 0)
        self.header_frames = int(stream.frames or 0)
        self._start = stream.start_time or 0
        self._time_base = stream.time_base
        self._frames = self._decoded_frames()
        self._time = None

    def _decoded_frames(self):
        # Packet by packet, so that a packet the decoder rejects is counted and skipped (like FFmpeg's own tools)
        # instead of ending the video; the timestamps then tell which frames are missing.
        try:
            for packet in self._container.demux(self._stream):
                try:
                    frames = packet.decode()
                except self._av.FFmpegError:
                    self.errors += 1
                    continue
                yield from frames
        except self._av.FFmpegError:  # a demuxing error ends the readable part
            return

    def _next(self):
        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        except Exception:  # anything else ends the decodable part, as it does for OpenCV
            return None
        self._time = None if frame.pts is None else float((frame.pts - self._start) * self._time_base)
        return frame

    def grab(self):
        return self._next() is not None

    def read(self):
        frame = self._next()
        if frame is None:
            return None
        try:
            array = frame.to_ndarray(format="rgb24")
        except Exception:
            return None
        # The display matrix (side data): rotate counter-clockwise by `rotation` degrees, as OpenCV does; like
        # OpenCV, only multiples of 90 degrees (other angles come from damaged or skewed matrices) and no flips.
        degrees = round(getattr(frame, "rotation", 0) or 0)
        turns = (degrees // 90) % 4 if degrees % 90 == 0 else 0
        return np.ascontiguousarray(np.rot90(array, turns)) if turns else array

    def timestamp(self):
        return self._time

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


def _check_options(backend, max_pixels, timeout, num_threads, on_damage="raise"):
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}. Received: backend={backend!r}")
    if max_pixels is not None and (not isinstance(max_pixels, (int, np.integer)) or max_pixels <= 0):
        raise ValueError(f"`max_pixels` must be a positive int or None. Received: max_pixels={max_pixels!r}")
    if timeout is not None and (not isinstance(timeout, (int, float)) or not timeout > 0):
        raise ValueError(f"`timeout` must be a positive number of seconds or None. Received: timeout={timeout!r}")
    if num_threads is not None and (not isinstance(num_threads, (int, np.integer)) or num_threads < 0):
        raise ValueError(f"`num_threads` must be a non-negative int or None. Received: num_threads={num_threads!r}")
    if on_damage not in ON_DAMAGE:
        raise ValueError(f"`on_damage` must be one of {ON_DAMAGE}. Received: on_damage={on_damage!r}")


def _resolve_max_bytes(max_bytes):
    """`max_bytes` as given, else `$NONLOCAL_ZOO_MAX_VIDEO_BYTES`, else `DEFAULT_MAX_BYTES`."""
    if max_bytes is None:
        value = os.environ.get(MAX_BYTES_ENV, "").strip()
        if not value:
            return DEFAULT_MAX_BYTES
        try:
            max_bytes = int(float(value)) if "e" in value.lower() else int(value)
        except ValueError:
            max_bytes = None
        if max_bytes is None or max_bytes <= 0:
            raise ValueError(f"{MAX_BYTES_ENV} must be a positive number of bytes. Received: {MAX_BYTES_ENV}={value!r}")
        return max_bytes
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes <= 0:
        raise ValueError(f"`max_bytes` must be a positive int or None. Received: max_bytes={max_bytes!r}")
    return int(max_bytes)


def _check_pixels(path, width, height, max_pixels, where):
    if max_pixels is not None and width * height > max_pixels:
        raise VideoDecodeError(
            path,
            f"frame size {width}x{height} ({width * height} pixels, {where}) exceeds max_pixels={max_pixels}; "
            "pass a larger max_pixels to decode it",
        )


def _gib(num_bytes):
    return f"{num_bytes / 2**30:.2f} GiB" if num_bytes >= 2**28 else f"{num_bytes / 2**20:.1f} MiB"


def _too_large(path, num_bytes, max_bytes, what):
    return VideoDecodeError(
        path,
        f"{what} about {_gib(num_bytes)} ({num_bytes} bytes), more than max_bytes={max_bytes} ({_gib(max_bytes)}); "
        f"pass a larger max_bytes= (or set {MAX_BYTES_ENV}), or read fewer frames with frame_indices= or max_frames=",
    )


def _ranges(indices):
    """[0, 1, 2, 3, 7, 9, 10] -> '0-3, 7, 9-10' (at most 12 runs shown)."""
    runs = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs[:12])
    return text + (f", ... ({len(runs) - 12} more runs)" if len(runs) > 12 else "")


def _positions(index_times, times):
    """Container index (0-based, presentation order) of each decoded frame, matched by timestamp; None if unusable."""
    if index_times is None or not times or any(t is None for t in times):
        return None
    times = np.asarray(times, dtype=np.float64)
    gaps = np.diff(index_times)
    gaps = gaps[gaps > 0]
    tolerance = max(0.45 * float(gaps.min()), 1e-6) if gaps.size else 0.5
    right = np.searchsorted(index_times, times).clip(0, len(index_times) - 1)
    left = (right - 1).clip(0, len(index_times) - 1)
    pick = np.where(np.abs(index_times[left] - times) <= np.abs(index_times[right] - times), left, right)
    if np.any(np.abs(index_times[pick] - times) > tolerance) or np.any(np.diff(pick) <= 0):
        return None  # timestamps that do not match the index (or repeat): fall back to counting
    return pick.tolist()


def _find_damage(info, times, count, reached_end, errors):
    """`(reason, missing_frames or None, container_frames or None)` when frames are missing, else None."""
    if info is None:
        return None
    if info.raw_fallback:
        reason = (
            f"FFmpeg did not find its {info.raw_fallback} container (the header is damaged, e.g. its first bytes "
            f"zeroed or overwritten) and read the file as a raw '{info.format}' stream, which has no frame index: "
            f"{count} frames decoded, the container's frame count is unknown, and the frames before the first "
            "readable one are lost, which would shift every later frame"
        )
        return reason, None, None
    total = info.packets  # with an incomplete probe, a lower bound (it covers every frame a partial read needs)
    if total == 0:
        return None
    positions = _positions(info.timestamps, times)
    if positions is None:
        if count >= total or not reached_end or (info.cut and total - count <= 1):
            return None
        missing, last = None, count - 1  # counts disagree but the timestamps cannot tell which frames
    else:
        last = positions[-1] if positions else -1
        missing = sorted(set(range(last + 1)) - set(positions))
        tail = total - (last + 1)
        if reached_end and tail > 0 and not (info.cut and tail <= 1):  # a file cut inside its last frame is fine
            missing += range(last + 1, total)
        if not missing:
            return None
    header = f" (its header states {info.header_frames})" if info.header_frames not in (None, total) else ""
    holds = f"holds {total}" if info.complete else f"holds at least {total}"
    rejected = f"; the decoder rejected {errors} packets" if errors else ""
    if missing is None:
        where = f"{total - count} frames did not decode (which ones cannot be told: no usable timestamps)"
    else:
        where = f"frames {_ranges(missing)} did not decode"
        if missing[0] < last:
            where += ", so the later frames would be shifted"
    reason = f"decoded {count} frames but the container {holds}{header}: {where}{rejected}"
    return reason, missing, total


def _decode(path, *, wanted=None, stop_after=None, max_buffer_bytes=None, backend="opencv",
            max_pixels=DEFAULT_MAX_PIXELS, timeout=DEFAULT_TIMEOUT, num_threads=None, on_damage="raise",
            kept=None, max_bytes=None):
    """Decode sequentially from frame 0. The one loop behind `read_video`, `count_frames` and the pipelines.

    Args:
        wanted: None keeps every frame; a set keeps only those indices (others are grabbed, not converted).
        stop_after: last frame index to decode (inclusive); None decodes to the end.
        max_buffer_bytes: with `wanted=None`, stop keeping frames once they would exceed this many bytes and only
            count the rest (the returned `frames` is then None).
        on_damage: `"raise"` or `"warn"`, see `read_video`.
        kept: callable `num_frames -> frames the caller returns`, used with the header's frame count and size to
            refuse a read larger than `max_bytes` before decoding. None: no bound.
        max_bytes: that bound, in bytes (resolved). Also enforced while decoding, for headers that lie.

    Returns:
        `(frames, num_decoded, reached_end)`: `frames` maps index -> uint8 RGB frame (or is None, see above),
        `num_decoded` counts the frames decoded, `reached_end` tells whether decoding reached the end of the video.
    """
    path = _check_file(path)
    _check_options(backend, max_pixels, timeout, num_threads, on_damage)
    start = time.monotonic()
    deadline = None if timeout is None else start + float(timeout)
    limit = None if stop_after is None else stop_after + 1 + _REORDER_MARGIN
    info = _probe(path, deadline, timeout or 3600.0, limit)  # demux only: the frames the container holds
    reader = _READERS[backend](path, timeout=timeout or 3600.0, num_threads=num_threads)
    try:
        _check_size_before_decoding(path, reader, info, max_pixels=max_pixels, kept=kept, max_bytes=max_bytes)
        frames, times, index, reached_end = _decode_frames(
            path, reader, wanted=wanted, stop_after=stop_after, max_buffer_bytes=max_buffer_bytes,
            max_pixels=max_pixels, max_bytes=max_bytes, deadline=deadline, timeout=timeout)
        errors = reader.errors
    finally:
        reader.close()
    _check_decoded(path, info, times, index, reached_end, errors, on_damage)
    return frames, index, reached_end


def _check_size_before_decoding(path, reader, info, *, max_pixels, kept, max_bytes):
    """Refuses, before any frame is decoded, a frame size over `max_pixels` or a read over `max_bytes`.

    Args:
        path: the video (for the error). reader: the opened `_READERS` reader. info: the `_probe` result or None.
        max_pixels, kept, max_bytes: as in `_decode`.
    """
    width, height = reader.width or (info.width if info else 0), reader.height or (info.height if info else 0)
    if width and height:  # pixel cap from the header, before anything is decoded
        _check_pixels(path, width, height, max_pixels, "from the header")
    num_frames = info.packets if info is not None and info.packets else reader.header_frames
    if kept is not None and max_bytes is not None and width and height and num_frames:
        estimate = int(kept(num_frames)) * width * height * 3
        if estimate > max_bytes:  # before anything is decoded
            at_least = "at least " if info is not None and info.packets and not info.complete else ""
            raise _too_large(
                path, estimate, max_bytes,
                f"the {int(kept(num_frames))} frames of {width}x{height} RGB requested (the container holds "
                f"{at_least}{num_frames} frames; estimated before decoding) would take",
            )


def _decode_frames(path, reader, *, wanted, stop_after, max_buffer_bytes, max_pixels, max_bytes, deadline, timeout):
    """The decoding loop: reads (or only grabs) frames from 0 to `stop_after` or the end of the video.

    Args:
        path: the video (for errors). reader: the opened reader. deadline: `time.monotonic()` limit or None.
        wanted, stop_after, max_buffer_bytes, max_pixels, max_bytes, timeout: as in `_decode`.

    Returns:
        `(frames, times, num_decoded, reached_end)`: `frames` maps index -> uint8 RGB frame (None once over
        `max_buffer_bytes`), `times` holds the decoder's timestamp of every decoded frame.
    """
    frames = {}
    times = []
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
        times.append(reader.timestamp())
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
            if max_bytes is not None and buffered > max_bytes:  # the header understated the video
                raise _too_large(path, buffered, max_bytes, f"the first {len(frames)} decoded frames take")
            if wanted is None and max_buffer_bytes is not None and buffered > max_buffer_bytes:
                frames = None  # too long to hold: from here on only count
        index += 1
        if deadline is not None and time.monotonic() > deadline:
            raise VideoDecodeError(
                path, f"decoding exceeded the time limit of {timeout} s after {index} frames"
            )
    return frames, times, index, reached_end


def _check_decoded(path, info, times, count, reached_end, errors, on_damage):
    """Raises when no frame decoded; raises (`on_damage="raise"`) or warns (`"warn"`) when frames are missing.

    Args:
        path: the video. info: the `_probe` result or None. times: decoded timestamps. count: frames decoded.
        reached_end: whether decoding reached the end. errors: packets the decoder rejected. on_damage: as `_decode`.
    """
    if count == 0:
        holds = f"; the container holds {info.packets}" if info is not None and info.packets else ""
        raise VideoDecodeError(
            path, f"no decodable video frames (the container opened but 0 frames decoded{holds})",
            decoded_frames=0, container_frames=info.packets if info is not None else None,
        )
    damage = _find_damage(info, times, count, reached_end, errors)
    if damage is not None:
        reason, missing, total = damage
        if on_damage == "raise":
            raise VideoDecodeError(
                path, reason + "; pass on_damage='warn' to use the decoded frames anyway",
                decoded_frames=count, container_frames=total, missing_frames=missing,
            )
        lost = "unknown" if missing is None else _ranges(missing)
        warnings.warn(
            f"Video '{path}' is damaged: {reason}. Using the {count} decoded frames in decoding order (frame i is "
            f"the i-th decoded frame); missing container frames: {lost}.",
            VideoDamageWarning,
            stacklevel=4,  # the caller of read_video (the function that called `_decode`)
        )


def read_video(path, *, frame_indices=None, max_frames=None, backend="opencv", max_pixels=DEFAULT_MAX_PIXELS,
               timeout=DEFAULT_TIMEOUT, num_threads=None, on_damage="raise", max_bytes=None):
    """Decode a video file to a uint8 RGB array of shape `(F, H, W, 3)`, frame-exactly.

    Frames are decoded sequentially from the first one; frame `i` of the result is the `i`-th decodable frame.
    Seeking is never used. Each decoded frame is checked against the container's own frame list (its packets and
    timestamps, read with PyAV before decoding, without decoding), so that lost frames cannot silently shift the
    others:

    - **Damage** (raises `VideoDecodeError`, or warns with `on_damage="warn"`): a frame missing before or between
      decoded frames; a frame the file holds that the decoder could not decode at its end; or a container header
      FFmpeg could not read (e.g. the first bytes of an `.mp4` zeroed), so that it fell back to a raw stream
      without a frame index and the frames before the damage are lost without trace. The error names the file,
      the decoded count, the container's count and the missing frames.
    - **Not damage**: a file cut short (its header lists more frames than it holds, or it ends inside its last
      frame) yields its first frames, which are exact. Empty packets and packets an edit list discards are not
      frames. Raw streams without a container (`.h264`, `.m4v`, ...) have no index to check against.

    **Memory** is bounded before decoding: the frame count (from the container) times the frame size (from the
    header) of the frames this call returns must fit in `max_bytes`; otherwise `VideoDecodeError` names the
    estimate and the cap before any frame is decoded (and the cap is enforced again while decoding).

    **Rotation**: both backends apply the container's display matrix (the rotation metadata phones write), so a
    rotated video comes back upright, as players show it, and OpenCV and PyAV return the same orientation.

    Args:
        path: path of the video file.
        frame_indices: optional 1-D sequence of frame indices (>= 0, repeats and any order allowed). Only frames up
            to the largest index are decoded, and the result holds exactly these frames, in this order. Defaults to
            None (every frame).
        max_frames: with `frame_indices=None`, stop after this many frames. Defaults to None (no limit).
        backend: `"opencv"` (default; `opencv-python-headless`, FFmpeg inside) or `"pyav"` (`av`).
        max_pixels: largest accepted `width * height`, checked on the header before decoding (and on the first
            decoded frame). None disables the check. Defaults to 4096 * 4096.
        timeout: wall-clock limit in seconds for the whole read (also passed to FFmpeg's open/read timeouts).
            None disables it. Defaults to 60.
        num_threads: decoder threads for this file (None: the backend's default). Pipelines that decode many files
            in parallel pass 1.
        on_damage: `"raise"` (default) or `"warn"`: return the frames that decoded, in decoding order, with a
            `VideoDamageWarning` that lists the missing container frames.
        max_bytes: largest size in bytes of the returned array. None (default) uses the environment variable
            `NONLOCAL_ZOO_MAX_VIDEO_BYTES` if set, else `DEFAULT_MAX_BYTES` (4 GiB).

    Returns:
        `np.ndarray` of dtype uint8, shape `(F, H, W, 3)`, channels in RGB order, frames upright.

    Raises:
        VideoDecodeError: the file is missing, empty, a directory, not a video, damaged (see above) or truncated so
            that no frame decodes, too large (pixels or bytes), too slow to decode, or shorter than a requested
            frame index. The message names the file and the reason.
        ValueError: invalid arguments (they are quoted).

    Example:
        >>> clip = read_video("clip.mp4", frame_indices=range(0, 64, 8))  # 8 frames at stride 8
        >>> clip.shape, clip.dtype
        ((8, 256, 340, 3), dtype('uint8'))
        >>> clip = read_video("damaged.mp4", on_damage="warn")  # VideoDamageWarning: frames 0-3 did not decode
    """
    max_bytes = _resolve_max_bytes(max_bytes)
    options = dict(backend=backend, max_pixels=max_pixels, timeout=timeout, num_threads=num_threads,
                   on_damage=on_damage, max_bytes=max_bytes)
    if frame_indices is None:
        if max_frames is not None and (not isinstance(max_frames, (int, np.integer)) or max_frames <= 0):
            raise ValueError(f"`max_frames` must be a positive int or None. Received: max_frames={max_frames!r}")
        stop_after = None if max_frames is None else int(max_frames) - 1
        limit = None if max_frames is None else int(max_frames)
        frames, count, _ = _decode(path, stop_after=stop_after,
                                   kept=lambda n: n if limit is None else min(n, limit), **options)
        out = np.empty((count,) + frames[0].shape, dtype=np.uint8)
        for i in range(count):  # frees each decoded frame as it is copied: peak memory ~ one video, not two
            out[i] = frames.pop(i)
        return out

    indices = _as_indices(frame_indices)
    if max_frames is not None:
        raise ValueError(
            f"Pass either `frame_indices` or `max_frames`, not both. Received: max_frames={max_frames!r}"
        )
    last = int(indices.max())
    frames, count, _ = _decode(path, wanted=set(indices.tolist()), stop_after=last,
                               kept=lambda n: len(indices), **options)
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
                 num_threads=None, use_cache=True, on_damage="raise"):
    """Number of decodable frames of a video, counted by decoding it (never from the header).

    Args:
        path: video file.
        backend, max_pixels, timeout, num_threads, on_damage: as in `read_video`.
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
                          num_threads=num_threads, on_damage=on_damage)
    remember_frame_count(path, count)
    return count


def read_frames_for(path, select, *, max_buffer_bytes=512 * 2**20, backend="opencv",
                    max_pixels=DEFAULT_MAX_PIXELS, timeout=DEFAULT_TIMEOUT, num_threads=None, on_damage="raise"):
    """Decode the frames that `select(num_frames)` asks for, where `num_frames` is the true decoded count.

    When the count is already cached, one pass decodes up to the last needed frame. Otherwise one pass decodes and
    keeps every frame (while they fit in `max_buffer_bytes`), learns the count, and selects; a longer video gets a
    counting pass and then a selective pass. Sampling positions therefore always come from decoded counts.

    Args:
        path: video file.
        select: callable `num_frames -> indices` (an int array of any shape, values in `[0, num_frames)`).
        max_buffer_bytes: memory allowed for holding a whole decoded video. Defaults to 512 MiB.
        backend, max_pixels, timeout, num_threads, on_damage: as in `read_video` (the pipelines pass their
            `decode_options` here, so `decode_options={"on_damage": "warn"}` reaches it).

    Returns:
        `(frames, indices, num_frames)`: `frames` has shape `indices.shape + (H, W, 3)`.
    """
    options = dict(backend=backend, max_pixels=max_pixels, timeout=timeout, num_threads=num_threads,
                   on_damage=on_damage)
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

"""Windowed features of long videos, with the exact frames and timestamps behind every row: `extract_features`.

A video is cut into windows; each window is one clip of the model's protocol and gives one feature row. The
alignment rules (docs/long_videos.md has them with a worked example):

- **Window**: `span = num_frames x sampling_rate` frames of the preset (`window=` replaces the span; it must be a
  multiple of `num_frames`, and the sampling rate becomes `window // num_frames`). Windows start at frames
  `0, stride, 2 * stride, ...` (`stride` defaults to `span`: windows that touch without overlapping).
- **Rows**: `W = 1 + ceil(max(N - span, 0) / stride)` for a video of `N` frames: the last window is the first one
  that reaches the last frame.
- **Frames of a row**: the window's clip is sampled as the preset's protocol samples one test clip from a video of
  `span` frames (`sample_test_indices(span, num_frames, sampling_rate, num_clips=1)`, e.g. offsets
  `0, r, 2r, ...` for the official protocol), plus the window's start. A frame index past the end of the video is
  replaced by the last frame (`N - 1`): the window is *padded by repeating the last frame*, and `padded[w]` says so.
  `frame_indices[w]` holds the indices after padding: exactly the frames row `w` saw.
- **Timestamps**: `timestamps[w] = (start of frame frame_indices[w, 0], end of frame frame_indices[w, -1])` in
  seconds, from the frames' own pts (`nonlocal_zoo.data.SeekReader`).
- **Pixels**: the preset's test transforms (short side, one centre crop, normalisation) with `crop="center"`, or the
  whole frame resized to the test short side with `crop="full"`.
- **Layer**: `pool5` gives `(D,)` per row; a 5-D layer (`res2`..`res5`, a non-local block, ...) is averaged over
  time and space to `(C,)`.

Output per video: `OUT/<stem>.npz` with `features` (W, D) float32, `frame_indices` (W, num_frames) int64,
`timestamps` (W, 2) float64, `padded` (W,) bool, `window_frames` (W, 2) int64 (`[start, start + span)` clipped to
the video) and `metadata` (a JSON string: model, preset, layer, window, stride, crop, ...). `OUT/manifest.jsonl` gets
one line per finished (or failed) video. Files are written atomically (temporary file + rename) and a rerun skips
the videos whose file exists.

Example:
    >>> from nonlocal_zoo import extract_features
    >>> extract_features(["talk.mp4"], "i3d_nl5_r50_8x8_kinetics400", stride=32, output_dir="feats/")
    >>> z = np.load("feats/talk.npz"); z["features"].shape, z["frame_indices"][1]
    ((1684, 2048), array([32, 40, 48, 56, 64, 72, 80, 88]))
"""
import concurrent.futures
import glob
import json
import math
import os
import queue
import threading
import time
from typing import NamedTuple

import numpy as np

from nonlocal_zoo.data import VIDEO_EXTENSIONS, SeekReader, sample_test_indices, short_side_resize
from nonlocal_zoo.tasks import VideoClassifier, VideoClassifierPreprocessor
from nonlocal_zoo.version import __version__

CROPS = ("center", "full")
DEFAULT_BATCH_SIZE = 8
MANIFEST = "manifest.jsonl"
PADDING_RULE = "windows past the last frame repeat the last frame (padded[w] is True)"
# what a video that cannot be read raises (VideoDecodeError is a ValueError); anything else is a bug and stops the run
VIDEO_ERRORS = (ValueError, OSError, RuntimeError, MemoryError)


# ---------------------------------------------------------------------------------------------------- windows
class WindowPlan(NamedTuple):
    """Where the windows of a video lie. See `window_plan`.

    Attributes:
        starts: int64 `(W,)` first frame of each window.
        frame_indices: int64 `(W, num_frames)` the frames each window's clip samples (after padding).
        padded: bool `(W,)` whether a window reached past the last frame (its tail repeats the last frame).
        window_frames: int64 `(W, 2)` `[start, min(start + span, N))`.
        span, stride, sampling_rate, num_frames: the settings used.
    """

    starts: np.ndarray
    frame_indices: np.ndarray
    padded: np.ndarray
    window_frames: np.ndarray
    span: int
    stride: int
    sampling_rate: int
    num_frames: int


def window_plan(num_video_frames, *, num_frames, sampling_rate, sampling="official", window=None, stride=None):
    """The windows of a video of `num_video_frames` frames (the rules of the module docstring).

    Args:
        num_video_frames: N, frames of the video.
        num_frames: T, frames per clip.
        sampling_rate: r, the protocol's stride between a clip's frames.
        sampling: the protocol (`"official"`, `"pyslowfast"`, `"mmaction2"`, `"gluoncv"`).
        window: frames a window spans; a multiple of T. Defaults to `T * r`.
        stride: frames between window starts. Defaults to the span.

    Returns:
        A `WindowPlan`.

    Example:
        >>> plan = window_plan(100, num_frames=4, sampling_rate=8, stride=16)
        >>> len(plan.starts), plan.frame_indices[-1].tolist(), plan.padded[-1]
        (6, [80, 88, 96, 99], True)
    """
    N, T = _positive("num_video_frames", num_video_frames), _positive("num_frames", num_frames)
    r = _positive("sampling_rate", sampling_rate)
    if window is not None:
        span = _positive("window", window)
        if span % T:
            raise ValueError(f"`window` must be a multiple of the clip's {T} frames (the sampling rate becomes "
                             f"window // {T}). Received: window={window!r}")
        r = span // T
    else:
        span = T * r
    stride = span if stride is None else _positive("stride", stride)
    count = 1 + math.ceil(max(N - span, 0) / stride)
    offsets = sample_test_indices(span, num_frames=T, sampling_rate=r, num_clips=1, sampling=sampling)[0]
    starts = np.arange(count, dtype=np.int64) * stride
    raw = starts[:, None] + offsets[None, :].astype(np.int64)  # (W, T)
    padded = (raw >= N).any(axis=1) | (starts + span > N)
    frames = np.minimum(raw, N - 1)
    window_frames = np.stack([starts, np.minimum(starts + span, N)], axis=1)
    return WindowPlan(starts, frames, padded, window_frames, span, stride, r, T)


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")
    return int(value)


def iter_windows(reader, plan, *, chunk=64):
    """Decode the frames of every window of `plan` with one forward pass of `reader`; yields `(w, frames)`.

    The union of the windows' frames is read in ascending chunks (the reader seeks only over gaps, never back);
    a decoded frame is kept until no later window needs it.

    Args:
        reader: an open `nonlocal_zoo.data.SeekReader`.
        plan: the video's `WindowPlan`.
        chunk: frames read per call.

    Yields:
        `(w, frames)` with `frames` uint8 `(num_frames, H, W, 3)` = the frames `plan.frame_indices[w]`.
    """
    needed = np.unique(plan.frame_indices)
    last_use = {}  # frame -> last window that needs it
    for w, row in enumerate(plan.frame_indices.tolist()):
        for k in row:
            last_use[k] = w
    cache, position, w = {}, 0, 0
    num_windows = len(plan.starts)
    while w < num_windows:
        row = plan.frame_indices[w]
        while int(row.max()) not in cache:
            take = needed[position:position + chunk]
            position += len(take)
            for k, frame in zip(take.tolist(), reader.read(take)):
                cache[k] = frame
        yield w, np.stack([cache[k] for k in row.tolist()])
        for k in {int(v) for v in row}:
            if last_use[k] == w:
                cache.pop(k, None)
        w += 1


# ---------------------------------------------------------------------------------------------------- pixels
class WindowViews:
    """A window's frames -> the network input, with a preprocessor's test transforms.

    The clip's frames are already sampled, so they go through the preprocessor's own test views with a sampling
    rate of 1 over exactly `num_frames` frames (which every protocol samples as the identity): the same resize,
    crops and normalisation as `evaluate`.

    Args:
        preprocessor: a `VideoClassifierPreprocessor`.
        crop: `"center"` (one centre crop of `test_crop`), `"full"` (the whole frame, short side `test_short_side`)
            or an int number of test crops (1 or 3: the preset's spatial views, as `evaluate` uses them).

    Example:
        >>> views = WindowViews(clf.preprocessor)(frames)   # float32 (1, T, S, S, 3)
    """

    def __init__(self, preprocessor, crop="center"):
        if crop not in CROPS and crop not in (1, 3):
            raise ValueError(f"`crop` must be one of {CROPS} (or 1/3 test crops). Received: crop={crop!r}")
        config = dict(preprocessor.config)
        self.config = config
        self.crop = crop
        self._pre = VideoClassifierPreprocessor(dict(config, sampling_rate=1))
        T = config["num_frames"]
        identity = sample_test_indices(T, num_frames=T, sampling_rate=1, num_clips=1, sampling=config["sampling"])
        if not np.array_equal(identity[0], np.arange(T)):  # pragma: no cover - a protocol invariant
            raise AssertionError(f"protocol {config['sampling']!r} does not sample T frames of T as the identity")

    def __call__(self, frames):
        """uint8 `(T, H, W, 3)` -> float32 `(V, T, S, S, 3)` (V = 1, or the number of crops)."""
        if self.crop == "full":
            c = self.config
            pixels = frames
            if c["decode_size"] is not None:
                from nonlocal_zoo.data import resize

                pixels = resize(pixels, c["decode_size"])
            pixels = short_side_resize(pixels, c["test_short_side"], sampling=c["sampling"])
            return self._pre.normalize(pixels[None])
        num_crops = 1 if self.crop == "center" else int(self.crop)
        return self._pre.normalize(self._pre.video_views(frames, num_clips=1, num_crops=num_crops))


def feature_model(model, layer="pool5"):
    """A `keras.Model` from the classifier's input to `layer`, 5-D outputs averaged over time and space.

    Args:
        model: a `VideoClassifier`.
        layer: a layer name of the classifier (`pool5`, `res2`..`res5`, a non-local block, `pred`, ...).

    Returns:
        A model mapping `(B, T, S, S, 3)` clips to `(B, D)` features.

    Raises:
        ValueError: unknown layer (the message lists the stage outputs and `pool5`).
    """
    import keras

    names = [lay.name for lay in model.layers]
    if layer not in names:
        stages = [n for n in names if n in ("res2", "res3", "res4", "res5", "pool5", "pred")]
        raise ValueError(f"Unknown layer {layer!r} for model '{model.name}'. Choose one of {stages} or any layer "
                         f"name of the model ({len(names)} layers).")
    output = model.get_layer(layer).output
    if len(output.shape) == 5:  # the mean in float32, also of a bfloat16 map
        output = keras.layers.GlobalAveragePooling3D(dtype="float32", name=f"{layer}_mean")(output)  # -> (B, C)
    elif len(output.shape) != 2:
        raise ValueError(f"Layer {layer!r} outputs shape {tuple(output.shape)}; features need (B, D) or "
                         "(B, T, H, W, C)")
    if output.dtype != "float32":
        output = keras.layers.Identity(dtype="float32", name=f"{layer}_float32")(output)  # bfloat16 -> float32
    return keras.Model(model.input, output, name=f"{model.name}_{layer}_features")


# ---------------------------------------------------------------------------------------------------- inputs
def expand_videos(videos):
    """Video paths from paths, folders (searched recursively) and `.txt` lists (one path a line; `#` comments;
    relative paths are relative to the list's folder). Sorted, without repeats.

    Raises:
        ValueError: an input that does not exist, an empty result, or two videos with the same file stem (their
            outputs would collide).
    """
    if isinstance(videos, (str, os.PathLike)):
        videos = [videos]
    out = []
    for item in videos:
        item = os.fspath(item)
        if os.path.isdir(item):
            for ext in VIDEO_EXTENSIONS:
                out += [p for p in glob.glob(os.path.join(glob.escape(item), "**", f"*{ext}"), recursive=True)
                        if os.path.isfile(p) and not os.path.basename(p).startswith(".")]
        elif item.lower().endswith(".txt") and os.path.isfile(item):
            base = os.path.dirname(os.path.abspath(item))
            with open(item, encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if line and not line.startswith("#"):
                        out.append(line if os.path.isabs(line) else os.path.join(base, line))
        elif os.path.exists(item) or os.path.splitext(item)[1].lower() in VIDEO_EXTENSIONS:
            out.append(item)  # a missing video file is reported in the manifest like any unreadable one
        else:
            raise ValueError(f"No such video, folder or list file: {item!r}")
    paths = sorted({os.path.normpath(p) for p in out})
    if not paths:
        raise ValueError(f"No videos found in {list(map(os.fspath, videos))!r} (extensions {VIDEO_EXTENSIONS})")
    stems = {}
    for p in paths:
        stems.setdefault(output_stem(p), []).append(p)
    clashes = {s: ps for s, ps in stems.items() if len(ps) > 1}
    if clashes:
        stem, clash = next(iter(clashes.items()))
        raise ValueError(f"{len(clashes)} file name(s) occur more than once, e.g. {stem!r}: {clash[:3]}; outputs are "
                         "named OUT/<stem>.npz, so rename them or run them into different --out folders")
    return paths


def output_stem(path):
    """The name of a video's output file without `.npz`: its file name without the extension (also of a URI).

    Example:
        >>> output_stem("gs://bucket/talks/talk.mp4")
        'talk'
    """
    return os.path.splitext(os.path.basename(os.fspath(path)))[0]


def parse_shard(shard):
    """`"I/N"` or `(I, N)` -> `(I, N)` with `0 <= I < N` (I is 0-based).

    Example:
        >>> parse_shard("1/4")
        (1, 4)
    """
    if shard is None:
        return None
    try:
        i, n = (int(v) for v in (shard.split("/") if isinstance(shard, str) else shard))
    except (ValueError, TypeError):
        raise ValueError(f"`shard` must be 'I/N' with 0 <= I < N (e.g. 0/4). Received: shard={shard!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"`shard` must be 'I/N' with 0 <= I < N (e.g. 0/4). Received: shard={shard!r}")
    return i, n


def shard_videos(paths, shard):
    """The videos of shard `(I, N)`: every N-th of the sorted list, from position I. N shards cover the list once."""
    shard = parse_shard(shard)
    return list(paths) if shard is None else list(paths)[shard[0]::shard[1]]


# ---------------------------------------------------------------------------------------------------- streaming
def stream_windows(videos, make_plan, views, *, num_workers=2, max_pending=64, decode_options=None):
    """Decode and prepare the windows of several videos on a thread pool; yields events in arrival order.

    Events: `("video", path, plan, reader_info)` before a video's windows, `("window", path, w, x)` with `x` the
    network input of window `w` (`views(frames)`), `("done", path)` after its last window and `("error", path,
    message, exception)` when a video cannot be read (the others go on).

    Args:
        videos: paths.
        make_plan: `num_video_frames -> WindowPlan`.
        views: `frames (T, H, W, 3) uint8 -> float32 (V, T, S, S, 3)`.
        num_workers: videos decoded at the same time.
        max_pending: prepared windows held at most (back-pressure on the decoders).
        decode_options: `SeekReader` keyword arguments.
    """
    events = queue.Queue(maxsize=max_pending)
    stop = threading.Event()
    options = dict(decode_options or {})

    def put(item):
        while not stop.is_set():
            try:
                events.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work(path):
        events = read_windows(path, make_plan, views, decode_options=options)
        try:
            for event in events:
                if not put(event[:1] + (path,) + event[1:]):
                    return
            put(("done", path))
        except VIDEO_ERRORS as error:
            put(("error", path, error_message(error), error))
        except BaseException as error:  # a bug: stop the run with it (never leave the consumer waiting)
            put(("fatal", path, error))
        finally:
            events.close()  # closes the reader of a video left early

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, int(num_workers)),
                                                 thread_name_prefix="nonlocal_zoo_decode")
    futures = [pool.submit(work, path) for path in videos]
    remaining = len(futures)
    try:
        while remaining:
            item = events.get()
            if item[0] == "fatal":
                raise item[2]
            if item[0] in ("done", "error"):
                remaining -= 1
            yield item
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)


def read_windows(path, make_plan, views, *, decode_options=None):
    """The windows of one video, decoded and prepared: yields `("video", plan, reader_info)` first, then
    `("window", w, x)` for every window `w` of the plan in order, `x = views(frames)`.

    `reader_info` holds what the output file needs from the decoder: `num_video_frames`, `backend`,
    `timestamp_source` and the frames' `starts`/`ends` (seconds). Both `stream_windows` (the single-machine
    `extract_features`) and the Beam pipeline (`nonlocal_zoo.beam`) read videos with it.

    Args:
        path: a local video file.
        make_plan: `num_video_frames -> WindowPlan` (see `plan_maker`).
        views: `frames (T, H, W, 3) uint8 -> float32 (V, T, S, S, 3)` (a `WindowViews`).
        decode_options: `SeekReader` keyword arguments.

    Raises:
        One of `VIDEO_ERRORS` when the video cannot be read (possibly after some windows were yielded).

    Example:
        >>> for event in read_windows("talk.mp4", plan_maker(clf.preprocessor.config), WindowViews(pre)): ...
    """
    with SeekReader(path, **dict(decode_options or {})) as reader:
        plan = make_plan(reader.num_frames)
        info = {"num_video_frames": reader.num_frames, "backend": reader.backend,
                "timestamp_source": reader.timestamp_source, "starts": reader.starts, "ends": reader.ends}
        yield "video", plan, info
        for w, frames in iter_windows(reader, plan):
            yield "window", w, views(frames)


def error_message(error):
    """The one-line message of a video's error as the manifest (and the dead-letter output) records it."""
    return " ".join(str(error).split()) or type(error).__name__


def run_padded(network, rows, batch_size):
    """`network` on `rows` in forward passes of exactly `batch_size` rows (the last padded with zeros, its padding
    dropped), so that every call has the same shape and a row's result does not depend on which rows share its batch.

    Args:
        network: `float32 (batch_size, ...) -> (batch_size, D)`, e.g. `feature_model(clf).predict_on_batch`.
        rows: a sequence of same-shaped arrays (or one stacked array).
        batch_size: rows per forward pass.

    Returns:
        numpy `(len(rows), D)`.

    Example:
        >>> run_padded(feature_model(clf).predict_on_batch, windows, 8).shape   # (len(windows), 2048)
    """
    x = np.stack(rows) if not isinstance(rows, np.ndarray) else rows
    out = []
    for start in range(0, len(x), batch_size):
        part = x[start:start + batch_size]
        n = len(part)
        if n < batch_size:
            part = np.concatenate([part, np.zeros((batch_size - n,) + part.shape[1:], part.dtype)])
        out.append(np.asarray(network(part))[:n])
    return np.concatenate(out)


class _Batcher:
    """Fixed-size batches of network inputs from several videos (padded with zeros to `batch_size`, so every call
    has the same shape and a row's result does not depend on which rows share its batch)."""

    def __init__(self, network, batch_size):
        self.network = network
        self.batch_size = batch_size
        self.rows, self.keys = [], []

    def add(self, key, x):
        self.rows.append(x)
        self.keys.append(key)
        return self.run() if len(self.rows) >= self.batch_size else []

    def run(self):
        if not self.rows:
            return []
        out = run_padded(self.network, self.rows, self.batch_size)
        done = list(zip(self.keys, out))
        self.rows, self.keys = [], []
        return done


# ---------------------------------------------------------------------------------------------------- features
def extract_features(videos, model, *, layer="pool5", window=None, stride=None, crop="center",
                     batch_size=DEFAULT_BATCH_SIZE, output_dir=None, shard=None, resume=True, num_workers=2,
                     progress=None, weights="auto", decode_options=None, dtype=None):
    """Windowed features of long videos, each row with the exact frames it saw and their timestamps.

    The rules (windows, padding, timestamps, pooling) are in the module docstring and docs/long_videos.md.
    Windows of several videos share batches; decoding (a thread pool, seek-based, frame-exact) overlaps the model.

    Args:
        videos: a path, or a list of video paths, folders (searched recursively) and `.txt` lists.
        model: a `VideoClassifier`, or what `nonlocal_zoo.inference.load_model` takes (`"demo"`, a preset name,
            a preset directory, a `.keras` file, `hf://...`).
        layer: layer whose output is the feature (`"pool5"`, `"res4"`, ...). Defaults to `"pool5"`.
        window: frames per window (a multiple of the clip's `num_frames`). Defaults to `num_frames x
            sampling_rate` of the model's preset.
        stride: frames between window starts. Defaults to the window.
        crop: `"center"` (the preset's test short side and one centre crop) or `"full"` (whole frames).
        batch_size: windows per forward pass. Defaults to 8.
        output_dir: folder for `<stem>.npz` files and `manifest.jsonl`; None returns the results in memory.
        shard: `"I/N"` or `(I, N)`: process every N-th video of the sorted list from position I (0-based).
        resume: skip videos whose output file exists (with the same settings). Defaults to True.
        num_workers: videos decoded in parallel. Defaults to 2.
        progress: show tqdm bars (videos and windows, with ETA). Defaults to True when stderr is a terminal.
        weights: passed to `load_model` when `model` is a name. Defaults to `"auto"`.
        decode_options: `SeekReader` options (`backend`, `timeout`, `num_threads`, `max_pixels`).
        dtype: compute dtype, `"float32"` or `"bfloat16"` (see `VideoClassifier.with_dtype`). Defaults to the
            model's own. Features are float32 either way (the time/space mean is taken in float32).

    Returns:
        With `output_dir`: the manifest records written by this call (one dict per video; skipped videos are
        not listed). Without: `{path: {"features", "frame_indices", "timestamps", "padded", "window_frames",
        "metadata"}}` for the readable videos, and `{path: {"error": message}}` for the others.

    Raises:
        ValueError: bad arguments (quoted), an unknown layer, inputs that do not exist, or an output folder whose
            files were made with other settings.

    Example:
        >>> records = extract_features("videos/", "demo", stride=4, output_dir="feats/")
        >>> z = np.load("feats/walk.npz")
        >>> z["features"].shape, z["frame_indices"].shape, z["timestamps"][0]
        ((25, 128), (25, 8), array([0.  , 0.32]))
    """
    clf, spec = as_classifier(model, weights, dtype)
    if crop not in CROPS:
        raise ValueError(f"`crop` must be one of {CROPS}. Received: crop={crop!r}")
    batch_size = _positive("batch_size", batch_size)
    if stride is not None:
        _positive("stride", stride)
    make_plan = plan_maker(clf.preprocessor.config, window=window, stride=stride)
    paths = shard_videos(expand_videos(videos), shard)
    metadata = features_metadata(clf.preprocessor.config, make_plan(1), model=spec, preset=clf.preset, layer=layer,
                                 crop=crop, dtype=clf.inference_dtype)
    network = feature_model(clf, layer)
    views = WindowViews(clf.preprocessor, crop)
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        _remove_stale_temporaries(output_dir)
        if resume:
            paths = _unfinished(output_dir, paths, metadata)
    results = {}
    records = []
    state = {}  # path -> {"plan", "info", "rows": {w: feature}, "t0"}
    bars = _Bars(len(paths), progress)
    batcher = _Batcher(lambda x: network.predict_on_batch(x), batch_size)

    def finish_rows(done):
        for (path, w), row in done:
            state[path]["rows"][w] = row
            bars.window()
        for path in {key[0] for key, _ in done}:
            _maybe_finish(path)

    def _maybe_finish(path):
        s = state.get(path)
        if s is None or not s["decoded"] or len(s["rows"]) < len(s["plan"].starts):
            return
        del state[path]
        result = features_result(path, s["plan"], s["info"], s["rows"], metadata)
        if output_dir is None:
            results[path] = result
        else:
            records.append(_write(output_dir, path, result, time.monotonic() - s["t0"]))
        bars.video()

    try:
        for event in stream_windows(paths, make_plan, views, num_workers=num_workers,
                                    decode_options=decode_options):
            kind, path = event[0], event[1]
            if kind == "video":
                state[path] = {"plan": event[2], "info": event[3], "rows": {}, "decoded": False,
                               "t0": time.monotonic()}
                bars.add_windows(len(event[2].starts))
            elif kind == "window":
                views_out = event[3]  # (1, T, S, S, 3)
                finish_rows(batcher.add((path, event[2]), views_out[0]))
            elif kind == "done":
                state[path]["decoded"] = True  # its last rows may wait in the open batch for other videos' windows
                _maybe_finish(path)
            else:  # error
                state.pop(path, None)
                batcher.rows = [r for r, k in zip(batcher.rows, batcher.keys) if k[0] != path]
                batcher.keys = [k for k in batcher.keys if k[0] != path]
                if output_dir is None:
                    results[path] = {"error": event[2]}
                else:
                    records.append(_append_manifest(output_dir, error_record(path, event[2])))
                bars.video()
        finish_rows(batcher.run())
    finally:
        bars.close()
    return results if output_dir is None else records


def as_classifier(model, weights="auto", dtype=None):
    """`(VideoClassifier, name)` of a classifier or of what `nonlocal_zoo.inference.load_model` takes, computing in
    `dtype` (None: the model's own)."""
    if isinstance(model, VideoClassifier):
        return model.with_dtype(dtype), model.preset or model.name
    if isinstance(model, (str, os.PathLike)):
        from nonlocal_zoo.inference import load_model

        return load_model(os.fspath(model), weights=weights, dtype=dtype), os.fspath(model)
    raise ValueError(f"`model` must be a VideoClassifier or a model name/path. Received: {type(model).__name__}")


def plan_maker(config, *, window=None, stride=None):
    """`num_video_frames -> WindowPlan` for a preprocessing config (`num_frames`, `sampling_rate`, `sampling`) and
    the `window`/`stride` settings, which are checked now (ValueError quoting a bad value).

    Example:
        >>> make_plan = plan_maker(clf.preprocessor.config, stride=4); make_plan(100).starts[:3]
        array([0, 4, 8])
    """
    T, r, sampling = config["num_frames"], config["sampling_rate"], config["sampling"]
    window_plan(1, num_frames=T, sampling_rate=r, sampling=sampling, window=window, stride=stride)  # validate now
    return lambda n: window_plan(n, num_frames=T, sampling_rate=r, sampling=sampling, window=window, stride=stride)


def features_metadata(config, plan, *, model, preset, layer, crop, dtype):
    """The settings recorded in every output file of a run (`metadata` of the `.npz`, before the per-video keys).

    Args:
        config: the preprocessing config of the model.
        plan: a `WindowPlan` of the run's settings (any video length).
        model: the model as the user named it; preset: its preset name; layer, crop: the run's settings;
        dtype: the compute dtype (`"float32"` or `"bfloat16"`).
    """
    return {
        "model": model, "preset": preset, "layer": layer, "window": plan.span, "stride": plan.stride,
        "num_frames": plan.num_frames, "sampling_rate": plan.sampling_rate, "sampling": config["sampling"],
        "crop": crop, "test_short_side": config["test_short_side"], "test_crop": config["test_crop"],
        "padding": PADDING_RULE, "nonlocal_zoo": __version__, "dtype": dtype,
    }


def features_result(path, plan, info, rows, metadata):
    """One video's output (the arrays of its `.npz` and its `metadata` dict) from its plan, `read_windows`' reader
    info and its feature rows `{w: (D,) array}`."""
    features = np.stack([rows[w] for w in range(len(plan.starts))]).astype(np.float32)  # (W, D)
    starts, ends = info["starts"], info["ends"]
    timestamps = np.stack([starts[plan.frame_indices[:, 0]], ends[plan.frame_indices[:, -1]]], axis=1)  # (W, 2)
    meta = dict(metadata, video=os.path.abspath(path), num_video_frames=int(info["num_video_frames"]),
                num_windows=int(len(plan.starts)), padded_windows=int(plan.padded.sum()),
                feature_dim=int(features.shape[1]), decoder=info["backend"],
                timestamp_source=info["timestamp_source"])
    return {"features": features, "frame_indices": plan.frame_indices.astype(np.int64),
            "timestamps": timestamps.astype(np.float64), "padded": plan.padded.astype(bool),
            "window_frames": plan.window_frames.astype(np.int64), "metadata": meta}


def save_result(f, result):
    """Writes one video's output (`features_result`) as `.npz` into the binary file object `f`."""
    arrays = {k: v for k, v in result.items() if k != "metadata"}
    np.savez(f, metadata=np.array(json.dumps(result["metadata"], sort_keys=True)), **arrays)


def manifest_record(path, result, seconds):
    """The manifest line (a dict) of a video written to `<stem>.npz` in `seconds` (None: not known)."""
    meta = result["metadata"]
    return {
        "video": path, "status": "ok", "output": output_stem(path) + ".npz", "windows": meta["num_windows"],
        "padded_windows": meta["padded_windows"], "num_video_frames": meta["num_video_frames"],
        "feature_dim": meta["feature_dim"], "model": meta["model"], "layer": meta["layer"],
        "stride": meta["stride"], "window": meta["window"], "seconds": None if seconds is None else round(seconds, 3)}


def error_record(path, message):
    """The manifest line (a dict) of a video that could not be read."""
    return {"video": path, "status": "error", "error": message}


def manifest_line(record):
    """A manifest record as its line of `manifest.jsonl` (JSON with sorted keys, without the newline)."""
    return json.dumps(record, sort_keys=True)


def _write(output_dir, path, result, seconds):
    target = os.path.join(output_dir, output_stem(path) + ".npz")
    tmp = os.path.join(output_dir, f".{output_stem(path)}.npz.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            save_result(f, result)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return _append_manifest(output_dir, manifest_record(path, result, seconds))


_MANIFEST_LOCK = threading.Lock()


def _append_manifest(output_dir, record):
    line = (manifest_line(record) + "\n").encode("utf-8")
    with _MANIFEST_LOCK:
        fd = os.open(os.path.join(output_dir, MANIFEST), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write of one line: appends of several shard processes do not interleave
            os.fsync(fd)
        finally:
            os.close(fd)
    return record


_COMPARED = ("model", "layer", "window", "stride", "crop", "num_frames", "sampling_rate")


def _unfinished(output_dir, paths, metadata):
    """The videos of `paths` still to extract into `output_dir`.

    A video is done when its `<stem>.npz` exists (`_finished`). A run killed between renaming a video's `.npz` into
    place and appending its manifest line leaves a complete file without a record: its record is recovered from the
    file's own metadata (`"seconds": None`, the time is unknown), so that the manifest lists every output again.
    """
    recorded = set()
    try:
        with open(os.path.join(output_dir, MANIFEST), encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:  # a line cut by a kill (appends are single writes, so only the last one)
                    continue
                if record.get("status") == "ok":
                    recorded.add(record.get("output"))
    except FileNotFoundError:
        pass
    remaining = []
    for path in paths:
        old = _finished(output_dir, path, metadata)
        if old is None:
            remaining.append(path)
        elif output_stem(path) + ".npz" not in recorded:
            _append_manifest(output_dir, manifest_record(path, {"metadata": old}, None))
    return remaining


def _finished(output_dir, path, metadata):
    """The metadata of `OUT/<stem>.npz` when it exists (complete: it was renamed into place), else None; refuses one
    made with other settings."""
    target = os.path.join(output_dir, output_stem(path) + ".npz")
    if not os.path.exists(target):
        return None
    try:
        with np.load(target) as z:
            old = json.loads(str(z["metadata"]))
    except Exception as error:
        raise ValueError(f"{target!r} exists but cannot be read ({error}); delete it to extract it again") from None
    diff = {k: (old.get(k), metadata[k]) for k in _COMPARED if old.get(k) != metadata[k]}
    if diff:
        raise ValueError(f"{target!r} was made with other settings {{setting: (file, now)}} = {diff}; use another "
                         "output folder or resume=False to overwrite")
    return old


def _remove_stale_temporaries(output_dir):
    """Temporary files left by a killed run (their process is gone)."""
    for name in os.listdir(output_dir):
        if ".npz.tmp-" not in name:
            continue
        try:
            pid = int(name.rsplit("-", 1)[1])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
            if pid != os.getpid():
                continue  # a live process (e.g. another shard) is writing it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        try:
            os.remove(os.path.join(output_dir, name))
        except FileNotFoundError:
            pass


class _Bars:
    """tqdm bars: videos (with ETA) and windows."""

    def __init__(self, num_videos, progress):
        import sys

        enabled = sys.stderr.isatty() if progress is None else bool(progress)
        self.videos = self.windows = None
        if enabled and num_videos:
            from tqdm.auto import tqdm

            self.videos = tqdm(total=num_videos, desc="videos", unit="video", position=0)
            self.windows = tqdm(total=0, desc="windows", unit="win", position=1)

    def add_windows(self, n):
        if self.windows is not None:
            self.windows.total += n
            self.windows.refresh()

    def window(self):
        if self.windows is not None:
            self.windows.update(1)

    def video(self):
        if self.videos is not None:
            self.videos.update(1)

    def close(self):
        for bar in (self.windows, self.videos):
            if bar is not None:
                bar.close()


def load_features(path):
    """One `extract_features` output file as a dict of arrays plus `metadata` (a dict).

    Example:
        >>> z = load_features("feats/talk.npz"); z["metadata"]["layer"]
        'pool5'
    """
    with np.load(path) as z:
        out = {k: z[k] for k in z.files if k != "metadata"}
        out["metadata"] = json.loads(str(z["metadata"]))
    return out


__all__ = ["CROPS", "VIDEO_ERRORS", "WindowPlan", "WindowViews", "as_classifier", "error_message", "error_record",
           "expand_videos", "extract_features", "feature_model", "features_metadata", "features_result",
           "iter_windows", "load_features", "manifest_line", "manifest_record", "output_stem", "parse_shard",
           "plan_maker", "read_windows", "run_padded", "save_result", "shard_videos", "stream_windows",
           "window_plan"]

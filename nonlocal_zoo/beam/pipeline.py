"""The Beam pipeline of `nonlocal_zoo.beam`: sources, decoding DoFns, the model handler, aggregation and the sinks.

Stages (both jobs):

    sources -> video paths -> (reshuffle) -> decode DoFn -> RunInference(ZooModelHandler) -> per-video join -> sinks
                                                  \\-> dead letter (path + error)

- **Sources** (`read_videos`): globs, folders and `.txt`/`.csv` lists of paths or URIs that
  `apache_beam.io.filesystems` reads (local paths, `gs://`, `s3://`, ...). A remote video is copied to a local
  temporary file for the decoder.
- **Decoding** runs the single-machine code: `classify` takes the preprocessor's `video_views` (the preset's
  `num_clips x num_crops` test views), `features` takes `nonlocal_zoo.features.read_windows` with the same
  `plan_maker` and `WindowViews`. Each view/window is one element keyed by its video, so RunInference batches
  windows of several videos together (`min_batch_size`/`max_batch_size`).
- **The model** (`ZooModelHandler`) is loaded once per worker process (or, with `large_model`/`model_copies`,
  once or N times per machine and shared by its processes): a zoo preset, a saved `VideoClassifier` preset
  directory (through the resolver of `nonlocal-zoo classify`) or, for `classify`, an exported SavedModel.
  Forward passes of the Keras model have a fixed size (`batch_size`, the last one padded), as in
  `extract_features`, so one input shape is traced per process and a row does not depend on which rows shared
  its batch.
- **Per video**: `classify` averages the views by the preset's rule (`tasks.preprocessor.aggregate_views`) and
  names the top-k classes (`inference.top_k_row`); `features` joins a video's rows with its window plan and writes
  `<stem>.npz` with `features.save_result` (temporary name, then rename: a retried bundle rewrites the same complete
  file and never leaves a partial one).
- **Sinks**: Beam's text sinks (written to a temporary folder, renamed into place when the job commits):
  `predictions-SSSSS-of-NNNNN.jsonl` (classify), `manifest.jsonl` (features) and `dead_letter.jsonl` (both).

Example:
    >>> import apache_beam as beam
    >>> with beam.Pipeline() as p:
    ...     outs = build_pipeline(p, "features", "videos/*.mp4", "feats/", model="demo", stride=4)
"""
import csv
import io
import json
import os
import shutil
import tempfile
import time
import uuid

import numpy as np

from nonlocal_zoo.beam import INSTALL_HINT, require_beam

beam = require_beam()

from apache_beam.io.filesystem import CompressionTypes  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference  # noqa: E402

from nonlocal_zoo.data import VIDEO_EXTENSIONS  # noqa: E402
from nonlocal_zoo.features import (  # noqa: E402
    CROPS, VIDEO_ERRORS, WindowViews, error_message, error_record, feature_model, features_metadata, features_result,
    manifest_line, manifest_record, output_stem, plan_maker, read_windows, run_padded, save_result)
from nonlocal_zoo.inference import load_model, top_k_row  # noqa: E402
from nonlocal_zoo.tasks import VideoClassifierPreprocessor  # noqa: E402
from nonlocal_zoo.tasks.preprocessor import aggregate_views  # noqa: E402

JOBS = ("classify", "features")
PREDICTIONS, MANIFEST, DEAD_LETTER = "predictions", "manifest.jsonl", "dead_letter.jsonl"
OUTPUT_FILES = {"classify": ("predictions-SSSSS-of-NNNNN.jsonl", DEAD_LETTER),
                "features": ("<stem>.npz", MANIFEST, DEAD_LETTER)}
LIST_SUFFIXES = (".txt", ".csv")
CSV_HEADERS = ("path", "video", "uri", "url", "filename", "file")
NAMESPACE = "nonlocal_zoo"
LOAD_LOG_ENV = "NONLOCAL_ZOO_BEAM_LOAD_LOG"
DEFAULT_BATCH_SIZE = 8


# ---------------------------------------------------------------------------------------------------- sources
def _is_glob(path):
    return any(c in path for c in "*?[")


def _is_local(path):
    return FileSystems.get_scheme(path) is None


def _is_video(path):
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def _list_entries(line, list_path):
    """The video path of one line of a `.txt` or `.csv` list (relative entries resolved against the list's folder)."""
    line = line.strip()
    if not line or line.startswith("#"):
        return []
    if list_path.lower().endswith(".csv"):
        row = next(csv.reader([line]), [])
        entry = row[0].strip() if row else ""
        if not entry or entry.lower() in CSV_HEADERS:
            return []
    else:
        entry = line
    if FileSystems.get_scheme(entry) is not None or os.path.isabs(entry):
        return [entry]
    base = list_path.rsplit("/", 1)[0] if "/" in list_path else "."
    return [os.path.normpath(os.path.join(base, entry)) if _is_local(list_path) else FileSystems.join(base, entry)]


class _Paths(beam.DoFn):
    """Metadata of matched files -> the paths of the videos among them (extension, not hidden)."""

    def process(self, metadata):
        if _is_video(metadata.path):
            yield metadata.path


def read_videos(pipeline, sources, *, label="Videos"):
    """The video paths of `sources` as a PCollection of strings (each once).

    Args:
        pipeline: a `beam.Pipeline`.
        sources: a string or a list of: a glob (`clips/**/*.mp4`, `gs://bucket/clips/*.mp4`), a folder (searched
            recursively for `nonlocal_zoo.data.VIDEO_EXTENSIONS`, hidden files skipped; a remote folder ends with
            `/`), a video, or a `.txt` list (one path or URI a line, `#` comments) or `.csv` list (the first column; a
            header row `path`/`video`/`uri`/`url`/`filename` is skipped). Relative list entries are relative to the
            list's folder.
        label: the transform's label.

    Raises:
        ValueError: a local source that does not exist, or a source that is none of the above.

    Example:
        >>> paths = read_videos(p, ["clips/", "gs://bucket/more/*.mp4", "extra.csv"])
    """
    from apache_beam.io import fileio

    sources = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not sources:
        raise ValueError("`sources` is empty: give a glob, a folder, a video or a .txt/.csv list")
    parts = []
    for i, source in enumerate(map(os.fspath, sources)):
        local = _is_local(source)
        step = f"{label}[{i}]"
        if _is_glob(source):
            parts.append(pipeline | f"{step} Match" >> fileio.MatchFiles(source) | f"{step} Filter" >> beam.ParDo(
                _Paths()))
        elif (local and os.path.isdir(source)) or (not local and source.endswith("/")):
            pattern = FileSystems.join(source.rstrip("/"), "**") if not local else os.path.join(source, "**")
            parts.append(pipeline | f"{step} Match" >> fileio.MatchFiles(pattern) | f"{step} Filter" >> beam.ParDo(
                _Paths()))
        elif source.lower().endswith(LIST_SUFFIXES):
            if local and not os.path.isfile(source):
                raise ValueError(f"No such list file: {source!r}")
            parts.append(pipeline | f"{step} Read" >> beam.io.ReadFromText(source)
                         | f"{step} Parse" >> beam.FlatMap(_list_entries, source))
        elif os.path.splitext(source)[1].lower() in VIDEO_EXTENSIONS:
            if local and not os.path.isfile(source):
                raise ValueError(f"No such video file: {source!r}")
            parts.append(pipeline | f"{step} Create" >> beam.Create([os.path.normpath(source) if local else source]))
        elif local and not os.path.exists(source):
            raise ValueError(f"No such video, folder or list file: {source!r}")
        else:
            raise ValueError(f"Not a glob, a folder, a video ({', '.join(VIDEO_EXTENSIONS)}) or a .txt/.csv list: "
                             f"{source!r}")
    return parts | f"{label} Flatten" >> beam.Flatten() | f"{label} Distinct" >> beam.Distinct()


class _LocalCopy:
    """A local file for a video path: the path itself, or a temporary copy of a remote URI (removed on exit)."""

    def __init__(self, path):
        self.path, self.local = path, None

    def __enter__(self):
        if _is_local(self.path):
            self.local = self.path
            return self.local
        suffix = os.path.splitext(self.path)[1]
        fd, self.local = tempfile.mkstemp(prefix="nonlocal_zoo_beam_", suffix=suffix)
        with os.fdopen(fd, "wb") as out, FileSystems.open(self.path, compression_type=CompressionTypes.UNCOMPRESSED) \
                as src:
            shutil.copyfileobj(src, out, 1 << 22)
        return self.local

    def __exit__(self, *exc):
        if self.local is not None and self.local != self.path and os.path.exists(self.local):
            os.remove(self.local)


def _message(error, path, local):
    message = error_message(error)
    return message.replace(local, path) if local and local != path else message


# ---------------------------------------------------------------------------------------------------- the model
def _read_text(path):
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read().decode("utf-8")


def _exists(path):
    try:
        return FileSystems.exists(path)
    except Exception:  # a filesystem without the scheme's package: not ours to explain here
        return False


def describe_model(model, *, weights="auto", preset=None, labels=None, dtype=None):
    """What the pipeline needs to know of a model before any worker loads it, read without building the network.

    Args:
        model: a zoo preset name (`"demo"` included), a saved `VideoClassifier` preset directory (local or a URI),
            an exported SavedModel directory (`nonlocal-zoo export --format saved_model`), or anything else
            `nonlocal_zoo.inference.load_model` takes (a `.keras` file, `hf://`; loaded here once to read it).
        weights, preset, labels, dtype: as `load_model` takes them.

    Returns:
        `{"kind": "keras" | "saved_model", "preprocessing": dict, "labels": [...], "preset": name or None,
        "name": str, "dtype": "float32" | "bfloat16"}`.

    Raises:
        ValueError: an unknown name, a preset without weights (`weights="auto"`), a folder that is no model.
    """
    from nonlocal_zoo.presets import get_preset
    from nonlocal_zoo.tasks import presets as preset_io

    spec = os.fspath(model)
    label_list = preset_io.read_labels(labels)
    out_dtype = "bfloat16" if dtype in ("bfloat16", "mixed_bfloat16") else "float32"
    local = _is_local(spec)
    if spec in preset_io.registry_names() and not (local and os.path.exists(spec)):
        entry = get_preset(spec)
        if weights == "auto" and entry["weights"] is None:
            raise ValueError(f"Preset {spec!r} has no published weights; pass `--weights PATH` (or `--weights none` "
                             f"for a randomly initialised model). Received: model={spec!r}")
        pre = VideoClassifierPreprocessor(entry["preprocessing"]).config
        return {"kind": "keras", "preprocessing": pre, "labels": label_list or preset_io.preset_labels(entry),
                "preset": spec, "name": spec, "dtype": out_dtype}
    root = spec.rstrip("/")
    if _exists(FileSystems.join(root, preset_io.CONFIG_FILE)) and _exists(
            FileSystems.join(root, preset_io.PREPROCESSOR_FILE)):
        config = json.loads(_read_text(FileSystems.join(root, preset_io.CONFIG_FILE)))
        saved = json.loads(_read_text(FileSystems.join(root, preset_io.PREPROCESSOR_FILE)))
        pre = VideoClassifierPreprocessor.from_config(saved.get("config", saved)).config
        inner = config.get("config", {})
        names = label_list or list(inner.get("labels") or [])
        return {"kind": "keras", "preprocessing": pre, "labels": names, "preset": inner.get("preset"),
                "name": inner.get("preset") or inner.get("name") or os.path.basename(root), "dtype": out_dtype}
    if _exists(FileSystems.join(root, "saved_model.pb")):
        from nonlocal_zoo.export.metadata import SAVED_MODEL_METADATA

        meta_path = FileSystems.join(root, *SAVED_MODEL_METADATA.split(os.sep))
        if not _exists(meta_path):
            raise ValueError(f"{spec!r} is a SavedModel without {SAVED_MODEL_METADATA}: not exported by nonlocal_zoo "
                             "(export it with `nonlocal-zoo export --format saved_model`)")
        meta = json.loads(_read_text(meta_path))
        return {"kind": "saved_model", "preprocessing": saved_model_preprocessing(meta),
                "labels": label_list or meta.get("labels") or [f"class_{i}" for i in range(meta["output"]["classes"])],
                "preset": meta.get("preset"), "name": meta.get("preset") or meta.get("model_name"),
                "dtype": "float32"}
    clf = load_model(spec, weights=weights, preset=preset, labels=labels, dtype=dtype)  # .keras, hf://: read it
    return {"kind": "keras", "preprocessing": dict(clf.preprocessor.config), "labels": list(clf.labels),
            "preset": clf.preset, "name": clf.preset or clf.name, "dtype": clf.inference_dtype}


def saved_model_preprocessing(metadata):
    """The preprocessing config of an exported SavedModel from its `nonlocal_zoo.json`: its preset's protocol (test
    views, aggregation) with the recorded frames, sampling, normalisation and crop."""
    from nonlocal_zoo.presets import PRESETS, get_preset

    p = metadata["preprocessing"]
    base = get_preset(metadata["preset"])["preprocessing"] if metadata.get("preset") in (*PRESETS, "demo") else {}
    crop = p["crop"][0] if p.get("crop") and p["crop"][0] is not None else base.get("test_crop")
    overrides = {k: v for k, v in {
        "num_frames": p.get("num_frames"), "sampling_rate": p.get("sampling_rate"), "sampling": p.get("sampling"),
        "mean": p.get("mean"), "std": p.get("std"), "scale": p.get("scale"), "test_short_side": p.get("short_side"),
        "test_crop": crop}.items() if v is not None}
    return VideoClassifierPreprocessor(base or None, **overrides).config


def _local_model_dir(spec):
    """A local folder with the files of a remote preset directory or SavedModel (copied once per process)."""
    if _is_local(spec):
        return spec
    root = spec.rstrip("/")
    target = tempfile.mkdtemp(prefix="nonlocal_zoo_model_")
    for match in FileSystems.match([root + "/**"])[0].metadata_list:
        rel = match.path[len(root) + 1:]
        dest = os.path.join(target, *rel.split("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with FileSystems.open(match.path, compression_type=CompressionTypes.UNCOMPRESSED) as src, \
                open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 22)
    return target


class _ClassifyRunner:
    """uint8 views (B, T, S, S, 3) -> float64 (B, C) scores in the domain the aggregation rule averages."""

    def __init__(self, clf, batch_size):
        self.clf, self.batch_size = clf, batch_size

    def __call__(self, views):
        clips = self.clf.preprocessor.normalize(views)  # float32 (B, T, S, S, 3)
        # passes of exactly `batch_size` views (the last padded with zeros, dropped): one traced shape per process,
        # whatever batch sizes RunInference forms (a view's scores do not depend on the other views of its pass)
        return run_padded(self._scores, clips, self.batch_size)  # (B, C)

    def _scores(self, clips):
        return self.clf.view_scores(clips, batch_size=self.batch_size)  # (batch_size, C) in one forward pass


class _ExportRunner:
    """An exported SavedModel (uint8 clips in, probabilities out) -> per-view scores of the aggregation rule
    (`"logits"`: log-probabilities, which differ from the logits by a per-view constant that the softmax of their
    mean removes)."""

    def __init__(self, path, rule, batch_size):
        from nonlocal_zoo.export.runtime import load_export

        self.model, self.rule, self.batch_size = load_export(path), rule, batch_size

    def __call__(self, views):
        probs = np.concatenate([np.asarray(self.model(views[i:i + self.batch_size]), np.float64)
                                for i in range(0, len(views), self.batch_size)])  # (B, C)
        return np.log(np.maximum(probs, np.finfo(np.float64).tiny)) if self.rule == "logits" else probs


class _FeatureRunner:
    """float32 windows (B, T, S, S, 3) -> float32 (B, D) features, in fixed-size forward passes."""

    def __init__(self, clf, layer, batch_size):
        self.network, self.batch_size = feature_model(clf, layer), batch_size

    def __call__(self, windows):
        return run_padded(self.network.predict_on_batch, windows, self.batch_size)


class ZooModelHandler(ModelHandler):
    """A RunInference model handler for nonlocal_zoo models: loaded once per worker process, fixed-size passes.

    Elements are one view (`classify`: uint8 `(T, S, S, 3)`) or one window (`features`: float32 `(T, S, S, 3)`);
    results are float64 `(C,)` per-view scores (probabilities, or logits for the `"logits"` rule) or float32 `(D,)`
    feature rows. Wrap it in `KeyedModelHandler` to carry keys (what `build_pipeline` does).

    Args:
        model: a zoo preset, a preset directory (local or a URI), or (classify) an exported SavedModel directory.
        job: `"classify"` or `"features"`.
        kind: `"keras"` or `"saved_model"` (see `describe_model`).
        weights, preset, labels, dtype: passed to `nonlocal_zoo.inference.load_model`.
        rule: the aggregation rule (`"softmax"` or `"logits"`; SavedModels only).
        layer: the feature layer (`features`).
        batch_size: rows per forward pass (the last one padded).
        min_batch_size, max_batch_size: Beam's batching bounds (batches span videos).
        large_model: share the model between the worker processes of a machine (RunInference's `large_model`:
            one copy per machine, loaded by one process and called by the others through a local proxy) instead of
            one copy per process. Defaults to False.
        model_copies: the number of shared copies per machine (RunInference's `model_copies`; implies sharing).
            Defaults to None (one shared copy with `large_model`, else one copy per process).
        load_log: a local file; each model load appends the worker's pid on one line (for tests and audits).
            Defaults to the environment variable `NONLOCAL_ZOO_BEAM_LOAD_LOG` of the launching process (unset: none).

    Example:
        >>> handler = KeyedModelHandler(ZooModelHandler("demo", job="classify"))
    """

    def __init__(self, model, *, job, kind="keras", weights="auto", preset=None, labels=None, dtype=None,
                 rule="softmax", layer="pool5", batch_size=DEFAULT_BATCH_SIZE, min_batch_size=1, max_batch_size=None,
                 large_model=False, model_copies=None, load_log=None):
        _check_sharing(large_model, model_copies)
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size or batch_size,
                         large_model=large_model, model_copies=model_copies)
        if job not in JOBS:
            raise ValueError(f"`job` must be one of {JOBS}. Received: job={job!r}")
        self.model, self.job, self.kind = os.fspath(model), job, kind
        self.weights, self.preset, self.labels, self.dtype = weights, preset, labels, dtype
        self.rule, self.layer, self.batch_size = rule, layer, batch_size
        self.load_log = load_log or os.environ.get(LOAD_LOG_ENV) or None  # read here, in the launching process

    def load_model(self):
        """The runner of this worker process (or, with `large_model`/`model_copies`, of the machine's shared copy):
        `numpy batch -> numpy results` (each call logged in `load_log`)."""
        if self.load_log:
            fd = os.open(self.load_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{os.getpid()}\n".encode())
            finally:
                os.close(fd)
        spec = self.model
        if self.kind == "saved_model":
            return _ExportRunner(_local_model_dir(spec), self.rule, self.batch_size)
        if not _is_local(spec):
            spec = _local_model_dir(spec)
        clf = load_model(spec, weights=self.weights, preset=self.preset, labels=self.labels, dtype=self.dtype)
        if self.job == "classify":
            return _ClassifyRunner(clf, self.batch_size)
        return _FeatureRunner(clf, self.layer, self.batch_size)

    def run_inference(self, batch, model, inference_args=None):
        return list(model(np.stack(batch)))  # (B, ...) -> B result rows

    def get_num_bytes(self, batch):
        return int(sum(np.asarray(x).nbytes for x in batch))

    def get_metrics_namespace(self):
        return NAMESPACE


# ---------------------------------------------------------------------------------------------------- classify
class _ClassifyViews(beam.DoFn):
    """path -> ((path, i, V), uint8 view i of V) for every test view, or a dead letter."""

    def __init__(self, preprocessing, num_clips, num_crops, decode_options):
        self.preprocessing, self.num_clips, self.num_crops = preprocessing, num_clips, num_crops
        self.decode_options = decode_options

    def setup(self):
        self.pre = VideoClassifierPreprocessor(self.preprocessing, decode_options=self.decode_options)

    def process(self, path):
        copy = _LocalCopy(path)
        try:
            with copy as local:
                views = self.pre.video_views(local, num_clips=self.num_clips, num_crops=self.num_crops)  # (V,T,S,S,3)
        except VIDEO_ERRORS as error:
            beam.metrics.Metrics.counter(NAMESPACE, "videos_failed").inc()
            yield beam.pvalue.TaggedOutput("dead_letter", {"video": path, "error": _message(error, path, copy.local)})
            return
        for i, view in enumerate(views):
            yield (path, i, len(views)), view


class _Aggregate(beam.DoFn):
    """(path, [(i, V, scores)]) -> one classify row: views aggregated by the preset's rule, top-k named."""

    def __init__(self, rule, labels, top_k):
        self.rule, self.labels, self.top_k = rule, labels, top_k

    def process(self, element):
        path, views = element
        views = sorted(views, key=lambda v: v[0])
        count = views[0][1]
        if [v[0] for v in views] != list(range(count)):  # pragma: no cover - RunInference returns every element once
            raise RuntimeError(f"{path}: views {[v[0] for v in views]} of {count} came back from RunInference")
        scores = aggregate_views(np.stack([v[2] for v in views]), self.rule)  # (V, C) -> (C,)
        row = top_k_row(path, scores, self.labels, top_k=self.top_k, views=count)
        row["scores"] = scores.tolist()
        beam.metrics.Metrics.counter(NAMESPACE, "videos_ok").inc()
        yield row


# ---------------------------------------------------------------------------------------------------- features
class _Windows(beam.DoFn):
    """path -> ((path, w), float32 window w) for every window, and ("videos", (path, plan+info or error))."""

    def __init__(self, preprocessing, window, stride, crop, decode_options):
        self.preprocessing, self.window, self.stride, self.crop = preprocessing, window, stride, crop
        self.decode_options = decode_options

    def setup(self):
        pre = VideoClassifierPreprocessor(self.preprocessing)
        self.make_plan = plan_maker(pre.config, window=self.window, stride=self.stride)
        self.views = WindowViews(pre, self.crop)

    def process(self, path):
        t0 = time.monotonic()
        copy = _LocalCopy(path)
        try:
            with copy as local:
                for event in read_windows(local, self.make_plan, self.views, decode_options=self.decode_options):
                    if event[0] == "video":
                        plan, info = event[1], event[2]
                    else:
                        yield (path, event[1]), event[2][0]  # (1, T, S, S, 3) -> (T, S, S, 3)
        except VIDEO_ERRORS as error:
            yield beam.pvalue.TaggedOutput("videos", (path, {"error": _message(error, path, copy.local)}))
            return
        yield beam.pvalue.TaggedOutput("videos", (path, {"plan": plan, "info": info,
                                                         "seconds": time.monotonic() - t0}))


class _CheckStems(beam.DoFn):
    """(stem, [paths]) -> the path, or dead letters when several videos would write the same `<stem>.npz`."""

    def process(self, element):
        stem, paths = element
        paths = sorted(paths)
        if len(paths) == 1:
            yield paths[0]
            return
        for path in paths:
            message = (f"{len(paths)} videos are named {stem!r} ({paths[:3]}); outputs are named OUT/<stem>.npz, so "
                       "rename them or run them into different output folders")
            beam.metrics.Metrics.counter(NAMESPACE, "videos_failed").inc()
            yield beam.pvalue.TaggedOutput("dead_letter", {"video": path, "error": message})
            yield beam.pvalue.TaggedOutput("manifest", error_record(path, message))


class _WriteFeatures(beam.DoFn):
    """(path, {"rows": [(w, row)], "video": [plan+info or error]}) -> its manifest record (and the `.npz` written
    atomically), or a dead letter."""

    def __init__(self, output_dir, metadata):
        self.output_dir, self.metadata = output_dir, metadata

    def process(self, element):
        path, joined = element
        status = list(joined["video"])[0]
        if "error" in status:
            beam.metrics.Metrics.counter(NAMESPACE, "videos_failed").inc()
            yield beam.pvalue.TaggedOutput("dead_letter", {"video": path, "error": status["error"]})
            yield error_record(path, status["error"])
            return
        t0 = time.monotonic()
        rows = dict(joined["rows"])
        plan = status["plan"]
        if sorted(rows) != list(range(len(plan.starts))):  # pragma: no cover - RunInference returns every element
            raise RuntimeError(f"{path}: {len(rows)} of {len(plan.starts)} windows came back from RunInference")
        result = features_result(path, plan, status["info"], rows, self.metadata)
        self._write(path, result)
        beam.metrics.Metrics.counter(NAMESPACE, "videos_ok").inc()
        yield manifest_record(path, result, status["seconds"] + time.monotonic() - t0)

    def _write(self, path, result):
        stem = output_stem(path)
        target = FileSystems.join(self.output_dir, stem + ".npz")
        tmp = FileSystems.join(self.output_dir, f".{stem}.npz.beam-tmp-{uuid.uuid4().hex}")
        buffer = io.BytesIO()
        save_result(buffer, result)
        try:
            with FileSystems.create(tmp, mime_type="application/octet-stream",
                                    compression_type=CompressionTypes.UNCOMPRESSED) as f:
                f.write(buffer.getvalue())
            FileSystems.rename([tmp], [target])  # atomic on a local disk; an object appears whole on GCS/S3
        except BaseException:
            if _exists(tmp):
                FileSystems.delete([tmp])
            raise


# ---------------------------------------------------------------------------------------------------- pipeline
def _json_line(record):
    return json.dumps(record, sort_keys=True, default=float)


def _check_common(job, batch_size, min_batch_size, max_batch_size):
    if job not in JOBS:
        raise ValueError(f"`job` must be one of {JOBS}. Received: job={job!r}")
    for name, value in (("batch_size", batch_size), ("min_batch_size", min_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    if max_batch_size is not None and (isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int)
                                       or max_batch_size < min_batch_size):
        raise ValueError(f"`max_batch_size` must be an integer >= min_batch_size ({min_batch_size}). "
                         f"Received: max_batch_size={max_batch_size!r}")


def _check_sharing(large_model, model_copies):
    if not isinstance(large_model, bool):
        raise ValueError(f"`large_model` must be True or False. Received: large_model={large_model!r}")
    if model_copies is not None and (isinstance(model_copies, bool) or not isinstance(model_copies, int)
                                     or model_copies < 1):
        raise ValueError(f"`model_copies` must be a positive integer or None. Received: model_copies={model_copies!r}")


def build_pipeline(pipeline, job, sources, output_dir, *, model, weights="auto", preset=None, labels=None, dtype=None,
                   top_k=5, num_clips=None, num_crops=None, layer="pool5", window=None, stride=None, crop="center",
                   batch_size=DEFAULT_BATCH_SIZE, min_batch_size=1, max_batch_size=None, large_model=False,
                   model_copies=None, decode_options=None, num_shards=0, load_log=None):
    """Adds the `classify` or `features` job to `pipeline`; returns its `{"results", "dead_letter"}` PCollections.

    Args:
        pipeline: a `beam.Pipeline`.
        job: `"classify"` (one row per video: top-k labels and the aggregated scores of `num_clips x num_crops`
            views) or `"features"` (`<stem>.npz` per video and `manifest.jsonl`, as `nonlocal-zoo features`).
        sources: see `read_videos` (globs, folders, videos, `.txt`/`.csv` lists; local paths or URIs).
        output_dir: the output folder (local or a URI); see `OUTPUT_FILES`.
        model: a zoo preset (`"demo"`...), a saved preset directory, or (classify) an exported SavedModel.
        weights, preset, labels, dtype: as `nonlocal_zoo.inference.load_model` takes them.
        top_k: classify: labels per row. Defaults to 5 (at most the model's classes).
        num_clips, num_crops: classify: views per video. Defaults to the preset's test protocol.
        layer, window, stride, crop: features: as `nonlocal_zoo.extract_features`.
        batch_size: views/windows per forward pass (fixed; the last one padded). Defaults to 8.
        min_batch_size, max_batch_size: bounds of Beam's batches for RunInference (they span videos); the maximum
            defaults to `batch_size`.
        large_model, model_copies: RunInference's model sharing (see `ZooModelHandler`): one copy (`large_model`)
            or `model_copies` copies per machine, shared by its worker processes, instead of one copy per process.
        decode_options: `SeekReader` options (`backend`, `timeout`, `num_threads`, `max_pixels`).
        num_shards: classify: files of `predictions-*.jsonl` (0: the runner decides).
        load_log: a local file to which every model load appends its process id (tests count them; default: the
            environment variable `NONLOCAL_ZOO_BEAM_LOAD_LOG`).

    Returns:
        `{"results": PCollection of classify rows or manifest records, "dead_letter": PCollection of
        {"video", "error"}}`.

    Raises:
        ValueError: bad arguments or sources (before the pipeline runs).

    Example:
        >>> with beam.Pipeline(options=PipelineOptions(["--runner", "DirectRunner"])) as p:
        ...     build_pipeline(p, "classify", "clips/", "out/", model="demo", top_k=3)
    """
    _check_common(job, batch_size, min_batch_size, max_batch_size)
    _check_sharing(large_model, model_copies)
    output_dir = os.fspath(output_dir)
    desc = describe_model(model, weights=weights, preset=preset, labels=labels, dtype=dtype)
    config = desc["preprocessing"]
    if desc["kind"] == "saved_model" and job == "features":
        raise ValueError(f"An exported SavedModel gives probabilities only; features need the Keras model (a preset "
                         f"name or a preset directory). Received: model={os.fspath(model)!r}")
    handler = ZooModelHandler(model, job=job, kind=desc["kind"], weights=weights, preset=preset,
                              labels=desc["labels"] if labels is not None else None, dtype=dtype,
                              rule=config["test_aggregation"], layer=layer, batch_size=batch_size,
                              min_batch_size=min_batch_size, max_batch_size=max_batch_size, large_model=large_model,
                              model_copies=model_copies, load_log=load_log)
    if _is_local(output_dir):
        os.makedirs(output_dir, exist_ok=True)
    paths = read_videos(pipeline, sources)
    if job == "classify":
        num_labels = len(desc["labels"])
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= num_labels:
            raise ValueError(f"`top_k` must be an integer in [1, {num_labels}]. Received: top_k={top_k!r}")
        num_clips, num_crops = VideoClassifierPreprocessor(config).check_views(num_clips, num_crops)
        decoded = (paths | "Reshuffle" >> beam.Reshuffle()
                   | "Views" >> beam.ParDo(_ClassifyViews(config, num_clips, num_crops, decode_options))
                   .with_outputs("dead_letter", main="views"))
        results = (decoded.views | "RunInference" >> RunInference(KeyedModelHandler(handler))
                   | "ByVideo" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[0][2], kv[1])))
                   | "GroupViews" >> beam.GroupByKey()
                   | "Aggregate" >> beam.ParDo(_Aggregate(config["test_aggregation"], desc["labels"], top_k)))
        dead = decoded.dead_letter
        (results | "PredictionLines" >> beam.Map(_json_line)
         | "WritePredictions" >> beam.io.WriteToText(FileSystems.join(output_dir, PREDICTIONS),
                                                     file_name_suffix=".jsonl", num_shards=num_shards))
    else:
        if crop not in CROPS:
            raise ValueError(f"`crop` must be one of {CROPS}. Received: crop={crop!r}")
        make_plan = plan_maker(config, window=window, stride=stride)
        metadata = features_metadata(config, make_plan(1), model=desc["name"], preset=desc["preset"], layer=layer,
                                     crop=crop, dtype=desc["dtype"])
        unique = (paths | "ByStem" >> beam.Map(lambda p: (output_stem(p), p)) | "GroupStems" >> beam.GroupByKey()
                  | "CheckStems" >> beam.ParDo(_CheckStems()).with_outputs("dead_letter", "manifest", main="paths"))
        decoded = (unique.paths | "Windows" >> beam.ParDo(_Windows(config, window, stride, crop, decode_options))
                   .with_outputs("videos", main="windows"))
        rows = (decoded.windows | "RunInference" >> RunInference(KeyedModelHandler(handler))
                | "ByVideo" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1]))))
        written = ({"rows": rows, "video": decoded.videos} | "Join" >> beam.CoGroupByKey()
                   | "Write" >> beam.ParDo(_WriteFeatures(output_dir, metadata)).with_outputs("dead_letter",
                                                                                              main="records"))
        results = (written.records, unique.manifest) | "Records" >> beam.Flatten()
        dead = (written.dead_letter, unique.dead_letter) | "DeadLetters" >> beam.Flatten()
        (results | "ManifestLines" >> beam.Map(manifest_line)
         | "WriteManifest" >> beam.io.WriteToText(FileSystems.join(output_dir, MANIFEST), num_shards=1,
                                                  shard_name_template=""))
    (dead | "DeadLetterLines" >> beam.Map(_json_line)
     | "WriteDeadLetter" >> beam.io.WriteToText(FileSystems.join(output_dir, DEAD_LETTER), num_shards=1,
                                                shard_name_template=""))
    return {"results": results, "dead_letter": dead}


def run_pipeline(job, sources, output_dir, *, options=None, **kwargs):
    """Builds the job on a new pipeline, runs it to the end and reads back its dead letter.

    Args:
        job, sources, output_dir, **kwargs: see `build_pipeline`.
        options: a `PipelineOptions`, or a list of Beam command-line flags (`["--runner", "DataflowRunner",
            "--project", ...]`); None runs the DirectRunner.

    Returns:
        `{"job", "output_dir", "state", "videos_ok", "videos_failed", "dead_letter": [{"video", "error"}, ...]}`
        (integer counts: Beam's committed counters; a counter the runner does not report, e.g. one that was never
        incremented, is counted from the output files: the dead letter, the predictions rows or the manifest).

    Example:
        >>> run_pipeline("features", "gs://bucket/videos/", "gs://bucket/feats/", model="demo",
        ...              options=["--runner", "DataflowRunner", "--project", "p", "--region", "europe-west1",
        ...                       "--temp_location", "gs://bucket/tmp"])
    """
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions

    if not isinstance(options, PipelineOptions):
        options = PipelineOptions(list(options or []))
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, job, sources, output_dir, **kwargs)
    result = pipeline.run()
    state = result.wait_until_finish()
    output_dir = os.fspath(output_dir)
    dead_path = FileSystems.join(output_dir, DEAD_LETTER)
    dead = [json.loads(line) for line in _read_text(dead_path).splitlines() if line.strip()] if _exists(
        dead_path) else []
    counts = {}
    for name in ("videos_ok", "videos_failed"):
        found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name(name))["counters"]
        if found:
            counts[name] = int(sum(c.committed or 0 for c in found))
        else:  # never incremented (Beam then has no counter), or a runner without metrics: count the outputs
            counts[name] = len(dead) if name == "videos_failed" else _count_ok(job, output_dir)
    return {"job": job, "output_dir": output_dir, "state": str(state), **counts, "dead_letter": dead}


def _count_ok(job, output_dir):
    """The videos written by a finished job, read back from its outputs (classify rows, features `ok` records)."""
    if job == "classify":
        pattern = FileSystems.join(output_dir, PREDICTIONS + "-*-of-*.jsonl")
        paths = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
        return sum(1 for path in paths for line in _read_text(path).splitlines() if line.strip())
    path = FileSystems.join(output_dir, MANIFEST)
    lines = _read_text(path).splitlines() if _exists(path) else []
    return sum(1 for line in lines if line.strip() and json.loads(line).get("status") == "ok")


__all__ = ["DEAD_LETTER", "INSTALL_HINT", "JOBS", "MANIFEST", "OUTPUT_FILES", "ZooModelHandler", "build_pipeline",
           "describe_model", "read_videos", "run_pipeline", "saved_model_preprocessing"]

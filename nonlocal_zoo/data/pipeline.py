"""tf.data input pipelines over clip folders, CSV/list files and TFDS video datasets.

Decoding runs in `tf.numpy_function` calls mapped with `num_parallel_calls`: OpenCV releases the GIL while it
decodes and resizes, so parallel calls use several cores (`benchmarks/data_pipeline.py` measures it). Bad files
never stop a run with `on_error="skip"`: they are dropped, and at the end of every pass over the data a warning
names how many were skipped and which (`DecodeReport`).
"""
import logging
import os
import threading

import numpy as np

from nonlocal_zoo.data import preprocessing
from nonlocal_zoo.data.sources import VIDEO_EXTENSIONS, ClipList, resolve_clip_source

logger = logging.getLogger("nonlocal_zoo.data")

ON_ERROR = ("skip", "raise")


class DecodeReport:
    """Collects the clips skipped by a pipeline, per pass over the data, and logs a summary when a pass ends.

    Attributes:
        passes: list of finished passes, each a dict `{"pass": n, "num_clips": N, "num_skipped": k,
            "skipped": [(path, reason), ...]}`.
        skipped: the `(path, reason)` pairs of the last finished pass.

    Example:
        >>> report = DecodeReport()
        >>> ds = make_dataset("clips/", training=True, report=report)
        >>> _ = list(ds)
        >>> report.passes[-1]["num_skipped"]
        2
    """

    def __init__(self, log=True):
        self.log = log
        self.num_per_pass = None
        self.passes = []
        self._open = {}
        self._lock = threading.Lock()

    @property
    def skipped(self):
        return list(self.passes[-1]["skipped"]) if self.passes else []

    def record(self, pass_index, name, error=None):
        """Count one processed clip of pass `pass_index`; `error` (an exception) marks it skipped."""
        with self._lock:
            state = self._open.setdefault(pass_index, {"count": 0, "skipped": []})
            state["count"] += 1
            if error is not None:
                reason = getattr(error, "reason", None) or f"{type(error).__name__}: {error}"
                state["skipped"].append((name, reason))
            if self.num_per_pass is None or state["count"] < self.num_per_pass:
                if self.num_per_pass is None and error is not None and self.log:
                    logger.warning("Skipped clip %s: %s", name, state["skipped"][-1][1])
                return
            del self._open[pass_index]
            summary = {"pass": len(self.passes), "num_clips": state["count"],
                       "num_skipped": len(state["skipped"]), "skipped": state["skipped"]}
            self.passes.append(summary)
        if summary["num_skipped"] and self.log:
            shown = "; ".join(f"{p} ({r})" for p, r in summary["skipped"][:20])
            more = "" if summary["num_skipped"] <= 20 else f"; and {summary['num_skipped'] - 20} more"
            logger.warning("Pass %d: skipped %d of %d clips that could not be decoded: %s%s", summary["pass"],
                           summary["num_skipped"], summary["num_clips"], shown, more)

    def all_failed(self):
        with self._lock:
            return bool(self.passes) and self.passes[-1]["num_skipped"] == self.passes[-1]["num_clips"]


def _prepare_clip(video, seed_value, config, training, normalize, decode_options):
    """One element: an augmented training clip, or the centre view of the test protocol."""
    rng = np.random.default_rng(int(seed_value) & 0x7FFFFFFFFFFFFFFF)
    if training:
        return preprocessing.train_clip(video, preset=config, rng=rng, normalize=normalize,
                                        decode_options=decode_options)
    views = preprocessing.multiview_clips(video, preset=config, num_clips=1, num_crops=1, normalize=normalize,
                                          decode_options=decode_options)
    return views[0]


def _process_worker(task):
    """Runs in a worker process: returns `(clip, None)` or `(None, reason)`; never raises."""
    path, seed_value, config, training, normalize, decode_options, out_dtype = task
    try:
        clip = _prepare_clip(path, seed_value, config, training, normalize, decode_options)
        return clip.astype(out_dtype, copy=False), None
    except Exception as e:  # reported by the parent, which decides between skip and raise
        return None, getattr(e, "reason", None) or f"{type(e).__name__}: {e}"


class _ProcessPool:
    """A lazily started `ProcessPoolExecutor` of spawned workers (spawn, not fork: safe beside TensorFlow's
    threads; scripts need the usual `if __name__ == "__main__":` guard). Restarted if a worker died."""

    def __init__(self, num_workers):
        self.num_workers = num_workers
        self._executor = None
        self._lock = threading.Lock()

    def get(self):
        import concurrent.futures
        import multiprocessing

        with self._lock:
            if self._executor is not None and getattr(self._executor, "_broken", False):
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
            if self._executor is None:
                self._executor = concurrent.futures.ProcessPoolExecutor(
                    self.num_workers, mp_context=multiprocessing.get_context("spawn"))
            return self._executor


_POOLS = {}
_POOLS_LOCK = threading.Lock()


def _shared_pool(num_workers):
    """One pool per worker count, shared by every dataset of this process (workers start once)."""
    with _POOLS_LOCK:
        if num_workers not in _POOLS:
            _POOLS[num_workers] = _ProcessPool(num_workers)
        return _POOLS[num_workers]


def _process_generator(clips, *, pool, report, shuffle, repeat, seed, deterministic, on_error, task_args):
    """Python generator of `(clip, label)` decoded by `pool`, at most 2 tasks per worker in flight."""
    import concurrent.futures
    import collections

    iteration = {"count": 0}

    def generate():
        iteration_index = iteration["count"]
        iteration["count"] += 1
        executor = pool.get()
        n = len(clips)
        pass_number = 0
        while True:
            order = np.arange(n)
            if shuffle:
                entropy = None if seed is None else [seed, iteration_index, pass_number]
                np.random.default_rng(entropy).shuffle(order)
            entropy = None if seed is None else [seed, iteration_index, pass_number, 1]
            seeds = np.random.default_rng(entropy).integers(0, 2**63 - 1, size=n)
            pending = collections.deque()
            tasks = iter(order.tolist())
            exhausted = False
            while True:
                while not exhausted and len(pending) < 2 * pool.num_workers:
                    try:
                        i = next(tasks)
                    except StopIteration:
                        exhausted = True
                        break
                    future = executor.submit(_process_worker, (clips.paths[i], int(seeds[i])) + task_args)
                    pending.append((future, i))
                if not pending:
                    break
                if deterministic is False:
                    done, _ = concurrent.futures.wait([f for f, _ in pending],
                                                      return_when=concurrent.futures.FIRST_COMPLETED)
                    k = next(k for k, (f, _) in enumerate(pending) if f in done)
                    future, i = pending[k]
                    del pending[k]
                else:
                    future, i = pending.popleft()
                clip, reason = future.result()
                path = clips.paths[i]
                if reason is not None:
                    from nonlocal_zoo.data.video_io import VideoDecodeError

                    error = VideoDecodeError(path, reason)
                    report.record(pass_number, path, error)
                    if on_error == "raise":
                        raise error
                    continue
                report.record(pass_number, path)
                yield clip, np.int32(clips.labels[i])
            if repeat and report.all_failed():  # repeating would spin forever without yielding anything
                raise RuntimeError(f"Every clip of the last pass failed to decode; last errors: {report.skipped[-3:]}")
            pass_number += 1
            if not repeat:
                return

    return generate


def tfds_source(source, split, data_dir):
    """Returns `(tf.data.Dataset of {"video", "label"}, num_examples or None, class_names or None)`, or None."""
    import tensorflow as tf

    if isinstance(source, tf.data.Dataset):
        cardinality = int(source.cardinality())
        return source, (cardinality if cardinality >= 0 else None), None
    builder = None
    if isinstance(source, str) and source.startswith("tfds:"):
        import tensorflow_datasets as tfds

        target = source[len("tfds:"):]
        if os.path.isdir(target):
            builder = tfds.builder_from_directory(target)
        else:
            builder = tfds.builder(target, data_dir=data_dir)
    else:
        try:
            import tensorflow_datasets as tfds

            if isinstance(source, tfds.core.DatasetBuilder):
                builder = source
        except ImportError:  # pragma: no cover
            return None
    if builder is None:
        return None
    split = split or "train"
    if split not in builder.info.splits:
        raise ValueError(
            f"TFDS dataset {builder.name!r} has splits {list(builder.info.splits)}. Received: split={split!r}"
        )
    ds = builder.as_dataset(split=split, shuffle_files=False)
    features = builder.info.features
    if "video" not in features or "label" not in features:
        raise ValueError(f"A TFDS source needs 'video' and 'label' features. Received: features={list(features)}")
    names = getattr(features["label"], "names", None)
    return ds, builder.info.splits[split].num_examples, (list(names) if names else None)


def make_dataset(source, *, preset=None, training=False, batch_size=8, split=None, class_names=None,
                 data_dir=None, shuffle=None, shuffle_buffer=None, seed=None, deterministic=None, repeat=False,
                 num_parallel_calls=None, prefetch=True, on_error="skip", normalize=True, drop_remainder=None,
                 decode_options=None, report=None, extensions=VIDEO_EXTENSIONS, parallelism="threads", **overrides):
    """A batched `tf.data.Dataset` of `(clips, labels)` prepared as the preset prescribes.

    Training elements are augmented clips (`train_clip`: temporal jitter, scale jitter, random crop and flip);
    evaluation elements are one centre view (the middle temporal clip of the preset's test sampling, centre crop of
    `test_crop`). For the full multi-view protocol use `nonlocal_zoo.evaluation.evaluate`.

    Args:
        source: a folder of clips (`root/<class>/<clip>`, or `root/<split>/<class>/<clip>` with `split=`), a CSV or
            list file of `(path, label)` rows, a sequence of `(path, label)` pairs, a TFDS dataset with a Video
            feature (a `tfds.core.DatasetBuilder`, `"tfds:<name>"` with `data_dir`, or `"tfds:<prepared dir>"`), or a
            `tf.data.Dataset` of `{"video": uint8 (F, H, W, 3), "label": int}`.
        preset: None, a preset name or a preprocessing dict (see `nonlocal_zoo.data.preprocessing`).
        training: augmented training clips (True) or centre evaluation views (False).
        batch_size: clips per batch; None leaves the dataset unbatched.
        split: split folder / TFDS split. class_names: fix the label order of a folder or list source.
        data_dir: TFDS data directory for `"tfds:<name>"`.
        shuffle: shuffle the clip order every pass (defaults to `training`). shuffle_buffer: buffer for TFDS
            sources (file sources shuffle their whole list). Defaults to 64.
        seed: seed for the order and the augmentations; with `deterministic=True` every run gives the same batches.
        deterministic: keep the element order despite parallel decoding (None: tf.data's default, True).
        repeat: repeat forever (a pass still reports its skipped clips).
        num_parallel_calls: parallel decoding calls (None: `tf.data.AUTOTUNE`; with processes, the CPU count).
        parallelism: `"threads"` (default: `tf.numpy_function` calls in tf.data's thread pool; OpenCV and numpy
            release the GIL for most of the work) or `"processes"` (file sources only: a pool of spawned worker
            processes, for many-core machines where the Python share of the work limits threads).
        prefetch: prefetch batches (`tf.data.AUTOTUNE`).
        on_error: `"skip"` drops clips that fail to decode (and reports them at the end of the pass) or `"raise"`.
        normalize: normalised float32 clips (default) or raw pixels.
        drop_remainder: drop the last partial batch (defaults to `training`).
        decode_options: dict for the decoder (`backend`, `max_pixels`, `timeout`, `max_buffer_bytes`, `on_damage`
            (damaged files are skipped and reported by default; `"warn"` uses their decoded frames)); decoding
            uses one decoder thread per call unless `num_threads` is given here.
        report: a `DecodeReport` to fill (one is created otherwise); also attached as `dataset.decode_report`.
        extensions: video file extensions listed in folders.
        **overrides: preprocessing keys (e.g. `num_frames=32, sampling_rate=2, train_crop=160`).

    Returns:
        `tf.data.Dataset` of `(clips (B, T, S, S, 3), labels (B,) int32)`. Its `class_names` attribute holds the
        class names when known.

    Example:
        >>> ds = make_dataset("my_clips", split="train", training=True, batch_size=8, preset="i3d_r50_8x8_kinetics400")
        >>> model.fit(ds, epochs=10)
    """
    import tensorflow as tf

    _check_dataset_arguments(on_error=on_error, batch_size=batch_size, parallelism=parallelism)
    config = preprocessing.resolve_preprocessing(preset, **overrides)
    shuffle = training if shuffle is None else shuffle
    drop_remainder = training if drop_remainder is None else drop_remainder
    maker = _ClipMaker(config, training=training, normalize=normalize, on_error=on_error,
                       decode_options={"num_threads": 1, **(decode_options or {})},
                       report=DecodeReport() if report is None else report)
    parallel = tf.data.AUTOTUNE if num_parallel_calls is None else num_parallel_calls
    order = dict(shuffle=shuffle, repeat=repeat, seed=seed, deterministic=deterministic)

    tfds_part = tfds_source(source, split, data_dir)
    if parallelism == "processes":
        if tfds_part is not None:
            raise ValueError("parallelism='processes' reads files; TFDS sources decode in TensorFlow. "
                             "Received: parallelism='processes' with a TFDS source")
        clips = resolve_clip_source(source, split=split, class_names=class_names, extensions=extensions)
        ds, names = _process_elements(clips, maker, num_parallel_calls=num_parallel_calls, **order), clips.class_names
    elif tfds_part is not None:
        ds, num_examples, names = tfds_part
        ds = _tfds_elements(ds, num_examples, maker, shuffle_buffer=shuffle_buffer, parallel=parallel, **order)
    else:
        clips = resolve_clip_source(source, split=split, class_names=class_names, extensions=extensions)
        ds, names = _file_elements(clips, maker, parallel=parallel, **order), clips.class_names
    return _batched(ds, maker, batch_size=batch_size, drop_remainder=drop_remainder, prefetch=prefetch,
                    class_names=names)


def _check_dataset_arguments(*, on_error, batch_size, parallelism):
    """Refuses `make_dataset` arguments outside their range, naming the value received."""
    if on_error not in ON_ERROR:
        raise ValueError(f"`on_error` must be one of {ON_ERROR}. Received: on_error={on_error!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"`batch_size` must be a positive int or None. Received: batch_size={batch_size!r}")
    if parallelism not in ("threads", "processes"):
        raise ValueError(f"`parallelism` must be 'threads' or 'processes'. Received: parallelism={parallelism!r}")


class _ClipMaker:
    """What every element of one dataset shares: the resolved preprocessing, the mode, the output clip shape and
    dtype, and the `DecodeReport` that counts the clips of each pass.

    Args:
        config: resolved preprocessing dict. training: augmented clips or centre views. normalize: float clips.
        on_error: `"skip"` or `"raise"`. decode_options: dict for the decoder. report: the `DecodeReport` to fill.
    """

    def __init__(self, config, *, training, normalize, on_error, decode_options, report):
        self.config = config
        self.training = training
        self.normalize = normalize
        self.on_error = on_error
        self.decode_options = decode_options
        self.report = report
        size = config["train_crop"] if training else config["test_crop"]
        self.clip_shape = (config["num_frames"], size, size, 3)  # (T, S, S, 3)
        raw_float = config["sampling"] == "pyslowfast"
        self.out_dtype = np.float32 if (normalize or raw_float) else np.uint8

    def task_args(self):
        """The per-dataset arguments a process worker needs after `(path, seed)`."""
        return (self.config, self.training, self.normalize, self.decode_options, self.out_dtype)

    def guarded(self, video, name, label, seed_value, index):
        """Prepares one element: `(clip, label, True)`, or a zero clip and False for a skipped clip.

        Args:
            video: a path or uint8 frames. name: what the report calls it. label: int label.
            seed_value: the element's random seed. index: its position in the (repeated) stream.
        """
        report = self.report
        pass_index = -1 if report.num_per_pass is None else int(index) // report.num_per_pass
        if self.on_error == "skip" and report.all_failed():
            raise RuntimeError(f"Every clip of the last pass failed to decode; last errors: {report.skipped[-3:]}")
        try:
            clip = _prepare_clip(video, seed_value, self.config, self.training, self.normalize,
                                 self.decode_options).astype(self.out_dtype, copy=False)
        except Exception as e:  # a training run never dies on one bad clip
            report.record(pass_index, name, e)
            if self.on_error == "raise":
                raise
            return np.zeros(self.clip_shape, self.out_dtype), np.int32(label), False
        report.record(pass_index, name)
        return clip, np.int32(label), True


def _ordered(ds, *, shuffle, shuffle_buffer, repeat, seed):
    """Shuffles and repeats `ds`, then pairs every element with its index and a seed: `(index, (element, seed))`."""
    import tensorflow as tf

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)  # made first, as it always was
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return tf.data.Dataset.zip((ds, seeds)).enumerate()


def _process_elements(clips, maker, *, num_parallel_calls, shuffle, repeat, seed, deterministic):
    """`(clip, label, ok)` elements of a file source decoded by a shared pool of worker processes."""
    import tensorflow as tf

    maker.report.num_per_pass = len(clips)
    workers = num_parallel_calls if isinstance(num_parallel_calls, int) and num_parallel_calls > 0 else None
    pool = _shared_pool(workers or os.cpu_count() or 1)
    generate = _process_generator(
        clips, pool=pool, report=maker.report, shuffle=shuffle, repeat=repeat, seed=seed,
        deterministic=deterministic, on_error=maker.on_error, task_args=maker.task_args())
    ds = tf.data.Dataset.from_generator(generate, output_signature=(
        tf.TensorSpec(maker.clip_shape, tf.as_dtype(maker.out_dtype)), tf.TensorSpec((), tf.int32)))
    return ds.map(lambda clip, label: (clip, label, True))


def _tfds_elements(ds, num_examples, maker, *, shuffle_buffer, parallel, shuffle, repeat, seed, deterministic):
    """`(clip, label, ok)` elements of a TFDS-style dataset of `{"video", "label"}` (frames decoded by TFDS)."""
    import tensorflow as tf

    maker.report.num_per_pass = num_examples
    ds = _ordered(ds, shuffle=shuffle, shuffle_buffer=shuffle_buffer or 64, repeat=repeat, seed=seed)

    def from_frames(index, element_seed):
        element, seed_value = element_seed
        name = element["path"] if "path" in element else tf.strings.as_string(index)

        def fn(frames, name_bytes, label, s, i):
            return maker.guarded(frames, name_bytes.decode("utf-8", "replace"), label, s, i)

        clip, label, ok = tf.numpy_function(
            fn, [element["video"], name, tf.cast(element["label"], tf.int64), seed_value, index],
            [maker.out_dtype, tf.int32, tf.bool], stateful=True)
        return clip, label, ok

    return ds.map(from_frames, num_parallel_calls=parallel, deterministic=deterministic)


def _file_elements(clips, maker, *, parallel, shuffle, repeat, seed, deterministic):
    """`(clip, label, ok)` elements of a file source decoded in tf.data's thread pool."""
    import tensorflow as tf

    maker.report.num_per_pass = len(clips)
    ds = tf.data.Dataset.from_tensor_slices((clips.paths, np.asarray(clips.labels, np.int64)))
    ds = _ordered(ds, shuffle=shuffle, shuffle_buffer=len(clips), repeat=repeat, seed=seed)

    def from_file(index, element_seed):
        (path, label), seed_value = element_seed

        def fn(path_bytes, label, s, i):
            path_str = path_bytes.decode("utf-8")
            return maker.guarded(path_str, path_str, label, s, i)

        return tf.numpy_function(fn, [path, label, seed_value, index], [maker.out_dtype, tf.int32, tf.bool],
                                 stateful=True)

    return ds.map(from_file, num_parallel_calls=parallel, deterministic=deterministic)


def _batched(ds, maker, *, batch_size, drop_remainder, prefetch, class_names):
    """Drops skipped clips, fixes the static shapes, batches and prefetches; attaches `decode_report` and
    `class_names` to the returned dataset."""
    import tensorflow as tf

    ds = ds.filter(lambda clip, label, ok: ok)
    ds = ds.map(lambda clip, label, ok: (tf.ensure_shape(clip, maker.clip_shape), tf.ensure_shape(label, ())))
    if batch_size is not None:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if prefetch:
        ds = ds.prefetch(tf.data.AUTOTUNE)
    try:
        ds.decode_report = maker.report
        ds.class_names = class_names
    except AttributeError:  # pragma: no cover - tf.data objects accept attributes today
        pass
    return ds


def clip_list(source, *, split=None, class_names=None, extensions=VIDEO_EXTENSIONS):
    """The resolved `ClipList` of a file source (folder, list file or pairs); see `nonlocal_zoo.data.sources`."""
    return resolve_clip_source(source, split=split, class_names=class_names, extensions=extensions)


__all__ = ["DecodeReport", "make_dataset", "clip_list", "ClipList"]

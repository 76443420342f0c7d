"""Multi-view evaluation: `num_clips` temporal x `num_crops` spatial views per video, clip- and video-level top-k.

The published Kinetics numbers are video-level: the model's outputs over the 30 views (10 clips x 3 crops of 256)
of a video are averaged, then ranked (`research/architecture.md` §5). Clip-level accuracy ranks every view on its
own, as the official test code also prints.
"""
import collections
import concurrent.futures
import functools
import logging
import os

import numpy as np

from nonlocal_zoo.data import preprocessing, transforms
from nonlocal_zoo.data.pipeline import ON_ERROR, tfds_source
from nonlocal_zoo.data.sources import VIDEO_EXTENSIONS, resolve_clip_source
from nonlocal_zoo.tasks.classifier import pred_logits_model
from nonlocal_zoo.tasks.preprocessor import aggregate_views, softmax

logger = logging.getLogger("nonlocal_zoo.evaluation")


def _iter_items(source, *, split, class_names, data_dir, extensions):
    """Yields `(video, label, name)` with `video` a path or decoded frames; returns class names via a list."""
    tfds_part = tfds_source(source, split, data_dir)
    if tfds_part is not None:
        ds, _, names = tfds_part

        def generate():
            for n, element in enumerate(ds.as_numpy_iterator()):
                name = element.get("path", str(n))
                name = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
                yield element["video"], int(element["label"]), name

        return generate(), names
    clips = resolve_clip_source(source, split=split, class_names=class_names, extensions=extensions)
    return ((p, int(lab), p) for p, lab in zip(clips.paths, clips.labels)), clips.class_names


def _topk_hits(scores, labels, k):
    """Boolean per row: is `labels[i]` among the `k` highest `scores[i]` (ties broken by lower class index)."""
    k = min(k, scores.shape[-1])
    order = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    return np.any(order == np.asarray(labels)[..., None], axis=-1)


def _view_score_fn(model, aggregation, apply_softmax):
    """Per-view scores in the domain the rule averages: probabilities (`"softmax"`) or logits (`"logits"`)."""
    if aggregation == "logits":
        if apply_softmax:  # the model already outputs logits
            network = model
        elif getattr(model, "activation", "softmax") is None:
            network = model
        else:
            network = model.logits_model() if hasattr(model, "logits_model") else pred_logits_model(model)
        return getattr(network, "predict_on_batch", None) or network, False
    if getattr(model, "activation", "softmax") is None and hasattr(model, "preprocessor"):
        apply_softmax = True  # a VideoClassifier that outputs logits
    return getattr(model, "predict_on_batch", None) or model, apply_softmax


def evaluate(model, source, *, preset=None, num_clips=10, num_crops=3, batch_size=None, max_batch_bytes=256 * 2**20,
             apply_softmax=False, aggregation=None, top_k=(1, 5), split=None, class_names=None, data_dir=None,
             on_error="skip", num_workers=None, decode_options=None, return_predictions=False, progress=False,
             extensions=VIDEO_EXTENSIONS, dtype=None, **overrides):
    """Multi-view testing of `model` over a clip source; returns clip-level and video-level top-k accuracy.

    Every video is decoded once (frame-exactly; the union of the frames of its clips), turned into
    `num_clips * num_crops` views by the preset's test protocol (`nonlocal_zoo.data.multiview_clips`), and the
    views of consecutive videos are batched together under a memory cap. The views' scores of a video are
    aggregated by the protocol's `test_aggregation` rule: the mean of the per-view softmax probabilities
    (`"softmax"`, the official, PySlowFast and mmaction2 protocols) or the softmax of the mean logits (`"logits"`,
    gluon-cv's protocol).

    Args:
        model: a `nonlocal_zoo.VideoClassifier` (its preprocessor is the default protocol), a Keras model or any
            callable mapping `(B, T, S, S, 3)` float32 clips to `(B, num_classes)` scores: probabilities (the
            zoo's classifiers end with a softmax) or logits (see `apply_softmax`).
        source: a clip folder, CSV/list file, `(path, label)` pairs or TFDS dataset, as in `make_dataset`.
        preset: None, a preset name or a preprocessing dict (clip length, stride, test resize and crop, mean/std,
            index rules). Defaults to the VideoClassifier's own preprocessing, else the preset `create_model`
            recorded on the model, else the official 8x8 protocol (`nonlocal_zoo.data.DEFAULT_PREPROCESSING`).
        num_clips: temporal views per video. Defaults to 10.
        num_crops: spatial views per clip, 1 (centre) or 3 (along the long side). Defaults to 3.
        batch_size: most views per forward pass. Defaults to as many as `max_batch_bytes` allows.
        max_batch_bytes: cap on the float32 input bytes of one forward pass. Defaults to 256 MiB.
        apply_softmax: the model outputs logits (softmax them per view for the `"softmax"` rule). Defaults to
            False (the outputs are probabilities, as the zoo's classifiers give).
        aggregation: `"softmax"` or `"logits"` (see above). Defaults to the protocol's `test_aggregation`. For
            `"logits"` the logits are read from the model's `pred` layer when it outputs probabilities.
        top_k: the k of the reported accuracies. Defaults to (1, 5).
        split, class_names, data_dir, extensions: as in `make_dataset`.
        on_error: `"skip"` leaves out videos that fail to decode (listed in the result) or `"raise"`.
        num_workers: decoding threads. Defaults to the CPU count.
        decode_options: dict for the decoder (`backend`, `max_pixels`, `timeout`, `max_buffer_bytes`).
        return_predictions: also return the per-video averaged scores, labels, names and per-view scores.
        progress: show a tqdm progress bar.
        dtype: compute dtype of a `VideoClassifier`, `"float32"` or `"bfloat16"` (`VideoClassifier.with_dtype`).
            Defaults to None: the model's own. Scores are averaged in float64 either way.
        **overrides: preprocessing keys (e.g. `num_frames=32, sampling_rate=2, test_crop=224`).

    Returns:
        dict with `video_top{k}` and `clip_top{k}` (fractions in [0, 1]) for each k, `num_videos`, `num_views`
        (views evaluated), `views_per_video`, `aggregation`, `num_skipped`, `skipped` (`[(name, reason)]`), and with
        `return_predictions` also `video_scores` `(N, C)`, `view_scores` `(N, V, C)`, `labels` `(N,)`, `names`.

    Example:
        >>> model = nonlocal_zoo.nl_resnet50_3d(weights="kinetics400")
        >>> result = evaluate(model, "kinetics_val/", preset="i3d_nl5_r50_8x8_kinetics400")
        >>> result["video_top1"], result["clip_top1"]
    """
    top_k = _check_arguments(on_error, num_clips, num_crops, batch_size, top_k)
    if dtype is not None:
        if not hasattr(model, "with_dtype"):
            raise ValueError(f"`dtype` applies to a VideoClassifier; build other models under the dtype policy you "
                             f"want. Received: dtype={dtype!r} for a {type(model).__name__}")
        model = model.with_dtype(dtype)
    if preset is None and hasattr(model, "preprocessor"):
        preset = model.preprocessor.config
    elif preset is None:
        from nonlocal_zoo.models import preset_of

        preset = preset_of(model)  # what create_model recorded on the model (never its name)
    config = preprocessing.resolve_preprocessing(preset, test_num_clips=num_clips, test_num_crops=num_crops,
                                                 **overrides)
    aggregation = aggregation or config["test_aggregation"]
    if aggregation not in ("softmax", "logits"):
        raise ValueError(f"`aggregation` must be 'softmax' or 'logits'. Received: aggregation={aggregation!r}")
    view_bytes = 4 * config["num_frames"] * config["test_crop"] ** 2 * 3
    cap = max(1, int(max_batch_bytes) // view_bytes)
    predict, apply_softmax = _view_score_fn(model, aggregation, apply_softmax)
    batcher = _ViewBatcher(predict, config, views_per_video=num_clips * num_crops,
                           views_per_batch=cap if batch_size is None else min(batch_size, cap),
                           apply_softmax=apply_softmax, aggregation=aggregation)
    items, _ = _iter_items(source, split=split, class_names=class_names, data_dir=data_dir, extensions=extensions)
    load = functools.partial(_load_views, config=config, on_error=on_error,
                             decode_options={"num_threads": 1, **(decode_options or {})})
    skipped = []
    bar = _progress_bar(progress)
    for views, label, name, error in _decoded_in_order(items, load, num_workers or os.cpu_count() or 1):
        if bar is not None:
            bar.update(1)
        if error is not None:
            skipped.append((name, getattr(error, "reason", None) or f"{type(error).__name__}: {error}"))
            continue
        batcher.add(views, label, name)
    batcher.flush(final=True)
    if bar is not None:
        bar.close()
    return _results(batcher, skipped, top_k, aggregation, return_predictions)


def _check_arguments(on_error, num_clips, num_crops, batch_size, top_k):
    """Validated `top_k` as a tuple; bad arguments raise ValueError quoting them."""
    if on_error not in ON_ERROR:
        raise ValueError(f"`on_error` must be one of {ON_ERROR}. Received: on_error={on_error!r}")
    if not isinstance(num_clips, int) or num_clips < 1:
        raise ValueError(f"`num_clips` must be a positive int. Received: num_clips={num_clips!r}")
    if num_crops not in (1, 3):
        raise ValueError(f"`num_crops` must be 1 or 3. Received: num_crops={num_crops!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"`batch_size` must be a positive int or None. Received: batch_size={batch_size!r}")
    top_k = tuple(int(k) for k in top_k)
    if not top_k or min(top_k) < 1:
        raise ValueError(f"`top_k` must be positive ints. Received: top_k={top_k!r}")
    return top_k


def _load_views(item, *, config, on_error, decode_options):
    """`(uint8 views, label, name, error)` of one `(video, label, name)` item (views None when it failed)."""
    video, label, name = item
    try:
        # uint8 views (4x smaller while queued); normalised per batch just before the model
        views = preprocessing.multiview_clips(video, preset=config, normalize=False, decode_options=decode_options)
        return views, label, name, None
    except Exception as e:  # one bad video never ends an evaluation with on_error="skip"
        if on_error == "raise":
            raise
        return None, label, name, e


def _decoded_in_order(items, load, num_workers):
    """`load(item)` for every item on a thread pool (a few ahead of the consumer), yielded in input order."""
    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
        in_flight = collections.deque()
        iterator = iter(items)
        exhausted = False
        while True:
            while not exhausted and len(in_flight) < num_workers + 1:
                try:
                    in_flight.append(pool.submit(load, next(iterator)))
                except StopIteration:
                    exhausted = True
            if not in_flight:
                return
            yield in_flight.popleft().result()


def _progress_bar(progress):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(unit="video", desc="evaluate")


class _ViewBatcher:
    """Batches the views of consecutive videos into forward passes of at most `views_per_batch` views, and
    aggregates each video's view scores once all of them are in."""

    def __init__(self, predict, config, *, views_per_video, views_per_batch, apply_softmax, aggregation):
        self.predict, self.config = predict, config
        self.views_per_video, self.views_per_batch = views_per_video, views_per_batch
        self.apply_softmax, self.aggregation = apply_softmax, aggregation
        self.pending = []  # (video slot, uint8 views (V, T, S, S, 3)) not yet run
        self.pending_count = 0
        self.outputs = collections.defaultdict(list)  # video slot -> list of (n, C) score arrays
        self.labels, self.names, self.video_scores, self.view_scores = [], [], [], []

    def add(self, views, label, name):
        slot = len(self.labels)
        self.labels.append(label)
        self.names.append(name)
        self.video_scores.append(None)
        self.view_scores.append(None)
        self.pending.append((slot, views))
        self.pending_count += len(views)
        self.flush()

    def flush(self, final=False):
        while self.pending_count >= self.views_per_batch or (final and self.pending_count):
            self._run(self._next_chunk())
        done = [slot for slot in list(self.outputs)
                if sum(len(o) for o in self.outputs[slot]) == self.views_per_video]
        for slot in sorted(done):
            per_view = np.concatenate(self.outputs.pop(slot))  # (V, C)
            self.view_scores[slot] = per_view
            self.video_scores[slot] = aggregate_views(per_view, self.aggregation)

    def _next_chunk(self):
        """Up to `views_per_batch` pending views as `[(slot, views)]`, splitting a video across batches."""
        chunk, taken = [], 0
        while self.pending and taken < self.views_per_batch:
            slot, v = self.pending[0]
            room = self.views_per_batch - taken
            if len(v) <= room:
                chunk.append((slot, v))
                taken += len(v)
                self.pending.pop(0)
            else:
                chunk.append((slot, v[:room]))
                self.pending[0] = (slot, v[room:])
                taken += room
        self.pending_count -= taken
        return chunk

    def _run(self, chunk):
        c = self.config
        x = np.concatenate([v for _, v in chunk])  # (B, T, S, S, 3), B <= views_per_batch
        x = transforms.normalize(x, mean=c["mean"], std=c["std"], scale=c["scale"], channel_order=c["channel_order"])
        y = np.asarray(self.predict(x))
        if y.dtype not in (np.float32, np.float64):
            y = y.astype(np.float32)  # e.g. bfloat16 outputs of a model built under mixed_bfloat16
        if y.ndim != 2 or y.shape[0] != x.shape[0]:
            raise ValueError(f"The model must return (batch, num_classes) scores. Received: output shape {y.shape}")
        if self.apply_softmax:
            y = softmax(y.astype(np.float64))
        start = 0
        for slot, v in chunk:
            self.outputs[slot].append(y[start:start + len(v)])
            start += len(v)


def _results(batcher, skipped, top_k, aggregation, return_predictions):
    """The result dict of `evaluate` (accuracies, counts, skipped videos, optionally the scores)."""
    if skipped:
        logger.warning("evaluate: skipped %d videos that could not be decoded: %s", len(skipped),
                       "; ".join(f"{n} ({r})" for n, r in skipped[:20]))
    if not batcher.labels:
        raise ValueError(f"No video could be evaluated ({len(skipped)} skipped): {skipped[:5]}")
    labels = np.asarray(batcher.labels, dtype=np.int64)
    video_arr = np.stack(batcher.video_scores)  # (N, C)
    view_arr = np.stack(batcher.view_scores)  # (N, V, C)
    if labels.max() >= video_arr.shape[-1]:
        raise ValueError(f"A label ({labels.max()}) is outside the model's {video_arr.shape[-1]} classes.")
    views_per_video = batcher.views_per_video
    result = {}
    for k in top_k:
        result[f"video_top{k}"] = float(_topk_hits(video_arr, labels, k).mean())
        hits = _topk_hits(view_arr, np.repeat(labels[:, None], views_per_video, axis=1), k)
        result[f"clip_top{k}"] = float(hits.mean())
    result.update({"num_videos": len(labels), "num_views": len(labels) * views_per_video,
                   "views_per_video": views_per_video, "aggregation": aggregation, "num_skipped": len(skipped),
                   "skipped": skipped})
    if return_predictions:
        result.update({"video_scores": video_arr, "view_scores": view_arr, "labels": labels,
                       "names": batcher.names})
    return result

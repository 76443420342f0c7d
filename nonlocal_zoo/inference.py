"""Video classification by model name: what `nonlocal-zoo classify` runs.

A thin layer over the task API: `load_model` is `nonlocal_zoo.tasks.resolve` with the command line's defaults
(a preset without published weights needs explicit `weights`), and `classify` turns a `VideoClassifier`'s
aggregated scores into top-k labels per video, reporting each video on its own (one unreadable file does not hide
the results of the others).

Example:
    >>> clf = load_model("demo")
    >>> for result in classify(clf, ["clip.mp4"], top_k=3):
    ...     print(result["top"][0]["label"])
"""
import os

import numpy as np

from nonlocal_zoo.tasks import VideoClassifier, resolve


def load_model(spec, *, weights="auto", preset=None, labels=None, **kwargs):
    """The `VideoClassifier` a user names (`"demo"`, a preset, a preset directory, a `.keras` file, `hf://`).

    Args:
        spec: the model, as `nonlocal_zoo.tasks.resolve` takes it.
        weights: `"auto"` (published / saved weights; an architecture-only preset is refused), `None`/`"none"`
            (random, for smoke tests), `"kinetics400"`, a weights file or an `hf://` handle.
        preset: for a plain `.keras` model: the preset whose architecture and protocol it has.
        labels: class names (a list or a text file) replacing the model's.
        **kwargs: further `resolve` arguments.

    Returns:
        A `VideoClassifier`.

    Example:
        >>> clf = load_model("i3d_nl5_r50_8x8_kinetics400")
    """
    return resolve(spec, weights=weights, preset=preset, labels=labels, require_weights=True, **kwargs)


def classify(model, videos, *, top_k=5, num_clips=1, num_crops=1, on_error="report"):
    """Classifies videos: the top-k labels of each, from scores aggregated over `num_clips x num_crops` views by
    the model's own rule (softmax or logits averaging).

    Args:
        model: a `VideoClassifier` (see `load_model`).
        videos: paths (or decoded uint8 `(F, H, W, 3)` frames).
        top_k: labels to return per video. Defaults to `5`.
        num_clips: temporal views per video (uniformly spread, as in multi-view testing), 1 to 100. Defaults to `1`.
        num_crops: spatial crops per clip, 1 (centre) or 3. Defaults to `1`.
        on_error: `"report"` (a video that cannot be read gets `{"video", "error"}` and the others go on) or
            `"raise"`.

    Returns:
        One dict per video: `{"video": path, "top": [{"label", "index", "score"}, ...], "views": V}`, or
        `{"video": path, "error": message}`.

    Example:
        >>> results = classify(load_model("demo"), ["a.mp4"], top_k=3)
    """
    if not isinstance(model, VideoClassifier):
        raise ValueError(f"`model` must be a VideoClassifier (see load_model). Received: {type(model).__name__}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= model.num_classes:
        raise ValueError(f"`top_k` must be an integer in [1, {model.num_classes}]. Received: top_k={top_k!r}")
    model.preprocessor.check_views(num_clips, num_crops)  # before the per-video loop, which reports video errors
    if on_error not in ("report", "raise"):
        raise ValueError(f"`on_error` must be 'report' or 'raise'. Received: on_error={on_error!r}")
    results = []
    for video in model.preprocessor.standardize(list(videos) if isinstance(videos, (list, tuple)) else videos):
        name = os.fspath(video) if isinstance(video, (str, os.PathLike)) else "<array>"
        try:
            scores = model.predict_videos([video], num_clips=num_clips, num_crops=num_crops)
        except (ValueError, OSError) as error:  # VideoDecodeError is a ValueError
            if on_error == "raise":
                raise
            results.append({"video": name, "error": " ".join(str(error).split()) or type(error).__name__})
            continue
        results.append(top_k_row(name, scores[0], model.labels, top_k=top_k, views=num_clips * num_crops))
    return results


def top_k_row(video, scores, labels, *, top_k, views):
    """One video's result as `classify` returns it: `{"video", "views", "top": [{"label", "index", "score"}, ...]}`
    with the `top_k` best classes of its aggregated `scores` (C,) named by `labels`, best first.

    Example:
        >>> top_k_row("a.mp4", np.array([0.1, 0.7, 0.2]), ["x", "y", "z"], top_k=2, views=1)["top"][0]["label"]
        'y'
    """
    from nonlocal_zoo.pretrained.labels import decode_predictions

    top = decode_predictions(np.asarray(scores)[None], top=top_k, labels=list(labels))[0]  # (1, C) -> one row
    return {"video": video, "views": views,
            "top": [{"label": label, "index": index, "score": score} for index, label, score in top]}

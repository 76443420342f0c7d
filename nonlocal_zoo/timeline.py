"""Per-window class scores of a long video: `timeline` (`nonlocal-zoo timeline`).

The video is cut into the windows of `nonlocal_zoo.features.window_plan` (one clip of the model's protocol per
window, padded by repeating the last frame at the end). The score of a window is what the classifier gives for that
window's clip with the same views as `evaluate`: the preset's test crops (`num_crops`, default the preset's
`test_num_crops`) of the one temporal clip, scored by `VideoClassifier.view_scores` and combined by the preprocessor's
aggregation rule (mean of softmax probabilities, or softmax of the mean logits). So a window's row equals
`clf.predict(frames_of_the_window, num_clips=1, num_crops=num_crops)` on the window's `span` frames.

Outputs in `out_dir`: `timeline.json` (settings and, per window, frames, timestamps and top-k classes),
`timeline.csv` (one line per window and rank), `timeline.png` (the scores over time of the classes that are ever in
the top-k, at most `plot_classes` of them) and, with `annotate=True`, `annotated.mp4`: the video with the current
window's top label and score drawn on every frame (frames keep their timestamps).

Example:
    >>> result = timeline("match.mp4", "demo", stride=4, top_k=3, out_dir="timeline/")
    >>> result["windows"][0]["top"][0]
    {'label': 'moving_left', 'index': 0, 'score': 0.91}
"""
import csv
import fractions
import json
import os

import numpy as np

from nonlocal_zoo.features import WindowViews, as_classifier, stream_windows, window_plan

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def timeline(video, model, *, stride=None, window=None, top_k=5, num_crops=None, batch_size=8, out_dir=None,
             annotate=False, plot_classes=5, weights="auto", decode_options=None, dtype=None):
    """Top-k classes per window of a video, with frames and timestamps; optionally written as JSON/CSV/PNG/MP4.

    Args:
        video: a video file.
        model: a `VideoClassifier` or what `nonlocal_zoo.inference.load_model` takes (`"demo"`, a preset, ...).
        stride: frames between window starts. Defaults to the window.
        window: frames per window (a multiple of the clip's `num_frames`). Defaults to `num_frames x sampling_rate`.
        top_k: classes listed per window. Defaults to 5.
        num_crops: spatial views per window (1 or 3). Defaults to the preset's `test_num_crops` (as `evaluate`).
        batch_size: views per forward pass.
        out_dir: write `timeline.json`, `timeline.csv`, `timeline.png` (and `annotated.mp4`) there. None: nothing
            is written.
        annotate: also write `annotated.mp4` (needs `out_dir`).
        plot_classes: classes drawn in the PNG at most. Defaults to 5.
        weights: passed to `load_model` when `model` is a name.
        decode_options: `SeekReader` options.
        dtype: compute dtype, `"float32"` or `"bfloat16"` (`VideoClassifier.with_dtype`). Defaults to the model's.

    Returns:
        A dict: `video`, `model`, settings, `labels`, `scores` (float64 `(W, num_classes)`), `frame_indices`
        (`(W, num_frames)`), `window_frames` (`(W, 2)`), `timestamps` (`(W, 2)` s), `padded` (`(W,)`), `windows` (the
        JSON records) and `files` (paths written).

    Raises:
        ValueError: bad arguments or an unreadable video (`VideoDecodeError`).
    """
    clf, spec = as_classifier(model, weights, dtype)
    pre = clf.preprocessor
    config = pre.config
    num_crops = config["test_num_crops"] if num_crops is None else num_crops
    if num_crops not in (1, 3) or isinstance(num_crops, bool):
        raise ValueError(f"`num_crops` must be 1 or 3. Received: num_crops={num_crops!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= clf.num_classes:
        raise ValueError(f"`top_k` must be an integer from 1 to the model's {clf.num_classes} classes. "
                         f"Received: top_k={top_k!r}")
    if annotate and out_dir is None:
        raise ValueError("`annotate=True` needs `out_dir` (where annotated.mp4 is written)")
    T, r, sampling = config["num_frames"], config["sampling_rate"], config["sampling"]
    window_plan(1, num_frames=T, sampling_rate=r, sampling=sampling, window=window, stride=stride)  # validate

    def make_plan(n):
        return window_plan(n, num_frames=T, sampling_rate=r, sampling=sampling, window=window, stride=stride)

    views = WindowViews(pre, crop=num_crops)
    path = os.fspath(video)
    plan = info = None
    per_view, pending = {}, []  # window -> (V, C) scores; windows waiting for a full batch of views

    def flush():
        if pending:
            x = np.concatenate([clip for _, clip in pending])  # (sum V, T, S, S, 3)
            out = clf.view_scores(x, batch_size=batch_size)  # (sum V, C)
            for i, (w, _) in enumerate(pending):
                per_view[w] = out[i * num_crops:(i + 1) * num_crops]
            pending.clear()

    for event in stream_windows([path], make_plan, views, num_workers=1, decode_options=decode_options):
        if event[0] == "video":
            plan, info = event[2], event[3]
        elif event[0] == "window":
            pending.append((event[2], event[3]))  # (V, T, S, S, 3) views of window event[2]
            if len(pending) * num_crops >= batch_size:
                flush()  # scored as they come: memory stays at one batch, whatever the video's length
        elif event[0] == "error":
            raise event[3]
    flush()
    order = range(len(plan.starts))
    scores = pre.aggregate(np.concatenate([per_view[w] for w in order]),
                           counts=[num_crops] * len(plan.starts))  # (W, C), as evaluate aggregates
    starts, ends = info["starts"], info["ends"]
    timestamps = np.stack([starts[plan.frame_indices[:, 0]], ends[plan.frame_indices[:, -1]]], axis=1)
    labels = list(clf.labels)
    windows = []
    for w in order:
        best = np.argsort(-scores[w], kind="stable")[:top_k]
        windows.append({
            "window": w, "start_frame": int(plan.window_frames[w, 0]), "end_frame": int(plan.window_frames[w, 1]),
            "frame_indices": plan.frame_indices[w].tolist(), "start": float(timestamps[w, 0]),
            "end": float(timestamps[w, 1]), "padded": bool(plan.padded[w]),
            "top": [{"label": labels[i], "index": int(i), "score": float(scores[w, i])} for i in best]})
    result = {
        "video": path, "model": spec, "preset": clf.preset, "window": plan.span, "stride": plan.stride,
        "num_frames": plan.num_frames, "sampling_rate": plan.sampling_rate, "num_crops": num_crops,
        "aggregation": pre.aggregation, "num_video_frames": int(info["num_video_frames"]),
        "timestamp_source": info["timestamp_source"], "top_k": top_k, "labels": labels, "windows": windows,
        "scores": scores, "frame_indices": plan.frame_indices, "window_frames": plan.window_frames,
        "timestamps": timestamps, "padded": plan.padded, "files": {},
    }
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        result["files"]["json"] = _write_json(result, os.path.join(out_dir, "timeline.json"))
        result["files"]["csv"] = _write_csv(result, os.path.join(out_dir, "timeline.csv"))
        result["files"]["png"] = plot_timeline(result, os.path.join(out_dir, "timeline.png"),
                                               max_classes=plot_classes)
        if annotate:
            result["files"]["mp4"] = annotate_video(path, result, os.path.join(out_dir, "annotated.mp4"))
    return result


def _atomic(path, write):
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _write_json(result, path):
    keys = ("video", "model", "preset", "window", "stride", "num_frames", "sampling_rate", "num_crops", "aggregation",
            "num_video_frames", "timestamp_source", "top_k", "windows")

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({k: result[k] for k in keys}, f, indent=1)

    return _atomic(path, write)


def _write_csv(result, path):
    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(["window", "start_frame", "end_frame", "start_s", "end_s", "padded", "rank", "label",
                          "class_index", "score"])
            for w in result["windows"]:
                for rank, item in enumerate(w["top"], 1):
                    out.writerow([w["window"], w["start_frame"], w["end_frame"], f"{w['start']:.6f}",
                                  f"{w['end']:.6f}", int(w["padded"]), rank, item["label"], item["index"],
                                  f"{item['score']:.6f}"])

    return _atomic(path, write)


def plot_classes_of(result, max_classes=5):
    """The classes a plot shows: those ever in a window's top-k, by their best score, at most `max_classes`."""
    scores = result["scores"]
    seen = sorted({item["index"] for w in result["windows"] for item in w["top"]},
                  key=lambda i: -float(scores[:, i].max()))
    return seen[:max_classes]


def plot_timeline(result, path, *, max_classes=5, width=960, height=360):
    """Draws the scores over time (window centres) of the top classes as a PNG (Pillow, no plotting library).

    Returns:
        `path`.
    """
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 48, width - 200, 16, height - 36
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    times = result["timestamps"].mean(axis=1)
    t0, t1 = float(result["timestamps"][0, 0]), float(result["timestamps"][-1, 1])
    span = max(t1 - t0, 1e-9)

    def xy(t, s):
        return left + (right - left) * (t - t0) / span, bottom - (bottom - top) * float(s)

    for k in range(6):  # y ticks 0, 0.2, ..., 1
        y = bottom - (bottom - top) * k / 5
        draw.line([left - 4, y, left, y], fill=(0, 0, 0))
        draw.text((4, y - 6), f"{k / 5:.1f}", fill=(0, 0, 0))
    for k in range(6):  # x ticks in seconds
        t = t0 + span * k / 5
        x = left + (right - left) * k / 5
        draw.line([x, bottom, x, bottom + 4], fill=(0, 0, 0))
        draw.text((x - 12, bottom + 8), f"{t:.1f}s", fill=(0, 0, 0))
    for n, c in enumerate(plot_classes_of(result, max_classes)):
        colour = PALETTE[n % len(PALETTE)]
        points = [xy(t, s) for t, s in zip(times, result["scores"][:, c])]
        if len(points) == 1:
            x, y = points[0]
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        else:
            draw.line(points, fill=colour, width=2)
        draw.rectangle([right + 12, top + 8 + 18 * n, right + 24, top + 20 + 18 * n], fill=colour)
        draw.text((right + 30, top + 8 + 18 * n), str(result["labels"][c])[:26], fill=(0, 0, 0))
    draw.text((left, height - 14), "time (window centre)", fill=(0, 0, 0))
    return _atomic(path, lambda tmp: image.save(tmp, format="PNG"))


def current_windows(result, num_video_frames):
    """For every frame, the window whose label is shown: the last window starting at or before it."""
    starts = result["window_frames"][:, 0]
    return np.searchsorted(starts, np.arange(num_video_frames), side="right") - 1  # (N,) >= 0 (window 0 starts at 0)


def annotate_video(video, result, path):
    """Writes a copy of the video (MPEG-4 part 2, same frame timestamps) with the current window's top label and
    score drawn on each frame.

    Returns:
        `path`.
    """
    import av
    import cv2

    windows = current_windows(result, result["num_video_frames"])

    def write(tmp):
        with av.open(os.fspath(video)) as src, av.open(tmp, "w", format="mp4") as dst:
            stream = src.streams.video[0]
            start = stream.start_time or 0
            # MPEG-4 part 2 takes time bases up to 1/65535: finer ones (e.g. 1/90000) are rounded to milliseconds
            time_base = stream.time_base if stream.time_base.denominator <= 65535 else fractions.Fraction(1, 1000)
            out, last = None, None
            k = 0
            for frame in src.decode(stream):
                if k >= len(windows):
                    break
                image = frame.to_ndarray(format="rgb24")
                h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2  # yuv420p needs even sizes
                image = np.ascontiguousarray(image[:h, :w])
                if out is None:
                    out = dst.add_stream("mpeg4", rate=stream.average_rate or 25)
                    out.width, out.height, out.pix_fmt = w, h, "yuv420p"
                    out.time_base = out.codec_context.time_base = time_base
                    out.codec_context.bit_rate = 4_000_000
                best = result["windows"][int(windows[k])]["top"][0]
                text = f"{best['label']} {best['score']:.2f}"
                scale = max(0.35, w / 640)
                thick = max(1, int(round(scale * 2)))
                cv2.putText(image, text, (6, int(20 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                            thick + 2, cv2.LINE_AA)
                cv2.putText(image, text, (6, int(20 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                            (255, 255, 255), thick, cv2.LINE_AA)
                new = av.VideoFrame.from_ndarray(image, format="rgb24")
                new.pts = int(round((frame.pts - start) * stream.time_base / time_base))
                new.time_base = time_base
                if last is not None and new.pts <= last:
                    new.pts = last + 1
                last = new.pts
                for packet in out.encode(new):
                    dst.mux(packet)
                k += 1
            if out is not None:
                for packet in out.encode():
                    dst.mux(packet)

    return _atomic(path, write)


__all__ = ["annotate_video", "current_windows", "plot_classes_of", "plot_timeline", "timeline"]

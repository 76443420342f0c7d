"""Long-video benchmark (issue 13): `python -m benchmarks.long_video [--minutes 30] [--model demo] [--json out.json]`.

Generates once (cached in `--workdir`, default `$TMPDIR/nonlocal_zoo_long_video/`) an index-coded H.264 video of
`--minutes` minutes at 340x256, 30 fps, with B-frames and a keyframe every `--keyint` frames (default 60 = 2 s,
the interval streaming sites use), then measures:

1. **Window reads**: a 64-frame window (the 8x8 presets' span) at the start, at several positions and at the very end,
   by `SeekReader` (seek to the keyframe, decode forward; a fresh reader each time, the index cached) and by
   sequential decoding from the first frame (`read_video(frame_indices=...)`, what long-video code did before); also
   the median over 20 random windows in the first and in the last minute (the same keyframe-alignment distribution).
   Every window read is checked against the frame codes.
2. **Features**: `extract_features` windows/s against the video_features approach (decode the whole video
   sequentially, cut the windows, run the same preprocessing and the same model in the same batches, no overlap of
   decoding and model), for dense windows (stride = span) and sparse ones (one window every `--sparse-stride`
   frames). The two give the same features (checked).

Prints a JSON report (also written with `--json`).
"""
import argparse
import json
import os
import tempfile
import time

import numpy as np

from benchmarks import common

WIDTH, HEIGHT, FPS = 340, 256, 30
_ON = (230, 40, 20)


def _code_frame(index, base):
    """The moving background plus 16 bits of the frame index as 2 x 8 red blocks in the top band."""
    frame = base.copy()
    bw = WIDTH // 8
    for bit in range(16):
        if (index >> bit) & 1:
            r, c = divmod(bit, 8)
            frame[r * 24:(r + 1) * 24, c * bw:(c + 1) * bw] = _ON
    return frame


def _decode_code(frame):
    bw = WIDTH // 8
    value = 0
    for bit in range(16):
        r, c = divmod(bit, 8)
        patch = frame[r * 24 + 8:r * 24 + 16, c * bw + bw // 2 - 4:c * bw + bw // 2 + 4, 0]
        if patch.mean() > 128:
            value |= 1 << bit
    return value


def make_video(path, minutes, keyint):
    """Write the test video with PyAV/libx264 (B-frames, fixed keyframe interval) unless it exists."""
    if os.path.exists(path):
        return path
    import av

    num_frames = int(minutes * 60 * FPS)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, size=(HEIGHT, 2 * WIDTH, 3), dtype=np.uint8)
    texture[:48] = 0  # the code band
    with av.open(tmp, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.options = {"preset": "veryfast", "crf": "23",
                                        "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=3"}
        for i in range(num_frames):
            shift = (i * 3) % WIDTH
            base = np.ascontiguousarray(texture[:, shift:shift + WIDTH])
            frame = av.VideoFrame.from_ndarray(_code_frame(i, base), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return path


def _timed(fn):
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - start, time.process_time() - cpu


def bench_reads(path, num_frames, span=64, seed=0):
    from nonlocal_zoo.data import SeekReader, frame_index, read_video

    result = {}
    index = frame_index(path, timeout=None)
    result["keyframes"] = int(len(index.keyframes))

    def seek_read(a):
        with SeekReader(path, timeout=None) as reader:
            frames = reader.read(range(a, a + span))
            decoded = reader.decoded
        assert [_decode_code(f) for f in frames] == list(range(a, a + span)), f"wrong frames at {a}"
        return decoded

    positions = {"start": 0, "25%": num_frames // 4, "50%": num_frames // 2, "75%": 3 * num_frames // 4,
                 "end": num_frames - span}
    seek_read(0)  # warm-up (imports, the decoder library)
    result["seek"] = {}
    for name, a in positions.items():
        decoded, wall, cpu = _timed(lambda a=a: seek_read(a))
        result["seek"][name] = {"frame": a, "wall": wall, "cpu": cpu, "frames_decoded": decoded}
    rng = np.random.default_rng(seed)
    minute = 60 * FPS
    for name, low in (("first_minute", 0), ("last_minute", num_frames - minute)):
        walls, cpus, decoded = [], [], []
        for a in rng.integers(low, low + minute - span, size=20).tolist():
            n, wall, cpu = _timed(lambda a=a: seek_read(a))
            walls.append(wall)
            cpus.append(cpu)
            decoded.append(n)
        result["seek"][f"median_20_random_{name}"] = {
            "wall": float(np.median(walls)), "cpu": float(np.median(cpus)), "max_wall": float(np.max(walls)),
            "frames_decoded_mean": float(np.mean(decoded))}
    result["sequential"] = {}
    for name in ("start", "50%", "end"):
        a = positions[name]
        frames, wall, cpu = _timed(lambda a=a: read_video(path, frame_indices=range(a, a + span), timeout=None,
                                                      backend="pyav"))
        assert [_decode_code(f) for f in frames] == list(range(a, a + span))
        result["sequential"][name] = {"frame": a, "wall": wall, "cpu": cpu}
    s = result["seek"]
    result["seek_end_over_start"] = s["end"]["wall"] / s["start"]["wall"]
    result["seek_end_over_start_cpu"] = s["end"]["cpu"] / s["start"]["cpu"]
    first, last = s["median_20_random_first_minute"], s["median_20_random_last_minute"]
    result["seek_last_over_first_minute"] = last["wall"] / first["wall"]
    result["seek_last_over_first_minute_cpu"] = last["cpu"] / first["cpu"]
    seq = result["sequential"]
    result["sequential_end_over_start"] = seq["end"]["wall"] / seq["start"]["wall"]
    result["sequential_end_over_start_cpu"] = seq["end"]["cpu"] / seq["start"]["cpu"]
    result["seek_end_vs_sequential_end_speedup"] = seq["end"]["wall"] / s["end"]["wall"]
    return result


def _sequential_features(path, clf, plan, batch_size, layer="pool5"):
    """The video_features approach: decode every frame in order, cut the windows, same preprocessing and model."""
    import av

    from nonlocal_zoo.features import WindowViews, feature_model

    views = WindowViews(clf.preprocessor, "center")
    network = feature_model(clf, layer)
    needed = {}
    for w, row in enumerate(plan.frame_indices.tolist()):
        for k in row:
            needed.setdefault(k, []).append(w)
    last_needed = {w: max(row) for w, row in enumerate(plan.frame_indices.tolist())}
    frames, rows, batch, keys = {}, {}, [], []
    next_window = 0

    def run():
        x = np.stack(batch)
        n = len(x)
        if n < batch_size:
            x = np.concatenate([x, np.zeros((batch_size - n,) + x.shape[1:], x.dtype)])
        for key, y in zip(keys, np.asarray(network.predict_on_batch(x))[:n]):
            rows[key] = y
        batch.clear()
        keys.clear()

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for k, frame in enumerate(container.decode(stream)):
            if k in needed:
                frames[k] = frame.to_ndarray(format="rgb24")
            while next_window < len(plan.starts) and last_needed[next_window] <= k:
                w = next_window
                batch.append(views(np.stack([frames[i] for i in plan.frame_indices[w].tolist()]))[0])
                keys.append(w)
                if len(batch) == batch_size:
                    run()
                for i in set(plan.frame_indices[w].tolist()):
                    if all(v <= w for v in needed[i]):
                        frames.pop(i, None)
                next_window += 1
            if next_window == len(plan.starts):
                pass  # the approach decodes the whole video anyway (it does not know where windows end)
    # padded windows at the end
    while next_window < len(plan.starts):
        w = next_window
        batch.append(views(np.stack([frames[i] for i in plan.frame_indices[w].tolist()]))[0])
        keys.append(w)
        if len(batch) == batch_size:
            run()
        next_window += 1
    if batch:
        run()
    return np.stack([rows[w] for w in range(len(plan.starts))])


def bench_features(path, model, strides, batch_size, workdir):
    import shutil

    from nonlocal_zoo.features import extract_features, load_features, window_plan
    from nonlocal_zoo.inference import load_model

    clf = load_model(model, weights="auto" if model == "demo" else None)
    c = clf.preprocessor.config
    out = {}
    for label, stride in strides.items():
        folder = os.path.join(workdir, f"features_{label}")
        shutil.rmtree(folder, ignore_errors=True)
        _, wall, cpu = _timed(lambda folder=folder, stride=stride: extract_features(
            [path], clf, stride=stride, batch_size=batch_size, output_dir=folder, progress=False, resume=False))
        z = load_features(os.path.join(folder, os.path.splitext(os.path.basename(path))[0] + ".npz"))
        windows = len(z["features"])
        plan = window_plan(z["metadata"]["num_video_frames"], num_frames=c["num_frames"],
                           sampling_rate=c["sampling_rate"], sampling=c["sampling"], stride=stride)
        reference, wall_seq, cpu_seq = _timed(lambda plan=plan: _sequential_features(path, clf, plan, batch_size))
        diff = float(np.abs(reference - z["features"]).max())
        assert diff < 1e-4, f"the two approaches disagree by {diff}"
        out[label] = {"stride": stride, "windows": windows, "extract_features_s": wall, "extract_features_cpu_s": cpu,
                      "windows_per_s": windows / wall, "sequential_s": wall_seq, "sequential_cpu_s": cpu_seq,
                      "sequential_windows_per_s": windows / wall_seq, "speedup": wall_seq / wall,
                      "max_abs_feature_diff": diff}
    return out


def machine():
    import av
    import keras
    import tensorflow as tf

    return common.machine(tensorflow=tf.__version__, keras=keras.__version__, av=av.__version__,
                          ffmpeg=".".join(map(str, av.library_versions.get("libavcodec", ()))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--keyint", type=int, default=60, help="frames between keyframes (default 60 = 2 s)")
    p.add_argument("--model", default="demo", help="model for the features part (default: demo)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sparse-stride", type=int, default=240, help="frames between sparse windows (default 8 s)")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "nonlocal_zoo_long_video"))
    p.add_argument("--skip", nargs="*", default=[], choices=("reads", "features"))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    path = os.path.join(args.workdir, f"long_{args.minutes:g}min_{WIDTH}x{HEIGHT}_k{args.keyint}.mp4")
    report = {"command": "python -m benchmarks.long_video " + " ".join(argv if argv is not None else
                                                                        __import__("sys").argv[1:]),
              "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "video": path}
    _, wall, _ = _timed(lambda: make_video(path, args.minutes, args.keyint))
    report["generate_s"] = wall
    from nonlocal_zoo.data import frame_index

    index, wall, cpu = _timed(lambda: frame_index(path, timeout=None))  # the one demux pass (then cached)
    report["index_build_s"] = {"wall": wall, "cpu": cpu}
    num_frames = index.num_frames
    report["num_frames"] = num_frames
    report["size_mb"] = os.path.getsize(path) / 2**20
    if "reads" not in args.skip:
        report["reads"] = bench_reads(path, num_frames)
    if "features" not in args.skip:
        from nonlocal_zoo.inference import load_model

        c = load_model(args.model, weights="auto" if args.model == "demo" else None).preprocessor.config
        span = c["num_frames"] * c["sampling_rate"]
        report["features"] = bench_features(path, args.model, {"dense": span, "sparse": args.sparse_stride},
                                            args.batch_size, args.workdir)
        report["features"]["model"] = args.model
    report["machine"] = machine()
    text = json.dumps(report, indent=2, default=float)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()

"""Input-pipeline throughput: decoded + augmented training clips per second, by number of parallel decoding calls.

Writes synthetic Kinetics-like clips (340x256 after the official downscale, 25 fps, MPEG-4 Part 2) to a temporary
folder, then measures `nonlocal_zoo.data.make_dataset(training=True)` (8x8 official sampling: decode up to the last
needed frame, scale jitter, 224 crop, flip, normalise) with 1, 2, ... parallel calls (threads, then a process
pool), plus the bare decoder (`read_frames_for` in a thread pool) for comparison. The numbers only mean something
on an otherwise idle machine: `load_average_before` says how busy it was.

This is the `pipeline` section of the harness (`bench_pipeline`: the pipeline against the models' consumption rate
and plain OpenCV decoding). Alone: `python -m benchmarks.data_pipeline [--full]` (`measure_pipeline`).

Example:
    >>> measure_pipeline(quick=True)["clips_per_s"]["dataset_parallel_2"]
"""
import concurrent.futures
import os
import resource
import tempfile
import time

import numpy as np

from nonlocal_zoo.benchmark.timing import time_interleaved


def write_clips(folder, *, num_clips, num_frames, height=256, width=340, fps=25, seed=0):
    """Synthetic Kinetics-like clips (smooth moving content, MPEG-4 Part 2) in `folder/class0/`; returns the paths."""
    import cv2

    rng = np.random.default_rng(seed)
    paths = []
    os.makedirs(os.path.join(folder, "class0"), exist_ok=True)
    base = rng.integers(0, 256, size=(height // 8, width // 8, 3), dtype=np.uint8)
    base = cv2.resize(base, (width, height), interpolation=cv2.INTER_LINEAR)  # smooth, compressible content
    for c in range(num_clips):
        path = os.path.join(folder, "class0", f"clip{c:03d}.mp4")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        for t in range(num_frames):
            writer.write(np.roll(base, shift=(2 * t + c, 3 * t), axis=(0, 1)))
        writer.release()
        paths.append(path)
    return paths


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
    return usage.ru_utime + usage.ru_stime


def _time_dataset(folder, *, parallel, repeats, warmup_batches=1, parallelism="threads"):
    """(clips/s, CPU cores busy) of make_dataset(training=True) with `parallel` decoding calls.

    With processes, "cores busy" counts only this (parent) process, not the workers."""
    from nonlocal_zoo.data import make_dataset

    ds = make_dataset(folder, training=True, batch_size=4, num_parallel_calls=parallel, repeat=True, seed=0,
                      deterministic=False, prefetch=False, parallelism=parallelism)
    it = iter(ds)
    for _ in range(warmup_batches):
        next(it)
    cpu, start = _cpu_seconds(), time.perf_counter()
    for _ in range(repeats):
        next(it)
    elapsed = time.perf_counter() - start
    return repeats * 4 / elapsed, (_cpu_seconds() - cpu) / elapsed


def _time_decoder(paths, *, workers, repeats):
    from nonlocal_zoo.data import sample_train_indices
    from nonlocal_zoo.data.video_io import read_frames_for

    def load(i):
        rng = np.random.default_rng(i)
        return read_frames_for(paths[i % len(paths)],
                               lambda F: sample_train_indices(F, num_frames=8, sampling_rate=8, rng=rng),
                               num_threads=1)[0].shape

    jobs = list(range(repeats))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(load, jobs[:workers]))  # warm-up
        cpu, start = _cpu_seconds(), time.perf_counter()
        list(pool.map(load, jobs))
        elapsed = time.perf_counter() - start
    return repeats / elapsed, (_cpu_seconds() - cpu) / elapsed


def measure_pipeline(quick=True):
    """Measure clip throughput with 1 and 2 (quick) or 1, 2, 4 and AUTOTUNE parallel calls.

    Frame counts are cached first (steady state: from the second epoch on, decoding stops at the last needed frame);
    `cold_*` is a first epoch, which decodes every clip to the end to count its frames.

    Returns:
        dict with `clips_per_s` and `cores_busy` (process CPU seconds per wall second) per setting
        (`dataset_parallel_<n>`: make_dataset; `decoder_threads_<n>`: the bare decoder in a thread pool), the
        speed-ups of 2 over 1, the CPU count and the load average before the run (other processes share the cores).
    """
    import tensorflow as tf

    from nonlocal_zoo.data import count_frames

    num_clips = 8 if quick else 24
    num_frames = 80 if quick else 150
    repeats = 6 if quick else 20
    settings = [1, 2] if quick else [1, 2, 4, tf.data.AUTOTUNE]
    result = {"cpu_count": os.cpu_count(), "load_average_before": [round(v, 2) for v in os.getloadavg()],
              "clip": f"{num_frames} frames 340x256 mp4v, 8x8 official sampling, 224 crop, batch 4",
              "clips_per_s": {}, "cores_busy": {}}
    with tempfile.TemporaryDirectory() as folder:
        paths = write_clips(folder, num_clips=num_clips, num_frames=num_frames)
        cold, busy = _time_dataset(folder, parallel=2, repeats=max(1, num_clips // 4 - 1))
        result["clips_per_s"]["cold_dataset_parallel_2"] = round(cold, 2)
        result["cores_busy"]["cold_dataset_parallel_2"] = round(busy, 2)
        for path in paths:
            count_frames(path)
        for workers in ([1, 2] if quick else [1, 2, 4]):
            cps, busy = _time_decoder(paths, workers=workers, repeats=4 * repeats)
            result["clips_per_s"][f"decoder_threads_{workers}"] = round(cps, 2)
            result["cores_busy"][f"decoder_threads_{workers}"] = round(busy, 2)
        for parallel in settings:
            key = "autotune" if parallel == tf.data.AUTOTUNE else str(parallel)
            cps, busy = _time_dataset(folder, parallel=parallel, repeats=repeats)
            result["clips_per_s"][f"dataset_parallel_{key}"] = round(cps, 2)
            result["cores_busy"][f"dataset_parallel_{key}"] = round(busy, 2)
        for workers in ([1, 2] if quick else [1, 2, 4]):
            cps, _ = _time_dataset(folder, parallel=workers, repeats=repeats, warmup_batches=2,
                                   parallelism="processes")
            result["clips_per_s"][f"dataset_processes_{workers}"] = round(cps, 2)
    cps = result["clips_per_s"]
    result["speedup_dataset_2_vs_1"] = round(cps["dataset_parallel_2"] / cps["dataset_parallel_1"], 2)
    result["speedup_decoder_2_vs_1"] = round(cps["decoder_threads_2"] / cps["decoder_threads_1"], 2)
    result["speedup_processes_2_vs_1"] = round(cps["dataset_processes_2"] / cps["dataset_processes_1"], 2)
    return result


def bench_pipeline(cfg, models, log):
    """The input pipeline's clips/s (`measure_pipeline`) against the models' consumption rate."""
    result = measure_pipeline(quick=cfg["quick"])
    consumption = {}
    for row in (models or {}).get("rows", []):
        timed = [(t["clips_per_s"], t["cpu_median_s"] / row["batch"]) for k, t in row["times"].items()
                 if k.startswith("tf") and "clips_per_s" in t]
        if timed:
            consumption[f"{row['model']} {row['clip']} batch {row['batch']}"] = max(timed)
    # CPU seconds per clip are robust to other load on a shared machine: decoding cost vs model cost per clip.
    cpu_per_clip = {k: result["cores_busy"][k] / v for k, v in result.get("clips_per_s", {}).items()
                    if v and k in result.get("cores_busy", {}) and not k.startswith("cold")}
    baseline = plain_opencv(num_frames=80 if cfg["quick"] else 150)
    if baseline:
        cpu_per_clip["plain sequential OpenCV (whole file, no transforms)"] = baseline["cpu_s_per_clip"]
    log(f"pipeline: {result}; plain OpenCV {baseline}")
    return {"result": result, "consumption": consumption, "cpu_s_per_clip": cpu_per_clip, "opencv": baseline}


def plain_opencv(num_frames, num_clips=8):
    """Plain sequential `cv2.VideoCapture.read` of every frame of the pipeline benchmark's synthetic files."""
    try:
        import cv2
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as folder:
        paths = write_clips(folder, num_clips=num_clips, num_frames=num_frames)

        def decode_all():
            for path in paths:
                cap = cv2.VideoCapture(path)
                while cap.read()[0]:
                    pass
                cap.release()

        times = time_interleaved({"opencv": decode_all}, warmup=1, repeats=3)["opencv"]
    return {"clips_per_s": num_clips / times["median_s"], "cpu_s_per_clip": times["cpu_median_s"] / num_clips,
            "frames_per_clip": num_frames}

"""The `coldstart` section: `nonlocal-zoo classify CLIP --model M` of one clip from a fresh process, split into phases.

Each repeat runs in a new Python process (`python -m nonlocal_zoo.benchmark.coldstart SPEC_JSON`), which times, in
order: importing `nonlocal_zoo.cli`; importing TensorFlow/Keras (and probing devices, as the command does); importing
the library's inference path; building the model (`resolve`, minus the time inside weight loading); loading the
weights; decoding the clip and making its views; the first forward pass (tracing included) and a second one. The
command itself is then timed end to end in further fresh processes (`python -m nonlocal_zoo.cli classify ...`).
Medians over the repeats are reported.

In quick mode (CI) the model is `demo` (8x64x64, packaged weights) with 2 repeats; the full run adds the demo with
multi-view testing and any full-size preset whose converted weights are cached (see `benchmarks/RESULTS.md`,
"Cold start", for how the first-ever conversion was measured).

Example:
    >>> measure_coldstart("demo", "clip.mp4", num_clips=10, repeats=3)["phases"]["first_predict_s"]
    $ python -m nonlocal_zoo.benchmark.coldstart '{"model": "demo", "video": "clip.mp4"}'   # one probe
"""
import json
import os
import subprocess
import sys
import tempfile
import time

ENTRY_MODULE = "nonlocal_zoo.cli"  # the module of the `nonlocal-zoo` program
PHASES = ("import_cli_s", "import_tensorflow_s", "import_library_s", "build_s", "weights_s", "views_s",
          "first_predict_s", "second_predict_s")


def probe_coldstart(spec):
    """The phases of one cold start, measured in this (fresh) process; returns `{phase: seconds, "traces": n}`.

    Args:
        spec: `{"model": name, "video": path, "num_clips": 1, "num_crops": 1, "batch_size": 8}`.
    """
    import importlib

    phases = {}
    t = time.perf_counter()
    # what the console script imports first; named as data (the benchmark sits below the command line)
    importlib.import_module(spec.get("entry_module", ENTRY_MODULE))
    phases["import_cli_s"] = time.perf_counter() - t
    t = time.perf_counter()
    import keras  # noqa: F401
    import tensorflow as tf

    tf.config.list_physical_devices()
    phases["import_tensorflow_s"] = time.perf_counter() - t
    t = time.perf_counter()
    from nonlocal_zoo.inference import load_model
    from nonlocal_zoo.tasks import presets as preset_io

    phases["import_library_s"] = time.perf_counter() - t
    weights_s = []
    for name in ("load_weights", "load_h5_strict"):  # time spent loading weights inside `resolve`
        original = getattr(preset_io, name)

        def timed(*args, _original=original, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                weights_s.append(time.perf_counter() - start)

        setattr(preset_io, name, timed)
    t = time.perf_counter()
    clf = load_model(spec["model"])
    total = time.perf_counter() - t
    phases["weights_s"] = sum(weights_s)
    phases["build_s"] = total - phases["weights_s"]
    t = time.perf_counter()
    views = clf.preprocessor.video_views(spec["video"], num_clips=spec.get("num_clips", 1),
                                         num_crops=spec.get("num_crops", 1))  # uint8 (V, T, S, S, 3)
    x = clf.preprocessor.normalize(views)
    phases["views_s"] = time.perf_counter() - t
    for key in ("first_predict_s", "second_predict_s"):
        t = time.perf_counter()
        clf.view_scores(x, batch_size=spec.get("batch_size", 8))
        phases[key] = time.perf_counter() - t
    phases["traces"] = sum(int(fn.experimental_get_tracing_count()) for fn in
                           (clf.predict_function, clf.logits_model().predict_function)
                           if hasattr(fn, "experimental_get_tracing_count"))  # tf.function traces of the forward
    phases["views"] = int(len(x))
    return phases


def _fresh(args, timeout):
    """Runs `python args...` in a fresh process; returns (wall seconds, completed process)."""
    # offline: a preset whose converted weights are not cached is reported as such, never downloaded
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow", "NONLOCAL_ZOO_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout)
    return time.perf_counter() - start, proc


def measure_coldstart(model, video, *, num_clips=1, num_crops=1, repeats=3, timeout=900):
    """Median phases of `repeats` fresh-process cold starts and the median wall time of the `classify` command.

    Returns:
        `{"model", "views", "phases": {phase: median s}, "traces", "command_s": median s, "runs"}` (or `"error"`).
    """
    import numpy as np

    spec = {"model": model, "video": os.fspath(video), "num_clips": num_clips, "num_crops": num_crops}
    runs = []
    for _ in range(repeats):
        _, proc = _fresh(["-m", "nonlocal_zoo.benchmark.coldstart", json.dumps(spec)], timeout)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("COLDSTART ")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()
            return {"model": model, "error": tail[-1] if tail else f"exit status {proc.returncode}"}
        runs.append(json.loads(lines[-1][len("COLDSTART "):]))
    command = []
    for _ in range(repeats):
        wall, proc = _fresh(["-m", ENTRY_MODULE, "classify", os.fspath(video), "--model", model,
                             "--num-clips", str(num_clips), "--num-crops", str(num_crops)], timeout)
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()
            return {"model": model, "error": tail[-1] if tail else f"exit status {proc.returncode}"}
        command.append(wall)
    phases = {key: float(np.median([r[key] for r in runs])) for key in PHASES}
    return {"model": model, "views": runs[0]["views"], "phases": phases, "traces": runs[0]["traces"],
            "phases_total_s": sum(phases[k] for k in PHASES if k != "second_predict_s"),
            "command_s": float(np.median(command)), "runs": repeats}


def bench_coldstart(cfg, log):
    """Cold starts of `classify` (see the module docstring): one row per (model, views) in `cfg["coldstart"]`."""
    from nonlocal_zoo.demo import demo_clip
    from nonlocal_zoo.synthetic import write_clip

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        clip = write_clip(os.path.join(folder, "clip.mp4"), demo_clip("moving_left", seed=[7, 0]), fps=4)
        for model, num_clips, num_crops in cfg["coldstart"]:
            row = measure_coldstart(model, clip, num_clips=num_clips, num_crops=num_crops,
                                    repeats=cfg["coldstart_repeats"])
            rows.append(row)
            log(f"coldstart {model} ({num_clips}x{num_crops} views): "
                + (row["error"] if "error" in row else f"command {row['command_s']:.2f} s"))
    return {"rows": rows}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m nonlocal_zoo.benchmark.coldstart SPEC_JSON")
    print("COLDSTART " + json.dumps(probe_coldstart(json.loads(sys.argv[1]))), flush=True)
